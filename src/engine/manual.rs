//! What people do to machines by hand: forget a machine's job (`clear`),
//! reserve a machine (for a while: a lease), extend the reservation and
//! give it back. The rules of who may do what are here; the command line
//! only says what came of them.
//!
//! `clear` forgets what a job left on a machine: the job's fields (mama's
//! own among them) and `is_started`. It never forgets what a person set
//! (`ip`, the other fields `set` changes, a reservation). A live job of
//! another user is theirs: `clear` leaves it alone unless forced, and a
//! forced clear is recorded with whose job it dropped.

use std::time::{Duration, SystemTime};

use crate::backend::Store;
use crate::engine::policy;
use crate::engine::stale::{Judge, Verdict};
use crate::error::{Error, Result};
use crate::model::event::{Event, Kind};
use crate::model::field::Field;
use crate::model::lease::{self, Lease};
use crate::model::{JobRecord, Lab, Machine};
use crate::os::{self, ProcessTable};

/// Another user's live job on a machine: what `clear` may not drop unless
/// forced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub machine: String,
    pub job: JobRecord,
    /// The user who claimed the machine for the job.
    pub user: String,
}

impl Holding {
    /// The job and its holder, for people: `'LABEL' (PID N) of USER`.
    pub fn job_of(&self) -> String {
        let pid = match self.job.pid {
            Some(pid) => format!("PID {pid}"),
            None => "no PID".to_string(),
        };
        format!("'{}' ({pid}) of {}", self.job.label, self.user)
    }

    /// Why `clear` left the machine alone, and what would clear it.
    pub fn refusal(&self) -> String {
        format!(
            "{} has a live job {}, not yours; `mama clear --force {}` forgets it anyway \
             (the job runs on)",
            self.machine,
            self.job_of(),
            self.machine
        )
    }
}

/// One machine `clear` cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleared {
    pub machine: String,
    /// Another user's live job it dropped, forced.
    pub forced: Option<Holding>,
    /// Processes of the job it forgot still hold the machine's job lock:
    /// the machine stays busy until they end.
    pub still_held: bool,
}

/// What `clear` did.
#[derive(Debug, Default)]
pub struct Clearing {
    pub cleared: Vec<Cleared>,
    /// Machines left alone: another user's live job runs there.
    pub refused: Vec<Holding>,
}

/// `clear` of `target` (a machine, or `all`), in one transaction: forgets
/// the job and `is_started` of each machine, except where another user's
/// live job runs and `force` is not given; records a `cleared` event for
/// each machine that had something to forget.
pub fn clear<P: ProcessTable>(
    store: &Store,
    target: &str,
    force: bool,
    judge: &Judge<'_, P>,
) -> Result<Clearing> {
    let mut clearing = store.update(|lab| {
        let names: Vec<String> = if target == "all" {
            lab.machines().map(|m| m.name().to_string()).collect()
        } else {
            vec![lab.get(target)?.name().to_string()]
        };
        let mut clearing = Clearing::default();
        for name in names {
            let machine = lab.get(&name)?;
            let job = machine.job();
            let holding = job
                .as_ref()
                .and_then(|job| others_live_job(machine, job, judge));
            if let Some(holding) = &holding
                && !force
            {
                clearing.refused.push(holding.clone());
                continue;
            }
            let started = !machine.get(Field::IsStarted).is_empty();
            let mut m = lab.get_mut(&name)?;
            m.clear_job()?;
            m.forget_start()?;
            let mut detail = Vec::new();
            if let Some(holding) = &holding {
                detail.push(format!("forced over the live job {}", holding.job_of()));
            }
            if started {
                detail.push("also is_started".to_string());
            }
            if job.is_some() || started {
                let mut event = Event::new(Kind::Cleared, &name);
                if let Some(job) = &job {
                    event = event.job(job);
                }
                if !detail.is_empty() {
                    event = event.detail(detail.join("; "));
                }
                lab.record(event);
            }
            clearing.cleared.push(Cleared {
                machine: name,
                forced: holding,
                still_held: false,
            });
        }
        Ok(clearing)
    })?;
    for cleared in &mut clearing.cleared {
        cleared.still_held = store.held(&cleared.machine);
    }
    Ok(clearing)
}

