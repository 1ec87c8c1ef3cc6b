//! `mama run` as a supervisor: exit statuses, signals, timeouts, the claim it
//! records, the job's process group and environment, and the release in
//! every case.
//!
//! What only mama commands and real processes show runs against both
//! backends (`on_both_backends!`: a state file and a database lab); tests
//! that write or read the state file (or the log file) by hand are the file
//! lab's.

use crate::common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A shell job that writes its PID to `$1/job.pid`, then becomes `sleep 30`.
const PID_THEN_SLEEP: &str = "echo $$ > \"$1/job.pid\"; exec sleep 30";

/// A shell job that writes its PID to `$1/job.pid` and waits (bounded) for
/// the file `$1/go`.
fn pid_then_wait_for_go() -> String {
    format!("echo $$ > \"$1/job.pid\"; {}", wait_for_file("go"))
}

/// Adds the machine `m` that the jobs run on.
fn add_machine(env: &TestEnv) {
    env.run(["add", "m", "--mac", "aa:bb:cc:dd:ee:01", "--ip", "10.0.0.5"])
        .ok();
}

/// The PID the job wrote to `job.pid`.
fn job_pid(env: &TestEnv) -> u32 {
    read_line_of(&env.path().join("job.pid"), LIMIT)
        .trim()
        .parse()
        .expect("a PID in job.pid")
}

/// The machine is free and no process of the job's group (its leader's PID)
/// is left.
#[track_caller]
fn assert_released(env: &TestEnv, job_group: Option<u32>) {
    let info = env.info("m");
    assert!(info["job"].is_null(), "job left behind: {info:#}");
    assert!(info["job_pid"].is_null(), "job_pid left behind: {info:#}");
    assert!(info["job_timestamp"].is_null(), "{info:#}");
    assert!(info["job_host"].is_null(), "{info:#}");
    assert_eq!(info["state"], "free", "{info:#}");
    assert!(!env.stored().contains("<job_host>"));
    if let Some(group) = job_group {
        assert!(!alive(group), "the job {group} survived");
        assert_eq!(
            group_members(group),
            Vec::<u32>::new(),
            "job processes left"
        );
    }
}

/// Lets a job that waits for `go` end: mama exits 0 and the machine is
/// free, the job's group `job` gone.
#[track_caller]
fn let_go(env: &TestEnv, mama: &mut Bg, job: u32) {
    env.touch("go");
    assert_eq!(mama.finish(LIMIT).code, Some(0));
    assert_released(env, Some(job));
}

