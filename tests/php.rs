//! mama and PHP mama on one live state file, as a migrating team runs them.
//!
//! PHP is not installed: `tests/php_mama.py` stands in for it, doing to
//! mama.xml exactly what PHP mama's source does (flock on the state file
//! itself, read `filesize` bytes through that descriptor, rebuild a saved
//! machine at the end of the file without the fields it does not know,
//! write in place), with a pause inside its lock to widen races.

use crate::common::users::*;
use crate::common::*;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STAND_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/php_mama.py");

/// `php_mama.py STATE ARGS`: the stand-in for PHP mama on this world's
/// state file.
fn php(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(STAND_IN)
        .arg(&env.state)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

#[track_caller]
fn php_ok(env: &TestEnv, args: &[&str]) {
    let run: Run = php(env, args).output().expect("python3 runs").into();
    assert_eq!(run.code, Some(0), "php_mama.py {args:?}: {run:#?}");
}

/// A lab in PHP mama's installation: `mama.xml-default` beside the state
/// file (PHP mama copies it when mama.xml is missing).
fn php_lab() -> TestEnv {
    let env = TestEnv::new();
    fs::write(
        env.path().join("mama.xml-default"),
        "<?xml version=\"1.0\"?>\n<settings>\n</settings>\n",
    )
    .expect("write mama.xml-default");
    env
}

fn inode(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").ino()
}

fn machine_names(env: &TestEnv) -> Vec<String> {
    env.run(["list", "--json"])
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|m| m["name"].as_str().expect("a name").to_string())
        .collect()
}

#[test]
fn mama_writes_in_place_where_php_mama_shares_the_file_and_replaces_it_elsewhere() {
    // A lab of mama's own: the atomic replace by rename.
    let env = TestEnv::new();
    env.add("rig1", 1);
    let before = inode(&env.state);
    env.run(["set", "rig1", "os", "a"]).ok();
    assert_ne!(inode(&env.state), before, "replaced by a rename");

    // PHP mama's installation beside the state file: in place.
    let env = php_lab();
    env.add("rig1", 1);
    let before = inode(&env.state);
    env.run(["set", "rig1", "os", "b"]).ok();
    env.run(["run", "rig1", "--", "true"]).ok();
    assert_eq!(inode(&env.state), before, "written in place");
    assert_eq!(env.info("rig1")["os"], "b");

    // The element in the file, anywhere else: in place, and kept.
    let env = TestEnv::new();
    env.write_state(&format!(
        "<?xml version=\"1.0\"?>\n<settings>\n  <php_compat/>\n{}</settings>\n",
        machine_xml("rig1", 1, &[])
    ));
    let before = inode(&env.state);
    env.run(["set", "rig1", "os", "c"]).ok();
    env.run(["add", "rig2", "--mac", "aa:bb:cc:dd:ee:02"]).ok();
    assert_eq!(inode(&env.state), before, "written in place");
    assert!(env.read_state().contains("<php_compat/>"));
    assert!(env.files_containing(".tmp").is_empty(), "{:?}", env.files());
    // `0` switches it off.
    env.write_state(
        &env.read_state()
            .replace("<php_compat/>", "<php_compat>0</php_compat>"),
    );
    let before = inode(&env.state);
    env.run(["set", "rig1", "os", "d"]).ok();
    assert_ne!(inode(&env.state), before, "replaced by a rename");
}

