//! Reading a database lab: one snapshot of its machines, the locks held
//! behind them, and the events asked for.

use std::collections::{HashMap, HashSet};

use postgres::{Client, GenericClient, IsolationLevel};

use super::{Kept, LOCK_SPACE, Look, PLACE_SPACE, PgStore, Row, Wanted};
use super::{db_error, schema};
use crate::backend::Snapshot;
use crate::error::{Error, Result};
use crate::format::doc::XmlLab;
use crate::model::Lab;
use crate::model::event::{Brief, Event, Kind};

impl PgStore {
    pub(super) fn corrupt(&self, e: crate::format::xml::ParseError) -> Error {
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

    /// The lab as the snapshot transaction `tx` sees it, keeping its look
    /// at the job locks; no lab there is an error saying so.
    fn lab_in(&self, tx: &mut postgres::Transaction<'_>) -> Result<Lab> {
        let Some(version) = schema::version(tx, &self.url.shown)? else {
            return Err(self.no_lab());
        };
        let seen = self.snapshot(tx, version, false, None)?;
        *Self::locked(&self.look) = Some(seen.look.clone());
        let document = seen.document.clone();
        self.model(&self.parse(&seen.machines()?)?, document.as_deref())
    }

    /// The event columns added after the table's first version, to select
    /// (`waited`, `status`), or NULLs in their place where the table lacks
    /// them.
    fn later_event_columns(&self, client: &mut impl GenericClient) -> Result<&'static str> {
        let known = self
            .event_columns
            .load(std::sync::atomic::Ordering::Relaxed);
        Ok(
            if known || schema::event_columns(client, &self.url.shown, false)? {
                "waited::float8, status::int4"
            } else {
                "NULL::float8, NULL::int4"
            },
        )
    }

    /// A read-only transaction that sees one snapshot of the lab.
    pub(super) fn snapshot_transaction<'a>(
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

