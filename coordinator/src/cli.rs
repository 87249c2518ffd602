//! The `coordinator` command line: argument parsing and one function per command. Commands
//! other than `serve` are thin clients of the running control plane's admin API.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use flotilla_proto::v1;
use tonic::transport::Channel;

use crate::admin_client::{self, ConnectError};
use crate::control_plane::settings::{ServeConfig, StatePaths, default_state_root, valid_name};
use crate::ops::failover::{Component, Mode};
use crate::providers::ProviderKind;
use crate::ui::log_prefix;

/// Exit code for bad usage or configuration (sysexits' EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
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

#[derive(Args, Debug, Clone)]
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
}

impl Global {
    pub fn state_root(&self) -> PathBuf {
        self.state_root.clone().unwrap_or_else(default_state_root)
    }
    pub fn state_dir(&self) -> PathBuf {
        self.state_root().join(self.cluster())
    }
    /// `--cluster`, else the name in ./flotilla.toml, else "flotilla".
    pub fn cluster(&self) -> String {
        if let Some(c) = &self.cluster {
            return c.clone();
        }
        crate::ops::cluster_config::ClusterConfig::load(std::path::Path::new("flotilla.toml"), false)
            .map(|c| c.name)
            .unwrap_or_else(|_| "flotilla".into())
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane of a cluster (in the foreground).
    Serve(ServeArgs),
    /// List hosts: roles, session, heartbeat, health.
    Status {
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
        /// Redraw every interval until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        interval: Duration,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Host identities.
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Operator certificates for using this CLI from another machine.
    OperatorCert {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// The audit trail: enrollments, refusals, renewals, revocations.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Stop the control plane (agents keep their containers running and reconnect later).
    Stop,
    /// Write a commented example flotilla.toml.
    Init {
        #[arg(long, short = 'f', default_value = "flotilla.toml")]
        file: PathBuf,
    },
    /// Bring the cluster to what flotilla.toml (and flags) describe, verify it, smoke-test it.
    Deploy(DeployArgs),
    /// What `deploy` would create, change or delete — without doing it.
    Plan(DeployArgs),
    /// Print the least IAM policy the AWS provider needs (JSON).
    IamPolicy,
    /// Print the environment that points the plain `docker` CLI at the cluster's leader.
    Env {
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Build the lab's images that are missing (a no-op for unchanged recipes); print their tags.
    LabImages,
    /// Remove everything the cluster owns: hosts, network, registry, volumes (lab) or
    /// instances and the security group (aws), the hosts' certificates, its state.
    Destroy {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// The provider, when the cluster's state directory (which records it) is gone:
        /// `--provider aws` terminates whatever carries the cluster's tag.
        #[arg(long, value_enum)]
        provider: Option<ProviderKind>,
        /// Override the recorded AWS endpoint (e.g. a moved EC2-compatible endpoint).
        #[arg(long)]
        endpoint_url: Option<String>,
        /// Override the recorded AWS region.
        #[arg(long)]
        region: Option<String>,
    },
    /// Print hosts' logs (role containers, named containers, the Engine's journal) as
    /// `host/source | line`.
    Logs(LogsArgs),
    /// Take the swarm's (or Consul's) leader down, watch a replica take over (live, in the
    /// members' logs), measure it, restore the old leader and judge the recovery.
    FailoverTest(FailoverArgs),
    /// Bake a host image with Docker Engine and the agent installed (lab: a local image; aws:
    /// an AMI), for `deploy --image`: hosts booted from it skip both installations.
    Bake(BakeArgs),
}

#[derive(Args, Debug)]
pub struct BakeArgs {
    /// Where the image is made.
    #[arg(long, value_enum, default_value = "lab")]
    pub provider: ProviderKind,
    /// The image to start from (lab: an image on this machine's Engine, default the lab host
    /// image; aws: an AMI id).
    #[arg(long)]
    pub base: Option<String>,
    /// The baked image's name (lab: a repository; its tag is derived from the agent, the Engine
    /// and the base, so a bake of the same ones reuses the image).
    #[arg(long, default_value = crate::ops::bake::DEFAULT_NAME)]
    pub name: String,
    /// How long the builder gets to install everything.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The agent binary to bake in (default: the one `serve` serves — `flotilla-agent` next
    /// to this executable, else this executable).
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
    /// Testing: the URL the builder downloads the agent from instead of the bake's own
    /// endpoint (an unreachable one makes the bake fail).
    #[arg(long, hide = true)]
    pub agent_url: Option<String>,
    /// aws: flotilla.toml, for its [aws] section (region, endpoint_url, vpc_id, subnet_ids,
    /// key_name, root_volume_gib), `coordinator.advertise` and `instance_types.node` (the
    /// builder's type). Optional unless given.
    #[arg(long, short = 'f', default_value = "flotilla.toml")]
    pub file: PathBuf,
    /// aws: an EC2-compatible endpoint (overrides `aws.endpoint_url`).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// aws: the region (overrides `aws.region` and the standard chain).
    #[arg(long)]
    pub region: Option<String>,
    /// aws: the IP address of this machine the builder instance reaches: the bake serves the
    /// agent and takes the builder's report there (overrides `coordinator.advertise`).
    #[arg(long)]
    pub advertise: Option<String>,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// engine: the agent stops the host's Docker Engine (for consul: kills the Consul
    /// container and holds it down); host: the provider stops the host.
    #[arg(long, value_enum, default_value = "engine")]
    pub mode: Mode,
    /// What to drill: the Swarm managers' leader, or the Consul servers' leader.
    #[arg(long, value_enum, default_value = "swarm")]
    pub component: Component,
    /// Take down this manager (or Consul server) instead of the leader.
    #[arg(long)]
    pub target: Option<String>,
    /// Drill even with fewer than 3 managers or Consul servers (the quorum is lost).
    #[arg(long)]
    pub force: bool,
    /// How long each phase may take (fault → recovered; restore → rejoined) before the drill
    /// fails.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub bound: Duration,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Hosts to read (default: every connected host).
    pub hosts: Vec<String>,
    /// Only hosts with this role, and (without --container) only its sources.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// A container on each host (repeatable; default: the hosts' role sources — the Consul
    /// container for consul, the Engine's journal for manager and node).
    #[arg(long = "container", short = 'c')]
    pub containers: Vec<String>,
    /// Also the Engine's own journal.
    #[arg(long)]
    pub engine: bool,
    /// Keep printing new lines until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines from the last DURATION (e.g. 10m, 1h).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Only the last N lines of each source.
    #[arg(long)]
    pub tail: Option<u32>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleArg {
    Consul,
    Manager,
    Node,
}

impl From<RoleArg> for v1::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Consul => v1::Role::Consul,
            RoleArg::Manager => v1::Role::Manager,
            RoleArg::Node => v1::Role::Node,
        }
    }
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    #[arg(long, short = 'f', default_value = "flotilla.toml")]
    pub file: PathBuf,
    #[arg(long)]
    pub managers: Option<u32>,
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Accept a manager count that cannot keep quorum through a failure.
    #[arg(long)]
    pub force: bool,
    /// Run the smoke test even when nothing changed.
    #[arg(long)]
    pub smoke_test: bool,
    /// Skip the smoke test.
    #[arg(long, conflicts_with = "smoke_test")]
    pub no_smoke_test: bool,
    /// A baked host image (lab image or AMI) instead of the provider's default.
    #[arg(long)]
    pub image: Option<String>,
    /// Where hosts come from (overrides `provider` in flotilla.toml).
    #[arg(long, value_enum)]
    pub provider: Option<ProviderKind>,
    /// An EC2-compatible endpoint (overrides `aws.endpoint_url`).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// The AWS region (overrides `aws.region` and the standard chain).
    #[arg(long)]
    pub region: Option<String>,
    /// Who may reach the managers' Engine API on 2376 (overrides `aws.admin_cidr`).
    #[arg(long)]
    pub admin_cidr: Option<String>,
    /// Who may reach SSH on 22 (overrides `aws.ssh_cidr`; absent: no SSH rule).
    #[arg(long)]
    pub ssh_cidr: Option<String>,
    /// The address instances dial to reach this coordinator (overrides `coordinator.advertise`).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Print what would be created, changed or deleted, and stop (same as `coordinator plan`).
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where the agent port listens.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: String,
    /// Address(es) agents dial (IP or DNS name); the server certificate's SANs.
    #[arg(long)]
    pub advertise: Vec<String>,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Validity of host client certificates (renewed at two thirds).
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub host_cert_validity: Duration,
    /// The agent binary to serve to hosts (default: `flotilla-agent` next to this
    /// executable, else this executable, which doubles as the agent).
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Mint a one-time join token for a host.
    Create {
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// Refuse a host from its next call and close its session.
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Make an operator key here, have the cluster CA sign it, and write a bundle directory.
    Create {
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
}

/// An error with the exit code it deserves.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
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
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Rpc(s) if s.code() == tonic::Code::InvalidArgument => EXIT_USAGE,
            CliError::Connect(ConnectError::NotRunning { .. }) => EXIT_UNAVAILABLE,
            CliError::Serve(crate::control_plane::serve::ServeError::NoAdvertise(_)) => EXIT_USAGE,
            CliError::Deploy(crate::ops::deploy::DeployError::Config(_)) => EXIT_USAGE,
            CliError::Failover(crate::ops::failover::FailoverError::Refused(_)) => EXIT_USAGE,
            CliError::Deploy(crate::ops::deploy::DeployError::Lab(crate::providers::lab::LabError::NoImage {
                ..
            })) => EXIT_USAGE,
            CliError::Bake(crate::ops::bake::BakeError::Usage(_)) => EXIT_USAGE,
            // The shell's convention: 128 + the signal's number.
            CliError::Failover(crate::ops::failover::FailoverError::Interrupted { signal, .. }) => {
                if *signal == "SIGTERM" { 143 } else { 130 }
            }
            _ => 1,
        }
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `30d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a duration (e.g. 30s, 5m, 1h, 30d)"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        other => return Err(format!("unknown unit '{other}' in '{s}' (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let g = cli.global.clone();
    if let Some(c) = &g.cluster
        && !valid_name(c)
    {
        return Err(CliError::Usage(format!("--cluster '{c}': use 1-63 of a-z, 0-9 and '-'")));
    }
    match cli.command {
        Command::Serve(args) => serve(&g, args).await,
        Command::Status { output, watch, interval } => {
            let mut client = client(&g).await?;
            loop {
                let st = client.status(v1::StatusRequest {}).await?.into_inner();
                if watch && output == Output::Table {
                    print!("\x1b[2J\x1b[H");
                }
                match output {
                    Output::Json => println!("{}", status_json(&st)),
                    Output::Table => println!("{}", status_table(&st)),
                }
                if !watch {
                    return Ok(());
                }
                tokio::time::sleep(interval).await;
            }
        }
        Command::Token { command: TokenCommand::Create { host, ttl, output } } => {
            let mut client = client(&g).await?;
            let r = client
                .create_token(v1::CreateTokenRequest {
                    host_name: host.clone(),
                    ttl_s: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
                })
                .await?
                .into_inner();
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"host": host, "token": r.token, "expires_unix_ms": r.expires_unix_ms})
                ),
                Output::Table => {
                    eprintln!("join token for host '{host}' (single use, expires in {} s):", ttl.as_secs());
                    println!("{}", r.token);
                }
            }
            Ok(())
        }
        Command::Host { command: HostCommand::Revoke { name } } => {
            let mut client = client(&g).await?;
            let r = client.revoke_host(v1::RevokeHostRequest { host_name: name.clone() }).await?.into_inner();
            println!("host '{name}' revoked{}", if r.session_closed { "; its session was closed" } else { "" });
            Ok(())
        }
        Command::OperatorCert { command: OperatorCommand::Create { name, out } } => {
            operator_cert(&g, &name, &out).await
        }
        Command::Audit { limit, output } => {
            let mut client = client(&g).await?;
            let events = client.audit(v1::AuditRequest { limit }).await?.into_inner().events;
            for e in events {
                match output {
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({"unix_ms": e.unix_ms, "kind": e.kind, "host": e.host_name, "detail": e.detail, "peer": e.peer})
                    ),
                    Output::Table => println!(
                        "{}  {:<28} {:<12} {} {}",
                        fmt_time(e.unix_ms),
                        e.kind,
                        e.host_name,
                        e.detail,
                        if e.peer.is_empty() { String::new() } else { format!("(from {})", e.peer) }
                    ),
                }
            }
            Ok(())
        }
        Command::Stop => {
            let mut client = match client(&g).await {
                Ok(c) => c,
                Err(CliError::Connect(ConnectError::NotRunning { .. })) => {
                    println!("no control plane is running for cluster '{}'", g.cluster());
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            client.shutdown(v1::ShutdownRequest {}).await?;
            wait_gone(&StatePaths::new(&g.state_dir()).admin_socket()).await;
            println!("control plane of cluster '{}' stopped", g.cluster());
            Ok(())
        }
        Command::Init { file } => {
            if file.exists() {
                return Err(CliError::Usage(format!(
                    "{} exists; not overwriting it (remove it first)",
                    file.display()
                )));
            }
            std::fs::write(&file, crate::ops::cluster_config::EXAMPLE)
                .map_err(|e| CliError::Other(format!("{}: {e}", file.display())))?;
            println!("wrote {} — edit it, then `coordinator deploy`", file.display());
            Ok(())
        }
        Command::Deploy(args) if args.dry_run => plan(&g, args).await,
        Command::Deploy(args) => deploy(&g, args).await,
        Command::Plan(args) => plan(&g, args).await,
        Command::IamPolicy => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::providers::aws::iam::policy(&g.cluster())).unwrap_or_default()
            );
            Ok(())
        }
        Command::Env { output } => env(&g, output).await,
        Command::LabImages => {
            let i = crate::providers::lab::images::ensure(false).await.map_err(|e| CliError::Other(e.to_string()))?;
            println!("host={}\nconsul={}\nhello={}\nregistry={}", i.host, i.consul, i.hello, i.registry);
            Ok(())
        }
        Command::Destroy { yes, provider, endpoint_url, region } => {
            destroy(&g, yes, provider, endpoint_url, region).await
        }
        Command::Logs(args) => logs(&g, args).await,
        Command::FailoverTest(args) => failover_test(&g, args).await,
        Command::Bake(args) => bake(&g, args).await,
    }
}

async fn bake(g: &Global, args: BakeArgs) -> Result<(), CliError> {
    let agent_binary = match args.agent_binary {
        Some(p) => p,
        None => crate::control_plane::agent_binary::AgentBinary::default_path()
            .map_err(|e| CliError::Other(e.to_string()))?,
    };
    let explicit = args.file != std::path::Path::new("flotilla.toml");
    let config = crate::ops::cluster_config::ClusterConfig::load(&args.file, explicit)
        .map_err(crate::ops::deploy::DeployError::from)?;
    let mut aws = config.aws.clone();
    if let Some(e) = args.endpoint_url {
        aws.endpoint_url = e;
    }
    if let Some(r) = args.region {
        aws.region = r;
    }
    let advertise = args.advertise.or_else(|| Some(config.coordinator.advertise.clone()).filter(|a| !a.is_empty()));
    let report = crate::ops::bake::bake(crate::ops::bake::BakeOptions {
        provider: args.provider,
        base: args.base,
        name: args.name,
        scope: g.cluster(),
        timeout: args.timeout,
        agent_binary,
        agent_url: args.agent_url,
        aws,
        advertise,
        instance_type: config.instance_types.node.clone(),
        // Progress goes to stderr either way; with --output json stdout holds only the JSON.
        quiet: false,
    })
    .await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
        Output::Table => {
            println!(
                "\n{} {} in {:.1} s\n  agent {} (sha256 {}), Docker Engine {}\n  from {} ({})\n  image id {}",
                if report.reused { "reused" } else { "baked" },
                report.image,
                report.duration_s,
                report.agent_version,
                report.agent_sha256,
                report.engine_version,
                report.base,
                report.base_id,
                report.image_id,
            );
            println!(
                "\nboot hosts from it:\n  coordinator deploy --image {}\n  (or `host = \"{}\"` under [images] in flotilla.toml)",
                report.image, report.image
            );
        }
    }
    Ok(())
}

