//! Setting a state file's folder up for its group: `mama init`.
//!
//! The folder gets the group and `rwx` for it, and setgid, so every file
//! made in it later takes the group and is open to it (see
//! [`fsutil::is_shared_folder`]); the state file (an empty lab where there
//! is none), its lock file, its history log and the folder of machine
//! locks get the group and the modes mama gives them beside a state file
//! the group may write. Only what is not so yet is changed, so a second
//! run changes nothing. What someone else set up is never loosened
//! without `--force`: a file or folder of another user's, or one that a
//! group other than the lab's (and other than its owner's private group)
//! holds.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::fsutil::{self, Dir, Entry};
use super::*;
use crate::backend::{InitDone, InitRequest};
use crate::error::{Error, Result};
use crate::format::doc::XmlLab;
use crate::os;

/// One file or folder of the lab, as it is.
struct Part {
    path: PathBuf,
    entry: Entry,
}

impl Part {
    /// Whether it has the group `gid` and the mode `mode` already.
    fn is(&self, gid: u32, mode: u32) -> bool {
        self.entry.gid() == gid && self.entry.permissions() == mode
    }

    /// What changes when it gets `gid` and `mode`, for people.
    fn change(&self, gid: u32, mode: u32) -> String {
        let mut what = Vec::new();
        if self.entry.gid() != gid {
            what.push(format!(
                "group {} (was {})",
                os::group_name_of(gid),
                os::group_name_of(self.entry.gid())
            ));
        }
        if self.entry.permissions() != mode {
            what.push(format!(
                "mode {mode:04o} (was {:04o})",
                self.entry.permissions()
            ));
        }
        format!("{}: {}", self.path.display(), what.join(", "))
    }

    /// Why this user may not give it `gid` and `mode` (`None`: they may).
    /// Another user's file is changed only by root, and by root only with
    /// `force`; a file of another group (not its owner's own) is handed to
    /// the lab's group only with `force`.
    fn refusal(&self, gid: u32, mode: u32, force: bool) -> Option<String> {
        if self.is(gid, mode) {
            return None;
        }
        let me = os::effective_user_id();
        let owner = self.entry.uid();
        let lab_group = os::group_name_of(gid);
        if owner != me && me != 0 {
            let name = os::user_name_of(owner);
            let who = if owner == 0 {
                "root".to_string()
            } else {
                format!("{name} or root")
            };
            return Some(format!(
                "{} belongs to {name}: only {who} may open it to the group {lab_group}; \
                 ask {name} to run `mama init --group {lab_group}`",
                self.path.display(),
            ));
        }
        if force {
            return None;
        }
        if owner != me {
            return Some(format!(
                "{} was set up by {}: mama init changes another user's lab only with --force",
                self.path.display(),
                os::user_name_of(owner)
            ));
        }
        let group = self.entry.gid();
        if group != gid && !os::is_private_group_of(group, owner) {
            return Some(format!(
                "{} belongs to the group {}: mama init hands it to the group {lab_group} only \
                 with --force",
                self.path.display(),
                os::group_name_of(group)
            ));
        }
        None
    }
}

/// The mode the state file gets: read and write for the group, the rest
/// as it is.
fn state_mode(mode: u32) -> u32 {
    mode | 0o060
}

/// The mode the lab's folder gets: `rwx` for the group, and setgid.
fn folder_mode(mode: u32) -> u32 {
    mode | 0o2770
}

/// Makes the lab at `path` ready for its group (`mama init`): its folder
/// made where it is missing (in the group the request settles, the links
/// on the way judged first), then set up as [`FileStore::init`] does.
pub fn init_at(path: &Path, request: &InitRequest) -> Result<InitDone> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    // The links on the way judged before a folder is made through one.
    FileStore::locate_for_init(path.to_path_buf())?;
    let mut made = None;
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !folder.exists()
    {
        // The group is settled before anything is made: a new folder has
        // the group of a setgid folder it is made in, else the caller's.
        let inherited = folder
            .ancestors()
            .skip(1)
            .find_map(|up| std::fs::metadata(up).ok())
            .filter(|up| up.mode() & 0o2000 != 0)
            .map(|up| up.gid());
        // SAFETY: getegid cannot fail.
        let mine = unsafe { libc::getegid() };
        lab_group(request, folder, inherited.unwrap_or(mine))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o775)
            .create(folder)
            .map_err(|e| Error::io("create the folder", folder, e))?;
        made = Some(format!("{}: created", folder.display()));
    }
    let mut done = FileStore::locate_for_init(path.to_path_buf())?.init(request)?;
    done.changes.splice(0..0, made);
    Ok(done)
}

