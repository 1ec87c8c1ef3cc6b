//! The lab as mama's engine sees it, whatever stores it.

pub mod event;
