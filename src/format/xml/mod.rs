//! An ordered XML tree that keeps everything it reads.
//!
//! The state file is the users' data, written by other tools too (PHP mama,
//! editors, scripts). This tree keeps every element, attribute, comment and
//! whitespace run in its place and writes an unchanged document back byte for
//! byte, so a write only ever changes what mama meant to change. Attributes
//! and markup that mama never edits (comments, processing instructions, a
//! doctype) are kept as their raw source text.

use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;
use std::ops::Deref;
use std::sync::Arc;

/// The text a document was read from, shared by every span of it (and by
/// the lab model read from it), never copied.
pub type Source = Arc<String>;

/// A piece of text: a span of the document it was read from (no copy), or a
/// string of its own for what mama wrote. Reading a lab of a thousand
/// machines then costs a few allocations a machine instead of a hundred.
#[derive(Clone)]
pub struct Str(Repr);

#[derive(Clone)]
enum Repr {
    Span {
        source: Source,
        start: usize,
        end: usize,
    },
    Owned(Box<str>),
}

impl Str {
    pub fn new(text: &str) -> Str {
        Str(Repr::Owned(text.into()))
    }

    /// `piece` as a span of `source` when it lies inside it, else a copy.
    fn within(source: &Source, piece: &str) -> Str {
        match offsets_in(source, piece) {
            Some((start, end)) => Str(Repr::Span {
                source: Arc::clone(source),
                start,
                end,
            }),
            None => Str::new(piece),
        }
    }

    /// Where this text stands in `source`, when it is a span of it.
    fn span_of(&self, source: &Source) -> Option<(usize, usize)> {
        match &self.0 {
            Repr::Span {
                source: of,
                start,
                end,
            } if Arc::ptr_eq(of, source) => Some((*start, *end)),
            _ => None,
        }
    }
}

/// Where `piece` stands in `source` (byte offsets), when it lies inside it.
pub fn offsets_in(source: &str, piece: &str) -> Option<(usize, usize)> {
    let base = source.as_ptr() as usize;
    let at = piece.as_ptr() as usize;
    (at >= base && at + piece.len() <= base + source.len())
        .then(|| (at - base, at - base + piece.len()))
}

impl Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        match &self.0 {
            Repr::Span { source, start, end } => &source[*start..*end],
            Repr::Owned(text) => text,
        }
    }
}

impl PartialEq for Str {
    fn eq(&self, other: &Str) -> bool {
        **self == **other
    }
}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        &**self == other
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        &**self == *other
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

/// A node of the tree, in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Element(Element),
    /// Character data: `raw` as written in the file, and `value` as read
    /// (references resolved, line ends normalised) where that differs.
    Text {
        raw: Str,
        value: Option<Str>,
    },
    /// A CDATA section's content.
    CData(Str),
    /// A comment, processing instruction or doctype, written back verbatim.
    Markup(Str),
    /// An element kept as the text it was read from, not built into a tree
    /// (see [`Document::parse_lazy`]): written back verbatim, built only
    /// when a change reaches into it.
    Lazy(Lazy),
}

/// An element that was checked but not built: its source text, its name
/// (the first `name_len` bytes after the `<`), and the slot the skimmer
/// gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lazy {
    raw: Str,
    name_len: u32,
    pub slot: u32,
}

impl Lazy {
    pub fn name(&self) -> &str {
        self.raw.get(1..1 + self.name_len as usize).unwrap_or("")
    }

    /// The element's text, as read: what [`Element::to_text`] of the
    /// element it builds gives.
    pub fn text(&self) -> &str {
        &self.raw
    }

    /// The element built from its text. The text was checked when the
    /// document was read, in the same place, so this fails only on mama's
    /// own mistake.
    pub fn build(&self) -> Result<Element, ParseError> {
        let source: Source = Arc::new(self.raw.to_string());
        // A carriage return is the general reader's to read (it makes line
        // ends of them), as in a whole document (see `Fast::document`).
        let plain = !source.as_bytes().contains(&b'\r');
        match plain.then(|| Fast::over(&source).element(0, 1)).flatten() {
            Some((element, end)) if end == source.len() => Ok(element),
            _ => Document::parse(&source).map(|doc| doc.root),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub name: Str,
    /// The raw attribute text after the name, leading white space included.
    attributes: Str,
    pub children: Vec<Node>,
    /// `<x/>` rather than `<x></x>` when the element has no children.
    self_closing: bool,
}

/// A whole document: what stands before the root, the root, what follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    bom: bool,
    prolog: Vec<Node>,
    pub root: Element,
    epilog: Vec<Node>,
    /// The text it was read from, and where the root's content stood in it
    /// (absent for a new document, or a root read as `<x/>`): what lets
    /// [`Document::write_checked`] prove only what changed.
    origin: Option<(Source, usize, usize)>,
}

/// Why a document could not be read, and where (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl Element {
    /// A new element; `<name/>` until it gets children.
    pub fn new(name: &str) -> Element {
        Element {
            name: Str::new(name),
            attributes: Str::new(""),
            children: Vec::new(),
            self_closing: true,
        }
    }

