//! `coordinator bake`: a host image with Docker Engine and the agent already installed — a
//! committed image in the lab, an AMI on EC2 — so hosts booted from it skip both (their
//! cloud-init log says so), need no package mirror at boot, and pass image audits.
//!
//! One flow for every provider ([`run`]); what a provider does is a [`Backend`] (the lab's is
//! `providers::lab::bake::LabBaker`; EC2's — RunInstances, StopInstances, CreateImage with
//! the same facts as tags, TerminateInstances — is `providers::aws::bake::AwsBaker`):
//!
//! 1. Resolve the base image, the agent binary (its version and SHA-256), and the Engine
//!    version the base comes with when the provider can tell before booting it.
//! 2. Reuse: an image of the same name whose labels say the same base, agent and Engine is
//!    the answer, and nothing boots.
//! 3. A CA that lives only in this process signs a certificate for a short-lived HTTPS
//!    endpoint serving the agent binary where the builder can reach it ([`endpoint`]). The
//!    bake user-data carries that CA's certificate (never a key); the bake script deletes it
//!    when it succeeds, and the CA's key is gone when the bake ends.
//! 4. The builder boots from the base with the bake user-data — no token, no cluster name, no
//!    agent config — and is polled, bounded, until it writes `bake-complete` or `bake-failed`;
//!    its `flotilla-bake:` lines are the progress. A builder the baker cannot look into (EC2:
//!    [`Backend::reports`]) POSTs its outcome and the tail of its cloud-init output to the
//!    endpoint instead, with this bake's nonce, and seals itself at the shutdown before capture.
//! 5. Failure: the error carries the builder's cloud-init output. Success: the backend cleans
//!    the builder for capture (cloud-init state and logs, machine-id, the Engine's identity),
//!    checks that nothing in [`secret_path`]'s patterns is left, stops it, and captures it
//!    with the facts of [`Facts`] as labels.
//! 6. Always — success, failure, timeout, Ctrl-C — the builder and everything made for it
//!    are removed, and the endpoint stops.

pub mod endpoint;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_cloud_init::paths::{BAKE_CA_PATH, BAKE_COMPLETE_PATH, BAKE_SCRIPT_PATH};

use crate::control_plane::agent_binary::{AgentBinary, AgentBinaryError};
use crate::providers::ProviderKind;
use crate::providers::aws::{self, AwsError};
use crate::providers::lab::{self, LabError};
use crate::ui::Progress;
use endpoint::Reported;

/// How often the builder is asked how far it is.
const POLL_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error("{0}")]
    Usage(String),
    #[error("the local Docker Engine does not answer ({0}); the lab needs it: start dockerd and retry")]
    NoEngine(String),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    AgentBinary(#[from] AgentBinaryError),
    #[error("the bake's throwaway CA: {0}")]
    Pki(#[from] crate::control_plane::pki::PkiError),
    #[error("the bake's agent endpoint: {0}")]
    Endpoint(String),
    #[error("bake user-data: {0}")]
    UserData(#[from] flotilla_cloud_init::Error),
    #[error(
        "the builder {builder} failed: {reason}\n--- its cloud-init output (/var/log/cloud-init-output.log) ---\n{output}"
    )]
    BuilderFailed { builder: String, reason: String, output: String },
    #[error(
        "the builder {builder} did not finish installing within {after:?} (raise --timeout if it was still making progress)\n--- its cloud-init output (/var/log/cloud-init-output.log) ---\n{output}"
    )]
    Timeout { builder: String, after: Duration, output: String },
    #[error("cleaning the builder {builder} for capture failed (exit {code}): {output}")]
    CleanFailed { builder: String, code: i64, output: String },
    #[error("refusing to capture {builder}: after cleaning it still holds {}; nothing was captured", found.join(", "))]
    Unclean { builder: String, found: Vec<String> },
    #[error("interrupted; nothing was captured")]
    Interrupted,
    #[error("removing the builder failed: {cleanup}{}; run the same bake again (it removes a previous builder first)", bake.as_ref().map(|b| format!(" (after the bake itself failed: {b})")).unwrap_or_default())]
    Cleanup { cleanup: String, bake: Option<String> },
}

