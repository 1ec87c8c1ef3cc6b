//! A database lab's URL: what libpq users expect of it, for the `postgres`
//! client, which reads neither libpq's defaults nor its password file.
//!
//! - `postgres://` or `postgresql://`, with libpq's query parameters
//!   (`?host=/run/postgresql` for a local socket);
//! - the user defaults to `PGUSER`, else the login name; the host to
//!   `PGHOST`, else the local socket folder; the database to the user;
//! - the password comes from the URL, else from `PGPASSFILE` or
//!   `~/.pgpass` (libpq's format and rules: a file others may read is
//!   ignored, with a warning);
//! - the URL is shown, and handed to jobs, without its password;
//! - TLS as libpq's `sslmode` (`disable`, `allow`, `prefer` the default,
//!   `require`, `verify-ca`, `verify-full`) and `sslrootcert` (default
//!   `~/.postgresql/root.crt`), from the URL, else `PGSSLMODE` and
//!   `PGSSLROOTCERT`: the client knows only the first three modes, so
//!   mama reads these parameters itself (see [`Tls`]);
//! - a client certificate as libpq's `sslcert` and `sslkey` (`PGSSLCERT`,
//!   `PGSSLKEY`; default `~/.postgresql/postgresql.crt` and
//!   `~/.postgresql/postgresql.key`, where there).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use postgres::Config;
use postgres::config::Host;

use crate::error::{Error, Result};

/// Where Debian's and most distributions' servers put their socket; libpq's
/// compiled-in default elsewhere.
const SOCKET_FOLDERS: [&str; 2] = ["/run/postgresql", "/tmp"];
const DEFAULT_PORT: u16 = 5432;

/// libpq's `sslmode`: whether the session is encrypted, and what of the
/// server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// In clear only.
    Disable,
    /// In clear, else (a server that accepts only TLS) encrypted.
    Allow,
    /// Encrypted where the server offers it, else in clear.
    Prefer,
    /// Encrypted; the certificate is checked against the root
    /// certificate only where one is there (as `VerifyCa`).
    Require,
    /// Encrypted, by a certificate a trusted authority signed.
    VerifyCa,
    /// Encrypted, by a certificate a trusted authority signed for the
    /// host name the URL gives.
    VerifyFull,
}

impl SslMode {
    const NAMES: [(&'static str, SslMode); 6] = [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];

    fn parse(text: &str, from: &str) -> Result<SslMode> {
        Self::NAMES
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, mode)| *mode)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::NAMES.iter().map(|(name, _)| *name).collect();
                Error::Invalid(format!(
                    "{from} has sslmode {text:?}, which is none of {}",
                    names.join(", ")
                ))
            })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, mode)| *mode == self)
            .map_or("prefer", |(name, _)| name)
    }
}

/// How a session to the lab is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub mode: SslMode,
    /// The root certificates (PEM) that sign the server's: `sslrootcert`,
    /// else `PGSSLROOTCERT`, else `~/.postgresql/root.crt`.
    pub root_cert: Option<PathBuf>,
    /// Whether `sslmode` was given (the URL, `PGSSLMODE`) rather than
    /// libpq's default.
    pub given: bool,
    /// Whether the mode is `require` only because no `sslmode` was given
    /// and a password would go over the network: it is never sent in
    /// clear unless the URL (or `PGSSLMODE`) asks for that.
    pub guards_password: bool,
    /// The client certificate chain (PEM) shown to a server that asks for
    /// one: `sslcert`, else `PGSSLCERT`, else `~/.postgresql/postgresql.crt`
    /// where that file is there.
    pub client_cert: Option<SslFile>,
    /// Its private key (PEM): `sslkey`, else `PGSSLKEY`, else
    /// `~/.postgresql/postgresql.key`.
    pub client_key: Option<SslFile>,
}

/// A file a TLS setting names, and where the name came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslFile {
    pub path: PathBuf,
    pub from: SslFrom,
    /// The URL parameter (`sslcert`), for messages.
    pub parameter: &'static str,
    /// The environment variable that gives it too (`PGSSLCERT`).
    pub variable: &'static str,
}

