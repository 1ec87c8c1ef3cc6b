//! The state file is the lab's truth between any two transactions: while a
//! run holds a machine, `mama.xml` itself holds the job, its PID and its
//! timestamp; once the run ends, they are gone from it. In both write
//! modes (rename, and in place where PHP mama shares the file), however
//! long the history has grown. A journal an earlier mama left beside the
//! state file is read, folded in by the next write, and removed.

use crate::common::users::*;
use crate::common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

fn journal_path(env: &TestEnv) -> PathBuf {
    env.path().join("mama.xml.journal")
}

fn lab(env: &TestEnv, machines: usize, compat: bool) {
    let xml: Vec<String> = (0..machines)
        .map(|n| machine_xml(&format!("m{n}"), n as u8 + 1, &[]))
        .collect();
    let mut text = lab_xml(&xml);
    if compat {
        text = text.replacen("<settings>\n", "<settings>\n  <php_compat/>\n", 1);
    }
    env.write_state(&text);
}

/// The text of `machine`'s element in the state file as it is on disk.
fn machine_on_disk(env: &TestEnv, machine: &str) -> String {
    let state = env.read_state();
    let at = state
        .find(&format!("<name>{machine}</name>"))
        .unwrap_or_else(|| panic!("no {machine} in {state}"));
    let start = state[..at].rfind("<machine").expect("its element");
    let end = at + state[at..].find("</machine>").expect("its end");
    state[start..end].to_string()
}

fn event_numbers(env: &TestEnv) -> Vec<u64> {
    env.events()
        .iter()
        .map(|e| e["seq"].as_u64().expect("a number"))
        .collect()
}

