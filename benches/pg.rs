//! Benchmarks of the database lab against its targets, beside the file lab
//! and flock(1) in one run, on a real PostgreSQL server this bench starts
//! (as the `postgres` user, socket in a temporary folder), with hosts as
//! network namespaces reaching it over TCP:
//!
//! 1. `mama run m -- true` on the database lab (local socket, a server
//!    syncing every commit to the disk the file lab is on), on the file
//!    lab and `flock LOCKFILE true`, interleaved;
//! 2. handoff across hosts: from the holder's job ending on one host to
//!    the waiter's job starting on another (target ≤ 50 ms);
//! 3. takeover across hosts: from a SIGKILL of the holder's `mama` to the
//!    waiter's job starting (target ≤ 200 ms);
//! 4. a dead host: a holder and three waiters on one host, a waiter on
//!    another; from cutting the first host's link (and killing its
//!    processes) to the other host's waiter running, at MAMA_HOST_TIMEOUT
//!    T = 4, 10 and 30 s (target ≤ T + 2 s);
//! 5. claims per second with 10 hosts racing for 10 machines;
//! 6. `mama run m -- true` over TCP (loopback) in clear and over TLS
//!    (`sslmode=disable`, `require`, `verify-full`), interleaved;
//! 7. a holder's session ended by the server (`pg_terminate_backend`)
//!    while a waiter on another host sleeps on its lock: from the end to
//!    the holder's job getting TERM (target ≤ 20 ms), and how long before
//!    that the waiter's job started (when the waiter, not the holder's
//!    new session, takes the lab's lock first);
//! 8. a lab of 5,000 machines: `mama run m17 -- true` and `mama list`.
//!
//! Given `MAMA_BENCH_BEFORE=PATH`, an earlier build of mama runs beside
//! this one in the same interleaved rounds of measurements 1 and 8, so
//! before and after are measured side by side (measurement 5 is run with
//! each in turn).
//!
//! Run with `cargo bench --bench pg` (as root: it makes network
//! namespaces and runs the server as `postgres`); `cargo bench --bench pg
//! -- 4 7 big` runs only the measurements named, by number or by name
//! (run, hosts, dead, race, tls, ended, big). Timestamps are `date +%s%N`
//! written by the jobs: one clock for every namespace.

// The tests' world: its PostgreSQL server, hosts and clean `mama`
// command line (it allows dead code: the bench uses part of it).
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::Host;
use common::pg::{self, Options, PgDb, Server};
use common::{Bg, MAMA, mama_command, remove_mama_env};

/// How long any step of the bench may take before it gives up.
const LIMIT: Duration = Duration::from_secs(40);

const RUNS: usize = 100;
const HANDOFFS: usize = 20;
const TAKEOVERS: usize = 15;
const RACE_HOSTS: usize = 10;
const RACE_RUNS: usize = 20;
/// The host timeouts (MAMA_HOST_TIMEOUT, s) of measurement 4.
const DEAD_HOST_TIMEOUTS: [u64; 3] = [4, 10, 30];
/// The waiters queued on the dead host in measurement 4.
const DEAD_HOST_WAITERS: usize = 3;
const SESSION_ENDS: usize = 20;
/// How long after its session's end a holder's job that got no TERM is
/// taken to have kept its claim (measurement 7).
const KEPT_AFTER: Duration = Duration::from_secs(2);

/// Waits until `cond` holds; panics with `what` after `limit`.
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The measurements, by the numbers and the name that select them.
type Measurement = (&'static str, &'static str, fn(&mut Vec<String>));
const MEASUREMENTS: [Measurement; 7] = [
    ("1", "run", run_cost),
    ("2,3", "hosts", across_hosts),
    ("4", "dead", dead_hosts),
    ("5", "race", race),
    ("6", "tls", tls_cost),
    ("7", "ended", session_ended),
    ("8", "big", big_lab),
];

