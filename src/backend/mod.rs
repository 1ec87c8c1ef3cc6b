//! Where the lab is stored: the one interface the commands and the engine
//! use, whichever backend keeps the lab.
//!
//! - [`Backend`]: read a [`Snapshot`], run a transaction
//!   ([`Backend::transact`]: the closure changes a [`crate::model::Lab`],
//!   which records its changes for the backend to replay), read the
//!   history's events. Object safe: [`Store::open`] chooses one, once, and
//!   [`Store`] holds it, with the generic [`Store::update`] as the one
//!   wrapper that call sites use (`store.update(|lab| ...)`).
//! - [`Listener`]: told by the [`Store`] of the events each transaction
//!   committed, numbered, once it committed (the notify commands).
//! - [`JobLocks`]: the machines' job locks, which a running job holds for
//!   its whole life and waiters sleep on, and the waiters' place locks.
//!   Each backend hands out its own held locks as values ([`JobLock`],
//!   [`PlaceLock`]) that let go when dropped.
//!
//! [`file`](mod@file): the shared XML state file, its lock, its history log
//! and the job lock files beside it. [`pg`]: the lab in PostgreSQL, shared
//! by many hosts, with the server's advisory locks. A third backend is a
//! folder beside them that implements [`Backend`], and one arm in
//! [`Store::open`].

pub mod file;
pub mod pg;

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::JobRecord;
use crate::model::Lab;
use crate::model::event::{Brief, Event};
use crate::model::queue::Waiter;
use crate::model::setting::Setting;
use crate::settings::{Location, Settings};
use file::FileStore;
use pg::PgStore;

/// A lab as read, and the number of the last event it committed. (A lab
/// that is not there is not read: [`crate::error::Error::NoLab`].)
pub struct Snapshot {
    pub lab: Lab,
    pub last_event: Option<u64>,
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

/// What a transaction may do besides changing the lab.
#[derive(Debug, Clone, Copy)]
pub enum Transaction<'a> {
    /// Change a lab that is there ([`crate::error::Error::NoLab`] where it
    /// is not; nothing is created).
    Update,
    /// Create the lab where there is none (`add`).
    Create,
    /// Bring in the document around the machines of an imported lab
    /// (see [`XmlLab::skeleton`]): a database lab keeps it when it has none
    /// yet or `replace` says; a state file keeps its own. Creates the lab
    /// where there is none.
    ///
    /// [`XmlLab::skeleton`]: crate::format::doc::XmlLab::skeleton
    Import { skeleton: &'a str, replace: bool },
}

/// A place where a lab is kept.
pub trait Backend: JobLocks + std::fmt::Debug + Send + Sync {
    /// This backend, waiting for the lab's lock as `patience` says (`run
    /// --no-wait`, `--wait-timeout`, `wait --timeout`); a wait that gives
    /// up is [`crate::error::Error::Busy`].
    fn with_patience(&self, patience: LockPatience) -> Arc<dyn Backend>;
    /// Where the lab is, for messages: the state file's path, or the
    /// database's URL without its password.
    fn location(&self) -> String;
    /// What a job gets as `MAMA_STATE` to find the same lab.
    fn for_jobs(&self) -> OsString;
    /// Whether the lab's address held a password, which
    /// [`Backend::for_jobs`] leaves out.
    fn password_withheld(&self) -> bool {
        false
    }
    /// The lab as upstream's format holds it (`export`).
    fn export(&self) -> Result<String>;
    /// Reads the lab.
    fn read(&self) -> Result<Snapshot>;
    /// Runs one transaction: `change` gets the current lab, once; when it
    /// returns `Ok` having changed the lab, the changes are stored, all or
    /// none, with the events recorded. Nothing is stored when `change`
    /// fails or changes nothing. A lab this user may not write is
    /// [`crate::error::Error::ReadOnly`]. Returns the events it committed,
    /// numbered as the history holds them, in order (none when nothing
    /// was stored).
    fn transact(
        &self,
        kind: Transaction<'_>,
        change: &mut dyn FnMut(&mut Lab) -> Result<()>,
    ) -> Result<Vec<Event>>;
    /// The lab, and the newest `count` committed events of `machine`,
    /// oldest first (for `info`: reads only the end of the history).
    fn recent_events(&self, machine: &str, count: usize) -> Result<(Snapshot, Vec<Event>)>;
    /// The committed events (all of them, or those numbered after `after`),
    /// oldest first, with the lab as it was when they were read.
    fn read_events(&self, after: Option<u64>) -> Result<(Snapshot, Vec<Event>)>;
    /// Gives every committed event to `visit`, oldest first, as statistics
    /// read them (see [`Brief`]); returns the lab as it was when the
    /// history was read. The history is read from one look at it, without
    /// holding the lab's lock while it is read (a long one takes seconds).
    fn scan_events(&self, visit: &mut dyn FnMut(&Brief<'_>)) -> Result<Snapshot>;
    /// Gives the committed events to `visit` whole, oldest first, read as
    /// [`Backend::scan_events`] reads them; with `since` (Unix seconds),
    /// those older may be left out (whole segments of a state file's log,
    /// rows of a database lab's), and some may still come.
    fn each_event(&self, since: Option<i64>, visit: &mut dyn FnMut(Event)) -> Result<Snapshot>;
    /// Who may write the lab, as far as can be told: the commands written
    /// into it (`startcmd`, a device's) are run only where each of them is
    /// the caller or root, or the caller trusts the lab.
    fn writers(&self) -> Result<Writers>;
}

/// What `mama init` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct InitRequest {
    /// A file lab's group (`--group`: a name or a number), else its
    /// folder's.
    pub group: Option<String>,
    /// Change what another user set up, or hand what another group holds
    /// to the lab's group (`--force`).
    pub force: bool,
    /// A database lab: the role to grant what a lab's users need
    /// (`--grant`); without it the grants are only printed.
    pub grant: Option<String>,
}

/// What `mama init` did.
#[derive(Debug, Clone)]
pub struct InitDone {
    /// The lab: a state file's path, or a database's URL.
    pub location: String,
    /// A file lab's group.
    pub group: Option<String>,
    /// What changed, one line each (none: it was ready).
    pub changes: Vec<String>,
    /// A database lab: the GRANT statements a lab's users need, for the
    /// role given, or for `ROLE` to fill in.
    pub grants: Vec<String>,
}

/// Makes the lab the settings name ready for its users (`mama init`): a
/// state file's folder (made where it is missing) set up for its group, or
/// a database's tables created and its users' grants given or printed.
pub fn init(settings: &Settings, request: &InitRequest) -> Result<InitDone> {
    match &settings.state {
        Location::File(path) => file::init_at(path, request),
        Location::Database(url) => {
            PgStore::open((**url).clone(), settings.host_timeout).init(request.grant.as_deref())
        }
    }
}

/// Who may write a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writers {
    /// These, and nobody else (root aside).
    Known(Vec<Writer>),
    /// Cannot be told; why.
    Unknown(String),
}

/// One who may write a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    User(u32),
    /// Every member of the group.
    Group(u32),
    Everyone,
}

