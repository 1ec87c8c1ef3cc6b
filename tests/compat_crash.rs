//! Compat mode (PHP mama shares the state file, mama writes it in place)
//! is crash-safe at every instant, with any number of writers killed in a
//! row: each writer is killed at one system call of its write (strace's
//! fault injection, `inject=SYSCALL:signal=KILL:when=N`, which kills it as
//! it enters that call), two writers in a row, and after every pair the
//! lab reads as the state before or after each writer, never a mix, with
//! every other machine's fields as they were. A write torn so that the
//! mix still parses is recognised and rolled forward. On a full disk a
//! change reported as failed is never made.

use crate::common::users::*;
use crate::common::*;

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

const MACHINES: usize = 40;

/// A compat-mode lab of `MACHINES` machines, each with its own boot
/// parameters (the field a torn write changed silently).
fn compat_lab(env: &TestEnv) {
    let machines: Vec<String> = (0..MACHINES)
        .map(|i| {
            // Half the machines with a long value, half with a short one.
            let os = match i % 2 {
                0 => format!("old-{}", "o".repeat(200)),
                _ => "old".to_string(),
            };
            machine_xml(
                &format!("m{i:02}"),
                i as u8,
                &[
                    ("os", &os),
                    ("boot_params", &format!("console=ttyS{i} root=/dev/sda{i}")),
                ],
            )
        })
        .collect();
    env.write_state(&lab_xml(&machines).replacen(
        "<settings>\n",
        "<settings>\n  <php_compat/>\n",
        1,
    ));
}

/// Every machine's `os` and `boot_params`, as mama reads the lab.
fn fields(env: &TestEnv) -> BTreeMap<String, (String, String)> {
    let boot = field_by_machine(env, "boot_params");
    field_by_machine(env, "os")
        .into_iter()
        .map(|(name, os)| {
            let params = boot.get(&name).cloned().unwrap_or_default();
            (name, (os, params))
        })
        .collect()
}

/// `mama set MACHINE os VALUE` under strace, its `when`-th call of
/// `syscall` given `fault` (`signal=KILL`, `error=ENOSPC`; it may end
/// before, having made fewer such calls).
fn set_with_fault(
    env: &TestEnv,
    machine: &str,
    value: &str,
    syscall: &str,
    when: u32,
    fault: &str,
) -> Run {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:{fault}:when={when}"))
        .arg(MAMA);
    let plain = env.cmd(["set", machine, "os", value]);
    cmd.args(["set", machine, "os", value]);
    for (key, value) in plain.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd.output().expect("strace runs").into()
}

/// [`set_with_fault`] killing it; whether it was killed.
fn set_killed_at(env: &TestEnv, machine: &str, value: &str, syscall: &str, when: u32) -> bool {
    let run = set_with_fault(env, machine, value, syscall, when, "signal=KILL");
    match run.code {
        Some(0) => false,
        // strace exits with the signal's status when its tracee is killed.
        Some(137) | None => true,
        _ => panic!("set {machine} os {value} failed: {run:#?}"),
    }
}

