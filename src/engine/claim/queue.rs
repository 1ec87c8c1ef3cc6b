//! The queues (SPEC "Queues and pools"): places taken and left, places of
//! waiters who are gone taken out, tickets numbered across the lab.

use crate::backend::Store;
use crate::error::{Error, Result};
use crate::model::Lab;
use crate::model::queue::Waiter;

use super::busy::deciding_machines;

pub(super) fn ahead(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} ahead of you)"),
    }
}

/// Takes the places of the waiter `token` out of every queue but those
/// of the machines in `keep`.
pub(super) fn leave_queues(lab: &mut Lab, token: &str, keep: &[String]) -> Result<()> {
    let names: Vec<String> = lab
        .machines()
        .filter(|m| !keep.iter().any(|k| k == m.name()))
        .filter(|m| m.queue().iter().any(|w| w.token == token))
        .map(|m| m.name().to_string())
        .collect();
    for name in names {
        let mut machine = lab.get_mut(&name)?;
        let mut queue = machine.view().queue();
        queue.retain(|w| w.token != token);
        machine.set_queue(&queue)?;
    }
    Ok(())
}

/// Takes out of the queues of `machines` the places whose waiters left or
/// died (their place locks are free), but the caller's own.
pub(super) fn prune_queues(
    lab: &mut Lab,
    store: &Store,
    machines: &[String],
    own: Option<&str>,
) -> Result<()> {
    for name in machines {
        let mut machine = lab.get_mut(name)?;
        let queue = machine.view().queue();
        if queue.is_empty() {
            continue;
        }
        let (live, gone): (Vec<Waiter>, Vec<Waiter>) = queue
            .into_iter()
            .partition(|w| Some(w.token.as_str()) == own || store.place_held(w));
        if !gone.is_empty() {
            machine.set_queue(&live)?;
            for waiter in gone {
                store.forget_place(&waiter.token);
            }
        }
    }
    Ok(())
}

/// Whether `waiter` could have `target` once free: no machine that
/// decides it is reserved by someone else.
pub(super) fn may_have(lab: &Lab, target: &str, waiter: &Waiter) -> Result<bool> {
    for name in deciding_machines(lab, target)? {
        if lab
            .get(&name)?
            .reservation()
            .is_some_and(|by| by != waiter.user)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Keeps the caller's places (`me`; its ticket `mine` if it has one) in
/// the queues of `candidates` only: taken out of machines that are
/// candidates no longer, added to new ones with the same ticket (a
/// newcomer's ticket comes after every place in the lab).
/// The most waiters a machine's queue takes: far past any lab's, and few
/// enough that a queue stays small beside the machine.
pub const MAX_WAITERS: usize = 1024;

pub(super) fn hold_places(
    lab: &mut Lab,
    candidates: &[String],
    me: Waiter,
    mine: Option<u64>,
) -> Result<()> {
    let token = me.token.clone();
    leave_queues(lab, &token, candidates)?;
    let ticket = match mine {
        Some(ticket) => ticket,
        None => next_ticket(lab)?,
    };
    let me = Waiter { ticket, ..me };
    for name in candidates {
        let mut machine = lab.get_mut(name)?;
        let mut queue = machine.view().queue();
        if !queue.iter().any(|w| w.token == token) {
            if queue.len() >= MAX_WAITERS {
                return Err(Error::Invalid(format!(
                    "{} has {} waiters in its queue, the most a machine takes; try again later",
                    crate::text::printable(name),
                    queue.len()
                )));
            }
            queue.push(me.clone());
            machine.set_queue(&queue)?;
        }
    }
    Ok(())
}

/// The ticket after every place in the lab. Tickets only order places, so
/// near the end of their range the places are numbered anew, 1 upwards,
/// in their order.
pub(super) fn next_ticket(lab: &mut Lab) -> Result<u64> {
    let max = lab
        .machines()
        .flat_map(|m| m.queue())
        .map(|w| w.ticket)
        .max()
        .unwrap_or(0);
    if let Some(next) = max.checked_add(1).filter(|&t| t < 1 << 62) {
        return Ok(next);
    }
    let mut tickets: Vec<u64> = lab
        .machines()
        .flat_map(|m| m.queue())
        .map(|w| w.ticket)
        .collect();
    tickets.sort_unstable();
    tickets.dedup();
    let names: Vec<String> = lab.machines().map(|m| m.name().to_string()).collect();
    for name in names {
        let mut machine = lab.get_mut(&name)?;
        let mut queue = machine.view().queue();
        if queue.is_empty() {
            continue;
        }
        for waiter in &mut queue {
            waiter.ticket = tickets.partition_point(|&t| t < waiter.ticket) as u64 + 1;
        }
        machine.set_queue(&queue)?;
    }
    Ok(tickets.len() as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Machine;
    use crate::model::field::Field;

    fn waiter(ticket: u64) -> Waiter {
        Waiter {
            ticket,
            token: format!("{ticket:016x}"),
            pid: 1,
            since: 0,
            user: "u".into(),
            host: "h".into(),
            job: None,
            epoch: None,
            pool: false,
        }
    }

    #[test]
    fn a_full_queue_takes_no_newcomer_but_keeps_who_is_in_it() {
        let mut lab = Lab::new(vec![Machine::read(
            [
                (Field::Name, "m".to_string()),
                (Field::Mac, "aa:bb:cc:dd:ee:01".to_string()),
            ],
            [],
        )]);
        let full: Vec<Waiter> = (1..=MAX_WAITERS as u64).map(waiter).collect();
        lab.get_mut("m")
            .and_then(|mut m| m.set_queue(&full))
            .expect("a full queue");
        let names = ["m".to_string()];
        let newcomer = waiter(MAX_WAITERS as u64 + 1);
        let refused = hold_places(&mut lab, &names, newcomer, None);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("the most a machine takes")),
            "{:?}",
            refused.err()
        );
        // One already in it keeps its place.
        assert!(hold_places(&mut lab, &names, waiter(7), Some(7)).is_ok());
        assert_eq!(
            lab.get("m").map(|m| m.queue().len()).ok(),
            Some(MAX_WAITERS)
        );
    }
}
