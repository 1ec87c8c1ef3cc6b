//! Is a job stale, and why. One pure function, used by `list`, `info` and
//! the claim loop alike.
//!
//! A PID is judged only where it means something: in the PID namespace and
//! the boot it was recorded in (the claim's [`Origin`](crate::os::Origin)). There,
//! - a dead PID is stale;
//! - a live PID whose process started at another instant than the claimer
//!   did was reused (start times are clock ticks since boot, which never
//!   step; a record without an origin, as other tools write, falls back to
//!   "started more than 2 s after the claim", measured as ages);
//! - no PID and a claim older than the stale age is stale.
//!
//! Everywhere else on this kernel (a container, another PID namespace) the
//! machine's job lock is the proof of life: a running `mama run` and every
//! process of its job hold it, so a claim whose lock is held is live, and
//! one whose lock is free is stale. The lock also outlives a killed `mama`
//! while any process of its job still runs. A claim made in an earlier boot
//! of this host is stale; one made on another host is never judged here.
//!
//! In a lab shared across hosts (the database backend, see
//! [`JobLocks::across_hosts`]) a claim made by mama is judged
//! by its job lock alone, wherever it was made: live while the holder's
//! session holds it, stale once that session is gone, except just after the
//! server restarted, while holders re-attach.

use std::fmt;

use crate::backend::JobLocks;
use crate::model::JobRecord;
use crate::os::{Place, Probe, ProcessTable};

/// How much later than its claim a process may have started, for records
/// without an origin (second-granular timestamps).
pub const REUSE_SLACK_SECS: i64 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its process runs (or it has no PID and is young).
    Live,
    /// Its PID says nothing here (dead, reused, or of another namespace),
    /// but processes of its job still hold the machine's job lock.
    HeldByLock,
    /// Claimed on another host: its PID means nothing here.
    Remote(String),
    /// No PID and no timestamp: a waiter stamps it, so it ages.
    Unstamped,
    Stale(StaleReason),
}

