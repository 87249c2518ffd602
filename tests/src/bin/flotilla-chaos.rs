//! `flotilla-chaos MINUTES [SEED]`: the chaos soak (issue 20) on a fresh default lab cluster
//! named `chaos`, printed as a Markdown table and written as JSON to `$CHAOS_JSON` (default
//! `chaos-report.json`), with a trace of Consul's servers in `$CHAOS_TRACE` (default
//! `chaos-trace.log`). `EVERY` (seconds between faults, default 30) and `FAULTS` (a comma
//! list, default all: agent_kill, engine_kill, consul_kill, host_stop, host_remove,
//! control_plane_restart, partition) tune it; `KEEP=1` leaves the cluster. Run it through
//! `benches/chaos.sh`, which builds what it needs first.

use std::sync::Arc;
use std::time::Duration;

use flotilla_tests::chaos::{self, ALL, Fault, Soak};
use flotilla_tests::lab_cluster::LabCluster;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let minutes: f64 = args.first().and_then(|m| m.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: flotilla-chaos MINUTES [SEED]");
        std::process::exit(64);
    });
    let seed: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let every = std::env::var("EVERY").ok().and_then(|s| s.parse().ok()).unwrap_or(30u64);
    let faults: Vec<Fault> = match std::env::var("FAULTS") {
        Ok(list) if !list.is_empty() => list
            .split(',')
            .map(|f| {
                ALL.into_iter().find(|a| a.to_string() == f.trim()).unwrap_or_else(|| {
                    eprintln!("unknown fault '{f}'; known: {}", ALL.map(|a| a.to_string()).join(", "));
                    std::process::exit(64);
                })
            })
            .collect(),
        _ => ALL.to_vec(),
    };
    eprintln!(
        "chaos soak: {minutes} min, a fault every {every} s, seed {seed} (reproduce: EVERY={every} bash benches/chaos.sh {minutes} {seed})"
    );
    let lab = Arc::new(LabCluster::new("chaos"));
    if let Err(e) = chaos::prepare(&lab) {
        eprintln!("error: preparing the cluster: {e}");
        std::process::exit(1);
    }
    let soak = Soak {
        seed,
        duration: Duration::from_secs_f64(minutes * 60.0),
        every: Duration::from_secs(every),
        faults,
        settle: Duration::from_secs(300),
        trace: Some(std::env::var("CHAOS_TRACE").unwrap_or_else(|_| "chaos-trace.log".into()).into()),
    };
    let report = chaos::run(lab.clone(), &soak);
    println!("{}", report.table());
    let path = std::env::var("CHAOS_JSON").unwrap_or_else(|_| "chaos-report.json".into());
    if let Err(e) = std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap_or_default()) {
        eprintln!("error: writing {path}: {e}");
    }
    if std::env::var("KEEP").as_deref() != Ok("1") {
        let _ = lab.cli.run(&["destroy", "--yes", "--force"]);
    }
    let ok = report.full_strength_at_end && report.kv_lost == 0;
    std::process::exit(if ok { 0 } else { 1 });
}