async fn failover_test(g: &Global, args: FailoverArgs) -> Result<(), CliError> {
    use crate::ops::failover::{self, FailoverError};
    use std::io::IsTerminal;
    let client = client(g).await?;
    // SIGINT and SIGTERM stop the drill, which then undoes its fault before exiting.
    let (sig_tx, sig_rx) = tokio::sync::mpsc::unbounded_channel();
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| CliError::Other(format!("installing the SIGINT handler: {e}")))?;
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| CliError::Other(format!("installing the SIGTERM handler: {e}")))?;
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    Some(()) = int.recv() => "SIGINT",
                    Some(()) = term.recv() => "SIGTERM",
                    else => return,
                };
                if sig_tx.send(sig).is_err() {
                    return;
                }
            }
        });
    }
    let report = failover::run(
        client,
        failover::Options {
            cluster: g.cluster(),
            state_dir: g.state_dir(),
            mode: args.mode,
            component: args.component,
            target: args.target,
            force: args.force,
            bound: args.bound,
            colour: std::io::stderr().is_terminal(),
        },
        sig_rx,
    )
    .await?;
    let secs = |v: Option<f64>| v.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "-".into());
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
        Output::Table => {
            let consul = report.component == "consul";
            println!(
                "\nfailover drill of {} on cluster '{}' ({} mode): {} → {}",
                if consul { "Consul" } else { "the swarm" },
                report.cluster,
                report.mode,
                report.old_leader,
                if report.new_leader.is_empty() { "?" } else { &report.new_leader }
            );
            println!("\ntimeline (from the fault):");
            for e in &report.timeline {
                println!("  {:>+8.2} s  {}", e.t_s, e.what);
            }
            println!(
                "\n  detect    {}  (control plane: {})",
                secs(report.detect_s),
                secs(report.control_plane_detect_s)
            );
            let (own, logged) = if consul {
                ("Consul's own election, from the new leader's log", report.consul_elected_s)
            } else {
                ("Swarm's own election, from the new leader's journal", report.swarm_elected_s)
            };
            println!(
                "  elect     {}  ({own}: {}; seen {} later)",
                secs(report.elect_s),
                secs(logged),
                secs(report.report_lag_s)
            );
            println!("  api back  {}{}", secs(report.api_back_s), if consul { "  (a KV write accepted)" } else { "" });
            if let Some(ok) = report.join_data_ok {
                println!("  join data {}", if ok { "readable from the surviving servers" } else { "NOT readable" });
            }
            println!(
                "  workload  {} of {} hello tasks running{}",
                report.tasks_after,
                failover::HELLO_REPLICAS,
                if report.tasks_rescheduled { " (rescheduled)" } else { " (kept running)" }
            );
            println!(
                "  rejoin    {} after the restore, as {}",
                secs(report.rejoin_s),
                if report.rejoined_as.is_empty() { "-" } else { &report.rejoined_as }
            );
            println!("  healthy   {} after the restore", secs(report.healthy_s));
            println!("\nelection lines from the members' logs ({} log lines streamed):", report.log_lines);
            for l in &report.election_lines {
                println!("  {l}");
            }
            for e in &report.log_errors {
                println!("  (could not stream {e})");
            }
            if !report.unobserved.is_empty() {
                println!("\nnot observed:");
                for u in &report.unobserved {
                    println!("  - {u}");
                }
            }
            for c in &report.cleanup {
                println!("clean-up: {c}");
            }
            println!("\n{}", report.verdict);
        }
    }
    if report.passed { Ok(()) } else { Err(FailoverError::NotPassed(report.verdict).into()) }
}