/// The lab's storage, chosen once, at start.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Told of the events each transaction commits.
    listener: Option<Arc<dyn Listener>>,
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &(dyn Backend + 'static) {
        &*self.backend
    }
}

/// What is told of the events every transaction of a [`Store`] commits,
/// once it committed them (the notify commands).
pub trait Listener: std::fmt::Debug + Send + Sync {
    /// `events` were committed, numbered as the history holds them, in
    /// order (never none); `lab_notify` is the lab's notify setting as the
    /// transaction left the lab. Called after the transaction let go of
    /// the lab's lock, never inside it.
    fn committed(&self, store: &Store, lab_notify: Option<&str>, events: &[Event]);
}

impl Store {
    /// The store the settings name ([`Settings::state`]). A database is
    /// not reached until the store is used.
    pub fn open(settings: &Settings) -> Result<Store> {
        let backend: Arc<dyn Backend> = match &settings.state {
            Location::File(path) => Arc::new(FileStore::locate(path.clone())?),
            Location::Database(url) => {
                Arc::new(PgStore::open((**url).clone(), settings.host_timeout))
            }
        };
        Ok(Store {
            backend,
            listener: None,
        })
    }

    /// The lab opened again where `settings` name it, telling the same
    /// listener: a state file's folder is walked to again (a store keeps
    /// the folder it found when opened, see [`FileStore::locate`]), so a
    /// reader that runs for long (`serve`) follows a folder replaced or
    /// made again since.
    pub fn reopened(&self, settings: &Settings) -> Result<Store> {
        Ok(Store {
            listener: self.listener.clone(),
            ..Store::open(settings)?
        })
    }

    /// This store, telling `listener` of every transaction's events.
    pub fn listened(self, listener: Arc<dyn Listener>) -> Store {
        Store {
            listener: Some(listener),
            ..self
        }
    }

    /// This store, waiting for the lab's lock as `patience` says.
    pub fn with_patience(&self, patience: LockPatience) -> Store {
        Store {
            backend: self.backend.with_patience(patience),
            listener: self.listener.clone(),
        }
    }

