//! The `consul` role: one Consul server container on the host network, data in a named
//! volume, bound and advertised on the host's private address, the UI on. Healthy when it
//! sees a leader and every expected server.
//!
//! Locked down (issue 14): ACLs on with the default policy deny, gossip encrypted with the
//! cluster's key, server RPC over mutual TLS with a certificate from the cluster's Consul CA
//! (`verify_server_hostname`: only a holder of a `server.<datacenter>.consul` certificate
//! from that CA can act as a server). The secrets are in 0600 files ([`config`]), never in
//! the container's argv or environment. The agent whose Consul leads keeps the cluster's
//! policies and tokens ([`acl`]).
//!
//! Its HTTP API (8500) listens on loopback and the private address only, plain HTTP: every
//! KV read and write needs a token (on AWS the cluster's security group admits the cluster's
//! own hosts alone; the managers, which hold the write token, use the server on loopback).

pub mod acl;
pub mod config;

use std::path::Path;

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
/// Consul's server RPC port (the Raft leader's address is `<ip>:8300`).
pub const RPC_PORT: u16 = 8300;

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
    if !is_uuid(&spec.management_token) || !is_uuid(&spec.agent_token) {
        return Err(RoleError::Spec(
            "consul.management_token and consul.agent_token must be UUIDs (the control plane fills them)".into(),
        ));
    }
    let tls = [&spec.tls_cert_pem, &spec.tls_key_pem, &spec.tls_ca_pem];
    if tls.iter().any(|p| p.is_empty()) && tls.iter().any(|p| !p.is_empty()) {
        return Err(RoleError::Spec("consul.tls_*: give all three (certificate, key, CA) or none".into()));
    }
    for t in &spec.tokens {
        let role_ok = matches!(Role::try_from(t.role), Ok(Role::Consul | Role::Manager | Role::Node));
        if !role_ok || !super::valid_host(&t.host) || !is_uuid(&t.accessor_id) || !is_uuid(&t.secret_id) {
            return Err(RoleError::Spec(format!(
                "consul.tokens: the token of '{}' needs a role (consul, manager or node), a host name and UUID ids",
                t.host
            )));
        }
    }
    Ok(())
}

