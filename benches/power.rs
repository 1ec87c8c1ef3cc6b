//! Benchmarks of starting and probing machines against their targets, with
//! the release `mama` and test boards (tests/common/board.rs: network
//! namespaces whose start command brings their link up and, after a delay,
//! opens a listener on port 22):
//!
//! 1. readiness noticed: how long after a board's listener opens `mama
//!    start` exits (target ≤ 100 ms, median of 20 starts of a board whose
//!    port opens some 0.5 s after power-on; `mama stop` between them);
//! 2. `list` on 100 machines, 50 answering (addresses of one board, which
//!    accept on port 22) and 50 that never answer (target ≤ 0.5 s, median of
//!    10 runs; `list --json` too, and `list --no-probe` beside them);
//! 3. a start's own cost beside the commands it runs: a machine whose
//!    `startcmd` and `readycmd` are `true`, `mama start --force` (so the
//!    `startcmd` runs), less twice the time of `sh -c true` (target ≤ 20 ms,
//!    medians of 30 runs).
//!
//! Run with `cargo bench --bench power`, as root, with ip(8) and python3 on
//! PATH (tests/install-tools installs them); it says what is missing and
//! exits 2 otherwise. It takes some 40 s. Each figure is printed with PASS
//! or FAIL against its target; the bench succeeds either way, and fails
//! when a step goes wrong (a `mama` that fails, or takes over 30 s; probes
//! that see the wrong answer).

// The tests' world: its clean `mama` command line and its boards.
#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::board::Board;
use common::{MAMA, mama_command, probe};

const READY_STARTS: usize = 20;
/// How long after power-on the board's port opens.
const OPENS_AFTER: Duration = Duration::from_millis(500);
const LIST_RUNS: usize = 10;
/// Machines of each kind in the `list` lab.
const ANSWERING: u32 = 50;
const SILENT: usize = 50;
const OVERHEAD_RUNS: usize = 30;
/// The longest a single `mama` may take before the bench gives up on it.
const STEP_LIMIT: Duration = Duration::from_secs(30);

fn main() {
    if let Some(why) = missing() {
        eprintln!("benches/power.rs cannot run: {why}");
        std::process::exit(2);
    }
    println!("mama binary: {MAMA}");
    println!("load average at start: {}", load_average());
    let dir = tempfile::tempdir().expect("temporary folder");
    // A lab for each part.
    let lab = |name: &str| dir.path().join(format!("{name}.xml"));
    let ready = readiness(&lab("ready"));
    let list = listing(&lab("list"));
    let cost = overhead(&lab("quick"));

    println!();
    println!(
        "1. readiness noticed after the port opened, {READY_STARTS} starts: median {:.1} ms, \
         p90 {:.1} ms, max {:.1} ms (target <= 100 ms median) -> {}",
        ms(ready.median),
        ms(ready.p90),
        ms(ready.max),
        verdict(ready.median <= Duration::from_millis(100))
    );
    println!(
        "2. list on {} machines ({ANSWERING} answering, {SILENT} silent), median of \
         {LIST_RUNS}: {:.0} ms, --json {:.0} ms (target <= 500 ms), --no-probe {:.0} ms; \
         probes saw {} -> {}",
        ANSWERING as usize + SILENT,
        ms(list.table),
        ms(list.json),
        ms(list.no_probe),
        list.seen,
        verdict(list.right && list.table.max(list.json) <= Duration::from_millis(500))
    );
    println!(
        "3. start overhead, {OVERHEAD_RUNS} runs: start --force median {:.1} ms - 2 x sh -c true \
         median {:.1} ms = {:.1} ms (target <= 20 ms) -> {}",
        ms(cost.start),
        ms(cost.sh),
        cost.overhead_ms,
        verdict(cost.overhead_ms <= 20.0)
    );
    println!("load average at end: {}", load_average());
    if !list.right {
        std::process::exit(1);
    }
}

