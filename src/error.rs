//! mama's error type. Callers branch on the kind (the exit status depends on
//! it); the message is what the user reads, once, on stderr.

use std::io;
use std::path::{Path, PathBuf};

use crate::exit::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state file exists but is not a mama state file we can read.
    #[error("{}{}: {message}\n  (mama will not write to it until it is fixed by hand)",
        path.display(), location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Corrupt {
        path: PathBuf,
        /// 1-based line and column, where known.
        location: Option<(usize, usize)>,
        message: String,
    },
    /// There is no lab where the state names one (a state file that does
    /// not exist, a database without mama's tables): only `add` and
    /// `import` create one.
    #[error("no lab at {0}: create it with `mama add NAME --mac MAC` or `mama import FILE`")]
    NoLab(String),
    /// No machine of this name; `near` is the lab's name nearest to it,
    /// where one is near enough to be a slip of the keyboard.
    #[error("unknown machine '{name}' ({})", near.as_ref().map_or_else(
        || "see `mama list`".to_string(),
        |near| format!("did you mean {near}?")
    ))]
    UnknownMachine { name: String, near: Option<String> },
    /// No machine is among those asked for (`--any`, `--where`).
    #[error("no machine matches: {0}")]
    NoMatch(String),
    /// A request the lab refuses: bad input, or a rule (reserved, running).
    #[error("{0}")]
    Invalid(String),
    /// The machine stayed busy (`run --no-wait`, a wait that timed out).
    #[error("{0}")]
    Busy(String),
    /// The machine is out of service (`mama offline`): nothing claims or
    /// powers it; the message says why.
    #[error("{0}")]
    OutOfService(String),
    /// A started machine did not become ready in time (every try).
    #[error("{0}")]
    NotReady(String),
    /// A signal (INT, TERM, HUP) ended a command that waited.
    #[error("interrupted by signal {0}")]
    Interrupted(i32),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// This user may not write the lab here (no permission, or a read-only
    /// file system); readers go on without writing.
    #[error("{context}: {source}")]
    ReadOnly {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The database refused or failed what was asked.
    #[error("{context}: {message}")]
    Database { context: String, message: String },
    /// Something other than what mama keeps there sits beside the state
    /// file: a symbolic link, FIFO, device or folder someone put there.
    #[error("{}", planted(path, what, expected))]
    Planted {
        path: PathBuf,
        /// What is there ("a symbolic link").
        what: &'static str,
        /// What mama keeps there ("a regular file").
        expected: &'static str,
    },
}

/// What [`Error::Planted`] says of a state path that is a link planted by
/// someone else.
pub const UNTRUSTED_LINK: &str = "a symbolic link of another user";

/// What [`Error::Planted`] says of a file with a second hard link.
pub const HARD_LINK: &str = "a file with more than one hard link";

fn planted(path: &Path, what: &str, expected: &str) -> String {
    if what == "a symbolic link" {
        format!(
            "{} is a symbolic link; mama does not follow links beside the state file (remove it)",
            path.display()
        )
    } else if what == UNTRUSTED_LINK {
        format!(
            "{} is a symbolic link that belongs to another user (not to you, root or the \
             folder's owner); mama does not follow it, since whoever may write the folder \
             could point it anywhere (remove it, or have the folder's owner make it)",
            path.display()
        )
    } else if what == HARD_LINK {
        format!(
            "{} has more than one hard link (the same file has another name); mama uses \
             only files of its own beside the state file (remove it)",
            path.display()
        )
    } else {
        format!(
            "{} is {what}, not {expected}; mama does not use it (remove it)",
            path.display()
        )
    }
}

impl Error {
    /// An I/O error with what was being done and to which file.
    pub fn io(action: &str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            context: format!("cannot {action} {}", path.display()),
            source,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Busy(_) => ExitCode::Busy,
            Error::OutOfService(_) => ExitCode::Unavailable,
            Error::NotReady(_) => ExitCode::TimedOut,
            _ => ExitCode::Error,
        }
    }
}

impl Error {
    /// No machine called `name`, among those called `names`.
    pub fn unknown_machine<'a>(name: &str, names: impl IntoIterator<Item = &'a str>) -> Error {
        Error::UnknownMachine {
            name: name.to_string(),
            near: crate::text::nearest(name, names).map(str::to_string),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
