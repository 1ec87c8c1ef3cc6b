//! The state file: the upstream format loads and survives every write in
//! place, broken files are refused and never written, any text XML can hold
//! round-trips exactly, and a missing file reads as an empty lab.

use crate::common::*;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn upstream() -> String {
    fs::read_to_string(testdata("upstream.xml")).expect("testdata/upstream.xml")
}

fn read_bytes(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The text with mama's own history bookkeeping (`<event_seq>` and
/// `<pending_events>`, each with the line break before it) taken out: a
/// state write may add or change them.
fn without_bookkeeping(text: &str) -> String {
    let mut rest = text.to_string();
    for tag in ["event_seq", "pending_events", "journal_folded"] {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let Some(start) = rest.find(&open) else {
            continue;
        };
        let end = rest[start..]
            .find(&close)
            .map(|i| start + i + close.len())
            .expect("closed element");
        let start = rest[..start].trim_end_matches([' ', '\n']).len();
        rest = format!("{}{}", &rest[..start], &rest[end..]);
        assert!(!rest.contains(&open), "one <{tag}> only:\n{text}");
    }
    rest
}

/// The state text with mama's bookkeeping taken out.
fn state_text(env: &TestEnv) -> String {
    without_bookkeeping(&env.read_state())
}

/// `text` with `old` replaced by `new` inside the machine called `machine`
/// (where `old` must occur exactly once).
fn replace_in_machine(text: &str, machine: &str, old: &str, new: &str) -> String {
    let name = format!("<name>{machine}</name>");
    let start = text.find(&name).expect("machine in text");
    let end = start + text[start..].find("</machine>").expect("machine end");
    let block = &text[start..end];
    assert_eq!(block.matches(old).count(), 1, "{old:?} once in {machine}");
    format!(
        "{}{}{}",
        &text[..start],
        block.replacen(old, new, 1),
        &text[end..]
    )
}

#[test]
fn an_upstream_file_loads_with_every_field() {
    let env = TestEnv::new();
    env.write_state(&upstream());
    let list = env.run(["list", "--json"]);
    list.ok();
    let machines = list.json();
    let machines = machines.as_array().expect("list --json is an array");
    let names: Vec<&str> = machines
        .iter()
        .map(|m| m["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["rig1", "rig2", "vmhost3"]);

    let expect = |m: &Value, fields: Value| {
        for (key, want) in fields.as_object().expect("object") {
            assert_eq!(&m[key], want, "{key} of {}", m["name"]);
        }
    };
    expect(
        &machines[0],
        json!({
            "mac": "aa:bb:cc:dd:ee:01", "ip": null, "is_started": false, "only_vm": false,
            "arch": "x86_64", "os": "fedora-40", "kernel": "6.8.9-300.fc40.x86_64",
            "pwr_dev": "pdu-rack4", "pwr_slot": "3", "rly_dev": null, "rly_slot": "0",
            "reservation": null, "resources": ["pdu-rack4"],
            "boot_params": "console=ttyS0,115200 quiet", "vm_params": null,
            "job": null, "job_pid": null, "job_timestamp": null,
            "startcmd": "ipmitool -H rig1-bmc power on && sleep 5",
            "stopcmd": "ipmitool -H rig1-bmc power off", "start_timeout": "300",
            "stale": false, "stale_reason": null, "state": "free",
        }),
    );
    expect(
        &machines[1],
        json!({
            "mac": "aa:bb:cc:dd:ee:02", "ip": "10.0.0.12", "arch": "aarch64",
            "os": "rhel-9.4", "kernel": "5.14.0-427.el9.aarch64",
            "pwr_slot": "4", "rly_dev": "relay-1", "rly_slot": "2",
            "resources": ["pdu-rack4", "usb-hub-2"],
            "job": "run smoke x86_64/fedora", "job_pid": 12345,
            "job_timestamp": 1763047845, "startcmd": null, "start_timeout": null,
        }),
    );
    expect(
        &machines[2],
        json!({
            "mac": "aa:bb:cc:dd:ee:03", "ip": "10.0.0.13", "is_started": true,
            "only_vm": true, "reservation": "alice", "resources": ["usb-hub-2"],
            "vm_params": "-m 4096 -smp 4", "start_timeout": "600", "job": null,
            "stale": false, "state": "started",
        }),
    );

    let info = env.run(["info", "rig1"]);
    let text = info.ok();
    assert!(text.contains("fedora-40"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("Start command:")
            && l.ends_with(" ipmitool -H rig1-bmc power on && sleep 5")),
        "{text}"
    );
    let info = env.run(["info", "rig2"]);
    let text = info.ok();
    assert!(
        text.lines()
            .any(|l| l.starts_with("Running job:") && l.ends_with(" run smoke x86_64/fedora")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("Job PID:") && l.ends_with(" 12345")),
        "{text}"
    );
    assert_eq!(env.info("vmhost3")["reservation"], "alice");
    assert_eq!(
        env.run(["get", "rig1", "startcmd"]).ok(),
        "ipmitool -H rig1-bmc power on && sleep 5\n"
    );
    assert_eq!(env.read_state(), upstream(), "reading never writes");
}

#[test]
fn writes_that_change_nothing_keep_the_file_byte_for_byte() {
    let env = TestEnv::new();
    let original = upstream();
    env.write_state(&original);
    // Writes of the value already there, and a clear of a clear machine.
    env.run(["set", "rig1", "os", "fedora-40"]).ok();
    env.run(["set", "rig2", "ip", "10.0.0.12"]).ok();
    env.run(["clear", "rig1"]).ok();
    env.run(["release-forced", "rig1"]).ok();
    env.run(["list"]).ok();
    env.run(["info", "rig1"]).ok();
    env.run(["get", "rig1", "os"]).ok();
    assert_eq!(env.read_state(), original);

    // A change and its undoing: only mama's own bookkeeping may differ.
    env.run(["set", "rig1", "os", "X"]).ok();
    assert_ne!(state_text(&env), original);
    env.run(["set", "rig1", "os", "fedora-40"]).ok();
    env.run(["set", "rig2", "kernel", "6.0"]).ok();
    env.run(["set", "rig2", "kernel", "5.14.0-427.el9.aarch64"])
        .ok();
    env.run(["list", "--json"]).ok();
    assert_eq!(state_text(&env), original);
    assert_eq!(env.files_containing(".tmp"), Vec::<String>::new());
}

/// A command, the machine it changes, and the (old, new) text of each line
/// it changes there.
type Step = (
    &'static [&'static str],
    &'static str,
    &'static [(&'static str, &'static str)],
);

#[test]
fn a_change_touches_only_its_element_and_keeps_unknown_content_in_place() {
    let env = TestEnv::new();
    let original = upstream();
    env.write_state(&original);

    // Each change, and the lines it changes (in one machine).
    let steps: [Step; 9] = [
        (
            &["set", "rig1", "kernel", "6.9.0"],
            "rig1",
            &[(
                "<kernel>6.8.9-300.fc40.x86_64</kernel>",
                "<kernel>6.9.0</kernel>",
            )],
        ),
        // An attribute on a known field stays; the value is escaped.
        (
            &["set", "rig1", "os", "rawhide & <more>"],
            "rig1",
            &[(
                "<os variant=\"server\">fedora-40</os>",
                "<os variant=\"server\">rawhide &amp; &lt;more&gt;</os>",
            )],
        ),
        (
            &["set", "rig2", "vmparams", "--", "-m 2048"],
            "rig2",
            &[("<vm_params/>", "<vm_params>-m 2048</vm_params>")],
        ),
        // An empty field stays empty.
        (&["set", "vmhost3", "startcmd", ""], "vmhost3", &[]),
        (
            &["set", "vmhost3", "start-timeout", ""],
            "vmhost3",
            &[("<start_timeout>600</start_timeout>", "<start_timeout/>")],
        ),
        (
            &["release-forced", "vmhost3"],
            "vmhost3",
            &[("<reservation>alice</reservation>", "<reservation/>")],
        ),
        // clear forgets is_started, nothing else (the IP a person set stays).
        (
            &["clear", "vmhost3"],
            "vmhost3",
            &[("<is_started>1</is_started>", "<is_started/>")],
        ),
        // clear forgets a job; rig2's PID may or may not run on this host
        // (a process with it now started long after the claim: a reused PID,
        // so the job is stale, whoever runs that process), and a run on rig1
        // would judge it (they share pdu-rack4).
        (
            &["clear", "rig2"],
            "rig2",
            &[
                ("<job>run smoke x86_64/fedora</job>", "<job/>"),
                ("<job_pid>12345</job_pid>", "<job_pid/>"),
                (
                    "<job_timestamp>1763047845</job_timestamp>",
                    "<job_timestamp/>",
                ),
            ],
        ),
        // A whole job (claim, then release) leaves the machine as it was.
        (
            &["run", "rig1", "--job", "smoke", "--", "true"],
            "rig1",
            &[],
        ),
    ];
    let mut expected = original;
    for (args, machine, changes) in steps {
        env.run(args).ok();
        for (old, new) in changes {
            expected = replace_in_machine(&expected, machine, old, new);
        }
        assert_eq!(state_text(&env), expected, "after {args:?}");
    }

    // A new machine goes after the last one; everything else stays.
    env.run(["add", "rig4", "--mac", "aa:bb:cc:dd:ee:04"]).ok();
    let now = state_text(&env);
    let start = now
        .find("\n  <machine>\n    <name>rig4</name>")
        .expect("rig4 on its own line");
    let end = start + now[start..].find("</machine>").expect("end") + "</machine>".len();
    assert_eq!(format!("{}{}", &now[..start], &now[end..]), expected);
    assert!(
        now[..start].ends_with("<owner team=\"kernel\"/>\n  </machine>"),
        "rig4 follows the last machine:\n{now}"
    );
    assert!(
        now[end..].starts_with("\n  <!-- retired: rig0 -->"),
        "{now}"
    );
    expected = now;

    // Deleting a machine removes its lines, and only them.
    env.run(["delete", "rig4"]).ok();
    let rig4 = &expected[start..end];
    expected = expected.replacen(rig4, "", 1);
    assert_eq!(state_text(&env), expected);
    for kept in [
        "<!-- Lab of the kernel test team; written by mama.php -->",
        "<settings version=\"1\" site=\"brno\">",
        "<note lang=\"en\">Power strips are in rack 4; ask before moving cables.</note>",
        "<resource>\n    <name>usb-hub-2</name>",
        "<machine id=\"m3\" virtual=\"yes\">",
        "<location room=\"B2\" rack=\"4\">slot 12</location>",
        "<!-- serial console on port 7 of the terminal server -->",
    ] {
        assert!(expected.contains(kept), "{kept} kept");
    }
}

/// Where a broken file's error points: a byte offset in the file.
enum At {
    Start,
    End,
    First(&'static [u8]),
    Last(&'static [u8]),
}

/// The 1-based line and column of byte `offset`.
fn line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

fn locate(bytes: &[u8], at: &At) -> (usize, usize) {
    let find = |needle: &[u8], last: bool| {
        let mut hits = (0..=bytes.len().saturating_sub(needle.len()))
            .filter(|&i| bytes[i..].starts_with(needle));
        if last { hits.next_back() } else { hits.next() }
            .unwrap_or_else(|| panic!("{needle:?} in the file"))
    };
    let offset = match at {
        At::Start => 0,
        At::End => bytes.len(),
        At::First(needle) => find(needle, false),
        At::Last(needle) => find(needle, true),
    };
    line_col(bytes, offset)
}

#[test]
fn broken_files_are_refused_by_every_command_and_never_written() {
    let cases: [(&str, Option<At>, &str); 11] = [
        ("empty.xml", Some(At::Start), "empty"),
        ("blank.xml", Some(At::Start), "empty"),
        ("truncated.xml", Some(At::End), "truncated"),
        (
            "garbage.xml",
            Some(At::Start),
            "text before the root element",
        ),
        (
            "trailing-garbage.xml",
            Some(At::First(b"oops")),
            "after the end of the root element",
        ),
        ("second-root.xml", Some(At::Last(b"<settings>")), "one root"),
        ("wrong-root.xml", None, "<config>"),
        ("duplicate-names.xml", None, "'rig1'"),
        ("bad-entity.xml", Some(At::First(b"&nbsp;")), "&nbsp;"),
        ("not-utf8.xml", Some(At::First(&[0xe9])), "UTF-8"),
        ("control-char.xml", Some(At::First(b"&#1;")), "U+0001"),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (file, at, says) in cases {
        let env = TestEnv::new();
        let bytes = read_bytes(&testdata(&format!("broken/{file}")));
        fs::write(&env.state, &bytes).expect("write state");
        let marker = env.path().join("job-ran");
        let state = env.state.display().to_string();
        let place = match &at {
            Some(at) => {
                let (line, column) = locate(&bytes, at);
                format!("{state}:{line}:{column}: ")
            }
            None => format!("{state}: "),
        };
        let lab_commands: [&[&str]; 16] = [
            &["list"],
            &["list", "--json"],
            &["info", "rig1"],
            &["info", "rig1", "--json"],
            &["get", "rig1", "os"],
            &["add", "rig9", "--mac", "aa:bb:cc:dd:ee:99"],
            &["set", "rig1", "os", "x"],
            &["delete", "rig1"],
            &["clear", "rig1"],
            &["clear", "all"],
            &["reserve", "rig1"],
            &["release", "rig1"],
            &["release-forced", "rig1"],
            &["wait", "rig1", "--timeout", "0"],
            &["wait", "rig1"],
            &["set", "rig1", "mac", "aa:bb:cc:dd:ee:42"],
        ];
        let marker_arg = marker.to_str().expect("utf-8 path");
        let run_commands: [&[&str]; 2] = [
            &["run", "rig1", "--", "touch", marker_arg],
            &[
                "run",
                "rig1",
                "--no-wait",
                "--job",
                "x",
                "--",
                "touch",
                marker_arg,
            ],
        ];
        let all = lab_commands
            .iter()
            .map(|c| (c, 1))
            .chain(run_commands.iter().map(|c| (c, 125)));
        for (args, code) in all {
            let run = env.run(*args);
            let what = format!("{file}: mama {}", args.join(" "));
            assert_eq!(run.code, Some(code), "{what}: {run:#?}");
            assert!(
                run.stderr.contains(&place),
                "{what}: stderr should name {place:?}: {run:#?}"
            );
            assert!(
                run.stderr.contains(says),
                "{what}: stderr should say {says:?}: {run:#?}"
            );
            assert!(!run.stderr.contains("panicked"), "{what}: {run:#?}");
            assert!(run.stdout.is_empty(), "{what}: nothing on stdout: {run:#?}");
            assert_eq!(read_bytes(&env.state), bytes, "{what}: file unchanged");
            let files = env.files();
            assert!(
                files
                    .iter()
                    .all(|f| f == "mama.xml" || f == "mama.xml.lock"),
                "{what}: no other file (temporary, log, job locks): {files:?}"
            );
            assert!(!marker.exists(), "{what}: the job must not run");
            seen.insert(run.stderr.lines().next().unwrap_or_default().to_string());
        }
    }
    assert!(seen.len() >= 10, "each file has its own message: {seen:#?}");
}

/// Text that XML can hold but that needs care: markup characters, things
/// that look like escapes or CDATA ends, non-ASCII, tabs, line ends, and
/// white space at the edges.
const NASTY: [&str; 9] = [
    "a & b < c > d \" e ' f ]]> g",
    "&amp; &#1; &nbsp; <![CDATA[x]]> <!-- not a comment -->",
    "café ✓ 𝄞 \u{7f} \u{a0} \u{fffd}",
    "tab\there\tand\tthere",
    "line one\nline two\n",
    "cr\r\nlf\rend\r",
    "  leading and trailing  ",
    "\n\t mixed \r\n",
    "é",
];

#[test]
fn free_text_round_trips_exactly() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let fields = [
        ("params", "boot_params"),
        ("startcmd", "startcmd"),
        ("stopcmd", "stopcmd"),
        ("os", "os"),
        ("kernel", "kernel"),
        ("vmparams", "vm_params"),
    ];
    for value in NASTY {
        for (attr, key) in fields {
            env.run(["set", "rig1", attr, value]).ok();
            assert_eq!(
                env.run(["get", "rig1", attr]).ok(),
                format!("{value}\n"),
                "get {attr} after setting {value:?}"
            );
            assert_eq!(env.info("rig1")[key], value, "info --json {key}");
        }
        // The file stays well-formed for every reader.
        env.run(["list"]).ok();
        let list = env.run(["list", "--json"]);
        list.ok();
        assert_eq!(list.json()[0]["os"], value);
    }
    // Other fields were not disturbed.
    let info = env.info("rig1");
    assert_eq!(info["mac"], "aa:bb:cc:dd:ee:01");
    assert_eq!(info["job"], Value::Null);
}

#[test]
fn job_labels_round_trip_exactly() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    for (n, label) in NASTY.iter().enumerate() {
        let out = env.path().join(format!("out{n}"));
        let go = env.path().join(format!("go{n}"));
        let mut args: Vec<OsString> = vec!["run".into(), "rig1".into(), "--job".into()];
        args.push(label.into());
        args.push("--".into());
        args.extend(waiting_job(
            r#"printf %s "$MAMA_JOB" > "$1.part" && mv "$1.part" "$1""#,
            &out,
            &go,
        ));
        let mut mama = env.start(&args);
        wait_until("the job to start", LIMIT, || out.exists());

        let info = env.info("rig1");
        assert_eq!(info["job"], *label, "info --json while the job runs");
        assert_eq!(info["job_pid"], mama.pid());
        assert_eq!(info["stale"], false);
        assert_eq!(info["state"], "busy");
        assert_eq!(env.run(["get", "rig1", "job"]).ok(), format!("{label}\n"));
        let text = env.run(["info", "rig1"]);
        assert!(text.ok().contains("Job status:"), "{text:#?}");
        env.run(["list"]).ok();

        fs::write(&go, "").expect("go");
        let run = mama.finish(LIMIT);
        assert_eq!(run.code, Some(0), "{label:?}: {run:#?}");
        assert_eq!(
            fs::read_to_string(&out).expect("out"),
            *label,
            "MAMA_JOB inside the job"
        );
        assert_eq!(env.run(["get", "rig1", "job"]).ok(), "\n", "released");
        assert_eq!(env.info("rig1")["job"], Value::Null);
    }
}

#[test]
fn control_characters_are_refused_and_named() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let before = env.read_state();
    let controls = (0x01..=0x08u32)
        .chain([0x0b, 0x0c])
        .chain(0x0e..=0x1f)
        .map(|c| char::from_u32(c).expect("char"));
    let mut count = 0;
    for c in controls {
        count += 1;
        let name = format!("U+{:04X}", c as u32);
        for attr in ["os", "params", "startcmd"] {
            let value = format!("before{c}after");
            let run = env.run(["set", "rig1", attr, &value]);
            let stderr = run.fails(1);
            assert!(stderr.contains(&name), "set {attr} {name}: {run:#?}");
            assert!(!stderr.contains("panicked"), "{run:#?}");
        }
        let marker = env.path().join("job-ran");
        let label = format!("job {c}");
        let run = env.run([
            "run",
            "rig1",
            "--job",
            &label,
            "--",
            "touch",
            marker.to_str().expect("utf-8"),
        ]);
        assert!(run.fails(125).contains(&name), "run --job {name}: {run:#?}");
        assert!(!marker.exists(), "the job must not run");
        assert_eq!(env.read_state(), before, "{name}: file unchanged");
    }
    assert_eq!(count, 28);
    // What XML allows is taken.
    for allowed in ["\t", "\n", "\r"] {
        env.run(["set", "rig1", "os", &format!("a{allowed}b")]).ok();
    }
}

/// Every command but `add` and `import`, with the status it fails with
/// where there is no lab.
const NEEDS_A_LAB: [(&[&str], i32); 22] = [
    (&["list"], 1),
    (&["list", "--json"], 1),
    (&["list", "--names"], 1),
    (&["info", "rig1"], 1),
    (&["info", "rig1", "--json"], 1),
    (&["get", "rig1", "os"], 1),
    (&["log"], 1),
    (&["log", "rig1", "--json"], 1),
    (&["log", "--follow"], 1),
    (&["export"], 1),
    (&["wait", "rig1"], 1),
    (&["wait", "rig1", "--timeout", "0"], 1),
    (&["wait", "--any"], 1),
    (&["run", "rig1", "--", "true"], 125),
    (&["run", "--no-wait", "--any", "--", "true"], 125),
    (&["clear", "rig1"], 1),
    (&["clear", "all"], 1),
    (&["set", "rig1", "os", "x"], 1),
    (&["delete", "rig1"], 1),
    (&["reserve", "rig1"], 1),
    (&["release", "rig1"], 1),
    (&["release-forced", "rig1"], 1),
];

on_both_backends! {
    fn a_missing_lab_is_an_error_naming_it_and_nothing_is_created(env: &TestEnv) {
        // The state file's path, or the database's name in its URL.
        let at = match &env.db {
            Some(db) => db.name.clone(),
            None => env.state.display().to_string(),
        };
        for (args, code) in NEEDS_A_LAB {
            let run = env.run(args);
            let stderr = run.fails(code);
            for part in [
                "no lab at ",
                at.as_str(),
                "create it with `mama add NAME --mac MAC` or `mama import FILE`",
            ] {
                assert!(stderr.contains(part), "{args:?}: {part}: {run:#?}");
            }
            assert_eq!(run.stdout, "", "{args:?}");
            match &env.db {
                None => assert_eq!(env.files(), Vec::<String>::new(), "{args:?} left a file"),
                Some(db) => assert_eq!(
                    db.value::<i64>(
                        "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'mama_%'"
                    ),
                    0,
                    "{args:?} created tables"
                ),
            }
        }
        // `add` creates the lab; then every command finds it.
        env.add("rig1", 1);
        assert_eq!(env.run(["list", "--names"]).ok(), "rig1\n");
        env.run(["clear", "all"]).ok();
    }
}

#[test]
fn import_creates_a_missing_lab() {
    let env = TestEnv::new();
    let file = env.path().join("upstream.xml");
    fs::write(&file, lab_xml(&[machine_xml("rig1", 1, &[])])).expect("write");
    env.run(["import", file.to_str().expect("utf-8")]).ok();
    assert_eq!(env.run(["list", "--names"]).ok(), "rig1\n");
}

#[test]
fn add_creates_a_missing_state_file() {
    let env = TestEnv::new();
    env.run(["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"]).ok();
    let text = state_text(&env);
    assert!(
        text.starts_with(
            "<?xml version=\"1.0\"?>\n<settings>\n  <machine>\n    <name>rig1</name>\n"
        ),
        "{text}"
    );
    assert!(text.ends_with("  </machine>\n</settings>\n"), "{text}");
    let list = env.run(["list", "--json"]);
    assert!(list.stderr.is_empty(), "{list:#?}");
    assert_eq!(list.json()[0]["name"], "rig1");
}

#[test]
fn a_missing_folder_is_a_clear_error() {
    let env = TestEnv::new();
    let folder = env.path().join("no-such-folder");
    let state = folder.join("mama.xml");
    let state_arg = state.to_str().expect("utf-8");
    let folder_name = folder.display().to_string();
    // `add` would create the state file, but not its folder; the others
    // find no lab there.
    for (args, code, says) in [
        (
            vec!["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"],
            Some(1),
            "does not exist",
        ),
        (vec!["set", "rig1", "os", "x"], Some(1), "no lab at"),
        (vec!["clear", "all"], Some(1), "no lab at"),
        (vec!["reserve", "rig1"], Some(1), "no lab at"),
        (vec!["list", "--json"], Some(1), "no lab at"),
        (vec!["run", "rig1", "--", "true"], Some(125), "no lab at"),
    ] {
        let mut cmd = env.cmd(["--state", state_arg].iter().chain(&args));
        let run: Run = cmd.output().expect("mama runs").into();
        assert_eq!(run.code, code, "{args:?}: {run:#?}");
        assert!(
            run.stderr.contains(&folder_name) && run.stderr.contains(says),
            "{args:?}: {run:#?}"
        );
        assert!(!run.stderr.contains("panicked"), "{args:?}: {run:#?}");
        assert!(!folder.exists(), "{args:?}: the folder is not created");
    }
    assert_eq!(env.files(), Vec::<String>::new());
}

/// A lab of `count` machines as upstream writes them.
fn big_lab(count: usize) -> String {
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<settings>\n");
    for n in 0..count {
        xml.push_str(&format!(
            "  <machine>\n    <name>m{n}</name>\n    <mac>aa:bb:cc:dd:{:02x}:{:02x}</mac>\n    <ip>192.0.2.{}</ip>\n    <is_started/>\n    <only_vm>0</only_vm>\n    <arch>x86_64</arch>\n    <os>fedora &amp; more</os>\n    <kernel/>\n    <pwr_dev/>\n    <pwr_slot>0</pwr_slot>\n    <rly_dev/>\n    <rly_slot>0</rly_slot>\n    <reservation/>\n    <resources/>\n    <boot_params/>\n    <vm_params/>\n    <job/>\n    <job_pid/>\n    <job_timestamp/>\n    <startcmd/>\n    <stopcmd/>\n    <start_timeout/>\n  </machine>\n",
            n / 256,
            n % 256,
            n % 250 + 1
        ));
    }
    xml.push_str("</settings>\n");
    xml
}

#[test]
fn a_run_on_a_big_lab_touches_only_its_machine_and_a_break_far_away_stops_it() {
    let env = TestEnv::new();
    let lab = big_lab(2000);
    env.write_state(&lab);
    let marker = env.path().join("job-ran");
    let job = format!("touch {}", marker.display());
    env.run(["run", "m5", "--", "sh", "-c", &job]).ok();
    assert!(marker.exists());
    // Claimed and released: the machine reads as before, byte for byte,
    // and so does every other.
    assert_eq!(state_text(&env), lab);
    let written = env.read_state();

    // Damage far from the machine a run claims: every write is refused,
    // as for a small file, and nothing is written.
    fs::remove_file(&marker).expect("remove the marker");
    for (old, new, says) in [
        ("<os>fedora &amp; more</os>", "<os>fedora <b more</os>", ""),
        ("<kernel/>", "<kernel>", "kernel"),
        (
            "<os>fedora &amp; more</os>",
            "<os>fedora &nbsp; more</os>",
            "&nbsp;",
        ),
        ("<arch>x86_64</arch>", "<arch>x86\u{1}64</arch>", "U+0001"),
    ] {
        let broken = replace_in_machine(&written, "m1900", old, new);
        env.write_state(&broken);
        let err = env
            .run(["run", "m5", "--", "sh", "-c", &job])
            .fails(125)
            .to_string();
        assert!(err.contains(says), "{err}");
        assert!(!marker.exists(), "the job ran on a broken lab");
        assert_eq!(env.read_state(), broken, "a broken lab was written");
        env.run(["set", "m5", "os", "x"]).fails(1);
        assert_eq!(env.read_state(), broken, "a broken lab was written");
    }
}

#[test]
fn a_change_made_in_place_while_a_job_runs_survives_its_release() {
    // The release takes what the claim left when the file holds exactly
    // that text; a byte changed in place (another tool, same size) must
    // make it read the file afresh, or the change would be lost.
    let env = TestEnv::new();
    env.write_state(&big_lab(50));
    let job = "at=$(grep -bo '<os>fedora &amp; more</os>' \"$MAMA_STATE\" | sed -n 2p | cut -d: -f1) \
               && printf '<os>ubuntu &amp; more</os>' \
               | dd of=\"$MAMA_STATE\" bs=1 seek=\"$at\" conv=notrunc status=none";
    env.run(["run", "m5", "--", "sh", "-c", job]).ok();
    let after = env.read_state();
    assert_eq!(env.run(["get", "m1", "os"]).ok().trim(), "ubuntu & more");
    assert_eq!(env.run(["get", "m0", "os"]).ok().trim(), "fedora & more");
    assert_eq!(env.run(["get", "m5", "job"]).ok().trim(), "");
    let kinds: Vec<String> = env
        .events()
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(kinds, ["claimed", "released"]);
    // Unchanged between claim and release, the file is taken as left, and
    // the release writes what a fresh reading would.
    env.run(["run", "m5", "--", "true"]).ok();
    assert_eq!(
        without_bookkeeping(&env.read_state()),
        without_bookkeeping(&after)
    );
}

#[test]
fn where_php_mama_shares_the_file_a_change_made_in_place_while_a_job_runs_survives_its_release() {
    // In compat mode mama writes the state file in place, so the file a
    // release finds is the very file its claim wrote: only a comparison of
    // its bytes with what the claim left may let the release skip reading
    // it. A byte changed in place meanwhile (PHP mama saves in place too)
    // makes the release read it afresh, and keep the change.
    use std::os::unix::fs::MetadataExt;
    let env = TestEnv::new();
    env.write_state(&big_lab(50).replace("<settings>\n", "<settings>\n  <php_compat/>\n"));
    let inode = fs::metadata(&env.state).unwrap().ino();
    let job = "at=$(grep -bo '<os>fedora &amp; more</os>' \"$MAMA_STATE\" | sed -n 2p | cut -d: -f1) \
               && printf '<os>ubuntu &amp; more</os>' \
               | dd of=\"$MAMA_STATE\" bs=1 seek=\"$at\" conv=notrunc status=none";
    env.run(["run", "m5", "--", "sh", "-c", job]).ok();
    assert_eq!(
        fs::metadata(&env.state).unwrap().ino(),
        inode,
        "not written in place"
    );
    assert_eq!(env.run(["get", "m1", "os"]).ok().trim(), "ubuntu & more");
    assert_eq!(env.run(["get", "m0", "os"]).ok().trim(), "fedora & more");
    assert_eq!(env.run(["get", "m5", "job"]).ok().trim(), "");
    let after = env.read_state();
    env.run(["run", "m5", "--", "true"]).ok();
    assert_eq!(fs::metadata(&env.state).unwrap().ino(), inode);
    assert_eq!(
        without_bookkeeping(&env.read_state()),
        without_bookkeeping(&after)
    );
}
