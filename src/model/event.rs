//! The history's events: what happened to which machine, by whom, when.
//!
//! Only the event model; how a backend numbers, commits and keeps events is
//! its own business (the file backend's protocol is in
//! [`crate::backend::file::log`]).

use std::borrow::Cow;

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
    /// The kind named `name` as the history writes it (`claimed`); `None`
    /// for one this mama does not know.
    pub fn from_name(name: &str) -> Option<Kind> {
        use serde::de::value::{Error, StrDeserializer};
        Kind::deserialize(StrDeserializer::<Error>::new(name)).ok()
    }

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Of a claim: how long the claimer waited for the machine before it
    /// got it, in seconds (to the millisecond). Absent in events of an
    /// older mama, and in every other event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited: Option<f64>,
    /// Of a release: the status `mama run` exits with for the job (its
    /// exit code; 128+N killed by signal N, 124 timed out, 125 to 127 not
    /// started). Absent in events of an older mama and in releases of
    /// other claims (a health check, a boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
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
            waited: None,
            status: None,
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

/// What statistics read of an event, borrowed from its JSON line where it
/// can be: over a long history most of the time would go to making
/// strings of what is only compared. A line that is not an event is not
/// one of these either.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Brief<'a> {
    pub seq: u64,
    pub time: i64,
    #[serde(borrow)]
    pub machine: Cow<'a, str>,
    pub event: Kind,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(borrow)]
    pub user: Cow<'a, str>,
    #[serde(borrow, default)]
    pub detail: Option<Cow<'a, str>>,
    #[serde(default)]
    pub waited: Option<f64>,
    #[serde(default)]
    pub status: Option<i32>,
}

impl Event {
    /// The event as statistics read it.
    pub fn brief(&self) -> Brief<'_> {
        Brief {
            seq: self.seq,
            time: self.time,
            machine: Cow::Borrowed(&self.machine),
            event: self.event,
            pid: self.pid,
            user: Cow::Borrowed(&self.user),
            detail: self.detail.as_deref().map(Cow::Borrowed),
            waited: self.waited,
            status: self.status,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_newer_mama_are_passed_over_and_new_ones_optional() {
        let newer = r#"{"seq":7,"time":5,"machine":"rig1","event":"released","job":"j","pid":3,"user":"u","host":"h","detail":"exit 2 after 1s","status":2,"future":{"x":1}}"#;
        let event: Event = serde_json::from_str(newer).expect("an event");
        assert_eq!((event.seq, event.status, event.waited), (7, Some(2), None));
        let brief: Brief<'_> = serde_json::from_str(newer).expect("a brief");
        assert_eq!(brief, event.brief());
        // An older mama's line, without them, reads; written back, an event
        // without them has none.
        let older = r#"{"seq":1,"time":5,"machine":"rig1","event":"claimed","job":null,"pid":null,"user":"u","host":"h","detail":null}"#;
        let event: Event = serde_json::from_str(older).expect("an event");
        assert_eq!(serde_json::to_string(&event).ok().as_deref(), Some(older));
        assert_eq!(Kind::from_name("stale_cleared"), Some(Kind::StaleCleared));
        assert_eq!(Kind::from_name("exploded"), None);
    }
}
