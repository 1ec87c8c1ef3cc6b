//! The state store: where the state file is, its lock, and transactions.
//!
//! Every change is one transaction: take the exclusive lock on the lock file
//! beside the state file, read and parse, change, write the whole file
//! atomically (temporary file in the same folder, fsync, rename, fsync the
//! folder), release. Readers take the lock shared, briefly. A process killed
//! at any instant leaves the old file or the new one, and at most one
//! temporary file, which the next writer reuses.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::history::{Event, History};
use crate::lab::Lab;
use crate::lock::{self, FileLock, Mode};

/// Where the state file is looked for when nothing else names it.
pub const DEFAULT_STATE: &str = "/var/lib/mama/mama.xml";

/// The state file and the files mama keeps beside it.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

/// A lab as read, and whether the state file existed.
pub struct Snapshot {
    pub lab: Lab,
    pub existed: bool,
}

impl Store {
    /// The state file: `--state`, else `MAMA_STATE`, else
    /// `$MAMA_PATH/mama.xml`, else [`DEFAULT_STATE`]. A symbolic link is
    /// followed, so the lock and temporary files sit beside the real file
    /// and the rename replaces it, not the link.
    pub fn locate(explicit: Option<PathBuf>) -> Store {
        let path = explicit
            .or_else(|| env_path("MAMA_STATE"))
            .or_else(|| env_path("MAMA_PATH").map(|dir| dir.join("mama.xml")))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE));
        let path = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(&path).unwrap_or(path),
            _ => path,
        };
        Store { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map_or_else(|| "mama.xml".into(), |n| n.to_string_lossy().into_owned())
    }

    /// The lock file that guards the state file.
    pub fn lock_path(&self) -> PathBuf {
        self.dir().join(format!("{}.lock", self.file_name()))
    }

    /// The one temporary file a writer uses.
    pub fn temp_path(&self) -> PathBuf {
        self.dir().join(format!(".{}.tmp", self.file_name()))
    }

    /// The folder of per-machine lock files (held by running jobs).
    pub fn machine_locks_dir(&self) -> PathBuf {
        self.dir().join(format!("{}.locks", self.file_name()))
    }

    fn metadata(&self) -> Result<Option<Metadata>> {
        match fs::metadata(&self.path) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &self.path, e)),
        }
    }

    /// Reads the lab under a shared lock. When the lock file cannot be opened
    /// at all (a read-only folder without one), reads without it: every
    /// write replaces the file whole, so a reader never sees a mix.
    pub fn read(&self) -> Result<Snapshot> {
        let like = self.metadata()?;
        if like.is_none() {
            return Ok(Snapshot {
                lab: Lab::empty(),
                existed: false,
            });
        }
        let _lock = FileLock::acquire(&self.lock_path(), Mode::Shared, like.as_ref()).ok();
        self.load()
    }

    /// Runs one transaction: `change` gets the current lab; when it returns
    /// `Ok` having changed the lab, the new lab is written atomically. The
    /// state file is never written when `change` fails or changes nothing.
    pub fn update<T>(&self, change: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
        let like = self.metadata()?;
        if like.is_none() && !self.dir().is_dir() {
            return Err(Error::Invalid(format!(
                "cannot create {}: the folder {} does not exist",
                self.path.display(),
                self.dir().display()
            )));
        }
        let _lock = FileLock::acquire(&self.lock_path(), Mode::Exclusive, like.as_ref())?;
        let mut lab = self.load()?.lab;
        let value = change(&mut lab)?;
        if lab.is_changed() {
            let events = lab.take_events();
            let recorded = !events.is_empty();
            if recorded {
                self.commit_events(&mut lab, events, like.as_ref())?;
            }
            self.write(&lab)?;
            if recorded {
                // Committed: the change stands whatever happens to this
                // copy, which the next flush makes good.
                let _ = self
                    .history()
                    .copy_committed(&lab.pending_events(), like.as_ref());
            }
        }
        Ok(value)
    }

    /// Numbers this transaction's events after every event committed so
    /// far and puts them in the state's pending events, which its rename
    /// commits (see [`History::commit`]). When the state already holds
    /// [`FLUSH_AT`](crate::history::FLUSH_AT) pending events, this
    /// transaction first appends to the log those it lacks, syncs it, and
    /// drops them all from the state. The log only ever receives committed
    /// events: a writer killed after appending leaves lines the state still
    /// holds too, which readers take once and the next flush does not
    /// append again. After the rename, [`Store::update`] copies the new
    /// events to the log unsynced, so the log tells the whole history even
    /// if an older copy of the state is put back.
    fn commit_events(
        &self,
        lab: &mut Lab,
        events: Vec<Event>,
        like: Option<&Metadata>,
    ) -> Result<()> {
        let mut pending = lab.pending_events();
        let last = self
            .history()
            .commit(lab.event_seq(), &mut pending, events, like)?;
        lab.set_pending_events(&pending)?;
        lab.set_event_seq(last);
        Ok(())
    }

    /// The event log beside the state file.
    pub fn history(&self) -> History {
        History::new(self.dir().join(format!("{}.log", self.file_name())))
    }

    /// The committed events (all of them, or those numbered after `after`),
    /// read under the shared lock with the state that holds the newest.
    pub fn read_events(&self, after: Option<u64>) -> Result<(Snapshot, Vec<Event>)> {
        let like = self.metadata()?;
        if like.is_none() {
            return Ok((
                Snapshot {
                    lab: Lab::empty(),
                    existed: false,
                },
                Vec::new(),
            ));
        }
        let _lock = FileLock::acquire(&self.lock_path(), Mode::Shared, like.as_ref()).ok();
        let snapshot = self.load()?;
        let events = self.history().read(after, snapshot.lab.pending_events())?;
        Ok((snapshot, events))
    }

    fn load(&self) -> Result<Snapshot> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Snapshot {
                    lab: Lab::empty(),
                    existed: false,
                });
            }
            Err(e) => return Err(Error::io("read", &self.path, e)),
        };
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            let column =
                valid.len() - valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
            self.corrupt(Some((line, column)), "the file is not valid UTF-8".into())
        })?;
        let lab = Lab::parse(&text).map_err(|e| {
            let location = (e.line > 0).then_some((e.line, e.column));
            self.corrupt(location, e.message)
        })?;
        Ok(Snapshot { lab, existed: true })
    }

    fn corrupt(&self, location: Option<(usize, usize)>, message: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            location,
            message,
        }
    }

    /// Replaces the state file with `lab`, keeping its mode, group and
    /// (where permitted) owner. The text is parsed again before anything is
    /// written: mama never writes a file it could not read back.
    fn write(&self, lab: &Lab) -> Result<()> {
        let text = lab.to_xml();
        Lab::parse(&text).map_err(|e| {
            Error::Invalid(format!(
                "internal error: the new state would not parse ({e}); {} was left unchanged",
                self.path.display()
            ))
        })?;
        let like = self.metadata()?;
        let temp = self.temp_path();
        // A killed writer may have left its temporary file; start afresh.
        match fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove the leftover", &temp, e)),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&temp)
            .map_err(|e| Error::io("create", &temp, e))?;
        if let Some(like) = &like {
            keep_ownership(&file, like).map_err(|e| Error::io("set the mode of", &temp, e))?;
        }
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(Error::io("write", &temp, e));
        }
        drop(file);
        fs::rename(&temp, &self.path).map_err(|e| {
            let _ = fs::remove_file(&temp);
            Error::io("replace", &self.path, e)
        })?;
        File::open(self.dir())
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::io("sync the folder", self.dir(), e))
    }
}

