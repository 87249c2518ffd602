//! `coordinator token create`: a one-time join token for a host, minted by the control plane.

use std::time::Duration;

use clap::Subcommand;
use flotilla_proto::v1;
use serde::Serialize;

use super::args::parse_duration;
use super::{CliError, Global, Output, json_line};

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

/// `token create --output json`.
#[derive(Debug, Serialize)]
pub struct TokenView {
    pub host: String,
    pub token: String,
    pub expires_unix_ms: i64,
}

pub async fn run(g: &Global, command: TokenCommand) -> Result<(), CliError> {
    let TokenCommand::Create { host, ttl, output } = command;
    let mut admin = g.admin().await?;
    let r = admin
        .create_token(v1::CreateTokenRequest {
            host_name: host.clone(),
            ttl_s: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
        })
        .await?
        .into_inner();
    let view = TokenView { host, token: r.token, expires_unix_ms: r.expires_unix_ms };
    match output {
        Output::Json => outln!("{}", json_line(&view)),
        Output::Table => {
            eprintln!("join token for host '{}' (single use, expires in {} s):", view.host, ttl.as_secs());
            outln!("{}", view.token);
        }
    }
    Ok(())
}
