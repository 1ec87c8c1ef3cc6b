//! The lab as mama's engine sees it, whatever stores it: the machines in
//! their order, each with the text of every field it has, as read.
//!
//! A transaction changes a [`Lab`] and the lab records each change at the
//! level of a field ([`Change`]), with the [`Event`]s that tell of them. A
//! backend then replays the changes onto what it stores: the file backend
//! onto its lossless XML tree, so that every element, attribute and comment
//! mama does not know stays where it was, and a lab whose transaction
//! changed nothing is never written.
//!
//! Reading a field never changes anything; writing one records a change
//! only when its value really changes.

pub mod device;
pub mod event;
pub mod field;
pub mod lease;
pub mod offline;
pub mod queue;
pub mod setting;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::Error;
use crate::os::Origin;
use device::{BrokenDevice, Device, Use};
use event::{Event, Kind};
use field::{Field, check_value};
use lease::Lease;
use setting::Setting;

/// The job recorded on a machine, as written (unparsable numbers read as
/// absent, so a damaged PID or timestamp can never keep a machine busy).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobRecord {
    pub label: String,
    pub pid: Option<u32>,
    pub timestamp: Option<i64>,
    /// Who claimed it; records of other tools, and those written by hand,
    /// have none (it is never guessed).
    pub user: Option<String>,
    pub host: Option<String>,
    /// Where the claim was made; records of other tools have none.
    pub origin: Option<Origin>,
}

/// One machine: the text of each of its fields, as read.
///
/// A backend that read the lab from one text (the state file) lends it to
/// every machine, and a field is a span of it: reading a lab of ten
/// thousand machines then copies no field and allocates nothing a field.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The text the spans are of.
    source: Option<Arc<String>>,
    /// Each upstream field's text, by its place among them ([`DENSE`]):
    /// absent where the machine has no such field at all (which is not the
    /// same as an empty one: a field set to empty text is created).
    fields: [Slot; UPSTREAM_FIELDS],
    /// mama's own fields the machine has, which most machines lack: a lab
    /// of ten thousand machines holds no slot for them.
    own_fields: Vec<(Field, Slot)>,
    /// Texts of the machine's own: decoded values, and values set.
    owned: Vec<String>,
    /// The fields that are not plain text (in the state file: an element
    /// that holds elements of its own), a bit each by [`Field::index`];
    /// mama will not overwrite them.
    structured: u64,
    /// The lease of its reservation, where it has one that counts (see
    /// [`Lab::with_leases`]).
    lease: Option<Box<Leased>>,
}

/// A machine's lease, and whether it was over when last judged.
#[derive(Debug, Clone)]
struct Leased {
    lease: Lease,
    over: bool,
}

/// Where a field's text is, in eight bytes (a lab of ten thousand machines
/// holds a quarter of a million): absent, the span `start..end` of the
/// source, or (`start` is `u32::MAX`) the machine's own text `end - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    start: u32,
    end: u32,
}

impl Slot {
    const ABSENT: Slot = Slot {
        start: u32::MAX,
        end: 0,
    };

    fn owned(at: usize) -> Slot {
        Slot {
            start: u32::MAX,
            end: u32::try_from(at + 1).unwrap_or(0),
        }
    }
}

/// How many fields upstream writes in every machine.
const UPSTREAM_FIELDS: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < Field::ALL.len() {
        if Field::ALL[i].is_upstream() {
            n += 1;
        }
        i += 1;
    }
    n
};

/// Each field's place in [`Machine::fields`], by [`Field::index`]; `NOT_DENSE`
/// for mama's own fields, which are kept apart.
const DENSE: [u8; Field::ALL.len()] = {
    let mut places = [NOT_DENSE; Field::ALL.len()];
    let mut n = 0;
    let mut i = 0;
    while i < Field::ALL.len() {
        if Field::ALL[i].is_upstream() {
            places[i] = n;
            n += 1;
        }
        i += 1;
    }
    places
};
const NOT_DENSE: u8 = u8::MAX;

// Written out: `Default` is derived for arrays of at most 32.
impl Default for Machine {
    fn default() -> Machine {
        Machine {
            source: None,
            fields: [Slot::ABSENT; UPSTREAM_FIELDS],
            own_fields: Vec::new(),
            owned: Vec::new(),
            structured: 0,
            lease: None,
        }
    }
}

impl Default for Slot {
    fn default() -> Slot {
        Slot::ABSENT
    }
}

fn bit(field: Field) -> u64 {
    1 << field.index()
}

