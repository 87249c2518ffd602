//! The lab network of a cluster: a bridge on a free /24 under `10.213.0.0/16` (picked by a
//! hash of the cluster's name, skipping every subnet the Engine already has), gateway `.1`
//! (where hosts reach the coordinator), the registry at `.2`, hosts from `.10`.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::models::{EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkCreateRequest, NetworkingConfig};
use bollard::query_parameters::{InspectNetworkOptions, ListNetworksOptions};

use super::{LABEL_IP, Lab, LabError, SUBNET_BASE};

impl Lab {
    /// The cluster's network, created on first use on a free /24.
    pub async fn ensure_network(&self) -> Result<(String, Ipv4Addr), LabError> {
        let name = self.network_name();
        if let Ok(n) = self.docker.inspect_network(&name, None::<InspectNetworkOptions>).await {
            let subnet = n
                .ipam
                .and_then(|i| i.config)
                .and_then(|c| c.into_iter().next())
                .and_then(|c| c.subnet)
                .unwrap_or_default();
            let base =
                subnet_base(&subnet).ok_or_else(|| LabError::Engine(format!("network {name} has no IPv4 subnet")))?;
            return Ok((n.id.unwrap_or_default(), base));
        }
        let used = self.used_subnets().await?;
        let start = (fnv(&self.cluster) % 200) as u8;
        let third = (0..250u16)
            .map(|i| ((u16::from(start) + i) % 250 + 1) as u8)
            .find(|t| !used.iter().any(|u| overlaps(u, *t)))
            .ok_or(LabError::NoSubnet)?;
        let base = Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], third, 0);
        let resp = self
            .docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(format!("{base}/24")),
                        gateway: Some(with_last(base, 1).to_string()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                labels: Some(self.labels("network")),
                ..Default::default()
            })
            .await?;
        tracing::info!(network = %name, subnet = %format!("{base}/24"), "lab network created");
        Ok((resp.id, base))
    }

    async fn used_subnets(&self) -> Result<Vec<String>, LabError> {
        let nets = self.docker.list_networks(None::<ListNetworksOptions>).await?;
        Ok(nets
            .into_iter()
            .flat_map(|n| n.ipam.and_then(|i| i.config).unwrap_or_default())
            .filter_map(|c| c.subnet)
            .collect())
    }

    /// The cluster's network, with `ip` as the container's fixed address.
    pub(super) fn endpoint(&self, ip: Ipv4Addr) -> NetworkingConfig {
        NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                self.network_name(),
                EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig { ipv4_address: Some(ip.to_string()), ..Default::default() }),
                    ..Default::default()
                },
            )])),
        }
    }

    /// The first host address (from `.10`) no container of the cluster holds.
    pub(super) async fn free_ip(&self, base: Ipv4Addr) -> Result<Ipv4Addr, LabError> {
        let used = self.used_ips().await?;
        (10u8..=250)
            .map(|i| with_last(base, i))
            .find(|ip| !used.contains_key(ip))
            .ok_or_else(|| LabError::NoAddress(self.network_name()))
    }

    /// `ip` itself, when it is a host address of the cluster's network that no container
    /// of the cluster holds (a launch pinned to an address).
    pub(super) async fn pinned_ip(&self, base: Ipv4Addr, ip: Ipv4Addr) -> Result<Ipv4Addr, LabError> {
        let last = ip.octets()[3];
        if with_last(base, last) != ip || !(10..=250).contains(&last) {
            return Err(LabError::AddressOutside { ip, network: self.network_name(), base });
        }
        match self.used_ips().await?.remove(&ip) {
            Some(holder) => Err(LabError::AddressTaken { ip, holder }),
            None => Ok(ip),
        }
    }

    /// The addresses the cluster's containers hold, with each holder's name.
    async fn used_ips(&self) -> Result<HashMap<Ipv4Addr, String>, LabError> {
        Ok(self
            .containers(None)
            .await?
            .into_iter()
            .filter_map(|c| {
                let ip = c.labels.as_ref()?.get(LABEL_IP)?.parse().ok()?;
                let name = c.names.unwrap_or_default().first().map(|n| n.trim_start_matches('/').to_string());
                Some((ip, name.unwrap_or_default()))
            })
            .collect())
    }
}

/// `base` with its last octet set to `last`.
pub(super) fn with_last(base: Ipv4Addr, last: u8) -> Ipv4Addr {
    let o = base.octets();
    Ipv4Addr::new(o[0], o[1], o[2], last)
}

fn subnet_base(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

/// Whether an existing subnet (CIDR) overlaps `10.213.<third>.0/24`.
fn overlaps(cidr: &str, third: u8) -> bool {
    let Some((addr, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(len)) = (addr.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let ours = u32::from(Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], third, 0));
    let theirs = u32::from(addr);
    let len = len.min(24);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    ours & mask == theirs & mask
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x01000193))
}

#[cfg(test)]
mod tests {
    use super::overlaps;

    #[test]
    fn subnet_overlap_is_detected_for_wider_and_equal_networks() {
        assert!(overlaps("10.213.7.0/24", 7));
        assert!(!overlaps("10.213.8.0/24", 7));
        assert!(overlaps("10.0.0.0/8", 7));
        assert!(overlaps("10.213.0.0/16", 200));
        assert!(!overlaps("172.17.0.0/16", 7));
    }
}
