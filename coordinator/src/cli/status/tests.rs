//! `status`'s typed view prints what the hand-built JSON and table printed before it
//! (issue 12): the code they replaced is kept here, verbatim, as the reference.

use flotilla_proto::v1;

use super::{StatusView, status_json};

fn roles_of(h: &v1::HostStatus) -> Vec<&'static str> {
    h.roles.iter().filter_map(|r| v1::Role::try_from(*r).ok()).map(v1::Role::name).collect()
}

/// `status_json` as it was built with `json!` before the typed view.
fn legacy_status_json(st: &v1::StatusResponse) -> serde_json::Value {
    let hosts: Vec<_> = st
        .hosts
        .iter()
        .map(|h| {
            let f = h.facts.clone().unwrap_or_default();
            let health = h.health.as_ref().map(|s| {
                serde_json::json!({
                    "cpu_percent": s.cpu_percent,
                    "load1": s.load1,
                    "memory_used_bytes": s.memory_used_bytes,
                    "memory_total_bytes": s.memory_total_bytes,
                    "disk_used_bytes": s.disk_used_bytes,
                    "disk_total_bytes": s.disk_total_bytes,
                    "uptime_s": s.uptime_s,
                    "engine_ok": s.engine_ok,
                    "engine_error": s.engine_error,
                })
            });
            serde_json::json!({
                "name": h.name,
                "host_id": h.host_id,
                "roles": roles_of(h),
                "connected": h.connected,
                "since_unix_ms": h.since_unix_ms,
                "last_heartbeat_age_s": if h.last_heartbeat_age_s < 0.0 { serde_json::Value::Null } else { serde_json::json!(h.last_heartbeat_age_s) },
                "unreachable": h.unreachable,
                "revoked": h.revoked,
                "agent_version": h.agent_version,
                "agent_sha256": h.agent_sha256,
                "cert_not_after_unix_ms": h.cert_not_after_unix_ms,
                "addresses": f.private_addresses,
                "instance_id": f.instance_id,
                "engine_version": f.engine_version,
                "health": health,
                "generation": h.generation,
                "role_status": h.role_status.iter().map(|s| serde_json::json!({
                    "role": v1::Role::try_from(s.role).map(v1::Role::name).unwrap_or("unspecified"),
                    "state": v1::RoleState::name_of(s.state),
                    "message": s.message,
                })).collect::<Vec<_>>(),
                "swarm": h.health.as_ref().and_then(|s| s.swarm.as_ref()).map(|s| serde_json::json!({
                    "state": s.local_state, "is_manager": s.is_manager, "manager_status": s.manager_status,
                })),
            })
        })
        .collect();
    let mut leader = String::new();
    let mut leader_addr = String::new();
    let mut managers = Vec::new();
    for h in &st.hosts {
        if let Some(sw) = h.health.as_ref().and_then(|s| s.swarm.as_ref()) {
            if sw.is_manager {
                managers.push(serde_json::json!({"name": h.name, "manager_status": sw.manager_status}));
            }
            if sw.manager_status == "leader" {
                leader = h.name.clone();
                leader_addr = sw.leader_addr.clone();
            }
        }
    }
    serde_json::json!({
        "cluster": st.cluster,
        "agent_endpoint": st.agent_endpoint,
        "heartbeat_interval_s": st.heartbeat_interval_s,
        "hosts": hosts,
        "swarm": {"leader": leader, "leader_addr": leader_addr, "managers": managers},
    })
}

