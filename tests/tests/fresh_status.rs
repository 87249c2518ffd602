//! Issue 13 §3 — `status` (and `env`, which picks the swarm leader from it) read the agents'
//! last health samples. A `fresh` status request asks every connected agent for a sample
//! taken now and waits, bounded, for the answers; each host's swarm view comes with its age.
//! Real agents (on this machine's Engine) against an in-process control plane, real mTLS.
//!
//! That an agent reports a change of its swarm view at once, not at the next heartbeat, is
//! proven without a swarm by the agent's unit tests (`swarm_watch`): this machine's Engine
//! is not in one, and making it one would change the machine.
//!
//! Issue 18: `coordinator status` (the real binary, table and `--output json`) names where
//! the status page and `/metrics` listen, the address the control plane bound and recorded in
//! `<state>/metrics-address`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_coordinator::control_plane::core::FRESH_SAMPLE_WAIT;
use flotilla_proto::tls;
use flotilla_proto::v1::{self, SampleTrigger, agent_message, agent_service_client::AgentServiceClient};
use flotilla_tests::{Coord, eventually};

const WAIT: Duration = Duration::from_secs(20);

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

async fn status(coord: &Coord, fresh: bool) -> v1::StatusResponse {
    coord.admin().await.status(v1::StatusRequest { fresh }).await.expect("status").into_inner()
}

/// An agent whose heartbeat interval is an hour: after the session's first sample, only a
/// request (or a swarm change, which this machine's Engine does not have) makes another.
async fn quiet_agent(coord: &Coord, host: &str) -> flotilla_agent::AgentHandle {
    let mut cfg = coord.agent_config(host).await;
    cfg.heartbeat_interval_s = 3600;
    let mut agent = flotilla_agent::start(cfg).await.expect("agent");
    agent.wait_for(WAIT, |s| s.connected).await.expect("connected");
    agent
}

fn host<'a>(st: &'a v1::StatusResponse, name: &str) -> &'a v1::HostStatus {
    st.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("{name} not in status"))
}

#[tokio::test]
async fn issue_13_a_fresh_status_carries_a_sample_each_agent_took_after_the_request() {
    let coord = Coord::start(|_| {}).await;
    let agent = quiet_agent(&coord, "manager0").await;
    let first = eventually(WAIT, "the session's first sample", || async {
        host(&status(&coord, false).await, "manager0").health.clone()
    })
    .await;
    // Not fresh: the cached sample, and nobody is asked.
    let cached = status(&coord, false).await;
    assert!(!host(&cached, "manager0").fresh);
    // One fresh request first, so whatever the agent sent on its own at start-up is in.
    status(&coord, true).await;

    let asked_at = now_ms();
    let t = Instant::now();
    let st = status(&coord, true).await;
    assert!(t.elapsed() < FRESH_SAMPLE_WAIT, "answered, not timed out: {:?}", t.elapsed());
    let h = host(&st, "manager0");
    assert!(h.fresh, "{h:?}");
    let s = h.health.as_ref().expect("a sample");
    assert!(s.seq > first.seq + 1, "a new sample: {} after {}", s.seq, first.seq);
    assert!(s.unix_ms >= asked_at, "taken after the request: {} < {asked_at}", s.unix_ms);
    assert_eq!(s.trigger, SampleTrigger::Requested as i32);
    assert!(s.sample_now_id > 0);
    // This machine's Engine answers: the swarm view was read for this sample, just now.
    let swarm = s.swarm.as_ref().expect("a swarm view from this machine's Engine");
    assert!(swarm.observed_unix_ms >= asked_at, "{swarm:?}");
    assert!((0.0..FRESH_SAMPLE_WAIT.as_secs_f64()).contains(&h.swarm_age_s), "swarm_age_s {}", h.swarm_age_s);
    agent.stop().await;
}

