//! The fast scanner: the plain text mama and upstream write, read without
//! quick-xml; anything it does not take goes to the general reader.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;

use super::*;

/// The names a skimmer knows (see [`Skimmer::known`]), as the fast path
/// matches them, and which of them followed which in the last skimmed
/// element: an element's children come in one order, so the next is
/// nearly always the one that came next before.
pub(super) struct Vocabulary {
    /// The known names by number, and [`Word::NONE`] after them.
    pub(super) words: Vec<Word>,
    /// After the known child `i`, the number of the one that came next
    /// last time; at the end (the start of an element), of the one that
    /// came first. Each a number of `words`.
    pub(super) after: Vec<usize>,
}

/// A name to match: its bytes as a little-endian number, zeros after the
/// name, and the mask of its bytes.
#[derive(Clone, Copy)]
pub(super) struct Word {
    pub(super) pattern: u128,
    pub(super) mask: u128,
    pub(super) len: usize,
}

impl Word {
    /// A word that matches nothing: sixteen bytes 0xFF, which no UTF-8
    /// text holds.
    pub(super) const NONE: Word = Word {
        pattern: u128::MAX,
        mask: u128::MAX,
        len: 0,
    };

    /// `name` as a word, when the fast path takes it (a plain ASCII name
    /// of at most sixteen bytes); else [`Word::NONE`].
    pub(super) fn of(name: &str) -> Word {
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
    pub(super) fn at(&self, bytes: &[u8], at: usize) -> bool {
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
    pub(super) fn of(names: &[&str]) -> Vocabulary {
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
    pub(super) fn start(&self) -> usize {
        self.after.len() - 1
    }

    /// The known child likely to come after `state`: its number and word.
    #[inline]
    pub(super) fn guess(&self, state: usize) -> (usize, Word) {
        let next = self.after.get(state).copied().unwrap_or(0);
        (next, self.words.get(next).copied().unwrap_or(Word::NONE))
    }

    /// That `next` came after `state`.
    pub(super) fn saw(&mut self, state: usize, next: usize) {
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
pub(super) struct Fast<'t> {
    pub(super) text: &'t str,
    pub(super) bytes: &'t [u8],
    pub(super) source: &'t Source,
    /// The last block of 64 bytes looked at by [`Fast::next_stop`]: its
    /// number, and a bit for each of its bytes that is `<`, `>` or `&`.
    pub(super) stops: Cell<(usize, u64)>,
}

pub(super) const DECLARATIONS: [&str; 3] = [
    "<?xml version=\"1.0\"?>",
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
    "<?xml version=\"1.0\" encoding=\"utf-8\"?>",
];

/// The predefined entities, and what they stand for.
pub(super) const ENTITIES: [(&[u8], char); 5] = [
    (b"&amp;", '&'),
    (b"&lt;", '<'),
    (b"&gt;", '>'),
    (b"&quot;", '"'),
    (b"&apos;", '\''),
];

/// A bit for each byte of `block` (bit `i` for `block[i]`) that is `<`, `>`
/// or `&`: sixteen bytes at once.
#[cfg(target_arch = "x86_64")]
pub(super) fn stop_bits(block: &[u8; 64]) -> u64 {
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
pub(super) fn stop_bits(block: &[u8; 64]) -> u64 {
    stop_bits_by_words(block)
}

/// [`stop_bits`] in plain arithmetic, eight bytes a word: the high bit of
/// each byte that equals one of the stops, exactly (no carry between
/// bytes), gathered into eight bits by a multiplication.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(super) fn stop_bits_by_words(block: &[u8; 64]) -> u64 {
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

pub(super) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n')
}

pub(super) fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

/// The bytes of a name after its first, as a table: one load a byte where
/// the tests of a range or two cost a mispredicted branch or two.
pub(super) const NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.';
        b += 1;
    }
    table
};

pub(super) fn is_name_byte(b: u8) -> bool {
    NAME_BYTES[b as usize]
}

/// The bytes that end or interrupt a run of text: `<`, `>`, `&`.
pub(super) const TEXT_STOPS: [bool; 256] = {
    let mut table = [false; 256];
    table[b'<' as usize] = true;
    table[b'>' as usize] = true;
    table[b'&' as usize] = true;
    table
};

impl<'t> Fast<'t> {
    /// The scanner over `text`, which is `source` or its end.
    pub(super) fn new(text: &'t str, source: &'t Source) -> Fast<'t> {
        Fast {
            text,
            bytes: text.as_bytes(),
            source,
            stops: Cell::new((usize::MAX, 0)),
        }
    }

    /// The scanner over the whole of `source`.
    pub(super) fn over(source: &'t Source) -> Fast<'t> {
        Fast::new(source, source)
    }

    pub(super) fn span(&self, from: usize, to: usize) -> Str {
        Str::within(self.source, &self.text[from..to])
    }

    pub(super) fn space_end(&self, mut at: usize) -> usize {
        while at < self.bytes.len() && is_space(self.bytes[at]) {
            at += 1;
        }
        at
    }

    /// A name at `at`: where it ends.
    pub(super) fn name_end(&self, at: usize) -> Option<usize> {
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
    pub(super) fn start_tag(&self, at: usize) -> Option<(usize, usize, bool)> {
        self.tag_end(self.name_end(at + 1)?)
    }

    /// The end of a start tag whose name ends at `name_end`: as
    /// [`Fast::start_tag`] tells it.
    #[inline]
    pub(super) fn tag_end(&self, name_end: usize) -> Option<(usize, usize, bool)> {
        match self.bytes.get(name_end..name_end + 2)? {
            [b'>', _] => Some((name_end, name_end + 1, false)),
            b"/>" => Some((name_end, name_end + 2, true)),
            _ => None,
        }
    }

    /// An end tag at `at` closing the element named `bytes[from..to]`:
    /// where it ends.
    pub(super) fn end_tag(&self, at: usize, from: usize, to: usize) -> Option<usize> {
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
    pub(super) fn text_run(&self, at: usize) -> Option<(usize, bool)> {
        let stop = self.next_stop(at);
        if self.bytes.get(stop) == Some(&b'<') {
            return Some((stop, false));
        }
        self.text_run_from(stop)
    }

    /// [`Fast::text_run`] from a `>` or `&` (or the end).
    #[inline(never)]
    pub(super) fn text_run_from(&self, mut at: usize) -> Option<(usize, bool)> {
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
    pub(super) fn next_stop(&self, at: usize) -> usize {
        let (cached, bits) = self.stops.get();
        let ahead = bits.checked_shr((at % 64) as u32).unwrap_or(0);
        if at / 64 == cached && ahead != 0 {
            return at + ahead.trailing_zeros() as usize;
        }
        self.next_stop_in_blocks(at)
    }

    /// [`Fast::next_stop`] past the block looked at last.
    #[inline(never)]
    pub(super) fn next_stop_in_blocks(&self, mut at: usize) -> usize {
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
    pub(super) fn stop_bits(&self, block: usize) -> u64 {
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
    pub(super) fn value(&self, from: usize, to: usize, entities: bool) -> Cow<'t, str> {
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
    pub(super) fn skip_content(
        &self,
        mut at: usize,
        from: usize,
        to: usize,
        depth: usize,
    ) -> Option<usize> {
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
    pub(super) fn element(&self, at: usize, depth: usize) -> Option<(Element, usize)> {
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
    pub(super) fn skimmed(
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
    pub(super) fn field(
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
    pub(super) fn document(
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

pub(super) fn whitespace_span(raw: Str) -> Node {
    Node::Text { raw, value: None }
}