impl PartialEq for Machine {
    fn eq(&self, other: &Machine) -> bool {
        Field::ALL
            .into_iter()
            .all(|f| self.field(f) == other.field(f))
            && self.structured == other.structured
    }
}

impl Eq for Machine {}

impl Machine {
    /// A machine as a backend reads it: the text of the fields it has, and
    /// those of them that hold more than plain text.
    pub fn read(
        fields: impl IntoIterator<Item = (Field, String)>,
        structured: impl IntoIterator<Item = Field>,
    ) -> Machine {
        let mut machine = Machine::default();
        for (field, text) in fields {
            machine.put(field, Some(text));
        }
        machine.structured = structured.into_iter().fold(0, |bits, f| bits | bit(f));
        machine
    }

    /// A machine whose fields are spans of `source`, given one by one with
    /// [`Machine::read_span`] and [`Machine::read_text`].
    pub fn of(source: &Arc<String>) -> Machine {
        Machine {
            source: Some(Arc::clone(source)),
            ..Machine::default()
        }
    }

    /// Reads `field` as the bytes `start..end` of the source, unless the
    /// machine has it already (the first one read counts); false when the
    /// span is not one of the source (then nothing is read).
    pub fn read_span(&mut self, field: Field, start: usize, end: usize, structured: bool) -> bool {
        let fits = self
            .source
            .as_ref()
            .is_some_and(|s| start <= end && s.is_char_boundary(start) && s.is_char_boundary(end));
        let (Ok(from), Ok(to)) = (u32::try_from(start), u32::try_from(end)) else {
            return false;
        };
        if !fits {
            return false;
        }
        if from == u32::MAX {
            return false;
        }
        if self.slot(field) == Slot::ABSENT {
            *self.slot_mut(field) = Slot {
                start: from,
                end: to,
            };
            if structured {
                self.structured |= bit(field);
            }
        }
        true
    }

    /// Reads `field` as `text`, unless the machine has it already.
    pub fn read_text(&mut self, field: Field, text: String, structured: bool) {
        if self.slot(field) == Slot::ABSENT {
            self.put(field, Some(text));
            if structured {
                self.structured |= bit(field);
            }
        }
    }

    /// A field's text, `None` where the machine has no such field.
    fn field(&self, field: Field) -> Option<&str> {
        match self.slot(field) {
            Slot::ABSENT => None,
            Slot {
                start: u32::MAX,
                end,
            } => self.owned.get(end as usize - 1).map(String::as_str),
            Slot { start, end } => self.source.as_ref()?.get(start as usize..end as usize),
        }
    }

    /// Sets a field's text (`None`: the machine has no such field).
    fn put(&mut self, field: Field, text: Option<String>) {
        let owned_count = self.owned.len();
        let current = self.slot(field);
        let new = match (text, current) {
            (None, _) => Slot::ABSENT,
            (
                Some(text),
                Slot {
                    start: u32::MAX,
                    end,
                },
            ) if end > 0 && (end as usize) <= owned_count => {
                self.owned[end as usize - 1] = text;
                current
            }
            (Some(text), _) => {
                self.owned.push(text);
                Slot::owned(self.owned.len() - 1)
            }
        };
        *self.slot_mut(field) = new;
    }

    /// Where `field`'s text is.
    fn slot(&self, field: Field) -> Slot {
        match DENSE[field.index()] {
            NOT_DENSE => self
                .own_fields
                .iter()
                .find(|(f, _)| *f == field)
                .map_or(Slot::ABSENT, |&(_, slot)| slot),
            at => self.fields[at as usize],
        }
    }

    /// Where `field`'s text is, to change (mama's own fields get a slot
    /// when first asked).
    fn slot_mut(&mut self, field: Field) -> &mut Slot {
        match DENSE[field.index()] {
            NOT_DENSE => {
                let at = match self.own_fields.iter().position(|(f, _)| *f == field) {
                    Some(at) => at,
                    None => {
                        self.own_fields.push((field, Slot::ABSENT));
                        self.own_fields.len() - 1
                    }
                };
                &mut self.own_fields[at].1
            }
            at => &mut self.fields[at as usize],
        }
    }

    /// A field's text; empty when the field is missing or empty.
    pub fn get(&self, field: Field) -> &str {
        self.field(field).unwrap_or("")
    }

    /// Whether the machine has this field (perhaps empty).
    /// Where `field`'s text stands in the source the machine was read
    /// from (byte offsets), when it is a span of it: not when the machine
    /// lacks the field or holds its text as its own. Tells without a look
    /// at the text.
    pub fn span(&self, field: Field) -> Option<(usize, usize)> {
        match self.slot(field) {
            Slot::ABSENT
            | Slot {
                start: u32::MAX, ..
            } => None,
            Slot { start, end } => Some((start as usize, end as usize)),
        }
    }

