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
//!
//! Audit flooding: every refused `Enroll` was an fsync'd audit event with the attacker's host
//! name stored verbatim, terminal escapes and all: 10,000 of them grew the state file by
//! hundreds of megabytes, pushed real events out, broke `coordinator audit` (past its 4 MiB
//! answer) and printed escapes to the operator's terminal. Now refusals are counted per source
//! and kind and written in batches, and every stored or printed field is cut and escaped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_coordinator::control_plane::settings::RateLimit;
use flotilla_proto::tls;
use flotilla_proto::v1::{self, agent_service_client::AgentServiceClient};
use flotilla_tests::Coord;
use flotilla_tests::serve_process::ServeProcess;
use futures::StreamExt;
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
                let ramped = report["phase"] == "ramped";
                *seen.lock().expect("flood report") = report;
                if ramped {
                    let _ = ramped_tx.send(true);
                }
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
    let coord =
        ServeProcess::start(env!("CARGO_BIN_EXE_flotilla-serve").as_ref(), "hostile", &["--heartbeat-s", "1"]).await;
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
    let mut floods: Vec<Flood> =
        FLOOD.iter().map(|&(src, n, conns)| Flood::start(&coord, &ca, src, n, conns)).collect();
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
        coord
            .admin()
            .await
            .map_err(|e| e.to_string())?
            .status(v1::StatusRequest::default())
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let status_took = t.elapsed();
    let status_ok = matches!(status, Ok(Ok(_)));
    let port = match &status {
        Ok(Ok(r)) => r.get_ref().port,
        _ => None,
    };

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
        let st = admin.status(v1::StatusRequest::default()).await.ok()?.into_inner();
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
         control plane's port status during the flood: {port:?}\n\
         control plane log: {} lines\n\
         flood processes' last reports:\n{}",
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
        floods.iter().map(|f| f.report().to_string()).collect::<Vec<_>>().join("\n"),
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
    // The control plane knows its limit and where it stands: the flood ran into the caps,
    // far below the limit.
    let port = port.expect("status reports the agent port");
    assert_eq!(port.descriptor_limit, limit);
    assert!(port.descriptors_in_use > 0 && port.descriptors_in_use < limit, "{port:?}");
    assert!(port.connections <= port.max_connections && port.max_connections < limit, "{port:?}");
    assert!(port.anonymous_connections <= port.max_anonymous_connections, "{port:?}");
    assert!(port.evicted_connections > 0, "the flood never reached a cap: {port:?}");

    agent.stop().await;
    drop(floods);
    coord.stop().await;
}

/// The attacker's host names: terminal escapes (clear screen, set the window title, a C1 CSI)
/// and bidirectional overrides, repeated.
const HOSTILE: &str = "\u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}31m\u{202e}evil";
/// The flood: attempts, and how many are in flight at once.
const BAD_ENROLLMENTS: usize = 10_000;
const IN_FLIGHT: usize = 64;
/// The state file may grow by less than this during the flood (it grew by hundreds of MiB).
const STATE_GROWTH_BOUND: u64 = 1024 * 1024;

