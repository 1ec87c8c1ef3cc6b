//! The notify supervisor: mama started again with
//! [`super::SUPERVISOR_ARG`], in a session of its own, its
//! standard input a socket from the mama that started it, its standard
//! output `/dev/null`, its standard error that mama's.
//!
//! It reads batches, one transaction's events a line (see
//! `Batch`), and runs each notify command a batch names once for each
//! of its events as `/bin/sh -c COMMAND`: in a session of its own, the
//! event's `log --json` line on its standard input, its standard output
//! `/dev/null` and its standard error read here (its last line goes into
//! the report of a failure). Each command gets the events in the order
//! they came, one run after the other; different commands run side by
//! side. A run that outlives [`super::TIME_LIMIT`] is killed
//! with its whole process group. A run that fails (a status other than 0,
//! a signal, the time limit, a command that could not start) is said on
//! stderr, the first failure of each command only. The supervisor ends
//! when mama's end of the socket closed (mama ended) and the last run is
//! over. Everything waits in one `poll`: the socket, each run's input and
//! error output, and each run's end (a pidfd).

use std::collections::VecDeque;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdin, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{Batch, FAILED, SUPERVISOR_ARG, TIME_LIMIT};
use crate::model::event::encode;
use crate::text::printable;

/// How much of a run's error output is kept: its end, for the last line.
const KEEP_SAID: usize = 4096;

/// How often a run's end is looked for where no pidfd tells it.
const LOOK_EVERY: Duration = Duration::from_millis(20);

unsafe extern "C" {
    /// The process's environment, which the supervisor gets whole.
    static environ: *const *mut libc::c_char;
}

/// Starts the supervisor (see the module's doc): mama's own program again
/// (`/proc/self/exe`), by `posix_spawn`, which returns once it runs. The
/// returned end of the socket is close-on-exec, as every descriptor of
/// mama's is: the supervisor holds none of them (its standard error
/// aside), and closes any other it finds.
pub(super) fn spawn() -> io::Result<OwnedFd> {
    let (ours, theirs) = super::socket_pair()?;
    let program = c"/proc/self/exe";
    let arg = CString::new(SUPERVISOR_ARG).map_err(io::Error::other)?;
    let argv = [
        c"mama".as_ptr().cast_mut(),
        arg.as_ptr().cast_mut(),
        std::ptr::null_mut(),
    ];
    let mut pid: libc::pid_t = 0;
    // SAFETY: the file actions and attributes are initialised before use
    // and destroyed once; every pointer handed over lives across the call
    // (argv and the paths are local, `environ` is the process's own).
    let started = unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut actions);
        libc::posix_spawnattr_init(&mut attr);
        let mut status =
            libc::posix_spawn_file_actions_adddup2(&mut actions, theirs.as_raw_fd(), 0);
        if status == 0 {
            status = libc::posix_spawn_file_actions_addopen(
                &mut actions,
                1,
                c"/dev/null".as_ptr(),
                libc::O_WRONLY,
                0,
            );
        }
        // No signal blocked (a run blocks INT, TERM and HUP), none ignored
        // (a run ignores PIPE).
        let mut none: libc::sigset_t = std::mem::zeroed();
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigfillset(&mut all);
        libc::posix_spawnattr_setsigmask(&mut attr, &none);
        libc::posix_spawnattr_setsigdefault(&mut attr, &all);
        let flags = (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short;
        // A session of its own at once, where the C library can (else the
        // supervisor makes one as it starts).
        if libc::posix_spawnattr_setflags(&mut attr, flags | libc::POSIX_SPAWN_SETSID) != 0 {
            libc::posix_spawnattr_setflags(&mut attr, flags);
        }
        if status == 0 {
            status = libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr(),
                environ,
            );
        }
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
        status
    };
    drop(theirs);
    if started != 0 {
        return Err(io::Error::from_raw_os_error(started));
    }
    Ok(ours)
}

/// The supervisor's life; its exit status. Started by hand (its input is
/// no socket), it says what it is and ends.
pub fn main() -> i32 {
    // SAFETY: fstat fills in a zeroed stat of a descriptor that may be
    // closed (then it fails).
    let from_mama = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(0, &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    if !from_mama {
        say!("mama: {SUPERVISOR_ARG} is how mama runs the notify commands, not a command");
        return crate::exit::ExitCode::Usage.code();
    }
    // SAFETY: plain system calls on this process. setsid fails harmlessly
    // where the spawn made the session already; close_range closes what
    // no code of this process opened yet. As batch work (the notify
    // commands inherit it), a supervisor woken by a batch never takes the
    // processor from the mama that sent it, which goes on at once.
    unsafe {
        libc::setsid();
        libc::close_range(3, libc::c_uint::MAX, 0);
        let batch = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &batch);
    }
    let mut supervisor = Supervisor::default();
    supervisor.run();
    0
}

/// One notify command: its batches waiting, its run, whether a failure of
/// it was said.
struct Channel {
    command: String,
    waiting: VecDeque<Rc<[u8]>>,
    running: Option<Running>,
    /// A failure of it was said.
    told: bool,
}

