//! The Debian package `pkg/build-deb` makes, installed for real: the
//! binary, man page and completions where Debian looks for them, the
//! group `mama` and the lab folder /var/lib/mama that a member uses at
//! once through mama's default state path; `dpkg --remove` keeps the lab,
//! `dpkg --purge` keeps a lab that holds data and removes an empty folder.
//!
//! It changes the system (a package, a group, /var/lib/mama), so it runs
//! only as root, refuses to run where any of those is there already, and
//! puts back what it made however it ends.

use crate::common::users::*;
use crate::common::*;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

const LAB: &str = "/var/lib/mama";
const INSTALLED: [&str; 5] = [
    "/usr/bin/mama",
    "/usr/share/man/man1/mama.1.gz",
    "/usr/share/bash-completion/completions/mama",
    "/usr/share/zsh/vendor-completions/_mama",
    "/usr/share/fish/vendor_completions.d/mama.fish",
];

/// Whether dpkg has the package `mama` in any state but not installed
/// (installed, half-installed, its configuration left, ...).
fn package_is_there() -> bool {
    let status = package_status();
    !status.is_empty() && status.chars().nth(1) != Some('n')
}

/// What dpkg knows of the package `mama`: its status, abbreviated (`ii`:
/// installed), or "" where it knows none.
fn package_status() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", "mama"])
        .stderr(Stdio::null())
        .output()
        .expect("dpkg-query runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[track_caller]
fn dpkg(args: &[&str]) -> Run {
    let run = Run::from(
        Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .expect("dpkg runs"),
    );
    run.ok();
    run
}

/// Puts back what the test made, however it ends: the package purged, the
/// lab folder it left removed, the group removed where the test made it.
struct Cleanup {
    group_existed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if package_is_there() {
            let _ = Command::new("dpkg")
                .args(["--purge", "mama"])
                .stdout(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(LAB);
        if !self.group_existed && group_id("mama").is_some() {
            let _ = Command::new("groupdel").arg("mama").status();
        }
    }
}

/// The packaged mama as `user` in `group`, with no MAMA_* variable: the
/// default lab.
fn packaged(user: &str, group: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        user,
        "--regid",
        group,
        "--clear-groups",
        "--",
        "/usr/bin/mama",
    ])
    .args(args)
    .current_dir("/")
    .env("NO_COLOR", "1")
    .stdin(Stdio::null());
    remove_mama_env(&mut cmd);
    Run::from(cmd.output().expect("setpriv runs"))
}

fn group_and_mode(path: &str) -> (u32, u32) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.gid(), meta.mode() & 0o7777)
}