/// Gives the new file the old one's mode, and its owner and group as far as
/// this user may (a non-root user keeps the group if they belong to it).
fn keep_ownership(file: &File, like: &Metadata) -> io::Result<()> {
    let mine = file.metadata()?;
    if (mine.uid() != like.uid() || mine.gid() != like.gid())
        && std::os::unix::fs::fchown(file, Some(like.uid()), Some(like.gid())).is_err()
    {
        let _ = std::os::unix::fs::fchown(file, None, Some(like.gid()));
    }
    file.set_permissions(fs::Permissions::from_mode(like.mode() & 0o7777))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl Store {
    /// The lock file a running job holds for `machine`, in the store's folder
    /// of machine locks (created on first use, shared like the state file),
    /// and the state file's metadata to create it like.
    pub fn machine_lock(&self, machine: &str) -> Result<(PathBuf, Option<Metadata>)> {
        let dir = self.machine_locks_dir();
        let like = self.metadata()?;
        if !dir.is_dir() {
            match fs::create_dir(&dir) {
                Ok(()) => {
                    if let Some(like) = &like {
                        // Directories need x where the file has r.
                        let mode = like.mode() & 0o666;
                        let mode = mode | ((mode & 0o444) >> 2);
                        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode));
                        let _ = std::os::unix::fs::chown(&dir, None, Some(like.gid()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create", &dir, e)),
            }
        }
        Ok((lock::path_in(&dir, machine), like))
    }
}
