//! The network layer (`mama::net`) against real boards: network namespaces
//! whose link comes up and whose port 22 opens as their start command
//! says (tests/common/board.rs).
//!
//! The tests run as root, so ICMP goes through a raw socket; the
//! unprivileged ICMP socket and TCP alone are looked at from a thread
//! that acts as the user `nobody` (a raw `setresuid` changes only the
//! calling thread), in a namespace whose `ping_group_range` allows its
//! group, or does not.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use mama::net::{Reach, Target, neighbour_ip, probe_all, wait_ready};

use crate::common::board::{Board, PORT};
use crate::common::netns::Host;
use crate::common::*;

fn target(ip: impl Into<IpAddr>, port: u16) -> Target {
    Target {
        ip: ip.into(),
        port,
    }
}

/// A delay no test waits out: a board whose link is up but whose port
/// stays closed (resets connections) for the test's life.
const NEVER: Duration = Duration::from_secs(3600);

/// A board started at once, its port open.
fn online(name: &str) -> Board {
    let board = Board::new(name);
    board.start(Duration::ZERO);
    wait_until("the board's listener", LIMIT, || board.listening());
    board
}

/// Runs `f` on a thread of its own acting as the user `nobody` (its user
/// ids only: the group stays root's), without the capabilities that open
/// a raw socket.
fn as_nobody<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                drop_to_nobody();
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Makes the calling thread (only) the user `nobody`.
fn drop_to_nobody() {
    // SAFETY: the raw system call, which changes the calling thread's
    // credentials alone (glibc's setresuid would change every thread's).
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
    assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
}

