//! The cluster's objects in Consul's ACL system, kept by the Consul servers' agents: the
//! agent whose Consul leads converges them every pass (with the management token, over
//! loopback) to what its spec lists — two policies and one token per host and role:
//!
//! | token of      | may                                                                  |
//! |---------------|----------------------------------------------------------------------|
//! | a Consul server (`consul`) | its node identity: register its node, read services     |
//! | a manager     | read and write `flotilla/<cluster>/swarm/` (both join records, the managers' addresses, the init lock) |
//! | a node        | read `flotilla/<cluster>/swarm/worker` and `flotilla/<cluster>/swarm/managers/` |
//!
//! Everything else — the anonymous token included — is denied (`default_policy = "deny"`).
//! Tokens of this cluster that the spec no longer lists (a host scaled away) are deleted.

use flotilla_proto::v1::{ConsulToken, Role};

use crate::consul::{AclPolicy, AclToken, Consul, ConsulError};
use crate::consul::{NodeIdentity, PolicyLink};

/// What one pass changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub policies: usize,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
}

impl Changes {
    pub fn any(&self) -> bool {
        *self != Changes::default()
    }
}

/// The name of the policy of `role`'s tokens.
pub fn policy_name(cluster: &str, role: Role) -> String {
    format!("flotilla-{cluster}-{}", role.name())
}

/// The policies: the managers' and the nodes'.
pub fn policies(cluster: &str) -> Vec<AclPolicy> {
    let swarm = format!("flotilla/{cluster}/swarm/");
    vec![
        AclPolicy {
            name: policy_name(cluster, Role::Manager),
            description: format!("flotilla {cluster}: Swarm managers publish and read the swarm's join records"),
            rules: format!("key_prefix \"{swarm}\" {{\n  policy = \"write\"\n}}\n"),
            ..Default::default()
        },
        AclPolicy {
            name: policy_name(cluster, Role::Node),
            description: format!("flotilla {cluster}: Swarm nodes read the worker join record and the managers"),
            rules: format!(
                "key \"{swarm}worker\" {{\n  policy = \"read\"\n}}\nkey_prefix \"{swarm}managers/\" {{\n  policy = \"read\"\n}}\n"
            ),
            ..Default::default()
        },
    ]
}

/// Every token of this cluster carries this description prefix.
fn description_prefix(cluster: &str) -> String {
    format!("flotilla {cluster}: ")
}

/// The token `t` should be in Consul (`None`: a role without a token).
pub fn desired(cluster: &str, datacenter: &str, t: &ConsulToken) -> Option<AclToken> {
    let role = Role::try_from(t.role).ok()?;
    let mut token = AclToken {
        accessor_id: t.accessor_id.clone(),
        secret_id: t.secret_id.clone(),
        description: format!("{}{} token of {}", description_prefix(cluster), role.name(), t.host),
        ..Default::default()
    };
    match role {
        Role::Consul => {
            token.node_identities = vec![NodeIdentity { node_name: t.host.clone(), datacenter: datacenter.to_string() }]
        }
        Role::Manager | Role::Node => token.policies = vec![PolicyLink { name: policy_name(cluster, role) }],
        Role::Unspecified => return None,
    }
    Some(token)
}

/// Whether `have` (as Consul lists it, without its secret) is `want`.
fn same(have: &AclToken, want: &AclToken) -> bool {
    have.description == want.description
        && have.policies.iter().map(|p| &p.name).eq(want.policies.iter().map(|p| &p.name))
        && have.node_identities == want.node_identities
}

/// Converges Consul's ACL objects through `c` (a token with `acl = "write"`).
pub async fn ensure(
    c: &Consul,
    cluster: &str,
    datacenter: &str,
    tokens: &[ConsulToken],
) -> Result<Changes, ConsulError> {
    let mut changes = Changes::default();
    for want in policies(cluster) {
        match c.acl_policy(&want.name).await? {
            Some(have) if have.rules == want.rules && have.description == want.description => {}
            Some(have) => {
                c.put_acl_policy(&AclPolicy { id: have.id, ..want }).await?;
                changes.policies += 1;
            }
            None => {
                c.put_acl_policy(&want).await?;
                changes.policies += 1;
            }
        }
    }
    let wanted: Vec<AclToken> = tokens.iter().filter_map(|t| desired(cluster, datacenter, t)).collect();
    let existing = c.acl_tokens().await?;
    for want in &wanted {
        match existing.iter().find(|h| h.accessor_id == want.accessor_id) {
            Some(have) if same(have, want) => {}
            Some(_) => {
                c.put_acl_token(want, false).await?;
                changes.updated += 1;
            }
            None => {
                c.put_acl_token(want, true).await?;
                changes.created += 1;
            }
        }
    }
    let prefix = description_prefix(cluster);
    for stale in existing
        .iter()
        .filter(|h| h.description.starts_with(&prefix) && !wanted.iter().any(|w| w.accessor_id == h.accessor_id))
    {
        c.delete_acl_token(&stale.accessor_id).await?;
        changes.deleted += 1;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_14_each_role_gets_only_its_own_grant() {
        let p = policies("c1");
        assert_eq!(p[0].name, "flotilla-c1-manager");
        assert!(p[0].rules.contains("key_prefix \"flotilla/c1/swarm/\""), "{}", p[0].rules);
        assert!(p[0].rules.contains("\"write\""));
        assert_eq!(p[1].name, "flotilla-c1-node");
        assert!(p[1].rules.contains("key \"flotilla/c1/swarm/worker\""), "{}", p[1].rules);
        assert!(!p[1].rules.contains("write"), "nodes only read: {}", p[1].rules);
        assert!(!p[1].rules.contains("swarm/join"), "nodes never see the manager join record");

        let t = |role: Role| ConsulToken {
            host: "h0".into(),
            role: role as i32,
            accessor_id: "a".into(),
            secret_id: "s".into(),
        };
        let server = desired("c1", "c1", &t(Role::Consul)).expect("server token");
        assert_eq!(server.node_identities, vec![NodeIdentity { node_name: "h0".into(), datacenter: "c1".into() }]);
        assert!(server.policies.is_empty());
        let node = desired("c1", "c1", &t(Role::Node)).expect("node token");
        assert_eq!(node.policies, vec![PolicyLink { name: "flotilla-c1-node".into() }]);
        assert!(node.description.starts_with("flotilla c1: "));
        assert_eq!(desired("c1", "c1", &t(Role::Unspecified)), None);
    }
}
