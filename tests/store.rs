//! The state store's guarantees, checked against the real binary: no lost
//! update between concurrent writers, old-or-new file whatever instant a
//! writer is killed, one lock that writers and readers respect, mode, group
//! and owner kept, symbolic links kept, and readers that never write.

use crate::common::users::*;
use crate::common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// One line of `/proc/locks`.
#[derive(Debug)]
struct LockLine {
    waiting: bool,
    write: bool,
    pid: u32,
    inode: u64,
}

fn proc_locks() -> Vec<LockLine> {
    let text = fs::read_to_string("/proc/locks").expect("read /proc/locks");
    text.lines()
        .filter_map(|line| {
            // "7: FLOCK  ADVISORY  WRITE 123 fe:00:456 0 EOF", and a waiter
            // "7: -> FLOCK ..." (deeper waiters repeat the arrow).
            let words: Vec<&str> = line.split_whitespace().skip(1).collect();
            let waiting = words.contains(&"->");
            let words: Vec<&str> = words.into_iter().filter(|w| *w != "->").collect();
            if words.first() != Some(&"FLOCK") {
                return None;
            }
            Some(LockLine {
                waiting,
                write: *words.get(2)? == "WRITE",
                pid: words.get(3)?.parse().ok()?,
                inode: words.get(4)?.rsplit(':').next()?.parse().ok()?,
            })
        })
        .collect()
}

/// Waits until every process in `pids` is blocked on the lock file `lock`
/// (asking for a write lock when `write`, a read lock otherwise).
#[track_caller]
fn wait_blocked(lock: &Path, pids: &[u32], write: bool) {
    let inode = fs::metadata(lock).expect("lock file").ino();
    wait_until("the processes to block on the lock", LIMIT, || {
        let locks = proc_locks();
        pids.iter().all(|&pid| {
            locks
                .iter()
                .any(|l| l.pid == pid && l.inode == inode && l.waiting && l.write == write)
        })
    });
}

/// A lock taken by this test process with `flock(2)`, standing in for
/// another program that holds it; released on drop.
struct Held(File);

#[allow(clippy::disallowed_methods)]
impl Held {
    fn take(path: &Path, op: libc::c_int) -> Held {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .expect("open lock file");
        // SAFETY: flock on a descriptor this File owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        assert_eq!(rc, 0, "flock {}", path.display());
        Held(file)
    }
}

#[allow(clippy::disallowed_methods)]
impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// `list --json` as a map from machine name to its object, without the
/// fields that follow from the clock and the process table.
#[track_caller]
fn machines(env: &TestEnv) -> BTreeMap<String, Map<String, Value>> {
    let run = env.run(["list", "--json"]);
    run.ok();
    let Value::Array(list) = run.json() else {
        panic!("list --json is not an array: {run:#?}");
    };
    let mut out = BTreeMap::new();
    for item in list {
        let Value::Object(mut m) = item else {
            panic!("not an object: {item}");
        };
        for key in ["state", "stale", "stale_reason"] {
            m.remove(key);
        }
        let name = m["name"].as_str().expect("name").to_string();
        assert!(out.insert(name.clone(), m).is_none(), "{name} twice");
    }
    out
}

/// The committed events, `log --json`, oldest first; their numbers follow
/// one another.
#[track_caller]
fn events(env: &TestEnv) -> Vec<Value> {
    let events = env.events();
    let first = events
        .first()
        .map_or(0, |e| e["seq"].as_u64().expect("seq"));
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event["seq"],
            first + i as u64,
            "events out of order: {events:#?}"
        );
    }
    events
}

// ---------------------------------------------------------------------------
// 1. Concurrency: no lost update

