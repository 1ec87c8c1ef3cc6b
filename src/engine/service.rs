//! Machines taken out of service and put back: by hand (`offline`,
//! `online`), by their health check (`check`), and after too many failed
//! starts in a row (the lab's setting `offline-after-failed-starts`).
//!
//! The mark is the model's ([`crate::model::offline`]); the claim loop
//! keeps every claim but a health check's off a machine out of service
//! ([`crate::engine::claim`]), and a start refuses it
//! ([`crate::engine::power`]).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{Lease, Store};
use crate::error::{Error, Result};
use crate::model::Lab;
use crate::model::event::{Event, Kind};
use crate::model::offline::{self, CHECK_FAILED, Offline};
use crate::model::setting::Setting;
use crate::os;

/// `offline`: takes `machine` out of service for `reason` (checked: see
/// [`offline::check_reason`]), by this user, now. A machine out of
/// service already is left as it is: its mark comes back.
pub fn take_offline(store: &Store, machine: &str, reason: &str) -> Result<Option<Offline>> {
    let reason = offline::check_reason(reason)?;
    let mark = Offline {
        reason,
        by: Some(os::user_name()),
        since: Some(os::now()),
    };
    store.update(|lab| {
        let mut m = lab.get_mut(machine)?;
        if let Some(already) = m.view().offline() {
            return Ok(Some(already));
        }
        m.take_offline(&mark)?;
        lab.record(Event::new(Kind::Offline, machine).detail(mark.reason.clone()));
        Ok(None)
    })
}

/// `online`: puts `machine` back in service; the mark it had comes back
/// (`None`: it was in service already, and nothing changed).
pub fn bring_online(store: &Store, machine: &str) -> Result<Option<Offline>> {
    store.update(|lab| {
        let mut m = lab.get_mut(machine)?;
        let Some(was) = m.view().offline() else {
            return Ok(None);
        };
        m.bring_online()?;
        lab.record(Event::new(Kind::Online, machine).detail(format!("was: {}", was.reason)));
        Ok(Some(was))
    })
}

/// The lab's `offline-after-failed-starts`: 0 (never) where it has none,
/// or one that is not a number.
fn most_failed_starts(lab: &Lab) -> u32 {
    lab.setting(Setting::OfflineAfterFailedStarts)
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// A start of `machine` by `by` failed every try: one more failed start
/// in a row. Where the lab's `offline-after-failed-starts` is N > 0 and
/// the count reaches N, the machine goes out of service ("N failed starts
/// in a row"), with an `offline` event; that mark comes back. A machine
/// out of service already keeps its mark.
pub fn start_failed(lab: &mut Lab, machine: &str, by: &str, now: i64) -> Result<Option<Offline>> {
    let most = most_failed_starts(lab);
    let mut m = lab.get_mut(machine)?;
    let count = m.view().failed_starts().saturating_add(1);
    m.set_failed_starts(count)?;
    if most == 0 || count < most || m.view().offline().is_some() {
        return Ok(None);
    }
    let mark = Offline {
        reason: format!("{most} failed starts in a row"),
        by: Some(by.to_string()),
        since: Some(now),
    };
    m.take_offline(&mark)?;
    lab.record(Event::new(Kind::Offline, machine).detail(mark.reason.clone()));
    Ok(Some(mark))
}

/// A start of `machine` brought it up: the count of failed starts begins
/// anew.
pub fn start_succeeded(lab: &mut Lab, machine: &str) -> Result<()> {
    lab.get_mut(machine)?.set_failed_starts(0)
}

/// How a health command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub passed: bool,
    /// How it exited: `exit 0`, `exit 3`, `killed by signal 9`.
    pub status: String,
    /// Its last line of output that is not blank, as a reason may hold it
    /// (see [`offline::reason_of_line`]).
    pub last_line: Option<String>,
}

