//! A journal left by an earlier mama, folded into the state file.
//!
//! An earlier mama appended a run's claims, releases and places in queues
//! to `S.journal` beside the state file `S` instead of rewriting the lab,
//! so the state file did not show who held a machine. mama now writes
//! every change into the state file; a journal it finds (a lab upgraded
//! while jobs ran, or a host still running the earlier mama) is read with
//! the state, so no claim or event in it is lost, folded into the state
//! file by the next write, and removed.
//!
//! Format: a header line `mama journal 1 TOKEN` (16 random hex digits),
//! then one line a record, `HASH JSON`: HASH is the FNV-1a 64-bit hash of
//! the JSON text in 16 lower-case hex digits. A fold writes the journal's
//! token into the new state file (`<journal_folded>`) in the same rename
//! that takes its changes in, and removes the journal afterwards: a
//! journal whose token the state file names was folded already (its
//! writer was killed before removing it) and is never applied again.
//! Records are read up to the first one that is cut short or damaged; a
//! change to a machine the file no longer has is skipped.

use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;

use serde::Deserialize;
#[cfg(test)]
use {
    crate::error::{Error, Result},
    serde::Serialize,
    std::os::unix::fs::FileExt,
};

use crate::model::Change;
use crate::model::event::Event;
use crate::model::field::Field;

use super::rollforward::fnv1a_64;

/// The first words of a journal's header.
pub const HEADER: &str = "mama journal 1";

/// The most of a file read as a journal: far past the longest journal an
/// earlier mama let grow (64 KiB), so only a file mama did not write is cut
/// there.
const MAX_READ: u64 = 4 << 20;

/// A state file as `fstat` tells it: device, inode, length and
/// modification time (in nanoseconds). A transaction that finds the same
/// identity and the journal it left takes the lab it left (a rename makes
/// a new inode while the old one still exists, and a write in place moves
/// the time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Identity {
    pub fn of(meta: &Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// A journal's first line.
#[cfg(test)]
fn header(token: &str) -> String {
    format!("{HEADER} {token}\n")
}

/// The fields a journal record may change: those of a job and its queue,
/// true only while the processes behind them live.
pub fn may_journal(change: &Change) -> bool {
    let field = match change {
        Change::Set { field, .. } | Change::Unset { field, .. } => *field,
        _ => return false,
    };
    matches!(
        field,
        Field::Job
            | Field::JobPid
            | Field::JobTimestamp
            | Field::JobUser
            | Field::JobHost
            | Field::JobOrigin
            | Field::JobQueue
    )
}

/// A record as a line holds it: `changes` are `["set", MACHINE, FIELD,
/// VALUE]` or `["unset", MACHINE, FIELD]`; `last` is the number of its
/// last event; `events` stays text until someone asks for the events.
#[derive(Debug, Deserialize)]
struct RecordText {
    changes: Vec<Vec<String>>,
    #[serde(default)]
    last: Option<u64>,
    #[serde(default)]
    events: Option<Box<serde_json::value::RawValue>>,
}

#[cfg(test)]
#[derive(Serialize)]
struct RecordOut<'r> {
    changes: Vec<Vec<&'r str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<&'r serde_json::value::RawValue>,
}

/// One transaction's changes and its (numbered) events.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub changes: Vec<Change>,
    /// The number of the last of its events.
    last: Option<u64>,
    /// Its events, as a JSON array (empty: none).
    events: String,
}

impl Record {
    /// A record of `changes` (only changes [`may_journal`] allows) and
    /// `events`, numbered.
    #[cfg(test)]
    pub fn new(changes: Vec<Change>, events: &[Event]) -> Result<Record> {
        if let Some(other) = changes.iter().find(|c| !may_journal(c)) {
            return Err(Error::Invalid(format!(
                "internal error: {other:?} cannot go into the journal"
            )));
        }
        let events_text = match events.is_empty() {
            true => String::new(),
            false => serde_json::to_string(events)
                .map_err(|e| Error::Invalid(format!("cannot encode an event: {e}")))?,
        };
        Ok(Record {
            changes,
            last: events.iter().map(|e| e.seq).max(),
            events: events_text,
        })
    }

    /// Drops the record's events (they moved to the state file).
    pub fn forget_events(&mut self) {
        self.events.clear();
        self.last = None;
    }

    /// The record's events.
    pub fn events(&self) -> Vec<Event> {
        match self.events.is_empty() {
            true => Vec::new(),
            false => serde_json::from_str(&self.events).unwrap_or_default(),
        }
    }

