//! The lab commands: add, delete, set/get, clear, reserve/release, list and
//! info (table, text and JSON), and how they show stale jobs.
//!
//! What only mama commands and real processes show runs against both
//! backends (`on_both_backends!`: a state file and a database lab); tests
//! that write or read the state file (or the log file) by hand are the file
//! lab's.

use crate::common::users::{as_nobody, binary_for_nobody, nobody_group, second_user};
use crate::common::*;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use chrono::{Local, TimeZone};
use serde_json::Value;

/// The value of the `label` line of `info` text, e.g. `Job status:`.
fn info_line<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
}

/// The rows of the `list` table as printed to a pipe (plain text in
/// aligned columns), as trimmed cells (header first): each column starts
/// where its title does.
fn table_rows(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let header: Vec<char> = header.chars().collect();
    let starts: Vec<usize> = (0..header.len())
        .filter(|&i| header[i] != ' ' && (i == 0 || header[i - 1] == ' '))
        .collect();
    std::iter::once(header.iter().collect::<String>())
        .chain(lines.map(str::to_string))
        .map(|line| {
            let chars: Vec<char> = line.chars().collect();
            starts
                .iter()
                .enumerate()
                .map(|(n, &start)| {
                    let end = starts
                        .get(n + 1)
                        .copied()
                        .unwrap_or(chars.len())
                        .min(chars.len());
                    let start = start.min(end);
                    chars[start..end]
                        .iter()
                        .collect::<String>()
                        .trim()
                        .to_string()
                })
                .collect()
        })
        .collect()
}

/// What `stat` says changes on a write: the bytes, the inode (a write
/// renames a new file in) and the modification time.
fn fingerprint(env: &TestEnv) -> (Vec<u8>, u64, i64, i64) {
    let meta = fs::metadata(&env.state).expect("state exists");
    (
        fs::read(&env.state).expect("read"),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

// ---------------------------------------------------------------- add

on_both_backends! {
    fn add_validates_and_normalises_the_mac_and_stores_every_field(env: &TestEnv) {
        let run = env.run([
            "add",
            "rig1",
            "--mac",
            "AA-BB-CC-DD-EE-0F",
            "--ip",
            " 10.0.0.1 ",
            "--vm",
            "--resources",
            " pdu1   usb ",
        ]);
        run.ok();
        assert!(run.stderr.contains("rig1"), "{run:#?}");
        env.run(["add", "rig2", "--mac", "aA:Bb:cC:dD:Ee:10"]).ok();
        env.run(["add", "rig3", "--mac", "aa:bb:cc:dd:ee:11", "--ip", "::1"])
            .ok();

        let list = env.run(["list", "--json"]).json();
        let rig1 = &list[0];
        assert_eq!(rig1["name"], "rig1");
        assert_eq!(rig1["mac"], "aa:bb:cc:dd:ee:0f");
        assert_eq!(rig1["ip"], "10.0.0.1");
        assert_eq!(rig1["only_vm"], true);
        assert_eq!(rig1["resources"], serde_json::json!(["pdu1", "usb"]));
        let rig2 = &list[1];
        assert_eq!(rig2["mac"], "aa:bb:cc:dd:ee:10");
        assert_eq!(rig2["ip"], Value::Null);
        assert_eq!(rig2["only_vm"], false);
        assert_eq!(rig2["resources"], Value::Null);
        assert_eq!(list[2]["ip"], "::1");
        for m in list.as_array().expect("array") {
            assert_eq!(m["state"], "free");
            assert_eq!(m["is_started"], false);
            for key in [
                "reservation",
                "job",
                "job_pid",
                "job_timestamp",
                "stale_reason",
            ] {
                assert_eq!(m[key], Value::Null, "{key}");
            }
            assert_eq!(m["stale"], false);
        }

        // Every upstream field, once per machine, in upstream order.
        let text = env.stored();
        for block in text.split("<machine>").skip(1) {
            let mut at = 0;
            for tag in UPSTREAM_FIELDS {
                let open = [format!("<{tag}>"), format!("<{tag}/>")];
                let found = open
                    .iter()
                    .filter_map(|o| block.find(o.as_str()))
                    .min()
                    .unwrap_or_else(|| panic!("<{tag}> in {block}"));
                assert!(found >= at, "<{tag}> in upstream order in {block}");
                at = found;
                assert_eq!(
                    open.iter()
                        .map(|o| block.matches(o.as_str()).count())
                        .sum::<usize>(),
                    1,
                    "one <{tag}> in {block}"
                );
            }
        }
        assert!(text.contains("<only_vm>1</only_vm>"), "{text}");
        assert!(text.contains("<resources>pdu1 usb</resources>"), "{text}");
    }

    fn add_refuses_duplicates_bad_addresses_and_bad_names(env: &TestEnv) {
        env.add("rig1", 1);
        let before = env.stored();
        let refused = |args: &[&str], says: &[&str]| {
            let run = env.run(args);
            let stderr = run.fails(1);
            for word in says {
                assert!(
                    stderr.contains(word),
                    "{args:?} should say {word:?}: {run:#?}"
                );
            }
            assert!(!stderr.contains("panicked"), "{run:#?}");
            assert_eq!(env.stored(), before, "{args:?} changed the file");
        };
        refused(
            &["add", "rig1", "--mac", "aa:bb:cc:dd:ee:02"],
            &["'rig1'", "exists"],
        );
        for same_mac in [
            "aa:bb:cc:dd:ee:01",
            "AA:BB:CC:DD:EE:01",
            "aa-bb-cc-dd-ee-01",
        ] {
            refused(
                &["add", "rig2", "--mac", same_mac],
                &["'rig1'", "aa:bb:cc:dd:ee:01"],
            );
        }
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:gg",
            "aabbccddeeff",
            "aa:bb:cc:dd:ee:f",
            "aa:bb:cc:dd:ee:01:02",
            "aa:bb:cc:dd:ee:001",
            "aa.bb.cc.dd.ee.ff",
            "aa:bb:cc:dd:ee:0é",
        ] {
            refused(&["add", "rig2", "--mac", bad], &["not a MAC address"]);
        }
        for bad in ["10.0.0.300", "rig2.example", "1.2.3", "10.0.0.1/24"] {
            refused(
                &["add", "rig2", "--mac", "aa:bb:cc:dd:ee:02", "--ip", bad],
                &[bad, "not an IP address"],
            );
        }
        refused(&["add", "all", "--mac", "aa:bb:cc:dd:ee:02"], &["'all'"]);
        refused(
            &["add", "rig 2", "--mac", "aa:bb:cc:dd:ee:02"],
            &["white space"],
        );
        refused(&["add", "", "--mac", "aa:bb:cc:dd:ee:02"], &["empty"]);
        assert_eq!(
            env.run(["list", "--json"]).json().as_array().map(Vec::len),
            Some(1)
        );
    }
}

// ---------------------------------------------------------------- delete

#[test]
fn delete_refuses_a_live_job_and_allows_a_stale_one() {
    let env = TestEnv::new();
    let holder = sleeper();
    let ts = unix_now().to_string();
    let live_pid = holder.pid().to_string();
    let dead = dead_pid().to_string();
    env.write_state(&lab_xml(&[
        machine_xml(
            "rig1",
            1,
            &[
                ("job", "live one"),
                ("job_pid", &live_pid),
                ("job_timestamp", &ts),
            ],
        ),
        machine_xml(
            "rig2",
            2,
            &[
                ("job", "dead one"),
                ("job_pid", &dead),
                ("job_timestamp", &ts),
            ],
        ),
        machine_xml("rig3", 3, &[]),
    ]));
    let before = env.stored();
    let run = env.run(["delete", "rig1"]);
    let stderr = run.fails(1);
    assert!(
        stderr.contains("live job") && stderr.contains("live one"),
        "{run:#?}"
    );
    assert_eq!(env.stored(), before);

    env.run(["delete", "rig2"]).ok();
    env.run(["delete", "rig3"]).ok();
    let names: Vec<Value> = env
        .run(["list", "--json"])
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["name"].clone())
        .collect();
    assert_eq!(names, ["rig1"]);
    env.run(["delete", "rig3"]).fails_saying(1, "rig3");
}

