//! Bad input: control characters that could drive a terminal, numbers out
//! of range, state files nested too deep or breaking XML 1.0, and names too
//! long for a lock file. Each is refused with a clear message and a
//! non-zero status, or shown in a safe form; a refused command leaves the
//! state file as it was.

use crate::common::*;

use std::fs;
use std::path::Path;

fn read_bytes(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `cmd` to its end.
fn output(mut cmd: std::process::Command) -> Run {
    cmd.output().expect("mama runs").into()
}

// ---------------------------------------------------------------------------
// Control characters

/// Whether `c` could move a terminal's cursor, start an escape sequence or
/// reorder what is shown: C0 controls (line breaks aside), DEL and C1
/// controls, bidirectional controls and line separators.
fn is_terminal_control(c: char) -> bool {
    (c.is_control() && c != '\n')
        || ('\u{80}'..='\u{9f}').contains(&c)
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[track_caller]
fn assert_printable(what: &str, text: &str) {
    if let Some(c) = text.chars().find(|&c| is_terminal_control(c)) {
        panic!(
            "{what}: a raw U+{:04X} reaches the terminal: {text:?}",
            c as u32
        );
    }
}

/// The events as `log --json` prints them, held in the state file itself
/// (a state file that another tool or a person wrote).
fn with_events(xml: &str, json_lines: &[String]) -> String {
    let events = format!(
        "  <pending_events>{}\n</pending_events>\n  <event_seq>{}</event_seq>\n</settings>\n",
        json_lines.join("\n"),
        json_lines.len()
    );
    xml.replacen("</settings>\n", &events, 1)
}

#[test]
fn escape_bell_and_c1_controls_are_refused_from_the_command_line() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let before = read_bytes(&env.state);
    let marker = env.path().join("job-ran");
    let marker_arg = marker.to_str().expect("utf-8 path");
    for c in ['\u{1b}', '\u{7}', '\u{9b}', '\u{80}', '\u{85}', '\u{9f}'] {
        let name = format!("U+{:04X}", c as u32);
        for attr in ["os", "kernel", "params", "vmparams", "startcmd", "stopcmd"] {
            let run = env.run(["set", "rig1", attr, &format!("a{c}b")]);
            let stderr = run.fails_saying(1, &name);
            assert_printable("the refusal", stderr);
        }
        let run = env.run([
            "add",
            "rig2",
            "--mac",
            "aa:bb:cc:dd:ee:02",
            "--resources",
            &format!("hub{c}"),
        ]);
        run.fails_saying(1, &name);
        assert!(
            run.stderr.contains("resources"),
            "names the field: {run:#?}"
        );

        let label = format!("smoke {c}[2J");
        let run = env.run(["run", "rig1", "--job", &label, "--", "touch", marker_arg]);
        let stderr = run.fails_saying(125, &name);
        assert!(stderr.contains("job"), "names the field: {run:#?}");
        assert_printable("the refusal", stderr);
        assert!(!marker.exists(), "{name}: the job must not run");
        assert_eq!(read_bytes(&env.state), before, "{name}: file unchanged");
    }
    assert!(env.events().iter().all(|e| e["event"] != "claimed"));
}

#[test]
fn controls_in_a_hand_edited_file_are_shown_escaped() {
    let env = TestEnv::new();
    let holder = sleeper();
    let now = unix_now();
    let label = "evil\u{9b}2J\u{85}fake\u{7f}";
    let xml = lab_xml(&[
        machine_xml(
            "rig1",
            1,
            &[
                ("os", "os\u{9b}31m"),
                ("reservation", "bob\u{90}"),
                ("boot_params", "one&#10;two&#9;three&#13;"),
            ],
        ),
        machine_xml("rig2", 2, &[]),
    ]);
    let xml = with_job(&xml, "rig1", label, Some(holder.pid()), now);
    let event = format!(
        r#"{{"seq":1,"time":{now},"machine":"rig1","event":"set","job":"j\u009b","pid":null,"user":"u\u0085","host":"h\u0090","detail":"os=a\nfake row\u009b"}}"#
    );
    env.write_state(&with_events(&xml, &[event]));
    let before = read_bytes(&env.state);

    let list = env.run(["list"]);
    let table = list.ok();
    assert_printable("list", table);
    assert!(table.contains(r"evil\u{9b}2J\u{85}fake\x7f"), "{table}");
    assert!(table.contains(r"bob\u{90}"), "{table}");

    let info = env.run(["info", "rig1"]);
    let text = info.ok();
    assert_printable("info", text);
    for shown in [
        r"Running job:",
        r"evil\u{9b}2J\u{85}fake\x7f",
        r"os\u{9b}31m",
        r"one\ntwo\tthree\r",
        r"os=a\nfake row\u{9b}",
    ] {
        assert!(text.contains(shown), "info shows {shown:?}: {text}");
    }
    assert!(
        text.lines().all(|l| !l.starts_with("fake row")),
        "no faked line: {text}"
    );

    let log = env.run(["log"]);
    let text = log.ok();
    assert_printable("log", text);
    assert_eq!(text.lines().count(), 2, "a header and one row: {text}");
    for shown in [r"j\u{9b}", r"u\u{85}@h\u{90}", r"os=a\nfake row\u{9b}"] {
        assert!(text.contains(shown), "log shows {shown:?}: {text}");
    }

    // JSON: C1 controls and DEL come out as \u escapes, and read back as
    // they are stored.
    for args in [
        &["list", "--json"][..],
        &["info", "rig1", "--json"],
        &["log", "--json"],
        &["get", "rig1", "job", "--json"],
    ] {
        let run = env.run(args);
        assert_printable(&args.join(" "), run.ok());
        assert!(run.stdout.contains(r"\u009b"), "{args:?}: {run:#?}");
    }
    assert_eq!(env.run(["list", "--json"]).json()[0]["job"], label);
    assert_eq!(env.info("rig1")["reservation"], "bob\u{90}");
    assert_eq!(env.run(["log", "--json"]).json()["user"], "u\u{85}");
    assert_eq!(env.run(["get", "rig1", "job", "--json"]).json(), label);

    // `get` into a pipe prints the value as stored, for scripts.
    assert_eq!(env.run(["get", "rig1", "job"]).ok(), format!("{label}\n"));
    assert_eq!(
        env.run(["get", "rig1", "os"]).ok(),
        "os\u{9b}31m\n",
        "raw for scripts"
    );

    // The busy message names the job safely.
    let wait = env.run(["wait", "rig1", "--timeout", "0"]);
    let stderr = wait.fails_saying(75, r"evil\u{9b}2J\u{85}fake\x7f");
    assert_printable("the busy message", stderr);
    assert_eq!(read_bytes(&env.state), before, "reading changes nothing");
}

#[test]
fn a_stale_job_with_controls_is_reported_escaped_when_cleared() {
    let env = TestEnv::new();
    let xml = lab_xml(&[machine_xml("rig1", 1, &[])]);
    let label = "gone\u{9b}2K\u{7f}";
    env.write_state(&with_job(&xml, "rig1", label, Some(dead_pid()), unix_now()));
    let run = env.run(["wait", "rig1", "--timeout", "5"]);
    let line = run.ok_saying("cleared stale job").to_string();
    assert_printable("the stale report", &run.stderr);
    assert!(line.contains(r"gone\u{9b}2K\x7f"), "{run:#?}");
}

/// `mama ARGS` with stdout on a pseudo-terminal (`script`); what the
/// terminal showed.
fn on_a_terminal(env: &TestEnv, args: &[&str]) -> String {
    let quote = |word: &str| format!("'{}'", word.replace('\'', r"'\''"));
    let line: Vec<String> = std::iter::once(MAMA)
        .chain(args.iter().copied())
        .map(quote)
        .collect();
    let mut script = std::process::Command::new("script");
    remove_mama_env(&mut script);
    script
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env("MAMA_STATE", &env.state)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null());
    output(script).ok().to_string()
}

