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
//! - the URL is shown, and handed to jobs, without its password.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use postgres::Config;
use postgres::config::Host;

use crate::error::{Error, Result};

/// Where Debian's and most distributions' servers put their socket; libpq's
/// compiled-in default elsewhere.
const SOCKET_FOLDERS: [&str; 2] = ["/run/postgresql", "/tmp"];
const DEFAULT_PORT: u16 = 5432;

/// A database lab's address, ready to connect, and the URL to show.
#[derive(Clone)]
pub struct DbUrl {
    pub config: Config,
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
        let shown = without_password(url);
        let mut config = Config::from_str(url)
            .map_err(|e| Error::Invalid(format!("the state URL {shown} is not valid: {e}")))?;
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
        Ok(DbUrl {
            config,
            had_password,
            shown,
        })
    }
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
    let rest = match rest.split_once('@') {
        Some((userinfo, after)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{user}@{after}")
        }
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| {
                    let key = p.split_once('=').map_or(*p, |(key, _)| key);
                    !percent_decoded(key).eq_ignore_ascii_case("password")
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

/// `text` with `%XX` escapes (and `+`) decoded, lossily.
fn percent_decoded(text: &str) -> String {
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
            (None, b'+') => out.push(b' '),
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
            (
                "postgresql://db/lab?%70assword=s3cr3t&sslmode=disable",
                "postgresql://db/lab?sslmode=disable",
            ),
        ] {
            assert_eq!(without_password(url), shown, "{url}");
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