    /// Runs one transaction (see [`Backend::transact`]) on a lab that is
    /// there; `change`'s value comes back. Every transaction first ends
    /// the reservations whose lease is over (see [`Lab::end_leases`]).
    pub fn update<T>(&self, change: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
        self.run(Transaction::Update, change)
    }

    /// [`Store::update`] that creates the lab where there is none (`add`).
    pub fn update_or_create<T>(&self, change: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
        self.run(Transaction::Create, change)
    }

    /// [`Store::update`] that brings in an imported lab's document (see
    /// [`Transaction::Import`]).
    pub fn import<T>(
        &self,
        skeleton: &str,
        replace: bool,
        change: impl FnOnce(&mut Lab) -> Result<T>,
    ) -> Result<T> {
        self.run(Transaction::Import { skeleton, replace }, change)
    }

    fn run<T>(
        &self,
        kind: Transaction<'_>,
        change: impl FnOnce(&mut Lab) -> Result<T>,
    ) -> Result<T> {
        let mut change = Some(change);
        let mut value = None;
        let mut lab_notify = None;
        let listening = self.listener.is_some();
        let committed = self.backend.transact(kind, &mut |lab| {
            let change = change.take().ok_or_else(|| {
                Error::Invalid("internal error: a transaction ran its change twice".into())
            })?;
            // Reservations whose lease is over end first, so that what the
            // change judges (as free) and what it writes agree.
            lab.end_leases(std::time::SystemTime::now())?;
            value = Some(change(lab)?);
            if listening {
                lab_notify = lab.setting(Setting::Notify).map(str::to_owned);
            }
            Ok(())
        })?;
        if let Some(listener) = &self.listener
            && !committed.is_empty()
        {
            listener.committed(self, lab_notify.as_deref(), &committed);
        }
        value.ok_or_else(|| Error::Invalid("internal error: a transaction ran no change".into()))
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
    /// The processes that hold `machine`'s job lock, where they can be
    /// told (a state file's lock, through /proc): for `info` to name what
    /// keeps a machine busy when no live mama does. A database session's
    /// lock names none.
    fn holders(&self, _machine: &str) -> Vec<crate::os::Holder> {
        Vec::new()
    }
    /// Takes `machine`'s power lock, waiting as long as another power
    /// sequence on it takes (`waiting` is called once if that is not at
    /// once).
    fn power_lock(&self, machine: &str, waiting: &mut dyn FnMut()) -> Result<PowerLock>;
    /// Takes a new place lock, which a waiter holds for as long as it waits
    /// (see [`crate::model::queue`]); its token names it in the queue.
    fn hold_place(&self) -> Result<PlaceLock>;
    /// Whether the place lock of `waiter` is held: it still waits.
    fn place_held(&self, waiter: &Waiter) -> bool;
    /// What a place taken now records of the lab's server (see
    /// [`Waiter::epoch`]); `None` where there is no server.
    fn epoch(&self) -> Option<String> {
        None
    }
    /// Waits up to `within` for the place lock `token` to be let go (its
    /// waiter left or died); whether it was.
    fn wait_place(&self, token: &str, within: Duration) -> Result<bool>;
    /// Removes what a waiter that left or died leaves behind of its place
    /// lock (the file backend's lock file), once its place was taken out.
    fn forget_place(&self, _token: &str) {}
    /// A claim is about to be tried: get ready to take a job lock quickly
    /// (the database backend opens the session that will hold it, while
    /// the claim transaction runs).
    fn prepare(&self) {}
    /// Whether the lab is shared across hosts (the database backend): there
    /// a claim made by mama (one recorded with an origin) is live while its
    /// job lock is held, wherever it was made, since the holder's session
    /// holds it and the server frees it when that session ends or its host
    /// goes silent for the host timeout.
    fn across_hosts(&self) -> bool {
        false
    }
    /// In a lab shared across hosts: whether the claim on `machine` was made
    /// before the server last started, which ended its holder's session,
    /// and the holder may still be re-attaching (within the host timeout
    /// after the start). Such a claim stays live meanwhile.
    fn reattaching(&self, _machine: &str) -> bool {
        false
    }
}

/// A machine's power lock, held: a power sequence (start, stop, a switch)
/// runs under it, so two never run on one machine at once. Let go when
/// dropped.
pub struct PowerLock {
    _held: Box<dyn Send>,
}

impl PowerLock {
    pub fn new(held: Box<dyn Send>) -> PowerLock {
        PowerLock { _held: held }
    }
}

/// A waiter's place lock, held: let go (and its traces removed) when
/// dropped. Never drop it inside a transaction: the database backend lets
/// go through the lab's session.
pub struct PlaceLock {
    pub token: String,
    /// The backend's hold, which lets go when dropped.
    _held: Box<dyn Send>,
}

impl PlaceLock {
    pub fn new(token: String, held: Box<dyn Send>) -> PlaceLock {
        PlaceLock { token, _held: held }
    }
}

/// What a backend holds as a machine's job lock.
pub trait HeldJob: std::fmt::Debug + Send {
    /// The descriptor a job inherits to hold the lock for its whole life,
    /// where the lock is one.
    fn inheritable_fd(&self) -> Option<RawFd> {
        None
    }
    /// Keeps the lock for the claim `job` while the job runs, where keeping
    /// takes work (a database session that may be lost): the [`Lease`]
    /// returned says when the claim was lost and the job must stop.
    fn keep(&mut self, _job: &JobRecord) -> Option<Arc<Lease>> {
        None
    }
    /// Stops keeping the lock (see [`HeldJob::keep`]) without letting go
    /// of it: before the release transaction.
    fn stop_keeping(&mut self) {}
    /// Lets go of this process's hold without unlocking: the lock stays
    /// held while processes of the job that inherited it live, and is
    /// released with the last of them.
    fn close(self: Box<Self>);
}

/// A machine's job lock, held: released when dropped (or by the kernel
/// the instant the process dies).
#[derive(Debug)]
pub struct JobLock(Box<dyn HeldJob>);

impl JobLock {
    pub fn new(held: Box<dyn HeldJob>) -> JobLock {
        JobLock(held)
    }

