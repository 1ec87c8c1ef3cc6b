//! Notify commands: a shell command told of every event a command commits,
//! one `log --json` line each on its standard input, run apart from the
//! command (its own session, no terminal, no lock of mama's), within a
//! time limit, and never in the way of the command's exit or status.
//!
//! A command's notify runs are over once everything that holds its stderr
//! closed it: the supervisor that runs them holds it until the last run
//! ended. So `output()` of a mama with a notify command returns after the
//! command was told, and a test that must see mama's exit before that
//! waits for the process, not for its output.

use crate::common::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The time limit of a notify run.
const NOTIFY_LIMIT: Duration = Duration::from_secs(10);

/// `path` quoted for a shell.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// A notify command that appends each run's events to `told`, then a
/// line `RUN` after them.
fn appender(told: &Path) -> String {
    format!("{{ cat; echo RUN; }} >> {}", quoted(told))
}

/// `mama ARGS` with `MAMA_NOTIFY` set to `notify`.
fn notifying<I, S>(env: &TestEnv, notify: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = env.cmd(args);
    cmd.env("MAMA_NOTIFY", notify);
    cmd
}

/// Runs `mama ARGS` with `MAMA_NOTIFY` to its end, its notify runs
/// included (see the module's doc), each within [`LIMIT`].
#[track_caller]
fn told_run<I, S>(env: &TestEnv, notify: &str, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Bg::start(notifying(env, notify, args)).finish(LIMIT)
}

/// The runs the notify command wrote to `told` (see [`appender`]): the
/// event lines of each.
fn runs_in(told: &Path) -> Vec<Vec<String>> {
    let text = fs::read_to_string(told).unwrap_or_default();
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for line in text.lines() {
        if line == "RUN" {
            runs.push(std::mem::take(&mut run));
        } else {
            run.push(line.to_string());
        }
    }
    assert!(run.is_empty(), "a run without its end: {text}");
    runs
}

/// The lines `log --json` prints.
fn log_lines(env: &TestEnv) -> Vec<String> {
    env.run(["log", "--json"])
        .ok()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The stderr lines that report a failed notify command.
fn failures(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("the notify command failed"))
        .collect()
}

/// Processes killed (their groups) when the test ends, however it ends:
/// notify commands left hanging on purpose.
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: plain system calls on the test's own processes.
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// The PIDs a notify command wrote to `file`, one a line, once it holds
/// `count` of them.
fn pids_in(file: &Path, count: usize) -> Vec<u32> {
    let mut pids = Vec::new();
    wait_until(
        &format!("{count} PIDs in {}", file.display()),
        LIMIT,
        || {
            let text = fs::read_to_string(file).unwrap_or_default();
            pids = text
                .lines()
                .filter(|l| !l.is_empty())
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            text.ends_with('\n') && pids.len() >= count
        },
    );
    pids
}

/// Fields of /proc/PID/stat after the command: (session, tty_nr).
fn session_and_tty(stat: &str) -> (i64, i64) {
    let (_, rest) = stat.rsplit_once(')').expect("a stat line");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state, ppid, pgrp, session, tty_nr.
    let field = |i: usize| fields[i].parse::<i64>().expect("a number");
    (field(3), field(4))
}

