//! One function per command, on top of the store, the lab and the claim loop.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::backend::{LockPatience, Store};
use crate::cli::render::{self, MachineView};
use crate::cli::style::{self, Stream};
use crate::engine::claim::{self, Caller, Intent, Patience, Wanted};
use crate::engine::devices;
use crate::engine::manual;
use crate::engine::policy;
use crate::engine::power::{self, PowerAction, StartRequest, Started, Stopped};
use crate::engine::service;
use crate::engine::stale::Judge;
use crate::engine::supervise::{self, Ending};
use crate::engine::trust;
use crate::error::{Error, Result};
use crate::exit::ExitCode;
use crate::format::doc::XmlLab;
use crate::model::device::{Device, Driver, Use};
use crate::model::event::{Event, Kind};
use crate::model::field::{self, Field};
use crate::model::setting::Setting;
use crate::model::{JobRecord, Lab, Machine, NewMachine};
use crate::os::{self, Place, Processes};
use crate::settings::Settings;

/// Reads the lab for a read-only command.
fn read(store: &Store) -> Result<Lab> {
    Ok(store.read()?.lab)
}

/// What judging jobs needs from this host, gathered once per command.
struct World<'a> {
    store: &'a Store,
    processes: Processes,
    host: String,
    place: Place,
    stale_after: u64,
}

impl<'a> World<'a> {
    fn new(store: &'a Store, settings: &Settings) -> World<'a> {
        World {
            store,
            processes: Processes::new(),
            host: os::host_name(),
            place: Place::here(),
            stale_after: settings.stale_after,
        }
    }

    fn judge(&self) -> Judge<'_, Processes> {
        Judge {
            now: os::now(),
            stale_after: self.stale_after,
            host: &self.host,
            place: &self.place,
            processes: &self.processes,
            locks: &**self.store,
        }
    }
}

/// Writes to stdout; a failed write is an error, not a panic.
fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::Io {
            context: "cannot write to standard output".into(),
            source: e,
        })
}

/// Prints `value` as pretty JSON (see [`render::write_json`]), as it is
/// written: a lab's JSON is never held whole.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let failed = |source: std::io::Error| Error::Io {
        context: "cannot write to standard output".into(),
        source,
    };
    let mut stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    render::write_json(&mut stdout, value).map_err(|e| match e.is_io() {
        true => failed(e.into()),
        false => Error::Invalid(format!("cannot write JSON: {e}")),
    })?;
    stdout
        .write_all(b"\n")
        .and_then(|()| stdout.flush())
        .map_err(failed)
}

/// Whether stdout is a terminal: then even raw values are printed safe for
/// it (scripts reading a pipe get them as stored).
fn stdout_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

/// How long `list` and `info` wait for machines and outlets to answer.
const PROBE_DEADLINE: Duration = Duration::from_millis(300);

pub fn list(
    store: &Store,
    settings: &Settings,
    json: bool,
    probe: bool,
    mine: bool,
    wide: bool,
) -> Result<()> {
    let mut views = views(store, settings, probe)?;
    if mine {
        let me = os::user_name();
        views.retain(|v| v.held_by(&me));
    }
    if json {
        print_json(&views)
    } else {
        out(&render::table(
            &views,
            style::enabled(Stream::Stdout),
            style::Layout::of_stdout(wide),
        ))
    }
}

/// `mama who`: what is held, by whom, since and until when.
pub fn who(store: &Store, settings: &Settings, json: bool) -> Result<()> {
    let views = views(store, settings, false)?;
    let holds: Vec<render::HoldView> = views.iter().flat_map(render::HoldView::of).collect();
    if json {
        print_json(&holds)
    } else {
        out(&render::holds(&holds, os::now()))
    }
}

/// Every machine of the lab as `list` shows it; with `probe`, asked
/// whether it answers and what its outlet says.
fn views(store: &Store, settings: &Settings, probe: bool) -> Result<Vec<MachineView>> {
    let lab = read(store)?;
    Ok(views_of(store, settings, &lab, probe))
}

/// Every machine of `lab`, read from `store`, as `list` shows it; with
/// `probe`, asked whether it answers and what its outlet says.
pub fn views_of(store: &Store, settings: &Settings, lab: &Lab, probe: bool) -> Vec<MachineView> {
    // Asked first, and answered while the jobs are judged.
    let trusted = || trust::check(store, "").is_ok();
    let looking = probe
        .then(|| power::Look::of(lab, &trusted))
        .flatten()
        .map(|look| {
            let deadline = std::time::Instant::now() + PROBE_DEADLINE;
            std::thread::spawn(move || look.run(deadline))
        });
    let world = World::new(store, settings);
    let held = store.held_job_locks();
    // Each job's PID is probed (a read of /proc/PID/stat, some 9 us of the
    // kernel's time), up front and on a few threads, except where the
    // machine's job lock is held: there the verdict is "live" (the PID is
    // the claimer's) or "held by its lock" (it is not), and `list` shows
    // both alike, busy, with no stale reason. So such a PID is taken as the
    // claimer's without a look. (A running `mama run` holds its machine's
    // job lock: a lab's busy machines are these.)
    let jobs: Vec<(&Machine, Option<JobRecord>)> = lab.machines().map(|m| (m, m.job())).collect();
    let pids: Vec<(bool, u32, Option<u64>)> = jobs
        .iter()
        .filter_map(|(m, job)| {
            let job = job.as_ref()?;
            let start = job.origin.as_ref().map(|origin| origin.start);
            Some((held.contains(m.name()), job.pid?, start))
        })
        .collect();
    world.processes.probe_all(
        pids.iter()
            .filter(|(locked, ..)| !locked)
            .map(|&(_, pid, _)| pid),
    );
    for &(_, pid, start) in pids.iter().filter(|(locked, ..)| *locked) {
        world.processes.assume_alive(pid, start);
    }
    let judge = world.judge();
    let resources = claim::Resources::new(lab);
    let mut views: Vec<MachineView> = jobs
        .into_iter()
        .enumerate()
        .map(|(at, (m, job))| {
            MachineView::new(
                m,
                job,
                &judge,
                || held.contains(m.name()),
                || resources.blocker(at, &judge),
            )
        })
        .collect();
    if let Some(seen) = looking.and_then(|thread| thread.join().ok()) {
        for (view, seen) in views.iter_mut().zip(seen) {
            view.see(&seen);
        }
    }
    views
}

