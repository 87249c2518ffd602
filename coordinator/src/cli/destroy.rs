//! `coordinator destroy`: remove everything a cluster owns. It asks for the cluster's name
//! (or `--yes`), then runs [`crate::ops::destroy`]: refused when the state records hosts the
//! provider cannot find (unless `--force`); else every host is revoked, the control plane
//! stopped, the provider recorded in the state directory removes the hosts, and the state goes.

use std::path::Path;

use clap::Args;

use super::{CliError, Global};
use crate::providers::{ProviderKind, ProviderRecord};

#[derive(Args, Debug)]
pub struct DestroyArgs {
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// The provider, when the cluster's state directory (which records it) is gone:
    /// `--provider aws` terminates whatever carries the cluster's tag.
    #[arg(long, value_enum)]
    pub provider: Option<ProviderKind>,
    /// Override the recorded AWS endpoint (e.g. a moved EC2-compatible endpoint).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Override the recorded AWS region.
    #[arg(long)]
    pub region: Option<String>,
    /// Go on when the state records hosts but the provider finds none of them (they are gone
    /// for good): the state and its CA are removed all the same.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(g: &Global, args: DestroyArgs) -> Result<(), CliError> {
    let cluster = g.cluster();
    let state_dir = g.state_dir();
    let mut record = record(&cluster, &state_dir, args.provider)?;
    if !args.yes {
        confirm(&cluster, record.provider)?;
    }
    if record.provider == ProviderKind::Aws {
        let mut settings = record.aws.clone().unwrap_or_default();
        if let Some(e) = args.endpoint_url {
            settings.endpoint_url = e;
        }
        if let Some(r) = args.region {
            settings.region = r;
        }
        record.aws = Some(settings);
    }
    let done = crate::ops::destroy::destroy(crate::ops::destroy::DestroyOptions {
        cluster: &cluster,
        state_dir: &state_dir,
        record: &record,
        force: args.force,
    })
    .await?;
    for r in &done.removed {
        eprintln!("removed {r}");
    }
    if !done.unaccounted.is_empty() {
        eprintln!(
            "--force: the provider did not find {}; their state is removed all the same",
            done.unaccounted.join(", ")
        );
    }
    if record.provider == ProviderKind::Aws {
        outln!(
            "cluster '{cluster}' destroyed: no instance or security group tagged {}={cluster} is left, its CA and state are gone",
            crate::providers::aws::TAG_CLUSTER
        );
    } else {
        outln!("cluster '{cluster}' destroyed: no container, network, volume or state of it is left");
    }
    Ok(())
}

/// The provider the state directory recorded, or `--provider aws` when it recorded none
/// (an aws cluster is never destroyed as a lab one).
fn record(cluster: &str, state_dir: &Path, provider: Option<ProviderKind>) -> Result<ProviderRecord, CliError> {
    let record = ProviderRecord::load(state_dir);
    match provider {
        Some(ProviderKind::Aws) if record.provider != ProviderKind::Aws => {
            Ok(ProviderRecord { provider: ProviderKind::Aws, aws: None, lab: None })
        }
        Some(ProviderKind::Lab) if record.provider != ProviderKind::Lab => Err(CliError::NotALabCluster {
            cluster: cluster.to_string(),
            recorded: record.provider,
            record: ProviderRecord::path(state_dir),
        }),
        _ => Ok(record),
    }
}

/// Asks for the cluster's name on a terminal; without one, `--yes` is needed.
fn confirm(cluster: &str, provider: ProviderKind) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let what = if provider == ProviderKind::Aws {
        "every EC2 instance tagged with it, its security group, its hosts' certificates and its CA"
    } else {
        "every host, its network, registry, volumes and its CA"
    };
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NeedsConfirmation { doing: "destroying", cluster: cluster.to_string() });
    }
    eprint!("destroy cluster '{cluster}' ({} provider) — {what}? type the cluster name: ", provider.name());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(CliError::Confirmation)?;
    if line.trim() != cluster {
        return Err(CliError::NotConfirmed);
    }
    Ok(())
}
