//! The lab: machines and their fields, read from and written to the upstream
//! `<settings><machine>…</machine></settings>` format.
//!
//! A machine is an element of the document tree; its fields are its child
//! elements. Reading a field never changes the tree, and writing one touches
//! only that field's element, so every element, attribute and comment that
//! mama does not know stays where it was.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::backend::file::xml::{self, Document, Element, ParseError};
use crate::engine::os::Origin;
use crate::error::Error;
use crate::model::event::Event;

/// A field of a machine: one child element of `<machine>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Name,
    Mac,
    Ip,
    IsStarted,
    OnlyVm,
    Arch,
    Os,
    Kernel,
    PwrDev,
    PwrSlot,
    RlyDev,
    RlySlot,
    Reservation,
    Resources,
    BootParams,
    VmParams,
    Job,
    JobPid,
    JobTimestamp,
    /// mama's own addition: the host the job's PID belongs to.
    JobHost,
    /// mama's own addition: the boot, PID namespace and start time of the
    /// claimer, so its PID is judged only where it means something.
    JobOrigin,
    StartCmd,
    StopCmd,
    StartTimeout,
}

impl Field {
    /// Every field in document order; a field mama adds to an old machine is
    /// placed after the nearest field that comes before it here.
    pub const ALL: [Field; 24] = [
        Field::Name,
        Field::Mac,
        Field::Ip,
        Field::IsStarted,
        Field::OnlyVm,
        Field::Arch,
        Field::Os,
        Field::Kernel,
        Field::PwrDev,
        Field::PwrSlot,
        Field::RlyDev,
        Field::RlySlot,
        Field::Reservation,
        Field::Resources,
        Field::BootParams,
        Field::VmParams,
        Field::Job,
        Field::JobPid,
        Field::JobTimestamp,
        Field::JobHost,
        Field::JobOrigin,
        Field::StartCmd,
        Field::StopCmd,
        Field::StartTimeout,
    ];

    /// The element name in the state file.
    pub const fn tag(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Mac => "mac",
            Field::Ip => "ip",
            Field::IsStarted => "is_started",
            Field::OnlyVm => "only_vm",
            Field::Arch => "arch",
            Field::Os => "os",
            Field::Kernel => "kernel",
            Field::PwrDev => "pwr_dev",
            Field::PwrSlot => "pwr_slot",
            Field::RlyDev => "rly_dev",
            Field::RlySlot => "rly_slot",
            Field::Reservation => "reservation",
            Field::Resources => "resources",
            Field::BootParams => "boot_params",
            Field::VmParams => "vm_params",
            Field::Job => "job",
            Field::JobPid => "job_pid",
            Field::JobTimestamp => "job_timestamp",
            Field::JobHost => "job_host",
            Field::JobOrigin => "job_origin",
            Field::StartCmd => "startcmd",
            Field::StopCmd => "stopcmd",
            Field::StartTimeout => "start_timeout",
        }
    }

    /// Whether upstream PHP mama writes this field in every machine.
    const fn is_upstream(self) -> bool {
        !matches!(self, Field::JobHost | Field::JobOrigin)
    }

    /// What upstream writes into a new machine's field.
    const fn initial(self) -> &'static str {
        match self {
            Field::OnlyVm | Field::PwrSlot | Field::RlySlot => "0",
            _ => "",
        }
    }
}

/// The job recorded on a machine, as written (unparsable numbers read as
/// absent, so a damaged PID or timestamp can never keep a machine busy).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobRecord {
    pub label: String,
    pub pid: Option<u32>,
    pub timestamp: Option<i64>,
    pub host: Option<String>,
    /// Where the claim was made; records of other tools have none.
    pub origin: Option<Origin>,
}

/// A read-only view of one machine.
#[derive(Debug, Clone, Copy)]
pub struct Machine<'a> {
    element: &'a Element,
}