#[test]
#[cfg_attr(
    not(mama_python3),
    ignore = "needs python3 (for tests/php_mama.py): run tests/install-tools as root"
)]
fn mama_waits_for_php_mamas_lock_on_the_state_file_to_read_and_to_write() {
    let env = php_lab();
    env.add("rig1", 1);
    for (n, args) in [["list", "", "", ""], ["set", "rig1", "os", "after-php"]]
        .into_iter()
        .enumerate()
    {
        let go = env.path().join(format!("go{n}"));
        let mut holder = Bg::start(php(&env, &["hold", &go.to_string_lossy()]));
        holder.expect_stderr("holding", LIMIT);
        let mut waiter = env.start(args.iter().filter(|a| !a.is_empty()));
        let line = waiter.expect_stderr("waiting for the lab's lock", LIMIT);
        assert!(
            line.contains(&format!("taken by PID {}", holder.pid())),
            "{line}"
        );
        assert!(line.contains("mama.xml,"), "names the state file: {line}");
        assert!(waiter.running());
        assert!(!env.read_state().contains("after-php"));
        fs::write(&go, "").expect("create the go file");
        holder.finish(LIMIT);
        let done = waiter.finish(LIMIT);
        assert!(done.ok().contains("rig1") || args[0] == "set", "{done:#?}");
    }
    assert_eq!(env.info("rig1")["os"], "after-php");
}

#[test]
#[cfg_attr(
    not(mama_python3),
    ignore = "needs python3 (for tests/php_mama.py): run tests/install-tools as root"
)]
fn a_run_whose_machine_php_mama_saved_meanwhile_still_releases_it() {
    let env = php_lab();
    env.add("rig1", 1);
    env.add("rig2", 2);
    let out = env.path().join("started");
    let go = env.path().join("go");
    let mut args: Vec<std::ffi::OsString> = vec!["run".into(), "rig1".into(), "--".into()];
    args.extend(waiting_job("echo started > \"$1\"", &out, &go));
    let mut run = env.start(args);
    read_line_of(&out, LIMIT);
    // PHP mama saves rig1: job and PID stay, job_timestamp, job_host and
    // job_origin go, and rig1 moves to the end of the file.
    php_ok(&env, &["set", "rig1", "os", "by-php"]);
    let state = env.read_state();
    let rig1 = &state[state.find("<name>rig1</name>").expect("rig1")..];
    assert!(!rig1.contains("job_timestamp") && !rig1.contains("job_host"));
    assert!(state.find("<name>rig2</name>") < state.find("<name>rig1</name>"));
    assert_eq!(machine_names(&env), ["rig2", "rig1"]);
    let info = env.info("rig1");
    assert_eq!(info["job_pid"], run.pid());
    assert_eq!(info["state"], "busy");

    fs::write(&go, "").expect("create the go file");
    let done = run.finish(LIMIT);
    done.ok();
    assert!(!done.stderr.contains("cleared or taken over"), "{done:#?}");
    let info = env.info("rig1");
    assert_eq!(info["job"], serde_json::Value::Null, "{info:#}");
    assert_eq!(info["state"], "free");
    assert_eq!(info["os"], "by-php");
    assert!(has_event(&env.events(), "rig1", "released", None));
}

/// FNV-1a, 64 bits: the roll-forward copy's checksum (SPEC).
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What a writer leaves in `S.lock` before it writes the state in place.
fn roll_forward_copy(text: &str) -> Vec<u8> {
    let mut copy = format!(
        "mama roll-forward 1 {} {:016x}\n",
        text.len(),
        fnv1a_64(text.as_bytes())
    )
    .into_bytes();
    copy.extend_from_slice(text.as_bytes());
    copy
}

