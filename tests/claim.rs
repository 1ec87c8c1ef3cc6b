//! The busy rules and waiting: mutual exclusion, stale takeover, handoff,
//! `wait`, nesting, reservations, hand starts and shared resources.
//!
//! What only mama commands and real processes show runs against both
//! backends (`on_both_backends!`: a state file and a database lab); tests
//! that write or read the state file (or the log file) by hand are the file
//! lab's.

use crate::common::*;

use std::time::{Duration, Instant};

/// Starts a job on `machine` that touches `$1/STARTED` and ends when `$1/GO`
/// appears; returns once it runs.
fn hold(env: &TestEnv, machine: &str, label: &str, started: &str, go: &str) -> Bg {
    let script = format!("touch \"$1/{started}\"; {}", wait_for_file(go));
    let holder = env.start(sh_job(env, machine, &["--job", label], &script));
    wait_until(&format!("{label} to start"), LIMIT, || {
        env.path().join(started).exists()
    });
    holder
}

/// A state file with machine `m` holding a job written by hand (as the PHP
/// version, or a person, would).
fn lab_with_job(label: &str, pid: Option<u32>, timestamp: Option<i64>) -> String {
    let pid = pid.map(|p| p.to_string()).unwrap_or_default();
    let timestamp = timestamp.map(|t| t.to_string()).unwrap_or_default();
    format!(
        "<?xml version=\"1.0\"?>\n<settings>\n  <machine>\n    <name>m</name>\n    \
         <mac>aa:bb:cc:dd:ee:01</mac>\n    <ip/>\n    <is_started/>\n    <reservation/>\n    \
         <resources/>\n    <job>{label}</job>\n    <job_pid>{pid}</job_pid>\n    \
         <job_timestamp>{timestamp}</job_timestamp>\n  </machine>\n</settings>\n"
    )
}

/// Starts `mama ARGS` in the background, in the world's folder, with the
/// stale age `MAMA_STALE_AFTER=SECONDS`.
fn start_stale_after(env: &TestEnv, seconds: &str, args: &[&str]) -> Bg {
    let mut cmd = env.cmd(args);
    cmd.env("MAMA_STALE_AFTER", seconds).current_dir(env.path());
    Bg::start(cmd)
}

#[track_caller]
fn assert_free(env: &TestEnv, machine: &str) {
    let info = env.info(machine);
    assert!(info["job"].is_null(), "{info:#}");
    assert!(info["job_pid"].is_null(), "{info:#}");
    assert_eq!(info["state"], "free", "{info:#}");
}

on_both_backends! {
    fn one_machine_never_runs_two_jobs_at_once(env: &TestEnv) {
        const PROCESSES: usize = 6;
        const RUNS: usize = 8;
        env.add("m", 1);
        // The critical section: a second job inside it finds the folder there.
        let detector = "if mkdir \"$1/inside\" 2>/dev/null; then sleep 0.02; rmdir \"$1/inside\"; \
                        else echo overlap >> \"$1/overlaps\"; fi; echo ran >> \"$1/ran\"";
        let args = sh_job(env, "m", &["--wait-timeout", "60"], detector);
        std::thread::scope(|scope| {
            for _ in 0..PROCESSES {
                scope.spawn(|| {
                    for _ in 0..RUNS {
                        let run = env.run(&args);
                        assert_eq!(run.code, Some(0), "{run:#?}");
                    }
                });
            }
        });
        assert!(
            !env.path().join("overlaps").exists(),
            "two jobs overlapped: {:?}",
            std::fs::read_to_string(env.path().join("overlaps"))
        );
        let ran = std::fs::read_to_string(env.path().join("ran")).expect("jobs ran");
        assert_eq!(ran.lines().count(), PROCESSES * RUNS);
        assert_free(env, "m");
    }

    fn jobs_on_different_machines_run_at_the_same_time(env: &TestEnv) {
        env.add("m1", 1);
        env.add("m2", 2);
        // Each job ends well only if the other one runs at the same time.
        let meet = |mine: &str, theirs: &str| {
            format!(
                "touch \"$1/{mine}\"; i=0; while [ ! -e \"$1/{theirs}\" ]; do i=$((i+1)); \
                 [ $i -gt 500 ] && exit 9; sleep 0.02; done"
            )
        };
        let mut one = env.start(sh_job(env, "m1", &["--no-wait"], &meet("one", "two")));
        let mut two = env.start(sh_job(env, "m2", &["--no-wait"], &meet("two", "one")));
        assert_eq!(one.finish(LIMIT).code, Some(0));
        assert_eq!(two.finish(LIMIT).code, Some(0));
        assert_free(env, "m1");
        assert_free(env, "m2");
    }
}

