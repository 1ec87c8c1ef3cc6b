//! Acting as a second user (root only, with setpriv(1)), and the paths and
//! modes of the files beside a state file.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{MAMA, TestEnv};

pub fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().expect("file name").to_os_string();
    name.push(".lock");
    state.with_file_name(name)
}

pub fn temp_path(state: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(state.file_name().expect("file name"));
    name.push(".tmp");
    state.with_file_name(name)
}

pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").mode() & 0o7777
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string; the result is read at once.
    let group = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: non-null results point to a valid struct group.
    (!group.is_null()).then(|| unsafe { (*group).gr_gid })
}

pub fn user_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: as in group_id.
    let user = unsafe { libc::getpwnam(name.as_ptr()) };
    // SAFETY: non-null results point to a valid struct passwd.
    (!user.is_null()).then(|| unsafe { (*user).pw_uid })
}

/// A group other than root's to share files with: `users`, else `nogroup`.
pub fn other_group() -> (String, u32) {
    ["users", "nogroup", "nobody"]
        .iter()
        .find_map(|name| group_id(name).map(|gid| (name.to_string(), gid)))
        .expect("a group named users, nogroup or nobody")
}

/// The group to give the state file: root takes [`other_group`], anyone
/// else their own (no name: only root acts as a second user).
pub fn group_to_share() -> (String, u32) {
    if is_root() {
        other_group()
    } else {
        // SAFETY: getegid cannot fail.
        (String::new(), unsafe { libc::getegid() })
    }
}

/// Gives `path` the group to share and `mode`; returns the group's id.
pub fn share_with_group(path: &std::path::Path, mode: u32) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let (_, gid) = group_to_share();
    std::os::unix::fs::chown(path, None, Some(gid)).expect("chgrp");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    gid
}

/// The group the `nobody` user may take: `nogroup`, else `nobody`.
pub fn nobody_group() -> String {
    ["nogroup", "nobody"]
        .iter()
        .find(|name| group_id(name).is_some())
        .expect("a group nogroup or nobody")
        .to_string()
}

pub fn has_setpriv() -> bool {
    Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A user id that no account has: a third user, beside root and `nobody`,
/// that owns no file until it makes one.
pub const STRANGER: &str = "64123";

/// `setpriv` set to run what follows as the user `nobody` in `group`, with
/// no other groups.
fn setpriv_nobody(group: &str) -> Command {
    setpriv_as("nobody", group)
}

/// `setpriv` set to run what follows as `user` (a name or a number) in
/// `group`, with no other groups.
fn setpriv_as(user: &str, group: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", user, "--regid", group, "--clear-groups", "--"]);
    cmd
}

/// `mama ARGS` run by `bin` as the user `nobody` in `group`, with no other
/// groups, and this world's environment.
pub fn as_nobody(env: &TestEnv, bin: &Path, group: &str, args: &[&str]) -> Command {
    as_user(env, bin, "nobody", group, args)
}

/// `mama ARGS` run by `bin` as `user` (a name or a number) in `group`, with
/// no other groups, and this world's environment.
pub fn as_user(env: &TestEnv, bin: &Path, user: &str, group: &str, args: &[&str]) -> Command {
    let plain = env.cmd(args);
    let mut cmd = setpriv_as(user, group);
    cmd.arg(bin)
        .args(args)
        .current_dir(env.path())
        .stdin(Stdio::null());
    for (key, value) in plain.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd
}

/// A binary that `nobody` may run: the built one, or a copy when the build
/// folder is private (the copy's folder lives as long as the guard).
pub fn binary_for_nobody(env: &TestEnv, group: &str) -> (PathBuf, Option<tempfile::TempDir>) {
    let runs = |bin: &Path| {
        as_nobody(env, bin, group, &["--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if runs(Path::new(MAMA)) {
        return (PathBuf::from(MAMA), None);
    }
    let dir = tempfile::tempdir().expect("temporary folder");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = dir.path().join("mama");
    fs::copy(MAMA, &bin).expect("copy the binary");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    assert!(runs(&bin), "nobody cannot run {}", bin.display());
    (bin, Some(dir))
}

/// The checks that need a second user run as root with setpriv(1): such a
/// test is ignored without them (`mama_second_user`, see build.rs) and,
/// run all the same, fails saying so rather than passing unchecked.
#[track_caller]
pub fn second_user() {
    assert!(
        is_root() && has_setpriv(),
        "this test acts as a second user: run the tests as root, with setpriv(1) installed"
    );
}

/// Runs `args` (a program and its arguments, not mama) as the user `nobody`
/// in `group`, with no other groups: a member of the lab's group at work.
#[track_caller]
pub fn as_member(group: &str, args: &[&str]) {
    let status = setpriv_nobody(group)
        .args(args)
        .status()
        .expect("setpriv runs");
    assert!(status.success(), "{args:?}");
}