async fn client(g: &Global) -> Result<v1::admin_client::AdminClient<Channel>, CliError> {
    match &g.remote {
        Some(bundle) => Ok(admin_client::connect_remote(bundle)?),
        None => Ok(admin_client::connect_local(&g.cluster(), &StatePaths::new(&g.state_dir()).admin_socket()).await?),
    }
}

async fn serve(g: &Global, args: ServeArgs) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| CliError::Usage(format!("--listen {}: {e}", args.listen)))?;
    let mut config = ServeConfig::new(&g.cluster(), g.state_dir());
    config.advertise = args.advertise;
    config.heartbeat_interval = args.heartbeat_interval;
    config.host_cert_validity = args.host_cert_validity;
    config.agent_binary = Some(match args.agent_binary {
        Some(p) => p,
        None => crate::control_plane::agent_binary::AgentBinary::default_path()
            .map_err(|e| CliError::Other(e.to_string()))?,
    });
    crate::control_plane::serve::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn operator_cert(g: &Global, name: &str, out: &std::path::Path) -> Result<(), CliError> {
    let (key, csr) = crate::control_plane::pki::new_key_and_csr(name).map_err(|e| CliError::Other(e.to_string()))?;
    let mut client = client(g).await?;
    let r = client
        .issue_operator_certificate(v1::IssueOperatorCertificateRequest {
            operator_name: name.to_string(),
            csr_pem: csr,
        })
        .await?
        .into_inner();
    let io = |e: std::io::Error| CliError::Other(format!("{}: {e}", out.display()));
    flotilla_proto::fs::private_dir(out).map_err(io)?;
    flotilla_proto::fs::write_private(&out.join("key.pem"), key.serialize_pem().as_bytes()).map_err(io)?;
    flotilla_proto::fs::write_public(&out.join("cert.pem"), r.certificate_pem.as_bytes()).map_err(io)?;
    flotilla_proto::fs::write_public(&out.join("ca.pem"), r.ca_chain_pem.join("").as_bytes()).map_err(io)?;
    flotilla_proto::fs::write_public(
        &out.join("endpoint"),
        r.endpoints.first().cloned().unwrap_or_default().as_bytes(),
    )
    .map_err(io)?;
    println!(
        "operator bundle written to {} (key.pem is 0600); use it with `coordinator --remote {} status`",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Waits (bounded: in-flight RPCs get 5 s, lingering sessions 5 s more) until the control
/// plane removed its socket, which it does last, after closing the store.
async fn wait_gone(socket: &std::path::Path) {
    for _ in 0..600 {
        if !socket.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// flotilla.toml (or the defaults) with the flags applied, and where it came from.
fn load_config(g: &Global, args: &DeployArgs) -> Result<(crate::ops::cluster_config::ClusterConfig, String), CliError> {
    let explicit = args.file != std::path::Path::new("flotilla.toml");
    let mut config = crate::ops::cluster_config::ClusterConfig::load(&args.file, explicit)
        .map_err(crate::ops::deploy::DeployError::from)?;
    let mut origin = if args.file.exists() { args.file.display().to_string() } else { "defaults".to_string() };
    if let Some(c) = &g.cluster {
        config.name = c.clone();
    }
    if let Some(m) = args.managers {
        config.managers = m;
        origin.push_str(" + flags");
    }
    if let Some(n) = args.nodes {
        config.nodes = n;
    }
    if args.force {
        config.force = true;
    }
    if args.no_smoke_test {
        config.smoke_test = false;
    }
    if let Some(i) = &args.image {
        config.images.host = i.clone();
    }
    if let Some(p) = args.provider {
        config.provider = p;
        origin.push_str(" + flags");
    }
    for (flag, field) in [
        (&args.endpoint_url, &mut config.aws.endpoint_url),
        (&args.region, &mut config.aws.region),
        (&args.admin_cidr, &mut config.aws.admin_cidr),
        (&args.ssh_cidr, &mut config.aws.ssh_cidr),
        (&args.advertise, &mut config.coordinator.advertise),
    ] {
        if let Some(v) = flag {
            *field = v.clone();
        }
    }
    Ok((config, origin))
}

async fn plan(g: &Global, args: DeployArgs) -> Result<(), CliError> {
    let (config, origin) = load_config(g, &args)?;
    let ch = crate::ops::deploy::dry_run(&config, &origin, &g.state_root()).await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&ch).unwrap_or_default()),
        Output::Table => {
            println!("cluster '{}' on the {} provider (dry run: nothing was changed)", ch.cluster, ch.provider);
            for (title, items) in
                [("create", &ch.create), ("change", &ch.change), ("delete", &ch.delete), ("keep", &ch.keep)]
            {
                if !items.is_empty() {
                    println!("\n{title}:");
                    for i in items {
                        println!(
                            "  {}{i}",
                            match title {
                                "create" => "+ ",
                                "change" => "~ ",
                                "delete" => "- ",
                                _ => "  ",
                            }
                        );
                    }
                }
            }
            if ch.is_empty() {
                println!("\nnothing to create, change or delete");
            }
        }
    }
    Ok(())
}

async fn deploy(g: &Global, args: DeployArgs) -> Result<(), CliError> {
    let (config, origin) = load_config(g, &args)?;
    let report = crate::ops::deploy::deploy(crate::ops::deploy::DeployOptions {
        config,
        origin,
        state_root: g.state_root(),
        quiet: args.output == Output::Json,
        force_smoke: args.smoke_test,
    })
    .await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
        Output::Table => {
            let mut t = comfy_table::Table::new();
            t.load_style(comfy_table::presets::NOTHING);
            t.set_header(["HOST", "ROLES", "ADDRESS", "SWARM"]);
            for h in &report.hosts {
                let sw = report
                    .swarm
                    .managers
                    .iter()
                    .chain(&report.swarm.workers)
                    .find(|n| n.hostname == h.name)
                    .map(|n| if n.manager_status.is_empty() { n.role.clone() } else { n.manager_status.clone() })
                    .unwrap_or_default();
                t.add_row([h.name.clone(), h.roles.join("+"), h.address.clone(), sw]);
            }
            println!(
                "\ncluster '{}' {} in {:.1} s\n{t}",
                report.cluster,
                if report.changed { "deployed" } else { "unchanged" },
                report.duration_s
            );
            println!(
                "\nswarm leader: {} ({}); consul leader: {}",
                report.swarm.leader, report.swarm.leader_ip, report.consul.leader
            );
            if let Some(s) = &report.smoke_test {
                println!(
                    "smoke test: {} hello task(s) on {} — \"{}\"",
                    s.tasks,
                    s.nodes.join(", "),
                    s.output.first().cloned().unwrap_or_default()
                );
            }
            println!(
                "\npoint docker at the cluster:\n  eval \"$(coordinator --cluster {} env)\"\n  docker node ls",
                report.cluster
            );
        }
    }
    Ok(())
}

