//! Busy or free, claim and release, and the waiting loop.
//!
//! The check and the claim happen in one state transaction, so two runs can
//! never both see a machine free. A claim also takes the machine's job
//! lock, and the running `mama run` and every process of its job hold it
//! for the job's whole life (the job inherits the descriptor), so:
//! - waiters sleep on that lock and wake the instant the job ends or the
//!   last of its processes dies;
//! - the lock is the proof of life wherever a PID cannot be judged: a
//!   claim from another PID namespace, or a job whose `mama` was killed
//!   while processes of the job still run ([`crate::engine::stale`]);
//! - a machine whose record is free while its lock is held (a job whose
//!   record was cleared by hand still runs) is busy.
//!
//! A run nested in a claim of one of its ancestors leaves that claim in
//! place and records only events: the outer claim stands while the outer
//! run lives, however the inner one ends.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::backend::{JobLock, JobLocks, Store};
use crate::cli::render;
use crate::engine::os::{self, Place, Processes};
use crate::engine::stale::{Judge, StaleReason, Verdict};
use crate::error::{Error, Result};
use crate::model::event::{Event, Kind};
use crate::model::field::Field;
use crate::model::{JobRecord, Lab, Machine};

/// Who asks: the busy rules depend on it.
#[derive(Debug)]
pub struct Caller {
    pub pid: u32,
    /// This process and its ancestors with their start times, read the
    /// first time a live job asks (a free machine never needs them).
    lineage: std::cell::OnceCell<Vec<(u32, Option<u64>)>>,
    pub user: String,
    pub host: String,
    pub place: Place,
}

impl Caller {
    pub fn current() -> Caller {
        Caller {
            pid: std::process::id(),
            lineage: std::cell::OnceCell::new(),
            user: os::user_name(),
            host: os::host_name(),
            place: Place::here(),
        }
    }

    /// Whether `job` was claimed by us or one of our ancestors: its PID is
    /// in our lineage, in our PID namespace and boot, and (where the claim
    /// recorded it) the process with that PID is the claimer itself.
    pub fn owns(&self, job: &JobRecord) -> bool {
        let Some(pid) = job.pid else {
            return false;
        };
        let lineage = self.lineage.get_or_init(|| os::lineage(&Processes::new()));
        match &job.origin {
            Some(origin) => {
                self.place.shares_pids_with(origin) && lineage.contains(&(pid, Some(origin.start)))
            }
            None => {
                job.host.as_deref().is_none_or(|h| h == self.host)
                    && lineage.iter().any(|&(p, _)| p == pid)
            }
        }
    }

    /// A new claim by this process.
    fn claim(&self, label: &str, now: i64) -> JobRecord {
        JobRecord {
            label: label.to_string(),
            pid: Some(self.pid),
            timestamp: Some(now),
            host: Some(self.host.clone()),
            origin: self.place.origin_of_this_process(),
        }
    }
}

/// Why a machine is busy for a caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Busy {
    /// A live job, on `machine` (this one, or one sharing a resource).
    Job {
        machine: String,
        job: JobRecord,
        verdict: Verdict,
    },
    Reserved {
        machine: String,
        by: String,
    },
    Started {
        machine: String,
    },
    /// The record is free, but the machine's job lock is held: processes
    /// of a job whose record was cleared still run, or a claim is being
    /// made this very moment.
    Locked,
}

impl Busy {
    /// The machine whose job lock a waiter may sleep on.
    fn lock_holder(&self, target: &str) -> Option<String> {
        match self {
            Busy::Job {
                machine,
                verdict: Verdict::Live | Verdict::HeldByLock,
                ..
            } => Some(machine.clone()),
            Busy::Locked => Some(target.to_string()),
            _ => None,
        }
    }
}

