//! The ground floor for text: rules about characters that every layer
//! shares. It imports nothing of mama's.

/// Whether a terminal could act on `c`: C0 controls (line breaks and tabs
/// included), DEL and C1 controls, and the bidirectional controls and line
/// separators that reorder or break what is shown (U+2028/9, U+202A-E,
/// U+2066-9).
pub fn is_terminal_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_that_move_or_reorder_text_are_terminal_controls() {
        for c in [
            '\n', '\t', '\x1b', '\x7f', '\u{9b}', '\u{202e}', '\u{2066}', '\u{2028}',
        ] {
            assert!(is_terminal_control(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '\u{200b}', '\u{2070}'] {
            assert!(!is_terminal_control(c), "{c:?}");
        }
    }
}