#[test]
#[cfg_attr(
    not(mama_script),
    ignore = "needs script (util-linux): run tests/install-tools as root"
)]
fn get_escapes_controls_on_a_terminal_only() {
    let env = TestEnv::new();
    env.write_state(&lab_xml(&[machine_xml(
        "rig\u{85}1",
        1,
        &[("os", "os\u{9b}31m&#10;x")],
    )]));
    let shown = on_a_terminal(&env, &["get", "rig\u{85}1", "os"]);
    assert!(shown.contains(r"os\u{9b}31m\nx"), "{shown:?}");
    assert!(!shown.contains('\u{9b}'), "{shown:?}");
    let names = on_a_terminal(&env, &["list", "--names"]);
    assert!(names.contains(r"rig\u{85}1"), "{names:?}");
    // Into a pipe, as stored.
    assert_eq!(
        env.run(["get", "rig\u{85}1", "os"]).ok(),
        "os\u{9b}31m\nx\n"
    );
    assert_eq!(env.run(["list", "--names"]).ok(), "rig\u{85}1\n");
}

#[test]
fn newlines_and_tabs_in_values_cannot_fake_lines() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.run(["set", "rig1", "os", "one\nState:    free\ttab"])
        .ok();
    let info = env.run(["info", "rig1"]);
    let text = info.ok();
    assert_printable("info", text);
    assert!(
        text.contains(r"one\nState:    free\ttab"),
        "one line: {text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("State:")).count(),
        1,
        "{text}"
    );
    let log = env.run(["log"]);
    assert_printable("log", log.ok());
    assert!(log.stdout.contains(r"os=one\nState:"), "{log:#?}");
    // Scripts still get the value as it is.
    assert_eq!(
        env.run(["get", "rig1", "os"]).ok(),
        "one\nState:    free\ttab\n"
    );
}

