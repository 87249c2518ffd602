//! The `node` role: a Swarm worker that finds the swarm through the worker join record in
//! Consul (its token reads that record and the managers' addresses, nothing else).
//! An Engine that already belongs to another swarm is reported, never forced out.

use bollard::query_parameters::LeaveSwarmOptions;
use flotilla_proto::v1::{NodeSpec, Role, RoleState, RoleStatus};

use super::{RoleCtx, RoleError, status, swarm};
use crate::consul::ConsulError;

pub fn validate(spec: &NodeSpec) -> Result<(), RoleError> {
    if spec.consul_http_addrs.is_empty() {
        return Err(RoleError::Spec("node.consul_http_addrs is empty".into()));
    }
    if !super::consul::is_uuid(&spec.consul_token) {
        return Err(RoleError::Spec("node.consul_token must be a UUID (the control plane fills it)".into()));
    }
    Ok(())
}

pub async fn ensure(ctx: &RoleCtx<'_>, spec: &NodeSpec, also_manager: bool) -> Result<RoleStatus, RoleError> {
    validate(spec)?;
    let local = swarm::local(ctx.docker).await?;
    let consul = match swarm::consul(&spec.consul_http_addrs, &spec.consul_token).await {
        Ok(c) => c,
        Err(e) if !local.active() => {
            return Ok(status(Role::Node, RoleState::Pending, format!("waiting for Consul: {e}")));
        }
        Err(e) => return Ok(status(Role::Node, RoleState::Degraded, format!("Consul: {e}"))),
    };
    let join = match swarm::read_worker_join(&consul, ctx.cluster).await {
        // The Consul servers create this host's token soon after they elect a leader.
        Err(RoleError::Consul(e @ ConsulError::Denied { .. })) if !local.active() => {
            return Ok(status(
                Role::Node,
                RoleState::Pending,
                format!("waiting for Consul to know this host's token: {e}"),
            ));
        }
        other => other?,
    };
    // Which swarm is this Engine in? Managers know the cluster id; a worker only knows its
    // managers' addresses, which must be among the ones this cluster published.
    let foreign = |j: &swarm::WorkerJoin, published: &[String]| {
        if !local.cluster_id.is_empty() {
            local.cluster_id != j.cluster_id
        } else {
            !local.remote_managers.is_empty() && !local.remote_managers.iter().any(|m| published.contains(m))
        }
    };
    let published = if local.active() {
        swarm::manager_addrs(&consul, ctx.cluster, "").await.unwrap_or_default()
    } else {
        Vec::new()
    };
    match (local.state.as_str(), join) {
        ("active", Some(j)) if foreign(&j, &published) => {
            Err(RoleError::ForeignSwarmWorker { managers: local.remote_managers.clone(), ours: j.cluster_id })
        }
        ("active", Some(_)) => Ok(status(
            Role::Node,
            RoleState::Running,
            if local.is_manager { "manager (also schedules tasks)" } else { "worker" },
        )),
        ("active", None) => Ok(status(
            Role::Node,
            RoleState::Degraded,
            format!("this Engine is in a swarm ({}) but the cluster has published no join data yet", local.cluster_id),
        )),
        ("pending", _) => Ok(status(Role::Node, RoleState::Starting, "joining the swarm")),
        ("inactive", Some(j)) => {
            if also_manager {
                // The manager role joins; a node role on the same host rides along.
                return Ok(status(Role::Node, RoleState::Pending, "joining as a manager"));
            }
            let mut remotes = swarm::manager_addrs(&consul, ctx.cluster, ctx.host).await?;
            if remotes.is_empty() {
                return Ok(status(Role::Node, RoleState::Pending, "no manager address published yet"));
            }
            remotes.truncate(5);
            super::manager::join_swarm(ctx, remotes, &j.worker_token).await?;
            Ok(status(Role::Node, RoleState::Starting, "joined the swarm as a worker"))
        }
        ("inactive", None) => Ok(status(
            Role::Node,
            RoleState::Pending,
            format!("waiting for a manager to publish join data under flotilla/{}/swarm/", ctx.cluster),
        )),
        (other, _) => Ok(status(Role::Node, RoleState::Failed, format!("swarm state '{other}': {}", local.error))),
    }
}

/// Leaves the swarm when this Engine is a worker in it.
pub async fn remove(ctx: &RoleCtx<'_>) -> Result<bool, RoleError> {
    let local = swarm::local(ctx.docker).await?;
    if !local.active() || local.is_manager {
        return Ok(false);
    }
    ctx.docker.leave_swarm(Some(LeaveSwarmOptions { force: false })).await?;
    Ok(true)
}
