//! Issue 20: every failpoint of deploy, scale-down, heal, upgrade, recover, destroy and bake
//! crashed at — and made to fail — and the same command run again until it completes; then the
//! cluster is checked exactly as planned (`LabCluster::converged`).
//!
//! Two tests, one per outcome — crashes (SIGKILL at the point) and errors —, each with its own
//! lab cluster (so the lab's test group can run them side by side): the cluster goes through
//! the operations in turn, each as a chain ([`flotilla_tests::crash::chain`]: run k
//! interrupted at the k-th failpoint it reaches). The failpoints come from the sources; each
//! test ends by checking that every one of them was interrupted its way.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flotilla_tests::crash::{AWS, Outcome, chain, points_in_code};
use flotilla_tests::lab_cluster::{LabCluster, Planned, derived_host_image, docker, text, wait_for};
use serde_json::Value;

const GRACE: &str = "10";

/// The cluster (and the bake's scope) each outcome's test drives.
fn cluster(outcome: Outcome) -> (&'static str, &'static str) {
    match outcome {
        Outcome::Crash => ("crashpt", "crashptbake"),
        Outcome::Error => ("errpt", "errptbake"),
    }
}

/// A chain of `args` (after `--cluster`), then the cluster checked as planned.
fn step(
    lab: &LabCluster,
    covered: &mut BTreeSet<String>,
    points: &BTreeSet<String>,
    outcome: Outcome,
    what: &str,
    args: &[&str],
    planned: &Planned,
) -> Value {
    let t = Instant::now();
    let done = chain(what, points, outcome, || {
        let mut cmd = lab.cli.command();
        cmd.args(["--cluster", lab.name()]).args(args);
        cmd
    });
    eprintln!("{what} ({outcome:?}): interrupted at {:?} in {:.0} s", done.interrupted, t.elapsed().as_secs_f64());
    assert!(!done.interrupted.is_empty(), "{what}: no failpoint on its path");
    covered.extend(done.interrupted);
    wait_for(&format!("the cluster as planned after {what} ({outcome:?})"), Duration::from_secs(90), || {
        lab.converged(planned)
    });
    serde_json::from_slice(&done.stdout).unwrap_or(Value::Null)
}

/// `host` removed at the provider, and seen unreachable past the grace period.
fn lose(lab: &LabCluster, host: &str) {
    assert!(docker(&["rm", "-f", "-v", &lab.container(host)]).status.success());
    wait_for(&format!("{host} lost (unreachable past the grace period)"), Duration::from_secs(90), || {
        let s = lab.status()["heal"]["unreachable_s"][host].as_f64().unwrap_or(0.0);
        if s > GRACE.parse::<f64>().unwrap_or(10.0) + 1.0 { Ok(()) } else { Err(format!("{s} s")) }
    });
}

/// A host image that differs from the lab's: the lab image with one more label.
fn derived_image(lab: &LabCluster) -> String {
    let base = text(&docker(&["inspect", "-f", "{{.Config.Image}}", &lab.container("node0")]));
    assert!(!base.is_empty(), "node0's image");
    derived_host_image(&base, &format!("flotilla-test/{}-host:u1", lab.name()), "crash-points")
}

/// The points only `upgrade --image` and `recover` pass, which the error outcome's lifecycle
/// leaves out (the crash outcome's interrupts them).
const UPGRADE_AND_RECOVER: [&str; 3] = ["upgrade.", "recover.", "handover."];

/// One operation after another on one cluster, each as a chain of `outcome`; `whole`: with
/// the image upgrade and the recovery from lost quorum (the crash outcome's), else without
/// them (the error outcome's: their chains cost as much as the rest together — nine host
/// boots —, and an error at a point resumes as a crash there does).
fn lifecycle(
    lab: &LabCluster,
    covered: &mut BTreeSet<String>,
    points: &BTreeSet<String>,
    outcome: Outcome,
    whole: bool,
) {
    let c = &lab.cli;
    let _ = c.run(&["destroy", "--yes", "--force"]);
    let five = Planned::new(&["manager0", "manager1", "manager2"], &["node0", "node1"]);
    let deploy = ["deploy", "--heal", "off", "--heal-grace", GRACE, "--nodes", "2", "--output", "json"];
    let r = step(lab, covered, points, outcome, "deploy", &deploy, &five);
    assert_eq!(r["swarm"]["managers"].as_array().map(Vec::len), Some(3), "{r}");

    let four = Planned::new(&["manager0", "manager1", "manager2"], &["node0"]);
    let scale = ["deploy", "--heal", "off", "--heal-grace", GRACE, "--nodes", "1", "--output", "json"];
    step(lab, covered, points, outcome, "scale-down", &scale, &four);

    lose(lab, "manager1");
    step(lab, covered, points, outcome, "heal", &["heal", "--output", "json"], &four);
    if whole {
        upgrade_and_recover(lab, covered, points, outcome);
    }
    destroy(lab, covered, points, outcome);
}

