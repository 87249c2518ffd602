//! `flotilla.toml`: the cluster an operator wants. Typed, unknown keys refused, every error
//! names the field and the file; flags override it. `coordinator init` writes [`EXAMPLE`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::providers::ProviderKind;
/// `[aws]` lives with the AWS provider, which reads it; this module only validates it.
pub use crate::providers::aws::AwsSettings;
/// `[lab]` lives with the lab provider.
pub use crate::providers::lab::LabSettings;

/// The commented example `coordinator init` writes.
pub const EXAMPLE: &str = r#"# flotilla.toml — the cluster `coordinator deploy` builds. Every key is optional.

# The cluster's name: labels, tags, the state directory, Consul's KV prefix.
name = "flotilla"

# Where hosts come from: "lab" (containers on this machine that boot like EC2 instances)
# or "aws" (EC2).
provider = "lab"

# Swarm managers (Raft replicas; the leader is the seed guide's "primary").
# 3 tolerate the loss of 1, 5 tolerate 2. Even counts and a single manager are refused
# unless `force = true`.
managers = 3

# Swarm workers.
nodes = 2

# Where the Consul servers (the discovery backend) run: "managers" puts one on each
# manager, a 3-server Consul cluster by default.
consul = "managers"

# Run the seed's smoke test (a hello-world service on the nodes) after deploying.
smoke_test = true

# Allow a manager count that cannot keep quorum through a failure.
force = false

[images]
# Role images. Empty: the provider's default (the lab's own images, or on AWS
# HashiCorp's official Consul image and busybox for the smoke test).
consul = ""
hello = ""
# A baked host image (lab image or AMI id); empty: the provider's default.
host = ""
# Credentials for a private registry holding the role images: the user, and the name of
# the environment variable that holds the password (read by `deploy`, sent to agents over
# their mTLS sessions only).
registry_username = ""
registry_password_env = ""
# Registries the hosts' Engines reach over plain HTTP (host:port), e.g. a mirror in the VPC.
insecure_registries = []

[instance_types]
manager = "t3.small"
node = "t3.small"

[coordinator]
# The agent port (on the lab it listens on the lab network's gateway address). Unset: each
# cluster on this machine gets its own, the first free one from 7443, recorded in its state
# (`<state>/listen`) and kept by every later deploy; `coordinator status` shows it.
# port = 7443
# The address hosts dial (AWS: this machine's address as the instances reach it, e.g. its
# private IP in the same VPC, or a public DNS name); the lab uses its gateway address.
advertise = ""
# The address the agent port listens on; empty: the lab gateway (lab), 0.0.0.0 (aws).
listen = ""
# Where the control plane serves Prometheus metrics (/metrics) and its read-only status page
# (/): `ip:port`. Empty: 127.0.0.1 and a free port, recorded in `<state>/metrics-address`.
# Keep it on loopback and reach it through an SSH tunnel (README, docs/SECURITY.md).
metrics_listen = ""

[heal]
# "auto": the control plane replaces a host that is lost — its agent unreachable for
# `grace` seconds AND the provider reporting it gone or stopped — one host at a time, never
# at the cost of quorum. "off": only `coordinator heal` does. A host that is unreachable but
# still running (a network partition) is reported, never replaced.
mode = "auto"
grace = 60

[backup]
# How often the control plane takes a backup (Swarm's Raft state from a manager that does
# not lead, and a Consul snapshot), e.g. "6h", "90m", "off"; and how many of each it keeps.
every = "6h"
keep = 8

[lab]
# This machine's Docker Engine, where lab hosts run (FLOTILLA_LAB_DOCKER_HOST overrides it).
# DOCKER_HOST is never used for the lab: `eval "$(coordinator env)"` points it at a cluster.
# Empty: unix:///var/run/docker.sock.
docker_host = ""