#[test]
fn a_write_in_place_cut_short_is_rolled_forward_by_the_next_command() {
    let env = php_lab();
    env.add("rig1", 1);
    env.add("rig2", 2);
    let lock = lock_path(&env.state);
    let old = env.read_state();
    let new = old.replacen("<os/>", "<os>rolled</os>", 1);
    assert_ne!(old, new);
    // A writer killed mid-write: its copy is whole, the state is not.
    fs::write(&lock, roll_forward_copy(&new)).expect("write the copy");
    env.write_state(&new[..new.len() / 2]);
    // A reader reads the copy; the next writer puts it in place.
    assert_eq!(env.info("rig1")["os"], "rolled");
    let before = inode(&env.state);
    let set = env.run(["set", "rig2", "os", "after"]);
    set.ok_saying("roll-forward copy");
    assert_eq!(inode(&env.state), before);
    let state = env.read_state();
    assert!(state.contains("<os>rolled</os>") && state.contains("<os>after</os>"));
    assert_eq!(fs::metadata(&lock).expect("lock").len(), 0, "copy cleared");

    // A copy beside a whole state file is one a writer made before it
    // finished: the state stands, and the copy goes.
    fs::write(&lock, roll_forward_copy(&old)).expect("write the copy");
    env.run(["set", "rig2", "kernel", "k"]).ok();
    assert_eq!(env.info("rig1")["os"], "rolled");
    assert_eq!(fs::metadata(&lock).expect("lock").len(), 0, "copy cleared");

    // A copy that is itself cut short (or damaged) is never applied: the
    // state is broken, as mama says, and left alone.
    let mut torn = roll_forward_copy(&new);
    torn.truncate(torn.len() - 10);
    fs::write(&lock, &torn).expect("write the copy");
    let half = &old[..old.len() / 2];
    env.write_state(half);
    env.run(["list"]).fails(1);
    env.run(["set", "rig1", "os", "x"]).fails(1);
    assert_eq!(env.read_state(), half);
}

