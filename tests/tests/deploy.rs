//! Issues 4 and 5 — end to end on the lab, through the real `coordinator` binary: the
//! default cluster deploys and verifies; re-deploy is a no-op; roles reconcile (a removed
//! Consul container comes back, a stopped Engine is reported and recovers, bad specs are
//! refused); the plain `docker` CLI works with `coordinator env`; an interrupted deploy
//! converges; nodes scale 2→3→2; destroy leaves nothing.
//!
//! One cluster is shared by the steps of one test (a fresh deploy costs about a minute on
//! 2 cores); bad-config checks create nothing and run on their own.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_tests::Cli;
use serde_json::Value;

const CLUSTER: &str = "e2e";

fn cli() -> Cli {
    Cli::new(CLUSTER)
}

fn state_root() -> PathBuf {
    cli().state_root
}

fn coordinator() -> Command {
    cli().command()
}

/// `coordinator <args>` (the args name the cluster themselves).
fn run(args: &[&str]) -> Output {
    let out = coordinator().args(args).output().expect("run coordinator");
    eprintln!(
        "$ coordinator {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok_json(args: &[&str]) -> Value {
    let out = run(args);
    assert!(out.status.success(), "coordinator {} failed", args.join(" "));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// `docker` against the machine's own Engine.
fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .output()
        .expect("docker CLI")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `docker` inside a lab host (its own Engine).
fn in_host(host: &str, args: &[&str]) -> Output {
    let mut a = vec!["exec", "-i"];
    let name = format!("flotilla-{CLUSTER}-{host}");
    a.push(&name);
    a.extend_from_slice(args);
    docker(&a)
}

fn labelled(kind: &str) -> Vec<String> {
    let filter = format!("label=flotilla.cluster={CLUSTER}");
    let out = match kind {
        "container" => docker(&["ps", "-aq", "--filter", &filter]),
        "volume" => docker(&["volume", "ls", "-q", "--filter", &filter]),
        _ => docker(&["network", "ls", "-q", "--filter", &filter]),
    };
    stdout(&out).lines().map(str::to_string).collect()
}

fn status() -> Value {
    ok_json(&["--cluster", CLUSTER, "status", "--output", "json"])
}

/// Polls `coordinator status` until `pred` holds (bounded).
fn wait_status(what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let out = coordinator().args(["--cluster", CLUSTER, "status", "--output", "json"]).output().expect("status");
        if out.status.success()
            && let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
            && pred(&v)
        {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn host<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("host {name} not in status"))
}

fn role_state(st: &Value, host_name: &str, role: &str) -> String {
    host(st, host_name)["role_status"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["role"] == role))
        .map(|x| format!("{} {}", x["state"].as_str().unwrap_or(""), x["message"].as_str().unwrap_or("")))
        .unwrap_or_default()
}

#[test]
fn bad_configs_exit_64_with_the_problem_named_and_create_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&str, &str); 4] = [
        ("name = \"bad\"\nmanagerz = 3\n", "managerz"),
        ("name = \"bad\"\nmanagers = 2\n", "tolerates the loss of"),
        ("name = \"bad\"\nnodes = 0\n", "`nodes`"),
        ("name = \"bad\"\n[coordinator]\nadvertise = \"10.0.0.300\"\n", "coordinator.advertise"),
    ];
    for (toml, want) in cases {
        let f = dir.path().join("flotilla.toml");
        std::fs::write(&f, toml).expect("write");
        let out = coordinator()
            .env("FLOTILLA_STATE_DIR", dir.path().join("state"))
            .args(["deploy", "-f"])
            .arg(&f)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{toml}: {err}");
        assert!(err.contains(want), "{toml}: expected '{want}' in: {err}");
        assert!(err.contains("flotilla.toml"), "the error names the file: {err}");
    }
    let any = docker(&["ps", "-aq", "--filter", "label=flotilla.cluster=bad"]);
    assert!(stdout(&any).is_empty(), "nothing may be created for a bad config");
    assert!(!dir.path().join("state").join("bad").exists(), "no state for a bad config");
}

