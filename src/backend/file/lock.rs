//! Advisory `flock` locks on lock files: the only code that calls the lock
//! primitive (`fs2`).
//!
//! A lock file is a value too, never a path: a [`LockFile`] holds its
//! folder (a descriptor, opened once; see [`Dir`]) and its name in
//! it, and everything done to the file (open, lock, ask who holds it,
//! remove) goes through that descriptor. A lock is a value: it is held
//! while the [`FileLock`] lives and released when it is dropped, or by the
//! kernel the instant the process dies. Lock files are opened
//! close-on-exec, so a job that mama starts never inherits one, and safely
//! ([`crate::backend::file::fsutil`]). A wait sleeps in the kernel; a
//! bounded one is cut short by a `SIGALRM` timer.

// The one module allowed to call the lock primitives (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use crate::backend::file::fsutil::{Dir, Entry};
use crate::error::{Error, Result};

/// A lock file: its folder, opened once, and its name in it. The path it
/// had is for messages only.
#[derive(Debug, Clone)]
pub struct LockFile {
    dir: Arc<Dir>,
    name: OsString,
}

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

/// How long a wait for the lab's lock goes on before mama says what it
/// waits for.
pub const NOTICE_AFTER: Duration = Duration::from_secs(1);

pub use crate::os::Holder;

impl FileLock {
    /// Takes the lock on the opened lock file `file` (at `path`), sleeping
    /// in the kernel while another process holds it, until `deadline` if
    /// any (then `Err` gives the file back, to tell who holds it). After
    /// [`NOTICE_AFTER`] of waiting, `notice` is called once, to say what
    /// mama waits for.
    pub fn wait(
        file: File,
        path: &Path,
        mode: Mode,
        deadline: Option<Instant>,
        notice: &mut dyn FnMut(&File),
    ) -> Result<Result<FileLock, File>> {
        let mut notice_at = Some(Instant::now() + NOTICE_AFTER);
        loop {
            match try_lock(&file, mode) {
                Ok(()) => return Ok(Ok(FileLock { file })),
                Err(e) if is_contention(&e) => {}
                Err(e) => return Err(Error::io("lock", path, e)),
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(Err(file));
            }
            if notice_at.is_some_and(|at| now >= at) {
                notice(&file);
                notice_at = None;
            }
            let wake = match (deadline, notice_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let result = match wake {
                Some(wake) => {
                    let alarm = Alarm::set(wake.saturating_duration_since(now));
                    let result = lock(&file, mode);
                    drop(alarm);
                    result
                }
                None => lock(&file, mode),
            };
            match result {
                Ok(()) => return Ok(Ok(FileLock { file })),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("lock", path, e)),
            }
        }
    }
}

impl LockFile {
    /// The lock file `name` in the folder `dir`.
    pub fn new(dir: Arc<Dir>, name: impl Into<OsString>) -> LockFile {
        LockFile {
            dir,
            name: name.into(),
        }
    }

    /// Its path when its folder was opened, for messages.
    pub fn path(&self) -> PathBuf {
        self.dir.child(&self.name)
    }

    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// Opens (creating if needed) the lock file, safely (see
    /// [`Dir::open_lock`]): never through a link, read-only when this user
    /// may not write it, a new one open only to those who may write the
    /// state file `like`.
    pub fn open(&self, like: Option<&Metadata>) -> Result<File> {
        self.dir.open_lock(&self.name, like)
    }

    /// Opens the lock file if it is there (read-only, never creating it).
    pub fn open_existing(&self) -> Result<Option<File>> {
        self.dir.open_file(&self.name, false)
    }

    /// Removes the lock file (a link there is removed, never followed); a
    /// missing one is not an error.
    pub fn remove(&self) -> Result<()> {
        self.dir.remove_file(&self.name)
    }

    /// Takes the exclusive lock if nobody holds it: `None` means contention,
    /// which is not an error.
    pub fn try_exclusive(&self, like: Option<&Metadata>) -> Result<Option<FileLock>> {
        let file = self.open(like)?;
        match try_lock(&file, Mode::Exclusive) {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(e) if is_contention(&e) => Ok(None),
            Err(e) => Err(Error::io("lock", &self.path(), e)),
        }
    }

    /// Waits up to `timeout` for the exclusive lock. The wait sleeps in the
    /// kernel and ends the instant the holder lets go or dies.
    pub fn exclusive_within(
        &self,
        like: Option<&Metadata>,
        timeout: Duration,
    ) -> Result<Option<FileLock>> {
        let file = self.open(like)?;
        let deadline = Instant::now() + timeout;
        let path = self.path();
        Ok(FileLock::wait(file, &path, Mode::Exclusive, Some(deadline), &mut |_| {})?.ok())
    }

    /// Waits as long as it takes for the exclusive lock.
    pub fn exclusive(&self, like: Option<&Metadata>) -> Result<FileLock> {
        let file = self.open(like)?;
        let path = self.path();
        match FileLock::wait(file, &path, Mode::Exclusive, None, &mut |_| {})? {
            Ok(lock) => Ok(lock),
            Err(_) => Err(Error::io(
                "lock",
                &path,
                io::Error::from(io::ErrorKind::WouldBlock),
            )),
        }
    }

