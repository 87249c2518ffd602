//! The chaos soak (issue 20): a lab cluster with auto-heal on, a web service on its workers
//! (a host-mode port on each) probed all the time, a Consul KV writer, and a fault every
//! `every` seconds (a fixed schedule) picked at random from a seeded generator — what it
//! measured ([`Report`]).
//!
//! `benches/chaos.sh MINUTES [SEED]` runs it through the `flotilla-chaos` binary.
//!
//! Every fault stays inside the lab: `docker` on this machine's Engine, commands inside a lab
//! host (its own network namespace: the partition's iptables rules name only the other
//! managers' lab addresses), and the cluster's own control plane.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::lab_cluster::{LabCluster, Planned, docker, text};

mod trace;
use trace::trace_consul;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The host's agent killed (SIGKILL); systemd starts it again.
    AgentKill,
    /// The host's Engine killed (SIGKILL to dockerd); systemd starts it again.
    EngineKill,
    /// A manager's Consul container killed; its agent starts it again.
    ConsulKill,
    /// The host stopped at the provider (`docker stop`): auto-heal replaces it.
    HostStop,
    /// The host removed at the provider (`docker rm -f -v`): auto-heal replaces it.
    HostRemove,
    /// The control plane killed (SIGKILL) and started again by `coordinator deploy`.
    ControlPlaneRestart,
    /// A manager cut off from the other managers for [`PARTITION`] (iptables inside its host).
    Partition,
}

pub const ALL: [Fault; 7] = [
    Fault::AgentKill,
    Fault::EngineKill,
    Fault::ConsulKill,
    Fault::HostStop,
    Fault::HostRemove,
    Fault::ControlPlaneRestart,
    Fault::Partition,
];

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        f.write_str(&s)
    }
}

/// How long a partition lasts.
pub const PARTITION: Duration = Duration::from_secs(20);
/// The heal grace period of the soak's cluster, seconds.
pub const GRACE_S: &str = "10";
const SERVICE: &str = "chaos-web";
const PORT: u16 = 8080;
const MANAGERS: [&str; 3] = ["manager0", "manager1", "manager2"];
const WORKERS: [&str; 2] = ["node0", "node1"];

/// What to run.
#[derive(Clone, Debug)]
pub struct Soak {
    pub seed: u64,
    pub duration: Duration,
    pub every: Duration,
    pub faults: Vec<Fault>,
    /// How long the cluster gets at the end to be back at full strength.
    pub settle: Duration,
    /// A file for the Consul trace ([`trace_consul`]); none: no trace.
    pub trace: Option<std::path::PathBuf>,
}

/// One fault injected.
#[derive(Clone, Debug, Serialize)]
pub struct Injected {
    pub at_s: f64,
    pub fault: Fault,
    pub host: String,
    /// What went wrong injecting or undoing it (empty: nothing).
    pub note: String,
}

/// What the soak measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub duration_s: f64,
    pub faults: Vec<Injected>,
    /// Seconds (1 s looks) in which no manager named a swarm leader.
    pub swarm_leaderless_s: u64,
    /// Seconds (1 s looks) in which no Consul server named a leader.
    pub consul_leaderless_s: u64,
    /// The fewest running replicas of the web service seen (of 2).
    pub min_running_replicas: usize,
    pub probes_ok: u64,
    pub probes_failed: u64,
    /// KV writes Consul acknowledged, and those of them not readable at the end (must be 0).
    pub kv_acknowledged: u64,
    pub kv_lost: u64,
    /// Each lost write: when it was acknowledged and by which server (to set beside the
    /// faults).
    pub kv_lost_writes: Vec<KvWrite>,
    /// Hosts heal replaced (`heal.replaced` in the audit trail, which outlives control-plane
    /// restarts).
    pub hosts_replaced: u64,
    /// Whether the cluster was back at full strength within the settle time at the end.
    pub full_strength_at_end: bool,
    pub end_note: String,
}

/// One acknowledged KV write.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KvWrite {
    pub seq: u64,
    /// Seconds into the soak when Consul acknowledged it.
    pub at_s: f64,
    /// The server it was sent to.
    pub via: String,
}

