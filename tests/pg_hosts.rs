//! One database lab, several hosts: hosts are network namespaces joined to
//! the test's own by a veth pair on a private /30, the server listens on
//! the test's end. A host is cut off by taking its link down (no FIN, no
//! RST reaches either side).

use crate::common::netns::Host;
use crate::common::pg::{self, Options, PgDb, Server};
use crate::common::*;

use std::process::Command;
use std::time::{Duration, Instant};

/// The host timeout of these tests, in seconds.
const TIMEOUT: u64 = 4;

/// `mama ARGS` on `host`, reaching database `db` over TCP, in `env`'s
/// folder.
fn mama_on(host: &Host, server: &Server, db: &PgDb, env: &TestEnv, args: &[String]) -> Command {
    mama_on_within(host, server, db, env, args, TIMEOUT)
}

/// [`mama_on`] with the host timeout `timeout`.
fn mama_on_within(
    host: &Host,
    server: &Server,
    db: &PgDb,
    env: &TestEnv,
    args: &[String],
    timeout: u64,
) -> Command {
    let mut cmd = host.command(MAMA);
    remove_mama_env(&mut cmd);
    cmd.env(
        "MAMA_STATE",
        server.tcp_url_as(pg::ROLE, host.peer_addr(), &db.name),
    )
    .env("MAMA_POLL_INTERVAL", "0.2")
    .env("MAMA_HOST_TIMEOUT", timeout.to_string())
    .env("NO_COLOR", "1")
    .args(args)
    .current_dir(env.path());
    cmd
}

/// A lab world on `db` over the unix socket, for the test's own host.
fn local(db: &PgDb) -> TestEnv {
    TestEnv {
        dir: tempfile::tempdir().expect("temporary folder"),
        state: db.url.clone().into(),
        db: Some(db.clone()),
    }
}

/// `mama ARGS` on the test's own host, with the tests' host timeout.
fn local_cmd(env: &TestEnv, args: &[String]) -> Command {
    local_cmd_within(env, args, TIMEOUT)
}

fn local_cmd_within(env: &TestEnv, args: &[String], timeout: u64) -> Command {
    let mut cmd = env.cmd(args);
    cmd.env("MAMA_HOST_TIMEOUT", timeout.to_string());
    cmd
}

/// A server reachable from `host`, a database with machine `m`, and a
/// holder on `host` whose job touches `started` and then waits for `go`.
fn remote_holder(host: &Host) -> (Server, PgDb, TestEnv, Bg) {
    remote_holder_within(host, TIMEOUT)
}

fn remote_holder_within(host: &Host, timeout: u64) -> (Server, PgDb, TestEnv, Bg) {
    let server = pg::server_on(host.peer_addr());
    let db = server.fresh_database();
    let env = local(&db);
    env.add("m", 1);
    let script = format!("touch \"$1/started\"; {}", wait_for_file("go"));
    let args = sh_job(&env, "m", &["--job", "holder"], &script);
    let holder = Bg::start(mama_on_within(host, &server, &db, &env, &args, timeout));
    wait_until("the remote holder's job", LIMIT, || {
        env.path().join("started").exists()
    });
    (server, db, env, holder)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
#[cfg_attr(
    not(all(mama_postgres, mama_ip)),
    ignore = "needs a PostgreSQL server and network namespaces: run as root after tests/install-tools"
)]
fn a_cut_off_holders_claim_is_freed_within_the_host_timeout() {
    let host = Host::new();
    let (_server, _db, env, holder) = remote_holder(&host);
    let mut waiter = Bg::start(local_cmd(
        &env,
        &args(&["run", "m", "--wait-timeout", "60", "--", "true"]),
    ));
    waiter.expect_stderr("waiting to claim it", LIMIT);

    // The cable is pulled, then the host dies: nothing reaches the server.
    host.cut();
    let cut = Instant::now();
    holder.signal(libc::SIGKILL);
    let run = waiter.finish(Duration::from_secs(TIMEOUT + 30));
    let freed = cut.elapsed();
    println!(
        "MEASURED dead host: claim taken over {:.2} s after the cut (MAMA_HOST_TIMEOUT={TIMEOUT})",
        freed.as_secs_f64()
    );
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stderr.contains("cleared stale job 'holder'") && run.stderr.contains("is gone"),
        "{run:#?}"
    );
    assert!(
        freed >= Duration::from_secs(TIMEOUT / 2),
        "freed after {freed:?}: the server must have heard from the dead host"
    );
    assert!(
        freed <= Duration::from_secs(TIMEOUT + 5),
        "the dead host kept the machine {freed:?}"
    );
}

