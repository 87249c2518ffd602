//! Image drift (issue 17): planned hosts that run another image than the one deploy launches
//! new hosts from (`images.host` in flotilla.toml or `--image`; empty: the provider's default —
//! the lab host image, the latest AL2023 AMI), as the provider reports each host's image
//! ([`Host::image`]).
//!
//! A plain deploy converges as always and leaves such hosts running, but reports them (table
//! and `--output json`: [`ImageDrift`]) and names the command that replaces them; `deploy
//! --rolling` then replaces them as `upgrade --image` does ([`crate::ops::upgrade::rolling`]).

use serde::Serialize;

use super::Prepared;
use crate::ops::cluster_config::ClusterConfig;
use crate::ops::plan::PlannedHost;
use crate::providers::{Host, Provider};

/// Planned hosts on another image than the launch image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageDrift {
    /// The image deploy launches hosts from, as the provider reports it (the AMI id on EC2).
    pub target_image: String,
    pub hosts: Vec<DriftedHost>,
    /// The command that replaces them, one at a time, add before remove.
    pub fix: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DriftedHost {
    pub host: String,
    /// The image the provider says it runs.
    pub image: String,
}

/// The image hosts are launched from, as [`Host::image`] reports it: `images.host` (the lab's
/// image name; on EC2 resolved by `prepare_provider` into the launch context's AMI id), else
/// the provider's default.
pub fn launch_image(c: &ClusterConfig, prepared: &Prepared) -> String {
    match (&prepared.provider, &prepared.aws) {
        (_, Some(ctx)) => ctx.ami.id.clone(),
        (Provider::Lab(l), _) if c.images.host.is_empty() => l.images.host.clone(),
        _ => c.images.host.clone(),
    }
}

/// The planned hosts the provider reports on an image other than `target` (pure). A host the
/// provider does not report, or reports no image for, is not counted.
pub fn drifted(planned: &[PlannedHost], hosts: &[Host], target: &str) -> Vec<DriftedHost> {
    planned
        .iter()
        .filter_map(|p| hosts.iter().find(|h| h.name == p.name))
        .filter(|h| !h.image.is_empty() && h.image != target)
        .map(|h| DriftedHost { host: h.name.clone(), image: h.image.clone() })
        .collect()
}

/// The drift report, or `None` when every planned host runs `target`.
pub fn report(cluster: &str, planned: &[PlannedHost], hosts: &[Host], target: &str) -> Option<ImageDrift> {
    let hosts = drifted(planned, hosts, target);
    (!hosts.is_empty()).then(|| ImageDrift { target_image: target.to_string(), hosts, fix: fix(cluster, target) })
}

/// What replaces drifted hosts.
pub fn fix(cluster: &str, target: &str) -> String {
    let me = crate::ui::self_command();
    format!(
        "`{me} --cluster {cluster} deploy --rolling` with the same file and flags (or `{me} --cluster {cluster} upgrade --image {target}`) replaces them one at a time, add before remove; `--dry-run` shows the order"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::host_names::HostNames;
    use crate::providers::HostState;

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
    fn hosts_on_another_image_drift_and_the_report_names_the_rolling_deploy() {
        let planned = crate::ops::plan::plan(&ClusterConfig::default(), &HostNames::default());
        let hosts = [
            at("manager0", "img:1"),
            at("manager1", "img:2"),
            at("manager2", ""),
            at("node0", "img:1"),
            // Not planned (being removed by this deploy): not drift.
            at("node7", "img:1"),
        ];
        let d = drifted(&planned, &hosts, "img:2");
        let names: Vec<&str> = d.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names, ["manager0", "node0"]);
        assert_eq!(d[0].image, "img:1");
        let r = report("c1", &planned, &hosts, "img:2").expect("drift");
        assert_eq!(r.target_image, "img:2");
        assert!(
            r.fix.contains("--cluster c1 deploy --rolling") && r.fix.contains("upgrade --image img:2"),
            "{}",
            r.fix
        );
        assert_eq!(report("c1", &planned, &[at("manager0", "img:2"), at("node1", "img:2")], "img:2"), None);
    }
}
