//! mama's integration tests, in one test binary: each area is a module of
//! its own (a file beside this one), and all share the test world in
//! `common/` — compiled once — and, for database labs, one PostgreSQL
//! server on which each test gets a database of its own.
//!
//! `cargo test --test tests AREA::` runs one area, `cargo test --test tests
//! AREA::NAME` one test.

#[macro_use]
mod common;

mod claim;
mod compat_crash;
mod device;
mod devices;
mod docs;
mod format;
mod hardening;
mod history;
mod init;
mod input;
mod lab;
mod leases;
mod liveness;
mod net;
mod notify;
mod package;
mod pg_harness;
mod pg_hosts;
mod pg_lab;
mod pg_secure;
mod php;
mod power;
mod queue;
mod queue_edges;
mod run;
mod serve;
mod service;
mod stats;
mod store;
mod truth;

/// With `autotests = false` in Cargo.toml, a file in tests/ that no `mod`
/// above names is never built, its tests never run: each must be named.
#[test]
fn every_file_in_tests_is_a_module_of_this_binary() {
    let declared: Vec<&str> = include_str!("tests.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut missing: Vec<String> = std::fs::read_dir(&dir)
        .expect("read tests/")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|name| Some(name.strip_suffix(".rs")?.to_string()))
        .filter(|name| name != "tests" && !declared.contains(&name.as_str()))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "tests/{{{}}}.rs: add `mod NAME;` to tests/tests.rs (and `use crate::common::*;` \
         in place of `mod common;`)",
        missing.join(",")
    );
}
