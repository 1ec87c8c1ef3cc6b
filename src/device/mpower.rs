//! The mpower driver: a Ubiquiti mFi mPower outlet bar over plain HTTP
//! (the protocol is in [`super`]).
//!
//! Each request is HTTP/1.0 on a connection of its own, which the device
//! closes after its answer: its web server then sends the body as it is,
//! without chunks (a chunked answer is read all the same). An answer is
//! read within the network limit, and at most [`MAX_BODY`] of it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::Value;

use super::{Limits, Reading, Switch, confirm, failed, slot_failed};
use crate::error::Result;
use crate::model::device::Device;
use crate::text::printable;

/// The largest body read from a device.
const MAX_BODY: usize = 1024 * 1024;
/// The largest status line and headers read from a device.
const MAX_HEAD: usize = 64 * 1024;

pub(super) struct Mpower {
    device: Device,
    /// The address as given (for messages and the Host header).
    address: String,
    host: String,
    port: u16,
    user: String,
    password: String,
    limits: Limits,
    /// Whether this session was logged in (the device may have dropped it
    /// since).
    logged_in: bool,
}

/// An answer of the device.
#[derive(Debug)]
struct Answer {
    status: u16,
    location: Option<String>,
    body: Vec<u8>,
}

/// What went wrong, for [`slot_failed`] to name the device and slot.
type Fallible<T> = std::result::Result<T, String>;

/// What an answer means.
enum Meaning {
    Json(Value),
    /// The session is not logged in.
    LogIn,
}

impl Mpower {
    pub(super) fn open(device: &Device, limits: Limits) -> Result<Mpower> {
        let address = device.option("address").unwrap_or_default().trim();
        let (host, port) = split_address(address).ok_or_else(|| {
            failed(
                device,
                format!(
                    "address '{}' is not a host name or IP address, with :PORT if not 80",
                    printable(address)
                ),
            )
        })?;
        Ok(Mpower {
            device: device.clone(),
            address: address.to_string(),
            host,
            port,
            user: device.option("user").unwrap_or("ubnt").to_string(),
            password: device.option("password").unwrap_or("ubnt").to_string(),
            limits,
            logged_in: false,
        })
    }

    /// The outlets, as `GET /sensors` tells of them.
    fn sensors(&mut self) -> Fallible<Vec<Value>> {
        let answer = self.call("GET", "/sensors", None)?;
        match answer.get("sensors") {
            Some(Value::Array(sensors)) => Ok(sensors.clone()),
            _ => Err(format!(
                "{} answered /sensors without a list of sensors",
                self.address
            )),
        }
    }

    /// The outlet `slot` among `sensors`, or an error naming those there
    /// are.
    fn outlet(&self, sensors: &[Value], slot: u32) -> Fallible<Reading> {
        let port = |s: &Value| s.get("port").and_then(Value::as_u64);
        let Some(sensor) = sensors.iter().find(|s| port(s) == Some(u64::from(slot))) else {
            let mut ports: Vec<u64> = sensors.iter().filter_map(port).collect();
            ports.sort_unstable();
            let ports: Vec<String> = ports.iter().map(u64::to_string).collect();
            return Err(format!(
                "{} has no outlet {slot} (its outlets: {})",
                self.address,
                if ports.is_empty() {
                    "none".to_string()
                } else {
                    ports.join(", ")
                }
            ));
        };
        let number = |key: &str| sensor.get(key).and_then(Value::as_f64);
        let on = match sensor.get("output") {
            Some(Value::Number(n)) if n.as_f64() == Some(1.0) => true,
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => false,
            Some(Value::Bool(b)) => *b,
            other => {
                return Err(format!(
                    "{} gave outlet {slot} the output {}, not 1 or 0",
                    self.address,
                    other.map_or("(none)".to_string(), Value::to_string)
                ));
            }
        };
        Ok(Reading {
            on,
            watts: number("power"),
            volts: number("voltage"),
            amps: number("current"),
        })
    }

