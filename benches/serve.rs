//! Benchmarks of `mama serve` against its targets:
//!
//! 1. `/metrics` and `/api/machines` on a lab of 1,000 machines (half of
//!    them busy with live claims): the time of a whole request, connection
//!    included (target: at most 20 ms each);
//! 2. a change seen on an open page: from starting a `mama reserve` (or
//!    `release`) to the server-sent event that shows it arriving on an open
//!    `/events` stream, on a state file and on a database lab (target: at
//!    most 1 s, median at most 200 ms); the time from the command's exit is
//!    shown too (its commit lies between the two).
//!
//! 3. given `MAMA_BENCH_BEFORE=PATH` (a build without the server), `mama
//!    run m -- true` on the database lab with that build and this one, in
//!    turn: what the change notice every writing transaction sends costs.
//!
//! The start-up cost of `mama run -- true`, which the server's code must
//! not raise, is `cargo bench --bench mama -- claim` (with
//! `MAMA_BENCH_BEFORE=PATH` for a build without the server).
//!
//! Run with `cargo bench --bench serve` (as root for the database lab: its
//! server runs as `postgres`; without one that part is skipped).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::pg::{Options, Server};
use common::web::{self, Serving, serving};
use common::{MAMA, lab_xml, machine_xml, mama_command};

/// How long any step may take before the bench gives up.
const LIMIT: Duration = Duration::from_secs(30);
const REQUESTS: usize = 50;
const CHANGES: usize = 30;

fn main() {
    let mut report = Vec::new();
    requests(&mut report);
    changes(&mut report);
    println!();
    for line in report {
        println!("{line}");
    }
}

fn serve(state: &str) -> Serving {
    let mut cmd = mama_command(MAMA, state);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null());
    serving(cmd)
}

struct Stats {
    median: Duration,
    p90: Duration,
    max: Duration,
}

fn stats(samples: &mut [Duration]) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p90: at(0.9),
        max: at(1.0),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn verdict(
    report: &mut Vec<String>,
    what: &str,
    s: &Stats,
    aim_median: Duration,
    must_max: Duration,
) {
    let ok = s.median <= aim_median && s.max <= must_max;
    report.push(format!(
        "{what}: median {}, p90 {}, max {} (target: median <= {}, max <= {}): {}",
        ms(s.median),
        ms(s.p90),
        ms(s.max),
        ms(aim_median),
        ms(must_max),
        if ok { "ok" } else { "MISSED" }
    ));
}

/// A lab of `count` machines, every other one held by a live claim (this
/// process's: its PID lives, its start is unknown to the record).
fn busy_lab(dir: &Path, count: usize) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        .to_string();
    let pid = std::process::id().to_string();
    let machines: Vec<String> = (0..count)
        .map(|i| {
            let name = format!("m{i}");
            let mac = format!("aa:bb:cc:dd:{:02x}:{:02x}", i >> 8, i & 255);
            let mut fields: Vec<(&str, &str)> = vec![("mac", mac.as_str())];
            if i % 2 == 0 {
                fields.extend([
                    ("job", "bench job"),
                    ("job_pid", pid.as_str()),
                    ("job_timestamp", now.as_str()),
                ]);
            }
            machine_xml(&name, 0, &fields)
        })
        .collect();
    let state = dir.join("mama.xml");
    std::fs::write(&state, lab_xml(&machines)).expect("write the lab");
    state.display().to_string()
}

fn requests(report: &mut Vec<String>) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = busy_lab(dir.path(), 1000);
    let server = serve(&state);
    for path in ["/metrics", "/api/machines"] {
        // Warm up, and check what comes back.
        let answer = web::get(server.addr, path);
        assert_eq!(answer.status, 200, "{path}");
        assert!(
            answer.body.contains("m999"),
            "{path}: {}",
            answer.body.len()
        );
        let mut samples: Vec<Duration> = (0..REQUESTS)
            .map(|_| {
                let start = Instant::now();
                let answer = web::get(server.addr, path);
                let took = start.elapsed();
                assert_eq!(answer.status, 200);
                took
            })
            .collect();
        let s = stats(&mut samples);
        verdict(
            report,
            &format!("GET {path}, 1,000 machines ({} bytes)", answer.body.len()),
            &s,
            Duration::from_millis(20),
            Duration::from_millis(20),
        );
    }
}

