//! The lab's power devices: `device add`, `list` and `delete`, how `info`
//! names a machine's devices, the `<device>` elements in the lab's
//! document (the state file, or the document around a database lab's
//! machines), a broken device, export and import, and PHP mama's rewrites.

use crate::common::*;

use serde_json::{Value, json};

/// The element `device add pdu1` writes, in a lab indented by two spaces.
const PDU1: &str = "  <device>\n    <name>pdu1</name>\n    <driver>mpower</driver>\n    \
                    <address>192.168.2.2</address>\n    <user>ubnt</user>\n    \
                    <password>secret</password>\n  </device>\n";

fn add_pdu1(env: &TestEnv) {
    env.run([
        "device",
        "add",
        "pdu1",
        "--driver",
        "mpower",
        "--address",
        "192.168.2.2",
        "--user",
        "ubnt",
        "--password",
        "secret",
    ])
    .ok_saying("added power device pdu1 (mpower)");
}

fn add_relay(env: &TestEnv) {
    env.run([
        "device",
        "add",
        "r1",
        "--driver",
        "usbrly08",
        "--slots",
        "8",
        "--port",
        "/dev/ttyACM0",
    ])
    .ok();
}

/// `device list --json`.
fn devices(env: &TestEnv) -> Value {
    env.run(["device", "list", "--json"]).json()
}

/// The names `device list --json` shows (`null` for one without a name).
fn device_names(env: &TestEnv) -> Vec<Value> {
    devices(env)
        .as_array()
        .expect("an array")
        .iter()
        .map(|d| d["name"].clone())
        .collect()
}

/// A file in the world's folder holding `text`, as a path argument.
fn file_with(env: &TestEnv, name: &str, text: &str) -> String {
    let path = env.path().join(name);
    std::fs::write(&path, text).expect("write the file");
    path.to_str().expect("a UTF-8 path").to_string()
}

/// `xml` with `devices` put before its first machine.
fn with_devices(xml: &str, devices: &str) -> String {
    let at = xml.find("  <machine>").expect("a machine");
    format!("{}{devices}{}", &xml[..at], &xml[at..])
}

/// A lab in upstream's format with what mama does not know around the
/// machines: a declaration, a comment, a root attribute, an element.
fn rich_lab() -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- team A -->\n<settings version=\"3\">\n  \
         <site>berlin</site>\n{}{}</settings>\n",
        machine_xml("rig1", 1, &[("pwr_dev", "pdu1"), ("pwr_slot", "3")]),
        machine_xml("rig2", 2, &[]),
    )
}

