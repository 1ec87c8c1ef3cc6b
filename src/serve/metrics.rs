//! `/metrics`: the lab in Prometheus's text exposition format.
//!
//! Gauges a machine (busy, reserved, offline, its queue's length),
//! counters of claims and stale clears a machine, and a histogram a
//! machine of how long jobs waited before they claimed it (the `waited`
//! its `claimed` events record; claims recorded before mama kept it are
//! not in it). The counters are the
//! server's own: the events the history held when it started, plus every
//! event committed since, counted once by number. So a history trimmed
//! while it runs never lowers them; a server started again counts what
//! the history holds then, which Prometheus takes for a counter reset, as
//! for any restarted process.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cli::render::MachineView;
use crate::model::event::{Event, Kind};

/// Claims and stale clears counted so far, a machine.
#[derive(Default)]
pub struct Counters {
    claims: BTreeMap<String, u64>,
    stale_clears: BTreeMap<String, u64>,
    waits: BTreeMap<String, Waits>,
    /// The number of the last event counted.
    counted_to: u64,
}

impl Counters {
    /// Counts the events of `events` (the history, oldest first) numbered
    /// after the last one counted.
    pub fn count(&mut self, events: &[Event]) {
        let start = events.partition_point(|e| e.seq <= self.counted_to);
        for e in &events[start..] {
            let nested = e
                .detail
                .as_deref()
                .is_some_and(|d| d.starts_with("nested in"));
            match e.event {
                Kind::Claimed if !nested => {
                    *self.claims.entry(e.machine.clone()).or_default() += 1;
                    if let Some(waited) = e.waited {
                        self.waits
                            .entry(e.machine.clone())
                            .or_default()
                            .observe(waited);
                    }
                }
                Kind::StaleCleared => {
                    *self.stale_clears.entry(e.machine.clone()).or_default() += 1;
                }
                _ => {}
            }
            self.counted_to = self.counted_to.max(e.seq);
        }
    }
}

/// The upper bounds of the wait histogram's buckets, in seconds: from a
/// free machine's claim (well under a second) to a day's wait.
const WAIT_BUCKETS: [f64; 10] = [
    0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14_400.0, 86_400.0,
];

