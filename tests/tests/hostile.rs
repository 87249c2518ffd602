//! Issue 14 — the hostile-client suite, loopback part: attacks an unauthenticated client can
//! run against a real control plane (`serve::run` in its own process, `flotilla-serve`), each
//! bounded in size and time.
//!
//! Lock-out by idle connections: 20,000 TLS connections without a client certificate, held
//! open and alive (HTTP/2 PINGs) by four flood processes — one from the agent's own address,
//! three spread over 150 other loopback addresses — used to bring the control plane to its
//! descriptor limit (`accept failed: Too many open files`); no agent could connect, and the
//! operator's `status` went unanswered. Now the agent port caps connections without a
//! certificate (in total and per source) and closes the oldest of them to make room: while
//! the flood holds, a real agent enrolls and keeps its session, `status` answers, and the
//! control plane's descriptors stay under its limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_proto::v1;
use flotilla_tests::serve_process::ServeProcess;
use tokio::io::AsyncBufReadExt;

/// The flood: (first source address, how many addresses, connections).
const FLOOD: [(&str, u32, usize); 4] =
    [("127.0.0.1", 1, 5_000), ("127.1.1.1", 50, 5_000), ("127.1.2.1", 50, 5_000), ("127.1.3.1", 50, 5_000)];
/// Every flood process exits by itself this long after its start.
const FLOOD_HOLD: Duration = Duration::from_secs(240);
/// How long the flood may take to try all its connections.
const RAMP: Duration = Duration::from_secs(150);
/// How long the agent may take to enroll and open its session during the flood.
const ENROLL: Duration = Duration::from_secs(60);
/// How long the operator's `status` may take during the flood.
const STATUS: Duration = Duration::from_secs(10);

/// One flood process and the last report it printed.
struct Flood {
    _child: tokio::process::Child,
    last: Arc<Mutex<serde_json::Value>>,
    ramped: tokio::sync::watch::Receiver<bool>,
}

impl Flood {
    fn start(coord: &ServeProcess, ca: &std::path::Path, source: &str, sources: u32, connections: usize) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla-flood"))
            .args(["--endpoint", &coord.endpoint, "--source", source])
            .args(["--sources", &sources.to_string(), "--connections", &connections.to_string()])
            .args(["--hold-s", &FLOOD_HOLD.as_secs().to_string(), "--ca"])
            .arg(ca)
            // Its stdin closing (this test going away) also ends it.
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start a flood process");
        let stdout = child.stdout.take().expect("stdout");
        let last = Arc::new(Mutex::new(serde_json::Value::Null));
        let (ramped_tx, ramped) = tokio::sync::watch::channel(false);
        let seen = Arc::clone(&last);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(report) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                if report["phase"] == "ramped" {
                    let _ = ramped_tx.send(true);
                }
                *seen.lock().expect("flood report") = report;
            }
        });
        Self { _child: child, last, ramped }
    }

    fn report(&self) -> serde_json::Value {
        self.last.lock().expect("flood report").clone()
    }
}

fn count(floods: &[Flood], field: &str) -> u64 {
    floods.iter().map(|f| f.report()[field].as_u64().unwrap_or(0)).sum()
}

