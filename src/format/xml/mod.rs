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

mod chars;
mod fast;
mod read;

pub use chars::*;
pub use fast::*;
pub use read::*;

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
