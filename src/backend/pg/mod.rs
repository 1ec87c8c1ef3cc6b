//! The lab in PostgreSQL, shared by every host that reaches the database.
//!
//! Tables (see [`schema`]): one row a machine, holding its `<machine>`
//! element as upstream writes it, so every child and attribute mama does
//! not know survives; the document around the machines; the history. A
//! transaction replays the lab's [`Change`](crate::model::Change)s onto the changed machines'
//! elements (the same lossless tree the file backend uses) and turns them
//! into one statement each: an `UPDATE` of a changed machine's row, an
//! `INSERT`, a `DELETE`, and an `INSERT` a history event.
//!
//! Locks are the server's advisory locks, in the key space
//! [`LOCK_SPACE`]:
//! - the lab's lock (key 0), taken for the length of each writing
//!   transaction; readers read a consistent snapshot without it;
//! - each machine's job lock (key: the machine's row id), a session lock
//!   held by the running `mama run` through a session of its own for the
//!   job's whole life ([`lease`]). The server frees it the instant that
//!   session ends, and within `MAMA_HOST_TIMEOUT` of its host dying or
//!   being cut off (TCP keepalive and user timeout are set per session), so
//!   a claim whose lock is free is stale wherever it was made, and waiters
//!   on every host sleep on the lock and wake the instant it is let go.

pub mod lease;
mod locks;
mod read;
pub mod schema;
mod session;
mod tls;
mod write;

pub use session::{connect, connect_by, db_error, is_connection_loss, session_config};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::Client;

use super::{Backend, LockPatience, Snapshot, Transaction};
use crate::error::Result;
use crate::model::Lab;
use crate::model::event::{Brief, Event};
use crate::settings::url::DbUrl;

/// The advisory lock key space of mama's locks (`mama` in ASCII); the
/// second key is 0 for the lab's lock, a machine's row id for its job lock.
pub const LOCK_SPACE: i32 = 0x6d61_6d61;
const LAB_LOCK: i32 = 0;
/// The key space of waiters' place locks (the second key is the token).
pub const PLACE_SPACE: i32 = LOCK_SPACE + 1;
/// The key space of the machines' power locks (see
/// [`crate::backend::PowerLock`]), keyed like their job locks.
pub const POWER_SPACE: i32 = LOCK_SPACE + 2;

/// The channel every writing transaction notifies on commit (`NOTIFY`),
/// its payload the lab's schema: `mama serve` listens on it.
pub const CHANGE_CHANNEL: &str = "mama_lab_changed";

/// How long the main session may sit idle before it is asked whether it
/// still lives before use.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// A database lab.
#[derive(Clone)]
pub struct PgStore {
    url: Arc<DbUrl>,
    host_timeout: Duration,
    patience: LockPatience,
    /// The session reads and transactions use, opened on first use, and
    /// when it was last used.
    main: Arc<Mutex<Option<(Client, Instant)>>>,
    /// What the last read saw of the locks, with the lab.
    look: Arc<Mutex<Option<Look>>>,
    /// A session being opened for the next job lock (see
    /// [`PgStore::prepare`]).
    spare: Arc<Mutex<Option<Spare>>>,
    /// The place locks this process holds in the main session, taken
    /// again when that session is opened anew.
    places: Arc<Mutex<HashSet<i32>>>,
    /// Set when the main session was found lost (a server restart): the
    /// next use opens it anew, patiently.
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the history has its optional columns (`waited`, `status`),
    /// as this run last saw it (a writer's snapshot looks each time: a
    /// server that lost its last commits may have lost the columns a
    /// transaction of this run added); once set, readers need not look.
    event_columns: Arc<std::sync::atomic::AtomicBool>,
    /// Set once the main session has planned a writer's statements (see
    /// [`PgStore::warm`]); cleared when it is opened anew.
    warm: Arc<std::sync::atomic::AtomicBool>,
    /// The machines as the last writing transaction left them.
    kept: Arc<Mutex<Option<Kept>>>,
}

/// A session for the next job lock.
enum Spare {
    /// Being opened, on a thread of its own.
    Opening(std::thread::JoinHandle<Result<Client>>),
    /// Open (kept after a try that found the lock held).
    Ready(Box<Client>),
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.url.shown)
    }
}

/// One look at the lab's machines and locks, taken with a snapshot of the
/// lab: the job lock behind each machine and which of them were held.
#[derive(Debug, Clone, Default)]
struct Look {
    ids: HashMap<String, i32>,
    held: HashSet<i32>,
    /// Machines whose job was written before the server last started, in
    /// the host timeout after that start: their holders may be
    /// re-attaching.
    reattaching: HashSet<String>,
    /// The place locks held, by token.
    places: HashSet<i32>,
    /// Whether the server started less than the host timeout ago: waiters
    /// may still be taking their places again.
    restarted: bool,
    /// When the server started, as it says it.
    epoch: String,
}

impl Look {
    fn held(&self, machine: &str) -> bool {
        self.ids
            .get(machine)
            .is_some_and(|id| self.held.contains(id))
    }
}

