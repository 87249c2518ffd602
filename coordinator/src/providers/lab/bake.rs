//! The lab's side of `coordinator bake` ([`crate::providers::bake::Backend`]): the builder is a lab host
//! container (the same flags, its own Engine volume, a NoCloud seed) on a network of its
//! own, `flotilla-<scope>.bake` — the `.` keeps it apart from every cluster's names, which
//! are DNS labels. The image is a `docker commit` of the stopped builder, labelled
//! `flotilla.bake.*`.
//!
//! The builder container carries no labels of its own: `docker commit` would copy them into
//! the image. It is found by its name; its volume and network carry the lab's labels. One bake
//! per scope at a time: a bake starts by removing the builder a previous, interrupted one of
//! the same scope left.
//!
//! What is not in the image, and why: the Engine's data (`/var/lib/docker` is a volume),
//! `/run` and `/tmp` (tmpfs), `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf` (the Engine's
//! bind mounts), the seed (a bind mount). What the capture removes: cloud-init's state and
//! logs (`cloud-init clean --logs`), `/etc/machine-id` (emptied), the Engine's identity
//! (`/etc/docker/key.json`), D-Bus's machine-id link, systemd's random seed. Then the builder's
//! changes (`docker diff`) are checked against [`crate::providers::bake::secret_path`] and
//! `/etc/machine-id` is checked to be empty in the stopped container, before committing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerConfig, ContainerCreateBody, EndpointSettings, NetworkingConfig, VolumeCreateRequest};
use bollard::query_parameters::{
    CommitContainerOptions, DownloadFromContainerOptions, ListImagesOptions, LogsOptions, StartContainerOptions,
};
use futures::StreamExt;

use super::hosts::host_config;
use super::images::LabImages;
use super::network::with_last;
use super::{Lab, LabError, STOP_TIMEOUT_S, remove_container};
use crate::providers::ProviderKind;
use crate::providers::bake::{
    Backend, BackendError, Base, BuilderState, CaptureError, Facts, Image, Recipe, Reported, secret_path,
};
use flotilla_cloud_init::paths::{BAKE_COMPLETE_PATH, BAKE_FAILED_PATH};

/// Image labels of a baked image.
pub const LABEL_NAME: &str = "flotilla.bake.name";
pub const LABEL_BASE: &str = "flotilla.bake.base";
pub const LABEL_AGENT_VERSION: &str = "flotilla.bake.agent-version";
pub const LABEL_AGENT_SHA256: &str = "flotilla.bake.agent-sha256";
pub const LABEL_ENGINE_VERSION: &str = "flotilla.bake.engine-version";

/// The builder's host name in the lab (its container: `flotilla-<scope>.bake-builder`).
const BUILDER: &str = "builder";
/// How long one `docker exec` in the builder may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Reports where the bake is: a marker, else whether cloud-init has finished (its
/// `result.json`) and the last bake line. Whether cloud-init finished is read *before* the
/// markers: cloud-init finishes only after the bake script, so a finished cloud-init without a
/// marker is a bake script that never got to write one.
const POLL_SCRIPT: &str = r#"finished=no; [ -f /run/cloud-init/result.json ] && finished=yes
if [ -f "$1" ]; then echo complete; cat "$1"
elif [ -f "$2" ]; then echo failed; cat "$2"
else echo running; echo "$finished"
  grep -h '^flotilla-bake:' /var/log/cloud-init-output.log 2>/dev/null | tail -n 1; fi"#;

/// Prepares the builder for capture (see the module docs). Stopping the Engine first keeps
/// it from writing while the rest is cleaned; its data is on the lab volume anyway.
const CLEAN_SCRIPT: &str = r#"set -eu
for u in docker.socket docker.service containerd.service; do systemctl stop "$u" 2>/dev/null || true; done
cloud-init clean --logs
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/docker/key.json /var/lib/systemd/random-seed
sync"#;

pub struct LabBaker {
    lab: Lab,
    default_base: String,
    /// The builder's NoCloud seed lives here (0700), and goes with the baker.
    _seeds: tempfile::TempDir,
}

impl LabBaker {
    pub fn new(engine: super::engine::LabEngine, scope: &str, images: LabImages) -> Result<Self, LabError> {
        let seeds = tempfile::Builder::new()
            .prefix("flotilla-bake-")
            .tempdir()
            .map_err(|source| LabError::Seed { path: std::env::temp_dir(), source })?;
        let default_base = images.host.clone();
        Ok(Self { lab: Lab::new(engine, &format!("{scope}.bake"), seeds.path(), images), default_base, _seeds: seeds })
    }

