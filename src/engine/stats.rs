//! Statistics of the lab, computed from its history (the committed events),
//! the same for every backend: how much of the time each machine was held
//! by a job, how many jobs ran and failed, how long claims waited, and the
//! reservations.
//!
//! The figures come from one pass over the events, oldest first, fed one at
//! a time ([`Tally::add`]), so a history of millions of events is never held
//! in memory. What counts:
//!
//! - A *hold* is a claim (a `claimed` event that is not nested in another
//!   claim) until its end: the `released` event of the same PID, or a
//!   `stale_cleared`, `cleared` or `deleted` event of the machine (a stale
//!   job holds its machine until someone clears it), or the next claim of
//!   the machine where the history holds no end (a change made by PHP mama
//!   records nothing). A hold the history does not end counts up to the end
//!   of the window. Busy time is the holds' time; reservations are counted
//!   apart.
//! - A *reservation* is a `reserved` event until its end: `unreserved`,
//!   `force_released`, `expired`, `deleted`, or the next `reserved` event of
//!   the machine.
//! - A setting's change and a power device's addition or removal name no
//!   machine: they count for nothing.
//! - Holds and reservations are clipped to the window: only the part inside
//!   it counts. Events (jobs, failures, stale clears, waits) count when they
//!   happened inside the window.
//! - A job failed when its `released` event says it exited other than 0
//!   (its `status`; an event of an older mama says it in its detail: `exit
//!   N`, `killed by signal N`, `timed out`).
//!
//! [`busy_seconds_per_day`] gives the busy time of each machine day by day,
//! for charts.

use std::collections::HashMap;

use crate::backend::Store;
use crate::error::Result;
use crate::model::event::{Brief, Kind};

/// The time the figures cover: Unix seconds, `since` included, `until`
/// not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since: i64,
    pub until: i64,
}

impl Window {
    /// Its length in seconds (0 for an empty window).
    pub fn seconds(&self) -> i64 {
        (self.until - self.since).max(0)
    }

    /// How much of `[start, end)` lies inside it, in seconds.
    fn overlap(&self, start: i64, end: i64) -> i64 {
        (end.min(self.until) - start.max(self.since)).max(0)
    }

    fn holds(&self, time: i64) -> bool {
        self.since <= time && time < self.until
    }
}

/// What the rows are of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Machine,
    User,
}

/// The figures of one machine or user, or of the whole lab.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// The machine's or the user's name (`None` for the lab's totals).
    pub name: Option<String>,
    /// Seconds held by jobs inside the window.
    pub busy: i64,
    /// `busy` as a share of the machine time of the window: of one machine
    /// for a machine's row, of every machine for a user's row and for the
    /// lab (0 to 1).
    pub share: f64,
    /// Jobs claimed inside the window (nested ones included).
    pub jobs: u64,
    /// Jobs released inside the window that exited other than 0.
    pub failed: u64,
    /// Stale jobs cleared inside the window (for a user: that user's jobs).
    pub stale_cleared: u64,
    /// Of the claims inside the window that recorded their wait: the
    /// median and the 95th percentile (nearest rank), seconds.
    pub wait_median: Option<f64>,
    pub wait_p95: Option<f64>,
    /// The longest hold, in seconds inside the window.
    pub longest_hold: i64,
    /// Reservations that lay (at least partly) inside the window.
    pub reservations: u64,
    /// Their seconds inside the window.
    pub reserved: i64,
}

/// The statistics of a window: a row a machine (or user), by name, and the
/// lab's totals.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub window: Window,
    pub by: By,
    /// How many machines the lab's time is of: those the lab has and
    /// those its history names.
    pub machines: usize,
    pub rows: Vec<Figures>,
    pub total: Figures,
}

/// A hold or reservation that has begun and not yet ended.
#[derive(Debug, Clone)]
struct Open {
    start: i64,
    pid: Option<u32>,
    /// The row of its user.
    user: usize,
}

/// The figures being gathered for one row.
#[derive(Debug, Default)]
struct Row {
    name: String,
    figures: Figures,
    waits: Vec<f64>,
}

/// The rows of one kind (machines or users), by name.
#[derive(Debug, Default)]
struct Rows {
    index: HashMap<String, usize>,
    rows: Vec<Row>,
}

