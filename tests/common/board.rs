//! Test boards: machines mama can start, stop and probe, made of a network
//! namespace ([`Host`]) on a veth pair.
//!
//! A [`Board`] is "powered off" when its end of the link is down: nothing
//! answers at its address. Its start command ([`Board::startcmd`]) brings
//! the link up, sends the host side a packet until the host's neighbour
//! table has the board's address with its MAC (as a machine that boots
//! talks to its network), and starts in the background, inside the board,
//! a listener that after a delay accepts connections on port 22 (as ssh
//! does once the machine has booted; or listeners on other ports,
//! [`Board::startcmd_listening`]). Its stop command
//! ([`Board::stopcmd`]) kills the listeners and takes the link down. Both
//! are shell commands run as root outside the namespace, as mama runs a
//! machine's `startcmd` and `stopcmd`.
//!
//! The listener is tests/common/board.py run by python3 (tests/install-tools
//! installs it): it records its start in the board's folder (the PIDs of
//! every listener started, one a line, in `listener.pids`; `listening`
//! (`listening.PORT` for a port other than 22), once it listens, with the
//! time it began to, in seconds of CLOCK_MONOTONIC). Everything goes when the board drops; a board left
//! by a killed test process goes with its namespace (see netns.rs's
//! sweep, which kills the processes left in it).
//!
//! A board can also play a machine whose firewall drops its port
//! ([`Board::silence_port`]), one on a slow link ([`Board::slow_down`],
//! with tc(8), of iproute2 as ip(8) is), and hosts that never answer
//! ([`Board::silent_ips`]).
//!
//! Each board's addresses and MAC follow from the /30 its [`Host`]
//! claimed, so boards of tests running at the same time never share one.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::netns::Host;

/// The listener a board's start command runs.
const LISTENER: &str = include_str!("board.py");

/// The port the listener accepts on: ssh's, which mama probes.
pub const PORT: u16 = 22;

/// A machine to start and stop: a namespace whose link is down until its
/// start command runs.
pub struct Board {
    name: String,
    host: Host,
    dir: tempfile::TempDir,
    mac: String,
    silent_route: std::sync::atomic::AtomicBool,
}

/// The low 16 bits of a board's IPv4 address: what its MAC and IPv6
/// addresses are made from (unique among the tests' boards, as the /30s
/// of 10.203.0.0/16 are).
fn low16(ip: Ipv4Addr) -> u16 {
    let [_, _, a, b] = ip.octets();
    u16::from_be_bytes([a, b])
}

/// Single quotes for the shell (a temporary folder's path has none, but
/// TMPDIR is the user's).
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

impl Board {
    /// A board linked to the test's own namespace, powered off.
    pub fn new(name: &str) -> Board {
        Board::create(name, Host::new())
    }

    /// A board linked to `host` (its host side is in `host`'s namespace;
    /// the test's namespace cannot reach it), powered off.
    pub fn behind(name: &str, host: &Host) -> Board {
        Board::create(name, Host::linked_to(host))
    }

    fn create(name: &str, host: Host) -> Board {
        let dir = tempfile::tempdir().expect("a board's folder");
        std::fs::write(dir.path().join("board.py"), LISTENER).expect("write the listener");
        let n = low16(host.addr());
        let board = Board {
            name: name.to_string(),
            mac: format!("02:6d:61:00:{:02x}:{:02x}", n >> 8, n & 0xff),
            host,
            dir,
            silent_route: std::sync::atomic::AtomicBool::new(false),
        };
        let (dev, peer_dev) = (board.host.dev(), board.host.peer_dev());
        board.host.cut();
        board.host.ip(["link", "set", dev, "address", &board.mac]);
        // Static IPv6 addresses are removed when their link goes down,
        // unless told to stay; `nodad`: usable at once.
        board.host.enter(|| {
            let knob = format!("/proc/sys/net/ipv6/conf/{dev}/keep_addr_on_down");
            std::fs::write(&knob, "1").expect("keep the IPv6 address");
        });
        let ip6 = format!("{}/64", board.ip6());
        board.host.ip(["addr", "add", &ip6, "dev", dev, "nodad"]);
        let host_ip6 = format!("{}/64", board.host_ip6());
        board
            .host
            .peer_ip(["addr", "add", &host_ip6, "dev", peer_dev, "nodad"]);
        board
    }

    /// The name it was made with (a machine's name, say).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Its folder (the listener's files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The board's IPv4 address.
    pub fn ip(&self) -> Ipv4Addr {
        self.host.addr()
    }

