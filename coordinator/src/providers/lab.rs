//! The lab provider: hosts that boot like EC2 instances, as containers on this machine's
//! Docker Engine. Each host boots systemd, runs its own Docker Engine (data in a named
//! volume), and is initialised by the real cloud-init from a NoCloud seed holding exactly
//! the user-data rendered for EC2.
//!
//! Per cluster: a bridge network `flotilla-<cluster>` on a /24 the lab picks (gateway `.1` is
//! where hosts reach the coordinator; `.2` is the lab registry; hosts from `.10`), a registry
//! container preloaded with the role images (hosts pull through their Engine's normal path,
//! never from the internet), and one container per host. Everything carries the label
//! `flotilla.cluster=<cluster>`, so it can be listed and removed completely.
//!
//! Not like EC2: no security group is enforced between lab hosts (documented), and hosts run
//! with the capability set `images/NOTES.md` records (`--privileged` fails here).
//!
//! This file holds the provider itself (its errors, its settings, the cluster's labels and
//! `destroy`); [`engine`] is this machine's Engine (never `DOCKER_HOST`), [`network`] picks
//! the /24 and the addresses, [`registry`] runs the lab registry, [`hosts`] launches and finds
//! hosts, [`usr_copy`] gives them their `/usr` from the Engine's own disk, [`images`] builds
//! the lab's images and [`bake`] is the lab's side of `coordinator bake`.

pub mod bake;
pub mod engine;
pub mod hosts;
pub mod images;
pub mod network;
pub mod registry;
pub mod usr_copy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
};

pub const LABEL_CLUSTER: &str = "flotilla.cluster";
pub const LABEL_KIND: &str = "flotilla.kind";
pub const LABEL_HOST: &str = "flotilla.host";
pub const LABEL_ROLE: &str = "flotilla.role";
pub const LABEL_IP: &str = "flotilla.ip";
/// Lab subnets are /24s from here.
pub const SUBNET_BASE: [u8; 2] = [10, 213];
pub const REGISTRY_PORT: u16 = 5000;
/// How long a host gets to shut down cleanly (systemd's SIGRTMIN+3) before it is killed.
pub const STOP_TIMEOUT_S: i32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "this machine's Docker Engine at {address} does not answer ({error}); the lab needs it: start dockerd, or point {} (or [lab] docker_host in flotilla.toml) at it",
        engine::ENV
    )]
    NoEngine { address: String, error: bollard::errors::Error },
    #[error(
        "the lab's Engine address {address} is not one the lab can use: write unix:///path/to/docker.sock or tcp://HOST:PORT (no TLS)"
    )]
    EngineAddress { address: String },
    #[error("the local Docker Engine: {0}")]
    Engine(String),
    #[error("no free /24 left under {}.{}.0.0/16 for the lab network", SUBNET_BASE[0], SUBNET_BASE[1])]
    NoSubnet,
    #[error("no free address left on lab network {0}")]
    NoAddress(String),
    #[error(
        "the address {ip} is taken on the lab network by {holder}: remove that container (or free the address) and run the command again"
    )]
    AddressTaken { ip: std::net::Ipv4Addr, holder: String },
    #[error("the address {ip} is not a host address of lab network {network} ({base}/24, .10 to .250)")]
    AddressOutside { ip: std::net::Ipv4Addr, network: String, base: std::net::Ipv4Addr },
    #[error("lab seed {path}: {source}")]
    Seed { path: PathBuf, source: std::io::Error },
    #[error("pushing {image} to the lab registry: {message}")]
    Push { image: String, message: String },
    #[error("no lab host named '{0}'")]
    NoHost(String),
    #[error(
        "the host image '{image}' ({from}) is not on this machine's Engine, and the lab never pulls: bake one with `coordinator bake` (it prints the name to use), or pick one `docker images` lists"
    )]
    NoImage { image: String, from: &'static str },
    #[error(transparent)]
    Images(#[from] images::ImageError),
    #[error(
        "this machine allows {limit} inotify instances per user (fs.inotify.max_user_instances), and every lab host's systemd, Engine and agent hold about {per_host} of them, as root, like every other lab host's: {hosts} lab hosts running with this one need about {needed}. Past the limit a host's systemd fails at start or hangs in its boot, and the host never enrolls. Raise it (`sudo sysctl -w fs.inotify.max_user_instances=1024`; persist it in /etc/sysctl.d/), or remove lab clusters you do not need (`coordinator --cluster NAME destroy`)"
    )]
    InotifyLimit { limit: u64, per_host: u64, hosts: u64, needed: u64 },
}

