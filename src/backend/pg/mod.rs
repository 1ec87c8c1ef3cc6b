//! The lab in PostgreSQL, shared by every host that reaches the database.
//!
//! Tables (see [`schema`]): one row a machine, holding its `<machine>`
//! element as upstream writes it, so every child and attribute mama does
//! not know survives; the document around the machines; the history. A
//! transaction replays the lab's [`Change`]s onto the changed machines'
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
pub mod schema;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, Config, GenericClient, IsolationLevel, NoTls};

use super::{
    Backend, HeldJobLocks, JobLock, JobLocks, LockPatience, PlaceLock, Snapshot, Transaction,
};
use crate::backend::file::doc::XmlLab;
use crate::error::{Error, Result};
use crate::model::event::{Event, Kind};
use crate::model::queue::Waiter;
use crate::model::{Change, Lab};
use crate::settings::url::DbUrl;
use lease::PgJobLock;

/// The advisory lock key space of mama's locks (`mama` in ASCII); the
/// second key is 0 for the lab's lock, a machine's row id for its job lock.
pub const LOCK_SPACE: i32 = 0x6d61_6d61;
const LAB_LOCK: i32 = 0;
/// The key space of waiters' place locks (the second key is the token).
pub const PLACE_SPACE: i32 = LOCK_SPACE + 1;

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
    id: i32,
    name: String,
    element: String,
}

/// A database error with what was being done; a permission the role
/// lacks, or a read-only server, is [`Error::ReadOnly`], on which readers
/// go on without writing.
pub fn db_error(context: &str, e: postgres::Error) -> Error {
    let message = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    match e.code() {
        Some(code)
            if *code == SqlState::INSUFFICIENT_PRIVILEGE
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            Error::ReadOnly {
                context: context.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, message),
            }
        }
        _ => Error::Database {
            context: context.to_string(),
            message,
        },
    }
}

/// Whether `e` says the session is gone (the server restarting, shutting
/// down or unreachable) rather than refusing a statement.
pub fn is_connection_loss(e: &postgres::Error) -> bool {
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(code) => {
            *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08")
        }
    }
}

/// The settings of every session mama opens: the server drops the session,
/// and with it its locks, within `host_timeout` of its peer going silent
/// (keepalive idle + count × interval, and the TCP user timeout for data
/// left unacknowledged); the client side notices a dead server too.
pub fn session_config(url: &DbUrl, host_timeout: Duration) -> Config {
    let secs = host_timeout.as_secs().max(1);
    let idle = (secs / 2).max(1);
    let interval = (secs / 8).max(1);
    let count = (secs.saturating_sub(idle) / interval).max(1);
    let mut config = url.config.clone();
    // A session blocked in a lock wait (a waiter) reads nothing from its
    // client: the server looks every second whether the client is still
    // there, so a killed waiter's session ends, and lets go of its locks,
    // within a second rather than when its wait ends.
    let options = format!(
        "{} -c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} \
         -c tcp_keepalives_count={count} -c tcp_user_timeout={} \
         -c client_connection_check_interval=1000",
        config.get_options().unwrap_or_default(),
        secs * 1000
    );
    config.options(options.trim());
    if config.get_application_name().is_none() {
        config.application_name("mama");
    }
    config
        .connect_timeout(Duration::from_secs(secs.min(10)))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(idle))
        .keepalives_interval(Duration::from_secs(interval))
        .keepalives_retries(u32::try_from(count).unwrap_or(u32::MAX))
        .tcp_user_timeout(Duration::from_secs(secs));
    config
}

