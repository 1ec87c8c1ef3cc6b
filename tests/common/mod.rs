//! The test world: a temporary folder with a state file, and the real
//! `mama` binary run against it with a pinned environment.
#![allow(dead_code)]

pub mod board;
pub mod mpower;
pub mod netns;
pub mod pg;
pub mod probe;
pub mod usbrly08;
pub mod web;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod users;

pub const MAMA: &str = env!("CARGO_BIN_EXE_mama");

/// How long anything that must happen eventually may take.
pub const LIMIT: Duration = Duration::from_secs(20);

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    /// The state file, or a database lab's URL.
    pub state: PathBuf,
    /// The database of a database lab.
    pub db: Option<pg::PgDb>,
}

/// Tests of shared behaviour, run against both backends: each
/// `fn NAME(env: &TestEnv) { ... }` becomes a module `NAME` with the test
/// `file` (a state file in a temporary folder) and the test `postgres` (a
/// fresh database on the test run's PostgreSQL server, ignored where there
/// is none: see build.rs). A block whose tests need more on both backends
/// starts with `#![needs(CFG, "REASON")]`: where the `cfg` CFG is not set,
/// both are ignored with REASON.
#[macro_export]
macro_rules! on_both_backends {
    (
        #![needs($needs:meta, $why:literal)]
        $($(#[$meta:meta])* fn $name:ident($env:ident: &TestEnv) $body:block)*
    ) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                // Named so as not to shadow a test file's own helpers
                // (history.rs has a `check`).
                fn on_this_backend($env: &TestEnv) $body
                #[test]
                #[cfg_attr(not($needs), ignore = $why)]
                fn file() {
                    on_this_backend(&TestEnv::new())
                }
                #[test]
                #[cfg_attr(
                    not(mama_postgres),
                    ignore = "needs a PostgreSQL server run as the postgres user: run as root \
                              after tests/install-tools"
                )]
                #[cfg_attr(all(mama_postgres, not($needs)), ignore = $why)]
                fn postgres() {
                    on_this_backend(&TestEnv::postgres())
                }
            }
        )*
    };
    ($($(#[$meta:meta])* fn $name:ident($env:ident: &TestEnv) $body:block)*) => {
        $crate::on_both_backends! {
            #![needs(all(), "")]
            $($(#[$meta])* fn $name($env: &TestEnv) $body)*
        }
    };
}

/// What a finished `mama` printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "expected success: {self:#?}");
        &self.stdout
    }

    /// Asserts the exit code and returns stderr.
    #[track_caller]
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "expected exit {code}: {self:#?}");
        &self.stderr
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    /// Asserts the exit code and that stderr contains `text`; returns
    /// stderr.
    #[track_caller]
    pub fn fails_saying(&self, code: i32, text: &str) -> &str {
        let stderr = self.fails(code);
        assert!(
            stderr.contains(text),
            "stderr should say {text:?}: {self:#?}"
        );
        stderr
    }

    /// Asserts success and a stderr line containing `text`; returns it.
    #[track_caller]
    pub fn ok_saying(&self, text: &str) -> &str {
        self.ok();
        self.stderr
            .lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no stderr line with {text:?}: {self:#?}"))
    }
}

/// Takes the MAMA_* variables of the test's own environment out of `cmd`'s.
pub fn remove_mama_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MAMA_") {
            cmd.env_remove(key);
        }
    }
}

