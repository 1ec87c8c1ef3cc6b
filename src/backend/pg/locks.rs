//! A database lab's locks: the machines' job locks (session advisory
//! locks taken in a session of the run's own) and the waiters' place locks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use postgres::Client;
use postgres::error::SqlState;
use postgres::types::Type;

use super::lease::PgJobLock;
use super::{LOCK_SPACE, PLACE_SPACE, POWER_SPACE, PgStore, Spare};
use super::{connect, db_error, is_connection_loss};
use crate::backend::{HeldJobLocks, JobLock, JobLocks, PlaceLock, PowerLock};
use crate::error::{Error, Result};
use crate::model::queue::Waiter;

impl PgStore {
    /// The row id behind `machine`'s job lock.
    pub(super) fn key(&self, machine: &str) -> Result<i32> {
        self.look()
            .ids
            .get(machine)
            .copied()
            .ok_or_else(|| Error::unknown_machine(machine, []))
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
    pub(super) fn job_session(&self) -> Result<Client> {
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
            // Typed: one round trip, nothing to prepare.
            session.query_typed_one(
                "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()",
                &[(&LOCK_SPACE, Type::INT4), (&key, Type::INT4)],
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
        Ok(Some(JobLock::new(Box::new(PgJobLock::new(
            session,
            backend,
            Arc::clone(&self.url),
            self.host_timeout,
            machine,
            key,
            self.clone(),
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
    pub(super) fn wait_on(&self, space: i32, key: i32, within: Duration) -> Result<bool> {
        let ms = within.as_millis().max(1);
        let outcome = self.with_main(|client| {
            let waited = client
                .batch_execute(&format!("SET lock_timeout = {ms}"))
                .and_then(|()| {
                    client.query_typed(
                        "SELECT pg_advisory_lock($1, $2), pg_advisory_unlock($1, $2)",
                        &[(&space, Type::INT4), (&key, Type::INT4)],
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
                .query_typed("SELECT pg_notify($1, '')", &[(&channel, Type::TEXT)])
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

    /// The session advisory lock `(POWER_SPACE, key)`, in a session of
    /// its own held while the sequence runs.
    fn power_lock(&self, machine: &str, waiting: &mut dyn FnMut()) -> Result<PowerLock> {
        let key = self.key(machine)?;
        let mut session = connect(&self.url, self.host_timeout)?;
        let taken: bool = session
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&POWER_SPACE, &key])
            .map_err(|e| db_error(&self.context("lock the power of a machine of"), e))?
            .get(0);
        if !taken {
            waiting();
            session
                .execute("SELECT pg_advisory_lock($1, $2)", &[&POWER_SPACE, &key])
                .map_err(|e| db_error(&self.context("lock the power of a machine of"), e))?;
        }
        Ok(PowerLock::new(Box::new(session)))
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
