//! Never a live job taken over: nested runs, PID namespaces, a job's
//! leftover processes and clock steps, each with real processes.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// The state of `m` as `info --json` shows it: (state, stale).
fn state_of(env: &TestEnv) -> (String, bool) {
    let info = env.info("m");
    (
        info["state"].as_str().unwrap_or_default().to_string(),
        info["stale"].as_bool().unwrap_or_default(),
    )
}

/// A lab with the machine `m`.
fn lab() -> TestEnv {
    let env = TestEnv::new();
    env.add("m", 1);
    env
}

#[test]
fn killing_a_nested_run_leaves_the_outer_claim_standing() {
    let env = lab();
    let dir = dir_arg(&env);
    // The outer job starts a nested run on the same machine in the
    // background, then waits for `go`.
    let script = format!(
        "\"$2\" run m --job inner -- sh -c 'echo $PPID > \"$1/inner.mama\"; exec sleep 600' \
         sh \"$1\" >/dev/null 2>&1 & {}",
        wait_for_file("go")
    );
    let mut outer = env.start([
        "run", "m", "--job", "outer", "--", "sh", "-c", &script, "sh", &dir, MAMA,
    ]);
    let inner: u32 = read_line_of(&env.path().join("inner.mama"), LIMIT)
        .parse()
        .expect("the inner mama's PID");
    // SAFETY: plain system call on a PID the test just read.
    unsafe {
        libc::kill(inner as libc::pid_t, libc::SIGKILL);
    }
    wait_until("the inner mama to die", LIMIT, || !alive(inner));

    // The outer run still holds the machine: nobody may clear it or run.
    env.run(["run", "m", "--no-wait", "--", "true"])
        .fails_saying(75, "runs job 'outer'");
    assert_eq!(state_of(&env), ("busy".into(), false));
    assert_eq!(env.info("m")["job_pid"], outer.pid());

    env.touch("go");
    let run = outer.finish(LIMIT);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(!run.stderr.contains("leaving the record alone"), "{run:#?}");
    assert_eq!(state_of(&env), ("free".into(), false));
}

#[test]
fn a_process_that_left_the_jobs_group_keeps_the_machine_busy_and_info_names_it() {
    let env = lab();
    // A daemon of the job: a session (and process group) of its own.
    let mut mama = env.start(sh_job(
        &env,
        "m",
        &["--job", "bg"],
        "setsid sh -c 'echo $$ > \"$1/bg.pid\"; exec sleep 600' sh \"$1\" >/dev/null 2>&1 & \
         echo $$ > \"$1/job.pid\"; wait",
    ));
    let pid_in = |name: &str| -> u32 {
        read_line_of(&env.path().join(name), LIMIT)
            .parse()
            .expect("a PID")
    };
    let (job, bg) = (pid_in("job.pid"), pid_in("bg.pid"));
    wait_until("the daemon to run sleep", LIMIT, || {
        std::fs::read_to_string(format!("/proc/{bg}/comm")).is_ok_and(|c| c == "sleep\n")
    });
    mama.signal(libc::SIGKILL);
    wait_until("mama to die", LIMIT, || !mama.running());
    // The job's group goes with its mama; the daemon, outside it, stays.
    wait_until("the job's group to end", LIMIT, || {
        group_members(job).is_empty()
    });
    assert!(alive(bg), "the daemon should outlive mama");

    // Its mama is dead, but a process of the job runs on: busy, not stale,
    // and `info` names it.
    env.run(["run", "m", "--no-wait", "--", "true"])
        .fails_saying(75, "still hold its job lock");
    assert_eq!(state_of(&env), ("busy".into(), false));
    let info = env.run(["info", "m"]);
    assert!(info.ok().contains("hold its job lock"), "{info:#?}");
    assert!(
        info.ok()
            .lines()
            .any(|l| l.starts_with("Held by:") && l.ends_with(&format!(" PID {bg} (sleep)"))),
        "{info:#?}"
    );
    let holders = &env.info("m")["job_lock_holders"];
    assert_eq!(holders[0]["pid"], bg, "{holders:#}");
    assert_eq!(holders[0]["command"], "sleep", "{holders:#}");
    assert_eq!(holders.as_array().map(Vec::len), Some(1), "{holders:#}");

    // When the last process of the job ends, a waiter gets the machine.
    let mut waiter = env.start(["run", "m", "--job", "next", "--", "true"]);
    waiter.expect_stderr("waiting to claim it", LIMIT);
    // SAFETY: plain system call on the daemon's PID.
    unsafe {
        libc::kill(bg as libc::pid_t, libc::SIGKILL);
    }
    let run = waiter.finish(LIMIT);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("cleared stale job 'bg'"), "{run:#?}");
    assert!(has_event(&env.events(), "m", "stale_cleared", None));
}

