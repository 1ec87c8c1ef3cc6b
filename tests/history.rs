//! The history, checked against the real binary: an event for every kind of
//! change with who, where and how, a log that agrees with the state whatever
//! instant a writer is killed, and `log`'s filters, `--json` and
//! `--follow`.
//!
//! What only mama commands and real processes show runs against both
//! backends (`on_both_backends!`: a state file and a database lab); tests
//! that write or read the state file (or the log file) by hand are the file
//! lab's.

use crate::common::*;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mama::backend::file::log::{FLUSH_AT, SEGMENT};
use serde_json::{Value, json};

/// The fields of an event, in the order `log --json` writes them.
const FIELDS: [&str; 9] = [
    "seq", "time", "machine", "event", "job", "pid", "user", "host", "detail",
];

fn log_path(env: &TestEnv) -> PathBuf {
    env.path().join("mama.xml.log")
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {e}"))
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(seq).collect()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().expect("event kind"))
        .collect()
}

/// The state's `<event_seq>`.
fn event_seq(env: &TestEnv) -> Option<u64> {
    let state = env.read_state();
    state
        .split_once("<event_seq>")
        .and_then(|(_, rest)| rest.split_once("</event_seq>"))
        .map(|(number, _)| number.trim().parse().expect("a number in <event_seq>"))
}

/// The committed events the state holds itself (`<pending_events>`),
/// oldest first.
fn held(env: &TestEnv) -> Vec<Value> {
    let state = env.read_state();
    match state.split_once("<pending_events>") {
        None => Vec::new(),
        Some((_, rest)) => {
            let (text, _) = rest
                .split_once("</pending_events>")
                .expect("</pending_events>");
            let text = text
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            parse_json_lines(&text)
        }
    }
}

/// Makes the state commit exactly the events 1..=n of a seeded log: sets
/// `<event_seq>` and drops the events the state held itself.
fn set_event_seq(env: &TestEnv, n: u64) {
    let state = env.read_state();
    let old = event_seq(env).expect("the state has an <event_seq>");
    let mut text = state.replace(
        &format!("<event_seq>{old}</event_seq>"),
        &format!("<event_seq>{n}</event_seq>"),
    );
    if let (Some(start), Some(end)) = (
        text.find("\n  <pending_events>"),
        text.find("</pending_events>"),
    ) {
        text.replace_range(start..end + "</pending_events>".len(), "");
    }
    env.write_state(&text);
    assert_eq!(event_seq(env), Some(n));
    assert!(!env.read_state().contains("pending_events"));
}

/// An event line as mama writes it.
fn line(seq: u64, time: i64, machine: &str, event: &str, detail: &str) -> String {
    let mut text = json!({
        "seq": seq, "time": time, "machine": machine, "event": event, "job": null,
        "pid": null, "user": "alice", "host": "bench", "detail": detail,
    })
    .to_string();
    text.push('\n');
    text
}

/// Asserts that an event has the nine fields, and no other but a claim's
/// `waited` (which every claim has) and a release's `status` (which a
/// run's has); `what` names it in the message.
#[track_caller]
fn assert_fields(e: &Value, what: &str) {
    let fields = e.as_object().expect("an object");
    let mut got: Vec<&str> = fields.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = FIELDS.to_vec();
    if e["event"] == "claimed" {
        want.push("waited");
        assert!(e["waited"].as_f64().is_some_and(|w| w >= 0.0), "{what}");
    }
    if e["event"] == "released" && fields.contains_key("status") {
        want.push("status");
        assert!(e["status"].is_i64(), "{what}");
    }
    want.sort_unstable();
    assert_eq!(got, want, "{what}");
}

/// Checks the fields every event has: all nine, by this user on this host,
/// at a time within `[from, to]`.
#[track_caller]
fn check_who_and_when(events: &[Value], from: i64, to: i64) {
    let (user, host) = (user_name(), host_name());
    for e in events {
        assert_fields(e, &e.to_string());
        assert_eq!(e["user"], user.as_str(), "{e}");
        assert_eq!(e["host"], host.as_str(), "{e}");
        let time = e["time"].as_i64().expect("time");
        assert!(from <= time && time <= to, "{e}: not within {from}..{to}");
    }
}

