//! The history of the lab: who held what, and every other change.
//!
//! Events go to an append-only log beside the state file (`<state>.log`, one
//! JSON object a line), written inside the same locked transaction as the
//! state change they describe. Each event carries a sequence number, and the
//! state file records the last one it committed (`<event_seq>`):
//!
//! 1. the writer drops any tail of the log beyond that number (left by a
//!    writer killed after appending but before its state was written),
//! 2. appends the new events and syncs the log,
//! 3. writes the state with the new number (the atomic rename commits both).
//!
//! Readers ignore entries beyond the state's number, so after a crash at any
//! instant one never sees an event without its change, or a change without
//! its event. The log is bounded: when it grows past [`TRIM_AT`] bytes the
//! oldest events are dropped so that at most [`KEEP`] bytes remain.

use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::lab::JobRecord;
use crate::os;

/// The newest events, up to this many, are kept in the state file itself
/// and move to the log together: most transactions then sync one file, as
/// they would without a history.
pub const FLUSH_AT: usize = 32;

/// The log is trimmed when it grows past this many bytes (about 20,000
/// events)...
pub const TRIM_AT: u64 = 4 << 20;
/// ... down to the newest events that fit in this many.
pub const KEEP: u64 = 2 << 20;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `run` claimed the machine for a job.
    Claimed,
    /// The job ended and `run` gave the machine back.
    Released,
    /// A waiter cleared a stale job.
    StaleCleared,
    /// `clear` forgot a job by hand.
    Cleared,
    Reserved,
    /// `release`: the holder gave up a reservation.
    Unreserved,
    /// `release-forced`.
    ForceReleased,
    Added,
    Deleted,
    /// `set` changed a field.
    Set,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Claimed => "claimed",
            Kind::Released => "released",
            Kind::StaleCleared => "stale_cleared",
            Kind::Cleared => "cleared",
            Kind::Reserved => "reserved",
            Kind::Unreserved => "unreserved",
            Kind::ForceReleased => "force_released",
            Kind::Added => "added",
            Kind::Deleted => "deleted",
            Kind::Set => "set",
        }
    }
}

/// One event, as stored and as `log --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Unix seconds.
    pub time: i64,
    pub machine: String,
    pub event: Kind,
    pub job: Option<String>,
    pub pid: Option<u32>,
    /// Who did it, and where.
    pub user: String,
    pub host: String,
    pub detail: Option<String>,
}

impl Event {
    /// An event by this user on this host, now; numbered when committed.
    pub fn new(event: Kind, machine: &str) -> Event {
        Event {
            seq: 0,
            time: os::now(),
            machine: machine.to_string(),
            event,
            job: None,
            pid: None,
            user: os::user_name(),
            host: os::host_name(),
            detail: None,
        }
    }

