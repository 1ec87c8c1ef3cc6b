//! The lab's own settings: rules the lab keeps for everyone who uses it
//! (set with `mama setting`), as opposed to the `MAMA_*` variables, which
//! are one user's.
//!
//! Only the model: the settings and the checks on their values. Where a
//! backend keeps them is its own business.

use std::time::Duration;

use crate::error::Error;

/// A lab setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setting {
    /// The longest a reservation may last (`reserve --for`); a plain
    /// `reserve` gets that long. Empty: reservations last until released.
    LongestReservation,
    /// A shell command run for every event a command commits, the event
    /// as one `log --json` line on its standard input.
    Notify,
    /// After this many consecutive failed starts a machine is taken out
    /// of service. Empty or 0: never.
    OfflineAfterFailedStarts,
}

impl Setting {
    pub const ALL: [Setting; 3] = [
        Setting::LongestReservation,
        Setting::Notify,
        Setting::OfflineAfterFailedStarts,
    ];

    /// Its name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Setting::LongestReservation => "longest-reservation",
            Setting::Notify => "notify",
            Setting::OfflineAfterFailedStarts => "offline-after-failed-starts",
        }
    }

    /// Its element in the lab's document.
    pub const fn tag(self) -> &'static str {
        match self {
            Setting::LongestReservation => "longest_reservation",
            Setting::Notify => "notify",
            Setting::OfflineAfterFailedStarts => "offline_after_failed_starts",
        }
    }

    /// The setting named `name` (its name or its element's), in any case.
    pub fn find(name: &str) -> Option<Setting> {
        Setting::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name) || s.tag().eq_ignore_ascii_case(name))
    }

    /// What the help says of it.
    pub const fn about(self) -> &'static str {
        match self {
            Setting::LongestReservation => {
                "the longest a reservation lasts (90m, 8h, 2d); plain `reserve` gets that long"
            }
            Setting::Notify => "a shell command told of every event, one JSON line on its stdin",
            Setting::OfflineAfterFailedStarts => {
                "take a machine out of service after this many failed starts in a row (0: never)"
            }
        }
    }
}

/// A duration as settings and `--for` take it: `90s`, `15m`, `2h`, `3d`,
/// `1h30m`; a plain number is seconds. Not zero.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let bad = || {
        Error::Invalid(format!(
            "'{text}' is not a duration (like 90s, 15m, 2h, 3d or 1h30m)"
        ))
    };
    let text = text.trim();
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut any = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
        any = true;
    }
    if !number.is_empty() {
        total = number
            .parse::<u64>()
            .ok()
            .and_then(|n| total.checked_add(n))
            .ok_or_else(bad)?;
        any = true;
    }
    if !any || total == 0 {
        return Err(bad());
    }
    if total > crate::text::MAX_SECS {
        return Err(Error::Invalid(format!(
            "'{text}' is longer than {}",
            crate::text::MAX_SECS_TEXT
        )));
    }
    Ok(Duration::from_secs(total))
}

/// Checks and normalises a value for `setting`; empty clears it.
pub fn normalize(setting: Setting, value: &str) -> Result<String, Error> {
    crate::model::field::check_input(crate::model::field::Field::Job, value).map_err(|_| {
        Error::Invalid(format!(
            "the value for {} holds a control character or is too long",
            setting.name()
        ))
    })?;
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    match setting {
        Setting::LongestReservation => parse_duration(trimmed).map(|d| d.as_secs().to_string()),
        Setting::Notify => Ok(value.to_string()),
        Setting::OfflineAfterFailedStarts => {
            trimmed.parse::<u32>().map(|n| n.to_string()).map_err(|_| {
                Error::Invalid(format!(
                    "{} must be a whole number, not '{value}'",
                    setting.name()
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(
            normalize(Setting::LongestReservation, "8h").unwrap(),
            "28800"
        );
        assert!(normalize(Setting::OfflineAfterFailedStarts, "x").is_err());
        assert_eq!(normalize(Setting::Notify, "").unwrap(), "");
    }
}
