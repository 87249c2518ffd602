//! What the drill follows while it runs, besides its own probes: the members' logs
//! ([`LogFollower`]: every manager's Engine journal, or every Consul server's container,
//! streamed live through the control plane and resumed per source after a cut), and the
//! control plane's status ([`CpWatch`]: when it shows the target down, when it does not
//! answer). Each writes what it saw into the report at the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1::{self, admin_client::AdminClient};
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::Channel;

use super::report::{Gap, LogGap, Report, Say};
use super::{CP_POLL, Component, Drill, FailoverError, lock};

/// Why the control plane's status shows `target` down for `component`, if it does.
pub(super) fn shown_down(st: &v1::StatusResponse, target: &str, component: Component) -> Option<&'static str> {
    let h = st.hosts.iter().find(|h| h.name == target)?;
    if !h.connected {
        return Some("no session");
    }
    if h.unreachable {
        return Some("heartbeats missed");
    }
    if h.health.as_ref().is_some_and(|s| !s.engine_ok) {
        return Some("its Engine down");
    }
    if component == Component::Consul
        && h.role_status.iter().any(|s| s.role == v1::Role::Consul as i32 && s.state != v1::RoleState::Running as i32)
    {
        return Some("its consul role not running");
    }
    None
}

/// Election lines in a member's log: swarmkit's Raft in the Engine's journal, or Consul's.
pub(super) fn is_election_line(component: Component, text: &str) -> bool {
    let patterns: &[&str] = match component {
        Component::Swarm | Component::Node => {
            &["became leader", "elected leader", "lost leader", "became candidate", "became follower"]
        }
        Component::Consul => &[
            "New leader elected",
            "cluster leadership acquired",
            "cluster leadership lost",
            "entering candidate state",
            "election won",
            "entering leader state",
            "heartbeat timeout reached",
        ],
    };
    patterns.iter().any(|p| text.contains(p))
}

/// The line a new leader logs when it has won (its time is the component's own election
/// time).
fn is_won_line(component: Component, text: &str) -> bool {
    match component {
        Component::Swarm | Component::Node => text.contains("became leader"),
        Component::Consul => text.contains("cluster leadership acquired"),
    }
}

pub(super) fn now_unix_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0)
}

/// What the live log follower kept.
#[derive(Default)]
pub(super) struct Kept {
    lines: usize,
    election: Vec<String>,
    errors: Vec<String>,
    /// Lines saying a member won the election: host, the line's time (ns since the epoch).
    won: Vec<(String, i64)>,
    /// The last line's time per (host, source): the resume point, and the filter that
    /// drops lines a resumed stream sends again.
    last: HashMap<(String, String), i64>,
    /// Cuts of a host's stream (the control plane restarted), and when it was resumed.
    cuts: Vec<(String, Gap)>,
}

/// The members' logs, followed live through the control plane — one stream per host, so
/// each resumes on its own after a cut, as soon as its host has a session again.
pub(super) struct LogFollower {
    kept: Arc<Mutex<Kept>>,
    tasks: Vec<AbortOnDropHandle<()>>,
}

impl LogFollower {
    /// Opens every host's stream (an error here fails the drill: nothing was done yet), then
    /// follows them in the background, resuming a cut one from its sources' last lines.
    pub(super) async fn start(d: &Drill, hosts: Vec<String>, since_unix_ns: i64) -> Result<Self, FailoverError> {
        let kept: Arc<Mutex<Kept>> = Arc::default();
        let mut tasks = Vec::new();
        for host in hosts {
            let mut stream = HostStream { host, admin: d.admin.clone(), component: d.opts.component, since_unix_ns };
            let first = stream.open(since_unix_ns).await?;
            let follow = stream.follow(first, kept.clone(), d.say.clone(), d.opts.colour);
            tasks.push(AbortOnDropHandle::new(tokio::spawn(follow)));
        }
        Ok(Self { kept, tasks })
    }

    pub(super) async fn stop(self) -> Kept {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *lock(&self.kept))
    }
}

