//! The busy rules (SPEC "Busy, free, stale"): what holds a machine by its
//! own fields (a job, a reservation, a start by hand), what blocks it
//! through a resource it shares, and for whom.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};

use crate::engine::stale::{Judge, Verdict};
use crate::error::Result;
use crate::model::field::Field;
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
    pub(super) fn claim(&self, label: &str, now: i64) -> JobRecord {
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
        /// When its lease ends it (Unix seconds); `None`: when released.
        until: Option<i64>,
    },
    Started {
        machine: String,
        /// Who started it with mama; `None` where it was started by hand
        /// (or by another tool).
        by: Option<String>,
    },
    /// The record is free, but the machine's job lock is held: processes
    /// of a job whose record was cleared still run, or a claim is being
    /// made this very moment.
    Locked,
}

impl Busy {
    /// The machine whose job lock a waiter may sleep on.
    pub(super) fn lock_holder(&self, target: &str) -> Option<String> {
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
    pub fn describe(&self, target: &str) -> String {
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
            Busy::Reserved { machine, by, until } => format!(
                "{} is reserved by {}{}",
                subject(machine),
                render::printable(by),
                until
                    .map(|t| format!(" until {}", render::local_time(t)))
                    .unwrap_or_default()
            ),
            Busy::Started { machine, by: None } => format!(
                "{} was started by hand (is_started is set)",
                subject(machine)
            ),
            Busy::Started {
                machine,
                by: Some(by),
            } => format!(
                "{} was started by {} (`mama stop` puts it down)",
                subject(machine),
                render::printable(by)
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
    /// Out of service (`mama offline`): nothing claims it.
    Offline,
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
            Status::Offline => "offline",
        }
    }
}

/// A machine's status, from its own fields (a live job first, then out
/// of service, then a stale job, then a hand start, then a
/// reservation); `locked` says that, with no job recorded, its job lock
/// is held (processes of a job whose record was cleared). A live job on
/// a machine out of service shows busy: it runs on. Only a machine free
/// by its own fields can be [`Status::Blocked`], which its resources
/// decide (see [`Resources::blocker`]).
pub fn status(machine: &Machine, verdict: Option<&Verdict>, locked: bool) -> Status {
    match verdict {
        Some(Verdict::Stale(_)) if machine.offline().is_some() => Status::Offline,
        Some(Verdict::Stale(_)) => Status::Stale,
        Some(_) => Status::Busy,
        None if locked => Status::Busy,
        None if machine.offline().is_some() => Status::Offline,
        None if machine.is_started() && !machine.started_for_job() => Status::Started,
        None if machine.reservation().is_some() => Status::Reserved,
        None => Status::Free,
    }
}

/// What holds `machine` by its own fields, whoever asks, in the order the
/// busy rules look (SPEC rules 1-3): a live job, a reservation, a hand
/// start. Each is looked at only when the one before it did not do (a
/// job is judged first).
pub(super) fn holds<'m, P: ProcessTable>(
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
            until: machine.lease().and_then(|l| l.expires),
        })
    });
    // A start that belongs to the machine's job lives and dies with it:
    // while the job lives, the job holds the machine; once it is stale
    // (or cleared), whoever claims the machine next stops it first.
    let started = std::iter::once_with(move || {
        (machine.is_started() && !machine.started_for_job()).then(|| Busy::Started {
            machine: machine.name().to_string(),
            by: machine.started_by(),
        })
    });
    job.chain(reserved).chain(started).flatten()
}

impl Caller {
    /// Whether `hold` is the caller's own, so it keeps nothing from the
    /// caller: a job claimed by an ancestor of ours, or one we run inside
    /// (we hold its job lock, whatever namespace we are in); a reservation
    /// by our user.
    pub(super) fn holds_already(&self, hold: &Busy, judge: &Judge<'_, Processes>) -> bool {
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
            Busy::Started { by, .. } => by.as_deref() == Some(self.user.as_str()),
            Busy::Locked => false,
        }
    }
}

/// Whether `machine` is busy for `caller` by its own fields (SPEC rules 1-3).
pub(super) fn busy_by_own_fields(
    machine: &Machine,
    caller: &Caller,
    judge: &Judge<'_, Processes>,
) -> Option<Busy> {
    holds(machine, judge).find(|hold| !caller.holds_already(hold, judge))
}

/// A machine's resources, as the busy rules read them.
pub(super) fn resource_names(machine: &Machine) -> impl Iterator<Item = &str> {
    machine.get(Field::Resources).split_whitespace()
}

/// The machines whose state decides whether `target` is free: itself, then
/// every machine sharing one of its resources.
pub(super) fn deciding_machines(lab: &Lab, target: &str) -> Result<Vec<String>> {
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
pub(super) fn busy(
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

/// Whether the caller holds `target` already: a live job on it or on a
/// machine sharing a resource with it is the caller's own (an ancestor's
/// claim, or the job whose lock it inherited), or a reservation there is
/// the caller's.
pub(super) fn held_by_caller(
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
