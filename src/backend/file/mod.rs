//! The state store: where the state file is, its locks, and transactions.
//!
//! Every change is one transaction: take the exclusive lock on the lock file
//! beside the state file, then PHP mama's lock (an exclusive `flock` on the
//! state file itself), read and parse, change, write, release. Readers take
//! both locks shared, briefly. The lock order (lock file, then state file;
//! a machine's job lock is only ever tried, never waited for, while they
//! are held) keeps mama processes from deadlocking one another, and PHP
//! mama takes only the second, so it never waits for mama while holding
//! anything mama waits for.
//!
//! A write replaces the whole file atomically (temporary file in the same
//! folder, fsync, rename, fsync the folder): a process killed at any instant
//! leaves the old file or the new one, and at most one temporary file,
//! which the next writer removes. Where PHP mama shares the file (compat
//! mode: a top-level `<php_compat>` element, PHP mama's `mama.xml-default`
//! beside `mama.xml`, or a folder this user may not write), a rename would
//! leave PHP mama locking and writing a file that is no longer there, so
//! mama writes in place, as PHP mama does, through the descriptor that
//! holds the lock: first a synced roll-forward copy of the new text into
//! the lock file, then the state file, then it empties the copy. A reader
//! that finds the state file cut short (a writer killed mid-write) reads the
//! copy, and the next writer puts it back in place.
//!
//! Every file beside the state file is opened through
//! [`crate::backend::file::fsutil`]: never through a link.

pub mod doc;
pub mod fsutil;
pub mod journal;
pub mod lock;
pub mod log;
pub mod memory;
pub mod xml;

use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::{HeldJobLocks as Held, JobLock, LockPatience, Snapshot};
use crate::model::Lab;
use crate::model::event::Event;
use doc::XmlLab;
use journal::{Identity, Journal, Record};
use lock::{FileLock, Mode};
use log::History;

/// The state file and the files mama keeps beside it.
#[derive(Debug, Clone)]
pub struct FileStore {
    /// The state file as located (a link to it resolved), for people.
    path: PathBuf,
    /// Its folder, resolved once: every file mama opens is in it, opened
    /// without following a link.
    dir: PathBuf,
    /// How long to wait for the lab's lock.
    patience: LockPatience,
    /// What this store's last transaction left in the file (see
    /// [`Written`]), shared by its clones (a run claims through a clone
    /// with its own patience, and releases through the original).
    written: Arc<Mutex<Option<Box<Written>>>>,
}

/// The document and the lab as this process's last transaction left them.
/// The next transaction (a run's release, after its claim) reads the file
/// as always, but when it holds exactly the text this document renders (a
/// comparison of bytes), it takes these instead of scanning the text
/// again: that text was checked when read, and what changed was proven
/// when written. Anything else in the file, even one byte changed in place
/// by another tool, and the file is read afresh.
#[derive(Debug, Clone)]
struct Written {
    doc: XmlLab,
    lab: Lab,
}

/// Checks each symbolic link on the way from the state path to the real
/// file: a link is followed only when it belongs to this user, to root or
/// to the owner of the folder it stands in (the rule the kernel's
/// `protected_symlinks` applies in shared folders). In a folder the lab's
/// group may write, a member could otherwise replace the state file with a
/// link, and everyone's mama, root's included, would create its lock and
/// log files, and write the state, wherever the link points.
fn trusted_links(start: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut path = start.to_path_buf();
    for _ in 0..40 {
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(_) => return Ok(()),
        };
        if !meta.file_type().is_symlink() {
            return Ok(());
        }
        let folder = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let folder_owner = fs::metadata(&folder).map(|m| m.uid()).ok();
        if meta.uid() != me && meta.uid() != 0 && Some(meta.uid()) != folder_owner {
            return Err(Error::Planted {
                path,
                what: crate::error::UNTRUSTED_LINK,
                expected: "a link of this user, root or the folder's owner",
            });
        }
        let target = fs::read_link(&path).map_err(|e| Error::io("read the link", &path, e))?;
        path = folder.join(target);
    }
    Err(Error::Invalid(format!(
        "{}: too many symbolic links",
        start.display()
    )))
}

