//! Where hosts come from. One interface, two providers:
//!
//! - [`lab`]: containers on the local Docker Engine that boot like EC2 instances (systemd,
//!   their own Engine, real cloud-init from a NoCloud seed).
//! - [`aws`]: EC2 instances (any EC2-compatible endpoint).
//!
//! Both launch a host from the same rendered user-data, find hosts by the cluster's
//! labels/tags (never by remembering), and can stop, start and terminate one. [`bake`] is
//! what each of them does for `coordinator bake` (the flow itself is `ops::bake`).
//!
//! Providers know nothing of the operations that drive them (`ops`), nor of the CLI.

pub mod aws;
pub mod bake;
pub mod lab;

use std::net::IpAddr;

/// What to launch.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    /// The host's name in the cluster (`manager0`, `node1`, …).
    pub name: String,
    /// The role it is launched for (tags/labels only; roles are assigned over the session).
    pub role: String,
    /// The `#cloud-config` document, rendered by `flotilla-cloud-init`.
    pub user_data: String,
    /// Instance type (AWS) or ignored (lab).
    pub instance_type: String,
    /// AMI / lab image override (a baked image); `None`: the provider's default.
    pub image: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostState {
    Pending,
    Running,
    Stopping,
    Stopped,
    Terminated,
    Other(String),
}

/// A host as the provider reports it.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// EC2 instance id, or the lab container's name.
    pub instance_id: String,
    pub role: String,
    pub state: HostState,
    pub private_ip: Option<IpAddr>,
}

/// The cluster's network as the provider set it up.
#[derive(Clone, Debug)]
pub struct Network {
    pub id: String,
    /// Where hosts reach the coordinator (lab: the bridge's gateway on this machine).
    pub coordinator_ip: Option<IpAddr>,
    /// The registry hosts pull role images from, `ip:port` (lab only).
    pub registry: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Lab(#[from] lab::LabError),
    #[error(transparent)]
    Aws(#[from] aws::AwsError),
}

/// Which provider a cluster's hosts come from (`provider` in flotilla.toml, `--provider`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Containers on this machine's Engine that boot like EC2 instances.
    #[default]
    Lab,
    /// EC2 instances.
    Aws,
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Lab => "lab",
            ProviderKind::Aws => "aws",
        }
    }
}

/// The cluster's provider: what deploy, destroy and the failover drill talk to.
pub enum Provider {
    Lab(lab::Lab),
    Aws(aws::Aws),
}

impl Provider {
    /// The provider `record` names, for cluster `cluster` (lab: the machine's Engine; AWS:
    /// the recorded settings, credentials from the standard chain).
    pub async fn from_record(
        cluster: &str,
        state_dir: &std::path::Path,
        record: &ProviderRecord,
    ) -> Result<Self, ProviderError> {
        if record.provider == ProviderKind::Aws {
            let settings = record.aws.clone().unwrap_or_default();
            return Ok(Provider::Aws(aws::Aws::connect(cluster, &settings, state_dir).await?));
        }
        let docker = lab::connect_engine().await.map_err(|e| lab::LabError::Engine(e.to_string()))?;
        Ok(Provider::Lab(lab::Lab::new(docker, cluster, state_dir, Default::default())))
    }

    /// Removes everything the cluster owns at the provider; idempotent. Returns what it
    /// removed, where the provider says (AWS).
    pub async fn destroy(&self) -> Result<Vec<String>, ProviderError> {
        Ok(match self {
            Provider::Lab(l) => {
                l.destroy().await?;
                vec![]
            }
            Provider::Aws(a) => a.destroy().await?,
        })
    }

    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Lab(_) => ProviderKind::Lab,
            Provider::Aws(_) => ProviderKind::Aws,
        }
    }

    /// Every host of the cluster (by label/tag), sorted by name.
    pub async fn describe(&self) -> Result<Vec<Host>, ProviderError> {
        Ok(match self {
            Provider::Lab(l) => l.describe().await?,
            Provider::Aws(a) => a.describe().await?,
        })
    }

    pub async fn host(&self, name: &str) -> Result<Host, ProviderError> {
        Ok(match self {
            Provider::Lab(l) => l.host(name).await?,
            Provider::Aws(a) => a.host(name).await?,
        })
    }

    pub async fn stop(&self, name: &str) -> Result<(), ProviderError> {
        match self {
            Provider::Lab(l) => l.stop(name).await?,
            Provider::Aws(a) => a.stop(name).await?,
        }
        Ok(())
    }

    pub async fn start(&self, name: &str) -> Result<(), ProviderError> {
        match self {
            Provider::Lab(l) => l.start(name).await?,
            Provider::Aws(a) => a.start(name).await?,
        }
        Ok(())
    }

    pub async fn terminate(&self, name: &str) -> Result<(), ProviderError> {
        match self {
            Provider::Lab(l) => l.terminate(name).await?,
            Provider::Aws(a) => a.terminate(name).await?,
        }
        Ok(())
    }
}

/// What a cluster's state directory records about its provider, so `destroy`, `status`
/// and the failover drill find the hosts without the deploy's flotilla.toml:
/// `<state>/provider.json`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ProviderRecord {
    pub provider: ProviderKind,
    #[serde(default)]
    pub aws: Option<aws::AwsSettings>,
}

impl ProviderRecord {
    pub fn path(state_dir: &std::path::Path) -> std::path::PathBuf {
        state_dir.join("provider.json")
    }

    /// The record, or the lab's when none was written (clusters made before it existed).
    pub fn load(state_dir: &std::path::Path) -> Self {
        std::fs::read(Self::path(state_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(ProviderRecord { provider: ProviderKind::Lab, aws: None })
    }

    pub fn save(&self, state_dir: &std::path::Path) -> std::io::Result<()> {
        flotilla_proto::fs::write_private(&Self::path(state_dir), &serde_json::to_vec_pretty(self).unwrap_or_default())
    }
}