    /// A request in the session: logs in first if it never was, and once
    /// more if the device answers as to a session it does not know.
    fn call(&mut self, method: &str, path: &str, form: Option<&str>) -> Fallible<Value> {
        for _ in 0..2 {
            if !self.logged_in {
                self.log_in()?;
            }
            let answer = self.exchange(method, path, form)?;
            match self.meaning(&answer, path)? {
                Meaning::Json(value) => return self.successful(value, path),
                Meaning::LogIn => self.logged_in = false,
            }
        }
        Err(format!(
            "login to {} as {} failed: the device still answers as to a session \
             not logged in (wrong user or password?)",
            self.address,
            printable(&self.user)
        ))
    }

    fn log_in(&mut self) -> Fallible<()> {
        let form = format!(
            "username={}&password={}",
            form_encode(&self.user),
            form_encode(&self.password)
        );
        let answer = self.exchange("POST", "/login.cgi", Some(&form))?;
        // The device answers a login with a redirect, to its start page if
        // it took it; whether it did shows in the next answer.
        if answer.status >= 400 {
            return Err(format!(
                "login to {} as {} failed: it answered HTTP {}",
                self.address,
                printable(&self.user),
                answer.status
            ));
        }
        self.logged_in = true;
        Ok(())
    }

    /// What `answer` means: JSON, or a session to log in. A redirect (to
    /// the login page), an empty body or an HTML page is the device's
    /// answer to a session it does not know.
    fn meaning(&self, answer: &Answer, path: &str) -> Fallible<Meaning> {
        match answer.status {
            300..=399 | 401 | 403 => return Ok(Meaning::LogIn),
            200..=299 => {}
            status => {
                return Err(format!(
                    "{} answered {path} with HTTP {status}",
                    self.address
                ));
            }
        }
        let text = String::from_utf8_lossy(&answer.body);
        let text = text.trim();
        if text.is_empty() || text.starts_with('<') {
            return Ok(Meaning::LogIn);
        }
        serde_json::from_str(text).map(Meaning::Json).map_err(|_| {
            let start: String = text.chars().take(80).collect();
            format!(
                "{} answered {path} with something other than JSON: '{}'",
                self.address,
                printable(&start)
            )
        })
    }

    /// `value` if its `status` is `success`.
    fn successful(&self, value: Value, path: &str) -> Fallible<Value> {
        match value.get("status").and_then(Value::as_str) {
            Some("success") => Ok(value),
            status => Err(format!(
                "{} answered {path} with status '{}'",
                self.address,
                printable(status.unwrap_or("(none)"))
            )),
        }
    }

