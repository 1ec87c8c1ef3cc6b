//! A database lab's sessions: opening them with the settings every
//! session of mama's needs, the main one kept and opened anew after a
//! server restart, and what their errors mean.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use std::sync::atomic::Ordering;

use postgres::{Client, Config};

use super::tls::Connector;
use super::{IDLE_CHECK, PLACE_SPACE, PgStore};
use crate::error::{Error, Result};
use crate::settings::url::{DbUrl, SslMode};

/// A database error with what was being done; a permission the role
/// lacks, or a read-only server, is [`Error::ReadOnly`], on which readers
/// go on without writing.
pub fn db_error(context: &str, e: postgres::Error) -> Error {
    let message = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    match e.code() {
        Some(code)
            if *code == SqlState::INSUFFICIENT_PRIVILEGE
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            Error::ReadOnly {
                context: context.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, message),
            }
        }
        _ => Error::Database {
            context: context.to_string(),
            message,
        },
    }
}

/// Whether `e` says the session is gone (the server restarting, shutting
/// down or unreachable) rather than refusing a statement.
pub fn is_connection_loss(e: &postgres::Error) -> bool {
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(code) => {
            *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08")
        }
    }
}

/// The settings of every session mama opens: the server drops the session,
/// and with it its locks, within `silence` of its peer going silent
/// (keepalive idle + count × interval, and the TCP user timeout for data
/// left unacknowledged); the client side notices a dead server too. A
/// session of a transaction left idle for the host timeout (its client
/// cut off while it held the lab's lock) is ended by the server. The
/// connect timeout is the host timeout's, at most 10 s.
pub fn session_config(url: &DbUrl, host_timeout: Duration, silence: Duration) -> Config {
    let secs = silence.as_secs().max(1);
    let idle = (secs / 2).max(1);
    let interval = (secs / 8).max(1);
    let count = (secs.saturating_sub(idle) / interval).max(1);
    let mut config = url.config.clone();
    // A session blocked in a lock wait (a waiter) reads nothing from its
    // client: the server looks every second whether the client is still
    // there, so a killed waiter's session ends, and lets go of its locks,
    // within a second rather than when its wait ends.
    let options = format!(
        "{} -c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} \
         -c tcp_keepalives_count={count} -c tcp_user_timeout={} \
         -c client_connection_check_interval=1000 \
         -c idle_in_transaction_session_timeout={}",
        config.get_options().unwrap_or_default(),
        secs * 1000,
        host_timeout.as_millis().max(1000)
    );
    config.options(options.trim());
    if config.get_application_name().is_none() {
        config.application_name(&application_name());
    }
    config
        .connect_timeout(Duration::from_secs(host_timeout.as_secs().clamp(1, 10)))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(idle))
        .keepalives_interval(Duration::from_secs(interval))
        .keepalives_retries(u32::try_from(count).unwrap_or(u32::MAX))
        .tcp_user_timeout(Duration::from_secs(secs));
    config
}