#[test]
fn sigkill_of_an_outer_mama_ends_a_nested_runs_job_within_a_second() {
    let env = lab();
    // The outer job runs a nested run on the same machine, whose job
    // ignores TERM: the slowest way down.
    let script = "\"$2\" run m --job inner -- sh -c \
                  'trap \"\" TERM; echo $$ > \"$1/inner.pid\"; exec sleep 600' sh \"$1\" & \
                  wait";
    let mut outer = env.start([
        "run",
        "m",
        "--job",
        "outer",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        &dir_arg(&env),
        MAMA,
    ]);
    let inner: u32 = read_line_of(&env.path().join("inner.pid"), LIMIT)
        .parse()
        .expect("the inner job's PID");
    wait_until("the inner job to run sleep", LIMIT, || {
        std::fs::read_to_string(format!("/proc/{inner}/comm")).is_ok_and(|c| c == "sleep\n")
    });
    outer.signal(libc::SIGKILL);
    // The outer watcher's TERM and then KILL end the nested mama, whose own
    // watcher then ends its job.
    wait_until(
        "the nested job to end within a second",
        Duration::from_secs(1),
        || group_members(inner).is_empty(),
    );
    outer.finish(LIMIT);
    env.run(["run", "m", "--no-wait", "--", "true"])
        .ok_saying("cleared stale job 'outer'");
}

/// `mama ARGS` in a PID namespace of its own, where it is PID 1 with a
/// /proc of its own (as in a container that shares the lab folder and the
/// host name). The namespace dies with the unshare process.
fn in_container(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    remove_mama_env(&mut cmd);
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", MAMA])
        .args(args)
        .env("MAMA_STATE", &env.state)
        .env("MAMA_POLL_INTERVAL", "0.2")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null());
    cmd
}

/// Starts `mama run m --job LABEL` in a container of its own, with a job
/// that waits for the file `until`; returns once the job has started.
fn start_boxed(env: &TestEnv, label: &str, until: &str) -> Bg {
    let dir = dir_arg(env);
    let script = format!("touch \"$1/{label}.started\"; {}", wait_for_file(until));
    let boxed = Bg::start(in_container(
        env,
        &[
            "run", "m", "--job", label, "--", "sh", "-c", &script, "sh", &dir,
        ],
    ));
    let started = env.path().join(format!("{label}.started"));
    wait_until("the container's job", LIMIT, || started.exists());
    boxed
}

fn run_in_container(env: &TestEnv, args: &[&str]) -> Run {
    in_container(env, args)
        .output()
        .expect("unshare runs")
        .into()
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_unshare)),
    ignore = "makes PID namespaces: run as root after tests/install-tools (unshare)"
)]
fn a_claim_from_the_host_is_live_inside_a_pid_namespace() {
    let env = lab();
    let mut holder = env.start(sh_job(&env, "m", &["--job", "host"], &wait_for_file("go")));
    wait_until("the claim", LIMIT, || env.info("m")["job"] == "host");

    let inside = run_in_container(&env, &["info", "m", "--json"]);
    let view: serde_json::Value = serde_json::from_str(inside.ok()).expect("JSON");
    assert_eq!(view["state"], "busy", "{view:#}");
    assert_eq!(view["stale"], false, "{view:#}");
    run_in_container(&env, &["run", "m", "--no-wait", "--", "true"])
        .fails_saying(75, "runs job 'host'");

    env.touch("go");
    assert_eq!(holder.finish(LIMIT).code, Some(0));
    run_in_container(&env, &["run", "m", "--no-wait", "--", "true"]).ok();
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_unshare)),
    ignore = "makes PID namespaces: run as root after tests/install-tools (unshare)"
)]
fn two_containers_whose_mama_is_pid_1_never_share_a_machine() {
    let env = lab();
    let mut a = start_boxed(&env, "a", "go");
    assert_eq!(
        env.info("m")["job_pid"],
        1,
        "mama is PID 1 in its namespace"
    );

    // The other container's mama is PID 1 too: that is not its claim.
    run_in_container(&env, &["run", "m", "--job", "b", "--no-wait", "--", "true"])
        .fails_saying(75, "runs job 'a'");
    // Nor is it the host's init's: the host sees a live claim it cannot
    // judge by PID, held by its job lock.
    assert_eq!(state_of(&env), ("busy".into(), false));

    env.touch("go");
    assert_eq!(a.finish(LIMIT).code, Some(0));
    assert_eq!(state_of(&env), ("free".into(), false));
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_unshare)),
    ignore = "makes PID namespaces: run as root after tests/install-tools (unshare)"
)]
fn a_crashed_containers_claim_goes_stale_although_pid_1_lives_on() {
    let env = lab();
    let mut container = start_boxed(&env, "boxed", "never");
    assert_eq!(env.info("m")["job_pid"], 1);
    // The container dies whole: its PID 1 (mama) and all in it.
    container.signal(libc::SIGKILL);
    wait_until("the container to die", LIMIT, || !container.running());
    wait_until("the container's claim to go stale", LIMIT, || {
        state_of(&env) == ("stale".into(), true)
    });
    let reason = env.info("m")["stale_reason"].to_string();
    assert!(reason.contains("another PID namespace"), "{reason}");

    let run = env.run(["run", "m", "--no-wait", "--", "true"]);
    assert!(
        run.ok_saying("cleared stale job 'boxed'")
            .contains("another PID namespace")
    );
}

