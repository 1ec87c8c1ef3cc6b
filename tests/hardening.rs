//! A shared lab folder is writable by every member of its group, and root
//! runs mama there too. These tests plant what a member could (links, a
//! held lock, a read-only mount) and check that mama never follows a link
//! beside the state file, never hangs or spins on what it finds, makes its
//! files like the state file, keeps ACLs and extended attributes, and that
//! those who may only read still can.

use crate::common::users::*;
use crate::common::*;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use mama::backend::file::log::FLUSH_AT;

/// A file outside the lab that a planted link points at: its content,
/// mode and owner must never change.
struct Victim {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// Its owner and group, as made.
    owner: (u32, u32),
}

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("victim");
        fs::write(&path, "precious\n").expect("write the victim");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let meta = fs::metadata(&path).expect("the victim");
        Victim {
            _dir: dir,
            path,
            owner: (meta.uid(), meta.gid()),
        }
    }

    /// A path in the victim's folder where nothing is (yet).
    fn absent(&self) -> PathBuf {
        self.path.with_file_name("not-there")
    }

    #[track_caller]
    fn assert_untouched(&self) {
        let meta = fs::metadata(&self.path).expect("the victim is there");
        assert_eq!(
            fs::read_to_string(&self.path).expect("read the victim"),
            "precious\n"
        );
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o644, self.owner.0, self.owner.1)
        );
        assert!(!self.absent().exists(), "mama created the link's target");
    }
}

/// A file beside the state file (`S` plus `suffix`, or `.S.log.tmp`).
fn beside(env: &TestEnv, name: &str) -> PathBuf {
    env.path().join(name)
}

/// Runs `set rig1 os vN` for N in `range`; returns every run.
fn sets(env: &TestEnv, range: std::ops::Range<usize>) -> Vec<Run> {
    range
        .map(|n| env.run(["set", "rig1", "os", &format!("v{n}")]))
        .collect()
}

#[test]
fn a_link_planted_as_the_log_is_never_written_through() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let victim = Victim::new();
    let log = beside(&env, "mama.xml.log");
    let _ = fs::remove_file(&log);
    symlink(&victim.path, &log).expect("plant the link");

    // Enough events that they move from the state to the log.
    let runs = sets(&env, 0..FLUSH_AT + 8);
    let failed: Vec<&Run> = runs.iter().filter(|r| r.code != Some(0)).collect();
    assert!(!failed.is_empty(), "no write reached the log: {runs:#?}");
    for run in failed {
        run.fails_saying(1, &format!("{} is a symbolic link", log.display()));
    }
    victim.assert_untouched();
    assert!(fs::symlink_metadata(&log).expect("link").is_symlink());
    // The state still reads; every change that records an event (they all
    // read the log's end to number it) is refused.
    assert_eq!(env.run(["get", "rig1", "os"]).ok(), "\n");
    env.run(["log"])
        .fails_saying(1, &format!("{} is a symbolic link", log.display()));
}

#[test]
fn a_link_planted_as_the_machine_locks_folder_is_refused() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let elsewhere = tempfile::tempdir().expect("temporary folder");
    let locks = beside(&env, "mama.xml.locks");
    symlink(elsewhere.path(), &locks).expect("plant the link");

    env.run(["run", "rig1", "--", "true"])
        .fails_saying(125, &format!("{} is a symbolic link", locks.display()));
    let planted: Vec<_> = fs::read_dir(elsewhere.path()).expect("list").collect();
    assert!(
        planted.is_empty(),
        "mama wrote in the other folder: {planted:?}"
    );
    assert_eq!(env.info("rig1")["job"], serde_json::Value::Null);
}

#[test]
fn a_link_planted_as_a_job_lock_is_refused() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.run(["run", "rig1", "--", "true"]).ok();
    let victim = Victim::new();
    let lock = beside(&env, "mama.xml.locks/rig1.lock");
    fs::remove_file(&lock).expect("remove the job lock");
    symlink(&victim.path, &lock).expect("plant the link");

    env.run(["run", "rig1", "--", "true"])
        .fails_saying(125, &format!("{} is a symbolic link", lock.display()));
    victim.assert_untouched();
}

