//! The journal: a run's claim and release are appended to `S.journal`
//! instead of rewriting the state file; any other change, or a long
//! journal, folds it into the state file. Readers see the lab with its
//! journal applied, whoever they are; a damaged or already folded journal
//! never misleads them.

mod common;
use common::users::*;
use common::*;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

fn journal_path(env: &TestEnv) -> PathBuf {
    env.path().join("mama.xml.journal")
}

fn journal(env: &TestEnv) -> String {
    fs::read_to_string(journal_path(env)).unwrap_or_default()
}

fn lab(env: &TestEnv, machines: usize) {
    let xml: Vec<String> = (0..machines)
        .map(|n| machine_xml(&format!("m{n}"), n as u8 + 1, &[]))
        .collect();
    env.write_state(&lab_xml(&xml));
}

fn inode(env: &TestEnv) -> u64 {
    fs::metadata(&env.state).expect("the state file").ino()
}

fn event_numbers(env: &TestEnv) -> Vec<u64> {
    env.events()
        .iter()
        .map(|e| e["seq"].as_u64().expect("a number"))
        .collect()
}

#[test]
fn a_run_claims_and_releases_through_the_journal_leaving_the_state_file_alone() {
    let env = TestEnv::new();
    lab(&env, 3);
    let before = env.read_state();
    let ino = inode(&env);
    let mut holder = hold_until_go(&env, "m1", "held");
    // The claim is in the journal, and every reader sees it.
    assert!(
        journal(&env).starts_with("mama journal 1 "),
        "{}",
        journal(&env)
    );
    assert_eq!(env.info("m1")["job"], "held");
    assert!(env.run(["list"]).ok().contains("held"));
    assert_eq!(env.read_state(), before, "the claim rewrote the state file");
    env.touch("held.go");
    holder.finish(LIMIT).ok();
    assert_eq!(
        env.read_state(),
        before,
        "the release rewrote the state file"
    );
    assert_eq!(inode(&env), ino);
    assert!(env.info("m1")["job"].is_null(), "{}", env.info("m1"));
    let kinds: Vec<String> = env
        .events()
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(kinds, ["claimed", "released"]);
    // The journal file is made like the state file: who may read the lab
    // may read it.
    assert_eq!(
        mode(&journal_path(&env)),
        mode(&env.state),
        "{:?}",
        env.files()
    );
}

#[test]
fn any_other_change_folds_the_journal_into_the_state_file() {
    let env = TestEnv::new();
    lab(&env, 3);
    let mut holder = hold_until_go(&env, "m1", "held");
    assert!(!env.read_state().contains("<job>held</job>"));
    env.run(["set", "m2", "os", "other"]).ok();
    let state = env.read_state();
    assert!(state.contains("<job>held</job>"), "{state}");
    assert!(state.contains("<journal_folded>"), "{state}");
    assert_eq!(journal(&env), "", "the journal was not emptied");
    // The release goes into a new journal; the lab reads as it should.
    env.touch("held.go");
    holder.finish(LIMIT).ok();
    assert!(env.info("m1")["job"].is_null());
    assert!(journal(&env).starts_with("mama journal 1 "));
    assert_eq!(event_numbers(&env), [1, 2, 3]);
    // `export` holds the lab as upstream would, without mama's marks.
    let exported = env.run(["export"]).ok().to_string();
    assert!(!exported.contains("journal_folded") && !exported.contains("<job>held"));
}

#[test]
fn a_long_journal_is_folded_and_no_event_is_lost_or_repeated() {
    let env = TestEnv::new();
    lab(&env, 2);
    let ino = inode(&env);
    let mut runs = 0;
    // A record is some hundreds of bytes; a fold comes past 16 KiB.
    while inode(&env) == ino {
        runs += 1;
        assert!(runs <= 60, "60 runs and the journal was never folded");
        env.run(["run", "m0", "--", "true"]).ok();
    }
    for _ in 0..5 {
        env.run(["run", "m0", "--", "true"]).ok();
        runs += 1;
    }
    assert!(journal(&env).len() < 16 << 10, "{}", journal(&env).len());
    let numbers = event_numbers(&env);
    assert_eq!(numbers, (1..=2 * runs as u64).collect::<Vec<_>>());
    assert!(env.info("m0")["job"].is_null());
}

