//! Where hosts come from. One interface, two providers:
//!
//! - [`lab`]: containers on the local Docker Engine that boot like EC2 instances (systemd,
//!   their own Engine, real cloud-init from a NoCloud seed).
//! - `aws`: EC2 instances (the AWS issue).
//!
//! Both launch a host from the same rendered user-data, find hosts by the cluster's
//! labels/tags (never by remembering), and can stop, start and terminate one.

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
}
