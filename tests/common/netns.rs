//! Real hosts for the tests: each [`Host`] is a network namespace joined to
//! the test's own namespace (or to another host) by a veth pair on a
//! private /30 of 10.203.0.0/16.
//!
//! The /30 is claimed atomically across processes by creating the veth
//! pair under a name derived from it (`mtN.r`/`mtN.h` for subnet N) in the
//! root namespace: `ip link add` fails if another test holds that name, and
//! the next subnet is tried. Everything is removed when the `Host` drops;
//! namespaces left by a killed test process are removed by the next one,
//! and the processes still running in them killed.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace name; the rest is `PID-N`.
pub const PREFIX: &str = "mama-test-";

/// How many /30s 10.203.0.0/16 holds.
const SUBNETS: u32 = 1 << 14;

/// A network namespace with one link to its peer (the test's namespace or
/// another host).
pub struct Host {
    name: String,
    /// Its end of the link, inside it.
    dev: String,
    /// The other end, in `peer_ns` (none: the test's namespace).
    peer_dev: String,
    peer_ns: Option<String>,
    addr: Ipv4Addr,
    peer_addr: Ipv4Addr,
}

/// Runs `ip ARGS`; panics with its output if it fails.
#[track_caller]
pub fn ip<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = try_ip(&args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn try_ip<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ip (iproute2) runs")
}

/// Removes the namespaces of test processes that no longer run.
fn sweep() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // A server a test left running in it (a board's listener)
            // would keep it alive, and hold what it listens on.
            let out = try_ip(&["netns", "pids", &name]);
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    // SAFETY: plain system call; the process is in a
                    // namespace only the tests create.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
            // Its links first: a socket left behind may keep the namespace,
            // and so the link's other end, alive after `netns del`.
            let out = try_ip(&["-n", &name, "-o", "link", "show"]);
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let dev = line.split(": ").nth(1).unwrap_or_default();
                let dev = dev.split('@').next().unwrap_or_default();
                if dev.starts_with("mt") {
                    let _ = try_ip(&["-n", &name, "link", "del", dev]);
                }
            }
            let _ = try_ip(&["netns", "del", &name]);
        }
    }
}

/// Creates a veth pair on a free /30 in the test's namespace; returns
/// (subnet number, peer end, host end).
fn claim_link() -> (u32, String, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(97);
    for _ in 0..SUBNETS {
        let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SUBNETS;
        let (peer, dev) = (format!("mt{n}.r"), format!("mt{n}.h"));
        let out = try_ip(&["link", "add", &peer, "type", "veth", "peer", "name", &dev]);
        if out.status.success() {
            return (n, peer, dev);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("File exists"), "ip link add {peer}: {err}");
    }
    panic!("no free /30 in 10.203.0.0/16");
}

/// The addresses of subnet `n`: (peer, host).
fn addresses(n: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 203, 0, 0)) + n * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

impl Host {
    /// A host linked to the test's own network namespace.
    pub fn new() -> Host {
        Host::create(None)
    }

    /// A host linked to `other` (a second link in `other`'s namespace; the
    /// test's namespace cannot reach it).
    pub fn linked_to(other: &Host) -> Host {
        Host::create(Some(other.name.clone()))
    }

    fn create(peer_ns: Option<String>) -> Host {
        static SWEEP: Once = Once::new();
        static COUNT: AtomicU32 = AtomicU32::new(0);
        SWEEP.call_once(sweep);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        ip(["netns", "add", &name]);
        let mut guard = NsGuard(Some(name));
        let (n, peer_dev, dev) = claim_link();
        let (peer_addr, addr) = addresses(n);
        // From here on, Drop removes whatever exists.
        let host = Host {
            name: guard.0.take().expect("the namespace"),
            dev,
            peer_dev,
            peer_ns,
            addr,
            peer_addr,
        };
        ip(["link", "set", &host.dev, "netns", &host.name]);
        if let Some(ns) = &host.peer_ns {
            ip(["link", "set", &host.peer_dev, "netns", ns]);
        }
        let (peer_dev, dev) = (&host.peer_dev, &host.dev);
        host.peer_ip(["addr", "add", &format!("{peer_addr}/30"), "dev", peer_dev]);
        host.peer_ip(["link", "set", peer_dev, "up"]);
        host.ip(["addr", "add", &format!("{addr}/30"), "dev", dev]);
        host.ip(["link", "set", dev, "up"]);
        host.ip(["link", "set", "lo", "up"]);
        host
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its end of the link (a device inside it).
    pub fn dev(&self) -> &str {
        &self.dev
    }

    /// The other end of the link (a device in the test's namespace, or in
    /// the host it was linked to: see [`Host::peer_ns`]).
    pub fn peer_dev(&self) -> &str {
        &self.peer_dev
    }

    /// The namespace of the other end: `None` for the test's own.
    pub fn peer_ns(&self) -> Option<&str> {
        self.peer_ns.as_deref()
    }

    /// This host's address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The address of the other end of its link (in the test's namespace,
    /// or in the host it was linked to).
    pub fn peer_addr(&self) -> Ipv4Addr {
        self.peer_addr
    }

    /// The /30 of its link, as `a.b.c.d/30`.
    pub fn subnet(&self) -> String {
        format!("{}/30", Ipv4Addr::from(u32::from(self.addr) & !3))
    }

    /// `ip -n NAME ARGS` in this host; panics if it fails.
    #[track_caller]
    pub fn ip<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all = vec![OsStr::new("-n").to_owned(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        ip(all)
    }

    /// `ip ARGS` where the other end of the link is; panics if it fails.
    #[track_caller]
    pub fn peer_ip<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all = Vec::new();
        if let Some(ns) = &self.peer_ns {
            all = vec![OsStr::new("-n").to_owned(), ns.into()];
        }
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        ip(all)
    }

    /// `program` run inside this host (`ip netns exec NAME program`); `ip`
    /// execs it, so the child's PID is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `f` on a thread inside this host: sockets it creates (a
    /// `postgres::Client` it connects) belong to this host for their whole
    /// life, whichever thread uses them later.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd;
        let netns = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: plain system call; it moves only this thread.
                    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Cuts the link as a pulled cable would: its end goes down, the
    /// peer's loses carrier, and packets both ways vanish without a FIN or
    /// RST reaching either side.
    pub fn cut(&self) {
        self.ip(["link", "set", &self.dev, "down"]);
    }

    /// Plugs the cable back in (same addresses).
    pub fn restore(&self) {
        self.ip(["link", "set", &self.dev, "up"]);
    }
}

/// Removes a namespace that no [`Host`] owns yet.
struct NsGuard(Option<String>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Some(name) = &self.0 {
            let _ = try_ip(&["netns", "del", name]);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting one end deletes both, even if a socket still holds the
        // namespace alive.
        let mut del = Vec::new();
        if let Some(ns) = &self.peer_ns {
            del.extend(["-n", ns.as_str()]);
        }
        del.extend(["link", "del", self.peer_dev.as_str()]);
        let _ = try_ip(&del);
        let _ = try_ip(&["-n", &self.name, "link", "del", &self.dev]);
        let _ = try_ip(&["netns", "del", &self.name]);
    }
}