/// Holds m1 with a job, checks that the state file on disk shows the job,
/// its PID (the holder's mama) and a timestamp of the claim, then lets the
/// job end and checks that the file shows m1 free again.
fn claim_shows_in_the_file_and_release_clears_it(env: &TestEnv) {
    let before = unix_now();
    let mut holder = hold_until_go(env, "m1", "held");
    let m1 = machine_on_disk(env, "m1");
    assert!(m1.contains("<job>held</job>"), "{m1}");
    assert!(
        m1.contains(&format!("<job_pid>{}</job_pid>", holder.pid())),
        "{m1}"
    );
    let stamp: i64 = m1
        .split_once("<job_timestamp>")
        .and_then(|(_, rest)| rest.split_once("</job_timestamp>"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp in {m1}"));
    assert!((before..=unix_now()).contains(&stamp), "{stamp} in {m1}");
    assert!(!journal_path(env).exists(), "{:?}", env.files());
    env.touch("held.go");
    holder.finish(LIMIT).ok();
    let m1 = machine_on_disk(env, "m1");
    assert!(!m1.contains("held") && !m1.contains("<job_pid>1") && !m1.contains("<job_pid>2"));
    for tag in ["job_pid", "job_timestamp", "job_host", "job_origin"] {
        let open = format!("<{tag}>");
        assert!(!m1.contains(&open), "{tag} left in {m1}");
    }
    assert!(!journal_path(env).exists(), "{:?}", env.files());
}

#[test]
fn a_run_writes_its_claim_into_the_state_file_and_takes_it_out_on_release() {
    let env = TestEnv::new();
    lab(&env, 3, false);
    claim_shows_in_the_file_and_release_clears_it(&env);
    assert_eq!(event_numbers(&env), [1, 2]);
}

#[test]
fn in_compat_mode_the_claim_is_written_in_place_into_the_state_file() {
    let env = TestEnv::new();
    lab(&env, 3, true);
    claim_shows_in_the_file_and_release_clears_it(&env);
    assert!(env.read_state().contains("<php_compat/>"));
}

#[test]
fn after_a_long_history_the_file_still_shows_every_claim() {
    for compat in [false, true] {
        let env = TestEnv::new();
        lab(&env, 2, compat);
        // More than the 32 pending events a state file keeps before they
        // go to the log, and past what an earlier mama's journal held.
        for _ in 0..40 {
            env.run(["run", "m0", "--", "true"]).ok();
        }
        assert!(env.path().join("mama.xml.log").exists());
        claim_shows_in_the_file_and_release_clears_it(&env);
        assert_eq!(event_numbers(&env), (1..=82).collect::<Vec<_>>());
    }
}

#[test]
fn a_job_cleared_by_hand_in_the_file_stays_cleared() {
    let env = TestEnv::new();
    lab(&env, 2, false);
    let mut holder = hold_until_go(&env, "m1", "held");
    // As a person clears it with an editor: the job's elements emptied.
    let mut edited = env.read_state();
    for tag in ["job", "job_pid", "job_timestamp"] {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let start = edited.find(&open).expect("the job's element");
        let end = start + edited[start..].find(&close).expect("its end") + close.len();
        edited.replace_range(start..end, &format!("<{tag}/>"));
    }
    env.write_state(&edited);
    // No record is left to bring back; the job's lock still holds the
    // machine until the job ends.
    let info = env.info("m1");
    assert!(info["job"].is_null(), "{info}");
    assert_eq!(info["state"], "busy", "{info}");
    env.touch("held.go");
    holder.finish(LIMIT).ok();
    assert!(!machine_on_disk(&env, "m1").contains("held"));
}

/// The 64-bit FNV-1a hash an earlier mama's journal records carry.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A journal as an earlier mama wrote it: header, then `HASH JSON` lines.
fn legacy_journal(token: &str, records: &[String]) -> String {
    let mut text = format!("mama journal 1 {token}\n");
    for json in records {
        text.push_str(&format!("{:016x} {json}\n", fnv1a_64(json.as_bytes())));
    }
    text
}

const TOKEN: &str = "00112233aabbccdd";

fn legacy_claim() -> String {
    let event = format!(
        r#"[{{"seq":1,"time":{},"machine":"m1","event":"claimed","job":"old","pid":null,"user":"alice","host":"h","detail":null}}]"#,
        unix_now()
    );
    format!(
        r#"{{"changes":[["set","m1","job","old"],["set","m1","job_timestamp","{}"]],"last":1,"events":{event}}}"#,
        unix_now()
    )
}

#[test]
fn an_earlier_mamas_journal_is_read_then_folded_into_the_file_and_removed() {
    let env = TestEnv::new();
    lab(&env, 3, false);
    fs::write(journal_path(&env), legacy_journal(TOKEN, &[legacy_claim()])).expect("a journal");
    // Readers see its claim and its event before any write.
    assert_eq!(env.info("m1")["job"], "old");
    assert_eq!(event_numbers(&env), [1]);
    assert!(!env.read_state().contains("<job>old</job>"));
    // The next write of any kind takes it into the file and removes it.
    env.run(["set", "m2", "os", "other"]).ok();
    assert!(!journal_path(&env).exists(), "{:?}", env.files());
    assert!(machine_on_disk(&env, "m1").contains("<job>old</job>"));
    assert_eq!(env.info("m1")["job"], "old");
    assert_eq!(event_numbers(&env), [1, 2]);
    // The fold's mark goes with the next write, once no journal is left.
    env.run(["set", "m2", "os", "again"]).ok();
    assert!(!env.read_state().contains("journal_folded"));
    assert_eq!(event_numbers(&env), [1, 2, 3]);
}

#[test]
fn a_journal_left_behind_after_its_fold_is_never_applied_again() {
    let env = TestEnv::new();
    lab(&env, 3, false);
    let journal = legacy_journal(TOKEN, &[legacy_claim()]);
    fs::write(journal_path(&env), &journal).expect("a journal");
    env.run(["clear", "m1"]).ok();
    assert!(env.info("m1")["job"].is_null());
    // A writer killed after its rename, before it removed the journal.
    fs::write(journal_path(&env), &journal).expect("put it back");
    assert!(
        env.info("m1")["job"].is_null(),
        "a folded journal applied again"
    );
    assert_eq!(event_numbers(&env), [1, 2]);
    // The next writer removes it, without applying it.
    env.run(["run", "m0", "--", "true"]).ok();
    assert!(!journal_path(&env).exists());
    assert!(env.info("m1")["job"].is_null());
    assert_eq!(event_numbers(&env), [1, 2, 3, 4]);
}

#[test]
#[cfg_attr(
    not(mama_second_user),
    ignore = "acts as a second user: run as root after tests/install-tools (setpriv)"
)]
fn a_reader_who_may_not_write_the_lab_sees_the_claims_in_the_file() {
    second_user();
    let env = TestEnv::new();
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    lab(&env, 2, false);
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

/// A small tmpfs mounted at `dir` for as long as it lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        fs::create_dir_all(&dir).expect("a mount point");
        let run: Run = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("mount runs (the tests run as root)")
            .into();
        run.ok();
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with a file `filler`, to its last byte.
fn fill(dir: &std::path::Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).expect("a filler");
    let block = vec![b'x'; 4096];
    while file.write_all(&block).is_ok() {}
    while file.write_all(b"x").is_ok() {}
    path
}

