//! The general reader: quick-xml over the whole text, for any document
//! the fast scanner does not take (see [`super::fast`]), and the skimmer
//! both readers feed.

use std::borrow::Cow;
use std::sync::Arc;

use quick_xml::events::Event;
use quick_xml::reader::Reader;

use super::*;

/// How deep elements may nest. The state file is three levels deep; a
/// bound keeps a hostile or broken file from exhausting the stack of the
/// code that writes and drops the tree (it recurses).
pub const MAX_DEPTH: usize = 64;

pub(super) struct Parser<'a> {
    pub(super) text: &'a str,
    /// Where `text` starts in the file (after a byte-order mark).
    pub(super) offset: usize,
    pub(super) bom: bool,
}

impl<'a> Parser<'a> {
    pub(super) fn new(text: &'a str) -> Parser<'a> {
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

    pub(super) fn error_at(&self, position: u64, message: impl Into<String>) -> ParseError {
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
    pub(super) fn check_characters(&self) -> Result<bool, ParseError> {
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

    pub(super) fn parse(
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
pub(super) struct Skim<'a> {
    pub(super) start: u64,
    pub(super) name_len: u32,
    pub(super) slot: u32,
    pub(super) text: Option<Cow<'a, str>>,
    pub(super) structured: bool,
}

impl<'a> Skim<'a> {
    /// A piece of the open child's text: a span of the source while it is
    /// one piece, a string of its own when pieces join.
    pub(super) fn add(&mut self, piece: Cow<'a, str>) {
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

pub(super) fn tag_name<'t>(tag: &'t quick_xml::events::BytesStart<'_>) -> &'t str {
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

/// A skimmer that skims nothing: every element is built.
pub(super) struct SkimNothing;

impl Skimmer for SkimNothing {
    fn skims(&mut self, _name: &str) -> bool {
        false
    }

    fn reset(&mut self) {}

    fn begin(&mut self) -> u32 {
        0
    }

    fn child(&mut self, _slot: u32, _name: &str, _text: Cow<'_, str>, _structured: bool) {}
}

/// Text split by references arrives in pieces; keep one text node per run.
pub(super) fn push_merged(children: &mut Vec<Node>, node: Node) {
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

pub(super) fn resolve_reference(
    reference: &quick_xml::events::BytesRef<'_>,
) -> Result<char, String> {
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
pub(super) fn check_attributes(
    tag: &quick_xml::events::BytesStart<'_>,
) -> Result<(), (u64, String)> {
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

pub(super) fn check_declaration(decl: &quick_xml::events::BytesDecl<'_>) -> Result<(), String> {
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
