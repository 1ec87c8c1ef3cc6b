//! Runs the job: spawn, process group, forwarded signals, timeout, status,
//! and the watcher that ends the job's process group when mama dies.
//!
//! As coreutils `timeout` does: the signals mama handles are blocked before
//! the job's process is made (it sets its own mask before exec), the job
//! runs in its own process group (it leads it), signals go to that group,
//! and the group is never signalled once the job has been reaped.
//!
//! A killed mama (SIGKILL included) runs no code, so a fork of mama stays
//! with the job to end it: the watcher. Before the job is started, mama
//! forks the watcher, which blocks every signal, closes every descriptor
//! but two pipe ends, and waits. The watcher must be a fork, a process
//! with memory of its own: the kernel ends every process that shares a
//! killed process's memory with it when it kills for want of memory (and,
//! before Linux 5.16, when it dumps a core), so a watcher sharing mama's
//! would die with it exactly when it is needed. The job's process, which
//! lives only until its exec, shares mama's memory rather than copying it
//! (see the `spawn` module). Between its start and its exec the job makes
//! its process group, writes its PID into the first pipe (the "life" pipe), and
//! waits until the watcher has joined that group and said so on the second;
//! only then, and only if mama is still its parent, does it exec. So the
//! watcher is in the job's group from the job's first instruction on, and
//! the group's ID cannot be reused while the watcher lives. Both pipes are
//! close-on-exec and the watcher holds no write end of the life pipe: once
//! the job has exec'd, mama holds its only write end, so the watcher reads
//! end-of-file exactly when mama is gone, however it died (unlike
//! `PR_SET_PDEATHSIG`, a pipe needs no check for a parent that died before
//! it was set, and speaks of the whole process, not of the thread that
//! forked). It then sends TERM and CONT to the group, KILL
//! `ORPHAN_KILL_AFTER` later (which ends the watcher too): the job and
//! every process of its group are gone within a second of mama's death.
//!
//! The watcher blocks every signal it can, so what is forwarded to the
//! group, Ctrl-C and Ctrl-Z at the terminal pass it by (SIGCONT drops a
//! pending stop); a KILL sent to the group (`--timeout`, a lost claim) ends
//! it with the job, which is fine since mama lives then. When the job has
//! ended and mama has reaped it, mama kills the watcher and reaps it, before
//! the release: processes a job left behind when it ended on its own run on,
//! as they always did. The watcher holds none of mama's descriptors: not the
//! job lock (processes of the job that left its group, with `setsid` or as
//! daemons, still hold that, and keep the machine busy until they end), not
//! the lab's lock, not a database session, not mama's output.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::backend::Lease;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::exit::ExitCode;

/// After `--timeout` sends TERM, KILL follows this much later.
pub const KILL_AFTER: Duration = Duration::from_secs(5);

use crate::backend::pg::lease::LEASE_LOOK;

mod spawn;

/// What to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
    pub timeout: Option<Duration>,
    /// A descriptor the job inherits (the machine's job lock): the kernel
    /// keeps the lock while any process of the job holds it, so after a
    /// killed mama (whose watcher ends the job's group) the machine stays
    /// busy until the last process that left the group ends.
    pub inherit: Option<RawFd>,
    /// The lease on the claim, where keeping it takes work (a database
    /// lab's session): when it is lost, or silent too long, the job is
    /// stopped, as a timeout stops it.
    pub lease: Option<Arc<Lease>>,
}

/// How the job ended.
#[derive(Debug)]
pub enum Ending {
    Exited(i32),
    Signalled(i32),
    /// `--timeout` ended it.
    TimedOut,
    /// The claim was lost while it ran, and mama stopped it.
    ClaimLost,
    /// It could not be started.
    NotStarted(io::Error),
}

impl Ending {
    /// The status `mama run` exits with.
    pub fn exit_code(&self) -> i32 {
        match self {
            Ending::Exited(code) => *code,
            Ending::Signalled(signal) => ExitCode::signalled(*signal),
            Ending::TimedOut => ExitCode::TimedOut.code(),
            Ending::ClaimLost => ExitCode::RunFailed.code(),
            Ending::NotStarted(e) if e.kind() == io::ErrorKind::NotFound => {
                ExitCode::NotFound.code()
            }
            Ending::NotStarted(_) => ExitCode::CannotExecute.code(),
        }
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Exited(code) => write!(f, "exit {code}"),
            Ending::Signalled(signal) => write!(f, "killed by signal {signal}"),
            Ending::TimedOut => write!(f, "timed out"),
            Ending::ClaimLost => write!(f, "stopped: the claim was lost"),
            Ending::NotStarted(e) => write!(f, "not started ({e})"),
        }
    }
}

