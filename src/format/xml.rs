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
        let fast = Fast::over(&source);
        match fast.element(0, 1) {
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
        self.children
            .iter()
            .position(|n| n.element_name() == Some(name))
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
        parser.check_characters()?;
        let fast = Fast {
            text: parser.text,
            bytes: parser.text.as_bytes(),
            source: &source,
        };
        if let Some(doc) = fast.document(parser.bom, parser.offset, skimmer) {
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
        out.parts
    }
}

/// [`Document::pieces`] being gathered: the run of source text not yet
/// pushed.
struct Pieces<'d> {
    source: Option<&'d Source>,
    parts: Vec<Cow<'d, str>>,
    run: Option<(usize, usize)>,
}

impl<'d> Pieces<'d> {
    fn node(&mut self, node: &'d Node) {
        if let Some(source) = self.source
            && let Some((start, end)) = node.span_in(source)
            && source.get(start..end).is_some()
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
        if let (Some(source), Some((from, to))) = (self.source, self.run.take())
            && let Some(text) = source.get(from..to)
        {
            self.parts.push(Cow::Borrowed(text));
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
    fn check_characters(&self) -> Result<(), ParseError> {
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
        if let Some(at) = first_non_xml_char(self.text)
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
        Ok(())
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
    /// The scanner over the whole of `source`.
    fn over(source: &'t Source) -> Fast<'t> {
        Fast {
            text: source,
            bytes: source.as_bytes(),
            source,
        }
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
        let name_end = self.name_end(at + 1)?;
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
    fn text_run(&self, mut at: usize) -> Option<(usize, bool)> {
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
    /// of the text if none): eight bytes a step, where most of a lab's
    /// bytes are looked at.
    fn next_stop(&self, mut at: usize) -> usize {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        // The high bit of each byte of `x` that is zero, and perhaps of
        // bytes after one that is: the lowest bit set is always a zero.
        let zeros = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        let bytes = self.bytes;
        while let Some(chunk) = bytes.get(at..at + 8) {
            let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
                break;
            };
            let word = u64::from_le_bytes(chunk);
            let found = zeros(word ^ (ONES * u64::from(b'<')))
                | zeros(word ^ (ONES * u64::from(b'>')))
                | zeros(word ^ (ONES * u64::from(b'&')));
            if found != 0 {
                return at + (found.trailing_zeros() / 8) as usize;
            }
            at += 8;
        }
        while at < bytes.len() && !TEXT_STOPS[bytes[at] as usize] {
            at += 1;
        }
        at
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
    ) -> Option<usize> {
        loop {
            at = self.text_run(at)?.0;
            if self.bytes.get(at + 1) == Some(&b'/') {
                return self.end_tag(at, from, to);
            }
            let (name_end, end, empty) = self.start_tag(at)?;
            let (name_from, name_to) = (at + 1, name_end);
            let name = &self.text[name_from..name_to];
            if empty {
                skimmer.child(slot, name, Cow::Borrowed(""), false);
                at = end;
                continue;
            }
            // A field: its own text, and whether it holds elements.
            let mut text: Option<Cow<'t, str>> = None;
            let mut structured = false;
            at = end;
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
                    at = self.end_tag(at, name_from, name_to)?;
                    break;
                }
                let (inner_end, end, empty) = self.start_tag(at)?;
                structured = true;
                at = if empty {
                    end
                } else {
                    self.skip_content(end, at + 1, inner_end, 4)?
                };
            }
            skimmer.child(slot, name, text.unwrap_or(Cow::Borrowed("")), structured);
        }
    }

    fn document(
        &self,
        bom: bool,
        offset: usize,
        skimmer: &mut (impl Skimmer + ?Sized),
    ) -> Option<Document> {
        let bytes = self.bytes;
        if bytes.contains(&b'\r') {
            return None;
        }
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
        // About two nodes a machine of some 400 bytes: reserved once, not
        // grown by doubling (each doubling copies and touches new memory).
        let mut children = Vec::with_capacity(bytes.len() / 200 + 4);
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
                at = self.skimmed(end, (start + 1, name_end), slot, skimmer)?;
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

/// Where the first character that XML 1.0 does not allow stands in
/// `text`: a C0 control other than tab, newline and carriage return, or
/// U+FFFE or U+FFFF (a `str` holds no surrogates). The same answer as
/// [`is_xml_char`] on every character, found by looking at bytes: a state
/// file is read whole on every command.
fn first_non_xml_char(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    // A quick look for any byte that could start one, 64 bytes at a time
    // without a branch inside, so the compiler looks at many at once.
    let suspect = |b: u8| (b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r') | (b == 0xEF);
    if !any_byte(bytes, suspect) {
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
            let fast = Fast {
                text: parser.text,
                bytes: parser.text.as_bytes(),
                source: &source,
            };
            let found = fast.document(parser.bom, parser.offset, &mut SkimM(0));
            let general = Document::parse_lazy(Arc::clone(&source), &mut SkimM(0));
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
        let alphabet = b"<>&a \n\xc3\xa9\x80\xff";
        for _ in 0..2000 {
            let len = rng.below(40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let source: Source = Arc::new(text.clone());
            let fast = Fast::over(&source);
            for at in 0..=text.len() {
                let expected = text.as_bytes()[at..]
                    .iter()
                    .position(|b| b"<>&".contains(b))
                    .map_or(text.len(), |i| at + i);
                assert_eq!(fast.next_stop(at), expected, "{text:?} from {at}");
            }
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
