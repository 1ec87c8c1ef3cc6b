//! The PostgreSQL test harness, and the server mechanisms mama's shared
//! backend relies on: a database per test, session advisory locks, a dead
//! host's session ended by TCP keepalives it set itself, a stopped client
//! keeping its lock, LISTEN/NOTIFY between hosts, and a server restart.
//!
//! The measured figures are printed (`cargo test --test tests pg_harness::
//! -- --nocapture`).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

use crate::common::netns::Host;
use crate::common::pg::{self, Options, PgDb, Server};
use crate::common::*;
use postgres::fallible_iterator::FallibleIterator;

/// The advisory lock the tests take.
const KEY: i64 = 42;

/// Per-session keepalive settings a client sets for its own server-side
/// socket: silent for 2 s, then probes 1 s apart, 2 unanswered probes or 5 s
/// without an acknowledgement end the session.
const KEEPALIVE: &str = "SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1; \
                         SET tcp_keepalives_count = 2; SET tcp_user_timeout = 5000;";

/// The longest those settings let a dead peer hold a session.
const DETECT: Duration = Duration::from_secs(5);

/// A role without privileges: what a client sets, it may set as anyone.
const PLAIN: &str = "plain";

/// The address of the client holding lock [`KEY`] in `db`, if any holds it.
fn holder(db: &PgDb) -> Option<String> {
    db.connect()
        .query_opt(
            "SELECT coalesce(host(a.client_addr), 'local') FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objid = $1 \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&(KEY as u32)],
        )
        .expect("query pg_locks")
        .map(|row| row.get(0))
}

fn try_lock(client: &mut postgres::Client) -> bool {
    client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&KEY])
        .expect("pg_try_advisory_lock")
        .get(0)
}

/// Blocks in `pg_advisory_lock` (at most [`LIMIT`]); returns how long.
fn lock_waiting(client: &mut postgres::Client) -> Duration {
    client
        .batch_execute(&format!("SET lock_timeout = {}", LIMIT.as_millis()))
        .expect("SET lock_timeout");
    let start = Instant::now();
    client
        .execute("SELECT pg_advisory_lock($1)", &[&KEY])
        .expect("the lock within LIMIT");
    start.elapsed()
}

/// `psql` run in a host, fed by the test: it stays connected until killed
/// (and is killed when dropped).
struct Psql {
    child: Child,
    stdin: ChildStdin,
    stderr: tempfile::NamedTempFile,
}

