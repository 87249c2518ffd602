//! The `manager` role: a Swarm-mode manager through the Engine's swarm API.
//!
//! The designated first manager initialises the swarm — only after finding no swarm on its
//! Engine and no join data in Consul, and only after winning a check-and-set lock there — and
//! publishes the join tokens: the manager token where only managers' Consul tokens read it,
//! the worker token where nodes' do. Every other manager reads them from Consul and joins.
//! Each manager publishes its own address, so later joiners can reach any of them.
//!
//! The leading manager also keeps the swarm's dispatcher heartbeat at [`DISPATCHER_HEARTBEAT`]
//! (a cluster setting, `docker swarm update --dispatcher-heartbeat`).

use std::time::Duration;

use bollard::Docker;
use bollard::models::{NodeSpec, NodeSpecRoleEnum, SwarmInitRequest, SwarmJoinRequest, SwarmSpecDispatcher};
use bollard::query_parameters::{LeaveSwarmOptions, UpdateNodeOptions, UpdateSwarmOptions};
use flotilla_proto::v1::{ManagerSpec, Role, RoleState, RoleStatus};

use super::swarm::{self, ManagerJoin, SWARM_PORT, WorkerJoin};
use super::{RoleCtx, RoleError, status};
use crate::consul::{Consul, ConsulError};

pub fn validate(spec: &ManagerSpec) -> Result<(), RoleError> {
    if spec.consul_http_addrs.is_empty() {
        return Err(RoleError::Spec("manager.consul_http_addrs is empty".into()));
    }
    if !super::consul::is_uuid(&spec.consul_token) {
        return Err(RoleError::Spec("manager.consul_token must be a UUID (the control plane fills it)".into()));
    }
    // The key may be absent with a certificate: the agent then uses its own (engine_key.rs).
    let (cert, key, ca) = (&spec.engine_tls_cert_pem, &spec.engine_tls_key_pem, &spec.engine_tls_ca_pem);
    if cert.is_empty() != ca.is_empty() || (cert.is_empty() && !key.is_empty()) {
        return Err(RoleError::Spec(
            "manager.engine_tls_*: give the certificate and the CA (and the key only when it is not this host's own) or none".into(),
        ));
    }
    Ok(())
}

/// Converges the manager role; returns its status.
pub async fn ensure(ctx: &RoleCtx<'_>, spec: &ManagerSpec) -> Result<RoleStatus, RoleError> {
    validate(spec)?;
    // The Engine's TLS listener was converged by the reconciler before any role ran.
    let local = swarm::local(ctx.docker).await?;
    let consul = match swarm::consul(&spec.consul_http_addrs, &spec.consul_token).await {
        Ok(c) => c,
        Err(e) if !local.active() => {
            return Ok(status(Role::Manager, RoleState::Pending, format!("waiting for Consul: {e}")));
        }
        Err(e) => return Ok(status(Role::Manager, RoleState::Degraded, format!("Consul: {e}"))),
    };
    let join = match swarm::read_join(&consul, ctx.cluster).await {
        // The Consul servers create this host's token soon after they elect a leader.
        Err(RoleError::Consul(e @ ConsulError::Denied { .. })) if !local.active() => {
            return Ok(status(
                Role::Manager,
                RoleState::Pending,
                format!("waiting for Consul to know this host's token: {e}"),
            ));
        }
        other => other?,
    };
    match local.state.as_str() {
        "active" => active(ctx, &consul, &local, join).await,
        "pending" => Ok(status(Role::Manager, RoleState::Starting, "joining the swarm")),
        "inactive" => match join {
            Some(j) => join_as_manager(ctx, &consul, &j).await,
            None if spec.designated_initializer => initialise(ctx, &consul).await,
            None => Ok(status(
                Role::Manager,
                RoleState::Pending,
                format!("waiting for the first manager to publish join data under flotilla/{}/swarm/", ctx.cluster),
            )),
        },
        other => Ok(status(Role::Manager, RoleState::Failed, format!("swarm state '{other}': {}", local.error))),
    }
}

/// How often every node of the swarm reports to the dispatcher (issue 19). swarmkit marks a
/// node down after three missed periods and reschedules its tasks: 2 s makes that about
/// 6 s instead of the default 5 s period's 15 s, so a dead worker's tasks run elsewhere
/// within 10 s. The price: a node whose heartbeats stall for 6 s (a host starved of CPU, a
/// network blip) is taken for dead and its tasks started twice until it reports again, and
/// every node sends 2.5× the heartbeats (one small gRPC call per period; 100 nodes: 50/s to
/// the leader).
pub const DISPATCHER_HEARTBEAT: Duration = Duration::from_secs(2);

/// Sets the swarm's dispatcher heartbeat to [`DISPATCHER_HEARTBEAT`] when it differs
/// (the leader's job: the update goes through Raft). Returns whether it changed it.
async fn ensure_heartbeat(docker: &Docker) -> Result<bool, RoleError> {
    let sw = docker.inspect_swarm().await?;
    let want = DISPATCHER_HEARTBEAT.as_nanos() as i64;
    let mut spec = sw.spec.unwrap_or_default();
    if spec.dispatcher.as_ref().and_then(|d| d.heartbeat_period) == Some(want) {
        return Ok(false);
    }
    spec.dispatcher = Some(SwarmSpecDispatcher { heartbeat_period: Some(want) });
    let version = sw.version.and_then(|v| v.index).unwrap_or_default();
    docker.update_swarm(spec, UpdateSwarmOptions { version: version as i64, ..Default::default() }).await?;
    Ok(true)
}

