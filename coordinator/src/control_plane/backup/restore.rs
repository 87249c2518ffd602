//! A stored backup restored onto a connected host (`coordinator recover` when no manager
//! survives). [`ControlPlane::restore_backup`] opens the archive — digests checked, refused
//! when changed —, asks the host's agent (`RestoreBackup` on its session) and waits for its
//! answer; the agent fetches the bytes on `DownloadBackup` ([`ControlPlane::restore_download`],
//! only the host that was asked, only once) over its own mutual TLS, checks the SHA-256,
//! applies the backup and answers on `ReportRestore` ([`ControlPlane::restore_reported`]).

use std::time::Duration;

use flotilla_proto::v1::{self, BackupKind};

use super::archive::{self, ArchiveError};
use super::kind_name;
use crate::control_plane::core::ControlPlane;
use crate::control_plane::pending::{Answer, CHUNK, NotAsked, Pending};
use crate::control_plane::session::AuthenticatedHost;

/// How long an agent may take to apply a restore (a Swarm one stops and starts its Engine).
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

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
    #[error("restore {0}")]
    Unknown(#[from] NotAsked),
    #[error("the backup's reading task failed: {0}")]
    Task(String),
}

/// The bytes a restore's host fetches, with their SHA-256.
pub struct Payload {
    data: Vec<u8>,
    sha256: String,
}

/// The restores under way, by restore id.
pub type Restores = Pending<Payload>;

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
        let req = v1::RestoreBackup {
            restore_id: restore_id.clone(),
            kind: kind as i32,
            size_bytes: meta.size_bytes,
            sha256: meta.sha256.clone(),
            advertise_addr: advertise_addr.to_string(),
        };
        let msg = v1::CoordinatorMessage { body: Some(v1::coordinator_message::Body::RestoreBackup(req)) };
        let send = || self.sessions.send(host, msg);
        tracing::warn!(%host, backup = %meta.id, %restore_id, "restore asked for");
        let payload = Payload { data, sha256: meta.sha256.clone() };
        let id = meta.id.clone();
        match self.backups.restores.ask(&restore_id, host, payload, send, RESTORE_TIMEOUT).await {
            Answer::Done(detail) => {
                self.audit_by("backup.restored", host, format!("{} {id}: {detail}", meta.kind), "", by);
                Ok(detail)
            }
            Answer::Failed(message) => {
                self.audit_by("backup.restore_failed", host, format!("{} {id}: {message}", meta.kind), "", by);
                Err(RestoreError::Agent { host: host.to_string(), id, message })
            }
            Answer::NotConnected => Err(RestoreError::NotConnected(host.to_string())),
            Answer::TimedOut => Err(RestoreError::TimedOut { host: host.to_string(), id, after: RESTORE_TIMEOUT }),
        }
    }

    /// The bytes of restore `restore_id` for `who`, once; with their SHA-256.
    pub fn restore_download(
        &self,
        who: &AuthenticatedHost,
        restore_id: &str,
    ) -> Result<Vec<v1::BackupChunk>, RestoreError> {
        let p = self.backups.restores.take(restore_id, &who.name)?;
        Ok(chunks(restore_id, &p.data, &p.sha256))
    }

    /// `who`'s report of how restore `r.restore_id` ended, to the waiting
    /// [`ControlPlane::restore_backup`].
    pub fn restore_reported(&self, who: &AuthenticatedHost, r: v1::RestoreResult) -> Result<(), RestoreError> {
        Ok(self.backups.restores.report(&r.restore_id, &who.name, &r.error, &r.detail)?)
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