async fn env(g: &Global, output: Output) -> Result<(), CliError> {
    let mut client = client(g).await?;
    let st = client.status(v1::StatusRequest {}).await?.into_inner();
    let v = status_json(&st);
    let leader_addr = v["swarm"]["leader_addr"].as_str().unwrap_or_default().to_string();
    if leader_addr.is_empty() {
        return Err(CliError::Other(format!(
            "cluster '{}' has no swarm leader right now (see `coordinator status`)",
            g.cluster()
        )));
    }
    let ip = leader_addr.split(':').next().unwrap_or_default();
    let env = crate::ops::verify::docker_env(ip, &g.state_dir().join("docker"));
    match output {
        Output::Json => {
            println!("{}", serde_json::json!(env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>()))
        }
        Output::Table => {
            for (k, val) in &env {
                println!("export {k}={val}");
            }
            println!(
                "# leader: {} — run: eval \"$(coordinator --cluster {} env)\"",
                v["swarm"]["leader"].as_str().unwrap_or_default(),
                g.cluster()
            );
        }
    }
    Ok(())
}

async fn destroy(
    g: &Global,
    yes: bool,
    provider: Option<ProviderKind>,
    endpoint_url: Option<String>,
    region: Option<String>,
) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let cluster = g.cluster();
    let state_dir = g.state_dir();
    let mut record = crate::providers::ProviderRecord::load(&state_dir);
    match provider {
        Some(ProviderKind::Aws) if record.provider != ProviderKind::Aws => {
            record = crate::providers::ProviderRecord { provider: ProviderKind::Aws, aws: None };
        }
        Some(ProviderKind::Lab) if record.provider != ProviderKind::Lab => {
            return Err(CliError::Usage(format!(
                "cluster '{cluster}' was deployed with the {} provider (recorded in {}); not destroying it as a lab cluster",
                record.provider.name(),
                crate::providers::ProviderRecord::path(&state_dir).display()
            )));
        }
        _ => {}
    }
    let what = if record.provider == ProviderKind::Aws {
        "every EC2 instance tagged with it, its security group, its hosts' certificates and its CA"
    } else {
        "every host, its network, registry, volumes and its CA"
    };
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Usage(format!("destroying cluster '{cluster}' needs confirmation: pass --yes")));
        }
        eprint!("destroy cluster '{cluster}' ({} provider) — {what}? type the cluster name: ", record.provider.name());
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| CliError::Other(e.to_string()))?;
        if line.trim() != cluster {
            return Err(CliError::Usage("not confirmed; nothing was removed".into()));
        }
    }
    // Revoke every host (their sessions close, their certificates are refused from now on),
    // then stop the control plane, so no agent is told anything mid-way.
    let socket = StatePaths::new(&state_dir).admin_socket();
    if let Ok(mut c) = admin_client::connect_local(&cluster, &socket).await {
        if let Ok(st) = c.status(v1::StatusRequest {}).await {
            for h in st.into_inner().hosts.iter().filter(|h| !h.revoked) {
                let _ = c.revoke_host(v1::RevokeHostRequest { host_name: h.name.clone() }).await;
            }
        }
        let _ = c.shutdown(v1::ShutdownRequest {}).await;
        wait_gone(&socket).await;
    }
    if record.provider == ProviderKind::Aws {
        let mut settings = record.aws.clone().unwrap_or_default();
        if let Some(e) = endpoint_url {
            settings.endpoint_url = e;
        }
        if let Some(r) = region {
            settings.region = r;
        }
        record.aws = Some(settings);
    }
    let kept = |e: crate::providers::ProviderError| match e {
        crate::providers::ProviderError::Aws(e) => {
            CliError::Other(format!("{e}; the cluster's state is kept: re-run `coordinator destroy` once fixed"))
        }
        other => CliError::Other(other.to_string()),
    };
    let provider = crate::providers::Provider::from_record(&cluster, &state_dir, &record).await.map_err(kept)?;
    let removed = provider.destroy().await.map_err(kept)?;
    for r in &removed {
        eprintln!("removed {r}");
    }
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir).map_err(|e| CliError::Other(format!("{}: {e}", state_dir.display())))?;
    }
    if record.provider == ProviderKind::Aws {
        println!(
            "cluster '{cluster}' destroyed: no instance or security group tagged {}={cluster} is left, its CA and state are gone",
            crate::providers::aws::TAG_CLUSTER
        );
    } else {
        println!("cluster '{cluster}' destroyed: no container, network, volume or state of it is left");
    }
    Ok(())
}

