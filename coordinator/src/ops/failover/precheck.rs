//! Is the cluster fit for a drill? On the control plane's status ([`check`], pure): enough
//! members of the drilled component (else the quorum table, unless `--force`), the target
//! one of them, every host connected and every role running; and in Consul's own view,
//! every server a healthy voter ([`wait_until_fit`], which gives a cluster still settling —
//! one just drilled — a while).

use std::time::{Duration, Instant};

use flotilla_proto::v1;

use super::{Component, Drill, FailoverError, Member, Options, SETTLE_TIMEOUT, consul};
use crate::ops::cluster_config::QUORUM_TABLE;
use crate::poll::{Attempt, PollError, poll_until};

/// Waits (up to [`SETTLE_TIMEOUT`], looking every 2 s) for the cluster to be fit for the
/// drill ([`fit`]); a refusal, or a control plane that does not answer, ends the wait at
/// once. Returns the drilled members and the managers.
pub(super) async fn wait_until_fit(d: &Drill) -> Result<(Vec<Member>, Vec<Member>), FailoverError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let fit = poll_until("a cluster fit for the drill", deadline, Duration::from_secs(2), || {
        let mut admin = d.admin.clone();
        async move {
            let st = admin.status(v1::StatusRequest::default()).await.map_err(FailoverError::from)?.into_inner();
            match fit(&st, &d.opts, &d.consul_token).await {
                Ok(m) => Ok(Attempt::Done((m, members(&st, v1::Role::Manager)))),
                Err(FailoverError::Unhealthy { problems, .. }) => {
                    // Only while the wait goes on: the time-out's error says it last.
                    if Instant::now() < deadline {
                        d.say.note(format!("waiting for a healthy cluster: {problems}"));
                    }
                    Ok(Attempt::NotYet(problems))
                }
                Err(e) => Err(e),
            }
        }
    })
    .await;
    fit.map_err(|e| match e {
        PollError::TimedOut { last, .. } => FailoverError::Unhealthy { waited: SETTLE_TIMEOUT, problems: last },
        PollError::Failed(e) => e,
    })
}

/// One look: [`check`] on `st`, then (unless `--force`) Consul's own view — a server that
/// just came back (from a drill before this one) may not vote yet, and then the cluster
/// cannot lose another.
async fn fit(st: &v1::StatusResponse, opts: &Options, consul_token: &str) -> Result<Vec<Member>, FailoverError> {
    if opts.mode.planned() && opts.component != Component::Swarm {
        return Err(FailoverError::Refused(
            "--mode handover drills the swarm's managers only (Consul 1.8 has no leadership transfer)".into(),
        ));
    }
    let members = check(st, opts.component, opts.target.as_deref(), opts.force)?;
    if opts.mode == super::Mode::Terminate
        && let Some(refused) = super::replaced::refusal(st)
    {
        return Err(refused);
    }
    let servers = self::members(st, v1::Role::Consul);
    if opts.force || servers.is_empty() {
        return Ok(members);
    }
    let problems = consul::fault_tolerance_problems(&servers, consul_token).await;
    if problems.is_empty() {
        Ok(members)
    } else {
        Err(FailoverError::Unhealthy { waited: Duration::ZERO, problems: problems.join("; ") })
    }
}

/// The hosts of `st` assigned `role`, with their first private address.
pub(super) fn members(st: &v1::StatusResponse, role: v1::Role) -> Vec<Member> {
    st.hosts
        .iter()
        .filter(|h| !h.revoked && h.roles.contains(&(role as i32)))
        .map(|h| Member {
            name: h.name.clone(),
            ip: h.facts.as_ref().and_then(|f| f.private_addresses.first().cloned()).unwrap_or_default(),
        })
        .collect()
}

/// The members of `component` in `st` — checked: at least 3 of them (unless `force`;
/// never fewer than 2), `target` one of them, at least one manager, and every host
/// connected and running its roles. Pure: the CLI's pre-check on a status snapshot.
pub(super) fn check(
    st: &v1::StatusResponse,
    component: Component,
    target: Option<&str>,
    force: bool,
) -> Result<Vec<Member>, FailoverError> {
    let members = members(st, component.role());
    let n = members.len();
    let noun = component.members_noun();
    // Same numbers for Consul's Raft as for Swarm's.
    let table = match component {
        Component::Swarm | Component::Node => QUORUM_TABLE.to_string(),
        Component::Consul => QUORUM_TABLE.replacen("managers", "servers ", 1),
    };
    let one = if n == 1 { noun.trim_end_matches('s') } else { noun };
    if component == Component::Node && n < 2 {
        return Err(FailoverError::Refused(format!(
            "cluster '{}' has {n} {one}: there is no other one for its tasks to move to",
            st.cluster
        )));
    }
    if n < 2 {
        return Err(FailoverError::Refused(format!(
            "cluster '{}' has {n} {one}: there is no other one to take over, so there is no failover to test:\n{table}",
            st.cluster
        )));
    }
    if n < 3 && !force && component != Component::Node {
        return Err(FailoverError::Refused(format!(
            "cluster '{}' has {n} {noun}: losing one loses the Raft quorum, so the cluster stops instead of failing over \
             (pass --force to watch that happen; deploy 3 or 5 managers to drill a real failover):\n{table}",
            st.cluster
        )));
    }
    if let Some(t) = target
        && !members.iter().any(|m| m.name == t)
    {
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let what = match component {
            Component::Swarm => "a manager",
            Component::Node => "a worker",
            Component::Consul => "a Consul server",
        };
        return Err(FailoverError::Refused(format!(
            "--target '{t}' is not {what} of cluster '{}' ({noun}: {})",
            st.cluster,
            names.join(", ")
        )));
    }
    let problems = health_problems(st);
    if !problems.is_empty() {
        return Err(FailoverError::Unhealthy { waited: Duration::ZERO, problems: problems.join("; ") });
    }
    let managers = self::members(st, v1::Role::Manager);
    if managers.is_empty() {
        return Err(FailoverError::Refused(format!(
            "cluster '{}' has no manager to run the hello workload on",
            st.cluster
        )));
    }
    if let Some(m) = members.iter().chain(&managers).find(|m| m.ip.is_empty()) {
        return Err(FailoverError::Unhealthy {
            waited: Duration::ZERO,
            problems: format!("{} has no known address", m.name),
        });
    }
    Ok(members)
}

