//! The AWS provider: EC2 instances launched least-privilege, idempotently and resumably.
//!
//! - **Credentials and region** come from the standard chain (environment, profiles, SSO,
//!   instance role); `aws.region`, `aws.profile` and `aws.endpoint_url` (or `--region`,
//!   `--endpoint-url`) override it, so any EC2-compatible endpoint works.
//! - **Network**: the default VPC, or `aws.vpc_id`; its subnets (or `aws.subnet_ids`) sorted by
//!   availability zone, and hosts of one role spread over them round-robin (managers 1-1-1
//!   over three zones). A capacity error moves the launch to the next subnet.
//! - **Security group**: [`security_group`] — created and owned by the cluster, never the
//!   user's; re-runs add what is missing and revoke what Flotilla did not ask for.
//! - **Instances**: the Amazon Linux 2023 x86_64 AMI from its public SSM parameter (or
//!   `images.host`), IMDSv2 required with hop limit 1, an encrypted gp3 root volume, tags
//!   (`Name`, `flotilla:cluster`, `flotilla:role`, `flotilla:host`) and the rendered
//!   user-data. Hosts are found by tag before anything is launched, and every RunInstances
//!   carries a ClientToken derived from cluster, host and launch generation, so a retried
//!   call never makes a second instance on EC2.
//! - **Faults**: the SDK retries throttling and 5xx with back-off (standard mode, 6
//!   attempts); every wait is bounded; errors name the fix ([`errors`]).

pub mod bake;
pub mod errors;
pub mod iam;
pub mod security_group;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::types::{
    ArchitectureType, BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, InstanceAttributeName,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceStateName, InstanceType, IpPermission,
    IpRange, ResourceType, Tag, TagSpecification, UserIdGroupPair, VolumeType,
};
use base64::Engine as _;
use sha2::Digest;

use super::{Host, HostState, LaunchSpec};
use crate::ops::cluster_config::AwsSettings;
pub use errors::AwsError;
use security_group::{Rule, Source};

pub const TAG_CLUSTER: &str = "flotilla:cluster";
pub const TAG_ROLE: &str = "flotilla:role";
pub const TAG_HOST: &str = "flotilla:host";
/// Amazon Linux 2023, x86_64, the current AMI id (public SSM parameter).
pub const AL2023_PARAMETER: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";
/// How long launches, stops and terminations get.
pub const WAIT: Duration = Duration::from_secs(600);
/// Poll interval of the bounded waits.
const POLL: Duration = Duration::from_secs(2);

/// A subnet hosts can be placed in.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Subnet {
    pub id: String,
    pub zone: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Vpc {
    pub id: String,
    pub subnets: Vec<Subnet>,
}

/// The cluster's security group as found on EC2.
#[derive(Clone, Debug)]
pub struct Group {
    pub id: String,
    pub rules: Vec<Rule>,
}

/// What [`Aws::ensure_security_group`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GroupChange {
    pub id: String,
    pub created: bool,
    pub added: Vec<String>,
    pub revoked: Vec<String>,
}

/// The image hosts boot from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ami {
    pub id: String,
    pub root_device: String,
}

/// Everything a launch needs besides the host's own spec.
#[derive(Clone, Debug)]
pub struct LaunchContext {
    pub vpc: Vpc,
    pub group_id: String,
    pub ami: Ami,
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

    /// A RunInstances of one instance with what every Flotilla instance gets, whatever it is
    /// for (host or bake builder): IMDSv2 required with hop limit 1, an encrypted gp3 root
    /// volume on `root_device`, the optional key pair, and the user-data. Callers add
    /// placement, tags and the ClientToken.
    pub fn hardened_run(
        &self,
        ami: &str,
        root_device: &str,
        instance_type: &str,
        group_id: &str,
        user_data: &str,
    ) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder {
        let req = self
            .ec2
            .run_instances()
            .image_id(ami)
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1)
            .security_group_ids(group_id)
            .user_data(base64::engine::general_purpose::STANDARD.encode(user_data.as_bytes()))
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_put_response_hop_limit(1)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(root_device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_type(VolumeType::Gp3)
                            .volume_size(self.settings.root_volume_gib)
                            .encrypted(true)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        if self.settings.key_name.is_empty() { req } else { req.key_name(&self.settings.key_name) }
    }

