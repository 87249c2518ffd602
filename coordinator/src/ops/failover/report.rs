//! The drill's report, and where the drill decides its verdict ([`judge`]): what was
//! measured, the timeline (written as the drill goes by [`Say`]), what could not be
//! observed, and whether the drill passed. `--output json` prints [`Report`]; its field
//! names are the JSON's.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Component, HELLO_REPLICAS, lock};

/// One line of the timeline (seconds from the fault; negative before it).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    pub t_s: f64,
    pub what: String,
}

/// A span (seconds from the fault) during which something could not be observed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Gap {
    pub from_s: f64,
    /// `None`: it had not ended when the drill finished.
    pub to_s: Option<f64>,
    pub error: String,
}

/// A cut in one host's log stream.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogGap {
    pub host: String,
    pub from_s: f64,
    /// `None`: not resumed before the drill ended.
    pub to_s: Option<f64>,
    pub error: String,
}

/// The drill's report (`--output json` prints it).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub cluster: String,
    pub mode: String,
    /// swarm or consul.
    pub component: String,
    /// The leader before the fault.
    pub old_leader: String,
    /// The host taken down (the old leader unless `--target` named another member).
    pub target: String,
    /// The leader after the fault (the old one when a follower was the target).
    pub new_leader: String,
    /// The target stopped answering the drill's probes (its Engine, or its Consul).
    pub detect_s: Option<f64>,
    /// The control plane's status showed the target down (Engine down, Consul role not
    /// running, host without a session or unreachable).
    pub control_plane_detect_s: Option<f64>,
    /// A surviving member named the new leader (none for a follower target).
    pub elect_s: Option<f64>,
    /// The new leader's Engine logged `became leader` (Swarm's own election time).
    pub swarm_elected_s: Option<f64>,
    /// The new leader's Consul logged `cluster leadership acquired` (Consul's own time).
    pub consul_elected_s: Option<f64>,
    /// Seconds no manager named a leader (Swarm, the leader taken down): from the last node
    /// list naming the old leader after the fault (or the fault) to the first naming the
    /// new one. A planned handover's figure; after an unplanned loss, the election timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaderless_s: Option<f64>,
    /// `elect_s` minus the logged election: how long after the election the drill saw it.
    pub report_lag_s: Option<f64>,
    /// Swarm: the new leader's own API answered a node list. Consul: the new leader's KV
    /// accepted a write.
    pub api_back_s: Option<f64>,
    /// The workload was whole again (from the fault): the hello service's replicas running,
    /// and (Consul) the swarm's join data readable.
    pub workload_s: Option<f64>,
    pub workload_ok: bool,
    /// Consul: the swarm's join data (`flotilla/<cluster>/swarm/join`) read back after the
    /// fault.
    pub join_data_ok: Option<bool>,
    /// Running hello tasks before and after, and whether any was replaced.
    pub tasks_before: usize,
    pub tasks_after: usize,
    pub tasks_rescheduled: bool,
    /// `--mode terminate`: auto-heal took the target for lost, launched its replacement,
    /// and the replacement enrolled (from the fault).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement_launched_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement_enrolled_s: Option<f64>,
    /// The restore was issued (from the fault); `--mode terminate`: auto-heal replaced the
    /// target.
    pub restore_s: Option<f64>,
    /// The target back in the leader's view (from the restore): Swarm lists it
    /// `reachable`; Consul's autopilot lists it a healthy voter.
    pub rejoin_s: Option<f64>,
    /// The target's status in the leader's view when the drill stopped looking.
    pub rejoined_as: String,
    /// Swarm: the managers before the drill, and those the leader counts (leader or
    /// reachable) when the target rejoined, or when the drill stopped looking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managers_before: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managers_after: Option<usize>,
    /// Every host connected with every role running in the control plane's status (from the
    /// restore).
    pub healthy_s: Option<f64>,
    pub bound_s: f64,
    pub passed: bool,
    pub verdict: String,
    pub timeline: Vec<Event>,
    /// Log lines received from the members while the drill ran.
    pub log_lines: usize,
    /// The members' election lines (`host/source | line`).
    pub election_lines: Vec<String>,
    /// Log sources that could not be streamed, with their error.
    pub log_errors: Vec<String>,
    /// When the control plane did not answer.
    pub control_plane_gaps: Vec<Gap>,
    /// When a host's log stream was cut (and resumed from its sources' last lines).
    pub log_gaps: Vec<LogGap>,
    /// What the drill could not observe, and why. Empty when it saw everything.
    pub unobserved: Vec<String>,
    /// What the clean-up did (hello service removed, …).
    pub cleanup: Vec<String>,
}

