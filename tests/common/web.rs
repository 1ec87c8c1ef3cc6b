//! A tiny HTTP/1.1 client (one request a connection) for `mama serve`,
//! Prometheus and chromedriver, and a WebDriver session on a headless
//! Chromium through it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Bg, LIMIT, wait_until};

/// A `mama serve` running (killed when dropped) and where it listens.
pub struct Serving {
    pub bg: Bg,
    pub addr: SocketAddr,
}

/// Starts `cmd`, a `mama serve` on a free loopback port
/// (`--listen 127.0.0.1:0`), and reads where it listens from what it says.
pub fn serving(cmd: Command) -> Serving {
    let mut bg = Bg::start(cmd);
    let line = bg.expect_stderr("serving", LIMIT);
    let addr = line
        .rsplit_once("http://")
        .and_then(|(_, rest)| rest.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    Serving { bg, addr }
}

/// The server-sent events of an open `/events` stream at `addr`: each
/// event's data, with the time it arrived.
pub fn event_stream(addr: SocketAddr) -> mpsc::Receiver<(Instant, String)> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .expect("ask");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut data = String::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
                data.push('\n');
            } else if line.is_empty()
                && !data.is_empty()
                && tx
                    .send((Instant::now(), std::mem::take(&mut data)))
                    .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// An answer: its status code, headers (names lower-case) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `method target` with `body` (JSON where given) to `addr` and
/// reads the whole answer (the connection is closed after it).
pub fn request(addr: SocketAddr, method: &str, target: &str, body: Option<&str>) -> Answer {
    try_request(addr, method, target, body)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{target}: {e}"))
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: Option<&str>,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(LIMIT))?;
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = body {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(body.unwrap_or(""));
    stream.write_all(text.as_bytes())?;
    // Read to the end of the body its length gives (a server may keep the
    // connection open), else to the end of the connection.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let length = if method == "HEAD" { Some(0) } else { length };
            if length.is_some_and(|length| raw.len() >= end + 4 + length) {
                break;
            }
        }
    }
    parse(&raw, method == "HEAD")
}

fn parse(raw: &[u8], head_only: bool) -> std::io::Result<Answer> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of head"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked && !head_only {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..line_end])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or_else(|| bad("short chunk"))?);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        body = out;
    }
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub fn get(addr: SocketAddr, target: &str) -> Answer {
    request(addr, "GET", target, None)
}

/// A free TCP port on the loopback address (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A process started in a process group of its own, the whole group
/// killed (a browser chromedriver started included) and the process
/// reaped when dropped.
pub struct Daemon(Child);

impl Daemon {
    pub fn start(mut cmd: Command) -> Daemon {
        use std::os::unix::process::CommandExt;
        Daemon(cmd.process_group(0).spawn().expect("the program starts"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: plain system call, to the group this process leads.
        unsafe {
            libc::kill(-(self.0.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on `addr`.
pub fn await_listening(addr: SocketAddr, what: &str) {
    wait_until(what, LIMIT, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
}

/// A headless Chromium driven through chromedriver's WebDriver API.
pub struct Browser {
    driver: SocketAddr,
    session: String,
    _daemon: Daemon,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start(log_dir: &Path) -> Browser {
        let port = free_port();
        let driver: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(log_dir.join("chromedriver.log")).expect("log file");
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let daemon = Daemon::start(cmd);
        await_listening(driver, "chromedriver to listen");
        let profile = tempfile::tempdir().expect("a profile folder");
        let capabilities = serde_json::json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage",
                             format!("--user-data-dir={}", profile.path().display())],
                },
            }}
        });
        let answer = request(driver, "POST", "/session", Some(&capabilities.to_string()));
        let session = answer.json()["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {}", answer.body))
            .to_string();
        Browser {
            driver,
            session,
            _daemon: daemon,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, what: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let target = format!("/session/{}{what}", self.session);
        let body = body.map(|b| b.to_string());
        request(self.driver, method, &target, body.as_deref()).json()
    }

    /// Loads `url` (returns once the page has loaded).
    pub fn open(&self, url: &str) {
        let answer = self.call("POST", "/url", Some(serde_json::json!({ "url": url })));
        assert!(answer["value"].is_null(), "cannot open {url}: {answer}");
    }

    /// Loads `url` in at most `limit`: whether it loaded.
    pub fn open_within(&self, url: &str, limit: Duration) -> bool {
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        self.call(
            "POST",
            "/timeouts",
            Some(serde_json::json!({ "pageLoad": limit })),
        );
        let answer = self.call("POST", "/url", Some(serde_json::json!({ "url": url })));
        answer["value"].is_null()
    }

    /// Opens a new tab and turns to it.
    pub fn new_tab(&self) {
        let answer = self.call(
            "POST",
            "/window/new",
            Some(serde_json::json!({ "type": "tab" })),
        );
        let handle = answer["value"]["handle"]
            .as_str()
            .unwrap_or_else(|| panic!("no new tab: {answer}"))
            .to_string();
        self.turn_to(&handle);
    }

    /// The handles of the open tabs.
    pub fn tabs(&self) -> Vec<String> {
        let answer = self.call("GET", "/window/handles", None);
        answer["value"]
            .as_array()
            .map(|tabs| {
                tabs.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Turns to the tab `handle`.
    pub fn turn_to(&self, handle: &str) {
        let answer = self.call(
            "POST",
            "/window",
            Some(serde_json::json!({ "handle": handle })),
        );
        assert!(
            answer["value"].is_null(),
            "cannot turn to {handle}: {answer}"
        );
    }

    /// Runs `script` (a function body) in the page; its return value, or
    /// the WebDriver error.
    pub fn run(&self, script: &str) -> serde_json::Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({ "script": script, "args": [] })),
        )["value"]
            .clone()
    }

    /// The text of an alert the page opened, where it opened one.
    pub fn alert(&self) -> Option<String> {
        let answer = self.call("GET", "/alert/text", None);
        answer["value"].as_str().map(str::to_string)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = try_request(
            self.driver,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}