    /// A new element holding `value` as its text.
    pub fn with_text(name: &str, value: &str) -> Element {
        let mut element = Element::new(name);
        element.set_text(value);
        element
    }

    /// The element's text: its character data and CDATA, concatenated.
    pub fn text(&self) -> Cow<'_, str> {
        let mut parts = self.children.iter().filter_map(|node| match node {
            Node::Text { raw, value } => Some(value.as_deref().unwrap_or(raw)),
            Node::CData(content) => Some(&**content),
            _ => None,
        });
        let Some(first) = parts.next() else {
            return Cow::Borrowed("");
        };
        match parts.next() {
            None => Cow::Borrowed(first),
            Some(second) => {
                let mut all = String::from(first);
                all.push_str(second);
                parts.for_each(|part| all.push_str(part));
                Cow::Owned(all)
            }
        }
    }

    /// Whether the element holds child elements (then it is not a plain field).
    pub fn has_child_elements(&self) -> bool {
        self.children.iter().any(Node::is_element)
    }

    /// Replaces the element's content with `value`, escaped. An empty value
    /// makes the element `<name/>`, as upstream writes empty fields.
    pub fn set_text(&mut self, value: &str) {
        self.children.clear();
        self.self_closing = true;
        self.append_text(value);
    }

    /// Adds `value`, escaped, after the element's content: the content
    /// held is written back as it was.
    pub fn append_text(&mut self, value: &str) {
        if value.is_empty() {
            return;
        }
        self.self_closing = false;
        self.children.push(Node::Text {
            raw: Str::new(&escape_text(value)),
            value: (value.contains(['&', '<', '>', '\r'])).then(|| Str::new(value)),
        });
    }

    /// The child elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    pub fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| e.name == name)
    }

    /// The index in `children` of the first child element called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.children.iter().position(|n| n.is_element_named(name))
    }

    /// Inserts `element` as a child: right after the child at index `after`,
    /// or, with `None`, before the first child element (at the end when there
    /// is none). The new element gets its own line, indented like its
    /// siblings (`indent` when it has none).
    pub fn insert_element(&mut self, after: Option<usize>, element: Element, indent: &str) {
        let indent = self
            .sibling_indent()
            .unwrap_or_else(|| format!("\n{indent}"));
        let at = match after {
            Some(i) => i + 1,
            None => self
                .children
                .iter()
                .position(Node::is_element)
                .unwrap_or_else(|| self.trailing_space_start()),
        };
        let was_empty = self.children.is_empty();
        self.children.insert(at, Node::Element(element));
        self.children.insert(at, whitespace(&indent));
        if was_empty {
            // Close the parent on a line of its own, one level out.
            let outer = indent.rsplit_once("  ").map_or("\n", |(outer, _)| outer);
            self.children.push(whitespace(outer));
        }
        self.self_closing = false;
    }

    /// Appends `element` after the last child element, on its own line.
    pub fn push_element(&mut self, element: Element, indent: &str) {
        let last = self.children.iter().rposition(Node::is_element);
        self.insert_element(last, element, indent);
    }

    /// Removes the child node at `index` and the white space that leads up
    /// to it, so no empty line is left behind.
    pub fn remove_child(&mut self, index: usize) {
        self.children.remove(index);
        if index > 0 && is_whitespace(&self.children[index - 1]) {
            self.children.remove(index - 1);
        }
    }

    /// The white space before the last child element, e.g. "\n    ".
    fn sibling_indent(&self) -> Option<String> {
        let last = self.children.iter().rposition(Node::is_element)?;
        match last.checked_sub(1).map(|i| &self.children[i]) {
            Some(Node::Text { raw, .. }) if raw.trim().is_empty() => Some(raw.to_string()),
            _ => None,
        }
    }

    /// The index where the white space before the closing tag starts.
    fn trailing_space_start(&self) -> usize {
        let mut at = self.children.len();
        while at > 0 && is_whitespace(&self.children[at - 1]) {
            at -= 1;
        }
        at
    }

    /// The value of the attribute `name` as XML reads it (references
    /// resolved, white space normalised); `None` where the element has no
    /// such attribute.
    pub fn attribute(&self, name: &str) -> Option<String> {
        self.attribute_list()
            .into_iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, raw)| {
                let attribute = quick_xml::events::attributes::Attribute {
                    key: quick_xml::name::QName(name),
                    value: Cow::Borrowed(raw.as_str()),
                };
                attribute
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .ok()
                    .map(Cow::into_owned)
            })
    }

    /// Sets the attribute `name` to `value` (escaped so that it reads back
    /// exactly), where the element has it, else after the others; `None`
    /// removes it. The other attributes stay, in their order, with their
    /// values as written.
    pub fn set_attribute(&mut self, name: &str, value: Option<&str>) {
        let mut list = self.attribute_list();
        let escaped = value.map(escape_attribute);
        match (list.iter_mut().find(|(key, _)| key == name), escaped) {
            (Some(slot), Some(escaped)) => slot.1 = escaped,
            (Some(_), None) => list.retain(|(key, _)| key != name),
            (None, Some(escaped)) => list.push((name.to_string(), escaped)),
            (None, None) => return,
        }
        let mut text = String::new();
        for (key, raw) in list {
            let quote = if raw.contains('"') { '\'' } else { '"' };
            let _ = write!(text, " {key}={quote}{raw}{quote}");
        }
        self.attributes = Str::new(&text);
    }

    /// Each attribute's name and value as written (between its quotes).
    fn attribute_list(&self) -> Vec<(String, String)> {
        if self.attributes.trim().is_empty() {
            return Vec::new();
        }
        let content = format!("{}{}", self.name, &*self.attributes);
        let tag = quick_xml::events::BytesStart::from_content(content.as_str(), self.name.len());
        tag.attributes()
            .with_checks(false)
            .filter_map(Result::ok)
            .map(|a| (a.key.as_ref().to_string(), a.value.into_owned()))
            .collect()
    }

    /// The element as text, as it would stand in its document.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        out.push_str(&self.attributes);
        if self.children.is_empty() && self.self_closing {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for child in &self.children {
            child.write(out);
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }
}

