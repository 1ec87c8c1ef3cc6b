//! Where the lab is stored: the one interface the commands and the engine
//! use, whichever backend keeps the lab.
//!
//! - [`Store`]: read a [`Snapshot`], run a transaction
//!   ([`Store::update`]: the closure changes a [`crate::model::Lab`], which records
//!   its changes for the backend to replay), read the history's events.
//! - [`JobLocks`]: the machines' job locks, which a running job holds for
//!   its whole life and waiters sleep on ([`JobLock`] is one held).
//!
//! `Store` is an enum, not a trait object: [`Store::update`] is generic
//! over the transaction's closure and its result, which a trait object
//! cannot offer, and a generic `S: Storage` parameter would spread through
//! every command and the claim loop for the sake of one choice made once,
//! at start ([`Store::open`]). With an enum the call sites stay
//! `store.update(|lab| ...)`, and a new backend is one more variant and one
//! more arm in each method here. [`JobLocks`] is a trait, and object safe,
//! because the staleness judge takes it as `&dyn JobLocks` (its tests
//! fake it).
//!
//! [`file`](mod@file): the shared XML state file, its lock, its history log and the
//! job lock files beside it.

pub mod file;

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::model::Lab;
use crate::model::event::Event;
use crate::settings::Settings;
use file::FileStore;
use file::lock::FileLock;

/// A lab as read, whether it existed, and the number of the last event it
/// committed.
pub struct Snapshot {
    pub lab: Lab,
    pub existed: bool,
    pub last_event: Option<u64>,
}

impl Snapshot {
    /// What a missing lab reads as: an empty one.
    pub fn missing() -> Snapshot {
        Snapshot {
            lab: Lab::empty(),
            existed: false,
            last_event: None,
        }
    }
}

/// How long to wait for a lock that someone else holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockPatience {
    /// Give up (almost) at once: after [`NO_WAIT_GRACE`], the time any
    /// transaction takes.
    pub no_wait: bool,
    /// Give up at this instant.
    pub deadline: Option<Instant>,
}

/// How long `no_wait` still waits: a transaction holds the lab's lock for
/// milliseconds, and a reader must not make `run --no-wait` give up.
pub const NO_WAIT_GRACE: Duration = Duration::from_millis(250);

impl LockPatience {
    /// Wait for ever.
    pub fn forever() -> LockPatience {
        LockPatience::default()
    }

    /// `no_wait`, or give up `timeout` from now.
    pub fn within(no_wait: bool, timeout: Option<Duration>) -> LockPatience {
        LockPatience {
            no_wait,
            deadline: timeout.map(|t| Instant::now() + t),
        }
    }