on_both_backends! {
    fn devices_are_added_listed_and_deleted(env: &TestEnv) {
        env.add("rig1", 1);
        env.add("rig2", 2);
        env.add("rig3", 3);
        add_pdu1(env);
        add_relay(env);
        for (machine, attr, value) in [
            ("rig1", "pwr-dev", "pdu1"),
            ("rig1", "pwr-slot", "3"),
            ("rig2", "pwr-dev", "pdu1"),
            ("rig2", "pwr-slot", "4"),
            ("rig3", "rly-dev", "r1"),
            ("rig3", "rly-slot", "2"),
        ] {
            env.run(["set", machine, attr, value]).ok();
        }

        assert_eq!(
            devices(env),
            json!([
                {
                    "name": "pdu1",
                    "driver": "mpower",
                    "options": {"address": "192.168.2.2", "user": "ubnt", "password": "***"},
                    "machines": [
                        {"name": "rig1", "slot": 3, "as": "outlet"},
                        {"name": "rig2", "slot": 4, "as": "outlet"},
                    ],
                    "broken": null,
                },
                {
                    "name": "r1",
                    "driver": "usbrly08",
                    // In the order given.
                    "options": {"slots": "8", "port": "/dev/ttyACM0"},
                    "machines": [{"name": "rig3", "slot": 2, "as": "relay"}],
                    "broken": null,
                },
            ])
        );
        let table = env.run(["device", "list"]);
        let table = table.ok();
        for header in ["Name", "Driver", "Slots", "Options", "Machines"] {
            assert!(table.contains(header), "{header}: {table}");
        }
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.contains(&format!(" {name} ")))
                .unwrap_or_else(|| panic!("no row for {name}: {table}"))
                .to_string()
        };
        let pdu1 = row("pdu1");
        for cell in ["mpower", "address=192.168.2.2", "rig1:3 rig2:4"] {
            assert!(pdu1.contains(cell), "{cell}: {pdu1}");
        }
        let r1 = row("r1");
        for cell in ["usbrly08", " 8 ", "slots=8", "rig3:2"] {
            assert!(r1.contains(cell), "{cell}: {r1}");
        }
        assert!(table.contains("password=***"), "{table}");
        assert!(!table.contains("secret"), "a password is never shown: {table}");

        // Named by machines: refused, naming them; nothing is written.
        let before = env.stored();
        env.run(["device", "delete", "pdu1"])
            .fails_saying(1, "power device 'pdu1' is named by rig1, rig2");
        assert_eq!(env.stored(), before);
        env.run(["set", "rig1", "pwr-dev", ""]).ok();
        env.run(["device", "delete", "pdu1"]).fails_saying(1, "is named by rig2");
        env.run(["set", "rig2", "pwr-dev", ""]).ok();
        env.run(["device", "delete", "pdu1"])
            .ok_saying("deleted power device pdu1");
        assert_eq!(device_names(env), [json!("r1")]);
        env.run(["device", "delete", "pdu1"])
            .fails_saying(1, "no power device named 'pdu1'");
        env.run(["device", "delete", "r1"]).fails_saying(1, "named by rig3");

        // The history tells of each, under the device's name.
        let events = env.events();
        assert!(has_event(&events, "pdu1", "device_added", Some("mpower")), "{events:#?}");
        assert!(has_event(&events, "r1", "device_added", Some("usbrly08")), "{events:#?}");
        assert!(has_event(&events, "pdu1", "device_deleted", Some("mpower")), "{events:#?}");
        let log = env.run(["log", "pdu1"]);
        assert!(log.ok().contains("device_added"), "{log:#?}");
        assert!(log.ok().contains("device_deleted"), "{log:#?}");
    }

    fn what_a_driver_does_not_take_is_refused(env: &TestEnv) {
        env.add("rig1", 1);
        add_pdu1(env);
        let before = env.stored();
        let refused = |args: &[&str], code: i32, saying: &str| {
            let mut all = vec!["device", "add"];
            all.extend_from_slice(args);
            env.run(&all).fails_saying(code, saying);
            assert_eq!(env.stored(), before, "{args:?} wrote nothing");
        };
        refused(&["p2", "--driver", "telnet"], 2, "'telnet'");
        refused(&["p2", "--driver", "mpower"], 1, "the mpower driver needs --address");
        refused(&["p2", "--driver", "command", "--on", "x"], 1, "needs --off");
        refused(
            &["p2", "--driver", "mpower", "--address", "a", "--on", "x"],
            1,
            "the mpower driver takes no option 'on'",
        );
        refused(&["p2", "--driver", "usbrly08", "--port", "/dev/x", "--hold", "-1"], 1, "hold must be");
        refused(&["p2", "--driver", "usbrly08", "--port", "/dev/x", "--slots", "0"], 1, "slots must be");
        refused(&["pdu1", "--driver", "usbrly08", "--port", "/dev/x"], 1, "'pdu1' exists already");
        refused(&["a b", "--driver", "usbrly08", "--port", "/dev/x"], 1, "the device name 'a b'");
        refused(&["p2", "--driver", "usbrly08", "--port", "a\u{1}b"], 1, "U+0001");
        env.run(["device", "delete", "nope"])
            .fails_saying(1, "no power device named 'nope'");
        assert_eq!(env.stored(), before);
        // A lab that is not there is not made by a device.
        let missing = TestEnv::new();
        missing.run(["device", "add", "p", "--driver", "usbrly08", "--port", "/dev/x"])
            .fails_saying(1, "no lab at");
        missing.run(["device", "list"]).fails_saying(1, "no lab at");
        assert!(missing.files().is_empty(), "{:?}", missing.files());
    }

    fn info_names_the_devices_of_a_machine(env: &TestEnv) {
        env.add("rig1", 1);
        env.add("rig2", 2);
        add_pdu1(env);
        add_relay(env);
        let text = env.run(["info", "rig1"]);
        assert!(!text.ok().contains("Power device:"), "{text:#?}");
        assert_eq!(env.info("rig1")["power_device"], Value::Null);
        env.run(["set", "rig1", "pwr-dev", "pdu1"]).ok();
        env.run(["set", "rig1", "pwr-slot", "3"]).ok();
        env.run(["set", "rig1", "rly-dev", "r1"]).ok();
        env.run(["set", "rig1", "rly-slot", "5"]).ok();
        let text = env.run(["info", "rig1"]);
        let lines: Vec<&str> = text.ok().lines().collect();
        assert!(lines.contains(&"Power device: pdu1 slot 3 (mpower)"), "{lines:#?}");
        assert!(lines.iter().any(|l| l.starts_with("Relay:") && l.ends_with(" r1 slot 5 (usbrly08)")), "{lines:#?}");
        let info = env.info("rig1");
        assert_eq!(info["power_device"], json!({"name": "pdu1", "slot": 3, "driver": "mpower"}));
        assert_eq!(info["relay_device"], json!({"name": "r1", "slot": 5, "driver": "usbrly08"}));
        // A device the lab does not define is named as such.
        env.run(["set", "rig2", "pwr-dev", "pdu9"]).ok();
        let text = env.run(["info", "rig2"]);
        assert!(text.ok().contains("Power device: pdu9 slot 0 (no such device in the lab)"), "{text:#?}");
        assert_eq!(env.info("rig2")["power_device"], json!({"name": "pdu9", "slot": 0, "driver": null}));
        assert_eq!(env.info("rig2")["relay_device"], Value::Null);
    }

    fn a_broken_device_keeps_the_lab_usable(env: &TestEnv) {
        // Devices written by hand: one without a name, one of a driver
        // mama does not know, one without the option its driver needs, one
        // whose name an earlier one has.
        let damaged = "  <device>\n    <driver>mpower</driver>\n    <address>10.0.0.1</address>\n  </device>\n  \
                      <device>\n    <name>tel</name>\n    <driver>telnet</driver>\n  </device>\n  \
                      <device>\n    <name>bare</name>\n    <driver>mpower</driver>\n  </device>\n  \
                      <device>\n    <name>bare</name>\n    <driver>usbrly08</driver>\n  </device>\n";
        let lab = with_devices(&lab_xml(&[machine_xml("rig1", 1, &[("pwr_dev", "tel")])]), damaged);
        env.run(["import", &file_with(env, "lab.xml", &lab)]).ok();
        assert_eq!(env.run(["list", "--names"]).ok(), "rig1\n");
        let listed = devices(env);
        let broken: Vec<(Value, String)> = listed
            .as_array()
            .expect("an array")
            .iter()
            .map(|d| (d["name"].clone(), d["broken"].as_str().unwrap_or("").to_string()))
            .collect();
        assert_eq!(broken.len(), 4, "{listed:#}");
        let reason = |name: Value| {
            broken
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, r)| r.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(reason(Value::Null), ["it has no <name>"]);
        assert!(reason(json!("tel"))[0].contains("knows no driver 'telnet'"), "{broken:?}");
        let bare = reason(json!("bare"));
        assert!(bare.iter().any(|r| r.contains("needs --address")), "{bare:?}");
        assert!(bare.iter().any(|r| r.contains("an earlier <device>")), "{bare:?}");
        let table = env.run(["device", "list"]);
        assert!(table.ok().contains("tel is broken: mama knows no driver 'telnet'"), "{table:#?}");
        assert!(table.ok().contains("(no name) is broken: it has no <name>"), "{table:#?}");
        let info = env.run(["info", "rig1"]);
        assert!(info.ok().contains("Power device: tel slot 0 (broken: mama knows no driver"), "{info:#?}");

        // The lab works on, and the broken devices stay as written.
        env.run(["set", "rig1", "os", "linux"]).ok();
        env.run(["run", "rig1", "--", "true"]).ok();
        add_pdu1(env);
        env.run(["device", "add", "tel", "--driver", "usbrly08", "--port", "/dev/x"])
            .fails_saying(1, "'tel' exists already");
        let export = env.run(["export"]);
        assert!(export.ok().contains(&format!("{damaged}{PDU1}  <machine>")), "{}", export.stdout);
        // One with a name is deleted by it, once no machine names it.
        env.run(["device", "delete", "tel"]).fails_saying(1, "named by rig1");
        env.run(["set", "rig1", "pwr-dev", ""]).ok();
        env.run(["device", "delete", "tel"]).ok();
        assert!(!env.run(["export"]).ok().contains("telnet"));
    }

    fn the_document_keeps_every_device_element_as_written(env: &TestEnv) {
        // A device with a child and an attribute mama does not know.
        let known = "  <device id=\"7\">\n    <name>pdu0</name>\n    <driver>mpower</driver>\n    \
                     <address>10.0.0.9</address>\n    <colour>red</colour>\n  </device>\n";
        let lab = with_devices(&rich_lab().replace("<pwr_dev>pdu1</pwr_dev>", "<pwr_dev/>"), known);
        env.run(["import", &file_with(env, "lab.xml", &lab)]).ok();
        add_pdu1(env);
        let export = env.run(["export"]);
        let exported = export.ok();
        assert!(
            exported.contains(&format!("{known}{PDU1}  <machine>")),
            "after the last device, before the first machine: {exported}"
        );
        if env.is_postgres() {
            // A database lab took the file's document: out again, it is
            // the file with the new device in it.
            assert_eq!(exported, with_devices(&lab, PDU1));
        }
        env.run(["device", "delete", "pdu1"]).ok();
        let exported = env.run(["export"]).ok().to_string();
        assert!(exported.contains(&format!("{known}  <machine>")), "{exported}");
        if env.is_postgres() {
            assert_eq!(exported, lab);
        }
        assert_eq!(
            devices(env)[0]["options"],
            json!({"address": "10.0.0.9"}),
            "a child that is no option is not one"
        );
    }

    fn export_shows_devices_and_import_round_trips_them(env: &TestEnv) {
        env.add("rig1", 1);
        add_pdu1(env);
        add_relay(env);
        env.run(["set", "rig1", "pwr-dev", "pdu1"]).ok();
        let export = env.run(["export"]).ok().to_string();
        assert!(export.contains(PDU1), "{export}");
        assert!(export.contains("<name>r1</name>"), "{export}");
        let listed = devices(env);

        // Into a new lab of the same kind: the same devices.
        let other = if env.is_postgres() { TestEnv::postgres() } else { TestEnv::new() };
        let file = file_with(&other, "export.xml", &export);
        other.run(["import", &file]).ok_saying("imported 2 power devices from");
        assert_eq!(devices(&other), listed);
        assert!(other.run(["export"]).ok().contains(PDU1));
        let events = other.events();
        assert!(has_event(&events, "pdu1", "device_added", Some(&format!("imported from {file}"))), "{events:#?}");

        // Into this lab again, replacing it: the same.
        let file = file_with(env, "export.xml", &export);
        env.run(["import", "--replace", &file])
            .ok_saying("imported 2 power devices from");
        assert_eq!(devices(env), listed);

        // A file without devices, replacing: the lab's go with its machines.
        let plain = file_with(env, "plain.xml", &lab_xml(&[machine_xml("rig9", 9, &[])]));
        env.run(["import", "--replace", &plain])
            .ok_saying("imported 0 power devices from");
        assert_eq!(devices(env), json!([]));
        let events = env.events();
        assert!(has_event(&events, "r1", "device_deleted", Some(&format!("replaced by {plain}"))), "{events:#?}");

        // A lab that has devices keeps them on an import without
        // --replace, and says it left the file's out.
        let third = if env.is_postgres() { TestEnv::postgres() } else { TestEnv::new() };
        third.add("rig5", 5);
        third.run(["device", "add", "mine", "--driver", "usbrly08", "--port", "/dev/x"]).ok();
        third.run(["delete", "rig5"]).ok();
        let file = file_with(&third, "export.xml", &export);
        third.run(["import", &file]).ok_saying("kept the lab's own 1 power device");
        assert_eq!(device_names(&third), [json!("mine")]);
        assert_eq!(third.run(["list", "--names"]).ok(), "rig1\n");

        // One that had devices and has none now takes the file's (a
        // database lab into the document it keeps).
        third.run(["delete", "rig1"]).ok();
        third.run(["device", "delete", "mine"]).ok();
        third.run(["import", &file]).ok_saying("imported 2 power devices from");
        assert_eq!(devices(&third), listed);
    }

    fn a_lab_without_devices_lists_none(env: &TestEnv) {
        env.add("rig1", 1);
        let before = env.stored();
        assert_eq!(devices(env), json!([]));
        let table = env.run(["device", "list"]);
        assert!(table.ok().contains("Name"), "{table:#?}");
        assert!(!env.run(["export"]).ok().contains("<device"));
        assert_eq!(env.stored(), before, "reading writes nothing");
    }
}