on_both_backends! {
    fn the_exit_status_is_the_jobs_own(env: &TestEnv) {
        add_machine(env);
        assert_eq!(env.run(["run", "m", "--", "true"]).code, Some(0));
        assert_released(env, None);
        assert_eq!(env.run(["run", "m", "--", "false"]).code, Some(1));
        assert_released(env, None);
        assert_eq!(
            env.run(["run", "m", "--", "sh", "-c", "exit 7"]).code,
            Some(7)
        );
        assert_released(env, None);
        let run = env.run(sh_job(env, "m", &[], "echo $$ > \"$1/job.pid\"; exit 42"));
        assert_eq!(run.code, Some(42), "{run:#?}");
        assert_released(env, Some(job_pid(env)));
    }

    fn a_missing_command_exits_127_and_a_non_executable_one_126(env: &TestEnv) {
        add_machine(env);
        let script = env.path().join("not-executable");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        // (the command, by name on PATH or by path; the exit code; what stderr names)
        let cases = [
            (
                PathBuf::from("mama-test-no-such-command"),
                127,
                "mama-test-no-such-command",
            ),
            (env.path().join("missing"), 127, "missing"),
            (script, 126, "not-executable"),
        ];
        for (command, code, name) in cases {
            let err = env
                .run([
                    "run".as_ref(),
                    "m".as_ref(),
                    "--".as_ref(),
                    command.as_os_str(),
                ])
                .fails(code)
                .to_string();
            assert!(err.contains(name), "{command:?}: {err}");
            assert_released(env, None);
        }
    }

    fn the_output_of_a_job_that_fails_at_once_is_passed_through(env: &TestEnv) {
        add_machine(env);
        let run = env.run([
            "run",
            "m",
            "--",
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; exit 3",
        ]);
        assert_eq!(run.code, Some(3), "{run:#?}");
        assert_eq!(run.stdout, "to-stdout\n");
        assert!(
            run.stderr.lines().any(|l| l == "to-stderr"),
            "{:?}",
            run.stderr
        );
        assert_released(env, None);
    }

    fn a_timeout_stops_the_job_with_124(env: &TestEnv) {
        add_machine(env);
        let started = Instant::now();
        let mut mama = env.start(sh_job(env, "m", &["--timeout", "0.5"], PID_THEN_SLEEP));
        let run = mama.finish(LIMIT);
        let took = started.elapsed();
        assert_eq!(run.code, Some(124), "{run:#?}");
        assert!(took >= Duration::from_millis(500), "stopped after {took:?}");
        // TERM was enough: no 5 s wait for KILL.
        assert!(took < Duration::from_millis(4500), "stopped after {took:?}");
        assert!(run.stderr.contains("ran out of time"), "{}", run.stderr);
        assert_released(env, Some(job_pid(env)));
    }

    fn a_job_that_ignores_term_is_killed_after_the_grace_period(env: &TestEnv) {
        add_machine(env);
        let started = Instant::now();
        let mut mama = env.start(sh_job(
            env,
            "m",
            &["--timeout", "0.5"],
            "trap '' TERM; echo $$ > \"$1/job.pid\"; exec sleep 30",
        ));
        let job = job_pid(env);
        let run = mama.finish(LIMIT);
        let took = started.elapsed();
        assert_eq!(run.code, Some(124), "{run:#?}");
        // TERM at 0.5 s, KILL 5 s later.
        assert!(
            took >= Duration::from_millis(5500),
            "stopped after {took:?}"
        );
        assert!(took < Duration::from_secs(15), "stopped after {took:?}");
        assert_released(env, Some(job));
    }
}

/// Sends `signal` to `mama` while its job runs; mama exits like the job.
fn signal_to_mama_ends_the_job(env: &TestEnv, signal: libc::c_int, code: i32) {
    add_machine(env);
    let mut mama = Bg::start(with_default_signals(env.cmd(sh_job(
        env,
        "m",
        &[],
        PID_THEN_SLEEP,
    ))));
    let job = job_pid(env);
    assert_eq!(env.info("m")["job_pid"], mama.pid());
    mama.signal(signal);
    let run = mama.finish(LIMIT);
    assert_eq!(run.code, Some(code), "{run:#?}");
    assert_released(env, Some(job));
}