/// The job on `machine` when it is live and another user's: the user
/// recorded as its claimer (`job_user`) decides; where none is, the job
/// is another user's only when its PID is a live process here that
/// another user runs.
fn others_live_job<P: ProcessTable>(
    machine: &Machine,
    job: &JobRecord,
    judge: &Judge<'_, P>,
) -> Option<Holding> {
    let verdict = judge.judge(machine.name(), job);
    if !verdict.is_live() {
        return None;
    }
    let me = os::user_name();
    let recorded = machine.get(Field::JobUser).trim();
    let user = if !recorded.is_empty() {
        (recorded != me).then(|| recorded.to_string())?
    } else {
        // A PID means something only where it was recorded: this host,
        // this PID namespace, and the claimer's own process (the verdict
        // says so).
        let here = job.host.as_deref().is_none_or(|h| h == judge.host)
            && job
                .origin
                .as_ref()
                .is_none_or(|origin| judge.place.shares_pids_with(origin));
        let pid = job.pid.filter(|_| here && verdict == Verdict::Live)?;
        let owner = os::process_owner(pid)?;
        (owner != os::user_id()).then(|| os::user_name_of(owner))?
    };
    Some(Holding {
        machine: machine.name().to_string(),
        job: job.clone(),
        user,
    })
}

/// What a reservation asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    /// How long (`--for`); `None`: the lab's longest reservation, else
    /// until released.
    pub length: Option<Duration>,
    /// The holder's note (`--note`).
    pub note: Option<String>,
}

/// What came of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Reserved now, until this end (Unix seconds), or until released.
    New { user: String, until: Option<i64> },
    /// The caller held it already: nothing asked, nothing changed.
    Already { user: String, until: Option<i64> },
    /// The caller held it already, and its end (or note) moved.
    Moved { user: String, until: Option<i64> },
}

impl Reserved {
    pub fn until(&self) -> Option<i64> {
        match self {
            Reserved::New { until, .. }
            | Reserved::Already { until, .. }
            | Reserved::Moved { until, .. } => *until,
        }
    }
}

/// `reserve`: reserves `machine` for this user, for as long as `ask`
/// says (see [`policy::lease_length`]); a machine reserved by them
/// already stays so, and gets the new end (as `extend` gives it) where
/// one is asked.
pub fn reserve(store: &Store, machine: &str, ask: &Ask) -> Result<Reserved> {
    let user = os::user_name();
    store.update(|lab| reserve_in(lab, machine, &user, ask, SystemTime::now()))
}

/// The reservation of `machine` for `user` in a transaction's lab (for
/// `reserve`, and for `wait --then-reserve` in the transaction that finds
/// the machine free); `now` is when its lease starts.
pub fn reserve_in(
    lab: &mut Lab,
    machine: &str,
    user: &str,
    ask: &Ask,
    now: SystemTime,
) -> Result<Reserved> {
    let length = policy::lease_length(lab, ask.length)?;
    if let Some(note) = &ask.note {
        lease::check_note(note)?;
    }
    let held = lab.get(machine)?;
    match held.reservation() {
        Some(holder) if holder != user => {
            let until = held
                .lease()
                .and_then(|l| l.expires)
                .map(|t| format!(" until {}", crate::text::local_time(t)))
                .unwrap_or_default();
            Err(Error::Invalid(format!(
                "{machine} is reserved by {holder} already{until}"
            )))
        }
        Some(_) if ask.length.is_none() && ask.note.is_none() => Ok(Reserved::Already {
            user: user.to_string(),
            until: held.lease().and_then(|l| l.expires),
        }),
        Some(_) => {
            let kept = held.lease().cloned().unwrap_or_default();
            let until = match ask.length {
                Some(length) => Some(lease::end_after(now, length)?),
                None => kept.expires,
            };
            let note = ask.note.clone().unwrap_or(kept.note);
            let lease = Lease {
                user: user.to_string(),
                expires: until,
                note,
            };
            lab.set_lease(machine, Some(lease.clone()))?;
            lab.record(Event::new(Kind::Extended, machine).detail(lease_detail(&lease)));
            Ok(Reserved::Moved {
                user: user.to_string(),
                until,
            })
        }
        None => {
            lab.get_mut(machine)?.set(Field::Reservation, user)?;
            let until = length.map(|l| lease::end_after(now, l)).transpose()?;
            let note = ask.note.clone().unwrap_or_default();
            let mut event = Event::new(Kind::Reserved, machine);
            if until.is_some() || !note.is_empty() {
                let lease = Lease {
                    user: user.to_string(),
                    expires: until,
                    note,
                };
                event = event.detail(lease_detail(&lease));
                lab.set_lease(machine, Some(lease))?;
            }
            lab.record(event);
            Ok(Reserved::New {
                user: user.to_string(),
                until,
            })
        }
    }
}

