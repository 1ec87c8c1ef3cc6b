//! Opening files beside the state file, safely.
//!
//! The lab's folder is shared: any member of its group may plant a file in
//! it, say a symbolic link named like the history log pointing at a system
//! file that root's next write would create, truncate or hand to the group,
//! or rename the folder itself and put another in its place. So the folder
//! of the state file is opened once, when the state file is located, by a
//! walk from `/` that judges every link on the way ([`Dir::root`],
//! [`Dir::step`]; see [`crate::backend::file::FileStore::locate`]), and
//! every file mama keeps beside the state file is then opened, created,
//! renamed and removed through that descriptor ([`Dir`]'s methods take a
//! name in the folder, never a path; paths are kept for messages only). A
//! folder swapped after mama started redirects nothing. Each file is opened
//! never following a link in its name (`O_NOFOLLOW`), close-on-exec, and
//! must turn out to be what mama keeps there: a regular file, or a folder
//! for the machine locks. A planted link, FIFO, device or folder is an
//! error naming it, never followed and never written through.
//!
//! Files are made like the state file: temporary files are created fresh
//! (`O_EXCL`, after removing a leftover; removing never follows a link),
//! private (mode 0600) while their data is written, and only then given the
//! state file's mode, owner, group, ACLs and extended attributes
//! ([`make_like`]); then they replace their target by a rename
//! ([`Dir::replace`]). Lock files and the folder of machine locks are open
//! to those who may write the state file, and to no one else
//! ([`lock_mode`]).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Whether an I/O error means that this user may not write there (no
/// permission, or a read-only file system).
pub fn is_read_only(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    )
}

/// An I/O error doing `action` to `path`; one that means "this user may not
/// write here" is [`Error::ReadOnly`], so callers can fall back to reading.
pub fn error(action: &str, path: &Path, e: io::Error) -> Error {
    if is_read_only(&e) {
        Error::ReadOnly {
            context: format!("cannot {action} {}", path.display()),
            source: e,
        }
    } else {
        Error::io(action, path, e)
    }
}

/// What mama keeps at a name beside the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    File,
    Folder,
}

impl Expect {
    fn noun(self) -> &'static str {
        match self {
            Expect::File => "a regular file",
            Expect::Folder => "a folder",
        }
    }
}

/// What a file type is, for people.
fn describe(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFDIR => "a folder",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR | libc::S_IFBLK => "a device",
        libc::S_IFREG => "a regular file",
        _ => "an unknown kind of file",
    }
}

