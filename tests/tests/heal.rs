//! Issue 15 — `heal` and auto-heal on the lab, through the real binary, on one default
//! cluster (grace 20 s), phase after phase:
//!
//! 1. a host stopped and started again within the grace period is not replaced;
//! 2. `failover-test --mode terminate`: the leader's host removed for good (its container
//!    and volume gone, as an instance terminated); auto-heal replaces it and the drill
//!    passes with its steps timed in order;
//! 3. a worker's container removed (`docker rm -f`): auto-heal replaces it;
//! 4. another worker's container removed, and the control plane SIGKILLed while auto-heal
//!    replaces it: the heal ends with its control plane, the `deploy` that starts the control
//!    plane again runs at once and converges;
//! 5. auto-heal off; two managers' containers removed: `heal` refuses (exit 75), says why
//!    and what to run, and launches nothing.
//!
//! A `heal` interrupted at each of its steps (SIGKILL or an error) and run again is
//! `tests/tests/crash_points.rs`'s.
//!
//! After 1–4 the cluster is at full strength: 3 managers (1 leader, 2 reachable) and 2
//! ready workers in `docker node ls` with no `down` node, 3 Consul servers that are healthy
//! voters with unique names in autopilot's view, and the service started at the beginning
//! still has its 2 running replicas.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::Cli;
use flotilla_tests::lab_cluster::{LabCluster, docker, text, wait_for};
use serde_json::Value;

const CLUSTER: &str = "heal";
const GRACE: &str = "20";
const SERVICE: &str = "heal-keep";

fn cli() -> Cli {
    Cli::new(CLUSTER)
}

fn lab() -> LabCluster {
    LabCluster::new(CLUSTER)
}

fn container(host: &str) -> String {
    lab().container(host)
}

/// What `cmd` printed inside the lab host `host` (on its own Engine).
fn in_host(host: &str, cmd: &[&str]) -> String {
    text(&lab().in_host(host, cmd))
}

fn status() -> Value {
    lab().status()
}

/// The container names of the cluster's hosts (any state).
fn host_containers() -> BTreeSet<String> {
    text(&docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=flotilla.cluster={CLUSTER}"),
        "--filter",
        "label=flotilla.kind=host",
        "--format",
        "{{.Names}}",
    ]))
    .lines()
    .map(str::to_string)
    .collect()
}

fn container_id(host: &str) -> String {
    text(&docker(&["inspect", "-f", "{{.Id}}", &container(host)]))
}

/// A manager whose Engine answers `docker node ls` with a leader, and its rows
/// (`hostname status manager-status`).
fn node_ls() -> Result<(String, Vec<String>), String> {
    for m in ["manager0", "manager1", "manager2"] {
        let rows = in_host(m, &["docker", "node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.ManagerStatus}}"]);
        if rows.contains("Leader") {
            return Ok((m.to_string(), rows.lines().map(str::to_string).collect()));
        }
    }
    Err("no manager lists the swarm with a leader".into())
}

/// Autopilot's view of the Consul servers, asked of `ip` with the operator's token.
fn consul_servers(ip: &str) -> Result<Vec<flotilla_agent::consul::ServerHealth>, String> {
    let token = std::fs::read_to_string(cli().state_root.join(CLUSTER).join("consul-operator.token"))
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(flotilla_agent::consul::Consul::new(&format!("{ip}:8500")).with_token(token.trim()).autopilot_health())
        .map_err(|e| e.to_string())
}

fn manager_ip(st: &Value) -> Option<String> {
    st["hosts"].as_array()?.iter().find(|h| h["name"] == "manager0" || h["name"] == "manager2")?["addresses"][0]
        .as_str()
        .map(str::to_string)
}

/// Running replicas of the test's service, as the swarm reports them.
fn running_replicas(via: &str) -> usize {
    lab().running_tasks(via, SERVICE)
}

