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

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{JobLock, JobLocks, Lease, PlaceLock, Store};
use crate::engine::stale::{Judge, StaleReason, Verdict};
use crate::error::{Error, Result};
use crate::model::event::{Event, Kind};
use crate::model::field::{self, Field};
use crate::model::queue::Waiter;
use crate::model::{JobRecord, Lab, Machine};
use crate::os::{self, Place, ProcessTable, Processes};
use crate::text as render;

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
            user: Some(self.user.clone()),
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
                // Who claimed it: a record without `<job_user>` (written
                // by another tool, or by hand) says nothing of it.
                let user = match &job.user {
                    Some(user) => format!("user {}", render::printable(user)),
                    None => "user unknown".to_string(),
                };
                match job.pid {
                    Some(pid) => {
                        text.push_str(&format!(" (PID {pid}"));
                        if let Verdict::Remote(host) = verdict {
                            text.push_str(&format!(" on host {}", render::printable(host)));
                        }
                        text.push_str(&format!(", {user})"));
                    }
                    None => text.push_str(&format!(" ({user})")),
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
    /// Free by its own fields, but a machine sharing one of its resources
    /// holds it (see [`Resources::blocker`]).
    Blocked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Free => "free",
            Status::Busy => "busy",
            Status::Stale => "stale",
            Status::Reserved => "reserved",
            Status::Started => "started",
            Status::Blocked => "blocked",
        }
    }
}

/// A machine's status, from its own fields (a job first, then a hand
/// start, then a reservation); `locked` says that, with no job recorded,
/// its job lock is held (processes of a job whose record was cleared).
/// Only a machine free by its own fields can be [`Status::Blocked`], which
/// its resources decide (see [`Resources::blocker`]).
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

/// What holds `machine` by its own fields, whoever asks, in the order the
/// busy rules look (SPEC rules 1-3): a live job, a reservation, a hand
/// start. Each is looked at only when the one before it did not do (a
/// job is judged first).
fn holds<'m, P: ProcessTable>(
    machine: &'m Machine,
    judge: &'m Judge<'_, P>,
) -> impl Iterator<Item = Busy> + 'm {
    let job = std::iter::once_with(move || {
        let job = machine.job()?;
        let verdict = judge.judge(machine.name(), &job);
        verdict.is_live().then(|| Busy::Job {
            machine: machine.name().to_string(),
            job,
            verdict,
        })
    });
    let reserved = std::iter::once_with(move || {
        machine.reservation().map(|by| Busy::Reserved {
            machine: machine.name().to_string(),
            by,
        })
    });
    let started = std::iter::once_with(move || {
        machine.is_started().then(|| Busy::Started {
            machine: machine.name().to_string(),
        })
    });
    job.chain(reserved).chain(started).flatten()
}

impl Caller {
    /// Whether `hold` is the caller's own, so it keeps nothing from the
    /// caller: a job claimed by an ancestor of ours, or one we run inside
    /// (we hold its job lock, whatever namespace we are in); a reservation
    /// by our user.
    fn holds_already(&self, hold: &Busy, judge: &Judge<'_, Processes>) -> bool {
        match hold {
            Busy::Job {
                machine,
                job,
                verdict,
            } => {
                (*verdict == Verdict::Live && self.owns(job))
                    || (verdict.is_live() && judge.locks.inherited(machine))
            }
            Busy::Reserved { by, .. } => *by == self.user,
            Busy::Started { .. } | Busy::Locked => false,
        }
    }
}

/// Whether `machine` is busy for `caller` by its own fields (SPEC rules 1-3).
fn busy_by_own_fields(
    machine: &Machine,
    caller: &Caller,
    judge: &Judge<'_, Processes>,
) -> Option<Busy> {
    holds(machine, judge).find(|hold| !caller.holds_already(hold, judge))
}

/// A machine's resources, as the busy rules read them.
fn resource_names(machine: &Machine) -> impl Iterator<Item = &str> {
    machine.get(Field::Resources).split_whitespace()
}

