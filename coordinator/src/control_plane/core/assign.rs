//! Assignments: a host's desired roles as a new generation — stored, completed by the
//! control plane (Consul's gossip key and tokens, a manager's Engine certificate signed from its
//! CSR), carried over when unchanged, and sent to its agent.

use flotilla_proto::v1;

use super::{ControlError, ControlPlane};
use crate::control_plane::operators::caller::Caller;
use crate::control_plane::store::{AuditEvent, Facts};

impl ControlPlane {
    /// Sets `host`'s desired roles as a new generation, stores it, and sends it to the
    /// host's agent when connected (it is sent again on every session open).
    pub fn assign(
        &self,
        host: &str,
        roles: Vec<v1::RoleSpec>,
        host_address: &str,
        by: &Caller,
    ) -> Result<(u64, bool), ControlError> {
        let requested = v1::Assignment {
            generation: 0,
            roles,
            host_address: host_address.to_string(),
            cluster: self.config.cluster.clone(),
        };
        let Some(rec) = self.store.host(host)? else {
            return Err(ControlError::UnknownHost(host.to_string()));
        };
        // Same request as the one in force: keep it and its generation (re-running deploy is
        // a no-op; nothing is signed).
        let a = match self.assignment_of(host)? {
            Some(p) if self.in_force(&p, &requested, &rec.facts) => p,
            prev => self.store_assignment(host, &requested, prev.as_ref(), &rec.facts, by)?,
        };
        let generation = a.generation;
        let delivered = self
            .sessions
            .send(host, v1::CoordinatorMessage { body: Some(v1::coordinator_message::Body::Assignment(a)) });
        Ok((generation, delivered))
    }

    /// Whether `stored` is what `requested` would make now, for a host with `facts`.
    fn in_force(&self, stored: &v1::Assignment, requested: &v1::Assignment, facts: &Facts) -> bool {
        completions_current(stored, requested, self.pki.engine_client_ca_pem(), &facts.engine_csr_pem)
            && strip_completions(stored, requested) == requested.roles
            && stored.host_address == requested.host_address
            && stored.cluster == requested.cluster
    }

