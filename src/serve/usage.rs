//! How much of each day a machine was held by a job, from the history the
//! server keeps: the statistics' own count ([`stats::Daily`]), so the
//! chart and `mama stats` agree.

use chrono::{Local, NaiveDate, TimeZone};

use crate::engine::stats;
use crate::model::event::Event;

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
/// first), as `mama stats` counts a hold; a job still running is held
/// until `now`. What the history no longer holds counts as free.
pub fn busy_share_per_day(events: &[Event], machine: &str, now: i64, days: u32) -> Vec<Day> {
    let window = stats::local_days(now, days as usize);
    let mut daily = stats::Daily::new(&window, now);
    for event in events.iter().filter(|e| e.machine == machine) {
        daily.add(&event.brief());
    }
    let held = daily.finish([machine]).remove(machine).unwrap_or_default();
    window
        .iter()
        .zip(held.into_iter().chain(std::iter::repeat(0)))
        .filter_map(|(day, held)| {
            let date = Local.timestamp_opt(day.start, 0).earliest()?.date_naive();
            let length = day.end.min(now) - day.start;
            let busy = if length <= 0 {
                0.0
            } else {
                (held as f64 / length as f64).clamp(0.0, 1.0)
            };
            Some(Day { date, busy })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::Kind;

    fn event(seq: u64, time: i64, kind: Kind, detail: Option<&str>) -> Event {
        Event {
            seq,
            time,
            machine: "rig1".into(),
            event: kind,
            job: None,
            // The outer job's process is 1, a nested run's 2.
            pid: Some(if detail.is_some() { 2 } else { 1 }),
            user: "u".into(),
            host: "h".into(),
            detail: detail.map(str::to_string),
            waited: None,
            status: None,
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
