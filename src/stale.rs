//! Is a job stale, and why. One pure function, used by `list`, `info` and
//! the claim loop alike.
//!
//! A job is stale when
//! - a PID is recorded and no process has it;
//! - a PID is recorded but its process started more than 2 s after the
//!   claim (the PID was reused: a claimer must predate its claim);
//! - no PID is recorded and the claim is older than the stale age.
//!
//! A job claimed on another host is never judged by a local PID.

use std::fmt;

use crate::error::{Error, Result};
use crate::lab::JobRecord;
use crate::os::{Probe, ProcessTable};

/// How much later than its claim a process may have started (clock steps,
/// second-granular start times).
pub const REUSE_SLACK_SECS: i64 = 2;
/// The default stale age of a job without a PID.
pub const DEFAULT_STALE_AFTER_SECS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its process runs (or it has no PID and is young).
    Live,
    /// Claimed on another host: its PID means nothing here.
    Remote(String),
    /// No PID and no timestamp: a waiter stamps it, so it ages.
    Unstamped,
    Stale(StaleReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleReason {
    DeadPid {
        pid: u32,
    },
    ReusedPid {
        pid: u32,
        started: i64,
        claimed: i64,
    },
    Expired {
        age: i64,
        limit: u64,
    },
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StaleReason::DeadPid { pid } => write!(f, "PID {pid} is not running"),
            StaleReason::ReusedPid {
                pid,
                started,
                claimed,
            } => write!(
                f,
                "PID {pid} was reused: its process started {} s after the claim",
                started - claimed
            ),
            StaleReason::Expired { age, limit } => {
                write!(
                    f,
                    "no PID recorded and claimed {age} s ago (stale after {limit} s)"
                )
            }
        }
    }
}

/// The judge, with what it needs to know about the world.
pub struct Judge<'a, P: ProcessTable> {
    pub now: i64,
    pub stale_after: u64,
    pub host: &'a str,
    pub processes: &'a P,
}

impl<P: ProcessTable> Judge<'_, P> {
    pub fn judge(&self, job: &JobRecord) -> Verdict {
        let remote = job.host.as_deref().filter(|&h| h != self.host);
        match (job.pid, remote) {
            (Some(pid), None) => match self.processes.probe(pid) {
                Probe::Gone => Verdict::Stale(StaleReason::DeadPid { pid }),
                Probe::Alive {
                    started: Some(started),
                } => match job.timestamp {
                    Some(claimed) if started > claimed + REUSE_SLACK_SECS => {
                        Verdict::Stale(StaleReason::ReusedPid {
                            pid,
                            started,
                            claimed,
                        })
                    }
                    _ => Verdict::Live,
                },
                Probe::Alive { started: None } => Verdict::Live,
            },
            (Some(_), Some(host)) => Verdict::Remote(host.to_string()),
            (None, _) => match job.timestamp {
                None => Verdict::Unstamped,
                Some(claimed) => {
                    let age = self.now - claimed;
                    if age > self.stale_after as i64 {
                        Verdict::Stale(StaleReason::Expired {
                            age,
                            limit: self.stale_after,
                        })
                    } else {
                        Verdict::Live
                    }
                }
            },
        }
    }
}

/// The stale age: `MAMA_STALE_AFTER` (whole seconds, at most
/// [`crate::cli::MAX_SECS`], so an age never wraps negative) or the default.
pub fn stale_after_from_env() -> Result<u64> {
    use crate::cli::{MAX_SECS, MAX_SECS_TEXT};
    match std::env::var("MAMA_STALE_AFTER") {
        Err(_) => Ok(DEFAULT_STALE_AFTER_SECS),
        Ok(v) if v.trim().is_empty() => Ok(DEFAULT_STALE_AFTER_SECS),
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|&secs| secs <= MAX_SECS)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "MAMA_STALE_AFTER must be a whole number of seconds, \
                     at most {MAX_SECS_TEXT}, not '{v}'"
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Table(HashMap<u32, Option<i64>>);
    impl ProcessTable for Table {
        fn probe(&self, pid: u32) -> Probe {
            match self.0.get(&pid) {
                None => Probe::Gone,
                Some(&started) => Probe::Alive { started },
            }
        }
        fn parent(&self, _: u32) -> Option<u32> {
            None
        }
    }

    const NOW: i64 = 1_763_047_845;

    fn verdict(pid: Option<u32>, timestamp: Option<i64>, host: Option<&str>) -> Verdict {
        let table = Table(HashMap::from([
            (10, Some(NOW - 100)),
            (11, Some(NOW - 1)),
            (12, None),
        ]));
        let judge = Judge {
            now: NOW,
            stale_after: 300,
            host: "here",
            processes: &table,
        };
        judge.judge(&JobRecord {
            label: "job".into(),
            pid,
            timestamp,
            host: host.map(str::to_string),
        })
    }

    #[test]
    fn a_dead_pid_is_stale() {
        assert_eq!(
            verdict(Some(99), Some(NOW), None),
            Verdict::Stale(StaleReason::DeadPid { pid: 99 })
        );
    }

    #[test]
    fn a_live_pid_that_predates_its_claim_is_live() {
        assert_eq!(verdict(Some(10), Some(NOW - 50), None), Verdict::Live);
        // Within the slack: a claim stamped a moment before the start time.
        assert_eq!(verdict(Some(11), Some(NOW - 3), None), Verdict::Live);
        // Start time hidden by /proc: it exists, so it is live.
        assert_eq!(verdict(Some(12), Some(NOW - 1000), None), Verdict::Live);
        assert_eq!(verdict(Some(10), None, None), Verdict::Live);
    }

    #[test]
    fn a_pid_started_after_the_claim_was_reused() {
        assert_eq!(
            verdict(Some(10), Some(NOW - 200), None),
            Verdict::Stale(StaleReason::ReusedPid {
                pid: 10,
                started: NOW - 100,
                claimed: NOW - 200
            })
        );
    }

    #[test]
    fn without_a_pid_age_decides() {
        assert_eq!(
            verdict(None, Some(NOW - 301), None),
            Verdict::Stale(StaleReason::Expired {
                age: 301,
                limit: 300
            })
        );
        assert_eq!(verdict(None, Some(NOW - 300), None), Verdict::Live);
        assert_eq!(verdict(None, None, None), Verdict::Unstamped);
    }

    #[test]
    fn another_hosts_pid_is_not_judged_here() {
        assert_eq!(
            verdict(Some(99), Some(NOW), Some("there")),
            Verdict::Remote("there".into())
        );
        assert_eq!(
            verdict(Some(99), Some(NOW), Some("here")),
            Verdict::Stale(StaleReason::DeadPid { pid: 99 })
        );
        assert!(matches!(
            verdict(None, Some(NOW - 999), Some("there")),
            Verdict::Stale(_)
        ));
    }
}
