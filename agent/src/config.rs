//! `/etc/flotilla/agent.toml`: written by cloud-init from the rendered user-data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's name in the cluster (`manager0`, `node1`, …); its certificate's CN.
    pub host_name: String,
    /// The cluster's name (informational; the CA is what binds the agent to a cluster).
    #[serde(default)]
    pub cluster: String,
    /// Coordinator agent-port addresses (`host:port`), tried in turn.
    pub coordinator: Vec<String>,
    /// The cluster CA certificate (PEM): the only root the agent trusts.
    pub ca_file: PathBuf,
    /// The one-time join token; deleted after a successful enrollment.
    pub token_file: PathBuf,
    /// Where the agent keeps its key and certificate (`identity.pem`, 0600).
    pub state_dir: PathBuf,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_s: u64,
    /// Upper bound of the reconnect back-off.
    #[serde(default = "default_backoff_cap")]
    pub backoff_cap_s: u64,
    /// First reconnect delay bound; doubles per failed attempt up to the cap.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
}

fn default_heartbeat() -> u64 {
    5
}
fn default_backoff_cap() -> u64 {
    30
}
fn default_backoff_base_ms() -> u64 {
    500
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{path}: field `{field}`: {problem}")]
    Invalid { path: PathBuf, field: &'static str, problem: String },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let cfg: AgentConfig =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            problem: problem.to_string(),
        };
        let name_ok = !self.host_name.is_empty()
            && self.host_name.len() <= 63
            && self.host_name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(invalid("host_name", "use 1-63 of a-z, 0-9 and '-'"));
        }
        if self.coordinator.is_empty() {
            return Err(invalid("coordinator", "at least one `host:port` is required"));
        }
        for c in &self.coordinator {
            if !c.contains(':') {
                return Err(invalid("coordinator", &format!("'{c}' has no port (expected host:port)")));
            }
        }
        if self.heartbeat_interval_s == 0 {
            return Err(invalid("heartbeat_interval_s", "must be at least 1"));
        }
        if self.backoff_cap_s == 0 {
            return Err(invalid("backoff_cap_s", "must be at least 1"));
        }
        Ok(())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_s)
    }
}