on_both_backends! {
    fn delete_refuses_a_machine_while_mama_runs_a_job_on_it(env: &TestEnv) {
        env.add("rig1", 1);
        let started = env.path().join("started");
        let go = env.path().join("go");
        let mut args: Vec<OsString> = vec!["run".into(), "rig1".into(), "--".into()];
        args.extend(waiting_job(r#": > "$1""#, &started, &go));
        let mut mama = env.start(&args);
        wait_until("the job to start", LIMIT, || started.exists());

        env.run(["delete", "rig1"]).fails_saying(1, "live job");
        assert_eq!(env.info("rig1")["job_pid"], mama.pid());

        fs::write(&go, "").expect("go");
        mama.finish(LIMIT).ok();
        env.run(["delete", "rig1"]).ok();
        assert_eq!(env.run(["list", "--json"]).json(), serde_json::json!([]));
    }
}

// ---------------------------------------------------------------- set / get

on_both_backends! {
    fn set_and_get_every_attribute(env: &TestEnv) {
        env.add("rig1", 1);
        env.add("rig2", 2);
        // (attr, element, what is set, what is stored)
        let cases = [
            ("ip", "ip", " 10.1.2.3 ", "10.1.2.3"),
            ("ip", "ip", "fe80::1", "fe80::1"),
            ("mac", "mac", "AA-BB-CC-DD-EE-77", "aa:bb:cc:dd:ee:77"),
            ("os", "os", "fedora-41", "fedora-41"),
            ("kernel", "kernel", "6.11.0-rc1", "6.11.0-rc1"),
            (
                "params",
                "boot_params",
                "console=ttyS0 quiet",
                "console=ttyS0 quiet",
            ),
            ("vmparams", "vm_params", "-m 1G -smp 2", "-m 1G -smp 2"),
            ("resources", "resources", "  pdu1   usb ", "pdu1 usb"),
            (
                "startcmd",
                "startcmd",
                "ipmitool power on",
                "ipmitool power on",
            ),
            (
                "stopcmd",
                "stopcmd",
                "ipmitool power off",
                "ipmitool power off",
            ),
            ("start-timeout", "start_timeout", " 120 ", "120"),
            ("arch", "arch", "aarch64 (big.LITTLE)", "aarch64 (big.LITTLE)"),
            ("only-vm", "only_vm", " Yes", "1"),
            ("only_vm", "only_vm", "off", "0"),
            ("only-vm", "only_vm", "TRUE", "1"),
            ("is-started", "is_started", "on", "1"),
            ("pwr-dev", "pwr_dev", " apc-pdu 2 ", " apc-pdu 2 "),
            ("pwr-slot", "pwr_slot", " 07", "7"),
            ("rly-dev", "rly_dev", "usbrelay-A", "usbrelay-A"),
            ("rly_slot", "rly_slot", "12", "12"),
        ];
        for (attr, tag, value, stored) in cases {
            env.run(["set", "rig1", attr, "--", value]).ok();
            assert_eq!(
                env.run(["get", "rig1", attr]).ok(),
                format!("{stored}\n"),
                "get {attr}"
            );
            let text = env.stored();
            let rig1 = &text[..text.find("<name>rig2</name>").expect("rig2")];
            assert!(
                rig1.contains(&format!("<{tag}>{stored}</{tag}>")),
                "<{tag}> holds {stored:?}:\n{text}"
            );
        }
        let info = env.info("rig1");
        assert_eq!(info["ip"], "fe80::1");
        assert_eq!(info["mac"], "aa:bb:cc:dd:ee:77");
        assert_eq!(info["resources"], serde_json::json!(["pdu1", "usb"]));
        assert_eq!(info["boot_params"], "console=ttyS0 quiet");
        assert_eq!(info["start_timeout"], "120");
        assert_eq!(info["arch"], "aarch64 (big.LITTLE)");
        assert_eq!(info["only_vm"], true);
        assert_eq!(info["is_started"], true);
        assert_eq!(info["state"], "started");
        let rig2 = env.info("rig2");
        assert_eq!(rig2["os"], Value::Null, "rig2 untouched");
        assert_eq!(rig2["mac"], "aa:bb:cc:dd:ee:02");

        // get also reads the reservation and the job.
        for attr in ["reservation", "job", "job-pid", "job-timestamp", "job_pid"] {
            assert_eq!(env.run(["get", "rig1", attr]).ok(), "\n", "{attr}");
        }
        env.run(["reserve", "rig1"]).ok();
        assert_eq!(
            env.run(["get", "rig1", "reservation"]).ok(),
            format!("{}\n", user_name())
        );

        // An empty value clears a field (not the MAC: a machine needs one)
        // to what a new machine has: 0 for only_vm and the slots.
        for (attr, tag, _, _) in cases.iter().filter(|c| c.0 != "mac") {
            env.run(["set", "rig1", attr, ""]).ok();
            let text = env.stored();
            let rig1 = &text[..text.find("<name>rig2</name>").expect("rig2")];
            if ["only_vm", "pwr_slot", "rly_slot"].contains(tag) {
                assert_eq!(env.run(["get", "rig1", attr]).ok(), "0\n", "{attr} cleared");
                assert!(rig1.contains(&format!("<{tag}>0</{tag}>")), "<{tag}>:\n{text}");
            } else {
                assert_eq!(env.run(["get", "rig1", attr]).ok(), "\n", "{attr} cleared");
                assert!(rig1.contains(&format!("<{tag}/>")), "<{tag}/>:\n{text}");
            }
        }
        assert_eq!(env.info("rig1")["state"], "reserved", "no longer started");
        env.run(["set", "rig1", "mac", ""])
            .fails_saying(1, "not a MAC address");
    }

    fn set_refuses_bad_values_and_leaves_the_file_alone(env: &TestEnv) {
        env.add("rig1", 1);
        env.add("rig2", 2);
        let before = env.stored();
        for (attr, value, says) in [
            ("ip", "10.0.0.256", "not an IP address"),
            ("ip", "somewhere", "not an IP address"),
            ("mac", "aa:bb:cc:dd:ee", "not a MAC address"),
            ("mac", "AA:BB:CC:DD:EE:02", "'rig2'"),
            ("mac", "aa-bb-cc-dd-ee-02", "'rig2'"),
            ("start-timeout", "soon", "whole number"),
            ("start-timeout", "1.5", "whole number"),
            ("start-timeout", "-3", "whole number"),
            ("only-vm", "2", "only-vm must be 1 or 0"),
            ("only_vm", "maybe", "only-vm must be 1 or 0"),
            ("is-started", "started", "is-started must be 1 or 0"),
            ("pwr-slot", "-1", "pwr-slot must be a whole number"),
            ("pwr-slot", "A3", "pwr-slot must be a whole number"),
            ("rly-slot", "4294967296", "rly-slot must be a whole number"),
            ("pwr-dev", "pdu\t1", "pwr-dev contains the control character U+0009"),
            ("rly-dev", "relay\n2", "rly-dev contains the control character U+000A"),
            ("arch", "x86\u{1b}", "U+001B"),
        ] {
            let run = env.run(["set", "rig1", attr, "--", value]);
            let stderr = run.fails(1);
            assert!(stderr.contains(says), "set {attr} {value:?}: {run:#?}");
            assert_eq!(env.stored(), before, "set {attr} {value:?} changed the file");
        }
        // Its own MAC, in another spelling, is fine.
        env.run(["set", "rig1", "mac", "AA-BB-CC-DD-EE-01"]).ok();
        assert_eq!(env.stored(), before, "same MAC: nothing to write");
    }

    fn unknown_attributes_are_usage_errors(env: &TestEnv) {
        env.add("rig1", 1);
        let before = env.stored();
        for args in [
            vec!["set", "rig1", "colour", "red"],
            vec!["set", "rig1", "job", "mine"],
            vec!["set", "rig1", "reservation", "bob"],
            vec!["set", "rig1", "job-pid", "1"],
            vec!["set", "rig1", "job_timestamp", "1"],
            vec!["set", "rig1", "name", "rig9"],
            vec!["get", "rig1", "colour"],
            vec!["get", "rig1", "job_origin"],
            vec!["get", "rig1", "job_user"],
        ] {
            let run = env.run(&args);
            let stderr = run.fails(2);
            assert!(stderr.contains("possible values"), "{args:?}: {run:#?}");
            assert_eq!(env.stored(), before);
        }
    }

    fn unknown_machines_are_named(env: &TestEnv) {
        env.add("rig1", 1);
        let before = env.stored();
        let commands: [&[&str]; 11] = [
            &["info", "ghost"],
            &["info", "ghost", "--json"],
            &["get", "ghost", "os"],
            &["set", "ghost", "os", "x"],
            &["delete", "ghost"],
            &["clear", "ghost"],
            &["reserve", "ghost"],
            &["release", "ghost"],
            &["release-forced", "ghost"],
            &["wait", "ghost", "--timeout", "0"],
            &["wait", "ghost"],
        ];
        for args in commands {
            let run = env.run(args);
            let stderr = run.fails(1);
            assert!(stderr.contains("'ghost'"), "{args:?}: {run:#?}");
            assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
            assert_eq!(env.stored(), before, "{args:?}");
        }
        env.run(["run", "ghost", "--", "true"])
            .fails_saying(125, "'ghost'");
        assert_eq!(env.stored(), before);
    }
}

on_both_backends! {
    fn every_field_of_set_matches_in_where(env: &TestEnv) {
        env.add("rig1", 1);
        env.add("rig2", 2);
        env.add("rig3", 3);
        for (machine, attr, value) in [
            ("rig1", "arch", "aarch64"),
            ("rig1", "only-vm", "yes"),
            ("rig1", "pwr-dev", "pdu1"),
            ("rig1", "pwr-slot", "3"),
            ("rig1", "rly-dev", "relay-a"),
            ("rig1", "rly-slot", "5"),
            ("rig2", "arch", "x86_64"),
            ("rig2", "pwr-dev", "pdu2"),
            ("rig2", "pwr-slot", "4"),
            ("rig3", "is-started", "1"),
        ] {
            env.run(["set", machine, attr, value]).ok();
        }
        // `wait --any` prints the first free machine that matches.
        let free = |filters: &[&str]| {
            let mut args = vec!["wait", "--any", "--timeout", "0"];
            for filter in filters {
                args.extend(["--where", filter]);
            }
            env.run(&args)
        };
        for (filter, machine) in [
            ("arch=aarch64", "rig1"),
            ("arch=x86_64", "rig2"),
            ("only-vm=1", "rig1"),
            ("only_vm=no", "rig2"),
            ("pwr-dev=pdu2", "rig2"),
            ("pwr-slot=03", "rig1"),
            ("rly-dev=relay-a", "rig1"),
            ("rly-slot=0", "rig2"),
            ("is-started=0", "rig1"),
            ("is_started=off", "rig1"),
        ] {
            assert_eq!(free(&[filter]).ok(), format!("{machine}\n"), "--where {filter}");
        }
        assert_eq!(free(&["is-started=0", "pwr-slot=4"]).ok(), "rig2\n");
        // Only rig3 is started, and being started it is busy.
        free(&["is-started=1"]).fails_saying(75, "started by hand");
        free(&["is-started=1", "arch=x86_64"]).fails_saying(1, "no machine matches");
        let run = env.run(["run", "--where", "rly-slot=5", "--", "sh", "-c", "echo $MAMA_MACHINE"]);
        assert_eq!(run.ok(), "rig1\n");
        // A value `set` refuses is a wrong command line, naming the field.
        free(&["pwr-slot=x"]).fails_saying(2, "pwr-slot must be a whole number");
        free(&["only-vm=2"]).fails_saying(2, "only-vm must be 1 or 0");
        env.run(["run", "--where", "rly-slot=-1", "--", "true"])
            .fails_saying(125, "rly-slot must be a whole number");
    }
}

// ---------------------------------------------------------------- clear

on_both_backends! {
    fn clear_keeps_an_ip_a_person_set(env: &TestEnv) {
        env.run(["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01", "--ip", "10.0.0.1"])
            .ok();
        env.add("rig2", 2);
        env.run(["set", "rig2", "ip", "10.0.0.2"]).ok();
        env.run(["set", "rig2", "is-started", "1"]).ok();
        env.run(["clear", "rig1"]).ok_saying("cleared rig1");
        assert_eq!(env.run(["get", "rig1", "ip"]).ok(), "10.0.0.1\n");
        env.run(["run", "rig1", "--", "true"]).ok();
        env.run(["clear", "all"]).ok_saying("cleared all (2 machines)");
        assert_eq!(env.run(["get", "rig1", "ip"]).ok(), "10.0.0.1\n");
        assert_eq!(env.run(["get", "rig2", "ip"]).ok(), "10.0.0.2\n");
        let rig2 = env.info("rig2");
        assert_eq!(rig2["is_started"], false, "{rig2:#}");
        assert_eq!(rig2["state"], "free", "{rig2:#}");
        // The history tells what was forgotten, and only that.
        let cleared: Vec<_> = env
            .events()
            .into_iter()
            .filter(|e| e["event"] == "cleared")
            .collect();
        assert_eq!(cleared.len(), 1, "{cleared:#?}");
        assert_eq!(cleared[0]["machine"], "rig2");
        assert_eq!(cleared[0]["detail"], "also is_started");
    }
}

#[test]
fn clear_forgets_every_job_element_and_the_hand_start_but_nothing_a_person_set() {
    let env = TestEnv::new();
    let ts = (unix_now() - 50).to_string();
    let dead = dead_pid().to_string();
    let holder = sleeper();
    let live = holder.pid().to_string();
    env.write_state(&lab_xml(&[
        machine_xml(
            "rig1",
            1,
            &[
                ("ip", "10.0.0.1"),
                ("is_started", "1"),
                ("os", "fedora"),
                ("arch", "riscv64"),
                ("pwr_dev", "pdu1"),
                ("pwr_slot", "2"),
                ("reservation", "bob"),
                ("resources", "pdu1"),
                ("job", "nightly"),
                ("job_pid", &dead),
                ("job_timestamp", &ts),
                ("job_host", &host_name()),
                (
                    "job_origin",
                    "boot=00000000-0000-0000-0000-000000000000 pidns=1 start=1",
                ),
                ("job_user", "alice"),
                ("startcmd", "power on"),
            ],
        ),
        machine_xml(
            "rig2",
            2,
            &[
                ("ip", "10.0.0.2"),
                ("job", "smoke"),
                ("job_pid", &live),
                ("job_timestamp", &ts),
            ],
        ),
        machine_xml("rig3", 3, &[("is_started", "1")]),
    ]));
    // rig1's job is stale: cleared, whoever claimed it.
    let run = env.run(["clear", "rig1"]);
    run.ok();
    assert!(run.stderr.contains("rig1"), "{run:#?}");
    let rig1 = env.info("rig1");
    for key in ["job", "job_pid", "job_timestamp", "job_host"] {
        assert_eq!(rig1[key], Value::Null, "{key} forgotten");
    }
    assert_eq!(rig1["is_started"], false);
    assert_eq!(rig1["state"], "reserved");
    assert_eq!(rig1["ip"], "10.0.0.1", "the IP a person set stays");
    assert_eq!(rig1["os"], "fedora");
    assert_eq!(rig1["arch"], "riscv64");
    assert_eq!(rig1["reservation"], "bob");
    assert_eq!(rig1["resources"], serde_json::json!(["pdu1"]));
    assert_eq!(rig1["startcmd"], "power on");
    assert_eq!(rig1["mac"], "aa:bb:cc:dd:ee:01");
    assert_eq!(env.run(["get", "rig1", "pwr-dev"]).ok(), "pdu1\n");
    assert_eq!(env.run(["get", "rig1", "pwr-slot"]).ok(), "2\n");
    let text = env.read_state();
    for mine in ["job_host", "job_origin", "job_user"] {
        assert!(!text.contains(mine), "<{mine}> forgotten: {text}");
    }
    let rig2 = env.info("rig2");
    assert_eq!(rig2["job"], "smoke", "clear rig1 leaves rig2 alone");
    assert_eq!(rig2["ip"], "10.0.0.2");
    assert_eq!(env.info("rig3")["is_started"], true);

    // rig2's live job is this user's own (its PID is theirs): cleared.
    env.run(["clear", "all"])
        .ok_saying("cleared all (3 machines)");
    for m in env
        .run(["list", "--json"])
        .json()
        .as_array()
        .expect("array")
    {
        for key in ["job", "job_pid", "job_timestamp"] {
            assert_eq!(m[key], Value::Null, "{key} of {}", m["name"]);
        }
        assert_eq!(m["is_started"], false);
        assert!(m["ip"].is_string() || m["name"] == "rig3", "{m:#}");
    }
    assert_eq!(env.info("rig1")["reservation"], "bob");
    assert_eq!(env.info("rig2")["ip"], "10.0.0.2");
    env.run(["clear", "ghost"]).fails_saying(1, "ghost");
}

/// A lab whose rig1 runs a live job (the PID of `holder`, this user's own
/// process) that `<job_user>` says `user` claimed, and whose rig2 was
/// started by hand.
fn lab_with_a_claim_of(env: &TestEnv, user: &str, holder: &Bg) {
    let ts = unix_now().to_string();
    let pid = holder.pid().to_string();
    env.write_state(&lab_xml(&[
        machine_xml(
            "rig1",
            1,
            &[
                ("ip", "10.0.0.1"),
                ("job", "their tests"),
                ("job_pid", &pid),
                ("job_timestamp", &ts),
                ("job_user", user),
            ],
        ),
        machine_xml("rig2", 2, &[("is_started", "1")]),
    ]));
}

#[test]
fn clear_leaves_a_live_job_the_record_gives_to_another_user_alone_unless_forced() {
    let env = TestEnv::new();
    let holder = sleeper();
    lab_with_a_claim_of(&env, "alice", &holder);
    let before = env.read_state();
    let pid = holder.pid();

    let run = env.run(["clear", "rig1"]);
    let stderr = run.fails(1);
    for part in [
        "rig1",
        "'their tests'",
        &format!("PID {pid}"),
        "of alice",
        "mama clear --force rig1",
    ] {
        assert!(stderr.contains(part), "{part}: {run:#?}");
    }
    assert_eq!(env.read_state(), before, "nothing was written");

    // `clear all` clears what it may, and names what it left alone.
    let run = env.run(["clear", "all"]);
    let stderr = run.fails(1);
    assert!(stderr.contains("cleared all (1 machine)"), "{run:#?}");
    assert!(
        stderr.contains("left alone: rig1 has a live job 'their tests'"),
        "{run:#?}"
    );
    assert!(stderr.contains("1 machine left alone"), "{run:#?}");
    assert_eq!(env.info("rig2")["is_started"], false, "rig2 was cleared");
    assert_eq!(env.info("rig1")["job"], "their tests", "rig1 was not");

    // Forced, it is forgotten, and the history says whose it was.
    env.run(["clear", "--force", "rig1"])
        .ok_saying("forgot the live job 'their tests'");
    let rig1 = env.info("rig1");
    assert_eq!(rig1["job"], Value::Null, "{rig1:#}");
    assert_eq!(rig1["ip"], "10.0.0.1", "{rig1:#}");
    assert!(!env.read_state().contains("job_user"));
    let event = env.events().pop().expect("an event");
    assert_eq!(event["event"], "cleared", "{event:#}");
    assert_eq!(event["machine"], "rig1", "{event:#}");
    assert_eq!(event["user"], user_name(), "{event:#}");
    assert_eq!(event["job"], "their tests", "{event:#}");
    assert_eq!(event["pid"], pid, "{event:#}");
    assert_eq!(
        event["detail"],
        format!("forced over the live job 'their tests' (PID {pid}) of alice"),
        "{event:#}"
    );
}

#[test]
fn clear_takes_the_recorded_claimer_for_the_jobs_user() {
    let env = TestEnv::new();
    let holder = sleeper();
    // This user's own, by the record: cleared without --force.
    lab_with_a_claim_of(&env, &user_name(), &holder);
    env.run(["clear", "rig1"]).ok();
    assert_eq!(env.info("rig1")["job"], Value::Null);
    // Another user's, but stale (its PID is gone): cleared too.
    let gone = sleeper();
    lab_with_a_claim_of(&env, "alice", &gone);
    drop(gone);
    env.run(["clear", "rig1"]).ok();
    assert_eq!(env.info("rig1")["job"], Value::Null);
    let event = env.events().pop().expect("an event");
    assert_eq!(event["detail"], Value::Null, "not forced: {event:#}");
}

/// `mama ARGS` as the user `nobody`, against `env`'s lab.
fn as_nobody_in(
    env: &TestEnv,
    bin: &std::path::Path,
    group: &str,
    args: &[String],
) -> std::process::Command {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    as_nobody(env, bin, group, &args)
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn clear_leaves_another_users_running_job_alone_unless_forced() {
    second_user();
    let env = TestEnv::new();
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    env.run([
        "add",
        "rig1",
        "--mac",
        "aa:bb:cc:dd:ee:01",
        "--ip",
        "10.0.0.1",
    ])
    .ok();
    env.add("rig2", 2);
    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o666)).expect("chmod");
    // A write by the owner brings the lock file in line with the state.
    env.run(["set", "rig2", "is-started", "1"]).ok();
    let group = nobody_group();
    let (bin, _bin_dir) = binary_for_nobody(&env, &group);
    let script = format!("echo $$ > \"$1/job.pid\"; {}", wait_for_file("go"));
    let mut theirs = Bg::start(as_nobody_in(
        &env,
        &bin,
        &group,
        &sh_job(&env, "rig1", &["--job", "nightly"], &script),
    ));
    wait_until("nobody's job", LIMIT, || {
        env.path().join("job.pid").exists()
    });
    let pid = theirs.pid();
    assert_eq!(env.info("rig1")["job_pid"], pid);

    let run = env.run(["clear", "rig1"]);
    let stderr = run.fails(1);
    for part in ["'nightly'", &format!("PID {pid}"), "of nobody", "--force"] {
        assert!(stderr.contains(part), "{part}: {run:#?}");
    }
    let run = env.run(["clear", "all"]);
    assert!(run.fails(1).contains("left alone: rig1"), "{run:#?}");
    assert_eq!(env.info("rig1")["job"], "nightly");
    assert_eq!(env.info("rig2")["state"], "free");

    env.run(["clear", "rig1", "--force"])
        .ok_saying("forgot the live job 'nightly'");
    let rig1 = env.info("rig1");
    assert_eq!(rig1["job"], Value::Null, "{rig1:#}");
    assert_eq!(rig1["ip"], "10.0.0.1", "{rig1:#}");
    assert_eq!(rig1["state"], "busy", "its job still runs: {rig1:#}");
    let cleared = env.events().pop().expect("an event");
    assert_eq!(cleared["event"], "cleared", "{cleared:#}");
    assert_eq!(cleared["user"], user_name(), "{cleared:#}");
    assert_eq!(cleared["job"], "nightly", "{cleared:#}");
    let detail = cleared["detail"].as_str().expect("a detail");
    assert!(
        detail.contains("of nobody") && detail.contains(&format!("PID {pid}")),
        "{detail}"
    );

    // Its run ends as it would have, and leaves the record alone: the
    // history holds its claim and the clear that ended the record.
    env.touch("go");
    theirs
        .finish(LIMIT)
        .ok_saying("was cleared or taken over while the job ran; leaving the record alone");
    let events: Vec<_> = env
        .events()
        .into_iter()
        .filter(|e| e["machine"] == "rig1" && e["pid"] == pid)
        .map(|e| (e["event"].clone(), e["user"].clone()))
        .collect();
    assert_eq!(
        events,
        [
            (Value::from("claimed"), Value::from("nobody")),
            (Value::from("cleared"), Value::from(user_name())),
        ]
    );
    assert_eq!(env.info("rig1")["state"], "free");
}

// ---------------------------------------------------------------- reservations

on_both_backends! {
    fn reserve_and_release_by_the_holder(env: &TestEnv) {
        env.add("rig1", 1);
        let me = user_name();
        env.run(["reserve", "rig1"]).ok();
        assert_eq!(
            env.run(["get", "rig1", "reservation"]).ok(),
            format!("{me}\n")
        );
        let info = env.info("rig1");
        assert_eq!(info["reservation"], me.as_str());
        assert_eq!(info["state"], "reserved");
        let rows = table_rows(env.run(["list"]).ok());
        assert_eq!(rows[1][4], "reserved");
        assert_eq!(rows[1][5], me);

        let before = env.stored();
        env.run(["reserve", "rig1"]).ok();
        assert_eq!(env.stored(), before, "reserving again changes nothing");

        env.run(["release", "rig1"]).ok();
        assert_eq!(env.run(["get", "rig1", "reservation"]).ok(), "\n");
        assert_eq!(env.info("rig1")["state"], "free");
        env.run(["release", "rig1"]).fails_saying(1, "not reserved");
    }
}

#[test]
fn only_the_holder_releases_but_anyone_may_force() {
    let env = TestEnv::new();
    let other = "someone-else-7f3a";
    assert_ne!(user_name(), other);
    env.write_state(&lab_xml(&[
        machine_xml("rig1", 1, &[("reservation", other)]),
        machine_xml("rig2", 2, &[]),
    ]));
    let before = env.stored();
    for args in [["reserve", "rig1"], ["release", "rig1"]] {
        let run = env.run(args);
        assert!(run.fails(1).contains(other), "{args:?}: {run:#?}");
        assert_eq!(env.stored(), before, "{args:?}");
    }
    let run = env.run(["release-forced", "rig1"]);
    run.ok();
    assert!(run.stderr.contains(other), "says whose it was: {run:#?}");
    assert_eq!(env.run(["get", "rig1", "reservation"]).ok(), "\n");
    assert_eq!(env.info("rig1")["state"], "free");
    // Forcing an unreserved machine is harmless.
    let run = env.run(["release-forced", "rig2"]);
    run.ok();
    assert!(run.stderr.contains("not reserved"), "{run:#?}");
    env.run(["reserve", "rig1"]).ok();
}

// ---------------------------------------------------------------- usage

on_both_backends! {
    fn usage_errors_exit_2_and_touch_nothing(env: &TestEnv) {
        env.add("rig1", 1);
        let before = env.stored();
        let usage: [&[&str]; 14] = [
            &[],
            &["frobnicate"],
            &["add", "rig9"],
            &["add", "--mac", "aa:bb:cc:dd:ee:09"],
            &["add", "-x", "--mac", "aa:bb:cc:dd:ee:09"],
            &["set", "rig1", "os"],
            &["set", "rig1", "os", "a", "b"],
            &["get", "rig1"],
            &["info"],
            &["list", "--bogus"],
            &["clear"],
            &["delete"],
            &["reserve"],
            &["wait", "rig1", "--timeout", "soon"],
        ];
        for args in usage {
            let run = env.run(args);
            let stderr = run.fails(2);
            assert!(!stderr.is_empty(), "{args:?}: {run:#?}");
            assert!(!stderr.contains("panicked"), "{args:?}: {run:#?}");
            assert_eq!(env.stored(), before, "{args:?}");
        }
        // `run` reports a wrong command line as its own failure, 125.
        for args in [
            &["run", "rig1", "--bogus", "--", "true"][..],
            &[
                "run",
                "rig1",
                "--no-wait",
                "--wait-timeout",
                "1",
                "--",
                "true",
            ],
            &["run", "rig1", "--timeout", "-1", "--", "true"],
        ] {
            let run = env.run(args);
            run.fails(125);
            assert_eq!(env.stored(), before, "{args:?}");
        }
    }
}

// ---------------------------------------------------------------- list

#[test]
fn list_shows_a_table_and_marks_stale_jobs() {
    let env = TestEnv::new();
    let holder = sleeper();
    let ts = unix_now().to_string();
    let live = holder.pid().to_string();
    let dead = dead_pid().to_string();
    env.write_state(&lab_xml(&[
        machine_xml("rig1", 1, &[("ip", "10.0.0.1")]),
        machine_xml(
            "rig2",
            2,
            &[
                ("job", "nightly"),
                ("job_pid", &dead),
                ("job_timestamp", &ts),
            ],
        ),
        machine_xml(
            "rig3",
            3,
            &[("job", "smoke"), ("job_pid", &live), ("job_timestamp", &ts)],
        ),
        machine_xml("rig4", 4, &[("reservation", "bob")]),
        machine_xml("rig5", 5, &[("is_started", "1")]),
        // Neither PID nor timestamp: list must not stamp it.
        machine_xml("rig6", 6, &[("job", "by hand")]),
        machine_xml("rig7", 7, &[("job_pid", &dead), ("job_timestamp", &ts)]),
    ]));
    let before = fingerprint(&env);

    // The machines are not asked whether they answer: no Online column.
    let list = env.run(["list", "--no-probe"]);
    let rows = table_rows(list.ok());
    assert_eq!(
        rows[0],
        [
            "No", "Name", "IP", "MAC", "State", "Reserved", "User", "Job"
        ]
    );
    // Jobs written by hand name no user: it shows as unknown, never guessed.
    let expected = [
        [
            "1",
            "rig1",
            "10.0.0.1",
            "aa:bb:cc:dd:ee:01",
            "free",
            "",
            "",
            "",
        ],
        [
            "2",
            "rig2",
            "",
            "aa:bb:cc:dd:ee:02",
            "stale",
            "",
            "?",
            "nightly [STALE]",
        ],
        [
            "3",
            "rig3",
            "",
            "aa:bb:cc:dd:ee:03",
            "busy",
            "",
            "?",
            "smoke",
        ],
        [
            "4",
            "rig4",
            "",
            "aa:bb:cc:dd:ee:04",
            "reserved",
            "bob",
            "",
            "",
        ],
        ["5", "rig5", "", "aa:bb:cc:dd:ee:05", "started", "", "", ""],
        [
            "6",
            "rig6",
            "",
            "aa:bb:cc:dd:ee:06",
            "busy",
            "",
            "?",
            "by hand",
        ],
    ];
    for (row, want) in rows[1..].iter().zip(&expected) {
        assert_eq!(row, want, "{}", list.stdout);
    }
    assert_eq!(rows.len(), 8, "{}", list.stdout);
    // A job without a label still shows, by its PID.
    assert_eq!(rows[7][4], "stale");
    assert!(
        rows[7][7].contains(&dead) && rows[7][7].ends_with(" [STALE]"),
        "{:?}",
        rows[7]
    );

    // Reading never writes: not list, not info, not get.
    env.run(["list", "--json"]).ok();
    for name in ["rig1", "rig2", "rig3", "rig6", "rig7"] {
        env.run(["info", name]).ok();
        env.run(["info", name, "--json"]).ok();
        env.run(["get", name, "job"]).ok();
    }
    assert_eq!(fingerprint(&env), before, "the state file was written");
    assert_eq!(env.files_containing("tmp"), Vec::<String>::new());
}

/// A test of a JSON value's type.
type Check = fn(&Value) -> bool;

#[test]
fn json_output_has_the_documented_shape() {
    let env = TestEnv::new();
    let ts = unix_now().to_string();
    let dead = dead_pid().to_string();
    env.write_state(&lab_xml(&[
        machine_xml("rig1", 1, &[]),
        machine_xml(
            "rig2",
            2,
            &[
                ("ip", "10.0.0.2"),
                ("reservation", "bob"),
                ("resources", "pdu1 usb"),
                ("is_started", "1"),
                ("job", "nightly"),
                ("job_pid", &dead),
                ("job_timestamp", &ts),
            ],
        ),
    ]));
    let list = env.run(["list", "--json"]).json();
    let machines = list.as_array().expect("list --json is an array");
    assert_eq!(machines.len(), 2);
    for m in machines {
        let object = m.as_object().expect("each machine is an object");
        let kinds: [(&str, Check); 13] = [
            ("name", Value::is_string),
            ("mac", Value::is_string),
            ("ip", |v| v.is_null() || v.is_string()),
            ("reservation", |v| v.is_null() || v.is_string()),
            ("resources", |v| {
                v.is_null()
                    || v.as_array()
                        .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string))
            }),
            ("is_started", Value::is_boolean),
            ("job", |v| v.is_null() || v.is_string()),
            ("job_pid", |v| v.is_null() || v.is_u64()),
            ("job_timestamp", |v| v.is_null() || v.is_i64()),
            ("stale", Value::is_boolean),
            ("stale_reason", |v| v.is_null() || v.is_string()),
            ("job_user", |v| v.is_null() || v.is_string()),
            ("blocked_by", |v| v.is_null() || v.is_object()),
        ];
        for (key, ok) in kinds {
            let value = object.get(key).unwrap_or_else(|| panic!("{key} in {m}"));
            assert!(ok(value), "{key} has the wrong type in {m}");
        }
        for (key, value) in object {
            assert_ne!(value, "", "{key}: empty fields are null, not \"\"");
        }
        // info --json says the same (and may say more).
        let info = env.info(m["name"].as_str().expect("name"));
        for (key, value) in object {
            assert_eq!(
                &info[key], value,
                "{key}: info --json and list --json agree"
            );
        }
    }
    let rig1 = &machines[0];
    for key in [
        "ip",
        "reservation",
        "resources",
        "job",
        "job_pid",
        "job_timestamp",
        "stale_reason",
    ] {
        assert_eq!(rig1[key], Value::Null, "{key} of an empty machine");
    }
    let rig2 = &machines[1];
    assert_eq!(rig2["ip"], "10.0.0.2");
    assert_eq!(rig2["reservation"], "bob");
    assert_eq!(rig2["resources"], serde_json::json!(["pdu1", "usb"]));
    assert_eq!(rig2["is_started"], true);
    assert_eq!(rig2["job"], "nightly");
    assert_eq!(rig2["job_pid"].as_u64(), dead.parse().ok());
    assert_eq!(rig2["job_timestamp"].as_i64(), ts.parse().ok());
    assert_eq!(rig2["stale"], true);
}

