//! Auto-heal's supervisor. The control plane sees every agent's session; when one has been
//! unreachable past the policy's grace period, it runs the same heal an operator would
//! (`coordinator heal --auto`, a child process: the control plane itself never launches a
//! host) — one run at a time, backing off after a run that failed or changed nothing. The
//! run asks the provider whether the host is really gone (a partition is not replaced) and
//! reports its progress back ([`ControlPlane::report_heal`]), which `status` shows and the
//! audit trail records.
//!
//! The policy (`[heal]` in flotilla.toml) reaches the control plane through
//! [`ControlPlane::set_heal_policy`] on every deploy and is kept in the store.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_proto::v1;
use prost::Message;

use crate::control_plane::core::{ControlError, ControlPlane};
use crate::control_plane::operators::caller::Caller;

/// How often the supervisor looks at the sessions.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// The grace period when a policy gives none.
pub const DEFAULT_GRACE_S: u32 = 60;
/// The shortest grace accepted: shorter would replace hosts that merely rebooted.
pub const MIN_GRACE_S: u32 = 10;
/// After a run that changed nothing (an unreachable host whose instance runs), the wait
/// before the next look.
const AFTER_NOTHING_MS: i64 = 30_000;
/// After a run that replaced hosts.
const AFTER_DONE_MS: i64 = 5_000;
/// Back-off after failed runs: doubled per failure in a row, capped.
const BACKOFF_FIRST_MS: i64 = 30_000;
const BACKOFF_MAX_MS: i64 = 15 * 60_000;
/// The store key of the policy.
const POLICY_KEY: &str = "heal.policy";

/// Exit codes of `coordinator heal` the supervisor reads (sysexits): the run refused to act
/// (quorum lost, another operation holds the cluster) — try again later ...
pub const EXIT_REFUSED: i32 = 75;
/// ... the provider cannot be reached with what this process has (no credentials): auto-heal
/// stops until the next deploy sets the policy again.
pub const EXIT_NO_PROVIDER: i32 = 78;

#[derive(Debug, Default)]
pub struct Healer {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    policy: Option<v1::HealPolicy>,
    /// idle | healing | backing-off | refused
    phase: String,
    message: String,
    since_ms: i64,
    next_attempt_ms: i64,
    replaced: u64,
    failed: u64,
    failures_in_row: u32,
    /// The host the last progress line was about (a new one is audited).
    current_host: String,
    /// When this control plane started: an agent cannot have reconnected before it.
    started_ms: i64,
}

impl Healer {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The policy with its defaults filled in.
pub fn normalised(p: v1::HealPolicy) -> v1::HealPolicy {
    let grace_s = match p.grace_s {
        0 => DEFAULT_GRACE_S,
        g => g.max(MIN_GRACE_S),
    };
    v1::HealPolicy { auto: p.auto, grace_s }
}

/// Hosts whose agents are unreachable now, and for how long (seconds): no session since it
/// was last seen, or a session without a heartbeat for three intervals — counted from
/// `started_ms` at the earliest (no agent could reach a control plane that was not running).
pub fn unreachable_for(st: &v1::StatusResponse, now_ms: i64, started_ms: i64) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for h in st.hosts.iter().filter(|h| h.unreachable && !h.revoked) {
        let last = if h.connected && h.last_heartbeat_age_s >= 0.0 {
            now_ms - (h.last_heartbeat_age_s * 1000.0) as i64
        } else {
            h.since_unix_ms
        };
        out.insert(h.name.clone(), (now_ms - last.max(started_ms)).max(0) as f64 / 1000.0);
    }
    out
}

/// Of `unreachable`, the hosts past `grace_s`, sorted.
pub fn past_grace(unreachable: &HashMap<String, f64>, grace_s: u32) -> Vec<String> {
    let mut v: Vec<String> =
        unreachable.iter().filter(|(_, s)| **s >= f64::from(grace_s)).map(|(n, _)| n.clone()).collect();
    v.sort();
    v
}

impl ControlPlane {
    /// Loads the stored policy (at start).
    pub fn load_heal_policy(&self) -> Result<(), crate::control_plane::store::StoreError> {
        let policy = self.store.meta(POLICY_KEY)?.and_then(|b| v1::HealPolicy::decode(b.as_slice()).ok());
        let mut s = self.healer.lock();
        s.policy = policy.map(normalised);
        s.started_ms = self.clock.now_ms();
        s.phase = "idle".into();
        s.since_ms = s.started_ms;
        Ok(())
    }