#[test]
fn a_job_whose_pid_is_dead_is_cleared_at_once() {
    let env = TestEnv::new();
    let pid = dead_pid();
    env.write_state(&lab_with_job("ghost job", Some(pid), Some(unix_now())));
    env.run(["run", "m", "--no-wait", "--", "true"])
        .ok_saying(&format!(
            "cleared stale job 'ghost job' on m: PID {pid} is not running"
        ));
    assert_free(&env, "m");
}

#[test]
fn a_job_whose_pid_was_reused_is_cleared() {
    let env = TestEnv::new();
    let sleeping = sleeper();
    let pid = sleeping.pid();

    // Claimed after its process started: a live job.
    env.write_state(&lab_with_job("reused", Some(pid), Some(unix_now())));
    env.run(["run", "m", "--no-wait", "--", "true"])
        .fails_saying(75, "reused");

    // Claimed long before its process started: the PID was reused.
    env.write_state(&lab_with_job("reused", Some(pid), Some(unix_now() - 100)));
    env.run(["run", "m", "--no-wait", "--", "true"])
        .ok_saying(&format!(
            "cleared stale job 'reused' on m: PID {pid} was reused"
        ));
    assert!(alive(pid), "clearing a claim must not touch the process");
    assert_free(&env, "m");
}

#[test]
fn a_job_without_pid_goes_stale_after_the_stale_age() {
    let env = TestEnv::new();
    env.write_state(&lab_with_job("no pid", None, Some(unix_now() - 100)));
    env.run(["run", "m", "--no-wait", "--", "true"])
        .fails_saying(75, "no pid");

    env.write_state(&lab_with_job("no pid", None, Some(unix_now() - 400)));
    let run = env.run(["run", "m", "--no-wait", "--", "true"]);
    let cleared = run.ok_saying("cleared stale job 'no pid' on m: no PID recorded");
    assert!(cleared.contains("(stale after 300 s)"), "{cleared}");
    assert_free(&env, "m");
}

#[test]
fn a_waiter_takes_over_a_job_without_pid_when_it_ages() {
    let env = TestEnv::new();
    let claimed = unix_now();
    let start = Instant::now();
    env.write_state(&lab_with_job("young", None, Some(claimed)));
    let args = ["run", "m", "--wait-timeout", "10", "--", "true"];
    let mut waiter = start_stale_after(&env, "1", &args);
    waiter.expect_stderr("waiting to claim it", LIMIT);
    let run = waiter.finish(LIMIT);
    // Stale once more than 1 s old: at the earliest 2 s after `claimed`,
    // and `start` came less than 1 s after it.
    let took = start.elapsed();
    run.ok_saying("cleared stale job 'young' on m: no PID recorded");
    assert!(took >= Duration::from_millis(900), "taken after {took:?}");
    assert_free(&env, "m");
}