const HANDLED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD];

/// As PID 1 (a container's first process), signals that have no handler
/// are ignored, so a waiting mama could be stopped by nothing but SIGKILL.
/// There INT, TERM and HUP end mama as they would anywhere else, until
/// [`block_signals`] takes them over for the job.
pub fn end_on_signals_as_init() {
    extern "C" fn end(signal: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) }
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls _exit.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = end as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Blocks the signals mama handles while a job runs, from right after the
/// claim commits until mama exits: a SIGINT can then never cut a release
/// short.
/// Returns the mask to give the job.
pub fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HANDLED {
            libc::sigaddset(&mut set, signal);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
            return Err(Error::Io {
                context: "cannot block signals".into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(old)
    }
}

/// Runs `job` to its end. The signals must already be blocked
/// ([`block_signals`]); `job_mask` is the mask the job starts with.
/// With the ending comes the watcher, killed once the job was reaped but
/// not yet reaped itself ([`Dying`]): its exit (the teardown of a copy of
/// mama's memory) goes on while the caller releases the claim.
pub fn run(job: &Job, job_mask: libc::sigset_t) -> (Result<Ending>, Option<Dying>) {
    let mut dying = None;
    let ending = run_watched(job, job_mask, &mut dying);
    (ending, dying)
}

fn run_watched(job: &Job, job_mask: libc::sigset_t, dying: &mut Option<Dying>) -> Result<Ending> {
    let terminal = Terminal::foreground();
    let (watcher, joined) = match Watcher::start() {
        Ok(started) => started,
        Err(e) => return Ok(Ending::NotStarted(e)),
    };
    let launch = spawn::Launch::new(
        job,
        watcher.life.as_raw_fd(),
        joined.as_raw_fd(),
        terminal.is_some(),
        job_mask,
    );
    let started = launch.and_then(|launch| launch.start());
    // The job has its copy (or is gone): mama's would only keep a job
    // whose watcher died waiting.
    drop(joined);
    let group = match started {
        Ok(pid) => pid,
        Err(e) => {
            // The job may have taken the terminal before its exec failed:
            // its group is gone, and the terminal comes back to mama's.
            if let Some(terminal) = &terminal {
                terminal.give_to(terminal.own_group);
            }
            return Ok(Ending::NotStarted(e));
        }
    };
    if let Some(terminal) = &terminal {
        // The job does the same; whichever comes first wins the race.
        terminal.give_to(group);
    }
    let ending = supervise(group, job.timeout, job.lease.as_deref(), terminal.as_ref());
    // The job is reaped (or supervision failed): the watcher goes first,
    // so that nothing signals the group from now on (killed, it runs no
    // code of its own again; it is reaped later).
    *dying = Some(watcher.kill());
    if let Some(terminal) = &terminal {
        terminal.give_to(terminal.own_group);
    }
    ending
}

/// After mama's death, the watcher sends KILL this long after TERM. Short
/// enough that a nested run's job is gone within a second too: its mama,
/// killed by the outer watcher at this mark if the TERM did not end it,
/// leaves its own watcher the same time.
const ORPHAN_KILL_AFTER: Duration = Duration::from_millis(300);

/// The watcher: a fork of mama that joins the job's process group and ends
/// it when mama dies (see the module's doc). Dropping it kills it and
/// reaps it, before mama's end of the life pipe closes.
struct Watcher {
    /// The watcher's process, killed and reaped as it goes: first, before
    /// `life` closes (fields go in their order).
    process: Dying,
    /// mama's end of the life pipe: the job writes its PID into it before
    /// exec; when it closes with mama, the watcher acts.
    life: OwnedFd,
}

impl Watcher {
    /// Forks the watcher; gives it with the end of the second pipe that
    /// the job reads the watcher's answer from (mama closes its copy once
    /// the job is started).
    fn start() -> io::Result<(Watcher, OwnedFd)> {
        let (life_out, life) = pipe()?;
        let (joined, joined_in) = pipe()?;
        // SAFETY: the child runs `watch` alone, which makes only
        // async-signal-safe calls and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            watch(life_out.as_raw_fd(), joined_in.as_raw_fd());
        }
        Ok((
            Watcher {
                process: Dying { pid },
                life,
            },
            joined,
        ))
    }
}

