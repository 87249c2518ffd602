//! `coordinator iam-policy`: the least IAM policy the AWS provider needs, rendered for one
//! cluster (`--cluster`, else the name in ./flotilla.toml) — issue 14.
//!
//! - **Reads** (`Describe*`) are on `*`: EC2 has no resource-level control for them. Reading
//!   an instance's user-data (`DescribeInstanceAttribute`) is not a plain read: only the
//!   cluster's own instances.
//! - **Creation** requires the owner tag with this cluster's name — `flotilla:cluster=<cluster>`
//!   on the cluster's group, hosts and volumes, `flotilla:bake=<cluster>` on a bake's group,
//!   builder, volume and image — and allows no tag key Flotilla does not write (`aws:TagKeys`).
//!   `ec2:CreateTags` is allowed only as part of those creations (`ec2:CreateAction`), with one
//!   exception: a bake tags its image's snapshots once `CreateImage` has made them, so tagging
//!   an existing snapshot with the bake's keys is allowed — and no statement grants anything
//!   on a snapshot's tags, so that unlocks nothing.
//! - **Changes** to an existing resource (its group rules, start, stop, terminate, delete, an
//!   image of it) require its owner tag to equal this cluster's name exactly; a cluster's host
//!   can never be imaged (only a bake's builder can).
//! - **Launches** use only the cluster's own security group (by its tag; a bake's builder only
//!   the bake's). Subnets, the VPC, the AMI and the key pair are the operator's, chosen at
//!   deploy time (default VPC or `aws.subnet_ids`) while this policy knows only the cluster's
//!   name: any of the account's (narrow those ARNs by hand to pin them). The network interface
//!   is the one the launch makes (EC2 offers no tag condition to tell it from an existing
//!   one). No `iam:PassRole`, so no instance profile can be attached.
//!
//! [`CALLS`] lists every AWS call the provider makes and what each touches; the unit tests
//! check that the source makes no other call, that the policy allows every one of them
//! ([`check::allows`]) and nothing else of note ([`check::check`]).

pub mod check;

use super::bake::{
    TAG_AGENT_SHA256, TAG_AGENT_VERSION, TAG_BAKE, TAG_BAKE_BASE, TAG_BAKE_NAME, TAG_BAKE_TAG, TAG_ENGINE_VERSION,
};
use super::{AL2023_PARAMETER, TAG_CLUSTER, TAG_HOST, TAG_ROLE};
use serde_json::{Value, json};

/// Whose resources a call works on: the owner tag they carry (its value is the cluster's name;
/// a bake's scope is its `--cluster`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Cluster,
    Bake,
}

impl Owner {
    pub const ALL: [Owner; 2] = [Owner::Cluster, Owner::Bake];

    pub fn tag(self) -> &'static str {
        match self {
            Owner::Cluster => TAG_CLUSTER,
            Owner::Bake => TAG_BAKE,
        }
    }
}

/// What one resource (by ARN resource type) of a call is to Flotilla.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// The action has no resource-level control (`Describe*`): `*`.
    Any,
    /// Made by the call and tagged in it with these keys (the owner's among them).
    Made(&'static [&'static str]),
    /// Made by the call and not tagged: a launch's network interface, CreateImage's snapshots.
    MadeUntagged,
    /// Made by Flotilla earlier and found by its owner tag: changed, read or removed.
    Owned,
    /// The operator's or public, used as is: the VPC, subnets, the AMI, the key pair, the
    /// AMI's SSM parameter.
    Borrowed,
    /// Made untagged by an earlier call, then tagged with these keys by this one.
    Retagged(&'static [&'static str]),
}

/// One AWS API call the provider makes.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    /// `service:Action`, as IAM names it.
    pub action: &'static str,
    pub owner: Owner,
    pub why: &'static str,
    /// (ARN resource type, what it is to Flotilla); `("*", Use::Any)` for no resource-level control.
    pub resources: &'static [(&'static str, Use)],
}