/// Where an [`SslFile`] was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslFrom {
    Url,
    Environment,
    /// libpq's default under `~/.postgresql`, used only where it is there.
    Default,
}

impl SslFile {
    /// Whether the URL or the environment named the file (a default that
    /// is not there is no setting).
    pub fn given(&self) -> bool {
        self.from != SslFrom::Default
    }

    /// Whether the file is used: named, or libpq's default and there.
    pub fn in_use(&self) -> bool {
        self.given() || self.path.exists()
    }

    /// The setting that named the file, as messages say it: `sslcert`,
    /// `PGSSLCERT`, or `sslcert's default`.
    pub fn setting(&self) -> String {
        match self.from {
            SslFrom::Url => self.parameter.to_string(),
            SslFrom::Environment => self.variable.to_string(),
            SslFrom::Default => format!("{}'s default", self.parameter),
        }
    }
}

impl Tls {
    /// Whether the server's certificate is checked against the root
    /// certificates: always in `verify-*`, and in `require` where the root
    /// file is there (as libpq does).
    pub fn verifies(&self) -> bool {
        match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => self.root_cert.as_ref().is_some_and(|p| p.exists()),
            _ => false,
        }
    }
}

/// A database lab's address, ready to connect, and the URL to show.
#[derive(Clone)]
pub struct DbUrl {
    /// The client's settings; its own `sslmode` is the one of [`Tls`]
    /// that it knows (`allow` is connected as `disable` first).
    pub config: Config,
    pub tls: Tls,
    /// The URL as given, without its password: for messages and jobs.
    pub shown: String,
    /// Whether the URL held a password (which jobs never get).
    pub had_password: bool,
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl DbUrl {
    /// Parses `url`, filling in what libpq would.
    pub fn parse(url: &str) -> Result<DbUrl> {
        Self::parse_with(url, |name| std::env::var_os(name).filter(|v| !v.is_empty()))
    }

    /// [`DbUrl::parse`], with the environment `env` gives (the TLS settings
    /// so far).
    fn parse_with(url: &str, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<DbUrl> {
        let shown = without_password(url);
        let (client_url, ssl) =
            take_parameters(url, &["sslmode", "sslrootcert", "sslcert", "sslkey"]);
        let mut config = Config::from_str(&client_url)
            .map_err(|e| Error::Invalid(format!("the state URL {shown} is not valid: {e}")))?;
        let mut tls = tls_settings(&ssl, &env, &shown)?;
        let had_password = config.get_password().is_some() || shown != url;
        // A safety net for any form of URL read otherwise than above: the
        // password the client found never shows.
        let shown = match config.get_password().map(String::from_utf8_lossy) {
            Some(password) if password.len() >= 2 && shown.contains(password.as_ref()) => {
                shown.replace(password.as_ref(), "***")
            }
            _ => shown,
        };
        if config.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(crate::os::user_name);
            config.user(&user);
        }
        if config.get_hosts().is_empty() {
            match std::env::var("PGHOST").ok().filter(|h| !h.is_empty()) {
                Some(host) if host.starts_with('/') => {
                    config.host_path(host);
                }
                Some(host) => {
                    config.host(&host);
                }
                None => {
                    let folder = SOCKET_FOLDERS
                        .into_iter()
                        .find(|dir| Path::new(dir).is_dir())
                        .unwrap_or(SOCKET_FOLDERS[1]);
                    config.host_path(folder);
                }
            }
        }
        if config.get_dbname().is_none() {
            let user = config.get_user().unwrap_or_default().to_string();
            config.dbname(&user);
        }
        if config.get_password().is_none()
            && let Some(password) = password_from_file(&config)
        {
            config.password(password);
        }
        if config.get_password().is_none()
            && let Some(password) = env("PGPASSWORD")
        {
            config.password(password.as_encoded_bytes());
        }
        // A password is never sent over the network in clear unless asked
        // for: with no sslmode given, a TCP session with one must be
        // encrypted (libpq's `prefer` would fall back to clear).
        let over_network = config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, postgres::config::Host::Tcp(_)));
        if !tls.given && over_network && config.get_password().is_some() {
            tls.mode = SslMode::Require;
            tls.guards_password = true;
        }
        config.ssl_mode(match tls.mode {
            SslMode::Disable | SslMode::Allow => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        Ok(DbUrl {
            config,
            tls,
            had_password,
            shown,
        })
    }
}

/// `url` without the query parameters named `names`, and their values
/// (percent-decoded), the last of each name.
fn take_parameters(url: &str, names: &[&str]) -> (String, Vec<(String, String)>) {
    // The query starts at the first `?` after the user information (a
    // password may hold a `?`).
    let after_user = url.find("://").map_or(0, |i| i + 3);
    let after_user = user_info_end(&url[after_user..]).map_or(after_user, |at| after_user + at + 1);
    let Some(start) = url[after_user..].find('?').map(|q| after_user + q) else {
        return (url.to_string(), Vec::new());
    };
    let mut taken = Vec::new();
    let kept: Vec<&str> = url[start + 1..]
        .split('&')
        .filter(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decoded(key, false);
            if names.contains(&key.as_str()) {
                taken.push((key, percent_decoded(value, false)));
                return false;
            }
            true
        })
        .collect();
    let base = &url[..start];
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, taken)
}

