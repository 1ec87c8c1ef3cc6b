//! The state file's locks: the lab's lock file and PHP mama's lock on the
//! state file itself, taken with patience and the name of who holds them.

use std::fs::{File, Metadata};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::error::{Error, Result};
use crate::os;

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

    /// A permission error with what is missing, and who can give it: the
    /// caller is not in the lab's group, the lab is not shared with a
    /// group at all, or a file or folder of the lab is closed to its group
    /// (made before the lab was set up for it). Where the folder is not
    /// writable as PHP mama installs it, it says which files its owner adds
    /// once, so that the group may use every command. Other errors, and an
    /// error already explained, pass unchanged.
    pub(super) fn with_advice(&self, e: Error) -> Error {
        let Error::ReadOnly { context, source } = e else {
            return e;
        };
        // Not a matter of permissions (a read-only file system), or
        // explained already (by an inner call).
        let denied = matches!(source.raw_os_error(), Some(libc::EACCES | libc::EPERM));
        let why = denied.then(|| self.why_denied()).flatten();
        match why.filter(|why| !context.contains(why.as_str())) {
            Some(why) => Error::ReadOnly {
                context: format!("{context} ({why})"),
                source,
            },
            None => Error::ReadOnly { context, source },
        }
    }

    /// Why this user may not use the lab, as far as the modes of its files
    /// tell (`None`: they do not tell).
    fn why_denied(&self) -> Option<String> {
        let folder = self.folder().ok()??;
        let me = os::effective_user_id();
        if me == 0 {
            return None;
        }
        let dir = folder.entry(OsStr::new(".")).ok()?;
        let state_name = self.state_name();
        let state = folder.entry(&state_name).ok();
        // The lab's owner and group: the state file's, else the folder's.
        let (owner, gid, shared) = match &state {
            Some(state) => (
                state.uid(),
                state.gid(),
                state.permissions() & 0o020 != 0 || fsutil::is_shared_folder(dir.permissions()),
            ),
            None => (dir.uid(), dir.gid(), dir.permissions() & 0o020 != 0),
        };
        let owner_name = os::user_name_of(owner);
        let group = group_name(gid);
        // Who set the lab up: the folder's owner (the state file is its
        // last writer's).
        let keeper = os::user_name_of(dir.uid());
        if !shared || os::is_private_group_of(gid, owner) {
            return Some(format!(
                "the lab is {owner_name}'s alone, shared with no group: ask {owner_name} to run \
                 `mama init --group GROUP` with the group that is to share it"
            ));
        }
        if !os::own_groups().contains(&gid) {
            return Some(format!(
                "you are not in the group {group}, which shares the lab ({keeper}'s): ask the \
                 system's administrator to add you (`sudo usermod -aG {group} {}`, then log \
                 in again)",
                os::user_name_of(me)
            ));
        }
        // A member: what is closed to the group.
        let init = format!("`mama init --group {group}`");
        let closed = |entry: &fsutil::Entry, needs: u32| {
            entry.gid() != gid || entry.permissions() & needs != needs
        };
        if let Some(state) = &state
            && folder.may_write(&state_name).is_err()
        {
            return Some(format!(
                "{} is not open to the group {group}: ask its owner, {}, to run {init}",
                self.path.display(),
                os::user_name_of(state.uid())
            ));
        }
        for (suffix, needs) in [(".lock", 0o060), (".log", 0o060), (".locks", 0o070)] {
            let name = self.beside("", suffix);
            if let Ok(entry) = folder.entry(&name)
                && entry.uid() != me
                && closed(&entry, needs)
            {
                return Some(format!(
                    "{} is {owner}'s and not open to the group {group}: ask {owner} to run {init}",
                    self.shown(&name).display(),
                    owner = os::user_name_of(entry.uid())
                ));
            }
        }
        if folder.may_write_here().is_err() {
            if !self.php_installation() {
                return Some(format!(
                    "the lab's folder {} is not open to the group {group}: ask its owner, {}, \
                     to run {init}",
                    self.dir.display(),
                    keeper
                ));
            }
            let at = |suffix: &str| self.shown(&self.beside("", suffix)).display().to_string();
            return Some(format!(
                "the folder {} is not writable for you, as PHP mama installs it; \
                 for the group {group} to use every command, the folder's owner adds mama's \
                 files once: `install -m 0660 -g {group} /dev/null {}`, \
                 `install -m 0660 -g {group} /dev/null {}` and \
                 `install -d -m 2770 -g {group} {}`",
                self.dir.display(),
                at(".lock"),
                at(".log"),
                at(".locks")
            ));
        }
        None
    }
}