#[test]
fn a_link_planted_as_the_labs_lock_is_refused() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let victim = Victim::new();
    let lock = lock_path(&env.state);
    fs::remove_file(&lock).expect("remove the lock file");
    symlink(&victim.path, &lock).expect("plant the link");
    let before = env.read_state();

    let says = format!("{} is a symbolic link", lock.display());
    env.run(["list"]).fails_saying(1, &says);
    env.run(["set", "rig1", "os", "x"]).fails_saying(1, &says);
    env.run(["run", "rig1", "--", "true"])
        .fails_saying(125, &says);
    victim.assert_untouched();
    assert_eq!(env.read_state(), before);
}

/// A dangling link where a lock file belongs made every mama spin for
/// ever; now each one ends at once, saying why.
#[test]
fn a_dangling_link_as_a_lock_file_fails_at_once() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    env.run(["run", "rig1", "--", "true"]).ok();
    let victim = Victim::new();
    let job_lock = beside(&env, "mama.xml.locks/rig1.lock");
    fs::remove_file(&job_lock).expect("remove the job lock");
    symlink(victim.absent(), &job_lock).expect("plant the link");
    let mut run = env.start(["run", "rig1", "--", "true"]);
    run.finish(LIMIT)
        .fails_saying(125, &format!("{} is a symbolic link", job_lock.display()));
    let mut wait = env.start(["wait", "rig1"]);
    wait.finish(LIMIT)
        .fails_saying(1, &format!("{} is a symbolic link", job_lock.display()));

    let lock = lock_path(&env.state);
    fs::remove_file(&lock).expect("remove the lock file");
    symlink(victim.absent(), &lock).expect("plant the link");
    for (args, code) in [
        (&["list"][..], 1),
        (&["info", "rig1"], 1),
        (&["set", "rig1", "os", "x"], 1),
        (&["run", "rig1", "--", "true"], 125),
    ] {
        let mut bg = env.start(args);
        bg.finish(LIMIT)
            .fails_saying(code, &format!("{} is a symbolic link", lock.display()));
    }
    victim.assert_untouched();
}

/// The state file with its log committed up to `last` and no pending
/// events, and a log of events 1..=last longer than the 128 KiB segment
/// of a lab that keeps 1 MiB of history (set it after).
fn seed_big_log(env: &TestEnv) -> u64 {
    let mut log = String::new();
    let mut seq = 0;
    // Recent: the history's default (a year) keeps them.
    let time = unix_now() - 60;
    while log.len() <= 160 << 10 {
        seq += 1;
        let event = serde_json::json!({
            "seq": seq, "time": time, "machine": "rig1", "event": "set",
            "job": null, "pid": null, "user": "someone", "host": "somewhere",
            "detail": format!("os=v{seq}-{}", "x".repeat(80)),
        });
        log.push_str(&event.to_string());
        log.push('\n');
    }
    fs::write(beside(env, "mama.xml.log"), log).expect("write the log");
    env.write_state(&lab_xml(&[machine_xml("rig1", 1, &[])]).replace(
        "</settings>",
        &format!("  <event_seq>{seq}</event_seq>\n</settings>"),
    ));
    seq
}

#[test]
fn a_link_planted_as_the_logs_temporary_file_is_never_followed() {
    let env = TestEnv::new();
    let last = seed_big_log(&env);
    env.run(["setting", "history-max-size", "1M"]).ok();
    let victim = Victim::new();
    let temp = beside(&env, ".mama.xml.log.tmp");
    symlink(&victim.path, &temp).expect("plant the link");

    // The flush that these events force (the transaction after the state
    // holds FLUSH_AT of them) rotates the log: a rename, nothing written
    // through the link.
    for run in sets(&env, 0..FLUSH_AT + 1) {
        run.ok();
    }
    victim.assert_untouched();
    let log = fs::metadata(beside(&env, "mama.xml.log")).expect("the log");
    assert!(log.len() < 64 * 1024, "not rotated: {}", log.len());
    assert!(beside(&env, "mama.xml.log.1").exists(), "{:?}", env.files());
    let events = env.events();
    assert_eq!(
        events.last().and_then(|e| e["seq"].as_u64()),
        Some(last + FLUSH_AT as u64 + 2)
    );
}