/// Asserts the event's kind, machine, job, PID and detail.
#[track_caller]
fn check(e: &Value, kind: &str, machine: &str, job: Value, pid: Value, detail: Value) {
    assert_eq!(
        (
            &e["event"],
            &e["machine"],
            &e["job"],
            &e["pid"],
            &e["detail"]
        ),
        (&json!(kind), &json!(machine), &job, &pid, &detail),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// 1. An event for every kind of change

#[test]
fn every_change_records_one_event_with_who_and_where() {
    let env = TestEnv::new();
    let from = unix_now();
    env.add("rig1", 1);
    // A no-op set and the same value twice record nothing more.
    env.run(["set", "rig1", "os", "fedora"]).ok();
    env.run(["set", "rig1", "os", "fedora"]).ok();
    env.run(["set", "rig1", "ip", "10.0.0.7"]).ok();
    env.run(["reserve", "rig1"]).ok();
    env.run(["reserve", "rig1"]).ok();
    env.run(["release", "rig1"]).ok();
    env.run(["release", "rig1"]).fails(1);
    env.run(["release-forced", "rig1"]).ok();
    // Another user's reservation, written by hand, released by force.
    env.run(["reserve", "rig1"]).ok();
    let me = format!("<reservation>{}</reservation>", user_name());
    let state = env.read_state();
    assert!(state.contains(&me), "{state}");
    env.write_state(&state.replace(&me, "<reservation>zoe</reservation>"));
    env.run(["release", "rig1"]).fails(1);
    env.run(["release-forced", "rig1"]).ok();
    // A job another tool left (its process is gone), forgotten by clear;
    // the ip a person set stays.
    let gone = dead_pid();
    write_job(&env, "rig1", "flash fw", Some(gone), unix_now());
    env.run(["clear", "rig1"]).ok();
    env.run(["clear", "rig1"]).ok();
    env.run(["delete", "rig1"]).ok();
    let to = unix_now();

    let log = env.events();
    check_who_and_when(&log, from, to);
    assert_eq!(seqs(&log), (1..=9).collect::<Vec<_>>(), "{log:#?}");
    assert_eq!(event_seq(&env), Some(9));
    let none = Value::Null;
    let want = [
        (
            "added",
            none.clone(),
            none.clone(),
            json!("mac aa:bb:cc:dd:ee:01"),
        ),
        ("set", none.clone(), none.clone(), json!("os=fedora")),
        ("set", none.clone(), none.clone(), json!("ip=10.0.0.7")),
        ("reserved", none.clone(), none.clone(), none.clone()),
        ("unreserved", none.clone(), none.clone(), none.clone()),
        ("reserved", none.clone(), none.clone(), none.clone()),
        (
            "force_released",
            none.clone(),
            none.clone(),
            json!("was reserved by zoe"),
        ),
        ("cleared", json!("flash fw"), json!(gone), none.clone()),
        ("deleted", none.clone(), none.clone(), none),
    ];
    for (e, (kind, job, pid, detail)) in log.iter().zip(want) {
        check(e, kind, "rig1", job, pid, detail);
    }
    // The machine is gone, its history is not.
    assert!(
        env.run(["list", "--json"])
            .json()
            .as_array()
            .expect("array")
            .is_empty()
    );
    assert_eq!(
        parse_json_lines(env.run(["log", "rig1", "--json"]).ok()),
        log
    );
}

/// Runs `mama ARGS` (a `run`) to its end; returns its PID and result.
fn run_job(env: &TestEnv, args: &[&str]) -> (u32, Run) {
    let mut kids = Kids(vec![env.spawn(args)]);
    let pid = kids.0[0].id();
    let run = finish_child(&mut kids.0[0], "the run to end");
    (pid, run)
}

on_both_backends! {
    fn runs_record_the_claim_and_how_the_job_ended(env: &TestEnv) {
        env.add("rig1", 1);
        let from = unix_now();
        let cases: [(&[&str], i32, &str, &str); 5] = [
            (
                &["run", "rig1", "--", "true"],
                0,
                "run true",
                "exit 0 after ",
            ),
            (
                &["run", "rig1", "--job", "smoke", "--", "sh", "-c", "exit 3"],
                3,
                "smoke",
                "exit 3 after ",
            ),
            (
                &["run", "rig1", "--", "sh", "-c", "kill -TERM $$"],
                128 + 15,
                "run sh",
                "killed by signal 15 after ",
            ),
            (
                &["run", "rig1", "--timeout", "0.3", "--", "sleep", "30"],
                124,
                "run sleep",
                "timed out after ",
            ),
            (
                &["run", "rig1", "--", "/no/such/command"],
                127,
                "run command",
                "not started (",
            ),
        ];
        let mut pids = Vec::new();
        for (args, code, _, _) in &cases {
            let (pid, run) = run_job(env, args);
            run.fails(*code);
            pids.push(pid);
        }
        let to = unix_now();

        let log = env.events();
        assert_eq!(log.len(), 1 + 2 * cases.len(), "{log:#?}");
        let runs = &log[1..];
        check_who_and_when(runs, from, to);
        for (i, ((_, code, label, ending), pid)) in cases.iter().zip(&pids).enumerate() {
            let (claimed, released) = (&runs[2 * i], &runs[2 * i + 1]);
            // The release records the status the run exited with.
            assert_eq!(released["status"], json!(code), "{released}");
            check(
                claimed,
                "claimed",
                "rig1",
                json!(label),
                json!(pid),
                Value::Null,
            );
            let detail = released["detail"].as_str().expect("a detail");
            check(
                released,
                "released",
                "rig1",
                json!(label),
                json!(pid),
                json!(detail),
            );
            assert!(detail.starts_with(ending), "{released}");
            assert!(detail.ends_with('s'), "{released}: no time held");
        }
        let not_started = runs[9]["detail"].as_str().expect("detail");
        assert!(not_started.contains(") after "), "{not_started}");
        // Every claim was released: the machine is free.
        assert_eq!(env.info("rig1")["job"], Value::Null);
    }
}

#[test]
fn waiters_record_the_stale_jobs_they_clear_and_why() {
    let env = TestEnv::new();
    env.add("dead", 1);
    env.add("reused", 2);
    env.add("expired", 3);
    let claimed = unix_now() - 1000;

    // A PID that no process has any more.
    let dead_pid = dead_pid();
    write_job(&env, "dead", "old job", Some(dead_pid), claimed);
    // A PID whose process started long after the claim.
    let sleeping = sleeper();
    let reused_pid = sleeping.pid();
    write_job(&env, "reused", "older job", Some(reused_pid), claimed);
    // No PID, claimed long ago.
    write_job(&env, "expired", "by hand", None, claimed);
    let before = env.events().len();

    let from = unix_now();
    env.run(["run", "dead", "--", "true"]).ok();
    env.run(["run", "reused", "--", "true"]).ok();
    env.run(["wait", "expired"]).ok();
    let to = unix_now();
    assert!(
        alive(reused_pid),
        "the process of a reused PID is left alone"
    );
    drop(sleeping);

    let log = env.events();
    let new = &log[before..];
    check_who_and_when(new, from, to);
    assert_eq!(
        kinds(new),
        [
            "stale_cleared",
            "claimed",
            "released",
            "stale_cleared",
            "claimed",
            "released",
            "stale_cleared"
        ],
        "{new:#?}"
    );
    check(
        &new[0],
        "stale_cleared",
        "dead",
        json!("old job"),
        json!(dead_pid),
        json!(format!("PID {dead_pid} is not running")),
    );

    let reused = new[3]["detail"].as_str().expect("detail");
    check(
        &new[3],
        "stale_cleared",
        "reused",
        json!("older job"),
        json!(reused_pid),
        json!(reused),
    );
    let prefix = format!("PID {reused_pid} was reused: its process started ");
    let late: i64 = reused
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(" s after the claim"))
        .unwrap_or_else(|| panic!("{reused}"))
        .parse()
        .expect("a number of seconds");
    assert!((995..=unix_now() - claimed + 1).contains(&late), "{reused}");

    let expired = new[6]["detail"].as_str().expect("detail");
    check(
        &new[6],
        "stale_cleared",
        "expired",
        json!("by hand"),
        Value::Null,
        json!(expired),
    );
    let age: i64 = expired
        .strip_prefix("no PID recorded and claimed ")
        .and_then(|r| r.strip_suffix(" s ago (stale after 300 s)"))
        .unwrap_or_else(|| panic!("{expired}"))
        .parse()
        .expect("a number of seconds");
    assert!((1000..=unix_now() - claimed).contains(&age), "{expired}");
}

// ---------------------------------------------------------------------------
// 2. Kill storm: the log agrees with the state, whatever instant a writer dies

/// A machine as the events tell it.
#[derive(Debug, Default, PartialEq)]
struct Told {
    os: Option<String>,
    kernel: Option<String>,
    reservation: Option<String>,
    /// Label and PID.
    job: Option<(Value, Value)>,
}

/// Replays the committed events into machines, asserting that each one
/// follows from those before it.
fn replay(events: &[Value], round: usize) -> BTreeMap<String, Told> {
    let mut lab: BTreeMap<String, Told> = BTreeMap::new();
    for e in events {
        let name = e["machine"].as_str().expect("machine").to_string();
        let kind = e["event"].as_str().expect("event");
        let job = (e["job"].clone(), e["pid"].clone());
        if kind == "added" {
            assert!(!lab.contains_key(&name), "round {round}: added twice: {e}");
            lab.insert(name, Told::default());
            continue;
        }
        let m = lab
            .get_mut(&name)
            .unwrap_or_else(|| panic!("round {round}: an event for no machine: {e}"));
        match kind {
            "deleted" => {
                lab.remove(&name);
            }
            "set" => {
                let detail = e["detail"].as_str().expect("detail");
                let (field, value) = detail
                    .split_once('=')
                    .unwrap_or_else(|| panic!("round {round}: {e}"));
                let value = Some(value.to_string()).filter(|v| !v.is_empty());
                match field {
                    "os" => m.os = value,
                    "kernel" => m.kernel = value,
                    _ => panic!("round {round}: {e}"),
                }
            }
            "reserved" => {
                assert_eq!(m.reservation, None, "round {round}: {e}");
                m.reservation = Some(e["user"].as_str().expect("user").to_string());
            }
            "unreserved" => {
                assert_eq!(
                    m.reservation.as_deref(),
                    e["user"].as_str(),
                    "round {round}: {e}"
                );
                m.reservation = None;
            }
            "force_released" => {
                let holder = m.reservation.take();
                let detail = holder.map(|h| format!("was reserved by {h}"));
                assert_eq!(
                    e["detail"].as_str(),
                    detail.as_deref(),
                    "round {round}: {e}"
                );
            }
            "claimed" => {
                assert_eq!(m.job, None, "round {round}: claimed a held machine: {e}");
                m.job = Some(job);
            }
            "released" | "stale_cleared" => {
                assert_eq!(m.job.as_ref(), Some(&job), "round {round}: {e}");
                m.job = None;
            }
            "cleared" => {
                if e["job"].is_null() {
                    assert_eq!(m.job, None, "round {round}: {e}");
                } else {
                    assert_eq!(m.job.as_ref(), Some(&job), "round {round}: {e}");
                }
                m.job = None;
            }
            other => panic!("round {round}: unexpected event {other}: {e}"),
        }
    }
    lab
}

/// The machines as `list --json` shows them.
fn told_by_state(env: &TestEnv) -> BTreeMap<String, Told> {
    let list = env.run(["list", "--json"]).json();
    let text = |v: &Value| v.as_str().map(str::to_string);
    list.as_array()
        .expect("array")
        .iter()
        .map(|m| {
            let name = m["name"].as_str().expect("name").to_string();
            let job = (!m["job"].is_null()).then(|| (m["job"].clone(), m["job_pid"].clone()));
            (
                name,
                Told {
                    os: text(&m["os"]),
                    kernel: text(&m["kernel"]),
                    reservation: text(&m["reservation"]),
                    job,
                },
            )
        })
        .collect()
}

/// The raw log file: every line, parsed (`None` for a line that does not
/// parse), and whether the file ends with a newline. No log yet (the
/// newest events live in the state until there are FLUSH_AT of them) reads
/// as an empty one.
fn raw_log(env: &TestEnv) -> (Vec<Option<Value>>, bool) {
    let text = match fs::read_to_string(log_path(env)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("read the log: {e}"),
    };
    let lines = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    (lines, text.is_empty() || text.ends_with('\n'))
}

/// What a storm writer does.
enum Op {
    Add(String, String),
    Delete(String),
    SetOs(String, String),
    Reserve(String),
    Release(String),
    ReleaseForced(String),
    Clear(String),
    Run(String),
}

impl Op {
    fn args(&self) -> Vec<String> {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
        match self {
            Op::Add(name, mac) => v(&["add", name, "--mac", mac]),
            Op::Delete(m) => v(&["delete", m]),
            Op::SetOs(m, value) => v(&["set", m, "os", value]),
            Op::Reserve(m) => v(&["reserve", m]),
            Op::Release(m) => v(&["release", m]),
            Op::ReleaseForced(m) => v(&["release-forced", m]),
            Op::Clear(m) => v(&["clear", m]),
            Op::Run(m) => v(&["run", m, "--no-wait", "--", "true"]),
        }
    }
}

/// The number of the last committed event: the state file's
/// `<event_seq>`, or a database lab's newest event.
fn last_committed(env: &TestEnv) -> u64 {
    match &env.db {
        None => event_seq(env).expect("<event_seq>"),
        Some(db) => db
            .value::<Option<i64>>("SELECT max(seq) FROM mama_event")
            .map_or(0, |seq| seq as u64),
    }
}

/// In a file lab, as readers must see `log` (`committed` events in
/// all) after writers were killed at random instants.
fn log_file_agrees(env: &TestEnv, round: usize, committed: u64, log: &[Value]) {
    // The raw file holds committed events only, each once: every line
    // is an event but a cut last one (a writer killed mid-append),
    // numbered 1, 2, 3... up to at most the state's number. It lacks
    // only events the state still holds, and those it shares with the
    // state are the same events.
    let in_state = held(env);
    assert_eq!(
        seqs(&in_state),
        (committed + 1 - in_state.len() as u64..=committed).collect::<Vec<_>>(),
        "round {round}"
    );
    let (mut raw, ends_whole) = raw_log(env);
    if !ends_whole {
        raw.pop();
    }
    let lines: Vec<Value> = raw
        .into_iter()
        .map(|l| l.unwrap_or_else(|| panic!("round {round}: a whole line not an event")))
        .collect();
    let logged = lines.len() as u64;
    assert_eq!(
        seqs(&lines),
        (1..=logged).collect::<Vec<_>>(),
        "round {round}"
    );
    assert!(logged <= committed, "round {round}: {logged} > {committed}");
    assert!(
        logged + in_state.len() as u64 >= committed,
        "round {round}: the log ends at {logged}, the state holds {:?}",
        seqs(&in_state)
    );
    for line in &lines {
        if let Some(copy) = in_state.iter().find(|h| seq(h) == seq(line)) {
            assert_eq!(copy, line, "round {round}");
        }
    }
    // Readers take the log's lines, then what only the state holds.
    let mut read = lines;
    read.extend(in_state.into_iter().filter(|h| seq(h) > logged));
    assert_eq!(read, log, "round {round}");
}

/// In a file lab, after a write that readers see as `log`.
fn log_file_is_whole(env: &TestEnv, round: usize, log: &[Value]) {
    let (raw, ends_whole) = raw_log(env);
    assert!(ends_whole, "round {round}: a cut last line after a write");
    let raw: Vec<Value> = raw
        .into_iter()
        .map(|l| l.expect("every line an event"))
        .collect();
    // The log holds the older events, the state the newest ones.
    assert_eq!(raw[..], log[..raw.len()], "round {round}");
    let newest: Vec<Value> = held(env)
        .into_iter()
        .filter(|e| raw.last().is_none_or(|l| seq(e) > seq(l)))
        .collect();
    assert_eq!(newest[..], log[raw.len()..], "round {round}");
}

/// In a file lab, enough writes for a flush: the log file then holds every
/// event before those the state holds.
fn a_flush_leaves_a_whole_log_file(env: &TestEnv) {
    // Enough writes to flush: the state holds only events of these writes.
    let before = event_seq(env).expect("<event_seq>");
    for i in 0..FLUSH_AT {
        env.run(["set", "m0", "kernel", &format!("final-{i}")]).ok();
    }
    let held = held(env);
    assert!(
        held.first().is_some_and(|e| seq(e) > before),
        "no flush after {before}: {:?}",
        seqs(&held)
    );
    let (raw, ends_whole) = raw_log(env);
    assert!(ends_whole, "a cut last line after a flush");
    let numbers: Vec<u64> = raw
        .iter()
        .map(|l| seq(l.as_ref().expect("every line an event")))
        .collect();
    // Every event before the ones the state holds, each once, in order.
    let first_held = seq(&held[0]);
    assert_eq!(numbers, (1..first_held).collect::<Vec<_>>());
}

on_both_backends! {
    fn killed_writers_never_part_the_log_from_the_state(env: &TestEnv) {
        const MACHINES: usize = 6;
        const ROUNDS: usize = 40;
        for i in 0..MACHINES {
            env.add(&format!("m{i}"), i as u8);
        }
        // Kill at offsets from 0 to twice the time one write takes here
        // when eight start at once, as in a round: the first of them to end.
        let start = Instant::now();
        let mut writers = Kids(
            (0..8)
                .map(|i| {
                    env.cmd(["set", &format!("m{}", i % MACHINES), "kernel", &format!("k{i}")])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("mama starts")
                })
                .collect(),
        );
        wait_until("the first write", LIMIT, || {
            writers
                .0
                .iter_mut()
                .any(|w| w.try_wait().expect("try_wait").is_some())
        });
        let mut span_us = (start.elapsed().as_micros() as u64 * 2).clamp(4_000, 250_000);
        for writer in &mut writers.0 {
            assert!(writer.wait().expect("wait").success());
        }

        let mut prng = Prng(0x2545_f491_4f6c_dd1d);
        let (mut finished, mut killed) = (0, 0);
        let mut promised: Vec<(usize, Op)> = Vec::new();
        for round in 0..ROUNDS {
            let mut m = || format!("m{}", prng.below(MACHINES));
            let ops = [
                Op::Add(format!("n{round}"), format!("02:00:00:00:03:{round:02x}")),
                Op::Delete(format!("n{}", round.saturating_sub(1))),
                Op::SetOs(m(), format!("os-{round}")),
                Op::Reserve(m()),
                Op::Release(m()),
                Op::Clear(m()),
                Op::Run(m()),
                if round % 2 == 0 {
                    Op::Run(m())
                } else {
                    Op::ReleaseForced(m())
                },
            ];
            let delay = Duration::from_micros(prng.next() % span_us);
            let ended = kill_after(env, ops.iter().map(Op::args), delay);
            // Writers slower now than when the window was measured (a
            // loaded machine): widen it, so that kills keep landing at
            // every stage of a write and not only before the first.
            if ended.iter().all(|e| !e.status.success()) {
                span_us = (span_us * 2).min(4_000_000);
            }
            for (op, Ended { status, pid, .. }) in ops.into_iter().zip(ended) {
                use std::os::unix::process::ExitStatusExt;
                match status.signal() {
                    Some(libc::SIGKILL) => killed += 1,
                    Some(other) => panic!("round {round}: {:?} died of signal {other}", op.args()),
                    None => {
                        finished += 1;
                        if status.success() {
                            promised.push((pid as usize, op));
                        }
                    }
                }
            }

            // The committed events: numbered 1, 2, 3... up to the state's number.
            let log = env.events();
            let committed = last_committed(env);
            assert_eq!(
                seqs(&log),
                (1..=committed).collect::<Vec<_>>(),
                "round {round}"
            );
            // They tell the state as it is.
            let told = replay(&log, round);
            let state = told_by_state(env);
            assert_eq!(told, state, "round {round}: the log and the state disagree");
            // Every writer that said it succeeded has its event committed.
            for (pid, op) in &promised {
                let ok = match op {
                    Op::Add(name, mac) => {
                        has_event(&log, name, "added", Some(&format!("mac {mac}")))
                    }
                    Op::Delete(name) => has_event(&log, name, "deleted", None),
                    Op::SetOs(name, value) => {
                        has_event(&log, name, "set", Some(&format!("os={value}")))
                    }
                    // Claimed and released, unless a `clear` forgot the job
                    // while it ran (the run then leaves the record alone).
                    Op::Run(name) => {
                        let by = |kind: &str| {
                            log.iter().any(|e| {
                                e["event"] == kind
                                    && e["machine"] == name.as_str()
                                    && e["pid"] == *pid
                            })
                        };
                        by("claimed") && (by("released") || by("cleared"))
                    }
                    // These may have had nothing to do.
                    Op::Reserve(_) | Op::Release(_) | Op::ReleaseForced(_) | Op::Clear(_) => true,
                };
                assert!(
                    ok,
                    "round {round}: {:?} (PID {pid}) succeeded, its event is missing: {:#?}",
                    op.args(),
                    log.iter().rev().take(12).collect::<Vec<_>>()
                );
            }
            promised.clear();

            // A file lab keeps its newest events in the state file and the
            // others in the log file beside it (a database lab, in a table):
            // the two must agree too.
            if !env.is_postgres() {
                log_file_agrees(env, round, committed, &log);
            }

            // After one more write, readers see it as the newest event.
            env.run(["set", "m0", "kernel", &format!("after-{round}")])
                .ok();
            let log = env.events();
            assert_eq!(
                log.last().map(|e| e["detail"].clone()),
                Some(json!(format!("kernel=after-{round}")))
            );
            let committed = last_committed(env);
            assert_eq!(
                seqs(&log),
                (1..=committed).collect::<Vec<_>>(),
                "round {round}"
            );
            // And a file lab's log file (once the first flush has made it)
            // is whole again: it has every committed event.
            if !env.is_postgres() {
                log_file_is_whole(env, round, &log);
            }
        }
        // A file lab's flush leaves a whole log file behind.
        if !env.is_postgres() {
            a_flush_leaves_a_whole_log_file(env);
        }
        assert!(killed > 0, "no writer was killed");
        assert!(finished > 0, "no writer finished");
        let total = env.events().len();
        assert!(total > ROUNDS * 2, "only {total} events committed");
        eprintln!(
            "kill storm: {ROUNDS} rounds, kills within {span_us} us, {finished} writers finished, \
             {killed} killed, {total} events"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. Rotation

/// Writes a log of events `1..=n` (with `pad` bytes of detail) and commits
/// them in the state; returns each line's length.
fn seed_log(env: &TestEnv, n: u64, time: i64, pad: usize) -> Vec<usize> {
    let mut text = String::new();
    let mut lengths = Vec::new();
    let padding = "p".repeat(pad);
    for seq in 1..=n {
        let l = line(seq, time, "rig1", "set", &format!("os={seq}{padding}"));
        lengths.push(l.len());
        text.push_str(&l);
    }
    fs::write(log_path(env), text).expect("write the log");
    set_event_seq(env, n);
    lengths
}

// A log past its segment size is rotated whole, and old segments dropped
// by the lab's retention: see stats.rs.

/// A log that could not be rotated (here: its first line is no event, so
/// no segment can be named after it) and grew past the size readers
/// refuse: writes go on, reading only its end; `log` refuses it, naming it.
#[test]
fn a_log_grown_past_what_readers_take_does_not_stop_the_lab() {
    use mama::backend::file::log::MAX_LOG;
    use std::io::Write;
    let env = TestEnv::new();
    env.add("rig1", 1);
    let time = unix_now();
    let log = fs::File::create(log_path(&env)).expect("the log");
    // A first line of zeros past the limit (sparse), then events.
    log.set_len(MAX_LOG + 4096).expect("grow it");
    let mut tail = String::from("\n");
    for seq in 1..=40 {
        tail.push_str(&line(seq, time, "rig1", "set", &format!("os={seq}")));
    }
    let mut log = fs::OpenOptions::new()
        .append(true)
        .open(log_path(&env))
        .expect("the log");
    log.write_all(tail.as_bytes()).expect("append");
    set_event_seq(&env, 40);
    // Enough writes for a flush to the log, which cannot be rotated.
    for i in 0..FLUSH_AT + 2 {
        env.run(["set", "rig1", "os", &format!("after-{i}")]).ok();
    }
    let text = fs::read(log_path(&env)).expect("read the log");
    let last = text[..text.len() - 1]
        .rsplit(|&b| b == b'\n')
        .next()
        .expect("a last line");
    let last: Value = serde_json::from_slice(last).expect("an event");
    assert!(last["seq"].as_u64() > Some(40), "{last}");
    assert_eq!(env.info("rig1")["os"], format!("after-{}", FLUSH_AT + 1));
    env.run(["log"])
        .fails_saying(1, "it is not a log mama wrote");
}

// ---------------------------------------------------------------------------
// 4. log: --since, --json, a machine

#[test]
fn log_filters_by_age_and_machine_and_prints_json_lines() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.add("rig2", 2);
    // Four events two hours old, then two new ones.
    let old = unix_now() - 7200;
    let mut text = line(1, old, "rig1", "added", "mac aa:bb:cc:dd:ee:01");
    text.push_str(&line(2, old, "rig2", "added", "mac aa:bb:cc:dd:ee:02"));
    text.push_str(&line(3, old, "rig1", "set", "os=old1"));
    text.push_str(&line(4, old, "rig2", "set", "os=old2"));
    fs::write(log_path(&env), text).expect("write the log");
    set_event_seq(&env, 4);
    env.run(["set", "rig1", "os", "new1"]).ok();
    env.run(["set", "rig2", "os", "new2"]).ok();

    let json = |args: &[&str]| seqs(&parse_json_lines(env.run(args).ok()));
    assert_eq!(json(&["log", "--json"]), [1, 2, 3, 4, 5, 6]);
    assert_eq!(json(&["log", "--json", "--since", "1h"]), [5, 6]);
    assert_eq!(json(&["log", "--json", "--since", "90m"]), [5, 6]);
    assert_eq!(
        json(&["log", "--json", "--since", "3h"]),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        json(&["log", "--json", "--since", "2h30m"]),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(json(&["log", "rig1", "--json"]), [1, 3, 5]);
    assert_eq!(json(&["log", "rig2", "--json", "--since", "1h"]), [6]);

    // The table shows the same.
    let table = env.run(["log", "--since", "1h"]).ok().to_string();
    assert!(table.starts_with("TIME"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.contains("os=new1") && table.contains("os=new2"),
        "{table}"
    );
    assert!(!table.contains("os=old"), "{table}");

    // One object a line, with every field.
    let out = env.run(["log", "--json"]);
    for (l, e) in out.ok().lines().zip(parse_json_lines(out.ok())) {
        assert_fields(&e, l);
        assert!(!l.contains('\n'));
    }
    let newest = &parse_json_lines(out.ok())[5];
    check(
        newest,
        "set",
        "rig2",
        Value::Null,
        Value::Null,
        json!("os=new2"),
    );
    check_who_and_when(std::slice::from_ref(newest), unix_now() - 60, unix_now());
}

on_both_backends! {
    fn log_refuses_bad_durations_and_unknown_machines_not_deleted_ones(env: &TestEnv) {
        env.add("rig1", 1);
        env.add("rig2", 2);
        env.run(["set", "rig2", "os", "new2"]).ok();
        // Bad durations are usage errors that say what is wrong.
        for bad in ["5x", "soon", "1.5h", "-1h", ""] {
            let err = env
                .run(["log".to_string(), format!("--since={bad}")])
                .fails(2)
                .to_string();
            assert!(err.contains("is not a duration"), "{bad}: {err}");
        }
        // An unknown machine is an error naming it; a deleted one has a past.
        env.run(["log", "nosuch"]).fails_saying(1, "nosuch");
        env.run(["delete", "rig2"]).ok();
        let rig2 = parse_json_lines(env.run(["log", "rig2", "--json"]).ok());
        assert_eq!(seqs(&rig2), [2, 3, 4]);
        assert_eq!(kinds(&rig2), ["added", "set", "deleted"]);
    }
}

// ---------------------------------------------------------------------------
// 5. --follow

on_both_backends! {
    fn log_follow_prints_new_events_as_they_are_committed(env: &TestEnv) {
        env.add("rig1", 1);
        env.run(["set", "rig1", "os", "first"]).ok();
        let mut follower = env.cmd(["log", "--follow", "--json"]);
        follower
            .env("MAMA_POLL_INTERVAL", "0.1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut kids = Kids(vec![follower.spawn().expect("mama log starts")]);
        let stdout = kids.0[0].stdout.take().expect("stdout");
        let (send, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + LIMIT;
        let next = |what: &str| -> Value {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no line for {what}: {e}"));
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
        };

        // What was there, then what happens.
        assert_eq!(seq(&next("the first event")), 1);
        assert_eq!(next("the second event")["detail"], "os=first");
        env.run(["set", "rig1", "os", "second"]).ok();
        env.run(["run", "rig1", "--", "true"]).ok();
        let set = next("the set");
        let claimed = next("the claim");
        let released = next("the release");
        assert_eq!(
            seqs(&[set.clone(), claimed.clone(), released.clone()]),
            [3, 4, 5]
        );
        assert_eq!(set["detail"], "os=second");
        assert_eq!(kinds(&[claimed, released]), ["claimed", "released"]);
        // Nothing twice: the next line is the next event.
        env.run(["set", "rig1", "os", "third"]).ok();
        let third = next("the last set");
        assert_eq!((seq(&third), &third["detail"]), (6, &json!("os=third")));

        drop(kids);
        reader.join().expect("the reader ends with the follower");
    }
}

// ---------------------------------------------------------------------------
// 6. info

on_both_backends! {
    fn info_shows_a_machines_last_events(env: &TestEnv) {
        env.add("rig1", 1);
        env.add("rig2", 2);
        for i in 1..=6 {
            env.run(["set", "rig1", "os", &format!("v{i}")]).ok();
            env.run(["set", "rig2", "kernel", &format!("k{i}")]).ok();
        }
        env.run(["run", "rig1", "--", "true"]).ok();

        let all = parse_json_lines(env.run(["log", "rig1", "--json"]).ok());
        assert_eq!(all.len(), 9);
        let recent = env.info("rig1")["recent_events"].clone();
        let recent = recent.as_array().expect("recent_events");
        assert_eq!(recent.as_slice(), &all[4..], "the last 5, oldest first");
        assert_eq!(kinds(recent), ["set", "set", "set", "claimed", "released"]);

        let text = env.run(["info", "rig1"]).ok().to_string();
        let (_, shown) = text
            .split_once("Recent events:\n")
            .unwrap_or_else(|| panic!("{text}"));
        let rows: Vec<&str> = shown.lines().collect();
        assert_eq!(rows.len(), 6, "a header and five events: {text}");
        assert!(rows[0].trim_start().starts_with("TIME"), "{text}");
        for (row, want) in rows[1..]
            .iter()
            .zip(["os=v4", "os=v5", "os=v6", "claimed", "released"])
        {
            assert!(
                row.contains("rig1") && row.contains(want),
                "{row:?} lacks {want}"
            );
            assert!(!row.contains("rig2"), "{row:?}");
        }
    }
}

#[test]
fn info_of_a_machine_that_no_event_tells_of_shows_no_events() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    // A machine written into the state file by hand.
    let state = env.read_state();
    let hand = state.replace(
        "<name>rig1</name>\n    <mac>aa:bb:cc:dd:ee:01</mac>",
        "<name>quiet</name>\n    <mac>aa:bb:cc:dd:ee:09</mac>",
    );
    assert_ne!(hand, state);
    env.write_state(&hand);
    assert_eq!(env.info("quiet")["recent_events"], json!([]));
    let text = env.run(["info", "quiet"]).ok().to_string();
    assert!(!text.contains("Recent events"), "{text}");
}

#[test]
fn info_finds_a_machines_last_events_far_back_in_a_long_log() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.add("rig10", 2);
    let time = unix_now() - 60;
    // 4,000 events of others (some 700 KB, many windows of the backward
    // reading), rig1's three far back and one near the end, a line that is
    // no event, and events of rig10, whose name starts like rig1's.
    let mut text = String::new();
    let pad = "p".repeat(120);
    for seq in 1..=4000u64 {
        let machine = match seq {
            7 | 900 | 1500 | 3990 => "rig1",
            s if s % 3 == 0 => "rig10",
            _ => "other",
        };
        text.push_str(&line(seq, time, machine, "set", &format!("os={seq}{pad}")));
        if seq == 2000 {
            text.push_str("not an event\n");
        }
    }
    fs::write(log_path(&env), text).expect("write the log");
    set_event_seq(&env, 4000);
    let seqs_of =
        |v: &Value| -> Vec<u64> { v.as_array().expect("an array").iter().map(seq).collect() };
    assert_eq!(
        seqs_of(&env.info("rig1")["recent_events"]),
        [7, 900, 1500, 3990]
    );
    // The newest come from the state, before any flush to the log.
    env.run(["set", "rig1", "os", "new"]).ok();
    env.run(["set", "rig10", "os", "new"]).ok();
    env.run(["set", "rig1", "os", "newer"]).ok();
    let all = parse_json_lines(env.run(["log", "rig1", "--json"]).ok());
    assert_eq!(seqs(&all), [7, 900, 1500, 3990, 4001, 4003]);
    let recent = env.info("rig1")["recent_events"].clone();
    assert_eq!(recent.as_array().expect("an array").as_slice(), &all[1..]);
    let rig10 = parse_json_lines(env.run(["log", "rig10", "--json"]).ok());
    let recent = env.info("rig10")["recent_events"].clone();
    assert_eq!(
        recent.as_array().expect("an array").as_slice(),
        &rig10[rig10.len() - 5..]
    );
    // A machine no event tells of reads the whole log and finds none.
    env.add("quiet", 3);
    let recent = env.info("quiet")["recent_events"].clone();
    assert_eq!(kinds(recent.as_array().expect("an array")), ["added"]);
}

// ---------------------------------------------------------------------------
// 7. A big log costs a claim nothing

/// `rchar` (bytes read so far) from a `/proc/PID/io` text.
fn rchar(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_claim_reads_only_the_end_of_a_big_log() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let n = 10_000;
    let lengths = seed_log(&env, n, unix_now() - 60, 250);
    let size: usize = lengths.iter().sum();
    assert!(
        size > 3 << 20 && (size as u64) < SEGMENT,
        "{size} bytes seeded"
    );

    // The job reads what its mama has read so far: the claim included.
    let out = env
        .run([
            "run",
            "rig1",
            "--",
            "sh",
            "-c",
            "cat /proc/$PPID/io 2>/dev/null || echo unreadable",
        ])
        .ok()
        .to_string();
    match rchar(&out) {
        Some(read) => assert!(
            read < (size / 4) as u64,
            "the claim read {read} bytes of a {size}-byte log"
        ),
        None => {
            assert!(out.contains("unreadable"), "{out}");
            assert!(
                fs::read_to_string("/proc/self/io").is_err(),
                "/proc/PID/io is readable here, yet the job could not read it"
            );
            eprintln!("/proc/PID/io is not readable here; the read size is not checked");
        }
    }

    // The events went on from the seeded ones, appended: nothing rewritten.
    let log = env.events();
    assert_eq!(seqs(&log), (1..=n + 2).collect::<Vec<_>>());
    assert_eq!(kinds(&log[n as usize..]), ["claimed", "released"]);
    let text = fs::read_to_string(log_path(&env)).expect("read the log");
    let first: Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("an event");
    assert_eq!(seq(&first), 1);
    assert_eq!(
        text.len(),
        size + text
            .lines()
            .skip(n as usize)
            .map(|l| l.len() + 1)
            .sum::<usize>()
    );
    assert_eq!(event_seq(&env), Some(n + 2));
}

// ---------------------------------------------------------------------------
// 8. An older copy of the state put back

#[test]
fn an_older_state_put_back_keeps_the_history_and_numbers_after_it() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let flush = FLUSH_AT;
    for i in 0..2 * flush + 5 {
        env.run(["set", "rig1", "os", &format!("before-{i}")]).ok();
    }
    let backup = env.read_state();
    let backed_up = env.events();
    // Enough changes after the copy for several flushes.
    for i in 0..3 * flush + 7 {
        env.run(["set", "rig1", "os", &format!("after-{i}")]).ok();
    }
    let seen = env.events();
    assert_eq!(seqs(&seen), (1..=seen.len() as u64).collect::<Vec<_>>());
    assert!(seen.len() > backed_up.len() + 3 * flush, "{}", seen.len());
    assert_eq!(seen[..backed_up.len()], backed_up[..]);

    // The copy put back, then one change: every event the log held is
    // kept, and the new event comes after all of them. Only the newest
    // events, which the overwritten state alone held, are gone with it.
    let logged = raw_log(&env).0.len();
    assert!(
        seen.len() - logged < FLUSH_AT,
        "{} pending",
        seen.len() - logged
    );
    assert!(logged > backed_up.len(), "a flush since the copy");
    env.write_state(&backup);
    env.run(["set", "rig1", "os", "restored"]).ok();
    let now = env.events();
    assert_eq!(now.len(), logged + 1, "{:?}", seqs(&now));
    assert_eq!(now[..logged], seen[..logged]);
    let newest = &now[logged];
    assert_eq!(newest["detail"], "os=restored");
    assert_eq!(seq(newest), seq(&seen[logged - 1]) + 1);
    assert_eq!(event_seq(&env), Some(seq(newest)));
    assert_eq!(env.info("rig1")["os"], "restored");

    // The history goes on from there through more flushes, each event once.
    for i in 0..2 * flush + 3 {
        env.run(["set", "rig1", "os", &format!("later-{i}")]).ok();
    }
    let later = env.events();
    assert_eq!(seqs(&later), (1..=later.len() as u64).collect::<Vec<_>>());
    assert_eq!(later[..now.len()], now[..]);
    assert_eq!(later.len(), now.len() + 2 * flush + 3);
    assert_eq!(
        later.last().map(|e| e["detail"].clone()),
        Some(json!(format!("os=later-{}", 2 * flush + 2)))
    );
    // The file itself: whole lines, each an event, none twice.
    let (raw, ends_whole) = raw_log(&env);
    assert!(ends_whole, "a cut last line");
    let numbers: Vec<u64> = raw
        .iter()
        .map(|l| seq(l.as_ref().expect("every line an event")))
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "numbers out of order or twice: {numbers:?}"
    );
    assert_eq!(numbers, seqs(&later[..numbers.len()]));
    assert!(later.len() - numbers.len() < FLUSH_AT);
}

#[test]
fn the_log_is_made_by_the_first_flush_like_the_state_file_by_then() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let mode = |path: PathBuf| fs::metadata(path).expect("a file").permissions().mode() & 0o7777;
    // Each command under a narrow umask, as whoever set the lab up.
    let narrow = |args: &[&str]| {
        let mut cmd = env.cmd(args);
        // SAFETY: umask is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::umask(0o077);
                Ok(())
            });
        }
        assert!(cmd.status().expect("mama runs").success(), "{args:?}");
    };
    narrow(&["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"]);
    assert_eq!(mode(env.state.clone()), 0o600);
    // Shared after its first event: the log does not exist yet...
    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o664)).expect("chmod");
    assert!(!log_path(&env).exists());
    for i in 0..FLUSH_AT {
        narrow(&["set", "rig1", "os", &format!("v{i}")]);
    }
    // ... and the flush makes it like the state file as it now is.
    assert_eq!(mode(log_path(&env)), 0o664);
    assert_eq!(
        seqs(&env.events()),
        (1..=FLUSH_AT as u64 + 1).collect::<Vec<_>>()
    );
}

