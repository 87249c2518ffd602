//! The typed inputs of a render and their validation. Everything that ends up in the user-data
//! is checked here first, so the renderers can assume well-formed values.

use std::fmt;

use crate::Error;

/// The default agent heartbeat interval, in seconds.
pub const DEFAULT_HEARTBEAT_INTERVAL_S: u32 = 5;

/// Everything needed to render the user-data of one cluster host.
#[derive(Clone, PartialEq, Eq)]
pub struct HostInputs {
    /// The cluster's name: a DNS label (`[a-z0-9-]{1,63}`, no leading or trailing `-`).
    pub cluster: String,
    /// This host's name, unique in the cluster: a DNS label like `cluster`.
    pub host_name: String,
    /// The coordinator endpoints the agent dials (gRPC over mTLS), as `host:port`; at least
    /// one. IPv6 addresses in brackets: `[fd00::5]:7443`.
    pub coordinator: Vec<String>,
    /// The cluster CA: one or more `-----BEGIN CERTIFICATE-----` blocks, nothing else.
    pub ca_pem: String,
    /// The one-time join token, written to [`crate::paths::TOKEN_PATH`] (0600). `None` for a
    /// host whose agent is already enrolled: no token file is written then.
    /// Allowed characters: `[A-Za-z0-9._~+/=-]`, at most 512.
    pub join_token: Option<String>,
    /// The agent binary to install.
    pub agent: AgentBinary,
    /// How Docker Engine gets onto the host.
    pub engine: Engine,
    /// Registries (`host:port`) the Engine may pull from over plain HTTP. Lab only: the lab
    /// registry's address. When non-empty they are merged into `/etc/docker/daemon.json` and
    /// the Engine is restarted.
    pub insecure_registries: Vec<String>,
    /// How often the agent reports health, in seconds (1..=3600);
    /// [`DEFAULT_HEARTBEAT_INTERVAL_S`] unless there is a reason.
    pub heartbeat_interval_s: u32,
    /// The plan makes this host a Swarm manager, whose Engine gets a TLS listener on 2376
    /// (the agent writes it once the coordinator signs the Engine's certificate): the
    /// Engine's first start is held until then ([`crate::paths::ENGINE_HOLD_PATHS`]), so it
    /// starts once, already configured. A worker's Engine starts at boot, with no listener.
    pub engine_tls: bool,
}

/// Everything needed to render the user-data of a bake instance: Docker Engine and the agent
/// binary, and no cluster identity at all (no names, no token, no agent config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BakeInputs {
    /// The CA that signed the HTTPS certificate of [`AgentBinary::url`]. Used only for the
    /// download and removed from the image when the bake succeeds.
    pub ca_pem: String,
    /// The agent binary to bake in.
    pub agent: AgentBinary,
    /// How Docker Engine gets onto the image.
    pub engine: Engine,
    /// For a builder the baker cannot look into (an EC2 instance): where the bake script
    /// reports its outcome, and the unit that cleans the builder for capture when it is
    /// stopped. `None` (the lab, which reads the builder's files itself): neither.
    pub report: Option<BakeReport>,
}

/// Where a bake script reports, and how it proves the report is this bake's.
///
/// The bake script POSTs its outcome (`complete` and the Engine version, or `failed` and the
/// reason) and the tail of its cloud-init output to [`BakeReport::url`], trusting only the
/// bake CA, with [`BakeReport::nonce`] in the `X-Flotilla-Bake-Nonce` header; both on success
/// and on failure. On success it also installs [`crate::paths::SEAL_UNIT_PATH`], whose
/// `ExecStop` (at the shutdown the baker's stop causes) runs `cloud-init clean --logs`,
/// empties `/etc/machine-id`, removes the Engine's identity, the bake CA and itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BakeReport {
    /// `https://` on the baker's endpoint, served with a certificate from the bake CA.
    pub url: String,
    /// A random value made for this one bake (not a secret of any cluster: it only tells the
    /// baker that a report comes from the builder it launched): `[A-Za-z0-9]{16,128}`.
    pub nonce: String,
}

