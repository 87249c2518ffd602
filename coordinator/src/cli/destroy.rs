//! `coordinator destroy`: remove everything a cluster owns. It asks for the cluster's name
//! (or `--yes`), revokes every host and stops the control plane, has the provider recorded in
//! the state directory remove the hosts, then removes the state.

use std::path::Path;

use clap::Args;
use flotilla_proto::v1;

use super::stop::wait_gone;
use super::{CliError, Global};
use crate::admin_client;
use crate::control_plane::settings::StatePaths;
use crate::providers::{Provider, ProviderError, ProviderKind, ProviderRecord};

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
}

pub async fn run(g: &Global, args: DestroyArgs) -> Result<(), CliError> {
    let cluster = g.cluster();
    let state_dir = g.state_dir();
    let mut record = record(&cluster, &state_dir, args.provider)?;
    if !args.yes {
        confirm(&cluster, record.provider)?;
    }
    // Revoke every host (their sessions close, their certificates are refused from now on),
    // then stop the control plane, so no agent is told anything mid-way.
    stop_control_plane(&cluster, &state_dir).await;
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
    let kept = |e: ProviderError| match e {
        e @ ProviderError::Aws(_) => CliError::DestroyKept(e),
        other => CliError::Provider(other),
    };
    let provider = Provider::from_record(&cluster, &state_dir, &record).await.map_err(kept)?;
    let removed = provider.destroy().await.map_err(kept)?;
    for r in &removed {
        eprintln!("removed {r}");
    }
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir).map_err(|error| CliError::File { path: state_dir.clone(), error })?;
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

/// The provider the state directory recorded, or `--provider aws` when it recorded none
/// (an aws cluster is never destroyed as a lab one).
fn record(cluster: &str, state_dir: &Path, provider: Option<ProviderKind>) -> Result<ProviderRecord, CliError> {
    let record = ProviderRecord::load(state_dir);
    match provider {
        Some(ProviderKind::Aws) if record.provider != ProviderKind::Aws => {
            Ok(ProviderRecord { provider: ProviderKind::Aws, aws: None })
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
        return Err(CliError::NeedsConfirmation { cluster: cluster.to_string() });
    }
    eprint!("destroy cluster '{cluster}' ({} provider) — {what}? type the cluster name: ", provider.name());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(CliError::Confirmation)?;
    if line.trim() != cluster {
        return Err(CliError::NotConfirmed);
    }
    Ok(())
}

/// Revokes every host the local control plane knows and stops it, if one is running.
async fn stop_control_plane(cluster: &str, state_dir: &Path) {
    let socket = StatePaths::new(state_dir).admin_socket();
    if let Ok(mut c) = admin_client::connect_local(cluster, &socket).await {
        if let Ok(st) = c.status(v1::StatusRequest::default()).await {
            for h in st.into_inner().hosts.iter().filter(|h| !h.revoked) {
                let _ = c.revoke_host(v1::RevokeHostRequest { host_name: h.name.clone() }).await;
            }
        }
        let _ = c.shutdown(v1::ShutdownRequest {}).await;
        wait_gone(&socket).await;
    }
}
