//! Is a machine there, and is it ready: the network as mama looks at its
//! machines. Ground floor: the standard library and libc only.
//!
//! A machine is judged as upstream mama judges it, without running
//! `ping`, `nc` or `ip`:
//!
//! - [`Reach::Online`]: a TCP connection to its port (ssh's, 22, for a
//!   machine) was accepted;
//! - [`Reach::Unreachable`]: the host answered — an ICMP echo reply, or a
//!   TCP reset (the host is up, the port closed) — but did not accept;
//! - [`Reach::Offline`]: no answer by the deadline, or the network said
//!   the host cannot be reached (no route; its neighbour entry failed,
//!   which on a LAN takes some 3 s).
//!
//! [`probe_all`] looks at any number of machines at once (`mama list`);
//! [`wait_ready`] waits for one to come up (`mama start`);
//! [`neighbour_ip`] finds the IPv4 address the neighbour table has for a
//! MAC.
//!
//! # One thread, no helper programs
//!
//! Every target's TCP connection is started on a non-blocking socket and
//! one `poll` loop waits for all of them and for the echo replies; no
//! thread is started. Sockets are close-on-exec, so a program mama runs
//! later never inherits one. A connection that is accepted is closed at
//! once (an orderly close: the server sees a client that left).
//!
//! # ICMP, where this host allows it
//!
//! Echo requests go out through an unprivileged ICMP socket where
//! `net.ipv4.ping_group_range` holds one of the user's groups (it governs
//! IPv4 and IPv6 alike), else through a raw socket (root, or a program
//! with `CAP_NET_RAW`). IPv6 targets are pinged with ICMPv6 the same way.
//! Where neither socket can be opened, reach and readiness go by TCP
//! alone: an accepted connection is still Online and ready, a reset still
//! proves the host up (Unreachable), but a host that answers ping while
//! dropping TCP to the port without a reset shows as Offline instead of
//! Unreachable, and [`wait_ready`] needs only the accepted connection.
//!
//! # Limits
//!
//! A target is one address: an IPv6 link-local address (which needs an
//! interface) cannot be probed and shows as Offline. An IPv4-mapped IPv6
//! address is probed as the IPv4 address it maps. [`probe_all`] opens one
//! socket per target at once: a target whose socket cannot be opened
//! (the process's file limit reached) is Offline.

mod icmp;
mod neigh;
mod sys;
mod tcp;

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use icmp::Pinger;
use tcp::{Answer, Start};

/// How a machine answers (see the [module](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Online,
    Unreachable,
    Offline,
}

/// A host and the TCP port whose accepting connections makes it Online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub ip: IpAddr,
    pub port: u16,
}

impl Target {
    /// The address connected to and pinged (an IPv4-mapped IPv6 address
    /// as IPv4).
    fn addr(self) -> SocketAddr {
        SocketAddr::new(self.ip.to_canonical(), self.port)
    }
}

/// How often [`probe_all`] sends a host that has not answered another
/// echo request (as ping(8) does).
const ECHO_AGAIN: Duration = Duration::from_secs(1);

/// How often [`wait_ready`] tries a new connection.
pub const TRY_EVERY: Duration = Duration::from_millis(50);

/// How often [`wait_ready`] sends an echo request until one is answered
/// (ping(8)'s shortest interval for users).
const PING_EVERY: Duration = Duration::from_millis(200);

/// How many connection attempts [`wait_ready`] keeps open: some 3 s of
/// them (a silent host's attempts would otherwise pile up, each waiting
/// out SYN retries for two minutes); the oldest is closed first.
const MAX_ATTEMPTS: usize = 64;

/// Where echo requests can be sent from: one pinger per address family,
/// opened when first needed.
struct Icmp {
    /// Whether to try ICMP at all (tests look at the TCP-alone path).
    enabled: bool,
    v4: Option<Option<Pinger>>,
    v6: Option<Option<Pinger>>,
}

impl Icmp {
    fn new(enabled: bool) -> Icmp {
        Icmp {
            enabled,
            v4: None,
            v6: None,
        }
    }

