//! The lab's change notices, which wake the watcher: for a state file,
//! inotify on its folder (a write replaces the file by a rename, which a
//! watch on the file itself would lose), the events filtered for the
//! state file's name; for a database, `LISTEN` on the channel every
//! writing transaction notifies on commit
//! ([`crate::backend::pg::CHANGE_CHANNEL`]).

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use crate::settings::{Location, Settings};

/// How long a lost notice (a folder gone, a database restarting) waits
/// before it is set up again.
const AGAIN: Duration = Duration::from_secs(1);

/// Where the watcher hears of changes.
pub enum Notices {
    File(Inotify),
    Database(Box<Listen>),
    /// No notices (why): the watcher reads the lab at its fallback
    /// interval only.
    None(String),
}

impl Notices {
    pub fn open(settings: &Settings) -> Notices {
        match &settings.state {
            Location::File(path) => match Inotify::open(path) {
                Ok(watch) => Notices::File(watch),
                Err(why) => Notices::None(why),
            },
            Location::Database(url) => {
                let mut listen = Listen {
                    url: (**url).clone(),
                    host_timeout: settings.host_timeout,
                    session: None,
                    schema: String::new(),
                    next_try: Instant::now() + AGAIN,
                };
                // Tried again while waiting, where the server is away now.
                listen.open();
                Notices::Database(Box::new(listen))
            }
        }
    }

    /// Why there are no notices, where there are none.
    pub fn degraded(&self) -> Option<&str> {
        match self {
            Notices::None(why) => Some(why),
            _ => None,
        }
    }

    /// Waits until the lab changes (true) or `deadline` comes (false).
    /// A notice lost and set up again counts as a change: what happened
    /// meanwhile was not told.
    pub fn wait_until(&mut self, deadline: Instant) -> bool {
        match self {
            Notices::File(watch) => watch.wait_until(deadline),
            Notices::Database(listen) => listen.wait_until(deadline),
            Notices::None(_) => {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                false
            }
        }
    }
}

/// An inotify watch on the state file's folder.
pub struct Inotify {
    fd: OwnedFd,
    folder: PathBuf,
    name: OsString,
    /// Whether the watch stands (it goes with its folder).
    watching: bool,
    /// The watch, and the folder it is on (device and inode): a folder
    /// removed or renamed away while a descriptor holds it open (the
    /// lab's store holds one) tells nothing, so the folder at the path is
    /// looked at while waiting.
    wd: Option<libc::c_int>,
    watched: Option<(u64, u64)>,
}

const MASK: u32 = libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CLOSE_WRITE
    | libc::IN_MODIFY
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

