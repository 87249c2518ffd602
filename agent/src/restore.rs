//! A backup the coordinator asked this host to restore (`coordinator recover`, when no
//! manager survives), fetched on `DownloadBackup` over this agent's mutual TLS and checked
//! against the SHA-256 recorded when it was taken before anything is touched:
//!
//! - Swarm: the Engine is stopped, `/var/lib/docker/swarm` moved aside (kept as
//!   `swarm.before-restore-<unix>`), the archive unpacked in its place (only entries under
//!   `swarm/`), the Engine started, and a new cluster forced from the restored state on this
//!   host's own address (`swarm init --force-new-cluster`): the host is new, and so is its
//!   address. A failed unpack puts the old directory back.
//! - Consul: the snapshot restored into the local server (`PUT /v1/snapshot`, the
//!   management token of this host's `ConsulSpec`).
//!
//! The outcome goes back on `ReportRestore`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::SwarmInitRequest;
use flotilla_proto::v1::{self, BackupKind, agent_service_client::AgentServiceClient};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::backup::{self, BackupError, LINK_TIMEOUT};
use crate::consul::Consul;
use crate::logs::Link;
use crate::roles::swarm::{DEFAULT_ADDR_POOL, SWARM_PORT};

/// How long the Engine may take to answer after it started, and the forced cluster to elect
/// this node.
const ENGINE_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("no session to the coordinator within {0:?}")]
    NoLink(Duration),
    #[error("fetching the backup: {0}")]
    Download(tonic::Status),
    #[error("the backup's SHA-256 is {actual}, not the {expected} recorded when it was taken: nothing restored")]
    Digest { expected: String, actual: String },
    #[error("the backup holds '{0}', outside swarm/: nothing restored")]
    Entry(String),
    #[error("unpacking into {}: {source}", path.display())]
    Unpack { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("the Engine: {0}")]
    Engine(String),
    #[error(transparent)]
    Consul(#[from] crate::consul::ConsulError),
    #[error("unknown backup kind {0}")]
    Kind(i32),
}

/// Restores what `req` names and reports how it went.
pub async fn restore(
    req: v1::RestoreBackup,
    docker: Option<Docker>,
    assignment: Option<v1::Assignment>,
    link: watch::Receiver<Option<Link>>,
) {
    tracing::warn!(id = %req.restore_id, kind = req.kind, "restore asked for by the coordinator");
    let link = tokio::time::timeout(LINK_TIMEOUT, link.clone().wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|l| l.clone()));
    let Some(link) = link else {
        tracing::error!(id = %req.restore_id, "no session to fetch the backup on");
        return;
    };
    let result = match fetch(&link, &req).await {
        Ok(data) => apply(&req, data, docker.as_ref(), assignment.as_ref()).await,
        Err(e) => Err(e),
    };
    let report = match &result {
        Ok(detail) => {
            tracing::warn!(id = %req.restore_id, %detail, "restored");
            v1::RestoreResult { restore_id: req.restore_id.clone(), detail: detail.clone(), ..Default::default() }
        }
        Err(e) => {
            tracing::error!(id = %req.restore_id, error = %e, "restore failed");
            v1::RestoreResult { restore_id: req.restore_id.clone(), error: e.to_string(), ..Default::default() }
        }
    };
    let mut client = AgentServiceClient::with_interceptor(link.channel(), flotilla_proto::protocol_header);
    if let Err(e) = client.report_restore(report).await {
        tracing::error!(id = %req.restore_id, error = %e, "could not report the restore");
    }
}

/// The backup's bytes, checked against the recorded digest.
async fn fetch(link: &Link, req: &v1::RestoreBackup) -> Result<Vec<u8>, RestoreError> {
    let mut client = AgentServiceClient::with_interceptor(link.channel(), flotilla_proto::protocol_header);
    let mut stream = client
        .download_backup(v1::DownloadBackupRequest { restore_id: req.restore_id.clone() })
        .await
        .map_err(RestoreError::Download)?
        .into_inner();
    let mut data = Vec::with_capacity(req.size_bytes.min(backup::CHUNK as u64 * 64) as usize);
    while let Some(c) = stream.message().await.map_err(RestoreError::Download)? {
        data.extend_from_slice(&c.data);
        if c.done {
            break;
        }
    }
    let actual = hex::encode(Sha256::digest(&data));
    if actual != req.sha256 {
        return Err(RestoreError::Digest { expected: req.sha256.clone(), actual });
    }
    Ok(data)
}

