//! No manager survives: the cluster comes back from its backups onto new hosts.
//!
//! Swarmkit keeps a restored node's own Raft address: `--force-new-cluster --advertise-addr`
//! does not change it (Engine 20.10), and managers that join later dial it. So the Swarm state
//! goes onto the relaunched manager that got the address the backup's node advertised (read
//! from `swarm/docker-state.json` in the archive); when none did, nothing is restored and the
//! recover is refused. So the backup's source manager is relaunched first, pinned to that
//! address (`LaunchSpec::private_ip`: the lab's fixed address, EC2's `PrivateIpAddress` in
//! the subnet that holds it).
//!
//! 1. The newest Swarm backup and Consul snapshot that verify ([`archive::latest`]); a newer
//!    one that does not (its digest changed) refuses the whole recover, naming it.
//! 2. The lost managers' remains removed at the provider and their identities forgotten;
//!    every manager launched anew (same names), the backup's source first on the address its
//!    node advertised, and enrolled — all at once: there is no quorum left to protect.
//! 3. The Swarm backup restored onto the manager that has the backup's node's address, before
//!    it has any role (its agent also removes the restored state's other managers, none of them in
//!    Raft any more: a manager joining later would be handed their old addresses and stall) (made the plan's first manager for the assignment: the one that would
//!    initialise a swarm is the one that has it): its agent replaces `/var/lib/docker/swarm`
//!    and forces a new cluster on its address. Swarmkit keeps the restored node's own Raft
//!    address, so that address must be the source's (step 2 pinned it).
//! 4. Every host assigned its roles: three fresh Consul servers elect a leader, the restored
//!    manager publishes the join data, the others join it; then the Consul snapshot is
//!    restored into the servers (KV, ACLs).
//! 5. The workers, still members of the old swarm whose managers are gone, leave it (their
//!    role taken away) and join again; the nodes the restored state remembers that are down
//!    and replaced by a ready node of the same name are removed.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{DeleteNodeOptions, ListNodesOptions};
use flotilla_proto::v1;

use super::RecoverError;
use crate::control_plane::backup::archive::{self, BackupMeta};
use crate::control_plane::settings::StatePaths;
use crate::ops::deploy::{self, Run, assign, wait};
use crate::ops::heal::{self, Heal};
use crate::ops::plan::{PlannedHost, RoleKind};
use crate::ops::verify;
use crate::poll::{Attempt, PollError, poll_until};

/// How long the workers get to leave the old swarm, and the swarm to count every host once.
const SETTLE: Duration = Duration::from_secs(180);

/// The newest backup of `kind`, verified (digests, decryption); refused — naming it — when it
/// does not verify, rather than silently restoring an older one.
fn newest(state_dir: &Path, kind: &str) -> Result<(BackupMeta, Vec<u8>), RecoverError> {
    let dir = archive::dir(state_dir);
    let all = archive::list(state_dir).map_err(|e| RecoverError::Restore(e.to_string()))?;
    let mut mine: Vec<BackupMeta> = all.into_iter().filter(|m| m.kind == kind).collect();
    let Some(newest) = mine.pop() else {
        return Err(RecoverError::Restore(format!(
            "no {kind} backup in {} (`coordinator backups`); without one no manager's state can come back. Nothing changed",
            dir.display()
        )));
    };
    match archive::open(state_dir, &newest) {
        Ok(data) => Ok((newest, data)),
        Err(e) => Err(RecoverError::Restore(format!(
            "the newest {kind} backup, {}, is refused: {e}. Nothing changed. {}",
            newest.id,
            match mine.last() {
                Some(older) => format!(
                    "Restoring the older {} instead loses what happened in between: move the refused file out of {} if that is what you want, and run recover again",
                    older.id,
                    dir.display()
                ),
                None => "There is no older one".into(),
            }
        ))),
    }
}