// ---------------------------------------------------------------------------
// Numbers out of range

/// 100 years in seconds: the longest duration mama takes.
const HUNDRED_YEARS: &str = "3155760000";

#[test]
fn a_stale_age_past_100_years_is_refused() {
    let env = TestEnv::new();
    let xml = lab_xml(&[machine_xml("rig1", 1, &[])]);
    // A job without a PID, claimed a minute ago: live at any sane age.
    env.write_state(&with_job(&xml, "rig1", "smoke", None, unix_now() - 60));
    let before = read_bytes(&env.state);
    for value in ["9223372036854775808", "18446744073709551615", "3155760001"] {
        for (args, code) in [
            (&["list"][..], 1),
            (&["info", "rig1"], 1),
            (&["delete", "rig1"], 1),
            (&["wait", "rig1", "--timeout", "0"], 1),
            (&["run", "rig1", "--no-wait", "--", "true"], 125),
        ] {
            let mut cmd = env.cmd(args);
            cmd.env("MAMA_STALE_AFTER", value);
            let run = output(cmd);
            let stderr = run.fails_saying(code, "MAMA_STALE_AFTER");
            assert!(stderr.contains("100 years"), "says the bound: {run:#?}");
            assert_eq!(read_bytes(&env.state), before, "{args:?}: unchanged");
        }
    }
    let mut cmd = env.cmd(["list", "--json"]);
    cmd.env("MAMA_STALE_AFTER", HUNDRED_YEARS);
    let run = output(cmd);
    run.ok();
    assert_eq!(run.json()[0]["stale"], false);
}