/// In a swarm already: ours, and as a manager? Then keep what it publishes current.
async fn active(
    ctx: &RoleCtx<'_>,
    consul: &Consul,
    local: &swarm::Local,
    join: Option<ManagerJoin>,
) -> Result<RoleStatus, RoleError> {
    if let Some(j) = join
        && j.cluster_id != local.cluster_id
    {
        return Err(RoleError::ForeignSwarm { theirs: local.cluster_id.clone(), ours: j.cluster_id });
    }
    if !local.is_manager {
        return Ok(status(
            Role::Manager,
            RoleState::Degraded,
            "this Engine is a worker of the swarm; promote it from a manager (`docker node promote`)",
        ));
    }
    // Keep the join data and our address current (tokens can be rotated).
    publish(ctx, consul).await?;
    let v = swarm::view(ctx.docker).await.unwrap_or_default();
    if v.manager_status == "leader" {
        swarm::prune_managers(ctx.docker, consul, ctx.cluster).await?;
        if ensure_heartbeat(ctx.docker).await? {
            tracing::info!(host = ctx.host, period = ?DISPATCHER_HEARTBEAT, "set the swarm's dispatcher heartbeat");
        }
    }
    let what = if v.manager_status.is_empty() { "manager".to_string() } else { v.manager_status };
    Ok(status(Role::Manager, RoleState::Running, what))
}

/// Not in a swarm, and the cluster has one: join it through the published managers.
async fn join_as_manager(ctx: &RoleCtx<'_>, consul: &Consul, join: &ManagerJoin) -> Result<RoleStatus, RoleError> {
    let mut remotes = swarm::manager_addrs(consul, ctx.cluster, ctx.host).await?;
    if remotes.is_empty() {
        return Ok(status(Role::Manager, RoleState::Pending, "join data is published but no manager address is"));
    }
    remotes.truncate(5);
    join_swarm(ctx, remotes, &join.manager_token).await?;
    swarm::publish_manager(consul, ctx.cluster, ctx.host, ctx.host_address).await?;
    Ok(status(Role::Manager, RoleState::Starting, "joined the swarm as a manager"))
}

/// The designated first manager, no swarm anywhere: initialise it if this host wins the
/// init lock, and publish how to join.
async fn initialise(ctx: &RoleCtx<'_>, consul: &Consul) -> Result<RoleStatus, RoleError> {
    let holder = swarm::take_init_lock(consul, ctx.cluster, ctx.host).await?;
    if holder != ctx.host {
        return Ok(status(
            Role::Manager,
            RoleState::Pending,
            format!("'{holder}' holds the init lock; waiting for its join data"),
        ));
    }
    ctx.docker
        .init_swarm(SwarmInitRequest {
            listen_addr: Some(format!("0.0.0.0:{SWARM_PORT}")),
            advertise_addr: Some(format!("{}:{SWARM_PORT}", ctx.host_address)),
            default_addr_pool: Some(vec![swarm::DEFAULT_ADDR_POOL.to_string()]),
            // Without it the Engine stores a zero size and its allocator stops
            // ("invalid pools size: 0"): services are never scheduled.
            subnet_size: Some(24),
            ..Default::default()
        })
        .await?;
    tracing::info!(host = ctx.host, "initialised the swarm");
    publish(ctx, consul).await?;
    Ok(status(Role::Manager, RoleState::Starting, "initialised the swarm"))
}

/// Publishes the swarm's join data as this manager's Engine has it now, and this
/// manager's address.
async fn publish(ctx: &RoleCtx<'_>, consul: &Consul) -> Result<(), RoleError> {
    let sw = ctx.docker.inspect_swarm().await?;
    let tokens = sw.join_tokens.unwrap_or_default();
    let cluster_id = sw.id.unwrap_or_default();
    let manager = ManagerJoin { cluster_id: cluster_id.clone(), manager_token: tokens.manager.unwrap_or_default() };
    let worker = WorkerJoin { cluster_id, worker_token: tokens.worker.unwrap_or_default() };
    swarm::publish_join(consul, ctx.cluster, &manager, &worker).await?;
    swarm::publish_manager(consul, ctx.cluster, ctx.host, ctx.host_address).await
}

pub async fn join_swarm(ctx: &RoleCtx<'_>, remotes: Vec<String>, token: &str) -> Result<(), RoleError> {
    ctx.docker
        .join_swarm(SwarmJoinRequest {
            listen_addr: Some(format!("0.0.0.0:{SWARM_PORT}")),
            advertise_addr: Some(format!("{}:{SWARM_PORT}", ctx.host_address)),
            remote_addrs: Some(remotes),
            join_token: Some(token.to_string()),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Removes the role: demote this manager first, then leave (unless it stays as a node). Its
/// published address is left for the swarm's leader to prune (the spec, and with it the
/// token that may delete it, is gone).
pub async fn remove(ctx: &RoleCtx<'_>, keep_as_node: bool) -> Result<bool, RoleError> {
    let local = swarm::local(ctx.docker).await?;
    if !local.active() || !local.is_manager {
        return Ok(false);
    }
    let node = ctx.docker.inspect_node(&local.node_id).await?;
    let version = node.version.and_then(|v| v.index).unwrap_or_default();
    let mut spec: NodeSpec = node.spec.unwrap_or_default();
    spec.role = Some(NodeSpecRoleEnum::WORKER);
    ctx.docker.update_node(&local.node_id, spec, UpdateNodeOptions { version: version as i64 }).await?;
    tracing::info!(host = ctx.host, "demoted this manager");
    if !keep_as_node {
        ctx.docker.leave_swarm(Some(LeaveSwarmOptions { force: false })).await?;
    }
    Ok(true)
}