async fn logs(g: &Global, args: LogsArgs) -> Result<(), CliError> {
    use std::io::{IsTerminal, Write};
    let since_unix_ns = match args.since {
        Some(d) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
            i64::try_from(now - d.as_nanos() as i128).unwrap_or(0).max(1)
        }
        None => 0,
    };
    let mut client = client(g).await?;
    let mut lines = client
        .follow_logs(v1::FollowLogsRequest {
            hosts: args.hosts,
            role: args.role.map(|r| v1::Role::from(r) as i32).unwrap_or_default(),
            containers: args.containers,
            engine: args.engine,
            follow: args.follow,
            since_unix_ns,
            tail: args.tail.unwrap_or(0),
        })
        .await?
        .into_inner();
    let colour = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut failed = Vec::new();
    while let Some(l) = lines.message().await? {
        if !l.error.is_empty() {
            eprintln!("{}/{}: {}", l.host, l.source, l.error);
            failed.push(format!("{}/{}", l.host, l.source));
            continue;
        }
        if l.eof {
            continue;
        }
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(out, "{} | {}", log_prefix(&l.host, &l.source, colour), l.text).is_err() {
            return Ok(());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Other(format!("could not read the logs of {}", failed.join(", "))))
    }
}

fn fmt_time(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_ms / 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix_ms.to_string())
}