    /// What is at the lock file's name, if it is a regular file.
    fn entry(&self) -> Option<Entry> {
        self.dir.entry(&self.name).ok().filter(Entry::is_file)
    }
}

impl FileLock {
    /// The locked file: a lock on the state file itself (PHP mama's lock)
    /// is read and written through the descriptor that holds it.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl std::os::fd::AsRawFd for FileLock {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl LockFile {
    /// Whether some process holds the lock exclusively (a missing lock file
    /// is not held). Probes with a shared lock for an instant; for a lock
    /// file this user may not open, the kernel's lock table (/proc/locks)
    /// tells. Where even that is silent (a folder this user may not
    /// search), it counts as free and the record decides: only readers are
    /// that blind, since whoever may write the state may open its locks.
    /// Never follows a link and never blocks on a FIFO; what is not a
    /// regular file holds no lock.
    pub fn is_held(&self) -> bool {
        let file = match self.open_existing() {
            Ok(Some(file)) => file,
            Ok(None) | Err(Error::Planted { .. }) => return false,
            // A reader who may not open it asks the kernel's lock table.
            Err(_) => {
                return self
                    .entry()
                    .and_then(|entry| flocks_on(entry.dev(), entry.ino()))
                    .is_some_and(|locks| locks.iter().any(|&(exclusive, _)| exclusive));
            }
        };
        match fs2::FileExt::try_lock_shared(&file) {
            Ok(()) => false,
            Err(e) => is_contention(&e),
        }
    }
}

impl FileLock {
    /// Closes this descriptor without unlocking: the lock stays held while
    /// another descriptor of the same open file lives (a job's process that
    /// inherited it), and is released with the last of them.
    pub fn close(self) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the file is moved out exactly once, and `this` is never
        // used or dropped again (ManuallyDrop), so it is closed once.
        let file = unsafe { std::ptr::read(&this.file) };
        drop(file);
    }
}

impl LockFile {
    /// Whether this process holds the lock through a descriptor it
    /// inherited (a job's processes inherit their machine's job lock): then
    /// it runs inside the job that holds the machine. Looks at this
    /// process's open descriptors for the lock file; one whose open file
    /// can take the lock at once is the holder's.
    pub fn inherited_holds(&self) -> bool {
        let Some(target) = self.entry() else {
            return false;
        };
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
            return false;
        };
        fds.flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::c_int>().ok())
            .any(|fd| {
                // SAFETY: stat is plain data, filled in by fstat; a
                // descriptor closed meanwhile only makes fstat fail.
                let mut stat: libc::stat = unsafe { std::mem::zeroed() };
                if unsafe { libc::fstat(fd, &mut stat) } != 0
                    || stat.st_dev != target.dev()
                    || stat.st_ino != target.ino()
                {
                    return false;
                }
                // SAFETY: a non-blocking flock on a descriptor of this
                // process; it succeeds only where this open file holds (or
                // may take) the lock.
                unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
            })
    }
}

/// The names of the files in the folder `folder` that some process holds
/// an exclusive `flock` on, from one read of the folder and of /proc/locks;
/// empty when either cannot be read (then nothing is known to be held).
/// For showing a lab: a claim itself always takes the lock for real.
pub fn held_in(folder: &Dir) -> std::collections::HashSet<std::ffi::OsString> {
    let Ok(meta) = folder.metadata() else {
        return Default::default();
    };
    let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
    // Sorted, for a binary search an entry: no hashing of a thousand
    // numbers.
    let mut held: Vec<u64> = match lock_table() {
        Some(table) => table
            .into_iter()
            .filter(|l| l.exclusive && l.dev == dev)
            .map(|l| l.ino)
            .collect(),
        None => return Default::default(),
    };
    if held.is_empty() {
        return Default::default();
    }
    held.sort_unstable();
    folder
        .entries_with_inodes(|ino| held.binary_search(&ino).is_ok())
        .map(|names| names.into_iter().collect())
        .unwrap_or_default()
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes the
        // release independent of any descriptor that might share the file.
        let _ = fs2::FileExt::unlock(&self.file);
    }
}

fn try_lock(file: &File, mode: Mode) -> io::Result<()> {
    match mode {
        Mode::Shared => fs2::FileExt::try_lock_shared(file),
        Mode::Exclusive => fs2::FileExt::try_lock_exclusive(file),
    }
}

fn lock(file: &File, mode: Mode) -> io::Result<()> {
    match mode {
        Mode::Shared => fs2::FileExt::lock_shared(file),
        Mode::Exclusive => fs2::FileExt::lock_exclusive(file),
    }
}

fn is_contention(e: &io::Error) -> bool {
    e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
}

/// One `flock` held (not waited for), as /proc/locks lists it.
struct TableEntry {
    exclusive: bool,
    /// The holder's PID (0 where the holder is outside this PID namespace).
    pid: u32,
    /// The device (major, minor) and inode of the locked file.
    dev: (u32, u32),
    ino: u64,
}