/// One host's log stream, as the drill asks the control plane for it.
struct HostStream {
    host: String,
    admin: AdminClient<Channel>,
    component: Component,
    /// Where the stream starts (ns since the epoch): the drill's start.
    since_unix_ns: i64,
}

impl HostStream {
    /// The host's stream from `since_unix_ns` on: its Engine journal (Swarm) or its Consul
    /// container (Consul).
    async fn open(&mut self, since_unix_ns: i64) -> Result<tonic::Streaming<v1::LogLineOut>, tonic::Status> {
        let request = v1::FollowLogsRequest {
            hosts: vec![self.host.clone()],
            role: match self.component {
                Component::Swarm | Component::Node => 0,
                Component::Consul => v1::Role::Consul as i32,
            },
            engine: self.component != Component::Consul,
            follow: true,
            since_unix_ns,
            ..Default::default()
        };
        Ok(self.admin.follow_logs(request).await?.into_inner())
    }

    /// Prints and keeps every line of `stream` until every source of the host ends; a cut is
    /// recorded and the stream resumed.
    async fn follow(
        mut self,
        mut stream: tonic::Streaming<v1::LogLineOut>,
        k: Arc<Mutex<Kept>>,
        say: Arc<Say>,
        colour: bool,
    ) {
        let host = self.host.clone();
        loop {
            let error = loop {
                match stream.message().await {
                    Ok(Some(l)) => take_line(&k, &say, colour, self.component, l),
                    // Every source of this host ended.
                    Ok(None) => return,
                    Err(e) => break e.message().to_string(),
                }
            };
            let from_s = say.now_s();
            say.note(format!("{host}'s log stream cut ({error}); resuming it from its last line"));
            lock(&k).cuts.push((host.clone(), Gap { from_s, to_s: None, error }));
            stream = self.resume(&k).await;
            let at = say.now_s();
            if let Some((_, cut)) = lock(&k).cuts.iter_mut().rev().find(|(h, c)| *h == host && c.to_s.is_none()) {
                cut.to_s = Some(at);
            }
            say.note(format!("{host}'s log stream resumed"));
        }
    }

    /// The stream again, from the earliest of the host's sources' last lines, once the
    /// control plane is back and the host has a session again. Not bounded: the drill stops
    /// the follower when it ends.
    async fn resume(&mut self, k: &Mutex<Kept>) -> tonic::Streaming<v1::LogLineOut> {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let since = lock(k)
                .last
                .iter()
                .filter(|((h, _), _)| *h == self.host)
                .map(|(_, ns)| *ns)
                .min()
                .unwrap_or(self.since_unix_ns);
            if let Ok(s) = self.open(since).await {
                return s;
            }
        }
    }
}

fn take_line(k: &Mutex<Kept>, say: &Say, colour: bool, component: Component, l: v1::LogLineOut) {
    let mut k = lock(k);
    if !l.error.is_empty() {
        eprintln!("{}: {}", crate::ui::log_prefix(&l.host, &l.source, colour), l.error);
        k.errors.push(format!("{}/{}: {}", l.host, l.source, l.error));
        return;
    }
    if l.eof {
        return;
    }
    let key = (l.host.clone(), l.source.clone());
    if k.last.get(&key).is_some_and(|last| l.unix_ns <= *last) {
        return;
    }
    k.last.insert(key, l.unix_ns);
    k.lines += 1;
    eprintln!("[drill {}] {} | {}", say.t(), crate::ui::log_prefix(&l.host, &l.source, colour), l.text.trim_end());
    if is_won_line(component, &l.text) {
        k.won.push((l.host.clone(), l.unix_ns));
    }
    if is_election_line(component, &l.text) {
        k.election.push(format!("{}/{} | {}", l.host, l.source, l.text.trim_end()));
    }
}

