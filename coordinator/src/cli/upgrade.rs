//! `coordinator upgrade --agent`: every host's agent replaced in place by another build
//! ([`crate::ops::upgrade::agent`]), the plan (`--dry-run`) or the outcome as lines or JSON;
//! `upgrade --image IMAGE --dry-run`: the plan of a rolling replacement onto a new host image
//! ([`crate::ops::upgrade::image`]).
//! A host whose agent refused or failed ends the command with its reason (exit 1).

use std::path::PathBuf;

use clap::Args;

use super::{CliError, Global, Output, json_pretty};
use crate::ops::upgrade::agent::{self, AgentUpgradeOptions, AgentUpgradeReport};
use crate::ops::upgrade::image::{self, ImageUpgradeOptions, ImageUpgradeReport};

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// Replace every host's agent in place, one host at a time (workers, managers, the leader
    /// last); containers keep running. Hosts already on the build are skipped.
    #[arg(long, required_unless_present = "image", conflicts_with = "image")]
    pub agent: bool,
    /// Replace every host not on IMAGE (lab image, AMI id or SSM parameter) by one launched
    /// from it, one at a time, add before remove (workers, managers, the leader last, handed
    /// over first); each replacement takes the slot's next name (`node0` → `node0-u1`). An
    /// interrupted run continues where it stopped; hosts already on IMAGE are skipped.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The new agent binary (default: the one this coordinator serves to new hosts —
    /// `flotilla-agent` next to this executable, else this executable).
    #[arg(long, requires = "agent")]
    pub binary: Option<PathBuf>,
    /// Testing: the SHA-256 the agents are told to expect instead of the binary's own, so
    /// that their check can be seen refusing it (every agent keeps its build).
    #[arg(long, hide = true, requires = "agent")]
    pub announce_sha256: Option<String>,
    /// List each host, its current and target agent, and the order, without touching anything.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

pub async fn run(g: &Global, args: UpgradeArgs) -> Result<(), CliError> {
    if g.remote.is_some() {
        return Err(crate::ops::upgrade::UpgradeError::Remote.into());
    }
    if let Some(image) = args.image {
        let report = image::upgrade_image(ImageUpgradeOptions {
            cluster: g.cluster(),
            state_root: g.state_root(),
            image,
            dry_run: args.dry_run,
            quiet: args.output == Output::Json,
        })
        .await?;
        match args.output {
            Output::Json => outln!("{}", json_pretty(&report)),
            Output::Table if report.dry_run => print_image_plan(&report),
            Output::Table => print_image_done(&report),
        }
        return Ok(());
    }
    let report = agent::upgrade_agent(AgentUpgradeOptions {
        cluster: g.cluster(),
        state_root: g.state_root(),
        binary: args.binary,
        announce_sha256: args.announce_sha256,
        dry_run: args.dry_run,
        quiet: args.output == Output::Json,
    })
    .await?;
    match args.output {
        Output::Json => outln!("{}", json_pretty(&report)),
        Output::Table => print_summary(&report),
    }
    Ok(())
}

fn print_summary(r: &AgentUpgradeReport) {
    let target = format!("{} (sha256 {})", r.target_version, r.target_sha256);
    match r.dry_run {
        true => outln!("cluster '{}': upgrade --agent would put every host on {target}, in this order:", r.cluster),
        false => outln!(
            "cluster '{}': {} agents upgraded, {} already on {target}, in {:.1} s",
            r.cluster,
            r.upgraded,
            r.skipped,
            r.total_s
        ),
    }
    for s in &r.hosts {
        let current = crate::ops::upgrade::agent::short(&s.current_sha256);
        let done = s.seconds.map(|x| format!(" — {x:.1} s")).unwrap_or_default();
        outln!(
            "  {}. {:<12} {:<8} agent {} sha256 {current}… → {}{done}",
            s.order,
            s.host,
            s.role,
            s.current_version,
            if s.action == "skip" {
                "already there".to_string()
            } else {
                format!("sha256 {}…", crate::ops::upgrade::agent::short(&r.target_sha256))
            }
        );
    }
}

fn print_image_done(r: &ImageUpgradeReport) {
    outln!(
        "cluster '{}': {} host(s) replaced by ones launched from {}, in {:.1} s",
        r.cluster,
        r.replaced.len(),
        r.target_image,
        r.total_s
    );
    for h in &r.replaced {
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

fn print_image_plan(r: &ImageUpgradeReport) {
    outln!(
        "cluster '{}': upgrade --image would replace {} host(s) with ones launched from {}, in this order:",
        r.cluster,
        r.to_replace,
        r.target_image
    );
    for s in &r.hosts {
        let current = if s.current_image.is_empty() { "(not at the provider)" } else { &s.current_image };
        let to = if s.action == "skip" { "already there" } else { r.target_image.as_str() };
        outln!("  {}. {:<12} {:<8} {current} → {to}", s.order, s.host, s.role);
    }
}
