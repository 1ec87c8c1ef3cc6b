//! An ordered XML tree that keeps everything it reads.
//!
//! The state file is the users' data, written by other tools too (PHP mama,
//! editors, scripts). This tree keeps every element, attribute, comment and
//! whitespace run in its place and writes an unchanged document back byte for
//! byte, so a write only ever changes what mama meant to change. Attributes
//! and markup that mama never edits (comments, processing instructions, a
//! doctype) are kept as their raw source text.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use quick_xml::events::Event;
use quick_xml::reader::Reader;

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
        if value.is_empty() {
            self.self_closing = true;
        } else {
            self.children.push(Node::Text {
                raw: Str::new(&escape_text(value)),
                value: (value.contains(['&', '<', '>', '\r'])).then(|| Str::new(value)),
            });
        }
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
            Document::parse(&pieces.concat())?;
            return Ok(pieces);
        };
        let nodes = &self.root.children;
        if self.root.self_closing && nodes.is_empty() {
            // `<x/>` now, where the source had `<x>…</x>`.
            Document::parse(&pieces.concat())?;
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
            Document::parse(&window)?;
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

/// How deep elements may nest. The state file is three levels deep; a
/// bound keeps a hostile or broken file from exhausting the stack of the
/// code that writes and drops the tree (it recurses).
pub const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    text: &'a str,
    /// Where `text` starts in the file (after a byte-order mark).
    offset: usize,
    bom: bool,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Parser<'a> {
        match text.strip_prefix('\u{feff}') {
            Some(rest) => Parser {
                text: rest,
                offset: 3,
                bom: true,
            },
            None => Parser {
                text,
                offset: 0,
                bom: false,
            },
        }
    }

    fn error_at(&self, position: u64, message: impl Into<String>) -> ParseError {
        let position = (position as usize).min(self.text.len());
        let before = &self.text.as_bytes()[..position];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        let column = if line == 1 {
            column + usize::from(self.offset > 0)
        } else {
            column
        };
        ParseError {
            line,
            column,
            message: message.into(),
        }
    }

    /// What is checked of every byte before any element: no second
    /// byte-order mark, no character XML 1.0 does not allow, not empty.
    /// Tells, from the same look, whether the text holds a carriage return
    /// (which the fast path leaves to the general reader).
    fn check_characters(&self) -> Result<bool, ParseError> {
        if self.text.starts_with('\u{feff}') {
            // A reader would drop it silently, and every position after it
            // would be off.
            return Err(self.error_at(
                0,
                "a second byte-order mark (U+FEFF) at the start of the file",
            ));
        }
        // One look at every byte covers text, attribute values, comments,
        // CDATA and processing instructions alike.
        let scan = scan_bytes(self.text.as_bytes());
        if scan.suspect
            && let Some(at) = first_non_xml_char(self.text)
            && let Some(c) = self.text[at..].chars().next()
        {
            return Err(self.error_at(
                at as u64,
                format!(
                    "the character U+{:04X}, which XML 1.0 does not allow",
                    c as u32
                ),
            ));
        }
        if self.text.trim().is_empty() {
            return Err(self.error_at(0, "the file is empty"));
        }
        Ok(scan.carriage_return)
    }

    fn parse(
        self,
        source: &Source,
        mut skimmer: Option<&mut dyn Skimmer>,
    ) -> Result<Document, ParseError> {
        self.check_characters()?;
        let text = self.text;
        let span = |from: u64, to: u64| Str::within(source, &text[from as usize..to as usize]);
        let mut reader = Reader::from_str(text);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.check_comments = true;
        config.expand_empty_elements = false;
        config.trim_text(false);

        let mut prolog = Vec::new();
        let mut epilog = Vec::new();
        let mut root: Option<Element> = None;
        // Where the root's content starts and ends in `source`.
        let mut content_start = None;
        let mut content_end = None;
        // Open elements, innermost last.
        let mut stack: Vec<Element> = Vec::new();
        // The element being skimmed, when one is.
        let mut skim: Option<Skim> = None;
        // Names of the elements open inside it (start and end in `text`).
        let mut skim_open: Vec<(usize, usize)> = Vec::new();

        loop {
            let start = reader.buffer_position();
            let event = match reader.read_event() {
                Ok(event) => event,
                Err(e) => return Err(self.error_at(reader.error_position(), e.to_string())),
            };
            let end = reader.buffer_position();
            let depth = stack.len() + skim.as_ref().map_or(0, |_| 1 + skim_open.len());
            // What every element, skimmed or built, must pass.
            match &event {
                Event::Start(_) | Event::Empty(_) if root.is_some() => {
                    return Err(self.error_at(
                        start,
                        "content after the end of the root element (only one root is allowed)",
                    ));
                }
                Event::Start(_) | Event::Empty(_) if depth >= MAX_DEPTH => {
                    return Err(
                        self.error_at(start, format!("elements nested more than {MAX_DEPTH} deep"))
                    );
                }
                Event::Start(tag) | Event::Empty(tag) => {
                    check_attributes(tag).map_err(|(at, m)| self.error_at(start + at, m))?;
                }
                Event::Decl(decl) => {
                    if start != 0 {
                        return Err(self.error_at(
                            start,
                            "an XML declaration is only allowed at the very start of the file",
                        ));
                    }
                    check_declaration(decl).map_err(|m| self.error_at(start, m))?;
                }
                Event::DocType(doctype) if doctype.contains('[') => {
                    return Err(self.error_at(
                        start,
                        "a doctype with an internal subset (entity declarations) is not supported",
                    ));
                }
                _ => {}
            }
            if let Some(skimmed) = &mut skim {
                // Inside a skimmed element: the checks above and the
                // reader's own, and the text of its child elements; no tree.
                let level = skim_open.len();
                match event {
                    Event::Eof => break,
                    Event::Start(tag) => {
                        let name = offsets_in(text, tag_name(&tag))
                            .unwrap_or((start as usize, start as usize));
                        if level == 1 {
                            skimmed.structured = true;
                        }
                        if level == 0 {
                            skimmed.text = None;
                            skimmed.structured = false;
                        }
                        skim_open.push(name);
                    }
                    Event::Empty(tag) => {
                        if level == 1 {
                            skimmed.structured = true;
                        }
                        if level == 0
                            && let Some(skimmer) = skimmer.as_deref_mut()
                        {
                            skimmer.child(skimmed.slot, tag_name(&tag), Cow::Borrowed(""), false);
                        }
                    }
                    Event::End(_) => match skim_open.pop() {
                        Some((from, to)) => {
                            if skim_open.is_empty()
                                && let Some(skimmer) = skimmer.as_deref_mut()
                            {
                                let value = skimmed.text.take().unwrap_or(Cow::Borrowed(""));
                                skimmer.child(
                                    skimmed.slot,
                                    &text[from..to],
                                    value,
                                    skimmed.structured,
                                );
                            }
                        }
                        None => {
                            let Some(parent) = stack.last_mut() else {
                                return Err(
                                    self.error_at(start, "closing tag without an opening tag")
                                );
                            };
                            let raw = span(skimmed.start, end);
                            let name_len = skimmed.name_len;
                            let slot = skimmed.slot;
                            skim = None;
                            parent.children.push(Node::Lazy(Lazy {
                                raw,
                                name_len,
                                slot,
                            }));
                        }
                    },
                    Event::Text(piece) => {
                        let value = piece.xml10_content();
                        if level == 1 {
                            skimmed.add(value);
                        }
                    }
                    Event::GeneralRef(reference) => {
                        let value =
                            resolve_reference(&reference).map_err(|m| self.error_at(start, m))?;
                        if level == 1 {
                            skimmed.add(Cow::Owned(value.to_string()));
                        }
                    }
                    Event::CData(content) => {
                        if level == 1 {
                            let content: &str = &content;
                            skimmed.add(match offsets_in(text, content) {
                                Some((from, to)) => Cow::Borrowed(&text[from..to]),
                                None => Cow::Owned(content.to_string()),
                            });
                        }
                    }
                    Event::Comment(_) | Event::PI(_) | Event::Decl(_) | Event::DocType(_) => {}
                }
                continue;
            }
            let node = match event {
                Event::Eof => break,
                Event::Start(tag) => {
                    let name = tag_name(&tag);
                    if stack.len() == 1
                        && let Some(skimmer) = skimmer.as_deref_mut()
                        && skimmer.skims(name)
                        && let Ok(name_len) = u32::try_from(name.len())
                    {
                        skim = Some(Skim {
                            start,
                            name_len,
                            slot: skimmer.begin(),
                            text: None,
                            structured: false,
                        });
                        continue;
                    }
                    if stack.is_empty() {
                        content_start = Some(end as usize);
                    }
                    stack.push(Element {
                        name: Str::within(source, name),
                        attributes: Str::within(source, tag.attributes_raw()),
                        children: Vec::new(),
                        self_closing: false,
                    });
                    continue;
                }
                Event::Empty(tag) => Node::Element(Element {
                    name: Str::within(source, tag_name(&tag)),
                    attributes: Str::within(source, tag.attributes_raw()),
                    children: Vec::new(),
                    self_closing: true,
                }),
                Event::End(_) => match stack.pop() {
                    Some(element) => {
                        if stack.is_empty() {
                            content_end = Some(start as usize);
                        }
                        Node::Element(element)
                    }
                    None => return Err(self.error_at(start, "closing tag without an opening tag")),
                },
                Event::Text(piece) => {
                    if stack.is_empty() && !piece.trim().is_empty() {
                        let what = if root.is_some() {
                            "text after the end of the root element"
                        } else {
                            "text before the root element"
                        };
                        // Point at the stray text, not at the line break before it.
                        let blank = piece.len() - piece.trim_start().len();
                        return Err(self.error_at(start + blank as u64, what));
                    }
                    let value = match piece.xml10_content() {
                        Cow::Borrowed(_) => None,
                        Cow::Owned(value) => Some(Str::new(&value)),
                    };
                    Node::Text {
                        raw: span(start, end),
                        value,
                    }
                }
                Event::GeneralRef(reference) => {
                    if stack.is_empty() {
                        return Err(self.error_at(start, "a reference outside the root element"));
                    }
                    let value =
                        resolve_reference(&reference).map_err(|m| self.error_at(start, m))?;
                    Node::Text {
                        raw: span(start, end),
                        value: Some(Str::new(value.encode_utf8(&mut [0; 4]))),
                    }
                }
                Event::CData(content) => {
                    if stack.is_empty() {
                        return Err(self.error_at(start, "CDATA outside the root element"));
                    }
                    Node::CData(Str::within(source, &content))
                }
                Event::Comment(_) | Event::PI(_) | Event::Decl(_) | Event::DocType(_) => {
                    Node::Markup(span(start, end))
                }
            };
            match stack.last_mut() {
                Some(parent) => push_merged(&mut parent.children, node),
                None => match node {
                    Node::Element(element) => root = Some(element),
                    other if root.is_none() => prolog.push(other),
                    other => epilog.push(other),
                },
            }
        }
        if let Some(skimmed) = &skim {
            let name = match skim_open.last() {
                Some(&(from, to)) => &text[from..to],
                None => {
                    let at = skimmed.start as usize + 1;
                    &text[at..at + skimmed.name_len as usize]
                }
            };
            return Err(self.error_at(
                text.len() as u64,
                format!("the file ends inside <{name}> (truncated?)"),
            ));
        }
        if let Some(open) = stack.last() {
            return Err(self.error_at(
                text.len() as u64,
                format!("the file ends inside <{}> (truncated?)", open.name),
            ));
        }
        let Some(root) = root else {
            return Err(self.error_at(text.len() as u64, "no root element"));
        };
        let base = self.offset;
        let origin = content_start
            .zip(content_end)
            .map(|(from, to)| (Arc::clone(source), base + from, base + to));
        Ok(Document {
            bom: self.bom,
            prolog,
            root,
            epilog,
            origin,
        })
    }
}

