//! `mama stats` against a history written by hand, whose figures are
//! worked out below, on both backends (a state file's log, a database
//! lab's events); the lab's retention of its history (`history-keep-days`,
//! `history-max-size`): a log rotated whole into segments that `log` and
//! `stats` read across, old segments dropped whole.

use crate::common::*;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use mama::backend::file::log::FLUSH_AT;
use serde_json::{Value, json};

/// 2026-11-02 00:00:00 UTC: the fixture's first event.
const T0: i64 = 1_793_577_600;

/// The fixture: seq, seconds after T0, machine, kind, PID, user, and the
/// fields some events have (`waited`, `status`, `detail`).
///
/// ```text
/// seq  time   machine event          pid  user   extra
///  1      0   rig1    claimed        101  alice  waited 2
///  2    600   rig2    claimed        202  bob    waited 10
///  3   1800   rig2    released       202  bob    status 3       (failed)
///  4   3600   rig1    released       101  alice  status 0
///  5   4000   rig3    reserved            alice
///  6   5000   rig1    claimed        103  bob    waited 4
///  7   5100   rig1    claimed        104  bob    waited 0, nested in 'x'
///  8   5200   rig1    released       104  bob    "exit 1 after 1m 40s" (an older
///                                                mama's: no status; failed)
///  9   6000   rig2    claimed        205  alice  waited 6
/// 10   7000   rig2    stale_cleared  205  bob    (alice's job)
/// 11   7200   rig3    unreserved          alice
/// 12   9000   rig1    released       103  bob    status 137     (failed)
/// 13   9500   rig3    claimed        306  alice  waited 8       (never released)
/// 14   9600   rig1    set                 carol  os=x
/// ```
///
/// Holds (a nested claim holds nothing of its own; a stale clear ends
/// one): rig1 [0, 3600) alice and [5000, 9000) bob; rig2 [600, 1800) bob
/// and [6000, 7000) alice; rig3 [9500, ...) alice. A reservation of rig3
/// [4000, 7200) by alice.
fn fixture() -> Vec<Value> {
    let e = |seq: u64, at: i64, machine: &str, kind: &str, pid: Option<u32>, user: &str| {
        json!({
            "seq": seq, "time": T0 + at, "machine": machine, "event": kind, "job": null,
            "pid": pid, "user": user, "host": "lab-host", "detail": null,
        })
    };
    let with = |mut event: Value, extra: Value| {
        for (k, v) in extra.as_object().expect("an object") {
            event[k] = v.clone();
        }
        event
    };
    let job = |mut event: Value, label: &str| {
        event["job"] = json!(label);
        event
    };
    vec![
        with(
            job(e(1, 0, "rig1", "claimed", Some(101), "alice"), "a"),
            json!({"waited": 2.0}),
        ),
        with(
            job(e(2, 600, "rig2", "claimed", Some(202), "bob"), "b"),
            json!({"waited": 10.0}),
        ),
        with(
            job(e(3, 1800, "rig2", "released", Some(202), "bob"), "b"),
            json!({"status": 3, "detail": "exit 3 after 20m 0s"}),
        ),
        with(
            job(e(4, 3600, "rig1", "released", Some(101), "alice"), "a"),
            json!({"status": 0, "detail": "exit 0 after 1h 0m"}),
        ),
        e(5, 4000, "rig3", "reserved", None, "alice"),
        with(
            job(e(6, 5000, "rig1", "claimed", Some(103), "bob"), "c"),
            json!({"waited": 4.0}),
        ),
        with(
            job(e(7, 5100, "rig1", "claimed", Some(104), "bob"), "d"),
            json!({"waited": 0.0, "detail": "nested in 'c'"}),
        ),
        with(
            job(e(8, 5200, "rig1", "released", Some(104), "bob"), "d"),
            json!({"detail": "exit 1 after 1m 40s"}),
        ),
        with(
            job(e(9, 6000, "rig2", "claimed", Some(205), "alice"), "e"),
            json!({"waited": 6.0}),
        ),
        with(
            job(e(10, 7000, "rig2", "stale_cleared", Some(205), "bob"), "e"),
            json!({"detail": "PID 205 is dead"}),
        ),
        e(11, 7200, "rig3", "unreserved", None, "alice"),
        with(
            job(e(12, 9000, "rig1", "released", Some(103), "bob"), "c"),
            json!({"status": 137, "detail": "killed by signal 9 after 1h 6m"}),
        ),
        with(
            job(e(13, 9500, "rig3", "claimed", Some(306), "alice"), "f"),
            json!({"waited": 8.0}),
        ),
        with(
            e(14, 9600, "rig1", "set", None, "carol"),
            json!({"detail": "os=x"}),
        ),
    ]
}

