//! What users read: the `list` table, `info` fields, and their JSON.

use std::time::Duration;

use chrono::{Local, TimeZone};
use comfy_table::{Cell, ContentArrangement, Table, presets};
use serde::Serialize;

use crate::claim;
use crate::history::Event;
use crate::lab::{Field, Machine};
use crate::os::ProcessTable;
use crate::stale::{Judge, Verdict};
use crate::style::{self, Tone};

/// One machine as `list --json` and `info --json` print it; empty fields
/// are `null`.
#[derive(Debug, Serialize)]
pub struct MachineView {
    pub name: String,
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub state: &'static str,
    pub reservation: Option<String>,
    pub resources: Option<Vec<String>>,
    pub is_started: bool,
    pub only_vm: bool,
    pub arch: Option<String>,
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub boot_params: Option<String>,
    pub vm_params: Option<String>,
    pub startcmd: Option<String>,
    pub stopcmd: Option<String>,
    pub start_timeout: Option<String>,
    pub pwr_dev: Option<String>,
    pub pwr_slot: Option<String>,
    pub rly_dev: Option<String>,
    pub rly_slot: Option<String>,
    pub job: Option<String>,
    pub job_pid: Option<u32>,
    pub job_timestamp: Option<i64>,
    pub job_host: Option<String>,
    pub stale: bool,
    pub stale_reason: Option<String>,
    /// The host of a job claimed elsewhere (its PID is not judged here).
    #[serde(skip)]
    remote_host: Option<String>,
    /// Live only by its job lock: its PID says nothing here (its mama died
    /// while processes of the job run on, or it was claimed in another PID
    /// namespace).
    #[serde(skip)]
    held_by_lock: bool,
}

impl MachineView {
    pub fn new<P: ProcessTable>(machine: &Machine<'_>, judge: &Judge<'_, P>) -> MachineView {
        // Structured fields (MAC, IP, numbers) are trimmed; free text is
        // shown exactly as stored, so scripts read back what they set.
        let field = |f: Field| {
            let value = machine.get(f);
            let value = value.trim();
            (!value.is_empty()).then(|| value.to_string())
        };
        let text = |f: Field| {
            let value = machine.get(f);
            (!value.trim().is_empty()).then(|| value.into_owned())
        };
        let job = machine.job();
        let verdict = job.as_ref().map(|j| judge.judge(&machine.name(), j));
        let stale_reason = match &verdict {
            Some(Verdict::Stale(reason)) => Some(reason.to_string()),
            _ => None,
        };
        let remote_host = match &verdict {
            Some(Verdict::Remote(host)) => Some(host.clone()),
            _ => None,
        };
        let resources = machine.resources();
        MachineView {
            name: machine.name().into_owned(),
            mac: field(Field::Mac),
            ip: field(Field::Ip),
            state: claim::status(machine, verdict.as_ref()).as_str(),
            reservation: machine.reservation(),
            resources: (!resources.is_empty()).then_some(resources),
            is_started: machine.is_started(),
            only_vm: machine.only_vm(),
            arch: text(Field::Arch),
            os: text(Field::Os),
            kernel: text(Field::Kernel),
            boot_params: text(Field::BootParams),
            vm_params: text(Field::VmParams),
            startcmd: text(Field::StartCmd),
            stopcmd: text(Field::StopCmd),
            start_timeout: field(Field::StartTimeout),
            pwr_dev: text(Field::PwrDev),
            pwr_slot: field(Field::PwrSlot),
            rly_dev: text(Field::RlyDev),
            rly_slot: field(Field::RlySlot),
            job: job
                .as_ref()
                .map(|j| j.label.clone())
                .filter(|l| !l.is_empty()),
            job_pid: job.as_ref().and_then(|j| j.pid),
            job_timestamp: job.as_ref().and_then(|j| j.timestamp),
            job_host: job.and_then(|j| j.host),
            stale: stale_reason.is_some(),
            held_by_lock: verdict == Some(Verdict::HeldByLock),
            stale_reason,
            remote_host,
        }
    }

    fn job_cell(&self) -> String {
        let mut cell = match (&self.job, self.job_pid) {
            (Some(label), _) => label.clone(),
            (None, Some(pid)) => format!("(PID {pid})"),
            (None, None) => String::new(),
        };
        if let Some(host) = &self.remote_host {
            cell.push_str(&format!(" (on {host})"));
        }
        if self.stale {
            cell.push_str(" [STALE]");
        }
        cell
    }
}

/// `info --json`: the machine and its last events.
#[derive(Debug, Serialize)]
pub struct InfoView {
    #[serde(flatten)]
    pub machine: MachineView,
    pub recent_events: Vec<Event>,
}