#[test]
fn durations_past_100_years_are_refused_before_anything_is_claimed() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let before = read_bytes(&env.state);
    let events = env.events();
    let marker = env.path().join("job-ran");
    let marker_arg = marker.to_str().expect("utf-8 path");
    for value in ["1e19", "1e300", "3155760001", "18446744073709551616"] {
        env.run(["wait", "rig1", "--timeout", value])
            .fails_saying(2, "100 years");
        for option in ["--timeout", "--wait-timeout"] {
            let run = env.run(["run", "rig1", option, value, "--", "touch", marker_arg]);
            run.fails_saying(125, "100 years");
            assert!(!run.stderr.contains("panicked"), "{run:#?}");
        }
        for (args, code) in [
            (&["wait", "rig1"][..], 1),
            (&["run", "rig1", "--", "touch", marker_arg], 125),
            (&["log", "--follow"], 1),
        ] {
            let mut cmd = env.cmd(args);
            cmd.env("MAMA_POLL_INTERVAL", value);
            let run = output(cmd);
            let stderr = run.fails_saying(code, "MAMA_POLL_INTERVAL");
            assert!(stderr.contains("100 years"), "{run:#?}");
        }
        assert!(!marker.exists(), "{value}: the job must not run");
        assert_eq!(read_bytes(&env.state), before, "{value}: no claim");
        assert_eq!(env.events(), events, "{value}: no event");
    }
    for value in ["99999999999w", "36525d1s", "3155760001", "876601h"] {
        env.run(["log", "--since", value])
            .fails_saying(2, "100 years");
    }
    // The bound itself is taken.
    env.run(["wait", "rig1", "--timeout", HUNDRED_YEARS]).ok();
    env.run(["log", "--since", "36525d"]).ok();
    env.run(["run", "rig1", "--timeout", HUNDRED_YEARS, "--", "true"])
        .ok();
}

// ---------------------------------------------------------------------------
// State files that are not XML 1.0

/// Every command, reading or writing, refuses `text` naming the place and
/// `says`, and leaves the file as it was.
#[track_caller]
fn refused(text: &[u8], place: &str, says: &str) {
    let env = TestEnv::new();
    fs::write(&env.state, text).expect("write state");
    let place = format!("{}:{place}: ", env.state.display());
    for (args, code) in [
        (&["list"][..], 1),
        (&["list", "--json"], 1),
        (&["info", "rig1"], 1),
        (&["set", "rig1", "os", "x"], 1),
        (&["clear", "all"], 1),
        (&["run", "rig1", "--", "true"], 125),
    ] {
        let run = env.run(args);
        let what = format!("{args:?} on {:?}", String::from_utf8_lossy(text));
        assert_eq!(run.code, Some(code), "{what}: {run:#?}");
        assert!(
            run.stderr.contains(&place),
            "{what}: names {place}: {run:#?}"
        );
        assert!(run.stderr.contains(says), "{what}: says {says}: {run:#?}");
        assert!(run.stdout.is_empty(), "{what}: {run:#?}");
        assert_eq!(read_bytes(&env.state), text, "{what}: file unchanged");
    }
}

const MACHINE: &str = "<machine><name>rig1</name><mac>aa:bb:cc:dd:ee:01</mac></machine>";

#[test]
fn characters_xml_forbids_are_refused_wherever_they_stand() {
    let cases: &[(String, &str, &str)] = &[
        (
            format!("<settings>\n{MACHINE}<os>a\u{0}b</os>\n</settings>\n"),
            "2:70",
            "U+0000",
        ),
        (
            format!("<settings>\n  {MACHINE}\n  <note>bell\u{7}</note>\n</settings>\n"),
            "3:13",
            "U+0007",
        ),
        (
            format!("<settings a=\"x\u{1}y\">\n{MACHINE}\n</settings>\n"),
            "1:15",
            "U+0001",
        ),
        (
            format!("<settings>\n<!-- esc \u{1b}[2J -->\n{MACHINE}\n</settings>\n"),
            "2:10",
            "U+001B",
        ),
        (
            format!("<settings>\n<![CDATA[\u{1f}]]>\n{MACHINE}\n</settings>\n"),
            "2:10",
            "U+001F",
        ),
        (
            format!("<?xml version=\"1.0\"?>\u{c}\n<settings>{MACHINE}</settings>\n"),
            "1:22",
            "U+000C",
        ),
        (
            format!("<settings>{MACHINE}</settings>\n\u{fffe}"),
            "2:1",
            "U+FFFE",
        ),
    ];
    for (text, place, says) in cases {
        refused(text.as_bytes(), place, says);
    }
}

