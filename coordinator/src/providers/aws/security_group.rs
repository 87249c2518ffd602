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

use std::collections::BTreeSet;

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

/// Checks a CIDR given for `field`: IPv4 `a.b.c.d/n`.
pub fn validate_cidr(field: &str, cidr: &str) -> Result<(), String> {
    let (ip, len) =
        cidr.split_once('/').ok_or_else(|| format!("`{field}`: '{cidr}' is not a CIDR (write e.g. 203.0.113.4/32)"))?;
    ip.parse::<std::net::Ipv4Addr>().map_err(|_| format!("`{field}`: '{ip}' is not an IPv4 address"))?;
    match len.parse::<u8>() {
        Ok(n) if n <= 32 => Ok(()),
        _ => Err(format!("`{field}`: '/{len}' is not a prefix length (0-32)")),
    }
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
    fn cidrs_are_checked() {
        assert!(validate_cidr("aws.admin_cidr", "203.0.113.4/32").is_ok());
        for bad in ["203.0.113.4", "203.0.113.4/33", "x/8", "::1/128"] {
            let e = validate_cidr("aws.admin_cidr", bad).expect_err(bad);
            assert!(e.contains("aws.admin_cidr"), "{e}");
        }
    }
}
