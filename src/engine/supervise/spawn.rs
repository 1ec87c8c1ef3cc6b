//! Starting the job and its watcher without copying mama.
//!
//! A fork copies mama's page tables, and every page mama writes afterwards
//! takes a copy-on-write fault for as long as the child shares it: for the
//! watcher, the job's whole life. Both are made with `clone(CLONE_VM)`
//! instead, each on a stack of its own, as glibc's `posix_spawn` makes its
//! child:
//!
//! - The job's process (`CLONE_VM | CLONE_VFORK`) runs while mama's thread
//!   waits, until it execs or exits. It does what the parent module says
//!   the job does before its exec, with only what mama prepared for it
//!   ([`Launch`]): it allocates nothing, and mama's thread, which alone
//!   could touch what it uses, is stopped meanwhile.
//! - The watcher (`CLONE_VM`) runs beside mama for the job's whole life,
//!   so it must never write memory mama uses: it runs on its own stack,
//!   allocates nothing, takes its arguments from that stack, and makes its
//!   system calls through rustix, which makes them directly, never through
//!   libc's `errno` (thread-local storage it would share with the thread
//!   that started it). It gets a copy of mama's descriptors (no
//!   `CLONE_FILES`) and closes all but its two.

use std::ffi::{CString, OsString, c_void};
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Signal};

use crate::exit::ExitCode;

/// The job process's stack, beside a pointer for each argument: execvpe's
/// path buffer is on it (at most PATH_MAX and NAME_MAX bytes) and, for a
/// script without `#!`, its copy of the argument list, a pointer an
/// argument (glibc's posix_spawn sizes its child's stack the same way:
/// the list, and 32 KiB for the rest).
const LAUNCH_STACK: usize = 128 * 1024;
/// The watcher's stack: a few small frames.
const WATCHER_STACK: usize = 64 * 1024;

/// Memory mapped for a process that shares mama's memory to run on, with a
/// guard page below it, so an overflow faults rather than writing into
/// mama's memory. Unmapped when dropped, which must wait until the process
/// running on it has exec'd or is reaped.
pub(super) struct Stack {
    base: *mut c_void,
    len: usize,
    /// Where the stack begins (it grows down); what [`Stack::push`] put
    /// there lies above.
    top: usize,
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
        let stack = Stack {
            base,
            len,
            top: base as usize + len,
        };
        // SAFETY: the lowest page of the mapping just made, ours alone.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Puts `value` at the top of the stack, which then begins below it.
    fn push<T: Copy>(&mut self, value: T) -> *mut T {
        let at = (self.top - size_of::<T>()) & !(align_of::<T>().max(16) - 1);
        let slot = at as *mut T;
        // SAFETY: `at` lies within the writable part of the mapping (the
        // stack is far larger than what is pushed), aligned for T.
        unsafe { slot.write(value) };
        self.top = at;
        slot
    }

    /// Where the stack pointer starts: below what was pushed, aligned as
    /// the ABI wants it at a call.
    fn start(&self) -> *mut c_void {
        (self.top & !15) as *mut c_void
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
    pub(super) life: RawFd,
    /// The end the watcher's answer is read from.
    pub(super) joined: RawFd,
    /// mama's PID: the job execs only while mama is its parent.
    pub(super) parent: libc::pid_t,
    /// A descriptor the job keeps across its exec (the job lock).
    pub(super) inherit: Option<RawFd>,
    /// Whether the job makes itself the terminal's foreground group.
    pub(super) take_terminal: bool,
    /// The signal mask the job execs with.
    pub(super) mask: libc::sigset_t,
    /// The error (an errno) that kept the process from its exec, else 0.
    failed: AtomicI32,
}

impl Launch {
    /// The strings of a launch of `program` with `args`, in mama's
    /// environment with `env` set on top (an argument with a NUL byte is
    /// an error, as for any exec).
    pub(super) fn new(
        program: &OsString,
        args: &[OsString],
        env: &[(String, OsString)],
    ) -> io::Result<Launch> {
        let cstring = |bytes: Vec<u8>| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "an argument holds a NUL byte")
            })
        };
        let program = cstring(program.as_bytes().to_vec())?;
        let mut strings = Vec::with_capacity(1 + args.len());
        strings.push(program.clone());
        for arg in args {
            strings.push(cstring(arg.as_bytes().to_vec())?);
        }
        let arg_count = strings.len();
        for (key, value) in std::env::vars_os() {
            if env.iter().any(|(set, _)| set.as_bytes() == key.as_bytes()) {
                continue;
            }
            let mut entry = key.into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            strings.push(cstring(entry)?);
        }
        for (key, value) in env {
            let mut entry = key.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            strings.push(cstring(entry)?);
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
            life: -1,
            joined: -1,
            parent: 0,
            inherit: None,
            take_terminal: false,
            // SAFETY: sigset_t is plain data; the caller sets the mask.
            mask: unsafe { std::mem::zeroed() },
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
            // The watcher joins it before the job runs a single
            // instruction of its own.
            let me = libc::getpid().to_ne_bytes();
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
                libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
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

/// What the watcher starts with, on its stack.
#[derive(Clone, Copy)]
struct Watch {
    life: RawFd,
    joined: RawFd,
    /// Whether the kernel has close_range (5.9 and later), asked by mama.
    close_range: bool,
    kill_after: Duration,
}

/// Starts the watcher (see the module's doc and the parent's): its PID
/// and the stack it runs on, to be unmapped once it is reaped. `life` is
/// the read end of the life pipe, `joined` the write end of the answer.
pub(super) fn start_watcher(
    life: RawFd,
    joined: RawFd,
    kill_after: Duration,
) -> io::Result<(libc::pid_t, Stack)> {
    let mut stack = Stack::new(WATCHER_STACK)?;
    let watch = stack.push(Watch {
        life,
        joined,
        close_range: has_close_range(),
        kill_after,
    });
    // SAFETY: sigset_t is plain data; the calls change this thread's mask
    // for the clone only (the watcher starts with every signal blocked,
    // and so never runs a handler of mama's), and start the watcher on its
    // own stack, with its arguments on it.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            watcher,
            stack.start(),
            libc::CLONE_VM | libc::SIGCHLD,
            watch.cast(),
        );
        let error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(error);
        }
        Ok((pid, stack))
    }
}

