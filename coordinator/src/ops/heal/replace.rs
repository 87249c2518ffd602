//! Step 4 of a heal: one host at a time — its remains removed ([`remove_remains`]), a
//! replacement launched unless one exists ([`launch_if_missing`]), enrolled, assigned and
//! waited for until the cluster counts it again ([`rejoin`]) — re-assessing between hosts,
//! so a host lost meanwhile, or a quorum lost meanwhile, is seen before the next step.

use std::time::{Duration, Instant};

use flotilla_proto::v1::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use super::{Heal, HealError, HealOptions, HostAssessment, Replaced, Verdict, assess_now, membership};
use crate::control_plane::settings::StatePaths;
use crate::ops::cluster_config::ClusterConfig;
use crate::ops::deploy::{self, Run, assign, launch, verify_and_smoke, wait};
use crate::ops::plan::{PlannedHost, RoleKind};
use crate::ops::verify;
use crate::poll::{Attempt, PollError, poll_until};
use crate::providers::{HostState, LaunchSpec};
use crate::ui::Progress;

/// How long a replacement gets, once its roles run, until the swarm and Consul count it.
const FULL_STRENGTH_TIMEOUT: Duration = Duration::from_secs(180);

/// Replaces every lost (and completes every unfinished) host, one at a time; then verifies
/// the cluster (`None` when nothing was replaced).
pub async fn every_lost(
    opts: &HealOptions,
    config: &ClusterConfig,
    planned: &[PlannedHost],
    admin: &mut AdminClient<Channel>,
    p: &Progress,
) -> Result<(Vec<Replaced>, Option<String>), HealError> {
    let state_dir = opts.state_root.join(&opts.cluster);
    let prepared = deploy::prepare_provider(config, &state_dir, opts.quiet, p).await?;
    let run = Run { config, planned, prepared: &prepared, admin: admin.clone(), state_dir: &state_dir, p };
    let docker_dir = deploy::control_plane::ensure_docker_certs(&run).await?;
    let ca_path = StatePaths::new(&state_dir).ca_pem();
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| HealError::State { path: ca_path, source })?;
    let h = Heal { run, automatic: opts.automatic, docker_dir, started: Instant::now() };
    let mut done = Vec::new();
    loop {
        let a = assess_now(admin, &prepared.provider, planned, opts.recovering.then_some(0)).await?;
        if let Some(why) = a.quorum_refusal().filter(|_| !opts.recovering) {
            return Err(HealError::Quorum(why));
        }
        let Some(next) = a.next().cloned() else { break };
        if done.iter().any(|r: &Replaced| r.host == next.name) {
            return Err(HealError::NotFull { host: next.name.clone(), problem: next.line() });
        }
        // Consul servers still to come after this one (several lost at once: `recover`).
        let missing: Vec<String> = a
            .to_act_on()
            .iter()
            .filter(|x| x.name != next.name)
            .filter(|x| planned.iter().any(|p| p.name == x.name && p.has(RoleKind::Consul)))
            .map(|x| x.name.clone())
            .collect();
        done.push(replace(&h, &next, &ca_pem, &missing).await?);
    }
    let verified = if done.is_empty() { None } else { Some(verify_all(&h).await?) };
    Ok((done, verified))
}

/// Replaces (or completes) one host; `missing`: the Consul servers still lost besides it.
async fn replace(
    h: &Heal<'_>,
    target: &HostAssessment,
    ca_pem: &str,
    missing: &[String],
) -> Result<Replaced, HealError> {
    let planned = h
        .run
        .planned
        .iter()
        .find(|p| p.name == target.name)
        .ok_or_else(|| HealError::NotFull { host: target.name.clone(), problem: "not in the plan".into() })?;
    let mut r = Replaced { host: target.name.clone(), ..Default::default() };
    h.say(&target.name, format!("replacing: {}", target.line())).await;
    if let Verdict::Lost { .. } = target.verdict {
        remove_remains(h, planned).await?;
    }
    r.removed_s = h.at();
    r.instance_id = launch_if_missing(h, planned, ca_pem, None).await?;
    r.launched_s = h.at();
    rejoin(h, planned, &mut r, missing).await?;
    r.full_strength_s = h.at();
    let msg = format!(
        "replaced by {} in {:.0} s: back in the swarm and Consul",
        r.instance_id,
        r.full_strength_s - r.removed_s
    );
    h.say(&target.name, &msg).await;
    let progress = v1::HealProgress {
        host: target.name.clone(),
        message: msg,
        replaced: true,
        automatic: h.automatic,
        ..Default::default()
    };
    let _ = h.run.admin.clone().report_heal(progress).await;
    Ok(r)
}

/// The addresses of the planned hosts with `role`, but `except`.
async fn addresses_of(h: &Heal<'_>, role: RoleKind, except: &str) -> Result<Vec<String>, HealError> {
    let (_, addresses) = deploy::addresses(&h.run).await?;
    Ok(h.run
        .planned
        .iter()
        .filter(|p| p.has(role) && p.name != except)
        .filter_map(|p| addresses.get(&p.name).cloned())
        .collect())
}

