//! `mama serve`: the status page in a real browser, updates as server-sent
//! events, the metrics as promtool and a Prometheus server take them, the
//! JSON as `list` and `log` print it, the reminders it commits, and a
//! server that outlives a replaced state file and a restarted database.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::pg::{Options, Server};
use crate::common::web::{self, Browser, Daemon, Serving, get, request, serving};
use crate::common::*;

/// Starts `mama serve` on a free loopback port, with `envs`.
fn serve(env: &TestEnv, envs: &[(&str, &str)]) -> Serving {
    let mut cmd = env.cmd(["serve", "--listen", "127.0.0.1:0"]);
    cmd.envs(envs.iter().copied());
    serving(cmd)
}

/// `list --json` and `/api/machines`, as JSON values.
fn machines(at: SocketAddr) -> serde_json::Value {
    let answer = get(at, "/api/machines");
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

/// The state of `machine` as `/api/machines` shows it.
fn state_of(at: SocketAddr, machine: &str) -> Option<String> {
    machines(at)
        .as_array()?
        .iter()
        .find(|m| m["name"] == machine)
        .map(|m| m["state"].as_str().unwrap_or_default().to_string())
}

/// An open `/events` stream: each server-sent event's data, as it comes.
struct Stream {
    events: mpsc::Receiver<(Instant, String)>,
}

impl Stream {
    fn open(at: SocketAddr) -> Stream {
        Stream {
            events: web::event_stream(at),
        }
    }

    /// Waits for an event whose data holds `part`; panics after `limit`.
    fn expect(&self, part: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((_, data)) if data.contains(part) => return data,
                Ok(_) => {}
                Err(e) => panic!("no event holding {part:?} within {limit:?}: {e}"),
            }
        }
    }
}

/// The row of `machine` in the status table, as the page's HTML has it.
fn row(machine: &str, state: &str) -> String {
    format!("<tr class=\"{state}\" data-machine=\"{machine}\">")
}

/// A job that says when it started (its claim committed before) and runs
/// until killed.
fn marked_job(env: &TestEnv, machine: &str) -> Bg {
    let mark = env.path().join("started");
    Bg::start(env.cmd([
        "run".to_string(),
        machine.to_string(),
        "--".to_string(),
        "sh".to_string(),
        "-c".to_string(),
        format!("touch '{}'; exec sleep 60", mark.display()),
    ]))
}

