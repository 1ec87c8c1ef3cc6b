//! Speaking to the lab's power devices: switching an outlet or a relay (a
//! *slot*) on and off, reading it back, and pressing a relay as a finger
//! presses a power button. The devices themselves are
//! [`crate::model::device`]'s; each driver is a module here:
//!
//! - `command`: the lab's own shell commands. `on` and `off` switch slot
//!   `{slot}`; `status`, where given, prints `on` or `off` (or `1`/`0`, any
//!   case) and optionally the watts as its second word. Each runs as
//!   `/bin/sh -c CMD` in a process group of its own, with stdin from
//!   /dev/null, `MAMA_SLOT`, `MAMA_DEVICE` and, where a machine is named,
//!   `MAMA_MACHINE`, `MAMA_MAC` and `MAMA_IP` in its environment; what `on`
//!   and `off` print goes to mama's stderr. A command that runs longer than
//!   its limit (30 s) has its group killed.
//! - `mpower`: a Ubiquiti mFi mPower outlet bar, over plain HTTP. The
//!   client picks its session cookie, `AIROS_SESSIONID=` 32 hex digits, and
//!   logs it in with `POST /login.cgi` (`username=U&password=P`, form
//!   encoded); `GET /sensors` answers
//!   `{"sensors":[{"port":1,"output":1,"power":W,"voltage":V,"current":A,…},…],"status":"success"}`
//!   and `PUT /sensors/N` with `output=1` (or `0`) switches outlet N,
//!   answering `{"status":"success"}`. A session the device does not know
//!   (never logged in, or forgotten: the device drops idle sessions) is
//!   answered with a redirect to its login page or an empty body; the
//!   driver then logs in again and asks once more.
//! - `usbrly08`: a Devantech USB-RLY08 relay board, a USB serial port
//!   (19200 baud, 8 data bits, no parity, 2 stop bits). One byte a command:
//!   `0x5B` answers one byte of relay states (bit 0 is relay 1),
//!   `0x65`–`0x6C` switch relays 1–8 on, `0x6F`–`0x76` off; `0x5A` answers
//!   two bytes, the module id and its firmware version.
//!
//! Every switch is confirmed by reading the slot back. Errors name the
//! device, the slot and what went wrong, as [`Error::Invalid`]: no caller
//! branches on how a device failed.

mod command;
mod mpower;
mod usbrly08;

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::device::{Device, Driver};

/// What a device says of one slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub on: bool,
    pub watts: Option<f64>,
    pub volts: Option<f64>,
    pub amps: Option<f64>,
}

/// What the command driver's commands get in their environment besides
/// `MAMA_SLOT` and `MAMA_DEVICE` (the machine the slot powers, where one
/// does).
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub machine: Option<String>,
    pub mac: Option<String>,
    pub ip: Option<String>,
}

/// A device, opened.
pub trait Switch: Send {
    /// Switches the slot and returns once the device confirms the new
    /// state (reads it back; the command driver without a `status`
    /// command: its command exiting 0). Error naming device, slot and what
    /// went wrong otherwise.
    fn set(&mut self, slot: u32, on: bool) -> Result<()>;
    /// The slot's state (and sensors where the device measures them).
    fn read(&mut self, slot: u32) -> Result<Reading>;
}

/// How long a device may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Each command of the command driver.
    pub command: Duration,
    /// Connecting to an mPower, and then its answer.
    pub network: Duration,
    /// The answer of a relay board.
    pub serial: Duration,
    /// A switched slot to read back as switched.
    pub confirm: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            command: Duration::from_secs(30),
            network: Duration::from_secs(3),
            serial: Duration::from_secs(1),
            confirm: Duration::from_secs(3),
        }
    }
}

/// Opens the device (checks its options with [`Device::check`]; each slot
/// used is checked with [`Device::check_slot`]).
pub fn open(device: &Device, context: &Context) -> Result<Box<dyn Switch>> {
    open_within(device, context, Limits::default())
}

/// [`open`], with limits other than the usual ones.
pub fn open_within(device: &Device, context: &Context, limits: Limits) -> Result<Box<dyn Switch>> {
    device.check()?;
    Ok(match device.driver {
        Driver::Command => Box::new(command::Commands::open(device, context, limits)?),
        Driver::Mpower => Box::new(mpower::Mpower::open(device, limits)?),
        Driver::UsbRly08 => Box::new(usbrly08::Board::open(device, limits)?),
    })
}