// ---------------------------------------------------------------- staleness

/// A lab of one machine `rig1` with `fields`; returns its `list --json`
/// entry and its `info` text, both read with `envs` set. Checks that the
/// JSON of `list` and of `info` agree, and that reading wrote nothing.
fn judged(env: &TestEnv, fields: &[(&str, &str)], envs: &[(&str, &str)]) -> (Value, String) {
    env.write_state(&lab_xml(&[machine_xml("rig1", 1, fields)]));
    let before = fingerprint(env);
    let read = |args: &[&str]| -> Run {
        let mut cmd = env.cmd(args);
        cmd.envs(envs.iter().copied());
        cmd.output().expect("mama runs").into()
    };
    let list = read(&["list", "--json"]);
    list.ok();
    let entry = list.json()[0].clone();
    let info_json = read(&["info", "rig1", "--json"]);
    info_json.ok();
    let info_json = info_json.json();
    for key in ["job", "job_pid", "job_timestamp", "stale", "state"] {
        assert_eq!(info_json[key], entry[key], "{key}: info and list agree");
    }
    let info = read(&["info", "rig1"]);
    let text = info.ok().to_string();
    assert_eq!(fingerprint(env), before, "judging wrote the state file");
    (entry, text)
}

/// [`judged`] for a lab whose `rig1` holds the job `label`, claimed at `ts`
/// by `pid` (no `<job_pid>` when `None`).
fn judged_job(env: &TestEnv, label: &str, pid: Option<&str>, ts: i64) -> (Value, String) {
    let ts = ts.to_string();
    let mut fields = vec![("job", label), ("job_timestamp", ts.as_str())];
    fields.extend(pid.map(|pid| ("job_pid", pid)));
    judged(env, &fields, &[])
}

