//! Reading the state file: under both locks, checked whole, from the
//! roll-forward copy where a write in place was torn, with an earlier
//! mama's journal applied; and its history.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::backend::Snapshot;
use crate::error::{Error, Result};
use crate::format::doc::{self, XmlLab};
use crate::model::event::{Brief, Event};

impl FileStore {
    /// Reads the lab under both locks, shared. Without the lab's lock file
    /// (a reader who may not write, a read-only folder or file system) the
    /// state file's own lock keeps writers out while it reads.
    pub fn read(&self) -> Result<Snapshot> {
        let like = self.metadata()?;
        if like.is_none() {
            return Err(self.no_lab());
        }
        let lab = self.lab_lock(Mode::Shared, like.as_ref())?;
        let state = self.lock_state(Mode::Shared)?;
        Ok(self.load(state.as_ref(), lab.as_ref(), None)?.snapshot())
    }

    /// The event log beside the state file.
    pub(super) fn history(&self) -> Result<History> {
        let folder = Arc::clone(self.lab_folder()?);
        Ok(History::new(folder, self.beside("", ".log")))
    }

    /// The committed events (all of them, or those numbered after `after`),
    /// read under the shared locks with the state that holds the newest.
    pub fn read_events(&self, after: Option<u64>) -> Result<(Snapshot, Vec<Event>)> {
        self.with_history(|history, pending| history.read(after, pending))
    }

    /// Every committed event, oldest first, to `visit` (see
    /// [`crate::backend::Backend::scan_events`]): the history is frozen
    /// under the shared locks and read once they are let go.
    pub fn scan_events(&self, visit: &mut dyn FnMut(&Brief<'_>)) -> Result<Snapshot> {
        let (frozen, snapshot) = self.freeze_history()?;
        frozen.scan(visit)?;
        Ok(snapshot)
    }

    /// Every committed event whole, oldest first, to `visit` (see
    /// [`crate::backend::Backend::each_event`]), read as
    /// [`FileStore::scan_events`] reads them.
    pub fn each_event(&self, since: Option<i64>, visit: &mut dyn FnMut(Event)) -> Result<Snapshot> {
        let (frozen, snapshot) = self.freeze_history()?;
        frozen.each(since, visit)?;
        Ok(snapshot)
    }

    /// The history as it stands, found under the shared locks and let go
    /// of them, with the lab.
    fn freeze_history(&self) -> Result<(log::Frozen, Snapshot)> {
        let like = self.metadata()?;
        if like.is_none() {
            return Err(self.no_lab());
        }
        let lab = self.lab_lock(Mode::Shared, like.as_ref())?;
        let state = self.lock_state(Mode::Shared)?;
        let loaded = self.load(state.as_ref(), lab.as_ref(), None)?;
        let mut pending = loaded.doc.pending_events();
        pending.extend(loaded.journal.events());
        let frozen = self.history()?.freeze(pending)?;
        drop(state);
        drop(lab);
        Ok((frozen, loaded.snapshot()))
    }

    /// The lab and what `events` takes from the history (given the
    /// state's pending events), read under the shared locks.
    pub(super) fn with_history(
        &self,
        events: impl FnOnce(&History, Vec<Event>) -> Result<Vec<Event>>,
    ) -> Result<(Snapshot, Vec<Event>)> {
        let like = self.metadata()?;
        if like.is_none() {
            return Err(self.no_lab());
        }
        let lab = self.lab_lock(Mode::Shared, like.as_ref())?;
        let state = self.lock_state(Mode::Shared)?;
        let loaded = self.load(state.as_ref(), lab.as_ref(), None)?;
        let mut pending = loaded.doc.pending_events();
        pending.extend(loaded.journal.events());
        let events = events(&self.history()?, pending)?;
        Ok((loaded.snapshot(), events))
    }

    /// The lab, and the newest `count` committed events of `machine`
    /// (oldest first), read from the end of the log under the shared locks.
    pub fn recent_events(&self, machine: &str, count: usize) -> Result<(Snapshot, Vec<Event>)> {
        self.with_history(|history, pending| history.recent(machine, count, pending))
    }

    /// The state as upstream's format holds it, without mama's own
    /// bookkeeping (`export`).
    pub fn export(&self) -> Result<String> {
        let like = self.metadata()?;
        if like.is_none() {
            return Err(self.no_lab());
        }
        let lab = self.lab_lock(Mode::Shared, like.as_ref())?;
        let state = self.lock_state(Mode::Shared)?;
        Ok(self
            .load(state.as_ref(), lab.as_ref(), None)?
            .doc
            .exported())
    }

    /// Reads the state file through the descriptor that holds its lock
    /// (`None`: there is none). A state file cut short by a writer killed
    /// while writing it in place is read from the roll-forward copy that
    /// writer left in the lab's lock file `lab`, when that copy is whole.
    pub(super) fn load(
        &self,
        state: Option<&FileLock>,
        lab: Option<&FileLock>,
        journal: Option<Option<&File>>,
    ) -> Result<Loaded> {
        let Some(state) = state else {
            return Ok(Loaded {
                doc: XmlLab::empty(),
                rolled_forward: false,
                journal: Journal::none(Identity::default()),
            });
        };
        memory::keep_freed_memory();
        let mut file = state.file();
        self.await_php_copy(file);
        let meta = file
            .metadata()
            .map_err(|e| Error::io("read", &self.path, e))?;
        if meta.len() > doc::MAX_DOCUMENT {
            return Err(too_large(&self.path, meta.len()));
        }
        // Sized once: a lab of ten thousand machines is megabytes, and
        // growing the buffer by doubling would copy it and hold twice it.
        let size = usize::try_from(meta.len()).unwrap_or(0);
        let mut bytes = Vec::with_capacity(size.saturating_add(1));
        memory::populate(&mut bytes, XmlLab::room_for(size));
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.take(doc::MAX_DOCUMENT + 1).read_to_end(&mut bytes))
            .map_err(|e| Error::io("read", &self.path, e))?;
        if bytes.len() as u64 > doc::MAX_DOCUMENT {
            return Err(too_large(&self.path, bytes.len() as u64));
        }
        // A write in place torn by a kill or a crash: its roll-forward copy
        // stands, whether or not the mix it left happens to parse.
        let copy = lab.and_then(|lab| Copy::read(lab.file()));
        if let Some(copy) = &copy
            && copy.judge(&bytes) == Verdict::Torn
            && let Ok(doc) = self.parse(copy.new.clone())
        {
            return Ok(Loaded {
                doc,
                rolled_forward: true,
                journal: Journal::none(Identity::of(&meta)),
            });
        }
        let broken = match self.parse(bytes) {
            Ok(mut doc) => {
                let journal = self.replay(&mut doc, Identity::of(&meta), journal)?;
                return Ok(Loaded {
                    doc,
                    rolled_forward: false,
                    journal,
                });
            }
            Err(e) => e,
        };
        // A state file that does not parse beside a whole copy: cut short
        // by a writer killed while writing it (a first-version copy holds
        // the new text alone, so only this tells its torn write).
        match copy.and_then(|copy| self.parse(copy.new).ok()) {
            Some(doc) => Ok(Loaded {
                doc,
                rolled_forward: true,
                journal: Journal::none(Identity::of(&meta)),
            }),
            None => Err(broken),
        }
    }