/// One bad enrollment of the flood: a quarter with a 1 MiB host name (refused by the 64 KiB
/// message cap before it is decoded), half with a 60 KiB one under the cap (refused as no
/// valid host name), a quarter with a valid name and an unknown token. Returns the code (the
/// refusals' own count is the audit's, below).
async fn bad_enrollment(ch: tonic::transport::Channel, i: usize) -> (usize, tonic::Code, String) {
    let name = |bytes: usize| HOSTILE.repeat(bytes / HOSTILE.len());
    let (host_name, token) = match i % 4 {
        0 => (name(1 << 20), "00".repeat(32)),
        1 | 3 => (name(60 * 1024), "00".repeat(32)),
        _ => (format!("ghost{i}"), format!("{:064x}", i)),
    };
    let req = v1::EnrollRequest { token, host_name, csr_pem: String::new(), facts: None };
    match AgentServiceClient::new(ch).enroll(with_header(req)).await {
        Ok(_) => (i % 4, tonic::Code::Ok, String::new()),
        Err(e) => (i % 4, e.code(), e.message().chars().take(120).collect()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_ten_thousand_bad_enrollments_with_megabyte_host_names_leave_the_audit_usable() {
    // The enrollment rate limit lifted: every attempt reaches enrollment and its audit, as it
    // would from many sources (the limit is per source, and generous in total).
    let coord = ServeProcess::start(
        env!("CARGO_BIN_EXE_flotilla-serve").as_ref(),
        "audit-flood",
        &["--heartbeat-s", "1", "--enroll-burst", "100000", "--enroll-rate", "100000"],
    )
    .await;
    // The real events: a host enrolls and holds its session, an operator mints a token.
    let token = coord
        .admin()
        .await
        .expect("admin")
        .create_token(v1::CreateTokenRequest { host_name: "real0".into(), ttl_s: 0 })
        .await
        .expect("token")
        .into_inner()
        .token;
    let mut agent = flotilla_agent::start(coord.agent_config("real0", &token)).await.expect("agent");
    agent.wait_for(WAIT, |s| s.connected).await.expect("the real host enrolls");
    coord
        .admin()
        .await
        .expect("admin")
        .create_token(v1::CreateTokenRequest { host_name: "spare".into(), ttl_s: 0 })
        .await
        .expect("token");
    let state = coord.state_dir.join("state.redb");
    let size_before = std::fs::metadata(&state).expect("state file").len();

    let ca = tls::certs_from_pem("ca", &coord.ca_pem()).expect("ca");
    let channels: Vec<_> = (0..4)
        .map(|_| tls::channel(&coord.endpoint, tls::client_config(&ca, None).expect("config")).expect("channel"))
        .collect();
    let t = Instant::now();
    let answers: Vec<(usize, tonic::Code, String)> = futures::stream::iter(0..BAD_ENROLLMENTS)
        .map(|i| bad_enrollment(channels[i % channels.len()].clone(), i))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let flood_took = t.elapsed();
    let codes: Vec<tonic::Code> = answers.iter().map(|(_, c, _)| *c).collect();
    // The 1 MiB names: refused by the message cap (OutOfRange) — or, when the server resets
    // the stream while the client is still sending, by the transport — but never decoded
    // (no InvalidArgument or Unauthenticated, which only a decoded request can earn).
    let huge: Vec<&(usize, tonic::Code, String)> = answers.iter().filter(|(k, _, _)| *k == 0).collect();
    let decoded: Vec<_> = huge
        .iter()
        .filter(|(_, c, _)| matches!(c, tonic::Code::Ok | tonic::Code::InvalidArgument | tonic::Code::Unauthenticated))
        .collect();
    assert!(decoded.is_empty(), "1 MiB host names were decoded: {:?}", &decoded[..decoded.len().min(3)]);
    let reset: Vec<_> = huge.iter().filter(|(_, c, _)| *c != tonic::Code::OutOfRange).collect();
    eprintln!("1 MiB names refused by the transport, not the cap: {} (first: {:?})", reset.len(), reset.first());
    let count = |c: tonic::Code| codes.iter().filter(|x| **x == c).count();
    let (too_big, bad_name, bad_token) =
        (count(tonic::Code::OutOfRange), count(tonic::Code::InvalidArgument), count(tonic::Code::Unauthenticated));
    eprintln!(
        "flood: {BAD_ENROLLMENTS} bad enrollments in {flood_took:.1?}: {too_big} over the message cap, {bad_name} bad host names, {bad_token} unknown tokens, {} other",
        BAD_ENROLLMENTS - too_big - bad_name - bad_token
    );
    assert_eq!(count(tonic::Code::Ok), 0, "a bad enrollment succeeded");
    assert!(
        (BAD_ENROLLMENTS / 4 * 95 / 100..=BAD_ENROLLMENTS / 4).contains(&too_big),
        "1 MiB host names are refused by the message cap: {too_big} of {}",
        BAD_ENROLLMENTS / 4
    );
    assert_eq!((bad_name, bad_token), (BAD_ENROLLMENTS / 2, BAD_ENROLLMENTS / 4), "the other refusals");

    // The operator's view, over the admin API: the real events are there, the refusals are
    // counted (count, first and last seen, per source and kind), and every field is short and
    // printable.
    // The state file first (the flood is over; the audit read below flushes what is counted).
    let growth = std::fs::metadata(&state).expect("state file").len().saturating_sub(size_before);
    assert!(growth < STATE_GROWTH_BOUND, "the state file grew by {growth} bytes during the flood");
    let audit =
        coord.admin().await.expect("admin").audit(v1::AuditRequest { limit: 0 }).await.expect("audit").into_inner();
    let size_after = std::fs::metadata(&state).expect("state file").len();
    let kinds: Vec<(&str, &str)> = audit.events.iter().map(|e| (e.kind.as_str(), e.host_name.as_str())).collect();
    for real in
        [("token.created", "real0"), ("enroll.ok", "real0"), ("cert.issued", "real0"), ("token.created", "spare")]
    {
        assert!(kinds.contains(&real), "the real event {real:?} is missing from the audit: {kinds:?}");
    }
    let refused = |kind: &str| audit.refusals.iter().find(|r| r.kind == kind && r.source == "127.0.0.1");
    let names = refused("enroll.refused.host-name").expect("bad host names counted");
    assert_eq!(names.count, (BAD_ENROLLMENTS / 2) as u64, "{names:?}");
    assert!(names.first_unix_ms <= names.last_unix_ms && names.last_unix_ms > 0, "{names:?}");
    assert!(names.last_host_name.len() <= 128 && names.last_host_name.contains("\\u{1b}[2J"), "{names:?}");
    assert_eq!(refused("enroll.refused.unknown").map(|r| r.count), Some((BAD_ENROLLMENTS / 4) as u64));
    for text in audit
        .events
        .iter()
        .flat_map(|e| [&e.host_name, &e.detail])
        .chain(audit.refusals.iter().flat_map(|r| [&r.last_host_name, &r.last_detail]))
    {
        assert!(text.len() <= 512 && !text.chars().any(char::is_control), "stored raw: {text:.200?}");
    }
    let growth = size_after.saturating_sub(size_before);
    eprintln!(
        "state file: {size_before} bytes before, {size_after} after (+{growth}); {} events, {} refusal rows",
        audit.events.len(),
        audit.refusals.len()
    );
    assert!(growth < STATE_GROWTH_BOUND, "the state file grew by {growth} bytes during the flood");

    // `coordinator audit`, as the operator runs it: answers, shows the real events and the
    // counts, and prints no escape sequence.
    let cli = std::process::Command::new(flotilla_tests::target_dir().join("coordinator"))
        .env("FLOTILLA_STATE_DIR", coord.state_dir.parent().expect("state root"))
        .env("FLOTILLA_LOG", "warn")
        .args(["--cluster", "audit-flood", "audit", "--limit", "0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run coordinator audit");
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "coordinator audit failed: {}", String::from_utf8_lossy(&cli.stderr));
    assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "an escape reached the terminal:\n{out:.2000}");
    assert!(out.lines().any(|l| l.contains("enroll.ok") && l.contains("real0")), "{out:.2000}");
    assert!(out.lines().any(|l| l.contains("5000×") && l.contains("enroll.refused.host-name")), "{out:.2000}");
    assert!(out.lines().all(|l| l.len() < 1024), "a line of {} bytes", out.lines().map(str::len).max().unwrap_or(0));

    // The real host kept its session; the control plane logged the flood in a few lines,
    // without the attacker's bytes, and counts it in `status`.
    let s = agent.status.borrow().clone();
    assert!(s.connected && s.sessions_opened == 1, "the real host's session did not hold: {s:?}");
    let log = coord.log_text();
    assert!(!log.contains('\u{1b}') && !log.contains('\u{9b}'), "the attacker's escapes reached the log");
    assert!(log.lines().count() < 100, "{} log lines for the flood", log.lines().count());
    let st =
        coord.admin().await.expect("admin").status(v1::StatusRequest::default()).await.expect("status").into_inner();
    assert!(st.port.expect("port").refused_calls >= (3 * BAD_ENROLLMENTS / 4) as u64);
    agent.stop().await;
    coord.stop().await;
}

// ---- each limit on its own, in-process (`Coord`), with the limit made small ----------------

const WAIT: Duration = Duration::from_secs(20);

/// A raw TLS connection without a client certificate, handshake done.
async fn anonymous_tls(coord: &Coord) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let ca = tls::certs_from_pem("ca", &coord.ca_pem()).expect("ca");
    let connector = tokio_rustls::TlsConnector::from(tls::client_config(&ca, None).expect("client config"));
    let tcp = tokio::net::TcpStream::connect(coord.addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::IpAddress(coord.addr.ip().into());
    connector.connect(name, tcp).await.expect("TLS handshake")
}

/// Whether the server closes `conn` within `within` (whatever it sent before).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(conn: &mut S, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn port_status(coord: &Coord) -> v1::PortStatus {
    coord.status().await.port.expect("port status")
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    flotilla_proto::add_protocol_header(&mut req);
    req
}

fn anonymous_channel(coord: &Coord) -> tonic::transport::Channel {
    let ca = tls::certs_from_pem("ca", &coord.ca_pem()).expect("ca");
    tls::channel(&coord.endpoint(), tls::client_config(&ca, None).expect("client config")).expect("channel")
}

async fn enroll(coord: &Coord, token: &str, host: &str) -> Result<v1::EnrollResponse, tonic::Status> {
    let pending = flotilla_agent::identity::PendingKey::generate(host).expect("key");
    AgentServiceClient::new(anonymous_channel(coord))
        .enroll(with_header(v1::EnrollRequest {
            token: token.into(),
            host_name: host.into(),
            csr_pem: pending.csr_pem.clone(),
            facts: None,
        }))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn issue_14_a_connection_without_a_certificate_is_closed_when_idle_and_may_only_enroll() {
    let coord = Coord::start(|c| c.limits.anonymous_idle = Duration::from_millis(500)).await;
    // Idle: closed by the server, and counted.
    let mut idle = anonymous_tls(&coord).await;
    let t = std::time::Instant::now();
    assert!(closed_within(&mut idle, WAIT).await, "an idle connection without a certificate stays open");
    assert!(t.elapsed() >= Duration::from_millis(400), "closed before its idle timeout: {:?}", t.elapsed());
    assert_eq!(port_status(&coord).await.expired_connections, 1);

    // Only Enroll: a session, or the admin API, is refused before any handler runs, and
    // leaves nothing in the audit trail.
    let ch = anonymous_channel(&coord);
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::AgentMessage>(1);
    let e = AgentServiceClient::new(ch.clone())
        .session(with_header(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .expect_err("a session without a certificate");
    drop(tx);
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("client certificate"), "{}", e.message());
    let e = v1::admin_client::AdminClient::new(ch).status(v1::StatusRequest::default()).await.expect_err("admin");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let audit = coord.admin().await.audit(v1::AuditRequest { limit: 0 }).await.expect("audit").into_inner();
    assert!(!audit.events.iter().any(|e| e.kind.contains("refused")), "{:?}", audit.events);
    assert!(audit.refusals.is_empty(), "{:?}", audit.refusals);

    // A host with a certificate is not subject to the idle timeout: its session holds.
    let mut agent = flotilla_agent::start(coord.agent_config("node0").await).await.expect("agent");
    let s = agent.wait_for(WAIT, |s| s.connected).await.expect("session opens");
    assert_eq!(s.sessions_opened, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = agent.status.borrow().clone();
    assert!(s.connected && s.sessions_opened == 1, "the session did not hold: {s:?}");
    agent.stop().await;
}

#[tokio::test]
async fn issue_14_a_source_at_its_cap_loses_its_oldest_connection_without_a_certificate() {
    let coord = Coord::start(|c| c.limits.max_anonymous_per_source = 2).await;
    let mut first = anonymous_tls(&coord).await;
    let mut second = anonymous_tls(&coord).await;
    let mut third = anonymous_tls(&coord).await;
    assert!(closed_within(&mut first, WAIT).await, "the oldest made room");
    assert!(!closed_within(&mut second, Duration::from_millis(300)).await);
    assert!(!closed_within(&mut third, Duration::from_millis(300)).await);
    let port = port_status(&coord).await;
    assert_eq!((port.evicted_connections, port.anonymous_connections), (1, 2), "{port:?}");

    // An agent from the same address still enrolls (making room again) and holds its session.
    let mut agent = flotilla_agent::start(coord.agent_config("node0").await).await.expect("agent");
    agent.wait_for(WAIT, |s| s.connected).await.expect("enrolls and opens its session");
    let port = port_status(&coord).await;
    assert!(port.connections <= port.max_connections && port.anonymous_connections <= 2, "{port:?}");
    agent.stop().await;
}

#[tokio::test]
async fn issue_14_enroll_messages_are_capped_at_64_kib_and_attempts_are_rate_limited() {
    let coord = Coord::start(|c| {
        c.limits.enroll_per_source = RateLimit { burst: 3, per_second: 0.0 };
    })
    .await;
    // A successful enrollment gives its token back ...
    let token = coord.token("node0").await;
    enroll(&coord, &token, "node0").await.expect("enrolls");
    // ... an oversized one is refused before it is decoded, and refusals spend the burst.
    let big = "x".repeat(100 * 1024);
    let e = enroll(&coord, &big, "node1").await.expect_err("100 KiB");
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    for _ in 0..2 {
        let e = enroll(&coord, "0123456789abcdef", "node1").await.expect_err("bad token");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    }
    let token = coord.token("node1").await;
    let e = enroll(&coord, &token, "node1").await.expect_err("throttled");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("too many enrollment attempts"), "{}", e.message());
    assert_eq!(port_status(&coord).await.throttled_enrollments, 1);
}
