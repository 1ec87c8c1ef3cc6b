//! Advisory `flock` locks on lock files: the only code that calls the lock
//! primitive (`fs2`).
//!
//! A lock is a value: it is held while the [`FileLock`] lives and released
//! when it is dropped, or by the kernel the instant the process dies. Lock
//! files are opened close-on-exec, so a job that mama starts never inherits
//! one.

// The one module allowed to call the lock primitives (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

impl FileLock {
    /// Takes the lock, blocking while another process holds it.
    pub fn acquire(path: &Path, mode: Mode, like: Option<&Metadata>) -> Result<FileLock> {
        let file = open(path, like)?;
        let result = match mode {
            Mode::Shared => fs2::FileExt::lock_shared(&file),
            Mode::Exclusive => fs2::FileExt::lock_exclusive(&file),
        };
        result.map_err(|e| Error::io("lock", path, e))?;
        Ok(FileLock { file })
    }

    /// Takes the exclusive lock if nobody holds it: `None` means contention,
    /// which is not an error.
    pub fn try_exclusive(path: &Path, like: Option<&Metadata>) -> Result<Option<FileLock>> {
        let file = open(path, like)?;
        match fs2::FileExt::try_lock_exclusive(&file) {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(e) if is_contention(&e) => Ok(None),
            Err(e) => Err(Error::io("lock", path, e)),
        }
    }

    /// Waits up to `timeout` for the exclusive lock. The wait sleeps in the
    /// kernel and ends the instant the holder lets go or dies.
    pub fn exclusive_within(
        path: &Path,
        like: Option<&Metadata>,
        timeout: Duration,
    ) -> Result<Option<FileLock>> {
        let file = open(path, like)?;
        let deadline = Instant::now() + timeout;
        loop {
            match fs2::FileExt::try_lock_exclusive(&file) {
                Ok(()) => return Ok(Some(FileLock { file })),
                Err(e) if is_contention(&e) => {}
                Err(e) => return Err(Error::io("lock", path, e)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let alarm = Alarm::set(left);
            let result = fs2::FileExt::lock_exclusive(&file);
            drop(alarm);
            match result {
                Ok(()) => return Ok(Some(FileLock { file })),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("lock", path, e)),
            }
        }
    }
}

impl std::os::fd::AsRawFd for FileLock {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// Whether some process holds the lock at `path` exclusively (a missing
/// lock file is not held). Probes with a shared lock for an instant; a lock
/// file this user may not open counts as held, since nothing else shows
/// that it is free. Never follows a link and never blocks on a FIFO; what
/// is not a regular file holds no lock.
pub fn is_held(path: &Path) -> bool {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return false,
        Err(_) => return true,
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    match fs2::FileExt::try_lock_shared(&file) {
        Ok(()) => false,
        Err(e) => is_contention(&e),
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes the
        // release independent of any descriptor that might share the file.
        let _ = fs2::FileExt::unlock(&self.file);
    }
}

fn is_contention(e: &io::Error) -> bool {
    e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
}

/// Opens (creating if needed) a lock file. A lock file that this user may not
/// write is opened read-only: `flock` works on any open file. A new lock file
/// takes the permission bits and group of `like` (the state file), so
/// everyone who may write the state may take its lock.
pub fn open(path: &Path, like: Option<&Metadata>) -> Result<File> {
    loop {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => return Ok(file),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return File::open(path).map_err(|e| Error::io("open the lock file", path, e));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("open the lock file", path, e)),
        }
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(path)
        {
            Ok(file) => {
                if let Some(like) = like {
                    share_like(&file, like);
                }
                return Ok(file);
            }
            // Another process created it meanwhile: open theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create the lock file", path, e)),
        }
    }
}

/// Gives `file` the permission bits (read/write only) and group of `like`,
/// as far as this user is permitted to.
pub fn share_like(file: &File, like: &Metadata) {
    let _ = file.set_permissions(Permissions::from_mode(like.mode() & 0o666));
    let _ = std::os::unix::fs::fchown(file, None, Some(like.gid()));
}

/// The longest lock file name used as the plain encoding of a name; file
/// systems take 255 bytes.
const MAX_PLAIN_FILE_NAME: usize = 200;
/// How much of a long name's encoding starts its lock file name.
const LONG_NAME_PREFIX: usize = 160;