fn planned() -> Planned {
    Planned::new(&MANAGERS, &WORKERS)
}

/// Deploys the soak's cluster (auto-heal, grace [`GRACE_S`]) and its web service.
pub fn prepare(lab: &LabCluster) -> Result<(), String> {
    let _ = lab.cli.run(&["destroy", "--yes", "--force"]);
    let out =
        lab.cli.run(&["deploy", "--no-smoke-test", "--heal", "auto", "--heal-grace", GRACE_S, "--output", "json"]);
    if !out.status.success() {
        return Err("deploy failed".into());
    }
    let managers: Vec<String> = MANAGERS.iter().map(|s| s.to_string()).collect();
    let (via, _) = lab.node_ls(&managers)?;
    // Host-mode ports (iptables in each worker): the routing mesh needs the kernel's IPVS,
    // which a machine without kernel modules lacks; so the probe asks the workers themselves.
    let publish = format!("mode=host,published={PORT},target={PORT}");
    let port = PORT.to_string();
    lab.create_service(&via, SERVICE, 2, &["--publish", &publish], &["httpd", "-f", "-p", &port, "-h", "/etc"])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while running_replicas(lab, &via) < 2 {
        if Instant::now() > deadline {
            return Err("the web service's 2 replicas never ran".into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

fn running_replicas(lab: &LabCluster, via: &str) -> usize {
    lab.running_tasks(via, SERVICE)
}

/// One HTTP GET of `/hostname` from the web service at `addr`: whether it answered 200.
fn probe(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /hostname HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// The threads that watch and load the cluster while faults happen.
struct Watchers {
    stop: Arc<AtomicBool>,
    addresses: Arc<Mutex<Vec<(String, String)>>>,
    swarm_leaderless: Arc<AtomicU64>,
    consul_leaderless: Arc<AtomicU64>,
    min_replicas: Arc<AtomicU64>,
    probes_ok: Arc<AtomicU64>,
    probes_failed: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<KvWrite>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Watchers {
    fn start(lab: &Arc<LabCluster>, token: String, started: Instant, trace: Option<&std::path::Path>) -> Self {
        let w = Watchers {
            stop: Arc::new(AtomicBool::new(false)),
            addresses: Arc::new(Mutex::new(lab.addresses())),
            swarm_leaderless: Arc::default(),
            consul_leaderless: Arc::default(),
            min_replicas: Arc::new(AtomicU64::new(u64::MAX)),
            probes_ok: Arc::default(),
            probes_failed: Arc::default(),
            acked: Arc::default(),
            threads: Vec::new(),
        };
        let mut threads = Vec::new();
        // Every second: the swarm's leader and the service's running replicas, through the
        // first manager that answers; Consul's leader; the addresses refreshed.
        threads.push(std::thread::spawn({
            let (lab, stop, addresses) = (lab.clone(), w.stop.clone(), w.addresses.clone());
            let (sl, cl, min) = (w.swarm_leaderless.clone(), w.consul_leaderless.clone(), w.min_replicas.clone());
            let token = token.clone();
            move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let now = lab.addresses();
                    if !now.is_empty() {
                        *addresses.lock().expect("lock") = now.clone();
                    }
                    let mut led = false;
                    let mut replicas = None;
                    for m in MANAGERS {
                        let out = lab.in_host(m, &["docker", "node", "ls", "--format", "{{.ManagerStatus}}"]);
                        if out.status.success() && text(&out).contains("Leader") {
                            led = true;
                            replicas = Some(running_replicas(&lab, m));
                            break;
                        }
                    }
                    if !led {
                        sl.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(r) = replicas {
                        min.fetch_min(r as u64, Ordering::Relaxed);
                    }
                    let consul_led = now.iter().filter(|(n, _)| n.starts_with("manager")).any(|(_, ip)| {
                        let c = flotilla_agent::consul::Consul::new(&format!("{ip}:8500")).with_token(&token);
                        rt.block_on(async {
                            tokio::time::timeout(Duration::from_secs(1), c.leader()).await.ok().and_then(Result::ok)
                        })
                        .is_some_and(|l| !l.is_empty())
                    });
                    if !consul_led {
                        cl.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
                }
            }
        }));
        // Every 200 ms: the web service on a worker picked in turn.
        threads.push(std::thread::spawn({
            let (stop, addresses, ok, failed) =
                (w.stop.clone(), w.addresses.clone(), w.probes_ok.clone(), w.probes_failed.clone());
            move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let target = {
                        let a = addresses.lock().expect("lock");
                        let workers: Vec<&String> =
                            a.iter().filter(|(n, _)| n.starts_with("node")).map(|(_, ip)| ip).collect();
                        workers
                            .get(i % workers.len().max(1))
                            .and_then(|ip| format!("{ip}:{PORT}").parse::<SocketAddr>().ok())
                    };
                    i += 1;
                    match target.map(probe) {
                        Some(true) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }));
        // Every 250 ms: a KV write (`chaos/<seq>`) to a manager's Consul picked in turn; the
        // acknowledged sequence numbers kept.
        threads.push(std::thread::spawn({
            let (stop, addresses, acked) = (w.stop.clone(), w.addresses.clone(), w.acked.clone());
            let token = token.clone();
            move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ip = {
                        let a = addresses.lock().expect("lock");
                        let m: Vec<&String> =
                            a.iter().filter(|(n, _)| n.starts_with("manager")).map(|(_, ip)| ip).collect();
                        m.get(seq as usize % m.len().max(1)).map(|s| s.to_string())
                    };
                    if let Some(ip) = ip {
                        let c = flotilla_agent::consul::Consul::new(&format!("{ip}:8500")).with_token(&token);
                        let key = format!("chaos/{seq:08}");
                        let put = rt.block_on(async {
                            tokio::time::timeout(Duration::from_secs(2), c.put(&key, seq.to_string().as_bytes(), None))
                                .await
                        });
                        if let Ok(Ok(true)) = put {
                            let at_s = started.elapsed().as_secs_f64();
                            acked.lock().expect("lock").push(KvWrite { seq, at_s, via: ip });
                        }
                    }
                    seq += 1;
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }));
        if let Some(path) = trace {
            let (lab, stop, path) = (lab.clone(), w.stop.clone(), path.to_path_buf());
            threads.push(std::thread::spawn(move || trace_consul(&lab, &token, &stop, started, &path)));
        }
        Watchers { threads, ..w }
    }

    fn stop(mut self) -> Self {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        self
    }
}

/// Injects `fault` on `host`; what went wrong (empty: nothing). Blocks for a partition's length.
fn inject(lab: &LabCluster, fault: Fault, host: &str) -> String {
    let c = lab.container(host);
    let failed = |out: std::process::Output, what: &str| {
        if out.status.success() {
            String::new()
        } else {
            format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())
        }
    };
    match fault {
        Fault::AgentKill => {
            failed(lab.in_host(host, &["pkill", "-KILL", "-x", "flotilla-agent"]), "pkill flotilla-agent")
        }
        Fault::EngineKill => failed(lab.in_host(host, &["pkill", "-KILL", "-x", "dockerd"]), "pkill dockerd"),
        Fault::ConsulKill => {
            failed(lab.in_host(host, &["docker", "kill", "flotilla-consul"]), "docker kill flotilla-consul")
        }
        Fault::HostStop => failed(docker(&["stop", "-t", "0", &c]), "docker stop"),
        Fault::HostRemove => failed(docker(&["rm", "-f", "-v", &c]), "docker rm"),
        Fault::ControlPlaneRestart => {
            let pids = lab.processes(&["serve"]);
            for pid in &pids {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
            // `deploy` starts it again. A heal the old control plane was running ends with it
            // (within `heal --auto`'s half-second look at its parent), and holds the cluster
            // until then: deploy is tried again for a few seconds, no longer.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut note = if pids.is_empty() { "no control plane process found; ".to_string() } else { String::new() };
            loop {
                let out = lab
                    .cli
                    .command()
                    .args([
                        "--cluster",
                        lab.name(),
                        "deploy",
                        "--no-smoke-test",
                        "--heal",
                        "auto",
                        "--heal-grace",
                        GRACE_S,
                    ])
                    .output()
                    .expect("deploy");
                let why = failed(out, "deploy (restarting the control plane)");
                if why.is_empty() {
                    break note;
                }
                if Instant::now() > deadline {
                    note.push_str(&why);
                    break note;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Fault::Partition => {
            let others: Vec<String> = lab
                .addresses()
                .into_iter()
                .filter(|(n, _)| n.starts_with("manager") && n != host)
                .map(|(_, ip)| ip)
                .collect();
            let rules = |op: &str| -> String {
                let mut notes = String::new();
                for ip in &others {
                    for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                        let out = lab.in_host(host, &["iptables", op, chain, dir, ip, "-j", "DROP"]);
                        notes.push_str(&failed(out, &format!("iptables {op} {chain} {dir} {ip}")));
                    }
                }
                notes
            };
            let mut note = rules("-I");
            std::thread::sleep(PARTITION);
            note.push_str(&rules("-D"));
            note
        }
    }
}

/// Runs the soak on `lab` (deployed by [`prepare`]).
pub fn run(lab: Arc<LabCluster>, soak: &Soak) -> Report {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(soak.seed);
    let token = lab.consul_token().unwrap_or_default();
    let watchers = Watchers::start(&lab, token.clone(), started, soak.trace.as_deref());
    let mut report = Report { seed: soak.seed, ..Default::default() };
    // A fixed schedule: fault k at k × every. One that first waits for the last one to be
    // healed starts late, and the next follows at once if its time has passed — so the count
    // is duration ÷ every, whatever the faults cost.
    let mut next = soak.every;
    while next <= soak.duration {
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        next += soak.every;
        let fault = soak.faults[rng.random_range(0..soak.faults.len())];
        let candidates: Vec<&str> = match fault {
            Fault::ConsulKill | Fault::Partition => MANAGERS.to_vec(),
            _ => MANAGERS.iter().chain(WORKERS.iter()).copied().collect(),
        };
        let host = candidates[rng.random_range(0..candidates.len())].to_string();
        let at_s = started.elapsed().as_secs_f64();
        // A host-destroying fault waits for the last one to be healed: two managers lost at once
        // is recover's job, not heal's.
        let mut note = String::new();
        if matches!(fault, Fault::HostStop | Fault::HostRemove | Fault::Partition)
            && let Err(e) = wait_full_strength(&lab, Duration::from_secs(240))
        {
            note = format!("injected before full strength ({e}); ");
        }
        eprintln!("[{at_s:6.1}s] {fault} on {host}");
        note.push_str(&inject(&lab, fault, &host));
        report.faults.push(Injected { at_s, fault, host, note });
    }
    let end = wait_full_strength(&lab, soak.settle);
    let w = watchers.stop();
    report.full_strength_at_end = end.is_ok();
    report.end_note = end.err().unwrap_or_default();
    report.duration_s = started.elapsed().as_secs_f64();
    report.swarm_leaderless_s = w.swarm_leaderless.load(Ordering::Relaxed);
    report.consul_leaderless_s = w.consul_leaderless.load(Ordering::Relaxed);
    report.min_running_replicas = w.min_replicas.load(Ordering::Relaxed).min(2) as usize;
    report.probes_ok = w.probes_ok.load(Ordering::Relaxed);
    report.probes_failed = w.probes_failed.load(Ordering::Relaxed);
    let acked: Vec<KvWrite> = w.acked.lock().expect("lock").clone();
    report.kv_acknowledged = acked.len() as u64;
    report.kv_lost_writes = lost_writes(&lab, &token, &acked);
    report.kv_lost = report.kv_lost_writes.len() as u64;
    let audit = lab.cli.command().args(["--cluster", lab.name(), "audit", "--output", "json"]).output();
    let audit = audit.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    report.hosts_replaced = audit.matches("\"heal.replaced\"").count() as u64;
    report
}

/// Of the acknowledged writes, how many are not readable now (asked of each manager's Consul
/// until one answers; all of them when none does).
fn lost_writes(lab: &LabCluster, token: &str, acked: &[KvWrite]) -> Vec<KvWrite> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for (_, ip) in lab.addresses().into_iter().filter(|(n, _)| n.starts_with("manager")) {
        let c = flotilla_agent::consul::Consul::new(&format!("{ip}:8500")).with_token(token);
        if let Ok(kv) = rt.block_on(c.list("chaos/")) {
            let present: BTreeSet<u64> =
                kv.iter().filter_map(|(k, _)| k.strip_prefix("chaos/")?.parse().ok()).collect();
            return acked.iter().filter(|w| !present.contains(&w.seq)).cloned().collect();
        }
    }
    acked.to_vec()
}

/// Polls (bounded) until the cluster is exactly as planned.
/// Full strength here is stricter than heal's count: every Consul server is also a healthy
/// voter in autopilot's view. A replacement, or a partitioned server autopilot dropped and
/// took back, is a non-voter for its first ~10 s (Consul's server stabilisation time): a
/// host-destroying fault then would cost Consul its quorum, which is recover's job, not
/// heal's.
fn wait_full_strength(lab: &LabCluster, bound: Duration) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    loop {
        match lab.converged(&planned()).and_then(|()| consul_voters(lab)) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Whether autopilot (asked of the first manager that answers) counts the 3 managers as
/// healthy voters and nothing else.
fn consul_voters(lab: &LabCluster) -> Result<(), String> {
    let token = lab.consul_token()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    for (_, ip) in lab.addresses().into_iter().filter(|(n, _)| n.starts_with("manager")) {
        let c = flotilla_agent::consul::Consul::new(&format!("{ip}:8500")).with_token(&token);
        match rt.block_on(c.autopilot_health()) {
            Ok(servers) => {
                let names: BTreeSet<&str> = servers.iter().map(|s| s.name.as_str()).collect();
                let all_voters = servers.iter().all(|s| s.voter && s.healthy && s.serf_status == "alive");
                return match (servers.len(), names == MANAGERS.into_iter().collect(), all_voters) {
                    (3, true, true) => Ok(()),
                    _ => Err(format!(
                        "consul autopilot: {:?}",
                        servers.iter().map(|s| (&s.name, s.voter, s.healthy, &s.serf_status)).collect::<Vec<_>>()
                    )),
                };
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(format!("no Consul server answered: {}", errors.join("; ")))
}

impl Report {
    /// The report as a Markdown table row set, for docs/BENCHMARKS.md.
    pub fn table(&self) -> String {
        let faults: Vec<String> =
            self.faults.iter().map(|f| format!("{:.0}s {} {}", f.at_s, f.fault, f.host)).collect();
        format!(
            "| seed | duration | faults | swarm leaderless | Consul leaderless | min replicas | probes failed / ok | KV acked / lost | hosts replaced | full strength at end |\n\
             |---|---|---|---|---|---|---|---|---|---|\n\
             | {} | {:.0} s | {} | {} s | {} s | {} of 2 | {} / {} | {} / {} | {} | {} |\n\nfaults: {}\n{}",
            self.seed,
            self.duration_s,
            self.faults.len(),
            self.swarm_leaderless_s,
            self.consul_leaderless_s,
            self.min_running_replicas,
            self.probes_failed,
            self.probes_ok,
            self.kv_acknowledged,
            self.kv_lost,
            self.hosts_replaced,
            if self.full_strength_at_end { "yes" } else { "no" },
            faults.join(", "),
            if self.end_note.is_empty() { String::new() } else { format!("at the end: {}", self.end_note) }
        ) + &self.lost_lines()
    }

    /// The lost writes, grouped into runs of consecutive sequence numbers: when and through
    /// which server each run was acknowledged.
    fn lost_lines(&self) -> String {
        let mut runs: Vec<(&KvWrite, &KvWrite, usize)> = Vec::new();
        for w in &self.kv_lost_writes {
            match runs.last_mut() {
                Some((_, last, n)) if w.seq <= last.seq + 4 => {
                    *last = w;
                    *n += 1;
                }
                _ => runs.push((w, w, 1)),
            }
        }
        runs.iter()
            .map(|(a, b, n)| {
                format!(
                    "\nlost: {n} write(s) acknowledged {:.1}–{:.1} s (seq {}–{}), first via {}",
                    a.at_s, b.at_s, a.seq, b.seq, a.via
                )
            })
            .collect()
    }
}
