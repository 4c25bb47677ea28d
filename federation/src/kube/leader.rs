//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` does it: the holder renews `renewTime` every retry
//! period; another candidate takes the Lease over once `renewTime +
//! leaseDurationSeconds` has passed; writes carry the Lease's
//! `resourceVersion`, so of two candidates racing for an expired Lease
//! exactly one wins (the other gets 409 Conflict and stays standby).
//!
//! [`decide`] is the pure decision (acquire, renew or stand by, from the
//! Lease's fields and now); [`Elector`] runs it against the API server.
//!
//! Fencing by time, as client-go's `renewDeadline`: a leader that has not
//! renewed within [`LeaseConfig::renew_deadline`] (two thirds of the
//! lease) of its last renewal's start reports the loss
//! ([`Elector::wait_lost`]) and must stop acting as leader (the `strait
//! controller` binary stops its gRPC service and exits). Another candidate
//! may take the Lease only at `renewTime + lease`, a third of the lease
//! later (5 s of the install's 15 s). A renewal that hangs is cut off at
//! the deadline; after a failed renewal the leader retries four times as
//! often until then. [`after_failure`] is that decision.
//!
//! What it is not: a fencing token. The margin holds while the leader's
//! step-down takes less than a third of the lease and the candidates'
//! clocks agree to within it; a process paused past it (or a clock that
//! jumps) can still overlap a new leader. Pushes are versioned snapshots
//! of the same objects, and link writes carry `resourceVersion`
//! ([`super::links`]), so an overlap converges instead of corrupting.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What [`decide`] reads of a Lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseState {
    pub holder: Option<String>,
    pub renewed: Option<SystemTime>,
    pub duration: Option<Duration>,
}

/// What a candidate does with the Lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Free (no Lease, no holder, or the holder's lease ran out): take it.
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Another holds a live lease until `until`.
    Standby { holder: String, until: SystemTime },
}

/// The election decision of candidate `me` at `now`; `default` is the
/// lease duration when the Lease names none.
pub fn decide(
    lease: Option<&LeaseState>,
    me: &str,
    default: Duration,
    now: SystemTime,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Acquire;
    };
    let holder = match lease.holder.as_deref() {
        None | Some("") => return Decision::Acquire,
        Some(h) if h == me => return Decision::Renew,
        Some(h) => h,
    };
    let Some(renewed) = lease.renewed else {
        return Decision::Acquire;
    };
    let until = renewed + lease.duration.unwrap_or(default);
    if now >= until {
        Decision::Acquire
    } else {
        Decision::Standby {
            holder: holder.to_owned(),
            until,
        }
    }
}

/// Where the Lease is and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate (unique among the replicas: pod name plus a random
    /// suffix by default).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How often the Lease is read and renewed (a third of the duration
    /// by default).
    pub retry: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            retry: duration / 3,
        }
    }

    /// How long after a renewal began the leader may go without the next
    /// one before it steps down: two thirds of the lease.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// What a candidate is after a round that could not read or write the
/// Lease: `since_renewal` is the time since its last successful renewal
/// began (`None`: it never led).
pub fn after_failure(
    current: &Role,
    since_renewal: Option<Duration>,
    renew_deadline: Duration,
) -> Role {
    match since_renewal {
        Some(t) if t >= renew_deadline => Role::Lost,
        Some(_) => Role::Leader,
        None => current.clone(),
    }
}

/// Where a candidate stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Candidate,
    /// Another holds the Lease.
    Standby {
        holder: String,
    },
    Leader,
    /// Was leader and could not renew before the renew deadline (or
    /// another holds the Lease).
    Lost,
}

/// Runs the election until dropped.
pub struct Elector {
    role: watch::Receiver<Role>,
    task: JoinHandle<()>,
    api: Api<Lease>,
    config: LeaseConfig,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("role", &*self.role.borrow())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn to_system(t: &MicroTime) -> SystemTime {
    SystemTime::from(t.0)
}

fn micro(now: SystemTime) -> Option<MicroTime> {
    Timestamp::try_from(now).ok().map(MicroTime)
}

fn state_of(lease: &Lease) -> LeaseState {
    let spec = lease.spec.as_ref();
    LeaseState {
        holder: spec.and_then(|s| s.holder_identity.clone()),
        renewed: spec.and_then(|s| s.renew_time.as_ref()).map(to_system),
        duration: spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|d| u64::try_from(d).ok())
            .map(Duration::from_secs),
    }
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// One round: read the Lease, decide, write. `Ok(true)` when we hold it
/// after this round.
async fn round(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<Option<String>, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    let now = SystemTime::now();
    let decision = decide(
        current.as_ref().map(state_of).as_ref(),
        &cfg.identity,
        cfg.duration,
        now,
    );
    let mut lease = match (decision, current) {
        (Decision::Standby { holder, .. }, _) => return Ok(Some(holder)),
        (_, Some(l)) => l,
        (_, None) => Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: None,
        },
    };
    let creating = lease.metadata.resource_version.is_none();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = micro(now);
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + i32::from(!creating));
    }
    spec.lease_duration_seconds = Some(secs(cfg.duration));
    spec.renew_time = micro(now);
    let written = if creating {
        api.create(&PostParams::default(), &lease).await
    } else {
        api.replace(&cfg.name, &PostParams::default(), &lease).await
    };
    match written {
        Ok(_) => Ok(None),
        // Another candidate wrote first: it holds the Lease now.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some("another candidate".into())),
        Err(e) => Err(e),
    }
}

