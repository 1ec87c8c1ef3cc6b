//! An mFi mPower outlet bar for the tests: an HTTP server that speaks the
//! device's protocol (see mama's `device` module) the way the device does.
//!
//! - `POST /login.cgi` with `username=U&password=P` (form encoded) logs in
//!   the session its `AIROS_SESSIONID` cookie names, answering a redirect
//!   to `/`; wrong ones are answered with the login page again.
//! - `GET /sensors` answers every outlet as JSON; `PUT /sensors/N` with
//!   `output=1` or `0` switches outlet N.
//! - A session not logged in is answered as the device answers it: a
//!   redirect to its login page, or (as older firmware does) an empty body;
//!   see [`Unknown`].
//!
//! An outlet that is on draws power (watts, volts and amps above 0), one
//! that is off none. Every request is kept, in order, for a test to look
//! at. An HTTP/1.1 request is answered in chunks, as the device's
//! lighttpd does; HTTP/1.0 without (the body ends where the connection
//! does).
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::netns::Host;

/// How a request of a session that is not logged in is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// `302 Found` to `/login.html`, with an empty body.
    Redirect,
    /// `200 OK` with an empty body.
    Empty,
}

/// One request the device got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: String,
    /// The `AIROS_SESSIONID` cookie's value.
    pub session: Option<String>,
    /// The body, as text.
    pub body: String,
}

impl Request {
    /// `METHOD PATH`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

struct State {
    outputs: Vec<bool>,
    user: String,
    password: String,
    sessions: HashSet<String>,
    unknown: Unknown,
    /// Accept connections, never answer.
    hang: bool,
    requests: Vec<Request>,
    /// The connections held unanswered.
    held: Vec<TcpStream>,
}

/// The device (its server runs until it is dropped).
pub struct Mpower {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Mpower {
    /// A device with `outlets` outlets, all off, on port 80 of `host`,
    /// logging in `ubnt` with password `ubnt`.
    pub fn on_host(host: &Host, outlets: u32) -> Mpower {
        let listener = host
            .enter(|| TcpListener::bind((host.addr(), 80)))
            .expect("listen on port 80 of the host");
        Mpower::serve(listener, outlets)
    }

    /// A device on a free port of 127.0.0.1 (no namespace needed).
    pub fn local(outlets: u32) -> Mpower {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("listen on 127.0.0.1");
        Mpower::serve(listener, outlets)
    }

