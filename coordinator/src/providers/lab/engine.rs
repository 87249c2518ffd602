//! This machine's Docker Engine: the one the lab's hosts, network and registry live on, and
//! the lab's images are built on.
//!
//! The lab never follows `DOCKER_HOST`: after `eval "$(coordinator env)"` it points at a
//! cluster's swarm leader, and a lab that followed it would build its images and look for its
//! hosts inside a manager — and `destroy` would find nothing there (issue 13). The lab has its
//! own setting instead ([`EngineAddress::resolve`]): `FLOTILLA_LAB_DOCKER_HOST`, else
//! `[lab] docker_host` in flotilla.toml (recorded in the cluster's `provider.json`, so
//! `destroy` uses what `deploy` used), else the local socket. When `DOCKER_HOST` is set, a note
//! says once that it is ignored, and whether it points at one of the lab's hosts.
//!
//! The `docker` commands the lab runs (image builds) get the same address as `DOCKER_HOST`,
//! and none of `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`, `DOCKER_CONTEXT` ([`EngineAddress::docker_cli`]).

use std::collections::HashMap;
use std::sync::Once;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;

use super::{LABEL_CLUSTER, LABEL_HOST, LABEL_IP, LABEL_KIND, LabError};

/// Flotilla's own variable for the lab's Engine (wins over `[lab] docker_host`).
pub const ENV: &str = "FLOTILLA_LAB_DOCKER_HOST";
/// The local socket, when nothing else is set.
pub const DEFAULT: &str = "unix:///var/run/docker.sock";
/// How long one Engine request may take, seconds (bollard's default).
const TIMEOUT_S: u64 = 120;
/// The `docker` CLI's variables that would point it elsewhere than the lab's Engine.
const CLI_VARS: [&str; 3] = ["DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"];

/// Where the lab's Engine address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `FLOTILLA_LAB_DOCKER_HOST`.
    Env,
    /// `[lab] docker_host` in flotilla.toml (or as the cluster's provider.json recorded it).
    Config,
    /// Neither: the local socket.
    Default,
}

/// The lab's Engine: `unix:///path` (or a bare absolute path), or `tcp://host:port` /
/// `http://host:port` without TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineAddress {
    pub url: String,
    pub origin: Origin,
}

impl Default for EngineAddress {
    fn default() -> Self {
        Self { url: DEFAULT.to_string(), origin: Origin::Default }
    }
}

impl std::fmt::Display for EngineAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = match self.origin {
            Origin::Env => format!("from {ENV}"),
            Origin::Config => "from [lab] docker_host".to_string(),
            Origin::Default => format!("the default; {ENV} or [lab] docker_host changes it"),
        };
        write!(f, "{} ({from})", self.url)
    }
}

impl EngineAddress {
    /// `FLOTILLA_LAB_DOCKER_HOST`, else `configured` (`[lab] docker_host`), else the local
    /// socket. `DOCKER_HOST` is never read.
    pub fn resolve(configured: &str) -> Self {
        Self::pick(std::env::var(ENV).ok().as_deref(), configured)
    }

    fn pick(env: Option<&str>, configured: &str) -> Self {
        let normal = |s: &str| if s.starts_with('/') { format!("unix://{s}") } else { s.to_string() };
        match (env.map(str::trim).filter(|e| !e.is_empty()), configured.trim()) {
            (Some(e), _) => Self { url: normal(e), origin: Origin::Env },
            (None, c) if !c.is_empty() => Self { url: normal(c), origin: Origin::Config },
            _ => Self::default(),
        }
    }

    /// A `docker` command aimed at this Engine whatever the shell's `DOCKER_*` say.
    pub fn docker_cli(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("docker");
        self.aim(&mut c);
        c
    }

    /// Points a command (the `docker` CLI, or a script that runs it) at this Engine.
    pub fn aim(&self, c: &mut tokio::process::Command) {
        c.env("DOCKER_HOST", &self.url);
        for v in CLI_VARS {
            c.env_remove(v);
        }
    }

    /// A client of this Engine (not yet asked anything).
    fn client(&self) -> Result<Docker, LabError> {
        let url = self.url.as_str();
        let made = if url.starts_with("unix://") {
            Docker::connect_with_unix(url, TIMEOUT_S, bollard::API_DEFAULT_VERSION)
        } else if url.starts_with("tcp://") || url.starts_with("http://") {
            Docker::connect_with_http(url, TIMEOUT_S, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(LabError::EngineAddress { address: self.to_string() });
        };
        made.map_err(|error| LabError::NoEngine { address: self.to_string(), error })
    }
}

/// The lab's Engine, connected (API version negotiated), with the address it was reached at.
#[derive(Clone, Debug)]
pub struct LabEngine {
    pub docker: Docker,
    pub address: EngineAddress,
}

impl LabEngine {
    /// Connects to `address`; says once when `DOCKER_HOST` is set that the lab ignores it.
    pub async fn connect(address: EngineAddress) -> Result<Self, LabError> {
        let docker = address
            .client()?
            .negotiate_version()
            .await
            .map_err(|error| LabError::NoEngine { address: address.to_string(), error })?;
        let engine = Self { docker, address };
        engine.note_docker_host().await;
        Ok(engine)
    }