#[test]
fn the_first_waiter_stamps_a_job_without_pid_or_timestamp() {
    let env = TestEnv::new();
    env.write_state(&lab_with_job("unstamped", None, None));
    let before = unix_now();
    // Default stale age: it waits, after stamping the record.
    let mut first = env.start(["run", "m", "--wait-timeout", "30", "--", "true"]);
    first.expect_stderr("waiting to claim it", LIMIT);
    let mut stamp = None;
    wait_until("the waiter to stamp the job", LIMIT, || {
        stamp = env.info("m")["job_timestamp"].as_i64();
        stamp.is_some()
    });
    let stamp = stamp.unwrap_or_default();
    assert!(
        stamp >= before && stamp <= unix_now(),
        "stamped {stamp}, not now"
    );
    assert!(first.running(), "the waiter took a young job");
    assert_eq!(env.info("m")["job"], "unstamped");
    drop(first);

    // With a stale age of 1 s the stamped record ages out.
    let args = ["run", "m", "--wait-timeout", "10", "--", "true"];
    let mut second = start_stale_after(&env, "1", &args);
    let run = second.finish(LIMIT);
    run.ok_saying("cleared stale job 'unstamped' on m: no PID recorded");
    assert_free(&env, "m");
}

on_both_backends! {
    fn a_live_holder_is_never_taken_over(env: &TestEnv) {
        env.add("m", 1);
        let mut holder = env.start(["run", "m", "--job", "holder", "--", "sleep", "30"]);
        wait_until("the holder's claim", LIMIT, || {
            env.info("m")["job_pid"] == holder.pid()
        });
        let claim = env.info("m");
        // Even with the shortest stale age: a live PID is live.
        let args = ["run", "m", "--wait-timeout", "1", "--", "touch", "never"];
        let mut waiter = start_stale_after(env, "0", &args);
        let run = waiter.finish(LIMIT);
        assert_eq!(run.code, Some(75), "{run:#?}");
        assert!(run.stderr.contains("holder"), "{}", run.stderr);
        assert!(!run.stderr.contains("cleared"), "{}", run.stderr);
        assert!(!env.path().join("never").exists());
        assert_eq!(env.info("m"), claim);
        assert!(holder.running());

        holder.signal(libc::SIGTERM);
        assert_eq!(holder.finish(LIMIT).code, Some(143));
        assert_free(env, "m");
    }

    fn a_waiter_starts_as_soon_as_the_holder_ends(env: &TestEnv) {
        env.add("m", 1);
        let mut holder = hold(env, "m", "holder", "holder.started", "holder.go");
        // A long poll interval: only the job lock can wake the waiter in time.
        let mut waiter = Bg::start({
            let mut cmd = env.cmd(sh_job(
                env,
                "m",
                &["--job", "waiter", "--wait-timeout", "60"],
                "touch \"$1/waiter.ran\"",
            ));
            cmd.env("MAMA_POLL_INTERVAL", "30");
            cmd
        });
        let line = waiter.expect_stderr("waiting to claim it", LIMIT);
        assert!(line.contains("holder"), "{line}");
        assert!(line.contains(&holder.pid().to_string()), "{line}");

        let ended = Instant::now();
        env.touch("holder.go");
        assert_eq!(holder.finish(LIMIT).code, Some(0));
        let run = waiter.finish(LIMIT);
        let took = ended.elapsed();
        assert_eq!(run.code, Some(0), "{run:#?}");
        assert!(env.path().join("waiter.ran").exists());
        assert!(took < Duration::from_secs(3), "handed over after {took:?}");
        assert_free(env, "m");
    }

    fn wait_returns_at_once_when_the_machine_is_free(env: &TestEnv) {
        env.add("m", 1);
        // A zero timeout: only a machine free at the first look passes.
        let run = env.run(["wait", "m", "--timeout", "0"]);
        assert_eq!(run.code, Some(0), "{run:#?}");
        assert!(!run.stderr.contains("busy"), "{}", run.stderr);
        assert_free(env, "m");
    }

    fn wait_blocks_while_busy_and_returns_when_the_holder_ends(env: &TestEnv) {
        env.add("m", 1);
        let mut holder = hold(env, "m", "holder", "started", "go");
        let mut waiter = env.start(["wait", "m", "--timeout", "30"]);
        let line = waiter.expect_stderr("waiting until it is free", LIMIT);
        assert!(line.contains("holder"), "{line}");
        assert!(line.contains(&holder.pid().to_string()), "{line}");
        assert!(waiter.running());

        env.touch("go");
        assert_eq!(holder.finish(LIMIT).code, Some(0));
        waiter.finish(LIMIT).ok();
        assert_free(env, "m");
    }

    fn wait_gives_up_with_75_and_says_once_who_holds_the_machine(env: &TestEnv) {
        env.add("m", 1);
        let mut holder = hold(env, "m", "holder", "started", "go");

        let started = Instant::now();
        let err = env
            .run(["wait", "m", "--timeout", "0.3"])
            .fails(75)
            .to_string();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(err.contains("holder"), "{err}");

        // Several looks (poll interval 0.2 s), one message.
        let err = env
            .run(["wait", "m", "--timeout", "1"])
            .fails(75)
            .to_string();
        let told: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("waiting until it is free"))
            .collect();
        assert_eq!(told.len(), 1, "{err}");
        assert!(told[0].contains("holder"), "{err}");
        assert!(told[0].contains(&holder.pid().to_string()), "{err}");

        env.touch("go");
        assert_eq!(holder.finish(LIMIT).code, Some(0));
        assert_free(env, "m");
    }

    fn a_job_may_nest_a_run_on_its_own_machine(env: &TestEnv) {
        env.add("m", 1);
        let dir = dir_arg(env);
        let inner = format!(
            "env > \"$1/inner.env\"; echo $PPID > \"$1/inner.mama\"; \
             \"$2\" info m --json > \"$1/inner.json\"; {}",
            wait_for_file("inner.go")
        );
        // The outer job runs the inner `mama run`, then waits so the claim can
        // be seen after it.
        let outer = format!(
            "\"$2\" run m --job inner --no-wait -- sh -c '{inner}' sh \"$1\" \"$2\"; \
             echo $? > \"$1/inner.code\"; {}",
            wait_for_file("outer.go")
        );
        let mut mama = env.start([
            "run",
            "m",
            "--job",
            "outer",
            "--",
            "sh",
            "-c",
            outer.as_str(),
            "sh",
            dir.as_str(),
            MAMA,
        ]);

        let inner_pid: u32 = read_line_of(&env.path().join("inner.mama"), LIMIT)
            .parse()
            .expect("inner mama's PID");
        wait_until("the inner job to see the lab", LIMIT, || {
            std::fs::read_to_string(env.path().join("inner.json")).is_ok_and(|t| t.ends_with("}\n"))
        });
        let seen_inside: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(env.path().join("inner.json")).expect("inner.json"),
        )
        .expect("JSON");
        // The outer claim stands while the nested run runs: it is the one that
        // lives as long as the machine is used.
        let info = env.info("m");
        for view in [&seen_inside, &info] {
            assert_eq!(view["job"], "outer", "{view:#}");
            assert_eq!(view["job_pid"], mama.pid(), "{view:#}");
            assert_eq!(view["job_user"], user_name().as_str(), "{view:#}");
        }
        let nested = env.events();
        assert!(
            nested.iter().any(|e| e["event"] == "claimed"
                && e["job"] == "inner"
                && e["pid"] == inner_pid
                && e["detail"] == "nested in 'outer'"),
            "{nested:#?}"
        );
        let inner_env = std::fs::read_to_string(env.path().join("inner.env")).expect("inner.env");
        for line in [
            "MAMA_MACHINE=m",
            "MAMA_JOB=inner",
            "MAMA_MAC=aa:bb:cc:dd:ee:01",
        ] {
            assert!(inner_env.lines().any(|l| l == line), "{line}: {inner_env}");
        }
        // Still busy for everyone else.
        env.run(["run", "m", "--no-wait", "--", "true"]).fails(75);

        env.touch("inner.go");
        let code = read_line_of(&env.path().join("inner.code"), LIMIT);
        assert_eq!(code, "0", "the inner run failed");
        let info = env.info("m");
        assert_eq!(info["job"], "outer", "{info:#}");
        assert_eq!(info["job_pid"], mama.pid(), "{info:#}");
        assert_eq!(info["job_host"], host_name(), "{info:#}");
        assert_eq!(info["job_user"], user_name().as_str(), "{info:#}");
        env.run(["run", "m", "--no-wait", "--", "true"]).fails(75);

        env.touch("outer.go");
        mama.finish(LIMIT).ok();
        assert_free(env, "m");
    }

    fn a_job_may_be_a_nested_run_itself(env: &TestEnv) {
        env.add("m", 1);
        let dir = dir_arg(env);
        let check = "echo $PPID > \"$1/inner.mama\"; \"$2\" info m --json > \"$1/inner.json\"";
        let run = env.run([
            "run",
            "m",
            "--job",
            "outer",
            "--",
            MAMA,
            "run",
            "m",
            "--job",
            "inner",
            "--no-wait",
            "--",
            "sh",
            "-c",
            check,
            "sh",
            &dir,
            MAMA,
        ]);
        assert_eq!(run.code, Some(0), "{run:#?}");
        assert!(!run.stderr.contains("leaving the record alone"), "{run:#?}");
        let inner_pid: u32 = read_line_of(&env.path().join("inner.mama"), LIMIT)
            .parse()
            .expect("inner mama's PID");
        let seen: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(env.path().join("inner.json")).expect("inner.json"),
        )
        .expect("JSON");
        assert_eq!(seen["job"], "outer", "{seen:#}");
        assert_ne!(seen["job_pid"], inner_pid, "{seen:#}");
        let events = env.events();
        for kind in ["claimed", "released"] {
            assert!(
                events
                    .iter()
                    .any(|e| e["event"] == kind && e["job"] == "inner" && e["pid"] == inner_pid),
                "{kind}: {events:#?}"
            );
        }
        assert_free(env, "m");
    }
}