/// The `mama` at `bin` against `state` (a state file or a database URL),
/// in an environment of its own: no MAMA_* from outside, no colour. The
/// tests ([`TestEnv::cmd`]) and the benchmarks (benches/) add to it.
pub fn mama_command(bin: impl AsRef<OsStr>, state: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(bin);
    remove_mama_env(&mut cmd);
    cmd.env("MAMA_STATE", state).env("NO_COLOR", "1");
    cmd
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::tempdir().expect("temporary folder");
        let state = dir.path().join("mama.xml");
        TestEnv {
            dir,
            state,
            db: None,
        }
    }

    /// A world whose lab is a fresh database on the test run's server.
    pub fn postgres() -> TestEnv {
        let dir = tempfile::tempdir().expect("temporary folder");
        let db = pg::fresh_database();
        TestEnv {
            dir,
            state: PathBuf::from(&db.url),
            db: Some(db),
        }
    }

    /// Whether the lab is a database.
    pub fn is_postgres(&self) -> bool {
        self.db.is_some()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `mama ARGS` against this world's state file, with a clean
    /// environment: no MAMA_* from outside, a short poll interval.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = mama_command(MAMA, &self.state);
        cmd.env("MAMA_POLL_INTERVAL", "0.2")
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `mama ARGS` to its end.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd(args).output().expect("mama runs").into()
    }

    /// Starts `mama ARGS` in the background, output captured.
    pub fn spawn<I, S>(&self, args: I) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mama starts")
    }

    /// Adds a machine with a MAC derived from its number.
    pub fn add(&self, name: &str, n: u8) {
        self.run(["add", name, "--mac", &format!("aa:bb:cc:dd:ee:{n:02x}")])
            .ok();
    }

    pub fn write_state(&self, text: &str) {
        std::fs::write(&self.state, text).expect("write state");
    }

    pub fn read_state(&self) -> String {
        std::fs::read_to_string(&self.state).expect("read state")
    }

    /// What the lab stores, as text: the state file; in a database lab
    /// each machine's stored `<machine>` element, in the lab's order, then
    /// the document around them and the number of the last event. The
    /// same text twice: nothing was written in between.
    pub fn stored(&self) -> String {
        let Some(db) = &self.db else {
            return self.read_state();
        };
        let mut client = db.connect();
        let exists: bool = client
            .query_one("SELECT to_regclass('mama_machine') IS NOT NULL", &[])
            .expect("look for the lab's tables")
            .get(0);
        if !exists {
            return String::new();
        }
        let mut text = String::new();
        for row in client
            .query(
                "SELECT element FROM mama_machine ORDER BY position, id",
                &[],
            )
            .expect("read the machines")
        {
            text.push_str(row.get(0));
            text.push('\n');
        }
        let document: Option<String> = client
            .query_opt("SELECT document FROM mama_lab", &[])
            .expect("read the document")
            .map(|row| row.get(0));
        let last: Option<i64> = client
            .query_one("SELECT max(seq) FROM mama_event", &[])
            .expect("read the history")
            .get(0);
        text.push_str(&format!(
            "<!-- document {document:?}, last event {last:?} -->\n"
        ));
        text
    }

    /// `info NAME --json`.
    pub fn info(&self, name: &str) -> serde_json::Value {
        self.run(["info", name, "--json"]).json()
    }

    /// Names of files in the world's folder, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Names of files in the world's folder that contain `part`, sorted.
    pub fn files_containing(&self, part: &str) -> Vec<String> {
        let mut names = self.files();
        names.retain(|name| name.contains(part));
        names
    }

    /// Creates the empty file `name` in the world's folder.
    pub fn touch(&self, name: &str) {
        std::fs::write(self.path().join(name), "").expect("create a file");
    }

    /// The committed events, as `log --json` prints them.
    #[track_caller]
    pub fn events(&self) -> Vec<serde_json::Value> {
        parse_json_lines(self.run(["log", "--json"]).ok())
    }

    /// The kinds of `machine`'s events, oldest first.
    pub fn event_kinds(&self, machine: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["machine"] == machine)
            .map(|e| e["event"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The details of `machine`'s events of `kind`, oldest first.
    pub fn event_details(&self, machine: &str, kind: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["machine"] == machine && e["event"] == kind)
            .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// A trust file of this world's own that names `line` (a lab, or
    /// `*`): the folder to give mama as `XDG_CONFIG_HOME`.
    pub fn trust(&self, line: &str) -> PathBuf {
        let config = self.path().join("config");
        std::fs::create_dir_all(config.join("mama")).expect("config folder");
        std::fs::write(config.join("mama/trusted"), format!("{line}\n")).expect("trust file");
        config
    }

    /// `mama ARGS` with `config` as `XDG_CONFIG_HOME` (where mama looks
    /// for the user's trust file), to its end.
    pub fn run_with_config(&self, config: &Path, args: &[&str]) -> Run {
        let mut cmd = self.cmd(args);
        cmd.env("XDG_CONFIG_HOME", config);
        cmd.output().expect("mama runs").into()
    }

    /// `php_mama.py STATE ARGS`, the stand-in for PHP mama (see
    /// tests/php.rs), to its end.
    pub fn php(&self, args: &[&str]) -> Run {
        Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/php_mama.py"))
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("python3 runs")
            .into()
    }
}

/// Waits until `cond` holds, looking every few milliseconds; panics with
/// `what` after `limit`.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    assert!(holds_within(limit, cond), "timed out waiting for {what}");
}

/// Whether `cond` holds within `limit`, looked at every 5 ms.
pub fn holds_within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Whether a process exists (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A process started in the background: its stderr is read line by line as
/// it comes, its stdout collected; it is killed and reaped when dropped.
pub struct Bg {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stdout: std::sync::mpsc::Receiver<String>,
    /// The stderr lines read so far.
    pub seen: Vec<String>,
    status: Option<std::process::ExitStatus>,
}

impl TestEnv {
    /// Starts `mama ARGS` in the background (see [`Bg`]).
    pub fn start<I, S>(&self, args: I) -> Bg
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Bg::start(self.cmd(args))
    }
}

