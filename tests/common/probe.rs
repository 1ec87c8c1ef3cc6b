//! What the tests need of the machine besides a build: root, and programs
//! that tests/install-tools installs. build.rs includes this file to tell
//! the tests, as `cfg`s, what the machine has (see there); the tests find
//! the PostgreSQL server's programs with it too, so both look alike.
//! Plain std only: build.rs has no dependencies.

use std::path::{Path, PathBuf};

/// The effective user id, as /proc/self/status gives it.
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether /etc/passwd has the user `name`.
pub fn user_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd").is_ok_and(|passwd| {
        passwd
            .lines()
            .any(|line| line.split(':').next() == Some(name))
    })
}

/// The absolute folders of PATH, in order.
pub fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|dir| dir.is_absolute())
        .collect()
}

/// Whether `path` is a file that may be executed.
fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `program` as PATH finds it.
pub fn on_path(program: &str) -> Option<PathBuf> {
    path_dirs()
        .into_iter()
        .map(|dir| dir.join(program))
        .find(|path| executable(path))
}

/// Where Debian keeps the PostgreSQL servers: `VERSION/bin`, off PATH.
pub const DEBIAN_POSTGRESQL: &str = "/usr/lib/postgresql";

/// The folder of the PostgreSQL server's programs (`initdb` and
/// `postgres`): `$MAMA_TEST_PG_BIN` if set, else Debian's newest
/// [`DEBIAN_POSTGRESQL`]`/VERSION/bin`, else the folder on PATH that holds
/// both; none if they are not there.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let both = |dir: &Path| executable(&dir.join("initdb")) && executable(&dir.join("postgres"));
    if let Some(dir) = std::env::var_os("MAMA_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        return both(&dir).then_some(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_POSTGRESQL)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            both(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    path_dirs().into_iter().find(|dir| both(dir))
}
