//! Benchmarks of fair turns against their targets: 50 waiters queued on one
//! machine of a 1,000-machine lab (a state file) —
//!
//! 1. the CPU the 50 waiting `mama run`s use together while they wait
//!    (target ≤ 2 % of a core);
//! 2. the handoff from one job's end to the next waiter's job starting, as
//!    the queue drains (target ≤ 10 ms, median);
//! 3. that they were served in arrival order.
//!
//! Run with `cargo bench --bench queue`. Jobs stamp `date +%s%N`.

// The tests' world, for its clean `mama` command line.
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{MAMA, mama_command};

const MACHINES: usize = 1000;
const WAITERS: usize = 50;
const CPU_WINDOW: Duration = Duration::from_secs(5);
const LIMIT: Duration = Duration::from_secs(120);

fn main() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let state = dir.path().join("mama.xml");
    std::fs::write(&state, lab()).expect("write the lab");
    let d = dir.path().display().to_string();

    let mut holder = mama(&state)
        .args(["run", "m0", "--job", "holder", "--", "sh", "-c"])
        .arg(format!(
            "touch {d}/ready; while [ ! -e {d}/go ]; do sleep 0.01; done; date +%s%N >> {d}/ends"
        ))
        .spawn()
        .expect("holder starts");
    wait_until("the holder", || dir.path().join("ready").exists());

    let mut waiters: Vec<Child> = Vec::new();
    for i in 0..WAITERS {
        let waiter = mama(&state)
            .args(["run", "m0", "--job", &format!("w{i}"), "--", "sh", "-c"])
            .arg(format!(
                "date +%s%N >> {d}/starts; echo {i} >> {d}/order; date +%s%N >> {d}/ends"
            ))
            .spawn()
            .expect("a waiter starts");
        waiters.push(waiter);
        // In order: the next starts once this one has its place.
        wait_until("the waiter's place", || queue_length(&state) == i + 1);
    }

    let before: u64 = waiters.iter().map(|w| cpu_ticks(w.id())).sum();
    let started = Instant::now();
    std::thread::sleep(CPU_WINDOW);
    let after: u64 = waiters.iter().map(|w| cpu_ticks(w.id())).sum();
    let window = started.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (after - before) as f64 / hz / window * 100.0;

    std::fs::write(dir.path().join("go"), "").expect("go");
    assert!(holder.wait().expect("holder").success());
    for waiter in &mut waiters {
        assert!(waiter.wait().expect("waiter").success());
    }
    let stamps = |name: &str| -> Vec<u128> {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let (starts, ends) = (stamps("starts"), stamps("ends"));
    assert_eq!(starts.len(), WAITERS);
    assert_eq!(ends.len(), WAITERS + 1);
    let mut handoffs: Vec<f64> = starts
        .iter()
        .zip(&ends)
        .map(|(start, end)| start.saturating_sub(*end) as f64 / 1e6)
        .collect();
    handoffs.sort_by(f64::total_cmp);
    let median = handoffs[handoffs.len() / 2];
    let p90 = handoffs[handoffs.len() * 9 / 10];
    let order: Vec<usize> = std::fs::read_to_string(dir.path().join("order"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let in_order = order == (0..WAITERS).collect::<Vec<_>>();
    let size = std::fs::metadata(&state).map_or(0, |m| m.len());

    println!();
    println!("lab: {MACHINES} machines ({size} bytes), {WAITERS} waiters on one machine");
    println!(
        "1. CPU of the {WAITERS} waiters while they wait, over {window:.1} s: {cpu:.2} % of a core \
         -> {}",
        verdict(cpu <= 2.0)
    );
    println!(
        "2. handoff, job end to the next waiter's job start: median {median:.2} ms, p90 {p90:.2} \
         ms (target <= 10 ms median) -> {}",
        verdict(median <= 10.0)
    );
    println!(
        "3. served in arrival order: {} -> {}",
        if in_order { "yes" } else { "no" },
        verdict(in_order)
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

fn queue_length(state: &Path) -> usize {
    let out = mama(state)
        .args(["info", "m0", "--json"])
        .stdout(Stdio::piped())
        .output()
        .expect("info runs");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    info["queue_length"].as_u64().unwrap_or(0) as usize
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the command: state is field 0, utime 11, stime 12.
    num(11) + num(12)
}

/// A lab of [`MACHINES`] machines in upstream's format.
fn lab() -> String {
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<settings>\n");
    for n in 0..MACHINES {
        xml.push_str(&format!(
            "  <machine>\n    <name>m{n}</name>\n    <mac>02:00:00:00:{:02x}:{:02x}</mac>\n    \
             <ip/>\n    <is_started/>\n    <only_vm>0</only_vm>\n    <arch/>\n    <os/>\n    \
             <kernel/>\n    <pwr_dev/>\n    <pwr_slot>0</pwr_slot>\n    <rly_dev/>\n    \
             <rly_slot>0</rly_slot>\n    <reservation/>\n    <resources/>\n    <boot_params/>\n    \
             <vm_params/>\n    <job/>\n    <job_pid/>\n    <job_timestamp/>\n    <startcmd/>\n    \
             <stopcmd/>\n    <start_timeout/>\n  </machine>\n",
            n / 256,
            n % 256
        ));
    }
    xml.push_str("</settings>\n");
    xml
}
