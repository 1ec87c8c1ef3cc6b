//! Where the lab is stored.
//!
//! [`file`]: the shared XML state file, its lock and its history log.

pub mod file;
