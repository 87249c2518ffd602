//! Lab hosts read their `/usr` from the Engine's own disk, not through its storage driver.
//!
//! Where this machine's Engine keeps container filesystems on fuse-overlayfs (the machines
//! this project runs on do: `docker info` says `Storage Driver: fuse-overlayfs`), every file a
//! booting host reads — systemd's units, cloud-init's Python, dockerd, containerd, runc —
//! goes through one user-space FUSE daemon per container. Five hosts booting at once kept both
//! cores busy, half of it in the kernel switching to and from those daemons (issue 19's
//! profile in `docs/BENCHMARKS.md`).
//!
//! So each host image's `/usr` — all of it but `/usr/local`, which the bootstrap and
//! `upgrade --agent` write (the agent's binary) and a bake commits — is copied once into a
//! named volume ([`USR_DIRS`]; `flotilla-lab-usr-<image id>`), and every host launched from that
//! image gets those directories bind-mounted read-only from the volume. The image itself is
//! unchanged (a bake's `docker commit` takes the same `/usr` from its layers), and a host
//! still cannot change what another reads. A copy whose image is gone is removed the next
//! time a copy is made.
//!
//! The copy is made by a short-lived container from the image itself (root inside it keeps
//! owners, modes and capabilities, whoever runs the coordinator), into a temporary
//! directory that is renamed into place only when complete, so two coordinators copying at
//! once both end with the same one.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, ListVolumesOptions, LogsOptions, RemoveContainerOptions, StartContainerOptions,
    WaitContainerOptions,
};
use futures::StreamExt;

use super::LabError;

/// The directories of `/usr` a host reads from the copy (read-only). Not `local`: hosts
/// write it.
pub const USR_DIRS: [&str; 6] = ["bin", "lib", "lib64", "libexec", "sbin", "share"];
/// The `flotilla.kind` of a copier container.
const COPIER_KIND: &str = "usr-copier";
/// The label a copy's volume carries: the image it was copied from (its id).
pub const LABEL_USR_OF: &str = "flotilla.lab-usr-of";

/// Makes the copy unless it is complete; exits 0 either way. `$@`: [`USR_DIRS`]. A directory
/// the image lacks is made empty (every host gets the same binds); a symbolic link is refused
/// (its target would be resolved on this machine, not in the host).
const COPY_SH: &str = r#"set -eu
[ -d /copy/usr ] && exit 0
t=/copy/.partial-$(hostname)
rm -rf "$t"; mkdir "$t"
for d in "$@"; do
  if [ -L "/usr/$d" ]; then echo "/usr/$d is a symbolic link; the lab copies only directories" >&2; exit 3; fi
  if [ -d "/usr/$d" ]; then cp -a "/usr/$d" "$t/"; else mkdir "$t/$d"; fi
done
mv -T "$t" /copy/usr 2>/dev/null || rm -rf "$t"
[ -d /copy/usr ]"#;

/// The volume that holds `image_id`'s copy.
pub fn volume_name(image_id: &str) -> String {
    let hex = image_id.trim_start_matches("sha256:");
    format!("flotilla-lab-usr-{}", &hex[..hex.len().min(12)])
}

/// The binds a host launched from the image gets, given where its copy's volume is.
pub fn binds(mountpoint: &str) -> Vec<String> {
    USR_DIRS.iter().map(|d| format!("{mountpoint}/usr/{d}:/usr/{d}:ro")).collect()
}

/// Ensures `image`'s copy exists and returns the binds for a host launched from it.
pub async fn ensure(docker: &Docker, image: &str) -> Result<Vec<String>, LabError> {
    let id = docker.inspect_image(image).await?.id.unwrap_or_default();
    if id.is_empty() {
        return Err(LabError::Engine(format!("the Engine gave no id for image {image}")));
    }
    let volume = volume_name(&id);
    let v = docker
        .create_volume(VolumeCreateRequest {
            name: Some(volume.clone()),
            labels: Some(HashMap::from([(LABEL_USR_OF.to_string(), id.clone())])),
            ..Default::default()
        })
        .await?;
    let mountpoint = v.mountpoint;
    // A coordinator that can read the Engine's volumes (root on this machine) sees a complete
    // copy itself; otherwise the copier looks and exits at once.
    let complete = USR_DIRS.iter().all(|d| std::path::Path::new(&mountpoint).join("usr").join(d).is_dir());
    if !complete {
        prune(docker, &id).await;
        copy(docker, image, &volume).await?;
    }
    Ok(binds(&mountpoint))
}