/// Asserts that `json` tells a stale job; returns why it is stale.
#[track_caller]
fn stale_reason(json: &Value) -> &str {
    assert_eq!(json["stale"], true, "{json}");
    json["stale_reason"].as_str().expect("a reason")
}

/// Checks the job lines of `info` text for a job with `label`, `pid` and
/// timestamp `ts`; returns the `Job status:` value.
fn job_lines(text: &str, label: &str, pid: Option<&str>, ts: i64) -> String {
    assert_eq!(info_line(text, "Running job:"), Some(label), "{text}");
    assert_eq!(info_line(text, "Job PID:"), pid, "{text}");
    let when = Local
        .timestamp_opt(ts, 0)
        .single()
        .expect("local time")
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let started = info_line(text, "Job started:").unwrap_or_else(|| panic!("{text}"));
    assert!(
        started.starts_with(&format!("{when} (")) && started.ends_with(" ago)"),
        "Job started: {started:?}, want {when} and an age"
    );
    info_line(text, "Job status:")
        .unwrap_or_else(|| panic!("{text}"))
        .to_string()
}

/// `text` with its ages (`12 s ago`) blanked: two reads a second apart
/// differ there.
fn without_age(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(" s ago") {
        let digits = rest[..at].trim_end_matches(|c: char| c.is_ascii_digit());
        assert!(digits.len() < at, "an age before 's ago' in {text:?}");
        out.push_str(digits);
        out.push_str("AGE s ago");
        rest = &rest[at + " s ago".len()..];
    }
    out.push_str(rest);
    out
}

