//! The swarm as this Engine sees it, and the join data managers publish in Consul's KV:
//!
//! - `flotilla/<cluster>/swarm/join`: `{cluster_id, manager_token}` — managers' tokens only
//! - `flotilla/<cluster>/swarm/worker`: `{cluster_id, worker_token}` — nodes' tokens may read it
//! - `flotilla/<cluster>/swarm/managers/<host>`: `<ip>:2377`, one key per manager
//! - `flotilla/<cluster>/swarm/init-lock`: the host that may initialise (check-and-set)
//!
//! Consul is how managers and nodes find each other, as in the seed's guide. Every call
//! carries the host's own ACL token from its role spec: the anonymous token reads nothing
//! here, and the manager join token is readable with a manager's token alone (issue 14).

use bollard::Docker;
use bollard::models::LocalNodeState;
use flotilla_proto::v1::SwarmView;
use serde::{Deserialize, Serialize};

use super::RoleError;
use crate::consul::Consul;

pub const SWARM_PORT: u16 = 2377;
/// Overlay subnets come from here, away from the lab's and a VPC's usual ranges.
pub const DEFAULT_ADDR_POOL: &str = "10.214.0.0/16";

/// How to join as a manager (`swarm/join`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManagerJoin {
    pub cluster_id: String,
    pub manager_token: String,
}

/// How to join as a worker (`swarm/worker`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerJoin {
    pub cluster_id: String,
    pub worker_token: String,
}

/// This Engine's swarm membership.
#[derive(Clone, Debug, Default)]
pub struct Local {
    pub state: String,
    pub node_id: String,
    pub cluster_id: String,
    pub is_manager: bool,
    pub error: String,
    /// The managers this node knows (`ip:2377`); a worker's only clue to its swarm, since
    /// the Engine reports the cluster id to managers alone.
    pub remote_managers: Vec<String>,
}

impl Local {
    pub fn active(&self) -> bool {
        self.state == "active"
    }
}

pub async fn local(docker: &Docker) -> Result<Local, RoleError> {
    let info = docker.info().await?;
    let s = info.swarm.unwrap_or_default();
    Ok(Local {
        state: match s.local_node_state {
            Some(LocalNodeState::ACTIVE) => "active",
            Some(LocalNodeState::PENDING) => "pending",
            Some(LocalNodeState::ERROR) => "error",
            Some(LocalNodeState::LOCKED) => "locked",
            _ => "inactive",
        }
        .to_string(),
        node_id: s.node_id.unwrap_or_default(),
        cluster_id: s.cluster.and_then(|c| c.id).unwrap_or_default(),
        is_manager: s.control_available.unwrap_or(false),
        error: s.error.unwrap_or_default(),
        remote_managers: s.remote_managers.unwrap_or_default().into_iter().filter_map(|p| p.addr).collect(),
    })
}

/// Swarm's own view for health samples: state, manager status, leader. One `info` call, and
/// on a manager one `nodes` call (this node's status and the leader's address both come from
/// it). Stamped with the time the read began.
pub async fn view(docker: &Docker) -> Option<SwarmView> {
    let observed_unix_ms = crate::health::now_unix_ms();
    let l = local(docker).await.ok()?;
    let mut v = SwarmView {
        local_state: l.state.clone(),
        node_id: l.node_id.clone(),
        is_manager: l.is_manager,
        observed_unix_ms,
        ..Default::default()
    };
    if l.is_manager
        && !l.node_id.is_empty()
        && let Ok(nodes) = docker.list_nodes(None::<bollard::query_parameters::ListNodesOptions>).await
    {
        for n in nodes {
            let own = n.id.as_deref() == Some(l.node_id.as_str());
            let Some(ms) = n.manager_status else { continue };
            if own {
                v.manager_status = match (ms.leader, ms.reachability) {
                    (Some(true), _) => "leader".into(),
                    (_, Some(r)) => r.to_string(),
                    _ => String::new(),
                };
            }
            if ms.leader == Some(true) {
                v.leader_addr = ms.addr.unwrap_or_default();
            }
        }
    }
    Some(v)
}

/// A key under the cluster's swarm prefix (`flotilla/<cluster>/swarm/<rest>`).
pub fn key(cluster: &str, rest: &str) -> String {
    format!("flotilla/{cluster}/swarm/{rest}")
}

