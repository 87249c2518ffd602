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

/// Connects and negotiates the API version. Does not fail when the Engine is down at the
/// moment; calls will.
pub async fn connect() -> Result<Docker, EngineError> {
    let docker = Docker::connect_with_defaults()?;
    match docker.clone().negotiate_version().await {
        Ok(d) => Ok(d),
        Err(_) => Ok(docker),
    }
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
