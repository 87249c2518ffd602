//! `coordinator bake`: a host image with Docker Engine and the agent already installed — a
//! committed image in the lab, an AMI on EC2 — so hosts booted from it skip both (their
//! cloud-init log says so), need no package mirror at boot, and pass image audits.
//!
//! One flow for every provider ([`run`]), dispatched by [`bake`]; what a provider does is a
//! [`Backend`] (the contract lives in [`crate::providers::bake`]; the lab's backend is
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
//!    checks that nothing in [`secret_path`](crate::providers::bake::secret_path)'s patterns
//!    is left, stops it, and captures it with the facts of [`Facts`] as labels.
//! 6. Always — success, failure, timeout, Ctrl-C — the builder and everything made for it
//!    are removed, and the endpoint stops.

pub mod endpoint;

use std::cell::RefCell;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control_plane::agent_binary::{AgentBinary, AgentBinaryError};
use crate::poll::{Attempt, PollError, poll_until};
use crate::providers::ProviderError;
use crate::providers::ProviderKind;
use crate::providers::aws::{self, AwsSettings};
use crate::providers::bake::{Backend, BackendError, Base, BuilderState, CaptureError, Facts, Image, Recipe, Reported};
use crate::providers::lab::{self, LabError};
use crate::ui::Progress;

/// How often the builder is asked how far it is.
const POLL_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    /// The operator asked for something the provider cannot do (exit code 64).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    AgentBinary(#[from] AgentBinaryError),
    #[error("the bake's agent endpoint: loading the agent binary: {0}")]
    LoadAgent(#[source] tokio::task::JoinError),
    #[error("the bake's agent endpoint: a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("the bake's throwaway CA: {0}")]
    Pki(#[from] crate::control_plane::pki::PkiError),
    #[error("the bake's agent endpoint: {0}")]
    EndpointTls(#[source] flotilla_proto::tls::TlsError),
    #[error(
        "the bake's agent endpoint: cannot listen on {ip}: {source} (the bake listens where builders reach it: --advertise must be an address of this machine)"
    )]
    Listen { ip: IpAddr, source: std::io::Error },
    #[error("the bake's agent endpoint: {0}")]
    LocalAddr(#[source] std::io::Error),
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
    #[error("interrupted; nothing was captured")]
    Interrupted,
    #[error("removing the builder failed: {cleanup}{}; run the same bake again (it removes a previous builder first)", bake.as_ref().map(|b| format!(" (after the bake itself failed: {b})")).unwrap_or_default())]
    Cleanup { cleanup: String, bake: Option<String> },
    /// A failpoint's injected error (a `failpoints` build under test: [`crate::failpoint`]).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

impl From<BackendError> for BakeError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Usage(m) => BakeError::Usage(m),
            BackendError::Provider(e) => BakeError::Provider(e),
            BackendError::Capture(e) => BakeError::Capture(e),
            BackendError::Injected(e) => BakeError::Injected(e),
        }
    }
}

impl From<LabError> for BakeError {
    fn from(e: LabError) -> Self {
        BakeError::Provider(e.into())
    }
}

impl From<aws::AwsError> for BakeError {
    fn from(e: aws::AwsError) -> Self {
        BakeError::Provider(e.into())
    }
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
    pub aws: AwsSettings,
    /// lab: this machine's Engine (`[lab]`).
    pub lab: lab::LabSettings,
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
            let state = tempfile::tempdir().map_err(BakeError::TempDir)?;
            let provider = aws::Aws::connect(&opts.scope, &opts.aws, state.path()).await?;
            p.step("bake", format!("EC2 at {} ({})", provider.endpoint, provider.region));
            let backend = aws::bake::AwsBaker::new(provider, &opts.scope, advertise, &opts.instance_type);
            run(&backend, &opts, &p).await
        }
        ProviderKind::Lab => {
            lab::bake::check_name(&opts.name)?;
            let engine = lab::engine::LabEngine::connect(opts.lab.engine()).await?;
            let images = if opts.base.is_none() {
                p.step("bake", "lab images (built once per recipe; a no-op when present)");
                lab::images::ensure(opts.quiet, &engine.address).await.map_err(LabError::from)?
            } else {
                lab::images::LabImages::default()
            };
            let backend = lab::bake::LabBaker::new(engine, &opts.scope, images)?;
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
    let agent = tokio::task::spawn_blocking(move || AgentBinary::load(&path)).await.map_err(BakeError::LoadAgent)??;
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
        // A bake interrupted between its capture and its cleanup left its image's last touches
        // undone, and its builder.
        backend.finish(&image).await?;
        backend.cleanup().await.map_err(|c| BakeError::Cleanup { cleanup: c.to_string(), bake: None })?;
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
    crate::failpoint!("bake.builder.before");
    let builder = backend.launch(base, &user_data).await?;
    crate::failpoint!("bake.builder.after");
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
    let engine_version = wait_for_builder(backend, &served, &builder, opts.timeout, p).await?;
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
    let image = backend.capture(&facts).await?;
    crate::failpoint!("bake.capture.after");
    Ok(image)
}

/// Polls the builder (bounded by `timeout`) until it is complete — the Engine version it
/// installed — or failed; prints the builder's newest `flotilla-bake:` line whenever it changed
/// since the last poll (lines logged between two polls are not all shown).
async fn wait_for_builder<B: Backend>(
    backend: &B,
    served: &endpoint::Endpoint,
    builder: &str,
    timeout: Duration,
    p: &Progress,
) -> Result<String, BakeError> {
    let last: RefCell<Option<String>> = RefCell::new(None);
    let waited = poll_until("the builder to finish installing", Instant::now() + timeout, POLL_EVERY, || {
        let last = &last;
        async move {
            let reported: Option<Reported> = served.reported();
            match backend.poll(reported.as_ref()).await? {
                BuilderState::Complete { engine_version } => Ok(Attempt::Done(engine_version)),
                BuilderState::Failed(reason) => Err(BakeError::BuilderFailed {
                    builder: builder.to_string(),
                    reason,
                    output: backend.output(reported.as_ref()).await,
                }),
                BuilderState::Running(line) => {
                    if line.is_some() && line != *last.borrow() {
                        p.host("builder", line.as_deref().unwrap_or_default());
                        *last.borrow_mut() = line.clone();
                    }
                    Ok(Attempt::NotYet(line.unwrap_or_else(|| "installing".into())))
                }
            }
        }
    })
    .await;
    match waited {
        Ok(engine_version) => Ok(engine_version),
        Err(PollError::Failed(e)) => Err(e),
        Err(PollError::TimedOut { .. }) => Err(BakeError::Timeout {
            builder: builder.to_string(),
            after: timeout,
            output: backend.output(served.reported().as_ref()).await,
        }),
    }
}