    pub fn has(&self, field: Field) -> bool {
        self.slot(field) != Slot::ABSENT
    }

    pub fn name(&self) -> &str {
        self.get(Field::Name)
    }

    /// Upstream writes `1` for a machine powered up by hand; empty or `0` is off.
    pub fn is_started(&self) -> bool {
        field::is_on(self.get(Field::IsStarted))
    }

    /// Who started the machine with mama, where mama did.
    pub fn started_by(&self) -> Option<String> {
        non_empty(self.get(Field::StartedBy))
    }

    /// Whether the machine's start belongs to its job (`run --boot`).
    pub fn started_for_job(&self) -> bool {
        self.is_started() && field::is_on(self.get(Field::StartedForJob))
    }

    pub fn only_vm(&self) -> bool {
        field::is_on(self.get(Field::OnlyVm))
    }

    /// The user holding a reservation, if any: none once the
    /// reservation's lease is over (every reader judges it ended; the
    /// next transaction clears it: see [`Lab::end_leases`]).
    pub fn reservation(&self) -> Option<String> {
        if self.lease.as_ref().is_some_and(|l| l.over) {
            return None;
        }
        non_empty(self.get(Field::Reservation))
    }

    /// The lease of the machine's reservation, while it lasts.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| !l.over).map(|l| &l.lease)
    }

    /// The lease of the machine's reservation once it is over, until a
    /// transaction ends the reservation (see [`Lab::end_leases`]).
    pub fn ended_lease(&self) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.over).map(|l| &l.lease)
    }

    pub fn resources(&self) -> Vec<String> {
        self.get(Field::Resources)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// The places of the waiters for this machine, in arrival order.
    pub fn queue(&self) -> Vec<queue::Waiter> {
        let mut waiters = queue::parse(self.get(Field::JobQueue));
        waiters.sort_by_key(|w| w.ticket);
        waiters
    }

    /// The job on this machine: a label or a PID makes one.
    pub fn job(&self) -> Option<JobRecord> {
        // The label is kept exactly as written; only a blank one is none.
        let label = self.get(Field::Job);
        let label = if label.trim().is_empty() {
            String::new()
        } else {
            label.to_string()
        };
        let pid_text = self.get(Field::JobPid);
        if label.is_empty() && pid_text.trim().is_empty() {
            return None;
        }
        Some(JobRecord {
            label,
            pid: pid_text.trim().parse().ok().filter(|&pid| pid > 0),
            timestamp: self.get(Field::JobTimestamp).trim().parse().ok(),
            user: non_empty(self.get(Field::JobUser)),
            host: non_empty(self.get(Field::JobHost)),
            origin: Origin::parse(self.get(Field::JobOrigin)),
        })
    }
}

fn non_empty(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// One change of a transaction, at the level of a field, in the order made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A machine's field now holds `value` (the field is created, in
    /// upstream order, where the machine had none).
    Set {
        machine: String,
        field: Field,
        value: String,
    },
    /// A field that upstream does not know was removed from a machine, so
    /// that a released machine looks exactly as upstream would write it.
    Unset { machine: String, field: Field },
    /// A machine was added after the last one, with every upstream field.
    Add(NewMachine),
    /// A machine was added after the last one as this element of the
    /// upstream format (`import`): every child and attribute it has,
    /// known to mama or not, is kept.
    AddElement { name: String, element: String },
    /// The machine of this name was removed.
    Remove(String),
    /// A power device was defined (after the last one).
    AddDevice(Device),
    /// The power device of this name was removed (the first of that name,
    /// broken or not).
    RemoveDevice(String),
    /// The lab's devices, every one, were replaced by these `<device>`
    /// elements of the upstream format, each whole, in order (`import`:
    /// every child and attribute kept, broken ones too).
    ReplaceDevices(Vec<String>),
    /// A lab setting now holds this value (empty: it is removed).
    SetSetting(Setting, String),
    /// The lab's settings, every one, were replaced by this element of the
    /// upstream format (`import`: unknown children kept), or removed.
    ReplaceSettings(Option<String>),
    /// The machine's reservation has this lease now, and no other; `None`:
    /// none (the machine may be gone).
    SetLease {
        machine: String,
        lease: Option<Lease>,
    },
}