/// Runs `ops` closures on `threads` threads, each taking the next op.
fn run_all(ops: Vec<Box<dyn FnOnce() -> Option<String> + Send>>, threads: usize) -> Vec<String> {
    let ops = Arc::new(Mutex::new(ops.into_iter().rev().collect::<Vec<_>>()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let ops = Arc::clone(&ops);
            let failures = Arc::clone(&failures);
            std::thread::spawn(move || {
                loop {
                    let Some(op) = ops.lock().expect("ops").pop() else {
                        break;
                    };
                    if let Some(failure) = op() {
                        failures.lock().expect("failures").push(failure);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker");
    }
    Arc::try_unwrap(failures)
        .expect("workers are done")
        .into_inner()
        .expect("failures")
}

/// `None` when `cmd` exited 0, else what it printed.
fn checked(what: String, mut cmd: Command) -> Option<String> {
    let out = cmd.output().expect("the command runs");
    (!out.status.success()).then(|| {
        format!(
            "{what}: {:?}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
#[cfg_attr(
    not(mama_python3),
    ignore = "needs python3 (for tests/php_mama.py): run tests/install-tools as root"
)]
fn php_mama_and_mama_race_on_one_file_without_a_lost_update_a_double_claim_or_a_crash() {
    let env = Arc::new(php_lab());
    for (i, name) in ["job1", "job2", "ms1", "ms2", "ps1", "ps2"]
        .iter()
        .enumerate()
    {
        env.add(name, i as u8 + 1);
    }
    // PHP mama's `list` saves every machine with a stored IP: job1 while
    // mama's runs hold it, too.
    env.run(["set", "ps1", "ip", "192.0.2.1"]).ok();
    env.run(["set", "ms2", "ip", "192.0.2.2"]).ok();
    env.run(["set", "job1", "ip", "192.0.2.3"]).ok();
    let busy = env.path().join("busy");
    fs::create_dir(&busy).expect("mkdir busy");
    let busy_arg = busy.to_string_lossy().into_owned();
    const PAUSE: &str = "0.005";

    let mut ops: Vec<Box<dyn FnOnce() -> Option<String> + Send>> = Vec::new();
    let mut php_new = Vec::new();
    for i in 0..200usize {
        let env = Arc::clone(&env);
        let busy_arg = busy_arg.clone();
        match i % 10 {
            // PHP mama adds machines (60).
            0 | 5 | 8 => {
                let name = format!("p{i}");
                php_new.push(name.clone());
                let mac = format!("aa:bb:cc:00:{:02x}:{:02x}", i / 256, i % 256);
                ops.push(Box::new(move || {
                    let mut cmd = php(&env, &["--pause", PAUSE, "new", &name, &mac]);
                    cmd.stdout(Stdio::null());
                    checked(format!("php new {name}"), cmd)
                }));
            }
            // PHP mama sets its machines (20) and lists (20).
            1 => ops.push(Box::new(move || {
                let machine = if i % 20 == 1 { "ps1" } else { "ps2" };
                let cmd = php(
                    &env,
                    &["--pause", PAUSE, "set", machine, "kernel", &i.to_string()],
                );
                checked(format!("php set {machine} kernel {i}"), cmd)
            })),
            2 => ops.push(Box::new(move || {
                checked("php list".into(), php(&env, &["--pause", PAUSE, "list"]))
            })),
            // Jobs of both on the same two machines (20 + 20).
            3 => ops.push(Box::new(move || {
                let machine = if i % 20 == 3 { "job1" } else { "job2" };
                let label = format!("run php-{i} x86_64/tw");
                let cmd = php(
                    &env,
                    &[
                        "--pause", PAUSE, "--poll", "0.05", "job", machine, &label, &busy_arg,
                        "0.02",
                    ],
                );
                checked(format!("php job {machine}"), cmd)
            })),
            4 => ops.push(Box::new(move || {
                let machine = if i % 20 == 4 { "job1" } else { "job2" };
                let script = format!(
                    "mkdir \"$1/{machine}\" || {{ touch \"$1/DOUBLE-{machine}-$$\"; exit 3; }}; \
                     sleep 0.02; rmdir \"$1/{machine}\""
                );
                let out = env
                    .cmd(["run", machine, "--", "sh", "-c", &script, "sh", &busy_arg])
                    .output()
                    .expect("mama runs");
                let stderr = String::from_utf8_lossy(&out.stderr);
                (!out.status.success() || stderr.contains("cleared or taken over"))
                    .then(|| format!("mama run {machine}: {:?}\n{stderr}", out.status.code()))
            })),
            // mama sets its machines (40) and reads (20).
            6 | 9 => ops.push(Box::new(move || {
                let machine = if i % 10 == 6 { "ms1" } else { "ms2" };
                let cmd = env.cmd(["set", machine, "kernel", &i.to_string()]);
                checked(format!("mama set {machine} kernel {i}"), cmd)
            })),
            _ => ops.push(Box::new(move || {
                let mut cmd = env.cmd(["list", "--json"]);
                cmd.stdout(Stdio::null());
                checked("mama list".into(), cmd)
            })),
        }
    }
    let failures = run_all(ops, 6);
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let doubles: Vec<_> = fs::read_dir(&busy)
        .expect("read busy")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(doubles.is_empty(), "two jobs at once: {doubles:?}");
    let lab = env.run(["list", "--json"]).json();
    let machines = lab.as_array().expect("an array");
    let names: Vec<&str> = machines.iter().filter_map(|m| m["name"].as_str()).collect();
    for name in &php_new {
        assert!(names.contains(&name.as_str()), "{name} was lost: {names:?}");
    }
    for name in ["job1", "job2", "ms1", "ms2", "ps1", "ps2"] {
        assert!(names.contains(&name), "{name} was lost: {names:?}");
    }
    assert_eq!(names.len(), php_new.len() + 6);
    for machine in machines {
        assert_eq!(machine["job"], serde_json::Value::Null, "{machine:#}");
        assert_eq!(machine["state"], "free", "{machine:#}");
    }
    // Every `set` mama made is in the history, which commits with the
    // change in the state file itself: a write of PHP mama's from an older
    // read would have taken both away.
    let events = env.events();
    for i in (0..200).filter(|i| i % 10 == 6 || i % 10 == 9) {
        let machine = if i % 10 == 6 { "ms1" } else { "ms2" };
        assert!(
            has_event(&events, machine, "set", Some(&format!("kernel={i}"))),
            "mama's set of {machine} to {i} was lost"
        );
    }
}

/// `boot_params` of each machine of the lab, by name.
fn params_of(env: &TestEnv) -> std::collections::BTreeMap<String, String> {
    field_by_machine(env, "boot_params")
}

#[test]
#[cfg_attr(
    not(mama_python3),
    ignore = "needs python3 (for tests/php_mama.py): run tests/install-tools as root"
)]
fn mama_creating_the_lab_never_replaces_the_file_php_mama_created_meanwhile() {
    // mama is stopped with its new state file written beside the path and
    // not yet in place; PHP mama finds no mama.xml meanwhile, installs its
    // default and adds a machine, and then mama goes on.
    for _ in 0..100 {
        let env = php_lab();
        let temp = env.path().join(".mama.xml.tmp");
        let mut add = env.start(["add", "m0", "--mac", "aa:bb:cc:dd:ee:01"]);
        let deadline = Instant::now() + LIMIT;
        while fs::symlink_metadata(&temp).is_err() && add.running() {
            assert!(Instant::now() < deadline, "mama never ended");
        }
        if add.running() {
            add.signal(libc::SIGSTOP);
        }
        if fs::symlink_metadata(&temp).is_err() || env.state.exists() {
            // Stopped too late (or not at all): the file was in place.
            if add.running() {
                add.signal(libc::SIGCONT);
            }
            add.finish(LIMIT).ok();
            continue;
        }
        php_ok(&env, &["new", "p0", "aa:bb:cc:00:00:01"]);
        let php_file = inode(&env.state);
        add.signal(libc::SIGCONT);
        add.finish(LIMIT).ok();
        assert_eq!(inode(&env.state), php_file, "mama replaced PHP mama's file");
        assert_eq!(machine_names(&env), ["p0", "m0"]);
        assert!(env.files_containing(".tmp").is_empty(), "{:?}", env.files());
        // Both go on writing the one file.
        php_ok(&env, &["set", "p0", "boot_params", "by-php"]);
        env.run(["set", "m0", "params", "by-mama"]).ok();
        let params = params_of(&env);
        assert_eq!((&*params["p0"], &*params["m0"]), ("by-php", "by-mama"));
        return;
    }
    panic!("mama was never stopped between writing its new file and putting it in place");
}

#[test]
fn a_lab_mama_creates_in_php_mamas_installation_starts_as_php_mamas_own() {
    let env = php_lab();
    let default = "<?xml version=\"1.0\"?>\n<settings>\n  <machine>\n    <name>jobs</name>\n    \
                   <mac>aa:aa:aa:bb:bb:bb</mac>\n    <only_vm>1</only_vm>\n  </machine>\n</settings>\n";
    fs::write(env.path().join("mama.xml-default"), default).expect("write mama.xml-default");
    // Only `add` and `import` create a lab, here too (PHP mama creates it
    // on any command).
    env.run(["set", "nosuch", "os", "x"])
        .fails_saying(1, "no lab at");
    assert!(!env.state.exists());
    env.add("m0", 1);
    assert_eq!(machine_names(&env), ["jobs", "m0"]);

    // A default that mama cannot read creates nothing.
    let env = php_lab();
    fs::write(env.path().join("mama.xml-default"), "<settings>").expect("write");
    env.run(["add", "m0", "--mac", "aa:bb:cc:dd:ee:01"])
        .fails_saying(1, "mama.xml-default");
    assert!(!env.state.exists());
}

#[test]
fn mama_waits_for_php_mamas_copy_of_its_default_to_be_written() {
    // `cp` has created mama.xml and not yet written it.
    let env = php_lab();
    fs::write(&env.state, "").expect("create mama.xml");
    let mut add = env.start(["add", "m0", "--mac", "aa:bb:cc:dd:ee:01"]);
    wait_until("mama holds the state file's lock", LIMIT, || {
        let folder = mama::backend::file::fsutil::Dir::open(env.path()).expect("the folder");
        mama::backend::file::lock::LockFile::new(folder.into(), "mama.xml").is_held()
    });
    assert!(add.running(), "mama did not wait: {:#?}", add.finish(LIMIT));
    fs::write(
        &env.state,
        fs::read(env.path().join("mama.xml-default")).expect("read"),
    )
    .expect("write mama.xml");
    add.finish(LIMIT).ok();
    assert_eq!(machine_names(&env), ["m0"]);

    // A file that stays empty is an error, as ever.
    let env = php_lab();
    fs::write(&env.state, "").expect("create mama.xml");
    env.run(["list"]).fails_saying(1, "the file is empty");
    env.run(["add", "m0", "--mac", "aa:bb:cc:dd:ee:01"])
        .fails_saying(1, "the file is empty");
    assert_eq!(env.read_state(), "");
}

/// One race from a fresh folder, for `time` (and a dozen ops at least):
/// each op makes a machine and then sets its boot parameters, with one
/// tool or the other: first one PHP mama and five mamas at once (with
/// `php_first`, the mamas start once PHP mama's copy of its default is at
/// the path), then both by turns. Every op must succeed, and every machine
/// hold what was set.
fn race_from_a_fresh_folder(php_first: bool, time: Duration) {
    const THREADS: usize = 6;
    // However slow the machine, this many ops at least.
    const MIN_OPS: usize = 2 * THREADS;
    let env = Arc::new(php_lab());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + time;
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (env, next) = (Arc::clone(&env), Arc::clone(&next));
            let (done, failures) = (Arc::clone(&done), Arc::clone(&failures));
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= MIN_OPS && Instant::now() >= end {
                        break;
                    }
                    let by_php = i == 0 || (i >= THREADS && i % 2 == 0);
                    if php_first && !by_php {
                        wait_until("PHP mama's copy of its default", LIMIT, || {
                            env.state.exists()
                        });
                    }
                    let name = format!("{}{i}", if by_php { "p" } else { "m" });
                    let mac = format!(
                        "aa:bb:cc:{:02x}:{:02x}:{:02x}",
                        u8::from(by_php),
                        i / 256,
                        i % 256
                    );
                    let value = format!("v{i}");
                    let (make, set) = if by_php {
                        let pause = ["--pause", "0.002"];
                        (
                            php(&env, &[&pause[..], &["new", &name, &mac]].concat()),
                            php(
                                &env,
                                &[&pause[..], &["set", &name, "boot_params", &value]].concat(),
                            ),
                        )
                    } else {
                        (
                            env.cmd(["add", &name, "--mac", &mac]),
                            env.cmd(["set", &name, "params", &value]),
                        )
                    };
                    let failed = checked(format!("make {name}"), make)
                        .or_else(|| checked(format!("set {name} {value}"), set));
                    match failed {
                        Some(failure) => failures.lock().expect("failures").push(failure),
                        None => done.lock().expect("done").push((name, value)),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker");
    }
    let failures = failures.lock().expect("failures");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let done = done.lock().expect("done");
    assert!(done.len() >= MIN_OPS, "{done:?}");
    let params = params_of(&env);
    let lost: Vec<_> = done
        .iter()
        .filter(|(name, value)| params.get(name) != Some(value))
        .map(|(name, value)| format!("{name}: {value:?} set, {:?} found", params.get(name)))
        .collect();
    assert!(
        lost.is_empty(),
        "of {} machines, lost: {lost:#?}",
        done.len()
    );
    assert_eq!(params.len(), done.len(), "{params:?}");
}

#[test]
#[cfg_attr(
    not(mama_python3),
    ignore = "needs python3 (for tests/php_mama.py): run tests/install-tools as root"
)]
fn php_mama_and_mama_start_a_lab_together_and_every_machine_and_set_lands() {
    // Four seconds in all, from four fresh folders: mama creates the file
    // in two, PHP mama in the other two.
    for round in 0..4 {
        race_from_a_fresh_folder(round % 2 == 1, Duration::from_secs(1));
    }
}

/// A folder laid out as PHP mama installs it: root's, 0755; mama.xml 0660
/// in the lab's group; nothing else of mama's.
fn upstream_layout() -> (TestEnv, String, u32) {
    let env = php_lab();
    env.add("rig1", 1);
    for leftover in ["mama.xml.lock", "mama.xml.log"] {
        let _ = fs::remove_file(env.path().join(leftover));
    }
    let _ = fs::remove_dir_all(env.path().join("mama.xml.locks"));
    let (group, gid) = other_group();
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&env.state, Some(0), Some(gid)).expect("chown");
    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o660)).expect("chmod");
    (env, group, gid)
}

