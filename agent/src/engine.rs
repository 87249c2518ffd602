//! The local Docker Engine, through bollard: the unix socket by default, `DOCKER_HOST`
//! honoured. The API version is negotiated, so an older Engine (20.10 speaks 1.41) works.

use std::time::Duration;

use bollard::Docker;
use flotilla_proto::v1;
use tokio::sync::watch;

use crate::reconcile::Holds;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("Docker Engine: {0}")]
    Api(#[from] bollard::errors::Error),
}

/// Where the Engine's socket is when `DOCKER_HOST` is not set (bollard's default).
const SOCKET: &str = "/var/run/docker.sock";

/// Connects and negotiates the API version. Does not fail when the Engine is down at the
/// moment; calls will (and an Engine held at boot gets its version negotiated when the agent
/// starts it: [`negotiate`]).
pub async fn connect() -> Result<Docker, EngineError> {
    let docker = match Docker::connect_with_defaults() {
        Ok(d) => d,
        Err(e) => client_before_socket().ok_or(e)?,
    };
    negotiate(&docker).await;
    Ok(docker)
}

/// Sets the API version the Engine speaks on `docker` and on every clone of it (they share
/// it); nothing when the Engine does not answer.
pub async fn negotiate(docker: &Docker) {
    let _ = docker.clone().negotiate_version().await;
}

/// A manager's Engine held at boot (until the agent writes its TLS listener) has no socket
/// yet, and bollard makes no client for a socket path that does not exist: the path is stood
/// in for by an empty file for that moment only (never over a real socket). `None` when the
/// Engine is not held.
fn client_before_socket() -> Option<Docker> {
    let held = flotilla_cloud_init::paths::ENGINE_HOLD_PATHS.iter().any(|p| std::path::Path::new(p).exists());
    if !held || std::env::var_os("DOCKER_HOST").is_some() {
        return None;
    }
    std::fs::OpenOptions::new().write(true).create_new(true).open(SOCKET).ok()?;
    let docker = Docker::connect_with_unix(SOCKET, 120, bollard::API_DEFAULT_VERSION);
    let _ = std::fs::remove_file(SOCKET);
    docker.ok()
}

/// The Engine's version, or its error.
pub async fn version(docker: &Docker) -> Result<String, EngineError> {
    Ok(docker.version().await?.version.unwrap_or_default())
}

/// The Engine's data root (`/var/lib/docker` unless configured otherwise).
pub async fn data_root(docker: &Docker) -> Option<String> {
    docker.info().await.ok().and_then(|i| i.docker_root_dir)
}

/// Carries out an engine action (the failover drill's fault and its repair): stop or start
/// the Engine through systemd, as the seed's guide kills the manager process; or hold a
/// role's container down (killed now, kept stopped by the reconcile loop until released or
/// the lease ends) and release it.
pub async fn act(docker: Option<&Docker>, action: v1::EngineAction, holds: &watch::Sender<Holds>) {
    use v1::engine_action::Kind;
    let role = v1::Role::try_from(action.role).unwrap_or(v1::Role::Unspecified);
    let verb = match Kind::try_from(action.kind) {
        Ok(Kind::StopEngine) => "stop",
        Ok(Kind::StartEngine) => "start",
        Ok(Kind::StopRole) if role == v1::Role::Consul => {
            let lease = Duration::from_secs(u64::from(action.hold_s.max(1)));
            tracing::warn!(role = role.name(), ?lease, "role held down by the coordinator");
            holds.send_modify(|h| h.hold(role, lease));
            // Kill it now rather than on the next pass: the drill times the fault from here.
            if let Some(d) = docker
                && let Err(e) = crate::roles::consul::kill(d).await
            {
                tracing::error!(error = %e, "killing the consul container");
            }
            return;
        }
        Ok(Kind::StartRole) if role == v1::Role::Consul => {
            tracing::warn!(role = role.name(), "role released by the coordinator");
            holds.send_modify(|h| {
                h.release(role);
            });
            return;
        }
        _ => {
            tracing::warn!(kind = action.kind, role = action.role, "unknown engine action");
            return;
        }
    };
    tracing::warn!(verb, "engine action from the coordinator");
    for unit in ["docker.socket", "docker.service"] {
        if verb == "start" && unit == "docker.socket" {
            continue;
        }
        match tokio::process::Command::new("systemctl").args([verb, unit]).output().await {
            Ok(o) if o.status.success() => {}
            Ok(o) => tracing::error!(verb, unit, stderr = %String::from_utf8_lossy(&o.stderr), "systemctl failed"),
            Err(e) => tracing::error!(verb, unit, error = %e, "systemctl failed"),
        }
    }
}