/// The agent binary the bootstrap script downloads (unless the right one is already there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBinary {
    /// An `https://` URL on the coordinator, served with a certificate from the cluster CA, e.g.
    /// `https://10.0.0.5:7443/v1/agent/flotilla-agent` (see [`crate::paths::AGENT_DOWNLOAD_PATH`]).
    /// curl trusts only the given CA for it: never the system CA store.
    pub url: String,
    /// SHA-256 of the binary, 64 hex digits (either case; rendered lower-case).
    pub sha256: String,
    /// The agent's version, for logs and the bake marker: `[A-Za-z0-9._+-]{1,64}`.
    pub version: String,
}

/// How Docker Engine gets onto a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// Install it with the OS's package manager when `docker` is missing.
    InstallIfAbsent(OsFamily),
    /// The image has Docker Engine (the lab's host image, baked images). If `docker` is
    /// missing the bootstrap fails with a clear message; it never installs anything, never
    /// runs a package manager.
    Preinstalled,
}

/// The OS family whose package manager installs Docker Engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OsFamily {
    /// `dnf install -y docker`.
    AmazonLinux2023,
    /// `apt-get update && apt-get install -y docker.io`.
    Debian,
}

impl fmt::Debug for HostInputs {
    /// Like a derived `Debug`, with the join token redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostInputs")
            .field("cluster", &self.cluster)
            .field("host_name", &self.host_name)
            .field("coordinator", &self.coordinator)
            .field("ca_pem", &self.ca_pem)
            .field("join_token", &self.join_token.as_ref().map(|_| "<redacted>"))
            .field("agent", &self.agent)
            .field("engine", &self.engine)
            .field("insecure_registries", &self.insecure_registries)
            .field("heartbeat_interval_s", &self.heartbeat_interval_s)
            .field("engine_tls", &self.engine_tls)
            .finish()
    }
}

impl HostInputs {
    /// Checks every field; the first problem found is returned. Rendering calls this too.
    pub fn validate(&self) -> Result<(), Error> {
        check_name("cluster", &self.cluster)?;
        check_name("host_name", &self.host_name)?;
        if self.coordinator.is_empty() {
            return Err(Error::NoCoordinator);
        }
        for (index, value) in self.coordinator.iter().enumerate() {
            check_endpoint(value).map_err(|reason| Error::InvalidCoordinator {
                index,
                value: value.clone(),
                reason,
            })?;
        }
        normalize_ca_pem(&self.ca_pem)?;
        if let Some(token) = &self.join_token {
            check_token(token)?;
        }
        self.agent.validate()?;
        for (index, value) in self.insecure_registries.iter().enumerate() {
            check_endpoint(value).map_err(|reason| Error::InvalidInsecureRegistry {
                index,
                value: value.clone(),
                reason,
            })?;
        }
        if !(1..=3600).contains(&self.heartbeat_interval_s) {
            return Err(Error::InvalidHeartbeatInterval { value: self.heartbeat_interval_s });
        }
        Ok(())
    }
}

impl BakeInputs {
    /// Checks every field; the first problem found is returned. Rendering calls this too.
    pub fn validate(&self) -> Result<(), Error> {
        normalize_ca_pem(&self.ca_pem)?;
        self.agent.validate()?;
        if let Some(report) = &self.report {
            check_agent_url(&report.url)
                .map_err(|reason| Error::InvalidReportUrl { value: report.url.clone(), reason })?;
            let nonce_ok =
                (16..=128).contains(&report.nonce.len()) && report.nonce.bytes().all(|b| b.is_ascii_alphanumeric());
            if !nonce_ok {
                return Err(Error::InvalidReportNonce);
            }
        }
        Ok(())
    }
}

impl AgentBinary {
    /// Checks the URL, the digest and the version.
    pub fn validate(&self) -> Result<(), Error> {
        check_agent_url(&self.url).map_err(|reason| Error::InvalidAgentUrl { value: self.url.clone(), reason })?;
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidSha256 { field: "agent.sha256", value: self.sha256.clone() });
        }
        let version_ok = (1..=64).contains(&self.version.len())
            && self.version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
        if !version_ok {
            return Err(Error::InvalidAgentVersion { value: self.version.clone() });
        }
        Ok(())
    }
}

