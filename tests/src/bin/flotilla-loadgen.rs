//! Simulated agents against a running control plane, from a separate process: full TLS,
//! real enrollment (token + CSR), real mTLS sessions, heartbeats every interval. Prints a
//! JSON report. Driven by `benches/sessions.sh`; see `docs/BENCHMARKS.md`.
//!
//! Phases: mint N tokens (admin socket) → enroll N agents (C at a time) → open N sessions →
//! heartbeat for the steady-state duration, measuring round trips (HealthSample →
//! HeartbeatAck) and, when `--coordinator-pid` is given, the coordinator's CPU and RSS.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_proto::tls;
use flotilla_proto::v1::{self, agent_message, agent_service_client::AgentServiceClient, coordinator_message};
use futures::StreamExt;
use tokio::sync::Mutex;

struct Args {
    state_dir: PathBuf,
    endpoint: String,
    agents: usize,
    concurrency: usize,
    heartbeat: Duration,
    steady: Duration,
    pid: Option<u32>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        state_dir: PathBuf::new(),
        endpoint: String::new(),
        agents: 1000,
        concurrency: 64,
        heartbeat: Duration::from_secs(5),
        steady: Duration::from_secs(60),
        pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--state-dir" => a.state_dir = v.into(),
            "--endpoint" => a.endpoint = v,
            "--agents" => a.agents = v.parse()?,
            "--concurrency" => a.concurrency = v.parse()?,
            "--heartbeat-s" => a.heartbeat = Duration::from_secs(v.parse()?),
            "--steady-s" => a.steady = Duration::from_secs(v.parse()?),
            "--coordinator-pid" => a.pid = Some(v.parse()?),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(!a.endpoint.is_empty(), "--endpoint is required");
    Ok(a)
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tls::install_default_provider();
    let args = parse_args()?;
    let ca_pem = std::fs::read_to_string(args.state_dir.join("pki/ca.pem")).context("ca.pem")?;
    let ca = tls::certs_from_pem("ca", &ca_pem)?;
    let mut admin =
        flotilla_coordinator::admin_client::connect_local("bench", &args.state_dir.join("admin.sock")).await?;

