//! A machine's job lock in a database lab: a session of the running
//! `mama run`'s own that holds the machine's advisory lock for the job's
//! whole life, and the keeper that watches it.
//!
//! The keeper asks the server every second whether the session lives. A
//! session lost (a server restart, a network failure the kernel gave up
//! on) is opened again and the lock re-taken, but only when the machine's
//! record is still this run's claim: the same PID, timestamp and origin
//! (boot, PID namespace, start of the claimer), which no other claim can
//! have. A lock still held by the lost session itself (the server has not
//! noticed yet that it is gone) is taken from it: that session is ended
//! first, since it is provably this run's (its backend PID is known). If
//! the record was cleared or taken over, or the lab cannot be
//! reached again within the host timeout (by then the server has freed the
//! lock and another host may claim the machine), the claim is lost: the
//! keeper says so and raises the flag the supervisor watches, which stops
//! the job. A run never goes on without its claim.
//!
//! A session the server ended itself (`pg_terminate_backend`, a backend's
//! crash) may have woken a waiter on another host, which takes the
//! machine within milliseconds. So the keeper first glances, every 2 ms,
//! through the run's main session, already open, at whether the claim
//! still stands (see `Watch::glance`): the record no longer this run's,
//! or another mama in the middle of claiming the machine (its claim
//! transaction holds the lab's lock, its new session the machine's job
//! lock), stops the job at once, before that claim even commits. Only
//! after 30 ms of glances does it open a new session to re-attach (the
//! glances go on meanwhile): opened at once, it would take the server's
//! time from the claim it should see. A lock merely held by another
//! session decides nothing: waiters take it for an instant when it is let
//! go, and look at it while a holder re-attaches, outside any
//! transaction.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use postgres::{Client, SimpleQueryMessage};

use super::schema::quote_literal;
use super::{LAB_LOCK, LOCK_SPACE, PgStore, connect, db_error};
use crate::backend::Lease;
use crate::error::{Error, Result};
use crate::format::doc::XmlLab;
use crate::model::JobRecord;
use crate::settings::url::DbUrl;

/// How often the supervisor of a job whose claim is kept by a lease looks
/// at it.
pub const LEASE_LOOK: Duration = Duration::from_millis(250);

/// How often the keeper asks whether the session lives (the session's end
/// itself, as when the server ends it, is noticed at once).
const PING: Duration = Duration::from_secs(1);
/// What a re-attaching session calls itself (`application_name`) until
/// its keeper has it back: never `mama PID on HOST`, so that a glance
/// (see `Watch::glance`) never takes it and another session for one
/// mama's claim, as it would where another mama's sessions bear this
/// process's name (PID namespaces under one host name) or where the lab's
/// URL names every session alike. A quoted SQL literal.
const REATTACHING: &str = "'mama re-attaching'";
/// How long the keeper waits for a word from the server, or its session's
/// end, before it looks whether it is told to stop.
const LISTEN: Duration = Duration::from_millis(100);
/// How often the keeper glances at the claim after the server ended its
/// session, for how long at most, and for how long before it opens a new
/// session too: a waiter the end woke takes the machine within
/// milliseconds.
const GLANCE: Duration = Duration::from_millis(2);
const GLANCE_FOR: Duration = Duration::from_millis(250);
const GLANCE_ALONE: Duration = Duration::from_millis(30);

/// A held job lock.
pub struct PgJobLock {
    session: Option<Client>,
    /// The server process of the session, to end it if it is lost.
    backend: i32,
    url: Arc<DbUrl>,
    host_timeout: Duration,
    machine: String,
    key: i32,
    keeper: Option<Keeper>,
    /// The channel the keeper listens on: a notification there wakes it
    /// at once (to stop it without waiting out its listening).
    channel: String,
    /// The lab, whose main session (another than the lock's) notifies the
    /// keeper's channel and lets the keeper glance at the machine's record.
    lab: PgStore,
}

impl std::fmt::Debug for PgJobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgJobLock({} in {})", self.machine, self.url.shown)
    }
}

struct Keeper {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Option<Held>>,
}

/// A session that holds a machine's job lock: the session, its server
/// process, and the lock's key.
struct Held {
    session: Client,
    backend: i32,
    key: i32,
}

impl PgJobLock {
    pub fn new(
        session: Client,
        backend: i32,
        url: Arc<DbUrl>,
        host_timeout: Duration,
        machine: &str,
        key: i32,
        lab: PgStore,
    ) -> PgJobLock {
        PgJobLock {
            lab,
            session: Some(session),
            backend,
            url,
            host_timeout,
            machine: machine.to_string(),
            key,
            keeper: None,
            channel: format!("mama_keeper_{backend}"),
        }
    }

