//! `coordinator iam-policy`: the least IAM policy the AWS provider needs. Reads are
//! unrestricted (EC2 has no resource-level control for Describe*); everything that changes
//! or removes a resource is limited to resources carrying the `flotilla:cluster` tag, and
//! creation must set that tag.

use super::TAG_CLUSTER;

/// Every API action the provider calls, with what for (also the order the policy lists them).
pub const ACTIONS: &[(&str, &str)] = &[
    ("ec2:DescribeVpcs", "find the default (or given) VPC"),
    ("ec2:DescribeSubnets", "spread hosts over availability zones"),
    ("ec2:DescribeSecurityGroups", "find the cluster's group"),
    ("ec2:DescribeInstances", "find the cluster's hosts by tag"),
    ("ec2:DescribeInstanceAttribute", "read back user-data"),
    ("ec2:DescribeInstanceTypes", "refuse a non-x86_64 instance type"),
    ("ec2:DescribeImages", "check the AMI; find a baked image"),
    ("ssm:GetParameter", "the Amazon Linux 2023 AMI id"),
    ("ec2:CreateSecurityGroup", "the cluster's own group"),
    ("ec2:CreateTags", "tag what Flotilla creates"),
    ("ec2:RunInstances", "launch hosts"),
    ("ec2:AuthorizeSecurityGroupIngress", "the group's rules"),
    ("ec2:RevokeSecurityGroupIngress", "remove rules Flotilla did not ask for"),
    ("ec2:DeleteSecurityGroup", "destroy"),
    ("ec2:StartInstances", "failover drill (host mode), restart"),
    ("ec2:StopInstances", "failover drill (host mode), bake"),
    ("ec2:TerminateInstances", "scale down, destroy"),
    ("ec2:CreateImage", "bake"),
];

/// The policy document (JSON).
// One literal document (~85 lines): it reads best whole, as an operator will read it.
pub fn policy() -> serde_json::Value {
    let tag_key = format!("aws:RequestTag/{TAG_CLUSTER}");
    let resource_tag = format!("ec2:ResourceTag/{TAG_CLUSTER}");
    // `coordinator bake --provider aws` tags what it makes `flotilla:bake`, never a cluster's tag.
    let bake_request_tag = format!("aws:RequestTag/{}", super::bake::TAG_BAKE);
    let bake_resource_tag = format!("ec2:ResourceTag/{}", super::bake::TAG_BAKE);
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "FlotillaRead",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeVpcs", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
                    "ec2:DescribeInstances", "ec2:DescribeInstanceAttribute",
                    "ec2:DescribeInstanceTypes", "ec2:DescribeImages"
                ],
                "Resource": "*"
            },
            {
                "Sid": "FlotillaAmiParameter",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter"],
                "Resource": "arn:aws:ssm:*::parameter/aws/service/ami-amazon-linux-latest/*"
            },
            {
                "Sid": "FlotillaCreateTagged",
                "Effect": "Allow",
                "Action": ["ec2:CreateSecurityGroup", "ec2:RunInstances", "ec2:CreateImage"],
                "Resource": [
                    "arn:aws:ec2:*:*:security-group/*", "arn:aws:ec2:*:*:instance/*",
                    "arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:image/*", "arn:aws:ec2:*:*:snapshot/*"
                ],
                "Condition": { "StringLike": { tag_key: "*" } }
            },
            {
                "Sid": "FlotillaLaunchFrom",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances", "ec2:CreateSecurityGroup"],
                "Resource": [
                    "arn:aws:ec2:*::image/*", "arn:aws:ec2:*:*:subnet/*", "arn:aws:ec2:*:*:vpc/*",
                    "arn:aws:ec2:*:*:network-interface/*", "arn:aws:ec2:*:*:key-pair/*",
                    "arn:aws:ec2:*:*:security-group/*"
                ]
            },
            {
                "Sid": "FlotillaTagOnCreate",
                "Effect": "Allow",
                "Action": ["ec2:CreateTags"],
                "Resource": "*",
                "Condition": { "StringEquals": { "ec2:CreateAction": ["RunInstances", "CreateSecurityGroup", "CreateImage"] } }
            },
            {
                "Sid": "FlotillaBakeCreateTagged",
                "Effect": "Allow",
                "Action": ["ec2:CreateSecurityGroup", "ec2:RunInstances", "ec2:CreateImage", "ec2:CreateTags"],
                "Resource": [
                    "arn:aws:ec2:*:*:security-group/*", "arn:aws:ec2:*:*:instance/*",
                    "arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*::image/*", "arn:aws:ec2:*::snapshot/*"
                ],
                "Condition": { "StringLike": { bake_request_tag: "*" } }
            },
            {
                "Sid": "FlotillaBakeChangeOwnOnly",
                "Effect": "Allow",
                "Action": [
                    "ec2:DeleteSecurityGroup", "ec2:StopInstances", "ec2:TerminateInstances", "ec2:CreateImage"
                ],
                "Resource": "*",
                "Condition": { "StringLike": { bake_resource_tag: "*" } }
            },
            {
                "Sid": "FlotillaChangeOwnOnly",
                "Effect": "Allow",
                "Action": [
                    "ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress",
                    "ec2:DeleteSecurityGroup", "ec2:StartInstances", "ec2:StopInstances",
                    "ec2:TerminateInstances", "ec2:CreateImage"
                ],
                "Resource": "*",
                "Condition": { "StringLike": { resource_tag: "*" } }
            }
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_the_provider_calls_is_in_the_policy_and_changes_are_tag_scoped() {
        let p = policy();
        let text = p.to_string();
        for (a, _) in ACTIONS {
            assert!(text.contains(&format!("\"{a}\"")), "{a} missing from the policy");
        }
        let st = p["Statement"].as_array().expect("statements");
        let change = st.iter().find(|s| s["Sid"] == "FlotillaChangeOwnOnly").expect("change statement");
        assert!(change["Condition"]["StringLike"][format!("ec2:ResourceTag/{TAG_CLUSTER}")].is_string());
        for a in ["ec2:TerminateInstances", "ec2:DeleteSecurityGroup"] {
            // Destructive actions appear only under a tag condition (a cluster's or a bake's).
            let bake = st.iter().find(|s| s["Sid"] == "FlotillaBakeChangeOwnOnly").expect("bake statement");
            assert!(bake["Condition"]["StringLike"]["ec2:ResourceTag/flotilla:bake"].is_string());
            for s in
                st.iter().filter(|s| s["Sid"] != "FlotillaChangeOwnOnly" && s["Sid"] != "FlotillaBakeChangeOwnOnly")
            {
                assert!(!s["Action"].to_string().contains(a), "{a} granted without the tag condition");
            }
        }
    }
}
