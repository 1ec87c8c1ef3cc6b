//! Benchmark of the lab's policy against its target: a reservation that
//! ends by itself (a lease) on one machine of a 1,000-machine lab (a state
//! file), another user's, and a `mama run` waiting behind it with the
//! default poll interval (1 s) —
//!
//! 1. how long after the reservation's end the waiter's job starts
//!    (target ≤ 50 ms, median of 20 rounds).
//!
//! Run with `cargo bench --bench policy`. The job stamps `date +%s%N`.

// The tests' world, for its clean `mama` command line.
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{MAMA, mama_command};

const MACHINES: usize = 1000;
const ROUNDS: usize = 20;
const LIMIT: Duration = Duration::from_secs(60);

fn main() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = dir.path().join("mama.xml");
    let stamp = dir.path().join("started");
    let mut late: Vec<f64> = Vec::new();
    for _ in 0..ROUNDS {
        // Reserved by alice until the second after the next: written as a
        // lab whose reservation has a lease, as `reserve --for` leaves it.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970");
        let end = now.as_secs() + 2;
        std::fs::write(&state, lab(end)).expect("write the lab");
        let _ = std::fs::remove_file(&stamp);
        let mut waiter = mama(&state)
            .args(["run", "m0", "--", "sh", "-c"])
            .arg(format!("date +%s%N > {}", stamp.display()))
            .spawn()
            .expect("the waiter starts");
        let began = Instant::now();
        let status = loop {
            if let Some(status) = waiter.try_wait().expect("try_wait") {
                break status;
            }
            if began.elapsed() > LIMIT {
                let _ = waiter.kill();
                let _ = waiter.wait();
                panic!("the waiter still waited after {LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(status.success(), "the waiter failed: {status}");
        let started: u128 = std::fs::read_to_string(&stamp)
            .expect("the job's stamp")
            .trim()
            .parse()
            .expect("a stamp");
        late.push((started as f64 - (end as f64) * 1e9) / 1e6);
    }
    late.sort_by(f64::total_cmp);
    let median = late[late.len() / 2];
    let worst = late[late.len() - 1];
    let early = late[0];
    assert!(early >= 0.0, "a job started {early:.1} ms before the end");
    println!();
    println!(
        "lab: {MACHINES} machines; m0 reserved by another user until a whole second, a run \
         waiting behind it (poll interval 1 s)"
    );
    println!(
        "1. the job's start after the reservation's end, {ROUNDS} rounds: median {median:.1} ms, \
         worst {worst:.1} ms (target <= 50 ms median) -> {}",
        verdict(median <= 50.0)
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "MISSED" }
}

fn mama(state: &Path) -> Command {
    let mut cmd = mama_command(MAMA, state);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// A lab of [`MACHINES`] machines in upstream's format, `m0` reserved by
/// alice with a lease that ends at `end`.
fn lab(end: u64) -> String {
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<settings>\n");
    xml.push_str(&format!(
        "  <lease machine=\"m0\" user=\"alice\" expires=\"{end}\"/>\n"
    ));
    for n in 0..MACHINES {
        let reservation = match n {
            0 => "<reservation>alice</reservation>",
            _ => "<reservation/>",
        };
        xml.push_str(&format!(
            "  <machine>\n    <name>m{n}</name>\n    <mac>02:00:00:00:{:02x}:{:02x}</mac>\n    \
             <ip/>\n    <is_started/>\n    <only_vm>0</only_vm>\n    <arch/>\n    <os/>\n    \
             <kernel/>\n    <pwr_dev/>\n    <pwr_slot>0</pwr_slot>\n    <rly_dev/>\n    \
             <rly_slot>0</rly_slot>\n    {reservation}\n    <resources/>\n    <boot_params/>\n    \
             <vm_params/>\n    <job/>\n    <job_pid/>\n    <job_timestamp/>\n    <startcmd/>\n    \
             <stopcmd/>\n    <start_timeout/>\n  </machine>\n",
            n / 256,
            n % 256
        ));
    }
    xml.push_str("</settings>\n");
    xml
}
