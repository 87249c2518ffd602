//! A stored backup restored onto a connected host (`coordinator recover` when no manager
//! survives). [`ControlPlane::restore_backup`] opens the archive — digests checked, refused
//! when changed —, asks the host's agent (`RestoreBackup` on its session) and waits for its
//! answer; the agent fetches the bytes on `DownloadBackup` ([`ControlPlane::restore_download`],
//! only the host that was asked, only once) over its own mutual TLS, checks the SHA-256,
//! applies the backup and answers on `ReportRestore` ([`ControlPlane::restore_reported`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use flotilla_proto::v1::{self, BackupKind};
use tokio::sync::oneshot;

use super::archive::{self, ArchiveError};
use super::kind_name;
use crate::control_plane::core::ControlPlane;
use crate::control_plane::session::AuthenticatedHost;
use crate::control_plane::untrusted::{DETAIL_MAX, clean};

/// How long an agent may take to apply a restore (a Swarm one stops and starts its Engine).
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);
/// The most bytes one `BackupChunk` carries.
pub const CHUNK: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("backup '{0}' has an unknown kind")]
    Kind(String),
    #[error("host '{0}' has no open session; its agent cannot be asked to restore")]
    NotConnected(String),
    #[error("the agent of '{host}' could not restore {id}: {message}")]
    Agent { host: String, id: String, message: String },
    #[error(
        "the agent of '{host}' did not report the restore of {id} within {after:?} (see `coordinator logs --host {host}`)"
    )]
    TimedOut { host: String, id: String, after: Duration },
    #[error("restore '{id}' was not asked of host '{host}' (or its bytes were fetched already)")]
    Unknown { id: String, host: String },
    #[error("the backup's reading task failed: {0}")]
    Task(String),
}

struct Pending {
    host: String,
    /// Taken by the one `DownloadBackup` allowed.
    data: Option<Vec<u8>>,
    sha256: String,
    done: oneshot::Sender<Result<String, String>>,
}

/// The restores under way, by restore id.
#[derive(Default)]
pub struct Restores {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Restores {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `data` as the chunks of a `DownloadBackup` answer: [`CHUNK`]s, then the closing one.
pub fn chunks(id: &str, data: &[u8], sha256: &str) -> Vec<v1::BackupChunk> {
    let base = || v1::BackupChunk { backup_id: id.to_string(), ..Default::default() };
    let mut out: Vec<v1::BackupChunk> =
        data.chunks(CHUNK).map(|c| v1::BackupChunk { data: c.to_vec(), ..base() }).collect();
    out.push(v1::BackupChunk { done: true, sha256: sha256.to_string(), ..base() });
    out
}

impl ControlPlane {
    /// Restores backup `backup_id` onto `host` (see the module's doc); the agent's account of
    /// what it did.
    pub async fn restore_backup(
        &self,
        host: &str,
        backup_id: &str,
        advertise_addr: &str,
        by: &str,
    ) -> Result<String, RestoreError> {
        let dir = self.config.state_dir.clone();
        let id = backup_id.to_string();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            let meta = archive::find(&dir, &id)?;
            let data = archive::open(&dir, &meta)?;
            Ok::<_, ArchiveError>((meta, data))
        })
        .await
        .map_err(|e| RestoreError::Task(e.to_string()))??;
        let kind = match meta.kind.as_str() {
            "swarm" => BackupKind::Swarm,
            "consul" => BackupKind::Consul,
            _ => return Err(RestoreError::Kind(meta.id)),
        };
        let restore_id = format!("{}-{}-{}", self.clock.now_ms(), kind_name(kind), host);
        let (done, rx) = oneshot::channel();
        let pending = Pending { host: host.to_string(), data: Some(data), sha256: meta.sha256.clone(), done };
        self.backups.restores.lock().insert(restore_id.clone(), pending);
        let req = v1::RestoreBackup {
            restore_id: restore_id.clone(),
            kind: kind as i32,
            size_bytes: meta.size_bytes,
            sha256: meta.sha256.clone(),
            advertise_addr: advertise_addr.to_string(),
        };
        let msg = v1::CoordinatorMessage { body: Some(v1::coordinator_message::Body::RestoreBackup(req)) };
        if !self.sessions.send(host, msg) {
            self.backups.restores.lock().remove(&restore_id);
            return Err(RestoreError::NotConnected(host.to_string()));
        }
        tracing::warn!(%host, backup = %meta.id, %restore_id, "restore asked for");
        let got = tokio::time::timeout(RESTORE_TIMEOUT, rx).await;
        self.backups.restores.lock().remove(&restore_id);
        let id = meta.id.clone();
        match got {
            Ok(Ok(Ok(detail))) => {
                self.audit_by("backup.restored", host, format!("{} {id}: {detail}", meta.kind), "", by);
                Ok(detail)
            }
            Ok(Ok(Err(message))) => {
                self.audit_by("backup.restore_failed", host, format!("{} {id}: {message}", meta.kind), "", by);
                Err(RestoreError::Agent { host: host.to_string(), id, message })
            }
            Ok(Err(_)) | Err(_) => Err(RestoreError::TimedOut { host: host.to_string(), id, after: RESTORE_TIMEOUT }),
        }
    }

    /// The bytes of restore `restore_id` for `who`, once; with their SHA-256.
    pub fn restore_download(
        &self,
        who: &AuthenticatedHost,
        restore_id: &str,
    ) -> Result<Vec<v1::BackupChunk>, RestoreError> {
        let mut p = self.backups.restores.lock();
        let unknown = || RestoreError::Unknown { id: clean(restore_id, DETAIL_MAX), host: who.name.clone() };
        let pending = p.get_mut(restore_id).filter(|x| x.host == who.name).ok_or_else(unknown)?;
        let data = pending.data.take().ok_or_else(unknown)?;
        Ok(chunks(restore_id, &data, &pending.sha256))
    }

    /// `who`'s report of how restore `r.restore_id` ended, to the waiting
    /// [`ControlPlane::restore_backup`].
    pub fn restore_reported(&self, who: &AuthenticatedHost, r: v1::RestoreResult) -> Result<(), RestoreError> {
        let pending = {
            let mut p = self.backups.restores.lock();
            match p.get(&r.restore_id) {
                Some(x) if x.host == who.name => p.remove(&r.restore_id),
                _ => None,
            }
        };
        let pending = pending
            .ok_or_else(|| RestoreError::Unknown { id: clean(&r.restore_id, DETAIL_MAX), host: who.name.clone() })?;
        let result = match r.error.is_empty() {
            true => Ok(clean(&r.detail, DETAIL_MAX)),
            false => Err(clean(&r.error, DETAIL_MAX)),
        };
        let _ = pending.done.send(result);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_is_chunked_and_closed_with_the_recorded_digest() {
        let data: Vec<u8> = (0..(CHUNK + 7)).map(|i| (i % 13) as u8).collect();
        let c = chunks("r1", &data, "abc");
        assert_eq!(c.len(), 3);
        assert!(c.iter().all(|c| c.backup_id == "r1" && c.data.len() <= CHUNK));
        let last = c.last().expect("last");
        assert!(last.done && last.data.is_empty() && last.sha256 == "abc");
        assert_eq!(c.iter().flat_map(|c| c.data.clone()).collect::<Vec<u8>>(), data);
    }
}