fn whitespace(s: &str) -> Node {
    Node::Text {
        raw: Str::new(s),
        value: None,
    }
}

fn is_whitespace(node: &Node) -> bool {
    matches!(node, Node::Text { raw, .. } if raw.trim().is_empty())
}

impl Node {
    /// Whether this is an element, built or [`Lazy`].
    pub fn is_element(&self) -> bool {
        matches!(self, Node::Element(_) | Node::Lazy(_))
    }

    /// Whether this is an element called `name`, built or [`Lazy`] (whose
    /// text, scattered over a large document, is looked at only when the
    /// name's length matches).
    pub fn is_element_named(&self, name: &str) -> bool {
        match self {
            Node::Element(e) => e.name == name,
            Node::Lazy(lazy) => lazy.name_len as usize == name.len() && lazy.name() == name,
            _ => false,
        }
    }

    /// The name of an element, built or [`Lazy`].
    pub fn element_name(&self) -> Option<&str> {
        match self {
            Node::Element(e) => Some(&e.name),
            Node::Lazy(lazy) => Some(lazy.name()),
            _ => None,
        }
    }

    /// Where the node's text stands in `source`, when it is that text
    /// unchanged (a node of its own, or one that changed, has none).
    fn span_in(&self, source: &Source) -> Option<(usize, usize)> {
        match self {
            Node::Text { raw, .. } | Node::Markup(raw) => raw.span_of(source),
            Node::Lazy(lazy) => lazy.raw.span_of(source),
            // The content's span, within `<![CDATA[` and `]]>`.
            Node::CData(content) => content
                .span_of(source)
                .map(|(start, end)| (start.wrapping_sub(9), end + 3)),
            Node::Element(_) => None,
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Node::Element(e) => e.write(out),
            Node::Lazy(lazy) => out.push_str(&lazy.raw),
            Node::Text { raw, .. } => out.push_str(raw),
            Node::CData(content) => {
                out.push_str("<![CDATA[");
                out.push_str(content);
                out.push_str("]]>");
            }
            Node::Markup(raw) => out.push_str(raw),
        }
    }
}

