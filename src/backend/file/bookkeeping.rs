//! The state file's own elements beside the machines: mama's bookkeeping
//! (the newest committed events and the number of the last, the mark of a
//! folded journal) and the mark a person adds when PHP mama shares the
//! file. Upstream's format ([`crate::format`]) keeps them as any other
//! top-level element; what they mean is the state file's.

use super::log::Pending;
use crate::format::doc::XmlLab;
use crate::model::event::{self, Event};

/// The number of the last event the state committed.
const EVENT_SEQ: &str = "event_seq";
/// Committed events not yet in the log (JSON lines).
const PENDING_EVENTS: &str = "pending_events";
/// The token of the last journal an earlier mama left that was folded into
/// the state (see [`super::journal`]).
const JOURNAL_FOLDED: &str = "journal_folded";
/// A top-level element a person adds to say that PHP mama shares the file:
/// then mama writes it in place.
const PHP_COMPAT: &str = "php_compat";

/// What the state file keeps beside its machines.
pub trait Bookkeeping {
    /// Whether the file says that PHP mama shares it: a top-level
    /// `<php_compat>` that does not hold `0`.
    fn php_compat(&self) -> bool;
    /// The number of the last event this state committed, if any.
    fn event_seq(&self) -> Option<u64>;
    fn set_event_seq(&mut self, seq: u64);
    /// The committed events the state holds until they move to the log.
    fn pending_events(&self) -> Vec<Event>;
    /// The pending events as the lines the state holds them in.
    fn pending_lines(&self) -> Pending;
    /// Writes what a transaction's commit made of the pending events
    /// (read by [`Bookkeeping::pending_lines`]): its lines after the ones
    /// held, or alone where those moved to the log.
    fn put_pending(&mut self, pending: &Pending);
    /// The token of the last journal folded into this state.
    fn journal_folded(&self) -> Option<String>;
    fn set_journal_folded(&mut self, token: &str);
    /// Drops the token of a folded journal once no journal is left.
    fn forget_journal_folded(&mut self);
}

impl Bookkeeping for XmlLab {
    fn php_compat(&self) -> bool {
        self.top_level(PHP_COMPAT)
            .is_some_and(|text| text.trim() != "0")
    }

    fn event_seq(&self) -> Option<u64> {
        self.top_level(EVENT_SEQ)?.trim().parse().ok()
    }

    fn set_event_seq(&mut self, seq: u64) {
        self.set_top_level(EVENT_SEQ, &seq.to_string());
    }

    fn pending_events(&self) -> Vec<Event> {
        self.top_level(PENDING_EVENTS)
            .map_or_else(Vec::new, |text| event::decode(&text))
    }

    fn pending_lines(&self) -> Pending {
        Pending::of(self.top_level(PENDING_EVENTS).unwrap_or_default())
    }

    fn put_pending(&mut self, pending: &Pending) {
        match (pending.flushed(), pending.added()) {
            (true, "") => self.remove_top_level(PENDING_EVENTS),
            (true, lines) => self.set_top_level(PENDING_EVENTS, lines),
            (false, "") => {}
            (false, lines) => self.append_top_level(PENDING_EVENTS, lines),
        }
    }

    fn journal_folded(&self) -> Option<String> {
        let text = self.top_level(JOURNAL_FOLDED)?.trim().to_string();
        (!text.is_empty()).then_some(text)
    }

    fn set_journal_folded(&mut self, token: &str) {
        self.set_top_level(JOURNAL_FOLDED, token);
    }

    fn forget_journal_folded(&mut self) {
        self.remove_top_level(JOURNAL_FOLDED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::doc::BOOKKEEPING;

    #[test]
    fn the_bookkeeping_elements_are_the_ones_an_export_leaves_out() {
        let mut own = [EVENT_SEQ, PENDING_EVENTS, JOURNAL_FOLDED];
        own.sort();
        let mut left_out = BOOKKEEPING;
        left_out.sort();
        assert_eq!(own, left_out);
    }

    #[test]
    fn php_compat_is_on_unless_it_says_0() {
        let lab = |top: &str| {
            XmlLab::parse(&format!(
                "<?xml version=\"1.0\"?>\n<settings>\n  {top}\n</settings>\n"
            ))
            .expect("a lab")
        };
        assert!(lab("<php_compat/>").php_compat());
        assert!(lab("<php_compat>1</php_compat>").php_compat());
        assert!(!lab("<php_compat>0</php_compat>").php_compat());
        assert!(!lab("<other/>").php_compat());
    }
}