#[test]
fn a_dead_pid_is_stale() {
    let env = TestEnv::new();
    let pid = dead_pid().to_string();
    let ts = unix_now();
    let (json, text) = judged_job(&env, "nightly", Some(&pid), ts);
    let reason = stale_reason(&json);
    assert_eq!(json["state"], "stale");
    assert!(
        reason.contains(&format!("PID {pid} is not running")),
        "{reason}"
    );
    let status = job_lines(&text, "nightly", Some(&pid), ts);
    assert_eq!(status, format!("STALE ({reason})"));
}

#[test]
fn a_live_pid_that_predates_its_claim_is_running() {
    let env = TestEnv::new();
    let holder = sleeper();
    let pid = holder.pid().to_string();
    // The claim is stamped after the process started.
    let ts = unix_now();
    let (json, text) = judged_job(&env, "smoke", Some(&pid), ts);
    assert_eq!(json["stale"], false, "{json}");
    assert_eq!(json["stale_reason"], Value::Null);
    assert_eq!(json["state"], "busy");
    assert_eq!(job_lines(&text, "smoke", Some(&pid), ts), "running");
    assert!(alive(holder.pid()));
}

#[test]
fn a_reused_pid_is_stale() {
    let env = TestEnv::new();
    // A live process that started long after the claim: not the claimer.
    let holder = sleeper();
    let pid = holder.pid().to_string();
    let ts = unix_now() - 100;
    let (json, text) = judged_job(&env, "old", Some(&pid), ts);
    let reason = stale_reason(&json);
    assert_eq!(json["state"], "stale");
    assert!(
        reason.contains(&format!("PID {pid} was reused")),
        "{reason}"
    );
    assert_eq!(
        job_lines(&text, "old", Some(&pid), ts),
        format!("STALE ({reason})")
    );
}

