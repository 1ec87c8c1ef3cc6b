//! The history's events: what happened to which machine, by whom, when.
//!
//! Only the event model; how a backend numbers, commits and keeps events is
//! its own business (the file backend's protocol is in
//! [`crate::backend::file::log`]).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::JobRecord;
use crate::os;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `run` claimed the machine for a job.
    Claimed,
    /// The job ended and `run` gave the machine back.
    Released,
    /// A waiter cleared a stale job.
    StaleCleared,
    /// `clear` forgot a job by hand.
    Cleared,
    Reserved,
    /// `release`: the holder gave up a reservation.
    Unreserved,
    /// `release-forced`.
    ForceReleased,
    Added,
    Deleted,
    /// `set` changed a field.
    Set,
    /// `start` (or `run --boot`) brought the machine up: ready after the
    /// time the detail gives.
    Started,
    /// A start did not bring the machine up (the detail says why).
    StartFailed,
    /// `stop` (or the end of a `run --boot`) put the machine down.
    Stopped,
    /// `power` switched the machine's outlet (the detail: on, off, cycle).
    Power,
    /// A power device was defined (`device add`, `import`); the event's
    /// machine is the device's name.
    DeviceAdded,
    /// A power device was removed (`device delete`, `import --replace`).
    DeviceDeleted,
    /// The machine was taken out of service (`offline`, a failed health
    /// check, too many failed starts); the detail is the reason.
    Offline,
    /// The machine was put back in service (`online`, a health check that
    /// passed).
    Online,
    /// `check` ran the machine's health command (the detail: pass or
    /// fail, and its last line of output).
    Checked,
    /// A lab setting changed (`setting`, `import`); the event's machine is
    /// the setting's name, its detail `NAME=VALUE`.
    SettingChanged,
    /// A reservation's lease ran out: the first transaction after its end
    /// cleared the reservation (the detail: whose, and when it ended).
    Expired,
    /// The holder moved a reservation's end (`extend`; the detail: the new
    /// end).
    Extended,
    /// A reservation's lease ends within the reminder's lead time (`mama
    /// serve` records it once a lease; the detail: whose, and when it
    /// ends).
    Expiring,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Claimed => "claimed",
            Kind::Released => "released",
            Kind::StaleCleared => "stale_cleared",
            Kind::Cleared => "cleared",
            Kind::Reserved => "reserved",
            Kind::Unreserved => "unreserved",
            Kind::ForceReleased => "force_released",
            Kind::Added => "added",
            Kind::Deleted => "deleted",
            Kind::Set => "set",
            Kind::Started => "started",
            Kind::StartFailed => "start_failed",
            Kind::Stopped => "stopped",
            Kind::Power => "power",
            Kind::DeviceAdded => "device_added",
            Kind::DeviceDeleted => "device_deleted",
            Kind::Offline => "offline",
            Kind::Online => "online",
            Kind::Checked => "checked",
            Kind::SettingChanged => "setting_changed",
            Kind::Expired => "expired",
            Kind::Extended => "extended",
            Kind::Expiring => "expiring",
        }
    }
}

/// One event, as stored and as `log --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Unix seconds.
    pub time: i64,
    pub machine: String,
    pub event: Kind,
    pub job: Option<String>,
    pub pid: Option<u32>,
    /// Who did it, and where.
    pub user: String,
    pub host: String,
    pub detail: Option<String>,
}

impl Event {
    /// An event by this user on this host, now; numbered when committed.
    pub fn new(event: Kind, machine: &str) -> Event {
        Event {
            seq: 0,
            time: os::now(),
            machine: machine.to_string(),
            event,
            job: None,
            pid: None,
            user: os::user_name(),
            host: os::host_name(),
            detail: None,
        }
    }

    /// The job the event is about.
    pub fn job(mut self, job: &JobRecord) -> Event {
        self.job = (!job.label.is_empty()).then(|| job.label.clone());
        self.pid = job.pid;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Event {
        self.detail = Some(detail.into());
        self
    }
}

/// Events as JSON lines.
pub fn encode(events: &[Event]) -> Result<String, Error> {
    let mut text = String::new();
    for event in events {
        let line = serde_json::to_string(event)
            .map_err(|e| Error::Invalid(format!("cannot encode an event: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    Ok(text)
}

/// Events from JSON lines; a line that is not an event is skipped.
pub fn decode(text: &str) -> Vec<Event> {
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}