/// Events as aligned columns under a header: time, machine, event, job,
/// who, detail.
pub fn events(events: &[Event], indent: &str) -> String {
    let rows: Vec<[String; 6]> = events
        .iter()
        .map(|e| {
            let job = match (&e.job, e.pid) {
                (Some(job), Some(pid)) => format!("{job} (PID {pid})"),
                (Some(job), None) => job.clone(),
                (None, Some(pid)) => format!("(PID {pid})"),
                (None, None) => "-".into(),
            };
            [
                local_time(e.time),
                e.machine.clone(),
                e.event.as_str().to_string(),
                job,
                format!("{}@{}", e.user, e.host),
                e.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["TIME", "MACHINE", "EVENT", "JOB", "WHO", "DETAIL"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::from(indent);
        for (cell, width) in row.iter().zip(widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn local_time(timestamp: i64) -> String {
    match Local.timestamp_opt(timestamp, 0).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => format!("@{timestamp}"),
    }
}

/// The `list` table; with `colour`, the state and a stale job stand out.
pub fn table(views: &[MachineView], colour: bool) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(["No", "Name", "IP", "MAC", "State", "Reserved", "Job"]);
    // Whether to colour is decided by the caller (see `style::enabled`),
    // not by comfy-table's own look at stdout.
    table.force_no_tty();
    if colour {
        table.enforce_styling();
    }
    for (no, view) in views.iter().enumerate() {
        let tone = |text: String, tone: Option<Tone>| match tone {
            Some(tone) => tone.cell(Cell::new(text)),
            None => Cell::new(text),
        };
        table.add_row([
            Cell::new(no + 1),
            Cell::new(&view.name),
            Cell::new(view.ip.clone().unwrap_or_default()),
            Cell::new(view.mac.clone().unwrap_or_default()),
            tone(view.state.to_string(), Tone::of_state(view.state)),
            Cell::new(view.reservation.clone().unwrap_or_default()),
            tone(view.job_cell(), view.stale.then_some(Tone::Stale)),
        ]);
    }
    table.to_string()
}

/// The `info` text: every field that is set, then the job; with `colour`,
/// the state and a stale job stand out.
pub fn info(view: &MachineView, now: i64, colour: bool) -> String {
    let mut lines: Vec<(&str, String)> = vec![("Name:", view.name.clone())];
    let mut add = |label, value: &Option<String>| {
        if let Some(value) = value {
            lines.push((label, value.clone()));
        }
    };
    add("MAC:", &view.mac);
    add("IP:", &view.ip);
    add(
        "State:",
        &Some(style::paint(view.state, Tone::of_state(view.state), colour)),
    );
    add("Reserved by:", &view.reservation);
    add("Resources:", &view.resources.as_ref().map(|r| r.join(" ")));
    add(
        "Started by hand:",
        &view.is_started.then(|| "yes".to_string()),
    );
    add("VM only:", &view.only_vm.then(|| "yes".to_string()));
    add("Arch:", &view.arch);
    add("OS:", &view.os);
    add("Kernel:", &view.kernel);
    add("Boot params:", &view.boot_params);
    add("VM params:", &view.vm_params);
    add("Start command:", &view.startcmd);
    add("Stop command:", &view.stopcmd);
    add("Start timeout:", &view.start_timeout);
    add("Power device:", &view.pwr_dev);
    add("Power slot:", &view.pwr_slot);
    add("Relay device:", &view.rly_dev);
    add("Relay slot:", &view.rly_slot);
    if view.job.is_some() || view.job_pid.is_some() {
        add("Running job:", &Some(view.job.clone().unwrap_or_default()));
        add("Job PID:", &view.job_pid.map(|p| p.to_string()));
        add("Job host:", &view.job_host);
        add(
            "Job started:",
            &view.job_timestamp.map(|t| time_and_age(t, now)),
        );
        let status = match &view.stale_reason {
            Some(reason) => style::paint(&format!("STALE ({reason})"), Some(Tone::Stale), colour),
            None if view.held_by_lock => "running (its PID says nothing here, but processes \
                                          of the job hold its job lock)"
                .to_string(),
            None => "running".to_string(),
        };
        add("Job status:", &Some(status));
    }
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(label, value)| format!("{label:<width$} {value}\n"))
        .collect()
}

/// A Unix time as local time, with its age: `2026-11-23 09:14:02 (3m 12s ago)`.
pub fn time_and_age(timestamp: i64, now: i64) -> String {
    let when = local_time(timestamp);
    let age = now - timestamp;
    if age >= 0 {
        format!("{when} ({} ago)", seconds(Duration::from_secs(age as u64)))
    } else {
        format!("{when} (in the future)")
    }
}

/// A duration for people: `45s`, `3m 12s`, `2h 5m`, `3d 4h`.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..10 if d.subsec_millis() != 0 => format!("{:.1}s", d.as_secs_f64()),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(seconds(Duration::from_secs(45)), "45s");
        assert_eq!(seconds(Duration::from_millis(300)), "0.3s");
        assert_eq!(seconds(Duration::from_millis(2000)), "2s");
        assert_eq!(seconds(Duration::from_secs(192)), "3m 12s");
        assert_eq!(seconds(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(seconds(Duration::from_secs(273600)), "3d 4h");
    }
}
