//! EC2's side of `coordinator bake` ([`crate::providers::bake::Backend`]): the builder is an instance
//! launched from the base AMI (Amazon Linux 2023 from SSM by default) with the bake user-data,
//! IMDSv2 required with hop limit 1, an encrypted gp3 root volume; the image is a
//! `CreateImage` of the stopped builder, tagged with what it holds.
//!
//! An instance cannot be looked into from outside, so the builder *reports*: its bake script
//! POSTs how the bake ended, with the tail of its cloud-init output, to the bake's endpoint
//! (served by `coordinator bake`), which must be reachable from the builder at `--advertise`. The
//! builder cannot be cleaned from outside either: a successful bake starts a unit whose
//! `ExecStop` — run at the shutdown `StopInstances` causes — cleans cloud-init's state and
//! logs, empties `/etc/machine-id`, removes the Engine's identity, the bake CA and itself
//! (`flotilla_cloud_init::SEAL_SCRIPT`). Only then is the image created.
//!
//! What a bake makes carries `flotilla:bake=<scope>` (never `flotilla:cluster`, so no
//! cluster's `destroy` touches it): the builder (also `Name=flotilla-bake-builder`,
//! `flotilla:role=bake-builder`) and a security group `flotilla-bake-<scope>` with no inbound
//! rule at all (the builder only dials out). Both go on every path out of the bake, and a bake
//! starts by removing what an interrupted one of the same scope left. The image is found
//! again by its tags (on its snapshots too): `flotilla:bake-name`, `flotilla:bake-base`,
//! `flotilla:agent-version`, `flotilla:agent-sha256` (and `flotilla:bake`, `flotilla:bake-tag`,
//! `flotilla:engine-version`); a bake never deletes an image.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, InstanceStateName, ResourceType, Tag, TagSpecification};
use sha2::Digest;

use super::{Aws, AwsError, POLL, TAG_ROLE, WAIT};
use crate::poll::{Attempt, poll_until};
use crate::providers::ProviderKind;
use crate::providers::bake::{Backend, BackendError, Base, BuilderState, Facts, Image, Outcome, Recipe, Reported};

/// The bake scope (`--cluster`) of what a bake makes.
pub const TAG_BAKE: &str = "flotilla:bake";
pub const TAG_BAKE_NAME: &str = "flotilla:bake-name";
pub const TAG_BAKE_TAG: &str = "flotilla:bake-tag";
pub const TAG_BAKE_BASE: &str = "flotilla:bake-base";
pub const TAG_AGENT_VERSION: &str = "flotilla:agent-version";
pub const TAG_AGENT_SHA256: &str = "flotilla:agent-sha256";
pub const TAG_ENGINE_VERSION: &str = "flotilla:engine-version";
/// The builder's `Name` and `flotilla:role`.
pub const BUILDER_NAME: &str = "flotilla-bake-builder";
pub const BUILDER_ROLE: &str = "bake-builder";
/// How long an AMI gets to become available (EC2 copies the root volume to a snapshot).
const IMAGE_WAIT: Duration = Duration::from_secs(1800);

pub struct AwsBaker {
    aws: Aws,
    scope: String,
    advertise: IpAddr,
    instance_type: String,
    /// The builder's instance id, once launched.
    builder: Mutex<Option<String>>,
    /// The bake group and the subnet the builder goes in, once prepared.
    placement: Mutex<Option<(String, String)>>,
    /// The base AMI's root device (for the encrypted gp3 mapping).
    root_device: Mutex<String>,
}

/// The address builders reach this machine at: `--advertise` (or `coordinator.advertise`).
pub fn advertise(value: Option<&str>) -> Result<IpAddr, BackendError> {
    let v = value.map(str::trim).filter(|v| !v.is_empty()).ok_or_else(|| {
        BackendError::Usage(
            "bake --provider aws needs --advertise ADDRESS (or `advertise` under [coordinator] in flotilla.toml): \
             the IP address of this machine the builder instance can reach; the bake serves the agent and takes \
             the builder's report there"
                .into(),
        )
    })?;
    v.parse().map_err(|_| {
        BackendError::Usage(format!(
            "--advertise '{v}': bake --provider aws needs an IP address of this machine (it listens there), not a name"
        ))
    })
}

