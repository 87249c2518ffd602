//! The `coordinator` command line: [`Cli`] (the global flags and one [`Command`] per
//! subcommand), [`CliError`] with the exit code each error deserves, and [`run`], which hands
//! each command to its own file under `cli/`. That file holds the command's arguments, what it
//! does, and how it prints its result: a table, or with `--output json` the JSON of a typed
//! view (the table renders from the same view).
//!
//! Most commands are clients of the running control plane's admin API. `deploy`, `plan`,
//! `bake`, `destroy` and `failover-test` run an operation of [`crate::ops`] in this process,
//! which drives a provider directly; `serve` is the control plane itself.
//!
//! - [`args`]: value parsers shared by several commands (`parse_duration`).
//! - [`serve`]: `serve`, the control plane in the foreground.
//! - [`status`]: `status` — the host table and its JSON ([`status::StatusView`]).
//! - [`tokens`], [`hosts`], [`operator`], [`audit`]: `token create`, `host revoke`,
//!   `operator-cert create | list | revoke`, `audit`.
//! - [`stop`], [`init`], [`iam_policy`], [`lab_images`], [`env`], [`completions`]: the small
//!   commands.
//! - [`backup`]: `backup` (take one now) and `backups` (the stored ones, `--verify`);
//!   [`state`]: `state export | import`, the coordinator's own state carried elsewhere.
//! - [`deploy`] (with the flags `plan` shares), [`plan`], [`destroy`], [`logs`],
//!   [`failover_test`], [`bake`].