#[test]
fn a_cluster_name_from_flotilla_toml_is_checked_before_it_becomes_a_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // A name that would leave the state root, and a file that does not parse (falling back
    // to the default cluster would act on another cluster).
    for (toml, want) in [("name = \"../../escape\"\n", "`name`"), ("name = \"x\"\nmanagers = [\n", "flotilla.toml")] {
        std::fs::write(dir.path().join("flotilla.toml"), toml).expect("write");
        for args in [&["status"][..], &["destroy", "--yes"], &["stop"]] {
            let out = coordinator()
                .current_dir(dir.path())
                .env("FLOTILLA_STATE_DIR", &state)
                .env_remove("FLOTILLA_CLUSTER")
                .args(args)
                .output()
                .expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{args:?} with {toml:?}: {err}");
            assert!(err.contains(want) && err.contains("flotilla.toml"), "{args:?} with {toml:?}: {err}");
        }
    }
    assert!(!dir.path().join("escape").exists() && !state.exists(), "nothing was created");
}

#[test]
fn the_default_cluster_deploys_verifies_reconciles_scales_and_is_destroyed() {
    // A previous failed run may have left its cluster: start clean.
    let _ = run(&["--cluster", CLUSTER, "destroy", "--yes"]);

    // 1. Default deploy: 3 managers (1 leader, 2 reachable), 2 workers, 3 Consul servers,
    //    the hello service ran on the nodes and its output came back.
    let started = Instant::now();
    let r = ok_json(&["--cluster", CLUSTER, "deploy", "--output", "json"]);
    eprintln!("fresh deploy took {:?}", started.elapsed());
    assert_eq!(r["changed"], true);
    let managers = r["swarm"]["managers"].as_array().expect("managers");
    assert_eq!(managers.len(), 3);
    assert_eq!(managers.iter().filter(|m| m["manager_status"] == "leader").count(), 1);
    assert_eq!(managers.iter().filter(|m| m["manager_status"] == "reachable").count(), 2);
    let workers = r["swarm"]["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().chain(managers).all(|n| n["ready"] == true));
    assert_eq!(r["consul"]["peers"].as_array().map(Vec::len), Some(3));
    assert!(!r["consul"]["leader"].as_str().unwrap_or("").is_empty());
    let smoke = &r["smoke_test"];
    let ran_on: Vec<&str> = smoke["nodes"].as_array().expect("nodes").iter().filter_map(|n| n.as_str()).collect();
    assert_eq!(ran_on.len(), 2, "{smoke}");
    assert!(ran_on.iter().all(|n| n.starts_with("node")), "hello ran on the nodes only: {ran_on:?}");
    assert!(
        smoke["output"].as_array().expect("output").iter().any(|l| l.as_str().unwrap_or("").contains("Hello from")),
        "{smoke}"
    );
    // `status` shows the swarm as the agents' samples say; they report a change at once, but
    // one may still be on its way when the deploy returns (issue 13): wait for it, bounded.
    let st = wait_status("3 managers, one of them the leader, in status", Duration::from_secs(30), |st| {
        let managers = st["swarm"]["managers"].as_array().map(Vec::as_slice).unwrap_or_default();
        managers.len() == 3
            && managers.iter().filter(|m| m["manager_status"] == "leader").count() == 1
            && st["swarm"]["leader"].as_str().unwrap_or("").starts_with("manager")
    });
    let hosts = st["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 5);
    assert!(hosts.iter().all(|h| h["connected"] == true));
    engines_started_once(hosts);
    let usr_copy = usr_from_the_copy_and_blobs_from_the_store();
    assert!(st["swarm"]["leader"].as_str().unwrap_or("").starts_with("manager"), "{}", st["swarm"]);

    // Join data is in Consul's KV, where managers and nodes found each other: listed with
    // the operator's Consul token, and not at all without a token (issue 14).
    let leader_ip = r["swarm"]["leader_ip"].as_str().expect("leader ip").to_string();
    let operator_token = std::fs::read_to_string(state_root().join(CLUSTER).join("consul-operator.token"))
        .expect("the operator's Consul token");
    let keys_url = format!("http://{leader_ip}:8500/v1/kv/flotilla/{CLUSTER}/swarm/?keys");
    let kv = Command::new("curl")
        .args(["-sf", "-H", &format!("X-Consul-Token: {}", operator_token.trim()), &keys_url])
        .output()
        .expect("curl");
    let keys = stdout(&kv);
    assert!(keys.contains(&format!("flotilla/{CLUSTER}/swarm/join")), "{keys}");
    assert!(keys.contains(&format!("flotilla/{CLUSTER}/swarm/worker")), "{keys}");
    assert_eq!(keys.matches("/swarm/managers/").count(), 3, "{keys}");
    let anonymous = Command::new("curl").args(["-s", &keys_url]).output().expect("curl");
    assert!(!stdout(&anonymous).contains("/swarm/"), "an anonymous client lists no key: {}", stdout(&anonymous));

    // 2. The plain docker CLI with what `coordinator env` prints lists the nodes; without
    //    the client certificate the Engine refuses.
    let env = ok_json(&["--cluster", CLUSTER, "env", "--output", "json"]);
    let mut d = Command::new("docker");
    for (k, v) in env.as_object().expect("env object") {
        d.env(k, v.as_str().unwrap_or(""));
    }
    let nodes = d.args(["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"]).output().expect("docker");
    let nodes = stdout(&nodes);
    assert_eq!(nodes.lines().count(), 5, "{nodes}");
    assert_eq!(nodes.matches("Leader").count(), 1, "{nodes}");
    let no_cert = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(env["DOCKER_CERT_PATH"].as_str().map(|p| format!("{p}/ca.pem")).expect("cert path"))
        .arg(format!("https://{leader_ip}:2376/version"))
        .output()
        .expect("curl");
    assert!(
        !no_cert.status.success() || stdout(&no_cert) != "200",
        "the Engine must refuse a client without a certificate"
    );
    // A host's own identity (cluster CA) is no Engine client: every manager's 2376 trusts
    // only the Engine client CA (issue 14). The docker certificate is good on each of them.
    let identity = stdout(&in_host("node0", &["cat", "/var/lib/flotilla/identity.pem"]));
    let stolen = tempfile::tempdir().expect("tempdir");
    let pem_of = |label: &str| -> String {
        let at = identity.find(&format!("-----BEGIN {label}")).unwrap_or_else(|| panic!("no {label} in identity.pem"));
        let end_marker = format!("-----END {label}-----");
        let end = identity[at..].find(&end_marker).expect("end") + at + end_marker.len();
        identity[at..end].to_string() + "\n"
    };
    std::fs::write(stolen.path().join("cert.pem"), pem_of("CERTIFICATE")).expect("write");
    std::fs::write(stolen.path().join("key.pem"), pem_of("PRIVATE KEY")).expect("write");
    let cert_path = PathBuf::from(env["DOCKER_CERT_PATH"].as_str().expect("cert path"));
    let manager_ips: Vec<String> = st["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter(|h| h["roles"].as_array().is_some_and(|r| r.iter().any(|r| r == "manager")))
        .filter_map(|h| h["addresses"][0].as_str().map(str::to_string))
        .collect();
    assert_eq!(manager_ips.len(), 3, "{st}");
    let engine_version = |dir: &std::path::Path, ip: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(cert_path.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"))
            .arg(format!("https://{ip}:2376/version"))
            .output()
            .expect("curl");
        stdout(&out)
    };
    for ip in &manager_ips {
        assert_eq!(engine_version(&cert_path, ip), "200", "the docker certificate is good on {ip}:2376");
        assert_ne!(engine_version(stolen.path(), ip), "200", "{ip}:2376 must refuse a host identity");
    }
    // The Engines' keys never left their hosts (issue 14): each manager's Engine runs with the
    // key its agent made, and the coordinator's store does not hold it. (The store does hold
    // the Consul servers' TLS keys, which the coordinator still makes: see docs/SECURITY.md.)
    let store = std::fs::read(state_root().join(CLUSTER).join("state.redb")).expect("the coordinator's store");
    for h in st["hosts"].as_array().expect("hosts") {
        let name = h["name"].as_str().expect("name");
        if h["roles"].as_array().is_some_and(|r| r.iter().any(|r| r == "manager")) {
            let same = in_host(name, &["cmp", "/etc/docker/flotilla-tls/key.pem", "/var/lib/flotilla/engine-key.pem"]);
            assert!(same.status.success(), "{name}'s Engine runs with its own key: {}", stdout(&same));
            let key = stdout(&in_host(name, &["cat", "/var/lib/flotilla/engine-key.pem"]));
            let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
            assert!(body.len() > 40, "{name}: an Engine key: {key}");
            assert!(
                !store.windows(body.len().min(64)).any(|w| w == &body.as_bytes()[..body.len().min(64)]),
                "{name}'s Engine key is in the coordinator's store"
            );
        }
    }

    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{leader_ip}:2375/version")])
        .output()
        .expect("curl");
    assert_ne!(stdout(&plain), "200", "no plain TCP Engine port");

    // 3. Re-deploy: nothing changes (Engine object ids too), and it says so. (How fast: a
    //    benchmark's, `benches/deploy.sh`; here only printed — two lab tests run at once.)
    let consul_id = stdout(&in_host("manager0", &["docker", "inspect", "-f", "{{.Id}}", "flotilla-consul"]));
    let t = Instant::now();
    let again = ok_json(&["--cluster", CLUSTER, "deploy", "--output", "json"]);
    let took = t.elapsed();
    assert_eq!(again["changed"], false);
    assert!(again["launched"].as_array().is_some_and(Vec::is_empty));
    eprintln!("no-op re-deploy took {took:?}");
    assert_eq!(stdout(&in_host("manager0", &["docker", "inspect", "-f", "{{.Id}}", "flotilla-consul"])), consul_id);

    // 3b. The control plane stopped: hosts keep their containers running; the next deploy
    //     starts it again, every agent reconnects, and nothing changes.
    assert!(run(&["--cluster", CLUSTER, "stop"]).status.success());
    assert!(!state_root().join(CLUSTER).join("admin.sock").exists());
    assert_eq!(
        stdout(&in_host("manager0", &["docker", "inspect", "-f", "{{.State.Running}}", "flotilla-consul"])),
        "true"
    );
    let back = ok_json(&["--cluster", CLUSTER, "deploy", "--output", "json"]);
    assert_eq!(back["changed"], false);
    assert_eq!(stdout(&in_host("manager0", &["docker", "inspect", "-f", "{{.Id}}", "flotilla-consul"])), consul_id);

    // 4. Reconcile: `docker rm -f` of the Consul container → restored.
    let rm = in_host("manager1", &["docker", "rm", "-f", "flotilla-consul"]);
    assert!(rm.status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = stdout(&in_host("manager1", &["docker", "ps", "-q", "--filter", "name=flotilla-consul"]));
        if running.lines().count() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the consul container was not restored");
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_status("manager1's consul running again", Duration::from_secs(90), |st| {
        role_state(st, "manager1", "consul").starts_with("running")
    });

    // 5. The Engine stopped under an agent: status says so; it recovers when it is back.
    assert!(in_host("node1", &["systemctl", "stop", "docker.socket", "docker.service"]).status.success());
    wait_status("node1 reports its Engine down", Duration::from_secs(60), |st| {
        role_state(st, "node1", "node").contains("does not answer")
    });
    assert!(in_host("node1", &["systemctl", "start", "docker.service"]).status.success());
    wait_status("node1's node role running again", Duration::from_secs(90), |st| {
        role_state(st, "node1", "node").starts_with("running")
    });

    // 6. The agent killed and restarted: it adopts what it finds (no duplicate container).
    assert!(in_host("manager2", &["systemctl", "kill", "-s", "KILL", "flotilla-agent.service"]).status.success());
    wait_status("manager2 reconnected", Duration::from_secs(60), |st| {
        host(st, "manager2")["connected"] == true && role_state(st, "manager2", "manager").starts_with("running")
    });
    let consuls = stdout(&in_host("manager2", &["docker", "ps", "-aq", "--filter", "label=flotilla.role=consul"]));
    assert_eq!(consuls.lines().count(), 1, "exactly one consul container: {consuls}");

    // 6b. Bad input through the admin API: a malformed spec is InvalidArgument and changes
    //     nothing; an image that does not exist gives a clear status with the registry's
    //     error and disturbs nothing else; the good assignment restores the host.
    bad_assignments(&leader_ip);

    // 7. Scale nodes 2→3, with the deploy killed mid-way; the re-run converges with no
    //    duplicate host or container.
    let mut child = coordinator()
        .args(["--cluster", CLUSTER, "deploy", "--nodes", "3"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("deploy --nodes 3");
    let deadline = Instant::now() + Duration::from_secs(120);
    while labelled("container").len() < 7 {
        // 5 hosts + registry; node2 makes 7.
        assert!(Instant::now() < deadline, "node2 was never launched");
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().expect("kill -9 the deploy");
    let _ = child.wait();
    let r = ok_json(&["--cluster", CLUSTER, "deploy", "--nodes", "3", "--output", "json"]);
    assert_eq!(r["swarm"]["workers"].as_array().map(Vec::len), Some(3));
    assert_eq!(labelled("container").len(), 7, "no duplicate host");
    let node2 = stdout(&docker(&["ps", "-aq", "--filter", &format!("name=flotilla-{CLUSTER}-node2")]));
    assert_eq!(node2.lines().count(), 1);

    // ...and back to 2: node2 drains, leaves, is terminated and forgotten.
    let r = ok_json(&["--cluster", CLUSTER, "deploy", "--nodes", "2", "--output", "json"]);
    assert_eq!(r["removed"], serde_json::json!(["node2"]));
    assert_eq!(r["swarm"]["workers"].as_array().map(Vec::len), Some(2));
    assert_eq!(labelled("container").len(), 6);
    let st = status();
    assert!(st["hosts"].as_array().expect("hosts").iter().all(|h| h["name"] != "node2"));

    // 8. Destroy leaves no container, network or volume of the cluster, nor its state.
    let out = run(&["--cluster", CLUSTER, "destroy", "--yes"]);
    assert!(out.status.success());
    assert!(labelled("container").is_empty(), "containers left: {:?}", labelled("container"));
    assert!(labelled("volume").is_empty(), "volumes left: {:?}", labelled("volume"));
    assert!(labelled("network").is_empty(), "networks left: {:?}", labelled("network"));
    assert!(!state_root().join(CLUSTER).exists());
    // The lab's caches are no cluster's: the hosts' /usr copy and the registries' blob store stay.
    for v in [usr_copy, "flotilla-lab-registry-store".to_string()] {
        assert!(docker(&["volume", "inspect", &v]).status.success(), "destroy removed the lab cache {v}");
    }
    // Idempotent.
    assert!(run(&["--cluster", CLUSTER, "destroy", "--yes"]).status.success());
}

/// Issue 19: every host's Engine started exactly once during the deploy, already configured
/// (the lab registry trusted from bootcmd; a manager's Engine held at boot until its agent
/// wrote the TLS listener): one "Daemon has completed initialization" in its journal, and on
/// a manager the listener on 2376 is in that one start.
fn engines_started_once(hosts: &[Value]) {
    for h in hosts {
        let name = h["name"].as_str().expect("host name");
        let journal = stdout(&in_host(name, &["journalctl", "-u", "docker.service", "-o", "cat", "--no-pager"]));
        let starts = journal.matches("Daemon has completed initialization").count();
        assert_eq!(starts, 1, "{name}'s Engine started {starts} times during the deploy:\n{journal}");
        if name.starts_with("manager") {
            assert!(journal.contains(":2376"), "{name}'s one start has no TLS listener:\n{journal}");
        }
    }
}

/// The volume holding the default host image's /usr copy (`providers/lab/usr_copy.rs`).
fn usr_copy_volume() -> String {
    let out = docker(&["volume", "ls", "-q", "--filter", "label=flotilla.lab-usr-of"]);
    let image = stdout(&docker(&["inspect", "-f", "{{.Image}}", &format!("flotilla-{CLUSTER}-manager0")]));
    let want = format!("flotilla-lab-usr-{}", &image.trim_start_matches("sha256:")[..12]);
    assert!(stdout(&out).lines().any(|v| v == want), "no {want} among the /usr copies: {}", stdout(&out));
    want
}

/// Issue 19: hosts read /usr (but /usr/local) read-only from the copy on the Engine's own disk,
/// not through its storage driver, and write /usr/local; the registry keeps its blobs in the
/// shared store. Returns the copy's volume.
fn usr_from_the_copy_and_blobs_from_the_store() -> String {
    let volume = usr_copy_volume();
    for host in ["manager0", "node0"] {
        let mounts = stdout(&docker(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Source}}>{{.Destination}}:{{.RW}} {{end}}",
            &format!("flotilla-{CLUSTER}-{host}"),
        ]));
        for d in ["bin", "lib", "lib64", "libexec", "sbin", "share"] {
            let m = format!("{volume}/_data/usr/{d}>/usr/{d}:false");
            assert!(mounts.contains(&m), "{host}: no read-only /usr/{d} from {volume}: {mounts}");
        }
        assert!(!mounts.contains(">/usr/local"), "{host}: /usr/local must be the host's own: {mounts}");
        let write = in_host(host, &["touch", "/usr/lib/flotilla-probe"]);
        assert!(!write.status.success(), "{host} could write /usr/lib");
        assert!(String::from_utf8_lossy(&write.stderr).contains("Read-only"), "{:?}", write);
        let local = in_host(host, &["sh", "-c", "touch /usr/local/bin/.probe && rm /usr/local/bin/.probe"]);
        assert!(local.status.success(), "{host} cannot write /usr/local: {local:?}");
        let python = in_host(host, &["python3", "-c", "import cloudinit; print('ok')"]);
        assert_eq!(stdout(&python), "ok", "{host}'s cloud-init from the copy: {python:?}");
    }
    let registry = stdout(&docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Name}}>{{.Destination}} {{end}}",
        &format!("flotilla-{CLUSTER}-registry"),
    ]));
    assert!(registry.contains("flotilla-lab-registry-store>/var/lib/registry"), "{registry}");
    volume
}

