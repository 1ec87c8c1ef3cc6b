//! What the operating system says about processes, users and this host.
//!
//! A PID means something only in the PID namespace and the boot it was
//! taken in, so a claim records where it was made ([`Origin`]): the boot
//! id, the PID namespace, and the claimer's start time in clock ticks since
//! boot. That start time comes from a clock that never steps, so a clock
//! change can never make a live claimer look like a reused PID.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;

/// What is known about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// No such process (or only its zombie is left).
    Gone,
    /// It runs; `start` is its start time in clock ticks since boot, when
    /// /proc shows it (a `hidepid` mount may hide other users' processes).
    Alive { start: Option<u64> },
}

/// The process table, as the staleness judge and the busy rules need it.
pub trait ProcessTable {
    fn probe(&self, pid: u32) -> Probe;
    /// The parent of `pid`, when it can be seen.
    fn parent(&self, pid: u32) -> Option<u32>;
    /// How many whole seconds ago a process that started `start` ticks
    /// after boot started (measured in the boot clock, which never steps).
    fn age(&self, start: u64) -> Option<i64>;
}

/// Where a claim was made: the boot, the PID namespace, and the claimer's
/// start time (clock ticks since boot). Stored in the state file as
/// `boot=UUID pidns=INODE start=TICKS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub boot: String,
    pub pidns: u64,
    pub start: u64,
}

impl Origin {
    /// Reads the stored form; anything else reads as no origin.
    pub fn parse(text: &str) -> Option<Origin> {
        let (mut boot, mut pidns, mut start) = (None, None, None);
        for part in text.split_ascii_whitespace() {
            match part.split_once('=')? {
                ("boot", v) if !v.is_empty() => boot = Some(v.to_string()),
                ("pidns", v) => pidns = Some(v.parse().ok()?),
                ("start", v) => start = Some(v.parse().ok()?),
                _ => {}
            }
        }
        Some(Origin {
            boot: boot?,
            pidns: pidns?,
            start: start?,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "boot={} pidns={} start={}",
            self.boot, self.pidns, self.start
        )
    }
}

/// Where this process runs: what a claim's [`Origin`] is compared with.
/// `None` where /proc does not tell (then no foreign PID is ever judged).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Place {
    pub boot: Option<String>,
    pub pidns: Option<u64>,
    /// This process's start time (ticks since boot).
    pub start: Option<u64>,
    /// Whether /proc shows this PID namespace's processes by the PIDs this
    /// process sees (a PID namespace that kept its parent's /proc does
    /// not): only then are PIDs judged through it.
    pub proc_is_ours: bool,
}

impl Place {
    /// This process's boot, PID namespace and start (read once).
    pub fn here() -> Place {
        static HERE: std::sync::OnceLock<Place> = std::sync::OnceLock::new();
        HERE.get_or_init(|| {
            let me = std::process::id();
            let proc_is_ours = std::fs::read_link("/proc/self")
                .ok()
                .and_then(|link| link.to_str()?.parse::<u32>().ok())
                == Some(me);
            Place {
                boot: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
                // /proc/self is this process whatever PIDs /proc shows.
                pidns: pid_namespace(),
                start: stat_of("self").map(|s| s.start),
                proc_is_ours,
            }
        })
        .clone()
    }

    /// The origin of a claim made by this process now.
    pub fn origin_of_this_process(&self) -> Option<Origin> {
        Some(Origin {
            boot: self.boot.clone()?,
            pidns: self.pidns?,
            start: self.start?,
        })
    }

    /// Whether PIDs recorded at `origin` are PIDs this process can judge:
    /// of its own namespace, in this boot, with a /proc that shows them.
    pub fn shares_pids_with(&self, origin: &Origin) -> bool {
        self.proc_is_ours
            && self.boot.as_deref() == Some(origin.boot.as_str())
            && self.pidns == Some(origin.pidns)
    }