impl From<bollard::errors::Error> for LabError {
    fn from(e: bollard::errors::Error) -> Self {
        LabError::Engine(match e {
            bollard::errors::Error::DockerResponseServerError { message, .. } => message,
            other => other.to_string(),
        })
    }
}

/// `[lab]` in flotilla.toml (recorded in the cluster's provider.json).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabSettings {
    /// This machine's Engine (`unix:///var/run/docker.sock` when empty); `DOCKER_HOST` is
    /// never used for the lab, and `FLOTILLA_LAB_DOCKER_HOST` overrides this.
    pub docker_host: String,
}

impl LabSettings {
    /// Where the lab's Engine is, by [`engine::EngineAddress::resolve`].
    pub fn engine(&self) -> engine::EngineAddress {
        engine::EngineAddress::resolve(&self.docker_host)
    }
}

pub struct Lab {
    pub docker: Docker,
    /// Where `docker` is (`docker` commands the lab runs are aimed there too).
    pub engine: engine::EngineAddress,
    pub cluster: String,
    /// `<cluster state>/lab`: NoCloud seeds (0700; user-data holds a join token).
    pub dir: PathBuf,
    pub images: images::LabImages,
    /// Serialises address allocation and container creation (launches run in parallel).
    pub create_lock: tokio::sync::Mutex<()>,
    /// Each host image's `/usr` binds, once found ([`Lab::usr_binds`]).
    usr_binds: tokio::sync::Mutex<HashMap<String, Vec<String>>>,
}

impl Lab {
    pub fn new(engine: engine::LabEngine, cluster: &str, state_dir: &Path, images: images::LabImages) -> Self {
        Self {
            docker: engine.docker,
            engine: engine.address,
            cluster: cluster.to_string(),
            dir: lab_dir(state_dir),
            images,
            create_lock: tokio::sync::Mutex::new(()),
            usr_binds: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn network_name(&self) -> String {
        format!("flotilla-{}", self.cluster)
    }

    pub fn container_name(&self, host: &str) -> String {
        format!("flotilla-{}-{}", self.cluster, host)
    }

    fn labels(&self, kind: &str) -> HashMap<String, String> {
        HashMap::from([(LABEL_CLUSTER.to_string(), self.cluster.clone()), (LABEL_KIND.to_string(), kind.to_string())])
    }

    /// Creates a container under `name` (never pulling: the lab's images are local).
    async fn create_named(&self, name: &str, body: ContainerCreateBody) -> Result<(), LabError> {
        self.docker
            .create_container(Some(CreateContainerOptions { name: Some(name.to_string()), ..Default::default() }), body)
            .await?;
        Ok(())
    }

    /// The cluster's containers, of one `kind` (`host`, `registry`) or all.
    async fn containers(&self, kind: Option<&str>) -> Result<Vec<bollard::models::ContainerSummary>, LabError> {
        let mut label = vec![format!("{LABEL_CLUSTER}={}", self.cluster)];
        if let Some(k) = kind {
            label.push(format!("{LABEL_KIND}={k}"));
        }
        Ok(self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([("label".to_string(), label)])),
                ..Default::default()
            }))
            .await?)
    }

    /// Removes everything the cluster owns in the lab. Idempotent; works on a half-made lab.
    pub async fn destroy(&self) -> Result<(), LabError> {
        for c in self.containers(None).await? {
            if let Some(id) = c.id {
                remove_container(&self.docker, &id).await?;
            }
        }
        let vols = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![format!("{LABEL_CLUSTER}={}", self.cluster)],
                )])),
            }))
            .await?;
        for v in vols.volumes.unwrap_or_default() {
            remove_volume(&self.docker, &v.name).await?;
        }
        match self.docker.remove_network(&self.network_name()).await {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = std::fs::remove_dir_all(self.dir.join("seeds"));
        Ok(())
    }
}

async fn remove_container(docker: &Docker, name: &str) -> Result<(), LabError> {
    match docker
        .remove_container(name, Some(RemoveContainerOptions { force: true, v: false, ..Default::default() }))
        .await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn remove_volume(docker: &Docker, name: &str) -> Result<(), LabError> {
    match docker.remove_volume(name, Some(RemoveVolumeOptions { force: true })).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// "Already started/stopped" (304) is success for an idempotent start/stop.
fn ignore_not_modified(e: bollard::errors::Error) -> Result<(), bollard::errors::Error> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code: 304, .. } => Ok(()),
        other => Err(other),
    }
}

/// The lab's state directory for a cluster.
pub fn lab_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("lab")
}
