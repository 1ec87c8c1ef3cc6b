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
//!
//! It also links the unwinder into mama statically (see [`static_unwinder`]).

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
    ("mama_dpkg", &["dpkg", "dpkg-deb", "strip", "objdump"]),
    ("mama_chromium", &["chromium", "chromedriver"]),
    ("mama_prometheus", &["prometheus", "promtool"]),
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
    static_unwinder();
}

/// Links GCC's unwinder into the programs (`libgcc_eh.a`, as
/// `-static-libgcc` does for a C program) where Rust's standard library
/// asks for the shared `libgcc_s.so.1`: a folder searched first holds a
/// `libgcc_s.so` that is a linker script naming the static archive. Every
/// `mama run` starts a process, and loading, relocating and initialising
/// one more shared library (its constructor asks the CPU what it offers,
/// which a virtual machine's hypervisor answers slowly) was some 0.1 ms of
/// each start. Only for GNU/Linux, built where it runs, and only where the
/// C compiler knows the archive; elsewhere the link is left as it was.
fn static_unwinder() {
    let gnu_linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    let crt_static = std::env::var("CARGO_CFG_TARGET_FEATURE")
        .is_ok_and(|features| features.split(',').any(|f| f == "crt-static"));
    // The compiler asked is the host's: a cross build keeps its link.
    let native = std::env::var("TARGET").ok() == std::env::var("HOST").ok();
    if !gnu_linux || crt_static || !native {
        return;
    }
    println!("cargo::rerun-if-env-changed=CC");
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let Ok(out) = std::process::Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    let archive = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // Not found, the compiler prints the bare name back.
    if !out.status.success() || !archive.is_absolute() || !archive.is_file() {
        return;
    }
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        return;
    };
    let dir = PathBuf::from(out_dir).join("static-unwinder");
    let script = format!("INPUT ( \"{}\" )\n", archive.display());
    if std::fs::create_dir_all(&dir).is_ok()
        && std::fs::write(dir.join("libgcc_s.so"), script).is_ok()
    {
        println!("cargo::rustc-link-search=native={}", dir.display());
    }
}