/// Samples the control plane's open descriptors every 100 ms; the highest seen.
fn sample_descriptors(pid: u32) -> (Arc<std::sync::atomic::AtomicU64>, tokio::task::JoinHandle<()>) {
    let max = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::clone(&max);
    let task = tokio::spawn(async move {
        loop {
            let (open, _) = flotilla_tests::serve_process::descriptors_of(pid);
            seen.fetch_max(open, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (max, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_twenty_thousand_idle_unauthenticated_connections_lock_no_agent_out() {
    let coord = ServeProcess::start(env!("CARGO_BIN_EXE_flotilla-serve").as_ref(), "hostile", &["--heartbeat-s", "1"]).await;
    let (_, limit) = coord.descriptors();
    let (max_open, sampler) = sample_descriptors(coord.pid());
    // The agent's join token, minted before the attack.
    let token = coord
        .admin()
        .await
        .expect("admin")
        .create_token(v1::CreateTokenRequest { host_name: "survivor".into(), ttl_s: 0 })
        .await
        .expect("token")
        .into_inner()
        .token;
    let ca = coord.dir.path().join("ca.pem");
    std::fs::write(&ca, coord.ca_pem()).expect("ca");

    // The flood: every connection tried, the ones the control plane kept held open.
    let started = Instant::now();
    let mut floods: Vec<Flood> = FLOOD.iter().map(|&(src, n, conns)| Flood::start(&coord, &ca, src, n, conns)).collect();
    for f in &mut floods {
        let ramped = matches!(tokio::time::timeout(RAMP, f.ramped.wait_for(|r| *r)).await, Ok(Ok(_)));
        assert!(ramped, "a flood process did not finish its ramp in {RAMP:?}: {}", f.report());
    }
    let ramp = started.elapsed();
    let tried: usize = FLOOD.iter().map(|f| f.2).sum();
    let held_after_ramp = count(&floods, "held");
    let handshaked = count(&floods, "handshaked");
    let retried = count(&floods, "retried");

    // While it holds: the operator's status answers ...
    let t = Instant::now();
    let status = tokio::time::timeout(STATUS, async {
        coord.admin().await.map_err(|e| e.to_string())?.status(v1::StatusRequest {}).await.map_err(|e| e.to_string())
    })
    .await;
    let status_took = t.elapsed();
    let status_ok = matches!(status, Ok(Ok(_)));

    // ... and a real agent enrolls, opens its session, and has its heartbeats acked.
    let t = Instant::now();
    let mut agent = flotilla_agent::start(coord.agent_config("survivor", &token)).await.expect("agent starts");
    let enrolled = agent.wait_for(ENROLL, |s| s.enrolled).await;
    let enroll_took = t.elapsed();
    let acked = agent.wait_for(ENROLL, |s| s.connected && s.last_rtt.is_some()).await;
    let session_took = t.elapsed();
    // The session holds: a few more heartbeats on the same session, acked.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = agent.status.borrow().clone();
    let host = tokio::time::timeout(STATUS, async {
        let mut admin = coord.admin().await.ok()?;
        let st = admin.status(v1::StatusRequest {}).await.ok()?.into_inner();
        st.hosts.into_iter().find(|h| h.name == "survivor")
    })
    .await
    .ok()
    .flatten();
    let held_during = count(&floods, "held");
    let (open_now, _) = coord.descriptors();
    let max_open = max_open.load(std::sync::atomic::Ordering::Relaxed).max(open_now);
    sampler.abort();
    let log = coord.log_text();

    eprintln!(
        "flood: {tried} connections tried from {} processes in {ramp:.1?}; {handshaked} completed TLS ({retried} attempts retried), \
         {held_after_ramp} held after the ramp, {held_during} held during the checks\n\
         control plane: descriptors {open_now} now, at most {max_open} seen, limit {limit}\n\
         status answered: {status_ok} in {status_took:.1?} ({})\n\
         agent: enrolled {} in {enroll_took:.1?}, session with heartbeats acked {} in {session_took:.1?}; \
         5 s later: connected {}, sessions opened {}, last error '{}'\n\
         coordinator's view of the agent: {:?}\n\
         control plane log: {} lines",
        floods.len(),
        match &status {
            Ok(Ok(_)) => "ok".to_string(),
            Ok(Err(e)) => e.clone(),
            Err(_) => "timed out".to_string(),
        },
        enrolled.is_ok(),
        acked.is_ok(),
        after.connected,
        after.sessions_opened,
        after.last_error,
        host.as_ref().map(|h| (h.connected, h.last_heartbeat_age_s)),
        log.lines().count(),
    );
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");

    assert!(max_open < limit, "the control plane reached its descriptor limit ({max_open} of {limit}):\n{tail}");
    assert!(status_ok, "the operator's status went unanswered during the flood:\n{tail}");
    assert!(enrolled.is_ok(), "the agent could not enroll during the flood: {:?}\n{tail}", enrolled);
    assert!(acked.is_ok(), "the agent's session did not open during the flood: {:?}\n{tail}", acked);
    assert!(after.connected && after.sessions_opened == 1, "the agent's session did not hold: {after:?}");
    let host = host.expect("the coordinator lists the agent");
    assert!(host.connected && host.last_heartbeat_age_s < 3.0, "no recent heartbeat: {host:?}");
    // Refusals are counted and summarised, never one log line per connection.
    assert!(log.lines().count() < 200, "the flood was logged line by line:\n{tail}");

    agent.stop().await;
    drop(floods);
    coord.stop().await;
}