async fn apply(
    req: &v1::RestoreBackup,
    data: Vec<u8>,
    docker: Option<&Docker>,
    assignment: Option<&v1::Assignment>,
) -> Result<String, RestoreError> {
    match BackupKind::try_from(req.kind).unwrap_or(BackupKind::Unspecified) {
        BackupKind::Swarm => swarm(docker.ok_or(BackupError::NoEngine)?, data, &req.advertise_addr).await,
        BackupKind::Consul => {
            let spec = backup::consul_spec(assignment)?;
            let c = Consul::new(&format!("127.0.0.1:{}", crate::roles::consul::HTTP_PORT))
                .with_token(&spec.management_token);
            let n = data.len();
            c.restore(data).await?;
            Ok(format!("Consul snapshot of {n} bytes restored"))
        }
        BackupKind::Unspecified => Err(RestoreError::Kind(req.kind)),
    }
}

/// The Swarm restore (see the module's doc).
async fn swarm(d: &Docker, data: Vec<u8>, advertise: &str) -> Result<String, RestoreError> {
    let root = PathBuf::from(crate::engine::data_root(d).await.unwrap_or_else(|| "/var/lib/docker".into()));
    backup::systemctl("stop", "docker.socket").await?;
    backup::systemctl("stop", "docker.service").await?;
    let r = root.clone();
    let unpacked = tokio::task::spawn_blocking(move || replace_swarm_dir(&r, &data))
        .await
        .map_err(|e| RestoreError::Engine(e.to_string()))
        .and_then(|r| r);
    // Started again whatever happened to the unpacking.
    backup::start_engine().await?;
    let aside = unpacked?;
    wait_engine(d).await?;
    force_new_cluster(d, advertise).await?;
    let node = wait_leader(d).await?;
    let pruned = remove_other_managers(d, &node).await?;
    Ok(format!(
        "swarm state restored (node {node}); it leads a new cluster on {advertise}:{SWARM_PORT} (the restored state's other managers removed: {pruned}); the state it replaced is in {}",
        aside.display()
    ))
}

