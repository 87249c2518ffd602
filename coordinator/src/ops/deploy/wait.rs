//! Steps 5 and 6's waits: the control plane's status polled (bounded) until every planned
//! host is enrolled and connected, or runs every role it was assigned. Each host's state is
//! printed when it changes; a time-out names the hosts still pending and why. Every
//! [`PROVIDER_EVERY`] the provider is asked about the pending hosts: one that is down and
//! will not come up by itself (a lab container that never started, exited or died) ends the
//! wait at once with its state, exit code and last lines ([`DeployError::HostDown`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use flotilla_proto::v1;

use super::{DeployError, ENROLL_TIMEOUT, PHASE_TIMEOUT, Run};
use crate::ops::plan::PlannedHost;
use crate::poll::{Attempt, PollError, poll_until};

/// How often the status is asked.
const EVERY: Duration = Duration::from_millis(250);
/// How often the provider is asked whether a pending host is down.
const PROVIDER_EVERY: Duration = Duration::from_secs(2);

/// Every planned host's agent enrolled, connected and reachable.
pub async fn every_agent_connected(run: &Run<'_>) -> Result<(), DeployError> {
    agents_connected(run, run.planned, "every agent to enroll and connect").await
}

/// The agents of `hosts` enrolled, connected and reachable.
pub async fn agents_connected(run: &Run<'_>, hosts: &[PlannedHost], what: &str) -> Result<(), DeployError> {
    wait_hosts(run, hosts, what, ENROLL_TIMEOUT, |h| h.connected && !h.unreachable).await
}

/// Every planned host runs every role of its plan.
pub async fn every_role_running(run: &Run<'_>) -> Result<(), DeployError> {
    roles_running(run, run.planned, "every role running (Consul, then the swarm)").await
}

/// Every host of `hosts` runs every role of its plan.
pub async fn roles_running(run: &Run<'_>, hosts: &[PlannedHost], what: &str) -> Result<(), DeployError> {
    roles_up(run, hosts, what, false).await
}

/// Every host of `hosts` runs every role of its plan, a Consul server counting once it runs
/// even while it reports fewer servers than expected (`Degraded`): while other servers are
/// still being replaced (`recover`), no server can see them all yet.
pub async fn roles_running_short_of_servers(
    run: &Run<'_>,
    hosts: &[PlannedHost],
    what: &str,
) -> Result<(), DeployError> {
    roles_up(run, hosts, what, true).await
}

async fn roles_up(run: &Run<'_>, hosts: &[PlannedHost], what: &str, degraded_consul: bool) -> Result<(), DeployError> {
    let by_name: HashMap<String, Vec<i32>> =
        hosts.iter().map(|h| (h.name.clone(), h.roles.iter().map(|r| r.proto() as i32).collect())).collect();
    let up = |s: &v1::RoleStatus| {
        s.state == v1::RoleState::Running as i32
            || (degraded_consul && s.role == v1::Role::Consul as i32 && s.state == v1::RoleState::Degraded as i32)
    };
    wait_hosts(run, hosts, what, PHASE_TIMEOUT, |h| {
        by_name
            .get(&h.name)
            .is_some_and(|want| want.iter().all(|w| h.role_status.iter().any(|s| s.role == *w && up(s))))
    })
    .await
}

/// Polls status until `ok` holds for every host of `hosts`.
async fn wait_hosts(
    run: &Run<'_>,
    hosts: &[PlannedHost],
    what: &str,
    timeout: Duration,
    ok: impl Fn(&v1::HostStatus) -> bool,
) -> Result<(), DeployError> {
    let notes: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
    let asked = RefCell::new(Instant::now());
    run.p.step("wait", what);
    let waited = poll_until(what, Instant::now() + timeout, EVERY, || {
        let (notes, ok, asked) = (&notes, &ok, &asked);
        let mut admin = run.admin.clone();
        async move {
            let st = admin.status(v1::StatusRequest::default()).await?.into_inner();
            let mut pending = Vec::new();
            let mut pending_names = Vec::new();
            for h in hosts {
                let n = &h.name;
                let note = match st.hosts.iter().find(|s| &s.name == n) {
                    Some(s) if ok(s) => "ok".to_string(),
                    other => host_note(other),
                };
                if notes.borrow().get(n) != Some(&note) && !note.is_empty() {
                    run.p.host(n, if note == "ok" { "ready" } else { &note });
                    notes.borrow_mut().insert(n.clone(), note.clone());
                }
                if note != "ok" {
                    pending.push(format!("{n} ({note})"));
                    pending_names.push(n.clone());
                }
            }
            if !pending_names.is_empty() && asked.borrow().elapsed() >= PROVIDER_EVERY {
                *asked.borrow_mut() = Instant::now();
                let down = run.prepared.provider.not_running(&pending_names).await?;
                if !down.is_empty() {
                    return Err(DeployError::HostDown { what: what.to_string(), down });
                }
            }
            Ok::<_, DeployError>(if pending.is_empty() {
                Attempt::Done(())
            } else {
                Attempt::NotYet(pending.join(", "))
            })
        }
    })
    .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, .. } => {
            DeployError::Timeout { what: what.to_string(), after: timeout, pending: last }
        }
    })
}

/// Where a host that is not ready yet is: not enrolled, no session, or its roles' states.
fn host_note(h: Option<&v1::HostStatus>) -> String {
    match h {
        None => "booting (not enrolled yet)".to_string(),
        Some(h) if !h.connected => "enrolled; session not up".to_string(),
        Some(h) => h
            .role_status
            .iter()
            .map(|s| {
                let state = v1::RoleState::name_of(s.state);
                let role = v1::Role::try_from(s.role).map(v1::Role::name).unwrap_or("?");
                format!("{role}: {state} {}", s.message)
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}
