//! `coordinator host revoke`: refuse a host's certificate from now on and close its session.

use clap::Subcommand;
use flotilla_proto::v1;

use super::{CliError, Global};

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// Refuse a host from its next call and close its session.
    Revoke { name: String },
}

pub async fn run(g: &Global, command: HostCommand) -> Result<(), CliError> {
    let HostCommand::Revoke { name } = command;
    let mut admin = g.admin().await?;
    let r = admin.revoke_host(v1::RevokeHostRequest { host_name: name.clone() }).await?.into_inner();
    outln!("host '{name}' revoked{}", if r.session_closed { "; its session was closed" } else { "" });
    Ok(())
}