#[test]
fn log_shows_the_last_lines_and_follows_in_the_same_columns() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    for i in 0..12 {
        env.run(["set", "rig1", "os", &format!("os{i}")]).ok();
    }
    let last3 = env.run(["log", "-n", "3"]);
    let rows: Vec<&str> = last3.ok().lines().collect();
    assert_eq!(rows.len(), 4, "a header and three events: {rows:?}");
    assert!(
        rows[3].contains("os=os11") && rows[1].contains("os=os9"),
        "{rows:?}"
    );

    // The rows shown first have a longer machine name than those to come.
    env.add("a-long-machine-name", 2);
    let mut follower = env.cmd(["log", "-f", "-n", "2"]);
    follower
        .env("MAMA_POLL_INTERVAL", "0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut kids = Kids(vec![follower.spawn().expect("mama log starts")]);
    let stdout = kids.0[0].stdout.take().expect("stdout");
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let next = || lines.recv_timeout(LIMIT).expect("a line");
    let header = next();
    assert!(header.starts_with("TIME"), "{header}");
    assert!(next().contains("os=os11"));
    assert!(next().contains("a-long-machine-name"));
    // A row of a shorter name still starts each column where the header
    // does.
    env.run(["set", "rig1", "kernel", "6.12"]).ok();
    let row = next();
    assert!(row.contains("kernel=6.12"), "{row}");
    let column = |line: &str, title: &str| {
        header
            .find(title)
            .map(|at| line[at..].split_whitespace().next().map(str::to_string))
    };
    assert_eq!(
        column(&row, "MACHINE"),
        Some(Some("rig1".to_string())),
        "{header}\n{row}"
    );
    assert_eq!(
        column(&row, "EVENT"),
        Some(Some("set".to_string())),
        "{header}\n{row}"
    );
    drop(kids);
}