/// 4 at each of [`DEAD_HOST_TIMEOUTS`].
fn dead_hosts(report: &mut Vec<String>) {
    for timeout in DEAD_HOST_TIMEOUTS {
        dead_host(report, timeout);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other word names a measurement.
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let known = |c: &String| {
        MEASUREMENTS
            .iter()
            .any(|(numbers, name, _)| name == c || numbers.split(',').any(|n| n == c))
    };
    if let Some(unknown) = chosen.iter().find(|c| !known(c)) {
        let names: Vec<&str> = MEASUREMENTS.iter().map(|(_, name, _)| *name).collect();
        panic!("no measurement {unknown:?}: choose among 1 to 8 or {names:?}");
    }
    if let Some(bin) = before() {
        println!("an earlier build beside this one: {}", bin.display());
    }
    let mut report = Vec::new();
    for (numbers, name, measure) in MEASUREMENTS {
        let wanted = chosen
            .iter()
            .any(|c| c == name || numbers.split(',').any(|n| n == c));
        if chosen.is_empty() || wanted {
            measure(&mut report);
        }
    }
    println!();
    for line in report {
        println!("{line}");
    }
}

/// A copy of the program `bin`, written in one piece as an installed
/// program is, so that builds measured side by side start alike (see
/// benches/mama.rs).
fn installed(bin: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("mama-pg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a folder for the copies");
    let copy = dir.join(
        bin.to_string_lossy()
            .trim_start_matches('/')
            .replace('/', "_"),
    );
    if !copy.exists() {
        let bytes = std::fs::read(bin).expect("read the program");
        std::fs::write(&copy, bytes).expect("write the copy");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the copy");
    }
    copy
}

/// This build, as installed.
fn this() -> PathBuf {
    installed(Path::new(MAMA))
}

/// The earlier build given with `MAMA_BENCH_BEFORE`, as installed.
fn before() -> Option<PathBuf> {
    std::env::var_os("MAMA_BENCH_BEFORE").map(|bin| installed(Path::new(&bin)))
}

/// `mama ARGS` against `state` (a path or URL) with a clean environment.
fn mama(state: &str, args: &[&str]) -> Command {
    mama_by(&this(), state, args)
}

/// [`mama`] run by the program `bin`.
fn mama_by(bin: &Path, state: &str, args: &[&str]) -> Command {
    let mut cmd = mama_command(bin, state);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn ok(mut cmd: Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(status.success(), "{what}: {status}");
}

fn timed(mut cmd: Command) -> Duration {
    let start = Instant::now();
    let status = cmd.status().expect("runs");
    let took = start.elapsed();
    assert!(status.success(), "{cmd:?}: {status}");
    took
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

fn p90_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[(samples.len() * 9).div_ceil(10).max(1) - 1].as_secs_f64() * 1e3
}

fn verdict_at_least(what: &str, value: f64, unit: &str, floor: f64) -> String {
    let word = if value >= floor { "MET" } else { "MISSED" };
    format!("target {what}: {value:.2} {unit} (must be >= {floor} {unit}) -> {word}")
}

fn verdict(what: &str, value: f64, unit: &str, limit: f64) -> String {
    let word = if value <= limit { "MET" } else { "MISSED" };
    format!("target {what}: {value:.2} {unit} (must be <= {limit} {unit}) -> {word}")
}

/// The cost of a run on each lab (measurement 1), interleaved: the server
/// on the same disk as the state file, syncing every commit as the file
/// lab does.
fn run_cost(report: &mut Vec<String>) {
    let server = Server::start(Options {
        durable: true,
        ..Options::default()
    });
    let db = server.fresh_database();
    let dir = tempfile::tempdir().expect("temporary folder");
    let file = dir.path().join("mama.xml");
    let file = file.to_str().expect("a UTF-8 path").to_string();
    let lock = dir.path().join("flock.lock");
    for state in [&db.url, &file] {
        ok(
            mama(state, &["add", "m", "--mac", "aa:bb:cc:dd:ee:01"]),
            "add",
        );
    }
    let flock = || {
        let mut cmd = Command::new("flock");
        cmd.arg(&lock).arg("true");
        cmd
    };
    let earlier = before();
    // The sides, interleaved: this build on the database lab and on the
    // file lab, flock(1), and the earlier build on the database lab.
    let sides = if earlier.is_some() { 4 } else { 3 };
    let side = |k: usize| -> Command {
        match k {
            0 => mama(&db.url, &["run", "m", "--", "true"]),
            1 => mama(&file, &["run", "m", "--", "true"]),
            2 => flock(),
            _ => mama_by(
                earlier.as_deref().unwrap_or(Path::new(MAMA)),
                &db.url,
                &["run", "m", "--", "true"],
            ),
        }
    };
    for _ in 0..10 {
        for k in 0..sides {
            timed(side(k));
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); sides];
    for i in 0..RUNS {
        for k in 0..sides {
            let at = (i + k) % sides;
            samples[at].push(timed(side(at)));
        }
    }
    let d = median_ms(&mut samples[0]);
    let f = median_ms(&mut samples[1]);
    let l = median_ms(&mut samples[2]);
    report.push(format!(
        "1. mama run m -- true, median of {RUNS}: database lab {d:.2} ms, file lab {f:.2} ms, \
         flock {l:.2} ms (database / file {:.2}x, database / flock {:.2}x, file / flock {:.2}x)",
        d / f,
        d / l,
        f / l
    ));
    if sides == 4 {
        let b = median_ms(&mut samples[3]);
        report.push(format!(
            "1. before: the earlier build on the database lab {b:.2} ms (database / file {:.2}x)",
            b / f
        ));
    }
    report.push(verdict("1. database run / file run", d / f, "x", 2.0));
}

/// A job that waits for the file `go` in `dir`, then writes the time to
/// `dir/ended` and ends.
fn holding_job(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "touch {d}/started; while [ ! -e {d}/go ]; do sleep 0.005; done; date +%s%N > {d}/ended"
        ),
    ]
}

