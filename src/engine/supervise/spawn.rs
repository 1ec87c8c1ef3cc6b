//! Starting the job without copying mama.
//!
//! A fork copies mama's page tables, write-protects mama's pages, and
//! makes each page mama writes next a copy-on-write fault, for a process
//! that only execs. The job's process is made with `clone(CLONE_VM |
//! CLONE_VFORK)` instead, on a stack of its own, as glibc's `posix_spawn`
//! makes its child: it runs while mama's thread waits, until it execs or
//! exits, and does what the parent module says the job does before its
//! exec with only what mama prepared for it ([`Launch`]): it allocates
//! nothing, and the thread that could touch what it uses (and whose
//! `errno` it writes) is stopped meanwhile. It gets a copy of mama's
//! descriptors and signal actions (no `CLONE_FILES`, no
//! `CLONE_SIGHAND`).

use std::ffi::{CString, c_void};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::exit::ExitCode;

/// The job process's stack, beside a pointer for each argument: execvpe's
/// path buffer is on it (at most PATH_MAX and NAME_MAX bytes) and, for a
/// script without `#!`, its copy of the argument list, a pointer an
/// argument (glibc's posix_spawn sizes its child's stack the same way:
/// the list, and 32 KiB for the rest).
const LAUNCH_STACK: usize = 128 * 1024;

