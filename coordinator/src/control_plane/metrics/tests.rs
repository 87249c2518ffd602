use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::live::{DrillView, HostRow, Snapshot};
use super::*;

/// A snapshot rendered through a registry, as a scrape does.
#[derive(Debug)]
struct Fixed(Snapshot);

impl Collector for Fixed {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

fn render(s: Snapshot, m: &Metrics) -> String {
    let mut r = Registry::default();
    m.register(&mut r);
    r.register_collector(Box::new(Fixed(s)));
    encode(&r).expect("encodes")
}

fn manager(name: &str, status: &str) -> HostRow {
    HostRow {
        name: name.into(),
        roles: vec!["consul".into(), "manager".into()],
        connected: true,
        reachable: true,
        heartbeat_age_s: Some(1.5),
        cpu_ratio: Some(0.25),
        load: Some([0.5, 0.4, 0.3]),
        memory_used_bytes: Some(1 << 30),
        memory_total_bytes: Some(4 << 30),
        disk_used_bytes: Some(10 << 30),
        disk_total_bytes: Some(40 << 30),
        engine_up: Some(true),
        role_states: vec![("consul".into(), "running".into(), 4), ("manager".into(), "running".into(), 4)],
        cert_not_after_unix: 1_900_000_000,
        agent_version: "0.1.0".into(),
        swarm: Some((true, status.into(), "10.0.0.2:2377".into())),
        consul: Some(("10.0.0.2:8300".into(), 3)),
        ..Default::default()
    }
}

fn cluster() -> Snapshot {
    let mut down = manager("m3", "reachable");
    down.engine_up = Some(false);
    down.swarm = None;
    let node = HostRow { name: "n1".into(), roles: vec!["node".into()], connected: false, ..Default::default() };
    Snapshot {
        cluster: "c".into(),
        hosts: vec![manager("m1", "leader"), manager("m2", "reachable"), down, node],
        sessions_open: 3,
        handshakes_failed: 2,
        descriptors_in_use: Some(40),
        descriptor_limit: 1024,
        ..Default::default()
    }
}

fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' ')).map(|l| &l[series.len() + 1..])
}

