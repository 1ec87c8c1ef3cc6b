//! The power device drivers, through the library's API, against real
//! processes (the command driver), an mPower's HTTP server on a host of
//! its own (tests/common/mpower.rs) and a USB-RLY08 behind a
//! pseudo-terminal (tests/common/usbrly08.rs).

use crate::common::mpower::{Mpower, Unknown};
use crate::common::netns::Host;
use crate::common::usbrly08::RelayBoard;
use crate::common::*;

use std::path::Path;
use std::time::{Duration, Instant};

use mama::device::{Context, Limits, Reading, Switch, open, open_within, press};
use mama::model::device::{Device, Driver};

fn device(name: &str, driver: Driver, options: &[(&str, &str)]) -> Device {
    let options = options
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Device::new(name, driver, options).expect("a valid device")
}

/// The error of `what`, which must fail.
#[track_caller]
fn error<T>(what: mama::error::Result<T>) -> String {
    match what {
        Ok(_) => panic!("no error"),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn assert_says(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
}

fn read_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

// The command driver.

/// A device whose commands keep slot N's state in `dir/slotN` (`on 12.5W`
/// or `OFF`), and write what they were given to `dir/envN`.
fn file_switch(dir: &Path, status: bool) -> Device {
    let d = dir.display();
    let on = format!(
        "printf 'on 12.5W\\n' > '{d}/slot{{slot}}'; \
         printf '%s|%s|%s|%s|%s|%s|%s|%s\\n' \"$MAMA_DEVICE\" \"$MAMA_SLOT\" \
         \"${{MAMA_MACHINE-unset}}\" \"${{MAMA_MAC-unset}}\" \"${{MAMA_IP-unset}}\" \
         \"$(readlink /proc/$$/fd/0)\" \"$(readlink /proc/$$/fd/1)\" \
         \"$(cut -d' ' -f5 /proc/$$/stat) $$\" > '{d}/env{{slot}}'"
    );
    let off = format!("echo OFF > '{d}/slot{{slot}}'");
    let cat = format!("cat '{d}/slot{{slot}}'");
    let mut options = vec![("on", on.as_str()), ("off", off.as_str())];
    if status {
        options.push(("status", cat.as_str()));
    }
    device("pdu", Driver::Command, &options)
}

#[test]
fn commands_switch_and_read_a_slot_with_the_machine_in_their_environment() {
    let dir = tempfile::tempdir().expect("a folder");
    let dev = file_switch(dir.path(), true);
    let context = Context {
        machine: Some("rig1".into()),
        mac: Some("52:54:00:12:34:56".into()),
        ip: Some("10.0.0.7".into()),
    };
    let mut switch = open(&dev, &context).expect("opened");
    switch.set(3, true).expect("switched on");
    assert_eq!(read_file(&dir.path().join("slot3")), "on 12.5W\n");
    let env = read_file(&dir.path().join("env3"));
    let fields: Vec<&str> = env.trim_end().split('|').collect();
    let our_stderr = std::fs::read_link("/proc/self/fd/2").expect("our stderr");
    assert_eq!(
        fields[..6],
        [
            "pdu",
            "3",
            "rig1",
            "52:54:00:12:34:56",
            "10.0.0.7",
            "/dev/null"
        ],
        "{env}"
    );
    // What `on` prints goes to mama's stderr, not its stdout.
    assert_eq!(Path::new(fields[6]), our_stderr, "{env}");
    // The command leads a process group of its own.
    let (group, pid) = fields[7].split_once(' ').expect("group and PID");
    assert_eq!(group, pid, "{env}");
    assert_eq!(
        switch.read(3).expect("read"),
        Reading {
            on: true,
            watts: Some(12.5),
            volts: None,
            amps: None
        }
    );
    switch.set(3, false).expect("switched off");
    assert_eq!(read_file(&dir.path().join("slot3")), "OFF\n");
    let off = switch.read(3).expect("read");
    assert!(!off.on && off.watts.is_none(), "{off:?}");

    // Without a machine, nothing of one is passed on.
    let mut switch = open(&dev, &Context::default()).expect("opened");
    switch.set(1, true).expect("switched on");
    let env = read_file(&dir.path().join("env1"));
    assert!(env.starts_with("pdu|1|unset|unset|unset|"), "{env}");
}

#[test]
fn without_a_status_command_a_switch_is_its_exit_status() {
    let dev = device(
        "plain",
        Driver::Command,
        &[("on", "true"), ("off", "echo failing >&2; exit 3")],
    );
    let mut switch = open(&dev, &Context::default()).expect("opened");
    switch.set(2, true).expect("`true` switches on");
    let err = error(switch.set(2, false));
    assert_says(
        &err,
        &[
            "device plain, slot 2",
            "its off command `echo failing >&2; exit 3`",
            "exited with status 3",
        ],
    );
    let err = error(switch.read(2));
    assert_says(&err, &["device plain, slot 2", "no status command"]);
}

#[test]
fn status_output_is_read_and_checked() {
    let dir = tempfile::tempdir().expect("a folder");
    let d = dir.path().display();
    let dev = device(
        "st",
        Driver::Command,
        &[
            ("on", "true"),
            ("off", "true"),
            ("status", &format!("cat '{d}/out{{slot}}'")),
        ],
    );
    let mut switch = open(&dev, &Context::default()).expect("opened");
    let read = |switch: &mut Box<dyn Switch>, slot: u32, text: &str| {
        std::fs::write(dir.path().join(format!("out{slot}")), text).expect("write");
        switch.read(slot)
    };
    let r = read(&mut switch, 1, "ON 7W\n").expect("read");
    assert_eq!((r.on, r.watts), (true, Some(7.0)));
    let r = read(&mut switch, 2, "0\n").expect("read");
    assert_eq!((r.on, r.watts), (false, None));
    let r = read(&mut switch, 3, "1 0.25 and the rest\n").expect("read");
    assert_eq!((r.on, r.watts), (true, Some(0.25)));
    let err = error(read(&mut switch, 4, "maybe\n"));
    assert_says(&err, &["device st, slot 4", "printed 'maybe'"]);
    let err = error(read(&mut switch, 5, "on lots\n"));
    assert_says(&err, &["printed 'on lots'"]);
    // No such file: `cat` fails.
    let err = error(switch.read(6));
    assert_says(&err, &["its status command `cat ", "exited with status 1"]);
}

#[test]
fn a_switch_the_status_does_not_confirm_is_an_error() {
    let dev = device(
        "liar",
        Driver::Command,
        &[("on", "true"), ("off", "true"), ("status", "echo off")],
    );
    let limits = Limits {
        confirm: Duration::from_millis(300),
        ..Limits::default()
    };
    let mut switch = open_within(&dev, &Context::default(), limits).expect("opened");
    switch.set(1, false).expect("it reads off");
    let err = error(switch.set(1, true));
    assert_says(&err, &["device liar, slot 1", "still reads off"]);
}

#[test]
fn a_command_that_overruns_its_limit_has_its_group_killed() {
    let dir = tempfile::tempdir().expect("a folder");
    let d = dir.path().display();
    let limits = Limits {
        command: Duration::from_secs(1),
        ..Limits::default()
    };
    // One that ends on SIGTERM, one that must be killed.
    for (name, line, within) in [
        (
            "polite",
            format!("sleep 60 & echo $! > '{d}/polite'; wait"),
            2.5,
        ),
        (
            "stubborn",
            format!("trap '' TERM; sleep 60 & echo $! > '{d}/stubborn'; wait"),
            4.5,
        ),
    ] {
        let dev = device(name, Driver::Command, &[("on", &line), ("off", "true")]);
        let mut switch = open_within(&dev, &Context::default(), limits).expect("opened");
        let start = Instant::now();
        let err = error(switch.set(1, true));
        let took = start.elapsed().as_secs_f64();
        assert_says(
            &err,
            &[
                &format!("device {name}, slot 1"),
                "did not finish within 1s; its process group was killed",
            ],
        );
        assert!((1.0..within).contains(&took), "{name} took {took} s");
        let sleeper: u32 = read_file(&dir.path().join(name))
            .trim()
            .parse()
            .expect("the background sleep's PID");
        wait_until("the background sleep to be killed", LIMIT, || {
            !alive(sleeper)
        });
    }
}

#[test]
fn a_slot_the_device_lacks_runs_no_command() {
    let dir = tempfile::tempdir().expect("a folder");
    let d = dir.path().display();
    let on = format!("touch '{d}/ran{{slot}}'");
    let dev = device(
        "four",
        Driver::Command,
        &[("on", &on), ("off", "true"), ("slots", "4")],
    );
    let mut switch = open(&dev, &Context::default()).expect("opened");
    assert_says(
        &error(switch.set(5, true)),
        &["four has 4 slots", "no slot 5"],
    );
    assert_says(&error(switch.set(0, true)), &["slot 0 is no slot"]);
    switch.set(4, true).expect("slot 4 is there");
    let ran: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ran, ["ran4"]);
}

// The mpower driver.

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip)),
    ignore = "needs network namespaces: run as root, with ip(8) (tests/install-tools)"
)]
fn an_mpower_outlet_is_switched_read_and_measured() {
    let host = Host::new();
    let bar = Mpower::on_host(&host, 3);
    assert_eq!(bar.address(), host.addr().to_string());
    let dev = device("pdu", Driver::Mpower, &[("address", &bar.address())]);
    let mut switch = open(&dev, &Context::default()).expect("opened");
    switch.set(2, true).expect("switched on");
    assert_eq!(bar.outputs(), [false, true, false]);
    let on = switch.read(2).expect("read");
    assert_eq!(
        on,
        Reading {
            on: true,
            watts: Some(12.0),
            volts: Some(230.5),
            amps: Some(12.0 / 230.5)
        }
    );
    switch.set(2, false).expect("switched off");
    assert_eq!(bar.outputs(), [false, false, false]);
    let off = switch.read(2).expect("read");
    assert_eq!((off.on, off.watts), (false, Some(0.0)));
    // What is read is the device's, switched by hand too.
    bar.set_output(3, true);
    assert!(switch.read(3).expect("read").on);

    let requests = bar.requests();
    let login = &requests[0];
    assert_eq!(login.line(), "POST /login.cgi");
    assert_eq!(login.body, "username=ubnt&password=ubnt");
    let session = login.session.clone().expect("a session cookie");
    assert!(
        session.len() == 32 && session.chars().all(|c| c.is_ascii_hexdigit()),
        "{session}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.session.as_ref() == Some(&session))
    );
    assert!(requests.iter().all(|r| r.version == "HTTP/1.0"));
    assert_eq!(
        requests.iter().filter(|r| r.path == "/login.cgi").count(),
        1,
        "{requests:#?}"
    );
    let puts: Vec<(String, String)> = requests
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| (r.path.clone(), r.body.clone()))
        .collect();
    assert_eq!(
        puts,
        [
            ("/sensors/2".to_string(), "output=1".to_string()),
            ("/sensors/2".to_string(), "output=0".to_string())
        ]
    );
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip)),
    ignore = "needs network namespaces: run as root, with ip(8) (tests/install-tools)"
)]
fn an_mpower_that_forgot_the_session_is_logged_in_again() {
    let host = Host::new();
    let bar = Mpower::on_host(&host, 2);
    let dev = device("pdu", Driver::Mpower, &[("address", &bar.address())]);
    let mut switch = open(&dev, &Context::default()).expect("opened");
    let logins = || {
        bar.requests()
            .iter()
            .filter(|r| r.path == "/login.cgi")
            .count()
    };
    for how in [Unknown::Redirect, Unknown::Empty] {
        bar.answer_unknown(how);
        switch.read(1).expect("read");
        let before = logins();
        bar.forget_sessions();
        assert!(!switch.read(1).expect("read after the device forgot").on);
        bar.forget_sessions();
        switch
            .set(1, true)
            .expect("switched after the device forgot");
        assert!(bar.output(1));
        bar.forget_sessions();
        switch
            .set(1, false)
            .expect("switched after the device forgot");
        assert_eq!(logins(), before + 3, "{how:?}: {:#?}", bar.requests());
    }
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip)),
    ignore = "needs network namespaces: run as root, with ip(8) (tests/install-tools)"
)]
fn a_wrong_mpower_password_is_a_failed_login() {
    let host = Host::new();
    let bar = Mpower::on_host(&host, 3);
    let password = "s3cret & =x%";
    bar.set_login("admin", password);
    let wrong = device(
        "pdu",
        Driver::Mpower,
        &[("address", &bar.address()), ("user", "admin")],
    );
    let mut switch = open(&wrong, &Context::default()).expect("opened");
    let err = error(switch.set(1, true));
    assert_says(
        &err,
        &[
            "device pdu, slot 1",
            "login to",
            "as admin failed",
            "wrong user or password",
        ],
    );
    assert_eq!(bar.outputs(), [false, false, false]);
    assert!(!bar.requests().iter().any(|r| r.method == "PUT"));

    let right = device(
        "pdu",
        Driver::Mpower,
        &[
            ("address", &bar.address()),
            ("user", "admin"),
            ("password", password),
        ],
    );
    let mut switch = open(&right, &Context::default()).expect("opened");
    switch
        .set(1, true)
        .expect("logged in with the right password");
    assert!(bar.output(1));
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip)),
    ignore = "needs network namespaces: run as root, with ip(8) (tests/install-tools)"
)]
fn an_mpower_that_is_down_is_an_error_within_the_timeout() {
    let host = Host::new();
    let dev = device(
        "pdu",
        Driver::Mpower,
        &[("address", &host.addr().to_string())],
    );
    let mut switch = open(&dev, &Context::default()).expect("opened");
    // Nothing listens.
    let start = Instant::now();
    let err = error(switch.read(1));
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_says(&err, &["device pdu, slot 1", "refused the connection"]);

    // It listens but never answers.
    let bar = Mpower::on_host(&host, 3);
    bar.hang();
    let mut switch = open(&dev, &Context::default()).expect("opened");
    let start = Instant::now();
    let err = error(switch.set(1, true));
    let took = start.elapsed().as_secs_f64();
    assert_says(&err, &["device pdu, slot 1", "no answer within 3s"]);
    assert!((2.5..5.0).contains(&took), "took {took} s");

    // Its cable is pulled.
    let cut = Host::new();
    let far = Mpower::on_host(&cut, 3);
    let dev = device("pdu", Driver::Mpower, &[("address", &far.address())]);
    let mut switch = open(&dev, &Context::default()).expect("opened");
    switch.read(1).expect("read while connected");
    cut.cut();
    let start = Instant::now();
    let err = error(switch.read(1));
    let took = start.elapsed().as_secs_f64();
    assert_says(&err, &["device pdu, slot 1", "no answer within 3s"]);
    assert!((2.5..5.0).contains(&took), "took {took} s");
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_ip)),
    ignore = "needs network namespaces: run as root, with ip(8) (tests/install-tools)"
)]
fn an_outlet_the_mpower_lacks_is_not_switched() {
    let host = Host::new();
    let bar = Mpower::on_host(&host, 3);
    let dev = device("pdu", Driver::Mpower, &[("address", &bar.address())]);
    let mut switch = open(&dev, &Context::default()).expect("opened");
    let err = error(switch.set(5, true));
    assert_says(
        &err,
        &[
            "device pdu, slot 5",
            "has no outlet 5 (its outlets: 1, 2, 3)",
        ],
    );
    assert_says(&error(switch.read(4)), &["has no outlet 4"]);
    assert!(!bar.requests().iter().any(|r| r.method == "PUT"));

    // Beyond the slots the lab gives it, the device is not even asked.
    let two = device(
        "pdu2",
        Driver::Mpower,
        &[("address", &bar.address()), ("slots", "2")],
    );
    let asked = bar.requests().len();
    let mut switch = open(&two, &Context::default()).expect("opened");
    assert_says(&error(switch.set(3, true)), &["pdu2 has 2 slots"]);
    assert_eq!(bar.requests().len(), asked);
}