/// The signals that would end mama while a relay is pressed; [`press`]
/// holds them until the relay is released.
const ENDING: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Presses a relay: on, `how_long` (a device's `press` or `hold`), off. Off
/// is attempted even if on failed, and even if the wait is cut short: a
/// SIGINT, SIGTERM, SIGHUP or SIGQUIT meant for this thread (or for the
/// process, when its other threads block them) ends the wait, the relay is
/// released, and then the signal is delivered as it would have been.
pub fn press(switch: &mut dyn Switch, slot: u32, how_long: Duration) -> Result<()> {
    let held = HeldSignals::hold();
    let on = switch.set(slot, true);
    let cut_short = if on.is_ok() {
        held.wait(how_long)
    } else {
        None
    };
    let off = switch.set(slot, false);
    held.release(cut_short);
    match (on, off) {
        (Err(on), Ok(())) => Err(on),
        (Err(on), Err(off)) => Err(Error::Invalid(format!("{on}; releasing it: {off}"))),
        (Ok(()), Err(off)) => Err(off),
        (Ok(()), Ok(())) => match cut_short {
            Some(signal) => Err(Error::Invalid(format!(
                "slot {slot} was released early: signal {signal} came while it was pressed"
            ))),
            None => Ok(()),
        },
    }
}

/// The [`ENDING`] signals this thread did not block already, blocked
/// until [`HeldSignals::release`] (or drop).
struct HeldSignals {
    held: libc::sigset_t,
    before: libc::sigset_t,
    restored: bool,
}

impl HeldSignals {
    fn hold() -> HeldSignals {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset and
        // pthread_sigmask before it is read.
        unsafe {
            let mut before: libc::sigset_t = std::mem::zeroed();
            let mut held: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut before);
            libc::sigemptyset(&mut held);
            libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut before);
            // Those blocked already are someone else's to take.
            for signal in ENDING {
                if libc::sigismember(&before, signal) == 0 {
                    libc::sigaddset(&mut held, signal);
                }
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &held, std::ptr::null_mut());
            HeldSignals {
                held,
                before,
                restored: false,
            }
        }
    }

    /// Waits `how_long`, or until one of the held signals comes: returns
    /// it, taken (it is raised again by [`HeldSignals::release`]).
    fn wait(&self, how_long: Duration) -> Option<libc::c_int> {
        let deadline = Instant::now() + how_long;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = libc::timespec {
                tv_sec: left.as_secs().min(i32::MAX as u64) as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            // SAFETY: plain system call on a set and a timespec we own.
            let signal = unsafe { libc::sigtimedwait(&self.held, std::ptr::null_mut(), &timeout) };
            if signal > 0 {
                return Some(signal);
            }
            if left.is_zero() {
                return None;
            }
            // EAGAIN: the time is up (looked at above, next round); EINTR:
            // another signal's handler ran.
        }
    }

    /// Restores the mask, then raises the signal taken by the wait.
    fn release(mut self, taken: Option<libc::c_int>) {
        self.restore();
        if let Some(signal) = taken {
            // SAFETY: raising a signal in this thread, now unblocked: its
            // disposition acts as if it had come now.
            unsafe {
                libc::raise(signal);
            }
        }
    }

    fn restore(&mut self) {
        if !self.restored {
            self.restored = true;
            // SAFETY: restores the mask saved by `hold`.
            unsafe {
                libc::pthread_sigmask(libc::SIG_SETMASK, &self.before, std::ptr::null_mut());
            }
        }
    }
}

impl Drop for HeldSignals {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Reads `device`'s `slot` (with `read`) until it is `want`; an error
/// naming the slot when it is not within `within`.
fn confirm(
    device: &Device,
    slot: u32,
    within: Duration,
    want: bool,
    mut read: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(20);
    loop {
        if read()? == want {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(unconfirmed(device, slot, want, within));
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// `on` or `off`.
fn state(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// An error of `device`: `device NAME: WHAT`.
fn failed(device: &Device, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("device {}: {what}", device.name))
}

/// An error of one slot: `device NAME, slot N: WHAT`.
fn slot_failed(device: &Device, slot: u32, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("device {}, slot {slot}: {what}", device.name))
}

/// The error of a slot that did not read back as switched.
fn unconfirmed(device: &Device, slot: u32, on: bool, within: Duration) -> Error {
    slot_failed(
        device,
        slot,
        format!(
            "switched {} but it still reads {} after {}",
            state(on),
            state(!on),
            crate::text::seconds(within)
        ),
    )
}