#[test]
fn concurrent_writers_lose_no_update() {
    const N: usize = 24;
    let env = TestEnv::new();

    // 24 adds at once on a lab that does not exist yet: they also race to
    // create the lock file and the state file.
    let mut adds = Kids(Vec::new());
    for i in 0..N {
        adds.0.push(env.spawn([
            "add",
            &format!("m{i:02}"),
            "--mac",
            &format!("02:00:00:00:00:{i:02x}"),
        ]));
    }
    for (i, child) in adds.0.iter_mut().enumerate() {
        finish_child(child, &format!("add m{i:02}")).ok();
    }
    let lab = machines(&env);
    let expected: BTreeSet<String> = (0..N).map(|i| format!("m{i:02}")).collect();
    assert_eq!(lab.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for i in 0..N {
        assert_eq!(
            lab[&format!("m{i:02}")]["mac"],
            format!("02:00:00:00:00:{i:02x}")
        );
    }

    // 24 sets, one per machine, held at the lock until all are waiting.
    let lock = lock_path(&env.state);
    let held = Held::take(&lock, libc::LOCK_EX);
    let mut sets = Kids(Vec::new());
    for i in 0..N {
        sets.0
            .push(env.spawn(["set", &format!("m{i:02}"), "os", &format!("os-{i}")]));
    }
    wait_blocked(&lock, &sets.pids(), true);
    drop(held);
    for (i, child) in sets.0.iter_mut().enumerate() {
        finish_child(child, &format!("set m{i:02}")).ok();
    }
    let lab = machines(&env);
    for i in 0..N {
        assert_eq!(
            lab[&format!("m{i:02}")]["os"],
            format!("os-{i}"),
            "lost update on m{i:02}"
        );
    }

    // 24 sets on ONE machine, spread over every attribute: each attribute
    // must end with one of the values written to it, none may be lost.
    let attrs = [
        "os",
        "kernel",
        "params",
        "vmparams",
        "startcmd",
        "stopcmd",
        "resources",
        "start-timeout",
        "ip",
        "mac",
    ];
    let value = |attr: &str, i: usize| match attr {
        "ip" => format!("10.9.0.{i}"),
        "mac" => format!("02:00:00:00:01:{i:02x}"),
        "start-timeout" => format!("{}", 100 + i),
        _ => format!("{attr}-{i}"),
    };
    let held = Held::take(&lock, libc::LOCK_EX);
    let mut written: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut one = Kids(Vec::new());
    for i in 0..N {
        let attr = attrs[i % attrs.len()];
        let v = value(attr, i);
        one.0.push(env.spawn(["set", "m00", attr, &v]));
        written.entry(attr).or_default().push(v);
    }
    wait_blocked(&lock, &one.pids(), true);
    drop(held);
    for child in &mut one.0 {
        finish_child(child, "set on m00").ok();
    }
    for (attr, values) in &written {
        let got = env.run(["get", "m00", attr]);
        let got = got.ok().trim_end_matches('\n');
        assert!(
            values.iter().any(|v| v == got),
            "m00 {attr} is '{got}', not one of the values written {values:?}"
        );
    }
    // The other machines kept what the previous round wrote.
    let lab = machines(&env);
    for i in 1..N {
        assert_eq!(lab[&format!("m{i:02}")]["os"], format!("os-{i}"));
    }
}

// ---------------------------------------------------------------------------
// 2. Kill storm: old or new file, never a mix, never a pile of temp files

/// A lab of `n` machines in the format the original tool writes, each with
/// an IP so that `clear` has something to forget.
fn big_lab(n: u8) -> String {
    let machines: Vec<String> = (0..n)
        .map(|i| {
            machine_xml(
                &format!("m{i:02}"),
                i,
                &[
                    ("ip", &format!("10.1.0.{i}")),
                    ("arch", "x86_64"),
                    ("os", "fedora"),
                    ("kernel", &format!("6.{i}")),
                    ("boot_params", "console=ttyS0,115200 quiet"),
                    ("startcmd", "ipmitool power on"),
                    ("stopcmd", "ipmitool power off"),
                    ("start_timeout", "300"),
                ],
            )
        })
        .collect();
    lab_xml(&machines)
}

/// What a storm writer does, and to which machine.
enum Op {
    Add(String, String),
    SetOs(String, String),
    SetKernel(String, String),
    Clear(String),
    Reserve(String),
    Run(String),
}

impl Op {
    fn args(&self) -> Vec<String> {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
        match self {
            Op::Add(name, mac) => v(&["add", name, "--mac", mac]),
            Op::SetOs(m, value) => v(&["set", m, "os", value]),
            Op::SetKernel(m, value) => v(&["set", m, "kernel", value]),
            Op::Clear(m) => v(&["clear", m]),
            Op::Reserve(m) => v(&["reserve", m]),
            // Not --no-wait: that gives up on the lab's lock after 250 ms,
            // which five other writers on a loaded machine may exceed.
            Op::Run(m) => v(&["run", m, "--wait-timeout", "60", "--", "true"]),
        }
    }

    /// The fields it may change.
    fn fields(&self) -> &'static [&'static str] {
        match self {
            Op::Add(..) => &[],
            Op::SetOs(..) => &["os"],
            Op::SetKernel(..) => &["kernel"],
            // Never the IP a person set.
            Op::Clear(_) => &[
                "is_started",
                "job",
                "job_pid",
                "job_timestamp",
                "job_user",
                "job_host",
            ],
            Op::Reserve(_) => &["reservation"],
            Op::Run(_) => &["job", "job_pid", "job_timestamp", "job_user", "job_host"],
        }
    }

    fn machine(&self) -> &str {
        match self {
            Op::Add(m, _)
            | Op::SetOs(m, _)
            | Op::SetKernel(m, _)
            | Op::Clear(m)
            | Op::Reserve(m)
            | Op::Run(m) => m,
        }
    }
}

