//! The local Docker Engine, through bollard: the unix socket by default, `DOCKER_HOST`
//! honoured. The API version is negotiated, so an older Engine (20.10 speaks 1.41) works.

use bollard::Docker;

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

/// Carries out an engine action (the failover drill's fault): stop or start the Engine
/// through systemd, as the seed's guide kills the manager process.
pub async fn act(_docker: Option<&Docker>, action: flotilla_proto::v1::EngineAction) {
    use flotilla_proto::v1::engine_action::Kind;
    let verb = match Kind::try_from(action.kind) {
        Ok(Kind::StopEngine) => "stop",
        Ok(Kind::StartEngine) => "start",
        _ => {
            tracing::warn!(kind = action.kind, "unknown engine action");
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
