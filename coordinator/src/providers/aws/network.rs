//! The network hosts are placed in: the default VPC (or `aws.vpc_id`) and its subnets (or
//! `aws.subnet_ids`), sorted by availability zone — one per zone unless the operator listed
//! them — so hosts of one role spread over the zones round-robin.

use aws_sdk_ec2::types::Filter;

use super::{Aws, AwsError};

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

impl Aws {
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
}