/// The machines whose job locks were held at one look (see
/// [`JobLocks::held_job_locks`]).
pub struct HeldJobLocks {
    /// The names of the held lock files in the job locks' folder.
    names: std::collections::HashSet<std::ffi::OsString>,
}

impl HeldJobLocks {
    pub fn contains(&self, machine: &str) -> bool {
        !self.names.is_empty()
            && self
                .names
                .contains(std::ffi::OsStr::new(&lock::file_name(machine)))
    }
}

/// The state file as parsed, and whether there was one.
struct Loaded {
    doc: XmlLab,
    existed: bool,
    /// Read from the roll-forward copy: the state file was cut short by a
    /// writer killed while writing it in place.
    rolled_forward: bool,
    /// The journal read with it, its records applied to `doc`.
    journal: Journal,
}

/// The first words of a roll-forward copy in the lock file; then the
/// length of the text and its FNV-1a 64-bit hash (16 hex digits), a
/// newline, and the text.
const ROLL_FORWARD: &str = "mama roll-forward 1";

/// The longest roll-forward copy read back (it is a copy of a state file).
const MAX_COPY: u64 = 64 << 20;

/// PHP mama's own file in its folder (`MAMA_PATH`), beside `mama.xml`: it
/// copies it when mama.xml is missing.
const PHP_DEFAULT: &str = "mama.xml-default";

/// The 64-bit FNV-1a hash: the roll-forward copy's checksum.
use journal::fnv1a_64;

