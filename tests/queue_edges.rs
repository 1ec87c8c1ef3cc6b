//! Fair turns at their edges: a caller that holds the machine already
//! (nested runs, its own reservation) never queues behind those waiting
//! for it; hand-edited queues; pools whose machines change; places kept
//! over a server restart.

use crate::common::*;

use std::os::unix::process::CommandExt;

/// A holder on `machine` whose job ends when `$1/NAME.go` appears.
fn hold(env: &TestEnv, machine: &str, name: &str) -> Bg {
    hold_until_go(env, machine, name)
}

/// Runs `mama ARGS` inside the job holding `m` while another run waits
/// for `m`: it must succeed at once, and the waiter run after the job.
fn inside_the_holders_job(env: &TestEnv, args: &str) {
    env.add("m", 1);
    let script = format!(
        "touch \"$1/outer.started\"; {wait}; {MAMA} {args}; echo $? > \"$1/nested\"",
        wait = wait_for_file("outer.go"),
    );
    let mut outer = env.start(sh_job(env, "m", &["--job", "outer"], &script));
    wait_until("outer to start", LIMIT, || {
        env.path().join("outer.started").exists()
    });
    let mut waiter = env.start(sh_job(env, "m", &["--job", "w"], "true"));
    waiter.expect_stderr("waiting to claim it", LIMIT);
    env.touch("outer.go");
    let out = outer.finish(LIMIT);
    let nested = std::fs::read_to_string(env.path().join("nested")).unwrap_or_default();
    assert_eq!(waiter.finish(LIMIT).code, Some(0));
    assert_eq!(
        nested.trim(),
        "0",
        "{args} inside the holder's job: {out:?}"
    );
}

on_both_backends! {
    /// A job that runs `mama run` on its own machine (nesting, allowed by
    /// the busy rules) while someone waits for that machine: the nested run
    /// must not queue behind the waiter, who waits for the outer job,
    /// which waits for the nested run.
    fn a_nested_run_goes_before_the_waiters_for_its_own_machine(env: &TestEnv) {
        inside_the_holders_job(env, "run m --job inner --wait-timeout 4 -- true");
    }

    /// The same without a run: `mama wait m` inside the job holding m.
    fn wait_inside_the_job_holding_the_machine_does_not_queue(env: &TestEnv) {
        inside_the_holders_job(env, "wait m --timeout 4");
    }

    /// A hand-edited (or imported) queue entry with the largest ticket on a
    /// machine nobody waits for: the next waiter's ticket overflows.
    fn a_huge_ticket_in_a_hand_edited_queue_is_renumbered_not_overflowed(env: &TestEnv) {
        let queue = r#"{"ticket":18446744073709551615,"token":"0123456789abcdef","pid":1,"since":0,"user":"x","host":"y"}"#;
        let lab = lab_xml(&[
            machine_xml("m", 1, &[]),
            machine_xml("other", 2, &[("job_queue", queue)]),
        ]);
        let file = env.path().join("import.xml");
        std::fs::write(&file, lab).unwrap();
        env.run(["import", file.to_str().unwrap()]).ok();
        let mut holder = hold(env, "m", "holder");
        let r = env.run(["run", "m", "--wait-timeout", "1", "--", "true"]);
        env.touch("holder.go");
        holder.finish(LIMIT);
        assert!(!r.stderr.contains("panicked"), "{r:?}");
        assert_eq!(r.code, Some(75), "{r:?}");
    }

    /// Stderr messages show names read from the lab escaped (SPEC): the
    /// pool's busy message prints the first candidate's name raw.
    fn pool_messages_show_lab_names_escaped(env: &TestEnv) {
        let sleeper = sleeper();
        let now = unix_now();
        let lab = lab_xml(&[
            machine_xml("ab", 1, &[("os", "x")]),
            machine_xml("c", 2, &[("os", "x")]),
        ]);
        let lab = with_job(&lab, "ab", "j1", Some(sleeper.pid()), now);
        let lab = with_job(&lab, "c", "j2", Some(sleeper.pid()), now);
        let file = env.path().join("import.xml");
        std::fs::write(&file, lab).unwrap();
        env.run(["import", file.to_str().unwrap()]).ok();
        // mama refuses such a name; a person edits it in by hand.
        let (plain, odd) = ("<name>ab</name>", "<name>a\u{202e}b</name>");
        match &env.db {
            None => env.write_state(&env.read_state().replace(plain, odd)),
            Some(db) => {
                let n = db
                    .connect()
                    .execute(
                        "UPDATE mama_machine SET element = replace(element, $1, $2), \
                         name = 'a\u{202e}b' WHERE name = 'ab'",
                        &[&plain, &odd],
                    )
                    .unwrap();
                assert_eq!(n, 1);
            }
        }
        let r = env.run(["run", "--any", "--where", "os=x", "--wait-timeout", "0.5", "--", "true"]);
        assert_eq!(r.code, Some(75), "{r:?}");
        assert!(!r.stderr.contains('\u{202e}'), "raw U+202E on stderr: {:?}", r.stderr);
    }
}