impl Busy {
    /// Why `target` is busy, for people: who holds it, since when.
    fn describe(&self, target: &str) -> String {
        let subject = |machine: &str| {
            if machine == target {
                "it".to_string()
            } else {
                format!(
                    "{}, which shares a resource with it,",
                    render::printable(machine)
                )
            }
        };
        match self {
            Busy::Job {
                machine,
                job,
                verdict,
            } => {
                let mut text = format!(
                    "{} runs job '{}'",
                    subject(machine),
                    render::printable(&job.label)
                );
                if let Some(pid) = job.pid {
                    text.push_str(&format!(" (PID {pid}"));
                    if let Verdict::Remote(host) = verdict {
                        text.push_str(&format!(" on host {}", render::printable(host)));
                    }
                    text.push(')');
                }
                if *verdict == Verdict::HeldByLock {
                    text.push_str(", whose processes still hold its job lock,");
                }
                if let Some(ts) = job.timestamp {
                    text.push_str(&format!(" since {}", render::time_and_age(ts, os::now())));
                }
                text
            }
            Busy::Reserved { machine, by } => format!(
                "{} is reserved by {}",
                subject(machine),
                render::printable(by)
            ),
            Busy::Started { machine } => format!(
                "{} was started by hand (is_started is set)",
                subject(machine)
            ),
            Busy::Locked => "processes of a job still hold its job lock \
                             (its record was cleared, or a claim is being made)"
                .to_string(),
        }
    }
}

/// What `list` and `info` show in the State column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Free,
    Busy,
    Stale,
    Reserved,
    Started,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Free => "free",
            Status::Busy => "busy",
            Status::Stale => "stale",
            Status::Reserved => "reserved",
            Status::Started => "started",
        }
    }
}

/// A machine's status, from its own fields (a job first, then a hand
/// start, then a reservation); `locked` says that, with no job recorded,
/// its job lock is held (processes of a job whose record was cleared).
pub fn status(machine: &Machine, verdict: Option<&Verdict>, locked: bool) -> Status {
    match verdict {
        Some(Verdict::Stale(_)) => Status::Stale,
        Some(_) => Status::Busy,
        None if locked => Status::Busy,
        None if machine.is_started() => Status::Started,
        None if machine.reservation().is_some() => Status::Reserved,
        None => Status::Free,
    }
}

/// Whether `machine` is busy for `caller` by its own fields (SPEC rules 1-3).
fn busy_by_own_fields(
    machine: &Machine,
    caller: &Caller,
    judge: &Judge<'_, Processes>,
) -> Option<Busy> {
    let name = machine.name().to_string();
    if let Some(job) = machine.job() {
        let verdict = judge.judge(&name, &job);
        // Ours: claimed by an ancestor of ours, or we run inside the job
        // that holds the machine's lock (whatever namespace we are in).
        let ours = (verdict == Verdict::Live && caller.owns(&job))
            || (verdict.is_live() && judge.locks.inherited(&name));
        if verdict.is_live() && !ours {
            return Some(Busy::Job {
                machine: name,
                job,
                verdict,
            });
        }
    }
    if let Some(by) = machine.reservation().filter(|by| *by != caller.user) {
        return Some(Busy::Reserved { machine: name, by });
    }
    if machine.is_started() {
        return Some(Busy::Started { machine: name });
    }
    None
}

