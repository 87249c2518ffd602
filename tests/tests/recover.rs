//! Issue 16 — `coordinator recover`, end to end on the lab, through the real binary, on one
//! default cluster (Engine, Swarm, Consul all real):
//!
//! 1. A service of 2 replicas with a Swarm secret on an overlay network, and a Consul KV
//!    entry; a backup taken. `recover` on the healthy cluster refuses (exit 75, nothing
//!    changed).
//! 2. Two of the three manager hosts removed (`docker rm -f`), the leader among them:
//!    `recover --dry-run` names the survivor and changes nothing; `recover --yes` forces a
//!    new cluster there, recovers Consul with peers.json and replaces the first, and is
//!    killed (a failpoint) as the second is about to launch, the quorum back; the rerun
//!    resumes (route `resume`, the record of the recovery then gone) and replaces the second:
//!    3 managers and 3 Consul voters, the service (same spec, 2 replicas), the secret (read by
//!    a new task), the network and the KV entry are all there.
//! 3. The newest Swarm backup with one byte changed: with every manager gone, recover
//!    refuses by its digest and changes nothing; the byte put back.
//! 4. All three manager hosts removed: the dry run names the route from the backups and
//!    launches nothing; `recover --yes` restores the backups onto new hosts (the Swarm state
//!    onto the one that has the address the backup's node advertised) and the same checks
//!    pass, the new task's secret included.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flotilla_coordinator::control_plane::backup::archive;
use flotilla_tests::Cli;
use serde_json::Value;

const CLUSTER: &str = "recover";
const SECRET: &str = "the-secret-value-7f3a";
const KV_KEY: &str = "recover-test/greeting";
const KV_VALUE: &str = "still-here";

fn cli() -> Cli {
    Cli::new(CLUSTER)
}

fn ok(args: &[&str]) -> String {
    let out = cli().run(args);
    assert!(out.status.success(), "coordinator {} failed", args.join(" "));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).env_remove("DOCKER_HOST").output().expect("docker CLI")
}