    /// Completes `requested` (see [`ControlPlane::complete`], carrying over what the assignment
    /// `in_force` was given), checks it and stores it as the next generation — unless an
    /// identical request got there first. Returns what is in force.
    fn store_assignment(
        &self,
        host: &str,
        requested: &v1::Assignment,
        in_force: Option<&v1::Assignment>,
        facts: &Facts,
        by: &Caller,
    ) -> Result<v1::Assignment, ControlError> {
        use prost::Message;
        let mut a = requested.clone();
        if let Some(prev) = in_force {
            carry_over(prev, &mut a);
        }
        self.complete(host, facts, &mut a)?;
        flotilla_agent::reconcile::validate(&a)
            .map_err(|e| ControlError::BadAssignment { host: host.to_string(), message: e.to_string() })?;
        let names: Vec<String> = a
            .roles
            .iter()
            .filter_map(|r| r.spec.as_ref())
            .map(|s| match s {
                v1::role_spec::Spec::Consul(_) => "consul".to_string(),
                v1::role_spec::Spec::Manager(_) => "manager".to_string(),
                v1::role_spec::Spec::Node(_) => "node".to_string(),
            })
            .collect();
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            let Some(mut rec) = tx.host(host)? else {
                return Err(ControlError::UnknownHost(host.to_string()));
            };
            let prev = tx.assignment(host)?.and_then(|b| v1::Assignment::decode(b.as_slice()).ok());
            if let Some(p) = &prev
                && self.in_force(p, requested, &rec.facts)
            {
                return Ok(p.clone());
            }
            a.generation = prev.map(|p| p.generation).unwrap_or(0) + 1;
            tx.put_assignment(host, &a.encode_to_vec())?;
            rec.roles = names.clone();
            tx.put_host(&rec)?;
            tx.audit(&AuditEvent {
                unix_ms: now,
                kind: "host.assigned".into(),
                host_name: host.into(),
                detail: format!("generation {}: {}", a.generation, names.join(",")),
                peer: String::new(),
                actor: by.to_string(),
            })?;
            Ok(a)
        })
    }

    /// Fills what only the control plane can, where the request left it empty: Consul's
    /// gossip key (made once per cluster), its tokens and TLS material, each host's Consul
    /// token, and a manager's Engine TLS server certificate from the cluster CA (signed from
    /// the host's CSR when its facts carry one).
    fn complete(&self, host: &str, facts: &Facts, a: &mut v1::Assignment) -> Result<(), ControlError> {
        use base64::Engine as _;
        let needs_address = a.roles.iter().any(|r| {
            matches!(&r.spec, Some(v1::role_spec::Spec::Consul(c)) if c.tls_cert_pem.is_empty())
                || matches!(&r.spec, Some(v1::role_spec::Spec::Manager(m)) if m.engine_tls_cert_pem.is_empty())
        });
        if needs_address && a.host_address.parse::<std::net::IpAddr>().is_err() {
            return Err(ControlError::BadAssignment {
                host: host.to_string(),
                message: format!("host_address '{}' is not an IP address", a.host_address),
            });
        }
        for r in &mut a.roles {
            match &mut r.spec {
                Some(v1::role_spec::Spec::Consul(c)) => {
                    if c.encrypt_key.is_empty() {
                        let fresh: [u8; 32] = rand::random();
                        let key = self.store.meta_get_or_insert(
                            "consul_encrypt_key",
                            base64::engine::general_purpose::STANDARD.encode(fresh).as_bytes(),
                        )?;
                        c.encrypt_key = String::from_utf8_lossy(&key).to_string();
                    }
                    self.consul.complete(host, &a.host_address, c)?;
                }
                Some(v1::role_spec::Spec::Manager(m)) => {
                    if m.consul_token.is_empty() {
                        m.consul_token = self.consul.token(host, v1::Role::Manager).1;
                    }
                    // Issued anew also when the one carried over predates the Engine client CA
                    // or no longer certifies the key of the host's CSR.
                    if m.engine_tls_cert_pem.is_empty()
                        || m.engine_tls_ca_pem != self.pki.engine_client_ca_pem()
                        || !engine_cert_fits(m, &facts.engine_csr_pem)
                    {
                        (m.engine_tls_cert_pem, m.engine_tls_key_pem) =
                            self.engine_server_cert(host, &a.host_address, facts)?;
                        // What the Engine trusts for its clients: the Engine client CA only.
                        m.engine_tls_ca_pem = self.pki.engine_client_ca_pem().to_string();
                    }
                }
                Some(v1::role_spec::Spec::Node(n)) if n.consul_token.is_empty() => {
                    n.consul_token = self.consul.token(host, v1::Role::Node).1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The server certificate for a manager's Engine on 2376, and the key to send with it:
    /// none when the host sent a CSR (its key never leaves it). An older agent sends no CSR;
    /// for it the key is made here, as before `HostFacts.engine_csr_pem` existed, and travels
    /// in the assignment (over the mTLS session) and stays in the store with it.
    fn engine_server_cert(&self, host: &str, address: &str, facts: &Facts) -> Result<(String, String), ControlError> {
        if address.parse::<std::net::IpAddr>().is_err() {
            return Err(ControlError::BadAssignment {
                host: host.to_string(),
                message: format!("host_address '{address}' is not an IP address"),
            });
        }
        if facts.engine_csr_pem.is_empty() {
            return Ok(self.pki.issue_engine_server(host, address)?);
        }
        let cert = self
            .pki
            .sign_engine_server_csr(host, address, &facts.engine_csr_pem)
            .map_err(|source| ControlError::EngineCsr { host: host.to_string(), source })?;
        Ok((cert, String::new()))
    }
}

/// Whether what [`ControlPlane::complete`] filled in for `requested` is still what it would
/// fill in: an assignment from before the Engine client CA (whose Engines trust the cluster
/// CA, so every host identity) is re-issued by the next identical request, and so is an
/// Engine certificate that no longer fits the host's CSR (see [`engine_cert_fits`]).
fn completions_current(
    stored: &v1::Assignment,
    requested: &v1::Assignment,
    engine_client_ca_pem: &str,
    engine_csr_pem: &str,
) -> bool {
    stored.roles.iter().zip(&requested.roles).all(|(s, r)| match (&s.spec, &r.spec) {
        (Some(v1::role_spec::Spec::Manager(s)), Some(v1::role_spec::Spec::Manager(r)))
            if r.engine_tls_cert_pem.is_empty() =>
        {
            (s.engine_tls_ca_pem.is_empty() || s.engine_tls_ca_pem == engine_client_ca_pem)
                && engine_cert_fits(s, engine_csr_pem)
        }
        _ => true,
    })
}

/// Whether a manager's stored Engine certificate fits a host whose facts carry
/// `engine_csr_pem`: it must certify that CSR's key. That also moves a host whose agent now
/// sends a CSR off the key the coordinator made for it (whose certificate certifies that
/// key, not the host's) at the next deploy. Without a CSR (an older agent) the coordinator's
/// key stays.
fn engine_cert_fits(stored: &v1::ManagerSpec, engine_csr_pem: &str) -> bool {
    engine_csr_pem.is_empty()
        || crate::control_plane::pki::certifies_csr_key(&stored.engine_tls_cert_pem, engine_csr_pem)
}

/// Certificates the assignment in force (`prev`) already gave this host, copied into `a`
/// where it leaves them empty and the host's address is unchanged: a new generation for
/// another reason (a Consul server's token list changes when nodes are added or removed)
/// must not issue new ones, which would restart the Engine and recreate the Consul container.
fn carry_over(prev: &v1::Assignment, a: &mut v1::Assignment) {
    use v1::role_spec::Spec;
    if prev.host_address != a.host_address {
        return;
    }
    let prev_consul = prev.roles.iter().find_map(|r| match &r.spec {
        Some(Spec::Consul(c)) => Some(c),
        _ => None,
    });
    let prev_manager = prev.roles.iter().find_map(|r| match &r.spec {
        Some(Spec::Manager(m)) => Some(m),
        _ => None,
    });
    for r in &mut a.roles {
        match (&mut r.spec, prev_consul, prev_manager) {
            (Some(Spec::Consul(c)), Some(p), _) if c.tls_cert_pem.is_empty() && p.datacenter == c.datacenter => {
                c.tls_cert_pem = p.tls_cert_pem.clone();
                c.tls_key_pem = p.tls_key_pem.clone();
                c.tls_ca_pem = p.tls_ca_pem.clone();
            }
            (Some(Spec::Manager(m)), _, Some(p)) if m.engine_tls_cert_pem.is_empty() => {
                m.engine_tls_cert_pem = p.engine_tls_cert_pem.clone();
                m.engine_tls_key_pem = p.engine_tls_key_pem.clone();
                m.engine_tls_ca_pem = p.engine_tls_ca_pem.clone();
            }
            _ => {}
        }
    }
}

/// The stored roles with what [`ControlPlane::complete`] filled in removed again, where the
/// request left it empty — so a repeated request compares equal to what is in force.
fn strip_completions(stored: &v1::Assignment, requested: &v1::Assignment) -> Vec<v1::RoleSpec> {
    use v1::role_spec::Spec;
    let mut roles = stored.roles.clone();
    for (s, r) in roles.iter_mut().zip(&requested.roles) {
        match (&mut s.spec, &r.spec) {
            (Some(Spec::Consul(s)), Some(Spec::Consul(r))) => strip_consul(s, r),
            (Some(Spec::Manager(s)), Some(Spec::Manager(r))) => {
                if r.engine_tls_cert_pem.is_empty() {
                    s.engine_tls_cert_pem.clear();
                    s.engine_tls_key_pem.clear();
                    s.engine_tls_ca_pem.clear();
                }
                if r.consul_token.is_empty() {
                    s.consul_token.clear();
                }
            }
            (Some(Spec::Node(s)), Some(Spec::Node(r))) if r.consul_token.is_empty() => s.consul_token.clear(),
            _ => {}
        }
    }
    roles
}

/// [`strip_completions`] of a Consul server's spec.
fn strip_consul(s: &mut v1::ConsulSpec, r: &v1::ConsulSpec) {
    if r.encrypt_key.is_empty() {
        s.encrypt_key.clear();
    }
    if r.management_token.is_empty() {
        s.management_token.clear();
    }
    if r.agent_token.is_empty() {
        s.agent_token.clear();
    }
    if r.tls_cert_pem.is_empty() {
        s.tls_cert_pem.clear();
        s.tls_key_pem.clear();
        s.tls_ca_pem.clear();
    }
    for (st, rt) in s.tokens.iter_mut().zip(&r.tokens) {
        if rt.accessor_id.is_empty() {
            st.accessor_id.clear();
            st.secret_id.clear();
        }
    }
}