/// A job that writes the time to `dir/ran`.
fn stamping_job(dir: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("date +%s%N > {}/ran", dir.display()),
    ]
}

fn read_ns(path: &Path) -> u128 {
    read_ns_within(path, LIMIT)
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// `mama run m -- JOB` on `host` over TCP, output discarded.
fn run_on(host: &Host, url: &str, timeout: Option<&str>, job: &[String]) -> Child {
    run_on_as(host, url, timeout, job, false)
}

/// [`run_on`], in a PID namespace of its own if `contained` (as on
/// another machine: a mama elsewhere cannot tell whether it lives).
fn run_on_as(
    host: &Host,
    url: &str,
    timeout: Option<&str>,
    job: &[String],
    contained: bool,
) -> Child {
    let mut cmd = if contained {
        let mut cmd = host.command("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", MAMA]);
        cmd
    } else {
        host.command(MAMA)
    };
    remove_mama_env(&mut cmd);
    cmd.env("MAMA_STATE", url).env("NO_COLOR", "1");
    if let Some(t) = timeout {
        cmd.env("MAMA_HOST_TIMEOUT", t);
    }
    cmd.args(["run", "m", "--"])
        .args(job)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn().expect("mama starts")
}

/// Waits until the lab shows `count` processes waiting... as seen from
/// the server: sessions of mama blocked on a machine's job lock.
fn waiting_on_lock(db: &PgDb) -> bool {
    let n: i64 = db.value(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND classid = 1835101537",
    );
    n > 0
}

