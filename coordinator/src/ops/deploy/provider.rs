//! Step 2: the provider's side of the cluster, made to exist — the lab's images, network and
//! registry, or EC2's VPC, security group and AMI — and what the rest of the deploy needs
//! from it: a [`Prepared`] (where the control plane listens, what hosts dial, the role images,
//! how user-data gets the Engine). The provider is recorded in the state directory so
//! `destroy`, `status` and the failover drill find the hosts without flotilla.toml.

use std::path::Path;

use super::DeployError;
use crate::ops::cluster_config::ClusterConfig;
use crate::providers::aws::{self, Aws};
use crate::providers::lab::engine::LabEngine;
use crate::providers::lab::{self, Lab, LabError};
use crate::providers::{Host, LaunchSpec, Provider, ProviderKind, ProviderRecord};
use crate::ui::Progress;

/// On AWS, HashiCorp's official Consul image and Docker's hello-world (the seed's smoke
/// test); the lab builds its own from Debian packages and serves them from its registry.
pub const AWS_CONSUL_IMAGE: &str = "hashicorp/consul:1.20";
pub const AWS_HELLO_IMAGE: &str = "hello-world:latest";

/// The provider, ready to launch: where the control plane listens and what hosts dial, the
/// role images, and how user-data gets the Engine.
pub struct Prepared {
    pub provider: Provider,
    pub listen: String,
    pub advertise: String,
    pub consul_image: String,
    pub hello_image: String,
    pub engine: flotilla_cloud_init::Engine,
    pub insecure_registries: Vec<String>,
    /// AWS only: VPC, security group, AMI.
    pub aws: Option<aws::LaunchContext>,
    /// The lab: the role images' push into its registry, still under way after
    /// [`prepare_provider_early`] ([`Prepared::role_images_ready`] waits for it).
    pub pushing: Option<lab::registry::Pushing>,
}

impl Prepared {
    /// Waits until the role images can be pulled by hosts (the lab's push into its registry;
    /// nothing to wait for on AWS). Before any role is assigned.
    pub async fn role_images_ready(&self) -> Result<(), DeployError> {
        match &self.pushing {
            Some(p) => Ok(p.wait().await?),
            None => Ok(()),
        }
    }

    /// Launches one host; `index` is its position among hosts of its role (AWS: its subnet).
    pub async fn launch(&self, spec: &LaunchSpec, index: usize) -> Result<Host, DeployError> {
        Ok(match (&self.provider, &self.aws) {
            (Provider::Lab(l), _) => l.launch(spec).await?,
            (Provider::Aws(a), Some(ctx)) => a.launch(spec, index, ctx).await?,
            (Provider::Aws(_), None) => return Err(DeployError::NoLaunchContext),
        })
    }
}

/// Step 2: the provider's side of the cluster, made to exist, the role images included.
pub async fn prepare_provider(
    c: &ClusterConfig,
    state_dir: &Path,
    quiet: bool,
    p: &Progress,
) -> Result<Prepared, DeployError> {
    let prepared = prepare_provider_early(c, state_dir, quiet, p).await?;
    prepared.role_images_ready().await?;
    Ok(prepared)
}

/// [`prepare_provider`] that returns while the lab's role images are still being pushed
/// into its registry (issue 19: the push overlaps the hosts' boot); the caller waits with
/// [`Prepared::role_images_ready`] before it assigns roles.
pub async fn prepare_provider_early(
    c: &ClusterConfig,
    state_dir: &Path,
    quiet: bool,
    p: &Progress,
) -> Result<Prepared, DeployError> {
    match c.provider {
        ProviderKind::Lab => prepare_lab(c, state_dir, quiet, p).await,
        ProviderKind::Aws => prepare_aws(c, state_dir, p).await,
    }
}

/// Writes `<state>/provider.json`: which provider the cluster's hosts come from.
pub fn record(c: &ClusterConfig, prepared: &Prepared, state_dir: &Path) -> Result<(), DeployError> {
    ProviderRecord {
        provider: prepared.provider.kind(),
        aws: matches!(prepared.provider, Provider::Aws(_)).then(|| c.aws.clone()),
        lab: matches!(prepared.provider, Provider::Lab(_)).then(|| c.lab.clone()),
    }
    .save(state_dir)
    .map_err(DeployError::state_dir(state_dir))
}

