//! What a deploy reports when it is done (`--output json` prints it; the table view renders
//! from it): the hosts with their roles, addresses and instance ids, what changed, the
//! swarm's and Consul's own views, the smoke test, and the `docker` environment.

use std::collections::HashMap;
use std::path::Path;

use super::verify_and_smoke::Verified;
use super::{Changed, Run};
use crate::ops::verify;
use crate::providers::{Host, ProviderKind};

/// The final report (`--output json` prints it).
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub cluster: String,
    pub provider: ProviderKind,
    pub changed: bool,
    pub launched: Vec<String>,
    pub removed: Vec<String>,
    pub hosts: Vec<ReportHost>,
    pub swarm: verify::SwarmSummary,
    pub consul: verify::ConsulSummary,
    pub smoke_test: Option<verify::SmokeResult>,
    /// Hosts replaced onto the launch image (`deploy --rolling`, or finishing an interrupted
    /// `upgrade --image`), in order.
    pub replaced: Vec<crate::ops::upgrade::rolling::HostReplaced>,
    /// Planned hosts still on another image than the launch image (a plain deploy leaves
    /// them; `deploy --rolling` replaces them), or none.
    pub image_drift: Option<super::drift::ImageDrift>,
    pub docker_env: Vec<(String, String)>,
    pub duration_s: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct ReportHost {
    pub name: String,
    pub roles: Vec<String>,
    pub address: String,
    pub instance_id: String,
}

/// The report of a finished run.
pub fn report(
    run: &Run<'_>,
    changed: Changed,
    hosts: &[Host],
    addresses: &HashMap<String, String>,
    verified: Verified,
    docker_dir: &Path,
    image_drift: Option<super::drift::ImageDrift>,
) -> Report {
    let Verified { swarm, consul, smoke_test } = verified;
    let docker_env = verify::docker_env(&swarm.leader_ip, docker_dir);
    Report {
        cluster: run.config.name.clone(),
        provider: run.prepared.provider.kind(),
        changed: changed.any(),
        hosts: run
            .planned
            .iter()
            .map(|h| ReportHost {
                name: h.name.clone(),
                roles: h.roles.iter().map(|r| r.name().to_string()).collect(),
                address: addresses.get(&h.name).cloned().unwrap_or_default(),
                instance_id: hosts.iter().find(|x| x.name == h.name).map(|x| x.instance_id.clone()).unwrap_or_default(),
            })
            .collect(),
        launched: changed.launched,
        removed: changed.removed,
        replaced: changed.replaced,
        image_drift,
        swarm,
        consul,
        smoke_test,
        docker_env,
        duration_s: run.p.elapsed().as_secs_f64(),
    }
}