/// The kernel's `flock` table; `None` when /proc does not tell.
fn lock_table() -> Option<Vec<TableEntry>> {
    use std::io::Read;
    // Read in large steps: the kernel formats the table again from the
    // start for every read call, and a lab whose thousand machines run
    // jobs holds a thousand locks (some 60 KB of text).
    let mut file = std::fs::File::open("/proc/locks").ok()?;
    let mut bytes = Vec::with_capacity(256 * 1024);
    file.read_to_end(&mut bytes).ok()?;
    let locks = String::from_utf8(bytes).ok()?;
    Some(
        locks
            .lines()
            .filter_map(|line| {
                // "7: FLOCK  ADVISORY  WRITE 123 fe:01:456 0 EOF"; a
                // waiter's line has "->" after the number.
                let mut words = line.split_ascii_whitespace().skip(1);
                if words.next()? != "FLOCK" {
                    return None;
                }
                let exclusive = words.nth(1)? == "WRITE";
                let pid = words.next()?.parse().ok()?;
                let mut id = words.next()?.split(':');
                let major = u32::from_str_radix(id.next()?, 16).ok()?;
                let minor = u32::from_str_radix(id.next()?, 16).ok()?;
                Some(TableEntry {
                    exclusive,
                    pid,
                    dev: (major, minor),
                    ino: id.next()?.parse().ok()?,
                })
            })
            .collect(),
    )
}

/// The `flock` locks held on the file of device `dev` and inode `ino`:
/// whether each is exclusive, and its holder's PID. `None` when /proc does
/// not tell.
fn flocks_on(dev: u64, ino: u64) -> Option<Vec<(bool, u32)>> {
    let dev = (libc::major(dev), libc::minor(dev));
    Some(
        lock_table()?
            .into_iter()
            .filter(|l| l.dev == dev && l.ino == ino)
            .map(|l| (l.exclusive, l.pid))
            .collect(),
    )
}

/// Who holds a `flock` on `file`, from /proc/locks (the first holder of a
/// shared lock); `None` when it cannot be told.
pub fn holder(file: &File) -> Option<Holder> {
    let meta = file.metadata().ok()?;
    let pid = flocks_on(meta.dev(), meta.ino())?
        .into_iter()
        .map(|(_, pid)| pid)
        .find(|&pid| pid > 0)?;
    Some(describe(pid))
}

/// The process `pid` as a [`Holder`]: its command name and whether it is
/// stopped, where /proc tells.
fn describe(pid: u32) -> Holder {
    let command = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_string());
    let stopped = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|s| s == "T" || s == "t")
        })
        .unwrap_or(false);
    Holder {
        pid,
        command,
        stopped,
    }
}

impl LockFile {
    /// The processes that hold the exclusive `flock` on the lock file now,
    /// lowest PID first: those with a descriptor of the locked open file.
    /// /proc/locks names only the process that took a lock, which may be
    /// gone while others that inherited its descriptor hold it on (the
    /// processes of a job whose mama was killed), so every process's
    /// descriptors are looked at: the lock file's own (same device and
    /// inode) whose `fdinfo` lists the lock. Sees the processes /proc lets
    /// this user look into (their own; every one for root); empty where it
    /// tells nothing.
    pub fn holders(&self) -> Vec<Holder> {
        let Some(target) = self.entry() else {
            return Vec::new();
        };
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = procs
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .filter(|&pid| holds_through_a_descriptor(pid, &target))
            .collect();
        pids.sort_unstable();
        pids.into_iter().map(describe).collect()
    }
}

/// Whether the process `pid` has a descriptor of the lock file `target`
/// through which it holds an exclusive `flock`.
fn holds_through_a_descriptor(pid: u32, target: &Entry) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        // The link followed: the open file's device and inode.
        let same = std::fs::metadata(fd.path()).is_ok_and(|meta| target.is(&meta));
        // "lock:\t1: FLOCK  ADVISORY  WRITE 123 fe:01:456 0 EOF", for the
        // open file that holds it only (not for a waiter's).
        same && std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .is_ok_and(|info| {
            info.lines().any(|line| {
                let mut words = line.split_ascii_whitespace();
                words.next() == Some("lock:")
                    && words.nth(1) == Some("FLOCK")
                    && words.nth(1) == Some("WRITE")
            })
        })
    })
}

/// The longest lock file name used as the plain encoding of a name; file
/// systems take 255 bytes.
const MAX_PLAIN_FILE_NAME: usize = 200;
/// How much of a long name's encoding starts its lock file name.
const LONG_NAME_PREFIX: usize = 160;

/// The name of the job lock file of the machine `name`; names that could
/// not be a plain file name are percent-encoded. A name whose file name
/// would be longer than `MAX_PLAIN_FILE_NAME` bytes gets a readable start
/// of its encoding (cut between whole characters and `%XX`), `~` and a
/// hash of the whole name. No plain encoding holds `~`, so the two kinds
/// never meet.
pub fn file_name(name: &str) -> String {
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
    file
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
