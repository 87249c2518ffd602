//! An agent replaced in place (`coordinator upgrade --agent`, issue 17).
//! [`ControlPlane::upgrade_agent`] reads the new binary from a path on this machine, asks the
//! host's agent (`UpgradeAgent` on its session, with the SHA-256 the operator's `coordinator`
//! pinned) and waits for its answer; the agent fetches the bytes on `DownloadAgent`
//! ([`ControlPlane::agent_download`], only the host that was asked, only once) over its own
//! mutual TLS, checks the digest, installs the binary beside and over its own (the old one
//! kept), answers on `ReportAgentUpgrade` ([`ControlPlane::agent_upgrade_reported`]) and exits;
//! systemd starts the new build. The digest is pinned by the caller, not computed here from
//! what is served: the agent's check is end to end.

use std::path::PathBuf;
use std::time::Duration;

use flotilla_proto::v1;

use crate::control_plane::core::ControlPlane;
use crate::control_plane::pending::{Answer, CHUNK, NotAsked, Pending};
use crate::control_plane::session::AuthenticatedHost;
use crate::control_plane::untrusted::{DETAIL_MAX, clean};

/// How long an agent may take to download, check and install a binary.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum AgentUpgradeError {
    #[error(
        "an agent upgrade is asked for on the control plane's local socket only (the binary is a path on its machine)"
    )]
    NotLocal,
    #[error("the new agent binary {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("'{0}' is no SHA-256 (64 hex digits)")]
    BadDigest(String),
    #[error("host '{0}' has no open session; its agent cannot be asked to upgrade")]
    NotConnected(String),
    #[error("the agent of '{host}' did not install the new build: {message}")]
    Agent { host: String, message: String },
    #[error("the agent of '{host}' did not report its upgrade within {after:?} (see `coordinator logs --host {host}`)")]
    TimedOut { host: String, after: Duration },
    #[error("agent upgrade {0}")]
    Unknown(#[from] NotAsked),
    #[error("the binary's reading task failed: {0}")]
    Task(String),
}

/// The agent upgrades under way (the binary each host fetches), by upgrade id.
pub type AgentUpgrades = Pending<Vec<u8>>;

/// `data` as the chunks of a `DownloadAgent` answer: [`CHUNK`]s, then the closing one.
pub fn chunks(data: &[u8]) -> Vec<v1::AgentBinaryChunk> {
    let mut out: Vec<v1::AgentBinaryChunk> =
        data.chunks(CHUNK).map(|c| v1::AgentBinaryChunk { data: c.to_vec(), done: false }).collect();
    out.push(v1::AgentBinaryChunk { data: Vec::new(), done: true });
    out
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ControlPlane {
    /// Replaces `host`'s agent with the binary at `path`, pinned to `sha256` (see the
    /// module's doc); the agent's account of what it did.
    pub async fn upgrade_agent(
        &self,
        host: &str,
        path: &str,
        sha256: &str,
        by: &str,
    ) -> Result<String, AgentUpgradeError> {
        if !is_sha256(sha256) {
            return Err(AgentUpgradeError::BadDigest(clean(sha256, DETAIL_MAX)));
        }
        let p = PathBuf::from(path);
        let data = tokio::task::spawn_blocking(move || std::fs::read(&p).map_err(|source| (p, source)))
            .await
            .map_err(|e| AgentUpgradeError::Task(e.to_string()))?
            .map_err(|(path, source)| AgentUpgradeError::Read { path, source })?;
        let upgrade_id = format!("{}-agent-{}", self.clock.now_ms(), host);
        let size_bytes = data.len() as u64;
        let req = v1::UpgradeAgent { upgrade_id: upgrade_id.clone(), size_bytes, sha256: sha256.to_string() };
        let msg = v1::CoordinatorMessage { body: Some(v1::coordinator_message::Body::UpgradeAgent(req)) };
        let send = || self.sessions.send(host, msg);
        tracing::warn!(%host, %upgrade_id, %sha256, size_bytes, "agent upgrade asked for");
        match self.agent_upgrades.ask(&upgrade_id, host, data, send, UPGRADE_TIMEOUT).await {
            Answer::Done(detail) => {
                self.audit_by("agent.upgraded", host, format!("sha256 {sha256}: {detail}"), "", by);
                Ok(detail)
            }
            Answer::Failed(message) => {
                self.audit_by("agent.upgrade_failed", host, format!("sha256 {sha256}: {message}"), "", by);
                Err(AgentUpgradeError::Agent { host: host.to_string(), message })
            }
            Answer::NotConnected => Err(AgentUpgradeError::NotConnected(host.to_string())),
            Answer::TimedOut => Err(AgentUpgradeError::TimedOut { host: host.to_string(), after: UPGRADE_TIMEOUT }),
        }
    }

    /// The binary of upgrade `upgrade_id` for `who`, once.
    pub fn agent_download(
        &self,
        who: &AuthenticatedHost,
        upgrade_id: &str,
    ) -> Result<Vec<v1::AgentBinaryChunk>, AgentUpgradeError> {
        Ok(chunks(&self.agent_upgrades.take(upgrade_id, &who.name)?))
    }

    /// `who`'s report of how upgrade `r.upgrade_id` ended, to the waiting
    /// [`ControlPlane::upgrade_agent`].
    pub fn agent_upgrade_reported(
        &self,
        who: &AuthenticatedHost,
        r: v1::AgentUpgradeResult,
    ) -> Result<(), AgentUpgradeError> {
        Ok(self.agent_upgrades.report(&r.upgrade_id, &who.name, &r.error, &r.detail)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_is_chunked_and_closed() {
        let data: Vec<u8> = (0..(2 * CHUNK + 1)).map(|i| (i % 7) as u8).collect();
        let c = chunks(&data);
        assert_eq!(c.len(), 4);
        assert!(c.iter().all(|c| c.data.len() <= CHUNK));
        assert!(c[..3].iter().all(|c| !c.done) && c[3].done && c[3].data.is_empty());
        assert_eq!(c.iter().flat_map(|c| c.data.clone()).collect::<Vec<u8>>(), data);
    }

    #[test]
    fn only_a_sha256_is_pinned() {
        assert!(is_sha256(&"ab".repeat(32)));
        assert!(!is_sha256(&"AB".repeat(32)));
        assert!(!is_sha256(&"ab".repeat(31)));
        assert!(!is_sha256(&format!("{}g", "a".repeat(63))));
    }
}