#[test]
fn a_claim_from_an_earlier_boot_of_this_host_is_stale_another_hosts_is_not() {
    let env = lab();
    let host = host_name();
    let sleeping = sleeper();
    // A live PID of this namespace, recorded in another boot: the PID
    // means nothing now.
    let origin = "boot=00000000-0000-0000-0000-000000000000 pidns=4026531836 start=1";
    let record = |host: &str| {
        with_job(&env.read_state(), "m", "old", Some(sleeping.pid()), unix_now()).replace(
            "<startcmd/>",
            &format!("<job_host>{host}</job_host>\n    <job_origin>{origin}</job_origin>\n    <startcmd/>"),
        )
    };
    let clean = env.read_state();
    env.write_state(&record(&host));
    let info = env.info("m");
    assert_eq!(info["stale"], true, "{info:#}");
    assert!(
        info["stale_reason"]
            .to_string()
            .contains("before this host last booted"),
        "{info:#}"
    );

    env.write_state(&clean);
    env.write_state(&record("elsewhere"));
    let info = env.info("m");
    assert_eq!(
        (info["state"].clone(), info["stale"].clone()),
        ("busy".into(), false.into())
    );
    env.run(["run", "m", "--no-wait", "--", "true"])
        .fails_saying(75, "on host elsewhere");
}

#[test]
#[cfg_attr(
    not(mama_faketime),
    ignore = "needs faketime: run tests/install-tools as root"
)]
fn a_clock_step_after_the_claim_does_not_make_a_live_job_stale() {
    let env = lab();
    // The claiming mama's clock is 5 s behind the judges': as if the
    // clock stepped forward by 5 s right after the claim.
    let mut faked = Command::new("faketime");
    remove_mama_env(&mut faked);
    faked
        .args(["-f", "-5s", MAMA])
        .args(sh_job(
            &env,
            "m",
            &["--job", "stepped"],
            &wait_for_file("go"),
        ))
        .env("MAMA_STATE", &env.state)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null());
    let mut holder = Bg::start(faked);
    wait_until("the claim", LIMIT, || env.info("m")["job"] == "stepped");
    let info = env.info("m");
    let behind = unix_now() - info["job_timestamp"].as_i64().expect("a timestamp");
    assert!(
        behind >= 4,
        "the claim should be stamped 5 s early: {info:#}"
    );

    assert_eq!(state_of(&env), ("busy".into(), false));
    env.run(["run", "m", "--no-wait", "--", "true"])
        .fails_saying(75, "runs job 'stepped'");
    env.touch("go");
    assert_eq!(holder.finish(LIMIT).code, Some(0));
}

