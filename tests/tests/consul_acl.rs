//! Issue 14 — Consul locked down, end to end on the lab through the real binary. Before it,
//! any container on any host could read `flotilla/<cluster>/swarm/join` — the manager join
//! token — from Consul's open HTTP API, or forge it. On one default cluster:
//!
//! - an ordinary container on a worker host (the hello image, busybox's `nc` speaking raw
//!   HTTP to every Consul server) reads nothing under `flotilla/`, cannot write there, cannot
//!   bootstrap Consul's ACLs, read its tokens or take a snapshot: no reply holds a join token,
//!   the gossip key or a Consul token;
//! - each host's own token does what its role needs and no more (a node reads the worker
//!   join record, never the managers'; a manager reads both);
//! - Consul's server RPC refuses a connection without TLS;
//! - no secret is in the Consul container's `docker inspect` or in `ps` on any Consul server,
//!   whose configuration files are 0600 in a 0700 directory;
//! - and the swarm still works: the cluster verified, both nodes joined through the worker
//!   record and ran the smoke test.

use std::process::{Command, Output};

use flotilla_tests::Cli;
use serde_json::Value;

const CLUSTER: &str = "acl";

fn cli() -> Cli {
    Cli::new(CLUSTER)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Runs `cmd` inside the lab host `host`; its stdout, failing the test if it fails.
fn in_host(host: &str, cmd: &[&str]) -> String {
    let out = Command::new("docker")
        .args(["exec", &format!("flotilla-{CLUSTER}-{host}")])
        .args(cmd)
        .env_remove("DOCKER_HOST")
        .output()
        .expect("docker exec");
    assert!(out.status.success(), "{host}: {cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    stdout(&out)
}

/// One request from the attacker: method, path, body.
type Request = (&'static str, String, &'static str);

/// Runs `requests` against each Consul HTTP API of `servers` from one ordinary container on
/// `host` (started through that host's own Engine from `image`): raw HTTP/1.0 with busybox
/// `nc`, no token. Returns, per server and request, `(request, whole reply)`.
fn from_a_workload_on(host: &str, image: &str, servers: &[String], requests: &[Request]) -> Vec<(String, String)> {
    let mut script = String::new();
    let mut asked = Vec::new();
    for ip in servers {
        for (method, path, body) in requests {
            let what = format!("{method} {ip}:8500{path}");
            script.push_str(&format!(
                "echo '=== {what}'; printf '{method} {path} HTTP/1.0\\r\\nHost: {ip}\\r\\nContent-Length: {}\\r\\n\\r\\n{body}' | nc -w 5 {ip} 8500; echo;\n",
                body.len()
            ));
            asked.push(what);
        }
    }
    let reply = in_host(host, &["docker", "run", "--rm", "--pull", "never", image, "sh", "-c", &script]);
    let replies: Vec<(String, String)> = reply
        .split("=== ")
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (what, rest) = s.split_once('\n').unwrap_or((s, ""));
            (what.to_string(), rest.to_string())
        })
        .collect();
    let got: Vec<&String> = replies.iter().map(|(w, _)| w).collect();
    assert_eq!(got, asked.iter().collect::<Vec<_>>(), "one reply per request");
    replies
}