/// The element being skimmed: where it starts, its name's length, its slot,
/// and the text and nesting of its child element that is open.
struct Skim<'a> {
    start: u64,
    name_len: u32,
    slot: u32,
    text: Option<Cow<'a, str>>,
    structured: bool,
}

impl<'a> Skim<'a> {
    /// A piece of the open child's text: a span of the source while it is
    /// one piece, a string of its own when pieces join.
    fn add(&mut self, piece: Cow<'a, str>) {
        self.text = Some(match self.text.take() {
            None => piece,
            Some(before) => {
                let mut joined = before.into_owned();
                joined.push_str(&piece);
                Cow::Owned(joined)
            }
        });
    }
}

fn tag_name<'t>(tag: &'t quick_xml::events::BytesStart<'_>) -> &'t str {
    tag.name().0
}

/// What [`Document::parse_lazy`] tells of the elements it skims.
pub trait Skimmer {
    /// Whether a child element of the root called `name` is skimmed: checked
    /// like any other, but kept as its text ([`Lazy`]), not built.
    fn skims(&mut self, name: &str) -> bool;
    /// Forgets every element told so far: the reading starts again.
    fn reset(&mut self);
    /// A skimmed element begins; its slot.
    fn begin(&mut self) -> u32;
    /// A child element of the skimmed element in `slot` ended: its name, its
    /// text as [`Element::text`] reads it, and whether it holds elements.
    fn child(&mut self, slot: u32, name: &str, text: Cow<'_, str>, structured: bool);
    /// The names of the child elements this skimmer expects, by number:
    /// the fast path matches them whole, sixteen bytes at once, where it
    /// would read any other name byte by byte, and tells a child of one of
    /// them by its number ([`Skimmer::known_child`]). A name the fast path
    /// could not take as it stands (more than sixteen bytes, not a plain
    /// ASCII name) is never matched.
    fn known(&self) -> &[&'static str] {
        &[]
    }
    /// A child element called `known()[index]` ended: as [`Skimmer::child`].
    fn known_child(&mut self, slot: u32, index: usize, text: Cow<'_, str>, structured: bool) {
        if let Some(&name) = self.known().get(index) {
            self.child(slot, name, text, structured);
        }
    }
}

/// The names a skimmer knows (see [`Skimmer::known`]), as the fast path
/// matches them, and which of them followed which in the last skimmed
/// element: an element's children come in one order, so the next is
/// nearly always the one that came next before.
struct Vocabulary {
    /// The known names by number, and [`Word::NONE`] after them.
    words: Vec<Word>,
    /// After the known child `i`, the number of the one that came next
    /// last time; at the end (the start of an element), of the one that
    /// came first. Each a number of `words`.
    after: Vec<usize>,
}

/// A name to match: its bytes as a little-endian number, zeros after the
/// name, and the mask of its bytes.
#[derive(Clone, Copy)]
struct Word {
    pattern: u128,
    mask: u128,
    len: usize,
}

impl Word {
    /// A word that matches nothing: sixteen bytes 0xFF, which no UTF-8
    /// text holds.
    const NONE: Word = Word {
        pattern: u128::MAX,
        mask: u128::MAX,
        len: 0,
    };

    /// `name` as a word, when the fast path takes it (a plain ASCII name
    /// of at most sixteen bytes); else [`Word::NONE`].
    fn of(name: &str) -> Word {
        let bytes = name.as_bytes();
        let Some((&first, rest)) = bytes.split_first() else {
            return Word::NONE;
        };
        if bytes.len() > 16 || !is_name_start(first) || !rest.iter().all(|&b| is_name_byte(b)) {
            return Word::NONE;
        }
        let mut padded = [0u8; 16];
        padded[..bytes.len()].copy_from_slice(bytes);
        Word {
            pattern: u128::from_le_bytes(padded),
            mask: u128::MAX >> (8 * (16 - bytes.len())),
            len: bytes.len(),
        }
    }

    /// Whether `bytes` holds this name at `at` (it may go on with a name
    /// byte: the caller looks at the byte after). False within sixteen
    /// bytes of the end, where the caller reads the name byte by byte.
    #[inline]
    fn at(&self, bytes: &[u8], at: usize) -> bool {
        let Some(window) = bytes.get(at..at.wrapping_add(16)) else {
            return false;
        };
        let Ok(window) = <[u8; 16]>::try_from(window) else {
            return false;
        };
        (u128::from_le_bytes(window) ^ self.pattern) & self.mask == 0
    }
}

impl Vocabulary {
    fn of(names: &[&str]) -> Vocabulary {
        let count = names.len();
        Vocabulary {
            words: names
                .iter()
                .map(|name| Word::of(name))
                .chain([Word::NONE])
                .collect(),
            // At first, the order given.
            after: (1..=count).chain([0]).collect(),
        }
    }

    /// The state before an element's first child.
    fn start(&self) -> usize {
        self.after.len() - 1
    }

    /// The known child likely to come after `state`: its number and word.
    #[inline]
    fn guess(&self, state: usize) -> (usize, Word) {
        let next = self.after.get(state).copied().unwrap_or(0);
        (next, self.words.get(next).copied().unwrap_or(Word::NONE))
    }

