//! How much of each day a machine was held by a job, from the history.

use chrono::{Local, NaiveDate, TimeZone};

use crate::model::event::{Event, Kind};

/// One day's use of a machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    pub date: NaiveDate,
    /// The share of the day (of its part that has passed, for today) the
    /// machine was held by a job: 0 to 1.
    pub busy: f64,
}

/// The share of each of the last `days` days (local days, today the last)
/// that `machine` was held by a job, from the history `events` (oldest
/// first): held from a `claimed` event to the `released`, `stale_cleared`,
/// `cleared` or `force_released` that follows it; a claim nested in the
/// job that holds the machine changes nothing. A job still running is
/// held until `now`. What the history no longer holds (trimmed away)
/// counts as free.
pub fn busy_share_per_day(events: &[Event], machine: &str, now: i64, days: u32) -> Vec<Day> {
    // The spans the machine was held, in Unix seconds.
    let mut spans: Vec<(i64, i64)> = Vec::new();
    let mut since: Option<i64> = None;
    for e in events.iter().filter(|e| e.machine == machine) {
        let nested = e
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("nested in"));
        match e.event {
            Kind::Claimed if !nested => {
                since.get_or_insert(e.time);
            }
            Kind::Released if nested => {}
            Kind::Released | Kind::StaleCleared | Kind::Cleared | Kind::ForceReleased => {
                if let Some(start) = since.take() {
                    spans.push((start, e.time.max(start)));
                }
            }
            _ => {}
        }
    }
    if let Some(start) = since {
        spans.push((start, now.max(start)));
    }
    let midnight = |date: NaiveDate| {
        date.and_hms_opt(0, 0, 0)
            .and_then(|t| Local.from_local_datetime(&t).earliest())
            .map(|t| t.timestamp())
    };
    let Some(today) = Local.timestamp_opt(now, 0).single().map(|t| t.date_naive()) else {
        return Vec::new();
    };
    (0..days)
        .rev()
        .filter_map(|back| {
            let date = today.checked_sub_days(chrono::Days::new(u64::from(back)))?;
            let start = midnight(date)?;
            let end = midnight(date.succ_opt()?)?.min(now);
            let length = end - start;
            if length <= 0 {
                return Some(Day { date, busy: 0.0 });
            }
            let held: i64 = spans
                .iter()
                .map(|&(a, b)| (b.min(end) - a.max(start)).max(0))
                .sum();
            Some(Day {
                date,
                busy: (held as f64 / length as f64).clamp(0.0, 1.0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, time: i64, kind: Kind, detail: Option<&str>) -> Event {
        Event {
            seq,
            time,
            machine: "rig1".into(),
            event: kind,
            job: None,
            pid: None,
            user: "u".into(),
            host: "h".into(),
            detail: detail.map(str::to_string),
        }
    }

    fn noon_today() -> i64 {
        let today = Local::now().date_naive();
        Local
            .from_local_datetime(&today.and_hms_opt(12, 0, 0).expect("noon"))
            .earliest()
            .expect("a noon")
            .timestamp()
    }

    #[test]
    fn a_job_of_six_hours_is_half_of_the_morning() {
        let noon = noon_today();
        let events = [
            event(1, noon - 6 * 3600, Kind::Claimed, None),
            event(2, noon - 3 * 3600, Kind::Claimed, Some("nested in 'x'")),
            event(3, noon - 2 * 3600, Kind::Released, Some("nested in 'x'")),
            event(4, noon, Kind::Released, None),
        ];
        let days = busy_share_per_day(&events, "rig1", noon, 30);
        assert_eq!(days.len(), 30);
        let today = days.last().expect("today");
        assert!((today.busy - 0.5).abs() < 0.01, "{today:?}");
        assert!(days[..29].iter().all(|d| d.busy == 0.0));
    }

    #[test]
    fn a_job_still_running_is_held_until_now_and_a_stale_clear_ends_one() {
        let noon = noon_today();
        let events = [
            event(1, noon - 12 * 3600 - 86_400, Kind::Claimed, None),
            event(2, noon - 12 * 3600, Kind::StaleCleared, None),
            event(3, noon - 3 * 3600, Kind::Claimed, None),
        ];
        let days = busy_share_per_day(&events, "rig1", noon, 3);
        assert!((days[1].busy - 1.0).abs() < 0.05, "{days:?}");
        assert!((days[2].busy - 0.25).abs() < 0.01, "{days:?}");
        assert_eq!(days[0].busy, 0.0);
    }
}
