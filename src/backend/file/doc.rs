//! The state file's document: the upstream
//! `<settings><machine>…</machine></settings>` format, over the lossless
//! tree of [`crate::backend::file::xml`].
//!
//! A machine is an element of the tree; its fields are its child elements.
//! [`XmlLab::model`] reads the plain [`Lab`] the engine works on, and
//! [`XmlLab::apply`] replays the lab's [`Change`]s onto the tree: writing a
//! field touches only that field's element, so every element, attribute and
//! comment that mama does not know stays where it was, and a tree no change
//! was replayed on writes back the very text it was read from. mama's own
//! top-level elements, `<event_seq>` and `<pending_events>` (the history's
//! side in the state file, see [`crate::backend::file::log`]), are kept
//! here too.

use std::collections::HashSet;

use super::xml::{self, Document, Element, ParseError};
use crate::error::Error;
use crate::model::event::Event;
use crate::model::field::Field;
use crate::model::{Change, Lab, Machine, NewMachine};

const MACHINE: &str = "machine";
const ROOT: &str = "settings";
/// mama's own top-level element: the last event the state committed.
const EVENT_SEQ: &str = "event_seq";
/// mama's own top-level element: committed events not yet in the log.
const PENDING_EVENTS: &str = "pending_events";
/// A top-level element a person adds to say that PHP mama shares the file:
/// then mama writes it in place (see [`crate::backend::file`]).
const PHP_COMPAT: &str = "php_compat";

/// The parsed state file.
#[derive(Debug, Clone)]
pub struct XmlLab {
    doc: Document,
}

impl XmlLab {
    /// An empty lab, as a missing state file reads.
    pub fn empty() -> XmlLab {
        XmlLab {
            doc: Document::new(Element::new(ROOT)),
        }
    }