impl Change {
    /// Whether this change is to the document around the machines (the
    /// lab's devices, settings and leases), not to a machine.
    pub fn is_document(&self) -> bool {
        matches!(
            self,
            Change::AddDevice(_)
                | Change::RemoveDevice(_)
                | Change::ReplaceDevices(_)
                | Change::SetSetting(..)
                | Change::ReplaceSettings(_)
                | Change::SetLease { .. }
        )
    }
}

/// A writable view of one machine. Every write is checked and records a
/// change only when a value really changes.
pub struct MachineMut<'a> {
    machine: &'a mut Machine,
    changes: &'a mut Vec<Change>,
}

impl MachineMut<'_> {
    pub fn view(&self) -> &Machine {
        self.machine
    }

    /// Sets a field, creating it in upstream order when missing.
    pub fn set(&mut self, field: Field, value: &str) -> Result<(), Error> {
        check_value(field, value)?;
        match self.machine.field(field) {
            Some(_) if self.machine.structured & bit(field) != 0 => {
                return Err(Error::Invalid(format!(
                    "field <{}> holds elements of its own; mama will not overwrite it \
                     (edit the state file by hand)",
                    field.tag()
                )));
            }
            Some(current) if current == value => return Ok(()),
            Some(_) => {}
            None if value.is_empty() && !field.is_upstream() => return Ok(()),
            None => {}
        }
        let machine = self.machine.name().to_string();
        self.machine.put(field, Some(value.to_string()));
        self.changes.push(Change::Set {
            machine: machine.clone(),
            field,
            value: value.to_string(),
        });
        // A lease belongs to its user's reservation, and ends with it.
        if field == Field::Reservation
            && self
                .machine
                .lease
                .as_ref()
                .is_some_and(|l| l.lease.user != value.trim())
        {
            self.machine.lease = None;
            self.changes.push(Change::SetLease {
                machine,
                lease: None,
            });
        }
        Ok(())
    }

    /// Empties a field; a field that upstream does not know is removed, so a
    /// released machine looks exactly as upstream would write it.
    pub fn clear(&mut self, field: Field) -> Result<(), Error> {
        if field.is_upstream() {
            return self.set(field, "");
        }
        if self.machine.has(field) {
            let machine = self.machine.name().to_string();
            self.machine.put(field, None);
            self.machine.structured &= !bit(field);
            self.changes.push(Change::Unset { machine, field });
        }
        Ok(())
    }

    /// Stores the waiters' places; none removes the field.
    pub fn set_queue(&mut self, waiters: &[queue::Waiter]) -> Result<(), Error> {
        if waiters.is_empty() {
            self.clear(Field::JobQueue)
        } else {
            self.set(Field::JobQueue, &queue::encode(waiters))
        }
    }

    /// Records a job (every job field).
    pub fn set_job(&mut self, job: &JobRecord) -> Result<(), Error> {
        self.set(Field::Job, &job.label)?;
        self.set(
            Field::JobPid,
            &job.pid.map(|p| p.to_string()).unwrap_or_default(),
        )?;
        self.set(
            Field::JobTimestamp,
            &job.timestamp.map(|t| t.to_string()).unwrap_or_default(),
        )?;
        match &job.user {
            Some(user) => self.set(Field::JobUser, user)?,
            None => self.clear(Field::JobUser)?,
        }
        match &job.host {
            Some(host) => self.set(Field::JobHost, host)?,
            None => self.clear(Field::JobHost)?,
        }
        match &job.origin {
            Some(origin) => self.set(Field::JobOrigin, &origin.to_string()),
            None => self.clear(Field::JobOrigin),
        }
    }

    /// Forgets that the machine was started: `is_started`, who started it
    /// and for what, and the IP that the start learned (never one a person
    /// set).
    pub fn forget_start(&mut self) -> Result<(), Error> {
        if field::is_on(self.machine.get(Field::IpLearned)) {
            self.set(Field::Ip, "")?;
        }
        self.clear(Field::IpLearned)?;
        self.set(Field::IsStarted, "")?;
        self.clear(Field::StartedBy)?;
        self.clear(Field::StartedForJob)
    }

    /// Forgets the job: every field of it, mama's own included.
    pub fn clear_job(&mut self) -> Result<(), Error> {
        for field in Field::ALL.into_iter().filter(|f| f.is_job()) {
            self.clear(field)?;
        }
        Ok(())
    }
}

/// A machine to add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMachine {
    pub name: String,
    pub mac: String,
    pub ip: String,
    pub only_vm: bool,
    pub resources: String,
}