impl Document {
    /// A new document: the XML declaration upstream writes, and `root`.
    pub fn new(root: Element) -> Document {
        Document {
            bom: false,
            prolog: vec![
                Node::Markup(Str::new("<?xml version=\"1.0\"?>")),
                whitespace("\n"),
            ],
            root,
            epilog: vec![whitespace("\n")],
            origin: None,
        }
    }

    /// Reads a document, building the whole tree. Anything that is not
    /// well-formed XML with exactly one root element is refused, with the
    /// line and column.
    pub fn parse(text: &str) -> Result<Document, ParseError> {
        let source: Source = Arc::new(text.to_string());
        Parser::new(&source).parse(&source, None)
    }

    /// Whether `text` is a well-formed document, as [`Document::parse`]
    /// tells it, with the fast reader first: what mama writes, it takes
    /// without quick-xml (whose first use asks the processor what it
    /// offers, a trap to the host on a virtual machine, some 0.1 ms).
    pub fn check(text: impl Into<String>) -> Result<(), ParseError> {
        let source: Source = Arc::new(text.into());
        Document::parse_lazy(source, &mut SkimNothing).map(drop)
    }

    /// Reads a document as [`Document::parse`] does, with every check, but
    /// keeps the root's child elements that `skimmer` skims as their text
    /// ([`Node::Lazy`]) instead of building them, and tells `skimmer` the
    /// text of their own children. Spans of `source` are kept, never copies.
    pub fn parse_lazy<S: Skimmer>(source: Source, skimmer: &mut S) -> Result<Document, ParseError> {
        let parser = Parser::new(&source);
        let carriage_return = parser.check_characters()?;
        let fast = Fast::new(parser.text, &source);
        if let Some(doc) = fast.document(parser.bom, parser.offset, carriage_return, skimmer) {
            return Ok(doc);
        }
        skimmer.reset();
        parser.parse(&source, Some(skimmer))
    }

    /// The document as text; for a parsed, unchanged document, the very
    /// bytes it was read from.
    pub fn write(&self) -> String {
        let size = self
            .origin
            .as_ref()
            .map_or(4096, |(source, ..)| source.len() + 4096);
        let mut out = String::with_capacity(size);
        if self.bom {
            out.push('\u{feff}');
        }
        for node in &self.prolog {
            node.write(&mut out);
        }
        self.root.write(&mut out);
        for node in &self.epilog {
            node.write(&mut out);
        }
        out
    }