#[test]
fn a_link_planted_as_the_states_temporary_file_is_removed_not_followed() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let victim = Victim::new();
    let temp = temp_path(&env.state);
    symlink(&victim.path, &temp).expect("plant the link");
    env.run(["set", "rig1", "os", "fresh"]).ok();
    victim.assert_untouched();
    assert!(fs::symlink_metadata(&temp).is_err(), "{:?}", env.files());
    assert_eq!(env.info("rig1")["os"], "fresh");
}

#[test]
fn a_fifo_planted_as_the_log_is_refused_without_hanging() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let log = beside(&env, "mama.xml.log");
    let _ = fs::remove_file(&log);
    let status = Command::new("mkfifo").arg(&log).status().expect("mkfifo");
    assert!(status.success());
    let mut bg = env.start(["log"]);
    bg.finish(LIMIT)
        .fails_saying(1, &format!("{} is a FIFO", log.display()));
}

/// `mama ARGS` run with umask `mask`.
fn with_umask(mut cmd: Command, mask: libc::mode_t) -> Command {
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
    cmd
}

#[test]
fn under_umask_000_new_files_are_made_like_the_state_file() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let gid = share_with_group(&env.state, 0o640);
    for name in ["mama.xml.lock", "mama.xml.log"] {
        let _ = fs::remove_file(beside(&env, name));
    }
    for n in 0..FLUSH_AT + 1 {
        let set = env.cmd(["set", "rig1", "os", &format!("v{n}")]);
        let status = with_umask(set, 0).status().expect("set");
        assert!(status.success());
    }
    let run = env.cmd(["run", "rig1", "--", "true"]);
    assert!(with_umask(run, 0).status().expect("run").success());
    let look = |name: &str| {
        let meta = fs::metadata(beside(&env, name)).expect(name);
        (meta.mode() & 0o7777, meta.gid())
    };
    assert_eq!(look("mama.xml"), (0o640, gid));
    assert_eq!(look("mama.xml.log"), (0o640, gid));
    // Only the owner may write the state, so only the owner may lock it.
    assert_eq!(look("mama.xml.lock"), (0o600, gid));
    assert_eq!(look("mama.xml.locks"), (0o700, gid));
    assert_eq!(look("mama.xml.locks/rig1.lock"), (0o600, gid));
    assert_eq!(env.files_containing(".tmp"), Vec::<String>::new());
}

/// A process that holds `lock` with flock(1) in its own process group,
/// killed with its group when dropped.
struct Holder {
    child: Child,
}

