//! The Consul side of the drill: the Consul servers' HTTP APIs (`ip:8500`, as `verify`
//! reads Consul), probed every [`PROBE_INTERVAL`](super::PROBE_INTERVAL): the target's
//! `/v1/status/leader`, the survivors' (who leads), a KV write through the new leader; then
//! the swarm's join data read back, and the target back as a healthy voter in autopilot's
//! view. Every call but `/v1/status/*` carries the operator's Consul token
//! (`<state>/consul-operator.token`): Consul denies anything else to an anonymous client.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use flotilla_agent::consul::{Consul, ConsulError, ServerHealth};
use flotilla_agent::roles::swarm::{self as agent_swarm, ManagerJoin, WorkerJoin};
use tokio::sync::mpsc;

use super::probe::{self, Sighting};
use super::report::Say;
use super::{CALL_TIMEOUT, Drill, HELLO_REPLICAS, Measure, Member, PING_TIMEOUT, Report, kv_probe_key, lock, swarm};
use crate::poll::{Attempt, poll_until};

/// Why a call to Consul gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum ConsulCallError {
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("no Consul server is known")]
    NoServer,
}

/// Why the swarm's join data could not be read (through the last server tried).
#[derive(Debug, thiserror::Error)]
pub enum JoinDataError {
    #[error("no Consul server to read {key} through")]
    NoServer { key: String },
    #[error("{key} through {via}: no such key")]
    Missing { key: String, via: String },
    #[error("{key} through {via}: incomplete join data")]
    Incomplete { key: String, via: String },
    #[error("{key} through {via}: does not parse: {error}")]
    Parse { key: String, via: String, error: serde_json::Error },
    #[error("{key} through {via}: {error}")]
    Call { key: String, via: String, error: ConsulCallError },
}

/// A client of the Consul server at `ip`, its calls made with `token`.
fn client(ip: &str, token: &str) -> Consul {
    Consul::new(&format!("{ip}:{}", flotilla_agent::roles::consul::HTTP_PORT)).with_token(token)
}

/// A Consul call, bounded.
async fn timed<T>(bound: Duration, f: impl Future<Output = Result<T, ConsulError>>) -> Result<T, ConsulCallError> {
    Ok(tokio::time::timeout(bound, f).await.map_err(|_| ConsulCallError::NoAnswer(bound))??)
}

/// The member a Raft address (`ip:8300`) belongs to.
fn name_of(members: &[Member], addr: &str) -> Option<String> {
    let ip = addr.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(addr);
    members.iter().find(|m| m.ip == ip).map(|m| m.name.clone())
}

/// Consul's leader, as the first server that answers names it.
pub(super) async fn find_leader(members: &[Member]) -> Option<String> {
    for m in members {
        if let Ok(addr) = timed(CALL_TIMEOUT * 2, client(&m.ip, "").leader()).await
            && !addr.is_empty()
        {
            return name_of(members, &addr);
        }
    }
    None
}

/// What keeps Consul from riding out the loss of a server, in autopilot's view (answered by
/// the leader through the first server that answers): every server alive, voting and
/// healthy, and a failure tolerance of at least one. A server that rejoined moments ago is
/// a non-voter until autopilot promotes it; drilling then would lose the quorum.
pub(super) async fn fault_tolerance_problems(servers: &[Member], token: &str) -> Vec<String> {
    let mut last = String::from("no Consul server is known");
    for m in servers {
        let c = client(&m.ip, token);
        let health = match timed(CALL_TIMEOUT * 2, c.autopilot_health()).await {
            Ok(h) => h,
            Err(e) => {
                last = format!("Consul's autopilot through {}: {e}", m.name);
                continue;
            }
        };
        let mut out: Vec<String> = servers
            .iter()
            .filter_map(|s| match health.iter().find(|h| h.name == s.name) {
                None => Some(format!("Consul's autopilot does not list {}", s.name)),
                Some(h) if rejoined_as(h) != "voter" => {
                    Some(format!("Consul's autopilot lists {} as {}", s.name, rejoined_as(h)))
                }
                Some(_) => None,
            })
            .collect();
        if out.is_empty() && health.len() < 3 {
            out.push(format!("Consul has {} voting servers: it cannot lose one", health.len()));
        }
        return out;
    }
    vec![last]
}