/// The state file with mama's bookkeeping (the newest events and their
/// number) taken out, each with its line.
fn without_bookkeeping(text: &str) -> String {
    let mut text = text.to_string();
    for tag in ["pending_events", "event_seq"] {
        let close = format!("</{tag}>\n");
        if let (Some(open), Some(end)) = (text.find(&format!("<{tag}>")), text.find(&close)) {
            let start = text[..open].rfind('\n').map_or(0, |at| at + 1);
            text.replace_range(start..end + close.len(), "");
        }
    }
    text
}

#[test]
fn devices_stand_in_the_state_file_and_the_rest_stays_byte_for_byte() {
    let env = TestEnv::new();
    let lab = rich_lab();
    env.write_state(&lab);
    add_pdu1(&env);
    let state = env.read_state();
    assert_eq!(
        without_bookkeeping(&state),
        with_devices(&lab, PDU1),
        "{state}"
    );

    // A child and an attribute of a device, added by hand, stay when
    // another device is added, after it.
    let edited = state.replace(
        "<device>\n    <name>pdu1</name>",
        "<device id=\"7\">\n    <name>pdu1</name>\n    <colour>red</colour>",
    );
    env.write_state(&edited);
    add_relay(&env);
    let state = env.read_state();
    let relay = "  <device>\n    <name>r1</name>\n    <driver>usbrly08</driver>\n    \
                 <slots>8</slots>\n    <port>/dev/ttyACM0</port>\n  </device>\n";
    let pdu1 = PDU1.replace("<device>", "<device id=\"7\">").replace(
        "<name>pdu1</name>",
        "<name>pdu1</name>\n    <colour>red</colour>",
    );
    assert_eq!(
        without_bookkeeping(&state),
        with_devices(&lab, &format!("{pdu1}{relay}")),
        "{state}"
    );
    // Deleted, each takes its lines with it.
    env.run(["device", "delete", "pdu1"])
        .fails_saying(1, "named by rig1");
    env.run(["device", "delete", "r1"]).ok();
    assert_eq!(
        without_bookkeeping(&env.read_state()),
        with_devices(&lab, &pdu1)
    );

    // A lab indented with tabs gets a device indented with tabs.
    let env = TestEnv::new();
    let tabs = lab_xml(&[machine_xml("rig1", 1, &[])]).replace("  ", "\t");
    env.write_state(&tabs);
    add_relay(&env);
    let expected = tabs.replacen(
        "\t<machine>",
        "\t<device>\n\t\t<name>r1</name>\n\t\t<driver>usbrly08</driver>\n\t\t<slots>8</slots>\n\t\t\
         <port>/dev/ttyACM0</port>\n\t</device>\n\t<machine>",
        1,
    );
    assert_eq!(without_bookkeeping(&env.read_state()), expected);
}