impl Holder {
    /// Holds the lock exclusively; returns once it is held.
    fn take(lock: &Path) -> Holder {
        // -o: only flock(1) itself holds the lock, not the sleep.
        let child = Command::new("flock")
            .arg("-o")
            .arg(lock)
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("flock(1) starts");
        wait_until("flock(1) to hold the lock", LIMIT, || {
            !Command::new("flock")
                .args(["-n", "-s"])
                .arg(lock)
                .arg("true")
                .status()
                .expect("flock -n")
                .success()
        });
        Holder { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain system call on our child's process group.
        unsafe {
            libc::killpg(self.child.id() as libc::pid_t, signal);
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
#[cfg_attr(
    not(mama_flock),
    ignore = "needs flock (util-linux): run tests/install-tools as root"
)]
fn waiters_for_a_held_labs_lock_give_up_as_told() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let lock = lock_path(&env.state);
    let _holder = Holder::take(&lock);
    let says = format!("the lab's lock {} is held", lock.display());

    let mut run = env.start(["run", "rig1", "--no-wait", "--", "true"]);
    run.finish(LIMIT).fails_saying(75, &says);
    let mut run = env.start(["run", "rig1", "--wait-timeout", "0.5", "--", "true"]);
    run.finish(LIMIT).fails_saying(
        75,
        &format!("waiting for the lab's lock {}", lock.display()),
    );
    let mut wait = env.start(["wait", "rig1", "--timeout", "0.5"]);
    wait.finish(LIMIT).fails_saying(
        75,
        &format!("waiting for the lab's lock {}", lock.display()),
    );
    assert_eq!(env.files_containing(".tmp"), Vec::<String>::new());
}

#[test]
#[cfg_attr(
    not(mama_flock),
    ignore = "needs flock (util-linux): run tests/install-tools as root"
)]
fn a_reader_says_who_holds_the_labs_lock_and_goes_on_once_it_is_let_go() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let lock = lock_path(&env.state);
    let holder = Holder::take(&lock);
    // As a mama stopped by Ctrl-Z in the middle of a transaction.
    holder.signal(libc::SIGSTOP);

    let mut list = env.start(["list"]);
    let line = list.expect_stderr("waiting for the lab's lock", LIMIT);
    let expected = format!(
        "mama: waiting for the lab's lock {}, taken by PID {} (flock, stopped)",
        lock.display(),
        holder.pid()
    );
    assert_eq!(line, expected);
    assert!(list.running());
    drop(holder);
    let listed = list.finish(LIMIT);
    assert!(listed.ok().contains("rig1"), "{listed:#?}");
}

#[test]
#[cfg_attr(
    not(all(mama_second_user, mama_flock)),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv, flock)"
)]
fn only_those_who_may_write_the_state_may_open_its_lock() {
    second_user();
    let env = TestEnv::new();
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    env.add("rig1", 1);
    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o644)).expect("chmod");
    env.run(["run", "rig1", "--", "true"]).ok();
    let lock = lock_path(&env.state);
    assert_eq!(mode(&lock), 0o600);
    assert_eq!(mode(&beside(&env, "mama.xml.locks")), 0o700);
    assert_eq!(mode(&beside(&env, "mama.xml.locks/rig1.lock")), 0o600);

    let group = nobody_group();
    let (bin, _bin_dir) = binary_for_nobody(&env, &group);
    let flock = Path::new("/usr/bin/flock");
    // Who may only read cannot hold the lab's lock against everyone...
    for shared in [true, false] {
        let mut args = vec!["-n"];
        if shared {
            args.push("-s");
        }
        let path = lock.to_string_lossy().into_owned();
        args.extend([path.as_str(), "true"]);
        let held = as_nobody(&env, flock, &group, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("flock(1) runs");
        assert!(!held.success(), "nobody took the lock (shared: {shared})");
    }
    // ... but reads the lab, and waits for a free machine.
    let nobody = |args: &[&str]| -> Run {
        as_nobody(&env, &bin, &group, args)
            .output()
            .expect("setpriv runs")
            .into()
    };
    assert!(nobody(&["list"]).ok().contains("rig1"));
    assert_eq!(nobody(&["get", "rig1", "mac"]).ok(), "aa:bb:cc:dd:ee:01\n");
    nobody(&["wait", "rig1"]).ok();
    nobody(&["set", "rig1", "os", "x"]).fails(1);
    assert_eq!(env.info("rig1")["os"], serde_json::Value::Null);
}

