//! The machine document: the upstream
//! `<settings><machine>…</machine></settings>` format, over the lossless
//! tree of [`crate::format::xml`].
//!
//! A machine is an element of the tree; its fields are its child elements.
//! [`XmlLab::model`] reads the plain [`Lab`] the engine works on, and
//! [`XmlLab::apply`] replays the lab's [`Change`]s onto the tree: writing a
//! field touches only that field's element, so every element, attribute and
//! comment that mama does not know stays where it was, and a tree no change
//! was replayed on writes back the very text it was read from. Other
//! top-level elements are kept as they are, and read and written by name
//! ([`XmlLab::top_level`]): the state file keeps its own bookkeeping there
//! (see [`BOOKKEEPING`]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use super::xml::{self, Document, Element, Node, ParseError, Skimmer, Source, Str};
use crate::error::Error;
use crate::model::field::Field;
use crate::model::{Change, Lab, Machine, NewMachine};

/// The largest document mama reads (a state file, a roll-forward copy, an
/// `import`): some five times a lab of 100,000 machines as upstream writes
/// them. A larger one is refused before it is read, never allocated.
pub const MAX_DOCUMENT: u64 = 256 << 20;

const MACHINE: &str = "machine";
const ROOT: &str = "settings";
/// mama's own top-level elements, the state file's bookkeeping (its
/// history's newest events and their number, the mark of a folded journal:
/// see [`crate::backend::file`], which reads and writes them): a lab's
/// document as upstream's format holds it (an export, the document around
/// a database lab's machines) leaves them out.
pub const BOOKKEEPING: [&str; 3] = ["event_seq", "pending_events", "journal_folded"];

/// The parsed state file.
///
/// Its machines are read lazily: the whole text is checked once, but each
/// `<machine>` stays a span of it ([`xml::Node::Lazy`]) with its fields'
/// texts read into the [`Machine`] of its slot, as spans too. Only a
/// machine that a change reaches is built into a tree; the rest are
/// written back as the bytes they were, and [`XmlLab::render`] proves the
/// new text by checking again only what changed.
#[derive(Debug, Clone)]
pub struct XmlLab {
    doc: Document,
    /// The skimmed machines as read, by slot (until
    /// [`XmlLab::take_model`] takes them).
    machines: Vec<Machine>,
    /// Their names, by slot, for finding them once the machines are taken.
    names: Names,
    /// Whether a change added or renamed a machine (then the names are
    /// checked again before writing).
    renamed: bool,
    /// Where each machine stood among the root's children at the last
    /// look: a hint, checked at every use and made afresh when wrong, so
    /// that replaying a journal's changes does not search the whole lab
    /// for each.
    found: std::cell::RefCell<std::collections::HashMap<Box<str>, usize>>,
    /// Where the first root child of each name but `machine` stands,
    /// found in one look over the root's children and kept until a node is
    /// put in or taken out among them ([`XmlLab::moved`]): a lookup by name
    /// looks at every child, twenty thousand on a large lab, and a
    /// transaction makes a handful. Each place found is checked again at
    /// use.
    own: std::cell::RefCell<Option<Vec<(Str, u32)>>>,
}

/// A quick hash for machine names (FxHash's multiply and rotate, eight
/// bytes at a time): checking ten thousand names for a duplicate with
/// SipHash cost more than reading them. Not for names an attacker could
/// choose to collide at will in a long-lived table; here a table lives
/// for one check.
#[derive(Default)]
struct FoldHasher(u64);

impl std::hash::Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The names of the skimmed machines, by slot: spans of the source (eight
/// bytes a machine), or, for a name written with references, a string.
#[derive(Debug, Clone, Default)]
struct Names {
    source: Option<Source>,
    spans: Vec<(u32, u32)>,
    odd: Vec<String>,
}

/// A slot without a name.
const NO_NAME: (u32, u32) = (u32::MAX, u32::MAX);

impl Names {
    fn of(source: &Source, machines: &[Machine]) -> Names {
        let mut names = Names {
            source: Some(Arc::clone(source)),
            spans: Vec::with_capacity(machines.len()),
            odd: Vec::new(),
        };
        for machine in machines {
            // Told from the machine's slot, without a look at the text
            // (scattered over megabytes, out of the processor's caches).
            let span = match machine.has(Field::Name) {
                false => NO_NAME,
                true => match machine
                    .span(Field::Name)
                    .and_then(|(a, b)| Some((u32::try_from(a).ok()?, u32::try_from(b).ok()?)))
                {
                    Some(span) if span.0 != u32::MAX => span,
                    _ => {
                        names.odd.push(machine.name().to_string());
                        (u32::MAX, (names.odd.len() - 1) as u32)
                    }
                },
            };
            names.spans.push(span);
        }
        names
    }

    /// The name of the machine in `slot`; `None` when it has none.
    fn get(&self, slot: u32) -> Option<&str> {
        match *self.spans.get(slot as usize)? {
            NO_NAME => None,
            (u32::MAX, at) => self.odd.get(at as usize).map(String::as_str),
            (from, to) => self.source.as_ref()?.get(from as usize..to as usize),
        }
    }
}

/// Reads the fields of skimmed machines into [`Machine`]s.
struct Machines<'s> {
    source: &'s Source,
    list: Vec<Machine>,
    /// The field that came after the last one told: machines list their
    /// fields in one order, so this is nearly always the next.
    next: usize,
}