fn planted(path: &Path, what: &'static str, expect: Expect) -> Error {
    Error::Planted {
        path: path.to_path_buf(),
        what,
        expected: expect.noun(),
    }
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`, as a file.
fn open_in(dir: RawFd, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<File> {
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// What is at a name in a folder, as `fstatat` tells without following a
/// link.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    mode: libc::mode_t,
    uid: libc::uid_t,
    gid: libc::gid_t,
    dev: libc::dev_t,
    ino: libc::ino_t,
}

impl Entry {
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }

    /// Its owner.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Its group.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// Its permission bits, setgid and sticky bits included.
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }

    /// Its device, for /proc/locks.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Whether `meta` is of this same file (device and inode).
    pub fn is(&self, meta: &Metadata) -> bool {
        meta.dev() == self.dev && meta.ino() == self.ino
    }
}

/// A folder, opened without following a link, and the path it had then
/// (for messages only: every file in it is reached through the descriptor,
/// wherever the folder is by now). The lab's folder is opened to read (it
/// is synced after a rename, and listed); the folders a walk passes
/// through, and the folder of machine locks, need no more than a search
/// (`O_PATH`).
#[derive(Debug)]
pub struct Dir {
    file: File,
    path: PathBuf,
}

impl Dir {
    /// Opens the folder `path`, walked to from `/` (or from the current
    /// folder, for a relative path) one folder at a time without following
    /// any link: a link anywhere on it is an error. For tools and tests:
    /// mama reaches the lab's folder by a walk that judges the links on the
    /// way (see [`crate::backend::file::FileStore::locate`]).
    pub fn open(path: &Path) -> Result<Dir> {
        use std::path::Component;
        let walked = path
            .components()
            .try_fold(None::<Dir>, |at, part| {
                let at = match at {
                    Some(at) => at,
                    None if path.is_absolute() => Dir::root()?,
                    None => Dir::here()?,
                };
                match part {
                    Component::Normal(name) => at.step(name),
                    Component::ParentDir => at.step(OsStr::new("..")),
                    _ => Ok(at),
                }
                .map(Some)
            })
            .and_then(|at| match at {
                Some(at) => at.readable(),
                None => Dir::here()?.readable(),
            });
        let mut dir = walked.map_err(|e| Error::io("open the folder", path, e))?;
        dir.path = path.to_path_buf();
        Ok(dir)
    }

    /// The current folder (for [`Dir::open`]).
    fn here() -> io::Result<Dir> {
        let file = open_in(libc::AT_FDCWD, c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok(Dir {
            file,
            path: PathBuf::from("."),
        })
    }

    /// The root folder, where a walk to the state file starts.
    pub fn root() -> io::Result<Dir> {
        let file = open_in(libc::AT_FDCWD, c"/", libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok(Dir {
            file,
            path: PathBuf::from("/"),
        })
    }

    /// The folder `name` in this one, never through a link, opened for a
    /// walk through it (search only: `O_PATH`).
    pub fn step(&self, name: &OsStr) -> io::Result<Dir> {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let file = open_in(self.fd(), &c_name(name)?, flags, 0)?;
        Ok(Dir {
            file,
            path: self.child(name),
        })
    }

    /// This same folder, opened again to read (what the lab's folder needs:
    /// it is synced and listed).
    pub fn readable(&self) -> io::Result<Dir> {
        let file = open_in(self.fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(Dir {
            file,
            path: self.path.clone(),
        })
    }

    /// What is at `name` in this folder (a link is described, not
    /// followed).
    pub fn entry(&self, name: &OsStr) -> io::Result<Entry> {
        let c = c_name(name)?;
        // SAFETY: plain data, which fstatat fills in on success.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor, C string and buffer.
        let rc =
            unsafe { libc::fstatat(self.fd(), c.as_ptr(), &mut stat, libc::AT_SYMLINK_NOFOLLOW) };
        check(rc)?;
        Ok(Entry {
            mode: stat.st_mode,
            uid: stat.st_uid,
            gid: stat.st_gid,
            dev: stat.st_dev,
            ino: stat.st_ino,
        })
    }

    /// Where the symbolic link `name` in this folder points.
    pub fn read_link(&self, name: &OsStr) -> io::Result<PathBuf> {
        let c = c_name(name)?;
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: a valid descriptor and C string; `buf` is valid for
            // its length.
            let got = unsafe {
                libc::readlinkat(self.fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if got < 0 {
                return Err(io::Error::last_os_error());
            }
            let got = got as usize;
            if got < buf.len() {
                buf.truncate(got);
                return Ok(PathBuf::from(OsString::from_vec(buf)));
            }
            if buf.len() >= 1 << 16 {
                return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
            }
            buf.resize(buf.len() * 2, 0);
        }
    }

    /// Gives this folder the group `gid` and the mode `mode` (see
    /// [`set_group_and_mode_to`]); the folder must have been opened to read
    /// ([`Dir::readable`]).
    pub fn set_group_and_mode(&self, gid: u32, mode: u32) -> Result<()> {
        set_group_and_mode_to(&self.file, gid, mode)
            .map_err(|e| error("change the group and mode of", &self.path, e))
    }

    /// The folder's own metadata (of the folder opened, whatever is at its
    /// path by now).
    pub fn metadata(&self) -> io::Result<Metadata> {
        self.file.metadata()
    }

    /// The names of the folder's entries whose inode number `wanted`
    /// accepts. Only those names are copied: a look at a folder of
    /// thousands of lock files for the few that matter allocates for those
    /// few.
    pub fn entries_with_inodes(&self, wanted: impl Fn(u64) -> bool) -> io::Result<Vec<OsString>> {
        use std::os::fd::IntoRawFd;
        // A descriptor of its own, to read from the start.
        let fd = open_in(self.fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?.into_raw_fd();
        // SAFETY: `fd` is an open folder that nothing else owns; on success
        // the stream owns it (closedir closes it), else it is closed here.
        let stream = unsafe { libc::fdopendir(fd) };
        if stream.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: our own descriptor, closed once.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut names = Vec::new();
        loop {
            // SAFETY: `stream` is open; the entry it returns stays valid
            // until the next call on it, and is read before that.
            let entry = unsafe { libc::readdir64(stream) };
            if entry.is_null() {
                break;
            }
            // SAFETY: as above; d_name is a NUL-terminated name within it.
            let (ino, name) = unsafe { ((*entry).d_ino, CStr::from_ptr((*entry).d_name.as_ptr())) };
            if wanted(ino) {
                names.push(OsString::from_vec(name.to_bytes().to_vec()));
            }
        }
        // SAFETY: closes the stream (and its descriptor) once.
        unsafe { libc::closedir(stream) };
        Ok(names)
    }

    /// The mode a new state file gets in this folder: what the umask lets
    /// through, and read and write for the group in a folder set up for a
    /// group to share (see [`is_shared_folder`]), as the folder is now.
    pub fn new_file_mode(&self) -> u32 {
        let shared = self
            .file
            .metadata()
            .is_ok_and(|meta| is_shared_folder(meta.mode()));
        new_file_mode(shared)
    }

    /// The path the folder had when it was opened, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this folder, for messages.
    pub fn child(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The error for a failed open of `name` here: a planted file when what
    /// is there is not what mama keeps there, else the I/O error.
    fn refuse(&self, name: &OsStr, e: io::Error, expect: Expect, action: &str) -> Error {
        let path = self.child(name);
        let suspicious = match e.raw_os_error() {
            Some(libc::ELOOP | libc::ENXIO) => true,
            Some(libc::ENOTDIR) => expect == Expect::Folder,
            Some(libc::EISDIR) => expect == Expect::File,
            _ => false,
        };
        if suspicious && let Ok(found) = self.entry(name) {
            let wanted = match expect {
                Expect::File => libc::S_IFREG,
                Expect::Folder => libc::S_IFDIR,
            };
            if found.mode & libc::S_IFMT != wanted {
                return planted(&path, describe(found.mode), expect);
            }
        }
        error(action, &path, e)
    }

    /// `openat` in this folder, never following a link, close-on-exec and
    /// non-blocking (a planted FIFO must not hang mama; see [`Dir::regular`]).
    fn open_at(&self, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let flags = flags | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        open_in(self.fd(), &c_name(name)?, flags, mode)
    }

    /// `file` if it is a regular file with one link (made blocking again),
    /// else an error naming what it is. A second link is how a file from
    /// elsewhere on the file system would be planted here (O_NOFOLLOW does
    /// not see hard links), and mama writes, chmods and chgrps these files;
    /// none of its own ever has two. None at all is the state file that a
    /// writer's rename replaced between the open and this look: a reader
    /// of it reads a whole old version, and a lock on it is let go and
    /// taken again on the new file (see `FileStore::lock_state`).
    fn regular(&self, file: File, name: &OsStr) -> Result<File> {
        let path = self.child(name);
        let meta = file.metadata().map_err(|e| Error::io("read", &path, e))?;
        if !meta.file_type().is_file() {
            return Err(planted(&path, describe(meta.mode()), Expect::File));
        }
        if meta.nlink() > 1 {
            return Err(planted(&path, crate::error::HARD_LINK, Expect::File));
        }
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor `file` owns; results are checked.
        let rc = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK)
            }
        };
        check(rc).map_err(|e| Error::io("open", &path, e))?;
        Ok(file)
    }

    /// Opens an existing regular file; `None` when there is none.
    fn existing(&self, name: &OsStr, write: bool, action: &str) -> Result<Option<File>> {
        let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
        match self.open_at(name, flags, 0) {
            Ok(file) => self.regular(file, name).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.refuse(name, e, Expect::File, action)),
        }
    }

    /// Creates a new regular file (never one that exists, never through a
    /// link).
    fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        self.open_at(name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, mode)
    }

    /// Removes `name` if it is there (a link is removed, never followed).
    fn remove(&self, name: &OsStr) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: a valid descriptor and C string.
        let rc = unsafe { libc::unlinkat(self.fd(), c.as_ptr(), 0) };
        match check(rc) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (from, to) = (c_name(from)?, c_name(to)?);
        let fd = self.fd();
        // SAFETY: a valid descriptor and C strings.
        check(unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) })
    }

    /// Renames `from` to `to` unless something is at `to`: `Ok(false)`
    /// then, and nothing moved. Where the file system cannot rename so,
    /// `from` is linked to `to` (which fails the same way), then removed.
    fn rename_new(&self, from: &OsStr, to: &OsStr) -> io::Result<bool> {
        let (from_c, to_c) = (c_name(from)?, c_name(to)?);
        let fd = self.fd();
        // SAFETY: a valid descriptor and C strings.
        let renamed = check(unsafe {
            libc::renameat2(
                fd,
                from_c.as_ptr(),
                fd,
                to_c.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        });
        let done = match renamed {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                // SAFETY: a valid descriptor and C strings.
                check(unsafe { libc::linkat(fd, from_c.as_ptr(), fd, to_c.as_ptr(), 0) })
                    .and_then(|()| self.remove(from))
            }
            other => other,
        };
        match done {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("sync the folder", &self.path, e))
    }
}

/// The mask of the process (read without changing it where /proc tells),
/// read once: mama never changes it, and a transaction asks for it at each
/// file it writes.
fn umask() -> u32 {
    static MASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MASK.get_or_init(read_umask)
}

fn read_umask() -> u32 {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(mask) = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
    {
        return mask;
    }
    // SAFETY: umask cannot fail; the old mask is put back at once.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old as u32
    }
}

/// The mode a new state file gets: what the umask lets through of 0666,
/// and read and write for the group where `shared_folder` (see
/// [`is_shared_folder`]).
pub fn new_file_mode(shared_folder: bool) -> u32 {
    let mode = 0o666 & !umask();
    if shared_folder { mode | 0o060 } else { mode }
}

/// Whether a folder of mode `mode` is set up for a group to share: its
/// group may write it, and new files in it take its group (setgid). A lab
/// made in such a folder is its group's from the first command: every file
/// mama creates there is open to the group as to its owner, whatever the
/// creator's umask.
pub fn is_shared_folder(mode: u32) -> bool {
    mode & 0o2020 == 0o2020
}

/// The state file's permission bits (`fresh`, a new one's, when there is
/// none yet).
fn state_mode(like: Option<&Metadata>, fresh: u32) -> u32 {
    like.map_or(fresh, |m| m.mode() & 0o777)
}

/// The mode of a lock file: read and write for each class (owner, group,
/// others) that may write the state file (`like`; a new state file's mode
/// `fresh` when there is none yet), nothing for the others. Who may open
/// a lock file may hold it, and so stop every writer: readers who may not
/// open it read without it.
pub fn lock_mode(like: Option<&Metadata>, fresh: u32) -> u32 {
    let mode = state_mode(like, fresh);
    let mut out = 0;
    for shift in [6, 3, 0] {
        if mode & (0o2 << shift) != 0 {
            out |= 0o6 << shift;
        }
    }
    out
}

/// The mode of the folder of machine locks: `rwx` for the classes that may
/// write the state file.
pub fn folder_mode(like: Option<&Metadata>, fresh: u32) -> u32 {
    let mode = lock_mode(like, fresh);
    mode | ((mode & 0o444) >> 2)
}

/// Gives `fd` the group of `like` (as far as this user may) and `mode`.
fn set_group_and_mode(file: &File, like: Option<&Metadata>, mode: u32) -> io::Result<()> {
    if let Some(like) = like {
        let _ = std::os::unix::fs::fchown(file, None, Some(like.gid()));
    }
    // SAFETY: fchmod on a descriptor `file` owns.
    check(unsafe { libc::fchmod(file.as_raw_fd(), mode as libc::mode_t) })
}

/// Gives `file` (a file or folder this user owns, or any for root) the
/// group `gid` and the mode `mode`, group first (a change of group may
/// clear a setgid bit).
pub fn set_group_and_mode_to(file: &File, gid: u32, mode: u32) -> io::Result<()> {
    std::os::unix::fs::fchown(file, None, Some(gid))?;
    // SAFETY: fchmod on a descriptor `file` owns.
    check(unsafe { libc::fchmod(file.as_raw_fd(), mode as libc::mode_t) })
}

/// Brings a lock file this user owns in line with the state
/// file's mode and group; best effort.
fn follow_state(file: &File, like: Option<&Metadata>, mode: u32) {
    let Some(like) = like else { return };
    let Ok(mine) = file.metadata() else { return };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    // Only a file of this user's own, and not root's privilege over
    // others' files: a name beside the state can be swapped for a link to
    // any file between the open and the look at its link count, and a
    // chmod through it would hand that file to the lab.
    if mine.uid() == me
        && mine.nlink() == 1
        && (mine.mode() & 0o7777 != mode || mine.gid() != like.gid())
    {
        let _ = set_group_and_mode(file, Some(like), mode);
    }
}

/// The files mama keeps in a folder, each named in it.
impl Dir {
    /// Removes the file `name` (never following a link: a link there is
    /// removed, not its target); a missing file is not an error.
    pub fn remove_file(&self, name: &OsStr) -> Result<()> {
        self.remove(name)
            .map_err(|e| error("remove", &self.child(name), e))
    }

    /// Renames the file `from` to `to` (the log to its segment) unless
    /// something is at `to` (then `false`, nothing moved), and syncs the
    /// folder. Neither name is followed as a link: the rename moves names.
    pub fn rename_aside(&self, from: &OsStr, to: &OsStr) -> Result<bool> {
        match self.rename_new(from, to) {
            Ok(true) => self.sync().map(|()| true),
            Ok(false) => Ok(false),
            Err(e) => Err(error("rename", &self.child(from), e)),
        }
    }

    /// Opens the regular file `name` (read-only, or read-write with
    /// `write`); `None` when it does not exist.
    pub fn open_file(&self, name: &OsStr, write: bool) -> Result<Option<File>> {
        self.existing(name, write, "open")
    }

    /// Whether this user may write the file `name` (`access(2)`): an error
    /// that says why not, typed [`Error::ReadOnly`] for a lack of
    /// permission or a read-only file system.
    pub fn may_write(&self, name: &OsStr) -> Result<()> {
        let path = self.child(name);
        let c = c_name(name).map_err(|e| Error::io("write", &path, e))?;
        self.access(&c, &path)
    }

    /// Whether this user may write this folder (see [`Dir::may_write`]).
    pub fn may_write_here(&self) -> Result<()> {
        self.access(c".", &self.path)
    }

    fn access(&self, name: &CStr, path: &Path) -> Result<()> {
        // SAFETY: a valid descriptor and C string.
        let rc = unsafe { libc::faccessat(self.fd(), name.as_ptr(), libc::W_OK, 0) };
        check(rc).map_err(|e| error("write", path, e))
    }

    /// The folder `name` in this one (never through a link), opened for
    /// the files in it; `None` when there is none. A link or anything but
    /// a folder there is an error naming it.
    pub fn folder(&self, name: &OsStr) -> Result<Option<Dir>> {
        match self.step(name) {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.refuse(name, e, Expect::Folder, "open the folder")),
        }
    }

    /// The folder `name` in this one (the machine locks), made when it is
    /// missing: a new one gets [`folder_mode`] and the state file's group.
    /// A link or a file there is an error naming it.
    pub fn ensure_folder(&self, name: &OsStr, like: Option<&Metadata>) -> Result<Dir> {
        if let Some(dir) = self.folder(name)? {
            return Ok(dir);
        }
        let path = self.child(name);
        let mode = folder_mode(like, self.new_file_mode());
        let c = c_name(name).map_err(|e| Error::io("create", &path, e))?;
        // SAFETY: a valid descriptor and C string.
        let rc = unsafe { libc::mkdirat(self.fd(), c.as_ptr(), mode as libc::mode_t) };
        match check(rc) {
            Ok(()) => {
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                let file = open_in(self.fd(), &c, flags, 0)
                    .map_err(|e| self.refuse(name, e, Expect::Folder, "open the folder"))?;
                set_group_and_mode(&file, like, mode)
                    .map_err(|e| error("set the mode of", &path, e))?;
                Ok(Dir { file, path })
            }
            // Another process made it meanwhile (or planted something: the
            // open says what).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self
                .folder(name)?
                .ok_or_else(|| error("open the folder", &path, e)),
            Err(e) => Err(error("create", &path, e)),
        }
    }

    /// Opens (creating it if needed) the lock file `name`. A lock file that
    /// this user may not write is opened read-only: `flock` works on any
    /// open file. A new lock file gets [`lock_mode`] and the state file's
    /// group; an existing one that this user owns is brought in line with
    /// them, so a lock file follows the state file when its mode changes.
    pub fn open_lock(&self, name: &OsStr, like: Option<&Metadata>) -> Result<File> {
        let path = self.child(name);
        let mode = lock_mode(like, self.new_file_mode());
        // Another process may create or remove it between two tries; a
        // planted link fails at once (O_NOFOLLOW), so this never spins.
        for _ in 0..100 {
            match self.open_at(name, libc::O_RDWR, 0) {
                Ok(file) => {
                    let file = self.regular(file, name)?;
                    follow_state(&file, like, mode);
                    return Ok(file);
                }
                Err(e) if is_read_only(&e) => {
                    return match self.open_at(name, libc::O_RDONLY, 0) {
                        Ok(file) => self.regular(file, name),
                        Err(e) => Err(self.refuse(name, e, Expect::File, "open the lock file")),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.refuse(name, e, Expect::File, "open the lock file")),
            }
            match self.create_new(name, mode) {
                Ok(file) => {
                    // The umask may have narrowed the mode.
                    set_group_and_mode(&file, like, mode)
                        .map_err(|e| error("set the mode of", &path, e))?;
                    return Ok(file);
                }
                // Another process created it meanwhile: open theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.refuse(name, e, Expect::File, "create the lock file")),
            }
        }
        Err(Error::Invalid(format!(
            "cannot open the lock file {}: it keeps appearing and disappearing",
            path.display()
        )))
    }

    /// Opens the regular file `name` for reading and writing, creating it
    /// made like the state file (see [`make_like`]) when it does not exist.
    /// Returns the file and whether it was created.
    pub fn open_or_create(&self, name: &OsStr, like: Option<&Metadata>) -> Result<(File, bool)> {
        let path = self.child(name);
        // As in open_lock: a race, never a planted link, makes it try again.
        for _ in 0..100 {
            if let Some(file) = self.existing(name, true, "open")? {
                return Ok((file, false));
            }
            match self.create_new(name, 0o600) {
                Ok(file) => {
                    make_like(&file, &path, like, None, self.new_file_mode())?;
                    return Ok((file, true));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.refuse(name, e, Expect::File, "create")),
            }
        }
        Err(Error::Invalid(format!(
            "cannot open {}: it keeps appearing and disappearing",
            path.display()
        )))
    }

    /// Creates the temporary file `name` afresh: a leftover (or anything
    /// planted there) is removed first, never followed, and the new file is
    /// created exclusively, mode 0600 whatever the umask.
    pub fn create_temp(&self, name: &OsStr) -> Result<File> {
        let path = self.child(name);
        self.remove(name)
            .map_err(|e| self.refuse(name, e, Expect::File, "remove the leftover"))?;
        let file = self
            .create_new(name, 0o600)
            .map_err(|e| self.refuse(name, e, Expect::File, "create"))?;
        // SAFETY: fchmod on a descriptor `file` owns (the umask may only
        // have narrowed 0600; this is for clarity, not safety).
        check(unsafe { libc::fchmod(file.as_raw_fd(), 0o600) })
            .map_err(|e| error("set the mode of", &path, e))?;
        Ok(file)
    }

    /// Replaces `target` with `bytes`, atomically: the temporary file
    /// `temp` (in this folder too) is created afresh and private
    /// ([`Dir::create_temp`]), written, made like the state file (`like`,
    /// with the extended attributes of `xattrs_from`, the file being
    /// replaced), synced, renamed over `target`, and the folder synced. On
    /// any failure the temporary file is removed and `target` is untouched.
    pub fn replace(
        &self,
        target: &OsStr,
        temp: &OsStr,
        bytes: &[u8],
        like: Option<&Metadata>,
        xattrs_from: Option<&File>,
    ) -> Result<()> {
        self.replace_with(target, temp, &[bytes], like, xattrs_from)
    }

    /// [`Dir::replace`] with the new content given as pieces, written one
    /// after the other (a large state file is mostly spans of the text it
    /// was read from, never copied into one buffer).
    pub fn replace_with(
        &self,
        target: &OsStr,
        temp: &OsStr,
        pieces: &[&[u8]],
        like: Option<&Metadata>,
        xattrs_from: Option<&File>,
    ) -> Result<()> {
        self.write_temp(temp, target, pieces, like, xattrs_from)?;
        if let Err(e) = self.rename(temp, target) {
            let _ = self.remove(temp);
            return Err(error("replace", &self.child(target), e));
        }
        self.sync()
    }

    /// Creates `target` holding `bytes`, whole at once and never over a
    /// file that is there: the temporary file `temp` (in this folder too)
    /// is written, given the mode of a new state file, synced, and renamed
    /// to `target` only if nothing is at `target` yet; then the folder is
    /// synced. `false` (and nothing changed) when a file was there first.
    pub fn create_whole(&self, target: &OsStr, temp: &OsStr, bytes: &[u8]) -> Result<bool> {
        self.write_temp(temp, target, &[bytes], None, None)?;
        match self.rename_new(temp, target) {
            Ok(true) => self.sync().map(|()| true),
            Ok(false) => {
                let _ = self.remove(temp);
                Ok(false)
            }
            Err(e) => {
                let _ = self.remove(temp);
                Err(error("create", &self.child(target), e))
            }
        }
    }

    /// Writes `pieces` into the fresh temporary file `temp`, made like
    /// `target` would be (mode, owner, group, ACLs and extended attributes
    /// of `like` and `xattrs_from`), and syncs it; removes it again when
    /// any of that fails.
    fn write_temp(
        &self,
        temp: &OsStr,
        target: &OsStr,
        pieces: &[&[u8]],
        like: Option<&Metadata>,
        xattrs_from: Option<&File>,
    ) -> Result<()> {
        let (target_path, temp_path) = (self.child(target), self.child(temp));
        let mut file = self.create_temp(temp)?;
        let written = write_all_vectored(&mut file, pieces)
            .map_err(|e| error("write", &temp_path, e))
            .and_then(|()| make_like(&file, &target_path, like, xattrs_from, self.new_file_mode()))
            .and_then(|()| file.sync_all().map_err(|e| error("write", &temp_path, e)));
        drop(file);
        if written.is_err() {
            let _ = self.remove(temp);
        }
        written
    }
}

/// Writes every piece, in order, with as few system calls as the kernel
/// allows (`writev`, up to 1,024 pieces a call, short writes resumed).
fn write_all_vectored(file: &mut File, pieces: &[&[u8]]) -> std::io::Result<()> {
    use std::io::IoSlice;
    let mut pieces: Vec<&[u8]> = pieces.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut first = 0;
    while first < pieces.len() {
        let slices: Vec<IoSlice<'_>> = pieces[first..]
            .iter()
            .take(1024)
            .map(|piece| IoSlice::new(piece))
            .collect();
        let mut written = match file.write_vectored(&slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while first < pieces.len() && written >= pieces[first].len() {
            written -= pieces[first].len();
            first += 1;
        }
        if written > 0 {
            pieces[first] = &pieces[first][written..];
        }
    }
    Ok(())
}

/// Makes `file` (a new file that is to become or sit beside `target`) like
/// the state file `like`: its owner and group as far as this user may (a
/// non-root user keeps the group if they belong to it), its mode, then its
/// ACLs and other extended attributes, copied from `xattrs_from`. Without
/// `like` (no state file yet) the mode is `fresh` (see
/// [`Dir::new_file_mode`]). An
/// attribute that cannot be copied is an error naming it: mama would
/// rather not write than drop an ACL.
pub fn make_like(
    file: &File,
    target: &Path,
    like: Option<&Metadata>,
    xattrs_from: Option<&File>,
    fresh: u32,
) -> Result<()> {
    let mode = match like {
        Some(like) => {
            let mine = file.metadata().map_err(|e| Error::io("read", target, e))?;
            if (mine.uid() != like.uid() || mine.gid() != like.gid())
                && std::os::unix::fs::fchown(file, Some(like.uid()), Some(like.gid())).is_err()
            {
                let _ = std::os::unix::fs::fchown(file, None, Some(like.gid()));
            }
            like.mode() & 0o7777
        }
        None => fresh,
    };
    // Mode first: an ACL sets the group bits (its mask) in turn.
    // SAFETY: fchmod on a descriptor `file` owns.
    check(unsafe { libc::fchmod(file.as_raw_fd(), mode as libc::mode_t) })
        .map_err(|e| error("set the mode of", target, e))?;
    if let Some(from) = xattrs_from {
        copy_xattrs(from, file, target)?;
    }
    Ok(())
}

/// Reads an extended attribute's list or value: `call(buf, len)` is the
/// system call, asked first for the size.
fn read_sized(mut call: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr().cast(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        // It grew in between: ask again.
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

/// Who may write `file`: its owner (who may change its mode at will), its
/// group where the group may, everyone where others may, and the users and groups its
/// ACL lets write (the ACL's mask taken into account).
pub fn writers_of(file: &File) -> io::Result<Vec<crate::backend::Writer>> {
    use crate::backend::Writer;
    let meta = file.metadata()?;
    let mode = meta.mode();
    // The owner may make it writable whatever its mode says.
    let mut writers = vec![Writer::User(meta.uid())];
    if mode & 0o002 != 0 {
        writers.push(Writer::Everyone);
    }
    let acl = match CString::new("system.posix_acl_access") {
        Ok(name) => match get_xattr(file, &name) {
            Ok(acl) => Some(acl),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => None,
            Err(e) => return Err(e),
        },
        Err(_) => None,
    };
    match acl {
        // With an ACL, the group bits of the mode are its mask: named
        // entries and the owning group write where the mask lets them.
        Some(acl) => {
            let mask_writes = mode & 0o020 != 0;
            // A version (u32), then entries of tag (u16), permissions
            // (u16) and id (u32), little-endian.
            for entry in acl.get(4..).unwrap_or_default().chunks_exact(8) {
                let tag = u16::from_le_bytes([entry[0], entry[1]]);
                let perm = u16::from_le_bytes([entry[2], entry[3]]);
                let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
                if perm & 2 == 0 || !mask_writes {
                    continue;
                }
                match tag {
                    0x02 => writers.push(Writer::User(id)),
                    0x04 => writers.push(Writer::Group(meta.gid())),
                    0x08 => writers.push(Writer::Group(id)),
                    _ => {}
                }
            }
        }
        None if mode & 0o020 != 0 => writers.push(Writer::Group(meta.gid())),
        None => {}
    }
    Ok(writers)
}

impl Dir {
    /// Who may put another file in place of one in this folder: those who
    /// may write it, unless it is sticky (then only a file's owner and the
    /// folder's may).
    pub fn replacers(&self) -> io::Result<Vec<crate::backend::Writer>> {
        let meta = self.file.metadata()?;
        if meta.mode() & 0o1000 != 0 {
            return Ok(vec![crate::backend::Writer::User(meta.uid())]);
        }
        writers_of(&self.file)
    }
}

fn get_xattr(file: &File, name: &CString) -> io::Result<Vec<u8>> {
    let fd = file.as_raw_fd();
    // SAFETY: a valid descriptor and C string; `buf` is valid for `len`
    // bytes (or null with 0, the size query).
    read_sized(|buf, len| unsafe { libc::fgetxattr(fd, name.as_ptr(), buf, len) })
}

/// Copies every extended attribute (ACLs included) of `from` to `to`.
fn copy_xattrs(from: &File, to: &File, target: &Path) -> Result<()> {
    let fd = from.as_raw_fd();
    // SAFETY: a valid descriptor; `buf` is valid for `len` bytes (or null
    // with 0, the size query).
    let list = match read_sized(|buf, len| unsafe { libc::flistxattr(fd, buf.cast(), len) }) {
        Ok(list) => list,
        // A file system without extended attributes has none to keep.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(Error::io("read the extended attributes of", target, e)),
    };
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let shown = String::from_utf8_lossy(name).into_owned();
        let refused = |e: io::Error| {
            Error::Invalid(format!(
                "cannot keep the extended attribute {shown} of {}: {e}; \
                 mama will not write the file without it (it was left unchanged)",
                target.display()
            ))
        };
        let c =
            CString::new(name).map_err(|_| refused(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let value = match get_xattr(from, &c) {
            Ok(value) => value,
            // Removed in between: nothing to keep.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(refused(e)),
        };
        // Already there (a security label the system gave the new file).
        if get_xattr(to, &c).is_ok_and(|have| have == value) {
            continue;
        }
        // SAFETY: a valid descriptor, C string and buffer of that length.
        let rc = unsafe {
            libc::fsetxattr(
                to.as_raw_fd(),
                c.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        check(rc).map_err(refused)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn meta_with_mode(dir: &Path, mode: u32) -> Metadata {
        let path = dir.join(format!("state-{mode:o}"));
        std::fs::write(&path, "").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        std::fs::metadata(&path).expect("metadata")
    }

    fn name(name: &str) -> &OsStr {
        OsStr::new(name)
    }

    #[test]
    fn a_folder_gives_the_names_of_the_inodes_asked_for() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut inodes = Vec::new();
        for name in ["a.lock", "b.lock", "c%20d.lock"] {
            let path = dir.path().join(name);
            std::fs::write(&path, "").expect("a file");
            inodes.push(std::fs::metadata(&path).expect("its inode").ino());
        }
        let wanted = [inodes[0], inodes[2]];
        let folder = Dir::open(dir.path()).expect("the folder");
        let mut names = folder
            .entries_with_inodes(|ino| wanted.contains(&ino))
            .expect("the folder's entries");
        names.sort();
        assert_eq!(names, ["a.lock", "c%20d.lock"]);
        // Never through a link.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("a link");
        assert!(Dir::open(&link).is_err());
        let err = folder.folder(name("link")).expect_err("a link is refused");
        assert!(matches!(err, Error::Planted { .. }), "{err}");
        assert!(folder.folder(name("none")).expect("no error").is_none());
    }

    #[test]
    fn lock_files_open_only_to_those_who_may_write_the_state() {
        let dir = tempfile::tempdir().expect("temporary folder");
        for (state, lock, folder) in [
            (0o664, 0o660, 0o770),
            (0o644, 0o600, 0o700),
            (0o666, 0o666, 0o777),
            (0o640, 0o600, 0o700),
            (0o660, 0o660, 0o770),
            (0o444, 0o000, 0o000),
        ] {
            let like = meta_with_mode(dir.path(), state);
            assert_eq!(lock_mode(Some(&like), 0), lock, "lock for {state:o}");
            assert_eq!(folder_mode(Some(&like), 0), folder, "folder for {state:o}");
        }
    }

    #[test]
    fn a_new_lab_in_a_shared_folder_is_open_to_its_group() {
        let mode_of = |path: &Path| std::fs::metadata(path).expect("metadata").mode() & 0o7777;
        for (folder_mode, shared) in [(0o2775, true), (0o775, false), (0o2755, false)] {
            let dir = tempfile::tempdir().expect("temporary folder");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(folder_mode))
                .expect("chmod");
            let folder = Dir::open(dir.path()).expect("the folder");
            let fresh = 0o666 & !umask();
            let expect = if shared { fresh | 0o060 } else { fresh };
            assert_eq!(folder.new_file_mode(), expect, "{folder_mode:o}");
            folder
                .replace(name("state"), name(".state.tmp"), b"x", None, None)
                .expect("replace");
            assert_eq!(
                mode_of(&dir.path().join("state")),
                expect,
                "{folder_mode:o}"
            );
            folder.open_lock(name("state.lock"), None).expect("a lock");
            let lock = mode_of(&dir.path().join("state.lock"));
            assert_eq!(lock & 0o060 != 0, shared, "{folder_mode:o}: lock {lock:o}");
            folder.open_or_create(name("log"), None).expect("a log");
            assert_eq!(mode_of(&dir.path().join("log")), expect, "{folder_mode:o}");
        }
    }

    #[test]
    fn a_planted_link_is_refused_and_a_temporary_replaces_it() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let folder = Dir::open(dir.path()).expect("the folder");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").expect("write");
        std::os::unix::fs::symlink(&victim, dir.path().join("log")).expect("symlink");
        let err = folder
            .open_file(name("log"), true)
            .expect_err("a link is refused");
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        let err = folder
            .open_or_create(name("log"), None)
            .expect_err("a link is refused");
        assert!(matches!(err, Error::Planted { .. }), "{err}");
        let err = folder
            .open_lock(name("log"), None)
            .expect_err("a link is refused");
        assert!(matches!(err, Error::Planted { .. }), "{err}");
        let temp = dir.path().join("temp");
        std::os::unix::fs::symlink(&victim, &temp).expect("symlink");
        folder
            .replace(name("new"), name("temp"), b"new", None, None)
            .expect("replace");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
        assert!(!temp.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("new")).expect("read"),
            "new"
        );
    }

    #[test]
    fn a_folder_renamed_and_replaced_is_still_the_one_written() {
        let parent = tempfile::tempdir().expect("temporary folder");
        let lab = parent.path().join("lab");
        std::fs::create_dir(&lab).expect("the lab's folder");
        let folder = Dir::root()
            .and_then(|root| {
                lab.components()
                    .skip(1)
                    .try_fold(root, |dir, part| dir.step(part.as_os_str()))
            })
            .and_then(|dir| dir.readable())
            .expect("the lab's folder, walked from /");
        // Another takes its place.
        let moved = parent.path().join("lab.old");
        std::fs::rename(&lab, &moved).expect("rename");
        std::fs::create_dir(&lab).expect("another folder");
        folder
            .replace(name("state"), name(".state.tmp"), b"x", None, None)
            .expect("replace");
        folder.open_lock(name("state.lock"), None).expect("a lock");
        let locks = folder
            .ensure_folder(name("state.locks"), None)
            .expect("the locks");
        locks
            .open_lock(name("rig1.lock"), None)
            .expect("a job lock");
        locks.remove_file(name("rig1.lock")).expect("removed");
        assert_eq!(
            std::fs::read_to_string(moved.join("state")).expect("read"),
            "x"
        );
        assert!(moved.join("state.lock").is_file());
        assert!(moved.join("state.locks").is_dir());
        assert!(!moved.join("state.locks/rig1.lock").exists());
        assert_eq!(std::fs::read_dir(&lab).expect("list").count(), 0);
        // Messages still name the path it was opened by.
        assert_eq!(folder.path(), lab);
    }
}