fn pick(m: &Map<String, Value>, fields: &[&str]) -> Vec<Value> {
    fields
        .iter()
        .map(|f| m.get(*f).cloned().unwrap_or(Value::Null))
        .collect()
}

fn without(m: &Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    let mut m = m.clone();
    for f in fields {
        m.remove(*f);
    }
    m
}

#[test]
fn killed_writers_leave_the_old_or_the_new_file() {
    const MACHINES: usize = 50;
    const ROUNDS: usize = 40;
    let env = TestEnv::new();
    env.write_state(&big_lab(MACHINES as u8));
    let temp = temp_path(&env.state);
    let allowed = [
        "mama.xml",
        "mama.xml.lock",
        "mama.xml.locks",
        "mama.xml.log",
        ".mama.xml.tmp",
    ];
    let user = user_name();

    // Kill at offsets from 0 to three times the time one write takes here.
    let start = Instant::now();
    for i in 0..3 {
        env.run(["set", "m49", "vmparams", &format!("mem={i}G")])
            .ok();
    }
    let write_time = start.elapsed() / 3;
    let span_us = (write_time.as_micros() as u64 * 3).clamp(4_000, 100_000);

    let mut prng = Prng(0x9e37_79b9_7f4a_7c15);
    let mut model = machines(&env);
    assert_eq!(model.len(), MACHINES);
    let (mut completed, mut killed, mut temp_left) = (0, 0, 0);
    for round in 0..ROUNDS {
        let m = |k: usize| format!("m{:02}", (round * 7 + k) % MACHINES);
        let ops = [
            Op::Add(
                format!("n{round:02}"),
                format!("02:00:00:00:02:{round:02x}"),
            ),
            Op::SetOs(m(0), format!("os-{round}")),
            Op::Clear(m(1)),
            Op::Reserve(m(2)),
            Op::Run(m(3)),
            Op::SetKernel(m(4), format!("kernel-{round}")),
        ];
        let delay = Duration::from_micros(prng.next() % span_us);
        let outcome = kill_after(&env, ops.iter().map(Op::args), delay);

        // Only the known files, so at most one temporary file.
        let files = env.files();
        for f in &files {
            assert!(
                allowed.contains(&f.as_str()),
                "round {round}: stray {f}: {files:?}"
            );
        }
        assert!(
            files.iter().any(|f| f == "mama.xml"),
            "round {round}: {files:?}"
        );
        if temp.exists() {
            temp_left += 1;
        }

        // The file parses, and it is the old or the new version for every
        // writer, whatever the others did.
        let lab = machines(&env);
        for (op, Ended { status, stderr, .. }) in ops.iter().zip(&outcome) {
            let ok = status.success();
            if ok {
                completed += 1;
            } else {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(
                    status.signal(),
                    Some(libc::SIGKILL),
                    "round {round}: {:?} failed: {status:?} {stderr}",
                    op.args()
                );
                killed += 1;
            }
            let name = op.machine();
            if let Op::Add(_, mac) = op {
                match lab.get(name) {
                    Some(new) => assert_eq!(new["mac"], mac.as_str(), "round {round}"),
                    None => assert!(!ok, "round {round}: {name} was added, then lost"),
                }
                continue;
            }
            let (old, now) = (&model[name], &lab[name]);
            let fields = op.fields();
            assert_eq!(
                without(old, fields),
                without(now, fields),
                "round {round}: {:?} changed more than it may",
                op.args()
            );
            let (before, after) = (pick(old, fields), pick(now, fields));
            let wanted: Vec<Value> = match op {
                Op::SetOs(_, v) | Op::SetKernel(_, v) => vec![v.as_str().into()],
                Op::Clear(_) => vec![
                    false.into(),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                ],
                Op::Reserve(_) => vec![user.as_str().into()],
                // A finished run leaves the machine as it found it.
                Op::Run(_) => before.clone(),
                Op::Add(..) => unreachable!(),
            };
            if ok {
                assert_eq!(after, wanted, "round {round}: {:?} lost", op.args());
            } else if after != before && after != wanted {
                // Killed in the middle of a run: its claim, whole.
                assert!(
                    matches!(op, Op::Run(_))
                        && now["job"] == "run true"
                        && now["job_pid"].is_u64()
                        && now["job_timestamp"].is_i64()
                        && now["job_user"] == user.as_str(),
                    "round {round}: {:?} left a mix: {before:?} -> {after:?}",
                    op.args()
                );
            }
        }
        // Every change has its event and every event its change.
        let log = events(&env);
        for op in &ops {
            let (name, changed, kind, detail) = match op {
                Op::Add(name, _) => (name, lab.contains_key(name), "added", None),
                Op::SetOs(name, v) => (
                    name,
                    lab[name]["os"] == v.as_str(),
                    "set",
                    Some(format!("os={v}")),
                ),
                _ => continue,
            };
            assert_eq!(
                has_event(&log, name, kind, detail.as_deref()),
                changed,
                "round {round}: {:?}: change and event disagree",
                op.args()
            );
        }
        // Machines nobody touched are as they were; nothing is lost.
        for (name, old) in &model {
            if ops.iter().all(|op| op.machine() != name) {
                assert_eq!(Some(old), lab.get(name), "round {round}: {name} changed");
            }
        }
        assert!(lab.len() <= model.len() + 1, "round {round}");
        model = lab;
    }

    // The next writer cleans up whatever temporary file a killed one left.
    env.run(["set", "m00", "os", "final"]).ok();
    assert!(
        !temp.exists(),
        "a temporary file is left: {:?}",
        env.files()
    );
    let lab = machines(&env);
    assert_eq!(lab["m00"]["os"], "final");
    assert!(lab.len() >= MACHINES);
    assert!(killed > 0, "no writer was killed");
    eprintln!(
        "kill storm: {ROUNDS} rounds, kills within {span_us} us, {completed} writers finished, \
         {killed} killed, a temporary file left after {temp_left} rounds"
    );
}