on_both_backends! {
    fn sigterm_to_mama_ends_the_job_and_exits_143(env: &TestEnv) {
        signal_to_mama_ends_the_job(env, libc::SIGTERM, 143);
    }

    fn sigint_to_mama_ends_the_job_and_exits_130(env: &TestEnv) {
        signal_to_mama_ends_the_job(env, libc::SIGINT, 130);
    }

    fn sighup_to_mama_ends_the_job_and_exits_129(env: &TestEnv) {
        signal_to_mama_ends_the_job(env, libc::SIGHUP, 129);
    }

    fn a_busy_machine_exits_75_without_touching_the_claim(env: &TestEnv) {
        add_machine(env);
        let mut holder = env.start(sh_job(
            env,
            "m",
            &["--job", "holder"],
            &pid_then_wait_for_go(),
        ));
        let job = job_pid(env);
        let claim = env.info("m");
        assert_eq!(claim["job_pid"], holder.pid());

        let err = env
            .run(["run", "m", "--no-wait", "--", "touch", "never"])
            .fails_saying(75, "holder")
            .to_string();
        assert!(err.contains(&holder.pid().to_string()), "{err}");

        let started = Instant::now();
        let err = env
            .run(["run", "m", "--wait-timeout", "0.3", "--", "touch", "never"])
            .fails(75)
            .to_string();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(err.contains("holder"), "{err}");
        assert!(!env.path().join("never").exists(), "a busy run ran its job");
        assert_eq!(env.info("m"), claim, "a busy run changed the claim");

        let_go(env, &mut holder, job);
    }

    fn the_claim_records_label_pid_time_and_host_and_the_job_sees_it(env: &TestEnv) {
        add_machine(env);
        let script = format!(
            "env > \"$1/job.env\"; echo $$ > \"$1/job.pid\"; {}",
            wait_for_file("go")
        );
        for (options, label) in [
            (vec![], "run sh"),
            (
                vec!["--job", "nightly smoke x86_64"],
                "nightly smoke x86_64",
            ),
        ] {
            let _ = std::fs::remove_file(env.path().join("go"));
            let _ = std::fs::remove_file(env.path().join("job.pid"));
            let mut args: Vec<String> = ["run", "m"].map(String::from).to_vec();
            args.extend(options.iter().map(|s| s.to_string()));
            // By path: the default label uses the basename.
            args.extend(["--", "/bin/sh", "-c", &script, "sh"].map(String::from));
            args.push(dir_arg(env));
            let mut mama = env.start(args);
            let job = job_pid(env);

            let info = env.info("m");
            assert_eq!(info["job"], label, "{info:#}");
            assert_eq!(info["job_pid"], mama.pid(), "{info:#}");
            let stamped = info["job_timestamp"].as_i64().expect("a timestamp");
            assert!((stamped - unix_now()).abs() <= 5, "{stamped} is not now");
            assert_eq!(info["job_host"], host_name(), "{info:#}");
            assert_eq!(info["stale"], false, "{info:#}");
            // The lab as stored: the state file itself, or the database's
            // document.
            let state = env.stored();
            assert!(
                state.contains(&format!("<job_pid>{}</job_pid>", mama.pid())),
                "{state}"
            );
            assert!(
                state.contains(&format!("<job_host>{}</job_host>", host_name())),
                "{state}"
            );

            let job_env = std::fs::read_to_string(env.path().join("job.env")).expect("job.env");
            for line in [
                "MAMA_MACHINE=m".to_string(),
                format!("MAMA_JOB={label}"),
                "MAMA_MAC=aa:bb:cc:dd:ee:01".to_string(),
                "MAMA_IP=10.0.0.5".to_string(),
            ] {
                assert!(
                    job_env.lines().any(|l| l == line),
                    "{line} not in {job_env}"
                );
            }

            let_go(env, &mut mama, job);
        }
    }

    fn the_job_runs_in_its_own_process_group(env: &TestEnv) {
        add_machine(env);
        let mut mama = env.start(sh_job(env, "m", &[], &pid_then_wait_for_go()));
        let job = job_pid(env);
        let (_, parent, group) = proc_stat(job).expect("the job runs");
        let (_, _, mama_group) = proc_stat(mama.pid()).expect("mama runs");
        assert_eq!(parent, mama.pid(), "the job is mama's child");
        assert_eq!(group, job, "the job leads its own process group");
        assert_ne!(group, mama_group);
        // Beside it in the group: the watcher, a fork of mama that holds
        // none of mama's descriptors (not the job lock, not its output)
        // but its end of one pipe.
        let watchers: Vec<u32> = group_members(job)
            .into_iter()
            .filter(|&pid| pid != job && proc_stat(pid).is_some_and(|(_, p, _)| p == mama.pid()))
            .collect();
        assert_eq!(watchers.len(), 1, "{watchers:?}");
        let watcher = watchers[0];
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{watcher}/fd"))
            .expect("the watcher's descriptors")
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
            .collect();
        assert!(
            fds.len() == 1 && fds[0].starts_with("pipe:"),
            "the watcher's descriptors: {fds:?}"
        );
        // And memory of its own: the kernel, killing a process for want of
        // memory, kills every process that shares its memory with it, so a
        // watcher sharing mama's would die with mama just when it is
        // needed. The kernel sets the OOM score of all of those at once:
        // mama's, raised, leaves the watcher's as it was.
        let adj = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
                .expect("an OOM score adjustment")
                .trim()
                .parse::<i32>()
                .expect("a number")
        };
        let watcher_adj = adj(watcher);
        let raised = (adj(mama.pid()) + 1).min(1000);
        std::fs::write(
            format!("/proc/{}/oom_score_adj", mama.pid()),
            raised.to_string(),
        )
        .expect("raise mama's OOM score adjustment");
        assert_eq!(adj(mama.pid()), raised);
        assert_eq!(
            adj(watcher),
            watcher_adj,
            "the watcher shares mama's memory: it would die with mama"
        );
        let_go(env, &mut mama, job);
        assert!(!alive(watcher), "the watcher outlived its mama");
    }

    fn the_command_runs_without_a_shell(env: &TestEnv) {
        add_machine(env);
        let words = ["$HOME;echo x", "*", "a b", "`id`", "'q'"];
        let mut args = vec!["run", "m", "--", "printf", "%s\\n"];
        args.extend(words);
        let out = env.run(args).ok().to_string();
        assert_eq!(out, words.map(|w| format!("{w}\n")).concat());
        assert_released(env, None);
    }

    fn sigkill_of_mama_takes_the_job_along_and_the_next_run_clears_the_claim(env: &TestEnv) {
        add_machine(env);
        let mut mama = env.start(["run", "m", "--", "sleep", "30"]);
        let mama_pid = mama.pid();
        let mut job = 0;
        wait_until("mama's child sleep", LIMIT, || {
            job = job_of(mama_pid).unwrap_or_default();
            job != 0
        });
        assert_eq!(env.info("m")["job_pid"], mama_pid);

        mama.signal(libc::SIGKILL);
        wait_until("the job to die with mama", LIMIT, || !alive(job));
        mama.finish(LIMIT);
        assert_eq!(mama.killed_by(), Some(libc::SIGKILL));
        // The watcher goes last.
        wait_until("the job's group to end", LIMIT, || group_members(job).is_empty());

        // The claim is left behind; the next run takes the machine at once.
        // A database lab judges a claim mama made by its holder's session,
        // not by its PID.
        let why = if env.is_postgres() {
            format!(
                "the session of the mama that claimed it on host {} is gone from the lab's \
                 database",
                host_name()
            )
        } else {
            format!("PID {mama_pid} is not running")
        };
        let info = env.info("m");
        assert_eq!(info["job_pid"], mama_pid);
        assert_eq!(info["stale"], true, "{info:#}");
        assert_eq!(info["stale_reason"], why.as_str(), "{info:#}");
        env.run(["run", "m", "--no-wait", "--", "true"])
            .ok_saying(&format!(
                "cleared stale job 'run sleep' on m: {why}"
            ));
        assert_released(env, None);
    }
}