fn log_path(env: &TestEnv) -> PathBuf {
    env.path().join("mama.xml.log")
}

/// The state file's `<event_seq>` set to `n`, its pending events dropped:
/// it commits exactly the events of a log written by hand.
fn commit_log_up_to(env: &TestEnv, n: u64) {
    let mut text = env.read_state();
    if let (Some(start), Some(end)) = (
        text.find("\n  <pending_events>"),
        text.find("</pending_events>"),
    ) {
        text.replace_range(start..end + "</pending_events>".len(), "");
    }
    let start = text.find("<event_seq>").expect("an <event_seq>");
    let end = text.find("</event_seq>").expect("</event_seq>");
    text.replace_range(start..end, &format!("<event_seq>{n}"));
    env.write_state(&text);
    assert!(!env.read_state().contains("pending_events"));
}

fn lines(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

/// A lab of rig1, rig2 and rig3 whose history is `events`: a state file's
/// log, or a database lab's events (whose optional columns mama added
/// itself, recording a run's wait and status).
fn lab_with_history(env: &TestEnv, events: &[Value]) {
    for (n, name) in ["rig1", "rig2", "rig3"].iter().enumerate() {
        env.add(name, n as u8 + 1);
    }
    let Some(db) = &env.db else {
        fs::write(log_path(env), lines(events)).expect("write the log");
        commit_log_up_to(env, events.len() as u64);
        return;
    };
    env.run(["run", "rig1", "--", "true"]).ok();
    let mut client = db.connect();
    let mut tx = client.transaction().expect("a transaction");
    tx.execute("DELETE FROM mama_event", &[]).expect("delete");
    for e in events {
        let text = |k: &str| e[k].as_str().map(str::to_string);
        tx.execute(
            "INSERT INTO mama_event (seq, time, machine, event, job, pid, \"user\", host, \
             detail, waited, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &(e["seq"].as_i64()),
                &e["time"].as_i64(),
                &text("machine"),
                &text("event"),
                &text("job"),
                &e["pid"].as_i64(),
                &text("user"),
                &text("host"),
                &text("detail"),
                &e["waited"].as_f64(),
                &e["status"].as_i64().map(|s| s as i32),
            ],
        )
        .expect("insert an event");
    }
    tx.commit().expect("commit");
}

/// `mama stats ARGS` in UTC (the windows below are given as UTC dates).
fn stats(env: &TestEnv, args: &[&str]) -> Run {
    let mut words = vec!["stats"];
    words.extend_from_slice(args);
    let mut cmd: Command = env.cmd(words);
    cmd.env("TZ", "UTC");
    Run::from(cmd.output().expect("run mama stats"))
}

/// The figures JSON gives of one row (or the totals), in the order
/// busy_seconds, busy_share, jobs, failed, stale_cleared, wait_median,
/// wait_p95, longest_hold, reservations, reserved_seconds.
fn figures(row: &Value) -> Vec<Value> {
    [
        "busy_seconds",
        "busy_share",
        "jobs",
        "failed",
        "stale_cleared",
        "wait_median",
        "wait_p95",
        "longest_hold",
        "reservations",
        "reserved_seconds",
    ]
    .iter()
    .map(|k| row[*k].clone())
    .collect()
}

