//! The state file's locks beside it: a job lock a machine
//! (`S.locks/NAME.lock`) and a place lock a waiter (`S.locks/TOKEN.wait`),
//! each a `flock` (see [`lock`]). The folder `S.locks` is opened through
//! the lab's folder, and each lock file is handed out as a
//! [`LockFile`]: that folder and the file's name in it.

use std::fs::Metadata;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::FileStore;
use super::fsutil::Dir;
use super::lock::{self, FileLock, LockFile, Mode};
use crate::backend::{HeldJob, HeldJobLocks, JobLock, JobLocks, PlaceLock, PowerLock};
use crate::error::{Error, Result};
use crate::model::queue::Waiter;

impl FileStore {
    /// The folder of machine locks, created when missing (open to those
    /// who may write the state file `like`).
    fn make_locks_folder(&self, like: Option<&Metadata>) -> Result<Arc<Dir>> {
        let name = self.beside("", ".locks");
        Ok(Arc::new(self.lab_folder()?.ensure_folder(&name, like)?))
    }

    /// The folder of machine locks, if there is one.
    fn locks_folder(&self) -> Result<Option<Arc<Dir>>> {
        let Some(lab) = self.folder()? else {
            return Ok(None);
        };
        Ok(lab.folder(&self.beside("", ".locks"))?.map(Arc::new))
    }

    /// The lock file a running job holds for `machine`, in the store's
    /// folder of machine locks (created on first use), and the state file's
    /// metadata to create it like.
    fn machine_lock(&self, machine: &str) -> Result<(LockFile, Option<Metadata>)> {
        let like = self.metadata()?;
        let folder = self
            .make_locks_folder(like.as_ref())
            .map_err(|e| self.with_advice(e))?;
        Ok((LockFile::new(folder, lock::file_name(machine)), like))
    }

    /// The job lock file of `machine`, if its folder is there (to look at,
    /// never to create).
    fn job_lock_file(&self, machine: &str) -> Option<LockFile> {
        let folder = self.locks_folder().ok().flatten()?;
        Some(LockFile::new(folder, lock::file_name(machine)))
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

/// The name of the place lock file of `token`: `TOKEN.wait`.
fn place_name(token: &str) -> Option<String> {
    is_token(token).then(|| format!("{token}.wait"))
}

impl FileStore {
    /// The place lock file of `token`, `S.locks/TOKEN.wait`, if its folder
    /// is there (`Ok(None)` too for what is not a token).
    fn place_file(&self, token: &str) -> Result<Option<LockFile>> {
        let Some(name) = place_name(token) else {
            return Ok(None);
        };
        Ok(self
            .locks_folder()?
            .map(|folder| LockFile::new(folder, name)))
    }

    /// Takes a new place lock: a new file `S.locks/TOKEN.wait`, locked.
    fn new_place(&self) -> Result<(String, FileLock, LockFile)> {
        let like = self.metadata()?;
        let folder = self.make_locks_folder(like.as_ref())?;
        for _ in 0..16 {
            let token = new_token();
            let Some(name) = place_name(&token) else {
                continue;
            };
            let file = LockFile::new(Arc::clone(&folder), name);
            if file.open_existing()?.is_some() {
                continue;
            }
            if let Some(lock) = file.try_exclusive(like.as_ref())? {
                return Ok((token, lock, file));
            }
        }
        Err(Error::Invalid(
            "cannot make a place lock: every token tried was taken".into(),
        ))
    }
}

/// The job locks of the state file: `S.locks/NAME.lock`, a `flock` each;
/// and the waiters' place locks, `S.locks/TOKEN.wait`.
impl JobLocks for FileStore {
    fn try_lock(&self, machine: &str) -> Result<Option<JobLock>> {
        let (file, like) = self.machine_lock(machine)?;
        Ok(file
            .try_exclusive(like.as_ref())?
            .map(|lock| JobLock::new(Box::new(lock))))
    }

    fn wait_unlocked(&self, machine: &str, within: Duration) -> Result<bool> {
        let (file, like) = self.machine_lock(machine)?;
        Ok(file.exclusive_within(like.as_ref(), within)?.is_some())
    }

    fn held(&self, machine: &str) -> bool {
        self.job_lock_file(machine)
            .is_some_and(|file| file.is_held())
    }

    fn inherited(&self, machine: &str) -> bool {
        self.job_lock_file(machine)
            .is_some_and(|file| file.inherited_holds())
    }

    /// The processes holding `machine`'s job lock (see
    /// [`LockFile::holders`]).
    fn holders(&self, machine: &str) -> Vec<lock::Holder> {
        self.job_lock_file(machine)
            .map(|file| file.holders())
            .unwrap_or_default()
    }

    /// From one look at the locks folder and the kernel's lock table.
    fn held_job_locks(&self) -> HeldJobLocks {
        let names = match self.locks_folder() {
            Ok(Some(folder)) => lock::held_in(&folder),
            _ => Default::default(),
        };
        HeldJobLocks::new(move |machine| {
            !names.is_empty() && names.contains(std::ffi::OsStr::new(&lock::file_name(machine)))
        })
    }

    /// `S.locks/NAME.power`, beside the job lock.
    fn power_lock(&self, machine: &str, waiting: &mut dyn FnMut()) -> Result<PowerLock> {
        let like = self.metadata()?;
        let folder = self
            .make_locks_folder(like.as_ref())
            .map_err(|e| self.with_advice(e))?;
        let job = lock::file_name(machine);
        let name = format!("{}.power", job.strip_suffix(".lock").unwrap_or(&job));
        let file = LockFile::new(folder, name);
        if let Some(lock) = file.try_exclusive(like.as_ref())? {
            return Ok(PowerLock::new(Box::new(lock)));
        }
        waiting();
        Ok(PowerLock::new(Box::new(file.exclusive(like.as_ref())?)))
    }

    fn hold_place(&self) -> Result<PlaceLock> {
        let (token, lock, file) = self.new_place()?;
        Ok(PlaceLock::new(
            token,
            Box::new(FilePlace {
                lock: Some(lock),
                file,
            }),
        ))
    }

    fn place_held(&self, waiter: &Waiter) -> bool {
        self.place_file(&waiter.token)
            .ok()
            .flatten()
            .is_some_and(|file| file.is_held())
    }

    /// Sleeps on the place lock `token` until it is let go, at most
    /// `within`; a lock file that is gone was let go.
    fn wait_place(&self, token: &str, within: Duration) -> Result<bool> {
        let Some(place) = self.place_file(token)? else {
            return Ok(true);
        };
        let Some(file) = place.open_existing()? else {
            return Ok(true);
        };
        let deadline = Instant::now() + within;
        let path = place.path();
        Ok(FileLock::wait(file, &path, Mode::Shared, Some(deadline), &mut |_| {})?.is_ok())
    }

    /// Removes the lock file of a place whose waiter is gone.
    fn forget_place(&self, token: &str) {
        if let Ok(Some(place)) = self.place_file(token)
            && !place.is_held()
        {
            let _ = place.remove();
        }
    }
}

/// A place lock of the state file's, held: its file (its folder and name)
/// goes first when it is let go, so a waiter behind that looks for it then
/// knows it left without waiting.
struct FilePlace {
    lock: Option<FileLock>,
    file: LockFile,
}

impl Drop for FilePlace {
    fn drop(&mut self) {
        let _ = self.file.remove();
        drop(self.lock.take());
    }
}

/// A job lock of the state file's: the `flock` on the machine's lock file,
/// which the job inherits.
impl HeldJob for FileLock {
    fn inheritable_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }

    fn close(self: Box<Self>) {
        (*self).close();
    }
}
