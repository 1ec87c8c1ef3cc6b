//! The engine: what mama decides and does, whatever stores the lab.
//!
//! [`claim`] (busy rules, claim, release, the waiting loop), [`stale`] (is a
//! job stale, and why), [`supervise`] (the job's process, signals,
//! timeout), [`os`] (processes, users, this host).

pub mod claim;
pub mod os;
pub mod stale;
pub mod supervise;