/// Why a health command did not end on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A signal came (INT, TERM, HUP): it was stopped.
    Interrupted(i32),
    /// The claim was lost (a database lab's session): it was stopped.
    ClaimLost,
}

/// What a health command is run with.
pub struct HealthRun<'a> {
    /// The shell command (the machine's `healthcmd`).
    pub command: &'a str,
    /// `MAMA_MACHINE`, `MAMA_IP`, `MAMA_MAC`.
    pub env: Vec<(&'static str, String)>,
    /// The lease on the claim, where keeping it takes work.
    pub lease: Option<&'a Lease>,
    /// A signal that came (blocked by the caller).
    pub interrupted: &'a dyn Fn() -> Option<i32>,
}

/// How long a health command gets between TERM and KILL when it is
/// stopped.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long the output is read on once the command has ended (a process
/// it left in the background may hold the pipe).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// The longest line kept while it is read (the rest of a longer one is
/// dropped: a reason is cut far shorter anyway).
const MOST_LINE: usize = 8 << 10;

/// What the reader has seen of the output.
#[derive(Default)]
struct Tail {
    last: Option<String>,
    partial: Vec<u8>,
}

impl Tail {
    fn take(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
            } else if self.partial.len() < MOST_LINE {
                self.partial.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        if !line.trim().is_empty() {
            self.last = Some(line);
        }
    }
}

/// Runs a health command: `sh -c COMMAND` with the machine in its
/// environment, standard input /dev/null, its output (stdout and stderr)
/// passed to mama's stderr as it comes and its last line kept, in a
/// process group of its own (killed on a signal or a lost claim). Its
/// shell dies with mama, however mama dies.
pub fn run_health(run: &HealthRun<'_>) -> Result<std::result::Result<Health, Cut>> {
    let failed = |what: &str, e: std::io::Error| Error::Io {
        context: format!("cannot run the health command: {what}"),
        source: e,
    };
    let (mut reader, writer) = std::io::pipe().map_err(|e| failed("no pipe", e))?;
    let writer_too = writer.try_clone().map_err(|e| failed("no pipe", e))?;
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(run.command)
        .envs(run.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_too)
        .process_group(0);
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe, and nothing else
    // runs between the fork and the exec.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // mama died before the line above: end now.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("mama is gone"));
            }
            Ok(())
        });
    }
    let spawned = command.spawn();
    // Our ends of the pipe go: the reader sees its end once the command's
    // processes have all closed theirs.
    drop(command);
    let mut child = spawned.map_err(|e| failed("/bin/sh", e))?;
    let tail = Arc::new(Mutex::new(Tail::default()));
    let (done, finished) = std::sync::mpsc::channel();
    let seen = Arc::clone(&tail);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stderr = std::io::stderr();
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = stderr.write_all(&buf[..n]);
                    if let Ok(mut tail) = seen.lock() {
                        tail.take(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
    let group = child.id() as libc::pid_t;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(failed("cannot wait for it", e)),
        }
        let cut = match (run.interrupted)() {
            Some(signal) => Some(Cut::Interrupted(signal)),
            None => run
                .lease
                .filter(|lease| lease.is_lost() || lease.silence() > lease.silent_limit)
                .map(|_| Cut::ClaimLost),
        };
        if let Some(cut) = cut {
            stop_group(&mut child, group);
            return Ok(Err(cut));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = finished.recv_timeout(OUTPUT_GRACE);
    let last_line = match tail.lock() {
        Ok(mut tail) => {
            if !tail.partial.is_empty() {
                tail.end_line();
            }
            tail.last.as_deref().map(offline::reason_of_line)
        }
        Err(_) => None,
    };
    use std::os::unix::process::ExitStatusExt;
    let shown = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    };
    Ok(Ok(Health {
        passed: status.success(),
        status: shown,
        last_line,
    }))
}