/// An AMI name is 3-128 of `A-Za-z0-9()[] ./'@_-`; the recipe tag (up to 77 characters) and
/// a `-` are appended, so the name gets at most 50.
pub fn check_name(name: &str) -> Result<(), BackendError> {
    let ok = (3..=50).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"()[] ./'@_-".contains(&b));
    if ok {
        return Ok(());
    }
    Err(BackendError::Usage(format!(
        "--name '{name}': an AMI name here is 3 to 50 of A-Z, a-z, 0-9, '(', ')', '[', ']', ' ', '.', '/', \"'\", '@', '_', '-' \
         (the AMI is named <name>-<recipe tag>)"
    )))
}

impl AwsBaker {
    pub fn new(aws: Aws, scope: &str, advertise: IpAddr, instance_type: &str) -> Self {
        Self {
            aws,
            scope: scope.to_string(),
            advertise,
            instance_type: instance_type.to_string(),
            builder: Mutex::new(None),
            placement: Mutex::new(None),
            root_device: Mutex::new("/dev/xvda".into()),
        }
    }

    pub fn group_name(&self) -> String {
        format!("flotilla-bake-{}", self.scope)
    }

    fn scope_filter(&self) -> Filter {
        Filter::builder().name(format!("tag:{TAG_BAKE}")).values(&self.scope).build()
    }

    fn tags(&self, resource: ResourceType, name: &str, extra: &[(&str, &str)]) -> TagSpecification {
        super::tag_spec(resource, name, (TAG_BAKE, &self.scope), extra)
    }

    fn builder_id(&self) -> Option<String> {
        self.builder.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Builders of this scope that are not terminated.
    async fn builders(&self) -> Result<Vec<String>, AwsError> {
        let r = self
            .aws
            .ec2
            .describe_instances()
            .filters(self.scope_filter())
            .filters(Filter::builder().name(format!("tag:{TAG_ROLE}")).values(BUILDER_ROLE).build())
            .filters(super::not_terminated())
            .send()
            .await
            .map_err(self.aws.err("ec2:DescribeInstances"))?;
        Ok(r.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect())
    }

    async fn state(&self, id: &str) -> Result<Option<InstanceStateName>, AwsError> {
        let r = self
            .aws
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(self.aws.err("ec2:DescribeInstances"))?;
        Ok(r.reservations().iter().flat_map(|r| r.instances()).find_map(|i| i.state().and_then(|s| s.name()).cloned()))
    }

    /// Deletes the scope's bake groups, waiting (bounded) while EC2 still holds them for a
    /// terminating builder.
    async fn delete_groups(&self) -> Result<(), AwsError> {
        let r = self
            .aws
            .ec2
            .describe_security_groups()
            .filters(self.scope_filter())
            .send()
            .await
            .map_err(self.aws.err("ec2:DescribeSecurityGroups"))?;
        for g in r.security_groups() {
            let Some(id) = g.group_id() else { continue };
            self.aws.delete_group(id).await?;
        }
        Ok(())
    }

    /// Waits (bounded) until the builder is `stopped`.
    async fn wait_stopped(&self, id: &str) -> Result<(), AwsError> {
        let what = format!("the builder {id} to stop (its seal runs at that shutdown)");
        let stopped = poll_until(&what, Instant::now() + WAIT, POLL, || async move {
            match self.state(id).await? {
                Some(InstanceStateName::Stopped) => Ok(Attempt::Done(())),
                Some(s @ (InstanceStateName::Terminated | InstanceStateName::ShuttingDown)) => {
                    Err(AwsError::State(format!("the builder {id} is {} instead of stopping", s.as_str())))
                }
                s => Ok(Attempt::NotYet(s.map(|s| s.as_str().to_string()).unwrap_or_else(|| "not found".into()))),
            }
        })
        .await;
        stopped.map_err(|e| e.into_failed().unwrap_or(AwsError::Timeout { what, after_s: WAIT.as_secs() }))
    }

    /// Gives an image's snapshots its tags (tagging them in CreateImage is not supported by
    /// every EC2-compatible endpoint, so it is done once they exist).
    async fn tag_snapshots(&self, snapshots: Vec<String>, tags: Vec<Tag>) -> Result<(), AwsError> {
        if snapshots.is_empty() {
            return Ok(());
        }
        self.aws
            .ec2
            .create_tags()
            .set_resources(Some(snapshots))
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(self.aws.err("ec2:CreateTags"))?;
        Ok(())
    }

    /// Waits (bounded) until the AMI is `available`; its snapshots.
    async fn wait_available(&self, ami: &str) -> Result<Vec<String>, AwsError> {
        let what = format!("the image {ami} to become available");
        let available = poll_until(&what, Instant::now() + IMAGE_WAIT, POLL, || async move {
            let r = self
                .aws
                .ec2
                .describe_images()
                .image_ids(ami)
                .send()
                .await
                .map_err(self.aws.err("ec2:DescribeImages"))?;
            let state = r.images().first().and_then(|i| i.state()).map(|s| s.as_str().to_string());
            match state.as_deref() {
                Some("available") => Ok(Attempt::Done(
                    r.images()
                        .iter()
                        .flat_map(|i| i.block_device_mappings())
                        .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
                        .collect(),
                )),
                Some(s @ ("failed" | "error" | "invalid" | "deregistered")) => {
                    Err(AwsError::State(format!("the image {ami} became {s} instead of available")))
                }
                s => Ok(Attempt::NotYet(s.unwrap_or("not found").to_string())),
            }
        })
        .await;
        available.map_err(|e| e.into_failed().unwrap_or(AwsError::Timeout { what, after_s: IMAGE_WAIT.as_secs() }))
    }
}

impl Backend for AwsBaker {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Aws
    }