    /// The job the event is about.
    pub fn job(mut self, job: &JobRecord) -> Event {
        self.job = (!job.label.is_empty()).then(|| job.label.clone());
        self.pid = job.pid;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Event {
        self.detail = Some(detail.into());
        self
    }
}

/// The event log of one state file.
#[derive(Debug, Clone)]
pub struct History {
    path: PathBuf,
}

/// Events as JSON lines.
pub fn encode(events: &[Event]) -> Result<String> {
    let mut text = String::new();
    for event in events {
        let line = serde_json::to_string(event)
            .map_err(|e| Error::Invalid(format!("cannot encode an event: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    Ok(text)
}

/// Events from JSON lines; a line that is not an event is skipped.
pub fn decode(text: &str) -> Vec<Event> {
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// A line of the log and where it starts.
struct Line {
    offset: u64,
    /// With the newline.
    len: u64,
    event: Option<Event>,
}

impl History {
    pub fn new(path: PathBuf) -> History {
        History { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `events` after the state's last committed number, numbering
    /// them; returns the new last number. Call with the state lock held.
    pub fn append(
        &self,
        committed: Option<u64>,
        events: &mut [Event],
        like: Option<&Metadata>,
    ) -> Result<u64> {
        let (file, mut next) = self.prepare(committed, like)?;
        for event in events.iter_mut() {
            next += 1;
            event.seq = next;
        }
        self.write_synced(file, events)?;
        Ok(next)
    }

    /// Appends events numbered by the caller after the log's last committed
    /// number `flushed` (see [`FLUSH_AT`]). Call with the state lock held.
    pub fn flush(&self, flushed: u64, events: &[Event], like: Option<&Metadata>) -> Result<()> {
        let (file, _) = self.prepare(Some(flushed), like)?;
        self.write_synced(file, events)
    }

    /// Opens the log for appending after `committed`: drops any later tail
    /// and trims the log if it is too long. Returns the file and the last
    /// number in it.
    fn prepare(&self, committed: Option<u64>, like: Option<&Metadata>) -> Result<(File, u64)> {
        let mut file = self.open_for_append(like)?;
        let io = |e| Error::io("write the event log", &self.path, e);
        // Drop what a killed writer appended but never committed (and any
        // half-written line), so numbers are never used twice.
        let lines =
            scan_back(&mut file, |event| committed.is_none_or(|c| event.seq <= c)).map_err(io)?;
        let keep_until = lines
            .iter()
            .find(|l| {
                l.event
                    .as_ref()
                    .is_some_and(|e| committed.is_none_or(|c| e.seq <= c))
            })
            .map_or(0, |l| l.offset + l.len);
        let last = lines
            .iter()
            .find_map(|l| l.event.as_ref().map(|e| e.seq))
            .filter(|&seq| committed.is_none_or(|c| seq <= c));
        let next = committed.or(last).unwrap_or(0);
        file.set_len(keep_until).map_err(io)?;
        if keep_until > TRIM_AT {
            self.trim(&mut file, keep_until, like)?;
            file = self.open_for_append(like)?;
        }
        Ok((file, next))
    }

    fn write_synced(&self, mut file: File, events: &[Event]) -> Result<()> {
        let io = |e| Error::io("write the event log", &self.path, e);
        let text = encode(events)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)
    }

    /// Opens the log for reading and writing, creating it made like the
    /// state file; never through a link planted in its place.
    fn open_for_append(&self, like: Option<&Metadata>) -> Result<File> {
        match fsutil::open_or_create(&self.path, like) {
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
                    .and_then(|()| fsutil::open_or_create(&self.path, like));
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
        fsutil::open_file(&self.path, false)
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
        let mut name = std::ffi::OsString::from(".");
        name.push(self.path.file_name().unwrap_or("mama.xml.log".as_ref()));
        name.push(".tmp");
        let temp = self.path.with_file_name(name);
        fsutil::replace(&self.path, &temp, bytes, like, None)
    }

    /// The number of the newest whole event in the log, if any.
    pub fn last_seq(&self) -> Result<Option<u64>> {
        let Some(mut file) = self.open_to_read()? else {
            return Ok(None);
        };
        let lines = scan_back(&mut file, |_| true)
            .map_err(|e| Error::io("read the event log", &self.path, e))?;
        Ok(lines.iter().find_map(|l| l.event.as_ref().map(|e| e.seq)))
    }

    /// Every committed event, oldest first.
    pub fn read_all(&self, committed: Option<u64>) -> Result<Vec<Event>> {
        let Some(mut file) = self.open_to_read()? else {
            return Ok(Vec::new());
        };
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| Error::io("read the event log", &self.path, e))?;
        Ok(decode(&text)
            .into_iter()
            .filter(|e| committed.is_none_or(|c| e.seq <= c))
            .collect())
    }

    /// The committed events numbered after `after`, oldest first; reads only
    /// the end of the log.
    pub fn read_after(&self, after: u64, committed: Option<u64>) -> Result<Vec<Event>> {
        let Some(mut file) = self.open_to_read()? else {
            return Ok(Vec::new());
        };
        let lines = scan_back(&mut file, |e| e.seq <= after)
            .map_err(|e| Error::io("read the event log", &self.path, e))?;
        let mut events: Vec<Event> = lines
            .into_iter()
            .filter_map(|l| l.event)
            .filter(|e| e.seq > after && committed.is_none_or(|c| e.seq <= c))
            .collect();
        events.reverse();
        Ok(events)
    }
}

/// Reads the log's lines from the end backwards until one parses and
/// satisfies `stop` (that one included), newest first. Only the end of the
/// log is read unless the line sought lies further back. A last line
/// without its newline (a writer killed mid-line) reads as no event.
fn scan_back(file: &mut File, stop: impl Fn(&Event) -> bool) -> io::Result<Vec<Line>> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = Vec::with_capacity((len - start) as usize);
        file.seek(SeekFrom::Start(start))?;
        Read::by_ref(file).take(len - start).read_to_end(&mut buf)?;
        let mut lines = Vec::new();
        let mut end = buf.len();
        if let Some(last_newline) = buf.iter().rposition(|&b| b == b'\n') {
            if last_newline + 1 < buf.len() {
                lines.push(Line {
                    offset: start + last_newline as u64 + 1,
                    len: (buf.len() - last_newline - 1) as u64,
                    event: None,
                });
            }
            end = last_newline + 1;
        } else if start == 0 && !buf.is_empty() {
            lines.push(Line {
                offset: 0,
                len: buf.len() as u64,
                event: None,
            });
            return Ok(lines);
        }
        // Whole lines in buf[..end], newest first; the first piece of a
        // window that does not start the file may be cut, so it is skipped.
        let mut line_end = end;
        while line_end > 0 {
            let line_start = buf[..line_end - 1]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            if line_start == 0 && start > 0 {
                break;
            }
            let event = serde_json::from_slice::<Event>(&buf[line_start..line_end]).ok();
            let done = event.as_ref().is_some_and(&stop);
            lines.push(Line {
                offset: start + line_start as u64,
                len: (line_end - line_start) as u64,
                event,
            });
            if done {
                return Ok(lines);
            }
            line_end = line_start;
        }
        if start == 0 {
            return Ok(lines);
        }
        window = window.saturating_mul(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A log in a fresh temporary folder.
    fn fresh() -> (tempfile::TempDir, History) {
        let dir = tempfile::tempdir().expect("temporary folder");
        let history = History::new(dir.path().join("mama.xml.log"));
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

    /// A log of events `range`, written as a writer would (committed or not).
    fn seed(history: &History, range: std::ops::RangeInclusive<u64>, pad: usize) -> Vec<u8> {
        let mut text = Vec::new();
        for seq in range {
            let mut event = set_event(&format!("{seq}-{}", "x".repeat(pad)));
            event.seq = seq;
            text.extend_from_slice(serde_json::to_string(&event).expect("encode").as_bytes());
            text.push(b'\n');
        }
        fs::write(history.path(), &text).expect("write the log");
        text
    }

    #[test]
    fn a_new_log_numbers_from_one_and_keeps_the_events_whole() {
        let (_dir, history) = fresh();
        let mut events = vec![set_event("a"), set_event("b")];
        assert_eq!(history.append(None, &mut events, None).expect("append"), 2);
        assert_eq!(seqs(&events), [1, 2]);
        let mut more = vec![set_event("c")];
        assert_eq!(history.append(Some(2), &mut more, None).expect("append"), 3);
        let read = history.read_all(Some(3)).expect("read");
        assert_eq!(seqs(&read), [1, 2, 3]);
        assert_eq!(read[..2], events[..]);
        assert_eq!(read[2], more[0]);
        assert_eq!(read[2].detail.as_deref(), Some("os=c"));
        assert_eq!(lines(&history), read);
    }

    #[test]
    fn an_uncommitted_tail_is_dropped_and_its_numbers_reused() {
        let (_dir, history) = fresh();
        seed(&history, 1..=7, 0);
        // The state committed 5: 6 and 7 were appended by a writer that
        // died before its state was written.
        assert_eq!(
            seqs(&history.read_all(Some(5)).expect("read")),
            [1, 2, 3, 4, 5]
        );
        let mut events = vec![set_event("new")];
        assert_eq!(
            history.append(Some(5), &mut events, None).expect("append"),
            6
        );
        let written = lines(&history);
        assert_eq!(seqs(&written), [1, 2, 3, 4, 5, 6]);
        assert_eq!(written[5].detail.as_deref(), Some("os=new"));
    }

    #[test]
    fn an_uncommitted_tail_longer_than_one_window_is_dropped_too() {
        let (_dir, history) = fresh();
        // About 300 KiB of uncommitted events after 10 committed ones.
        seed(&history, 1..=1500, 60);
        let mut events = vec![set_event("new")];
        assert_eq!(
            history.append(Some(10), &mut events, None).expect("append"),
            11
        );
        assert_eq!(seqs(&lines(&history)), (1..=11).collect::<Vec<_>>());
    }

    #[test]
    fn a_half_written_last_line_is_dropped() {
        let (_dir, history) = fresh();
        let mut text = seed(&history, 1..=3, 0);
        let mut cut = set_event("cut");
        cut.seq = 4;
        let whole = serde_json::to_string(&cut).expect("encode");
        // Cut in the middle, and cut just before its newline.
        for piece in [&whole[..whole.len() / 2], whole.as_str()] {
            let mut torn = text.clone();
            torn.extend_from_slice(piece.as_bytes());
            fs::write(history.path(), &torn).expect("write");
            assert_eq!(seqs(&history.read_all(Some(3)).expect("read")), [1, 2, 3]);
            assert_eq!(
                seqs(&history.read_after(0, Some(3)).expect("read")),
                [1, 2, 3]
            );
        }
        // Committed or not, a line without its newline is not an event.
        let mut events = vec![set_event("next")];
        assert_eq!(
            history.append(Some(3), &mut events, None).expect("append"),
            4
        );
        let written = lines(&history);
        assert_eq!(seqs(&written), [1, 2, 3, 4]);
        assert_eq!(written[3].detail.as_deref(), Some("os=next"));
        // Without a committed number the same holds.
        text = fs::read(history.path()).expect("read");
        text.extend_from_slice(b"{\"seq\":5,\"ti");
        fs::write(history.path(), &text).expect("write");
        let mut events = vec![set_event("after")];
        assert_eq!(history.append(None, &mut events, None).expect("append"), 5);
        assert_eq!(seqs(&lines(&history)), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_garbage_line_after_the_committed_ones_is_dropped() {
        let (_dir, history) = fresh();
        let mut text = seed(&history, 1..=3, 0);
        text.extend_from_slice(b"not an event\n");
        fs::write(history.path(), &text).expect("write");
        let mut events = vec![set_event("new")];
        assert_eq!(
            history.append(Some(3), &mut events, None).expect("append"),
            4
        );
        assert_eq!(seqs(&lines(&history)), [1, 2, 3, 4]);
    }

    #[test]
    fn numbering_continues_from_the_state_number() {
        // The log was lost (or trimmed away entirely): the state's number
        // still counts.
        let (_dir, history) = fresh();
        let mut events = vec![set_event("a"), set_event("b")];
        assert_eq!(
            history
                .append(Some(100), &mut events, None)
                .expect("append"),
            102
        );
        assert_eq!(seqs(&lines(&history)), [101, 102]);

        // The log ends before the state's number: no number is used twice.
        let (_dir, history) = fresh();
        seed(&history, 1..=3, 0);
        let mut events = vec![set_event("c")];
        assert_eq!(
            history.append(Some(9), &mut events, None).expect("append"),
            10
        );
        assert_eq!(seqs(&lines(&history)), [1, 2, 3, 10]);

        // A state without a number trusts the log.
        let (_dir, history) = fresh();
        seed(&history, 1..=4, 0);
        let mut events = vec![set_event("d")];
        assert_eq!(history.append(None, &mut events, None).expect("append"), 5);
        assert_eq!(seqs(&lines(&history)), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn read_after_returns_only_newer_committed_events() {
        let (_dir, history) = fresh();
        seed(&history, 1..=10, 0);
        let after = |n, c| seqs(&history.read_after(n, c).expect("read"));
        assert_eq!(after(5, Some(8)), [6, 7, 8]);
        assert_eq!(after(0, Some(8)), (1..=8).collect::<Vec<_>>());
        assert_eq!(after(8, Some(8)), Vec::<u64>::new());
        assert_eq!(after(9, Some(8)), Vec::<u64>::new());
        assert_eq!(after(5, None), [6, 7, 8, 9, 10]);
        assert_eq!(after(10, None), Vec::<u64>::new());
        assert_eq!(
            seqs(&history.read_all(Some(8)).expect("read")),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(&history.read_all(None).expect("read")),
            (1..=10).collect::<Vec<_>>()
        );
        // A missing log reads as no events.
        let (_dir, missing) = fresh();
        assert!(missing.read_after(0, Some(3)).expect("read").is_empty());
        assert!(missing.read_all(Some(3)).expect("read").is_empty());
    }

    #[test]
    fn read_after_reaches_back_past_its_first_window() {
        let (_dir, history) = fresh();
        // About 450 KiB: the event sought lies several windows back.
        seed(&history, 1..=3000, 60);
        let events = history.read_after(7, Some(2990)).expect("read");
        assert_eq!(seqs(&events), (8..=2990).collect::<Vec<_>>());
        assert_eq!(events, history.read_all(Some(2990)).expect("read")[7..]);
        assert_eq!(history.read_after(0, Some(3000)).expect("read").len(), 3000);
    }

    #[test]
    fn a_big_log_is_trimmed_to_its_newest_events() {
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
        let mut events = vec![set_event("after the trim")];
        assert_eq!(
            history.append(Some(n), &mut events, None).expect("append"),
            n + 1
        );

        let written = fs::read(history.path()).expect("read");
        let new_line = serde_json::to_string(&events[0]).expect("encode").len() as u64 + 1;
        assert!(
            written.len() as u64 <= KEEP + new_line,
            "{} bytes kept",
            written.len()
        );
        let kept = lines(&history);
        let first = kept[0].seq;
        assert!(first > 1, "nothing was trimmed");
        assert_eq!(seqs(&kept), (first..=n + 1).collect::<Vec<_>>());
        assert_eq!(
            kept.last().map(|e| e.detail.as_deref()),
            Some(Some("os=after the trim"))
        );
        // The newest events that fit, at most one line short of it.
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
        assert_eq!(history.read_all(Some(n + 1)).expect("read"), kept);
    }
}