/// Where the drill writes as it goes (stderr): progress notes and the timeline's events.
pub(super) struct Say {
    start: Instant,
    fault: Mutex<Option<Instant>>,
    timeline: Mutex<Vec<Event>>,
    /// The control plane, told each event as it happens (the status page's drill timeline).
    control_plane: Option<super::live::Live>,
}

impl Say {
    pub(super) fn new() -> Self {
        Self { start: Instant::now(), fault: Mutex::new(None), timeline: Mutex::new(Vec::new()), control_plane: None }
    }
    /// [`Say::new`], also reporting the drill to the control plane as it goes.
    pub(super) fn reporting(live: super::live::Live) -> Self {
        Self { control_plane: Some(live), ..Self::new() }
    }
    /// The control plane's reporter, if any.
    pub(super) fn live(&self) -> Option<&super::live::Live> {
        self.control_plane.as_ref()
    }
    /// From now on, times are counted from the fault at `at`.
    pub(super) fn start_fault(&self, at: Instant) {
        *lock(&self.fault) = Some(at);
    }
    /// Seconds from the fault (0 before it).
    pub(super) fn now_s(&self) -> f64 {
        lock(&self.fault).map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0)
    }
    /// `+1.23s` from the fault, or `(12.3s)` from the drill's start before it.
    pub(super) fn t(&self) -> String {
        match *lock(&self.fault) {
            Some(f) => format!("{:>+7.2}s", f.elapsed().as_secs_f64()),
            None => format!("({:>5.1}s)", self.start.elapsed().as_secs_f64()),
        }
    }
    pub(super) fn note(&self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("[drill {}] {what}", self.t());
    }
    /// A timeline event at `at` (from the fault).
    pub(super) fn event(&self, at: Duration, what: impl Into<String>) -> f64 {
        self.event_s(at.as_secs_f64(), what)
    }
    pub(super) fn event_s(&self, t: f64, what: impl Into<String>) -> f64 {
        let what = what.into();
        eprintln!("[drill {t:>+7.2}s] {what}");
        if let Some(live) = &self.control_plane {
            live.event(t, &what);
        }
        lock(&self.timeline).push(Event { t_s: t, what });
        t
    }
    /// A timeline event that is not printed (it was found afterwards, in the logs).
    pub(super) fn record(&self, t: f64, what: String) {
        lock(&self.timeline).push(Event { t_s: t, what });
    }
    /// The timeline so far, in time order.
    pub(super) fn timeline(&self) -> Vec<Event> {
        let mut timeline = lock(&self.timeline).clone();
        timeline.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
        timeline
    }
}

/// Sets `passed` and the verdict from what was measured.
pub fn judge(r: &mut Report, target_is_leader: bool) {
    let component = match r.component.as_str() {
        "consul" => Component::Consul,
        "node" => Component::Node,
        _ => Component::Swarm,
    };
    let failed = failures(r, component, target_is_leader);
    r.passed = failed.is_empty();
    r.verdict = if r.passed {
        passed_verdict(r, component, target_is_leader)
    } else {
        format!("FAILED within the {:.0} s bound: {}", r.bound_s, failed.join("; "))
    };
    if !r.unobserved.is_empty() {
        r.verdict.push_str(&format!(" (not observed: {} item(s), see `unobserved`)", r.unobserved.len()));
    }
}

