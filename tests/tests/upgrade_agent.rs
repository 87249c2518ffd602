//! Issue 17, part 2 — `coordinator upgrade --agent` on the lab, through the real binary, on
//! one default cluster (3 managers, 2 workers, a service with 2 replicas on the workers):
//!
//! 1. a binary whose bytes do not match the announced digest (the hidden
//!    `--announce-sha256`): the first host's agent refuses it, the command names the host and
//!    why and exits non-zero, and every agent still runs its old build;
//! 2. `--dry-run --output json`: every host with its current and target digest, workers
//!    first, the leader last;
//! 3. a different build (the agent binary with bytes appended: ELF ignores trailing data, the
//!    SHA-256 differs): all 5 agents come back on it, the old one kept as `.previous`, and no
//!    container on any host restarted (same start time, same restart count);
//! 4. a re-run skips every host (resumable);
//! 5. `upgrade --image IMAGE --dry-run`: each host's image as the provider reports it and the
//!    order; its own image: nothing to replace; an unknown image refused by name, no
//!    container touched.
//! 6. `upgrade --image IMAGE` (part 1) onto a derived image (`FROM` the lab host image plus a
//!    label, built here): run as a child and SIGKILLed once the first manager's replacement
//!    is launched; `deploy` then refuses, naming the upgrade, and so does `deploy --rolling`
//!    onto another image; `deploy --rolling` with `images.host` = the image (its `--dry-run`
//!    first) completes it, through the path a re-run of the upgrade takes. Throughout,
//!    a probe (a thread listing through a manager's Engine every ~200 ms) records the longest
//!    gap without a swarm leader, the fewest running replicas of the 2-replica service, and
//!    whether Consul had a leader. Afterwards: every host runs the new image under its
//!    slot's next name (`node0-u1`…), 3 managers + 2 workers, no `down` node, no duplicate
//!    name, 3 Consul voters; a re-run does nothing.
//!
//! And, on an in-process control plane: an agent whose protocol is older than the oldest
//! accepted is refused with a message naming `coordinator upgrade --agent`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Output;
use std::time::{Duration, Instant};

use flotilla_proto::v1::{EnrollRequest, agent_service_client::AgentServiceClient};
use flotilla_tests::lab_cluster::{LabCluster, derived_host_image, docker, text, wait_for};
use flotilla_tests::{Cli, Coord};
use serde_json::Value;
use sha2::{Digest, Sha256};

const CLUSTER: &str = "agentup";
const SERVICE: &str = "agentup-keep";
const HOSTS: [&str; 5] = ["manager0", "manager1", "manager2", "node0", "node1"];

fn cli() -> Cli {
    Cli::new(CLUSTER)
}

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// What `cmd` printed inside the lab host `host`.
fn in_host(host: &str, cmd: &[&str]) -> String {
    text(&LabCluster::new(CLUSTER).in_host(host, cmd))
}

fn status() -> Value {
    LabCluster::new(CLUSTER).status()
}