    /// That `next` came after `state`.
    fn saw(&mut self, state: usize, next: usize) {
        if let Some(slot) = self.after.get_mut(state) {
            *slot = next;
        }
    }
}

/// How many nodes the fast path reserves among the root's children for a
/// text of `len` bytes: about two a machine of some 400 bytes, reserved
/// once, not grown by doubling (each doubling copies and touches new
/// memory).
pub fn root_capacity(len: usize) -> usize {
    len / 200 + 4
}

/// The fast path of [`Document::parse_lazy`]: a scanner for the plain XML
/// that mama and upstream write, several times quicker than the general
/// reader on a large lab. It takes only what it knows the general reader
/// takes the same way: an optional `<?xml version="1.0"?>` declaration
/// (or with `encoding="UTF-8"`), white space, and elements without
/// attributes whose names are plain ASCII, holding text with the five
/// predefined entities and no `>`, no comments, processing instructions,
/// CDATA or doctype, no carriage return anywhere, no text but white space
/// outside the machines' fields. On anything else it answers `None`, and
/// the general reader reads the file, with its exact errors. What it
/// builds is what the general reader builds (the tests hold it to that):
/// the same nodes, the same spans, the same fields told to the skimmer.
struct Fast<'t> {
    text: &'t str,
    bytes: &'t [u8],
    source: &'t Source,
    /// The last block of 64 bytes looked at by [`Fast::next_stop`]: its
    /// number, and a bit for each of its bytes that is `<`, `>` or `&`.
    stops: Cell<(usize, u64)>,
}

const DECLARATIONS: [&str; 3] = [
    "<?xml version=\"1.0\"?>",
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
    "<?xml version=\"1.0\" encoding=\"utf-8\"?>",
];

/// The predefined entities, and what they stand for.
const ENTITIES: [(&[u8], char); 5] = [
    (b"&amp;", '&'),
    (b"&lt;", '<'),
    (b"&gt;", '>'),
    (b"&quot;", '"'),
    (b"&apos;", '\''),
];

/// A bit for each byte of `block` (bit `i` for `block[i]`) that is `<`, `>`
/// or `&`: sixteen bytes at once.
#[cfg(target_arch = "x86_64")]
fn stop_bits(block: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let mut bits = 0;
    for (i, chunk) in block.chunks_exact(16).enumerate() {
        // SAFETY: SSE2 is part of every x86_64 processor (the target's
        // baseline), and the load reads the sixteen bytes of `chunk`,
        // unaligned as the instruction allows.
        let found = unsafe {
            let bytes = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
            let is = |b: u8| _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b as i8));
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(is(b'<'), is(b'>')), is(b'&')))
        };
        bits |= u64::from(found as u16) << (16 * i);
    }
    bits
}

/// [`stop_bits`] elsewhere: eight bytes at once, each byte's own bit.
#[cfg(not(target_arch = "x86_64"))]
fn stop_bits(block: &[u8; 64]) -> u64 {
    stop_bits_by_words(block)
}

/// [`stop_bits`] in plain arithmetic, eight bytes a word: the high bit of
/// each byte that equals one of the stops, exactly (no carry between
/// bytes), gathered into eight bits by a multiplication.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn stop_bits_by_words(block: &[u8; 64]) -> u64 {
    const LOWS: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const ONES: u64 = 0x0101_0101_0101_0101;
    // 0x80 in each byte of `x` that is zero, and 0 in the others.
    let zeros = |x: u64| !(((x & LOWS) + LOWS) | x | LOWS);
    let mut bits = 0;
    for (i, chunk) in block.chunks_exact(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let found = zeros(word ^ (ONES * u64::from(b'<')))
            | zeros(word ^ (ONES * u64::from(b'>')))
            | zeros(word ^ (ONES * u64::from(b'&')));
        // Bit 7 of byte k moves to bit 56 + k, then down to bit k.
        let gathered = ((found >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56;
        bits |= gathered << (8 * i);
    }
    bits
}

/// Whether two short byte strings (tag names) are equal: a plain loop,
/// where a call to `memcmp` costs more than the comparison.
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n')
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

/// The bytes of a name after its first, as a table: one load a byte where
/// the tests of a range or two cost a mispredicted branch or two.
const NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.';
        b += 1;
    }
    table
};

fn is_name_byte(b: u8) -> bool {
    NAME_BYTES[b as usize]
}

/// The bytes that end or interrupt a run of text: `<`, `>`, `&`.
const TEXT_STOPS: [bool; 256] = {
    let mut table = [false; 256];
    table[b'<' as usize] = true;
    table[b'>' as usize] = true;
    table[b'&' as usize] = true;
    table
};

