//! The cluster's security group: created by Flotilla, owned by the cluster (tagged), never one
//! of the user's. Inbound, and nothing else:
//!
//! | port(s)            | proto   | from                 | for                          |
//! |--------------------|---------|----------------------|------------------------------|
//! | 2377               | tcp     | the group itself     | Swarm cluster management     |
//! | 7946               | tcp+udp | the group itself     | Swarm node gossip            |
//! | 4789               | udp     | the group itself     | Swarm overlay (VXLAN)        |
//! | 8300–8302          | tcp+udp | the group itself     | Consul RPC, LAN/WAN gossip   |
//! | 8500               | tcp     | the group itself     | Consul HTTP API              |
//! | 2376               | tcp     | `admin_cidr` only    | Engine API, mutual TLS       |
//! | 22                 | tcp     | `ssh_cidr`, if given | SSH                          |
//!
//! Agents dial out to the coordinator, so no inbound rule exists for it. `0.0.0.0/0` appears
//! only when the operator passes it explicitly as `admin_cidr` or `ssh_cidr`. Egress stays
//! EC2's default (hosts reach the coordinator, package mirrors and registries).
//!
//! The rule set and its diff are pure ([`desired_rules`], [`diff`]); the EC2 side finds,
//! creates, reconciles and deletes the group.

use std::collections::BTreeSet;
use std::time::Instant;

use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, ResourceType, UserIdGroupPair};

use super::{Aws, AwsError, POLL, TAG_CLUSTER, Vpc, WAIT};
use crate::poll::{Attempt, PollError, poll_until};

/// One inbound rule: a protocol, a port range and a source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Rule {
    pub protocol: String,
    pub from_port: i32,
    pub to_port: i32,
    pub source: Source,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The cluster's own group (instances in it).
    OwnGroup,
    /// Another security group (never one Flotilla adds; revoked when found).
    Group(String),
    Cidr(String),
}

impl Rule {
    /// The rule's identity without its description (EC2 compares rules this way).
    pub fn key(&self) -> (String, i32, i32, Source) {
        (self.protocol.clone(), self.from_port, self.to_port, self.source.clone())
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports = if self.from_port == self.to_port {
            self.from_port.to_string()
        } else {
            format!("{}-{}", self.from_port, self.to_port)
        };
        let src = match &self.source {
            Source::OwnGroup => "the cluster's group".to_string(),
            Source::Group(g) => format!("group {g}"),
            Source::Cidr(c) => c.clone(),
        };
        write!(f, "{ports}/{} from {src} ({})", self.protocol, self.description)
    }
}

/// The exact inbound rule set for a cluster (pure; unit-tested).
pub fn desired_rules(admin_cidr: &str, ssh_cidr: &str) -> Vec<Rule> {
    let own = |protocol: &str, from: i32, to: i32, what: &str| Rule {
        protocol: protocol.into(),
        from_port: from,
        to_port: to,
        source: Source::OwnGroup,
        description: what.into(),
    };
    let mut rules = vec![
        own("tcp", 2377, 2377, "swarm cluster management"),
        own("tcp", 7946, 7946, "swarm node gossip"),
        own("udp", 7946, 7946, "swarm node gossip"),
        own("udp", 4789, 4789, "swarm overlay network"),
        own("tcp", 8300, 8302, "consul rpc and gossip"),
        own("udp", 8301, 8302, "consul gossip"),
        own("tcp", 8500, 8500, "consul http api"),
    ];
    if !admin_cidr.is_empty() {
        rules.push(Rule {
            protocol: "tcp".into(),
            from_port: 2376,
            to_port: 2376,
            source: Source::Cidr(admin_cidr.to_string()),
            description: "docker engine api, mutual tls (admin)".into(),
        });
    }
    if !ssh_cidr.is_empty() {
        rules.push(Rule {
            protocol: "tcp".into(),
            from_port: 22,
            to_port: 22,
            source: Source::Cidr(ssh_cidr.to_string()),
            description: "ssh (operator)".into(),
        });
    }
    rules
}

