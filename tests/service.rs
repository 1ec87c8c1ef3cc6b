//! Machines out of service (SPEC "Out of service"): `offline` and
//! `online`; nothing but a health check claims a machine out of service
//! (`run` and `wait` exit 69 at once, pools pass it by, waiters leave),
//! while a job running on it finishes and releases it; nothing powers it
//! up; `list`, `info` and their JSON show the mark; `check` runs the
//! machine's health command and takes it out or brings it back; failed
//! starts are counted. On both backends.

use crate::common::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A trust file with `*`, as `XDG_CONFIG_HOME` finds it: a database lab
/// runs the commands written into it (healthcmd, startcmd) only where it
/// is trusted.
fn trusting(env: &TestEnv) -> PathBuf {
    env.trust("*")
}

/// `mama ARGS` as a user who trusts the lab.
fn mama(env: &TestEnv, args: &[&str]) -> Run {
    env.run_with_config(&trusting(env), args)
}

/// [`mama`] in the background.
fn mama_bg(env: &TestEnv, args: &[&str]) -> Bg {
    let mut cmd = env.cmd(args);
    cmd.env("XDG_CONFIG_HOME", trusting(env));
    Bg::start(cmd)
}

/// The path of `name` in the world's folder, as text for a shell command.
fn path_of(env: &TestEnv, name: &str) -> String {
    env.path().join(name).display().to_string()
}

fn exists(env: &TestEnv, name: &str) -> bool {
    env.path().join(name).exists()
}

/// The row of `machine` in the `list` table.
fn row(table: &str, machine: &str) -> String {
    table
        .lines()
        .find(|l| l.contains(&format!(" {machine} ")))
        .unwrap_or_else(|| panic!("no row for {machine}: {table}"))
        .to_string()
}

