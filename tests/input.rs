//! Bad input: control characters that could drive a terminal, numbers out
//! of range, state files nested too deep or breaking XML 1.0, and names too
//! long for a lock file. Each is refused with a clear message and a
//! non-zero status, or shown in a safe form; a refused command leaves the
//! state file as it was.

mod common;
use common::*;

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
