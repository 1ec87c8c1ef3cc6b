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
mod docs;
mod format;
mod hardening;
mod history;
mod input;
mod lab;
mod liveness;
mod pg_harness;
mod pg_hosts;
mod pg_lab;
mod php;
mod queue;
mod queue_edges;
mod run;
mod store;
mod truth;