/// What the machine lacks for the boards, if anything.
fn missing() -> Option<String> {
    let mut lacks = Vec::new();
    if probe::effective_uid() != Some(0) {
        lacks.push("root (the boards are network namespaces)");
    }
    if probe::on_path("ip").is_none() {
        lacks.push("ip (iproute2)");
    }
    if probe::on_path("python3").is_none() {
        lacks.push("python3 (the boards' listener)");
    }
    (!lacks.is_empty()).then(|| {
        format!(
            "it needs {} (run tests/install-tools as root)",
            lacks.join(", ")
        )
    })
}

/// `mama ARGS` against `state`, its output discarded.
fn mama<I, S>(state: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = mama_command(MAMA, state);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Runs `cmd` to its end (killed after [`STEP_LIMIT`]): its status, when
/// it started and when the bench saw it end.
fn timed(mut cmd: Command) -> (ExitStatus, Instant, Instant) {
    let began = Instant::now();
    let mut child = cmd.spawn().expect("the command starts");
    let pid = child.id() as libc::pid_t;
    // Piped output is read as it comes (as a terminal or a reader would).
    let reader = child
        .stdout
        .take()
        .map(|mut out| std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink())));
    let (done, watch) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(STEP_LIMIT) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: plain system call on the child, which the bench has
            // not reaped: it tells this thread as soon as it has (a PID
            // reused in between would take both within microseconds).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    });
    let status = child.wait().expect("wait for the command");
    let ended = Instant::now();
    let _ = done.send(());
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    let _ = watchdog.join();
    (status, began, ended)
}

/// Runs `mama ARGS`, which must succeed.
fn must(state: &Path, args: &[&str]) {
    let (status, began, _) = timed(mama(state, args));
    assert!(
        status.success(),
        "mama {args:?}: {status} after {:?}",
        began.elapsed()
    );
}

/// Waits (20 s at most) until `cond` holds.
fn await_that(what: &str, mut cond: impl FnMut() -> bool) {
    let began = Instant::now();
    while !cond() {
        assert!(began.elapsed() < STEP_LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Spread {
    median: Duration,
    p90: Duration,
    max: Duration,
}

fn spread(mut samples: Vec<Duration>) -> Spread {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    Spread {
        median: median(&samples),
        p90: at(0.9),
        max: at(1.0),
    }
}

/// The median (the mean of the middle two of an even count).
fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "FAIL" }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string())
}

/// Part 1: from the board's listener opening to `mama start` ending, over
/// [`READY_STARTS`] starts.
fn readiness(state: &Path) -> Spread {
    let board = Board::new("rig");
    let ip = board.ip().to_string();
    must(state, &["add", "rig", "--mac", board.mac(), "--ip", &ip]);
    must(
        state,
        &["set", "rig", "startcmd", &board.startcmd(OPENS_AFTER)],
    );
    must(state, &["set", "rig", "stopcmd", &board.stopcmd()]);
    must(state, &["set", "rig", "start-timeout", "10"]);
    let mut late = Vec::new();
    for n in 0..READY_STARTS {
        let (status, _, ended) = timed(mama(state, ["start", "rig", "--tries", "1"]));
        assert!(status.success(), "start {n}: {status}");
        let opened = board.opened_at().expect("the listener opened");
        late.push(ended.saturating_duration_since(opened));
        assert!(
            ended > opened,
            "start {n} ended before the port opened ({:?} before)",
            opened - ended
        );
        must(state, &["stop", "rig"]);
        await_that("the board's listener to end", || !board.listening());
        assert!(!board.is_up(), "the board is down after stop");
    }
    let figures = spread(late.clone());
    let all: Vec<String> = late.iter().map(|d| format!("{:.0}", ms(*d))).collect();
    println!("readiness, each start (ms): {}", all.join(" "));
    figures
}

struct Listing {
    table: Duration,
    json: Duration,
    no_probe: Duration,
    /// What the probes saw, as "N online, N offline".
    seen: String,
    /// Whether they saw what the lab is.
    right: bool,
}