/// A session that never answers (an agent older than `SampleNow`) holds a fresh request up
/// for the bounded wait only; the agents that did answer are marked fresh, it is not.
#[tokio::test]
async fn issue_13_a_fresh_status_waits_for_a_silent_agent_three_seconds_at_most() {
    let coord = Coord::start(|_| {}).await;
    let agent = quiet_agent(&coord, "manager0").await;
    let (_silent, _session) = silent_session(&coord, "manager1").await;
    eventually(WAIT, "manager1's session in status", || async {
        host(&status(&coord, false).await, "manager1").connected.then_some(())
    })
    .await;

    let t = Instant::now();
    let st = status(&coord, true).await;
    let took = t.elapsed();
    assert!(took >= FRESH_SAMPLE_WAIT && took < FRESH_SAMPLE_WAIT + Duration::from_secs(2), "took {took:?}");
    assert!(host(&st, "manager0").fresh);
    let silent = host(&st, "manager1");
    assert!(!silent.fresh && silent.connected, "{silent:?}");
    assert_eq!(silent.swarm_age_s, -1.0, "no sample, no swarm view");
    agent.stop().await;
}

/// A session opened with the host's own certificate that says Hello and nothing else.
/// Returns the sender (dropping it ends the session) and the coordinator's stream.
async fn silent_session(
    coord: &Coord,
    name: &str,
) -> (tokio::sync::mpsc::Sender<v1::AgentMessage>, tonic::Streaming<v1::CoordinatorMessage>) {
    let token = coord.token(name).await;
    let (key, csr) = flotilla_coordinator::control_plane::pki::new_key_and_csr(name).expect("csr");
    let ca = tls::certs_from_pem("ca", &coord.ca_pem()).expect("ca");
    let anonymous = tls::channel(&coord.endpoint(), tls::client_config(&ca, None).expect("cfg")).expect("channel");
    let enrolled = AgentServiceClient::with_interceptor(anonymous, flotilla_proto::protocol_header)
        .enroll(v1::EnrollRequest { token, host_name: name.into(), csr_pem: csr, facts: None })
        .await
        .expect("enroll")
        .into_inner();
    let id = tls::Identity::from_pem("test", &enrolled.certificate_pem, &key.serialize_pem()).expect("identity");
    let channel = tls::channel(&coord.endpoint(), tls::client_config(&ca, Some(&id)).expect("cfg")).expect("channel");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let hello =
        v1::Hello { host_name: name.into(), protocol_version: flotilla_proto::PROTOCOL_VERSION, ..Default::default() };
    tx.send(v1::AgentMessage { body: Some(agent_message::Body::Hello(hello)) }).await.expect("hello");
    let mut session = AgentServiceClient::with_interceptor(channel, flotilla_proto::protocol_header)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    session.message().await.expect("welcome").expect("session open");
    (tx, session)
}

/// Issue 18: the status page's address, as `status` prints it (table and JSON), is the one
/// the control plane recorded, and the page and `/metrics` answer there.
#[tokio::test]
async fn issue_18_status_names_the_status_page_address() {
    let coord = Coord::start(|c| {
        // `<root>/<cluster>`, as the CLI finds a cluster's state.
        c.state_dir = c.state_dir.with_file_name(c.cluster.clone());
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let recorded = std::fs::read_to_string(coord.state_dir().join("metrics-address")).expect("metrics-address");
    let addr: std::net::SocketAddr = recorded.trim().parse().expect("ip:port");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert_eq!(status(&coord, false).await.metrics_address, addr.to_string());

    let root = coord.state_dir().parent().expect("state root").to_path_buf();
    let cli = |args: &[&str]| {
        let bin = flotilla_tests::target_dir().join("coordinator");
        let out = tokio::process::Command::new(bin)
            .arg("--state-root")
            .arg(&root)
            .args(["--cluster", &coord.config.cluster, "status"])
            .args(args)
            .env("FLOTILLA_LOG", "warn")
            .output();
        async move {
            let out = out.await.expect("run coordinator status");
            assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).expect("UTF-8")
        }
    };
    let table = cli(&[]).await;
    assert!(table.contains(&format!("status page: http://{addr}/ (Prometheus: http://{addr}/metrics)")), "{table}");
    let json: serde_json::Value = serde_json::from_str(&cli(&["--output", "json"]).await).expect("JSON");
    assert_eq!(json["metrics_address"], addr.to_string(), "{json}");

    // Something answers there: the page and the metrics.
    for (path, expect) in [("/", "<html"), ("/metrics", "flotilla_sessions_open")] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("request");
        let mut body = String::new();
        s.read_to_string(&mut body).await.expect("response");
        assert!(body.starts_with("HTTP/1.1 200") && body.contains(expect), "GET {path}: {body:.300}");
    }
}
