//! Issue 18 — seeing the cluster: the control plane's `/metrics` scraped by a real
//! Prometheus (Debian's `prometheus` package, on loopback with its own data directory) and
//! its status page loaded by a real headless Chromium (Debian's `chromium`), on one lab
//! cluster of 5 hosts shared by the steps of one test (a fresh deploy costs about a minute).
//! `bash tests/run` installs both packages. Also, without the lab: the alert rules in
//! `docs/observability/` pass `promtool check rules`, and the dashboard is valid JSON over
//! series the control plane exports.
//!
//! Prometheus and Chromium talk to loopback only: Chromium runs with its background
//! networking off and every host name but 127.0.0.1 mapped to nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use flotilla_tests::Cli;
use flotilla_tests::chromium::{Chromium, KillOnDrop, tool};

const CLUSTER: &str = "metrics-obs";
/// Prometheus scrapes this often; the agents report every 5 s (the default heartbeat).
const SCRAPE: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_secs(5);

fn cli() -> Cli {
    Cli::new(CLUSTER)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).env_remove("DOCKER_HOST").output().expect("docker CLI")
}

/// A command inside a lab host.
fn in_host(host: &str, args: &[&str]) -> Output {
    let name = format!("flotilla-{CLUSTER}-{host}");
    let mut a = vec!["exec", "-i", name.as_str()];
    a.extend_from_slice(args);
    docker(&a)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `curl -sf URL` on loopback, the body.
fn get(url: &str) -> Option<String> {
    let out = Command::new("curl").args(["-sf", "--max-time", "5", url]).output().expect("curl");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// A real Prometheus on loopback scraping `target` every [`SCRAPE`].
struct Prometheus {
    _proc: KillOnDrop,
    _dir: tempfile::TempDir,
    url: String,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let bin = tool("prometheus");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "global:\n  scrape_interval: {s}s\n  scrape_timeout: {s}s\n  evaluation_interval: {s}s\nscrape_configs:\n  - job_name: flotilla\n    static_configs:\n      - targets: ['{target}']\n",
            s = SCRAPE.as_secs()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("prometheus.log")).expect("log")))
            .spawn()
            .expect("start prometheus");
        let url = format!("http://127.0.0.1:{port}");
        let p = Self { _proc: KillOnDrop(child), _dir: dir, url };
        wait_for("Prometheus to be ready", Duration::from_secs(60), || get(&format!("{}/-/ready", p.url)));
        p
    }

    /// An instant query through the HTTP API: the result vector.
    fn query(&self, q: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", &format!("{}/api/v1/query", self.url), "--data-urlencode"])
            .arg(format!("query={q}"))
            .output()
            .expect("curl");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value `q` returns, if it returns one.
    fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        r.first()?["value"][1].as_str()?.parse().ok()
    }
}

/// Polls `f` until it returns something (bounded), every 250 ms.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