impl<'a> Machine<'a> {
    /// A field's text; empty when the element is missing or empty.
    pub fn get(&self, field: Field) -> Cow<'a, str> {
        self.element
            .child(field.tag())
            .map_or(Cow::Borrowed(""), |e| e.text())
    }

    pub fn name(&self) -> Cow<'a, str> {
        self.get(Field::Name)
    }

    /// Upstream writes `1` for a machine powered up by hand; empty or `0` is off.
    pub fn is_started(&self) -> bool {
        is_set(&self.get(Field::IsStarted))
    }

    pub fn only_vm(&self) -> bool {
        is_set(&self.get(Field::OnlyVm))
    }

    /// The user holding a reservation, if any.
    pub fn reservation(&self) -> Option<String> {
        non_empty(self.get(Field::Reservation))
    }

    pub fn resources(&self) -> Vec<String> {
        self.get(Field::Resources)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// The job on this machine: a label or a PID makes one.
    pub fn job(&self) -> Option<JobRecord> {
        // The label is kept exactly as written; only a blank one is none.
        let label = self.get(Field::Job);
        let label = if label.trim().is_empty() {
            String::new()
        } else {
            label.into_owned()
        };
        let pid_text = self.get(Field::JobPid);
        if label.is_empty() && pid_text.trim().is_empty() {
            return None;
        }
        Some(JobRecord {
            label,
            pid: pid_text.trim().parse().ok().filter(|&pid| pid > 0),
            timestamp: self.get(Field::JobTimestamp).trim().parse().ok(),
            host: non_empty(self.get(Field::JobHost)),
            origin: Origin::parse(&self.get(Field::JobOrigin)),
        })
    }
}

fn is_set(value: &str) -> bool {
    let value = value.trim();
    !value.is_empty() && value != "0"
}

fn non_empty(value: Cow<'_, str>) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// A writable view of one machine. Every write is checked and marks the lab
/// changed only when a value really changes.
pub struct MachineMut<'a> {
    element: &'a mut Element,
    changed: &'a mut bool,
}

impl MachineMut<'_> {
    pub fn view(&self) -> Machine<'_> {
        Machine {
            element: self.element,
        }
    }

    /// Sets a field, creating its element in upstream order when missing.
    pub fn set(&mut self, field: Field, value: &str) -> Result<(), Error> {
        check_value(field, value)?;
        if let Some(element) = self.element.child_mut(field.tag()) {
            if element.has_child_elements() {
                return Err(Error::Invalid(format!(
                    "field <{}> holds elements of its own; mama will not overwrite it \
                     (edit the state file by hand)",
                    field.tag()
                )));
            }
            if element.text() != value {
                element.set_text(value);
                *self.changed = true;
            }
            return Ok(());
        }
        if value.is_empty() && !field.is_upstream() {
            return Ok(());
        }
        let before = Field::ALL
            .iter()
            .take_while(|&&f| f != field)
            .filter_map(|f| self.element.position(f.tag()))
            .max();
        self.element
            .insert_element(before, Element::with_text(field.tag(), value), "    ");
        *self.changed = true;
        Ok(())
    }

    /// Empties a field; a field that upstream does not know is removed, so a
    /// released machine looks exactly as upstream would write it.
    pub fn clear(&mut self, field: Field) -> Result<(), Error> {
        if field.is_upstream() {
            return self.set(field, "");
        }
        if let Some(at) = self.element.position(field.tag()) {
            self.element.remove_child(at);
            *self.changed = true;
        }
        Ok(())
    }

    /// Records a job (all four job fields).
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
        match &job.host {
            Some(host) => self.set(Field::JobHost, host)?,
            None => self.clear(Field::JobHost)?,
        }
        match &job.origin {
            Some(origin) => self.set(Field::JobOrigin, &origin.to_string()),
            None => self.clear(Field::JobOrigin),
        }
    }

    /// Forgets the job.
    pub fn clear_job(&mut self) -> Result<(), Error> {
        for field in [
            Field::Job,
            Field::JobPid,
            Field::JobTimestamp,
            Field::JobHost,
            Field::JobOrigin,
        ] {
            self.clear(field)?;
        }
        Ok(())
    }
}