    /// The record as one line of the journal, newline included.
    #[cfg(test)]
    pub fn encode(&self) -> Result<Vec<u8>> {
        let changes = self
            .changes
            .iter()
            .map(|change| match change {
                Change::Set {
                    machine,
                    field,
                    value,
                } => vec!["set", machine.as_str(), field.tag(), value.as_str()],
                Change::Unset { machine, field } => vec!["unset", machine.as_str(), field.tag()],
                _ => Vec::new(),
            })
            .collect();
        let events = match self.events.is_empty() {
            true => None,
            false => Some(
                serde_json::from_str::<&serde_json::value::RawValue>(&self.events)
                    .map_err(|e| Error::Invalid(format!("cannot encode an event: {e}")))?,
            ),
        };
        let json = serde_json::to_string(&RecordOut {
            changes,
            last: self.last,
            events,
        })
        .map_err(|e| Error::Invalid(format!("cannot encode a journal record: {e}")))?;
        let mut line = format!("{:016x} ", fnv1a_64(json.as_bytes())).into_bytes();
        line.extend_from_slice(json.as_bytes());
        line.push(b'\n');
        Ok(line)
    }

    /// A record from one line (without its newline); `None` when it is
    /// damaged or holds what no journal may.
    fn decode(line: &[u8]) -> Option<Record> {
        let (hash, json) = (line.get(..16)?, line.get(17..)?);
        if line.get(16) != Some(&b' ')
            || u64::from_str_radix(std::str::from_utf8(hash).ok()?, 16).ok()? != fnv1a_64(json)
        {
            return None;
        }
        let text: RecordText = serde_json::from_slice(json).ok()?;
        let changes = text
            .changes
            .into_iter()
            .map(|step| {
                let mut step = step.into_iter();
                let (op, machine, tag) = (step.next()?, step.next()?, step.next()?);
                let field = Field::from_tag(&tag)?;
                let change = match (op.as_str(), step.next(), step.next()) {
                    ("set", Some(value), None) => Change::Set {
                        machine,
                        field,
                        value,
                    },
                    ("unset", None, None) => Change::Unset { machine, field },
                    _ => return None,
                };
                may_journal(&change).then_some(change)
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Record {
            changes,
            last: text.last,
            events: text.events.map(|e| e.get().to_string()).unwrap_or_default(),
        })
    }
}

/// What a journal file holds as a journal of the state file `state`.
#[derive(Debug, Clone)]
pub struct Journal {
    /// The state file it was read against.
    pub state: Identity,
    /// Its token, when it holds records not yet folded.
    pub token: Option<String>,
    /// Its header and whole records, as read: the bytes a writer appends
    /// after (empty when the file holds no journal of this state).
    pub bytes: Vec<u8>,
    /// The whole records, in order.
    pub records: Vec<Record>,
    /// The file's length: past `bytes`, a record cut short, or what a
    /// stale journal holds.
    pub len: u64,
    /// The file holds a journal, of this state or a stale one.
    pub is_journal: bool,
}

impl Journal {
    /// No journal: a lab without a journal file, or whose journal file
    /// holds none.
    pub fn none(state: Identity) -> Journal {
        Journal {
            state,
            token: None,
            bytes: Vec::new(),
            records: Vec::new(),
            len: 0,
            is_journal: false,
        }
    }

    /// Reads the journal in `file` against the state file of identity
    /// `state`, which names the last journal folded into it, `folded`.
    pub fn read(mut file: &File, state: Identity, folded: Option<&str>) -> io::Result<Journal> {
        let len = file.metadata()?.len();
        let mut journal = Journal {
            len,
            ..Journal::none(state)
        };
        if len == 0 {
            return Ok(journal);
        }
        let mut bytes = Vec::with_capacity(len.min(MAX_READ) as usize);
        file.seek(SeekFrom::Start(0))?;
        file.take(MAX_READ).read_to_end(&mut bytes)?;
        let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
            return Ok(journal);
        };
        if !bytes.starts_with(HEADER.as_bytes()) || bytes.get(HEADER.len()) != Some(&b' ') {
            return Ok(journal);
        }
        journal.is_journal = true;
        let token = &bytes[HEADER.len() + 1..end];
        let Ok(token) = std::str::from_utf8(token) else {
            return Ok(journal);
        };
        if token.is_empty()
            || !token.bytes().all(|b| b.is_ascii_hexdigit())
            || Some(token) == folded
        {
            return Ok(journal);
        }
        journal.token = Some(token.to_string());
        let mut whole = end + 1;
        while let Some(newline) = bytes[whole..].iter().position(|&b| b == b'\n') {
            let Some(record) = Record::decode(&bytes[whole..whole + newline]) else {
                break;
            };
            journal.records.push(record);
            whole += newline + 1;
        }
        bytes.truncate(whole);
        journal.bytes = bytes;
        Ok(journal)
    }