/// How long the jobs of one machine waited: a count a bucket (not
/// cumulative; the text adds them up), their number and their sum.
#[derive(Default)]
struct Waits {
    buckets: [u64; WAIT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Waits {
    fn observe(&mut self, seconds: f64) {
        let seconds = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        if let Some(i) = WAIT_BUCKETS.iter().position(|&le| seconds <= le) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// A label value as the format wants it: backslash, quote and line feed
/// escaped.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The metrics text: `up` says whether the last look at the lab read it
/// (where it did not, the gauges are those of the last look that did).
pub fn render(views: &[MachineView], counters: &Counters, up: bool) -> String {
    let mut out = String::with_capacity(256 + views.len() * 300);
    let _ = writeln!(
        out,
        "# HELP mama_up Whether the server's last look at the lab could read it.\n\
         # TYPE mama_up gauge\nmama_up {}",
        u8::from(up)
    );
    let names: Vec<String> = views.iter().map(|v| label(&v.name)).collect();
    let gauge =
        |out: &mut String, name: &str, help: &str, value: &dyn Fn(&MachineView) -> usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (view, machine) in views.iter().zip(&names) {
                let _ = writeln!(out, "{name}{{machine=\"{machine}\"}} {}", value(view));
            }
        };
    gauge(
        &mut out,
        "mama_machine_busy",
        "Whether the machine is held by a job (1) or not (0).",
        &|v| usize::from(v.state == "busy"),
    );
    gauge(
        &mut out,
        "mama_machine_reserved",
        "Whether the machine is reserved.",
        &|v| usize::from(v.reservation.is_some()),
    );
    gauge(
        &mut out,
        "mama_machine_offline",
        "Whether the machine is out of service.",
        &|v| usize::from(v.offline_reason.is_some()),
    );
    gauge(
        &mut out,
        "mama_machine_queue_length",
        "How many wait for the machine.",
        &|v| v.queue_length,
    );
    let counter = |out: &mut String, name: &str, help: &str, counts: &BTreeMap<String, u64>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        // Every machine of the lab, and those gone from it that were
        // counted (a series never goes back).
        let mut all: BTreeMap<&str, u64> = views.iter().map(|v| (v.name.as_str(), 0)).collect();
        for (machine, n) in counts {
            all.insert(machine, *n);
        }
        for (machine, n) in all {
            let _ = writeln!(out, "{name}{{machine=\"{}\"}} {n}", label(machine));
        }
    };
    counter(
        &mut out,
        "mama_claims_total",
        "Jobs that claimed the machine (nested runs not counted).",
        &counters.claims,
    );
    counter(
        &mut out,
        "mama_stale_clears_total",
        "Stale jobs cleared from the machine by a waiter.",
        &counters.stale_clears,
    );
    let name = "mama_claim_wait_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How long jobs waited before they claimed the machine.\n\
         # TYPE {name} histogram"
    );
    let none = Waits::default();
    let mut all: BTreeMap<&str, &Waits> = views.iter().map(|v| (v.name.as_str(), &none)).collect();
    for (machine, waits) in &counters.waits {
        all.insert(machine, waits);
    }
    for (machine, waits) in all {
        let machine = label(machine);
        let mut below = 0;
        for (le, n) in WAIT_BUCKETS.iter().zip(waits.buckets) {
            below += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{machine=\"{machine}\",le=\"{le}\"}} {below}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{machine=\"{machine}\",le=\"+Inf\"}} {count}\n\
             {name}_sum{{machine=\"{machine}\"}} {sum}\n\
             {name}_count{{machine=\"{machine}\"}} {count}",
            count = waits.count,
            sum = waits.sum,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, kind: Kind) -> Event {
        Event {
            seq,
            time: 0,
            machine: "m".into(),
            event: kind,
            job: None,
            pid: None,
            user: "u".into(),
            host: "h".into(),
            detail: None,
            waited: None,
            status: None,
        }
    }

    #[test]
    fn counters_count_each_event_once_and_never_go_down() {
        let mut counters = Counters::default();
        let mut history: Vec<Event> = (1..=4).map(|seq| event(seq, Kind::Claimed)).collect();
        history.push(event(5, Kind::StaleCleared));
        counters.count(&history);
        counters.count(&history);
        assert_eq!((counters.claims["m"], counters.stale_clears["m"]), (4, 1));
        // The log trimmed: its oldest events gone, a new one come.
        history.drain(..3);
        history.push(event(6, Kind::Claimed));
        counters.count(&history);
        assert_eq!((counters.claims["m"], counters.stale_clears["m"]), (5, 1));
        let text = render(&[], &counters, true);
        assert!(
            text.contains("mama_claims_total{machine=\"m\"} 5\n"),
            "{text}"
        );
    }

    #[test]
    fn waits_fill_cumulative_buckets() {
        let mut counters = Counters::default();
        let history: Vec<Event> = [(1, 0.02), (2, 0.5), (3, 42.0), (4, 100_000.0)]
            .into_iter()
            .map(|(seq, waited)| Event {
                waited: Some(waited),
                ..event(seq, Kind::Claimed)
            })
            .collect();
        counters.count(&history);
        let text = render(&[], &counters, true);
        for line in [
            "mama_claim_wait_seconds_bucket{machine=\"m\",le=\"0.1\"} 1\n",
            "mama_claim_wait_seconds_bucket{machine=\"m\",le=\"1\"} 2\n",
            "mama_claim_wait_seconds_bucket{machine=\"m\",le=\"60\"} 3\n",
            "mama_claim_wait_seconds_bucket{machine=\"m\",le=\"86400\"} 3\n",
            "mama_claim_wait_seconds_bucket{machine=\"m\",le=\"+Inf\"} 4\n",
            "mama_claim_wait_seconds_sum{machine=\"m\"} 100042.52\n",
            "mama_claim_wait_seconds_count{machine=\"m\"} 4\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
