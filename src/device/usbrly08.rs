//! The usbrly08 driver: a Devantech USB-RLY08 relay board on its serial
//! port (the protocol is in [`super`]).
//!
//! The port is opened without becoming mama's controlling terminal and
//! without waiting for a modem line, and refused, before a byte is
//! written, if it is not a terminal. It is put in raw mode at the board's
//! settings. One process opens a port once, whoever asks, and speaks to
//! it one command and answer at a time. Other processes are not kept out
//! (each command is a single byte and the board answers each in turn).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::{Limits, Reading, Switch, confirm, failed, slot_failed};
use crate::error::Result;
use crate::model::device::Device;

/// The board's relays: 1 to 8.
const RELAYS: u32 = 8;
/// Answers one byte: the relays' states, bit 0 relay 1.
const GET_STATES: u8 = 0x5B;
/// Relay N on: `ON + N - 1`.
const ON: u8 = 0x65;
/// Relay N off: `OFF + N - 1`.
const OFF: u8 = 0x6F;

pub(super) struct Board {
    device: Device,
    port: String,
    file: Arc<Mutex<File>>,
    limits: Limits,
}

/// The ports this process has open, by the path they resolve to.
type Ports = Mutex<HashMap<PathBuf, Weak<Mutex<File>>>>;

fn ports() -> &'static Ports {
    static PORTS: OnceLock<Ports> = OnceLock::new();
    PORTS.get_or_init(Ports::default)
}

impl Board {
    pub(super) fn open(device: &Device, limits: Limits) -> Result<Board> {
        let port = device.option("port").unwrap_or_default().to_string();
        let path = Path::new(&port);
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut open = ports().lock().unwrap_or_else(|e| e.into_inner());
        let file = match open.get(&key).and_then(Weak::upgrade) {
            Some(file) => file,
            None => {
                let file = Arc::new(Mutex::new(
                    open_port(path).map_err(|what| failed(device, what))?,
                ));
                open.retain(|_, f| f.strong_count() > 0);
                open.insert(key, Arc::downgrade(&file));
                file
            }
        };
        Ok(Board {
            device: device.clone(),
            port,
            file,
            limits,
        })
    }

    /// Sends `command`; returns the board's answer of `answer` bytes.
    fn transact(&self, command: u8, answer: usize) -> std::result::Result<Vec<u8>, String> {
        let port = &self.port;
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let fd = file.as_raw_fd();
        if answer > 0 {
            // A late answer to an earlier command must not be taken for
            // this one's.
            // SAFETY: plain system call on our open descriptor.
            unsafe {
                libc::tcflush(fd, libc::TCIFLUSH);
            }
        }
        let deadline = Instant::now() + self.limits.serial;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{port} took nothing within {} (is it a USB-RLY08?)",
                    crate::text::seconds(self.limits.serial)
                ));
            }
            if writable(fd, left).map_err(|e| format!("{port}: {e}"))? {
                break;
            }
        }
        file.write_all(&[command])
            .map_err(|e| format!("cannot write to {port}: {e}"))?;
        let mut got = Vec::with_capacity(answer);
        while got.len() < answer {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{port} did not answer within {} (is it a USB-RLY08?)",
                    crate::text::seconds(self.limits.serial)
                ));
            }
            // Nothing yet (or a signal): the deadline above decides.
            if !readable(fd, left).map_err(|e| format!("{port}: {e}"))? {
                continue;
            }
            let mut buffer = [0u8; 8];
            let want = (answer - got.len()).min(buffer.len());
            // SAFETY: reads at most `want` bytes into our buffer.
            let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), want) };
            match n {
                n if n > 0 => got.extend_from_slice(&buffer[..n as usize]),
                0 => return Err(format!("{port} hung up (was the board unplugged?)")),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ) {
                        return Err(format!("cannot read from {port}: {e}"));
                    }
                }
            }
        }
        Ok(got)
    }

    /// Whether relay `slot` is on.
    fn relay(&self, slot: u32) -> std::result::Result<bool, String> {
        let states = self.transact(GET_STATES, 1)?;
        Ok(states[0] & (1 << (slot - 1)) != 0)
    }

    /// Checks that `slot` is a relay of the board.
    fn check_slot(&self, slot: u32) -> Result<()> {
        self.device.check_slot(slot)?;
        if slot > RELAYS {
            return Err(slot_failed(
                &self.device,
                slot,
                format!("a USB-RLY08 has relays 1 to {RELAYS}; there is no slot {slot}"),
            ));
        }
        Ok(())
    }
}