impl Rows {
    fn of(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.rows.len();
        self.index.insert(name.to_string(), i);
        self.rows.push(Row {
            name: name.to_string(),
            ..Row::default()
        });
        i
    }
}

/// The gathering of statistics: [`Tally::add`] each event, oldest first,
/// then [`Tally::finish`].
#[derive(Debug)]
pub struct Tally {
    window: Window,
    by: By,
    machines: Rows,
    users: Rows,
    /// By machine row: its hold and its reservation.
    holds: Vec<Option<Open>>,
    reservations: Vec<Option<Open>>,
    total: Row,
    /// Whether the window starts with the first event (see
    /// [`Tally::from_first_event`]) and none has come yet.
    starts_with_first: bool,
}

impl Tally {
    /// A tally of `window`, a row for each of `machines` (the lab's: a
    /// machine that did nothing shows, and counts in the lab's machine
    /// time) and for each machine the history names.
    pub fn new<'a>(window: Window, by: By, machines: impl IntoIterator<Item = &'a str>) -> Tally {
        let mut tally = Tally {
            window,
            by,
            machines: Rows::default(),
            users: Rows::default(),
            holds: Vec::new(),
            reservations: Vec::new(),
            total: Row::default(),
            starts_with_first: false,
        };
        for name in machines {
            tally.machine(name);
        }
        tally
    }

    /// A tally of the whole history up to `until`: the window starts with
    /// the first event added (and is empty when none is).
    pub fn from_first_event<'a>(
        until: i64,
        by: By,
        machines: impl IntoIterator<Item = &'a str>,
    ) -> Tally {
        let mut tally = Tally::new(
            Window {
                since: until,
                until,
            },
            by,
            machines,
        );
        tally.starts_with_first = true;
        tally
    }

    fn machine(&mut self, name: &str) -> usize {
        let i = self.machines.of(name);
        if i == self.holds.len() {
            self.holds.push(None);
            self.reservations.push(None);
        }
        i
    }

    /// The row an event of machine `m` and user `u` counts in.
    fn row(&mut self, m: usize, u: usize) -> &mut Row {
        match self.by {
            By::Machine => &mut self.machines.rows[m],
            By::User => &mut self.users.rows[u],
        }
    }

    /// Adds one event; events must come oldest first.
    pub fn add(&mut self, event: &Brief<'_>) {
        if self.starts_with_first {
            self.starts_with_first = false;
            self.window.since = event.time.min(self.window.until);
        }
        if !of_a_machine(event.event) {
            return;
        }
        let window = self.window;
        let inside = window.holds(event.time);
        let m = self.machine(&event.machine);
        let u = self.users.of(&event.user);
        match event.event {
            Kind::Claimed => {
                if inside {
                    self.total.figures.jobs += 1;
                    self.row(m, u).figures.jobs += 1;
                    if let Some(waited) = event.waited.filter(|w| w.is_finite() && *w >= 0.0) {
                        self.total.waits.push(waited);
                        self.row(m, u).waits.push(waited);
                    }
                }
                if !is_nested(event) {
                    self.end_hold(m, event.time);
                    self.holds[m] = Some(Open {
                        start: event.time,
                        pid: event.pid,
                        user: u,
                    });
                }
            }
            Kind::Released => {
                if inside && failed(event) {
                    self.total.figures.failed += 1;
                    self.row(m, u).figures.failed += 1;
                }
                let ours = self.holds[m]
                    .as_ref()
                    .is_some_and(|h| h.pid.is_none() || event.pid.is_none() || h.pid == event.pid);
                if ours {
                    self.end_hold(m, event.time);
                }
            }
            Kind::StaleCleared => {
                if inside {
                    self.total.figures.stale_cleared += 1;
                    // A user's row counts the stale jobs that were theirs.
                    let owner = match (self.by, &self.holds[m]) {
                        (By::Machine, _) => Some(m),
                        (By::User, Some(hold)) => Some(hold.user),
                        (By::User, None) => None,
                    };
                    if let Some(i) = owner {
                        let rows = match self.by {
                            By::Machine => &mut self.machines.rows,
                            By::User => &mut self.users.rows,
                        };
                        rows[i].figures.stale_cleared += 1;
                    }
                }
                self.end_hold(m, event.time);
            }
            Kind::Cleared => self.end_hold(m, event.time),
            Kind::Deleted => {
                self.end_hold(m, event.time);
                self.end_reservation(m, event.time);
            }
            Kind::Reserved => {
                self.end_reservation(m, event.time);
                self.reservations[m] = Some(Open {
                    start: event.time,
                    pid: None,
                    user: u,
                });
            }
            Kind::Unreserved | Kind::ForceReleased | Kind::Expired => {
                self.end_reservation(m, event.time)
            }
            _ => {}
        }
    }

    fn end_hold(&mut self, m: usize, end: i64) {
        let Some(hold) = self.holds[m].take() else {
            return;
        };
        if end < self.window.since || hold.start >= self.window.until {
            return;
        }
        let held = self.window.overlap(hold.start, end);
        let count = |figures: &mut Figures| {
            figures.busy += held;
            figures.longest_hold = figures.longest_hold.max(held);
        };
        count(&mut self.total.figures);
        count(&mut self.row(m, hold.user).figures);
    }

    fn end_reservation(&mut self, m: usize, end: i64) {
        let Some(reservation) = self.reservations[m].take() else {
            return;
        };
        // One that ended as the window began, or began as it ended, lay
        // outside it.
        if end <= self.window.since || reservation.start >= self.window.until {
            return;
        }
        let held = self.window.overlap(reservation.start, end);
        let count = |figures: &mut Figures| {
            figures.reservations += 1;
            figures.reserved += held;
        };
        count(&mut self.total.figures);
        count(&mut self.row(m, reservation.user).figures);
    }

    /// The figures: holds and reservations still open count up to the end
    /// of the window. Rows are sorted by name.
    pub fn finish(mut self) -> Stats {
        let until = self.window.until;
        for m in 0..self.holds.len() {
            self.end_hold(m, until);
            self.end_reservation(m, until);
        }
        let seconds = self.window.seconds() as f64;
        let machines = self.machines.rows.len() as f64;
        let share = |busy: i64, of: f64| {
            if of > 0.0 {
                (busy as f64 / of).min(1.0)
            } else {
                0.0
            }
        };
        let rows = match self.by {
            By::Machine => self.machines.rows,
            // Users who held nothing, ran nothing and waited for nothing
            // (those who only added or set something) have no row.
            By::User => self
                .users
                .rows
                .into_iter()
                .filter(|r| r.figures != Figures::default())
                .collect(),
        };
        let per_row = match self.by {
            By::Machine => seconds,
            By::User => seconds * machines,
        };
        let mut rows: Vec<Figures> = rows
            .into_iter()
            .map(|row| {
                let mut figures = row.finish();
                figures.share = share(figures.busy, per_row);
                figures
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        let mut total = self.total.finish();
        total.name = None;
        total.share = share(total.busy, seconds * machines);
        Stats {
            window: self.window,
            by: self.by,
            machines: machines as usize,
            rows,
            total,
        }
    }
}

impl Row {
    fn finish(mut self) -> Figures {
        self.waits.sort_by(f64::total_cmp);
        let mut figures = self.figures;
        figures.name = Some(self.name);
        figures.wait_median = percentile(&self.waits, 50);
        figures.wait_p95 = percentile(&self.waits, 95);
        figures
    }
}

/// The `p`th percentile of `sorted` by nearest rank: the smallest value
/// that at least `p` percent of the values are not above.
fn percentile(sorted: &[f64], p: usize) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Whether an event of `kind` names a machine: a setting's change names
/// the setting, a power device's addition or removal the device.
fn of_a_machine(kind: Kind) -> bool {
    !matches!(
        kind,
        Kind::SettingChanged | Kind::DeviceAdded | Kind::DeviceDeleted
    )
}

/// Whether a claim was made inside another (a nested run, which holds
/// nothing of its own).
fn is_nested(event: &Brief<'_>) -> bool {
    event
        .detail
        .as_deref()
        .is_some_and(|d| d.starts_with("nested in"))
}

/// Whether a release says its job exited other than 0.
fn failed(event: &Brief<'_>) -> bool {
    if let Some(status) = event.status {
        return status != 0;
    }
    // An older mama's release says it in words only.
    let Some(detail) = event.detail.as_deref() else {
        return false;
    };
    if let Some(rest) = detail.strip_prefix("exit ") {
        let code: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        return code.parse::<i64>().is_ok_and(|c| c != 0);
    }
    detail.starts_with("killed by signal") || detail.starts_with("timed out")
}

/// One day of [`busy_seconds_per_day`]: Unix seconds, `start` included,
/// `end` not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    pub start: i64,
    pub end: i64,
}

