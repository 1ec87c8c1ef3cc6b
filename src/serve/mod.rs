//! `mama serve`: a read-only web server for the lab — a status page that
//! updates itself, a page a machine, Prometheus metrics and the lab as
//! JSON — and the lab's reminders (`expiring`, and the `expired` end of a
//! reservation nothing else ended).
//!
//! One watcher (the main thread) looks at the lab once a change notice
//! comes (`watch`: inotify on a state file's folder, `LISTEN` on a
//! database), renders what every page shows once, and hands it to the
//! connections (`http`), which only ever read what was published: a
//! browser never makes the server read the lab.
//!
//! A module of its own, on a floor above the command line: nothing of it
//! runs unless `mama serve` is asked for.

mod http;
mod metrics;
mod page;
mod remind;
mod usage;
mod watch;

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::Store;
use crate::cli::commands::views_of;
use crate::cli::render::{self, MachineView};
use crate::error::{Error, Result};
use crate::model::event::Event;
use crate::os;
use crate::settings::{Location, Settings};

/// Where the server listens unless `--listen` says: this host only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How far back the server keeps the events it read (the machines'
/// pages chart 30 days), and how many at most.
const KEEP_DAYS: i64 = 31;
const KEEP_EVENTS: usize = 200_000;

/// How often the lab is read again without a change notice: what no
/// notice tells (a job's process that died, a waiter that left, an
/// outlet switched by hand) shows within this, and the machines are asked
/// whether they answer.
const FALLBACK: Duration = Duration::from_secs(30);

/// What the watcher published at its last look: everything a request
/// needs, rendered once.
#[derive(Default)]
pub struct Published {
    /// Goes up with every look that found something new.
    pub version: u64,
    /// The machines as `list --json` prints them.
    pub machines_json: Arc<String>,
    /// The machines as the pages show them.
    pub rows: Arc<Vec<page::Row>>,
    /// The status table, with what the watcher has to say above it (the
    /// lab unreadable): the part of `/` that updates itself.
    pub table: Arc<String>,
    /// `/metrics`.
    pub metrics: Arc<String>,
    /// The history as far as it was read, oldest first.
    pub events: Arc<Vec<Event>>,
    /// Why the last look failed, where it did.
    pub error: Option<String>,
}

