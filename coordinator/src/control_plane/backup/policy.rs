//! When the control plane takes backups by itself, and how many it keeps: `backup.every`
//! and `backup.keep` of flotilla.toml, which `deploy` writes to `<state>/backup-policy.json`
//! (read again at every tick, so a re-deploy changes them without a restart).
//!
//! The first scheduled backup is due `every` after the newest one, or after the control
//! plane started when there is none (a fresh cluster is not stopped for a backup while it is
//! still being deployed). A failed attempt is tried again after [`RETRY`] (or `every`, if
//! shorter).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control_plane::core::ControlPlane;

/// The default of `backup.every`.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(6 * 3600);
/// The default of `backup.keep` (per kind).
pub const DEFAULT_KEEP: usize = 8;
/// How often the schedule looks at the clock.
pub const TICK: Duration = Duration::from_secs(15);
/// How long after a failed scheduled attempt the next one comes.
pub const RETRY: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Seconds between scheduled backups; 0: none scheduled.
    pub every_s: u64,
    /// Backups kept per kind (the newest); at least 1.
    pub keep: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self { every_s: DEFAULT_EVERY.as_secs(), keep: DEFAULT_KEEP }
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("backup-policy.json")
}

impl Policy {
    /// The policy `deploy` recorded; the defaults when there is none (or it does not parse:
    /// logged).
    pub fn load(state_dir: &Path) -> Self {
        let p = path(state_dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %p.display(), error = %e, "backup policy does not parse; using the defaults");
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        flotilla_proto::fs::write_public(&path(state_dir), &json)
    }

    /// Whether a scheduled backup is due at `now_ms`: `every` after the newest backup (or
    /// after `started_ms` when there is none) and after the last failed attempt's retry.
    pub fn due(&self, newest_ms: Option<i64>, started_ms: i64, failed_ms: Option<i64>, now_ms: i64) -> bool {
        if self.every_s == 0 {
            return false;
        }
        let every = (self.every_s * 1000) as i64;
        let retry = every.min(RETRY.as_millis() as i64);
        now_ms >= newest_ms.unwrap_or(started_ms) + every && failed_ms.is_none_or(|f| now_ms >= f + retry)
    }
}

/// The schedule: runs until the control plane shuts down.
pub async fn run(cp: Arc<ControlPlane>) {
    let started_ms = cp.clock.now_ms();
    let state_dir = cp.config.state_dir.clone();
    let mut failed_ms = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = cp.shutdown.cancelled() => return,
        }
        let policy = Policy::load(&state_dir);
        // A kind's backup is due when the older of the two newest ones is.
        let newest = match super::archive::list(&state_dir) {
            Ok(all) => ["swarm", "consul"]
                .iter()
                .map(|k| all.iter().filter(|m| m.kind == *k).map(|m| m.taken_unix_ms).max())
                .collect::<Option<Vec<i64>>>()
                .and_then(|v| v.into_iter().min()),
            Err(e) => {
                tracing::error!(error = %e, "listing the backups for the schedule");
                continue;
            }
        };
        if !policy.due(newest, started_ms, failed_ms, cp.clock.now_ms()) {
            continue;
        }
        match cp.take_backups(&[], "schedule").await {
            Ok(taken) => {
                failed_ms = None;
                tracing::info!(backups = taken.len(), "scheduled backup taken");
            }
            Err(e) => {
                failed_ms = Some(cp.clock.now_ms());
                tracing::error!(error = %e, retry_in = ?RETRY, "scheduled backup failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_16_a_backup_is_due_every_after_the_newest_and_a_failure_waits_its_retry() {
        let p = Policy { every_s: 3600, keep: 3 };
        let h = 3_600_000;
        assert!(!p.due(None, 0, None, h - 1), "not before `every` has passed since the start");
        assert!(p.due(None, 0, None, h));
        assert!(!p.due(Some(h), 0, None, h + 10), "the newest backup resets the clock");
        assert!(p.due(Some(h), 0, None, 2 * h));
        let failed = 2 * h;
        assert!(!p.due(Some(h), 0, Some(failed), failed + 1000));
        assert!(p.due(Some(h), 0, Some(failed), failed + RETRY.as_millis() as i64));
        assert!(!Policy { every_s: 0, keep: 1 }.due(None, 0, None, i64::MAX / 2), "0: none scheduled");
        assert_eq!(Policy::default(), Policy { every_s: 6 * 3600, keep: DEFAULT_KEEP });
    }

    #[test]
    fn the_policy_round_trips_and_defaults_when_absent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(Policy::load(tmp.path()), Policy::default());
        let p = Policy { every_s: 60, keep: 2 };
        p.save(tmp.path()).expect("save");
        assert_eq!(Policy::load(tmp.path()), p);
    }
}
