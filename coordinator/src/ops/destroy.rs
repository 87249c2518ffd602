//! `coordinator destroy`: remove everything a cluster owns — but never state it cannot account
//! for.
//!
//! The flow ([`destroy`]): the hosts the cluster's state records (asked of its running control
//! plane, else read from its store) are checked against what the provider finds. When the
//! state records hosts and the provider finds none of them — the wrong Engine, region,
//! endpoint or credentials — nothing is touched: no host is revoked, and the state and its
//! CA stay ([`DestroyError::NothingFound`], issue 13); `--force` goes on anyway. Otherwise
//! every host is revoked and the control plane stopped (so no agent is told anything
//! mid-way), the provider removes what carries the cluster's label or tag, and the state
//! directory goes.
//!
//! Before the provider removes anything, `<state>/destroying` records that this cluster's
//! destroy began: a destroy interrupted after the provider's part finds the hosts gone, and
//! with that record it goes on removing the state instead of refusing as above.

use std::path::{Path, PathBuf};

use flotilla_proto::v1;

use crate::admin_client::{self, wait_gone};
use crate::control_plane::settings::StatePaths;
use crate::control_plane::store::{Store, StoreError};
use crate::ops::lock::OpsLock;
use crate::providers::{Provider, ProviderError, ProviderKind, ProviderRecord};

#[derive(Debug, thiserror::Error)]
pub enum DestroyError {
    /// The state records hosts; the provider, where it looked, finds none of them.
    #[error(
        "cluster '{cluster}': its state ({}) records {} host(s) ({}), but the {provider} provider finds none of them {location}. \
         Nothing was removed: the hosts were not revoked and the state and its CA are kept. \
         If the hosts are elsewhere, point the provider at them ({pointed_by}) and re-run; if they are gone for good, \
         `coordinator destroy --force` removes the state",
        state.display(), recorded.len(), recorded.join(", ")
    )]
    NothingFound {
        cluster: String,
        state: PathBuf,
        recorded: Vec<String>,
        provider: ProviderKind,
        location: String,
        pointed_by: &'static str,
    },
    /// The state's record of its hosts could not be read (and `--force` was not given).
    #[error("{0}; nothing was removed (`coordinator destroy --force` goes on without it)")]
    Store(StoreError),
    #[error("{0}")]
    Provider(ProviderError),
    /// The provider failed part-way; the state is kept for a re-run.
    #[error("{0}; the cluster's state is kept: re-run `coordinator destroy` once fixed")]
    Kept(ProviderError),
    #[error("{}: {source}", path.display())]
    State { path: PathBuf, source: std::io::Error },
    /// A deploy or a heal by hand still runs (auto-heal's runs end with the control plane).
    #[error("{0}; nothing was removed")]
    Busy(crate::ops::lock::LockError),
    /// A failpoint's injected error (a `failpoints` build under test: [`crate::failpoint`]).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

impl DestroyError {
    /// A provider's error: AWS's keep the state for a re-run.
    fn provider(e: ProviderError) -> Self {
        match e {
            e @ ProviderError::Aws(_) => DestroyError::Kept(e),
            other => DestroyError::Provider(other),
        }
    }
}

pub struct DestroyOptions<'a> {
    pub cluster: &'a str,
    pub state_dir: &'a Path,
    pub record: &'a ProviderRecord,
    /// Go on when the provider finds none of the recorded hosts.
    pub force: bool,
}

/// What `destroy` did.
#[derive(Debug)]
pub struct Destroyed {
    /// What the provider said it removed (AWS).
    pub removed: Vec<String>,
    /// The recorded hosts the provider did not find (only with `force`).
    pub unaccounted: Vec<String>,
}

