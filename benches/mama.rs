//! Benchmarks of the real `mama` binary against its performance targets:
//!
//! 1. claim overhead of `mama run m -- true` next to `flock LOCKFILE true`;
//! 2. handoff: from the holder's job ending to the waiter's job starting;
//! 3. takeover: from a SIGKILL of the holder's `mama` to the waiter's job
//!    starting;
//! 4. CPU used by a waiter blocked behind a holder (default poll interval);
//! 5. `list --json`, `list` and `run` on a lab of 1,000 machines.
//!
//! Run with `cargo bench --bench mama`. The jobs that take timestamps are
//! this very binary, started again with `--bench-helper`: it writes the
//! `CLOCK_MONOTONIC` time in nanoseconds to a file, which every process of
//! the host reads alike. Every wait is bounded and every process started is
//! killed and reaped, so a broken `mama` makes the bench fail, never hang.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const MAMA: &str = env!("CARGO_BIN_EXE_mama");

/// The longest any single step may take before the bench gives up.
const STEP_LIMIT: Duration = Duration::from_secs(20);

const CLAIM_ITERATIONS: usize = 200;
const HANDOFF_SAMPLES: usize = 20;
const TAKEOVER_SAMPLES: usize = 15;
const CPU_WINDOW: Duration = Duration::from_secs(5);
const BIG_LAB_MACHINES: usize = 1000;
const LIST_RUNS: usize = 50;
const BIG_LAB_CLAIMS: usize = 30;

fn main() {
    // `cargo bench` passes its own arguments; the helper mode is recognised
    // before anything else, so a helper stamps as early as it can.
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "--bench-helper") {
        std::process::exit(helper(&args[2..]));
    }
    println!("mama binary: {MAMA}");
    println!("load average at start: {}", load_average());
    let mut report = Report::default();
    claim_overhead(&mut report);
    handoff(&mut report);
    takeover(&mut report);
    blocked_cpu(&mut report);
    big_lab(&mut report);
    report.print();
    println!("load average at end: {}", load_average());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let busy = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .is_some_and(|load| load > cores as f64);
    if busy {
        println!(
            "note: other work kept the machine busy (load above its {cores} cores): \
             the timings are inflated; run again on a quiet machine"
        );
    }
}

/// The 1, 5 and 15 minute load averages: other work on the machine
/// disturbs the timings.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------
// The helper: timestamps for the jobs.

/// `stamp FILE`: write now and exit. `hold READY DONE`: write READY, wait
/// for a byte (or end of input) on stdin, write DONE and exit.
fn helper(args: &[OsString]) -> i32 {
    match args {
        [mode, file] if mode == "stamp" => stamp(Path::new(file)),
        [mode, ready, done] if mode == "hold" => {
            stamp(Path::new(ready));
            let mut byte = [0u8; 1];
            let _ = std::io::stdin().read(&mut byte);
            stamp(Path::new(done));
        }
        _ => {
            eprintln!("bench helper: unknown arguments {args:?}");
            return 2;
        }
    }
    0
}

/// Nanoseconds on `CLOCK_MONOTONIC`, the same clock for every process.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid struct.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes now to `file`, whole or not at all (written aside, then renamed).
fn stamp(file: &Path) {
    let now = monotonic_ns();
    let mut part = file.as_os_str().to_owned();
    part.push(".part");
    fs::write(&part, now.to_string()).expect("write the stamp");
    fs::rename(&part, file).expect("publish the stamp");
}

/// Waits for a stamp file and reads it.
fn await_stamp(file: &Path, limit: Duration) -> u64 {
    let mut value = None;
    wait_until(&format!("the stamp {}", file.display()), limit, || {
        value = fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        value.is_some()
    });
    value.expect("stamp read")
}

// ---------------------------------------------------------------------------
// Processes: clean environment, bounded waits, killed and reaped on drop.