on_both_backends! {
    fn the_notify_command_is_told_exactly_the_events_committed_in_order(env: &TestEnv) {
        let told = env.path().join("told");
        let notify = appender(&told);
        let dead = dead_pid();
        let file = env.path().join("lab.xml");
        fs::write(
            &file,
            lab_xml(&[
                machine_xml("a", 1, &[]),
                machine_xml(
                    "b",
                    2,
                    &[
                        ("job", "left behind"),
                        ("job_pid", &dead.to_string()),
                        ("job_timestamp", &(unix_now() - 60).to_string()),
                    ],
                ),
            ]),
        )
        .expect("write the lab to import");
        // One transaction, two events: a run for each, told its own.
        told_run(env, &notify, ["import", &file.display().to_string()]).ok();
        assert_eq!(runs_in(&told).iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
        // A run: its claim, then its release, in that order, each a run
        // of the notify command of its own.
        told_run(env, &notify, ["run", "a", "--", "sh", "-c", "exit 3"]).fails(3);
        // A waiter clears the stale job.
        told_run(env, &notify, ["wait", "b"]).ok_saying("cleared stale job");
        // Commands by hand.
        told_run(env, &notify, ["set", "a", "os", "linux"]).ok();
        told_run(env, &notify, ["reserve", "b"]).ok();
        told_run(env, &notify, ["release", "b"]).ok();
        // Changes refused, or none made: nothing committed, nobody told.
        told_run(env, &notify, ["release", "b"]).fails(1);
        told_run(env, &notify, ["delete", "nosuch"]).fails(1);
        told_run(env, &notify, ["set", "a", "os", "linux"]).ok();
        told_run(env, &notify, ["set", "a", "ip", "not-an-ip"]).fails(1);

        let runs = runs_in(&told);
        assert_eq!(
            runs.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 1, 1, 1, 1, 1, 1, 1],
            "{runs:#?}"
        );
        // Exactly what the history committed, as `log --json` prints it:
        // the same lines, numbers included, in order.
        let lines: Vec<String> = runs.concat();
        assert_eq!(lines, log_lines(env));
        let kinds: Vec<String> = parse_json_lines(&lines.join("\n"))
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "added",
                "added",
                "claimed",
                "released",
                "stale_cleared",
                "set",
                "reserved",
                "unreserved"
            ]
        );
    }

    fn the_claim_is_told_while_the_job_runs(env: &TestEnv) {
        env.add("m", 1);
        let told = env.path().join("told");
        // The job ends well only once the claim was told.
        let job = format!(
            "i=0; until grep -q '\"claimed\"' {0} 2>/dev/null; do \
             i=$((i+1)); [ $i -gt 500 ] && exit 9; sleep 0.02; done",
            quoted(&told)
        );
        told_run(env, &appender(&told), ["run", "m", "--", "sh", "-c", &job]).ok();
        assert_eq!(runs_in(&told).concat(), log_lines(env)[1..]);
    }

    fn a_slow_run_holds_back_the_next_of_the_same_command(env: &TestEnv) {
        env.add("m", 1);
        let told = env.path().join("told");
        // The claim's run takes its time; the release's, quick, comes
        // after it all the same.
        let notify = format!(
            "t=$(cat); case \"$t\" in *'\"claimed\"'*) sleep 0.5;; esac; \
             printf '%s\\n' \"$t\" >> {}",
            quoted(&told)
        );
        told_run(env, &notify, ["run", "m", "--", "true"]).ok();
        let told = fs::read_to_string(&told).expect("told");
        let kinds: Vec<String> = parse_json_lines(&told)
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(kinds, ["claimed", "released"], "{told}");
    }

    fn a_failing_notify_command_changes_no_exit_status_and_is_said_once(env: &TestEnv) {
        env.add("m", 1);
        let notify = "echo 'no mail today' >&2; exit 3";
        let run = told_run(env, notify, ["run", "m", "--", "sh", "-c", "exit 7"]);
        let stderr = run.fails(7);
        // Two runs failed (the claim's, the release's): said once.
        assert_eq!(
            failures(stderr),
            [format!(
                "mama: the notify command failed: `{notify}`: it exited with status 3: \
                 no mail today"
            )],
            "{run:#?}"
        );
        let run = told_run(env, notify, ["set", "m", "os", "linux"]);
        run.ok();
        assert_eq!(failures(&run.stderr).len(), 1, "{run:#?}");
        assert_eq!(env.info("m")["os"], "linux");
    }

    fn a_missing_notify_command_is_said_once(env: &TestEnv) {
        env.add("m", 1);
        let run = told_run(env, "no-such-notify-command", ["run", "m", "--", "true"]);
        run.ok();
        let said = failures(&run.stderr);
        assert_eq!(said.len(), 1, "{run:#?}");
        assert!(
            said[0].starts_with(
                "mama: the notify command failed: `no-such-notify-command`: \
                 it exited with status 127: "
            ) && said[0].contains("not found"),
            "{run:#?}"
        );
        assert_eq!(
            env.events().iter().map(|e| e["event"].clone()).collect::<Vec<_>>(),
            ["added", "claimed", "released"]
        );
    }

    fn a_hanging_notify_command_delays_no_run_and_is_killed_after_its_time_limit(env: &TestEnv) {
        env.add("m", 1);
        let pids = env.path().join("pids");
        let err = env.path().join("stderr");
        // Each run writes its shell's PID (its process group's), then
        // hangs in a child of the shell.
        let notify = format!("echo $$ >> {}; sleep 60; true", quoted(&pids));
        let started = Instant::now();
        let mut mama = notifying(env, &notify, ["run", "m", "--", "true"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).expect("a file for stderr"))
            .spawn()
            .expect("mama starts");
        let status = mama.wait().expect("mama ends");
        let took = started.elapsed();
        assert_eq!(status.code(), Some(0));
        assert!(
            took < Duration::from_secs(3),
            "the run took {took:?}: it waited for its notify command"
        );
        assert_eq!(env.info("m")["job"], serde_json::Value::Null);
        // The claim's run hangs: alive, with its sleep, after mama ended.
        let first = pids_in(&pids, 1)[0];
        let mut reaper = Reaper(vec![first]);
        assert!(alive(first));
        wait_until("the hanging run's sleep", LIMIT, || {
            group_members(first).len() >= 2
        });
        // Killed, its whole group, at the time limit: not before, not
        // much after.
        wait_until("the hanging run's group to be killed", LIMIT, || {
            group_members(first).is_empty()
        });
        let gone = started.elapsed();
        assert!(
            gone >= NOTIFY_LIMIT - Duration::from_millis(500)
                && gone < NOTIFY_LIMIT + Duration::from_secs(4),
            "killed after {gone:?}"
        );
        // Then the release's run, told after the claim's, hangs in turn.
        let second = pids_in(&pids, 2)[1];
        reaper.0.push(second);
        wait_until("the report of the hang", LIMIT, || {
            fs::read_to_string(&err).is_ok_and(|t| t.contains("was killed"))
        });
        let said = fs::read_to_string(&err).expect("stderr");
        assert_eq!(
            failures(&said),
            [format!(
                "mama: the notify command failed: `{notify}`: it did not end within 10s \
                 and was killed"
            )],
            "{said}"
        );
    }

    fn the_notify_command_has_no_terminal_and_holds_no_lock_of_mamas(env: &TestEnv) {
        env.add("m", 1);
        let dir = env.path();
        let go = dir.join("go");
        // Each run tells its descriptors, its terminal and its session,
        // then waits for `go`.
        let notify = format!(
            "d={}; ls -l /proc/$$/fd > \"$d/fds.$$\"; tty > \"$d/tty.$$\"; \
             cat /proc/$$/stat > \"$d/stat.$$\"; echo $$ >> \"$d/pids\"; \
             i=0; while [ ! -e {} ] && [ $i -lt 1000 ]; do sleep 0.02; i=$((i+1)); done",
            quoted(dir),
            quoted(&go)
        );
        let job = format!("cat /proc/$$/stat > {}", quoted(&dir.join("job.stat")));
        let mut mama = notifying(env, &notify, ["run", "m", "--", "sh", "-c", &job])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mama starts");
        assert_eq!(mama.wait().expect("mama ends").code(), Some(0));
        let pid = pids_in(&dir.join("pids"), 1)[0];
        let _reaper = Reaper(vec![pid]);
        assert!(alive(pid), "the claim's notify run still waits");

        // It holds no lock: the machine is free for the next run, at once.
        env.run(["run", "m", "--no-wait", "--", "true"]).ok();
        assert_eq!(env.info("m")["state"], "free");

        // None of mama's descriptors: only its input, its output and the
        // shell's own redirections (no socket, no lab file).
        let fds = fs::read_to_string(dir.join(format!("fds.{pid}"))).expect("its descriptors");
        let own = dir.join(format!("fds.{pid}"));
        for line in fds.lines().skip(1) {
            let target = line.split(" -> ").nth(1).unwrap_or_default();
            assert!(
                target.starts_with("pipe:") || target == "/dev/null" || Path::new(target) == own,
                "the notify command holds {target}: {fds}"
            );
        }
        // No terminal, and a session of its own.
        assert_eq!(
            fs::read_to_string(dir.join(format!("tty.{pid}"))).expect("tty's answer"),
            "not a tty\n"
        );
        let (session, tty) =
            session_and_tty(&fs::read_to_string(dir.join(format!("stat.{pid}"))).expect("stat"));
        let (job_session, _) =
            session_and_tty(&fs::read_to_string(dir.join("job.stat")).expect("the job's stat"));
        assert_eq!((session, tty), (i64::from(pid), 0));
        assert_ne!(session, job_session);
        env.touch("go");
        wait_until("the notify runs to end", LIMIT, || !alive(pid));
    }
}