impl Kept {
    /// The lines streamed, the election lines, the sources that could not be streamed, and
    /// the component's own election time from the new leader's log (`swarm_elected_s` or
    /// `consul_elected_s`, and `report_lag_s`) — same clock on the lab; on separate machines
    /// as good as their clock sync.
    pub(super) fn record_election(
        &mut self,
        r: &mut Report,
        say: &Say,
        component: Component,
        target: &str,
        fault_unix_ns: i64,
        target_is_leader: bool,
    ) {
        r.log_lines = self.lines;
        r.election_lines = std::mem::take(&mut self.election);
        r.log_errors = std::mem::take(&mut self.errors);
        if let Some((host, ns)) =
            self.won.iter().filter(|(h, ns)| *h != target && *ns > fault_unix_ns).min_by_key(|(_, ns)| *ns)
        {
            let t = (ns - fault_unix_ns) as f64 / 1e9;
            match component {
                Component::Swarm | Component::Node => r.swarm_elected_s = Some(t),
                Component::Consul => r.consul_elected_s = Some(t),
            }
            r.report_lag_s = r.elect_s.map(|e| e - t);
            let line = match component {
                Component::Swarm | Component::Node => "Engine logged \"became leader\"",
                Component::Consul => "Consul logged \"cluster leadership acquired\"",
            };
            say.record(t, format!("{component:?}: {host}'s {line}").to_lowercase());
        } else if target_is_leader && !r.new_leader.is_empty() {
            r.unobserved.push(format!(
                "the new leader's own election line was not among the streamed logs: the {} election's own time and report_lag_s are unknown",
                format!("{component:?}").to_lowercase()
            ));
        }
    }

    /// The cuts of the hosts' streams (`log_gaps`); one never resumed is named in
    /// `unobserved`.
    pub(super) fn record_cuts(self, r: &mut Report, say: &Say) {
        for (h, g) in &self.cuts {
            match g.to_s {
                Some(to) => say.note(format!("{h}'s log stream was cut at {:+.2} s and resumed at {to:+.2} s from its last line", g.from_s)),
                None => r.unobserved.push(format!(
                    "{h}'s log lines after {:+.2} s: its stream was cut ({}) and could not be resumed before the drill ended",
                    g.from_s, g.error
                )),
            }
        }
        r.log_gaps = self
            .cuts
            .into_iter()
            .map(|(h, g)| LogGap { host: h, from_s: g.from_s, to_s: g.to_s, error: g.error })
            .collect();
    }
}

/// What the control plane's status showed during the drill.
#[derive(Default)]
pub(super) struct CpSeen {
    gaps: Vec<Gap>,
    /// When the status first showed the target down, and why.
    detect: Option<(f64, &'static str)>,
    /// The target first shown down only after a gap: the time would measure the control
    /// plane's restart (and the agent's reconnect), not its detection, so it is not kept.
    ambiguous: bool,
}

/// Reads the control plane's status every [`CP_POLL`] from the fault on: when it shows the
/// target down, and when it does not answer.
pub(super) struct CpWatch {
    seen: Arc<Mutex<CpSeen>>,
    task: AbortOnDropHandle<()>,
}

impl CpWatch {
    pub(super) fn start(d: &Drill, target: String) -> Self {
        let seen: Arc<Mutex<CpSeen>> = Arc::default();
        let (mut admin, say, component, s) = (d.admin.clone(), d.say.clone(), d.opts.component, seen.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CP_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let res =
                    tokio::time::timeout(Duration::from_secs(2), admin.status(v1::StatusRequest::default())).await;
                let at = say.now_s();
                match res {
                    Ok(Ok(st)) => cp_answered(&s, &say, at, &st.into_inner(), &target, component),
                    Ok(Err(e)) => cp_down(&s, &say, at, e.message()),
                    Err(_) => cp_down(&s, &say, at, "no answer within 2 s"),
                }
            }
        });
        Self { seen, task: AbortOnDropHandle::new(task) }
    }

    pub(super) async fn stop(self) -> CpSeen {
        self.task.abort();
        let _ = self.task.await;
        std::mem::take(&mut *lock(&self.seen))
    }
}