/// The rows by name (`machine` or `user`), each as [`figures`] gives it.
fn rows(stats: &Value, key: &str) -> Vec<(String, Vec<Value>)> {
    stats["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r[key].as_str().expect("a name").to_string(), figures(r)))
        .collect()
}

/// A row's expected figures: busy seconds and share, jobs, failed, stale
/// cleared, the wait's median and 95th percentile, the longest hold, the
/// reservations and their seconds.
type Expected = (i64, f64, u64, u64, u64, Option<(f64, f64)>, i64, u64, i64);

fn row(expected: Expected) -> Vec<Value> {
    let (busy, share, jobs, failed, stale, wait, longest, reservations, reserved) = expected;
    vec![
        json!(busy),
        json!(share),
        json!(jobs),
        json!(failed),
        json!(stale),
        json!(wait.map(|w| w.0)),
        json!(wait.map(|w| w.1)),
        json!(longest),
        json!(reservations),
        json!(reserved),
    ]
}

on_both_backends! {
    fn figures_of_a_window_by_machine_and_by_user(env: &TestEnv) {
        lab_with_history(env, &fixture());
        // Window A: 2026-11-02 00:00 to 03:00, 10800 s, three machines.
        let a = ["--since", "2026-11-02", "--until", "2026-11-02T03:00", "--json"];
        let got = stats(env, &a).json();
        assert_eq!((got["since"].clone(), got["until"].clone()), (json!(T0), json!(T0 + 10800)));
        assert_eq!(got["seconds"], 10800);
        assert_eq!(got["by"], "machine");
        // rig1: held 3600 + 4000 = 7600 s of 10800 (0.7037); claims at 0,
        // 5000, 5100 (the nested one counts as a job); failed: the older
        // mama's "exit 1" and status 137; waits 0, 2, 4: median 2 (rank
        // 2 of 3), p95 4 (rank 3).
        // rig2: 1200 + 1000 = 2200 s (0.2037); 2 jobs, 1 failed (status 3),
        // 1 stale cleared; waits 6, 10: median 6 (rank 1), p95 10.
        // rig3: the claim at 9500 never released counts up to 10800: 1300 s
        // (0.1204); its reservation 4000 to 7200: 3200 s.
        assert_eq!(
            rows(&got, "machine"),
            [
                ("rig1".to_string(), row((7600, 0.7037, 3, 2, 0, Some((2.0, 4.0)), 4000, 0, 0))),
                ("rig2".to_string(), row((2200, 0.2037, 2, 1, 1, Some((6.0, 10.0)), 1200, 0, 0))),
                ("rig3".to_string(), row((1300, 0.1204, 1, 0, 0, Some((8.0, 8.0)), 1300, 1, 3200))),
            ]
        );
        // The lab: 11100 s of 3 x 10800 (0.3426); waits 0 2 4 6 8 10:
        // median 4 (rank 3 of 6), p95 10 (rank 6).
        assert_eq!(got["total"]["machines"], 3);
        assert_eq!(
            figures(&got["total"]),
            row((11100, 0.3426, 6, 3, 1, Some((4.0, 10.0)), 4000, 1, 3200))
        );

        // By user, shares of the lab's 32400 machine seconds. alice held
        // rig1 3600, rig2 1000, rig3 1300 (5900: 0.1821); her 3 claims waited
        // 2, 6, 8; her one release exited 0; the stale job cleared was hers
        // (bob's waiter cleared it); she reserved rig3. bob held 1200 and
        // 4000 (5200: 0.1605), claimed 3 (waits 0, 4, 10), and his 3
        // releases failed. carol only set a field: no row.
        let mut by_user = a.to_vec();
        by_user.extend(["--by", "user"]);
        let got = stats(env, &by_user).json();
        assert_eq!(got["by"], "user");
        assert_eq!(
            rows(&got, "user"),
            [
                ("alice".to_string(), row((5900, 0.1821, 3, 0, 1, Some((6.0, 8.0)), 3600, 1, 3200))),
                ("bob".to_string(), row((5200, 0.1605, 3, 3, 0, Some((4.0, 10.0)), 4000, 0, 0))),
            ]
        );
        assert_eq!(
            figures(&got["total"]),
            row((11100, 0.3426, 6, 3, 1, Some((4.0, 10.0)), 4000, 1, 3200))
        );
    }

    fn a_window_clips_what_straddles_its_ends(env: &TestEnv) {
        lab_with_history(env, &fixture());
        // Window B: 00:50 to 02:30 (3000 to 9000 after T0), 6000 s.
        // rig1: [0, 3600) clipped to 600, [5000, 9000) 4000: 4600 (0.7667);
        // claims inside: 5000 and 5100 (waits 4, 0: median 0, p95 4);
        // releases inside: the one at 3600 (exit 0), the one at 5200
        // (failed); the one at 9000 is at the window's end, outside.
        // rig2: [600, 1800) lies outside; [6000, 7000) 1000 (0.1667), its
        // claim (wait 6) and the stale clear inside.
        // rig3: its reservation [4000, 7200) whole; its claim at 9500
        // outside.
        let b = ["--since", "2026-11-02T00:50", "--until", "2026-11-02 02:30:00", "--json"];
        let got = stats(env, &b).json();
        assert_eq!(got["seconds"], 6000);
        assert_eq!(
            rows(&got, "machine"),
            [
                ("rig1".to_string(), row((4600, 0.7667, 2, 1, 0, Some((0.0, 4.0)), 4000, 0, 0))),
                ("rig2".to_string(), row((1000, 0.1667, 1, 0, 1, Some((6.0, 6.0)), 1000, 0, 0))),
                ("rig3".to_string(), row((0, 0.0, 0, 0, 0, None, 0, 1, 3200))),
            ]
        );
        // 5600 s of 3 x 6000 (0.3111); waits 0 4 6: median 4, p95 6.
        assert_eq!(
            figures(&got["total"]),
            row((5600, 0.3111, 3, 1, 1, Some((4.0, 6.0)), 4000, 1, 3200))
        );

        // The text: the window, a row a machine in columns, the totals.
        let text = stats(env, &b[..4]).ok().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "From 2026-11-02 00:50:00 to 2026-11-02 02:30:00 (1h 40m)");
        let cells = |line: &str| -> Vec<String> {
            line.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect()
        };
        assert_eq!(
            cells(lines[1]),
            ["Machine", "Busy", "Busy time", "Jobs", "Failed", "Stale", "Wait p50", "Wait p95",
             "Longest hold", "Reservations", "Reserved"]
        );
        assert_eq!(
            cells(lines[2]),
            ["rig1", "76.7%", "1h 16m", "2", "1", "0", "0s", "4s", "1h 6m", "0", "0s"]
        );
        assert_eq!(
            cells(lines[4]),
            ["rig3", "0.0%", "0s", "0", "0", "0", "-", "-", "0s", "1", "53m 20s"]
        );
        assert_eq!(
            lines[5],
            "Lab: 3 machines, busy 31.1% (1h 33m), 3 jobs, 1 failed, 1 stale cleared, \
             wait p50 4s p95 6s, longest hold 1h 6m, 1 reservation (53m 20s)"
        );
        assert_eq!(lines.len(), 6, "{text}");
    }

    fn a_window_given_as_a_duration_reaches_back_from_now(env: &TestEnv) {
        // Events of the last hours: a job of 30 minutes that ended 90
        // minutes ago, and one that is still held, claimed 10 minutes ago.
        let now = unix_now();
        let mut events = Vec::new();
        for (seq, at, kind, pid) in [
            (1, now - 7200, "claimed", 1),
            (2, now - 5400, "released", 1),
            (3, now - 600, "claimed", 2),
        ] {
            events.push(json!({
                "seq": seq, "time": at, "machine": "rig1", "event": kind, "job": "j",
                "pid": pid, "user": "alice", "host": "h", "detail": null,
            }));
        }
        lab_with_history(env, &events);
        // The last hour: only the held claim, up to now (600 s, give or
        // take the second the command starts in).
        let got = stats(env, &["--since", "1h", "--json"]).json();
        let busy = got["rows"][0]["busy_seconds"].as_i64().expect("busy");
        assert!((600..=602).contains(&busy), "{got}");
        assert_eq!(got["rows"][0]["jobs"], 1);
        // From the first event: both holds.
        let got = stats(env, &["--json"]).json();
        assert_eq!(got["since"], now - 7200);
        let busy = got["rows"][0]["busy_seconds"].as_i64().expect("busy");
        assert!((2400..=2402).contains(&busy), "{got}");
        // Up to a minute before the first event (not 2h, which the first
        // event's second would fall inside of whenever a second ticks over
        // between its writing and the command): nothing happened.
        let got = stats(env, &["--since", "3h", "--until", "121m", "--json"]).json();
        assert_eq!(got["total"]["jobs"], 0);
        assert_eq!(got["total"]["busy_seconds"], 0);
    }

    fn bad_windows_and_rows_are_refused_naming_them(env: &TestEnv) {
        env.add("rig1", 1);
        stats(env, &["--by", "machines"]).fails_saying(2, "invalid value 'machines' for '--by");
        stats(env, &["--since", "last week"])
            .fails_saying(2, "'last week' is neither a duration");
        stats(env, &["--until", "2026-02-30"]).fails_saying(2, "'2026-02-30' is not a date");
        let said = stats(env, &["--since", "1h", "--until", "2h"])
            .fails_saying(1, "--since (")
            .to_string();
        assert!(said.contains("is not before --until"), "{said}");
    }
}

