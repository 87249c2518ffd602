//! The lab's images, built on this machine from Debian packages and our own binaries — no
//! registry is ever contacted. Each recipe is a script in `images/` (embedded here), and
//! each image is tagged by a hash of its recipe, so it builds once per machine and a
//! rebuild of an unchanged recipe is a no-op. Progress lines go to stderr as they come.
//!
//! - `host`: Debian bookworm, systemd, cloud-init (NoCloud only), Docker Engine.
//! - `consul`: Debian bullseye's `consul` 1.8.7 on a scratch image.
//! - `hello`: busybox-static, prints a hello line (the smoke test's workload).
//! - `registry`: Debian's `docker-registry` (the lab registry).

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::engine::EngineAddress;

const COMMON: &str = include_str!("images/common.sh");
const RECIPES: [(&str, &str); 4] = [
    ("registry", include_str!("images/registry.sh")),
    ("hello", include_str!("images/hello.sh")),
    ("consul", include_str!("images/consul.sh")),
    ("host", include_str!("images/host.sh")),
];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("lab image recipes: {0}")]
    Io(#[from] std::io::Error),
    #[error("building the lab image '{name}' failed (exit {code}); its last lines:\n{tail}")]
    Failed { name: String, code: i32, tail: String },
    #[error("the lab image recipe '{0}' printed no tag")]
    NoTag(String),
}

/// The tags of the four lab images.
#[derive(Clone, Debug, Default)]
pub struct LabImages {
    pub host: String,
    pub consul: String,
    pub hello: String,
    pub registry: String,
}

/// Builds every lab image that is missing on `engine` (a no-op for those whose recipe is
/// unchanged). With `quiet`, progress lines are collected and shown only on failure.
pub async fn ensure(quiet: bool, engine: &EngineAddress) -> Result<LabImages, ImageError> {
    // Fast path: every image already exists under its recipe's tag (no bash, no temp dir).
    if let Some(images) = present(engine).await {
        return Ok(images);
    }
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("common.sh"), COMMON)?;
    for (name, body) in RECIPES {
        std::fs::write(dir.path().join(format!("{name}.sh")), body)?;
    }
    let mut out = LabImages::default();
    for (name, _) in RECIPES {
        let tag = build(dir.path(), name, quiet, engine).await?;
        match name {
            "host" => out.host = tag,
            "consul" => out.consul = tag,
            "hello" => out.hello = tag,
            _ => out.registry = tag,
        }
    }
    Ok(out)
}

/// The tag a recipe builds: `flotilla/lab-<name>:<first 12 hex of sha256(recipe ++ common.sh)>`
/// (the same computation as `common.sh`'s).
pub fn tag(name: &str, recipe: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(recipe.as_bytes());
    h.update(COMMON.as_bytes());
    format!("flotilla/lab-{name}:{}", &hex::encode(h.finalize())[..12])
}

/// The lab host image's tag: what a lab host is launched from when `images.host` is empty.
pub fn default_host() -> String {
    RECIPES.iter().find(|(name, _)| *name == "host").map(|(name, body)| tag(name, body)).unwrap_or_default()
}

/// All four images, when each exists under its recipe's tag.
async fn present(engine: &EngineAddress) -> Option<LabImages> {
    let out = engine
        .docker_cli()
        .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "--filter", "label=flotilla.recipe-hash"])
        .output()
        .await
        .ok()?;
    let have = String::from_utf8_lossy(&out.stdout).to_string();
    let mut images = LabImages::default();
    for (name, body) in RECIPES {
        let t = tag(name, body);
        if !have.lines().any(|l| l == t) {
            return None;
        }
        match name {
            "host" => images.host = t,
            "consul" => images.consul = t,
            "hello" => images.hello = t,
            _ => images.registry = t,
        }
    }
    Some(images)
}

async fn build(dir: &Path, name: &str, quiet: bool, engine: &EngineAddress) -> Result<String, ImageError> {
    let mut bash = tokio::process::Command::new("bash");
    engine.aim(&mut bash);
    let mut child = bash
        .arg(dir.join(format!("{name}.sh")))
        .env("FLOTILLA_IMAGES_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so an interrupted build is stopped whole (bash's trap
        // cleans up; debootstrap does not keep running).
        .process_group(0)
        .spawn()?;
    let mut group = KillGroup(child.id());
    let stderr = child.stderr.take().expect("piped stderr");
    let progress = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut tail: Vec<String> = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if !quiet {
                eprintln!("{line}");
            }
            tail.push(line);
            if tail.len() > 30 {
                tail.remove(0);
            }
        }
        tail
    });
    let output = child.wait_with_output().await?;
    group.disarm();
    let tail = progress.await.unwrap_or_default();
    if !output.status.success() {
        return Err(ImageError::Failed {
            name: name.to_string(),
            code: output.status.code().unwrap_or(-1),
            tail: tail.join("\n"),
        });
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .map(|l| l.trim().to_string())
        .filter(|l| l.starts_with("flotilla/lab-"))
        .ok_or_else(|| ImageError::NoTag(name.to_string()))
}

/// SIGTERMs a build's process group if the build is abandoned (Ctrl-C of deploy) before it
/// finished; disarmed once the build has exited. Signals exactly that group, through the
/// `killpg` system call (never a `kill` command line, whose argument parsing could widen it).
struct KillGroup(Option<u32>);

impl KillGroup {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) else {
            return;
        };
        if let Some(pgid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::TERM);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_follow_the_recipe_hash_of_common_sh() {
        // The hello recipe's tag as common.sh computes it (sha256 of recipe ++ common.sh).
        let t = super::tag("hello", super::RECIPES[1].1);
        assert!(t.starts_with("flotilla/lab-hello:") && t.len() == "flotilla/lab-hello:".len() + 12, "{t}");
        assert_ne!(t, super::tag("hello", "changed"));
    }
}
