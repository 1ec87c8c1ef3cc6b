//! What users read: the `list` table, `info` fields, and their JSON.
//!
//! Text from the state file or the history is the lab's, not ours: a
//! hand-edited file may hold controls that a terminal would act on. Every
//! such text goes through [`printable`] on its way to a terminal, and JSON
//! through [`json_safe`].

use std::fmt::Write as _;

use comfy_table::{Cell, ContentArrangement, Table, presets};
use serde::Serialize;

use crate::cli::style::{self, Layout, Tone};
use crate::engine::claim::{self, Blocker, Busy, Status};
use crate::engine::devices;
use crate::engine::power::Seen;
use crate::engine::stale::{Judge, Verdict};
use crate::model::event::Event;
use crate::model::field::{self, Field};
use crate::model::setting::Setting;
use crate::model::{JobRecord, Machine};
use crate::net::Reach;
use crate::os::Holder;
use crate::os::ProcessTable;
pub use crate::text::{
    local_time, printable, printable_lines, seconds, time_and_age, time_and_when,
};

/// JSON text with DEL and C1 controls written as `\u00XX` escapes
/// (serde_json escapes C0 controls but leaves these raw, and a terminal
/// acts on C1). They only ever stand inside strings, where the escape
/// reads back as the same character.
pub fn json_safe(json: String) -> String {
    // C0 controls stand only between values here (pretty printing's line
    // breaks): serde_json escapes them inside strings.
    if !may_hold_raw_controls(&json) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_raw_in_json(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Events as `log --json` prints them: one JSON object a line.
pub fn event_lines(events: &[Event]) -> crate::error::Result<String> {
    let mut text = String::new();
    for event in events {
        let line = serde_json::to_string(event)
            .map_err(|e| crate::error::Error::Invalid(format!("cannot write JSON: {e}")))?;
        text.push_str(&json_safe(line));
        text.push('\n');
    }
    Ok(text)
}

/// The controls serde_json leaves raw in strings: DEL and C1.
fn is_raw_in_json(c: char) -> bool {
    c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c)
}

/// Whether `text` may hold DEL or a C1 control: DEL is the byte 7F, a C1
/// control C2 80 to C2 9F. Most text has neither byte, which a look at its
/// bytes says quickly.
fn may_hold_raw_controls(text: &str) -> bool {
    crate::format::xml::any_byte(text.as_bytes(), |b| (b == 0x7f) | (b == 0xc2))
}

/// Writes `value` to `out` as pretty JSON, with what [`json_safe`] escapes
/// escaped as the strings go out: no copy of the whole text is made (the
/// JSON of a large lab is megabytes).
pub fn write_json(out: &mut impl std::io::Write, value: &impl Serialize) -> serde_json::Result<()> {
    let formatter = SafeFormatter(serde_json::ser::PrettyFormatter::new());
    value.serialize(&mut serde_json::Serializer::with_formatter(out, formatter))
}

/// serde_json's pretty printing, with DEL and C1 controls inside strings
/// written as `\u00XX` escapes.
struct SafeFormatter(serde_json::ser::PrettyFormatter<'static>);

impl serde_json::ser::Formatter for SafeFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        if !may_hold_raw_controls(fragment) {
            return writer.write_all(fragment.as_bytes());
        }
        let mut rest = fragment;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| is_raw_in_json(c)) {
            writer.write_all(&rest.as_bytes()[..at])?;
            write!(writer, "\\u{:04x}", u32::from(c))?;
            rest = &rest[at + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }

    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_array(w)
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array(w)
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_array_value(w, first)
    }

    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(w)
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object(w)
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object(w)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_object_key(w, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(w)
    }

    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(w)
    }
}

/// One machine as `list --json` and `info --json` print it; empty fields
/// are `null`.
#[derive(Debug, Serialize)]
pub struct MachineView {
    pub name: String,
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub state: &'static str,
    pub reservation: Option<String>,
    /// When the reservation ends by itself (Unix seconds); `null` for none
    /// or one without an end.
    pub reservation_expires: Option<i64>,
    /// The note of the reservation's holder.
    pub reservation_note: Option<String>,
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
    /// Who claimed the job, where its record says (`<job_user>`).
    pub job_user: Option<String>,
    pub job_host: Option<String>,
    pub stale: bool,
    pub stale_reason: Option<String>,
    /// What holds a machine that is `blocked`: a machine sharing one of
    /// its resources.
    pub blocked_by: Option<BlockedView>,
    /// How many wait for the machine.
    pub queue_length: usize,
    /// Who waits, oldest first (`info` shows them).
    #[serde(skip)]
    pub queue: Vec<QueueView>,
    /// The host of a job claimed elsewhere (its PID is not judged here).
    #[serde(skip)]
    remote_host: Option<String>,
    /// Live only by its job lock: its PID says nothing here (its mama died
    /// while processes of the job run on, or it was claimed in another PID
    /// namespace).
    #[serde(skip)]
    held_by_lock: bool,
    /// The processes that hold its job lock, where `info` looked (only
    /// when nothing but the lock says the job lives).
    #[serde(skip)]
    pub lock_holders: Vec<LockHolderView>,
    /// Whether it answers: `online`, `unreachable`, `offline`; `null`
    /// without an address, or when not asked.
    pub online: Option<&'static str>,
    /// What its outlet says: `on`, `off`; `null` without one, or when not
    /// asked, or when it did not answer in time.
    pub power: Option<&'static str>,
    pub watts: Option<f64>,
    /// Who started it with mama.
    pub started_by: Option<String>,
    /// Whether its start belongs to its job (`run --boot`).
    pub started_for_job: bool,
    /// Whether its IP was learned by a start (from the neighbour table).
    pub ip_learned: bool,
    /// When its last start began (Unix seconds), and how long it took to
    /// become ready.
    pub last_start: Option<i64>,
    pub last_start_secs: Option<f64>,
    pub ready_port: Option<String>,
    pub readycmd: Option<String>,
    /// Its health command (`mama check`).
    pub healthcmd: Option<String>,
    /// Why it is out of service; `null` while it is in service.
    pub offline_reason: Option<String>,
    /// Who took it out of service, where the record says.
    pub offline_by: Option<String>,
    /// Since when it is out of service (Unix seconds).
    pub offline_since: Option<i64>,
    /// How many of its starts in a row failed every try.
    pub failed_starts: u32,
    /// The device it names for an outlet, where `info` looked.
    #[serde(skip)]
    pub power_device: Option<NamedView>,
    /// The device it names for a relay, where `info` looked.
    #[serde(skip)]
    pub relay_device: Option<NamedView>,
}

