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
    parse_duration(text)
}

/// A duration as every option and variable of mama takes it: seconds
/// (`90`, `1.5`), or whole numbers with units (`90s`, `15m`, `2h`, `3d`,
/// `1w`, `1h30m`), at most [`MAX_SECS`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("'{text}' is not a duration (like 90, 1.5, 90s, 15m, 2h, 3d or 1h30m)");
    let trimmed = text.trim();
    let too_long = || format!("'{text}' is longer than {MAX_SECS_TEXT}");
    // Seconds, as a plain decimal number (an exponent too): no sign, no
    // `inf` or `nan`.
    let plain = trimmed.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && trimmed.parse::<f64>().is_ok();
    if plain {
        let secs: f64 = trimmed.parse().map_err(|_| bad())?;
        if secs > MAX_SECS as f64 {
            return Err(too_long());
        }
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in trimmed.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return Err(bad()),
        };
        if number.is_empty() {
            return Err(bad());
        }
        // Past u64 is past the bound too.
        let n: u64 = number.parse().unwrap_or(u64::MAX);
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .unwrap_or(u64::MAX);
        number.clear();
    }
    if !number.is_empty() || trimmed.is_empty() {
        return Err(bad());
    }
    if total > MAX_SECS {
        return Err(too_long());
    }
    Ok(Duration::from_secs(total))
}

/// Whether XML 1.0 can hold `c` (in text, escaped or not).
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// A point in time as `stats --since` and `--until` take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// This long before now (a duration as [`parse_duration`] takes it).
    Ago(Duration),
    /// This Unix time (a local date and time given).
    At(i64),
}

impl When {
    /// The Unix time it names, `now` being now.
    pub fn at(self, now: i64) -> i64 {
        match self {
            When::Ago(age) => now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX)),
            When::At(t) => t,
        }
    }
}

/// A point in time: a duration before now, as [`parse_duration`] takes it
/// (`90`, `5m`, `2h`, `1d`), or a local date, with a time of day or not
/// (`2026-11-01`, `2026-11-01T12:00`, `2026-11-01 12:00:30`).
pub fn parse_when(text: &str) -> Result<When, String> {
    use chrono::{NaiveDate, NaiveDateTime};
    let trimmed = text.trim();
    let looks_like_date = trimmed.len() >= 10 && trimmed.as_bytes().get(4) == Some(&b'-');
    if !looks_like_date {
        return parse_duration(text).map(When::Ago).map_err(|_| {
            format!(
                "'{text}' is neither a duration (90, 90s, 5m, 2h, 1d) nor a date \
                 (2026-11-01, 2026-11-01T12:00)"
            )
        });
    }
    let bad = || {
        format!(
            "'{text}' is not a date and time (like 2026-11-01, 2026-11-01T12:00 or \
             2026-11-01 12:00:30)"
        )
    };
    let local = if let Ok(date) = NaiveDate::parse_from_str(trimmed, "%Y-%m-%d") {
        date.and_hms_opt(0, 0, 0).ok_or_else(bad)?
    } else {
        [
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%d %H:%M",
        ]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(trimmed, format).ok())
        .ok_or_else(bad)?
    };
    // A time the clocks skipped (a spring forward) is no time here.
    let at = Local
        .from_local_datetime(&local)
        .earliest()
        .ok_or_else(|| {
            format!("'{text}' is not a time that happened here (the clocks skipped it)")
        })?;
    Ok(When::At(at.timestamp()))
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

/// A size for people: `900 B`, `1.5 KiB`, `2.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_in_time() {
        assert_eq!(parse_when("90"), Ok(When::Ago(Duration::from_secs(90))));
        assert_eq!(parse_when("1d"), Ok(When::Ago(Duration::from_secs(86400))));
        assert!(matches!(parse_when("2026-11-01"), Ok(When::At(_))));
        assert_eq!(
            parse_when("2026-11-01T12:00").map(|w| w.at(0)),
            parse_when("2026-11-01 12:00:00").map(|w| w.at(0))
        );
        assert!(parse_when("2026-13-01").is_err());
        assert!(parse_when("yesterday").is_err());
        assert_eq!(When::Ago(Duration::from_secs(10)).at(100), 90);
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(bytes(900), "900 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(2 << 30), "2.0 GiB");
    }

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

/// The word of `words` nearest to `word`, where one is near enough to be
/// a slip: the same but for case, or at most one edit in four letters
/// apart (two for a word of eight), ties going to the first.
pub fn nearest<'a>(word: &str, words: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 4).clamp(1, 3);
    let mut best: Option<(usize, &str)> = None;
    for candidate in words {
        if candidate == word {
            continue;
        }
        let distance = if candidate.eq_ignore_ascii_case(word) {
            0
        } else {
            edit_distance(word, candidate, limit)
        };
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, w)| w)
}

/// Levenshtein's distance of `a` and `b`, with two letters swapped as one
/// edit; anything past `limit` is `limit + 1` (cut short: a lab of
/// thousands of names is looked through).
fn edit_distance(a: &str, b: &str, limit: usize) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > limit {
        return limit + 1;
    }
    let mut before: Vec<usize> = Vec::new();
    let mut last: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (last[j] + 1).min(row[j - 1] + 1).min(last[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        if row.iter().min().is_some_and(|&m| m > limit) {
            return limit + 1;
        }
        before = std::mem::replace(&mut last, row);
    }
    last[b.len()].min(limit + 1)
}

#[cfg(test)]
mod nearest_tests {
    use super::nearest;

    #[test]
    fn slips_find_their_name() {
        let names = ["rig1", "rig2", "fileserver", "RIG9"];
        assert_eq!(nearest("rgi1", names), Some("rig1"));
        assert_eq!(nearest("rig", names), Some("rig1"));
        assert_eq!(nearest("rig9", names), Some("RIG9"));
        assert_eq!(nearest("filesever", names), Some("fileserver"));
        assert_eq!(nearest("zzz", names), None);
        assert_eq!(nearest("x", ["y"]), Some("y"));
    }
}
