//! Whether the commands written into a lab may run: a machine's
//! `startcmd`, `stopcmd` and `readycmd`, a `command` device's commands.
//!
//! Whoever may write the lab chooses those commands, and whoever starts a
//! machine runs them. So mama runs them only where everyone who may write
//! the lab is the caller or root, or where the caller trusts the lab: as
//! git refuses a repository of someone else's until `safe.directory` names
//! it. A lab is trusted by a line naming it (its location as mama shows it:
//! the state file's absolute path, or the database URL without password)
//! or `*` in `/etc/mama/trusted` (root's, for every user) or in the
//! caller's own `$XDG_CONFIG_HOME/mama/trusted` (else
//! `~/.config/mama/trusted`, the home the password database gives).
//! A trust file that another user than its owner (the caller, or root)
//! could write is not read, and says so.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::backend::{Store, Writer, Writers};
use crate::error::{Error, Result};
use crate::os;

/// The system's trust file.
pub const SYSTEM_TRUST: &str = "/etc/mama/trusted";

/// Refuses, naming `what` (`the startcmd of rig1`), to run a command of a
/// lab that someone else than the caller and root may write, unless the
/// caller trusts it.
pub fn check(store: &Store, what: &str) -> Result<()> {
    let me = os::effective_user_id();
    let others = match store.writers()? {
        Writers::Known(writers) => others(&writers, me),
        Writers::Unknown(why) => Some(why),
    };
    let Some(others) = others else {
        return Ok(());
    };
    let location = trust_name(store);
    let files = trust_files(me);
    if files.iter().any(|file| names(file, &location, me)) {
        return Ok(());
    }
    let mine = files.last().map_or_else(
        || "~/.config/mama/trusted".to_string(),
        |p| p.display().to_string(),
    );
    Err(Error::Invalid(format!(
        "refusing to use {what}: the lab {location} may be written by others than you and \
         root ({others}), and they chose that command; if you trust them, add the line \
         `{location}` to {mine} (or {SYSTEM_TRUST} for every user)"
    )))
}

/// The name a trust file gives `store`'s lab: a state file's real path
/// (absolute, its links resolved: one lab, however it is spelled), a
/// database's URL without its password.
fn trust_name(store: &Store) -> String {
    let name = store.for_jobs();
    match std::fs::canonicalize(&name) {
        Ok(real) => real.display().to_string(),
        Err(_) => name.to_string_lossy().into_owned(),
    }
}

/// Who of `writers` is neither `me` nor root, said for people; `None`
/// when nobody is.
fn others(writers: &[Writer], me: u32) -> Option<String> {
    let mut said: Vec<String> = Vec::new();
    let mut say = |text: String| {
        if !said.contains(&text) {
            said.push(text);
        }
    };
    for writer in writers {
        match *writer {
            Writer::User(uid) if uid == me || uid == 0 => {}
            Writer::User(uid) => say(format!("user {}", os::user_name_of(uid))),
            Writer::Everyone => say("every user".to_string()),
            Writer::Group(gid) => match group_members(gid) {
                Some((name, members)) => {
                    let strangers: Vec<String> = members
                        .into_iter()
                        .filter(|&uid| uid != me && uid != 0)
                        .map(os::user_name_of)
                        .collect();
                    if !strangers.is_empty() {
                        say(format!("group {name}: {}", strangers.join(", ")));
                    }
                }
                None => say(format!("group {gid}, whose members cannot be told")),
            },
        }
    }
    (!said.is_empty()).then(|| said.join("; "))
}

/// The name of group `gid` and its members, from /etc/group (its member
/// list) and /etc/passwd (those whose primary group it is); `None` when the
/// group is not there (its members are kept elsewhere).
fn group_members(gid: u32) -> Option<(String, Vec<u32>)> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let users: Vec<(&str, u32, u32)> = passwd
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(':');
            let name = parts.next()?;
            let uid = parts.nth(1)?.parse().ok()?;
            let gid = parts.next()?.parse().ok()?;
            Some((name, uid, gid))
        })
        .collect();
    let line = groups.lines().find(|line| {
        line.split(':')
            .nth(2)
            .and_then(|g| g.parse::<u32>().ok())
            .is_some_and(|g| g == gid)
    })?;
    let fields: Vec<&str> = line.split(':').collect();
    let name = fields.first()?.to_string();
    let mut members: Vec<u32> = users
        .iter()
        .filter(|(_, _, g)| *g == gid)
        .map(|(_, uid, _)| *uid)
        .collect();
    for member in fields
        .get(3)
        .unwrap_or(&"")
        .split(',')
        .filter(|m| !m.is_empty())
    {
        match users.iter().find(|(name, _, _)| *name == member) {
            Some((_, uid, _)) => members.push(*uid),
            // A member the password file does not know: someone, not us.
            None => members.push(u32::MAX),
        }
    }
    members.sort_unstable();
    members.dedup();
    Some((name, members))
}

/// The trust files that count for user `me`: the system's, then the
/// user's own.
fn trust_files(me: u32) -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from(SYSTEM_TRUST)];
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| os::home_of(me).map(|home| home.join(".config")));
    if let Some(config) = config {
        files.push(config.join("mama").join("trusted"));
    }
    files
}

/// Whether the trust file `file` names `location` (or `*`); a file that
/// someone else than its owner (`me` or root) may write counts for
/// nothing, and says so.
fn names(file: &Path, location: &str, me: u32) -> bool {
    let Ok(meta) = std::fs::metadata(file) else {
        return false;
    };
    let owner_ok = meta.uid() == me || meta.uid() == 0;
    if !owner_ok || meta.mode() & 0o022 != 0 || !meta.is_file() {
        say!(
            "mama: ignoring {}: only its owner, you or root, may be able to write it",
            file.display()
        );
        return false;
    }
    let Ok(text) = std::fs::read_to_string(file) else {
        return false;
    };
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .any(|line| line == "*" || line == location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_others_than_me_and_root_count() {
        assert_eq!(others(&[Writer::User(1000), Writer::User(0)], 1000), None);
        assert!(others(&[Writer::User(1001)], 1000).is_some());
        assert!(others(&[Writer::Everyone], 0).is_some());
    }
}