fn getfacl(path: &Path) -> String {
    let out = Command::new("getfacl")
        .args(["--omit-header", "--numeric"])
        .arg(path)
        .output()
        .expect("getfacl");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn getfattr(path: &Path, name: &str) -> Option<String> {
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .expect("getfattr");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
#[cfg_attr(
    not(all(mama_acl, mama_xattr)),
    ignore = "needs setfacl and setfattr (acl, attr): run tests/install-tools as root"
)]
fn acls_and_extended_attributes_survive_a_write() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let nobody = user_id("nobody").expect("user nobody");
    let acl = Command::new("setfacl")
        .args(["-m", &format!("u:{nobody}:rw")])
        .arg(&env.state)
        .status()
        .expect("setfacl");
    assert!(acl.success());
    let attr = Command::new("setfattr")
        .args(["-n", "user.lab", "-v", "x"])
        .arg(&env.state)
        .status()
        .expect("setfattr");
    assert!(attr.success());
    let acl_before = getfacl(&env.state);
    assert!(
        acl_before.contains(&format!("user:{nobody}:rw-")),
        "{acl_before}"
    );
    let mode_before = mode(&env.state);

    env.run(["set", "rig1", "os", "kept"]).ok();
    assert_eq!(env.info("rig1")["os"], "kept");
    assert_eq!(getfacl(&env.state), acl_before);
    assert_eq!(mode(&env.state), mode_before);
    assert_eq!(getfattr(&env.state, "user.lab").as_deref(), Some("x"));
}

#[test]
#[cfg_attr(
    not(all(mama_second_user, mama_xattr)),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv, setfattr)"
)]
fn a_write_that_would_drop_an_attribute_is_refused() {
    second_user();
    let env = TestEnv::new();
    env.add("rig1", 1);
    let (group, gid) = group_to_share();
    std::os::unix::fs::chown(env.path(), None, Some(gid)).expect("chgrp folder");
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o770)).expect("chmod folder");
    std::os::unix::fs::chown(&env.state, None, Some(gid)).expect("chgrp");
    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o660)).expect("chmod");
    // The lock file root made follows the state file at root's next look.
    env.run(["list"]).ok();
    // Only root may set an attribute in the security namespace.
    let attr = Command::new("setfattr")
        .args(["-n", "security.mama_test", "-v", "1"])
        .arg(&env.state)
        .status()
        .expect("setfattr");
    assert!(attr.success());
    let before = env.read_state();
    let inode = fs::metadata(&env.state).expect("state").ino();

    let (bin, _bin_dir) = binary_for_nobody(&env, &group);
    let run: Run = as_nobody(&env, &bin, &group, &["set", "rig1", "os", "x"])
        .output()
        .expect("setpriv runs")
        .into();
    run.fails_saying(1, "security.mama_test");
    assert_eq!(env.read_state(), before);
    assert_eq!(fs::metadata(&env.state).expect("state").ino(), inode);
    assert_eq!(
        getfattr(&env.state, "security.mama_test").as_deref(),
        Some("1")
    );
    assert_eq!(env.files_containing(".tmp"), Vec::<String>::new());
}

/// A read-only bind mount of a folder, unmounted when dropped.
struct ReadOnlyMount {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ReadOnlyMount {
    fn of(source: &Path) -> ReadOnlyMount {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("ro");
        fs::create_dir(&path).expect("mount point");
        let bound: Run = Command::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(&path)
            .output()
            .expect("mount runs")
            .into();
        bound.ok();
        let mount = ReadOnlyMount { _dir: dir, path };
        let ro: Run = Command::new("mount")
            .args(["-o", "remount,ro,bind"])
            .arg(&mount.path)
            .output()
            .expect("mount runs")
            .into();
        ro.ok();
        mount
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_mount)),
    ignore = "mounts a file system: run as root after tests/install-tools (mount)"
)]
fn a_lab_on_a_read_only_file_system_can_be_read_and_waited_on() {
    let env = TestEnv::new();
    let sleeper = sleeper();
    let xml = lab_xml(&[
        machine_xml("free1", 1, &[]),
        machine_xml("stale2", 2, &[]),
        machine_xml("busy3", 3, &[]),
    ]);
    let xml = with_job(&xml, "stale2", "gone", Some(dead_pid()), unix_now() - 60);
    let xml = with_job(&xml, "busy3", "live", Some(sleeper.pid()), unix_now());
    env.write_state(&xml);
    env.run(["set", "free1", "os", "ro-test"]).ok();
    assert!(lock_path(&env.state).exists());
    let mount = ReadOnlyMount::of(env.path());
    let state = mount.path.join("mama.xml");
    let before = fs::read_to_string(&state).expect("read the state");
    let mama = |args: &[&str]| -> Run {
        env.cmd(args)
            .env("MAMA_STATE", &state)
            .output()
            .expect("mama runs")
            .into()
    };

    assert!(mama(&["list"]).ok().contains("free1"));
    assert!(mama(&["info", "free1"]).ok().contains("ro-test"));
    assert!(mama(&["log"]).ok().contains("os=ro-test"));
    mama(&["wait", "free1"]).ok();
    // A stale job counts as free for `wait`, and stays recorded.
    mama(&["wait", "stale2"]).ok();
    mama(&["wait", "busy3", "--timeout", "0.5"]).fails_saying(75, "busy3 is busy");
    mama(&["set", "free1", "os", "x"]).fails_saying(1, "Read-only file system");
    assert_eq!(fs::read_to_string(&state).expect("read the state"), before);
}

