//! The test world: a temporary folder with a state file, and the real
//! `mama` binary run against it with a pinned environment.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MAMA: &str = env!("CARGO_BIN_EXE_mama");

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
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
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::tempdir().expect("temporary folder");
        let state = dir.path().join("mama.xml");
        TestEnv { dir, state }
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
        let mut cmd = Command::new(MAMA);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MAMA_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("MAMA_STATE", &self.state)
            .env("MAMA_POLL_INTERVAL", "0.2")
            .env("NO_COLOR", "1")
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
}

/// Waits until `cond` holds, looking every few milliseconds; panics with
/// `what` after `limit`.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
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
        let start = Instant::now();
        while self.running() {
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.status = Some(std::process::ExitStatus::default());
                panic!(
                    "process {} still ran after {limit:?}; stderr: {:#?}",
                    self.child.id(),
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(5));
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