/// Opens a session to the lab.
pub fn connect(url: &DbUrl, host_timeout: Duration) -> Result<Client> {
    session_config(url, host_timeout)
        .connect(NoTls)
        .map_err(|e| db_error(&format!("cannot connect to the lab at {}", url.shown), e))
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

    fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the main session, opening it (again) where needed. A
    /// session idle for a while is asked first whether it still lives: one
    /// the server dropped (a restart) is opened anew, waiting up to the
    /// host timeout for the server to come back.
    fn with_main<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut main = Self::locked(&self.main);
        let lost = self.lost.swap(false, std::sync::atomic::Ordering::SeqCst);
        let stale = match main.as_mut() {
            None => None,
            Some(_) if lost => Some(true),
            Some((client, _)) if client.is_closed() => Some(true),
            Some((client, used)) if used.elapsed() > IDLE_CHECK => {
                Some(client.simple_query("").is_err())
            }
            Some(_) => Some(false),
        };
        match stale {
            Some(false) => {}
            Some(true) => {
                let mut client = self.reconnect()?;
                // A waiter keeps its place: its place locks went with the
                // old session.
                for key in Self::locked(&self.places).iter() {
                    // A waiter behind may hold it for an instant (it looks
                    // whether it is free): try again until it is ours.
                    let give_up = Instant::now() + Duration::from_secs(1);
                    loop {
                        let taken: bool = client
                            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&PLACE_SPACE, key])
                            .map_err(|e| db_error(&self.context("wait in"), e))?
                            .get(0);
                        if taken || Instant::now() >= give_up {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                *main = Some((client, Instant::now()));
            }
            None => *main = Some((connect(&self.url, self.host_timeout)?, Instant::now())),
        }
        let Some((client, used)) = main.as_mut() else {
            return Err(Error::Invalid("internal error: no database session".into()));
        };
        let result = f(client);
        // A session found closed stays, so that the next use opens it again
        // patiently (a server restart).
        *used = Instant::now();
        result
    }

    /// Opens the main session again after the server dropped it, for up to
    /// the host timeout.
    fn reconnect(&self) -> Result<Client> {
        let give_up = Instant::now() + self.host_timeout;
        loop {
            match connect(&self.url, self.host_timeout) {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() >= give_up => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn context(&self, action: &str) -> String {
        format!("cannot {action} the lab at {}", self.url.shown)
    }

    fn corrupt(&self, e: crate::backend::file::xml::ParseError) -> Error {
        Error::Corrupt {
            path: self.url.shown.clone().into(),
            location: None,
            message: e.message,
        }
    }

    /// Reads the lab: a consistent snapshot of its machines and of which of
    /// their job locks are held.
    pub fn read(&self) -> Result<Snapshot> {
        Ok(self.read_with(None)?.0)
    }

    /// The lab, and the events numbered after `after` (all of them for
    /// `None`), from one snapshot.
    pub fn read_events(&self, after: Option<u64>) -> Result<(Snapshot, Vec<Event>)> {
        let (snapshot, events) = self.read_with(Some(Wanted::After(after)))?;
        Ok((snapshot, events.unwrap_or_default()))
    }

    /// A read-only transaction that sees one snapshot of the lab.
    fn snapshot_transaction<'a>(
        &self,
        client: &'a mut Client,
    ) -> Result<postgres::Transaction<'a>> {
        client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| db_error(&self.context("read"), e))
    }

    /// The newest `count` events of `machine`, oldest first, with the lab
    /// (for `info`: the index of events by machine finds them).
    pub fn recent_events(&self, machine: &str, count: usize) -> Result<(Snapshot, Vec<Event>)> {
        let (snapshot, events) = self.read_with(Some(Wanted::Recent(machine, count)))?;
        Ok((snapshot, events.unwrap_or_default()))
    }

    fn read_with(&self, events: Option<Wanted<'_>>) -> Result<(Snapshot, Option<Vec<Event>>)> {
        self.with_main(|client| {
            let mut tx = self.snapshot_transaction(client)?;
            let Some(version) = schema::version(&mut tx, &self.url.shown)? else {
                return Err(self.no_lab());
            };
            let (rows, look, _) = self.snapshot(&mut tx, version)?;
            *Self::locked(&self.look) = Some(look);
            let lab = self.parse(&rows)?.model();
            let (events, last_event) = match events {
                None => (None, None),
                Some(wanted) => {
                    let events = self.events(&mut tx, wanted)?;
                    let last = match events.last() {
                        Some(e) => Some(e.seq),
                        None => tx
                            .query_one("SELECT max(seq) FROM mama_event", &[])
                            .map_err(|e| db_error(&self.context("read"), e))?
                            .get::<_, Option<i64>>(0)
                            .map(|seq| seq as u64),
                    };
                    (Some(events), last)
                }
            };
            tx.commit()
                .map_err(|e| db_error(&self.context("read"), e))?;
            Ok((Snapshot { lab, last_event }, events))
        })
    }

    fn parse(&self, rows: &[Row]) -> Result<XmlLab> {
        XmlLab::from_machines(rows.iter().map(|r| (r.name.as_str(), r.element.as_str())))
            .map_err(|e| self.corrupt(e))
    }

    /// The machines, and one look at their job locks, in one round trip:
    /// which locks are held, which claims were written before the server
    /// last started (within the host timeout after it), and whether this
    /// role may write the lab.
    fn snapshot(
        &self,
        client: &mut impl GenericClient,
        version: i32,
    ) -> Result<(Vec<Row>, Look, bool)> {
        let batch = format!(
            "{};
             SELECT classid, objid FROM pg_locks WHERE locktype = 'advisory' \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND classid IN ({LOCK_SPACE}::oid, {PLACE_SPACE}::oid) AND objsubid = 2 AND granted;
             SELECT name FROM mama_machine WHERE job_written < pg_postmaster_start_time() \
               AND now() < pg_postmaster_start_time() + make_interval(secs => {});
             SELECT has_table_privilege('mama_machine', 'UPDATE') \
               AND has_table_privilege('mama_event', 'INSERT');
             SELECT now() < pg_postmaster_start_time() + make_interval(secs => {1}), \
               pg_postmaster_start_time()::text;",
            schema::machines_query(version),
            self.host_timeout.as_secs()
        );
        let messages = client
            .simple_query(&batch)
            .map_err(|e| db_error(&self.context("read"), e))?;
        // The rows of each statement, in order.
        let mut results: Vec<Vec<postgres::SimpleQueryRow>> = vec![Vec::new()];
        for message in messages {
            match message {
                postgres::SimpleQueryMessage::Row(row) => {
                    if let Some(rows) = results.last_mut() {
                        rows.push(row);
                    }
                }
                postgres::SimpleQueryMessage::CommandComplete(_) => results.push(Vec::new()),
                _ => {}
            }
        }
        let unexpected = || {
            Error::Invalid(format!(
                "internal error: the lab at {} answered in an unexpected shape",
                self.url.shown
            ))
        };
        let [machines, held, reattaching, may_write, restarted, ..] = results.as_slice() else {
            return Err(unexpected());
        };
        let text = |row: &postgres::SimpleQueryRow, i: usize| -> Result<String> {
            row.get(i).map(str::to_string).ok_or_else(unexpected)
        };
        let rows = machines
            .iter()
            .map(|row| {
                Ok(Row {
                    id: text(row, 0)?.parse().map_err(|_| unexpected())?,
                    name: text(row, 1)?,
                    element: text(row, 2)?,
                })
            })
            .collect::<Result<Vec<Row>>>()?;
        let locks_in = |space: i32| -> HashSet<i32> {
            held.iter()
                .filter(|row| row.get(0) == Some(space.to_string().as_str()))
                .filter_map(|row| row.get(1)?.parse::<i64>().ok())
                .filter_map(|id| i32::try_from(id).ok())
                .collect()
        };
        let mut look = Look {
            ids: rows.iter().map(|r| (r.name.clone(), r.id)).collect(),
            held: locks_in(LOCK_SPACE),
            places: locks_in(PLACE_SPACE),
            restarted: false,
            epoch: String::new(),
            reattaching: reattaching
                .iter()
                .filter_map(|row| row.get(0).map(str::to_string))
                .collect(),
        };
        let may_write = may_write.first().and_then(|row| row.get(0)) == Some("t");
        look.restarted = restarted.first().and_then(|row| row.get(0)) == Some("t");
        look.epoch = restarted
            .first()
            .and_then(|row| row.get(1))
            .unwrap_or_default()
            .to_string();
        Ok((rows, look, may_write))
    }

    fn events(&self, client: &mut impl GenericClient, wanted: Wanted<'_>) -> Result<Vec<Event>> {
        // Cast and defaulted here, so that a table someone altered gives an
        // error, never a value of the wrong type.
        const COLUMNS: &str = "seq::int8, coalesce(time, 0)::int8, coalesce(machine, '')::text, \
             coalesce(event, '')::text, job::text, pid::int8, \
             coalesce(\"user\", '')::text, coalesce(host, '')::text, detail::text";
        let rows = match wanted {
            Wanted::After(after) => {
                let after = after.map_or(0, |seq| i64::try_from(seq).unwrap_or(i64::MAX));
                client.query(
                    &format!("SELECT {COLUMNS} FROM mama_event WHERE seq > $1 ORDER BY seq"),
                    &[&after],
                )
            }
            Wanted::Recent(machine, count) => {
                let count = i64::try_from(count).unwrap_or(i64::MAX);
                client.query(
                    &format!(
                        "SELECT * FROM (SELECT {COLUMNS} FROM mama_event WHERE machine = $1 \
                         ORDER BY seq DESC LIMIT $2) newest ORDER BY 1"
                    ),
                    &[&machine, &count],
                )
            }
        };
        rows.map_err(|e| db_error(&self.context("read the history of"), e))?
            .into_iter()
            .map(|row| {
                let kind: String = row.get(3);
                let event = serde_json::from_value::<Kind>(serde_json::Value::String(kind.clone()))
                    .map_err(|_| {
                        Error::Invalid(format!(
                            "the history of the lab at {} holds an event of unknown kind '{kind}'",
                            self.url.shown
                        ))
                    })?;
                Ok(Event {
                    seq: row.get::<_, i64>(0) as u64,
                    time: row.get(1),
                    machine: row.get(2),
                    event,
                    job: row.get(4),
                    pid: row
                        .get::<_, Option<i64>>(5)
                        .and_then(|p| u32::try_from(p).ok()),
                    user: row.get(6),
                    host: row.get(7),
                    detail: row.get(8),
                })
            })
            .collect()
    }

    /// Takes the lab's lock for the transaction, as patient as the store is.
    fn lab_lock(&self, client: &mut impl GenericClient) -> Result<()> {
        let started = Instant::now();
        let give_up = self.patience.give_up_at();
        if let Some(at) = give_up {
            let ms = at.saturating_duration_since(started).as_millis().max(1);
            client
                .batch_execute(&format!("SET LOCAL lock_timeout = {ms}"))
                .map_err(|e| db_error(&self.context("lock"), e))?;
        }
        match client.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&LOCK_SPACE, &LAB_LOCK],
        ) {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                return Err(Error::Busy(if self.patience.no_wait {
                    format!(
                        "the lab's lock at {} is held; not waiting (--no-wait)",
                        self.url.shown
                    )
                } else {
                    format!(
                        "gave up waiting for the lab's lock at {} after {}",
                        self.url.shown,
                        crate::text::seconds(started.elapsed())
                    )
                }));
            }
            Err(e) => return Err(db_error(&self.context("lock"), e)),
        }
        if give_up.is_some() {
            client
                .batch_execute("SET LOCAL lock_timeout = 0")
                .map_err(|e| db_error(&self.context("lock"), e))?;
        }
        Ok(())
    }

    /// Runs one transaction under the lab's lock: `change` gets the current
    /// lab; its changes and events are stored, all or none, when it returns
    /// `Ok` having changed anything. The schema is created or migrated
    /// first. A role that may not write is [`Error::ReadOnly`] before
    /// `change` runs.
    pub fn update<T>(&self, change: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
        self.transaction(false, |_, lab| change(lab))
    }

    /// [`PgStore::update`] that creates the lab (the schema) in a database
    /// that has none; every other transaction there is [`Error::NoLab`],
    /// and creates nothing.
    pub fn update_or_create<T>(&self, change: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
        self.transaction(true, |_, lab| change(lab))
    }

    /// The error for a database without a lab.
    fn no_lab(&self) -> Error {
        Error::NoLab(format!("the database {}", self.url.shown))
    }

    /// [`PgStore::update`], with the transaction's session open to `change`
    /// too (for the document around the machines).
    fn transaction<T>(
        &self,
        create: bool,
        change: impl FnOnce(&mut postgres::Transaction<'_>, &mut Lab) -> Result<T>,
    ) -> Result<T> {
        // A session found lost before `change` ran (a server restart since
        // its last use) is opened anew and the transaction begun again:
        // nothing was written or taken yet.
        let mut change = Some(change);
        for _ in 0..2 {
            let done = self.with_main(|client| {
                let mut tx = match client.transaction() {
                    Ok(tx) => tx,
                    Err(e) if is_connection_loss(&e) => return Ok(None),
                    Err(e) => return Err(db_error(&self.context("write"), e)),
                };
                self.lab_lock(&mut tx)?;
                if !schema::ensure(&mut tx, &self.url.shown, create)? {
                    return Err(self.no_lab());
                }
                let (rows, look, may_write) = self.snapshot(&mut tx, schema::VERSION)?;
                if !may_write {
                    return Err(Error::ReadOnly {
                        context: self.context("write"),
                        source: std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            "this role may only read it",
                        ),
                    });
                }
                *Self::locked(&self.look) = Some(look);
                let mut doc = self.parse(&rows)?;
                let mut lab = doc.model();
                let change = change.take().ok_or_else(|| {
                    Error::Invalid("internal error: a transaction ran twice".into())
                })?;
                let value = change(&mut tx, &mut lab)?;
                if lab.is_changed() {
                    self.store_changes(&mut tx, &mut doc, lab.changes())?;
                    self.store_events(&mut tx, lab.take_events())?;
                    tx.commit()
                        .map_err(|e| db_error(&self.context("write"), e))?;
                }
                Ok(Some(value))
            })?;
            match done {
                Some(value) => return Ok(value),
                None => self.lost.store(true, std::sync::atomic::Ordering::SeqCst),
            }
        }
        Err(Error::Database {
            context: self.context("write"),
            message: "the connection was lost again as soon as it was opened".into(),
        })
    }

    /// Replays `changes` onto the machines' elements and stores each
    /// changed machine once: deleted, updated or inserted.
    fn store_changes(
        &self,
        tx: &mut postgres::Transaction<'_>,
        doc: &mut XmlLab,
        changes: &[Change],
    ) -> Result<()> {
        doc.apply(changes)?;
        let mut deleted: Vec<&str> = Vec::new();
        let mut updated: Vec<&str> = Vec::new();
        let mut inserted: Vec<&str> = Vec::new();
        let mut job_written: HashSet<&str> = HashSet::new();
        for change in changes {
            match change {
                Change::Set { machine, field, .. } | Change::Unset { machine, field } => {
                    if field.is_job() {
                        job_written.insert(machine);
                    }
                    if !inserted.contains(&machine.as_str()) && !updated.contains(&machine.as_str())
                    {
                        updated.push(machine);
                    }
                }
                Change::Add(new) => inserted.push(&new.name),
                Change::AddElement { name, .. } => inserted.push(name),
                Change::Remove(name) => match inserted.iter().position(|n| n == name) {
                    Some(at) => {
                        inserted.remove(at);
                    }
                    None => {
                        updated.retain(|n| n != name);
                        deleted.push(name);
                    }
                },
            }
        }
        let write_error = |e| db_error(&self.context("write"), e);
        let element = |name: &str| -> Result<String> {
            let text = doc.machine_text(name).ok_or_else(|| {
                Error::Invalid(format!("internal error: machine '{name}' vanished"))
            })?;
            // Never store what could not be read back.
            XmlLab::from_machines([(name, text.as_str())]).map_err(|e| {
                Error::Invalid(format!(
                    "internal error: machine '{name}' would not read back ({e}); nothing was written"
                ))
            })?;
            Ok(text)
        };
        for name in deleted {
            tx.execute("DELETE FROM mama_machine WHERE name = $1", &[&name])
                .map_err(write_error)?;
        }
        for name in updated {
            // When its job was written, by the server's clock: a claim
            // written before the server restarted lost its session with it.
            let statement = if job_written.contains(name) {
                "UPDATE mama_machine SET element = $2, job_written = now() WHERE name = $1"
            } else {
                "UPDATE mama_machine SET element = $2 WHERE name = $1"
            };
            tx.execute(statement, &[&name, &element(name)?])
                .map_err(write_error)?;
        }
        if !inserted.is_empty() {
            let last: i64 = tx
                .query_one(
                    "SELECT coalesce(max(position), 0)::int8 FROM mama_machine",
                    &[],
                )
                .map_err(write_error)?
                .get(0);
            for (at, name) in (last + 1..).zip(inserted) {
                // A name the lab had before keeps its job lock's key.
                tx.execute(
                    "INSERT INTO mama_lock_key (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                    &[&name],
                )
                .map_err(write_error)?;
                tx.execute(
                    "INSERT INTO mama_machine (name, position, element) VALUES ($1, $2, $3)",
                    &[&name, &at, &element(name)?],
                )
                .map_err(write_error)?;
            }
        }
        Ok(())
    }

    /// Stores `events`, numbered after the last one committed. Not by the
    /// column's sequence: a number it hands out is gone even when the
    /// transaction is not committed (a writer killed, a server crash skips
    /// ahead), and the history is numbered 1, 2, 3... without gaps, as in a
    /// file lab. Writers hold the lab's lock, so the next number is theirs.
    fn store_events(&self, tx: &mut postgres::Transaction<'_>, events: Vec<Event>) -> Result<()> {
        for event in events {
            tx.execute(
                "INSERT INTO mama_event \
                 (seq, time, machine, event, job, pid, \"user\", host, detail) \
                 VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM mama_event), \
                 $1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &event.time,
                    &event.machine,
                    &event.event.as_str(),
                    &event.job,
                    &event.pid.map(i64::from),
                    &event.user,
                    &event.host,
                    &event.detail,
                ],
            )
            .map_err(|e| db_error(&self.context("write the history of"), e))?;
        }
        Ok(())
    }

    /// The lab in upstream's format: the stored document with the machines
    /// in it.
    pub fn export(&self) -> Result<String> {
        self.with_main(|client| {
            let mut tx = self.snapshot_transaction(client)?;
            let Some(version) = schema::version(&mut tx, &self.url.shown)? else {
                return Err(self.no_lab());
            };
            let (rows, _, _) = self.snapshot(&mut tx, version)?;
            let skeleton = self.document(&mut tx)?;
            let doc = XmlLab::assemble(
                skeleton.as_deref(),
                rows.iter().map(|r| (r.name.as_str(), r.element.as_str())),
            )
            .map_err(|e| self.corrupt(e))?;
            Ok(doc.to_xml())
        })
    }

    fn document(&self, client: &mut impl GenericClient) -> Result<Option<String>> {
        Ok(client
            .query_opt("SELECT coalesce(document, '')::text FROM mama_lab", &[])
            .map_err(|e| db_error(&self.context("read"), e))?
            .map(|row| row.get(0)))
    }

    /// A transaction that also sets the document around the machines to
    /// `skeleton` where the lab has none yet, or where `replace` says
    /// (`import`).
    pub fn update_with_document<T>(
        &self,
        skeleton: &str,
        replace: bool,
        change: impl FnOnce(&mut Lab) -> Result<T>,
    ) -> Result<T> {
        self.transaction(true, |tx, lab| {
            let value = change(lab)?;
            let has = self.document(tx)?.is_some();
            if replace || !has {
                tx.execute(
                    "INSERT INTO mama_lab (document) VALUES ($1) \
                     ON CONFLICT (singleton) DO UPDATE SET document = EXCLUDED.document",
                    &[&skeleton],
                )
                .map_err(|e| db_error(&self.context("write"), e))?;
            }
            Ok(value)
        })
    }

    /// What the last read saw of the locks; a fresh look when there was
    /// none.
    fn look(&self) -> Look {
        if let Some(look) = Self::locked(&self.look).clone() {
            return look;
        }
        let _ = self.read();
        Self::locked(&self.look).clone().unwrap_or_default()
    }

    /// The row id behind `machine`'s job lock.
    fn key(&self, machine: &str) -> Result<i32> {
        self.look()
            .ids
            .get(machine)
            .copied()
            .ok_or_else(|| Error::UnknownMachine(machine.to_string()))
    }

    /// Starts opening the session that the next job lock will be taken
    /// in, on a thread of its own, so that it is ready when the claim
    /// transaction wants it.
    pub fn prepare(&self) {
        let mut spare = Self::locked(&self.spare);
        if spare.is_none() {
            let (url, timeout) = (Arc::clone(&self.url), self.host_timeout);
            *spare = Some(Spare::Opening(std::thread::spawn(move || {
                connect(&url, timeout)
            })));
        }
    }

    /// A session for a job lock: the one [`PgStore::prepare`] opened, else
    /// a new one.
    fn job_session(&self) -> Result<Client> {
        let prepared = match Self::locked(&self.spare).take() {
            Some(Spare::Ready(client)) => Some(*client),
            Some(Spare::Opening(thread)) => thread.join().ok().and_then(Result::ok),
            None => None,
        };
        match prepared {
            Some(client) if !client.is_closed() => Ok(client),
            _ => connect(&self.url, self.host_timeout),
        }
    }

    /// Takes `machine`'s job lock in a session of its own, which the claim
    /// keeps for the job's whole life.
    pub fn try_lock(&self, machine: &str) -> Result<Option<JobLock>> {
        let key = self.key(machine)?;
        let mut session = self.job_session()?;
        let ask = |session: &mut Client| {
            session.query_one(
                "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()",
                &[&LOCK_SPACE, &key],
            )
        };
        let row = match ask(&mut session) {
            Ok(row) => row,
            // A session the server dropped (a restart): one new try, not a
            // patient one: the lab's lock is held meanwhile.
            Err(e) if session.is_closed() || is_connection_loss(&e) => {
                session = connect(&self.url, self.host_timeout)?;
                ask(&mut session).map_err(|e| db_error(&self.context("lock a machine of"), e))?
            }
            Err(e) => return Err(db_error(&self.context("lock a machine of"), e)),
        };
        let (taken, backend): (bool, i32) = (row.get(0), row.get(1));
        if !taken {
            // Kept for the next try.
            *Self::locked(&self.spare) = Some(Spare::Ready(Box::new(session)));
            return Ok(None);
        }
        let store = self.clone();
        Ok(Some(JobLock::new(Box::new(PgJobLock::new(
            session,
            backend,
            Arc::clone(&self.url),
            self.host_timeout,
            machine,
            key,
            Arc::new(move |channel: &str| store.notify(channel)),
        )))))
    }

    /// Sleeps on `machine`'s job lock, in the server, until its holder lets
    /// go or its session ends, at most `within`.
    pub fn wait_unlocked(&self, machine: &str, within: Duration) -> Result<bool> {
        let key = self.key(machine)?;
        self.wait_on(LOCK_SPACE, key, within)
    }

    /// Sleeps on the advisory lock `(space, key)` until it is free, at most
    /// `within`; whether it was.
    fn wait_on(&self, space: i32, key: i32, within: Duration) -> Result<bool> {
        let ms = within.as_millis().max(1);
        let outcome = self.with_main(|client| {
            let waited = client
                .batch_execute(&format!("SET lock_timeout = {ms}"))
                .and_then(|()| {
                    client.execute(
                        "SELECT pg_advisory_lock($1, $2), pg_advisory_unlock($1, $2)",
                        &[&space, &key],
                    )
                });
            // Never leave the session's lock timeout set for later waits.
            let reset = client.batch_execute("SET lock_timeout = 0");
            Ok((waited, reset))
        })?;
        match outcome {
            (Ok(_), Ok(())) => Ok(true),
            (Err(e), Ok(())) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(false),
            // The server dropped the session (a restart): look again, on a
            // new one.
            (Err(e), _) | (Ok(_), Err(e)) if is_connection_loss(&e) => {
                self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(false)
            }
            (Err(e), _) | (Ok(_), Err(e)) => Err(db_error(&self.context("wait on"), e)),
        }
    }

    pub fn held(&self, machine: &str) -> bool {
        self.look().held(machine)
    }

    pub fn held_job_locks(&self) -> HashSet<String> {
        let look = self.look();
        look.ids
            .iter()
            .filter(|(_, id)| look.held.contains(id))
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn reattaching(&self, machine: &str) -> bool {
        self.look().reattaching.contains(machine)
    }

    /// Takes a new place lock in the main session, which lives as long as
    /// the waiter waits; its key is the token.
    pub fn hold_place(&self) -> Result<i32> {
        self.with_main(|client| {
            for _ in 0..16 {
                let key: i32 = client
                    .query_one("SELECT (random() * 2147483646)::int4 + 1", &[])
                    .map_err(|e| db_error(&self.context("wait in"), e))?
                    .get(0);
                let taken: bool = client
                    .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&PLACE_SPACE, &key])
                    .map_err(|e| db_error(&self.context("wait in"), e))?
                    .get(0);
                if taken {
                    Self::locked(&self.places).insert(key);
                    return Ok(key);
                }
            }
            Err(Error::Invalid(
                "cannot make a place lock: every token tried was taken".into(),
            ))
        })
    }

    /// Whether the place lock of `waiter` is held. A place taken before
    /// the server last started counts as held for the host timeout after
    /// the start, while its waiter takes it again.
    pub fn place_held(&self, waiter: &crate::model::queue::Waiter) -> bool {
        let look = self.look();
        let before_restart = waiter.epoch.as_ref().is_some_and(|e| *e != look.epoch);
        (look.restarted && before_restart)
            || waiter
                .token
                .parse::<i32>()
                .is_ok_and(|key| look.places.contains(&key))
    }

    /// When the server started, as the last look saw it.
    pub fn epoch(&self) -> String {
        self.look().epoch
    }

    /// Sleeps on the place lock `token` in the server until it is let go,
    /// at most `within`.
    pub fn wait_place(&self, token: &str, within: Duration) -> Result<bool> {
        let Ok(key) = token.parse::<i32>() else {
            return Ok(true);
        };
        self.wait_on(PLACE_SPACE, key, within)
    }

    /// Lets go of the place lock `key`.
    pub fn let_go_place(&self, key: i32) {
        Self::locked(&self.places).remove(&key);
        let _ = self.with_main(|client| {
            client
                .execute("SELECT pg_advisory_unlock($1, $2)", &[&PLACE_SPACE, &key])
                .map_err(|e| db_error(&self.context("leave"), e))
        });
    }

    /// Sends an empty notification on `channel` (to wake a claim's keeper).
    pub fn notify(&self, channel: &str) {
        let _ = self.with_main(|client| {
            client
                .execute("SELECT pg_notify($1, '')", &[&channel])
                .map_err(|e| db_error(&self.context("notify"), e))
        });
    }
}

