//! Writing a database lab: one transaction under the lab's lock, each
//! changed machine's row written once and each event as a row.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use postgres::GenericClient;
use postgres::error::SqlState;
use postgres::types::{ToSql, Type};

use super::{Kept, LAB_LOCK, LOCK_SPACE, PgStore, RowSeen};
use super::{db_error, is_connection_loss, schema};
use crate::error::{Error, Result};
use crate::format::doc::XmlLab;
use crate::model::event::Event;
use crate::model::setting::Retention;

/// A database lab's history is trimmed by the transaction whose events
/// reach a multiple of this number.
pub const PRUNE_EVERY: u64 = 256;

/// Whether `committed` (numbered, in order) reached a multiple of `every`.
fn crosses(committed: &[Event], every: u64) -> bool {
    match (committed.first(), committed.last()) {
        (Some(first), Some(last)) => first.seq.saturating_sub(1) / every != last.seq / every,
        _ => false,
    }
}
use crate::model::{Change, Lab};

/// How long a writer waits for the lab's lock before it says who holds it
/// (as a state file's writer does).
const TELL_HOLDER: std::time::Duration = std::time::Duration::from_secs(1);

/// A machine's row as an update left it: its number, new version
/// (`xmin`), place and name.
pub(super) struct Written {
    row: i64,
    version: String,
    place: i64,
    name: String,
}