#[test]
fn a_nested_run_that_outlives_its_outer_job_keeps_the_machine() {
    let env = lab();
    let dir = dir_arg(&env);
    // The outer job starts a nested run in the background and ends as soon
    // as that run's job has started.
    let script = format!(
        "\"$2\" run m --job step -- sh -c 'touch \"$1/step.started\"; {}' sh \"$1\" \
         >/dev/null 2>&1 & {}",
        wait_for_file("step.go"),
        wait_for_file("step.started")
    );
    let outer = env.run([
        "run", "m", "--job", "outer", "--", "sh", "-c", &script, "sh", &dir, MAMA,
    ]);
    assert_eq!(outer.code, Some(0), "{outer:#?}");

    // The nested run still drives the machine: nobody else gets it.
    env.run(["run", "m", "--no-wait", "--", "true"])
        .fails_saying(75, "still hold its job lock");
    assert_eq!(state_of(&env), ("busy".into(), false));
    let mut waiter = env.start(["run", "m", "--job", "next", "--", "true"]);
    waiter.expect_stderr("waiting to claim it", LIMIT);
    env.touch("step.go");
    assert_eq!(waiter.finish(LIMIT).code, Some(0));
    let events = env.events();
    let order: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "claimed" || e["event"] == "released")
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap_or(""),
                e["job"].as_str().unwrap_or("")
            )
        })
        .collect();
    let step_released = order.iter().position(|e| e == "released step");
    let next_claimed = order.iter().position(|e| e == "claimed next");
    assert!(step_released < next_claimed, "{order:#?}");
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_unshare)),
    ignore = "makes PID namespaces: run as root after tests/install-tools (unshare)"
)]
fn a_pid_namespace_that_kept_the_hosts_proc_never_nests_in_a_strangers_claim() {
    let env = lab();
    let dir = dir_arg(&env);
    // One PID namespace that kept the host's /proc: there /proc/2 is the
    // host's kthreadd, not the mama that is PID 2 inside, and b's
    // ancestors (b runs in a subshell) read through it lead to that very
    // process.
    let script = format!(
        "\"$2\" run m --job a -- sh -c 'touch \"$1/a.started\"; {go}' sh \"$1\" & \
         {started}; (\"$2\" run m --job b --no-wait -- true; echo $? > \"$1/b.code\"); \
         touch \"$1/go\"; wait",
        go = wait_for_file("go"),
        started = wait_for_file("a.started"),
    );
    let mut cmd = Command::new("unshare");
    remove_mama_env(&mut cmd);
    cmd.args([
        "--pid",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
        &script,
        "sh",
        &dir,
        MAMA,
    ])
    .env("MAMA_STATE", &env.state)
    .env("NO_COLOR", "1")
    .stdin(std::process::Stdio::null());
    let mut box_ = Bg::start(cmd);
    assert_eq!(read_line_of(&env.path().join("b.code"), LIMIT), "75");
    assert_eq!(box_.finish(LIMIT).code, Some(0));
    let events = env.events();
    assert!(
        !has_event(&events, "m", "claimed", Some("nested in 'a'")),
        "{events:#?}"
    );
}

#[test]
fn a_run_inside_a_job_whose_record_was_cleared_nests_instead_of_waiting_for_itself() {
    let env = lab();
    let dir = dir_arg(&env);
    let script = format!(
        "touch \"$1/started\"; {}; \"$2\" run m --job step -- true; echo $? > \"$1/step.code\"",
        wait_for_file("go")
    );
    let mut outer = env.start([
        "run", "m", "--job", "ci", "--", "sh", "-c", &script, "sh", &dir, MAMA,
    ]);
    wait_until("the job", LIMIT, || env.path().join("started").exists());
    env.run(["clear", "m"]).ok_saying("still hold its job lock");
    env.touch("go");
    assert_eq!(read_line_of(&env.path().join("step.code"), LIMIT), "0");
    assert_eq!(outer.finish(LIMIT).code, Some(0));
    assert_eq!(state_of(&env), ("free".into(), false));
}