/// `mama ARGS` inside a pseudo-terminal (util-linux `script`), in its
/// foreground, with `MAMA_NOTIFY`.
fn in_terminal(env: &TestEnv, notify: &str, args: &[&str]) -> Kids {
    let quoted: Vec<String> = std::iter::once(MAMA)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let mut script = Command::new("script");
    script
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    remove_mama_env(&mut script);
    script
        .env("MAMA_STATE", &env.state)
        .env("MAMA_NOTIFY", notify)
        .env("NO_COLOR", "1")
        .current_dir(env.path());
    Kids(vec![script.spawn().expect("script(1) starts")])
}

#[test]
#[cfg_attr(
    not(mama_script),
    ignore = "needs script (util-linux): run tests/install-tools as root"
)]
fn a_run_at_a_terminal_tells_a_notify_command_that_has_none() {
    let env = TestEnv::new();
    env.add("m", 1);
    let dir = env.path();
    let notify = format!(
        "tty > {}; cat /proc/$$/stat > {}",
        quoted(&dir.join("notify.tty")),
        quoted(&dir.join("notify.stat"))
    );
    let job = format!(
        "tty > {}; cat /proc/$$/stat > {}",
        quoted(&dir.join("job.tty")),
        quoted(&dir.join("job.stat"))
    );
    let mut kids = in_terminal(&env, &notify, &["run", "m", "--", "sh", "-c", &job]);
    let run = finish_child(&mut kids.0[0], "mama at a terminal");
    assert_eq!(run.code, Some(0), "{run:#?}");
    let read = |name: &str| -> String {
        let path: PathBuf = dir.join(name);
        let mut text = String::new();
        wait_until(&format!("{name} written"), LIMIT, || {
            text = fs::read_to_string(&path).unwrap_or_default();
            text.ends_with('\n')
        });
        text
    };
    // The job has the terminal; the notify command is apart from it.
    assert!(read("job.tty").starts_with("/dev/pts/"));
    assert_eq!(read("notify.tty"), "not a tty\n");
    let (job_session, job_tty) = session_and_tty(&read("job.stat"));
    let (session, tty) = session_and_tty(&read("notify.stat"));
    assert_ne!(job_tty, 0);
    assert_eq!(tty, 0);
    assert_ne!(session, job_session);
}