#[test]
fn an_mpower_on_another_port_is_reached_there() {
    let bar = Mpower::local(2);
    assert!(bar.address().starts_with("127.0.0.1:"), "{}", bar.address());
    let dev = device("pdu", Driver::Mpower, &[("address", &bar.address())]);
    let mut switch = open(&dev, &Context::default()).expect("opened");
    switch.set(2, true).expect("switched on");
    assert_eq!(bar.outputs(), [false, true]);
    assert!(switch.read(2).expect("read").on);
}

// The usbrly08 driver.

fn board_device(board: &RelayBoard, more: &[(&str, &str)]) -> Device {
    let port = board.port().display().to_string();
    let mut options = vec![("port", port.as_str())];
    options.extend_from_slice(more);
    device("rly", Driver::UsbRly08, &options)
}

#[test]
fn a_relay_board_switches_and_reads_its_relays() {
    let board = RelayBoard::new();
    let dev = board_device(&board, &[]);
    let mut switch = open(&dev, &Context::default()).expect("opened");
    switch.set(3, true).expect("switched on");
    assert_eq!(board.states(), 0b0000_0100);
    switch.set(8, true).expect("switched on");
    assert_eq!(board.states(), 0b1000_0100);
    assert_eq!(
        switch.read(3).expect("read"),
        Reading {
            on: true,
            watts: None,
            volts: None,
            amps: None
        }
    );
    assert!(!switch.read(2).expect("read").on);
    switch.set(3, false).expect("switched off");
    assert_eq!(board.states(), 0b1000_0000);
    assert!(!switch.read(3).expect("read").on);
    assert!(switch.read(8).expect("read").on);
    let commands: Vec<u8> = board
        .received()
        .into_iter()
        .filter(|&b| b != 0x5B)
        .collect();
    assert_eq!(commands, [0x67, 0x6C, 0x71]);

    // The port is raw, at the board's 19200 baud, 8N2, without flow
    // control.
    let settings = board.settings();
    // SAFETY: reads a termios we own.
    let (input, output) = unsafe { (libc::cfgetispeed(&settings), libc::cfgetospeed(&settings)) };
    assert_eq!((input, output), (libc::B19200, libc::B19200));
    assert_ne!(settings.c_cflag & libc::CSTOPB, 0, "2 stop bits");
    assert_eq!(settings.c_cflag & libc::CSIZE, libc::CS8);
    assert_eq!(settings.c_cflag & (libc::PARENB | libc::CRTSCTS), 0);
    assert_eq!(
        settings.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG),
        0,
        "raw input"
    );
    assert_eq!(settings.c_oflag & libc::OPOST, 0, "raw output");
}