    /// The pinger for `ip`'s family, if one could be opened.
    fn pinger(&mut self, ip: IpAddr) -> Option<&mut Pinger> {
        if !self.enabled {
            return None;
        }
        let v6 = ip.is_ipv6();
        let slot = if v6 { &mut self.v6 } else { &mut self.v4 };
        slot.get_or_insert_with(|| Pinger::open(v6)).as_mut()
    }

    /// Whether `ip` can be pinged from here.
    fn can_ping(&mut self, ip: IpAddr) -> bool {
        self.pinger(ip).is_some()
    }

    /// Sends `ip` an echo request, if it can be pinged. A lost request
    /// (no route yet, a full buffer) is sent again by the caller's next
    /// round.
    fn send(&mut self, ip: IpAddr) {
        if let Some(pinger) = self.pinger(ip) {
            let _ = pinger.send(ip);
        }
    }

    /// The pingers opened, for `poll`.
    fn open(&mut self) -> impl Iterator<Item = &mut Pinger> {
        [self.v4.as_mut(), self.v6.as_mut()]
            .into_iter()
            .flatten()
            .flatten()
    }
}

/// A target's connection attempt in [`probe_all`].
enum Attempt {
    Pending(OwnedFd),
    Answered(Answer),
    /// This machine could not make the attempt (see [`tcp::classify`]).
    Failed,
}

/// Looks at every target at once (one poll loop, non-blocking sockets, no
/// thread per target) and returns each one's reach, in order, by
/// `deadline` at the latest: Online = a TCP connection to the port was
/// accepted; Unreachable = the host answered (ICMP echo reply, or a TCP
/// reset: the host is up, the port is closed) but did not accept; Offline
/// = no answer by the deadline (or the network says unreachable).
///
/// It returns before the deadline once every target is settled: accepted,
/// reset, or said unreachable by the network (then Unreachable if an echo
/// reply came before, else Offline). A host that answers echo but neither
/// accepts nor resets is known Unreachable only at the deadline. Echo
/// requests are sent again every second to hosts that have not answered.
/// A deadline already past still gives every target one look (a loopback
/// connection may be accepted at once).
pub fn probe_all(targets: &[Target], deadline: Instant) -> Vec<Reach> {
    probe_with(targets, deadline, &mut Icmp::new(true))
}