/// What a session of this process calls itself (`application_name`, in
/// `pg_stat_activity` and in messages about who holds a lock): `mama PID
/// on HOST`, within the server's 63 bytes.
fn application_name() -> String {
    let mut name = format!("mama {} on {}", std::process::id(), crate::os::host_name());
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// How long `--no-wait` waits for a server to answer a new session: long
/// enough for a distant server's TLS and password exchange, short enough
/// that one that does not answer is said at once.
const NO_WAIT_CONNECT: Duration = Duration::from_secs(2);

/// How long the lab's main session (which holds a waiter's place locks)
/// may go silent: half the host timeout. A waiter's session whose host
/// was cut off may be sent the answer to its lock wait after the cut
/// (the lock came free), and data left unacknowledged is given up only
/// the TCP user timeout after it was sent: half the host timeout twice
/// is the host timeout, so a dead host's waiters are gone within it, as
/// its holders are.
pub fn main_silence(host_timeout: Duration) -> Duration {
    (host_timeout / 2).max(Duration::from_secs(1))
}

/// Opens a session to the lab.
pub fn connect(url: &DbUrl, host_timeout: Duration) -> Result<Client> {
    connect_by(url, host_timeout, host_timeout, None)
}

/// Opens a session to the lab, giving up at `give_up` (the caller's
/// patience: `--timeout`, `--no-wait`) if that comes before the connect
/// timeout; the server drops it within `silence` of this host going
/// silent (see [`session_config`]). The session is encrypted as `sslmode`
/// asks; a standby (a server in recovery) is refused, for reads too: its
/// data may lag the primary's, and its locks are not the primary's.
pub fn connect_by(
    url: &DbUrl,
    host_timeout: Duration,
    silence: Duration,
    give_up: Option<Instant>,
) -> Result<Client> {
    let mut config = session_config(url, host_timeout, silence);
    if let Some(at) = give_up {
        let left = at.saturating_duration_since(Instant::now());
        let limit = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(left)
            .min(left);
        // The client takes a zero timeout for none.
        config.connect_timeout(limit.max(Duration::from_millis(100)));
    }
    let in_clear = matches!(url.tls.mode, SslMode::Disable | SslMode::Allow);
    let connector = Connector::new(&url.tls, !in_clear)?;
    let encrypted = connector.used();
    let client = match config.connect(connector) {
        // `allow`: in clear first, encrypted if the server refuses that.
        Err(e) if url.tls.mode == SslMode::Allow && refused_login(&e) => {
            config.ssl_mode(postgres::config::SslMode::Require);
            let connector = Connector::new(&url.tls, true)?;
            let retry_encrypted = connector.used();
            let client = config.connect(connector);
            encrypted.store(retry_encrypted.load(Ordering::SeqCst), Ordering::SeqCst);
            client
        }
        other => other,
    };
    let mut client = client.map_err(|e| connect_error(url, &config, e))?;
    if !encrypted.load(Ordering::SeqCst) {
        warn_in_clear(url);
    }
    // Two settings in one round trip, with no catalog lookup or plan
    // (every server mama connects to has `in_hot_standby`: the session's
    // options above need PostgreSQL 14, which brought both).
    let on: Vec<bool> = client
        .simple_query("SHOW in_hot_standby; SHOW default_transaction_read_only")
        .map(|messages| {
            messages
                .iter()
                .filter_map(|message| match message {
                    postgres::SimpleQueryMessage::Row(row) => Some(row.get(0) == Some("on")),
                    _ => None,
                })
                .collect()
        })
        .map_err(|e| db_error(&format!("cannot connect to the lab at {}", url.shown), e))?;
    let refused = |message: &str| Error::Database {
        context: format!("cannot use the lab at {}", url.shown),
        message: message.into(),
    };
    match on[..] {
        [true, _] => Err(refused(
            "the server is a read-only standby (in recovery), whose data may lag the \
             primary's; give the primary's address",
        )),
        // A session read-only by default is where a pooler or a role's
        // setting sends readers, often to a replica.
        [false, true] => Err(refused(
            "the session is read-only (default_transaction_read_only is on for this role, \
             database or server), as a replica's is; give a read-write session to the \
             primary",
        )),
        _ => Ok(client),
    }
}

/// Whether the server refused the login itself (`pg_hba.conf`, a
/// password), as a server that takes only encrypted sessions does.
fn refused_login(e: &postgres::Error) -> bool {
    e.code().is_some_and(|code| code.code().starts_with("28"))
}

/// Says, once a process, that a session over the network with a password
/// went in clear because the server offers no TLS (`prefer`, `allow`):
/// the password, if the server asked for it in clear or as MD5, and all
/// that was said could be read on the way.
fn warn_in_clear(url: &DbUrl) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let over_network = url
        .config
        .get_hosts()
        .iter()
        .any(|h| matches!(h, postgres::config::Host::Tcp(_)));
    if !over_network
        || url.config.get_password().is_none()
        || !matches!(url.tls.mode, SslMode::Prefer | SslMode::Allow)
        || WARNED.swap(true, Ordering::SeqCst)
    {
        return;
    }
    say!(
        "mama: warning: the session to the lab at {} is not encrypted (the server offers \
         no TLS, sslmode {}): its traffic, and a password the server asks for in clear, \
         can be read on the network; turn on ssl in the server and use sslmode=verify-full \
         (or require)",
        url.shown,
        url.tls.mode.name()
    );
}