// ---------------------------------------------------------------------------
// 3. The lock

#[test]
#[cfg_attr(
    not(mama_flock),
    ignore = "needs flock (util-linux): run tests/install-tools as root"
)]
fn a_writer_waits_for_a_lock_held_by_flock_1() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let lock = lock_path(&env.state);
    let mut holder = Kids(vec![
        Command::new("flock")
            .arg(&lock)
            .args(["-c", "echo locked; read x"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("flock(1) starts"),
    ]);
    let mut line = String::new();
    BufReader::new(holder.0[0].stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read flock(1)");
    assert_eq!(line, "locked\n");
    let before = fs::read(&env.state).expect("state");

    let mut set = Kids(vec![env.spawn(["set", "rig1", "os", "while-locked"])]);
    wait_blocked(&lock, &set.pids(), true);
    assert!(set.0[0].try_wait().expect("try_wait").is_none());
    assert_eq!(fs::read(&env.state).expect("state"), before);

    holder.0[0]
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"\n")
        .expect("release flock(1)");
    finish_child(&mut set.0[0], "set after the release").ok();
    assert_eq!(env.info("rig1")["os"], "while-locked");
}

#[test]
fn readers_wait_for_an_exclusive_lock_but_share_a_shared_one() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let lock = lock_path(&env.state);

    // A writer's exclusive lock holds readers back.
    let held = Held::take(&lock, libc::LOCK_EX);
    let mut list = Kids(vec![env.spawn(["list", "--json"])]);
    let mut get = Kids(vec![env.spawn(["get", "rig1", "mac"])]);
    wait_blocked(&lock, &[list.pids(), get.pids()].concat(), false);
    assert!(list.0[0].try_wait().expect("try_wait").is_none());
    assert!(get.0[0].try_wait().expect("try_wait").is_none());
    drop(held);
    let listed = finish_child(&mut list.0[0], "list after the release");
    assert_eq!(listed.json()[0]["name"], "rig1");
    let got = finish_child(&mut get.0[0], "get after the release");
    assert_eq!(got.ok(), "aa:bb:cc:dd:ee:01\n");

    // Under another reader's shared lock, readers go on and writers wait.
    let held = Held::take(&lock, libc::LOCK_SH);
    let mut list = Kids(vec![env.spawn(["list", "--json"])]);
    let listed = finish_child(&mut list.0[0], "list beside a shared lock");
    assert_eq!(listed.json()[0]["name"], "rig1");
    let mut set = Kids(vec![env.spawn(["set", "rig1", "kernel", "6.12"])]);
    wait_blocked(&lock, &set.pids(), true);
    assert!(set.0[0].try_wait().expect("try_wait").is_none());
    assert!(!env.read_state().contains("6.12"));
    drop(held);
    finish_child(&mut set.0[0], "set after the release").ok();
    assert_eq!(env.info("rig1")["kernel"], "6.12");
}