/// The device a machine names, as `info` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NamedView {
    pub name: String,
    /// The slot, where it is a whole number.
    pub slot: Option<u64>,
    /// Its driver, where the lab defines the device.
    pub driver: Option<&'static str>,
    #[serde(skip)]
    slot_text: String,
    #[serde(skip)]
    problem: Option<String>,
}

impl NamedView {
    pub fn of(named: devices::Named) -> NamedView {
        NamedView {
            slot: named.slot.parse().ok(),
            name: named.name,
            driver: named.driver,
            slot_text: named.slot,
            problem: named.problem,
        }
    }

    /// `pdu1 slot 3 (mpower)`; what is wrong with the device in the
    /// parentheses, where something is. (The lab's text, as stored: `info`
    /// shows it safe for a terminal.)
    fn text(&self) -> String {
        let mut text = self.name.clone();
        if !self.slot_text.is_empty() {
            text.push_str(&format!(" slot {}", self.slot_text));
        }
        let about: Vec<String> = self
            .driver
            .map(str::to_string)
            .into_iter()
            .chain(self.problem.clone())
            .collect();
        if !about.is_empty() {
            text.push_str(&format!(" ({})", about.join(", ")));
        }
        text
    }
}

/// One device as `device list --json` prints it.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    /// `null` for a `<device>` without a name.
    pub name: Option<String>,
    pub driver: Option<String>,
    /// Its options in order, a password as `***`.
    pub options: OptionsView,
    pub machines: Vec<DeviceUserView>,
    /// Why mama cannot use it; `null` where it can.
    pub broken: Option<String>,
}

/// A device's options, as a JSON object in their order.
#[derive(Debug)]
pub struct OptionsView(Vec<(String, String)>);

impl Serialize for OptionsView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A machine that names a device.
#[derive(Debug, Serialize)]
pub struct DeviceUserView {
    pub name: String,
    /// The slot, where it is a whole number.
    pub slot: Option<u64>,
    /// `outlet` or `relay`.
    #[serde(rename = "as")]
    pub used_as: &'static str,
}

/// A device's options as shown: a password never is.
fn shown_options(options: &[(String, String)]) -> Vec<(String, String)> {
    options
        .iter()
        .map(|(key, value)| match key.as_str() {
            "password" => (key.clone(), "***".to_string()),
            _ => (key.clone(), value.clone()),
        })
        .collect()
}

impl DeviceView {
    pub fn of(listed: &devices::Listed) -> DeviceView {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        DeviceView {
            name: text(&listed.name),
            driver: text(&listed.driver),
            options: OptionsView(shown_options(&listed.options)),
            machines: listed
                .users
                .iter()
                .map(|u| DeviceUserView {
                    name: u.machine.clone(),
                    slot: u.slot.trim().parse().ok(),
                    used_as: u.used_as.as_str(),
                })
                .collect(),
            broken: listed.broken.clone(),
        }
    }
}

/// The `device list` table, then a line for each device mama cannot use,
/// saying why; with `colour`, those stand out.
pub fn devices(listed: &[devices::Listed], colour: bool) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(["Name", "Driver", "Slots", "Options", "Machines"]);
    table.force_no_tty();
    if colour {
        table.enforce_styling();
    }
    let mut notes = String::new();
    for device in listed {
        let name = match device.name.as_str() {
            "" => "(no name)".to_string(),
            name => printable(name).into_owned(),
        };
        let options: Vec<String> = shown_options(&device.options)
            .iter()
            .map(|(key, value)| format!("{}={}", printable(key), printable(value)))
            .collect();
        let machines: Vec<String> = device
            .users
            .iter()
            .map(|u| format!("{}:{}", printable(&u.machine), printable(&u.slot)))
            .collect();
        let mut name_cell = Cell::new(&name);
        if let Some(reason) = &device.broken {
            name_cell = Tone::Stale.cell(Cell::new(format!("{name} [BROKEN]")));
            notes.push_str(&format!(
                "{}\n",
                style::paint(
                    &format!("{name} is broken: {}", printable(reason)),
                    Some(Tone::Stale),
                    colour
                )
            ));
        }
        table.add_row([
            name_cell,
            Cell::new(printable(&device.driver)),
            Cell::new(device.slots.map(|n| n.to_string()).unwrap_or_default()),
            Cell::new(options.join("\n")),
            Cell::new(machines.join(" ")),
        ]);
    }
    format!("{table}\n{notes}")
}