    fn engine(&self) -> flotilla_cloud_init::Engine {
        flotilla_cloud_init::Engine::InstallIfAbsent(flotilla_cloud_init::OsFamily::AmazonLinux2023)
    }

    fn reports(&self) -> bool {
        true
    }

    fn check_name(&self, name: &str) -> Result<(), BackendError> {
        check_name(name)
    }

    async fn base(&self, requested: Option<&str>) -> Result<Base, BackendError> {
        let ami = self.aws.ami(requested).await?;
        *self.root_device.lock().unwrap_or_else(|p| p.into_inner()) = ami.root_device.clone();
        Ok(Base {
            reference: match requested {
                Some(r) => r.to_string(),
                None => format!("{} (Amazon Linux 2023, from SSM)", ami.id),
            },
            id: ami.id,
        })
    }

    async fn engine_version(&self, _base: &Base) -> Result<Option<String>, BackendError> {
        // An AMI says nothing about what it holds; the builder reports what it installed.
        Ok(None)
    }

    async fn find(&self, name: &str, recipe: &Recipe) -> Result<Option<Image>, BackendError> {
        let tag = |k: &str, v: &str| Filter::builder().name(format!("tag:{k}")).values(v).build();
        let mut req = self
            .aws
            .ec2
            .describe_images()
            .owners("self")
            .filters(tag(TAG_BAKE_NAME, name))
            .filters(tag(TAG_BAKE_BASE, &recipe.base))
            .filters(tag(TAG_AGENT_VERSION, &recipe.agent_version))
            .filters(tag(TAG_AGENT_SHA256, &recipe.agent_sha256))
            .filters(Filter::builder().name("state").values("available").build());
        if let Some(v) = &recipe.engine_version {
            req = req.filters(tag(TAG_ENGINE_VERSION, v));
        }
        let r = req.send().await.map_err(self.aws.err("ec2:DescribeImages"))?;
        let mut images: Vec<_> = r.images().iter().collect();
        images.sort_by(|a, b| b.creation_date().cmp(&a.creation_date()));
        Ok(images.first().and_then(|i| {
            let id = i.image_id()?.to_string();
            let engine = i
                .tags()
                .iter()
                .find(|t| t.key() == Some(TAG_ENGINE_VERSION))
                .and_then(|t| t.value())
                .unwrap_or_default()
                .to_string();
            Some(Image { reference: id.clone(), id, engine_version: engine })
        }))
    }

