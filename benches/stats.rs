//! Benchmark of `mama stats` over a long history against its target: a
//! state file's history of 1,000,000 events (500,000 jobs claimed and
//! released on 20 machines, some 200 MB in rotated segments of 16 MiB and
//! the live log, as mama leaves them), `stats --json` and `stats --by user
//! --json` in at most 1 s each (median of 5 runs; the files read from the
//! page cache, as on a lab's server that uses them).
//!
//! Run with `cargo bench --bench stats`.

// The tests' world, for its clean `mama` command line.
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{MAMA, mama_command};

const MACHINES: u64 = 20;
const EVENTS: u64 = 1_000_000;
const ROUNDS: usize = 5;
const TARGET: Duration = Duration::from_secs(1);
/// As mama rotates its log (`backend::file::log::SEGMENT`).
const SEGMENT: usize = 16 << 20;

fn main() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = dir.path().join("mama.xml");
    let written = write_history(dir.path(), &state);
    println!(
        "history: {EVENTS} events, {:.0} MB in {} files",
        written.0 as f64 / 1e6,
        written.1
    );
    let mut all_met = true;
    for args in [
        &["stats", "--json"][..],
        &["stats", "--by", "user", "--json"],
    ] {
        // Once to warm the page cache and check the answer.
        let out = mama_command(MAMA, &state)
            .args(args)
            .output()
            .expect("mama stats");
        assert!(out.status.success(), "{out:?}");
        let figures: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(figures["total"]["jobs"], EVENTS / 2, "{figures}");
        let mut times: Vec<Duration> = (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                let status = mama_command(MAMA, &state)
                    .args(args)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .expect("mama stats");
                assert!(status.success());
                started.elapsed()
            })
            .collect();
        times.sort();
        let median = times[ROUNDS / 2];
        let met = median <= TARGET;
        all_met &= met;
        println!(
            "mama {}: median {:.0} ms (min {:.0}, max {:.0}) over {ROUNDS} runs: {} (target ≤ {} ms)",
            args.join(" "),
            median.as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[ROUNDS - 1].as_secs_f64() * 1e3,
            if met { "met" } else { "MISSED" },
            TARGET.as_millis()
        );
    }
    if !all_met {
        std::process::exit(1);
    }
}

/// A lab of 20 machines whose committed history is `EVENTS` events,
/// written as mama leaves it: segments named after their first event,
/// then the live log. Returns the bytes and files written.
fn write_history(dir: &Path, state: &Path) -> (usize, usize) {
    let machines: String = (0..MACHINES)
        .map(|i| {
            format!(
                "  <machine><name>rig{i}</name><mac>aa:bb:cc:dd:ee:{i:02x}</mac><ip/>\
                 <job/><job_pid/><job_timestamp/></machine>\n"
            )
        })
        .collect();
    std::fs::write(
        state,
        format!(
            "<?xml version=\"1.0\"?>\n<settings>\n{machines}  <event_seq>{EVENTS}</event_seq>\n</settings>\n"
        ),
    )
    .expect("write the lab");
    let start = common::unix_now() - 90 * 86400;
    let (mut bytes, mut files) = (0, 0);
    let mut segment = String::with_capacity(SEGMENT + 4096);
    let mut first = 1;
    let users = ["alice", "bob", "carol", "dave", "erin"];
    for seq in 1..=EVENTS {
        let job = (seq - 1) / 2;
        let machine = job % MACHINES;
        let time = start + (job / MACHINES) as i64 * 60 + if seq % 2 == 0 { 45 } else { 0 };
        let user = users[(job % 5) as usize];
        let line = if seq % 2 == 1 {
            format!(
                "{{\"seq\":{seq},\"time\":{time},\"machine\":\"rig{machine}\",\"event\":\"claimed\",\
                 \"job\":\"run smoke x86_64/fedora\",\"pid\":{},\"user\":\"{user}\",\
                 \"host\":\"ci-runner-03\",\"detail\":null,\"waited\":{}.{:03}}}\n",
                100_000 + job % 800_000,
                job % 7,
                job % 1000
            )
        } else {
            let status = if job % 10 == 0 { 1 } else { 0 };
            format!(
                "{{\"seq\":{seq},\"time\":{time},\"machine\":\"rig{machine}\",\"event\":\"released\",\
                 \"job\":\"run smoke x86_64/fedora\",\"pid\":{},\"user\":\"{user}\",\
                 \"host\":\"ci-runner-03\",\"detail\":\"exit {status} after 45s\",\"status\":{status}}}\n",
                100_000 + job % 800_000
            )
        };
        segment.push_str(&line);
        if segment.len() > SEGMENT {
            bytes += segment.len();
            files += 1;
            std::fs::write(dir.join(format!("mama.xml.log.{first}")), &segment)
                .expect("write a segment");
            segment.clear();
            first = seq + 1;
        }
    }
    bytes += segment.len();
    files += 1;
    std::fs::write(dir.join("mama.xml.log"), &segment).expect("write the live log");
    (bytes, files)
}