    // 1. Tokens.
    let t0 = Instant::now();
    let mut tokens = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        let r = admin.create_token(v1::CreateTokenRequest { host_name: format!("sim{i}"), ttl_s: 0 }).await?;
        tokens.push(r.into_inner().token);
    }
    let mint_s = t0.elapsed().as_secs_f64();
    eprintln!("minted {} tokens in {mint_s:.1}s", args.agents);

    // 2. Enrollment, C at a time, each on its own TLS connection (as real hosts would).
    let anon = tls::client_config(&ca, None)?;
    let t0 = Instant::now();
    let enroll_errors = Arc::new(AtomicU64::new(0));
    let identities: Vec<(usize, Option<tls::Identity>)> = futures::stream::iter(tokens.into_iter().enumerate())
        .map(|(i, token)| {
            let anon = anon.clone();
            let endpoint = args.endpoint.clone();
            let errors = enroll_errors.clone();
            async move {
                let host = format!("sim{i}");
                let pending = flotilla_agent::identity::PendingKey::generate(&host).ok()?;
                let ch = tls::channel(&endpoint, anon).ok()?;
                let req = v1::EnrollRequest {
                    token,
                    host_name: host.clone(),
                    csr_pem: pending.csr_pem.clone(),
                    facts: Some(v1::HostFacts { hostname: host, ..Default::default() }),
                };
                let mut client = AgentServiceClient::with_interceptor(ch, flotilla_proto::protocol_header);
                let id = match client.enroll(req).await {
                    Ok(r) => pending.into_stored(&r.into_inner().certificate_pem).ok().map(|s| s.tls),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("enroll error: {e}");
                        }
                        None
                    }
                };
                Some((i, id))
            }
        })
        .buffer_unordered(args.concurrency)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    let enroll_s = t0.elapsed().as_secs_f64();
    let enrolled = identities.iter().filter(|(_, i)| i.is_some()).count();
    eprintln!("enrolled {enrolled} in {enroll_s:.1}s ({:.0}/s)", enrolled as f64 / enroll_s);

    // 3. Sessions.
    let rtts = Arc::new(Mutex::new(Vec::<u64>::with_capacity(args.agents * 16)));
    let open = Arc::new(AtomicU64::new(0));
    let session_errors = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = tokio_util_stop();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    for (i, id) in identities.into_iter() {
        let Some(id) = id else { continue };
        let cfg = tls::client_config(&ca, Some(&id))?;
        let endpoint = args.endpoint.clone();
        let rtts = rtts.clone();
        let open = open.clone();
        let errors = session_errors.clone();
        let measuring = measuring.clone();
        let stop = stop.clone();
        let ready = ready_tx.clone();
        let permits = permits.clone();
        let hb = args.heartbeat;
        tasks.push(tokio::spawn(async move {
            let permit = permits.acquire_owned().await;
            let host = format!("sim{i}");
            let ch = match tls::channel(&endpoint, cfg) {
                Ok(c) => c,
                Err(_) => return,
            };
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let _ = tx
                .send(v1::AgentMessage {
                    body: Some(agent_message::Body::Hello(v1::Hello {
                        host_name: host,
                        protocol_version: flotilla_proto::PROTOCOL_VERSION,
                        agent_version: "loadgen".into(),
                        ..Default::default()
                    })),
                })
                .await;
            let mut client = AgentServiceClient::with_interceptor(ch, flotilla_proto::protocol_header);
            let mut inbound = match client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
                Ok(r) => r.into_inner(),
                Err(e) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("session error: {e}");
                    }
                    return;
                }
            };
            if !matches!(inbound.message().await, Ok(Some(_))) {
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            drop(permit);
            open.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(());
            // Random phase so heartbeats spread over the interval, as a real fleet's do.
            let phase = Duration::from_millis(rand::random::<u64>() % hb.as_millis().max(1) as u64);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, hb);
            let mut seq = 0u64;
            let mut sent: Option<(u64, Instant)> = None;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {
                        seq += 1;
                        sent = Some((seq, Instant::now()));
                        let sample = v1::HealthSample { seq, engine_ok: true, ..Default::default() };
                        if tx.send(v1::AgentMessage { body: Some(agent_message::Body::Health(sample)) }).await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    m = inbound.message() => match m {
                        Ok(Some(v1::CoordinatorMessage { body: Some(coordinator_message::Body::HeartbeatAck(a)) })) => {
                            if let Some((s, at)) = sent && s == a.seq {
                                if measuring.load(Ordering::Relaxed) {
                                    rtts.lock().await.push(at.elapsed().as_micros() as u64);
                                }
                                sent = None;
                            }
                        }
                        Ok(Some(_)) => {}
                        _ => { errors.fetch_add(1, Ordering::Relaxed); return; }
                    }
                }
            }
        }));
    }
    drop(ready_tx);
    let mut ready = 0usize;
    while ready < enrolled {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => break,
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    eprintln!("{ready} sessions open in {connect_s:.1}s");

    // 4. Steady state: let one heartbeat interval pass to settle, then measure.
    tokio::time::sleep(args.heartbeat).await;
    measuring.store(true, Ordering::Relaxed);
    let clk = 100.0; // USER_HZ
    let cpu0 = args.pid.and_then(proc_cpu_ticks);
    let m0 = Instant::now();
    tokio::time::sleep(args.steady).await;
    let cpu1 = args.pid.and_then(proc_cpu_ticks);
    let wall = m0.elapsed().as_secs_f64();
    measuring.store(false, Ordering::Relaxed);
    let cpu_pct = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some((b - a) as f64 / clk / wall * 100.0),
        _ => None,
    };
    let rss_kb = args.pid.and_then(|p| proc_status_kb(p, "VmRSS:"));
    let hwm_kb = args.pid.and_then(|p| proc_status_kb(p, "VmHWM:"));
    let mut r = rtts.lock().await.clone();
    r.sort_unstable();
    stop.cancel();
    for t in tasks {
        t.abort();
    }
    let report = serde_json::json!({
        "agents": args.agents,
        "concurrency": args.concurrency,
        "heartbeat_s": args.heartbeat.as_secs(),
        "tokens_minted_per_s": args.agents as f64 / mint_s,
        "enrolled": enrolled,
        "enroll_errors": enroll_errors.load(Ordering::Relaxed),
        "enrollments_per_s": enrolled as f64 / enroll_s,
        "sessions_open": open.load(Ordering::Relaxed),
        "session_errors": session_errors.load(Ordering::Relaxed),
        "sessions_connect_s": connect_s,
        "steady_s": wall,
        "heartbeats_measured": r.len(),
        "rtt_ms_p50": percentile(&r, 0.50),
        "rtt_ms_p99": percentile(&r, 0.99),
        "rtt_ms_max": percentile(&r, 1.0),
        "coordinator_cpu_pct_of_one_core": cpu_pct,
        "coordinator_rss_mib": rss_kb.map(|k| k as f64 / 1024.0),
        "coordinator_peak_rss_mib": hwm_kb.map(|k| k as f64 / 1024.0),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn tokio_util_stop() -> tokio_util::sync::CancellationToken {
    tokio_util::sync::CancellationToken::new()
}