/// The published look and the bell that rings at a new one.
pub struct Shared {
    published: Mutex<Published>,
    changed: Condvar,
    /// The lab, for the pages' titles.
    location: String,
    /// Whether the server listens on a loopback address: then it answers
    /// requests for a loopback name only (see `http::is_local_name`).
    loopback: bool,
    /// The lab, for `/api/events`, which answers from the history itself:
    /// the store of the watcher's last look.
    store: Mutex<Store>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Published> {
        self.published
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lab as the watcher last opened it.
    fn store(&self) -> Store {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// `mama serve`: serves the lab on `listen` (else [`DEFAULT_LISTEN`])
/// until killed.
pub fn serve(store: &Store, settings: &Settings, listen: Option<SocketAddr>) -> Result<()> {
    let addr = match listen {
        Some(addr) => addr,
        None => DEFAULT_LISTEN
            .parse()
            .map_err(|_| Error::Invalid(format!("bad default address {DEFAULT_LISTEN}")))?,
    };
    // The lab must be there: a typo in its path is not an empty lab.
    store.read()?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| Error::Io {
        context: format!("cannot listen on {addr}"),
        source: e,
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let shared = Arc::new(Shared {
        published: Mutex::new(Published::default()),
        changed: Condvar::new(),
        location: store.location(),
        loopback: bound.ip().is_loopback(),
        store: Mutex::new(store.clone()),
    });
    // Listening before the first look: no change falls between the two.
    let mut notices = watch::Notices::open(settings);
    if let Some(why) = notices.degraded() {
        say!(
            "mama: {why}; the page is updated every {}",
            render::seconds(FALLBACK)
        );
    }
    let mut watcher = Watcher::new(store, settings);
    watcher.look(true);
    watcher.publish(&shared);
    {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || http::accept(listener, shared));
    }
    say!("mama: serving {} on http://{bound}/", store.location());
    let mut last_full = Instant::now();
    loop {
        let due = last_full + FALLBACK;
        let wake = watcher.next_reminder().map_or(due, |at| at.min(due));
        let noticed = notices.wait_until(wake);
        let full = Instant::now() >= due;
        if full {
            last_full = Instant::now();
        }
        let reminded = watcher.remind();
        if noticed || full || reminded {
            watcher.look(full);
            watcher.publish(&shared);
        }
    }
}

/// The watcher's memory between looks.
struct Watcher<'a> {
    /// The lab: a state file's opened again at every look.
    store: Store,
    settings: &'a Settings,
    /// The last look's machines.
    views: Vec<MachineView>,
    /// What the last probe saw of each machine: online, power, watts.
    seen: std::collections::HashMap<String, Seen>,
    events: Arc<Vec<Event>>,
    counters: metrics::Counters,
    reminders: remind::Reminders,
    error: Option<String>,
    /// Why the reminders could not be recorded, last time.
    remind_error: Option<String>,
    /// Whether something changed since the last publication.
    fresh: bool,
}

type Seen = (Option<&'static str>, Option<&'static str>, Option<f64>);

impl<'a> Watcher<'a> {
    fn new(store: &'a Store, settings: &'a Settings) -> Watcher<'a> {
        Watcher {
            store: store.clone(),
            settings,
            views: Vec::new(),
            seen: Default::default(),
            events: Arc::new(Vec::new()),
            counters: metrics::Counters::default(),
            reminders: remind::Reminders::default(),
            error: None,
            remind_error: None,
            fresh: true,
        }
    }

    /// One look at the lab: the machines, and the events committed since
    /// the last look; with `probe`, whether the machines answer too.
    fn look(&mut self, probe: bool) {
        // A state file's folder walked to again: one renamed away, or
        // removed, and another put in its place is the lab now.
        if let Location::File(_) = &self.settings.state {
            match self.store.reopened(self.settings) {
                Ok(store) => self.store = store,
                Err(e) => return self.failed(e),
            }
        }
        let last = self.events.last().map(|e| e.seq);
        match self.store.read_events(last) {
            Ok((snapshot, new)) => {
                // An older copy of the lab put back: its numbers go on
                // after the log's, or start again where it lost some.
                let behind = snapshot.last_event.is_some_and(|seq| Some(seq) < last);
                if behind {
                    match self.store.read_events(None) {
                        Ok((_, all)) => self.events = Arc::new(all),
                        Err(e) => return self.failed(e),
                    }
                } else if !new.is_empty() {
                    Arc::make_mut(&mut self.events).extend(new);
                }
                self.counters.count(&self.events);
                self.forget_old_events();
                let mut views = views_of(&self.store, self.settings, &snapshot.lab, probe);
                for view in &mut views {
                    if probe {
                        self.seen
                            .insert(view.name.clone(), (view.online, view.power, view.watts));
                    } else if let Some(&(online, power, watts)) = self.seen.get(&view.name) {
                        (view.online, view.power, view.watts) = (online, power, watts);
                    }
                }
                if probe {
                    self.seen
                        .retain(|name, _| views.iter().any(|v| &v.name == name));
                }
                self.reminders.see(&snapshot.lab, &self.events);
                self.views = views;
                self.error = None;
                self.fresh = true;
            }
            Err(e) => self.failed(e),
        }
    }

    /// Drops the events older than [`KEEP_DAYS`], and the oldest past
    /// [`KEEP_EVENTS`] (the counters have counted them): a server that runs
    /// for months does not keep the whole history in memory.
    fn forget_old_events(&mut self) {
        let cutoff = os::now() - KEEP_DAYS * 86_400;
        let old = self.events.iter().take_while(|e| e.time < cutoff).count();
        let over = self.events.len().saturating_sub(KEEP_EVENTS);
        let drop = old.max(over);
        if drop > 0 {
            Arc::make_mut(&mut self.events).drain(..drop);
        }
    }

    fn failed(&mut self, e: Error) {
        let why = render::printable_lines(&e.to_string());
        if self.error.as_deref() != Some(why.as_str()) {
            say!("mama: cannot read the lab: {why}");
            self.error = Some(why);
            self.fresh = true;
        }
    }

    /// When a reminder is due next.
    fn next_reminder(&self) -> Option<Instant> {
        let at = self.reminders.next_due()?;
        let wait = u64::try_from(at.saturating_sub(os::now())).unwrap_or(0);
        Some(Instant::now() + Duration::from_secs(wait))
    }

    /// Commits the reminders that are due; whether it committed any. A
    /// failure (a lab this user may only read) is said once; the lab is
    /// still shown.
    fn remind(&mut self) -> bool {
        match self.reminders.commit_due(&self.store) {
            Ok(committed) => committed,
            Err(e) => {
                let why = render::printable_lines(&e.to_string());
                if self.remind_error.as_deref() != Some(why.as_str()) {
                    say!("mama: cannot record the lab's reminders (tried again every 30s): {why}");
                    self.remind_error = Some(why);
                }
                false
            }
        }
    }

    /// Renders what the pages show and publishes it, where anything
    /// changed.
    fn publish(&mut self, shared: &Shared) {
        *shared
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = self.store.clone();
        if !std::mem::take(&mut self.fresh) {
            return;
        }
        let now = os::now();
        let mut json = Vec::new();
        let machines_json = match render::write_json(&mut json, &self.views) {
            Ok(()) => {
                json.push(b'\n');
                String::from_utf8(json).unwrap_or_default()
            }
            Err(e) => format!("{{\"error\": \"cannot write JSON: {e}\"}}\n"),
        };
        // A look that found what the last one found (a write that changed
        // nothing shown, a second notice of one change) is not sent out.
        {
            let published = shared.lock();
            if published.version > 0
                && *published.machines_json == machines_json
                && published.error == self.error
                && published.events.len() == self.events.len()
                && published.events.last().map(|e| e.seq) == self.events.last().map(|e| e.seq)
            {
                return;
            }
        }
        let rows: Vec<page::Row> = self.views.iter().map(|v| page::Row::of(v, now)).collect();
        let table = page::status_fragment(&rows, self.error.as_deref(), now);
        let metrics = metrics::render(&self.views, &self.counters, self.error.is_none());
        let mut published = shared.lock();
        *published = Published {
            version: published.version + 1,
            machines_json: Arc::new(machines_json),
            rows: Arc::new(rows),
            table: Arc::new(table),
            metrics: Arc::new(metrics),
            events: Arc::clone(&self.events),
            error: self.error.clone(),
        };
        drop(published);
        shared.changed.notify_all();
    }
}
