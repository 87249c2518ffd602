//! The series read at scrape time: a [`Snapshot`] of the control plane's live state (the
//! store's host records, each session's last sample, the agent port's counters), taken in one
//! pass when Prometheus asks, then encoded. The status page (`web.rs`) shows the same
//! snapshot, so the page and the metrics never disagree.

use std::sync::{Arc, Weak};

use flotilla_proto::v1;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Serialize;

use crate::control_plane::core::{ControlPlane, swarm_age_s};
use crate::control_plane::metrics::DrillRecord;
use crate::control_plane::session::registry::LiveView;
use crate::control_plane::store::HostRecord;
use crate::control_plane::untrusted::{NAME_MAX, clean};

/// Reads the control plane at every scrape.
pub struct Live {
    pub cp: Weak<ControlPlane>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl Collector for Live {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(cp) = self.cp.upgrade() else {
            return Ok(());
        };
        Snapshot::of(&cp).encode(encoder)
    }
}

/// One host as the metrics and the page show it. Every string that came from the host is
/// already [`clean`]ed.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HostRow {
    pub name: String,
    pub roles: Vec<String>,
    pub connected: bool,
    /// A session, and a heartbeat within three intervals.
    pub reachable: bool,
    pub revoked: bool,
    pub heartbeat_age_s: Option<f64>,
    pub cpu_ratio: Option<f64>,
    pub load: Option<[f64; 3]>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub disk_used_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    pub engine_up: Option<bool>,
    /// (role, state name, state number) from the agent's last report.
    pub role_states: Vec<(String, String, i32)>,
    pub cert_not_after_unix: i64,
    pub agent_version: String,
    /// Swarm's view from this host, when fresh (read within three heartbeat intervals) and
    /// the Engine answers: (is manager, manager status, leader address).
    pub swarm: Option<(bool, String, String)>,
    /// Consul's view from this host, when reachable: (leader, peers).
    pub consul: Option<(String, usize)>,
}

/// The control plane's live state in one pass.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub cluster: String,
    pub unix_ms: i64,
    pub heartbeat_interval_s: f64,
    pub hosts: Vec<HostRow>,
    pub sessions_open: usize,
    pub connections: u64,
    pub anonymous_connections: u64,
    pub connections_refused: u64,
    pub connections_evicted: u64,
    pub connections_expired: u64,
    pub handshakes_failed: u64,
    pub handshakes_timed_out: u64,
    pub enrollments_throttled: u64,
    pub descriptors_in_use: Option<u64>,
    pub descriptor_limit: u64,
    pub drill: Option<DrillView>,
}

/// The last drill as the page shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DrillView {
    pub running: bool,
    pub started_unix_ms: i64,
    pub finished_unix_ms: i64,
    pub component: String,
    pub passed: bool,
    pub verdict: String,
    pub timings: Vec<(String, f64)>,
    pub timeline: Vec<(f64, String)>,
}

impl From<DrillRecord> for DrillView {
    fn from(d: DrillRecord) -> Self {
        Self {
            running: d.finished_unix_ms == 0,
            started_unix_ms: d.started_unix_ms,
            finished_unix_ms: d.finished_unix_ms,
            component: d.component,
            passed: d.passed,
            verdict: d.verdict,
            timings: d.timings,
            timeline: d.timeline,
        }
    }
}

impl Snapshot {
    /// Reads `cp` now. A store that cannot be read leaves the host list empty (and says so in
    /// the log): a scrape never fails the whole target for it.
    pub fn of(cp: &Arc<ControlPlane>) -> Self {
        let now = cp.clock.now_ms();
        let hb = cp.config.heartbeat_interval.as_secs_f64();
        // Decoded from the store only when a host record changed since the last read.
        let records = cp.store.hosts_shared().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "metrics: the store's hosts cannot be read");
            Default::default()
        });
        let mut live: std::collections::HashMap<String, _> = cp.sessions.views().into_iter().collect();
        let mut hosts: Vec<HostRow> = records
            .iter()
            .map(|rec| {
                let view = live.remove(&rec.name);
                host_row(rec, view, now, hb)
            })
            .collect();
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        let c = cp.port.counts();
        Self {
            cluster: cp.config.cluster.clone(),
            unix_ms: now,
            heartbeat_interval_s: hb,
            hosts,
            sessions_open: cp.sessions.count(),
            connections: c.connections,
            anonymous_connections: c.anonymous,
            connections_refused: c.refused,
            connections_evicted: c.evicted,
            connections_expired: c.expired,
            handshakes_failed: c.handshakes_failed,
            handshakes_timed_out: c.handshakes_timed_out,
            enrollments_throttled: cp.enroll_limit.throttled(),
            descriptors_in_use: crate::control_plane::descriptors::in_use(),
            descriptor_limit: cp.descriptor_limit,
            drill: cp.metrics.drill().map(DrillView::from),
        }
    }
}