/// The state's `<pending_events>` element (or none, or `<pending_events/>`)
/// replaced by `element`, and its `<event_seq>` by `seq`.
fn hand_edit_pending(env: &TestEnv, element: &str, seq: u64) {
    let mut text = env.read_state();
    let old = event_seq(env).expect("the state has an <event_seq>");
    text = text.replace(
        &format!("<event_seq>{old}</event_seq>"),
        &format!("<event_seq>{seq}</event_seq>"),
    );
    let start = text.find("<pending_events").expect("<pending_events>");
    let end = match text[start..].find("</pending_events>") {
        Some(at) => start + at + "</pending_events>".len(),
        None => start + text[start..].find("/>").expect("<pending_events/>") + 2,
    };
    text.replace_range(start..end, element);
    env.write_state(&text);
}

#[test]
fn hand_edited_pending_events_never_make_a_number_go_back_or_repeat() {
    let l = |seq: u64, detail: &str| line(seq, 5, "rig1", "set", detail);
    let bare = |seq: u64, detail: &str| l(seq, detail).trim_end().to_string();
    // The element as a hand or another tool left it, its event_seq, and
    // the newest number in it.
    let cases: Vec<(&str, String, u64, u64)> = vec![
        ("empty element", "<pending_events/>".into(), 1, 1),
        (
            "CDATA, last line without its end",
            format!(
                "<pending_events><![CDATA[{}]]>{}</pending_events>",
                l(1, "a"),
                bare(2, "b")
            ),
            2,
            2,
        ),
        (
            "comment and references, event_seq behind",
            format!(
                "<pending_events>{}<!-- by hand -->{}&#10;{}</pending_events>",
                l(1, "a"),
                bare(2, "x&amp;y"),
                bare(3, "c")
            ),
            1,
            3,
        ),
        (
            "a child element, indented",
            format!(
                "<pending_events>\n    <note>{}</note>\n    {}    </pending_events>",
                bare(40, "inside"),
                l(2, "b")
            ),
            2,
            2,
        ),
        (
            "white space only",
            "<pending_events>\n    </pending_events>".into(),
            5,
            5,
        ),
        (
            "out of order",
            format!(
                "<pending_events>{}{}{}</pending_events>",
                l(3, "c"),
                l(1, "a"),
                l(2, "b")
            ),
            2,
            3,
        ),
        (
            "a newer mama's kind, and a line that is no event",
            format!(
                "<pending_events>{}{}not an event\n</pending_events>",
                l(1, "a"),
                line(9, 5, "rig1", "exploded", "new")
            ),
            1,
            9,
        ),
        (
            "carriage returns",
            format!(
                "<pending_events>{}{}</pending_events>",
                l(1, "a").replace('\n', "\r\n"),
                l(2, "b").replace('\n', "\r\n")
            ),
            2,
            2,
        ),
    ];
    for (what, element, committed, newest) in cases {
        let env = TestEnv::new();
        env.add("rig1", 1);
        hand_edit_pending(&env, &element, committed);
        // Past a flush, a run's claim and release (one process, the
        // release reusing the claim's reading) among them.
        let mut details = Vec::new();
        for i in 0..FLUSH_AT + 3 {
            if i == 3 || i == FLUSH_AT - 1 {
                env.run(["run", "rig1", "--", "true"]).ok();
            }
            env.run(["set", "rig1", "os", &format!("v{i}")]).ok();
            details.push(format!("os=v{i}"));
        }
        let events = env.events();
        let numbers = seqs(&events);
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{what}: numbers out of order or twice: {numbers:?}"
        );
        let new: Vec<&Value> = events
            .iter()
            .filter(|e| e["event"] != "set" || e["time"] != 5)
            .collect();
        assert!(
            new.iter().all(|e| seq(e) > newest),
            "{what}: a new event numbered at or before {newest}: {numbers:?}"
        );
        let set: Vec<&str> = new
            .iter()
            .filter(|e| e["event"] == "set")
            .map(|e| e["detail"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(set, details, "{what}");
        assert_eq!(
            new.iter().filter(|e| e["event"] == "claimed").count(),
            2,
            "{what}"
        );
        assert_eq!(event_seq(&env), numbers.last().copied(), "{what}");
        // The file reads back, and the log holds whole lines, each once.
        let (raw, ends_whole) = raw_log(&env);
        assert!(ends_whole, "{what}: a cut last line");
        let logged: Vec<u64> = raw.iter().flatten().map(seq).collect();
        assert!(
            logged.windows(2).all(|w| w[0] < w[1]),
            "{what}: logged out of order or twice: {logged:?}"
        );
    }
}