/// Full strength (the module's doc); returns what was seen when not.
fn full_strength() -> Result<(), String> {
    let (via, rows) = node_ls()?;
    let managers: Vec<&String> = rows.iter().filter(|r| r.contains("Leader") || r.contains("Reachable")).collect();
    let leaders = rows.iter().filter(|r| r.contains("Leader")).count();
    let names: BTreeSet<&str> = rows.iter().filter_map(|r| r.split(' ').next()).collect();
    if rows.len() != 5
        || names.len() != 5
        || managers.len() != 3
        || leaders != 1
        || rows.iter().any(|r| !r.contains(" Ready"))
    {
        return Err(format!("node ls: {rows:?}"));
    }
    let st = status();
    let ip = manager_ip(&st).ok_or("no manager address")?;
    let servers = consul_servers(&ip)?;
    let server_names: BTreeSet<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    if servers.len() != 3
        || server_names.len() != 3
        || servers.iter().any(|s| !(s.healthy && s.voter && s.serf_status == "alive"))
    {
        return Err(format!("consul autopilot: {servers:?}"));
    }
    match running_replicas(&via) {
        2 => Ok(()),
        n => Err(format!("{n} running replicas of {SERVICE}")),
    }
}

fn heal_status() -> Value {
    status()["heal"].clone()
}

fn leader() -> String {
    let (_, rows) = node_ls().expect("node ls");
    rows.iter().find(|r| r.contains("Leader")).and_then(|r| r.split(' ').next()).expect("leader").to_string()
}

#[test]
fn issue_15_lost_hosts_are_replaced_one_at_a_time_and_quorum_is_never_spent() {
    let c = cli();
    let _ = c.run(&["destroy", "--yes", "--force"]);
    let out = c.run(&["deploy", "--no-smoke-test", "--heal", "auto", "--heal-grace", GRACE, "--output", "json"]);
    assert!(out.status.success(), "deploy failed");
    assert_eq!(heal_status()["mode"], "auto", "{}", heal_status());
    start_service();
    stop_start_within_grace_is_not_replaced();
    terminate_drill_replaces_the_leader();
    removed_worker_is_replaced_by_auto_heal();
    control_plane_killed_mid_heal();
    two_managers_lost_is_refused();
    let out = c.run(&["destroy", "--yes", "--force"]);
    assert!(out.status.success(), "destroy failed");
    assert!(host_containers().is_empty(), "{:?}", host_containers());
}

fn start_service() {
    let (via, _) = node_ls().expect("swarm");
    lab().create_service(&via, SERVICE, 2, &[], &["sh", "-c", "while true; do sleep 1; done"]).expect("the service");
    wait_for("the service's 2 replicas", Duration::from_secs(90), || match running_replicas(&via) {
        2 => Ok(()),
        n => Err(format!("{n} running")),
    });
    wait_for("full strength before the faults", Duration::from_secs(60), full_strength);
}

fn stop_start_within_grace_is_not_replaced() {
    let before = container_id("node1");
    let replaced = heal_status()["replaced"].as_u64().unwrap_or(0);
    assert!(docker(&["kill", &container("node1")]).status.success());
    wait_for("node1 seen unreachable", Duration::from_secs(30), || {
        let st = status();
        let h =
            st["hosts"].as_array().and_then(|a| a.iter().find(|h| h["name"] == "node1").cloned()).unwrap_or_default();
        if h["unreachable"] == true { Ok(()) } else { Err(h.to_string()) }
    });
    assert!(docker(&["start", &container("node1")]).status.success());
    wait_for("node1 back", Duration::from_secs(90), || {
        let st = status();
        let h =
            st["hosts"].as_array().and_then(|a| a.iter().find(|h| h["name"] == "node1").cloned()).unwrap_or_default();
        if h["connected"] == true && h["unreachable"] == false { Ok(()) } else { Err(h.to_string()) }
    });
    assert_eq!(container_id("node1"), before, "node1 was replaced");
    assert_eq!(heal_status()["replaced"].as_u64().unwrap_or(0), replaced, "{}", heal_status());
    wait_for("full strength after the restart", Duration::from_secs(90), full_strength);
}

