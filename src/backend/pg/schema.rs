//! The database lab's schema, versioned.
//!
//! The command that creates the lab (`add`, `import`) creates it in an
//! empty database; a database whose schema is older than this mama's is
//! migrated, step by step, in the writer's transaction; one that is newer is refused, so an older mama
//! never writes what it does not understand. Readers read versions up to
//! this mama's without migrating (a read-only role could not).
//!
//! Versions:
//! 1. `mama_schema` (the version), `mama_lab` (the document around the
//!    machines: root attributes, other top-level elements, comments),
//!    `mama_machine` (one row a machine: its lock key, its name, its place,
//!    its `<machine>` element as upstream writes it, every child and
//!    attribute kept, and when its job was last written, by the server's
//!    clock) and `mama_event` (the history).
//! 2. An index of the history by machine, for `info` and `log MACHINE`;
//!    `mama_lock_key`, the job lock's key of every machine name the lab
//!    ever had (rows are never deleted), so that a machine deleted and
//!    added again, or imported anew, keeps the job lock its running job
//!    holds, as a state file's lock is named after the machine.
//!
//! Beside the versions, `mama_event` may have two more columns, `waited`
//! (a claim's wait, seconds) and `status` (a run's exit status), added by
//! the first writer that records one and owns the table (see
//! [`event_columns`]). They do not change the version: an older mama
//! names the columns it reads and writes, so it reads and writes such a
//! table as before (its events have neither), and a writer that may not
//! add them records its events without them.

use postgres::GenericClient;

use super::db_error;
use crate::error::{Error, Result};

/// The schema version this mama reads and writes.
pub const VERSION: i32 = 2;

/// Version 1, created in one go.
const CREATE: &str = "
CREATE TABLE mama_schema (version integer NOT NULL);
INSERT INTO mama_schema (version) VALUES (1);
CREATE TABLE mama_lab (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    document text NOT NULL
);
CREATE TABLE mama_machine (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    position bigint NOT NULL,
    element text NOT NULL,
    job_written timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE mama_event (
    seq bigserial PRIMARY KEY,
    time bigint NOT NULL,
    machine text NOT NULL,
    event text NOT NULL,
    job text,
    pid bigint,
    \"user\" text NOT NULL,
    host text NOT NULL,
    detail text
);
";

/// The step from version `i + 1` to `i + 2`.
const MIGRATIONS: [&str; 1] = ["
CREATE INDEX mama_event_by_machine ON mama_event (machine, seq);
CREATE TABLE mama_lock_key (name text PRIMARY KEY, key serial UNIQUE);
INSERT INTO mama_lock_key (name, key) SELECT name, id FROM mama_machine;
SELECT setval(pg_get_serial_sequence('mama_lock_key', 'key'),
              coalesce((SELECT max(key) FROM mama_lock_key), 0) + 1, false);
"];

/// Adds `mama_event`'s optional columns; idempotent.
const EVENT_COLUMNS: &str = "ALTER TABLE mama_event \
     ADD COLUMN IF NOT EXISTS waited double precision, \
     ADD COLUMN IF NOT EXISTS status integer";

/// Whether `mama_event` has its optional columns `waited` and `status`;
/// with `add`, a role that owns the table adds them where they are
/// missing (call it with the lab's lock held: the writers' lock keeps two
/// from adding at once, and `IF NOT EXISTS` makes a second add nothing).
pub fn event_columns(client: &mut impl GenericClient, shown: &str, add: bool) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_attribute \
               WHERE attrelid = 'mama_event'::regclass AND NOT attisdropped \
               AND attname IN ('waited', 'status')) = 2, \
             (SELECT pg_has_role(relowner, 'USAGE') FROM pg_class \
               WHERE oid = 'mama_event'::regclass)",
            &[],
        )
        .map_err(|e| db_error(&format!("cannot read the lab at {shown}"), e))?;
    let present: bool = row.get(0);
    let owner: Option<bool> = row.get(1);
    if present || !add || owner != Some(true) {
        return Ok(present);
    }
    client
        .batch_execute(EVENT_COLUMNS)
        .map_err(|e| db_error(&format!("cannot add columns to the history of {shown}"), e))?;
    Ok(true)
}

