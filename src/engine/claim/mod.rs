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

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime};

use crate::backend::{JobLock, PlaceLock, Store};
use crate::engine::manual::{self, Ask};
use crate::engine::stale::{Judge, StaleReason, Verdict};
use crate::error::{Error, Result};
use crate::model::event::{Event, Kind};
use crate::model::field::{self, Field};
use crate::model::lease;
use crate::model::queue::Waiter;
use crate::model::{JobRecord, Lab, Machine};
use crate::os::{self, Processes};
use crate::text as render;

mod busy;
mod queue;
mod release;

pub use busy::{Blocker, Busy, Caller, Resources, Status, status};
use busy::{busy, deciding_machines, held_by_caller};
use queue::{ahead, hold_places, leave_queues, may_have, prune_queues};

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
    /// Claim it for its health check (label `check`), even out of service.
    Check,
    /// Only wait until it is free.
    Wait,
    /// Reserve it for the caller's user, as `reserve` does with `ask`, in
    /// the transaction that finds it free and the caller's turn come
    /// (`wait --then-reserve`): nobody slips in between.
    Reserve { ask: Ask },
}

impl Intent {
    /// The label of the job a claim records; `None` for a wait.
    pub fn label(&self) -> Option<&str> {
        match self {
            Intent::Run { label } => Some(label),
            Intent::Check => Some(CHECK_LABEL),
            Intent::Wait | Intent::Reserve { .. } => None,
        }
    }

    /// Whether a machine out of service will do: only for its health
    /// check.
    fn takes_offline(&self) -> bool {
        matches!(self, Intent::Check)
    }
}

/// The label of a health check's claim.
pub const CHECK_LABEL: &str = "check";

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
    /// The machine was left started by a run whose claim went stale
    /// (`run --boot` killed): it must be stopped before anything else.
    pub left_started: bool,
}

/// What holds `target` for `caller`, if anything (all four busy rules):
/// for commands that act on a machine without claiming it (`start`,
/// `stop`, `power`).
pub fn busy_for(
    lab: &Lab,
    target: &str,
    caller: &Caller,
    judge: &Judge<'_, Processes>,
) -> Result<Option<Busy>> {
    busy(lab, target, caller, judge)
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

    /// The candidates ([`Wanted::candidates`]) that are in service, for
    /// all but a health check: a machine out of service is never claimed.
    /// None in service is an error ([`Error::OutOfService`]) saying why
    /// each is out; a pool with some in service waits for those.
    fn in_service(&self, lab: &Lab, intent: &Intent) -> Result<Vec<String>> {
        let candidates = self.candidates(lab)?;
        if intent.takes_offline() {
            return Ok(candidates);
        }
        let mut out = Vec::new();
        let mut serving = Vec::new();
        for name in candidates {
            match lab.get(&name)?.offline() {
                Some(offline) => out.push((name, offline)),
                None => serving.push(name),
            }
        }
        if !serving.is_empty() {
            return Ok(serving);
        }
        Err(Error::OutOfService(match (self, out.as_slice()) {
            (Wanted::One(_), [(name, offline)]) => offline.refusal(name),
            _ => format!(
                "every machine of {} is out of service: {}",
                self.describe(),
                out.iter()
                    .map(|(name, offline)| format!("{name}: {}", offline.detail()))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }))
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
    /// Free: the machine, and whether a run that died left it started.
    Free(String, bool),
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
    /// The earliest end of a lease that keeps a candidate from the caller
    /// (Unix seconds): the waiter looks again then, whatever it sleeps on.
    until: Option<i64>,
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
    /// `wait`: this machine is free; `left_started` says that a run that
    /// died left it started (then whoever waited stops it).
    Free { machine: String, left_started: bool },
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
    let mut backoff = Duration::from_millis(10);
    let mut read_only = false;
    let mut graced = false;
    let mut place: Option<PlaceLock> = None;
    let what = render::printable(&wanted.describe()).into_owned();
    let mut notice = Notice {
        what: &what,
        started,
        told: None,
        live_line: std::io::stderr().is_terminal(),
    };
    if intent.label().is_some() {
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
            locks: &**store,
        };
        let token = place.as_ref().map(|p| p.token.as_str());
        // A clear is told only once the lab holds it.
        let attempt = store
            .update(|lab| {
                let turn = Turn {
                    token,
                    waited: started.elapsed(),
                };
                attempt(lab, store, wanted, caller, &judge, intent, turn)
            })
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
                judge_read_only(store, wanted, caller, &judge, intent)
            }
            other => other,
        };
        let wait = match attempt {
            Ok(Attempt::Claimed(claim)) => break Ok(Acquired::Claimed(Box::new(claim))),
            Ok(Attempt::Free(machine, left_started)) => {
                break Ok(Acquired::Free {
                    machine,
                    left_started,
                });
            }
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
        notice.tell(&wait, intent, now);
        // A lease that ends before the next look ends the wait then: the
        // waiter looks again at its end, whatever it sleeps on.
        let lease_left = wait.until.map(|end| {
            lease::instant(end)
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(1))
        });
        let nap = deadline.map_or(patience.poll, |d| patience.poll.min(d - now));
        let nap = lease_left.map_or(nap, |left| nap.min(left));
        // Sleeping on a lock, nothing but its release can let the waiter
        // on: it looks again only then (on a terminal, every poll interval
        // too, to redraw its line).
        // A pool's candidates may change meanwhile: it looks at the poll
        // interval too.
        let pool = matches!(wanted, Wanted::Any { .. });
        let longest = if notice.live_line || pool {
            patience.poll
        } else {
            LOCK_NAP
        };
        let lock_nap = deadline.map_or(longest, |d| longest.min(d - now));
        let lock_nap = lease_left.map_or(lock_nap, |left| lock_nap.min(left));
        let slept = match read_only {
            true => {
                std::thread::sleep(nap);
                Ok(())
            }
            false => sleep_on(
                store,
                &wait.sleep,
                nap,
                lock_nap,
                patience.poll,
                &mut backoff,
            ),
        };
        if let Err(e) = slept {
            break Err(e);
        }
    };
    notice.finish();
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