on_both_backends! {
    fn a_claim_records_how_long_it_waited(env: &TestEnv) {
        env.add("rig1", 1);
        let mut holder = hold_until_go(env, "rig1", "holder");
        let started = std::time::Instant::now();
        let mut waiter = env.start(sh_job(env, "rig1", &["--job", "waiter"], "true"));
        waiter.expect_stderr("waiting to claim it", LIMIT);
        // The holder keeps it a while longer: the wait to be measured.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let held = started.elapsed().as_secs_f64();
        fs::write(env.path().join("holder.go"), "").expect("go");
        holder.finish(LIMIT).ok();
        waiter.finish(LIMIT).ok();
        let whole = started.elapsed().as_secs_f64();
        let claims: Vec<f64> = env
            .events()
            .iter()
            .filter(|e| e["event"] == "claimed")
            .map(|e| e["waited"].as_f64().expect("a wait"))
            .collect();
        assert_eq!(claims.len(), 2, "{claims:?}");
        // The waiter waited from after the holder's claim (which waited
        // for nothing) until after the go, and not longer than it lived.
        assert!(claims[0] < 0.5, "{claims:?}");
        assert!(claims[1] >= 0.5 && claims[1] <= whole, "{claims:?}, held {held}");
        let got = env.run(["stats", "--json"]).json();
        assert_eq!(got["total"]["wait_p95"].as_f64(), Some(claims[1]));
    }
}