/// Refuses text the state file cannot hold.
pub fn check_value(field: Field, value: &str) -> Result<(), Error> {
    match value.chars().find(|&c| !xml::is_xml_char(c)) {
        None => Ok(()),
        Some(c) => Err(Error::Invalid(format!(
            "the value for {} contains the control character U+{:04X}, which the XML state file cannot hold",
            field.tag(),
            c as u32
        ))),
    }
}

/// Refuses what a user gives for a field that the state file cannot hold,
/// or that a terminal would act on when it is shown: C1 controls
/// (U+0080 to U+009F), which XML allows.
pub fn check_input(field: Field, value: &str) -> Result<(), Error> {
    check_value(field, value)?;
    match value.chars().find(|c| ('\u{80}'..='\u{9f}').contains(c)) {
        None => Ok(()),
        Some(c) => Err(Error::Invalid(format!(
            "the value for {} contains the control character U+{:04X}, which a terminal \
             would act on when it is shown",
            field.tag(),
            c as u32
        ))),
    }
}

/// A machine to add.
#[derive(Debug, Clone, Default)]
pub struct NewMachine {
    pub name: String,
    pub mac: String,
    pub ip: String,
    pub only_vm: bool,
    pub resources: String,
}

/// The whole lab: the parsed state file.
#[derive(Debug, Clone)]
pub struct Lab {
    doc: Document,
    changed: bool,
    /// Events of this transaction, committed with it.
    events: Vec<Event>,
}

const MACHINE: &str = "machine";
const ROOT: &str = "settings";
/// mama's own top-level element: the last event the state committed.
const EVENT_SEQ: &str = "event_seq";
/// mama's own top-level element: committed events not yet in the log.
const PENDING_EVENTS: &str = "pending_events";

impl Lab {
    /// An empty lab, as a missing state file reads.
    pub fn empty() -> Lab {
        Lab {
            doc: Document::new(Element::new(ROOT)),
            changed: false,
            events: Vec::new(),
        }
    }

    /// Reads a state file's text: well-formed XML, a `<settings>` root, and
    /// no two machines of one name.
    pub fn parse(text: &str) -> Result<Lab, ParseError> {
        let doc = Document::parse(text)?;
        if doc.root.name != ROOT {
            return Err(ParseError {
                line: 0,
                column: 0,
                message: format!(
                    "the root element is <{}>, not <{ROOT}>: this is not a mama state file",
                    doc.root.name
                ),
            });
        }
        let lab = Lab {
            doc,
            changed: false,
            events: Vec::new(),
        };
        let mut seen = HashSet::new();
        for machine in lab.machines() {
            let name = machine.name();
            if !name.is_empty() && !seen.insert(name.clone()) {
                return Err(ParseError {
                    line: 0,
                    column: 0,
                    message: format!("two machines are named '{name}'"),
                });
            }
        }
        Ok(lab)
    }

    /// The state file's text.
    pub fn to_xml(&self) -> String {
        self.doc.write()
    }

    /// Whether anything was changed since the lab was read.
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// Records an event, to be committed with this transaction's changes.
    pub fn record(&mut self, event: Event) {
        self.events.push(event);
        self.changed = true;
    }

    /// The events recorded since the lab was read.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The number of the last event this state committed, if any.
    pub fn event_seq(&self) -> Option<u64> {
        self.doc.root.child(EVENT_SEQ)?.text().trim().parse().ok()
    }

    /// The committed events the state holds until they move to the log.
    pub fn pending_events(&self) -> Vec<Event> {
        self.doc
            .root
            .child(PENDING_EVENTS)
            .map_or_else(Vec::new, |e| crate::backend::file::log::decode(&e.text()))
    }