/// The name of the group `gid`, or its number.
fn group_name(gid: u32) -> String {
    // SAFETY: a struct of plain fields and pointers, all zero until
    // getgrgid_r fills it in.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the read
    // of the name it holds.
    let rc = unsafe { libc::getgrgid_r(gid, &mut group, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || group.gr_name.is_null() {
        return gid.to_string();
    }
    // SAFETY: a NUL-terminated name inside `buf`.
    unsafe { std::ffi::CStr::from_ptr(group.gr_name) }
        .to_string_lossy()
        .into_owned()
}

impl Loaded {
    fn snapshot(mut self) -> Snapshot {
        Snapshot {
            lab: self.doc.take_model(),
            existed: self.existed,
            last_event: self.doc.event_seq().max(self.journal.last_seq()),
        }
    }
}

/// Whether `file` is the file now at `path` (not one renamed away).
fn is_at(file: &File, path: &Path) -> Result<bool> {
    let held = file.metadata().map_err(|e| Error::io("read", path, e))?;
    Ok(fs::symlink_metadata(path)
        .is_ok_and(|now| now.dev() == held.dev() && now.ino() == held.ino()))
}

impl FileStore {
    /// The state file at `path` (see [`crate::settings::Settings::state`]).
    /// A symbolic link is followed, here and only here, so the lock and temporary files sit
    /// beside the real file and the rename replaces it, not the link; the
    /// folder is resolved too. Beside it, links are never followed.
    pub fn locate(path: PathBuf) -> Result<FileStore> {
        let path = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                trusted_links(&path)?;
                fs::canonicalize(&path).unwrap_or(path)
            }
            _ => path,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        Ok(FileStore {
            path,
            dir,
            patience: LockPatience::forever(),
            written: Arc::default(),
        })
    }

    /// This store, waiting for the lab's lock as `patience` says (`run
    /// --no-wait`, `--wait-timeout`, `wait --timeout`); a wait that gives up
    /// is [`Error::Busy`].
    pub fn with_patience(mut self, patience: LockPatience) -> FileStore {
        self.patience = patience;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_name(&self) -> OsString {
        self.path
            .file_name()
            .map_or_else(|| "mama.xml".into(), |n| n.to_os_string())
    }

    /// A file beside the state file: `prefix`, the state file's name,
    /// `suffix`.
    fn beside(&self, prefix: &str, suffix: &str) -> PathBuf {
        let mut name = OsString::from(prefix);
        name.push(self.file_name());
        name.push(suffix);
        self.dir.join(name)
    }

    /// The state file in its resolved folder: what mama opens.
    fn real_path(&self) -> PathBuf {
        self.beside("", "")
    }

    /// The lock file that guards the state file.
    fn lock_path(&self) -> PathBuf {
        self.beside("", ".lock")
    }

    /// The journal: what runs changed since the state file was written.
    fn journal_path(&self) -> PathBuf {
        self.beside("", ".journal")
    }

    /// The one temporary file a writer uses.
    fn temp_path(&self) -> PathBuf {
        self.beside(".", ".tmp")
    }

    /// The folder of per-machine lock files (held by running jobs).
    fn machine_locks_dir(&self) -> PathBuf {
        self.beside("", ".locks")
    }

    /// The state file, opened for reading (never through a link planted
    /// after it was located); `None` when there is none.
    fn open_state(&self) -> Result<Option<File>> {
        fsutil::open_file(&self.real_path(), false)
    }

    fn metadata(&self) -> Result<Option<Metadata>> {
        match self.open_state()? {
            Some(file) => file
                .metadata()
                .map(Some)
                .map_err(|e| Error::io("read", &self.path, e)),
            None => Ok(None),
        }
    }

    /// Takes the lab's lock. After a second of waiting, says on stderr what
    /// it waits for (the lock and, where /proc tells, who holds it); gives
    /// up as the store's patience says. A reader that may not write the
    /// state file, or not open the lock file (no permission, a read-only
    /// file system), goes on without it (`None`), with the state file's own
    /// lock alone.
    fn lab_lock(&self, mode: Mode, like: Option<&Metadata>) -> Result<Option<FileLock>> {
        let path = self.lock_path();
        // Who may not write the state neither creates its lock file (it
        // would be theirs, closed to the writers) nor holds it.
        if mode == Mode::Shared && like.is_some() && fsutil::may_write(&self.real_path()).is_err() {
            return Ok(None);
        }
        let file = match lock::open(&path, like) {
            Ok(file) => file,
            Err(e @ Error::Planted { .. }) => return Err(e),
            Err(_) if mode == Mode::Shared => return Ok(None),
            Err(e) => return Err(self.with_advice(e)),
        };
        self.wait_for(file, &path, mode).map(Some)
    }

    /// Takes the lock on `file` (at `path`), saying after a second what it
    /// waits for, and giving up as the store's patience says.
    fn wait_for(&self, file: File, path: &Path, mode: Mode) -> Result<FileLock> {
        let held_by = |file: &File| {
            lock::holder(file)
                .map(|h| format!(", taken by {h}"))
                .unwrap_or_default()
        };
        let started = Instant::now();
        let mut notice = |file: &File| {
            say!(
                "mama: waiting for the lab's lock {}{}",
                path.display(),
                held_by(file)
            )
        };
        let deadline = self.patience.give_up_at();
        match FileLock::wait(file, path, mode, deadline, &mut notice)? {
            Ok(lock) => Ok(lock),
            Err(file) if self.patience.no_wait => Err(Error::Busy(format!(
                "the lab's lock {} is held{}; not waiting (--no-wait)",
                path.display(),
                held_by(&file)
            ))),
            Err(file) => Err(Error::Busy(format!(
                "gave up waiting for the lab's lock {}{} after {}",
                path.display(),
                held_by(&file),
                crate::cli::render::seconds(started.elapsed())
            ))),
        }
    }

    /// Takes PHP mama's lock: a `flock` on the state file itself, shared
    /// to read, through a descriptor opened read-only, or exclusive and
    /// read-write to write (mama reads and writes in place through it, as
    /// PHP mama does). A state file that was replaced while this waited (by
    /// a rename) is let go and the new one locked. `None` when there is no
    /// state file.
    fn lock_state(&self, mode: Mode) -> Result<Option<FileLock>> {
        let path = self.real_path();
        for _ in 0..100 {
            let Some(file) = fsutil::open_file(&path, mode == Mode::Exclusive)? else {
                return Ok(None);
            };
            let lock = self.wait_for(file, &self.path, mode)?;
            if is_at(lock.file(), &path)? {
                return Ok(Some(lock));
            }
        }
        Err(Error::Invalid(format!(
            "cannot lock {}: it keeps being replaced",
            self.path.display()
        )))
    }

    /// An error of a writer who cannot create mama's files beside the state
    /// file because the folder is not theirs to write (PHP mama's layout: a
    /// folder of root's, 0755, and mama.xml 0660 in the lab's group): says
    /// which files its owner adds, once, so that the group may use every
    /// command.
    fn with_advice(&self, e: Error) -> Error {
        let Error::ReadOnly { context, source } = e else {
            return e;
        };
        if fsutil::may_write(&self.dir).is_ok() {
            return Error::ReadOnly { context, source };
        }
        let group = match self.metadata() {
            Ok(Some(meta)) => group_name(meta.gid()),
            _ => "GROUP".to_string(),
        };
        let at = |suffix: &str| self.beside("", suffix).display().to_string();
        Error::ReadOnly {
            context: format!(
                "{context} (the folder {} is not writable for you, as PHP mama installs it; \
                 for the group {group} to use every command, the folder's owner adds mama's \
                 files once: `install -m 0660 -g {group} /dev/null {}`, \
                 `install -m 0660 -g {group} /dev/null {}` and \
                 `install -d -m 2770 -g {group} {}`)",
                self.dir.display(),
                at(".lock"),
                at(".log"),
                at(".locks")
            ),
            source,
        }
    }

    /// Reads the lab under both locks, shared. Without the lab's lock file
    /// (a reader who may not write, a read-only folder or file system) the
    /// state file's own lock keeps writers out while it reads.
    pub fn read(&self) -> Result<Snapshot> {
        let like = self.metadata()?;
        if like.is_none() {
            return Ok(Snapshot::missing());
        }
        let lab = self.lab_lock(Mode::Shared, like.as_ref())?;
        let state = self.lock_state(Mode::Shared)?;
        Ok(self.load(state.as_ref(), lab.as_ref(), None)?.snapshot())
    }

    /// Runs one transaction: `change` gets the current lab; when it returns
    /// `Ok` having changed the lab, its changes are replayed onto the state
    /// file's tree and the new file is written (atomically, or in place
    /// where PHP mama shares it), its events with it. Every change, a run's
    /// claim and release included, is in the state file once the
    /// transaction ends. The state file is never written when `change`
    /// fails or changes nothing. A lab this user may not write (no
    /// permission on the state file or its folder, a read-only file
    /// system) is [`Error::ReadOnly`], before `change` runs where that can
    /// be told.
    pub fn update<T>(&self, change: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
        let like = self.metadata()?;
        if like.is_none() && !self.dir().is_dir() {
            return Err(Error::Invalid(format!(
                "cannot create {}: the folder {} does not exist",
                self.path.display(),
                self.dir().display()
            )));
        }
        fsutil::may_write(&match like {
            Some(_) => self.real_path(),
            None => self.dir.clone(),
        })?;
        let lab_lock = self.lab_lock(Mode::Exclusive, like.as_ref())?;
        let state_lock = self.lock_state(Mode::Exclusive)?;
        let lock_file = lab_lock.as_ref().map(FileLock::file);
        // A journal an earlier mama left (see [`journal`]): read with the
        // state, folded into it by this write, then removed.
        let journal_file = match state_lock {
            Some(_) => fsutil::open_file(&self.journal_path(), false)?,
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
                    journal_file.as_ref(),
                )?;
                let lab = loaded.doc.take_model();
                (loaded.doc, lab, loaded.rolled_forward, loaded.journal)
            }
        };
        let value = change(&mut lab)?;
        let folds = !journal.records.is_empty();
        if lab.is_changed() || rolled_forward || folds {
            doc.apply(lab.changes())?;
            let events = lab.take_events();
            self.take_journal_events(&mut doc, &mut journal)?;
            if !events.is_empty() {
                self.commit_events(&mut doc, events, like.as_ref(), true)
                    .map_err(|e| self.with_advice(e))?;
            }
            if journal_file.is_none() {
                doc.forget_journal_folded();
            }
            match (&state_lock, lock_file) {
                (Some(state), Some(lock_file)) if self.in_place(&doc) => {
                    self.write_in_place(&doc, state.file(), lock_file)?
                }
                _ => self.replace(&doc)?,
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
            let _ = fsutil::remove_file(&self.journal_path());
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
        Ok(value)
    }

    /// Whether PHP mama shares the state file, so it is written in place:
    /// the file says so (`<php_compat>`), PHP mama's own `mama.xml-default`
    /// is beside `mama.xml` (its installation, `MAMA_PATH`), or this user
    /// may not write the folder (so a rename cannot work).
    fn in_place(&self, doc: &XmlLab) -> bool {
        doc.php_compat()
            || (self.file_name() == "mama.xml"
                && fs::symlink_metadata(self.dir.join(PHP_DEFAULT)).is_ok_and(|m| m.is_file()))
            || fsutil::may_write(&self.dir).is_err()
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
    /// made.)
    fn commit_events(
        &self,
        doc: &mut XmlLab,
        events: Vec<Event>,
        like: Option<&Metadata>,
        flush: bool,
    ) -> Result<()> {
        let mut pending = doc.pending_events();
        let last = self
            .history()
            .commit(doc.event_seq(), &mut pending, events, like, flush)?;
        doc.set_pending_events(&pending)?;
        doc.set_event_seq(last);
        Ok(())
    }

    /// Takes the journal into the state before it is written whole: its
    /// events join the pending ones, and its token is written as folded
    /// (the journal is emptied after the rename; a writer killed first
    /// leaves a journal that is then never applied again).
    fn take_journal_events(&self, doc: &mut XmlLab, journal: &mut Journal) -> Result<()> {
        if let Some(token) = &journal.token
            && !journal.records.is_empty()
        {
            doc.set_journal_folded(token);
        }
        let events = journal.events();
        let Some(last) = journal.last_seq() else {
            return Ok(());
        };
        let mut pending = doc.pending_events();
        pending.extend(events);
        doc.set_pending_events(&pending)?;
        doc.set_event_seq(doc.event_seq().map_or(last, |seq| seq.max(last)));
        journal.records.iter_mut().for_each(Record::forget_events);
        Ok(())
    }

    /// The event log beside the state file.
    fn history(&self) -> History {
        History::new(self.beside("", ".log"))
    }

    /// The committed events (all of them, or those numbered after `after`),
    /// read under the shared locks with the state that holds the newest.
    pub fn read_events(&self, after: Option<u64>) -> Result<(Snapshot, Vec<Event>)> {
        self.with_history(|history, pending| history.read(after, pending))
    }

    /// The lab and what `events` takes from the history (given the
    /// state's pending events), read under the shared locks.
    fn with_history(
        &self,
        events: impl FnOnce(&History, Vec<Event>) -> Result<Vec<Event>>,
    ) -> Result<(Snapshot, Vec<Event>)> {
        let like = self.metadata()?;
        if like.is_none() {
            return Ok((Snapshot::missing(), Vec::new()));
        }
        let lab = self.lab_lock(Mode::Shared, like.as_ref())?;
        let state = self.lock_state(Mode::Shared)?;
        let loaded = self.load(state.as_ref(), lab.as_ref(), None)?;
        let mut pending = loaded.doc.pending_events();
        pending.extend(loaded.journal.events());
        let events = events(&self.history(), pending)?;
        Ok((loaded.snapshot(), events))
    }

    /// The lab, and the newest `count` committed events of `machine`
    /// (oldest first), read from the end of the log under the shared locks.
    pub fn recent_events(&self, machine: &str, count: usize) -> Result<(Snapshot, Vec<Event>)> {
        self.with_history(|history, pending| history.recent(machine, count, pending))
    }

    /// The state as upstream's format holds it, without mama's own
    /// bookkeeping (`export`); upstream's empty lab when there is none.
    pub fn export(&self) -> Result<String> {
        let like = self.metadata()?;
        if like.is_none() {
            return Ok(XmlLab::empty().to_xml());
        }
        let lab = self.lab_lock(Mode::Shared, like.as_ref())?;
        let state = self.lock_state(Mode::Shared)?;
        Ok(self
            .load(state.as_ref(), lab.as_ref(), None)?
            .doc
            .exported())
    }

    /// What the last transaction left; a poisoned lock (a panic elsewhere)
    /// holds nothing to trust, so it reads as nothing.
    fn last_written(&self) -> std::sync::MutexGuard<'_, Option<Box<Written>>> {
        self.written.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        })
    }

    /// Whether the state file, read through `state` (the descriptor that
    /// holds its lock), holds exactly the text `doc` renders.
    fn holds(&self, mut state: &File, doc: &XmlLab) -> Result<bool> {
        state
            .seek(SeekFrom::Start(0))
            .and_then(|_| doc.rendered_by(&mut state))
            .map_err(|e| Error::io("read", &self.path, e))
    }

    /// Reads the state file through the descriptor that holds its lock
    /// (`None`: there is none). A state file cut short by a writer killed
    /// while writing it in place is read from the roll-forward copy that
    /// writer left in the lab's lock file `lab`, when that copy is whole.
    fn load(
        &self,
        state: Option<&FileLock>,
        lab: Option<&FileLock>,
        journal: Option<&File>,
    ) -> Result<Loaded> {
        let Some(state) = state else {
            return Ok(Loaded {
                doc: XmlLab::empty(),
                existed: false,
                rolled_forward: false,
                journal: Journal::none(Identity::default()),
            });
        };
        memory::keep_freed_memory();
        let mut file = state.file();
        let meta = file
            .metadata()
            .map_err(|e| Error::io("read", &self.path, e))?;
        // Sized once: a lab of ten thousand machines is megabytes, and
        // growing the buffer by doubling would copy it and hold twice it.
        let size = usize::try_from(meta.len()).unwrap_or(0);
        let mut bytes = Vec::with_capacity(size.saturating_add(1));
        memory::populate(&mut bytes, XmlLab::room_for(size));
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(|e| Error::io("read", &self.path, e))?;
        let broken = match self.parse(bytes) {
            Ok(mut doc) => {
                let journal = self.replay(&mut doc, Identity::of(&meta), journal)?;
                return Ok(Loaded {
                    doc,
                    existed: true,
                    rolled_forward: false,
                    journal,
                });
            }
            Err(e) => e,
        };
        match lab.and_then(|lab| self.roll_forward_copy(lab.file())) {
            Some(doc) => Ok(Loaded {
                doc,
                existed: true,
                rolled_forward: true,
                journal: Journal::none(Identity::of(&meta)),
            }),
            None => Err(broken),
        }
    }

    /// Reads the journal of the state file `state` (from `file`, the
    /// journal opened by a writer; else opened here to read, if there is
    /// one this user may read) and applies its records' changes to `doc`,
    /// up to the first that does not apply (which only mama's own mistake
    /// could make). Their events stay in the journal (see
    /// [`FileStore::commit_events`]).
    fn replay(&self, doc: &mut XmlLab, state: Identity, file: Option<&File>) -> Result<Journal> {
        let opened;
        let file = match file {
            Some(file) => file,
            None => match fsutil::open_file(&self.journal_path(), false) {
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
            .map_err(|e| Error::io("read", &self.journal_path(), e))?;
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

    /// The whole roll-forward copy in the lock file `journal`, parsed; `None`
    /// when there is none, or it is cut short or damaged.
    fn roll_forward_copy(&self, mut journal: &File) -> Option<XmlLab> {
        let mut bytes = Vec::new();
        journal.seek(SeekFrom::Start(0)).ok()?;
        journal.take(MAX_COPY).read_to_end(&mut bytes).ok()?;
        let newline = bytes.iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&bytes[..newline]).ok()?;
        let (len, hash) = header.strip_prefix(ROLL_FORWARD)?.trim().split_once(' ')?;
        let text = &bytes[newline + 1..];
        if len.parse::<usize>().ok()? != text.len()
            || u64::from_str_radix(hash, 16).ok()? != fnv1a_64(text)
        {
            return None;
        }
        let doc = self.parse(text.to_vec()).ok()?;
        Some(doc)
    }

    /// Reads the state file's bytes as a lab: UTF-8, well-formed, a
    /// `<settings>` root (see [`XmlLab::read`]).
    fn parse(&self, bytes: Vec<u8>) -> Result<XmlLab> {
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

    fn corrupt(&self, location: Option<(usize, usize)>, message: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            location,
            message,
        }
    }

    /// The text of `doc`, in pieces, proven to read back before anything
    /// is written (what changed is parsed again, in place; see
    /// [`XmlLab::render`]): mama never writes a file it could not read back.
    fn rendered<'d>(&self, doc: &'d XmlLab) -> Result<Vec<std::borrow::Cow<'d, str>>> {
        doc.render().map_err(|e| {
            Error::Invalid(format!(
                "internal error: the new state would not parse ({e}); {} was left unchanged",
                self.path.display()
            ))
        })
    }

    /// Replaces the state file with `doc`, keeping its mode, group and
    /// (where permitted) owner.
    fn replace(&self, doc: &XmlLab) -> Result<()> {
        let text = self.rendered(doc)?;
        // The file being replaced lends its mode, owner, group, ACLs and
        // extended attributes to the new one.
        let old = self.open_state()?;
        let like = match &old {
            Some(file) => Some(
                file.metadata()
                    .map_err(|e| Error::io("read", &self.path, e))?,
            ),
            None => None,
        };
        let pieces: Vec<&[u8]> = text.iter().map(|piece| piece.as_bytes()).collect();
        fsutil::replace_with(
            &self.real_path(),
            &self.temp_path(),
            &pieces,
            like.as_ref(),
            old.as_ref(),
        )
    }

    /// Writes `doc` into the state file in place, through `state`, the
    /// descriptor that holds its lock (PHP mama's way, so a PHP mama that
    /// waits for that lock reads and writes the file mama wrote). First the
    /// new text goes, synced, into `journal` (the lab's lock file, which
    /// this writer holds) as a roll-forward copy; then the state file is
    /// overwritten, cut to length and synced; then the copy is emptied. A
    /// writer killed in between leaves a state file that does not parse
    /// and a whole copy, which readers read and the next writer puts back.
    fn write_in_place(&self, doc: &XmlLab, state: &File, journal: &File) -> Result<()> {
        // The whole new text, in one piece: it is copied into the
        // roll-forward copy first, with its length and hash.
        let text = self.rendered(doc)?.concat();
        let mut copy = format!(
            "{ROLL_FORWARD} {} {:016x}\n",
            text.len(),
            fnv1a_64(text.as_bytes())
        )
        .into_bytes();
        copy.extend_from_slice(text.as_bytes());
        journal
            .set_len(0)
            .and_then(|()| journal.write_all_at(&copy, 0))
            .and_then(|()| journal.sync_data())
            .map_err(|e| {
                Error::Invalid(format!(
                    "cannot write {} in place (PHP mama shares it): its roll-forward copy goes \
                     first to {}, which failed: {e}; the state file was left unchanged",
                    self.path.display(),
                    self.lock_path().display()
                ))
            })?;
        state
            .write_all_at(text.as_bytes(), 0)
            .and_then(|()| state.set_len(text.len() as u64))
            .and_then(|()| state.sync_data())
            .map_err(|e| fsutil::error("write", &self.path, e))?;
        // Not synced: after a crash, a copy beside a state file that parses
        // is never applied (see `load`).
        journal
            .set_len(0)
            .map_err(|e| Error::io("empty the roll-forward copy in", &self.lock_path(), e))
    }
}

