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
//! copy, and the next writer puts it back in place. A state file missing
//! in PHP mama's installation is first made as PHP mama makes it, a copy
//! of its `mama.xml-default`, but whole and never over a file that PHP mama
//! made meanwhile; then the transaction reads and writes it in place.
//!
//! The state file's folder is opened once, when the state file is located;
//! every file beside the state file is opened through that descriptor by
//! [`crate::backend::file::fsutil`]: never through a link, and never in a
//! folder put in its place since.

mod bookkeeping;
pub mod fsutil;
pub mod journal;
pub mod lock;
mod locks;
pub mod log;
pub mod memory;
pub mod rollforward;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::{LockPatience, Snapshot};
use crate::format::doc::{self, XmlLab};
use crate::model::Lab;
use crate::model::event::Event;
use bookkeeping::Bookkeeping;
use fsutil::Dir;
use journal::{Identity, Journal, Record};
use lock::{FileLock, LockFile, Mode};
use log::History;

/// The state file and the files mama keeps beside it.
#[derive(Debug, Clone)]
pub struct FileStore {
    /// The state file as located (a link to it resolved), for people.
    path: PathBuf,
    /// Its folder's path, resolved once, for people.
    dir: PathBuf,
    /// Its folder, opened once, when the state file was located: every
    /// file mama opens is in it, opened through this descriptor without
    /// following a link (or why it could not be opened).
    folder: std::result::Result<Arc<Dir>, Unreached>,
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

/// Why the state file's folder could not be opened when it was located:
/// the error met on the way to it (`ENOENT`: it is not there).
#[derive(Debug, Clone)]
struct Unreached {
    /// The folder's path.
    path: PathBuf,
    errno: i32,
}

/// Resolves the state path to the real file's path, checking every
/// symbolic link on the way, in any component, not only the last: a link
/// is followed only when it belongs to this user, to root or to the owner
/// of the folder it stands in (the rule the kernel's `protected_symlinks`
/// applies in shared folders). In a folder the lab's group may write, a
/// member could otherwise rename the lab's folder (or the state file) and
/// put a link in its place, and everyone's mama, root's included, would
/// create its lock and log files, and write the state, wherever the link
/// points. A path that does not exist (yet) resolves as far as it does.
///
/// The walk goes from `/` through descriptors: each folder is opened from
/// the one before (never through a link), each link is judged where it
/// stands, and the state file's folder is the descriptor the walk ends in,
/// exactly the folder judged: every file beside the state file is opened
/// through it, wherever its path leads by then.
fn resolve_trusted(start: &Path) -> Result<(PathBuf, std::result::Result<Dir, Unreached>)> {
    use std::path::Component;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let absolute = match start.is_absolute() {
        true => start.to_path_buf(),
        false => std::env::current_dir()
            .map_err(|e| Error::io("find the current folder for", start, e))?
            .join(start),
    };
    // What is left to walk, last component first; and where the walk is.
    let mut left: Vec<std::ffi::OsString> = Vec::new();
    let push_all = |left: &mut Vec<std::ffi::OsString>, path: &Path| {
        let parts: Vec<_> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(part) => Some(part.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        left.extend(parts.into_iter().rev());
    };
    push_all(&mut left, &absolute);
    // The folder the walk is in, and those it came through, `/` first,
    // each opened from the one before.
    let mut here = Dir::root().map_err(|e| Error::io("open the folder", Path::new("/"), e))?;
    let mut walked: Vec<Dir> = Vec::new();
    let mut at = PathBuf::from("/");
    // Whether `at` is `here` (else a name in it).
    let mut at_walked = true;
    // The error that stopped the walk before the state file's folder.
    let mut stopped = None;
    let mut links = 0;
    while let Some(part) = left.pop() {
        if part == ".." {
            if let Some(up) = walked.pop() {
                here = up;
            }
            at.pop();
            continue;
        }
        let next = at.join(&part);
        let entry = match here.entry(&part) {
            Ok(entry) => entry,
            // Not there (yet): the rest is taken as written.
            Err(e) => {
                if !left.is_empty() {
                    stopped = Some(e);
                }
                at = next;
                at_walked = false;
                break;
            }
        };
        if !entry.is_symlink() {
            at = next;
            at_walked = false;
            if left.is_empty() {
                break;
            }
            if !entry.is_dir() {
                stopped = Some(io::Error::from_raw_os_error(libc::ENOTDIR));
                break;
            }
            match here.step(&part) {
                Ok(dir) => walked.push(std::mem::replace(&mut here, dir)),
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
            at_walked = true;
            continue;
        }
        links += 1;
        if links > 40 {
            return Err(Error::Invalid(format!(
                "{}: too many symbolic links",
                start.display()
            )));
        }
        let folder_owner = here.metadata().map(|m| m.uid()).ok();
        if entry.uid() != me && entry.uid() != 0 && Some(entry.uid()) != folder_owner {
            return Err(Error::Planted {
                path: next,
                what: crate::error::UNTRUSTED_LINK,
                expected: "a link of this user, root or the folder's owner",
            });
        }
        let target = here
            .read_link(&part)
            .map_err(|e| Error::io("read the link", &next, e))?;
        if target.is_absolute() {
            walked.truncate(1);
            if let Some(root) = walked.pop() {
                here = root;
            }
            at = PathBuf::from("/");
        }
        push_all(&mut left, &target);
    }
    while let Some(part) = left.pop() {
        at.push(part);
    }
    let folder_path = at.parent().unwrap_or(Path::new("/")).to_path_buf();
    let unreached = |e: io::Error| Unreached {
        path: folder_path.clone(),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    };
    let folder = match stopped {
        Some(e) => Err(unreached(e)),
        None => {
            // The folder holding `at`: where the walk is, or the one
            // before when `at` is itself that folder (a path ending in `..`).
            let folder = match walked.last() {
                Some(up) if at_walked => up,
                _ => &here,
            };
            folder.readable().map_err(unreached)
        }
    };
    Ok((at, folder))
}

/// The state file as parsed.
struct Loaded {
    doc: XmlLab,
    /// Read from the roll-forward copy: the state file was cut short by a
    /// writer killed while writing it in place.
    rolled_forward: bool,
    /// The journal read with it, its records applied to `doc`.
    journal: Journal,
}

/// PHP mama's own file in its folder (`MAMA_PATH`), beside `mama.xml`: it
/// copies it when mama.xml is missing.
const PHP_DEFAULT: &str = "mama.xml-default";

use rollforward::{Copy, Verdict};

/// How long an empty state file in PHP mama's installation is given to be
/// written by the PHP mama copying `mama.xml-default` into it.
const PHP_COPY_WAIT: Duration = Duration::from_secs(2);

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
            last_event: self.doc.event_seq().max(self.journal.last_seq()),
        }
    }
}