/// One host's row: its record merged with its live session's last sample.
fn host_row(rec: &HostRecord, live: Option<LiveView>, now: i64, hb: f64) -> HostRow {
    let fresh_within = 3.0 * hb;
    let heartbeat_age_s = live.as_ref().and_then(|l| l.last_heartbeat_ms).map(|t| (now - t).max(0) as f64 / 1000.0);
    let reachable = live.as_ref().is_some_and(|l| {
        let since = l.last_heartbeat_ms.unwrap_or(l.since_ms);
        (now - since) as f64 / 1000.0 <= fresh_within
    });
    let health = live.as_ref().and_then(|l| l.health.as_ref());
    let swarm = live.as_ref().and_then(|l| {
        let h = l.health.as_ref()?;
        let age = swarm_age_s(l.last_heartbeat_ms?, h, now)?;
        let v = h.swarm.as_ref()?;
        (h.engine_ok && reachable && age <= fresh_within)
            .then(|| (v.is_manager, clean(&v.manager_status, NAME_MAX), clean(&v.leader_addr, NAME_MAX)))
    });
    let consul = health
        .filter(|_| reachable)
        .and_then(|h| h.consul.as_ref())
        .filter(|c| !c.leader.is_empty() || !c.peers.is_empty())
        .map(|c| (clean(&c.leader, NAME_MAX), c.peers.len()));
    let role_states = live
        .as_ref()
        .map(|l| {
            l.status
                .iter()
                .map(|s| {
                    let role = v1::Role::try_from(s.role).unwrap_or(v1::Role::Unspecified).name().to_string();
                    let state = v1::RoleState::try_from(s.state).unwrap_or(v1::RoleState::Unspecified);
                    let name = state.as_str_name().trim_start_matches("ROLE_STATE_").to_lowercase();
                    (role, name, s.state)
                })
                .collect()
        })
        .unwrap_or_default();
    HostRow {
        roles: rec.roles.iter().map(|r| clean(r, NAME_MAX)).collect(),
        connected: live.is_some(),
        reachable,
        revoked: rec.revoked,
        heartbeat_age_s,
        cpu_ratio: health.map(|h| f64::from(h.cpu_percent) / 100.0),
        load: health.map(|h| [h.load1, h.load5, h.load15]),
        memory_used_bytes: health.map(|h| h.memory_used_bytes),
        memory_total_bytes: health.map(|h| h.memory_total_bytes),
        disk_used_bytes: health.map(|h| h.disk_used_bytes),
        disk_total_bytes: health.map(|h| h.disk_total_bytes),
        engine_up: health.map(|h| h.engine_ok),
        role_states,
        cert_not_after_unix: live
            .as_ref()
            .map(|l| l.cert_not_after_unix)
            .or_else(|| rec.certs.iter().map(|c| c.not_after_unix).max())
            .unwrap_or_default(),
        agent_version: clean(&rec.agent_version, NAME_MAX),
        swarm,
        consul,
        name: clean(&rec.name, NAME_MAX),
    }
}