/// The tags of the fields, by [`Field::index`]: the children a machine's
/// skimmer expects.
const TAGS: [&str; Field::ALL.len()] = {
    let mut tags = [""; Field::ALL.len()];
    let mut i = 0;
    while i < tags.len() {
        tags[i] = Field::ALL[i].tag();
        i += 1;
    }
    tags
};

impl Machines<'_> {
    /// That the machine in `slot` has `field`, its text `text`.
    fn read(&mut self, slot: u32, field: Field, text: Cow<'_, str>, structured: bool) {
        let Some(machine) = self.list.get_mut(slot as usize) else {
            return;
        };
        // An empty field is the empty span: any source has it.
        if text.is_empty() && machine.read_span(field, 0, 0, structured) {
            return;
        }
        if let Cow::Borrowed(piece) = text
            && let Some((start, end)) = xml::offsets_in(self.source, piece)
            && machine.read_span(field, start, end, structured)
        {
            return;
        }
        machine.read_text(field, text.into_owned(), structured);
    }
}

impl Skimmer for Machines<'_> {
    /// Only machines: the lab's code takes every skimmed element for a
    /// machine (see [`is_machine`]).
    fn skims(&mut self, name: &str) -> bool {
        name == MACHINE
    }

    fn known(&self) -> &[&'static str] {
        &TAGS
    }

    fn known_child(&mut self, slot: u32, index: usize, text: Cow<'_, str>, structured: bool) {
        if let Some(&field) = Field::ALL.get(index) {
            self.read(slot, field, text, structured);
        }
    }

    fn reset(&mut self) {
        self.list.clear();
        self.next = 0;
    }

    fn begin(&mut self) -> u32 {
        self.list.push(Machine::of(self.source));
        u32::try_from(self.list.len() - 1).unwrap_or(u32::MAX)
    }

    fn child(&mut self, slot: u32, name: &str, text: Cow<'_, str>, structured: bool) {
        let field = match Field::ALL.get(self.next) {
            Some(&field) if xml::same_bytes(field.tag().as_bytes(), name.as_bytes()) => field,
            _ => match Field::from_tag(name) {
                Some(field) => field,
                None => return,
            },
        };
        self.next = field.index() + 1;
        self.read(slot, field, text, structured);
    }
}

impl XmlLab {
    /// An empty lab: what `add` or `import` start from where there is none.
    pub fn empty() -> XmlLab {
        XmlLab {
            doc: Document::new(Element::new(ROOT)),
            machines: Vec::new(),
            names: Names::default(),
            renamed: false,
            found: Default::default(),
            own: Default::default(),
        }
    }

    /// Reads a state file's text: well-formed XML, a `<settings>` root, and
    /// no two machines of one name.
    pub fn parse(text: &str) -> Result<XmlLab, ParseError> {
        XmlLab::read(Arc::new(text.to_string()))
    }

    /// [`XmlLab::parse`] of a text it keeps (no copy): machines are skimmed,
    /// not built.
    pub fn read(source: Source) -> Result<XmlLab, ParseError> {
        let mut machines = Machines {
            source: &source,
            list: Vec::with_capacity(machine_capacity(source.len())),
            next: 0,
        };
        let doc = Document::parse_lazy(Arc::clone(&source), &mut machines)?;
        let machines = machines.list;
        XmlLab::checked(XmlLab {
            doc,
            names: Names::of(&source, &machines),
            machines,
            renamed: false,
            found: Default::default(),
            own: Default::default(),
        })
    }

    /// The memory that reading a text of `len` bytes reserves after the
    /// text, as a rule: its machines and the root's nodes, each reserved
    /// once (see [`crate::backend::file::memory::populate`]).
    pub fn room_for(len: usize) -> usize {
        machine_capacity(len) * std::mem::size_of::<Machine>()
            + xml::root_capacity(len) * std::mem::size_of::<Node>()
    }

    /// [`XmlLab::parse`] building the whole tree: what the lazy reading is
    /// held to, in the tests.
    #[cfg(test)]
    pub fn parse_eager(text: &str) -> Result<XmlLab, ParseError> {
        XmlLab::checked(XmlLab {
            doc: Document::parse(text)?,
            machines: Vec::new(),
            names: Names::default(),
            renamed: false,
            found: Default::default(),
            own: Default::default(),
        })
    }

    /// The lab if its root is `<settings>` and no two machines share a name.
    fn checked(lab: XmlLab) -> Result<XmlLab, ParseError> {
        if lab.doc.root.name != ROOT {
            return Err(ParseError {
                line: 0,
                column: 0,
                message: format!(
                    "the root element is <{}>, not <{ROOT}>: this is not a mama state file",
                    lab.doc.root.name
                ),
            });
        }
        lab.check_names()?;
        Ok(lab)
    }

    fn check_names(&self) -> Result<(), ParseError> {
        let mut seen: HashSet<Cow<'_, str>, BuildHasherDefault<FoldHasher>> =
            HashSet::with_capacity_and_hasher(self.names.spans.len(), Default::default());
        for node in &self.doc.root.children {
            let name = match node {
                Node::Lazy(lazy) => Cow::Borrowed(self.names.get(lazy.slot).unwrap_or("")),
                Node::Element(machine) if machine.name == MACHINE => machine
                    .child(Field::Name.tag())
                    .map(|e| e.text())
                    .unwrap_or_default(),
                _ => continue,
            };
            if !name.is_empty() && !seen.insert(name.clone()) {
                return Err(ParseError {
                    line: 0,
                    column: 0,
                    message: format!("two machines are named '{name}'"),
                });
            }
        }
        Ok(())
    }