#[test]
fn what_is_not_a_serial_port_is_refused_before_a_byte_is_written() {
    let dir = tempfile::tempdir().expect("a folder");
    let file = dir.path().join("ttyACM0");
    std::fs::write(&file, "").expect("a file");
    let dev = device(
        "rly",
        Driver::UsbRly08,
        &[("port", &file.display().to_string())],
    );
    let err = error(open(&dev, &Context::default()));
    assert_says(&err, &["device rly", "is not a serial port"]);
    assert_eq!(std::fs::metadata(&file).expect("still there").len(), 0);

    let missing = dir.path().join("ttyUSB9");
    let dev = device(
        "rly",
        Driver::UsbRly08,
        &[("port", &missing.display().to_string())],
    );
    let err = error(open(&dev, &Context::default()));
    assert_says(&err, &["device rly", "cannot open", "ttyUSB9"]);
    assert!(!missing.exists());
}

#[test]
fn a_relay_board_has_relays_1_to_8() {
    let board = RelayBoard::new();
    let mut switch = open(&board_device(&board, &[]), &Context::default()).expect("opened");
    assert_says(
        &error(switch.set(9, true)),
        &["device rly, slot 9", "relays 1 to 8"],
    );
    assert_says(&error(switch.read(0)), &["slot 0 is no slot"]);
    let mut four = open(
        &board_device(&board, &[("slots", "4")]),
        &Context::default(),
    )
    .expect("opened");
    assert_says(&error(four.set(5, true)), &["has 4 slots"]);
    assert!(board.received().is_empty(), "{:x?}", board.received());
}

