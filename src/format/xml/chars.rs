//! XML 1.0's character rules, checked over a whole text a block at a time,
//! and text escaped so that it reads back.

use std::borrow::Cow;

/// What one look at every byte of a text finds (see [`scan_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Scan {
    /// A byte that may start a character XML 1.0 does not allow: a C0
    /// control other than tab, line feed and carriage return, or 0xEF
    /// (which starts U+FFFE and U+FFFF, and many an allowed character).
    pub(super) suspect: bool,
    /// A carriage return.
    pub(super) carriage_return: bool,
}

/// A suspect byte (see [`Scan::suspect`]).
pub(super) fn is_suspect(b: u8) -> bool {
    (b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r') | (b == 0xEF)
}

/// One look at every byte of `bytes`, sixteen at once: a state file is
/// read whole on every command.
#[cfg(target_arch = "x86_64")]
pub(super) fn scan_bytes(bytes: &[u8]) -> Scan {
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
pub(super) fn scan_bytes(bytes: &[u8]) -> Scan {
    scan_bytes_by_blocks(bytes)
}

/// [`scan_bytes`] in plain code.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(super) fn scan_bytes_by_blocks(bytes: &[u8]) -> Scan {
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
pub(super) fn first_non_xml_char(text: &str) -> Option<usize> {
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

/// `value` escaped for an attribute value in either quotes, so that it
/// reads back exactly: `&`, `<` and both quotes as references, and tab,
/// line feed and carriage return as character references (XML reads them
/// raw as spaces).
pub fn escape_attribute(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}