    /// Replaces the pending events; none removes the element.
    pub fn set_pending_events(&mut self, events: &[Event]) -> Result<(), Error> {
        let at = self.doc.root.position(PENDING_EVENTS);
        if events.is_empty() {
            if let Some(at) = at {
                self.doc.root.remove_child(at);
                self.changed = true;
            }
            return Ok(());
        }
        let text = crate::backend::file::log::encode(events)?;
        self.set_top_level(PENDING_EVENTS, &text);
        Ok(())
    }

    pub fn set_event_seq(&mut self, seq: u64) {
        self.set_top_level(EVENT_SEQ, &seq.to_string());
    }

    /// Sets one of mama's own top-level elements, adding it after the last
    /// element when missing.
    fn set_top_level(&mut self, tag: &str, value: &str) {
        match self.doc.root.child_mut(tag) {
            Some(element) => element.set_text(value),
            None => self
                .doc
                .root
                .push_element(Element::with_text(tag, value), "  "),
        }
        self.changed = true;
    }

    pub fn machines(&self) -> impl Iterator<Item = Machine<'_>> {
        self.doc
            .root
            .elements()
            .filter(|e| e.name == MACHINE)
            .map(|element| Machine { element })
    }

    pub fn machine(&self, name: &str) -> Option<Machine<'_>> {
        self.machines().find(|m| m.name() == name)
    }

    /// The machine called `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<Machine<'_>, Error> {
        self.machine(name)
            .ok_or_else(|| Error::UnknownMachine(name.to_string()))
    }

    /// The machine called `name`, writable, or an error naming it.
    pub fn get_mut(&mut self, name: &str) -> Result<MachineMut<'_>, Error> {
        let changed = &mut self.changed;
        self.doc
            .root
            .elements_mut()
            .filter(|e| e.name == MACHINE)
            .find(|e| e.child(Field::Name.tag()).is_some_and(|n| n.text() == name))
            .map(|element| MachineMut { element, changed })
            .ok_or_else(|| Error::UnknownMachine(name.to_string()))
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
        let mut machine = Element::new(MACHINE);
        for field in Field::ALL.into_iter().filter(|f| f.is_upstream()) {
            let value = match field {
                Field::Name => new.name.as_str(),
                Field::Mac => new.mac.as_str(),
                Field::Ip => new.ip.as_str(),
                Field::OnlyVm if new.only_vm => "1",
                Field::Resources => new.resources.as_str(),
                other => other.initial(),
            };
            check_value(field, value)?;
            machine.push_element(Element::with_text(field.tag(), value), "    ");
        }
        let last_machine = self
            .doc
            .root
            .children
            .iter()
            .rposition(|n| matches!(n, xml::Node::Element(e) if e.name == MACHINE));
        self.doc.root.insert_element(last_machine, machine, "  ");
        self.changed = true;
        Ok(())
    }

    /// Removes a machine (and the line it stood on).
    pub fn remove(&mut self, name: &str) -> Result<(), Error> {
        let at = self
            .doc
            .root
            .children
            .iter()
            .position(|n| {
                matches!(n, xml::Node::Element(e) if e.name == MACHINE
                    && e.child(Field::Name.tag()).is_some_and(|n| n.text() == name))
            })
            .ok_or_else(|| Error::UnknownMachine(name.to_string()))?;
        self.doc.root.remove_child(at);
        self.changed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM: &str = "<?xml version=\"1.0\"?>\n<settings>\n  <resource><name>pdu</name></resource>\n  <machine>\n    <name>rig1</name>\n    <mac>aa:bb:cc:dd:ee:01</mac>\n    <ip/>\n    <job>run smoke</job>\n    <job_pid>12345</job_pid>\n    <job_timestamp>1763047845</job_timestamp>\n    <startcmd/>\n    <custom a=\"1\">keep</custom>\n  </machine>\n</settings>\n";

    #[test]
    fn reads_the_upstream_job_fields() {
        let lab = Lab::parse(UPSTREAM).unwrap();
        let job = lab.get("rig1").unwrap().job().unwrap();
        assert_eq!(job.label, "run smoke");
        assert_eq!(job.pid, Some(12345));
        assert_eq!(job.timestamp, Some(1763047845));
        assert_eq!(job.host, None);
    }

    #[test]
    fn a_job_host_is_added_in_place_and_removed_on_release() {
        let mut lab = Lab::parse(UPSTREAM).unwrap();
        let mut m = lab.get_mut("rig1").unwrap();
        m.set_job(&JobRecord {
            label: "x".into(),
            pid: Some(1),
            timestamp: Some(2),
            host: Some("h".into()),
            origin: None,
        })
        .unwrap();
        let xml = lab.to_xml();
        assert!(
            xml.contains(
                "<job_timestamp>2</job_timestamp>\n    <job_host>h</job_host>\n    <startcmd/>"
            ),
            "{xml}"
        );
        let mut lab = Lab::parse(&xml).unwrap();
        lab.get_mut("rig1").unwrap().clear_job().unwrap();
        let cleared = UPSTREAM
            .replace("<job>run smoke</job>", "<job/>")
            .replace("<job_pid>12345</job_pid>", "<job_pid/>")
            .replace(
                "<job_timestamp>1763047845</job_timestamp>",
                "<job_timestamp/>",
            );
        assert_eq!(lab.to_xml(), cleared);
    }

    #[test]
    fn writing_the_same_value_changes_nothing() {
        let mut lab = Lab::parse(UPSTREAM).unwrap();
        lab.get_mut("rig1")
            .unwrap()
            .set(Field::Job, "run smoke")
            .unwrap();
        assert!(!lab.is_changed());
        assert_eq!(lab.to_xml(), UPSTREAM);
    }

    #[test]
    fn added_machines_follow_the_last_machine_with_every_upstream_field() {
        let mut lab = Lab::parse(UPSTREAM).unwrap();
        lab.add(&NewMachine {
            name: "rig2".into(),
            mac: "aa:bb:cc:dd:ee:02".into(),
            ..Default::default()
        })
        .unwrap();
        let xml = lab.to_xml();
        let again = Lab::parse(&xml).unwrap();
        let names: Vec<_> = again.machines().map(|m| m.name().into_owned()).collect();
        assert_eq!(names, ["rig1", "rig2"]);
        assert!(xml.contains("  </machine>\n  <machine>\n    <name>rig2</name>\n    <mac>aa:bb:cc:dd:ee:02</mac>\n    <ip/>\n    <is_started/>\n    <only_vm>0</only_vm>"), "{xml}");
        assert!(
            xml.ends_with("<start_timeout/>\n  </machine>\n</settings>\n"),
            "{xml}"
        );
        assert!(xml.contains("<custom a=\"1\">keep</custom>"));
    }

    #[test]
    fn duplicates_and_foreign_roots_are_refused() {
        assert!(Lab::parse("<settings><machine><name>a</name></machine><machine><name>a</name></machine></settings>")
            .unwrap_err()
            .message
            .contains("two machines"));
        assert!(
            Lab::parse("<config/>")
                .unwrap_err()
                .message
                .contains("not a mama state file")
        );
    }

    #[test]
    fn control_characters_are_refused() {
        let mut lab = Lab::parse(UPSTREAM).unwrap();
        let err = lab
            .get_mut("rig1")
            .unwrap()
            .set(Field::Job, "a\u{1}b")
            .unwrap_err();
        assert!(err.to_string().contains("U+0001"), "{err}");
        assert!(!lab.is_changed());
    }
}