/// Run by [`temporary_files_are_private_whatever_the_umask`] in a copy of
/// this test binary started with umask 000.
#[test]
#[ignore = "run by temporary_files_are_private_whatever_the_umask"]
fn temporary_files_are_private_under_umask_000() {
    // SAFETY: umask cannot fail; this only reads the mask.
    let mask = unsafe {
        let mask = libc::umask(0);
        libc::umask(mask);
        mask
    };
    assert_eq!(mask, 0, "started without umask 000");
    let dir = tempfile::tempdir().expect("temporary folder");
    let folder = mama::backend::file::fsutil::Dir::open(dir.path()).expect("the folder");
    let file = folder
        .create_temp(".mama.xml.tmp".as_ref())
        .expect("create the temporary file");
    assert_eq!(file.metadata().expect("fstat").mode() & 0o7777, 0o600);
}

#[test]
fn temporary_files_are_private_whatever_the_umask() {
    let mut child = Command::new(std::env::current_exe().expect("this test binary"));
    child.args([
        "--exact",
        "hardening::temporary_files_are_private_under_umask_000",
        "--include-ignored",
        "--nocapture",
    ]);
    let out = with_umask(child, 0).output().expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_hard_link_planted_beside_the_state_is_refused_and_its_file_left_alone() {
    for name in ["mama.xml.lock", "mama.xml.log", "mama.xml.locks/rig1.lock"] {
        let env = TestEnv::new();
        env.add("rig1", 1);
        // The log and the locks folder exist, as in a lab in use.
        env.run(["run", "rig1", "--", "true"]).ok();
        sets(&env, 0..FLUSH_AT + 1);
        share_with_group(&env.state, 0o660);
        let victim = Victim::new();
        let planted = beside(&env, name);
        let _ = fs::remove_file(&planted);
        // O_NOFOLLOW does not see a hard link: the same file, another name.
        fs::hard_link(&victim.path, &planted).expect("plant the hard link");

        env.run(["run", "rig1", "--", "true"]).fails_saying(
            125,
            &format!("{} has more than one hard link", planted.display()),
        );
        victim.assert_untouched();
    }
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn a_state_link_planted_by_another_user_is_not_followed() {
    second_user();
    let nobody = user_id("nobody").expect("the nobody user");
    let env = TestEnv::new();
    let elsewhere = tempfile::tempdir().expect("temporary folder");
    let target = elsewhere.path().join("victim.xml");
    fs::write(&target, lab_xml(&[machine_xml("rig1", 1, &[])])).expect("write");
    let before = fs::read(&target).expect("read");
    // A member of the lab's group replaces the state file with a link.
    symlink(&target, &env.state).expect("plant the link");
    std::os::unix::fs::lchown(&env.state, Some(nobody), None).expect("chown the link");
    for args in [&["list"][..], &["set", "rig1", "os", "x"]] {
        env.run(args)
            .fails_saying(1, "is a symbolic link that belongs to another user");
    }
    assert_eq!(fs::read(&target).expect("read"), before);
    let mut created: Vec<_> = fs::read_dir(elsewhere.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    created.sort();
    assert_eq!(created, ["victim.xml"], "nothing made beside the target");
    // The same link made by the folder's owner (root here) is followed.
    std::os::unix::fs::lchown(&env.state, Some(0), None).expect("chown the link");
    env.run(["set", "rig1", "os", "x"]).ok();
    assert!(
        fs::read_to_string(&target)
            .expect("read")
            .contains("<os>x</os>")
    );
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn another_users_lock_file_keeps_its_mode_and_group() {
    second_user();
    let nobody = user_id("nobody").expect("the nobody user");
    let env = TestEnv::new();
    env.add("rig1", 1);
    let lock = lock_path(&env.state);
    // Whatever its name says, a file of another user is never chmod'ed or
    // chgrp'ed by root's mama: that name could be a link to any file.
    std::os::unix::fs::chown(&lock, Some(nobody), Some(nobody)).expect("chown");
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o604)).expect("chmod");
    env.run(["set", "rig1", "os", "x"]).ok();
    let meta = fs::metadata(&lock).expect("lock");
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o604, nobody, nobody)
    );
}

