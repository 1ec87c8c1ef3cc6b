//! The exit-code table: one home for every status mama returns.
//!
//! The codes for `run` are those shell users know from `timeout(1)`, plus
//! 75 (EX_TEMPFAIL) for "machine busy", as `lckdo` uses, and 69
//! (EX_UNAVAILABLE) for "machine out of service".

/// A status mama itself decides on (a job's own status is passed through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// Any command failed.
    Error = 1,
    /// The command line was wrong (other commands than `run`).
    Usage = 2,
    /// The machine is out of service (EX_UNAVAILABLE): nothing claims it.
    Unavailable = 69,
    /// The machine stayed busy: `--no-wait`, or a wait timed out.
    Busy = 75,
    /// `--timeout` ended the job.
    TimedOut = 124,
    /// `run` failed before the job started (including a wrong command line).
    RunFailed = 125,
    /// The command exists but could not be executed.
    CannotExecute = 126,
    /// The command was not found.
    NotFound = 127,
}

impl ExitCode {
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The status of a job killed by `signal`.
    pub const fn signalled(signal: i32) -> i32 {
        128 + signal
    }
}
