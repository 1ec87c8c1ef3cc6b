//! The HTTP side: a thread a connection, one request a connection, parsed
//! by `httparse` from a bounded buffer. Requests only ever read what the
//! watcher published (see [`super::Published`]); none reads or changes
//! the lab.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{Shared, page, usage};
use crate::cli::render;
use crate::os;

/// The longest request head (request line and headers) read; a longer one
/// is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 64;
/// How many connections are served at once (each live page holds one);
/// more are answered 503.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send its request head, or to take a
/// response's bytes.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an open page is sent a comment while nothing changes (a
/// connection gone is noticed then).
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How many of a machine's events its page shows.
const RECENT: usize = 20;
/// How many days its chart shows.
const DAYS: u32 = 30;

/// The policy of every page: no script but the server's own file, no
/// request anywhere else.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                      connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'";

/// Accepts connections until the listener fails, each on a thread of its
/// own.
pub fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            continue;
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            let _ = respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                b"too many connections\n",
                false,
            );
            continue;
        }
        let shared = Arc::clone(&shared);
        let count = Arc::clone(&open);
        let spawned = std::thread::Builder::new()
            .name("mama-serve".into())
            .spawn(move || {
                handle(stream, &shared);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // The connection went with the closure: it is closed.
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What a request asks for.
struct Asked {
    head_only: bool,
    path: String,
    query: String,
    /// Its `Host` header.
    host: Option<String>,
}

/// Reads the request head, at most [`MAX_HEAD`] bytes; `Err` holds the
/// status to answer with, `None` a client that went away.
fn read_request(stream: &mut TcpStream) -> Result<Asked, Option<&'static str>> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    // The whole head within the timeout, not each piece of it.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(Some("408 Request Timeout"));
        }
        let _ = stream.set_read_timeout(Some(left));
        let n = stream.read(&mut buf[filled..]).map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                let head_only = match request.method {
                    Some("GET") => false,
                    Some("HEAD") => true,
                    _ => return Err(Some("405 Method Not Allowed")),
                };
                let target = request.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let host = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned());
                return Ok(Asked {
                    head_only,
                    path: path.to_string(),
                    query: query.to_string(),
                    host,
                });
            }
            Ok(httparse::Status::Partial) if filled == buf.len() => {
                return Err(Some("431 Request Header Fields Too Large"));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Some("431 Request Header Fields Too Large"));
            }
            Err(_) => return Err(Some("400 Bad Request")),
        }
    }
}

/// Writes a whole response and closes the connection's sending side.
fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: {POLICY}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut out = std::io::BufWriter::new(&mut *stream);
    out.write_all(head.as_bytes())?;
    if !head_only {
        out.write_all(body)?;
    }
    out.flush()?;
    drop(out);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn not_found(stream: &mut TcpStream, head_only: bool, what: &str) {
    let page = page::message_page("Not found", what);
    let _ = respond(stream, "404 Not Found", HTML, page.as_bytes(), head_only);
}