/// What a waiter says: who holds the machine, once; then, on a terminal, a
/// line redrawn with the time waited and the place.
struct Notice<'w> {
    what: &'w str,
    started: Instant,
    /// The place last told, once the first message is out.
    told: Option<usize>,
    live_line: bool,
}

impl Notice<'_> {
    fn tell(&mut self, wait: &Wait, intent: &Intent, now: Instant) {
        match self.told {
            None => {
                let doing = match intent {
                    Intent::Run { .. } | Intent::Check => "waiting to claim it",
                    Intent::Wait => "waiting until it is free",
                    Intent::Reserve { .. } => "waiting to reserve it",
                };
                say!(
                    "mama: {} is busy: {}; {doing}{}",
                    self.what,
                    wait.describe(),
                    ahead(wait.ahead)
                );
                self.told = Some(wait.ahead);
            }
            Some(before) if self.live_line => {
                let mut stderr = std::io::stderr();
                let _ = write!(
                    stderr,
                    "\rmama: waited {} for {}{}\x1b[K",
                    render::seconds(now - self.started),
                    self.what,
                    ahead(wait.ahead)
                );
                let _ = stderr.flush();
                self.told = Some(wait.ahead.min(before));
            }
            Some(_) => {}
        }
    }

    /// The line's last word: how long it took, no place any more.
    fn finish(&self) {
        if self.told.is_some() && self.live_line {
            say!(
                "\rmama: waited {} for {}\x1b[K",
                render::seconds(self.started.elapsed()),
                self.what
            );
        }
    }
}

/// Sleeps on what `sleep` names, at most `lock_nap` on a lock and `nap`
/// otherwise; a lock found free at once (a place kept over a server
/// restart, a claim no lock stands behind) is looked at again after a
/// pause that grows up to `poll`.
fn sleep_on(
    store: &Store,
    sleep: &Sleep,
    nap: Duration,
    lock_nap: Duration,
    poll: Duration,
    backoff: &mut Duration,
) -> Result<()> {
    let pause = |backoff: &mut Duration| {
        std::thread::sleep((*backoff).min(nap));
        *backoff = (*backoff * 2).min(poll);
    };
    match sleep {
        Sleep::Place(token) => {
            let asleep = Instant::now();
            match store.wait_place(token, lock_nap) {
                // Free at once, yet still ahead: a place kept for a waiter
                // re-attaching after a server restart. Look again after a
                // while, not at once.
                Ok(true) if asleep.elapsed() < Duration::from_millis(5) => {
                    pause(backoff);
                    Ok(())
                }
                other => other.map(|_| ()),
            }
        }
        Sleep::JobLock(holder) => match store.try_lock(holder) {
            // A live job that no lock stands behind: a nested run's outer
            // claim made by another tool, or a claim of another tool.
            Ok(Some(_)) => {
                pause(backoff);
                Ok(())
            }
            Ok(None) => {
                *backoff = Duration::from_millis(10);
                store.wait_unlocked(holder, lock_nap).map(|_| ())
            }
            Err(e) => Err(e),
        },
        Sleep::Poll => {
            std::thread::sleep(nap);
            Ok(())
        }
    }
}