fn beside(env: &TestEnv, name: &str) -> PathBuf {
    env.path().join(name)
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn in_php_mamas_layout_a_member_reads_and_is_told_the_permission_to_add() {
    second_user();
    let (env, group, _) = upstream_layout();
    let (bin, _bin_dir) = binary_for_nobody(&env, &group);
    let nobody = |args: &[&str]| -> Run {
        as_nobody(&env, &bin, &group, args)
            .output()
            .expect("setpriv runs")
            .into()
    };
    assert!(nobody(&["list"]).ok().contains("rig1"));
    assert_eq!(nobody(&["info", "rig1", "--json"]).json()["name"], "rig1");
    assert_eq!(nobody(&["get", "rig1", "mac"]).ok(), "aa:bb:cc:dd:ee:01\n");
    nobody(&["log"]).ok();
    nobody(&["wait", "rig1"]).ok();
    let dir = env.path().display().to_string();
    let advice = format!("install -m 0660 -g {group} /dev/null {dir}/mama.xml.lock");
    nobody(&["set", "rig1", "os", "x"]).fails_saying(1, &advice);
    nobody(&["run", "rig1", "--", "true"]).fails_saying(125, &advice);
    let state = env.read_state();
    assert!(!state.contains("<os>x</os>"));
    assert_eq!(env.files(), ["mama.xml", "mama.xml-default"]);
}

#[test]
#[cfg_attr(
    not(all(mama_second_user, mama_python3)),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv, python3)"
)]
fn in_php_mamas_layout_a_member_uses_every_command_once_the_files_are_added() {
    second_user();
    let (env, group, gid) = upstream_layout();
    let dir = env.path().display().to_string();
    // What the message names, run by the folder's owner.
    for args in [
        vec![
            "-m",
            "0660",
            "-g",
            &group,
            "/dev/null",
            &format!("{dir}/mama.xml.lock"),
        ],
        vec![
            "-m",
            "0660",
            "-g",
            &group,
            "/dev/null",
            &format!("{dir}/mama.xml.log"),
        ],
        vec![
            "-d",
            "-m",
            "2770",
            "-g",
            &group,
            &format!("{dir}/mama.xml.locks"),
        ],
    ] {
        let status = Command::new("install")
            .args(&args)
            .status()
            .expect("install");
        assert!(status.success(), "install {args:?}");
    }
    let (bin, _bin_dir) = binary_for_nobody(&env, &group);
    let nobody = |args: &[&str]| -> Run {
        as_nobody(&env, &bin, &group, args)
            .output()
            .expect("setpriv runs")
            .into()
    };
    let before = inode(&env.state);
    nobody(&["add", "rig2", "--mac", "aa:bb:cc:dd:ee:02"]).ok();
    nobody(&["set", "rig2", "os", "tw"]).ok();
    assert_eq!(nobody(&["get", "rig2", "os"]).ok(), "tw\n");
    nobody(&["reserve", "rig2"]).ok();
    nobody(&["release", "rig2"]).ok();
    nobody(&["run", "rig1", "--", "true"]).ok();
    nobody(&["clear", "rig1"]).ok();
    nobody(&["delete", "rig2"]).ok();
    // Enough events for the history to move to the log.
    for i in 0..mama::backend::file::log::FLUSH_AT {
        nobody(&["set", "rig1", "kernel", &i.to_string()]).ok();
    }
    assert!(nobody(&["log"]).ok().contains("kernel=0"));
    assert!(
        fs::metadata(beside(&env, "mama.xml.log"))
            .expect("log")
            .len()
            > 0
    );
    // PHP mama still opens and locks the same file, owned as it was.
    assert_eq!(inode(&env.state), before);
    let meta = fs::metadata(&env.state).expect("state");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, gid, 0o660)
    );
    php_ok(&env, &["set", "rig1", "os", "by-php"]);
    assert_eq!(nobody(&["get", "rig1", "os"]).ok(), "by-php\n");
}