/// A run of a notify command.
struct Running {
    child: Child,
    /// Tells when the child ended; `None` where the kernel has no pidfd
    /// (its end is then looked for every [`LOOK_EVERY`]).
    ended: Option<OwnedFd>,
    input: Rc<[u8]>,
    written: usize,
    stdin: Option<ChildStdin>,
    stderr: Option<ChildStderr>,
    /// The end of its error output.
    said: Vec<u8>,
    deadline: Instant,
}

#[derive(Default)]
struct Supervisor {
    channels: Vec<Channel>,
    /// What came from mama and is not a whole line yet.
    inbox: Vec<u8>,
    /// mama's end of the socket closed.
    closed: bool,
    /// A batch that could not be read was said.
    said_unreadable: bool,
}

/// What a descriptor polled is.
#[derive(Clone, Copy)]
enum Slot {
    Inbox,
    Ended,
    Input(usize),
    Said(usize),
}

impl Supervisor {
    fn run(&mut self) {
        loop {
            for channel in &mut self.channels {
                channel.start_next();
            }
            let busy = self.channels.iter().any(|c| c.running.is_some());
            if self.closed && !busy {
                return;
            }
            let mut fds = Vec::new();
            let mut slots = Vec::new();
            let mut wait: Option<Duration> = None;
            let mut poll_on = |fd: RawFd, events: libc::c_short, slot: Slot| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                slots.push(slot);
            };
            if !self.closed {
                poll_on(0, libc::POLLIN, Slot::Inbox);
            }
            let now = Instant::now();
            for (i, channel) in self.channels.iter().enumerate() {
                let Some(run) = &channel.running else {
                    continue;
                };
                match &run.ended {
                    Some(fd) => poll_on(fd.as_raw_fd(), libc::POLLIN, Slot::Ended),
                    None => wait = Some(wait.map_or(LOOK_EVERY, |w| w.min(LOOK_EVERY))),
                }
                if let Some(stdin) = &run.stdin {
                    poll_on(stdin.as_raw_fd(), libc::POLLOUT, Slot::Input(i));
                }
                if let Some(stderr) = &run.stderr {
                    poll_on(stderr.as_raw_fd(), libc::POLLIN, Slot::Said(i));
                }
                let left = run.deadline.saturating_duration_since(now);
                wait = Some(wait.map_or(left, |w| w.min(left)));
            }
            // Rounded up: a wake before the deadline only loops again.
            let timeout = wait.map_or(-1, |w| {
                w.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
            });
            // SAFETY: `fds` is a valid array of its length.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if ready > 0 {
                for (fd, slot) in fds.iter().zip(&slots) {
                    if fd.revents == 0 {
                        continue;
                    }
                    match *slot {
                        Slot::Inbox => self.read_inbox(),
                        Slot::Input(i) => {
                            if let Some(run) = &mut self.channels[i].running {
                                run.feed();
                            }
                        }
                        Slot::Said(i) => {
                            if let Some(run) = &mut self.channels[i].running {
                                run.listen();
                            }
                        }
                        // Looked at below, with every run.
                        Slot::Ended => {}
                    }
                }
            }
            for channel in &mut self.channels {
                channel.look();
            }
        }
    }

    /// Reads what mama sent; each whole line is a batch for its commands.
    fn read_inbox(&mut self) {
        let mut buffer = [0u8; 65536];
        // SAFETY: fd 0 is the socket from mama; reads into a local buffer.
        let got = unsafe { libc::read(0, buffer.as_mut_ptr().cast(), buffer.len()) };
        match got {
            0 => self.closed = true,
            n if n > 0 => self.inbox.extend_from_slice(&buffer[..n as usize]),
            _ => {
                let e = io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) {
                    self.closed = true;
                }
            }
        }
        while let Some(end) = self.inbox.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.inbox.drain(..=end).collect();
            self.take(&line);
        }
    }

    /// Queues the batch `line` for each of its commands.
    fn take(&mut self, line: &[u8]) {
        // Each event is a run of its own: its line of `log --json` alone.
        let batch = serde_json::from_slice::<Batch>(line)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                let inputs = b
                    .events
                    .iter()
                    .map(|event| {
                        let line =
                            encode(std::slice::from_ref(event)).map_err(|e| e.to_string())?;
                        Ok(Rc::<[u8]>::from(line.into_bytes()))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok((inputs, b.commands))
            });
        let (inputs, commands) = match batch {
            Ok(batch) => batch,
            Err(e) => {
                if !std::mem::replace(&mut self.said_unreadable, true) {
                    say!("{FAILED} a batch of events from mama could not be read: {e}");
                }
                return;
            }
        };
        for command in commands {
            let at = match self.channels.iter().position(|c| c.command == command) {
                Some(at) => at,
                None => {
                    self.channels.push(Channel {
                        command,
                        waiting: VecDeque::new(),
                        running: None,
                        told: false,
                    });
                    self.channels.len() - 1
                }
            };
            self.channels[at]
                .waiting
                .extend(inputs.iter().map(Rc::clone));
        }
    }
}