impl Bg {
    pub fn start(mut cmd: Command) -> Bg {
        use std::io::{BufRead, Read};
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("process starts");
        let (tx, lines) = std::sync::mpsc::channel();
        let err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (tx, stdout) = std::sync::mpsc::channel();
        let mut out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = out.read_to_end(&mut bytes);
            let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
        });
        Bg {
            child,
            lines,
            stdout,
            seen: Vec::new(),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process (never after it was reaped).
    pub fn signal(&self, signal: libc::c_int) {
        assert!(self.status.is_none(), "signal to a reaped process");
        // SAFETY: plain system call; the PID is our unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    /// Whether it still runs (reaps it if it ended).
    pub fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status.is_none()
    }

    /// Waits for a stderr line containing `pattern`; returns it.
    #[track_caller]
    pub fn expect_stderr(&mut self, pattern: &str, limit: Duration) -> String {
        use std::sync::mpsc::RecvTimeoutError;
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(pattern) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no stderr line with {pattern:?} within {limit:?}; seen: {:#?}",
                    self.seen
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "stderr closed without a line with {pattern:?}; seen: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits (at most `limit`) for the process to end, then for its stderr
    /// and stdout to close: every process that inherited them must be gone.
    #[track_caller]
    pub fn finish(&mut self, limit: Duration) -> Run {
        use std::sync::mpsc::RecvTimeoutError;
        if !holds_within(limit, || !self.running()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.status = Some(std::process::ExitStatus::default());
            panic!(
                "process {} still ran after {limit:?}; stderr: {:#?}",
                self.child.id(),
                self.seen
            );
        }
        loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "stderr still open 10 s after the process ended: a process that \
                     inherited it lives on; stderr: {:#?}",
                    self.seen
                ),
            }
        }
        let stdout = self
            .stdout
            .recv_timeout(Duration::from_secs(10))
            .expect("stdout closes after the process ended");
        let mut stderr = self.seen.join("\n");
        stderr.push('\n');
        Run {
            code: self.status.and_then(|s| s.code()),
            stdout,
            stderr,
        }
    }

    /// The signal that ended it, once it ended.
    pub fn killed_by(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.and_then(|s| s.signal())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `cmd` with INT, TERM and HUP at their default actions, whatever the
/// test runner inherited (a shell's background job ignores INT, and an
/// ignored signal stays ignored across exec): a test that sends one of
/// them to mama then sees what mama does with it.
pub fn with_default_signals(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: signal() is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(signal, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    cmd
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// This host's name, as the kernel has it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("read the host name")
        .trim()
        .to_string()
}

/// The user mama records (`id -un`).
pub fn user_name() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    assert!(out.status.success(), "id -un: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8 user name")
        .trim()
        .to_string()
}

/// A PID that no process has: a child's, after it was reaped.
pub fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("true starts");
    let pid = child.id();
    child.wait().expect("true ends");
    assert!(!alive(pid));
    pid
}

/// A process that sleeps until it is killed (when dropped).
pub fn sleeper() -> Bg {
    let mut sleep = Command::new("sleep");
    sleep.arg("600").stdin(Stdio::null());
    Bg::start(sleep)
}

/// Every line of `text` parsed as JSON (`log --json` prints one event a
/// line).
#[track_caller]
pub fn parse_json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// Whether `events` hold one of `kind` on `machine` (with `detail`, if
/// given).
pub fn has_event(
    events: &[serde_json::Value],
    machine: &str,
    kind: &str,
    detail: Option<&str>,
) -> bool {
    events.iter().any(|e| {
        e["machine"] == machine && e["event"] == kind && detail.is_none_or(|d| e["detail"] == d)
    })
}

/// State, parent and process group of a process, from /proc.
pub fn proc_stat(pid: u32) -> Option<(char, u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Live processes (zombies do not count) whose parent is `ppid`, or whose
/// process group is `pgrp`.
fn live_where(matches: impl Fn(u32, u32) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|(state, ppid, pgrp)| state != 'Z' && matches(ppid, pgrp))
        })
        .collect()
}

pub fn children_of(ppid: u32) -> Vec<u32> {
    live_where(|parent, _| parent == ppid)
}

pub fn group_members(pgrp: u32) -> Vec<u32> {
    live_where(|_, group| group == pgrp)
}