impl PgStore {
    /// Readies a session, whose writer found the lab's lock held, for its
    /// transaction while it waits: the server plans (without running) the
    /// statements the transaction runs, so that their first-time costs in
    /// a new server process (building its caches of the tables, their
    /// indexes and statistics: a few milliseconds) are paid while another
    /// writer holds the lock, not once this one has it and others wait.
    /// Once a session, in a savepoint rolled back (the relations' locks
    /// its planning took go with it; the caches stay); a statement that
    /// fails (a database without a lab) ends the warming there. It never
    /// waits for a table's lock (a lock timeout of 1 ms, the savepoint's
    /// own): the holder may hold one (a migration's index, the history's
    /// new columns), and the writer's patience (`--no-wait`) counts only
    /// the lab's lock.
    fn warm(&self, client: &mut impl GenericClient) {
        use std::sync::atomic::Ordering;
        if self.warm.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(mut savepoint) = client.transaction() else {
            return;
        };
        let _ = savepoint.simple_query(&format!(
            "SET LOCAL lock_timeout = 1;
             EXPLAIN {machines};
             EXPLAIN SELECT classid, objid FROM pg_locks WHERE locktype = 'advisory' \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND objsubid = 2 AND granted;
             EXPLAIN SELECT document FROM mama_lab;
             EXPLAIN UPDATE mama_machine SET element = '', job_written = now() WHERE name = '';
             EXPLAIN INSERT INTO mama_event (seq, time, machine, event, \"user\", host) \
               VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM mama_event), 0, '', '', '', '');",
            machines = schema::machines_query(schema::VERSION)
        ));
        // Dropped: rolled back.
        drop(savepoint);
    }

    /// Takes the lab's lock for the transaction, as patient as the store is.
    pub(super) fn lab_lock(&self, client: &mut impl GenericClient) -> Result<()> {
        let started = Instant::now();
        let give_up = self.patience.give_up_at();
        if self.lab_lock_within(client, give_up)? {
            return Ok(());
        }
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

    /// Takes the lab's lock if it comes free within [`TELL_HOLDER`] (and
    /// before `give_up`); otherwise says who holds it, and leaves the
    /// waiting to [`PgStore::lab_lock`]. Whether it was taken.
    fn lab_lock_within(
        &self,
        client: &mut impl GenericClient,
        give_up: Option<Instant>,
    ) -> Result<bool> {
        let context = || self.context("lock");
        // Free, as it mostly is: one round trip (no statement to prepare).
        let free = client
            .simple_query(&format!(
                "SELECT pg_try_advisory_xact_lock({LOCK_SPACE}, {LAB_LOCK})"
            ))
            .map_err(|e| db_error(&context(), e))?
            .iter()
            .any(|message| match message {
                postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
                _ => false,
            });
        if free {
            return Ok(true);
        }
        self.warm(client);
        let patience = give_up.map(|at| at.saturating_duration_since(Instant::now()));
        if patience.is_some_and(|left| left <= TELL_HOLDER) {
            return Ok(false);
        }
        // In a savepoint: a lock wait that times out must not end the
        // transaction; the lock taken stays held until it ends.
        let mut attempt = client.transaction().map_err(|e| db_error(&context(), e))?;
        let taken = attempt
            .batch_execute(&format!(
                "SET LOCAL lock_timeout = {}",
                TELL_HOLDER.as_millis()
            ))
            .and_then(|()| {
                attempt.execute(
                    "SELECT pg_advisory_xact_lock($1, $2)",
                    &[&LOCK_SPACE, &LAB_LOCK],
                )
            });
        match taken {
            Ok(_) => {
                attempt
                    .batch_execute("SET LOCAL lock_timeout = 0")
                    .and_then(|()| attempt.commit())
                    .map_err(|e| db_error(&context(), e))?;
                Ok(true)
            }
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                drop(attempt);
                say!(
                    "mama: waiting for the lab's lock at {}, {}",
                    self.url.shown,
                    self.lab_lock_holder(client)
                );
                Ok(false)
            }
            Err(e) => Err(db_error(&context(), e)),
        }
    }

    /// Who holds the lab's lock, in words: its server session's PID, its
    /// `application_name` (`mama PID on HOST` for mama's), role, client
    /// address and state.
    fn lab_lock_holder(&self, client: &mut impl GenericClient) -> String {
        let row = client.query_opt(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), \
             coalesce(host(a.client_addr), 'the local socket'), coalesce(a.state, ''), \
             coalesce(extract(epoch FROM now() - a.xact_start)::float8, 0) \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::bigint::oid \
             AND l.objid = $2::bigint::oid AND l.objsubid = 2 \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             LIMIT 1",
            &[&i64::from(LOCK_SPACE), &i64::from(LAB_LOCK)],
        );
        match row {
            Ok(Some(row)) => {
                let (pid, app, role, from, state, age): (i32, String, String, String, String, f64) = (
                    row.get(0),
                    row.get(1),
                    row.get(2),
                    row.get(3),
                    row.get(4),
                    row.get(5),
                );
                let app = if app.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", crate::text::printable(&app))
                };
                format!(
                    "taken by server session PID {pid}{app}, role {role}, from {from} \
                     ({state}, in a transaction for {age:.1} s)",
                    role = crate::text::printable(&role),
                    state = crate::text::printable(&state)
                )
            }
            // The server shows other roles' sessions only to their
            // members and pg_read_all_stats.
            _ => "taken by a session this role may not see".to_string(),
        }
    }

    /// Runs one transaction under the lab's lock: `change` gets the current
    /// lab; its changes and events are stored, all or none, when it returns
    /// `Ok` having changed anything. The schema is created or migrated
    /// first. A role that may not write is [`Error::ReadOnly`] before
    /// `change` runs. With `change`'s value come the events committed,
    /// numbered.
    pub fn update<T>(&self, change: impl FnOnce(&mut Lab) -> Result<T>) -> Result<(T, Vec<Event>)> {
        self.transaction(false, |_, lab| change(lab))
    }

    /// [`PgStore::update`] that creates the lab (the schema) in a database
    /// that has none; every other transaction there is [`Error::NoLab`],
    /// and creates nothing.
    pub fn update_or_create<T>(
        &self,
        change: impl FnOnce(&mut Lab) -> Result<T>,
    ) -> Result<(T, Vec<Event>)> {
        self.transaction(true, |_, lab| change(lab))
    }

    /// The error for a database without a lab.
    pub(super) fn no_lab(&self) -> Error {
        Error::NoLab(format!("the database {}", self.url.shown))
    }

    /// [`PgStore::update`], with the transaction's session open to `change`
    /// too (for the document around the machines). With `change`'s value
    /// come the events the transaction committed, numbered, in order.
    pub(super) fn transaction<T>(
        &self,
        create: bool,
        change: impl FnOnce(&mut postgres::Transaction<'_>, &mut Lab) -> Result<T>,
    ) -> Result<(T, Vec<Event>)> {
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
                // What the last transaction left, if no one has written
                // the machines since (else they are read afresh).
                let kept = Self::locked(&self.kept).take();
                let seen = self.snapshot(&mut tx, schema::VERSION, true, kept.as_ref())?;
                if !seen.may_write {
                    return Err(Error::ReadOnly {
                        context: self.context("write"),
                        source: std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            "this role may only read it",
                        ),
                    });
                }
                let epoch = seen.look.epoch.clone();
                *Self::locked(&self.look) = Some(seen.look);
                let (mut doc, mut versions) = match (seen.rows, kept) {
                    (Some(rows), _) => {
                        let versions: HashMap<i64, RowSeen> = rows
                            .iter()
                            .map(|r| {
                                let seen = RowSeen {
                                    version: r.written_by.clone(),
                                    key: r.key,
                                    place: r.place,
                                    name: r.name.clone(),
                                };
                                (r.row, seen)
                            })
                            .collect();
                        (self.parse(&rows)?, versions)
                    }
                    (None, Some(kept)) => (kept.doc, kept.rows),
                    (None, None) => {
                        return Err(Error::Invalid(
                            "internal error: a transaction without machines".into(),
                        ));
                    }
                };
                let document = seen.document;
                let mut lab = self.model(&doc, document.as_deref())?;
                let change = change.take().ok_or_else(|| {
                    Error::Invalid("internal error: a transaction ran twice".into())
                })?;
                let value = change(&mut tx, &mut lab)?;
                let mut committed = Vec::new();
                // Whether the machines can be kept for the next
                // transaction: only where this one merely updated rows
                // (a claim, a release), whose new versions it knows.
                let mut keep = true;
                if lab.is_changed() {
                    match self.store_changes(&mut tx, &mut doc, lab.changes())? {
                        Some(written) => {
                            for Written {
                                row,
                                version,
                                place,
                                name,
                            } in written
                            {
                                match versions.get_mut(&row) {
                                    // The row as this transaction read it,
                                    // but for what it wrote (an edit by
                                    // hand its update waited for, of the
                                    // place or the name, is not kept).
                                    Some(seen) if seen.place == place && seen.name == name => {
                                        seen.version = version;
                                    }
                                    _ => keep = false,
                                }
                            }
                        }
                        None => keep = false,
                    }
                    committed = self.store_events(&mut tx, lab.take_events())?;
                    if crosses(&committed, PRUNE_EVERY) {
                        self.prune(&mut tx, &Retention::of(lab.settings()))?;
                    }
                    // Delivered on commit, to those listening for the
                    // lab's changes (`mama serve`); the payload names the
                    // schema, so labs side by side in one database are
                    // told apart.
                    // One simple query: a single round trip.
                    tx.batch_execute(&format!(
                        "SELECT pg_notify('{}', current_schema())",
                        super::CHANGE_CHANNEL
                    ))
                    .map_err(|e| db_error(&self.context("write"), e))?;
                    tx.commit()
                        .map_err(|e| db_error(&self.context("write"), e))?;
                }
                if keep {
                    *Self::locked(&self.kept) = Some(Kept {
                        doc,
                        epoch,
                        rows: versions,
                    });
                }
                Ok(Some((value, committed)))
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
    /// changed machine once: deleted, updated or inserted; the changes to
    /// the lab's devices, settings and leases are replayed onto the
    /// document around the machines, which is stored anew.
    ///
    /// Gives the new versions of the rows where it only updated machines
    /// (row and `xmin`); `None` where it inserted, deleted or changed the
    /// document too.
    pub(super) fn store_changes(
        &self,
        tx: &mut postgres::Transaction<'_>,
        doc: &mut XmlLab,
        changes: &[Change],
    ) -> Result<Option<Vec<Written>>> {
        for change in changes.iter().filter(|c| !c.is_document()) {
            doc.apply(std::slice::from_ref(change))?;
        }
        if changes.iter().any(Change::is_document) {
            self.store_document(tx, changes)?;
        }
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
                Change::AddDevice(_)
                | Change::RemoveDevice(_)
                | Change::ReplaceDevices(_)
                | Change::SetSetting(..)
                | Change::ReplaceSettings(_)
                | Change::SetLease { .. } => {}
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
        let only_updated =
            deleted.is_empty() && inserted.is_empty() && !changes.iter().any(Change::is_document);
        let mut written = Vec::new();
        for name in deleted {
            tx.execute("DELETE FROM mama_machine WHERE name = $1", &[&name])
                .map_err(write_error)?;
        }
        for name in updated {
            // When its job was written, by the server's clock: a claim
            // written before the server restarted lost its session with it.
            let statement = if job_written.contains(name) {
                "UPDATE mama_machine SET element = $2, job_written = now() WHERE name = $1 \
                 RETURNING id::int8, xmin::text, position, name"
            } else {
                "UPDATE mama_machine SET element = $2 WHERE name = $1 \
                 RETURNING id::int8, xmin::text, position, name"
            };
            // Typed: one round trip, nothing to prepare.
            let rows = tx
                .query_typed(
                    statement,
                    &[(&name, Type::TEXT), (&element(name)?, Type::TEXT)],
                )
                .map_err(write_error)?;
            for row in rows {
                let version = (
                    row.try_get::<_, i64>(0),
                    row.try_get::<_, String>(1),
                    row.try_get::<_, i64>(2),
                    row.try_get::<_, String>(3),
                );
                if let (Ok(row), Ok(version), Ok(place), Ok(name)) = version {
                    written.push(Written {
                        row,
                        version,
                        place,
                        name,
                    });
                }
            }
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
        Ok(only_updated.then_some(written))
    }

    /// Replays the changes to the lab's devices, settings and leases onto
    /// the document around the machines, as this transaction has it (an
    /// `import` may have put the file's there), and stores it, proven to
    /// read back; a lab without one gets upstream's empty document with
    /// them.
    fn store_document(&self, tx: &mut postgres::Transaction<'_>, changes: &[Change]) -> Result<()> {
        let mut outer = match self.document(tx)? {
            Some(text) if !text.is_empty() => XmlLab::parse(&text).map_err(|e| self.corrupt(e))?,
            _ => XmlLab::empty(),
        };
        for change in changes.iter().filter(|c| c.is_document()) {
            outer.apply(std::slice::from_ref(change))?;
        }
        // Never store what could not be read back.
        let text: String = outer
            .render()
            .map_err(|e| {
                Error::Invalid(format!(
                    "internal error: the lab's document would not read back ({e}); nothing \
                     was written"
                ))
            })?
            .concat();
        tx.execute(
            "INSERT INTO mama_lab (document) VALUES ($1) \
             ON CONFLICT (singleton) DO UPDATE SET document = EXCLUDED.document",
            &[&text],
        )
        .map_err(|e| db_error(&self.context("write"), e))?;
        Ok(())
    }

    /// Drops the events that `retention` no longer keeps, oldest first:
    /// those older than its days (the oldest up to the first younger one),
    /// and those past its size, each event counted as its line in a state
    /// file's log (the average of the newest thousand, as JSON). A role that
    /// may not delete events keeps them.
    fn prune(&self, tx: &mut postgres::Transaction<'_>, retention: &Retention) -> Result<()> {
        let failed = |e| db_error(&self.context("trim the history of"), e);
        let may: bool = tx
            .query_one("SELECT has_table_privilege('mama_event', 'DELETE')", &[])
            .map_err(failed)?
            .get(0);
        if !may {
            return Ok(());
        }
        if let Some(days) = retention.keep_days {
            let cutoff = crate::os::now().saturating_sub((days as i64).saturating_mul(86400));
            // A window of the oldest at a time: a history that has just
            // been given a retention is trimmed over a few transactions.
            let row = tx
                .query_one(
                    "WITH oldest AS (SELECT seq, time FROM mama_event ORDER BY seq LIMIT 2000) \
                     SELECT (SELECT min(seq) FROM oldest WHERE time >= $1), \
                            (SELECT max(seq) FROM oldest)",
                    &[&cutoff],
                )
                .map_err(failed)?;
            let (young, last): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
            match (young, last) {
                (Some(young), _) => {
                    tx.execute("DELETE FROM mama_event WHERE seq < $1", &[&young])
                        .map_err(failed)?;
                }
                (None, Some(last)) => {
                    tx.execute("DELETE FROM mama_event WHERE seq <= $1", &[&last])
                        .map_err(failed)?;
                }
                (None, None) => {}
            }
        }
        let row = tx
            .query_one(
                "SELECT (SELECT avg(octet_length(row_to_json(newest)::text) + 1)::float8 \
                   FROM (SELECT * FROM mama_event ORDER BY seq DESC LIMIT 1000) newest), \
                 (SELECT max(seq) FROM mama_event)",
                &[],
            )
            .map_err(failed)?;
        let (average, last): (Option<f64>, Option<i64>) = (row.get(0), row.get(1));
        if let (Some(average), Some(last)) = (average, last)
            && average > 0.0
        {
            let keep = (retention.max_size as f64 / average) as i64;
            tx.execute(
                "DELETE FROM mama_event WHERE seq <= $1",
                &[&last.saturating_sub(keep.max(1))],
            )
            .map_err(failed)?;
        }
        Ok(())
    }

    /// Stores `events`, numbered after the last one committed. Not by the
    /// column's sequence: a number it hands out is gone even when the
    /// transaction is not committed (a writer killed, a server crash skips
    /// ahead), and the history is numbered 1, 2, 3... without gaps, as in a
    /// file lab. Writers hold the lab's lock, so the next number is theirs.
    pub(super) fn store_events(
        &self,
        tx: &mut postgres::Transaction<'_>,
        events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        let mut stored = Vec::with_capacity(events.len());
        // The optional columns are looked for only when an event has
        // something for them (a claim's wait, a run's status).
        let extras = events
            .iter()
            .any(|e| e.waited.is_some() || e.status.is_some())
            && self.has_event_columns(tx)?;
        for mut event in events {
            let pid = event.pid.map(i64::from);
            let kind = event.event.as_str();
            // Typed: one round trip, nothing to prepare.
            let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
                (&event.time, Type::INT8),
                (&event.machine, Type::TEXT),
                (&kind, Type::TEXT),
                (&event.job, Type::TEXT),
                (&pid, Type::INT8),
                (&event.user, Type::TEXT),
                (&event.host, Type::TEXT),
                (&event.detail, Type::TEXT),
            ];
            let query = if extras {
                params.push((&event.waited, Type::FLOAT8));
                params.push((&event.status, Type::INT4));
                "INSERT INTO mama_event \
                 (seq, time, machine, event, job, pid, \"user\", host, detail, waited, status) \
                 VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM mama_event), \
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING seq"
            } else {
                "INSERT INTO mama_event \
                 (seq, time, machine, event, job, pid, \"user\", host, detail) \
                 VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM mama_event), \
                 $1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq"
            };
            let row = tx
                .query_typed(query, &params)
                .map_err(|e| db_error(&self.context("write the history of"), e))?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "internal error: the history of {} gave no number for an event",
                        self.url.shown
                    ))
                })?;
            drop(params);
            let seq: i64 = row.get(0);
            event.seq = u64::try_from(seq).map_err(|_| {
                Error::Invalid(format!(
                    "the history of {} numbered an event {seq}",
                    self.url.shown
                ))
            })?;
            stored.push(event);
        }
        Ok(stored)
    }

    /// Whether the history has its optional columns, adding them where
    /// this role owns it (see [`schema::event_columns`]); looked at once
    /// a run (a writer's snapshot tells it, see [`PgStore::snapshot`]).
    fn has_event_columns(&self, tx: &mut postgres::Transaction<'_>) -> Result<bool> {
        use std::sync::atomic::Ordering;
        if self.event_columns.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let present = schema::event_columns(tx, &self.url.shown, true)?;
        self.event_columns.store(present, Ordering::Relaxed);
        Ok(present)
    }

    /// A transaction that also sets the document around the machines to
    /// `skeleton` where the lab has none yet, or where `replace` says
    /// (`import`).
    pub fn update_with_document<T>(
        &self,
        skeleton: &str,
        replace: bool,
        change: impl FnOnce(&mut Lab) -> Result<T>,
    ) -> Result<(T, Vec<Event>)> {
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
}