/// The TLS settings: the URL's `parameters`, else the environment's, else
/// libpq's defaults.
fn tls_settings(
    parameters: &[(String, String)],
    env: &impl Fn(&str) -> Option<std::ffi::OsString>,
    shown: &str,
) -> Result<Tls> {
    let given = |name: &str| {
        parameters
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let (mode, mode_given) = match given("sslmode") {
        Some(mode) => (
            SslMode::parse(&mode, &format!("the state URL {shown}"))?,
            true,
        ),
        None => match env("PGSSLMODE") {
            Some(mode) => (SslMode::parse(&mode.to_string_lossy(), "PGSSLMODE")?, true),
            None => (SslMode::Prefer, false),
        },
    };
    let root_cert = given("sslrootcert")
        .map(PathBuf::from)
        .or_else(|| env("PGSSLROOTCERT").map(PathBuf::from))
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".postgresql/root.crt")));
    let client_file = |parameter: &'static str, variable: &'static str, default: &str| {
        let (path, from) = match given(parameter).filter(|path| !path.is_empty()) {
            Some(path) => (PathBuf::from(path), SslFrom::Url),
            None => match env(variable) {
                Some(path) => (PathBuf::from(path), SslFrom::Environment),
                None => (
                    PathBuf::from(env("HOME")?)
                        .join(".postgresql")
                        .join(default),
                    SslFrom::Default,
                ),
            },
        };
        Some(SslFile {
            path,
            from,
            parameter,
            variable,
        })
    };
    Ok(Tls {
        mode,
        root_cert,
        given: mode_given,
        guards_password: false,
        client_cert: client_file("sslcert", "PGSSLCERT", "postgresql.crt"),
        client_key: client_file("sslkey", "PGSSLKEY", "postgresql.key"),
    })
}

/// `url` without a password. The user information is what stands
/// between `://` and the first `@` (as the client library reads it, so a
/// password holding `/` or `?` is found too): `user:secret@` loses
/// `:secret`. A `password` parameter, however its name is percent-encoded,
/// is dropped.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let rest = match user_info_end(rest) {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{user}@{}", &rest[at + 1..])
        }
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| {
                    let key = p.split_once('=').map_or(*p, |(key, _)| key);
                    !percent_decoded(key, true).eq_ignore_ascii_case("password")
                })
                .collect();
            if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => rest,
    };
    format!("{scheme}://{rest}")
}