/// `%XX` sequences decoded; `None` for a broken one or text that is not
/// UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `host` (a request's `Host` header) names this host's loopback:
/// `localhost` (or a name under it) or a loopback address, with or without
/// a port. A server that listens on a loopback address answers only those:
/// a web page elsewhere whose name a DNS rebinding points at 127.0.0.1
/// reaches it under its own name, and must not read the lab. No header
/// (HTTP/1.0) is let through: a browser always sends one.
fn is_local_name(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Serves one connection: one request.
fn handle(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let asked = match read_request(&mut stream) {
        Ok(asked) => asked,
        Err(Some(status)) => {
            let _ = respond(&mut stream, status, TEXT, status.as_bytes(), false);
            return;
        }
        Err(None) => return,
    };
    let head_only = asked.head_only;
    if shared.loopback && !is_local_name(asked.host.as_deref()) {
        let _ = respond(
            &mut stream,
            "421 Misdirected Request",
            TEXT,
            b"this server answers requests for localhost or a loopback address only; \
              to reach it by another name, start it with --listen\n",
            head_only,
        );
        return;
    }
    let published = shared.lock();
    let (table, machines, metrics, rows, events) = (
        Arc::clone(&published.table),
        Arc::clone(&published.machines_json),
        Arc::clone(&published.metrics),
        Arc::clone(&published.rows),
        Arc::clone(&published.events),
    );
    drop(published);
    match asked.path.as_str() {
        "/" => {
            let page = page::status_page(&shared.location, &table);
            let _ = respond(&mut stream, "200 OK", HTML, page.as_bytes(), head_only);
        }
        "/status.js" => {
            let _ = respond(
                &mut stream,
                "200 OK",
                "text/javascript; charset=utf-8",
                page::SCRIPT.as_bytes(),
                head_only,
            );
        }
        "/worker.js" => {
            let _ = respond(
                &mut stream,
                "200 OK",
                "text/javascript; charset=utf-8",
                page::WORKER.as_bytes(),
                head_only,
            );
        }
        "/events" => updates(stream, shared, head_only),
        "/metrics" => {
            let _ = respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.as_bytes(),
                head_only,
            );
        }
        "/api/machines" => {
            let _ = respond(&mut stream, "200 OK", JSON, machines.as_bytes(), head_only);
        }
        "/api/events" => {
            let since = asked
                .query
                .split('&')
                .find_map(|pair| pair.strip_prefix("since="));
            let since = match since.map(str::parse::<u64>) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    let _ = respond(
                        &mut stream,
                        "400 Bad Request",
                        TEXT,
                        b"since= wants an event number\n",
                        head_only,
                    );
                    return;
                }
            };
            // From the history itself: exactly what `log --json` prints.
            let lines = shared
                .store()
                .read_events(Some(since))
                .and_then(|(_, events)| render::event_lines(&events));
            match lines {
                Ok(text) => {
                    let _ = respond(
                        &mut stream,
                        "200 OK",
                        "application/x-ndjson",
                        text.as_bytes(),
                        head_only,
                    );
                }
                Err(e) => {
                    let text = format!("{}\n", render::printable_lines(&e.to_string()));
                    let _ = respond(
                        &mut stream,
                        "503 Service Unavailable",
                        TEXT,
                        text.as_bytes(),
                        head_only,
                    );
                }
            }
        }
        path => {
            let Some(name) = path.strip_prefix("/machine/").and_then(percent_decoded) else {
                return not_found(&mut stream, head_only, "There is no such page.");
            };
            let Some(row) = rows.iter().find(|r| r.name == name) else {
                return not_found(
                    &mut stream,
                    head_only,
                    &format!("The lab has no machine {name}."),
                );
            };
            let now = os::now();
            let days = usage::busy_share_per_day(&events, &name, now, DAYS);
            let mut recent: Vec<&crate::model::event::Event> = events
                .iter()
                .rev()
                .filter(|e| e.machine == name)
                .take(RECENT)
                .collect();
            recent.reverse();
            let page = page::machine_page(&shared.location, row, &days, &recent);
            let _ = respond(&mut stream, "200 OK", HTML, page.as_bytes(), head_only);
        }
    }
}

/// `/events`: the status table each time it changes, as server-sent
/// events (`event: lab`, the table's HTML a `data:` line a line), the
/// current one first; a comment every [`KEEPALIVE`] while nothing
/// changes. Ends when the browser goes.
fn updates(mut stream: TcpStream, shared: &Shared, head_only: bool) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
                Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
                Connection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() || head_only {
        return;
    }
    // Reconnect a second after the server went away (a restart).
    if stream.write_all(b"retry: 1000\n\n").is_err() {
        return;
    }
    let mut sent = 0;
    loop {
        let mut published = shared.lock();
        if published.version == sent {
            published = shared
                .changed
                .wait_timeout(published, KEEPALIVE)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        let message = if published.version == sent {
            drop(published);
            ": still here\n\n".to_string()
        } else {
            sent = published.version;
            let table = Arc::clone(&published.table);
            drop(published);
            let mut message = format!("id: {sent}\nevent: lab\n");
            for line in table.lines() {
                message.push_str("data: ");
                message.push_str(line);
                message.push('\n');
            }
            message.push('\n');
            message
        };
        if stream
            .write_all(message.as_bytes())
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
    }
}