/// A reservation holder's own run waits behind a waiter that waits for
/// that very reservation: neither ever moves.
#[test]
#[cfg_attr(not(mama_root), ignore = "runs mama as nobody: run as root")]
fn a_reservation_holder_goes_before_waiters_who_cannot_have_the_machine() {
    let env = TestEnv::new();
    env.add("m", 1);
    // Open the lab to `nobody`.
    let chmod = |p: &std::path::Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    chmod(env.path(), 0o777);
    chmod(&env.path().join("mama.xml"), 0o666);
    env.run(["reserve", "m"]).ok();
    env.run(["list"]).ok();
    for entry in std::fs::read_dir(env.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            chmod(&p, 0o777);
        } else {
            chmod(&p, 0o666);
        }
    }
    let mut cmd = env.cmd([
        "run",
        "m",
        "--job",
        "nobodys",
        "--wait-timeout",
        "20",
        "--",
        "true",
    ]);
    cmd.uid(65534).gid(65534).env("HOME", "/");
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut waiter = Bg::start(cmd);
    let line = waiter.expect_stderr("waiting to claim it", LIMIT);
    assert!(line.contains("reserved by"), "{line}");
    // The holder of the reservation runs on it.
    let r = env.run(["run", "m", "--wait-timeout", "3", "--", "true"]);
    waiter.signal(libc::SIGTERM);
    waiter.finish(LIMIT);
    assert_eq!(
        r.code,
        Some(0),
        "the reservation's holder should get it: {r:?}"
    );
}

on_both_backends! {
    /// `--any a a`: one waiter counted twice in the queue.
    fn a_machine_named_twice_in_a_pool_holds_one_place(env: &TestEnv) {
        env.add("m", 1);
        let mut holder = hold(env, "m", "holder");
        let mut w = env.start(["run", "--any", "m", "m", "--", "true"]);
        w.expect_stderr("waiting to claim it", LIMIT);
        let info = env.info("m");
        env.touch("holder.go");
        holder.finish(LIMIT);
        w.finish(LIMIT);
        assert_eq!(info["queue_length"], 1, "{info:#}");
    }

    /// A pool waiter whose filter stops matching a machine leaves that
    /// machine's queue: a later waiter for it does not wait behind a place
    /// that would never be served.
    fn a_pool_waiter_leaves_machines_that_stop_matching(env: &TestEnv) {
        env.add("a", 1);
        env.add("b", 2);
        env.run(["set", "a", "os", "x"]).ok();
        env.run(["set", "b", "os", "x"]).ok();
        let mut ha = hold(env, "a", "ha");
        let mut hb = hold(env, "b", "hb");
        let mut pool = env.start(["run", "--where", "os=x", "--job", "pool", "--", "true"]);
        pool.expect_stderr("waiting to claim it", LIMIT);
        let mut late = env.start(["run", "a", "--job", "late", "--", "true"]);
        late.expect_stderr("waiting to claim it", LIMIT);
        // a leaves the pool, and its job ends: a is free.
        env.run(["set", "a", "os", "y"]).ok();
        env.touch("ha.go");
        ha.finish(LIMIT);
        // late gets a while the pool still waits for b.
        assert_eq!(late.finish(LIMIT).code, Some(0));
        assert!(pool.running());
        env.touch("hb.go");
        hb.finish(LIMIT);
        assert_eq!(pool.finish(LIMIT).code, Some(0));
    }
}

/// Database lab: a place counted as held because it was taken before the
/// server's start (epoch differs) but whose waiter is gone: the waiter
/// behind it sleeps on a free lock and looks again at once, over and over.
#[test]
#[cfg_attr(
    not(mama_postgres),
    ignore = "needs a PostgreSQL server run as the postgres user: run as root after tests/install-tools"
)]
fn a_waiter_behind_a_place_kept_over_a_restart_does_not_spin() {
    let env = TestEnv::postgres();
    let queue = r#"{"ticket":1,"token":"12345","pid":1,"since":0,"user":"x","host":"y","epoch":"1999-01-01 00:00:00+00"}"#;
    env.add("m", 1);
    let mut holder = hold(&env, "m", "holder");
    let mut client = env.db.as_ref().unwrap().connect();
    let n = client
        .execute(
            "UPDATE mama_machine SET element = replace(element, '</machine>', '<job_queue>' || $1 || '</job_queue></machine>')",
            &[&queue],
        )
        .unwrap();
    assert_eq!(n, 1);
    let mut cmd = env.cmd(["run", "m", "--wait-timeout", "4", "--", "true"]);
    cmd.env("MAMA_HOST_TIMEOUT", "86400");
    let mut w = Bg::start(cmd);
    w.expect_stderr("waiting to claim it", LIMIT);
    let ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>();
        after
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + after
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
    };
    let t0 = ticks(w.pid());
    // A measurement window, not a wait for a condition: the CPU a waiter
    // uses over two seconds of waiting.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let used = ticks(w.pid()) - t0;
    let r = w.finish(LIMIT);
    env.touch("holder.go");
    holder.finish(LIMIT);
    assert!(used < 10, "waiter used {used} ticks of CPU in 2 s: {r:?}");
}