    /// See [`HeldJob::inheritable_fd`].
    pub fn inheritable_fd(&self) -> Option<RawFd> {
        self.0.inheritable_fd()
    }

    /// See [`HeldJob::keep`].
    pub fn keep(&mut self, job: &JobRecord) -> Option<Arc<Lease>> {
        self.0.keep(job)
    }

    /// See [`HeldJob::stop_keeping`].
    pub fn stop_keeping(&mut self) {
        self.0.stop_keeping();
    }

    /// See [`HeldJob::close`].
    pub fn close(self) {
        self.0.close();
    }
}

/// A claim kept by work (a database lab's session), as the supervisor of
/// its job sees it: lost, or silent so long that it must be taken for lost.
#[derive(Debug)]
pub struct Lease {
    lost: AtomicBool,
    /// When the keeper's question to the server that is still unanswered
    /// was asked, in milliseconds since `epoch`; 0 when none is.
    asking_since: std::sync::atomic::AtomicU64,
    epoch: Instant,
    /// How long a question may go unanswered before the job is stopped:
    /// before the server can free the claim for another host.
    pub silent_limit: Duration,
    /// How long the job gets between TERM and KILL when it is stopped.
    pub kill_after: Duration,
}

impl Lease {
    /// A lease on a lab whose server frees a silent holder's claims
    /// `host_timeout` after it last heard from it. The keeper asks every
    /// `ask_every`, and the supervisor looks every `look_every`; the job
    /// gets TERM early enough that even its KILL, a quarter of the timeout
    /// (1 to 5 s) later, comes a second before the server frees the claim
    /// (where the timeout allows: never later than a quarter of it).
    pub fn new(host_timeout: Duration, ask_every: Duration, look_every: Duration) -> Lease {
        let kill_after = (host_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(5));
        let margin = kill_after + ask_every + look_every + Duration::from_secs(1);
        Lease {
            lost: AtomicBool::new(false),
            asking_since: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
            silent_limit: host_timeout.saturating_sub(margin).max(host_timeout / 4),
            kill_after,
        }
    }

    /// The claim is lost.
    pub fn lose(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A question to the server is on its way.
    pub fn asking(&self) {
        let now = (self.epoch.elapsed().as_millis() as u64).max(1);
        self.asking_since
            .store(now, std::sync::atomic::Ordering::SeqCst);
    }

    /// The server answered.
    pub fn answered(&self) {
        self.asking_since
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the claim was lost.
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How long the question on its way has gone unanswered.
    pub fn silence(&self) -> Duration {
        match self.asking_since.load(std::sync::atomic::Ordering::SeqCst) {
            0 => Duration::ZERO,
            since => Duration::from_millis(
                (self.epoch.elapsed().as_millis() as u64).saturating_sub(since),
            ),
        }
    }
}

/// The machines whose job locks were held at one look (see
/// [`JobLocks::held_job_locks`]).
pub struct HeldJobLocks(Box<dyn Fn(&str) -> bool>);

impl HeldJobLocks {
    pub fn new(contains: impl Fn(&str) -> bool + 'static) -> HeldJobLocks {
        HeldJobLocks(Box::new(contains))
    }

    pub fn contains(&self, machine: &str) -> bool {
        (self.0)(machine)
    }
}
