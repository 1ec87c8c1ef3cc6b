//! Fair turns and pools: waiters served in arrival order, with their place
//! shown; a waiter that dies leaves; `--any` and `--where` take whichever
//! machine frees first. On both backends.

use crate::common::*;

use std::io::Read;
use std::sync::{Arc, Mutex};

/// A holder on `machine` whose job ends when `$1/NAME.go` appears.
fn hold(env: &TestEnv, machine: &str, name: &str) -> Bg {
    hold_until_go(env, machine, name)
}

/// A waiter for `machine` whose job appends `label` to `$1/order`; returned
/// once it has its place in the queue (it said so).
fn waiter(env: &TestEnv, machine: &str, label: &str) -> Bg {
    let script = format!("echo {label} >> \"$1/order\"");
    let mut waiter = env.start(sh_job(env, machine, &["--job", label], &script));
    waiter.expect_stderr("waiting to claim it", LIMIT);
    waiter
}

fn order(env: &TestEnv) -> Vec<String> {
    std::fs::read_to_string(env.path().join("order"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

on_both_backends! {
    fn waiters_are_served_in_arrival_order(env: &TestEnv) {
        env.add("m", 1);
        for round in 0..3 {
            let _ = std::fs::remove_file(env.path().join("order"));
            let holder_name = format!("holder{round}");
            let mut holder = hold(env, "m", &holder_name);
            let labels: Vec<String> = (0..10).map(|i| format!("w{round}-{i}")).collect();
            let mut waiters: Vec<Bg> = labels.iter().map(|l| waiter(env, "m", l)).collect();
            env.touch(&format!("{holder_name}.go"));
            assert_eq!(holder.finish(LIMIT).code, Some(0));
            for w in &mut waiters {
                assert_eq!(w.finish(LIMIT).code, Some(0));
            }
            assert_eq!(order(env), labels, "round {round}");
        }
        assert_eq!(env.info("m")["queue"], serde_json::json!([]));
    }

    fn info_and_list_show_the_queue_and_each_waiter_its_place(env: &TestEnv) {
        env.add("m", 1);
        env.add("other", 2);
        let mut holder = hold(env, "m", "holder");
        let mut first = waiter(env, "m", "first");
        let mut second = env.start(sh_job(env, "m", &["--job", "second"], "true"));
        let line = second.expect_stderr("waiting to claim it", LIMIT);
        assert!(line.contains("(1 ahead of you)"), "{line}");
        assert!(!first.seen.join("\n").contains("ahead of you"), "{:?}", first.seen);

        let info = env.info("m");
        let queue = info["queue"].as_array().expect("a queue").clone();
        assert_eq!(queue.len(), 2, "{info:#}");
        assert_eq!(info["queue_length"], 2);
        assert_eq!(queue[0]["pid"], first.pid());
        assert_eq!(queue[0]["job"], "first");
        assert_eq!(queue[1]["pid"], second.pid());
        assert_eq!(queue[1]["user"], user_name().as_str());
        assert_eq!(queue[1]["host"], host_name().as_str());
        let since = queue[0]["since"].as_i64().expect("since");
        assert!((unix_now() - since).abs() < 60, "{info:#}");
        let text = env.run(["info", "m"]).ok().to_string();
        assert!(text.contains("Waiting:") && text.contains("1. "), "{text}");
        assert!(text.contains(&format!("(PID {}), job 'first'", first.pid())), "{text}");

        let list = env.run(["list", "--json"]).json();
        assert_eq!(list[0]["queue_length"], 2);
        assert_eq!(list[1]["queue_length"], 0);
        let table = env.run(["list"]).ok().to_string();
        assert!(table.contains("busy +2"), "{table}");

        env.touch("holder.go");
        for bg in [&mut holder, &mut first, &mut second] {
            assert_eq!(bg.finish(LIMIT).code, Some(0));
        }
        assert_eq!(env.info("m")["queue_length"], 0);
    }

    fn a_killed_waiter_leaves_the_queue_and_those_behind_move_up(env: &TestEnv) {
        env.add("m", 1);
        let mut holder = hold(env, "m", "holder");
        let mut doomed = waiter(env, "m", "doomed");
        let mut next = waiter(env, "m", "next");
        doomed.signal(libc::SIGKILL);
        doomed.finish(LIMIT);
        wait_until("the dead waiter to leave the queue", LIMIT, || {
            env.info("m")["queue_length"] == 1
        });
        assert_eq!(env.info("m")["queue"][0]["job"], "next");
        env.touch("holder.go");
        assert_eq!(holder.finish(LIMIT).code, Some(0));
        assert_eq!(next.finish(LIMIT).code, Some(0));
        assert_eq!(order(env), ["next"]);
    }

    fn a_waiter_that_gives_up_leaves_its_place(env: &TestEnv) {
        env.add("m", 1);
        let mut holder = hold(env, "m", "holder");
        env.run(["run", "m", "--wait-timeout", "0.5", "--", "true"]).fails(75);
        env.run(["wait", "m", "--timeout", "0.3"]).fails(75);
        // Gone from the lab, not only judged gone.
        assert!(!env.run(["export"]).ok().contains("job_queue"));
        env.touch("holder.go");
        assert_eq!(holder.finish(LIMIT).code, Some(0));
    }

    fn machines_sharing_a_resource_serve_their_waiters_in_one_order(env: &TestEnv) {
        env.run(["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01", "--resources", "pdu1"]).ok();
        env.run(["add", "rig2", "--mac", "aa:bb:cc:dd:ee:02", "--resources", "pdu1"]).ok();
        let mut holder = hold(env, "rig1", "holder");
        // The waiter for rig2 came first: a later waiter for rig1 does not
        // pass it when the holder lets the resource go.
        let mut early = waiter(env, "rig2", "early");
        let mut late = waiter(env, "rig1", "late");
        let line = late.seen.join("\n");
        assert!(line.contains("(1 ahead of you)"), "{line}");
        env.touch("holder.go");
        assert_eq!(holder.finish(LIMIT).code, Some(0));
        assert_eq!(early.finish(LIMIT).code, Some(0));
        assert_eq!(late.finish(LIMIT).code, Some(0));
        assert_eq!(order(env), ["early", "late"]);
    }

    fn any_takes_the_first_free_machine_and_tells_the_job_which(env: &TestEnv) {
        for (n, name) in ["m0", "m1", "m2"].into_iter().enumerate() {
            env.add(name, n as u8 + 1);
        }
        env.run(["set", "m2", "os", "fedora"]).ok();
        let mut holder = hold(env, "m0", "holder");
        let echo = ["--", "sh", "-c", "echo $MAMA_MACHINE"];
        let run = |args: &[&str]| {
            let mut all = vec!["run"];
            all.extend_from_slice(args);
            all.extend_from_slice(&echo);
            env.run(all)
        };
        assert_eq!(run(&["--any", "m0", "m1"]).ok(), "m1\n");
        assert_eq!(run(&["--where", "os=fedora"]).ok(), "m2\n");
        assert_eq!(run(&["--any", "m0", "m2", "--where", "os=fedora"]).ok(), "m2\n");
        run(&["--any", "m0", "--no-wait"]).fails_saying(75, "m0");
        run(&["--where", "os=plan9"]).fails_saying(1, "no machine matches: where os=plan9");
        run(&["--where", "colour=red"]).fails_saying(125, "unknown field 'colour'");
        run(&["--any", "m0", "nope"]).fails_saying(125, "unknown machine 'nope'");
        run(&["m0", "m1"]).fails_saying(125, "--any");
        assert_eq!(env.run(["wait", "--any", "m0", "m1"]).ok(), "m1\n");
        env.run(["wait", "--where", "os=plan9"]).fails_saying(1, "no machine matches");
        env.run(["wait", "--any", "m0", "--timeout", "0.3"]).fails(75);

        // A pool waiter waits in each candidate's queue and takes the
        // first that frees.
        let mut pool = env.start(["run", "--any", "m0", "--job", "pool", "--", "true"]);
        pool.expect_stderr("waiting to claim it", LIMIT);
        assert_eq!(env.info("m0")["queue"][0]["job"], "pool");
        env.touch("holder.go");
        assert_eq!(holder.finish(LIMIT).code, Some(0));
        assert_eq!(pool.finish(LIMIT).code, Some(0));
        assert_eq!(env.info("m0")["queue_length"], 0);
    }

    fn twenty_runs_of_any_never_put_two_jobs_on_one_machine(env: &TestEnv) {
        env.add("m0", 1);
        env.add("m1", 2);
        let script = "mkdir \"$1/inside-$MAMA_MACHINE\" || exit 99; sleep 0.02; \
                      rmdir \"$1/inside-$MAMA_MACHINE\"";
        let mut args: Vec<String> = vec!["run".into(), "--any".into(), "m0".into(), "m1".into()];
        args.extend(["--", "sh", "-c", script, "sh"].map(String::from));
        args.push(env.path().display().to_string());
        let mut runs: Vec<std::process::Child> = (0..20).map(|_| env.spawn(&args)).collect();
        for child in &mut runs {
            let run = finish_child(child, "run --any");
            assert_eq!(run.code, Some(0), "{run:#?}");
        }
        let events = env.events();
        let claims = events.iter().filter(|e| e["event"] == "claimed").count();
        assert_eq!(claims, 20);
    }
}

/// The bytes `cmd` writes to its stdout so far, read on a thread.
fn collect_stdout(child: &mut std::process::Child) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("buffer").extend_from_slice(&buf[..n]);
        }
    });
    seen
}