// ---------------------------------------------------------------------------
// 4. Mode, group and owner

#[test]
fn writes_keep_mode_group_and_owner() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let gid = share_with_group(&env.state, 0o640);
    let owner = fs::metadata(&env.state).expect("state").uid();

    env.run(["set", "rig1", "os", "debian"]).ok();
    let meta = fs::metadata(&env.state).expect("state");
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(meta.gid(), gid);
    assert_eq!(meta.uid(), owner);
    assert_eq!(env.info("rig1")["os"], "debian");

    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o600)).expect("chmod");
    env.run(["set", "rig1", "os", "arch"]).ok();
    assert_eq!(mode(&env.state), 0o600);
    env.run(["reserve", "rig1"]).ok();
    assert_eq!(mode(&env.state), 0o600);
    assert_eq!(env.info("rig1")["os"], "arch");
}

#[test]
#[cfg_attr(
    not(mama_root),
    ignore = "gives the state file to another user: run as root"
)]
fn roots_writes_keep_another_users_state_file_theirs() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let gid = share_with_group(&env.state, 0o640);
    let nobody = user_id("nobody").expect("user nobody");
    std::os::unix::fs::chown(&env.state, Some(nobody), Some(gid)).expect("chown");
    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o660)).expect("chmod");
    env.run(["set", "rig1", "kernel", "6.1"]).ok();
    let meta = fs::metadata(&env.state).expect("state");
    assert_eq!((meta.uid(), meta.gid()), (nobody, gid));
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(env.info("rig1")["kernel"], "6.1");
}

