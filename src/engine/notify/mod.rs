//! Notifications: a notify command, a shell command told of every event a
//! command commits, each event a `log --json` line on its standard input.
//!
//! Two may be set: the lab's (its `notify` setting, for everyone who uses
//! the lab) and the user's own (`MAMA_NOTIFY`); both run. The lab's runs
//! only where the commands written into the lab may run (see [`trust`]).
//!
//! mama itself only hands each transaction's events over, once the
//! transaction committed: to a supervisor, mama started again with
//! [`SUPERVISOR_ARG`] (spawned at the first transaction that has events to
//! tell, in a session of its own), which reads the events from a socket,
//! one batch (one transaction) a line, and runs the commands ([`supervisor`]).
//! Handing over is one write that never blocks for long; mama never waits
//! for a command, so a slow, hanging or failing notify command delays no
//! command and changes no exit status. The supervisor reports a failure on
//! the stderr it got from mama.
//!
//! [`trust`]: crate::engine::trust

pub mod supervisor;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::{Listener, Store};
use crate::model::event::Event;
use crate::text::printable;

/// The argument that starts mama as the notify supervisor (see
/// [`supervisor::main`]); not a command of the command line.
pub const SUPERVISOR_ARG: &str = "--notify-supervisor";

/// How long a notify command may run before it is killed, with its whole
/// process group.
pub const TIME_LIMIT: Duration = Duration::from_secs(10);

/// How long handing a batch over may wait for the supervisor to take it:
/// it reads as it comes, so only a supervisor that was stopped, or not
/// given the processor for this long, is not told.
const HANDOVER_PATIENCE: Duration = Duration::from_secs(1);

/// How failures are said, on stderr.
pub const FAILED: &str = "mama: the notify command failed:";

/// One transaction's events for the notify commands, as mama hands them
/// over: one JSON line.
#[derive(Serialize)]
struct Outgoing<'a> {
    commands: Vec<&'a str>,
    events: &'a [Event],
}

/// A batch as the supervisor reads it.
#[derive(Deserialize)]
pub(crate) struct Batch {
    pub commands: Vec<String>,
    pub events: Vec<Event>,
}

/// The notify commands of one mama process: tells the supervisor of the
/// events of every transaction (a [`Listener`] of the store).
#[derive(Debug)]
pub struct Notifier {
    /// `MAMA_NOTIFY`.
    own: Option<String>,
    /// Whether the lab's notify command may run: asked once.
    lab_trusted: OnceLock<bool>,
    link: Mutex<Link>,
}

/// mama's side of the supervisor.
#[derive(Debug)]
enum Link {
    /// Not started: no transaction had events to tell yet.
    NotYet,
    /// Its socket (close-on-exec, non-blocking).
    Open(OwnedFd),
    /// It could not be started, or stopped taking batches: said once.
    Broken,
}

impl Notifier {
    /// The notifier of a process whose user's own notify command is `own`.
    pub fn new(own: Option<String>) -> Notifier {
        Notifier {
            own,
            lab_trusted: OnceLock::new(),
            link: Mutex::new(Link::NotYet),
        }
    }

    /// Whether the lab's notify command `command` may run; a refusal is
    /// said once.
    fn lab_may_run(&self, store: &Store, command: &str) -> bool {
        *self.lab_trusted.get_or_init(|| {
            let what = format!("the lab's notify command `{}`", printable(command));
            match crate::engine::trust::check(store, &what) {
                Ok(()) => true,
                Err(e) => {
                    say!("mama: {}", printable(&e.to_string()));
                    false
                }
            }
        })
    }

    /// Hands `line` (a batch of `count` events) to the supervisor, starting
    /// it first if need be. A failure is said once; nothing is handed over
    /// after it.
    fn hand_over(&self, line: &[u8], count: usize) {
        let mut link = self
            .link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if matches!(*link, Link::NotYet) {
            *link = match supervisor::spawn() {
                Ok(socket) => Link::Open(socket),
                Err(e) => {
                    say!("{FAILED} cannot start mama's notify supervisor: {e}");
                    Link::Broken
                }
            };
        }
        if let Link::Open(socket) = &*link
            && let Err(e) = send_all(socket, line)
        {
            say!(
                "{FAILED} {count} event{} not passed on to it: {e}",
                if count == 1 { " was" } else { "s were" }
            );
            *link = Link::Broken;
        }
    }
}

impl Listener for Notifier {
    fn committed(&self, store: &Store, lab_notify: Option<&str>, events: &[Event]) {
        let mut commands: Vec<&str> = self.own.as_deref().into_iter().collect();
        if let Some(lab) = lab_notify.filter(|c| !c.trim().is_empty())
            && !commands.contains(&lab)
            && self.lab_may_run(store, lab)
        {
            commands.push(lab);
        }
        if commands.is_empty() {
            return;
        }
        let batch = Outgoing { commands, events };
        match serde_json::to_vec(&batch) {
            Ok(mut line) => {
                line.push(b'\n');
                self.hand_over(&line, events.len());
            }
            Err(e) => say!("{FAILED} cannot encode the events: {e}"),
        }
    }
}

/// Writes all of `bytes` to the non-blocking `socket`, waiting at most
/// [`HANDOVER_PATIENCE`] for room; never raises SIGPIPE.
fn send_all(socket: &OwnedFd, mut bytes: &[u8]) -> io::Result<()> {
    let give_up = Instant::now() + HANDOVER_PATIENCE;
    while !bytes.is_empty() {
        // SAFETY: sends from a live buffer of the given length.
        let sent = unsafe {
            libc::send(
                socket.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if sent >= 0 {
            bytes = &bytes[sent as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "its supervisor took nothing for {}",
                            crate::text::seconds(HANDOVER_PATIENCE)
                        ),
                    ));
                }
                let mut ready = libc::pollfd {
                    fd: socket.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe {
                    libc::poll(&mut ready, 1, left.as_millis().clamp(1, 1000) as i32);
                }
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

/// A connected pair of stream sockets, both close-on-exec: (mama's end,
/// the supervisor's end).
fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills in two new descriptors, each then owned once.
    unsafe {
        if libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}
