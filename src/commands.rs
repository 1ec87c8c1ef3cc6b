//! One function per command, on top of the store, the lab and the claim loop.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::claim::{self, Caller, Intent, Patience};
use crate::cli::{GetAttr, SetAttr};
use crate::error::{Error, Result};
use crate::exit::ExitCode;
use crate::lab::{self, Field, Lab, NewMachine};
use crate::os::{self, Processes};
use crate::render::{self, MachineView};
use crate::stale::{self, Judge, Verdict};
use crate::store::{Snapshot, Store};
use crate::supervise::{self, Ending};

/// The default longest sleep between two looks at the state file.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// Reads the lab for a read-only command, saying where it looked when there
/// is no state file.
fn read(store: &Store) -> Result<Lab> {
    let Snapshot { lab, existed } = store.read()?;
    if !existed {
        eprintln!(
            "mama: no state file at {}; the lab is empty",
            store.path().display()
        );
    }
    Ok(lab)
}

/// What judging jobs needs from this host, gathered once per command.
struct World {
    processes: Processes,
    host: String,
    stale_after: u64,
}

impl World {
    fn new() -> Result<World> {
        Ok(World {
            processes: Processes::new(),
            host: os::host_name(),
            stale_after: stale::stale_after_from_env()?,
        })
    }

    fn judge(&self) -> Judge<'_, Processes> {
        Judge {
            now: os::now(),
            stale_after: self.stale_after,
            host: &self.host,
            processes: &self.processes,
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Invalid(format!("cannot write JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

pub fn list(store: &Store, json: bool) -> Result<()> {
    let lab = read(store)?;
    let world = World::new()?;
    let judge = world.judge();
    let views: Vec<MachineView> = lab
        .machines()
        .map(|m| MachineView::new(&m, &judge))
        .collect();
    if json {
        print_json(&views)
    } else {
        println!("{}", render::table(&views));
        Ok(())
    }
}

pub fn info(store: &Store, machine: &str, json: bool) -> Result<()> {
    let lab = read(store)?;
    let world = World::new()?;
    let judge = world.judge();
    let view = MachineView::new(&lab.get(machine)?, &judge);
    if json {
        print_json(&view)
    } else {
        print!("{}", render::info(&view, judge.now));
        Ok(())
    }
}

pub fn add(store: &Store, new: NewMachine) -> Result<()> {
    lab::check_name(&new.name)?;
    let new = NewMachine {
        mac: lab::normalize(Field::Mac, &new.mac)?,
        ip: lab::normalize(Field::Ip, &new.ip)?,
        resources: lab::normalize(Field::Resources, &new.resources)?,
        ..new
    };
    store.update(|lab| lab.add(&new))?;
    eprintln!("mama: added {} ({})", new.name, new.mac);
    Ok(())
}

pub fn delete(store: &Store, machine: &str) -> Result<()> {
    let world = World::new()?;
    let judge = world.judge();
    store.update(|lab| {
        if let Some(job) = lab.get(machine)?.job()
            && !matches!(judge.judge(&job), Verdict::Stale(_))
        {
            return Err(Error::Invalid(format!(
                "{machine} has a live job '{}'; wait for it to end, \
                 or run `mama clear {machine}` if you are sure nobody uses it",
                job.label
            )));
        }
        lab.remove(machine)
    })?;
    eprintln!("mama: deleted {machine}");
    Ok(())
}

pub fn set(store: &Store, machine: &str, attr: SetAttr, value: &str) -> Result<()> {
    let field = attr.field();
    let value = lab::normalize(field, value)?;
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
        lab.get_mut(machine)?.set(field, &value)
    })
}

pub fn get(store: &Store, machine: &str, attr: GetAttr) -> Result<()> {
    let lab = read(store)?;
    println!("{}", lab.get(machine)?.get(attr.field()));
    Ok(())
}

/// Forgets job, PID, timestamp, `is_started` and `ip`, as upstream's
/// "clear stale data" does.
pub fn clear(store: &Store, target: &str) -> Result<()> {
    let clear_one = |m: &mut lab::MachineMut<'_>| -> Result<()> {
        m.clear_job()?;
        m.set(Field::IsStarted, "")?;
        m.set(Field::Ip, "")
    };
    let cleared = store.update(|lab| {
        if target == "all" {
            lab.for_each_mut(clear_one)?;
            Ok(lab.machines().count())
        } else {
            clear_one(&mut lab.get_mut(target)?)?;
            Ok(1)
        }
    })?;
    eprintln!(
        "mama: cleared {target} ({cleared} machine{})",
        plural(cleared)
    );
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub fn reserve(store: &Store, machine: &str) -> Result<()> {
    let user = os::user_name();
    store.update(|lab| {
        let mut m = lab.get_mut(machine)?;
        match m.view().reservation() {
            Some(holder) if holder != user => Err(Error::Invalid(format!(
                "{machine} is reserved by {holder} already"
            ))),
            _ => m.set(Field::Reservation, &user),
        }
    })?;
    eprintln!("mama: {machine} is reserved for {user}");
    Ok(())
}

pub fn release(store: &Store, machine: &str) -> Result<()> {
    let user = os::user_name();
    store.update(|lab| {
        let mut m = lab.get_mut(machine)?;
        match m.view().reservation() {
            None => Err(Error::Invalid(format!("{machine} is not reserved"))),
            Some(holder) if holder != user => Err(Error::Invalid(format!(
                "{machine} is reserved by {holder}, not by you ({user}); \
                 `mama release-forced {machine}` releases it anyway"
            ))),
            Some(_) => m.set(Field::Reservation, ""),
        }
    })?;
    eprintln!("mama: released {machine}");
    Ok(())
}

pub fn release_forced(store: &Store, machine: &str) -> Result<()> {
    let holder = store.update(|lab| {
        let mut m = lab.get_mut(machine)?;
        let holder = m.view().reservation();
        m.set(Field::Reservation, "")?;
        Ok(holder)
    })?;
    match holder {
        Some(holder) => eprintln!("mama: released {machine} (reserved by {holder})"),
        None => eprintln!("mama: {machine} was not reserved"),
    }
    Ok(())
}

/// The longest sleep between two looks: `MAMA_POLL_INTERVAL` seconds.
fn poll_interval() -> Result<Duration> {
    match std::env::var("MAMA_POLL_INTERVAL") {
        Err(_) => Ok(DEFAULT_POLL),
        Ok(v) if v.trim().is_empty() => Ok(DEFAULT_POLL),
        Ok(v) => crate::cli::parse_seconds(&v)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "MAMA_POLL_INTERVAL must be a positive number of seconds, not '{v}'"
                ))
            }),
    }
}