/// `mama ARGS` against `state`, with no MAMA_* variable from outside.
fn mama<S: AsRef<OsStr>>(state: &Path, args: &[S]) -> Command {
    let mut cmd = Command::new(MAMA);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MAMA_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("MAMA_STATE", state)
        .env("NO_COLOR", "1")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// This bench binary in helper mode, as a job for `mama run`.
fn helper_args(mode: &str, files: &[&Path]) -> Vec<OsString> {
    let mut args = vec![
        OsString::from("run"),
        "m".into(),
        "--".into(),
        std::env::current_exe().expect("own path").into(),
        "--bench-helper".into(),
        mode.into(),
    ];
    args.extend(files.iter().map(|f| f.as_os_str().to_owned()));
    args
}

/// Waits until `cond` holds, looking every millisecond; panics after `limit`.
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits for `child` to exit, at most `limit`; sleeps on a pidfd, so the
/// wait ends the moment the child does.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    // SAFETY: plain system call; a failure (-1) falls back to polling.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) } as i32;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break None;
        }
        if fd >= 0 {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 1000) as i32;
            // SAFETY: one valid pollfd.
            unsafe {
                libc::poll(&mut pfd, 1, ms);
            }
        } else {
            std::thread::sleep(left.min(Duration::from_millis(1)));
        }
    };
    if fd >= 0 {
        // SAFETY: our own descriptor, closed once.
        unsafe {
            libc::close(fd);
        }
    }
    status
}

/// A process of the bench: killed and reaped when dropped.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Option<Receiver<String>>,
    seen: Vec<String>,
}

impl Proc {
    /// Starts `cmd`; its stderr is captured line by line when `capture`.
    fn spawn(name: &str, mut cmd: Command, stdin: bool, capture: bool) -> Proc {
        if stdin {
            cmd.stdin(Stdio::piped());
        }
        if capture {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = child.stderr.take().map(|stderr| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `text`.
    fn expect_line(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let lines = self.lines.as_ref().expect("stderr is captured");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "{} never said '{text}'; it said: {:?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Everything it printed on stderr so far.
    fn said(&mut self) -> String {
        if let Some(lines) = &self.lines {
            self.seen.extend(lines.try_iter());
        }
        self.seen.join("\n")
    }

    /// Everything it printed on stderr, up to the end of the stream (when
    /// it and its job have ended), waiting at most `limit` for that end.
    fn said_all(&mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        if let Some(lines) = &self.lines {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match lines.recv_timeout(left) {
                    Ok(line) => self.seen.push(line),
                    Err(_) => break,
                }
            }
        }
        self.seen.join("\n")
    }

    /// Sends one byte to its stdin and closes it.
    fn poke(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"x");
        }
    }

    /// Waits for its end, at most `limit`.
    fn reap(&mut self, limit: Duration) -> ExitStatus {
        match wait_exit(&mut self.child, limit) {
            Some(status) => status,
            None => {
                let said = self.said();
                panic!(
                    "{} did not end within {limit:?}; it said:\n{said}",
                    self.name
                )
            }
        }
    }

    /// Waits for its end, at most `limit`, and asserts the exit status.
    fn finish(&mut self, code: i32, limit: Duration) {
        let status = self.reap(limit);
        if status.code() != Some(code) {
            let said = self.said();
            panic!(
                "{} ended with {status}, not {code}; it said:\n{said}",
                self.name
            );
        }
    }

    /// Waits until it sleeps in the kernel (a blocked waiter), at most
    /// `limit`; a waiter that is not asleep yet only makes a sample slower.
    fn await_sleep(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if proc_state(self.pid()) == Some('S') {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = wait_exit(&mut self.child, Duration::from_secs(10));
        }
    }
}

/// Runs `cmd` to its end and returns how long it took; panics when it
/// fails or outlives [`STEP_LIMIT`].
fn timed(name: &str, mut cmd: Command) -> Duration {
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let status = wait_exit(&mut child, STEP_LIMIT);
    let elapsed = start.elapsed();
    match status {
        Some(s) if s.success() => elapsed,
        Some(s) => panic!("{name} failed: {s}"),
        None => {
            let _ = child.kill();
            let _ = wait_exit(&mut child, Duration::from_secs(10));
            panic!("{name} did not end within {STEP_LIMIT:?}");
        }
    }
}

/// The one-letter state of a process in /proc (`R`, `S`, `Z`, ...).
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// Whether a process exists (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z')
}

/// CPU time of a process: utime + stime from /proc/PID/stat in clock ticks,
/// and the scheduler's nanoseconds on a CPU from /proc/PID/schedstat.
fn cpu_time(pid: u32) -> (u64, Option<u64>) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    // After the command: state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields[i - 3].parse::<u64>().expect("tick count");
    let schedstat = fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    (ticks(14) + ticks(15), schedstat)
}