#[test]
fn per_host_series_carry_host_and_role_labels() {
    let text = render(cluster(), &Metrics::default());
    assert_eq!(sample(&text, r#"flotilla_host_connected{host="m1",role="consul,manager"}"#), Some("1.0"));
    assert_eq!(sample(&text, r#"flotilla_host_connected{host="n1",role="node"}"#), Some("0.0"));
    assert_eq!(sample(&text, r#"flotilla_host_engine_up{host="m3",role="consul,manager"}"#), Some("0.0"));
    assert_eq!(sample(&text, r#"flotilla_role_state{host="m2",role="manager"}"#), Some("4"));
    assert_eq!(sample(&text, r#"flotilla_agent_info{host="m1",role="consul,manager",version="0.1.0"}"#), Some("1"));
    assert!(
        text.contains(
            r#"flotilla_host_certificate_expiry_timestamp_seconds{host="m1",role="consul,manager"} 1900000000.0"#
        ),
        "{text}"
    );
    // A disconnected host has no sample: no heartbeat age, no CPU.
    assert!(!text.contains(r#"flotilla_host_heartbeat_age_seconds{host="n1""#), "{text}");
}

#[test]
fn cluster_series_count_only_managers_with_a_fresh_view_and_an_engine() {
    let text = render(cluster(), &Metrics::default());
    assert_eq!(sample(&text, "flotilla_swarm_managers_reachable"), Some("2.0"));
    assert_eq!(sample(&text, "flotilla_swarm_managers"), Some("3.0"));
    assert_eq!(sample(&text, r#"flotilla_swarm_leader_info{host="m1",address="10.0.0.2:2377"}"#), Some("1"));
    assert_eq!(sample(&text, r#"flotilla_consul_leader_info{address="10.0.0.2:8300"}"#), Some("1"));
    assert_eq!(sample(&text, "flotilla_consul_voters"), Some("3.0"));
    assert_eq!(sample(&text, "flotilla_sessions_open"), Some("3.0"));
    assert_eq!(sample(&text, r#"flotilla_tls_handshakes_failed_total{reason="failed"}"#), Some("2"));
}

#[test]
fn counters_and_the_histogram_count_what_happened() {
    let m = Metrics::default();
    m.heartbeat_round_trip(0.003);
    m.heartbeat_round_trip(0.03);
    m.enrolled(false);
    m.enrolled(true);
    m.refused("enroll.refused.expired");
    m.log_lines_streamed(5);
    m.log_lines_dropped(2);
    m.admin_rpc("Status");
    m.heal_finished(true);
    m.heal_finished(false);
    m.heal_finished(false);
    assert_eq!(m.heals(), (1, 2));
    let text = render(Snapshot::default(), &m);
    assert_eq!(sample(&text, "flotilla_heartbeat_round_trip_seconds_count"), Some("2"));
    assert_eq!(sample(&text, r#"flotilla_heartbeat_round_trip_seconds_bucket{le="0.005"}"#), Some("1"));
    assert_eq!(sample(&text, r#"flotilla_enrollments_total{kind="again"}"#), Some("1"));
    assert_eq!(sample(&text, r#"flotilla_refusals_total{kind="enroll.refused.expired"}"#), Some("1"));
    assert_eq!(sample(&text, "flotilla_log_lines_streamed_total"), Some("5"));
    assert_eq!(sample(&text, "flotilla_log_lines_dropped_total"), Some("2"));
    assert_eq!(sample(&text, r#"flotilla_admin_rpcs_total{method="Status"}"#), Some("1"));
    assert_eq!(sample(&text, r#"flotilla_heals_total{outcome="done"}"#), Some("1"));
    assert_eq!(sample(&text, r#"flotilla_heals_total{outcome="failed"}"#), Some("2"));
}

#[test]
fn heal_counters_exist_before_the_first_heal() {
    let text = render(Snapshot::default(), &Metrics::default());
    assert_eq!(sample(&text, r#"flotilla_heals_total{outcome="done"}"#), Some("0"));
    assert_eq!(sample(&text, r#"flotilla_heals_total{outcome="failed"}"#), Some("0"));
}

#[test]
fn the_last_drill_is_shown_once_finished() {
    let mut s = Snapshot::default();
    let finished = DrillView {
        running: false,
        finished_unix_ms: 1_700_000_000_000,
        component: "swarm".into(),
        passed: false,
        verdict: "no leader".into(),
        timings: vec![("detect".into(), 1.5), ("elect".into(), 12.0)],
        ..Default::default()
    };
    s.drill = Some(DrillView { running: true, ..finished.clone() });
    assert!(!render(s.clone(), &Metrics::default()).contains("flotilla_failover_drill"));
    s.drill = Some(finished);
    let text = render(s, &Metrics::default());
    assert_eq!(sample(&text, r#"flotilla_failover_drill_last_passed{component="swarm"}"#), Some("0"));
    assert_eq!(
        sample(&text, r#"flotilla_failover_drill_last_phase_seconds{component="swarm",phase="elect"}"#),
        Some("12.0")
    );
}

#[test]
fn label_values_from_hosts_are_escaped_by_the_encoder() {
    let mut s = cluster();
    s.hosts[0].agent_version = "1\"} evil 1\n# x".into();
    let text = render(s, &Metrics::default());
    assert!(text.contains(r#"version="1\"} evil 1\n# x""#), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("# x")), "{text}");
}

#[test]
fn the_drill_timeline_keeps_its_newest_events() {
    let m = Metrics::default();
    m.drill_update(|d| {
        *d = Some(DrillRecord {
            timeline: (0..DRILL_TIMELINE_MAX + 10).map(|i| (i as f64, format!("e{i}"))).collect(),
            ..Default::default()
        })
    });
    let d = m.drill().expect("a drill");
    assert_eq!(d.timeline.len(), DRILL_TIMELINE_MAX);
    assert_eq!(d.timeline[0].1, "e10");
}

#[test]
fn the_classic_text_names_counters_by_their_samples() {
    let m = Metrics::default();
    m.refused("logs.refused");
    let text = to_classic_text(&render(cluster(), &m));
    assert!(text.contains("# HELP flotilla_refusals_total Calls the control plane refused"), "{text}");
    assert!(text.contains("# TYPE flotilla_refusals_total counter\n"), "{text}");
    assert!(text.contains("# TYPE flotilla_host_connected gauge\n"), "{text}");
    assert!(!text.contains("# EOF"), "{text}");
}