#[test]
fn a_less_than_sign_in_an_attribute_value_is_refused() {
    refused(
        b"<settings>\n  <machine id=\"a<b\"><name>rig1</name></machine>\n</settings>\n",
        "2:17",
        "'<'",
    );
}

#[test]
fn an_xml_declaration_must_open_the_file() {
    let decl = "<?xml version=\"1.0\"?>";
    refused(
        format!("\n{decl}\n<settings>{MACHINE}</settings>\n").as_bytes(),
        "2:1",
        "XML declaration",
    );
    refused(
        format!("<!-- x -->{decl}<settings>{MACHINE}</settings>\n").as_bytes(),
        "1:11",
        "XML declaration",
    );
    refused(
        format!("<settings>\n  {decl}\n{MACHINE}</settings>\n").as_bytes(),
        "2:3",
        "XML declaration",
    );
    // After one byte-order mark it is at the start.
    let env = TestEnv::new();
    let text = format!("\u{feff}{decl}\n<settings>{MACHINE}</settings>\n");
    env.write_state(&text);
    env.run(["list"]).ok();
}

#[test]
fn a_second_byte_order_mark_is_refused() {
    refused(
        format!("\u{feff}\u{feff}<settings>\n{MACHINE}\n</settings>\n").as_bytes(),
        "1:2",
        "U+FEFF",
    );
}

// ---------------------------------------------------------------------------
// Depth

#[test]
fn a_file_nested_200000_deep_is_refused_not_a_crash() {
    let env = TestEnv::new();
    let depth = 200_000;
    let mut text = format!("<?xml version=\"1.0\"?>\n<settings>{MACHINE}\n");
    text.push_str(&"<x>".repeat(depth));
    text.push_str(&"</x>".repeat(depth));
    text.push_str("\n</settings>\n");
    env.write_state(&text);
    let before = read_bytes(&env.state);
    for (args, code) in [
        (&["list"][..], 1),
        (&["info", "rig1", "--json"], 1),
        (&["set", "rig1", "os", "x"], 1),
        (&["run", "rig1", "--", "true"], 125),
    ] {
        let run = env.run(args);
        assert_eq!(run.code, Some(code), "{args:?}: {run:#?}");
        assert!(run.stderr.contains("nested"), "{args:?}: {run:#?}");
        // The first element too deep: the 64th <x> (depth 65).
        let place = format!("{}:3:{}: ", env.state.display(), 63 * 3 + 1);
        assert!(run.stderr.contains(&place), "{args:?}: {place}: {run:#?}");
        assert_eq!(read_bytes(&env.state), before, "{args:?}: unchanged");
    }
}

// ---------------------------------------------------------------------------
// Long names

#[test]
fn long_names_get_lock_files_the_file_system_takes() {
    let env = TestEnv::new();
    let names = [
        "%".repeat(85),
        "é".repeat(43),
        "a".repeat(255),
        format!("{}b", "a".repeat(254)),
        format!("{}é", "%".repeat(83)),
    ];
    for (n, name) in names.iter().enumerate() {
        env.add(name, n as u8 + 1);
    }
    for name in &names {
        env.run(["run", name, "--", "true"]).ok();
        env.run(["wait", name, "--timeout", "0"]).ok();
    }
    let locks = env.path().join("mama.xml.locks");
    let files: Vec<String> = fs::read_dir(&locks)
        .expect("the job locks folder")
        .map(|e| e.expect("entry").file_name().into_string().expect("ASCII"))
        .collect();
    assert_eq!(files.len(), names.len(), "one lock a machine: {files:#?}");
    for file in &files {
        assert!(file.len() <= 255, "{file}");
        assert!(file.ends_with(".lock"), "{file}");
    }
    // Readable: a long name's lock file starts like the name.
    assert!(
        files.iter().any(|f| f.starts_with("aaaaaaaaaa")),
        "{files:#?}"
    );
    assert!(files.iter().any(|f| f.starts_with("%25%25")), "{files:#?}");
    assert!(files.iter().any(|f| f.starts_with("%C3%A9")), "{files:#?}");
}