#[test]
#[cfg_attr(
    not(all(mama_postgres, mama_ip)),
    ignore = "needs a PostgreSQL server and network namespaces: run as root after tests/install-tools"
)]
fn a_stopped_holder_keeps_its_claim_past_twice_the_host_timeout() {
    let host = Host::new();
    let (_server, _db, env, mut holder) = remote_holder(&host);
    holder.signal(libc::SIGSTOP);
    let wait = (2 * TIMEOUT + 2).to_string();
    let started = Instant::now();
    let run = Run::from(
        local_cmd(
            &env,
            &args(&["run", "m", "--wait-timeout", &wait, "--", "true"]),
        )
        .output()
        .expect("mama runs"),
    );
    assert!(started.elapsed() > Duration::from_secs(2 * TIMEOUT));
    run.fails_saying(75, "holder");
    holder.signal(libc::SIGCONT);
    env.touch("go");
    assert_eq!(holder.finish(LIMIT).code, Some(0));
    assert_eq!(env.info("m")["state"], "free");
}

#[test]
#[cfg_attr(
    not(all(mama_postgres, mama_ip)),
    ignore = "needs a PostgreSQL server and network namespaces: run as root after tests/install-tools"
)]
fn a_network_blip_shorter_than_the_host_timeout_keeps_the_claim() {
    // A timeout long enough that a blip of a few seconds is well inside
    // it: the holder stops its job itself only when the lab has been
    // silent for most of the timeout (see SPEC).
    const BLIP_TIMEOUT: u64 = 10;
    let host = Host::new();
    let (_server, _db, env, mut holder) = remote_holder_within(&host, BLIP_TIMEOUT);
    let claim = env.info("m");
    host.cut();
    // Two seconds, measured by a waiter that gives up meanwhile.
    let run = Run::from(
        local_cmd_within(
            &env,
            &args(&["run", "m", "--wait-timeout", "2", "--", "true"]),
            BLIP_TIMEOUT,
        )
        .output()
        .expect("mama runs"),
    );
    run.fails(75);
    host.restore();
    // Well past the timeout: the claim stood throughout.
    let wait = (BLIP_TIMEOUT + 2).to_string();
    let run = Run::from(
        local_cmd_within(
            &env,
            &args(&["run", "m", "--wait-timeout", &wait, "--", "true"]),
            BLIP_TIMEOUT,
        )
        .output()
        .expect("mama runs"),
    );
    run.fails_saying(75, "holder");
    let info = env.info("m");
    assert_eq!(
        (&info["job_pid"], &info["job_timestamp"]),
        (&claim["job_pid"], &claim["job_timestamp"])
    );
    env.touch("go");
    let run = holder.finish(LIMIT);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(!run.stderr.contains("LOST"), "{run:#?}");
}

#[test]
#[cfg_attr(
    not(all(mama_postgres, mama_ip)),
    ignore = "needs a PostgreSQL server and network namespaces: run as root after tests/install-tools"
)]
fn a_cut_off_holder_stops_its_job_before_the_lab_frees_the_machine() {
    let host = Host::new();
    let (_server, _db, env, mut holder) = remote_holder(&host);
    let mut jobs = Vec::new();
    wait_until("the holder's job", LIMIT, || {
        jobs = children_of(holder.pid());
        !jobs.is_empty()
    });
    host.cut();
    let cut = Instant::now();
    wait_until("the holder's job to be stopped", LIMIT, || {
        jobs.iter().all(|&pid| !alive(pid))
    });
    let stopped = cut.elapsed();
    println!(
        "MEASURED cut-off holder: its job stopped {:.2} s after the cut (MAMA_HOST_TIMEOUT={TIMEOUT})",
        stopped.as_secs_f64()
    );
    // Stopped before the server frees the claim at the timeout: no other
    // host can have started a job on the machine meanwhile.
    assert!(
        stopped < Duration::from_secs(TIMEOUT),
        "stopped after {stopped:?}"
    );
    let run = holder.finish(Duration::from_secs(TIMEOUT * 5 + 30));
    assert_eq!(run.code, Some(125), "{run:#?}");
    assert!(run.stderr.contains("LOST THE CLAIM"), "{run:#?}");
    assert!(!env.path().join("go").exists());
    host.restore();
}