/// A shell command inside a lab host (its own Engine), bounded by `timeout 30`.
fn in_host(host: &str, script: &str) -> Output {
    docker(&["exec", &format!("flotilla-{CLUSTER}-{host}"), "timeout", "30", "sh", "-c", script])
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn status() -> Value {
    serde_json::from_str(&ok(&["status", "--output", "json"])).expect("status json")
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn leader() -> String {
    wait_for("a swarm leader in status", Duration::from_secs(60), || {
        let l = status()["swarm"]["leader"].as_str().unwrap_or("").to_string();
        l.starts_with("manager").then_some(l)
    })
}

fn remove_hosts(hosts: &[&str]) {
    for h in hosts {
        let out = docker(&["rm", "-f", &format!("flotilla-{CLUSTER}-{h}")]);
        assert!(out.status.success(), "docker rm -f {h}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn consul_token(state_dir: &Path) -> String {
    std::fs::read_to_string(state_dir.join("consul-operator.token")).expect("token").trim().to_string()
}

/// `consul <command> -token=… <args>` in `host`'s Consul server container.
fn consul(host: &str, token: &str, command: &str, args: &str) -> Output {
    in_host(host, &format!("docker exec flotilla-consul consul {command} -token={token} {args}"))
}

/// The workload the recover must bring back: a service with a secret on an overlay network,
/// and a KV entry.
fn workload(leader: &str, token: &str) {
    let image = text(&in_host(
        "node0",
        "docker image ls --format '{{.Repository}}:{{.Tag}}' | grep /flotilla/hello: | head -1",
    ));
    assert!(image.contains("/flotilla/hello:"), "the hello image is on node0: '{image}'");
    let script = format!(
        "printf {SECRET} | docker secret create recover-secret - && \
         docker network create -d overlay recover-net && \
         docker service create -d --name recover-web --replicas 2 --constraint node.role==worker \
           --secret recover-secret --network recover-net {image} sh -c 'while true; do sleep 1; done'"
    );
    let out = in_host(leader, &script);
    assert!(out.status.success(), "workload: {}", String::from_utf8_lossy(&out.stderr));
    let put = consul(leader, token, "kv put", &format!("{KV_KEY} {KV_VALUE}"));
    assert!(put.status.success(), "kv put: {}", String::from_utf8_lossy(&put.stderr));
    wait_for("2 replicas running", Duration::from_secs(90), || (running(leader) >= 2).then_some(()));
}

fn running(manager: &str) -> usize {
    let out =
        in_host(manager, "docker service ps recover-web --filter desired-state=running --format '{{.CurrentState}}'");
    text(&out).lines().filter(|l| l.starts_with("Running")).count()
}

/// Everything the cluster held is back, checked through `manager`: 3 managers with one
/// leader and 2 workers, all ready; 3 Consul voters; the service's spec and replicas; the
/// secret, read by a new task; the network; the KV entry.
fn everything_back(manager: &str, token: &str, round: &str) {
    let nodes = text(&in_host(manager, "docker node ls --format '{{.Hostname}} {{.Status}} {{.ManagerStatus}}'"));
    let lines: Vec<&str> = nodes.lines().collect();
    assert_eq!(lines.len(), 5, "5 nodes, each once: {nodes}");
    assert!(lines.iter().all(|l| l.contains(" Ready")), "all ready: {nodes}");
    assert_eq!(lines.iter().filter(|l| l.ends_with("Leader")).count(), 1, "{nodes}");
    assert_eq!(lines.iter().filter(|l| l.ends_with("Reachable")).count(), 2, "{nodes}");
    // A server that just joined is a voter once autopilot has seen it stable (10 s).
    wait_for("3 Consul voters, one leader", Duration::from_secs(60), || {
        let peers = text(&consul(manager, token, "operator raft list-peers", ""));
        let rows: Vec<Vec<&str>> = peers.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
        let voters = rows.iter().filter(|r| r.get(4) == Some(&"true")).count();
        let leaders = rows.iter().filter(|r| r.get(3) == Some(&"leader")).count();
        (rows.len() == 3 && voters == 3 && leaders == 1).then_some(())
    });
    let spec = text(&in_host(
        manager,
        "docker service inspect recover-web --format '{{.Spec.Mode.Replicated.Replicas}} {{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}}{{end}}'",
    ));
    assert_eq!(spec, "2 recover-secret", "the service's spec");
    wait_for("the service's 2 replicas running", Duration::from_secs(120), || (running(manager) >= 2).then_some(()));
    let net = text(&in_host(manager, "docker network inspect recover-net --format '{{.Name}} {{.Driver}} {{.Scope}}'"));
    assert_eq!(net, "recover-net overlay swarm");
    let kv = text(&consul(manager, token, "kv get", KV_KEY));
    assert_eq!(kv, KV_VALUE, "the KV entry");
    let image = text(&in_host(
        manager,
        "docker service inspect recover-web --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}'",
    ));
    let check = format!("recover-check-{round}");
    let create = format!(
        "docker service create -d --name {check} --restart-condition none --constraint node.role==worker \
         --secret recover-secret {image} cat /run/secrets/recover-secret"
    );
    assert!(in_host(manager, &create).status.success(), "a new task with the secret");
    let said = wait_for("the new task to print the secret", Duration::from_secs(90), || {
        let logs = text(&in_host(manager, &format!("docker service logs --raw {check} 2>/dev/null")));
        logs.contains(SECRET).then_some(logs)
    });
    assert!(said.contains(SECRET));
}

fn recover_json(args: &[&str]) -> (Output, Value) {
    let out = cli().run(&[&["recover", "--output", "json"], args].concat());
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, v)
}

/// The names of the cluster's containers (hosts and registry), running or not.
fn cluster_containers() -> String {
    let filter = format!("label=flotilla.cluster={CLUSTER}");
    text(&docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]))
}

fn said(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn issue_16_recover_from_a_survivor_and_from_the_backups() {
    let state_dir = cli().state_root.join(CLUSTER);
    let _ = cli().run(&["destroy", "--yes", "--force"]);
    ok(&["deploy", "--output", "json"]);
    let token = consul_token(&state_dir);
    let first = leader();
    workload(&first, &token);
    let backups = ok(&["backup", "--output", "json"]);
    assert_eq!(backups.lines().filter(|l| !l.trim().is_empty()).count(), 2, "{backups}");

    // 1. A healthy cluster: refused, dry run or not.
    for args in [&["--dry-run"][..], &["--yes"][..]] {
        let (out, _) = recover_json(args);
        assert_eq!(out.status.code(), Some(75), "{}", said(&out));
        assert!(said(&out).contains("still has a quorum"), "{}", said(&out));
    }
    let refused = cli().run(&["recover"]);
    assert_eq!(refused.status.code(), Some(75), "without --yes, on a healthy cluster: refused first");

    // 2. Two managers gone, the leader among them.
    let managers = ["manager0", "manager1", "manager2"];
    let survivor = *managers.iter().find(|m| **m != first).expect("a non-leader");
    let gone: Vec<&str> = managers.iter().copied().filter(|m| *m != survivor).collect();
    remove_hosts(&gone);
    let (out, plan) = recover_json(&["--dry-run"]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(plan["route"], "survivor");
    assert_eq!(plan["host"], survivor);
    assert!(plan["plan"][0].as_str().unwrap_or("").contains("--force-new-cluster"), "{plan}");
    let quorumless = in_host(survivor, "docker node ls");
    assert!(!quorumless.status.success(), "the dry run forced nothing: the survivor still has no leader");
    let no_confirm = cli().run(&["recover"]);
    assert_eq!(no_confirm.status.code(), Some(64), "no terminal, no --yes: {}", said(&no_confirm));
    assert!(said(&no_confirm).contains("pass --yes"));
    // Killed as its second replacement is about to launch — the survivor and the first
    // replacement are a quorum again by then.
    let started = Instant::now();
    let killed = cli().run_env(
        &[("FAILPOINTS", "heal.launch.before=1*off->return(crash)")],
        &["recover", "--yes", "--output", "json"],
    );
    assert!(said(&killed).contains("failpoint heal.launch.before: crash"), "{}", said(&killed));
    let record = state_dir.join("recovery.json");
    assert!(record.exists(), "the recovery under way is recorded");
    // The rerun finishes it, rather than refusing as heal's job.
    let (out, plan) = recover_json(&["--dry-run"]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(plan["route"], "resume", "{plan}");
    assert_eq!(plan["lost"], serde_json::json!([gone[1]]), "{plan}");
    let (out, report) = recover_json(&["--yes"]);
    assert!(out.status.success(), "the resumed recover: {}", said(&out));
    eprintln!(
        "survivor route, resumed: full strength at {} s of the rerun (test clock {:?})",
        report["full_strength_s"],
        started.elapsed()
    );
    assert_eq!(report["route"], "resume");
    let replaced: Vec<&str> =
        report["replaced"].as_array().expect("replaced").iter().filter_map(|r| r["host"].as_str()).collect();
    assert_eq!(replaced, [gone[1]], "the second lost manager replaced by the rerun");
    assert!(!record.exists(), "the record goes at full strength");
    everything_back(survivor, &token, "survivor");

    // 3. A changed byte in the newest Swarm backup refuses a restore.
    let all = ["manager0", "manager1", "manager2"];
    remove_hosts(&all);
    let swarm = archive::list(&state_dir).expect("list").into_iter().rev().find(|m| m.kind == "swarm").expect("swarm");
    let file = archive::file_of(&state_dir, &swarm);
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes).expect("write");
    let (out, _) = recover_json(&["--yes"]);
    assert!(!out.status.success(), "a changed backup must not be restored");
    assert!(said(&out).contains("SHA-256") && said(&out).contains(&swarm.id), "{}", said(&out));
    let hosts = cluster_containers();
    assert!(!hosts.contains("manager"), "nothing launched after the refusal: {hosts}");
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes).expect("write");

    // 4. No manager left: from the backups, onto new hosts (the Swarm state onto the one
    //    that got the address the backup's node advertised).
    let (out, plan) = recover_json(&["--dry-run"]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(plan["route"], "restore", "{plan}");
    let hosts = cluster_containers();
    assert!(!hosts.contains("manager"), "the dry run launched nothing: {hosts}");
    let (out, report) = recover_json(&["--yes"]);
    assert!(out.status.success(), "recover from the backups: {}", said(&out));
    assert_eq!(report["route"], "restore");
    eprintln!(
        "restore route: leader again at {} s, full strength at {} s",
        report["leader_s"], report["full_strength_s"]
    );
    everything_back("manager0", &token, "restore");

    ok(&["destroy", "--yes"]);
}