    /// The document as text, proven to read back: a text that would not
    /// parse is an error, never returned.
    ///
    /// The proof costs what changed, not what the document holds. A read
    /// document remembers its source and where the root's content stood in
    /// it. Its prolog, epilog and root tags are never changed in place (a
    /// document read without that content is checked whole). The root's
    /// content is a sequence of nodes: elements, character data,
    /// references, CDATA, comments and processing instructions. XML's
    /// well-formedness of such a sequence is local: each node must be
    /// well-formed on its own (an element with its tags balanced, its
    /// characters allowed, its references known without context, since a
    /// doctype with entity declarations is refused, and no deeper than the
    /// limit, counted from the root), and each two neighbours must not run
    /// into each other (character data next to character data must not
    /// form `]]>`; every other node starts with `<` and ends with `>`).
    /// Nothing else reaches across nodes: mama resolves no namespaces and
    /// the only cross-element rule, one root, concerns the root alone.
    ///
    /// So: a node that is still a span of the source, next to the neighbour
    /// it had there, was checked in that very place when the document was
    /// read. Everything else, a changed or new node and each pair of
    /// neighbours that were not neighbours in the source (where a node was
    /// inserted or removed), is parsed again here with its neighbours on
    /// both sides, inside a root of its own (`<r>` and `</r>` stand where
    /// the real root's tags stand, which are tags alike). Every node and
    /// every junction of the new content is then checked, in its context.
    pub fn write_checked(&self) -> Result<Vec<Cow<'_, str>>, ParseError> {
        let pieces = self.pieces();
        let Some((source, start, end)) = &self.origin else {
            Document::check(pieces.concat())?;
            return Ok(pieces);
        };
        let nodes = &self.root.children;
        if self.root.self_closing && nodes.is_empty() {
            // `<x/>` now, where the source had `<x>…</x>`.
            Document::check(pieces.concat())?;
            return Ok(pieces);
        }
        let spans: Vec<Option<(usize, usize)>> = nodes.iter().map(|n| n.span_in(source)).collect();
        // Which nodes to check again, as inclusive ranges of indices.
        let mut check = vec![false; nodes.len()];
        let mark = |from: usize, to: usize, check: &mut Vec<bool>| {
            for flag in &mut check[from..=to.min(nodes.len() - 1)] {
                *flag = true;
            }
        };
        for (i, span) in spans.iter().enumerate() {
            if span.is_none() {
                mark(i.saturating_sub(1), i + 1, &mut check);
            }
            let joined_before = match i.checked_sub(1) {
                None => span.is_some_and(|(from, _)| from == *start),
                Some(prev) => {
                    matches!((spans[prev], span), (Some((_, a)), Some((b, _))) if a == *b)
                }
            };
            if !joined_before {
                mark(i.saturating_sub(1), i, &mut check);
            }
        }
        if let Some(last) = spans.last()
            && !last.is_some_and(|(_, to)| to == *end)
        {
            mark(nodes.len() - 1, nodes.len() - 1, &mut check);
        }
        let mut i = 0;
        while i < nodes.len() {
            if !check[i] {
                i += 1;
                continue;
            }
            let mut window = String::from("<r>");
            while i < nodes.len() && check[i] {
                nodes[i].write(&mut window);
                i += 1;
            }
            window.push_str("</r>");
            Document::check(window)?;
        }
        Ok(pieces)
    }

    /// The document's text as pieces, in order: runs of unchanged nodes
    /// as single spans of the source they were read from (no copy), and
    /// what changed written anew. Writing them one after the other writes
    /// [`Document::write`]'s text.
    pub fn pieces(&self) -> Vec<Cow<'_, str>> {
        let mut out = Pieces {
            source: self.origin.as_ref().map(|(source, ..)| source),
            parts: Vec::new(),
            run: None,
            broken: false,
        };
        if self.bom {
            out.parts.push(Cow::Borrowed("\u{feff}"));
        }
        self.prolog.iter().for_each(|node| out.node(node));
        let root = &self.root;
        let mut tag = format!("<{}{}", root.name, root.attributes);
        if root.children.is_empty() && root.self_closing {
            tag.push_str("/>");
            out.owned(tag);
        } else {
            tag.push('>');
            out.owned(tag);
            root.children.iter().for_each(|node| out.node(node));
            out.owned(format!("</{}>", root.name));
        }
        self.epilog.iter().for_each(|node| out.node(node));
        out.flush();
        if out.broken {
            // Never so (spans are cut from their text), but never a piece lost.
            return vec![Cow::Owned(self.write())];
        }
        out.parts
    }
}

/// [`Document::pieces`] being gathered: the run of source text not yet
/// pushed.
struct Pieces<'d> {
    source: Option<&'d Source>,
    parts: Vec<Cow<'d, str>>,
    run: Option<(usize, usize)>,
    /// A run that was not text of the source.
    broken: bool,
}

impl<'d> Pieces<'d> {
    fn node(&mut self, node: &'d Node) {
        // Only the run as a whole is cut from the source (in `flush`): a
        // look at each node's ends, scattered over a large source that is
        // no longer in the processor's caches, cost more than the rest.
        if let Some(source) = self.source
            && let Some((start, end)) = node.span_in(source)
            && start <= end
            && end <= source.len()
        {
            self.run = match self.run {
                Some((from, to)) if to == start => Some((from, end)),
                _ => {
                    self.flush();
                    Some((start, end))
                }
            };
            return;
        }
        let mut text = String::new();
        node.write(&mut text);
        self.owned(text);
    }

    fn owned(&mut self, text: String) {
        self.flush();
        self.parts.push(Cow::Owned(text));
    }

    fn flush(&mut self) {
        if let (Some(source), Some((from, to))) = (self.source, self.run.take()) {
            match source.get(from..to) {
                Some(text) => self.parts.push(Cow::Borrowed(text)),
                None => self.broken = true,
            }
        }
    }
}

mod chars;
mod fast;
mod read;

pub use chars::*;
pub use fast::*;
pub use read::*;

#[cfg(test)]
mod tests;