/// The path of a lock file for `name` in `dir`; names that could not be a
/// plain file name are percent-encoded. A name whose file name would be
/// longer than [`MAX_PLAIN_FILE_NAME`] bytes gets a readable start of its
/// encoding (cut between whole characters and `%XX`), `~` and a hash of the
/// whole name. No plain encoding holds `~`, so the two kinds never meet.
pub fn path_in(dir: &Path, name: &str) -> PathBuf {
    const SUFFIX: &str = ".lock";
    let mut file = String::with_capacity(name.len() + SUFFIX.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') || (b == b'.' && !file.is_empty())
        {
            file.push(b as char);
        } else {
            file.push_str(&format!("%{b:02X}"));
        }
    }
    if file.len() + SUFFIX.len() > MAX_PLAIN_FILE_NAME {
        let bytes = file.as_bytes();
        let mut cut = 0;
        while cut < bytes.len() {
            let next = cut + if bytes[cut] == b'%' { 3 } else { 1 };
            if next > LONG_NAME_PREFIX {
                break;
            }
            cut = next;
        }
        file = format!("{}~{:032x}", &file[..cut], fnv1a_128(name.as_bytes()));
    }
    file.push_str(SUFFIX);
    dir.join(file)
}

/// The 128-bit FNV-1a hash: tiny, and the same in every build and version
/// of mama (lock file names must agree between them).
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u128::from(b)).wrapping_mul(PRIME)
    })
}

/// A repeating `SIGALRM` timer that interrupts a blocking `flock` (as
/// `flock(1) -w` does). It repeats, so a tick that arrives just before the
/// call starts cannot leave the call blocked for good.
struct Alarm;

extern "C" fn on_alarm(_: libc::c_int) {}

impl Alarm {
    fn set(after: Duration) -> Alarm {
        static HANDLER: Once = Once::new();
        HANDLER.call_once(|| {
            // SAFETY: installs an empty handler without SA_RESTART, so a
            // blocked flock returns EINTR; the handler touches nothing.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_alarm as *const () as usize;
                libc::sigemptyset(&mut action.sa_mask);
                action.sa_flags = 0;
                libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut());
            }
        });
        let after = after.max(Duration::from_millis(1));
        let tick = libc::timeval {
            tv_sec: after.as_secs() as libc::time_t,
            tv_usec: after.subsec_micros() as libc::suseconds_t,
        };
        set_timer(tick);
        Alarm
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        set_timer(libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        });
    }
}

fn set_timer(tick: libc::timeval) {
    let timer = libc::itimerval {
        it_interval: tick,
        it_value: tick,
    };
    // SAFETY: plain system call on a valid struct.
    unsafe {
        libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_128_matches_the_published_values() {
        assert_eq!(fnv1a_128(b""), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(fnv1a_128(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
        assert_eq!(fnv1a_128(b"foobar"), 0x343e1662793c64bf6f0d3597ba446f18);
    }

    fn file_name(name: &str) -> String {
        let path = path_in(Path::new("/locks"), name);
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn short_names_are_percent_encoded() {
        assert_eq!(file_name("rig1"), "rig1.lock");
        assert_eq!(file_name(".x/y é"), "%2Ex%2Fy%20%C3%A9.lock");
        assert_eq!(
            file_name(&"a".repeat(195)),
            format!("{}.lock", "a".repeat(195))
        );
    }

    #[test]
    fn long_names_keep_a_readable_start_and_a_hash() {
        let long = "a".repeat(196);
        let hash = format!("{:032x}", fnv1a_128(long.as_bytes()));
        assert_eq!(file_name(&long), format!("{}~{hash}.lock", "a".repeat(160)));
        // Cut between whole %XX: 53 of them are 159 bytes.
        let percent = file_name(&"%".repeat(85));
        assert!(
            percent.starts_with(&format!("{}~", "%25".repeat(53))),
            "{percent}"
        );
        for name in [
            "%".repeat(85),
            "é".repeat(43),
            "a".repeat(255),
            "\u{10ffff}".repeat(63),
        ] {
            assert!(file_name(&name).len() <= MAX_PLAIN_FILE_NAME, "{name}");
        }
        let one = format!("{}a", "x".repeat(254));
        let other = format!("{}b", "x".repeat(254));
        assert_ne!(file_name(&one), file_name(&other));
    }
}
