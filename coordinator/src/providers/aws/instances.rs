//! Where a host is launched on EC2: one RunInstances per host with the cluster's tags, the
//! rendered user-data, IMDSv2 required (hop limit 1) and an encrypted gp3 root volume, placed
//! round-robin over the subnets and moved to the next one on a capacity error. Every call
//! carries a ClientToken derived from cluster, host and launch generation (kept under
//! `<cluster state>/aws`, and checked against the tokens EC2 holds for the host's instances:
//! a launch an interrupted run sent but did not count is found there), so a retried call
//! never makes a second instance and a replacement never reuses its predecessor's token.
//! Hosts are found by tag; stop, start and terminate act on what is found.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, InstanceAttributeName, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceStateName, InstanceType, ResourceType, VolumeType,
};
use base64::Engine as _;
use sha2::Digest;

use super::{Ami, Aws, AwsError, GroupChange, POLL, Subnet, TAG_HOST, TAG_ROLE, Vpc, WAIT, errors};
use crate::poll::{Attempt, PollError, poll_until};
use crate::providers::{Host, HostState, LaunchSpec};

/// Everything a launch needs besides the host's own spec.
#[derive(Clone, Debug)]
pub struct LaunchContext {
    pub vpc: Vpc,
    pub group_id: String,
    pub ami: Ami,
}

impl Aws {
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
        let mut out: Vec<Host> = self.instances(not_terminated()).await?.into_iter().map(|(h, _)| h).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The cluster's instances that pass `filter`, each with the ClientToken it was launched
    /// with.
    async fn instances(&self, filter: Filter) -> Result<Vec<(Host, String)>, AwsError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let r = self
                .ec2
                .describe_instances()
                .filters(self.cluster_filter())
                .filters(filter.clone())
                .set_next_token(next.clone())
                .send()
                .await
                .map_err(self.err("ec2:DescribeInstances"))?;
            for res in r.reservations() {
                for i in res.instances() {
                    out.push((host_of(i), i.client_token().unwrap_or_default().to_string()));
                }
            }
            next = r.next_token().map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// The generation of `name`'s next launch, and the instance of the recorded one when a run
    /// sent it but was interrupted before counting it: EC2 keeps every instance's ClientToken
    /// (terminated ones are listed for about an hour). Live, that instance is the launch,
    /// done; gone (the lost host a heal replaces), its token is spent — a RunInstances with it
    /// would be answered with that old instance — and the next generation's is used.
    async fn next_launch(&self, name: &str) -> Result<(u64, Option<Host>), AwsError> {
        let mut generation = self.generation(name);
        let of_host = Filter::builder().name(format!("tag:{TAG_HOST}")).values(name).build();
        let launches = self.instances(of_host).await?;
        loop {
            let token = client_token(&self.cluster, name, generation);
            let made =
                launches.iter().find(|(_, t)| t.strip_prefix(token.as_str()).is_some_and(|k| k.starts_with('-')));
            match made {
                Some((h, _)) if matches!(h.state, HostState::Running | HostState::Pending) => {
                    return Ok((generation, Some(h.clone())));
                }
                Some(_) => generation += 1,
                None => return Ok((generation, None)),
            }
        }
    }

    pub async fn host(&self, name: &str) -> Result<Host, AwsError> {
        self.describe().await?.into_iter().find(|h| h.name == name).ok_or_else(|| AwsError::NoHost(name.to_string()))
    }

