//! The roles a host can hold, as reconciled state on its Engine.
//!
//! - [`consul`]: a Consul server container (the discovery backend).
//! - [`manager`]: a Swarm-mode manager; the first one initialises the swarm and publishes
//!   how to join in Consul's KV.
//! - [`node`]: a Swarm worker that finds the swarm through Consul.
//! - [`swarm`]: the swarm state and the join data both read and write.
//!
//! This module holds what they share: the labels every object carries (so a restarted
//! agent adopts what it finds), finding those objects, and pulling images with progress.

pub mod consul;
pub mod manager;
pub mod node;
pub mod swarm;

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::{CreateImageOptions, ListContainersOptions};
use flotilla_proto::v1::{Role, RoleState, RoleStatus};
use futures::StreamExt;
use tokio::sync::watch;

pub const LABEL_CLUSTER: &str = "flotilla.cluster";
pub const LABEL_ROLE: &str = "flotilla.role";
pub const LABEL_HOST: &str = "flotilla.host";
/// A hash of the spec a container was created from: a different hash means recreate.
pub const LABEL_SPEC: &str = "flotilla.spec";

/// Everything a role's reconcile step needs.
pub struct RoleCtx<'a> {
    pub docker: &'a Docker,
    pub cluster: &'a str,
    pub host: &'a str,
    pub host_address: &'a str,
    /// Where role statuses are published (for progress while pulling).
    pub progress: &'a watch::Sender<Vec<RoleStatus>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("Docker Engine: {0}")]
    Engine(#[from] bollard::errors::Error),
    #[error("pulling {image}: {message}")]
    Pull { image: String, message: String },
    #[error("{0}")]
    Consul(#[from] crate::consul::ConsulError),
    #[error("Consul at {addr} has no leader yet")]
    NoConsulLeader { addr: String },
    #[error("join data in Consul does not parse: {0}")]
    JoinDataParse(serde_json::Error),
    #[error("join data does not encode: {0}")]
    JoinDataEncode(serde_json::Error),
    /// A manager's Engine is in a swarm with another cluster id than the published one.
    #[error(
        "this Engine belongs to another swarm ({theirs}), not this cluster's ({ours}); not forcing it out — run `docker swarm leave --force` on the host if that is intended"
    )]
    ForeignSwarm { theirs: String, ours: String },
    /// A worker's Engine knows managers this cluster did not publish.
    #[error(
        "this Engine belongs to another swarm (managers {managers:?}), not this cluster's ({ours}); not forcing it out — run `docker swarm leave --force` on the host if that is intended"
    )]
    ForeignSwarmWorker { managers: Vec<String>, ours: String },
    #[error("invalid spec: {0}")]
    Spec(String),
    #[error(transparent)]
    ConsulConfig(#[from] consul::config::ConfigError),
}

/// A host name as the cluster uses them (a DNS label).
pub fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

pub fn status(role: Role, state: RoleState, message: impl Into<String>) -> RoleStatus {
    RoleStatus { role: role as i32, state: state as i32, message: message.into(), progress_percent: 0 }
}

/// The labels of an object `role` creates from a spec with `spec_hash`.
pub fn labels(ctx: &RoleCtx<'_>, role: Role, spec_hash: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_CLUSTER.to_string(), ctx.cluster.to_string()),
        (LABEL_ROLE.to_string(), role.name().to_string()),
        (LABEL_HOST.to_string(), ctx.host.to_string()),
        (LABEL_SPEC.to_string(), spec_hash.to_string()),
    ])
}

/// Containers carrying `flotilla.role=<role>`, running or not.
pub async fn find(docker: &Docker, role: Role) -> Result<Vec<bollard::models::ContainerSummary>, RoleError> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_ROLE}={}", role.name())])]);
    Ok(docker
        .list_containers(Some(ListContainersOptions { all: true, filters: Some(filters), ..Default::default() }))
        .await?)
}

/// Makes sure `image` is present, pulling it through the Engine (the registry's own error
/// on failure) and publishing progress for `role` while it does. Never pulls an image it
/// was not given.
pub async fn ensure_image(
    ctx: &RoleCtx<'_>,
    role: Role,
    image: &flotilla_proto::v1::ImageRef,
) -> Result<(), RoleError> {
    let credentials = (!image.username.is_empty()).then(|| bollard::auth::DockerCredentials {
        username: Some(image.username.clone()),
        password: Some(image.password.clone()),
        ..Default::default()
    });
    let image = image.reference.as_str();
    if ctx.docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    let (name, tag) = split_reference(image);
    let mut stream = ctx.docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(name.to_string()),
            tag: Some(tag.to_string()),
            ..Default::default()
        }),
        None,
        credentials,
    );
    let mut layers: HashMap<String, (i64, i64)> = HashMap::new();
    let mut last_pct = u32::MAX;
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| RoleError::Pull { image: image.to_string(), message: engine_message(&e) })?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(RoleError::Pull { image: image.to_string(), message: err });
        }
        if let (Some(id), Some(d)) = (info.id, info.progress_detail)
            && let (Some(c), Some(t)) = (d.current, d.total)
        {
            layers.insert(id, (c, t));
        }
        let (c, t) = layers.values().fold((0i64, 0i64), |(a, b), (c, t)| (a + c, b + t));
        let pct = if t > 0 { ((c * 100) / t).clamp(0, 100) as u32 } else { 0 };
        if pct != last_pct {
            last_pct = pct;
            ctx.progress.send_modify(|all| {
                let mut s = status(role, RoleState::Pulling, format!("pulling {image}"));
                s.progress_percent = pct;
                upsert(all, s);
            });
        }
    }
    Ok(())
}

/// Replaces the status of the same role in `all`, or adds it.
pub fn upsert(all: &mut Vec<RoleStatus>, s: RoleStatus) {
    match all.iter_mut().find(|x| x.role == s.role) {
        Some(x) => *x = s,
        None => all.push(s),
    }
}

/// `repo[:tag]` → (repo, tag), minding a registry port (`10.0.0.2:5000/x/y:1.2`).
pub fn split_reference(image: &str) -> (&str, &str) {
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// The Engine's own message out of a bollard error.
pub fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// A stable short hash of a spec's fields.
pub fn spec_hash(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Runs a command in a container and returns its combined output (best effort).
pub async fn exec(docker: &Docker, container: &str, cmd: &[&str]) -> Result<String, RoleError> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut out = String::new();
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&created.id, None).await? {
        while let Some(Ok(chunk)) = output.next().await {
            out.push_str(&chunk.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn references_split_at_the_tag_not_the_registry_port() {
        assert_eq!(split_reference("hashicorp/consul:1.20"), ("hashicorp/consul", "1.20"));
        assert_eq!(
            split_reference("10.213.0.2:5000/flotilla/consul:1.8.7"),
            ("10.213.0.2:5000/flotilla/consul", "1.8.7")
        );
        assert_eq!(split_reference("10.213.0.2:5000/hello"), ("10.213.0.2:5000/hello", "latest"));
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
    }
}