/// The swarm's join records (`flotilla/<cluster>/swarm/join` and `.../swarm/worker`), read
/// with `token` through the first of `members` that answers (a follower forwards the read
/// to the leader, so this needs one): the server read through and the swarm's cluster id.
pub(super) async fn join_data(
    members: &[Member],
    cluster: &str,
    token: &str,
) -> Result<(String, String), JoinDataError> {
    let mut last = JoinDataError::NoServer { key: agent_swarm::key(cluster, "join") };
    for m in members {
        match join_records(&client(&m.ip, token), cluster, &m.name).await {
            Ok(cluster_id) => return Ok((m.name.clone(), cluster_id)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Both join records through `c` (the server `via`), complete and naming the same swarm:
/// its cluster id.
async fn join_records(c: &Consul, cluster: &str, via: &str) -> Result<String, JoinDataError> {
    let manager: ManagerJoin = record(c, &agent_swarm::key(cluster, "join"), via).await?;
    let worker: WorkerJoin = record(c, &agent_swarm::key(cluster, "worker"), via).await?;
    let complete = !manager.cluster_id.is_empty()
        && !manager.manager_token.is_empty()
        && !worker.worker_token.is_empty()
        && worker.cluster_id == manager.cluster_id;
    if !complete {
        return Err(JoinDataError::Incomplete { key: agent_swarm::key(cluster, "join"), via: via.to_string() });
    }
    Ok(manager.cluster_id)
}

/// One join record through `c` (the server `via`), parsed.
async fn record<T: serde::de::DeserializeOwned>(c: &Consul, key: &str, via: &str) -> Result<T, JoinDataError> {
    let (key, via) = (key.to_string(), via.to_string());
    match timed(CALL_TIMEOUT * 2, c.get(&key)).await {
        Ok(Some(e)) => serde_json::from_slice::<T>(&e.value).map_err(|error| JoinDataError::Parse { key, via, error }),
        Ok(None) => Err(JoinDataError::Missing { key, via }),
        Err(error) => Err(JoinDataError::Call { key, via, error }),
    }
}

/// Deletes `key` through the first server that can, retried every 500 ms until `deadline`.
pub(super) async fn delete_key(
    addrs: &[String],
    key: &str,
    token: &str,
    deadline: Instant,
) -> Result<(), ConsulCallError> {
    let last = &Mutex::new(None);
    let deleted = poll_until("the key deleted", deadline, Duration::from_millis(500), move || async move {
        let mut error = ConsulCallError::NoServer;
        for a in addrs {
            match timed(CALL_TIMEOUT * 2, Consul::new(a).with_token(token).delete(key)).await {
                Ok(()) => return Ok(Attempt::Done(())),
                Err(e) => error = e,
            }
        }
        let seen = error.to_string();
        *lock(last) = Some(error);
        Ok::<_, Infallible>(Attempt::NotYet(seen))
    })
    .await;
    deleted.map_err(|_| lock(last).take().unwrap_or(ConsulCallError::NoServer))
}

/// What a probe saw.
enum Seen {
    /// The target's Consul answered `/v1/status/leader` (or did not).
    Ping(bool),
    /// A surviving server's answer to `/v1/status/leader`.
    Leader { from: String, leader: Result<String, ConsulCallError> },
    /// A KV write through `via`.
    Kv { via: String, ok: bool },
}

/// Probes until the loss is detected and Consul's KV accepts a write again (or the
/// deadline): `detect_s`, `elect_s`, `api_back_s`. Returns the leader after the fault.
pub(super) async fn measure(d: &Drill, m: &Measure<'_>, r: &mut Report) -> Option<String> {
    // Where the KV probe writes: the leader, once one is named.
    let kv_via: Arc<Mutex<Option<Member>>> = Arc::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let key = kv_probe_key(&d.opts.cluster);
    let _probing = probe::every_interval(probe_round(m, key, d.consul_token.clone(), kv_via.clone(), tx));
    let mut new_leader = None;
    probe::collect("Consul's failover measured", m.deadline, rx, |at, seen| {
        if let Some(l) = take(&d.say, m, r, &mut new_leader, at, seen) {
            lock(&d.pending).kv_probe = true;
            *lock(&kv_via) = m.members.iter().find(|x| x.name == l).cloned();
        }
        r.detect_s.is_some() && r.api_back_s.is_some()
    })
    .await;
    new_leader
}

/// One round of probes, each its own task: the target's `/v1/status/leader`, every
/// survivor's, and a write of `key` through `kv_via` once a leader is named.
fn probe_round(
    m: &Measure<'_>,
    key: String,
    token: String,
    kv_via: Arc<Mutex<Option<Member>>>,
    tx: mpsc::UnboundedSender<Sighting<Seen>>,
) -> impl FnMut() + Send + 'static {
    let fault_at = m.fault_at;
    let survivors: Vec<Member> = m.members.iter().filter(|x| x.name != m.target).cloned().collect();
    let target_ip = m.target_ip.to_string();
    move || {
        let (tx1, ip) = (tx.clone(), target_ip.clone());
        tokio::spawn(async move {
            let ok = timed(PING_TIMEOUT, client(&ip, "").leader()).await.is_ok();
            let _ = tx1.send((fault_at.elapsed(), Seen::Ping(ok)));
        });
        for s in &survivors {
            let (tx1, s) = (tx.clone(), s.clone());
            tokio::spawn(async move {
                let leader = timed(CALL_TIMEOUT, client(&s.ip, "").leader()).await;
                let _ = tx1.send((fault_at.elapsed(), Seen::Leader { from: s.name, leader }));
            });
        }
        let via = lock(&kv_via).clone();
        if let Some(via) = via {
            let (tx1, key, token) = (tx.clone(), key.clone(), token.clone());
            tokio::spawn(async move {
                let value = format!("written {:.3} s after the fault", fault_at.elapsed().as_secs_f64());
                let c = client(&via.ip, &token);
                let ok = matches!(timed(CALL_TIMEOUT, c.put(&key, value.as_bytes(), None)).await, Ok(true));
                let _ = tx1.send((fault_at.elapsed(), Seen::Kv { via: via.name, ok }));
            });
        }
    }
}

/// What one sighting at `at` tells: the loss detected (the target's first failed look), the
/// leader after the fault (a survivor names it: returned, for the KV probe to write
/// through), Consul's KV back (a write accepted).
fn take(
    say: &Say,
    m: &Measure<'_>,
    r: &mut Report,
    new_leader: &mut Option<String>,
    at: Duration,
    seen: Seen,
) -> Option<String> {
    let target = m.target;
    match seen {
        Seen::Ping(false) if r.detect_s.is_none() => {
            r.detect_s =
                Some(say.event(at, format!("detect: {target}'s Consul stopped answering ({}:8500)", m.target_ip)));
        }
        Seen::Ping(_) => {}
        Seen::Leader { from, leader: Ok(addr) } => {
            let leader = name_of(m.members, &addr);
            if new_leader.is_none()
                && let Some(l) = &leader
                && (l != m.old_leader || (!m.target_is_leader && r.detect_s.is_some()))
            {
                *new_leader = Some(l.clone());
                if m.target_is_leader {
                    r.elect_s =
                        Some(say.event(at, format!("elect: {from}'s Consul names {l} ({addr}) the new leader")));
                } else {
                    say.event(at, format!("{from}'s Consul still names {l} the leader"));
                }
                return Some(l.clone());
            }
        }
        Seen::Leader { .. } => {}
        Seen::Kv { via, ok: true } if r.api_back_s.is_none() => {
            r.api_back_s =
                Some(say.event(at, format!("api back: Consul's KV accepts a write through the leader {via}")));
        }
        Seen::Kv { .. } => {}
    }
    None
}

/// What the Consul workload check has seen so far.
#[derive(Default)]
struct WorkloadSeen {
    /// The server the join data was read through.
    join: Option<String>,
    last_join_error: Option<JoinDataError>,
    tasks_after: Vec<String>,
}

/// The workload after a Consul fault: the swarm's join data readable from the surviving
/// servers, and the hello service's replicas running (through any surviving manager),
/// looked at every 200 ms until the measure's deadline.
pub(super) async fn workload(d: &Drill, m: &Measure<'_>, managers: &[Docker], tasks_before: &[String], r: &mut Report) {
    let survivors = &m.members.iter().filter(|x| x.name != m.target).cloned().collect::<Vec<Member>>();
    let seen = &Mutex::new(WorkloadSeen::default());
    let whole = poll_until("the workload whole again", m.deadline, Duration::from_millis(200), move || async move {
        if lock(seen).join.is_none() {
            match join_data(survivors, &d.opts.cluster, &d.consul_token).await {
                Ok((via, id)) => {
                    d.say.event(
                        m.fault_at.elapsed(),
                        format!("workload: the swarm's join data readable through {via} (cluster id {id})"),
                    );
                    lock(seen).join = Some(via);
                }
                Err(e) => lock(seen).last_join_error = Some(e),
            }
        }
        for e in managers {
            if let Ok(t) = swarm::running_tasks(e).await {
                lock(seen).tasks_after = t;
                break;
            }
        }
        let s = lock(seen);
        let n = s.tasks_after.len();
        Ok::<_, Infallible>(if s.join.is_some() && n >= HELLO_REPLICAS {
            Attempt::Done(n)
        } else {
            Attempt::NotYet(format!("{n} of {HELLO_REPLICAS} hello tasks running"))
        })
    })
    .await;
    let s = std::mem::take(&mut *lock(seen));
    match whole {
        Ok(n) => {
            r.workload_s = Some(
                d.say.event(m.fault_at.elapsed(), format!("workload: {n} of {HELLO_REPLICAS} hello tasks running")),
            );
        }
        Err(_) if s.join.is_none() => {
            let error = s.last_join_error.map(|e| e.to_string()).unwrap_or_default();
            d.say.note(format!("the swarm's join data: {error}"));
        }
        Err(_) => {}
    }
    r.join_data_ok = Some(s.join.is_some());
    r.tasks_after = s.tasks_after.len();
    r.tasks_rescheduled = s.tasks_after != tasks_before;
    r.workload_ok = r.workload_s.is_some();
}

/// How autopilot lists a server: `voter` once it is alive in Serf, votes and is healthy.
fn rejoined_as(s: &ServerHealth) -> String {
    if s.serf_status != "alive" {
        format!("serf {}", s.serf_status)
    } else if !s.voter {
        "non-voter".to_string()
    } else if !s.healthy {
        "unhealthy voter".to_string()
    } else {
        "voter".to_string()
    }
}

/// After the restore: the target's Consul answering with a leader, and autopilot (on the
/// leader) listing it as a healthy voter (`rejoin_s`, `rejoined_as`), looked at every
/// 200 ms until `deadline`.
pub(super) async fn rejoin(d: &Drill, m: &Measure<'_>, restore_at: Instant, deadline: Instant, r: &mut Report) {
    let target = m.target;
    // Ask the new leader; without one (the election failed), any server (they forward to
    // whoever leads by then).
    let ask = &m
        .members
        .iter()
        .filter(|x| x.name == r.new_leader)
        .chain(m.members.iter().filter(|x| x.name != r.new_leader))
        .cloned()
        .collect::<Vec<Member>>();
    let (target_back, listed_as) = (&AtomicBool::new(false), &Mutex::new(None::<String>));
    let back = poll_until("the target rejoined", deadline, Duration::from_millis(200), move || async move {
        if !target_back.load(Ordering::Relaxed)
            && let Ok(addr) = timed(CALL_TIMEOUT, client(m.target_ip, "").leader()).await
            && !addr.is_empty()
        {
            target_back.store(true, Ordering::Relaxed);
            let l = name_of(m.members, &addr).unwrap_or(addr);
            d.say.event(m.fault_at.elapsed(), format!("{target}'s Consul answers again and names {l} the leader"));
        }
        let Some(status) = autopilot_view(ask, target, &d.consul_token).await else {
            return Ok(Attempt::NotYet(format!("{target} not listed by autopilot")));
        };
        *lock(listed_as) = Some(status.clone());
        let rejoined = target_back.load(Ordering::Relaxed) && status == "voter";
        Ok::<_, Infallible>(if rejoined { Attempt::Done(()) } else { Attempt::NotYet(status) })
    })
    .await;
    if let Some(status) = lock(listed_as).take() {
        r.rejoined_as = status;
    }
    if back.is_ok() {
        let at = restore_at.elapsed().as_secs_f64();
        r.rejoin_s = Some(at);
        d.say.event(
            m.fault_at.elapsed(),
            format!("rejoin: {target} is back as a healthy voter ({at:.2} s after the restore)"),
        );
    }
}

/// How autopilot, asked through the first of `ask` that answers, lists `target`; `None`:
/// no server answered, or autopilot does not list it.
async fn autopilot_view(ask: &[Member], target: &str, token: &str) -> Option<String> {
    for x in ask {
        if let Ok(servers) = timed(CALL_TIMEOUT * 2, client(&x.ip, token).autopilot_health()).await {
            return servers.iter().find(|s| s.name == target).map(rejoined_as);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_addresses_map_to_members_and_autopilot_states_read_plainly() {
        let members = vec![
            Member { name: "manager0".into(), ip: "10.0.0.10".into() },
            Member { name: "manager1".into(), ip: "10.0.0.11".into() },
        ];
        assert_eq!(name_of(&members, "10.0.0.11:8300").as_deref(), Some("manager1"));
        assert_eq!(name_of(&members, "10.0.0.99:8300"), None);
        let mut s = ServerHealth {
            name: "manager0".into(),
            address: "10.0.0.10:8300".into(),
            serf_status: "alive".into(),
            leader: false,
            voter: true,
            healthy: true,
            id: String::new(),
            last_index: 0,
            last_term: 0,
        };
        assert_eq!(rejoined_as(&s), "voter");
        s.healthy = false;
        assert_eq!(rejoined_as(&s), "unhealthy voter");
        s.voter = false;
        assert_eq!(rejoined_as(&s), "non-voter");
        s.serf_status = "failed".into();
        assert_eq!(rejoined_as(&s), "serf failed");
    }
}
