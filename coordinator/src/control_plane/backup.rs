//! Backups, taken by the agents and kept by the control plane (issue 16).
//!
//! [`ControlPlane::take_backups`] takes one backup of each kind asked for, one kind after the
//! other, one backup of the cluster at a time ([`BackupError::Busy`]):
//! - Swarm: only when every manager (3 or more) is connected, answered a sample just now, and
//!   is reachable in the swarm with exactly one leader — then the first manager by name that
//!   does not lead is asked (`TakeBackup` on its session). Its agent stops its Engine,
//!   archives `/var/lib/docker/swarm`, starts the Engine and waits until its node is a
//!   reachable manager again (`agent/src/backup.rs`); quorum holds with the other managers
//!   meanwhile. One manager at a time, by construction.
//! - Consul: a connected Consul server's agent takes a snapshot through Consul's API.
//!
//! The agent streams the bytes back on `UploadBackup` (its own mutual-TLS connection,
//! [`ControlPlane::receive_backup`]), capped at [`MAX_BYTES`]; the control plane checks the
//! agent's digest against its own, encrypts and stores it ([`archive`]) and prunes by the
//! policy ([`policy`], which also schedules backups). A stored backup goes back onto a host
//! through its agent too ([`restore`]).

pub mod archive;
pub mod policy;
pub mod restore;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_proto::v1::{self, BackupKind};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::control_plane::core::{ControlError, ControlPlane, FRESH_SAMPLE_WAIT};
use crate::control_plane::session::AuthenticatedHost;
use crate::control_plane::untrusted::{DETAIL_MAX, clean};
use archive::{ArchiveError, BackupMeta};

/// The largest backup accepted (and the cap sent to the agent).
pub const MAX_BYTES: u64 = 256 * 1024 * 1024;
/// How long a Swarm backup may take (the Engine stops, restarts, its node rejoins).
pub const SWARM_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a Consul snapshot may take.
pub const CONSUL_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("another backup of this cluster is being taken; one at a time (try again when it is done)")]
    Busy,
    #[error("a Swarm backup cannot be taken safely now: {0}")]
    Unsafe(String),
    #[error("a Consul backup cannot be taken now: {0}")]
    NoConsul(String),
    #[error("host '{0}' has no open session; its agent cannot be asked for the backup")]
    NotConnected(String),
    #[error("the agent of '{host}' could not take the {kind} backup: {message}")]
    Agent { host: String, kind: &'static str, message: String },
    #[error("the agent of '{host}' sent no {kind} backup within {after:?} (see `coordinator logs --host {host}`)")]
    TimedOut { host: String, kind: &'static str, after: Duration },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the backup's storing task failed: {0}")]
    Task(String),
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("an upload must name its backup in its first chunk")]
    Empty,
    #[error("backup '{id}' was not asked of host '{host}' (or is no longer awaited)")]
    Unknown { id: String, host: String },
    #[error("backup '{id}' is larger than the cap of {max} bytes")]
    TooLarge { id: String, max: u64 },
    #[error("backup '{id}': the agent's SHA-256 {agent} is not the {received} of the bytes that arrived")]
    Digest { id: String, agent: String, received: String },
    #[error("backup '{id}': the stream ended before its last chunk ({detail})")]
    Truncated { id: String, detail: String },
}

/// The backup kind's name in records and messages.
pub fn kind_name(kind: BackupKind) -> &'static str {
    match kind {
        BackupKind::Swarm => "swarm",
        BackupKind::Consul => "consul",
        BackupKind::Unspecified => "unspecified",
    }
}

/// A stored backup as the admin API answers it.
pub fn record_of(state_dir: &std::path::Path, m: &BackupMeta) -> v1::BackupRecord {
    let kind = match m.kind.as_str() {
        "swarm" => BackupKind::Swarm,
        "consul" => BackupKind::Consul,
        _ => BackupKind::Unspecified,
    };
    v1::BackupRecord {
        id: m.id.clone(),
        kind: kind as i32,
        host: m.host.clone(),
        taken_unix_ms: m.taken_unix_ms,
        engine_version: m.engine_version.clone(),
        consul_version: m.consul_version.clone(),
        size_bytes: m.size_bytes,
        sha256: m.sha256.clone(),
        path: archive::file_of(state_dir, m).display().to_string(),
        duration_ms: m.duration_ms,
    }
}