/// The machines whose state decides whether `target` is free: itself, then
/// every machine sharing one of its resources.
fn deciding_machines(lab: &Lab, target: &str) -> Result<Vec<String>> {
    let resources: HashSet<&str> = resource_names(lab.get(target)?).collect();
    let mut names = vec![target.to_string()];
    // A machine that shares nothing is decided by itself alone: no look
    // through the lab (thousands of machines) for what none can share.
    if resources.is_empty() {
        return Ok(names);
    }
    for machine in lab.machines() {
        let name = machine.name();
        if name != target && resource_names(machine).any(|r| resources.contains(r)) {
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

/// A stale job a look cleared, to be reported once its transaction has
/// committed (a clear whose write failed was never made).
pub struct Cleared {
    machine: String,
    job: JobRecord,
    reason: StaleReason,
}

impl Cleared {
    /// Says on stderr what was cleared.
    fn report(&self) {
        // The reason names the PID where the PID decided.
        say!(
            "mama: cleared stale job '{}' on {}: {}",
            render::printable(&self.job.label),
            self.machine,
            self.reason
        );
    }
}

/// What keeps a machine that is free by its own fields from anyone but
/// the holder: a machine sharing a resource with it holds itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    /// What holds the other machine ([`Busy::Job`], [`Busy::Reserved`] or
    /// [`Busy::Started`]), which names it.
    pub hold: Busy,
    /// The resources the two machines share.
    pub shared: Vec<String>,
}

/// The machines of a lab by the resources they name: what views of many
/// machines ask (SPEC rule 4 for each machine) without a look through the
/// whole lab for each of them, even where every machine shares one
/// resource.
pub struct Resources<'l> {
    machines: Vec<&'l Machine>,
    by_name: HashMap<&'l str, Sharers>,
    /// What holds each machine by its own fields, once asked.
    holds: Vec<OnceCell<Option<Busy>>>,
}

/// The machines naming one resource.
#[derive(Default)]
struct Sharers {
    /// Their positions in the lab, in its order.
    machines: Vec<usize>,
    /// The first two of them that hold themselves, once asked: the first
    /// blocks every other, the second blocks the first.
    first_holders: OnceCell<(Option<usize>, Option<usize>)>,
}

impl<'l> Resources<'l> {
    pub fn new(lab: &'l Lab) -> Resources<'l> {
        let machines: Vec<&Machine> = lab.machines().collect();
        let mut by_name: HashMap<&str, Sharers> = HashMap::new();
        for (at, machine) in machines.iter().enumerate() {
            for resource in resource_names(machine) {
                let sharers = &mut by_name.entry(resource).or_default().machines;
                // A resource named twice by one machine counts once.
                if sharers.last() != Some(&at) {
                    sharers.push(at);
                }
            }
        }
        Resources {
            holds: machines.iter().map(|_| OnceCell::new()).collect(),
            machines,
            by_name,
        }
    }

    /// What holds the machine at position `at` by its own fields.
    fn hold<P: ProcessTable>(&self, at: usize, judge: &Judge<'_, P>) -> Option<&Busy> {
        self.holds[at]
            .get_or_init(|| holds(self.machines[at], judge).next())
            .as_ref()
    }

    /// What blocks the machine at position `at` of the lab, taken to be
    /// free by its own fields: the first machine in the lab's order that
    /// shares one of its resources and holds itself (a live job, a
    /// reservation or a hand start: `holds`, whoever asks), as the busy
    /// rules find it for a caller who holds none of them.
    pub fn blocker<P: ProcessTable>(&self, at: usize, judge: &Judge<'_, P>) -> Option<Blocker> {
        let machine = self.machines.get(at)?;
        let other = resource_names(machine)
            .filter_map(|r| self.by_name.get(r))
            .filter_map(|sharers| {
                let (first, second) = *sharers.first_holders.get_or_init(|| {
                    let mut holding = sharers
                        .machines
                        .iter()
                        .copied()
                        .filter(|&m| self.hold(m, judge).is_some());
                    (holding.next(), holding.next())
                });
                if first == Some(at) { second } else { first }
            })
            .min()?;
        let hold = self.hold(other, judge)?.clone();
        let theirs: HashSet<&str> = resource_names(self.machines[other]).collect();
        let mut shared: Vec<String> = Vec::new();
        for resource in resource_names(machine).filter(|r| theirs.contains(r)) {
            if !shared.iter().any(|s| s == resource) {
                shared.push(resource.to_string());
            }
        }
        Some(Blocker { hold, shared })
    }

    /// The position of the machine called `name` in the lab.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.name() == name)
    }
}

/// Clears the stale jobs that stand between the caller and `target`, and
/// stamps jobs that have neither PID nor timestamp so they can age. Each
/// clear goes into `cleared`, reported once the transaction commits.
fn sweep(
    lab: &mut Lab,
    target: &str,
    judge: &Judge<'_, Processes>,
    cleared: &mut Vec<Cleared>,
) -> Result<()> {
    for name in deciding_machines(lab, target)? {
        let mut machine = lab.get_mut(&name)?;
        let Some(job) = machine.view().job() else {
            continue;
        };
        match judge.judge(&name, &job) {
            Verdict::Stale(reason) => {
                machine.clear_job()?;
                lab.record(
                    Event::new(Kind::StaleCleared, &name)
                        .job(&job)
                        .detail(reason.to_string()),
                );
                cleared.push(Cleared {
                    machine: name,
                    job,
                    reason,
                });
            }
            Verdict::Unstamped => machine.set(Field::JobTimestamp, &judge.now.to_string())?,
            Verdict::Live | Verdict::HeldByLock | Verdict::Remote(_) => {}
        }
    }
    Ok(())
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

/// Which machine a caller wants.
#[derive(Debug, Clone)]
pub enum Wanted {
    /// This one.
    One(String),
    /// Whichever of these is free first (`--any`; all machines when none
    /// are named), among those whose fields match every filter (`--where
    /// FIELD=VALUE`).
    Any {
        names: Vec<String>,
        filters: Vec<(Field, String)>,
    },
}

impl Wanted {
    /// The machines to choose from, in the order given (the lab's order
    /// for all of them); an unknown name is an error, and so is a filter
    /// that no machine matches.
    fn candidates(&self, lab: &Lab) -> Result<Vec<String>> {
        match self {
            Wanted::One(name) => Ok(vec![lab.get(name)?.name().to_string()]),
            Wanted::Any { names, filters } => {
                let pool: Vec<&Machine> = if names.is_empty() {
                    lab.machines().collect()
                } else {
                    names.iter().map(|n| lab.get(n)).collect::<Result<_>>()?
                };
                let mut matching: Vec<String> = Vec::new();
                for machine in pool {
                    let name = machine.name().to_string();
                    if filters
                        .iter()
                        .all(|(f, v)| field::matches(*f, machine.get(*f), v))
                        && !matching.contains(&name)
                    {
                        matching.push(name);
                    }
                }
                if matching.is_empty() {
                    return Err(Error::NoMatch(self.describe()));
                }
                Ok(matching)
            }
        }
    }

    /// The request, for people: the machine, or the pool and its filters.
    pub fn describe(&self) -> String {
        match self {
            Wanted::One(name) => name.clone(),
            Wanted::Any { names, filters } => {
                let mut parts = Vec::new();
                if !names.is_empty() {
                    parts.push(format!("any of {}", names.join(" ")));
                }
                for (field, value) in filters {
                    parts.push(format!("where {}={value}", field.tag()));
                }
                if names.is_empty() && filters.is_empty() {
                    parts.push("any machine".into());
                }
                parts.join(", ")
            }
        }
    }
}

enum Attempt {
    Claimed(Claim),
    Free(String),
    Busy(Wait),
}

/// Why the caller must wait, and on what to sleep.
struct Wait {
    /// The first candidate, and why it is busy (or that others wait ahead).
    target: String,
    /// Whether there were several candidates.
    several: bool,
    busy: Option<Busy>,
    /// How many waiters are ahead of the caller.
    ahead: usize,
    /// What to sleep on until the next look.
    sleep: Sleep,
}

/// What a waiter sleeps on.
enum Sleep {
    /// The place lock of the waiter just ahead: it leaves or dies.
    Place(String),
    /// A machine's job lock: its job ends.
    JobLock(String),
    /// Nothing tells: look again after the poll interval.
    Poll,
}

/// What `acquire` got.
pub enum Acquired {
    /// A machine claimed for the job.
    Claimed(Box<Claim>),
    /// `wait`: this machine is free.
    Free(String),
}

/// The claim loop: judge, clear stale jobs, claim when free and the
/// caller's turn has come, else take a place in the queues and wait: the
/// waiter just ahead is slept on, and the first in line sleeps on the job
/// lock of what keeps the machine busy.
pub fn acquire(
    store: &Store,
    wanted: &Wanted,
    caller: &Caller,
    processes: &Processes,
    stale_after: u64,
    intent: &Intent,
    patience: Patience,
) -> Result<Acquired> {
    let started = Instant::now();
    let deadline = patience.timeout.and_then(|t| started.checked_add(t));
    let mut told: Option<usize> = None;
    let mut backoff = Duration::from_millis(10);
    let live_line = std::io::stderr().is_terminal();
    let mut read_only = false;
    let mut graced = false;
    let mut place: Option<PlaceLock> = None;
    let what = render::printable(&wanted.describe()).into_owned();
    if matches!(intent, Intent::Run { .. }) {
        store.prepare();
    }
    let result = loop {
        processes.forget();
        let judge = Judge {
            now: os::now(),
            stale_after,
            host: &caller.host,
            place: &caller.place,
            processes,
            locks: store,
        };
        let token = place.as_ref().map(|p| p.token.as_str());
        // A clear is told only once the lab holds it.
        let attempt = store
            .update(|lab| attempt(lab, store, wanted, caller, &judge, intent, token))
            .map(|(attempt, cleared)| {
                cleared.iter().for_each(Cleared::report);
                attempt
            });
        let attempt = match attempt {
            // A lab this user may only read (a read-only file system, no
            // write permission): `wait` judges what it reads and writes
            // nothing, so a stale job counts as free and stays recorded.
            Err(Error::ReadOnly { .. }) if matches!(intent, Intent::Wait) => {
                read_only = true;
                judge_read_only(store, wanted, caller, &judge)
            }
            other => other,
        };
        let wait = match attempt {
            Ok(Attempt::Claimed(claim)) => break Ok(Acquired::Claimed(Box::new(claim))),
            Ok(Attempt::Free(machine)) => break Ok(Acquired::Free(machine)),
            Ok(Attempt::Busy(wait)) => wait,
            Err(e) => break Err(e),
        };
        let now = Instant::now();
        if patience.no_wait
            && wait.busy == Some(Busy::Locked)
            && wait.ahead == 0
            && !graced
            && !read_only
        {
            // Held for an instant by a waiter that just woke, or by a look
            // at the lab? Wait a moment for it, outside the lab's lock.
            graced = true;
            match store.wait_unlocked(&wait.target, LOCK_GRACE) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => break Err(e),
            }
        }
        if patience.no_wait || deadline.is_some_and(|d| now >= d) {
            let waited = match patience.timeout {
                Some(t) if !patience.no_wait => format!(" (waited {})", render::seconds(t)),
                _ => String::new(),
            };
            break Err(Error::Busy(format!(
                "{what} is busy{waited}: {}",
                wait.describe()
            )));
        }
        // A waiter takes a place in the queues (a reader cannot: it looks
        // every poll interval), then looks again at once.
        if place.is_none() && !read_only {
            match store.hold_place() {
                Ok(held) => {
                    place = Some(held);
                    continue;
                }
                Err(e) => break Err(e),
            }
        }
        match told {
            None => {
                let doing = match intent {
                    Intent::Run { .. } => "waiting to claim it",
                    Intent::Wait => "waiting until it is free",
                };
                say!(
                    "mama: {what} is busy: {}; {doing}{}",
                    wait.describe(),
                    ahead(wait.ahead)
                );
                told = Some(wait.ahead);
            }
            Some(before) if live_line => {
                let mut stderr = std::io::stderr();
                let _ = write!(
                    stderr,
                    "\rmama: waited {} for {what}{}\x1b[K",
                    render::seconds(now - started),
                    ahead(wait.ahead)
                );
                let _ = stderr.flush();
                told = Some(wait.ahead.min(before));
            }
            Some(_) => {}
        }
        let nap = deadline.map_or(patience.poll, |d| patience.poll.min(d - now));
        // Sleeping on a lock, nothing but its release can let the waiter
        // on: it looks again only then (on a terminal, every poll interval
        // too, to redraw its line).
        // A pool's candidates may change meanwhile: it looks at the poll
        // interval too.
        let pool = matches!(wanted, Wanted::Any { .. });
        let longest = if live_line || pool {
            patience.poll
        } else {
            LOCK_NAP
        };
        let lock_nap = deadline.map_or(longest, |d| longest.min(d - now));
        let slept = match (&wait.sleep, read_only) {
            (Sleep::Place(token), false) => {
                let asleep = Instant::now();
                match store.wait_place(token, lock_nap) {
                    // Free at once, yet still ahead: a place kept for a
                    // waiter re-attaching after a server restart. Look again
                    // after a while, not at once.
                    Ok(true) if asleep.elapsed() < Duration::from_millis(5) => {
                        std::thread::sleep(backoff.min(nap));
                        backoff = (backoff * 2).min(patience.poll);
                        Ok(())
                    }
                    other => other.map(|_| ()),
                }
            }
            (Sleep::JobLock(holder), false) => match store.try_lock(holder) {
                // A live job that no lock stands behind: a nested run's
                // outer claim made by another tool, or a claim of another
                // tool.
                Ok(Some(_)) => {
                    std::thread::sleep(backoff.min(nap));
                    backoff = (backoff * 2).min(patience.poll);
                    Ok(())
                }
                Ok(None) => {
                    backoff = Duration::from_millis(10);
                    store.wait_unlocked(holder, lock_nap).map(|_| ())
                }
                Err(e) => Err(e),
            },
            _ => {
                std::thread::sleep(nap);
                Ok(())
            }
        };
        if let Err(e) = slept {
            break Err(e);
        }
    };
    if told.is_some() && live_line {
        // The line's last word: how long it took, no place any more.
        say!(
            "\rmama: waited {} for {what}\x1b[K",
            render::seconds(started.elapsed())
        );
    }
    // A waiter that gives up takes its places out (best effort: a place
    // whose lock is let go is removed by the next waiter anyway).
    if let (Err(_), Some(held)) = (&result, &place) {
        let token = held.token.clone();
        let _ = store.update(|lab| {
            leave_queues(lab, &token, &[])?;
            Ok(())
        });
    }
    drop(place);
    result
}

/// The longest a waiter sleeps on a lock (the place lock of the waiter
/// ahead, or the job lock of what keeps the machine busy) before it looks
/// again anyway: only the lock's release can let it on, so this is a
/// safety net, not a poll.
const LOCK_NAP: Duration = Duration::from_secs(600);

fn ahead(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} ahead of you)"),
    }
}

