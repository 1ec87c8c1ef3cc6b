//! Settings, read once at start: where the lab is and how long to wait.
//! Every `MAMA_*` variable mama reads is read here, and a value that makes
//! no sense stops every command before it touches the lab, with an error
//! naming the variable. (`NO_COLOR` is the terminal's convention, read
//! where output is styled: see [`crate::cli::style`].)

pub mod url;

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::text::{MAX_SECS, MAX_SECS_TEXT, parse_seconds};

/// Where the state file is looked for when nothing else names it.
pub const DEFAULT_STATE: &str = "/var/lib/mama/mama.xml";
/// The default longest sleep between two looks at the state file.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// The default stale age of a job without a PID.
pub const DEFAULT_STALE_AFTER_SECS: u64 = 300;
/// The default bound on how long a database lab takes to free the claims
/// of a host that died or was cut off.
pub const DEFAULT_HOST_TIMEOUT_SECS: u64 = 30;
/// The longest host timeout: a day (TCP's user timeout counts milliseconds
/// in 32 bits, and no lab wants a dead host's claims kept longer).
pub const MAX_HOST_TIMEOUT_SECS: u64 = 86_400;

/// Where the lab is kept.
#[derive(Debug, Clone)]
pub enum Location {
    /// A state file.
    File(PathBuf),
    /// A PostgreSQL database: a `postgres://` or `postgresql://` URL,
    /// parsed once, here (see [`url`]).
    Database(Box<url::DbUrl>),
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The lab: `--state`, else `MAMA_STATE`, else `$MAMA_PATH/mama.xml`,
    /// else [`DEFAULT_STATE`]; a PostgreSQL URL names a database lab.
    pub state: Location,
    /// The longest sleep of a waiter between two looks:
    /// `MAMA_POLL_INTERVAL` seconds (fractions allowed).
    pub poll: Duration,
    /// The age after which a job without a PID is stale:
    /// `MAMA_STALE_AFTER` whole seconds.
    pub stale_after: u64,
    /// How long after a host dies or is cut off a database lab frees its
    /// claims: `MAMA_HOST_TIMEOUT` whole seconds.
    pub host_timeout: Duration,
    /// This user's notify command, a shell command run for every event a
    /// command commits (beside the lab's own, its `notify` setting):
    /// `MAMA_NOTIFY`; empty or blank is none.
    pub notify: Option<String>,
}

impl Settings {
    /// Reads the settings from the environment; `explicit_state` is
    /// `--state`.
    pub fn read(explicit_state: Option<PathBuf>) -> Result<Settings> {
        if let Some(url) = explicit_state.as_deref().and_then(|s| s.to_str())
            && url.contains("://")
        {
            url::hide_password_in_command_line(url);
        }
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
        let state = locate(state)?;
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
        // A whole number of seconds within `range`, or an error naming the
        // variable and what it takes.
        let whole_seconds = |name: &str, range: std::ops::RangeInclusive<u64>, takes: &str| {
            text(name)?
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.trim()
                        .parse()
                        .ok()
                        .filter(|secs| range.contains(secs))
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "{name} must be a whole number of seconds, {takes}, not '{v}'"
                            ))
                        })
                })
                .transpose()
        };
        let stale_after = whole_seconds(
            "MAMA_STALE_AFTER",
            0..=MAX_SECS,
            &format!("at most {MAX_SECS_TEXT}"),
        )?
        .unwrap_or(DEFAULT_STALE_AFTER_SECS);
        let host_timeout = whole_seconds(
            "MAMA_HOST_TIMEOUT",
            1..=MAX_HOST_TIMEOUT_SECS,
            &format!("from 1 to {MAX_HOST_TIMEOUT_SECS}"),
        )?
        .map_or(
            Duration::from_secs(DEFAULT_HOST_TIMEOUT_SECS),
            Duration::from_secs,
        );
        let notify = text("MAMA_NOTIFY")?.filter(|v| !v.trim().is_empty());
        Ok(Settings {
            state,
            poll,
            stale_after,
            host_timeout,
            notify,
        })
    }
}