/// What an image is made of: an image with the same recipe (and name) is reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    /// The provider's id of the base image (lab: `sha256:…`; EC2: `ami-…`).
    pub base: String,
    pub agent_version: String,
    pub agent_sha256: String,
    /// The Engine the base comes with, when the provider can tell before booting it (the
    /// lab: its `dockerd --version`); `None` matches any.
    pub engine_version: Option<String>,
}

impl Recipe {
    /// A stable tag for the recipe: the agent version (with characters image tags do not
    /// allow replaced by `_`) and 12 hex digits of a SHA-256 over every field.
    pub fn tag(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [&self.base, &self.agent_version, &self.agent_sha256] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(self.engine_version.as_deref().unwrap_or("").as_bytes());
        let version: String = self
            .agent_version
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
            .collect();
        format!("{version}-{}", &hex::encode(h.finalize())[..12])
    }
}

/// What a baked image says about itself (lab: labels `flotilla.bake.*`; EC2: tags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub name: String,
    pub tag: String,
    pub base: String,
    pub agent_version: String,
    pub agent_sha256: String,
    pub engine_version: String,
}

/// The base image a bake starts from.
#[derive(Clone, Debug)]
pub struct Base {
    /// As the operator named it (or the provider's default).
    pub reference: String,
    /// The provider's id for it.
    pub id: String,
}

/// A baked image.
#[derive(Clone, Debug)]
pub struct Image {
    /// What `deploy --image` takes (lab: `name:tag`; EC2: the AMI id).
    pub reference: String,
    pub id: String,
    pub engine_version: String,
}

/// How far the builder is, as seen from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuilderState {
    /// Still installing; the last `flotilla-bake:` line it logged, if any.
    Running(Option<String>),
    /// It wrote `bake-complete`; the Engine version it found.
    Complete { engine_version: String },
    /// It wrote `bake-failed` (the reason), cloud-init ended without the bake script
    /// finishing, or the builder stopped.
    Failed(String),
}

/// A provider's part of a bake. Every method is idempotent; [`Backend::cleanup`] is called on
/// every path out of [`run`], also when an earlier method failed half-way.
#[allow(async_fn_in_trait)] // used generically by `run`, never as a trait object or across spawn
pub trait Backend {
    /// `lab`, `aws`: for messages.
    fn provider(&self) -> ProviderKind;
    /// How the bake user-data gets Docker Engine onto the builder.
    fn engine(&self) -> flotilla_cloud_init::Engine;
    /// Whether the builder must report to the bake's endpoint (and seal itself at shutdown)
    /// because the provider cannot look into it (EC2); the lab reads the builder's files.
    fn reports(&self) -> bool {
        false
    }
    /// Refuses a name the provider cannot give an image, saying what it takes.
    fn check_name(&self, name: &str) -> Result<(), BakeError>;
    /// The base image (`None`: the provider's default), checked to exist.
    async fn base(&self, requested: Option<&str>) -> Result<Base, BakeError>;
    /// The Engine version `base` comes with, when the provider can tell without booting it.
    async fn engine_version(&self, base: &Base) -> Result<Option<String>, BakeError>;
    /// An image of this name already baked from `recipe`.
    async fn find(&self, name: &str, recipe: &Recipe) -> Result<Option<Image>, BakeError>;
    /// Removes what an interrupted bake left, makes the builder's network, and returns the
    /// address of this machine the builder reaches (where the agent is served).
    async fn prepare(&self) -> Result<IpAddr, BakeError>;
    /// Boots the builder from `base` with `user_data`; returns its name or instance id.
    async fn launch(&self, base: &Base, user_data: &str) -> Result<String, BakeError>;
    /// Where the builder is; `reported`: what it reported to the endpoint so far.
    async fn poll(&self, reported: Option<&Reported>) -> Result<BuilderState, BakeError>;
    /// The builder's cloud-init output (or the one it reported), or why it could not be read.
    async fn output(&self, reported: Option<&Reported>) -> String;
    /// Cleans the builder for capture, checks it, stops it and captures it as `facts` say.
    async fn capture(&self, facts: &Facts) -> Result<Image, BakeError>;
    /// Removes the builder and everything made for it (never the captured image).
    async fn cleanup(&self) -> Result<(), BakeError>;
}