/// `println!` that ends the process quietly when stdout is a closed pipe ([`crate::ui::out`]).
macro_rules! outln {
    () => { $crate::ui::out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::ui::out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!`, the same way.
macro_rules! out {
    ($($arg:tt)*) => { $crate::ui::out(format_args!($($arg)*)) };
}

pub mod args;
pub mod audit;
pub mod backup;
pub mod bake;
pub mod completions;
pub mod deploy;
pub mod destroy;
pub mod env;
pub mod failover_test;
pub mod heal;
pub mod hosts;
pub mod iam_policy;
pub mod init;
pub mod lab_images;
pub mod logs;
pub mod operator;
pub mod plan;
pub mod recover;
pub mod serve;
pub mod state;
pub mod status;
pub mod stop;
pub mod tokens;
pub mod upgrade;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use flotilla_proto::v1;
use tonic::transport::Channel;

use crate::admin_client::{self, ConnectError};
use crate::control_plane::settings::{StatePaths, default_state_root, valid_name};

pub use status::status_json;

/// Exit code for bad usage or configuration (sysexits' EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
/// The cluster file commands read when no `-f` names another.
pub const CONFIG_FILE: &str = "flotilla.toml";
/// Exit code when the control plane cannot be reached (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;

#[derive(Parser, Debug)]
#[command(
    name = "coordinator",
    version,
    about = "Flotilla: a highly available Docker Swarm cluster, deployed and drilled."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// The cluster to act on (default: `name` in ./flotilla.toml, else "flotilla").
    #[arg(long, global = true, env = "FLOTILLA_CLUSTER")]
    pub cluster: Option<String>,
    /// Root of every cluster's state (default: $FLOTILLA_STATE_DIR, $XDG_STATE_HOME/flotilla or ~/.local/state/flotilla).
    #[arg(long, global = true)]
    pub state_root: Option<PathBuf>,
    /// Use a remote control plane through an operator bundle (see `operator-cert create`).
    #[arg(long, global = true, env = "FLOTILLA_REMOTE")]
    pub remote: Option<PathBuf>,
    /// The name [`Global::resolve`] settled on.
    #[arg(skip)]
    resolved: Option<String>,
}

impl Global {
    pub fn state_root(&self) -> PathBuf {
        self.state_root.clone().unwrap_or_else(default_state_root)
    }
    pub fn state_dir(&self) -> PathBuf {
        self.state_root().join(self.cluster())
    }
    /// The cluster [`Global::resolve`] settled on (`--cluster`, else the name in
    /// ./flotilla.toml, else "flotilla").
    pub fn cluster(&self) -> String {
        self.resolved.clone().or_else(|| self.cluster.clone()).unwrap_or_else(|| "flotilla".into())
    }

    /// Settles the cluster's name once, before any command runs, and checks it: a name is
    /// joined into the state path, so `..`, `/` or anything but a-z, 0-9 and '-' is refused
    /// (from `--cluster` or from ./flotilla.toml). A ./flotilla.toml that does not parse is an
    /// error here too: falling back to the default name would act on another cluster.
    pub fn resolve(mut self) -> Result<Self, CliError> {
        let name = match &self.cluster {
            Some(c) if valid_name(c) => c.clone(),
            Some(c) => return Err(CliError::InvalidCluster { name: c.clone() }),
            None => {
                let path = std::path::Path::new(CONFIG_FILE);
                let config = crate::ops::cluster_config::ClusterConfig::load(path, false)?;
                if !valid_name(&config.name) {
                    return Err(CliError::Config(crate::ops::cluster_config::ConfigError::Invalid {
                        path: CONFIG_FILE.into(),
                        field: "name",
                        problem: format!("'{}': use 1-63 of a-z, 0-9 and '-'", config.name),
                    }));
                }
                config.name
            }
        };
        self.resolved = Some(name);
        Ok(self)
    }

    /// The admin API of the cluster's control plane: the local one, or `--remote`'s.
    async fn admin(&self) -> Result<v1::admin_client::AdminClient<Channel>, CliError> {
        match &self.remote {
            Some(bundle) => Ok(admin_client::connect_remote(bundle)?),
            None => {
                Ok(admin_client::connect_local(&self.cluster(), &StatePaths::new(&self.state_dir()).admin_socket())
                    .await?)
            }
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// A view as one line of JSON with its keys in alphabetical order, as `status`, `env`,
/// `audit` and `token create` print it (through `serde_json::Value`, which sorts them).
fn json_line<T: serde::Serialize>(view: &T) -> String {
    serde_json::to_value(view).map(|v| v.to_string()).unwrap_or_default()
}

/// A report as indented JSON, its fields in their declared order (deploy, plan, bake,
/// failover-test).
fn json_pretty<T: serde::Serialize>(report: &T) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default()
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane of a cluster (in the foreground).
    Serve(serve::ServeArgs),
    /// List hosts: roles, session, heartbeat, health.
    Status(status::StatusArgs),
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: tokens::TokenCommand,
    },
    /// Host identities.
    Host {
        #[command(subcommand)]
        command: hosts::HostCommand,
    },
    /// Operator certificates for using this CLI from another machine.
    OperatorCert {
        #[command(subcommand)]
        command: operator::OperatorCommand,
    },
    /// The audit trail: enrollments, renewals, revocations, who did what; refusals counted.
    Audit(audit::AuditArgs),
    /// Stop the control plane (agents keep their containers running and reconnect later).
    Stop,
    /// Write a commented example flotilla.toml.
    Init(init::InitArgs),
    /// Bring the cluster to what flotilla.toml (and flags) describe, verify it, smoke-test it.
    Deploy(deploy::DeployArgs),
    /// What `deploy` would create, change or delete — without doing it.
    Plan(deploy::DeployArgs),
    /// Print the least IAM policy the AWS provider needs (JSON).
    IamPolicy,
    /// Print the environment that points the plain `docker` CLI at the cluster's leader.
    Env(env::EnvArgs),
    /// Build the lab's images that are missing (a no-op for unchanged recipes); print their tags.
    LabImages,
    /// Remove everything the cluster owns: hosts, network, registry, volumes (lab) or
    /// instances and the security group (aws), the hosts' certificates, its state.
    Destroy(destroy::DestroyArgs),
    /// Print hosts' logs (role containers, named containers, the Engine's journal) as
    /// `host/source | line`.
    Logs(logs::LogsArgs),
    /// Take the swarm's (or Consul's) leader down, watch a replica take over (live, in the
    /// members' logs), measure it, restore the old leader and judge the recovery.
    FailoverTest(failover_test::FailoverArgs),
    /// Replace lost hosts (agent unreachable past the grace period and the host gone at the
    /// provider), one at a time, never at the cost of quorum.
    Heal(heal::HealArgs),
    /// Bring back a cluster that lost its quorum: `--force-new-cluster` on a surviving
    /// manager (and Consul's peers.json), or the latest backups onto new hosts when none
    /// survives; then the lost hosts replaced as heal does. Refused while a quorum remains.
    Recover(recover::RecoverArgs),
    /// Bake a host image with Docker Engine and the agent installed (lab: a local image; aws:
    /// an AMI), for `deploy --image`: hosts booted from it skip both installations.
    Bake(bake::BakeArgs),
    /// Print a completion script for your shell (bash, zsh, fish, …).
    Completions(completions::CompletionsArgs),
    /// Take a backup now: Swarm's Raft state (from a manager that does not lead, its Engine
    /// stopped meanwhile) and a Consul snapshot, stored encrypted in the state directory.
    Backup(backup::BackupArgs),
    /// List the stored backups; `--verify` checks each one's digests and decryption.
    Backups(backup::BackupsArgs),
    /// Roll the cluster onto new software, one host at a time: `--agent` replaces every
    /// host's agent in place (containers keep running).
    Upgrade(upgrade::UpgradeArgs),
    /// The coordinator's own state: export it (encrypted), import it elsewhere.
    State {
        #[command(subcommand)]
        command: state::StateCommand,
    },
}

/// An error with the exit code it deserves. A variant wrapping an error whose message
/// already names its cause shows that message as it is (the wrapped error is not a
/// `source`), so `main`'s "caused by" chain does not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `--cluster` is no valid cluster name.
    #[error("--cluster '{name}': use 1-63 of a-z, 0-9 and '-'")]
    InvalidCluster { name: String },
    /// ./flotilla.toml does not parse, or names no valid cluster.
    #[error("{0}")]
    Config(#[from] crate::ops::cluster_config::ConfigError),
    /// `serve --listen` could not be bound.
    #[error("--listen {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    /// `init` would overwrite a file.
    #[error("{} exists; not overwriting it (remove it first)", path.display())]
    WouldOverwrite { path: PathBuf },
    /// `destroy --provider lab` of a cluster the state directory records as another provider's.
    #[error(
        "cluster '{cluster}' was deployed with the {} provider (recorded in {}); not destroying it as a lab cluster",
        recorded.name(),
        record.display()
    )]
    NotALabCluster { cluster: String, recorded: crate::providers::ProviderKind, record: PathBuf },
    /// `destroy` or `recover` without `--yes` and without a terminal to ask on.
    #[error("{doing} cluster '{cluster}' needs confirmation: pass --yes")]
    NeedsConfirmation { doing: &'static str, cluster: String },
    /// `destroy`'s confirmation was not the cluster's name.
    #[error("not confirmed; nothing was removed")]
    NotConfirmed,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    #[error(transparent)]
    Serve(#[from] crate::control_plane::serve::ServeError),
    #[error(transparent)]
    Deploy(#[from] crate::ops::deploy::DeployError),
    #[error(transparent)]
    Failover(#[from] crate::ops::failover::FailoverError),
    #[error(transparent)]
    Bake(#[from] crate::ops::bake::BakeError),
    #[error(transparent)]
    Heal(#[from] crate::ops::heal::HealError),
    #[error(transparent)]
    Recover(#[from] crate::ops::recover::RecoverError),
    #[error(transparent)]
    Upgrade(#[from] crate::ops::upgrade::UpgradeError),
    /// No agent binary to serve or bake in (`serve`, `bake` without `--agent-binary`).
    #[error("{0}")]
    AgentBinary(crate::control_plane::agent_binary::AgentBinaryError),
    /// The operator's key or certificate request could not be made (`operator-cert create`).
    #[error("{0}")]
    OperatorKey(crate::control_plane::pki::PkiError),
    /// Building the lab's images failed (`lab-images`).
    #[error("{0}")]
    LabImages(crate::providers::lab::images::ImageError),
    #[error(transparent)]
    Destroy(#[from] crate::ops::destroy::DestroyError),
    /// A file or directory the command writes or removes.
    #[error("{}: {error}", path.display())]
    File { path: PathBuf, error: std::io::Error },
    /// Reading the typed confirmation (`destroy`) failed.
    #[error("{0}")]
    Confirmation(std::io::Error),
    /// A signal handler could not be installed (`failover-test`).
    #[error("installing the {signal} handler: {error}")]
    Signal { signal: &'static str, error: std::io::Error },
    /// `env` needs a swarm leader to point at.
    #[error("cluster '{cluster}' has no swarm leader right now (see `coordinator status`)")]
    NoLeader { cluster: String },
    /// A stored backup could not be listed or read (`backups`).
    #[error("{0}")]
    Backup(crate::control_plane::backup::archive::ArchiveError),
    /// `backups --verify` refused some backups (each is printed with its reason).
    #[error("{refused} of {total} backups refused by verification (see above); restore from one that verifies")]
    BackupsRefused { refused: usize, total: usize },
    #[error(transparent)]
    State(#[from] crate::ops::state::StateError),
    /// `logs` could not read some of the sources (the others were printed).
    #[error("could not read the logs of {}", .sources.join(", "))]
    LogsUnread { sources: Vec<String> },
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::InvalidCluster { .. }
            | CliError::Config(_)
            | CliError::Listen { .. }
            | CliError::WouldOverwrite { .. }
            | CliError::NotALabCluster { .. }
            | CliError::NeedsConfirmation { .. }
            | CliError::NotConfirmed => EXIT_USAGE,
            CliError::Rpc(s) if s.code() == tonic::Code::InvalidArgument => EXIT_USAGE,
            CliError::Connect(ConnectError::NotRunning { .. }) => EXIT_UNAVAILABLE,
            CliError::Serve(crate::control_plane::serve::ServeError::NoAdvertise(_)) => EXIT_USAGE,
            CliError::Deploy(crate::ops::deploy::DeployError::Config(_)) => EXIT_USAGE,
            CliError::Failover(crate::ops::failover::FailoverError::Refused(_)) => EXIT_USAGE,
            CliError::Deploy(crate::ops::deploy::DeployError::Provider(crate::providers::ProviderError::Lab(
                crate::providers::lab::LabError::NoImage { .. },
            ))) => EXIT_USAGE,
            CliError::Bake(crate::ops::bake::BakeError::Usage(_)) => EXIT_USAGE,
            CliError::Heal(e) => e.exit_code(),
            CliError::Recover(e) => e.exit_code(),
            CliError::Upgrade(
                crate::ops::upgrade::UpgradeError::Remote | crate::ops::upgrade::UpgradeError::BadDigest(_),
            ) => EXIT_USAGE,
            CliError::Upgrade(e) => e.exit_code(),
            CliError::State(
                crate::ops::state::StateError::NoSecret
                | crate::ops::state::StateError::ShortPassphrase(_)
                | crate::ops::state::StateError::Exists { .. },
            ) => EXIT_USAGE,
            // A refusal, as the failover drill's: nothing was done.
            CliError::Destroy(crate::ops::destroy::DestroyError::NothingFound { .. }) => EXIT_USAGE,
            // The shell's convention: 128 + the signal's number.
            CliError::Failover(crate::ops::failover::FailoverError::Interrupted { signal, .. }) => {
                if *signal == "SIGTERM" { 143 } else { 130 }
            }
            _ => 1,
        }
    }
}

/// Runs one command: checks `--cluster`, then hands the command to its file.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let g = match &cli.command {
        // Commands that act on no cluster do not read ./flotilla.toml for its name.
        Command::Init(_) | Command::LabImages | Command::Completions(_) => cli.global,
        _ => cli.global.resolve()?,
    };
    match cli.command {
        Command::Serve(args) => serve::run(&g, args).await,
        Command::Status(args) => status::run(&g, args).await,
        Command::Token { command } => tokens::run(&g, command).await,
        Command::Host { command } => hosts::run(&g, command).await,
        Command::OperatorCert { command } => operator::run(&g, command).await,
        Command::Audit(args) => audit::run(&g, args).await,
        Command::Stop => stop::run(&g).await,
        Command::Init(args) => init::run(args),
        Command::Deploy(args) if args.dry_run => plan::run(&g, args).await,
        Command::Deploy(args) => deploy::run(&g, args).await,
        Command::Plan(args) => plan::run(&g, args).await,
        Command::IamPolicy => iam_policy::run(&g),
        Command::Env(args) => env::run(&g, args).await,
        Command::LabImages => lab_images::run().await,
        Command::Destroy(args) => destroy::run(&g, args).await,
        Command::Logs(args) => logs::run(&g, args).await,
        Command::FailoverTest(args) => failover_test::run(&g, args).await,
        Command::Heal(args) => heal::run(&g, args).await,
        Command::Recover(args) => recover::run(&g, args).await,
        Command::Bake(args) => bake::run(&g, args).await,
        Command::Completions(args) => completions::run(args),
        Command::Backup(args) => backup::backup(&g, args).await,
        Command::Backups(args) => backup::backups(&g, args).await,
        Command::State { command } => state::run(&g, command).await,
        Command::Upgrade(args) => upgrade::run(&g, args).await,
    }
}
