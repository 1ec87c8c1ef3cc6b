//! The state store: where the state file is, its lock, and transactions.
//!
//! Every change is one transaction: take the exclusive lock on the lock file
//! beside the state file, read and parse, change, write the whole file
//! atomically (temporary file in the same folder, fsync, rename, fsync the
//! folder), release. Readers take the lock shared, briefly. A process killed
//! at any instant leaves the old file or the new one, and at most one
//! temporary file, which the next writer removes. Every file beside the
//! state file is opened through [`crate::backend::file::fsutil`]: never through a link.

pub mod doc;
pub mod fsutil;
pub mod lock;
pub mod log;
pub mod xml;

use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::{HeldJobLocks as Held, JobLock, JobLocks, LockPatience, Snapshot};
use crate::model::Lab;
use crate::model::event::Event;
use doc::XmlLab;
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

/// Asks the allocator to keep the memory a transaction frees for the next
/// one, where it would hand large blocks back to the kernel at once. A run
/// reads the lab twice (claim, release): on a lab of megabytes the second
/// reading would otherwise fault every page of its buffers in afresh, a
/// good part of its time. The memory kept is what the first one used.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            const KEEP: libc::c_int = 256 << 20;
            // SAFETY: plain settings of the C allocator, made before the
            // blocks they concern are allocated; a refusal changes nothing.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP);
                libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP);
            }
        });
    }
}

/// The machines whose job locks were held at one look (see
/// [`JobLocks::held_job_locks`]).
pub struct HeldJobLocks {
    dir: PathBuf,
    names: std::collections::HashSet<std::ffi::OsString>,
}

impl HeldJobLocks {
    pub fn contains(&self, machine: &str) -> bool {
        !self.names.is_empty()
            && lock::path_in(&self.dir, machine)
                .file_name()
                .is_some_and(|name| self.names.contains(name))
    }
}

/// The state file as parsed, and whether there was one.
struct Loaded {
    doc: XmlLab,
    existed: bool,
}