/// `coordinator bake`'s options.
#[derive(Clone, Debug)]
pub struct BakeOptions {
    pub provider: ProviderKind,
    /// The base image; `None`: the provider's default (the lab host image; on EC2, Amazon
    /// Linux 2023).
    pub base: Option<String>,
    /// The baked image's name (lab: a repository; the tag is [`Recipe::tag`]).
    pub name: String,
    /// Names the builder's resources (lab: `flotilla-<scope>.bake` network), so bakes under
    /// different `--cluster`s never share them.
    pub scope: String,
    /// How long the builder gets to install everything.
    pub timeout: Duration,
    pub agent_binary: PathBuf,
    /// Tests: an agent download URL instead of the bake's own endpoint.
    pub agent_url: Option<String>,
    /// aws: region, endpoint, VPC, subnets, key pair, root volume size (`[aws]`).
    pub aws: crate::ops::cluster_config::AwsSettings,
    /// aws: the address of this machine the builder reaches (`--advertise`).
    pub advertise: Option<String>,
    /// aws: the builder's instance type.
    pub instance_type: String,
    pub quiet: bool,
}

/// The result (`--output json` prints it).
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub provider: ProviderKind,
    pub image: String,
    pub image_id: String,
    /// An image of the same name and recipe existed: nothing was booted.
    pub reused: bool,
    pub base: String,
    pub base_id: String,
    pub agent_version: String,
    pub agent_sha256: String,
    pub engine_version: String,
    pub duration_s: f64,
}

/// The default `--name`.
pub const DEFAULT_NAME: &str = "flotilla/baked-host";

/// Runs a bake with the provider `opts` names.
pub async fn bake(opts: BakeOptions) -> Result<Report, BakeError> {
    let p = Progress::new(opts.quiet);
    let report = match opts.provider {
        ProviderKind::Aws => {
            aws::bake::check_name(&opts.name)?;
            let advertise = aws::bake::advertise(opts.advertise.as_deref())?;
            // The provider keeps launch generations under its state dir; a bake launches by
            // its own ClientToken and keeps nothing.
            let state = tempfile::tempdir().map_err(|e| BakeError::Endpoint(format!("a temporary directory: {e}")))?;
            let provider = aws::Aws::connect(&opts.scope, &opts.aws, state.path()).await?;
            p.step("bake", format!("EC2 at {} ({})", provider.endpoint, provider.region));
            let backend = aws::bake::AwsBaker::new(provider, &opts.scope, advertise, &opts.instance_type);
            run(&backend, &opts, &p).await
        }
        ProviderKind::Lab => {
            lab::bake::check_name(&opts.name)?;
            let docker = lab::connect_engine().await.map_err(BakeError::NoEngine)?;
            let images = if opts.base.is_none() {
                p.step("bake", "lab images (built once per recipe; a no-op when present)");
                lab::images::ensure(opts.quiet).await.map_err(LabError::from)?
            } else {
                lab::images::LabImages::default()
            };
            let backend = lab::bake::LabBaker::new(docker, &opts.scope, images)?;
            run(&backend, &opts, &p).await
        }
    };
    p.finish();
    report
}