impl Watcher {
    /// Kills the watcher before mama's end of the life pipe closes (so it
    /// never takes mama for dead); it is reaped when the [`Dying`] goes.
    fn kill(self) -> Dying {
        let Watcher { process, life } = self;
        // SAFETY: the watcher is our unreaped child, so its PID cannot have
        // been reused. A KILL cannot be blocked: once sent, the watcher
        // runs none of its own code again.
        unsafe {
            libc::kill(process.pid, libc::SIGKILL);
        }
        drop(life);
        process
    }
}

/// A watcher that was sent KILL, reaped when this goes: waiting for its
/// exit at once took a run 0.03 to 0.15 ms (a copy of mama's memory is torn
/// down), time the release of the claim now hides. The watcher holds none of mama's descriptors (it closed them
/// at its start), so it keeps nothing locked meanwhile.
pub struct Dying {
    pid: libc::pid_t,
}

impl Drop for Dying {
    fn drop(&mut self) {
        // SAFETY: our unreaped child, so its PID cannot have been reused;
        // kill is harmless on one already killed, and waitpid reaps it.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            while libc::waitpid(self.pid, &mut status, 0) < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
    }
}

/// A pipe, both ends close-on-exec: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills in two new descriptors, each then owned once.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Reads one byte from `fd`: whether one came (not end-of-file or an
/// error). Async-signal-safe.
fn read_byte(fd: RawFd) -> bool {
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into a local.
        let got = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        if got >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return got == 1;
        }
    }
}

/// The watcher's life, in the fork of mama (see the module's doc): `life`
/// is the read end of the life pipe, `joined` the write end of the answer.
/// Only async-signal-safe calls (mama may have threads); never returns.
fn watch(life: RawFd, joined: RawFd) -> ! {
    // SAFETY: system calls on this process's own mask, descriptors and
    // group, and signals to the group of the job that it joined (a member
    // keeps a group's ID from reuse).
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        close_all_but(life.min(joined), life.max(joined));
        // The job's PID, which is its group's.
        let mut pid = [0u8; 4];
        let mut got = 0;
        while got < pid.len() {
            let n = libc::read(life, pid[got..].as_mut_ptr().cast(), pid.len() - got);
            if n > 0 {
                got += n as usize;
            } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                // mama died before the job was started (or the job before
                // it said its PID): nothing to watch.
                libc::_exit(0);
            }
        }
        let job = libc::pid_t::from_ne_bytes(pid);
        if job <= 0 || libc::setpgid(0, job) != 0 {
            // The job reads end-of-file and does not start.
            libc::_exit(0);
        }
        let yes = [1u8];
        let told = libc::write(joined, yes.as_ptr().cast(), 1) == 1;
        libc::close(joined);
        if !told {
            libc::_exit(0);
        }
        // Nothing more comes down the pipe: only end-of-file, when mama has
        // died (mama kills the watcher before it exits on its own).
        if read_byte(life) {
            libc::_exit(0);
        }
        libc::kill(-job, libc::SIGTERM);
        // A stopped process must wake to die of TERM.
        libc::kill(-job, libc::SIGCONT);
        let mut pause = libc::timespec {
            tv_sec: ORPHAN_KILL_AFTER.as_secs() as libc::time_t,
            tv_nsec: ORPHAN_KILL_AFTER.subsec_nanos() as libc::c_long,
        };
        let mut rest = pause;
        while libc::nanosleep(&pause, &mut rest) != 0
            && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
        {
            pause = rest;
        }
        // The watcher is of the group, and goes with it.
        libc::kill(-job, libc::SIGKILL);
        libc::_exit(0)
    }
}