    /// The instant to give up, seen from now.
    pub fn give_up_at(&self) -> Option<Instant> {
        let grace = self.no_wait.then(|| Instant::now() + NO_WAIT_GRACE);
        match (grace, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The lab's storage, chosen once, at start.
#[derive(Debug, Clone)]
pub enum Store {
    /// The XML state file (see [`file`](mod@file)).
    File(FileStore),
}

impl Store {
    /// The store the settings name: the state file at
    /// [`Settings::state`].
    pub fn open(settings: &Settings) -> crate::error::Result<Store> {
        Ok(Store::File(FileStore::locate(settings.state.clone())?))
    }

    /// This store, waiting for the lab's lock as `patience` says (`run
    /// --no-wait`, `--wait-timeout`, `wait --timeout`); a wait that gives up
    /// is [`crate::error::Error::Busy`].
    pub fn with_patience(self, patience: LockPatience) -> Store {
        match self {
            Store::File(store) => Store::File(store.with_patience(patience)),
        }
    }

    /// Where the lab is, for messages and for the job's `MAMA_STATE`.
    pub fn path(&self) -> &Path {
        match self {
            Store::File(store) => store.path(),
        }
    }

    /// Reads the lab (see [`FileStore::read`]).
    pub fn read(&self) -> Result<Snapshot> {
        match self {
            Store::File(store) => store.read(),
        }
    }

    /// Runs one transaction: `change` gets the current lab; when it returns
    /// `Ok` having changed the lab, the changes are stored, all or none,
    /// with the events recorded. Nothing is stored when `change` fails or
    /// changes nothing. A lab this user may not write is
    /// [`crate::error::Error::ReadOnly`] (see [`FileStore::update`]).
    pub fn update<T>(&self, change: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
        match self {
            Store::File(store) => store.update(change),
        }
    }

    /// The lab, and the newest `count` committed events of `machine`,
    /// oldest first (for `info`: reads only the end of the history).
    pub fn recent_events(&self, machine: &str, count: usize) -> Result<(Snapshot, Vec<Event>)> {
        match self {
            Store::File(store) => store.recent_events(machine, count),
        }
    }

    /// The committed events (all of them, or those numbered after `after`),
    /// oldest first, with the lab as it was when they were read.
    pub fn read_events(&self, after: Option<u64>) -> Result<(Snapshot, Vec<Event>)> {
        match self {
            Store::File(store) => store.read_events(after),
        }
    }
}

/// The machines' job locks. A claim takes its machine's lock in the claim
/// transaction and the running job holds it for its whole life (its
/// processes inherit it), so waiters sleep on it and wake the instant the
/// job ends, and a held lock proves the job lives where its PID cannot.
pub trait JobLocks {
    /// Takes `machine`'s job lock if nobody holds it: `None` means someone
    /// does, which is not an error.
    fn try_lock(&self, machine: &str) -> Result<Option<JobLock>>;
    /// Waits up to `within` for `machine`'s job lock to be free, sleeping
    /// (in the kernel, for the file backend) until its holder lets go or
    /// dies; whether it was. The lock is not kept.
    fn wait_unlocked(&self, machine: &str, within: Duration) -> Result<bool>;
    /// Whether some process holds `machine`'s job lock.
    fn held(&self, machine: &str) -> bool;
    /// Whether this process holds it, through a descriptor it inherited:
    /// then it runs inside the job that holds the machine.
    fn inherited(&self, machine: &str) -> bool;
    /// Which machines' job locks are held, from one look: for showing a
    /// whole lab.
    fn held_job_locks(&self) -> HeldJobLocks;
}

impl JobLocks for Store {
    fn try_lock(&self, machine: &str) -> Result<Option<JobLock>> {
        match self {
            Store::File(store) => store.try_lock(machine),
        }
    }

    fn wait_unlocked(&self, machine: &str, within: Duration) -> Result<bool> {
        match self {
            Store::File(store) => store.wait_unlocked(machine, within),
        }
    }

    fn held(&self, machine: &str) -> bool {
        match self {
            Store::File(store) => store.held(machine),
        }
    }

    fn inherited(&self, machine: &str) -> bool {
        match self {
            Store::File(store) => store.inherited(machine),
        }
    }

    fn held_job_locks(&self) -> HeldJobLocks {
        match self {
            Store::File(store) => store.held_job_locks(),
        }
    }
}

/// A machine's job lock, held: released when dropped (or by the kernel
/// the instant the process dies).
#[derive(Debug)]
pub enum JobLock {
    /// A `flock` on the machine's lock file.
    File(FileLock),
}

impl JobLock {
    /// The descriptor a job inherits to hold the lock for its whole life,
    /// where the lock is one.
    pub fn inheritable_fd(&self) -> Option<RawFd> {
        match self {
            JobLock::File(lock) => Some(lock.as_raw_fd()),
        }
    }

    /// Lets go of this process's hold without unlocking: the lock stays
    /// held while processes of the job that inherited it live, and is
    /// released with the last of them.
    pub fn close(self) {
        match self {
            JobLock::File(lock) => lock.close(),
        }
    }
}

/// The machines whose job locks were held at one look (see
/// [`JobLocks::held_job_locks`]).
pub enum HeldJobLocks {
    File(file::HeldJobLocks),
}

impl HeldJobLocks {
    pub fn contains(&self, machine: &str) -> bool {
        match self {
            HeldJobLocks::File(held) => held.contains(machine),
        }
    }
}
