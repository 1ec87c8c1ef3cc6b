//! The roll-forward copy of an in-place write (compat mode, where PHP mama
//! shares the state file and mama writes it in place, as PHP mama does).
//!
//! Before it overwrites the state file, a writer puts into the lab's lock
//! file `S.lock` (which it holds) both the text it will write and the text
//! the state file holds, synced: a line `mama roll-forward 2 NEWLEN
//! NEWHASH OLDLEN OLDHASH` (lengths in bytes, hashes the 64-bit FNV-1a in
//! 16 lower-case hex digits), then the new text, then the old. A reader
//! who finds a whole copy judges the state file against it:
//! - it holds the new text: the write finished (the copy is stale);
//! - it holds the old text: the write never began, or was undone;
//! - every byte it holds is the new text's or the old text's at that
//!   place, its length between theirs: a write torn by a kill (or by a
//!   crash, page by page): the new text is rolled forward, whether or not
//!   the mix happens to parse;
//! - anything else: someone wrote since (PHP mama, a person): the copy is
//!   stale.
//!
//! A copy of the first version (`mama roll-forward 1 LEN HASH`, the new
//! text alone) says nothing of the old text: it is rolled forward only
//! when the state file does not parse.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// The longest copy read back: two state files and the header.
const MAX_COPY: u64 = 2 * crate::format::doc::MAX_DOCUMENT + 4096;

const HEADER_1: &str = "mama roll-forward 1";
const HEADER_2: &str = "mama roll-forward 2";

/// The 64-bit FNV-1a hash of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A whole roll-forward copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The text the writer was putting into the state file.
    pub new: Vec<u8>,
    /// What the state file held before (not in a first-version copy).
    pub old: Option<Vec<u8>>,
}

/// What the state file is, judged against a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The new text: the write finished.
    Finished,
    /// The old text: the write never began, or was undone.
    NotBegun,
    /// A mix of the two: a write torn by a kill or a crash.
    Torn,
    /// Neither: written since by someone else.
    Other,
}

impl Copy {
    /// The copy's text as it goes into the lock file.
    pub fn encode(new: &[u8], old: &[u8]) -> Vec<u8> {
        let mut copy = format!(
            "{HEADER_2} {} {:016x} {} {:016x}\n",
            new.len(),
            fnv1a_64(new),
            old.len(),
            fnv1a_64(old)
        )
        .into_bytes();
        copy.reserve(new.len() + old.len());
        copy.extend_from_slice(new);
        copy.extend_from_slice(old);
        copy
    }

