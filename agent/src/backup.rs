//! Backups the coordinator asks for (issue 16), streamed back on an `UploadBackup` call over
//! this agent's mutual TLS (never through a shared disk):
//!
//! - Swarm: on a manager that is not the leader, the Engine is stopped (the other managers
//!   keep quorum: the coordinator checked every manager is reachable first, and asks one host
//!   at a time), `/var/lib/docker/swarm` is archived (tar + gzip), the Engine is started again
//!   — whatever happened to the archive — and the agent waits until its node is a reachable
//!   manager again before it uploads. The agent refuses when its own node leads.
//! - Consul: a snapshot through Consul's own API (`GET /v1/snapshot`), with the management
//!   token of this host's `ConsulSpec`.
//!
//! An archive larger than the coordinator's cap (`TakeBackup.max_bytes`) is refused here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use flotilla_proto::v1::{self, BackupChunk, BackupKind, agent_service_client::AgentServiceClient, role_spec};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::consul::{Consul, ConsulError};
use crate::logs::Link;

/// The most bytes one `BackupChunk` carries (the coordinator decodes at most 1 MiB a message).
pub const CHUNK: usize = 512 * 1024;
/// How long the node may take to be a reachable manager again after its Engine restarted.
pub const BACK_TIMEOUT: Duration = Duration::from_secs(180);
/// How long an upload waits for a session to dial on (one reconnecting after a blip).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "this host's node leads the swarm: a Swarm backup stops the Engine, so it is taken on a manager that does not lead"
    )]
    Leader,
    #[error("this host is no active swarm manager ({0}): Swarm backups are taken on managers")]
    NotManager(String),
    #[error("no Docker Engine client on this host")]
    NoEngine,
    #[error("systemctl {verb} {unit}: {detail}")]
    Systemctl { verb: &'static str, unit: &'static str, detail: String },
    #[error("archiving {}: {source}", path.display())]
    Archive { path: PathBuf, source: std::io::Error },
    #[error("the backup is {size} bytes, over the coordinator's cap of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("the Engine did not come back as a reachable manager within {0:?} (last seen: {1})")]
    NotBack(Duration, String),
    #[error("this host runs no Consul server (its assignment has no consul role)")]
    NoConsul,
    #[error("unknown backup kind {0}")]
    Kind(i32),
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error("the archiving task failed: {0}")]
    Task(String),
}

/// A backup taken, before it is sent.
#[derive(Debug)]
pub struct Taken {
    pub data: Vec<u8>,
    pub engine_version: String,
    pub consul_version: String,
}

/// Takes the backup `req` asks for and uploads it (or the error) on `link`'s channel.
pub async fn take(
    req: v1::TakeBackup,
    docker: Option<Docker>,
    assignment: Option<v1::Assignment>,
    link: watch::Receiver<Option<Link>>,
) {
    let started = Instant::now();
    let kind = BackupKind::try_from(req.kind).unwrap_or(BackupKind::Unspecified);
    tracing::warn!(id = %req.backup_id, kind = kind.as_str_name(), "backup asked for by the coordinator");
    let result = match kind {
        BackupKind::Swarm => swarm(docker.as_ref(), req.max_bytes).await,
        BackupKind::Consul => consul(docker.as_ref(), assignment.as_ref(), req.max_bytes).await,
        BackupKind::Unspecified => Err(BackupError::Kind(req.kind)),
    };
    match &result {
        Ok(t) => tracing::info!(id = %req.backup_id, bytes = t.data.len(), took = ?started.elapsed(), "backup taken"),
        Err(e) => tracing::error!(id = %req.backup_id, error = %e, "backup failed"),
    }
    if let Err(e) = upload(link, &req.backup_id, result).await {
        tracing::error!(id = %req.backup_id, error = %e, "backup upload failed");
    }
}

/// Archives the swarm's state with the Engine stopped (see the module's doc).
async fn swarm(docker: Option<&Docker>, max: u64) -> Result<Taken, BackupError> {
    let d = docker.ok_or(BackupError::NoEngine)?;
    let view = crate::roles::swarm::view(d)
        .await
        .ok_or_else(|| BackupError::NotManager("its Engine does not answer".into()))?;
    if !view.is_manager || view.local_state != "active" {
        return Err(BackupError::NotManager(format!("swarm state '{}'", view.local_state)));
    }
    if view.manager_status == "leader" {
        return Err(BackupError::Leader);
    }
    let engine_version = crate::engine::version(d).await.unwrap_or_default();
    let root = crate::engine::data_root(d).await.unwrap_or_else(|| "/var/lib/docker".into());
    let dir = Path::new(&root).join("swarm");
    systemctl("stop", "docker.socket").await?;
    systemctl("stop", "docker.service").await?;
    let archived = tokio::task::spawn_blocking(move || archive_dir(&dir, max)).await;
    // Started again whatever happened to the archive.
    start_engine().await?;
    let data = archived.map_err(|e| BackupError::Task(e.to_string()))??;
    wait_reachable(d).await?;
    Ok(Taken { data, engine_version, consul_version: String::new() })
}