/// Why a session could not be opened, in words: refused, no answer, no
/// password, the login refused, TLS.
fn connect_error(url: &DbUrl, config: &Config, e: postgres::Error) -> Error {
    let context = format!("cannot connect to the lab at {}", url.shown);
    let client_cert = url.tls.client_cert.as_ref().filter(|cert| cert.in_use());
    if let Some(db) = e.as_db_error() {
        // pg_hba.conf's `cert`, or `clientcert=`, and none was shown.
        if db.code() == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && db.message().contains("client certificate")
            && client_cert.is_none()
        {
            return Error::Database {
                context,
                message: format!(
                    "{}: name yours with sslcert=PATH and sslkey=PATH in the URL (or \
                     PGSSLCERT and PGSSLKEY, or put them in ~/.postgresql/postgresql.crt \
                     and postgresql.key)",
                    db.message()
                ),
            };
        }
        return db_error(&context, e);
    }
    let cause = std::error::Error::source(&e);
    let text = match cause {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    let io = cause.and_then(|s| s.downcast_ref::<std::io::Error>());
    let message = if text.contains("password missing") {
        "the server asks for a password and none was given (put it in the URL, in \
         ~/.pgpass or PGPASSFILE, or in PGPASSWORD)"
            .to_string()
    } else if let Some(io) = io.filter(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
        format!("the server refused the connection (is it running, and listening there?): {io}")
    } else if let Some(io) = io.filter(|io| io.kind() == std::io::ErrorKind::TimedOut) {
        let after = config
            .get_connect_timeout()
            .map(|t| format!(" within {:.1} s", t.as_secs_f64()))
            .unwrap_or_default();
        format!("the server did not answer{after} ({io})")
    } else if let Some(io) = io.filter(|io| io.kind() == std::io::ErrorKind::NotFound) {
        format!("no server there (no socket): {io}")
    } else if let Some(io) = io.filter(|io| io.kind() == std::io::ErrorKind::NetworkUnreachable) {
        format!("the server's network cannot be reached: {io}")
    } else if let Some(alert) = certificate_alert(&text) {
        match client_cert {
            Some(cert) => format!(
                "the server refused the client certificate {} ({}) (TLS alert {alert}): is it \
                 signed by an authority the server trusts (its ssl_ca_file), and still valid?",
                cert.path.display(),
                cert.setting()
            ),
            None => format!(
                "the server asks for a client certificate (TLS alert {alert}) and none was \
                 given: name yours with sslcert=PATH and sslkey=PATH in the URL (or PGSSLCERT \
                 and PGSSLKEY)"
            ),
        }
    } else if text.starts_with("error performing TLS handshake") {
        let why = cause.map(|s| s.to_string()).unwrap_or_default();
        let why = why
            .strip_prefix("invalid peer certificate: ")
            .unwrap_or(&why);
        if why.contains("does not support TLS") && url.tls.guards_password {
            "the server offers no TLS, and the password would cross the network in clear: \
             turn on ssl in the server, or give sslmode=prefer (or disable) in the URL to \
             send it so anyway"
                .to_string()
        } else if why.contains("does not support TLS") {
            format!(
                "the server does not offer TLS, and sslmode {} asks for it",
                url.tls.mode.name()
            )
        } else {
            format!("the TLS handshake failed: {why}")
        }
    } else {
        text
    };
    Error::Database { context, message }
}

/// The alert in `text` by which a server refuses the client's
/// certificate, if that is what it says: during the handshake (TLS 1.2)
/// or on the first read after it (TLS 1.3).
fn certificate_alert(text: &str) -> Option<&str> {
    const REFUSALS: [&str; 7] = [
        "UnknownCA",
        "BadCertificate",
        "UnsupportedCertificate",
        "CertificateRevoked",
        "CertificateExpired",
        "CertificateUnknown",
        "CertificateRequired",
    ];
    let (_, alert) = text.split_once("received fatal alert: ")?;
    let alert = alert.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
    REFUSALS.contains(&alert).then_some(alert)
}

impl PgStore {
    pub(super) fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the main session, opening it (again) where needed. A
    /// session idle for a while is asked first whether it still lives: one
    /// the server dropped (a restart) is opened anew, waiting up to the
    /// host timeout for the server to come back.
    pub(super) fn with_main<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut main = Self::locked(&self.main);
        let lost = self.lost.swap(false, std::sync::atomic::Ordering::SeqCst);
        let stale = match main.as_mut() {
            None => None,
            Some(_) if lost => Some(true),
            Some((client, _)) if client.is_closed() => Some(true),
            Some((client, used)) if used.elapsed() > IDLE_CHECK => {
                Some(client.simple_query("").is_err())
            }
            Some(_) => Some(false),
        };
        match stale {
            Some(false) => {}
            Some(true) => {
                let mut client = self.reconnect()?;
                // A waiter keeps its place: its place locks went with the
                // old session.
                for key in Self::locked(&self.places).iter() {
                    // A waiter behind may hold it for an instant (it looks
                    // whether it is free): try again until it is ours.
                    let give_up = Instant::now() + Duration::from_secs(1);
                    loop {
                        let taken: bool = client
                            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&PLACE_SPACE, key])
                            .map_err(|e| db_error(&self.context("wait in"), e))?
                            .get(0);
                        if taken || Instant::now() >= give_up {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                *main = Some((client, Instant::now()));
                self.warm.store(false, std::sync::atomic::Ordering::SeqCst);
            }
            None => {
                *main = Some((self.connect_main(true)?, Instant::now()));
                self.warm.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let Some((client, used)) = main.as_mut() else {
            return Err(Error::Invalid("internal error: no database session".into()));
        };
        let result = f(client);
        // A session found closed stays, so that the next use opens it again
        // patiently (a server restart).
        *used = Instant::now();
        result
    }

    /// Runs `f` on the main session at once, if it can be: `None` when
    /// another thread uses it, it is not open, or it was found lost (`f`
    /// failing with the session's loss marks it lost: its next use opens
    /// it anew). Never waits for the session, nor opens it.
    pub(super) fn with_main_at_once<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Option<T> {
        let mut main = match self.main.try_lock() {
            Ok(main) => main,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        if self.lost.load(Ordering::SeqCst) {
            return None;
        }
        let (client, used) = main.as_mut().filter(|(client, _)| !client.is_closed())?;
        match f(client) {
            Ok(value) => {
                *used = Instant::now();
                Some(value)
            }
            Err(e) => {
                if client.is_closed() || is_connection_loss(&e) {
                    self.lost.store(true, Ordering::SeqCst);
                }
                None
            }
        }
    }

    /// Opens the main session again after the server dropped it, for up to
    /// the host timeout.
    pub(super) fn reconnect(&self) -> Result<Client> {
        let give_up = Instant::now() + self.host_timeout;
        loop {
            match self.connect_main(false) {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() >= give_up => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Opens the main session (see [`main_silence`]); the first one
    /// within the caller's patience: by its `--timeout`, and in
    /// [`NO_WAIT_CONNECT`] for `--no-wait`.
    fn connect_main(&self, first: bool) -> Result<Client> {
        let no_wait = (first && self.patience.no_wait).then(|| Instant::now() + NO_WAIT_CONNECT);
        let give_up = match (no_wait, self.patience.deadline.filter(|_| first)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        connect_by(
            &self.url,
            self.host_timeout,
            main_silence(self.host_timeout),
            give_up,
        )
    }

    pub(super) fn context(&self, action: &str) -> String {
        format!("cannot {action} the lab at {}", self.url.shown)
    }
}
