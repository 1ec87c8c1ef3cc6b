//! The command driver: the lab's own shell commands switch and read a slot
//! (see [`super`] for what they get and what `status` prints).

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{Context, Limits, Reading, Switch, confirm, slot_failed, state};
use crate::error::Result;
use crate::model::device::Device;
use crate::text::printable;

/// The most of a `status` command's output that is kept.
const MAX_OUTPUT: usize = 64 * 1024;

/// How long a command's group has to end after SIGTERM before SIGKILL, and
/// then to be reaped.
const GRACE: Duration = Duration::from_secs(2);

pub(super) struct Commands {
    device: Device,
    context: Context,
    limits: Limits,
}

impl Commands {
    pub(super) fn open(device: &Device, context: &Context, limits: Limits) -> Result<Commands> {
        Ok(Commands {
            device: device.clone(),
            context: context.clone(),
            limits,
        })
    }

    /// Runs the device's command `which` (`on`, `off` or `status`) for
    /// `slot`; returns what it printed when `capture`, else nothing (what
    /// it prints goes to mama's stderr).
    fn run(&self, which: &str, slot: u32, capture: bool) -> Result<String> {
        let Some(template) = self.device.option(which) else {
            return Err(slot_failed(
                &self.device,
                slot,
                format!("it has no {which} command"),
            ));
        };
        let line = template.replace("{slot}", &slot.to_string());
        let what = format!("its {which} command `{}`", printable(&line));
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(&line)
            .env("MAMA_SLOT", slot.to_string())
            .env("MAMA_DEVICE", &self.device.name)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        let context = [
            ("MAMA_MACHINE", &self.context.machine),
            ("MAMA_MAC", &self.context.mac),
            ("MAMA_IP", &self.context.ip),
        ];
        for (name, value) in context {
            // One of mama's own jobs has its machine's in its environment:
            // never passed on as this slot's.
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        if capture {
            command.stdout(Stdio::piped());
        } else {
            // What it prints is for the user, not for mama's stdout (which
            // may be JSON); with no stderr to copy, nowhere.
            let stderr = std::io::stderr().as_fd().try_clone_to_owned();
            command.stdout(stderr.map_or_else(|_| Stdio::null(), Stdio::from));
        }
        let mut child = command
            .spawn()
            .map_err(|e| slot_failed(&self.device, slot, format!("cannot run {what}: {e}")))?;
        let group = child.id() as libc::pid_t;
        let stdout = child.stdout.take();
        let (done, ended) = mpsc::channel();
        // One thread reads the output to its end, then reaps the command
        // (so that its group exists until then, and may be killed).
        std::thread::spawn(move || {
            let mut output = Vec::new();
            if let Some(mut stdout) = stdout {
                let _ = (&mut stdout)
                    .take(MAX_OUTPUT as u64)
                    .read_to_end(&mut output);
                // The rest is read and dropped: the command must not block
                // on a full pipe.
                let _ = std::io::copy(&mut stdout, &mut std::io::sink());
            }
            let _ = done.send((child.wait(), output));
        });
        let (status, output) = match ended.recv_timeout(self.limits.command) {
            Ok((status, output)) => (status, output),
            Err(_) => {
                kill_group(group, libc::SIGTERM);
                if ended.recv_timeout(GRACE).is_err() {
                    kill_group(group, libc::SIGKILL);
                    let _ = ended.recv_timeout(GRACE);
                }
                return Err(slot_failed(
                    &self.device,
                    slot,
                    format!(
                        "{what} did not finish within {}; its process group was killed",
                        crate::text::seconds(self.limits.command)
                    ),
                ));
            }
        };
        let status = status
            .map_err(|e| slot_failed(&self.device, slot, format!("cannot wait for {what}: {e}")))?;
        if !status.success() {
            return Err(slot_failed(
                &self.device,
                slot,
                format!("{what} {}", ended_how(status)),
            ));
        }
        Ok(String::from_utf8_lossy(&output).into_owned())
    }

    fn status(&self, slot: u32) -> Result<Reading> {
        let output = self.run("status", slot, true)?;
        parse_status(&output).map_err(|e| {
            slot_failed(
                &self.device,
                slot,
                format!("its status command printed {e}"),
            )
        })
    }
}

impl Switch for Commands {
    fn set(&mut self, slot: u32, on: bool) -> Result<()> {
        self.device.check_slot(slot)?;
        self.run(state(on), slot, false)?;
        if !self.device.reads_back() {
            return Ok(());
        }
        confirm(&self.device, slot, self.limits.confirm, on, || {
            Ok(self.status(slot)?.on)
        })
    }

    fn read(&mut self, slot: u32) -> Result<Reading> {
        self.device.check_slot(slot)?;
        if !self.device.reads_back() {
            return Err(slot_failed(
                &self.device,
                slot,
                "its state cannot be read: the device has no status command",
            ));
        }
        self.status(slot)
    }
}

/// Sends `signal` to the process group `group`.
fn kill_group(group: libc::pid_t, signal: libc::c_int) {
    // SAFETY: plain system call. The group's leader is not reaped until
    // the reading thread has sent its status, so its ID is not reused.
    unsafe {
        libc::kill(-group, signal);
    }
}

/// How a command that failed ended: `exited with status 3`, `was killed by
/// signal 9`.
fn ended_how(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended as {status}"),
    }
}

/// What a `status` command printed: its first word `on` or `off` (any
/// case; also `1` or `0`), then, optionally, the watts (a number, `W` after
/// it allowed). What follows is not read. The error says what it printed.
fn parse_status(output: &str) -> std::result::Result<Reading, String> {
    let shown = || {
        let first = output.trim().lines().next().unwrap_or_default();
        let first: String = first.chars().take(80).collect();
        format!(
            "'{}', not `on` or `off` and optionally the watts",
            printable(&first)
        )
    };
    let mut words = output.split_whitespace();
    let on = match words.next().map(str::to_ascii_lowercase).as_deref() {
        Some("on" | "1") => true,
        Some("off" | "0") => false,
        _ => return Err(shown()),
    };
    let watts = match words.next() {
        None => None,
        Some(word) => {
            let number = word.strip_suffix(['W', 'w']).unwrap_or(word);
            match number.parse::<f64>() {
                Ok(w) if w.is_finite() => Some(w),
                _ => return Err(shown()),
            }
        }
    };
    Ok(Reading {
        on,
        watts,
        volts: None,
        amps: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_output_is_a_state_and_optional_watts() {
        let read = |text: &str| parse_status(text).map(|r| (r.on, r.watts));
        assert_eq!(read("on\n"), Ok((true, None)));
        assert_eq!(read("  OFF  "), Ok((false, None)));
        assert_eq!(read("1 12.5"), Ok((true, Some(12.5))));
        assert_eq!(read("0\n0W\n"), Ok((false, Some(0.0))));
        assert_eq!(read("On 230w and more"), Ok((true, Some(230.0))));
        assert!(read("").is_err());
        assert!(read("running").is_err());
        assert!(read("on many").is_err());
        assert!(read("on NaN").is_err());
        let err = read("\x1b[31mon").unwrap_err();
        assert!(err.contains("\\x1b"), "{err}");
    }
}