/// What the drill needed and did not see, one phrase each.
fn failures(r: &Report, component: Component, target_is_leader: bool) -> Vec<String> {
    if component == Component::Node {
        return node_failures(r);
    }
    let want = component.rejoined_as();
    let mut failed = Vec::new();
    if r.detect_s.is_none() {
        failed.push(format!("the loss of {} was not detected", r.target));
    }
    if r.new_leader.is_empty() {
        failed.push("no surviving member named a leader".to_string());
    } else if target_is_leader && r.new_leader == r.old_leader {
        failed.push("the leader did not change".to_string());
    } else if !target_is_leader && r.new_leader != r.old_leader {
        failed
            .push(format!("the leader changed ({} → {}) though a follower was taken down", r.old_leader, r.new_leader));
    }
    if r.api_back_s.is_none() {
        failed.push(match component {
            Component::Swarm | Component::Node => "the leader's API did not answer again".to_string(),
            Component::Consul => "Consul's KV did not accept a write again".to_string(),
        });
    }
    if r.join_data_ok == Some(false) {
        failed.push("the swarm's join data could not be read from Consul".to_string());
    }
    if component == Component::Swarm && r.new_leader.is_empty() {
        // The tasks are asked of the new leader: without one they were not checked (said above).
    } else if r.tasks_after < HELLO_REPLICAS {
        failed.push(format!("{} of {HELLO_REPLICAS} hello tasks running", r.tasks_after));
    } else if !r.workload_ok && r.join_data_ok != Some(false) {
        failed.push("the workload was not seen whole again within the bound".to_string());
    }
    if r.restore_s.is_none() {
        failed.push(format!("{} could not be restored", r.target));
    }
    if r.rejoin_s.is_none() || r.rejoined_as != want {
        failed.push(format!(
            "{} is not back as a {want} (last seen: {})",
            r.target,
            if r.rejoined_as.is_empty() { "not listed" } else { &r.rejoined_as }
        ));
    }
    if let (Some(before), Some(after)) = (r.managers_before, r.managers_after)
        && after < before
    {
        failed.push(format!("{after} of {before} managers reachable at the end"));
    }
    if r.healthy_s.is_none() {
        failed.push("the control plane does not see every host connected with every role running".to_string());
    }
    failed
}

/// What a node drill needed and did not see: the worker marked down, its tasks elsewhere,
/// the worker ready again, the control plane healthy.
fn node_failures(r: &Report) -> Vec<String> {
    let mut failed = Vec::new();
    if r.detect_s.is_none() {
        failed.push(format!("the swarm never marked {} down", r.target));
    }
    if r.workload_s.is_none() {
        failed
            .push(format!("{} of {HELLO_REPLICAS} hello tasks running on the other workers at the end", r.tasks_after));
    }
    if r.restore_s.is_none() {
        failed.push(format!("{} could not be restored", r.target));
    }
    if r.rejoin_s.is_none() {
        failed.push(format!("{} is not ready again", r.target));
    }
    if r.healthy_s.is_none() {
        failed.push("the control plane does not see every host connected with every role running".to_string());
    }
    failed
}