/// Every host's (connected, agent_version, agent_sha256).
fn agents() -> BTreeMap<String, (bool, String, String)> {
    let st = status();
    st["hosts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    let s = |k: &str| h[k].as_str().unwrap_or_default().to_string();
                    (
                        s("name"),
                        (h["connected"] == true && h["unreachable"] == false, s("agent_version"), s("agent_sha256")),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sha256_file(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read binary")))
}

/// Every running container on every host: name → (StartedAt, RestartCount).
fn containers() -> BTreeMap<String, (String, String)> {
    let mut all = BTreeMap::new();
    for h in HOSTS {
        let ids = in_host(h, &["docker", "ps", "-q"]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            continue;
        }
        let mut args = vec!["docker", "inspect", "-f", "{{.Name}} {{.State.StartedAt}} {{.RestartCount}}"];
        args.extend(ids);
        for line in in_host(h, &args).lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let [name, started, restarts] = parts[..] {
                all.insert(format!("{h}{name}"), (started.to_string(), restarts.to_string()));
            }
        }
    }
    all
}

fn running_replicas() -> usize {
    running_replicas_via("manager0")
}

fn start_service() {
    LabCluster::new(CLUSTER)
        .create_service("manager0", SERVICE, 2, &[], &["sh", "-c", "while true; do sleep 1; done"])
        .expect("the service");
    wait_for("the service's 2 replicas", Duration::from_secs(90), || match running_replicas() {
        2 => Ok(()),
        n => Err(format!("{n} running")),
    });
}

#[test]
fn issue_17_agents_are_upgraded_in_place_without_a_container_restart_and_a_bad_digest_is_refused() {
    let c = cli();
    let _ = c.run(&["destroy", "--yes", "--force"]);
    let out = c.run(&["deploy", "--no-smoke-test"]);
    assert!(out.status.success(), "deploy failed");
    start_service();

    let old = sha256_file(&flotilla_tests::agent_binary_path());
    let before = agents();
    assert_eq!(before.len(), 5, "{before:?}");
    assert!(
        before.values().all(|(up, _, sha)| *up && *sha == old),
        "every agent on the served build {old}: {before:?}"
    );
    let containers_before = containers();
    assert!(containers_before.len() >= 5, "{containers_before:?}");

    // The different build: the agent with bytes appended.
    let dir = tempfile::tempdir().expect("tempdir");
    let build = dir.path().join("flotilla-agent");
    std::fs::copy(flotilla_tests::agent_binary_path(), &build).expect("copy");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&build)
        .expect("open")
        .write_all(b"\nagentup test build\n")
        .expect("append");
    let new = sha256_file(&build);
    assert_ne!(new, old);
    let binary = build.to_str().expect("path");

    // 1. Served bytes that do not match the digest announced: refused by the first agent.
    let wrong = "0".repeat(64);
    let t = Instant::now();
    let out = c.run(&["upgrade", "--agent", "--binary", binary, "--announce-sha256", &wrong]);
    let msg = said(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("host 'node0'") && msg.contains(&format!("not the pinned {wrong}")), "{msg}");
    assert!(msg.contains("nothing installed") && msg.contains(&format!("still runs sha256 {old}")), "{msg}");
    assert!(msg.contains("not touched: node1, manager"), "{msg}");
    let after = agents();
    assert!(after.values().all(|(up, _, sha)| *up && *sha == old), "every agent on its old build: {after:?}");
    eprintln!("refused in {:.1} s", t.elapsed().as_secs_f64());

    // 2. The plan.
    let out = c.run(&["upgrade", "--agent", "--binary", binary, "--dry-run", "--output", "json"]);
    assert!(out.status.success());
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan json");
    assert_eq!(plan["target_sha256"], new.as_str());
    let order: Vec<&str> =
        plan["hosts"].as_array().expect("hosts").iter().map(|h| h["host"].as_str().unwrap_or("")).collect();
    assert_eq!(&order[..2], ["node0", "node1"], "{plan}");
    assert_eq!(plan["hosts"][4]["role"], "leader", "{plan}");
    assert!(
        plan["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .all(|h| h["action"] == "upgrade" && h["current_sha256"] == old.as_str())
    );

    // 3. The upgrade.
    let t = Instant::now();
    let out = c.run(&["upgrade", "--agent", "--binary", binary, "--output", "json"]);
    let took = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", said(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report json");
    assert_eq!(report["upgraded"], 5, "{report}");
    let after = agents();
    assert!(after.values().all(|(up, _, sha)| *up && *sha == new), "every agent on the new build {new}: {after:?}");
    assert!(after.values().all(|(_, v, _)| v == flotilla_agent::VERSION), "{after:?}");
    for h in HOSTS {
        let sums =
            in_host(h, &["sha256sum", "/usr/local/bin/flotilla-agent", "/usr/local/bin/flotilla-agent.previous"]);
        assert!(sums.contains(&new) && sums.contains(&old), "{h}: {sums}");
    }
    let containers_after = containers();
    assert_eq!(containers_after, containers_before, "a container restarted or changed");
    assert_eq!(running_replicas(), 2);
    eprintln!("agent upgrade of 5 hosts: {took:.1} s; per host: {}", report["hosts"]);

    // 4. Resumable: a re-run skips every host.
    let out = c.run(&["upgrade", "--agent", "--binary", binary, "--output", "json"]);
    assert!(out.status.success(), "{}", said(&out));
    let again: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((again["upgraded"].as_u64(), again["skipped"].as_u64()), (Some(0), Some(5)), "{again}");

    // 5. `upgrade --image`'s plan: the image each host runs as the provider reports it, the
    // order; nothing touched.
    let image_of = |c: &str| text(&docker(&["inspect", "--format", "{{.Config.Image}}", c]));
    let current = image_of(&format!("flotilla-{CLUSTER}-manager0"));
    let other = image_of(&format!("flotilla-{CLUSTER}-registry"));
    assert!(!current.is_empty() && !other.is_empty() && current != other, "{current} / {other}");
    let out = c.run(&["upgrade", "--image", &current, "--dry-run", "--output", "json"]);
    assert!(out.status.success(), "{}", said(&out));
    let same: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(same["to_replace"], 0, "{same}");
    let out = c.run(&["upgrade", "--image", &other, "--dry-run", "--output", "json"]);
    assert!(out.status.success(), "{}", said(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).expect("json");
    let hosts = plan["hosts"].as_array().expect("hosts");
    assert_eq!(plan["to_replace"], 5, "{plan}");
    assert!(hosts.iter().all(|h| h["current_image"] == current.as_str() && h["action"] == "replace"), "{plan}");
    assert_eq!((hosts[0]["role"].as_str(), hosts[4]["role"].as_str()), (Some("worker"), Some("leader")), "{plan}");
    let out = c.run(&["upgrade", "--image", "flotilla/no-such-image:1", "--dry-run"]);
    assert!(!out.status.success() && said(&out).contains("flotilla/no-such-image:1"), "{}", said(&out));
    assert_eq!(containers(), containers_before, "the image plan changed a container");

    let target = image_upgrade(&c, &current);

    let out = c.run(&["destroy", "--yes", "--force"]);
    assert!(out.status.success(), "destroy failed");
    let _ = docker(&["rmi", &target]);
}

#[tokio::test]
async fn an_agent_older_than_the_oldest_accepted_protocol_is_told_to_upgrade() {
    let coord = Coord::start(|_| {}).await;
    let ca = flotilla_proto::tls::certs_from_pem("ca", &coord.ca_pem()).expect("ca");
    let cfg = flotilla_proto::tls::client_config(&ca, None).expect("client config");
    let mut client = AgentServiceClient::new(flotilla_proto::tls::channel(&coord.endpoint(), cfg).expect("channel"));
    let old = flotilla_proto::MIN_AGENT_PROTOCOL - 1;
    let token = coord.token("node0").await;
    let mut req = tonic::Request::new(EnrollRequest { token, host_name: "node0".into(), ..Default::default() });
    req.metadata_mut().insert(flotilla_proto::PROTOCOL_HEADER, old.to_string().parse().expect("header"));
    let e = client.enroll(req).await.expect_err("an agent too old");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains(&format!("protocol v{old}")), "{}", e.message());
    assert!(e.message().contains("coordinator upgrade --agent"), "{}", e.message());
}

/// What the probe saw.
#[derive(Debug, Default)]
struct Probed {
    samples: usize,
    longest_leaderless: Duration,
    min_replicas: Option<usize>,
    consul_samples: usize,
    longest_consul_leaderless: Duration,
}

/// The cluster's lab host containers (their host names), from the Engine.
fn host_containers() -> Vec<String> {
    let out = docker(&["ps", "--filter", &format!("name=flotilla-{CLUSTER}-"), "--format", "{{.Names}}"]);
    text(&out)
        .lines()
        .filter_map(|n| n.strip_prefix(&format!("flotilla-{CLUSTER}-")))
        .filter(|n| n.starts_with("manager") || n.starts_with("node"))
        .map(str::to_string)
        .collect()
}

/// One look through manager `host`: Some((swarm leader?, running replicas, Consul leader?))
/// when it answered as a manager; a swarm without a leader answers with that error.
fn look(host: &str) -> Option<(bool, Option<usize>, Option<bool>)> {
    let script = format!(
        "docker node ls --format '{{{{.ManagerStatus}}}}' 2>&1; echo ---; docker service ps {SERVICE} --filter desired-state=running --format '{{{{.CurrentState}}}}' 2>&1; echo ---; curl -s -m 1 127.0.0.1:8500/v1/status/leader"
    );
    let out = in_host(host, &["sh", "-c", &script]);
    let parts: Vec<&str> = out.split("---").collect();
    let [nodes, tasks, consul] = parts[..] else { return None };
    let leaderless = nodes.contains("does not have a leader") || nodes.contains("no leader");
    if !leaderless && !nodes.lines().any(|l| matches!(l.trim(), "Leader" | "Reachable")) {
        return None; // not (or no longer) a manager, or gone
    }
    let replicas = (!leaderless && !tasks.contains("Error"))
        .then(|| tasks.lines().filter(|l| l.trim().starts_with("Running")).count());
    let consul = consul.trim();
    let consul_leader = consul.starts_with('"').then_some(consul.len() > 2);
    Some((!leaderless, replicas, consul_leader))
}

/// Probes until `stop` is set.
fn probe(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Probed {
    let mut p = Probed::default();
    let mut via = String::new();
    let mut leaderless_since: Option<Instant> = None;
    let mut consul_since: Option<Instant> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut seen = if via.is_empty() { None } else { look(&via) };
        if seen.is_none() {
            for h in host_containers().into_iter().filter(|h| h.starts_with("manager")) {
                if let Some(s) = look(&h) {
                    via = h;
                    seen = Some(s);
                    break;
                }
            }
        }
        if let Some((leader, replicas, consul)) = seen {
            p.samples += 1;
            match (leader, leaderless_since) {
                (false, None) => leaderless_since = Some(Instant::now()),
                (true, Some(t)) => {
                    p.longest_leaderless = p.longest_leaderless.max(t.elapsed());
                    leaderless_since = None;
                }
                _ => {}
            }
            if let Some(r) = replicas {
                p.min_replicas = Some(p.min_replicas.map_or(r, |m| m.min(r)));
            }
            if let Some(c) = consul {
                p.consul_samples += 1;
                match (c, consul_since) {
                    (false, None) => consul_since = Some(Instant::now()),
                    (true, Some(t)) => {
                        p.longest_consul_leaderless = p.longest_consul_leaderless.max(t.elapsed());
                        consul_since = None;
                    }
                    _ => {}
                }
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    if let Some(t) = leaderless_since {
        p.longest_leaderless = p.longest_leaderless.max(t.elapsed());
    }
    if let Some(t) = consul_since {
        p.longest_consul_leaderless = p.longest_consul_leaderless.max(t.elapsed());
    }
    p
}

/// Step 6 (the module's doc).
fn image_upgrade(c: &Cli, host_image: &str) -> String {
    use std::io::BufRead;
    let target = derived_host_image(host_image, &format!("flotilla-test/{CLUSTER}-host:u1"), "upgrade-image");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = std::thread::spawn({
        let stop = stop.clone();
        move || probe(stop)
    });
    let t = Instant::now();

    // Interrupted (SIGKILL) once the first manager's replacement is launched.
    let mut child = c
        .command()
        .args(["--cluster", CLUSTER, "upgrade", "--image", &target])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("upgrade");
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(child.stderr.take().expect("stderr")).lines() {
        let line = line.unwrap_or_default();
        eprintln!("upgrade(1): {line}");
        seen.push(line.clone());
        let host = line.split("s] ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_default();
        if host.starts_with("manager") && line.contains(" launched (") {
            child.kill().expect("SIGKILL");
            break;
        }
    }
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("launched (")), "no manager launch seen: {seen:?}");
    let recorded = std::fs::read_to_string(c.state_root.join(CLUSTER).join("hosts.json")).expect("hosts.json");
    assert!(recorded.contains("\"pending\": {"), "the interrupted replacement is recorded: {recorded}");
    let out = c.run(&["deploy", "--no-smoke-test"]);
    assert!(!out.status.success() && said(&out).contains(&format!("upgrade --image {target}")), "{}", said(&out));
    // `deploy --rolling` finishes it, but only onto the same image.
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = |name: &str, image: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("[images]\nhost = \"{image}\"\n")).expect("write flotilla.toml");
        path.to_str().expect("path").to_string()
    };
    let (on_old, on_target) = (toml("old.toml", host_image), toml("target.toml", &target));
    let out = c.run(&["deploy", "-f", &on_old, "--rolling", "--no-smoke-test"]);
    let msg = said(&out);
    assert!(!out.status.success() && msg.contains(&format!("this deploy launches hosts from {host_image}")), "{msg}");
    assert!(msg.contains(&format!("upgrade --image {target}")) && msg.contains("nothing was touched"), "{msg}");
    let out = c.run(&["deploy", "-f", &on_target, "--rolling", "--dry-run", "--output", "json"]);
    assert!(out.status.success(), "{}", said(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan json");
    assert!(plan["change"][0].as_str().is_some_and(|c| c.starts_with("finish the interrupted replacement")), "{plan}");

    // The resumption through `deploy --rolling` (the path a re-run of the upgrade takes).
    let out = c.run(&["deploy", "-f", &on_target, "--rolling", "--no-smoke-test", "--output", "json"]);
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probed = prober.join().expect("probe");
    assert!(out.status.success(), "{}", said(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report json");
    eprintln!(
        "image upgrade of 5 hosts (interrupted once, finished by deploy --rolling): {:.1} s; probe: {probed:?}; report: {}",
        took.as_secs_f64(),
        report["replaced"]
    );
    let replaced = report["replaced"].as_array().expect("replaced");
    assert_eq!(replaced[0]["resumed"], true, "{report}");
    assert!(replaced[0]["old"].as_str().is_some_and(|h| h.starts_with("manager")), "{report}");
    assert_eq!(report["image_drift"], Value::Null, "{report}");
    assert_eq!(report["swarm"]["managers"].as_array().map(Vec::len), Some(3), "{report}");

    // Throughout: a leader but for handovers, never fewer than 1 replica, Consul led.
    assert!(probed.samples > 20, "{probed:?}");
    assert!(probed.min_replicas.is_some_and(|m| m >= 1), "{probed:?}");
    assert!(probed.longest_leaderless < Duration::from_secs(10), "{probed:?}");
    assert!(probed.consul_samples > 10, "{probed:?}");
    assert!(probed.longest_consul_leaderless < Duration::from_secs(10), "{probed:?}");

    // Afterwards: the new generation everywhere, on the new image.
    let want: Vec<String> = HOSTS.iter().map(|h| format!("{h}-u1")).collect();
    let mut names = agents().into_keys().collect::<Vec<_>>();
    names.sort();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(names, sorted, "the control plane's hosts");
    let mut running = host_containers();
    running.sort();
    assert_eq!(running, sorted, "the lab's host containers");
    for h in &want {
        let image = text(&docker(&["inspect", "--format", "{{.Config.Image}}", &format!("flotilla-{CLUSTER}-{h}")]));
        assert_eq!(image, target, "{h}");
    }
    let nodes =
        in_host("manager0-u1", &["docker", "node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.ManagerStatus}}"]);
    let lines: Vec<&str> = nodes.lines().collect();
    assert_eq!(lines.len(), 5, "no stale or duplicate node: {nodes}");
    assert!(lines.iter().all(|l| l.contains(" Ready")), "no down node: {nodes}");
    assert_eq!(lines.iter().filter(|l| l.ends_with("Leader") || l.ends_with("Reachable")).count(), 3, "{nodes}");
    let mut hostnames: Vec<&str> = lines.iter().filter_map(|l| l.split_whitespace().next()).collect();
    hostnames.sort();
    assert_eq!(hostnames, sorted.iter().map(String::as_str).collect::<Vec<_>>(), "{nodes}");
    let peers = in_host("manager0-u1", &["curl", "-s", "127.0.0.1:8500/v1/status/peers"]);
    assert_eq!(peers.matches(":8300").count(), 3, "3 Consul voters, no extra: {peers}");
    assert_eq!(running_replicas_via("manager0-u1"), 2);

    // A re-run on the target does nothing.
    let out = c.run(&["upgrade", "--image", &target, "--output", "json"]);
    assert!(out.status.success(), "{}", said(&out));
    let again: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (again["to_replace"].as_u64(), again["replaced"].as_array().map(Vec::len)),
        (Some(0), Some(0)),
        "{again}"
    );
    target
}

fn running_replicas_via(host: &str) -> usize {
    LabCluster::new(CLUSTER).running_tasks(host, SERVICE)
}
