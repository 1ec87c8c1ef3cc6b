//! Benchmarks of the real `mama` binary against its performance targets:
//!
//! 1. claim overhead of `mama run m0 -- true` on labs of 1, 100, 1,000 and
//!    10,000 machines, next to `flock LOCKFILE true` and to the floor
//!    program (benches/floor.c, built with `cc`: the lock, read, write,
//!    fsync, rename and folder fsync of a run, twice, and `true` between),
//!    with mama's peak memory (measured apart, through benches/peak.c:
//!    wait4's figure for a process the bench starts itself counts the
//!    bench's own memory) (and, given `MAMA_BENCH_BEFORE=PATH`, an
//!    earlier build of mama in the same interleaved rounds, so before and
//!    after are measured side by side); and on one machine with 20,000
//!    events recorded;
//! 2. handoff: from the holder's job ending to the waiter's job starting;
//! 3. takeover: from a SIGKILL of the holder's `mama` to the waiter's job
//!    starting;
//! 4. CPU used by a waiter blocked behind a holder (default poll interval);
//! 5. `info` with 20,000 events recorded, next to `flock LOCKFILE true`;
//! 6. `list --json` on 1,000 busy machines (live claims) next to 1,000 free;
//! 7. `mama run m0 -- true` with a notify command (`MAMA_NOTIFY`) next to
//!    without: what telling the notify command adds to a run (the aim:
//!    at most 1 ms).
//!
//! Run with `cargo bench --bench mama` (`-- claim` for the first part and
//! the seventh, `-- notify` for the seventh alone). The jobs that take timestamps are
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

// The tests' world, for its clean `mama` command line.
#[path = "../tests/common/mod.rs"]
mod common;

use common::{MAMA, mama_command};

/// The longest any single step may take before the bench gives up.
const STEP_LIMIT: Duration = Duration::from_secs(20);

const HANDOFF_SAMPLES: usize = 20;
const TAKEOVER_SAMPLES: usize = 15;
const CPU_WINDOW: Duration = Duration::from_secs(5);

fn main() {
    // `cargo bench` passes its own arguments; the helper mode is recognised
    // before anything else, so a helper stamps as early as it can.
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "--bench-helper") {
        std::process::exit(helper(&args[2..]));
    }
    println!(
        "mama binary: {MAMA}, run as a copy written in one piece: {}",
        installed(Path::new(MAMA)).display()
    );
    println!("load average at start: {}", load_average());
    // `cargo bench --bench mama -- claim` runs only the first part and the
    // notify one, `-- notify` the notify one alone.
    let only_claims = args.iter().skip(1).any(|a| a == "claim");
    let only_notify = args.iter().skip(1).any(|a| a == "notify");
    let mut report = Report::default();
    if !only_notify {
        claim_by_lab_size(&mut report);
    }
    claim_with_notify(&mut report);
    if !only_claims && !only_notify {
        claim_with_history(&mut report);
        handoff(&mut report);
        takeover(&mut report);
        blocked_cpu(&mut report);
        info_with_history(&mut report);
        list_busy_and_free(&mut report);
    }
    report.print();
    let _ = fs::remove_dir_all(installed_dir());
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
    mama_at(&installed(Path::new(MAMA)), state, args)
}

/// The folder of the copies [`installed`] makes, removed at the end.
fn installed_dir() -> PathBuf {
    std::env::temp_dir().join(format!("mama-bench-{}", std::process::id()))
}

/// A copy of the program `bin`, written in one piece as an installed
/// program is (by dpkg, `cargo install`, `cp`), made once: the linker's
/// own output file, written in many small pieces, was seen to take some
/// 30 more page faults and 0.4 ms more a run to start, which is no cost
/// of mama's own. Builds measured side by side run as such copies alike.
fn installed(bin: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = installed_dir();
    let name = bin.canonicalize().unwrap_or_else(|_| bin.to_path_buf());
    let copy = dir.join(
        name.to_string_lossy()
            .trim_start_matches('/')
            .replace('/', "_"),
    );
    if !copy.exists() {
        fs::create_dir_all(&dir).expect("a folder for the copies");
        let bytes = fs::read(bin).expect("read the program");
        let temp = copy.with_extension("part");
        fs::write(&temp, &bytes).expect("write the copy");
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o755)).expect("chmod the copy");
        fs::rename(&temp, &copy).expect("the copy in place");
    }
    copy
}