/// A reply with the KV values it carries decoded (Consul sends them base64-encoded), so a
/// secret inside one is found by a plain search.
fn decoded(reply: &str) -> String {
    use base64::Engine as _;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or(reply);
    let mut out = reply.to_string();
    if let Ok(Value::Array(entries)) = serde_json::from_str::<Value>(body.trim()) {
        for v in entries.iter().filter_map(|e| e["Value"].as_str()) {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(v) {
                out.push('\n');
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    out
}

/// The HTTP status of a raw reply (`HTTP/1.0 403 Forbidden` → 403; 0 when none).
fn status_of(reply: &str) -> u16 {
    reply.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A GET/PUT from this machine with `token`: (status, body).
fn curl(method: &str, url: &str, token: &str, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "--max-time", "10", "-X", method, "-w", "\n%{http_code}", "-H"]);
    c.arg(format!("X-Consul-Token: {token}"));
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    let out = stdout(&c.arg(url).output().expect("curl"));
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.parse().unwrap_or(0), body.to_string())
}

/// The secret id of the token Consul describes as `description`, read with the operator's.
fn token_secret(api: &str, operator: &str, description: &str) -> String {
    let (code, list) = curl("GET", &format!("{api}/v1/acl/tokens"), operator, None);
    assert_eq!(code, 200, "{list}");
    let list: Value = serde_json::from_str(&list).expect("token list");
    let accessor = list
        .as_array()
        .and_then(|l| l.iter().find(|t| t["Description"] == description))
        .and_then(|t| t["AccessorID"].as_str())
        .unwrap_or_else(|| panic!("no token '{description}' in {list}"))
        .to_string();
    let (code, token) = curl("GET", &format!("{api}/v1/acl/token/{accessor}"), operator, None);
    assert_eq!(code, 200, "{token}");
    let token: Value = serde_json::from_str(&token).expect("token");
    token["SecretID"].as_str().expect("SecretID").to_string()
}

#[test]
fn issue_14_a_workload_on_a_worker_gets_nothing_from_consul_and_no_secret_is_in_argv() {
    let _ = cli().run(&["destroy", "--yes"]);
    let out = cli().run(&["deploy", "--output", "json"]);
    assert!(out.status.success(), "deploy failed");
    let r: Value = serde_json::from_slice(&out.stdout).expect("deploy JSON");

    // The swarm works: 3 managers and 2 workers ready (the nodes joined through the worker
    // join record), 3 Consul servers, the smoke test ran on both nodes.
    assert_eq!(r["swarm"]["managers"].as_array().map(Vec::len), Some(3), "{}", r["swarm"]);
    let workers = r["swarm"]["workers"].as_array().expect("workers");
    assert!(workers.len() == 2 && workers.iter().all(|w| w["ready"] == true), "{}", r["swarm"]);
    assert_eq!(r["consul"]["peers"].as_array().map(Vec::len), Some(3));
    assert_eq!(r["smoke_test"]["nodes"].as_array().map(Vec::len), Some(2), "{}", r["smoke_test"]);

    let st: Value = serde_json::from_slice(&cli().run(&["status", "--output", "json"]).stdout).expect("status JSON");
    let ip_of = |name: &str| {
        st["hosts"]
            .as_array()
            .and_then(|h| h.iter().find(|x| x["name"] == name))
            .and_then(|h| h["addresses"][0].as_str())
            .unwrap_or_else(|| panic!("{name}'s address"))
            .to_string()
    };
    let servers: Vec<String> = ["manager0", "manager1", "manager2"].iter().map(|m| ip_of(m)).collect();
    let manager_join = in_host("manager0", &["docker", "swarm", "join-token", "-q", "manager"]);
    let worker_join = in_host("manager0", &["docker", "swarm", "join-token", "-q", "worker"]);
    assert!(manager_join.starts_with("SWMTKN-") && worker_join.starts_with("SWMTKN-"));

    // 1. From an ordinary container on node0, to every Consul server, without a token.
    let hello = in_host("node0", &["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"])
        .lines()
        .find(|i| i.contains("/flotilla/hello"))
        .expect("the smoke test's hello image on node0")
        .to_string();
    let swarm = format!("/v1/kv/flotilla/{CLUSTER}/swarm");
    let forged = r#"{"cluster_id":"forged","manager_token":"SWMTKN-1-forged"}"#;
    let requests: Vec<Request> = vec![
        ("GET", format!("{swarm}/?recurse"), ""),
        ("GET", format!("{swarm}/join"), ""),
        ("GET", format!("{swarm}/worker"), ""),
        ("GET", "/v1/kv/?recurse".into(), ""),
        ("GET", "/v1/kv/flotilla/?keys".into(), ""),
        ("PUT", format!("{swarm}/join"), forged),
        ("PUT", format!("{swarm}/worker"), forged),
        ("PUT", format!("{swarm}/managers/evil"), "10.66.66.66:2377"),
        ("PUT", "/v1/acl/bootstrap".into(), ""),
        ("GET", "/v1/acl/tokens".into(), ""),
        ("GET", "/v1/acl/token/self".into(), ""),
        ("GET", "/v1/snapshot".into(), ""),
        ("GET", "/v1/agent/self".into(), ""),
        ("GET", "/v1/operator/raft/configuration".into(), ""),
        ("GET", "/v1/operator/keyring".into(), ""),
        ("GET", "/v1/event/list".into(), ""),
    ];
    let replies = from_a_workload_on("node0", &hello, &servers, &requests);
    for (what, reply) in &replies {
        let seen = decoded(reply);
        assert!(!seen.contains(&manager_join), "{what} yielded the manager join token:\n{seen}");
        assert!(!seen.contains(&worker_join), "{what} yielded the worker join token:\n{seen}");
        let code = status_of(reply);
        assert!(code != 0, "{what}: no HTTP reply:\n{reply}");
        if what.starts_with("PUT") || what.contains("/join") || what.contains("/worker") {
            assert_eq!(code, 403, "{what} must be refused:\n{reply}");
        }
        if what.contains("?recurse") || what.contains("?keys") {
            assert_eq!(code, 404, "{what} must find nothing:\n{reply}");
            assert!(!reply.contains("flotilla/"), "{what} lists keys:\n{reply}");
        }
        if what.contains("/v1/acl/") || what.contains("/agent/self") || what.contains("/operator/raft") {
            assert_eq!(code, 403, "{what} must be refused:\n{reply}");
        }
        if what.contains("/snapshot") {
            // Refused: 403 from the leader; a follower forwards the request to the leader,
            // which drops the denied stream (Consul 1.8 then answers 500 "connection reset").
            assert!(code == 403 || code == 500, "{what} must be refused:\n{reply}");
        }
        if what.contains("/operator/keyring") {
            // Consul 1.8 answers a denied keyring read 500 "Reading keyring denied by ACLs".
            assert!(reply.contains("denied by ACLs"), "{what} must be refused:\n{reply}");
        }
    }
    let bootstrap = replies.iter().find(|(w, _)| w.contains("/v1/acl/bootstrap")).expect("bootstrap");
    assert!(bootstrap.1.contains("no longer allowed"), "ACL bootstrap is closed: {}", bootstrap.1);

    // 2. The operator's token reads both records (unchanged by the attempts); each host's
    //    token does what its role needs only.
    let operator = std::fs::read_to_string(cli().state_root.join(CLUSTER).join("consul-operator.token"))
        .expect("the operator's Consul token")
        .trim()
        .to_string();
    let api = format!("http://{}:8500", servers[0]);
    let (code, join) = curl("GET", &format!("{api}{swarm}/join?raw"), &operator, None);
    assert_eq!(code, 200, "{join}");
    let join: Value = serde_json::from_str(&join).expect("join record");
    assert_eq!(join["manager_token"], manager_join.as_str(), "the manager join record is the swarm's, not forged");
    assert!(join.get("worker_token").is_none(), "the manager record holds no worker token: {join}");
    let (code, _) = curl("GET", &format!("{api}{swarm}/managers/evil"), &operator, None);
    assert_eq!(code, 404, "no forged manager address");
    let node0 = token_secret(&api, &operator, &format!("flotilla {CLUSTER}: node token of node0"));
    let (code, worker) = curl("GET", &format!("{api}{swarm}/worker?raw"), &node0, None);
    assert_eq!(code, 200, "a node reads the worker record: {worker}");
    assert!(worker.contains(&worker_join), "{worker}");
    assert_eq!(curl("GET", &format!("{api}{swarm}/join"), &node0, None).0, 403, "a node never reads the managers'");
    assert_eq!(curl("PUT", &format!("{api}{swarm}/worker"), &node0, Some(forged)).0, 403, "a node only reads");
    let (_, managers) = curl("GET", &format!("{api}{swarm}/managers/?recurse"), &node0, None);
    assert_eq!(managers.matches("\"Key\"").count(), 3, "a node reads the managers' addresses: {managers}");
    let manager1 = token_secret(&api, &operator, &format!("flotilla {CLUSTER}: manager token of manager1"));
    assert_eq!(curl("GET", &format!("{api}{swarm}/join"), &manager1, None).0, 200, "a manager reads its record");
    assert_eq!(curl("GET", &format!("{api}/v1/acl/tokens"), &manager1, None).0, 403, "a manager lists no tokens");

    // 3. Consul's server RPC refuses a connection without TLS (its log says so, naming node0).
    let node0_ip = ip_of("node0");
    in_host(
        "node0",
        &[
            "docker",
            "run",
            "--rm",
            "--pull",
            "never",
            &hello,
            "sh",
            "-c",
            &format!("printf '\\000' | nc -w 2 {} 8300; true", servers[0]),
        ],
    );
    let logs = Command::new("docker")
        .args(["exec", &format!("flotilla-{CLUSTER}-manager0"), "docker", "logs", "flotilla-consul"])
        .output()
        .expect("consul logs");
    let logs = String::from_utf8_lossy(&logs.stderr).to_string() + &String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.lines()
            .any(|l| l.contains("Non-TLS connection attempted with VerifyIncoming set") && l.contains(&node0_ip)),
        "manager0's Consul did not refuse plain RPC from {node0_ip}"
    );

    // 4. No secret in argv or the container's configuration; the files are root's alone.
    for m in ["manager0", "manager1", "manager2"] {
        let config: Value =
            serde_json::from_str(&in_host(m, &["cat", "/etc/flotilla/consul/flotilla.json"])).expect("config JSON");
        let secrets = [
            config["encrypt"].as_str().expect("gossip key"),
            config["acl"]["tokens"]["master"].as_str().expect("management token"),
            config["acl"]["tokens"]["agent"].as_str().expect("agent token"),
        ];
        assert_eq!(secrets[1], operator, "the servers' management token is the operator's");
        assert_eq!(config["acl"]["default_policy"], "deny");
        let inspect = in_host(m, &["docker", "inspect", "flotilla-consul"]);
        let ps = in_host(m, &["ps", "-eo", "args"]);
        for s in secrets {
            assert!(!inspect.contains(s), "{m}: a secret is in `docker inspect flotilla-consul`");
            assert!(!ps.contains(s), "{m}: a secret is in `ps`");
        }
        let modes = in_host(
            m,
            &[
                "stat",
                "-c",
                "%a %U %n",
                "/etc/flotilla/consul",
                "/etc/flotilla/consul/flotilla.json",
                "/etc/flotilla/consul/tls/server.key",
            ],
        );
        assert_eq!(
            modes.lines().map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" ")).collect::<Vec<_>>(),
            ["700 root", "600 root", "600 root"],
            "{m}: {modes}"
        );
    }

    assert!(cli().run(&["destroy", "--yes"]).status.success());
}