impl<'t> Fast<'t> {
    /// The scanner over `text`, which is `source` or its end.
    fn new(text: &'t str, source: &'t Source) -> Fast<'t> {
        Fast {
            text,
            bytes: text.as_bytes(),
            source,
            stops: Cell::new((usize::MAX, 0)),
        }
    }

    /// The scanner over the whole of `source`.
    fn over(source: &'t Source) -> Fast<'t> {
        Fast::new(source, source)
    }

    fn span(&self, from: usize, to: usize) -> Str {
        Str::within(self.source, &self.text[from..to])
    }

    fn space_end(&self, mut at: usize) -> usize {
        while at < self.bytes.len() && is_space(self.bytes[at]) {
            at += 1;
        }
        at
    }

    /// A name at `at`: where it ends.
    fn name_end(&self, at: usize) -> Option<usize> {
        if !is_name_start(*self.bytes.get(at)?) {
            return None;
        }
        let mut end = at + 1;
        while end < self.bytes.len() && is_name_byte(self.bytes[end]) {
            end += 1;
        }
        Some(end)
    }

    /// A start tag at `at` (its `<`): the name's end, where the tag ends,
    /// and whether it is `<name/>`.
    fn start_tag(&self, at: usize) -> Option<(usize, usize, bool)> {
        self.tag_end(self.name_end(at + 1)?)
    }

    /// The end of a start tag whose name ends at `name_end`: as
    /// [`Fast::start_tag`] tells it.
    #[inline]
    fn tag_end(&self, name_end: usize) -> Option<(usize, usize, bool)> {
        match self.bytes.get(name_end..name_end + 2)? {
            [b'>', _] => Some((name_end, name_end + 1, false)),
            b"/>" => Some((name_end, name_end + 2, true)),
            _ => None,
        }
    }

    /// An end tag at `at` closing the element named `bytes[from..to]`:
    /// where it ends.
    fn end_tag(&self, at: usize, from: usize, to: usize) -> Option<usize> {
        let name = at + 2;
        let close = name + (to - from);
        (self.bytes.get(at + 1) == Some(&b'/')
            && same_bytes(self.bytes.get(name..close)?, &self.bytes[from..to])
            && self.bytes.get(close) == Some(&b'>'))
        .then_some(close + 1)
    }

    /// Text from `at` up to the next `<`: where it ends, and whether it
    /// holds entities.
    #[inline]
    fn text_run(&self, at: usize) -> Option<(usize, bool)> {
        let stop = self.next_stop(at);
        if self.bytes.get(stop) == Some(&b'<') {
            return Some((stop, false));
        }
        self.text_run_from(stop)
    }

    /// [`Fast::text_run`] from a `>` or `&` (or the end).
    #[inline(never)]
    fn text_run_from(&self, mut at: usize) -> Option<(usize, bool)> {
        let mut entities = false;
        loop {
            at = self.next_stop(at);
            match *self.bytes.get(at)? {
                b'<' => return Some((at, entities)),
                b'>' => return None,
                b'&' => {
                    let rest = &self.bytes[at..];
                    let (entity, _) = ENTITIES.iter().find(|(e, _)| rest.starts_with(e))?;
                    entities = true;
                    at += entity.len();
                }
                _ => at += 1,
            }
        }
    }

    /// Where the first `<`, `>` or `&` at or after `at` stands (the end
    /// of the text if none). Most of a lab's bytes are looked at here, in
    /// runs of a few bytes: each block of 64 bytes is looked at once, into
    /// a bit for each byte, and a run is then found in its block's bits.
    #[inline]
    fn next_stop(&self, at: usize) -> usize {
        let (cached, bits) = self.stops.get();
        let ahead = bits.checked_shr((at % 64) as u32).unwrap_or(0);
        if at / 64 == cached && ahead != 0 {
            return at + ahead.trailing_zeros() as usize;
        }
        self.next_stop_in_blocks(at)
    }

    /// [`Fast::next_stop`] past the block looked at last.
    #[inline(never)]
    fn next_stop_in_blocks(&self, mut at: usize) -> usize {
        let len = self.bytes.len();
        while at < len {
            let block = at / 64;
            let (cached, mut bits) = self.stops.get();
            if cached != block {
                bits = self.stop_bits(block);
                self.stops.set((block, bits));
            }
            let ahead = bits >> (at % 64);
            if ahead != 0 {
                return at + ahead.trailing_zeros() as usize;
            }
            at = (block + 1) * 64;
        }
        len
    }

    /// A bit for each byte of block `block` (bit `i` for byte `64 * block
    /// + i`) that is `<`, `>` or `&`.
    fn stop_bits(&self, block: usize) -> u64 {
        let start = block * 64;
        match self.bytes.get(start..start + 64).map(<&[u8; 64]>::try_from) {
            Some(Ok(whole)) => stop_bits(whole),
            _ => self
                .bytes
                .get(start..)
                .unwrap_or_default()
                .iter()
                .enumerate()
                .fold(0, |bits, (i, &b)| {
                    bits | u64::from(TEXT_STOPS[b as usize]) << i
                }),
        }
    }

    /// The text `from..to` as read: itself, or with its entities resolved.
    fn value(&self, from: usize, to: usize, entities: bool) -> Cow<'t, str> {
        let raw = &self.text[from..to];
        if !entities {
            return Cow::Borrowed(raw);
        }
        let mut value = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(amp) = rest.find('&') {
            value.push_str(&rest[..amp]);
            rest = &rest[amp..];
            match ENTITIES
                .iter()
                .find(|(e, _)| rest.as_bytes().starts_with(e))
            {
                Some((entity, c)) => {
                    value.push(*c);
                    rest = &rest[entity.len()..];
                }
                None => {
                    value.push('&');
                    rest = &rest[1..];
                }
            }
        }
        value.push_str(rest);
        Cow::Owned(value)
    }

    /// The content of an element opened at depth `depth` whose name is
    /// `bytes[from..to]`, from `at` to its end tag: where that ends.
    fn skip_content(&self, mut at: usize, from: usize, to: usize, depth: usize) -> Option<usize> {
        let mut open = [(0usize, 0usize); MAX_DEPTH];
        let mut level = 0;
        open[0] = (from, to);
        loop {
            at = self.text_run(at)?.0;
            if self.bytes.get(at + 1) == Some(&b'/') {
                let (from, to) = open[level];
                at = self.end_tag(at, from, to)?;
                if level == 0 {
                    return Some(at);
                }
                level -= 1;
                continue;
            }
            let (name_end, end, empty) = self.start_tag(at)?;
            if !empty {
                if depth + level + 1 >= MAX_DEPTH - 1 {
                    return None;
                }
                level += 1;
                open[level] = (at + 1, name_end);
            }
            at = end;
        }
    }

    /// The element whose start tag is at `at`, at depth `depth` (the root
    /// is at 0), built as the general reader builds it: the element, and
    /// where its end tag ends.
    fn element(&self, at: usize, depth: usize) -> Option<(Element, usize)> {
        if depth >= MAX_DEPTH - 1 {
            return None;
        }
        let (name_end, end, empty) = self.start_tag(at)?;
        let name_from = at + 1;
        let mut element = Element {
            name: self.span(name_from, name_end),
            attributes: self.span(name_end, name_end),
            children: Vec::new(),
            self_closing: empty,
        };
        if empty {
            return Some((element, end));
        }
        let mut at = end;
        loop {
            let (run_end, entities) = self.text_run(at)?;
            if run_end > at {
                element.children.push(Node::Text {
                    raw: self.span(at, run_end),
                    value: entities.then(|| Str::new(&self.value(at, run_end, true))),
                });
            }
            at = run_end;
            if self.bytes.get(at + 1) == Some(&b'/') {
                let end = self.end_tag(at, name_from, name_end)?;
                return Some((element, end));
            }
            let (child, end) = self.element(at, depth + 1)?;
            element.children.push(Node::Element(child));
            at = end;
        }
    }

    /// The content from `at` of a skimmed element named `bytes[from..to]`,
    /// telling `skimmer` the text of its child elements: where its end tag
    /// ends.
    fn skimmed(
        &self,
        mut at: usize,
        (from, to): (usize, usize),
        slot: u32,
        skimmer: &mut (impl Skimmer + ?Sized),
        vocabulary: &mut Vocabulary,
    ) -> Option<usize> {
        let bytes = self.bytes;
        let mut state = vocabulary.start();
        loop {
            at = self.text_run(at)?.0;
            if bytes.get(at + 1) == Some(&b'/') {
                return self.end_tag(at, from, to);
            }
            let name_from = at + 1;
            // The child likely next, its name matched whole: the field
            // `<name/>`, or `<name>text</name>` (the text without entities
            // or elements, one span), told at once.
            let (guess, word) = vocabulary.guess(state);
            if word.at(bytes, name_from) {
                let name_end = name_from + word.len;
                match bytes.get(name_end) {
                    Some(b'/') if bytes.get(name_end + 1) == Some(&b'>') => {
                        skimmer.known_child(slot, guess, Cow::Borrowed(""), false);
                        state = guess;
                        at = name_end + 2;
                        continue;
                    }
                    Some(b'>') => {
                        let start = name_end + 1;
                        let stop = self.next_stop(start);
                        if bytes.get(stop) == Some(&b'<')
                            && bytes.get(stop + 1) == Some(&b'/')
                            && word.at(bytes, stop + 2)
                            && bytes.get(stop + 2 + word.len) == Some(&b'>')
                        {
                            let text = self.text.get(start..stop).unwrap_or_default();
                            skimmer.known_child(slot, guess, Cow::Borrowed(text), false);
                            state = guess;
                            at = stop + 3 + word.len;
                            continue;
                        }
                        let (end, text, structured) =
                            self.field(start, (name_from, name_end), Some(word))?;
                        skimmer.known_child(slot, guess, text.unwrap_or_default(), structured);
                        state = guess;
                        at = end;
                        continue;
                    }
                    // A longer name, or attributes: read as any other.
                    _ => {}
                }
            }
            let (name_to, end, empty) = self.start_tag(at)?;
            let (end, text, structured) = match empty {
                true => (end, None, false),
                false => self.field(end, (name_from, name_to), None)?,
            };
            at = end;
            let name = &self.text[name_from..name_to];
            if let Some(index) = skimmer.known().iter().position(|known| *known == name) {
                vocabulary.saw(state, index);
                state = index;
            }
            skimmer.child(slot, name, text.unwrap_or_default(), structured);
        }
    }

    /// The content from `at` of a child of a skimmed element, named
    /// `bytes[from..to]` (that is `word`, when known), up to its end tag:
    /// where that ends, its text, and whether it holds elements.
    fn field(
        &self,
        mut at: usize,
        (from, to): (usize, usize),
        word: Option<Word>,
    ) -> Option<(usize, Option<Cow<'t, str>>, bool)> {
        let mut text: Option<Cow<'t, str>> = None;
        let mut structured = false;
        loop {
            let (run_end, entities) = self.text_run(at)?;
            if run_end > at {
                let piece = self.value(at, run_end, entities);
                text = Some(match text.take() {
                    None => piece,
                    Some(before) => Cow::Owned(before.into_owned() + &piece),
                });
            }
            at = run_end;
            if self.bytes.get(at + 1) == Some(&b'/') {
                let end = match word {
                    Some(word) if word.at(self.bytes, at + 2) => {
                        let close = at + 2 + word.len;
                        (self.bytes.get(close) == Some(&b'>')).then_some(close + 1)
                    }
                    _ => self.end_tag(at, from, to),
                }?;
                return Some((end, text, structured));
            }
            let (inner_end, end, empty) = self.start_tag(at)?;
            structured = true;
            at = if empty {
                end
            } else {
                self.skip_content(end, at + 1, inner_end, 4)?
            };
        }
    }

    /// The whole document, unless it holds anything the fast path leaves
    /// to the general reader (a carriage return among them: the caller
    /// tells whether it holds one).
    fn document(
        &self,
        bom: bool,
        offset: usize,
        carriage_return: bool,
        skimmer: &mut (impl Skimmer + ?Sized),
    ) -> Option<Document> {
        let bytes = self.bytes;
        if carriage_return {
            return None;
        }
        let mut vocabulary = Vocabulary::of(skimmer.known());
        let mut prolog = Vec::new();
        let mut at = 0;
        if let Some(decl) = DECLARATIONS.iter().find(|d| self.text.starts_with(*d)) {
            prolog.push(Node::Markup(self.span(0, decl.len())));
            at = decl.len();
        }
        let space = self.space_end(at);
        if space > at {
            prolog.push(whitespace_span(self.span(at, space)));
        }
        at = space;
        if bytes.get(at) != Some(&b'<') {
            return None;
        }
        let (root_name_end, root_end, empty) = self.start_tag(at)?;
        if empty {
            return None;
        }
        let (root_from, root_to) = (at + 1, root_name_end);
        let content_start = root_end;
        at = root_end;
        let mut children = Vec::with_capacity(root_capacity(bytes.len()));
        let content_end = loop {
            let space = self.space_end(at);
            if space > at {
                children.push(whitespace_span(self.span(at, space)));
            }
            at = space;
            if bytes.get(at) != Some(&b'<') {
                return None;
            }
            if bytes.get(at + 1) == Some(&b'/') {
                let end = self.end_tag(at, root_from, root_to)?;
                let content_end = at;
                at = end;
                break content_end;
            }
            let start = at;
            let (name_end, end, empty) = self.start_tag(at)?;
            if !empty && skimmer.skims(&self.text[start + 1..name_end]) {
                let slot = skimmer.begin();
                at = self.skimmed(end, (start + 1, name_end), slot, skimmer, &mut vocabulary)?;
                children.push(Node::Lazy(Lazy {
                    raw: self.span(start, at),
                    name_len: u32::try_from(name_end - start - 1).ok()?,
                    slot,
                }));
                continue;
            }
            // Few and small (mama's own <event_seq>, <pending_events>):
            // built whole.
            let (element, end) = self.element(start, 1)?;
            at = end;
            children.push(Node::Element(element));
        };
        let mut epilog = Vec::new();
        let space = self.space_end(at);
        if space > at {
            epilog.push(whitespace_span(self.span(at, space)));
        }
        if space != bytes.len() {
            return None;
        }
        Some(Document {
            bom,
            prolog,
            root: Element {
                name: self.span(root_from, root_to),
                attributes: self.span(root_to, root_to),
                children,
                self_closing: false,
            },
            epilog,
            origin: Some((
                Arc::clone(self.source),
                offset + content_start,
                offset + content_end,
            )),
        })
    }
}