impl Psql {
    fn start(host: &Host, url: &str) -> Psql {
        let stderr = tempfile::NamedTempFile::new().expect("temporary file");
        let mut child = host
            .command(pg::bin_dir().join("psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().expect("reopen"))
            .spawn()
            .expect("psql starts");
        let stdin = child.stdin.take().expect("piped stdin");
        Psql {
            child,
            stdin,
            stderr,
        }
    }

    fn send(&mut self, sql: &str) {
        writeln!(self.stdin, "{sql}").expect("write to psql");
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain system call on our unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server listening on `host`'s peer address, a database on it, and a
/// `psql` in `host` that connected over TCP as [`PLAIN`], set
/// [`KEEPALIVE`] and took lock [`KEY`].
fn remote_holder(host: &Host) -> (Server, PgDb, Psql) {
    let server = pg::server_on(host.peer_addr());
    let db = server.fresh_database();
    db.batch(&format!("CREATE ROLE {PLAIN} LOGIN"));
    let url = server.tcp_url_as(PLAIN, host.peer_addr(), &db.name);
    let mut psql = Psql::start(host, &url);
    psql.send(KEEPALIVE);
    psql.send(&format!("SELECT pg_advisory_lock({KEY});"));
    let want = host.addr().to_string();
    let mut seen = None;
    let start = Instant::now();
    while seen.as_deref() != Some(want.as_str()) {
        assert!(
            start.elapsed() < LIMIT,
            "psql in {} did not take the lock (holder {seen:?}); psql: {}\nserver:\n{}",
            host.name(),
            psql.stderr(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(5));
        seen = holder(&db);
    }
    (server, db, psql)
}

#[test]
#[cfg_attr(
    not(mama_postgres),
    ignore = "needs a PostgreSQL server run as the postgres user: run as root after tests/install-tools"
)]
fn each_test_gets_a_database_of_its_own_on_a_server_run_by_an_unprivileged_user() {
    let one = pg::fresh_database();
    let two = pg::fresh_database();
    assert_ne!(one.name, two.name);
    assert_eq!(one.value::<String>("SELECT current_database()"), one.name);
    one.batch("CREATE TABLE claims (machine text PRIMARY KEY)");
    let tables: i64 = two.value("SELECT count(*) FROM pg_tables WHERE tablename = 'claims'");
    assert_eq!(tables, 0, "a table of one database shows in another");

    let server = pg::server();
    let data: String = one.value("SELECT current_setting('data_directory')");
    assert_eq!(Path::new(&data), server.data_dir());
    let (uid, _) = pg::os_user_ids();
    assert_ne!(uid, 0);
    let postmaster = server.pid().expect("the server runs");
    let pid_file =
        std::fs::read_to_string(server.data_dir().join("postmaster.pid")).expect("postmaster.pid");
    assert_eq!(
        pid_file.lines().next(),
        Some(postmaster.to_string().as_str())
    );
    assert_eq!(pg::uid_of(postmaster), Some(uid), "the postmaster's owner");
    let mut session = one.connect();
    let backend: i32 = session
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pg_backend_pid")
        .get(0);
    assert_eq!(pg::uid_of(backend as u32), Some(uid), "a backend's owner");
    drop(session);

    for (setting, want) in [
        ("fsync", "off"),
        ("full_page_writes", "off"),
        ("synchronous_commit", "off"),
        ("listen_addresses", ""),
        ("max_connections", "200"),
    ] {
        let got: String = one.value(&format!("SELECT current_setting('{setting}')"));
        assert_eq!(got, want, "{setting}");
    }
    let url = &one.url;
    assert!(
        url.starts_with(&format!("postgresql://{}@/{}?host=/", pg::ROLE, one.name)),
        "{url}"
    );
}

#[test]
#[cfg_attr(
    not(mama_postgres),
    ignore = "needs a PostgreSQL server run as the postgres user: run as root after tests/install-tools"
)]
fn a_session_advisory_lock_is_held_until_its_session_ends() {
    let db = pg::fresh_database();
    let mut a = db.connect();
    let mut b = db.connect();
    a.execute("SELECT pg_advisory_lock($1)", &[&KEY])
        .expect("A locks");
    assert!(!try_lock(&mut b), "B got a lock A holds");
    assert_eq!(holder(&db).as_deref(), Some("local"));
    drop(a);
    // The server ends A's session after it read A's goodbye: await it.
    wait_until("B to get the lock A let go", LIMIT, || try_lock(&mut b));
    assert_eq!(holder(&db).as_deref(), Some("local"));
}

#[test]
#[cfg_attr(
    not(all(mama_postgres, mama_ip)),
    ignore = "needs a PostgreSQL server and network namespaces: run as root after tests/install-tools"
)]
fn a_dead_hosts_lock_is_freed_by_the_keepalives_its_session_set() {
    let host = Host::new();
    let (server, db, psql) = remote_holder(&host);
    let mut b = db.connect();
    assert!(!try_lock(&mut b));

    // The cable is pulled, then the host dies: nothing reaches the server.
    host.cut();
    let cut = Instant::now();
    psql.signal(libc::SIGKILL);
    let waited = lock_waiting(&mut b);
    let since_cut = cut.elapsed();
    println!(
        "MEASURED dead host: lock free {:.2} s after the cut (keepalive idle 2 s, \
         interval 1 s, count 2, user timeout 5 s)",
        since_cut.as_secs_f64()
    );
    assert!(
        since_cut >= Duration::from_secs(2),
        "freed after {since_cut:?}: the server must have seen a FIN or RST (waited {waited:?})"
    );
    assert!(
        since_cut < DETECT + Duration::from_secs(3),
        "the dead session held the lock {since_cut:?}"
    );
    // The timer that gave up reports the last soft error: "Connection
    // timed out", or "No route to host" when ARP for the peer failed too.
    let log = server.log();
    assert!(
        log.contains("could not receive data from client"),
        "the server should have timed the session out:\n{log}"
    );
}

