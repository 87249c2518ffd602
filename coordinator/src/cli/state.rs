//! `coordinator state export | import`: the cluster's state directory (its CA and keys, the
//! store, Consul's secrets, the backups), sealed with a passphrase or a key file, carried to
//! another state root or machine, and served from there (`ops/state.rs`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, Global, Output, json_line};
use crate::ops::state::{self, Secret};

#[derive(Args, Debug)]
pub struct SecretArgs {
    /// A file whose first line is the passphrase (else $FLOTILLA_STATE_PASSPHRASE).
    #[arg(long, conflicts_with = "key_file")]
    pub passphrase_file: Option<PathBuf>,
    /// An age identity file instead of a passphrase (made, 0600, by the first export when absent).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Seal the cluster's state into FILE (a running control plane is stopped for the copy and started again).
    Export {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Unpack an export as the cluster's state (where it has none) and start its control plane.
    Import {
        file: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// The address agents dial (the server certificate's name); default: the exported one.
        #[arg(long)]
        advertise: Option<String>,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
}

pub async fn run(g: &Global, command: StateCommand) -> Result<(), CliError> {
    let secret = |s: &SecretArgs| Secret::from_args(s.passphrase_file.as_deref(), s.key_file.as_deref());
    match command {
        StateCommand::Export { out, secret: s, output } => {
            let done = state::export(&g.state_root(), &g.cluster(), &out, &secret(&s)?).await?;
            match output {
                Output::Json => outln!("{}", json_line(&done)),
                Output::Table => outln!(
                    "exported cluster '{}' to {} ({} bytes, encrypted){}",
                    done.cluster,
                    done.file.display(),
                    done.bytes,
                    if done.restarted { "; its control plane was stopped for the copy and runs again" } else { "" }
                ),
            }
        }
        StateCommand::Import { file, secret: s, advertise, output } => {
            let done = state::import(&g.state_root(), &g.cluster(), &file, &secret(&s)?, advertise.as_deref()).await?;
            match output {
                Output::Json => outln!("{}", json_line(&done)),
                Output::Table => outln!(
                    "imported cluster '{}' into {}; its control plane listens on {} — agents dial {} and reconnect by themselves (`coordinator status`)",
                    done.cluster,
                    done.state_dir.display(),
                    done.listen,
                    done.endpoint
                ),
            }
        }
    }
    Ok(())
}