/// `list --names`: the machine names, one a line, for shell completion.
pub fn names(store: &Store) -> Result<()> {
    let terminal = stdout_is_terminal();
    let names: String = store
        .read()?
        .lab
        .machines()
        .map(|m| {
            if terminal {
                format!("{}\n", render::printable(m.name()))
            } else {
                format!("{}\n", m.name())
            }
        })
        .collect();
    out(&names)
}

/// How many of a machine's last events `info` shows.
const INFO_EVENTS: usize = 5;

pub fn info(
    store: &Store,
    settings: &Settings,
    machine: &str,
    json: bool,
    probe: bool,
) -> Result<()> {
    let (snapshot, recent) = store.recent_events(machine, INFO_EVENTS)?;
    let world = World::new(store, settings);
    let judge = world.judge();
    let found = snapshot.lab.get(machine)?;
    let mut view = MachineView::new(
        found,
        found.job(),
        &judge,
        || store.held(machine),
        // Only a machine free by its own fields looks at its resources.
        || {
            let resources = claim::Resources::new(&snapshot.lab);
            resources
                .position(machine)
                .and_then(|at| resources.blocker(at, &judge))
        },
    );
    if view.held_by_lock() {
        view.lock_holders = store.holders(machine).into_iter().map(Into::into).collect();
    }
    if probe {
        let mut one = Lab::empty();
        for m in snapshot.lab.machines().filter(|m| m.name() == machine) {
            one = Lab::new(vec![m.clone()]);
        }
        let one = one.with_devices(snapshot.lab.devices().cloned().collect());
        let deadline = std::time::Instant::now() + PROBE_DEADLINE;
        let trusted = || trust::check(store, "").is_ok();
        if let Some(seen) =
            power::Look::of(&one, &trusted).and_then(|look| look.run(deadline).pop())
        {
            view.see(&seen);
        }
    }
    let named = |used_as| devices::named_by(&snapshot.lab, found, used_as);
    view.power_device = named(Use::Outlet).map(render::NamedView::of);
    view.relay_device = named(Use::Relay).map(render::NamedView::of);
    if json {
        print_json(&render::InfoView {
            queue: view.queue.clone(),
            job_lock_holders: view.lock_holders.clone(),
            power_device: view.power_device.clone(),
            relay_device: view.relay_device.clone(),
            machine: view,
            recent_events: recent,
        })
    } else {
        let mut text = render::info(&view, judge.now, style::enabled(Stream::Stdout));
        if !recent.is_empty() {
            text.push_str("Recent events:\n");
            text.push_str(&render::events(&recent, "  "));
        }
        out(&text)
    }
}

/// `mama log`: the history, filtered; with `follow`, then every new event
/// as it is committed.
pub fn log(
    store: &Store,
    settings: &Settings,
    machine: Option<&str>,
    since: Option<Duration>,
    lines: Option<usize>,
    json: bool,
    follow: bool,
) -> Result<()> {
    let cutoff = since.map(|age| os::now() - age.as_secs() as i64);
    let wanted =
        |e: &Event| machine.is_none_or(|m| e.machine == m) && cutoff.is_none_or(|t| e.time >= t);
    // Following, the last ten first (as `tail -f`), unless asked.
    let keep = lines.or(follow.then_some(FOLLOW_LINES));
    // The history is read event by event: only what is shown is kept (a
    // long history is never held whole for `-n 10`).
    let mut shown: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
    let mut named = false;
    let mut newest = None;
    // A machine the lab no longer has is known by its events, however
    // old: then every one is looked at.
    let skip_older = match machine {
        Some(name) => store
            .read()?
            .lab
            .machine(name)
            .is_some()
            .then_some(cutoff)
            .flatten(),
        None => cutoff,
    };
    let snapshot = store.each_event(skip_older, &mut |event| {
        newest = Some(event.seq);
        named |= machine.is_some_and(|m| event.machine == m);
        if wanted(&event) {
            if keep.is_some_and(|k| shown.len() >= k) {
                shown.pop_front();
            }
            if keep != Some(0) {
                shown.push_back(event);
            }
        }
    })?;
    if let Some(name) = machine
        && snapshot.lab.machine(name).is_none()
        && !named
    {
        return Err(snapshot.lab.unknown(name));
    }
    let mut last = newest.max(snapshot.last_event).unwrap_or(0);
    let poll = settings.poll;
    let shown: Vec<Event> = shown.into();
    let mut widths = [0; 6];
    print_events(&shown, json, true, &mut widths)?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(poll);
        let (_, new) = store.read_events(Some(last))?;
        if let Some(e) = new.last() {
            last = e.seq;
        }
        let shown: Vec<Event> = new.into_iter().filter(|e| wanted(e)).collect();
        print_events(&shown, json, false, &mut widths)?;
    }
}

