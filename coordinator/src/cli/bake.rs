//! `coordinator bake`: a host image with Docker Engine and the agent installed (lab: a local
//! image; aws: an AMI), made by [`crate::ops::bake`]; prints its report.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::args::parse_duration;
use super::{CliError, Global, Output, json_pretty};
use crate::providers::ProviderKind;

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
    /// flotilla.toml, for its [lab] section (docker_host) and, on aws, its [aws] section (region, endpoint_url, vpc_id, subnet_ids,
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

pub async fn run(g: &Global, args: BakeArgs) -> Result<(), CliError> {
    let agent_binary = match args.agent_binary {
        Some(p) => p,
        None => crate::control_plane::agent_binary::AgentBinary::default_path().map_err(CliError::AgentBinary)?,
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
        lab: config.lab.clone(),
        advertise,
        instance_type: config.instance_types.node.clone(),
        // Progress goes to stderr either way; with --output json stdout holds only the JSON.
        quiet: false,
    })
    .await?;
    match args.output {
        Output::Json => outln!("{}", json_pretty(&report)),
        Output::Table => print_table(&report),
    }
    Ok(())
}

/// What was baked (or reused) from what, and how to boot hosts from it.
fn print_table(report: &crate::ops::bake::Report) {
    outln!(
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
    outln!(
        "\nboot hosts from it:\n  {} deploy --image {}\n  (or `host = \"{}\"` under [images] in flotilla.toml)",
        crate::ui::self_command(),
        report.image,
        report.image
    );
}