on_both_backends! {
    fn the_api_answers_what_list_and_log_print(env: &TestEnv) {
        env.add("m1", 1);
        env.add("m2", 2);
        env.run(["reserve", "m2", "--note", "hands off"]).ok();
        env.run(["run", "m1", "--", "true"]).ok();
        let server = serve(env, &[]);
        let listed: serde_json::Value =
            serde_json::from_str(env.run(["list", "--json"]).ok()).expect("JSON");
        assert_eq!(machines(server.addr), listed);
        let log = env.run(["log", "--json"]);
        let all = get(server.addr, "/api/events");
        assert_eq!(all.status, 200);
        assert_eq!(all.body, log.ok());
        assert_eq!(
            get(server.addr, "/api/events?since=0").body,
            log.ok(),
            "since=0 is every event"
        );
        let after_two: Vec<serde_json::Value> = parse_json_lines(log.ok())
            .into_iter()
            .filter(|e| e["seq"].as_u64() > Some(2))
            .collect();
        assert!(!after_two.is_empty());
        assert_eq!(parse_json_lines(&get(server.addr, "/api/events?since=2").body), after_two);
        assert_eq!(get(server.addr, "/api/events?since=two").status, 400);
    }

    fn a_change_reaches_an_open_page_within_a_second(env: &TestEnv) {
        env.add("m", 1);
        let server = serve(env, &[]);
        let stream = Stream::open(server.addr);
        stream.expect(&row("m", "free"), LIMIT);
        let mut job = marked_job(env, "m");
        let mark = env.path().join("started");
        wait_until("the job to start", LIMIT, || mark.exists());
        let claimed = Instant::now();
        stream.expect(&row("m", "busy"), LIMIT);
        let took = claimed.elapsed();
        assert!(took < Duration::from_secs(1), "the claim showed after {took:?}");
        job.signal(libc::SIGTERM);
        job.finish(LIMIT);
        stream.expect(&row("m", "free"), Duration::from_secs(1));
    }

    fn everything_from_the_lab_is_shown_as_text_and_nothing_changes_it(env: &TestEnv) {
        let name = "<script>alert(1)</script>";
        env.add(name, 1);
        env.run(["offline", name, "--reason", "<b>\"broken\" & 'burnt'</b>"]).ok();
        let server = serve(env, &[]);
        let before = env.stored();
        let page = get(server.addr, "/");
        assert_eq!(page.status, 200);
        assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{}", page.body);
        assert!(page.body.contains("&lt;b&gt;&quot;broken&quot; &amp; &#39;burnt&#39;&lt;/b&gt;"));
        assert!(!page.body.contains("<script>alert"), "{}", page.body);
        assert!(!page.body.contains("<b>"));
        assert!(page.header("content-security-policy").is_some_and(|p| p.contains("script-src 'self'")));
        let machine = get(server.addr, "/machine/%3Cscript%3Ealert%281%29%3C%2Fscript%3E");
        assert_eq!(machine.status, 200, "{}", machine.body);
        assert!(machine.body.contains("<h1>&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!machine.body.contains("<script>alert"));
        // Unknown paths, machines and methods; a head too long.
        assert_eq!(get(server.addr, "/nope").status, 404);
        assert_eq!(get(server.addr, "/machine/nosuch").status, 404);
        assert_eq!(get(server.addr, "/machine/%zz").status, 404);
        let post = request(server.addr, "POST", "/", Some("{}"));
        assert_eq!(post.status, 405);
        assert_eq!(post.header("allow"), Some("GET, HEAD"));
        assert_eq!(request(server.addr, "DELETE", "/api/machines", None).status, 405);
        let head = request(server.addr, "HEAD", "/metrics", None);
        assert_eq!((head.status, head.body.as_str()), (200, ""));
        let long = format!("/{}", "a".repeat(20_000));
        assert_eq!(get(server.addr, &long).status, 431);
        assert_eq!(env.stored(), before, "a request changed the lab");
    }

    fn serve_reminds_of_a_reservation_s_end_and_ends_it_with_nothing_else_running(env: &TestEnv) {
        env.add("m", 1);
        env.add("other", 2);
        env.run(["reserve", "m", "--for", "3s"]).ok();
        let told = env.path().join("told");
        let notify = format!("cat >> '{}'", told.display());
        let _server = serve(env, &[("MAMA_NOTIFY", &notify)]);
        // The lease ends within 15 minutes: reminded of at once, once.
        wait_until("the expiring event", LIMIT, || env.event_kinds("m").contains(&"expiring".to_string()));
        wait_until("the expired event", LIMIT, || env.event_kinds("m").contains(&"expired".to_string()));
        let kinds = env.event_kinds("m");
        assert_eq!(kinds.iter().filter(|k| *k == "expiring").count(), 1, "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| *k == "expired").count(), 1, "{kinds:?}");
        assert!(env.event_kinds("other").iter().all(|k| k == "added"));
        assert_eq!(env.info("m")["reservation"], serde_json::Value::Null);
        let detail = &env.event_details("m", "expiring")[0];
        assert!(detail.starts_with("the reservation of "), "{detail}");
        // The notify command heard of both.
        wait_until("the notify command to hear of both", LIMIT, || {
            let text = std::fs::read_to_string(&told).unwrap_or_default();
            text.contains("\"event\":\"expiring\"") && text.contains("\"event\":\"expired\"")
        });
    }

    fn a_server_started_again_does_not_remind_twice(env: &TestEnv) {
        env.add("m", 1);
        env.add("other", 2);
        env.run(["reserve", "other", "--for", "10m"]).ok();
        let server = serve(env, &[]);
        wait_until("the expiring event", LIMIT, || env.event_kinds("other").contains(&"expiring".to_string()));
        drop(server);
        let again = serve(env, &[]);
        let stream = Stream::open(again.addr);
        stream.expect(&row("m", "free"), LIMIT);
        // A change it has looked at: its reminders were weighed before.
        env.run(["reserve", "m"]).ok();
        stream.expect(&row("m", "reserved"), LIMIT);
        let kinds = env.event_kinds("other");
        assert_eq!(kinds.iter().filter(|k| *k == "expiring").count(), 1, "{kinds:?}");
        assert!(!kinds.contains(&"expired".to_string()), "{kinds:?}");
    }
}

#[test]
fn a_browser_that_goes_away_leaves_the_server_serving() {
    let env = TestEnv::new();
    env.add("m", 1);
    let mut server = serve(&env, &[]);
    // A page that read all it was sent and closed (a FIN, no reset):
    // the server's next write meets the reset, the one after a broken
    // pipe.
    {
        use std::io::Read;
        let mut gone = TcpStream::connect(server.addr).expect("connect");
        gone.write_all(format!("GET /events HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes())
            .expect("ask");
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while !String::from_utf8_lossy(&got).contains("</table>") {
            let n = gone.read(&mut buf).expect("read");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        gone.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        while let Ok(n) = gone.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
    let stream = Stream::open(server.addr);
    stream.expect(&row("m", "free"), LIMIT);
    // Each change is written to the closed connection too: the first
    // meets its reset, the next a broken pipe.
    for (args, state) in [(["reserve", "m"], "reserved"), (["release", "m"], "free")]
        .into_iter()
        .cycle()
        .take(4)
    {
        env.run(args).ok();
        stream.expect(&row("m", state), LIMIT);
    }
    assert!(server.bg.running(), "the server died: {:?}", server.bg.seen);
    assert_eq!(get(server.addr, "/").status, 200);
}

#[test]
fn a_machine_s_page_charts_its_use_and_lists_its_events() {
    let env = TestEnv::new();
    env.add("m", 1);
    env.add("idle", 2);
    // Two seconds at least, as the history counts them.
    env.run(["run", "m", "--", "sleep", "2"]).ok();
    let server = serve(&env, &[]);
    let page = get(server.addr, "/machine/m");
    assert_eq!(page.status, 200);
    assert_eq!(page.body.matches("<rect class=\"day\"").count(), 30);
    // Today's bar: the second of the job in the part of today gone by.
    let busy: Vec<f64> = page
        .body
        .split("data-busy=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect();
    assert_eq!(busy.len(), 30);
    assert!(busy[29] > 0.0, "{busy:?}");
    assert!(busy[..29].iter().all(|b| *b == 0.0), "{busy:?}");
    assert!(page.body.contains("<td>claimed</td>") && page.body.contains("<td>released</td>"));
    let idle = get(server.addr, "/machine/idle");
    assert!(idle.body.contains("data-busy=\"0\""));
    assert!(!idle.body.contains("<td>claimed</td>"));
}

/// The status line of `GET target` sent to `at` with the Host header
/// `host`.
fn status_for_host(at: SocketAddr, target: &str, host: &str) -> String {
    let mut stream = TcpStream::connect(at).expect("connect");
    stream.set_read_timeout(Some(LIMIT)).expect("timeout");
    write!(stream, "GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("ask");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("answer");
    line.trim_end().to_string()
}

#[test]
fn a_page_elsewhere_whose_name_is_rebound_to_this_host_reads_nothing() {
    let env = TestEnv::new();
    env.add("m", 1);
    let server = serve(&env, &[]);
    let port = server.addr.port();
    // A web page of another site whose name now resolves to 127.0.0.1
    // (DNS rebinding) asks under that name.
    let rebound = format!("rebound.example:{port}");
    for path in [
        "/",
        "/api/machines",
        "/api/events",
        "/metrics",
        "/events",
        "/machine/m",
    ] {
        assert_eq!(
            status_for_host(server.addr, path, &rebound),
            "HTTP/1.1 421 Misdirected Request",
            "{path}"
        );
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "LOCALHOST".to_string(),
        format!("lab.localhost:{port}"),
        "127.0.0.1".to_string(),
    ] {
        assert_eq!(
            status_for_host(server.addr, "/api/machines", &host),
            "HTTP/1.1 200 OK",
            "{host}"
        );
    }
    // Listening on every interface, it is reached by the host's names.
    let any = serving(env.cmd(["serve", "--listen", "0.0.0.0:0"]));
    let named = format!("labhost.example:{}", any.addr.port());
    assert_eq!(
        status_for_host(any.addr, "/api/machines", &named),
        "HTTP/1.1 200 OK"
    );
}

#[test]
fn it_listens_on_this_host_only_unless_told() {
    let env = TestEnv::new();
    env.add("m", 1);
    let mut bg = env.start(["serve"]);
    let line = bg.expect_stderr("serving", LIMIT);
    assert!(line.ends_with("on http://127.0.0.1:8080/"), "{line}");
    // The listening socket's own address, as the kernel has it: 127.0.0.1
    // port 8080 (hex, in the byte order of /proc/net/tcp).
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let listening: Vec<&str> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(3) == Some(&"0A") && fields.get(1)?.ends_with(":1F90")).then(|| fields[1])
        })
        .collect();
    assert_eq!(listening, ["0100007F:1F90"]);
    assert_eq!(
        get("127.0.0.1:8080".parse().expect("addr"), "/").status,
        200
    );
    drop(bg);
    // Any other address only when given.
    let mut any = env.start(["serve", "--listen", "0.0.0.0:0"]);
    assert!(
        any.expect_stderr("serving", LIMIT)
            .contains("http://0.0.0.0:")
    );
    env.run(["serve", "--listen", "nowhere"]).fails(2);
    // An address in use: an error naming it.
    let taken = any
        .seen
        .iter()
        .find_map(|l| l.rsplit_once("http://0.0.0.0:"))
        .map(|(_, port)| port.trim_end_matches('/').to_string())
        .expect("the port");
    let address = format!("0.0.0.0:{taken}");
    env.run(["serve", "--listen", &address])
        .fails_saying(1, &format!("cannot listen on {address}"));
    // No lab: nothing served, nothing created.
    let empty = TestEnv::new();
    empty
        .run(["serve", "--listen", "127.0.0.1:0"])
        .fails_saying(1, "no lab at");
    assert!(empty.files().is_empty(), "{:?}", empty.files());
}

#[test]
fn it_outlives_a_replaced_and_a_broken_state_file() {
    let env = TestEnv::new();
    env.add("m", 1);
    let server = serve(&env, &[]);
    let stream = Stream::open(server.addr);
    stream.expect(&row("m", "free"), LIMIT);
    // `import --replace`: a new file renamed into place.
    let file = env.path().join("other.xml");
    std::fs::write(&file, lab_xml(&[machine_xml("n", 2, &[])])).expect("write");
    env.run(["import", "--replace", file.to_str().expect("path")])
        .ok();
    stream.expect(&row("n", "free"), Duration::from_secs(1));
    // A file renamed over it by hand.
    let new = env.path().join("new.xml");
    std::fs::write(&new, lab_xml(&[machine_xml("o", 3, &[])])).expect("write");
    std::fs::rename(&new, &env.state).expect("rename");
    stream.expect(&row("o", "free"), Duration::from_secs(1));
    // Unreadable for a while: the page says so, and recovers.
    std::fs::write(&new, "<settings><machine>").expect("write");
    std::fs::rename(&new, &env.state).expect("rename");
    stream.expect("The lab cannot be read now", Duration::from_secs(1));
    assert!(get(server.addr, "/metrics").body.contains("\nmama_up 0\n"));
    assert_eq!(
        state_of(server.addr, "o").as_deref(),
        Some("free"),
        "the last look stays"
    );
    std::fs::write(&new, lab_xml(&[machine_xml("p", 4, &[])])).expect("write");
    std::fs::rename(&new, &env.state).expect("rename");
    let data = stream.expect(&row("p", "free"), Duration::from_secs(1));
    assert!(!data.contains("cannot be read"));
    assert!(get(server.addr, "/metrics").body.contains("\nmama_up 1\n"));
}

#[test]
fn it_follows_the_lab_s_folder_replaced_or_removed_and_made_again() {
    let env = TestEnv::new();
    let folder = env.path().join("lab");
    std::fs::create_dir(&folder).expect("folder");
    let state = folder.join("mama.xml");
    let mama = |args: &[&str]| -> Run {
        mama_command(MAMA, &state)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("mama runs")
            .into()
    };
    mama(&["add", "m", "--mac", "aa:bb:cc:dd:ee:01"]).ok();
    let mut cmd = mama_command(MAMA, &state);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let server = serving(cmd);
    let stream = Stream::open(server.addr);
    stream.expect(&row("m", "free"), LIMIT);
    // A copy put back in the folder's place: the server reads the lab at
    // its path, not the folder it found there when it started.
    std::fs::rename(&folder, env.path().join("lab.old")).expect("rename");
    std::fs::create_dir(&folder).expect("folder");
    mama(&["add", "n", "--mac", "aa:bb:cc:dd:ee:02"]).ok();
    let data = stream.expect(&row("n", "free"), LIMIT);
    assert!(!data.contains("data-machine=\"m\""), "{data}");
    let events = get(server.addr, "/api/events").body;
    assert!(events.contains("\"machine\":\"n\""), "{events}");
    assert!(!events.contains("\"machine\":\"m\""), "{events}");
    // Removed, then made again.
    std::fs::remove_dir_all(&folder).expect("remove");
    stream.expect("The lab cannot be read now", LIMIT);
    std::fs::create_dir(&folder).expect("folder");
    mama(&["add", "o", "--mac", "aa:bb:cc:dd:ee:03"]).ok();
    let data = stream.expect(&row("o", "free"), LIMIT);
    assert!(!data.contains("cannot be read"), "{data}");
}

on_both_backends! {
    fn a_history_entry_of_a_kind_this_mama_does_not_know_is_skipped(env: &TestEnv) {
        env.add("m", 1);
        env.run(["reserve", "m"]).ok();
        // What a newer mama might record.
        let future = "{\"seq\":3,\"time\":1,\"machine\":\"m\",\"event\":\"from_the_future\",\
                      \"job\":null,\"pid\":null,\"user\":\"u\",\"host\":\"h\",\"detail\":null}";
        match &env.db {
            Some(db) => db.batch(
                "INSERT INTO mama_event (seq, time, machine, event, \"user\", host) \
                 VALUES (3, 1, 'm', 'from_the_future', 'u', 'h')",
            ),
            None => {
                let log = env.path().join("mama.xml.log");
                let mut text = std::fs::read_to_string(&log).unwrap_or_default();
                text.push_str(future);
                text.push('\n');
                std::fs::write(&log, text).expect("write the log");
            }
        }
        env.run(["release", "m"]).ok();
        let kinds = env.event_kinds("m");
        assert_eq!(kinds, ["added", "reserved", "unreserved"], "{kinds:?}");
        env.run(["info", "m"]).ok();
    }
}

#[test]
#[cfg_attr(
    not(mama_postgres),
    ignore = "needs a PostgreSQL server run as the postgres user: run as root after tests/install-tools"
)]
fn it_outlives_a_database_restart() {
    let server = Server::start(Options::default());
    let db = server.fresh_database();
    let env = TestEnv {
        dir: tempfile::tempdir().expect("temporary folder"),
        state: db.url.clone().into(),
        db: Some(db.clone()),
    };
    env.add("m", 1);
    // A short host timeout: a look while the server is away fails after it.
    let mut serving = serve(&env, &[("MAMA_HOST_TIMEOUT", "2")]);
    let stream = Stream::open(serving.addr);
    stream.expect(&row("m", "free"), LIMIT);
    server.stop();
    // Nothing tells of a change while the server is down; the next look
    // (the listening session lost) says the lab cannot be read.
    serving.bg.expect_stderr("cannot read the lab", LIMIT);
    stream.expect("The lab cannot be read now", LIMIT);
    server.start_again();
    env.run(["reserve", "m"]).ok();
    stream.expect(&row("m", "reserved"), LIMIT);
    // Listening again: the next change shows within a second.
    env.run(["release", "m"]).ok();
    stream.expect(&row("m", "free"), Duration::from_secs(1));
}

#[test]
#[cfg_attr(
    not(mama_chromium),
    ignore = "needs chromium and chromedriver: run tests/install-tools as root"
)]
fn the_page_in_a_real_browser_shows_the_machines_and_follows_a_claim() {
    let env = TestEnv::new();
    env.add("m", 1);
    env.add("<script>alert(1)</script>", 2);
    let server = serve(&env, &[]);
    let browser = Browser::start(env.path());
    browser.open(&format!("http://{}/", server.addr));
    let names = browser.run(
        "return Array.from(document.querySelectorAll('#machines tbody td.name'))\
         .map(td => td.textContent);",
    );
    assert_eq!(names, serde_json::json!(["m", "<script>alert(1)</script>"]));
    assert_eq!(browser.alert(), None, "an alert opened");
    let scripts = browser.run("return document.scripts.length;");
    assert_eq!(scripts, 1, "only the page's own script");
    let state = || {
        browser
            .run("return document.querySelector('tr[data-machine=\"m\"] td.state').textContent;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(state(), "free");
    wait_until("the page to listen for updates", LIMIT, || {
        browser.run("return document.getElementById('link').textContent;") == "live"
    });
    let mut job = marked_job(&env, "m");
    let mark = env.path().join("started");
    wait_until("the job to start", LIMIT, || mark.exists());
    let claimed = Instant::now();
    wait_until("the page to show the claim", LIMIT, || state() == "busy");
    let took = claimed.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the page showed the claim after {took:?}"
    );
    let user =
        browser.run("return document.querySelector('tr[data-machine=\"m\"] td.user').textContent;");
    assert_eq!(user, user_name().as_str());
    job.signal(libc::SIGTERM);
    job.finish(LIMIT);
    wait_until("the page to show the release", LIMIT, || state() == "free");
    // Updates brought no script either.
    assert_eq!(browser.alert(), None);
    let text = browser.run(
        "return document.querySelector('tr[data-machine=\"<script>alert(1)</script>\"] td.name').textContent;",
    );
    assert_eq!(text, "<script>alert(1)</script>");
    // A machine's page follows its machine too (it loads itself again).
    browser.open(&format!("http://{}/machine/m", server.addr));
    let shown = || {
        browser
            .run("return document.getElementById('state').textContent;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(shown(), "free");
    wait_until("the machine's page to listen for updates", LIMIT, || {
        browser.run("return document.getElementById('link').textContent;") == "live"
    });
    std::fs::remove_file(&mark).expect("remove the mark");
    let mut job = marked_job(&env, "m");
    wait_until("the job to start", LIMIT, || mark.exists());
    wait_until("the machine's page to show the claim", LIMIT, || {
        shown() == "busy"
    });
    job.signal(libc::SIGTERM);
    job.finish(LIMIT);
    assert_eq!(browser.alert(), None);
}

#[test]
#[cfg_attr(
    not(mama_chromium),
    ignore = "needs chromium and chromedriver: run tests/install-tools as root"
)]
fn a_page_turned_away_once_listens_again() {
    let env = TestEnv::new();
    env.add("m", 1);
    let addr: SocketAddr = format!("127.0.0.1:{}", web::free_port())
        .parse()
        .expect("addr");
    let listen = addr.to_string();
    let server = serving(env.cmd(["serve", "--listen", &listen]));
    let browser = Browser::start(env.path());
    browser.open(&format!("http://{addr}/"));
    let link = || browser.run("return document.getElementById('link').textContent;");
    wait_until("the page to listen for updates", LIMIT, || link() == "live");
    // The server restarted behind a proxy that answers 502 meanwhile, or
    // full (503): the page's stream is answered with an error once.
    drop(server);
    let turned_away = std::net::TcpListener::bind(addr).expect("bind");
    let (asked, heard) = mpsc::channel();
    let refuser = std::thread::spawn(move || {
        for stream in turned_away.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = std::io::Read::read(&mut stream, &mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            if request.starts_with("STOP") {
                break;
            }
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
                  Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n",
            );
            if request.starts_with("GET /events") {
                let _ = asked.send(());
            }
        }
    });
    heard
        .recv_timeout(LIMIT)
        .expect("the page to ask for its updates again");
    TcpStream::connect(addr)
        .and_then(|mut s| s.write_all(b"STOP"))
        .expect("stop the refuser");
    refuser.join().expect("the refuser ends");
    // The server back: the page listens again, and follows a change.
    let _again = serving(env.cmd(["serve", "--listen", &listen]));
    env.run(["reserve", "m"]).ok();
    wait_until("the page to show the reservation", LIMIT, || {
        browser.run("return document.querySelector('tr[data-machine=\"m\"] td.state').textContent;")
            == "reserved"
    });
    assert_eq!(link(), "live");
}

#[test]
#[cfg_attr(
    not(mama_chromium),
    ignore = "needs chromium and chromedriver: run tests/install-tools as root"
)]
fn seven_pages_open_in_one_browser_all_load_and_follow_the_lab() {
    let env = TestEnv::new();
    env.add("m", 1);
    let server = serve(&env, &[]);
    let browser = Browser::start(env.path());
    // A browser opens at most six connections to one server: seven
    // pages, each with a stream of its own, would leave the seventh
    // loading for ever.
    for page in 0..7 {
        if page > 0 {
            browser.new_tab();
        }
        let url = match page % 2 {
            0 => format!("http://{}/", server.addr),
            _ => format!("http://{}/machine/m", server.addr),
        };
        assert!(
            browser.open_within(&url, Duration::from_secs(10)),
            "page {page} did not load"
        );
        wait_until("the page to listen for updates", LIMIT, || {
            browser.run("return document.getElementById('link').textContent;") == "live"
        });
    }
    env.run(["reserve", "m"]).ok();
    for tab in browser.tabs() {
        browser.turn_to(&tab);
        wait_until("every page to follow the reservation", LIMIT, || {
            let state = browser.run(
                "const cell = document.querySelector('tr[data-machine=\"m\"] td.state') \
                 || document.getElementById('state'); return cell.textContent;",
            );
            state.as_str().is_some_and(|s| s.starts_with("reserved"))
        });
    }
}