    /// The VPC and its subnets (sorted by zone, then id).
    pub async fn vpc(&self) -> Result<Vpc, AwsError> {
        let vpc_id = if self.settings.vpc_id.is_empty() {
            let r = self
                .ec2
                .describe_vpcs()
                .filters(Filter::builder().name("isDefault").values("true").build())
                .send()
                .await
                .map_err(self.err("ec2:DescribeVpcs"))?;
            r.vpcs().first().and_then(|v| v.vpc_id()).map(str::to_string).ok_or_else(|| AwsError::Setup {
                what: format!("region {}", self.region),
                detail: "has no default VPC: set `aws.vpc_id` (and `aws.subnet_ids`) in flotilla.toml".into(),
            })?
        } else {
            self.settings.vpc_id.clone()
        };
        let mut req = self.ec2.describe_subnets().filters(Filter::builder().name("vpc-id").values(&vpc_id).build());
        if !self.settings.subnet_ids.is_empty() {
            req = req.set_subnet_ids(Some(self.settings.subnet_ids.clone()));
        }
        let r = req.send().await.map_err(self.err("ec2:DescribeSubnets"))?;
        let mut subnets: Vec<Subnet> = r
            .subnets()
            .iter()
            .filter_map(|s| {
                Some(Subnet {
                    id: s.subnet_id()?.to_string(),
                    zone: s.availability_zone().unwrap_or_default().to_string(),
                })
            })
            .collect();
        subnets.sort_by(|a, b| (&a.zone, &a.id).cmp(&(&b.zone, &b.id)));
        // One subnet per zone unless the operator listed them: spreading is per zone.
        if self.settings.subnet_ids.is_empty() {
            subnets.dedup_by(|a, b| a.zone == b.zone);
        }
        if subnets.is_empty() {
            return Err(AwsError::Setup {
                what: format!("VPC {vpc_id}"),
                detail: "has no subnets (or none of `aws.subnet_ids` is in it)".into(),
            });
        }
        Ok(Vpc { id: vpc_id, subnets })
    }

    pub fn group_name(&self) -> String {
        format!("flotilla-{}", self.cluster)
    }

    /// The cluster's group in `vpc_id`, if it exists. A group of that name without the
    /// cluster's tag is the user's: refused, never edited.
    pub async fn find_security_group(&self, vpc_id: &str) -> Result<Option<Group>, AwsError> {
        let r = self
            .ec2
            .describe_security_groups()
            .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
            .filters(Filter::builder().name("group-name").values(self.group_name()).build())
            .send()
            .await
            .map_err(self.err("ec2:DescribeSecurityGroups"))?;
        let Some(g) = r.security_groups().first() else {
            return Ok(None);
        };
        let id = g.group_id().unwrap_or_default().to_string();
        let ours = g.tags().iter().any(|t| t.key() == Some(TAG_CLUSTER) && t.value() == Some(self.cluster.as_str()));
        if !ours {
            return Err(AwsError::Setup {
                what: format!("security group {} ({id})", self.group_name()),
                detail: format!(
                    "exists in {vpc_id} but was not created by Flotilla for cluster '{}' (no {TAG_CLUSTER} tag); \
                     Flotilla never edits a group it does not own: rename that group or pick another cluster name",
                    self.cluster
                ),
            });
        }
        let rules = g.ip_permissions().iter().flat_map(|p| rules_of(p, &id)).collect();
        Ok(Some(Group { id, rules }))
    }