/// Removes the lost host at the provider, then ends its swarm and Consul Raft memberships and
/// forgets its identity (see `membership`). The host goes first: interrupted after its
/// memberships ended, a stopped host that a `deploy` starts again would come back as a
/// manager of a swarm that has removed it.
async fn remove_remains(h: &Heal<'_>, planned: &PlannedHost) -> Result<(), HealError> {
    let name = &planned.name;
    let managers = addresses_of(h, RoleKind::Manager, name).await?;
    let (via, d) = membership::a_manager(&managers, &h.docker_dir).await?;
    // Its address is known while the control plane still has its record (forgotten last: a
    // rerun past that point has nothing left to remove from Raft).
    let (_, addresses) = deploy::addresses(&h.run).await?;
    let nodes = membership::lost_nodes(&d, name).await?;
    h.say(name, "removing what is left of it at the provider").await;
    crate::failpoint!("heal.terminate.before");
    h.run.prepared.provider.terminate(name).await?;
    crate::failpoint!("heal.terminate.after");
    h.say(name, format!("removing it from the swarm through {via}")).await;
    let did = membership::leave_swarm(&d, &via, nodes).await?;
    crate::failpoint!("heal.leave.after");
    h.say(name, format!("swarm: {did}")).await;
    if let (true, Some(ip)) = (planned.has(RoleKind::Consul), addresses.get(name)) {
        let path = crate::control_plane::consul::operator_token_path(h.run.state_dir);
        let token =
            std::fs::read_to_string(&path).map_err(|source| HealError::State { path, source })?.trim().to_string();
        let did = membership::leave_consul(&d, &via, name, ip, &token).await?;
        crate::failpoint!("heal.consul_leave.after");
        h.say(name, format!("consul: {did}")).await;
    }
    h.run.admin.clone().remove_host(v1::RevokeHostRequest { host_name: name.clone() }).await?;
    crate::failpoint!("heal.revoke.after");
    h.say(name, "its certificates revoked and its record forgotten").await;
    Ok(())
}

/// Launches a replacement unless the provider has one (an interrupted heal launched it);
/// returns its instance id. A stopped one is started. `at`: the address it must have
/// (recover's restore), else the provider's choice.
pub async fn launch_if_missing(
    h: &Heal<'_>,
    planned: &PlannedHost,
    ca_pem: &str,
    at: Option<std::net::Ipv4Addr>,
) -> Result<String, HealError> {
    let name = &planned.name;
    let existing = h.run.prepared.provider.describe().await?.into_iter().find(|x| &x.name == name);
    match existing {
        Some(x) if matches!(x.state, HostState::Running | HostState::Pending) => {
            h.say(name, format!("replacement {} exists; waiting for enrollment", x.instance_id)).await;
            return Ok(x.instance_id);
        }
        Some(x) if x.state == HostState::Stopped => {
            h.run.prepared.provider.start(name).await?;
            h.say(name, format!("started {}; waiting for enrollment", x.instance_id)).await;
            return Ok(x.instance_id);
        }
        _ => {}
    }
    let st = h.run.admin.clone().status(v1::StatusRequest::default()).await?.into_inner();
    let spec = LaunchSpec { private_ip: at, ..launch::launch_spec(&h.run, planned, &st, ca_pem).await? };
    crate::failpoint!("heal.launch.before");
    let host = h.run.prepared.launch(&spec, planned.index).await?;
    crate::failpoint!("heal.launch.after");
    h.say(name, format!("launched replacement {}, waiting for enrollment", host.instance_id)).await;
    Ok(host.instance_id)
}

/// The replacement enrolled, assigned (every host's assignment refreshed: a new address
/// changes the Consul join lists), its roles running, and counted by Swarm and Consul (by
/// the servers there are: `missing` ones are still to be replaced).
async fn rejoin(h: &Heal<'_>, planned: &PlannedHost, r: &mut Replaced, missing: &[String]) -> Result<(), HealError> {
    let one = std::slice::from_ref(planned);
    wait::agents_connected(&h.run, one, "the replacement to enroll").await?;
    r.enrolled_s = h.at();
    h.say(&planned.name, "enrolled; assigning its roles").await;
    let (_, addresses) = deploy::addresses(&h.run).await?;
    assign::assign_in_dependency_order(&h.run, &addresses).await?;
    if missing.is_empty() {
        wait::roles_running(&h.run, one, "its roles to run").await?;
    } else {
        wait::roles_running_short_of_servers(&h.run, one, "its roles to run").await?;
    }
    h.say(&planned.name, "roles running; waiting until Swarm and Consul count it").await;
    counted(h, planned, missing).await
}