/// Memory mapped for the job's process to run on while it shares mama's
/// memory, with a guard page below it, so an overflow faults rather than
/// writing into mama's memory. Unmapped when dropped, which must wait
/// until the process running on it has exec'd or exited.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new(size: usize) -> io::Result<Stack> {
        // SAFETY: a plain query.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&page| page > 0)
            .unwrap_or(4096);
        let len = size.next_multiple_of(page) + page;
        // SAFETY: a fresh private mapping, owned by the Stack made of it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the lowest page of the mapping just made, ours alone.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Where the stack pointer starts: its top (it grows down), aligned as
    /// the ABI wants it at a call.
    fn start(&self) -> *mut c_void {
        ((self.base as usize + self.len) & !15) as *mut c_void
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by no process any more
        // (see the type's doc).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// What the job's process needs from its start to its exec, prepared by
/// mama (see the module's doc).
pub(super) struct Launch {
    program: CString,
    /// The arguments and the environment, as execvpe takes them: pointers
    /// into `strings`, each list ended by a null.
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    _strings: Vec<CString>,
    /// mama's end of the life pipe, where the job writes its PID.
    life: RawFd,
    /// The end the watcher's answer is read from.
    joined: RawFd,
    /// mama's PID: the job execs only while mama is its parent.
    parent: libc::pid_t,
    /// A descriptor the job keeps across its exec (the job lock).
    inherit: Option<RawFd>,
    /// Whether the job makes itself the terminal's foreground group.
    take_terminal: bool,
    /// The signal mask the job execs with.
    mask: libc::sigset_t,
    /// The error (an errno) that kept the process from its exec, else 0.
    failed: AtomicI32,
}

impl Launch {
    /// The launch of `job`, in mama's environment with the job's own on
    /// top, its process to write its PID into `life` and wait for the
    /// watcher's answer on `joined` (an argument with a NUL byte is an
    /// error, as for any exec).
    pub(super) fn new(
        job: &super::Job,
        life: RawFd,
        joined: RawFd,
        take_terminal: bool,
        mask: libc::sigset_t,
    ) -> io::Result<Launch> {
        let cstring = |bytes: Vec<u8>| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "an argument holds a NUL byte")
            })
        };
        let entry = |key: &[u8], value: &[u8]| {
            let mut entry = Vec::with_capacity(key.len() + 1 + value.len());
            entry.extend_from_slice(key);
            entry.push(b'=');
            entry.extend_from_slice(value);
            cstring(entry)
        };
        let program = cstring(job.program.as_bytes().to_vec())?;
        let mut strings = Vec::with_capacity(1 + job.args.len());
        strings.push(program.clone());
        for arg in &job.args {
            strings.push(cstring(arg.as_bytes().to_vec())?);
        }
        let arg_count = strings.len();
        for (key, value) in std::env::vars_os() {
            if !job
                .env
                .iter()
                .any(|(set, _)| set.as_bytes() == key.as_bytes())
            {
                strings.push(entry(key.as_bytes(), value.as_bytes())?);
            }
        }
        for (key, value) in &job.env {
            strings.push(entry(key.as_bytes(), value.as_bytes())?);
        }
        // The CStrings' bytes stay where they are when `strings` moves.
        let pointers = |list: &[CString]| {
            let mut pointers: Vec<_> = list.iter().map(|s| s.as_ptr()).collect();
            pointers.push(std::ptr::null());
            pointers
        };
        let argv = pointers(&strings[..arg_count]);
        let envp = pointers(&strings[arg_count..]);
        Ok(Launch {
            program,
            argv,
            envp,
            _strings: strings,
            life,
            joined,
            parent: std::process::id() as libc::pid_t,
            inherit: job.inherit,
            take_terminal,
            mask,
            failed: AtomicI32::new(0),
        })
    }

    /// Starts the job's process and waits until it has exec'd: its PID, or
    /// the error that kept it from its exec (then it is reaped).
    pub(super) fn start(&self) -> io::Result<libc::pid_t> {
        // Room for execvpe's copy of the argument list (see LAUNCH_STACK).
        let stack = Stack::new(LAUNCH_STACK + size_of_val(self.argv.as_slice()))?;
        // SAFETY: the process runs `launch` on its own stack, with `self`,
        // which lives on while this thread is stopped (CLONE_VFORK) until
        // the process has exec'd or exited; it allocates nothing.
        let pid = unsafe {
            libc::clone(
                launch,
                stack.start(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (self as *const Launch).cast_mut().cast(),
            )
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(stack);
        match self.failed.load(Ordering::Acquire) {
            0 => Ok(pid),
            error => {
                reap(pid);
                Err(io::Error::from_raw_os_error(error))
            }
        }
    }

    /// The job's process from its start to its exec (see the parent
    /// module's doc): returns only when it could not exec, with the error.
    /// Only async-signal-safe calls; nothing allocated.
    unsafe fn exec(&self) -> i32 {
        let errno = || {
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        };
        // SAFETY (the whole function): calls on this process's own group,
        // mask, descriptors and terminal, with data mama prepared.
        unsafe {
            // A watcher gone by now makes the write below fail, not kill
            // the job: SIGPIPE is blocked until the job's mask is set. Its
            // action goes back to the default (Rust's runtime ignores it).
            let mut pipe: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            // The job leads a process group of its own.
            if libc::setpgid(0, 0) != 0 {
                return errno();
            }
            // Its PID asked of the kernel: a glibc older than 2.25 keeps
            // the PID in the thread's data, which this process shares with
            // mama's thread, and would answer mama's.
            let pid = libc::syscall(libc::SYS_getpid) as libc::pid_t;
            // The watcher joins it before the job runs a single
            // instruction of its own.
            let me = pid.to_ne_bytes();
            if libc::write(self.life, me.as_ptr().cast(), me.len()) != me.len() as isize {
                return errno();
            }
            if !super::read_byte(self.joined) {
                // The watcher is gone: no job runs unwatched.
                return libc::ESRCH;
            }
            // mama died before the watcher was in place: do not run.
            if libc::getppid() != self.parent {
                libc::_exit(ExitCode::RunFailed.code());
            }
            // Keep the job lock open across exec (in this process only:
            // its descriptor table is its own).
            if let Some(fd) = self.inherit
                && libc::fcntl(fd, libc::F_SETFD, 0) != 0
            {
                return errno();
            }
            if self.take_terminal {
                // Become the terminal's foreground group, as a shell makes
                // its jobs, so the job may read the terminal (SIGTTOU is
                // blocked for the call: this group is not foreground yet).
                let mut ttou: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut ttou);
                libc::sigaddset(&mut ttou, libc::SIGTTOU);
                libc::pthread_sigmask(libc::SIG_BLOCK, &ttou, std::ptr::null_mut());
                libc::tcsetpgrp(libc::STDIN_FILENO, pid);
            }
            if libc::pthread_sigmask(libc::SIG_SETMASK, &self.mask, std::ptr::null_mut()) != 0 {
                return libc::EINVAL;
            }
            libc::execvpe(
                self.program.as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            );
            errno()
        }
    }
}

/// The job's process, started by [`Launch::start`] with its [`Launch`].
extern "C" fn launch(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the Launch mama passed, alive until this process
    // has exec'd or exited.
    let launch = unsafe { &*arg.cast::<Launch>() };
    // SAFETY: see `Launch::exec`.
    let error = unsafe { launch.exec() };
    launch.failed.store(error.max(1), Ordering::Release);
    // SAFETY: ends this process (the job's, which never exec'd).
    unsafe { libc::_exit(127) }
}

/// Reaps the child `pid`, which has ended or is about to.
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child; status is a plain int.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}