#[test]
fn a_run_records_its_wait_and_its_status() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.run(["run", "rig1", "--", "sh", "-c", "exit 3"])
        .fails(3);
    let events = env.events();
    let claimed = &events[events.len() - 2];
    let released = &events[events.len() - 1];
    assert_eq!(claimed["event"], "claimed");
    let waited = claimed["waited"].as_f64().expect("a wait");
    assert!((0.0..5.0).contains(&waited), "{claimed}");
    assert_eq!(released["status"], 3);
    let got = env.run(["stats", "--json"]).json();
    assert_eq!(got["total"]["failed"], 1);
    assert_eq!(got["total"]["jobs"], 1);
}

#[test]
fn a_database_lab_gets_its_new_columns_once_and_reads_without_them() {
    if !cfg!(mama_postgres) {
        return;
    }
    let env = TestEnv::postgres();
    env.add("rig1", 1);
    let db = env.db.as_ref().expect("a database");
    let columns = || -> i64 {
        db.value(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_name = 'mama_event' AND column_name IN ('waited', 'status')",
        )
    };
    // A lab whose events have nothing for them has none yet, and reads.
    assert_eq!(columns(), 0);
    env.run(["log"]).ok();
    env.run(["stats"]).ok();
    env.run(["run", "rig1", "--", "sh", "-c", "exit 2"])
        .fails(2);
    assert_eq!(columns(), 2);
    env.run(["run", "rig1", "--", "true"]).ok();
    assert_eq!(columns(), 2);
    let statuses: Vec<Value> = env
        .events()
        .iter()
        .filter(|e| e["event"] == "released")
        .map(|e| e["status"].clone())
        .collect();
    assert_eq!(statuses, [json!(2), json!(0)]);
    assert_eq!(env.run(["stats", "--json"]).json()["total"]["failed"], 1);
}

on_both_backends! {
    fn settings_and_power_devices_are_no_machines(env: &TestEnv) {
        // Their events name a setting and a device where others name a
        // machine: neither is a row, nor counts in the lab's machine time.
        env.add("rig1", 1);
        env.run(["setting", "history-keep-days", "90"]).ok();
        env.run(["device", "add", "pdu1", "--driver", "usbrly08", "--port", "/dev/x"])
            .ok();
        env.run(["device", "delete", "pdu1"]).ok();
        env.run(["run", "rig1", "--", "true"]).ok();
        let got = stats(env, &["--json"]).json();
        let names: Vec<String> = rows(&got, "machine").into_iter().map(|r| r.0).collect();
        assert_eq!(names, ["rig1"], "{got}");
        assert_eq!(got["total"]["machines"], 1, "{got}");
        assert_eq!(got["total"]["jobs"], 1, "{got}");
        let by_user = stats(env, &["--by", "user", "--json"]).json();
        assert_eq!(by_user["total"]["machines"], 1, "{by_user}");
    }
}

