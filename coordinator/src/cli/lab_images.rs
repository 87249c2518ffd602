//! `coordinator lab-images`: build the lab's images that are missing and print their tags
//! (on the lab's Engine: `FLOTILLA_LAB_DOCKER_HOST`, else `[lab] docker_host` in
//! ./flotilla.toml, else the local socket).

use super::CliError;
use crate::ops::cluster_config::ClusterConfig;
use crate::providers::lab::engine::EngineAddress;

pub async fn run() -> Result<(), CliError> {
    let configured = ClusterConfig::load(std::path::Path::new("flotilla.toml"), false)
        .map(|c| c.lab.docker_host)
        .unwrap_or_default();
    let engine = EngineAddress::resolve(&configured);
    let i = crate::providers::lab::images::ensure(false, &engine).await.map_err(CliError::LabImages)?;
    outln!("host={}\nconsul={}\nhello={}\nregistry={}", i.host, i.consul, i.hello, i.registry);
    Ok(())
}