fn whitespace_span(raw: Str) -> Node {
    Node::Text { raw, value: None }
}

/// Text split by references arrives in pieces; keep one text node per run.
fn push_merged(children: &mut Vec<Node>, node: Node) {
    if let (Some(Node::Text { raw, value }), Node::Text { raw: r, value: v }) =
        (children.last_mut(), &node)
    {
        let mut joined = value.as_deref().unwrap_or(raw).to_string();
        joined.push_str(v.as_deref().unwrap_or(r));
        *raw = match (&raw.0, &r.0) {
            (
                Repr::Span { source, start, end },
                Repr::Span {
                    source: next,
                    start: next_start,
                    end: next_end,
                },
            ) if Arc::ptr_eq(source, next) && end == next_start => Str(Repr::Span {
                source: Arc::clone(source),
                start: *start,
                end: *next_end,
            }),
            _ => Str::new(&format!("{raw}{r}")),
        };
        *value = (joined != **raw).then(|| Str::new(&joined));
        return;
    }
    children.push(node);
}

fn resolve_reference(reference: &quick_xml::events::BytesRef<'_>) -> Result<char, String> {
    let name: &str = reference;
    match reference.resolve_char_ref() {
        Ok(Some(c)) if is_xml_char(c) => return Ok(c),
        Ok(Some(c)) => {
            return Err(format!(
                "&{name}; is the character U+{:04X}, which XML 1.0 does not allow",
                c as u32
            ));
        }
        Ok(None) => {}
        Err(e) => return Err(format!("bad character reference &{name};: {e}")),
    }
    match name {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "apos" => Ok('\''),
        "quot" => Ok('"'),
        _ => Err(format!("unknown entity &{name};")),
    }
}

/// Checks a tag's attributes; an error has its offset from the tag's `<`.
fn check_attributes(tag: &quick_xml::events::BytesStart<'_>) -> Result<(), (u64, String)> {
    // Outside values only names, `=`, quotes and white space stand here,
    // so any `<` is inside a value, where XML forbids it.
    if let Some(i) = tag.attributes_raw().find('<') {
        let at = 1 + tag.name().as_ref().len() + i;
        return Err((
            at as u64,
            "'<' inside an attribute value (write it as &lt;)".into(),
        ));
    }
    for attribute in tag.attributes().with_checks(true) {
        let attribute = attribute.map_err(|e| (0, format!("bad attribute: {e}")))?;
        attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| (0, format!("bad attribute value: {e}")))?;
    }
    Ok(())
}

fn check_declaration(decl: &quick_xml::events::BytesDecl<'_>) -> Result<(), String> {
    if let Some(encoding) = decl.encoding() {
        let encoding = encoding.map_err(|e| format!("bad XML declaration: {e}"))?;
        if !encoding.eq_ignore_ascii_case("utf-8") {
            return Err(format!(
                "the file declares encoding {encoding}; only UTF-8 is supported"
            ));
        }
    }
    Ok(())
}

/// What one look at every byte of a text finds (see [`scan_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scan {
    /// A byte that may start a character XML 1.0 does not allow: a C0
    /// control other than tab, line feed and carriage return, or 0xEF
    /// (which starts U+FFFE and U+FFFF, and many an allowed character).
    suspect: bool,
    /// A carriage return.
    carriage_return: bool,
}

/// A suspect byte (see [`Scan::suspect`]).
fn is_suspect(b: u8) -> bool {
    (b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r') | (b == 0xEF)
}

/// One look at every byte of `bytes`, sixteen at once: a state file is
/// read whole on every command.
#[cfg(target_arch = "x86_64")]
fn scan_bytes(bytes: &[u8]) -> Scan {
    use std::arch::x86_64::{
        __m128i, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_setzero_si128,
    };
    let mut chunks = bytes.chunks_exact(16);
    // SAFETY: SSE2 is part of every x86_64 processor (the target's
    // baseline), and each load reads the sixteen bytes of its chunk,
    // unaligned as the instruction allows.
    let (suspect, carriage_return) = unsafe {
        let (mut suspect, mut carriage_return) = (_mm_setzero_si128(), _mm_setzero_si128());
        let highest_control = _mm_set1_epi8(0x1F);
        for chunk in &mut chunks {
            let bytes = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
            let is = |b: u8| _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b as i8));
            // A byte at most 0x1F is its own minimum with 0x1F.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(bytes, highest_control), bytes);
            let cr = is(b'\r');
            let allowed = _mm_or_si128(_mm_or_si128(is(b'\t'), is(b'\n')), cr);
            let found = _mm_or_si128(_mm_andnot_si128(allowed, control), is(0xEF));
            suspect = _mm_or_si128(suspect, found);
            carriage_return = _mm_or_si128(carriage_return, cr);
        }
        (
            _mm_movemask_epi8(suspect) != 0,
            _mm_movemask_epi8(carriage_return) != 0,
        )
    };
    let rest = chunks.remainder();
    Scan {
        suspect: suspect || rest.iter().any(|&b| is_suspect(b)),
        carriage_return: carriage_return || rest.contains(&b'\r'),
    }
}

/// [`scan_bytes`] elsewhere: 64 bytes at a time, with no branch inside a
/// block, so the compiler can look at many at once.
#[cfg(not(target_arch = "x86_64"))]
fn scan_bytes(bytes: &[u8]) -> Scan {
    scan_bytes_by_blocks(bytes)
}

/// [`scan_bytes`] in plain code.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn scan_bytes_by_blocks(bytes: &[u8]) -> Scan {
    let found = bytes.chunks(64).fold(0u8, |seen, block| {
        block.iter().fold(seen, |seen, &b| {
            seen | u8::from(is_suspect(b)) | u8::from(b == b'\r') << 1
        })
    });
    Scan {
        suspect: found & 1 != 0,
        carriage_return: found & 2 != 0,
    }
}

/// Where the first character that XML 1.0 does not allow stands in
/// `text`: a C0 control other than tab, newline and carriage return, or
/// U+FFFE or U+FFFF (a `str` holds no surrogates). The same answer as
/// [`is_xml_char`] on every character, found by looking at bytes: a state
/// file is read whole on every command.
fn first_non_xml_char(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    // A quick look for any byte that could start one, 64 bytes at a time
    // without a branch inside, so the compiler looks at many at once.
    if !any_byte(bytes, is_suspect) {
        return None;
    }
    bytes.iter().enumerate().find_map(|(at, &b)| {
        let bad = match b {
            b'\t' | b'\n' | b'\r' => false,
            0..0x20 => true,
            // U+FFFE and U+FFFF: EF BF BE and EF BF BF.
            0xEF => {
                bytes.get(at + 1) == Some(&0xBF) && matches!(bytes.get(at + 2), Some(0xBE | 0xBF))
            }
            _ => false,
        };
        bad.then_some(at)
    })
}