impl Loaded {
    fn snapshot(mut self) -> Snapshot {
        Snapshot {
            lab: self.doc.take_model(),
            existed: self.existed,
            last_event: self.doc.event_seq(),
        }
    }
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
    /// file system), goes on without it (`None`): every write replaces the
    /// state whole, so a reader never sees a mix.
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
            Err(e) => return Err(e),
        };
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
        match FileLock::wait(file, &path, mode, deadline, &mut notice)? {
            Ok(lock) => Ok(Some(lock)),
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

    /// Reads the lab under a shared lock. When the lock file cannot be opened
    /// (a read-only folder or file system, or a lock file only writers may
    /// open), reads without it.
    pub fn read(&self) -> Result<Snapshot> {
        let like = self.metadata()?;
        if like.is_none() {
            return Ok(Snapshot::missing());
        }
        let _lock = self.lab_lock(Mode::Shared, like.as_ref())?;
        Ok(self.load()?.snapshot())
    }

    /// Runs one transaction: `change` gets the current lab; when it returns
    /// `Ok` having changed the lab, its changes are replayed onto the state
    /// file's tree and the new file is written atomically. The
    /// state file is never written when `change` fails or changes nothing.
    /// A lab this user may not write (no permission on the state file or
    /// its folder, a read-only file system) is [`Error::ReadOnly`], before
    /// `change` runs where that can be told.
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
        let _lock = self.lab_lock(Mode::Exclusive, like.as_ref())?;
        let last = self.last_written().take();
        let (mut doc, mut lab) = match self.open_state()? {
            None => (XmlLab::empty(), Lab::empty()),
            Some(mut file) => {
                let unchanged = match &last {
                    Some(last) => last
                        .doc
                        .rendered_by(&mut file)
                        .and_then(|same| file.seek(SeekFrom::Start(0)).map(|_| same))
                        .map_err(|e| Error::io("read", &self.path, e))?,
                    None => false,
                };
                match last {
                    Some(last) if unchanged => (last.doc, last.lab),
                    _ => {
                        let mut doc = self.parse(self.read_all(file)?)?;
                        let lab = doc.take_model();
                        (doc, lab)
                    }
                }
            }
        };
        let value = change(&mut lab)?;
        if lab.is_changed() {
            doc.apply(lab.changes())?;
            let events = lab.take_events();
            if !events.is_empty() {
                self.commit_events(&mut doc, events, like.as_ref())?;
            }
            self.write(&doc)?;
        }
        *self.last_written() = Some(Box::new(Written {
            doc,
            lab: lab.settled(),
        }));
        Ok(value)
    }

    /// Numbers this transaction's events after every event committed so
    /// far and puts them in the state's pending events, which its rename
    /// commits (see [`History::commit`]). When the state already holds
    /// [`FLUSH_AT`](log::FLUSH_AT) pending events, this
    /// transaction first appends to the log those it lacks, syncs it, and
    /// drops them all from the state. The log only ever receives committed
    /// events: a writer killed after appending leaves lines the state still
    /// holds too, which readers take once and the next flush does not
    /// append again. (A copy of every event to the log after each rename,
    /// unsynced, would keep the newest events through a restore of an older
    /// state file too; on ext4 it made every run 0.7 ms slower, since the
    /// state's next fsync flushed it, so it is not made.)
    fn commit_events(
        &self,
        doc: &mut XmlLab,
        events: Vec<Event>,
        like: Option<&Metadata>,
    ) -> Result<()> {
        let mut pending = doc.pending_events();
        let last = self
            .history()
            .commit(doc.event_seq(), &mut pending, events, like)?;
        doc.set_pending_events(&pending)?;
        doc.set_event_seq(last);
        Ok(())
    }

    /// The event log beside the state file.
    fn history(&self) -> History {
        History::new(self.beside("", ".log"))
    }

    /// The committed events (all of them, or those numbered after `after`),
    /// read under the shared lock with the state that holds the newest.
    pub fn read_events(&self, after: Option<u64>) -> Result<(Snapshot, Vec<Event>)> {
        let like = self.metadata()?;
        if like.is_none() {
            return Ok((Snapshot::missing(), Vec::new()));
        }
        let _lock = self.lab_lock(Mode::Shared, like.as_ref())?;
        let loaded = self.load()?;
        let events = self.history().read(after, loaded.doc.pending_events())?;
        Ok((loaded.snapshot(), events))
    }

    /// The lab, and the newest `count` committed events of `machine`
    /// (oldest first), read from the end of the log under the shared lock.
    pub fn recent_events(&self, machine: &str, count: usize) -> Result<(Snapshot, Vec<Event>)> {
        let like = self.metadata()?;
        if like.is_none() {
            return Ok((Snapshot::missing(), Vec::new()));
        }
        let _lock = self.lab_lock(Mode::Shared, like.as_ref())?;
        let loaded = self.load()?;
        let events = self
            .history()
            .recent(machine, count, loaded.doc.pending_events())?;
        Ok((loaded.snapshot(), events))
    }

    fn load(&self) -> Result<Loaded> {
        match self.read_bytes()? {
            Some(bytes) => Ok(Loaded {
                doc: self.parse(bytes)?,
                existed: true,
            }),
            None => Ok(Loaded {
                doc: XmlLab::empty(),
                existed: false,
            }),
        }
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

    /// The state file's bytes; `None` when there is none.
    fn read_bytes(&self) -> Result<Option<Vec<u8>>> {
        match self.open_state()? {
            Some(file) => self.read_all(file).map(Some),
            None => Ok(None),
        }
    }

    /// The rest of the state file's bytes.
    fn read_all(&self, mut file: File) -> Result<Vec<u8>> {
        keep_freed_memory();
        // Sized once: a lab of ten thousand machines is megabytes, and
        // growing the buffer by doubling would copy it and hold twice it.
        let size = file.metadata().map_or(0, |m| m.len());
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(1));
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", &self.path, e))?;
        Ok(bytes)
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

    /// Replaces the state file with `doc`, keeping its mode, group and
    /// (where permitted) owner. The text is proven to read back before
    /// anything is written (what changed is parsed again, in place; see
    /// [`XmlLab::render`]): mama never writes a file it could not read back.
    fn write(&self, doc: &XmlLab) -> Result<()> {
        let text = doc.render().map_err(|e| {
            Error::Invalid(format!(
                "internal error: the new state would not parse ({e}); {} was left unchanged",
                self.path.display()
            ))
        })?;
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
}

impl FileStore {
    /// The lock file a running job holds for `machine`, in the store's folder
    /// of machine locks (created on first use, open to those who may write
    /// the state file), and the state file's metadata to create it like.
    fn machine_lock(&self, machine: &str) -> Result<(PathBuf, Option<Metadata>)> {
        let dir = self.machine_locks_dir();
        let like = self.metadata()?;
        fsutil::ensure_folder(&dir, like.as_ref())?;
        Ok((lock::path_in(&dir, machine), like))
    }
}

/// The job locks of the state file: `S.locks/NAME.lock`, a `flock` each.
impl JobLocks for FileStore {
    fn try_lock(&self, machine: &str) -> Result<Option<JobLock>> {
        let (path, like) = self.machine_lock(machine)?;
        Ok(FileLock::try_exclusive(&path, like.as_ref())?.map(JobLock::File))
    }

    fn wait_unlocked(&self, machine: &str, within: Duration) -> Result<bool> {
        let (path, like) = self.machine_lock(machine)?;
        Ok(FileLock::exclusive_within(&path, like.as_ref(), within)?.is_some())
    }

    fn held(&self, machine: &str) -> bool {
        lock::is_held(&lock::path_in(&self.machine_locks_dir(), machine))
    }

    fn inherited(&self, machine: &str) -> bool {
        lock::inherited_holds(&lock::path_in(&self.machine_locks_dir(), machine))
    }

    /// From one look at the locks folder and the kernel's lock table.
    fn held_job_locks(&self) -> Held {
        let dir = self.machine_locks_dir();
        let names = lock::held_in(&dir);
        Held::File(HeldJobLocks { dir, names })
    }
}
