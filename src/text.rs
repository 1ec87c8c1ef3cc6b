//! The ground floor for text: what every layer shows and checks alike —
//! text made safe for a terminal, durations and times as people read and
//! write them, the characters XML can hold. It imports nothing of mama's.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{Local, TimeZone};

/// Whether a terminal could act on `c`: C0 controls (line breaks and tabs
/// included), DEL and C1 controls, and the bidirectional controls and line
/// separators that reorder or break what is shown (U+2028/9, U+202A-E,
/// U+2066-9).
pub fn is_terminal_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` made safe for a terminal: every control character, which could
/// move the cursor, start an escape sequence or fake a line, is shown as an
/// escape instead: `\n`, `\t`, `\r`, `\x1b` (other C0 controls and DEL),
/// `\u{9b}` (C1, bidirectional and line-separator controls). Everything
/// else is kept.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_terminal_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x80 && is_terminal_control(c) => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if is_terminal_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text`, line by line, made safe for a terminal (see [`printable`]): for
/// messages whose line breaks are their own.
pub fn printable_lines(text: &str) -> String {
    text.split('\n')
        .map(printable)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The longest duration mama takes anywhere (options, environment
/// variables): 100 years, in seconds. Longer ones are refused, so no
/// deadline or age computed from one can overflow.
pub const MAX_SECS: u64 = 3_155_760_000;

/// [`MAX_SECS`] as people read it, for messages.
pub const MAX_SECS_TEXT: &str = "100 years (3155760000 s)";

/// Seconds as a duration: a non-negative number, fractions allowed, at most
/// [`MAX_SECS`].
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if secs.is_nan() || secs < 0.0 {
        return Err(format!("'{text}' is not a non-negative number of seconds"));
    }
    if secs > MAX_SECS as f64 {
        return Err(format!("'{text}' seconds is longer than {MAX_SECS_TEXT}"));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("'{text}' is not a non-negative number of seconds"))
}

/// Whether XML 1.0 can hold `c` (in text, escaped or not).
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// A time as people read it, in the local time zone.
pub fn local_time(timestamp: i64) -> String {
    match Local.timestamp_opt(timestamp, 0).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => format!("@{timestamp}"),
    }
}

/// A Unix time as local time, short, for a table: `17:30` on the day of
/// `now`, else `2026-11-24 17:30`.
pub fn short_time(timestamp: i64, now: i64) -> String {
    let at = |t: i64| Local.timestamp_opt(t, 0).single();
    match (at(timestamp), at(now)) {
        (Some(t), Some(n)) if t.date_naive() == n.date_naive() => t.format("%H:%M").to_string(),
        (Some(t), _) => t.format("%Y-%m-%d %H:%M").to_string(),
        (None, _) => format!("@{timestamp}"),
    }
}

/// A Unix time as local time, with its age: `2026-11-23 09:14:02 (3m 12s ago)`.
pub fn time_and_age(timestamp: i64, now: i64) -> String {
    let when = local_time(timestamp);
    // Saturating: a damaged timestamp must never panic.
    let age = now.saturating_sub(timestamp);
    if age >= 0 {
        format!(
            "{when} ({} ago)",
            seconds(Duration::from_secs(age.unsigned_abs()))
        )
    } else {
        format!("{when} (in the future)")
    }
}

/// A Unix time as local time, with how far it is from `now`: `2026-11-23
/// 09:14:02 (in 2h 5m)`, or, once past, `(3m 12s ago)`.
pub fn time_and_when(timestamp: i64, now: i64) -> String {
    if timestamp >= now {
        let left = timestamp.saturating_sub(now).unsigned_abs();
        format!(
            "{} (in {})",
            local_time(timestamp),
            seconds(Duration::from_secs(left))
        )
    } else {
        time_and_age(timestamp, now)
    }
}

/// A duration for people: `45s`, `3m 12s`, `2h 5m`, `3d 4h`.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..10 if d.subsec_millis() != 0 => format!("{:.1}s", d.as_secs_f64()),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
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

    #[test]
    fn controls_are_shown_as_escapes() {
        assert_eq!(printable("plain é ✓"), "plain é ✓");
        assert_eq!(
            printable("a\u{1b}[2J\u{7}\u{7f}\u{9b}31m\u{85}\r\n\tz"),
            r"a\x1b[2J\x07\x7f\u{9b}31m\u{85}\r\n\tz"
        );
        assert_eq!(printable_lines("a\u{9b}\n  b\tc"), "a\\u{9b}\n  b\\tc");
        // Text that would show reversed or on a new line.
        assert_eq!(
            printable("ok\u{202e}kcab\u{2066}\u{2028}"),
            r"ok\u{202e}kcab\u{2066}\u{2028}"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(seconds(Duration::from_secs(45)), "45s");
        assert_eq!(seconds(Duration::from_millis(300)), "0.3s");
        assert_eq!(seconds(Duration::from_millis(2000)), "2s");
        assert_eq!(seconds(Duration::from_secs(192)), "3m 12s");
        assert_eq!(seconds(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(seconds(Duration::from_secs(273600)), "3d 4h");
    }
}