impl Elector {
    /// Starts the election on the current runtime.
    pub fn start(client: Client, config: LeaseConfig) -> Self {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let (tx, role) = watch::channel(Role::Candidate);
        let (a, cfg) = (api.clone(), config.clone());
        let task = tokio::spawn(async move {
            let mut renewed: Option<tokio::time::Instant> = None;
            let deadline = cfg.renew_deadline();
            loop {
                let started = tokio::time::Instant::now();
                // A leader's round may not outlast its renew deadline.
                let result = match renewed {
                    Some(r) => tokio::time::timeout_at(r + deadline, round(&a, &cfg))
                        .await
                        .map_err(|_| "no answer before the renew deadline".to_owned())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                    None => round(&a, &cfg).await.map_err(|e| e.to_string()),
                };
                let failed = result.is_err();
                let next = match result {
                    Ok(None) => {
                        renewed = Some(started);
                        Role::Leader
                    }
                    Ok(Some(holder)) if renewed.is_none() => Role::Standby { holder },
                    Ok(Some(holder)) => {
                        tracing::warn!(%holder, lease = %cfg.name, "another candidate holds the lease");
                        Role::Lost
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, lease = %cfg.name, "cannot read or write the lease");
                        let current = tx.borrow().clone();
                        after_failure(&current, renewed.map(|r| r.elapsed()), deadline)
                    }
                };
                let lost = next == Role::Lost;
                tx.send_if_modified(|r| {
                    if *r == next {
                        false
                    } else {
                        tracing::info!(lease = %cfg.name, identity = %cfg.identity, role = ?next, "leader election");
                        *r = next;
                        true
                    }
                });
                if lost {
                    tracing::warn!(lease = %cfg.name, deadline = ?deadline, "could not renew the lease before the renew deadline; stepping down");
                    return;
                }
                let pause = if failed && renewed.is_some() {
                    cfg.retry / 4
                } else {
                    cfg.retry
                };
                tokio::time::sleep(pause).await;
            }
        });
        Self {
            role,
            task,
            api,
            config,
        }
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Resolves once this candidate leads; `None` when the election ended
    /// first.
    pub async fn wait_leader(&self) -> Option<()> {
        let mut rx = self.role.clone();
        rx.wait_for(|r| *r == Role::Leader).await.ok().map(drop)
    }

    /// Resolves once a leader lost its lease.
    pub async fn wait_lost(&self) {
        let mut rx = self.role.clone();
        let _ = rx.wait_for(|r| *r == Role::Lost).await;
    }

    /// Stops the election and, when leading, hands the Lease back (no
    /// holder), so a standby takes over at its next round instead of
    /// after a whole lease duration.
    pub async fn release(self) {
        self.task.abort();
        if *self.role.borrow() != Role::Leader {
            return;
        }
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "cannot release the lease");
        }
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_steps_down_at_two_thirds_of_the_lease_before_another_may_acquire() {
        let cfg = LeaseConfig::new("ns", "l", "a", Duration::from_secs(15));
        assert_eq!(cfg.renew_deadline(), Duration::from_secs(10));
        let s = Duration::from_secs;
        let standby = Role::Standby { holder: "b".into() };
        let table = [
            (Role::Leader, Some(s(5)), Role::Leader),
            (Role::Leader, Some(s(9)), Role::Leader),
            (Role::Leader, Some(s(10)), Role::Lost),
            (Role::Leader, Some(s(14)), Role::Lost),
            (Role::Candidate, None, Role::Candidate),
            (standby.clone(), None, standby),
        ];
        for (current, since, want) in table {
            assert_eq!(
                after_failure(&current, since, cfg.renew_deadline()),
                want,
                "{current:?} {since:?}"
            );
        }
        // The step-down comes before any other candidate may acquire.
        let t0 = SystemTime::UNIX_EPOCH + s(1_000_000);
        let lease = LeaseState {
            holder: Some("a".into()),
            renewed: Some(t0),
            duration: Some(cfg.duration),
        };
        assert!(matches!(
            decide(Some(&lease), "b", cfg.duration, t0 + cfg.renew_deadline()),
            Decision::Standby { .. }
        ));
    }

    #[test]
    fn decisions_from_lease_fields_and_now() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs;
        let lease = |holder: Option<&str>, renewed: Option<u64>, dur: Option<u64>| LeaseState {
            holder: holder.map(str::to_owned),
            renewed: renewed.map(|r| t0 + s(r)),
            duration: dur.map(s),
        };
        let standby = |until: u64| Decision::Standby {
            holder: "b".into(),
            until: t0 + s(until),
        };
        // (lease, now - t0, decision), me = "a", default duration 15 s.
        let table = [
            (None, 0, Decision::Acquire),
            (Some(lease(None, Some(0), Some(15))), 0, Decision::Acquire),
            (
                Some(lease(Some(""), Some(0), Some(15))),
                0,
                Decision::Acquire,
            ),
            (
                Some(lease(Some("a"), Some(0), Some(15))),
                100,
                Decision::Renew,
            ),
            (Some(lease(Some("b"), Some(0), Some(15))), 14, standby(15)),
            (
                Some(lease(Some("b"), Some(0), Some(15))),
                15,
                Decision::Acquire,
            ),
            (Some(lease(Some("b"), Some(0), None)), 10, standby(15)),
            (Some(lease(Some("b"), Some(0), Some(60))), 30, standby(60)),
            (Some(lease(Some("b"), None, Some(15))), 0, Decision::Acquire),
            // A renewal in our future (clock skew): still theirs.
            (Some(lease(Some("b"), Some(20), Some(15))), 0, standby(35)),
        ];
        for (l, now, want) in table {
            assert_eq!(
                decide(l.as_ref(), "a", s(15), t0 + s(now)),
                want,
                "{l:?} at +{now}s"
            );
        }
    }
}