on_both_backends! {
    fn sigkill_of_mama_ends_every_process_of_the_jobs_group_within_a_second(env: &TestEnv) {
        add_machine(env);
        // The job starts two processes in the background, one of which
        // ignores TERM, and notes that it got a TERM itself.
        let mut mama = env.start(sh_job(
            env,
            "m",
            &[],
            "trap 'touch \"$1/termed\"; exit 143' TERM; \
             sh -c \"trap '' TERM; exec sleep 300\" & echo $! > \"$1/deaf.pid\"; \
             sleep 300 & echo $! > \"$1/plain.pid\"; \
             echo $$ > \"$1/job.pid\"; wait",
        ));
        let job = job_pid(env);
        let pid_in = |name: &str| -> u32 {
            read_line_of(&env.path().join(name), LIMIT)
                .parse()
                .expect("a PID")
        };
        let (deaf, plain) = (pid_in("deaf.pid"), pid_in("plain.pid"));
        for pid in [deaf, plain] {
            wait_until("the background process to run sleep", LIMIT, || {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "sleep\n")
            });
            assert_eq!(proc_stat(pid).map(|(_, _, group)| group), Some(job));
        }

        mama.signal(libc::SIGKILL);
        wait_until(
            "every process of the job's group to end within a second",
            Duration::from_secs(1),
            || group_members(job).is_empty(),
        );
        mama.finish(LIMIT);
        assert_eq!(mama.killed_by(), Some(libc::SIGKILL));
        for pid in [job, deaf, plain] {
            assert!(!alive(pid), "{pid} survived");
        }
        // TERM came first: the job could clean up.
        assert!(env.path().join("termed").exists(), "the job got no TERM");
        // Nothing of the job holds the machine.
        env.run(["run", "m", "--no-wait", "--", "true"])
            .ok_saying("cleared stale job 'run sh'");
        assert_released(env, None);
    }
}