#[test]
fn no_pid_and_an_old_timestamp_is_stale() {
    let env = TestEnv::new();
    let ts = unix_now() - 400;
    let (json, text) = judged_job(&env, "by hand", None, ts);
    let reason = stale_reason(&json);
    assert_eq!(json["job_pid"], Value::Null);
    assert!(
        reason.contains("no PID") && reason.contains("stale after 300 s"),
        "{reason}"
    );
    assert_eq!(
        without_age(&job_lines(&text, "by hand", None, ts)),
        without_age(&format!("STALE ({reason})"))
    );
}

#[test]
fn no_pid_and_a_recent_timestamp_is_running() {
    let env = TestEnv::new();
    let ts = unix_now() - 10;
    let (json, text) = judged_job(&env, "by hand", None, ts);
    assert_eq!(json["stale"], false, "{json}");
    assert_eq!(json["state"], "busy");
    assert_eq!(job_lines(&text, "by hand", None, ts), "running");
}

#[test]
fn no_job_is_free_and_shows_no_job_lines() {
    let env = TestEnv::new();
    let (json, text) = judged(&env, &[("os", "fedora")], &[]);
    assert_eq!(json["state"], "free");
    assert_eq!(json["stale"], false);
    for key in ["job", "job_pid", "job_timestamp", "stale_reason"] {
        assert_eq!(json[key], Value::Null, "{key}");
    }
    for label in ["Running job:", "Job PID:", "Job started:", "Job status:"] {
        assert_eq!(info_line(&text, label), None, "{text}");
    }
    assert_eq!(info_line(&text, "OS:"), Some("fedora"), "{text}");
}

#[test]
fn mama_stale_after_sets_the_age_of_a_job_without_pid() {
    let env = TestEnv::new();
    let ts = unix_now() - 20;
    let fields = [("job", "by hand"), ("job_timestamp", &ts.to_string()[..])];
    let (json, _) = judged(&env, &fields, &[]);
    assert_eq!(json["stale"], false, "20 s is young by default: {json}");
    let (json, _) = judged(&env, &fields, &[("MAMA_STALE_AFTER", "60")]);
    assert_eq!(json["stale"], false, "{json}");
    let (json, text) = judged(&env, &fields, &[("MAMA_STALE_AFTER", "10")]);
    let reason = stale_reason(&json);
    assert!(reason.contains("stale after 10 s"), "{reason}");
    assert_eq!(
        without_age(&job_lines(&text, "by hand", None, ts)),
        without_age(&format!("STALE ({reason})"))
    );
    let run = env
        .cmd(["list"])
        .env("MAMA_STALE_AFTER", "soon")
        .output()
        .expect("mama runs");
    let run: Run = run.into();
    assert!(run.fails(1).contains("MAMA_STALE_AFTER"), "{run:#?}");
}