#[test]
fn a_url_as_the_state_is_a_database_or_refused_never_taken_for_a_missing_file() {
    let env = TestEnv::new();
    let unreachable = format!(
        "postgresql://mama:secret@/lab?host={}",
        env.path().join("no-server").display()
    );
    for args in [
        &["list"][..],
        &["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"],
    ] {
        let mut cmd = env.cmd(args);
        cmd.env("MAMA_STATE", &unreachable);
        let run = output(cmd);
        let stderr = run.fails_saying(1, "cannot connect to the lab at postgresql://mama@/lab");
        assert!(!stderr.contains("secret"), "{run:#?}");
    }
    let run = env.run([
        "--state",
        "ftp://me:secret@host/mama.xml",
        "run",
        "rig1",
        "--",
        "true",
    ]);
    let stderr = run.fails_saying(125, "is a URL of scheme ftp://");
    assert!(!stderr.contains("secret"), "{run:#?}");
    assert!(env.files().is_empty(), "{:?}", env.files());
}

// ---------------------------------------------------------------------------
// Limits

#[test]
fn a_state_file_past_the_limit_is_refused_before_it_is_read() {
    let env = TestEnv::new();
    env.add("m0", 1);
    // A sparse file of 100 GB, as a member who may write the file can make.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&env.state)
        .expect("open the state");
    file.set_len(100 << 30).expect("make it sparse");
    drop(file);
    for args in [
        vec!["list"],
        vec!["info", "m0"],
        vec!["set", "m0", "os", "x"],
    ] {
        let run = env.run(&args);
        let text = run.fails_saying(1, "past the 256 MiB a lab may hold");
        assert!(text.contains("mama.xml"), "{text}");
    }
    let run = env.run(["run", "m0", "--", "true"]);
    run.fails_saying(125, "past the 256 MiB a lab may hold");
    assert_eq!(
        fs::metadata(&env.state).expect("the state").len(),
        100 << 30
    );
}

#[test]
fn an_endless_import_stops_at_the_limit() {
    let env = TestEnv::new();
    let run = env.run(["import", "/dev/zero"]);
    run.fails_saying(1, "past the 256 MiB a lab may hold");
    assert!(!env.state.exists(), "{:?}", env.files());
    // An endless stream on stdin.
    let mut yes = std::process::Command::new("yes")
        .arg("<x>")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("yes runs");
    let mut cmd = env.cmd(["import", "-"]);
    cmd.stdin(yes.stdout.take().expect("its output"));
    let run = output(cmd);
    let _ = yes.kill();
    let _ = yes.wait();
    run.fails_saying(1, "past the 256 MiB a lab may hold");
    assert!(!env.state.exists(), "{:?}", env.files());
}

#[test]
fn a_name_with_a_bidirectional_control_is_refused() {
    let env = TestEnv::new();
    for name in ["a\u{202e}b", "a\u{2066}b", "a\u{2028}b"] {
        let run = env.run(["add", name, "--mac", "02:00:00:00:00:01"]);
        let text = run.fails_saying(1, "contains white space or a control character");
        assert_printable("the refusal", text);
    }
    assert!(!env.state.exists());
}

#[test]
fn a_value_past_64_kib_is_refused_for_every_field_and_the_job_label() {
    let env = TestEnv::new();
    env.add("m0", 1);
    let before = env.read_state();
    let long = "x".repeat((64 << 10) + 1);
    for attr in ["os", "params", "startcmd"] {
        env.run(["set", "m0", attr, &long])
            .fails_saying(1, "longer than the 65536 a field may hold");
    }
    env.run(["run", "m0", "--job", &long, "--", "true"])
        .fails_saying(125, "longer than the 65536 a field may hold");
    assert_eq!(env.read_state(), before);
    // At the limit, it is taken.
    env.run(["set", "m0", "os", &long[1..]]).ok();
}