/// Starts the job `first`, which waits for `go`, and clears its claim
/// (`mama clear`) while it runs; returns its mama and the job's PID.
fn start_first_then_clear(env: &TestEnv) -> (Bg, u32) {
    let first = env.start(sh_job(
        env,
        "m",
        &["--job", "first"],
        &pid_then_wait_for_go(),
    ));
    let job = job_pid(env);
    env.run(["clear", "m"]).ok();
    (first, job)
}

/// The machine's claim has the label `job` and the PID `pid`.
#[track_caller]
fn assert_claim(env: &TestEnv, job: &str, pid: u32) {
    let info = env.info("m");
    assert_eq!(info["job"], job, "{info:#}");
    assert_eq!(info["job_pid"], pid, "{info:#}");
}

#[test]
fn release_leaves_a_claim_that_is_no_longer_ours_alone() {
    let env = TestEnv::new();
    add_machine(&env);
    let (mut first, job) = start_first_then_clear(&env);
    assert!(env.info("m")["job"].is_null());

    // Someone else's live claim, written by hand while the first job runs.
    let other = sleeper();
    write_job(&env, "m", "other", Some(other.pid()), unix_now());

    env.touch("go");
    first
        .finish(LIMIT)
        .ok_saying("was cleared or taken over while the job ran; leaving the record alone");
    assert!(!alive(job));
    assert_claim(&env, "other", other.pid());
}

on_both_backends! {
    fn after_a_manual_clear_runs_wait_until_the_job_still_running_ends(env: &TestEnv) {
        add_machine(env);
        let first = env.start(sh_job(
            env,
            "m",
            &["--job", "first"],
            &pid_then_wait_for_go(),
        ));
        let first_job = job_pid(env);
        // `clear` forgets the record, but the job still runs: it says so, and
        // the machine stays busy, so no second job can start beside it.
        env.run(["clear", "m"]).ok_saying("still hold its job lock");
        let info = env.info("m");
        assert!(info["job"].is_null(), "{info:#}");
        assert_eq!(info["state"], "busy", "{info:#}");
        // A state file's job lock is held by mama and the job (and the
        // job's `sleep` of the moment), which `info` names; a database
        // session's by mama's session alone, which names no process.
        let holders: Vec<u64> = info["job_lock_holders"]
            .as_array()
            .expect("job_lock_holders")
            .iter()
            .filter_map(|h| h["pid"].as_u64())
            .collect();
        if env.is_postgres() {
            assert_eq!(holders, Vec::<u64>::new(), "{info:#}");
        } else {
            for pid in [first.pid(), first_job] {
                assert!(holders.contains(&u64::from(pid)), "{pid}: {info:#}");
            }
        }
        assert_eq!(env.run(["list", "--json"]).json()[0]["state"], "busy");
        assert!(env.run(["list"]).ok().contains("its job lock is held"));
        env.run(["run", "m", "--no-wait", "--", "true"])
            .fails_saying(75, "still hold its job lock");

        let mut waiter = env.start(["run", "m", "--job", "waiter", "--", "true"]);
        waiter.expect_stderr("waiting to claim it", LIMIT);
        let mut first = first;
        assert!(first.running() && alive(first_job));
        env.touch("go");
        first.finish(LIMIT).ok_saying("leaving the record alone");
        assert_eq!(waiter.finish(LIMIT).code, Some(0));
        assert_released(env, None);
        assert!(has_event(&env.events(), "m", "claimed", None));
    }
}