#[test]
fn a_damaged_device_written_by_hand_is_read_as_broken_and_kept() {
    let env = TestEnv::new();
    let lab = with_devices(
        &rich_lab(),
        "  <device>\n    <driver>mpower</driver>\n  </device>\n  <device><name>x</name><driver>??</driver><port>&amp;</port></device>\n",
    );
    env.write_state(&lab);
    let listed = devices(&env);
    assert_eq!(listed[0]["broken"], "it has no <name>", "{listed:#}");
    assert_eq!(listed[1]["options"], json!({"port": "&"}), "{listed:#}");
    assert!(
        env.run(["info", "rig1"])
            .ok()
            .contains("Power device: pdu1 slot 3 (no such device in the lab)")
    );
    env.run(["set", "rig2", "os", "linux"]).ok();
    add_pdu1(&env);
    let state = without_bookkeeping(&env.read_state());
    assert_eq!(
        state,
        with_devices(&lab, PDU1).replace(
            "<os/>\n    <kernel/>\n    <pwr_dev/>",
            "<os>linux</os>\n    <kernel/>\n    <pwr_dev/>"
        ),
    );
}

#[test]
#[cfg_attr(
    not(mama_python3),
    ignore = "needs python3 (for tests/php_mama.py): run tests/install-tools as root"
)]
fn php_mama_rewriting_machines_keeps_the_devices() {
    // PHP mama's installation: mama writes in place.
    let env = TestEnv::new();
    std::fs::write(
        env.path().join("mama.xml-default"),
        "<?xml version=\"1.0\"?>\n<settings>\n</settings>\n",
    )
    .expect("write mama.xml-default");
    env.add("rig1", 1);
    env.add("rig2", 2);
    add_pdu1(&env);
    env.run(["set", "rig1", "pwr-dev", "pdu1"]).ok();
    env.run(["set", "rig1", "pwr-slot", "3"]).ok();
    let listed = devices(&env);

    // PHP mama saves rig1 (at the end of the file, re-indenting the whole
    // document) and adds a machine of its own.
    let run = env.php(&["set", "rig1", "os", "by-php"]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    let run = env.php(&["new", "rig3", "aa:bb:cc:dd:ee:03"]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    let state = env.read_state();
    assert!(state.contains("<password>secret</password>"), "{state}");
    assert_eq!(env.info("rig1")["os"], "by-php");
    assert_eq!(devices(&env), listed, "{state}");
    env.run(["device", "delete", "pdu1"])
        .fails_saying(1, "named by rig1");

    // mama goes on with the file PHP mama wrote.
    add_relay(&env);
    assert_eq!(device_names(&env), [json!("pdu1"), json!("r1")]);
    let run = env.php(&["set", "rig2", "os", "again"]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(device_names(&env), [json!("pdu1"), json!("r1")]);
    assert_eq!(env.run(["list", "--names"]).ok(), "rig1\nrig3\nrig2\n");
}
