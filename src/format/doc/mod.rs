//! The machine document: the upstream
//! `<settings><machine>…</machine></settings>` format, over the lossless
//! tree of [`crate::format::xml`].
//!
//! A machine is an element of the tree; its fields are its child elements.
//! [`XmlLab::model`] reads the plain [`Lab`] the engine works on, and
//! [`XmlLab::apply`] replays the lab's [`Change`](crate::model::Change)s onto the tree: writing a
//! field touches only that field's element, so every element, attribute and
//! comment that mama does not know stays where it was, and a tree no change
//! was replayed on writes back the very text it was read from. Other
//! top-level elements are kept as they are, and read and written by name
//! ([`XmlLab::top_level`]): the state file keeps its own bookkeeping there
//! (see [`BOOKKEEPING`]). The lab's power devices are top-level `<device>`
//! elements beside the machines (the `devices` module).

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use super::xml::{self, Document, Element, Node, ParseError, Skimmer, Source};
use crate::error::Error;
use crate::model::field::Field;
use crate::model::{Lab, Machine};

mod apply;
mod devices;
mod parts;
mod policy;
mod top;

/// The largest document mama reads (a state file, a roll-forward copy, an
/// `import`): some five times a lab of 100,000 machines as upstream writes
/// them. A larger one is refused before it is read, never allocated.
pub const MAX_DOCUMENT: u64 = 256 << 20;

const MACHINE: &str = "machine";
/// A power device of the lab: a top-level element beside the machines
/// (see [`devices`]).
const DEVICE: &str = "device";
/// The lab's settings: one top-level element, a child a setting (see
/// [`policy`]).
const LAB_SETTINGS: &str = "lab_settings";
/// A reservation's lease: a top-level element each (see [`policy`]).
const LEASE: &str = "lease";
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
    /// Where the first root child of each name but `machine` stands, and
    /// every `<device>`, found in one look over the root's children and
    /// kept until a node is
    /// put in or taken out among them ([`XmlLab::moved`]): a lookup by name
    /// looks at every child, twenty thousand on a large lab, and a
    /// transaction makes a handful. Each place found is checked again at
    /// use.
    own: std::cell::RefCell<Option<top::Places>>,
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
        self.with_policy(Lab::new(
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
        ))
    }

    /// `lab` (its machines read from this document) with the document's
    /// devices, settings and leases.
    pub fn with_policy(&self, lab: Lab) -> Lab {
        let (devices, broken) = self.devices();
        lab.with_devices(devices)
            .with_broken_devices(broken)
            .with_settings(self.settings())
            .with_leases(self.leases())
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
            return self.with_policy(Lab::new(machines));
        }
        let lab = Lab::new(
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
        );
        self.with_policy(lab)
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
mod tests;
