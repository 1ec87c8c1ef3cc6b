//! The lab's policy in its document: its settings, one top-level
//! `<lab_settings>` element with a child a setting, and the leases of
//! reservations, a top-level `<lease>` each:
//!
//! ```xml
//! <lab_settings>
//!   <longest_reservation>28800</longest_reservation>
//! </lab_settings>
//! <lease machine="rig1" user="alice" expires="1763047845" note="bisecting"/>
//! ```
//!
//! Both stand beside the machines, where PHP mama keeps what it does not
//! know (it rebuilds a machine from its own fields, but keeps top-level
//! elements). Children and attributes mama does not know stay where they
//! are. A lab without them pays nothing: they are found in the one look
//! over the root's children that finds the devices.

use super::*;
use crate::format::xml::Node;
use crate::model::lease::Lease;
use crate::model::setting::Setting;

impl XmlLab {
    /// The settings of the first `<lab_settings>` that have a value (the
    /// first child of each setting's name counts).
    pub fn settings(&self) -> Vec<(Setting, String)> {
        let Some(element) = self.own_element(LAB_SETTINGS) else {
            return Vec::new();
        };
        let mut seen: Vec<Setting> = Vec::new();
        let mut settings = Vec::new();
        for child in element.elements() {
            let Some(setting) = Setting::ALL.into_iter().find(|s| child.name == s.tag()) else {
                continue;
            };
            if seen.contains(&setting) {
                continue;
            }
            seen.push(setting);
            let value = child.text();
            if !value.trim().is_empty() {
                settings.push((setting, value.into_owned()));
            }
        }
        settings
    }

    /// The text of the first `<lab_settings>` element, as it stands (for
    /// `import`, which takes it whole).
    pub fn settings_text(&self) -> Option<String> {
        self.own_element(LAB_SETTINGS).map(Element::to_text)
    }

    /// Sets a setting's child of `<lab_settings>` (the first of its name;
    /// the others of that name go), adding the element where there is
    /// none; an empty value removes the child, and the element with it
    /// when nothing else is left in it.
    pub(super) fn set_setting(&mut self, setting: Setting, value: &str) {
        let tag = setting.tag();
        let Some(at) = self.own_at(LAB_SETTINGS) else {
            if !value.is_empty() {
                let element = self.block_element(LAB_SETTINGS, [(tag, value)]);
                let after = self.device_places().last().copied();
                self.put_top(element, after);
            }
            return;
        };
        let inner = self.indents().1;
        let Some(Node::Element(element)) = self.doc.root.children.get_mut(at) else {
            return;
        };
        let mut places: Vec<usize> = element
            .children
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_element_named(tag))
            .map(|(i, _)| i)
            .collect();
        let first = match value.is_empty() {
            true => None,
            false => places.first().copied(),
        };
        if first.is_some() {
            places.remove(0);
        }
        for i in places.into_iter().rev() {
            element.remove_child(i);
        }
        match first {
            Some(i) => {
                if let Some(Node::Element(child)) = element.children.get_mut(i) {
                    child.set_text(value);
                }
            }
            None if !value.is_empty() => {
                let indent = inner.trim_start_matches('\n').to_string();
                element.push_element(Element::with_text(tag, value), &indent);
            }
            None => {}
        }
        let empty = element
            .children
            .iter()
            .all(|n| matches!(n, Node::Text { raw, .. } if raw.trim().is_empty()));
        if empty {
            self.doc.root.remove_child(at);
            self.moved();
        }
    }

    /// Makes `element` (a `<lab_settings>` element's text) the lab's
    /// settings, whole, in place of the first `<lab_settings>`; `None`
    /// removes it.
    pub(super) fn replace_settings(&mut self, element: Option<&str>) -> Result<(), Error> {
        if self.settings_text().as_deref() == element {
            return Ok(());
        }
        let built = match element {
            Some(text) => {
                let built = Document::parse(text)
                    .map_err(|e| {
                        Error::Invalid(format!("the <{LAB_SETTINGS}> to put in the lab: {e}"))
                    })?
                    .root;
                if built.name != LAB_SETTINGS {
                    return Err(Error::Invalid(format!(
                        "internal error: <{}> put in the lab as <{LAB_SETTINGS}>",
                        built.name
                    )));
                }
                Some(built)
            }
            None => None,
        };
        let at = self.own_at(LAB_SETTINGS);
        match (at, built) {
            (Some(at), Some(built)) => {
                if let Some(node) = self.doc.root.children.get_mut(at) {
                    *node = Node::Element(built);
                }
            }
            (Some(at), None) => {
                self.doc.root.remove_child(at);
                self.moved();
            }
            (None, Some(built)) => {
                let after = self.device_places().last().copied();
                self.put_top(built, after);
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// Every `<lease>` that names a machine, in order, with the machine it
    /// names. An `expires` that is not a whole number reads as none (the
    /// reservation then lasts until released, as without a lease).
    pub fn leases(&self) -> Vec<(String, Lease)> {
        self.lease_places()
            .into_iter()
            .filter_map(|at| match self.doc.root.children.get(at) {
                Some(Node::Element(element)) => read_lease(element),
                _ => None,
            })
            .collect()
    }

    /// Gives the machine `machine` this lease, and no other: the first
    /// `<lease>` naming it is rewritten (its other attributes kept), the
    /// others removed; where there is none, a new one goes after the last
    /// lease, else before the first machine. `None` removes every lease
    /// naming it.
    pub(super) fn set_lease(&mut self, machine: &str, lease: Option<&Lease>) {
        let mut places: Vec<usize> = self
            .lease_places()
            .into_iter()
            .filter(|&at| {
                matches!(self.doc.root.children.get(at),
                    Some(Node::Element(e)) if e.attribute("machine").as_deref() == Some(machine))
            })
            .collect();
        let first = match lease {
            Some(_) => places.first().copied(),
            None => None,
        };
        if first.is_some() {
            places.remove(0);
        }
        for &at in places.iter().rev() {
            self.doc.root.remove_child(at);
        }
        if !places.is_empty() {
            self.moved();
        }
        let Some(lease) = lease else {
            return;
        };
        let mut element = match first {
            Some(at) => match self.doc.root.children.get_mut(at) {
                Some(Node::Element(element)) => {
                    write_lease(element, machine, lease);
                    return;
                }
                _ => return,
            },
            None => Element::new(LEASE),
        };
        write_lease(&mut element, machine, lease);
        let after = self.lease_places().last().copied();
        self.put_top(element, after);
    }
}

/// A `<lease>` as the model holds it, with the machine it names; `None`
/// where it names none.
fn read_lease(element: &Element) -> Option<(String, Lease)> {
    let machine = element.attribute("machine")?;
    let machine = machine.trim();
    if machine.is_empty() {
        return None;
    }
    Some((
        machine.to_string(),
        Lease {
            user: element
                .attribute("user")
                .map(|u| u.trim().to_string())
                .unwrap_or_default(),
            expires: element
                .attribute("expires")
                .and_then(|t| t.trim().parse().ok()),
            note: element.attribute("note").unwrap_or_default(),
        },
    ))
}

/// Writes `lease` of `machine` into the attributes of `element`.
fn write_lease(element: &mut Element, machine: &str, lease: &Lease) {
    let expires = lease.expires.map(|t| t.to_string());
    element.set_attribute("machine", Some(machine));
    element.set_attribute("user", Some(&lease.user));
    element.set_attribute("expires", expires.as_deref());
    element.set_attribute(
        "note",
        (!lease.note.is_empty()).then_some(lease.note.as_str()),
    );
}