    /// Whether `origin` is this kernel (this boot), whatever namespace.
    pub fn same_boot(&self, origin: &Origin) -> bool {
        self.boot.as_deref() == Some(origin.boot.as_str())
    }
}

/// The inode of this process's PID namespace (`/proc/self/ns/pid` reads
/// `pid:[4026531836]`).
fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let link = link.to_str()?;
    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// What /proc/PID/stat says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    zombie: bool,
    parent: u32,
    /// Clock ticks since boot.
    start: u64,
}

/// Reads /proc/PID/stat: one small read, where a general process library
/// makes dozens of system calls.
fn stat(pid: u32) -> Option<Stat> {
    stat_of(&pid.to_string())
}

/// Reads /proc/ENTRY/stat (`ENTRY` a PID, or `self`).
fn stat_of(entry: &str) -> Option<Stat> {
    let mut buf = [0u8; 1024];
    let text = read_small(&format!("/proc/{entry}/stat"), &mut buf)?;
    // The command name is in parentheses and may hold anything, ')' too.
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let parent = fields.next()?.parse().ok()?;
    // Field 22 of the file; `state` was field 3.
    let start = fields.nth(17)?.parse().ok()?;
    Some(Stat {
        zombie: matches!(state, "Z" | "X" | "x"),
        parent,
        start,
    })
}

/// Reads a one-line file (a /proc entry) into `buf`: an open, a read, a
/// close. `std::fs::read` asks for the size first, which /proc does not
/// know, and then reads in growing steps: ten system calls a process where
/// `list` probes a thousand.
fn read_small<'b>(path: &str, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                // A /proc line comes whole in one read; no read to learn
                // that nothing follows.
                if buf[len - 1] == b'\n' {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    // A line longer than the buffer is not one this code can read.
    (len < buf.len()).then_some(&buf[..len])
}

/// How many PIDs make a thread's worth of probing in [`Processes::probe_all`]
/// (starting a thread costs about as much as twenty probes).
const PIDS_A_THREAD: usize = 128;

/// The live process table of this host's PID namespace, read on demand;
/// each PID is probed once per look (a lab often names one PID many times).
#[derive(Default)]
pub struct Processes {
    probed: RefCell<HashMap<u32, Probe>>,
}

impl Processes {
    pub fn new() -> Processes {
        Processes::default()
    }