/// A state given as a URL (`scheme://...`) is not a file: a PostgreSQL URL
/// names a database lab, and any other scheme is refused rather than taken
/// for a file of that name.
fn locate(state: PathBuf) -> Result<Location> {
    let Some(text) = state.to_str() else {
        return Ok(Location::File(state));
    };
    let Some((scheme, _)) = text.split_once("://") else {
        return Ok(Location::File(state));
    };
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    match scheme {
        _ if !is_scheme => Ok(Location::File(state)),
        "postgres" | "postgresql" => Ok(Location::Database(Box::new(url::DbUrl::parse(text)?))),
        _ => Err(Error::Invalid(format!(
            "the state {} is a URL of scheme {scheme}://; mama keeps a lab in a state file \
             (give its path) or in PostgreSQL (postgresql://...)",
            url::without_password(text)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl PartialEq for Location {
        fn eq(&self, other: &Location) -> bool {
            match (self, other) {
                (Location::File(a), Location::File(b)) => a == b,
                (Location::Database(a), Location::Database(b)) => a.shown == b.shown,
                _ => false,
            }
        }
    }
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
        let file = |path: &str| Some(Location::File(PathBuf::from(path)));
        assert_eq!(read(&[]).map(|s| s.state).ok(), file(DEFAULT_STATE));
        assert_eq!(
            read(&[("MAMA_PATH", "/lab"), ("MAMA_STATE", "")])
                .map(|s| s.state)
                .ok(),
            file("/lab/mama.xml")
        );
        assert_eq!(
            read(&[("MAMA_PATH", "/lab"), ("MAMA_STATE", "/x.xml")])
                .map(|s| s.state)
                .ok(),
            file("/x.xml")
        );
        let explicit = Settings::from_lookup(Some("/y.xml".into()), |name| {
            (name == "MAMA_STATE").then(|| "/x.xml".into())
        });
        assert_eq!(explicit.map(|s| s.state).ok(), file("/y.xml"));
    }

    #[test]
    fn a_postgresql_url_names_a_database_lab_and_no_other_url_is_a_file() {
        for (url, shown) in [
            (
                "postgresql://mama:secret@db.example/lab",
                "postgresql://mama@db.example/lab",
            ),
            ("postgres://db/lab", "postgres://db/lab"),
        ] {
            let state = read(&[("MAMA_STATE", url)]).map(|s| s.state);
            assert!(
                matches!(&state, Ok(Location::Database(db)) if db.shown == shown),
                "{url}: {state:?}"
            );
        }
        let err = read(&[("MAMA_STATE", "https://me:secret@example.com/mama.xml")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("https://"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        // Only a scheme makes a URL: a folder named with a colon is a path.
        assert!(matches!(
            read(&[("MAMA_STATE", "./a b://c/mama.xml")]).map(|s| s.state),
            Ok(Location::File(_))
        ));
    }

    #[test]
    fn the_notify_command_is_taken_as_given_and_blank_is_none() {
        let notify = |v: &str| read(&[("MAMA_NOTIFY", v)]).map(|s| s.notify).ok();
        assert_eq!(notify(""), Some(None));
        assert_eq!(notify("  "), Some(None));
        assert_eq!(notify(" cat >>log "), Some(Some(" cat >>log ".to_string())));
    }

    #[test]
    fn the_host_timeout_has_a_default_and_bounds() {
        let timeout = |v: &str| read(&[("MAMA_HOST_TIMEOUT", v)]).map(|s| s.host_timeout);
        assert_eq!(timeout("").ok(), Some(Duration::from_secs(30)));
        assert_eq!(timeout(" 5 ").ok(), Some(Duration::from_secs(5)));
        for bad in ["0", "-1", "1.5", "86401", "soon"] {
            let err = timeout(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("MAMA_HOST_TIMEOUT"), "{bad}: {err}");
        }
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