#[test]
#[cfg_attr(
    not(all(mama_second_user, mama_dpkg)),
    ignore = "installs a Debian package and acts as a second user: run as root on Debian after \
              tests/install-tools (dpkg, binutils, setpriv)"
)]
fn the_debian_package_gives_its_group_a_lab_at_once_and_purges_cleanly() {
    second_user();
    assert!(
        !package_is_there(),
        "a mama package is on this machine already (dpkg: {}); this test installs and purges \
         its own: `dpkg --purge mama` first, or run the tests on another machine",
        package_status()
    );
    for path in [LAB].iter().chain(&INSTALLED) {
        assert!(
            fs::symlink_metadata(path).is_err(),
            "{path} is there already; this test installs mama's package and would remove it: \
             move it away first, or run the tests on another machine"
        );
    }
    let cleanup = Cleanup {
        group_existed: group_id("mama").is_some(),
    };

    // Built from the binary under test, quickly compressed.
    let out = tempfile::tempdir().expect("temporary folder");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = Command::new(repo.join("pkg/build-deb"))
        .args(["--binary", MAMA, "--compression", "gzip", "--out"])
        .arg(out.path())
        .current_dir(repo)
        .output()
        .expect("pkg/build-deb runs");
    let built = Run::from(built);
    let deb = built.ok().trim().to_string();
    assert!(
        deb.ends_with(".deb") && Path::new(&deb).is_file(),
        "{built:#?}"
    );

    dpkg(&["-i", &deb]);
    assert!(package_status().starts_with("ii"), "{}", package_status());
    for path in INSTALLED {
        assert!(Path::new(path).is_file(), "{path} is not installed");
    }
    let bash = fs::read_to_string(INSTALLED[2]).expect("bash completion");
    assert!(bash.contains("init"), "the bash completion knows no init");
    let man = Command::new("gzip")
        .args(["-dc", INSTALLED[1]])
        .output()
        .expect("gzip runs");
    assert!(String::from_utf8_lossy(&man.stdout).contains("mama init"));
    let gid = group_id("mama").expect("the package made the group mama");
    let folder = fs::metadata(LAB).expect("the package made the lab folder");
    assert_eq!((folder.uid(), folder.gid()), (0, gid));
    assert_eq!(folder.mode() & 0o7777, 0o2775);

    // A member of mama uses the default lab at once; another user is told
    // what is missing.
    packaged(
        "nobody",
        "mama",
        &["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"],
    )
    .ok();
    packaged("nobody", "mama", &["run", "rig1", "--", "true"]).ok();
    assert!(packaged("nobody", "mama", &["list"]).ok().contains("rig1"));
    assert_eq!(group_and_mode("/var/lib/mama/mama.xml"), (gid, 0o664));
    assert_eq!(group_and_mode("/var/lib/mama/mama.xml.lock"), (gid, 0o660));
    packaged(STRANGER, &nobody_group(), &["reserve", "rig1"])
        .fails_saying(1, "you are not in the group mama");

    // Removed, the lab stays; purged, a lab with data stays too, said.
    dpkg(&["--remove", "mama"]);
    for path in INSTALLED {
        assert!(!Path::new(path).exists(), "{path} is left after remove");
    }
    assert!(Path::new("/var/lib/mama/mama.xml").is_file());
    let purged = dpkg(&["--purge", "mama"]);
    assert!(
        purged.stderr.contains("/var/lib/mama holds a lab"),
        "{purged:#?}"
    );
    assert!(Path::new("/var/lib/mama/mama.xml").is_file());
    assert!(!package_is_there(), "{}", package_status());

    // An empty lab folder goes with the purge.
    fs::remove_dir_all(LAB).expect("remove the test's lab");
    dpkg(&["-i", &deb]);
    assert!(Path::new(LAB).is_dir());
    dpkg(&["--purge", "mama"]);
    assert!(!Path::new(LAB).exists(), "{LAB} is left after purge");
    for path in INSTALLED {
        assert!(!Path::new(path).exists(), "{path} is left after purge");
    }
    drop(cleanup);
    assert!(!package_is_there(), "{}", package_status());
}

#[test]
#[cfg_attr(
    not(mama_dpkg),
    ignore = "builds a Debian package: run on Debian after tests/install-tools (dpkg, binutils)"
)]
fn build_deb_takes_its_paths_from_where_it_is_run_spaces_and_all() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let here = dir.path().join("a folder");
    fs::create_dir(&here).expect("mkdir");
    fs::copy(MAMA, here.join("my mama")).expect("copy the binary");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = Command::new(repo.join("pkg/build-deb"))
        .args(["--binary", "my mama", "--compression", "none"])
        .args(["--out", "the debs"])
        .current_dir(&here)
        .stdin(Stdio::null())
        .output()
        .expect("pkg/build-deb runs");
    let built = Run::from(built);
    let deb = built.ok().trim().to_string();
    assert!(
        Path::new(&deb).is_file() && Path::new(&deb).starts_with(here.join("the debs")),
        "{built:#?}"
    );
    assert!(!repo.join("the debs").exists());
    // It depends on a libc6 at least as new as the symbols it uses.
    let depends = Command::new("dpkg-deb")
        .args(["--field", &deb, "Depends"])
        .output()
        .expect("dpkg-deb runs");
    let depends = String::from_utf8_lossy(&depends.stdout);
    assert!(depends.starts_with("libc6 (>= 2."), "{depends}");
}