/// The last `count` days in local time, oldest first, the last one today
/// (ending at the coming midnight, so a day's length is its own: 23 or 25
/// hours where the clocks change). For [`busy_seconds_per_day`].
pub fn local_days(now: i64, count: usize) -> Vec<Day> {
    use chrono::{Days, Local, TimeZone};
    let Some(today) = Local
        .timestamp_opt(now, 0)
        .earliest()
        .map(|t| t.date_naive())
    else {
        return Vec::new();
    };
    let midnight = |date: chrono::NaiveDate| {
        date.and_hms_opt(0, 0, 0)
            .and_then(|t| Local.from_local_datetime(&t).earliest())
            .map(|t| t.timestamp())
    };
    let mut days = Vec::with_capacity(count);
    for back in (0..count as u64).rev() {
        let Some(date) = today.checked_sub_days(Days::new(back)) else {
            continue;
        };
        let next = date.checked_add_days(Days::new(1));
        if let (Some(start), Some(end)) = (midnight(date), next.and_then(midnight)) {
            days.push(Day { start, end });
        }
    }
    days
}

/// Busy seconds of each machine in each of `days` (in order, adjacent, as
/// [`local_days`] gives them), from the history of the lab in `store`: for
/// each machine the lab has or its history names, one figure a day, the
/// seconds its holds lay inside that day, counted as [`Tally`] counts them
/// (a hold the history does not end counts up to `now`).
///
/// For a chart of the busy share a day ("the last 30 days"): take
/// `local_days(now, 30)` and divide each figure by its day's length
/// (`end - start`; today's up to `now`).
pub fn busy_seconds_per_day(
    store: &Store,
    days: &[Day],
    now: i64,
) -> Result<HashMap<String, Vec<i64>>> {
    let mut daily = Daily::new(days, now);
    let snapshot = store.scan_events(&mut |event| daily.add(event))?;
    Ok(daily.finish(snapshot.lab.machines().map(|m| m.name())))
}

