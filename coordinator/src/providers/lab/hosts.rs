//! Lab hosts: one container per host from the lab host image (or a baked one), with the
//! capabilities systemd and an inner Engine need, its Engine's data in a volume and its
//! NoCloud seed (the user-data rendered for EC2) bind-mounted; found again by label, stopped,
//! started and terminated by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, HostConfig, VolumeCreateRequest};
use bollard::query_parameters::{ListContainersOptions, LogsOptions, StartContainerOptions, StopContainerOptions};
use futures::StreamExt;

use super::{
    LABEL_HOST, LABEL_IP, LABEL_ROLE, Lab, LabError, STOP_TIMEOUT_S, ignore_not_modified, remove_container,
    remove_volume,
};
use crate::providers::{Host, HostDown, HostState, LaunchSpec};

/// How many of a host container's last console lines a [`HostDown`] quotes.
const DOWN_LINES: usize = 10;

/// Where this machine's per-user inotify instance limit is read.
const INOTIFY_LIMIT: &str = "/proc/sys/fs/inotify/max_user_instances";
/// Inotify instances one lab host holds: 13 measured (systemd 5, journald, the Engine,
/// containerd, cloud-init, the agent), rounded up.
pub const INOTIFY_PER_HOST: u64 = 16;
/// What the machine's own root processes hold besides (its Engine, containerd, a control
/// plane).
const INOTIFY_MACHINE: u64 = 16;

/// Whether `limit` inotify instances leave room for one lab host beside `running` others.
fn inotify_room(limit: u64, running: u64) -> Result<(), LabError> {
    let hosts = running + 1;
    let needed = hosts * INOTIFY_PER_HOST + INOTIFY_MACHINE;
    if needed > limit {
        return Err(LabError::InotifyLimit { limit, per_host: INOTIFY_PER_HOST, hosts, needed });
    }
    Ok(())
}

