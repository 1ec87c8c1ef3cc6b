//! Writing the state file: one transaction under both locks, its events
//! committed with it, by an atomic rename or in place where PHP mama
//! shares the file.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::*;
use crate::error::{Error, Result};
use crate::format::doc::{self, XmlLab};
use crate::model::Lab;
use crate::model::event::Event;
use crate::model::setting::Retention;

impl FileStore {
    /// Runs one transaction: `change` gets the current lab; when it returns
    /// `Ok` having changed the lab, its changes are replayed onto the state
    /// file's tree and the new file is written (atomically, or in place
    /// where PHP mama shares it), its events with it. Every change, a run's
    /// claim and release included, is in the state file once the
    /// transaction ends. The state file is never written when `change`
    /// fails or changes nothing. A lab this user may not write (no
    /// permission on the state file or its folder, a read-only file
    /// system) is [`Error::ReadOnly`], before `change` runs where that can
    /// be told. With `change`'s value come the events the transaction
    /// committed, numbered, in order.
    pub fn update<T>(&self, change: impl FnOnce(&mut Lab) -> Result<T>) -> Result<(T, Vec<Event>)> {
        self.transact(false, change)
    }

    /// [`FileStore::update`] that creates the state file when there is
    /// none (`add`, `import`); every other transaction on a missing state
    /// file is [`Error::NoLab`], and leaves nothing behind.
    pub fn update_or_create<T>(
        &self,
        change: impl FnOnce(&mut Lab) -> Result<T>,
    ) -> Result<(T, Vec<Event>)> {
        self.transact(true, change)
    }

    /// The error for a state file that is not there.
    pub(super) fn no_lab(&self) -> Error {
        Error::NoLab(self.path.display().to_string())
    }

    pub(super) fn transact<T>(
        &self,
        create: bool,
        change: impl FnOnce(&mut Lab) -> Result<T>,
    ) -> Result<(T, Vec<Event>)> {
        let like = self.metadata()?;
        if like.is_none() && !create {
            return Err(self.no_lab());
        }
        if like.is_none() && self.folder()?.is_none() {
            return Err(Error::Invalid(format!(
                "cannot create {}: the folder {} does not exist",
                self.path.display(),
                self.dir.display()
            )));
        }
        let folder = self.lab_folder()?;
        match like {
            Some(_) => folder.may_write(&self.state_name())?,
            None => folder.may_write_here()?,
        }
        let lab_lock = self.lab_lock(Mode::Exclusive, like.as_ref())?;
        // PHP mama's installation without a state file yet: it is created
        // first as PHP mama creates it, and then read like any other.
        let like = match like {
            None if self.php_installation() && self.install_php_default()? => self.metadata()?,
            like => like,
        };
        let state_lock = self.lock_state(Mode::Exclusive)?;
        let lock_file = lab_lock.as_ref().map(FileLock::file);
        // A journal an earlier mama left (see [`journal`]): read with the
        // state, folded into it by this write, then removed.
        let journal_file = match state_lock {
            Some(_) => folder.open_file(&self.journal_name(), false)?,
            None => None,
        };
        // What this store's last transaction left, when the file still
        // holds exactly that (else the file is read afresh).
        let last = self.last_written().take();
        let (mut doc, mut lab, rolled_forward, mut journal) = match (last, &state_lock) {
            (Some(last), Some(state))
                if journal_file.is_none() && self.holds(state.file(), &last.doc)? =>
            {
                (
                    last.doc,
                    last.lab,
                    false,
                    Journal::none(Identity::default()),
                )
            }
            _ => {
                let mut loaded = self.load(
                    state_lock.as_ref(),
                    lab_lock.as_ref(),
                    Some(journal_file.as_ref()),
                )?;
                let lab = loaded.doc.take_model();
                (loaded.doc, lab, loaded.rolled_forward, loaded.journal)
            }
        };
        let value = change(&mut lab)?;
        let folds = !journal.records.is_empty();
        let mut committed = Vec::new();
        if lab.is_changed() || rolled_forward || folds {
            doc.apply(lab.changes())?;
            let events = lab.take_events();
            self.take_journal_events(&mut doc, &mut journal)?;
            if !events.is_empty() {
                committed = self
                    .commit_events(&mut doc, events, like.as_ref(), true)
                    .map_err(|e| self.with_advice(e))?;
            }
            if journal_file.is_none() {
                doc.forget_journal_folded();
            }
            match (&state_lock, lock_file) {
                (Some(state), Some(lock_file)) if self.in_place(&doc) => {
                    if rolled_forward {
                        self.put_back(state.file(), lock_file)?;
                    }
                    self.write_in_place(&doc, state.file(), lock_file)?
                }
                _ => self.replace(&doc, state_lock.as_ref().map(FileLock::file))?,
            }
            if rolled_forward {
                say!(
                    "mama: {} had been cut short by a writer killed while writing it; \
                     put back its roll-forward copy from {}",
                    self.path.display(),
                    self.lock_path().display()
                );
            }
        }
        // An earlier mama's journal goes once the state file holds it (a
        // writer killed before this leaves it naming the state that folded
        // it, so it is never applied again), or at once when there is
        // nothing in it to fold.
        if journal_file.is_some() {
            let _ = folder.remove_file(&self.journal_name());
        }
        // A copy left by a writer killed after it had written the state
        // whole is not needed: the state stands.
        if let Some(lock_file) = lock_file
            && lock_file.metadata().is_ok_and(|m| m.len() > 0)
        {
            let _ = lock_file.set_len(0);
        }
        *self.last_written() = Some(Box::new(Written {
            doc,
            lab: lab.settled(),
        }));
        Ok((value, committed))
    }

