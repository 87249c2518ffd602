//! The measuring loop the Swarm and the Consul drill share: a round of probes every
//! [`PROBE_INTERVAL`] ([`every_interval`]), each probe its own bounded task, so a slow answer
//! never delays the next round; and what they saw taken in order of arrival ([`collect`])
//! until the measure is complete or its deadline passes.

use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{PROBE_INTERVAL, lock};
use crate::poll::{Attempt, poll_until};

/// What one probe saw, and when (from the fault).
pub(super) type Sighting<S> = (Duration, S);

/// Calls `round` every [`PROBE_INTERVAL`] (a round late is skipped, not caught up) until the
/// returned guard is dropped. `round` spawns the probes of one round.
pub(super) fn every_interval(mut round: impl FnMut() + Send + 'static) -> DropGuard {
    let probing = CancellationToken::new();
    let stop = probing.clone().drop_guard();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = probing.cancelled() => return,
            }
            round();
        }
    });
    stop
}

/// Hands what the probes saw to `take`, as it arrives, until `take` says the measure is
/// complete (`true`) or `deadline` passes.
pub(super) async fn collect<S>(
    what: &str,
    deadline: Instant,
    rx: mpsc::UnboundedReceiver<Sighting<S>>,
    take: impl FnMut(Duration, S) -> bool,
) {
    let rx = tokio::sync::Mutex::new(rx);
    let take = Mutex::new(take);
    // Every sighting is looked at as soon as it arrives: no pause between looks.
    let _ = poll_until(what, deadline, Duration::ZERO, || {
        let (rx, take) = (&rx, &take);
        async move {
            let next = tokio::time::timeout_at(deadline.into(), async { rx.lock().await.recv().await }).await;
            match next {
                Ok(Some((at, seen))) => {
                    if (*lock(take))(at, seen) {
                        return Ok::<_, Infallible>(Attempt::Done(()));
                    }
                }
                // The probes stopped: nothing more will come.
                Ok(None) => tokio::time::sleep_until(deadline.into()).await,
                Err(_) => {}
            }
            Ok(Attempt::NotYet("the measure incomplete".into()))
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sightings_are_taken_in_order_until_the_measure_is_complete() {
        let (tx, rx) = mpsc::unbounded_channel();
        for (t, n) in [(1, 1), (2, 2), (3, 3), (4, 4)] {
            tx.send((Duration::from_secs(t), n)).expect("open");
        }
        let mut taken = Vec::new();
        collect("three sightings", Instant::now() + Duration::from_secs(60), rx, |at, n| {
            taken.push((at.as_secs(), n));
            n == 3
        })
        .await;
        assert_eq!(taken, [(1, 1), (2, 2), (3, 3)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_an_incomplete_measure_even_once_the_probes_stopped() {
        let (tx, rx) = mpsc::unbounded_channel::<Sighting<()>>();
        drop(tx);
        let start = tokio::time::Instant::now();
        let mut looks = 0;
        collect("nothing", Instant::now() + Duration::from_secs(5), rx, |_, ()| {
            looks += 1;
            false
        })
        .await;
        assert_eq!(looks, 0);
        assert!(start.elapsed() >= Duration::from_secs(5), "waited {:?}", start.elapsed());
    }
}