/// The verdict of a drill that passed: who took over and how fast, or (a follower taken
/// down) that it came back and the leader stayed.
fn passed_verdict(r: &Report, component: Component, target_is_leader: bool) -> String {
    let want = component.rejoined_as();
    let what = match component {
        Component::Swarm | Component::Node => "the API answered",
        Component::Consul => "KV accepted a write",
    };
    if component == Component::Node {
        return format!(
            "PASSED: worker {} went down; the swarm marked it down at {:.2} s and ran its {} hello tasks on the other workers at {:.2} s; {} ready again {:.2} s after the restore",
            r.target,
            r.detect_s.unwrap_or_default(),
            r.tasks_after,
            r.workload_s.unwrap_or_default(),
            r.target,
            r.rejoin_s.unwrap_or_default()
        );
    }
    if target_is_leader && r.mode == "handover" {
        format!(
            "PASSED: {} handed its leadership over to {} ({:.2} s without a leader, named {:.2} s after the demotion); the API answered at {:.2} s; {} hello tasks kept running; {} promoted back and reachable {:.2} s after; {} managers",
            r.old_leader,
            r.new_leader,
            r.leaderless_s.unwrap_or_default(),
            r.elect_s.unwrap_or_default(),
            r.api_back_s.unwrap_or_default(),
            r.tasks_after,
            r.old_leader,
            r.rejoin_s.unwrap_or_default(),
            r.managers_after.unwrap_or_default(),
        )
    } else if target_is_leader {
        format!(
            "PASSED: {} took over from {} in {:.2} s; {what} at {:.2} s; {} hello tasks {}{}; {} rejoined as {want} {:.2} s after the restore",
            r.new_leader,
            r.old_leader,
            r.elect_s.unwrap_or_default(),
            r.api_back_s.unwrap_or_default(),
            r.tasks_after,
            if r.tasks_rescheduled { "running (rescheduled)" } else { "kept running" },
            if r.join_data_ok == Some(true) { ", the swarm's join data readable" } else { "" },
            r.old_leader,
            r.rejoin_s.unwrap_or_default()
        )
    } else {
        format!(
            "PASSED: follower {} went down and came back as {want} {:.2} s after the restore; {} stayed leader",
            r.target,
            r.rejoin_s.unwrap_or_default(),
            r.new_leader
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing(component: &str, rejoined_as: &str) -> Report {
        Report {
            component: component.into(),
            old_leader: "manager0".into(),
            target: "manager0".into(),
            new_leader: "manager1".into(),
            detect_s: Some(0.3),
            elect_s: Some(1.2),
            api_back_s: Some(1.2),
            workload_ok: true,
            tasks_after: 2,
            restore_s: Some(2.0),
            rejoin_s: Some(3.0),
            rejoined_as: rejoined_as.into(),
            healthy_s: Some(4.0),
            bound_s: 60.0,
            ..Default::default()
        }
    }

    #[test]
    fn the_verdict_needs_a_new_leader_the_workload_and_a_reachable_rejoin() {
        let mut r = passing("swarm", "reachable");
        judge(&mut r, true);
        assert!(r.passed, "{}", r.verdict);
        r.new_leader = "manager0".into();
        judge(&mut r, true);
        assert!(!r.passed && r.verdict.contains("did not change"), "{}", r.verdict);
        r.new_leader = "manager1".into();
        r.rejoined_as = "unreachable".into();
        judge(&mut r, true);
        assert!(!r.passed && r.verdict.contains("not back as a reachable"), "{}", r.verdict);
    }

    #[test]
    fn issue_19_a_node_drill_passes_when_the_tasks_moved_and_the_worker_came_back() {
        let mut r = Report {
            component: "node".into(),
            target: "node0".into(),
            detect_s: Some(6.1),
            workload_s: Some(7.4),
            tasks_after: 2,
            restore_s: Some(8.0),
            rejoin_s: Some(9.0),
            healthy_s: Some(10.0),
            bound_s: 60.0,
            ..Default::default()
        };
        judge(&mut r, false);
        assert!(r.passed && r.verdict.contains("on the other workers at 7.40 s"), "{}", r.verdict);
        r.workload_s = None;
        r.tasks_after = 1;
        judge(&mut r, false);
        assert!(!r.passed && r.verdict.contains("1 of 2 hello tasks running on the other workers"), "{}", r.verdict);
    }

    #[test]
    fn issue_19_a_handover_passes_only_with_every_manager_back() {
        let mut r = passing("swarm", "reachable");
        r.mode = "handover".into();
        r.leaderless_s = Some(0.4);
        r.managers_before = Some(3);
        r.managers_after = Some(3);
        judge(&mut r, true);
        assert!(
            r.passed && r.verdict.contains("handed its leadership over to manager1 (0.40 s without"),
            "{}",
            r.verdict
        );
        assert!(r.verdict.ends_with("3 managers"), "{}", r.verdict);
        r.managers_after = Some(2);
        judge(&mut r, true);
        assert!(!r.passed && r.verdict.contains("2 of 3 managers reachable at the end"), "{}", r.verdict);
    }

    #[test]
    fn issue_7_a_consul_drill_passes_on_a_voter_rejoin_and_readable_join_data() {
        let mut r = passing("consul", "voter");
        r.join_data_ok = Some(true);
        judge(&mut r, true);
        assert!(r.passed && r.verdict.contains("join data readable"), "{}", r.verdict);
        r.join_data_ok = Some(false);
        judge(&mut r, true);
        assert!(!r.passed && r.verdict.contains("join data could not be read"), "{}", r.verdict);
        let mut r = passing("consul", "non-voter");
        judge(&mut r, true);
        assert!(!r.passed && r.verdict.contains("not back as a voter (last seen: non-voter)"), "{}", r.verdict);
    }

    #[test]
    fn issue_7_what_was_not_observed_is_named_in_the_verdict() {
        let mut r = passing("swarm", "reachable");
        r.unobserved.push("the control plane did not answer from +3.00 s to +9.00 s".into());
        judge(&mut r, true);
        assert!(r.passed, "a gap in the control plane's view does not fail a drill whose own probes saw it all");
        assert!(r.verdict.contains("not observed: 1 item"), "{}", r.verdict);
    }
}