    /// Starts keeping the lock for the claim `job` for as long as it runs;
    /// the lease returned tells the job's supervisor when it is lost.
    pub fn keep(&mut self, job: &JobRecord) -> Arc<Lease> {
        let lost = Arc::new(Lease::new(self.host_timeout, PING, LEASE_LOOK));
        let Some(session) = self.session.take() else {
            lost.lose();
            return lost;
        };
        let (stop, stopped) = mpsc::channel();
        let mut session = session;
        let _ = session.batch_execute(&format!("LISTEN {}", self.channel));
        let watch = Watch {
            channel: self.channel.clone(),
            url: Arc::clone(&self.url),
            host_timeout: self.host_timeout,
            machine: self.machine.clone(),
            job: job.clone(),
            lost: Arc::clone(&lost),
            lab: self.lab.clone(),
        };
        let held = Held {
            session,
            backend: self.backend,
            key: self.key,
        };
        let thread = std::thread::spawn(move || watch.run(held, &stopped));
        self.keeper = Some(Keeper { stop, thread });
        lost
    }

    /// Lets go of the lock: the session unlocks it and ends.
    pub fn close(mut self) {
        self.let_go();
    }

    /// Stops the keeper, taking back the session that holds the lock (if
    /// one still does). Done before the release transaction: a keeper in
    /// the middle of re-attaching may take seconds to stop, and the lab
    /// must not stay locked meanwhile.
    /// With `wake`, the keeper's channel is notified (through the lab's
    /// main session), so it stops at once.
    pub fn stop_keeping(&mut self, wake: bool) {
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.stop.send(());
            if wake {
                self.lab.notify(&self.channel);
            }
            if let Ok(Some(held)) = keeper.thread.join() {
                self.session = Some(held.session);
                self.key = held.key;
            }
        }
    }

    fn let_go(&mut self) {
        self.stop_keeping(false);
        if let Some(mut session) = self.session.take() {
            let _ = session.query_typed(
                "SELECT pg_advisory_unlock($1, $2)",
                &[(&LOCK_SPACE, Type::INT4), (&self.key, Type::INT4)],
            );
        }
    }
}

/// A job lock of a database lab's: a session advisory lock, kept by a
/// keeper thread while the job runs.
impl crate::backend::HeldJob for PgJobLock {
    fn keep(&mut self, job: &JobRecord) -> Option<Arc<Lease>> {
        Some(PgJobLock::keep(self, job))
    }

    fn stop_keeping(&mut self) {
        PgJobLock::stop_keeping(self, true);
    }

    fn close(self: Box<Self>) {
        PgJobLock::close(*self);
    }
}

impl Drop for PgJobLock {
    fn drop(&mut self) {
        self.let_go();
    }
}

/// What the keeper needs to keep a claim.
#[derive(Clone)]
struct Watch {
    channel: String,
    url: Arc<DbUrl>,
    host_timeout: Duration,
    machine: String,
    job: JobRecord,
    lost: Arc<Lease>,
    lab: PgStore,
}