/// [`busy_seconds_per_day`] fed event by event, oldest first.
#[derive(Debug)]
pub struct Daily {
    days: Vec<Day>,
    window: Window,
    tally: Tally,
    per_day: HashMap<String, Vec<i64>>,
}

impl Daily {
    pub fn new(days: &[Day], now: i64) -> Daily {
        let window = match (days.first(), days.last()) {
            (Some(first), Some(last)) => Window {
                since: first.start,
                until: last.end.min(now).max(first.start),
            },
            _ => Window { since: 0, until: 0 },
        };
        Daily {
            days: days.to_vec(),
            window,
            tally: Tally::new(window, By::Machine, []),
            per_day: HashMap::new(),
        }
    }

    /// Spreads a hold of machine `m` over the days it lay in.
    fn spread(&mut self, m: usize, start: i64, end: i64) {
        let name = &self.tally.machines.rows[m].name;
        if !self.per_day.contains_key(name) {
            self.per_day.insert(name.clone(), vec![0; self.days.len()]);
        }
        let Some(row) = self.per_day.get_mut(name) else {
            return;
        };
        for (figure, day) in row.iter_mut().zip(&self.days) {
            let day = Window {
                since: day.start.max(self.window.since),
                until: day.end.min(self.window.until),
            };
            *figure += day.overlap(start, end);
        }
    }

    pub fn add(&mut self, event: &Brief<'_>) {
        if !of_a_machine(event.event) {
            return;
        }
        let m = self.tally.machine(&event.machine);
        // The hold this event ends, if any, before the tally forgets it.
        let before = self.tally.holds[m].as_ref().map(|h| h.start);
        self.tally.add(event);
        let after = self.tally.holds[m].as_ref().map(|h| h.start);
        if let Some(start) = before
            && after != Some(start)
        {
            self.spread(m, start, event.time);
        }
    }

