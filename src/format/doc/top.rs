//! Top-level elements other than machines, read and written by name, and
//! where each stands, found in one look over the root's children (which
//! finds every `<device>` and `<lease>` too: see [`Places`]).

use super::*;
use crate::format::xml::{Element, Node, Str};

impl XmlLab {
    /// The text of the first top-level element called `tag`, if there is
    /// one (for a lab's own elements beside its machines).
    pub fn top_level(&self, tag: &str) -> Option<String> {
        Some(self.own_element(tag)?.text().into_owned())
    }

    /// Removes the first top-level element called `tag`, if there is one.
    pub fn remove_top_level(&mut self, tag: &str) {
        if let Some(at) = self.own_at(tag) {
            self.doc.root.remove_child(at);
            self.moved();
        }
    }

    /// Sets the text of the first top-level element called `tag` (not
    /// `machine`), adding it after the last element when missing.
    pub fn set_top_level(&mut self, tag: &str, value: &str) {
        if let Some(at) = self.own_at(tag)
            && let Some(Node::Element(element)) = self.doc.root.children.get_mut(at)
        {
            element.set_text(value);
            return;
        }
        self.doc
            .root
            .push_element(Element::with_text(tag, value), "  ");
        self.moved();
    }

    /// Adds `value` after the text of the first top-level element called
    /// `tag` (not `machine`), adding the element after the last element
    /// when missing.
    pub fn append_top_level(&mut self, tag: &str, value: &str) {
        if let Some(at) = self.own_at(tag)
            && let Some(Node::Element(element)) = self.doc.root.children.get_mut(at)
        {
            element.append_text(value);
            return;
        }
        self.set_top_level(tag, value);
    }

    /// The first root child element called `tag` (not `machine`).
    pub(super) fn own_element(&self, tag: &str) -> Option<&Element> {
        match self.doc.root.children.get(self.own_at(tag)?)? {
            Node::Element(element) => Some(element),
            _ => None,
        }
    }

    /// Where the first root child element called `tag` (not `machine`)
    /// stands: what `self.doc.root.child(tag)` finds.
    pub(super) fn own_at(&self, tag: &str) -> Option<usize> {
        let children = &self.doc.root.children;
        let is_it = |at: usize| matches!(children.get(at), Some(Node::Element(e)) if e.name == tag);
        let known = self.own.borrow().as_ref().map(|places| {
            places
                .first
                .iter()
                .find(|(name, _)| *name == tag)
                .map(|&(_, at)| at)
        });
        let at = match known {
            Some(Some(at)) if is_it(at as usize) => Some(at as usize),
            Some(None) => None,
            // Not where it was (a move went unsaid), or not looked for yet.
            _ => self.find_own(tag),
        };
        debug_assert_eq!(
            at,
            children
                .iter()
                .position(|n| matches!(n, Node::Element(e) if e.name == tag)),
            "the place of <{tag}>"
        );
        at
    }

    /// Looks for the first root child of each name but `machine`, and
    /// for every `<device>`, keeps what it finds, and says where `tag`
    /// stands.
    pub(super) fn find_own(&self, tag: &str) -> Option<usize> {
        let mut places = Places::default();
        for (at, node) in self.doc.root.children.iter().enumerate() {
            if let Node::Element(element) = node
                && element.name != MACHINE
                && let Ok(at) = u32::try_from(at)
            {
                if element.name == DEVICE {
                    places.devices.push(at);
                }
                if element.name == LEASE {
                    places.leases.push(at);
                }
                if !places.first.iter().any(|(name, _)| *name == element.name) {
                    places.first.push((element.name.clone(), at));
                }
            }
        }
        let found = places
            .first
            .iter()
            .find(|(name, _)| *name == tag)
            .map(|&(_, at)| at as usize);
        *self.own.borrow_mut() = Some(places);
        found
    }

    /// Where every top-level `<device>` stands among the root's children,
    /// in order: from the same look as [`XmlLab::own_at`]'s, so that a lab
    /// without devices pays nothing for them.
    pub(super) fn device_places(&self) -> Vec<usize> {
        self.places_of(DEVICE, |places| &places.devices)
    }

    /// Where every top-level `<lease>` stands, in order (as
    /// [`XmlLab::device_places`]).
    pub(super) fn lease_places(&self) -> Vec<usize> {
        self.places_of(LEASE, |places| &places.leases)
    }

    /// Where every top-level element called `tag` stands, as `list` keeps
    /// them in the places of the last look (looked for again where they
    /// moved).
    fn places_of(&self, tag: &str, list: impl Fn(&Places) -> &Vec<u32>) -> Vec<usize> {
        let children = &self.doc.root.children;
        let is_it =
            |at: u32| matches!(children.get(at as usize), Some(Node::Element(e)) if e.name == tag);
        let known = self
            .own
            .borrow()
            .as_ref()
            .map(|places| list(places).clone());
        let places = match known {
            Some(places) if places.iter().all(|&at| is_it(at)) => places,
            _ => {
                self.find_own(tag);
                self.own
                    .borrow()
                    .as_ref()
                    .map(|places| list(places).clone())
                    .unwrap_or_default()
            }
        };
        let places: Vec<usize> = places.into_iter().map(|at| at as usize).collect();
        debug_assert_eq!(
            places,
            children
                .iter()
                .enumerate()
                .filter(|(_, n)| matches!(n, Node::Element(e) if e.name == tag))
                .map(|(at, _)| at)
                .collect::<Vec<_>>(),
            "the places of <{tag}>"
        );
        places
    }

    /// A node was put in or taken out among the root's children: the
    /// places are looked for again at the next lookup.
    pub(super) fn moved(&self) {
        *self.own.borrow_mut() = None;
    }
}

/// What one look over the root's children found: the first child of each
/// name but `machine`, every `<device>` and every `<lease>`.
#[derive(Debug, Clone, Default)]
pub(super) struct Places {
    first: Vec<(Str, u32)>,
    devices: Vec<u32>,
    leases: Vec<u32>,
}