impl Wait {
    fn describe(&self) -> String {
        let reason = match &self.busy {
            Some(busy) => busy.describe(&self.target),
            None => format!(
                "{} is free, but {} waited longer",
                render::printable(&self.target),
                if self.ahead == 1 {
                    "another waiter".to_string()
                } else {
                    format!("{} waiters", self.ahead)
                }
            ),
        };
        if self.several {
            format!(
                "{}, the first of them: {reason}",
                render::printable(&self.target)
            )
        } else {
            reason
        }
    }
}

/// `wait`'s look at a lab this user may only read: judged as read, nothing
/// cleared or written, no place taken.
fn judge_read_only(
    store: &Store,
    wanted: &Wanted,
    caller: &Caller,
    judge: &Judge<'_, Processes>,
) -> Result<Attempt> {
    let lab = store.read()?.lab;
    let candidates = wanted.candidates(&lab)?;
    let mut first = None;
    for target in &candidates {
        let reason = match busy(&lab, target, caller, judge)? {
            Some(busy) => Some(busy),
            None if store.held(target) => Some(Busy::Locked),
            None => return Ok(Attempt::Free(target.clone())),
        };
        first.get_or_insert((target.clone(), reason));
    }
    let (target, busy) = first.unwrap_or_default();
    Ok(Attempt::Busy(Wait {
        target,
        several: candidates.len() > 1,
        busy,
        ahead: 0,
        sleep: Sleep::Poll,
    }))
}

