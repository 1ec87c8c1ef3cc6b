//! Machines taken out of service: the mark (`<offline_reason>`,
//! `<offline_by>`, `<offline_since>`, mama's own elements) and the count
//! of starts that failed in a row (`<failed_starts>`).
//!
//! A machine is out of service while its `<offline_reason>` holds text:
//! nothing claims it but a health check (see [`crate::engine::claim`]).
//! PHP mama drops the elements when it saves the machine, which puts the
//! machine back in service.

use crate::error::Error;
use crate::model::field::Field;
use crate::model::{Machine, MachineMut};
use crate::text;

/// The reason a failed health check gives starts with this (see
/// [`Offline::by_check`]).
pub const CHECK_FAILED: &str = "health check failed";

/// Why a machine is out of service, who took it out and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offline {
    pub reason: String,
    /// `None` where the record does not say (written by hand).
    pub by: Option<String>,
    /// Unix seconds; `None` where the record does not say.
    pub since: Option<i64>,
}

impl Offline {
    /// The reason, and when and by whom where the record says:
    /// `dead serial console (since 2026-05-01 10:00:00, by alice)`. The
    /// lab's text as stored: show it through [`text::printable`].
    pub fn detail(&self) -> String {
        let mut about = Vec::new();
        if let Some(since) = self.since {
            about.push(format!("since {}", text::local_time(since)));
        }
        if let Some(by) = &self.by {
            about.push(format!("by {by}"));
        }
        if about.is_empty() {
            self.reason.clone()
        } else {
            format!("{} ({})", self.reason, about.join(", "))
        }
    }

    /// What keeps `machine` from a claim, for people: `rig1 is out of
    /// service: REASON (since ..., by alice)`.
    pub fn refusal(&self, machine: &str) -> String {
        format!("{machine} is out of service: {}", self.detail())
    }

    /// Whether a failed health check took the machine out (its reason
    /// says so): a check that passes puts it back.
    pub fn by_check(&self) -> bool {
        self.reason.starts_with(CHECK_FAILED)
    }
}

/// Checks a reason a person gives (`mama offline --reason`): not blank,
/// one line, no control character, at most [`crate::model::field::MAX_VALUE`].
pub fn check_reason(reason: &str) -> Result<String, Error> {
    crate::model::field::check_input(Field::OfflineReason, reason)?;
    if let Some(c) = reason.chars().find(|&c| text::is_terminal_control(c)) {
        return Err(Error::Invalid(format!(
            "the reason contains the control character U+{:04X}; give it on one line",
            c as u32
        )));
    }
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(Error::Invalid(
            "the reason is empty: say why the machine is out of service".into(),
        ));
    }
    Ok(reason.to_string())
}

/// The longest reason mama makes of a line of a command's output.
const MOST_REASON: usize = 500;

/// A line of a command's output made fit for a reason: controls written
/// as escapes (a coloured line holds ESC, which XML cannot), cut at
/// `MOST_REASON` bytes.
pub fn reason_of_line(line: &str) -> String {
    let shown = text::printable(line.trim()).into_owned();
    if shown.len() <= MOST_REASON {
        return shown;
    }
    let mut end = MOST_REASON;
    while !shown.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &shown[..end])
}

impl Machine {
    /// Why the machine is out of service; `None` while it is in service.
    pub fn offline(&self) -> Option<Offline> {
        let reason = self.get(Field::OfflineReason).trim();
        if reason.is_empty() {
            return None;
        }
        let by = self.get(Field::OfflineBy).trim();
        Some(Offline {
            reason: reason.to_string(),
            by: (!by.is_empty()).then(|| by.to_string()),
            since: self.get(Field::OfflineSince).trim().parse().ok(),
        })
    }

    /// How many starts in a row failed every try (0 where it is not a
    /// number).
    pub fn failed_starts(&self) -> u32 {
        self.get(Field::FailedStarts).trim().parse().unwrap_or(0)
    }
}

impl MachineMut<'_> {
    /// Takes the machine out of service.
    pub fn take_offline(&mut self, offline: &Offline) -> Result<(), Error> {
        self.set(Field::OfflineReason, &offline.reason)?;
        match &offline.by {
            Some(by) => self.set(Field::OfflineBy, by)?,
            None => self.clear(Field::OfflineBy)?,
        }
        match offline.since {
            Some(since) => self.set(Field::OfflineSince, &since.to_string()),
            None => self.clear(Field::OfflineSince),
        }
    }

    /// Puts the machine back in service: the mark goes, and so does the
    /// count of failed starts (a person looked at it).
    pub fn bring_online(&mut self) -> Result<(), Error> {
        for field in [
            Field::OfflineReason,
            Field::OfflineBy,
            Field::OfflineSince,
            Field::FailedStarts,
        ] {
            self.clear(field)?;
        }
        Ok(())
    }

    /// Sets the count of failed starts; 0 removes it.
    pub fn set_failed_starts(&mut self, count: u32) -> Result<(), Error> {
        if count == 0 {
            self.clear(Field::FailedStarts)
        } else {
            self.set(Field::FailedStarts, &count.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Lab;

    fn lab() -> Lab {
        Lab::new(vec![Machine::read(
            [
                (Field::Name, "rig1".to_string()),
                (Field::Mac, "aa:bb:cc:dd:ee:01".to_string()),
            ],
            [],
        )])
    }

    #[test]
    fn the_mark_comes_and_goes_whole() {
        let mut lab = lab();
        assert_eq!(lab.get("rig1").unwrap().offline(), None);
        let off = Offline {
            reason: "dead console".into(),
            by: Some("alice".into()),
            since: Some(1_700_000_000),
        };
        let mut m = lab.get_mut("rig1").unwrap();
        m.take_offline(&off).unwrap();
        m.set_failed_starts(2).unwrap();
        let machine = lab.get("rig1").unwrap();
        assert_eq!(machine.offline(), Some(off.clone()));
        assert_eq!(machine.failed_starts(), 2);
        assert!(
            off.refusal("rig1")
                .starts_with("rig1 is out of service: dead console (since ")
        );
        assert!(off.detail().ends_with(", by alice)"), "{}", off.detail());
        lab.get_mut("rig1").unwrap().bring_online().unwrap();
        let machine = lab.get("rig1").unwrap();
        assert_eq!(machine.offline(), None);
        assert_eq!(machine.failed_starts(), 0);
        for field in [
            Field::OfflineReason,
            Field::OfflineBy,
            Field::OfflineSince,
            Field::FailedStarts,
        ] {
            assert!(!machine.has(field), "{field:?}");
        }
    }

    #[test]
    fn reasons_are_one_line_of_text() {
        assert_eq!(check_reason("  dead console ").unwrap(), "dead console");
        assert!(check_reason("   ").is_err());
        assert!(check_reason("a\nb").is_err());
        assert!(check_reason("a\u{1b}[31m").is_err());
        assert_eq!(
            reason_of_line("\u{1b}[31mFAIL\u{1b}[0m "),
            "\\x1b[31mFAIL\\x1b[0m"
        );
        let long = "é".repeat(400);
        let cut = reason_of_line(&long);
        assert!(
            cut.len() <= MOST_REASON + 3 && cut.ends_with("..."),
            "{cut}"
        );
    }
}