/// Where passwords stand in `url`: the password of its user information,
/// and the value of each `password` parameter.
fn password_spans(url: &str) -> Vec<std::ops::Range<usize>> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return Vec::new();
    };
    let rest = &url[scheme_end..];
    let mut spans = Vec::new();
    let mut query_from = 0;
    if let Some(at) = user_info_end(rest) {
        if let Some(colon) = rest[..at].find(':') {
            spans.push(scheme_end + colon + 1..scheme_end + at);
        }
        query_from = at + 1;
    }
    if let Some(q) = rest[query_from..].find('?') {
        let mut offset = scheme_end + query_from + q + 1;
        for pair in url[offset..].split('&') {
            if let Some((key, _)) = pair.split_once('=')
                && percent_decoded(key, true).eq_ignore_ascii_case("password")
            {
                spans.push(offset + key.len() + 1..offset + pair.len());
            }
            offset += pair.len() + 1;
        }
    }
    spans.retain(|span| !span.is_empty());
    spans
}

/// A state URL given on the command line (`--state`) with a password:
/// every user of this host could read it there for as long as mama runs.
/// Overwrites it in the process's command line, and says once that it was
/// visible.
pub fn hide_password_in_command_line(url: &str) {
    let spans = password_spans(url);
    if spans.is_empty() {
        return;
    }
    say!(
        "mama: warning: a password on the command line can be read by every user of this \
         host while mama starts (ps, /proc); put it in ~/.pgpass (or PGPASSFILE) or \
         PGPASSWORD instead"
    );
    let url = url.as_bytes();
    crate::os::hide_in_command_line(|arg| {
        // The argument is the URL, or `--state=URL`.
        let Some(at) = arg
            .len()
            .checked_sub(url.len())
            .filter(|&at| &arg[at..] == url)
        else {
            return Vec::new();
        };
        spans.iter().map(|s| s.start + at..s.end + at).collect()
    });
}

/// Where the user information of a URL's `rest` (what follows `://`)
/// ends: its last `@` before the query. The query is taken to start at
/// the first `?` after the first `@`, so a password holding an unescaped
/// `@` (`mama:p@ss@host`), `/` or `?` is all user information, and a `@`
/// in a query parameter is not.
fn user_info_end(rest: &str) -> Option<usize> {
    let first = rest.find('@')?;
    let query = rest[first..].find('?').map_or(rest.len(), |q| first + q);
    rest[..query].rfind('@')
}

/// `text` with `%XX` escapes (and `+`, where `plus`) decoded, lossily.
fn percent_decoded(text: &str, plus: bool) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') if plus => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The password file libpq reads: `PGPASSFILE`, else `~/.pgpass`.
fn password_file() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("PGPASSFILE").filter(|f| !f.is_empty()) {
        return Some(PathBuf::from(file));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".pgpass"))
}

/// The password the password file gives this connection, if any. As libpq
/// does, a file that group or others may read is ignored, with a warning.
fn password_from_file(config: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = password_file()?;
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        say!(
            "mama: the password file {} may be read by others; it is ignored \
             (chmod 600 {0})",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(folder)) => folder.to_string_lossy().into_owned(),
        None => "localhost".to_string(),
    };
    let on_socket = matches!(config.get_hosts().first(), Some(Host::Unix(_)));
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(DEFAULT_PORT)
        .to_string();
    let dbname = config.get_dbname().unwrap_or_default();
    let user = config.get_user().unwrap_or_default();
    text.lines().find_map(|line| {
        let fields = pgpass_fields(line)?;
        let [h, p, d, u, password] = fields.as_slice() else {
            return None;
        };
        let host_matches = h == "*" || *h == host || (on_socket && h == "localhost");
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        (host_matches && matches(p, &port) && matches(d, dbname) && matches(u, user))
            .then(|| password.clone())
    })
}

