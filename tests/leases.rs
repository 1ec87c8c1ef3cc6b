//! The lab's policy: its settings (`mama setting`), reservations that end
//! by themselves (`reserve --for`, `extend`, the lab's longest
//! reservation), and `wait --then-reserve`. Shared behaviour runs on both
//! backends; what PHP mama does to the state file is the file lab's.

use crate::common::users::*;
use crate::common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::Value;

/// `nobody`, a second user of a lab: the state file's folder and the file
/// opened to it (a database lab is open to every user of this host that
/// reaches its socket, as its role).
struct Nobody {
    bin: PathBuf,
    group: String,
    _copy: Option<tempfile::TempDir>,
}

impl Nobody {
    /// Opens `env`'s lab, whose machine `rig1` is there, to `nobody`.
    fn of(env: &TestEnv) -> Nobody {
        second_user();
        if !env.is_postgres() {
            fs::set_permissions(env.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
            fs::set_permissions(&env.state, fs::Permissions::from_mode(0o666)).expect("chmod");
            // A transaction of the owner's brings the files beside the
            // state file in line with its mode.
            env.run(["set", "rig1", "os", ""]).ok();
        }
        let group = nobody_group();
        let (bin, copy) = binary_for_nobody(env, &group);
        Nobody {
            bin,
            group,
            _copy: copy,
        }
    }

    fn cmd(&self, env: &TestEnv, args: &[&str]) -> Command {
        let mut cmd = as_nobody(env, &self.bin, &self.group, args);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn run(&self, env: &TestEnv, args: &[&str]) -> Run {
        self.cmd(env, args).output().expect("mama runs").into()
    }
}

/// The end of `machine`'s reservation, as `info --json` gives it.
fn expires(env: &TestEnv, machine: &str) -> Option<i64> {
    env.info(machine)["reservation_expires"].as_i64()
}

/// Local time of a Unix second, as `date(1)` writes it with `format`.
fn local(at: i64, format: &str) -> String {
    let out = Command::new("date")
        .arg("-d")
        .arg(format!("@{at}"))
        .arg(format!("+{format}"))
        .output()
        .expect("date runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

on_both_backends! {
    #![needs(mama_second_user, "acts as a second user: run as root after tests/install-tools (setpriv)")]

    fn a_reservation_ends_at_its_end_and_the_run_waiting_behind_it_starts_then(env: &TestEnv) {
        // Three boards, each reserved for 2 s with a run waiting behind
        // it: each job must start at its reservation's end. The median of
        // the three is held to 100 ms, so one run that a loaded machine
        // schedules late does not decide; a waiter that slept to its next
        // poll (30 s) misses by seconds.
        let boards = ["rig1", "rig2", "rig3"];
        for (n, board) in boards.iter().enumerate() {
            env.add(board, n as u8 + 1);
        }
        let nobody = Nobody::of(env);
        let mut waiters = vec![];
        let mut ends = vec![];
        for board in boards {
            nobody.run(env, &["reserve", board, "--for", "2s"]).ok();
            let end = expires(env, board).expect("an end");
            assert_eq!(env.info(board)["reservation"], "nobody");
            // A poll interval far past the reservation's end: only the end
            // itself can wake the waiter in time.
            let script = format!("date +%s.%N > \"$1/started-{board}\"");
            let mut cmd = env.cmd(sh_job(env, board, &[], &script));
            cmd.env("MAMA_POLL_INTERVAL", "30");
            let mut waiter = Bg::start(cmd);
            let told = waiter.expect_stderr("waiting to claim it", LIMIT);
            assert!(told.contains("reserved by nobody until"), "{told}");
            waiters.push(waiter);
            ends.push(end);
        }
        let mut late: Vec<f64> = boards
            .iter()
            .zip(&ends)
            .map(|(board, end)| {
                let started: f64 = read_line_of(&env.path().join(format!("started-{board}")), LIMIT)
                    .parse()
                    .expect("a time");
                started - *end as f64
            })
            .collect();
        late.sort_by(f64::total_cmp);
        assert!(
            late.iter().all(|l| (0.0..5.0).contains(l)) && late[1] < 0.1,
            "the jobs started {late:.3?} s after their reservations' ends"
        );
        for waiter in &mut waiters {
            waiter.finish(LIMIT).ok();
        }
        for (board, end) in boards.iter().zip(&ends) {
            assert_eq!(
                env.event_kinds(board),
                ["added", "reserved", "expired", "claimed", "released"]
            );
            let expired = env
                .events()
                .into_iter()
                .find(|e| e["event"] == "expired" && e["machine"] == *board)
                .expect("an expired event");
            let detail = expired["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains("of nobody") && detail.contains(&local(*end, "%H:%M:%S")),
                "{detail}"
            );
        }
    }

    fn a_plain_wait_behind_a_reservation_returns_at_its_end(env: &TestEnv) {
        env.add("rig1", 1);
        let nobody = Nobody::of(env);
        nobody.run(env, &["reserve", "rig1", "--for", "2s"]).ok();
        let end = expires(env, "rig1").expect("an end");
        let mut cmd = env.cmd(["wait", "rig1", "--timeout", "60"]);
        cmd.env("MAMA_POLL_INTERVAL", "30");
        let mut waiter = Bg::start(cmd);
        waiter.expect_stderr("waiting", LIMIT);
        assert_eq!(waiter.finish(LIMIT).code, Some(0));
        // Long before the next poll (30 s): the end itself woke it.
        let late = unix_now() - end;
        assert!((0..5).contains(&late), "wait returned {late} s after the end ({end})");
        assert_eq!(env.info("rig1")["state"], "free");
    }

    fn only_the_holder_extends_a_reservation(env: &TestEnv) {
        env.add("rig1", 1);
        env.add("rig2", 2);
        let nobody = Nobody::of(env);
        nobody.run(env, &["reserve", "rig1", "--for", "1h", "--note", "soak"]).ok();
        let first = expires(env, "rig1").expect("an end");
        let run = env.run(["extend", "rig1", "--for", "2h"]);
        run.fails_saying(1, "reserved by nobody, not by you");
        let run = env.run(["reserve", "rig1"]);
        run.fails_saying(1, "reserved by nobody already until");
        assert_eq!(expires(env, "rig1"), Some(first));

        let from = unix_now();
        nobody.run(env, &["extend", "rig1", "--for", "2h"]).ok_saying("is reserved for nobody until");
        let moved = expires(env, "rig1").expect("an end");
        assert!((from + 7200..=unix_now() + 7201).contains(&moved), "{moved}");
        // The note stays with the reservation.
        assert_eq!(env.info("rig1")["reservation_note"], "soak");
        let extended = env.events().pop().expect("an event");
        assert_eq!(extended["event"], "extended", "{extended:#}");
        assert_eq!(extended["user"], "nobody", "{extended:#}");
        let detail = extended["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&local(moved, "%Y-%m-%d %H:%M:%S")), "{detail}");

        env.run(["extend", "rig2", "--for", "1h"]).fails_saying(1, "rig2 is not reserved");
        env.run(["extend", "rig1", "--for", "soon"]).fails(2);
        env.run(["extend", "rig1"]).fails(2);
        // Past 100 years, like every duration.
        env.run(["reserve", "rig2", "--for", "36526d"]).fails_saying(2, "100 years");
        assert_eq!(env.info("rig2")["reservation"], Value::Null);
    }

    fn wait_then_reserve_keeps_its_place_and_nobody_slips_in(env: &TestEnv) {
        env.add("rig1", 1);
        let nobody = Nobody::of(env);
        let mut holder = hold_until_go(env, "rig1", "holder");
        // First in line: nobody, to reserve; behind it a job of this user's.
        let mut first = Bg::start(nobody.cmd(
            env,
            &["wait", "rig1", "--then-reserve", "--for", "1h"],
        ));
        first.expect_stderr("waiting to reserve it", LIMIT);
        let mut second = env.start(sh_job(env, "rig1", &["--job", "second"], "touch \"$1/second.ran\""));
        second.expect_stderr("1 ahead of you", LIMIT);
        // And this user trying to get in all the while.
        let stop = Arc::new(AtomicBool::new(false));
        let tries = Arc::new(AtomicUsize::new(0));
        let slipped = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..2 {
                let (stop, tries, slipped) = (stop.clone(), tries.clone(), slipped.clone());
                let mut hammer = env.cmd(["run", "rig1", "--no-wait", "--", "true"]);
                hammer.stdout(Stdio::null()).stderr(Stdio::null());
                scope.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let status = hammer.status().expect("mama runs");
                        if status.code() == Some(0) {
                            slipped.fetch_add(1, Ordering::SeqCst);
                        }
                        tries.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            wait_until("the hammers", LIMIT, || tries.load(Ordering::SeqCst) >= 4);
            env.touch("holder.go");
            holder.finish(LIMIT).ok();
            let run = first.finish(LIMIT);
            run.ok_saying("rig1 is reserved for nobody until");
            // The machine is nobody's: the job behind waits on, and the
            // others are refused, try after try.
            let now = tries.load(Ordering::SeqCst);
            wait_until("more tries", LIMIT, || tries.load(Ordering::SeqCst) >= now + 6);
            stop.store(true, Ordering::SeqCst);
        });
        assert_eq!(slipped.load(Ordering::SeqCst), 0, "a run slipped in");
        let rig1 = env.info("rig1");
        assert_eq!(rig1["reservation"], "nobody", "{rig1:#}");
        assert!(rig1["reservation_expires"].as_i64().is_some_and(|t| t > unix_now() + 3500));
        assert!(second.running(), "the job behind waits");
        assert!(!env.path().join("second.ran").exists());
        let claimed_before: Vec<String> = env.event_kinds("rig1");
        let reserved_at = claimed_before
            .iter()
            .position(|k| k == "reserved")
            .expect("reserved");
        assert_eq!(
            claimed_before[..=reserved_at],
            ["added", "claimed", "released", "reserved"],
            "nothing came between the holder's release and the reservation"
        );
        // Given back, the machine goes to the next in line.
        nobody.run(env, &["release", "rig1"]).ok();
        second.finish(LIMIT).ok();
        assert!(env.path().join("second.ran").exists());
    }
}

on_both_backends! {
    fn the_lab_may_set_the_longest_reservation(env: &TestEnv) {
        for (name, n) in [("rig1", 1), ("rig2", 2), ("rig3", 3)] {
            env.add(name, n);
        }
        env.run(["setting", "longest-reservation", "1h"]).ok_saying("longest-reservation is 3600 (1h 0m) now");
        let from = unix_now();
        env.run(["reserve", "rig1"]).ok_saying("is reserved for");
        let end = expires(env, "rig1").expect("a plain reserve gets the lab's longest");
        assert!((from + 3600..=unix_now() + 3601).contains(&end), "{end}");
        let run = env.run(["reserve", "rig2", "--for", "2h"]);
        let said = run.fails_saying(1, "at most 1h 0m");
        assert!(said.contains("longest-reservation"), "{said}");
        assert_eq!(env.info("rig2")["reservation"], Value::Null);
        env.run(["reserve", "rig2", "--for", "30m"]).ok();
        let end = expires(env, "rig2").expect("an end");
        assert!((from + 1800..=unix_now() + 1801).contains(&end), "{end}");
        env.run(["extend", "rig1", "--for", "61m"]).fails_saying(1, "at most 1h 0m");
        env.run(["wait", "rig3", "--then-reserve", "--for", "2h"]).fails_saying(1, "at most 1h 0m");
        assert_eq!(env.info("rig3")["reservation"], Value::Null);
        // Without the setting, a plain reservation lasts until released.
        env.run(["setting", "longest-reservation", ""]).ok_saying("longest-reservation is unset now");
        env.run(["reserve", "rig3"]).ok();
        let rig3 = env.info("rig3");
        assert_eq!(rig3["reservation"], user_name(), "{rig3:#}");
        assert_eq!(rig3["reservation_expires"], Value::Null, "{rig3:#}");
        // `wait --then-reserve` gets the lab's longest too.
        env.run(["setting", "longest-reservation", "2h"]).ok();
        env.add("rig4", 4);
        env.run(["wait", "rig4", "--then-reserve"]).ok_saying("rig4 is reserved for");
        let end = expires(env, "rig4").expect("an end");
        assert!((from + 7200..=unix_now() + 7201).contains(&end), "{end}");
    }

    fn views_show_when_a_reservation_ends_and_an_ended_one_as_free(env: &TestEnv) {
        env.add("rig1", 1);
        env.add("rig2", 2);
        env.add("rig3", 3);
        let me = user_name();
        let note = "bisecting the scheduler";
        env.run(["reserve", "rig1", "--for", "1h", "--note", note]).ok();
        let end = expires(env, "rig1").expect("an end");
        let table = env.run(["list", "--no-probe"]).ok().to_string();
        let cell = format!("{me} until {}", local(end, "%H:%M"));
        let cell = if local(end, "%F") == local(unix_now(), "%F") {
            cell
        } else {
            format!("{me} until {}", local(end, "%F %H:%M"))
        };
        assert!(table.contains(&cell), "{cell}: {table}");
        let info = env.run(["info", "rig1", "--no-probe"]).ok().to_string();
        assert!(
            info.contains(&format!("Reserved by: {me} until {}", local(end, "%F %H:%M:%S"))),
            "{info}"
        );
        assert!(info.contains(&format!("Note:        {note}")), "{info}");
        let list = env.run(["list", "--json", "--no-probe"]).json();
        assert_eq!(list[0]["reservation_expires"], end, "{list:#}");
        assert_eq!(list[0]["reservation_note"], note, "{list:#}");
        assert_eq!(list[1]["reservation_expires"], Value::Null, "{list:#}");
        assert_eq!(list[1]["reservation_note"], Value::Null, "{list:#}");
        assert!(has_event(&env.events(), "rig1", "reserved", Some(&format!(
            "until {}; note: {note}", local(end, "%F %H:%M:%S")
        ))));

        // A reservation whose end has come is over for every reader, before
        // any transaction clears it.
        env.run(["reserve", "rig2", "--for", "1"]).ok();
        let held = |text: &str| text.matches(&format!("<reservation>{me}</reservation>")).count();
        let before = env.stored();
        assert_eq!(held(&before), 2, "{before}");
        wait_until("rig2's reservation to end", LIMIT, || env.info("rig2")["state"] == "free");
        let rig2 = env.info("rig2");
        for key in ["reservation", "reservation_expires", "reservation_note"] {
            assert_eq!(rig2[key], Value::Null, "{key}: {rig2:#}");
        }
        assert_eq!(env.run(["get", "rig2", "reservation"]).ok(), "\n");
        assert_eq!(env.run(["list", "--json", "--no-probe"]).json()[1]["state"], "free");
        assert_eq!(held(&env.stored()), 2, "nothing was written yet");
        assert!(!env.event_kinds("rig2").contains(&"expired".to_string()));
        // The first transaction ends it, once.
        env.run(["set", "rig3", "os", "fedora"]).ok();
        assert_eq!(before.matches("<lease ").count(), 2, "{before}");
        let after = env.stored();
        assert_eq!(held(&after), 1, "{after}");
        assert_eq!(after.matches("<lease ").count(), 1, "{after}");
        env.run(["set", "rig3", "os", "debian"]).ok();
        assert_eq!(env.event_kinds("rig2"), ["added", "reserved", "expired"]);
        // Deleting a machine takes its lease with it.
        env.run(["delete", "rig1"]).ok();
        assert!(!env.stored().contains("<lease"), "{}", env.stored());
    }

    fn the_lab_keeps_its_settings(env: &TestEnv) {
        // No lab, no setting.
        env.run(["setting"]).fails_saying(1, "no lab at");
        env.add("rig1", 1);
        assert_eq!(
            env.run(["setting"]).ok(),
            "longest-reservation\nnotify\noffline-after-failed-starts\nhistory-keep-days\n\
             history-max-size\n"
        );
        let all = env.run(["setting", "--json"]).json();
        assert_eq!(
            all,
            serde_json::json!({
                "longest-reservation": null,
                "notify": null,
                "offline-after-failed-starts": null,
                "history-keep-days": null,
                "history-max-size": null
            })
        );
        assert_eq!(env.run(["setting", "notify"]).ok(), "\n");
        env.run(["setting", "longest-reservation", "90m"]).ok();
        env.run(["setting", "notify", "logger -t mama"]).ok();
        env.run(["setting", "offline_after_failed_starts", "3"]).ok();
        assert_eq!(env.run(["setting", "longest-reservation"]).ok(), "5400\n");
        assert_eq!(env.run(["setting", "notify", "--json"]).json(), "logger -t mama");
        let listed = env.run(["setting"]).ok().to_string();
        assert_eq!(
            listed,
            "longest-reservation          5400 (1h 30m)\nnotify                       logger -t mama\n\
             offline-after-failed-starts  3\nhistory-keep-days\nhistory-max-size\n"
        );
        assert_eq!(env.run(["setting", "--json"]).json()["offline-after-failed-starts"], "3");
        let stored = env.stored();
        assert!(
            stored.contains("<lab_settings>")
                && stored.contains("<longest_reservation>5400</longest_reservation>")
                && stored.contains("<notify>logger -t mama</notify>"),
            "{stored}"
        );
        // What is refused changes nothing.
        env.run(["setting", "longest-reservation", "soon"]).fails_saying(1, "not a duration");
        env.run(["setting", "offline-after-failed-starts", "x"]).fails_saying(1, "whole number");
        env.run(["setting", "colour", "red"]).fails(2);
        assert_eq!(env.stored(), stored);
        // The same value again records nothing.
        let events = env.events().len();
        env.run(["setting", "longest-reservation", "5400s"]).ok_saying("is 5400 (1h 30m) already");
        assert_eq!(env.events().len(), events);
        env.run(["setting", "notify", ""]).ok_saying("notify is unset now");
        assert_eq!(env.run(["setting", "notify"]).ok(), "\n");
        let changed: Vec<(String, String)> = env
            .events()
            .iter()
            .filter(|e| e["event"] == "setting_changed")
            .map(|e| (e["machine"].as_str().unwrap_or_default().to_string(),
                      e["detail"].as_str().unwrap_or_default().to_string()))
            .collect();
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(changed, [
            pair("longest-reservation", "longest-reservation=5400"),
            pair("notify", "notify=logger -t mama"),
            pair("offline-after-failed-starts", "offline-after-failed-starts=3"),
            pair("notify", "notify="),
        ]);
        assert!(!env.stored().contains("<notify>"));

        // An export keeps them; an import brings them into a lab that has
        // none, and leaves a lab's own alone unless --replace.
        let export = env.run(["export"]).ok().to_string();
        assert!(export.contains("<longest_reservation>5400</longest_reservation>"), "{export}");
        let file = env.path().join("export.xml");
        fs::write(&file, &export).expect("write the export");
        let file = file.to_string_lossy().into_owned();
        let other = if env.is_postgres() { TestEnv::postgres() } else { TestEnv::new() };
        other.run(["import", &file]).ok();
        assert_eq!(other.run(["setting", "longest-reservation"]).ok(), "5400\n");
        assert!(has_event(&other.events(), "longest-reservation", "setting_changed", Some("longest-reservation=5400")));
        other.run(["setting", "longest-reservation", "2h"]).ok();
        let run = other.run(["import", "--replace", &file]);
        run.ok();
        assert_eq!(other.run(["setting", "longest-reservation"]).ok(), "5400\n");
        other.run(["setting", "longest-reservation", "2h"]).ok();
        other.run(["delete", "rig1"]).ok();
        let run = other.run(["import", &file]);
        run.ok_saying("kept the lab's own settings");
        assert_eq!(other.run(["setting", "longest-reservation"]).ok(), "7200\n");
    }

    fn wait_then_reserve_reserves_a_free_machine_at_once(env: &TestEnv) {
        env.add("rig1", 1);
        env.add("rig2", 2);
        env.run(["reserve", "rig1"]).ok();
        let run = env.run(["wait", "--any", "rig1", "rig2", "--then-reserve", "--for", "10m"]);
        // rig1 is this user's already: it is the first free for them.
        assert_eq!(run.ok(), "rig1\n");
        let end = expires(env, "rig1").expect("an end now");
        assert!(end > unix_now() + 500, "{end}");
        env.run(["wait", "rig2", "--then-reserve"]).ok_saying("rig2 is reserved for");
        assert_eq!(env.info("rig2")["reservation"], user_name());
        assert_eq!(env.info("rig2")["reservation_expires"], Value::Null);
        env.run(["wait", "rig2", "--for", "1h"]).fails(2);
    }
}

#[test]
#[cfg_attr(
    not(mama_python3),
    ignore = "needs python3 (for tests/php_mama.py): run tests/install-tools as root"
)]
fn a_lease_lives_through_php_mamas_rewrites_and_ends_with_its_reservation() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.add("rig2", 2);
    env.run(["reserve", "rig1", "--for", "1h", "--note", "soak & <burn>"])
        .ok();
    let end = expires(&env, "rig1").expect("an end");
    // PHP mama saves rig1: rebuilt from its own fields at the end of the
    // file, the whole file indented anew.
    env.php(&["set", "rig1", "arch", "x86_64"]).ok();
    let text = env.read_state();
    assert!(text.contains("<arch>x86_64</arch>"), "{text}");
    let rig1 = env.info("rig1");
    assert_eq!(rig1["reservation_expires"], end, "{rig1:#}");
    assert_eq!(rig1["reservation_note"], "soak & <burn>", "{rig1:#}");
    // A reservation PHP mama gives to someone else ends the lease: the
    // reservation is theirs, with no end, and the next transaction takes
    // the lease out.
    env.php(&["set", "rig1", "reservation", "bob"]).ok();
    let rig1 = env.info("rig1");
    assert_eq!(rig1["reservation"], "bob", "{rig1:#}");
    assert_eq!(rig1["reservation_expires"], Value::Null, "{rig1:#}");
    assert!(env.read_state().contains("<lease "));
    env.run(["set", "rig2", "os", "debian"]).ok();
    let text = env.read_state();
    assert!(!text.contains("<lease"), "{text}");
    assert!(text.contains("<reservation>bob</reservation>"), "{text}");
    // A lease PHP mama kept still ends its reservation.
    env.run(["reserve", "rig2", "--for", "1"]).ok();
    env.php(&["set", "rig2", "arch", "arm"]).ok();
    wait_until("rig2's reservation to end", LIMIT, || {
        env.info("rig2")["state"] == "free"
    });
    env.run(["wait", "rig2"]).ok();
    let text = env.read_state();
    assert!(
        !text.contains("<lease") && text.contains("<arch>arm</arch>"),
        "{text}"
    );
    assert!(has_event(&env.events(), "rig2", "expired", None));
}

#[test]
fn a_lease_element_written_by_hand_is_read_and_kept() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.add("rig2", 2);
    let text = env
        .read_state()
        .replacen("<reservation/>", "<reservation>alice</reservation>", 1);
    let text = text.replacen(
        "<settings>\n",
        "<settings>\n  <lease machine=\"rig1\" user=\"alice\" expires=\"9999999999\" site=\"b\"/>\n  \
         <lease machine=\"rig2\" user=\"alice\" expires=\"soon\"/>\n  \
         <lab_settings>\n    <colour>red</colour>\n  </lab_settings>\n",
        1,
    );
    env.write_state(&text);
    assert_eq!(expires(&env, "rig1"), Some(9_999_999_999));
    // A lease for a reservation that is not its user's counts for nothing.
    assert_eq!(env.info("rig2")["reservation"], Value::Null);
    env.run(["setting", "notify", "true"]).ok();
    let after = env.read_state();
    assert!(
        after
            .contains("<lease machine=\"rig1\" user=\"alice\" expires=\"9999999999\" site=\"b\"/>"),
        "{after}"
    );
    assert!(!after.contains("machine=\"rig2\""), "{after}");
    assert!(
        after.contains(
            "<lab_settings>\n    <colour>red</colour>\n    <notify>true</notify>\n  </lab_settings>"
        ),
        "{after}"
    );
    // A value written by hand that is not one is said so where it is used.
    let by_hand = after.replace(
        "<notify>true</notify>",
        "<longest_reservation>a while</longest_reservation>",
    );
    env.write_state(&by_hand);
    env.run(["reserve", "rig2"]).fails_saying(
        1,
        "longest-reservation is 'a while', which is not a duration",
    );
}