/// What keeps `st` from being a healthy cluster: hosts without a session or unreachable,
/// assigned roles not running.
pub(super) fn health_problems(st: &v1::StatusResponse) -> Vec<String> {
    let mut out = Vec::new();
    for h in &st.hosts {
        if h.revoked {
            continue;
        }
        if !h.connected {
            out.push(format!("{} has no session", h.name));
            continue;
        }
        if h.unreachable {
            out.push(format!("{} is unreachable (heartbeats missed)", h.name));
            continue;
        }
        for r in &h.roles {
            let status = h.role_status.iter().find(|s| s.role == *r);
            if status.is_none_or(|s| s.state != v1::RoleState::Running as i32) {
                let role = v1::Role::try_from(*r).map(v1::Role::name).unwrap_or("?");
                let msg = status.map(|s| s.message.clone()).unwrap_or_else(|| "no status yet".into());
                out.push(format!("{}'s {role} role is not running ({msg})", h.name));
            }
        }
    }
    if st.hosts.is_empty() {
        out.push("the cluster has no hosts".into());
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn host(name: &str, roles: &[v1::Role], ip: &str) -> v1::HostStatus {
        v1::HostStatus {
            name: name.into(),
            roles: roles.iter().map(|r| *r as i32).collect(),
            connected: true,
            facts: Some(v1::HostFacts { private_addresses: vec![ip.into()], ..Default::default() }),
            role_status: roles
                .iter()
                .map(|r| v1::RoleStatus { role: *r as i32, state: v1::RoleState::Running as i32, ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    /// `managers` managers (Consul servers too) and one worker, all healthy.
    pub(crate) fn cluster(managers: usize) -> v1::StatusResponse {
        let mut hosts: Vec<_> = (0..managers)
            .map(|i| {
                host(&format!("manager{i}"), &[v1::Role::Consul, v1::Role::Manager], &format!("10.0.0.{}", 10 + i))
            })
            .collect();
        hosts.push(host("node0", &[v1::Role::Node], "10.0.0.20"));
        v1::StatusResponse { cluster: "c".into(), hosts, ..Default::default() }
    }

    #[test]
    fn issue_7_two_managers_are_refused_with_the_quorum_table_unless_forced() {
        let e = check(&cluster(2), Component::Swarm, None, false).expect_err("2 managers refused").to_string();
        assert!(e.contains("2 managers") && e.contains("quorum") && e.contains("tolerates the loss of"), "{e}");
        assert!(e.contains("--force"), "{e}");
        assert_eq!(check(&cluster(2), Component::Swarm, None, true).expect("forced").len(), 2);
        let e = check(&cluster(1), Component::Swarm, None, true)
            .expect_err("1 manager: nothing to fail over to")
            .to_string();
        assert!(e.contains("1 manager:") && e.contains("no other one"), "{e}");
        assert_eq!(check(&cluster(3), Component::Swarm, None, false).expect("3 managers").len(), 3);
    }

    #[test]
    fn issue_7_two_consul_servers_are_refused_with_the_quorum_table_unless_forced() {
        let e = check(&cluster(2), Component::Consul, None, false).expect_err("2 servers refused").to_string();
        assert!(e.contains("2 Consul servers") && e.contains("quorum") && e.contains("servers   quorum"), "{e}");
        assert_eq!(check(&cluster(3), Component::Consul, None, false).expect("3 servers").len(), 3);
        let e =
            check(&cluster(3), Component::Consul, Some("node0"), false).expect_err("node0 runs no Consul").to_string();
        assert!(e.contains("'node0' is not a Consul server") && e.contains("manager0, manager1, manager2"), "{e}");
    }

    #[test]
    fn issue_7_a_target_must_be_a_manager_and_the_cluster_healthy() {
        let e =
            check(&cluster(3), Component::Swarm, Some("node0"), false).expect_err("node0 is no manager").to_string();
        assert!(e.contains("'node0' is not a manager") && e.contains("manager0, manager1, manager2"), "{e}");
        check(&cluster(3), Component::Swarm, Some("manager2"), false).expect("a manager target");

        let mut st = cluster(3);
        st.hosts[1].connected = false;
        st.hosts[3].role_status[0].state = v1::RoleState::Failed as i32;
        st.hosts[3].role_status[0].message = "Engine does not answer".into();
        match check(&st, Component::Swarm, None, false) {
            Err(FailoverError::Unhealthy { problems, .. }) => {
                assert!(problems.contains("manager1 has no session"), "{problems}");
                assert!(problems.contains("node0's node role is not running (Engine does not answer)"), "{problems}");
            }
            other => panic!("want Unhealthy, got {other:?}"),
        }
    }
}