/// As `nobody` in `group`: `set rig1 os VALUE`, which must succeed and be
/// recorded.
#[track_caller]
fn set_os_as_nobody(env: &TestEnv, group: &str, value: &str) {
    let (bin, _bin_dir) = binary_for_nobody(env, group);
    let run: Run = as_nobody(env, &bin, group, &["set", "rig1", "os", value])
        .output()
        .expect("setpriv runs")
        .into();
    run.ok();
    assert_eq!(env.info("rig1")["os"], value);
    let detail = format!("os={value}");
    assert!(has_event(&events(env), "rig1", "set", Some(&detail)));
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn another_user_writes_a_world_writable_state_through_a_read_only_lock_file() {
    second_user();
    let env = TestEnv::new();
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    // root creates the lab with umask 022: state and lock file 0644.
    let mut add = env.cmd(["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"]);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut add, || {
            libc::umask(0o022);
            Ok(())
        });
    }
    assert!(add.status().expect("add").success());
    let lock = lock_path(&env.state);
    // Only root may write the state, so only root may open its lock.
    assert_eq!(mode(&lock), 0o600);
    assert_eq!(fs::metadata(&lock).expect("lock").uid(), 0);
    // A lock file as an older mama made it, readable by all.
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o666)).expect("chmod");

    set_os_as_nobody(&env, &nobody_group(), "by-nobody");
    assert_eq!(mode(&env.state), 0o666);
    // The lock file stays root's, and once root looks again (the `info`
    // above) it follows the state file: everyone may write both. The
    // temporary file is gone.
    assert_eq!(mode(&lock), 0o666);
    assert_eq!(fs::metadata(&lock).expect("lock").uid(), 0);
    assert!(!temp_path(&env.state).exists(), "{:?}", env.files());

    // And root may still write it; the mode stays.
    env.run(["set", "rig1", "kernel", "by-root"]).ok();
    assert_eq!(mode(&env.state), 0o666);
    assert_eq!(env.info("rig1")["os"], "by-nobody");
}

/// A lab whose folder and state file its group may write (mode 0770 and
/// 0660), the lock files made by its owner's mama under umask 077 and a
/// run; checks that they took the state file's mode and group. Returns the
/// group.
fn group_shared_lab(env: &TestEnv) -> (String, u32) {
    env.add("rig1", 1);
    let (group, gid) = group_to_share();
    std::os::unix::fs::chown(env.path(), None, Some(gid)).expect("chgrp folder");
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o770)).expect("chmod folder");
    std::os::unix::fs::chown(&env.state, None, Some(gid)).expect("chgrp");
    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o660)).expect("chmod");
    let lock = lock_path(&env.state);
    fs::remove_file(&lock).expect("remove the lock file");

    // The lock file mama creates takes the state file's mode and group,
    // whatever the umask.
    let mut set = env.cmd(["set", "rig1", "os", "by-owner"]);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut set, || {
            libc::umask(0o077);
            Ok(())
        });
    }
    assert!(set.status().expect("set").success());
    let meta = fs::metadata(&lock).expect("lock file");
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o660, gid));
    let meta = fs::metadata(&env.state).expect("state");
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o660, gid));

    // So do the machine locks a job takes.
    env.run(["run", "rig1", "--", "true"]).ok();
    let locks = env.path().join("mama.xml.locks");
    let meta = fs::metadata(&locks).expect("machine locks folder");
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o770, gid));
    let rig_lock = locks.join("rig1.lock");
    let meta = fs::metadata(&rig_lock).expect("machine lock");
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o660, gid));
    (group, gid)
}

#[test]
fn new_lock_files_follow_a_group_shared_state() {
    group_shared_lab(&TestEnv::new());
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn a_group_member_writes_a_group_shared_state_and_new_lock_files_follow_it() {
    let env = TestEnv::new();
    let (group, gid) = group_shared_lab(&env);
    // A member of the group (not the owner) may write through that lock.
    second_user();
    set_os_as_nobody(&env, &group, "by-member");
    let meta = fs::metadata(&env.state).expect("state");
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o660, gid));
    assert!(!temp_path(&env.state).exists(), "{:?}", env.files());
}