#[test]
fn a_leftover_of_a_killed_run_may_still_run_mama_on_its_machine() {
    let env = lab();
    let dir = dir_arg(&env);
    // The job leaves a daemon (a session of its own, so its mama's death
    // does not end it) that, later, runs a step on the machine; its mama
    // is killed before that.
    let late = format!(
        "setsid sh -c 'touch \"$1/started\"; {}; \"$2\" run m --job late -- true; \
         echo $? > \"$1/late.code\"' sh \"$1\" \"$2\" >/dev/null 2>&1 & wait",
        wait_for_file("go")
    );
    let mut mama = env.start([
        "run", "m", "--job", "ci", "--", "sh", "-c", &late, "sh", &dir, MAMA,
    ]);
    wait_until("the job", LIMIT, || env.path().join("started").exists());
    mama.signal(libc::SIGKILL);
    wait_until("mama to die", LIMIT, || !mama.running());
    env.touch("go");
    assert_eq!(read_line_of(&env.path().join("late.code"), LIMIT), "0");
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_unshare)),
    ignore = "makes PID namespaces: run as root after tests/install-tools (unshare)"
)]
fn a_run_nested_across_a_pid_namespace_nests() {
    let env = lab();
    let run = env.run([
        "run",
        "m",
        "--job",
        "outer",
        "--",
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        MAMA,
        "run",
        "m",
        "--job",
        "inner",
        "--no-wait",
        "--",
        "true",
    ]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(has_event(
        &env.events(),
        "m",
        "claimed",
        Some("nested in 'outer'")
    ));
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_unshare)),
    ignore = "makes PID namespaces: run as root after tests/install-tools (unshare)"
)]
fn a_waiting_mama_that_is_pid_1_ends_on_sigterm() {
    let env = lab();
    let mut holder = env.start(sh_job(&env, "m", &["--job", "host"], &wait_for_file("go")));
    wait_until("the claim", LIMIT, || env.info("m")["job"] == "host");
    let mut container = Bg::start(in_container(&env, &["run", "m", "--", "true"]));
    container.expect_stderr("waiting to claim it", LIMIT);
    let unshare = container.pid();
    let mama = children_of(unshare);
    assert_eq!(mama.len(), 1, "unshare's child, mama: {mama:?}");
    // SAFETY: plain system call on the container's mama.
    unsafe {
        libc::kill(mama[0] as libc::pid_t, libc::SIGTERM);
    }
    wait_until("the container's mama to end", LIMIT, || !alive(mama[0]));
    env.touch("go");
    assert_eq!(holder.finish(LIMIT).code, Some(0));
    let _ = container.finish(LIMIT);
}

#[test]
fn a_damaged_timestamp_never_panics() {
    let env = lab();
    let sleeping = sleeper();
    for timestamp in [i64::MIN, -9_223_372_036_854_775_000, i64::MAX] {
        let clean = env.read_state();
        write_job(&env, "m", "odd", Some(sleeping.pid()), timestamp);
        env.run(["list"]).ok();
        env.run(["info", "m"]).ok();
        let run = env.run(["run", "m", "--no-wait", "--", "true"]);
        assert!(matches!(run.code, Some(0 | 75)), "{run:#?}");
        assert!(!run.stderr.contains("panicked"), "{run:#?}");
        env.write_state(&clean);
    }
}

#[test]
fn list_shows_a_machine_busy_while_its_job_lock_is_held_whatever_its_pid_says() {
    let env = lab();
    env.add("other", 2);
    // The job leaves a daemon (a session of its own), which keeps the job
    // lock when its mama is killed (and, with it, the job's group).
    let dir = dir_arg(&env);
    let script = "setsid sh -c 'echo $$ > \"$1/bg\"; exec sleep 600' sh \"$1\" & wait";
    let holder = env.start(["run", "m", "--", "sh", "-c", script, "sh", &dir]);
    let bg: u32 = read_line_of(&env.path().join("bg"), LIMIT)
        .trim()
        .parse()
        .expect("the background PID");
    holder.signal(libc::SIGKILL);
    wait_until("the killed mama is gone", LIMIT, || !alive(holder.pid()));
    // A claim of `other` whose PID is dead, and no lock behind it.
    let state = env.read_state();
    let at = state.find("<name>other</name>").expect("other");
    let job = at + state[at..].find("<job/>").expect("its job");
    let mut text = state.clone();
    text.replace_range(
        job..job + "<job/>\n    <job_pid/>".len(),
        &format!("<job>gone</job>\n    <job_pid>{}</job_pid>", dead_pid()),
    );
    env.write_state(&text);

    let list = env.run(["list", "--json"]).json();
    let shown = |name: &str| {
        list.as_array()
            .expect("an array")
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} listed"))
    };
    // The PID recorded on m is its killed mama's: only the lock says busy.
    assert_eq!(
        (&shown("m")["state"], &shown("m")["stale"]),
        (&serde_json::json!("busy"), &serde_json::json!(false))
    );
    assert_eq!(shown("other")["state"], "stale");
    // As info, which looks at the PID, tells it.
    for name in ["m", "other"] {
        let info = env.info(name);
        for field in ["state", "stale", "stale_reason", "job_pid"] {
            assert_eq!(shown(name)[field], info[field], "{name}: {field}");
        }
    }
    let text = env.run(["info", "m"]).ok().to_string();
    assert!(text.contains("its PID says nothing here"), "{text}");

    // The last process of the job ends: the lock is free, the claim stale.
    // SAFETY: a process this test's job started.
    unsafe {
        libc::kill(bg as libc::pid_t, libc::SIGKILL);
    }
    wait_until("the background process is gone", LIMIT, || !alive(bg));
    wait_until("m shows stale", LIMIT, || {
        env.run(["list", "--json"]).json()[0]["state"] == "stale"
    });
}
