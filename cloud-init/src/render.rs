//! The two entry points: [`render_host`] and [`render_bake`]. Each validates its inputs,
//! assembles `write_files` + `runcmd`, and checks the result (no `PRIVATE KEY`, at most
//! [`USER_DATA_LIMIT`] bytes) before handing it out.

use crate::bootstrap::{self, Mode};
use crate::inputs::normalize_ca_pem;
use crate::paths::{
    AGENT_CONFIG_PATH, AGENT_UNIT_PATH, BAKE_CA_PATH, BAKE_SCRIPT_PATH, BOOTSTRAP_PATH, CA_PATH, SEAL_SCRIPT_PATH,
    SEAL_UNIT_PATH, TOKEN_PATH,
};
use crate::yaml::{self, WriteFile};
use crate::{AGENT_UNIT, BakeInputs, Error, HostInputs, SEAL_SCRIPT, SEAL_UNIT, agent_config};

/// EC2's limit on user-data, in bytes, before base64 encoding. Renders above it are refused.
pub const USER_DATA_LIMIT: usize = 16384;

const ROOT: &str = "root:root";

/// The `#cloud-config` user-data for one cluster host.
///
/// With insecure registries (the lab's), a `bootcmd` merges them into the Engine's daemon.json
/// before the Engine's first start ([`bootstrap::registries_bootcmd`]); a planned manager's
/// ([`HostInputs::engine_tls`]) holds the Engine's first start until the agent has written its
/// TLS listener ([`bootstrap::engine_hold_bootcmd`]).
/// Writes [`CA_PATH`], [`TOKEN_PATH`] (0600, only with a join token), [`AGENT_CONFIG_PATH`],
/// [`AGENT_UNIT_PATH`] and [`BOOTSTRAP_PATH`], and runs the bootstrap script from `runcmd`:
/// Engine (per [`HostInputs::engine`]), insecure registries, agent binary (SHA-256 checked),
/// then `systemctl enable --now flotilla-agent.service`.
pub fn render_host(inputs: &HostInputs) -> Result<String, Error> {
    inputs.validate()?;
    let ca = normalize_ca_pem(&inputs.ca_pem)?;
    let agent_toml = agent_config::render(inputs);
    let script = bootstrap::render(Mode::Host, inputs.engine, &inputs.insecure_registries, &inputs.agent, None);
    let mut files = vec![WriteFile { path: CA_PATH, owner: ROOT, permissions: "0644", content: &ca }];
    if let Some(token) = &inputs.join_token {
        files.push(WriteFile { path: TOKEN_PATH, owner: ROOT, permissions: "0600", content: token });
    }
    files.push(WriteFile { path: AGENT_CONFIG_PATH, owner: ROOT, permissions: "0644", content: &agent_toml });
    files.push(WriteFile { path: AGENT_UNIT_PATH, owner: ROOT, permissions: "0644", content: AGENT_UNIT });
    files.push(WriteFile { path: BOOTSTRAP_PATH, owner: ROOT, permissions: "0755", content: &script });
    let title = format!(
        "Flotilla user-data for host {} of cluster {}, rendered by flotilla-cloud-init.",
        inputs.host_name, inputs.cluster
    );
    let mut bootcmd: Vec<Vec<String>> =
        bootstrap::registries_bootcmd(&inputs.insecure_registries).into_iter().collect();
    if inputs.engine_tls {
        bootcmd.push(bootstrap::engine_hold_bootcmd());
    }
    let bootcmd: Vec<Vec<&str>> = bootcmd.iter().map(|argv| argv.iter().map(String::as_str).collect()).collect();
    let bootcmd: Vec<&[&str]> = bootcmd.iter().map(Vec::as_slice).collect();
    checked(yaml::document(&[&title], &bootcmd, &files, &[&[BOOTSTRAP_PATH]]))
}

/// The `#cloud-config` user-data for a bake instance: installs Docker Engine and the agent
/// binary, installs the agent's unit disabled, and carries no cluster identity (no names, no
/// token, no agent config). It ends by writing [`crate::paths::BAKE_COMPLETE_PATH`] and logging
/// `flotilla-bake: done agent=<version> engine=<version>`. On failure it writes the reason to
/// [`crate::paths::BAKE_FAILED_PATH`] instead. With [`BakeInputs::report`] it also reports
/// either outcome to the baker and, on success, installs the seal unit (see
/// [`crate::BakeReport`]): the baker of such a builder cannot clean it from outside.
///
/// Without a report, cleaning the instance for capture is the baker's job, after it sees the marker: stop
/// `docker.service`, `cloud-init clean --logs` (so the next boot is a first boot), truncate
/// `/etc/machine-id`, and remove the Engine's identity (`/etc/docker/key.json` on Engine 20.10,
/// `/var/lib/docker/engine-id` on newer Engines) so hosts cloned from the image differ.
pub fn render_bake(inputs: &BakeInputs) -> Result<String, Error> {
    inputs.validate()?;
    let ca = normalize_ca_pem(&inputs.ca_pem)?;
    let script = bootstrap::render(Mode::Bake, inputs.engine, &[], &inputs.agent, inputs.report.as_ref());
    let mut files = vec![
        WriteFile { path: BAKE_CA_PATH, owner: ROOT, permissions: "0644", content: &ca },
        WriteFile { path: AGENT_UNIT_PATH, owner: ROOT, permissions: "0644", content: AGENT_UNIT },
    ];
    if inputs.report.is_some() {
        files.push(WriteFile { path: SEAL_UNIT_PATH, owner: ROOT, permissions: "0644", content: SEAL_UNIT });
        files.push(WriteFile { path: SEAL_SCRIPT_PATH, owner: ROOT, permissions: "0755", content: SEAL_SCRIPT });
    }
    files.push(WriteFile { path: BAKE_SCRIPT_PATH, owner: ROOT, permissions: "0755", content: &script });
    let title = "Flotilla bake user-data: Docker Engine and the agent, no cluster identity.";
    checked(yaml::document(&[title], &[], &files, &[&[BAKE_SCRIPT_PATH]]))
}

/// The last word on every render.
fn checked(user_data: String) -> Result<String, Error> {
    if user_data.contains("PRIVATE KEY") {
        return Err(Error::PrivateKeyInOutput);
    }
    if user_data.len() > USER_DATA_LIMIT {
        return Err(Error::TooLarge { size: user_data.len(), limit: USER_DATA_LIMIT });
    }
    Ok(user_data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_checks() {
        assert_eq!(checked("#cloud-config\n".into()), Ok("#cloud-config\n".into()));
        assert_eq!(checked("x PRIVATE KEY".into()), Err(Error::PrivateKeyInOutput));
        assert_eq!(
            checked("x".repeat(USER_DATA_LIMIT + 1)),
            Err(Error::TooLarge { size: USER_DATA_LIMIT + 1, limit: USER_DATA_LIMIT })
        );
        assert!(checked("x".repeat(USER_DATA_LIMIT)).is_ok());
    }
}