    async fn finish(&self, image: &Image) -> Result<(), BackendError> {
        let r = self
            .aws
            .ec2
            .describe_images()
            .image_ids(&image.id)
            .send()
            .await
            .map_err(self.aws.err("ec2:DescribeImages"))?;
        let Some(found) = r.images().first() else { return Ok(()) };
        let snapshots: Vec<String> = found
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect();
        // The image's own tags, which its capture gives its snapshots (CreateTags sets them
        // again where they are: no change).
        self.tag_snapshots(snapshots, found.tags().to_vec()).await?;
        Ok(())
    }

    async fn prepare(&self) -> Result<IpAddr, BackendError> {
        self.cleanup().await?;
        let vpc = self.aws.vpc().await?;
        let subnet = vpc.subnets.first().map(|s| s.id.clone()).unwrap_or_default();
        let r = self
            .aws
            .ec2
            .create_security_group()
            .group_name(self.group_name())
            .description(format!(
                "Flotilla bake builder ({}): no inbound rule, the builder only dials out; owned by Flotilla, removed when the bake ends",
                self.scope
            ))
            .vpc_id(&vpc.id)
            .tag_specifications(self.tags(ResourceType::SecurityGroup, &self.group_name(), &[]))
            .send()
            .await
            .map_err(|e| match AwsError::from_sdk("ec2:CreateSecurityGroup", &self.aws.endpoint, e) {
                AwsError::Api { code, .. } if code == "InvalidGroup.Duplicate" => AwsError::Setup {
                    what: format!("security group {}", self.group_name()),
                    detail: format!(
                        "exists in {} but was not made by a Flotilla bake of scope '{}' (no {TAG_BAKE} tag); \
                         Flotilla never uses a group it does not own: rename that group or bake under another --cluster",
                        vpc.id, self.scope
                    ),
                },
                other => other,
            })?;
        crate::failpoint!("aws.bake.security_group.after");
        let group = r.group_id().unwrap_or_default().to_string();
        *self.placement.lock().unwrap_or_else(|p| p.into_inner()) = Some((group, subnet));
        Ok(self.advertise)
    }

