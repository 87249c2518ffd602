//! The agent binary, served over HTTPS on the agent port (the cluster CA's TLS) so that
//! user-data can fetch it from the coordinator: `GET /v1/agent/flotilla-agent`, and its
//! digest at `GET /v1/agent/flotilla-agent.sha256`. User-data pins the CA and checks the
//! digest it was rendered with, so a tampered or stale binary is refused on the host.
//!
//! Which binary: `--agent-binary PATH` when given; else `flotilla-agent` next to this
//! executable; else this executable itself, which acts as the agent when invoked under the
//! name `flotilla-agent` (so `cargo run --bin coordinator` alone ships a working agent).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The URL path of the binary.
pub const PATH: &str = flotilla_cloud_init::paths::AGENT_DOWNLOAD_PATH;

#[derive(Debug, thiserror::Error)]
pub enum AgentBinaryError {
    #[error("agent binary {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot find this executable to serve as the agent: {0}")]
    NoExe(std::io::Error),
}

/// The binary's bytes and digest, loaded once.
#[derive(Clone)]
pub struct AgentBinary {
    pub path: PathBuf,
    pub bytes: Bytes,
    pub sha256: String,
}

impl AgentBinary {
    pub fn load(path: &Path) -> Result<Self, AgentBinaryError> {
        let bytes =
            std::fs::read(path).map_err(|source| AgentBinaryError::Read { path: path.to_path_buf(), source })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(Self { path: path.to_path_buf(), bytes: Bytes::from(bytes), sha256 })
    }

    /// The default choice described in the module docs.
    pub fn default_path() -> Result<PathBuf, AgentBinaryError> {
        let exe = std::env::current_exe().map_err(AgentBinaryError::NoExe)?;
        let sibling = exe.with_file_name("flotilla-agent");
        Ok(if sibling.is_file() { sibling } else { exe })
    }
}

/// Adds the download routes to the agent port's router.
pub fn routes(router: axum::Router, binary: Option<Arc<AgentBinary>>) -> axum::Router {
    let bin = binary.clone();
    let digest = binary;
    router
        .route(
            PATH,
            axum::routing::get(move || {
                let bin = bin.clone();
                async move { serve(bin, false) }
            }),
        )
        .route(
            const_format_sha256(),
            axum::routing::get(move || {
                let bin = digest.clone();
                async move { serve(bin, true) }
            }),
        )
}

fn serve(bin: Option<Arc<AgentBinary>>, digest: bool) -> Response {
    let Some(bin) = bin else {
        return (StatusCode::NOT_FOUND, "this control plane serves no agent binary\n").into_response();
    };
    if digest {
        return format!("{}  flotilla-agent\n", bin.sha256).into_response();
    }
    let mut resp = bin.bytes.clone().into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    resp
}

/// The digest's URL path: the binary's path plus `.sha256`.
fn const_format_sha256() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| format!("{PATH}.sha256"))
}