/// `8-4-4-4-12` hex digits, the form Consul wants for token ids.
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The container's argv: no secret in it (they are in [`config`]'s files).
fn command(ctx: &RoleCtx<'_>, spec: &ConsulSpec) -> Vec<String> {
    let mut cmd = vec![
        "agent".to_string(),
        "-server".into(),
        format!("-bootstrap-expect={}", spec.bootstrap_expect),
        format!("-bind={}", ctx.host_address),
        format!("-advertise={}", ctx.host_address),
        format!("-client=127.0.0.1 {}", ctx.host_address),
        format!("-node={}", ctx.host),
        "-data-dir=/consul/data".into(),
        format!("-config-dir={}", config::CONTAINER_DIR),
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

/// What identifies the container a spec needs: the image, the argv and the secrets' files
/// (a new key, token or certificate recreates the container) — but not the `-retry-join`
/// addresses: they matter only for a first join (a running server keeps its peers in its
/// data), and a replaced host's new address must not restart every other server at once.
fn container_hash(image: &str, cmd: &[String], files: &[(&'static str, String)]) -> String {
    let cmd_line = cmd.iter().filter(|a| !a.starts_with("-retry-join=")).cloned().collect::<Vec<_>>().join(" ");
    let mut parts = vec![image, cmd_line.as_str()];
    for (name, body) in files {
        parts.extend([*name, body.as_str()]);
    }
    spec_hash(&parts)
}

/// Converges the Consul container to `spec`; returns the role's status.
pub async fn ensure(ctx: &RoleCtx<'_>, spec: &ConsulSpec) -> Result<RoleStatus, RoleError> {
    validate(spec)?;
    let image = spec.image.as_ref().map(|i| i.reference.clone()).unwrap_or_default();
    let cmd = command(ctx, spec);
    let files = config::files(spec);
    let hash = container_hash(&image, &cmd, &files);

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
    config::write(Path::new(config::HOST_DIR), &files)?;
    match current {
        Some(c) => {
            let running = c.state.map(|s| s.to_string()).unwrap_or_default() == "running";
            if !running {
                let id = c.id.unwrap_or_default();
                ctx.docker.start_container(&id, None::<StartContainerOptions>).await?;
            }
        }
        None => {
            create(ctx, spec, &image, cmd, &hash).await?;
            return Ok(status(Role::Consul, RoleState::Starting, "container started"));
        }
    }
    let view = view().await;
    let health = health(view.as_ref(), spec.bootstrap_expect);
    Ok(match view {
        Some(v) if v.leader == format!("{}:{RPC_PORT}", ctx.host_address) => keep_acl(ctx, spec, health).await,
        _ => health,
    })
}

async fn create(
    ctx: &RoleCtx<'_>,
    spec: &ConsulSpec,
    image: &str,
    cmd: Vec<String>,
    hash: &str,
) -> Result<(), RoleError> {
    let reference = spec.image.clone().unwrap_or_default();
    ensure_image(ctx, Role::Consul, &reference).await?;
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(cmd),
        // HashiCorp's image drops to its `consul` user unless told not to; the config files
        // are root's, 0600. (Flotilla's lab image runs Consul directly; the variable is inert.)
        env: Some(vec!["CONSUL_DISABLE_PERM_MGMT=1".to_string()]),
        labels: Some(labels(ctx, Role::Consul, hash)),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            binds: Some(vec![
                format!("{VOLUME}:/consul/data"),
                format!("{}:{}:ro", config::HOST_DIR, config::CONTAINER_DIR),
            ]),
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
    Ok(())
}

/// On the host whose Consul leads: converges the cluster's ACL objects ([`acl`]) and says
/// so in `health`'s message; a failure degrades the role with Consul's own answer.
async fn keep_acl(ctx: &RoleCtx<'_>, spec: &ConsulSpec, health: RoleStatus) -> RoleStatus {
    let c = Consul::new(&format!("127.0.0.1:{HTTP_PORT}")).with_token(&spec.management_token);
    let dc = if spec.datacenter.is_empty() { "dc1" } else { spec.datacenter.as_str() };
    match acl::ensure(&c, ctx.cluster, dc, &spec.tokens).await {
        Ok(changes) => {
            if changes.any() {
                tracing::info!(?changes, "converged Consul's ACL policies and tokens");
            }
            let mut h = health;
            h.message = format!("{}; leads, keeps {} ACL tokens", h.message, spec.tokens.len());
            h
        }
        Err(e) => status(Role::Consul, RoleState::Degraded, format!("keeping Consul's ACL tokens: {e}")),
    }
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

fn health(view: Option<&ConsulView>, expect: u32) -> RoleStatus {
    match view {
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

/// Removes the role: a graceful `consul leave` (with the management token of the last
/// spec, from its configuration file), then the container, its data and its configuration.
pub async fn remove(ctx: &RoleCtx<'_>) -> Result<bool, RoleError> {
    let existing = find(ctx.docker, Role::Consul).await?;
    if existing.is_empty() {
        return Ok(false);
    }
    for c in existing {
        let id = c.id.unwrap_or_default();
        if c.state.map(|s| s.to_string()).unwrap_or_default() == "running" {
            // A graceful leave needs `agent:write`: the management token, over the API (a
            // `consul leave -token=…` would show it in `ps`).
            let token = config::management_token(Path::new(config::HOST_DIR)).unwrap_or_default();
            let local = Consul::new(&format!("127.0.0.1:{HTTP_PORT}")).with_token(&token);
            if let Err(e) = local.leave().await {
                tracing::warn!(error = %e, "consul leave");
            }
        }
        ctx.docker.remove_container(&id, Some(RemoveContainerOptions { force: true, ..Default::default() })).await?;
    }
    let _ = ctx.docker.remove_volume(VOLUME, None::<RemoveVolumeOptions>).await;
    config::remove(Path::new(config::HOST_DIR))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::container_hash;

    #[test]
    fn a_new_retry_join_address_keeps_the_container_and_anything_else_replaces_it() {
        let cmd = |join: &str, expect: &str| -> Vec<String> {
            vec!["agent".into(), format!("-bootstrap-expect={expect}"), format!("-retry-join={join}")]
        };
        let files = vec![("gossip.json", "{}".to_string())];
        let base = container_hash("consul:1", &cmd("10.0.0.2", "3"), &files);
        assert_eq!(base, container_hash("consul:1", &cmd("10.0.0.9", "3"), &files));
        assert_ne!(base, container_hash("consul:1", &cmd("10.0.0.2", "5"), &files));
        assert_ne!(base, container_hash("consul:2", &cmd("10.0.0.2", "3"), &files));
        assert_ne!(
            base,
            container_hash("consul:1", &cmd("10.0.0.2", "3"), &[("gossip.json", "{\"k\":1}".to_string())])
        );
    }
}
