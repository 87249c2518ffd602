//! `coordinator deploy`: bring the cluster to what `flotilla.toml` and the flags describe
//! ([`crate::ops::deploy`]), then print its report. [`DeployArgs`] and [`load_config`] are
//! shared with `plan`, which is `deploy --dry-run`.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, Global, Output, json_pretty};
use crate::ops::cluster_config::ClusterConfig;
use crate::providers::ProviderKind;

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
    /// The control plane's agent port (overrides `coordinator.port`; default: the cluster's
    /// recorded port, else the first free one from 7443).
    #[arg(long)]
    pub port: Option<u16>,
    /// Auto-heal (overrides `heal.mode`): the control plane replaces lost hosts by itself.
    #[arg(long, value_enum)]
    pub heal: Option<crate::ops::cluster_config::HealMode>,
    /// Seconds an agent must be unreachable before its host may count as lost (overrides
    /// `heal.grace`; at least 10).
    #[arg(long)]
    pub heal_grace: Option<u32>,
    /// Also replace every host that runs another image than the one hosts are launched from
    /// (`images.host` / `--image`), one at a time, add before remove, as `upgrade --image`
    /// does (workers, managers, the leader last, handed over first); finishes an interrupted
    /// `upgrade --image` onto the same image. Without it, such hosts are kept and reported.
    #[arg(long)]
    pub rolling: bool,
    /// Print what would be created, changed or deleted, and stop (same as `coordinator plan`).
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

/// flotilla.toml (or the defaults) with the flags applied, and where it came from.
pub fn load_config(g: &Global, args: &DeployArgs) -> Result<(ClusterConfig, String), CliError> {
    let explicit = args.file != std::path::Path::new("flotilla.toml");
    let mut config = ClusterConfig::load(&args.file, explicit).map_err(crate::ops::deploy::DeployError::from)?;
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
    if let Some(port) = args.port {
        config.coordinator.port = Some(port);
    }
    if let Some(i) = &args.image {
        config.images.host = i.clone();
    }
    if let Some(h) = args.heal {
        config.heal.mode = h;
    }
    if let Some(g) = args.heal_grace {
        config.heal.grace = g;
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

pub async fn run(g: &Global, args: DeployArgs) -> Result<(), CliError> {
    let (config, origin) = load_config(g, &args)?;
    let report = crate::ops::deploy::deploy(crate::ops::deploy::DeployOptions {
        config,
        origin,
        state_root: g.state_root(),
        quiet: args.output == Output::Json,
        force_smoke: args.smoke_test,
        rolling: args.rolling,
    })
    .await?;
    match args.output {
        Output::Json => outln!("{}", json_pretty(&report)),
        Output::Table => print_table(&report),
    }
    Ok(())
}

/// The hosts with their roles and swarm status, the leaders, the smoke test, and how to
/// point `docker` at the cluster.
fn print_table(report: &crate::ops::deploy::Report) {
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
    outln!(
        "\ncluster '{}' {} in {:.1} s\n{t}",
        report.cluster,
        if report.changed { "deployed" } else { "unchanged" },
        report.duration_s
    );
    outln!(
        "\nswarm leader: {} ({}); consul leader: {}",
        report.swarm.leader,
        report.swarm.leader_ip,
        report.consul.leader
    );
    if let Some(s) = &report.smoke_test {
        outln!(
            "smoke test: {} hello task(s) on {} — \"{}\"",
            s.tasks,
            s.nodes.join(", "),
            s.output.first().cloned().unwrap_or_default()
        );
    }
    if !report.replaced.is_empty() {
        outln!("\nreplaced, one at a time (add before remove):");
        for h in &report.replaced {
            let resumed = if h.resumed { " (resumed)" } else { "" };
            outln!(
                "  {:<12} → {:<14} {:<8} {} → {} — {:.1} s{resumed}",
                h.old,
                h.new,
                h.role,
                h.old_image,
                h.new_image,
                h.seconds
            );
        }
    }
    if let Some(d) = &report.image_drift {
        outln!(
            "\nimage drift: {} host(s) run another image than the one hosts are launched from ({}), and this deploy kept them:",
            d.hosts.len(),
            d.target_image
        );
        for h in &d.hosts {
            outln!("  {:<12} {}", h.host, h.image);
        }
        outln!("{}", d.fix);
    }
    let me = crate::ui::self_command();
    outln!(
        "\npoint docker at the cluster (and back: eval \"$({me} env --unset)\"):\n  eval \"$({me} --cluster {} env)\"\n  docker node ls",
        report.cluster
    );
}
