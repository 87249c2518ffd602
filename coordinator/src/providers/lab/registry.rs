//! The lab registry: one container per cluster at `.2` on its network, its port published on
//! loopback only, preloaded with the role images (tagged in through loopback, pushed, the
//! loopback tag removed), so hosts pull through their Engine's normal path and never from
//! the internet.
//!
//! Every cluster's registry keeps its blobs in one shared volume ([`STORE_VOLUME`], not the
//! cluster's: `destroy` leaves it, as it leaves the lab images). A push finds the layers
//! already there ("Layer already exists", ~0.1 s) instead of compressing the Consul image
//! again on every deploy (3.7 s of a core here, while the hosts boot). Blobs are
//! content-addressed and checked by every pull; a tag is re-pushed by every deploy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{PushImageOptions, StartContainerOptions, TagImageOptions};
use futures::StreamExt;

use super::network::with_last;
use super::{LABEL_IP, Lab, LabError, REGISTRY_PORT, ignore_not_modified};
use crate::poll::{Attempt, poll_until};
use crate::providers::Network;

/// The volume every lab registry stores its blobs in.
pub const STORE_VOLUME: &str = "flotilla-lab-registry-store";
/// Where the lab registry image keeps them (its config.yml's `rootdirectory`).
const STORE_PATH: &str = "/var/lib/registry";

/// How long a started registry gets to answer on its API.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

impl Lab {
    fn registry_name(&self) -> String {
        format!("flotilla-{}-registry", self.cluster)
    }

    /// The network, the registry on it (preloaded with `push`), and where hosts find the
    /// coordinator.
    pub async fn ensure(&self, push: &[(&str, &str)]) -> Result<(Network, Vec<String>), LabError> {
        let (network, refs, pushing) = self.ensure_pushing(push).await?;
        pushing.wait().await?;
        Ok((network, refs))
    }

    /// [`Lab::ensure`] that returns once the registry answers: the images are pushed in the
    /// background ([`Pushing`]), so hosts can boot meanwhile — they pull nothing before their
    /// roles are assigned. The references hosts pull are known before the push ends.
    pub async fn ensure_pushing(&self, push: &[(&str, &str)]) -> Result<(Network, Vec<String>, Pushing), LabError> {
        let (id, base) = self.ensure_network().await?;
        let (lab_addr, local_port) = self.ensure_registry(base).await?;
        let refs = push.iter().map(|(_, repo_tag)| lab_ref(&lab_addr, repo_tag)).collect();
        let docker = self.docker.clone();
        let items: Vec<(String, String)> = push.iter().map(|(l, r)| (l.to_string(), r.to_string())).collect();
        let task = tokio::spawn(async move {
            for (local, repo_tag) in &items {
                push_image(&docker, local_port, local, repo_tag).await?;
            }
            Ok::<(), LabError>(())
        });
        let network = Network { id, coordinator_ip: Some(IpAddr::V4(with_last(base, 1))), registry: Some(lab_addr) };
        Ok((network, refs, Pushing(std::sync::Mutex::new(Some(task)))))
    }

    async fn ensure_registry(&self, base: Ipv4Addr) -> Result<(String, u16), LabError> {
        let name = self.registry_name();
        let ip = with_last(base, 2);
        if self.docker.inspect_container(&name, None).await.is_err() {
            self.docker
                .create_volume(bollard::models::VolumeCreateRequest {
                    name: Some(STORE_VOLUME.to_string()),
                    labels: Some(HashMap::from([(super::LABEL_KIND.to_string(), "registry-store".to_string())])),
                    ..Default::default()
                })
                .await?;
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
                    binds: Some(vec![format!("{STORE_VOLUME}:{STORE_PATH}")]),
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
        let every = Duration::from_millis(50);
        let answered = poll_until("the lab registry's API", Instant::now() + ANSWER_TIMEOUT, every, || {
            let addr = &addr;
            async move {
                Ok::<_, Infallible>(match registry_answers(addr).await {
                    true => Attempt::Done(()),
                    false => Attempt::NotYet(format!("no 200 from {addr}/v2/")),
                })
            }
        })
        .await;
        if answered.is_err() {
            return Err(LabError::Engine(format!("the lab registry {name} does not answer on {addr}/v2/")));
        }
        Ok((format!("{ip}:{REGISTRY_PORT}"), port))
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

/// The role images' push into the lab registry, under way in the background
/// ([`Lab::ensure_pushing`]); [`Pushing::wait`] before anything pulls them.
pub struct Pushing(std::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), LabError>>>>);

impl Pushing {
    /// Waits for the push to end (at once after the first wait); its error, if it failed.
    pub async fn wait(&self) -> Result<(), LabError> {
        let task = self.0.lock().map(|mut t| t.take()).unwrap_or(None);
        match task {
            None => Ok(()),
            Some(t) => t.await.map_err(|e| LabError::Engine(format!("pushing the role images: {e}")))?,
        }
    }
}

/// The reference lab hosts pull `repo_tag` by (`<registry lab ip>:5000/<repo>:<tag>`).
fn lab_ref(lab_addr: &str, repo_tag: &str) -> String {
    let (repo, tag) = repo_tag.rsplit_once(':').unwrap_or((repo_tag, "latest"));
    format!("{lab_addr}/{repo}:{tag}")
}

/// One push at a time in this process. Each push tags the image under its loopback name,
/// pushes that and removes the tag: two at once into one registry (deploy's background push
/// and the one an upgrade it finishes prepares) would remove the tag under each other ("tag
/// does not exist"). The second waits, then pushes layers the registry already has.
static PUSHES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Tags `local` into the registry (through its loopback port `port`) and pushes it as
/// `repo_tag`.
async fn push_image(docker: &bollard::Docker, port: u16, local: &str, repo_tag: &str) -> Result<(), LabError> {
    let _one_at_a_time = PUSHES.lock().await;
    let (repo, tag) = repo_tag.rsplit_once(':').unwrap_or((repo_tag, "latest"));
    let pushed = format!("127.0.0.1:{port}/{repo}");
    docker.tag_image(local, Some(TagImageOptions { repo: Some(pushed.clone()), tag: Some(tag.to_string()) })).await?;
    let mut stream =
        docker.push_image(&pushed, Some(PushImageOptions { tag: Some(tag.to_string()), ..Default::default() }), None);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| LabError::Push { image: local.to_string(), message: e.to_string() })?;
        if let Some(msg) = info.error_detail.and_then(|d| d.message) {
            return Err(LabError::Push { image: local.to_string(), message: msg });
        }
    }
    // The loopback tag was only the way in; do not leave it behind.
    let _ = docker
        .remove_image(
            &format!("{pushed}:{tag}"),
            Some(bollard::query_parameters::RemoveImageOptions { noprune: true, ..Default::default() }),
            None,
        )
        .await;
    Ok(())
}