    /// Waits a moment for an empty state file in PHP mama's installation
    /// to be written: that is a PHP mama installing `mama.xml-default` with
    /// `cp`, which creates the file (or truncates it), then writes it,
    /// without taking any lock. A file still empty after
    /// [`PHP_COPY_WAIT`] is read as it is (an error).
    pub(super) fn await_php_copy(&self, file: &File) {
        let empty = || file.metadata().is_ok_and(|m| m.len() == 0);
        if !empty() || !self.php_installation() {
            return;
        }
        let deadline = Instant::now() + PHP_COPY_WAIT;
        while empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads the journal of the state file `state` (from `file`, what a
    /// writer found: the journal it opened, or none; else, `None`, opened
    /// here to read, if there is one this user may read) and applies its records' changes to `doc`,
    /// up to the first that does not apply (which only mama's own mistake
    /// could make). Their events stay in the journal (see
    /// [`FileStore::commit_events`]).
    pub(super) fn replay(
        &self,
        doc: &mut XmlLab,
        state: Identity,
        file: Option<Option<&File>>,
    ) -> Result<Journal> {
        let opened;
        let file = match file {
            Some(Some(file)) => file,
            Some(None) => return Ok(Journal::none(state)),
            None => match self.open_beside(&self.journal_name(), false) {
                Ok(Some(file)) => {
                    opened = file;
                    &opened
                }
                Ok(None) | Err(Error::Io { .. } | Error::ReadOnly { .. }) => {
                    return Ok(Journal::none(state));
                }
                Err(e) => return Err(e),
            },
        };
        let folded = doc.journal_folded();
        let mut journal = Journal::read(file, state, folded.as_deref())
            .map_err(|e| Error::io("read", &self.shown(&self.journal_name()), e))?;
        if journal.records.is_empty() {
            return Ok(journal);
        }
        let mut applied = 0;
        for record in &journal.records {
            // A machine removed by hand since is skipped.
            let known: Vec<_> = record
                .changes
                .iter()
                .filter(|change| match change {
                    crate::model::Change::Set { machine, .. }
                    | crate::model::Change::Unset { machine, .. } => doc.has_machine(machine),
                    _ => false,
                })
                .cloned()
                .collect();
            if doc.apply(&known).is_err() {
                break;
            }
            applied += 1;
        }
        journal.keep(applied);
        Ok(journal)
    }

    /// Reads the state file's bytes as a lab: UTF-8, well-formed, a
    /// `<settings>` root (see [`XmlLab::read`]).
    pub(super) fn parse(&self, bytes: Vec<u8>) -> Result<XmlLab> {
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            let column =
                valid.len() - valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
            self.corrupt(Some((line, column)), "the file is not valid UTF-8".into())
        })?;
        XmlLab::read(Arc::new(text)).map_err(|e| {
            let location = (e.line > 0).then_some((e.line, e.column));
            self.corrupt(location, e.message)
        })
    }

    pub(super) fn corrupt(&self, location: Option<(usize, usize)>, message: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            location,
            message,
        }
    }
}