    /// The state file's text, unchecked.
    pub fn to_xml(&self) -> String {
        self.doc.write()
    }

    /// The state file's text, proven to read back as a state file: well
    /// formed (see [`Document::write_checked`]: only what changed is
    /// parsed again), under the same root, with no two machines of one
    /// name.
    pub fn render(&self) -> Result<Vec<Cow<'_, str>>, ParseError> {
        let pieces = self.doc.write_checked()?;
        if self.renamed {
            self.check_names()?;
        }
        Ok(pieces)
    }

    /// Whether `file` holds, from where it stands to its end, the text this
    /// document renders, byte for byte. Read in blocks of 64 KiB and
    /// compared as they come: no second copy of a large lab is held.
    pub fn rendered_by(&self, file: &mut impl std::io::Read) -> std::io::Result<bool> {
        let mut block = vec![0u8; 64 * 1024];
        for piece in self.doc.pieces() {
            let mut piece = piece.as_bytes();
            while !piece.is_empty() {
                let want = piece.len().min(block.len());
                let got = match file.read(&mut block[..want]) {
                    Ok(0) => return Ok(false),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if block[..got] != piece[..got] {
                    return Ok(false);
                }
                piece = &piece[got..];
            }
        }
        // Nothing more.
        loop {
            match file.read(&mut block[..1]) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The lab as the engine sees it: each machine with the text of every
    /// field it has, and the fields that hold elements of their own.
    pub fn model(&self) -> Lab {
        Lab::new(
            self.doc
                .root
                .children
                .iter()
                .filter_map(|node| match node {
                    Node::Lazy(lazy) => {
                        match self.machines.get(lazy.slot as usize) {
                            Some(machine) => Some(machine.clone()),
                            // Taken: read again from its text.
                            None => lazy.build().ok().map(|e| machine_of(&e)),
                        }
                    }
                    Node::Element(element) if element.name == MACHINE => Some(machine_of(element)),
                    _ => None,
                })
                .collect(),
        )
    }

    /// [`XmlLab::model`], handing over the machines read instead of copying
    /// them (a lab of ten thousand machines holds megabytes of them): for
    /// a transaction, which reads the model once.
    pub fn take_model(&mut self) -> Lab {
        let mut machines = std::mem::take(&mut self.machines);
        // Skimmed in document order, slot after slot: then they are the
        // lab's machines as they stand, and move over whole.
        let mut machine_nodes = self
            .doc
            .root
            .children
            .iter()
            .filter(|node| is_machine(node));
        let in_order = machine_nodes
            .by_ref()
            .enumerate()
            .all(|(at, node)| matches!(node, Node::Lazy(lazy) if lazy.slot as usize == at))
            && self
                .doc
                .root
                .children
                .iter()
                .filter(|n| matches!(n, Node::Lazy(_)))
                .count()
                == machines.len();
        if in_order {
            return Lab::new(machines);
        }
        Lab::new(
            self.doc
                .root
                .children
                .iter()
                .filter_map(|node| match node {
                    Node::Lazy(lazy) => match machines.get_mut(lazy.slot as usize) {
                        Some(machine) => Some(std::mem::take(machine)),
                        None => lazy.build().ok().map(|e| machine_of(&e)),
                    },
                    Node::Element(element) if element.name == MACHINE => Some(machine_of(element)),
                    _ => None,
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
    fn is_named(&self, node: &Node, name: &str) -> bool {
        match node {
            Node::Lazy(lazy) => self.names.get(lazy.slot) == Some(name),
            Node::Element(element) => is_machine_named(element, name),
            _ => false,
        }
    }

    /// Where the machine called `name` stands among the root's children.
    fn position_of(&self, name: &str) -> Option<usize> {
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
    fn machine_mut(&mut self, name: &str) -> Result<&mut Element, Error> {
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
    fn add(&mut self, new: &NewMachine) {
        let mut machine = Element::new(MACHINE);
        for (field, value) in new.fields() {
            machine.push_element(Element::with_text(field.tag(), value), "    ");
        }
        self.push_machine(machine);
    }

    /// Puts `machine` after the last machine (on a line of its own,
    /// indented like its siblings).
    fn push_machine(&mut self, machine: Element) {
        let last_machine = self.doc.root.children.iter().rposition(is_machine);
        self.doc.root.insert_element(last_machine, machine, "  ");
        self.moved();
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
        Ok(lab)
    }

    /// The root's machines, built or skimmed, in document order.
    fn machine_nodes(&self) -> impl Iterator<Item = &Node> {
        self.doc.root.children.iter().filter(|n| is_machine(n))
    }

    /// The name of one of [`XmlLab::machine_nodes`]; empty when it has none.
    fn node_name<'s>(&'s self, node: &'s Node) -> Cow<'s, str> {
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
    fn node_text(node: &Node) -> String {
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
    pub fn skeleton(&self) -> String {
        let mut doc = self.doc.clone();
        while let Some(at) = doc.root.children.iter().position(|n| {
            n.element_name()
                .is_some_and(|name| name == MACHINE || BOOKKEEPING.contains(&name))
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
        for node in parts.machine_nodes() {
            let last = lab.doc.root.children.iter().rposition(Node::is_element);
            lab.doc.root.insert_element(last, built(node)?, "  ");
            lab.moved();
        }
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

    /// The text of the first top-level element called `tag`, if there is
    /// one (for a lab's own elements beside its machines).
    pub fn top_level(&self, tag: &str) -> Option<String> {
        Some(self.own_element(tag)?.text().into_owned())
    }

    /// Removes the first top-level element called `tag`, if there is one.
    pub fn remove_top_level(&mut self, tag: &str) {
        if let Some(at) = self.own_at(tag) {
            self.doc.root.remove_child(at);
            self.moved();
        }
    }

    /// Sets the text of the first top-level element called `tag` (not
    /// `machine`), adding it after the last element when missing.
    pub fn set_top_level(&mut self, tag: &str, value: &str) {
        if let Some(at) = self.own_at(tag)
            && let Some(Node::Element(element)) = self.doc.root.children.get_mut(at)
        {
            element.set_text(value);
            return;
        }
        self.doc
            .root
            .push_element(Element::with_text(tag, value), "  ");
        self.moved();
    }

    /// The first root child element called `tag` (not `machine`).
    fn own_element(&self, tag: &str) -> Option<&Element> {
        match self.doc.root.children.get(self.own_at(tag)?)? {
            Node::Element(element) => Some(element),
            _ => None,
        }
    }

    /// Where the first root child element called `tag` (not `machine`)
    /// stands: what `self.doc.root.child(tag)` finds.
    fn own_at(&self, tag: &str) -> Option<usize> {
        let children = &self.doc.root.children;
        let is_it = |at: usize| matches!(children.get(at), Some(Node::Element(e)) if e.name == tag);
        let known = self.own.borrow().as_ref().map(|places| {
            places
                .iter()
                .find(|(name, _)| *name == tag)
                .map(|&(_, at)| at)
        });
        let at = match known {
            Some(Some(at)) if is_it(at as usize) => Some(at as usize),
            Some(None) => None,
            // Not where it was (a move went unsaid), or not looked for yet.
            _ => self.find_own(tag),
        };
        debug_assert_eq!(
            at,
            children
                .iter()
                .position(|n| matches!(n, Node::Element(e) if e.name == tag)),
            "the place of <{tag}>"
        );
        at
    }

    /// Looks for the first root child of each name but `machine`, keeps
    /// what it finds, and says where `tag` stands.
    fn find_own(&self, tag: &str) -> Option<usize> {
        let mut places: Vec<(Str, u32)> = Vec::new();
        for (at, node) in self.doc.root.children.iter().enumerate() {
            if let Node::Element(element) = node
                && element.name != MACHINE
                && !places.iter().any(|(name, _)| *name == element.name)
                && let Ok(at) = u32::try_from(at)
            {
                places.push((element.name.clone(), at));
            }
        }
        let found = places
            .iter()
            .find(|(name, _)| *name == tag)
            .map(|&(_, at)| at as usize);
        *self.own.borrow_mut() = Some(places);
        found
    }

    /// A node was put in or taken out among the root's children: the
    /// places of [`OWN`] are looked for again at the next lookup.
    fn moved(&self) {
        *self.own.borrow_mut() = None;
    }
}

/// A machine node of the root built into an element (a skimmed one from
/// its text), to be moved into another document: a skimmed machine's
/// slot means something only in the document that read it.
fn built(node: &Node) -> Result<Element, ParseError> {
    match node {
        Node::Lazy(lazy) => lazy.build(),
        Node::Element(element) => Ok(element.clone()),
        _ => Err(ParseError {
            line: 0,
            column: 0,
            message: "internal error: not an element".into(),
        }),
    }
}

/// How many machines reading a text of `len` bytes reserves room for: a
/// machine takes some 400 bytes of text or more.
fn machine_capacity(len: usize) -> usize {
    len / 400 + 1
}

/// A built `<machine>` as the engine sees it.
fn machine_of(element: &Element) -> Machine {
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
}

/// Whether `node` is a machine's element: a skimmed one (the lab's
/// skimmer skims `<machine>` alone, see [`Machines`]) or a built
/// `<machine>`. A skimmed one is told without a look at its text, which on
/// a large lab lies scattered over megabytes, mostly out of the processor's
/// caches (a look at each name made a search of ten thousand machines cost
/// a tenth of a millisecond and more).
fn is_machine(node: &Node) -> bool {
    match node {
        Node::Lazy(lazy) => {
            debug_assert_eq!(lazy.name(), MACHINE);
            true
        }
        Node::Element(element) => element.name == MACHINE,
        _ => false,
    }
}

/// Whether `element` is the `<machine>` called `name`.
fn is_machine_named(element: &Element, name: &str) -> bool {
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
                user: None,
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
    fn a_machine_holding_carriage_returns_reads_alike_once_built() {
        let text = "<settings>\r\n  <machine>\r\n    <name>a</name>\r\n    <ip>x\r\ny</ip>\r\n  </machine>\r\n</settings>\r\n";
        let mut lab = XmlLab::parse(text).unwrap();
        assert_eq!(lab.model().get("a").unwrap().get(Field::Ip), "x\ny");
        // A change builds the skimmed machine from its text.
        let mut model = lab.take_model();
        model.get_mut("a").unwrap().set(Field::Os, "z").unwrap();
        lab.apply(model.changes()).unwrap();
        let built = lab.model();
        assert_eq!(built.get("a").unwrap().get(Field::Ip), "x\ny");
        assert_eq!(built.get("a").unwrap().get(Field::Os), "z");
        let written = lab.render().unwrap().concat();
        assert!(written.contains("<ip>x\r\ny</ip>"), "{written}");
        let again = XmlLab::parse(&written).unwrap().model();
        assert_eq!(again.get("a").unwrap().get(Field::Ip), "x\ny");
    }

    #[test]
    fn top_level_elements_are_found_after_every_change() {
        // Two <event_seq>: the first counts, as for the tree.
        let text = "<settings>\n  <machine><name>a</name></machine>\n  <machine><name>b</name></machine>\n  <event_seq>3</event_seq>\n  <event_seq>9</event_seq>\n</settings>\n";
        let mut lab = XmlLab::parse(text).unwrap();
        let tags = [
            "event_seq",
            "journal_folded",
            "pending_events",
            "php_compat",
        ];
        let same_as_read = |lab: &XmlLab| {
            let again = XmlLab::parse_eager(&lab.to_xml()).unwrap();
            for tag in tags {
                assert_eq!(
                    lab.top_level(tag),
                    again.top_level(tag),
                    "{tag}: {}",
                    lab.to_xml()
                );
            }
        };
        let seq = |lab: &XmlLab| lab.top_level("event_seq");
        assert_eq!(seq(&lab).as_deref(), Some("3"));
        assert_eq!(lab.top_level("journal_folded"), None);
        same_as_read(&lab);
        // Added, then found again.
        lab.set_top_level("journal_folded", "t1");
        assert_eq!(lab.top_level("journal_folded").as_deref(), Some("t1"));
        lab.set_top_level("journal_folded", "t2");
        assert_eq!(lab.top_level("journal_folded").as_deref(), Some("t2"));
        same_as_read(&lab);
        // A machine and its line taken out before them: the first
        // <event_seq> moves to where the second stood.
        let mut model = lab.take_model();
        model.remove("a").unwrap();
        lab.apply(model.changes()).unwrap();
        assert_eq!(seq(&lab).as_deref(), Some("3"));
        same_as_read(&lab);
        // A machine put in before them.
        let mut model = lab.model();
        model
            .add(&NewMachine {
                name: "c".into(),
                mac: "02:00:00:00:00:01".into(),
                ip: String::new(),
                only_vm: false,
                resources: String::new(),
            })
            .unwrap();
        lab.apply(model.changes()).unwrap();
        assert_eq!(seq(&lab).as_deref(), Some("3"));
        same_as_read(&lab);
        lab.set_top_level("pending_events", "{}\n");
        lab.set_top_level("event_seq", "4");
        assert_eq!(seq(&lab).as_deref(), Some("4"));
        same_as_read(&lab);
        lab.remove_top_level("pending_events");
        lab.remove_top_level("journal_folded");
        assert_eq!(lab.top_level("pending_events"), None);
        assert_eq!(lab.top_level("journal_folded"), None);
        assert_eq!(seq(&lab).as_deref(), Some("4"));
        same_as_read(&lab);
    }

    #[test]
    fn two_machines_of_one_name_are_refused_however_written() {
        let lab = |names: &[&str]| {
            let machines: String = names
                .iter()
                .map(|name| format!("\n  <machine>\n    {name}\n    <os>x</os>\n  </machine>"))
                .collect();
            format!("<?xml version=\"1.0\"?>\n<settings>{machines}\n</settings>\n")
        };
        let refused = |names: &[&str], name: &str| {
            let text = lab(names);
            for read in [XmlLab::parse(&text), XmlLab::parse_eager(&text)] {
                let err = read.expect_err(&text);
                assert_eq!(
                    err.message,
                    format!("two machines are named '{name}'"),
                    "{text}"
                );
            }
        };
        let taken = |names: &[&str]| {
            let text = lab(names);
            assert!(XmlLab::parse(&text).is_ok(), "{text}");
            assert!(XmlLab::parse_eager(&text).is_ok(), "{text}");
        };
        refused(&["<name>a</name>", "<name>b</name>", "<name>a</name>"], "a");
        // Written with references, by the fast path's and by the reader's.
        refused(&["<name>a&amp;b</name>", "<name>a&amp;b</name>"], "a&b");
        refused(&["<name>a&amp;b</name>", "<name>a&#38;b</name>"], "a&b");
        refused(&["<name>a&#38;b</name>", "<name>a&amp;b</name>"], "a&b");
        // A machine's first name is its name.
        refused(&["<name>b</name><name>a</name>", "<name>b</name>"], "b");
        taken(&["<name>a</name><name>b</name>", "<name>b</name>"]);
        // Machines without a name, or with an empty one, are no clash.
        taken(&[
            "<name/>",
            "<name></name>",
            "<os/>",
            "<os/>",
            "<name>ab</name>",
            "<name>a</name>",
        ]);
        // Among many, the last and the first.
        let many: Vec<String> = (0..2000).map(|n| format!("<name>m{n}</name>")).collect();
        let mut names: Vec<&str> = many.iter().map(String::as_str).collect();
        taken(&names);
        names.push("<name>m0</name>");
        refused(&names, "m0");
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

    const UPSTREAM: &str = include_str!("../../testdata/upstream.xml");

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
            let lazy = XmlLab::parse(text);
            // The lazy reading refuses what the tree refuses, saying the same.
            match (&lazy, XmlLab::parse_eager(text)) {
                (Ok(lazy), Ok(eager)) => {
                    let machines =
                        |lab: &XmlLab| lab.model().machines().cloned().collect::<Vec<_>>();
                    assert_eq!(machines(lazy), machines(&eager), "seed {seed}");
                }
                (Err(a), Err(b)) => assert_eq!(a, &b, "seed {seed}"),
                (a, b) => panic!("seed {seed}: lazy {:?}, eager {:?}", a.is_ok(), b.is_ok()),
            }
            if let Ok(mut doc) = lazy {
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

/// The lazy reading (machines skimmed, the plain-file scanner, the proof of
/// only what changed) held to the eager tree it replaces: random labs read
/// alike, and random edits write the same file.
#[cfg(test)]
mod lazy_tests {
    use super::*;
    use crate::model::JobRecord;
    use crate::model::event::{Event, Kind};
    use crate::model::queue::Waiter;

    /// A small deterministic generator (xorshift64*), so failures replay.
    struct Prng(u64);

    impl Prng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }

        /// True one time in `n`.
        fn one_in(&mut self, n: usize) -> bool {
            self.below(n) == 0
        }
    }

    /// Field contents as files hold them: plain (the scanner's), and what
    /// sends the reading to the general reader.
    const CONTENTS: &[&str] = &[
        "",
        "",
        "plain",
        "x86_64",
        "console=ttyS0,115200",
        "a &amp; b",
        "&lt;tag&gt; &quot;q&quot; &apos;a&apos;",
        "é ✓ 𝄞",
        "two\nlines",
        " padded ",
        "&#233;&#x41;",
        "cr\r\nlf",
        "<![CDATA[<raw & stuff>]]>",
        "a<!-- note -->b",
        "t<sub>u</sub>v",
        "<sub/>",
        "x > y",
        "<?pi data?>",
    ];

    const WHITE: &[&str] = &["\n  ", "\n  ", "\n\t", " ", "", "\n\n  ", "\r\n  "];

    fn machine(rng: &mut Prng, n: usize, out: &mut String) {
        let indent = rng.pick(&["\n    ", "\n    ", "\n\t\t", ""]);
        out.push_str("<machine>");
        let mut fields: Vec<&str> = Field::ALL.iter().map(|f| f.tag()).collect();
        if rng.one_in(3) {
            fields.retain(|_| !rng.one_in(4));
        }
        if rng.one_in(5) {
            let at = rng.below(fields.len() + 1);
            fields.insert(at, rng.pick(&["custom", "os", "extra"]));
        }
        if rng.one_in(4) {
            let (a, b) = (rng.below(fields.len()), rng.below(fields.len()));
            fields.swap(a, b);
        }
        for tag in fields {
            out.push_str(indent);
            if rng.one_in(30) {
                out.push_str("<!-- c -->");
            }
            let content = match tag {
                "name" if rng.one_in(6) => format!("m&amp;{n}"),
                // Now and then a name another machine has too.
                "name" if rng.one_in(40) => "m0".to_string(),
                "name" => format!("m{n}"),
                "mac" => format!("aa:bb:cc:dd:{:02x}:{:02x}", n / 256 % 256, n % 256),
                _ => rng.pick(CONTENTS).to_string(),
            };
            if content.is_empty() && rng.one_in(2) {
                out.push_str(&format!("<{tag}/>"));
            } else if tag == "custom" && rng.one_in(2) {
                out.push_str(&format!("<{tag} a=\"1\">{content}</{tag}>"));
            } else {
                out.push_str(&format!("<{tag}>{content}</{tag}>"));
            }
        }
        out.push_str(indent.get(..indent.len().saturating_sub(2)).unwrap_or(""));
        out.push_str("</machine>");
    }

    /// A random state file: mostly plain, now and then with what only the
    /// general reader takes.
    fn random_lab(rng: &mut Prng) -> String {
        let mut out = String::new();
        if rng.one_in(20) {
            out.push('\u{feff}');
        }
        out.push_str(rng.pick(&[
            "<?xml version=\"1.0\"?>\n",
            "<?xml version=\"1.0\"?>\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            "",
            "<?xml version='1.0'?>\n<!-- lab -->\n",
        ]));
        out.push_str(if rng.one_in(15) {
            "<settings version=\"2\">"
        } else {
            "<settings>"
        });
        let machines = rng.below(8);
        for n in 0..machines {
            out.push_str(rng.pick(WHITE));
            match rng.below(25) {
                0 => out.push_str("<resource><name>pdu</name></resource>"),
                1 => out.push_str("<!-- top -->"),
                2 => out.push_str("<machine/>"),
                3 => out.push_str("<machine><mac>00:11</mac></machine>"),
                _ => {}
            }
            out.push_str(rng.pick(WHITE));
            machine(rng, n, &mut out);
        }
        if rng.one_in(3) {
            out.push_str("\n  <event_seq>7</event_seq>");
        }
        if rng.one_in(4) {
            out.push_str("\n  <pending_events>{\"seq\":7,\"time\":1,\"machine\":\"m0\",\"event\":\"set\",\"job\":null,\"pid\":null,\"user\":\"u\",\"host\":\"h\",\"detail\":\"os=a&amp;b\"}\n</pending_events>");
        }
        out.push_str(rng.pick(&["\n", "", "\n  "]));
        out.push_str("</settings>");
        out.push_str(rng.pick(&["\n", "", "\n\n", "\n<!-- end -->\n"]));
        out
    }

    const VALUES: &[&str] = &[
        "",
        "fedora",
        "a & b",
        "<x>",
        "q\"'",
        "]]>",
        "cr\rhere",
        "two\nlines",
        "é",
        "  spaced  ",
    ];

    /// Random changes a transaction makes, through the model.
    fn random_changes(rng: &mut Prng, lab: &mut Lab, added: &mut usize) {
        for _ in 0..rng.below(6) {
            let names: Vec<String> = lab.machines().map(|m| m.name().to_string()).collect();
            let name = names
                .get(rng.below(names.len().max(1)))
                .cloned()
                .unwrap_or_default();
            let field = Field::ALL[rng.below(Field::ALL.len())];
            let _ = match rng.below(9) {
                0 | 1 => lab
                    .get_mut(&name)
                    .and_then(|mut m| m.set(field, rng.pick(VALUES))),
                2 => lab.get_mut(&name).and_then(|mut m| m.clear(field)),
                3 => lab.get_mut(&name).and_then(|mut m| {
                    m.set_job(&JobRecord {
                        label: rng.pick(VALUES).to_string(),
                        pid: Some(rng.below(100_000) as u32 + 1),
                        timestamp: Some(1_700_000_000),
                        user: rng.one_in(2).then(|| "user".to_string()),
                        host: rng.one_in(2).then(|| "host".to_string()),
                        origin: None,
                    })
                }),
                4 => lab.get_mut(&name).and_then(|mut m| m.clear_job()),
                5 => {
                    *added += 1;
                    lab.add(&NewMachine {
                        name: format!("new{added}"),
                        mac: format!("02:00:00:00:{:02x}:{:02x}", *added / 256, *added % 256),
                        ip: String::new(),
                        only_vm: rng.one_in(2),
                        resources: String::new(),
                    })
                }
                6 => lab.get_mut(&name).and_then(|mut m| {
                    let waiters: Vec<Waiter> = (0..rng.below(3))
                        .map(|i| Waiter {
                            ticket: i as u64 + 1,
                            token: format!("{:016x}", rng.next()),
                            pid: rng.below(100_000) as u32 + 1,
                            since: 1_700_000_000,
                            user: rng.pick(VALUES).to_string(),
                            host: "host".into(),
                            job: rng.one_in(2).then(|| rng.pick(VALUES).to_string()),
                            epoch: None,
                            pool: rng.one_in(2),
                        })
                        .collect();
                    m.set_queue(&waiters)
                }),
                7 => {
                    // `import`: a machine as its element, kept whole.
                    *added += 1;
                    let mut text = String::new();
                    machine(rng, 10_000 + *added, &mut text);
                    let one = XmlLab::parse(&format!("<settings>{text}</settings>")).unwrap();
                    let (name, element) = one.machine_texts().remove(0);
                    assert_eq!(element, text);
                    let model = one.model().get(&name).unwrap().clone();
                    lab.add_element(model, element)
                }
                _ => lab.remove(&name),
            };
        }
    }

    /// What main's backends read beside the model (export, import, the
    /// database's machine elements) reads alike, lazily and from the tree.
    fn same_parts(lazy: &XmlLab, eager: &XmlLab, what: &str) {
        assert_eq!(lazy.machine_texts(), eager.machine_texts(), "{what}");
        assert_eq!(lazy.skeleton(), eager.skeleton(), "{what}");
        assert_eq!(lazy.exported(), eager.exported(), "{what}");
        for (name, text) in eager.machine_texts() {
            assert_eq!(
                lazy.machine_text(&name),
                eager.machine_text(&name),
                "{what}"
            );
            if !name.is_empty() {
                assert_eq!(lazy.machine_text(&name), Some(text), "{what}");
            }
        }
    }

    #[test]
    fn random_labs_read_lazily_as_the_tree_reads_them() {
        let mut rng = Prng(0x9E37_79B9_7F4A_7C15);
        let mut plain = 0;
        for round in 0..1000 {
            let text = random_lab(&mut rng);
            let lazy = XmlLab::parse(&text);
            let eager = XmlLab::parse_eager(&text);
            match (lazy, eager) {
                (Ok(lazy), Ok(eager)) => {
                    let machines =
                        |lab: &XmlLab| lab.model().machines().cloned().collect::<Vec<_>>();
                    assert_eq!(machines(&lazy), machines(&eager), "round {round}: {text}");
                    assert_eq!(lazy.to_xml(), text, "round {round}");
                    assert_eq!(lazy.render().unwrap().concat(), text, "round {round}");
                    for tag in BOOKKEEPING {
                        assert_eq!(lazy.top_level(tag), eager.top_level(tag));
                    }
                    same_parts(&lazy, &eager, &format!("round {round}: {text}"));
                    // The database backend keeps each machine's element
                    // apart, and reads the lab back from them.
                    let texts = lazy.machine_texts();
                    if texts.iter().all(|(name, _)| !name.is_empty()) {
                        let apart = XmlLab::from_machines(
                            texts.iter().map(|(n, t)| (n.as_str(), t.as_str())),
                        )
                        .unwrap_or_else(|e| panic!("round {round}: {e}: {text}"));
                        assert_eq!(machines(&apart), machines(&lazy), "round {round}: {text}");
                        let whole = XmlLab::assemble(
                            Some(&lazy.skeleton()),
                            texts.iter().map(|(n, t)| (n.as_str(), t.as_str())),
                        )
                        .unwrap();
                        assert_eq!(machines(&whole), machines(&lazy), "round {round}");
                        assert!(whole.render().is_ok(), "round {round}");
                    }
                    if lazy
                        .doc
                        .root
                        .children
                        .iter()
                        .any(|n| matches!(n, Node::Lazy(_)))
                    {
                        plain += 1;
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "round {round}: {text}"),
                (a, b) => panic!(
                    "round {round}: lazy {:?}, eager {:?}: {text}",
                    a.err(),
                    b.err()
                ),
            }
        }
        assert!(plain > 250, "only {plain} labs had skimmed machines");
    }

    #[test]
    fn random_edits_write_what_the_tree_writes() {
        let mut rng = Prng(0xDEAD_BEEF_CAFE_F00D);
        let mut added = 0;
        let mut edited = 0;
        for round in 0..400 {
            let text = random_lab(&mut rng);
            let (Ok(mut lazy), Ok(mut eager)) = (XmlLab::parse(&text), XmlLab::parse_eager(&text))
            else {
                continue;
            };
            // Several transactions in a row, each read from the last's text.
            for step in 0..3 {
                // As a transaction takes it: the machines handed over.
                let mut lab = lazy.take_model();
                random_changes(&mut rng, &mut lab, &mut added);
                lazy.apply(lab.changes()).unwrap();
                eager.apply(lab.changes()).unwrap();
                if rng.one_in(2) {
                    let seq = rng.below(1000) as u64;
                    lazy.set_top_level("event_seq", &seq.to_string());
                    eager.set_top_level("event_seq", &seq.to_string());
                }
                if rng.one_in(3) {
                    let events: Vec<Event> = (0..rng.below(3))
                        .map(|i| Event::new(Kind::Set, "m0").detail(format!("os=<{i}>&")))
                        .collect();
                    match events.is_empty() {
                        true => {
                            lazy.remove_top_level("pending_events");
                            eager.remove_top_level("pending_events");
                        }
                        false => {
                            let text = crate::model::event::encode(&events).unwrap();
                            lazy.set_top_level("pending_events", &text);
                            eager.set_top_level("pending_events", &text);
                        }
                    }
                }
                let want = eager.to_xml();
                if let Err(refused) = XmlLab::parse_eager(&want) {
                    // (A random rename may give two machines one name.)
                    let err = lazy.render().err();
                    assert_eq!(err, Some(refused), "round {round}.{step}: {want}");
                    break;
                }
                let got = lazy
                    .render()
                    .unwrap_or_else(|e| panic!("round {round}.{step}: {e}: {want}"))
                    .concat();
                assert_eq!(got, want, "round {round}.{step}: from {text}");
                // What the next transaction compares the file with.
                assert!(lazy.rendered_by(&mut got.as_bytes()).unwrap());
                let mut other = got.clone().into_bytes();
                other.push(b'\n');
                assert!(!lazy.rendered_by(&mut other.as_slice()).unwrap());
                let at = rng.below(other.len() - 1);
                other.pop();
                other[at] ^= 1;
                assert!(!lazy.rendered_by(&mut other.as_slice()).unwrap());
                // What was written reads back as the lab the changes made.
                let again = XmlLab::parse_eager(&got).unwrap();
                assert_eq!(again.model().machines().count(), lab.machines().count());
                for (read, made) in again.model().machines().zip(lab.machines()) {
                    for field in Field::ALL {
                        assert_eq!(read.get(field), made.get(field), "{field:?}: {got}");
                    }
                }
                same_parts(&lazy, &eager, &format!("round {round}.{step}: {got}"));
                edited += usize::from(lab.is_changed());
                lazy = XmlLab::parse(&got).unwrap();
                eager = XmlLab::parse_eager(&got).unwrap();
            }
        }
        assert!(edited > 300, "only {edited} transactions changed anything");
    }

    #[test]
    fn a_proof_of_what_changed_catches_a_broken_piece() {
        let text = "<?xml version=\"1.0\"?>\n<settings>\n  <machine>\n    <name>a</name>\n  </machine>\n  <machine>\n    <name>b</name>\n  </machine>\n</settings>\n";
        let mut lab = XmlLab::parse(text).unwrap();
        let mut model = lab.model();
        model.get_mut("b").unwrap().set(Field::Os, "x").unwrap();
        lab.apply(model.changes()).unwrap();
        assert!(lab.render().is_ok());
        // A piece mama never makes: a bare `<` in a changed machine.
        let Some(Node::Element(b)) = lab
            .doc
            .root
            .children
            .iter_mut()
            .rev()
            .find(|n| n.is_element())
        else {
            panic!("machine b was built");
        };
        b.children.push(Node::Markup(xml::Str::new("<broken")));
        let err = lab.render().unwrap_err();
        assert!(!err.message.is_empty());
        // And a junction mama never makes: a machine run into its neighbour's text.
        let mut lab = XmlLab::parse(text).unwrap();
        lab.doc
            .root
            .children
            .insert(2, Node::Markup(xml::Str::new("<!-- a -- b -->")));
        assert!(lab.render().is_err());
    }
}