/// What to change to get from `current` to `desired`: (to add, to revoke).
pub fn diff(current: &[Rule], desired: &[Rule]) -> (Vec<Rule>, Vec<Rule>) {
    let have: BTreeSet<_> = current.iter().map(Rule::key).collect();
    let want: BTreeSet<_> = desired.iter().map(Rule::key).collect();
    let add = desired.iter().filter(|r| !have.contains(&r.key())).cloned().collect();
    let revoke = current.iter().filter(|r| !want.contains(&r.key())).cloned().collect();
    (add, revoke)
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

impl Aws {
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
    /// [`desired_rules`].
    pub async fn ensure_security_group(&self, vpc: &Vpc) -> Result<GroupChange, AwsError> {
        let desired = desired_rules(&self.settings.admin_cidr, &self.settings.ssh_cidr);
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
                crate::failpoint!("aws.security_group.create.after");
                let id = r.group_id().unwrap_or_default().to_string();
                (Group { id, rules: vec![] }, true)
            }
        };
        let (add, revoke) = diff(&group.rules, &desired);
        if !add.is_empty() {
            let mut req = self.ec2.authorize_security_group_ingress().group_id(&group.id);
            for r in &add {
                req = req.ip_permissions(permission(r, &group.id));
            }
            req.send().await.map_err(self.err("ec2:AuthorizeSecurityGroupIngress"))?;
            crate::failpoint!("aws.security_group.authorize.after");
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

    /// Deletes the security group `id`, retrying (bounded) while EC2 still holds it for an
    /// instance being terminated; one that is already gone is fine.
    pub(super) async fn delete_group(&self, id: &str) -> Result<(), AwsError> {
        crate::failpoint!("aws.security_group.delete.before");
        // On a time-out the answer is EC2's own last refusal, as it was before the wait.
        let last: std::cell::RefCell<Option<AwsError>> = std::cell::RefCell::new(None);
        let what = format!("security group {id} to be released");
        let deleted = poll_until(&what, Instant::now() + WAIT, POLL, || {
            let last = &last;
            async move {
                let Err(e) = self.ec2.delete_security_group().group_id(id).send().await else {
                    return Ok(Attempt::Done(()));
                };
                let e = AwsError::from_sdk("ec2:DeleteSecurityGroup", &self.endpoint, e);
                match e.code() {
                    Some("InvalidGroup.NotFound") => Ok(Attempt::Done(())),
                    Some("DependencyViolation") => {
                        let seen = e.to_string();
                        *last.borrow_mut() = Some(e);
                        Ok(Attempt::NotYet(seen))
                    }
                    _ => Err(e),
                }
            }
        })
        .await;
        match deleted {
            Ok(()) => Ok(()),
            Err(PollError::Failed(e)) => Err(e),
            Err(PollError::TimedOut { .. }) => {
                Err(last.into_inner().unwrap_or(AwsError::Timeout { what, after_s: WAIT.as_secs() }))
            }
        }
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
    fn the_rule_set_is_least_privilege() {
        let rules = desired_rules("198.51.100.7/32", "");
        assert!(rules.iter().all(|r| r.source != Source::Cidr("0.0.0.0/0".into())));
        assert!(!rules.iter().any(|r| r.from_port == 22), "no ssh rule without ssh_cidr");
        let engine: Vec<_> = rules.iter().filter(|r| r.from_port == 2376).collect();
        assert_eq!(engine.len(), 1);
        assert_eq!(engine[0].source, Source::Cidr("198.51.100.7/32".into()));
        // Everything but the Engine API is open only to the group itself.
        assert!(rules.iter().filter(|r| r.from_port != 2376).all(|r| r.source == Source::OwnGroup));
        let ports: BTreeSet<(String, i32, i32)> =
            rules.iter().map(|r| (r.protocol.clone(), r.from_port, r.to_port)).collect();
        for p in [
            ("tcp", 2377, 2377),
            ("tcp", 7946, 7946),
            ("udp", 7946, 7946),
            ("udp", 4789, 4789),
            ("tcp", 8300, 8302),
            ("udp", 8301, 8302),
            ("tcp", 8500, 8500),
        ] {
            assert!(ports.contains(&(p.0.to_string(), p.1, p.2)), "{p:?} missing");
        }
        let with_ssh = desired_rules("198.51.100.7/32", "192.0.2.0/24");
        assert!(with_ssh.iter().any(|r| r.from_port == 22 && r.source == Source::Cidr("192.0.2.0/24".into())));
    }

    #[test]
    fn diff_adds_the_missing_and_revokes_the_foreign() {
        let want = desired_rules("10.0.0.1/32", "");
        let mut have = want[1..].to_vec();
        have.push(Rule {
            protocol: "tcp".into(),
            from_port: 22,
            to_port: 22,
            source: Source::Cidr("0.0.0.0/0".into()),
            description: String::new(),
        });
        let (add, revoke) = diff(&have, &want);
        assert_eq!(add, vec![want[0].clone()]);
        assert_eq!(revoke.len(), 1);
        assert_eq!(revoke[0].from_port, 22);
    }

    #[test]
    fn rules_read_back_from_ec2_round_trip() {
        for r in desired_rules("198.51.100.7/32", "192.0.2.0/24") {
            let back = rules_of(&permission(&r, "sg-1"), "sg-1");
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].key(), r.key());
        }
    }
}