fn terminate_drill_replaces_the_leader() {
    let old = leader();
    let out = cli().run(&["failover-test", "--mode", "terminate", "--output", "json"]);
    let r: Value = serde_json::from_slice(&out.stdout).expect("drill JSON");
    assert!(out.status.success(), "drill: {}", r["verdict"]);
    assert_eq!(r["target"], old.as_str());
    assert_ne!(r["new_leader"], old.as_str());
    let at = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {r}"));
    let (elect, lost, launched, enrolled, replaced) =
        (at("elect_s"), at("lost_s"), at("replacement_launched_s"), at("replacement_enrolled_s"), at("restore_s"));
    assert!(elect < lost && lost <= launched && launched <= enrolled && enrolled <= replaced, "{r}");
    assert!(lost >= GRACE.parse::<f64>().expect("grace"), "lost before the grace period: {lost}");
    assert_eq!(r["rejoined_as"], "reachable", "{r}");
    wait_for("full strength after the leader's host was replaced", Duration::from_secs(120), full_strength);
}

fn removed_worker_is_replaced_by_auto_heal() {
    let replaced = heal_status()["replaced"].as_u64().unwrap_or(0);
    let before = container_id("node0");
    assert!(docker(&["rm", "-f", &container("node0")]).status.success());
    wait_for("auto-heal to replace node0", Duration::from_secs(240), || {
        let h = heal_status();
        if h["replaced"].as_u64().unwrap_or(0) > replaced && h["state"] != "healing" {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });
    assert_ne!(container_id("node0"), before);
    wait_for("full strength after node0 was replaced", Duration::from_secs(120), full_strength);
    let audit = cli().run(&["audit", "--output", "json"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("heal.replaced") && audit.contains("auto-heal"), "no auto-heal in the audit trail");
}

/// node1's container removed, and the control plane SIGKILLed while its auto-heal replaces it:
/// the heal ends with it (it would otherwise hold the ops lock against the `deploy` that starts
/// the control plane again), and that `deploy` runs at once — converging, it launches node1
/// itself — and the cluster is back at full strength.
fn control_plane_killed_mid_heal() {
    let lab = lab();
    assert!(docker(&["rm", "-f", &container("node1")]).status.success());
    let heal = wait_for("auto-heal running", Duration::from_secs(120), || {
        let h = heal_status();
        match lab.processes(&["heal", "--auto"]).as_slice() {
            [pid] if h["state"] == "healing" => Ok(*pid),
            pids => Err(format!("heal processes {pids:?}; {h}")),
        }
    });
    let serve = lab.processes(&["serve"]);
    assert_eq!(serve.len(), 1, "one control plane: {serve:?}");
    assert!(Command::new("kill").args(["-KILL", &serve[0].to_string()]).status().expect("kill").success());
    wait_for("the orphaned heal to end", Duration::from_secs(10), || {
        if std::path::Path::new(&format!("/proc/{heal}")).exists() { Err(format!("{heal} alive")) } else { Ok(()) }
    });
    let out = cli().run(&["deploy", "--no-smoke-test", "--heal", "auto", "--heal-grace", GRACE]);
    assert!(
        out.status.success(),
        "deploy after the control plane died mid-heal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("full strength after the control plane died mid-heal", Duration::from_secs(120), full_strength);
}

fn two_managers_lost_is_refused() {
    let out = cli().run(&["deploy", "--no-smoke-test", "--heal", "off", "--heal-grace", GRACE]);
    assert!(out.status.success(), "deploy --heal off");
    assert_eq!(heal_status()["mode"], "off");
    let keep = leader();
    let gone: Vec<&str> = ["manager0", "manager1", "manager2"].into_iter().filter(|m| *m != keep).collect();
    for m in &gone {
        assert!(docker(&["rm", "-f", &container(m)]).status.success());
    }
    let before = host_containers();
    wait_for("both managers unreachable past the grace period", Duration::from_secs(90), || {
        let u = heal_status()["unreachable_s"].clone();
        let past = |m: &str| u[m].as_f64().unwrap_or(0.0) > GRACE.parse::<f64>().unwrap_or(20.0) + 1.0;
        if gone.iter().all(|m| past(m)) { Ok(()) } else { Err(u.to_string()) }
    });
    let dry = cli().run(&["heal", "--dry-run"]);
    let out = cli().run(&["heal"]);
    for o in [&dry, &out] {
        assert_eq!(o.status.code(), Some(75), "heal did not refuse");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("quorum") && err.contains("coordinator recover") && gone.iter().all(|m| err.contains(m)),
            "{err}"
        );
    }
    assert_eq!(host_containers(), before, "heal launched or removed a host while refusing");
}