// ---------------------------------------------------------------------------
// Labs in the upstream file format.

struct Job {
    label: String,
    pid: Option<u32>,
    timestamp: Option<i64>,
}

fn push_machine(xml: &mut String, name: &str, n: usize, reservation: &str, job: Option<&Job>) {
    let element = |xml: &mut String, tag: &str, value: &str| {
        if value.is_empty() {
            let _ = writeln!(xml, "    <{tag}/>");
        } else {
            let _ = writeln!(xml, "    <{tag}>{value}</{tag}>");
        }
    };
    xml.push_str("  <machine>\n");
    element(xml, "name", name);
    let mac = format!(
        "aa:bb:cc:{:02x}:{:02x}:{:02x}",
        n >> 16 & 255,
        n >> 8 & 255,
        n & 255
    );
    element(xml, "mac", &mac);
    element(xml, "ip", &format!("192.0.2.{}", n % 250 + 1));
    element(xml, "is_started", "");
    element(xml, "only_vm", "0");
    element(xml, "arch", "x86_64");
    element(xml, "os", "fedora");
    element(xml, "kernel", "6.1.0");
    element(xml, "pwr_dev", "");
    element(xml, "pwr_slot", "0");
    element(xml, "rly_dev", "");
    element(xml, "rly_slot", "0");
    element(xml, "reservation", reservation);
    element(xml, "resources", "");
    element(xml, "boot_params", "console=ttyS0,115200");
    element(xml, "vm_params", "");
    match job {
        Some(job) => {
            element(xml, "job", &job.label);
            element(
                xml,
                "job_pid",
                &job.pid.map(|p| p.to_string()).unwrap_or_default(),
            );
            let ts = job.timestamp.map(|t| t.to_string()).unwrap_or_default();
            element(xml, "job_timestamp", &ts);
        }
        None => {
            element(xml, "job", "");
            element(xml, "job_pid", "");
            element(xml, "job_timestamp", "");
        }
    }
    element(xml, "startcmd", "");
    element(xml, "stopcmd", "");
    element(xml, "start_timeout", "");
    xml.push_str("  </machine>\n");
}

fn lab_xml(machines: impl FnOnce(&mut String)) -> String {
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<settings>\n");
    machines(&mut xml);
    xml.push_str("</settings>\n");
    xml
}

/// A small lab: `m`, the machine every scenario uses, and two spares.
fn small_lab(dir: &Path) -> PathBuf {
    let state = dir.join("mama.xml");
    let xml = lab_xml(|xml| {
        for (n, name) in ["m", "spare1", "spare2"].into_iter().enumerate() {
            push_machine(xml, name, n + 1, "", None);
        }
    });
    fs::write(&state, xml).expect("write the lab");
    state
}

/// How many events the history-laden lab has recorded.
const RECORDED_EVENTS: u64 = 10_000;