/// The flow of the module docs, on any backend.
pub async fn run<B: Backend>(backend: &B, opts: &BakeOptions, p: &Progress) -> Result<Report, BakeError> {
    backend.check_name(&opts.name)?;
    let base = backend.base(opts.base.as_deref()).await?;
    let path = opts.agent_binary.clone();
    let agent = tokio::task::spawn_blocking(move || AgentBinary::load(&path))
        .await
        .map_err(|e| BakeError::Endpoint(format!("loading the agent binary: {e}")))??;
    let agent = Arc::new(agent);
    let engine = backend.engine_version(&base).await?;
    let recipe = Recipe {
        base: base.id.clone(),
        agent_version: flotilla_agent::VERSION.to_string(),
        agent_sha256: agent.sha256.clone(),
        engine_version: engine.clone(),
    };
    p.step(
        "bake",
        format!(
            "{}:{} on the {} provider: base {}, agent {} (sha256 {}…), Engine {}",
            opts.name,
            recipe.tag(),
            backend.provider(),
            base.reference,
            recipe.agent_version,
            &recipe.agent_sha256[..12],
            engine.as_deref().unwrap_or("(whatever the base installs)")
        ),
    );
    let report = |image: &Image, reused: bool| Report {
        provider: backend.provider(),
        image: image.reference.clone(),
        image_id: image.id.clone(),
        reused,
        base: base.reference.clone(),
        base_id: base.id.clone(),
        agent_version: recipe.agent_version.clone(),
        agent_sha256: recipe.agent_sha256.clone(),
        engine_version: image.engine_version.clone(),
        duration_s: p.elapsed().as_secs_f64(),
    };
    if let Some(image) = backend.find(&opts.name, &recipe).await? {
        p.step("bake", format!("{} already holds this agent and Engine: reusing it, nothing booted", image.reference));
        return Ok(report(&image, true));
    }
    let outcome = tokio::select! {
        r = build(backend, opts, &base, &recipe, agent, p) => r,
        Ok(()) = tokio::signal::ctrl_c() => Err(BakeError::Interrupted),
    };
    p.step(
        "bake",
        if backend.reports() {
            "removing the builder (terminated) and its security group"
        } else {
            "removing the builder, its volume and its network"
        },
    );
    let cleaned = backend.cleanup().await;
    match (outcome, cleaned) {
        (Ok(image), Ok(())) => {
            p.step("bake", format!("{} ({}) ready", image.reference, image.id));
            Ok(report(&image, false))
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(c)) => Err(BakeError::Cleanup { cleanup: c.to_string(), bake: None }),
        (Err(e), Err(c)) => Err(BakeError::Cleanup { cleanup: c.to_string(), bake: Some(e.to_string()) }),
    }
}