/// `count` IPv4 addresses added to `board`'s link (inside it) and routed to
/// it from the bench's namespace: a /26 of 10.224.0.0/12 picked by the
/// board's /30, as [`Board::silent_ips`] picks its own of 10.208.0.0/12.
/// Its listener binds `::`, so each accepts connections on port 22.
fn answering_ips(board: &Board, count: u32) -> Vec<Ipv4Addr> {
    let [_, _, a, b] = board.ip().octets();
    let slot = u32::from(u16::from_be_bytes([a, b])) / 4;
    let base = u32::from(Ipv4Addr::new(10, 224, 0, 0)) + slot * 64;
    let net = format!("{}/26", Ipv4Addr::from(base));
    let host = board.host();
    let via = board.ip().to_string();
    host.peer_ip(["route", "add", &net, "via", &via, "dev", host.peer_dev()]);
    (1..=count)
        .map(|i| {
            let ip = Ipv4Addr::from(base + i);
            host.ip(["addr", "add", &format!("{ip}/32"), "dev", host.dev()]);
            ip
        })
        .collect()
}

/// Part 2: `list` (and `--json`, and `--no-probe`) on a lab of 100 machines.
fn listing(state: &Path) -> Listing {
    let board = Board::new("farm");
    board.start(Duration::ZERO);
    await_that("the farm's listener", || board.opened_at().is_some());
    let up = answering_ips(&board, ANSWERING);
    let silent = board.silent_ips();
    let ips = up.iter().chain(silent.iter().take(SILENT));
    for (i, ip) in ips.enumerate() {
        let name = format!("l{i:02}");
        let mac = format!("02:6c:00:00:00:{i:02x}");
        must(
            state,
            &["add", &name, "--mac", &mac, "--ip", &ip.to_string()],
        );
    }
    let out = mama(state, ["list", "--json"])
        .stdout(Stdio::piped())
        .output()
        .expect("list runs");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let count = |what: &str| {
        rows.as_array()
            .map(|a| a.iter().filter(|m| m["online"] == what).count())
            .unwrap_or(0)
    };
    let (online, offline, unreachable) = (count("online"), count("offline"), count("unreachable"));
    let seen = format!("{online} online, {offline} offline, {unreachable} unreachable");
    let right = online == ANSWERING as usize && offline == SILENT && unreachable == 0;

    let sample = |args: &[&str]| {
        let walls: Vec<Duration> = (0..LIST_RUNS)
            .map(|_| {
                let mut cmd = mama(state, args);
                cmd.stdout(Stdio::piped());
                let (status, began, ended) = timed(cmd);
                assert!(status.success(), "mama {args:?}: {status}");
                ended - began
            })
            .collect();
        median(&walls)
    };
    let table = sample(&["list"]);
    let json = sample(&["list", "--json"]);
    let no_probe = sample(&["list", "--no-probe"]);
    Listing {
        table,
        json,
        no_probe,
        seen,
        right,
    }
}

struct Overhead {
    start: Duration,
    sh: Duration,
    overhead_ms: f64,
}

/// Part 3: `mama start --force` of a machine whose commands are `true`, beside
/// `sh -c true`.
fn overhead(state: &Path) -> Overhead {
    must(state, &["add", "quick", "--mac", "02:71:00:00:00:01"]);
    must(state, &["set", "quick", "startcmd", "true"]);
    must(state, &["set", "quick", "readycmd", "true"]);
    let start = || {
        let (status, began, ended) = timed(mama(state, ["start", "quick", "--force"]));
        assert!(status.success(), "start --force: {status}");
        ended - began
    };
    let sh = || {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "true"]).stdin(Stdio::null());
        let (status, began, ended) = timed(cmd);
        assert!(status.success(), "sh -c true: {status}");
        ended - began
    };
    // Warm the caches (the binary, the lab) first; then turn about.
    start();
    sh();
    let (mut starts, mut shs) = (Vec::new(), Vec::new());
    for _ in 0..OVERHEAD_RUNS {
        starts.push(start());
        shs.push(sh());
    }
    let (start, sh) = (median(&starts), median(&shs));
    let overhead_ms = ms(start) - 2.0 * ms(sh);
    println!(
        "start --force (ms): median {:.1}, min {:.1}; sh -c true (ms): median {:.2}, min {:.2}",
        ms(start),
        ms(*starts.iter().min().expect("runs")),
        ms(sh),
        ms(*shs.iter().min().expect("runs"))
    );
    Overhead {
        start,
        sh,
        overhead_ms,
    }
}