/// `stats`: the lab's statistics from its history, a table (or JSON).
pub fn stats(
    store: &Store,
    since: Option<crate::text::When>,
    until: Option<crate::text::When>,
    by: crate::cli::StatsBy,
    json: bool,
) -> Result<()> {
    use crate::engine::stats::{self, By};
    let now = os::now();
    // A window cannot reach past now: the history ends there. Without
    // --until, or with one past now, it takes in the current second.
    let until = until.map_or(now + 1, |u| u.at(now).min(now + 1));
    let since = since.map(|s| s.at(now));
    if since.is_some_and(|s| s >= until) {
        return Err(Error::Invalid(format!(
            "--since ({}) is not before --until ({}): no time to count",
            crate::text::local_time(since.unwrap_or(until)),
            crate::text::local_time(until)
        )));
    }
    let by = match by {
        crate::cli::StatsBy::Machine => By::Machine,
        crate::cli::StatsBy::User => By::User,
    };
    let figures = stats::of_lab(store, since, until, by)?;
    if json {
        return print_json(&render::StatsView::of(&figures));
    }
    // Figures are not cut short: the table is as wide as they need.
    let layout = style::Layout::of_stdout(true);
    out(&render::stats(&figures, layout))
}

/// How many past events `log -f` shows before it follows.
const FOLLOW_LINES: usize = 10;

/// Prints events as JSON lines or as rows under a header (`header`: the
/// first batch; later batches of `--follow` print rows only, in the
/// columns of the first: `widths`).
fn print_events(events: &[Event], json: bool, header: bool, widths: &mut [usize; 6]) -> Result<()> {
    let mut text = String::new();
    if json {
        text = render::event_lines(events)?;
    } else if header || !events.is_empty() {
        text = render::events_in_columns(events, "", widths, header);
    }
    out(&text)
}

pub fn add(store: &Store, new: NewMachine) -> Result<()> {
    field::check_name(&new.name)?;
    let new = NewMachine {
        mac: field::normalize(Field::Mac, &new.mac)?,
        ip: field::normalize(Field::Ip, &new.ip)?,
        resources: field::normalize(Field::Resources, &new.resources)?,
        ..new
    };
    store.update_or_create(|lab| {
        lab.add(&new)?;
        lab.record(Event::new(Kind::Added, &new.name).detail(format!("mac {}", new.mac)));
        Ok(())
    })?;
    say!("mama: added {} ({})", new.name, new.mac);
    Ok(())
}

pub fn delete(store: &Store, settings: &Settings, machine: &str) -> Result<()> {
    let world = World::new(store, settings);
    let judge = world.judge();
    store.update(|lab| {
        if let Some(job) = lab.get(machine)?.job()
            && judge.judge(machine, &job).is_live()
        {
            return Err(Error::Invalid(format!(
                "{machine} has a live job '{}'; wait for it to end, \
                 or run `mama clear {machine}` if you are sure nobody uses it",
                job.label
            )));
        }
        lab.remove(machine)?;
        lab.record(Event::new(Kind::Deleted, machine));
        Ok(())
    })?;
    say!("mama: deleted {machine}");
    Ok(())
}

pub fn set(store: &Store, machine: &str, field: Field, value: &str) -> Result<()> {
    let value = field::normalize(field, value)?;
    store.update(|lab| {
        if field == Field::Mac
            && let Some(other) = lab
                .machines()
                .find(|m| m.name() != machine && m.get(Field::Mac).eq_ignore_ascii_case(&value))
        {
            return Err(Error::Invalid(format!(
                "MAC {value} belongs to machine '{}' already",
                other.name()
            )));
        }
        let mut m = lab.get_mut(machine)?;
        if m.view().get(field) == value {
            return Ok(());
        }
        m.set(field, &value)?;
        lab.record(Event::new(Kind::Set, machine).detail(format!("{}={value}", field.tag())));
        Ok(())
    })
}

pub fn get(store: &Store, machine: &str, field: Field, json: bool) -> Result<()> {
    let lab = read(store)?;
    let held = lab.get(machine)?;
    // A reservation whose lease is over is over for every reader.
    let judged;
    let value = match field {
        Field::Reservation => {
            judged = held.reservation().unwrap_or_default();
            judged.as_str()
        }
        _ => held.get(field),
    };
    if json {
        print_json(&(!value.is_empty()).then_some(value))
    } else if stdout_is_terminal() {
        out(&format!("{}\n", render::printable(value)))
    } else {
        out(&format!("{value}\n"))
    }
}