impl Watch {
    /// Watches the session until told to stop; gives back the session (and
    /// the key its lock is under) that holds the lock, if one still does.
    fn run(self, held: Held, stopped: &mpsc::Receiver<()>) -> Option<Held> {
        let (mut lost_backend, mut lost_key) = (held.backend, held.key);
        let mut session = Some(held);
        let mut last_ok = Instant::now();
        let mut next_ping = Instant::now() + PING;
        // A first glance readies the main session's server process for the
        // glances that count (its first look at the lock tables takes
        // milliseconds); tried again at each listen while another thread
        // uses the session.
        let mut ready = false;
        loop {
            if !ready {
                ready = self.glance(lost_key, lost_backend).is_some();
            }
            match stopped.try_recv() {
                Ok(()) | Err(mpsc::TryRecvError::Disconnected) => return session,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            // Listening returns at once when the server ends the session,
            // and says so: the server is up then, and answers at once.
            let mut ended_by_server = false;
            let alive = session.as_mut().is_some_and(|held| {
                if let Err(e) = held.session.notifications().timeout_iter(LISTEN).next() {
                    ended_by_server = e.as_db_error().is_some();
                }
                !held.session.is_closed()
            });
            if alive && Instant::now() < next_ping {
                continue;
            }
            if alive && let Some(held) = session.as_mut() {
                self.lost.asking();
                match held.session.simple_query("SELECT 1") {
                    Ok(_) => {
                        self.lost.answered();
                        last_ok = Instant::now();
                        next_ping = last_ok + PING;
                        continue;
                    }
                    Err(e) => ended_by_server = e.as_db_error().is_some(),
                }
            }
            if let Some(held) = session.take() {
                (lost_backend, lost_key) = (held.backend, held.key);
            }
            say!(
                "mama: lost the session that holds the claim on {} in the lab at {}; \
                 reconnecting",
                self.machine,
                self.url.shown
            );
            // Silent from now on, if it was not yet: the supervisor stops
            // the job if the silence lasts.
            if self.lost.silence().is_zero() {
                self.lost.asking();
            }
            let give_up = last_ok + self.host_timeout;
            // The first look is at once: a session ended by the server
            // (`pg_terminate_backend`) may have let another host take the
            // machine, and the job must stop without delay; then five
            // times a second. Glances at the record go with it while the
            // server is known to answer (it said it ended the session).
            let mut pause = Duration::ZERO;
            let mut glancing = ended_by_server;
            let why = loop {
                match stopped.recv_timeout(pause) {
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return None,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                pause = Duration::from_millis(200);
                match self.try_reattach(&mut glancing, lost_key, lost_backend) {
                    Ok(Some(mut held)) => {
                        let _ = held.session.batch_execute(&format!(
                            "LISTEN {}; RESET application_name",
                            self.channel
                        ));
                        say!(
                            "mama: reconnected; the claim on {} is still this run's",
                            self.machine
                        );
                        session = Some(held);
                        self.lost.answered();
                        last_ok = Instant::now();
                        next_ping = last_ok + PING;
                        break None;
                    }
                    Ok(None) => {
                        break Some("its claim was cleared or taken over meanwhile".to_string());
                    }
                    Err(_) if Instant::now() < give_up => {}
                    Err(e) => {
                        break Some(format!(
                            "the lab could not be reached for {} s ({e}), and other hosts may \
                             now claim the machine",
                            self.host_timeout.as_secs()
                        ));
                    }
                }
            };
            if let Some(why) = why {
                say!(
                    "mama: LOST THE CLAIM on {}: {why}; stopping the job",
                    self.machine
                );
                self.lost.lose();
                // Wakes the supervisor, which waits for signals (all of
                // them are blocked in every thread of a running mama).
                // SAFETY: sends a signal to this process.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGCHLD);
                }
                let _ = stopped.recv();
                return None;
            }
        }
    }

    /// One try to re-attach (see [`Watch::reattach`]). With `glancing`,
    /// the keeper glances first (see [`Watch::glance`]), at once and then
    /// every [`GLANCE`] for up to [`GLANCE_FOR`], and makes the try on a
    /// thread of its own from [`GLANCE_ALONE`] on: a glance that finds the
    /// claim lost ends the try at once, without waiting for the new
    /// session or the lab's lock (the try then ends on its own, its
    /// session closed). `glancing` turns false when a glance cannot be
    /// made (the main session is busy, closed or lost). `key` is the job
    /// lock's key, `lost` the server process of the session that held it.
    fn try_reattach(&self, glancing: &mut bool, key: i32, lost: i32) -> Result<Option<Held>> {
        if !*glancing {
            return self.reattach(connect(&self.url, self.host_timeout)?, lost);
        }
        let (sender, tried) = mpsc::channel();
        let mut sender = Some(sender);
        let start = Instant::now();
        let until = start + GLANCE_FOR;
        while *glancing && Instant::now() < until {
            if start.elapsed() >= GLANCE_ALONE
                && let Some(sender) = sender.take()
            {
                let watch = self.clone();
                std::thread::spawn(move || {
                    let attempt = connect(&watch.url, watch.host_timeout)
                        .and_then(|client| watch.reattach(client, lost));
                    let _ = sender.send(attempt);
                });
            }
            match self.glance(key, lost) {
                Some(false) => return Ok(None),
                Some(true) => {}
                None => *glancing = false,
            }
            match tried.recv_timeout(GLANCE) {
                Ok(attempt) => return attempt,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if sender.is_some() {
            return self.reattach(connect(&self.url, self.host_timeout)?, lost);
        }
        tried.recv().unwrap_or_else(|_| {
            Err(Error::Invalid(
                "internal error: a try to re-attach ended without an outcome".into(),
            ))
        })
    }

    /// Whether the claim still stands, as a glance through the run's main
    /// session sees it at once (no new session, no lab's lock); `None`
    /// when it cannot be read at once. It is lost when the machine's
    /// record is no longer this run's claim (a record never becomes it
    /// again), and when another mama is claiming the machine: one process
    /// (the same `mama PID on HOST` session name, as mama names its
    /// sessions: a lab URL's `application_name` names every session of
    /// every mama alike, and proves nothing) holds the machine's job lock
    /// in one session and the lab's lock in another. That is a claim
    /// transaction which found the record free (it judged this run's claim
    /// stale, its lock free, and cleared it) and took the lock; its commit
    /// is milliseconds away. A waiter's instant on the lock, or its look at
    /// it while the holder re-attaches, is made outside any transaction.
    /// `lost` is the server process of the session that held the lock.
    fn glance(&self, key: i32, lost: i32) -> Option<bool> {
        let (element, claimed) = self.lab.with_main_at_once(|client| {
            let messages = client.simple_query(&format!(
                "SELECT (SELECT coalesce(m.element, '') FROM mama_machine m \
                   JOIN mama_lock_key k USING (name) WHERE k.key = {key}), \
                 EXISTS (SELECT 1 FROM pg_locks j, pg_locks l, \
                   LATERAL pg_stat_get_activity(j.pid) js, \
                   LATERAL pg_stat_get_activity(l.pid) ls \
                   WHERE j.locktype = 'advisory' AND j.granted AND j.objsubid = 2 \
                     AND j.classid = {LOCK_SPACE}::oid AND j.objid = {key}::oid \
                     AND j.pid <> {lost} \
                     AND j.database = (SELECT oid FROM pg_database \
                       WHERE datname = current_database()) \
                     AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
                     AND l.classid = {LOCK_SPACE}::oid AND l.objid = {LAB_LOCK}::oid \
                     AND l.database = j.database AND l.pid <> j.pid \
                     AND ls.application_name = js.application_name \
                     AND js.application_name ~ '^mama [0-9]+ on ')"
            ))?;
            Ok(messages.iter().find_map(|message| match message {
                SimpleQueryMessage::Row(row) => {
                    Some((row.get(0).map(str::to_string), row.get(1) == Some("t")))
                }
                _ => None,
            }))
        })??;
        match element {
            Some(element) if !claimed => self.ours(&element).ok(),
            _ => Some(false),
        }
    }

    /// Whether `element`, the machine's record, holds this run's claim.
    fn ours(&self, element: &str) -> Result<bool> {
        let lab = XmlLab::from_machines([(self.machine.as_str(), element)])
            .map_err(|e| {
                Error::Invalid(format!(
                    "cannot reattach to the lab at {}: {e}",
                    self.url.shown
                ))
            })?
            .model();
        Ok(lab
            .machine(&self.machine)
            .and_then(|m| m.job())
            .is_some_and(|job| {
                job.pid == self.job.pid
                    && job.timestamp == self.job.timestamp
                    && job.origin == self.job.origin
                    && job.host == self.job.host
            }))
    }

    /// Holds the machine's job lock again in `client`, a new session, if
    /// the machine's record is still this run's claim; `None` if it is
    /// not. `lost` is the server process of the session that held it.
    fn reattach(&self, mut client: Client, lost: i32) -> Result<Option<Held>> {
        let context = format!("cannot reattach to the lab at {}", self.url.shown);
        // One round trip up to the record, so that the answer comes the
        // instant the lab's lock is let go (a waiter's claim committed);
        // the transaction stays open for what follows.
        let messages = client
            .simple_query(&format!(
                "BEGIN; SET application_name = {REATTACHING}; SET LOCAL lock_timeout = 5000; \
                 SELECT pg_advisory_xact_lock({LOCK_SPACE}, {LAB_LOCK}); \
                 SELECT k.key::int4::text, coalesce(m.element, '') FROM mama_machine m \
                 JOIN mama_lock_key k USING (name) WHERE m.name = {}",
                quote_literal(&self.machine)
            ))
            .map_err(|e| db_error(&context, e))?;
        // The last statement's row, if any (the lock's row comes before).
        let Some(row) = messages
            .iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .nth(1)
        else {
            return Ok(None);
        };
        let (Some(key), Some(element)) = (row.get(0).and_then(|k| k.parse().ok()), row.get(1))
        else {
            return Err(Error::Invalid(format!(
                "{context}: the lab answered in an unexpected shape"
            )));
        };
        if !self.ours(element)? {
            return Ok(None);
        }
        // The lost session may hold the lock still, the server not having
        // noticed it is gone: end it, and take the lock when it lets go.
        client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2 \
             AND granted AND pid = $3",
                &[&i64::from(LOCK_SPACE), &i64::from(key), &lost],
            )
            .map_err(|e| db_error(&context, e))?;
        let row = client
            .query_one(
                "SELECT pg_advisory_lock($1, $2), pg_backend_pid()",
                &[&LOCK_SPACE, &key],
            )
            .map_err(|e| db_error(&context, e))?;
        let backend: i32 = row.get(1);
        client
            .batch_execute("COMMIT")
            .map_err(|e| db_error(&context, e))?;
        Ok(Some(Held {
            session: client,
            backend,
            key,
        }))
    }
}