/// Takes the places of the waiter `token` out of every queue but those
/// of the machines in `keep`.
fn leave_queues(lab: &mut Lab, token: &str, keep: &[String]) -> Result<()> {
    let names: Vec<String> = lab
        .machines()
        .filter(|m| !keep.iter().any(|k| k == m.name()))
        .filter(|m| m.queue().iter().any(|w| w.token == token))
        .map(|m| m.name().to_string())
        .collect();
    for name in names {
        let mut machine = lab.get_mut(&name)?;
        let mut queue = machine.view().queue();
        queue.retain(|w| w.token != token);
        machine.set_queue(&queue)?;
    }
    Ok(())
}

/// Takes out of the queues of `machines` the places whose waiters left or
/// died (their place locks are free), but the caller's own.
fn prune_queues(
    lab: &mut Lab,
    store: &Store,
    machines: &[String],
    own: Option<&str>,
) -> Result<()> {
    for name in machines {
        let mut machine = lab.get_mut(name)?;
        let queue = machine.view().queue();
        if queue.is_empty() {
            continue;
        }
        let (live, gone): (Vec<Waiter>, Vec<Waiter>) = queue
            .into_iter()
            .partition(|w| Some(w.token.as_str()) == own || store.place_held(w));
        if !gone.is_empty() {
            machine.set_queue(&live)?;
            for waiter in gone {
                store.forget_place(&waiter.token);
            }
        }
    }
    Ok(())
}