#[test]
#[cfg_attr(
    not(mama_strace),
    ignore = "needs strace: run tests/install-tools as root"
)]
fn writers_killed_in_a_row_at_every_call_of_an_in_place_write_never_lose_the_lab() {
    assert!(
        Command::new("strace").arg("-V").output().is_ok(),
        "strace injects the kills: run tests/install-tools first"
    );
    let env = TestEnv::new();
    compat_lab(&env);
    // Warm the lab up: the log and the lock files exist, as in use.
    env.run(["set", "m00", "kernel", "k"]).ok();
    let mut model = fields(&env);
    let boot: BTreeMap<String, String> = model
        .iter()
        .map(|(k, (_, b))| (k.clone(), b.clone()))
        .collect();
    let points: Vec<(&str, u32)> = ["pwrite64", "ftruncate", "fdatasync", "fsync"]
        .iter()
        .flat_map(|s| (1..=4).map(move |n| (*s, n)))
        .collect();
    let (mut round, mut kills) = (0, 0);
    for (first, n1) in &points {
        for (second, n2) in points.iter().step_by(3) {
            round += 1;
            // The first writer shortens a machine's value, so its text
            // leaves the tail of the longer one until it is cut to length
            // (a file that does not parse); the second lengthens another.
            let pick = |long: bool| {
                let names: Vec<&String> = model.keys().collect();
                (0..MACHINES)
                    .map(|k| names[(round + k) % MACHINES].clone())
                    .find(|m| (model[m].0.len() > 100) == long)
                    .expect("a machine to change")
            };
            let writes = [
                (pick(true), format!("r{round}"), first, n1),
                (
                    pick(false),
                    format!("r{round}-{}", "x".repeat(200)),
                    second,
                    n2,
                ),
            ];
            for (machine, value, syscall, when) in &writes {
                kills += usize::from(set_killed_at(&env, machine, value, syscall, **when));
            }
            // Every reader reads the lab: each machine as before or as
            // its writer set it, boot parameters untouched.
            let now = fields(&env);
            assert_eq!(now.len(), MACHINES, "round {round}");
            for (machine, (os, boot_params)) in &now {
                let written = writes.iter().find(|w| &w.0 == machine).map(|w| &w.1);
                assert!(
                    *os == model[machine].0 || Some(os) == written,
                    "round {round} ({first}#{n1}, {second}#{n2}): {machine} os {os:?}"
                );
                assert_eq!(boot_params, &boot[machine], "round {round}: {machine}");
            }
            model = now;
        }
    }
    // 192 writers; each point past a writer's last such call kills none.
    assert!(kills >= 80, "only {kills} kills in {round} rounds");
    // The lab is whole on disk again after one more write, for PHP mama.
    env.run(["set", "m00", "kernel", "last"]).ok();
    assert!(env.read_state().trim_end().ends_with("</settings>"));
    assert_eq!(fs::metadata(lock_path(&env.state)).expect("lock").len(), 0);
}

#[test]
#[cfg_attr(
    not(mama_strace),
    ignore = "needs strace: run tests/install-tools as root"
)]
fn a_write_in_place_that_fails_leaves_the_lab_as_it_was_for_good() {
    let env = TestEnv::new();
    compat_lab(&env);
    env.run(["set", "m00", "kernel", "k"]).ok();
    let mut failed = 0;
    for (syscall, when) in [
        ("pwrite64", 2),
        ("ftruncate", 2),
        ("fdatasync", 2),
        ("pwrite64", 1),
    ] {
        let before = env.read_state();
        let long = "z".repeat(500);
        let run = set_with_fault(&env, "m05", &long, syscall, when, "error=ENOSPC");
        if run.code == Some(0) {
            continue;
        }
        failed += 1;
        assert_eq!(run.code, Some(1), "{run:#?}");
        assert_eq!(env.read_state(), before, "{syscall}#{when}: {}", run.stderr);
        // Nor does the next command make it.
        env.run(["set", "m06", "kernel", syscall]).ok();
        assert_eq!(env.info("m05")["os"], "old", "{syscall}#{when}");
    }
    assert_eq!(failed, 4);
}

#[test]
fn a_torn_write_in_place_that_still_parses_is_rolled_forward() {
    let env = TestEnv::new();
    compat_lab(&env);
    env.run(["set", "m00", "kernel", "k"]).ok();
    let old = env.read_state();
    // The kernel writes a state file's pages in any order until it syncs:
    // the new text's second page on disk, its first page still the old
    // text's, as a crash can leave it. The change sits in the first page
    // and changes its length, so every later byte moved.
    let new_text = old.replacen("<os>old</os>", "<os>a much longer value</os>", 1);
    assert!(new_text.len() > 8192);
    let mut torn = old.as_bytes()[..4096].to_vec();
    torn.extend_from_slice(&new_text.as_bytes()[4096..]);
    let torn = String::from_utf8(torn).expect("text");
    fs::write(lock_path(&env.state), roll_forward_copy(&new_text, &old)).expect("the copy");
    env.write_state(&torn);
    // The mix still parses, so nothing but the copy tells it is torn.
    let mut copy_gone = env.cmd(["list", "--json"]);
    copy_gone.env("MAMA_STATE", env.path().join("alone.xml"));
    fs::write(env.path().join("alone.xml"), &torn).expect("the mix alone");
    let alone: Run = copy_gone.output().expect("mama runs").into();
    assert_eq!(alone.code, Some(0), "the mix should parse: {alone:#?}");
    // mama reads the new text, and the next writer puts it in place.
    assert_eq!(env.info("m01")["os"], "a much longer value");
    let boot = fields(&env);
    for (machine, (_, boot_params)) in &boot {
        let i: usize = machine[1..].parse().expect("a number");
        assert_eq!(boot_params, &format!("console=ttyS{i} root=/dev/sda{i}"));
    }
    env.run(["set", "m02", "os", "after"])
        .ok_saying("roll-forward copy");
    let state = env.read_state();
    assert!(state.contains("<os>a much longer value</os>") && state.contains("<os>after</os>"));
    assert_eq!(fs::metadata(lock_path(&env.state)).expect("lock").len(), 0);
}