    /// The host side's IPv4 address (the other end of the link).
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host.peer_addr()
    }

    /// The board's IPv6 address (fd6d:6d61:0:N::2, N from its IPv4
    /// address).
    pub fn ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd6d, 0x6d61, 0, low16(self.ip()), 0, 0, 0, 2)
    }

    /// The host side's IPv6 address.
    pub fn host_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd6d, 0x6d61, 0, low16(self.ip()), 0, 0, 0, 1)
    }

    /// The board's MAC (lower case, ':'-separated).
    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// The shell command that powers the board on: its link comes up, the
    /// host side learns its address and MAC (the command returns once the
    /// host's neighbour table has them, or after some 2 s of trying), and
    /// a listener starts that accepts connections on port 22 after
    /// `delay` (a little later in fact: the interpreter's own start; see
    /// [`Board::opened_at`]).
    pub fn startcmd(&self, delay: Duration) -> String {
        self.startcmd_listening(&[(PORT, delay)])
    }

    /// [`Board::startcmd`] with a listener on each port of `listeners`,
    /// each after its delay (a machine whose ssh, or whatever says it is
    /// ready, is on another port; see [`Board::opened_at_on`]).
    pub fn startcmd_listening(&self, listeners: &[(u16, Duration)]) -> String {
        let ns = quote(self.host.name());
        let dev = quote(self.host.dev());
        let dir = quote(&self.dir().display().to_string());
        let peer = match self.host.peer_ns() {
            Some(peer_ns) => format!("ip -n {}", quote(peer_ns)),
            None => "ip".to_string(),
        };
        let peer_dev = quote(self.host.peer_dev());
        let (ip, host_ip) = (self.ip(), self.host_ip());
        let listen: Vec<String> = listeners
            .iter()
            .map(|(port, delay)| {
                format!(
                    "ip netns exec {ns} python3 {dir}/board.py {delay} {dir} {port} \
                       </dev/null >>{dir}/listener.log 2>&1 & \
                     echo $! >>{dir}/listener.pids",
                    delay = delay.as_secs_f64(),
                )
            })
            .collect();
        format!(
            "ip -n {ns} link set {dev} up && \
             for i in $(seq 100); do \
               ip netns exec {ns} bash -c 'echo > /dev/udp/{host_ip}/9' 2>/dev/null; \
               {peer} neigh show {ip} dev {peer_dev} | grep -q lladdr && break; \
               sleep 0.02; \
             done; \
             {}",
            listen.join("; ")
        )
    }

    /// The shell command that powers the board off: every listener it
    /// started is killed (SIGKILL; it is gone a moment later: await
    /// `!listening()`), its link goes down.
    pub fn stopcmd(&self) -> String {
        let ns = quote(self.host.name());
        let dev = quote(self.host.dev());
        format!(
            "{kill}; ip -n {ns} link set {dev} down",
            kill = self.kill_listeners_cmd()
        )
    }

    /// Kills the listeners named in `listener.pids` that still run the
    /// board's script (a PID reused by another process is left alone).
    fn kill_listeners_cmd(&self) -> String {
        let dir = quote(&self.dir().display().to_string());
        let script = quote(&self.dir().join("board.py").display().to_string());
        format!(
            "for pid in $(cat {dir}/listener.pids 2>/dev/null); do \
               grep -qaF {script} /proc/$pid/cmdline 2>/dev/null && kill -KILL $pid; \
             done; \
             rm -f {dir}/listener.pids {dir}/listening*"
        )
    }

    /// Runs `command` as mama would run a machine's command.
    pub fn run(&self, command: &str) {
        let status = Command::new("sh")
            .args(["-c", command])
            .status()
            .expect("sh runs");
        assert!(status.success(), "{command}: {status}");
    }

    /// Runs the start command.
    pub fn start(&self, delay: Duration) {
        self.run(&self.startcmd(delay));
    }

    /// Runs the stop command.
    pub fn stop(&self) {
        self.run(&self.stopcmd());
    }

    /// Whether the board's end of the link is up (powered on).
    pub fn is_up(&self) -> bool {
        let out = self.host.ip(["-o", "link", "show", "dev", self.host.dev()]);
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let flags = line
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(flags, _)| flags.to_string())
            .unwrap_or_default();
        flags.split(',').any(|flag| flag == "UP")
    }

    /// Whether something in the board accepts connections on port 22 (a
    /// connection made from inside it, whatever its link's state).
    pub fn listening(&self) -> bool {
        self.listening_on(PORT)
    }

    /// Whether something in the board accepts connections on `port`.
    pub fn listening_on(&self, port: u16) -> bool {
        self.host.enter(|| {
            let local = (Ipv4Addr::LOCALHOST, port).into();
            std::net::TcpStream::connect_timeout(&local, Duration::from_secs(2)).is_ok()
        })
    }

    /// When the listener on port 22 began to listen, if it does.
    pub fn opened_at(&self) -> Option<Instant> {
        self.opened_at_on(PORT)
    }

    /// When the listener on `port` began to listen, if it does.
    pub fn opened_at_on(&self, port: u16) -> Option<Instant> {
        let stamp = match port {
            PORT => "listening".to_string(),
            _ => format!("listening.{port}"),
        };
        let text = std::fs::read_to_string(self.dir().join(stamp)).ok()?;
        let opened: f64 = text.trim().parse().ok()?;
        let (now, now_mono) = (Instant::now(), monotonic());
        now.checked_sub(Duration::try_from_secs_f64(now_mono - opened).ok()?)
    }

    /// Makes the board drop, without a word, the TCP segments it sends
    /// from `port` (over IPv4 and IPv6): a connection there is neither
    /// accepted nor reset, while the board still answers ping — a machine
    /// whose firewall drops the port.
    pub fn silence_port(&self, port: u16) {
        for family in ["-4", "-6"] {
            self.host.ip([
                family,
                "rule",
                "add",
                "ipproto",
                "tcp",
                "sport",
                &port.to_string(),
                "blackhole",
            ]);
        }
    }

    /// Makes what the board sends leave at 500 bytes a second, one packet
    /// after the other (a token bucket of 100 bytes: larger packets are
    /// lost; the board sends none but data, which its listener never
    /// does), behind a backlog of some 0.8 s (five datagrams it sends the
    /// host side): each SYN-ACK (74 bytes) waits longer than that, and the
    /// next ones more — a link whose round trip is longer than a try of
    /// `wait_ready` (50 ms). The backlog drains in 0.8 s unless it is fed.
    pub fn slow_down(&self) {
        let status = self
            .host
            .command("tc")
            .args(["qdisc", "add", "dev", self.host.dev(), "root", "tbf"])
            .args(["rate", "4kbit", "burst", "100", "latency", "10s"])
            .status()
            .expect("tc runs");
        assert!(status.success(), "tc qdisc add: {status}");
        let backlog = format!(
            "for i in 1 2 3 4 5; do printf %040d 0 >/dev/udp/{}/9; done",
            self.host_ip()
        );
        let status = self
            .host
            .command("bash")
            .args(["-c", &backlog])
            .status()
            .expect("bash runs");
        assert!(status.success(), "the backlog: {status}");
    }

    /// 64 IPv4 addresses routed (from the host side) to the board, which
    /// drops them without a word (it forwards nothing): hosts that never
    /// answer, ping or TCP, while its link is up. A /26 of 10.208.0.0/12
    /// picked by its /30; the route goes with its link.
    pub fn silent_ips(&self) -> Vec<Ipv4Addr> {
        let n = u32::from(low16(self.ip())) / 4;
        let base = u32::from(Ipv4Addr::new(10, 208, 0, 0)) + n * 64;
        if !self
            .silent_route
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let net = format!("{}/26", Ipv4Addr::from(base));
            let via = self.ip().to_string();
            let dev = self.host.peer_dev();
            self.host
                .peer_ip(["route", "add", &net, "via", &via, "dev", dev, "onlink"]);
        }
        (0..64).map(|i| Ipv4Addr::from(base + i)).collect()
    }

    /// The board's addresses, as the library's probes take them.
    pub fn ips(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.ip()), IpAddr::V6(self.ip6())]
    }

    /// The file the listener's output goes to.
    pub fn log(&self) -> PathBuf {
        self.dir().join("listener.log")
    }
}

/// CLOCK_MONOTONIC in seconds: the clock of [`Instant`] and of python's
/// `time.monotonic()`.
pub fn monotonic() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "clock_gettime");
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

impl Drop for Board {
    fn drop(&mut self) {
        // The listeners first: the namespace goes with the Host, and a
        // process left in it would keep it (and port 22 in it) alive.
        let _ = Command::new("sh")
            .args(["-c", &self.kill_listeners_cmd()])
            .status();
    }
}
