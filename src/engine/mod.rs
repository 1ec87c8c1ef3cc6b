//! The engine: what mama decides and does, whatever stores the lab.
//!
//! [`claim`] (the waiting loop and the claim, over its busy rules, queues
//! and release), [`stale`] (is a
//! job stale, and why), [`supervise`] (the job's process, signals,
//! timeout), [`manual`] (what people do by hand: clear, reserve, extend,
//! release), [`policy`] (the lab's settings, how long a reservation
//! lasts), [`devices`] (the lab's power devices: defined, listed,
//! removed), [`power`] (start, stop and switch machines, and whether they
//! answer), [`service`] (machines out of service, health checks),
//! [`trust`] (whether the commands written into a lab may run),
//! [`notify`] (the notify commands, told of every event committed).
//! Processes, users and this host are the ground floor's [`crate::os`].

pub mod claim;
pub mod devices;
pub mod manual;
pub mod notify;
pub mod policy;
pub mod power;
pub mod service;
pub mod stale;
pub mod stats;
pub mod supervise;
pub mod trust;