    fn builder(&self) -> String {
        self.lab.container_name(BUILDER)
    }

    fn docker(&self) -> &Docker {
        &self.lab.docker
    }

    /// Runs `sh -c script sh args…` in the builder; its exit code and output.
    async fn exec(&self, script: &str, args: &[&str]) -> Result<(i64, String), LabError> {
        let name = self.builder();
        let mut cmd = vec!["sh", "-c", script, "sh"];
        cmd.extend_from_slice(args);
        let run = async {
            let exec = self
                .docker()
                .create_exec(
                    &name,
                    CreateExecOptions {
                        cmd: Some(cmd),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await?;
            let mut out = String::new();
            if let StartExecResults::Attached { mut output, .. } = self.docker().start_exec(&exec.id, None).await? {
                while let Some(chunk) = output.next().await {
                    out.push_str(&chunk?.to_string());
                }
            }
            let code = self.docker().inspect_exec(&exec.id).await?.exit_code.unwrap_or(-1);
            Ok::<_, LabError>((code, out))
        };
        tokio::time::timeout(EXEC_TIMEOUT, run)
            .await
            .map_err(|_| LabError::Engine(format!("a command in {name} did not finish within {EXEC_TIMEOUT:?}")))?
    }

    /// The running state of the builder: `None` when it is running, else how it ended.
    async fn stopped(&self) -> Result<Option<String>, LabError> {
        let c = self.docker().inspect_container(&self.builder(), None).await?;
        let state = c.state.unwrap_or_default();
        if state.running == Some(true) {
            return Ok(None);
        }
        Ok(Some(format!(
            "the builder container stopped ({}, exit code {})",
            state.status.map(|s| s.to_string()).unwrap_or_default(),
            state.exit_code.unwrap_or_default()
        )))
    }

    /// The size of a regular file in the (stopped or running) builder, from the Engine's
    /// archive of it: the first tar header's size field.
    async fn file_size(&self, path: &str) -> Result<u64, LabError> {
        let mut stream = self
            .docker()
            .download_from_container(&self.builder(), Some(DownloadFromContainerOptions { path: path.to_string() }));
        let mut head = Vec::new();
        while head.len() < 512 {
            match stream.next().await {
                Some(chunk) => head.extend_from_slice(&chunk?),
                None => break,
            }
        }
        let field = head
            .get(124..136)
            .ok_or_else(|| LabError::Engine(format!("the archive of {path} is shorter than a tar header")))?;
        let text: String = field.iter().take_while(|b| **b != 0 && **b != b' ').map(|b| char::from(*b)).collect();
        u64::from_str_radix(text.trim(), 8)
            .map_err(|_| LabError::Engine(format!("the archive of {path} has no size in its header")))
    }
}

/// A lab image name is a repository (lower-case, `/`-separated parts); the tag is derived.
/// Checked before anything else, so a bad name costs nothing.
pub fn check_name(name: &str) -> Result<(), BackendError> {
    let ok_chars =
        name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    let ok_shape = !name.is_empty()
        && name.len() <= 200
        && name.split('/').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric())
        });
    if ok_chars && ok_shape {
        return Ok(());
    }
    Err(BackendError::Usage(format!(
        "--name '{name}': a lab image name is a repository like flotilla/baked-host — lower-case letters, digits, '.', '_', '-', parts separated by '/', no tag (the tag is derived from what is baked in)"
    )))
}