/// `mama ARGS` inside a pseudo-terminal (util-linux `script`), started in
/// its foreground as from an interactive shell; what the test writes to
/// the returned stdin is what a person types.
fn in_terminal(env: &TestEnv, args: &[&str]) -> (Kids, std::process::ChildStdin) {
    let quoted: Vec<String> = std::iter::once(MAMA)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let mut child = in_terminal_shell(env, &quoted.join(" "));
    let stdin = child.stdin.take().expect("piped stdin");
    (Kids(vec![child]), stdin)
}

/// The shell command line `line` run inside a pseudo-terminal (util-linux
/// `script`), in its foreground, in the lab's folder, with the lab as
/// `MAMA_STATE`; its standard streams piped.
fn in_terminal_shell(env: &TestEnv, line: &str) -> std::process::Child {
    let mut script = std::process::Command::new("script");
    script
        .args(["-qec", line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    remove_mama_env(&mut script);
    script
        .env("MAMA_STATE", &env.state)
        .env("NO_COLOR", "1")
        .current_dir(env.path());
    script.spawn().expect("script(1) starts")
}

on_both_backends! {
    #![needs(mama_script, "needs script (util-linux): run tests/install-tools as root")]

    fn a_job_started_from_a_terminal_can_read_it(env: &TestEnv) {
        use std::io::Write;
        add_machine(env);
        let (mut kids, mut typing) = in_terminal(
            env,
            &[
                "run",
                "m",
                "--",
                "sh",
                "-c",
                "read answer; echo \"got:$answer\"",
            ],
        );
        // Typed at once: the terminal keeps it until the job reads.
        typing.write_all(b"hello\n").expect("type");
        let run = finish_child(&mut kids.0[0], "the job that reads the terminal");
        assert_eq!(run.code, Some(0), "{run:#?}");
        assert!(run.stdout.contains("got:hello"), "{run:#?}");
        assert_released(env, None);
    }

    fn ctrl_c_at_the_terminal_ends_the_job_with_130(env: &TestEnv) {
        use std::io::Write;
        add_machine(env);
        let (mut kids, mut typing) = in_terminal(
            env,
            &[
                "run",
                "m",
                "--",
                "sh",
                "-c",
                PID_THEN_SLEEP,
                "sh",
                &dir_arg(env),
            ],
        );
        let group = job_pid(env);
        typing.write_all(b"\x03").expect("type Ctrl-C");
        let run = finish_child(&mut kids.0[0], "mama after Ctrl-C");
        assert_eq!(run.code, Some(130), "{run:#?}");
        assert_released(env, Some(group));
    }
}

/// A command that cannot be run leaves the terminal to the shell that
/// started mama: the job's process takes it before its exec, and when the
/// exec fails mama takes it back (a shell without job control, as in a
/// script, does not).
#[test]
#[cfg_attr(
    not(mama_script),
    ignore = "needs script (util-linux): run tests/install-tools as root"
)]
fn a_command_that_cannot_run_leaves_the_terminal_to_the_shell() {
    let env = TestEnv::new();
    add_machine(&env);
    // The shell's own process group, then the terminal's foreground group
    // (fields 5 and 8 of its stat).
    let groups = "cut -d' ' -f5,8 /proc/$$/stat";
    let line = format!("'{MAMA}' run m -- ./missing; {groups}");
    let mut kids = Kids(vec![in_terminal_shell(&env, &line)]);
    let run = finish_child(&mut kids.0[0], "a shell running a missing command");
    let last = run.stdout.lines().last().unwrap_or_default().trim();
    let (own, foreground) = last
        .split_once(' ')
        .unwrap_or_else(|| panic!("two groups: {run:#?}"));
    assert_eq!(own, foreground, "{run:#?}");
    assert_released(&env, None);
}

