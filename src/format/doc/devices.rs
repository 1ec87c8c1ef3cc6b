//! The lab's power devices: top-level `<device>` elements beside the
//! machines, each with its `<name>`, its `<driver>` and one child element
//! an option, in the order given:
//!
//! ```xml
//! <device>
//!   <name>pdu1</name>
//!   <driver>mpower</driver>
//!   <address>192.168.2.2</address>
//! </device>
//! ```
//!
//! Read into the model's [`Device`]s; one mama cannot use (no name, a
//! driver it does not know, a name an earlier device has) is a
//! [`BrokenDevice`], and stays in the document as written. A new device goes
//! after the last one, or before the first machine, indented like the
//! document; a removed one takes its line with it. Children and attributes
//! mama does not know stay where they are.

use super::*;
use crate::error::Error;
use crate::format::xml::{Element, Node, Str};
use crate::model::device::{self, BrokenDevice, Device, Driver};

impl XmlLab {
    /// The lab's devices, in document order: those mama can use (their
    /// options unchecked: see [`Device::read`]) and those it cannot.
    pub fn devices(&self) -> (Vec<Device>, Vec<BrokenDevice>) {
        let mut devices: Vec<Device> = Vec::new();
        let mut broken: Vec<BrokenDevice> = Vec::new();
        for at in self.device_places() {
            let Some(Node::Element(element)) = self.doc.root.children.get(at) else {
                continue;
            };
            match read_device(element) {
                Ok(device) if devices.iter().any(|d| d.name == device.name) => {
                    broken.push(BrokenDevice {
                        reason: format!("an earlier <device> is named '{}' too", device.name),
                        name: device.name.clone(),
                        driver: device.driver.name().to_string(),
                        options: device.options().to_vec(),
                    });
                }
                Ok(device) => devices.push(device),
                Err(device) => broken.push(device),
            }
        }
        (devices, broken)
    }

    /// The text of every top-level `<device>` element, in order, as it
    /// stands (for `import`, which takes them whole).
    pub fn device_texts(&self) -> Vec<String> {
        self.device_places()
            .into_iter()
            .filter_map(|at| match self.doc.root.children.get(at) {
                Some(Node::Element(element)) => Some(element.to_text()),
                _ => None,
            })
            .collect()
    }

    /// Adds `device` after the last device, else before the first machine,
    /// else after the last element, indented like the document.
    pub(super) fn add_device(&mut self, device: &Device) {
        let element = self.device_element(device);
        self.put_device(element);
    }

    /// Puts a `<device>` element among the root's children (see
    /// [`XmlLab::put_top`]): after the last device.
    fn put_device(&mut self, element: Element) {
        let last_device = self.device_places().last().copied();
        self.put_top(element, last_device);
    }