/// The lab's group: the one asked for, else the folder's (`folder_gid`),
/// unless that is the caller's own private group; the caller must be a
/// member (or root).
pub fn lab_group(request: &InitRequest, folder: &Path, folder_gid: u32) -> Result<u32> {
    let gid = match &request.group {
        Some(name) => os::group_id_of(name).ok_or_else(|| {
            Error::Invalid(format!(
                "there is no group {name} (see `getent group`; `groupadd {name}` makes one)"
            ))
        })?,
        None if os::is_private_group(folder_gid) => {
            return Err(Error::Invalid(format!(
                "the folder {} belongs to the group {}, your own: name the group that is to \
                 share the lab with --group GROUP",
                folder.display(),
                os::group_name_of(folder_gid)
            )));
        }
        None => folder_gid,
    };
    if os::effective_user_id() != 0 && !os::own_groups().contains(&gid) {
        return Err(Error::Invalid(format!(
            "you are not a member of the group {}: only its members (or root) may set a lab \
             up for it (`id` lists your groups; a new member logs in again)",
            os::group_name_of(gid)
        )));
    }
    Ok(gid)
}

impl FileStore {
    /// Sets the state file's folder up for its group (see the module's
    /// documentation): returns the group and what changed, one line each.
    pub fn init(&self, request: &InitRequest) -> Result<InitDone> {
        let folder = self.lab_folder()?;
        let folder_entry = folder
            .entry(OsStr::new("."))
            .map_err(|e| Error::io("read", folder.path(), e))?;
        let gid = lab_group(request, folder.path(), folder_entry.gid())?;
        let group = os::group_name_of(gid);
        // What is there now, and whether each may be changed: all is
        // checked before anything changes.
        let part = |dir: &Dir, name: &OsStr| -> Result<Option<Part>> {
            match dir.entry(name) {
                Ok(entry) => Ok(Some(Part {
                    path: dir.child(name),
                    entry,
                })),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(fsutil::error("read", &dir.child(name), e)),
            }
        };
        let folder_part = Part {
            path: folder.path().to_path_buf(),
            entry: folder_entry,
        };
        let state_name = self.state_name();
        let (lock_name, log_name, locks_name) = (
            self.beside("", ".lock"),
            self.beside("", ".log"),
            self.beside("", ".locks"),
        );
        let state = part(folder, &state_name)?;
        // The state file's mode once set up: a new one is made in the
        // folder set up, so as the folder makes it.
        let state_after = match &state {
            Some(state) => state_mode(state.entry.permissions()),
            None => state_mode(fsutil::new_file_mode(true)),
        };
        let lock_after = fsutil::lock_mode(None, state_after);
        let locks_after = fsutil::folder_mode(None, state_after) | 0o2000;
        let mut plan: Vec<(Part, u32)> = vec![(
            folder_part,
            folder_mode(folder_entry.permissions() & 0o7777),
        )];
        for (name, mode) in [
            (&state_name, state_after),
            (&lock_name, lock_after),
            (&log_name, state_after),
            (&locks_name, locks_after),
        ] {
            if let Some(found) = part(folder, name)? {
                // Only what mama keeps there is changed, and nothing at
                // all when something else is there (a folder named for
                // the state file: the folder above it is not the lab's).
                let folder_wanted = name == &locks_name;
                let (right, what) = match (found.entry.is_dir(), found.entry.is_file()) {
                    (true, _) => (folder_wanted, "a folder"),
                    (_, true) => (!folder_wanted, "a regular file"),
                    _ if found.entry.is_symlink() => (false, "a symbolic link"),
                    _ => (false, "neither a regular file nor a folder"),
                };
                if !right {
                    let hint = if name == &state_name && found.entry.is_dir() {
                        format!(
                            ": name the state file in it (say {})",
                            found.path.join("mama.xml").display()
                        )
                    } else {
                        " (remove it)".to_string()
                    };
                    return Err(Error::Invalid(format!(
                        "{} is {what}, which mama does not keep there{hint}; nothing was changed",
                        found.path.display()
                    )));
                }
                plan.push((found, mode));
            }
        }
        // A state file there must be a lab before anything changes: a file
        // named by mistake is not handed to the group. (Beside a lock
        // file, a state file that does not parse may be a write torn by a
        // kill, which the lock file's copy repairs: read in full below.)
        if let Some(found) = &state
            && found.entry.is_file()
            && part(folder, &lock_name)?.is_none()
        {
            let mut text = Vec::new();
            if let Some(file) = folder.open_file(&state_name, false)? {
                use std::io::Read;
                file.take(crate::format::doc::MAX_DOCUMENT)
                    .read_to_end(&mut text)
                    .map_err(|e| Error::io("read", &self.path, e))?;
            }
            if let Err(e) = self.parse(text) {
                return Err(Error::Invalid(format!(
                    "not a lab, so nothing was changed: {e}"
                )));
            }
        }
        let locks = folder.folder(&locks_name)?;
        if let Some(locks) = &locks {
            let names = locks
                .entries_with_inodes(|_| true)
                .map_err(|e| Error::io("list", locks.path(), e))?;
            for name in names.iter().filter(|n| *n != "." && *n != "..") {
                if let Some(found) = part(locks, name)?
                    && found.entry.is_file()
                {
                    plan.push((found, lock_after));
                }
            }
        }
        for (part, mode) in &plan {
            if (part.entry.is_file() || part.entry.is_dir())
                && let Some(why) = part.refusal(gid, *mode, request.force)
            {
                return Err(Error::Invalid(format!("{why}; nothing was changed")));
            }
        }
        // Now change what is not so yet.
        let mut changes = Vec::new();
        for (part, mode) in &plan {
            if part.is(gid, *mode) {
                continue;
            }
            let line = part.change(gid, *mode);
            // Each changed through a descriptor, and only when it is still
            // what was checked: a member who may rename in the folder could
            // otherwise swap in another file (a hard link to anyone's)
            // between the check and the change.
            if part.entry.is_dir() {
                let dir = self.folder_at(folder, &part.path, &locks_name)?;
                let now = dir
                    .metadata()
                    .map_err(|e| Error::io("read", &part.path, e))?;
                if !part.entry.is(&now) {
                    return Err(replaced_meanwhile(&part.path, &changes));
                }
                dir.set_group_and_mode(gid, *mode)?;
            } else if part.entry.is_file() {
                let dir = match &locks {
                    Some(locks) if part.path.parent() == Some(locks.path()) => locks,
                    _ => folder.as_ref(),
                };
                let name = part.path.file_name().unwrap_or_default();
                if !self.set_file(dir, name, &part.path, gid, *mode, Some(&part.entry))? {
                    return Err(replaced_meanwhile(&part.path, &changes));
                }
            } else {
                continue;
            }
            changes.push(line);
        }
        // Then make what is missing, in the folder as it is now.
        if state.is_none() {
            let empty = XmlLab::empty();
            let text = self.rendered(&empty)?.concat();
            if folder.create_whole(&state_name, &self.temp_name(), text.as_bytes())? {
                self.set_file(folder, &state_name, &self.path, gid, state_after, None)?;
                changes.push(format!(
                    "{}: created (an empty lab), group {group}, mode {state_after:04o}",
                    self.path.display()
                ));
            }
        }
        let like = self.metadata()?;
        let made = |name: &OsStr, mode: u32, changes: &mut Vec<String>| {
            changes.push(format!(
                "{}: created, group {group}, mode {mode:04o}",
                self.shown(name).display()
            ));
        };
        if part(folder, &lock_name)?.is_none() {
            folder.open_lock(&lock_name, like.as_ref())?;
            made(&lock_name, lock_after, &mut changes);
        }
        if part(folder, &log_name)?.is_none() {
            let (_, created) = folder.open_or_create(&log_name, like.as_ref())?;
            if created {
                made(&log_name, state_after, &mut changes);
            }
        }
        if locks.is_none() {
            let made_locks = folder.ensure_folder(&locks_name, like.as_ref())?;
            made_locks
                .readable()
                .map_err(|e| Error::io("open the folder", made_locks.path(), e))?
                .set_group_and_mode(gid, locks_after)?;
            made(&locks_name, locks_after, &mut changes);
        }
        // What it holds must be a lab.
        self.read()?;
        Ok(InitDone {
            location: self.path.display().to_string(),
            group: Some(group),
            changes,
            grants: Vec::new(),
        })
    }

