//! Issue 7 — `coordinator failover-test` end to end on the lab, through the real binary: on
//! a default cluster, the drill in both modes elects a new leader, keeps the hello service's
//! replicas running, brings the old leader back as a reachable manager, and its streamed
//! logs hold a surviving manager's election lines; a target that is no manager is refused.
//! (The 2-manager refusal is a unit test of the pre-check in `coordinator/src/failover.rs`:
//! deploying a second, 2-manager cluster here would cost another minute for a pure check.)


use std::process::{Command, Output};

use flotilla_tests::Cli;
use serde_json::Value;

const CLUSTER: &str = "drill";

fn cli() -> Cli {
    Cli::new(CLUSTER)
}

/// `coordinator <args>` (the args name the cluster themselves).
fn run(args: &[&str]) -> Output {
    let out = cli().command().args(args).output().expect("run coordinator");
    eprintln!("$ coordinator {}\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// The hello service is gone from the swarm (asked inside a manager host, of its Engine).
fn drill_service_left(manager: &str) -> String {
    let out = Command::new("docker")
        .args(["exec", &format!("flotilla-{CLUSTER}-{manager}"), "docker", "service", "ls", "-q", "--filter", "name=flotilla-drill-hello"])
        .env_remove("DOCKER_HOST")
        .output()
        .expect("docker exec");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn assert_drill_passed(mode: &str) -> Value {
    let out = run(&["--cluster", CLUSTER, "failover-test", "--mode", mode, "--output", "json"]);
    let r = json(&out);
    assert!(out.status.success(), "{mode} drill exited {:?}: {}", out.status.code(), r["verdict"]);
    assert_eq!(r["passed"], true, "{}", r["verdict"]);
    let (old, new) = (r["old_leader"].as_str().unwrap_or(""), r["new_leader"].as_str().unwrap_or(""));
    assert!(old.starts_with("manager") && new.starts_with("manager") && old != new, "{old} → {new}");
    assert_eq!(r["rejoined_as"], "reachable");
    assert_eq!(r["workload_ok"], true);
    for k in ["detect_s", "elect_s", "api_back_s", "rejoin_s"] {
        assert!(r[k].as_f64().is_some_and(|s| s >= 0.0), "{k}: {}", r[k]);
    }
    let detect = r["detect_s"].as_f64().unwrap_or(f64::MAX);
    let elect = r["elect_s"].as_f64().unwrap_or(0.0);
    let api = r["api_back_s"].as_f64().unwrap_or(0.0);
    assert!(detect <= elect && elect <= api, "detect {detect} ≤ elect {elect} ≤ api back {api}");
    // The live logs held the election, as a surviving manager's Engine logged it.
    let lines: Vec<&str> = r["election_lines"].as_array().expect("election_lines").iter().filter_map(Value::as_str).collect();
    assert!(
        lines.iter().any(|l| !l.starts_with(&format!("{old}/")) && (l.contains("became leader") || l.contains("elected leader"))),
        "no surviving manager's election line among {lines:#?}"
    );
    assert!(drill_service_left(new).is_empty(), "the drill's hello service was not removed");
    r
}

#[test]
fn issue_7_failover_drills_elect_a_new_leader_keep_the_workload_and_rejoin_the_old_one() {
    let _ = run(&["--cluster", CLUSTER, "destroy", "--yes"]);
    let out = run(&["--cluster", CLUSTER, "deploy", "--no-smoke-test", "--output", "json"]);
    assert!(out.status.success(), "deploy failed");

    // A target that is not a manager: refused (usage), nothing is taken down.
    let out = run(&["--cluster", CLUSTER, "failover-test", "--target", "node0"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'node0' is not a manager"), "{err}");

    let engine = assert_drill_passed("engine");
    let host = assert_drill_passed("host");
    eprintln!(
        "measured (s): engine detect {} elect {} api {} rejoin {}; host detect {} elect {} api {} rejoin {}",
        engine["detect_s"], engine["elect_s"], engine["api_back_s"], engine["rejoin_s"],
        host["detect_s"], host["elect_s"], host["api_back_s"], host["rejoin_s"]
    );

    assert!(run(&["--cluster", CLUSTER, "destroy", "--yes"]).status.success());
}