/// Closes every descriptor but `low` and `high` (`low <= high`).
/// Async-signal-safe.
fn close_all_but(low: RawFd, high: RawFd) {
    let ranges = [
        (0, low - 1),
        (low + 1, high - 1),
        (high + 1, libc::c_int::MAX),
    ];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: closes descriptors of this process only; the two kept
        // are outside every range.
        unsafe {
            if libc::syscall(
                libc::SYS_close_range,
                first as libc::c_uint,
                last as libc::c_uint,
                0,
            ) != 0
            {
                // A kernel older than close_range (5.9): one by one, up to
                // the limit on descriptors.
                let mut limit: libc::rlimit = std::mem::zeroed();
                let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                    limit.rlim_cur.min(65536) as libc::c_int
                } else {
                    1024
                };
                for fd in first..=last.min(top) {
                    libc::close(fd);
                }
            }
        }
    }
}

/// The terminal mama was started in the foreground of; the job gets it for
/// its life and gives it back, as with a shell's foreground job.
struct Terminal {
    own_group: libc::pid_t,
}

impl Terminal {
    fn foreground() -> Option<Terminal> {
        // SAFETY: plain queries of this process and its standard input.
        unsafe {
            if libc::isatty(libc::STDIN_FILENO) != 1 {
                return None;
            }
            let own_group = libc::getpgrp();
            (libc::tcgetpgrp(libc::STDIN_FILENO) == own_group).then_some(Terminal { own_group })
        }
    }

    /// Whether mama's group is the terminal's foreground group.
    fn is_ours(&self) -> bool {
        // SAFETY: a plain query.
        unsafe { libc::tcgetpgrp(libc::STDIN_FILENO) == self.own_group }
    }

    /// Makes `group` the terminal's foreground group (SIGTTOU blocked for
    /// the call, since mama may be in the background by then).
    fn give_to(&self, group: libc::pid_t) {
        // SAFETY: sigset_t is plain data; the calls only change this
        // thread's mask (restored) and the terminal's foreground group.
        unsafe {
            let mut ttou: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut ttou);
            libc::sigaddset(&mut ttou, libc::SIGTTOU);
            libc::pthread_sigmask(libc::SIG_BLOCK, &ttou, &mut old);
            libc::tcsetpgrp(libc::STDIN_FILENO, group);
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
    }
}

/// What `waitpid` says of the job.
enum State {
    Running,
    Stopped(libc::c_int),
    Ended(Ending),
}