    /// One request and its answer, on a connection of its own.
    fn exchange(&self, method: &str, path: &str, form: Option<&str>) -> Fallible<Answer> {
        let deadline = Instant::now() + self.limits.network;
        let within = crate::text::seconds(self.limits.network);
        let mut stream = self.connect()?;
        let mut request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nCookie: AIROS_SESSIONID={}\r\n\
             User-Agent: mama/{}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.host_header(),
            session_id(),
            env!("CARGO_PKG_VERSION"),
        );
        if let Some(form) = form {
            request.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                form.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(form.unwrap_or_default());
        let _ = stream.set_write_timeout(Some(self.limits.network));
        stream.write_all(request.as_bytes()).map_err(|e| {
            format!(
                "cannot send {method} {path} to {}: {}",
                self.address,
                io_reason(&e, &within)
            )
        })?;
        let mut got = Vec::new();
        let mut head: Option<(usize, Answer, Option<usize>, bool)> = None;
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{} did not answer {method} {path} within {within}",
                    self.address
                ));
            }
            let _ = stream.set_read_timeout(Some(left));
            let n = match stream.read(&mut buffer) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(format!(
                        "{} did not answer {method} {path}: {}",
                        self.address,
                        io_reason(&e, &within)
                    ));
                }
            };
            got.extend_from_slice(&buffer[..n]);
            if head.is_none() {
                if let Some(end) = find(&got, b"\r\n\r\n") {
                    let parsed = parse_head(&got[..end]).map_err(|what| {
                        format!("{} answered {method} {path} with {what}", self.address)
                    })?;
                    head = Some((end + 4, parsed.0, parsed.1, parsed.2));
                } else if got.len() > MAX_HEAD {
                    return Err(format!(
                        "{} answered {method} {path} with headers longer than {} KiB",
                        self.address,
                        MAX_HEAD / 1024
                    ));
                }
            }
            if let Some((start, _, length, _)) = &head {
                let body = got.len() - start;
                if body > MAX_BODY + MAX_HEAD {
                    return Err(format!(
                        "{} answered {method} {path} with more than {} MiB",
                        self.address,
                        MAX_BODY / (1024 * 1024)
                    ));
                }
                if length.is_some_and(|length| body >= length) {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        let Some((start, mut answer, length, chunked)) = head else {
            return Err(format!(
                "{} closed the connection without answering {method} {path}",
                self.address
            ));
        };
        let body = &got[start..];
        answer.body = if chunked {
            dechunk(body).ok_or_else(|| {
                format!(
                    "{} answered {method} {path} with a broken chunked body",
                    self.address
                )
            })?
        } else if let Some(length) = length {
            if body.len() < length {
                return Err(format!(
                    "{} cut its answer to {method} {path} short ({} of {length} bytes)",
                    self.address,
                    body.len()
                ));
            }
            body[..length].to_vec()
        } else {
            body.to_vec()
        };
        if answer.body.len() > MAX_BODY {
            return Err(format!(
                "{} answered {method} {path} with more than {} MiB",
                self.address,
                MAX_BODY / (1024 * 1024)
            ));
        }
        Ok(answer)
    }

    /// A connection to the device, within the network limit.
    fn connect(&self) -> Fallible<TcpStream> {
        let within = crate::text::seconds(self.limits.network);
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot find {}: {e}", printable(&self.host)))?
            .collect();
        let mut last = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, self.limits.network) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => format!(
                "{} refused the connection (nothing listens on port {})",
                self.address, self.port
            ),
            Some(e) => format!(
                "cannot connect to {}: {}",
                self.address,
                io_reason(&e, &within)
            ),
            None => format!("{} has no address", printable(&self.host)),
        })
    }

    /// The Host header: the address as given.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl Mpower {
    fn read_slot(&mut self, slot: u32) -> Fallible<Reading> {
        let sensors = self.sensors()?;
        self.outlet(&sensors, slot)
    }
}

impl Switch for Mpower {
    fn set(&mut self, slot: u32, on: bool) -> Result<()> {
        self.device.check_slot(slot)?;
        // The outlet must be there before it is switched: what a device
        // does with an outlet it lacks is its own.
        self.read_slot(slot)
            .map_err(|e| slot_failed(&self.device, slot, e))?;
        let form = format!("output={}", u8::from(on));
        self.call("PUT", &format!("/sensors/{slot}"), Some(&form))
            .map_err(|e| slot_failed(&self.device, slot, e))?;
        let device = self.device.clone();
        confirm(&device, slot, self.limits.confirm, on, || {
            self.read_slot(slot)
                .map(|r| r.on)
                .map_err(|e| slot_failed(&self.device, slot, e))
        })
    }