on_both_backends! {

    fn the_labs_notify_command_runs_beside_the_users_own(env: &TestEnv) {
        env.add("m", 1);
        let lab_told = env.path().join("lab.told");
        let own_told = env.path().join("own.told");
        let untrusted = env.path().join("no-config");
        let with_config = |mut cmd: Command, config: &Path| {
            cmd.env("XDG_CONFIG_HOME", config);
            Bg::start(cmd).finish(LIMIT)
        };
        with_config(
            env.cmd(["setting", "notify", &appender(&lab_told)]),
            &untrusted,
        )
        .ok();
        let run = || notifying(env, &appender(&own_told), ["run", "m", "--", "true"]);
        let last_two = |env: &TestEnv| log_lines(env).split_off(log_lines(env).len() - 2);

        // Where others than the user and root may write the lab (any
        // database lab), its command runs only once the user trusts the
        // lab, as its startcmds do; the user's own runs regardless.
        let first = with_config(run(), &untrusted);
        first.ok();
        assert_eq!(runs_in(&own_told).concat(), last_two(env));
        if env.is_postgres() {
            let refused: Vec<&str> = first
                .stderr
                .lines()
                .filter(|l| l.contains("refusing to use the lab's notify command"))
                .collect();
            assert_eq!(refused.len(), 1, "{first:#?}");
            assert!(!lab_told.exists() || runs_in(&lab_told).concat() != last_two(env));
            with_config(run(), &env.trust("*")).ok();
        } else {
            assert!(!first.stderr.contains("refusing"), "{first:#?}");
        }
        // Both told of the run, each one run an event, in order.
        let lab_runs = runs_in(&lab_told);
        let own_runs = runs_in(&own_told);
        assert_eq!(lab_runs[lab_runs.len() - 2..].concat(), last_two(env));
        assert_eq!(own_runs[own_runs.len() - 2..].concat(), last_two(env));
    }
}