#[test]
#[cfg_attr(
    not(mama_python3),
    ignore = "needs python3 (for tests/php_mama.py): run tests/install-tools as root"
)]
fn writers_killed_while_writing_in_place_leave_a_file_both_tools_read() {
    const MACHINES: usize = 30;
    let env = php_lab();
    let machines: Vec<String> = (0..MACHINES)
        .map(|i| {
            let name = format!("m{i:02}");
            machine_xml(&name, i as u8, &[("os", "old"), ("boot_params", "quiet")])
        })
        .collect();
    env.write_state(&lab_xml(&machines));
    let start = Instant::now();
    for i in 0..3 {
        env.run(["set", "m00", "kernel", &i.to_string()]).ok();
    }
    // Kill at offsets up to about three times one write.
    let span_us = (start.elapsed().as_micros() as u64).clamp(3_000, 100_000);
    let os_of = |env: &TestEnv| field_by_machine(env, "os");
    let mut model = os_of(&env);
    let mut prng = Prng(0x2545_f491_4f6c_dd1d);
    let mut rolled_forward = 0;
    for round in 0..40 {
        // Longer and shorter values by turns: a shorter text overwrites
        // the start of a longer one, which stays until it is cut to length.
        let value = if round % 2 == 0 {
            format!("{round}-{}", "x".repeat(300))
        } else {
            round.to_string()
        };
        let ops: Vec<(String, String)> = (0..3)
            .map(|k| {
                (
                    format!("m{:02}", (round * 3 + k) % MACHINES),
                    format!("{value}-{k}"),
                )
            })
            .collect();
        let delay = Duration::from_micros(prng.next() % span_us);
        let ended = kill_after(
            &env,
            ops.iter()
                .map(|(m, v)| vec!["set".into(), m.clone(), "os".into(), v.clone()]),
            delay,
        );
        // mama reads the lab whatever instant the writers were killed at
        // (from the roll-forward copy, where one was cut short mid-write).
        let now = os_of(&env);
        for ((machine, new), end) in ops.iter().zip(&ended) {
            let got = &now[machine];
            if end.status.success() {
                assert_eq!(got, new, "round {round}: {machine}");
            } else {
                assert!(
                    got == new || *got == model[machine],
                    "round {round}: {machine} holds {got:?}, neither old nor new; {}",
                    end.stderr
                );
            }
        }
        model = now;
        // The next writer puts the lab in place, and PHP mama reads and
        // writes it.
        let repair = env.run(["set", "m00", "kernel", &format!("r{round}")]);
        repair.ok();
        if repair.stderr.contains("roll-forward copy") {
            rolled_forward += 1;
        }
        php_ok(&env, &["set", "m01", "arch", &format!("r{round}")]);
        assert_eq!(env.info("m01")["arch"], format!("r{round}"));
    }
    assert!(env.files_containing(".tmp").is_empty(), "{:?}", env.files());
    eprintln!("{rolled_forward} of 40 rounds put a roll-forward copy back");
}