/// What the restore would do, for the plan; refuses (before anything changes) without
/// backups that verify.
pub fn plan_lines(state_dir: &Path, gone: &[String]) -> Result<Vec<String>, RecoverError> {
    let (swarm, swarm_data) = newest(state_dir, "swarm")?;
    let (consul, _) = newest(state_dir, "consul")?;
    let raft_ip = advertised_ip(&swarm, &swarm_data)?;
    Ok(vec![
        format!("no manager survives ({}): the cluster comes back from its backups", gone.join(", ")),
        format!(
            "remove what is left of {} at the provider, forget their identities, launch them anew and wait until they enroll",
            gone.join(", ")
        ),
        format!(
            "swarm: restore backup {} (taken on {} at {} ms since the epoch, Engine {}, sha256 {}) onto the relaunched manager that has {raft_ip}, the address it advertised (swarmkit keeps it as the node's Raft address), and force a new cluster there",
            swarm.id, swarm.host, swarm.taken_unix_ms, swarm.engine_version, swarm.sha256
        ),
        "assign every host its roles: three new Consul servers, the other managers join the restored one".into(),
        format!(
            "consul: restore snapshot {} (Consul {}, sha256 {}) into the new servers",
            consul.id, consul.consul_version, consul.sha256
        ),
        "workers: leave the old swarm and join again; the down nodes the restored state remembers removed".into(),
    ])
}

/// Runs the restore (the module's doc). `step` reports progress. Returns when the restored
/// manager led the swarm.
pub async fn from_backups(
    run: &Run<'_>,
    docker_dir: &Path,
    gone: &[String],
    step: &mut impl FnMut(String),
) -> Result<Instant, RecoverError> {
    let (swarm_backup, swarm_data) = newest(run.state_dir, "swarm")?;
    let (consul_backup, _) = newest(run.state_dir, "consul")?;
    let managers: Vec<PlannedHost> = run.planned.iter().filter(|p| gone.contains(&p.name)).cloned().collect();
    let raft_ip = advertised_ip(&swarm_backup, &swarm_data)?;
    let pinned = pin(&managers, &swarm_backup.host, &raft_ip)?;
    relaunch(run, docker_dir, &managers, &pinned, step).await?;
    let (_, addresses) = deploy::addresses(run).await?;
    let first = target(&managers, &addresses, &raft_ip)?;
    step(format!("swarm: the backup's node advertised {raft_ip}, which {} has now", first.name));
    // The restored manager is the plan's first: the one manager role that would initialise
    // a swarm when it finds no join data is the one that already has the swarm.
    let reordered = first_manager_first(run.planned, &first.name);
    let run = &Run { planned: &reordered, ..run.clone() };
    let address = addresses.get(&first.name).ok_or_else(|| RecoverError::NoAddress(first.name.clone()))?;
    step(format!("swarm: restoring {} onto {}", swarm_backup.id, first.name));
    let req = v1::RestoreBackupRequest {
        host_name: first.name.clone(),
        backup_id: swarm_backup.id.clone(),
        advertise_addr: address.clone(),
    };
    step(run.admin.clone().restore_backup(req).await?.into_inner().detail);
    let led = Instant::now();
    step("assigning every host its roles".into());
    assign::assign_in_dependency_order(run, &addresses).await?;
    wait::roles_running(run, &managers, "the managers' roles to run").await?;
    consul_leader(run).await?;
    step(format!("consul: restoring {} into the new servers through {}", consul_backup.id, first.name));
    let req = v1::RestoreBackupRequest {
        host_name: first.name.clone(),
        backup_id: consul_backup.id.clone(),
        ..Default::default()
    };
    step(run.admin.clone().restore_backup(req).await?.into_inner().detail);
    let d = verify::engine(address, docker_dir).await?;
    let stranded = stranded_workers(&d, run.planned).await;
    if !stranded.is_empty() {
        rejoin_workers(run, &stranded, &addresses, step).await?;
    } else {
        step("workers: every one is back in the restored swarm by itself".into());
    }
    step(prune_stale_nodes(&d, run.planned).await?);
    Ok(led)
}

