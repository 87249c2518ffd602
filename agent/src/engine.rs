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