    /// The folder at `path`: the lab's own, or its folder of machine
    /// locks, opened to change it.
    fn folder_at(&self, folder: &Dir, path: &Path, locks_name: &OsString) -> Result<Dir> {
        let dir = if path == folder.path() {
            folder.readable()
        } else {
            match folder.folder(locks_name)? {
                Some(locks) => locks.readable(),
                None => {
                    return Err(Error::io(
                        "open the folder",
                        path,
                        io::ErrorKind::NotFound.into(),
                    ));
                }
            }
        };
        dir.map_err(|e| Error::io("open the folder", path, e))
    }

    /// Gives the file `name` in `dir` the group `gid` and the mode `mode`;
    /// with `checked`, only if it is still that file (false if not).
    fn set_file(
        &self,
        dir: &Dir,
        name: &OsStr,
        path: &Path,
        gid: u32,
        mode: u32,
        checked: Option<&fsutil::Entry>,
    ) -> Result<bool> {
        let file = dir
            .open_file(name, false)?
            .ok_or_else(|| Error::io("open", path, io::ErrorKind::NotFound.into()))?;
        if let Some(checked) = checked {
            let now = file.metadata().map_err(|e| Error::io("read", path, e))?;
            if !checked.is(&now) {
                return Ok(false);
            }
        }
        fsutil::set_group_and_mode_to(&file, gid, mode)
            .map_err(|e| fsutil::error("change the group and mode of", path, e))?;
        Ok(true)
    }
}

/// `path` was replaced between init's check and its change of it.
fn replaced_meanwhile(path: &Path, done: &[String]) -> Error {
    let done = if done.is_empty() {
        "nothing was changed".to_string()
    } else {
        format!("changed before it: {}", done.join("; "))
    };
    Error::Invalid(format!(
        "{} was replaced while mama init looked at it, so it was left as it is ({done}); \
         see who may write in its folder, and run init again",
        path.display()
    ))
}