/// [`mama`] for another build of mama, at `bin`.
fn mama_at<S: AsRef<OsStr>>(bin: &Path, state: &Path, args: &[S]) -> Command {
    let mut cmd = mama_command(bin, state);
    cmd.args(args)
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
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

/// The lab sizes of the claim benchmark, and how many runs of each.
const LAB_SIZES: [(usize, usize); 4] = [(1, 100), (100, 100), (1_000, 50), (10_000, 20)];

/// A lab of `count` free machines, `m0` to `m{count-1}`, as `mama.xml` in
/// `dir`.
fn sized_lab(dir: &Path, count: usize) -> PathBuf {
    let state = dir.join("mama.xml");
    let xml = lab_xml(|xml| {
        for n in 0..count {
            push_machine(xml, &format!("m{n}"), n + 1, "", None);
        }
    });
    fs::write(&state, xml).expect("write the lab");
    state
}

/// The floor program (benches/floor.c), compiled with `cc` into `dir`.
fn floor_program(dir: &Path) -> PathBuf {
    c_program(dir, "floor")
}

/// The program benches/NAME.c, compiled with `cc` into `dir`.
fn c_program(dir: &Path, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("benches/{name}.c"));
    let program = dir.join(name);
    match Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&program)
        .arg(&source)
        .status()
    {
        Ok(status) if status.success() => program,
        Ok(status) => panic!("cc could not compile {} ({status})", source.display()),
        Err(e) => panic!(
            "the {name} program needs a C compiler: `cc` could not be run ({e}); \
             install one (gcc or clang) and run the bench again"
        ),
    }
}

/// The peak resident memory of `cmd`, in bytes, run to its end through
/// the peak program (benches/peak.c) at `peak`: wait4's figure for a
/// process the bench starts itself counts the bench's own memory (see
/// there). Panics when it fails or outlives [`STEP_LIMIT`].
fn peak_rss(peak: &Path, name: &str, cmd: &Command) -> u64 {
    let out = installed_dir().join("peak.out");
    fs::create_dir_all(installed_dir()).expect("a folder for the peak's figure");
    let mut wrapped = Command::new(peak);
    wrapped
        .arg(&out)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    timed(name, wrapped);
    let kib: u64 = fs::read_to_string(&out)
        .expect("the peak's figure")
        .trim()
        .parse()
        .expect("a number of KiB");
    kib * 1024
}

/// How many runs of each build the peak memory is the largest of.
const PEAK_RUNS: usize = 5;