/// One locked look at the lab: sweep stale jobs and departed waiters, then
/// claim the first candidate that is free and whose turn has come; else
/// take a place in each candidate's queue (once the caller holds a place
/// lock, `token`) and say what to sleep on.
fn attempt(
    lab: &mut Lab,
    store: &Store,
    wanted: &Wanted,
    caller: &Caller,
    judge: &Judge<'_, Processes>,
    intent: &Intent,
    token: Option<&str>,
) -> Result<(Attempt, Vec<Cleared>)> {
    let candidates = wanted.candidates(lab)?;
    let mut cleared = Vec::new();
    for target in &candidates {
        sweep(lab, target, judge, &mut cleared)?;
    }
    // Every queue of the lab: a place left by a waiter that died anywhere
    // must not count (its ticket included).
    let queued: Vec<String> = lab
        .machines()
        .filter(|m| m.has(Field::JobQueue))
        .map(|m| m.name().to_string())
        .collect();
    prune_queues(lab, store, &queued, token)?;
    let mine = token.and_then(|t| {
        lab.machines()
            .flat_map(|m| m.queue())
            .find(|w| w.token == t)
            .map(|w| w.ticket)
    });
    let mut first: Option<Wait> = None;
    for target in &candidates {
        let reason = busy(lab, target, caller, judge)?;
        // Free for the caller because it holds the machine already (a run
        // nested in its own job, a reservation of its own): no waiter can
        // have it before the caller lets go, so none is ahead.
        let own = reason.is_none() && held_by_caller(lab, target, caller, judge)?;
        // Waiters ahead: on this machine or one sharing a resource with
        // it, arrived before the caller (all of them, for a newcomer),
        // that could have the machine (not reserved by someone else).
        let mut ahead: Vec<Waiter> = Vec::new();
        if !own {
            for name in deciding_machines(lab, target)? {
                for waiter in lab.get(&name)?.queue() {
                    let before = mine.is_none_or(|t| waiter.ticket < t);
                    if Some(waiter.token.as_str()) != token
                        && before
                        && may_have(lab, target, &waiter)?
                        && !ahead.iter().any(|w| w.token == waiter.token)
                    {
                        ahead.push(waiter);
                    }
                }
            }
        }
        if reason.is_none() && ahead.is_empty() {
            match claim_or_free(lab, store, target, caller, judge, intent)? {
                Attempt::Busy(wait) => {
                    first.get_or_insert(wait);
                }
                done => {
                    if let Some(token) = token {
                        leave_queues(lab, token, &[])?;
                    }
                    return Ok((done, cleared));
                }
            }
            continue;
        }
        let sleep = match ahead.iter().max_by_key(|w| w.ticket) {
            // A pool waiter may leave this queue while it waits on: look
            // again at the poll interval.
            Some(nearest) if nearest.pool => Sleep::Poll,
            Some(nearest) => Sleep::Place(nearest.token.clone()),
            None => match reason.as_ref().and_then(|b| b.lock_holder(target)) {
                Some(holder) => Sleep::JobLock(holder),
                None => Sleep::Poll,
            },
        };
        first.get_or_insert(Wait {
            target: target.clone(),
            several: candidates.len() > 1,
            busy: reason,
            ahead: ahead.len(),
            sleep,
        });
    }
    if let Some(token) = token {
        // A place in the queue of each candidate, and only there: a pool's
        // candidates may change (`--where` on a field set meanwhile).
        let pool = matches!(wanted, Wanted::Any { .. });
        let me = Waiter {
            ticket: 0,
            token: token.to_string(),
            pid: caller.pid,
            since: judge.now,
            user: caller.user.clone(),
            host: caller.host.clone(),
            job: match intent {
                Intent::Run { label } => Some(label.clone()),
                Intent::Wait => None,
            },
            epoch: store.epoch(),
            pool,
        };
        hold_places(lab, &candidates, me, mine)?;
    }
    let mut wait = first.ok_or_else(|| Error::NoMatch(wanted.describe()))?;
    wait.several = candidates.len() > 1;
    if candidates.len() > 1 && matches!(wait.sleep, Sleep::Place(_)) {
        // Waiting for several machines: a place ahead on one says nothing
        // of the others.
        wait.sleep = Sleep::Poll;
    }
    Ok((Attempt::Busy(wait), cleared))
}