/// A roll-forward copy of the second version: the new text and the old.
fn roll_forward_copy(new: &str, old: &str) -> Vec<u8> {
    let fnv = |bytes: &[u8]| {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &b| {
            (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let mut copy = format!(
        "mama roll-forward 2 {} {:016x} {} {:016x}\n",
        new.len(),
        fnv(new.as_bytes()),
        old.len(),
        fnv(old.as_bytes())
    )
    .into_bytes();
    copy.extend_from_slice(new.as_bytes());
    copy.extend_from_slice(old.as_bytes());
    copy
}

/// A small tmpfs mounted at `dir` for as long as it lives.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_mount)),
    ignore = "mounts a file system: run as root after tests/install-tools (mount)"
)]
fn on_a_full_disk_a_change_reported_as_failed_is_never_made() {
    let env = TestEnv::new();
    let disk = env.path().join("disk");
    fs::create_dir(&disk).expect("a mount point");
    let run: Run = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&disk)
        .output()
        .expect("mount runs")
        .into();
    run.ok();
    let _mounted = Tmpfs(disk.clone());
    let state = disk.join("mama.xml");
    let mama = |args: &[&str]| -> Run {
        let mut cmd = env.cmd(args);
        cmd.env("MAMA_STATE", &state);
        cmd.output().expect("mama runs").into()
    };
    let machines: Vec<String> = (0..60)
        .map(|i| machine_xml(&format!("m{i:02}"), i as u8, &[("boot_params", "quiet")]))
        .collect();
    fs::write(
        &state,
        lab_xml(&machines).replacen("<settings>\n", "<settings>\n  <php_compat/>\n", 1),
    )
    .expect("the lab");
    mama(&["set", "m00", "kernel", "k"]).ok();
    let before = fs::read_to_string(&state).expect("the state");
    // Room for the roll-forward copy, not for a longer state file.
    let filler = disk.join("filler");
    // Fill the disk, then free room for the roll-forward copy (the new
    // text and the old, in pages of 4 KiB) and no more: the state file
    // cannot grow.
    let long = "y".repeat(30_000);
    let pages = |bytes: u64| bytes.div_ceil(4096) * 4096;
    // The new text holds the value twice: in the machine and in the
    // event of the change.
    let copy_needs = pages(2 * before.len() as u64 + 2 * long.len() as u64 + 2000) + 4096;
    {
        use std::io::Write;
        let mut file = fs::File::create(&filler).expect("a filler");
        let block = vec![b'x'; 4096];
        while file.write_all(&block).is_ok() {}
        let len = file.metadata().expect("its size").len();
        file.set_len(len - copy_needs).expect("free some room");
    }
    let run = mama(&["set", "m01", "os", &long]);
    let said = run.fails(1).to_string();
    // The copy was written, the state file was not: mama put it back.
    assert!(
        said.contains("No space left on device") && said.contains("left as it was"),
        "{said}"
    );
    // The state is as it was, for mama, for PHP mama and for the next
    // writer, and no event of the change was kept.
    assert_eq!(fs::read_to_string(&state).expect("the state"), before);
    let info = mama(&["info", "m01", "--json"]).json();
    assert!(info["os"].is_null(), "{info}");
    fs::remove_file(&filler).expect("make room");
    mama(&["set", "m02", "kernel", "after"]).ok();
    let info = mama(&["info", "m01", "--json"]).json();
    assert!(
        info["os"].is_null(),
        "a failed change was made later: {info}"
    );
    let events = parse_json_lines(mama(&["log", "--json"]).ok());
    assert!(!events.iter().any(|e| e["machine"] == "m01"), "{events:?}");
}