impl Verdict {
    /// Whether the job holds its machine.
    pub fn is_live(&self) -> bool {
        !matches!(self, Verdict::Stale(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleReason {
    DeadPid {
        pid: u32,
    },
    /// A newer process has the PID; `late` is how many seconds after the
    /// claim it started, where only a timestamp tells.
    ReusedPid {
        pid: u32,
        late: Option<i64>,
    },
    Expired {
        age: i64,
        limit: u64,
    },
    /// Claimed in another PID namespace of this kernel, and no process
    /// holds its job lock.
    LockFree {
        pid: Option<u32>,
    },
    /// Claimed on this host before it last booted.
    EarlierBoot,
    /// In a lab shared across hosts: the session of the `mama run` that
    /// made the claim is gone (its host died, was cut off, or its mama was
    /// killed).
    SessionGone {
        host: Option<String>,
    },
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StaleReason::DeadPid { pid } => write!(f, "PID {pid} is not running"),
            StaleReason::ReusedPid { pid, late: None } => write!(
                f,
                "PID {pid} was reused: the process that has it is not the claimer"
            ),
            StaleReason::ReusedPid {
                pid,
                late: Some(late),
            } => write!(
                f,
                "PID {pid} was reused: its process started {late} s after the claim"
            ),
            StaleReason::Expired { age, limit } => write!(
                f,
                "no PID recorded and claimed {age} s ago (stale after {limit} s)"
            ),
            StaleReason::LockFree { pid } => {
                write!(f, "claimed in another PID namespace")?;
                if let Some(pid) = pid {
                    write!(f, " (PID {pid} there)")?;
                }
                write!(f, ", and no process holds its job lock")
            }
            StaleReason::EarlierBoot => write!(f, "claimed before this host last booted"),
            StaleReason::SessionGone { host } => {
                write!(f, "the session of the mama that claimed it")?;
                if let Some(host) = host {
                    write!(f, " on host {host}")?;
                }
                write!(f, " is gone from the lab's database")
            }
        }
    }
}

/// The judge, with what it needs to know about the world.
pub struct Judge<'a, P: ProcessTable> {
    pub now: i64,
    pub stale_after: u64,
    pub host: &'a str,
    pub place: &'a Place,
    pub processes: &'a P,
    pub locks: &'a dyn JobLocks,
}

impl<P: ProcessTable> Judge<'_, P> {
    /// The verdict on the job recorded on `machine`.
    pub fn judge(&self, machine: &str, job: &JobRecord) -> Verdict {
        let other_host = job.host.as_deref().filter(|&h| h != self.host);
        let by_lock = |reason: StaleReason| {
            if self.locks.held(machine) {
                Verdict::HeldByLock
            } else {
                Verdict::Stale(reason)
            }
        };
        let Some(pid) = job.pid else {
            return self.judge_age(job);
        };
        // mama's claims record their host (and, where /proc tells, their
        // origin); other tools' records have neither.
        if self.locks.across_hosts() && (job.origin.is_some() || job.host.is_some()) {
            // A holder that lives here (this boot and PID namespace, the
            // claimer's own process) and whose lock is free lost its
            // session: it re-attaches, or stops its job, and the machine is
            // not free before either.
            let holder_lives = job.origin.as_ref().is_some_and(|origin| {
                self.place.shares_pids_with(origin)
                    && matches!(
                        self.processes.probe(pid),
                        Probe::Alive { start: Some(start) } if start == origin.start
                    )
            });
            return if self.locks.held(machine) || self.locks.reattaching(machine) || holder_lives {
                Verdict::Live
            } else {
                Verdict::Stale(StaleReason::SessionGone {
                    host: job.host.clone(),
                })
            };
        }
        match &job.origin {
            Some(origin) if self.place.shares_pids_with(origin) => {
                match self.processes.probe(pid) {
                    Probe::Gone => by_lock(StaleReason::DeadPid { pid }),
                    Probe::Alive { start: Some(start) } if start != origin.start => {
                        by_lock(StaleReason::ReusedPid { pid, late: None })
                    }
                    Probe::Alive { .. } => Verdict::Live,
                }
            }
            Some(origin) if self.place.same_boot(origin) => {
                by_lock(StaleReason::LockFree { pid: Some(pid) })
            }
            // Another kernel: an earlier boot of this host, or another host.
            Some(_) => match other_host {
                Some(host) => Verdict::Remote(host.to_string()),
                None => by_lock(StaleReason::EarlierBoot),
            },
            // No origin (another tool, an older mama): the host decides
            // whether the PID is ours to judge.
            None => match other_host {
                Some(host) => Verdict::Remote(host.to_string()),
                None => self.judge_pid_by_time(pid, job, &by_lock),
            },
        }
    }

    /// A PID recorded without an origin: alive, and started before the
    /// claim (give or take the slack), measured as ages in the boot clock.
    fn judge_pid_by_time(
        &self,
        pid: u32,
        job: &JobRecord,
        by_lock: &dyn Fn(StaleReason) -> Verdict,
    ) -> Verdict {
        match self.processes.probe(pid) {
            Probe::Gone => by_lock(StaleReason::DeadPid { pid }),
            Probe::Alive { start: Some(start) } => {
                let age = self.processes.age(start);
                match (job.timestamp, age) {
                    (Some(claimed), Some(age)) => {
                        // Saturating: a damaged timestamp must never panic.
                        let late = self.now.saturating_sub(claimed).saturating_sub(age);
                        if late > REUSE_SLACK_SECS {
                            by_lock(StaleReason::ReusedPid {
                                pid,
                                late: Some(late),
                            })
                        } else {
                            Verdict::Live
                        }
                    }
                    _ => Verdict::Live,
                }
            }
            Probe::Alive { start: None } => Verdict::Live,
        }
    }