    /// Launches one host. `index` is its position among hosts of its role (placement:
    /// subnet `index mod n`, then the next ones on a capacity error).
    pub async fn launch(&self, spec: &LaunchSpec, index: usize, ctx: &LaunchContext) -> Result<Host, AwsError> {
        let (generation, made) = self.next_launch(&spec.name).await?;
        if let Some(host) = made {
            self.set_generation(&spec.name, generation + 1)?;
            return Ok(host);
        }
        let token = client_token(&self.cluster, &spec.name, generation);
        // A pinned address goes to the one subnet that holds it; otherwise round-robin.
        let subnets: Vec<&Subnet> = match spec.private_ip {
            Some(ip) => vec![ctx.vpc.subnets.iter().find(|s| s.holds(ip)).ok_or_else(|| AwsError::AddressOutside {
                host: spec.name.clone(),
                ip,
                subnets: ctx.vpc.subnets.iter().map(|s| format!("{} {}", s.id, s.cidr)).collect::<Vec<_>>().join(", "),
            })?],
            None => {
                let n = ctx.vpc.subnets.len();
                (0..n).map(|k| &ctx.vpc.subnets[(index + k) % n]).collect()
            }
        };
        let mut tried = Vec::new();
        let mut last = String::new();
        for (k, subnet) in subnets.into_iter().enumerate() {
            tried.push(format!("{} ({})", subnet.id, subnet.zone));
            let req = self
                .hardened_run(&ctx.ami.id, &ctx.ami.root_device, &spec.instance_type, &ctx.group_id, &spec.user_data)
                .subnet_id(&subnet.id)
                .set_private_ip_address(spec.private_ip.map(|ip| ip.to_string()))
                .client_token(format!("{token}-{k}"))
                .tag_specifications(self.tags(
                    ResourceType::Instance,
                    &spec.name,
                    &[(TAG_ROLE, &spec.role), (TAG_HOST, &spec.name)],
                ))
                .tag_specifications(self.tags(ResourceType::Volume, &spec.name, &[(TAG_HOST, &spec.name)]));
            match req.send().await {
                Ok(r) => {
                    // Launched, its generation not yet counted: a re-run sends the same
                    // ClientToken, and EC2 answers with this instance instead of a second one.
                    crate::failpoint!("aws.run_instances.after");
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
                        image: i.image_id().unwrap_or(&ctx.ami.id).to_string(),
                    });
                }
                Err(e) => {
                    let e = AwsError::from_sdk("ec2:RunInstances", &self.endpoint, e);
                    match e.code() {
                        Some(c) if errors::CAPACITY_CODES.contains(&c) => {
                            last = e.to_string();
                            continue;
                        }
                        Some("InvalidIPAddress.InUse") => {
                            return Err(AwsError::AddressTaken {
                                host: spec.name.clone(),
                                ip: spec.private_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                                message: e.to_string(),
                            });
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

    /// Terminates the instances `ids` and waits (bounded) until EC2 reports them terminated.
    pub(super) async fn terminate_ids(&self, ids: &[String]) -> Result<(), AwsError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.ec2
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(self.err("ec2:TerminateInstances"))?;
        crate::failpoint!("aws.terminate.after");
        let terminated = poll_until("instances to terminate", Instant::now() + WAIT, POLL, || async move {
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
            Ok(if left.is_empty() { Attempt::Done(()) } else { Attempt::NotYet(left.join(", ")) })
        })
        .await;
        match terminated {
            Ok(()) => Ok(()),
            Err(PollError::Failed(e)) => Err(e),
            Err(PollError::TimedOut { last, .. }) => {
                Err(AwsError::Timeout { what: format!("instances {last} to terminate"), after_s: WAIT.as_secs() })
            }
        }
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

/// A host as EC2 reports its instance (its name: the host tag, else `Name`).
fn host_of(i: &aws_sdk_ec2::types::Instance) -> Host {
    let tag =
        |k: &str| i.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).unwrap_or_default().to_string();
    let name = match tag(TAG_HOST) {
        n if !n.is_empty() => n,
        _ => tag("Name"),
    };
    Host {
        name,
        instance_id: i.instance_id().unwrap_or_default().to_string(),
        role: tag(TAG_ROLE),
        state: i.state().and_then(|s| s.name()).map(state_of).unwrap_or(HostState::Other("unknown".into())),
        private_ip: i.private_ip_address().and_then(|a| a.parse::<IpAddr>().ok()),
        image: i.image_id().unwrap_or_default().to_string(),
    }
}

/// Instances in any state but `terminated` (EC2 lists terminated ones for about an hour).
pub fn not_terminated() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .set_values(Some(["pending", "running", "stopping", "stopped", "shutting-down"].map(String::from).to_vec()))
        .build()
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
}