#[test]
#[cfg_attr(
    not(mama_faketime),
    ignore = "needs faketime: run tests/install-tools as root"
)]
fn an_until_past_now_counts_as_now_the_current_second_included() {
    let env = TestEnv::new();
    lab_with_history(&env, &fixture());
    // The clock stands still at T0 + 10000 s: rig3's claim at 9500 is
    // still held. Without --until and with one past now alike, the window
    // ends after the current second.
    let at_rest = |args: &[&str]| {
        let mut cmd = Command::new("faketime");
        remove_mama_env(&mut cmd);
        // `-f` with a date: a clock that stands still (without it, the
        // clock starts there and runs on).
        cmd.args(["-f", "2026-11-02 02:46:40", MAMA, "stats", "--json"])
            .args(args)
            .env("MAMA_STATE", &env.state)
            .env("TZ", "UTC");
        Run::from(cmd.output().expect("run mama stats")).json()
    };
    for args in [&[][..], &["--until", "2099-01-01"][..]] {
        let got = at_rest(args);
        assert_eq!(got["until"], T0 + 10001, "{args:?}: {got}");
        assert_eq!(got["rows"][2]["busy_seconds"], 501, "{args:?}: {got}");
    }
}

// ---------------------------------------------------------------------------
// Retention

/// Lines of `pairs` claim and release pairs of rig1, numbered from
/// `first`, `at` seconds since the epoch each, a job of 60 s; with `pad`
/// bytes of label.
fn job_lines(first: u64, pairs: u64, at: i64, pad: usize) -> Vec<Value> {
    let label = format!("job-{}", "x".repeat(pad));
    (0..pairs)
        .flat_map(|i| {
            let seq = first + 2 * i;
            [("claimed", seq, at), ("released", seq + 1, at + 60)].map(|(kind, seq, time)| {
                json!({
                    "seq": seq, "time": time, "machine": "rig1", "event": kind,
                    "job": label, "pid": 1000 + i, "user": "alice", "host": "h",
                    "detail": null, "status": 0,
                })
            })
        })
        .collect()
}

/// The log's segments beside the state, by name.
fn segments(env: &TestEnv) -> Vec<String> {
    let mut names: Vec<String> = env
        .files()
        .into_iter()
        .filter(|n| n.starts_with("mama.xml.log."))
        .collect();
    names.sort();
    names
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

/// `FLUSH_AT + 1` transactions: the last moves the state's events to the
/// log (and rotates and prunes it).
fn flush(env: &TestEnv, tag: &str) {
    for i in 0..=FLUSH_AT {
        env.run(["set", "rig1", "os", &format!("{tag}{i}")]).ok();
    }
}

#[test]
fn retention_is_a_lab_setting_checked_and_shown() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.run(["setting", "history-max-size", "500M"])
        .ok_saying("524288000");
    env.run(["setting", "history_keep_days", "90"]).ok();
    let all = env.run(["setting"]).ok().to_string();
    assert!(all.contains("history-keep-days            90"), "{all}");
    assert!(
        all.contains("history-max-size             524288000 (500.0 MiB)"),
        "{all}"
    );
    env.run(["setting", "history-max-size", "12X"])
        .fails_saying(1, "'12X' is not a size");
    env.run(["setting", "history-max-size", "100K"])
        .fails_saying(1, "from 1M to 64G");
    env.run(["setting", "history-keep-days", "soon"])
        .fails_saying(1, "history-keep-days must be a whole number of days");
    let json = env.run(["setting", "--json"]).json();
    assert_eq!(json["history-max-size"], "524288000");
    assert_eq!(json["history-keep-days"], "90");
}