/// The first Consul of `addrs` that answers (and has a leader), its calls made with
/// `token`.
pub async fn consul(addrs: &[String], token: &str) -> Result<Consul, RoleError> {
    let mut last = None;
    for a in addrs {
        let c = Consul::new(a).with_token(token);
        match c.leader().await {
            Ok(l) if !l.is_empty() => return Ok(c),
            Ok(_) => {
                last = Some(RoleError::NoConsulLeader { addr: a.clone() });
            }
            Err(e) => last = Some(e.into()),
        }
    }
    Err(last.unwrap_or_else(|| RoleError::Spec("no Consul address in the spec".into())))
}

async fn read_record<T: serde::de::DeserializeOwned>(c: &Consul, key: &str) -> Result<Option<T>, RoleError> {
    match c.get(key).await? {
        None => Ok(None),
        Some(e) => serde_json::from_slice(&e.value).map(Some).map_err(RoleError::JoinDataParse),
    }
}

/// The manager join record (a manager's token only).
pub async fn read_join(c: &Consul, cluster: &str) -> Result<Option<ManagerJoin>, RoleError> {
    read_record(c, &key(cluster, "join")).await
}

/// The worker join record.
pub async fn read_worker_join(c: &Consul, cluster: &str) -> Result<Option<WorkerJoin>, RoleError> {
    read_record(c, &key(cluster, "worker")).await
}

/// Publishes both join records (each replaced only when it differs).
pub async fn publish_join(
    c: &Consul,
    cluster: &str,
    manager: &ManagerJoin,
    worker: &WorkerJoin,
) -> Result<(), RoleError> {
    publish_record(c, &key(cluster, "join"), manager).await?;
    publish_record(c, &key(cluster, "worker"), worker).await
}

async fn publish_record<T: Serialize>(c: &Consul, k: &str, data: &T) -> Result<(), RoleError> {
    let body = serde_json::to_vec(data).map_err(RoleError::JoinDataEncode)?;
    match c.get(k).await? {
        Some(e) if e.value == body => Ok(()),
        Some(e) => {
            c.put(k, &body, Some(e.modify_index)).await?;
            Ok(())
        }
        None => {
            c.put(k, &body, Some(0)).await?;
            Ok(())
        }
    }
}

pub async fn publish_manager(c: &Consul, cluster: &str, host: &str, addr: &str) -> Result<(), RoleError> {
    let k = key(cluster, &format!("managers/{host}"));
    let want = format!("{addr}:{SWARM_PORT}");
    if c.get(&k).await?.is_some_and(|e| e.value == want.as_bytes()) {
        return Ok(());
    }
    c.put(&k, want.as_bytes(), None).await?;
    Ok(())
}

/// Deletes the published manager addresses that are no manager's in the swarm's node list
/// (a manager demoted or gone). Run by the swarm's leader, whose node list is current.
pub async fn prune_managers(docker: &Docker, c: &Consul, cluster: &str) -> Result<(), RoleError> {
    let nodes = docker.list_nodes(None::<bollard::query_parameters::ListNodesOptions>).await?;
    let managers: Vec<String> = nodes.into_iter().filter_map(|n| n.manager_status?.addr).collect();
    if managers.is_empty() {
        return Ok(());
    }
    let prefix = key(cluster, "managers/");
    for (k, v) in c.list(&prefix).await? {
        if !managers.iter().any(|m| m.as_bytes() == v.as_slice()) {
            tracing::info!(key = %k, addr = %String::from_utf8_lossy(&v), "pruning a published address that is no manager's");
            c.delete(&k).await?;
        }
    }
    Ok(())
}

/// The managers' swarm addresses published in Consul, except `except`'s.
pub async fn manager_addrs(c: &Consul, cluster: &str, except: &str) -> Result<Vec<String>, RoleError> {
    let prefix = key(cluster, "managers/");
    let mut out: Vec<String> = c
        .list(&prefix)
        .await?
        .into_iter()
        .filter(|(k, _)| k.strip_prefix(&prefix) != Some(except))
        .map(|(_, v)| String::from_utf8_lossy(&v).to_string())
        .collect();
    out.sort();
    Ok(out)
}

/// Takes the init lock for `host` (check-and-set: only if nobody holds it). Returns the
/// holder: `host` when we won (or already held it).
pub async fn take_init_lock(c: &Consul, cluster: &str, host: &str) -> Result<String, RoleError> {
    let k = key(cluster, "init-lock");
    if c.put(&k, host.as_bytes(), Some(0)).await? {
        return Ok(host.to_string());
    }
    Ok(c.get(&k).await?.map(|e| String::from_utf8_lossy(&e.value).to_string()).unwrap_or_default())
}