pub fn wait(store: &Store, machine: &str, timeout: Option<Duration>) -> Result<()> {
    let processes = Processes::new();
    let caller = Caller::current(&processes);
    let patience = Patience {
        no_wait: false,
        timeout,
        poll: poll_interval()?,
    };
    let stale_after = stale::stale_after_from_env()?;
    claim::acquire(
        store,
        machine,
        &caller,
        &processes,
        stale_after,
        &Intent::Wait,
        patience,
    )?;
    Ok(())
}

/// What `run` needs besides the machine.
pub struct RunRequest {
    pub label: Option<String>,
    pub no_wait: bool,
    pub wait_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
    pub command: Vec<OsString>,
}

/// Waits, claims, runs the job, releases; returns the job's exit status.
/// An error means the job never started.
pub fn run(store: &Store, machine: &str, request: RunRequest) -> Result<i32> {
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
    lab::check_value(Field::Job, &label)?;
    let processes = Processes::new();
    let caller = Caller::current(&processes);
    let patience = Patience {
        no_wait: request.no_wait,
        timeout: request.wait_timeout,
        poll: poll_interval()?,
    };
    let stale_after = stale::stale_after_from_env()?;
    let intent = Intent::Run {
        label: label.clone(),
    };
    let claim = claim::acquire(
        store,
        machine,
        &caller,
        &processes,
        stale_after,
        &intent,
        patience,
    )?
    .ok_or_else(|| Error::Invalid("internal error: a run ended without a claim".into()))?;
    // From here on INT, TERM and HUP are the job's: mama forwards them and
    // always gets to release.
    let job_mask = match supervise::block_signals() {
        Ok(mask) => mask,
        Err(e) => {
            claim.release(store)?;
            return Err(e);
        }
    };
    let job = supervise::Job {
        program: program.clone(),
        args: args.to_vec(),
        env: vec![
            ("MAMA_MACHINE".into(), claim.machine.clone()),
            ("MAMA_JOB".into(), label),
            ("MAMA_MAC".into(), claim.mac.clone()),
            ("MAMA_IP".into(), claim.ip.clone()),
        ],
        timeout: request.timeout,
    };
    let ending = supervise::run(&job, job_mask);
    let released = claim.release(store);
    let ending = ending?;
    match &ending {
        Ending::NotStarted(e) => eprintln!("mama: cannot run '{}': {e}", program.to_string_lossy()),
        Ending::TimedOut => eprintln!(
            "mama: the job on {machine} ran out of time ({}) and was stopped",
            render::seconds(request.timeout.unwrap_or_default())
        ),
        Ending::Exited(_) | Ending::Signalled(_) => {}
    }
    if let Err(e) = released {
        eprintln!("mama: could not release {machine}: {e}");
        if ending.exit_code() == 0 {
            return Ok(ExitCode::Error.code());
        }
    }
    Ok(ending.exit_code())
}