/// The control plane answered at `at` with `st`: a gap ends, and the target shown down is
/// the control plane's detection (unless a gap came first).
fn cp_answered(s: &Mutex<CpSeen>, say: &Say, at: f64, st: &v1::StatusResponse, target: &str, component: Component) {
    let mut seen = lock(s);
    if let Some(g) = seen.gaps.last_mut().filter(|g| g.to_s.is_none()) {
        g.to_s = Some(at);
        let from = g.from_s;
        drop(seen);
        say.event_s(at, format!("control plane: answers again ({:.1} s without it)", at - from));
        seen = lock(s);
    }
    if seen.detect.is_none()
        && let Some(why) = shown_down(st, target, component)
    {
        if !seen.gaps.is_empty() {
            seen.ambiguous = true;
        } else {
            seen.detect = Some((at, why));
            drop(seen);
            say.event_s(at, format!("control plane: status shows {target} with {why}"));
        }
    }
}

fn cp_down(s: &Mutex<CpSeen>, say: &Say, at: f64, error: &str) {
    let mut seen = lock(s);
    if seen.gaps.last().is_some_and(|g| g.to_s.is_none()) {
        return;
    }
    seen.gaps.push(Gap { from_s: at, to_s: None, error: error.to_string() });
    drop(seen);
    say.event_s(at, format!("control plane: no answer ({error}); the drill goes on with the members' own views"));
}

impl CpSeen {
    /// `control_plane_detect_s`, `control_plane_gaps`, and in `unobserved` what the control
    /// plane's gaps hid.
    /// A `planned` drill never takes the target down: nothing for the control plane to see.
    pub(super) fn record(self, r: &mut Report, target: &str, planned: bool) {
        r.control_plane_detect_s = self.detect.map(|(t, _)| t);
        for g in &self.gaps {
            let until = g.to_s.map(|t| format!("{t:+.2} s")).unwrap_or_else(|| "the end of the drill".into());
            r.unobserved.push(format!(
                "the control plane did not answer from {:+.2} s to {until} ({}): its view of the hosts was not observed then, and what needs it (the engine-mode restore, the healthy check) waited for it",
                g.from_s, g.error
            ));
        }
        if r.control_plane_detect_s.is_none() && !planned {
            r.unobserved.push(if self.ambiguous || !self.gaps.is_empty() {
                format!("control_plane_detect_s: not observed — the control plane stopped answering before its status showed {target} down, and after its restart the time would measure the restart, not the detection")
            } else {
                format!("control_plane_detect_s: the control plane's status never showed {target} down within the bound")
            });
        }
        r.control_plane_gaps = self.gaps;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::failover::precheck::tests::cluster;

    #[test]
    fn the_control_plane_shows_a_target_down_by_component() {
        let mut st = cluster(3);
        assert_eq!(shown_down(&st, "manager0", Component::Swarm), None);
        st.hosts[0].role_status[0].state = v1::RoleState::Degraded as i32;
        assert_eq!(shown_down(&st, "manager0", Component::Swarm), None, "a held Consul is no Swarm fault");
        assert_eq!(shown_down(&st, "manager0", Component::Consul), Some("its consul role not running"));
        st.hosts[1].health = Some(v1::HealthSample { engine_ok: false, ..Default::default() });
        assert_eq!(shown_down(&st, "manager1", Component::Swarm), Some("its Engine down"));
        st.hosts[2].connected = false;
        assert_eq!(shown_down(&st, "manager2", Component::Consul), Some("no session"));
    }

    #[test]
    fn election_lines_are_recognised() {
        assert!(is_election_line(
            Component::Swarm,
            "raft.node: 4eca261bb047ef85 elected leader 4fe1f1eb79046f00 at term 2"
        ));
        assert!(is_election_line(Component::Swarm, "4fe1f1eb79046f00 became leader at term 3"));
        assert!(!is_election_line(Component::Swarm, "worker d35wanhwtb4gdfsmyikqtf47l was successfully registered"));
        let consul = "2026-11-02T10:00:01.123Z [INFO]  agent.server: New leader elected: payload=manager1";
        assert!(is_election_line(Component::Consul, consul) && !is_election_line(Component::Swarm, consul));
        assert!(is_won_line(Component::Consul, "[INFO]  agent.server: cluster leadership acquired"));
        assert!(!is_won_line(Component::Consul, "[INFO]  agent.server: New leader elected: payload=manager1"));
    }
}
