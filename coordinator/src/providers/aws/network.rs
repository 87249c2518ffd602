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
    /// Its IPv4 CIDR block (`10.0.1.0/24`): where a launch pinned to an address goes.
    pub cidr: String,
}

impl Subnet {
    /// Whether `ip` is in this subnet's CIDR block.
    pub fn holds(&self, ip: std::net::Ipv4Addr) -> bool {
        let Some((net, len)) = self.cidr.split_once('/') else { return false };
        let (Ok(net), Ok(len)) = (net.parse::<std::net::Ipv4Addr>(), len.parse::<u32>()) else { return false };
        if len > 32 {
            return false;
        }
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        u32::from(ip) & mask == u32::from(net) & mask
    }
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
                    cidr: s.cidr_block().unwrap_or_default().to_string(),
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

#[cfg(test)]
mod tests {
    use super::Subnet;

    fn subnet(cidr: &str) -> Subnet {
        Subnet { id: "subnet-1".into(), zone: "a".into(), cidr: cidr.into() }
    }

    #[test]
    fn a_subnet_holds_exactly_the_addresses_of_its_block() {
        let s = subnet("172.31.16.0/20");
        assert!(s.holds("172.31.16.4".parse().expect("an address")));
        assert!(s.holds("172.31.31.255".parse().expect("an address")));
        assert!(!s.holds("172.31.32.1".parse().expect("an address")));
        assert!(!s.holds("172.31.15.255".parse().expect("an address")));
        assert!(subnet("0.0.0.0/0").holds("10.1.2.3".parse().expect("an address")));
        assert!(!subnet("").holds("10.1.2.3".parse().expect("an address")));
        assert!(!subnet("10.0.0.0/33").holds("10.0.0.1".parse().expect("an address")));
    }
}
