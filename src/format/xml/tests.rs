//! The XML tree's tests: its readers against each other and against
//! byte-by-byte references, and texts written back as read.

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
    let doc = Document::parse("<s><a>x &amp; y&#10;&#x41;<![CDATA[<&>]]></a><b>l1\r\nl2</b></s>")
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
        // The check that proves a text before it is written refuses it
        // alike, fast reader or not.
        assert_eq!(Document::check(text), Err(err), "{text:?}");
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
        "plain", " ", "\n    ", "\t", "&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "é", "'", "\"",
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
        let found =
            Fast::new(parser.text, &source).document(parser.bom, parser.offset, false, &mut quick);
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
        assert_eq!(Document::check(&text), Ok(()), "{text}");
        // Cut short, it is refused by both.
        let cut = &text[..text.floor_char_boundary(text.len() * 2 / 3)];
        assert_eq!(
            Document::check(cut).err(),
            Document::parse(cut).err(),
            "{cut}"
        );
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

#[test]
fn check_refuses_whatever_the_general_reader_refuses() {
    // Plain documents (the fast path's), most damaged by an edit or two: the
    // fast check must never take a text the general reader refuses.
    const EDITS: &[&str] = &[
        "<", ">", "/", "&", ";", "]", "]]>", "!", "?", "-", "x", " ", "\n", "\t", "\"", "'", "=",
        ":", "#", "1", "é", "&#1;", "&amp", "<!--", "-->", "<?", "?>", "</", "/>", "\u{0}",
        "\u{fffe}", "\u{feff}", "&#x0;", "<r>", "</r>",
    ];
    let mut rng = Rng(0x5151_7373_1234_9876);
    let (mut taken, mut refused) = (0, 0);
    for _ in 0..60_000 {
        let mut text = String::from(rng.pick(&["", "<?xml version=\"1.0\"?>\n", "\u{feff}"]));
        random_element(&mut rng, &PLAIN, 4, &mut text);
        text.push_str(rng.pick(&["", "\n", " \n\t"]));
        let edits = rng.below(3);
        for _ in 0..edits {
            let at = text.floor_char_boundary(rng.below(text.len() + 1));
            let kind = rng.below(3);
            let end = text.ceil_char_boundary(at + 1 + rng.below(3 + usize::from(kind == 2)));
            match kind {
                0 => text.insert_str(at, rng.pick(EDITS)),
                1 => text.replace_range(at..end, rng.pick(EDITS)),
                _ => text.replace_range(at..end, ""),
            }
        }
        let checked = Document::check(&text);
        let parsed = Document::parse(&text).map(drop);
        assert_eq!(checked, parsed, "{text:?}");
        // Taken by the fast path itself, not only by its fallback.
        let source: Source = Arc::new(text.clone());
        let parser = Parser::new(&source);
        let fast = Fast::new(parser.text, &source).document(
            parser.bom,
            parser.offset,
            text.contains('\r'),
            &mut SkimNothing,
        );
        match (fast, checked) {
            (Some(_), _) if edits > 0 => taken += 1,
            (None, Err(_)) => refused += 1,
            _ => {}
        }
    }
    assert!(
        taken > 400 && refused > 20_000,
        "{taken} edited and taken by the fast path, {refused} refused"
    );
}
