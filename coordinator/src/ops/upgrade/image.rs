//! `coordinator upgrade --image IMAGE --dry-run` (issue 17, part 1): the plan of a rolling
//! replacement onto a new host image — every host, the image the provider says it runs (the lab
//! container's image, the instance's AMI id), the target as the provider resolves it, and the
//! order (workers, managers, the swarm's leader last, handed over first).
//!
//! Without `--dry-run`, the replacement itself ([`super::rolling`]), under the ops lock.

use std::path::PathBuf;

use flotilla_proto::v1;
use serde::Serialize;

use super::{UpgradeError, rank, role_of};
use crate::control_plane::settings::StatePaths;
use crate::providers::{Host, Provider, ProviderRecord};

pub struct ImageUpgradeOptions {
    pub cluster: String,
    pub state_root: PathBuf,
    /// The image as the operator named it (lab image, AMI id or SSM parameter).
    pub image: String,
    pub dry_run: bool,
    /// No progress lines (`--output json`).
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageUpgradeReport {
    pub cluster: String,
    pub dry_run: bool,
    /// What `--image` resolved to at the provider (the AMI id on EC2).
    pub target_image: String,
    /// Every host, in the order it would be replaced.
    pub hosts: Vec<ImageStep>,
    pub to_replace: usize,
    /// The hosts replaced (without `--dry-run`), in order.
    pub replaced: Vec<super::rolling::HostReplaced>,
    /// The whole run, without `--dry-run`.
    pub total_s: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageStep {
    pub order: usize,
    pub host: String,
    /// worker, manager, leader (its leadership handed over before it is replaced).
    pub role: String,
    /// The image the provider says the host runs ("" when the provider has no such host).
    pub current_image: String,
    /// "replace" or "skip" (already on the target).
    pub action: &'static str,
}

/// The order and what happens to each host (pure): `hosts` as the control plane knows them,
/// `at` as the provider reports them.
pub fn plan(hosts: &[v1::HostStatus], at: &[Host], target: &str) -> Vec<ImageStep> {
    let mut live: Vec<&v1::HostStatus> = hosts.iter().filter(|h| !h.revoked).collect();
    live.sort_by_key(|h| rank(h));
    live.iter()
        .enumerate()
        .map(|(i, h)| {
            let current = at.iter().find(|x| x.name == h.name).map(|x| x.image.clone()).unwrap_or_default();
            ImageStep {
                order: i + 1,
                host: h.name.clone(),
                role: role_of(h),
                action: if current == target { "skip" } else { "replace" },
                current_image: current,
            }
        })
        .collect()
}

pub async fn upgrade_image(opts: ImageUpgradeOptions) -> Result<ImageUpgradeReport, UpgradeError> {
    let started = std::time::Instant::now();
    let state_dir = opts.state_root.join(&opts.cluster);
    let _lock = match opts.dry_run {
        true => None,
        false => Some(crate::ops::lock::OpsLock::take(&state_dir, &opts.cluster, "upgrade")?),
    };
    let mut admin =
        crate::admin_client::connect_local(&opts.cluster, &StatePaths::new(&state_dir).admin_socket()).await?;
    let provider = Provider::from_record(&opts.cluster, &state_dir, &ProviderRecord::load(&state_dir)).await?;
    let target = provider.resolve_image(&opts.image, "--image").await?;
    let status = admin.status(v1::StatusRequest::default()).await?.into_inner();
    let hosts = plan(&status.hosts, &provider.describe().await?, &target);
    let to_replace = hosts.iter().filter(|h| h.action == "replace").count();
    let pending = crate::ops::host_names::HostNames::load(&state_dir)?.pending.is_some();
    let replaced = match opts.dry_run || (to_replace == 0 && !pending) {
        true => vec![],
        false => super::rolling::roll(&opts.cluster, &state_dir, &target, admin, opts.quiet).await?,
    };
    Ok(ImageUpgradeReport {
        cluster: opts.cluster,
        dry_run: opts.dry_run,
        target_image: target,
        hosts,
        to_replace,
        replaced,
        total_s: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::HostState;

    fn status(name: &str, manager_status: &str, is_manager: bool) -> v1::HostStatus {
        v1::HostStatus {
            name: name.into(),
            health: Some(v1::HealthSample {
                swarm: Some(v1::SwarmView {
                    is_manager,
                    manager_status: manager_status.into(),
                    local_state: "active".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn at(name: &str, image: &str) -> Host {
        Host {
            name: name.into(),
            instance_id: format!("i-{name}"),
            role: String::new(),
            state: HostState::Running,
            private_ip: None,
            image: image.into(),
        }
    }

    #[test]
    fn workers_then_managers_the_leader_last_and_hosts_on_the_target_skipped() {
        let hosts = [
            status("manager0", "leader", true),
            status("manager1", "reachable", true),
            status("manager2", "reachable", true),
            status("node0", "", false),
            status("node1", "", false),
        ];
        let at = [at("manager0", "old"), at("manager1", "new"), at("manager2", "old"), at("node0", "old")];
        let p = plan(&hosts, &at, "new");
        let got: Vec<(usize, &str, &str, &str, &str)> =
            p.iter().map(|s| (s.order, s.host.as_str(), s.role.as_str(), s.current_image.as_str(), s.action)).collect();
        assert_eq!(
            got,
            [
                (1, "node0", "worker", "old", "replace"),
                (2, "node1", "worker", "", "replace"),
                (3, "manager1", "manager", "new", "skip"),
                (4, "manager2", "manager", "old", "replace"),
                (5, "manager0", "leader", "old", "replace"),
            ]
        );
    }
}