fn bad_assignments(any_manager_ip: &str) {
    use flotilla_proto::v1;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let sock = state_root().join(CLUSTER).join("admin.sock");
        let mut admin = flotilla_coordinator::admin_client::connect_local(CLUSTER, &sock).await.expect("admin socket");
        let st = admin.status(v1::StatusRequest::default()).await.expect("status").into_inner();
        let node1 = st.hosts.iter().find(|h| h.name == "node1").expect("node1");
        let gen_before = node1.generation;
        let addr = node1.facts.as_ref().and_then(|f| f.private_addresses.first().cloned()).expect("address");
        let consul_http = vec![format!("{any_manager_ip}:8500")];
        let node_spec = v1::RoleSpec {
            spec: Some(v1::role_spec::Spec::Node(v1::NodeSpec {
                consul_http_addrs: consul_http.clone(),
                ..Default::default()
            })),
        };

        // Malformed: a Consul server expecting 0 servers.
        let bad = v1::RoleSpec {
            spec: Some(v1::role_spec::Spec::Consul(v1::ConsulSpec {
                image: Some(v1::ImageRef { reference: "x:1".into(), ..Default::default() }),
                bootstrap_expect: 0,
                ..Default::default()
            })),
        };
        let e = admin
            .assign(v1::AssignRequest {
                host_name: "node1".into(),
                roles: vec![node_spec.clone(), bad],
                host_address: addr.clone(),
            })
            .await
            .expect_err("malformed spec");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("bootstrap_expect"), "{}", e.message());
        let st = admin.status(v1::StatusRequest::default()).await.expect("status").into_inner();
        assert_eq!(st.hosts.iter().find(|h| h.name == "node1").map(|h| h.generation), Some(gen_before));

        // A missing image: the role fails with the registry's own message, the node role
        // keeps running.
        let registry = any_manager_ip.rsplit_once('.').map(|(net, _)| format!("{net}.2:5000")).expect("registry");
        let missing = v1::RoleSpec {
            spec: Some(v1::role_spec::Spec::Consul(v1::ConsulSpec {
                image: Some(v1::ImageRef { reference: format!("{registry}/flotilla/missing:0"), ..Default::default() }),
                bootstrap_expect: 1,
                ..Default::default()
            })),
        };
        admin
            .assign(v1::AssignRequest {
                host_name: "node1".into(),
                roles: vec![missing, node_spec.clone()],
                host_address: addr.clone(),
            })
            .await
            .expect("a well-formed assignment is accepted");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let st = admin.status(v1::StatusRequest::default()).await.expect("status").into_inner();
            let h = st.hosts.iter().find(|h| h.name == "node1").expect("node1");
            let consul = h.role_status.iter().find(|r| r.role == v1::Role::Consul as i32);
            let node = h.role_status.iter().find(|r| r.role == v1::Role::Node as i32);
            if let (Some(c), Some(n)) = (consul, node)
                && c.state == v1::RoleState::Failed as i32
            {
                assert!(c.message.contains("flotilla/missing"), "{}", c.message);
                assert!(c.message.contains("not found") || c.message.contains("manifest unknown"), "{}", c.message);
                assert_eq!(n.state, v1::RoleState::Running as i32, "the node role is undisturbed: {}", n.message);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no failed status for the missing image: {:?}",
                h.role_status
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Back to the planned roles: the failed consul role is dropped.
        admin
            .assign(v1::AssignRequest { host_name: "node1".into(), roles: vec![node_spec], host_address: addr })
            .await
            .expect("restore");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let st = admin.status(v1::StatusRequest::default()).await.expect("status").into_inner();
            let h = st.hosts.iter().find(|h| h.name == "node1").expect("node1");
            if h.role_status.len() == 1 && h.role_status[0].state == v1::RoleState::Running as i32 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "node1 did not return to its planned roles");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
}