/// `swarm init --force-new-cluster` on `advertise`. The Engine started on the restored state
/// runs that node already; forcing a new cluster stops it first, and on a loaded host its
/// listener on 2377 may not be closed yet when the new one binds ("address already in use"):
/// that answer is retried (the state is kept on a failed forced init) until [`ENGINE_WAIT`].
async fn force_new_cluster(d: &Docker, advertise: &str) -> Result<(), RestoreError> {
    let deadline = Instant::now() + ENGINE_WAIT;
    loop {
        let r = d
            .init_swarm(SwarmInitRequest {
                listen_addr: Some(format!("0.0.0.0:{SWARM_PORT}")),
                advertise_addr: Some(format!("{advertise}:{SWARM_PORT}")),
                force_new_cluster: Some(true),
                default_addr_pool: Some(vec![DEFAULT_ADDR_POOL.to_string()]),
                subnet_size: Some(24),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("address already in use") && Instant::now() < deadline => {
                tracing::info!(error = %e, "the restored node's listener is still closing; forcing again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(RestoreError::Engine(format!("swarm init --force-new-cluster: {e}"))),
        }
    }
}

/// Removes every other manager node the restored state remembers: none of them is in Raft
/// any more, and a manager joining later would otherwise be handed their old addresses to
/// dial. Workers are left: those that come back reconnect as themselves.
async fn remove_other_managers(d: &Docker, me: &str) -> Result<usize, RestoreError> {
    use bollard::models::NodeSpecRoleEnum;
    use bollard::query_parameters::{DeleteNodeOptions, ListNodesOptions, UpdateNodeOptions};
    let engine = |e: bollard::errors::Error| RestoreError::Engine(e.to_string());
    let nodes = d.list_nodes(None::<ListNodesOptions>).await.map_err(engine)?;
    let mut removed = 0;
    for n in nodes {
        let id = n.id.clone().unwrap_or_default();
        let manager = n.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER);
        if id == me || !manager {
            continue;
        }
        let mut spec = n.spec.clone().unwrap_or_default();
        spec.role = Some(NodeSpecRoleEnum::WORKER);
        let version = n.version.as_ref().and_then(|v| v.index).unwrap_or_default() as i64;
        match d.update_node(&id, spec, UpdateNodeOptions { version }).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(engine(e)),
        }
        d.delete_node(&id, Some(DeleteNodeOptions { force: true })).await.map_err(engine)?;
        removed += 1;
    }
    Ok(removed)
}

/// Moves `<root>/swarm` aside and unpacks `gz` (a gzipped tar of `swarm/…`) in its place;
/// returns where the old directory went. On failure the old directory is put back.
pub fn replace_swarm_dir(root: &Path, gz: &[u8]) -> Result<PathBuf, RestoreError> {
    let unpack = |source| RestoreError::Unpack { path: root.to_path_buf(), source };
    // Every entry is checked before anything moves.
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    for e in ar.entries().map_err(unpack)? {
        let e = e.map_err(unpack)?;
        let path = e.path().map_err(unpack)?.into_owned();
        let mut parts = path.components();
        let ok = matches!(parts.next(), Some(std::path::Component::Normal(p)) if p == "swarm")
            && parts.all(|c| matches!(c, std::path::Component::Normal(_)));
        if !ok {
            return Err(RestoreError::Entry(path.display().to_string()));
        }
    }
    let dir = root.join("swarm");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let aside = root.join(format!("swarm.before-restore-{stamp}"));
    if dir.exists() {
        std::fs::rename(&dir, &aside).map_err(unpack)?;
    }
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    ar.set_preserve_permissions(true);
    if let Err(e) = ar.unpack(root) {
        let _ = std::fs::remove_dir_all(&dir);
        if aside.exists() {
            let _ = std::fs::rename(&aside, &dir);
        }
        return Err(unpack(e));
    }
    Ok(aside)
}

async fn wait_engine(d: &Docker) -> Result<(), RestoreError> {
    let deadline = Instant::now() + ENGINE_WAIT;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), d.ping()).await {
            Ok(Ok(_)) => {
                // An Engine held at boot (a relaunched manager) is first started here.
                crate::engine::negotiate(d).await;
                return Ok(());
            }
            Ok(Err(e)) if Instant::now() >= deadline => return Err(RestoreError::Engine(e.to_string())),
            _ if Instant::now() >= deadline => return Err(RestoreError::Engine("no answer".into())),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Waits until this node leads the swarm; its node id.
async fn wait_leader(d: &Docker) -> Result<String, RestoreError> {
    let deadline = Instant::now() + ENGINE_WAIT;
    let mut last = String::from("no answer");
    loop {
        if let Ok(Some(v)) = tokio::time::timeout(Duration::from_secs(5), crate::roles::swarm::view(d)).await {
            if v.manager_status == "leader" {
                return Ok(v.node_id);
            }
            last = format!("state '{}', manager status '{}'", v.local_state, v.manager_status);
        }
        if Instant::now() >= deadline {
            return Err(RestoreError::Engine(format!("not leading the forced cluster after {ENGINE_WAIT:?}: {last}")));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            // Written raw: the tar crate refuses to build a `..` path itself.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("tar").finish().expect("gz")
    }

    #[test]
    fn the_swarm_dir_is_replaced_and_the_old_one_kept_aside() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("swarm/raft")).expect("mkdir");
        std::fs::write(root.path().join("swarm/raft/old"), b"old").expect("write");
        let aside = replace_swarm_dir(root.path(), &gz_of(&[("swarm/raft/wal", b"new")])).expect("restored");
        assert_eq!(std::fs::read(root.path().join("swarm/raft/wal")).expect("new"), b"new");
        assert!(!root.path().join("swarm/raft/old").exists());
        assert_eq!(std::fs::read(aside.join("raft/old")).expect("kept"), b"old");
    }

    #[test]
    fn an_entry_outside_swarm_is_refused_before_anything_moves() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("swarm")).expect("mkdir");
        std::fs::write(root.path().join("swarm/keep"), b"keep").expect("write");
        for bad in ["containers/x", "swarm/../etc/x"] {
            let gz = gz_of(&[("swarm/ok", b"1"), (bad, b"2")]);
            match replace_swarm_dir(root.path(), &gz) {
                Err(RestoreError::Entry(e)) => assert!(e.contains(bad.split('/').next().unwrap_or(bad))),
                Err(RestoreError::Unpack { .. }) => {}
                other => panic!("{bad}: {other:?}"),
            }
            assert_eq!(std::fs::read(root.path().join("swarm/keep")).expect("untouched"), b"keep");
        }
    }
}
