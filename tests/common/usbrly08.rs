//! A Devantech USB-RLY08 relay board for the tests, behind a
//! pseudo-terminal: the terminal's path is the board's serial port, and a
//! thread answers what is written to it as the board does (see mama's
//! `device` module): `0x5A` the module id and version, `0x5B` the relay
//! states, `0x5C` and a byte sets them all, `0x64`/`0x6E` all on/off,
//! `0x65`–`0x6C` relay 1–8 on, `0x6F`–`0x76` off.
//!
//! It keeps its eight relays and a timeline of the switch commands it got.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

/// One switch command the board got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switched {
    pub at: Instant,
    /// 1 to 8.
    pub relay: u32,
    pub on: bool,
}

#[derive(Default)]
struct State {
    /// Bit 0: relay 1.
    relays: u8,
    timeline: Vec<Switched>,
    /// Every byte written to the port.
    received: Vec<u8>,
    /// Answers nothing.
    mute: bool,
    /// Relays that do not switch, whatever they are told (bit 0: relay 1).
    stuck: u8,
}

/// The board (its thread runs until it is dropped).
pub struct RelayBoard {
    port: PathBuf,
    /// The terminal's side mama opens, held open so that the board lives
    /// between two uses.
    slave: OwnedFd,
    state: Arc<Mutex<State>>,
    /// Written to stop the thread.
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl RelayBoard {
    /// A board with every relay off.
    pub fn new() -> RelayBoard {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty fills the two descriptors; no name, settings or
        // window size asked for.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both are ours, open, and owned by nothing else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: the buffer is ours, of the length given.
        let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
        assert_eq!(rc, 0, "ptsname_r");
        // SAFETY: ptsname_r wrote a NUL-terminated name.
        let port = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        let port = PathBuf::from(port.to_str().expect("a UTF-8 terminal name"));
        let mut pipe = [-1; 2];
        // SAFETY: fills the two descriptors.
        assert_eq!(
            unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        // SAFETY: both are ours, open, and owned by nothing else.
        let (stopped, stop) =
            unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        let state = Arc::new(Mutex::new(State::default()));
        let thread = {
            let state = state.clone();
            std::thread::spawn(move || run(master, stopped, &state))
        };
        RelayBoard {
            port,
            slave,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Its serial port: a device's `port` option.
    pub fn port(&self) -> &Path {
        &self.port
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The relays' states, bit 0 relay 1.
    pub fn states(&self) -> u8 {
        self.state().relays
    }

    /// Whether relay `n` (1 to 8) is on.
    pub fn relay(&self, n: u32) -> bool {
        self.states() & (1 << (n - 1)) != 0
    }

    /// The switch commands so far, in order.
    pub fn timeline(&self) -> Vec<Switched> {
        self.state().timeline.clone()
    }

    /// Every byte written to the port so far.
    pub fn received(&self) -> Vec<u8> {
        self.state().received.clone()
    }

    /// From now on answers nothing (`true`), or again (`false`).
    pub fn mute(&self, mute: bool) {
        self.state().mute = mute;
    }

    /// Relay `n` no longer switches.
    pub fn stick(&self, n: u32) {
        self.state().stuck |= 1 << (n - 1);
    }

    /// The port's settings, as whoever opened it last left them.
    pub fn settings(&self) -> libc::termios {
        // SAFETY: termios is plain data, filled by tcgetattr.
        let mut settings: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: plain system call on our open descriptor.
        let rc = unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut settings) };
        assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
        settings
    }
}

impl Drop for RelayBoard {
    fn drop(&mut self) {
        // SAFETY: one byte from our buffer to our pipe.
        unsafe {
            libc::write(self.stop.as_raw_fd(), [0u8].as_ptr().cast(), 1);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers the commands written to the port until `stopped` is readable.
fn run(master: OwnedFd, stopped: OwnedFd, state: &Mutex<State>) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    // After 0x5C: the next byte is every relay's state.
    let mut set_all = false;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stopped.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds we own.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 || fds[1].revents != 0 {
            return;
        }
        let mut buffer = [0u8; 64];
        // SAFETY: reads into our buffer, at most its length.
        let n = unsafe { libc::read(master.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if n <= 0 {
            continue;
        }
        let mut answer = Vec::new();
        {
            let mut state = lock();
            let now = Instant::now();
            for &byte in &buffer[..n as usize] {
                state.received.push(byte);
                if std::mem::take(&mut set_all) {
                    for relay in 1..=8 {
                        switch(&mut state, now, relay, byte & (1 << (relay - 1)) != 0);
                    }
                    continue;
                }
                match byte {
                    0x5A => answer.extend_from_slice(&[8, 5]),
                    0x5B => answer.push(state.relays),
                    0x5C => set_all = true,
                    0x64 | 0x6E => {
                        for relay in 1..=8 {
                            switch(&mut state, now, relay, byte == 0x64);
                        }
                    }
                    0x65..=0x6C => switch(&mut state, now, u32::from(byte - 0x64), true),
                    0x6F..=0x76 => switch(&mut state, now, u32::from(byte - 0x6E), false),
                    _ => {}
                }
            }
            if state.mute {
                answer.clear();
            }
        }
        if !answer.is_empty() {
            // SAFETY: writes our buffer, of its length.
            unsafe {
                libc::write(master.as_raw_fd(), answer.as_ptr().cast(), answer.len());
            }
        }
    }
}

/// Relay `relay` told to be `on`.
fn switch(state: &mut State, at: Instant, relay: u32, on: bool) {
    state.timeline.push(Switched { at, relay, on });
    let bit = 1u8 << (relay - 1);
    if state.stuck & bit == 0 {
        if on {
            state.relays |= bit;
        } else {
            state.relays &= !bit;
        }
    }
}
