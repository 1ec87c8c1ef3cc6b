//! The state file's locks: the lab's lock file and PHP mama's lock on the
//! state file itself, taken with patience and the name of who holds them.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::error::{Error, Result};

impl FileStore {
    /// Takes the lab's lock. After a second of waiting, says on stderr what
    /// it waits for (the lock and, where /proc tells, who holds it); gives
    /// up as the store's patience says. A reader that may not write the
    /// state file, or not open the lock file (no permission, a read-only
    /// file system), goes on without it (`None`), with the state file's own
    /// lock alone.
    pub(super) fn lab_lock(&self, mode: Mode, like: Option<&Metadata>) -> Result<Option<FileLock>> {
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
    pub(super) fn wait_for(&self, file: File, path: &Path, mode: Mode) -> Result<FileLock> {
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
    pub(super) fn lock_state(&self, mode: Mode) -> Result<Option<FileLock>> {
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
    pub(super) fn with_advice(&self, e: Error) -> Error {
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
}