#[test]
fn another_hosts_job_is_not_judged_by_a_local_pid() {
    let env = TestEnv::new();
    let other = "build-host-7.invalid";
    assert_ne!(host_name(), other);
    let pid = dead_pid().to_string();
    let ts = unix_now() - 1000;
    let fields = [
        ("job", "remote job"),
        ("job_pid", &pid[..]),
        ("job_timestamp", &ts.to_string()[..]),
        ("job_host", other),
    ];
    let (json, text) = judged(&env, &fields, &[]);
    assert_eq!(json["stale"], false, "{json}");
    assert_eq!(json["state"], "busy");
    assert_eq!(json["job_host"], other);
    assert_eq!(job_lines(&text, "remote job", Some(&pid), ts), "running");
    assert_eq!(info_line(&text, "Job host:"), Some(other), "{text}");
    let table = env.run(["list"]).ok().to_string();
    assert!(
        table.contains(&format!("remote job (on {other})")),
        "{table}"
    );

    // The same record claimed on this host is stale.
    let here = host_name();
    let fields = [
        ("job", "remote job"),
        ("job_pid", &pid[..]),
        ("job_timestamp", &ts.to_string()[..]),
        ("job_host", &here[..]),
    ];
    let (json, _) = judged(&env, &fields, &[]);
    assert_eq!(json["stale"], true, "{json}");
}

on_both_backends! {
    fn get_json_prints_a_string_or_null(env: &TestEnv) {
        env.add("rig1", 1);
        env.run(["set", "rig1", "params", "console=ttyS0 \"quoted\""])
            .ok();
        let value: serde_json::Value =
            serde_json::from_str(env.run(["get", "rig1", "params", "--json"]).ok()).expect("JSON");
        assert_eq!(value, serde_json::json!("console=ttyS0 \"quoted\""));
        let empty: serde_json::Value =
            serde_json::from_str(env.run(["get", "rig1", "kernel", "--json"]).ok()).expect("JSON");
        assert_eq!(empty, serde_json::Value::Null);
        let err = env.run(["get", "nosuch", "kernel", "--json"]);
        assert!(err.fails(1).contains("nosuch"), "{err:?}");
    }
}

// ---------------------------------------------------------------- holders

/// The row of `machine` in the `list` table, by column name.
fn list_row(env: &TestEnv, machine: &str) -> std::collections::HashMap<String, String> {
    let list = env.run(["list"]);
    let rows = table_rows(list.ok());
    let row = rows
        .iter()
        .find(|row| row.get(1).is_some_and(|name| name == machine))
        .unwrap_or_else(|| panic!("{machine} in {}", list.stdout));
    rows[0].iter().cloned().zip(row.iter().cloned()).collect()
}

/// The `list --json` entry of `machine`, checked to be what `info --json`
/// says too.
#[track_caller]
fn listed(env: &TestEnv, machine: &str) -> Value {
    let list = env.run(["list", "--json"]).json();
    let entry = list
        .as_array()
        .and_then(|all| all.iter().find(|m| m["name"] == machine))
        .unwrap_or_else(|| panic!("{machine} in {list:#}"))
        .clone();
    let info = env.info(machine);
    for (key, value) in entry.as_object().expect("an object") {
        assert_eq!(
            &info[key], value,
            "{key}: info --json and list --json agree"
        );
    }
    entry
}

/// Loads the machines of `xml` (upstream's format) into the lab, as
/// another tool or a person would have written them.
fn import(env: &TestEnv, xml: &str) {
    let path = env.path().join("import.xml");
    fs::write(&path, xml).expect("write the file to import");
    env.run(["import", path.to_str().expect("a UTF-8 path")])
        .ok();
}

/// A job on `machine` held by `mama run` until `$1/go` appears.
fn hold(env: &TestEnv, machine: &str, label: &str) -> Bg {
    let script = format!("touch \"$1/started\"; {}", wait_for_file("go"));
    let holder = env.start(sh_job(env, machine, &["--job", label], &script));
    wait_until("the job to start", LIMIT, || {
        env.path().join("started").exists()
    });
    holder
}

on_both_backends! {
    fn the_holders_user_is_recorded_and_shown_everywhere(env: &TestEnv) {
        let user = user_name();
        env.add("m", 1);
        let mut holder = hold(env, "m", "held");

        let row = list_row(env, "m");
        assert_eq!(row["User"], user, "{row:?}");
        assert_eq!(row["Job"], "held", "{row:?}");
        let entry = listed(env, "m");
        assert_eq!(entry["job_user"], user.as_str(), "{entry:#}");
        let info = env.run(["info", "m"]);
        assert_eq!(info_line(info.ok(), "Job user:"), Some(user.as_str()), "{info:?}");
        let export = env.run(["export"]);
        assert!(
            export.ok().contains(&format!("<job_user>{user}</job_user>")),
            "{}",
            export.stdout
        );
        // Whoever waits is told whose job it is.
        let mut waiter = env.start(["run", "m", "--", "true"]);
        let told = waiter.expect_stderr("is busy", LIMIT);
        assert!(
            told.contains(&format!("runs job 'held' (PID {}, user {user})", holder.pid())),
            "{told}"
        );

        env.touch("go");
        holder.finish(LIMIT).ok();
        waiter.finish(LIMIT).ok();
        // The claim's user leaves with the claim.
        assert_eq!(listed(env, "m")["job_user"], Value::Null);
        assert!(!env.run(["export"]).ok().contains("job_user"));
        assert!(!env.stored().contains("job_user"), "{}", env.stored());
        let events = env.events();
        let claims: Vec<&Value> = events
            .iter()
            .filter(|e| e["event"] == "claimed" && e["job"] == "held")
            .collect();
        assert_eq!(claims.len(), 1, "{claims:?}");
        assert_eq!(claims[0]["user"], user.as_str());
    }

    fn a_job_record_without_a_user_shows_the_user_as_unknown(env: &TestEnv) {
        // A live process of this user's: its owner is no claimer, and is
        // never taken for one.
        let process = sleeper();
        let now = unix_now();
        import(
            env,
            &with_job(&lab_xml(&[machine_xml("m", 1, &[])]), "m", "by hand", Some(process.pid()), now),
        );
        let row = list_row(env, "m");
        assert_eq!(row["State"], "busy", "{row:?}");
        assert_eq!(row["User"], "?", "{row:?}");
        let entry = listed(env, "m");
        assert_eq!(entry["job_user"], Value::Null, "{entry:#}");
        let info = env.run(["info", "m"]);
        assert_eq!(info_line(info.ok(), "Job user:"), Some("unknown"), "{info:?}");
        env.run(["run", "m", "--no-wait", "--", "true"])
            .fails_saying(75, &format!("runs job 'by hand' (PID {}, user unknown)", process.pid()));
        assert!(!env.run(["export"]).ok().contains("job_user"));
    }
}

// ---------------------------------------------------------------- blocked