/// The small lab with a history of [`RECORDED_EVENTS`] events already
/// recorded (in the log, committed by the state's `<event_seq>`).
fn small_lab_with_history(dir: &Path) -> PathBuf {
    use mama::backend::file::log::encode;
    use mama::model::event::{Event, Kind};
    let state = small_lab(dir);
    let events: Vec<Event> = (1..=RECORDED_EVENTS)
        .map(|seq| {
            let mut event = Event::new(Kind::Set, "spare1").detail(format!("os=build-{seq}"));
            event.seq = seq;
            event
        })
        .collect();
    fs::write(
        dir.join("mama.xml.log"),
        encode(&events).expect("encode the events"),
    )
    .expect("write the log");
    let xml = fs::read_to_string(&state).expect("read the lab");
    let xml = xml.replace(
        "</settings>",
        &format!("  <event_seq>{RECORDED_EVENTS}</event_seq>\n</settings>"),
    );
    fs::write(&state, xml).expect("write the lab");
    state
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// PIDs that no process has now.
fn dead_pids(count: usize) -> Vec<u32> {
    let max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (300..max)
        .rev()
        .filter(|&pid| {
            // SAFETY: signal 0 only checks whether the process exists.
            let result = unsafe { libc::kill(pid as libc::pid_t, 0) };
            result != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        })
        .take(count)
        .collect()
}

/// What a generated big lab should show.
#[derive(Default)]
struct Expected {
    stale: usize,
    busy: usize,
    reserved: usize,
}

/// A lab of `count` machines; every third has a job, of five kinds in turn:
/// a dead PID, this bench's live PID with a day-old timestamp (a reused
/// PID), no PID and a fresh timestamp, no PID and an old timestamp, this
/// bench's PID with a fresh timestamp. Every 50th machine is reserved.
fn generate_big_lab(dir: &Path, count: usize) -> (PathBuf, Expected) {
    let state = dir.join("big.xml");
    let now = unix_now();
    let own = std::process::id();
    let dead = dead_pids(count / 3 / 5 + 1);
    let mut expected = Expected::default();
    let xml = lab_xml(|xml| {
        for n in 0..count {
            let name = format!("rig{n:04}");
            let job = (n % 3 == 0).then(|| {
                let kind = n / 3 % 5;
                let label = format!("run smoke x86_64/fedora #{n}");
                let (pid, timestamp) = match kind {
                    0 => (Some(dead[n / 15 % dead.len()]), Some(now - 60)),
                    1 => (Some(own), Some(now - 86_400)),
                    2 => (None, Some(now - 10)),
                    3 => (None, Some(now - 86_400)),
                    _ => (Some(own), Some(now)),
                };
                if matches!(kind, 0 | 1 | 3) {
                    expected.stale += 1;
                } else {
                    expected.busy += 1;
                }
                Job {
                    label,
                    pid,
                    timestamp,
                }
            });
            let reservation = if n % 50 == 1 { "alice" } else { "" };
            if job.is_none() && !reservation.is_empty() {
                expected.reserved += 1;
            }
            push_machine(xml, &name, n + 1, reservation, job.as_ref());
        }
    });
    fs::write(&state, xml).expect("write the big lab");
    (state, expected)
}

// ---------------------------------------------------------------------------
// Statistics and the report.

struct Stats {
    n: usize,
    median: f64,
    p90: f64,
    min: f64,
}

/// Median, 90th percentile (nearest rank) and minimum, in milliseconds.
fn stats(samples: &[Duration]) -> Stats {
    assert!(!samples.is_empty(), "no samples");
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    let rank = (n * 9).div_ceil(10).max(1);
    Stats {
        n,
        median,
        p90: ms[rank - 1],
        min: ms[0],
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<[String; 6]>,
    verdicts: Vec<String>,
}

impl Report {
    fn timing(&mut self, what: &str, samples: &[Duration]) -> Stats {
        let s = stats(samples);
        self.rows.push([
            what.to_string(),
            s.n.to_string(),
            format!("{:.2} ms", s.median),
            format!("{:.2} ms", s.p90),
            format!("{:.2} ms", s.min),
            String::new(),
        ]);
        s
    }

    fn value(&mut self, what: &str, n: usize, value: String) {
        self.rows.push([
            what.to_string(),
            n.to_string(),
            value,
            String::new(),
            String::new(),
            String::new(),
        ]);
    }

    /// A target: `aim` met, else `must` met, else missed.
    fn verdict(&mut self, what: &str, value: f64, unit: &str, aim: f64, must: Option<f64>) {
        let word = if value <= aim {
            "MET"
        } else if must.is_some_and(|m| value <= m) {
            "ACCEPTABLE (above the aim, within the limit)"
        } else {
            "MISSED"
        };
        let limit = must
            .map(|m| format!(", must be <= {m}{unit}"))
            .unwrap_or_default();
        self.verdicts.push(format!(
            "{what}: {value:.2}{unit} (aim <= {aim}{unit}{limit}) -> {word}"
        ));
    }

    fn print(&self) {
        let header = ["measurement", "n", "median", "p90", "min", ""];
        let mut widths = header.map(str::len);
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String; 6]| {
            let mut out = format!("{:<w$}", cells[0], w = widths[0]);
            for (cell, w) in cells.iter().zip(widths).skip(1).take(4) {
                let _ = write!(out, "  {cell:>w$}");
            }
            out
        };
        println!();
        println!("{}", line(&header.map(String::from)));
        println!("{}", "-".repeat(widths[..5].iter().sum::<usize>() + 8));
        for row in &self.rows {
            println!("{}", line(row));
        }
        println!();
        println!("targets:");
        for v in &self.verdicts {
            println!("  {v}");
        }
    }
}

// ---------------------------------------------------------------------------
// The scenarios.

/// 1. `mama run m -- true` next to `flock LOCKFILE true`, interleaved.
fn claim_overhead(report: &mut Report) {
    println!("claim overhead: {CLAIM_ITERATIONS} x mama run / flock, interleaved");
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = small_lab(dir.path());
    let lock = dir.path().join("flock.lock");
    let run = || mama(&state, &["run", "m", "--", "true"]);
    // The same on a memory file system, where fsync costs nothing: the
    // difference to the disk is what the durable writes cost.
    let shm = Path::new("/dev/shm");
    let mem_dir = shm
        .is_dir()
        .then(|| tempfile::tempdir_in(shm).ok())
        .flatten();
    let mem_state = mem_dir.as_ref().map(|d| small_lab(d.path()));
    // The same with a long history recorded: claims must not slow down.
    let history_dir = tempfile::tempdir().expect("temporary folder");
    let history_state = small_lab_with_history(history_dir.path());
    let history_run = || mama(&history_state, &["run", "m", "--", "true"]);
    let mem_run = || {
        mem_state
            .as_ref()
            .map(|state| mama(state, &["run", "m", "--", "true"]))
    };
    let flock = || {
        let mut cmd = Command::new("flock");
        cmd.arg(&lock)
            .arg("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    for _ in 0..10 {
        timed("mama run (warm-up)", run());
        timed("mama run with history (warm-up)", history_run());
        timed("flock (warm-up)", flock());
        if let Some(cmd) = mem_run() {
            timed("mama run on tmpfs (warm-up)", cmd);
        }
    }
    let mut mama_times = Vec::with_capacity(CLAIM_ITERATIONS);
    let mut flock_times = Vec::with_capacity(CLAIM_ITERATIONS);
    let mut mem_times = Vec::with_capacity(CLAIM_ITERATIONS);
    let mut history_times = Vec::with_capacity(CLAIM_ITERATIONS);
    for i in 0..CLAIM_ITERATIONS {
        // Rotate which goes first, so none always follows another.
        for k in 0..4 {
            match (i + k) % 4 {
                0 => mama_times.push(timed("mama run m -- true", run())),
                1 => flock_times.push(timed("flock LOCKFILE true", flock())),
                2 => history_times.push(timed("mama run m -- true with history", history_run())),
                _ => {
                    if let Some(cmd) = mem_run() {
                        mem_times.push(timed("mama run m -- true on tmpfs", cmd));
                    }
                }
            }
        }
    }
    let m = report.timing("1. mama run m -- true", &mama_times);
    let f = report.timing("1. flock LOCKFILE true", &flock_times);
    let ratio = m.median / f.median;
    report.value(
        "1. ratio of medians (mama / flock)",
        CLAIM_ITERATIONS,
        format!("{ratio:.2}"),
    );
    if !mem_times.is_empty() {
        let t = report.timing("1. mama run m -- true, state on tmpfs", &mem_times);
        report.value(
            "1. ratio of medians (mama on tmpfs / flock)",
            mem_times.len(),
            format!("{:.2}", t.median / f.median),
        );
    }
    let h = report.timing(
        &format!("1. mama run m -- true, {RECORDED_EVENTS} events recorded"),
        &history_times,
    );
    let history_ratio = h.median / f.median;
    report.value(
        "1. ratio of medians (with history / flock)",
        CLAIM_ITERATIONS,
        format!("{history_ratio:.2}"),
    );
    report.verdict(
        "1. claim overhead, ratio of medians",
        ratio,
        "x",
        1.5,
        Some(2.0),
    );
    report.verdict(
        &format!("1. claim overhead with {RECORDED_EVENTS} events recorded"),
        history_ratio,
        "x",
        1.5,
        Some(2.0),
    );
}

/// A `mama run m` whose job stamps `ready` and holds the machine until
/// told on its stdin (then stamps `done` and ends); returned once it runs.
fn start_holder(state: &Path, ready: &Path, done: &Path) -> Proc {
    let holder = Proc::spawn(
        "holder",
        mama(state, &helper_args("hold", &[ready, done])),
        true,
        true,
    );
    await_stamp(ready, STEP_LIMIT);
    holder
}

/// A `mama run m` whose job stamps `started`; returned once it is blocked
/// behind the holder (said so, and asleep in the kernel).
fn start_waiter(state: &Path, started: &Path) -> Proc {
    let mut waiter = Proc::spawn(
        "waiter",
        mama(state, &helper_args("stamp", &[started])),
        false,
        true,
    );
    waiter.expect_line("is busy", STEP_LIMIT);
    waiter.await_sleep(Duration::from_secs(2));
    waiter
}

/// 2. From the holder's job ending to the waiter's job starting.
fn handoff(report: &mut Report) {
    println!("handoff: {HANDOFF_SAMPLES} samples");
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = small_lab(dir.path());
    let ready = dir.path().join("ready");
    let done = dir.path().join("done");
    let started = dir.path().join("started");
    let mut samples = Vec::new();
    for i in 0..HANDOFF_SAMPLES + 2 {
        for f in [&ready, &done, &started] {
            let _ = fs::remove_file(f);
        }
        let mut holder = start_holder(&state, &ready, &done);
        let mut waiter = start_waiter(&state, &started);
        holder.poke();
        let begin = await_stamp(&done, STEP_LIMIT);
        let end = await_stamp(&started, STEP_LIMIT);
        holder.finish(0, STEP_LIMIT);
        waiter.finish(0, STEP_LIMIT);
        // The first two samples warm the caches up.
        if i >= 2 {
            samples.push(Duration::from_nanos(end.saturating_sub(begin)));
        }
    }
    let s = report.timing("2. handoff: job end -> next job start", &samples);
    report.verdict("2. handoff latency, median", s.median, " ms", 50.0, None);
    report.verdict("2. handoff latency, p90", s.p90, " ms", 50.0, None);
}

/// The job `mama` started (its only child), once it runs `comm`.
fn job_of(mama_pid: u32, comm: &str) -> u32 {
    let mut job = None;
    wait_until(&format!("the job {comm} of {mama_pid}"), STEP_LIMIT, || {
        job = fs::read_to_string(format!("/proc/{mama_pid}/task/{mama_pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
            });
        job.is_some()
    });
    job.expect("job found")
}

/// 3. From SIGKILL of the holder's `mama` to the waiter's job starting.
fn takeover(report: &mut Report) {
    println!("takeover after SIGKILL: {TAKEOVER_SAMPLES} samples");
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = small_lab(dir.path());
    let started = dir.path().join("started");
    let mut samples = Vec::new();
    for i in 0..TAKEOVER_SAMPLES + 1 {
        let _ = fs::remove_file(&started);
        let mut holder = Proc::spawn(
            "holder",
            mama(&state, &["run", "m", "--", "sleep", "60"]),
            false,
            true,
        );
        let job = job_of(holder.pid(), "sleep");
        let mut waiter = start_waiter(&state, &started);
        let begin = monotonic_ns();
        // SAFETY: our own unreaped child.
        unsafe {
            libc::kill(holder.pid() as libc::pid_t, libc::SIGKILL);
        }
        let status = holder.reap(STEP_LIMIT);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the holder was not killed"
        );
        let end = await_stamp(&started, STEP_LIMIT);
        waiter.finish(0, STEP_LIMIT);
        let said = waiter.said_all(STEP_LIMIT);
        assert!(
            said.contains("cleared stale job"),
            "the waiter did not clear the stale claim: {said}"
        );
        // The holder's job dies with it (PR_SET_PDEATHSIG).
        let start = Instant::now();
        while alive(job) && start.elapsed() < STEP_LIMIT {
            std::thread::sleep(Duration::from_millis(1));
        }
        if alive(job) {
            // SAFETY: the orphaned job of the killed holder.
            unsafe {
                libc::kill(job as libc::pid_t, libc::SIGKILL);
            }
            panic!("the job {job} outlived its killed mama");
        }
        if i >= 1 {
            samples.push(Duration::from_nanos(end.saturating_sub(begin)));
        }
    }
    let s = report.timing("3. takeover: SIGKILL -> next job start", &samples);
    report.verdict(
        "3. takeover after SIGKILL, median",
        s.median,
        " ms",
        200.0,
        None,
    );
    report.verdict("3. takeover after SIGKILL, p90", s.p90, " ms", 200.0, None);
}

/// 4. CPU of a waiter blocked behind a holder, default poll interval.
fn blocked_cpu(report: &mut Report) {
    println!("CPU of a blocked waiter: {CPU_WINDOW:?}");
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = small_lab(dir.path());
    let ready = dir.path().join("ready");
    let done = dir.path().join("done");
    let mut holder = start_holder(&state, &ready, &done);
    let mut waiter = Proc::spawn(
        "waiter",
        mama(&state, &["run", "m", "--", "true"]),
        false,
        true,
    );
    waiter.expect_line("is busy", STEP_LIMIT);
    waiter.await_sleep(Duration::from_secs(2));
    let (ticks0, ns0) = cpu_time(waiter.pid());
    let t0 = Instant::now();
    std::thread::sleep(CPU_WINDOW);
    let (ticks1, ns1) = cpu_time(waiter.pid());
    let window = t0.elapsed().as_secs_f64();
    assert!(alive(waiter.pid()), "the waiter ended while blocked");
    holder.poke();
    holder.finish(0, STEP_LIMIT);
    waiter.finish(0, STEP_LIMIT);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let percent = (ticks1 - ticks0) as f64 / hz / window * 100.0;
    report.value(
        "4. blocked waiter CPU, utime+stime",
        1,
        format!("{percent:.3} %"),
    );
    if let (Some(a), Some(b)) = (ns0, ns1) {
        let precise = (b - a) as f64 / 1e9 / window * 100.0;
        report.value(
            "4. blocked waiter CPU, schedstat",
            1,
            format!("{precise:.3} %"),
        );
    }
    report.verdict("4. blocked waiter CPU", percent, " %", 2.0, None);
}

/// 5. `list --json`, `list` and `run` on a 1,000-machine lab.
fn big_lab(report: &mut Report) {
    println!("lab of {BIG_LAB_MACHINES} machines: {LIST_RUNS} x list --json / list, interleaved");
    let dir = tempfile::tempdir().expect("temporary folder");
    let (state, expected) = generate_big_lab(dir.path(), BIG_LAB_MACHINES);
    check_big_lab(&state, &expected);
    let list = |json: bool| {
        let mut cmd = mama(&state, &["list"]);
        if json {
            cmd.arg("--json");
        }
        cmd
    };
    for _ in 0..3 {
        timed("list --json (warm-up)", list(true));
        timed("list (warm-up)", list(false));
    }
    let mut json_times = Vec::new();
    let mut table_times = Vec::new();
    for i in 0..LIST_RUNS {
        if i % 2 == 0 {
            json_times.push(timed("mama list --json", list(true)));
            table_times.push(timed("mama list", list(false)));
        } else {
            table_times.push(timed("mama list", list(false)));
            json_times.push(timed("mama list --json", list(true)));
        }
    }
    let j = report.timing("5. list --json, 1,000 machines", &json_times);
    report.timing("5. list (table), 1,000 machines", &table_times);
    let mut run_times = Vec::new();
    for _ in 0..BIG_LAB_CLAIMS {
        run_times.push(timed(
            "mama run rig0002 -- true",
            mama(&state, &["run", "rig0002", "--", "true"]),
        ));
    }
    report.timing("5. run rig0002 -- true, 1,000 machines", &run_times);
    report.verdict(
        "5. list --json on 1,000 machines, median",
        j.median,
        " ms",
        20.0,
        Some(50.0),
    );
    report.verdict(
        "5. list --json on 1,000 machines, p90",
        j.p90,
        " ms",
        20.0,
        Some(50.0),
    );
}

/// The generated lab reads as intended: every machine, and the expected
/// numbers of stale, busy and reserved ones.
fn check_big_lab(state: &Path, expected: &Expected) {
    let out = mama(state, &["list", "--json"])
        .stdout(Stdio::piped())
        .output()
        .expect("mama list --json");
    assert!(out.status.success(), "list --json failed: {out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let machines = list.as_array().expect("a JSON array");
    assert_eq!(machines.len(), BIG_LAB_MACHINES);
    let count = |state: &str| machines.iter().filter(|m| m["state"] == state).count();
    let stale = machines.iter().filter(|m| m["stale"] == true).count();
    assert_eq!(stale, expected.stale, "stale machines");
    assert_eq!(count("stale"), expected.stale, "state stale");
    assert_eq!(count("busy"), expected.busy, "state busy");
    assert_eq!(count("reserved"), expected.reserved, "state reserved");
}
