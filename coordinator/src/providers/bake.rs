//! What a provider does for `coordinator bake`: the [`Backend`] contract and the types it
//! speaks — the [`Recipe`] an image is made from, the [`Facts`] it carries, the [`Base`] it
//! starts from, the [`Image`] it becomes, how far the builder is ([`BuilderState`]), what a
//! builder reported to the bake's endpoint ([`Reported`]), and which paths a captured image
//! must not hold ([`secret_path`]). The flow that drives a backend is `ops::bake`; the lab's
//! backend is [`super::lab::bake`], EC2's [`super::aws::bake`].

use std::net::IpAddr;

use flotilla_cloud_init::paths::{BAKE_CA_PATH, BAKE_COMPLETE_PATH, BAKE_SCRIPT_PATH};

use super::{ProviderError, ProviderKind};

/// What a backend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The operator asked for something the provider cannot do (a bad name, a missing
    /// `--advertise`, a base image that is not there).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// A failpoint's injected error (a `failpoints` build under test: [`crate::failpoint`]).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

impl From<super::lab::LabError> for BackendError {
    fn from(e: super::lab::LabError) -> Self {
        BackendError::Provider(e.into())
    }
}

impl From<super::aws::AwsError> for BackendError {
    fn from(e: super::aws::AwsError) -> Self {
        BackendError::Provider(e.into())
    }
}

/// Why a finished builder was not captured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cleaning the builder {builder} for capture failed (exit {code}): {output}")]
    CleanFailed { builder: String, code: i64, output: String },
    #[error("refusing to capture {builder}: after cleaning it still holds {}; nothing was captured", found.join(", "))]
    Unclean { builder: String, found: Vec<String> },
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

/// How a builder said its bake ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete { engine_version: String },
    Failed(String),
}

/// A builder's report to the bake's endpoint: its outcome and the tail of its cloud-init
/// output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    pub outcome: Outcome,
    pub output: String,
}

/// A provider's part of a bake. Every method is idempotent; [`Backend::cleanup`] is called on
/// every path out of the bake, also when an earlier method failed half-way.
#[allow(async_fn_in_trait)] // used generically by the bake's flow, never as a trait object or across spawn
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
    fn check_name(&self, name: &str) -> Result<(), BackendError>;
    /// The base image (`None`: the provider's default), checked to exist.
    async fn base(&self, requested: Option<&str>) -> Result<Base, BackendError>;
    /// The Engine version `base` comes with, when the provider can tell without booting it.
    async fn engine_version(&self, base: &Base) -> Result<Option<String>, BackendError>;
    /// An image of this name already baked from `recipe`.
    async fn find(&self, name: &str, recipe: &Recipe) -> Result<Option<Image>, BackendError>;
    /// Finishes what a bake interrupted after its capture left undone on the image `find`
    /// returned (AWS: its snapshots' tags, given once CreateImage has made them).
    async fn finish(&self, _image: &Image) -> Result<(), BackendError> {
        Ok(())
    }
    /// Removes what an interrupted bake left, makes the builder's network, and returns the
    /// address of this machine the builder reaches (where the agent is served).
    async fn prepare(&self) -> Result<IpAddr, BackendError>;
    /// Boots the builder from `base` with `user_data`; returns its name or instance id.
    async fn launch(&self, base: &Base, user_data: &str) -> Result<String, BackendError>;
    /// Where the builder is; `reported`: what it reported to the endpoint so far.
    async fn poll(&self, reported: Option<&Reported>) -> Result<BuilderState, BackendError>;
    /// The builder's cloud-init output (or the one it reported), or why it could not be read.
    async fn output(&self, reported: Option<&Reported>) -> String;
    /// Cleans the builder for capture, checks it, stops it and captures it as `facts` say.
    async fn capture(&self, facts: &Facts) -> Result<Image, BackendError>;
    /// Removes the builder and everything made for it (never the captured image).
    async fn cleanup(&self) -> Result<(), BackendError>;
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
