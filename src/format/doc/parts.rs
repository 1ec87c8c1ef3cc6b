//! The document in parts and put together again: each machine's element
//! (a database lab keeps one a row), the document around them, the lab as
//! upstream's format holds it for an export.

use std::borrow::Cow;

use super::*;
use crate::format::xml::{Node, ParseError};

/// What a skeleton keeps where a machine stood: a processing instruction,
/// written back verbatim and seen by nothing that reads elements.
pub const MACHINE_MARK: &str = "<?mama-machine?>";

/// Whether `node` is a [`MACHINE_MARK`].
fn is_mark(node: &Node) -> bool {
    matches!(node, Node::Markup(raw) if raw.trim() == MACHINE_MARK)
}

impl XmlLab {
    /// The lab of these machine elements (each `<machine>…</machine>` as
    /// [`XmlLab::machine_text`] gives it), in order: how a lab that keeps
    /// each machine's element apart (the database backend) is read. Each
    /// text must hold exactly one machine, the one `names` gives in the same
    /// place: a text that would open or swallow another is refused.
    pub fn from_machines<'a>(
        machines: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<XmlLab, ParseError> {
        let machines: Vec<(&str, &str)> = machines.into_iter().collect();
        // The document in one allocation: a lab of thousands of machines
        // is megabytes, which growing by doubling copied over and over.
        let size = machines.iter().map(|(_, e)| e.len() + 3).sum::<usize>() + 24;
        let mut text = String::with_capacity(size);
        text.push_str("<settings>\n");
        let mut names = Vec::with_capacity(machines.len());
        for (name, element) in machines {
            text.push_str("  ");
            text.push_str(element);
            text.push('\n');
            names.push(name);
        }
        text.push_str("</settings>\n");
        let lab = XmlLab::read(Arc::new(text))?;
        let read: Vec<Cow<'_, str>> = lab.machine_nodes().map(|n| lab.node_name(n)).collect();
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
        if lab
            .doc
            .root
            .children
            .iter()
            .any(|n| n.element_name().is_some_and(|name| name != MACHINE))
        {
            return Err(ParseError {
                line: 0,
                column: 0,
                message: "a stored machine element holds elements beside it".into(),
            });
        }
        // Machines alone: no top-level element of another name, no device,
        // to be looked for.
        *lab.own.borrow_mut() = Some(top::Places::default());
        Ok(lab)
    }

    /// The root's machines, built or skimmed, in document order.
    pub(super) fn machine_nodes(&self) -> impl Iterator<Item = &Node> {
        self.doc.root.children.iter().filter(|n| is_machine(n))
    }

    /// The name of one of [`XmlLab::machine_nodes`]; empty when it has none.
    pub(super) fn node_name<'s>(&'s self, node: &'s Node) -> Cow<'s, str> {
        match node {
            Node::Lazy(lazy) => Cow::Borrowed(self.names.get(lazy.slot).unwrap_or("")),
            Node::Element(element) => element
                .child(Field::Name.tag())
                .map(|n| n.text())
                .unwrap_or_default(),
            _ => Cow::Borrowed(""),
        }
    }

    /// The text of one of [`XmlLab::machine_nodes`]: a skimmed machine's
    /// as read, a built one's as it now stands.
    pub(super) fn node_text(node: &Node) -> String {
        match node {
            Node::Lazy(lazy) => lazy.text().to_string(),
            Node::Element(element) => element.to_text(),
            _ => String::new(),
        }
    }

    /// The text of the element of the machine called `name`.
    pub fn machine_text(&self, name: &str) -> Option<String> {
        let at = self.position_of(name)?;
        Some(XmlLab::node_text(&self.doc.root.children[at]))
    }

    /// Every machine's name and element text, in order.
    pub fn machine_texts(&self) -> Vec<(String, String)> {
        self.machine_nodes()
            .map(|n| (self.node_name(n).into_owned(), XmlLab::node_text(n)))
            .collect()
    }

    /// The document without its machines and without mama's own
    /// bookkeeping: the root's attributes, other top-level elements,
    /// comments and declaration, which a lab keeps beside its machines.
    /// Each machine leaves a mark (`<?mama-machine?>`) in its place, so that
    /// [`XmlLab::assemble`] puts the machines back where they stood among
    /// the rest.
    pub fn skeleton(&self) -> String {
        let mut doc = self.doc.clone();
        for node in doc.root.children.iter_mut() {
            if is_machine(node) {
                *node = Node::Markup(crate::format::xml::Str::new(MACHINE_MARK));
            }
        }
        while let Some(at) = doc.root.children.iter().position(|n| {
            n.element_name()
                .is_some_and(|name| BOOKKEEPING.contains(&name))
        }) {
            doc.root.remove_child(at);
        }
        doc.write()
    }

    /// The lab as upstream's format holds it, for `export`: the skeleton
    /// (see [`XmlLab::skeleton`]; upstream's empty document when there is
    /// none) with these machine elements in the places its marks keep, in
    /// order; machines past the marks (added since) after the last of
    /// them, or after the skeleton's last element where it has no mark;
    /// marks past the machines (deleted since) are dropped.
    pub fn assemble<'a>(
        skeleton: Option<&str>,
        machines: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<XmlLab, ParseError> {
        let mut lab = match skeleton {
            Some(text) => XmlLab::parse(text)?,
            None => XmlLab::empty(),
        };
        let parts = XmlLab::from_machines(machines)?;
        let marks: Vec<usize> = lab
            .doc
            .root
            .children
            .iter()
            .enumerate()
            .filter(|(_, n)| is_mark(n))
            .map(|(at, _)| at)
            .collect();
        let mut machines = parts.machine_nodes();
        let mut last = None;
        let mut unfilled = Vec::new();
        for at in marks {
            match machines.next() {
                Some(node) => {
                    lab.doc.root.children[at] = Node::Element(built(node)?);
                    last = Some(at);
                }
                None => unfilled.push(at),
            }
        }
        // All after the last filled mark: taking them out moves none of it.
        for at in unfilled.into_iter().rev() {
            lab.doc.root.remove_child(at);
        }
        let mut after = last.or_else(|| lab.doc.root.children.iter().rposition(Node::is_element));
        for node in machines {
            lab.doc.root.insert_element(after, built(node)?, "  ");
            // Right after the one just put in: white space, then it.
            after = match after {
                Some(at) => Some(at + 2),
                None => lab.doc.root.children.iter().rposition(Node::is_element),
            };
        }
        lab.moved();
        lab.renamed = true;
        Ok(lab)
    }

    /// The state as upstream's format holds it, for `export`: without
    /// mama's own bookkeeping elements.
    pub fn exported(&self) -> String {
        let mut doc = self.doc.clone();
        for tag in BOOKKEEPING {
            if let Some(at) = doc.root.position(tag) {
                doc.root.remove_child(at);
            }
        }
        doc.write()
    }
}