#[test]
fn a_reservation_by_another_user_or_a_hand_start_makes_the_machine_busy() {
    let env = TestEnv::new();
    env.add("m", 1);
    let state = env.read_state();
    assert!(state.contains("<reservation/>"), "{state}");
    env.write_state(&state.replace("<reservation/>", "<reservation>someoneelse</reservation>"));
    env.run(["run", "m", "--no-wait", "--", "true"])
        .fails_saying(75, "reserved by someoneelse");
    env.run(["release-forced", "m"]).ok();

    let state = env.read_state();
    assert!(state.contains("<is_started/>"), "{state}");
    env.write_state(&state.replace("<is_started/>", "<is_started>1</is_started>"));
    env.run(["run", "m", "--no-wait", "--", "true"])
        .fails_saying(75, "is_started");
    env.run(["wait", "m", "--timeout", "0.3"]).fails(75);
}

on_both_backends! {
    fn a_reservation_by_the_caller_leaves_the_machine_free_for_the_caller(env: &TestEnv) {
        env.add("m", 1);
        env.run(["reserve", "m"]).ok();
        env.run(["run", "m", "--no-wait", "--", "true"]).ok();
        // The run left the reservation alone.
        env.run(["release", "m"]).ok();
    }

    fn machines_sharing_a_resource_take_turns(env: &TestEnv) {
        for (name, n, resources) in [("a", 1, "pdu1"), ("b", 2, "usb3 pdu1"), ("c", 3, "pdu2")] {
            env.run([
                "add",
                name,
                "--mac",
                &format!("aa:bb:cc:dd:ee:{n:02x}"),
                "--resources",
                resources,
            ])
            .ok();
        }
        let mut holder = hold(env, "a", "on a", "started", "go");
        env.run(["run", "b", "--no-wait", "--", "true"])
            .fails_saying(75, "a, which shares a resource with it, runs job 'on a'");
        // No shared resource: c runs while a does.
        env.run(["run", "c", "--no-wait", "--", "true"]).ok();
        assert!(holder.running());

        env.touch("go");
        assert_eq!(holder.finish(LIMIT).code, Some(0));
        env.run(["run", "b", "--no-wait", "--", "true"]).ok();
        for name in ["a", "b", "c"] {
            assert_free(env, name);
        }
    }

    fn an_unknown_machine_is_named_and_exits_125(env: &TestEnv) {
        env.add("m", 1);
        env.run(["run", "nosuch", "--", "true"])
            .fails_saying(125, "nosuch");
        env.run(["wait", "nosuch"]).fails_saying(1, "nosuch");
    }
}
