//! TCP connection attempts that never block: one is started, and its
//! answer read once `poll` says the socket is writable.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use super::sys;

/// What a host answered to a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The connection was accepted: the port is open.
    Accepted,
    /// A reset: the host is up, the port closed (or a firewall rejects
    /// with a reset).
    Refused,
    /// The network says the host cannot be reached (no route, no
    /// neighbour, an ICMP unreachable, the attempt timed out) or the
    /// attempt went nowhere (a local firewall dropped it, no source
    /// address yet): no proof that the host is up.
    NoRoute,
}

/// A started attempt: answered at once, or waiting on its socket.
#[derive(Debug)]
pub enum Start {
    Done(Answer),
    Pending(OwnedFd),
}

/// What an error from `connect` (at once, or later through `SO_ERROR`)
/// says about the host; `None`: an error of this machine's (out of file
/// descriptors, an address that cannot be connected to), which says
/// nothing about the host.
pub fn classify(errno: libc::c_int) -> Option<Answer> {
    match errno {
        0 => Some(Answer::Accepted),
        // A reset during the handshake is ECONNREFUSED; one just after,
        // ECONNRESET: either way the host answered.
        libc::ECONNREFUSED | libc::ECONNRESET => Some(Answer::Refused),
        libc::ENETUNREACH
        | libc::EHOSTUNREACH
        | libc::EHOSTDOWN
        | libc::ENETDOWN
        | libc::ETIMEDOUT
        | libc::EPROTO
        // A local firewall dropped the SYN; no source address yet; the
        // local ports or buffers ran out for a moment.
        | libc::EPERM
        | libc::EADDRNOTAVAIL
        | libc::EAGAIN
        | libc::ENOBUFS => Some(Answer::NoRoute),
        _ => None,
    }
}

/// Starts a connection to `to`. An error is this machine's (see
/// [`classify`]): no socket could be opened, or `to` cannot be connected
/// to from here.
pub fn connect(to: SocketAddr) -> io::Result<Start> {
    let fd = sys::socket(sys::family(to.ip()), libc::SOCK_STREAM, 0)?;
    let (addr, len) = sys::to_sockaddr(to);
    // SAFETY: `addr` holds a socket address of `len` bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) };
    if rc == 0 {
        return Ok(Start::Done(Answer::Accepted));
    }
    let e = io::Error::last_os_error();
    let errno = e.raw_os_error().unwrap_or(0);
    if errno == libc::EINPROGRESS {
        return Ok(Start::Pending(fd));
    }
    match classify(errno) {
        Some(answer) => Ok(Start::Done(answer)),
        None => Err(e),
    }
}

/// The answer of an attempt whose socket `poll` reported (writable, or an
/// error or hang-up); `Err`: an error of this machine's.
pub fn answer(fd: &OwnedFd) -> io::Result<Answer> {
    let errno = sys::take_error(fd)?;
    classify(errno).ok_or_else(|| io::Error::from_raw_os_error(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_they_prove() {
        assert_eq!(classify(0), Some(Answer::Accepted));
        assert_eq!(classify(libc::ECONNREFUSED), Some(Answer::Refused));
        assert_eq!(classify(libc::EHOSTUNREACH), Some(Answer::NoRoute));
        assert_eq!(classify(libc::ETIMEDOUT), Some(Answer::NoRoute));
        assert_eq!(classify(libc::EMFILE), None);
        assert_eq!(classify(libc::EACCES), None);
    }
}