#[test]
#[cfg_attr(
    not(all(mama_postgres, mama_ip)),
    ignore = "needs a PostgreSQL server and network namespaces: run as root after tests/install-tools"
)]
fn two_hosts_running_ten_jobs_each_on_one_machine_never_overlap() {
    let one = Host::new();
    let two = Host::new();
    let server = Server::start(Options {
        listen: vec![one.peer_addr(), two.peer_addr()],
        trust: vec![one.subnet(), two.subnet()],
        ..Options::default()
    });
    let db = server.fresh_database();
    let env = local(&db);
    env.add("m", 1);
    // A job that finds another inside the machine fails.
    let script = "mkdir \"$1/inside\" || exit 99; sleep 0.02; rmdir \"$1/inside\"";
    let job = sh_job(&env, "m", &[], script);
    let codes: Vec<Option<i32>> = std::thread::scope(|scope| {
        let runs: Vec<_> = [&one, &two]
            .into_iter()
            .map(|host| {
                let cmd = || mama_on(host, &server, &db, &env, &job);
                scope.spawn(move || {
                    (0..10)
                        .map(|_| Run::from(cmd().output().expect("mama runs")).code)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        runs.into_iter()
            .flat_map(|run| run.join().expect("a host's runs"))
            .collect()
    });
    assert_eq!(codes, vec![Some(0); 20]);
    let events = env.events();
    let count = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    assert_eq!((count("claimed"), count("released")), (20, 20));
}

#[test]
#[cfg_attr(
    not(all(mama_postgres, mama_ip)),
    ignore = "needs a PostgreSQL server and network namespaces: run as root after tests/install-tools"
)]
fn a_cut_off_hosts_waiters_hold_the_machine_no_longer_than_its_holder() {
    let host = Host::new();
    let (server, db, env, holder) = remote_holder(&host);
    // Three waiters on the holder's host, queued first, then one here.
    let mut remote_waiters = Vec::new();
    for n in 0..3 {
        let job = format!("remote{n}");
        let run = args(&[
            "run",
            "m",
            "--job",
            &job,
            "--wait-timeout",
            "60",
            "--",
            "true",
        ]);
        let mut waiter = Bg::start(mama_on(&host, &server, &db, &env, &run));
        waiter.expect_stderr("waiting to claim it", LIMIT);
        remote_waiters.push(waiter);
    }
    let mut waiter = Bg::start(local_cmd(
        &env,
        &args(&["run", "m", "--wait-timeout", "60", "--", "true"]),
    ));
    waiter.expect_stderr("3 ahead of you", LIMIT);

    host.cut();
    let cut = Instant::now();
    holder.signal(libc::SIGKILL);
    for waiter in &remote_waiters {
        waiter.signal(libc::SIGKILL);
    }
    let run = waiter.finish(Duration::from_secs(TIMEOUT + 30));
    let freed = cut.elapsed();
    println!(
        "MEASURED dead host with waiters: the machine taken here {:.2} s after the cut \
         (MAMA_HOST_TIMEOUT={TIMEOUT})",
        freed.as_secs_f64()
    );
    assert_eq!(run.code, Some(0), "{run:#?}");
    // The dead waiters' places went with their sessions, within the host
    // timeout as the holder's claim did (their sessions' own end, plus
    // the second in which the server looks at a session that waits).
    assert!(
        freed <= Duration::from_secs(TIMEOUT + 2),
        "the dead host's waiters kept the machine {freed:?}"
    );
}

#[test]
#[cfg_attr(
    not(all(mama_postgres, mama_ip)),
    ignore = "needs a PostgreSQL server and network namespaces: run as root after tests/install-tools"
)]
fn a_server_that_does_not_answer_is_waited_for_no_longer_than_the_caller_would() {
    let host = Host::new();
    let server = pg::server_on(host.peer_addr());
    let db = server.fresh_database();
    let env = local(&db);
    env.add("m", 1);
    // Nothing reaches the server from the host, and nothing says so (the
    // server's end of the cable is pulled): a connect would time out after
    // 10 s (a host timeout of 30 s).
    // The host keeps the server's hardware address, so it sends on and
    // is not told "no route to host".
    let link = host.peer_ip(["-o", "link", "show", host.peer_dev()]);
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no hardware address in {link:?}"));
    host.ip([
        "neigh",
        "replace",
        &host.peer_addr().to_string(),
        "lladdr",
        mac,
        "dev",
        host.dev(),
        "nud",
        "permanent",
    ]);
    host.peer_ip(["link", "set", host.peer_dev(), "down"]);
    for (list, limit) in [
        (&["wait", "m", "--timeout", "2"][..], Duration::from_secs(2)),
        (
            &["run", "m", "--no-wait", "--", "true"],
            Duration::from_secs(2),
        ),
    ] {
        let started = Instant::now();
        let run: Run = mama_on_within(&host, &server, &db, &env, &args(list), 30)
            .output()
            .expect("mama runs")
            .into();
        let took = started.elapsed();
        assert_ne!(run.code, Some(0), "{list:?}: {run:#?}");
        assert!(
            run.stderr
                .contains("the server did not answer within 2.0 s"),
            "{list:?}: {run:#?}"
        );
        assert!(
            took < limit + Duration::from_secs(2),
            "{list:?} took {took:?} on a server that does not answer"
        );
    }
}
