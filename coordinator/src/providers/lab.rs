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
//! with the capability set `shared/LAB.md` found to work (`--privileged` fails here).

pub mod bake;
pub mod images;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig, NetworkCreateRequest,
    NetworkingConfig, PortBinding, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectNetworkOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    PushImageOptions, RemoveContainerOptions, RemoveVolumeOptions, StartContainerOptions, StopContainerOptions,
    TagImageOptions,
};
use futures::StreamExt;

use super::{Host, HostState, LaunchSpec, Network};

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
    #[error("the local Docker Engine: {0}")]
    Engine(String),
    #[error("no free /24 left under {}.{}.0.0/16 for the lab network", SUBNET_BASE[0], SUBNET_BASE[1])]
    NoSubnet,
    #[error("no free address left on lab network {0}")]
    NoAddress(String),
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
}

impl From<bollard::errors::Error> for LabError {
    fn from(e: bollard::errors::Error) -> Self {
        LabError::Engine(match e {
            bollard::errors::Error::DockerResponseServerError { message, .. } => message,
            other => other.to_string(),
        })
    }
}

/// The machine's Docker Engine (the lab's hosts run on it), with the API version
/// negotiated; the error is the Engine's own words, for the caller to frame.
pub async fn connect_engine() -> Result<Docker, String> {
    Docker::connect_with_defaults().map_err(|e| e.to_string())?.negotiate_version().await.map_err(|e| e.to_string())
}

pub struct Lab {
    pub docker: Docker,
    pub cluster: String,
    /// `<cluster state>/lab`: NoCloud seeds (0700; user-data holds a join token).
    pub dir: PathBuf,
    pub images: images::LabImages,
    /// Serialises address allocation and container creation (launches run in parallel).
    pub create_lock: tokio::sync::Mutex<()>,
}