impl FileStore {
    /// The lock file a running job holds for `machine`, in the store's folder
    /// of machine locks (created on first use, open to those who may write
    /// the state file), and the state file's metadata to create it like.
    fn machine_lock(&self, machine: &str) -> Result<(PathBuf, Option<Metadata>)> {
        let dir = self.machine_locks_dir();
        let like = self.metadata()?;
        fsutil::ensure_folder(&dir, like.as_ref()).map_err(|e| self.with_advice(e))?;
        Ok((lock::path_in(&dir, machine), like))
    }
}

/// A random token for a place lock: 16 hex digits.
fn new_token() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: writes at most 8 bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != 8 {
        // No entropy to be had: unique enough from the PID and the time.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (now ^ (u64::from(std::process::id()) << 40)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `token` is one [`new_token`] makes: a queue is the lab's data,
/// and only such a token may name a file.
fn is_token(token: &str) -> bool {
    token.len() == 16
        && token
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl FileStore {
    /// The place lock file of `token`: `S.locks/TOKEN.wait`.
    fn place_path(&self, token: &str) -> Option<PathBuf> {
        is_token(token).then(|| self.machine_locks_dir().join(format!("{token}.wait")))
    }

    /// Takes a new place lock: a new file `S.locks/TOKEN.wait`, locked.
    pub fn hold_place(&self) -> Result<(String, FileLock, PathBuf)> {
        let dir = self.machine_locks_dir();
        let like = self.metadata()?;
        fsutil::ensure_folder(&dir, like.as_ref())?;
        for _ in 0..16 {
            let token = new_token();
            let Some(path) = self.place_path(&token) else {
                continue;
            };
            if fsutil::open_file(&path, false)?.is_some() {
                continue;
            }
            if let Some(lock) = FileLock::try_exclusive(&path, like.as_ref())? {
                return Ok((token, lock, path));
            }
        }
        Err(Error::Invalid(
            "cannot make a place lock: every token tried was taken".into(),
        ))
    }

    pub fn place_held(&self, token: &str) -> bool {
        self.place_path(token)
            .is_some_and(|path| lock::is_held(&path))
    }

    /// Sleeps on the place lock `token` until it is let go, at most
    /// `within`; a lock file that is gone was let go.
    pub fn wait_place(&self, token: &str, within: Duration) -> Result<bool> {
        let Some(path) = self.place_path(token) else {
            return Ok(true);
        };
        let Some(file) = fsutil::open_file(&path, false)? else {
            return Ok(true);
        };
        let deadline = Instant::now() + within;
        Ok(FileLock::wait(file, &path, Mode::Shared, Some(deadline), &mut |_| {})?.is_ok())
    }

    /// Removes the lock file of a place whose waiter is gone.
    pub fn forget_place(&self, token: &str) {
        if let Some(path) = self.place_path(token)
            && !lock::is_held(&path)
        {
            let _ = fsutil::remove_file(&path);
        }
    }
}

/// The job locks of the state file: `S.locks/NAME.lock`, a `flock` each.
impl FileStore {
    pub fn try_lock(&self, machine: &str) -> Result<Option<JobLock>> {
        let (path, like) = self.machine_lock(machine)?;
        Ok(FileLock::try_exclusive(&path, like.as_ref())?.map(JobLock::File))
    }

    pub fn wait_unlocked(&self, machine: &str, within: Duration) -> Result<bool> {
        let (path, like) = self.machine_lock(machine)?;
        Ok(FileLock::exclusive_within(&path, like.as_ref(), within)?.is_some())
    }

    pub fn held(&self, machine: &str) -> bool {
        lock::is_held(&lock::path_in(&self.machine_locks_dir(), machine))
    }

    pub fn inherited(&self, machine: &str) -> bool {
        lock::inherited_holds(&lock::path_in(&self.machine_locks_dir(), machine))
    }

    /// From one look at the locks folder and the kernel's lock table.
    pub fn held_job_locks(&self) -> Held {
        let names = lock::held_in(&self.machine_locks_dir());
        Held::File(HeldJobLocks { names })
    }
}