    /// Creates the cluster's group if missing and brings its inbound rules to exactly
    /// [`security_group::desired_rules`].
    pub async fn ensure_security_group(&self, vpc: &Vpc) -> Result<GroupChange, AwsError> {
        let desired = security_group::desired_rules(&self.settings.admin_cidr, &self.settings.ssh_cidr);
        let (group, created) = match self.find_security_group(&vpc.id).await? {
            Some(g) => (g, false),
            None => {
                let r = self
                    .ec2
                    .create_security_group()
                    .group_name(self.group_name())
                    .description(format!(
                        "Flotilla cluster {}: swarm, consul and engine TLS; owned by Flotilla",
                        self.cluster
                    ))
                    .vpc_id(&vpc.id)
                    .tag_specifications(self.tags(ResourceType::SecurityGroup, &self.group_name(), &[]))
                    .send()
                    .await
                    .map_err(self.err("ec2:CreateSecurityGroup"))?;
                let id = r.group_id().unwrap_or_default().to_string();
                (Group { id, rules: vec![] }, true)
            }
        };
        let (add, revoke) = security_group::diff(&group.rules, &desired);
        if !add.is_empty() {
            let mut req = self.ec2.authorize_security_group_ingress().group_id(&group.id);
            for r in &add {
                req = req.ip_permissions(permission(r, &group.id));
            }
            req.send().await.map_err(self.err("ec2:AuthorizeSecurityGroupIngress"))?;
        }
        if !revoke.is_empty() {
            let mut req = self.ec2.revoke_security_group_ingress().group_id(&group.id);
            for r in &revoke {
                req = req.ip_permissions(permission(r, &group.id));
            }
            req.send().await.map_err(self.err("ec2:RevokeSecurityGroupIngress"))?;
        }
        Ok(GroupChange {
            id: group.id,
            created,
            added: add.iter().map(ToString::to_string).collect(),
            revoked: revoke.iter().map(ToString::to_string).collect(),
        })
    }

