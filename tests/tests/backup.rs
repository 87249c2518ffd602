//! Issue 16 — backups and the coordinator's own state, end to end on the lab, through the
//! real binary, on one default cluster (a deploy costs about a minute; the steps share it):
//!
//! 1. `coordinator backup` while a 2-replica service runs: a Swarm backup from a manager that
//!    does not lead (its Engine really restarted) and a Consul snapshot. Polled from the
//!    leader's Engine throughout: the service never has fewer than 2 running tasks and the
//!    swarm never loses (or changes) its leader.
//! 2. `backups` lists both; `backups --verify` passes; the files hold no PEM header, private
//!    key or Swarm join token in the clear (their decrypted archives do hold the node's PEM
//!    key: the check means something); one byte changed is refused by its digest.
//! 3. `state export` (passphrase file) holds no secret in the clear; the control plane is
//!    stopped, the original state directory deleted; `state import` into another state root
//!    starts it again: every host reconnects, the backups verify there, the schedule takes
//!    new ones and prunes the old (`every` 1 s: at its next tick; `keep` 1), `failover-test` passes, and
//!    `destroy` removes the cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flotilla_coordinator::control_plane::backup::archive;
use flotilla_tests::Cli;
use serde_json::Value;

const CLUSTER: &str = "backup";

fn cli() -> Cli {
    Cli::new(CLUSTER)
}

/// `coordinator --cluster backup <args>`, with `--state-root root` when given.
fn run_in(root: Option<&Path>, args: &[&str]) -> Output {
    let mut all: Vec<String> = Vec::new();
    if let Some(r) = root {
        all.extend(["--state-root".to_string(), r.display().to_string()]);
    }
    all.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    cli().run(&refs)
}

fn ok(root: Option<&Path>, args: &[&str]) -> String {
    let out = run_in(root, args);
    assert!(out.status.success(), "coordinator {} failed", args.join(" "));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).env_remove("DOCKER_HOST").output().expect("docker CLI")
}