impl Lab {
    /// Whether this machine has room for one more lab host's inotify instances
    /// ([`INOTIFY_PER_HOST`]; [`LabError::InotifyLimit`] when not). Only for an Engine on
    /// this machine (its kernel is this one); the running host containers of every cluster
    /// count.
    async fn check_inotify_room(&self) -> Result<(), LabError> {
        if !self.engine.url.starts_with("unix://") {
            return Ok(());
        }
        let Some(limit) = std::fs::read_to_string(INOTIFY_LIMIT).ok().and_then(|s| s.trim().parse::<u64>().ok()) else {
            return Ok(());
        };
        let running = self
            .docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(HashMap::from([("label".to_string(), vec![format!("{}=host", super::LABEL_KIND)])])),
                ..Default::default()
            }))
            .await?;
        inotify_room(limit, running.len() as u64)
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
        let image = spec.image.clone().unwrap_or_else(|| self.images.host.clone());
        let usr = self.usr_binds(&image).await?;
        let guard = self.create_lock.lock().await;
        self.check_inotify_room().await?;
        let ip = match spec.private_ip {
            Some(ip) => self.pinned_ip(base, ip).await?,
            None => self.free_ip(base).await?,
        };
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
            image: Some(image),
            hostname: Some(spec.name.clone()),
            labels: Some(labels),
            env: Some(vec!["container=docker".into()]),
            stop_timeout: Some(i64::from(STOP_TIMEOUT_S)),
            host_config: Some(host_config(&seed, &volume, &usr)),
            networking_config: Some(self.endpoint(ip)),
            ..Default::default()
        };
        self.create_named(&name, body).await?;
        drop(guard);
        self.docker.start_container(&name, None::<StartContainerOptions>).await?;
        tracing::info!(host = %spec.name, container = %name, %ip, "lab host launched");
        self.host(&spec.name).await
    }

    /// The read-only `/usr` binds for hosts launched from `image` ([`super::usr_copy`]),
    /// its copy made once per image (and looked up once per process).
    pub async fn usr_binds(&self, image: &str) -> Result<Vec<String>, LabError> {
        let mut known = self.usr_binds.lock().await;
        if let Some(b) = known.get(image) {
            return Ok(b.clone());
        }
        let b = super::usr_copy::ensure(&self.docker, image).await?;
        known.insert(image.to_string(), b.clone());
        Ok(b)
    }

    /// Writes the NoCloud seed (0700 directory, 0600 files: the user-data holds a token).
    pub(super) fn write_seed(&self, host: &str, instance_id: &str, user_data: &str) -> Result<PathBuf, LabError> {
        let dir = self.dir.join("seeds").join(host);
        let err = |source| LabError::Seed { path: dir.clone(), source };
        flotilla_proto::fs::private_dir(&dir).map_err(err)?;
        flotilla_proto::fs::write_private(&dir.join("user-data"), user_data.as_bytes()).map_err(err)?;
        let meta = format!("instance-id: {instance_id}\nlocal-hostname: {host}\n");
        flotilla_proto::fs::write_private(&dir.join("meta-data"), meta.as_bytes()).map_err(err)?;
        Ok(dir)
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
                    image: c.image.unwrap_or_default(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Of `names`, the hosts whose container is not running and will not come up by itself:
    /// never started (`created`), stopped (`exited`), `dead`, or gone — each with its Docker
    /// state, exit code, the Engine's error and its last console lines. A deploy waiting for
    /// them to enroll fails at once instead of waiting out its time-out.
    pub async fn not_running(&self, names: &[String]) -> Result<Vec<HostDown>, LabError> {
        let mut down = Vec::new();
        for host in names {
            let container = self.container_name(host);
            let state = match self.docker.inspect_container(&container, None).await {
                Ok(c) => c.state.unwrap_or_default(),
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                    down.push(HostDown::new(host, format!("lab container {container}"), "gone (no such container)"));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let status = state.status.unwrap_or(ContainerStateStatusEnum::EMPTY);
            if !matches!(
                status,
                ContainerStateStatusEnum::CREATED | ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD
            ) {
                continue;
            }
            let mut d = HostDown::new(host, format!("lab container {container}"), status.as_ref());
            d.exit_code = state.exit_code.filter(|_| status != ContainerStateStatusEnum::CREATED);
            d.error = state.error.unwrap_or_default();
            d.last_lines = self.console_tail(&container).await;
            down.push(d);
        }
        Ok(down)
    }

    /// The last [`DOWN_LINES`] lines a container printed (its systemd console).
    async fn console_tail(&self, container: &str) -> Vec<String> {
        let opts = LogsOptions { stdout: true, stderr: true, tail: DOWN_LINES.to_string(), ..Default::default() };
        let mut logs = self.docker.logs(container, Some(opts));
        let mut text = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            text.push_str(&chunk.to_string());
        }
        text.lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect()
    }

    pub async fn host(&self, name: &str) -> Result<Host, LabError> {
        self.describe().await?.into_iter().find(|h| h.name == name).ok_or_else(|| LabError::NoHost(name.to_string()))
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
}

/// How a lab host runs: the capabilities systemd and an inner Engine need (not
/// `--privileged`), its NoCloud seed, its Engine's data volume, tmpfs `/run` and `/tmp`.
/// Hosts and the bake's builder run the same way.
/// A lab host's container settings: the NoCloud `seed`, the Engine's data `volume`, and the
/// read-only `/usr` binds of [`super::usr_copy`] (none: `/usr` from the image's own layers).
pub(super) fn host_config(seed: &Path, volume: &str, usr: &[String]) -> HostConfig {
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
        binds: Some(
            [format!("{}:/var/lib/cloud/seed/nocloud:ro", seed.display()), format!("{volume}:/var/lib/docker")]
                .into_iter()
                .chain(usr.iter().cloned())
                .collect(),
        ),
        tmpfs: Some(HashMap::from([
            ("/run".to_string(), String::new()),
            ("/run/lock".to_string(), String::new()),
            ("/tmp".to_string(), String::new()),
        ])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_inotify_limit_fits_one_default_cluster_and_not_two() {
        // 128, Debian's default: a 5-host cluster (and a heal's sixth) boots; a second one
        // beside it is refused, naming the limit and the sysctl.
        for running in 0..6 {
            assert!(inotify_room(128, running).is_ok(), "{running} running");
        }
        let e = inotify_room(128, 9).expect_err("ten hosts on 128").to_string();
        assert!(
            e.contains("128") && e.contains("fs.inotify.max_user_instances=1024") && e.contains("10 lab hosts"),
            "{e}"
        );
        assert!(inotify_room(1024, 9).is_ok());
    }
}
