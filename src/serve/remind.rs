//! The lab's reminders, which `mama serve` commits so that notify commands
//! hear of them: `expiring` once a lease, when its end is
//! [`LEAD`] away (or nearer, for a shorter one), and, at the end, the
//! transaction that ends the reservation with its `expired` event (every
//! transaction ends the reservations whose end has come: see
//! [`crate::model::Lab::end_leases`]), where nothing else ended it first.

use std::collections::HashSet;

use crate::backend::Store;
use crate::error::Result;
use crate::model::Lab;
use crate::model::event::{Event, Kind};
use crate::os;

/// How long before a lease's end the `expiring` reminder comes.
pub const LEAD: i64 = 15 * 60;

/// How long a reminder that could not be committed (a lab this user may
/// only read) waits before it is tried again.
const RETRY: i64 = 30;

/// A lease: its machine, whose it is, and its end (Unix seconds).
type Lease = (String, String, i64);

/// The leases with an end, as the last look saw them, and those reminded
/// of.
#[derive(Default)]
pub struct Reminders {
    leases: Vec<Lease>,
    reminded: HashSet<Lease>,
    /// No reminder before this (the last commit failed).
    held_off_until: i64,
}

/// The detail of a lease's `expiring` event; the history is searched for
/// it, so a server started again does not remind twice.
fn detail(user: &str, end: i64) -> String {
    format!(
        "the reservation of {user} ends at {}",
        crate::text::local_time(end)
    )
}

impl Reminders {
    /// Takes in the leases of `lab`; `events` (the history) tells which
    /// were reminded of already.
    pub fn see(&mut self, lab: &Lab, events: &[Event]) {
        self.leases = lab
            .machines()
            .filter_map(|m| {
                let lease = m.lease().or(m.ended_lease())?;
                Some((m.name().to_string(), lease.user.clone(), lease.expires?))
            })
            .collect();
        self.reminded.retain(|lease| self.leases.contains(lease));
        for lease in &self.leases {
            if self.reminded.contains(lease) {
                continue;
            }
            let (machine, user, end) = lease;
            let told = detail(user, *end);
            let found = events.iter().rev().any(|e| {
                e.event == Kind::Expiring
                    && &e.machine == machine
                    && e.detail.as_deref() == Some(told.as_str())
            });
            if found {
                self.reminded.insert(lease.clone());
            }
        }
    }

    /// When the next reminder is due (Unix seconds).
    pub fn next_due(&self) -> Option<i64> {
        self.leases
            .iter()
            .map(|lease| match self.reminded.contains(lease) {
                true => lease.2,
                false => lease.2 - LEAD,
            })
            .min()
            .map(|due| due.max(self.held_off_until))
    }

    /// Commits, in one transaction, the reminders that are due: the
    /// `expiring` events, and the end of the leases whose end has come.
    /// Whether there were any.
    pub fn commit_due(&mut self, store: &Store) -> Result<bool> {
        let now = os::now();
        if now < self.held_off_until {
            return Ok(false);
        }
        let expiring: Vec<Lease> = self
            .leases
            .iter()
            .filter(|l| !self.reminded.contains(*l) && l.2 - LEAD <= now && now < l.2)
            .cloned()
            .collect();
        let ended = self.leases.iter().any(|l| l.2 <= now);
        if expiring.is_empty() && !ended {
            return Ok(false);
        }
        let done = store.update(|lab| {
            for (machine, user, end) in &expiring {
                // Only the lease seen, still there: one extended or
                // released meanwhile is another (or none).
                let same = lab
                    .machine(machine)
                    .and_then(|m| m.lease())
                    .is_some_and(|l| &l.user == user && l.expires == Some(*end));
                if same {
                    lab.record(Event::new(Kind::Expiring, machine).detail(detail(user, *end)));
                }
            }
            Ok(())
        });
        match done {
            Ok(()) => {
                self.reminded.extend(expiring);
                // Ended now: the next look sees them gone.
                self.leases.retain(|l| l.2 > now);
                Ok(true)
            }
            Err(e) => {
                self.held_off_until = now + RETRY;
                Err(e)
            }
        }
    }
}