    /// Probes these PIDs now, those not probed yet, so that later probes
    /// of them are answered at once: for showing a whole lab. A probe is a
    /// read of /proc/PID/stat, about 9 µs of the kernel's time, and a lab
    /// of a thousand busy machines names a thousand PIDs, so many are
    /// probed on a few threads (each probe stands alone).
    pub fn probe_all(&self, pids: impl IntoIterator<Item = u32>) {
        let mut todo: Vec<u32> = {
            let probed = self.probed.borrow();
            pids.into_iter()
                .filter(|pid| !probed.contains_key(pid))
                .collect()
        };
        todo.sort_unstable();
        todo.dedup();
        // Read once, before any thread asks for it.
        let _ = Place::here();
        // Only a long list is worth threads (and the cgroup files that
        // tell how many cores there are).
        let threads = match todo.len() / PIDS_A_THREAD {
            0 | 1 => 1,
            most => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4)
                .min(most),
        };
        let found: Vec<(u32, Probe)> = if threads == 1 {
            todo.iter()
                .map(|&pid| (pid, Processes::probe_now(pid)))
                .collect()
        } else {
            let chunk = todo.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let workers: Vec<_> = todo
                    .chunks(chunk)
                    .map(|pids| {
                        scope.spawn(move || {
                            pids.iter()
                                .map(|&pid| (pid, Processes::probe_now(pid)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    // A worker that died probed nothing: those PIDs are
                    // probed one by one when asked.
                    .flat_map(|worker| worker.join().unwrap_or_default())
                    .collect()
            })
        };
        self.probed.borrow_mut().extend(found);
    }

    /// Takes `pid` as alive, started at `start`, where it was not probed:
    /// for a caller that knows its verdict cannot depend on the probe (see
    /// `list`). A PID probed already keeps what the probe said.
    pub fn assume_alive(&self, pid: u32, start: Option<u64>) {
        self.probed
            .borrow_mut()
            .entry(pid)
            .or_insert(Probe::Alive { start });
    }

    /// Forgets what was probed: a loop that looks again must see changes.
    pub fn forget(&self) {
        self.probed.borrow_mut().clear();
    }

    fn probe_now(pid: u32) -> Probe {
        let Ok(raw) = libc::pid_t::try_from(pid) else {
            return Probe::Gone;
        };
        if raw <= 0 {
            return Probe::Gone;
        }
        // Where /proc shows this PID namespace, a process it shows exists
        // here: one read tells both (kill() would be a system call more
        // a process, and `list` probes every job's).
        if Place::here().proc_is_ours
            && let Some(stat) = stat(pid)
        {
            return match stat.zombie {
                true => Probe::Gone,
                false => Probe::Alive {
                    start: Some(stat.start),
                },
            };
        }
        if !exists(raw) {
            return Probe::Gone;
        }
        match stat(pid) {
            Some(stat) if stat.zombie => Probe::Gone,
            Some(stat) => Probe::Alive {
                start: Some(stat.start),
            },
            // Hidden from /proc, or gone since kill() saw it: ask again.
            None if exists(raw) => Probe::Alive { start: None },
            None => Probe::Gone,
        }
    }
}

impl ProcessTable for Processes {
    fn probe(&self, pid: u32) -> Probe {
        if let Some(&known) = self.probed.borrow().get(&pid) {
            return known;
        }
        let probe = Processes::probe_now(pid);
        self.probed.borrow_mut().insert(pid, probe);
        probe
    }

    fn parent(&self, pid: u32) -> Option<u32> {
        stat(pid).map(|s| s.parent)
    }

    fn age(&self, start: u64) -> Option<i64> {
        let now = boot_clock_ticks()?;
        let ticks = now.checked_sub(start)?;
        i64::try_from(ticks / clock_ticks_per_second()?).ok()
    }
}

/// The boot clock (CLOCK_BOOTTIME: never steps, counts suspend) in the
/// clock ticks /proc uses for start times.
fn boot_clock_ticks() -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the current time into a valid timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return None;
    }
    let hz = clock_ticks_per_second()?;
    let secs = u64::try_from(now.tv_sec).ok()?;
    let nanos = u64::try_from(now.tv_nsec).ok()?;
    Some(secs.checked_mul(hz)? + nanos * hz / 1_000_000_000)
}

fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: a plain query.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0)
}

/// Whether a process has this PID: kill(pid, 0) sees every process, even
/// where /proc hides other users' ones (EPERM means it exists).
fn exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let answer = unsafe { libc::kill(pid, 0) };
    answer == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This process and its ancestors, nearest first, each with its start time
/// (ticks since boot) where /proc shows it; only this process where /proc
/// is not this PID namespace's.
pub fn lineage(processes: &impl ProcessTable) -> Vec<(u32, Option<u64>)> {
    if !Place::here().proc_is_ours {
        return vec![(std::process::id(), Place::here().start)];
    }
    let start_of = |pid| match processes.probe(pid) {
        Probe::Alive { start } => start,
        Probe::Gone => None,
    };
    let me = std::process::id();
    let mut chain = vec![(me, start_of(me))];
    let mut pid = std::os::unix::process::parent_id();
    while pid > 1 && !chain.iter().any(|&(p, _)| p == pid) && chain.len() < 4096 {
        chain.push((pid, start_of(pid)));
        match processes.parent(pid) {
            Some(parent) => pid = parent,
            None => break,
        }
    }
    chain
}

/// This host's name (read once).
pub fn host_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(read_host_name).clone()
}

