//! Where everything lives on a Flotilla host. The rendered user-data writes these paths; the
//! agent, the lab and the baker read them. One place, so the three never disagree.

/// The cluster CA certificate(s), PEM, 0644. The agent trusts only this for the coordinator.
pub const CA_PATH: &str = "/etc/flotilla/ca.pem";
/// The one-time join token, 0600, root. Written without a trailing newline.
pub const TOKEN_PATH: &str = "/etc/flotilla/token";
/// The agent's config (TOML), 0644.
pub const AGENT_CONFIG_PATH: &str = "/etc/flotilla/agent.toml";
/// The agent's state directory, created 0700 by the bootstrap script.
pub const STATE_DIR: &str = "/var/lib/flotilla";
/// The agent binary, 0755.
pub const AGENT_BINARY_PATH: &str = "/usr/local/bin/flotilla-agent";
/// The agent's systemd unit name.
pub const AGENT_UNIT_NAME: &str = "flotilla-agent.service";
/// The agent's systemd unit file; its text is [`crate::AGENT_UNIT`].
pub const AGENT_UNIT_PATH: &str = "/etc/systemd/system/flotilla-agent.service";
/// The host bootstrap script, 0755, run by cloud-init's `runcmd`.
pub const BOOTSTRAP_PATH: &str = "/usr/local/lib/flotilla/bootstrap.sh";
/// Written by the host bootstrap script when it gives up; holds the reason (one line).
/// Removed at the start of every run.
pub const BOOTSTRAP_FAILED_PATH: &str = "/var/lib/flotilla/bootstrap-failed";
/// The bake script, 0755, run by cloud-init's `runcmd` on the bake instance. Removes itself on
/// success.
pub const BAKE_SCRIPT_PATH: &str = "/usr/local/lib/flotilla/bake.sh";
/// The CA used to download the agent during a bake. Removed on success, so the image carries
/// no cluster's CA.
pub const BAKE_CA_PATH: &str = "/usr/local/lib/flotilla/bake-ca.pem";
/// Written last by a successful bake: `agent=<version>\nengine=<version>\n`.
pub const BAKE_COMPLETE_PATH: &str = "/var/lib/flotilla/bake-complete";
/// Written by the bake script when it gives up; holds the reason (one line).
pub const BAKE_FAILED_PATH: &str = "/var/lib/flotilla/bake-failed";
/// The unit a reporting bake ([`crate::BakeReport`]) installs and enables: its `ExecStop`
/// runs [`SEAL_SCRIPT_PATH`] when the builder is stopped for capture.
pub const SEAL_UNIT_NAME: &str = "flotilla-bake-seal.service";
pub const SEAL_UNIT_PATH: &str = "/etc/systemd/system/flotilla-bake-seal.service";
/// Cleans a stopped builder for capture (cloud-init state and logs, machine-id, the Engine's
/// identity, the bake CA), then removes the seal unit and itself.
pub const SEAL_SCRIPT_PATH: &str = "/usr/local/lib/flotilla/bake-seal.sh";
/// Where cloud-init keeps what the user-data's commands printed; a reporting bake sends its
/// tail.
pub const CLOUD_INIT_OUTPUT_PATH: &str = "/var/log/cloud-init-output.log";
/// The Engine's config file, where insecure registries are merged in.
pub const DOCKER_DAEMON_JSON_PATH: &str = "/etc/docker/daemon.json";
/// A manager's Engine TLS listener: the agent writes this `docker.service` drop-in (with the
/// certificate, key and Engine client CA beside it) before the Engine's first start.
pub const ENGINE_TLS_DROP_IN_PATH: &str = "/etc/systemd/system/docker.service.d/flotilla-tls.conf";
/// The hold on a manager's Engine, written by the user-data's `bootcmd` while
/// [`ENGINE_TLS_DROP_IN_PATH`] does not exist: runtime drop-ins (gone at reboot) for
/// `docker.service` and `docker.socket` that make their start conditional on the TLS drop-in,
/// so the Engine starts once, already listening on 2376. The agent removes them when it starts
/// the Engine.
pub const ENGINE_HOLD_PATHS: [&str; 2] = [
    "/run/systemd/system/docker.service.d/flotilla-hold.conf",
    "/run/systemd/system/docker.socket.d/flotilla-hold.conf",
];
/// The path the coordinator is expected to serve the agent binary at, over HTTPS with a
/// certificate from the cluster CA (e.g. `https://10.0.0.5:7443/v1/agent/flotilla-agent`).
/// Rendering does not enforce it: [`crate::AgentBinary::url`] is taken as given.
pub const AGENT_DOWNLOAD_PATH: &str = "/v1/agent/flotilla-agent";
