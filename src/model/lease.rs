//! A reservation's lease: when it ends by itself, and the holder's note.
//!
//! Only the model. A lease belongs to a machine's reservation and counts
//! only while that reservation is still its user's: a reservation changed
//! by another tool (PHP mama, a person with an editor) ends it. Where a
//! backend keeps leases is its own business.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// The lease of one machine's reservation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lease {
    /// Whose reservation it is: the machine's `reservation` as written.
    pub user: String,
    /// When the reservation ends, in Unix seconds; `None`: when released.
    pub expires: Option<i64>,
    /// What the holder said of it; empty for nothing.
    pub note: String,
}

impl Lease {
    /// Whether the reservation is over at `now`.
    pub fn is_over(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|at| now >= instant(at))
    }

    /// How long until it is over, seen from `now`: zero once it is;
    /// `None` for a lease without an end.
    pub fn left(&self, now: SystemTime) -> Option<Duration> {
        let at = instant(self.expires?);
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    }
}

/// The longest note a lease takes, in bytes (as a field's value).
pub const MAX_NOTE: usize = 64 << 10;

/// Refuses a note the lab cannot hold, or that a terminal would act on
/// when it is shown (control characters but tab and line ends, which XML
/// holds and views escape; C1 controls), or one longer than
/// [`MAX_NOTE`].
pub fn check_note(note: &str) -> Result<(), Error> {
    if note.len() > MAX_NOTE {
        return Err(Error::Invalid(format!(
            "the note is {} bytes, longer than the {MAX_NOTE} a note may hold",
            note.len()
        )));
    }
    match note
        .chars()
        .find(|&c| !crate::text::is_xml_char(c) || ('\u{7f}'..='\u{9f}').contains(&c))
    {
        None => Ok(()),
        Some(c) => Err(Error::Invalid(format!(
            "the note contains the control character U+{:04X}",
            c as u32
        ))),
    }
}

/// The instant of a Unix second (before 1970: the epoch; past the year
/// 36812, that year: a damaged value must not overflow the clock).
pub fn instant(unix: i64) -> SystemTime {
    let secs = u64::try_from(unix).unwrap_or(0).min(1 << 40);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The end of a lease of `length` taken at `now`: the whole second at or
/// after `now + length`, so a lease never lasts less than asked.
pub fn end_after(now: SystemTime, length: Duration) -> Result<i64, Error> {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO) + length;
    let whole = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    i64::try_from(whole)
        .map_err(|_| Error::Invalid("a reservation ending past the year 2262".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ends_at_its_second() {
        let lease = Lease {
            user: "alice".into(),
            expires: Some(1000),
            note: String::new(),
        };
        assert!(!lease.is_over(instant(999) + Duration::from_millis(999)));
        assert!(lease.is_over(instant(1000)));
        assert_eq!(
            lease.left(instant(999) + Duration::from_millis(250)),
            Some(Duration::from_millis(750))
        );
        assert_eq!(lease.left(instant(2000)), Some(Duration::ZERO));
        let forever = Lease {
            expires: None,
            ..lease
        };
        assert!(!forever.is_over(instant(i64::MAX)));
        assert_eq!(forever.left(instant(0)), None);
    }

    #[test]
    fn an_end_is_rounded_up_to_a_whole_second() {
        let at = instant(100) + Duration::from_millis(300);
        assert_eq!(end_after(at, Duration::from_secs(2)).ok(), Some(103));
        assert_eq!(
            end_after(instant(100), Duration::from_secs(2)).ok(),
            Some(102)
        );
    }
}