/// The processor time a finished process used (user and system), its own
/// and that of the children it waited for.
fn cpu_of(usage: &libc::rusage) -> Duration {
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Runs `cmd` to its end: how long it took and what it used (wait4's
/// account); panics when it fails or outlives [`STEP_LIMIT`].
// The child is reaped by wait4, which reports its memory; clippy sees no
// wait() on that path.
#[allow(clippy::zombie_processes)]
fn timed_usage(name: &str, mut cmd: Command) -> (Duration, libc::rusage) {
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain system call on our own child.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    assert!(fd >= 0, "pidfd_open failed for {name}");
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the descriptor is ours, closed once.
    let ready = unsafe { libc::poll(&mut pfd, 1, STEP_LIMIT.as_millis() as i32) };
    let elapsed = start.elapsed();
    unsafe {
        libc::close(fd);
    }
    if ready != 1 {
        let _ = child.kill();
        let _ = wait_exit(&mut child, Duration::from_secs(10));
        panic!("{name} did not end within {STEP_LIMIT:?}");
    }
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value to be written into.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: reaps our own child, which has ended.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4 for {name}");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{name} failed: status {status}"
    );
    (elapsed, usage)
}

/// Scenario 1: `mama run m0 -- true` on labs of 1 to 10,000 machines, next
/// to `flock LOCKFILE true` and the floor program on the same lab,
/// interleaved; and mama's peak memory.
fn claim_by_lab_size(report: &mut Report) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let floor = floor_program(dir.path());
    let peak_program = c_program(dir.path(), "peak");
    // An earlier build to measure beside this one, in the same rounds
    // (`MAMA_BENCH_BEFORE=path/to/mama`): before and after, side by side.
    let before = std::env::var_os("MAMA_BENCH_BEFORE").map(|bin| installed(Path::new(&bin)));
    if let Some(bin) = &before {
        println!("an earlier build beside this one: {}", bin.display());
    }
    let sides = if before.is_some() { 4 } else { 3 };
    for (count, iterations) in LAB_SIZES {
        let lab = dir.path().join(format!("lab{count}"));
        fs::create_dir(&lab).expect("a folder for the lab");
        let state = sized_lab(&lab, count);
        let size = fs::metadata(&state).expect("the lab's size").len();
        let floor_state = lab.join("floor.xml");
        fs::copy(&state, &floor_state).expect("a copy for the floor");
        let before_lab = lab.join("before");
        fs::create_dir(&before_lab).expect("a folder for the earlier build's lab");
        let before_state = before_lab.join("mama.xml");
        fs::copy(&state, &before_state).expect("a copy for the earlier build");
        let lock = lab.join("flock.lock");
        println!(
            "claim overhead, {count} machines ({} KB): {iterations} x mama run / floor / flock{}, interleaved",
            size / 1000,
            if before.is_some() {
                " / earlier mama"
            } else {
                ""
            }
        );
        let run = || mama(&state, &["run", "m0", "--", "true"]);
        let run_before = |bin: &Path| mama_at(bin, &before_state, &["run", "m0", "--", "true"]);
        let floor_run = || {
            let mut cmd = Command::new(&floor);
            cmd.arg(&floor_state).arg(lab.join("floor.lock"));
            cmd
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
        for _ in 0..3 {
            timed("mama run (warm-up)", run());
            timed("floor (warm-up)", floor_run());
            timed("flock (warm-up)", flock());
            if let Some(bin) = &before {
                timed("earlier mama (warm-up)", run_before(bin));
            }
        }
        let (mut mama_times, mut floor_times, mut flock_times) = (vec![], vec![], vec![]);
        let mut before_times = vec![];
        let (mut peak, mut before_peak) = (0, 0);
        for i in 0..iterations {
            for k in 0..sides {
                match ((i + k) % sides, &before) {
                    (0, _) => {
                        let (time, _) = timed_usage("mama run m0 -- true", run());
                        mama_times.push(time);
                    }
                    (1, _) => floor_times.push(timed("floor", floor_run())),
                    (2, _) => flock_times.push(timed("flock LOCKFILE true", flock())),
                    (_, Some(bin)) => {
                        let (time, _) = timed_usage("earlier mama run", run_before(bin));
                        before_times.push(time);
                    }
                    (_, None) => {}
                }
            }
        }
        // Memory, measured apart (through the peak program).
        for _ in 0..PEAK_RUNS {
            peak = peak.max(peak_rss(&peak_program, "mama run m0 -- true", &run()));
            if let Some(bin) = &before {
                let earlier = peak_rss(&peak_program, "earlier mama run", &run_before(bin));
                before_peak = before_peak.max(earlier);
            }
        }
        let label = format!("1. {count} machines ({} KB)", size / 1000);
        let f = report.timing(&format!("{label}: flock LOCKFILE true"), &flock_times);
        let p = report.timing(&format!("{label}: floor program"), &floor_times);
        let m = report.timing(&format!("{label}: mama run m0 -- true"), &mama_times);
        let (to_flock, to_floor) = (m.median / f.median, m.median / p.median);
        report.value(
            &format!("{label}: ratios mama/flock, floor/flock, mama/floor"),
            iterations,
            format!("{to_flock:.2}, {:.2}, {to_floor:.2}", p.median / f.median),
        );
        if !before_times.is_empty() {
            let b = report.timing(
                &format!("{label}: earlier mama run m0 -- true"),
                &before_times,
            );
            report.value(
                &format!("{label}: earlier mama: ratios to flock, to floor; peak memory"),
                iterations,
                format!(
                    "{:.2}, {:.2}; {:.1} MiB",
                    b.median / f.median,
                    b.median / p.median,
                    mib(before_peak)
                ),
            );
        }
        let limit = 2 * size + (8 << 20);
        report.value(
            &format!("{label}: mama's peak memory (limit 2 x file + 8 MiB)"),
            iterations,
            format!("{:.1} MiB (limit {:.1} MiB)", mib(peak), mib(limit)),
        );
        if count >= 100 {
            report.verdict(&format!("{label}: run / floor"), to_floor, "x", 1.25, None);
        }
        report.verdict(
            &format!("{label}: peak memory"),
            mib(peak),
            " MiB",
            (mib(limit) * 10.0).floor() / 10.0,
            None,
        );
    }
}

fn claim_with_history(report: &mut Report) {
    const RUNS: usize = 50;
    println!("claim overhead with {INFO_HISTORY} events recorded: {RUNS} x mama run / flock");
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = lab_with_history(dir.path());
    let lock = dir.path().join("flock.lock");
    let run = || mama(&state, &["run", "m0", "--", "true"]);
    let flock = || {
        let mut cmd = Command::new("flock");
        cmd.arg(&lock).arg("true");
        cmd
    };
    for _ in 0..3 {
        timed("mama run (warm-up)", run());
        timed("flock (warm-up)", flock());
    }
    let (mut run_times, mut flock_times) = (vec![], vec![]);
    for i in 0..RUNS {
        if i % 2 == 0 {
            run_times.push(timed("mama run m0 -- true", run()));
            flock_times.push(timed("flock LOCKFILE true", flock()));
        } else {
            flock_times.push(timed("flock LOCKFILE true", flock()));
            run_times.push(timed("mama run m0 -- true", run()));
        }
    }
    let label = format!("1. 1 machine, {INFO_HISTORY} events recorded");
    let f = report.timing(&format!("{label}: flock LOCKFILE true"), &flock_times);
    let m = report.timing(&format!("{label}: mama run m0 -- true"), &run_times);
    report.value(
        &format!("{label}: ratio mama / flock"),
        RUNS,
        format!("{:.2}", m.median / f.median),
    );
}

/// Runs of each side of the notify benchmark: the difference of two
/// medians of some 4 ms wants many (with 100, runs of the same build gave
/// 0.4 to 1.0 ms).
const NOTIFY_RUNS: usize = 400;

/// Scenario 7: `mama run m0 -- true` on a one-machine lab with a notify
/// command (`MAMA_NOTIFY`, appending the events to a file) next to
/// without, interleaved. Each run with it is timed to mama's exit, as
/// every run is; then the bench waits until the notify command has the
/// run's two events, so that no notify command of one sample runs in the
/// next.
fn claim_with_notify(report: &mut Report) {
    println!("a run with a notify command: {NOTIFY_RUNS} x mama run with / without, interleaved");
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = sized_lab(dir.path(), 1);
    let told = dir.path().join("told");
    let notify = format!("cat >> '{}'", told.display());
    let run = || mama(&state, &["run", "m0", "--", "true"]);
    let mut told_lines = 0;
    let with_notify = |told_lines: &mut usize| {
        let mut cmd = run();
        cmd.env("MAMA_NOTIFY", &notify);
        let (time, usage) = timed_usage("mama run m0 -- true with MAMA_NOTIFY", cmd);
        *told_lines += 2;
        wait_until("the notify command's two events", STEP_LIMIT, || {
            fs::read_to_string(&told).is_ok_and(|t| t.lines().count() >= *told_lines)
        });
        (time, cpu_of(&usage))
    };
    let without = || {
        let (time, usage) = timed_usage("mama run m0 -- true", run());
        (time, cpu_of(&usage))
    };
    for _ in 0..3 {
        without();
        with_notify(&mut told_lines);
    }
    let (mut plain, mut notified) = (vec![], vec![]);
    for i in 0..NOTIFY_RUNS {
        if i % 2 == 0 {
            plain.push(without());
            notified.push(with_notify(&mut told_lines));
        } else {
            notified.push(with_notify(&mut told_lines));
            plain.push(without());
        }
    }
    let label = "7. a run with a notify command";
    let times = |samples: &[(Duration, Duration)]| samples.iter().map(|s| s.0).collect::<Vec<_>>();
    let cpu = |samples: &[(Duration, Duration)]| samples.iter().map(|s| s.1).collect::<Vec<_>>();
    let p = report.timing(&format!("{label}: without"), &times(&plain));
    let n = report.timing(&format!("{label}: with MAMA_NOTIFY"), &times(&notified));
    let pc = report.timing(&format!("{label}: without, mama's CPU"), &cpu(&plain));
    let nc = report.timing(
        &format!("{label}: with MAMA_NOTIFY, mama's CPU"),
        &cpu(&notified),
    );
    let added = n.median - p.median;
    let added_cpu = nc.median - pc.median;
    report.value(
        &format!("{label}: added (median with - median without): time, mama's CPU"),
        NOTIFY_RUNS,
        format!("{added:.2} ms, {added_cpu:.2} ms"),
    );
    // The time counts the notify command's own processes too, which run
    // beside mama (on a busy machine, in its place); mama's CPU is what
    // mama itself does more.
    report.verdict(&format!("{label}: added time"), added, " ms", 1.0, None);
    report.verdict(
        &format!("{label}: added CPU of mama"),
        added_cpu,
        " ms",
        1.0,
        None,
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// How many events the history of the `info` benchmark holds.
const INFO_HISTORY: u64 = 20_000;
const INFO_RUNS: usize = 100;

/// A one-machine lab (`m0`) whose history holds [`INFO_HISTORY`] events
/// (in the log, committed by the state's `<event_seq>`), of `m0` and of a
/// machine since deleted, in turn.
fn lab_with_history(dir: &Path) -> PathBuf {
    use mama::backend::file::log::encode;
    use mama::model::event::{Event, Kind};
    let state = sized_lab(dir, 1);
    let events: Vec<Event> = (1..=INFO_HISTORY)
        .map(|seq| {
            let machine = if seq % 2 == 0 { "m0" } else { "gone" };
            let mut event = Event::new(Kind::Set, machine).detail(format!("os=build-{seq}"));
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
        &format!("  <event_seq>{INFO_HISTORY}</event_seq>\n</settings>"),
    );
    fs::write(&state, xml).expect("write the lab");
    state
}

/// Scenario 5: `info` on a one-machine lab whose history holds
/// [`INFO_HISTORY`] events, next to `flock LOCKFILE true`.
fn info_with_history(report: &mut Report) {
    println!("info with {INFO_HISTORY} events: {INFO_RUNS} x info / flock, interleaved");
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = lab_with_history(dir.path());
    let lock = dir.path().join("flock.lock");
    let info = || mama(&state, &["info", "m0"]);
    let flock = || {
        let mut cmd = Command::new("flock");
        cmd.arg(&lock).arg("true");
        cmd
    };
    for _ in 0..5 {
        timed("info (warm-up)", info());
        timed("flock (warm-up)", flock());
    }
    let (mut info_times, mut flock_times) = (vec![], vec![]);
    for i in 0..INFO_RUNS {
        if i % 2 == 0 {
            info_times.push(timed("mama info m0", info()));
            flock_times.push(timed("flock LOCKFILE true", flock()));
        } else {
            flock_times.push(timed("flock LOCKFILE true", flock()));
            info_times.push(timed("mama info m0", info()));
        }
    }
    let label = format!("5. info, {INFO_HISTORY} events recorded");
    let f = report.timing(&format!("{label}: flock LOCKFILE true"), &flock_times);
    let m = report.timing(&format!("{label}: mama info m0"), &info_times);
    let ratio = m.median / f.median;
    report.value(
        &format!("{label}: ratio info / flock"),
        INFO_RUNS,
        format!("{ratio:.2}"),
    );
    report.verdict(&format!("{label}: info / flock"), ratio, "x", 1.5, None);
}

const LIST_MACHINES: usize = 1000;
/// Runs of each `list`: its busy side has a long tail (a run in ten takes
/// two or three times the median), so the median wants many.
const LIST_RUNS: usize = 100;

/// Holders of job locks for the bench, each `flock LOCKFILE sleep 3600`
/// in a process group of its own: the groups are killed and the holders
/// reaped when dropped.
struct Sleepers(Vec<Child>);

impl Drop for Sleepers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SAFETY: the process group this bench started.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
        }
        for child in &mut self.0 {
            let _ = wait_exit(child, Duration::from_secs(10));
        }
    }
}

/// Field 22 of /proc/PID/stat: the start in clock ticks since boot.
fn start_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    rest.split_whitespace()
        .nth(19)
        .and_then(|t| t.parse().ok())
        .expect("a start time")
}

