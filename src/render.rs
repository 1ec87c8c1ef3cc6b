//! What users read: the `list` table, `info` fields, and their JSON.

use std::time::Duration;

use chrono::{Local, TimeZone};
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

use crate::claim;
use crate::lab::{Field, Machine};
use crate::os::ProcessTable;
use crate::stale::{Judge, Verdict};

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
}

impl MachineView {
    pub fn new<P: ProcessTable>(machine: &Machine<'_>, judge: &Judge<'_, P>) -> MachineView {
        let field = |f: Field| {
            let value = machine.get(f);
            let value = value.trim();
            (!value.is_empty()).then(|| value.to_string())
        };
        let job = machine.job();
        let verdict = job.as_ref().map(|j| judge.judge(j));
        let stale_reason = match &verdict {
            Some(Verdict::Stale(reason)) => Some(reason.to_string()),
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
            arch: field(Field::Arch),
            os: field(Field::Os),
            kernel: field(Field::Kernel),
            boot_params: field(Field::BootParams),
            vm_params: field(Field::VmParams),
            startcmd: field(Field::StartCmd),
            stopcmd: field(Field::StopCmd),
            start_timeout: field(Field::StartTimeout),
            pwr_dev: field(Field::PwrDev),
            pwr_slot: field(Field::PwrSlot),
            rly_dev: field(Field::RlyDev),
            rly_slot: field(Field::RlySlot),
            job: job
                .as_ref()
                .map(|j| j.label.clone())
                .filter(|l| !l.is_empty()),
            job_pid: job.as_ref().and_then(|j| j.pid),
            job_timestamp: job.as_ref().and_then(|j| j.timestamp),
            job_host: job.and_then(|j| j.host),
            stale: stale_reason.is_some(),
            stale_reason,
        }
    }

    fn job_cell(&self) -> String {
        let mut cell = match (&self.job, self.job_pid) {
            (Some(label), _) => label.clone(),
            (None, Some(pid)) => format!("(PID {pid})"),
            (None, None) => String::new(),
        };
        if self.stale {
            cell.push_str(" [STALE]");
        }
        cell
    }
}

/// The `list` table.
pub fn table(views: &[MachineView]) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(["No", "Name", "IP", "MAC", "State", "Reserved", "Job"]);
    for (no, view) in views.iter().enumerate() {
        table.add_row([
            (no + 1).to_string(),
            view.name.clone(),
            view.ip.clone().unwrap_or_default(),
            view.mac.clone().unwrap_or_default(),
            view.state.to_string(),
            view.reservation.clone().unwrap_or_default(),
            view.job_cell(),
        ]);
    }
    table.to_string()
}

/// The `info` text: every field that is set, then the job.
pub fn info(view: &MachineView, now: i64) -> String {
    let mut lines: Vec<(&str, String)> = vec![("Name:", view.name.clone())];
    let mut add = |label, value: &Option<String>| {
        if let Some(value) = value {
            lines.push((label, value.clone()));
        }
    };
    add("MAC:", &view.mac);
    add("IP:", &view.ip);
    add("State:", &Some(view.state.to_string()));
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
            Some(reason) => format!("STALE ({reason})"),
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
    let when = match Local.timestamp_opt(timestamp, 0).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => format!("@{timestamp}"),
    };
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
        assert_eq!(seconds(Duration::from_secs(192)), "3m 12s");
        assert_eq!(seconds(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(seconds(Duration::from_secs(273600)), "3d 4h");
    }
}
