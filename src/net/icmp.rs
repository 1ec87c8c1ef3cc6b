//! ICMP echo ("ping") without a helper program: one socket per address
//! family, echo requests sent to any number of hosts, replies matched to
//! what was sent.
//!
//! The socket is the unprivileged kind where the system allows it
//! (`SOCK_DGRAM` with `IPPROTO_ICMP`/`IPPROTO_ICMPV6`, for users whose
//! group is in `net.ipv4.ping_group_range`, which covers both families),
//! else a raw socket (root, or `CAP_NET_RAW`); where neither can be
//! opened there is no [`Pinger`] and the callers go by TCP alone.
//!
//! Matching: every request carries a sequence number, recorded with the
//! address it went to, and an 8-byte token of this pinger's in its
//! payload. A reply counts when it comes from the address its sequence
//! number went to and carries the token. On a raw socket, which sees every
//! echo reply that reaches the host, its identifier must be this pinger's
//! too; on an unprivileged socket the kernel sets the identifier itself
//! (to the socket's "port") and delivers only that socket's replies, so
//! the identifier is not looked at.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use super::sys;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// `setsockopt(SOL_RAW, ICMP_FILTER)`: the ICMP types a raw IPv4 socket
/// does not want (linux/icmp.h).
const SOL_RAW: libc::c_int = 255;
const ICMP_FILTER: libc::c_int = 1;
/// `setsockopt(IPPROTO_ICMPV6, ICMP6_FILTER)` (linux/icmpv6.h).
const ICMP6_FILTER: libc::c_int = 1;

/// The ICMP header (8 bytes) and the token (8 bytes).
const PACKET_LEN: usize = 16;

/// An ICMP echo socket of one address family.
pub struct Pinger {
    fd: OwnedFd,
    v6: bool,
    /// A raw socket (sees the IPv4 header and every echo reply), not an
    /// unprivileged one.
    raw: bool,
    id: u16,
    token: [u8; 8],
    next_seq: u16,
    /// Where each sequence number went (the last 65536).
    sent: HashMap<u16, IpAddr>,
}

/// A random number: std's hasher keys come from the system's randomness.
fn random() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

impl Pinger {
    /// An echo socket for IPv6 (`v6`) or IPv4 targets: unprivileged if
    /// allowed, else raw; `None` if neither may be opened here.
    pub fn open(v6: bool) -> Option<Pinger> {
        let (domain, protocol) = if v6 {
            (libc::AF_INET6, libc::IPPROTO_ICMPV6)
        } else {
            (libc::AF_INET, libc::IPPROTO_ICMP)
        };
        let (fd, raw) = match sys::socket(domain, libc::SOCK_DGRAM, protocol) {
            Ok(fd) => (fd, false),
            Err(_) => (sys::socket(domain, libc::SOCK_RAW, protocol).ok()?, true),
        };
        if raw {
            // Only echo replies wake the socket (a bit set drops a type).
            // Without the filter the replies are still picked out below.
            let _ = if v6 {
                let mut filter = [u32::MAX; 8];
                filter[usize::from(ECHO_REPLY_V6 >> 5)] &= !(1 << (ECHO_REPLY_V6 & 31));
                sys::set_option(&fd, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter)
            } else {
                let filter: u32 = !(1 << ECHO_REPLY_V4);
                sys::set_option(&fd, SOL_RAW, ICMP_FILTER, &filter)
            };
        }
        let bits = random();
        Some(Pinger {
            fd,
            v6,
            raw,
            id: bits as u16,
            token: random().to_ne_bytes(),
            next_seq: (bits >> 16) as u16,
            sent: HashMap::new(),
        })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Sends one echo request to `ip` (of this pinger's family). An error
    /// means this request is lost (no route, a full buffer): the caller
    /// sends again later.
    pub fn send(&mut self, ip: IpAddr) -> io::Result<()> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let packet = request(self.v6, self.id, seq, &self.token);
        let (addr, len) = sys::to_sockaddr(SocketAddr::new(ip, 0));
        // SAFETY: `packet` is readable for its length, `addr` holds a
        // socket address of `len` bytes.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_DONTWAIT,
                (&raw const addr).cast(),
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.sent.insert(seq, ip);
        Ok(())
    }

    /// Reads every reply waiting; returns the hosts that answered one of
    /// this pinger's requests.
    pub fn receive(&mut self) -> Vec<IpAddr> {
        let mut answered = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: sockaddr_storage is plain data.
            let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: `buf` is writable for its length, `from` for
            // `from_len` bytes.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                // Nothing more waiting (or an error report, now taken).
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return answered;
            }
            let data = buf.get(..n as usize).unwrap_or_default();
            let Some(source) = sys::ip_of(&from, from_len) else {
                continue;
            };
            let Some(reply) = parse_reply(data, self.v6, self.raw) else {
                continue;
            };
            let ours = (!self.raw || reply.id == self.id)
                && reply.payload.starts_with(&self.token)
                && self.sent.get(&reply.seq) == Some(&source);
            if ours {
                answered.push(source);
            }
        }
    }
}

