//! Runs the job: spawn, process group, forwarded signals, timeout, status.
//!
//! As coreutils `timeout` does: the signals mama handles are blocked before
//! the fork (the child unblocks them before exec), the job runs in its own
//! process group, signals go to that group, and the group is never signalled
//! once the job has been reaped. The job gets `PR_SET_PDEATHSIG`, so it is
//! killed if mama dies, even by SIGKILL.

use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use crate::backend::Lease;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::exit::ExitCode;

/// After `--timeout` sends TERM, KILL follows this much later.
pub const KILL_AFTER: Duration = Duration::from_secs(5);

/// How often the supervisor of a job whose claim is kept by a lease looks
/// at it.
pub const LEASE_LOOK: Duration = Duration::from_millis(250);

/// What to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
    pub timeout: Option<Duration>,
    /// A descriptor the job inherits (the machine's job lock): the kernel
    /// keeps the lock while any process of the job holds it, so the machine
    /// stays busy after a killed mama until the job's last process ends.
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
pub fn run(job: &Job, job_mask: libc::sigset_t) -> Result<Ending> {
    let parent = std::process::id() as libc::pid_t;
    let terminal = Terminal::foreground();
    let take_terminal = terminal.is_some();
    let inherit = job.inherit;
    let mut command = Command::new(&job.program);
    command
        .args(&job.args)
        .envs(job.env.iter().cloned())
        .process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // mama died before prctl took effect: do not run unsupervised.
            if libc::getppid() != parent {
                libc::_exit(ExitCode::RunFailed.code());
            }
            // Keep the job lock open across exec (in the child only).
            if let Some(fd) = inherit
                && libc::fcntl(fd, libc::F_SETFD, 0) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if take_terminal {
                // Become the terminal's foreground group, as a shell makes
                // its jobs, so the job may read the terminal (SIGTTOU is
                // blocked for the call: this group is not foreground yet).
                let mut ttou: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut ttou);
                libc::sigaddset(&mut ttou, libc::SIGTTOU);
                libc::pthread_sigmask(libc::SIG_BLOCK, &ttou, std::ptr::null_mut());
                libc::setpgid(0, 0);
                libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
            }
            if libc::pthread_sigmask(libc::SIG_SETMASK, &job_mask, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Ok(Ending::NotStarted(e)),
    };
    let group = child.id() as libc::pid_t;
    if let Some(terminal) = &terminal {
        // The child does the same; whichever comes first wins the race.
        terminal.give_to(group);
    }
    let ending = supervise(group, job.timeout, job.lease.as_deref(), terminal.as_ref());
    if let Some(terminal) = &terminal {
        terminal.give_to(terminal.own_group);
    }
    ending
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
                        crate::cli::render::seconds(lease.silence())
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