/// `extend`: moves the end of this user's reservation of `machine` to
/// `length` from now (as `reserve --for` sets it), within the lab's
/// longest reservation; another user's, or none, is refused. Returns the
/// new end.
pub fn extend(store: &Store, machine: &str, length: Duration) -> Result<i64> {
    let user = os::user_name();
    store.update(|lab| {
        policy::lease_length(lab, Some(length))?;
        let held = lab.get(machine)?;
        match held.reservation() {
            None => Err(Error::Invalid(format!(
                "{machine} is not reserved; `mama reserve {machine} --for DURATION` reserves it"
            ))),
            Some(holder) if holder != user => Err(Error::Invalid(format!(
                "{machine} is reserved by {holder}, not by you ({user}); only its holder \
                 extends a reservation"
            ))),
            Some(_) => {
                let ask = Ask {
                    length: Some(length),
                    note: None,
                };
                let reserved = reserve_in(lab, machine, &user, &ask, SystemTime::now())?;
                reserved.until().ok_or_else(|| {
                    Error::Invalid(format!("internal error: {machine} was extended to no end"))
                })
            }
        }
    })
}

/// An event's detail for a lease: its end, and the note.
fn lease_detail(lease: &Lease) -> String {
    let mut parts = Vec::new();
    if let Some(end) = lease.expires {
        parts.push(format!("until {}", crate::text::local_time(end)));
    }
    if !lease.note.is_empty() {
        parts.push(format!("note: {}", lease.note));
    }
    parts.join("; ")
}

/// `release`: gives up this user's reservation of `machine`; another
/// user's is refused.
pub fn release(store: &Store, machine: &str) -> Result<()> {
    let user = os::user_name();
    store.update(|lab| {
        let mut m = lab.get_mut(machine)?;
        match m.view().reservation() {
            None => Err(Error::Invalid(format!("{machine} is not reserved"))),
            Some(holder) if holder != user => Err(Error::Invalid(format!(
                "{machine} is reserved by {holder}, not by you ({user}); \
                 `mama release-forced {machine}` releases it anyway"
            ))),
            Some(_) => {
                m.set(Field::Reservation, "")?;
                lab.record(Event::new(Kind::Unreserved, machine));
                Ok(())
            }
        }
    })
}

/// `release-forced`: ends the reservation of `machine`, whoever holds it;
/// returns who did.
pub fn release_forced(store: &Store, machine: &str) -> Result<Option<String>> {
    store.update(|lab| {
        let mut m = lab.get_mut(machine)?;
        let holder = m.view().reservation();
        m.set(Field::Reservation, "")?;
        if let Some(holder) = &holder {
            lab.record(
                Event::new(Kind::ForceReleased, machine)
                    .detail(format!("was reserved by {holder}")),
            );
        }
        Ok(holder)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holding_names_the_job_its_pid_and_its_user() {
        let holding = Holding {
            machine: "rig3".into(),
            job: JobRecord {
                label: "run smoke".into(),
                pid: Some(4321),
                ..JobRecord::default()
            },
            user: "alice".into(),
        };
        let text = holding.refusal();
        for part in ["rig3", "'run smoke'", "PID 4321", "alice", "--force"] {
            assert!(text.contains(part), "{part}: {text}");
        }
        let no_pid = Holding {
            job: JobRecord {
                pid: None,
                ..holding.job.clone()
            },
            ..holding
        };
        assert!(no_pid.job_of().contains("no PID"), "{}", no_pid.job_of());
    }
}
