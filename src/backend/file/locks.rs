//! The state file's locks beside it: a job lock a machine
//! (`S.locks/NAME.lock`) and a place lock a waiter (`S.locks/TOKEN.wait`),
//! each a `flock` (see [`lock`]).

use std::fs::Metadata;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::lock::{self, FileLock, Mode};
use super::{FileStore, fsutil};
use crate::backend::{HeldJob, HeldJobLocks, JobLock, JobLocks, PlaceLock};
use crate::error::{Error, Result};
use crate::model::queue::Waiter;

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
    fn new_place(&self) -> Result<(String, FileLock, PathBuf)> {
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
}

/// The job locks of the state file: `S.locks/NAME.lock`, a `flock` each;
/// and the waiters' place locks, `S.locks/TOKEN.wait`.
impl JobLocks for FileStore {
    fn try_lock(&self, machine: &str) -> Result<Option<JobLock>> {
        let (path, like) = self.machine_lock(machine)?;
        Ok(FileLock::try_exclusive(&path, like.as_ref())?.map(|lock| JobLock::new(Box::new(lock))))
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

    /// The processes holding `machine`'s job lock (see [`lock::holders`]).
    fn holders(&self, machine: &str) -> Vec<lock::Holder> {
        lock::holders(&lock::path_in(&self.machine_locks_dir(), machine))
    }

    /// From one look at the locks folder and the kernel's lock table.
    fn held_job_locks(&self) -> HeldJobLocks {
        let names = lock::held_in(&self.machine_locks_dir());
        HeldJobLocks::new(move |machine| {
            !names.is_empty() && names.contains(std::ffi::OsStr::new(&lock::file_name(machine)))
        })
    }

    fn hold_place(&self) -> Result<PlaceLock> {
        let (token, lock, path) = self.new_place()?;
        Ok(PlaceLock::new(
            token,
            Box::new(FilePlace {
                lock: Some(lock),
                path,
            }),
        ))
    }

    fn place_held(&self, waiter: &Waiter) -> bool {
        self.place_path(&waiter.token)
            .is_some_and(|path| lock::is_held(&path))
    }

    /// Sleeps on the place lock `token` until it is let go, at most
    /// `within`; a lock file that is gone was let go.
    fn wait_place(&self, token: &str, within: Duration) -> Result<bool> {
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
    fn forget_place(&self, token: &str) {
        if let Some(path) = self.place_path(token)
            && !lock::is_held(&path)
        {
            let _ = fsutil::remove_file(&path);
        }
    }
}

/// A place lock of the state file's, held: its file goes first when it is
/// let go, so a waiter behind that looks for it then knows it left without
/// waiting.
struct FilePlace {
    lock: Option<FileLock>,
    path: PathBuf,
}

impl Drop for FilePlace {
    fn drop(&mut self) {
        let _ = fsutil::remove_file(&self.path);
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