on_both_backends! {
    fn run_and_wait_on_a_machine_out_of_service_exit_69_at_once(env: &TestEnv) {
        env.add("rig1", 1);
        env.run(["offline", "rig1", "--reason", "dead serial console"])
            .ok_saying("rig1 is out of service: dead serial console");
        let ran = path_of(env, "ran");
        let begun = Instant::now();
        let run = env.run(["run", "rig1", "--wait-timeout", "10", "--", "touch", &ran]);
        let said = run.fails_saying(69, "rig1 is out of service: dead serial console (since ");
        assert!(said.contains(&format!(", by {})", user_name())), "{said}");
        assert!(!exists(env, "ran"), "the job never ran");
        env.run(["run", "rig1", "--no-wait", "--", "touch", &ran]).fails(69);
        env.run(["wait", "rig1", "--timeout", "10"])
            .fails_saying(69, "rig1 is out of service: dead serial console");
        assert!(begun.elapsed() < Duration::from_secs(8), "at once, not after a wait");
        assert!(!exists(env, "ran"));
        assert!(env.event_details("rig1", "claimed").is_empty(), "nothing was claimed");

        // Out of service already: nothing changes, and it says so.
        let before = env.stored();
        env.run(["offline", "rig1", "--reason", "another reason"])
            .ok_saying("rig1 is out of service already: dead serial console");
        assert_eq!(env.stored(), before);
        let events = env.events();
        let offline: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["event"] == "offline").collect();
        assert_eq!(offline.len(), 1, "{offline:?}");
        assert_eq!(offline[0]["detail"], "dead serial console");
        assert_eq!(offline[0]["user"], user_name().as_str());

        env.run(["online", "rig1"]).ok_saying("rig1 is back in service");
        let before = env.stored();
        env.run(["online", "rig1"]).ok_saying("rig1 is in service already");
        assert_eq!(env.stored(), before);
        assert_eq!(env.event_details("rig1", "online").len(), 1);
        env.run(["run", "rig1", "--", "touch", &ran]).ok();
        assert!(exists(env, "ran"));

        // A reason is needed, and one of words.
        env.run(["offline", "rig1"]).fails(2);
        env.run(["offline", "rig1", "--reason", "  "]).fails_saying(1, "the reason is empty");
        env.run(["offline", "rig1", "--reason", "two\nlines"])
            .fails_saying(1, "control character");
        env.run(["offline", "rig9", "--reason", "x"]).fails_saying(1, "unknown machine 'rig9'");
        assert_eq!(env.info("rig1")["state"], "free");
    }

    fn pools_pass_a_machine_out_of_service_by(env: &TestEnv) {
        for (name, n, os) in [("rig1", 1, "fedora"), ("rig2", 2, "fedora"), ("rig3", 3, "debian")] {
            env.add(name, n);
            env.run(["set", name, "os", os]).ok();
        }
        let which = ["--", "sh", "-c", "echo $MAMA_MACHINE"];
        env.run(["offline", "rig1", "--reason", "dead serial console"]).ok();
        // The first named, free but out of service, is passed by.
        let any: Vec<&str> = ["run", "--any", "rig1", "rig2"].into_iter().chain(which).collect();
        assert_eq!(env.run(&any).ok(), "rig2\n");
        assert_eq!(env.run(["wait", "--any", "rig1", "rig2"]).ok(), "rig2\n");
        let fedora: Vec<&str> = ["run", "--where", "os=fedora"].into_iter().chain(which).collect();
        assert_eq!(env.run(&fedora).ok(), "rig2\n");

        // Every candidate out of service: 69 at once, saying why each is.
        env.run(["offline", "rig2", "--reason", "flaky network"]).ok();
        let ran = path_of(env, "ran");
        let run = env.run(["run", "--any", "rig1", "rig2", "--wait-timeout", "10", "--", "touch", &ran]);
        let said = run.fails_saying(69, "every machine of any of rig1 rig2 is out of service");
        assert!(said.contains("rig1: dead serial console") && said.contains("rig2: flaky network"), "{said}");
        env.run(["run", "--where", "os=fedora", "--wait-timeout", "10", "--", "touch", &ran])
            .fails_saying(69, "out of service");
        env.run(["wait", "--where", "os=fedora", "--timeout", "10"]).fails(69);
        env.run(["wait", "--any", "rig1", "rig2", "--timeout", "10"])
            .fails_saying(69, "every machine of any of rig1 rig2 is out of service");
        assert!(!exists(env, "ran"));
        // Filters that match nothing still say so.
        env.run(["run", "--where", "os=plan9", "--", "true"]).fails_saying(1, "no machine matches");
        let all: Vec<&str> = ["run", "--any"].into_iter().chain(which).collect();
        assert_eq!(env.run(&all).ok(), "rig3\n");

        // One out of service, one only busy: a waiter waits for the busy one.
        env.run(["online", "rig2"]).ok();
        let mut holder = hold_until_go(env, "rig2", "holder");
        let dir = dir_arg(env);
        let mut waiter = env.start([
            "run", "--any", "rig1", "rig2", "--",
            "sh", "-c", "echo $MAMA_MACHINE > \"$1/got\"", "sh", &dir,
        ]);
        waiter.expect_stderr("waiting to claim it", LIMIT);
        env.touch("holder.go");
        assert_eq!(holder.finish(LIMIT).code, Some(0));
        assert_eq!(waiter.finish(LIMIT).code, Some(0));
        assert_eq!(std::fs::read_to_string(env.path().join("got")).unwrap_or_default(), "rig2\n");
    }

    fn a_running_job_finishes_and_releases_while_its_waiters_leave_with_69(env: &TestEnv) {
        env.add("rig1", 1);
        let mut holder = hold_until_go(env, "rig1", "holder");
        let mut runner = env.start(sh_job(env, "rig1", &["--job", "later"], "touch \"$1/later\""));
        runner.expect_stderr("waiting to claim it", LIMIT);
        let mut waiter = env.start(["wait", "rig1"]);
        waiter.expect_stderr("waiting until it is free", LIMIT);
        env.run(["offline", "rig1", "--reason", "broken fan"]).ok();
        // The job runs on: its machine shows busy, with the mark.
        let info = env.info("rig1");
        assert_eq!(info["state"], "busy", "{info:#}");
        assert_eq!(info["job"], "holder");
        assert_eq!(info["offline_reason"], "broken fan");
        assert_eq!(info["queue_length"], 2);

        env.touch("holder.go");
        let held = holder.finish(LIMIT);
        assert_eq!(held.code, Some(0), "{held:#?}");
        let ran = runner.finish(LIMIT);
        assert_eq!(ran.code, Some(69), "{ran:#?}");
        assert!(ran.stderr.contains("rig1 is out of service: broken fan"), "{ran:#?}");
        let waited = waiter.finish(LIMIT);
        assert_eq!(waited.code, Some(69), "{waited:#?}");
        assert!(!exists(env, "later"), "no job ran after the holder's");

        let info = env.info("rig1");
        assert_eq!(info["job"], serde_json::Value::Null, "{info:#}");
        assert_eq!(info["state"], "offline");
        assert_eq!(info["queue_length"], 0);
        let released: Vec<serde_json::Value> = env
            .events()
            .into_iter()
            .filter(|e| e["machine"] == "rig1" && e["event"] == "released")
            .collect();
        assert_eq!(released.len(), 1, "{released:?}");
        assert_eq!(released[0]["job"], "holder");
        assert_eq!(env.event_details("rig1", "claimed").len(), 1, "only the holder's claim");
    }

    fn list_info_and_json_show_a_machine_out_of_service(env: &TestEnv) {
        env.add("rig1", 1);
        env.add("rig2", 2);
        env.run(["offline", "rig1", "--reason", "no serial console"]).ok();
        let table = env.run(["list", "--no-probe"]).ok().to_string();
        let words = |machine| row(&table, machine).split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert!(words("rig1").iter().any(|w| w == "offline"), "{table}");
        assert!(words("rig2").iter().any(|w| w == "free"), "{table}");
        let text = env.run(["info", "rig1", "--no-probe"]).ok().to_string();
        let state = text.lines().find(|l| l.starts_with("State:")).unwrap_or_default();
        assert!(state.ends_with(" offline"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("Out of service:"))
            .unwrap_or_else(|| panic!("no Out of service line: {text}"));
        assert!(line.contains(" no serial console (since "), "{line}");
        assert!(line.ends_with(&format!(", by {})", user_name())), "{line}");
        assert!(!env.run(["info", "rig2", "--no-probe"]).ok().contains("Out of service"));

        let info = env.info("rig1");
        assert_eq!(info["state"], "offline");
        assert_eq!(info["offline_reason"], "no serial console");
        assert_eq!(info["offline_by"], user_name().as_str());
        let since = info["offline_since"].as_i64().expect("a number");
        assert!((unix_now() - since).abs() < 60, "{info:#}");
        let list = env.run(["list", "--json", "--no-probe"]).json();
        assert_eq!(list[0]["state"], "offline");
        assert_eq!(list[0]["offline_reason"], "no serial console");
        for key in ["offline_reason", "offline_by", "offline_since"] {
            assert_eq!(list[1][key], serde_json::Value::Null, "{key}");
        }
        assert_eq!(list[1]["state"], "free");
        // mama's own elements, in the lab as upstream's format has them.
        let exported = env.run(["export"]).ok().to_string();
        assert!(exported.contains("<offline_reason>no serial console</offline_reason>"), "{exported}");
        assert!(exported.contains(&format!("<offline_by>{}</offline_by>", user_name())));

        env.run(["online", "rig1"]).ok();
        let info = env.info("rig1");
        assert_eq!(info["state"], "free");
        assert_eq!(info["offline_reason"], serde_json::Value::Null);
        assert!(!env.run(["export"]).ok().contains("offline_"), "the elements go");
    }

    fn a_failing_health_check_takes_the_machine_out_and_a_passing_one_brings_it_back(env: &TestEnv) {
        env.run(["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01", "--ip", "192.0.2.7"]).ok();
        let health = format!(
            "echo \"$MAMA_MACHINE $MAMA_IP $MAMA_MAC\" > '{}'; \
             if [ -e '{}' ]; then echo all good; exit 0; fi; \
             echo checking the link; echo 'no link on eth0' >&2; echo; exit 3",
            path_of(env, "env"),
            path_of(env, "healthy"),
        );
        env.run(["set", "rig1", "healthcmd", &health]).ok();
        assert_eq!(env.run(["get", "rig1", "healthcmd"]).ok(), format!("{health}\n"));
        assert_eq!(env.info("rig1")["healthcmd"], health.as_str());

        let failed = mama(env, &["check", "rig1"]);
        let said = failed.fails_saying(
            1,
            "rig1 failed its health check (exit 3): no link on eth0; it is out of service now",
        );
        assert!(said.contains("checking the link\n"), "its output, on stderr: {said}");
        assert_eq!(failed.stdout, "");
        assert_eq!(
            std::fs::read_to_string(env.path().join("env")).unwrap_or_default(),
            "rig1 192.0.2.7 aa:bb:cc:dd:ee:01\n"
        );
        let info = env.info("rig1");
        assert_eq!(info["state"], "offline");
        assert_eq!(info["offline_reason"], "health check failed: no link on eth0");
        assert_eq!(info["offline_by"], user_name().as_str());
        assert_eq!(info["job"], serde_json::Value::Null, "released");
        assert_eq!(env.event_details("rig1", "checked"), ["fail (exit 3): no link on eth0"]);
        assert_eq!(env.event_details("rig1", "offline"), ["health check failed: no link on eth0"]);
        let claims: Vec<serde_json::Value> = env
            .events()
            .into_iter()
            .filter(|e| e["machine"] == "rig1" && e["event"] == "claimed")
            .collect();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0]["job"], "check");
        env.run(["run", "rig1", "--wait-timeout", "10", "--", "true"])
            .fails_saying(69, "rig1 is out of service: health check failed: no link on eth0");

        // Checked while out of service, it passes: back in service.
        env.touch("healthy");
        let passed = mama(env, &["check", "rig1"]);
        passed.ok_saying("rig1 passed its health check; it is back in service");
        assert!(passed.stderr.contains("all good\n"), "{passed:#?}");
        assert_eq!(env.info("rig1")["state"], "free");
        assert_eq!(env.event_details("rig1", "checked")[1], "pass: all good");
        assert_eq!(env.event_details("rig1", "online"), ["health check passed"]);
        env.run(["run", "rig1", "--", "true"]).ok();

        // A mark a person made stays, whatever the check finds.
        env.run(["offline", "rig1", "--reason", "lent to the vendor"]).ok();
        mama(env, &["check", "rig1"]).ok_saying("it stays out of service: lent to the vendor");
        std::fs::remove_file(env.path().join("healthy")).expect("remove");
        mama(env, &["check", "rig1"]).fails_saying(1, "it stays out of service: lent to the vendor");
        assert_eq!(env.info("rig1")["offline_reason"], "lent to the vendor");
        assert_eq!(env.event_details("rig1", "online").len(), 1);
    }

    fn a_check_waits_for_the_machine_like_a_run_and_needs_a_healthcmd(env: &TestEnv) {
        env.add("rig1", 1);
        mama(env, &["check", "rig1"]).fails_saying(1, "rig1 has no healthcmd");
        assert!(env.event_details("rig1", "claimed").is_empty(), "nothing was claimed");
        let checked = path_of(env, "checked");
        env.run(["set", "rig1", "healthcmd", &format!("touch '{checked}'")]).ok();
        let mut holder = hold_until_go(env, "rig1", "holder");
        mama(env, &["check", "rig1", "--wait-timeout", "0.3"]).fails(75);
        let mut check = mama_bg(env, &["check", "rig1"]);
        check.expect_stderr("waiting to claim it", LIMIT);
        assert!(!exists(env, "checked"), "not while the job runs");
        env.touch("holder.go");
        assert_eq!(holder.finish(LIMIT).code, Some(0));
        let done = check.finish(LIMIT);
        assert_eq!(done.code, Some(0), "{done:#?}");
        assert!(exists(env, "checked"));
        assert_eq!(env.event_details("rig1", "checked"), ["pass"]);
    }

    fn start_and_power_on_are_refused_out_of_service(env: &TestEnv) {
        env.add("rig1", 1);
        let outlet = path_of(env, "outlet");
        mama(env, &[
            "device", "add", "pdu1", "--driver", "command",
            "--on", &format!("echo on >> '{outlet}'"),
            "--off", &format!("echo off >> '{outlet}'"),
        ])
        .ok();
        env.run(["set", "rig1", "pwr-dev", "pdu1"]).ok();
        env.run(["set", "rig1", "pwr-slot", "1"]).ok();
        let started = path_of(env, "started");
        env.run(["set", "rig1", "startcmd", &format!("touch '{started}'")]).ok();
        env.run(["set", "rig1", "readycmd", &format!("test -e '{started}'")]).ok();
        env.run(["offline", "rig1", "--reason", "bad power supply"]).ok();

        mama(env, &["start", "rig1"]).fails_saying(69, "rig1 is out of service: bad power supply");
        mama(env, &["run", "--boot", "rig1", "--wait-timeout", "10", "--", "true"]).fails(69);
        mama(env, &["power", "rig1", "on"]).fails_saying(69, "out of service");
        mama(env, &["power", "rig1", "cycle"]).fails(69);
        assert!(!exists(env, "started"), "the startcmd never ran");
        assert!(!exists(env, "outlet"), "the outlet was never switched");
        assert!(env.event_details("rig1", "start_failed").is_empty());
        // Putting it down is allowed.
        mama(env, &["power", "rig1", "off"]).ok();
        mama(env, &["stop", "rig1", "--force"]).ok_saying("rig1 stopped");
        assert_eq!(std::fs::read_to_string(env.path().join("outlet")).unwrap_or_default(), "off\noff\n");

        env.run(["online", "rig1"]).ok();
        mama(env, &["start", "rig1"]).ok_saying("rig1 is ready");
        assert!(exists(env, "started"));
    }

    fn starts_that_fail_every_try_are_counted_until_one_succeeds(env: &TestEnv) {
        env.add("rig1", 1);
        let up = path_of(env, "up");
        env.run(["set", "rig1", "startcmd", "exit 1"]).ok();
        env.run(["set", "rig1", "readycmd", &format!("test -e '{up}'")]).ok();
        for count in 1..=2 {
            mama(env, &["start", "rig1", "--tries", "2"]).fails(124);
            let info = env.info("rig1");
            assert_eq!(info["failed_starts"], count, "{info:#}");
            // Without the lab's setting, only counted.
            assert_eq!(info["state"], "free");
        }
        let text = env.run(["info", "rig1", "--no-probe"]).ok().to_string();
        let line = text.lines().find(|l| l.starts_with("Failed starts:")).unwrap_or_default();
        assert!(line.ends_with(" 2 in a row"), "{text}");
        env.run(["set", "rig1", "startcmd", &format!("touch '{up}'")]).ok();
        mama(env, &["start", "rig1"]).ok_saying("rig1 is ready");
        assert_eq!(env.info("rig1")["failed_starts"], 0);
        assert!(!env.run(["export"]).ok().contains("failed_starts"));
    }

    // Needs `mama setting` (the lab's settings), which comes with the
    // lab's own settings: this test fails until then.
    fn too_many_failed_starts_in_a_row_take_a_machine_out_of_service(env: &TestEnv) {
        env.add("rig1", 1);
        env.run(["setting", "offline-after-failed-starts", "2"]).ok();
        let up = path_of(env, "up");
        env.run(["set", "rig1", "startcmd", "exit 1"]).ok();
        env.run(["set", "rig1", "readycmd", &format!("test -e '{up}'")]).ok();
        let first = mama(env, &["start", "rig1", "--tries", "1"]);
        assert!(!first.fails(124).contains("out of service"), "{first:#?}");
        assert_eq!(env.info("rig1")["state"], "free");
        mama(env, &["start", "rig1", "--tries", "1"])
            .fails_saying(124, "rig1 is out of service now: 2 failed starts in a row");
        let info = env.info("rig1");
        assert_eq!(info["state"], "offline", "{info:#}");
        assert_eq!(info["offline_reason"], "2 failed starts in a row");
        assert_eq!(info["offline_by"], user_name().as_str());
        assert_eq!(env.event_details("rig1", "offline"), ["2 failed starts in a row"]);
        env.run(["set", "rig1", "startcmd", &format!("touch '{up}'")]).ok();
        mama(env, &["start", "rig1"]).fails(69);
        assert!(!exists(env, "up"));
        // Back in service, the count begins anew.
        env.run(["online", "rig1"]).ok();
        assert_eq!(env.info("rig1")["failed_starts"], 0);
        mama(env, &["start", "rig1"]).ok_saying("rig1 is ready");
    }
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_setpriv)),
    ignore = "needs root and setpriv (run tests/install-tools as root)"
)]
fn health_commands_of_a_lab_others_may_write_run_only_once_it_is_trusted() {
    let env = TestEnv::new();
    let touched = path_of(&env, "touched");
    env.add("rig1", 1);
    env.run(["set", "rig1", "healthcmd", &format!("touch '{touched}'")])
        .ok();
    // A member of the lab's group (nobody, in its own group) may write it.
    let group = crate::common::users::nobody_group();
    let gid = crate::common::users::group_id(&group).expect("the group");
    std::os::unix::fs::chown(&env.state, None, Some(gid)).expect("chgrp");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o664)).expect("chmod");
    let check = |config: &std::path::Path| env.run_with_config(config, &["check", "rig1"]);
    let refused = check(&env.path().join("nowhere"));
    let said = refused.fails_saying(1, "refusing to use the healthcmd of rig1");
    assert!(said.contains(&format!("group {group}: ")), "{said}");
    assert!(!exists(&env, "touched"));
    assert!(
        env.event_details("rig1", "claimed").is_empty(),
        "nothing was claimed"
    );
    assert!(env.event_details("rig1", "checked").is_empty());

    let config = env.path().join("config");
    std::fs::create_dir_all(config.join("mama")).expect("config folder");
    std::fs::write(
        config.join("mama/trusted"),
        format!("{}\n", env.state.display()),
    )
    .expect("trust file");
    check(&config).ok_saying("rig1 passed its health check");
    assert!(exists(&env, "touched"));
}

#[test]
#[cfg_attr(
    not(mama_python3),
    ignore = "needs python3 (run tests/install-tools as root)"
)]
fn php_mama_saving_a_machine_puts_it_back_in_service() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.add("rig2", 2);
    env.run(["offline", "rig1", "--reason", "dead serial console"])
        .ok();
    env.run(["offline", "rig2", "--reason", "flaky network"])
        .ok();
    // The stand-in for PHP mama (see tests/php.rs) saves rig1, rebuilt
    // from the fields it knows.
    let saved = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/php_mama.py"))
        .arg(&env.state)
        .args(["set", "rig1", "os", "by-php"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("python3 runs");
    assert!(saved.status.success(), "{saved:?}");
    let info = env.info("rig1");
    assert_eq!(info["os"], "by-php");
    assert_eq!(info["state"], "free", "{info:#}");
    assert_eq!(info["offline_reason"], serde_json::Value::Null);
    env.run(["run", "rig1", "--", "true"]).ok();
    // The machine it did not save keeps its mark.
    assert_eq!(env.info("rig2")["state"], "offline");
}