/// `configured`, or `default` when it is empty.
fn pick(configured: &str, default: &str) -> String {
    if configured.is_empty() { default.to_string() } else { configured.to_string() }
}

/// The lab: its images (built once per recipe), its network and the registry preloaded with
/// the role images.
async fn prepare_lab(c: &ClusterConfig, state_dir: &Path, quiet: bool, p: &Progress) -> Result<Prepared, DeployError> {
    let engine = LabEngine::connect(c.lab.engine()).await?;
    p.step("lab", "lab images (built once per recipe; a no-op when present)");
    let images = lab::images::ensure(quiet, &engine.address).await.map_err(LabError::from)?;
    let lab = Lab::new(engine, &c.name, state_dir, images);
    if !c.images.host.is_empty() {
        lab.require_image(&c.images.host, "images.host in flotilla.toml, or --image").await?;
        p.step("lab", format!("hosts boot from {}", c.images.host));
    }
    let (network, refs, pushing) = lab
        .ensure_pushing(&[(&lab.images.consul, "flotilla/consul:1.8.7"), (&lab.images.hello, "flotilla/hello:1")])
        .await?;
    let gateway = network.coordinator_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "127.0.0.1".into());
    p.step(
        "lab",
        format!(
            "network {} (coordinator at {gateway}, registry {})",
            lab.network_name(),
            network.registry.clone().unwrap_or_default()
        ),
    );
    let mut insecure: Vec<String> = network.registry.iter().cloned().collect();
    insecure.extend(c.images.insecure_registries.iter().cloned());
    Ok(Prepared {
        listen: pick(&c.coordinator.listen, &gateway),
        advertise: pick(&c.coordinator.advertise, &gateway),
        consul_image: pick(&c.images.consul, &refs[0]),
        hello_image: pick(&c.images.hello, &refs[1]),
        engine: flotilla_cloud_init::Engine::Preinstalled,
        insecure_registries: insecure,
        provider: Provider::Lab(lab),
        aws: None,
        pushing: Some(pushing),
    })
}

/// EC2: the VPC and subnets, the instance types and AMI checked, the security group made to
/// match.
async fn prepare_aws(c: &ClusterConfig, state_dir: &Path, p: &Progress) -> Result<Prepared, DeployError> {
    let a = Aws::connect(&c.name, &c.aws, state_dir).await?;
    p.step("aws", format!("region {} via {}", a.region, a.endpoint));
    let image = (!c.images.host.is_empty()).then_some(c.images.host.as_str());
    let (ctx, change) = a.prepare(image, &[&c.instance_types.manager, &c.instance_types.node]).await?;
    let zones: Vec<String> = ctx.vpc.subnets.iter().map(|s| format!("{} ({})", s.id, s.zone)).collect();
    p.step("aws", format!("VPC {}; subnets {}", ctx.vpc.id, zones.join(", ")));
    p.step("aws", format!("AMI {}", ctx.ami.id));
    let listed = |what: &str, rules: &[String]| {
        if rules.is_empty() { String::new() } else { format!("; {what} {}", rules.join("; ")) }
    };
    p.step(
        "aws",
        format!(
            "security group {} {}{}{}",
            change.id,
            if change.created { "created" } else { "found" },
            listed("added", &change.added),
            listed("revoked", &change.revoked),
        ),
    );
    Ok(Prepared {
        listen: pick(&c.coordinator.listen, "0.0.0.0"),
        advertise: c.coordinator.advertise.clone(),
        consul_image: pick(&c.images.consul, AWS_CONSUL_IMAGE),
        hello_image: pick(&c.images.hello, AWS_HELLO_IMAGE),
        engine: flotilla_cloud_init::Engine::InstallIfAbsent(flotilla_cloud_init::OsFamily::AmazonLinux2023),
        insecure_registries: c.images.insecure_registries.clone(),
        provider: Provider::Aws(a),
        aws: Some(ctx),
        pushing: None,
    })
}