    /// The figures, a row for each of `machines` too.
    pub fn finish<'a>(
        mut self,
        machines: impl IntoIterator<Item = &'a str>,
    ) -> HashMap<String, Vec<i64>> {
        for m in 0..self.tally.holds.len() {
            if let Some(start) = self.tally.holds[m].as_ref().map(|h| h.start) {
                self.spread(m, start, self.window.until);
            }
        }
        let days = self.days.len();
        let mut per_day = std::mem::take(&mut self.per_day);
        let known = self.tally.machines.rows.iter().map(|r| r.name.as_str());
        for name in known {
            per_day
                .entry(name.to_string())
                .or_insert_with(|| vec![0; days]);
        }
        for name in machines {
            per_day
                .entry(name.to_string())
                .or_insert_with(|| vec![0; days]);
        }
        self.per_day = per_day;
        self.per_day
    }
}

/// The statistics of the lab in `store`, from its history: of the window
/// from `since` (`None`: from its first event) to `until` (Unix
/// seconds), a row a machine or a user as `by` says, a row for each
/// machine the lab has too.
pub fn of_lab(store: &Store, since: Option<i64>, until: i64, by: By) -> Result<Stats> {
    let mut tally = match since {
        Some(since) => Tally::new(Window { since, until }, by, []),
        None => Tally::from_first_event(until, by, []),
    };
    let snapshot = store.scan_events(&mut |event| tally.add(event))?;
    for machine in snapshot.lab.machines() {
        tally.machine(machine.name());
    }
    Ok(tally.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn ev(time: i64, machine: &str, event: Kind, pid: u32, user: &str) -> Brief<'static> {
        Brief {
            seq: 0,
            time,
            machine: Cow::Owned(machine.to_string()),
            event,
            pid: Some(pid),
            user: Cow::Owned(user.to_string()),
            detail: None,
            waited: None,
            status: None,
        }
    }

    #[test]
    fn local_days_are_adjacent_and_end_with_today() {
        let now = 1_793_620_000;
        let days = local_days(now, 30);
        assert_eq!(days.len(), 30);
        for pair in days.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        let today = days[29];
        assert!(today.start <= now && now < today.end, "{today:?}");
        // A day is 23 to 25 hours long.
        assert!(
            days.iter()
                .all(|d| (82_800..=90_000).contains(&(d.end - d.start)))
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50), Some(10.0));
        assert_eq!(percentile(&v, 95), Some(19.0));
        assert_eq!(percentile(&[3.0], 95), Some(3.0));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn older_releases_tell_failure_in_words() {
        let mut e = ev(0, "m", Kind::Released, 1, "u");
        for (detail, bad) in [
            ("exit 0 after 3s", false),
            ("exit 2 after 3s", true),
            ("killed by signal 9 after 1s", true),
            ("timed out after 1m", true),
            ("stopped the machine after 1s", false),
        ] {
            e.detail = Some(Cow::Borrowed(detail));
            assert_eq!(failed(&e), bad, "{detail}");
        }
    }

    #[test]
    fn holds_are_clipped_and_spread_over_days() {
        let days = [
            Day { start: 0, end: 100 },
            Day {
                start: 100,
                end: 200,
            },
        ];
        let events = vec![
            ev(50, "a", Kind::Claimed, 1, "u"),
            // A nested run's claim and release leave the hold alone.
            Brief {
                detail: Some(Cow::Borrowed("nested in 'x'")),
                ..ev(60, "a", Kind::Claimed, 2, "u")
            },
            ev(70, "a", Kind::Released, 2, "u"),
            ev(130, "a", Kind::Released, 1, "u"),
            ev(190, "b", Kind::Claimed, 3, "v"),
        ];
        let mut daily = Daily::new(&days, 195);
        for event in &events {
            daily.add(event);
        }
        let busy = daily.finish(["c"]);
        assert_eq!(busy["a"], [50, 30]);
        assert_eq!(busy["b"], [0, 5]);
        assert_eq!(busy["c"], [0, 0]);
    }
}