/// The machines whose state decides whether `target` is free: itself, then
/// every machine sharing one of its resources.
fn deciding_machines(lab: &Lab, target: &str) -> Result<Vec<String>> {
    let resources: HashSet<String> = lab.get(target)?.resources().into_iter().collect();
    let mut names = vec![target.to_string()];
    for machine in lab.machines() {
        let name = machine.name();
        if name != target && machine.resources().iter().any(|r| resources.contains(r)) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Whether `target` is busy for `caller` (all four SPEC rules).
fn busy(
    lab: &Lab,
    target: &str,
    caller: &Caller,
    judge: &Judge<'_, Processes>,
) -> Result<Option<Busy>> {
    for name in deciding_machines(lab, target)? {
        if let Some(busy) = busy_by_own_fields(lab.get(&name)?, caller, judge) {
            return Ok(Some(busy));
        }
    }
    Ok(None)
}

/// Clears the stale jobs that stand between the caller and `target`, and
/// stamps jobs that have neither PID nor timestamp so they can age. Each
/// clear is reported on stderr.
fn sweep(lab: &mut Lab, target: &str, judge: &Judge<'_, Processes>) -> Result<()> {
    for name in deciding_machines(lab, target)? {
        let mut machine = lab.get_mut(&name)?;
        let Some(job) = machine.view().job() else {
            continue;
        };
        match judge.judge(&name, &job) {
            Verdict::Stale(reason) => {
                machine.clear_job()?;
                report_cleared(&name, &job, &reason);
                lab.record(
                    Event::new(Kind::StaleCleared, &name)
                        .job(&job)
                        .detail(reason.to_string()),
                );
            }
            Verdict::Unstamped => machine.set(Field::JobTimestamp, &judge.now.to_string())?,
            Verdict::Live | Verdict::HeldByLock | Verdict::Remote(_) => {}
        }
    }
    Ok(())
}

fn report_cleared(machine: &str, job: &JobRecord, reason: &StaleReason) {
    let pid = job.pid.map(|p| format!(", PID {p}")).unwrap_or_default();
    say!(
        "mama: cleared stale job '{}' on {machine}{pid}: {reason}",
        render::printable(&job.label)
    );
}

/// How long `--no-wait` waits for a free record's job lock (outside the
/// lab's lock) before it calls the machine busy: a waiter that has just
/// woken, or a `list` probing it, holds it for an instant.
const LOCK_GRACE: Duration = Duration::from_millis(50);

/// What the caller wants of the machine.
#[derive(Debug, Clone)]
pub enum Intent {
    /// Claim it for a job with this label.
    Run { label: String },
    /// Only wait until it is free.
    Wait,
}

/// How to wait.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// Give up at once if busy.
    pub no_wait: bool,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// The longest sleep between two looks at the state file.
    pub poll: Duration,
}

/// A machine claimed for a job; release it with [`Claim::release`].
#[derive(Debug)]
pub struct Claim {
    pub machine: String,
    pub job: JobRecord,
    pub mac: String,
    pub ip: String,
    /// The claim this one nests in (held by an ancestor), left in place.
    outer: Option<JobRecord>,
    /// The machine's job lock; `None` when nested (the job this run is part
    /// of holds it).
    lock: Option<JobLock>,
}

enum Attempt {
    Claimed(Claim),
    Free,
    Busy(Busy),
}

/// The claim loop: judge, clear stale jobs, claim when free, else wait and
/// look again. Returns `None` for [`Intent::Wait`] once the machine is free.
pub fn acquire(
    store: &Store,
    target: &str,
    caller: &Caller,
    processes: &Processes,
    stale_after: u64,
    intent: &Intent,
    patience: Patience,
) -> Result<Option<Claim>> {
    let started = Instant::now();
    let deadline = patience.timeout.and_then(|t| started.checked_add(t));
    let mut told = false;
    let mut backoff = Duration::from_millis(10);
    let live_line = std::io::stderr().is_terminal();
    let mut read_only = false;
    let mut graced = false;
    if matches!(intent, Intent::Run { .. }) {
        store.prepare();
    }
    loop {
        processes.forget();
        let judge = Judge {
            now: os::now(),
            stale_after,
            host: &caller.host,
            place: &caller.place,
            processes,
            locks: store,
        };
        let attempt = match store.update(|lab| attempt(lab, store, target, caller, &judge, intent))
        {
            // A lab this user may only read (a read-only file system, no
            // write permission): `wait` judges what it reads and writes
            // nothing, so a stale job counts as free and stays recorded.
            Err(Error::ReadOnly { .. }) if matches!(intent, Intent::Wait) => {
                read_only = true;
                judge_read_only(store, target, caller, &judge)?
            }
            other => other?,
        };
        let busy = match attempt {
            Attempt::Claimed(claim) => {
                finish_live_line(live_line && told);
                return Ok(Some(claim));
            }
            Attempt::Free => {
                finish_live_line(live_line && told);
                return Ok(None);
            }
            Attempt::Busy(busy) => busy,
        };
        let now = Instant::now();
        if patience.no_wait && busy == Busy::Locked && !graced && !read_only {
            // Held for an instant by a waiter that just woke, or by a look
            // at the lab? Wait a moment for it, outside the lab's lock.
            graced = true;
            if store.wait_unlocked(target, LOCK_GRACE)? {
                continue;
            }
        }
        if patience.no_wait || deadline.is_some_and(|d| now >= d) {
            finish_live_line(live_line && told);
            let waited = match patience.timeout {
                Some(t) if !patience.no_wait => format!(" (waited {})", render::seconds(t)),
                _ => String::new(),
            };
            return Err(Error::Busy(format!(
                "{target} is busy{waited}: {}",
                busy.describe(target)
            )));
        }
        if !told {
            let what = match intent {
                Intent::Run { .. } => "waiting to claim it",
                Intent::Wait => "waiting until it is free",
            };
            say!("mama: {target} is busy: {}; {what}", busy.describe(target));
            told = true;
        } else if live_line {
            let mut stderr = std::io::stderr();
            let _ = write!(
                stderr,
                "\rmama: waited {} for {target}",
                render::seconds(now - started)
            );
            let _ = stderr.flush();
        }
        let nap = deadline.map_or(patience.poll, |d| patience.poll.min(d - now));
        // A reader cannot take job locks: it looks every poll interval.
        match busy.lock_holder(target).filter(|_| !read_only) {
            Some(holder) => {
                if store.try_lock(&holder)?.is_some() {
                    // A live job that no lock stands behind: a nested run's
                    // outer claim made by another tool, or a claim of
                    // another tool.
                    std::thread::sleep(backoff.min(nap));
                    backoff = (backoff * 2).min(patience.poll);
                } else {
                    backoff = Duration::from_millis(10);
                    store.wait_unlocked(&holder, nap)?;
                }
            }
            None => std::thread::sleep(nap),
        }
    }
}

fn finish_live_line(on: bool) {
    if on {
        say!("");
    }
}

/// `wait`'s look at a lab this user may only read: judged as read, nothing
/// cleared or written.
fn judge_read_only(
    store: &Store,
    target: &str,
    caller: &Caller,
    judge: &Judge<'_, Processes>,
) -> Result<Attempt> {
    let lab = store.read()?.lab;
    lab.get(target)?;
    Ok(match busy(&lab, target, caller, judge)? {
        Some(busy) => Attempt::Busy(busy),
        None if store.held(target) => Attempt::Busy(Busy::Locked),
        None => Attempt::Free,
    })
}

/// One locked look at the lab: sweep, judge, and claim if free.
fn attempt(
    lab: &mut Lab,
    store: &Store,
    target: &str,
    caller: &Caller,
    judge: &Judge<'_, Processes>,
    intent: &Intent,
) -> Result<Attempt> {
    lab.get(target)?;
    sweep(lab, target, judge)?;
    if let Some(busy) = busy(lab, target, caller, judge)? {
        return Ok(Attempt::Busy(busy));
    }
    let machine = lab.get(target)?;
    // Free, or held by one of our ancestors: then we nest in its claim.
    let outer = machine.job();
    // Whether we run inside the job that holds the machine's lock: asked
    // only where a record or a held lock stands in the way (it reads this
    // process's descriptors).
    let inside = || judge.locks.inherited(target);
    // Any other job left here had its process die between the sweep and
    // the busy check, which probed it apart: never nest in it, look again
    // (the next sweep clears it).
    if outer
        .as_ref()
        .is_some_and(|job| !caller.owns(job) && !inside())
    {
        return Ok(Attempt::Busy(Busy::Locked));
    }
    // A claim takes the machine's job lock; one nested in an outer claim,
    // or made inside the job that holds the lock (whose record was cleared
    // by hand), runs under the lock its job already holds. A free record
    // whose lock someone else holds is busy: processes of a job whose
    // record was cleared still run, or a waiter holds it for an instant
    // (never waited for here, with the lab locked; see `acquire`).
    let (lock, inside) = if outer.is_some() {
        (None, false)
    } else {
        match store.try_lock(target)? {
            Some(lock) => (Some(lock), false),
            None if inside() => (None, true),
            None => return Ok(Attempt::Busy(Busy::Locked)),
        }
    };
    let Intent::Run { label } = intent else {
        return Ok(Attempt::Free);
    };
    let job = caller.claim(label, judge.now);
    let mac = machine.get(Field::Mac).to_string();
    let ip = machine.get(Field::Ip).to_string();
    let mut event = Event::new(Kind::Claimed, target).job(&job);
    match &outer {
        // The outer claim stays as it is: it stands while the outer run
        // lives, whatever becomes of this one.
        Some(outer) => event = event.detail(format!("nested in '{}'", outer.label)),
        None => {
            if inside {
                event = event.detail("nested in the job that holds the machine's job lock");
            }
            lab.get_mut(target)?.set_job(&job)?;
        }
    }
    lab.record(event);
    Ok(Attempt::Claimed(Claim {
        machine: target.to_string(),
        job,
        mac,
        ip,
        outer,
        lock,
    }))
}

/// Whether the record `job` is still the claim `ours`: same label and
/// PID, and the same timestamp and host where the record has them. PHP
/// mama saves a machine rebuilt from its own fields, dropping
/// `job_timestamp`, `job_host` and `job_origin`; while the claiming run
/// lives no other process has its PID here, so the rest still tells.
fn still_ours(ours: &JobRecord, job: &JobRecord) -> bool {
    job.label == ours.label
        && job.pid == ours.pid
        && job.timestamp.is_none_or(|t| Some(t) == ours.timestamp)
        && job
            .host
            .as_ref()
            .is_none_or(|h| Some(h) == ours.host.as_ref())
}

impl Claim {
    /// The descriptor of the machine's job lock, for the job to inherit, so
    /// the machine stays busy while any process of the job lives.
    pub fn lock_fd(&self) -> Option<RawFd> {
        self.lock.as_ref().and_then(JobLock::inheritable_fd)
    }

    /// Keeps the claim while the job runs, where that takes work (a
    /// database lab's session): the flag returned is raised when the claim
    /// was lost, and the job must be stopped. Call it once the signals are
    /// blocked, so the keeper's thread never takes one.
    pub fn keep(&mut self) -> Option<Arc<AtomicBool>> {
        let job = self.job.clone();
        self.lock.as_mut()?.keep(&job)
    }

    /// Gives the machine back: clears the job (a nested run leaves the
    /// outer claim alone). A claim that is no longer ours (cleared by hand,
    /// taken over) is left alone, with a word on stderr. `outcome` (how the
    /// job ended) goes into the history.
    pub fn release(self, store: &Store, outcome: &str) -> Result<()> {
        let lock = self.lock;
        store.update(|lab| {
            // Close the job lock inside the transaction, so a waiter it
            // wakes reads the state only after this write. Closed, not
            // unlocked: processes of the job that still run (a nested run
            // that outlives its outer job, leftovers in the background)
            // share it and keep the machine until the last of them ends.
            if let Some(lock) = lock {
                lock.close();
            }
            let Ok(mut machine) = lab.get_mut(&self.machine) else {
                say!(
                    "mama: {} was deleted while the job ran; nothing to release",
                    self.machine
                );
                return Ok(());
            };
            if self.outer.is_none() {
                let current = machine.view().job();
                let ours = current.as_ref().is_some_and(|j| still_ours(&self.job, j));
                if !ours {
                    say!(
                        "mama: the claim on {} was cleared or taken over while the job ran; \
                         leaving the record alone",
                        self.machine
                    );
                    return Ok(());
                }
                machine.clear_job()?;
            }
            let held = os::now() - self.job.timestamp.unwrap_or_else(os::now);
            let detail = format!(
                "{outcome} after {}",
                render::seconds(Duration::from_secs(held.max(0) as u64))
            );
            lab.record(
                Event::new(Kind::Released, &self.machine)
                    .job(&self.job)
                    .detail(detail),
            );
            Ok(())
        })
    }
}
