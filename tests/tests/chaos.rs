//! Issue 20: a short, seeded chaos soak (the CI-sized run of `benches/chaos.sh`) — faults of
//! every kind the seed picks, one every 20 s for 100 s, on a lab cluster with auto-heal
//! on: no acknowledged Consul write lost, the cluster back at full strength, and what was
//! measured reported.

use std::sync::Arc;
use std::time::Duration;

use flotilla_tests::chaos::{self, ALL, Soak};
use flotilla_tests::lab_cluster::LabCluster;

/// The seed (the faults it picks are printed with the report).
const SEED: u64 = 20;

#[test]
fn issue_20_a_short_seeded_chaos_soak_loses_no_acknowledged_write_and_ends_at_full_strength() {
    let lab = Arc::new(LabCluster::new("chaos"));
    chaos::prepare(&lab).expect("the soak's cluster");
    let soak = Soak {
        seed: SEED,
        duration: Duration::from_secs(100),
        every: Duration::from_secs(20),
        faults: ALL.to_vec(),
        settle: Duration::from_secs(240),
        trace: None,
    };
    let r = chaos::run(lab.clone(), &soak);
    eprintln!("{}", r.table());
    // One every 20 s for 100 s, on a fixed schedule.
    assert_eq!(r.faults.len(), 5, "{r:?}");
    assert!(r.kv_acknowledged > 100, "the KV writer hardly wrote: {r:?}");
    assert_eq!(r.kv_lost, 0, "acknowledged writes lost: {r:?}");
    assert!(r.probes_ok > 100, "the web service hardly answered: {r:?}");
    assert!(r.full_strength_at_end, "not at full strength at the end: {}", r.end_note);
    let out = lab.cli.run(&["destroy", "--yes", "--force"]);
    assert!(out.status.success());
}