impl NewMachine {
    /// The text of each upstream field of the new machine, in upstream
    /// order: what upstream writes into a new machine, and what was given.
    pub fn fields(&self) -> impl Iterator<Item = (Field, &str)> {
        Field::ALL
            .into_iter()
            .filter(|f| f.is_upstream())
            .map(|field| {
                let value = match field {
                    Field::Name => self.name.as_str(),
                    Field::Mac => self.mac.as_str(),
                    Field::Ip => self.ip.as_str(),
                    Field::OnlyVm if self.only_vm => "1",
                    Field::Resources => self.resources.as_str(),
                    other => other.initial(),
                };
                (field, value)
            })
    }
}

/// The whole lab of one transaction: the machines as read, the changes
/// made to them, and the events that tell of them.
#[derive(Debug, Clone, Default)]
pub struct Lab {
    machines: Vec<Machine>,
    /// The power devices, in their order.
    devices: Vec<Device>,
    /// The `<device>` elements mama cannot use (see [`BrokenDevice`]).
    broken: Vec<BrokenDevice>,
    /// The lab's settings that have a value.
    settings: Vec<(Setting, String)>,
    /// The machines that have a lease (some may have lost it since).
    leased: Vec<String>,
    /// The machines named by leases that do not count (their reservation
    /// is another's or none, the machine is gone, a second lease): those
    /// leases are removed by the next transaction (see
    /// [`Lab::end_leases`]).
    stale_leases: Vec<String>,
    changes: Vec<Change>,
    /// Events of this transaction, committed with it.
    events: Vec<Event>,
}

impl Lab {
    /// An empty lab: what `add` or `import` start from where there is none.
    pub fn empty() -> Lab {
        Lab::default()
    }

    /// The lab with these settings (as read).
    pub fn with_settings(mut self, settings: Vec<(Setting, String)>) -> Lab {
        self.settings = settings;
        self
    }