/// A process that holds a machine's job lock, as `info` names it.
#[derive(Debug, Clone, Serialize)]
pub struct LockHolderView {
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), where it can be read.
    pub command: Option<String>,
    /// Stopped (Ctrl-Z, SIGSTOP) or traced.
    pub stopped: bool,
}

impl From<Holder> for LockHolderView {
    fn from(holder: Holder) -> LockHolderView {
        LockHolderView {
            pid: holder.pid,
            command: holder.command,
            stopped: holder.stopped,
        }
    }
}

impl LockHolderView {
    /// `PID 1234 (sleep)`, `PID 1234 (sleep, stopped)`; the name shown safe.
    fn text(&self) -> String {
        let mut text = format!("PID {}", self.pid);
        match (&self.command, self.stopped) {
            (Some(command), true) => write!(text, " ({}, stopped)", printable(command)),
            (Some(command), false) => write!(text, " ({})", printable(command)),
            (None, true) => write!(text, " (stopped)"),
            (None, false) => Ok(()),
        }
        .unwrap_or_default();
        text
    }
}

impl MachineView {
    /// The view of `machine`, whose job record is `job` (its
    /// [`Machine::job`]); `locked` says whether its job lock is held
    /// (looked at only when no job is recorded), and `blocker` what holds
    /// it through its resources (asked only when it is free by its own
    /// fields: see [`claim::Resources::blocker`]).
    pub fn new<P: ProcessTable>(
        machine: &Machine,
        mut job: Option<JobRecord>,
        judge: &Judge<'_, P>,
        locked: impl FnOnce() -> bool,
        blocker: impl FnOnce() -> Option<Blocker>,
    ) -> MachineView {
        // Only waiters that still wait: a place whose lock is free was
        // left by one that gave up or died.
        let queue: Vec<QueueView> = machine
            .queue()
            .into_iter()
            .filter(|w| judge.locks.place_held(w))
            .map(|w| QueueView {
                pid: w.pid,
                since: w.since,
                user: w.user,
                host: w.host,
                job: w.job,
            })
            .collect();
        // Structured fields (MAC, IP, numbers) are trimmed; free text is
        // shown exactly as stored, so scripts read back what they set.
        let field = |f: Field| {
            let value = machine.get(f);
            let value = value.trim();
            (!value.is_empty()).then(|| value.to_string())
        };
        let text = |f: Field| {
            let value = machine.get(f);
            (!value.trim().is_empty()).then(|| value.to_string())
        };
        let verdict = job.as_ref().map(|j| judge.judge(machine.name(), j));
        let stale_reason = match &verdict {
            Some(Verdict::Stale(reason)) => Some(reason.to_string()),
            _ => None,
        };
        let remote_host = match &verdict {
            Some(Verdict::Remote(host)) => Some(host.clone()),
            _ => None,
        };
        let resources = machine.resources();
        let offline = machine.offline();
        let unrecorded_lock = job.is_none() && locked();
        // A machine's own job, hand start or reservation decides first;
        // only a machine free by its own fields is blocked.
        let own = claim::status(machine, verdict.as_ref(), unrecorded_lock);
        let blocked_by = match own {
            Status::Free => blocker().and_then(BlockedView::of),
            _ => None,
        };
        let state = match blocked_by {
            Some(_) => Status::Blocked,
            None => own,
        };
        MachineView {
            name: machine.name().to_string(),
            mac: field(Field::Mac),
            ip: field(Field::Ip),
            state: state.as_str(),
            reservation: machine.reservation(),
            reservation_expires: machine.lease().and_then(|l| l.expires),
            reservation_note: machine
                .lease()
                .map(|l| l.note.clone())
                .filter(|n| !n.is_empty()),
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
            job_pid: job.as_ref().and_then(|j| j.pid),
            job_timestamp: job.as_ref().and_then(|j| j.timestamp),
            job: job
                .as_mut()
                .map(|j| std::mem::take(&mut j.label))
                .filter(|l| !l.is_empty()),
            job_user: job.as_mut().and_then(|j| j.user.take()),
            job_host: job.and_then(|j| j.host),
            stale: stale_reason.is_some(),
            blocked_by,
            queue_length: queue.len(),
            queue,
            held_by_lock: verdict == Some(Verdict::HeldByLock) || unrecorded_lock,
            lock_holders: Vec::new(),
            online: None,
            power: None,
            watts: None,
            started_by: machine.started_by(),
            started_for_job: machine.started_for_job(),
            ip_learned: field::is_on(machine.get(Field::IpLearned)),
            last_start: machine
                .get(Field::LastStart)
                .split_whitespace()
                .next()
                .and_then(|t| t.parse().ok()),
            last_start_secs: machine
                .get(Field::LastStart)
                .split_whitespace()
                .nth(1)
                .and_then(|t| t.parse::<f64>().ok())
                .filter(|t| t.is_finite()),
            ready_port: field(Field::ReadyPort),
            readycmd: text(Field::ReadyCmd),
            healthcmd: text(Field::HealthCmd),
            offline_reason: offline.as_ref().map(|o| o.reason.clone()),
            offline_by: offline.as_ref().and_then(|o| o.by.clone()),
            offline_since: offline.as_ref().and_then(|o| o.since),
            failed_starts: machine.failed_starts(),
            power_device: None,
            relay_device: None,
            stale_reason,
            remote_host,
        }
    }

