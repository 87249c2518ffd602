//! The agent's systemd unit, kept as a plain file (`src/flotilla-agent.service`) and exported
//! so other code (the lab's image builder, tests) uses the very same text.

/// The text of `/etc/systemd/system/flotilla-agent.service`
/// ([`crate::paths::AGENT_UNIT_PATH`]).
pub const AGENT_UNIT: &str = include_str!("flotilla-agent.service");

/// The text of [`crate::paths::SEAL_UNIT_PATH`], written by a reporting bake
/// ([`crate::BakeReport`]); enabled and started only when the bake succeeded.
pub const SEAL_UNIT: &str = include_str!("flotilla-bake-seal.service");

/// The text of [`crate::paths::SEAL_SCRIPT_PATH`], the seal unit's `ExecStop`.
pub const SEAL_SCRIPT: &str = include_str!("bake-seal.sh");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seal_cleans_everything_and_removes_itself() {
        use crate::paths::{BAKE_CA_PATH, BAKE_SCRIPT_PATH, SEAL_SCRIPT_PATH, SEAL_UNIT_NAME, SEAL_UNIT_PATH};
        assert!(SEAL_UNIT.contains(&format!("\nExecStop={SEAL_SCRIPT_PATH}\n")), "{SEAL_UNIT}");
        assert!(SEAL_UNIT.contains("\nType=oneshot\nRemainAfterExit=yes\n"));
        let wants = format!("/etc/systemd/system/multi-user.target.wants/{SEAL_UNIT_NAME}");
        for needed in [
            "cloud-init clean --logs",
            ": >/etc/machine-id",
            "/etc/docker/key.json",
            "/var/lib/docker/engine-id",
            BAKE_CA_PATH,
            BAKE_SCRIPT_PATH,
            SEAL_UNIT_PATH,
            SEAL_SCRIPT_PATH,
            &wants,
        ] {
            assert!(SEAL_SCRIPT.contains(needed), "the seal misses {needed}");
        }
        for text in [SEAL_UNIT, SEAL_SCRIPT] {
            assert!(text.bytes().all(|b| b == b'\n' || (0x20..=0x7e).contains(&b)));
        }
    }
    use crate::paths::{AGENT_BINARY_PATH, AGENT_CONFIG_PATH};

    #[test]
    fn unit_runs_the_agent_with_its_config() {
        let exec = format!("\nExecStart={AGENT_BINARY_PATH} --config {AGENT_CONFIG_PATH}\n");
        assert!(AGENT_UNIT.contains(&exec), "{AGENT_UNIT}");
        for line in [
            "After=network-online.target docker.service",
            "Wants=network-online.target docker.service",
            "Restart=always",
            "RestartSec=2",
            "WantedBy=multi-user.target",
        ] {
            assert!(AGENT_UNIT.lines().any(|l| l == line), "missing {line}");
        }
        // Plain printable ASCII keeps it a readable literal block in the user-data.
        assert!(AGENT_UNIT.bytes().all(|b| b == b'\n' || (0x20..=0x7e).contains(&b)));
        // No option that would stop a root agent from using the Docker socket or /etc/docker.
        for forbidden in ["User=", "ProtectSystem", "PrivateTmp", "CapabilityBoundingSet", "ProtectHome"] {
            assert!(!AGENT_UNIT.lines().any(|l| l.starts_with(forbidden)), "{forbidden}");
        }
    }
}