    fn read(&mut self, slot: u32) -> Result<Reading> {
        self.device.check_slot(slot)?;
        self.read_slot(slot)
            .map_err(|e| slot_failed(&self.device, slot, e))
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address, as
/// (host, port); `None` if it is none of those.
fn split_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else if address.matches(':').count() == 1 {
        let (host, port) = address.split_once(':')?;
        (host, Some(port))
    } else {
        (address, None)
    };
    let port = match port {
        None => 80,
        Some(port) => port.parse().ok().filter(|&p| p != 0)?,
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_' | '%');
    (!host.is_empty() && host.chars().all(allowed)).then(|| (host.to_string(), port))
}

/// The session cookie's value, the same for the whole process: 32 hex
/// digits from the kernel's random numbers.
fn session_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let mut bytes = [0u8; 16];
        // SAFETY: fills the buffer we own, of the length given.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n != bytes.len() as isize {
            // No getrandom(2): the standard library's random hash keys.
            use std::hash::{BuildHasher, Hasher};
            for half in bytes.chunks_mut(8) {
                let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
                hasher.write_u32(std::process::id());
                half.copy_from_slice(&hasher.finish().to_ne_bytes());
            }
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// `text` encoded for an `application/x-www-form-urlencoded` body.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a connection failed, in words.
fn io_reason(e: &std::io::Error, within: &str) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            format!("no answer within {within}")
        }
        _ => e.to_string(),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status line and headers: the answer (without its body), its
/// Content-Length, and whether its body is chunked.
fn parse_head(head: &[u8]) -> std::result::Result<(Answer, Option<usize>, bool), String> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split_ascii_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        let first: String = first.chars().take(80).collect();
        format!("something other than HTTP: '{}'", printable(&first))
    })?;
    let mut answer = Answer {
        status,
        location: None,
        body: Vec::new(),
    };
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse()
                        .map_err(|_| format!("a Content-Length of '{}'", printable(value)))?,
                )
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "location" => answer.location = Some(value.to_string()),
            _ => {}
        }
    }
    Ok((answer, if chunked { None } else { length }, chunked))
}

/// A chunked body, put together; `None` if it is broken.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = find(body, b"\r\n")?;
        let size = std::str::from_utf8(&body[..end]).ok()?;
        let size = size.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        body = &body[end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len() < size + 2 || out.len() + size > MAX_BODY {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_a_host_and_a_port() {
        let split = |a: &str| split_address(a);
        assert_eq!(split("10.0.0.2"), Some(("10.0.0.2".into(), 80)));
        assert_eq!(split("pdu1.lab:8080"), Some(("pdu1.lab".into(), 8080)));
        assert_eq!(split("[fe80::1]:81"), Some(("fe80::1".into(), 81)));
        assert_eq!(split("fe80::1"), Some(("fe80::1".into(), 80)));
        assert_eq!(split("[::1]"), Some(("::1".into(), 80)));
        for bad in [
            "",
            "host:",
            "host:0",
            "host:70000",
            "a b",
            "http://x",
            "[::1]x",
        ] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }

    #[test]
    fn forms_are_encoded() {
        assert_eq!(form_encode("ubnt"), "ubnt");
        assert_eq!(form_encode("p&ss= wörd"), "p%26ss%3D%20w%C3%B6rd");
    }

    #[test]
    fn session_ids_are_32_hex_digits() {
        let id = session_id();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(session_id(), id);
    }

    #[test]
    fn chunked_bodies_are_put_together() {
        assert_eq!(
            dechunk(b"4\r\n{\"a\"\r\n3;x\r\n:1}\r\n0\r\n\r\n").as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(dechunk(b"4\r\n{\"a"), None);
        assert_eq!(dechunk(b"zz\r\n"), None);
    }

    #[test]
    fn heads_are_parsed() {
        let (answer, length, chunked) =
            parse_head(b"HTTP/1.0 302 Found\r\nLocation: /login.html\r\nContent-Length: 0")
                .unwrap();
        assert_eq!(answer.status, 302);
        assert_eq!(answer.location.as_deref(), Some("/login.html"));
        assert_eq!((length, chunked), (Some(0), false));
        let (_, length, chunked) =
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9")
                .unwrap();
        assert_eq!((length, chunked), (None, true));
        assert!(parse_head(b"SSH-2.0-dropbear").is_err());
    }
}
