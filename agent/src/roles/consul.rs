//! The `consul` role: one Consul server container on the host network, data in a named
//! volume, bound and advertised on the host's private address, gossip encrypted with the
//! cluster's key, the UI on. Healthy when it sees a leader and every expected server.
//!
//! Its HTTP API (8500) listens on loopback and the private address only; on AWS the
//! cluster's security group admits the cluster's own hosts alone.

use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, RemoveVolumeOptions, StartContainerOptions,
};
use flotilla_proto::v1::{ConsulSpec, ConsulView, Role, RoleState, RoleStatus};

use super::{RoleCtx, RoleError, ensure_image, find, labels, spec_hash, status};
use crate::consul::Consul;

pub const CONTAINER: &str = "flotilla-consul";
pub const VOLUME: &str = "flotilla-consul-data";
pub const HTTP_PORT: u16 = 8500;

pub fn validate(spec: &ConsulSpec) -> Result<(), RoleError> {
    let image = spec.image.as_ref().map(|i| i.reference.as_str()).unwrap_or_default();
    if image.is_empty() {
        return Err(RoleError::Spec("consul.image is empty".into()));
    }
    if spec.bootstrap_expect == 0 {
        return Err(RoleError::Spec("consul.bootstrap_expect must be at least 1".into()));
    }
    if spec.encrypt_key.len() != 44 {
        return Err(RoleError::Spec("consul.encrypt_key must be the base64 of 32 bytes (44 characters)".into()));
    }
    for j in &spec.retry_join {
        if j.parse::<std::net::IpAddr>().is_err() {
            return Err(RoleError::Spec(format!("consul.retry_join: '{j}' is not an IP address")));
        }
    }
    Ok(())
}

fn command(ctx: &RoleCtx<'_>, spec: &ConsulSpec) -> Vec<String> {
    let mut cmd = vec![
        "agent".to_string(),
        "-server".into(),
        format!("-bootstrap-expect={}", spec.bootstrap_expect),
        format!("-bind={}", ctx.host_address),
        format!("-advertise={}", ctx.host_address),
        format!("-client=127.0.0.1 {}", ctx.host_address),
        format!("-encrypt={}", spec.encrypt_key),
        format!("-node={}", ctx.host),
        "-data-dir=/consul/data".into(),
        "-ui".into(),
        // Servers start together; retry joining every 2 s rather than Consul's 30 s.
        "-retry-interval=2s".into(),
        // HashiCorp's production setting (the default, 5, is for development): elections
        // and failure detection five times faster.
        "-hcl=performance { raft_multiplier = 1 }".into(),
    ];
    if !spec.datacenter.is_empty() {
        cmd.push(format!("-datacenter={}", spec.datacenter));
    }
    for j in &spec.retry_join {
        if j != ctx.host_address {
            cmd.push(format!("-retry-join={j}"));
        }
    }
    cmd
}