/// Which events a read takes with the lab.
#[derive(Clone, Copy)]
enum Wanted<'a> {
    /// All of them, or those numbered after this one.
    After(Option<u64>),
    /// The newest of a machine, this many.
    Recent(&'a str, usize),
}

/// A machine's row.
struct Row {
    /// Its job lock's key (the row's number in a schema of version 1).
    key: i32,
    name: String,
    element: String,
    /// Its row's own number (`id`) and version (`xmin`, the transaction
    /// that wrote it), by which a later transaction tells that it is
    /// unchanged (see [`Kept`]).
    row: i64,
    written_by: String,
    /// Its place in the lab's order.
    place: i64,
}

/// A kept machine's row as this process last wrote or read it.
struct RowSeen {
    /// Its version (`xmin`).
    version: String,
    /// Its job lock's key.
    key: i32,
    place: i64,
    name: String,
}

/// The machines as this process's last writing transaction left them,
/// parsed, for the next one to take without reading and parsing them
/// again (a run's release after its claim) when no one has written them
/// since: every row still the version that transaction wrote or read, with
/// the same job lock key (a row's `xmin`: a row is never changed in
/// place; a change writes a new version, whose `xmin` is the writer's
/// transaction).
struct Kept {
    /// Every machine's row as that transaction left it, by row number.
    rows: HashMap<i64, RowSeen>,
    doc: crate::format::doc::XmlLab,
    /// When the server started, as it said in that transaction: kept
    /// machines are taken from the same run of the server only.
    epoch: String,
}

impl Kept {
    /// Every machine's `row:xmin:key`, by row, as
    /// [`schema::MACHINE_VERSIONS`] writes them.
    fn versions(&self) -> String {
        schema::machine_versions(
            self.rows
                .iter()
                .map(|(row, seen)| (*row, seen.version.as_str(), seen.key)),
        )
    }

    /// The job lock key of each machine.
    fn ids(&self) -> HashMap<String, i32> {
        self.rows
            .values()
            .map(|seen| (seen.name.clone(), seen.key))
            .collect()
    }
}

impl PgStore {
    /// The lab at `url`; nothing is opened until it is used.
    pub fn open(url: DbUrl, host_timeout: Duration) -> PgStore {
        PgStore {
            url: Arc::new(url),
            host_timeout,
            patience: LockPatience::forever(),
            main: Arc::new(Mutex::new(None)),
            look: Arc::new(Mutex::new(None)),
            spare: Arc::new(Mutex::new(None)),
            places: Arc::new(Mutex::new(HashSet::new())),
            lost: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            event_columns: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            warm: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            kept: Arc::new(Mutex::new(None)),
        }
    }

    pub fn with_patience(mut self, patience: LockPatience) -> PgStore {
        self.patience = patience;
        self
    }

    /// The URL, without its password.
    pub fn shown(&self) -> &str {
        &self.url.shown
    }

    /// Whether the URL held a password.
    pub fn had_password(&self) -> bool {
        self.url.had_password
    }
}

impl Backend for PgStore {
    /// Whoever the server lets write the tables: mama cannot tell.
    fn writers(&self) -> Result<crate::backend::Writers> {
        Ok(crate::backend::Writers::Unknown(
            "a database lab may be written by every role its server lets write it".into(),
        ))
    }

    fn with_patience(&self, patience: LockPatience) -> Arc<dyn Backend> {
        Arc::new(self.clone().with_patience(patience))
    }

    fn location(&self) -> String {
        self.shown().to_string()
    }

    /// The URL without its password.
    fn for_jobs(&self) -> std::ffi::OsString {
        self.shown().into()
    }

    fn password_withheld(&self) -> bool {
        self.had_password()
    }

    fn export(&self) -> Result<String> {
        PgStore::export(self)
    }

    fn read(&self) -> Result<Snapshot> {
        PgStore::read(self)
    }

    fn transact(
        &self,
        kind: Transaction<'_>,
        change: &mut dyn FnMut(&mut Lab) -> Result<()>,
    ) -> Result<Vec<Event>> {
        let ((), committed) = match kind {
            Transaction::Update => self.update(change),
            Transaction::Create => self.update_or_create(change),
            Transaction::Import { skeleton, replace } => {
                self.update_with_document(skeleton, replace, change)
            }
        }?;
        Ok(committed)
    }

    fn recent_events(&self, machine: &str, count: usize) -> Result<(Snapshot, Vec<Event>)> {
        PgStore::recent_events(self, machine, count)
    }

    fn read_events(&self, after: Option<u64>) -> Result<(Snapshot, Vec<Event>)> {
        PgStore::read_events(self, after)
    }

    fn scan_events(&self, visit: &mut dyn FnMut(&Brief<'_>)) -> Result<Snapshot> {
        PgStore::scan_events(self, visit)
    }

    fn each_event(&self, since: Option<i64>, visit: &mut dyn FnMut(Event)) -> Result<Snapshot> {
        PgStore::each_event(self, since, visit)
    }
}
