//! The AWS provider: EC2 instances launched least-privilege, idempotently and resumably.
//!
//! - **Credentials and region** come from the standard chain (environment, profiles, SSO,
//!   instance role); `aws.region`, `aws.profile` and `aws.endpoint_url` (or `--region`,
//!   `--endpoint-url`) override it, so any EC2-compatible endpoint works.
//! - **Network** ([`network`]): the default VPC, or `aws.vpc_id`; its subnets (or
//!   `aws.subnet_ids`) sorted by availability zone, and hosts of one role spread over them
//!   round-robin (managers 1-1-1 over three zones). A capacity error moves the launch to the
//!   next subnet.
//! - **Security group** ([`security_group`]): created and owned by the cluster, never the
//!   user's; re-runs add what is missing and revoke what Flotilla did not ask for.
//! - **Image** ([`image`]): the Amazon Linux 2023 x86_64 AMI from its public SSM parameter (or
//!   `images.host`), checked with the instance types before anything is launched.
//! - **Instances** ([`instances`]): where a host is launched on EC2 — IMDSv2 required with
//!   hop limit 1, an encrypted gp3 root volume, tags (`Name`, `flotilla:cluster`,
//!   `flotilla:role`, `flotilla:host`) and the rendered user-data. Hosts are found by tag
//!   before anything is launched, and every RunInstances carries a ClientToken derived from
//!   cluster, host and launch generation, so a retried call never makes a second instance.
//! - **Faults**: the SDK retries throttling and 5xx with back-off (standard mode, 6
//!   attempts); every wait is bounded; errors name the fix ([`errors`]).
//! - **Baking** ([`bake`]): an AMI with the Engine and the agent installed.
//!
//! This file holds the provider itself: its settings (`[aws]`), the connection, the tags
//! everything carries, and `destroy`.

pub mod bake;
pub mod errors;
pub mod iam;
pub mod image;
pub mod instances;
pub mod network;
pub mod security_group;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

pub use errors::AwsError;
pub use image::{AL2023_PARAMETER, Ami};
pub use instances::{LaunchContext, client_token, not_terminated};
pub use network::{Subnet, Vpc};
pub use security_group::{Group, GroupChange};

pub const TAG_CLUSTER: &str = "flotilla:cluster";
pub const TAG_ROLE: &str = "flotilla:role";
pub const TAG_HOST: &str = "flotilla:host";
/// How long launches, stops and terminations get.
pub const WAIT: Duration = Duration::from_secs(600);
/// Poll interval of the bounded waits.
const POLL: Duration = Duration::from_secs(2);

/// `[aws]` in flotilla.toml: where and how the AWS provider launches hosts.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsSettings {
    pub region: String,
    pub profile: String,
    pub endpoint_url: String,
    pub vpc_id: String,
    pub subnet_ids: Vec<String>,
    pub admin_cidr: String,
    pub ssh_cidr: String,
    pub key_name: String,
    pub root_volume_gib: i32,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            region: String::new(),
            profile: String::new(),
            endpoint_url: String::new(),
            vpc_id: String::new(),
            subnet_ids: vec![],
            admin_cidr: String::new(),
            ssh_cidr: String::new(),
            key_name: String::new(),
            root_volume_gib: 20,
        }
    }
}

pub struct Aws {
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub cluster: String,
    pub settings: AwsSettings,
    /// The endpoint in use, for messages.
    pub endpoint: String,
    pub region: String,
    /// `<cluster state>/aws`: launch generations (ClientToken inputs).
    dir: PathBuf,
}

impl Aws {
    /// Loads credentials and region (standard chain + overrides). Makes no call yet.
    pub async fn connect(cluster: &str, settings: &AwsSettings, state_dir: &Path) -> Result<Self, AwsError> {
        Self::connect_with(cluster, settings, state_dir, None).await
    }

    /// [`Aws::connect`] with the given credentials instead of the standard chain's.
    pub async fn connect_with(
        cluster: &str,
        settings: &AwsSettings,
        state_dir: &Path,
        credentials: Option<aws_sdk_ec2::config::SharedCredentialsProvider>,
    ) -> Result<Self, AwsError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(6)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(20)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .operation_timeout(Duration::from_secs(180))
                    .build(),
            );
        if !settings.region.is_empty() {
            loader = loader.region(aws_config::Region::new(settings.region.clone()));
        }
        if !settings.profile.is_empty() {
            loader = loader.profile_name(&settings.profile);
        }
        if !settings.endpoint_url.is_empty() {
            loader = loader.endpoint_url(&settings.endpoint_url);
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(c);
        }
        let conf = loader.load().await;
        let region = conf.region().map(|r| r.to_string()).ok_or(AwsError::NoRegion)?;
        let endpoint = if settings.endpoint_url.is_empty() {
            format!("https://ec2.{region}.amazonaws.com")
        } else {
            settings.endpoint_url.clone()
        };
        Ok(Self {
            ec2: aws_sdk_ec2::Client::new(&conf),
            ssm: aws_sdk_ssm::Client::new(&conf),
            cluster: cluster.to_string(),
            settings: settings.clone(),
            endpoint,
            region,
            dir: state_dir.join("aws"),
        })
    }

    /// Maps an SDK error of `action` (the IAM action, e.g. `ec2:RunInstances`) to an
    /// [`AwsError`] naming this endpoint.
    fn err<E, R>(&self, action: &str) -> impl FnOnce(aws_sdk_ec2::error::SdkError<E, R>) -> AwsError + '_
    where
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let action = action.to_string();
        move |e| AwsError::from_sdk(&action, &self.endpoint, e)
    }

    fn cluster_filter(&self) -> Filter {
        Filter::builder().name(format!("tag:{TAG_CLUSTER}")).values(&self.cluster).build()
    }

    fn tags(&self, resource: ResourceType, name: &str, extra: &[(&str, &str)]) -> TagSpecification {
        tag_spec(resource, name, (TAG_CLUSTER, &self.cluster), extra)
    }

    /// Terminates every instance with the cluster's tag, waits, deletes the security group
    /// (retrying while EC2 still holds it). Idempotent. Returns what it removed.
    pub async fn destroy(&self) -> Result<Vec<String>, AwsError> {
        let hosts = self.describe().await?;
        let mut removed: Vec<String> =
            hosts.iter().map(|h| format!("instance {} ({})", h.instance_id, h.name)).collect();
        self.terminate_ids(&hosts.iter().map(|h| h.instance_id.clone()).collect::<Vec<_>>()).await?;
        let r = self
            .ec2
            .describe_security_groups()
            .filters(self.cluster_filter())
            .send()
            .await
            .map_err(self.err("ec2:DescribeSecurityGroups"))?;
        for g in r.security_groups() {
            let Some(id) = g.group_id() else { continue };
            self.delete_group(id).await?;
            removed.push(format!("security group {id}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(removed)
    }
}

/// Tags for a resource Flotilla creates: `Name`, its owner tag (`flotilla:cluster` for a
/// cluster's resources, `flotilla:bake` for a bake's), and `extra`.
pub fn tag_spec(resource: ResourceType, name: &str, owner: (&str, &str), extra: &[(&str, &str)]) -> TagSpecification {
    let mut b = TagSpecification::builder()
        .resource_type(resource)
        .tags(Tag::builder().key("Name").value(name).build())
        .tags(Tag::builder().key(owner.0).value(owner.1).build());
    for (k, v) in extra {
        b = b.tags(Tag::builder().key(*k).value(*v).build());
    }
    b.build()
}
