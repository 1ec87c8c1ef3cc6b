//! Settings, read once at start: where the lab is and how long to wait.
//! Every `MAMA_*` variable mama reads is read here, and a value that makes
//! no sense stops every command before it touches the lab, with an error
//! naming the variable. (`NO_COLOR` is the terminal's convention, read
//! where output is styled: see [`crate::cli::style`].)

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{MAX_SECS, MAX_SECS_TEXT, parse_seconds};
use crate::error::{Error, Result};

/// Where the state file is looked for when nothing else names it.
pub const DEFAULT_STATE: &str = "/var/lib/mama/mama.xml";
/// The default longest sleep between two looks at the state file.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// The default stale age of a job without a PID.
pub const DEFAULT_STALE_AFTER_SECS: u64 = 300;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The state file: `--state`, else `MAMA_STATE`, else
    /// `$MAMA_PATH/mama.xml`, else [`DEFAULT_STATE`].
    pub state: PathBuf,
    /// The longest sleep of a waiter between two looks:
    /// `MAMA_POLL_INTERVAL` seconds (fractions allowed).
    pub poll: Duration,
    /// The age after which a job without a PID is stale:
    /// `MAMA_STALE_AFTER` whole seconds.
    pub stale_after: u64,
}

impl Settings {
    /// Reads the settings from the environment; `explicit_state` is
    /// `--state`.
    pub fn read(explicit_state: Option<PathBuf>) -> Result<Settings> {
        Settings::from_lookup(explicit_state, |name| std::env::var_os(name))
    }

    /// Reads the settings from `lookup` (the environment, or a test's map).
    fn from_lookup(
        explicit_state: Option<PathBuf>,
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Settings> {
        let set = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let state = explicit_state
            .or_else(|| set("MAMA_STATE").map(PathBuf::from))
            .or_else(|| set("MAMA_PATH").map(|dir| PathBuf::from(dir).join("mama.xml")))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE));
        refuse_url(&state)?;
        let text = |name: &str| -> Result<Option<String>> {
            match set(name) {
                None => Ok(None),
                Some(v) => v.into_string().map(Some).map_err(|v| {
                    Error::Invalid(format!("{name} is not valid UTF-8: {}", v.display()))
                }),
            }
        };
        let poll = match text("MAMA_POLL_INTERVAL")? {
            Some(v) if !v.trim().is_empty() => parse_seconds(&v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "MAMA_POLL_INTERVAL must be a positive number of seconds, \
                         at most {MAX_SECS_TEXT}, not '{v}'"
                    ))
                })?,
            _ => DEFAULT_POLL,
        };
        let stale_after = match text("MAMA_STALE_AFTER")? {
            Some(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .ok()
                .filter(|&secs| secs <= MAX_SECS)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "MAMA_STALE_AFTER must be a whole number of seconds, \
                         at most {MAX_SECS_TEXT}, not '{v}'"
                    ))
                })?,
            _ => DEFAULT_STALE_AFTER_SECS,
        };
        Ok(Settings {
            state,
            poll,
            stale_after,
        })
    }
}

/// A state given as a URL (`scheme://...`) is not a file: say so rather
/// than look for a file of that name. Only file labs exist so far.
fn refuse_url(state: &std::path::Path) -> Result<()> {
    let Some(text) = state.to_str() else {
        return Ok(());
    };
    let Some((scheme, _)) = text.split_once("://") else {
        return Ok(());
    };
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        return Ok(());
    }
    let shown = match text.split_once('@') {
        // Never repeat a password given in the URL.
        Some((_, host)) => format!("{scheme}://...@{host}"),
        None => text.to_string(),
    };
    Err(Error::Invalid(match scheme {
        "postgres" | "postgresql" => format!(
            "the state {shown} is a PostgreSQL URL, and this mama keeps labs only in \
             state files: give the path of a state file"
        ),
        _ => format!("the state {shown} is a URL ({scheme}://); give the path of a state file"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<Settings> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(None, |name| vars.get(name).map(Into::into))
    }

    #[test]
    fn the_state_file_is_found_in_order() {
        assert_eq!(read(&[]).map(|s| s.state).ok(), Some(DEFAULT_STATE.into()));
        assert_eq!(
            read(&[("MAMA_PATH", "/lab"), ("MAMA_STATE", "")])
                .map(|s| s.state)
                .ok(),
            Some(PathBuf::from("/lab/mama.xml"))
        );
        assert_eq!(
            read(&[("MAMA_PATH", "/lab"), ("MAMA_STATE", "/x.xml")])
                .map(|s| s.state)
                .ok(),
            Some(PathBuf::from("/x.xml"))
        );
        let explicit = Settings::from_lookup(Some("/y.xml".into()), |name| {
            (name == "MAMA_STATE").then(|| "/x.xml".into())
        });
        assert_eq!(explicit.map(|s| s.state).ok(), Some("/y.xml".into()));
    }

    #[test]
    fn a_url_is_not_taken_for_a_file() {
        for (url, says) in [
            ("postgresql://mama:secret@db.example/lab", "PostgreSQL URL"),
            ("postgres://db/lab", "PostgreSQL URL"),
            ("https://example.com/mama.xml", "(https://)"),
        ] {
            let err = read(&[("MAMA_STATE", url)]).err().map(|e| e.to_string());
            let err = err.unwrap_or_default();
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
        // Only a scheme makes a URL: a folder named with a colon is a path.
        assert!(read(&[("MAMA_STATE", "./a b://c/mama.xml")]).is_ok());
        assert!(read(&[("MAMA_STATE", "/lab/mama.xml")]).is_ok());
    }

    #[test]
    fn timings_have_defaults_and_bounds() {
        let s = read(&[("MAMA_POLL_INTERVAL", "0.25"), ("MAMA_STALE_AFTER", " 60 ")]);
        assert_eq!(
            s.map(|s| (s.poll, s.stale_after)).ok(),
            Some((Duration::from_millis(250), 60))
        );
        let s = read(&[("MAMA_POLL_INTERVAL", " "), ("MAMA_STALE_AFTER", "")]);
        assert_eq!(
            s.map(|s| (s.poll, s.stale_after)).ok(),
            Some((DEFAULT_POLL, DEFAULT_STALE_AFTER_SECS))
        );
        for (name, bad) in [
            ("MAMA_POLL_INTERVAL", "0"),
            ("MAMA_POLL_INTERVAL", "1e19"),
            ("MAMA_STALE_AFTER", "-1"),
            ("MAMA_STALE_AFTER", "9223372036854775808"),
            ("MAMA_STALE_AFTER", "soon"),
        ] {
            let err = read(&[(name, bad)]).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(name)),
                "{name}={bad}: {err:?}"
            );
        }
    }
}