    /// The whole copy in `file`; `None` when it is empty, cut short or
    /// damaged.
    pub fn read(mut file: &File) -> Option<Copy> {
        let len = file.metadata().ok()?.len();
        if len == 0 || len > MAX_COPY {
            return None;
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).ok()?);
        file.seek(SeekFrom::Start(0)).ok()?;
        file.take(MAX_COPY).read_to_end(&mut bytes).ok()?;
        Copy::decode(&bytes)
    }

    fn decode(bytes: &[u8]) -> Option<Copy> {
        let newline = bytes.iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&bytes[..newline]).ok()?;
        let body = &bytes[newline + 1..];
        let part = |len: &str, hash: &str, text: &[u8]| {
            (len.parse::<usize>().ok()? == text.len()
                && u64::from_str_radix(hash, 16).ok()? == fnv1a_64(text))
            .then_some(())
        };
        if let Some(rest) = header.strip_prefix(HEADER_2) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let [new_len, new_hash, old_len, old_hash] = fields[..] else {
                return None;
            };
            let split = new_len.parse::<usize>().ok()?;
            let (new, old) = (body.get(..split)?, body.get(split..)?);
            part(new_len, new_hash, new)?;
            part(old_len, old_hash, old)?;
            return Some(Copy {
                new: new.to_vec(),
                old: Some(old.to_vec()),
            });
        }
        let (len, hash) = header.strip_prefix(HEADER_1)?.trim().split_once(' ')?;
        part(len, hash, body)?;
        Some(Copy {
            new: body.to_vec(),
            old: None,
        })
    }

    /// What `state`, the state file's bytes, is against this copy.
    pub fn judge(&self, state: &[u8]) -> Verdict {
        let Some(old) = &self.old else {
            return match state == self.new.as_slice() {
                true => Verdict::Finished,
                false => Verdict::Other,
            };
        };
        let new = &self.new;
        if state == new.as_slice() {
            return Verdict::Finished;
        }
        if state == old.as_slice() {
            return Verdict::NotBegun;
        }
        let (short, long) = (new.len().min(old.len()), new.len().max(old.len()));
        let torn = (short..=long).contains(&state.len())
            && state
                .iter()
                .enumerate()
                .all(|(i, b)| new.get(i) == Some(b) || old.get(i) == Some(b));
        match torn {
            true => Verdict::Torn,
            false => Verdict::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(new: &str, old: &str) -> Copy {
        Copy::decode(&Copy::encode(new.as_bytes(), old.as_bytes())).expect("a whole copy")
    }

    #[test]
    fn a_copy_reads_back_whole_and_not_when_damaged() {
        let text = Copy::encode(b"<new/>", b"<old text/>");
        let read = Copy::decode(&text).expect("whole");
        assert_eq!(read.new, b"<new/>");
        assert_eq!(read.old.as_deref(), Some(&b"<old text/>"[..]));
        for cut in 0..text.len() {
            assert!(Copy::decode(&text[..cut]).is_none(), "cut at {cut}");
        }
        let mut flipped = text.clone();
        let at = flipped.len() - 3;
        flipped[at] ^= 1;
        assert!(Copy::decode(&flipped).is_none());
        // The first version: the new text alone.
        let v1 = format!("{HEADER_1} 4 {:016x}\nnew!", fnv1a_64(b"new!"));
        let read = Copy::decode(v1.as_bytes()).expect("whole");
        assert_eq!((read.new.as_slice(), read.old), (&b"new!"[..], None));
    }

    #[test]
    fn every_cut_of_a_write_in_place_is_torn_and_a_later_write_is_not() {
        for (new, old) in [
            ("<a>new value, longer than before</a>", "<a>old value</a>"),
            ("<a>short</a>", "<a>old value, longer than the new one</a>"),
            ("<a>X, same length, X</a>", "<a>Y, same length, Y</a>"),
        ] {
            let c = copy(new, old);
            assert_eq!(c.judge(new.as_bytes()), Verdict::Finished);
            assert_eq!(c.judge(old.as_bytes()), Verdict::NotBegun);
            // pwrite of the new text cut after `cut` bytes, then the cut
            // to length not made.
            let mut torn = 0;
            for cut in 1..new.len() {
                let mut state = old.as_bytes().to_vec();
                if state.len() < cut {
                    state.resize(cut, 0);
                }
                state[..cut].copy_from_slice(&new.as_bytes()[..cut]);
                let verdict = c.judge(&state);
                // Bytes the two texts share make an early cut read as
                // not begun, and a late one as finished: both true.
                assert!(
                    matches!(
                        verdict,
                        Verdict::Torn | Verdict::NotBegun | Verdict::Finished
                    ),
                    "{new:?} over {old:?} cut at {cut}: {verdict:?}"
                );
                torn += usize::from(verdict == Verdict::Torn);
            }
            assert!(torn > 0, "{new:?} over {old:?}: no cut read as torn");
            // Whole, but not yet cut to length.
            if old.len() > new.len() {
                let mut state = old.as_bytes().to_vec();
                state[..new.len()].copy_from_slice(new.as_bytes());
                assert_eq!(c.judge(&state), Verdict::Torn);
            }
            // Another writer's text (PHP mama's, after the fact).
            assert_eq!(c.judge(b"<a>php mama wrote this</a>"), Verdict::Other);
        }
    }

    #[test]
    fn pages_written_out_of_order_are_torn_too() {
        let new = "N".repeat(3 * 4096);
        let old = "O".repeat(3 * 4096);
        let c = copy(&new, &old);
        let mixed = format!("{}{}{}", &old[..4096], &new[4096..8192], &old[8192..]);
        assert_eq!(c.judge(mixed.as_bytes()), Verdict::Torn);
        let other = format!("{}P{}", &old[..4096], &new[4097..]);
        assert_eq!(c.judge(other.as_bytes()), Verdict::Other);
    }

    #[test]
    fn a_first_version_copy_judges_only_the_finished_write() {
        let c = Copy {
            new: b"new".to_vec(),
            old: None,
        };
        assert_eq!(c.judge(b"new"), Verdict::Finished);
        assert_eq!(c.judge(b"nXw"), Verdict::Other);
    }
}