    /// Reads a state file's text: well-formed XML, a `<settings>` root, and
    /// no two machines of one name.
    pub fn parse(text: &str) -> Result<XmlLab, ParseError> {
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
        let lab = XmlLab { doc };
        let mut seen = HashSet::new();
        for machine in lab.machine_elements() {
            let name = machine
                .child(Field::Name.tag())
                .map(|e| e.text())
                .unwrap_or_default();
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

    fn machine_elements(&self) -> impl Iterator<Item = &Element> {
        self.doc.root.elements().filter(|e| e.name == MACHINE)
    }

    /// The lab as the engine sees it: each machine with the text of every
    /// field it has, and the fields that hold elements of their own.
    pub fn model(&self) -> Lab {
        Lab::new(
            self.machine_elements()
                .map(|element| {
                    let fields = Field::ALL
                        .into_iter()
                        .filter_map(|f| Some((f, element.child(f.tag())?)));
                    Machine::read(
                        fields
                            .clone()
                            .map(|(field, e)| (field, e.text().into_owned())),
                        fields
                            .filter(|(_, e)| e.has_child_elements())
                            .map(|(field, _)| field),
                    )
                })
                .collect(),
        )
    }

    /// Replays a transaction's changes onto the tree, in order.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), Error> {
        changes.iter().try_for_each(|change| self.apply_one(change))
    }

    fn apply_one(&mut self, change: &Change) -> Result<(), Error> {
        match change {
            Change::Set {
                machine,
                field,
                value,
            } => {
                let element = self.machine_mut(machine)?;
                if let Some(child) = element.child_mut(field.tag()) {
                    child.set_text(value);
                    return Ok(());
                }
                // A field mama adds to an old machine is placed after the
                // nearest field that comes before it in upstream order.
                let before = Field::ALL
                    .iter()
                    .take_while(|&f| f != field)
                    .filter_map(|f| element.position(f.tag()))
                    .max();
                element.insert_element(before, Element::with_text(field.tag(), value), "    ");
            }
            Change::Unset { machine, field } => {
                let element = self.machine_mut(machine)?;
                if let Some(at) = element.position(field.tag()) {
                    element.remove_child(at);
                }
            }
            Change::Add(new) => self.add(new),
            Change::AddElement { name, element } => {
                let parts = XmlLab::from_machines([(name.as_str(), element.as_str())])
                    .map_err(|e| Error::Invalid(format!("machine '{name}': {e}")))?;
                let last_machine = self
                    .doc
                    .root
                    .children
                    .iter()
                    .rposition(|n| matches!(n, xml::Node::Element(e) if e.name == MACHINE));
                for element in parts.doc.root.elements() {
                    self.doc
                        .root
                        .insert_element(last_machine, element.clone(), "  ");
                }
            }
            Change::Remove(name) => {
                let at = self
                    .doc
                    .root
                    .children
                    .iter()
                    .position(|n| matches!(n, xml::Node::Element(e) if is_machine(e, name)))
                    .ok_or_else(|| unknown(name))?;
                // Its line goes with it.
                self.doc.root.remove_child(at);
            }
        }
        Ok(())
    }

    /// The element of the machine called `name`.
    fn machine_mut(&mut self, name: &str) -> Result<&mut Element, Error> {
        self.doc
            .root
            .elements_mut()
            .find(|e| is_machine(e, name))
            .ok_or_else(|| unknown(name))
    }

    /// Adds a machine after the last one, with every upstream field.
    fn add(&mut self, new: &NewMachine) {
        let mut machine = Element::new(MACHINE);
        for (field, value) in new.fields() {
            machine.push_element(Element::with_text(field.tag(), value), "    ");
        }
        let last_machine = self
            .doc
            .root
            .children
            .iter()
            .rposition(|n| matches!(n, xml::Node::Element(e) if e.name == MACHINE));
        self.doc.root.insert_element(last_machine, machine, "  ");
    }

    /// The lab of these machine elements (each `<machine>…</machine>` as
    /// [`XmlLab::machine_text`] gives it), in order: how a lab that keeps
    /// each machine's element apart (the database backend) is read. Each
    /// text must hold exactly one machine, the one `names` gives in the same
    /// place: a text that would open or swallow another is refused.
    pub fn from_machines<'a>(
        machines: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<XmlLab, ParseError> {
        let mut text = String::from("<settings>\n");
        let mut names = Vec::new();
        for (name, element) in machines {
            text.push_str("  ");
            text.push_str(element);
            text.push('\n');
            names.push(name);
        }
        text.push_str("</settings>\n");
        let lab = XmlLab::parse(&text)?;
        let read: Vec<String> = lab.machine_elements().map(machine_name).collect();
        if read != names {
            let at = read
                .iter()
                .zip(&names)
                .position(|(a, b)| a != b)
                .unwrap_or(read.len().min(names.len()));
            return Err(ParseError {
                line: 0,
                column: 0,
                message: format!(
                    "the element stored for machine '{}' is not one <machine> of that name",
                    names.get(at).copied().unwrap_or_default()
                ),
            });
        }
        if lab.doc.root.elements().any(|e| e.name != MACHINE) {
            return Err(ParseError {
                line: 0,
                column: 0,
                message: "a stored machine element holds elements beside it".into(),
            });
        }
        Ok(lab)
    }

    /// The text of the element of the machine called `name`.
    pub fn machine_text(&self, name: &str) -> Option<String> {
        self.machine_elements()
            .find(|e| is_machine(e, name))
            .map(Element::to_text)
    }

    /// Every machine's name and element text, in order.
    pub fn machine_texts(&self) -> Vec<(String, String)> {
        self.machine_elements()
            .map(|e| (machine_name(e), e.to_text()))
            .collect()
    }

    /// The document without its machines and without mama's own
    /// bookkeeping: the root's attributes, other top-level elements,
    /// comments and declaration, which a lab keeps beside its machines.
    pub fn skeleton(&self) -> String {
        let mut doc = self.doc.clone();
        while let Some(at) = doc.root.children.iter().position(|n| {
            matches!(n, xml::Node::Element(e)
                if e.name == MACHINE || e.name == EVENT_SEQ || e.name == PENDING_EVENTS)
        }) {
            doc.root.remove_child(at);
        }
        doc.write()
    }

    /// The lab as upstream's format holds it, for `export`: the skeleton
    /// (see [`XmlLab::skeleton`]; upstream's empty document when there is
    /// none) with these machine elements after its last element.
    pub fn assemble<'a>(
        skeleton: Option<&str>,
        machines: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<XmlLab, ParseError> {
        let mut lab = match skeleton {
            Some(text) => XmlLab::parse(text)?,
            None => XmlLab::empty(),
        };
        let parts = XmlLab::from_machines(machines)?;
        for element in parts.doc.root.elements() {
            let last = lab
                .doc
                .root
                .children
                .iter()
                .rposition(|n| matches!(n, xml::Node::Element(_)));
            lab.doc.root.insert_element(last, element.clone(), "  ");
        }
        Ok(lab)
    }

    /// The state as upstream's format holds it, for `export`: without
    /// mama's own bookkeeping elements.
    pub fn exported(&self) -> String {
        let mut doc = self.doc.clone();
        for tag in [EVENT_SEQ, PENDING_EVENTS] {
            if let Some(at) = doc.root.position(tag) {
                doc.root.remove_child(at);
            }
        }
        doc.write()
    }

    /// Whether the file says that PHP mama shares it: a top-level
    /// `<php_compat>` that does not hold `0`.
    pub fn php_compat(&self) -> bool {
        self.doc
            .root
            .child(PHP_COMPAT)
            .is_some_and(|e| e.text().trim() != "0")
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
            .map_or_else(Vec::new, |e| super::log::decode(&e.text()))
    }

    /// Replaces the pending events; none removes the element.
    pub fn set_pending_events(&mut self, events: &[Event]) -> Result<(), Error> {
        let at = self.doc.root.position(PENDING_EVENTS);
        if events.is_empty() {
            if let Some(at) = at {
                self.doc.root.remove_child(at);
            }
            return Ok(());
        }
        let text = super::log::encode(events)?;
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
    }
}

/// The name of a `<machine>` element.
fn machine_name(element: &Element) -> String {
    element
        .child(Field::Name.tag())
        .map(|n| n.text().into_owned())
        .unwrap_or_default()
}

/// Whether `element` is the `<machine>` called `name`.
fn is_machine(element: &Element, name: &str) -> bool {
    element.name == MACHINE
        && element
            .child(Field::Name.tag())
            .is_some_and(|n| n.text() == name)
}

/// A change the lab made to a machine that the tree lacks: the model and
/// the tree were read from one text, so this is mama's own mistake.
fn unknown(name: &str) -> Error {
    Error::Invalid(format!(
        "internal error: the change to '{name}' found no such machine in the state file"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobRecord;

    const UPSTREAM: &str = "<?xml version=\"1.0\"?>\n<settings>\n  <resource><name>pdu</name></resource>\n  <machine>\n    <name>rig1</name>\n    <mac>aa:bb:cc:dd:ee:01</mac>\n    <ip/>\n    <job>run smoke</job>\n    <job_pid>12345</job_pid>\n    <job_timestamp>1763047845</job_timestamp>\n    <startcmd/>\n    <custom a=\"1\">keep</custom>\n  </machine>\n</settings>\n";

    /// The text of `xml` after `change` ran on its lab and was replayed.
    fn changed(xml: &str, change: impl FnOnce(&mut Lab)) -> String {
        let mut doc = XmlLab::parse(xml).unwrap();
        let mut lab = doc.model();
        change(&mut lab);
        doc.apply(lab.changes()).unwrap();
        doc.to_xml()
    }

    #[test]
    fn reads_the_upstream_job_fields() {
        let lab = XmlLab::parse(UPSTREAM).unwrap().model();
        let job = lab.get("rig1").unwrap().job().unwrap();
        assert_eq!(job.label, "run smoke");
        assert_eq!(job.pid, Some(12345));
        assert_eq!(job.timestamp, Some(1763047845));
        assert_eq!(job.host, None);
    }

    #[test]
    fn a_job_host_is_added_in_place_and_removed_on_release() {
        let xml = changed(UPSTREAM, |lab| {
            let mut m = lab.get_mut("rig1").unwrap();
            m.set_job(&JobRecord {
                label: "x".into(),
                pid: Some(1),
                timestamp: Some(2),
                host: Some("h".into()),
                origin: None,
            })
            .unwrap();
        });
        assert!(
            xml.contains(
                "<job_timestamp>2</job_timestamp>\n    <job_host>h</job_host>\n    <startcmd/>"
            ),
            "{xml}"
        );
        let xml = changed(&xml, |lab| {
            lab.get_mut("rig1").unwrap().clear_job().unwrap();
        });
        let cleared = UPSTREAM
            .replace("<job>run smoke</job>", "<job/>")
            .replace("<job_pid>12345</job_pid>", "<job_pid/>")
            .replace(
                "<job_timestamp>1763047845</job_timestamp>",
                "<job_timestamp/>",
            );
        assert_eq!(xml, cleared);
    }

    #[test]
    fn php_compat_is_on_unless_it_says_0() {
        let with = |element: &str| {
            XmlLab::parse(&UPSTREAM.replace("<settings>", &format!("<settings>{element}")))
                .unwrap()
                .php_compat()
        };
        assert!(!XmlLab::parse(UPSTREAM).unwrap().php_compat());
        assert!(with("<php_compat/>"));
        assert!(with("<php_compat>1</php_compat>"));
        assert!(!with("<php_compat> 0 </php_compat>"));
    }

    #[test]
    fn writing_the_same_value_changes_nothing() {
        let xml = changed(UPSTREAM, |lab| {
            lab.get_mut("rig1")
                .unwrap()
                .set(Field::Job, "run smoke")
                .unwrap();
            assert!(!lab.is_changed());
        });
        assert_eq!(xml, UPSTREAM);
    }

    #[test]
    fn a_field_holding_elements_is_not_overwritten() {
        let xml = UPSTREAM.replace("<startcmd/>", "<startcmd><a/></startcmd>");
        let mut lab = XmlLab::parse(&xml).unwrap().model();
        let err = lab
            .get_mut("rig1")
            .unwrap()
            .set(Field::StartCmd, "x")
            .unwrap_err();
        assert!(err.to_string().contains("holds elements"), "{err}");
        assert!(!lab.is_changed());
    }

    #[test]
    fn added_machines_follow_the_last_machine_with_every_upstream_field() {
        let xml = changed(UPSTREAM, |lab| {
            lab.add(&NewMachine {
                name: "rig2".into(),
                mac: "aa:bb:cc:dd:ee:02".into(),
                ..Default::default()
            })
            .unwrap();
        });
        let again = XmlLab::parse(&xml).unwrap().model();
        let names: Vec<_> = again.machines().map(Machine::name).collect();
        assert_eq!(names, ["rig1", "rig2"]);
        assert!(xml.contains("  </machine>\n  <machine>\n    <name>rig2</name>\n    <mac>aa:bb:cc:dd:ee:02</mac>\n    <ip/>\n    <is_started/>\n    <only_vm>0</only_vm>"), "{xml}");
        assert!(
            xml.ends_with("<start_timeout/>\n  </machine>\n</settings>\n"),
            "{xml}"
        );
        assert!(xml.contains("<custom a=\"1\">keep</custom>"));
        // Removed, with its line.
        let xml = changed(&xml, |lab| lab.remove("rig2").unwrap());
        assert_eq!(xml, UPSTREAM);
    }

    #[test]
    fn duplicates_and_foreign_roots_are_refused() {
        assert!(XmlLab::parse("<settings><machine><name>a</name></machine><machine><name>a</name></machine></settings>")
            .unwrap_err()
            .message
            .contains("two machines"));
        assert!(
            XmlLab::parse("<config/>")
                .unwrap_err()
                .message
                .contains("not a mama state file")
        );
    }
}

#[cfg(test)]
mod damaged_file_tests {
    use super::*;

    const UPSTREAM: &str = include_str!("../../../testdata/upstream.xml");

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
            if let Ok(mut doc) = XmlLab::parse(text) {
                read += 1;
                // Unchanged, a lab writes back the very text it was read from.
                let lab = doc.model();
                doc.apply(lab.changes()).unwrap();
                assert_eq!(doc.to_xml(), text, "seed {seed}");
                for machine in lab.machines() {
                    let _ = (machine.job(), machine.resources(), machine.is_started());
                }
            }
        }
        assert!(read > 100, "only {read} damaged files were still readable");
    }
}