/// The error of a document past [`doc::MAX_DOCUMENT`].
pub fn too_large(path: &Path, size: u64) -> Error {
    Error::Invalid(format!(
        "{} is {} bytes or more, past the {} MiB a lab may hold; mama reads no larger file",
        path.display(),
        size,
        doc::MAX_DOCUMENT >> 20
    ))
}

/// Whether `file` is the file now at `name` in `dir` (not one renamed
/// away).
fn is_at(file: &File, dir: &Dir, name: &OsStr) -> Result<bool> {
    let held = file
        .metadata()
        .map_err(|e| Error::io("read", &dir.child(name), e))?;
    Ok(dir.entry(name).is_ok_and(|now| now.is(&held)))
}

impl FileStore {
    /// The state file at `path` (see [`crate::settings::Settings::state`]).
    /// A symbolic link is followed, here and only here, so the lock and temporary files sit
    /// beside the real file and the rename replaces it, not the link; the
    /// folder is resolved too, and opened, once: every file beside the
    /// state file is opened through it. Beside it, links are never followed.
    pub fn locate(path: PathBuf) -> Result<FileStore> {
        let (real, folder) = resolve_trusted(&path)?;
        let dir = match real.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("/"),
        };
        // Messages name the path as given, unless it was a link to the
        // state file: then the real file.
        let path = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => real,
            _ => path,
        };
        Ok(FileStore {
            path,
            dir,
            folder: folder.map(Arc::new),
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

    fn file_name(&self) -> OsString {
        self.path
            .file_name()
            .map_or_else(|| "mama.xml".into(), |n| n.to_os_string())
    }

    /// The name of a file beside the state file: `prefix`, the state
    /// file's name, `suffix`.
    fn beside(&self, prefix: &str, suffix: &str) -> OsString {
        let mut name = OsString::from(prefix);
        name.push(self.file_name());
        name.push(suffix);
        name
    }

    /// The path of the file `name` beside the state file, for messages.
    fn shown(&self, name: &OsStr) -> PathBuf {
        self.dir.join(name)
    }

    /// The state file's name in its folder: what mama opens.
    fn state_name(&self) -> OsString {
        self.beside("", "")
    }

    /// The lock file that guards the state file, for messages.
    fn lock_path(&self) -> PathBuf {
        self.shown(&self.beside("", ".lock"))
    }

    /// The journal: what runs changed since the state file was written.
    fn journal_name(&self) -> OsString {
        self.beside("", ".journal")
    }

    /// The one temporary file a writer uses.
    fn temp_name(&self) -> OsString {
        self.beside(".", ".tmp")
    }

    /// The state file's folder, as opened when the state file was located;
    /// `None` when it does not exist.
    fn folder(&self) -> Result<Option<&Arc<Dir>>> {
        match &self.folder {
            Ok(folder) => Ok(Some(folder)),
            Err(unreached) if unreached.errno == libc::ENOENT => Ok(None),
            Err(unreached) => Err(fsutil::error(
                "open the folder",
                &unreached.path,
                io::Error::from_raw_os_error(unreached.errno),
            )),
        }
    }

    /// The state file's folder, which must be there.
    fn lab_folder(&self) -> Result<&Arc<Dir>> {
        self.folder()?.ok_or_else(|| {
            fsutil::error(
                "open the folder",
                &self.dir,
                io::Error::from(io::ErrorKind::NotFound),
            )
        })
    }

    /// Whether this user may write the state file's folder.
    fn may_write_folder(&self) -> bool {
        matches!(self.folder(), Ok(Some(folder)) if folder.may_write_here().is_ok())
    }

    /// Opens the regular file `name` beside the state file (never through
    /// a link planted after it was located); `None` when there is none.
    fn open_beside(&self, name: &OsStr, write: bool) -> Result<Option<File>> {
        match self.folder()? {
            Some(folder) => folder.open_file(name, write),
            None => Ok(None),
        }
    }

    /// The state file, opened for reading; `None` when there is none.
    fn open_state(&self) -> Result<Option<File>> {
        self.open_beside(&self.state_name(), false)
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
        let folder = self.lab_folder()?;
        let lock = LockFile::new(Arc::clone(folder), self.beside("", ".lock"));
        let path = lock.path();
        // Who may not write the state neither creates its lock file (it
        // would be theirs, closed to the writers) nor holds it.
        if mode == Mode::Shared && like.is_some() && folder.may_write(&self.state_name()).is_err() {
            return Ok(None);
        }
        let file = match lock.open(like) {
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
                crate::text::seconds(started.elapsed())
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
        let Some(folder) = self.folder()? else {
            return Ok(None);
        };
        let name = self.state_name();
        for _ in 0..100 {
            let Some(file) = folder.open_file(&name, mode == Mode::Exclusive)? else {
                return Ok(None);
            };
            let lock = self.wait_for(file, &self.path, mode)?;
            if is_at(lock.file(), folder, &name)? {
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
        if self.may_write_folder() {
            return Error::ReadOnly { context, source };
        }
        let group = match self.metadata() {
            Ok(Some(meta)) => group_name(meta.gid()),
            _ => "GROUP".to_string(),
        };
        let at = |suffix: &str| self.shown(&self.beside("", suffix)).display().to_string();
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
            return Err(self.no_lab());
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
        self.transact(false, change)
    }

    /// [`FileStore::update`] that creates the state file when there is
    /// none (`add`, `import`); every other transaction on a missing state
    /// file is [`Error::NoLab`], and leaves nothing behind.
    pub fn update_or_create<T>(&self, change: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
        self.transact(true, change)
    }

    /// The error for a state file that is not there.
    fn no_lab(&self) -> Error {
        Error::NoLab(self.path.display().to_string())
    }

    fn transact<T>(&self, create: bool, change: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
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
        Ok(value)
    }

    /// Whether PHP mama shares the state file, so it is written in place:
    /// the file says so (`<php_compat>`), PHP mama's own `mama.xml-default`
    /// is beside `mama.xml` (its installation, `MAMA_PATH`), or this user
    /// may not write the folder (so a rename cannot work).
    fn in_place(&self, doc: &XmlLab) -> bool {
        doc.php_compat() || self.php_installation() || !self.may_write_folder()
    }

    /// Whether the state file is `mama.xml` in PHP mama's installation
    /// (`MAMA_PATH`): its `mama.xml-default` is a regular file beside it.
    fn php_installation(&self) -> bool {
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
    fn install_php_default(&self) -> Result<bool> {
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
            .history()?
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
    fn history(&self) -> Result<History> {
        let folder = Arc::clone(self.lab_folder()?);
        Ok(History::new(folder, self.beside("", ".log")))
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
    fn await_php_copy(&self, file: &File) {
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
    fn replay(
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
    /// (where permitted) owner. `locked` is the state file as this writer
    /// locked it (the descriptor that holds its lock, checked to be the
    /// file at the path once locked, which no writer replaces meanwhile);
    /// without one, the file at the path is opened.
    fn replace(&self, doc: &XmlLab, locked: Option<&File>) -> Result<()> {
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
    fn write_in_place(&self, doc: &XmlLab, state: &File, copy: &File) -> Result<()> {
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
    fn put_back(&self, state: &File, copy: &File) -> Result<()> {
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

impl super::Backend for FileStore {
    fn with_patience(&self, patience: LockPatience) -> Arc<dyn super::Backend> {
        Arc::new(self.clone().with_patience(patience))
    }

    fn location(&self) -> String {
        self.path().display().to_string()
    }

    /// The state file's absolute path.
    fn for_jobs(&self) -> OsString {
        std::path::absolute(self.path())
            .unwrap_or_else(|_| self.path().to_path_buf())
            .into_os_string()
    }

    fn export(&self) -> Result<String> {
        FileStore::export(self)
    }

    fn read(&self) -> Result<Snapshot> {
        FileStore::read(self)
    }

    /// A state file keeps its own document around the machines it imports.
    fn transact(
        &self,
        kind: super::Transaction<'_>,
        change: &mut dyn FnMut(&mut Lab) -> Result<()>,
    ) -> Result<()> {
        match kind {
            super::Transaction::Update => self.update(change),
            super::Transaction::Create | super::Transaction::Import { .. } => {
                self.update_or_create(change)
            }
        }
    }

    fn recent_events(&self, machine: &str, count: usize) -> Result<(Snapshot, Vec<Event>)> {
        FileStore::recent_events(self, machine, count)
    }

    fn read_events(&self, after: Option<u64>) -> Result<(Snapshot, Vec<Event>)> {
        FileStore::read_events(self, after)
    }
}