/// `upgrade --image` onto a derived image (4 hosts), then `recover` after two managers (the
/// leader among them) were removed.
fn upgrade_and_recover(lab: &LabCluster, covered: &mut BTreeSet<String>, points: &BTreeSet<String>, outcome: Outcome) {
    let c = &lab.cli;

    let image = derived_image(lab);
    let upgraded = Planned::new(&["manager0-u1", "manager1-u1", "manager2-u1"], &["node0-u1"]);
    step(lab, covered, points, outcome, "upgrade", &["upgrade", "--image", &image, "--output", "json"], &upgraded);

    // Quorum lost: two managers (the leader among them) removed at once; recover from the
    // survivor, which relaunches them.
    let leader = wait_for("a swarm leader", Duration::from_secs(60), || {
        let l = lab.status()["swarm"]["leader"].as_str().unwrap_or("").to_string();
        if l.starts_with("manager") { Ok(l) } else { Err(l) }
    });
    let survivor = upgraded.managers.iter().find(|m| **m != leader).expect("a follower").clone();
    for m in upgraded.managers.iter().filter(|m| **m != survivor) {
        assert!(docker(&["rm", "-f", "-v", &lab.container(m)]).status.success());
    }
    // The route recover's dry run names first: from the survivor. (It once refused right
    // after the loss, "still has a quorum", while the control plane still counted the removed
    // managers' sessions; with no grace period the provider's word now counts at once:
    // `ops/heal/assess.rs`.)
    wait_for("recover's dry run to see the quorum lost", Duration::from_secs(90), || {
        let out = c.command().args(["--cluster", lab.name(), "recover", "--dry-run", "--output", "json"]).output();
        let plan: Value = out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or(Value::Null);
        if plan["route"] == "survivor" { Ok(()) } else { Err(plan.to_string()) }
    });
    step(lab, covered, points, outcome, "recover", &["recover", "--yes", "--output", "json"], &upgraded);
}

/// `destroy` as a chain: nothing of the cluster left.
fn destroy(lab: &LabCluster, covered: &mut BTreeSet<String>, points: &BTreeSet<String>, outcome: Outcome) {
    let c = &lab.cli;

    let t = Instant::now();
    let done = chain("destroy", points, outcome, || {
        let mut cmd = c.command();
        cmd.args(["--cluster", lab.name(), "destroy", "--yes"]);
        cmd
    });
    eprintln!("destroy ({outcome:?}): interrupted at {:?} in {:.0} s", done.interrupted, t.elapsed().as_secs_f64());
    covered.extend(done.interrupted);
    let left: BTreeSet<String> = lab
        .labelled(&["ps", "-a"], "")
        .into_iter()
        .chain(lab.labelled(&["volume", "ls"], ""))
        .chain(lab.labelled(&["network", "ls"], ""))
        .collect();
    assert!(left.is_empty(), "destroy left {left:?}");
    assert!(!c.state_root.join(lab.name()).exists(), "destroy left the state");
}

/// A bake as a chain: an image made, its builder (container, network, volume) gone.
fn bake(scope: &LabCluster, covered: &mut BTreeSet<String>, points: &BTreeSet<String>, outcome: Outcome) {
    let image = format!("flotilla-test/{}-baked", scope.name());
    let old = text(&docker(&["images", "-q", &image]));
    for id in old.lines() {
        let _ = docker(&["rmi", "-f", id]);
    }
    let t = Instant::now();
    let done = chain("bake", points, outcome, || {
        let mut cmd = scope.cli.command();
        cmd.args(["--cluster", scope.name(), "bake", "--name", &image, "--output", "json"]);
        cmd
    });
    eprintln!("bake ({outcome:?}): interrupted at {:?} in {:.0} s", done.interrupted, t.elapsed().as_secs_f64());
    covered.extend(done.interrupted);
    let r: Value = serde_json::from_slice(&done.stdout).expect("bake JSON");
    assert!(r["image"].as_str().is_some_and(|i| i.starts_with(&image)), "{r}");
    let builder = format!("flotilla-{}.bake-builder", scope.name());
    for (kind, name) in [
        ("container", builder.clone()),
        ("network", format!("flotilla-{}.bake", scope.name())),
        ("volume", format!("{builder}-docker")),
    ] {
        assert!(!docker(&[kind, "inspect", &name]).status.success(), "bake left its {kind} {name}");
    }
}

/// Every failpoint interrupted with `outcome`, each followed by the same command run again.
fn every_point(outcome: Outcome) {
    let points: BTreeSet<String> = points_in_code().into_iter().filter(|p| !p.starts_with(AWS)).collect();
    assert!(points.len() >= 20, "too few failpoints found in the sources: {points:?}");
    let (name, bake_scope) = cluster(outcome);
    let whole = outcome == Outcome::Crash;
    let mut covered = BTreeSet::new();
    lifecycle(&LabCluster::new(name), &mut covered, &points, outcome, whole);
    bake(&LabCluster::new(bake_scope), &mut covered, &points, outcome);
    let expected: BTreeSet<&String> =
        points.iter().filter(|p| whole || !UPGRADE_AND_RECOVER.iter().any(|x| p.starts_with(x))).collect();
    let missed: Vec<&&String> = expected.iter().filter(|p| !covered.contains(p.as_str())).collect();
    eprintln!("crash points ({outcome:?}): {} points, interrupted at {}", points.len(), covered.len());
    assert!(missed.is_empty(), "failpoints never reached ({outcome:?}): {missed:?}");
}

#[test]
fn issue_20_every_failpoint_crashed_at_then_the_same_command_converges() {
    every_point(Outcome::Crash);
}

#[test]
fn issue_20_every_failpoint_failed_at_then_the_same_command_converges() {
    every_point(Outcome::Error);
}
