//! What the operating system says about processes, users and this host.

use std::cell::RefCell;
use std::ffi::CStr;

use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};

/// What is known about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// No such process (or only its zombie is left).
    Gone,
    /// It runs; `started` is its start time in Unix seconds when /proc
    /// shows it (a `hidepid` mount may hide other users' processes).
    Alive { started: Option<i64> },
}

/// The process table, as the staleness judge and the busy rules need it.
pub trait ProcessTable {
    fn probe(&self, pid: u32) -> Probe;
    /// The parent of `pid`, when it can be seen.
    fn parent(&self, pid: u32) -> Option<u32>;
}

/// The live process table of this host, read on demand; each PID is probed
/// once per command (a lab often names one PID many times).
#[derive(Default)]
pub struct Processes {
    system: RefCell<Option<System>>,
    probed: RefCell<std::collections::HashMap<u32, Probe>>,
}

impl Processes {
    pub fn new() -> Processes {
        Processes::default()
    }

    /// Forgets what was probed: a loop that looks again must see changes.
    pub fn forget(&self) {
        self.probed.borrow_mut().clear();
    }

    /// Reads one process from /proc through sysinfo.
    fn with_process<T>(&self, pid: u32, f: impl FnOnce(&sysinfo::Process) -> T) -> Option<T> {
        let mut system = self.system.borrow_mut();
        if system.is_none() {
            *system = System::new().ok();
        }
        let system = system.as_mut()?;
        let pid = Pid::from_u32(pid);
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing(),
        );
        system.process(pid).map(f)
    }
}

impl ProcessTable for Processes {
    fn probe(&self, pid: u32) -> Probe {
        if let Some(&known) = self.probed.borrow().get(&pid) {
            return known;
        }
        let probe = self.probe_now(pid);
        self.probed.borrow_mut().insert(pid, probe);
        probe
    }

    fn parent(&self, pid: u32) -> Option<u32> {
        self.with_process(pid, |p| p.parent().map(|p| p.as_u32()))
            .flatten()
    }
}

impl Processes {
    fn probe_now(&self, pid: u32) -> Probe {
        let Ok(raw) = libc::pid_t::try_from(pid) else {
            return Probe::Gone;
        };
        if raw <= 0 {
            return Probe::Gone;
        }
        if !exists(raw) {
            return Probe::Gone;
        }
        match self.with_process(pid, |p| (p.status(), p.start_time())) {
            Some((ProcessStatus::Zombie | ProcessStatus::Dead, _)) => Probe::Gone,
            Some((_, started)) => Probe::Alive {
                started: i64::try_from(started).ok().filter(|&s| s > 0),
            },
            // Hidden from /proc, or reaped since kill() saw it: ask again.
            None if exists(raw) => Probe::Alive { started: None },
            None => Probe::Gone,
        }
    }
}

/// Whether a process has this PID: kill(pid, 0) sees every process, even
/// where /proc hides other users' ones (EPERM means it exists).
fn exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let answer = unsafe { libc::kill(pid, 0) };
    answer == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This process and its ancestors, nearest first.
pub fn lineage(processes: &impl ProcessTable) -> Vec<u32> {
    let mut chain = vec![std::process::id()];
    let mut pid = std::os::unix::process::parent_id();
    while pid > 1 && !chain.contains(&pid) && chain.len() < 4096 {
        chain.push(pid);
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
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the name is copied out
    // before the buffer goes away.
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
    if found {
        // SAFETY: pw_name points into `buf`, NUL-terminated.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return name.to_string_lossy().into_owned();
    }
    uid.to_string()
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