/// A password file line's five fields (`\:` and `\\` escaped); `None` for
/// comments and lines of another shape.
fn pgpass_fields(line: &str) -> Option<Vec<String>> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        for (url, shown) in [
            (
                "postgresql://mama:s3cr%40t@db.example:5433/lab",
                "postgresql://mama@db.example:5433/lab",
            ),
            (
                "postgres://mama@/lab?host=/run/postgresql&password=x",
                "postgres://mama@/lab?host=/run/postgresql",
            ),
            ("postgresql://db/lab?password=x", "postgresql://db/lab"),
            ("postgresql:///lab", "postgresql:///lab"),
            // The client reads the user information up to the first `@`.
            (
                "postgresql://mama:ab/cd+ef==@db/lab",
                "postgresql://mama@db/lab",
            ),
            ("postgresql://mama:ab?cd@db/lab", "postgresql://mama@db/lab"),
            // An unescaped `@` in the password.
            (
                "postgresql://mama:p@S3cret@host/lab2",
                "postgresql://mama@host/lab2",
            ),
            (
                "postgresql://mama:a@b@c@host/lab?application_name=x@y",
                "postgresql://mama@host/lab?application_name=x@y",
            ),
            (
                "postgresql://db/lab?%70assword=s3cr3t&sslmode=disable",
                "postgresql://db/lab?sslmode=disable",
            ),
        ] {
            assert_eq!(without_password(url), shown, "{url}");
        }
    }

    #[test]
    fn sslmode_and_sslrootcert_come_from_the_url_else_the_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let url = DbUrl::parse_with(
            "postgresql://mama:p%40ss@db/lab?sslmode=verify-full&sslrootcert=/a%20b.crt&application_name=x",
            env(&[("PGSSLMODE", "disable"), ("HOME", "/home/u")]),
        )
        .map_err(|e| e.to_string());
        let url = url.as_ref().expect("a valid URL");
        assert_eq!(url.tls.mode, SslMode::VerifyFull);
        assert_eq!(url.tls.root_cert, Some(PathBuf::from("/a b.crt")));
        assert_eq!(url.config.get_application_name(), Some("x"));
        assert_eq!(
            url.config.get_ssl_mode(),
            postgres::config::SslMode::Require
        );
        assert_eq!(url.config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(
            url.shown,
            "postgresql://mama@db/lab?sslmode=verify-full&sslrootcert=/a%20b.crt&application_name=x"
        );
        let url = DbUrl::parse_with(
            "postgresql://db/lab",
            env(&[("PGSSLMODE", "require"), ("HOME", "/home/u")]),
        )
        .map_err(|e| e.to_string());
        let tls = &url.as_ref().expect("a valid URL").tls;
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(
            tls.root_cert,
            Some(PathBuf::from("/home/u/.postgresql/root.crt"))
        );
        let url = DbUrl::parse_with("postgresql://db/lab", env(&[])).map_err(|e| e.to_string());
        assert_eq!(url.as_ref().map(|u| u.tls.mode).ok(), Some(SslMode::Prefer));
        // A password over TCP, no sslmode given: never in clear.
        let mode = |url: &str, vars: &'static [(&'static str, &'static str)]| {
            DbUrl::parse_with(url, env(vars))
                .map(|u| (u.tls.mode, u.tls.guards_password))
                .map_err(|e| e.to_string())
        };
        let guarded = Ok((SslMode::Require, true));
        assert_eq!(mode("postgresql://mama:pw@db/lab", &[]), guarded);
        assert_eq!(
            mode("postgresql://mama@db/lab", &[("PGPASSWORD", "pw")]),
            guarded
        );
        let asked = Ok((SslMode::Prefer, false));
        assert_eq!(
            mode("postgresql://mama:pw@db/lab?sslmode=prefer", &[]),
            asked
        );
        assert_eq!(
            mode("postgresql://mama:pw@db/lab", &[("PGSSLMODE", "prefer")]),
            asked
        );
        // Over a local socket, or with no password, libpq's default.
        assert_eq!(
            mode("postgresql://mama:pw@/lab?host=/run/postgresql", &[]),
            asked
        );
        assert_eq!(mode("postgresql://mama@db/lab", &[]), asked);
        let bad = DbUrl::parse_with("postgresql://db/lab?sslmode=on", env(&[]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            bad.contains("\"on\"") && bad.contains("verify-full"),
            "{bad}"
        );
    }

    #[test]
    fn sslcert_and_sslkey_come_from_the_url_else_the_environment_else_home() {
        let tls = |url: &str, vars: &'static [(&'static str, &'static str)]| {
            DbUrl::parse_with(url, move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            })
            .map(|url| (url.tls, url.config, url.shown))
            .map_err(|e| e.to_string())
        };
        let file = |path: &str, from, parameter, variable| {
            Some(SslFile {
                path: PathBuf::from(path),
                from,
                parameter,
                variable,
            })
        };
        let (given, config, shown) = tls(
            "postgresql://db/lab?sslcert=/c/me%20.crt&sslkey=/c/me.key&application_name=x",
            &[
                ("PGSSLCERT", "/env.crt"),
                ("PGSSLKEY", "/env.key"),
                ("HOME", "/home/u"),
            ],
        )
        .expect("a valid URL");
        assert_eq!(
            given.client_cert,
            file("/c/me .crt", SslFrom::Url, "sslcert", "PGSSLCERT")
        );
        assert_eq!(
            given.client_key,
            file("/c/me.key", SslFrom::Url, "sslkey", "PGSSLKEY")
        );
        // The client never sees them; the URL shown keeps them.
        assert_eq!(config.get_application_name(), Some("x"));
        assert!(
            shown.contains("sslcert=/c/me%20.crt&sslkey=/c/me.key"),
            "{shown}"
        );
        let (env, ..) = tls(
            "postgresql://db/lab",
            &[
                ("PGSSLCERT", "/env.crt"),
                ("PGSSLKEY", "/env.key"),
                ("HOME", "/home/u"),
            ],
        )
        .expect("a valid URL");
        assert_eq!(
            env.client_cert,
            file("/env.crt", SslFrom::Environment, "sslcert", "PGSSLCERT")
        );
        assert_eq!(
            env.client_key.map(|key| key.setting()),
            Some("PGSSLKEY".to_string())
        );
        // An empty parameter is none, as in libpq: the default.
        let (default, ..) =
            tls("postgresql://db/lab?sslcert=", &[("HOME", "/home/u")]).expect("a valid URL");
        let cert = default.client_cert.expect("the default");
        assert_eq!(
            (cert.path.clone(), cert.from, cert.given()),
            (
                PathBuf::from("/home/u/.postgresql/postgresql.crt"),
                SslFrom::Default,
                false
            )
        );
        assert_eq!(
            default.client_key.map(|key| key.setting()),
            Some("sslkey's default".to_string())
        );
        let (homeless, ..) = tls("postgresql://db/lab", &[]).expect("a valid URL");
        assert_eq!((homeless.client_cert, homeless.client_key), (None, None));
    }

    #[test]
    fn passwords_are_found_where_they_stand() {
        for (url, secrets) in [
            ("postgresql://mama:p@ss@db/lab", vec!["p@ss"]),
            (
                "postgresql://mama@db/lab?sslmode=require&password=s3",
                vec!["s3"],
            ),
            ("postgresql://m:a?b@db/lab?%70assword=c", vec!["a?b", "c"]),
            ("postgresql://mama@db/lab", vec![]),
            ("postgresql://db/lab?application_name=x@y", vec![]),
        ] {
            let found: Vec<&str> = password_spans(url).into_iter().map(|s| &url[s]).collect();
            assert_eq!(found, secrets, "{url}");
        }
    }

    #[test]
    fn password_file_lines_are_read_as_libpq_does() {
        assert_eq!(
            pgpass_fields(r"db\:1:*:lab:mama:pa\:ss\\word"),
            Some(vec![
                "db:1".into(),
                "*".into(),
                "lab".into(),
                "mama".into(),
                r"pa:ss\word".into()
            ])
        );
        assert_eq!(pgpass_fields("# a comment"), None);
        assert_eq!(pgpass_fields("too:few:fields"), None);
        // A colon in the last field is part of the password.
        assert_eq!(
            pgpass_fields("h:5432:d:u:a:b").map(|f| f[4].clone()),
            Some("a:b".into())
        );
    }
}