/// The IP the backup's node advertised (`swarm/docker-state.json` in the archive): swarmkit
/// keeps it as that node's own Raft address after a restore, so the restored manager must
/// have it.
fn advertised_ip(meta: &BackupMeta, gz: &[u8]) -> Result<String, RecoverError> {
    use std::io::Read;
    let bad = |why: String| RecoverError::Restore(format!("backup {}: {why}", meta.id));
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    for e in ar.entries().map_err(|e| bad(e.to_string()))? {
        let mut e = e.map_err(|e| bad(e.to_string()))?;
        if e.path().ok().is_some_and(|p| p.as_ref() == Path::new("swarm/docker-state.json")) {
            let mut text = String::new();
            e.read_to_string(&mut text).map_err(|e| bad(e.to_string()))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let addr = v["AdvertiseAddr"].as_str().unwrap_or_default();
            let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip);
            if ip.is_empty() {
                return Err(bad("swarm/docker-state.json names no AdvertiseAddr".into()));
            }
            return Ok(ip.to_string());
        }
    }
    Err(bad("no swarm/docker-state.json in the archive".into()))
}

/// The relaunched manager that has the address the backup's node advertised (see
/// [`advertised_ip`]); none: refused before anything is restored.
fn target(
    managers: &[PlannedHost],
    addresses: &HashMap<String, String>,
    raft_ip: &str,
) -> Result<PlannedHost, RecoverError> {
    managers.iter().find(|m| addresses.get(&m.name).is_some_and(|a| a == raft_ip)).cloned().ok_or_else(|| {
        let now: Vec<String> = managers
            .iter()
            .map(|m| format!("{} {}", m.name, addresses.get(&m.name).map_or("?", String::as_str)))
            .collect();
        RecoverError::Restore(format!(
            "the backup's node advertised {raft_ip}, and swarmkit keeps that as its Raft address after a restore; no relaunched manager has it ({}). Nothing was restored: free that address for a manager and run recover again",
            now.join(", ")
        ))
    })
}

/// Which relaunched manager must get the address the backup's node advertised: the backup's
/// source when it is one of them (it had that address), else the first.
fn pin(managers: &[PlannedHost], source: &str, raft_ip: &str) -> Result<(String, Ipv4Addr), RecoverError> {
    let ip: Ipv4Addr = raft_ip.parse().map_err(|_| {
        RecoverError::Restore(format!(
            "the backup's node advertised {raft_ip}, not an IPv4 address a host can be launched on. Nothing changed"
        ))
    })?;
    let name = managers
        .iter()
        .find(|m| m.name == source)
        .or_else(|| managers.first())
        .map(|m| m.name.clone())
        .ok_or_else(|| RecoverError::Restore("no manager in the plan to restore onto".into()))?;
    Ok((name, ip))
}

/// The plan with `name` moved before every other host (so it is the first manager).
fn first_manager_first(planned: &[PlannedHost], name: &str) -> Vec<PlannedHost> {
    let mut v: Vec<PlannedHost> = planned.iter().filter(|p| p.name == name).cloned().collect();
    v.extend(planned.iter().filter(|p| p.name != name).cloned());
    v
}

/// Every lost manager's remains removed and a new one launched and enrolled; `pinned`'s
/// first (so no other takes its address) on its address.
async fn relaunch(
    run: &Run<'_>,
    docker_dir: &Path,
    managers: &[PlannedHost],
    pinned: &(String, Ipv4Addr),
    step: &mut impl FnMut(String),
) -> Result<(), RecoverError> {
    let managers = first_manager_first(managers, &pinned.0);
    let ca_path = StatePaths::new(run.state_dir).ca_pem();
    let ca_pem =
        std::fs::read_to_string(&ca_path).map_err(|e| RecoverError::Restore(format!("{}: {e}", ca_path.display())))?;
    let h = Heal { run: run.clone(), automatic: false, docker_dir: docker_dir.to_path_buf(), started: Instant::now() };
    let st = run.admin.clone().status(v1::StatusRequest::default()).await?.into_inner();
    for m in &managers {
        let known = st.hosts.iter().find(|x| x.name == m.name);
        if known.is_some_and(|x| x.connected && !x.unreachable) {
            step(format!("{}: a new one is enrolled already", m.name));
            continue;
        }
        let at_provider = run.prepared.provider.describe().await?.into_iter().find(|x| x.name == m.name);
        if heal::assess::is_down(at_provider.as_ref()) {
            run.prepared.provider.terminate(&m.name).await?;
            run.admin.clone().remove_host(v1::RevokeHostRequest { host_name: m.name.clone() }).await?;
            step(format!("{}: its remains removed at the provider, its identity forgotten", m.name));
        }
        let at = (m.name == pinned.0).then_some(pinned.1);
        let id = heal::replace::launch_if_missing(&h, m, &ca_pem, at).await?;
        match at {
            Some(ip) => step(format!("{}: launched {id} on {ip}", m.name)),
            None => step(format!("{}: launched {id}", m.name)),
        }
    }
    wait::agents_connected(run, &managers, "the new managers to enroll").await?;
    Ok(())
}