impl Backend for LabBaker {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Lab
    }

    fn engine(&self) -> flotilla_cloud_init::Engine {
        // The lab's host image has Docker Engine; lab hosts never run a package manager.
        flotilla_cloud_init::Engine::Preinstalled
    }

    fn check_name(&self, name: &str) -> Result<(), BackendError> {
        check_name(name)
    }

    async fn base(&self, requested: Option<&str>) -> Result<Base, BackendError> {
        let reference = requested.unwrap_or(&self.default_base).to_string();
        match self.docker().inspect_image(&reference).await {
            Ok(img) => Ok(Base { id: img.id.unwrap_or_else(|| reference.clone()), reference }),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Err(BackendError::Usage(format!(
                    "--base '{reference}': not an image on this machine's Engine, and the lab never pulls: pass an image `docker images` lists, or leave --base out for the lab host image"
                )))
            }
            Err(e) => Err(LabError::from(e).into()),
        }
    }

    async fn engine_version(&self, base: &Base) -> Result<Option<String>, BackendError> {
        // `dockerd --version` in a throwaway container of the base, without a network.
        let run = self
            .lab
            .engine
            .docker_cli()
            .args([
                "run",
                "--rm",
                "--pull",
                "never",
                "--network",
                "none",
                "--entrypoint",
                "dockerd",
                &base.id,
                "--version",
            ])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(EXEC_TIMEOUT, run)
            .await
            .map_err(|_| {
                LabError::Engine(format!(
                    "`dockerd --version` in {} did not finish within {EXEC_TIMEOUT:?}",
                    base.reference
                ))
            })?
            .map_err(|e| LabError::Engine(format!("docker CLI: {e}")))?;
        // "Docker version 20.10.24+dfsg1, build 5d6db84"; no dockerd: nothing to expect.
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(out
            .status
            .success()
            .then(|| text.trim().strip_prefix("Docker version ").and_then(|v| v.split(',').next()).map(str::to_string))
            .flatten())
    }

    async fn find(&self, name: &str, recipe: &Recipe) -> Result<Option<Image>, BackendError> {
        let mut labels = vec![
            format!("{LABEL_NAME}={name}"),
            format!("{LABEL_BASE}={}", recipe.base),
            format!("{LABEL_AGENT_VERSION}={}", recipe.agent_version),
            format!("{LABEL_AGENT_SHA256}={}", recipe.agent_sha256),
        ];
        if let Some(v) = &recipe.engine_version {
            labels.push(format!("{LABEL_ENGINE_VERSION}={v}"));
        }
        let found = self
            .docker()
            .list_images(Some(ListImagesOptions {
                filters: Some(HashMap::from([
                    ("reference".to_string(), vec![name.to_string()]),
                    ("label".to_string(), labels),
                ])),
                ..Default::default()
            }))
            .await
            .map_err(LabError::from)?;
        Ok(found.into_iter().next().map(|img| Image {
            reference: img
                .repo_tags
                .iter()
                .find(|t| t.starts_with(&format!("{name}:")))
                .cloned()
                .unwrap_or_else(|| img.id.clone()),
            engine_version: img.labels.get(LABEL_ENGINE_VERSION).cloned().unwrap_or_default(),
            id: img.id,
        }))
    }

    async fn prepare(&self) -> Result<IpAddr, BackendError> {
        self.cleanup().await?;
        let (_, base) = self.lab.ensure_network().await?;
        Ok(IpAddr::V4(with_last(base, 1)))
    }

    async fn launch(&self, base: &Base, user_data: &str) -> Result<String, BackendError> {
        let name = self.builder();
        let seed = self.lab.write_seed(BUILDER, &name, user_data)?;
        let volume = format!("{name}-docker");
        let mut vlabels = self.lab.labels("volume");
        vlabels.insert(super::LABEL_HOST.into(), BUILDER.into());
        self.docker()
            .create_volume(VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(vlabels),
                ..Default::default()
            })
            .await
            .map_err(LabError::from)?;
        let body = ContainerCreateBody {
            image: Some(base.id.clone()),
            hostname: Some(BUILDER.into()),
            env: Some(vec!["container=docker".into()]),
            stop_timeout: Some(i64::from(STOP_TIMEOUT_S)),
            host_config: Some(host_config(&seed, &volume, &[])),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(self.lab.network_name(), EndpointSettings::default())])),
            }),
            ..Default::default()
        };
        self.lab.create_named(&name, body).await?;
        self.docker().start_container(&name, None::<StartContainerOptions>).await.map_err(LabError::from)?;
        Ok(name)
    }

    async fn poll(&self, _reported: Option<&Reported>) -> Result<BuilderState, BackendError> {
        if let Some(why) = self.stopped().await? {
            return Ok(BuilderState::Failed(why));
        }
        let (code, out) = self.exec(POLL_SCRIPT, &[BAKE_COMPLETE_PATH, BAKE_FAILED_PATH]).await?;
        let mut lines = out.lines();
        match (code, lines.next()) {
            (0, Some("complete")) => {
                let engine = out.lines().find_map(|l| l.strip_prefix("engine=")).unwrap_or("unknown").to_string();
                Ok(BuilderState::Complete { engine_version: engine })
            }
            (0, Some("failed")) => Ok(BuilderState::Failed(lines.collect::<Vec<_>>().join(" "))),
            (0, Some("running")) => {
                if lines.next() == Some("yes") {
                    return Ok(BuilderState::Failed(format!(
                        "cloud-init finished, but the bake script never wrote {BAKE_COMPLETE_PATH} or {BAKE_FAILED_PATH}"
                    )));
                }
                Ok(BuilderState::Running(lines.next().map(str::to_string)))
            }
            // Early in boot `docker exec` may find no shell ready yet: ask again.
            _ => Ok(BuilderState::Running(None)),
        }
    }

    async fn output(&self, _reported: Option<&Reported>) -> String {
        const KEEP: usize = 120;
        match self.exec("cat /var/log/cloud-init-output.log", &[]).await {
            Ok((0, out)) => {
                let lines: Vec<&str> = out.lines().collect();
                let skip = lines.len().saturating_sub(KEEP);
                let mut text = if skip > 0 { format!("(… {skip} earlier lines)\n") } else { String::new() };
                text.push_str(&lines[skip..].join("\n"));
                text
            }
            other => {
                // Stopped, or no log yet: the container's console instead.
                let mut logs = self.docker().logs(
                    &self.builder(),
                    Some(LogsOptions { stdout: true, stderr: true, tail: KEEP.to_string(), ..Default::default() }),
                );
                let mut text =
                    format!("(no cloud-init output could be read: {other:?}; the container's console instead)\n");
                while let Some(Ok(chunk)) = logs.next().await {
                    text.push_str(&chunk.to_string());
                }
                text
            }
        }
    }

    async fn capture(&self, facts: &Facts) -> Result<Image, BackendError> {
        let builder = self.builder();
        let (code, out) = self.exec(CLEAN_SCRIPT, &[]).await?;
        if code != 0 {
            return Err(CaptureError::CleanFailed { builder, code, output: out.trim().to_string() }.into());
        }
        self.lab.stop(BUILDER).await?;
        // What the builder changed, against the base: nothing secret may be among it.
        let changes = self.docker().container_changes(&builder).await.map_err(LabError::from)?;
        let mut found: Vec<String> = changes
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.kind != bollard::models::ChangeType::_2)
            .map(|c| c.path)
            .filter(|p| secret_path(p))
            .collect();
        let machine_id = self.file_size("/etc/machine-id").await?;
        if machine_id != 0 {
            found.push(format!("/etc/machine-id ({machine_id} bytes; it must be empty)"));
        }
        if !found.is_empty() {
            return Err(CaptureError::Unclean { builder, found }.into());
        }
        let labels = HashMap::from([
            (LABEL_NAME.to_string(), facts.name.clone()),
            (LABEL_BASE.to_string(), facts.base.clone()),
            (LABEL_AGENT_VERSION.to_string(), facts.agent_version.clone()),
            (LABEL_AGENT_SHA256.to_string(), facts.agent_sha256.clone()),
            (LABEL_ENGINE_VERSION.to_string(), facts.engine_version.clone()),
        ]);
        // The config given here replaces the container's (its host name among it); the
        // Engine fills in the base's command, environment and stop signal.
        let id = self
            .docker()
            .commit_container(
                CommitContainerOptions {
                    container: Some(builder.clone()),
                    repo: Some(facts.name.clone()),
                    tag: Some(facts.tag.clone()),
                    comment: Some(format!(
                        "flotilla bake: agent {} (sha256 {}), Docker Engine {}",
                        facts.agent_version, facts.agent_sha256, facts.engine_version
                    )),
                    author: Some("flotilla coordinator bake".into()),
                    pause: false,
                    changes: None,
                },
                ContainerConfig { labels: Some(labels), ..Default::default() },
            )
            .await
            .map_err(LabError::from)?
            .id;
        Ok(Image {
            reference: format!("{}:{}", facts.name, facts.tag),
            id,
            engine_version: facts.engine_version.clone(),
        })
    }

    async fn cleanup(&self) -> Result<(), BackendError> {
        remove_container(self.docker(), &self.builder()).await?;
        // The volume and the network (labelled with the bake's scope), and the seed.
        self.lab.destroy().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn lab_image_names_are_repositories_without_a_tag() {
        for ok in ["flotilla/baked-host", "baked", "my.registry/team_a/host-1"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Flotilla/baked", "flotilla/baked:1", "flotilla//baked", "/baked", "baked-", "a@sha256:00"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