/// A DNS label: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
fn check_name(field: &'static str, value: &str) -> Result<(), Error> {
    let reason = if value.is_empty() {
        "it is empty"
    } else if value.len() > 63 {
        "it is longer than 63 characters"
    } else if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        "it contains a character other than a-z, 0-9 and '-'"
    } else if value.starts_with('-') || value.ends_with('-') {
        "it starts or ends with '-'"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { field, value: value.to_owned(), reason })
}

/// `host:port`, where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
fn check_endpoint(value: &str) -> Result<(), &'static str> {
    let (host, port) = value.rsplit_once(':').ok_or("it has no ':port'")?;
    let port_ok =
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p != 0);
    if !port_ok {
        return Err("the port is not a number from 1 to 65535");
    }
    if host.is_empty() {
        return Err("the host is empty");
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| !ip.is_empty() && ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.'))
    } else {
        host.len() <= 253
            && !host.starts_with(['-', '.'])
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if !host_ok {
        return Err("the host is not a DNS name, an IPv4 address or a bracketed IPv6 address ([fd00::1])");
    }
    Ok(())
}

/// A plain `https://host[:port]/path` URL of printable ASCII that needs no shell or YAML care.
fn check_agent_url(url: &str) -> Result<(), &'static str> {
    let rest = url.strip_prefix("https://").ok_or("it does not start with https://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err("it has no host");
    }
    if authority.contains('@') {
        return Err("it carries user information ('@'), which is not allowed");
    }
    let allowed = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b':'
                    | b'/'
                    | b'?'
                    | b'#'
                    | b'['
                    | b']'
                    | b'@'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            )
    };
    if !url.bytes().all(allowed) {
        return Err("it contains a character that is not allowed in a URL (space, quote, ...)");
    }
    Ok(())
}

fn check_token(token: &str) -> Result<(), Error> {
    let reason = if token.is_empty() {
        "the token is empty"
    } else if token.len() > 512 {
        "the token is longer than 512 characters"
    } else if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b'-'))
    {
        "the token contains a character outside A-Z, a-z, 0-9 and ._~+/=-"
    } else {
        return Ok(());
    };
    Err(Error::InvalidToken { reason })
}

const BEGIN_CERT: &str = "-----BEGIN CERTIFICATE-----";
const END_CERT: &str = "-----END CERTIFICATE-----";