#[test]
fn the_job_is_told_the_state_file_even_when_given_by_a_relative_state() {
    let env = TestEnv::new();
    add_machine(&env);
    let out = env
        .cmd([
            "--state",
            "mama.xml",
            "run",
            "m",
            "--",
            "sh",
            "-c",
            "echo \"$MAMA_STATE\"",
        ])
        .env_remove("MAMA_STATE")
        .current_dir(env.path())
        .output()
        .expect("mama runs");
    let run = Run::from(out);
    let told = std::path::PathBuf::from(run.ok().trim());
    assert!(told.is_absolute(), "{told:?}");
    assert_eq!(
        told.canonicalize().expect("the file exists"),
        env.state.canonicalize().expect("the state exists")
    );
}

#[test]
fn durations_take_units_as_timeout_does() {
    let env = TestEnv::new();
    add_machine(&env);
    // A job that would sleep a minute, stopped after one second.
    let began = Instant::now();
    env.run(["run", "m", "--timeout", "1s", "--", "sleep", "60"])
        .fails(124);
    assert!(began.elapsed() < Duration::from_secs(30));
    env.run(["run", "m", "--wait-timeout", "2m", "--", "true"])
        .ok();
    env.run(["wait", "m", "--timeout", "1h30m"]).ok();
    env.run(["run", "m", "--timeout", "5x", "--", "true"])
        .fails_saying(125, "is not a duration");
}

#[test]
fn a_run_of_one_machine_needs_no_dashes() {
    let env = TestEnv::new();
    add_machine(&env);
    let run = env.run([
        "run",
        "m",
        "--job",
        "x",
        "sh",
        "-c",
        "echo \"$MAMA_MACHINE $1\"",
        "sh",
        "--quick",
    ]);
    assert_eq!(run.ok().trim(), "m --quick");
    // A command line with `--` is read as ever: the command's own `--`
    // comes after mama's.
    let run = env.run(["run", "m", "--", "echo", "--", "-x"]);
    assert_eq!(run.ok().trim(), "-- -x");
    env.run(["run", "m", "m2", "--", "true"])
        .fails_saying(125, "--any");
}

/// A script without `#!` runs in `/bin/sh` (execvp's fallback), however
/// many arguments it is given: the argument list that fallback builds is
/// on the stack of the job's process before its exec.
#[test]
fn a_script_without_a_shebang_runs_with_many_arguments() {
    let env = TestEnv::new();
    add_machine(&env);
    let script = env.path().join("no-shebang");
    std::fs::write(&script, "[ $# -eq 40000 ] && exit 7\nexit 1\n").expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut args = vec![
        "run".into(),
        "m".into(),
        "--".into(),
        script.into_os_string(),
    ];
    args.extend((0..40000).map(|_| std::ffi::OsString::from("x")));
    let run = env.run(args);
    assert_eq!(run.code, Some(7), "{run:#?}");
    assert_released(&env, None);
}

/// The job starts as a shell's command would: no signal blocked (mama
/// blocks the ones it handles) and SIGPIPE at its default (Rust's runtime
/// ignores it in mama).
#[test]
fn the_job_starts_with_no_signal_blocked_and_sigpipe_at_its_default() {
    let env = TestEnv::new();
    add_machine(&env);
    let field = |status: &str, name: &str| {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"));
        u64::from_str_radix(line.trim(), 16).expect("a hexadecimal mask")
    };
    let run = env.run(["run", "m", "--", "cat", "/proc/self/status"]);
    let job = run.ok();
    assert_eq!(field(job, "SigBlk:"), 0, "{job}");
    let sigpipe = 1 << (libc::SIGPIPE - 1);
    assert_eq!(field(job, "SigIgn:") & sigpipe, 0, "{job}");
}

/// A run started with SIGCHLD ignored (the disposition survives exec, so
/// a parent's choice reaches mama) still sees its job end: the kernel
/// would otherwise reap the job unseen and send mama no SIGCHLD.
#[test]
fn a_run_started_with_sigchld_ignored_sees_its_job_end() {
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new();
    add_machine(&env);
    let mut cmd = env.cmd(["run", "m", "--", "sh", "-c", "exit 3"]);
    // SAFETY: one async-signal-safe call in the child before its exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            Ok(())
        });
    }
    let run = Bg::start(cmd).finish(LIMIT);
    assert_eq!(run.code, Some(3), "{run:#?}");
    assert_released(&env, None);
}