/// An echo request: the ICMP header and the token. The IPv4 checksum is
/// computed here (an unprivileged socket's kernel redoes it, as it sets
/// the identifier); ICMPv6's is always the kernel's.
fn request(v6: bool, id: u16, seq: u16, token: &[u8; 8]) -> [u8; PACKET_LEN] {
    let mut packet = [0u8; PACKET_LEN];
    packet[0] = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    packet[8..].copy_from_slice(token);
    if !v6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo reply, read from a socket.
#[derive(Debug, PartialEq, Eq)]
struct Reply<'a> {
    id: u16,
    seq: u16,
    payload: &'a [u8],
}

/// The echo reply in `data` as a socket of the family (`v6`) and kind
/// (`raw`) received it: a raw IPv4 socket's data starts with the IPv4
/// header; the others' with the ICMP header. Anything else is `None`.
fn parse_reply(data: &[u8], v6: bool, raw: bool) -> Option<Reply<'_>> {
    let icmp = if raw && !v6 {
        let first = *data.first()?;
        let header_len = usize::from(first & 0x0f) * 4;
        let protocol = *data.get(9)?;
        if first >> 4 != 4 || header_len < 20 || protocol != libc::IPPROTO_ICMP as u8 {
            return None;
        }
        data.get(header_len..)?
    } else {
        data
    };
    let want = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    match icmp {
        [kind, 0, _, _, i0, i1, s0, s1, payload @ ..] if *kind == want => Some(Reply {
            id: u16::from_be_bytes([*i0, *i1]),
            seq: u16::from_be_bytes([*s0, *s1]),
            payload,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_checks_out() {
        let packet = request(false, 0x1234, 7, b"abcdefgh");
        assert_eq!(packet[0], ECHO_REQUEST_V4);
        // The checksum of a packet with its checksum in place is zero.
        assert_eq!(checksum(&packet), 0);
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 7]);
        assert_eq!(&packet[8..], b"abcdefgh");
        let packet = request(true, 1, 2, b"abcdefgh");
        assert_eq!((packet[0], packet[2], packet[3]), (ECHO_REQUEST_V6, 0, 0));
    }

    #[test]
    fn checksum_of_an_odd_length() {
        assert_eq!(checksum(&[0xff]), !0xff00);
        assert_eq!(checksum(&[]), 0xffff);
    }

    fn reply_v4(kind: u8) -> Vec<u8> {
        let mut ip = vec![
            0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        ip.extend([kind, 0, 0, 0, 0x12, 0x34, 0, 9]);
        ip.extend(b"abcdefgh");
        ip
    }

    #[test]
    fn replies_are_read_past_the_ip_header_of_a_raw_socket() {
        let data = reply_v4(ECHO_REPLY_V4);
        let want = Reply {
            id: 0x1234,
            seq: 9,
            payload: b"abcdefgh",
        };
        assert_eq!(parse_reply(&data, false, true), Some(want));
        // An unprivileged socket's data starts at the ICMP header.
        let want = Reply {
            id: 0x1234,
            seq: 9,
            payload: b"abcdefgh",
        };
        assert_eq!(parse_reply(&data[20..], false, false), Some(want));
    }

    #[test]
    fn requests_and_other_messages_are_not_replies() {
        assert_eq!(parse_reply(&reply_v4(ECHO_REQUEST_V4), false, true), None);
        // Destination unreachable.
        assert_eq!(parse_reply(&reply_v4(3), false, true), None);
        // An IPv4 echo reply's type read on an ICMPv6 socket.
        assert_eq!(
            parse_reply(&reply_v4(ECHO_REPLY_V4)[20..], true, false),
            None
        );
        let mut v6 = vec![ECHO_REPLY_V6, 0, 0, 0, 0, 1, 0, 2];
        v6.extend(b"token123");
        assert!(parse_reply(&v6, true, true).is_some());
    }

    #[test]
    fn any_bytes_parse_without_a_panic() {
        let mut data = reply_v4(ECHO_REPLY_V4);
        for len in 0..data.len() {
            for (v6, raw) in [(false, false), (false, true), (true, false), (true, true)] {
                let _ = parse_reply(&data[..len], v6, raw);
            }
        }
        // A header length pointing past the end.
        data[0] = 0x4f;
        assert_eq!(parse_reply(&data, false, true), None);
    }
}