/// `dir` as a gzipped tar (entries under `swarm/`), at most `max` bytes.
pub fn archive_dir(dir: &Path, max: u64) -> Result<Vec<u8>, BackupError> {
    let err = |source| BackupError::Archive { path: dir.to_path_buf(), source };
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all("swarm", dir).map_err(err)?;
    let data = tar.into_inner().map_err(err)?.finish().map_err(err)?;
    if data.len() as u64 > max {
        return Err(BackupError::TooLarge { size: data.len() as u64, max });
    }
    Ok(data)
}

/// Waits until the local node is an active manager that the swarm counts reachable (or
/// leading) again.
async fn wait_reachable(d: &Docker) -> Result<(), BackupError> {
    let deadline = Instant::now() + BACK_TIMEOUT;
    let mut last = String::from("no answer");
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), crate::roles::swarm::view(d)).await;
        if let Ok(Some(v)) = read {
            if v.local_state == "active" && v.is_manager && matches!(v.manager_status.as_str(), "reachable" | "leader")
            {
                return Ok(());
            }
            last = format!("state '{}', manager status '{}'", v.local_state, v.manager_status);
        }
        if Instant::now() >= deadline {
            return Err(BackupError::NotBack(BACK_TIMEOUT, last));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Starts the Engine again. systemd refuses a unit started more often than its start limit
/// (docker.service: 3 in 60 s — a deploy's TLS restart and two backups in a row are enough),
/// which would leave this manager down: the limit's counter is reset first, and a failed
/// start is tried again (3 times, 2 s apart).
pub async fn start_engine() -> Result<(), BackupError> {
    // A manager relaunched for a restore has no role yet: its Engine is still held at boot.
    if let Err(e) = crate::engine_tls::lift_hold().await {
        tracing::warn!(error = %e, "lifting the Engine's boot hold");
    }
    let mut last = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let _ = systemctl("reset-failed", "docker.service").await;
        match systemctl("start", "docker.service").await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::error!(error = %e, attempt, "starting the Engine again after the backup");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(BackupError::NoEngine))
}

pub async fn systemctl(verb: &'static str, unit: &'static str) -> Result<(), BackupError> {
    match tokio::process::Command::new("systemctl").args([verb, unit]).output().await {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(BackupError::Systemctl { verb, unit, detail: String::from_utf8_lossy(&o.stderr).trim().into() }),
        Err(e) => Err(BackupError::Systemctl { verb, unit, detail: e.to_string() }),
    }
}

/// The Consul server role this host is assigned (its management token).
pub fn consul_spec(assignment: Option<&v1::Assignment>) -> Result<&v1::ConsulSpec, BackupError> {
    assignment
        .into_iter()
        .flat_map(|a| a.roles.iter())
        .find_map(|r| match &r.spec {
            Some(role_spec::Spec::Consul(c)) => Some(c),
            _ => None,
        })
        .ok_or(BackupError::NoConsul)
}

/// A Consul snapshot through the local server's HTTP API, with the management token.
async fn consul(docker: Option<&Docker>, assignment: Option<&v1::Assignment>, max: u64) -> Result<Taken, BackupError> {
    let spec = consul_spec(assignment)?;
    let c = Consul::new(&format!("127.0.0.1:{}", crate::roles::consul::HTTP_PORT)).with_token(&spec.management_token);
    let consul_version = c.version().await?;
    let data = snapshot_once_led(&c).await?.to_vec();
    if data.len() as u64 > max {
        return Err(BackupError::TooLarge { size: data.len() as u64, max });
    }
    let engine_version = match docker {
        Some(d) => crate::engine::version(d).await.unwrap_or_default(),
        None => String::new(),
    };
    Ok(Taken { data, engine_version, consul_version })
}

/// How long a snapshot waits out an election: the servers answer "No cluster leader" while
/// they elect (right after a deploy, or after a server restarted).
const ELECTION_WAIT: Duration = Duration::from_secs(30);