    /// A job without a PID ages out.
    fn judge_age(&self, job: &JobRecord) -> Verdict {
        match job.timestamp {
            None => Verdict::Unstamped,
            Some(claimed) => {
                let age = self.now.saturating_sub(claimed);
                if age > i64::try_from(self.stale_after).unwrap_or(i64::MAX) {
                    Verdict::Stale(StaleReason::Expired {
                        age,
                        limit: self.stale_after,
                    })
                } else {
                    Verdict::Live
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::Origin;
    use std::collections::{HashMap, HashSet};

    /// Processes by PID with their start ticks; ages are start ticks read
    /// as seconds before `NOW_TICKS`.
    struct Table(HashMap<u32, Option<u64>>);
    const NOW_TICKS: u64 = 10_000;

    impl ProcessTable for Table {
        fn probe(&self, pid: u32) -> Probe {
            match self.0.get(&pid) {
                None => Probe::Gone,
                Some(&start) => Probe::Alive { start },
            }
        }
        fn parent(&self, _: u32) -> Option<u32> {
            None
        }
        fn age(&self, start: u64) -> Option<i64> {
            Some((NOW_TICKS - start) as i64)
        }
    }

    struct Locks(HashSet<&'static str>);
    impl JobLocks for Locks {
        fn try_lock(&self, _: &str) -> crate::error::Result<Option<crate::backend::JobLock>> {
            Ok(None)
        }
        fn wait_unlocked(&self, _: &str, _: std::time::Duration) -> crate::error::Result<bool> {
            Ok(false)
        }
        fn held(&self, machine: &str) -> bool {
            self.0.contains(machine)
        }
        fn inherited(&self, _: &str) -> bool {
            false
        }
        fn held_job_locks(&self) -> crate::backend::HeldJobLocks {
            unreachable!("the judge looks at one machine at a time")
        }
        fn hold_place(&self) -> crate::error::Result<crate::backend::PlaceLock> {
            unreachable!("the judge takes no place")
        }
        fn power_lock(
            &self,
            _: &str,
            _: &mut dyn FnMut(),
        ) -> crate::error::Result<crate::backend::PowerLock> {
            unreachable!("the judge powers nothing")
        }
        fn place_held(&self, _: &crate::model::queue::Waiter) -> bool {
            false
        }
        fn wait_place(&self, _: &str, _: std::time::Duration) -> crate::error::Result<bool> {
            Ok(true)
        }
    }

    const NOW: i64 = 1_763_047_845;
    const BOOT: &str = "boot-a";
    const NS: u64 = 4026531836;

    fn origin(boot: &str, pidns: u64, start: u64) -> Option<Origin> {
        Some(Origin {
            boot: boot.into(),
            pidns,
            start,
        })
    }

    fn job(pid: Option<u32>, timestamp: Option<i64>, host: Option<&str>) -> JobRecord {
        JobRecord {
            label: "job".into(),
            pid,
            timestamp,
            user: None,
            host: host.map(str::to_string),
            origin: None,
        }
    }

    /// The verdict on `job` on machine "held" (whose job lock is held) or
    /// "free" (whose lock is free).
    fn verdict(machine: &str, job: &JobRecord) -> Verdict {
        // PID 10 started 100 s ago, 11 one second ago, 12 is hidden.
        let table = Table(HashMap::from([
            (10, Some(NOW_TICKS - 100)),
            (11, Some(NOW_TICKS - 1)),
            (12, None),
        ]));
        let place = Place {
            boot: Some(BOOT.into()),
            pidns: Some(NS),
            start: Some(1),
            proc_is_ours: true,
        };
        let locks = Locks(HashSet::from(["held"]));
        let judge = Judge {
            now: NOW,
            stale_after: 300,
            host: "here",
            place: &place,
            processes: &table,
            locks: &locks,
        };
        judge.judge(machine, job)
    }

    fn with_origin(mut job: JobRecord, origin: Option<Origin>) -> JobRecord {
        job.origin = origin;
        job
    }

    #[test]
    fn a_pid_of_this_namespace_is_judged_by_its_exact_start() {
        let mine = |pid, start| {
            with_origin(
                job(Some(pid), Some(NOW - 5000), Some("here")),
                origin(BOOT, NS, start),
            )
        };
        // The claimer runs: live, whatever the wall clock says of the claim.
        assert_eq!(verdict("free", &mine(10, NOW_TICKS - 100)), Verdict::Live);
        // Another process has the PID now.
        assert_eq!(
            verdict("free", &mine(10, NOW_TICKS - 150)),
            Verdict::Stale(StaleReason::ReusedPid {
                pid: 10,
                late: None
            })
        );
        assert_eq!(
            verdict("free", &mine(99, 5)),
            Verdict::Stale(StaleReason::DeadPid { pid: 99 })
        );
        // Start time hidden by /proc: it exists, so it is live.
        assert_eq!(verdict("free", &mine(12, 5)), Verdict::Live);
        // A dead or reused PID whose job lock is still held: the job's
        // processes outlived their mama.
        assert_eq!(verdict("held", &mine(99, 5)), Verdict::HeldByLock);
        assert_eq!(
            verdict("held", &mine(10, NOW_TICKS - 150)),
            Verdict::HeldByLock
        );
    }

    #[test]
    fn a_pid_of_another_namespace_is_never_judged_only_its_lock() {
        let theirs = with_origin(
            job(Some(10), Some(NOW), Some("here")),
            origin(BOOT, NS + 1, NOW_TICKS - 100),
        );
        assert_eq!(verdict("held", &theirs), Verdict::HeldByLock);
        assert_eq!(
            verdict("free", &theirs),
            Verdict::Stale(StaleReason::LockFree { pid: Some(10) })
        );
    }

    #[test]
    fn an_earlier_boot_of_this_host_is_stale_another_host_is_remote() {
        let earlier = with_origin(
            job(Some(10), Some(NOW), Some("here")),
            origin("boot-old", NS, NOW_TICKS - 100),
        );
        assert_eq!(
            verdict("free", &earlier),
            Verdict::Stale(StaleReason::EarlierBoot)
        );
        let elsewhere = with_origin(
            job(Some(10), Some(NOW), Some("there")),
            origin("boot-b", NS, 1),
        );
        assert_eq!(verdict("free", &elsewhere), Verdict::Remote("there".into()));
    }

    #[test]
    fn a_record_without_origin_falls_back_to_ages() {
        // Started 100 s ago, claimed 50 s ago: predates its claim.
        assert_eq!(
            verdict("free", &job(Some(10), Some(NOW - 50), None)),
            Verdict::Live
        );
        // Within the slack.
        assert_eq!(
            verdict("free", &job(Some(11), Some(NOW - 3), None)),
            Verdict::Live
        );
        assert_eq!(
            verdict("free", &job(Some(12), Some(NOW - 1000), None)),
            Verdict::Live
        );
        assert_eq!(verdict("free", &job(Some(10), None, None)), Verdict::Live);
        assert_eq!(
            verdict("free", &job(Some(10), Some(NOW - 200), None)),
            Verdict::Stale(StaleReason::ReusedPid {
                pid: 10,
                late: Some(100)
            })
        );
        assert_eq!(
            verdict("free", &job(Some(99), Some(NOW), Some("here"))),
            Verdict::Stale(StaleReason::DeadPid { pid: 99 })
        );
        assert_eq!(
            verdict("free", &job(Some(99), Some(NOW), Some("there"))),
            Verdict::Remote("there".into())
        );
    }

    #[test]
    fn without_a_pid_age_decides() {
        assert_eq!(
            verdict("free", &job(None, Some(NOW - 301), None)),
            Verdict::Stale(StaleReason::Expired {
                age: 301,
                limit: 300
            })
        );
        assert_eq!(
            verdict("free", &job(None, Some(NOW - 300), None)),
            Verdict::Live
        );
        assert_eq!(verdict("free", &job(None, None, None)), Verdict::Unstamped);
        assert!(matches!(
            verdict("free", &job(None, Some(NOW - 999), Some("there"))),
            Verdict::Stale(_)
        ));
    }
}
