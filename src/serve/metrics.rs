//! `/metrics`: the lab in Prometheus's text exposition format.
//!
//! Gauges a machine (busy, reserved, offline, its queue's length), and
//! counters of claims and stale clears a machine. The counters are the
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
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