fn changes(report: &mut Vec<String>) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = dir.path().join("mama.xml");
    std::fs::write(&state, lab_xml(&[machine_xml("m", 1, &[])])).expect("write the lab");
    changes_on(report, "state file", &state.display().to_string());
    let root = common::probe::effective_uid() == Some(0);
    if root && common::probe::postgres_bin_dir().is_some() {
        let server = Server::start(Options {
            durable: true,
            ..Options::default()
        });
        let db = server.fresh_database();
        let added = mama_command(MAMA, &db.url)
            .args(["add", "m", "--mac", "aa:bb:cc:dd:ee:01"])
            .output()
            .expect("mama add");
        assert!(added.status.success(), "{added:?}");
        changes_on(report, "database lab", &db.url);
        if let Some(before) = std::env::var_os("MAMA_BENCH_BEFORE") {
            notify_cost(report, &db.url, Path::new(&before));
        }
    } else {
        report.push("database lab: skipped (run as root, with PostgreSQL installed)".into());
    }
}

fn changes_on(report: &mut Vec<String>, what: &str, state: &str) {
    let server = serve(state);
    let events = web::event_stream(server.addr);
    let free = "<tr class=\"free\" data-machine=\"m\">";
    let reserved = "<tr class=\"reserved\" data-machine=\"m\">";
    let first = events.recv_timeout(LIMIT).expect("the first event");
    assert!(first.1.contains(free), "{}", first.1);
    let mut from_start = Vec::new();
    let mut from_exit = Vec::new();
    for i in 0..CHANGES {
        let (args, shows) = if i % 2 == 0 {
            (["reserve", "m"], reserved)
        } else {
            (["release", "m"], free)
        };
        let start = Instant::now();
        let out = mama_command(MAMA, state)
            .args(args)
            .output()
            .expect("mama runs");
        let exited = Instant::now();
        assert!(out.status.success(), "{out:?}");
        let arrived = loop {
            let left = LIMIT.saturating_sub(start.elapsed());
            let (at, data) = events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no event after {args:?}"));
            if data.contains(shows) {
                break at;
            }
        };
        from_start.push(arrived - start);
        from_exit.push(arrived.saturating_duration_since(exited));
    }
    let s = stats(&mut from_start);
    verdict(
        report,
        &format!("{what}: change seen on an open page, from the command's start"),
        &s,
        Duration::from_millis(200),
        Duration::from_secs(1),
    );
    let s = stats(&mut from_exit);
    report.push(format!(
        "{what}: the same from the command's exit: median {}, p90 {}, max {}",
        ms(s.median),
        ms(s.p90),
        ms(s.max)
    ));
    drop(server);
}

/// `mama run m -- true` on the database lab at `url`, by `before` and by
/// this build, in turn.
fn notify_cost(report: &mut Vec<String>, url: &str, before: &Path) {
    const RUNS: usize = 100;
    let mut samples = [Vec::new(), Vec::new()];
    for i in 0..2 * RUNS {
        let bin = if i % 2 == 0 { before } else { Path::new(MAMA) };
        let start = Instant::now();
        let out = mama_command(bin, url)
            .args(["run", "m", "--", "true"])
            .output()
            .expect("mama runs");
        samples[i % 2].push(start.elapsed());
        assert!(out.status.success(), "{out:?}");
    }
    let [mut old, mut new] = samples;
    let (old, new) = (stats(&mut old), stats(&mut new));
    report.push(format!(
        "database lab: mama run m -- true: median {} (p90 {}), without the change notice {} (p90 {})",
        ms(new.median),
        ms(new.p90),
        ms(old.median),
        ms(old.p90)
    ));
}