#[test]
fn a_log_past_its_segment_size_is_rotated_whole_and_read_across() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    // A history of 1 MiB: the live log is rotated past 128 KiB.
    env.run(["setting", "history-max-size", "1M"]).ok();
    let old = unix_now() - 3 * 86400;
    let seeded = job_lines(1, 500, old, 100);
    let n = seeded.len() as u64;
    let text = lines(&seeded);
    assert!(text.len() > 128 << 10, "{} bytes", text.len());
    fs::write(log_path(&env), &text).expect("write the log");
    commit_log_up_to(&env, n);
    flush(&env, "a");
    // Renamed whole, named after its first event; the flushed events in a
    // new live log.
    assert_eq!(segments(&env), ["mama.xml.log.1"]);
    assert_eq!(
        fs::read_to_string(env.path().join("mama.xml.log.1")).expect("the segment"),
        text
    );
    let live = fs::read_to_string(log_path(&env)).expect("the live log");
    assert_eq!(
        seqs(&parse_json_lines(&live)),
        (n + 1..=n + FLUSH_AT as u64).collect::<Vec<_>>()
    );
    // The segment and the live log made like the state file.
    assert_eq!(env.files_containing("tmp"), Vec::<String>::new());
    // `log` and `stats` read across both, oldest first.
    let all = env.events();
    assert_eq!(
        seqs(&all),
        (1..=n + FLUSH_AT as u64 + 1).collect::<Vec<_>>()
    );
    let got = env.run(["stats", "--json"]).json();
    assert_eq!(got["total"]["jobs"], 500);
    assert_eq!(got["total"]["busy_seconds"], 500 * 60);
    assert_eq!(
        seqs(&parse_json_lines(
            env.run(["log", "-n", "2", "--json"]).ok()
        )),
        [n + FLUSH_AT as u64, n + FLUSH_AT as u64 + 1]
    );
    assert_eq!(
        env.info("rig1")["recent_events"].as_array().map(Vec::len),
        Some(5)
    );
    // The segment's events are three days old: a day's log leaves them.
    let day = parse_json_lines(env.run(["log", "--since", "1d", "--json"]).ok());
    assert_eq!(
        seqs(&day),
        (n + 1..=n + FLUSH_AT as u64 + 1).collect::<Vec<_>>()
    );
    let last = n + FLUSH_AT as u64 + 1;
    let rig1 = parse_json_lines(env.run(["log", "rig1", "-n", "3", "--json"]).ok());
    assert_eq!(seqs(&rig1), [last - 2, last - 1, last]);

    // Kept a day, the next flush drops the segment, whole: its events are
    // three days old.
    env.run(["setting", "history-keep-days", "1"]).ok();
    flush(&env, "b");
    assert_eq!(segments(&env), Vec::<String>::new());
    let all = env.events();
    assert_eq!(seqs(&all).first(), Some(&(n + 1)));
    assert_eq!(env.run(["stats", "--json"]).json()["total"]["jobs"], 0);
}

#[test]
fn a_writer_killed_as_it_rotated_leaves_a_readable_history() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let seeded = job_lines(1, 20, unix_now() - 600, 0);
    let n = seeded.len() as u64;
    fs::write(log_path(&env), lines(&seeded)).expect("write the log");
    commit_log_up_to(&env, n);
    // What a writer killed right after the rename leaves: the segment,
    // no live log yet, the state as it was.
    fs::rename(log_path(&env), env.path().join("mama.xml.log.1")).expect("rename");
    assert_eq!(seqs(&env.events()), (1..=n).collect::<Vec<_>>());
    assert_eq!(env.run(["stats", "--json"]).json()["total"]["jobs"], 20);
    // The next writers number on after the segment and log nothing twice.
    flush(&env, "c");
    let all = env.events();
    assert_eq!(
        seqs(&all),
        (1..=n + FLUSH_AT as u64 + 1).collect::<Vec<_>>()
    );
    let live = parse_json_lines(&fs::read_to_string(log_path(&env)).expect("the live log"));
    assert_eq!(seqs(&live).first(), Some(&(n + 1)));
}