fn read_host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the name is NUL-terminated
    // when it fits, and the last byte stays 0 in any case.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) } == 0;
    let name = if ok {
        CStr::from_bytes_until_nul(&buf)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// The name of the user running mama (the real user id, as `id -un`; read
/// once).
pub fn user_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(read_user_name).clone()
}

fn read_user_name() -> String {
    user_name_of(user_id())
}

/// The real user id of mama's process (whose name [`user_name`] is).
pub fn user_id() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// The effective user id of mama's process: whose rights it acts with.
pub fn effective_user_id() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The home folder the password database gives user `uid`.
pub fn home_of(uid: u32) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    passwd_entry(uid, |pwd| {
        if pwd.pw_dir.is_null() {
            return None;
        }
        // SAFETY: pw_dir points into the entry's buffer, NUL-terminated,
        // which outlives this call.
        let dir = unsafe { CStr::from_ptr(pwd.pw_dir) };
        Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
            dir.to_bytes(),
        )))
    })
}

/// What `read` takes from the password database's entry of user `uid`,
/// while the entry's buffer lives; `None` where there is no entry.
fn passwd_entry<T>(uid: u32, read: impl FnOnce(&libc::passwd) -> Option<T>) -> Option<T> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain data, filled in by getpwuid_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call.
    let found = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        ) == 0
            && !result.is_null()
    };
    if !found {
        return None;
    }
    read(&pwd)
}

/// The user who runs the process `pid`: its real user id, as
/// `/proc/PID/status` tells it (the owner of `/proc/PID` is the effective
/// one, or root for a process that may not be dumped), where /proc shows
/// this PID namespace's processes.
pub fn process_owner(pid: u32) -> Option<u32> {
    if !Place::here().proc_is_ours {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The name of the user `uid`, or its number where it has none.
pub fn user_name_of(uid: u32) -> String {
    passwd_entry(uid, |pwd| {
        // SAFETY: pw_name points into the entry's buffer, NUL-terminated,
        // which outlives this call; the name is copied out.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        Some(name.to_string_lossy().into_owned())
    })
    .unwrap_or_else(|| uid.to_string())
}

/// The name of the group `gid`, or its number where it has none.
pub fn group_name_of(gid: u32) -> String {
    group_entry(gid, None)
        .map(|(name, _)| name)
        .unwrap_or_else(|| gid.to_string())
}

/// The id of the group `name` (a name, or a number); `None` where there
/// is no such group.
pub fn group_id_of(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    group_entry(0, Some(name)).map(|(_, gid)| gid)
}

/// The group database's entry of `gid`, or of the group called `name`:
/// its name and id.
fn group_entry(gid: u32, name: Option<&str>) -> Option<(String, u32)> {
    let wanted = match name {
        Some(name) => Some(std::ffi::CString::new(name).ok()?),
        None => None,
    };
    // A group of many members needs a large buffer: grown until it fits.
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: a struct of plain fields and pointers, all zero until
        // getgr*_r fills it in.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call.
        let rc = unsafe {
            match &wanted {
                Some(name) => libc::getgrnam_r(
                    name.as_ptr(),
                    &mut group,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut found,
                ),
                None => libc::getgrgid_r(gid, &mut group, buf.as_mut_ptr(), buf.len(), &mut found),
            }
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || group.gr_name.is_null() {
            return None;
        }
        // SAFETY: a NUL-terminated name inside `buf`, copied out.
        let name = unsafe { CStr::from_ptr(group.gr_name) }
            .to_string_lossy()
            .into_owned();
        return Some((name, group.gr_gid));
    }
}

/// The groups mama's process acts with: its effective group and its
/// supplementary groups.
pub fn own_groups() -> Vec<u32> {
    // SAFETY: getegid cannot fail.
    let mut groups = vec![unsafe { libc::getegid() }];
    // SAFETY: a query of the count (no buffer written).
    let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if count > 0 {
        let mut more = vec![0 as libc::gid_t; count as usize];
        // SAFETY: `more` holds `count` entries.
        let got = unsafe { libc::getgroups(count, more.as_mut_ptr()) };
        if got > 0 {
            more.truncate(got as usize);
            groups.extend(more);
        }
    }
    groups
}

/// Whether `gid` is the private group of the user running mama: the group
/// named as the user is, as `useradd` makes one for each user (root's is
/// `root`). A folder in such a group is one user's, not a team's.
pub fn is_private_group(gid: u32) -> bool {
    is_private_group_of(gid, effective_user_id())
}

/// Whether `gid` is the private group of the user `uid` (named as they
/// are).
pub fn is_private_group_of(gid: u32, uid: u32) -> bool {
    group_name_of(gid) == user_name_of(uid)
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A process that holds a lock, as /proc tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), if it can be read.
    pub command: Option<String>,
    /// Stopped (Ctrl-Z, SIGSTOP) or traced.
    pub stopped: bool,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PID {}", self.pid)?;
        match (&self.command, self.stopped) {
            (Some(command), true) => write!(f, " ({command}, stopped)"),
            (Some(command), false) => write!(f, " ({command})"),
            (None, true) => write!(f, " (stopped)"),
            (None, false) => Ok(()),
        }
    }
}