/// Steps 3–5: serve the agent, boot the builder, wait for it, capture it.
async fn build<B: Backend>(
    backend: &B,
    opts: &BakeOptions,
    base: &Base,
    recipe: &Recipe,
    agent: Arc<AgentBinary>,
    p: &Progress,
) -> Result<Image, BakeError> {
    let ip = backend.prepare().await?;
    let served = endpoint::Endpoint::start(ip, agent).await?;
    p.step("bake", format!("serving the agent at {} (a throwaway CA, in memory only)", served.url()));
    let user_data = flotilla_cloud_init::render_bake(&flotilla_cloud_init::BakeInputs {
        ca_pem: served.ca_pem().to_string(),
        agent: flotilla_cloud_init::AgentBinary {
            url: opts.agent_url.clone().unwrap_or_else(|| served.url().to_string()),
            sha256: recipe.agent_sha256.clone(),
            version: recipe.agent_version.clone(),
        },
        engine: backend.engine(),
        report: backend.reports().then(|| flotilla_cloud_init::BakeReport {
            url: served.report_url().to_string(),
            nonce: served.nonce().to_string(),
        }),
    })?;
    let builder = backend.launch(base, &user_data).await?;
    p.host("builder", format!("{builder} booting from {}", base.reference));
    if backend.reports() {
        p.host(
            "builder",
            format!(
                "waiting (up to {:?}) for its report at {}: it cannot be looked into from here",
                opts.timeout,
                served.report_url()
            ),
        );
    }
    let deadline = Instant::now() + opts.timeout;
    let mut last = None;
    let engine_version = loop {
        let reported = served.reported();
        match backend.poll(reported.as_ref()).await? {
            BuilderState::Complete { engine_version } => break engine_version,
            BuilderState::Failed(reason) => {
                return Err(BakeError::BuilderFailed {
                    builder,
                    reason,
                    output: backend.output(reported.as_ref()).await,
                });
            }
            BuilderState::Running(line) => {
                if line.is_some() && line != last {
                    p.host("builder", line.as_deref().unwrap_or_default());
                    last = line;
                }
            }
        }
        if Instant::now() > deadline {
            return Err(BakeError::Timeout {
                builder,
                after: opts.timeout,
                output: backend.output(served.reported().as_ref()).await,
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    // The builder has the agent: nothing may fetch it any more.
    drop(served);
    p.host("builder", format!("installed: agent {}, Engine {engine_version}", recipe.agent_version));
    let facts = Facts {
        name: opts.name.clone(),
        tag: Recipe { engine_version: Some(engine_version.clone()), ..recipe.clone() }.tag(),
        base: recipe.base.clone(),
        agent_version: recipe.agent_version.clone(),
        agent_sha256: recipe.agent_sha256.clone(),
        engine_version,
    };
    p.step(
        "bake",
        if backend.reports() {
            "stopping the builder (its seal unit cleans cloud-init state and logs, machine-id, Engine identity at that shutdown), then capturing it"
        } else {
            "cleaning the builder for capture (cloud-init state and logs, machine-id, Engine identity), then stopping it"
        },
    );
    backend.capture(&facts).await
}

/// Whether a path left in a builder would make its image carry a secret or an identity: a
/// key, token or certificate (by name), the agent's config or state (but the bake marker),
/// the bake's CA or script, cloud-init's per-instance state and logs, the Engine's identity.
/// Backends refuse to capture a builder with such a path.
pub fn secret_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let by_name = [".pem", ".key", ".crt", ".csr", ".p12", ".pfx", ".jks"].iter().any(|s| name.ends_with(s))
        // `token`, `join-token`, `x.token`: not `tokenize.py` and its bytecode.
        || name.ends_with("token")
        || name.ends_with("token.txt")
        || name.starts_with("id_rsa")
        || name.starts_with("id_ecdsa")
        || name.starts_with("id_ed25519")
        || name.starts_with("ssh_host_")
        || name == "key.json";
    let by_place = path.starts_with("/etc/flotilla")
        || (path.starts_with("/var/lib/flotilla/") && path != BAKE_COMPLETE_PATH)
        || path == BAKE_CA_PATH
        || path == BAKE_SCRIPT_PATH
        || (path.starts_with("/var/lib/cloud/") && !path.starts_with("/var/lib/cloud/seed"))
        || path.starts_with("/var/log/cloud-init")
        || path == "/var/lib/docker/engine-id";
    by_name || by_place
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_paths_are_recognised_and_ordinary_ones_are_not() {
        for p in [
            "/etc/flotilla/token",
            "/etc/flotilla/ca.pem",
            "/etc/flotilla/agent.toml",
            "/var/lib/flotilla/identity.pem",
            "/var/lib/flotilla/key",
            BAKE_CA_PATH,
            BAKE_SCRIPT_PATH,
            "/var/lib/cloud/instances/flotilla-x.bake-builder/user-data.txt",
            "/var/lib/cloud/instance",
            "/var/log/cloud-init-output.log",
            "/etc/docker/key.json",
            "/root/.ssh/id_ed25519",
            "/etc/ssh/ssh_host_ecdsa_key",
            "/srv/server.KEY",
            "/etc/flotilla-join-token",
        ] {
            assert!(secret_path(p), "{p} should be refused");
        }
        for p in [
            BAKE_COMPLETE_PATH,
            "/var/lib/flotilla",
            "/usr/local/bin/flotilla-agent",
            "/usr/local/lib/flotilla",
            "/etc/systemd/system/flotilla-agent.service",
            "/var/lib/cloud",
            "/var/lib/cloud/seed/nocloud",
            "/etc/machine-id",
            "/home/admin/.bashrc",
            "/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db",
            "/usr/lib/python3.11/__pycache__/tokenize.cpython-311.pyc",
        ] {
            assert!(!secret_path(p), "{p} should pass");
        }
    }

    #[test]
    fn the_tag_follows_every_part_of_the_recipe() {
        let r = Recipe {
            base: "sha256:aa".into(),
            agent_version: "0.1.0+dev".into(),
            agent_sha256: "ab".repeat(32),
            engine_version: Some("20.10.24+dfsg1".into()),
        };
        let t = r.tag();
        assert!(t.starts_with("0.1.0_dev-") && t.len() == "0.1.0_dev-".len() + 12, "{t}");
        assert_eq!(t, r.clone().tag());
        for other in [
            Recipe { base: "sha256:bb".into(), ..r.clone() },
            Recipe { agent_sha256: "cd".repeat(32), ..r.clone() },
            Recipe { engine_version: Some("24.0.7".into()), ..r.clone() },
            Recipe { engine_version: None, ..r.clone() },
        ] {
            assert_ne!(other.tag(), t);
        }
    }
}
