//! The lab's policy: its settings (`mama setting`), kept in the lab for
//! everyone who uses it, and how long a reservation lasts (its lease:
//! `reserve --for`, `extend`, the lab's longest reservation).

use std::time::Duration;

use crate::backend::Store;
use crate::error::{Error, Result};
use crate::model::Lab;
use crate::model::event::{Event, Kind};
use crate::model::setting::{self, Setting};
use crate::text;

/// `setting NAME VALUE`: sets a lab setting (checked and normalised; an
/// empty value unsets it) and records a `setting_changed` event where its
/// value changed. Returns the value it holds now (empty: unset), and
/// whether it changed.
pub fn set(store: &Store, setting: Setting, value: &str) -> Result<(String, bool)> {
    store.update(|lab| {
        let before = lab.setting(setting).unwrap_or("").to_string();
        lab.set_setting(setting, value)?;
        let after = lab.setting(setting).unwrap_or("").to_string();
        let changed = before != after;
        if changed {
            lab.record(
                Event::new(Kind::SettingChanged, setting.name())
                    .detail(format!("{}={after}", setting.name())),
            );
        }
        Ok((after, changed))
    })
}

/// The lab's longest reservation, where it sets one; a value that is not
/// a duration (written by hand) is an error naming it.
pub fn longest_reservation(lab: &Lab) -> Result<Option<Duration>> {
    let Some(value) = lab.setting(Setting::LongestReservation) else {
        return Ok(None);
    };
    setting::parse_duration(value).map(Some).map_err(|_| {
        Error::Invalid(format!(
            "the lab's {} is '{value}', which is not a duration; set it anew with `mama setting \
             {} 8h` (or \"\" for none)",
            Setting::LongestReservation.name(),
            Setting::LongestReservation.name()
        ))
    })
}

/// How long a reservation asked for `asked` lasts: that long, or, where
/// nothing is asked, the lab's longest reservation (`None`: until it is
/// released). Longer than the lab's longest reservation is refused,
/// naming it.
pub fn lease_length(lab: &Lab, asked: Option<Duration>) -> Result<Option<Duration>> {
    let longest = longest_reservation(lab)?;
    match (asked, longest) {
        (Some(asked), Some(longest)) if asked > longest => Err(Error::Invalid(format!(
            "a reservation lasts at most {} in this lab (its {} setting); {} asked",
            text::seconds(longest),
            Setting::LongestReservation.name(),
            text::seconds(asked)
        ))),
        (Some(asked), _) => Ok(Some(asked)),
        (None, longest) => Ok(longest),
    }
}