/// Overwrites with `x`, in this process's command line as every user sees
/// it (`/proc/PID/cmdline`, `ps`), the bytes `hide` names in each argument
/// (ranges within the argument; a secret such as a password in a URL), as
/// MySQL's client does. The arguments were parsed already: `std::env::args`
/// reads the same memory, so it too gives the hidden text from then on.
/// Whether the area could be found.
pub fn hide_in_command_line(hide: impl Fn(&[u8]) -> Vec<std::ops::Range<usize>>) -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    // The fields after the command's name, which is in parentheses and may
    // hold anything: the third field of the line is the first of these.
    let Some(after) = stat.rfind(')').and_then(|at| stat.get(at + 1..)) else {
        return false;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // arg_start and arg_end are fields 48 and 49 (proc_pid_stat(5)).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<usize>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else {
        return false;
    };
    if start == 0 || end <= start || end - start > 1 << 24 {
        return false;
    }
    // SAFETY: [arg_start, arg_end) is this process's argument area, which
    // the kernel laid out at exec in the initial stack: mapped, readable
    // and writable for the whole life of the process, and written by
    // nothing else. Only bytes inside arguments are replaced, never the NUL
    // bytes between them, so every argument stays a C string of the same
    // length. It is called on the main thread before any other thread reads
    // the arguments (`std::env::args`).
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    for arg in area.split_mut(|b| *b == 0) {
        for range in hide(arg) {
            if let Some(bytes) = arg.get_mut(range) {
                bytes.fill(b'x');
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_read_back_and_nonsense_reads_as_none() {
        let origin = Origin {
            boot: "bb92a02c-f1fa-42e8-9b1c-228309de4eb4".into(),
            pidns: 4026531836,
            start: 123456,
        };
        assert_eq!(Origin::parse(&origin.to_string()), Some(origin));
        for bad in [
            "",
            "boot=x",
            "boot=x pidns=1",
            "boot=x pidns=a start=1",
            "junk",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn this_process_has_an_origin_that_shares_its_pids() {
        let here = Place::here();
        let origin = here.origin_of_this_process().expect("/proc tells");
        assert!(here.shares_pids_with(&origin));
        let processes = Processes::new();
        assert_eq!(
            processes.probe(std::process::id()),
            Probe::Alive {
                start: Some(origin.start)
            }
        );
        let age = processes.age(origin.start).expect("an age");
        assert!((0..600).contains(&age), "{age}");
        let chain = lineage(&processes);
        assert_eq!(chain[0], (std::process::id(), Some(origin.start)));
        assert_eq!(chain[1].0, std::os::unix::process::parent_id());
    }
}
