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
//!    order; its own image: nothing to replace; without `--dry-run` refused (exit 69), an
//!    unknown image refused by name, no container touched.
//!
//! And, on an in-process control plane: an agent whose protocol is older than the oldest
//! accepted is refused with a message naming `coordinator upgrade --agent`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flotilla_proto::v1::{EnrollRequest, agent_service_client::AgentServiceClient};
use flotilla_tests::{Cli, Coord};
use serde_json::Value;
use sha2::{Digest, Sha256};

const CLUSTER: &str = "agentup";
const SERVICE: &str = "agentup-keep";
const HOSTS: [&str; 5] = ["manager0", "manager1", "manager2", "node0", "node1"];

fn cli() -> Cli {
    Cli::new(CLUSTER)
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).env_remove("DOCKER_HOST").output().expect("docker")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `cmd` inside the lab host `host`.
fn in_host(host: &str, cmd: &[&str]) -> String {
    let name = format!("flotilla-{CLUSTER}-{host}");
    let mut args = vec!["exec", name.as_str()];
    args.extend_from_slice(cmd);
    text(&docker(&args))
}

fn status() -> Value {
    let out = cli().command().args(["--cluster", CLUSTER, "status", "--output", "json"]).output().expect("status");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
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

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(note) => note,
        };
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; last: {last}");
        std::thread::sleep(Duration::from_millis(500));
    }
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
    in_host(
        "manager0",
        &["docker", "service", "ps", SERVICE, "--filter", "desired-state=running", "--format", "{{.CurrentState}}"],
    )
    .lines()
    .filter(|l| l.starts_with("Running"))
    .count()
}

fn start_service() {
    let st = status();
    let ip = st["hosts"].as_array().and_then(|a| a.iter().find(|h| h["name"] == "manager0").cloned()).expect("m0")
        ["addresses"][0]
        .as_str()
        .expect("address")
        .to_string();
    let registry = ip.rsplit_once('.').map(|(net, _)| format!("{net}.2:5000")).expect("registry");
    let image = format!("{registry}/flotilla/hello:1");
    let cmd = [
        "docker",
        "service",
        "create",
        "--detach",
        "--name",
        SERVICE,
        "--replicas",
        "2",
        "--constraint",
        "node.role==worker",
        &image,
        "sh",
        "-c",
        "while true; do sleep 1; done",
    ];
    in_host("manager0", &cmd);
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

    // 5. `upgrade --image`'s plan (the replacement is not built): the image each host runs as
    // the provider reports it, the order; without --dry-run, refused with nothing touched.
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
    let out = c.run(&["upgrade", "--image", &other]);
    assert_eq!(out.status.code(), Some(69), "{}", said(&out));
    assert!(said(&out).contains("nothing was touched"), "{}", said(&out));
    let out = c.run(&["upgrade", "--image", "flotilla/no-such-image:1", "--dry-run"]);
    assert!(!out.status.success() && said(&out).contains("flotilla/no-such-image:1"), "{}", said(&out));
    assert_eq!(containers(), containers_before, "the image plan changed a container");

    let out = c.run(&["destroy", "--yes", "--force"]);
    assert!(out.status.success(), "destroy failed");
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
