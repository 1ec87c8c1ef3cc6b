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