    /// Sets the policy (deploy, from `[heal]`); clears a refusal, so auto-heal tries again.
    pub fn set_heal_policy(&self, p: v1::HealPolicy, by: &Caller) -> Result<v1::HealPolicy, ControlError> {
        let p = normalised(p);
        self.store.put_meta(POLICY_KEY, &p.encode_to_vec())?;
        let now = self.clock.now_ms();
        let changed = {
            let mut s = self.healer.lock();
            let changed = s.policy.as_ref() != Some(&p);
            s.policy = Some(p);
            if s.phase == "refused" || s.phase == "backing-off" {
                s.phase = "idle".into();
                s.next_attempt_ms = 0;
                s.failures_in_row = 0;
                s.since_ms = now;
            }
            changed
        };
        if changed {
            let mode = if p.auto { "auto" } else { "off" };
            self.audit_by("heal.policy", "", format!("{mode}, grace {} s", p.grace_s), "", &by.to_string());
        }
        Ok(p)
    }

    /// A heal run's progress: shown in `status`; a new host, a replacement and the run's end
    /// are audited.
    pub fn report_heal(&self, p: v1::HealProgress, by: &Caller) {
        let now = self.clock.now_ms();
        let line = if p.host.is_empty() { p.message.clone() } else { format!("{}: {}", p.host, p.message) };
        let audit = {
            let mut s = self.healer.lock();
            let new_host = !p.host.is_empty() && p.host != s.current_host;
            s.current_host = p.host.clone();
            s.message = line.clone();
            if p.replaced {
                s.replaced += 1;
            }
            if p.finished {
                s.current_host.clear();
                if p.failed {
                    s.failed += 1;
                } else if s.phase == "healing" {
                    // Done now, not at the supervisor's next look at the exited run.
                    s.phase = "idle".into();
                    s.since_ms = now;
                }
            } else if s.phase != "healing" {
                s.phase = "healing".into();
                s.since_ms = now;
            }
            match () {
                _ if p.finished && p.failed => Some("heal.failed"),
                _ if p.finished => Some("heal.finished"),
                _ if p.replaced => Some("heal.replaced"),
                _ if new_host => Some("heal.replacing"),
                _ => None,
            }
        };
        if p.finished {
            // flotilla_heals_total{outcome="done"|"failed"} (issue 18).
            self.metrics.heal_finished(!p.failed);
        }
        if let Some(kind) = audit {
            let who = if p.automatic { "auto-heal".to_string() } else { by.to_string() };
            self.audit_by(kind, &p.host, p.message, "", &who);
        }
    }

    /// Healing as `status` shows it.
    pub fn heal_status(&self, st: &v1::StatusResponse) -> v1::HealStatus {
        let now = self.clock.now_ms();
        let s = self.healer.lock();
        let unreachable_s = unreachable_for(st, now, s.started_ms);
        let (phase, message) = match &s.policy {
            None => (
                "off".to_string(),
                "no heal policy: `coordinator deploy` sets it from flotilla.toml's [heal]".to_string(),
            ),
            Some(p) if !p.auto && s.phase != "healing" => ("off".to_string(), s.message.clone()),
            Some(_) if self.config.heal_command.is_none() && s.phase != "healing" => (
                "unavailable".to_string(),
                "this control plane has no heal command to run (embedded); run `coordinator heal`".to_string(),
            ),
            Some(_) => (s.phase.clone(), s.message.clone()),
        };
        v1::HealStatus {
            policy: s.policy,
            state: phase,
            message,
            since_unix_ms: s.since_ms,
            next_attempt_unix_ms: s.next_attempt_ms,
            replaced: s.replaced,
            failed: s.failed,
            unreachable_s,
        }
    }

    /// The hosts auto-heal should run for now, if any: auto on, no run under way or
    /// refused, the back-off over, and hosts past the grace period.
    fn heal_due(&self, st: &v1::StatusResponse) -> Option<Vec<String>> {
        let now = self.clock.now_ms();
        let s = self.healer.lock();
        let policy = s.policy.filter(|p| p.auto)?;
        if s.phase == "healing" || s.phase == "refused" || now < s.next_attempt_ms {
            return None;
        }
        let due = past_grace(&unreachable_for(st, now, s.started_ms), policy.grace_s);
        (!due.is_empty()).then_some(due)
    }

    fn heal_started(&self, hosts: &[String]) {
        let now = self.clock.now_ms();
        {
            let mut s = self.healer.lock();
            s.phase = "healing".into();
            s.since_ms = now;
            s.message = format!("unreachable past the grace period: {}; checking with the provider", hosts.join(", "));
        }
        self.audit_by("heal.auto", &hosts.join(","), "agents unreachable past the grace period", "", "auto-heal");
    }

