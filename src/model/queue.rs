//! The waiters for a machine: who waits, in which order, since when.
//!
//! A waiting `run` or `wait` has a place in the queue of each machine it
//! waits for, in the lab itself (the field `job_queue`, one JSON object a
//! line), so every host sees it. Places are numbered by arrival across the
//! whole lab (`ticket`), so waiters for machines that share a resource can
//! be ordered too. A waiter holds its place lock (see
//! [`crate::backend::JobLocks::hold_place`]) for as long as it waits; a
//! place whose lock is free belongs to a waiter that left or died, and the
//! next waiter to look removes it. The rules of who goes first are the
//! engine's ([`crate::engine::claim`]).

use serde::{Deserialize, Serialize};

/// One waiter's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// The arrival order across the lab: lower came first.
    pub ticket: u64,
    /// The name of the waiter's place lock.
    pub token: String,
    pub pid: u32,
    /// Unix seconds.
    pub since: i64,
    pub user: String,
    pub host: String,
    /// The job's label, for `run`; none for `wait`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// In a database lab, when the server had started when the place was
    /// taken: a place taken before the server last started lost its lock
    /// with the restart, and is kept while its waiter takes it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Whether the waiter waits for any of several machines (`--any`,
    /// `--where`): it may leave this queue while it still waits, so those
    /// behind it cannot sleep on its place lock alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pool: bool,
}

/// The places a field's text holds; lines that are not places are skipped
/// (a damaged queue can only make a waiter look again, never block one).
pub fn parse(text: &str) -> Vec<Waiter> {
    text.lines()
        .filter_map(|line| serde_json::from_str(line.trim()).ok())
        .collect()
}

/// The field's text for `waiters`, one a line.
pub fn encode(waiters: &[Waiter]) -> String {
    waiters
        .iter()
        .filter_map(|w| serde_json::to_string(w).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_read_back_and_damage_is_skipped() {
        let waiters = vec![
            Waiter {
                ticket: 3,
                token: "a1".into(),
                pid: 10,
                since: 1_763_000_000,
                user: "kim".into(),
                host: "ci-1".into(),
                job: Some("smoke <x> \"y\"".into()),
                epoch: None,
                pool: false,
            },
            Waiter {
                ticket: 4,
                token: "b2".into(),
                pid: 11,
                since: 1_763_000_001,
                user: "lee".into(),
                host: "ci-2".into(),
                job: None,
                epoch: Some("2026-11-24 00:00:00.1+00".into()),
                pool: true,
            },
        ];
        let text = encode(&waiters);
        assert_eq!(parse(&text), waiters);
        assert_eq!(
            parse(&format!("garbage\n{text}\n{{\"ticket\":1}}")),
            waiters
        );
        assert!(parse("").is_empty());
    }
}