impl PgStore {
    /// Makes the lab ready for its users (`mama init`): creates the tables
    /// where there are none (migrates older ones), under the lab's lock,
    /// and with `grant` gives that role what a lab's user needs (see
    /// [`schema::grants`]); the statements come back either way (for
    /// `ROLE` to fill in, without `grant`).
    pub fn init(&self, grant: Option<&str>) -> Result<crate::backend::InitDone> {
        let shown = self.url.shown.clone();
        let role = grant.map_or_else(|| "ROLE".to_string(), schema::quote_identifier);
        let mut grants = Vec::new();
        let changes = self.with_main(|client| {
            let mut tx = client
                .transaction()
                .map_err(|e| db_error(&self.context("set up"), e))?;
            self.lab_lock(&mut tx)?;
            let mut changes = Vec::new();
            match schema::version(&mut tx, &shown)? {
                None => changes.push(format!("{shown}: created the lab's tables")),
                Some(version) if version < schema::VERSION => changes.push(format!(
                    "{shown}: migrated the lab's tables from schema version {version} to {}",
                    schema::VERSION
                )),
                Some(_) => {}
            }
            schema::ensure(&mut tx, &shown, true)?;
            // The schema the tables are in: a role must be let into it
            // too, unless everybody may use it (as `public`).
            let (lab_schema, open): (String, bool) = tx
                .query_one(
                    "SELECT current_schema()::text, \
                       has_schema_privilege('public', current_schema(), 'USAGE')",
                    &[],
                )
                .and_then(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .map_err(|e| db_error(&self.context("set up"), e))?;
            let into = (!open).then(|| schema::quote_identifier(&lab_schema));
            grants = schema::grants(into.as_deref(), &role);
            let granted = |tx: &mut postgres::Transaction<'_>, role: &str| {
                tx.query_one(
                    "SELECT has_schema_privilege($1, current_schema(), 'USAGE') \
                       AND has_table_privilege($1, 'mama_machine', 'SELECT, INSERT, UPDATE, DELETE') \
                       AND has_table_privilege($1, 'mama_lab', 'SELECT, INSERT, UPDATE') \
                       AND has_table_privilege($1, 'mama_event', 'SELECT, INSERT') \
                       AND has_table_privilege($1, 'mama_lock_key', 'SELECT, INSERT') \
                       AND has_table_privilege($1, 'mama_schema', 'SELECT') \
                       AND has_sequence_privilege($1, 'mama_machine_id_seq', 'USAGE') \
                       AND has_sequence_privilege($1, 'mama_lock_key_key_seq', 'USAGE')",
                    &[&role],
                )
                .map(|row| row.get::<_, bool>(0))
                .map_err(|e| db_error(&format!("cannot grant {role} the lab at {shown}"), e))
            };
            if let Some(role) = grant
                && !granted(&mut tx, role)?
            {
                for statement in &grants {
                    tx.batch_execute(statement).map_err(|e| {
                        db_error(&format!("cannot grant {role} the lab at {shown}"), e)
                    })?;
                }
                changes.push(format!("{shown}: granted {role} what a lab's user needs"));
            }
            tx.commit()
                .map_err(|e| db_error(&self.context("set up"), e))?;
            Ok(changes)
        })?;
        Ok(crate::backend::InitDone {
            location: shown,
            group: None,
            changes,
            grants,
        })
    }
}
