//! Bad input: control characters that could drive a terminal, numbers out
//! of range, state files nested too deep or breaking XML 1.0, and names too
//! long for a lock file. Each is refused with a clear message and a
//! non-zero status, or shown in a safe form; a refused command leaves the
//! state file as it was.

mod common;
use common::*;

use std::fs;
use std::path::Path;

fn read_bytes(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `cmd` to its end.
fn output(mut cmd: std::process::Command) -> Run {
    cmd.output().expect("mama runs").into()
}

// ---------------------------------------------------------------------------
// Numbers out of range

/// 100 years in seconds: the longest duration mama takes.
const HUNDRED_YEARS: &str = "3155760000";

#[test]
fn a_stale_age_past_100_years_is_refused() {
    let env = TestEnv::new();
    let xml = lab_xml(&[machine_xml("rig1", 1, &[])]);
    // A job without a PID, claimed a minute ago: live at any sane age.
    env.write_state(&with_job(&xml, "rig1", "smoke", None, unix_now() - 60));
    let before = read_bytes(&env.state);
    for value in ["9223372036854775808", "18446744073709551615", "3155760001"] {
        for (args, code) in [
            (&["list"][..], 1),
            (&["info", "rig1"], 1),
            (&["delete", "rig1"], 1),
            (&["wait", "rig1", "--timeout", "0"], 1),
            (&["run", "rig1", "--no-wait", "--", "true"], 125),
        ] {
            let mut cmd = env.cmd(args);
            cmd.env("MAMA_STALE_AFTER", value);
            let run = output(cmd);
            let stderr = run.fails_saying(code, "MAMA_STALE_AFTER");
            assert!(stderr.contains("100 years"), "says the bound: {run:#?}");
            assert_eq!(read_bytes(&env.state), before, "{args:?}: unchanged");
        }
    }
    let mut cmd = env.cmd(["list", "--json"]);
    cmd.env("MAMA_STALE_AFTER", HUNDRED_YEARS);
    let run = output(cmd);
    run.ok();
    assert_eq!(run.json()[0]["stale"], false);
}

#[test]
fn durations_past_100_years_are_refused_before_anything_is_claimed() {
    let env = TestEnv::new();
    env.add("rig1", 1);
    let before = read_bytes(&env.state);
    let events = env.events();
    let marker = env.path().join("job-ran");
    let marker_arg = marker.to_str().expect("utf-8 path");
    for value in ["1e19", "1e300", "3155760001", "18446744073709551616"] {
        env.run(["wait", "rig1", "--timeout", value])
            .fails_saying(2, "100 years");
        for option in ["--timeout", "--wait-timeout"] {
            let run = env.run(["run", "rig1", option, value, "--", "touch", marker_arg]);
            run.fails_saying(125, "100 years");
            assert!(!run.stderr.contains("panicked"), "{run:#?}");
        }
        for (args, code) in [
            (&["wait", "rig1"][..], 1),
            (&["run", "rig1", "--", "touch", marker_arg], 125),
            (&["log", "--follow"], 1),
        ] {
            let mut cmd = env.cmd(args);
            cmd.env("MAMA_POLL_INTERVAL", value);
            let run = output(cmd);
            let stderr = run.fails_saying(code, "MAMA_POLL_INTERVAL");
            assert!(stderr.contains("100 years"), "{run:#?}");
        }
        assert!(!marker.exists(), "{value}: the job must not run");
        assert_eq!(read_bytes(&env.state), before, "{value}: no claim");
        assert_eq!(env.events(), events, "{value}: no event");
    }
    for value in ["99999999999w", "36525d1s", "3155760001", "876601h"] {
        env.run(["log", "--since", value])
            .fails_saying(2, "100 years");
    }
    // The bound itself is taken.
    env.run(["wait", "rig1", "--timeout", HUNDRED_YEARS]).ok();
    env.run(["log", "--since", "36525d"]).ok();
    env.run(["run", "rig1", "--timeout", HUNDRED_YEARS, "--", "true"])
        .ok();
}