/// Scenario 6: `list --json` on 1,000 busy machines next to 1,000 free
/// ones. Each busy machine is claimed as a running `mama run` claims it: a
/// live process of its own (here `flock`, running `sleep`) recorded with
/// its origin, and holding the machine's job lock. The same claims without
/// their locks (as other tools' claims stand) are shown too.
fn list_busy_and_free(report: &mut Report) {
    println!("list --json, {LIST_MACHINES} busy / free machines: {LIST_RUNS} x each, interleaved");
    let dir = tempfile::tempdir().expect("temporary folder");
    let free_dir = dir.path().join("free");
    let busy_dir = dir.path().join("busy");
    fs::create_dir(&free_dir).expect("a folder");
    fs::create_dir(&busy_dir).expect("a folder");
    let free = sized_lab(&free_dir, LIST_MACHINES);
    let locks = busy_dir.join("mama.xml.locks");
    fs::create_dir(&locks).expect("the job locks' folder");
    let mut sleepers = Sleepers(Vec::new());
    for n in 0..LIST_MACHINES {
        use std::os::unix::process::CommandExt;
        let child = Command::new("flock")
            .arg(locks.join(format!("m{n}.lock")))
            .args(["sleep", "3600"])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start a lock holder");
        sleepers.0.push(child);
    }
    // Each holds its lock once its sleep runs.
    for child in &sleepers.0 {
        let pid = child.id();
        wait_until("a lock holder's sleep", STEP_LIMIT, || {
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .is_ok_and(|c| !c.trim().is_empty())
        });
    }
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("the boot id");
    let pidns = fs::read_link("/proc/self/ns/pid").expect("the PID namespace");
    let pidns = pidns
        .to_string_lossy()
        .trim_start_matches("pid:[")
        .trim_end_matches(']')
        .to_string();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").expect("the host name");
    let now = unix_now();
    let mut xml = fs::read_to_string(&free).expect("read the lab");
    for (n, child) in sleepers.0.iter().enumerate() {
        let pid = child.id();
        let claim = format!("<name>m{n}</name>\n",);
        let at = xml.find(&claim).expect("the machine");
        let job = xml[at..]
            .find("    <job/>\n    <job_pid/>\n    <job_timestamp/>\n")
            .expect("its job")
            + at;
        let record = format!(
            "    <job>run smoke #{n}</job>\n    <job_pid>{pid}</job_pid>\n    <job_timestamp>{now}</job_timestamp>\n    <job_host>{}</job_host>\n    <job_origin>boot={} pidns={pidns} start={}</job_origin>\n",
            host.trim(),
            boot.trim(),
            start_ticks(pid)
        );
        xml.replace_range(
            job..job + "    <job/>\n    <job_pid/>\n    <job_timestamp/>\n".len(),
            &record,
        );
    }
    let busy = busy_dir.join("mama.xml");
    fs::write(&busy, &xml).expect("write the busy lab");
    let unlocked_dir = dir.path().join("unlocked");
    fs::create_dir(&unlocked_dir).expect("a folder");
    let unlocked = unlocked_dir.join("mama.xml");
    fs::write(&unlocked, &xml).expect("write the lab without locks");
    let out = mama(&busy, &["list", "--json"])
        .stdout(Stdio::piped())
        .output()
        .expect("mama list --json");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let states = list.as_array().expect("a JSON array");
    assert_eq!(states.len(), LIST_MACHINES);
    assert!(
        states.iter().all(|m| m["state"] == "busy"),
        "every machine of the busy lab reads busy"
    );
    let list = |state: &Path| mama(state, &["list", "--json"]);
    for _ in 0..10 {
        timed("list --json (warm-up)", list(&busy));
        timed("list --json (warm-up)", list(&free));
    }
    let (mut busy_times, mut free_times, mut unlocked_times) = (vec![], vec![], vec![]);
    for i in 0..LIST_RUNS {
        for k in 0..3 {
            match (i + k) % 3 {
                0 => busy_times.push(timed("list --json, busy", list(&busy))),
                1 => free_times.push(timed("list --json, free", list(&free))),
                _ => unlocked_times.push(timed("list --json, no locks", list(&unlocked))),
            }
        }
    }
    drop(sleepers);
    let f = report.timing("6. list --json, 1,000 free machines", &free_times);
    let b = report.timing("6. list --json, 1,000 busy machines", &busy_times);
    let u = report.timing(
        "6. list --json, the same claims without their job locks",
        &unlocked_times,
    );
    let ratio = b.median / f.median;
    report.value(
        "6. ratios busy / free, without locks / free",
        LIST_RUNS,
        format!("{ratio:.2}, {:.2}", u.median / f.median),
    );
    report.verdict("6. list --json, busy / free", ratio, "x", 1.5, None);
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
        // Any child of that name: mama also starts a watcher of the job.
        job = fs::read_to_string(format!("/proc/{mama_pid}/task/{mama_pid}/children"))
            .ok()
            .and_then(|c| {
                c.split_whitespace()
                    .filter_map(|pid| pid.parse::<u32>().ok())
                    .find(|pid| {
                        fs::read_to_string(format!("/proc/{pid}/comm"))
                            .is_ok_and(|c| c.trim() == comm)
                    })
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