    /// A run ended with `code` (`None`: killed by a signal).
    fn heal_ended(&self, code: Option<i32>) {
        let now = self.clock.now_ms();
        let mut s = self.healer.lock();
        s.since_ms = now;
        match code {
            Some(0) => {
                s.failures_in_row = 0;
                s.phase = "idle".into();
                let pause = if s.message.contains("not replaced") { AFTER_NOTHING_MS } else { AFTER_DONE_MS };
                s.next_attempt_ms = now + pause;
            }
            Some(EXIT_NO_PROVIDER) => {
                s.phase = "refused".into();
                s.message = format!("auto-heal refused until the next deploy: {}", s.message);
            }
            Some(EXIT_REFUSED) => {
                s.phase = "backing-off".into();
                s.next_attempt_ms = now + BACKOFF_FIRST_MS;
            }
            other => {
                s.failures_in_row += 1;
                let factor = 1_i64 << s.failures_in_row.saturating_sub(1).min(10);
                s.next_attempt_ms = now + (BACKOFF_FIRST_MS * factor).min(BACKOFF_MAX_MS);
                s.phase = "backing-off".into();
                if !s.message.contains("failed") {
                    s.failed += 1;
                    let how = other.map_or("was killed".to_string(), |c| format!("exited with {c}"));
                    s.message = format!("the heal run {how}; last: {}", s.message);
                }
            }
        }
    }
}

/// Runs auto-heal until the control plane stops (spawned at start when it has a heal
/// command). The child's output goes to `<state>/heal.log`; it is killed on shutdown.
pub async fn supervise(cp: Arc<ControlPlane>, command: Vec<OsString>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut child: Option<tokio::process::Child> = None;
    loop {
        tokio::select! {
            () = cp.shutdown.cancelled() => {
                if let Some(c) = child.as_mut() {
                    let _ = c.start_kill();
                }
                return;
            }
            _ = tick.tick() => {}
        }
        if let Some(c) = child.as_mut() {
            match c.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => cp.heal_ended(status.code()),
                Err(e) => {
                    tracing::warn!(error = %e, "auto-heal: could not wait for the heal run");
                    cp.heal_ended(None);
                }
            }
            child = None;
        }
        let Ok(st) = cp.status() else { continue };
        let Some(hosts) = cp.heal_due(&st) else { continue };
        cp.heal_started(&hosts);
        match spawn(&cp, &command) {
            Ok(c) => child = Some(c),
            Err(e) => {
                cp.report_heal(
                    v1::HealProgress {
                        message: format!("could not start the heal run: {e}"),
                        finished: true,
                        failed: true,
                        automatic: true,
                        ..Default::default()
                    },
                    &Caller::LocalSocket { uid: None },
                );
                cp.heal_ended(Some(1));
            }
        }
    }
}

/// The environment variable that tells a heal run its control plane's process id: it ends when
/// its parent is no longer that process (`cli/heal.rs`).
pub const PARENT_PID_ENV: &str = "FLOTILLA_HEAL_PARENT_PID";

/// Starts `command`, its output appended to `<state>/heal.log`.
fn spawn(cp: &ControlPlane, command: &[OsString]) -> std::io::Result<tokio::process::Child> {
    let log_path = crate::control_plane::settings::StatePaths::new(&cp.config.state_dir).heal_log();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let (program, args) = command.split_first().ok_or_else(|| std::io::Error::other("empty heal command"))?;
    tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .env(PARENT_PID_ENV, std::process::id().to_string())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, connected: bool, since: i64, hb_age: f64, unreachable: bool) -> v1::HostStatus {
        v1::HostStatus {
            name: name.into(),
            connected,
            since_unix_ms: since,
            last_heartbeat_age_s: hb_age,
            unreachable,
            ..Default::default()
        }
    }

    #[test]
    fn unreachable_time_counts_from_last_contact_but_never_before_the_control_plane_started() {
        let st = v1::StatusResponse {
            hosts: vec![
                host("up", true, 0, 1.0, false),
                host("gone", false, 10_000, -1.0, true),
                host("silent", true, 0, 70.0, true),
                host("old", false, 1_000, -1.0, true),
            ],
            ..Default::default()
        };
        let u = unreachable_for(&st, 100_000, 5_000);
        assert_eq!(u.get("up"), None);
        assert_eq!(u.get("gone"), Some(&90.0));
        assert_eq!(u.get("silent"), Some(&70.0));
        // Last seen before the start: counted from the start.
        assert_eq!(u.get("old"), Some(&95.0));
        assert_eq!(past_grace(&u, 80), vec!["gone".to_string(), "old".to_string()]);
        assert!(past_grace(&u, 96).is_empty());
    }

    #[test]
    fn a_policy_without_grace_gets_the_default_and_a_tiny_one_the_minimum() {
        assert_eq!(normalised(v1::HealPolicy { auto: true, grace_s: 0 }).grace_s, DEFAULT_GRACE_S);
        assert_eq!(normalised(v1::HealPolicy { auto: true, grace_s: 1 }).grace_s, MIN_GRACE_S);
        assert_eq!(normalised(v1::HealPolicy { auto: false, grace_s: 90 }).grace_s, 90);
    }
}
