//! `coordinator serve`: the control plane of one cluster, in the foreground, until SIGINT or
//! SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::args::parse_duration;
use super::{CliError, Global};
use crate::control_plane::settings::ServeConfig;

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

pub async fn run(g: &Global, args: ServeArgs) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|error| CliError::Listen { addr: args.listen.clone(), error })?;
    let mut config = ServeConfig::new(&g.cluster(), g.state_dir());
    config.advertise = args.advertise;
    config.heartbeat_interval = args.heartbeat_interval;
    config.host_cert_validity = args.host_cert_validity;
    config.agent_binary = Some(match args.agent_binary {
        Some(p) => p,
        None => crate::control_plane::agent_binary::AgentBinary::default_path().map_err(CliError::AgentBinary)?,
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