/// Ends the command's process group: TERM, then KILL after
/// [`STOP_GRACE`]; reaps the command.
fn stop_group(child: &mut std::process::Child, group: libc::pid_t) {
    // SAFETY: signals the group our unreaped child leads.
    unsafe {
        libc::kill(-group, libc::SIGTERM);
        libc::kill(-group, libc::SIGCONT);
    }
    let until = Instant::now() + STOP_GRACE;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: as above; the child is still unreaped.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// What a health check made of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It passed. `back`: it was out of service by a failed check, and
    /// is back in service; `still`: it stays out of service for another
    /// reason.
    Passed { back: bool, still: Option<Offline> },
    /// It failed. `mark`: why the machine is out of service now;
    /// `taken`: this check took it out (else it was out already).
    Failed { mark: Offline, taken: bool },
}

/// Records what `health`, the check of `machine` by `by`, found, in one
/// transaction: a `checked` event; a machine that failed goes out of
/// service ("health check failed: LAST LINE"), unless it is out already;
/// one that passed comes back when a failed check took it out.
pub fn judge_check(
    lab: &mut Lab,
    machine: &str,
    health: &Health,
    by: &str,
    now: i64,
) -> Result<Verdict> {
    let line = health.last_line.clone();
    let detail = match (&line, health.passed) {
        (Some(line), true) => format!("pass: {line}"),
        (None, true) => "pass".to_string(),
        (Some(line), false) => format!("fail ({}): {line}", health.status),
        (None, false) => format!("fail ({})", health.status),
    };
    lab.record(Event::new(Kind::Checked, machine).detail(detail));
    let mut m = lab.get_mut(machine)?;
    let current = m.view().offline();
    if health.passed {
        return Ok(match current {
            Some(mark) if mark.by_check() => {
                m.bring_online()?;
                lab.record(
                    Event::new(Kind::Online, machine).detail("health check passed".to_string()),
                );
                Verdict::Passed {
                    back: true,
                    still: None,
                }
            }
            still => Verdict::Passed { back: false, still },
        });
    }
    if let Some(mark) = current {
        return Ok(Verdict::Failed { mark, taken: false });
    }
    let reason = match &line {
        Some(line) => format!("{CHECK_FAILED}: {line}"),
        None => format!("{CHECK_FAILED} ({}, no output)", health.status),
    };
    let mark = Offline {
        reason,
        by: Some(by.to_string()),
        since: Some(now),
    };
    m.take_offline(&mark)?;
    lab.record(Event::new(Kind::Offline, machine).detail(mark.reason.clone()));
    Ok(Verdict::Failed { mark, taken: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Machine;
    use crate::model::field::Field;

    fn lab(setting: Option<&str>) -> Lab {
        let lab = Lab::new(vec![Machine::read(
            [
                (Field::Name, "rig1".to_string()),
                (Field::Mac, "aa:bb:cc:dd:ee:01".to_string()),
            ],
            [],
        )]);
        match setting {
            Some(n) => lab.with_settings(vec![(Setting::OfflineAfterFailedStarts, n.into())]),
            None => lab,
        }
    }

    fn events(lab: &mut Lab) -> Vec<(Kind, Option<String>)> {
        lab.take_events()
            .into_iter()
            .map(|e| (e.event, e.detail))
            .collect()
    }

    #[test]
    fn failed_starts_in_a_row_take_a_machine_out_at_the_setting() {
        let mut lab = lab(Some("3"));
        assert_eq!(start_failed(&mut lab, "rig1", "alice", 7).unwrap(), None);
        assert_eq!(start_failed(&mut lab, "rig1", "alice", 8).unwrap(), None);
        assert_eq!(lab.get("rig1").unwrap().failed_starts(), 2);
        assert!(events(&mut lab).is_empty());
        let mark = start_failed(&mut lab, "rig1", "bob", 9).unwrap();
        let expected = Offline {
            reason: "3 failed starts in a row".into(),
            by: Some("bob".into()),
            since: Some(9),
        };
        assert_eq!(mark.as_ref(), Some(&expected));
        assert_eq!(lab.get("rig1").unwrap().offline(), Some(expected.clone()));
        assert_eq!(
            events(&mut lab),
            [(Kind::Offline, Some("3 failed starts in a row".into()))]
        );
        // Out already: counted on, the mark stays.
        assert_eq!(start_failed(&mut lab, "rig1", "carol", 10).unwrap(), None);
        assert_eq!(lab.get("rig1").unwrap().failed_starts(), 4);
        assert_eq!(lab.get("rig1").unwrap().offline(), Some(expected));
        assert!(events(&mut lab).is_empty());
    }

    #[test]
    fn a_start_that_succeeds_begins_the_count_anew() {
        let mut lab = lab(Some("2"));
        start_failed(&mut lab, "rig1", "alice", 1).unwrap();
        start_succeeded(&mut lab, "rig1").unwrap();
        assert!(!lab.get("rig1").unwrap().has(Field::FailedStarts));
        assert_eq!(start_failed(&mut lab, "rig1", "alice", 2).unwrap(), None);
        assert!(lab.get("rig1").unwrap().offline().is_none());
        assert!(
            start_failed(&mut lab, "rig1", "alice", 3)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn without_the_setting_failed_starts_are_only_counted() {
        for setting in [None, Some("0"), Some("x")] {
            let mut lab = lab(setting);
            for n in 1..=5 {
                assert_eq!(start_failed(&mut lab, "rig1", "alice", n).unwrap(), None);
            }
            assert_eq!(lab.get("rig1").unwrap().failed_starts(), 5, "{setting:?}");
            assert!(lab.get("rig1").unwrap().offline().is_none(), "{setting:?}");
        }
    }

    #[test]
    fn a_check_takes_out_and_brings_back_only_its_own_mark() {
        let fail = Health {
            passed: false,
            status: "exit 1".into(),
            last_line: Some("no link".into()),
        };
        let pass = Health {
            passed: true,
            status: "exit 0".into(),
            last_line: None,
        };
        let mut lab = lab(None);
        let verdict = judge_check(&mut lab, "rig1", &fail, "alice", 5).unwrap();
        let Verdict::Failed { mark, taken: true } = verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(mark.reason, "health check failed: no link");
        assert_eq!(
            events(&mut lab),
            [
                (Kind::Checked, Some("fail (exit 1): no link".into())),
                (Kind::Offline, Some("health check failed: no link".into())),
            ]
        );
        let verdict = judge_check(&mut lab, "rig1", &pass, "alice", 6).unwrap();
        assert_eq!(
            verdict,
            Verdict::Passed {
                back: true,
                still: None
            }
        );
        assert!(lab.get("rig1").unwrap().offline().is_none());
        // A person's mark stays, pass or fail.
        let by_hand = Offline {
            reason: "dead console".into(),
            by: Some("bob".into()),
            since: Some(1),
        };
        lab.get_mut("rig1").unwrap().take_offline(&by_hand).unwrap();
        let verdict = judge_check(&mut lab, "rig1", &pass, "alice", 7).unwrap();
        assert_eq!(
            verdict,
            Verdict::Passed {
                back: false,
                still: Some(by_hand.clone())
            }
        );
        let verdict = judge_check(&mut lab, "rig1", &fail, "alice", 8).unwrap();
        assert_eq!(
            verdict,
            Verdict::Failed {
                mark: by_hand.clone(),
                taken: false
            }
        );
        assert_eq!(lab.get("rig1").unwrap().offline(), Some(by_hand));
    }

    #[test]
    fn the_last_line_that_is_not_blank_is_kept() {
        let mut tail = Tail::default();
        tail.take(b"one\ntwo\n\n  \nthr");
        tail.take(b"ee\n\n");
        assert_eq!(tail.last.as_deref(), Some("three"));
        tail.take(b"four");
        tail.end_line();
        assert_eq!(tail.last.as_deref(), Some("four"));
    }
}