#[test]
#[cfg_attr(
    not(mama_prometheus),
    ignore = "needs prometheus and promtool: run tests/install-tools as root"
)]
fn prometheus_takes_the_metrics() {
    let env = TestEnv::new();
    env.add("m", 1);
    env.add("q\"uote", 2);
    env.run(["run", "m", "--", "true"]).ok();
    env.run(["reserve", "q\"uote"]).ok();
    let server = serve(&env, &[]);
    let metrics = get(server.addr, "/metrics");
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4"))
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.body.as_bytes())
        .expect("write");
    let checked = check.wait_with_output().expect("promtool ends");
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("mama_claims_total{machine=\"m\"} 1\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("mama_machine_reserved{machine=\"q\\\"uote\"} 1\n")
    );
    // The run's wait, in the histogram's last bucket and its count.
    for line in [
        "mama_claim_wait_seconds_bucket{machine=\"m\",le=\"+Inf\"} 1\n",
        "mama_claim_wait_seconds_count{machine=\"m\"} 1\n",
        "mama_claim_wait_seconds_count{machine=\"q\\\"uote\"} 0\n",
    ] {
        assert!(metrics.body.contains(line), "{line} in {}", metrics.body);
    }
    // A real server scrapes it every second.
    let port = web::free_port();
    let config = env.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mama\n    \
             static_configs:\n      - targets: ['{}']\n",
            server.addr
        ),
    )
    .expect("config");
    let log = std::fs::File::create(env.path().join("prometheus.log")).expect("log");
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            env.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let _prometheus = Daemon::start(cmd);
    let at: SocketAddr = ([127, 0, 0, 1], port).into();
    web::await_listening(at, "prometheus to listen");
    wait_until(
        "prometheus to have scraped the claims",
        Duration::from_secs(60),
        || {
            let Ok(answer) =
                web::try_request(at, "GET", "/api/v1/query?query=mama_claims_total", None)
            else {
                return false;
            };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&answer.body) else {
                return false;
            };
            value["data"]["result"].as_array().is_some_and(|results| {
                results
                    .iter()
                    .any(|r| r["metric"]["machine"] == "m" && r["value"][1] == "1")
            })
        },
    );
}