/// What an agent uploaded.
#[derive(Debug)]
pub struct Received {
    pub data: Vec<u8>,
    pub engine_version: String,
    pub consul_version: String,
}

struct Pending {
    host: String,
    done: oneshot::Sender<Result<Received, String>>,
}

/// The backups being taken: the uploads awaited, and the one-at-a-time lock.
#[derive(Default)]
pub struct Backups {
    pending: Mutex<HashMap<String, Pending>>,
    one: tokio::sync::Mutex<()>,
    /// The restores under way (`recover`).
    pub restores: restore::Restores,
}

impl Backups {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The manager to take a Swarm backup on, if it is safe now (see the module's doc).
pub fn swarm_source(st: &v1::StatusResponse) -> Result<String, BackupError> {
    let managers: Vec<&v1::HostStatus> =
        st.hosts.iter().filter(|h| !h.revoked && h.roles.contains(&(v1::Role::Manager as i32))).collect();
    if managers.len() < 3 {
        return Err(BackupError::Unsafe(format!(
            "the cluster has {} manager(s); stopping one would lose the swarm's quorum (it takes 3 or more)",
            managers.len()
        )));
    }
    let (mut leaders, mut others) = (0, Vec::new());
    for m in managers {
        if !m.connected || m.unreachable || !m.fresh {
            return Err(BackupError::Unsafe(format!(
                "manager '{}' did not answer just now; every manager must be reachable first",
                m.name
            )));
        }
        match m.health.as_ref().and_then(|h| h.swarm.as_ref()).map(|s| s.manager_status.as_str()) {
            Some("leader") => leaders += 1,
            Some("reachable") => others.push(m.name.clone()),
            s => {
                return Err(BackupError::Unsafe(format!(
                    "manager '{}' is '{}' in the swarm, not reachable",
                    m.name,
                    s.unwrap_or("unknown")
                )));
            }
        }
    }
    if leaders != 1 {
        return Err(BackupError::Unsafe(format!("the managers see {leaders} leaders, not one")));
    }
    others.sort();
    Ok(others.remove(0))
}

/// The Consul server to take a snapshot on: the first connected one (by name) that sees a
/// leader.
pub fn consul_source(st: &v1::StatusResponse) -> Result<String, BackupError> {
    let mut ok: Vec<&str> = st
        .hosts
        .iter()
        .filter(|h| !h.revoked && h.connected && h.fresh && h.roles.contains(&(v1::Role::Consul as i32)))
        .filter(|h| h.health.as_ref().and_then(|s| s.consul.as_ref()).is_some_and(|c| !c.leader.is_empty()))
        .map(|h| h.name.as_str())
        .collect();
    ok.sort();
    ok.first()
        .map(|h| h.to_string())
        .ok_or_else(|| BackupError::NoConsul("no connected Consul server sees a leader".into()))
}

impl ControlPlane {
    /// Takes a backup of each kind in `kinds` (empty: Swarm, then Consul), stores them and
    /// prunes the old ones; `by` is who asked (audited).
    pub async fn take_backups(
        self: &Arc<Self>,
        kinds: &[BackupKind],
        by: &str,
    ) -> Result<Vec<BackupMeta>, BackupError> {
        let Ok(_one) = self.backups.one.try_lock() else {
            return Err(BackupError::Busy);
        };
        let kinds = if kinds.is_empty() { vec![BackupKind::Swarm, BackupKind::Consul] } else { kinds.to_vec() };
        let mut taken = Vec::new();
        for kind in kinds {
            let st = self.fresh_status(FRESH_SAMPLE_WAIT).await?;
            let host = match kind {
                BackupKind::Swarm => swarm_source(&st)?,
                BackupKind::Consul => consul_source(&st)?,
                BackupKind::Unspecified => continue,
            };
            let meta = self.take_one(kind, &host).await?;
            let detail = format!("{} {} ({} bytes, sha256 {})", meta.kind, meta.id, meta.size_bytes, meta.sha256);
            self.audit_by("backup.taken", &host, detail, "", by);
            taken.push(meta);
        }
        let dir = self.config.state_dir.clone();
        let keep = policy::Policy::load(&dir).keep.max(1);
        let removed = tokio::task::spawn_blocking(move || archive::prune(&dir, keep))
            .await
            .map_err(|e| BackupError::Task(e.to_string()))??;
        if !removed.is_empty() {
            tracing::info!(?removed, keep, "old backups pruned");
        }
        Ok(taken)
    }

    /// Asks `host` for one backup and stores what it uploads.
    async fn take_one(&self, kind: BackupKind, host: &str) -> Result<BackupMeta, BackupError> {
        let started = Instant::now();
        let taken_unix_ms = self.clock.now_ms();
        let name = kind_name(kind);
        let id = format!("{taken_unix_ms:013}-{name}");
        let (done, rx) = oneshot::channel();
        self.backups.lock().insert(id.clone(), Pending { host: host.to_string(), done });
        let req = v1::TakeBackup { backup_id: id.clone(), kind: kind as i32, max_bytes: MAX_BYTES };
        let msg = v1::CoordinatorMessage { body: Some(v1::coordinator_message::Body::TakeBackup(req)) };
        if !self.sessions.send(host, msg) {
            self.backups.lock().remove(&id);
            return Err(BackupError::NotConnected(host.to_string()));
        }
        tracing::info!(%host, %id, "backup asked for");
        let after = if kind == BackupKind::Swarm { SWARM_TIMEOUT } else { CONSUL_TIMEOUT };
        let got = tokio::time::timeout(after, rx).await;
        self.backups.lock().remove(&id);
        let received = match got {
            Ok(Ok(Ok(r))) => r,
            Ok(Ok(Err(message))) => return Err(BackupError::Agent { host: host.to_string(), kind: name, message }),
            Ok(Err(_)) | Err(_) => return Err(BackupError::TimedOut { host: host.to_string(), kind: name, after }),
        };
        let src = archive::Source {
            kind: name.to_string(),
            host: host.to_string(),
            taken_unix_ms,
            engine_version: received.engine_version,
            consul_version: received.consul_version,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        let dir = self.config.state_dir.clone();
        let data = received.data;
        let meta = tokio::task::spawn_blocking(move || archive::store(&dir, &src, &data))
            .await
            .map_err(|e| BackupError::Task(e.to_string()))??;
        tracing::info!(%host, id = %meta.id, bytes = meta.size_bytes, ms = meta.duration_ms, "backup stored");
        Ok(meta)
    }

    /// One `UploadBackup` call of `who`: the chunks of a backup this control plane asked it
    /// for, handed to the waiting [`ControlPlane::take_backups`].
    pub async fn receive_backup(
        &self,
        who: &AuthenticatedHost,
        mut inbound: tonic::Streaming<v1::BackupChunk>,
    ) -> Result<v1::UploadBackupResponse, UploadError> {
        let truncated =
            |id: &str, e: tonic::Status| UploadError::Truncated { id: id.into(), detail: e.message().into() };
        let first = inbound.message().await.map_err(|e| truncated("", e))?.ok_or(UploadError::Empty)?;
        let id = clean(&first.backup_id, DETAIL_MAX);
        let pending = {
            let mut p = self.backups.lock();
            match p.get(&first.backup_id) {
                Some(x) if x.host == who.name => p.remove(&first.backup_id),
                _ => None,
            }
        };
        let Some(pending) = pending else {
            return Err(UploadError::Unknown { id, host: who.name.clone() });
        };
        let mut data = Vec::new();
        let mut chunk = Some(first);
        loop {
            let c = match chunk.take() {
                Some(c) => c,
                None => match inbound.message().await {
                    Ok(Some(c)) => c,
                    Ok(None) => Err(UploadError::Truncated { id: id.clone(), detail: "no last chunk".into() })?,
                    Err(e) => Err(truncated(&id, e))?,
                },
            };
            if !c.error.is_empty() {
                let _ = pending.done.send(Err(clean(&c.error, DETAIL_MAX)));
                return Ok(v1::UploadBackupResponse::default());
            }
            if (data.len() + c.data.len()) as u64 > MAX_BYTES {
                let _ = pending.done.send(Err(format!("larger than the cap of {MAX_BYTES} bytes")));
                return Err(UploadError::TooLarge { id, max: MAX_BYTES });
            }
            data.extend_from_slice(&c.data);
            if c.done {
                let received = hex::encode(Sha256::digest(&data));
                if received != c.sha256 {
                    let agent = clean(&c.sha256, 80);
                    let _ = pending.done.send(Err(format!("digest mismatch: sent {agent}, received {received}")));
                    return Err(UploadError::Digest { id, agent, received });
                }
                let engine_version = clean(&c.engine_version, 64);
                let consul_version = clean(&c.consul_version, 64);
                let _ = pending.done.send(Ok(Received { data, engine_version, consul_version }));
                return Ok(v1::UploadBackupResponse { sha256: received });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, role: v1::Role, swarm: &str, consul_leader: &str) -> v1::HostStatus {
        v1::HostStatus {
            name: name.into(),
            roles: vec![role as i32],
            connected: true,
            fresh: true,
            health: Some(v1::HealthSample {
                swarm: Some(v1::SwarmView { manager_status: swarm.into(), ..Default::default() }),
                consul: Some(v1::ConsulView { leader: consul_leader.into(), peers: vec![] }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cluster() -> v1::StatusResponse {
        v1::StatusResponse {
            hosts: vec![
                host("manager0", v1::Role::Manager, "leader", ""),
                host("manager1", v1::Role::Manager, "reachable", ""),
                host("manager2", v1::Role::Manager, "reachable", ""),
                host("node0", v1::Role::Node, "", ""),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn issue_16_a_swarm_backup_goes_to_a_reachable_manager_that_does_not_lead() {
        assert_eq!(swarm_source(&cluster()).expect("safe"), "manager1");
        let mut st = cluster();
        let status = |st: &mut v1::StatusResponse, i: usize, s: &str| {
            st.hosts[i].health.as_mut().and_then(|h| h.swarm.as_mut()).expect("swarm").manager_status = s.into();
        };
        status(&mut st, 0, "reachable");
        status(&mut st, 1, "leader");
        assert_eq!(swarm_source(&st).expect("safe"), "manager0", "the leader is never chosen");
    }

    #[test]
    fn issue_16_no_swarm_backup_when_quorum_would_not_survive_it() {
        let mut two = cluster();
        two.hosts.remove(2);
        assert!(swarm_source(&two).expect_err("2 managers").to_string().contains("2 manager(s)"));
        let mut gone = cluster();
        gone.hosts[2].connected = false;
        assert!(swarm_source(&gone).expect_err("one down").to_string().contains("manager2"));
        let mut stale = cluster();
        stale.hosts[1].fresh = false;
        assert!(swarm_source(&stale).expect_err("no fresh answer").to_string().contains("manager1"));
        let mut unreachable = cluster();
        unreachable.hosts[2].health.as_mut().and_then(|h| h.swarm.as_mut()).expect("swarm").manager_status =
            "unreachable".into();
        assert!(swarm_source(&unreachable).expect_err("unreachable").to_string().contains("'unreachable'"));
        let mut leaderless = cluster();
        leaderless.hosts[0].health.as_mut().and_then(|h| h.swarm.as_mut()).expect("swarm").manager_status =
            "reachable".into();
        assert!(swarm_source(&leaderless).expect_err("no leader").to_string().contains("0 leaders"));
    }

    #[test]
    fn issue_16_a_consul_snapshot_comes_from_a_connected_server_that_sees_a_leader() {
        let mut st = cluster();
        st.hosts.push(host("consul1", v1::Role::Consul, "", ""));
        st.hosts.push(host("consul2", v1::Role::Consul, "", "10.0.0.3:8300"));
        assert_eq!(consul_source(&st).expect("one"), "consul2");
        st.hosts[5].connected = false;
        assert!(matches!(consul_source(&st), Err(BackupError::NoConsul(_))));
    }
}
