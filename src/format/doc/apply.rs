//! Replaying a lab's changes onto the document: each change touches only
//! the elements it names.

use super::*;
use crate::error::Error;
use crate::format::xml::{Element, Node};
use crate::model::{Change, NewMachine};

impl XmlLab {
    /// Replays a transaction's changes onto the tree, in order.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), Error> {
        changes.iter().try_for_each(|change| self.apply_one(change))
    }

    pub(super) fn apply_one(&mut self, change: &Change) -> Result<(), Error> {
        match change {
            Change::AddDevice(device) => self.add_device(device),
            Change::RemoveDevice(name) => self.remove_device(name)?,
            Change::ReplaceDevices(elements) => self.replace_devices(elements)?,
            Change::SetSetting(setting, value) => self.set_setting(*setting, value),
            Change::ReplaceSettings(element) => self.replace_settings(element.as_deref())?,
            Change::SetLease { machine, lease } => self.set_lease(machine, lease.as_ref()),
            Change::Set {
                machine,
                field,
                value,
            } => {
                if *field == Field::Name {
                    self.renamed = true;
                }
                let element = self.machine_mut(machine)?;
                if let Some(child) = element.child_mut(field.tag()) {
                    child.set_text(value);
                    return Ok(());
                }
                // A field mama adds to an old machine is placed after the
                // nearest field that comes before it in upstream order: the
                // last of the first elements of those fields.
                const _: () = assert!(Field::ALL.len() <= 64, "a bit a field");
                let mut seen = 0u64;
                let mut before = None;
                for (at, node) in element.children.iter().enumerate() {
                    if let Some(earlier) = node.element_name().and_then(Field::from_tag)
                        && earlier.index() < field.index()
                        && seen & (1 << earlier.index()) == 0
                    {
                        seen |= 1 << earlier.index();
                        before = Some(at);
                    }
                }
                element.insert_element(before, Element::with_text(field.tag(), value), "    ");
            }
            Change::Unset { machine, field } => {
                let element = self.machine_mut(machine)?;
                if let Some(at) = element.position(field.tag()) {
                    element.remove_child(at);
                }
            }
            Change::Add(new) => {
                self.renamed = true;
                self.add(new);
            }
            Change::AddElement { name, element } => {
                self.renamed = true;
                let parts = XmlLab::from_machines([(name.as_str(), element.as_str())])
                    .map_err(|e| Error::Invalid(format!("machine '{name}': {e}")))?;
                for node in parts.machine_nodes() {
                    let element = built(node)
                        .map_err(|e| Error::Invalid(format!("machine '{name}': {e}")))?;
                    self.push_machine(element);
                }
            }
            Change::Remove(name) => {
                let at = self.position_of(name).ok_or_else(|| unknown(name))?;
                // Its line goes with it.
                self.doc.root.remove_child(at);
                self.moved();
            }
        }
        Ok(())
    }

    /// Whether `node` is the machine called `name`.
    pub(super) fn is_named(&self, node: &Node, name: &str) -> bool {
        match node {
            Node::Lazy(lazy) => self.names.get(lazy.slot) == Some(name),
            Node::Element(element) => is_machine_named(element, name),
            _ => false,
        }
    }

    /// Where the machine called `name` stands among the root's children.
    pub(super) fn position_of(&self, name: &str) -> Option<usize> {
        let children = &self.doc.root.children;
        let hint = self.found.borrow().get(name).copied();
        if let Some(at) = hint
            && children
                .get(at)
                .is_some_and(|node| self.is_named(node, name))
        {
            return Some(at);
        }
        // A miss: the hint is wrong or lacks the name. One search for it,
        // then (past a few such) a hint for every machine at once.
        let at = children.iter().position(|node| self.is_named(node, name));
        let mut found = self.found.borrow_mut();
        if found.len() < 8 {
            if let Some(at) = at {
                found.insert(name.into(), at);
            }
            return at;
        }
        found.clear();
        for (at, node) in children.iter().enumerate() {
            let machine = match node {
                Node::Lazy(lazy) => self.names.get(lazy.slot),
                Node::Element(element) if element.name == MACHINE => element
                    .child(Field::Name.tag())
                    .and_then(|n| match n.text() {
                        std::borrow::Cow::Borrowed(text) => Some(text),
                        std::borrow::Cow::Owned(_) => None,
                    }),
                _ => None,
            };
            if let Some(machine) = machine {
                found.entry(machine.into()).or_insert(at);
            }
        }
        at
    }

    /// Whether the lab has a machine called `name`.
    pub fn has_machine(&self, name: &str) -> bool {
        self.position_of(name).is_some()
    }

    /// The element of the machine called `name`, built from its text if it
    /// was only skimmed.
    pub(super) fn machine_mut(&mut self, name: &str) -> Result<&mut Element, Error> {
        let at = self.position_of(name).ok_or_else(|| unknown(name))?;
        let node = &mut self.doc.root.children[at];
        if let Node::Lazy(lazy) = node {
            let element = lazy.build().map_err(|e| {
                Error::Invalid(format!(
                    "internal error: the machine '{name}' read before does not read alone ({e})"
                ))
            })?;
            *node = Node::Element(element);
        }
        match node {
            Node::Element(element) => Ok(element),
            _ => Err(unknown(name)),
        }
    }

    /// Adds a machine after the last one, with every upstream field.
    pub(super) fn add(&mut self, new: &NewMachine) {
        let mut machine = Element::new(MACHINE);
        for (field, value) in new.fields() {
            machine.push_element(Element::with_text(field.tag(), value), "    ");
        }
        self.push_machine(machine);
    }

    /// Puts `machine` after the last machine (on a line of its own,
    /// indented like its siblings).
    pub(super) fn push_machine(&mut self, machine: Element) {
        let last_machine = self.doc.root.children.iter().rposition(is_machine);
        self.doc.root.insert_element(last_machine, machine, "  ");
        self.moved();
    }
}
