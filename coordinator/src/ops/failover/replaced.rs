//! `--mode terminate`: the target's host is taken away for good, so nothing is restored —
//! the control plane's auto-heal must notice the host lost and replace it. The drill watches
//! the control plane's heal status and times each step from the fault: detected as lost
//! (`lost_s`), replacement launched (`replacement_launched_s`), replacement enrolled
//! (`replacement_enrolled_s`), replaced (`restore_s`: the heal's own "replaced").

use std::time::{Duration, Instant};

use flotilla_proto::v1;

use super::{Drill, FailoverError, Report};
use crate::poll::{Attempt, PollError, poll_until};

/// What the drill refuses `--mode terminate` for: auto-heal is not on (nothing would bring
/// the host back).
pub(super) fn refusal(st: &v1::StatusResponse) -> Option<FailoverError> {
    let heal = st.heal.clone().unwrap_or_default();
    let auto = heal.policy.is_some_and(|p| p.auto);
    match heal.state.as_str() {
        _ if !auto => Some(FailoverError::Refused(
            "--mode terminate takes a host away for good and needs auto-heal to replace it: deploy with `[heal] mode = \"auto\"` (or `deploy --heal auto`)".into(),
        )),
        "unavailable" | "refused" => Some(FailoverError::Refused(format!(
            "--mode terminate needs auto-heal, which is {}: {}",
            heal.state, heal.message
        ))),
        _ => None,
    }
}

/// How long auto-heal gets, from the end of the election phase: its grace period, then the
/// replacement's boot, enrollment and join.
pub(super) fn heal_bound(st: &v1::StatusResponse, bound: Duration) -> Duration {
    let grace = st.heal.as_ref().and_then(|h| h.policy).map(|p| p.grace_s).unwrap_or(60);
    Duration::from_secs(u64::from(grace)) + bound * 4
}

/// Watches auto-heal replace `target` (until `deadline`), recording each step's time from
/// the fault in `r` and in the timeline. Returns the heal's last word, or why it did not
/// finish.
pub(super) async fn wait_for_heal(
    d: &Drill,
    target: &str,
    fault_at: Instant,
    deadline: Instant,
    r: &mut Report,
) -> Result<String, String> {
    let mine = format!("{target}: ");
    // lost_s, replacement_launched_s, replacement_enrolled_s, as they are seen.
    let steps: std::sync::Mutex<[Option<f64>; 3]> = Default::default();
    let done = poll_until("auto-heal to replace the target", deadline, Duration::from_millis(500), || {
        let (mut admin, mine, steps) = (d.admin.clone(), &mine, &steps);
        async move {
            let Ok(st) = admin.status(v1::StatusRequest::default()).await else {
                return Ok::<_, String>(Attempt::NotYet("control plane: no answer".into()));
            };
            let st = st.into_inner();
            let heal = st.heal.clone().unwrap_or_default();
            let at = fault_at.elapsed();
            let mut s = super::lock(steps);
            let [lost, launched, enrolled] = &mut *s;
            if lost.is_none() && heal.message.starts_with(mine.as_str()) {
                *lost = Some(d.say.event(at, format!("auto-heal: {}", heal.message)));
            }
            if launched.is_none()
                && heal.message.starts_with(mine.as_str())
                && heal.message.contains("launched replacement")
            {
                *launched = Some(d.say.event(at, format!("auto-heal: {}", heal.message)));
            }
            let connected = st.hosts.iter().any(|h| h.name == target && h.connected && !h.unreachable);
            if launched.is_some() && enrolled.is_none() && connected {
                *enrolled = Some(d.say.event(at, format!("auto-heal: the replacement {target} enrolled")));
            }
            let finished = heal.state != "healing" && lost.is_some();
            match () {
                _ if finished && heal.message.contains("replaced") && heal.message.contains(target) => {
                    Ok(Attempt::Done(heal.message))
                }
                _ if finished => {
                    Err(format!("auto-heal ended without replacing {target}: {} ({})", heal.message, heal.state))
                }
                _ => Ok(Attempt::NotYet(format!("{}: {}", heal.state, heal.message))),
            }
        }
    })
    .await;
    [r.lost_s, r.replacement_launched_s, r.replacement_enrolled_s] = *super::lock(&steps);
    done.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, after, .. } => {
            format!("auto-heal did not replace {target} within {after:.0?}: {last}")
        }
    })
}