/// Converges the Consul container to `spec`; returns the role's status.
pub async fn ensure(ctx: &RoleCtx<'_>, spec: &ConsulSpec) -> Result<RoleStatus, RoleError> {
    validate(spec)?;
    let image = spec.image.as_ref().map(|i| i.reference.clone()).unwrap_or_default();
    let cmd = command(ctx, spec);
    let hash = spec_hash(&[&image, &cmd.join(" ")]);

    let existing = find(ctx.docker, Role::Consul).await?;
    let mut current = None;
    for c in existing {
        let same = c.labels.as_ref().and_then(|l| l.get(super::LABEL_SPEC)).is_some_and(|h| *h == hash);
        let id = c.id.clone().unwrap_or_default();
        if same && current.is_none() {
            current = Some(c);
        } else {
            // Another spec (or a duplicate): replace it. The data volume stays.
            ctx.docker
                .remove_container(&id, Some(RemoveContainerOptions { force: true, ..Default::default() }))
                .await?;
        }
    }
    match current {
        Some(c) => {
            let running = c.state.map(|s| s.to_string()).unwrap_or_default() == "running";
            if !running {
                let id = c.id.unwrap_or_default();
                ctx.docker.start_container(&id, None::<StartContainerOptions>).await?;
            }
        }
        None => {
            let reference = spec.image.clone().unwrap_or_default();
            ensure_image(ctx, Role::Consul, &reference).await?;
            let body = ContainerCreateBody {
                image: Some(image.clone()),
                cmd: Some(cmd),
                labels: Some(labels(ctx, Role::Consul, &hash)),
                host_config: Some(HostConfig {
                    network_mode: Some("host".into()),
                    binds: Some(vec![format!("{VOLUME}:/consul/data")]),
                    restart_policy: Some(RestartPolicy {
                        name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                        maximum_retry_count: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            ctx.docker
                .create_container(
                    Some(CreateContainerOptions { name: Some(CONTAINER.to_string()), ..Default::default() }),
                    body,
                )
                .await?;
            ctx.docker.start_container(CONTAINER, None::<StartContainerOptions>).await?;
            return Ok(status(Role::Consul, RoleState::Starting, "container started"));
        }
    }
    Ok(health(spec.bootstrap_expect).await)
}

/// Keeps the Consul container stopped while the coordinator holds the role down (the
/// failover drill's fault): kills it if it runs (SIGKILL: a crash, not a graceful leave, so
/// the other servers still count it as a voter), and reports the role degraded.
pub async fn hold_down(ctx: &RoleCtx<'_>) -> Result<RoleStatus, RoleError> {
    kill(ctx.docker).await?;
    // No countdown in the message: a status that changes every pass would be re-sent every
    // pass.
    Ok(status(
        Role::Consul,
        RoleState::Degraded,
        "held down by the coordinator (failover drill) until released or its lease runs out",
    ))
}

/// Kills the running Consul container (SIGKILL); whether one was running.
pub async fn kill(docker: &bollard::Docker) -> Result<bool, RoleError> {
    let mut killed = false;
    for c in find(docker, Role::Consul).await? {
        if c.state.map(|s| s.to_string()).unwrap_or_default() == "running" {
            let id = c.id.unwrap_or_default();
            docker
                .kill_container(&id, Some(bollard::query_parameters::KillContainerOptions { signal: "SIGKILL".into() }))
                .await?;
            killed = true;
        }
    }
    Ok(killed)
}

/// Consul's own view: leader and peers, from the local server.
pub async fn view() -> Option<ConsulView> {
    let c = Consul::new(&format!("127.0.0.1:{HTTP_PORT}"));
    let leader = c.leader().await.ok()?;
    let peers = c.peers().await.unwrap_or_default();
    Some(ConsulView { leader, peers })
}

async fn health(expect: u32) -> RoleStatus {
    match view().await {
        None => status(Role::Consul, RoleState::Starting, "Consul's HTTP API does not answer yet"),
        Some(v) if v.leader.is_empty() => {
            status(Role::Consul, RoleState::Starting, format!("no leader yet ({} of {expect} servers)", v.peers.len()))
        }
        Some(v) if (v.peers.len() as u32) < expect => status(
            Role::Consul,
            RoleState::Degraded,
            format!("leader {}, {} of {expect} servers", v.leader, v.peers.len()),
        ),
        Some(v) => status(Role::Consul, RoleState::Running, format!("leader {}, {} servers", v.leader, v.peers.len())),
    }
}

/// Removes the role: a graceful `consul leave`, then the container and its data.
pub async fn remove(ctx: &RoleCtx<'_>) -> Result<bool, RoleError> {
    let existing = find(ctx.docker, Role::Consul).await?;
    if existing.is_empty() {
        return Ok(false);
    }
    for c in existing {
        let id = c.id.unwrap_or_default();
        if c.state.map(|s| s.to_string()).unwrap_or_default() == "running" {
            let _ = super::exec(ctx.docker, &id, &["consul", "leave"]).await;
        }
        ctx.docker.remove_container(&id, Some(RemoveContainerOptions { force: true, ..Default::default() })).await?;
    }
    let _ = ctx.docker.remove_volume(VOLUME, None::<RemoveVolumeOptions>).await;
    Ok(true)
}