    /// Whether PHP mama shares the state file, so it is written in place:
    /// the file says so (`<php_compat>`), PHP mama's own `mama.xml-default`
    /// is beside `mama.xml` (its installation, `MAMA_PATH`), or this user
    /// may not write the folder (so a rename cannot work).
    pub(super) fn in_place(&self, doc: &XmlLab) -> bool {
        doc.php_compat() || self.php_installation() || !self.may_write_folder()
    }

    /// Whether the state file is `mama.xml` in PHP mama's installation
    /// (`MAMA_PATH`): its `mama.xml-default` is a regular file beside it.
    pub(super) fn php_installation(&self) -> bool {
        self.file_name() == "mama.xml"
            && matches!(self.folder(), Ok(Some(folder))
                if folder.entry(OsStr::new(PHP_DEFAULT)).is_ok_and(|e| e.is_file()))
    }

    /// Creates the missing state file in PHP mama's installation as PHP
    /// mama does, a copy of its `mama.xml-default`, but whole at once and
    /// never over a file that appeared meanwhile (a PHP mama's copy, which
    /// PHP mamas may already have opened and be writing: a rename over it
    /// would lose what they write). Whoever created it, the transaction then
    /// locks and reads the file at the path. `true` when this created it.
    pub(super) fn install_php_default(&self) -> Result<bool> {
        let folder = self.lab_folder()?;
        let default = self.shown(OsStr::new(PHP_DEFAULT));
        let Some(file) = folder.open_file(OsStr::new(PHP_DEFAULT), false)? else {
            return Ok(false);
        };
        let mut bytes = Vec::new();
        file.take(doc::MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", &default, e))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::Invalid(format!(
                "cannot create {} from PHP mama's {}: it is not UTF-8",
                self.path.display(),
                default.display()
            ))
        })?;
        let text = Arc::new(text);
        if let Err(e) = XmlLab::read(Arc::clone(&text)) {
            return Err(Error::Invalid(format!(
                "cannot create {} from PHP mama's {}: line {}, column {}: {}",
                self.path.display(),
                default.display(),
                e.line,
                e.column,
                e.message
            )));
        }
        folder.create_whole(&self.state_name(), &self.temp_name(), text.as_bytes())
    }

    /// Numbers this transaction's events after every event committed so
    /// far and puts them in the state's pending events, which its rename
    /// commits (see [`History::commit`]). When the state already holds
    /// [`FLUSH_AT`](log::FLUSH_AT) pending events, this
    /// transaction first appends to the log those it lacks, syncs it, and
    /// drops them all from the state (with `flush`; a write that could not
    /// go into the journal leaves that to the next). The log only ever
    /// receives committed events: a writer killed after appending leaves
    /// lines the state still holds too, which readers take once and the
    /// next flush does not append again. (A copy of every event to the log
    /// after each rename, unsynced, would keep the newest events through a
    /// restore of an older state file too; on ext4 it made every run
    /// 0.7 ms slower, since the state's next fsync flushed it, so it is not
    /// made.) The events come back numbered, committed once the state
    /// is written.
    pub(super) fn commit_events(
        &self,
        doc: &mut XmlLab,
        events: Vec<Event>,
        like: Option<&Metadata>,
        flush: bool,
    ) -> Result<Vec<Event>> {
        let mut pending = doc.pending_lines();
        let (last, committed) =
            self.history()?
                .commit(doc.event_seq(), &mut pending, events, like, flush, || {
                    Retention::of(&doc.settings())
                })?;
        doc.put_pending(&pending);
        doc.set_event_seq(last);
        Ok(committed)
    }

    /// Takes the journal into the state before it is written whole: its
    /// events' lines join the pending ones (after them, as a commit adds
    /// its own), and its token is written as folded
    /// (the journal is emptied after the rename; a writer killed first
    /// leaves a journal that is then never applied again).
    pub(super) fn take_journal_events(
        &self,
        doc: &mut XmlLab,
        journal: &mut Journal,
    ) -> Result<()> {
        if let Some(token) = &journal.token
            && !journal.records.is_empty()
        {
            doc.set_journal_folded(token);
        }
        let events = journal.events();
        let Some(last) = journal.last_seq() else {
            return Ok(());
        };
        // After the pending lines, which stay as they were written.
        let mut pending = doc.pending_lines();
        pending.add(&events)?;
        doc.put_pending(&pending);
        doc.set_event_seq(doc.event_seq().map_or(last, |seq| seq.max(last)));
        journal.records.iter_mut().for_each(Record::forget_events);
        Ok(())
    }

    /// What the last transaction left; a poisoned lock (a panic elsewhere)
    /// holds nothing to trust, so it reads as nothing.
    pub(super) fn last_written(&self) -> std::sync::MutexGuard<'_, Option<Box<Written>>> {
        self.written.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        })
    }

    /// Whether the state file, read through `state` (the descriptor that
    /// holds its lock), holds exactly the text `doc` renders.
    pub(super) fn holds(&self, mut state: &File, doc: &XmlLab) -> Result<bool> {
        state
            .seek(SeekFrom::Start(0))
            .and_then(|_| doc.rendered_by(&mut state))
            .map_err(|e| Error::io("read", &self.path, e))
    }

    /// The text of `doc`, in pieces, proven to read back before anything
    /// is written (what changed is parsed again, in place; see
    /// [`XmlLab::render`]): mama never writes a file it could not read back.
    pub(super) fn rendered<'d>(&self, doc: &'d XmlLab) -> Result<Vec<std::borrow::Cow<'d, str>>> {
        doc.render().map_err(|e| {
            Error::Invalid(format!(
                "internal error: the new state would not parse ({e}); {} was left unchanged",
                self.path.display()
            ))
        })
    }

    /// Replaces the state file with `doc`, keeping its mode, group and
    /// (where permitted) owner. `locked` is the state file as this writer
    /// locked it (the descriptor that holds its lock, checked to be the
    /// file at the path once locked, which no writer replaces meanwhile);
    /// without one, the file at the path is opened.
    pub(super) fn replace(&self, doc: &XmlLab, locked: Option<&File>) -> Result<()> {
        let text = self.rendered(doc)?;
        // The file being replaced lends its mode, owner, group, ACLs and
        // extended attributes to the new one: the locked descriptor, not
        // the same file opened once more.
        let opened;
        let old = match locked {
            Some(file) => Some(file),
            None => {
                opened = self.open_state()?;
                opened.as_ref()
            }
        };
        let like = match old {
            Some(file) => Some(
                file.metadata()
                    .map_err(|e| Error::io("read", &self.path, e))?,
            ),
            None => None,
        };
        let pieces: Vec<&[u8]> = text.iter().map(|piece| piece.as_bytes()).collect();
        self.lab_folder()?.replace_with(
            &self.state_name(),
            &self.temp_name(),
            &pieces,
            like.as_ref(),
            old,
        )
    }

    /// Writes `doc` into the state file in place, through `state`, the
    /// descriptor that holds its lock (PHP mama's way, so a PHP mama that
    /// waits for that lock reads and writes the file mama wrote). First the
    /// new text and the text the state file holds go, synced, into `copy`
    /// (the lab's lock file, which this writer holds) as a roll-forward
    /// copy (see [`rollforward`]); then the state file is overwritten, cut
    /// to length and synced; then the copy is emptied. A writer killed in
    /// between leaves a state file that is a mix of the two texts and a
    /// whole copy, which readers read and the next writer puts back. A
    /// write that fails (a full disk) puts the old text back before it
    /// says so, so a change reported as failed is never made later.
    pub(super) fn write_in_place(&self, doc: &XmlLab, state: &File, copy: &File) -> Result<()> {
        let new = self.rendered(doc)?.concat();
        let old = read_all(state).map_err(|e| Error::io("read", &self.path, e))?;
        copy.set_len(0)
            .and_then(|()| copy.write_all_at(&Copy::encode(new.as_bytes(), &old), 0))
            .and_then(|()| copy.sync_data())
            .map_err(|e| {
                // Nothing of the state file was touched: the copy goes.
                let _ = copy.set_len(0);
                Error::Invalid(format!(
                    "cannot write {} in place (PHP mama shares it): its roll-forward copy goes \
                     first to {}, which failed: {e}; the state file was left unchanged",
                    self.path.display(),
                    self.lock_path().display()
                ))
            })?;
        let put = |text: &[u8]| {
            state
                .write_all_at(text, 0)
                .and_then(|()| state.set_len(text.len() as u64))
                .and_then(|()| state.sync_data())
        };
        if let Err(e) = put(new.as_bytes()) {
            // The old text fits where it stood: putting it back needs no
            // room the file did not have.
            return Err(match put(&old) {
                Ok(()) => {
                    let _ = copy.set_len(0);
                    Error::Invalid(format!(
                        "cannot write {}: {e}; the state file was left as it was",
                        self.path.display()
                    ))
                }
                Err(again) => Error::Invalid(format!(
                    "cannot write {}: {e}; putting back what it held failed too ({again}): \
                     the next command completes the change from its roll-forward copy in {}",
                    self.path.display(),
                    self.lock_path().display()
                )),
            });
        }
        // Not synced: after a crash, a copy beside the text it holds as
        // new is stale (see `rollforward`).
        copy.set_len(0)
            .map_err(|e| Error::io("empty the roll-forward copy in", &self.lock_path(), e))
    }

    /// Puts the new text of the whole roll-forward copy in `copy` into the
    /// state file in place, before a write that replaces the copy: while
    /// the state file is not that text, the copy is the only whole one.
    pub(super) fn put_back(&self, state: &File, copy: &File) -> Result<()> {
        let Some(whole) = Copy::read(copy) else {
            return Ok(());
        };
        state
            .write_all_at(&whole.new, 0)
            .and_then(|()| state.set_len(whole.new.len() as u64))
            .and_then(|()| state.sync_data())
            .map_err(|e| fsutil::error("write", &self.path, e))
    }
}

/// Every byte of `file`, read from its start (at most a document's worth).
fn read_all(file: &File) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut reader = file;
    reader.seek(SeekFrom::Start(0))?;
    reader.take(doc::MAX_DOCUMENT + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}