    /// Takes in what a look at the machine saw (see
    /// [`crate::engine::power::Look`]).
    pub fn see(&mut self, seen: &Seen) {
        self.online = seen.reach.map(|reach| match reach {
            Reach::Online => "online",
            Reach::Unreachable => "unreachable",
            Reach::Offline => "offline",
        });
        self.power = seen.power.map(|on| if on { "on" } else { "off" });
        self.watts = seen.watts.filter(|w| w.is_finite());
    }

    /// The Reserved cell: the holder, and when the reservation ends
    /// (`alice until 17:30`).
    pub fn reservation_cell(&self, now: i64) -> String {
        match (&self.reservation, self.reservation_expires) {
            (Some(by), Some(end)) => {
                format!("{by} until {}", crate::text::short_time(end, now))
            }
            (Some(by), None) => by.clone(),
            (None, _) => String::new(),
        }
    }

    /// The IP cell: a learned address says so.
    pub fn ip_cell(&self) -> String {
        match &self.ip {
            Some(ip) if self.ip_learned => format!("{ip} (learned)"),
            Some(ip) => ip.clone(),
            None => String::new(),
        }
    }

    /// The Power cell: `on 12.5 W`, `off`.
    pub fn power_cell(&self) -> String {
        match (self.power, self.watts) {
            (Some(state), Some(watts)) => format!("{state} {watts:.1} W"),
            (Some(state), None) => state.to_string(),
            (None, _) => String::new(),
        }
    }

    /// Whether nothing but its job lock says that its job lives (its mama
    /// is dead or not to be seen, or its record was cleared): then `info`
    /// names the lock's holders.
    pub fn held_by_lock(&self) -> bool {
        self.held_by_lock
    }