/// Looks at the job without blocking; reaps it when it has ended.
fn poll(pid: libc::pid_t) -> Result<State> {
    let mut status = 0;
    // SAFETY: waits for our own child only; status is a plain int.
    let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::WUNTRACED) };
    if got < 0 {
        return Err(Error::Io {
            context: "cannot wait for the job".into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(if got == 0 {
        State::Running
    } else if libc::WIFSTOPPED(status) {
        State::Stopped(libc::WSTOPSIG(status))
    } else if libc::WIFEXITED(status) {
        State::Ended(Ending::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        State::Ended(Ending::Signalled(libc::WTERMSIG(status)))
    } else {
        State::Running
    })
}

/// Waits for the job (whose process group is `group`), forwarding INT,
/// TERM and HUP to its group and enforcing the timeout. A job stopped at
/// the terminal (Ctrl-Z) stops mama too, so the shell gets the terminal
/// back; `fg` continues both.
fn supervise(
    group: libc::pid_t,
    timeout: Option<Duration>,
    lease: Option<&Lease>,
    terminal: Option<&Terminal>,
) -> Result<Ending> {
    let started = Instant::now();
    let mut term_at = timeout.map(|t| started + t);
    let mut kill_at: Option<Instant> = None;
    let mut timed_out = false;
    let mut claim_lost = false;
    let mut told_stopped = false;
    let mut last_look = Instant::now();
    loop {
        // A lease is looked at every LEASE_LOOK. After a much longer gap
        // mama was stopped itself (SIGSTOP, Ctrl-Z): its keeper gets a
        // moment to ask the server again before a silence counts.
        let resumed = last_look.elapsed() > LEASE_LOOK * 8;
        last_look = Instant::now();
        if let Some(lease) = lease.filter(|_| !claim_lost) {
            let silent = !resumed && lease.silence() > lease.silent_limit;
            if lease.is_lost() || silent {
                if silent {
                    say!(
                        "mama: LOST THE CLAIM: the lab has not answered for {}, and will soon \
                         free the machine for others; stopping the job",
                        crate::text::seconds(lease.silence())
                    );
                    lease.lose();
                }
                // As a timeout does: TERM now, KILL if still there later.
                claim_lost = true;
                term_at = None;
                kill_at = Some(Instant::now() + lease.kill_after);
                signal_group(group, libc::SIGTERM);
                signal_group(group, libc::SIGCONT);
            }
        }
        match poll(group)? {
            State::Ended(_) if claim_lost => return Ok(Ending::ClaimLost),
            State::Ended(ending) => return Ok(if timed_out { Ending::TimedOut } else { ending }),
            State::Stopped(_) if terminal.is_some() => {
                if let Some(terminal) = terminal {
                    terminal.give_to(terminal.own_group);
                    // SAFETY: stops this process as the job was stopped;
                    // it goes on when continued.
                    unsafe {
                        libc::raise(libc::SIGTSTP);
                    }
                    if terminal.is_ours() {
                        terminal.give_to(group);
                    }
                }
                signal_group(group, libc::SIGCONT);
                continue;
            }
            State::Stopped(signal) => {
                if !told_stopped && matches!(signal, libc::SIGTTIN | libc::SIGTTOU) {
                    say!(
                        "mama: the job stopped: it tried to use the terminal, which mama did not \
                         start in the foreground of; give it input from a file or pipe"
                    );
                    told_stopped = true;
                }
            }
            State::Running => {}
        }
        let lease_at = lease
            .filter(|_| !claim_lost)
            .map(|_| Instant::now() + LEASE_LOOK);
        let wake_at = [term_at, kill_at, lease_at].into_iter().flatten().min();
        match wait_signal(wake_at.map(|t| t.saturating_duration_since(Instant::now()))) {
            Some(libc::SIGCHLD) => {}
            Some(signal) => {
                signal_group(group, signal);
                // A job stopped (say, by reading the terminal from its
                // background group) must wake to receive it.
                signal_group(group, libc::SIGCONT);
            }
            None => {
                let now = Instant::now();
                if term_at.is_some_and(|t| now >= t) {
                    timed_out = true;
                    term_at = None;
                    kill_at = Some(now + KILL_AFTER);
                    signal_group(group, libc::SIGTERM);
                    // A stopped job must wake to die of TERM.
                    signal_group(group, libc::SIGCONT);
                } else if kill_at.is_some_and(|t| now >= t) {
                    kill_at = None;
                    signal_group(group, libc::SIGKILL);
                }
            }
        }
    }
}

fn signal_group(group: libc::pid_t, signal: libc::c_int) {
    // SAFETY: the group leader is our unreaped child, so the group id
    // cannot have been reused.
    unsafe {
        libc::kill(-group, signal);
    }
}

/// A handled signal (INT, TERM, HUP) that came while they are blocked
/// ([`block_signals`]), taken; `None` when none is pending.
pub fn take_signal() -> Option<i32> {
    // SAFETY: plain data initialised before use; sigtimedwait only reads
    // the set. Only INT, TERM and HUP are taken: a child's end (SIGCHLD,
    // blocked too) is no reason to stop.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let signal = libc::sigtimedwait(&set, std::ptr::null_mut(), &now);
        (signal > 0).then_some(signal)
    }
}

/// Waits for one of the handled (blocked) signals, at most `timeout`
/// (forever with `None`). `None` when the time ran out.
fn wait_signal(timeout: Option<Duration>) -> Option<libc::c_int> {
    // SAFETY: plain data initialised before use; sigtimedwait only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HANDLED {
            libc::sigaddset(&mut set, signal);
        }
        let result = match timeout {
            None => libc::sigwaitinfo(&set, std::ptr::null_mut()),
            Some(t) => {
                let ts = libc::timespec {
                    tv_sec: t.as_secs() as libc::time_t,
                    tv_nsec: t.subsec_nanos() as libc::c_long,
                };
                libc::sigtimedwait(&set, std::ptr::null_mut(), &ts)
            }
        };
        if result > 0 {
            return Some(result);
        }
        match io::Error::last_os_error().raw_os_error() {
            // EINTR: another signal (none is caught now); look again.
            Some(libc::EINTR) => Some(libc::SIGCHLD),
            _ => None,
        }
    }
}