fn roles_of(h: &v1::HostStatus) -> Vec<&'static str> {
    h.roles.iter().filter_map(|r| v1::Role::try_from(*r).ok()).map(v1::Role::name).collect()
}

/// `status --output json`: an object with a `hosts` array.
pub fn status_json(st: &v1::StatusResponse) -> serde_json::Value {
    let hosts: Vec<_> = st
        .hosts
        .iter()
        .map(|h| {
            let f = h.facts.clone().unwrap_or_default();
            let health = h.health.as_ref().map(|s| {
                serde_json::json!({
                    "cpu_percent": s.cpu_percent,
                    "load1": s.load1,
                    "memory_used_bytes": s.memory_used_bytes,
                    "memory_total_bytes": s.memory_total_bytes,
                    "disk_used_bytes": s.disk_used_bytes,
                    "disk_total_bytes": s.disk_total_bytes,
                    "uptime_s": s.uptime_s,
                    "engine_ok": s.engine_ok,
                    "engine_error": s.engine_error,
                })
            });
            serde_json::json!({
                "name": h.name,
                "host_id": h.host_id,
                "roles": roles_of(h),
                "connected": h.connected,
                "since_unix_ms": h.since_unix_ms,
                "last_heartbeat_age_s": if h.last_heartbeat_age_s < 0.0 { serde_json::Value::Null } else { serde_json::json!(h.last_heartbeat_age_s) },
                "unreachable": h.unreachable,
                "revoked": h.revoked,
                "agent_version": h.agent_version,
                "cert_not_after_unix_ms": h.cert_not_after_unix_ms,
                "addresses": f.private_addresses,
                "instance_id": f.instance_id,
                "engine_version": f.engine_version,
                "health": health,
                "generation": h.generation,
                "role_status": h.role_status.iter().map(|s| serde_json::json!({
                    "role": v1::Role::try_from(s.role).map(v1::Role::name).unwrap_or("unspecified"),
                    "state": v1::RoleState::name_of(s.state),
                    "message": s.message,
                })).collect::<Vec<_>>(),
                "swarm": h.health.as_ref().and_then(|s| s.swarm.as_ref()).map(|s| serde_json::json!({
                    "state": s.local_state, "is_manager": s.is_manager, "manager_status": s.manager_status,
                })),
            })
        })
        .collect();
    // Swarm's view, as the managers' agents last reported it.
    let mut leader = String::new();
    let mut leader_addr = String::new();
    let mut managers = Vec::new();
    for h in &st.hosts {
        if let Some(sw) = h.health.as_ref().and_then(|s| s.swarm.as_ref()) {
            if sw.is_manager {
                managers.push(serde_json::json!({"name": h.name, "manager_status": sw.manager_status}));
            }
            if sw.manager_status == "leader" {
                leader = h.name.clone();
                leader_addr = sw.leader_addr.clone();
            }
        }
    }
    serde_json::json!({
        "cluster": st.cluster,
        "agent_endpoint": st.agent_endpoint,
        "heartbeat_interval_s": st.heartbeat_interval_s,
        "hosts": hosts,
        "swarm": {"leader": leader, "leader_addr": leader_addr, "managers": managers},
    })
}

