//! This agent replaced by another build (`coordinator upgrade --agent`, issue 17), and what
//! tells builds apart ([`own_build`]: the SHA-256 of the running executable, read once from
//! `/proc/self/exe`; the crate version alone does not change between two builds).
//!
//! On an `UpgradeAgent` the agent fetches the binary on `DownloadAgent` over its own mutual
//! TLS, writing it beside the installed one (`<exe>.new`, mode 0755) while hashing it; a
//! digest other than the one pinned, a short or long download, or any I/O error removes the
//! new file and leaves the running agent as it is. A good one is fsynced, the installed
//! binary kept as `<exe>.previous` (a hard link: the rollback), the new file renamed over
//! `<exe>` (atomic) and the directory fsynced. The outcome goes back on `ReportAgentUpgrade`;
//! after an install the agent stops ([`crate::AgentHandle`]'s `upgraded`), and systemd
//! (`Restart=always`) starts the new build. Containers are the Engine's: they keep running,
//! and the new agent's reconcile finds them matching their specs (nothing recreated).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flotilla_proto::v1::{self, agent_service_client::AgentServiceClient};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backup::LINK_TIMEOUT;
use crate::logs::Link;

/// The running executable: where it is installed and its SHA-256.
#[derive(Clone, Debug, Default)]
pub struct OwnBuild {
    /// `None` when the path cannot be read (the agent then refuses to upgrade itself).
    pub path: Option<PathBuf>,
    /// Empty when `/proc/self/exe` cannot be read.
    pub sha256: String,
}

/// This process's build, read once (blocking: the first call hashes the executable).
pub fn own_build() -> &'static OwnBuild {
    static BUILD: OnceLock<OwnBuild> = OnceLock::new();
    BUILD.get_or_init(|| OwnBuild {
        path: std::env::current_exe().ok(),
        sha256: sha256_of(Path::new("/proc/self/exe")).unwrap_or_default(),
    })
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot tell where this agent is installed")]
    NoPath,
    #[error("fetching the new binary: {0}")]
    Download(tonic::Status),
    #[error(
        "the downloaded binary's SHA-256 is {actual}, not the pinned {expected}: nothing installed, this agent keeps running"
    )]
    Digest { expected: String, actual: String },
    #[error("the download ended after {got} of the announced {announced} bytes: nothing installed")]
    Size { got: u64, announced: u64 },
    #[error("{}: {source}: nothing installed", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the install task failed: {0}")]
    Task(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UpgradeError + '_ {
    move |source| UpgradeError::Io { path: path.to_path_buf(), source }
}

/// What an install did.
#[derive(Debug, PartialEq)]
pub enum Installed {
    /// The binary was put in place: restart into it.
    New(String),
    /// This agent already runs that build: nothing to do.
    Already(String),
}

/// Carries out `req` and reports it; cancels `upgraded` once a new build is installed and
/// reported, so the agent exits and systemd starts the new build.
pub async fn upgrade(req: v1::UpgradeAgent, link: watch::Receiver<Option<Link>>, upgraded: CancellationToken) {
    tracing::warn!(id = %req.upgrade_id, sha256 = %req.sha256, "agent upgrade asked for by the coordinator");
    let link = tokio::time::timeout(LINK_TIMEOUT, link.clone().wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|l| l.clone()));
    let Some(link) = link else {
        tracing::error!(id = %req.upgrade_id, "no session to fetch the new agent on");
        return;
    };
    let result = fetch_and_install(&link, &req).await;
    let report = match &result {
        Ok(Installed::New(detail) | Installed::Already(detail)) => {
            tracing::warn!(id = %req.upgrade_id, %detail, "agent upgrade");
            v1::AgentUpgradeResult { upgrade_id: req.upgrade_id.clone(), detail: detail.clone(), ..Default::default() }
        }
        Err(e) => {
            tracing::error!(id = %req.upgrade_id, error = %e, "agent upgrade failed; this build keeps running");
            v1::AgentUpgradeResult { upgrade_id: req.upgrade_id.clone(), error: e.to_string(), ..Default::default() }
        }
    };
    let mut client = AgentServiceClient::with_interceptor(link.channel(), flotilla_proto::protocol_header);
    if let Err(e) = client.report_agent_upgrade(report).await {
        tracing::error!(id = %req.upgrade_id, error = %e, "could not report the agent upgrade");
    }
    if matches!(result, Ok(Installed::New(_))) {
        tracing::warn!("exiting to restart into the new agent build");
        upgraded.cancel();
    }
}