/// The `status` table as it was rendered from the admin API's answer before the typed view.
fn legacy_status_table(st: &v1::StatusResponse) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(["HOST", "ROLES", "SWARM", "SESSION", "HEARTBEAT", "CPU", "LOAD", "MEM", "DISK", "ENGINE"]);
    for h in &st.hosts {
        let session = if h.revoked {
            "revoked".to_string()
        } else if h.connected && !h.unreachable {
            format!("up {}", super::ago(h.since_unix_ms))
        } else if h.connected {
            "unreachable".to_string()
        } else {
            format!("down (seen {} ago)", super::ago(h.since_unix_ms))
        };
        let hb =
            if h.last_heartbeat_age_s < 0.0 { "-".to_string() } else { format!("{:.1}s ago", h.last_heartbeat_age_s) };
        let (cpu, load, mem, disk, engine) = match &h.health {
            Some(s) => (
                format!("{:.0}%", s.cpu_percent),
                format!("{:.2}", s.load1),
                super::pct(s.memory_used_bytes, s.memory_total_bytes),
                super::pct(s.disk_used_bytes, s.disk_total_bytes),
                if s.engine_ok { "ok".to_string() } else { "DOWN".to_string() },
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        let roles = roles_of(h)
            .iter()
            .map(|r| {
                let state = h
                    .role_status
                    .iter()
                    .find(|s| v1::Role::try_from(s.role).map(v1::Role::name).ok() == Some(*r))
                    .map(|s| v1::RoleState::name_of(s.state))
                    .unwrap_or_else(|| "pending".into());
                format!("{r}:{state}")
            })
            .collect::<Vec<_>>()
            .join(",");
        let swarm = h
            .health
            .as_ref()
            .and_then(|s| s.swarm.as_ref())
            .map(|s| match (s.local_state.as_str(), s.manager_status.as_str()) {
                ("active", "") => "worker".to_string(),
                ("active", m) => m.to_string(),
                (other, _) => other.to_string(),
            })
            .unwrap_or_else(|| "-".into());
        t.add_row([
            h.name.clone(),
            if roles.is_empty() { "-".into() } else { roles },
            swarm,
            session,
            hb,
            cpu,
            load,
            mem,
            disk,
            engine,
        ]);
    }
    format!("cluster {} — {} hosts\n{t}", st.cluster, st.hosts.len())
}

/// Half past the minute, so an `ago` of it reads the same for 30 seconds either way.
fn minutes_ago(m: i64) -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - m * 60_000 - 30_000
}

fn health(swarm: Option<v1::SwarmView>) -> v1::HealthSample {
    v1::HealthSample {
        unix_ms: 1_700_000_000_000,
        cpu_percent: 12.345,
        load1: 0.5,
        load5: 0.25,
        memory_total_bytes: 8 << 30,
        memory_used_bytes: 3 << 30,
        disk_total_bytes: 100 << 30,
        disk_used_bytes: 40 << 30,
        uptime_s: 3600,
        engine_ok: true,
        swarm,
        seq: 7,
        ..Default::default()
    }
}

fn manager(name: &str, status: &str) -> v1::HostStatus {
    v1::HostStatus {
        name: name.into(),
        host_id: format!("id-{name}"),
        roles: vec![v1::Role::Consul as i32, v1::Role::Manager as i32],
        connected: true,
        since_unix_ms: minutes_ago(5),
        last_heartbeat_age_s: 1.25,
        cert_not_after_unix_ms: 1_800_000_000_000,
        agent_version: "0.1.0".into(),
        facts: Some(v1::HostFacts {
            hostname: name.into(),
            instance_id: format!("i-{name}"),
            private_addresses: vec!["10.0.0.5".into(), "fd00::5".into()],
            engine_version: "27.3.1".into(),
            ..Default::default()
        }),
        health: Some(health(Some(v1::SwarmView {
            local_state: "active".into(),
            node_id: format!("node-{name}"),
            is_manager: true,
            manager_status: status.into(),
            leader_addr: "10.0.0.5:2377".into(),
            ..Default::default()
        }))),
        role_status: vec![
            v1::RoleStatus {
                role: v1::Role::Manager as i32,
                state: v1::RoleState::Running as i32,
                message: "leading".into(),
                progress_percent: 0,
            },
            v1::RoleStatus { role: 99, state: 42, message: "from a newer agent".into(), progress_percent: 0 },
        ],
        generation: 3,
        ..Default::default()
    }
}