/// Waits until every new Consul server reports a leader and all its peers.
async fn consul_leader(run: &Run<'_>) -> Result<(), RecoverError> {
    let servers: Vec<String> = run.planned.iter().filter(|p| p.has(RoleKind::Consul)).map(|p| p.name.clone()).collect();
    let waited =
        poll_until("the new Consul servers to elect a leader", Instant::now() + SETTLE, Duration::from_secs(1), || {
            let servers = &servers;
            async move {
                let st = run.admin.clone().status(v1::StatusRequest::default()).await?.into_inner();
                Ok::<_, RecoverError>(match verify::consul_from_agents(&st, servers, servers.len()) {
                    Ok(_) => Attempt::Done(()),
                    Err(e) => Attempt::NotYet(e.to_string()),
                })
            }
        })
        .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, .. } => RecoverError::Consul(last),
    })
}

/// How long a worker gets to find the restored swarm by itself: one that kept its node
/// identity (the backup knows it) and reaches a manager on an address it knew reconnects.
const REJOIN_GRACE: Duration = Duration::from_secs(30);

/// The planned workers that are not a ready node of the restored swarm (after waiting
/// [`REJOIN_GRACE`] for them to reconnect by themselves).
async fn stranded_workers(d: &Docker, planned: &[PlannedHost]) -> Vec<PlannedHost> {
    let workers: Vec<PlannedHost> = planned.iter().filter(|p| !p.has(RoleKind::Manager)).cloned().collect();
    let deadline = Instant::now() + REJOIN_GRACE;
    loop {
        let nodes = verify::nodes(d).await.unwrap_or_default();
        let stranded: Vec<PlannedHost> =
            workers.iter().filter(|w| !nodes.iter().any(|n| n.hostname == w.name && n.ready)).cloned().collect();
        if stranded.is_empty() || Instant::now() >= deadline {
            return stranded;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The `workers` leave the old swarm (their role taken away until their Engine says
/// `inactive`) and join the restored one (their roles given back).
async fn rejoin_workers(
    run: &Run<'_>,
    workers: &[PlannedHost],
    addresses: &HashMap<String, String>,
    step: &mut impl FnMut(String),
) -> Result<(), RecoverError> {
    for w in workers {
        let host_address = addresses.get(&w.name).cloned().unwrap_or_default();
        run.admin.clone().assign(v1::AssignRequest { host_name: w.name.clone(), roles: vec![], host_address }).await?;
    }
    step(format!(
        "workers: {} leaving the old swarm",
        workers.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", ")
    ));
    let names: Vec<String> = workers.iter().map(|w| w.name.clone()).collect();
    let waited =
        poll_until("the workers to leave the old swarm", Instant::now() + SETTLE, Duration::from_millis(500), || {
            let names = &names;
            async move {
                let st = run.admin.clone().status(v1::StatusRequest { fresh: true }).await?.into_inner();
                let still: Vec<&str> = st
                    .hosts
                    .iter()
                    .filter(|h| names.contains(&h.name))
                    .filter(|h| {
                        h.health.as_ref().and_then(|x| x.swarm.as_ref()).is_none_or(|s| s.local_state != "inactive")
                    })
                    .map(|h| h.name.as_str())
                    .collect();
                Ok::<_, RecoverError>(match still.as_slice() {
                    [] => Attempt::Done(()),
                    s => Attempt::NotYet(format!("{} still in a swarm", s.join(", "))),
                })
            }
        })
        .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, .. } => RecoverError::Restore(last),
    })?;
    assign::assign_in_dependency_order(run, addresses).await?;
    wait::roles_running(run, workers, "the workers to join the restored swarm").await?;
    step("workers: joined the restored swarm".into());
    Ok(())
}