/// The first column of the first row `query` (a simple query) gives, as
/// text; `None` for no row or NULL.
pub fn first_value(
    client: &mut impl GenericClient,
    query: &str,
) -> std::result::Result<Option<String>, postgres::Error> {
    Ok(client
        .simple_query(query)?
        .into_iter()
        .find_map(|message| match message {
            postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .flatten())
}

/// The machines, with their job locks' keys, as a schema of `version`
/// holds them (version 1 keyed the lock by the row), and their order: the
/// place and the row, by which the reader sorts them (the server sorting
/// the rows with their elements took most of the read of a large lab).
pub fn machines_query(version: i32) -> &'static str {
    if version < 2 {
        "SELECT id, name, element, position, id, xmin::text FROM mama_machine"
    } else {
        "SELECT k.key, m.name, m.element, m.position, m.id, m.xmin::text FROM mama_machine m \
         LEFT JOIN mama_lock_key k USING (name)"
    }
}

/// Every machine's row number, version (`xmin`) and job lock key,
/// `row:xmin:key` by row, comma-separated: what the rows are without
/// their elements, by which a process tells that the machines it kept
/// (`Kept`, private to the backend) are still the lab's. A schema of the
/// current version.
pub const MACHINE_VERSIONS: &str = "SELECT coalesce(string_agg(m.id::text || ':' || \
     m.xmin::text || ':' || coalesce(k.key::text, '-'), ',' ORDER BY m.id), '') \
     FROM mama_machine m LEFT JOIN mama_lock_key k USING (name)";

/// [`MACHINE_VERSIONS`] of rows given as (row, version, key).
pub fn machine_versions<'a>(rows: impl IntoIterator<Item = (i64, &'a str, i32)>) -> String {
    use std::fmt::Write;
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_unstable_by_key(|(row, ..)| *row);
    let mut out = String::with_capacity(rows.len() * 24);
    for (at, (row, version, key)) in rows.into_iter().enumerate() {
        if at > 0 {
            out.push(',');
        }
        // Writing into a String cannot fail.
        let _ = write!(out, "{row}:{version}:{key}");
    }
    out
}

/// Puts back the job lock keys of machines whose `mama_lock_key` row was
/// deleted by hand (new keys: the old ones are not known).
pub fn restore_lock_keys(client: &mut impl GenericClient, shown: &str) -> Result<()> {
    client
        .execute(
            "INSERT INTO mama_lock_key (name) SELECT m.name FROM mama_machine m \
             WHERE NOT EXISTS (SELECT 1 FROM mama_lock_key k WHERE k.name = m.name) \
             ON CONFLICT (name) DO NOTHING",
            &[],
        )
        .map_err(|e| db_error(&format!("cannot write the lab at {shown}"), e))?;
    Ok(())
}

/// The version of the schema in the database; `None` when there is none.
/// Two simple queries (one round trip each, nothing to prepare): the
/// second would fail, and end the transaction, where the table is missing.
pub fn version(client: &mut impl GenericClient, shown: &str) -> Result<Option<i32>> {
    let failed = |e| db_error(&format!("cannot read the lab at {shown}"), e);
    let exists =
        first_value(client, "SELECT to_regclass('mama_schema') IS NOT NULL").map_err(failed)?;
    if exists.as_deref() != Some("t") {
        return Ok(None);
    }
    let version: i32 = first_value(client, "SELECT max(version) FROM mama_schema")
        .map_err(failed)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if version > VERSION {
        return Err(Error::Invalid(format!(
            "the lab at {shown} has schema version {version}, newer than this mama knows \
             ({VERSION}): use a newer mama"
        )));
    }
    if version < 1 {
        return Err(Error::Invalid(format!(
            "the lab at {shown} has no valid schema version in mama_schema"
        )));
    }
    Ok(Some(version))
}

/// Makes the schema current, inside the caller's transaction (which holds
/// the lab's lock): creates it in an empty database (with `create`),
/// migrates an older one. False when there is none and none was created.
pub fn ensure(client: &mut impl GenericClient, shown: &str, create: bool) -> Result<bool> {
    let mut at = match version(client, shown)? {
        Some(VERSION) => return Ok(true),
        Some(version) => version,
        None if !create => return Ok(false),
        None => {
            client
                .batch_execute(CREATE)
                .map_err(|e| db_error(&format!("cannot create the lab at {shown}"), e))?;
            1
        }
    };
    while at < VERSION {
        let step = MIGRATIONS[(at - 1) as usize];
        client
            .batch_execute(step)
            .and_then(|()| client.execute("UPDATE mama_schema SET version = $1", &[&(at + 1)]))
            .map_err(|e| {
                db_error(
                    &format!(
                        "cannot migrate the lab at {shown} from schema version {at} to {}",
                        at + 1
                    ),
                    e,
                )
            })?;
        at += 1;
    }
    Ok(true)
}

/// The privileges a role that uses the lab needs on its tables, and on
/// their schema where it is given (`schema`: one not open to everybody),
/// as GRANT statements for `role` (SQL identifiers, quoted): to find the
/// tables, to read and write machines, the document around them and the
/// history, and to add the job-lock keys of new machine names. Creating
/// the tables and migrating them stay with their owner (`mama init`, or
/// the first `add`).
pub fn grants(schema: Option<&str>, role: &str) -> Vec<String> {
    let usage = schema.map(|schema| format!("USAGE ON SCHEMA {schema}"));
    usage
        .iter()
        .map(String::as_str)
        .chain([
            "SELECT ON mama_schema",
            "SELECT, INSERT, UPDATE ON mama_lab",
            "SELECT, INSERT, UPDATE, DELETE ON mama_machine",
            "SELECT, INSERT ON mama_event",
            "SELECT, INSERT ON mama_lock_key",
            "USAGE ON SEQUENCE mama_machine_id_seq, mama_lock_key_key_seq",
        ])
        .map(|what| format!("GRANT {what} TO {role};"))
        .collect()
}

/// `name` as an SQL identifier: quoted, a quote in it doubled.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as an SQL string literal, read alike whatever
/// `standard_conforming_strings` says: an escape string (`E'...'`), a
/// backslash and a quote in it doubled.
pub fn quote_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}