/// The longest a waiter sleeps on a lock (the place lock of the waiter
/// ahead, or the job lock of what keeps the machine busy) before it looks
/// again anyway: only the lock's release can let it on, so this is a
/// safety net, not a poll.
const LOCK_NAP: Duration = Duration::from_secs(600);

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
    intent: &Intent,
) -> Result<Attempt> {
    let lab = store.read()?.lab;
    let candidates = wanted.in_service(&lab, intent)?;
    let mut first = None;
    let mut until = None;
    for target in &candidates {
        let reason = match busy(&lab, target, caller, judge)? {
            Some(busy) => Some(busy),
            None if store.held(target) => Some(Busy::Locked),
            None => {
                let left_started = lab.get(target)?.started_for_job();
                return Ok(Attempt::Free(target.clone(), left_started));
            }
        };
        until = earlier(until, reason.as_ref());
        first.get_or_insert((target.clone(), reason));
    }
    let (target, busy) = first.unwrap_or_default();
    Ok(Attempt::Busy(Wait {
        target,
        several: candidates.len() > 1,
        busy,
        ahead: 0,
        sleep: Sleep::Poll,
        until,
    }))
}

/// The earlier of `until` and the end of the lease behind `reason`, where
/// a reservation with a lease is what keeps a machine busy.
fn earlier(until: Option<i64>, reason: Option<&Busy>) -> Option<i64> {
    match reason {
        Some(Busy::Reserved {
            until: Some(end), ..
        }) => Some(until.map_or(*end, |u| u.min(*end))),
        _ => until,
    }
}

/// The caller's turn: its place lock's token, once it holds one, and how
/// long it has waited so far (a claim records it).
struct Turn<'a> {
    token: Option<&'a str>,
    waited: Duration,
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
    turn: Turn<'_>,
) -> Result<(Attempt, Vec<Cleared>)> {
    let token = turn.token;
    let candidates = wanted.in_service(lab, intent)?;
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
    let mut until = None;
    for target in &candidates {
        let reason = busy(lab, target, caller, judge)?;
        until = earlier(until, reason.as_ref());
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
            match claim_or_free(lab, store, target, caller, judge, intent, turn.waited)? {
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
            until: None,
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
            job: intent.label().map(str::to_string),
            epoch: store.epoch(),
            pool,
        };
        hold_places(lab, &candidates, me, mine)?;
    }
    let mut wait = first.ok_or_else(|| Error::NoMatch(wanted.describe()))?;
    wait.several = candidates.len() > 1;
    wait.until = until;
    if candidates.len() > 1 && matches!(wait.sleep, Sleep::Place(_)) {
        // Waiting for several machines: a place ahead on one says nothing
        // of the others.
        wait.sleep = Sleep::Poll;
    }
    Ok((Attempt::Busy(wait), cleared))
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
    waited: Duration,
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
            until: None,
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
    let left_started = outer.is_none() && machine.started_for_job();
    let label = match intent {
        Intent::Reserve { ask } => {
            // Reserved in this very transaction: no claim or reservation
            // of anyone else's can come between.
            manual::reserve_in(lab, target, &caller.user, ask, SystemTime::now())?;
            return Ok(Attempt::Free(target.to_string(), left_started));
        }
        _ => match intent.label() {
            Some(label) => label,
            None => return Ok(Attempt::Free(target.to_string(), left_started)),
        },
    };
    // Stamped now, the lab's lock and the machine's job lock held: the
    // look began earlier, and the lab's lock (or a server restart) may
    // have kept this transaction waiting since.
    let job = caller.claim(label, os::now());
    let mac = machine.get(Field::Mac).to_string();
    let ip = machine.get(Field::Ip).to_string();
    let mut event = Event::new(Kind::Claimed, target).job(&job);
    // To the millisecond: the history says how long claims wait.
    event.waited = Some((waited.as_secs_f64() * 1000.0).round() / 1000.0);
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
        left_started,
    }))
}