/// The job of the `mama run` whose PID is `mama`: its child that leads a
/// process group of its own (its other child, the watcher, is a member of
/// that group).
pub fn job_of(mama: u32) -> Option<u32> {
    children_of(mama)
        .into_iter()
        .find(|&pid| proc_stat(pid).is_some_and(|(_, _, group)| group == pid))
}

/// Waits until a file holds a whole line (a shell's `echo ... > file` may be
/// seen half done) and returns its first line.
#[track_caller]
pub fn read_line_of(path: &Path, limit: Duration) -> String {
    let mut text = String::new();
    wait_until(&format!("a line in {}", path.display()), limit, || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.contains('\n')
    });
    text.lines().next().unwrap_or_default().to_string()
}

/// Children that are killed and reaped however the test ends.
pub struct Kids(pub Vec<Child>);

impl Kids {
    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (at most [`LIMIT`]) for a child to end and collects what it
/// printed; one still running then is killed, and what it printed shown
/// in the panic.
#[track_caller]
pub fn finish_child(child: &mut Child, what: &str) -> Run {
    use std::io::Read;
    let mut status = None;
    let ended = holds_within(LIMIT, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !ended {
        let _ = child.kill();
        status = child.wait().ok();
        // What is there to read, without waiting for what a process the
        // child left holds open.
        use std::os::fd::AsRawFd;
        let fds = [
            child.stdout.as_ref().map(|o| o.as_raw_fd()),
            child.stderr.as_ref().map(|e| e.as_raw_fd()),
        ];
        for fd in fds.into_iter().flatten() {
            // SAFETY: sets a flag on a descriptor this child's handle owns.
            unsafe {
                libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
            }
        }
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(out) = child.stdout.as_mut() {
        let read = out.read_to_string(&mut stdout);
        assert!(read.is_ok() || !ended, "read stdout: {read:?}");
    }
    if let Some(err) = child.stderr.as_mut() {
        let read = err.read_to_string(&mut stderr);
        assert!(read.is_ok() || !ended, "read stderr: {read:?}");
    }
    assert!(
        ended,
        "timed out waiting for {what}; it printed:\n{stdout}\nand on stderr:\n{stderr}"
    );
    Run {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    }
}

/// How a process that [`kill_after`] started ended.
pub struct Ended {
    pub status: ExitStatus,
    pub pid: u32,
    pub stderr: String,
}

/// Starts `mama ARGS` for each of `commands` at once, waits `delay`, then
/// kills every one that still runs and reaps them all.
pub fn kill_after(
    env: &TestEnv,
    commands: impl IntoIterator<Item = Vec<String>>,
    delay: Duration,
) -> Vec<Ended> {
    use std::io::Read;
    let mut kids = Kids(Vec::new());
    for args in commands {
        let child = env
            .cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mama starts");
        kids.0.push(child);
    }
    // The kill instant is the point of the callers: nothing to await.
    std::thread::sleep(delay);
    kids.0
        .iter_mut()
        .map(|child| {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let mut stderr = String::new();
            if let Some(err) = child.stderr.as_mut() {
                err.read_to_string(&mut stderr).expect("stderr");
            }
            Ended {
                status,
                pid: child.id(),
                stderr,
            }
        })
        .collect()
}

/// A small deterministic PRNG (xorshift64*), so that a test that kills at
/// random instants kills at the same ones every run.
pub struct Prng(pub u64);

impl Prng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The fields upstream writes in every machine, in its order.
pub const UPSTREAM_FIELDS: [&str; 22] = [
    "name",
    "mac",
    "ip",
    "is_started",
    "only_vm",
    "arch",
    "os",
    "kernel",
    "pwr_dev",
    "pwr_slot",
    "rly_dev",
    "rly_slot",
    "reservation",
    "resources",
    "boot_params",
    "vm_params",
    "job",
    "job_pid",
    "job_timestamp",
    "startcmd",
    "stopcmd",
    "start_timeout",
];

/// A `<machine>` in the upstream layout with the MAC `aa:bb:cc:dd:ee:N`;
/// `fields` override the defaults, and fields upstream does not know go
/// after `job_timestamp` (`job_host`) or at the end.
pub fn machine_xml(name: &str, n: u8, fields: &[(&str, &str)]) -> String {
    let given = |tag: &str| fields.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
    let mut out = String::from("  <machine>\n");
    let mut push = |tag: &str, value: &str| {
        if value.is_empty() {
            out.push_str(&format!("    <{tag}/>\n"));
        } else {
            out.push_str(&format!("    <{tag}>{value}</{tag}>\n"));
        }
    };
    let mac = format!("aa:bb:cc:dd:ee:{n:02x}");
    for tag in UPSTREAM_FIELDS {
        let default = match tag {
            "name" => name,
            "mac" => &mac,
            "only_vm" | "pwr_slot" | "rly_slot" => "0",
            _ => "",
        };
        push(tag, given(tag).unwrap_or(default));
        if tag == "job_timestamp"
            && let Some(host) = given("job_host")
        {
            push("job_host", host);
        }
    }
    for (tag, value) in fields {
        if !UPSTREAM_FIELDS.contains(tag) && *tag != "job_host" {
            push(tag, value);
        }
    }
    out.push_str("  </machine>\n");
    out
}

/// A state file holding `machines` (see [`machine_xml`]).
pub fn lab_xml(machines: &[String]) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<settings>\n{}</settings>\n",
        machines.concat()
    )
}

/// `xml` with a job record written into `machine`'s empty one, as another
/// tool (or a person) would (`pid`: `None` leaves `<job_pid/>`).
#[track_caller]
pub fn with_job(xml: &str, machine: &str, label: &str, pid: Option<u32>, timestamp: i64) -> String {
    let start = xml
        .find(&format!("<name>{machine}</name>"))
        .unwrap_or_else(|| panic!("{machine} in {xml}"));
    let empty = "<job/>\n    <job_pid/>\n    <job_timestamp/>";
    let at = start + xml[start..].find(empty).expect("an empty job record");
    let pid = pid.map_or("<job_pid/>".to_string(), |p| {
        format!("<job_pid>{p}</job_pid>")
    });
    let record =
        format!("<job>{label}</job>\n    {pid}\n    <job_timestamp>{timestamp}</job_timestamp>");
    format!("{}{record}{}", &xml[..at], &xml[at + empty.len()..])
}

/// Writes a job record into `machine`'s empty one in the state file.
#[track_caller]
pub fn write_job(env: &TestEnv, machine: &str, label: &str, pid: Option<u32>, timestamp: i64) {
    env.write_state(&with_job(&env.read_state(), machine, label, pid, timestamp));
}

/// The folder of `env` as a job's argument.
pub fn dir_arg(env: &TestEnv) -> String {
    env.path().to_string_lossy().into_owned()
}

/// `run MACHINE [OPTIONS] -- sh -c SCRIPT sh DIR`.
pub fn sh_job(env: &TestEnv, machine: &str, options: &[&str], script: &str) -> Vec<String> {
    let mut args = vec!["run".to_string(), machine.to_string()];
    args.extend(options.iter().map(|s| s.to_string()));
    args.extend(["--", "sh", "-c", script, "sh"].map(String::from));
    args.push(dir_arg(env));
    args
}

/// A shell loop (for [`sh_job`]) that waits, bounded, for the file
/// `$1/NAME`.
pub fn wait_for_file(name: &str) -> String {
    format!(
        "i=0; while [ ! -e \"$1/{name}\" ]; do i=$((i+1)); \
         [ $i -gt 1500 ] && exit 99; sleep 0.02; done"
    )
}

/// `sh -c SCRIPT job OUT GO`: a job that first runs `first` (where `$1` is
/// `out`; exit 9 if it fails), then waits for `go` to appear (at most a
/// minute) and exits 0 if it did.
pub fn waiting_job(first: &str, out: &Path, go: &Path) -> Vec<OsString> {
    let script = format!(
        r#"{first} || exit 9
i=0
while [ ! -e "$2" ] && [ "$i" -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
[ -e "$2" ]"#
    );
    ["sh", "-c", script.as_str(), "job"]
        .iter()
        .map(OsString::from)
        .chain([out.as_os_str().to_owned(), go.as_os_str().to_owned()])
        .collect()
}

/// Starts a job on `machine` (label `name`) that touches `$1/NAME.started`
/// and ends when `$1/NAME.go` appears; returns once it runs.
pub fn hold_until_go(env: &TestEnv, machine: &str, name: &str) -> Bg {
    let script = format!(
        "touch \"$1/{name}.started\"; {}",
        wait_for_file(&format!("{name}.go"))
    );
    let holder = env.start(sh_job(env, machine, &["--job", name], &script));
    wait_until(&format!("{name} to start"), LIMIT, || {
        env.path().join(format!("{name}.started")).exists()
    });
    holder
}

/// Each machine's `field` as `list --json` gives it ("" for null), by name.
pub fn field_by_machine(env: &TestEnv, field: &str) -> std::collections::BTreeMap<String, String> {
    env.run(["list", "--json"])
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|m| {
            let text = |key: &str| m[key].as_str().unwrap_or_default().to_string();
            (text("name"), text(field))
        })
        .collect()
}
