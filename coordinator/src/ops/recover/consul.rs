//! Consul's quorum back from one surviving server: Consul's outage recovery with
//! `raft/peers.json` (the survivor alone as the voter set), written into its data volume
//! through the survivor's Engine (mutual TLS on 2376) and read when the server restarts.
//! Its data — KV, ACLs, sessions — is kept; the lost servers' replacements join it later
//! through `-retry-join` as heal's do.

use std::io::Read;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{DownloadFromContainerOptions, RestartContainerOptions, UploadToContainerOptions};
use flotilla_proto::v1::{self, admin_client::AdminClient};
use futures::TryStreamExt;
use tonic::transport::Channel;

// The agent's Consul server container and Consul's server RPC (Raft) port.
use flotilla_agent::roles::consul::{CONTAINER, RPC_PORT};

use super::RecoverError;
use crate::poll::{Attempt, PollError, poll_until};

/// Where the agent's Consul container mounts its data volume.
const DATA_DIR: &str = "/consul/data";
/// How long the restarted server gets to elect itself.
const LEADER_WAIT: Duration = Duration::from_secs(90);

/// The Consul leader `host`'s agent reports, fresh (empty: none).
pub async fn leader_seen_by(admin: &mut AdminClient<Channel>, host: &str) -> Result<String, RecoverError> {
    let st = admin.status(v1::StatusRequest { fresh: true }).await?.into_inner();
    Ok(st
        .hosts
        .iter()
        .find(|h| h.name == host)
        .and_then(|h| h.health.as_ref())
        .and_then(|h| h.consul.as_ref())
        .map(|c| c.leader.clone())
        .unwrap_or_default())
}

/// The survivor's Consul node id (`<data>/node-id`), read through its Engine.
async fn node_id(d: &Docker) -> Result<String, RecoverError> {
    let opts = DownloadFromContainerOptions { path: format!("{DATA_DIR}/node-id") };
    let tar: Vec<u8> = d
        .download_from_container(CONTAINER, Some(opts))
        .map_ok(|b| b.to_vec())
        .try_concat()
        .await
        .map_err(|e| RecoverError::Consul(format!("reading {DATA_DIR}/node-id from {CONTAINER}: {e}")))?;
    let mut ar = tar::Archive::new(tar.as_slice());
    let mut entries = ar.entries().map_err(|e| RecoverError::Consul(format!("node-id archive: {e}")))?;
    let mut id = String::new();
    if let Some(entry) = entries.next() {
        entry
            .and_then(|mut e| e.read_to_string(&mut id))
            .map_err(|e| RecoverError::Consul(format!("node-id archive: {e}")))?;
    }
    let id = id.trim().to_string();
    if id.len() != 36 {
        return Err(RecoverError::Consul(format!("{CONTAINER}'s node-id is not a UUID: '{id}'")));
    }
    Ok(id)
}

/// `raft/peers.json` naming only `id` at `address` (Raft protocol 3's format), as a tar.
fn peers_tar(id: &str, address: &str) -> Result<Vec<u8>, RecoverError> {
    let body = serde_json::to_vec_pretty(&serde_json::json!([
        { "id": id, "address": format!("{address}:{RPC_PORT}"), "non_voter": false }
    ]))
    .map_err(|e| RecoverError::Consul(e.to_string()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut header, "peers.json", body.as_slice()).map_err(|e| RecoverError::Consul(e.to_string()))?;
    b.into_inner().map_err(|e| RecoverError::Consul(e.to_string()))
}

/// Whether `leader` (Consul's `ip:port`, as a server's agent reports it) is a server that
/// still exists: one of the `alive` hosts' addresses. Right after hosts are lost, a follower
/// goes on reporting the lost leader until its own election timeout; that one is not a leader.
pub fn leader_alive(leader: &str, alive: &[String]) -> bool {
    let ip = leader.rsplit_once(':').map_or(leader, |(ip, _)| ip);
    !ip.is_empty() && alive.iter().any(|a| a == ip)
}

/// Recovers the survivor's Consul unless a server that still exists leads it (`alive`: the
/// addresses of the hosts not lost); waits until it leads. Says what it did.
pub async fn recover_from_survivor(
    admin: &mut AdminClient<Channel>,
    d: &Docker,
    host: &str,
    address: &str,
    alive: &[String],
) -> Result<String, RecoverError> {
    let now = leader_seen_by(admin, host).await?;
    if leader_alive(&now, alive) {
        return Ok(format!("Consul has a leader already ({now}): nothing recovered"));
    }
    let id = node_id(d).await?;
    let tar = peers_tar(&id, address)?;
    let opts = UploadToContainerOptions { path: format!("{DATA_DIR}/raft"), ..Default::default() };
    d.upload_to_container(CONTAINER, Some(opts), bollard::body_full(tar.into()))
        .await
        .map_err(|e| RecoverError::Consul(format!("writing raft/peers.json into {CONTAINER} on {host}: {e}")))?;
    crate::failpoint!("recover.peers_json.after");
    d.restart_container(CONTAINER, None::<RestartContainerOptions>)
        .await
        .map_err(|e| RecoverError::Consul(format!("restarting {CONTAINER} on {host}: {e}")))?;
    crate::failpoint!("recover.consul_restart.after");
    let waited = poll_until(
        "Consul to elect the survivor",
        Instant::now() + LEADER_WAIT,
        Duration::from_millis(500),
        || async {
            let l = leader_seen_by(&mut admin.clone(), host).await?;
            Ok::<_, RecoverError>(if l.is_empty() { Attempt::NotYet("no leader yet".into()) } else { Attempt::Done(l) })
        },
    )
    .await;
    match waited {
        Ok(l) => Ok(format!("peers.json on {host} (node {id}): Consul leader {l}, its data kept")),
        Err(PollError::Failed(e)) => Err(e),
        Err(PollError::TimedOut { last, .. }) => Err(RecoverError::Consul(format!(
            "{host}'s Consul restarted with peers.json but after {LEADER_WAIT:?}: {last}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_on_a_lost_host_is_no_leader() {
        let alive = vec!["10.0.0.11".to_string(), "10.0.0.20".to_string()];
        assert!(leader_alive("10.0.0.11:8300", &alive));
        assert!(!leader_alive("10.0.0.10:8300", &alive), "the lost manager0's server, still reported");
        assert!(!leader_alive("", &alive));
        assert!(!leader_alive("10.0.0.1:8300", &alive), "no prefix match");
    }

    #[test]
    fn peers_json_names_the_survivor_alone_as_a_voter() {
        let tar = peers_tar("8b4b9e0a-4b1e-4c3e-9d6a-0a1b2c3d4e5f", "10.0.0.7").expect("tar");
        let mut ar = tar::Archive::new(tar.as_slice());
        let mut e = ar.entries().expect("entries").next().expect("one").expect("entry");
        assert_eq!(e.path().expect("path").to_str(), Some("peers.json"));
        let mut s = String::new();
        e.read_to_string(&mut s).expect("read");
        let v: serde_json::Value = serde_json::from_str(&s).expect("json");
        assert_eq!(
            v,
            serde_json::json!([{"id": "8b4b9e0a-4b1e-4c3e-9d6a-0a1b2c3d4e5f", "address": "10.0.0.7:8300", "non_voter": false}])
        );
    }
}