#[test]
#[cfg_attr(
    not(mama_script),
    ignore = "needs script (util-linux): run tests/install-tools as root"
)]
fn on_a_terminal_the_waiting_line_follows_the_place() {
    let env = TestEnv::new();
    env.add("m", 1);
    let mut holder = hold(&env, "m", "holder");
    let mut one = waiter(&env, "m", "one");
    let mut two = waiter(&env, "m", "two");
    let mut script = std::process::Command::new("script");
    let command = format!("'{MAMA}' run m --job three -- true");
    script
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    remove_mama_env(&mut script);
    script
        .env("MAMA_STATE", &env.state)
        .env("NO_COLOR", "1")
        .current_dir(env.path());
    let mut three = script.spawn().expect("script(1) starts");
    let screen = collect_stdout(&mut three);
    let shown = || String::from_utf8_lossy(&screen.lock().expect("buffer")).into_owned();
    wait_until("the third waiter's place", LIMIT, || {
        shown().contains("(2 ahead of you)")
    });
    one.signal(libc::SIGKILL);
    one.finish(LIMIT);
    wait_until("the line to follow the place", LIMIT, || {
        shown().contains("\rmama: waited") && shown().contains("(1 ahead of you)")
    });
    env.touch("holder.go");
    assert_eq!(holder.finish(LIMIT).code, Some(0));
    assert_eq!(two.finish(LIMIT).code, Some(0));
    let run = finish_child(&mut three, "the third waiter");
    assert_eq!(run.code, Some(0), "{run:#?}");
    let text = shown();
    let last = text.rsplit('\r').nth(1).unwrap_or_default();
    assert!(
        !last.contains("ahead"),
        "first in line at the end: {text:?}"
    );
}