    /// A device answering on `listener`.
    pub fn serve(listener: TcpListener, outlets: u32) -> Mpower {
        let addr = listener.local_addr().expect("the listener's address");
        let state = Arc::new(Mutex::new(State {
            outputs: vec![false; outlets as usize],
            user: "ubnt".into(),
            password: "ubnt".into(),
            sessions: HashSet::new(),
            unknown: Unknown::Redirect,
            hang: false,
            requests: Vec::new(),
            held: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || accept(listener, state, stop))
        };
        Mpower {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Its address as a device's `address` option: `IP` on port 80,
    /// `IP:PORT` on another.
    pub fn address(&self) -> String {
        if self.addr.port() == 80 {
            self.addr.ip().to_string()
        } else {
            self.addr.to_string()
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs in `user` with `password` from now on.
    pub fn set_login(&self, user: &str, password: &str) {
        let mut state = self.state();
        state.user = user.into();
        state.password = password.into();
    }

    /// Whether outlet `n` (from 1) is on.
    pub fn output(&self, n: u32) -> bool {
        self.state().outputs[n as usize - 1]
    }

    pub fn outputs(&self) -> Vec<bool> {
        self.state().outputs.clone()
    }

    /// Switches outlet `n` by hand (its own button).
    pub fn set_output(&self, n: u32, on: bool) {
        self.state().outputs[n as usize - 1] = on;
    }

    /// The requests so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }

    /// Drops every session, as the device does with idle ones.
    pub fn forget_sessions(&self) {
        self.state().sessions.clear();
    }

    /// How sessions not logged in are answered from now on.
    pub fn answer_unknown(&self, how: Unknown) {
        self.state().unknown = how;
    }

    /// From now on accepts connections and never answers them.
    pub fn hang(&self) {
        self.state().hang = true;
    }
}

impl Drop for Mpower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until `stop`, each answered on a thread of its own.
fn accept(listener: TcpListener, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut pollfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own; 50 ms, so that `stop` is seen.
        if unsafe { libc::poll(&mut pollfd, 1, 50) } <= 0 {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let state = state.clone();
        std::thread::spawn(move || serve(stream, &state));
    }
}

/// Reads one request and answers it.
fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    if lock().hang {
        lock().held.push(stream);
        return;
    }
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    let answer = {
        let mut state = lock();
        state.requests.push(request.clone());
        answer(&mut state, &request)
    };
    let _ = stream.write_all(&answer.encode(&request.version));
}

/// An answer: status, headers, body.
struct Answer {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Answer {
    fn json(value: serde_json::Value) -> Answer {
        Answer {
            status: "200 OK",
            headers: vec![("Content-Type", "application/json".into())],
            body: value.to_string(),
        }
    }

    fn redirect(to: &str) -> Answer {
        Answer {
            status: "302 Found",
            headers: vec![
                ("Location", to.into()),
                ("Content-Type", "text/html".into()),
            ],
            body: String::new(),
        }
    }

    fn encode(&self, version: &str) -> Vec<u8> {
        let chunked = version == "HTTP/1.1";
        let mut out = format!("{version} {}\r\nServer: lighttpd/1.4.31\r\n", self.status);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if chunked {
            out.push_str("Transfer-Encoding: chunked\r\n\r\n");
            if !self.body.is_empty() {
                out.push_str(&format!("{:x}\r\n{}\r\n", self.body.len(), self.body));
            }
            out.push_str("0\r\n\r\n");
        } else {
            // HTTP/1.0: the body ends with the connection.
            out.push_str("\r\n");
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

fn answer(state: &mut State, request: &Request) -> Answer {
    let logged_in = request
        .session
        .as_ref()
        .is_some_and(|s| state.sessions.contains(s));
    let not_logged_in = |state: &State| match state.unknown {
        Unknown::Redirect => Answer::redirect(&format!("/login.html?uri={}", request.path)),
        Unknown::Empty => Answer {
            status: "200 OK",
            headers: vec![("Content-Type", "text/html".into())],
            body: String::new(),
        },
    };
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/login.cgi") => {
            let form = parse_form(&request.body);
            let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            match &request.session {
                Some(session)
                    if field("username") == Some(&state.user)
                        && field("password") == Some(&state.password) =>
                {
                    state.sessions.insert(session.clone());
                    Answer::redirect("/")
                }
                _ => Answer {
                    status: "200 OK",
                    headers: vec![("Content-Type", "text/html".into())],
                    body: "<html><body><form action=\"/login.cgi\" method=\"post\">\
                           Invalid credentials.</form></body></html>"
                        .into(),
                },
            }
        }
        ("GET" | "POST", "/logout.cgi") => {
            if let Some(session) = &request.session {
                state.sessions.remove(session);
            }
            Answer::redirect("/login.html")
        }
        (_, "/sensors" | "/sensors/" | "/mfi/sensors.cgi") if !logged_in => not_logged_in(state),
        ("GET", "/sensors" | "/sensors/" | "/mfi/sensors.cgi") => {
            let sensors: Vec<serde_json::Value> = state
                .outputs
                .iter()
                .enumerate()
                .map(|(i, &on)| sensor(i as u32 + 1, on))
                .collect();
            Answer::json(serde_json::json!({"sensors": sensors, "status": "success"}))
        }
        (_, path) if path.starts_with("/sensors/") && !logged_in => not_logged_in(state),
        ("PUT", path) if path.starts_with("/sensors/") => {
            let port = path["/sensors/".len()..]
                .trim_end_matches('/')
                .parse::<usize>();
            let form = parse_form(&request.body);
            let output = form.iter().find(|(k, _)| k == "output").map(|(_, v)| v);
            match (port, output.map(String::as_str)) {
                (Ok(n), Some(value @ ("0" | "1"))) if (1..=state.outputs.len()).contains(&n) => {
                    state.outputs[n - 1] = value == "1";
                    Answer::json(serde_json::json!({"status": "success"}))
                }
                _ => Answer::json(serde_json::json!({"status": "not a valid resource"})),
            }
        }
        _ => Answer {
            status: "404 Not Found",
            headers: vec![("Content-Type", "text/html".into())],
            body: "<html><body>404 - Not Found</body></html>".into(),
        },
    }
}

/// Outlet `port` as `/sensors` tells of it.
fn sensor(port: u32, on: bool) -> serde_json::Value {
    let (watts, volts) = if on {
        (10.0 + f64::from(port), 230.5)
    } else {
        (0.0, 0.0)
    };
    serde_json::json!({
        "port": port,
        "output": u8::from(on),
        "power": watts,
        "enabled": 1,
        "current": if on { watts / volts } else { 0.0 },
        "voltage": volts,
        "powerfactor": if on { 0.9 } else { 0.0 },
        "relay": u8::from(on),
        "lock": 0,
        "label": format!("Port {port}"),
    })
}

/// Reads a request: its head, then as much body as Content-Length says.
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    let end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut buffer).ok().filter(|&n| n > 0)?;
        got.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path, version) = (first.next()?, first.next()?, first.next()?);
    let mut length = 0;
    let mut session = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "cookie" => {
                session = value
                    .split(';')
                    .filter_map(|c| c.trim().strip_prefix("AIROS_SESSIONID="))
                    .map(str::to_string)
                    .next()
            }
            _ => {}
        }
    }
    let mut body = got[end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buffer).ok().filter(|&n| n > 0)?;
        body.extend_from_slice(&buffer[..n]);
    }
    Some(Request {
        method: method.into(),
        path: path.into(),
        version: version.into(),
        session,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The fields of a form, decoded.
fn parse_form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