impl Snapshot {
    /// The hosts whose own fresh Swarm view says they lead: (host, leader address).
    pub fn swarm_leaders(&self) -> Vec<(&str, &str)> {
        self.hosts
            .iter()
            .filter_map(|h| match &h.swarm {
                Some((true, status, addr)) if status == "leader" => Some((h.name.as_str(), addr.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Managers that are reachable, their Engine answers, and their fresh Swarm view says
    /// `leader` or `reachable`.
    pub fn managers_reachable(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| matches!(&h.swarm, Some((true, s, _)) if s == "leader" || s == "reachable"))
            .count()
    }

    /// Hosts assigned the manager role.
    pub fn managers_assigned(&self) -> usize {
        self.hosts.iter().filter(|h| h.roles.iter().any(|r| r == "manager")).count()
    }

    /// The Consul leader most reachable Consul views name, and the voters (peers) the views
    /// that name it count (the most of them).
    pub fn consul_leader(&self) -> Option<(&str, usize)> {
        let mut votes: Vec<(&str, usize, usize)> = Vec::new();
        for (leader, peers) in self.hosts.iter().filter_map(|h| h.consul.as_ref()).filter(|c| !c.0.is_empty()) {
            match votes.iter_mut().find(|v| v.0 == leader) {
                Some(v) => {
                    v.1 += 1;
                    v.2 = v.2.max(*peers);
                }
                None => votes.push((leader, 1, *peers)),
            }
        }
        votes.into_iter().max_by_key(|v| (v.1, v.2)).map(|(l, _, p)| (l, p))
    }

    /// Encodes every live series.
    pub fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_hosts(&mut enc)?;
        self.encode_roles(&mut enc)?;
        self.encode_cluster(&mut enc)?;
        self.encode_control_plane(&mut enc)?;
        self.encode_drill(&mut enc)
    }

    fn encode_hosts(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Pick = fn(&HostRow) -> Option<f64>;
        let series: [(&str, &str, Pick); 14] = [
            ("flotilla_host_connected", "1 while the host's agent has a session open", |h| Some(b(h.connected))),
            ("flotilla_host_reachable", "1 while the host has a session and a heartbeat within three intervals", |h| {
                Some(b(h.reachable))
            }),
            ("flotilla_host_heartbeat_age_seconds", "Seconds since the host's last heartbeat", |h| h.heartbeat_age_s),
            ("flotilla_host_cpu_ratio", "CPU in use, 0 to 1, at the last sample", |h| h.cpu_ratio),
            ("flotilla_host_load1", "Load average over 1 minute", |h| h.load.map(|l| l[0])),
            ("flotilla_host_load5", "Load average over 5 minutes", |h| h.load.map(|l| l[1])),
            ("flotilla_host_load15", "Load average over 15 minutes", |h| h.load.map(|l| l[2])),
            ("flotilla_host_memory_used_bytes", "Memory in use", |h| h.memory_used_bytes.map(|v| v as f64)),
            ("flotilla_host_memory_total_bytes", "Memory installed", |h| h.memory_total_bytes.map(|v| v as f64)),
            ("flotilla_host_disk_used_bytes", "Used bytes of the file system holding the Docker data root", |h| {
                h.disk_used_bytes.map(|v| v as f64)
            }),
            ("flotilla_host_disk_total_bytes", "Size of the file system holding the Docker data root", |h| {
                h.disk_total_bytes.map(|v| v as f64)
            }),
            ("flotilla_host_engine_up", "1 when the host's Docker Engine answered at the last sample", |h| {
                h.engine_up.map(b)
            }),
            (
                "flotilla_host_certificate_expiry_timestamp_seconds",
                "When the host's client certificate expires, seconds since the epoch",
                |h| (h.cert_not_after_unix > 0).then_some(h.cert_not_after_unix as f64),
            ),
            ("flotilla_host_revoked", "1 when the host was revoked", |h| Some(b(h.revoked))),
        ];
        let roles = self.role_labels();
        for (name, help, pick) in series {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (h, roles) in self.hosts.iter().zip(&roles) {
                if let Some(v) = pick(h) {
                    ConstGauge::new(v)
                        .encode(m.encode_family(&[("host", h.name.as_str()), ("role", roles.as_str())])?)?;
                }
            }
        }
        Ok(())
    }

    /// Each host's `role` label (its roles joined by commas), in the order of `hosts`.
    fn role_labels(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.roles.join(",")).collect()
    }

    fn encode_roles(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "flotilla_role_state",
            "Each role's state as its agent reports it: 1 pending, 2 pulling, 3 starting, 4 running, 5 degraded, 6 failed, 7 removing",
            None,
            MetricType::Gauge,
        )?;
        for h in &self.hosts {
            for (role, _, state) in &h.role_states {
                ConstGauge::new(i64::from(*state))
                    .encode(m.encode_family(&[("host", h.name.as_str()), ("role", role.as_str())])?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "flotilla_agent_info",
            "The agent version each host runs (value 1)",
            None,
            MetricType::Gauge,
        )?;
        for (h, roles) in self.hosts.iter().zip(self.role_labels()) {
            ConstGauge::new(1).encode(m.encode_family(&[
                ("host", h.name.as_str()),
                ("role", roles.as_str()),
                ("version", h.agent_version.as_str()),
            ])?)?;
        }
        Ok(())
    }

    fn encode_cluster(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "flotilla_swarm_leader_info",
            "The host whose own fresh Swarm view says it leads (value 1)",
            None,
            MetricType::Gauge,
        )?;
        for (host, addr) in self.swarm_leaders() {
            ConstGauge::new(1).encode(m.encode_family(&[("host", host), ("address", addr)])?)?;
        }
        gauge(
            enc,
            "flotilla_swarm_managers_reachable",
            "Managers reachable with a fresh Swarm view saying leader or reachable",
            self.managers_reachable() as f64,
        )?;
        gauge(enc, "flotilla_swarm_managers", "Hosts assigned the manager role", self.managers_assigned() as f64)?;
        let consul = self.consul_leader();
        let mut m = enc.encode_descriptor(
            "flotilla_consul_leader_info",
            "The Consul leader most reachable Consul views name (value 1)",
            None,
            MetricType::Gauge,
        )?;
        if let Some((leader, _)) = consul {
            ConstGauge::new(1).encode(m.encode_family(&[("address", leader)])?)?;
        }
        gauge(
            enc,
            "flotilla_consul_voters",
            "Consul's raft peers as the views naming the leader count them",
            consul.map(|c| c.1).unwrap_or(0) as f64,
        )?;
        gauge(enc, "flotilla_hosts", "Hosts known to the control plane", self.hosts.len() as f64)
    }

    fn encode_control_plane(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(enc, "flotilla_sessions_open", "Agent sessions open", self.sessions_open as f64)?;
        gauge(enc, "flotilla_port_connections", "Connections open on the agent port", self.connections as f64)?;
        gauge(
            enc,
            "flotilla_port_anonymous_connections",
            "Of which without a client certificate",
            self.anonymous_connections as f64,
        )?;
        counter(
            enc,
            "flotilla_port_connections_refused",
            "Connections refused at the agent port's caps",
            self.connections_refused,
        )?;
        counter(
            enc,
            "flotilla_port_connections_evicted",
            "Anonymous connections evicted for a newer one",
            self.connections_evicted,
        )?;
        counter(
            enc,
            "flotilla_port_connections_expired",
            "Anonymous connections closed idle or past their lifetime",
            self.connections_expired,
        )?;
        let mut m = enc.encode_descriptor(
            "flotilla_tls_handshakes_failed",
            "TLS handshakes on the agent port that failed or timed out",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.handshakes_failed).encode(m.encode_family(&[("reason", "failed")])?)?;
        ConstCounter::new(self.handshakes_timed_out).encode(m.encode_family(&[("reason", "timed_out")])?)?;
        counter(
            enc,
            "flotilla_enrollments_throttled",
            "Enrollment attempts refused by the rate limit",
            self.enrollments_throttled,
        )?;
        if let Some(n) = self.descriptors_in_use {
            gauge(enc, "flotilla_descriptors_in_use", "File descriptors the control plane holds open", n as f64)?;
        }
        gauge(enc, "flotilla_descriptor_limit", "The control plane's descriptor limit", self.descriptor_limit as f64)
    }

    fn encode_drill(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(d) = self.drill.as_ref().filter(|d| !d.running) else {
            return Ok(());
        };
        let component = d.component.as_str();
        let mut m = enc.encode_descriptor(
            "flotilla_failover_drill_last_passed",
            "1 when the last failover drill passed, 0 when it failed",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(d.passed)).encode(m.encode_family(&[("component", component)])?)?;
        let mut m = enc.encode_descriptor(
            "flotilla_failover_drill_last_timestamp_seconds",
            "When the last failover drill finished, seconds since the epoch",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(d.finished_unix_ms as f64 / 1000.0).encode(m.encode_family(&[("component", component)])?)?;
        let mut m = enc.encode_descriptor(
            "flotilla_failover_drill_last_phase_seconds",
            "The last failover drill's timings: seconds from the fault to each phase",
            None,
            MetricType::Gauge,
        )?;
        for (phase, s) in &d.timings {
            ConstGauge::new(*s).encode(m.encode_family(&[("component", component), ("phase", phase.as_str())])?)?;
        }
        Ok(())
    }
}

/// 1 or 0.
fn b(v: bool) -> f64 {
    if v { 1.0 } else { 0.0 }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}