fn status_table(st: &v1::StatusResponse) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(["HOST", "ROLES", "SWARM", "SESSION", "HEARTBEAT", "CPU", "LOAD", "MEM", "DISK", "ENGINE"]);
    for h in &st.hosts {
        let session = if h.revoked {
            "revoked".to_string()
        } else if h.connected && !h.unreachable {
            format!("up {}", ago(h.since_unix_ms))
        } else if h.connected {
            "unreachable".to_string()
        } else {
            format!("down (seen {} ago)", ago(h.since_unix_ms))
        };
        let hb =
            if h.last_heartbeat_age_s < 0.0 { "-".to_string() } else { format!("{:.1}s ago", h.last_heartbeat_age_s) };
        let (cpu, load, mem, disk, engine) = match &h.health {
            Some(s) => (
                format!("{:.0}%", s.cpu_percent),
                format!("{:.2}", s.load1),
                pct(s.memory_used_bytes, s.memory_total_bytes),
                pct(s.disk_used_bytes, s.disk_total_bytes),
                if s.engine_ok { "ok".to_string() } else { "DOWN".to_string() },
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        // Each role with its state as the agent last reported it (e.g. "manager:running").
        let roles = roles_of(h)
            .iter()
            .map(|r| {
                let state = h
                    .role_status
                    .iter()
                    .find(|s| v1::Role::try_from(s.role).map(v1::Role::name).ok() == Some(*r))
                    .map(|s| v1::RoleState::name_of(s.state))
                    .unwrap_or_else(|| "pending".into());
                format!("{r}:{state}")
            })
            .collect::<Vec<_>>()
            .join(",");
        let swarm = h
            .health
            .as_ref()
            .and_then(|s| s.swarm.as_ref())
            .map(|s| match (s.local_state.as_str(), s.manager_status.as_str()) {
                ("active", "") => "worker".to_string(),
                ("active", m) => m.to_string(),
                (other, _) => other.to_string(),
            })
            .unwrap_or_else(|| "-".into());
        t.add_row([
            h.name.clone(),
            if roles.is_empty() { "-".into() } else { roles },
            swarm,
            session,
            hb,
            cpu,
            load,
            mem,
            disk,
            engine,
        ]);
    }
    format!("cluster {} — {} hosts\n{t}", st.cluster, st.hosts.len())
}

fn pct(used: u64, total: u64) -> String {
    if total == 0 { "-".into() } else { format!("{:.0}%", used as f64 * 100.0 / total as f64) }
}

fn ago(unix_ms: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let s = ((now - unix_ms).max(0) / 1000) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