impl Lab {
    pub fn new(docker: Docker, cluster: &str, state_dir: &Path, images: images::LabImages) -> Self {
        Self {
            docker,
            cluster: cluster.to_string(),
            dir: lab_dir(state_dir),
            images,
            create_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn network_name(&self) -> String {
        format!("flotilla-{}", self.cluster)
    }

    pub fn container_name(&self, host: &str) -> String {
        format!("flotilla-{}-{}", self.cluster, host)
    }

    fn registry_name(&self) -> String {
        format!("flotilla-{}-registry", self.cluster)
    }

    fn labels(&self, kind: &str) -> HashMap<String, String> {
        HashMap::from([(LABEL_CLUSTER.to_string(), self.cluster.clone()), (LABEL_KIND.to_string(), kind.to_string())])
    }

    /// The cluster's network, created on first use on a free /24.
    pub async fn ensure_network(&self) -> Result<(String, Ipv4Addr), LabError> {
        let name = self.network_name();
        if let Ok(n) = self.docker.inspect_network(&name, None::<InspectNetworkOptions>).await {
            let subnet = n
                .ipam
                .and_then(|i| i.config)
                .and_then(|c| c.into_iter().next())
                .and_then(|c| c.subnet)
                .unwrap_or_default();
            let base =
                subnet_base(&subnet).ok_or_else(|| LabError::Engine(format!("network {name} has no IPv4 subnet")))?;
            return Ok((n.id.unwrap_or_default(), base));
        }
        let used = self.used_subnets().await?;
        let start = (fnv(&self.cluster) % 200) as u8;
        let third = (0..250u16)
            .map(|i| ((u16::from(start) + i) % 250 + 1) as u8)
            .find(|t| !used.iter().any(|u| overlaps(u, *t)))
            .ok_or(LabError::NoSubnet)?;
        let base = Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], third, 0);
        let resp = self
            .docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(format!("{base}/24")),
                        gateway: Some(with_last(base, 1).to_string()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                labels: Some(self.labels("network")),
                ..Default::default()
            })
            .await?;
        tracing::info!(network = %name, subnet = %format!("{base}/24"), "lab network created");
        Ok((resp.id, base))
    }

    async fn used_subnets(&self) -> Result<Vec<String>, LabError> {
        let nets = self.docker.list_networks(None::<ListNetworksOptions>).await?;
        Ok(nets
            .into_iter()
            .flat_map(|n| n.ipam.and_then(|i| i.config).unwrap_or_default())
            .filter_map(|c| c.subnet)
            .collect())
    }

    /// The network, the registry on it (preloaded with `push`), and where hosts find the
    /// coordinator.
    pub async fn ensure(&self, push: &[(&str, &str)]) -> Result<(Network, Vec<String>), LabError> {
        let (id, base) = self.ensure_network().await?;
        let (lab_addr, local_port) = self.ensure_registry(base).await?;
        let mut refs = Vec::new();
        for (local, repo_tag) in push {
            refs.push(self.push(local_port, &lab_addr, local, repo_tag).await?);
        }
        Ok((Network { id, coordinator_ip: Some(IpAddr::V4(with_last(base, 1))), registry: Some(lab_addr) }, refs))
    }

    async fn ensure_registry(&self, base: Ipv4Addr) -> Result<(String, u16), LabError> {
        let name = self.registry_name();
        let ip = with_last(base, 2);
        if self.docker.inspect_container(&name, None).await.is_err() {
            let mut labels = self.labels("registry");
            labels.insert(LABEL_IP.into(), ip.to_string());
            let body = ContainerCreateBody {
                image: Some(self.images.registry.clone()),
                labels: Some(labels),
                exposed_ports: Some(vec![format!("{REGISTRY_PORT}/tcp")]),
                host_config: Some(HostConfig {
                    port_bindings: Some(HashMap::from([(
                        format!("{REGISTRY_PORT}/tcp"),
                        Some(vec![PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(String::new()) }]),
                    )])),
                    restart_policy: Some(bollard::models::RestartPolicy {
                        name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                        maximum_retry_count: None,
                    }),
                    ..Default::default()
                }),
                networking_config: Some(self.endpoint(ip)),
                ..Default::default()
            };
            self.create_named(&name, body).await?;
        }
        self.docker.start_container(&name, None::<StartContainerOptions>).await.or_else(ignore_not_modified)?;
        let info = self.docker.inspect_container(&name, None).await?;
        let port = info
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(&format!("{REGISTRY_PORT}/tcp")).cloned().flatten())
            .and_then(|b| b.into_iter().next())
            .and_then(|b| b.host_port)
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| LabError::Engine(format!("registry {name} has no published port")))?;
        // The registry answers within a moment of starting; wait (bounded) until its API
        // does — docker-proxy accepts connections before the registry listens.
        let addr = format!("127.0.0.1:{port}");
        let mut answered = false;
        for _ in 0..200 {
            if registry_answers(&addr).await {
                answered = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if !answered {
            return Err(LabError::Engine(format!("the lab registry {name} does not answer on {addr}/v2/")));
        }
        Ok((format!("{ip}:{REGISTRY_PORT}"), port))
    }

    /// Tags `local` into the registry (through its loopback port) and pushes it; returns the
    /// reference lab hosts pull (`<registry lab ip>:5000/<repo_tag>`).
    async fn push(&self, port: u16, lab_addr: &str, local: &str, repo_tag: &str) -> Result<String, LabError> {
        let (repo, tag) = repo_tag.rsplit_once(':').unwrap_or((repo_tag, "latest"));
        let pushed = format!("127.0.0.1:{port}/{repo}");
        self.docker
            .tag_image(local, Some(TagImageOptions { repo: Some(pushed.clone()), tag: Some(tag.to_string()) }))
            .await?;
        let mut stream = self.docker.push_image(
            &pushed,
            Some(PushImageOptions { tag: Some(tag.to_string()), ..Default::default() }),
            None,
        );
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| LabError::Push { image: local.to_string(), message: e.to_string() })?;
            if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                return Err(LabError::Push { image: local.to_string(), message: msg });
            }
        }
        // The loopback tag was only the way in; do not leave it behind.
        let _ = self
            .docker
            .remove_image(
                &format!("{pushed}:{tag}"),
                Some(bollard::query_parameters::RemoveImageOptions { noprune: true, ..Default::default() }),
                None,
            )
            .await;
        Ok(format!("{lab_addr}/{repo}:{tag}"))
    }

    /// Creates a container under `name` (never pulling: the lab's images are local).
    async fn create_named(&self, name: &str, body: ContainerCreateBody) -> Result<(), LabError> {
        self.docker
            .create_container(Some(CreateContainerOptions { name: Some(name.to_string()), ..Default::default() }), body)
            .await?;
        Ok(())
    }

    fn endpoint(&self, ip: Ipv4Addr) -> NetworkingConfig {
        NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                self.network_name(),
                EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig { ipv4_address: Some(ip.to_string()), ..Default::default() }),
                    ..Default::default()
                },
            )])),
        }
    }

    /// Refuses a host image this machine's Engine does not have (`from` names where the
    /// image came from, e.g. `--image`), before anything is launched from it.
    pub async fn require_image(&self, image: &str, from: &'static str) -> Result<(), LabError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Err(LabError::NoImage { image: image.to_string(), from })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Launches a host, or returns it when it already exists (started if stopped).
    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Host, LabError> {
        let name = self.container_name(&spec.name);
        if let Ok(c) = self.docker.inspect_container(&name, None).await {
            let never_ran =
                c.state.and_then(|s| s.status).is_some_and(|s| s == bollard::models::ContainerStateStatusEnum::CREATED);
            if !never_ran {
                self.docker.start_container(&name, None::<StartContainerOptions>).await.or_else(ignore_not_modified)?;
                return self.host(&spec.name).await;
            }
            // Created by an interrupted launch but never started: make it again (nothing on
            // it can have run).
            remove_container(&self.docker, &name).await?;
        }
        let (_, base) = self.ensure_network().await?;
        let guard = self.create_lock.lock().await;
        let ip = self.free_ip(base).await?;
        let seed = self.write_seed(&spec.name, &name, &spec.user_data)?;
        let volume = format!("{name}-docker");
        let mut vlabels = self.labels("volume");
        vlabels.insert(LABEL_HOST.into(), spec.name.clone());
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(vlabels),
                ..Default::default()
            })
            .await?;
        let mut labels = self.labels("host");
        labels.insert(LABEL_HOST.into(), spec.name.clone());
        labels.insert(LABEL_ROLE.into(), spec.role.clone());
        labels.insert(LABEL_IP.into(), ip.to_string());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone().unwrap_or_else(|| self.images.host.clone())),
            hostname: Some(spec.name.clone()),
            labels: Some(labels),
            env: Some(vec!["container=docker".into()]),
            stop_timeout: Some(i64::from(STOP_TIMEOUT_S)),
            host_config: Some(host_config(&seed, &volume)),
            networking_config: Some(self.endpoint(ip)),
            ..Default::default()
        };
        self.create_named(&name, body).await?;
        drop(guard);
        self.docker.start_container(&name, None::<StartContainerOptions>).await?;
        tracing::info!(host = %spec.name, container = %name, %ip, "lab host launched");
        self.host(&spec.name).await
    }

    /// Writes the NoCloud seed (0700 directory, 0600 files: the user-data holds a token).
    fn write_seed(&self, host: &str, instance_id: &str, user_data: &str) -> Result<PathBuf, LabError> {
        let dir = self.dir.join("seeds").join(host);
        let err = |source| LabError::Seed { path: dir.clone(), source };
        flotilla_proto::fs::private_dir(&dir).map_err(err)?;
        flotilla_proto::fs::write_private(&dir.join("user-data"), user_data.as_bytes()).map_err(err)?;
        let meta = format!("instance-id: {instance_id}\nlocal-hostname: {host}\n");
        flotilla_proto::fs::write_private(&dir.join("meta-data"), meta.as_bytes()).map_err(err)?;
        Ok(dir)
    }

    async fn free_ip(&self, base: Ipv4Addr) -> Result<Ipv4Addr, LabError> {
        let used: Vec<String> = self
            .containers(None)
            .await?
            .into_iter()
            .filter_map(|c| c.labels.and_then(|l| l.get(LABEL_IP).cloned()))
            .collect();
        (10u8..=250)
            .map(|i| with_last(base, i))
            .find(|ip| !used.contains(&ip.to_string()))
            .ok_or_else(|| LabError::NoAddress(self.network_name()))
    }

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

    /// Every host of the cluster, found by label.
    pub async fn describe(&self) -> Result<Vec<Host>, LabError> {
        let mut out: Vec<Host> = self
            .containers(Some("host"))
            .await?
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                let state = match c.state.map(|s| s.to_string()).unwrap_or_default().as_str() {
                    "running" => HostState::Running,
                    "created" | "restarting" => HostState::Pending,
                    "exited" | "dead" => HostState::Stopped,
                    "removing" => HostState::Terminated,
                    other => HostState::Other(other.to_string()),
                };
                Host {
                    name: labels.get(LABEL_HOST).cloned().unwrap_or_default(),
                    instance_id: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    role: labels.get(LABEL_ROLE).cloned().unwrap_or_default(),
                    state,
                    private_ip: labels.get(LABEL_IP).and_then(|ip| ip.parse().ok()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn host(&self, name: &str) -> Result<Host, LabError> {
        self.describe().await?.into_iter().find(|h| h.name == name).ok_or_else(|| LabError::NoHost(name.to_string()))
    }

    /// The lab registry's address as hosts reach it (`<ip>:5000`), if the cluster has one.
    pub async fn registry_addr(&self) -> Result<Option<String>, LabError> {
        Ok(self
            .containers(Some("registry"))
            .await?
            .into_iter()
            .find_map(|c| c.labels.and_then(|l| l.get(LABEL_IP).cloned()))
            .map(|ip| format!("{ip}:{REGISTRY_PORT}")))
    }

    /// Stops a host (systemd shuts down cleanly, then the container stops).
    pub async fn stop(&self, name: &str) -> Result<(), LabError> {
        self.docker
            .stop_container(
                &self.container_name(name),
                Some(StopContainerOptions { t: Some(STOP_TIMEOUT_S), ..Default::default() }),
            )
            .await
            .or_else(ignore_not_modified)?;
        Ok(())
    }

    pub async fn start(&self, name: &str) -> Result<(), LabError> {
        self.docker
            .start_container(&self.container_name(name), None::<StartContainerOptions>)
            .await
            .or_else(ignore_not_modified)?;
        Ok(())
    }

    /// Removes a host: its container, its Engine's volume, its seed. Idempotent.
    pub async fn terminate(&self, name: &str) -> Result<(), LabError> {
        let c = self.container_name(name);
        remove_container(&self.docker, &c).await?;
        remove_volume(&self.docker, &format!("{c}-docker")).await?;
        let _ = std::fs::remove_dir_all(self.dir.join("seeds").join(name));
        Ok(())
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

/// How a lab host runs: the capabilities systemd and an inner Engine need (not
/// `--privileged`), its NoCloud seed, its Engine's data volume, tmpfs `/run` and `/tmp`.
/// Hosts and the bake's builder run the same way.
fn host_config(seed: &Path, volume: &str) -> HostConfig {
    HostConfig {
        cap_add: Some(
            ["SYS_ADMIN", "NET_ADMIN", "NET_RAW", "SYS_PTRACE", "MKNOD", "SYS_MODULE"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        security_opt: Some(vec!["seccomp=unconfined".into(), "apparmor=unconfined".into()]),
        // The CLI's `--security-opt systempaths=unconfined`, as the API spells it.
        masked_paths: Some(vec![]),
        readonly_paths: Some(vec![]),
        // A private cgroup namespace, and no bind of the machine's /sys/fs/cgroup: the
        // image's init makes its own cgroups writable (a shared bind lets a host
        // remount the machine's cgroup tree and leak inner containers' cgroups).
        cgroupns_mode: Some(bollard::models::HostConfigCgroupnsModeEnum::PRIVATE),
        binds: Some(vec![
            format!("{}:/var/lib/cloud/seed/nocloud:ro", seed.display()),
            format!("{volume}:/var/lib/docker"),
        ]),
        tmpfs: Some(HashMap::from([
            ("/run".to_string(), String::new()),
            ("/run/lock".to_string(), String::new()),
            ("/tmp".to_string(), String::new()),
        ])),
        ..Default::default()
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

/// Whether a registry's `/v2/` answers 200 (a plain HTTP/1.0 GET on loopback).
async fn registry_answers(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) =
        tokio::time::timeout(std::time::Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: registry\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match tokio::time::timeout(std::time::Duration::from_secs(1), s.read(&mut buf)).await {
        Ok(Ok(n)) if n >= 12 => buf[..n].starts_with(b"HTTP/1.") && &buf[9..12] == b"200",
        _ => false,
    }
}

fn with_last(base: Ipv4Addr, last: u8) -> Ipv4Addr {
    let o = base.octets();
    Ipv4Addr::new(o[0], o[1], o[2], last)
}

fn subnet_base(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

/// Whether an existing subnet (CIDR) overlaps `10.213.<third>.0/24`.
fn overlaps(cidr: &str, third: u8) -> bool {
    let Some((addr, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(len)) = (addr.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let ours = u32::from(Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], third, 0));
    let theirs = u32::from(addr);
    let len = len.min(24);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    ours & mask == theirs & mask
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x01000193))
}

/// The lab's state directory for a cluster.
pub fn lab_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("lab")
}

#[cfg(test)]
mod tests {
    use super::overlaps;

    #[test]
    fn subnet_overlap_is_detected_for_wider_and_equal_networks() {
        assert!(overlaps("10.213.7.0/24", 7));
        assert!(!overlaps("10.213.8.0/24", 7));
        assert!(overlaps("10.0.0.0/8", 7));
        assert!(overlaps("10.213.0.0/16", 200));
        assert!(!overlaps("172.17.0.0/16", 7));
    }
}