    /// The Engine [`EngineAddress::resolve`] finds without a flotilla.toml setting (the
    /// variable, else the local socket): `lab-images`, and tests.
    pub async fn local() -> Result<Self, LabError> {
        Self::connect(EngineAddress::resolve("")).await
    }

    /// Prints, once per process, that `DOCKER_HOST` is ignored for the lab, naming the lab
    /// host it points at when it is one (as `coordinator env` sets it).
    async fn note_docker_host(&self) {
        static NOTED: Once = Once::new();
        let Some(set) = std::env::var("DOCKER_HOST").ok().filter(|v| !v.is_empty() && *v != self.address.url) else {
            return;
        };
        if NOTED.is_completed() {
            return;
        }
        let what = match self.lab_host_at(&set).await {
            Some((host, cluster)) => {
                format!("it points at {host} of lab cluster '{cluster}', as `coordinator env` sets it")
            }
            None => "it is not one of this Engine's lab hosts".to_string(),
        };
        NOTED.call_once(|| {
            eprintln!(
                "note: DOCKER_HOST={set} is ignored for the lab ({what}); the lab uses this machine's Engine at {}",
                self.address
            );
        });
    }

    /// The lab host (and its cluster) whose address `docker_host` (`tcp://IP:PORT`) names.
    async fn lab_host_at(&self, docker_host: &str) -> Option<(String, String)> {
        let ip = host_of(docker_host)?;
        let filters =
            HashMap::from([("label".to_string(), vec![format!("{LABEL_KIND}=host"), format!("{LABEL_IP}={ip}")])]);
        let found = self
            .docker
            .list_containers(Some(ListContainersOptions { all: true, filters: Some(filters), ..Default::default() }))
            .await
            .ok()?;
        let labels = found.into_iter().next()?.labels.unwrap_or_default();
        Some((labels.get(LABEL_HOST)?.clone(), labels.get(LABEL_CLUSTER)?.clone()))
    }
}

/// The host part of `tcp://HOST:PORT` (or `http(s)://`), as written.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    Some(hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flotillas_variable_wins_then_the_config_then_the_local_socket_and_docker_host_is_never_read() {
        assert_eq!(
            EngineAddress::pick(Some("unix:///run/x.sock"), "tcp://127.0.0.1:2375"),
            EngineAddress { url: "unix:///run/x.sock".into(), origin: Origin::Env }
        );
        assert_eq!(
            EngineAddress::pick(Some("  "), "/run/y.sock"),
            EngineAddress { url: "unix:///run/y.sock".into(), origin: Origin::Config }
        );
        assert_eq!(EngineAddress::pick(None, ""), EngineAddress::default());
        assert_eq!(EngineAddress::default().url, DEFAULT);
        assert!(EngineAddress::default().to_string().contains(ENV), "the default names how to change it");
    }

    #[test]
    fn an_address_the_lab_cannot_use_is_named() {
        let a = EngineAddress { url: "ssh://box".into(), origin: Origin::Config };
        let e = a.client().expect_err("ssh is refused").to_string();
        assert!(e.contains("ssh://box") && e.contains("[lab] docker_host"), "{e}");
    }

    #[test]
    fn the_docker_cli_is_aimed_at_the_lab_engine_whatever_the_shell_says() {
        let a = EngineAddress { url: "unix:///run/lab.sock".into(), origin: Origin::Env };
        let c = a.docker_cli();
        let envs: HashMap<_, _> = c.as_std().get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect();
        assert_eq!(envs.get(std::ffi::OsStr::new("DOCKER_HOST")), Some(&Some("unix:///run/lab.sock".into())));
        for v in CLI_VARS {
            assert_eq!(envs.get(std::ffi::OsStr::new(v)), Some(&None), "{v} is removed");
        }
    }

    #[test]
    fn the_host_of_a_docker_host_url() {
        assert_eq!(host_of("tcp://10.213.5.10:2376"), Some("10.213.5.10"));
        assert_eq!(host_of("tcp://manager0"), Some("manager0"));
        assert_eq!(host_of("unix:///var/run/docker.sock"), None);
    }
}