/// Checks and normalises what a user gives for a field; the error names the
/// field and says what is expected.
pub fn normalize(field: Field, value: &str) -> Result<String, Error> {
    check_input(field, value)?;
    let trimmed = value.trim();
    match field {
        Field::Mac => normalize_mac(trimmed),
        Field::Ip if !trimmed.is_empty() => trimmed
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_string())
            .map_err(|_| Error::Invalid(format!("'{value}' is not an IP address"))),
        Field::StartTimeout if !trimmed.is_empty() => trimmed
            .parse::<u32>()
            .map(|secs| secs.to_string())
            .map_err(|_| {
                Error::Invalid(format!(
                    "start-timeout must be a whole number of seconds, not '{value}'"
                ))
            }),
        Field::Resources => Ok(trimmed.split_whitespace().collect::<Vec<_>>().join(" ")),
        Field::Ip | Field::StartTimeout => Ok(String::new()),
        // Free text is kept exactly as given.
        _ => Ok(value.to_string()),
    }
}

/// A MAC address: six hex octets separated by `:` or `-`, stored lower-case
/// with `:`.
pub fn normalize_mac(value: &str) -> Result<String, Error> {
    let octets: Vec<&str> = value.split([':', '-']).collect();
    let valid = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        return Err(Error::Invalid(format!(
            "'{value}' is not a MAC address (expected six hex octets, like aa:bb:cc:dd:ee:01)"
        )));
    }
    Ok(octets.join(":").to_ascii_lowercase())
}