fn fresh(dir: &Path) {
    for name in ["started", "go", "ended", "ran", "termed"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// Two hosts, a server both reach over TCP, a lab with machine `m`, and
/// folders for the holder's stamps (on host one) and the waiter's (on
/// host two).
struct Pair {
    one: Host,
    two: Host,
    server: Server,
    db: PgDb,
    _dir: tempfile::TempDir,
    holder_dir: PathBuf,
    waiter_dir: PathBuf,
}

impl Pair {
    fn new() -> Pair {
        let one = Host::new();
        let two = Host::new();
        let server = Server::start(Options {
            listen: vec![one.peer_addr(), two.peer_addr()],
            trust: vec![one.subnet(), two.subnet()],
            ..Options::default()
        });
        let db = server.fresh_database();
        ok(
            mama(&db.url, &["add", "m", "--mac", "aa:bb:cc:dd:ee:01"]),
            "add",
        );
        let dir = tempfile::tempdir().expect("temporary folder");
        let (holder_dir, waiter_dir) = (dir.path().join("h"), dir.path().join("w"));
        for d in [&holder_dir, &waiter_dir] {
            std::fs::create_dir_all(d).expect("folder");
        }
        Pair {
            one,
            two,
            server,
            db,
            _dir: dir,
            holder_dir,
            waiter_dir,
        }
    }

    /// A holder on host one whose job waits for `go`, and a waiter on host
    /// two asleep on its lock in the server.
    fn start(&self) -> (Child, Child) {
        self.start_with(&holding_job(&self.holder_dir), false)
    }

    /// The URL of the lab as `host` reaches it.
    fn url(&self, host: &Host) -> String {
        self.server
            .tcp_url_as(pg::ROLE, host.peer_addr(), &self.db.name)
    }

    /// A holder on host one running `job` (which touches `started`), in a
    /// PID namespace of its own if `contained`, and a waiter on host two
    /// asleep on its lock in the server.
    fn start_with(&self, job: &[String], contained: bool) -> (Child, Child) {
        fresh(&self.holder_dir);
        fresh(&self.waiter_dir);
        let url = |host: &Host| {
            self.server
                .tcp_url_as(pg::ROLE, host.peer_addr(), &self.db.name)
        };
        let holder = run_on_as(&self.one, &url(&self.one), None, job, contained);
        wait_until("the holder's job", LIMIT, || {
            self.holder_dir.join("started").exists()
        });
        let waiter = run_on(
            &self.two,
            &url(&self.two),
            None,
            &stamping_job(&self.waiter_dir),
        );
        wait_until("the waiter asleep on the lock", LIMIT, || {
            waiting_on_lock(&self.db)
        });
        (holder, waiter)
    }
}

/// 2 and 3. Handoff and takeover between two hosts.
fn across_hosts(report: &mut Vec<String>) {
    let pair = Pair::new();
    let (holder_dir, waiter_dir) = (&pair.holder_dir, &pair.waiter_dir);
    let start_pair = || pair.start();
    let mut handoffs = Vec::new();
    for _ in 0..HANDOFFS {
        let (mut holder, mut waiter) = start_pair();
        std::fs::write(holder_dir.join("go"), "").expect("go");
        let ended = read_ns(&holder_dir.join("ended"));
        let ran = read_ns(&waiter_dir.join("ran"));
        handoffs.push(Duration::from_nanos((ran.saturating_sub(ended)) as u64));
        assert!(holder.wait().expect("holder").success());
        assert!(waiter.wait().expect("waiter").success());
    }
    let mut takeovers = Vec::new();
    for _ in 0..TAKEOVERS {
        let (mut holder, mut waiter) = start_pair();
        let killed = now_ns();
        // SAFETY: plain system call on our unreaped child.
        unsafe {
            libc::kill(holder.id() as libc::pid_t, libc::SIGKILL);
        }
        let ran = read_ns(&waiter_dir.join("ran"));
        takeovers.push(Duration::from_nanos((ran.saturating_sub(killed)) as u64));
        let _ = holder.wait();
        assert!(waiter.wait().expect("waiter").success());
    }
    let (h, hp) = (median_ms(&mut handoffs), p90_ms(&mut handoffs));
    let (t, tp) = (median_ms(&mut takeovers), p90_ms(&mut takeovers));
    report.push(format!(
        "2. handoff across hosts, {HANDOFFS} samples: median {h:.2} ms, p90 {hp:.2} ms"
    ));
    report.push(verdict("2. handoff across hosts (median)", h, "ms", 50.0));
    report.push(format!(
        "3. takeover after SIGKILL across hosts, {TAKEOVERS} samples: median {t:.2} ms, p90 {tp:.2} ms"
    ));
    report.push(verdict("3. takeover (median)", t, "ms", 200.0));
}

/// Measurement 4: a dead host at host timeout `timeout` (s): a holder and
/// [`DEAD_HOST_WAITERS`] waiters on host one, queued in that order, then a
/// waiter on host two. Host one's link is cut and its processes killed
/// (no FIN, no RST reaches the server); host two's waiter runs once the
/// server has let go of every session of host one's.
fn dead_host(report: &mut Vec<String>, timeout: u64) {
    let pair = Pair::new();
    fresh(&pair.holder_dir);
    fresh(&pair.waiter_dir);
    let t = timeout.to_string();
    let on = |host: &Host, args: &[String]| {
        let mut cmd = host.command(MAMA);
        remove_mama_env(&mut cmd);
        cmd.env("MAMA_STATE", pair.url(host))
            .env("MAMA_HOST_TIMEOUT", &t)
            .env("NO_COLOR", "1")
            .args(args);
        cmd
    };
    let run = |job: &str, command: &[String]| -> Vec<String> {
        let mut args: Vec<String> = ["run", "m", "--job", job, "--"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(command.iter().cloned());
        args
    };
    let holder = Bg::start(on(
        &pair.one,
        &run("holder", &holding_job(&pair.holder_dir)),
    ));
    wait_until("the holder's job", LIMIT, || {
        pair.holder_dir.join("started").exists()
    });
    let mut dead_waiters = Vec::new();
    for n in 0..DEAD_HOST_WAITERS {
        let mut waiter = Bg::start(on(
            &pair.one,
            &run(&format!("waiter{n}"), &["true".to_string()]),
        ));
        waiter.expect_stderr("waiting to claim it", LIMIT);
        dead_waiters.push(waiter);
    }
    let mut waiter = Bg::start(on(
        &pair.two,
        &run("survivor", &stamping_job(&pair.waiter_dir)),
    ));
    waiter.expect_stderr(&format!("{DEAD_HOST_WAITERS} ahead of you"), LIMIT);
    pair.one.cut();
    let cut = now_ns();
    holder.signal(libc::SIGKILL);
    for dead in &dead_waiters {
        dead.signal(libc::SIGKILL);
    }
    let limit = Duration::from_secs(timeout * 2 + 30);
    let ran = read_ns_within(&pair.waiter_dir.join("ran"), limit);
    let freed = Duration::from_nanos((ran.saturating_sub(cut)) as u64).as_secs_f64();
    let finished = waiter.finish(LIMIT);
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    report.push(format!(
        "4. dead host (link cut, holder and {DEAD_HOST_WAITERS} waiters killed), \
         MAMA_HOST_TIMEOUT {timeout} s: the waiter on another host ran {freed:.2} s later"
    ));
    report.push(verdict(
        &format!("4. dead host freed at T = {timeout} s"),
        freed,
        "s",
        (timeout + 2) as f64,
    ));
}

fn read_ns_within(path: &Path, limit: Duration) -> u128 {
    let mut text = String::new();
    wait_until(&format!("{}", path.display()), limit, || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.ends_with('\n')
    });
    text.trim().parse().expect("a time in ns")
}

/// Measurement 5: ten hosts racing for ten machines (with the earlier
/// build too, given one, each on a database of its own).
fn race(report: &mut Vec<String>) {
    let hosts: Vec<Host> = (0..RACE_HOSTS).map(|_| Host::new()).collect();
    let server = Server::start(Options {
        listen: hosts.iter().map(Host::peer_addr).collect(),
        trust: hosts.iter().map(Host::subnet).collect(),
        ..Options::default()
    });
    let claims = RACE_HOSTS * RACE_RUNS;
    let rate = race_by(&this(), &hosts, &server);
    report.push(format!(
        "5. {RACE_HOSTS} hosts x {RACE_RUNS} runs racing for 10 machines: {claims} claims, \
         {rate:.0} claims/s"
    ));
    if let Some(earlier) = before() {
        let rate = race_by(&earlier, &hosts, &server);
        report.push(format!("5. before: the earlier build, {rate:.0} claims/s"));
    }
    report.push(verdict_at_least("5. claims per second", rate, "/s", 500.0));
}

/// Claims per second of `bin` on [`race`]'s hosts, on a new database.
fn race_by(bin: &Path, hosts: &[Host], server: &Server) -> f64 {
    let db = server.fresh_database();
    for n in 0..10 {
        ok(
            mama_by(
                bin,
                &db.url,
                &[
                    "add",
                    &format!("m{n}"),
                    "--mac",
                    &format!("aa:bb:cc:dd:ee:{n:02x}"),
                ],
            ),
            "add",
        );
    }
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (i, host) in hosts.iter().enumerate() {
            let url = server.tcp_url_as(pg::ROLE, host.peer_addr(), &db.name);
            scope.spawn(move || {
                for j in 0..RACE_RUNS {
                    let machine = format!("m{}", (i + j) % 10);
                    let mut cmd = host.command(bin);
                    remove_mama_env(&mut cmd);
                    cmd.env("MAMA_STATE", &url)
                        .args(["run", &machine, "--", "true"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    let status = cmd.status().expect("mama runs");
                    assert!(status.success(), "a racing run: {status}");
                }
            });
        }
    });
    let took = started.elapsed().as_secs_f64();
    let claims = RACE_HOSTS * RACE_RUNS;
    let events: i64 = db.value("SELECT count(*) FROM mama_event WHERE event = 'claimed'");
    assert_eq!(events as usize, claims, "every run claimed once");
    claims as f64 / took
}

/// Measurement 8: a lab of 5,000 machines, `run m17 -- true` and `list`,
/// interleaved (with the earlier build, given one), on a server syncing
/// every commit.
fn big_lab(report: &mut Vec<String>) {
    const MACHINES: usize = 5_000;
    const SAMPLES: usize = 30;
    let server = Server::start(Options {
        durable: true,
        ..Options::default()
    });
    let db = server.fresh_database();
    let dir = tempfile::tempdir().expect("temporary folder");
    let file = dir.path().join("big.xml");
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<settings>\n");
    for n in 0..MACHINES {
        xml.push_str(&format!(
            "  <machine>\n    <name>m{n}</name>\n    <mac>aa:bb:{:02x}:{:02x}:{:02x}:01</mac>\n    \
             <ip/>\n    <arch>x86_64</arch>\n    <job/>\n    <job_pid/>\n    <job_timestamp/>\n  \
             </machine>\n",
            (n >> 16) & 0xff,
            (n >> 8) & 0xff,
            n & 0xff
        ));
    }
    xml.push_str("</settings>\n");
    std::fs::write(&file, xml).expect("write the lab");
    ok(
        mama(&db.url, &["import", file.to_str().expect("a UTF-8 path")]),
        "import",
    );
    let earlier = before();
    let bins: Vec<PathBuf> = std::iter::once(this()).chain(earlier).collect();
    let commands: [&[&str]; 2] = [&["run", "m17", "--", "true"], &["list"]];
    // samples[bin][command]
    let mut samples = vec![vec![Vec::new(); commands.len()]; bins.len()];
    for round in 0..SAMPLES + 3 {
        for (b, bin) in bins.iter().enumerate() {
            for (c, args) in commands.iter().enumerate() {
                let took = timed(mama_by(bin, &db.url, args));
                if round >= 3 {
                    samples[b][c].push(took);
                }
            }
        }
    }
    let run = median_ms(&mut samples[0][0]);
    let list = median_ms(&mut samples[0][1]);
    report.push(format!(
        "8. {MACHINES} machines, median of {SAMPLES}: run m17 -- true {run:.2} ms, list {list:.2} ms"
    ));
    if bins.len() > 1 {
        let (run, list) = (median_ms(&mut samples[1][0]), median_ms(&mut samples[1][1]));
        report.push(format!(
            "8. before: the earlier build, run {run:.2} ms, list {list:.2} ms"
        ));
    }
    report.push(verdict("8. run on 5,000 machines", run, "ms", 30.0));
    report.push(verdict("8. list on 5,000 machines", list, "ms", 40.0));
}

/// The cost of a run over TCP in clear and over TLS (measurement 6): a
/// server on a loopback address of its own with a certificate made here,
/// syncing every commit.
fn tls_cost(report: &mut Vec<String>) {
    let certs_dir = tempfile::tempdir().expect("temporary folder");
    let certs = pg::make_certs(certs_dir.path());
    let addr = std::net::Ipv4Addr::new(127, 0, 77, 250);
    let server = Server::start(Options {
        durable: true,
        listen: vec![addr],
        hba: vec!["host all all 127.0.0.0/8 trust".into()],
        settings: vec![
            "ssl=on".into(),
            format!("ssl_cert_file={}", certs.cert.display()),
            format!("ssl_key_file={}", certs.key.display()),
        ],
        ..Options::default()
    });
    let db = server.fresh_database();
    let url = |mode: &str| {
        format!(
            "postgresql://{}@{}:{}/{}?hostaddr={addr}&sslmode={mode}&sslrootcert={}",
            pg::ROLE,
            pg::NAME,
            pg::PORT,
            db.name,
            certs.ca.display()
        )
    };
    let modes = ["disable", "require", "verify-full"];
    ok(
        mama(&url("disable"), &["add", "m", "--mac", "aa:bb:cc:dd:ee:01"]),
        "add",
    );
    for mode in modes {
        timed(mama(&url(mode), &["run", "m", "--", "true"]));
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
    for i in 0..RUNS / 2 {
        for k in 0..modes.len() {
            let at = (i + k) % modes.len();
            samples[at].push(timed(mama(&url(modes[at]), &["run", "m", "--", "true"])));
        }
    }
    let medians: Vec<String> = modes
        .iter()
        .zip(samples.iter_mut())
        .map(|(mode, samples)| format!("{mode} {:.2} ms", median_ms(samples)))
        .collect();
    report.push(format!(
        "6. mama run m -- true over TCP (loopback), median of {}: {}",
        RUNS / 2,
        medians.join(", ")
    ));
}

/// A job that notes when it gets TERM (in `dir/termed`, then ends) and
/// otherwise runs until stopped; it touches `dir/started`.
fn trapping_job(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "trap 'date +%s%N > {d}/termed; exit 0' TERM; touch {d}/started; \
             while :; do sleep 0.01; done"
        ),
    ]
}

/// Measurement 7: the server ends a holder's session (as `pg_terminate_backend` by an
/// administrator, or a backend's crash, would) while a waiter on another
/// host sleeps on the machine's job lock: the waiter takes the machine
/// at once (the holder runs in a PID namespace of its own, so the waiter
/// cannot see it live, as on another machine), and the holder's job must
/// get TERM at once. The holder's new session may take the lab's lock
/// before the waiter's claim does: it then keeps its claim, and the sample
/// is counted apart. Measured from
/// just before the termination is asked (on an open session) to the
/// job's TERM trap; and the overlap: how long the waiter's job had run
/// by then (negative: it started after the holder's job got TERM).
fn session_ended(report: &mut Vec<String>) {
    let pair = Pair::new();
    let mut admin = pair.db.connect();
    let mut stops = Vec::new();
    let mut overlaps = Vec::new();
    // Samples where the holder's new session took the lab's lock before
    // the waiter's claim did: it kept its claim, and nothing was stopped.
    let mut kept = 0;
    while stops.len() < SESSION_ENDS {
        assert!(
            kept < SESSION_ENDS,
            "the holder kept its claim {kept} times"
        );
        let (mut holder, mut waiter) = pair.start_with(&trapping_job(&pair.holder_dir), true);
        let sessions: Vec<i32> = admin
            .query(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 \
                 AND classid = 1835101537 AND objid <> 0 AND granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .expect("the claim sessions")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(sessions.len(), 1, "one claim session: {sessions:?}");
        let ended = now_ns();
        let done: bool = admin
            .query_one("SELECT pg_terminate_backend($1)", &[&sessions[0]])
            .expect("end the claim session")
            .get(0);
        assert!(done, "the claim session was ended");
        let Some(termed) = ns_in(&pair.holder_dir.join("termed"), KEPT_AFTER) else {
            kept += 1;
            // SAFETY: plain system call on our unreaped child.
            unsafe {
                libc::kill(holder.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = holder.wait();
            assert!(waiter.wait().expect("waiter").success());
            continue;
        };
        let ran = read_ns(&pair.waiter_dir.join("ran"));
        stops.push(Duration::from_nanos(termed.saturating_sub(ended) as u64));
        overlaps.push((termed as f64 - ran as f64) / 1e6);
        let status = holder.wait().expect("holder");
        assert_eq!(status.code(), Some(125), "the holder lost its claim");
        assert!(waiter.wait().expect("waiter").success());
    }
    let (m, p) = (median_ms(&mut stops), p90_ms(&mut stops));
    overlaps.sort_by(f64::total_cmp);
    let (o, worst) = (overlaps[overlaps.len() / 2], overlaps[overlaps.len() - 1]);
    report.push(format!(
        "7. holder's session ended by the server, a waiter on another host, {SESSION_ENDS} \
         takeovers: the holder's job got TERM after median {m:.2} ms, p90 {p:.2} ms; the \
         waiter's job had run by then median {o:.2} ms, at most {worst:.2} ms (negative: \
         it started after); in {kept} more samples the holder re-attached first and kept \
         its claim"
    ));
    report.push(verdict("7. session ended -> TERM (median)", m, "ms", 20.0));
}

/// The time `date +%s%N` wrote into `path`, if it did within `limit`.
fn ns_in(path: &Path, limit: Duration) -> Option<u128> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.ends_with('\n') {
            return text.trim().parse().ok();
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