/// A shell command inside a lab host (its own Engine), bounded by `timeout 10`.
fn in_host(host: &str, script: &str) -> Output {
    docker(&["exec", &format!("flotilla-{CLUSTER}-{host}"), "timeout", "10", "sh", "-c", script])
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn wait_status(root: Option<&Path>, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let out = run_in(root, &["status", "--output", "json"]);
        if out.status.success()
            && let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
            && pred(&v)
        {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn all_connected(st: &Value, n: usize) -> bool {
    let hosts = st["hosts"].as_array().map(Vec::as_slice).unwrap_or_default();
    hosts.len() == n
        && hosts.iter().all(|h| h["connected"] == true)
        && st["swarm"]["leader"].as_str().unwrap_or("").starts_with("manager")
}

/// What the leader's Engine says, once: the leader's name and the service's running tasks.
#[derive(Clone, Debug)]
struct Sample {
    leader: String,
    running: usize,
}

fn sample(leader_host: &str) -> Sample {
    let out = in_host(
        leader_host,
        "docker node ls --format '{{.Hostname}} {{.ManagerStatus}}'; echo ---; \
         docker service ps backup-web --filter desired-state=running --format '{{.CurrentState}}'",
    );
    let t = text(&out);
    let (nodes, tasks) = t.split_once("---").unwrap_or((&t, ""));
    let leader = nodes.lines().find(|l| l.ends_with(" Leader")).map(|l| l.split(' ').next().unwrap_or("").to_string());
    Sample {
        leader: leader.unwrap_or_default(),
        running: tasks.lines().filter(|l| l.trim_start().starts_with("Running")).count(),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Names of the entries of a gzipped tar.
fn tar_entries(gz: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    ar.entries()
        .expect("a gzipped tar")
        .map(|e| e.expect("entry").path().expect("path").display().to_string())
        .collect()
}

fn assert_no_secret_in_the_clear(path: &Path, extra: &[&str]) {
    let bytes = std::fs::read(path).expect("read");
    for needle in ["-----BEGIN", "PRIVATE KEY", "SWMTKN"].iter().chain(extra) {
        assert!(!contains(&bytes, needle.as_bytes()), "{} holds '{needle}' in the clear", path.display());
    }
}

/// Polls the leader's Engine until `stop` is set.
fn watch(leader: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<(Instant, Sample)>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            seen.push((Instant::now(), sample(&leader)));
        }
        seen
    })
}

/// Step 1: a backup while the service serves. Returns the stored backups' records.
fn backup_while_serving(leader: &str, state_dir: &Path) -> Vec<Value> {
    let invocations = |h: &str| text(&in_host(h, "systemctl show -p InvocationID --value docker.service"));
    let before: Vec<(String, String)> =
        ["manager0", "manager1", "manager2"].iter().map(|m| (m.to_string(), invocations(m))).collect();
    let first = sample(leader);
    assert!(first.leader == leader && first.running >= 2, "before the backup: {first:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(leader.to_string(), Arc::clone(&stop));
    let started = Instant::now();
    let out = ok(None, &["backup", "--output", "json"]);
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().expect("watcher");
    eprintln!("backup took {took:?}; {} samples from the leader's Engine", seen.len());
    let taken = json_lines(&out);
    assert_eq!(taken.len(), 2, "{out}");
    let swarm = taken.iter().find(|b| b["kind"] == "swarm").expect("a swarm backup");
    let source = swarm["host"].as_str().expect("host").to_string();
    assert!(source.starts_with("manager") && source != leader, "taken on {source}, the leader is {leader}");
    let after = invocations(&source);
    let was = &before.iter().find(|(m, _)| *m == source).expect("source was a manager").1;
    assert_ne!(&after, was, "the Engine of {source} did not restart for the backup");
    assert!(taken.iter().any(|b| b["kind"] == "consul" && !b["consul_version"].as_str().unwrap_or("").is_empty()));
    // Throughout: one leader, always the same, and never fewer than 2 running replicas.
    assert!(seen.len() >= 5, "too few samples ({}) to say anything", seen.len());
    for (at, s) in &seen {
        let t = at.duration_since(started).as_secs_f64();
        assert_eq!(s.leader, leader, "at +{t:.1}s the leader's Engine saw leader '{}'", s.leader);
        assert!(s.running >= 2, "at +{t:.1}s only {} replicas ran", s.running);
    }
    for b in &taken {
        assert!(Path::new(b["path"].as_str().expect("path")).starts_with(state_dir));
    }
    taken
}

/// Step 2: listed, verified, nothing in the clear, a changed byte refused.
fn verify_and_tamper(state_dir: &Path) {
    let listed = json_lines(&ok(None, &["backups", "--verify", "--output", "json"]));
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|b| b["verified"] == true), "{listed:?}");
    let token = std::fs::read_to_string(state_dir.join("consul-operator.token")).expect("token");
    for m in archive::list(state_dir).expect("list") {
        let file = archive::file_of(state_dir, &m);
        assert_no_secret_in_the_clear(&file, &[token.trim()]);
        let plain = archive::open(state_dir, &m).expect("opens");
        let entries = tar_entries(&plain);
        if m.kind == "swarm" {
            assert!(entries.iter().any(|e| e.starts_with("swarm/raft")), "{entries:?}");
            // The node's key is in the archive: the ciphertext check above is meaningful.
            assert!(contains(&plain_tar(&plain), b"-----BEGIN"), "the swarm archive holds the node's PEM key");
        } else {
            assert!(entries.iter().any(|e| e.ends_with("meta.json")), "{entries:?}");
        }
    }
    let swarm = archive::list(state_dir).expect("list").into_iter().find(|m| m.kind == "swarm").expect("swarm");
    let file = archive::file_of(state_dir, &swarm);
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&file, &bytes).expect("write");
    let out = run_in(None, &["backups", "--verify"]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "a changed byte must fail verification: {said}");
    assert!(said.contains("REFUSED") && said.contains("SHA-256"), "{said}");
    let refused = archive::latest(state_dir, "swarm").expect("latest");
    assert!(refused.is_none(), "the only swarm backup is refused for a restore");
    bytes[mid] ^= 0x20;
    std::fs::write(&file, &bytes).expect("write");
    ok(None, &["backups", "--verify"]);
}

fn plain_tar(gz: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut out).expect("gunzip");
    out
}

/// Step 3: export, delete, import elsewhere; the cluster is served from there.
fn export_delete_import(state_dir: &Path, scratch: &Path) -> PathBuf {
    let phrase = scratch.join("passphrase");
    std::fs::write(&phrase, "a long enough passphrase for the lab\n").expect("write");
    let export = scratch.join("state.age");
    let e = ok(
        None,
        &[
            "state",
            "export",
            "--out",
            &export.display().to_string(),
            "--passphrase-file",
            &phrase.display().to_string(),
            "--output",
            "json",
        ],
    );
    let e: Value = serde_json::from_str(e.trim()).expect("json");
    assert_eq!(e["restarted"], true, "the running control plane was stopped for the copy and started again");
    let token = std::fs::read_to_string(state_dir.join("consul-operator.token")).expect("token");
    assert_no_secret_in_the_clear(&export, &[token.trim()]);
    wait_status(None, "every host back after the export", Duration::from_secs(90), |st| all_connected(st, 5));

    ok(None, &["stop"]);
    std::fs::remove_dir_all(state_dir).expect("delete the original state");
    let new_root = scratch.join("elsewhere");
    let wrong = scratch.join("wrong");
    std::fs::write(&wrong, "not the passphrase at all\n").expect("write");
    let refused = run_in(
        Some(&new_root),
        &["state", "import", &export.display().to_string(), "--passphrase-file", &wrong.display().to_string()],
    );
    assert!(!refused.status.success(), "a wrong passphrase must not import");
    let imported = ok(
        Some(&new_root),
        &[
            "state",
            "import",
            &export.display().to_string(),
            "--passphrase-file",
            &phrase.display().to_string(),
            "--output",
            "json",
        ],
    );
    eprintln!("{imported}");
    let started = Instant::now();
    wait_status(
        Some(&new_root),
        "every host reconnected to the imported control plane",
        Duration::from_secs(120),
        |st| all_connected(st, 5),
    );
    eprintln!("every host reconnected {:?} after the import", started.elapsed());
    let listed = json_lines(&ok(Some(&new_root), &["backups", "--verify", "--output", "json"]));
    assert_eq!(listed.len(), 2, "the backups came along and verify with the key that came along");
    scheduled(&new_root, &listed);
    new_root
}