const CLUSTER_GROUP_KEYS: &[&str] = &["Name", TAG_CLUSTER];
const HOST_KEYS: &[&str] = &["Name", TAG_CLUSTER, TAG_ROLE, TAG_HOST];
const HOST_VOLUME_KEYS: &[&str] = &["Name", TAG_CLUSTER, TAG_HOST];
const BAKE_GROUP_KEYS: &[&str] = &["Name", TAG_BAKE];
const BUILDER_KEYS: &[&str] = &["Name", TAG_BAKE, TAG_ROLE];
const BUILDER_VOLUME_KEYS: &[&str] = &["Name", TAG_BAKE];
/// A baked image's tags (its snapshots get the same).
const IMAGE_KEYS: &[&str] = &[
    "Name",
    TAG_BAKE,
    TAG_BAKE_NAME,
    TAG_BAKE_TAG,
    TAG_BAKE_BASE,
    TAG_AGENT_VERSION,
    TAG_AGENT_SHA256,
    TAG_ENGINE_VERSION,
];

const ANY: &[(&str, Use)] = &[("*", Use::Any)];
const OWNED_INSTANCE: &[(&str, Use)] = &[("instance", Use::Owned)];
const OWNED_GROUP: &[(&str, Use)] = &[("security-group", Use::Owned)];

const fn call(
    action: &'static str,
    owner: Owner,
    why: &'static str,
    resources: &'static [(&'static str, Use)],
) -> Call {
    Call { action, owner, why, resources }
}

/// Every AWS API call the provider makes (`providers/aws.rs`, `providers/aws/bake.rs`), with
/// what it touches. A unit test fails when the source calls an action not listed here.
pub const CALLS: &[Call] = &[
    call("ec2:DescribeVpcs", Owner::Cluster, "find the default (or given) VPC", ANY),
    call("ec2:DescribeSubnets", Owner::Cluster, "spread hosts over availability zones", ANY),
    call("ec2:DescribeSecurityGroups", Owner::Cluster, "find the cluster's (and a bake's) group", ANY),
    call("ec2:DescribeInstances", Owner::Cluster, "find the cluster's hosts (and a bake's builder) by tag", ANY),
    call("ec2:DescribeInstanceTypes", Owner::Cluster, "refuse a non-x86_64 instance type", ANY),
    call("ec2:DescribeImages", Owner::Cluster, "check the AMI; find a baked image", ANY),
    call("ec2:DescribeInstanceAttribute", Owner::Cluster, "read back a host's user-data", OWNED_INSTANCE),
    call("ssm:GetParameter", Owner::Cluster, "the current Amazon Linux 2023 AMI id", &[("parameter", Use::Borrowed)]),
    call(
        "ec2:CreateSecurityGroup",
        Owner::Cluster,
        "the cluster's own group",
        &[("security-group", Use::Made(CLUSTER_GROUP_KEYS)), ("vpc", Use::Borrowed)],
    ),
    call("ec2:AuthorizeSecurityGroupIngress", Owner::Cluster, "the group's rules", OWNED_GROUP),
    call("ec2:RevokeSecurityGroupIngress", Owner::Cluster, "remove rules Flotilla did not ask for", OWNED_GROUP),
    call(
        "ec2:RunInstances",
        Owner::Cluster,
        "launch hosts",
        &[
            ("instance", Use::Made(HOST_KEYS)),
            ("volume", Use::Made(HOST_VOLUME_KEYS)),
            ("network-interface", Use::MadeUntagged),
            ("security-group", Use::Owned),
            ("subnet", Use::Borrowed),
            ("image", Use::Borrowed),
            ("key-pair", Use::Borrowed),
        ],
    ),
    call("ec2:StartInstances", Owner::Cluster, "failover drill (host mode), restart", OWNED_INSTANCE),
    call("ec2:StopInstances", Owner::Cluster, "failover drill (host mode)", OWNED_INSTANCE),
    call("ec2:TerminateInstances", Owner::Cluster, "scale down, destroy", OWNED_INSTANCE),
    call("ec2:DeleteSecurityGroup", Owner::Cluster, "destroy", OWNED_GROUP),
    call(
        "ec2:CreateSecurityGroup",
        Owner::Bake,
        "the bake's group (no inbound rule)",
        &[("security-group", Use::Made(BAKE_GROUP_KEYS)), ("vpc", Use::Borrowed)],
    ),
    call(
        "ec2:RunInstances",
        Owner::Bake,
        "launch the bake's builder",
        &[
            ("instance", Use::Made(BUILDER_KEYS)),
            ("volume", Use::Made(BUILDER_VOLUME_KEYS)),
            ("network-interface", Use::MadeUntagged),
            ("security-group", Use::Owned),
            ("subnet", Use::Borrowed),
            ("image", Use::Borrowed),
            ("key-pair", Use::Borrowed),
        ],
    ),
    call("ec2:StopInstances", Owner::Bake, "stop the builder (its seal runs then)", OWNED_INSTANCE),
    call(
        "ec2:CreateImage",
        Owner::Bake,
        "the baked image, of the stopped builder",
        &[("instance", Use::Owned), ("image", Use::Made(IMAGE_KEYS)), ("snapshot", Use::MadeUntagged)],
    ),
    call(
        "ec2:CreateTags",
        Owner::Bake,
        "tag the image's snapshots once they exist",
        &[("snapshot", Use::Retagged(IMAGE_KEYS))],
    ),
    call("ec2:TerminateInstances", Owner::Bake, "remove the builder", OWNED_INSTANCE),
    call("ec2:DeleteSecurityGroup", Owner::Bake, "remove the bake's group", OWNED_GROUP),
];