impl Channel {
    /// Starts the run of the next event, when none runs (an event whose
    /// run cannot start is passed over, said).
    fn start_next(&mut self) {
        while self.running.is_none() {
            let Some(input) = self.waiting.pop_front() else {
                return;
            };
            match Running::start(&self.command, input) {
                Ok(run) => self.running = Some(run),
                Err(e) => self.failed(&format!("cannot run it: {e}")),
            }
        }
    }

    /// Ends the run that ended, or outlived the time limit.
    fn look(&mut self) {
        let Some(run) = &mut self.running else {
            return;
        };
        let outcome = match run.child.try_wait() {
            Ok(Some(status)) => Some(Ok(status)),
            Ok(None) if Instant::now() >= run.deadline => {
                run.kill();
                Some(Err(format!(
                    "it did not end within {} and was killed",
                    crate::text::seconds(TIME_LIMIT)
                )))
            }
            Ok(None) => None,
            Err(e) => {
                run.kill();
                Some(Err(format!("cannot wait for it: {e}")))
            }
        };
        let Some(outcome) = outcome else {
            return;
        };
        let Some(mut run) = self.running.take() else {
            return;
        };
        // What it said and is still in the pipe (its processes left in the
        // background may hold the pipe open: not waited for).
        run.listen();
        let last = run.last_line();
        let why = match outcome {
            Ok(status) if status.success() => return,
            Ok(status) => ended(status),
            Err(why) => why,
        };
        match last {
            Some(line) => self.failed(&format!("{why}: {line}")),
            None => self.failed(&why),
        }
    }

    /// Says that a run of this command failed, the first time only.
    fn failed(&mut self, why: &str) {
        if std::mem::replace(&mut self.told, true) {
            return;
        }
        say!(
            "{FAILED} `{}`: {}",
            printable(&self.command),
            printable(why)
        );
    }
}

/// How a run that did not succeed ended.
fn ended(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("it exited with status {code}"),
        (None, Some(signal)) => format!("it was killed by signal {signal}"),
        _ => format!("it ended: {status}"),
    }
}

impl Running {
    /// Starts `/bin/sh -c COMMAND` in a session of its own, `input` to be
    /// written to its standard input.
    fn start(command: &str, input: Rc<[u8]>) -> io::Result<Running> {
        let mut shell = Command::new("/bin/sh");
        shell
            .arg("-c")
            .arg(command)
            .arg0("sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own notifications are not told again to it.
            .env_remove("MAMA_NOTIFY");
        // SAFETY: setsid is async-signal-safe; the child is no group
        // leader (it was just forked), so it succeeds.
        unsafe {
            shell.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = shell.spawn()?;
        let stdin = child.stdin.take();
        let stderr = child.stderr.take();
        for fd in stdin
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain(stderr.iter().map(AsRawFd::as_raw_fd))
        {
            non_blocking(fd);
        }
        // SAFETY: plain system call on our own unreaped child; a failure
        // (-1: no pidfds) leaves looking every LOOK_EVERY.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        let ended = (pidfd >= 0).then(|| {
            // SAFETY: a new descriptor, owned once.
            unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) }
        });
        let mut run = Running {
            child,
            ended,
            input,
            written: 0,
            stdin,
            stderr,
            said: Vec::new(),
            deadline: Instant::now() + TIME_LIMIT,
        };
        run.feed();
        Ok(run)
    }

    /// Writes what its standard input can take; closes it once all is
    /// written, or when the run reads no more.
    fn feed(&mut self) {
        let Some(stdin) = &mut self.stdin else {
            return;
        };
        while self.written < self.input.len() {
            match stdin.write(&self.input[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // It closed its input (a broken pipe): the rest is not
                // for it.
                Err(_) => break,
            }
        }
        self.stdin = None;
    }

    /// Reads what it said on stderr, keeping the end.
    fn listen(&mut self) {
        let Some(stderr) = &mut self.stderr else {
            return;
        };
        let mut buffer = [0u8; 4096];
        loop {
            match stderr.read(&mut buffer) {
                Ok(0) => {
                    self.stderr = None;
                    return;
                }
                Ok(n) => {
                    self.said.extend_from_slice(&buffer[..n]);
                    if self.said.len() > KEEP_SAID {
                        self.said.drain(..self.said.len() - KEEP_SAID);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.stderr = None;
                    return;
                }
            }
        }
    }

    /// The last line it said that is not blank.
    fn last_line(&self) -> Option<String> {
        String::from_utf8_lossy(&self.said)
            .lines()
            .map(str::trim)
            .rfind(|line| !line.is_empty())
            .map(str::to_owned)
    }

    /// Kills its whole process group (its session, which it leads) and
    /// reaps it.
    fn kill(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: our unreaped child leads the group, so the number names
        // it and its processes still.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Makes `fd` non-blocking.
fn non_blocking(fd: RawFd) {
    // SAFETY: plain fcntl calls on a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}