[aws]
# Region and credentials come from the standard chain (AWS_REGION, AWS_PROFILE, SSO,
# instance role) unless set here.
region = ""
profile = ""
# Any EC2-compatible endpoint (also --endpoint-url); empty: AWS's own.
endpoint_url = ""
# Empty: the region's default VPC and one subnet per availability zone.
vpc_id = ""
subnet_ids = []
# Who may reach the managers' Engine API (2376, mutual TLS): the coordinator's and the
# operators' address range. Required for aws.
admin_cidr = ""
# Who may reach SSH (22); empty: no SSH rule at all.
ssh_cidr = ""
# An EC2 key pair for SSH; empty: none.
key_name = ""
root_volume_gib = 20
"#;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub name: String,
    pub provider: ProviderKind,
    pub managers: u32,
    pub nodes: u32,
    pub consul: ConsulPlacement,
    pub smoke_test: bool,
    pub force: bool,
    pub images: Images,
    pub instance_types: InstanceTypes,
    pub coordinator: CoordinatorSettings,
    pub heal: HealSettings,
    pub backup: BackupSettings,
    pub lab: LabSettings,
    pub aws: AwsSettings,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: "flotilla".into(),
            provider: ProviderKind::Lab,
            managers: 3,
            nodes: 2,
            consul: ConsulPlacement::Managers,
            smoke_test: true,
            force: false,
            images: Images::default(),
            instance_types: InstanceTypes::default(),
            coordinator: CoordinatorSettings::default(),
            heal: HealSettings::default(),
            backup: BackupSettings::default(),
            lab: LabSettings::default(),
            aws: AwsSettings::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConsulPlacement {
    Managers,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Images {
    pub consul: String,
    pub hello: String,
    pub host: String,
    /// Registry user for pulling role images (empty: anonymous).
    pub registry_username: String,
    /// The environment variable holding that user's password (never the password itself:
    /// this file is not a secret store).
    pub registry_password_env: String,
    /// Registries reached over plain HTTP (`host:port`), e.g. a mirror inside the VPC.
    pub insecure_registries: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceTypes {
    pub manager: String,
    pub node: String,
}

impl Default for InstanceTypes {
    fn default() -> Self {
        Self { manager: "t3.small".into(), node: "t3.small".into() }
    }
}

/// `[heal]`: how a lost host is replaced (`ops::heal`; the control plane's auto-heal).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealSettings {
    /// "auto": the control plane replaces a lost host by itself; "off": only `coordinator heal`.
    pub mode: HealMode,
    /// Seconds an agent must be unreachable (and its host gone at the provider) before the
    /// host counts as lost.
    pub grace: u32,
}

impl Default for HealSettings {
    fn default() -> Self {
        Self { mode: HealMode::Auto, grace: crate::control_plane::healer::DEFAULT_GRACE_S }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HealMode {
    #[default]
    Auto,
    Off,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorSettings {
    /// The agent port; `None`: the cluster's recorded one, else a free one from 7443
    /// (`ops::deploy::port`).
    pub port: Option<u16>,
    pub advertise: String,
    pub listen: String,
    /// `/metrics` and the status page: `ip:port`; empty: loopback, a free port.
    pub metrics_listen: String,
}

/// `[backup]`: the control plane's backup schedule and retention (issue 16).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSettings {
    /// "6h", "90m", "3600s", "1d" or "off".
    pub every: String,
    /// Backups kept per kind (Swarm, Consul), the newest.
    pub keep: usize,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self { every: "6h".into(), keep: crate::control_plane::backup::policy::DEFAULT_KEEP }
    }
}

impl BackupSettings {
    /// The policy the control plane follows (`<state>/backup-policy.json`).
    pub fn policy(&self) -> Result<crate::control_plane::backup::policy::Policy, Invalid> {
        let every = self.every.trim();
        let every_s = if every == "off" {
            0
        } else {
            let (n, unit) = every.split_at(every.find(|c: char| !c.is_ascii_digit()).unwrap_or(every.len()));
            let n: u64 =
                n.parse().map_err(|_| ("backup.every", format!("'{every}': use e.g. \"6h\", \"90m\" or \"off\"")))?;
            let mult = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86400,
                _ => return Err(("backup.every", format!("'{every}': the unit is s, m, h or d (e.g. \"6h\")"))),
            };
            n * mult
        };
        if every_s != 0 && every_s < 60 {
            return Err((
                "backup.every",
                format!("'{every}': at least 1 minute (a Swarm backup stops a manager's Engine)"),
            ));
        }
        if self.keep == 0 {
            return Err(("backup.keep", "keep at least 1 backup of each kind".into()));
        }
        Ok(crate::control_plane::backup::policy::Policy { every_s, keep: self.keep })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{field}`: {problem}")]
    Invalid { path: String, field: &'static str, problem: String },
}

/// The quorum table every refusal quotes.
pub const QUORUM_TABLE: &str = "managers  quorum  tolerates the loss of
       1       1        0
       2       2        0
       3       2        1   <- the smallest HA swarm
       4       3        1
       5       3        2
       7       4        3";

impl ClusterConfig {
    /// Loads `path`; a missing file at the default path means all defaults.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read { path: path.to_path_buf(), source });
            }
        };
        toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim().to_string() })
    }

    /// Where a deploy records the configuration it converged to: `heal` (and auto-heal)
    /// rebuild exactly that, whatever flotilla.toml says since.
    pub fn record_path(state_dir: &Path) -> PathBuf {
        state_dir.join("cluster.toml")
    }

    /// Records this configuration as deployed (0600).
    pub fn record(&self, state_dir: &Path) -> Result<(), ConfigError> {
        let path = Self::record_path(state_dir);
        let text =
            toml::to_string(self).map_err(|e| ConfigError::Parse { path: path.clone(), message: e.to_string() })?;
        flotilla_proto::fs::write_private(&path, text.as_bytes()).map_err(|source| ConfigError::Read { path, source })
    }

    /// The configuration the last deploy recorded.
    pub fn recorded(state_dir: &Path) -> Result<Self, ConfigError> {
        Self::load(&Self::record_path(state_dir), true)
    }

    /// Checks the whole configuration; `origin` names the file (or "flags") in messages.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |field, problem: String| ConfigError::Invalid { path: origin.to_string(), field, problem };
        if !crate::control_plane::settings::valid_name(&self.name) {
            return Err(bad("name", format!("'{}': use 1-63 of a-z, 0-9 and '-'", self.name)));
        }
        self.validate_topology().map_err(|(field, problem)| bad(field, problem))?;
        self.validate_images().map_err(|(field, problem)| bad(field, problem))?;
        self.validate_coordinator().map_err(|(field, problem)| bad(field, problem))?;
        if self.heal.grace < crate::control_plane::healer::MIN_GRACE_S {
            return Err(bad(
                "heal.grace",
                format!(
                    "{} s: at least {} s, or a host that merely rebooted would be replaced",
                    self.heal.grace,
                    crate::control_plane::healer::MIN_GRACE_S
                ),
            ));
        }
        self.backup.policy().map_err(|(field, problem)| bad(field, problem))?;
        if self.provider == ProviderKind::Aws {
            self.validate_aws().map_err(|(field, problem)| bad(field, problem))?;
        }
        Ok(())
    }

    /// Managers and nodes: counts that keep quorum (or `force`), room for the smoke test.
    fn validate_topology(&self) -> Result<(), Invalid> {
        if self.managers == 0 {
            return Err(("managers", "a swarm needs at least one manager".into()));
        }
        if self.managers > 7 {
            return Err((
                "managers",
                format!("{} managers: more than 7 slows Raft down without adding safety", self.managers),
            ));
        }
        if !self.force && (self.managers == 1 || self.managers.is_multiple_of(2)) {
            return Err((
                "managers",
                format!(
                    "{} manager{} cannot keep quorum through the loss of {} (set `force = true` or pass --force to accept that):\n{QUORUM_TABLE}",
                    self.managers,
                    if self.managers == 1 { "" } else { "s" },
                    if self.managers == 1 { "it" } else { "one more than an odd count would" },
                ),
            ));
        }
        if self.smoke_test && self.nodes == 0 {
            return Err((
                "nodes",
                "0 nodes: the smoke test schedules its hello service on the nodes; add a node or set `smoke_test = false`".into(),
            ));
        }
        if self.nodes > 100 {
            return Err(("nodes", format!("{} nodes: at most 100 per deploy", self.nodes)));
        }
        Ok(())
    }

    /// `[images]`: a registry user comes with the name of a set variable holding its password.
    fn validate_images(&self) -> Result<(), Invalid> {
        if self.images.registry_username.is_empty() {
            return Ok(());
        }
        if self.images.registry_password_env.is_empty() {
            return Err((
                "images.registry_password_env",
                "set it to the name of the environment variable holding the registry password".into(),
            ));
        }
        if std::env::var_os(&self.images.registry_password_env).is_none() {
            return Err((
                "images.registry_password_env",
                format!("the environment variable {} is not set", self.images.registry_password_env),
            ));
        }
        Ok(())
    }

    /// `[coordinator]`: a port, an address hosts can dial, an IP to listen on.
    fn validate_coordinator(&self) -> Result<(), Invalid> {
        if self.coordinator.port == Some(0) {
            return Err(("coordinator.port", "must not be 0".into()));
        }
        if !self.coordinator.advertise.is_empty() && !valid_address(&self.coordinator.advertise) {
            return Err((
                "coordinator.advertise",
                format!("'{}' is neither an IP address nor a DNS name", self.coordinator.advertise),
            ));
        }
        if !self.coordinator.listen.is_empty() && self.coordinator.listen.parse::<std::net::IpAddr>().is_err() {
            return Err(("coordinator.listen", format!("'{}' is not an IP address", self.coordinator.listen)));
        }
        if !self.coordinator.metrics_listen.is_empty()
            && self.coordinator.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err((
                "coordinator.metrics_listen",
                format!(
                    "'{}' is not an ip:port (e.g. 127.0.0.1:9464; keep it on loopback unless you mean to expose it)",
                    self.coordinator.metrics_listen
                ),
            ));
        }
        Ok(())
    }

    /// What the aws provider needs: an address to advertise, the admin range (a CIDR), a
    /// valid endpoint URL, root volume size and instance types.
    fn validate_aws(&self) -> Result<(), Invalid> {
        if self.coordinator.advertise.is_empty() {
            return Err((
                "coordinator.advertise",
                "the aws provider needs the address instances dial to reach this coordinator (its IP in the VPC, or a DNS name)".into(),
            ));
        }
        if self.aws.admin_cidr.is_empty() {
            return Err((
                "aws.admin_cidr",
                "the aws provider needs the address range allowed to reach the managers' Engine API on 2376 (e.g. this machine's address/32); \
                 it is never opened to the world unless you write 0.0.0.0/0"
                    .into(),
            ));
        }
        validate_cidr("aws.admin_cidr", &self.aws.admin_cidr).map_err(|e| ("aws.admin_cidr", e.to_string()))?;
        if !self.aws.ssh_cidr.is_empty() {
            validate_cidr("aws.ssh_cidr", &self.aws.ssh_cidr).map_err(|e| ("aws.ssh_cidr", e.to_string()))?;
        }
        let e = &self.aws.endpoint_url;
        if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
            return Err(("aws.endpoint_url", format!("'{}' is not an http(s) URL", self.aws.endpoint_url)));
        }
        if !(8..=16384).contains(&self.aws.root_volume_gib) {
            return Err(("aws.root_volume_gib", format!("{} GiB: use 8 to 16384", self.aws.root_volume_gib)));
        }
        for (field, t) in [
            ("instance_types.manager", &self.instance_types.manager),
            ("instance_types.node", &self.instance_types.node),
        ] {
            if t.is_empty() || !t.contains('.') {
                return Err((field, format!("'{t}' is not an EC2 instance type (e.g. t3.small)")));
            }
        }
        Ok(())
    }
}

/// A refusal before it names the file: the field and the problem.
type Invalid = (&'static str, String);

/// Why a CIDR was refused (each names the field it came from).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("`{field}`: '{cidr}' is not a CIDR (write e.g. 203.0.113.4/32)")]
    NotCidr { field: String, cidr: String },
    #[error("`{field}`: '{ip}' is not an IPv4 address")]
    NotIpv4 { field: String, ip: String },
    #[error("`{field}`: '/{len}' is not a prefix length (0-32)")]
    Prefix { field: String, len: String },
}

/// Checks a CIDR given for `field`: IPv4 `a.b.c.d/n`.
pub fn validate_cidr(field: &str, cidr: &str) -> Result<(), CidrError> {
    let field = field.to_string();
    let Some((ip, len)) = cidr.split_once('/') else {
        return Err(CidrError::NotCidr { field, cidr: cidr.to_string() });
    };
    if ip.parse::<std::net::Ipv4Addr>().is_err() {
        return Err(CidrError::NotIpv4 { field, ip: ip.to_string() });
    }
    match len.parse::<u8>() {
        Ok(n) if n <= 32 => Ok(()),
        _ => Err(CidrError::Prefix { field, len: len.to_string() }),
    }
}

fn valid_address(a: &str) -> bool {
    if a.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    // A DNS name: labels of letters, digits and '-', not all-numeric (that would be a
    // malformed IP such as 10.0.0.300).
    let labels: Vec<&str> = a.split('.').collect();
    !labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit()))
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ClusterConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("flotilla.toml");
        std::fs::write(&p, s).expect("write");
        ClusterConfig::load(&p, true)
    }

    #[test]
    fn the_example_parses_to_the_defaults() {
        let c = parse(EXAMPLE).expect("example parses");
        assert_eq!(c, ClusterConfig::default());
        c.validate("flotilla.toml").expect("valid");
    }

    #[test]
    fn the_recorded_configuration_reads_back_as_deployed_and_privately() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = ClusterConfig { name: "rec".into(), nodes: 4, ..Default::default() };
        c.heal = HealSettings { mode: HealMode::Off, grace: 90 };
        c.coordinator.port = Some(7450);
        c.record(dir.path()).expect("record");
        assert_eq!(ClusterConfig::recorded(dir.path()).expect("read back"), c);
        let mode = std::fs::metadata(ClusterConfig::record_path(dir.path())).expect("meta").permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        let missing = ClusterConfig::recorded(&dir.path().join("none")).expect_err("no record");
        assert!(missing.to_string().contains("cluster.toml"), "{missing}");
    }

    #[test]
    fn a_heal_grace_below_the_minimum_is_refused_naming_the_field() {
        let mut c = ClusterConfig::default();
        c.heal.grace = 3;
        let m = c.validate("flotilla.toml").expect_err("too short").to_string();
        assert!(m.contains("`heal.grace`") && m.contains("rebooted"), "{m}");
        let e = parse("[heal]\nmode = \"sometimes\"\n").expect_err("bad mode").to_string();
        assert!(e.contains("sometimes"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key_and_the_file() {
        let e = parse("name = \"x\"\nmanagerz = 3\n").expect_err("unknown key");
        let m = e.to_string();
        assert!(m.contains("flotilla.toml") && m.contains("managerz"), "{m}");
    }

    #[test]
    fn even_and_single_manager_counts_need_force_and_quote_the_quorum_table() {
        for n in [1, 2, 4] {
            let c = ClusterConfig { managers: n, ..Default::default() };
            let m = c.validate("flotilla.toml").expect_err("refused").to_string();
            assert!(m.contains("`managers`") && m.contains("tolerates the loss of"), "{m}");
            ClusterConfig { managers: n, force: true, ..Default::default() }.validate("f").expect("forced");
        }
    }

    #[test]
    fn a_registry_user_needs_its_password_in_a_named_environment_variable() {
        let mut c = ClusterConfig::default();
        c.images.registry_username = "ci".into();
        let m = c.validate("f").expect_err("no env name").to_string();
        assert!(m.contains("images.registry_password_env"), "{m}");
        c.images.registry_password_env = "FLOTILLA_TEST_SURELY_UNSET_VAR".into();
        let m = c.validate("f").expect_err("unset var").to_string();
        assert!(m.contains("FLOTILLA_TEST_SURELY_UNSET_VAR is not set"), "{m}");
    }

    #[test]
    fn zero_nodes_with_a_smoke_test_and_malformed_addresses_are_refused() {
        let m = ClusterConfig { nodes: 0, ..Default::default() }.validate("f").expect_err("0 nodes").to_string();
        assert!(m.contains("`nodes`"), "{m}");
        for a in ["10.0.0.300", "not an address", "-bad.example"] {
            let c = ClusterConfig {
                coordinator: CoordinatorSettings { advertise: a.into(), ..Default::default() },
                ..Default::default()
            };
            let m = c.validate("f").expect_err(a).to_string();
            assert!(m.contains("coordinator.advertise"), "{m}");
        }
    }

    #[test]
    fn cidrs_are_checked() {
        assert!(validate_cidr("aws.admin_cidr", "203.0.113.4/32").is_ok());
        for bad in ["203.0.113.4", "203.0.113.4/33", "x/8", "::1/128"] {
            let e = validate_cidr("aws.admin_cidr", bad).expect_err(bad).to_string();
            assert!(e.contains("aws.admin_cidr"), "{e}");
        }
    }

    #[test]
    fn issue_16_backup_every_and_keep_become_the_policy_or_are_refused_by_name() {
        use crate::control_plane::backup::policy::Policy;
        let p = |every: &str, keep| BackupSettings { every: every.into(), keep }.policy();
        assert_eq!(BackupSettings::default().policy().expect("default"), Policy::default());
        assert_eq!(p("90m", 2).expect("90m"), Policy { every_s: 5400, keep: 2 });
        assert_eq!(p("1d", 1).expect("1d"), Policy { every_s: 86400, keep: 1 });
        assert_eq!(p("off", 3).expect("off"), Policy { every_s: 0, keep: 3 });
        for bad in ["6", "6 hours", "h", "30s"] {
            assert_eq!(p(bad, 1).expect_err(bad).0, "backup.every", "{bad}");
        }
        assert_eq!(p("6h", 0).expect_err("keep 0").0, "backup.keep");
        let c = parse("[backup]\nevery = \"2h\"\nkeep = 4\n").expect("parses");
        assert_eq!(c.backup.policy().expect("valid"), Policy { every_s: 7200, keep: 4 });
    }
}