    async fn launch(&self, base: &Base, user_data: &str) -> Result<String, BackendError> {
        let (group, subnet) = self
            .placement
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| AwsError::State("launch before prepare".into()))?;
        let root = self.root_device.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // The user-data holds this bake's own CA and nonce: a retried call is the same launch.
        let digest = sha2::Sha256::digest(format!("flotilla-bake/{}/{user_data}", self.scope).as_bytes());
        let token = format!("flotilla-bake-{}", &hex::encode(digest)[..40]);
        let mut req = self
            .aws
            .hardened_run(&base.id, &root, &self.instance_type, &group, user_data)
            .client_token(token)
            .tag_specifications(self.tags(ResourceType::Instance, BUILDER_NAME, &[(TAG_ROLE, BUILDER_ROLE)]))
            .tag_specifications(self.tags(ResourceType::Volume, BUILDER_NAME, &[]));
        if !subnet.is_empty() {
            req = req.subnet_id(&subnet);
        }
        let r = req.send().await.map_err(self.aws.err("ec2:RunInstances"))?;
        let id = r
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or_else(|| AwsError::State("RunInstances returned no instance".into()))?
            .to_string();
        *self.builder.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        Ok(id)
    }

    async fn poll(&self, reported: Option<&Reported>) -> Result<BuilderState, BackendError> {
        if let Some(r) = reported {
            return Ok(match &r.outcome {
                Outcome::Complete { engine_version } => {
                    BuilderState::Complete { engine_version: engine_version.clone() }
                }
                Outcome::Failed(reason) => BuilderState::Failed(reason.clone()),
            });
        }
        let Some(id) = self.builder_id() else {
            return Ok(BuilderState::Running(None));
        };
        Ok(match self.state(&id).await? {
            None | Some(InstanceStateName::Pending | InstanceStateName::Running) => BuilderState::Running(None),
            Some(s) => BuilderState::Failed(format!("the builder instance {id} is {} and never reported", s.as_str())),
        })
    }

    async fn output(&self, reported: Option<&Reported>) -> String {
        match reported {
            Some(r) if !r.output.trim().is_empty() => r.output.clone(),
            _ => format!(
                "(the builder {} sent no report, and an EC2 instance cannot be read from outside: \
                 `aws ec2 get-console-output --instance-id {0}` shows its console while it exists; \
                 check that it reaches {}, where the bake listens)",
                self.builder_id().unwrap_or_else(|| "(not launched)".into()),
                self.advertise
            ),
        }
    }

    async fn capture(&self, facts: &Facts) -> Result<Image, BackendError> {
        let id = self.builder_id().ok_or_else(|| AwsError::State("capture before launch".into()))?;
        self.aws.ec2.stop_instances().instance_ids(&id).send().await.map_err(self.aws.err("ec2:StopInstances"))?;
        self.wait_stopped(&id).await?;
        let name = format!("{}-{}", facts.name, facts.tag);
        let tags: [(&str, &str); 7] = [
            (TAG_BAKE, &self.scope),
            (TAG_BAKE_NAME, &facts.name),
            (TAG_BAKE_TAG, &facts.tag),
            (TAG_BAKE_BASE, &facts.base),
            (TAG_AGENT_VERSION, &facts.agent_version),
            (TAG_AGENT_SHA256, &facts.agent_sha256),
            (TAG_ENGINE_VERSION, &facts.engine_version),
        ];
        let tag_list: Vec<Tag> = std::iter::once(("Name", name.as_str()))
            .chain(tags)
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let r = self
            .aws
            .ec2
            .create_image()
            .instance_id(&id)
            .name(&name)
            .description(format!(
                "Flotilla baked host: agent {} (sha256 {}), Docker Engine {}, from {}",
                facts.agent_version, facts.agent_sha256, facts.engine_version, facts.base
            ))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Image)
                    .set_tags(Some(tag_list.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| match AwsError::from_sdk("ec2:CreateImage", &self.aws.endpoint, e) {
                AwsError::Api { code, message, .. } if code == "InvalidAMIName.Duplicate" => AwsError::Setup {
                    what: format!("AMI name {name}"),
                    detail: format!(
                        "is taken ({message}) by an image this bake does not reuse (not available yet, or tagged otherwise): \
                         wait for it and bake again, or deregister it"
                    ),
                },
                other => other,
            })?;
        crate::failpoint!("aws.bake.create_image.after");
        let ami = r.image_id().ok_or_else(|| AwsError::State("CreateImage returned no image id".into()))?.to_string();
        let snapshots = self.wait_available(&ami).await?;
        self.tag_snapshots(snapshots, tag_list).await?;
        Ok(Image { reference: ami.clone(), id: ami, engine_version: facts.engine_version.clone() })
    }

    async fn cleanup(&self) -> Result<(), BackendError> {
        let mut ids = self.builders().await?;
        if let Some(id) = self.builder_id()
            && !ids.contains(&id)
        {
            ids.push(id);
        }
        self.aws.terminate_ids(&ids).await?;
        self.delete_groups().await?;
        *self.builder.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ami_names_and_the_advertise_address_are_checked() {
        for ok in ["flotilla/baked-host", "web (prod) [v2]", "a.b_c@d'e"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ab", "x#y", "tab\there", &"n".repeat(51)] {
            let e = check_name(bad).expect_err(bad);
            assert!(e.to_string().contains("--name"), "{e}");
        }
        assert_eq!(advertise(Some(" 10.0.0.5 ")).expect("ip").to_string(), "10.0.0.5");
        let missing = advertise(None).expect_err("missing").to_string();
        assert!(missing.contains("--advertise") && missing.contains("[coordinator]"), "{missing}");
        assert!(advertise(Some("coord.example.com")).expect_err("a name").to_string().contains("IP address"));
    }
}
