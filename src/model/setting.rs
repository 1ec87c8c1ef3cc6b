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
    /// The history drops events older than this many days (whole rotated
    /// segments of a state file's log). Empty: [`Retention::KEEP_DAYS`];
    /// 0: no limit by age.
    HistoryKeepDays,
    /// The history keeps at most this many bytes. Empty:
    /// [`Retention::MAX_SIZE`].
    HistoryMaxSize,
}

impl Setting {
    pub const ALL: [Setting; 5] = [
        Setting::LongestReservation,
        Setting::Notify,
        Setting::OfflineAfterFailedStarts,
        Setting::HistoryKeepDays,
        Setting::HistoryMaxSize,
    ];

    /// Its name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Setting::LongestReservation => "longest-reservation",
            Setting::Notify => "notify",
            Setting::OfflineAfterFailedStarts => "offline-after-failed-starts",
            Setting::HistoryKeepDays => "history-keep-days",
            Setting::HistoryMaxSize => "history-max-size",
        }
    }

    /// Its element in the lab's document.
    pub const fn tag(self) -> &'static str {
        match self {
            Setting::LongestReservation => "longest_reservation",
            Setting::Notify => "notify",
            Setting::OfflineAfterFailedStarts => "offline_after_failed_starts",
            Setting::HistoryKeepDays => "history_keep_days",
            Setting::HistoryMaxSize => "history_max_size",
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
            Setting::HistoryKeepDays => {
                "drop history older than this many days (default 365; 0: keep it whatever its age)"
            }
            Setting::HistoryMaxSize => "keep at most this much history (500M, 4G; default 2G)",
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

/// A size in bytes as `history-max-size` takes it: a whole number, with an
/// optional unit `K`, `M`, `G` (powers of 1024, any case, an optional
/// `B` or `iB` after it), from 1 MiB to [`Retention::MAX_SIZE_LIMIT`].
pub fn parse_size(text: &str) -> Result<u64, Error> {
    let bad = || {
        Error::Invalid(format!(
            "'{text}' is not a size (like 1048576, 500M or 4G; from 1M to 64G)"
        ))
    };
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let number: u64 = trimmed[..digits].parse().map_err(|_| bad())?;
    let unit = trimmed[digits..].trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(bad()),
    };
    let size = number.checked_mul(scale).ok_or_else(bad)?;
    if !(1 << 20..=Retention::MAX_SIZE_LIMIT).contains(&size) {
        return Err(bad());
    }
    Ok(size)
}

/// How much history a lab keeps: see [`Setting::HistoryKeepDays`] and
/// [`Setting::HistoryMaxSize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this many days go; `None`: none go by age.
    pub keep_days: Option<u64>,
    /// The history's size is kept at most this many bytes.
    pub max_size: u64,
}

impl Retention {
    /// The default age limit: a year.
    pub const KEEP_DAYS: u64 = 365;
    /// The default size limit, 2 GiB: 90 days of a lab that runs a job a
    /// minute on each of 20 machines take some 1.1 GB (see the history in
    /// docs/SPEC.md for the arithmetic).
    pub const MAX_SIZE: u64 = 2 << 30;
    /// The largest size limit a lab may set.
    pub const MAX_SIZE_LIMIT: u64 = 64 << 30;

    /// The retention `settings` (a lab's, as [`crate::model::Lab::settings`]
    /// gives them) ask for; a value out of form counts as unset.
    pub fn of(settings: &[(Setting, String)]) -> Retention {
        let value = |wanted: Setting| {
            settings
                .iter()
                .find(|(s, v)| *s == wanted && !v.trim().is_empty())
                .map(|(_, v)| v.trim())
        };
        let keep_days = match value(Setting::HistoryKeepDays).map(str::parse::<u64>) {
            Some(Ok(0)) => None,
            // No longer than `setting` lets one set (a value written by
            // hand may be past what the cutoff's arithmetic holds).
            Some(Ok(days)) => Some(days.min(crate::text::MAX_SECS / 86400)),
            _ => Some(Retention::KEEP_DAYS),
        };
        let max_size = value(Setting::HistoryMaxSize)
            .and_then(|v| parse_size(v).ok())
            .unwrap_or(Retention::MAX_SIZE);
        Retention {
            keep_days,
            max_size,
        }
    }
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            keep_days: Some(Retention::KEEP_DAYS),
            max_size: Retention::MAX_SIZE,
        }
    }
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
        Setting::HistoryMaxSize => parse_size(trimmed).map(|n| n.to_string()),
        Setting::HistoryKeepDays => trimmed
            .parse::<u32>()
            .ok()
            .filter(|&days| u64::from(days) <= crate::text::MAX_SECS / 86400)
            .map(|n| n.to_string())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{} must be a whole number of days, not '{value}'",
                    setting.name()
                ))
            }),
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
        assert_eq!(
            normalize(Setting::HistoryMaxSize, "500M").unwrap(),
            "524288000"
        );
        assert_eq!(
            normalize(Setting::HistoryMaxSize, "2GiB").unwrap(),
            "2147483648"
        );
        assert!(normalize(Setting::HistoryMaxSize, "1K").is_err());
        assert!(normalize(Setting::HistoryMaxSize, "5X").is_err());
        assert!(normalize(Setting::HistoryMaxSize, "65G").is_err());
        assert_eq!(normalize(Setting::HistoryKeepDays, "90").unwrap(), "90");
        assert!(normalize(Setting::HistoryKeepDays, "-1").is_err());
    }

    #[test]
    fn retention_defaults_and_settings() {
        assert_eq!(Retention::of(&[]), Retention::default());
        let set = [
            (Setting::HistoryKeepDays, "0".to_string()),
            (Setting::HistoryMaxSize, "1048576".to_string()),
        ];
        assert_eq!(
            Retention::of(&set),
            Retention {
                keep_days: None,
                max_size: 1 << 20
            }
        );
        // Written by hand past what a cutoff in seconds holds (a database
        // lab's row, say): as long as `setting` lets one keep it.
        let set = [(Setting::HistoryKeepDays, u64::MAX.to_string())];
        assert_eq!(
            Retention::of(&set).keep_days,
            Some(crate::text::MAX_SECS / 86400)
        );
    }
}