// ---------------------------------------------------------------------------
// 5. A symbolic link to the state file

#[test]
fn a_symlinked_state_file_stays_a_link() {
    let env = TestEnv::new();
    let real_dir = env.path().join("real");
    let link_dir = env.path().join("links");
    fs::create_dir(&real_dir).expect("mkdir");
    fs::create_dir(&link_dir).expect("mkdir");
    let real = real_dir.join("lab.xml");
    let link = link_dir.join("mama.xml");
    fs::write(&real, big_lab(2)).expect("write state");
    std::os::unix::fs::symlink("../real/lab.xml", &link).expect("symlink");
    // A temporary file a killed writer left beside the real file.
    fs::write(real_dir.join(".lab.xml.tmp"), "<settings><mach").expect("leftover");

    let mama = |args: &[&str]| -> Run {
        env.cmd(args)
            .env("MAMA_STATE", &link)
            .output()
            .expect("mama runs")
            .into()
    };
    mama(&["set", "m01", "os", "through-the-link"]).ok();

    assert!(
        fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(&link).expect("link"),
        Path::new("../real/lab.xml")
    );
    assert!(
        fs::read_to_string(&real)
            .expect("real")
            .contains("<os>through-the-link</os>")
    );
    let mut beside: Vec<String> = fs::read_dir(&real_dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    beside.sort();
    // The history's log appears there too once events move out of the state.
    beside.retain(|name| name != "lab.xml.log");
    assert_eq!(beside, ["lab.xml", "lab.xml.lock"]);
    let links: Vec<_> = fs::read_dir(&link_dir).expect("read dir").collect();
    assert_eq!(links.len(), 1, "only the link in its folder");

    let info = mama(&["info", "m01", "--json"]).json();
    assert_eq!(info["os"], "through-the-link");
}

// ---------------------------------------------------------------------------
// 6. Readers never write

#[test]
fn read_only_commands_never_write() {
    let env = TestEnv::new();
    let mut xml = big_lab(3);
    // A stale claim (dead PID) and a claim with neither PID nor timestamp:
    // readers show them and leave them be.
    xml = with_job(&xml, "m00", "old", Some(dead_pid()), 1000);
    xml = xml.replacen("<job/>", "<job>manual</job>", 1);
    xml = xml.replace("</settings>", "  <unknown keep=\"yes\"/>\n</settings>");
    // m02 has no job and no IP, so clearing it changes nothing.
    xml = xml.replace("<ip>10.1.0.2</ip>", "<ip/>");
    env.write_state(&xml);
    // An old time stamp shows any rewrite, however fast.
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(&env.state)
        .expect("open")
        .set_modified(old)
        .expect("set mtime");
    let inode = fs::metadata(&env.state).expect("state").ino();

    let commands: [&[&str]; 12] = [
        &["list"],
        &["list", "--json"],
        &["info", "m00"],
        &["info", "m00", "--json"],
        &["info", "m01", "--json"],
        &["get", "m00", "job"],
        &["get", "m01", "os"],
        &["get", "m02", "reservation"],
        // Refused changes and changes to the same value write nothing either.
        &["set", "nosuch", "os", "x"],
        &["add", "m00", "--mac", "02:00:00:00:00:99"],
        &["set", "m02", "os", "fedora"],
        &["clear", "m02"],
    ];
    for args in commands {
        let run = env.run(args);
        let meta = fs::metadata(&env.state).expect("state");
        assert_eq!(
            meta.modified().expect("mtime"),
            old,
            "{args:?} wrote: {run:#?}"
        );
        assert_eq!(meta.ino(), inode, "{args:?} replaced the file");
        assert_eq!(env.read_state(), xml, "{args:?}");
        assert!(!temp_path(&env.state).exists(), "{args:?}");
    }
    let list = env.run(["list", "--json"]).json();
    assert_eq!(list[0]["stale"], true);
    assert_eq!(list[1]["job"], "manual");
    assert_eq!(list[1]["job_timestamp"], Value::Null);
}