/// The schedule: with `every` 60 s and `keep` 1 (as `deploy` records `[backup]`), the
/// control plane takes a backup of each kind by itself — the newest is older than a minute —
/// and prunes the older ones; then the schedule is turned off again.
fn scheduled(root: &Path, before: &[Value]) {
    let policy = root.join(CLUSTER).join("backup-policy.json");
    // Due at once (the newest backup is older than a second): the schedule's next tick (every
    // 15 s) takes one of each kind and prunes to 1, without waiting out a longer period.
    std::fs::write(&policy, r#"{"every_s": 1, "keep": 1}"#).expect("write the policy");
    let deadline = Instant::now() + Duration::from_secs(90);
    let after = loop {
        let now = json_lines(&ok(Some(root), &["backups", "--output", "json"]));
        let newer = |b: &Value| before.iter().all(|o| o["id"] != b["id"]);
        if now.len() == 2 && now.iter().all(newer) {
            break now;
        }
        assert!(Instant::now() < deadline, "no scheduled backup of each kind (pruned to 1) within 90 s: {now:?}");
        std::thread::sleep(Duration::from_secs(1));
    };
    std::fs::write(&policy, r#"{"every_s": 0, "keep": 1}"#).expect("turn the schedule off");
    let kinds: Vec<&str> = after.iter().filter_map(|b| b["kind"].as_str()).collect();
    assert!(kinds.contains(&"swarm") && kinds.contains(&"consul"), "{after:?}");
    let audit = ok(Some(root), &["audit", "--output", "json"]);
    assert!(audit.contains("backup.taken") && audit.contains("schedule"), "the scheduled backups are audited");
}

#[test]
fn issue_16_backups_while_serving_and_the_state_moved_to_another_root() {
    let state_dir = cli().state_root.join(CLUSTER);
    let _ = run_in(None, &["destroy", "--yes", "--force"]);
    let report: Value = serde_json::from_str(&ok(None, &["deploy", "--output", "json"])).expect("deploy json");
    let leader = report["swarm"]["leader"].as_str().expect("leader").to_string();
    wait_status(None, "5 hosts connected with a leader", Duration::from_secs(60), |st| all_connected(st, 5));

    // A long-running service of 2 replicas on the workers, from the lab's hello image.
    let image = text(&in_host(
        "node0",
        "docker image ls --format '{{.Repository}}:{{.Tag}}' | grep /flotilla/hello: | head -1",
    ));
    // (The smoke test pulled it there: the lab registry's `flotilla/hello`, busybox inside.)
    assert!(image.contains("/flotilla/hello:"), "the hello image is on node0: '{image}'");
    let create = format!(
        "docker service create -d --name backup-web --replicas 2 --constraint node.role==worker {image} sh -c 'while true; do sleep 1; done'"
    );
    assert!(in_host(&leader, &create).status.success(), "service created");
    let deadline = Instant::now() + Duration::from_secs(90);
    while sample(&leader).running < 2 {
        assert!(Instant::now() < deadline, "the service's 2 replicas never ran");
        std::thread::sleep(Duration::from_millis(500));
    }

    backup_while_serving(&leader, &state_dir);
    verify_and_tamper(&state_dir);

    let scratch = tempfile::tempdir().expect("tempdir");
    let new_root = export_delete_import(&state_dir, scratch.path());
    let drill = run_in(Some(&new_root), &["failover-test", "--output", "json"]);
    let r: Value = serde_json::from_slice(&drill.stdout).unwrap_or_default();
    assert!(drill.status.success() && r["passed"] == true, "failover-test after the import: {}", r["verdict"]);

    ok(Some(&new_root), &["destroy", "--yes"]);
    let left = text(&docker(&["ps", "-aq", "--filter", &format!("label=flotilla.cluster={CLUSTER}")]));
    assert!(left.is_empty(), "destroy left containers: {left}");
}