    pub(super) fn read_with(
        &self,
        events: Option<Wanted<'_>>,
    ) -> Result<(Snapshot, Option<Vec<Event>>)> {
        self.with_main(|client| {
            let mut tx = self.snapshot_transaction(client)?;
            let lab = self.lab_in(&mut tx)?;
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

    pub(super) fn parse(&self, rows: &[Row]) -> Result<XmlLab> {
        XmlLab::from_machines(rows.iter().map(|r| (r.name.as_str(), r.element.as_str())))
            .map_err(|e| self.corrupt(e))
    }

    /// The lab of the machines `doc` holds, with the power devices,
    /// settings and leases of `document` (the document around the
    /// machines, where it has any).
    pub(super) fn model(&self, doc: &XmlLab, document: Option<&str>) -> Result<Lab> {
        let lab = doc.model();
        let Some(document) = document else {
            return Ok(lab);
        };
        Ok(XmlLab::parse(document)
            .map_err(|e| self.corrupt(e))?
            .with_policy(lab))
    }

    /// The machines, and one look at their job locks, in one round trip:
    /// which locks are held, which claims were written before the server
    /// last started (within the host timeout after it), whether this role
    /// may write the lab, and the document around the machines where it
    /// holds a power device, the lab's settings or a lease (a lab without
    /// them fetches nothing more). A machine without its job lock's key
    /// (a `mama_lock_key` row deleted by hand) is never left out: a writer
    /// (`restore`, the lab's lock held) puts the key back, with a warning,
    /// and looks again; a reader refuses the lab.
    ///
    /// Given what this process's last writing transaction `kept`, it asks
    /// only for the versions of the machines' rows, and where they are the
    /// ones kept (no one has written a machine since), the machines are
    /// the kept ones ([`Seen::rows`] is `None`); else it reads them. The
    /// document around them is read either way.
    pub(super) fn snapshot(
        &self,
        client: &mut impl GenericClient,
        version: i32,
        restore: bool,
        kept: Option<&Kept>,
    ) -> Result<Seen> {
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
               pg_postmaster_start_time()::text;
             SELECT document FROM mama_lab WHERE strpos(document, '<device') > 0 \
               OR strpos(document, '<lab_settings') > 0 OR strpos(document, '<lease') > 0;{}",
            match kept {
                Some(_) => schema::MACHINE_VERSIONS,
                None => schema::machines_query(version),
            },
            self.host_timeout.as_secs(),
            // A writer: the history's columns, by name (no row; the
            // table is the one its events go to), so that its events need
            // not ask for them.
            if restore {
                "\n             SELECT * FROM mama_event LIMIT 0;"
            } else {
                ""
            }
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
                // The seventh statement's columns (six have completed):
                // a writer's look at the history's, as it is now (a server
                // that lost its last commits in a crash may have lost the
                // columns an earlier transaction of this run added).
                postgres::SimpleQueryMessage::RowDescription(columns) if results.len() == 7 => {
                    let has = |name: &str| columns.iter().any(|c| c.name() == name);
                    self.event_columns.store(
                        has("waited") && has("status"),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                _ => {}
            }
        }
        let unexpected = || {
            Error::Invalid(format!(
                "internal error: the lab at {} answered in an unexpected shape",
                self.url.shown
            ))
        };
        let [
            machines,
            held,
            reattaching,
            may_write,
            restarted,
            document,
            ..,
        ] = results.as_slice()
        else {
            return Err(unexpected());
        };
        let text = |row: &postgres::SimpleQueryRow, i: usize| -> Result<String> {
            row.get(i).map(str::to_string).ok_or_else(unexpected)
        };
        let document = document
            .first()
            .and_then(|row| row.get(0))
            .map(str::to_string);
        let epoch = restarted
            .first()
            .and_then(|row| row.get(1))
            .unwrap_or_default()
            .to_string();
        let kept = match kept {
            None => None,
            Some(kept) => {
                let versions = machines.first().and_then(|row| row.get(0));
                // Written since, or the server started since: read them. A
                // server that started again may have lost the last commits
                // (`synchronous_commit` off, a crash; an asynchronous
                // standby promoted) and given their transaction numbers out
                // again, so that a row another wrote since has the version
                // this process kept.
                if versions != Some(kept.versions().as_str()) || epoch != kept.epoch {
                    return self.snapshot(client, version, restore, None);
                }
                Some(kept)
            }
        };
        let keyless: Vec<String> = machines
            .iter()
            .filter(|_| kept.is_none())
            .filter(|row| row.get(0).is_none())
            .filter_map(|row| {
                row.get(1)
                    .map(|name| crate::text::printable(name).into_owned())
            })
            .collect();
        if !keyless.is_empty() && restore {
            schema::restore_lock_keys(client, &self.url.shown)?;
            say!(
                "mama: warning: the lab at {} had lost the job lock keys of {} (rows deleted \
                 by hand from mama_lock_key); they are put back, with new keys: a job running \
                 there under the old one loses its claim",
                self.url.shown,
                keyless.join(", ")
            );
            return self.snapshot(client, version, false, None);
        }
        if !keyless.is_empty() {
            return Err(Error::Database {
                context: self.context("read"),
                message: format!(
                    "the table mama_lock_key has no row for {} (deleted by hand: its rows key \
                     the machines' job locks and are never deleted); the next command that \
                     changes the lab, run by a role that may write it, puts them back",
                    keyless.join(", ")
                ),
            });
        }
        let number = |row: &postgres::SimpleQueryRow, i: usize| -> Result<i64> {
            row.get(i)
                .and_then(|n| n.parse().ok())
                .ok_or_else(unexpected)
        };
        let rows = match kept {
            Some(_) => None,
            None => {
                let mut placed = machines
                    .iter()
                    .map(|row| {
                        let order = (number(row, 3)?, number(row, 4)?);
                        let row = Row {
                            key: text(row, 0)?.parse().map_err(|_| unexpected())?,
                            name: text(row, 1)?,
                            element: text(row, 2)?,
                            row: order.1,
                            written_by: text(row, 5)?,
                            place: order.0,
                        };
                        Ok((order, row))
                    })
                    .collect::<Result<Vec<((i64, i64), Row)>>>()?;
                // In the lab's order: by place, then row.
                placed.sort_unstable_by_key(|(order, _)| *order);
                Some(placed.into_iter().map(|(_, row)| row).collect::<Vec<Row>>())
            }
        };
        let locks_in = |space: i32| -> HashSet<i32> {
            held.iter()
                .filter(|row| row.get(0) == Some(space.to_string().as_str()))
                .filter_map(|row| row.get(1)?.parse::<i64>().ok())
                .filter_map(|id| i32::try_from(id).ok())
                .collect()
        };
        let mut look = Look {
            ids: match (&rows, kept) {
                (Some(rows), _) => rows.iter().map(|r| (r.name.clone(), r.key)).collect(),
                (None, Some(kept)) => kept.ids(),
                (None, None) => HashMap::new(),
            },
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
        look.epoch = epoch;
        Ok(Seen {
            rows,
            look,
            may_write,
            document,
        })
    }

    pub(super) fn events(
        &self,
        client: &mut impl GenericClient,
        wanted: Wanted<'_>,
    ) -> Result<Vec<Event>> {
        // Cast and defaulted here, so that a table someone altered gives an
        // error, never a value of the wrong type.
        const COLUMNS: &str = "seq::int8, coalesce(time, 0)::int8, coalesce(machine, '')::text, \
             coalesce(event, '')::text, job::text, pid::int8, \
             coalesce(\"user\", '')::text, coalesce(host, '')::text, detail::text";
        let columns = format!("{COLUMNS}, {}", self.later_event_columns(client)?);
        let rows = match wanted {
            Wanted::After(after) => {
                let after = after.map_or(0, |seq| i64::try_from(seq).unwrap_or(i64::MAX));
                client.query(
                    &format!("SELECT {columns} FROM mama_event WHERE seq > $1 ORDER BY seq"),
                    &[&after],
                )
            }
            Wanted::Recent(machine, count) => {
                let count = i64::try_from(count).unwrap_or(i64::MAX);
                client.query(
                    &format!(
                        "SELECT * FROM (SELECT {columns} FROM mama_event WHERE machine = $1 \
                         ORDER BY seq DESC LIMIT $2) newest ORDER BY 1"
                    ),
                    &[&machine, &count],
                )
            }
        };
        // A row of a kind this mama does not know (a newer mama's) is
        // skipped, as the file log skips a line that is not an event.
        Ok(rows
            .map_err(|e| db_error(&self.context("read the history of"), e))?
            .into_iter()
            .filter_map(|row| {
                let kind: String = row.get(3);
                let event = serde_json::from_value::<Kind>(serde_json::Value::String(kind)).ok()?;
                Some(Event {
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
                    waited: row.get(9),
                    status: row.get(10),
                })
            })
            .collect())
    }

    /// Every committed event, oldest first, to `visit` (see
    /// [`crate::backend::Backend::scan_events`]), from one snapshot, row by
    /// row as the server sends them. An event of a kind this mama does not
    /// know is passed over.
    pub fn scan_events(&self, visit: &mut dyn FnMut(&Brief<'_>)) -> Result<Snapshot> {
        use postgres::fallible_iterator::FallibleIterator;
        use std::borrow::Cow;
        self.with_main(|client| {
            let mut tx = self.snapshot_transaction(client)?;
            let lab = self.lab_in(&mut tx)?;
            let extra = self.later_event_columns(&mut tx)?;
            let query = format!(
                "SELECT seq::int8, coalesce(time, 0)::int8, coalesce(machine, '')::text, \
                 coalesce(event, '')::text, pid::int8, coalesce(\"user\", '')::text, \
                 detail::text, {extra} FROM mama_event ORDER BY seq"
            );
            let failed = |e| db_error(&self.context("read the history of"), e);
            let mut rows = tx
                .query_raw(&query, std::iter::empty::<&dyn postgres::types::ToSql>())
                .map_err(failed)?;
            let mut last_event = None;
            while let Some(row) = rows.next().map_err(failed)? {
                let seq = row.get::<_, i64>(0) as u64;
                last_event = Some(seq);
                let Some(kind) = Kind::from_name(row.get(3)) else {
                    continue;
                };
                visit(&Brief {
                    seq,
                    time: row.get(1),
                    machine: Cow::Borrowed(row.get(2)),
                    event: kind,
                    pid: row
                        .get::<_, Option<i64>>(4)
                        .and_then(|p| u32::try_from(p).ok()),
                    user: Cow::Borrowed(row.get(5)),
                    detail: row.get::<_, Option<&str>>(6).map(Cow::Borrowed),
                    waited: row.get(7),
                    status: row.get(8),
                });
            }
            drop(rows);
            tx.commit()
                .map_err(|e| db_error(&self.context("read"), e))?;
            Ok(Snapshot { lab, last_event })
        })
    }

    /// Every committed event whole, oldest first, to `visit` (see
    /// [`crate::backend::Backend::each_event`]): with `since`, only those
    /// of that time or later. From one snapshot, streamed.
    pub fn each_event(&self, since: Option<i64>, visit: &mut dyn FnMut(Event)) -> Result<Snapshot> {
        use postgres::fallible_iterator::FallibleIterator;
        self.with_main(|client| {
            let mut tx = self.snapshot_transaction(client)?;
            let lab = self.lab_in(&mut tx)?;
            let extra = self.later_event_columns(&mut tx)?;
            let query = format!(
                "SELECT seq::int8, coalesce(time, 0)::int8, coalesce(machine, '')::text, \
                 coalesce(event, '')::text, job::text, pid::int8, \
                 coalesce(\"user\", '')::text, coalesce(host, '')::text, detail::text, {extra} \
                 FROM mama_event WHERE time >= $1 ORDER BY seq"
            );
            let failed = |e| db_error(&self.context("read the history of"), e);
            let from = since.unwrap_or(i64::MIN);
            let mut rows = tx.query_raw(&query, [&from]).map_err(failed)?;
            while let Some(row) = rows.next().map_err(failed)? {
                let seq = row.get::<_, i64>(0) as u64;
                // A kind a newer mama records is passed over, as elsewhere.
                let Some(event) = Kind::from_name(row.get(3)) else {
                    continue;
                };
                visit(Event {
                    seq,
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
                    waited: row.get(9),
                    status: row.get(10),
                });
            }
            drop(rows);
            // The newest event, whatever its time (a host's clock behind).
            let last_event = tx
                .query_one("SELECT max(seq) FROM mama_event", &[])
                .map_err(|e| db_error(&self.context("read"), e))?
                .get::<_, Option<i64>>(0)
                .map(|seq| seq as u64);
            tx.commit()
                .map_err(|e| db_error(&self.context("read"), e))?;
            Ok(Snapshot { lab, last_event })
        })
    }

    /// The lab in upstream's format: the stored document with the machines
    /// in it.
    pub fn export(&self) -> Result<String> {
        self.with_main(|client| {
            let mut tx = self.snapshot_transaction(client)?;
            let Some(version) = schema::version(&mut tx, &self.url.shown)? else {
                return Err(self.no_lab());
            };
            let rows = self.snapshot(&mut tx, version, false, None)?.machines()?;
            let skeleton = self.document(&mut tx)?;
            let doc = XmlLab::assemble(
                skeleton.as_deref(),
                rows.iter().map(|r| (r.name.as_str(), r.element.as_str())),
            )
            .map_err(|e| self.corrupt(e))?;
            Ok(doc.to_xml())
        })
    }

    pub(super) fn document(&self, client: &mut impl GenericClient) -> Result<Option<String>> {
        Ok(client
            .query_opt("SELECT coalesce(document, '')::text FROM mama_lab", &[])
            .map_err(|e| db_error(&self.context("read"), e))?
            .map(|row| row.get(0)))
    }

    /// What the last read saw of the locks; a fresh look when there was
    /// none.
    pub(super) fn look(&self) -> Look {
        if let Some(look) = Self::locked(&self.look).clone() {
            return look;
        }
        let _ = self.read();
        Self::locked(&self.look).clone().unwrap_or_default()
    }
}

/// What [`PgStore::snapshot`] saw.
pub(super) struct Seen {
    /// The machines, in the lab's order; `None` where the kept ones stand.
    pub rows: Option<Vec<Row>>,
    pub look: Look,
    /// Whether this role may write the lab.
    pub may_write: bool,
    /// The document around the machines, where it holds a power device,
    /// the lab's settings or a lease.
    pub document: Option<String>,
}

impl Seen {
    /// The machines read, for a snapshot taken without kept ones.
    fn machines(self) -> Result<Vec<Row>> {
        self.rows
            .ok_or_else(|| Error::Invalid("internal error: a read without machines".into()))
    }
}
