//! Which way back, from the assessment: none (the cluster still has quorum — heal's job —,
//! or a manager is cut off while it runs and acting could split the swarm), from a surviving
//! manager, or from the backups onto new hosts when no manager survives; or, when a recovery
//! begun earlier was interrupted after the quorum came back, on from where it stopped.

use serde::{Deserialize, Serialize};

use crate::ops::heal::{Assessment, HostAssessment, Verdict};

/// The way back `recover` takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "route", rename_all = "kebab-case")]
pub enum Route {
    /// `--force-new-cluster` on this healthy manager, then the others replaced.
    Survivor { host: String, gone: Vec<String> },
    /// No manager survives: every manager relaunched and the latest backups restored.
    Restore { gone: Vec<String> },
    /// A recovery begun at `begun_at_unix` was interrupted after the swarm had its quorum back:
    /// what is still lost is replaced, as the interrupted run would have done.
    Resume { begun_at_unix: u64, lost: Vec<String> },
}

/// Why `recover` does nothing.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the swarm still has a quorum: {healthy} of {total} managers are healthy ({quorum} needed). Recover is for a cluster that lost it; `coordinator heal` replaces lost hosts without giving up the quorum"
    )]
    HasQuorum { healthy: usize, total: usize, quorum: usize },
    #[error(
        "{hosts} still run at the provider but their agents are unreachable (a partition, or a hung host): forcing a new cluster now could leave two swarms. Restore their network, or stop them at the provider, then run recover again"
    )]
    Partitioned { hosts: String },
}

fn names(v: &[&HostAssessment]) -> Vec<String> {
    v.iter().map(|h| h.name.clone()).collect()
}

/// The route for `a` (assessed with no grace period: a manager gone at the provider is
/// lost at once). `last_leader` is the swarm leader the control plane last heard of: among
/// several survivors it has the most recent Raft state, so it is preferred. `begun_at_unix`:
/// when a recovery under way ([`super::record`]) was begun.
pub fn decide(a: &Assessment, last_leader: &str, begun_at_unix: Option<u64>) -> Result<Route, Refusal> {
    let managers: Vec<&HostAssessment> = a.hosts.iter().filter(|h| h.manager).collect();
    let total = managers.len();
    let quorum = total / 2 + 1;
    let healthy: Vec<&HostAssessment> = managers.iter().copied().filter(|h| h.verdict == Verdict::Healthy).collect();
    let cut_off: Vec<&HostAssessment> = managers
        .iter()
        .copied()
        .filter(|h| matches!(h.verdict, Verdict::Partitioned { .. } | Verdict::Unreachable { .. }))
        .collect();
    if healthy.len() >= quorum {
        return match begun_at_unix {
            Some(begun_at_unix) => Ok(Route::Resume {
                begun_at_unix,
                lost: a.hosts.iter().filter(|h| h.verdict != Verdict::Healthy).map(|h| h.name.clone()).collect(),
            }),
            None => Err(Refusal::HasQuorum { healthy: healthy.len(), total, quorum }),
        };
    }
    if !cut_off.is_empty() {
        return Err(Refusal::Partitioned { hosts: names(&cut_off).join(", ") });
    }
    let gone = names(&managers.iter().copied().filter(|h| h.verdict != Verdict::Healthy).collect::<Vec<_>>());
    let survivor = healthy.iter().find(|h| h.name == last_leader).or_else(|| healthy.first());
    Ok(match survivor {
        Some(s) => Route::Survivor { host: s.name.clone(), gone },
        None => Route::Restore { gone },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, manager: bool, verdict: Verdict) -> HostAssessment {
        HostAssessment { name: name.into(), manager, verdict }
    }

    fn lost() -> Verdict {
        Verdict::Lost { for_s: 3.0, provider_state: "gone".into() }
    }

    fn cluster(m: [Verdict; 3]) -> Assessment {
        let [a, b, c] = m;
        Assessment {
            grace_s: 0,
            hosts: vec![
                host("manager0", true, a),
                host("manager1", true, b),
                host("manager2", true, c),
                host("node0", false, lost()),
            ],
        }
    }

    #[test]
    fn a_quorum_of_healthy_managers_is_refused_even_with_lost_workers_or_a_lost_manager() {
        let a = cluster([Verdict::Healthy, Verdict::Healthy, Verdict::Healthy]);
        assert!(matches!(decide(&a, "manager0", None), Err(Refusal::HasQuorum { healthy: 3, total: 3, quorum: 2 })));
        let a = cluster([lost(), Verdict::Healthy, Verdict::Healthy]);
        assert!(matches!(decide(&a, "", None), Err(Refusal::HasQuorum { healthy: 2, .. })));
    }

    #[test]
    fn a_recovery_begun_earlier_resumes_once_the_quorum_is_back() {
        let a = cluster([Verdict::Healthy, Verdict::Healthy, lost()]);
        assert_eq!(
            decide(&a, "manager0", Some(1_700_000_000)),
            Ok(Route::Resume { begun_at_unix: 1_700_000_000, lost: vec!["manager2".into(), "node0".into()] })
        );
        // Not begun: the same cluster is heal's.
        assert!(matches!(decide(&a, "manager0", None), Err(Refusal::HasQuorum { .. })));
        // Begun but still without a quorum: the route it needs, whose steps skip what is done.
        let a = cluster([Verdict::Healthy, lost(), lost()]);
        assert!(matches!(decide(&a, "manager0", Some(1)), Ok(Route::Survivor { .. })));
    }

    #[test]
    fn one_survivor_is_forced_into_a_new_cluster_and_the_others_are_replaced() {
        let a = cluster([lost(), Verdict::Healthy, Verdict::Incomplete { provider_state: "gone".into() }]);
        assert_eq!(
            decide(&a, "manager0", None).expect("a route"),
            Route::Survivor { host: "manager1".into(), gone: vec!["manager0".into(), "manager2".into()] }
        );
    }

    #[test]
    fn the_last_leader_is_preferred_among_survivors() {
        let five = Assessment {
            grace_s: 0,
            hosts: ["m0", "m1", "m2", "m3", "m4"]
                .iter()
                .enumerate()
                .map(|(i, n)| host(n, true, if i < 2 { Verdict::Healthy } else { lost() }))
                .collect(),
        };
        assert!(matches!(decide(&five, "m1", None), Ok(Route::Survivor { host, .. }) if host == "m1"));
        assert!(matches!(decide(&five, "m4", None), Ok(Route::Survivor { host, .. }) if host == "m0"));
    }

    #[test]
    fn no_survivor_restores_and_a_running_unreachable_manager_refuses() {
        let a = cluster([lost(), lost(), lost()]);
        assert_eq!(
            decide(&a, "manager0", None).expect("a route"),
            Route::Restore { gone: vec!["manager0".into(), "manager1".into(), "manager2".into()] }
        );
        let cut = Verdict::Partitioned { for_s: 70.0, provider_state: "running".into() };
        let a = cluster([lost(), cut, Verdict::Healthy]);
        assert_eq!(decide(&a, "", None), Err(Refusal::Partitioned { hosts: "manager1".into() }));
    }
}