impl Switch for Board {
    fn set(&mut self, slot: u32, on: bool) -> Result<()> {
        self.check_slot(slot)?;
        let command = if on { ON } else { OFF } + (slot - 1) as u8;
        self.transact(command, 0)
            .map_err(|e| slot_failed(&self.device, slot, e))?;
        confirm(&self.device, slot, self.limits.confirm, on, || {
            self.relay(slot)
                .map_err(|e| slot_failed(&self.device, slot, e))
        })
    }

    fn read(&mut self, slot: u32) -> Result<Reading> {
        self.check_slot(slot)?;
        let on = self
            .relay(slot)
            .map_err(|e| slot_failed(&self.device, slot, e))?;
        Ok(Reading {
            on,
            watts: None,
            volts: None,
            amps: None,
        })
    }
}

/// Opens the serial port at `path` and sets it up for the board; refuses
/// anything that is not a terminal before writing to it.
fn open_port(path: &Path) -> std::result::Result<File, String> {
    let shown = path.display();
    // O_NONBLOCK: opening does not wait for a modem's carrier. O_CLOEXEC
    // is the standard library's own.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open {shown}: {e}"))?;
    let fd = file.as_raw_fd();
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    let mut settings: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: plain system call on our open descriptor.
    if unsafe { libc::tcgetattr(fd, &mut settings) } != 0 {
        return Err(format!("{shown} is not a serial port"));
    }
    // SAFETY: plain system calls on our open descriptor and our termios.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) != 0 {
            return Err(format!(
                "cannot set up {shown}: {}",
                std::io::Error::last_os_error()
            ));
        }
        libc::cfmakeraw(&mut settings);
        settings.c_cflag &= !(libc::CSIZE | libc::PARENB | libc::CRTSCTS);
        settings.c_cflag |= libc::CS8 | libc::CSTOPB | libc::CLOCAL | libc::CREAD;
        // Reads never wait: poll(2) does.
        settings.c_cc[libc::VMIN] = 0;
        settings.c_cc[libc::VTIME] = 0;
        if libc::cfsetispeed(&mut settings, libc::B19200) != 0
            || libc::cfsetospeed(&mut settings, libc::B19200) != 0
            || libc::tcsetattr(fd, libc::TCSANOW, &settings) != 0
        {
            return Err(format!(
                "cannot set up {shown}: {}",
                std::io::Error::last_os_error()
            ));
        }
        libc::tcflush(fd, libc::TCIOFLUSH);
    }
    Ok(file)
}

/// Whether `fd` has something to read within `within` (a hang-up counts:
/// the read then says so).
fn readable(fd: RawFd, within: Duration) -> std::io::Result<bool> {
    ready(fd, libc::POLLIN, within)
}

/// Whether a byte can be written to `fd` without waiting, within `within`
/// (a port whose other side reads nothing must not hold mama for ever).
fn writable(fd: RawFd, within: Duration) -> std::io::Result<bool> {
    ready(fd, libc::POLLOUT, within)
}

/// Whether `fd` is ready for `events` within `within` (a signal: not yet).
fn ready(fd: RawFd, events: libc::c_short, within: Duration) -> std::io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = within.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: one pollfd we own.
    match unsafe { libc::poll(&mut pollfd, 1, ms) } {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}