/// Whether any byte of `bytes` is `suspect`: 64 bytes at a time, with no
/// branch inside a block, so the compiler can test a block in a few
/// instructions. For scans of whole files and outputs.
pub fn any_byte(bytes: &[u8], suspect: impl Fn(u8) -> bool) -> bool {
    bytes.chunks(64).any(|block| {
        block
            .iter()
            .fold(0u8, |seen, &b| seen | u8::from(suspect(b)))
            != 0
    })
}

pub use crate::text::is_xml_char;

/// Escapes text content so that it reads back exactly: markup characters,
/// and carriage returns, which a parser would otherwise turn into newlines.
pub fn escape_text(value: &str) -> Cow<'_, str> {
    if !value.contains(['&', '<', '>', '\r']) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 16);
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_scan_finds_what_the_character_test_finds() {
        let samples = [
            "plain",
            "tab\tnl\ncr\r",
            "a\u{1}b",
            "\u{0}",
            "é✓𝄞",
            "x\u{fffe}",
            "\u{ffff}y",
            "\u{fffd}\u{e000}\u{d7ff}",
            "\u{7f}\u{85}\u{9b}",
            "end\u{1f}",
        ];
        for text in samples {
            let by_chars = text
                .char_indices()
                .find(|&(_, c)| !is_xml_char(c))
                .map(|(at, _)| at);
            assert_eq!(first_non_xml_char(text), by_chars, "{text:?}");
        }
    }

    fn roundtrip(text: &str) {
        let doc = Document::parse(text).expect("parses");
        assert_eq!(doc.write(), text);
    }

    #[test]
    fn unchanged_documents_are_written_byte_for_byte() {
        roundtrip(
            "<?xml version=\"1.0\"?>\n<settings>\n  <machine>\n    <name>a</name>\n    <ip/>\n    <os></os>\n  </machine>\n</settings>\n",
        );
        roundtrip(
            "<settings a='1' b=\"&amp;\"><!-- c --><x>&lt;&#233;&amp;</x><?pi x?><![CDATA[<raw>]]></settings>",
        );
        roundtrip("\u{feff}<settings>\r\n</settings>");
        roundtrip("<!DOCTYPE settings>\n<settings/>\n<!-- after -->\n");
    }

    #[test]
    fn text_values_are_decoded() {
        let doc =
            Document::parse("<s><a>x &amp; y&#10;&#x41;<![CDATA[<&>]]></a><b>l1\r\nl2</b></s>")
                .unwrap();
        assert_eq!(doc.root.child("a").unwrap().text(), "x & y\nA<&>");
        assert_eq!(doc.root.child("b").unwrap().text(), "l1\nl2");
    }

    #[test]
    fn set_text_round_trips_every_character_xml_allows() {
        let nasty = "a & b < c > d \" e ' f ]]> g\r\nh\ti é ✓ 𝄞";
        let mut doc = Document::parse("<s><a/></s>").unwrap();
        doc.root.child_mut("a").unwrap().set_text(nasty);
        let again = Document::parse(&doc.write()).unwrap();
        assert_eq!(again.root.child("a").unwrap().text(), nasty);
    }

    #[test]
    fn broken_documents_are_refused_with_a_position() {
        let cases = [
            ("", "empty"),
            ("   \n", "empty"),
            ("<s><a></s>", "a"),
            ("<s><a>", "ends inside <a>"),
            ("<s/>junk", "text after"),
            ("<s/><t/>", "only one root"),
            ("junk<s/>", "text before"),
            ("<s>&nope;</s>", "unknown entity"),
            ("<s>&#1;</s>", "U+0001"),
            ("<s>\u{0}</s>", "U+0000"),
            ("<s a='\u{1b}'/>", "U+001B"),
            ("<s><!-- \u{7} --></s>", "U+0007"),
            ("<s><![CDATA[\u{1f}]]></s>", "U+001F"),
            ("<s>\u{ffff}</s>", "U+FFFF"),
            ("<s a='<'/>", "'<'"),
            ("<s><t a=\"x\" b='y<'></t></s>", "'<'"),
            ("\n<?xml version=\"1.0\"?><s/>", "XML declaration"),
            ("<s><?xml version=\"1.0\"?></s>", "XML declaration"),
            ("\u{feff}\u{feff}<s/>", "U+FEFF"),
            (&"<a>".repeat(MAX_DEPTH + 1), "nested"),
            (&format!("{}<a/>", "<a>".repeat(MAX_DEPTH)), "nested"),
            ("<s a=1/>", "attribute"),
            (
                "<?xml version=\"1.0\" encoding=\"latin1\"?><s/>",
                "encoding",
            ),
            (
                "<!DOCTYPE s [<!ENTITY e \"x\">]><s>&e;</s>",
                "internal subset",
            ),
        ];
        for (text, expected) in cases {
            let err = Document::parse(text).expect_err(text);
            assert!(
                err.message.contains(expected),
                "{text:?}: {err} should mention {expected:?}"
            );
        }
        let err = Document::parse("<s>\n  <a>\n</s>").unwrap_err();
        assert_eq!((err.line, err.column), (3, 1), "{err}");
        let err = Document::parse("<s>\n  <t a='1' b=\"x<\"/></s>").unwrap_err();
        assert_eq!((err.line, err.column), (2, 16), "{err}");
        let err = Document::parse("<s>\n x\u{0}</s>").unwrap_err();
        assert_eq!((err.line, err.column), (2, 3), "{err}");
        // Characters XML allows anywhere are kept, and a declaration after
        // one byte-order mark is at the start.
        roundtrip("\u{feff}<?xml version=\"1.0\"?><s a='\u{85}'>\u{7f}\u{9b}\u{feff}</s>");
        roundtrip("<?xml-stylesheet href=\"a\"?><s/>");
        let deepest = MAX_DEPTH - 1;
        roundtrip(&format!(
            "{}<a/>{}",
            "<a>".repeat(deepest),
            "</a>".repeat(deepest)
        ));
        let err = Document::parse(&"<a>".repeat(200_000)).unwrap_err();
        assert_eq!((err.line, err.column), (1, MAX_DEPTH * 3 + 1), "{err}");
    }

    #[test]
    fn inserted_elements_take_the_siblings_indent() {
        let mut doc = Document::parse("<s>\n  <m>\n    <a/>\n    <c/>\n  </m>\n</s>").unwrap();
        let m = doc.root.child_mut("m").unwrap();
        let after = m.position("a");
        m.insert_element(after, Element::with_text("b", "x"), "    ");
        assert_eq!(
            doc.write(),
            "<s>\n  <m>\n    <a/>\n    <b>x</b>\n    <c/>\n  </m>\n</s>"
        );

        let mut doc = Document::parse("<s/>").unwrap();
        doc.root.insert_element(None, Element::new("m"), "  ");
        assert_eq!(doc.write(), "<s>\n  <m/>\n</s>");
        let m = doc.root.position("m").unwrap();
        doc.root.remove_child(m);
        assert_eq!(doc.write(), "<s>\n</s>");
    }

    /// Tells nothing; skims `<m>`.
    struct SkimM(u32);

    impl Skimmer for SkimM {
        fn skims(&mut self, name: &str) -> bool {
            name == "m"
        }
        fn reset(&mut self) {
            self.0 = 0;
        }
        fn begin(&mut self) -> u32 {
            self.0 += 1;
            self.0 - 1
        }
        fn child(&mut self, _: u32, _: &str, _: Cow<'_, str>, _: bool) {}
    }

    #[test]
    fn the_fast_path_takes_plain_files_and_leaves_the_rest_to_the_reader() {
        let fast = |text: &str| {
            let source: Source = Arc::new(text.to_string());
            let parser = Parser::new(&source);
            let fast = Fast::new(parser.text, &source);
            let found = fast.document(
                parser.bom,
                parser.offset,
                text.contains('\r'),
                &mut SkimM(0),
            );
            let general = Parser::new(&source).parse(&source, Some(&mut SkimM(0)));
            if let Some(doc) = &found {
                assert_eq!(Ok(doc), general.as_ref(), "{text}");
                assert_eq!(doc.write(), text);
            }
            found.is_some()
        };
        let plain = "<?xml version=\"1.0\"?>\n<s>\n  <m>\n    <a>x &amp; y</a>\n    <b/>\n    <c>t<d>u</d>v</c>\n  </m>\n  <e>1</e>\n  <m><a/></m>\n</s>\n";
        assert!(fast(plain));
        assert!(fast("\u{feff}<s><m/></s>"));
        for other in [
            plain.replace("<b/>", "<b a=\"1\"/>"),
            plain.replace("<b/>", "<!-- b -->"),
            plain.replace("<b/>", "<![CDATA[b]]>"),
            plain.replace("\n  <e>", "\r\n  <e>"),
            plain.replace("x &amp; y", "x &#38; y"),
            plain.replace("x &amp; y", "x > y"),
            plain.replace("</e>", "</f>"),
            plain.replace("<s>", "<s/>").replace("</s>", ""),
            plain.replace("version=\"1.0\"", "version='1.0'"),
            plain.replace("\n</s>\n", "\n</s>\nx"),
            plain.replace("<a>x", "<a>é x"),
        ] {
            let took = fast(&other);
            // Only the last of these is plain.
            assert_eq!(took, other.contains('é'), "{other}");
        }
    }

    #[test]
    fn the_stop_search_finds_what_a_byte_loop_finds() {
        let mut rng = Rng(0x005E_ED0F_5709);
        // The stops, their neighbours, and bytes that differ from them by
        // the high bit alone.
        let alphabet = b"<>&a \n=;%'\xc3\xa9\x80\xbc\xbe\xa6\xff";
        for round in 0..2000 {
            // Runs within a block, and across several.
            let len = rng.below(if round % 2 == 0 { 40 } else { 300 });
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.below(8) {
                    0 => alphabet[rng.below(alphabet.len())],
                    _ => alphabet[3 + rng.below(alphabet.len() - 3)],
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let source: Source = Arc::new(text.clone());
            let fast = Fast::over(&source);
            let expected = |at: usize| {
                text.as_bytes()[at..]
                    .iter()
                    .position(|b| b"<>&".contains(b))
                    .map_or(text.len(), |i| at + i)
            };
            // Forward, as the scanner goes, and in any order (the block
            // looked at last is kept).
            for at in 0..=text.len() {
                assert_eq!(fast.next_stop(at), expected(at), "{text:?} from {at}");
            }
            for _ in 0..20 {
                let at = rng.below(text.len() + 1);
                assert_eq!(fast.next_stop(at), expected(at), "{text:?} from {at}");
            }
        }
    }

    #[test]
    fn each_byte_of_a_block_has_its_own_stop_bit() {
        let mut rng = Rng(0x0B10_C4B1_7500);
        let alphabet = b"<>&\x3b\x3d\x3f\x25\x27\xbc\xbe\xa6\x00\x7f\x80\xff a";
        for _ in 0..5000 {
            let mut block = [0u8; 64];
            for b in &mut block {
                *b = alphabet[rng.below(alphabet.len())];
            }
            let by_bytes = block.iter().enumerate().fold(0u64, |bits, (i, b)| {
                bits | u64::from(b"<>&".contains(b)) << i
            });
            assert_eq!(stop_bits(&block), by_bytes, "{block:?}");
            assert_eq!(stop_bits_by_words(&block), by_bytes, "{block:?}");
        }
    }

    #[test]
    fn the_byte_scan_finds_what_a_byte_loop_finds() {
        let mut rng = Rng(0x5CA1_AB1E_0001);
        // Controls allowed and not, their neighbours, 0xEF and bytes that
        // differ from those by the high bit alone.
        let alphabet = b"\x00\x01\x08\x09\x0a\x0b\x0c\x0d\x0e\x1f\x20\x7f\x80\x89\x8a\x8d\x9f\xa0\xef\x6f\xbf\xbe\xff a<";
        for round in 0..5000 {
            let len = rng.below(if round % 2 == 0 { 40 } else { 300 });
            let mut bytes: Vec<u8> = (0..len).map(|_| b'a').collect();
            // Mostly plain, a few odd bytes anywhere (also in the tail
            // that is not a whole step).
            for _ in 0..rng.below(4) {
                if len > 0 {
                    bytes[rng.below(len)] = alphabet[rng.below(alphabet.len())];
                }
            }
            let expected = Scan {
                suspect: bytes.iter().any(|&b| is_suspect(b)),
                carriage_return: bytes.contains(&b'\r'),
            };
            assert_eq!(scan_bytes(&bytes), expected, "{bytes:?}");
            assert_eq!(scan_bytes_by_blocks(&bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn a_word_matches_its_name_and_nothing_else() {
        assert_eq!(Word::of("").len, 0);
        assert_eq!(Word::of("a_name_of_17_byte").len, 0);
        assert_eq!(Word::of("ns:tag").len, 0);
        assert_eq!(Word::of("é").len, 0);
        assert_eq!(Word::of("1a").len, 0);
        let mut rng = Rng(0x0000_0A0B_0C0D);
        let names = [
            "a",
            "job",
            "job_pid",
            "x-y.z",
            "start_timeout",
            "sixteen_bytes_ab",
        ];
        for _ in 0..5000 {
            let name = rng.pick(&names);
            let word = Word::of(name);
            assert_eq!(word.len, name.len());
            // A window like the name, or it with one byte changed.
            let mut text = String::new();
            for _ in 0..rng.below(3) {
                text.push_str(rng.pick(&["<", "x", "job", "\n  "]));
            }
            let at = text.len();
            let mut candidate = rng.pick(&names).as_bytes().to_vec();
            if rng.below(3) == 0 {
                candidate = name.as_bytes().to_vec();
                let i = rng.below(candidate.len());
                candidate[i] = rng.pick(&["a", "_", "\u{0}", "b"]).as_bytes()[0];
            }
            text.push_str(std::str::from_utf8(&candidate).unwrap_or("?"));
            for _ in 0..rng.below(30) {
                text.push_str(rng.pick(&[">", "/>", "a", "_pid", "\u{e9}"]));
            }
            let bytes = text.as_bytes();
            let expected = at + 16 <= bytes.len() && bytes[at..].starts_with(name.as_bytes());
            assert_eq!(word.at(bytes, at), expected, "{name} in {text:?} at {at}");
            assert!(!Word::NONE.at(bytes, at));
        }
    }

    /// A small deterministic generator (xorshift), so failures replay.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Raw text pieces as other tools write them: references of every
    /// kind, line ends of every kind, non-ASCII.
    const RAW_TEXT: &[&str] = &[
        "plain",
        " ",
        "\n    ",
        "\r\n",
        "\t",
        "&amp;",
        "&lt;",
        "&gt;",
        "&quot;",
        "&apos;",
        "&#233;",
        "&#x1D11E;",
        "é",
        "✓",
        "'",
        "\"",
        "a]]b",
        "x > y",
    ];
    const NAMES: &[&str] = &["machine", "name", "job", "x", "ns:tag", "resource", "a-b.c"];
    const ATTRIBUTES: &[&str] = &[
        "",
        " a=\"1\"",
        " b='&amp;&lt;'",
        " c=\"&#10;\" d='x'",
        " e=\"\"",
    ];

    /// What random elements are made of.
    struct Kinds {
        names: &'static [&'static str],
        attributes: &'static [&'static str],
        texts: &'static [&'static str],
        /// CDATA, comments and processing instructions too.
        markup: bool,
    }

    /// Everything a reader must take.
    const ANY: Kinds = Kinds {
        names: NAMES,
        attributes: ATTRIBUTES,
        texts: RAW_TEXT,
        markup: true,
    };

    /// The plain kind the fast path takes: no attributes, markup, `>` in
    /// text or carriage return.
    const PLAIN: Kinds = Kinds {
        names: &["machine", "name", "job", "x", "a-b.c", "_1"],
        attributes: &[""],
        texts: &[
            "plain", " ", "\n    ", "\t", "&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "é", "'",
            "\"",
        ],
        markup: false,
    };

    fn random_element(rng: &mut Rng, kinds: &Kinds, depth: usize, out: &mut String) {
        let name = rng.pick(kinds.names);
        out.push('<');
        out.push_str(name);
        out.push_str(rng.pick(kinds.attributes));
        let children = if depth == 0 { 0 } else { rng.below(5) };
        if children == 0 && rng.below(2) == 0 {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for _ in 0..children {
            match (kinds.markup, rng.below(if kinds.markup { 6 } else { 3 })) {
                (true, 0 | 1) | (false, 0) => random_element(rng, kinds, depth - 1, out),
                (true, 2) | (false, _) => out.push_str(rng.pick(kinds.texts)),
                (true, 3) => out.push_str("<![CDATA[<raw & ]] stuff>]]>"),
                (true, 4) => out.push_str("<!-- a comment - with dashes -->"),
                (true, _) => out.push_str("<?pi data?>"),
            }
        }
        out.push_str("</");
        out.push_str(name);
        out.push('>');
    }

    /// Skims `<m>`, knows `names`, and records what it is told.
    struct Recorder {
        names: &'static [&'static str],
        slots: u32,
        told: Vec<(u32, String, String, bool)>,
        /// How many children were told by number.
        known: usize,
    }

    impl Recorder {
        fn new(names: &'static [&'static str]) -> Recorder {
            Recorder {
                names,
                slots: 0,
                told: Vec::new(),
                known: 0,
            }
        }
    }

    impl Skimmer for Recorder {
        fn skims(&mut self, name: &str) -> bool {
            name == "m"
        }
        fn reset(&mut self) {
            self.slots = 0;
            self.told.clear();
            self.known = 0;
        }
        fn begin(&mut self) -> u32 {
            self.slots += 1;
            self.slots - 1
        }
        fn child(&mut self, slot: u32, name: &str, text: Cow<'_, str>, structured: bool) {
            self.told
                .push((slot, name.to_string(), text.into_owned(), structured));
        }
        fn known(&self) -> &[&'static str] {
            self.names
        }
        fn known_child(&mut self, slot: u32, index: usize, text: Cow<'_, str>, structured: bool) {
            self.known += 1;
            let name = self.names[index];
            self.child(slot, name, text, structured);
        }
    }

    /// A document of `<m>` elements whose children mostly come in one
    /// order, as a lab's fields do: now and then one missing, one more,
    /// two swapped, one holding elements or entities, text between them,
    /// or an end tag that does not match.
    fn skimmed_document(rng: &mut Rng, names: &[&str]) -> String {
        let mut out = String::from(rng.pick(&["", "<?xml version=\"1.0\"?>\n"]));
        out.push_str("<s>");
        for _ in 0..rng.below(6) {
            out.push_str(rng.pick(&["\n  ", "\n  ", " ", ""]));
            if rng.below(8) == 0 {
                out.push_str("<e>1</e>");
                continue;
            }
            out.push_str("<m>");
            let mut children: Vec<&str> = names.to_vec();
            if rng.below(3) == 0 {
                children.retain(|_| rng.below(4) != 0);
            }
            if rng.below(4) == 0 {
                let at = rng.below(children.len() + 1);
                children.insert(at, rng.pick(&["other", "jo", "job_pidx", "a"]));
            }
            if rng.below(4) == 0 && !children.is_empty() {
                let (a, b) = (rng.below(children.len()), rng.below(children.len()));
                children.swap(a, b);
            }
            for name in children {
                out.push_str(rng.pick(&["\n    ", "\n    ", "", "t"]));
                let text = match rng.below(6) {
                    0 => String::new(),
                    1 => "a &amp; b".to_string(),
                    2 => "x<in>y</in>z".to_string(),
                    3 => "<in/>".to_string(),
                    _ => rng
                        .pick(&["1", "fedora", "console=ttyS0,115200 root=/dev/sda1"])
                        .to_string(),
                };
                let end = match rng.below(40) {
                    0 => name[..name.len() - 1].to_string(),
                    1 => format!("{name}x"),
                    2 => "other".to_string(),
                    _ => name.to_string(),
                };
                if text.is_empty() && rng.below(2) == 0 {
                    out.push_str(&format!("<{name}/>"));
                } else {
                    out.push_str(&format!("<{name}>{text}</{end}>"));
                }
            }
            out.push_str(rng.pick(&["\n  ", ""]));
            out.push_str("</m>");
        }
        out.push_str(rng.pick(&["\n</s>\n", "</s>"]));
        out
    }

    #[test]
    fn the_fast_path_tells_known_children_as_the_reader_tells_them() {
        // Known names as a lab's are, a name that is the start of another,
        // and one too long to match whole.
        const NAMES: &[&str] = &["name", "job", "job_pid", "x-y.z", "a_name_of_17_byte", "c"];
        let mut rng = Rng(0x00C0_FFEE_0042);
        let (mut fast_documents, mut known) = (0, 0);
        for round in 0..6000 {
            let mut text = skimmed_document(&mut rng, NAMES);
            // Half of them damaged here and there: the fast path must then
            // step aside, or read what the reader reads.
            if round % 2 == 1 {
                let mut bytes = text.into_bytes();
                for _ in 0..1 + rng.below(2) {
                    let at = rng.below(bytes.len());
                    bytes[at] = b"</>x &;"[rng.below(7)];
                }
                text = String::from_utf8(bytes).unwrap_or_default();
            }
            let source: Source = Arc::new(text.clone());
            let parser = Parser::new(&source);
            let (mut quick, mut general) = (Recorder::new(NAMES), Recorder::new(NAMES));
            let found = Fast::new(parser.text, &source).document(
                parser.bom,
                parser.offset,
                false,
                &mut quick,
            );
            let read = Parser::new(&source).parse(&source, Some(&mut general));
            let Some(doc) = found else {
                continue;
            };
            assert_eq!(Ok(&doc), read.as_ref(), "{text}");
            assert_eq!(quick.told, general.told, "{text}");
            assert_eq!(doc.write(), text);
            fast_documents += 1;
            known += quick.known;
        }
        assert!(
            fast_documents > 1000 && known > 5000,
            "{fast_documents} documents, {known} known children"
        );
    }

    #[test]
    fn the_fast_path_builds_plain_elements_as_the_reader_builds_them() {
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        for _ in 0..500 {
            let mut text = String::new();
            random_element(&mut rng, &PLAIN, 4, &mut text);
            let source: Source = Arc::new(text.clone());
            let fast = Fast::over(&source);
            let (built, end) = fast
                .element(0, 1)
                .unwrap_or_else(|| panic!("the fast path refused {text}"));
            assert_eq!(end, text.len(), "{text}");
            let general = Document::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(built, general.root, "{text}");
            // A lazy element of the same text builds the same tree.
            let lazy = Lazy {
                raw: Str::new(&text),
                name_len: 0,
                slot: 0,
            };
            assert_eq!(lazy.build().as_ref(), Ok(&general.root), "{text}");
        }
        // Past the depth limit the fast path steps aside for the reader.
        let deep = "<x>".repeat(MAX_DEPTH) + &"</x>".repeat(MAX_DEPTH);
        let source: Source = Arc::new(deep.clone());
        let fast = Fast::over(&source);
        assert_eq!(fast.element(0, 1), None);
    }

    #[test]
    fn random_documents_are_written_back_byte_for_byte() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..500 {
            let mut text = String::from(rng.pick(&["", "<?xml version=\"1.0\"?>\n"]));
            random_element(&mut rng, &ANY, 4, &mut text);
            text.push_str(rng.pick(&["", "\n", "\n<!-- end -->\n"]));
            let doc = Document::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(doc.write(), text);
        }
    }

    /// Every element's text, in document order.
    fn texts(element: &Element, out: &mut Vec<String>) {
        out.push(element.text().into_owned());
        for child in element.elements() {
            texts(child, out);
        }
    }

    #[test]
    fn random_values_set_anywhere_read_back_exactly() {
        const VALUE_PIECES: &[&str] = &[
            "a", "&", "<", ">", "\"", "'", "]]>", "\r", "\n", "\r\n", "\t", " ", "é", "𝄞", "&amp;",
        ];
        let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
        for _ in 0..300 {
            let mut text = String::new();
            random_element(&mut rng, &ANY, 3, &mut text);
            let mut doc = Document::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            let value: String = (0..rng.below(12)).map(|_| rng.pick(VALUE_PIECES)).collect();
            // Set the value on a leaf-like element: the root's last child
            // element if it has one, else the root.
            let target = match doc.root.elements_mut().last() {
                Some(child) if !child.has_child_elements() => child,
                _ => &mut doc.root,
            };
            if target.has_child_elements() {
                continue;
            }
            target.set_text(&value);
            let mut before = Vec::new();
            texts(&doc.root, &mut before);
            let again = Document::parse(&doc.write()).unwrap_or_else(|e| panic!("{e}: {value:?}"));
            let mut after = Vec::new();
            texts(&again.root, &mut after);
            assert_eq!(before, after, "{value:?} in {text}");
            assert!(after.contains(&value), "{value:?}");
        }
    }
}