/// `GET /v1/snapshot`, asked again every second while Consul fails it on its side
/// ([`server_side`]), for up to [`ELECTION_WAIT`]; any other answer at once.
async fn snapshot_once_led(c: &Consul) -> Result<bytes::Bytes, ConsulError> {
    let deadline = Instant::now() + ELECTION_WAIT;
    loop {
        match c.snapshot().await {
            Err(e) if server_side(&e) && Instant::now() < deadline => {
                tracing::info!(error = %e, "Consul failed the snapshot on its side; taking it again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// A 500 from the local server: no leader (an election in progress: "No cluster leader"), or
/// the request it forwarded to the leader cut ("connection reset by peer" right after a deploy,
/// while servers join) — both pass; a refusal (403) or an unreachable server does not.
fn server_side(e: &ConsulError) -> bool {
    matches!(e, ConsulError::Status { status: 500, .. })
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("no session to the coordinator within {0:?}")]
    NoLink(Duration),
    #[error("coordinator {addr}: {status}")]
    Rpc { addr: String, status: tonic::Status },
}

/// The chunks of one backup's upload: the data in [`CHUNK`]s, then the closing chunk with
/// the digest and versions — or one chunk with the error.
pub fn chunks(id: &str, result: Result<Taken, BackupError>) -> Vec<BackupChunk> {
    let base = || BackupChunk { backup_id: id.to_string(), ..Default::default() };
    let t = match result {
        Ok(t) => t,
        Err(e) => return vec![BackupChunk { error: e.to_string(), ..base() }],
    };
    let mut out: Vec<BackupChunk> = t.data.chunks(CHUNK).map(|c| BackupChunk { data: c.to_vec(), ..base() }).collect();
    out.push(BackupChunk {
        done: true,
        sha256: hex::encode(Sha256::digest(&t.data)),
        engine_version: t.engine_version,
        consul_version: t.consul_version,
        ..base()
    });
    out
}

async fn upload(
    mut link: watch::Receiver<Option<Link>>,
    id: &str,
    result: Result<Taken, BackupError>,
) -> Result<(), UploadError> {
    let link = tokio::time::timeout(LINK_TIMEOUT, link.wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|l| l.clone()))
        .ok_or(UploadError::NoLink(LINK_TIMEOUT))?;
    let mut client = AgentServiceClient::with_interceptor(link.channel(), flotilla_proto::protocol_header);
    let stream = tokio_stream::iter(chunks(id, result));
    client.upload_backup(stream).await.map_err(|status| UploadError::Rpc { addr: link.addr.clone(), status })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_asked_again_after_a_server_side_failure_only() {
        let status = |status: u16, body: &str| ConsulError::Status {
            addr: "127.0.0.1:8500".into(),
            what: "GET snapshot".into(),
            status,
            body: body.into(),
        };
        assert!(server_side(&status(500, "No cluster leader")));
        assert!(server_side(&status(
            500,
            "failed to decode response: read tcp 10.0.0.10:34081->10.0.0.12:8300: read: connection reset by peer"
        )));
        assert!(!server_side(&status(400, "bad request")));
        let denied =
            ConsulError::Denied { addr: "a".into(), what: "GET snapshot".into(), body: "Permission denied".into() };
        assert!(!server_side(&denied));
        assert!(!server_side(&ConsulError::Unreachable { addr: "a".into(), detail: "refused".into() }));
    }

    #[test]
    fn an_archive_is_chunked_and_closed_with_its_digest() {
        let data: Vec<u8> = (0..(CHUNK * 2 + 10)).map(|i| (i % 251) as u8).collect();
        let t = Taken { data: data.clone(), engine_version: "20.10.24".into(), consul_version: String::new() };
        let c = chunks("b1", Ok(t));
        assert_eq!(c.len(), 4);
        assert!(c.iter().all(|c| c.backup_id == "b1" && c.data.len() <= CHUNK));
        let last = c.last().expect("closing chunk");
        assert!(last.done && last.data.is_empty() && last.error.is_empty());
        assert_eq!(last.sha256, hex::encode(Sha256::digest(&data)));
        let joined: Vec<u8> = c.iter().flat_map(|c| c.data.clone()).collect();
        assert_eq!(joined, data);
        let failed = chunks("b2", Err(BackupError::Leader));
        assert_eq!(failed.len(), 1);
        assert!(!failed[0].done && failed[0].error.contains("leads the swarm"));
    }

    #[test]
    fn a_directory_archives_under_swarm_and_the_cap_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("raft")).expect("mkdir");
        std::fs::write(dir.path().join("raft").join("wal"), b"entries").expect("write");
        let data = archive_dir(dir.path(), 1 << 20).expect("archive");
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(data.as_slice()));
        for e in ar.entries().expect("entries") {
            names.push(e.expect("entry").path().expect("path").display().to_string());
        }
        assert!(names.iter().any(|n| n == "swarm/raft/wal"), "{names:?}");
        assert!(matches!(archive_dir(dir.path(), 10), Err(BackupError::TooLarge { max: 10, .. })));
    }
}