#[test]
fn a_log_far_past_its_limit_is_refused_not_read() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let state = env.read_state();
    // A sparse 1 GiB file: reading it would take a gigabyte of memory.
    let log = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(beside(&env, "mama.xml.log"))
        .expect("the log");
    log.set_len(1 << 30).expect("make it sparse");
    for args in [&["set", "rig1", "os", "x"][..], &["log"], &["info", "rig1"]] {
        env.run(args).fails_saying(1, "it is not a log mama wrote");
    }
    assert_eq!(env.read_state(), state);
}

/// A lab's folder `lab` in a parent folder `shared` that everyone may
/// write, as a careless setup leaves it.
fn lab_in_a_shared_folder(env: &TestEnv) -> (PathBuf, PathBuf) {
    let shared = env.path().join("shared");
    fs::create_dir(&shared).expect("a shared folder");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).expect("chmod");
    let lab = shared.join("lab");
    fs::create_dir(&lab).expect("the lab's folder");
    (shared, lab)
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn a_folder_of_the_state_path_swapped_for_a_link_by_another_user_is_refused() {
    second_user();
    let group = nobody_group();
    let env = TestEnv::new();
    let (shared, lab) = lab_in_a_shared_folder(&env);
    let state = lab.join("mama.xml");
    let mama = |args: &[&str]| -> Run {
        let mut cmd = env.cmd(args);
        cmd.env("MAMA_STATE", &state);
        cmd.output().expect("mama runs").into()
    };
    mama(&["add", "rig1", "--mac", "02:00:00:00:00:01"]).ok();
    let victim = tempfile::tempdir().expect("a victim folder");
    fs::set_permissions(victim.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    // The member moves the lab's folder away and puts a link in its place.
    let member = |args: &[&str]| as_member(&group, args);
    let moved = shared.join("lab.old");
    member(&[
        "mv",
        &lab.display().to_string(),
        &moved.display().to_string(),
    ]);
    member(&[
        "ln",
        "-s",
        &victim.path().display().to_string(),
        &lab.display().to_string(),
    ]);
    for args in [
        &["add", "rig2", "--mac", "02:00:00:00:00:02"][..],
        &["list"],
        &["run", "rig1", "--", "true"],
    ] {
        let run = mama(args);
        let code = if args[0] == "run" { 125 } else { 1 };
        let said = run.fails_saying(code, "is a symbolic link that belongs to another user");
        assert!(said.contains(&lab.display().to_string()), "{said}");
    }
    let made: Vec<_> = fs::read_dir(victim.path()).expect("list").collect();
    assert!(
        made.is_empty(),
        "mama made files in the link's target: {made:?}"
    );
    // The same link made by the folder's owner (root) is followed.
    fs::remove_file(&lab).expect("remove the link");
    symlink(&moved, &lab).expect("the owner's link");
    assert!(mama(&["list"]).ok().contains("rig1"));
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn a_lab_folder_swapped_while_a_job_runs_redirects_nothing_of_that_run() {
    second_user();
    let group = nobody_group();
    let env = TestEnv::new();
    let (shared, lab) = lab_in_a_shared_folder(&env);
    let mama = |state: &Path, args: &[String]| -> Command {
        let mut cmd = env.cmd(args);
        cmd.env("MAMA_STATE", state);
        cmd
    };
    let info = |state: &Path| -> serde_json::Value {
        let args = ["info", "rig1", "--json"].map(String::from);
        Run::from(mama(state, &args).output().expect("mama runs")).json()
    };
    let state = lab.join("mama.xml");
    let add = ["add", "rig1", "--mac", "02:00:00:00:00:01"].map(String::from);
    Run::from(mama(&state, &add).output().expect("mama runs")).ok();
    // A run whose job holds rig1 until told to end.
    let script = format!("touch \"$1/job.started\"; {}", wait_for_file("job.go"));
    let mut run = Bg::start(mama(
        &state,
        &sh_job(&env, "rig1", &["--job", "held"], &script),
    ));
    wait_until("the job to start", LIMIT, || {
        env.path().join("job.started").exists()
    });
    assert_eq!(info(&state)["job"], "held", "the claim is in the lab");
    // A member moves the lab's folder away and puts another in its place,
    // holding a copy of the state file.
    let member = |args: &[&str]| as_member(&group, args);
    let moved = shared.join("lab.old");
    let shown = |path: &Path| path.display().to_string();
    member(&["mv", &shown(&lab), &shown(&moved)]);
    member(&["mkdir", &shown(&lab)]);
    member(&["cp", &shown(&moved.join("mama.xml")), &shown(&state)]);
    let copy = fs::read(&state).expect("the copy");
    env.touch("job.go");
    run.finish(LIMIT).ok();
    // The release went into the lab's real folder, where it was moved.
    let real = moved.join("mama.xml");
    assert!(info(&real)["job"].is_null(), "{:#}", info(&real));
    // Nothing of that run went into the folder put in its place.
    assert_eq!(
        fs::read(&state).expect("the copy"),
        copy,
        "the copy was written"
    );
    let names: Vec<_> = fs::read_dir(&lab)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["mama.xml"], "mama made files in the new folder");
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn a_lab_folder_that_cannot_be_read_is_an_error_not_an_empty_lab() {
    second_user();
    let env = TestEnv::new();
    env.add("rig1", 1);
    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o666)).expect("chmod");
    let group = nobody_group();
    let (bin, _bin_dir) = binary_for_nobody(&env, &group);
    let before = env.read_state();
    let files = env.files();
    let folder = env.path().display().to_string();
    // Neither listed nor searched by others, then searched but not listed.
    for mode in [0o700, 0o711] {
        fs::set_permissions(env.path(), fs::Permissions::from_mode(mode)).expect("chmod");
        for args in [
            &["list"][..],
            &["list", "--json"],
            &["info", "rig1"],
            &["get", "rig1", "mac"],
            &["log"],
            &["export"],
            &["wait", "rig1", "--timeout", "0"],
            &["set", "rig1", "os", "x"],
            &["add", "rig2", "--mac", "aa:bb:cc:dd:ee:02"],
        ] {
            let run: Run = as_nobody(&env, &bin, &group, args)
                .output()
                .expect("setpriv runs")
                .into();
            let stderr = run.fails(1);
            assert!(
                stderr.contains(&folder) && stderr.contains("Permission denied"),
                "{mode:o} {args:?}: {run:#?}"
            );
            assert!(!stderr.contains("no lab at"), "{mode:o} {args:?}: {run:#?}");
            assert_eq!(run.stdout, "", "{mode:o} {args:?}");
        }
    }
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_eq!(env.read_state(), before);
    assert_eq!(env.files(), files);
}