/// Runs the copier from `image` into `volume`; its stderr is the error when it fails.
async fn copy(docker: &Docker, image: &str, volume: &str) -> Result<(), LabError> {
    let name = format!("{volume}-copier-{}", std::process::id());
    let mut cmd = vec!["-c".to_string(), COPY_SH.to_string(), "flotilla-usr-copy".to_string()];
    cmd.extend(USR_DIRS.iter().map(|d| d.to_string()));
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["/bin/sh".to_string()]),
        cmd: Some(cmd),
        network_disabled: Some(true),
        labels: Some(HashMap::from([(super::LABEL_KIND.to_string(), COPIER_KIND.to_string())])),
        host_config: Some(HostConfig {
            binds: Some(vec![format!("{volume}:/copy")]),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    docker
        .create_container(Some(CreateContainerOptions { name: Some(name.clone()), ..Default::default() }), body)
        .await?;
    let ran = run_to_end(docker, &name).await;
    let _ = docker.remove_container(&name, Some(RemoveContainerOptions { force: true, ..Default::default() })).await;
    ran
}

async fn run_to_end(docker: &Docker, name: &str) -> Result<(), LabError> {
    docker.start_container(name, None::<StartContainerOptions>).await?;
    let mut code = 0;
    let mut waits = docker.wait_container(name, None::<WaitContainerOptions>);
    while let Some(w) = waits.next().await {
        match w {
            Ok(r) => code = r.status_code,
            Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => code = c,
            Err(e) => return Err(e.into()),
        }
    }
    if code == 0 {
        return Ok(());
    }
    let mut logs = docker.logs(name, Some(LogsOptions { stderr: true, stdout: true, ..Default::default() }));
    let mut out = String::new();
    while let Some(Ok(l)) = logs.next().await {
        out.push_str(&l.to_string());
    }
    Err(LabError::Engine(format!("copying the host image's /usr for the lab hosts (exit {code}): {}", out.trim())))
}

/// Removes copies whose image is gone (a rebuilt or removed lab image), and the exited copiers
/// of coordinators killed while copying; best effort: a copy still bound by a host stays.
async fn prune(docker: &Docker, keep_id: &str) {
    let exited = HashMap::from([
        ("label".to_string(), vec![format!("{}={COPIER_KIND}", super::LABEL_KIND)]),
        ("status".to_string(), vec!["exited".to_string(), "created".to_string()]),
    ]);
    let copiers = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(exited),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    for c in copiers {
        let _ = docker.remove_container(c.id.as_deref().unwrap_or_default(), None::<RemoveContainerOptions>).await;
    }
    let Ok(list) = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(HashMap::from([("label".to_string(), vec![LABEL_USR_OF.to_string()])])),
        }))
        .await
    else {
        return;
    };
    for v in list.volumes.unwrap_or_default() {
        let of = v.labels.get(LABEL_USR_OF).cloned().unwrap_or_default();
        if of == keep_id || docker.inspect_image(&of).await.is_ok() {
            continue;
        }
        let _ = docker.remove_volume(&v.name, None::<bollard::query_parameters::RemoveVolumeOptions>).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_usr_directory_but_local_is_bound_read_only() {
        let b = binds("/var/lib/docker/volumes/v/_data");
        assert_eq!(b.len(), USR_DIRS.len());
        assert!(b.contains(&"/var/lib/docker/volumes/v/_data/usr/lib:/usr/lib:ro".to_string()), "{b:?}");
        assert!(b.iter().all(|m| m.ends_with(":ro")), "{b:?}");
        assert!(!b.iter().any(|m| m.contains("/usr/local")), "hosts write /usr/local: {b:?}");
    }

    #[test]
    fn the_volume_is_named_by_the_image_id() {
        assert_eq!(volume_name("sha256:0123456789abcdef0123"), "flotilla-lab-usr-0123456789ab");
        assert_eq!(volume_name("abc"), "flotilla-lab-usr-abc");
    }
}