/// The actions whose tagging happens inside the call that creates the resource.
pub fn creating_actions() -> Vec<&'static str> {
    let mut out: Vec<&str> = CALLS
        .iter()
        .filter(|c| c.resources.iter().any(|(_, u)| matches!(u, Use::Made(_))))
        .map(|c| c.action.trim_start_matches("ec2:"))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Every tag key `owner`'s resources are made or tagged with.
pub fn tag_keys(owner: Owner) -> Vec<&'static str> {
    let mut out: Vec<&str> = CALLS
        .iter()
        .filter(|c| c.owner == owner)
        .flat_map(|c| c.resources.iter())
        .flat_map(|(_, u)| match u {
            Use::Made(k) | Use::Retagged(k) => k.to_vec(),
            _ => vec![],
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The ARN pattern of every EC2 resource of a type (images and snapshots have no account).
fn ec2(kind: &str) -> String {
    match kind {
        "image" | "snapshot" => format!("arn:aws:ec2:*::{kind}/*"),
        _ => format!("arn:aws:ec2:*:*:{kind}/*"),
    }
}

fn statement(sid: &str, actions: &[&str], kinds: &[&str], condition: Option<Value>) -> Value {
    let mut s = json!({
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions,
        "Resource": kinds.iter().map(|k| ec2(k)).collect::<Vec<_>>(),
    });
    if let Some(c) = condition {
        s["Condition"] = c;
    }
    s
}

/// Existing resources: only those whose owner tag is exactly `cluster`.
fn owned(owner: Owner, cluster: &str) -> Option<Value> {
    Some(json!({ "StringEquals": { format!("aws:ResourceTag/{}", owner.tag()): cluster } }))
}

/// New resources: tagged with the owner tag equal to `cluster`, and with no other keys than `keys`.
fn made(owner: Owner, cluster: &str, keys: &[&str]) -> Option<Value> {
    Some(json!({
        "StringEquals": { format!("aws:RequestTag/{}", owner.tag()): cluster },
        "ForAllValues:StringEquals": { "aws:TagKeys": keys },
    }))
}

/// `ec2:CreateTags` only inside `actions` (which create what they tag), with `owner`'s tag
/// equal to `cluster` and only `owner`'s keys.
fn tag_on_create(owner: Owner, cluster: &str, actions: &[&str]) -> Option<Value> {
    Some(json!({
        "StringEquals": {
            "ec2:CreateAction": actions,
            format!("aws:RequestTag/{}", owner.tag()): cluster,
        },
        "ForAllValues:StringEquals": { "aws:TagKeys": tag_keys(owner) },
    }))
}

/// The policy document for `cluster` (JSON).
pub fn policy(cluster: &str) -> Value {
    use Owner::{Bake, Cluster};
    let describe = [
        "ec2:DescribeVpcs",
        "ec2:DescribeSubnets",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeInstances",
        "ec2:DescribeInstanceTypes",
        "ec2:DescribeImages",
    ];
    let parameter = format!("arn:aws:ssm:*::parameter{AL2023_PARAMETER}");
    let change_group =
        ["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress", "ec2:DeleteSecurityGroup"];
    let statements = vec![
        json!({ "Sid": "FlotillaDescribe", "Effect": "Allow", "Action": describe, "Resource": "*" }),
        json!({ "Sid": "FlotillaAmiParameter", "Effect": "Allow", "Action": ["ssm:GetParameter"],
                "Resource": parameter }),
        statement("FlotillaReadUserData", &["ec2:DescribeInstanceAttribute"], &["instance"], owned(Cluster, cluster)),
        // The cluster's group, hosts and volumes: made tagged, changed only by that tag.
        statement("FlotillaCreateGroup", CREATE_GROUP, &["security-group"], made(Cluster, cluster, CLUSTER_GROUP_KEYS)),
        statement("FlotillaGroupInVpc", CREATE_GROUP, &["vpc"], None),
        statement("FlotillaLaunchHosts", RUN, &["instance", "volume"], made(Cluster, cluster, HOST_KEYS)),
        statement("FlotillaLaunchInGroup", RUN, &["security-group"], owned(Cluster, cluster)),
        statement("FlotillaLaunchFrom", RUN, &["subnet", "network-interface", "image", "key-pair"], None),
        statement(
            "FlotillaTagOnCreate",
            CREATE_TAGS,
            &["instance", "volume", "security-group"],
            tag_on_create(Cluster, cluster, &["RunInstances", "CreateSecurityGroup"]),
        ),
        statement("FlotillaChangeGroup", &change_group, &["security-group"], owned(Cluster, cluster)),
        statement(
            "FlotillaChangeHosts",
            &["ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"],
            &["instance"],
            owned(Cluster, cluster),
        ),
        // `coordinator bake --provider aws`: its group, builder and image carry
        // `flotilla:bake=<cluster>`, never a cluster's tag.
        statement("FlotillaBakeCreateGroup", CREATE_GROUP, &["security-group"], made(Bake, cluster, BAKE_GROUP_KEYS)),
        statement("FlotillaBakeLaunchBuilder", RUN, &["instance", "volume"], made(Bake, cluster, BUILDER_KEYS)),
        statement("FlotillaBakeLaunchInGroup", RUN, &["security-group"], owned(Bake, cluster)),
        statement(
            "FlotillaBakeTagOnCreate",
            CREATE_TAGS,
            &["instance", "volume", "security-group", "image"],
            tag_on_create(Bake, cluster, &["RunInstances", "CreateSecurityGroup", "CreateImage"]),
        ),
        statement(
            "FlotillaBakeBuilder",
            &["ec2:StopInstances", "ec2:TerminateInstances", "ec2:CreateImage"],
            &["instance"],
            owned(Bake, cluster),
        ),
        statement("FlotillaBakeImage", CREATE_IMAGE, &["image"], made(Bake, cluster, IMAGE_KEYS)),
        statement("FlotillaBakeImageSnapshots", CREATE_IMAGE, &["snapshot"], None),
        statement("FlotillaBakeTagSnapshots", CREATE_TAGS, &["snapshot"], made(Bake, cluster, IMAGE_KEYS)),
        statement("FlotillaBakeDeleteGroup", &["ec2:DeleteSecurityGroup"], &["security-group"], owned(Bake, cluster)),
    ];
    json!({ "Version": "2012-10-17", "Statement": statements })
}

const RUN: &[&str] = &["ec2:RunInstances"];
const CREATE_GROUP: &[&str] = &["ec2:CreateSecurityGroup"];
const CREATE_IMAGE: &[&str] = &["ec2:CreateImage"];
const CREATE_TAGS: &[&str] = &["ec2:CreateTags"];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::check::{Request, allows, check, example_arn, requests};
    use super::*;

    /// `describe_instance_attribute` → `DescribeInstanceAttribute`.
    fn pascal(snake: &str) -> String {
        snake.split('_').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect()
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read the source directory") {
            let p = e.expect("directory entry").path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// Every `ec2.<method>(` / `ssm.<method>(` in the coordinator's source (whitespace ignored,
    /// so chains split over lines count), as IAM actions.
    fn sdk_calls_in_source() -> BTreeSet<String> {
        let mut files = Vec::new();
        rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        let mut out = BTreeSet::new();
        for f in files {
            let text: String = std::fs::read_to_string(&f).expect("read source").split_whitespace().collect();
            for client in ["ec2", "ssm"] {
                let needle = format!("{client}.");
                for (at, _) in text.match_indices(&needle) {
                    if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                        continue;
                    }
                    let rest = &text[at + needle.len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if !name.is_empty() && rest[name.len()..].starts_with('(') {
                        out.insert(format!("{client}:{}", pascal(&name)));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn calls_lists_exactly_the_aws_calls_the_source_makes() {
        let in_source = sdk_calls_in_source();
        let listed: BTreeSet<String> = CALLS.iter().map(|c| c.action.to_string()).collect();
        assert!(in_source.contains("ec2:RunInstances") && in_source.contains("ssm:GetParameter"), "{in_source:?}");
        let missing: Vec<_> = in_source.difference(&listed).collect();
        assert!(missing.is_empty(), "the source calls {missing:?}: add each to iam::CALLS and allow it in iam::policy");
        let stale: Vec<_> = listed.difference(&in_source).collect();
        assert!(stale.is_empty(), "iam::CALLS lists {stale:?}, which the source no longer calls: remove them");
    }

    #[test]
    fn the_policy_allows_every_call_the_provider_makes() {
        for cluster in ["prod", "a-b_c.9"] {
            let p = policy(cluster);
            for c in CALLS {
                for r in requests(c, cluster) {
                    assert_eq!(allows(&p, &r), Ok(true), "{} ({}, {:?}) is refused: {r:?}", c.action, c.why, c.owner);
                }
            }
        }
    }

    #[test]
    fn the_policy_passes_the_structural_check() {
        for cluster in ["prod", "staging"] {
            assert_eq!(check(&policy(cluster), cluster), vec![], "{cluster}");
        }
        // Rendered for another cluster, its owner conditions name the wrong cluster.
        let wrong = check(&policy("staging"), "prod");
        assert!(wrong.iter().any(|v| v.to_string().contains("staging")), "{wrong:?}");
    }

    fn req(action: &str, kind: &str, tags: &[(&str, &str)], request: &[(&str, &str)], create: Option<&str>) -> Request {
        let map = |t: &[(&str, &str)]| t.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Request {
            action: action.into(),
            resource: example_arn(kind),
            resource_tags: map(tags),
            request_tags: map(request),
            create_action: create.map(str::to_string),
        }
    }

    #[test]
    fn nothing_outside_the_cluster_and_its_bakes_is_allowed() {
        let p = policy("prod");
        let (own, bake) = ((TAG_CLUSTER, "prod"), (TAG_BAKE, "prod"));
        let (other, other_bake) = ((TAG_CLUSTER, "staging"), (TAG_BAKE, "staging"));
        let refused = [
            // The audit's attack: tag an existing host `flotilla:bake`, then stop, image or terminate it.
            ("tag an existing host flotilla:bake", req("ec2:CreateTags", "instance", &[own], &[bake], None)),
            ("tag an untagged instance as the cluster's", req("ec2:CreateTags", "instance", &[], &[own], None)),
            ("tag an existing group as the bake's", req("ec2:CreateTags", "security-group", &[], &[bake], None)),
            ("tag a snapshot as the cluster's", req("ec2:CreateTags", "snapshot", &[], &[own], None)),
            ("tag a snapshot as another bake's", req("ec2:CreateTags", "snapshot", &[], &[other_bake], None)),
            (
                "tag on a creation Flotilla never makes",
                req("ec2:CreateTags", "volume", &[], &[own], Some("CreateVolume")),
            ),
            (
                "a foreign tag key at launch",
                req("ec2:CreateTags", "instance", &[], &[own, ("Owner", "x")], Some("RunInstances")),
            ),
            ("launch another cluster's host", req("ec2:RunInstances", "instance", &[], &[other], None)),
            ("launch an untagged host", req("ec2:RunInstances", "instance", &[], &[], None)),
            ("launch with a foreign tag key", req("ec2:RunInstances", "instance", &[], &[own, ("Owner", "x")], None)),
            ("launch a host with both owner tags", req("ec2:RunInstances", "instance", &[], &[own, bake], None)),
            ("launch in an untagged group", req("ec2:RunInstances", "security-group", &[], &[], None)),
            ("launch in another cluster's group", req("ec2:RunInstances", "security-group", &[other], &[], None)),
            ("stop another cluster's host", req("ec2:StopInstances", "instance", &[other], &[], None)),
            ("terminate an untagged instance", req("ec2:TerminateInstances", "instance", &[], &[], None)),
            ("terminate another bake's builder", req("ec2:TerminateInstances", "instance", &[other_bake], &[], None)),
            ("start a bake builder", req("ec2:StartInstances", "instance", &[bake], &[], None)),
            ("image a cluster host", req("ec2:CreateImage", "instance", &[own], &[], None)),
            ("image an untagged instance", req("ec2:CreateImage", "instance", &[], &[], None)),
            ("read an untagged instance's user-data", req("ec2:DescribeInstanceAttribute", "instance", &[], &[], None)),
            ("read another cluster's user-data", req("ec2:DescribeInstanceAttribute", "instance", &[other], &[], None)),
            (
                "open another cluster's group",
                req("ec2:AuthorizeSecurityGroupIngress", "security-group", &[other], &[], None),
            ),
            ("open a bake's group", req("ec2:AuthorizeSecurityGroupIngress", "security-group", &[bake], &[], None)),
            ("delete an untagged group", req("ec2:DeleteSecurityGroup", "security-group", &[], &[], None)),
            ("an image without the bake's tag", req("ec2:CreateImage", "image", &[], &[("Name", "x")], None)),
        ];
        for (what, r) in refused {
            assert_eq!(allows(&p, &r), Ok(false), "allowed: {what} ({r:?})");
        }
        let secret = Request {
            action: "ssm:GetParameter".into(),
            resource: "arn:aws:ssm:us-east-1:123456789012:parameter/prod/db-password".into(),
            ..Default::default()
        };
        assert_eq!(allows(&p, &secret), Ok(false), "only the AMI's public parameter");
        // What changes, reads or removes a cluster's resources is refused to any other cluster's policy.
        let staging = policy("staging");
        for c in CALLS.iter().filter(|c| c.resources.iter().any(|(_, u)| *u == Use::Owned)) {
            let owned: Vec<Request> = requests(c, "prod").into_iter().filter(|r| !r.resource_tags.is_empty()).collect();
            for r in owned {
                assert_eq!(allows(&staging, &r), Ok(false), "staging's policy allows {r:?}");
            }
        }
    }

    #[test]
    fn every_tag_key_the_provider_defines_is_one_the_policy_allows_on_creation() {
        let all: Vec<&str> = Owner::ALL.into_iter().flat_map(tag_keys).collect();
        let mut files = Vec::new();
        rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/providers"), &mut files);
        let mut seen = 0;
        for f in files {
            let source = std::fs::read_to_string(&f).expect("read source");
            for line in source.lines().map(str::trim_start).filter(|l| l.starts_with("pub const TAG_")) {
                let value = line.split('"').nth(1).expect("a string constant");
                assert!(all.contains(&value), "tag key {value} ({}) is written but not in iam::CALLS", f.display());
                seen += 1;
            }
        }
        assert!(seen >= 10, "found only {seen} TAG_ constants under src/providers");
        assert!(all.contains(&"Name"));
        assert_eq!(creating_actions(), ["CreateImage", "CreateSecurityGroup", "RunInstances"]);
    }

    #[test]
    fn the_policy_is_rendered_for_its_cluster_only() {
        let text = serde_json::to_string(&policy("prod")).expect("json");
        assert!(!text.contains("StringLike") && !text.contains("\"*\"]"), "{text}");
        assert!(text.contains("\"aws:ResourceTag/flotilla:cluster\":\"prod\""), "{text}");
        assert!(text.contains("\"aws:RequestTag/flotilla:bake\":\"prod\""), "{text}");
    }
}