/// A new machine's name: printable, no white space, not `all` (which
/// `clear all` means), not starting with `-`.
pub fn check_name(name: &str) -> Result<(), Error> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name == "all" {
        Some("is reserved: `mama clear all` means every machine")
    } else if name.starts_with('-') {
        Some("starts with '-'")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains white space or a control character")
    } else if name.len() > 255 {
        Some("is longer than 255 bytes")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::Invalid(format!(
            "the machine name '{name}' {problem}"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod input_tests {
    use super::*;

    #[test]
    fn macs_are_checked_and_normalised() {
        assert_eq!(
            normalize_mac("AA-BB-CC-DD-EE-0F").unwrap(),
            "aa:bb:cc:dd:ee:0f"
        );
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:gg",
            "aabbccddeeff",
            "aa:bb:cc:dd:ee:f",
        ] {
            assert!(normalize_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_are_checked() {
        assert!(normalize(Field::Ip, "10.0.0.300").is_err());
        assert_eq!(normalize(Field::Ip, " ::1 ").unwrap(), "::1");
        assert_eq!(normalize(Field::Ip, "").unwrap(), "");
        assert!(normalize(Field::StartTimeout, "-3").is_err());
        assert_eq!(
            normalize(Field::Resources, " pdu1   usb ").unwrap(),
            "pdu1 usb"
        );
        assert!(check_name("all").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("rig-1.lab").is_ok());
    }
}

#[cfg(test)]
mod damaged_file_tests {
    use super::*;

    const UPSTREAM: &str = include_str!("../testdata/upstream.xml");

    /// Damages `text` the ways files get damaged: bytes flipped, cut short,
    /// markup characters dropped in, lines duplicated.
    fn damage(text: &str, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut bytes = text.as_bytes().to_vec();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % bytes.len().max(1);
            match next() % 5 {
                0 => bytes.truncate(at),
                1 => {
                    let last = bytes.len() - 1;
                    bytes[at.min(last)] = (next() % 256) as u8;
                }
                2 => bytes.insert(at, b"<&>\"']/"[(next() % 7) as usize]),
                3 => {
                    let end = (at + (next() as usize % 64)).min(bytes.len());
                    let piece = bytes[at..end].to_vec();
                    bytes.splice(at..at, piece);
                }
                _ => {
                    let end = (at + (next() as usize % 16)).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        bytes
    }

    #[test]
    fn damaged_files_never_panic_and_what_reads_writes_back_stably() {
        let mut read = 0;
        for seed in 0..3000u64 {
            let bytes = damage(UPSTREAM, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            if let Ok(lab) = Lab::parse(text) {
                read += 1;
                // Unchanged, a lab writes back the very text it was read from.
                assert_eq!(lab.to_xml(), text, "seed {seed}");
                for machine in lab.machines() {
                    let _ = (machine.job(), machine.resources(), machine.is_started());
                }
            }
        }
        assert!(read > 100, "only {read} damaged files were still readable");
    }
}