    /// A setting's value; `None` where it has none.
    pub fn setting(&self, setting: Setting) -> Option<&str> {
        self.settings
            .iter()
            .find(|(s, _)| *s == setting)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.trim().is_empty())
    }

    /// The settings that have a value.
    pub fn settings(&self) -> &[(Setting, String)] {
        &self.settings
    }

    /// Replaces every setting with `settings`, read from `element` (the
    /// `<lab_settings>` element of the upstream format, whole; `None`: the
    /// lab has none), for `import`. Returns the settings whose value
    /// changed, with their new values (empty: unset).
    pub fn replace_settings(
        &mut self,
        settings: Vec<(Setting, String)>,
        element: Option<String>,
    ) -> Vec<(Setting, String)> {
        let value = |list: &[(Setting, String)], s: Setting| {
            list.iter()
                .find(|(x, _)| *x == s)
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let changed = Setting::ALL
            .into_iter()
            .filter(|&s| value(&self.settings, s) != value(&settings, s))
            .map(|s| (s, value(&settings, s)))
            .collect();
        self.settings = settings;
        self.changes.push(Change::ReplaceSettings(element));
        changed
    }

    /// The lab with these leases (as read: each with the machine it
    /// names). A lease counts where its machine's reservation is its
    /// user's (the first lease of a machine, if several); it is judged
    /// over or not now. The others are removed by the next transaction.
    pub fn with_leases(mut self, leases: Vec<(String, Lease)>) -> Lab {
        if leases.is_empty() {
            return self;
        }
        let now = SystemTime::now();
        let at: HashMap<&str, usize> = self
            .machines
            .iter()
            .enumerate()
            .map(|(at, m)| (m.name(), at))
            .rev()
            .collect();
        let mut found: Vec<(usize, String, Lease)> = Vec::new();
        for (name, lease) in leases {
            let counts = at.get(name.as_str()).copied().filter(|&i| {
                let machine = &self.machines[i];
                !found.iter().any(|(j, ..)| *j == i)
                    && !lease.user.trim().is_empty()
                    && non_empty(machine.get(Field::Reservation)).as_deref()
                        == Some(lease.user.as_str())
            });
            match counts {
                Some(i) => found.push((i, name, lease)),
                None if !self.stale_leases.contains(&name) => self.stale_leases.push(name),
                None => {}
            }
        }
        for (i, name, lease) in found {
            let over = lease.is_over(now);
            self.machines[i].lease = Some(Box::new(Leased { lease, over }));
            self.leased.push(name);
        }
        self
    }

    /// Gives `machine`'s reservation this lease (its user must hold the
    /// reservation), or none.
    pub fn set_lease(&mut self, machine: &str, lease: Option<Lease>) -> Result<(), Error> {
        let Some(at) = self.machines.iter().position(|m| m.name() == machine) else {
            return Err(self.unknown(machine));
        };
        let held = &mut self.machines[at];
        if let Some(lease) = &lease
            && non_empty(held.get(Field::Reservation)).as_deref() != Some(lease.user.as_str())
        {
            return Err(Error::Invalid(format!(
                "internal error: a lease of {machine} for {}, who does not hold its reservation",
                lease.user
            )));
        }
        if held.lease.is_none() && lease.is_none() {
            return Ok(());
        }
        held.lease = lease
            .clone()
            .map(|lease| Box::new(Leased { lease, over: false }));
        if lease.is_some() && !self.leased.iter().any(|n| n == machine) {
            self.leased.push(machine.to_string());
        }
        self.stale_leases.retain(|n| n != machine);
        self.changes.push(Change::SetLease {
            machine: machine.to_string(),
            lease,
        });
        Ok(())
    }

    /// Ends, as of `now`, every reservation whose lease is over: the
    /// reservation and its lease are cleared, and an `expired` event
    /// recorded; the leases that do not count are removed. Every
    /// transaction does this first, so what it judges and what it writes
    /// agree: a lease that ends while it runs ends in the next one.
    pub fn end_leases(&mut self, now: SystemTime) -> Result<(), Error> {
        for name in std::mem::take(&mut self.leased) {
            let Some(machine) = self.machines.iter_mut().find(|m| m.name() == name) else {
                continue;
            };
            let Some(held) = machine.lease.as_mut() else {
                continue;
            };
            if !held.lease.is_over(now) {
                held.over = false;
                self.leased.push(name);
                continue;
            }
            let lease = held.lease.clone();
            // The reservation's end takes the lease with it.
            self.get_mut(&name)?.set(Field::Reservation, "")?;
            let mut detail = format!(
                "the reservation of {} ended at {}",
                lease.user,
                crate::text::local_time(lease.expires.unwrap_or_default())
            );
            if !lease.note.is_empty() {
                detail.push_str(&format!(" ({})", lease.note));
            }
            self.record(Event::new(Kind::Expired, &name).detail(detail));
        }
        for name in std::mem::take(&mut self.stale_leases) {
            let lease = self.machine(&name).and_then(|m| m.lease.clone());
            self.changes.push(Change::SetLease {
                machine: name,
                lease: lease.map(|l| l.lease),
            });
        }
        Ok(())
    }

    /// Sets a setting (checked and normalised: see
    /// [`setting::normalize`]); an empty value removes it. A value equal to
    /// the current one changes nothing.
    pub fn set_setting(&mut self, setting: Setting, value: &str) -> Result<(), Error> {
        let value = setting::normalize(setting, value)?;
        if self.setting(setting).unwrap_or("") == value {
            return Ok(());
        }
        self.settings.retain(|(s, _)| *s != setting);
        if !value.is_empty() {
            self.settings.push((setting, value.clone()));
        }
        self.changes.push(Change::SetSetting(setting, value));
        Ok(())
    }

    /// The lab of these machines, in their order, unchanged.
    pub fn new(machines: Vec<Machine>) -> Lab {
        Lab {
            machines,
            ..Lab::default()
        }
    }

    /// The lab with these power devices (as read).
    pub fn with_devices(mut self, devices: Vec<Device>) -> Lab {
        self.devices = devices;
        self
    }

    /// The lab with these `<device>` elements it cannot use (as read).
    pub fn with_broken_devices(mut self, broken: Vec<BrokenDevice>) -> Lab {
        self.broken = broken;
        self
    }

    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.iter()
    }

    /// The `<device>` elements mama cannot use, in their order.
    pub fn broken_devices(&self) -> impl Iterator<Item = &BrokenDevice> {
        self.broken.iter()
    }

    /// The device called `name`, or an error naming it.
    pub fn device(&self, name: &str) -> Result<&Device, Error> {
        if let Some(device) = self.devices.iter().find(|d| d.name == name) {
            return Ok(device);
        }
        Err(Error::Invalid(
            match self.broken.iter().find(|b| b.name == name) {
                Some(broken) => format!(
                    "power device '{name}' is broken: {} (see `mama device list`)",
                    broken.reason
                ),
                None => {
                    format!("no power device named '{name}' in the lab (see `mama device list`)")
                }
            },
        ))
    }

    /// The machines that name the device `name`, in their order, each with
    /// how it names it and the slot it gives (as written); a machine that
    /// names it twice (outlet and relay) is there twice.
    pub fn device_users(&self, name: &str) -> Vec<(&Machine, Use, &str)> {
        let mut users = Vec::new();
        for machine in self.machines() {
            if machine.get(Field::PwrDev) == name {
                users.push((machine, Use::Outlet, machine.get(Field::PwrSlot)));
            }
            if machine.get(Field::RlyDev) == name {
                users.push((machine, Use::Relay, machine.get(Field::RlySlot)));
            }
        }
        users
    }

    /// Defines a device after the last one; a name taken (by a broken
    /// device too) is refused.
    pub fn add_device(&mut self, device: Device) -> Result<(), Error> {
        if self.devices.iter().any(|d| d.name == device.name)
            || self.broken.iter().any(|b| b.name == device.name)
        {
            return Err(Error::Invalid(format!(
                "a power device named '{}' exists already",
                device.name
            )));
        }
        self.devices.push(device.clone());
        self.changes.push(Change::AddDevice(device));
        Ok(())
    }

    /// Removes a device that no machine names (a broken one too, by its
    /// name).
    pub fn remove_device(&mut self, name: &str) -> Result<(), Error> {
        let known = self.devices.iter().any(|d| d.name == name);
        if !known && !self.broken.iter().any(|b| b.name == name) {
            self.device(name)?;
        }
        let mut users: Vec<&str> = self
            .device_users(name)
            .into_iter()
            .map(|(m, ..)| m.name())
            .collect();
        users.dedup();
        if !users.is_empty() {
            return Err(Error::Invalid(format!(
                "power device '{name}' is named by {} (pwr-dev or rly-dev); set theirs to \"\" first",
                users.join(", ")
            )));
        }
        match self.devices.iter().position(|d| d.name == name) {
            Some(at) => {
                self.devices.remove(at);
            }
            None => {
                if let Some(at) = self.broken.iter().position(|b| b.name == name) {
                    self.broken.remove(at);
                }
            }
        }
        self.changes.push(Change::RemoveDevice(name.to_string()));
        Ok(())
    }

    /// Replaces every device of the lab, broken ones too, with `devices`
    /// and `broken`, read from `elements`, their `<device>` elements in
    /// the upstream format (`import`).
    pub fn replace_devices(
        &mut self,
        devices: Vec<Device>,
        broken: Vec<BrokenDevice>,
        elements: Vec<String>,
    ) {
        self.devices = devices;
        self.broken = broken;
        self.changes.push(Change::ReplaceDevices(elements));
    }

    /// Whether anything was changed or recorded since the lab was read.
    pub fn is_changed(&self) -> bool {
        !self.changes.is_empty() || !self.events.is_empty()
    }

    /// The changes made since the lab was read, in order.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The lab as it stands once its changes are stored: the same machines,
    /// no change or event pending.
    pub fn settled(mut self) -> Lab {
        self.changes.clear();
        self.events.clear();
        self
    }

    /// Records an event, to be committed with this transaction's changes.
    pub fn record(&mut self, event: Event) {
        self.events.push(event);
    }

    /// The events recorded since the lab was read.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub fn machines(&self) -> impl Iterator<Item = &Machine> {
        self.machines.iter()
    }

    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines().find(|m| m.name() == name)
    }

    /// That there is no machine called `name`, and which is near it.
    pub fn unknown(&self, name: &str) -> Error {
        Error::unknown_machine(name, self.machines().map(Machine::name))
    }

    /// The machine called `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Machine, Error> {
        self.machine(name).ok_or_else(|| self.unknown(name))
    }

    /// The machine called `name`, writable, or an error naming it.
    pub fn get_mut(&mut self, name: &str) -> Result<MachineMut<'_>, Error> {
        let Some(at) = self
            .machines
            .iter()
            .position(|m| m.field(Field::Name) == Some(name))
        else {
            return Err(self.unknown(name));
        };
        Ok(MachineMut {
            machine: &mut self.machines[at],
            changes: &mut self.changes,
        })
    }

    /// Adds a machine after the last one, with every upstream field.
    pub fn add(&mut self, new: &NewMachine) -> Result<(), Error> {
        if self.machine(&new.name).is_some() {
            return Err(Error::Invalid(format!(
                "a machine named '{}' exists already",
                new.name
            )));
        }
        if let Some(other) = self
            .machines()
            .find(|m| m.get(Field::Mac).eq_ignore_ascii_case(&new.mac))
        {
            return Err(Error::Invalid(format!(
                "MAC {} belongs to machine '{}' already",
                new.mac,
                other.name()
            )));
        }
        let mut fields = Vec::new();
        for (field, value) in new.fields() {
            check_value(field, value)?;
            fields.push((field, value.to_string()));
        }
        self.machines.push(Machine::read(fields, []));
        self.changes.push(Change::Add(new.clone()));
        Ok(())
    }

    /// Adds `machine`, read from `element` (its `<machine>` element in the
    /// upstream format), after the last one.
    pub fn add_element(&mut self, machine: Machine, element: String) -> Result<(), Error> {
        let name = machine.name().to_string();
        if name.is_empty() {
            return Err(Error::Invalid("a machine without a name".into()));
        }
        if self.machine(&name).is_some() {
            return Err(Error::Invalid(format!(
                "a machine named '{name}' exists already"
            )));
        }
        self.machines.push(machine);
        self.changes.push(Change::AddElement { name, element });
        Ok(())
    }

    /// Removes a machine.
    pub fn remove(&mut self, name: &str) -> Result<(), Error> {
        let at = self
            .machines
            .iter()
            .position(|m| m.field(Field::Name) == Some(name))
            .ok_or_else(|| self.unknown(name))?;
        let gone = self.machines.remove(at);
        self.changes.push(Change::Remove(name.to_string()));
        if gone.lease.is_some() {
            self.changes.push(Change::SetLease {
                machine: name.to_string(),
                lease: None,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Lab {
        Lab::new(vec![Machine::read(
            [
                (Field::Name, "rig1".to_string()),
                (Field::Mac, "aa:bb:cc:dd:ee:01".to_string()),
                (Field::Job, "run smoke".to_string()),
                (Field::JobPid, "12345".to_string()),
                (Field::JobTimestamp, "1763047845".to_string()),
            ],
            [],
        )])
    }

    #[test]
    fn writing_the_same_value_changes_nothing() {
        let mut lab = lab();
        lab.get_mut("rig1")
            .unwrap()
            .set(Field::Job, "run smoke")
            .unwrap();
        // A field mama adds is not created empty.
        lab.get_mut("rig1").unwrap().clear(Field::JobHost).unwrap();
        assert!(!lab.is_changed());
    }

    #[test]
    fn changes_are_recorded_field_by_field() {
        let mut lab = lab();
        let mut m = lab.get_mut("rig1").unwrap();
        m.set_job(&JobRecord {
            label: "x".into(),
            pid: Some(1),
            timestamp: Some(2),
            user: None,
            host: Some("h".into()),
            origin: None,
        })
        .unwrap();
        m.clear_job().unwrap();
        // An upstream field missing from the machine is created, even empty.
        m.set(Field::Ip, "").unwrap();
        let set = |field, value: &str| Change::Set {
            machine: "rig1".into(),
            field,
            value: value.into(),
        };
        assert_eq!(
            lab.changes(),
            [
                set(Field::Job, "x"),
                set(Field::JobPid, "1"),
                set(Field::JobTimestamp, "2"),
                set(Field::JobHost, "h"),
                set(Field::Job, ""),
                set(Field::JobPid, ""),
                set(Field::JobTimestamp, ""),
                Change::Unset {
                    machine: "rig1".into(),
                    field: Field::JobHost
                },
                set(Field::Ip, ""),
            ]
        );
        assert!(lab.get("rig1").unwrap().job().is_none());
    }

    #[test]
    fn control_characters_are_refused() {
        let mut lab = lab();
        let err = lab
            .get_mut("rig1")
            .unwrap()
            .set(Field::Job, "a\u{1}b")
            .unwrap_err();
        assert!(err.to_string().contains("U+0001"), "{err}");
        assert!(!lab.is_changed());
    }

    #[test]
    fn added_and_removed_machines() {
        let mut lab = lab();
        let new = NewMachine {
            name: "rig2".into(),
            mac: "AA:bb:cc:dd:ee:01".into(),
            ..Default::default()
        };
        assert!(lab.add(&new).unwrap_err().to_string().contains("belongs"));
        let new = NewMachine {
            mac: "aa:bb:cc:dd:ee:02".into(),
            ..new
        };
        lab.add(&new).unwrap();
        assert!(lab.add(&new).unwrap_err().to_string().contains("exists"));
        let names: Vec<_> = lab.machines().map(Machine::name).collect();
        assert_eq!(names, ["rig1", "rig2"]);
        assert_eq!(lab.get("rig2").unwrap().get(Field::OnlyVm), "0");
        lab.remove("rig1").unwrap();
        assert!(lab.get("rig1").is_err());
        assert_eq!(
            lab.changes(),
            [Change::Add(new), Change::Remove("rig1".into())]
        );
    }
}