#[test]
fn a_link_planted_as_a_segment_is_never_followed() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.run(["setting", "history-max-size", "1M"]).ok();
    let seeded = job_lines(1, 500, unix_now() - 600, 100);
    let n = seeded.len() as u64;
    fs::write(log_path(&env), lines(&seeded)).expect("write the log");
    commit_log_up_to(&env, n);
    let victim = env.path().join("victim");
    fs::write(&victim, "precious\n").expect("the victim");
    std::os::unix::fs::symlink(&victim, env.path().join("mama.xml.log.1")).expect("plant");
    // The flush finds the segment's name taken by a link: it refuses it,
    // naming it, and writes nothing through it; so do readers.
    for i in 0..FLUSH_AT {
        env.run(["set", "rig1", "os", &format!("d{i}")]).ok();
    }
    env.run(["set", "rig1", "os", "d"])
        .fails_saying(1, "mama.xml.log.1 is a symbolic link");
    env.run(["log"])
        .fails_saying(1, "mama.xml.log.1 is a symbolic link");
    env.run(["stats"])
        .fails_saying(1, "mama.xml.log.1 is a symbolic link");
    assert_eq!(
        fs::read_to_string(&victim).expect("the victim"),
        "precious\n"
    );
    // Once it is gone, the next flush rotates the log.
    fs::remove_file(env.path().join("mama.xml.log.1")).expect("remove the link");
    env.run(["set", "rig1", "os", "e"]).ok();
    assert_eq!(segments(&env), ["mama.xml.log.1"]);
    assert_eq!(
        seqs(&env.events()),
        (1..=n + FLUSH_AT as u64 + 1).collect::<Vec<_>>()
    );
}

#[test]
fn a_keep_days_written_by_hand_past_any_cutoff_drops_nothing_young() {
    // A state file's history-keep-days as mama never writes it (edited by
    // hand, past what an i64 holds): a cutoff that far back keeps every
    // event, never wraps round to one in the future that drops them all.
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.run(["setting", "history-max-size", "1M"]).ok();
    env.run(["setting", "history-keep-days", "90"]).ok();
    let seeded = job_lines(1, 500, unix_now() - 600, 100);
    let n = seeded.len() as u64;
    fs::write(log_path(&env), lines(&seeded)).expect("write the log");
    commit_log_up_to(&env, n);
    let state = env.read_state();
    assert!(state.contains("<history_keep_days>90<"), "{state}");
    env.write_state(&state.replace(
        "<history_keep_days>90<",
        "<history_keep_days>18446744073709551615<",
    ));
    // The flush rotates the log, then prunes by the retention.
    flush(&env, "a");
    assert_eq!(segments(&env), ["mama.xml.log.1"]);
    assert_eq!(seqs(&env.events()).first(), Some(&1));
}

#[test]
fn a_database_lab_drops_events_past_its_retention() {
    if !cfg!(mama_postgres) {
        return;
    }
    let env = TestEnv::postgres();
    env.add("rig1", 1);
    env.run(["setting", "history-keep-days", "1"]).ok();
    let db = env.db.as_ref().expect("a database");
    // Events 1 to 254: the oldest 200 three days old, then recent ones;
    // the transaction whose events reach 256 trims the history.
    let old = unix_now() - 3 * 86400;
    db.batch(&format!(
        "DELETE FROM mama_event;
         INSERT INTO mama_event (seq, time, machine, event, \"user\", host, detail)
           SELECT s, CASE WHEN s <= 200 THEN {old} ELSE {old} + 3 * 86400 - 60 END,
                  'rig1', 'set', 'alice', 'h', 'os=' || s
           FROM generate_series(1, 254) s;"
    ));
    env.run(["set", "rig1", "os", "a"]).ok();
    let count = || -> i64 { db.value("SELECT count(*) FROM mama_event") };
    assert_eq!(count(), 255);
    env.run(["set", "rig1", "os", "b"]).ok();
    assert_eq!(seqs(&env.events()).first(), Some(&201));
    assert_eq!(count(), 56);
    // By size: 1 MiB of some 130-byte lines keeps about 8,000 of them.
    env.run(["setting", "history-keep-days", "0"]).ok();
    env.run(["setting", "history-max-size", "1M"]).ok();
    db.batch(
        "INSERT INTO mama_event (seq, time, machine, event, \"user\", host, detail)
           SELECT s, 1, 'rig1', 'set', 'alice', 'h', 'os=' || s
           FROM generate_series(300, 20222) s;",
    );
    // The second reaches 20224, a multiple of 256.
    env.run(["set", "rig1", "os", "c"]).ok();
    assert!(count() > 19_000);
    env.run(["set", "rig1", "os", "d"]).ok();
    let left = count();
    assert!((5_000..=12_000).contains(&left), "{left} events left");
    let newest: i64 = db.value("SELECT max(seq) FROM mama_event");
    let oldest: i64 = db.value("SELECT min(seq) FROM mama_event");
    assert_eq!(
        newest - oldest + 1,
        left,
        "the newest are kept, without gaps"
    );
}
