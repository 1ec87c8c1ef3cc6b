//! The history of the lab: who held what, and every other change.
//!
//! Each event carries a sequence number. An event is committed by the state
//! file's rename, like the change it describes: it goes into the state's
//! `<pending_events>`, and `<event_seq>` becomes its number. The log beside
//! the state file (`<state>.log`, one JSON object a line) only ever receives
//! events that are already committed, so no line of it is ever taken back:
//!
//! 1. a new event is numbered after the state's `<event_seq>`, its pending
//!    events and the log's last whole line, whichever is newest, so numbers
//!    go on after the whole history even when an older copy of the state
//!    file is put back;
//! 2. when a transaction starts with [`FLUSH_AT`] pending events (committed
//!    by an earlier rename), it appends those numbered after the log's last
//!    whole line, syncs the log, and drops them all from the state, whose
//!    rename commits that.
//!
//! Readers take every whole line of the log, then the state's pending events
//! numbered after the log's last one: an event in both (a writer killed
//! between appending and renaming) is read once. The
//! only line ever dropped is a last one without its newline, cut by a writer
//! killed mid-append; its events are still pending in the state, and are
//! appended again.
//!
//! The log is kept in segments: when a flush finds the live log
//! (`<state>.log`) past its segment size ([`segment_size`]), it renames it
//! whole to `<state>.log.N`, N the number of its first event (one rename:
//! a writer killed at any instant leaves the lines in the one file or the
//! other), and the next append makes a new live log. Readers read the
//! segments oldest first, then the live log. Each flush then drops the
//! oldest segments, whole, that the lab's retention
//! ([`Retention`]) no longer keeps: those whose newest event is older
//! than its days, and the oldest while the history is larger than its
//! size. The live log is never dropped.

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::file::fsutil::Dir;
use crate::error::{Error, Result};
use crate::model::event::{Brief, Event};
use crate::model::setting::Retention;

/// The state file keeps its committed events until this many have gathered;
/// the next transaction then moves them to the log together and syncs it:
/// most transactions sync one file, as they would without a history.
pub const FLUSH_AT: usize = 32;

/// The live log is rotated into a segment when a flush finds it past this
/// many bytes (some 80,000 events), or past [`segment_size`] where the
/// lab keeps less history.
pub const SEGMENT: u64 = 16 << 20;
/// A segment is never smaller than this.
const MIN_SEGMENT: u64 = 64 << 10;
/// A log file (the live log or a segment) this long is not one mama wrote
/// (it rotates past [`SEGMENT`]): mama refuses it rather than read it, so
/// a planted huge or sparse file can never make every command read
/// gigabytes with the lab locked.
pub const MAX_LOG: u64 = 4 * SEGMENT;

/// The size past which the live log is rotated, for a lab that keeps
/// `retention`: [`SEGMENT`], or an eighth of its size where that is less
/// (so the size limit drops an eighth of the history at a time, at most),
/// but at least 64 KiB.
pub fn segment_size(retention: &Retention) -> u64 {
    (retention.max_size / 8).clamp(MIN_SEGMENT, SEGMENT)
}

/// The event log of one state file: the file `name` in the lab's folder
/// `dir`, and its segments beside it.
#[derive(Debug, Clone)]
pub struct History {
    dir: Arc<Dir>,
    name: OsString,
    /// Its path, for messages.
    path: PathBuf,
}

pub use crate::model::event::{decode, encode};

/// The end of the log, as [`scan_back`] reads it.
struct Tail {
    /// The log's length.
    len: u64,
    /// Its length up to its last newline: a last line without one (cut by a
    /// writer killed mid-append) is not part of it.
    whole: u64,
    /// The events of the whole lines read, newest first.
    events: Vec<Event>,
}

impl Tail {
    /// The number of the log's last whole event.
    fn last_seq(&self) -> Option<u64> {
        self.events.first().map(|e| e.seq)
    }
}

/// The committed events a state holds until they move to the log, as the
/// JSON lines it holds them in (its `<pending_events>`): a transaction
/// counts them and finds the newest number without reading them whole,
/// and adds its own lines after them, so that the lines held are written
/// back as they were, a newer mama's fields and all. They are read whole
/// only when they move to the log.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    /// The lines the state holds.
    held: String,
    /// Whether they moved to the log: then the state keeps only `added`.
    flushed: bool,
    /// The lines of the events this transaction adds.
    added: String,
}

/// An event's number, all a count of the pending events needs of it.
#[derive(serde::Deserialize)]
struct Numbered {
    seq: u64,
}

impl Pending {
    /// The pending events the state holds as `text`.
    pub fn of(text: String) -> Pending {
        Pending {
            held: text,
            ..Pending::default()
        }
    }

    /// The lines the state still holds: none once they moved to the log.
    fn held(&self) -> &str {
        if self.flushed { "" } else { &self.held }
    }

    fn lines(&self) -> impl Iterator<Item = &str> {
        self.held().lines().filter(|line| !line.trim().is_empty())
    }

    /// How many events the state holds (a line that is not one counts too:
    /// it is dropped when they move to the log).
    pub fn count(&self) -> usize {
        self.lines().count()
    }

    /// The newest number among them: of every line readers take for an
    /// event (an object, or, as serde reads one too, an array of its
    /// fields in order) and of every other object with a `seq`.
    fn newest(&self) -> Option<u64> {
        self.lines()
            .filter_map(|line| match serde_json::from_str::<Numbered>(line) {
                Ok(numbered) => Some(numbered.seq),
                Err(_) => serde_json::from_str::<Event>(line).ok().map(|e| e.seq),
            })
            .max()
    }

    /// The events the state holds, read whole.
    fn events(&self) -> Vec<Event> {
        decode(self.held())
    }

    /// They moved to the log: the state no longer holds them.
    fn flush(&mut self) {
        self.flushed = true;
    }

    /// Adds `events`' lines, numbered, after the ones held.
    pub fn add(&mut self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let held = self.held();
        if self.added.is_empty() && !held.is_empty() && !held.ends_with('\n') {
            // A last line without its end (a hand's edit): the next starts
            // on a line of its own.
            self.added.push('\n');
        }
        self.added.push_str(&encode(events)?);
        Ok(())
    }

    /// Whether the events held moved to the log: the state then holds
    /// only [`Pending::added`].
    pub fn flushed(&self) -> bool {
        self.flushed
    }

    /// The lines added, to be written after the ones held (or alone,
    /// where they were flushed).
    pub fn added(&self) -> &str {
        &self.added
    }
}

