//! Watches this Engine's swarm view between health samples, so a change (joined, promoted,
//! a new leader) reaches the coordinator at once instead of at the next heartbeat: the
//! session sends a sample when [`run`] publishes a changed view.
//!
//! Cost: one read every [`INTERVAL`] (1 s) — an `info` call to the local Engine, plus a
//! `nodes` call on a manager (see [`crate::roles::swarm::view`]); a few milliseconds of the
//! Engine's time per second. A read that fails or takes longer than [`READ_TIMEOUT`] (an
//! Engine that is down, a manager without quorum) changes nothing: the heartbeat reports
//! those.

use std::future::Future;
use std::time::Duration;

use flotilla_proto::v1::SwarmView;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the swarm view is read.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A read taking longer is abandoned (`info` blocks while a manager has no quorum).
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `new` differs from `old` in what the coordinator acts on: the local state, the
/// node (a new swarm), being a manager, the manager status, the leader. The read's time
/// alone is no change.
pub fn changed(old: Option<&SwarmView>, new: &SwarmView) -> bool {
    old.is_none_or(|o| {
        o.local_state != new.local_state
            || o.node_id != new.node_id
            || o.is_manager != new.is_manager
            || o.manager_status != new.manager_status
            || o.leader_addr != new.leader_addr
    })
}

/// Reads the view with `read` every `interval` until `shutdown`, and keeps the latest in
/// `out`; receivers are notified only when it [`changed`].
pub async fn run<F, Fut>(
    mut read: F,
    out: watch::Sender<Option<SwarmView>>,
    interval: Duration,
    shutdown: CancellationToken,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<SwarmView>>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Ok(Some(view)) = tokio::time::timeout(READ_TIMEOUT, read()).await else {
            continue;
        };
        out.send_if_modified(|current| {
            let changed = changed(current.as_ref(), &view);
            if changed {
                tracing::info!(
                    state = %view.local_state,
                    manager = view.is_manager,
                    manager_status = %view.manager_status,
                    leader = %view.leader_addr,
                    "swarm view changed"
                );
            }
            // The newest read is kept either way (its time is the view's age); only a change
            // wakes the session.
            *current = Some(view);
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn view(state: &str, status: &str, leader: &str, at: i64) -> SwarmView {
        SwarmView {
            local_state: state.into(),
            node_id: "n1".into(),
            is_manager: !status.is_empty(),
            manager_status: status.into(),
            leader_addr: leader.into(),
            observed_unix_ms: at,
        }
    }

    #[test]
    fn each_field_the_coordinator_reads_is_a_change_and_the_read_time_is_not() {
        let base = view("active", "reachable", "10.0.0.1:2377", 1);
        assert!(changed(None, &base), "the first view is news");
        assert!(!changed(Some(&base), &view("active", "reachable", "10.0.0.1:2377", 2)));
        assert!(changed(Some(&base), &view("pending", "reachable", "10.0.0.1:2377", 2)));
        assert!(changed(Some(&base), &view("active", "leader", "10.0.0.1:2377", 2)));
        assert!(changed(Some(&base), &view("active", "reachable", "10.0.0.2:2377", 2)));
        assert!(changed(Some(&base), &view("active", "", "", 2)), "demoted");
        let mut other_swarm = base.clone();
        other_swarm.node_id = "n2".into();
        assert!(changed(Some(&base), &other_swarm));
    }

    /// A change is published within one interval of the read that sees it — not at the next
    /// heartbeat (5 s) — and a read that fails or hangs publishes nothing.
    #[tokio::test(start_paused = true)]
    async fn a_change_is_published_within_one_interval_and_failed_reads_are_no_change() {
        let reads: Arc<Mutex<Vec<Option<SwarmView>>>> = Arc::new(Mutex::new(vec![
            Some(view("active", "reachable", "10.0.0.1:2377", 1)),
            Some(view("active", "reachable", "10.0.0.1:2377", 2)),
            None,
            Some(view("active", "leader", "10.0.0.2:2377", 4)),
        ]));
        let source = Arc::clone(&reads);
        let read = move || {
            let next = {
                let mut r = source.lock().expect("reads");
                if r.is_empty() { None } else { Some(r.remove(0)) }
            };
            async move {
                match next {
                    Some(v) => v,
                    // Nothing scripted: an Engine that never answers.
                    None => std::future::pending().await,
                }
            }
        };
        let (tx, mut rx) = watch::channel(None);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(read, tx, INTERVAL, shutdown.clone()));
        let start = tokio::time::Instant::now();

        rx.changed().await.expect("first view");
        assert_eq!(rx.borrow_and_update().as_ref().map(|v| v.manager_status.clone()), Some("reachable".into()));
        rx.changed().await.expect("the new leader");
        let got = rx.borrow_and_update().clone().expect("view");
        assert_eq!((got.manager_status.as_str(), got.leader_addr.as_str()), ("leader", "10.0.0.2:2377"));
        // Reads at 0 s (the first view), 1 s (the same view: no wake-up), 2 s (failed), 3 s.
        assert_eq!(start.elapsed(), 3 * INTERVAL, "published by the read that saw it");
        // Reads that hang are abandoned and change nothing.
        tokio::time::sleep(3 * READ_TIMEOUT).await;
        assert!(!rx.has_changed().expect("sender alive"));
        shutdown.cancel();
        task.await.expect("watcher stops");
    }
}