/// Whether the kernel has close_range: it closes nothing here (no
/// descriptor is that high), and fails only where it does not exist.
fn has_close_range() -> bool {
    // SAFETY: closes no descriptor (the range holds none).
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::MAX - 1,
            libc::c_uint::MAX - 1,
            0,
        ) == 0
    }
}

/// The watcher, started by [`start_watcher`] with its [`Watch`].
extern "C" fn watcher(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` points at the Watch on this process's own stack.
    let watch = unsafe { *arg.cast::<Watch>() };
    watch.run()
}

impl Watch {
    /// The watcher's life (see the parent module's doc). Never returns.
    fn run(self) -> ! {
        self.close_all_but_mine();
        // SAFETY: the two descriptors kept, open until this process ends
        // (the answer's is closed below, and not used after).
        let (life, joined) = unsafe {
            (
                BorrowedFd::borrow_raw(self.life),
                BorrowedFd::borrow_raw(self.joined),
            )
        };
        // The job's PID, which is its group's.
        let mut pid = [0u8; 4];
        let mut got = 0;
        while got < pid.len() {
            match rustix::io::read(life, &mut pid[got..]) {
                Ok(0) => exit(), // mama died before the job said its PID
                Ok(n) => got += n,
                Err(Errno::INTR) => {}
                Err(_) => exit(),
            }
        }
        let job = i32::from_ne_bytes(pid);
        let Some(job) = Pid::from_raw(job).filter(|_| job > 0) else {
            exit()
        };
        if rustix::process::setpgid(None, Some(job)).is_err() {
            // The job reads end-of-file and does not start.
            exit()
        }
        let told = rustix::io::write(joined, &[1]) == Ok(1);
        // SAFETY: the answer's descriptor, not used again.
        unsafe { rustix::io::close(self.joined) };
        if !told {
            exit()
        }
        // Nothing more comes down the pipe: only end-of-file, when mama
        // has died (mama kills the watcher before it exits on its own).
        loop {
            match rustix::io::read(life, &mut [0u8; 1]) {
                Ok(0) => break,
                Err(Errno::INTR) => {}
                Ok(_) | Err(_) => exit(),
            }
        }
        let _ = rustix::process::kill_process_group(job, Signal::TERM);
        // A stopped process must wake to die of TERM.
        let _ = rustix::process::kill_process_group(job, Signal::CONT);
        let mut pause = rustix::thread::Timespec {
            tv_sec: self.kill_after.as_secs() as _,
            tv_nsec: self.kill_after.subsec_nanos() as _,
        };
        while let rustix::thread::NanosleepRelativeResult::Interrupted(rest) =
            rustix::thread::nanosleep(&pause)
        {
            pause = rest;
        }
        // The watcher is of the group, and goes with it.
        let _ = rustix::process::kill_process_group(job, Signal::KILL);
        exit()
    }

    /// Closes every descriptor but the watcher's two.
    fn close_all_but_mine(&self) {
        let (low, high) = (self.life.min(self.joined), self.life.max(self.joined));
        let ranges = [(0, low - 1), (low + 1, high - 1), (high + 1, RawFd::MAX)];
        if self.close_range {
            for (first, last) in ranges.into_iter().filter(|(first, last)| first <= last) {
                // SAFETY: closes descriptors of this process only (its
                // table is its own); close_range, which mama found to be
                // there, does not fail on such a range, so errno (mama's
                // too) is not written.
                unsafe {
                    libc::syscall(
                        libc::SYS_close_range,
                        first as libc::c_uint,
                        last as libc::c_uint,
                        0,
                    );
                }
            }
            return;
        }
        // A kernel older than close_range (5.9): one by one, up to the
        // limit on descriptors.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(65536, |limit| limit.min(65536)) as RawFd;
        for fd in (0..limit).filter(|&fd| fd != low && fd != high) {
            // SAFETY: a descriptor of this process only, perhaps not open
            // (rustix ignores the error, and writes no errno).
            unsafe { rustix::io::close(fd) };
        }
    }
}

/// Ends the watcher (`_exit` makes the system call alone).
fn exit() -> ! {
    // SAFETY: ends this process.
    unsafe { libc::_exit(0) }
}