#[test]
#[cfg_attr(
    not(all(mama_postgres, mama_ip)),
    ignore = "needs a PostgreSQL server and network namespaces: run as root after tests/install-tools"
)]
fn a_stopped_client_keeps_its_lock_past_twice_the_keepalive_limits() {
    let host = Host::new();
    let (_server, db, psql) = remote_holder(&host);
    psql.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let mut b = db.connect();
    // That nothing happens is the point: look for twice the limit.
    while stopped.elapsed() < 2 * DETECT {
        assert!(!try_lock(&mut b), "the stopped client lost its lock");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(holder(&db), Some(host.addr().to_string()));
    println!(
        "MEASURED stopped client: still held the lock {:.1} s after SIGSTOP",
        stopped.elapsed().as_secs_f64()
    );

    // Killed, its kernel closes the connection: the lock goes at once.
    let killed = Instant::now();
    psql.signal(libc::SIGKILL);
    let waited = lock_waiting(&mut b);
    println!(
        "MEASURED stopped client killed: lock free {:.3} s later",
        killed.elapsed().as_secs_f64()
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[test]
#[cfg_attr(
    not(all(mama_postgres, mama_ip)),
    ignore = "needs a PostgreSQL server and network namespaces: run as root after tests/install-tools"
)]
fn notify_reaches_a_listener_on_another_host_promptly() {
    // The server runs in a host of its own; the listener and the notifier
    // each reach it over a link of their own.
    let server_host = Host::new();
    let listener_host = Host::linked_to(&server_host);
    let notifier_host = Host::linked_to(&server_host);
    let server = Server::start(Options {
        listen: vec![listener_host.peer_addr(), notifier_host.peer_addr()],
        trust: vec![listener_host.subnet(), notifier_host.subnet()],
        netns: Some(server_host.name().to_string()),
        ..Options::default()
    });
    let db = server.fresh_database();
    let url = |host: &Host| server.tcp_url_as(pg::ROLE, host.peer_addr(), &db.name);
    let mut listener = listener_host.enter(|| pg::connect(&url(&listener_host)));
    let mut notifier = notifier_host.enter(|| pg::connect(&url(&notifier_host)));
    for (client, host) in [
        (&mut listener, &listener_host),
        (&mut notifier, &notifier_host),
    ] {
        let from: String = client
            .query_one("SELECT host(inet_client_addr())", &[])
            .expect("inet_client_addr")
            .get(0);
        assert_eq!(from.parse::<Ipv4Addr>().ok(), Some(host.addr()));
    }
    listener.batch_execute("LISTEN mama").expect("LISTEN");

    const ROUNDS: usize = 30;
    let (tx, rx) = std::sync::mpsc::channel();
    let listening = std::thread::spawn(move || {
        let mut notes = listener.notifications();
        for round in 0..ROUNDS {
            let note = if round == 0 {
                notes.blocking_iter().next()
            } else {
                notes.timeout_iter(LIMIT).next()
            };
            let note = note.expect("no error").expect("a notification");
            if tx
                .send((Instant::now(), note.payload().to_string()))
                .is_err()
            {
                break;
            }
        }
    });
    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        let sent = Instant::now();
        notifier
            .execute("SELECT pg_notify('mama', $1)", &[&round.to_string()])
            .expect("NOTIFY");
        let (woke, payload) = rx.recv_timeout(LIMIT).expect("the listener woke");
        assert_eq!(payload, round.to_string());
        latencies.push(woke - sent);
    }
    listening.join().expect("the listener thread");
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "MEASURED NOTIFY to a listener on another host over {ROUNDS} rounds: \
         min {:.2} ms, median {:.2} ms, max {:.2} ms",
        ms(latencies[0]),
        ms(latencies[ROUNDS / 2]),
        ms(latencies[ROUNDS - 1])
    );
    assert!(
        latencies[ROUNDS / 2] < Duration::from_millis(100),
        "{latencies:?}"
    );
}

#[test]
#[cfg_attr(
    not(mama_postgres),
    ignore = "needs a PostgreSQL server run as the postgres user: run as root after tests/install-tools"
)]
fn after_a_server_restart_a_client_reconnects_and_takes_its_lock_again() {
    let server = Server::start(Options::default());
    let db = server.fresh_database();
    let mut a = db.connect();
    a.execute("SELECT pg_advisory_lock($1)", &[&KEY])
        .expect("A locks");
    assert!(!try_lock(&mut db.connect()));

    let start = Instant::now();
    server.restart();
    let restarted = start.elapsed();
    let err = a
        .batch_execute("SELECT 1")
        .expect_err("A's session survived the restart");
    let start = Instant::now();
    let mut a = pg::reconnect(&db.url);
    assert!(try_lock(&mut a), "the lock survived the restart");
    println!(
        "MEASURED restart: {:.2} s for stop and start, reconnect {:.3} s; the old session \
         saw: {err}",
        restarted.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    assert!(!try_lock(&mut db.connect()));
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip)),
    ignore = "makes network namespaces: run as root after tests/install-tools (ip)"
)]
fn hosts_have_their_own_subnets_and_leave_nothing_behind() {
    let (name, link) = {
        let one = Host::new();
        let two = Host::new();
        assert_ne!(one.subnet(), two.subnet());
        assert_eq!(pg::slash30(one.addr()), one.subnet());
        assert_eq!(pg::slash30(one.peer_addr()), one.subnet());
        let out = one
            .command("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .expect("ip addr in the host");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("{}/30", one.addr())), "{text}");
        assert!(!text.contains(&two.addr().to_string()), "{text}");
        (one.name().to_string(), one.peer_addr())
    };
    assert!(!Path::new("/run/netns").join(&name).exists(), "{name} left");
    let out = netns_ip_addrs();
    assert!(
        !out.contains(&format!("{link}/30")),
        "the link is left: {out}"
    );
}

/// `ip -o -4 addr show` in the test's namespace.
fn netns_ip_addrs() -> String {
    let out = crate::common::netns::ip(["-o", "-4", "addr", "show"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
