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

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;
use postgres::types::Type;
use postgres::fallible_iterator::FallibleIterator;

use super::{LAB_LOCK, LOCK_SPACE, connect, db_error};
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
/// How long the keeper waits for a word from the server, or its session's
/// end, before it looks whether it is told to stop.
const LISTEN: Duration = Duration::from_millis(100);

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
    /// Notifies a channel through another session of the lab's.
    wake: Arc<dyn Fn(&str) + Send + Sync>,
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
        wake: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> PgJobLock {
        PgJobLock {
            wake,
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
    /// `wake` notifies the keeper's channel (through another session),
    /// so it stops at once.
    pub fn stop_keeping(&mut self, wake: Option<&dyn Fn(&str)>) {
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.stop.send(());
            if let Some(wake) = wake {
                wake(&self.channel);
            }
            if let Ok(Some(held)) = keeper.thread.join() {
                self.session = Some(held.session);
                self.key = held.key;
            }
        }
    }

    fn let_go(&mut self) {
        self.stop_keeping(None);
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
        let wake = Arc::clone(&self.wake);
        PgJobLock::stop_keeping(self, Some(&*wake));
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
struct Watch {
    channel: String,
    url: Arc<DbUrl>,
    host_timeout: Duration,
    machine: String,
    job: JobRecord,
    lost: Arc<Lease>,
}

impl Watch {
    /// Watches the session until told to stop; gives back the session (and
    /// the key its lock is under) that holds the lock, if one still does.
    fn run(self, held: Held, stopped: &mpsc::Receiver<()>) -> Option<Held> {
        let mut lost_backend = held.backend;
        let mut session = Some(held);
        let mut last_ok = Instant::now();
        let mut next_ping = Instant::now() + PING;
        loop {
            match stopped.try_recv() {
                Ok(()) | Err(mpsc::TryRecvError::Disconnected) => return session,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            // Listening returns at once when the server ends the session.
            let alive = session.as_mut().is_some_and(|held| {
                let _ = held.session.notifications().timeout_iter(LISTEN).next();
                !held.session.is_closed()
            });
            if alive && Instant::now() < next_ping {
                continue;
            }
            if alive && let Some(held) = session.as_mut() {
                self.lost.asking();
                let answered = held.session.simple_query("SELECT 1").is_ok();
                if answered {
                    self.lost.answered();
                    last_ok = Instant::now();
                    next_ping = last_ok + PING;
                    continue;
                }
            }
            if let Some(held) = session.take() {
                lost_backend = held.backend;
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
            // times a second.
            let mut pause = Duration::ZERO;
            let why = loop {
                match stopped.recv_timeout(pause) {
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return None,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                pause = Duration::from_millis(200);
                match self.reattach(lost_backend) {
                    Ok(Some(mut held)) => {
                        let _ = held
                            .session
                            .batch_execute(&format!("LISTEN {}", self.channel));
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

    /// A new session that holds the machine's job lock again, if the
    /// machine's record is still this run's claim; `None` if it is not.
    /// `lost` is the server process of the session that held it.
    fn reattach(&self, lost: i32) -> Result<Option<Held>> {
        let mut client = connect(&self.url, self.host_timeout)?;
        let context = format!("cannot reattach to the lab at {}", self.url.shown);
        let mut tx = client.transaction().map_err(|e| db_error(&context, e))?;
        tx.batch_execute("SET LOCAL lock_timeout = 5000")
            .map_err(|e| db_error(&context, e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&LOCK_SPACE, &LAB_LOCK],
        )
        .map_err(|e| db_error(&context, e))?;
        let Some(row) = tx
            .query_opt(
                "SELECT k.key::int4, coalesce(m.element, '')::text FROM mama_machine m \
                 JOIN mama_lock_key k USING (name) WHERE m.name = $1",
                &[&self.machine],
            )
            .map_err(|e| db_error(&context, e))?
        else {
            return Ok(None);
        };
        let (key, element): (i32, String) = (row.get(0), row.get(1));
        let lab = XmlLab::from_machines([(self.machine.as_str(), element.as_str())])
            .map_err(|e| Error::Invalid(format!("{context}: {e}")))?
            .model();
        let ours = lab
            .machine(&self.machine)
            .and_then(|m| m.job())
            .is_some_and(|job| {
                job.pid == self.job.pid
                    && job.timestamp == self.job.timestamp
                    && job.origin == self.job.origin
                    && job.host == self.job.host
            });
        if !ours {
            return Ok(None);
        }
        // The lost session may hold the lock still, the server not having
        // noticed it is gone: end it, and take the lock when it lets go.
        tx.query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2 \
             AND granted AND pid = $3",
            &[&i64::from(LOCK_SPACE), &i64::from(key), &lost],
        )
        .map_err(|e| db_error(&context, e))?;
        let row = tx
            .query_one(
                "SELECT pg_advisory_lock($1, $2), pg_backend_pid()",
                &[&LOCK_SPACE, &key],
            )
            .map_err(|e| db_error(&context, e))?;
        let backend: i32 = row.get(1);
        tx.commit().map_err(|e| db_error(&context, e))?;
        Ok(Some(Held {
            session: client,
            backend,
            key,
        }))
    }
}