/// Removes the nodes the restored state remembers that are not ready while a ready node of
/// the same name exists (the host came back as a new node), or whose name is not planned;
/// waits until every planned host is exactly one ready node. Says what it removed.
async fn prune_stale_nodes(d: &Docker, planned: &[PlannedHost]) -> Result<String, RecoverError> {
    let removed = std::cell::RefCell::new(Vec::<String>::new());
    let waited =
        poll_until("the swarm to count every host once", Instant::now() + SETTLE, Duration::from_secs(1), || {
            let removed = &removed;
            async move {
                let swarm = |e: bollard::errors::Error| RecoverError::Swarm(e.to_string());
                let nodes = d.list_nodes(None::<ListNodesOptions>).await.map_err(swarm)?;
                let host = |n: &bollard::models::Node| {
                    n.description.as_ref().and_then(|x| x.hostname.clone()).unwrap_or_default()
                };
                let ready = |n: &bollard::models::Node| {
                    n.status.as_ref().and_then(|s| s.state) == Some(bollard::models::NodeState::READY)
                };
                let ready_names: Vec<String> = nodes.iter().filter(|n| ready(n)).map(host).collect();
                for n in nodes.iter().filter(|n| !ready(n)) {
                    let name = host(n);
                    let planned_host = planned.iter().any(|p| p.name == name);
                    if planned_host && !ready_names.contains(&name) {
                        continue;
                    }
                    let id = n.id.clone().unwrap_or_default();
                    if let Err(e) = heal::membership::demote_lost(d, &id).await {
                        return Ok(Attempt::NotYet(format!("demoting the stale {name} ({id}): {e}")));
                    }
                    match d.delete_node(&id, Some(DeleteNodeOptions { force: true })).await {
                        Ok(()) => removed.borrow_mut().push(format!("{name} ({id})")),
                        Err(e) => return Ok(Attempt::NotYet(format!("removing the stale {name} ({id}): {e}"))),
                    }
                }
                let nodes = verify::nodes(d).await.map_err(swarm)?;
                for p in planned {
                    let mine: Vec<&verify::SwarmNode> = nodes.iter().filter(|n| n.hostname == p.name).collect();
                    if mine.len() != 1 || !mine[0].ready {
                        return Ok(Attempt::NotYet(format!(
                            "{} is {} node(s), ready: {:?}",
                            p.name,
                            mine.len(),
                            mine.iter().map(|n| n.ready).collect::<Vec<_>>()
                        )));
                    }
                }
                Ok::<_, RecoverError>(Attempt::Done(()))
            }
        })
        .await;
    waited.map_err(|e| match e {
        PollError::Failed(e) => e,
        PollError::TimedOut { last, .. } => RecoverError::Swarm(last),
    })?;
    let removed = removed.into_inner();
    Ok(match removed.is_empty() {
        true => "swarm: no stale node to remove".into(),
        false => format!("swarm: removed the stale nodes {}", removed.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::plan::RoleKind;

    fn managers() -> Vec<PlannedHost> {
        (0..3)
            .map(|i| PlannedHost {
                name: format!("manager{i}"),
                roles: vec![RoleKind::Consul, RoleKind::Manager],
                primary: RoleKind::Manager,
                index: i,
            })
            .collect()
    }

    #[test]
    fn the_backups_source_gets_the_address_its_node_advertised() {
        let m = managers();
        assert_eq!(
            pin(&m, "manager2", "10.213.4.12").expect("accepted"),
            ("manager2".into(), "10.213.4.12".parse().expect("an address"))
        );
        // A source the plan no longer has: the first manager takes the address.
        assert_eq!(pin(&m, "manager7", "10.213.4.12").expect("accepted").0, "manager0");
        let e = pin(&m, "manager2", "fd00::12").expect_err("refused").to_string();
        assert!(e.contains("fd00::12") && e.contains("Nothing changed"), "{e}");
        assert!(pin(&[], "manager0", "10.0.0.1").is_err());
        // And it is launched first, so no other manager takes its address.
        let order: Vec<String> = first_manager_first(&m, "manager2").into_iter().map(|p| p.name).collect();
        assert_eq!(order, ["manager2", "manager0", "manager1"]);
    }
}