/// Whether this thread may open a socket of this kind.
fn can_open(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> bool {
    // SAFETY: plain system calls; the descriptor is closed at once.
    unsafe {
        let fd = libc::socket(domain, kind, protocol);
        if fd >= 0 {
            libc::close(fd);
        }
        fd >= 0
    }
}

fn can_ping_raw() -> bool {
    can_open(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
}

fn can_ping_unprivileged() -> bool {
    can_open(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)
        && can_open(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6)
}

/// Lets the group root (only) open unprivileged ICMP sockets in `host`.
fn allow_unprivileged_ping(host: &Host) {
    host.enter(|| {
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0").expect("ping_group_range")
    });
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip, mama_python3)),
    ignore = "needs network namespaces and python3: run as root after tests/install-tools"
)]
fn a_board_is_off_until_started_and_off_again_when_stopped() {
    let board = Board::new("b1");
    assert!(!board.is_up() && !board.listening());
    assert_eq!(board.name(), "b1");
    board.start(Duration::ZERO);
    assert!(board.is_up());
    wait_until("the listener", LIMIT, || board.listening());
    wait_until("the listener's stamp", LIMIT, || {
        board.opened_at().is_some()
    });
    let opened = board.opened_at().expect("the listener's stamp");
    assert!(opened <= Instant::now());
    board.stop();
    assert!(!board.is_up());
    wait_until("the listener's end", LIMIT, || !board.listening());
    assert_eq!(board.opened_at(), None);
    // Started again: a new listener takes the port.
    board.start(Duration::ZERO);
    wait_until("the second listener", LIMIT, || board.listening());

    let pids = std::fs::read_to_string(board.dir().join("listener.pids")).expect("the PIDs");
    let pid: u32 = pids.trim().parse().expect("one PID");
    assert!(alive(pid));
    let ns = format!("/run/netns/{}", board.host().name());
    drop(board);
    wait_until("the listener killed", LIMIT, || !alive(pid));
    assert!(!std::path::Path::new(&ns).exists(), "{ns} left behind");
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip, mama_python3)),
    ignore = "needs network namespaces and python3: run as root after tests/install-tools"
)]
fn online_unreachable_and_offline_over_ipv4_and_ipv6() {
    let up = online("up");
    let booting = Board::new("booting");
    booting.start(NEVER);
    let firewalled = Board::new("firewalled");
    firewalled.silence_port(PORT);
    firewalled.start(Duration::ZERO);
    wait_until("the firewalled listener", LIMIT, || firewalled.listening());
    let off = Board::new("off");
    let mut targets = Vec::new();
    for board in [&up, &booting, &firewalled, &off] {
        targets.extend(board.ips().map(|ip| target(ip, PORT)));
    }
    assert!(can_ping_raw(), "root opens a raw socket");
    let start = Instant::now();
    let reach = probe_all(&targets, start + Duration::from_secs(2));
    use Reach::*;
    assert_eq!(
        reach,
        [
            Online,
            Online,
            // The port resets: the host is up.
            Unreachable,
            Unreachable,
            // Only the echo reply says the host is up.
            Unreachable,
            Unreachable,
            Offline,
            Offline
        ]
    );
    assert!(start.elapsed() < Duration::from_secs(2) + Duration::from_millis(500));

    // Stopped, the board that was up is off.
    up.stop();
    let reach = probe_all(&targets[..2], Instant::now() + Duration::from_secs(1));
    assert_eq!(reach, [Offline, Offline]);
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip, mama_python3)),
    ignore = "needs network namespaces and python3: run as root after tests/install-tools"
)]
fn without_icmp_reach_goes_by_tcp_alone() {
    let up = online("up");
    let booting = Board::new("booting");
    booting.start(NEVER);
    let firewalled = Board::new("firewalled");
    firewalled.silence_port(PORT);
    firewalled.start(Duration::ZERO);
    wait_until("the firewalled listener", LIMIT, || firewalled.listening());
    let off = Board::new("off");
    let targets: Vec<Target> = [&up, &booting, &firewalled, &off]
        .iter()
        .map(|board| target(board.ip(), PORT))
        .collect();
    let reach = as_nobody(|| {
        // The test's namespace lets no group ping: no ICMP at all.
        assert!(!can_ping_raw() && !can_ping_unprivileged());
        probe_all(&targets, Instant::now() + Duration::from_secs(1))
    });
    use Reach::*;
    // The firewalled board, which only ping shows up, is Offline.
    assert_eq!(reach, [Online, Unreachable, Offline, Offline]);
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip, mama_python3)),
    ignore = "needs network namespaces and python3: run as root after tests/install-tools"
)]
fn an_unprivileged_icmp_socket_sees_echo_replies() {
    let prober = Host::new();
    allow_unprivileged_ping(&prober);
    let firewalled = Board::behind("firewalled", &prober);
    firewalled.silence_port(PORT);
    firewalled.start(Duration::ZERO);
    wait_until("the firewalled listener", LIMIT, || firewalled.listening());
    let off = Board::behind("off", &prober);
    let mut targets: Vec<Target> = firewalled.ips().map(|ip| target(ip, PORT)).to_vec();
    targets.extend(off.ips().map(|ip| target(ip, PORT)));
    let reach = prober.enter(|| {
        as_nobody(|| {
            assert!(!can_ping_raw() && can_ping_unprivileged());
            probe_all(&targets, Instant::now() + Duration::from_secs(1))
        })
    });
    use Reach::*;
    assert_eq!(reach, [Unreachable, Unreachable, Offline, Offline]);
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip, mama_python3)),
    ignore = "needs network namespaces and python3: run as root after tests/install-tools"
)]
fn a_hundred_targets_half_silent_are_probed_by_the_deadline() {
    let board = online("b");
    let silent = board.silent_ips();
    let mut targets = Vec::new();
    for i in 0..25 {
        targets.push(target(board.ip(), PORT));
        // Closed ports: reset.
        targets.push(target(board.ip(), 1000 + i));
    }
    targets.extend(silent[..50].iter().map(|ip| target(*ip, PORT)));
    assert_eq!(targets.len(), 100);
    let budget = Duration::from_secs(1);
    let start = Instant::now();
    let reach = probe_all(&targets, start + budget);
    let took = start.elapsed();
    eprintln!("probe_all, 100 targets, 50 silent, deadline {budget:?}: {took:?}");
    assert!(took < budget + Duration::from_millis(500), "{took:?}");
    for (i, reach) in reach.iter().enumerate() {
        let want = match i {
            _ if i >= 50 => Reach::Offline,
            _ if i % 2 == 0 => Reach::Online,
            _ => Reach::Unreachable,
        };
        assert_eq!(*reach, want, "target {i}: {:?}", targets[i]);
    }

    // All answering: done long before the deadline.
    let start = Instant::now();
    let reach = probe_all(&targets[..50], start + Duration::from_secs(10));
    let took = start.elapsed();
    eprintln!("probe_all, 50 targets answering: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(reach.iter().filter(|r| **r == Reach::Online).count(), 25);
}

/// Starts `board` with a delay, waits until `target` is ready; returns
/// how long after the board's listener opened the wait ended.
fn ready_latency(board: &Board, target: Target) -> Duration {
    board.start(Duration::from_millis(500));
    let ready = wait_ready(target, Instant::now() + LIMIT, &|| false).expect("a wait");
    let end = Instant::now();
    assert!(ready, "{target:?}");
    // The listener writes when it opened just after it did: a quick
    // prober may be done first.
    wait_until("the listener's stamp", LIMIT, || {
        board.opened_at().is_some()
    });
    let opened = board.opened_at().expect("the listener listens");
    assert!(opened <= end, "ready before the port opened");
    end - opened
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip, mama_python3)),
    ignore = "needs network namespaces and python3: run as root after tests/install-tools"
)]
fn wait_ready_notices_the_port_opening_within_a_try() {
    let board = Board::new("b");
    for ip in board.ips() {
        let latency = ready_latency(&board, target(ip, PORT));
        eprintln!("wait_ready, {ip}: ready {latency:?} after the port opened");
        // A try every 50 ms; the margin is for a loaded machine.
        assert!(latency < Duration::from_millis(400), "{ip}: {latency:?}");
        board.stop();
        wait_until("the listener's end", LIMIT, || !board.listening());
    }
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip, mama_python3)),
    ignore = "needs network namespaces and python3: run as root after tests/install-tools"
)]
fn wait_ready_needs_the_port_and_an_echo_reply() {
    let booting = Board::new("booting");
    booting.start(NEVER);
    let firewalled = Board::new("firewalled");
    firewalled.silence_port(PORT);
    firewalled.start(Duration::ZERO);
    let deaf = online("deaf");
    deaf.host().enter(|| {
        std::fs::write("/proc/sys/net/ipv4/icmp_echo_ignore_all", "1").expect("ignore echo")
    });
    wait_until("the firewalled listener", LIMIT, || firewalled.listening());
    for board in [&booting, &firewalled, &deaf] {
        let until = Instant::now() + Duration::from_millis(500);
        let ready = wait_ready(target(board.ip(), PORT), until, &|| false).expect("a wait");
        let late = Instant::now().saturating_duration_since(until);
        assert!(!ready, "{} ready", board.name());
        assert!(
            late < Duration::from_millis(400),
            "{}: {late:?} late",
            board.name()
        );
    }
    // By TCP alone the board that ignores ping is ready; the others not.
    as_nobody(|| {
        let until = Instant::now() + Duration::from_millis(500);
        assert!(wait_ready(target(deaf.ip(), PORT), until, &|| false).expect("a wait"));
        assert!(!wait_ready(target(booting.ip(), PORT), until, &|| false).expect("a wait"));
    });
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip, mama_python3)),
    ignore = "needs network namespaces and python3: run as root after tests/install-tools"
)]
fn wait_ready_stops_when_told() {
    let off = Board::new("off");
    let tries = std::cell::Cell::new(0);
    let stop = || {
        tries.set(tries.get() + 1);
        tries.get() == 3
    };
    let start = Instant::now();
    let ready = wait_ready(target(off.ip(), PORT), start + LIMIT, &stop).expect("a wait");
    assert!(!ready);
    assert_eq!(tries.get(), 3);
    // Two tries 50 ms apart, then the third.
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip, mama_python3)),
    ignore = "needs network namespaces and python3: run as root after tests/install-tools"
)]
fn the_neighbour_table_gives_a_started_boards_address() {
    let board = Board::new("b");
    assert_eq!(neighbour_ip(board.mac()), None);
    board.start(NEVER);
    assert_eq!(neighbour_ip(board.mac()), Some(board.ip()));
    assert_eq!(neighbour_ip(&board.mac().to_uppercase()), Some(board.ip()));
    assert_eq!(neighbour_ip("not a mac"), None);
    // The link down, the host forgets it.
    board.stop();
    wait_until("the entry flushed", LIMIT, || {
        neighbour_ip(board.mac()).is_none()
    });
    let other = Board::new("other");
    other.start(NEVER);
    assert_eq!(neighbour_ip(other.mac()), Some(other.ip()));
    assert_ne!(other.ip(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(neighbour_ip(board.mac()), None);
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip, mama_python3)),
    ignore = "needs network namespaces and python3: run as root after tests/install-tools"
)]
fn wait_ready_keeps_earlier_attempts_open_on_a_slow_link() {
    // Every answer takes longer than a try: an attempt given up at the
    // next try would never be accepted.
    let board = online("slow");
    board.slow_down();
    let start = Instant::now();
    let ready = wait_ready(target(board.ip(), PORT), start + LIMIT, &|| false).expect("a wait");
    let took = start.elapsed();
    eprintln!("wait_ready over a slow link: {took:?}");
    assert!(ready);
    assert!(
        took > Duration::from_millis(100),
        "the link is not slow: {took:?}"
    );
}