/// Waits until the swarm lists the host once, ready (a manager: reachable, or the leader)
/// and has a leader, and — for a Consul server — every server's agent reports the planned
/// number of peers (but the `missing` ones) and a leader.
async fn counted(h: &Heal<'_>, planned: &PlannedHost, missing: &[String]) -> Result<(), HealError> {
    let name = planned.name.as_str();
    let managers = addresses_of(h, RoleKind::Manager, "").await?;
    let servers: Vec<String> = h
        .run
        .planned
        .iter()
        .filter(|p| p.has(RoleKind::Consul) && !missing.contains(&p.name))
        .map(|p| p.name.clone())
        .collect();
    let waited = poll_until(
        "Swarm and Consul to count the replacement",
        Instant::now() + FULL_STRENGTH_TIMEOUT,
        Duration::from_secs(1),
        || {
            let (managers, servers) = (&managers, &servers);
            async move {
                let (via, d) = match membership::a_manager(managers, &h.docker_dir).await {
                    Ok(x) => x,
                    Err(e) => return Ok::<_, HealError>(Attempt::NotYet(e.to_string())),
                };
                let nodes = match verify::nodes(&d).await {
                    Ok(n) => n,
                    Err(e) => return Ok(Attempt::NotYet(format!("{via}: {e}"))),
                };
                if let Some(problem) = swarm_problem(&nodes, name, planned.has(RoleKind::Manager)) {
                    return Ok(Attempt::NotYet(problem));
                }
                if planned.has(RoleKind::Consul) {
                    let st = h.run.admin.clone().status(v1::StatusRequest::default()).await?.into_inner();
                    if let Err(e) = verify::consul_from_agents(&st, servers, servers.len()) {
                        return Ok(Attempt::NotYet(e.to_string()));
                    }
                }
                Ok(Attempt::Done(()))
            }
        },
    )
    .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, .. } => HealError::NotFull { host: name.to_string(), problem: last },
    })
}

/// What keeps the swarm's node list from counting `host`, if anything.
pub(crate) fn swarm_problem(nodes: &[verify::SwarmNode], host: &str, manager: bool) -> Option<String> {
    let mine: Vec<&verify::SwarmNode> = nodes.iter().filter(|n| n.hostname == host).collect();
    if !nodes.iter().any(|n| n.manager_status == "leader") {
        return Some("the swarm has no leader".into());
    }
    match mine.as_slice() {
        [] => Some(format!("{host} is not in the swarm yet")),
        [n] if !n.ready => Some(format!("{host} is not ready yet")),
        [n] if manager && !matches!(n.manager_status.as_str(), "reachable" | "leader") => Some(format!(
            "{host} is a manager but {}",
            if n.role == "manager" { &n.manager_status } else { "a worker" }
        )),
        [_] => None,
        many => Some(format!("the swarm lists {} nodes named {host}", many.len())),
    }
}

/// The whole cluster checked with its own views at the end, as deploy checks it (Consul:
/// directly in the lab, through the servers' agents on AWS).
pub async fn verify_all(h: &Heal<'_>) -> Result<String, HealError> {
    let c = h.run.config;
    let not_full =
        |e: &dyn std::fmt::Display| HealError::NotFull { host: "the cluster".into(), problem: e.to_string() };
    let managers = addresses_of(h, RoleKind::Manager, "").await?;
    let swarm = verify::swarm(&managers, &h.docker_dir, c.managers as usize, c.nodes as usize)
        .await
        .map_err(|e| not_full(&e))?;
    let (_, addresses) = deploy::addresses(&h.run).await?;
    let consul = verify_and_smoke::consul(&h.run, &addresses).await.map_err(|e| not_full(&e))?;
    Ok(format!(
        "full strength: {} managers (leader {}), {} workers ready; {} Consul servers, leader {}",
        swarm.managers.len(),
        swarm.leader,
        swarm.workers.len(),
        consul.peers.len(),
        consul.leader
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, role: &str, status: &str, ready: bool) -> verify::SwarmNode {
        verify::SwarmNode {
            hostname: host.into(),
            addr: String::new(),
            role: role.into(),
            manager_status: status.into(),
            ready,
        }
    }

    #[test]
    fn a_replacement_counts_once_ready_reachable_and_alone_under_its_name() {
        let leader = node("manager0", "manager", "leader", true);
        let base = vec![leader.clone(), node("manager2", "manager", "reachable", true)];
        let with = |n: verify::SwarmNode| [base.clone(), vec![n]].concat();
        assert_eq!(swarm_problem(&with(node("manager1", "manager", "reachable", true)), "manager1", true), None);
        assert!(swarm_problem(&base, "manager1", true).expect("absent").contains("not in the swarm"));
        assert!(
            swarm_problem(&with(node("manager1", "worker", "", true)), "manager1", true)
                .expect("worker")
                .contains("a worker")
        );
        assert!(swarm_problem(&with(node("manager1", "manager", "unreachable", true)), "manager1", true).is_some());
        let dup = [with(node("node0", "worker", "", true)), vec![node("node0", "worker", "", false)]].concat();
        assert!(swarm_problem(&dup, "node0", false).expect("two").contains("2 nodes named node0"));
        let leaderless = vec![node("manager2", "manager", "reachable", true), node("node0", "worker", "", true)];
        assert!(swarm_problem(&leaderless, "node0", false).expect("no leader").contains("no leader"));
    }
}