    /// Removes the first `<device>` called `name`, with the white space
    /// that leads up to it.
    pub(super) fn remove_device(&mut self, name: &str) -> Result<(), Error> {
        let at = self
            .device_places()
            .into_iter()
            .find(|&at| {
                matches!(self.doc.root.children.get(at),
                    Some(Node::Element(e)) if name_of(e).as_deref() == Some(name))
            })
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "internal error: the removal of power device '{name}' found no such \
                     <device> in the lab"
                ))
            })?;
        self.doc.root.remove_child(at);
        self.moved();
        Ok(())
    }

    /// Makes `elements` (each a `<device>` element's text) the lab's
    /// devices: a document that has these very elements already is left
    /// as it is; else every `<device>` goes, and these are put in, each
    /// whole.
    pub(super) fn replace_devices(&mut self, elements: &[String]) -> Result<(), Error> {
        if self.device_texts() == elements {
            return Ok(());
        }
        let mut built = Vec::with_capacity(elements.len());
        for text in elements {
            let element = Document::parse(text)
                .map_err(|e| Error::Invalid(format!("a <device> to put in the lab: {e}")))?
                .root;
            if element.name != DEVICE {
                return Err(Error::Invalid(format!(
                    "internal error: <{}> put in the lab as a <device>",
                    element.name
                )));
            }
            built.push(element);
        }
        for at in self.device_places().into_iter().rev() {
            self.doc.root.remove_child(at);
        }
        self.moved();
        for element in built {
            self.put_device(element);
        }
        Ok(())
    }

    /// Puts a top-level element among the root's children, on a line of
    /// its own: after the child at `after` (the last of its kind), else
    /// before the first machine, else after the last element.
    pub(super) fn put_top(&mut self, element: Element, after: Option<usize>) {
        let children = &self.doc.root.children;
        let first_machine = children.iter().position(is_machine);
        let after = match (after, first_machine) {
            (Some(last), _) => Some(last),
            // After the element before the first machine, if there is one.
            (None, Some(machine)) => children[..machine].iter().rposition(Node::is_element),
            (None, None) => children.iter().rposition(Node::is_element),
        };
        match (after, first_machine) {
            (None, Some(machine)) => {
                // The machine is the first element: the new one takes its
                // place, and the machine moves a line down.
                let indent = match machine.checked_sub(1).map(|i| &children[i]) {
                    Some(Node::Text { raw, .. }) if raw.trim().is_empty() => raw.clone(),
                    _ => Str::new("\n  "),
                };
                let children = &mut self.doc.root.children;
                children.insert(
                    machine,
                    Node::Text {
                        raw: indent,
                        value: None,
                    },
                );
                children.insert(machine, Node::Element(element));
            }
            (after, _) => self.doc.root.insert_element(after, element, "  "),
        }
        self.moved();
    }

    /// The `<device>` element of `device`, indented as the document
    /// indents (see [`XmlLab::block_element`]).
    fn device_element(&self, device: &Device) -> Element {
        let fields = [
            ("name", device.name.as_str()),
            ("driver", device.driver.name()),
        ];
        let options = device
            .options()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        self.block_element(DEVICE, fields.into_iter().chain(options))
    }

    /// A new top-level element `tag` with a child element for each of
    /// `fields`, indented as the document indents: its children like those
    /// of a device there, else like a machine's fields, else one step
    /// further in than the root's children.
    pub(super) fn block_element<'v>(
        &self,
        tag: &str,
        fields: impl IntoIterator<Item = (&'v str, &'v str)>,
    ) -> Element {
        let (outer, inner) = self.indents();
        let space = |text: &str| Node::Text {
            raw: Str::new(text),
            value: None,
        };
        let mut element = Element::new(tag);
        for (tag, value) in fields {
            element.children.push(space(&inner));
            element
                .children
                .push(Node::Element(Element::with_text(tag, value)));
        }
        if inner.contains('\n') {
            element.children.push(space(&outer));
        }
        element
    }

    /// The white space before a top-level element, and before its
    /// children (see [`XmlLab::block_element`]).
    pub(super) fn indents(&self) -> (String, String) {
        let outer = self.top_indent();
        let inner = self.child_indent().unwrap_or_else(|| {
            let step = outer.rsplit('\n').next().filter(|s| !s.is_empty());
            format!("{outer}{}", step.unwrap_or("  "))
        });
        (outer, inner)
    }

    /// The white space before the root's last child element (as
    /// [`Element::insert_element`] indents a new one): `"\n  "` where there
    /// is none.
    fn top_indent(&self) -> String {
        let children = &self.doc.root.children;
        let last = children.iter().rposition(Node::is_element);
        match last
            .and_then(|at| at.checked_sub(1))
            .map(|at| &children[at])
        {
            Some(Node::Text { raw, .. }) if raw.trim().is_empty() => raw.to_string(),
            _ => "\n  ".to_string(),
        }
    }

    /// The white space before the first child element of a device, else
    /// of the first machine: how the document indents an element's
    /// children.
    fn child_indent(&self) -> Option<String> {
        let children = &self.doc.root.children;
        let device = self
            .device_places()
            .first()
            .and_then(|&at| match children.get(at) {
                Some(Node::Element(e)) => leading_space(e),
                _ => None,
            });
        device.or_else(|| match children.iter().find(|n| is_machine(n))? {
            Node::Element(e) => leading_space(e),
            Node::Lazy(lazy) => leading_space(&lazy.build().ok()?),
            _ => None,
        })
    }
}

/// The white space before `element`'s first child element, where there is
/// some (`None` for an element without children, or without space before
/// them).
fn leading_space(element: &Element) -> Option<String> {
    let first = element.children.iter().position(Node::is_element)?;
    match element.children.get(first.checked_sub(1)?)? {
        Node::Text { raw, .. } if raw.trim().is_empty() => Some(raw.to_string()),
        _ => None,
    }
}

/// The name a `<device>` gives itself, trimmed; `None` where it has none.
fn name_of(element: &Element) -> Option<String> {
    let name = element.child("name")?.text();
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// A `<device>` as the model holds it: a [`Device`] where it has a name and
/// a driver mama knows, else a [`BrokenDevice`] saying why. Its options are
/// the children named as options of any driver (see
/// [`device::all_options`]), as written; other children are not mama's.
fn read_device(element: &Element) -> Result<Device, BrokenDevice> {
    let known = device::all_options();
    let options: Vec<(String, String)> = element
        .elements()
        .filter(|e| known.iter().any(|o| e.name == o.name))
        .map(|e| (e.name.to_string(), e.text().into_owned()))
        .collect();
    let name = name_of(element).unwrap_or_default();
    let driver = element
        .child("driver")
        .map(|e| e.text().trim().to_string())
        .unwrap_or_default();
    let reason = if name.is_empty() {
        Some("it has no <name>".to_string())
    } else if driver.is_empty() {
        Some("it has no <driver>".to_string())
    } else if Driver::from_name(&driver).is_none() {
        Some(format!(
            "mama knows no driver '{driver}' (it knows {})",
            Driver::ALL.map(Driver::name).join(", ")
        ))
    } else {
        None
    };
    match (reason, Driver::from_name(&driver)) {
        (None, Some(driver)) => Ok(Device::read(name, driver, options)),
        (reason, _) => Err(BrokenDevice {
            name,
            driver,
            options,
            reason: reason.unwrap_or_default(),
        }),
    }
}