/// A rotated segment of the log: its file's name and the number of its
/// first event.
#[derive(Debug, Clone)]
pub struct Segment {
    pub first: u64,
    pub name: OsString,
}

/// The history as a reader found it under the lab's locks, to be read
/// after they are let go (see [`Frozen::scan`]): the segments then, the
/// live log open and how far its whole lines went, and the state's
/// pending events.
pub struct Frozen {
    history: History,
    segments: Vec<Segment>,
    live: Option<(File, u64)>,
    pending: Vec<Event>,
}

impl History {
    pub fn new(dir: Arc<Dir>, name: impl Into<OsString>) -> History {
        let name = name.into();
        let path = dir.child(&name);
        History { dir, name, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits this transaction's `events` to the state's side of the
    /// history: numbers them after the newest of the state's last number
    /// `seq`, its `pending` events and the log's last whole event, and adds
    /// them to `pending`; returns the new last number and the events,
    /// numbered. When `pending` holds [`FLUSH_AT`] events (committed by an
    /// earlier rename), they first move to the log: the ones it lacks are
    /// appended, the log is synced, and `pending` is emptied; the log is
    /// rotated and pruned as `retention` says (asked only then). Call with
    /// the state lock held, then write the state: its rename commits both.
    pub fn commit(
        &self,
        seq: Option<u64>,
        pending: &mut Pending,
        events: Vec<Event>,
        like: Option<&Metadata>,
        flush: bool,
        retention: impl FnOnce() -> Retention,
    ) -> Result<(u64, Vec<Event>)> {
        let logged = self.last_seq()?;
        let mut last = pending
            .newest()
            .into_iter()
            .chain(seq)
            .chain(logged)
            .max()
            .unwrap_or(0);
        if flush && pending.count() >= FLUSH_AT {
            self.append_after_last(&pending.events(), Some(&retention()), like)?;
            pending.flush();
        }
        let mut numbered = Vec::with_capacity(events.len());
        for mut event in events {
            last = last.checked_add(1).ok_or_else(|| {
                Error::Invalid(format!(
                    "cannot number a new event: the numbers recorded with {} have run out",
                    self.path.display()
                ))
            })?;
            event.seq = last;
            numbered.push(event);
        }
        pending.add(&numbered)?;
        Ok((last, numbered))
    }

    /// Appends the `committed` events numbered after the log's last whole
    /// event, in order. With a `flush` retention, a long log is rotated and
    /// old segments dropped first, and the log is synced even when nothing
    /// was appended (a killed writer may have appended without syncing).
    fn append_after_last(
        &self,
        committed: &[Event],
        flush: Option<&Retention>,
        like: Option<&Metadata>,
    ) -> Result<()> {
        let (mut file, mut last) = self.prepare(flush, like)?;
        let mut missing = Vec::new();
        for event in committed {
            if last.is_none_or(|l| event.seq > l) {
                last = Some(event.seq);
                missing.push(event.clone());
            }
        }
        if missing.is_empty() && flush.is_none() {
            return Ok(());
        }
        let io = |e| Error::io("write the event log", &self.path, e);
        let text = encode(&missing)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        if flush.is_some() {
            file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    /// Opens the live log for appending: drops a last line without its
    /// newline (its events are still pending in the state) and, with a
    /// `retention`, rotates it when it is past its segment size and drops
    /// the segments the retention no longer keeps. Returns the file and the
    /// number of the last whole event logged (in a segment, where the live
    /// log holds none).
    fn prepare(
        &self,
        retention: Option<&Retention>,
        like: Option<&Metadata>,
    ) -> Result<(File, Option<u64>)> {
        let mut file = self.open_for_append(like)?;
        let io = |e| Error::io("write the event log", &self.path, e);
        let tail = scan_back(&mut file, |_| true).map_err(io)?;
        if tail.whole < tail.len {
            file.set_len(tail.whole).map_err(io)?;
        }
        let last = match tail.last_seq() {
            Some(seq) => Some(seq),
            None => self.last_in_segments()?,
        };
        if let Some(retention) = retention {
            if tail.whole > segment_size(retention) {
                match self.rotate(&mut file) {
                    Ok(true) => file = self.open_for_append(like)?,
                    Ok(false) => {}
                    // A folder this user may not write (PHP mama's layout,
                    // with the log added by its owner): the log cannot be
                    // renamed, so it grows on, and the folder's owner
                    // rotates it.
                    Err(Error::ReadOnly { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            match self.prune(retention) {
                Ok(()) | Err(Error::ReadOnly { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((file, last))
    }

    /// Renames the live log `file` whole to the segment named after its
    /// first event. False when there is no event in it, or a segment of
    /// that name is there already (then the log grows on; nothing is
    /// replaced).
    fn rotate(&self, file: &mut File) -> Result<bool> {
        let io = |e| Error::io("rotate the event log", &self.path, e);
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut first = None;
        let mut reader = io::BufReader::new(Read::by_ref(file).take(MAX_LOG));
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = io::BufRead::read_until(&mut reader, b'\n', &mut line).map_err(io)?;
            if read == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if let Ok(event) = serde_json::from_slice::<Brief<'_>>(&line) {
                first = Some(event.seq);
                break;
            }
        }
        let Some(first) = first else {
            return Ok(false);
        };
        self.dir.rename_aside(&self.name, &self.segment_name(first))
    }

    /// Drops the oldest segments while the history is larger than
    /// `retention` keeps, or their newest event is older than its days.
    fn prune(&self, retention: &Retention) -> Result<()> {
        let segments = self.segments()?;
        if segments.is_empty() {
            return Ok(());
        }
        let size_of = |name: &std::ffi::OsStr| -> Result<u64> {
            Ok(match self.dir.open_file(name, false)? {
                Some(file) => file
                    .metadata()
                    .map_err(|e| Error::io("read", &self.dir.child(name), e))?
                    .len(),
                None => 0,
            })
        };
        let mut sizes = Vec::with_capacity(segments.len());
        for segment in &segments {
            sizes.push(size_of(&segment.name)?);
        }
        let mut total: u64 = sizes.iter().sum::<u64>() + size_of(&self.name)?;
        let cutoff = retention
            .keep_days
            .map(|days| crate::os::now().saturating_sub((days as i64).saturating_mul(86400)));
        for (segment, size) in segments.iter().zip(sizes) {
            let too_old = match cutoff {
                Some(cutoff) => self.newest_time(&segment.name)?.is_some_and(|t| t < cutoff),
                None => false,
            };
            if total <= retention.max_size && !too_old {
                break;
            }
            self.dir.remove_file(&segment.name)?;
            total = total.saturating_sub(size);
        }
        Ok(())
    }

    /// The time of the newest event of segment `name`.
    fn newest_time(&self, name: &std::ffi::OsStr) -> Result<Option<i64>> {
        let path = self.dir.child(name);
        let Some(mut file) = self.dir.open_file(name, false)? else {
            return Ok(None);
        };
        let tail = scan_back(&mut file, |_| true)
            .map_err(|e| Error::io("read the event log", &path, e))?;
        Ok(tail.events.first().map(|e| e.time))
    }

    fn segment_name(&self, first: u64) -> OsString {
        let mut name = self.name.clone();
        name.push(format!(".{first}"));
        name
    }

    /// The log's segments, oldest first: the files beside it named
    /// `<log>.N`, N a number.
    pub fn segments(&self) -> Result<Vec<Segment>> {
        let prefix = self.name.as_bytes();
        let names = self
            .dir
            .entries_with_inodes(|_| true)
            .map_err(|e| Error::io("list the folder", self.dir.path(), e))?;
        let mut segments: Vec<Segment> = names
            .into_iter()
            .filter_map(|name| {
                let rest = name.as_bytes().strip_prefix(prefix)?.strip_prefix(b".")?;
                if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                let first = std::str::from_utf8(rest).ok()?.parse().ok()?;
                Some(Segment { first, name })
            })
            .collect();
        segments.sort_by_key(|s| s.first);
        Ok(segments)
    }

    /// The number of the newest event of the segments.
    fn last_in_segments(&self) -> Result<Option<u64>> {
        for segment in self.segments()?.iter().rev() {
            let path = self.dir.child(&segment.name);
            let Some(mut file) = self.dir.open_file(&segment.name, false)? else {
                continue;
            };
            let tail = scan_back(&mut file, |_| true)
                .map_err(|e| Error::io("read the event log", &path, e))?;
            if let Some(seq) = tail.last_seq() {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    /// Opens the live log for reading and writing, creating it made like
    /// the state file; never through a link planted in its place.
    fn open_for_append(&self, like: Option<&Metadata>) -> Result<File> {
        match self.dir.open_or_create(&self.name, like) {
            // Not refused when past MAX_LOG, unlike a reader's: a writer
            // reads only its end (see `lines_back`), and a log that could
            // not be rotated must not stop every write to the lab.
            Ok((file, _)) => Ok(file),
            // A log this user may not write though they may write the state
            // (made before the state file was shared, say): replace it with
            // a copy made like the state file, as the state itself is.
            Err(Error::ReadOnly { context, source }) => {
                let copied = self
                    .open_to_read()
                    .and_then(|file| {
                        let mut old = Vec::new();
                        if let Some(mut file) = file {
                            file.read_to_end(&mut old)
                                .map_err(|e| Error::io("read", &self.path, e))?;
                        }
                        self.replace(&old, like)
                    })
                    .and_then(|()| self.dir.open_or_create(&self.name, like));
                match copied {
                    Ok((file, _)) => Ok(file),
                    Err(_) => Err(Error::ReadOnly { context, source }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The live log, opened to read (never through a link); `None` when
    /// there is none.
    fn open_to_read(&self) -> Result<Option<File>> {
        self.dir
            .open_file(&self.name, false)?
            .map(|file| bounded(file, &self.path))
            .transpose()
    }

    /// Replaces the live log with `bytes` (a fresh temporary file, sync,
    /// rename), made like the state file.
    fn replace(&self, bytes: &[u8], like: Option<&Metadata>) -> Result<()> {
        // Hidden, like the state's temporary file; one name, so a killed
        // writer's leftover is removed by the next.
        let mut temp = OsString::from(".");
        temp.push(&self.name);
        temp.push(".tmp");
        self.dir.replace(&self.name, &temp, bytes, like, None)
    }

    /// The number of the newest whole event logged, if any.
    pub fn last_seq(&self) -> Result<Option<u64>> {
        // Its end only (see `lines_back`): not refused when past MAX_LOG.
        if let Some(mut file) = self.dir.open_file(&self.name, false)? {
            let tail = scan_back(&mut file, |_| true)
                .map_err(|e| Error::io("read the event log", &self.path, e))?;
            if let Some(seq) = tail.last_seq() {
                return Ok(Some(seq));
            }
        }
        self.last_in_segments()
    }

    /// Every committed event (or those numbered after `after`), oldest
    /// first: the log's whole lines, then the state's `pending` events
    /// numbered after the log's last event. Call with the state that holds
    /// `pending` locked.
    pub fn read(&self, after: Option<u64>, pending: Vec<Event>) -> Result<Vec<Event>> {
        let (mut events, logged) = match after {
            Some(after) => self.read_after(after)?,
            None => {
                let events = self.read_all()?;
                let logged = events.last().map(|e| e.seq);
                (events, logged)
            }
        };
        let from = logged.max(after);
        events.extend(
            pending
                .into_iter()
                .filter(|e| from.is_none_or(|from| e.seq > from)),
        );
        Ok(events)
    }

    /// The log's files, oldest first, each opened to read (a segment
    /// dropped meanwhile is passed over), with their paths.
    fn files(&self) -> Result<Vec<(File, PathBuf)>> {
        let mut files = Vec::new();
        for segment in self.segments()? {
            let path = self.dir.child(&segment.name);
            if let Some(file) = self.dir.open_file(&segment.name, false)? {
                files.push((bounded(file, &path)?, path));
            }
        }
        if let Some(file) = self.open_to_read()? {
            files.push((file, self.path.clone()));
        }
        Ok(files)
    }

    /// The events of the log's whole lines, oldest first, across its
    /// segments (each number once).
    fn read_all(&self) -> Result<Vec<Event>> {
        let mut events: Vec<Event> = Vec::new();
        for (mut file, path) in self.files()? {
            let bytes = read_whole_lines(&mut file, None)
                .map_err(|e| Error::io("read the event log", &path, e))?;
            for line in bytes.split(|&b| b == b'\n') {
                if let Ok(event) = serde_json::from_slice::<Event>(line)
                    && events.last().is_none_or(|last| event.seq > last.seq)
                {
                    events.push(event);
                }
            }
        }
        Ok(events)
    }

    /// Looks at the log's whole lines newest first, across its segments
    /// (the newest `segments` of them at most), until `visit` says stop.
    /// Returns whether it stopped.
    fn lines_back_all(
        &self,
        segments: usize,
        visit: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<bool> {
        let mut stopped = false;
        let mut visit_file = |file: &mut File, path: &Path| -> Result<bool> {
            lines_back(file, |line| {
                stopped = visit(line);
                stopped
            })
            .map_err(|e| Error::io("read the event log", path, e))?;
            Ok(stopped)
        };
        // From their ends, no further back than MAX_LOG (`lines_back`):
        // a log grown past it is read here, not refused.
        if let Some(mut file) = self.dir.open_file(&self.name, false)?
            && visit_file(&mut file, &self.path)?
        {
            return Ok(true);
        }
        for segment in self.segments()?.iter().rev().take(segments) {
            let path = self.dir.child(&segment.name);
            let Some(mut file) = self.dir.open_file(&segment.name, false)? else {
                continue;
            };
            if visit_file(&mut file, &path)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The newest `count` committed events of `machine`, oldest first: the
    /// state's `pending` events after the log's last one, then the log read
    /// from its end back only as far as it takes, and no further than the
    /// live log and the newest segment (a machine that has done nothing for
    /// some 80,000 events shows fewer; a line is decoded only when it names
    /// the machine, or when it is the log's last event).
    pub fn recent(&self, machine: &str, count: usize, pending: Vec<Event>) -> Result<Vec<Event>> {
        let mut logged = Vec::new();
        let mut last = None;
        let needle = serde_json::to_string(machine)
            .map_err(|e| Error::Invalid(format!("cannot encode a machine name: {e}")))?;
        let needle = needle.as_bytes();
        self.lines_back_all(1, &mut |line| {
            let named = line.windows(needle.len()).any(|w| w == needle);
            if last.is_some() && !named {
                return false;
            }
            let Ok(event) = serde_json::from_slice::<Event>(line) else {
                return false;
            };
            last = last.or(Some(event.seq));
            if event.machine == machine && count > 0 {
                logged.push(event);
            }
            logged.len() >= count
        })?;
        logged.reverse();
        logged.extend(
            pending
                .into_iter()
                .filter(|e| e.machine == machine && last.is_none_or(|last| e.seq > last)),
        );
        let skip = logged.len().saturating_sub(count);
        Ok(logged.split_off(skip))
    }

    /// The log's events numbered after `after`, oldest first, and the number
    /// of its last event; reads only the end of the log.
    fn read_after(&self, after: u64) -> Result<(Vec<Event>, Option<u64>)> {
        let mut events: Vec<Event> = Vec::new();
        self.lines_back_all(
            usize::MAX,
            &mut |line| match serde_json::from_slice::<Event>(line) {
                Ok(event) if event.seq <= after => true,
                Ok(event) => {
                    events.push(event);
                    false
                }
                Err(_) => false,
            },
        )?;
        let logged = match events.first() {
            Some(e) => Some(e.seq),
            None => self.last_seq()?,
        };
        events.reverse();
        Ok((events, logged))
    }

    /// The history as it stands, to read once the lab's locks are let go
    /// ([`Frozen::scan`]): the segments' names, the live log open, and
    /// the state's `pending` events. Call under the locks.
    pub fn freeze(&self, pending: Vec<Event>) -> Result<Frozen> {
        let segments = self.segments()?;
        let live = match self.open_to_read()? {
            Some(mut file) => {
                let len = file
                    .seek(SeekFrom::End(0))
                    .map_err(|e| Error::io("read the event log", &self.path, e))?;
                Some((file, len))
            }
            None => None,
        };
        Ok(Frozen {
            history: self.clone(),
            segments,
            live,
            pending,
        })
    }
}

impl Frozen {
    /// Gives every committed event to `visit`, oldest first, as statistics
    /// read it (each number once): the segments (one dropped since the
    /// history was frozen is passed over), the live log as far as it went
    /// then (its file stays the same even when it has been rotated since),
    /// then the pending events.
    pub fn scan(self, visit: &mut dyn FnMut(&Brief<'_>)) -> Result<()> {
        let mut last: Option<u64> = None;
        let pending = self.read_lines(None, &mut |line| {
            if let Ok(event) = serde_json::from_slice::<Brief<'_>>(line)
                && last.is_none_or(|l| event.seq > l)
            {
                last = Some(event.seq);
                visit(&event);
            }
        })?;
        for event in &pending {
            if last.is_none_or(|l| event.seq > l) {
                last = Some(event.seq);
                visit(&event.brief());
            }
        }
        Ok(())
    }

    /// Gives the committed events to `visit` whole, oldest first, as
    /// [`Frozen::scan`] does; with `since`, a segment whose newest event
    /// is older is passed over unread (its events are not wanted).
    pub fn each(self, since: Option<i64>, visit: &mut dyn FnMut(Event)) -> Result<()> {
        let mut last: Option<u64> = None;
        let pending = self.read_lines(since, &mut |line| {
            if let Ok(event) = serde_json::from_slice::<Event>(line)
                && last.is_none_or(|l| event.seq > l)
            {
                last = Some(event.seq);
                visit(event);
            }
        })?;
        for event in pending {
            if last.is_none_or(|l| event.seq > l) {
                last = Some(event.seq);
                visit(event);
            }
        }
        Ok(())
    }

    /// Gives each whole line of the segments, then of the live log, to
    /// `visit`, oldest first; returns the pending events. With `since`, the
    /// segments whose newest event is older are passed over.
    fn read_lines(self, since: Option<i64>, visit: &mut dyn FnMut(&[u8])) -> Result<Vec<Event>> {
        let history = &self.history;
        for segment in &self.segments {
            if let Some(since) = since
                && history
                    .newest_time(&segment.name)?
                    .is_some_and(|t| t < since)
            {
                continue;
            }
            let path = history.dir.child(&segment.name);
            let Some(file) = history.dir.open_file(&segment.name, false)? else {
                continue;
            };
            let bytes = read_whole_lines(&mut bounded(file, &path)?, None)
                .map_err(|e| Error::io("read the event log", &path, e))?;
            bytes.split(|&b| b == b'\n').for_each(&mut *visit);
        }
        if let Some((mut file, len)) = self.live {
            let bytes = read_whole_lines(&mut file, Some(len))
                .map_err(|e| Error::io("read the event log", &history.path, e))?;
            bytes.split(|&b| b == b'\n').for_each(&mut *visit);
        }
        Ok(self.pending)
    }
}

/// `file` (a log file) if it is no longer than [`MAX_LOG`].
fn bounded(file: File, path: &Path) -> Result<File> {
    let len = file
        .metadata()
        .map_err(|e| Error::io("read", path, e))?
        .len();
    if len > MAX_LOG {
        return Err(Error::Invalid(format!(
            "{} is {len} bytes, and mama rotates its log at {SEGMENT}: it is not a log \
             mama wrote (move it aside)",
            path.display()
        )));
    }
    Ok(file)
}

/// The file's bytes from its start up to its last newline (or up to `len`
/// first): its whole lines.
fn read_whole_lines(file: &mut File, len: Option<u64>) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    Read::by_ref(file)
        .take(len.unwrap_or(MAX_LOG))
        .read_to_end(&mut bytes)?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(whole);
    Ok(bytes)
}

/// Visits the log's whole lines from the end backwards (newest first,
/// without their newline) until `visit` says stop. Only the end of the log
/// is read unless the line sought lies further back: a window of 4 KiB,
/// then each time four times wider, never further back than [`MAX_LOG`]
/// from the end (a log that could not be rotated may grow past it; a
/// planted sparse file is never read whole). Returns the log's length and
/// where its whole lines end. (Each claim and release asks for the last event alone,
/// which a page holds: a first window of 16 KiB read the whole of a short
/// log, twice a run.)
fn lines_back(file: &mut File, mut visit: impl FnMut(&[u8]) -> bool) -> io::Result<(u64, u64)> {
    let len = file.seek(SeekFrom::End(0))?;
    let floor = len.saturating_sub(MAX_LOG);
    let mut window = 4 * 1024u64;
    // Where the lines already visited start: the next window ends there.
    let mut done = None;
    let mut whole = 0;
    loop {
        let start = len.saturating_sub(window).max(floor);
        let mut buf = Vec::with_capacity((len - start) as usize);
        file.seek(SeekFrom::Start(start))?;
        Read::by_ref(file).take(len - start).read_to_end(&mut buf)?;
        let mut line_end = match done {
            Some(at) => (at - start) as usize,
            None => match buf.iter().rposition(|&b| b == b'\n') {
                Some(i) => {
                    whole = start + i as u64 + 1;
                    i + 1
                }
                // Not one whole line yet.
                None if start == 0 => return Ok((len, 0)),
                // No line in its last MAX_LOG bytes: no log of mama's.
                None if start == floor => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "it is {len} bytes with no line in its last {MAX_LOG}: \
                             it is not a log mama wrote (move it aside)"
                        ),
                    ));
                }
                None => {
                    window = window.saturating_mul(4);
                    continue;
                }
            },
        };
        // The first piece of a window that does not start the file may be
        // cut, so it waits for the next window.
        while line_end > 0 {
            let line_start = buf[..line_end - 1]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            if line_start == 0 && start > 0 {
                break;
            }
            if visit(&buf[line_start..line_end - 1]) {
                return Ok((len, whole));
            }
            line_end = line_start;
        }
        if start == floor {
            return Ok((len, whole));
        }
        done = Some(start + line_end as u64);
        window = window.saturating_mul(4);
    }
}

/// Reads the log's whole lines from the end backwards until one is an event
/// that satisfies `stop` (that one included). Only the end of the log is
/// read unless the line sought lies further back.
fn scan_back(file: &mut File, stop: impl Fn(&Event) -> bool) -> io::Result<Tail> {
    let mut events = Vec::new();
    let (len, whole) = lines_back(file, |line| match serde_json::from_slice::<Event>(line) {
        Ok(event) => {
            let done = stop(&event);
            events.push(event);
            done
        }
        Err(_) => false,
    })?;
    Ok(Tail { len, whole, events })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::Kind;
    use std::fs;

    /// A log in a fresh temporary folder.
    fn fresh() -> (tempfile::TempDir, History) {
        let dir = tempfile::tempdir().expect("temporary folder");
        let folder = Dir::open(dir.path()).expect("the folder");
        let history = History::new(Arc::new(folder), "mama.xml.log");
        (dir, history)
    }

    fn set_event(value: &str) -> Event {
        Event::new(Kind::Set, "rig1").detail(format!("os={value}"))
    }

    /// The log's lines as written, each parsed.
    fn lines(history: &History) -> Vec<Event> {
        let text = fs::read_to_string(history.path()).expect("read the log");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "a cut last line: {text:?}"
        );
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    /// Events `range`, numbered, as a writer would have committed them.
    fn numbered(range: std::ops::RangeInclusive<u64>, pad: usize) -> Vec<Event> {
        range
            .map(|seq| {
                let mut event = set_event(&format!("{seq}-{}", "x".repeat(pad)));
                event.seq = seq;
                event
            })
            .collect()
    }

    /// A log of events `range`; returns its text.
    fn seed(history: &History, range: std::ops::RangeInclusive<u64>, pad: usize) -> Vec<u8> {
        let text = encode(&numbered(range, pad)).expect("encode").into_bytes();
        fs::write(history.path(), &text).expect("write the log");
        text
    }

    /// What the state file holds of the history.
    #[derive(Debug, Default)]
    struct State {
        seq: Option<u64>,
        pending: Vec<Event>,
        /// The lab's retention (the default where none is set).
        retention: Option<Retention>,
    }

    impl State {
        /// A state that committed `pending` (numbered), the last being its
        /// number.
        fn holding(pending: Vec<Event>) -> State {
            State {
                seq: pending.last().map(|e| e.seq),
                pending,
                retention: None,
            }
        }

        /// One transaction recording `values` as [`crate::backend::file`]
        /// runs it: commit, then the rename. Returns the numbers.
        fn record(&mut self, history: &History, values: &[&str]) -> Vec<u64> {
            let mut pending = Pending::of(encode(&self.pending).expect("encode"));
            let events = values.iter().map(|v| set_event(v)).collect();
            let (last, new) = history
                .commit(self.seq, &mut pending, events, None, true, || {
                    self.retention.unwrap_or_default()
                })
                .expect("commit");
            let numbers = seqs(&new);
            // The rename.
            if pending.flushed() {
                self.pending.clear();
            }
            assert_eq!(pending.added(), encode(&new).expect("encode"));
            self.pending.extend(new);
            self.seq = Some(last);
            numbers
        }

        /// Every event, as readers see them.
        fn read(&self, history: &History) -> Vec<Event> {
            history.read(None, self.pending.clone()).expect("read")
        }

        fn read_after(&self, history: &History, after: u64) -> Vec<Event> {
            history
                .read(Some(after), self.pending.clone())
                .expect("read")
        }
    }

    #[test]
    fn a_new_history_numbers_from_one_and_keeps_the_events_whole() {
        let (_dir, history) = fresh();
        let mut state = State::default();
        assert_eq!(state.record(&history, &["a", "b"]), [1, 2]);
        assert_eq!(state.record(&history, &["c"]), [3]);
        assert_eq!(state.seq, Some(3));
        let read = state.read(&history);
        assert_eq!(seqs(&read), [1, 2, 3]);
        assert_eq!(read, state.pending);
        assert_eq!(read[2].detail.as_deref(), Some("os=c"));
        // The first flush makes the log with the events the state held;
        // the newer ones stay in the state until the next flush.
        assert!(!history.path().exists());
        for i in 3..FLUSH_AT {
            state.record(&history, &[&format!("v{i}")]);
        }
        assert!(!history.path().exists());
        assert_eq!(state.record(&history, &["d"]), [FLUSH_AT as u64 + 1]);
        assert_eq!(state.record(&history, &["e"]), [FLUSH_AT as u64 + 2]);
        let read = state.read(&history);
        assert_eq!(seqs(&read), (1..=FLUSH_AT as u64 + 2).collect::<Vec<_>>());
        assert_eq!(lines(&history), read[..FLUSH_AT]);
        assert_eq!(state.pending[..], read[FLUSH_AT..]);
    }

    #[test]
    fn the_state_holds_its_events_until_a_flush_moves_them() {
        let (_dir, history) = fresh();
        let mut state = State::default();
        for i in 0..FLUSH_AT {
            state.record(&history, &[&format!("v{i}")]);
        }
        assert_eq!(state.pending.len(), FLUSH_AT);
        assert!(!history.path().exists());
        // The next transaction flushes them, and holds only its own.
        assert_eq!(state.record(&history, &["next"]), [FLUSH_AT as u64 + 1]);
        assert_eq!(seqs(&state.pending), [FLUSH_AT as u64 + 1]);
        let all: Vec<u64> = (1..=FLUSH_AT as u64 + 1).collect();
        assert_eq!(seqs(&lines(&history)), all[..FLUSH_AT]);
        assert_eq!(seqs(&state.read(&history)), all);
    }

    #[test]
    fn lines_past_the_states_number_are_kept_and_numbered_after() {
        // An older copy of the state put back: it committed 5, the log
        // goes on to 7.
        let (_dir, history) = fresh();
        seed(&history, 1..=7, 0);
        let mut state = State::holding(numbered(4..=5, 0));
        assert_eq!(seqs(&state.read(&history)), (1..=7).collect::<Vec<_>>());
        assert_eq!(seqs(&state.read_after(&history, 5)), [6, 7]);
        assert_eq!(state.record(&history, &["new"]), [8]);
        // The log keeps every line; the new event waits in the state.
        assert_eq!(seqs(&lines(&history)), (1..=7).collect::<Vec<_>>());
        let read = state.read(&history);
        assert_eq!(seqs(&read), (1..=8).collect::<Vec<_>>());
        assert_eq!(read[7].detail.as_deref(), Some("os=new"));
        // Its old pending events, already in the log, are flushed once.
        for i in 0..FLUSH_AT {
            state.record(&history, &[&format!("v{i}")]);
        }
        let n = 8 + FLUSH_AT as u64;
        let logged = seqs(&lines(&history));
        assert!(logged.len() > 8, "{logged:?}");
        assert_eq!(logged, (1..=logged.len() as u64).collect::<Vec<_>>());
        assert_eq!(seqs(&state.read(&history)), (1..=n).collect::<Vec<_>>());
        assert!(state.pending.len() < FLUSH_AT);
    }

    #[test]
    fn a_long_history_past_the_states_number_is_kept_too() {
        let (_dir, history) = fresh();
        // About 300 KiB of events after the 10 the state knows of.
        let text = seed(&history, 1..=1500, 60);
        let mut state = State {
            seq: Some(10),
            pending: Vec::new(),
            retention: None,
        };
        assert_eq!(state.record(&history, &["new"]), [1501]);
        assert_eq!(fs::read(history.path()).expect("read"), text);
        assert_eq!(seqs(&state.read(&history)), (1..=1501).collect::<Vec<_>>());
    }

    #[test]
    fn pending_lines_are_counted_and_kept_as_they_were_written() {
        let (_dir, history) = fresh();
        // A newer mama's field, a line that is no event, the newest number
        // not last, and no end to the last line (a hand's edit).
        let held = concat!(
            r#"{"seq":4,"time":5,"machine":"rig1","event":"set","job":null,"pid":null,"user":"u","host":"h","detail":null,"future":[1]}"#,
            "\n\nnot an event\n",
            r#"{"seq":9,"time":5,"machine":"rig1","event":"set","job":null,"pid":null,"user":"u","host":"h","detail":null}"#,
            "\n",
            r#"{"seq":7,"time":5,"machine":"rig1","event":"set","job":null,"pid":null,"user":"u","host":"h","detail":null}"#,
        );
        let mut pending = Pending::of(held.to_string());
        assert_eq!((pending.count(), pending.newest()), (4, Some(9)));
        let (last, new) = commit_one(&history, Some(2), &mut pending);
        assert_eq!((last, seqs(&new)), (10, vec![10]));
        assert!(!pending.flushed());
        // The held lines stay as they are: the new one follows on a line
        // of its own.
        let whole = format!("{held}{}", pending.added());
        assert!(pending.added().starts_with('\n'), "{:?}", pending.added());
        assert!(whole.contains(r#""future":[1]}"#), "{whole}");
        assert_eq!(seqs(&decode(&whole)), [4, 9, 7, 10]);
        // Without events nothing is added.
        let mut same = Pending::of(held.to_string());
        let (last, new) = history
            .commit(None, &mut same, Vec::new(), None, true, Retention::default)
            .expect("commit");
        assert_eq!((last, new.len(), same.added()), (9, 0, ""));
    }

    #[test]
    fn every_line_readers_take_for_an_event_counts_for_the_next_number() {
        // serde reads an event from a JSON array too (its fields in
        // order): readers take it, so the next number must go after it.
        let held = "[5,5,\"rig1\",\"set\",null,null,\"u\",\"h\",null]\n";
        assert_eq!(seqs(&decode(held)), [5]);
        let (_dir, history) = fresh();
        let mut pending = Pending::of(held.to_string());
        let (last, new) = commit_one(&history, None, &mut pending);
        assert_eq!((last, seqs(&new)), (6, vec![6]));
    }

    /// One transaction's commit of one event after the state's number
    /// `seq` and its `pending` events.
    fn commit_one(history: &History, seq: Option<u64>, pending: &mut Pending) -> (u64, Vec<Event>) {
        history
            .commit(
                seq,
                pending,
                vec![set_event("a")],
                None,
                true,
                Retention::default,
            )
            .expect("commit")
    }

    #[test]
    fn a_crash_after_appending_leaves_no_event_twice() {
        // A flushing writer appended the state's pending events, synced the
        // log and was killed before its rename: the state still holds them.
        let (_dir, history) = fresh();
        let flush = FLUSH_AT as u64;
        let mut state = State::holding(numbered(1..=flush, 0));
        let mut ahead = Pending::of(encode(&state.pending).expect("encode"));
        history
            .commit(
                state.seq,
                &mut ahead,
                vec![set_event("lost")],
                None,
                true,
                Retention::default,
            )
            .expect("commit");
        let appended = fs::read(history.path()).expect("read");
        assert_eq!(seqs(&lines(&history)), (1..=flush).collect::<Vec<_>>());
        // Readers take each event once.
        assert_eq!(state.read(&history), state.pending);
        assert_eq!(
            seqs(&state.read_after(&history, 3)),
            (4..=flush).collect::<Vec<_>>()
        );
        // The next writer does not append them again; the killed writer's
        // own event was never committed and its number is free.
        assert_eq!(state.record(&history, &["next"]), [flush + 1]);
        assert_eq!(seqs(&state.pending), [flush + 1]);
        assert_eq!(fs::read(history.path()).expect("read"), appended);
        assert_eq!(
            seqs(&state.read(&history)),
            (1..=flush + 1).collect::<Vec<_>>()
        );

        // Killed partway: the log has some of them, whole.
        let (_dir, history) = fresh();
        seed(&history, 1..=10, 0);
        let mut state = State::holding(numbered(1..=flush, 0));
        assert_eq!(state.read(&history), state.pending);
        state.record(&history, &["next"]);
        assert_eq!(lines(&history), numbered(1..=flush, 0));
    }

    #[test]
    fn a_half_written_last_line_is_dropped_and_its_events_read_from_the_state() {
        let flush = FLUSH_AT as u64;
        let mut cut = set_event("4-");
        cut.seq = 4;
        let whole = serde_json::to_string(&cut).expect("encode");
        // Cut in the middle, and cut just before its newline.
        for piece in [&whole[..whole.len() / 2], whole.as_str()] {
            let (_dir, history) = fresh();
            let mut torn = seed(&history, 1..=3, 0);
            torn.extend_from_slice(piece.as_bytes());
            fs::write(history.path(), &torn).expect("write");
            // The state holds the events the killed writer was appending.
            let mut state = State::holding(numbered(1..=flush, 0));
            assert_eq!(state.read(&history), state.pending);
            assert_eq!(
                seqs(&state.read_after(&history, 2)),
                (3..=flush).collect::<Vec<_>>()
            );
            assert_eq!(history.last_seq().expect("last"), Some(3));
            // The next flush drops the cut line and appends them whole.
            assert_eq!(state.record(&history, &["next"]), [flush + 1]);
            let written = lines(&history);
            assert_eq!(seqs(&written), (1..=flush).collect::<Vec<_>>());
            assert_eq!(written[3], cut);
        }
        // A writer that does not flush leaves a cut line to the next flush;
        // readers pass over it meanwhile.
        let (_dir, history) = fresh();
        let mut text = seed(&history, 1..=2, 0);
        let mut state = State::holding(numbered(1..=2, 0));
        text.extend_from_slice(b"{\"seq\":3,\"ti");
        fs::write(history.path(), &text).expect("write");
        assert_eq!(state.record(&history, &["c"]), [3]);
        assert_eq!(fs::read(history.path()).expect("read"), text);
        assert_eq!(seqs(&state.read(&history)), [1, 2, 3]);
    }

    #[test]
    fn a_whole_line_that_is_not_an_event_is_kept_and_skipped() {
        let (_dir, history) = fresh();
        let mut text = seed(&history, 1..=3, 0);
        text.extend_from_slice(b"not an event\n");
        fs::write(history.path(), &text).expect("write");
        let mut state = State {
            seq: Some(3),
            pending: Vec::new(),
            retention: None,
        };
        assert_eq!(state.record(&history, &["new"]), [4]);
        let written = fs::read_to_string(history.path()).expect("read");
        assert!(written.contains("\nnot an event\n"), "{written}");
        assert_eq!(seqs(&state.read(&history)), [1, 2, 3, 4]);
        assert_eq!(seqs(&state.read_after(&history, 2)), [3, 4]);
    }

    #[test]
    fn numbering_goes_on_after_the_newest_of_state_and_log() {
        // The log was lost (or trimmed away entirely): the state's number
        // still counts.
        let (_dir, history) = fresh();
        let mut state = State {
            seq: Some(100),
            pending: Vec::new(),
            retention: None,
        };
        assert_eq!(state.record(&history, &["a", "b"]), [101, 102]);
        assert_eq!(seqs(&state.read(&history)), [101, 102]);

        // The log ends before the state's number: no number is used twice.
        let (_dir, history) = fresh();
        seed(&history, 1..=3, 0);
        let mut state = State {
            seq: Some(9),
            pending: Vec::new(),
            retention: None,
        };
        assert_eq!(state.record(&history, &["c"]), [10]);
        assert_eq!(seqs(&state.read(&history)), [1, 2, 3, 10]);

        // A state without a number goes on after the log...
        let (_dir, history) = fresh();
        seed(&history, 1..=4, 0);
        let mut state = State::default();
        assert_eq!(state.record(&history, &["d"]), [5]);
        assert_eq!(seqs(&state.read(&history)), [1, 2, 3, 4, 5]);
        // ... or after the events it holds.
        let mut state = State {
            seq: None,
            pending: numbered(6..=8, 0),
            retention: None,
        };
        assert_eq!(state.record(&history, &["e"]), [9]);
        // (5 was pending only in the other state, never flushed.)
        assert_eq!(seqs(&state.read(&history)), [1, 2, 3, 4, 6, 7, 8, 9]);

        // Numbers that have run out are an error, not a wrap.
        let mut pending = Pending::default();
        let err = history
            .commit(
                Some(u64::MAX),
                &mut pending,
                vec![set_event("f")],
                None,
                true,
                Retention::default,
            )
            .expect_err("no number left");
        assert!(err.to_string().contains("run out"), "{err}");
    }

    #[test]
    fn read_after_returns_only_newer_events() {
        let (_dir, history) = fresh();
        seed(&history, 1..=10, 0);
        let state = State::holding(numbered(9..=12, 0));
        let after = |n| seqs(&state.read_after(&history, n));
        assert_eq!(after(5), [6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(after(0), (1..=12).collect::<Vec<_>>());
        assert_eq!(after(10), [11, 12]);
        assert_eq!(after(11), [12]);
        assert_eq!(after(12), Vec::<u64>::new());
        assert_eq!(after(13), Vec::<u64>::new());
        assert_eq!(seqs(&state.read(&history)), (1..=12).collect::<Vec<_>>());
        // A missing log reads as no events but the state's.
        let (_dir, missing) = fresh();
        assert_eq!(seqs(&state.read_after(&missing, 10)), [11, 12]);
        assert_eq!(seqs(&state.read(&missing)), [9, 10, 11, 12]);
        assert!(State::default().read(&missing).is_empty());
    }

    #[test]
    fn read_after_reaches_back_past_its_first_window() {
        let (_dir, history) = fresh();
        // About 450 KiB: the event sought lies several windows back.
        seed(&history, 1..=3000, 60);
        let state = State {
            seq: Some(3000),
            pending: Vec::new(),
            retention: None,
        };
        let events = state.read_after(&history, 7);
        assert_eq!(seqs(&events), (8..=3000).collect::<Vec<_>>());
        assert_eq!(events, state.read(&history)[7..]);
        assert_eq!(state.read_after(&history, 0).len(), 3000);
    }

    /// A log of whole events from `first` on, past `bytes`; returns the
    /// number of its last event.
    fn seed_past(history: &History, first: u64, bytes: u64) -> u64 {
        let mut text = Vec::new();
        let mut n = first - 1;
        while text.len() as u64 <= bytes {
            n += 1;
            let mut event = set_event(&format!("{n}-{}", "y".repeat(n as usize % 97)));
            event.seq = n;
            text.extend_from_slice(serde_json::to_string(&event).expect("encode").as_bytes());
            text.push(b'\n');
        }
        fs::write(history.path(), &text).expect("write");
        n
    }

    /// The files in the folder, by name.
    fn names(dir: &tempfile::TempDir) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_long_log_is_rotated_whole_and_read_across_its_segments() {
        let (dir, history) = fresh();
        let retention = Retention {
            keep_days: None,
            max_size: 8 << 20,
        };
        // A segment of 1 MiB for a history of 8.
        assert_eq!(segment_size(&retention), 1 << 20);
        let n = seed_past(&history, 1, 1 << 20);
        let before = fs::read(history.path()).expect("read");
        let mut state = State {
            seq: Some(n),
            pending: Vec::new(),
            retention: Some(retention),
        };
        // Transactions that do not flush leave the log as it is.
        for i in 0..FLUSH_AT {
            state.record(&history, &[&format!("p{i}")]);
        }
        assert_eq!(fs::read(history.path()).expect("read"), before);
        // The flush renames the log whole, then appends to a new one.
        let flushed = state.pending.clone();
        state.record(&history, &["after the rotation"]);
        assert_eq!(names(&dir), ["mama.xml.log", "mama.xml.log.1"]);
        assert_eq!(
            fs::read(dir.path().join("mama.xml.log.1")).expect("read"),
            before
        );
        assert_eq!(lines(&history), flushed);
        // Readers see every event once, oldest first, across the files.
        let read = state.read(&history);
        assert_eq!(
            seqs(&read),
            (1..=n + FLUSH_AT as u64 + 1).collect::<Vec<_>>()
        );
        assert_eq!(state.read_after(&history, n - 2).len(), FLUSH_AT + 3);
        assert_eq!(history.last_seq().expect("last"), Some(n + FLUSH_AT as u64));
        let recent = history
            .recent("rig1", 3, state.pending.clone())
            .expect("recent");
        assert_eq!(seqs(&recent), [n + 31, n + 32, n + 33]);
        let mut scanned = Vec::new();
        history
            .freeze(state.pending.clone())
            .expect("freeze")
            .scan(&mut |e| scanned.push(e.seq))
            .expect("scan");
        assert_eq!(scanned, seqs(&read));
    }

    #[test]
    fn a_writer_killed_after_the_rotation_leaves_the_history_whole() {
        let (dir, history) = fresh();
        let n = seed_past(&history, 1, 4096);
        // Killed between the rename and the new log: only the segment.
        fs::rename(history.path(), dir.path().join("mama.xml.log.1")).expect("rename");
        assert_eq!(history.last_seq().expect("last"), Some(n));
        let mut state = State {
            seq: Some(n - 1),
            pending: numbered(n - 1..=n + 30, 0),
            retention: None,
        };
        assert_eq!(state.pending.len(), FLUSH_AT);
        // Numbering goes on after the segment's last event, and the flush
        // appends only what the segment lacks.
        assert_eq!(state.record(&history, &["next"]), [n + 31]);
        assert_eq!(seqs(&lines(&history)), (n + 1..=n + 30).collect::<Vec<_>>());
        assert_eq!(
            seqs(&state.read(&history)),
            (1..=n + 31).collect::<Vec<_>>()
        );
    }

    #[test]
    fn old_segments_are_dropped_whole_by_size_and_by_age() {
        let (dir, history) = fresh();
        // Three segments of some 64 KiB and a live log; the oldest
        // segment's events are two days old.
        let mut first = 1;
        let mut starts = Vec::new();
        for i in 0..4 {
            let last = seed_past(&history, first, 64 << 10);
            if i == 0 {
                let old: Vec<Event> = lines(&history)
                    .into_iter()
                    .map(|mut e| {
                        e.time -= 2 * 86400;
                        e
                    })
                    .collect();
                fs::write(history.path(), encode(&old).expect("encode")).expect("write");
            }
            if i < 3 {
                let segment = dir.path().join(format!("mama.xml.log.{first}"));
                fs::rename(history.path(), segment).expect("rename");
                starts.push(first);
            }
            first = last + 1;
        }
        let found: Vec<u64> = history
            .segments()
            .expect("segments")
            .iter()
            .map(|s| s.first)
            .collect();
        assert_eq!(found, starts);
        // Kept a day: the oldest segment goes, whole.
        let day = Retention {
            keep_days: Some(1),
            max_size: 1 << 30,
        };
        history.prune(&day).expect("prune");
        let found: Vec<u64> = history
            .segments()
            .expect("segments")
            .iter()
            .map(|s| s.first)
            .collect();
        assert_eq!(found, starts[1..]);
        // Kept to 160 KiB: the oldest go until the rest fits (the live
        // log is never dropped).
        let small = Retention {
            keep_days: None,
            max_size: 160 << 10,
        };
        history.prune(&small).expect("prune");
        let found: Vec<u64> = history
            .segments()
            .expect("segments")
            .iter()
            .map(|s| s.first)
            .collect();
        assert_eq!(found, starts[2..]);
        let read = history.read(None, Vec::new()).expect("read");
        assert_eq!(read.first().map(|e| e.seq), Some(starts[2]));
        assert_eq!(read.last().map(|e| e.seq), Some(first - 1));
    }
}
