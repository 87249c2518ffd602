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
    /// The private address the host must have (`recover` restoring a Swarm backup: swarmkit
    /// keeps a restored node's own Raft address); `None`: the provider picks one. A pinned
    /// address that is taken, or outside every subnet the cluster uses, fails the launch.
    pub private_ip: Option<std::net::Ipv4Addr>,
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
    /// What it was launched from: the lab container's image, the instance's AMI id.
    pub image: String,
}

/// A host that is down and will not come up by itself (a deploy waiting for it fails at
/// once, naming it): what the provider says of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDown {
    pub host: String,
    /// What it is at the provider (`lab container flotilla-x-node0`, `instance i-…`).
    pub what: String,
    /// The provider's state (`exited`, `created`, `dead`, `stopped`, …).
    pub state: String,
    pub exit_code: Option<i64>,
    /// The provider's own error for it (the Engine's, when a start failed).
    pub error: String,
    /// Its last console lines, oldest first.
    pub last_lines: Vec<String>,
}

impl HostDown {
    pub fn new(host: &str, what: String, state: &str) -> Self {
        Self {
            host: host.to_string(),
            what,
            state: state.to_string(),
            exit_code: None,
            error: String::new(),
            last_lines: Vec::new(),
        }
    }
}

impl std::fmt::Display for HostDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\n  {} ({}) is {}", self.host, self.what, self.state)?;
        if let Some(code) = self.exit_code {
            write!(f, ", exit code {code}")?;
        }
        if !self.error.is_empty() {
            write!(f, "; the provider says: {}", self.error)?;
        }
        match self.last_lines.as_slice() {
            [] => write!(f, "; it printed nothing"),
            lines => write!(f, "; its last lines:\n      {}", lines.join("\n      ")),
        }
    }
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
        let engine = lab::engine::LabEngine::connect(record.lab.clone().unwrap_or_default().engine()).await?;
        Ok(Provider::Lab(lab::Lab::new(engine, cluster, state_dir, Default::default())))
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

    /// Where the provider looks for the cluster's hosts, for messages: the lab's Engine, or
    /// AWS's region and endpoint.
    pub fn location(&self) -> String {
        match self {
            Provider::Lab(l) => format!("on the Docker Engine at {}", l.engine),
            Provider::Aws(a) => format!("in AWS region {} at {}", a.region, a.endpoint),
        }
    }

    /// What points the provider elsewhere, for messages.
    pub fn pointed_by(&self) -> &'static str {
        match self {
            Provider::Lab(_) => "with FLOTILLA_LAB_DOCKER_HOST; DOCKER_HOST is never used for the lab",
            Provider::Aws(_) => {
                "with --region, --endpoint-url or other AWS credentials: AWS_PROFILE, AWS_ACCESS_KEY_ID, …"
            }
        }
    }

    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Lab(_) => ProviderKind::Lab,
            Provider::Aws(_) => ProviderKind::Aws,
        }
    }

    /// The image hosts would be launched from for `image` as an operator names it, as
    /// [`Host::image`] reports it: the lab's image (refused when this machine's Engine does not
    /// have it), EC2's AMI id (an id or an SSM parameter, resolved; refused when unknown).
    pub async fn resolve_image(&self, image: &str, from: &'static str) -> Result<String, ProviderError> {
        Ok(match self {
            Provider::Lab(l) => {
                l.require_image(image, from).await?;
                image.to_string()
            }
            Provider::Aws(a) => a.ami(Some(image)).await?.id,
        })
    }

    /// Every host of the cluster (by label/tag), sorted by name.
    pub async fn describe(&self) -> Result<Vec<Host>, ProviderError> {
        Ok(match self {
            Provider::Lab(l) => l.describe().await?,
            Provider::Aws(a) => a.describe().await?,
        })
    }

    /// Of `names`, the hosts that are down and will not come up by themselves (lab: a
    /// container never started, exited, dead or gone; EC2: an instance stopping or stopped).
    pub async fn not_running(&self, names: &[String]) -> Result<Vec<HostDown>, ProviderError> {
        Ok(match self {
            Provider::Lab(l) => l.not_running(names).await?,
            Provider::Aws(a) => a
                .describe()
                .await?
                .into_iter()
                .filter(|h| names.contains(&h.name) && matches!(h.state, HostState::Stopping | HostState::Stopped))
                .map(|h| {
                    let state = format!("{:?}", h.state).to_lowercase();
                    HostDown::new(&h.name, format!("instance {}", h.instance_id), &state)
                })
                .collect(),
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
    /// The lab's Engine as `deploy` reached it (`[lab]`).
    #[serde(default)]
    pub lab: Option<lab::LabSettings>,
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
            .unwrap_or(ProviderRecord { provider: ProviderKind::Lab, aws: None, lab: None })
    }

    pub fn save(&self, state_dir: &std::path::Path) -> std::io::Result<()> {
        flotilla_proto::fs::write_private(&Self::path(state_dir), &serde_json::to_vec_pretty(self).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::HostDown;

    #[test]
    fn a_host_that_is_down_is_named_with_its_state_the_providers_error_and_its_last_lines() {
        let mut never = HostDown::new("node2", "lab container flotilla-x-node2".into(), "created");
        never.error = "failed to create shim task: no space left on device".into();
        assert_eq!(
            never.to_string(),
            "\n  node2 (lab container flotilla-x-node2) is created; the provider says: failed to create shim task: no space left on device; it printed nothing"
        );
        let mut exited = HostDown::new("node0", "lab container flotilla-x-node0".into(), "exited");
        exited.exit_code = Some(137);
        exited.last_lines = vec!["Reached target Power-Off.".into(), "System is powering down.".into()];
        assert_eq!(
            exited.to_string(),
            "\n  node0 (lab container flotilla-x-node0) is exited, exit code 137; its last lines:\n      Reached target Power-Off.\n      System is powering down."
        );
    }
}