fn deploy() -> SocketAddr {
    let c = cli();
    let _ = c.run(&["destroy", "--yes"]);
    let out = c.run(&["deploy", "--output", "json"]);
    assert!(out.status.success(), "deploy failed");
    let file = c.state_root.join(CLUSTER).join("metrics-address");
    let addr = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    addr.trim().parse().expect("an ip:port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_and_a_browser_see_the_lab_cluster() {
    let metrics = deploy();
    assert!(metrics.ip().is_loopback(), "the metrics listener is on loopback by default: {metrics}");
    let base = format!("http://{metrics}");

    // The raw output passes promtool and holds no secret.
    let raw = get(&format!("{base}/metrics")).expect("GET /metrics");
    check_metrics_with_promtool(&raw);
    let page = get(&format!("{base}/")).expect("GET /");
    let state = get(&format!("{base}/state.json")).expect("GET /state.json");
    assert_no_secret(&[&raw, &page, &state]);

    let prom = Prometheus::start(metrics);
    prometheus_sees_the_cluster(&prom);
    browser_sees_the_cluster(&base).await;
    a_stopped_engine_shows_within_two_scrapes(&prom);

    // Whatever the outcome above, the cluster goes (a failed assert leaves it for the next
    // run's destroy at the start).
    let out = cli().run(&["destroy", "--yes"]);
    assert!(out.status.success(), "destroy failed");
}

fn check_metrics_with_promtool(raw: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(raw.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// None of the cluster's secrets, nor anything shaped like one, is in any output.
fn assert_no_secret(outputs: &[&str]) {
    let state = cli().state_root.join(CLUSTER);
    let operator_token =
        std::fs::read_to_string(state.join("consul-operator.token")).expect("the Consul operator token");
    let mut secrets = vec![operator_token.trim().to_string()];
    for kind in ["worker", "manager"] {
        let t = in_host("manager0", &["docker", "swarm", "join-token", "-q", kind]);
        let t = String::from_utf8_lossy(&t.stdout).trim().to_string();
        assert!(t.starts_with("SWMTKN"), "the swarm's {kind} join token: {t}");
        secrets.push(t);
    }
    let shapes = ["SWMTKN", "-----BEGIN", "PRIVATE KEY", "secret_id", "token\""];
    for out in outputs {
        for s in &secrets {
            assert!(!out.contains(s.as_str()), "a secret is exposed");
        }
        for shape in shapes {
            assert!(!out.contains(shape), "output contains '{shape}'");
        }
    }
}

fn prometheus_sees_the_cluster(prom: &Prometheus) {
    let connected = wait_for("Prometheus to count 5 connected hosts", Duration::from_secs(60), || {
        prom.value("sum(flotilla_host_connected)").filter(|v| *v == 5.0)
    });
    assert_eq!(connected, 5.0);
    let hosts = prom.query("flotilla_host_connected == 1");
    assert_eq!(hosts.len(), 5, "{hosts:?}");
    wait_for("3 reachable managers", Duration::from_secs(60), || {
        prom.value("flotilla_swarm_managers_reachable").filter(|v| *v == 3.0)
    });
    wait_for("heartbeat round trips in the histogram", Duration::from_secs(60), || {
        prom.value("sum(flotilla_heartbeat_round_trip_seconds_count)").filter(|v| *v > 0.0)
    });
    let buckets = prom.query("flotilla_heartbeat_round_trip_seconds_bucket");
    assert!(buckets.len() > 5, "histogram buckets: {buckets:?}");
    wait_for("one Swarm leader and a Consul leader with 3 voters", Duration::from_secs(60), || {
        let swarm = prom.query("flotilla_swarm_leader_info").len() == 1;
        let consul = prom.query("flotilla_consul_leader_info").len() == 1;
        (swarm && consul && prom.value("flotilla_consul_voters") == Some(3.0)).then_some(())
    });
}

/// Stops the Engine of a manager that does not lead; the series say so within the agent's
/// next report plus two scrapes, and recover when it is started again.
fn a_stopped_engine_shows_within_two_scrapes(prom: &Prometheus) {
    let leader = prom.query("flotilla_swarm_leader_info");
    let leader = leader.first().and_then(|l| l["metric"]["host"].as_str()).unwrap_or_default().to_string();
    let target = ["manager0", "manager1", "manager2"].into_iter().find(|m| *m != leader).expect("a follower");
    let up = format!("flotilla_host_engine_up{{host=\"{target}\"}}");
    assert_eq!(prom.value(&up), Some(1.0), "{target}'s Engine is up before the fault");

    let out = in_host(target, &["systemctl", "stop", "docker.socket", "docker"]);
    assert!(out.status.success(), "stop the Engine: {}", String::from_utf8_lossy(&out.stderr));
    let stopped = Instant::now();
    let bound = HEARTBEAT + 2 * SCRAPE + Duration::from_secs(1);
    wait_for("engine_up to drop to 0", bound, || prom.value(&up).filter(|v| *v == 0.0));
    wait_for("2 reachable managers", bound.saturating_sub(stopped.elapsed()) + Duration::from_millis(250), || {
        prom.value("flotilla_swarm_managers_reachable").filter(|v| *v == 2.0)
    });
    eprintln!("{target}'s stopped Engine showed in Prometheus after {:?}", stopped.elapsed());

    let out = in_host(target, &["systemctl", "start", "docker"]);
    assert!(out.status.success(), "start the Engine: {}", String::from_utf8_lossy(&out.stderr));
    wait_for("the Engine back up and 3 reachable managers", Duration::from_secs(90), || {
        (prom.value(&up) == Some(1.0) && prom.value("flotilla_swarm_managers_reachable") == Some(3.0)).then_some(())
    });
}

async fn browser_sees_the_cluster(base: &str) {
    let chromium = Chromium::start();
    let mut tab = chromium.open(&format!("{base}/?host=node0")).await;
    tab.until(
        "the page loaded with its host table",
        Duration::from_secs(30),
        "location.pathname === '/' && document.readyState === 'complete' && document.querySelectorAll('#hosts tbody tr').length > 0",
    )
    .await;
    let hosts =
        tab.eval("Array.from(document.querySelectorAll('#hosts tbody tr')).map(r => r.dataset.host).join(' ')").await;
    let hosts = hosts.as_str().unwrap_or_default().to_string();
    for h in ["manager0", "manager1", "manager2", "node0", "node1"] {
        assert!(hosts.split(' ').any(|x| x == h), "the page lists {h}: {hosts}");
    }
    assert_eq!(hosts.split(' ').count(), 5, "{hosts}");
    tab.until(
        "the Swarm leader named",
        Duration::from_secs(30),
        "document.getElementById('swarm-leader').textContent.startsWith('manager')",
    )
    .await;
    tab.until(
        "the Consul leader named",
        Duration::from_secs(30),
        "/:8300$/.test(document.getElementById('consul-leader').textContent)",
    )
    .await;
    tab.until(
        "the log tail open",
        Duration::from_secs(30),
        "document.getElementById('log-state').textContent === 'live'",
    )
    .await;

    // A line in node0's Engine journal (what `journalctl -u docker` shows; the tail follows
    // it) reaches the page within 2 s.
    let marker = format!("flotilla-observability-{:08x}", rand::random::<u32>());
    let before = now_ms();
    let journal = format!("printf 'MESSAGE={marker}\\nOBJECT_SYSTEMD_UNIT=docker.service\\n' | logger --journald");
    let out = in_host("node0", &["sh", "-c", &journal]);
    assert!(out.status.success(), "logger: {}", String::from_utf8_lossy(&out.stderr));
    let find = format!(
        "(() => {{ const l = Array.from(document.querySelectorAll('#log li')).find(li => li.textContent.includes('{marker}')); return l ? Number(l.dataset.received) : null; }})()"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let received = loop {
        if let Some(ms) = tab.eval(&find).await.as_i64() {
            break ms;
        }
        assert!(Instant::now() < deadline, "the log line never reached the page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = received - before;
    eprintln!("the log line reached the page {took} ms after it was written");
    assert!(took <= 2000, "the log line took {took} ms to reach the page (at most 2000)");

    let shot = tab.call("Page.captureScreenshot", json!({ "format": "png" })).await;
    use base64::Engine as _;
    let png =
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().expect("PNG data")).expect("base64");
    let dir = flotilla_tests::target_dir().join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let path = dir.join("status-page.png");
    std::fs::write(&path, &png).expect("write screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    eprintln!("screenshot: {}", path.display());
}

#[test]
fn the_alert_rules_pass_promtool() {
    let rules = repo_root().join("docs/observability/alerts.yml");
    let out = Command::new(tool("promtool")).args(["check", "rules"]).arg(&rules).output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check rules {}: {said}", rules.display());
    assert!(said.contains("SUCCESS: 6 rules found"), "{said}");
}

#[test]
fn the_alert_rules_fire_on_the_series_they_watch() {
    let dir = repo_root().join("docs/observability");
    let out = Command::new(tool("promtool"))
        .args(["test", "rules"])
        .arg(dir.join("alerts_test.yml"))
        .current_dir(&dir)
        .output()
        .expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool test rules: {said}");
}

#[test]
fn the_dashboard_is_json_over_series_the_control_plane_exports() {
    let text =
        std::fs::read_to_string(repo_root().join("docs/observability/grafana-dashboard.json")).expect("dashboard");
    let v: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = v["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6, "{} panels", panels.len());
    let src = std::fs::read_to_string(repo_root().join("coordinator/src/control_plane/metrics/live.rs"))
        .expect("live.rs")
        + &std::fs::read_to_string(repo_root().join("coordinator/src/control_plane/metrics.rs")).expect("metrics.rs");
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            for name in
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("flotilla_"))
            {
                let base = name
                    .trim_end_matches("_total")
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum");
                assert!(
                    src.contains(&format!("\"{base}\"")),
                    "panel '{}' uses {name}, which is not exported",
                    p["title"]
                );
            }
        }
    }
}