/// `clear`: forgets the job and `is_started` of a machine (or of all),
/// as the engine's rules allow (see [`manual::clear`]); a machine left
/// alone makes the command fail, once the others are cleared.
pub fn clear(store: &Store, settings: &Settings, target: &str, force: bool) -> Result<()> {
    let world = World::new(store, settings);
    let clearing = manual::clear(store, target, force, &world.judge())?;
    let cleared = clearing.cleared.len();
    if cleared > 0 || clearing.refused.is_empty() {
        say!(
            "mama: cleared {} ({cleared} machine{})",
            render::printable(target),
            plural(cleared)
        );
    }
    for done in &clearing.cleared {
        let name = render::printable(&done.machine);
        if let Some(holding) = &done.forced {
            say!(
                "mama: forgot the live job {} on {name}, forced",
                render::printable(&holding.job_of())
            );
        }
        if done.still_held {
            say!(
                "mama: processes of the job on {name} still hold its job lock: \
                 runs wait until they end"
            );
        }
    }
    match clearing.refused.as_slice() {
        [] => Ok(()),
        [one] if target != "all" => Err(Error::Invalid(one.refusal())),
        refused => {
            for holding in refused {
                say!(
                    "mama: left alone: {}",
                    render::printable(&holding.refusal())
                );
            }
            Err(Error::Invalid(format!(
                "{} machine{} left alone, with another user's live job (see above)",
                refused.len(),
                plural(refused.len())
            )))
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `reserve`: for as long as `length` (or the lab's longest reservation)
/// says, with a note.
pub fn reserve(
    store: &Store,
    machine: &str,
    length: Option<Duration>,
    note: Option<String>,
) -> Result<()> {
    let reserved = manual::reserve(store, machine, &manual::Ask { length, note })?;
    let (user, until) = match &reserved {
        manual::Reserved::New { user, until }
        | manual::Reserved::Already { user, until }
        | manual::Reserved::Moved { user, until } => (user, until),
    };
    say!(
        "mama: {machine} is reserved for {}{}",
        render::printable(user),
        until_text(*until)
    );
    Ok(())
}

/// ` until TIME (in 2h 5m)`, or nothing for a reservation without an end.
fn until_text(until: Option<i64>) -> String {
    match until {
        Some(end) => format!(" until {}", render::time_and_when(end, os::now())),
        None => String::new(),
    }
}

/// `extend`: the holder's reservation ends `length` from now.
pub fn extend(store: &Store, machine: &str, length: Duration) -> Result<()> {
    let until = manual::extend(store, machine, length)?;
    say!(
        "mama: {machine} is reserved for {}{}",
        render::printable(&os::user_name()),
        until_text(Some(until))
    );
    Ok(())
}

/// `setting`: every lab setting with its value, or one's value, or sets
/// one.
pub fn setting(
    store: &Store,
    name: Option<Setting>,
    value: Option<String>,
    json: bool,
) -> Result<()> {
    let Some(setting) = name else {
        let lab = read(store)?;
        return match json {
            true => print_json(&render::SettingsView::of(&lab)),
            false => out(&render::settings(&lab)),
        };
    };
    let Some(value) = value else {
        let lab = read(store)?;
        let value = lab.setting(setting);
        return if json {
            print_json(&value)
        } else if stdout_is_terminal() {
            out(&format!("{}\n", render::printable(value.unwrap_or(""))))
        } else {
            out(&format!("{}\n", value.unwrap_or("")))
        };
    };
    let (now, changed) = policy::set(store, setting, &value)?;
    let shown = match now.as_str() {
        "" => "unset".to_string(),
        value => render::setting_value(setting, value),
    };
    match changed {
        true => say!("mama: {} is {shown} now", setting.name()),
        false => say!("mama: {} is {shown} already", setting.name()),
    }
    Ok(())
}

pub fn release(store: &Store, machine: &str) -> Result<()> {
    manual::release(store, machine)?;
    say!("mama: released {machine}");
    Ok(())
}

pub fn release_forced(store: &Store, machine: &str) -> Result<()> {
    match manual::release_forced(store, machine)? {
        Some(holder) => say!(
            "mama: released {machine} (reserved by {})",
            render::printable(&holder)
        ),
        None => say!("mama: {machine} was not reserved"),
    }
    Ok(())
}

/// `mama offline`: takes a machine out of service; one out already stays
/// as it is.
pub fn offline(store: &Store, machine: &str, reason: &str) -> Result<()> {
    match service::take_offline(store, machine, reason)? {
        None => say!(
            "mama: {machine} is out of service: {} (`mama online {machine}` puts it back)",
            render::printable(reason.trim())
        ),
        Some(already) => say!(
            "mama: {machine} is out of service already: {}; nothing changed",
            render::printable(&already.detail())
        ),
    }
    Ok(())
}

/// `mama online`: puts a machine back in service.
pub fn online(store: &Store, machine: &str) -> Result<()> {
    match service::bring_online(store, machine)? {
        Some(was) => say!(
            "mama: {machine} is back in service (it was out: {})",
            render::printable(&was.detail())
        ),
        None => say!("mama: {machine} is in service already; nothing changed"),
    }
    Ok(())
}

/// `mama check`: claims the machine (out of service or not), runs its
/// health command, judges the machine by it (see
/// [`service::judge_check`]) and releases it. Exit 0 when it passed, 1
/// when it failed.
pub fn check(
    store: &Store,
    settings: &Settings,
    machine: &str,
    wait_timeout: Option<Duration>,
) -> Result<i32> {
    let no_command = || {
        Error::Invalid(format!(
            "{machine} has no healthcmd to check it with (`mama set {machine} healthcmd CMD` \
             gives it one)"
        ))
    };
    if read(store)?
        .get(machine)?
        .get(Field::HealthCmd)
        .trim()
        .is_empty()
    {
        return Err(no_command());
    }
    trust::check(store, &format!("the healthcmd of {machine}"))?;
    let wanted = Wanted::One(machine.to_string());
    let mut claim = match acquire(
        store,
        settings,
        &wanted,
        &Intent::Check,
        false,
        wait_timeout,
    )? {
        claim::Acquired::Claimed(claim) => *claim,
        claim::Acquired::Free { .. } => {
            return Err(Error::Invalid(
                "internal error: a check ended without a claim".into(),
            ));
        }
    };
    if let Err(e) = supervise::block_signals() {
        claim.release(store, "not checked (mama could not block signals)")?;
        return Err(e);
    }
    // The command as it stands now that the machine is ours.
    let command = match read(store) {
        Ok(lab) => lab
            .machine(machine)
            .map(|m| m.get(Field::HealthCmd).to_string())
            .unwrap_or_default(),
        Err(e) => {
            claim.release(store, "not checked (the lab could not be read)")?;
            return Err(e);
        }
    };
    if command.trim().is_empty() {
        claim.release(store, "not checked (its healthcmd was emptied)")?;
        return Err(no_command());
    }
    let lease = claim.keep();
    let ran = service::run_health(&service::HealthRun {
        command: &command,
        env: vec![
            ("MAMA_MACHINE", machine.to_string()),
            ("MAMA_IP", claim.ip.clone()),
            ("MAMA_MAC", claim.mac.clone()),
        ],
        lease: lease.as_deref(),
        interrupted: &supervise::take_signal,
    });
    let health = match ran {
        Ok(Ok(health)) => health,
        Ok(Err(service::Cut::Interrupted(signal))) => {
            claim.release(store, &format!("check stopped by signal {signal}"))?;
            return Err(Error::Interrupted(signal));
        }
        Ok(Err(service::Cut::ClaimLost)) => {
            claim.release(store, "check stopped: the claim was lost")?;
            return Err(Error::Invalid(format!(
                "lost the claim on {machine} while its health command ran; it was stopped, \
                 and nothing was recorded of it"
            )));
        }
        Err(e) => {
            claim.release(store, "not checked (its health command could not run)")?;
            return Err(e);
        }
    };
    let user = os::user_name();
    let verdict = store.update(|lab| service::judge_check(lab, machine, &health, &user, os::now()));
    let outcome = if health.passed {
        "health check passed"
    } else {
        "health check failed"
    };
    let released = claim.release(store, outcome);
    let verdict = verdict?;
    released?;
    let line = health
        .last_line
        .as_deref()
        .map(|line| format!(": {}", render::printable(line)))
        .unwrap_or_default();
    Ok(match verdict {
        service::Verdict::Passed { back: true, .. } => {
            say!("mama: {machine} passed its health check; it is back in service");
            ExitCode::Ok.code()
        }
        service::Verdict::Passed {
            still: Some(mark), ..
        } => {
            say!(
                "mama: {machine} passed its health check; it stays out of service: {} \
                 (`mama online {machine}` puts it back)",
                render::printable(&mark.detail())
            );
            ExitCode::Ok.code()
        }
        service::Verdict::Passed { .. } => {
            say!("mama: {machine} passed its health check");
            ExitCode::Ok.code()
        }
        service::Verdict::Failed { mark, taken } => {
            let now = if taken {
                format!("it is out of service now (`mama online {machine}` puts it back)")
            } else {
                format!(
                    "it stays out of service: {}",
                    render::printable(&mark.detail())
                )
            };
            say!(
                "mama: {machine} failed its health check ({}){line}; {now}",
                health.status
            );
            ExitCode::Error.code()
        }
    })
}

/// Waits for a machine as `run` and `wait` do, with the environment's
/// poll interval and stale age.
fn acquire(
    store: &Store,
    settings: &Settings,
    wanted: &Wanted,
    intent: &Intent,
    no_wait: bool,
    timeout: Option<Duration>,
) -> Result<claim::Acquired> {
    let patience = Patience {
        no_wait,
        timeout,
        poll: settings.poll,
    };
    // The same patience holds for the lab's lock (a holder stopped by
    // Ctrl-Z must not hang `run --no-wait`); the release that follows a
    // claim goes through the caller's store, which waits as long as needs be.
    let store = &store
        .clone()
        .with_patience(LockPatience::within(no_wait, timeout));
    claim::acquire(
        store,
        wanted,
        &Caller::current(),
        &Processes::new(),
        settings.stale_after,
        intent,
        patience,
    )
}

/// `mama wait`: until the machine (with --any or --where: one of them,
/// whose name is printed) is free.
pub fn wait(
    store: &Store,
    settings: &Settings,
    wanted: &Wanted,
    timeout: Option<Duration>,
    reserve: Option<manual::Ask>,
) -> Result<()> {
    let intent = match reserve {
        Some(ask) => {
            // A length the lab refuses is refused now, not once the
            // machine is free.
            policy::lease_length(&read(store)?, ask.length)?;
            Intent::Reserve { ask }
        }
        None => Intent::Wait,
    };
    let (free, left_started) = match acquire(store, settings, wanted, &intent, false, timeout)? {
        claim::Acquired::Free {
            machine,
            left_started,
        } => (machine, left_started),
        claim::Acquired::Claimed(claim) => (claim.machine.clone(), claim.left_started),
    };
    if matches!(intent, Intent::Reserve { .. }) {
        let lab = read(store)?;
        let until = lab.get(&free)?.lease().and_then(|l| l.expires);
        say!(
            "mama: {} is reserved for {}{}",
            render::printable(&free),
            render::printable(&os::user_name()),
            until_text(until)
        );
    }
    // Free, but left started by a run that died: whoever finds it stops
    // it, under a claim of its own, so that nobody runs on a machine in
    // the middle of a stop.
    if left_started {
        let label = format!("stop {free}, left started by a run that ended");
        let intent = Intent::Run { label };
        if let claim::Acquired::Claimed(claim) = acquire(
            store,
            settings,
            &Wanted::One(free.clone()),
            &intent,
            false,
            timeout,
        )? {
            let claim = *claim;
            let stopped = if claim.left_started {
                say!(
                    "mama: {free} was left started by a run that ended without stopping it; stopping it"
                );
                operate(store, settings, |world| {
                    power::stop(
                        world,
                        &free,
                        true,
                        Some("left started by a run that ended without stopping it"),
                    )
                })
                .map(|_| ())
            } else {
                Ok(())
            };
            claim.release(store, "stopped the machine")?;
            stopped?;
        }
    }
    if matches!(wanted, Wanted::Any { .. }) {
        out(&format!("{free}\n"))?;
    }
    Ok(())
}

/// What `run` needs besides the machine.
pub struct RunRequest {
    pub label: Option<String>,
    pub no_wait: bool,
    pub wait_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
    /// `--boot`, with its number of tries.
    pub boot: Option<u32>,
    pub command: Vec<OsString>,
}

/// Waits, claims, runs the job, releases; returns the job's exit status.
/// An error means the job never started.
pub fn run(
    store: &Store,
    settings: &Settings,
    wanted: &Wanted,
    request: RunRequest,
) -> Result<i32> {
    let Some((program, args)) = request.command.split_first() else {
        return Err(Error::Invalid("no command to run".into()));
    };
    let label = match request.label {
        Some(label) => label,
        None => format!(
            "run {}",
            Path::new(program)
                .file_name()
                .unwrap_or(program)
                .to_string_lossy()
        ),
    };
    field::check_input(Field::Job, &label)?;
    let intent = Intent::Run {
        label: label.clone(),
    };
    let mut claim = match acquire(
        store,
        settings,
        wanted,
        &intent,
        request.no_wait,
        request.wait_timeout,
    )? {
        claim::Acquired::Claimed(claim) => *claim,
        claim::Acquired::Free { .. } => {
            return Err(Error::Invalid(
                "internal error: a run ended without a claim".into(),
            ));
        }
    };
    let machine = &claim.machine.clone();
    // From here on INT, TERM and HUP are the job's: mama forwards them and
    // always gets to release.
    let job_mask = match supervise::block_signals() {
        Ok(mask) => mask,
        Err(e) => {
            claim.release(store, "not started (mama could not block signals)")?;
            return Err(e);
        }
    };
    if store.password_withheld() {
        say!(
            "mama: the job gets MAMA_STATE without the password the URL holds; \
             keep it in ~/.pgpass or PGPASSFILE so that mama in the job finds the lab"
        );
    }
    // Signals are blocked already; the world of a power sequence is made
    // only where one runs (a plain run pays nothing for it).
    if claim.left_started {
        say!(
            "mama: {machine} was left started by a run that ended without stopping it; stopping it first"
        );
        if let Err(e) = operate(store, settings, |world| {
            power::stop(
                world,
                machine,
                true,
                Some("left started by a run that ended without stopping it"),
            )
        }) {
            claim.release(
                store,
                "not started (the machine left started could not be stopped)",
            )?;
            return Err(e);
        }
    }
    let mut ip = claim.ip.clone();
    if let Some(tries) = request.boot {
        let request = StartRequest {
            tries,
            force: false,
            for_job: true,
        };
        match operate(store, settings, |world| {
            power::start(world, machine, request)
        }) {
            Ok(started) => {
                say_started(machine, &started);
                ip = started.ip().to_string();
            }
            Err(e) => {
                let outcome = format!("not started ({machine} did not start: {e})");
                claim.release(store, &outcome)?;
                return Err(e);
            }
        }
    }
    let lease = claim.keep();
    let job = supervise::Job {
        program: program.clone(),
        args: args.to_vec(),
        env: vec![
            ("MAMA_MACHINE".into(), claim.machine.clone().into()),
            ("MAMA_JOB".into(), label.into()),
            ("MAMA_MAC".into(), claim.mac.clone().into()),
            ("MAMA_IP".into(), ip.into()),
            // A mama the job runs finds the same lab, even one named by
            // --state, and so sees the claim it may nest in.
            ("MAMA_STATE".into(), store.for_jobs()),
        ],
        timeout: request.timeout,
        inherit: claim.lock_fd(),
        lease,
    };
    let (ending, watcher) = supervise::run(&job, job_mask);
    let outcome = match &ending {
        Ok(ending) => ending.to_string(),
        Err(e) => format!("supervision failed: {e}"),
    };
    let mut stop_failed = false;
    if request.boot.is_some() {
        let why = format!("the job ended ({outcome})");
        if let Err(e) = operate(store, settings, |world| {
            power::stop(world, machine, true, Some(&why))
        }) {
            say!("mama: could not stop {machine}: {e}");
            stop_failed = true;
        }
    }
    let status = ending.as_ref().ok().map(Ending::exit_code);
    let released = claim.release_with_status(store, &outcome, status);
    // Killed when the job ended, the watcher has died meanwhile: reaped.
    drop(watcher);
    let ending = ending?;
    match &ending {
        Ending::NotStarted(e) => say!("mama: cannot run '{}': {e}", program.to_string_lossy()),
        Ending::TimedOut => say!(
            "mama: the job on {machine} ran out of time ({}) and was stopped",
            render::seconds(request.timeout.unwrap_or_default())
        ),
        Ending::ClaimLost => say!(
            "mama: the job on {machine} was stopped because this run lost its claim \
             (see above); the machine may run another job now"
        ),
        Ending::Exited(_) | Ending::Signalled(_) => {}
    }
    if let Err(e) = released {
        say!("mama: could not release {machine}: {e}");
        if ending.exit_code() == 0 {
            return Ok(ExitCode::Error.code());
        }
    }
    if stop_failed && ending.exit_code() == 0 {
        return Ok(ExitCode::Error.code());
    }
    Ok(ending.exit_code())
}

/// Says on stderr that a machine is up.
fn say_started(machine: &str, started: &Started) {
    match started {
        Started::AlreadyOnline { ip } if ip.is_empty() => {
            say!("mama: {machine} is ready already; not power-cycled")
        }
        Started::AlreadyOnline { ip } => {
            say!("mama: {machine} is online already at {ip}; not power-cycled (--force to)")
        }
        Started::Ready {
            ip,
            learned,
            took,
            try_no,
        } => {
            let at = match (ip.is_empty(), learned) {
                (true, _) => String::new(),
                (false, true) => format!(" at {ip} (learned from its MAC)"),
                (false, false) => format!(" at {ip}"),
            };
            let tries = if *try_no > 1 {
                format!(", at try {try_no}")
            } else {
                String::new()
            };
            say!(
                "mama: {machine} is ready{at} after {}{tries}",
                crate::text::seconds(*took)
            );
        }
    }
}

/// The world a power command acts in; its signals (INT, TERM, HUP) are
/// blocked, to be taken by the sequence, which then puts the machine
/// down again.
fn operate<T>(
    store: &Store,
    settings: &Settings,
    act: impl FnOnce(&power::World<'_>) -> Result<T>,
) -> Result<T> {
    supervise::block_signals()?;
    let caller = Caller::current();
    let world = World::new(store, settings);
    let judge = world.judge();
    act(&power::World {
        store,
        caller: &caller,
        judge: &judge,
        interrupted: &supervise::take_signal,
    })
}

/// `mama start`.
pub fn start(
    store: &Store,
    settings: &Settings,
    machine: &str,
    tries: u32,
    force: bool,
) -> Result<()> {
    let started = operate(store, settings, |world| {
        power::start(
            world,
            machine,
            StartRequest {
                tries,
                force,
                for_job: false,
            },
        )
    })?;
    say_started(machine, &started);
    Ok(())
}

/// `mama stop`.
pub fn stop(store: &Store, settings: &Settings, machine: &str, force: bool) -> Result<()> {
    match operate(store, settings, |world| {
        power::stop(world, machine, force, None)
    })? {
        Stopped::NotStarted => say!("mama: {machine} is not started; nothing to stop (--force to)"),
        Stopped::Stopped => say!("mama: {machine} stopped"),
    }
    Ok(())
}

/// `mama power`.
pub fn power(
    store: &Store,
    settings: &Settings,
    machine: &str,
    action: crate::cli::PowerArg,
) -> Result<()> {
    use crate::cli::PowerArg;
    let action = match action {
        PowerArg::On => PowerAction::On,
        PowerArg::Off => PowerAction::Off,
        PowerArg::Cycle => PowerAction::Cycle,
        PowerArg::Status => PowerAction::Status,
    };
    let reading = operate(store, settings, |world| {
        power::power(world, machine, action)
    })?;
    let state = if reading.on { "on" } else { "off" };
    match reading.watts {
        Some(watts) => out(&format!("{state} {watts:.1} W\n")),
        None => out(&format!("{state}\n")),
    }
}

/// `mama device add`: defines a power device, its options checked against
/// its driver.
pub fn device_add(
    store: &Store,
    name: &str,
    driver: Driver,
    options: Vec<(String, String)>,
) -> Result<()> {
    let device = Device::new(name, driver, options)?;
    devices::add(store, &device)?;
    say!(
        "mama: added power device {} ({})",
        render::printable(name),
        driver.name()
    );
    Ok(())
}

/// `mama device list`: every device of the lab, with the machines that
/// name it.
pub fn device_list(store: &Store, json: bool) -> Result<()> {
    let lab = read(store)?;
    let listed = devices::listing(&lab);
    if json {
        print_json(
            &listed
                .iter()
                .map(render::DeviceView::of)
                .collect::<Vec<_>>(),
        )
    } else {
        out(&render::devices(&listed, style::enabled(Stream::Stdout)))
    }
}

/// `mama device delete`: removes a device no machine names.
pub fn device_delete(store: &Store, name: &str) -> Result<()> {
    devices::delete(store, name)?;
    say!("mama: deleted power device {}", render::printable(name));
    Ok(())
}

/// `mama init`: makes the lab ready for its users, and says what changed.
/// A database lab's GRANT statements are printed as SQL (the rest as SQL
/// comments), so the output can go to `psql` as it is.
pub fn init(settings: &Settings, request: &crate::backend::InitRequest) -> Result<i32> {
    let done = crate::backend::init(settings, request)?;
    let database = done.group.is_none();
    let mut text = String::new();
    let comment = if database { "-- " } else { "" };
    for change in &done.changes {
        text.push_str(&format!("{comment}{}\n", crate::text::printable(change)));
    }
    let ready = match &done.group {
        Some(group) => format!(
            "{} is ready for the group {group}: its members may use every command",
            done.location
        ),
        None => format!("{} is ready", done.location),
    };
    let ready = if done.changes.is_empty() {
        format!("{ready} (it was: nothing changed)")
    } else {
        ready
    };
    text.push_str(&format!("{comment}{}\n", crate::text::printable(&ready)));
    if database && request.grant.is_none() {
        text.push_str(
            "-- what each role that uses the lab needs (run as the tables' owner, \
             or give --grant ROLE):\n",
        );
        for grant in &done.grants {
            text.push_str(&format!("{grant}\n"));
        }
    }
    out(&text)?;
    Ok(ExitCode::Ok.code())
}

/// `mama export`: the lab in upstream's format, on stdout.
pub fn export(store: &Store) -> Result<()> {
    out(&store.export()?)
}

/// `mama import FILE`: loads the machines of a state file into the lab,
/// each with every element and attribute it has; a lab with machines
/// already is refused unless `replace`.
pub fn import(store: &Store, settings: &Settings, file: &Path, replace: bool) -> Result<()> {
    use std::io::Read;
    // Read up to one byte past the limit: an endless stream (`/dev/zero`,
    // `yes | mama import -`) stops there.
    let limit = crate::format::doc::MAX_DOCUMENT;
    let mut bytes = Vec::new();
    let read = if file == Path::new("-") {
        std::io::stdin().take(limit + 1).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
    };
    read.map_err(|e| Error::io("read", file, e))?;
    if bytes.len() as u64 > limit {
        return Err(crate::backend::file::too_large(file, bytes.len() as u64));
    }
    let text = String::from_utf8(bytes).map_err(|e| Error::Corrupt {
        path: file.to_path_buf(),
        location: None,
        message: format!("the file is not valid UTF-8 ({e})"),
    })?;
    let doc = XmlLab::parse(&text).map_err(|e| Error::Corrupt {
        path: file.to_path_buf(),
        location: (e.line > 0).then_some((e.line, e.column)),
        message: e.message,
    })?;
    let machines = doc.machine_texts();
    let model = doc.model();
    let models: Vec<Machine> = model.machines().cloned().collect();
    // The file's devices, each whole (see `Lab::replace_devices`).
    let device_texts = doc.device_texts();
    let file_devices: Vec<Device> = model.devices().cloned().collect();
    let file_broken: Vec<_> = model.broken_devices().cloned().collect();
    let device_names: Vec<String> = file_devices
        .iter()
        .map(|d| d.name.clone())
        .chain(file_broken.iter().map(|b| b.name.clone()))
        .filter(|name| !name.is_empty())
        .collect();
    // The file's settings, whole (see `Lab::replace_settings`), and the
    // leases of its machines' reservations (over or not: the next
    // transaction ends those that are over, as in any lab).
    let settings_text = doc.settings_text();
    let file_settings = doc.settings();
    let leases: Vec<(String, crate::model::lease::Lease)> = doc
        .leases()
        .into_iter()
        .filter(|(name, lease)| {
            model.machine(name).is_some_and(|m| {
                !lease.user.is_empty() && m.get(Field::Reservation).trim() == lease.user
            })
        })
        .collect();
    if let Some(unnamed) = models.iter().position(|m| m.name().is_empty()) {
        return Err(Error::Invalid(format!(
            "{}: machine {} of the file has no name",
            file.display(),
            unnamed + 1
        )));
    }
    for machine in &models {
        field::check_name(machine.name())?;
    }
    let shown = file.display().to_string();
    let world = World::new(store, settings);
    let judge = world.judge();
    let in_file = device_texts.len();
    let (added, removed, devices) = store.import(&doc.skeleton(), replace, |lab| {
        let existing: Vec<String> = lab.machines().map(|m| m.name().to_string()).collect();
        // Replacing never takes a machine from under a running job.
        if let Some((name, job)) = lab.machines().find_map(|m| {
            let job = m.job()?;
            judge
                .judge(m.name(), &job)
                .is_live()
                .then(|| (m.name().to_string(), job))
        }) {
            return Err(Error::Invalid(format!(
                "{name} has a live job '{}'; wait for it to end before replacing the lab",
                render::printable(&job.label)
            )));
        }
        if !existing.is_empty() && !replace {
            return Err(Error::Invalid(format!(
                "the lab has {} machine{} already; `mama import --replace {shown}` deletes \
                 them first",
                existing.len(),
                plural(existing.len())
            )));
        }
        for name in &existing {
            lab.remove(name)?;
            lab.record(Event::new(Kind::Deleted, name).detail(format!("replaced by {shown}")));
        }
        for (machine, (name, element)) in models.into_iter().zip(machines) {
            lab.add_element(machine, element)?;
            lab.record(Event::new(Kind::Added, &name).detail(format!("imported from {shown}")));
        }
        let mut taken = Vec::new();
        for (name, lease) in leases {
            if !taken.contains(&name) {
                lab.set_lease(&name, Some(lease))?;
                taken.push(name);
            }
        }
        // The file's settings, as its devices: into a lab that has none,
        // or in place of the lab's own with `--replace`.
        let own_settings = lab.settings().len();
        let settings = if replace || own_settings == 0 {
            if settings_text.is_some() || own_settings > 0 {
                for (setting, value) in lab.replace_settings(file_settings, settings_text) {
                    lab.record(
                        Event::new(Kind::SettingChanged, setting.name())
                            .detail(format!("{}={value}", setting.name())),
                    );
                }
            }
            true
        } else {
            false
        };
        // The file's devices come with its machines into a lab that has
        // none (before its first machine); `--replace` replaces the lab's
        // own.
        let own: Vec<String> = lab
            .devices()
            .map(|d| d.name.clone())
            .chain(lab.broken_devices().map(|b| b.name.clone()))
            .collect();
        let devices = if replace || own.is_empty() {
            if !own.is_empty() || in_file > 0 {
                for name in own.iter().filter(|name| !name.is_empty()) {
                    lab.record(
                        Event::new(Kind::DeviceDeleted, name)
                            .detail(format!("replaced by {shown}")),
                    );
                }
                lab.replace_devices(file_devices, file_broken, device_texts);
                for name in &device_names {
                    lab.record(
                        Event::new(Kind::DeviceAdded, name)
                            .detail(format!("imported from {shown}")),
                    );
                }
            }
            Devices::Taken(own.len())
        } else {
            Devices::Kept(own.len())
        };
        Ok((lab.machines().count(), existing.len(), (devices, settings)))
    })?;
    let (devices, settings_taken) = devices;
    let in_file_settings = doc.settings().len();
    if !settings_taken && in_file_settings > 0 {
        say!(
            "mama: kept the lab's own settings; those of {shown} were not imported (`mama \
             import --replace` replaces them)"
        );
    }
    say!(
        "mama: imported {added} machine{} from {shown}{}",
        plural(added),
        if removed > 0 {
            format!(" (replacing {removed})")
        } else {
            String::new()
        }
    );
    match devices {
        Devices::Taken(replaced) if in_file > 0 || replaced > 0 => say!(
            "mama: imported {in_file} power device{} from {shown}{}",
            plural(in_file),
            if replaced > 0 {
                format!(" (replacing {replaced})")
            } else {
                String::new()
            }
        ),
        Devices::Kept(own) if in_file > 0 => say!(
            "mama: kept the lab's own {own} power device{}; the {in_file} of {shown} were not \
             imported (`mama import --replace` replaces them)",
            plural(own)
        ),
        _ => {}
    }
    Ok(())
}

/// What `import` did with the lab's devices: took the file's (replacing
/// so many of the lab's), or kept the lab's own (so many).
enum Devices {
    Taken(usize),
    Kept(usize),
}