    /// The AMI: `image` when given (a baked one), else Amazon Linux 2023 from SSM. Checked
    /// to exist and to be x86_64.
    pub async fn ami(&self, image: Option<&str>) -> Result<Ami, AwsError> {
        let id = match image {
            Some(i) => i.to_string(),
            None => {
                let r = self
                    .ssm
                    .get_parameter()
                    .name(AL2023_PARAMETER)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("ssm:GetParameter", &self.endpoint, e))?;
                r.parameter().and_then(|p| p.value()).map(str::to_string).ok_or_else(|| AwsError::Setup {
                    what: format!("SSM parameter {AL2023_PARAMETER}"),
                    detail: "has no value".into(),
                })?
            }
        };
        let r = self.ec2.describe_images().image_ids(&id).send().await.map_err(|e| {
            match AwsError::from_sdk("ec2:DescribeImages", &self.endpoint, e) {
                AwsError::Api { code, message, .. } if code.starts_with("InvalidAMIID") => {
                    AwsError::UnknownAmi { ami: id.clone(), region: self.region.clone(), message }
                }
                other => other,
            }
        })?;
        let Some(img) = r.images().first() else {
            return Err(AwsError::UnknownAmi {
                ami: id,
                region: self.region.clone(),
                message: "DescribeImages found nothing".into(),
            });
        };
        if let Some(a) = img.architecture()
            && *a != aws_sdk_ec2::types::ArchitectureValues::X8664
        {
            return Err(AwsError::Setup {
                what: format!("AMI {id}"),
                detail: format!("is {a}, Flotilla's hosts are x86_64"),
            });
        }
        Ok(Ami { id, root_device: img.root_device_name().unwrap_or("/dev/xvda").to_string() })
    }

    /// Refuses an instance type that is not x86_64 (the AMI is) or that EC2 does not know.
    pub async fn check_instance_type(&self, instance_type: &str) -> Result<(), AwsError> {
        let r =
            self.ec2.describe_instance_types().instance_types(InstanceType::from(instance_type)).send().await.map_err(
                |e| match AwsError::from_sdk("ec2:DescribeInstanceTypes", &self.endpoint, e) {
                    AwsError::Api { code, .. } if code.contains("InvalidInstanceType") => {
                        AwsError::UnknownInstanceType(instance_type.to_string())
                    }
                    other => other,
                },
            )?;
        let Some(t) = r.instance_types().first() else {
            return Err(AwsError::UnknownInstanceType(instance_type.to_string()));
        };
        let archs = t.processor_info().map(|p| p.supported_architectures().to_vec()).unwrap_or_default();
        if !archs.is_empty() && !archs.contains(&ArchitectureType::X8664) {
            return Err(AwsError::Architecture {
                instance_type: instance_type.to_string(),
                arch: archs.iter().map(|a| a.as_str().to_string()).collect::<Vec<_>>().join("/"),
            });
        }
        Ok(())
    }

    /// Everything launches need: VPC and subnets, the security group (made to match), the AMI.
    pub async fn prepare(
        &self,
        image: Option<&str>,
        instance_types: &[&str],
    ) -> Result<(LaunchContext, GroupChange), AwsError> {
        let vpc = self.vpc().await?;
        for t in instance_types {
            self.check_instance_type(t).await?;
        }
        let ami = self.ami(image).await?;
        let change = self.ensure_security_group(&vpc).await?;
        Ok((LaunchContext { vpc, group_id: change.id.clone(), ami }, change))
    }

    /// Every instance of the cluster that is not terminated, found by tag.
    pub async fn describe(&self) -> Result<Vec<Host>, AwsError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let r = self
                .ec2
                .describe_instances()
                .filters(self.cluster_filter())
                .filters(not_terminated())
                .set_next_token(next.clone())
                .send()
                .await
                .map_err(self.err("ec2:DescribeInstances"))?;
            for res in r.reservations() {
                for i in res.instances() {
                    let tag = |k: &str| {
                        i.tags()
                            .iter()
                            .find(|t| t.key() == Some(k))
                            .and_then(|t| t.value())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let name = match tag(TAG_HOST) {
                        n if !n.is_empty() => n,
                        _ => tag("Name"),
                    };
                    out.push(Host {
                        name,
                        instance_id: i.instance_id().unwrap_or_default().to_string(),
                        role: tag(TAG_ROLE),
                        state: i
                            .state()
                            .and_then(|s| s.name())
                            .map(state_of)
                            .unwrap_or(HostState::Other("unknown".into())),
                        private_ip: i.private_ip_address().and_then(|a| a.parse::<IpAddr>().ok()),
                    });
                }
            }
            next = r.next_token().map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn host(&self, name: &str) -> Result<Host, AwsError> {
        self.describe().await?.into_iter().find(|h| h.name == name).ok_or_else(|| AwsError::NoHost(name.to_string()))
    }

    /// Launches one host. `index` is its position among hosts of its role (placement:
    /// subnet `index mod n`, then the next ones on a capacity error).
    pub async fn launch(&self, spec: &LaunchSpec, index: usize, ctx: &LaunchContext) -> Result<Host, AwsError> {
        let generation = self.generation(&spec.name);
        let token = client_token(&self.cluster, &spec.name, generation);
        let n = ctx.vpc.subnets.len();
        let mut tried = Vec::new();
        let mut last = String::new();
        for k in 0..n {
            let subnet = &ctx.vpc.subnets[(index + k) % n];
            tried.push(format!("{} ({})", subnet.id, subnet.zone));
            let req = self
                .hardened_run(&ctx.ami.id, &ctx.ami.root_device, &spec.instance_type, &ctx.group_id, &spec.user_data)
                .subnet_id(&subnet.id)
                .client_token(format!("{token}-{k}"))
                .tag_specifications(self.tags(
                    ResourceType::Instance,
                    &spec.name,
                    &[(TAG_ROLE, &spec.role), (TAG_HOST, &spec.name)],
                ))
                .tag_specifications(self.tags(ResourceType::Volume, &spec.name, &[(TAG_HOST, &spec.name)]));
            match req.send().await {
                Ok(r) => {
                    let i = r
                        .instances()
                        .first()
                        .ok_or_else(|| AwsError::State("RunInstances returned no instance".into()))?;
                    self.set_generation(&spec.name, generation + 1)?;
                    return Ok(Host {
                        name: spec.name.clone(),
                        instance_id: i.instance_id().unwrap_or_default().to_string(),
                        role: spec.role.clone(),
                        state: i.state().and_then(|s| s.name()).map(state_of).unwrap_or(HostState::Pending),
                        private_ip: i.private_ip_address().and_then(|a| a.parse().ok()),
                    });
                }
                Err(e) => {
                    let e = AwsError::from_sdk("ec2:RunInstances", &self.endpoint, e);
                    match e.code() {
                        Some(c) if errors::CAPACITY_CODES.contains(&c) => {
                            last = e.to_string();
                            continue;
                        }
                        Some(c) if c.starts_with("InvalidAMIID") => {
                            return Err(AwsError::UnknownAmi {
                                ami: ctx.ami.id.clone(),
                                region: self.region.clone(),
                                message: e.to_string(),
                            });
                        }
                        _ => return Err(e),
                    }
                }
            }
        }
        Err(AwsError::Capacity { instance_type: spec.instance_type.clone(), tried: tried.join(", "), message: last })
    }

    /// The user-data EC2 holds for an instance, decoded.
    pub async fn user_data(&self, instance_id: &str) -> Result<String, AwsError> {
        let r = self
            .ec2
            .describe_instance_attribute()
            .instance_id(instance_id)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .map_err(self.err("ec2:DescribeInstanceAttribute"))?;
        let b64 = r.user_data().and_then(|v| v.value()).unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| AwsError::State(format!("user-data of {instance_id} is not base64: {e}")))?;
        String::from_utf8(bytes).map_err(|e| AwsError::State(format!("user-data of {instance_id} is not UTF-8: {e}")))
    }

    pub async fn stop(&self, name: &str) -> Result<(), AwsError> {
        let h = self.host(name).await?;
        self.ec2.stop_instances().instance_ids(&h.instance_id).send().await.map_err(self.err("ec2:StopInstances"))?;
        Ok(())
    }

    pub async fn start(&self, name: &str) -> Result<(), AwsError> {
        let h = self.host(name).await?;
        self.ec2.start_instances().instance_ids(&h.instance_id).send().await.map_err(self.err("ec2:StartInstances"))?;
        Ok(())
    }

    /// Terminates a host (idempotent: an unknown name is already gone) and waits for it.
    pub async fn terminate(&self, name: &str) -> Result<(), AwsError> {
        let ids: Vec<String> =
            self.describe().await?.into_iter().filter(|h| h.name == name).map(|h| h.instance_id).collect();
        self.terminate_ids(&ids).await
    }

    async fn terminate_ids(&self, ids: &[String]) -> Result<(), AwsError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.ec2
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(self.err("ec2:TerminateInstances"))?;
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self
                .ec2
                .describe_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
                .await
                .map_err(self.err("ec2:DescribeInstances"))?;
            let left: Vec<String> = r
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(AwsError::Timeout {
                    what: format!("instances {} to terminate", left.join(", ")),
                    after_s: WAIT.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
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
            let deadline = Instant::now() + WAIT;
            loop {
                match self.ec2.delete_security_group().group_id(id).send().await {
                    Ok(_) => break,
                    Err(e) => {
                        let e = AwsError::from_sdk("ec2:DeleteSecurityGroup", &self.endpoint, e);
                        match e.code() {
                            Some("InvalidGroup.NotFound") => break,
                            Some("DependencyViolation") if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                            _ => return Err(e),
                        }
                    }
                }
            }
            removed.push(format!("security group {id}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(removed)
    }

    fn generations_file(&self) -> PathBuf {
        self.dir.join("launches.json")
    }

    fn generation(&self, host: &str) -> u64 {
        std::fs::read(self.generations_file())
            .ok()
            .and_then(|b| serde_json::from_slice::<BTreeMap<String, u64>>(&b).ok())
            .and_then(|m| m.get(host).copied())
            .unwrap_or(0)
    }

    fn set_generation(&self, host: &str, generation: u64) -> Result<(), AwsError> {
        let path = self.generations_file();
        let mut m: BTreeMap<String, u64> =
            std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        m.insert(host.to_string(), generation);
        let io = |e: std::io::Error| AwsError::State(format!("{}: {e}", path.display()));
        flotilla_proto::fs::private_dir(&self.dir).map_err(io)?;
        flotilla_proto::fs::write_private(&path, &serde_json::to_vec_pretty(&m).unwrap_or_default()).map_err(io)
    }
}

/// Instances in any state but `terminated` (EC2 lists terminated ones for about an hour).
pub fn not_terminated() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .set_values(Some(["pending", "running", "stopping", "stopped", "shutting-down"].map(String::from).to_vec()))
        .build()
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

/// The idempotency token of one launch: the same cluster, host and generation always give
/// the same token (EC2 then returns the instance it already made), a new generation (after
/// the host was terminated) a new one. At most 64 ASCII characters, as EC2 requires.
pub fn client_token(cluster: &str, host: &str, generation: u64) -> String {
    let d = sha2::Sha256::digest(format!("flotilla/{cluster}/{host}/{generation}").as_bytes());
    format!("flotilla-{}", &hex::encode(d)[..40])
}

fn state_of(s: &InstanceStateName) -> HostState {
    match s {
        InstanceStateName::Pending => HostState::Pending,
        InstanceStateName::Running => HostState::Running,
        InstanceStateName::Stopping => HostState::Stopping,
        InstanceStateName::Stopped => HostState::Stopped,
        InstanceStateName::ShuttingDown | InstanceStateName::Terminated => HostState::Terminated,
        other => HostState::Other(other.as_str().to_string()),
    }
}

/// The rules one EC2 permission holds (one per source).
fn rules_of(p: &IpPermission, own_group: &str) -> Vec<Rule> {
    let protocol = p.ip_protocol().unwrap_or("-1").to_string();
    let (from, to) = (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1));
    let rule = |source: Source, description: Option<&str>| Rule {
        protocol: protocol.clone(),
        from_port: from,
        to_port: to,
        source,
        description: description.unwrap_or_default().to_string(),
    };
    let mut out = Vec::new();
    for g in p.user_id_group_pairs() {
        let id = g.group_id().unwrap_or_default();
        out.push(rule(if id == own_group { Source::OwnGroup } else { Source::Group(id.to_string()) }, g.description()));
    }
    for r in p.ip_ranges() {
        out.push(rule(Source::Cidr(r.cidr_ip().unwrap_or_default().to_string()), r.description()));
    }
    for r in p.ipv6_ranges() {
        out.push(rule(Source::Cidr(r.cidr_ipv6().unwrap_or_default().to_string()), r.description()));
    }
    out
}

/// The EC2 permission for one rule.
fn permission(r: &Rule, own_group: &str) -> IpPermission {
    let b = IpPermission::builder().ip_protocol(&r.protocol).from_port(r.from_port).to_port(r.to_port);
    match &r.source {
        Source::OwnGroup => {
            b.user_id_group_pairs(UserIdGroupPair::builder().group_id(own_group).description(&r.description).build())
        }
        Source::Group(g) => b.user_id_group_pairs(UserIdGroupPair::builder().group_id(g).build()),
        Source::Cidr(c) if c.contains(':') => {
            b.ipv6_ranges(aws_sdk_ec2::types::Ipv6Range::builder().cidr_ipv6(c).build())
        }
        Source::Cidr(c) => b.ip_ranges(IpRange::builder().cidr_ip(c).description(&r.description).build()),
    }
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_stable_per_generation_and_fit_ec2s_limit() {
        let a = client_token("prod", "manager0", 0);
        assert_eq!(a, client_token("prod", "manager0", 0));
        assert_ne!(a, client_token("prod", "manager0", 1));
        assert_ne!(a, client_token("prod", "manager1", 0));
        assert_ne!(a, client_token("staging", "manager0", 0));
        assert!(a.len() <= 64 && a.is_ascii(), "{a}");
    }

    #[test]
    fn rules_read_back_from_ec2_round_trip() {
        for r in security_group::desired_rules("198.51.100.7/32", "192.0.2.0/24") {
            let back = rules_of(&permission(&r, "sg-1"), "sg-1");
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].key(), r.key());
        }
    }
}