/// The flow of the module docs.
pub async fn destroy(o: DestroyOptions<'_>) -> Result<Destroyed, DestroyError> {
    let provider = Provider::from_record(o.cluster, o.state_dir, o.record).await.map_err(DestroyError::provider)?;
    let recorded = match recorded_hosts(o.cluster, o.state_dir).await {
        Ok(r) => r,
        Err(_) if o.force => Vec::new(),
        Err(e) => return Err(DestroyError::Store(e)),
    };
    let unaccounted = unaccounted(&provider, &recorded).await.map_err(DestroyError::provider)?;
    let resumed = begun(o.state_dir).exists();
    if !recorded.is_empty() && unaccounted.len() == recorded.len() && !o.force && !resumed {
        return Err(DestroyError::NothingFound {
            cluster: o.cluster.to_string(),
            state: o.state_dir.to_path_buf(),
            recorded,
            provider: provider.kind(),
            location: provider.location(),
            pointed_by: provider.pointed_by(),
        });
    }
    stop_control_plane(o.cluster, o.state_dir).await;
    crate::failpoint!("destroy.control_plane.after");
    // Stopping the control plane ends an auto-heal run; one by hand gets a moment to end.
    let _lock = match o.state_dir.exists() {
        true => Some(OpsLock::wait(o.state_dir, o.cluster, "destroy", LOCK_WAIT).map_err(DestroyError::Busy)?),
        false => None,
    };
    if o.state_dir.exists() {
        let marker = begun(o.state_dir);
        flotilla_proto::fs::write_private(&marker, b"destroy began\n")
            .map_err(|source| DestroyError::State { path: marker, source })?;
    }
    crate::failpoint!("destroy.provider.before");
    let removed = provider.destroy().await.map_err(DestroyError::provider)?;
    crate::failpoint!("destroy.provider.after");
    if o.state_dir.exists() {
        std::fs::remove_dir_all(o.state_dir)
            .map_err(|source| DestroyError::State { path: o.state_dir.to_path_buf(), source })?;
    }
    Ok(Destroyed { removed, unaccounted: if o.force { unaccounted } else { Vec::new() } })
}

/// The record that this cluster's destroy began (the module's doc).
fn begun(state_dir: &Path) -> PathBuf {
    state_dir.join("destroying")
}

/// How long destroy waits for a deploy or heal that holds the cluster.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The hosts the cluster's state records: its running control plane's, else its store's.
async fn recorded_hosts(cluster: &str, state_dir: &Path) -> Result<Vec<String>, StoreError> {
    let paths = StatePaths::new(state_dir);
    if let Ok(mut c) = admin_client::connect_local(cluster, &paths.admin_socket()).await
        && let Ok(st) = c.status(v1::StatusRequest::default()).await
    {
        return Ok(st.into_inner().hosts.into_iter().map(|h| h.name).collect());
    }
    Store::recorded_host_names(&paths.store())
}

/// The recorded hosts the provider does not find (terminated ones count as not found).
async fn unaccounted(provider: &Provider, recorded: &[String]) -> Result<Vec<String>, ProviderError> {
    if recorded.is_empty() {
        return Ok(Vec::new());
    }
    let found = provider.describe().await?;
    Ok(recorded
        .iter()
        .filter(|r| !found.iter().any(|h| &h.name == *r && h.state != crate::providers::HostState::Terminated))
        .cloned()
        .collect())
}

/// Revokes every host the local control plane knows and stops it, if one is running.
async fn stop_control_plane(cluster: &str, state_dir: &Path) {
    let socket = StatePaths::new(state_dir).admin_socket();
    if let Ok(mut c) = admin_client::connect_local(cluster, &socket).await {
        if let Ok(st) = c.status(v1::StatusRequest::default()).await {
            for h in st.into_inner().hosts.iter().filter(|h| !h.revoked) {
                let _ = c.revoke_host(v1::RevokeHostRequest { host_name: h.name.clone() }).await;
            }
        }
        let _ = c.shutdown(v1::ShutdownRequest {}).await;
        wait_gone(&socket).await;
    }
}
