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
mod init;

pub use init::init_at;
pub mod journal;
pub mod lock;
mod locks;
pub mod log;
pub mod memory;
mod read;
pub mod rollforward;
mod session;
mod write;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

use super::{LockPatience, Snapshot};
use crate::format::doc::{self, XmlLab};
use crate::model::Lab;
use crate::model::event::{Brief, Event};
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
///
/// With `strict` (`mama init`, which opens the folder it ends in and the
/// files there to the lab's group), a link is followed only when it
/// belongs to this user or to root: the owner of a folder on the way could
/// otherwise lead root's init to open a folder of root's to the group.
fn resolve_trusted(
    start: &Path,
    strict: bool,
) -> Result<(PathBuf, std::result::Result<Dir, Unreached>)> {
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
        if strict && entry.uid() != me && entry.uid() != 0 {
            return Err(Error::Invalid(format!(
                "{} is a symbolic link that belongs to {}; mama init follows only links of \
                 yours or root's, since it opens the folder a link leads to (and the files \
                 there) to the lab's group: name the real path, or have root make the link",
                next.display(),
                crate::os::user_name_of(entry.uid())
            )));
        }
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
    crate::os::group_name_of(gid)
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
        Self::locate_as(path, false)
    }

    /// [`FileStore::locate`] for `mama init`: only links of this user's or
    /// root's are followed, and those checked before any folder is made
    /// through one.
    pub fn locate_for_init(path: PathBuf) -> Result<FileStore> {
        Self::locate_as(path, true)
    }

    fn locate_as(path: PathBuf, strict: bool) -> Result<FileStore> {
        let (real, folder) = resolve_trusted(&path, strict)?;
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
}

impl super::Backend for FileStore {
    /// Who may write the state file, or put another in its place.
    fn writers(&self) -> Result<super::Writers> {
        let file = self
            .open_state()?
            .ok_or_else(|| Error::NoLab(self.path.display().to_string()))?;
        let mut writers =
            fsutil::writers_of(&file).map_err(|e| Error::io("read", &self.path, e))?;
        let folder = self.lab_folder()?;
        writers.extend(
            folder
                .replacers()
                .map_err(|e| Error::io("read", folder.path(), e))?,
        );
        // The lock file holds the roll-forward copy of a write in place,
        // which a reader takes for the lab when the state file looks torn:
        // whoever may write it may write the lab.
        if let Some(lock) = self.open_beside(&self.beside("", ".lock"), false)? {
            writers.extend(
                fsutil::writers_of(&lock).map_err(|e| Error::io("read", &self.lock_path(), e))?,
            );
        }
        Ok(super::Writers::Known(writers))
    }

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
        FileStore::export(self).map_err(|e| self.with_advice(e))
    }

    fn read(&self) -> Result<Snapshot> {
        FileStore::read(self).map_err(|e| self.with_advice(e))
    }

    /// A state file keeps its own document around the machines it imports.
    fn transact(
        &self,
        kind: super::Transaction<'_>,
        change: &mut dyn FnMut(&mut Lab) -> Result<()>,
    ) -> Result<Vec<Event>> {
        let ((), committed) = match kind {
            super::Transaction::Update => self.update(change),
            super::Transaction::Create | super::Transaction::Import { .. } => {
                self.update_or_create(change)
            }
        }
        .map_err(|e| self.with_advice(e))?;
        Ok(committed)
    }

    fn recent_events(&self, machine: &str, count: usize) -> Result<(Snapshot, Vec<Event>)> {
        FileStore::recent_events(self, machine, count).map_err(|e| self.with_advice(e))
    }

    fn read_events(&self, after: Option<u64>) -> Result<(Snapshot, Vec<Event>)> {
        FileStore::read_events(self, after).map_err(|e| self.with_advice(e))
    }

    fn scan_events(&self, visit: &mut dyn FnMut(&Brief<'_>)) -> Result<Snapshot> {
        FileStore::scan_events(self, visit)
    }

    fn each_event(&self, since: Option<i64>, visit: &mut dyn FnMut(Event)) -> Result<Snapshot> {
        FileStore::each_event(self, since, visit)
    }
}