#[test]
fn a_damaged_end_of_the_journal_is_ignored_and_cut_by_the_next_writer() {
    let env = TestEnv::new();
    lab(&env, 3);
    let mut holder = hold_until_go(&env, "m1", "held");
    let whole = journal(&env);
    // A record cut short, as a crash could leave it, then garbage.
    let mut damaged = whole.clone();
    damaged.push_str("0123456789abcdef {\"changes\":[[\"set\",\"m1\",\"job\",\"cut");
    fs::write(journal_path(&env), &damaged).expect("damage the journal");
    assert_eq!(env.info("m1")["job"], "held");
    // A flipped byte inside a whole record: that record and what follows
    // are not read.
    let mut flipped = whole.clone().into_bytes();
    let at = flipped.len() - 10;
    flipped[at] ^= 1;
    fs::write(journal_path(&env), &flipped).expect("damage the journal");
    assert!(env.info("m1")["job"].is_null(), "a damaged record was read");
    fs::write(journal_path(&env), &damaged).expect("damage the journal");
    // The next writer appends after the whole records.
    env.run(["run", "m2", "--", "true"]).ok();
    let now = journal(&env);
    assert!(now.starts_with(&whole), "{now}");
    assert!(!now.contains(&damaged[whole.len()..]), "{now}");
    assert_eq!(now.lines().count(), whole.lines().count() + 2);
    assert_eq!(env.info("m1")["job"], "held");
    env.touch("held.go");
    holder.finish(LIMIT).ok();
    assert!(env.info("m1")["job"].is_null());
}

#[test]
fn a_journal_left_behind_after_its_fold_is_never_applied_again() {
    let env = TestEnv::new();
    lab(&env, 3);
    env.run(["run", "m0", "--", "true"]).ok();
    let left = journal(&env);
    assert_eq!(left.lines().count(), 3, "{left}");
    // A fold, then the journal as a writer killed before emptying it
    // leaves it.
    env.run(["set", "m2", "os", "other"]).ok();
    fs::write(journal_path(&env), &left).expect("put the journal back");
    assert_eq!(event_numbers(&env), [1, 2, 3]);
    // The next run starts a journal of its own.
    env.run(["run", "m0", "--", "true"]).ok();
    assert_eq!(event_numbers(&env), [1, 2, 3, 4, 5]);
    assert!(!journal(&env).contains(left.lines().next().expect("a header")));
    // A state file changed by hand (not folded) keeps its journal.
    let mut holder = hold_until_go(&env, "m1", "held");
    let state = env
        .read_state()
        .replace("<os>other</os>", "<os>by-hand</os>");
    fs::write(&env.state, state).expect("edit by hand");
    assert_eq!(env.info("m1")["job"], "held");
    assert_eq!(env.info("m2")["os"], "by-hand");
    env.touch("held.go");
    holder.finish(LIMIT).ok();
    assert!(env.info("m1")["job"].is_null());
}

#[test]
fn a_reader_who_may_not_write_the_lab_sees_the_claims_in_its_journal() {
    if !second_user() {
        return;
    }
    let env = TestEnv::new();
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    lab(&env, 2);
    fs::set_permissions(&env.state, fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut holder = hold_until_go(&env, "m1", "held");
    let group = nobody_group();
    let (bin, _guard) = binary_for_nobody(&env, &group);
    let run: Run = as_nobody(&env, &bin, &group, &["info", "m1", "--json"])
        .output()
        .expect("setpriv runs")
        .into();
    assert_eq!(run.json()["job"], "held", "{}", run.ok());
    env.touch("held.go");
    holder.finish(LIMIT).ok();
}