fn probe_with(targets: &[Target], deadline: Instant, icmp: &mut Icmp) -> Vec<Reach> {
    let mut attempts: Vec<Attempt> = targets
        .iter()
        .map(|target| match tcp::connect(target.addr()) {
            Ok(Start::Pending(fd)) => Attempt::Pending(fd),
            Ok(Start::Done(answer)) => Attempt::Answered(answer),
            Err(_) => Attempt::Failed,
        })
        .collect();
    let hosts: Vec<IpAddr> = {
        let mut seen = HashSet::new();
        targets
            .iter()
            .map(|t| t.addr().ip())
            .filter(|ip| seen.insert(*ip))
            .collect()
    };
    let mut echoed: HashSet<IpAddr> = HashSet::new();
    let mut next_echo = Instant::now();
    loop {
        if !attempts.iter().any(|a| matches!(a, Attempt::Pending(_))) {
            break;
        }
        let now = Instant::now();
        if now >= next_echo {
            // Only hosts with an attempt still open can learn anything
            // from an echo reply.
            let waiting: HashSet<IpAddr> = targets
                .iter()
                .zip(&attempts)
                .filter(|(_, a)| matches!(a, Attempt::Pending(_)))
                .map(|(t, _)| t.addr().ip())
                .collect();
            for ip in hosts
                .iter()
                .filter(|ip| waiting.contains(ip) && !echoed.contains(ip))
            {
                icmp.send(*ip);
            }
            next_echo = now + ECHO_AGAIN;
        }
        let mut fds: Vec<libc::pollfd> = icmp
            .open()
            .map(|p| sys::pollfd(p.fd(), libc::POLLIN))
            .collect();
        let pingers = fds.len();
        let mut pending = Vec::new();
        for (i, attempt) in attempts.iter().enumerate() {
            if let Attempt::Pending(fd) = attempt {
                fds.push(sys::pollfd(fd, libc::POLLOUT));
                pending.push(i);
            }
        }
        let wake = next_echo.min(deadline);
        if sys::poll(&mut fds, wake.saturating_duration_since(now)).is_err() {
            // Nothing more can be learnt: what is known stands.
            break;
        }
        if fds[..pingers].iter().any(|fd| fd.revents != 0) {
            for pinger in icmp.open() {
                echoed.extend(pinger.receive());
            }
        }
        for (fd, &i) in fds[pingers..].iter().zip(&pending) {
            if fd.revents == 0 {
                continue;
            }
            if let Some(attempt) = attempts.get_mut(i)
                && let Attempt::Pending(socket) = attempt
            {
                let answered = match tcp::answer(socket) {
                    Ok(answer) => Attempt::Answered(answer),
                    Err(_) => Attempt::Failed,
                };
                // The socket closes here: nothing more to hear from it.
                *attempt = answered;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    targets
        .iter()
        .zip(&attempts)
        .map(|(target, attempt)| match attempt {
            Attempt::Answered(Answer::Accepted) => Reach::Online,
            Attempt::Answered(Answer::Refused) => Reach::Unreachable,
            _ if echoed.contains(&target.addr().ip()) => Reach::Unreachable,
            _ => Reach::Offline,
        })
        .collect()
}

/// Waits until `target` is ready — answers ICMP echo AND accepts a TCP
/// connection on its port — trying again every 50 ms (a new connect
/// attempt each time, earlier ones kept open until their own answer, so a
/// port that opens is noticed within ~50 ms), until `until`; also returns
/// early (Ok(false)) when `stop()` says so (checked at every try). Ok(true)
/// when ready.
///
/// Echo requests go out every 200 ms until one is answered; where no ICMP
/// socket can be opened (see the [module](self)), the accepted connection
/// alone makes the target ready. Where one can, a host that never answers
/// echo (its firewall drops it) is never ready, though [`probe_all`]
/// shows it Online: as upstream, which pings before it looks at the port. Attempts that the host resets or the
/// network refuses are closed and tried again at the next try; at most
/// the last 64 attempts (~3 s) are kept open. `Err` when this machine
/// cannot make an attempt at all (no socket can be opened, or the address
/// cannot be connected to from here, as a broadcast address).
pub fn wait_ready(target: Target, until: Instant, stop: &dyn Fn() -> bool) -> io::Result<bool> {
    wait_with(target, until, stop, &mut Icmp::new(true))
}

fn wait_with(
    target: Target,
    until: Instant,
    stop: &dyn Fn() -> bool,
    icmp: &mut Icmp,
) -> io::Result<bool> {
    let addr = target.addr();
    let ip = addr.ip();
    let mut echoed = !icmp.can_ping(ip);
    let mut accepted = false;
    let mut attempts: VecDeque<OwnedFd> = VecDeque::new();
    let mut next_try = Instant::now();
    let mut next_ping = next_try;
    loop {
        let now = Instant::now();
        if now >= next_try {
            if stop() {
                return Ok(false);
            }
            if !accepted {
                match tcp::connect(addr)? {
                    Start::Pending(fd) => attempts.push_back(fd),
                    Start::Done(Answer::Accepted) => accepted = true,
                    Start::Done(_) => {}
                }
                while attempts.len() > MAX_ATTEMPTS {
                    attempts.pop_front();
                }
            }
            // On the 50 ms grid while it keeps up; from now if it fell
            // behind (a slow `stop`, a stopped process).
            next_try = (next_try + TRY_EVERY).max(now);
        }
        if !echoed && now >= next_ping {
            icmp.send(ip);
            next_ping = now + PING_EVERY;
        }
        if accepted && echoed {
            return Ok(true);
        }
        if now >= until {
            return Ok(false);
        }
        let mut fds = Vec::with_capacity(attempts.len() + 1);
        let pinger = if echoed { None } else { icmp.pinger(ip) };
        let pinging = pinger.is_some();
        if let Some(pinger) = &pinger {
            fds.push(sys::pollfd(pinger.fd(), libc::POLLIN));
        }
        fds.extend(attempts.iter().map(|fd| sys::pollfd(fd, libc::POLLOUT)));
        let mut wake = next_try.min(until);
        if pinging {
            wake = wake.min(next_ping);
        }
        sys::poll(&mut fds, wake.saturating_duration_since(now))?;
        let (ping_fd, attempt_fds) = fds.split_at(usize::from(pinging));
        if ping_fd.first().is_some_and(|fd| fd.revents != 0)
            && let Some(pinger) = icmp.pinger(ip)
        {
            echoed |= pinger.receive().contains(&ip);
        }
        // Answered attempts leave; an accepted one makes the port ready.
        let mut keep = VecDeque::with_capacity(attempts.len());
        for (fd, socket) in attempt_fds.iter().zip(attempts.drain(..)) {
            if fd.revents == 0 {
                keep.push_back(socket);
                continue;
            }
            // A reset, a refusal by the network, or an error of this
            // machine's about this one attempt: the next try tells more.
            if let Ok(Answer::Accepted) = tcp::answer(&socket) {
                accepted = true;
            }
        }
        attempts = keep;
        if accepted {
            attempts.clear();
        }
        if accepted && echoed {
            return Ok(true);
        }
    }
}

/// The IPv4 address the neighbour table (/proc/net/arp, complete entries)
/// gives this MAC (case-insensitive, ':'-separated), if any.
///
/// "Complete" is any entry with a known hardware address: reachable,
/// stale (not confirmed lately), delay, probe or permanent; an entry still
/// being resolved or failed is not. Where several addresses have the MAC,
/// the first in the table is given. A MAC that does not parse, or a table
/// that cannot be read, gives `None`.
pub fn neighbour_ip(mac: &str) -> Option<Ipv4Addr> {
    let mac = neigh::parse_mac(mac)?;
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    neigh::ip_in_table(&table, mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::net::{Ipv6Addr, TcpListener};

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A port of `ip` where nothing listens (a connection is reset): one
    /// the system gave a listener that is closed again.
    fn closed_port(ip: IpAddr) -> u16 {
        let listener = TcpListener::bind((ip, 0)).expect("a listener");
        listener.local_addr().expect("its address").port()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn accepted_is_online_and_reset_is_unreachable_with_and_without_icmp() {
        for ip in [LOOPBACK, IpAddr::V6(Ipv6Addr::LOCALHOST)] {
            let open = TcpListener::bind((ip, 0)).expect("a listener");
            let open_port = open.local_addr().expect("its address").port();
            let targets = [
                Target {
                    ip,
                    port: open_port,
                },
                Target {
                    ip,
                    port: closed_port(ip),
                },
            ];
            for icmp in [true, false] {
                let start = Instant::now();
                let reach = probe_with(&targets, soon(), &mut Icmp::new(icmp));
                assert_eq!(
                    reach,
                    [Reach::Online, Reach::Unreachable],
                    "{ip}, ICMP {icmp}"
                );
                // Both settled: no waiting for the deadline.
                assert!(
                    start.elapsed() < Duration::from_secs(1),
                    "{ip}, ICMP {icmp}"
                );
            }
        }
    }

    #[test]
    fn nothing_to_probe_is_nothing() {
        assert_eq!(probe_all(&[], soon()), []);
    }

    #[test]
    fn a_past_deadline_still_gives_an_answer_for_each() {
        let targets = [Target {
            ip: LOOPBACK,
            port: closed_port(LOOPBACK),
        }; 3];
        let start = Instant::now();
        let reach = probe_all(&targets, start - Duration::from_secs(1));
        assert_eq!(reach.len(), 3);
        assert!(start.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn an_address_that_cannot_be_connected_to() {
        // Link-local IPv6 needs an interface, which a target cannot name.
        let target = Target {
            ip: "fe80::1".parse().expect("an address"),
            port: 22,
        };
        assert_eq!(probe_all(&[target], soon()), [Reach::Offline]);
        assert!(wait_ready(target, soon(), &|| false).is_err());
    }

    #[test]
    fn a_mapped_address_is_probed_as_ipv4() {
        let open = TcpListener::bind((LOOPBACK, 0)).expect("a listener");
        let port = open.local_addr().expect("its address").port();
        let ip = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        assert_eq!(probe_all(&[Target { ip, port }], soon()), [Reach::Online]);
    }

    /// Waits for a loopback port that opens at the third try (the
    /// listener is opened by `stop`, which runs at every try, on the
    /// waiting thread); returns how long after it opened the wait ended.
    fn ready_after_open(icmp: bool) -> Duration {
        let port = closed_port(LOOPBACK);
        let tries = Cell::new(0);
        let opened: RefCell<Option<(TcpListener, Instant)>> = RefCell::new(None);
        let stop = || {
            tries.set(tries.get() + 1);
            if tries.get() == 3 {
                let listener = TcpListener::bind((LOOPBACK, port)).expect("the port again");
                *opened.borrow_mut() = Some((listener, Instant::now()));
            }
            false
        };
        let target = Target { ip: LOOPBACK, port };
        let ready = wait_with(target, soon(), &stop, &mut Icmp::new(icmp)).expect("a wait");
        let end = Instant::now();
        assert!(ready, "ICMP {icmp}");
        assert!(
            tries.get() >= 3,
            "ready before the port opened (ICMP {icmp})"
        );
        let (_, at) = opened.take().expect("the port opened");
        end - at
    }

    #[test]
    fn a_port_that_opens_is_noticed_at_the_next_try() {
        for icmp in [true, false] {
            let latency = ready_after_open(icmp);
            assert!(
                latency < TRY_EVERY + Duration::from_millis(50),
                "{latency:?}, ICMP {icmp}"
            );
        }
    }

    #[test]
    fn a_port_that_never_opens_is_not_ready_at_until() {
        let target = Target {
            ip: LOOPBACK,
            port: closed_port(LOOPBACK),
        };
        let until = Instant::now() + Duration::from_millis(300);
        let tries = Cell::new(0);
        let stop = || {
            tries.set(tries.get() + 1);
            false
        };
        assert!(!wait_ready(target, until, &stop).expect("a wait"));
        let late = Instant::now().saturating_duration_since(until);
        assert!(late < Duration::from_millis(50), "{late:?} late");
        // A try every 50 ms: some 6 in 300 ms.
        assert!((4..=8).contains(&tries.get()), "{} tries", tries.get());
    }

    #[test]
    fn stop_ends_the_wait_at_the_next_try() {
        let target = Target {
            ip: LOOPBACK,
            port: closed_port(LOOPBACK),
        };
        let tries = Cell::new(0);
        let stop = || {
            tries.set(tries.get() + 1);
            tries.get() == 2
        };
        let start = Instant::now();
        assert!(!wait_ready(target, soon(), &stop).expect("a wait"));
        assert_eq!(tries.get(), 2);
        assert!(start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn pingers_match_their_replies_where_icmp_may_be_used() {
        // Where this process may open no ICMP socket, there is nothing to
        // look at here (tests/net.rs covers both kinds of socket).
        for ip in [LOOPBACK, IpAddr::V6(Ipv6Addr::LOCALHOST)] {
            let Some(mut pinger) = Pinger::open(ip.is_ipv6()) else {
                continue;
            };
            // A second pinger's replies are not the first one's.
            let mut other = Pinger::open(ip.is_ipv6()).expect("a second pinger");
            pinger.send(ip).expect("an echo request");
            let deadline = soon();
            let mut answered = Vec::new();
            while answered.is_empty() && Instant::now() < deadline {
                let mut fds = [sys::pollfd(pinger.fd(), libc::POLLIN)];
                sys::poll(&mut fds, Duration::from_millis(100)).expect("poll");
                answered = pinger.receive();
            }
            assert_eq!(answered, [ip]);
            assert_eq!(other.receive(), Vec::<IpAddr>::new());
        }
    }
}
