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
//! appended again. The log is bounded: when a flush finds it past
//! [`TRIM_AT`] bytes the oldest lines are dropped so that at most [`KEEP`]
//! bytes remain.

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::file::fsutil::Dir;
use crate::error::{Error, Result};
use crate::model::event::Event;

/// The state file keeps its committed events until this many have gathered;
/// the next transaction then moves them to the log together and syncs it:
/// most transactions sync one file, as they would without a history.
pub const FLUSH_AT: usize = 32;

/// The log is trimmed when it grows past this many bytes (about 20,000
/// events)...
pub const TRIM_AT: u64 = 4 << 20;
/// ... down to the newest events that fit in this many.
pub const KEEP: u64 = 2 << 20;
/// A log this long is not one mama wrote (it trims past [`TRIM_AT`]):
/// mama refuses it rather than read it, so a planted huge or sparse file
/// can never make every command read gigabytes with the lab locked.
pub const MAX_LOG: u64 = 16 * TRIM_AT;

/// The event log of one state file: the file `name` in the lab's folder
/// `dir`.
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
    /// them to `pending`; returns the new last number. When `pending` holds
    /// [`FLUSH_AT`] events (committed by an earlier rename), they first move
    /// to the log: the ones it lacks are appended, the log is synced, and
    /// `pending` is emptied. Call with the state lock held, then write the
    /// state: its rename commits both.
    pub fn commit(
        &self,
        seq: Option<u64>,
        pending: &mut Vec<Event>,
        events: Vec<Event>,
        like: Option<&Metadata>,
        flush: bool,
    ) -> Result<u64> {
        let logged = self.last_seq()?;
        let mut last = pending
            .iter()
            .map(|e| e.seq)
            .chain(seq)
            .chain(logged)
            .max()
            .unwrap_or(0);
        if flush && pending.len() >= FLUSH_AT {
            self.append_after_last(pending, true, like)?;
            pending.clear();
        }
        for mut event in events {
            last = last.checked_add(1).ok_or_else(|| {
                Error::Invalid(format!(
                    "cannot number a new event: the numbers recorded with {} have run out",
                    self.path.display()
                ))
            })?;
            event.seq = last;
            pending.push(event);
        }
        Ok(last)
    }

    /// Appends the `committed` events numbered after the log's last whole
    /// event, in order. With `flush`, a long log is trimmed first and the
    /// log is synced even when nothing was appended (a killed writer may
    /// have appended without syncing).
    fn append_after_last(
        &self,
        committed: &[Event],
        flush: bool,
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
        if missing.is_empty() && !flush {
            return Ok(());
        }
        let io = |e| Error::io("write the event log", &self.path, e);
        let text = encode(&missing)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        if flush {
            file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    /// Opens the log for appending: drops a last line without its newline
    /// (its events are still pending in the state) and, with `trim`, trims
    /// the log if it is too long. Returns the file and the number of the
    /// last whole event in it.
    fn prepare(&self, trim: bool, like: Option<&Metadata>) -> Result<(File, Option<u64>)> {
        let mut file = self.open_for_append(like)?;
        let io = |e| Error::io("write the event log", &self.path, e);
        let tail = scan_back(&mut file, |_| true).map_err(io)?;
        if tail.whole < tail.len {
            file.set_len(tail.whole).map_err(io)?;
        }
        if trim && tail.whole > TRIM_AT {
            match self.trim(&mut file, tail.whole, like) {
                Ok(()) => file = self.open_for_append(like)?,
                // A folder this user may not write (PHP mama's layout, with
                // the log added by its owner): the log cannot be replaced,
                // so it grows on, and the folder's owner trims it.
                Err(Error::ReadOnly { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((file, tail.last_seq()))
    }

    /// Opens the log for reading and writing, creating it made like the
    /// state file; never through a link planted in its place.
    fn open_for_append(&self, like: Option<&Metadata>) -> Result<File> {
        match self.dir.open_or_create(&self.name, like) {
            Ok((file, _)) => self.bounded(file),
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

    /// The log, opened to read (never through a link); `None` when there is
    /// none.
    fn open_to_read(&self) -> Result<Option<File>> {
        self.dir
            .open_file(&self.name, false)?
            .map(|file| self.bounded(file))
            .transpose()
    }

    /// `file` (the log) if it is no longer than [`MAX_LOG`].
    fn bounded(&self, file: File) -> Result<File> {
        let len = file
            .metadata()
            .map_err(|e| Error::io("read", &self.path, e))?
            .len();
        if len > MAX_LOG {
            return Err(Error::Invalid(format!(
                "{} is {len} bytes, and mama trims its log at {TRIM_AT}: it is not a log \
                 mama wrote (move it aside)",
                self.path.display()
            )));
        }
        Ok(file)
    }

    /// Rewrites the log with its newest events that fit in [`KEEP`] bytes
    /// (temporary file, sync, rename: a crash leaves the old or new log).
    fn trim(&self, file: &mut File, len: u64, like: Option<&Metadata>) -> Result<()> {
        let io = |e| Error::io("write the event log", &self.path, e);
        let start = len.saturating_sub(KEEP);
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut kept = Vec::with_capacity(KEEP as usize);
        file.take(len - start).read_to_end(&mut kept).map_err(io)?;
        if start > 0 {
            // Start at a whole line.
            let cut = kept
                .iter()
                .position(|&b| b == b'\n')
                .map_or(kept.len(), |i| i + 1);
            kept.drain(..cut);
        }
        self.replace(&kept, like)
    }

    /// Replaces the log with `bytes` (a fresh temporary file, sync, rename),
    /// made like the state file.
    fn replace(&self, bytes: &[u8], like: Option<&Metadata>) -> Result<()> {
        // Hidden, like the state's temporary file; one name, so a killed
        // writer's leftover is removed by the next.
        let mut temp = OsString::from(".");
        temp.push(&self.name);
        temp.push(".tmp");
        self.dir.replace(&self.name, &temp, bytes, like, None)
    }

    /// The number of the newest whole event in the log, if any.
    pub fn last_seq(&self) -> Result<Option<u64>> {
        let Some(mut file) = self.open_to_read()? else {
            return Ok(None);
        };
        let tail = scan_back(&mut file, |_| true)
            .map_err(|e| Error::io("read the event log", &self.path, e))?;
        Ok(tail.last_seq())
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

    /// The events of the log's whole lines, oldest first.
    fn read_all(&self) -> Result<Vec<Event>> {
        let Some(mut file) = self.open_to_read()? else {
            return Ok(Vec::new());
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io("read the event log", &self.path, e))?;
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        Ok(bytes[..whole]
            .split(|&b| b == b'\n')
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect())
    }

    /// The newest `count` committed events of `machine`, oldest first: the
    /// state's `pending` events after the log's last one, then the log read
    /// from its end back only as far as it takes (a line is decoded only
    /// when it names the machine, or when it is the log's last event).
    pub fn recent(&self, machine: &str, count: usize, pending: Vec<Event>) -> Result<Vec<Event>> {
        let mut logged = Vec::new();
        let mut last = None;
        if let Some(mut file) = self.open_to_read()? {
            let needle = serde_json::to_string(machine)
                .map_err(|e| Error::Invalid(format!("cannot encode a machine name: {e}")))?;
            let needle = needle.as_bytes();
            lines_back(&mut file, |line| {
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
            })
            .map_err(|e| Error::io("read the event log", &self.path, e))?;
        }
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
        let Some(mut file) = self.open_to_read()? else {
            return Ok((Vec::new(), None));
        };
        let tail = scan_back(&mut file, |e| e.seq <= after)
            .map_err(|e| Error::io("read the event log", &self.path, e))?;
        let logged = tail.last_seq();
        let mut events: Vec<Event> = tail.events.into_iter().filter(|e| e.seq > after).collect();
        events.reverse();
        Ok((events, logged))
    }
}

/// Visits the log's whole lines from the end backwards (newest first,
/// without their newline) until `visit` says stop. Only the end of the log
/// is read unless the line sought lies further back: a window of 4 KiB,
/// then each time four times wider. Returns the log's length and where its
/// whole lines end. (Each claim and release asks for the last event alone,
/// which a page holds: a first window of 16 KiB read the whole of a short
/// log, twice a run.)
fn lines_back(file: &mut File, mut visit: impl FnMut(&[u8]) -> bool) -> io::Result<(u64, u64)> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut window = 4 * 1024u64;
    // Where the lines already visited start: the next window ends there.
    let mut done = None;
    let mut whole = 0;
    loop {
        let start = len.saturating_sub(window);
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
        if start == 0 {
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
    }

    impl State {
        /// A state that committed `pending` (numbered), the last being its
        /// number.
        fn holding(pending: Vec<Event>) -> State {
            State {
                seq: pending.last().map(|e| e.seq),
                pending,
            }
        }

        /// One transaction recording `values` as [`crate::backend::file`]
        /// runs it: commit, then the rename. Returns the numbers.
        fn record(&mut self, history: &History, values: &[&str]) -> Vec<u64> {
            let mut next = self.pending.clone();
            let events = values.iter().map(|v| set_event(v)).collect();
            let last = history
                .commit(self.seq, &mut next, events, None, true)
                .expect("commit");
            let new = next.len().saturating_sub(values.len());
            let numbers = seqs(&next[new..]);
            // The rename.
            (self.seq, self.pending) = (Some(last), next);
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
        };
        assert_eq!(state.record(&history, &["new"]), [1501]);
        assert_eq!(fs::read(history.path()).expect("read"), text);
        assert_eq!(seqs(&state.read(&history)), (1..=1501).collect::<Vec<_>>());
    }

    #[test]
    fn a_crash_after_appending_leaves_no_event_twice() {
        // A flushing writer appended the state's pending events, synced the
        // log and was killed before its rename: the state still holds them.
        let (_dir, history) = fresh();
        let flush = FLUSH_AT as u64;
        let mut state = State::holding(numbered(1..=flush, 0));
        let mut ahead = state.pending.clone();
        history
            .commit(state.seq, &mut ahead, vec![set_event("lost")], None, true)
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
        };
        assert_eq!(state.record(&history, &["a", "b"]), [101, 102]);
        assert_eq!(seqs(&state.read(&history)), [101, 102]);

        // The log ends before the state's number: no number is used twice.
        let (_dir, history) = fresh();
        seed(&history, 1..=3, 0);
        let mut state = State {
            seq: Some(9),
            pending: Vec::new(),
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
        };
        assert_eq!(state.record(&history, &["e"]), [9]);
        // (5 was pending only in the other state, never flushed.)
        assert_eq!(seqs(&state.read(&history)), [1, 2, 3, 4, 6, 7, 8, 9]);

        // Numbers that have run out are an error, not a wrap.
        let mut pending = Vec::new();
        let err = history
            .commit(
                Some(u64::MAX),
                &mut pending,
                vec![set_event("f")],
                None,
                true,
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
        };
        let events = state.read_after(&history, 7);
        assert_eq!(seqs(&events), (8..=3000).collect::<Vec<_>>());
        assert_eq!(events, state.read(&history)[7..]);
        assert_eq!(state.read_after(&history, 0).len(), 3000);
    }

    #[test]
    fn a_big_log_is_trimmed_to_its_newest_events_when_flushing() {
        let (dir, history) = fresh();
        let mut n = 0;
        let mut text = Vec::new();
        let mut line_ends = Vec::new();
        while text.len() as u64 <= TRIM_AT + 64 * 1024 {
            n += 1;
            let mut event = set_event(&format!("{n}-{}", "y".repeat(n as usize % 97)));
            event.seq = n;
            text.extend_from_slice(serde_json::to_string(&event).expect("encode").as_bytes());
            text.push(b'\n');
            line_ends.push(text.len() as u64);
        }
        fs::write(history.path(), &text).expect("write");
        // A transaction that does not flush leaves the log as it is.
        let mut state = State {
            seq: Some(n),
            pending: Vec::new(),
        };
        assert_eq!(state.record(&history, &["appended"]), [n + 1]);
        assert_eq!(fs::read(history.path()).expect("read"), text);
        let appended = serde_json::to_string(&state.pending[0]).expect("encode");
        let new_line = appended.len() as u64 + 1;
        n += 1;
        // The flush appends what the log lacks, and trims it: the state's
        // pending events end with the one above, the others are in the log.
        let mut pending: Vec<Event> = numbered(n + 1 - FLUSH_AT as u64..=n - 1, 0)
            .into_iter()
            .map(|mut e| {
                e.detail = Some("in the log already".into());
                e
            })
            .collect();
        pending.push(state.pending[0].clone());
        state.pending = pending;
        assert_eq!(state.record(&history, &["after the trim"]), [n + 1]);

        assert_eq!(seqs(&state.pending), [n + 1]);
        let written = fs::read(history.path()).expect("read");
        assert!(
            written.len() as u64 <= KEEP + new_line,
            "{} bytes kept",
            written.len()
        );
        let kept = lines(&history);
        let first = kept[0].seq;
        assert!(first > 1, "nothing was trimmed");
        assert_eq!(seqs(&kept), (first..=n).collect::<Vec<_>>());
        assert_eq!(
            kept.last().map(|e| e.detail.as_deref()),
            Some(Some("os=appended"))
        );
        // The newest events that fit, at most one line short of it, then
        // the one the flush appended.
        let old_kept = text.len() as u64 - line_ends[first as usize - 2];
        assert_eq!(written.len() as u64, old_kept + new_line);
        assert!(old_kept <= KEEP);
        let two_more = text.len() as u64 - line_ends.get(first as usize - 4).copied().unwrap_or(0);
        assert!(
            two_more > KEEP,
            "more could have been kept: {old_kept} of {KEEP}"
        );
        // The temporary file is gone.
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["mama.xml.log"]);
        // Readers see the log, then the event the state still holds.
        let read = state.read(&history);
        assert_eq!(read[..kept.len()], kept[..]);
        assert_eq!(read[kept.len()..], state.pending[..]);
    }
}