    /// The events of the records, in order.
    pub fn events(&self) -> Vec<Event> {
        self.records.iter().flat_map(Record::events).collect()
    }

    /// The number of the newest event the records hold.
    pub fn last_seq(&self) -> Option<u64> {
        self.records.iter().filter_map(|r| r.last).max()
    }

    /// Whether the file holds what a writer must empty first: a stale
    /// journal, or a journal's damaged end.
    pub fn needs_emptying(&self) -> bool {
        self.is_journal && self.len != self.bytes.len() as u64
    }

    /// Keeps only the first `count` records (those that applied).
    pub fn keep(&mut self, count: usize) {
        if count >= self.records.len() {
            return;
        }
        let mut end = 0;
        for _ in 0..=count {
            end += self.bytes[end..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
        }
        self.bytes.truncate(end);
        self.records.truncate(count);
    }

    /// Appends `record` to the journal in `file`: after the header (a new
    /// one when the file holds no journal of this state) and the whole
    /// records, cutting away whatever followed them. Synced when `sync`.
    /// On failure the file is cut back to what it held before, as far as
    /// it can be.
    /// A new journal takes the token `fresh`. (Only the tests write
    /// journals now, as an earlier mama did.)
    #[cfg(test)]
    pub fn append(&mut self, file: &File, record: &Record, sync: bool, fresh: &str) -> Result<()> {
        let line = record.encode()?;
        let mut text = Vec::with_capacity(line.len() + 64);
        let at = if self.bytes.is_empty() {
            text.extend_from_slice(header(fresh).as_bytes());
            self.token = Some(fresh.to_string());
            0
        } else {
            self.bytes.len() as u64
        };
        text.extend_from_slice(&line);
        let end = at + text.len() as u64;
        let written = file
            .write_all_at(&text, at)
            .and_then(|()| match self.len > end {
                true => file.set_len(end),
                false => Ok(()),
            })
            .and_then(|()| match sync {
                true => file.sync_data(),
                false => Ok(()),
            });
        if let Err(e) = written {
            let _ = file.set_len(at);
            if at == 0 {
                self.token = None;
            }
            return Err(Error::Invalid(format!("cannot append to the journal: {e}")));
        }
        if at == 0 {
            self.bytes.clear();
        }
        self.bytes.extend_from_slice(&text);
        self.records.push(record.clone());
        self.len = end;
        self.is_journal = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::Kind;

    const TOKEN: &str = "00112233aabbccdd";

    fn identity() -> Identity {
        Identity {
            dev: 2049,
            ino: 77,
            size: 4096,
            mtime_ns: 1_700_000_000_123_456_789,
        }
    }

    fn claim(machine: &str, label: &str) -> Record {
        let mut event = Event::new(Kind::Claimed, machine);
        event.seq = 7;
        Record::new(
            vec![
                Change::Set {
                    machine: machine.into(),
                    field: Field::Job,
                    value: label.into(),
                },
                Change::Unset {
                    machine: machine.into(),
                    field: Field::JobHost,
                },
            ],
            &[event],
        )
        .expect("a record")
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().expect("a temporary file");
        std::io::Write::write_all(&mut file, bytes).expect("write it");
        file
    }

    #[test]
    fn records_read_back_as_written() {
        let file = file_with(b"");
        let mut journal = Journal::read(&file, identity(), None).expect("read");
        assert!(journal.records.is_empty() && !journal.is_journal);
        let (a, b) = (claim("m0", "one \"quoted\"\nline"), claim("m1", "two"));
        journal.append(&file, &a, false, TOKEN).expect("append");
        journal.append(&file, &b, true, TOKEN).expect("append");
        let again = Journal::read(&file, identity(), None).expect("read");
        assert_eq!(again.records, vec![a.clone(), b]);
        assert_eq!(again.records[0].events(), a.events());
        assert_eq!(again.events().len(), 2);
        assert_eq!(again.last_seq(), Some(7));
        assert_eq!(again.bytes, journal.bytes);
        assert!(!again.needs_emptying());
    }

    #[test]
    fn a_journal_the_state_has_folded_is_stale() {
        let file = file_with(b"");
        let mut journal = Journal::read(&file, identity(), None).expect("read");
        journal
            .append(&file, &claim("m0", "x"), false, TOKEN)
            .expect("append");
        let stale = Journal::read(&file, identity(), Some(TOKEN)).expect("read");
        assert!(stale.records.is_empty() && stale.bytes.is_empty() && stale.token.is_none());
        assert!(stale.is_journal && stale.needs_emptying());
        // Another state's token: it applies.
        let live = Journal::read(&file, identity(), Some("99")).expect("read");
        assert_eq!(live.records, vec![claim("m0", "x")]);
        // A writer after the fold starts the journal afresh, new token.
        let mut fresh = stale;
        fresh
            .append(&file, &claim("m1", "y"), false, "0000000000000001")
            .expect("append");
        let read = Journal::read(&file, identity(), Some(TOKEN)).expect("read");
        assert_eq!(read.records, vec![claim("m1", "y")]);
        assert_eq!(read.token.as_deref(), Some("0000000000000001"));
        assert_eq!(read.len, read.bytes.len() as u64);
    }

    #[test]
    fn records_stop_at_the_first_damaged_one() {
        let file = file_with(b"");
        let mut journal = Journal::read(&file, identity(), None).expect("read");
        for n in 0..3 {
            journal
                .append(&file, &claim(&format!("m{n}"), "x"), false, TOKEN)
                .expect("append");
        }
        let whole = journal.bytes.clone();
        // A flipped byte in the second record, then a record cut short.
        let lines: Vec<usize> = whole
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .map(|(i, _)| i)
            .collect();
        let mut damaged = whole.clone();
        damaged[lines[1] + 30] ^= 0x20;
        let read = Journal::read(&file_with(&damaged), identity(), None).expect("read");
        assert_eq!(read.records, vec![claim("m0", "x")]);
        assert_eq!(read.bytes, whole[..=lines[1]]);
        assert!(read.needs_emptying());
        let cut = &whole[..whole.len() - 5];
        let read = Journal::read(&file_with(cut), identity(), None).expect("read");
        assert_eq!(read.records.len(), 2);
        // The next append goes after the whole records, the rest cut away.
        let file = file_with(cut);
        let mut journal = Journal::read(&file, identity(), None).expect("read");
        journal
            .append(&file, &claim("m9", "z"), false, TOKEN)
            .expect("append");
        let read = Journal::read(&file, identity(), None).expect("read");
        assert_eq!(read.records.len(), 3);
        assert_eq!(read.records[2], claim("m9", "z"));
        assert!(!read.needs_emptying());
    }

    #[test]
    fn a_roll_forward_copy_is_no_journal() {
        let file = file_with(b"mama roll-forward 1 5 0123456789abcdef\n<x/>\n");
        let read = Journal::read(&file, identity(), None).expect("read");
        assert!(!read.is_journal && !read.needs_emptying() && read.records.is_empty());
    }

    #[test]
    fn only_job_fields_may_be_journaled() {
        let set = |field| Change::Set {
            machine: "m".into(),
            field,
            value: "v".into(),
        };
        assert!(may_journal(&set(Field::JobQueue)));
        assert!(!may_journal(&set(Field::Reservation)));
        assert!(!may_journal(&Change::Remove("m".into())));
        assert!(Record::new(vec![set(Field::Ip)], &[]).is_err());
        // A line that names another field is damaged, hash or not.
        let json = r#"{"changes":[["set","m","ip","v"]]}"#;
        let line = format!("{:016x} {json}", fnv1a_64(json.as_bytes()));
        assert!(Record::decode(line.as_bytes()).is_none());
    }

    #[test]
    fn keep_drops_the_records_after() {
        let file = file_with(b"");
        let mut journal = Journal::read(&file, identity(), None).expect("read");
        journal
            .append(&file, &claim("m0", "a"), false, TOKEN)
            .expect("append");
        let first = journal.bytes.clone();
        journal
            .append(&file, &claim("m1", "b"), false, TOKEN)
            .expect("append");
        journal.keep(1);
        assert_eq!(journal.bytes, first);
        assert_eq!(journal.records, vec![claim("m0", "a")]);
    }
}