/// Checks that `pem` is one or more certificate blocks (blank lines between them allowed,
/// nothing else) and returns them normalized: LF line ends, no surrounding blank lines or
/// spaces, one trailing newline.
pub(crate) fn normalize_ca_pem(pem: &str) -> Result<String, Error> {
    if pem.to_ascii_uppercase().contains("PRIVATE KEY") {
        return Err(Error::PrivateKeyInCa);
    }
    let invalid = |reason: String| Error::InvalidCaPem { reason };
    let mut out = String::with_capacity(pem.len());
    let mut in_block = false;
    let mut body_lines = 0usize;
    let mut blocks = 0usize;
    for (index, raw) in pem.lines().enumerate() {
        let n = index + 1;
        let line = raw.trim();
        if !in_block {
            if line.is_empty() {
                continue;
            }
            if line != BEGIN_CERT {
                return Err(invalid(if line.starts_with("-----BEGIN ") {
                    format!("line {n}: {line:?} is not a certificate; only CERTIFICATE blocks are allowed")
                } else {
                    format!("line {n}: text outside a {BEGIN_CERT} block")
                }));
            }
            in_block = true;
            body_lines = 0;
        } else if line == END_CERT {
            if body_lines == 0 {
                return Err(invalid(format!("line {n}: empty certificate block")));
            }
            in_block = false;
            blocks += 1;
        } else if line.is_empty() || !line.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return Err(invalid(format!("line {n}: expected base64 or {END_CERT} inside a certificate block")));
        } else {
            body_lines += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if in_block {
        return Err(invalid(format!("the last certificate block has no {END_CERT} line")));
    }
    if blocks == 0 {
        return Err(invalid(format!("no {BEGIN_CERT} block")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["a", "demo", "manager0", "a-b-c", &"x".repeat(63)] {
            assert_eq!(check_name("host_name", ok), Ok(()), "{ok}");
        }
        for bad in ["", "Demo", "a_b", "-a", "a-", "a.b", "ä", &"x".repeat(64)] {
            assert!(
                matches!(check_name("host_name", bad), Err(Error::InvalidName { field: "host_name", .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn endpoints_are_host_port() {
        for ok in ["10.0.0.5:7443", "coord.example.com:1", "[fd00::5]:7443", "localhost:65535"] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "10.0.0.5",
            "10.0.0.5:",
            ":7443",
            "10.0.0.5:0",
            "10.0.0.5:65536",
            "fd00::5:7443",
            "[fd00::5:7443",
            "a b:1",
            "-a:1",
            "a:+1",
            "h'x:1",
            "[]:1",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agent_urls_are_plain_https() {
        assert_eq!(check_agent_url("https://10.0.0.5:7443/v1/agent/flotilla-agent"), Ok(()));
        assert_eq!(check_agent_url("https://[fd00::5]:7443/v1/agent/flotilla-agent?v=1"), Ok(()));
        for bad in [
            "http://10.0.0.5/a",
            "https:///a",
            "https://u:p@h/a",
            "https://h/a b",
            "https://h/a'b",
            "https://h/a\"b",
            "https://h/a\nb",
            "https://h/$(x)`",
        ] {
            assert!(check_agent_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_url_safe() {
        assert_eq!(check_token(&"ab12".repeat(16)), Ok(()));
        assert_eq!(check_token("AZaz09._~+/=-"), Ok(()));
        for bad in ["", "a b", "a\nb", "a'b", &"a".repeat(513)] {
            assert!(matches!(check_token(bad), Err(Error::InvalidToken { .. })));
        }
    }

    #[test]
    fn ca_pem_is_normalized() {
        let pem = "\r\n  -----BEGIN CERTIFICATE-----\r\nQUJD\r\nREVG==\r\n-----END CERTIFICATE-----\r\n\r\n\
                   -----BEGIN CERTIFICATE-----\nR0hJ\n-----END CERTIFICATE-----";
        assert_eq!(
            normalize_ca_pem(pem).as_deref(),
            Ok("-----BEGIN CERTIFICATE-----\nQUJD\nREVG==\n-----END CERTIFICATE-----\n\
                -----BEGIN CERTIFICATE-----\nR0hJ\n-----END CERTIFICATE-----\n")
        );
    }

    #[test]
    fn ca_pem_refuses_anything_else() {
        for key in [
            "-----BEGIN PRIVATE KEY-----",
            "-----BEGIN EC PRIVATE KEY-----",
            "-----BEGIN RSA PRIVATE KEY-----",
            "-----begin private key-----",
        ] {
            let pem = format!("{BEGIN_CERT}\nQUJD\n{END_CERT}\n{key}\nQUJD\n-----END PRIVATE KEY-----\n");
            assert_eq!(normalize_ca_pem(&pem), Err(Error::PrivateKeyInCa));
        }
        for bad in [
            "",
            "\n\n",
            "hello",
            "-----BEGIN PUBLIC KEY-----\nQUJD\n-----END PUBLIC KEY-----\n",
            "-----BEGIN CERTIFICATE-----\nQUJD\n",
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nQU JD\n-----END CERTIFICATE-----\n",
            "subject=CN=x\n-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n",
        ] {
            assert!(matches!(normalize_ca_pem(bad), Err(Error::InvalidCaPem { .. })), "{bad:?}");
        }
    }

    #[test]
    fn debug_redacts_the_token() {
        let inputs = HostInputs {
            cluster: "demo".into(),
            host_name: "node0".into(),
            coordinator: vec!["10.0.0.5:7443".into()],
            ca_pem: String::new(),
            join_token: Some("s3cr3t-token".into()),
            agent: AgentBinary { url: String::new(), sha256: String::new(), version: String::new() },
            engine: Engine::Preinstalled,
            insecure_registries: vec![],
            heartbeat_interval_s: DEFAULT_HEARTBEAT_INTERVAL_S,
            engine_tls: false,
        };
        let debug = format!("{inputs:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