impl Inotify {
    fn open(path: &std::path::Path) -> Result<Inotify, String> {
        // The real file: a link to it is followed, as mama follows it.
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let (Some(folder), Some(name)) = (real.parent(), real.file_name()) else {
            return Err(format!("cannot watch {}: no folder", path.display()));
        };
        // SAFETY: plain system call; the descriptor it returns is owned
        // below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(format!(
                "cannot watch the lab's folder: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut watch = Inotify {
            fd,
            folder: folder.to_path_buf(),
            name: name.to_os_string(),
            watching: false,
            wd: None,
            watched: None,
        };
        watch.add()?;
        Ok(watch)
    }

    fn add(&mut self) -> Result<(), String> {
        let folder = CString::new(self.folder.as_os_str().as_bytes())
            .map_err(|_| format!("cannot watch {}", self.folder.display()))?;
        // Before the watch: a folder put in place between the two is seen
        // as another at the next look.
        let watched = self.at_path();
        if let Some(old) = self.wd.take() {
            // SAFETY: a valid descriptor; an old watch, gone or not.
            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), old) };
        }
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), folder.as_ptr(), MASK) };
        if wd < 0 {
            return Err(format!(
                "cannot watch {}: {}",
                self.folder.display(),
                std::io::Error::last_os_error()
            ));
        }
        self.wd = Some(wd);
        self.watched = watched;
        self.watching = true;
        Ok(())
    }

    /// The folder at the watched path now (device and inode).
    fn at_path(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.folder).ok()?;
        Some((meta.dev(), meta.ino()))
    }

    fn wait_until(&mut self, deadline: Instant) -> bool {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if !self.watching {
                // The folder went (renamed, removed): watched again once
                // it is back.
                std::thread::sleep(AGAIN.min(deadline - now));
                if self.add().is_ok() {
                    return true;
                }
                continue;
            }
            // A second at most: then whether the folder is still there.
            let wait = (deadline - now).min(AGAIN).as_millis().max(1) as i32;
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, wait) };
            if ready <= 0 {
                if self.at_path() != self.watched {
                    self.watching = false;
                }
                continue;
            }
            if self.read_events() {
                return true;
            }
        }
    }

    /// Reads every event waiting; whether one concerns the state file (or
    /// the watch itself).
    fn read_events(&mut self) -> bool {
        let mut changed = false;
        // Aligned for `inotify_event`.
        let mut buf = [0u64; 1024];
        loop {
            // SAFETY: reads into a buffer of the size given, owned here.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    std::mem::size_of_val(&buf),
                )
            };
            let Ok(n) = usize::try_from(n) else {
                return changed;
            };
            if n == 0 {
                return changed;
            }
            // SAFETY: the kernel wrote `n` bytes into `buf`; read as bytes.
            let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            let header = std::mem::size_of::<libc::inotify_event>();
            let mut at = 0;
            while at + header <= n {
                // SAFETY: a whole header lies at `at` (checked above);
                // read unaligned, whatever the name lengths before it.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(bytes[at..].as_ptr().cast()) };
                let len = event.len as usize;
                let name_bytes = bytes.get(at + header..at + header + len).unwrap_or(&[]);
                let name = name_bytes.split(|&b| b == 0).next().unwrap_or(&[]);
                at += header + len;
                if event.mask & libc::IN_Q_OVERFLOW != 0 {
                    changed = true;
                }
                // An old watch's last words (its folder replaced).
                if Some(event.wd) != self.wd {
                    continue;
                }
                // The watch gone with its folder, or the folder moved
                // away: watched again where the lab's path leads.
                if event.mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0
                {
                    self.watching = false;
                    changed = true;
                }
                if name == self.name.as_bytes() {
                    changed = true;
                }
            }
        }
    }
}

/// A session listening for the lab's change notices.
pub struct Listen {
    url: crate::settings::url::DbUrl,
    host_timeout: Duration,
    session: Option<postgres::Client>,
    /// The lab's schema: notices name it.
    schema: String,
    /// When to try again to open a lost session.
    next_try: Instant,
}

impl Listen {
    /// Opens the session and listens; whether it could.
    fn open(&mut self) -> bool {
        let Ok(mut session) = crate::backend::pg::connect(&self.url, self.host_timeout) else {
            return false;
        };
        let listening =
            session.batch_execute(&format!("LISTEN {}", crate::backend::pg::CHANGE_CHANNEL));
        let schema = session
            .query_one("SELECT current_schema()::text", &[])
            .ok()
            .and_then(|row| row.get::<_, Option<String>>(0));
        match (listening, schema) {
            (Ok(()), Some(schema)) => {
                self.schema = schema;
                self.session = Some(session);
                true
            }
            _ => false,
        }
    }

    fn wait_until(&mut self, deadline: Instant) -> bool {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let Some(session) = self.session.as_mut() else {
                if now < self.next_try {
                    std::thread::sleep((self.next_try - now).min(deadline - now));
                    continue;
                }
                self.next_try = now + AGAIN;
                if self.open() {
                    // Changes made while nobody listened were not told.
                    return true;
                }
                continue;
            };
            // What came: a notice for this lab (true), one for another
            // (false), nothing (None), the session lost (Err).
            let heard: Result<Option<bool>, ()> = {
                let mut notices = session.notifications();
                let first = notices.timeout_iter(deadline - now).next();
                match first {
                    Ok(Some(notice)) => {
                        let ours = notice.payload() == self.schema;
                        // Take those that came with it: one look.
                        let mut more = notices.iter();
                        let mut also = false;
                        while let Ok(Some(notice)) = more.next() {
                            also |= notice.payload() == self.schema;
                        }
                        Ok(Some(ours || also))
                    }
                    Ok(None) => Ok(None),
                    Err(_) => Err(()),
                }
            };
            match heard {
                Ok(Some(true)) => return true,
                Ok(Some(false)) => {}
                // Nothing came: at the deadline, or (returning early) a
                // session that ended, which is asked.
                Ok(None)
                    if !session.is_closed()
                        && (Instant::now() >= deadline || session.is_valid(AGAIN).is_ok()) => {}
                Ok(None) | Err(()) => {
                    self.session = None;
                    return true;
                }
            }
        }
    }
}