/// A place lock of a database lab's, held: the session advisory lock of
/// the lab's own session, let go through it.
struct PgPlace {
    store: PgStore,
    key: i32,
}

impl Drop for PgPlace {
    fn drop(&mut self) {
        self.store.let_go_place(self.key);
    }
}

impl Backend for PgStore {
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
    ) -> Result<()> {
        match kind {
            Transaction::Update => self.update(change),
            Transaction::Create => self.update_or_create(change),
            Transaction::Import { skeleton, replace } => {
                self.update_with_document(skeleton, replace, change)
            }
        }
    }

    fn recent_events(&self, machine: &str, count: usize) -> Result<(Snapshot, Vec<Event>)> {
        PgStore::recent_events(self, machine, count)
    }

    fn read_events(&self, after: Option<u64>) -> Result<(Snapshot, Vec<Event>)> {
        PgStore::read_events(self, after)
    }
}

/// The job locks of a database lab: session advisory locks, one a
/// machine, taken in a session of the run's own; and the waiters' place
/// locks, in the lab's session.
impl JobLocks for PgStore {
    fn try_lock(&self, machine: &str) -> Result<Option<JobLock>> {
        PgStore::try_lock(self, machine)
    }

    fn wait_unlocked(&self, machine: &str, within: Duration) -> Result<bool> {
        PgStore::wait_unlocked(self, machine, within)
    }

    fn held(&self, machine: &str) -> bool {
        PgStore::held(self, machine)
    }

    /// A database session cannot be inherited: never, here.
    fn inherited(&self, _machine: &str) -> bool {
        false
    }

    fn held_job_locks(&self) -> HeldJobLocks {
        let held = PgStore::held_job_locks(self);
        HeldJobLocks::new(move |machine| held.contains(machine))
    }

    fn hold_place(&self) -> Result<PlaceLock> {
        let key = PgStore::hold_place(self)?;
        Ok(PlaceLock::new(
            key.to_string(),
            Box::new(PgPlace {
                store: self.clone(),
                key,
            }),
        ))
    }

    fn place_held(&self, waiter: &Waiter) -> bool {
        PgStore::place_held(self, waiter)
    }

    fn epoch(&self) -> Option<String> {
        Some(PgStore::epoch(self))
    }

    fn wait_place(&self, token: &str, within: Duration) -> Result<bool> {
        PgStore::wait_place(self, token, within)
    }

    fn prepare(&self) {
        PgStore::prepare(self)
    }

    fn across_hosts(&self) -> bool {
        true
    }

    fn reattaching(&self, machine: &str) -> bool {
        PgStore::reattaching(self, machine)
    }
}