#[test]
#[cfg_attr(
    not(all(mama_root, mama_mount)),
    ignore = "mounts a file system: run as root after tests/install-tools (mount)"
)]
fn a_stale_clear_is_told_only_once_the_state_file_holds_it() {
    let env = TestEnv::new();
    let disk = Tmpfs::mount(env.path().join("disk"), "256k");
    let state = disk.0.join("mama.xml");
    let mama = |args: &[&str]| -> Run {
        let mut cmd = env.cmd(args);
        cmd.env("MAMA_STATE", &state);
        cmd.output().expect("mama runs").into()
    };
    mama(&["add", "m0", "--mac", "02:00:00:00:00:01"]).ok();
    let text = with_job(
        &fs::read_to_string(&state).expect("the state"),
        "m0",
        "filler",
        Some(dead_pid()),
        unix_now(),
    );
    fs::write(&state, text).expect("a stale job");
    let filler = fill(&disk.0);
    let run = mama(&["wait", "m0", "--timeout", "5"]);
    let said = run.fails(1).to_string();
    assert!(!said.contains("cleared stale job"), "{said}");
    assert!(said.contains("No space left on device"), "{said}");
    assert!(
        fs::read_to_string(&state)
            .expect("the state")
            .contains("<job>filler</job>")
    );
    // With room again, the clear is made and told, the PID said once.
    fs::remove_file(filler).expect("make room");
    let run = mama(&["wait", "m0", "--timeout", "5"]);
    let said = run
        .ok_saying("cleared stale job 'filler' on m0")
        .to_string();
    assert_eq!(said.matches("PID").count(), 1, "{said}");
}

#[test]
fn a_refused_change_writes_nothing_beside_the_state_file_either() {
    let env = TestEnv::new();
    lab(&env, 2, false);
    env.run(["set", "m0", "os", "x"]).ok();
    // A damaged journal of an earlier mama, and a stale roll-forward copy.
    let mut journal = legacy_journal(TOKEN, &[legacy_claim()]);
    journal.push_str("0123456789abcdef {\"changes\":[[\"set\",\"m1\",\"job\",\"cut");
    fs::write(journal_path(&env), &journal).expect("a journal");
    let lock = env.path().join("mama.xml.lock");
    fs::write(&lock, b"mama roll-forward 1 3 0000000000000000\nold").expect("a copy");
    let files = |env: &TestEnv| -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<(String, Vec<u8>)> = env
            .files()
            .into_iter()
            .filter_map(|name| Some((name.clone(), fs::read(env.path().join(&name)).ok()?)))
            .collect();
        all.sort();
        all
    };
    let before = files(&env);
    env.run(["release", "m1"]).fails_saying(1, "not reserved");
    env.run(["set", "m0", "ip", "not-an-ip"]).fails(1);
    assert!(
        files(&env) == before,
        "a refused command wrote beside the state file"
    );
}

#[test]
fn folding_an_earlier_mamas_journal_keeps_the_pending_lines_as_written() {
    let env = TestEnv::new();
    lab(&env, 3, false);
    // A pending event with a newer mama's field, and a line that is no
    // event, before the journal's claim (number 2).
    let newer = format!(
        r#"{{"seq":1,"time":{},"machine":"m0","event":"set","job":null,"pid":null,"user":"alice","host":"h","detail":"os=x","future":[1]}}"#,
        unix_now()
    );
    let text = env.read_state().replacen(
        "</settings>\n",
        &format!(
            "  <pending_events>{newer}\nnot an event\n</pending_events>\n  <event_seq>1</event_seq>\n</settings>\n"
        ),
        1,
    );
    env.write_state(&text);
    let claim = legacy_claim().replace(r#""seq":1"#, r#""seq":2"#);
    fs::write(journal_path(&env), legacy_journal(TOKEN, &[claim])).expect("a journal");
    env.run(["set", "m2", "os", "other"]).ok();
    assert!(!journal_path(&env).exists(), "{:?}", env.files());
    assert_eq!(event_numbers(&env), [1, 2, 3]);
    // Until the flush, the lines stay as they were written.
    let state = env.read_state();
    assert!(
        state.contains(&format!("{newer}\nnot an event\n")),
        "{state}"
    );
}
