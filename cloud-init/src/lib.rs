//! Renders the `#cloud-config` user-data that boots one Flotilla host, from typed inputs.
//! Pure: no I/O, no cloud types, no network; the same inputs always give the same bytes.
//!
//! Two entry points: [`render_host`] for a cluster host (EC2 instance or lab container) and
//! [`render_bake`] for an instance that is being baked into an image. Both emit only
//! `write_files` and `runcmd`, plus a host's `bootcmd` that trusts its insecure registries
//! before the Engine's first start (never `packages:`: the Engine is installed by the
//! bootstrap script, and only when absent and allowed), stay within [`USER_DATA_LIMIT`] bytes and never
//! contain a private key.
//!
//! Modules:
//! - [`inputs`]: the input types ([`HostInputs`], [`BakeInputs`], [`BakeReport`], [`AgentBinary`], [`Engine`],
//!   [`OsFamily`]) and their validation.
//! - [`error`]: [`Error`], one variant per refused input, each naming its field.
//! - [`paths`]: where everything lives on the host (config, token, state, binary, unit,
//!   scripts, markers), shared with the agent, the lab and the baker.
//! - [`unit`](mod@unit): [`AGENT_UNIT`], the agent's systemd unit (`src/flotilla-agent.service`);
//!   [`SEAL_UNIT`] and [`SEAL_SCRIPT`], which clean a reporting bake's builder when it stops.
//! - `render`: the two entry points; assembles the document and checks size and secrets.
//! - `agent_config`: `/etc/flotilla/agent.toml` and the TOML string escaper.
//! - `bootstrap`: the bootstrap/bake script, the template `src/bootstrap.sh` plus a block of
//!   shell-quoted per-render values.
//! - `yaml`: the small YAML emitter (literal block scalars, quoting).
//!
//! Tests: `tests/golden.rs` renders every case in `tests/golden/*.yaml` and compares bytes; run
//! `UPDATE_GOLDEN=1 cargo test -p flotilla-cloud-init --test golden` to rewrite the files after
//! an intended change, and review the diff. `tests/bootstrap.rs` runs the rendered script for
//! real against stub `systemctl`/`docker` commands and a local HTTPS server; `tests/errors.rs`
//! covers every refused input. Checks that need python3 + PyYAML, bash, openssl or cloud-init
//! skip with a note on stderr when the tool is missing.

pub mod error;
pub mod inputs;
pub mod paths;
pub mod unit;

mod agent_config;
mod bootstrap;
mod render;
mod yaml;

pub use error::Error;
pub use inputs::{AgentBinary, BakeInputs, BakeReport, DEFAULT_HEARTBEAT_INTERVAL_S, Engine, HostInputs, OsFamily};
pub use render::{USER_DATA_LIMIT, render_bake, render_host};
pub use unit::{AGENT_UNIT, SEAL_SCRIPT, SEAL_UNIT};