#[test]
fn a_board_that_does_not_answer_is_an_error_within_the_timeout() {
    let board = RelayBoard::new();
    let mut switch = open(&board_device(&board, &[]), &Context::default()).expect("opened");
    board.mute(true);
    let start = Instant::now();
    let err = error(switch.read(1));
    let took = start.elapsed().as_secs_f64();
    assert_says(&err, &["device rly, slot 1", "did not answer within 1s"]);
    assert!((0.9..2.0).contains(&took), "took {took} s");
    board.mute(false);
    assert!(!switch.read(1).expect("read once it answers").on);
}

#[test]
fn a_relay_that_does_not_switch_is_an_error() {
    let board = RelayBoard::new();
    board.stick(2);
    let limits = Limits {
        confirm: Duration::from_millis(300),
        ..Limits::default()
    };
    let mut switch =
        open_within(&board_device(&board, &[]), &Context::default(), limits).expect("opened");
    let err = error(switch.set(2, true));
    assert_says(
        &err,
        &["device rly, slot 2", "switched on but it still reads off"],
    );
}

#[test]
fn one_process_speaks_to_a_board_one_command_at_a_time() {
    let board = RelayBoard::new();
    let workers: Vec<_> = (1..=3)
        .map(|relay| {
            let mut switch = open(&board_device(&board, &[]), &Context::default()).expect("opened");
            std::thread::spawn(move || {
                for i in 0..30 {
                    let on = i % 2 == 0;
                    switch.set(relay, on).expect("switched");
                    assert_eq!(switch.read(relay).expect("read").on, on);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("every switch and read worked");
    }
    assert_eq!(board.states(), 0);
}

/// The time relay `relay` was on, from its on command to its off.
fn pressed(board: &RelayBoard, relay: u32) -> Duration {
    let timeline = board.timeline();
    let mine: Vec<_> = timeline.iter().filter(|s| s.relay == relay).collect();
    assert_eq!(
        mine.iter().map(|s| s.on).collect::<Vec<_>>(),
        [true, false],
        "{timeline:?}"
    );
    mine[1].at - mine[0].at
}

#[test]
fn a_press_holds_the_relay_for_its_time() {
    let board = RelayBoard::new();
    let dev = board_device(&board, &[("press", "0.5"), ("hold", "1.2")]);
    let mut switch = open(&dev, &Context::default()).expect("opened");
    press(&mut *switch, 2, dev.press().expect("press")).expect("pressed");
    let took = pressed(&board, 2).as_secs_f64();
    assert!((0.5..1.0).contains(&took), "pressed {took} s");
    press(&mut *switch, 4, dev.hold().expect("hold")).expect("held");
    let took = pressed(&board, 4).as_secs_f64();
    assert!((1.2..1.7).contains(&took), "held {took} s");
    assert_eq!(board.states(), 0);
}

#[test]
fn a_press_releases_the_relay_when_switching_it_on_failed() {
    let board = RelayBoard::new();
    let mut switch = open(&board_device(&board, &[]), &Context::default()).expect("opened");
    board.mute(true);
    let err = error(press(&mut *switch, 5, Duration::from_secs(30)));
    assert_says(&err, &["device rly, slot 5", "did not answer"]);
    let timeline = board.timeline();
    let commands: Vec<(u32, bool)> = timeline.iter().map(|s| (s.relay, s.on)).collect();
    assert_eq!(commands, [(5, true), (5, false)]);
    assert_eq!(board.states(), 0);
}

static HANGUPS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn count_hangup(_: libc::c_int) {
    HANGUPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn a_press_cut_short_by_a_signal_releases_the_relay_first() {
    use std::os::unix::thread::JoinHandleExt;
    // SIGHUP counted instead of ending the tests (a handler does not
    // outlive an exec, so no program the tests run sees it).
    // SAFETY: installs a handler that only touches an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = count_hangup as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGHUP, &action, std::ptr::null_mut()),
            0
        );
    }
    let board = RelayBoard::new();
    let mut switch = open(&board_device(&board, &[]), &Context::default()).expect("opened");
    let presser = std::thread::spawn(move || press(&mut *switch, 6, Duration::from_secs(30)));
    wait_until("the relay to be pressed", LIMIT, || board.relay(6));
    let before = HANGUPS.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: signals a thread that runs (it is joined below).
    unsafe {
        libc::pthread_kill(presser.as_pthread_t(), libc::SIGHUP);
    }
    let result = presser.join().expect("the press returns");
    let err = error(result);
    assert_says(&err, &["slot 6 was released early", "signal 1"]);
    assert!(!board.relay(6));
    assert!(pressed(&board, 6) < Duration::from_secs(5));
    // The signal was delivered after the relay was released.
    assert_eq!(
        HANGUPS.load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
}