/// Responses covering each branch: no hosts; a leader and a reachable manager; a worker; a
/// host never heard from; one down, one unreachable, one revoked; an unknown role number.
fn responses() -> Vec<v1::StatusResponse> {
    let empty = v1::StatusResponse { cluster: "empty".into(), heartbeat_interval_s: 5, ..Default::default() };
    let mut worker = manager("node0", "");
    worker.roles = vec![v1::Role::Node as i32, 17];
    worker.role_status.clear();
    if let Some(sw) = worker.health.as_mut().and_then(|h| h.swarm.as_mut()) {
        sw.is_manager = false;
    }
    let never = v1::HostStatus {
        name: "fresh".into(),
        last_heartbeat_age_s: -1.0,
        since_unix_ms: minutes_ago(200),
        ..Default::default()
    };
    let mut down = manager("manager2", "unreachable");
    down.connected = false;
    down.since_unix_ms = minutes_ago(3);
    if let Some(h) = down.health.as_mut() {
        h.engine_ok = false;
        h.engine_error = "Cannot connect to the Docker daemon".into();
        h.memory_total_bytes = 0;
        if let Some(s) = h.swarm.as_mut() {
            s.local_state = "pending".into();
        }
    }
    let mut unreachable = manager("node1", "");
    unreachable.unreachable = true;
    unreachable.health = Some(health(None));
    let mut revoked = manager("node2", "");
    revoked.revoked = true;
    revoked.health = None;
    let full = v1::StatusResponse {
        cluster: "demo".into(),
        hosts: vec![manager("manager0", "leader"), manager("manager1", "reachable"), worker, never],
        heartbeat_interval_s: 5,
        agent_endpoint: "10.0.0.1:7443".into(),
        agent_version: "0.1.0".into(),
        ..Default::default()
    };
    let troubled = v1::StatusResponse {
        cluster: "troubled".into(),
        hosts: vec![down, unreachable, revoked],
        heartbeat_interval_s: 2,
        ..Default::default()
    };
    vec![empty, full, troubled]
}

#[test]
fn the_typed_view_prints_the_json_the_hand_built_one_did() {
    for st in responses() {
        let (new, old) = (status_json(&st), legacy_status_json(&st));
        assert_eq!(new, old, "{}", st.cluster);
        assert_eq!(new.to_string(), old.to_string(), "{}", st.cluster);
        assert_eq!(super::json_line(&StatusView::from(&st)), old.to_string(), "{}", st.cluster);
    }
}

#[test]
fn the_table_renders_from_the_view_as_it_did_from_the_response() {
    for st in responses() {
        let endpoint = match st.agent_endpoint.as_str() {
            "" => String::new(),
            e => format!("\ncontrol plane: hosts dial {e} (this cluster's own port)"),
        };
        assert_eq!(StatusView::from(&st).table(), legacy_status_table(&st) + &endpoint, "{}", st.cluster);
    }
}

#[test]
fn the_leader_and_its_address_come_from_the_manager_that_leads() {
    let full = &responses()[1];
    let v = StatusView::from(full);
    assert_eq!((v.swarm.leader.as_str(), v.swarm.leader_addr.as_str()), ("manager0", "10.0.0.5:2377"));
    assert_eq!(v.swarm.managers.len(), 2);
    assert_eq!(v.hosts[3].last_heartbeat_age_s, None);
}

#[test]
fn what_a_host_reports_reaches_the_table_without_terminal_escapes() {
    let mut hostile = manager("manager0", "leader");
    if let Some(sw) = hostile.health.as_mut().and_then(|h| h.swarm.as_mut()) {
        sw.local_state = "\x1b]0;pwned\x07\x1b[2J".into();
    }
    let st = v1::StatusResponse { cluster: "c".into(), hosts: vec![hostile], ..Default::default() };
    let table = StatusView::from(&st).table();
    assert!(!table.contains('\x1b') && !table.contains('\x07'), "{table:?}");
    assert!(table.contains("\\u{1b}]0;pwned"), "the state is shown, escaped: {table}");
}

/// Issue 18: the status page's address, in the table and the JSON; absent when the control
/// plane serves none.
#[test]
fn the_status_page_address_is_in_the_table_and_the_json() {
    let st = v1::StatusResponse {
        cluster: "c".into(),
        agent_endpoint: "10.0.0.1:7443".into(),
        metrics_address: "127.0.0.1:9464".into(),
        ..Default::default()
    };
    let view = StatusView::from(&st);
    assert!(
        view.table().contains("\nstatus page: http://127.0.0.1:9464/ (Prometheus: http://127.0.0.1:9464/metrics)"),
        "{}",
        view.table()
    );
    assert_eq!(status_json(&st)["metrics_address"], "127.0.0.1:9464");
    let none = v1::StatusResponse { cluster: "c".into(), ..Default::default() };
    assert!(!StatusView::from(&none).table().contains("status page"));
    assert!(status_json(&none).get("metrics_address").is_none());
}
