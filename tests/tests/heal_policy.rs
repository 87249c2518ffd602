//! Issue 15 — the control plane's side of healing, on loopback with real agents:
//!
//! - the policy: off until a deploy sets it, defaults filled in, a grace below the minimum
//!   raised, kept across a restart, an embedded control plane (no heal command) says
//!   auto-heal is unavailable;
//! - a heal run's progress reaches `status` and the audit trail;
//! - the supervisor: an agent unreachable past the grace period makes the control plane run
//!   its heal command (here a stand-in script recording that it ran; the real `heal` is
//!   tested on the lab in `heal.rs`) once, reads its exit code (75: a refusal → backing off,
//!   with the next attempt planned), and records it in the audit trail; an agent unreachable
//!   for less than the grace period runs nothing.

use std::time::Duration;

use flotilla_proto::v1;
use flotilla_tests::{Coord, eventually};

const WAIT: Duration = Duration::from_secs(20);

async fn heal(coord: &Coord) -> v1::HealStatus {
    coord.status().await.heal.expect("status carries heal")
}

async fn audit_kinds(coord: &Coord) -> Vec<(String, String)> {
    let r = coord.admin().await.audit(v1::AuditRequest { limit: 500 }).await.expect("audit").into_inner();
    r.events.into_iter().map(|e| (e.kind, e.actor)).collect()
}

#[tokio::test]
async fn the_policy_is_off_until_set_filled_in_kept_across_restarts_and_progress_reaches_status_and_audit() {
    let mut coord = Coord::start(|_| {}).await;
    let h = heal(&coord).await;
    assert_eq!((h.state.as_str(), h.policy), ("off", None), "{h:?}");
    assert!(h.message.contains("coordinator deploy"), "{}", h.message);

    let mut admin = coord.admin().await;
    let p = admin.set_heal_policy(v1::HealPolicy { auto: true, grace_s: 0 }).await.expect("set").into_inner();
    assert_eq!(p, v1::HealPolicy { auto: true, grace_s: 60 });
    let p = admin.set_heal_policy(v1::HealPolicy { auto: true, grace_s: 3 }).await.expect("set").into_inner();
    assert_eq!(p.grace_s, 10, "a grace below the minimum is raised");
    let h = heal(&coord).await;
    assert_eq!(h.state, "unavailable", "embedded: no heal command to run: {h:?}");

    admin
        .report_heal(v1::HealProgress {
            host: "manager1".into(),
            message: "launched replacement i-0abc, waiting for enrollment".into(),
            ..Default::default()
        })
        .await
        .expect("report");
    let h = heal(&coord).await;
    assert_eq!(h.state, "healing");
    assert_eq!(h.message, "manager1: launched replacement i-0abc, waiting for enrollment");
    admin
        .report_heal(v1::HealProgress {
            host: "manager1".into(),
            message: "replaced".into(),
            replaced: true,
            ..Default::default()
        })
        .await
        .expect("report");
    admin
        .report_heal(v1::HealProgress { message: "replaced manager1".into(), finished: true, ..Default::default() })
        .await
        .expect("report");
    let h = heal(&coord).await;
    assert_eq!((h.replaced, h.failed), (1, 0));
    assert_ne!(h.state, "healing", "{h:?}");
    let kinds = audit_kinds(&coord).await;
    for k in ["heal.policy", "heal.replacing", "heal.replaced", "heal.finished"] {
        assert!(
            kinds.iter().any(|(kind, actor)| kind == k && actor.contains("local socket")),
            "{k} missing: {kinds:?}"
        );
    }

    coord.restart().await;
    assert_eq!(
        heal(&coord).await.policy,
        Some(v1::HealPolicy { auto: true, grace_s: 10 }),
        "the policy survives a restart"
    );
}

#[tokio::test]
async fn an_agent_unreachable_past_the_grace_period_makes_the_control_plane_run_its_heal_command_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let script = format!("echo ran >> {}; exit 75", marker.display());
    let mut coord = Coord::start(|c| c.heal_command = Some(vec!["/bin/sh".into(), "-c".into(), script.into()])).await;
    coord.admin().await.set_heal_policy(v1::HealPolicy { auto: true, grace_s: 30 }).await.expect("policy");
    let mut agent = flotilla_agent::start(coord.agent_config("node0").await).await.expect("agent");
    agent.wait_for(WAIT, |s| s.connected).await.expect("connected");
    agent.stop().await;
    let h = eventually(WAIT, "node0 unreachable in the heal view", || async {
        let h = heal(&coord).await;
        h.unreachable_s.contains_key("node0").then_some(h)
    })
    .await;
    assert!(h.unreachable_s["node0"] < 30.0, "{h:?}");
    // Within the grace period: nothing runs (the supervisor looks every 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!marker.exists(), "the heal command ran within the grace period");

    coord.clock.advance(Duration::from_secs(31));
    let h = eventually(WAIT, "the heal run to end in a back-off", || async {
        let h = heal(&coord).await;
        (h.state == "backing-off").then_some(h)
    })
    .await;
    assert!(h.next_attempt_unix_ms > 0, "{h:?}");
    assert_eq!(std::fs::read_to_string(&marker).expect("ran").lines().count(), 1, "ran once");
    let kinds = audit_kinds(&coord).await;
    assert!(kinds.iter().any(|(k, a)| k == "heal.auto" && a == "auto-heal"), "{kinds:?}");
    // Backing off: no second run before the next attempt's time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(std::fs::read_to_string(&marker).expect("ran").lines().count(), 1, "ran again while backing off");
    coord.stop().await;
}

#[tokio::test]
async fn a_heal_run_without_provider_credentials_stops_auto_heal_until_the_policy_is_set_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    // What `heal --auto` reports and exits with when the provider refuses its credentials.
    let script = format!("echo ran >> {}; exit 78", marker.display());
    let mut coord = Coord::start(|c| c.heal_command = Some(vec!["/bin/sh".into(), "-c".into(), script.into()])).await;
    let policy = v1::HealPolicy { auto: true, grace_s: 30 };
    coord.admin().await.set_heal_policy(policy).await.expect("policy");
    let mut agent = flotilla_agent::start(coord.agent_config("node0").await).await.expect("agent");
    agent.wait_for(WAIT, |s| s.connected).await.expect("connected");
    agent.stop().await;
    eventually(WAIT, "node0 unreachable", || async {
        heal(&coord).await.unreachable_s.contains_key("node0").then_some(())
    })
    .await;
    coord.clock.advance(Duration::from_secs(31));
    let h = eventually(WAIT, "auto-heal refused", || async {
        let h = heal(&coord).await;
        (h.state == "refused").then_some(h)
    })
    .await;
    assert!(h.message.contains("refused until the next deploy"), "{}", h.message);
    // Refused: it does not try again, however long the host stays unreachable ...
    coord.clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(std::fs::read_to_string(&marker).expect("ran").lines().count(), 1, "ran again while refused");
    // ... until a deploy sets the policy again.
    coord.admin().await.set_heal_policy(policy).await.expect("policy again");
    eventually(WAIT, "a second run after the policy was set again", || async {
        let runs = std::fs::read_to_string(&marker).unwrap_or_default().lines().count();
        (runs == 2).then_some(())
    })
    .await;
    coord.stop().await;
}
