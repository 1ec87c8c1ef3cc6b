//! Tells the integration tests what this machine lets them do, as `cfg`s,
//! so that `cargo test` where root or a program is missing shows each test
//! that needs it as ignored, saying what to run, instead of failing:
//!
//! - `mama_root`: the build runs as root (the tests run as the same user);
//! - `mama_second_user`: root, with setpriv(1): a test acts as `nobody`;
//! - `mama_postgres`: root, setpriv, the PostgreSQL server's programs
//!   (found as tests/common/probe.rs says) and the `postgres` user to run
//!   them: a database lab;
//! - one `cfg` for each program (or pair) tests/install-tools installs,
//!   set when PATH has it (see [`PROGRAMS`]).
//!
//! It only reads /proc/self/status, /etc/passwd and the folders it
//! searches, and runs again when PATH, MAMA_TEST_PG_BIN or USER change or
//! one of those files or folders does (a program installed): so
//! `tests/install-tools && cargo test` builds the tests it made runnable.
//! mama itself uses none of these `cfg`s.

use std::path::PathBuf;

#[path = "tests/common/probe.rs"]
mod probe;

/// Each `cfg`, and the programs that must all be on PATH for it.
const PROGRAMS: &[(&str, &[&str])] = &[
    ("mama_flock", &["flock"]),
    ("mama_script", &["script"]),
    ("mama_unshare", &["unshare"]),
    ("mama_mount", &["mount", "umount"]),
    ("mama_setpriv", &["setpriv"]),
    ("mama_faketime", &["faketime"]),
    ("mama_acl", &["setfacl", "getfacl"]),
    ("mama_xattr", &["setfattr", "getfattr"]),
    ("mama_strace", &["strace"]),
    ("mama_ip", &["ip"]),
    ("mama_python3", &["python3"]),
    ("mama_man", &["groff", "man"]),
    ("mama_zsh", &["zsh"]),
    ("mama_fish", &["fish"]),
];

/// Declares `cfg` and sets it if `on`.
fn cfg(name: &str, on: bool) {
    println!("cargo::rustc-check-cfg=cfg({name})");
    if on {
        println!("cargo::rustc-cfg={name}");
    }
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=tests/common/probe.rs");
    // USER: `sudo cargo test` after a user's build probes again, as root.
    for var in ["PATH", "MAMA_TEST_PG_BIN", "USER"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let mut watched = probe::path_dirs();
    watched.extend([probe::DEBIAN_POSTGRESQL, "/etc/passwd"].map(PathBuf::from));
    let mut seen = Vec::new();
    for path in watched {
        // A path that is not there would run this script on every build.
        if path.exists() && !seen.contains(&path) {
            println!("cargo::rerun-if-changed={}", path.display());
            seen.push(path);
        }
    }

    let root = probe::effective_uid() == Some(0);
    let has = |program: &str| probe::on_path(program).is_some();
    cfg("mama_root", root);
    for (name, programs) in PROGRAMS {
        cfg(name, programs.iter().all(|p| has(p)));
    }
    cfg("mama_second_user", root && has("setpriv"));
    cfg(
        "mama_postgres",
        root && has("setpriv")
            && probe::postgres_bin_dir().is_some()
            && probe::user_exists("postgres"),
    );
}