on_both_backends! {
    fn a_machine_sharing_a_resource_with_a_reserved_or_started_one_is_blocked(env: &TestEnv) {
        import(
            env,
            &lab_xml(&[
                machine_xml("rig1", 1, &[("resources", "pdu1"), ("reservation", "alice")]),
                machine_xml("rig2", 2, &[("resources", "usb pdu1")]),
                machine_xml("rig3", 3, &[("resources", "pdu1")]),
                machine_xml("rig4", 4, &[("resources", "pdu2")]),
                // Its own reservation decides, not its resources.
                machine_xml("rig5", 5, &[("resources", "pdu1"), ("reservation", "bob")]),
                machine_xml("rig6", 6, &[("resources", "hub"), ("is_started", "1")]),
                machine_xml("rig7", 7, &[("resources", "hub")]),
            ]),
        );
        for (machine, state) in [
            ("rig1", "reserved"),
            ("rig2", "blocked (rig1 reserved by alice)"),
            ("rig3", "blocked (rig1 reserved by alice)"),
            ("rig4", "free"),
            ("rig5", "reserved"),
            ("rig6", "started"),
            ("rig7", "blocked (rig6 started by hand)"),
        ] {
            assert_eq!(list_row(env, machine)["State"], state, "{machine}");
        }
        let rig3 = listed(env, "rig3");
        assert_eq!(rig3["state"], "blocked", "{rig3:#}");
        assert_eq!(
            rig3["blocked_by"],
            serde_json::json!({
                "machine": "rig1", "reason": "reserved", "user": "alice", "job": null,
                "job_pid": null, "job_host": null, "resources": ["pdu1"],
            })
        );
        let rig7 = listed(env, "rig7");
        assert_eq!(rig7["state"], "blocked", "{rig7:#}");
        assert_eq!(rig7["blocked_by"]["machine"], "rig6");
        assert_eq!(rig7["blocked_by"]["reason"], "started");
        assert_eq!(rig7["blocked_by"]["user"], Value::Null);
        for free_or_own in ["rig1", "rig4", "rig5", "rig6"] {
            assert_eq!(listed(env, free_or_own)["blocked_by"], Value::Null, "{free_or_own}");
        }
        let info = env.run(["info", "rig3"]);
        assert_eq!(info_line(info.ok(), "State:"), Some("blocked"), "{info:?}");
        assert_eq!(
            info_line(info.ok(), "Blocked by:"),
            Some("rig1, reserved by alice; shares pdu1"),
            "{info:?}"
        );
        // What the views say is what a claim finds.
        env.run(["run", "rig3", "--no-wait", "--", "true"])
            .fails_saying(75, "rig1, which shares a resource with it, is reserved by alice");
        env.run(["run", "rig7", "--no-wait", "--", "true"])
            .fails_saying(75, "rig6, which shares a resource with it, was started by hand");
        env.run(["run", "rig4", "--no-wait", "--", "true"]).ok();

        // The next machine holding the resource blocks in its turn.
        env.run(["release-forced", "rig1"]).ok();
        let rig3 = listed(env, "rig3");
        assert_eq!(rig3["blocked_by"]["machine"], "rig5", "{rig3:#}");
        assert_eq!(rig3["blocked_by"]["user"], "bob", "{rig3:#}");
        assert_eq!(list_row(env, "rig1")["State"], "blocked (rig5 reserved by bob)");
        env.run(["run", "rig3", "--no-wait", "--", "true"])
            .fails_saying(75, "reserved by bob");
        env.run(["release-forced", "rig5"]).ok();
        let rig3 = listed(env, "rig3");
        assert_eq!(rig3["state"], "free", "{rig3:#}");
        assert_eq!(rig3["blocked_by"], Value::Null, "{rig3:#}");
        env.run(["run", "rig3", "--no-wait", "--", "true"]).ok();
    }

    fn a_machine_sharing_a_resource_with_a_busy_one_is_blocked(env: &TestEnv) {
        let user = user_name();
        for (name, n, resources) in [("rig1", 1, "pdu1"), ("rig2", 2, "pdu1 usb"), ("rig3", 3, "usb2")] {
            env.run(["add", name, "--mac", &format!("aa:bb:cc:dd:ee:{n:02x}"), "--resources", resources])
                .ok();
        }
        let mut holder = hold(env, "rig1", "held");
        assert_eq!(list_row(env, "rig1")["State"], "busy");
        let row = list_row(env, "rig2");
        assert_eq!(row["State"], format!("blocked (rig1 in use by {user})"), "{row:?}");
        // The job is rig1's: rig2 has none of its own.
        assert_eq!(row["User"], "", "{row:?}");
        assert_eq!(row["Job"], "", "{row:?}");
        assert_eq!(list_row(env, "rig3")["State"], "free");
        let rig2 = listed(env, "rig2");
        assert_eq!(rig2["state"], "blocked", "{rig2:#}");
        assert_eq!(
            rig2["blocked_by"],
            serde_json::json!({
                "machine": "rig1", "reason": "job", "user": user, "job": "held",
                "job_pid": holder.pid(), "job_host": host_name(), "resources": ["pdu1"],
            })
        );
        assert_eq!(rig2["job"], Value::Null, "{rig2:#}");
        let info = env.run(["info", "rig2"]);
        assert_eq!(info_line(info.ok(), "State:"), Some("blocked"), "{info:?}");
        assert_eq!(
            info_line(info.ok(), "Blocked by:"),
            Some(format!("rig1, job 'held' (PID {}) of user {user}; shares pdu1", holder.pid()).as_str()),
            "{info:?}"
        );
        env.run(["run", "rig2", "--no-wait", "--", "true"])
            .fails_saying(75, "rig1, which shares a resource with it, runs job 'held'");
        env.run(["run", "rig3", "--no-wait", "--", "true"]).ok();

        env.touch("go");
        holder.finish(LIMIT).ok();
        let rig2 = listed(env, "rig2");
        assert_eq!(rig2["state"], "free", "{rig2:#}");
        assert_eq!(rig2["blocked_by"], Value::Null, "{rig2:#}");
        assert_eq!(list_row(env, "rig2")["State"], "free");
        env.run(["run", "rig2", "--no-wait", "--", "true"]).ok();
    }
}

#[test]
fn an_unknown_machine_gets_the_nearest_name_suggested() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.add("fileserver", 2);
    env.run(["run", "rgi1", "--", "true"])
        .fails_saying(125, "unknown machine 'rgi1' (did you mean rig1?)");
    env.run(["info", "filesever"])
        .fails_saying(1, "did you mean fileserver?");
    env.run(["info", "zzz"])
        .fails_saying(1, "unknown machine 'zzz' (see `mama list`)");
}

#[test]
fn an_unknown_command_gets_a_tip_that_makes_sense() {
    let env = TestEnv::new();
    for (typed, meant) in [
        ("ls", "list"),
        ("rm", "delete"),
        ("history", "log"),
        ("lsit", "list"),
        ("stat", "stats"),
        ("relase", "release"),
    ] {
        let said = env
            .run([typed])
            .fails_saying(2, &format!("'{typed}'"))
            .to_string();
        assert!(
            said.contains(&format!("tip: a similar subcommand exists: '{meant}'\n")),
            "{typed}: {said}"
        );
    }
    let unknown = env.run(["xyzzy"]);
    let said = unknown.fails_saying(2, "unrecognized subcommand 'xyzzy'");
    assert!(!said.contains("tip:"), "{said}");
}

#[test]
fn who_tells_who_holds_what_and_list_mine_shows_ones_own() {
    let env = TestEnv::new();
    let me = user_name();
    let now = unix_now();
    let live = std::process::id().to_string();
    env.write_state(&lab_xml(&[
        machine_xml(
            "rig1",
            1,
            &[
                ("job", "nightly"),
                ("job_pid", &live),
                ("job_timestamp", &now.to_string()),
                ("job_user", "carol"),
            ],
        ),
        machine_xml("rig2", 2, &[("reservation", &me)]),
        machine_xml("rig3", 3, &[("is_started", "1"), ("started_by", "dave")]),
        machine_xml("rig4", 4, &[]),
        machine_xml("rig5", 5, &[("reservation", "erin")]),
    ]));
    env.run(["reserve", "rig2", "--for", "2h"]).ok();
    let who = env.run(["who"]);
    let lines: Vec<&str> = who.ok().lines().collect();
    assert!(lines[0].starts_with("MACHINE"), "{lines:?}");
    assert_eq!(lines.len(), 5, "a header and four holds: {lines:?}");
    assert!(
        lines[1].contains("rig1")
            && lines[1].contains("job 'nightly'")
            && lines[1].contains("carol")
    );
    assert!(lines[2].contains("rig2") && lines[2].contains("reserved") && lines[2].contains(&me));
    assert!(
        !lines[2].trim_end().ends_with('-'),
        "the lease's end: {}",
        lines[2]
    );
    assert!(lines[3].contains("rig3") && lines[3].contains("started") && lines[3].contains("dave"));
    assert!(lines[4].contains("rig5") && lines[4].contains("erin"));
    let json = env.run(["who", "--json"]).json();
    assert_eq!(json[1]["held"], "reserved", "{json}");
    assert!(
        json[1]["until"].as_i64().is_some_and(|t| t > now + 7000),
        "{json}"
    );
    assert_eq!(json[0]["since"], now, "{json}");

    let mine = env.run(["list", "--mine", "--json"]).json();
    let names: Vec<&str> = mine
        .as_array()
        .expect("an array")
        .iter()
        .map(|m| m["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["rig2"]);
}