/// Whether the caller holds `target` already: a live job on it or on a
/// machine sharing a resource with it is the caller's own (an ancestor's
/// claim, or the job whose lock it inherited), or a reservation there is
/// the caller's.
fn held_by_caller(
    lab: &Lab,
    target: &str,
    caller: &Caller,
    judge: &Judge<'_, Processes>,
) -> Result<bool> {
    for name in deciding_machines(lab, target)? {
        if holds(lab.get(&name)?, judge).any(|hold| caller.holds_already(&hold, judge)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `waiter` could have `target` once free: no machine that
/// decides it is reserved by someone else.
fn may_have(lab: &Lab, target: &str, waiter: &Waiter) -> Result<bool> {
    for name in deciding_machines(lab, target)? {
        if lab
            .get(&name)?
            .reservation()
            .is_some_and(|by| by != waiter.user)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Keeps the caller's places (`me`; its ticket `mine` if it has one) in
/// the queues of `candidates` only: taken out of machines that are
/// candidates no longer, added to new ones with the same ticket (a
/// newcomer's ticket comes after every place in the lab).
fn hold_places(lab: &mut Lab, candidates: &[String], me: Waiter, mine: Option<u64>) -> Result<()> {
    let token = me.token.clone();
    leave_queues(lab, &token, candidates)?;
    let ticket = match mine {
        Some(ticket) => ticket,
        None => next_ticket(lab)?,
    };
    let me = Waiter { ticket, ..me };
    for name in candidates {
        let mut machine = lab.get_mut(name)?;
        let mut queue = machine.view().queue();
        if !queue.iter().any(|w| w.token == token) {
            queue.push(me.clone());
            machine.set_queue(&queue)?;
        }
    }
    Ok(())
}

/// The ticket after every place in the lab. Tickets only order places, so
/// near the end of their range the places are numbered anew, 1 upwards,
/// in their order.
fn next_ticket(lab: &mut Lab) -> Result<u64> {
    let max = lab
        .machines()
        .flat_map(|m| m.queue())
        .map(|w| w.ticket)
        .max()
        .unwrap_or(0);
    if let Some(next) = max.checked_add(1).filter(|&t| t < 1 << 62) {
        return Ok(next);
    }
    let mut tickets: Vec<u64> = lab
        .machines()
        .flat_map(|m| m.queue())
        .map(|w| w.ticket)
        .collect();
    tickets.sort_unstable();
    tickets.dedup();
    let names: Vec<String> = lab.machines().map(|m| m.name().to_string()).collect();
    for name in names {
        let mut machine = lab.get_mut(&name)?;
        let mut queue = machine.view().queue();
        if queue.is_empty() {
            continue;
        }
        for waiter in &mut queue {
            waiter.ticket = tickets.partition_point(|&t| t < waiter.ticket) as u64 + 1;
        }
        machine.set_queue(&queue)?;
    }
    Ok(tickets.len() as u64 + 1)
}

/// Claims `target`, free by its fields and the caller's turn (or, for
/// `wait`, reports it free), unless its job lock says otherwise.
fn claim_or_free(
    lab: &mut Lab,
    store: &Store,
    target: &str,
    caller: &Caller,
    judge: &Judge<'_, Processes>,
    intent: &Intent,
) -> Result<Attempt> {
    let busy = |busy: Busy| {
        let sleep = match busy.lock_holder(target) {
            Some(holder) => Sleep::JobLock(holder),
            None => Sleep::Poll,
        };
        Ok(Attempt::Busy(Wait {
            target: target.to_string(),
            several: false,
            busy: Some(busy),
            ahead: 0,
            sleep,
        }))
    };
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
        return busy(Busy::Locked);
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
            None => return busy(Busy::Locked),
        }
    };
    let Intent::Run { label } = intent else {
        return Ok(Attempt::Free(target.to_string()));
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
    pub fn keep(&mut self) -> Option<Arc<Lease>> {
        let job = self.job.clone();
        self.lock.as_mut()?.keep(&job)
    }

    /// Gives the machine back: clears the job (a nested run leaves the
    /// outer claim alone). A claim that is no longer ours (cleared by hand,
    /// taken over) is left alone, with a word on stderr. `outcome` (how the
    /// job ended) goes into the history.
    pub fn release(self, store: &Store, outcome: &str) -> Result<()> {
        let mut lock = self.lock;
        if let Some(lock) = lock.as_mut() {
            lock.stop_keeping();
        }
        let machine = self.machine.clone();
        let released = store.update(|lab| {
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
        });
        match released {
            // The whole lab was removed while the job ran: nothing holds
            // the claim, and no lab is made anew for its release.
            Err(Error::NoLab(at)) => {
                say!("mama: there is no lab at {at} any more; nothing to release on {machine}");
                Ok(())
            }
            other => other,
        }
    }
}