    pub fn job_cell(&self) -> String {
        let mut cell = match (&self.job, self.job_pid) {
            (Some(label), _) => label.clone(),
            (None, Some(pid)) => format!("(PID {pid})"),
            (None, None) if self.held_by_lock => "(no record; its job lock is held)".into(),
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

    /// Whether a job is recorded on the machine.
    /// Whether `user` holds the machine: its live job, its reservation or
    /// its start by mama is theirs.
    pub fn held_by(&self, user: &str) -> bool {
        (self.has_job() && !self.stale && self.job_user.as_deref() == Some(user))
            || self.reservation.as_deref() == Some(user)
            || (self.is_started && self.started_by.as_deref() == Some(user))
    }

    fn has_job(&self) -> bool {
        self.job.is_some() || self.job_pid.is_some()
    }

    /// Who claimed the job: `?` where its record does not say.
    pub fn user_cell(&self) -> String {
        match &self.job_user {
            Some(user) => user.clone(),
            None if self.has_job() => "?".into(),
            None => String::new(),
        }
    }

    /// The State cell: the state, the length of the queue, and for a
    /// blocked machine what blocks it.
    pub fn state_cell(&self) -> String {
        let mut cell = self.state.to_string();
        if self.queue_length > 0 {
            cell.push_str(&format!(" +{}", self.queue_length));
        }
        if let Some(blocked) = &self.blocked_by {
            cell.push_str(&format!(" ({})", blocked.summary()));
        }
        cell
    }
}

/// What holds a blocked machine, as `list --json` and `info --json` show
/// it: the machine sharing a resource with it, and what holds that one.
#[derive(Debug, Clone, Serialize)]
pub struct BlockedView {
    /// The machine that holds it.
    pub machine: String,
    /// What holds that machine: `job`, `reserved` or `started`.
    pub reason: &'static str,
    /// The job's claimer (`null` where its record does not say), or the
    /// holder of the reservation; `null` for a hand start.
    pub user: Option<String>,
    pub job: Option<String>,
    pub job_pid: Option<u32>,
    pub job_host: Option<String>,
    /// The resources the two machines share.
    pub resources: Vec<String>,
}

impl BlockedView {
    /// The view of what blocks a machine; none for a held job lock, which
    /// never blocks another machine.
    fn of(blocker: Blocker) -> Option<BlockedView> {
        let resources = blocker.shared;
        let blocked = |machine: String, reason| BlockedView {
            machine,
            reason,
            user: None,
            job: None,
            job_pid: None,
            job_host: None,
            resources: resources.clone(),
        };
        Some(match blocker.hold {
            Busy::Job { machine, job, .. } => BlockedView {
                user: job.user,
                job: Some(job.label).filter(|l| !l.is_empty()),
                job_pid: job.pid,
                job_host: job.host,
                ..blocked(machine, "job")
            },
            Busy::Reserved { machine, by, .. } => BlockedView {
                user: Some(by),
                ..blocked(machine, "reserved")
            },
            Busy::Started { machine, by } => BlockedView {
                user: by,
                ..blocked(machine, "started")
            },
            Busy::Locked => return None,
        })
    }

    /// Short, for the `list` table: `rig1 reserved by alice`.
    fn summary(&self) -> String {
        let user = self.user.as_deref().unwrap_or("?");
        match self.reason {
            "reserved" => format!("{} reserved by {user}", self.machine),
            "started" => match &self.user {
                Some(user) => format!("{} started by {user}", self.machine),
                None => format!("{} started by hand", self.machine),
            },
            _ => format!("{} in use by {user}", self.machine),
        }
    }

    /// Whole, for `info`: the machine, what holds it, the shared resources.
    fn detail(&self) -> String {
        let user = self.user.as_deref().unwrap_or("unknown");
        let what = match self.reason {
            "reserved" => format!("reserved by {user}"),
            "started" => match &self.user {
                Some(user) => format!("started by {user}"),
                None => "started by hand (is_started is set)".to_string(),
            },
            _ => {
                let mut what = match &self.job {
                    Some(label) => format!("job '{label}'"),
                    None => "a job".to_string(),
                };
                if let Some(pid) = self.job_pid {
                    what.push_str(&format!(" (PID {pid})"));
                }
                what.push_str(&format!(" of user {user}"));
                what
            }
        };
        format!(
            "{}, {what}; shares {}",
            self.machine,
            self.resources.join(" ")
        )
    }
}

/// One waiter, as `info` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueView {
    pub pid: u32,
    /// Unix seconds.
    pub since: i64,
    pub user: String,
    pub host: String,
    /// The job's label (`run`); none for `wait`.
    pub job: Option<String>,
}

/// `info --json`: the machine, who waits for it and its last events.
#[derive(Debug, Serialize)]
pub struct InfoView {
    #[serde(flatten)]
    pub machine: MachineView,
    pub queue: Vec<QueueView>,
    /// The processes that hold the machine's job lock, where it is all that
    /// says the job lives (see [`MachineView::held_by_lock`]).
    pub job_lock_holders: Vec<LockHolderView>,
    /// The device it names for an outlet (`pwr_dev`, `pwr_slot`), or `null`.
    pub power_device: Option<NamedView>,
    /// The device it names for a relay (`rly_dev`, `rly_slot`), or `null`.
    pub relay_device: Option<NamedView>,
    pub recent_events: Vec<Event>,
}

/// Events as aligned columns under a header: time, machine, event, job,
/// who, detail.
pub fn events(events: &[Event], indent: &str) -> String {
    events_in_columns(events, indent, &mut [0; 6], true)
}

/// The rows of `events`, in columns at least `widths` wide (which grow to
/// what the rows need, and are kept for the next rows: `log -f` prints
/// each batch under the first one's header, aligned with it), under the
/// header when `header` says.
pub fn events_in_columns(
    events: &[Event],
    indent: &str,
    widths: &mut [usize; 6],
    header: bool,
) -> String {
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
            .map(|cell| printable(&cell).into_owned())
        })
        .collect();
    let titles = ["TIME", "MACHINE", "EVENT", "JOB", "WHO", "DETAIL"].map(String::from);
    for (width, title) in widths.iter_mut().zip(&titles) {
        *width = (*width).max(title.chars().count());
    }
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row = header.then_some(&titles);
    for row in header_row.into_iter().chain(&rows) {
        let mut line = String::from(indent);
        for (cell, width) in row.iter().zip(widths.iter()) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One hold on a machine, as `who` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HoldView {
    pub machine: String,
    /// `job`, `reserved` or `started`.
    pub held: &'static str,
    /// Who holds it (`null` where the record does not say).
    pub user: Option<String>,
    /// The job's label, for a job.
    pub job: Option<String>,
    /// Since when (Unix seconds), where known.
    pub since: Option<i64>,
    /// Until when (Unix seconds): a reservation's lease end.
    pub until: Option<i64>,
}

impl HoldView {
    /// What holds `view`'s machine by its own fields: its live job, its
    /// reservation, its start by mama.
    pub fn of(view: &MachineView) -> Vec<HoldView> {
        let hold = |held, user: Option<String>| HoldView {
            machine: view.name.clone(),
            held,
            user,
            job: None,
            since: None,
            until: None,
        };
        let mut holds = Vec::new();
        if view.has_job() && !view.stale {
            holds.push(HoldView {
                job: view.job.clone(),
                since: view.job_timestamp,
                ..hold("job", view.job_user.clone())
            });
        }
        if let Some(by) = &view.reservation {
            holds.push(HoldView {
                until: view.reservation_expires,
                ..hold("reserved", Some(by.clone()))
            });
        }
        if view.is_started && !view.started_for_job {
            holds.push(HoldView {
                since: view.last_start,
                ..hold("started", view.started_by.clone())
            });
        }
        holds
    }
}

/// The `who` table: one hold a line, in aligned columns.
pub fn holds(holds: &[HoldView], now: i64) -> String {
    let rows: Vec<[String; 5]> = holds
        .iter()
        .map(|h| {
            let what = match &h.job {
                Some(job) => format!("job '{job}'"),
                None => h.held.to_string(),
            };
            [
                h.machine.clone(),
                what,
                h.user.clone().unwrap_or_else(|| "?".into()),
                h.since.map_or_else(|| "-".into(), |t| time_and_age(t, now)),
                h.until.map_or_else(|| "-".into(), local_time),
            ]
            .map(|cell| printable(&cell).into_owned())
        })
        .collect();
    let titles = ["MACHINE", "HELD", "BY", "SINCE", "UNTIL"].map(String::from);
    let mut widths = titles.clone().map(|t| t.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&titles).chain(&rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `list` table; with `colour`, the state and a stale job stand out.
pub fn table(views: &[MachineView], colour: bool, layout: Layout) -> String {
    let now = crate::os::now();
    // The columns of power and reach only where some machine has
    // something to show in them.
    let online = views.iter().any(|v| v.online.is_some());
    let power = views.iter().any(|v| v.power.is_some());
    let vm = views.iter().any(|v| v.only_vm);
    let mut header = vec!["No", "Name", "IP", "MAC", "State"];
    header.extend(online.then_some("Online"));
    header.extend(power.then_some("Power"));
    header.extend(vm.then_some("VM"));
    header.extend(["Reserved", "User", "Job"]);
    let rows: Vec<Vec<(String, Option<Tone>)>> = views
        .iter()
        .enumerate()
        .map(|(no, view)| {
            let plain = |text: String| (printable(&text).into_owned(), None);
            let mut row = vec![
                plain((no + 1).to_string()),
                plain(view.name.clone()),
                plain(view.ip_cell()),
                plain(view.mac.clone().unwrap_or_default()),
                (
                    printable(&view.state_cell()).into_owned(),
                    Tone::of_state(view.state),
                ),
            ];
            if online {
                row.push(plain(view.online.unwrap_or_default().to_string()));
            }
            if power {
                row.push(plain(view.power_cell()));
            }
            if vm {
                row.push(plain(if view.only_vm { "yes" } else { "" }.to_string()));
            }
            row.extend([
                plain(view.reservation_cell(now)),
                plain(view.user_cell()),
                (
                    printable(&view.job_cell()).into_owned(),
                    view.stale.then_some(Tone::Stale),
                ),
            ]);
            row
        })
        .collect();
    toned_grid(&header, rows, colour, layout)
}

/// A table of `header` and `rows` as `layout` says: in boxes on a
/// terminal (fitted to its width: the last column gives way first, a cell
/// too long cut short with `…`), else plain aligned columns. Cells are
/// shown safe for a terminal.
pub fn grid(header: &[&str], rows: Vec<Vec<String>>, layout: Layout) -> String {
    let rows = rows
        .into_iter()
        .map(|row| {
            row.iter()
                .map(|c| (printable(c).into_owned(), None))
                .collect()
        })
        .collect();
    toned_grid(header, rows, false, layout)
}

/// [`grid`] of cells already safe for a terminal, each with the tone it
/// stands out in when `colour`; it ends with a line break.
fn toned_grid(
    header: &[&str],
    rows: Vec<Vec<(String, Option<Tone>)>>,
    colour: bool,
    layout: Layout,
) -> String {
    let width = match layout {
        Layout::Plain => {
            let cells: Vec<Vec<String>> =
                std::iter::once(header.iter().map(|h| h.to_string()).collect())
                    .chain(
                        rows.into_iter()
                            .map(|row| row.into_iter().map(|(c, _)| c).collect()),
                    )
                    .collect();
            return columns(&cells);
        }
        Layout::Terminal { width } => width,
    };
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED);
    match width {
        Some(width) => {
            table
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(width)
                .set_truncation_indicator("…");
        }
        None => {
            table.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    table.set_header(header.to_vec());
    // Whether to colour is decided by the caller (see `style::enabled`),
    // not by comfy-table's own look at stdout.
    table.force_no_tty();
    if colour {
        table.enforce_styling();
    }
    for row in rows {
        let cells = row.into_iter().map(|(text, tone)| {
            let cell = Cell::new(text);
            match tone {
                Some(tone) => tone.cell(cell),
                None => cell,
            }
        });
        let mut row = comfy_table::Row::from(cells);
        row.max_height(1);
        table.add_row(row);
    }
    let mut text = table.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The figures of a row of `stats --json` (and of its totals): durations
/// in seconds, the wait's in seconds to the millisecond.
#[derive(Serialize)]
pub struct FiguresView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only in the totals: how many machines the lab's time is of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machines: Option<usize>,
    pub busy_seconds: i64,
    pub busy_share: f64,
    pub jobs: u64,
    pub failed: u64,
    pub stale_cleared: u64,
    pub wait_median: Option<f64>,
    pub wait_p95: Option<f64>,
    pub longest_hold: i64,
    pub reservations: u64,
    pub reserved_seconds: i64,
}

impl FiguresView {
    fn of(figures: &crate::engine::stats::Figures, by: crate::engine::stats::By) -> FiguresView {
        use crate::engine::stats::By;
        let name = figures.name.clone();
        FiguresView {
            machine: if by == By::Machine {
                name.clone()
            } else {
                None
            },
            user: if by == By::User { name } else { None },
            machines: None,
            busy_seconds: figures.busy,
            // Four places: a share to the hundredth of a percent.
            busy_share: (figures.share * 10000.0).round() / 10000.0,
            jobs: figures.jobs,
            failed: figures.failed,
            stale_cleared: figures.stale_cleared,
            wait_median: figures.wait_median,
            wait_p95: figures.wait_p95,
            longest_hold: figures.longest_hold,
            reservations: figures.reservations,
            reserved_seconds: figures.reserved,
        }
    }
}

/// `stats --json`: the window, its rows and the lab's totals.
#[derive(Serialize)]
pub struct StatsView {
    pub since: i64,
    pub until: i64,
    pub seconds: i64,
    pub by: &'static str,
    pub rows: Vec<FiguresView>,
    pub total: FiguresView,
}

impl StatsView {
    pub fn of(stats: &crate::engine::stats::Stats) -> StatsView {
        use crate::engine::stats::By;
        let mut total = FiguresView::of(&stats.total, stats.by);
        total.machines = Some(stats.machines);
        StatsView {
            since: stats.window.since,
            until: stats.window.until,
            seconds: stats.window.seconds(),
            by: match stats.by {
                By::Machine => "machine",
                By::User => "user",
            },
            rows: stats
                .rows
                .iter()
                .map(|r| FiguresView::of(r, stats.by))
                .collect(),
            total,
        }
    }
}

/// `stats`: the window, a table of a row a machine (or user), and the
/// lab's totals on a line.
pub fn stats(stats: &crate::engine::stats::Stats, layout: Layout) -> String {
    use crate::engine::stats::{By, Figures};
    let length = |secs: i64| seconds(std::time::Duration::from_secs(secs.max(0) as u64));
    let wait = |w: Option<f64>| match w {
        Some(w) => seconds(std::time::Duration::from_secs_f64(w.clamp(0.0, 1e12))),
        None => "-".to_string(),
    };
    let share = |f: &Figures| format!("{:.1}%", f.share * 100.0);
    let first = match stats.by {
        By::Machine => "Machine",
        By::User => "User",
    };
    let header = [
        first,
        "Busy",
        "Busy time",
        "Jobs",
        "Failed",
        "Stale",
        "Wait p50",
        "Wait p95",
        "Longest hold",
        "Reservations",
        "Reserved",
    ];
    let rows: Vec<Vec<String>> = stats
        .rows
        .iter()
        .map(|f| {
            vec![
                f.name.clone().unwrap_or_default(),
                share(f),
                length(f.busy),
                f.jobs.to_string(),
                f.failed.to_string(),
                f.stale_cleared.to_string(),
                wait(f.wait_median),
                wait(f.wait_p95),
                length(f.longest_hold),
                f.reservations.to_string(),
                length(f.reserved),
            ]
        })
        .collect();
    let window = &stats.window;
    let mut text = format!(
        "From {} to {} ({})\n",
        local_time(window.since),
        local_time(window.until),
        length(window.seconds())
    );
    if !rows.is_empty() {
        text.push_str(&grid(&header, rows, layout));
    }
    let t = &stats.total;
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    text.push_str(&format!(
        "Lab: {} busy {} ({}), {}, {} failed, {} stale cleared, wait p50 {} p95 {}, \
         longest hold {}, {} ({})\n",
        plural(stats.machines as u64, "machine", "machines") + ",",
        share(t),
        length(t.busy),
        plural(t.jobs, "job", "jobs"),
        t.failed,
        t.stale_cleared,
        wait(t.wait_median),
        wait(t.wait_p95),
        length(t.longest_hold),
        plural(t.reservations, "reservation", "reservations"),
        length(t.reserved),
    ));
    text
}

/// Rows of cells as plain text in aligned columns (two spaces between),
/// trailing spaces trimmed, a line each.
pub fn columns(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (at, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(at) {
                Some(width) => *width = (*width).max(w),
                None => widths.push(w),
            }
        }
    }
    use std::fmt::Write as _;
    let mut out = String::with_capacity(rows.len() * (widths.iter().sum::<usize>() + 8));
    for row in rows {
        let start = out.len();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(out, "{cell:<width$}  ");
        }
        let kept = out[start..].trim_end().len();
        out.truncate(start + kept);
        out.push('\n');
    }
    out
}

/// How many holders of a job lock `info` names, one a line.
const MOST_HOLDERS_SHOWN: usize = 5;

/// The `info` text: every field that is set, then the job; with `colour`,
/// the state and a stale job stand out.
pub fn info(view: &MachineView, now: i64, colour: bool) -> String {
    let mut lines: Vec<(&str, String)> = vec![("Name:", printable(&view.name).into_owned())];
    // Values are shown safe for a terminal; the two that mama paints are
    // its own words.
    let mut add = |label, value: &Option<String>| {
        if let Some(value) = value {
            let value = match label {
                "State:" | "Job status:" => value.clone(),
                _ => printable(value).into_owned(),
            };
            lines.push((label, value));
        }
    };
    add("MAC:", &view.mac);
    add("IP:", &view.ip.as_ref().map(|_| view.ip_cell()));
    add("Online:", &view.online.map(str::to_string));
    add("Power:", &view.power.map(|_| view.power_cell()));
    add(
        "State:",
        &Some(style::paint(view.state, Tone::of_state(view.state), colour)),
    );
    add(
        "Out of service:",
        &view.offline_reason.as_ref().map(|reason| {
            let mark = crate::model::offline::Offline {
                reason: reason.clone(),
                by: view.offline_by.clone(),
                since: view.offline_since,
            };
            mark.detail()
        }),
    );
    add(
        "Blocked by:",
        &view.blocked_by.as_ref().map(BlockedView::detail),
    );
    add(
        "Reserved by:",
        &view
            .reservation
            .as_ref()
            .map(|by| match view.reservation_expires {
                Some(end) => format!("{by} until {}", time_and_when(end, now)),
                None => by.clone(),
            }),
    );
    add("Note:", &view.reservation_note);
    add("Resources:", &view.resources.as_ref().map(|r| r.join(" ")));
    let started = match (&view.started_by, view.started_for_job) {
        (Some(by), true) => format!("yes, by {by}, for its job (run --boot)"),
        (Some(by), false) => format!("yes, by {by}"),
        (None, _) => "yes (by hand)".to_string(),
    };
    add("Started:", &view.is_started.then_some(started));
    add(
        "Last start:",
        &view.last_start.map(|t| match view.last_start_secs {
            Some(took) => format!(
                "{}, ready after {}",
                time_and_age(t, now),
                crate::text::seconds(
                    std::time::Duration::try_from_secs_f64(took).unwrap_or_default()
                )
            ),
            None => time_and_age(t, now),
        }),
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
    add("Ready port:", &view.ready_port);
    add("Ready command:", &view.readycmd);
    add(
        "Failed starts:",
        &(view.failed_starts > 0).then(|| format!("{} in a row", view.failed_starts)),
    );
    add("Health command:", &view.healthcmd);
    add(
        "Power device:",
        &view.power_device.as_ref().map(NamedView::text),
    );
    add("Relay:", &view.relay_device.as_ref().map(NamedView::text));
    if view.has_job() {
        add("Running job:", &Some(view.job.clone().unwrap_or_default()));
        add(
            "Job user:",
            &Some(
                view.job_user
                    .clone()
                    .unwrap_or_else(|| "unknown".to_string()),
            ),
        );
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
    } else if view.held_by_lock {
        add(
            "Job status:",
            &Some(
                "no job recorded, but processes of a job whose record was cleared still \
                 hold its job lock"
                    .to_string(),
            ),
        );
    }
    let shown = view.lock_holders.len().min(MOST_HOLDERS_SHOWN);
    for (n, holder) in view.lock_holders[..shown].iter().enumerate() {
        lines.push((if n == 0 { "Held by:" } else { "" }, holder.text()));
    }
    if view.lock_holders.len() > shown {
        lines.push(("", format!("and {} more", view.lock_holders.len() - shown)));
    }
    for (place, waiter) in view.queue.iter().enumerate() {
        let label = if place == 0 { "Waiting:" } else { "" };
        let job = match &waiter.job {
            Some(job) => format!("job '{}'", printable(job)),
            None => "wait".to_string(),
        };
        lines.push((
            label,
            format!(
                "{}. {}@{} (PID {}), {job}, since {}",
                place + 1,
                printable(&waiter.user),
                printable(&waiter.host),
                waiter.pid,
                time_and_age(waiter.since, now)
            ),
        ));
    }
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(label, value)| format!("{label:<width$} {value}\n"))
        .collect()
}

/// The lab's settings as `setting --json` prints them: an object of every
/// setting by name, its value (`null` where it has none).
pub struct SettingsView(Vec<(&'static str, Option<String>)>);

impl SettingsView {
    pub fn of(lab: &crate::model::Lab) -> SettingsView {
        SettingsView(
            Setting::ALL
                .into_iter()
                .map(|s| (s.name(), lab.setting(s).map(str::to_string)))
                .collect(),
        )
    }
}

impl Serialize for SettingsView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A setting's value for people: as stored, safe for a terminal, and a
/// duration also as people write it (`28800 (8h 0m)`).
pub fn setting_value(setting: Setting, value: &str) -> String {
    let shown = printable(value).into_owned();
    match setting {
        Setting::LongestReservation => match crate::model::setting::parse_duration(value) {
            Ok(length) => format!("{shown} ({})", seconds(length)),
            Err(_) => shown,
        },
        Setting::HistoryMaxSize => match value.trim().parse::<u64>() {
            Ok(bytes) => format!("{shown} ({})", crate::text::bytes(bytes)),
            Err(_) => shown,
        },
        _ => shown,
    }
}

/// `setting`: every lab setting, a line each: its name and its value
/// (nothing where it has none).
pub fn settings(lab: &crate::model::Lab) -> String {
    let width = Setting::ALL
        .iter()
        .map(|s| s.name().len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for setting in Setting::ALL {
        let value = lab
            .setting(setting)
            .map(|v| setting_value(setting, v))
            .unwrap_or_default();
        let line = format!("{:width$}  {value}", setting.name());
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn del_and_c1_controls_are_escaped_in_json() {
        let raw = serde_json::to_string_pretty(&["\u{80}\u{9f}\u{7f}é\u{1b}"]).unwrap_or_default();
        let safe = json_safe(raw);
        assert_eq!(safe, "[\n  \"\\u0080\\u009f\\u007fé\\u001b\"\n]");
        assert_eq!(
            serde_json::from_str::<Vec<String>>(&safe).ok(),
            Some(vec!["\u{80}\u{9f}\u{7f}é\u{1b}".to_string()])
        );
    }

    #[test]
    fn json_is_written_as_the_safe_text_of_the_whole() {
        #[derive(Serialize)]
        struct Sample<'a> {
            name: &'a str,
            list: Vec<Option<&'a str>>,
            empty: Vec<u8>,
            number: u64,
        }
        for text in [
            "plain",
            "\u{80}a\u{9f}\u{7f}é\u{1b}\"\\",
            "",
            "\u{85}\u{85}",
            "ok\u{c2}",
        ] {
            let value = Sample {
                name: text,
                list: vec![Some(text), None],
                empty: Vec::new(),
                number: 7,
            };
            let whole = json_safe(serde_json::to_string_pretty(&value).unwrap_or_default());
            let mut written = Vec::new();
            assert!(write_json(&mut written, &value).is_ok());
            assert_eq!(String::from_utf8(written).ok(), Some(whole), "{text:?}");
        }
    }
}