async fn fetch_and_install(link: &Link, req: &v1::UpgradeAgent) -> Result<Installed, UpgradeError> {
    let own = own_build();
    if own.sha256 == req.sha256 {
        return Ok(Installed::Already(format!("already running sha256 {}", req.sha256)));
    }
    let target = own.path.clone().ok_or(UpgradeError::NoPath)?;
    let new = sibling(&target, "new");
    let got = download(link, req, &new).await;
    let installed = match got {
        Ok(()) => {
            let (t, n) = (target.clone(), new.clone());
            tokio::task::spawn_blocking(move || install(&t, &n))
                .await
                .map_err(|e| UpgradeError::Task(e.to_string()))
                .and_then(|r| r)
        }
        Err(e) => Err(e),
    };
    if installed.is_err() {
        let _ = std::fs::remove_file(&new);
    }
    installed?;
    Ok(Installed::New(format!(
        "installed sha256 {} at {} (the previous build kept at {}); restarting",
        req.sha256,
        target.display(),
        sibling(&target, "previous").display()
    )))
}

/// `<path>.<suffix>`, beside `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// Streams the binary into `new` (0755), checking its size and SHA-256 against `req`.
async fn download(link: &Link, req: &v1::UpgradeAgent, new: &Path) -> Result<(), UpgradeError> {
    let mut client = AgentServiceClient::with_interceptor(link.channel(), flotilla_proto::protocol_header);
    let mut stream = client
        .download_agent(v1::DownloadAgentRequest { upgrade_id: req.upgrade_id.clone() })
        .await
        .map_err(UpgradeError::Download)?
        .into_inner();
    let mut file = open_new(new).map_err(io(new))?;
    let mut hash = Sha256::new();
    let mut got = 0u64;
    while let Some(c) = stream.message().await.map_err(UpgradeError::Download)? {
        got += c.data.len() as u64;
        if got > req.size_bytes {
            return Err(UpgradeError::Size { got, announced: req.size_bytes });
        }
        hash.update(&c.data);
        file.write_all(&c.data).map_err(io(new))?;
        if c.done {
            break;
        }
    }
    if got != req.size_bytes {
        return Err(UpgradeError::Size { got, announced: req.size_bytes });
    }
    check_digest(&req.sha256, &hex::encode(hash.finalize()))?;
    file.sync_all().map_err(io(new))
}

fn check_digest(expected: &str, actual: &str) -> Result<(), UpgradeError> {
    if actual != expected {
        return Err(UpgradeError::Digest { expected: expected.to_string(), actual: actual.to_string() });
    }
    Ok(())
}

fn open_new(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o755).open(path)
}

/// Keeps `target` as `<target>.previous` (a hard link), renames `new` over `target`, fsyncs
/// the directory.
fn install(target: &Path, new: &Path) -> Result<(), UpgradeError> {
    let previous = sibling(target, "previous");
    let _ = std::fs::remove_file(&previous);
    if std::fs::hard_link(target, &previous).is_err() {
        std::fs::copy(target, &previous).map_err(io(&previous))?;
    }
    std::fs::rename(new, target).map_err(io(target))?;
    let dir = target.parent().unwrap_or(Path::new("/"));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_other_than_the_pinned_one_is_refused() {
        assert!(check_digest("ab", "ab").is_ok());
        let e = check_digest("ab", "cd").expect_err("mismatch");
        let m = e.to_string();
        assert!(m.contains("cd, not the pinned ab") && m.contains("keeps running"), "{m}");
    }

    #[test]
    fn the_install_keeps_the_old_build_and_replaces_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("flotilla-agent");
        std::fs::write(&target, b"old build").expect("old");
        let new = sibling(&target, "new");
        assert_eq!(new, dir.path().join("flotilla-agent.new"));
        let mut f = open_new(&new).expect("new");
        f.write_all(b"new build").expect("write");
        drop(f);
        install(&target, &new).expect("install");
        assert_eq!(std::fs::read(&target).expect("target"), b"new build");
        assert_eq!(std::fs::read(sibling(&target, "previous")).expect("previous"), b"old build");
        assert!(!new.exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&target).expect("meta").permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn the_own_build_is_this_executable() {
        let b = own_build();
        assert_eq!(b.sha256.len(), 64);
        assert_eq!(b.sha256, sha256_of(b.path.as_deref().expect("path")).expect("hash"));
    }
}
