//! Operating machines: power them on, wait until they are ready, put them
//! down again (`start`, `stop`, `power`, `run --boot`).
//!
//! A start, as upstream's: the outlet switched on (`pwr_dev`/`pwr_slot`),
//! the relay pressed (`rly_dev`/`rly_slot`, the device's `press` seconds),
//! `startcmd` run (with upstream's `$MAC`, `$OS_ARCH` and `$PID` replaced);
//! then mama waits until the machine is ready, at most `start_timeout`
//! seconds (240 where empty): it answers ICMP echo and accepts a TCP
//! connection on its `ready_port` (22 where empty), or its `readycmd`
//! exits 0. Its address is the `ip` a person set, else the one the
//! neighbour table gives its MAC (learned, and forgotten by `stop`). A
//! start that is not ready in time runs the stop sequence and tries again.
//! A stop: `stopcmd`, the outlet off, the relay held (the device's `hold`
//! seconds). Each sequence runs under the machine's power lock, so two
//! never run on one machine at once, and outside the lab's lock.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::backend::Store;
use crate::device::{self, Reading, Switch};
use crate::engine::claim::{Busy, Caller, busy_for};
use crate::engine::service;
use crate::engine::stale::Judge;
use crate::engine::trust;
use crate::error::{Error, Result};
use crate::model::device::Device;
use crate::model::event::{Event, Kind};
use crate::model::field::{self, Field};
use crate::model::{Lab, Machine};
use crate::net::{self, Reach, Target};
use crate::os::Processes;
use crate::text as render;

/// How long a machine may take to become ready where `start_timeout` is
/// empty: upstream's four minutes.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(240);
/// The port a ready machine answers on where `ready_port` is empty.
pub const DEFAULT_READY_PORT: u16 = 22;
/// How long a look at whether a machine is online already may take.
const ONLINE_LOOK: Duration = Duration::from_millis(500);
/// How often `readycmd` and the neighbour table are asked.
const LOOK_EVERY: Duration = Duration::from_millis(50);
/// The longest pause between two looks at whether a lab's command ended.
const COMMAND_LOOK_MAX: Duration = Duration::from_millis(10);

/// What a start is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct StartRequest {
    /// How many times to power the machine on before giving up.
    pub tries: u32,
    /// Power-cycle a machine that is online already.
    pub force: bool,
    /// The start belongs to the caller's job (`run --boot`).
    pub for_job: bool,
}

/// How a start ended well.
#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    /// It was online already; nothing was switched.
    AlreadyOnline { ip: String },
    /// It became ready after `took`, at try `try_no`.
    Ready {
        ip: String,
        learned: bool,
        took: Duration,
        try_no: u32,
    },
}

impl Started {
    /// The address the machine answers on ("" where `readycmd` judged it
    /// and no address is known).
    pub fn ip(&self) -> &str {
        match self {
            Started::AlreadyOnline { ip } | Started::Ready { ip, .. } => ip,
        }
    }
}

/// What a stop did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// It was not started: nothing was done.
    NotStarted,
    Stopped,
}

/// What `power` is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    On,
    Off,
    Cycle,
    Status,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
            PowerAction::Status => "status",
        }
    }
}

/// What a sequence needs of a machine, read in one transaction.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    mac: String,
    /// The address a person set; empty where none is or it was learned.
    set_ip: String,
    os_arch: String,
    startcmd: String,
    stopcmd: String,
    readycmd: String,
    port: u16,
    timeout: Duration,
    outlet: Option<(Device, u32)>,
    relay: Option<(Device, u32)>,
}

impl Plan {
    fn of(lab: &Lab, machine: &Machine) -> Result<Plan> {
        let name = machine.name().to_string();
        let device = |dev: Field, slot: Field| -> Result<Option<(Device, u32)>> {
            let dev_name = machine.get(dev).trim();
            if dev_name.is_empty() {
                return Ok(None);
            }
            let device = lab.device(dev_name).map_err(|_| {
                Error::Invalid(format!(
                    "{name}: {} names the power device '{}', which the lab does not define \
                     (see `mama device list`)",
                    dev.tag(),
                    render::printable(dev_name)
                ))
            })?;
            device.check()?;
            let slot_text = machine.get(slot).trim();
            let slot: u32 = slot_text.parse().map_err(|_| {
                Error::Invalid(format!(
                    "{name}: {} is '{}', not a slot number",
                    slot.tag(),
                    render::printable(slot_text)
                ))
            })?;
            device.check_slot(slot)?;
            Ok(Some((device.clone(), slot)))
        };
        let timeout = match machine.get(Field::StartTimeout).trim() {
            "" => DEFAULT_START_TIMEOUT,
            text => Duration::from_secs(text.parse::<u32>().map(u64::from).map_err(|_| {
                Error::Invalid(format!(
                    "{name}: start_timeout is '{}', not a whole number of seconds (0 to 4294967295)",
                    render::printable(text)
                ))
            })?),
        };
        let port = match machine.get(Field::ReadyPort).trim() {
            "" => DEFAULT_READY_PORT,
            text => text.parse().ok().filter(|&p| p > 0).ok_or_else(|| {
                Error::Invalid(format!(
                    "{name}: ready_port is '{}', not a TCP port",
                    render::printable(text)
                ))
            })?,
        };
        let learned = field::is_on(machine.get(Field::IpLearned));
        Ok(Plan {
            name: name.clone(),
            mac: machine.get(Field::Mac).to_string(),
            set_ip: if learned {
                String::new()
            } else {
                machine.get(Field::Ip).trim().to_string()
            },
            os_arch: machine
                .get(Field::Os)
                .split('/')
                .next()
                .unwrap_or("")
                .to_string(),
            startcmd: machine.get(Field::StartCmd).to_string(),
            stopcmd: machine.get(Field::StopCmd).to_string(),
            readycmd: machine.get(Field::ReadyCmd).to_string(),
            port,
            timeout,
            outlet: device(Field::PwrDev, Field::PwrSlot)?,
            relay: device(Field::RlyDev, Field::RlySlot)?,
        })
    }

    /// Whether this machine can be powered at all.
    fn has_power(&self) -> bool {
        self.outlet.is_some() || self.relay.is_some() || !self.startcmd.trim().is_empty()
    }

    /// The commands of the lab's that a sequence runs, named for the trust
    /// check.
    fn commands(&self) -> Vec<String> {
        let mut what = Vec::new();
        for (field, text) in [
            ("startcmd", &self.startcmd),
            ("stopcmd", &self.stopcmd),
            ("readycmd", &self.readycmd),
        ] {
            if !text.trim().is_empty() {
                what.push(format!("the {field} of {}", self.name));
            }
        }
        for (device, _) in self.outlet.iter().chain(self.relay.iter()) {
            if device.driver.needs_trust() {
                what.push(format!(
                    "{} of power device {}",
                    device.driver.trusted_part(),
                    device.name
                ));
            }
        }
        what
    }

    /// The slot of the machine's outlet, else its relay.
    fn slot(&self) -> Option<u32> {
        self.outlet
            .as_ref()
            .or(self.relay.as_ref())
            .map(|&(_, slot)| slot)
    }

    fn context(&self, ip: &str) -> device::Context {
        device::Context {
            machine: Some(self.name.clone()),
            mac: Some(self.mac.clone()),
            ip: (!ip.is_empty()).then(|| ip.to_string()),
        }
    }

    /// A command of the lab's with upstream's substitutions, as `sh -c`
    /// runs it, with the machine in its environment.
    fn shell(&self, text: &str, ip: &str) -> Command {
        let text = text
            .replace("$OS_ARCH", &self.os_arch)
            .replace("$MAC", &self.mac)
            .replace("$PID", &std::process::id().to_string());
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(text);
        command
            .env("MAMA_MACHINE", &self.name)
            .env("MAMA_MAC", &self.mac)
            .env("MAMA_IP", ip)
            .env(
                "MAMA_SLOT",
                self.slot().map(|s| s.to_string()).unwrap_or_default(),
            )
            .stdin(Stdio::null());
        command
    }
}

/// Runs a lab's command (`startcmd`, `stopcmd`, `readycmd`) to its end or
/// `deadline`, its output on mama's stderr (`quiet`: nowhere), in a
/// process group of its own that is killed when the time is up. Ok when
/// it exited 0.
fn run_command(mut command: Command, what: &str, deadline: Instant, quiet: bool) -> Result<()> {
    use std::os::fd::AsFd;
    if quiet {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    } else {
        // Its output goes where mama's messages go: stdout is the job's,
        // or a script's.
        match std::io::stderr().as_fd().try_clone_to_owned() {
            Ok(err) => command.stdout(err),
            Err(_) => command.stdout(Stdio::null()),
        };
    }
    command.process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| Error::Invalid(format!("cannot run {what}: {e}")))?;
    // Looked at 1 ms after it started, then twice as long after each look
    // up to every 10 ms: a quick command (a `readycmd` that is `true`) is
    // seen ended within a millisecond or two, not a whole 10 ms later.
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(Error::Invalid(format!("{what} failed ({status})")));
            }
            Ok(None) => {}
            Err(e) => return Err(Error::Invalid(format!("cannot wait for {what}: {e}"))),
        }
        if Instant::now() >= deadline {
            let group = child.id() as libc::pid_t;
            // SAFETY: signals the command's own process group.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
            let _ = child.wait();
            return Err(Error::Invalid(format!("{what} did not end in time")));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(COMMAND_LOOK_MAX);
    }
}

/// Why a start's wait ended without the machine ready.
enum NotReady {
    TimedOut,
    Interrupted(i32),
}

/// The commands a caller needs: who asks, how jobs are judged.
pub struct World<'a> {
    pub store: &'a Store,
    pub caller: &'a Caller,
    pub judge: &'a Judge<'a, Processes>,
    /// A signal that came (INT, TERM, HUP, blocked by the caller): the
    /// sequence stops waiting and puts the machine down.
    pub interrupted: &'a dyn Fn() -> Option<i32>,
}

/// What keeps `caller` from operating `machine`: another's job or
/// reservation on it, or on a machine sharing a resource; a start by
/// someone else (unless `force`).
fn refusal(lab: &Lab, name: &str, world: &World<'_>, force: bool) -> Result<Option<String>> {
    let held = busy_for(lab, name, world.caller, world.judge)?;
    Ok(match held {
        None => None,
        Some(Busy::Started { .. }) if force => None,
        Some(Busy::Locked) => Some(format!(
            "{name} is busy: processes of a job still hold its job lock"
        )),
        Some(busy) => Some(format!(
            "{name} is not yours to operate: {}",
            busy_describe(&busy, name)
        )),
    })
}

fn busy_describe(busy: &Busy, target: &str) -> String {
    busy.describe(target)
}

/// Records `event` in a transaction of its own.
fn record(store: &Store, event: Event) -> Result<()> {
    store.update(|lab| {
        lab.record(event);
        Ok(())
    })
}

/// `mama start`: powers `name` on and waits until it is ready.
pub fn start(world: &World<'_>, name: &str, request: StartRequest) -> Result<Started> {
    let store = world.store;
    let user = world.caller.user.clone();
    let plan = store.update(|lab| {
        refuse_out_of_service(lab, name)?;
        // `--force` passes another's start (SPEC "Who may"), as for stop.
        if !request.for_job
            && let Some(why) = refusal(lab, name, world, request.force)?
        {
            return Err(Error::Invalid(why));
        }
        let machine = lab.get(name)?;
        let plan = Plan::of(lab, machine)?;
        Ok(plan)
    })?;
    for what in plan.commands() {
        trust::check(store, &what)?;
    }
    let _power = store.power_lock(name, &mut || {
        say!("mama: waiting for another power sequence on {name} to end");
    })?;
    // Marked started before anything is switched: whoever looks sees the
    // machine taken, and a start cut short by SIGKILL is seen.
    store.update(|lab| {
        let mut m = lab.get_mut(name)?;
        m.set(Field::IsStarted, "1")?;
        m.set(Field::StartedBy, &user)?;
        if request.for_job {
            m.set(Field::StartedForJob, "1")?;
        } else {
            m.clear(Field::StartedForJob)?;
        }
        Ok(())
    })?;
    let online = online_now(&plan);
    if request.force && online.is_some() {
        // A power-cycle: down first, as a stop would put it, then up.
        if let Err(e) = power_off(&plan, "") {
            say!("mama: {name}: {e}");
        }
    }
    if !request.force
        && let Some(ip) = online
    {
        store.update(|lab| {
            remember_ip(lab, &plan, &ip)?;
            service::start_succeeded(lab, name)?;
            lab.record(
                Event::new(Kind::Started, name)
                    .detail("online already; not power-cycled".to_string()),
            );
            Ok(())
        })?;
        return Ok(Started::AlreadyOnline { ip: ip.0 });
    }
    if !plan.has_power() {
        unmark(store, name)?;
        return Err(Error::Invalid(format!(
            "{name} cannot be powered: it has no pwr-dev, rly-dev or startcmd \
             (and it is not online)"
        )));
    }
    let tries = request.tries.max(1);
    for try_no in 1..=tries {
        let began = Instant::now();
        let began_at = crate::os::now();
        let on = power_on(&plan);
        let waited = match &on {
            Ok(()) => wait_ready(&plan, began + plan.timeout, world.interrupted),
            Err(_) => Err(NotReady::TimedOut),
        };
        match waited {
            Ok(ip) => {
                let took = began.elapsed();
                store.update(|lab| {
                    remember_ip(lab, &plan, &ip)?;
                    service::start_succeeded(lab, name)?;
                    lab.get_mut(name)?.set(
                        Field::LastStart,
                        &format!("{began_at} {:.3}", took.as_secs_f64()),
                    )?;
                    lab.record(Event::new(Kind::Started, name).detail(format!(
                        "ready after {} (try {try_no} of {tries})",
                        render::seconds(took)
                    )));
                    Ok(())
                })?;
                return Ok(Started::Ready {
                    ip: ip.0,
                    learned: ip.1,
                    took,
                    try_no,
                });
            }
            Err(NotReady::Interrupted(signal)) => {
                let _ = power_off(&plan, "");
                unmark(store, name)?;
                record(
                    store,
                    Event::new(Kind::StartFailed, name)
                        .detail(format!("interrupted by signal {signal}; stopped again")),
                )?;
                return Err(Error::Interrupted(signal));
            }
            Err(NotReady::TimedOut) => {
                let why = match on {
                    Ok(()) => format!(
                        "not ready within its start timeout of {} (try {try_no} of {tries})",
                        render::seconds(plan.timeout)
                    ),
                    Err(e) => format!("could not power it on: {e} (try {try_no} of {tries})"),
                };
                say!("mama: {name}: {why}; stopping it");
                if let Err(e) = power_off(&plan, "") {
                    say!("mama: {name}: {e}");
                }
                record(store, Event::new(Kind::StartFailed, name).detail(why))?;
            }
        }
    }
    // Every try failed: one more failed start in a row, which may take
    // the machine out of service (the lab's offline-after-failed-starts).
    let taken = store.update(|lab| {
        lab.get_mut(name)?.forget_start()?;
        service::start_failed(lab, name, &user, crate::os::now())
    })?;
    if let Some(mark) = taken {
        say!(
            "mama: {name} is out of service now: {} (`mama online {name}` puts it back)",
            render::printable(&mark.reason)
        );
    }
    Err(Error::NotReady(format!(
        "{name} did not become ready within its start timeout of {} in {tries} {}; \
         it was stopped again",
        render::seconds(plan.timeout),
        if tries == 1 { "try" } else { "tries" }
    )))
}

/// Refuses a machine out of service: nothing powers it up.
fn refuse_out_of_service(lab: &Lab, name: &str) -> Result<()> {
    match lab.get(name)?.offline() {
        Some(mark) => Err(Error::OutOfService(format!(
            "{}; `mama online {name}` puts it back",
            mark.refusal(name)
        ))),
        None => Ok(()),
    }
}

/// Forgets a start that did not happen.
fn unmark(store: &Store, name: &str) -> Result<()> {
    store.update(|lab| lab.get_mut(name)?.forget_start())
}

/// Stores the address a start learned (never over one a person set).
fn remember_ip(lab: &mut Lab, plan: &Plan, ip: &(String, bool)) -> Result<()> {
    if ip.1 && plan.set_ip.is_empty() {
        let mut m = lab.get_mut(&plan.name)?;
        m.set(Field::Ip, &ip.0)?;
        m.set(Field::IpLearned, "1")?;
    }
    Ok(())
}

/// The machine's address: the one a person set, else the neighbour
/// table's for its MAC (learned: true).
fn address(plan: &Plan) -> Option<(String, bool)> {
    if !plan.set_ip.is_empty() {
        return Some((plan.set_ip.clone(), false));
    }
    net::neighbour_ip(&plan.mac).map(|ip| (ip.to_string(), true))
}

/// Whether the machine is ready now (one quick look); its address if so.
fn online_now(plan: &Plan) -> Option<(String, bool)> {
    if !plan.readycmd.trim().is_empty() {
        let ip = address(plan).unwrap_or_default();
        let command = plan.shell(&plan.readycmd, &ip.0);
        return run_command(
            command,
            "readycmd",
            Instant::now() + Duration::from_secs(10),
            true,
        )
        .is_ok()
        .then_some(ip);
    }
    let ip = address(plan)?;
    let target = Target {
        ip: ip.0.parse().ok()?,
        port: plan.port,
    };
    let reach = net::probe_all(&[target], Instant::now() + ONLINE_LOOK);
    (reach.first() == Some(&Reach::Online)).then_some(ip)
}

/// Waits until the machine is ready, `deadline` at the latest.
fn wait_ready(
    plan: &Plan,
    deadline: Instant,
    interrupted: &dyn Fn() -> Option<i32>,
) -> std::result::Result<(String, bool), NotReady> {
    let signal = std::cell::Cell::new(None);
    let stop = || {
        if signal.get().is_none() {
            signal.set(interrupted());
        }
        signal.get().is_some()
    };
    loop {
        if stop() {
            return Err(NotReady::Interrupted(signal.get().unwrap_or(libc::SIGTERM)));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(NotReady::TimedOut);
        }
        let ip = address(plan);
        if !plan.readycmd.trim().is_empty() {
            let shown = ip.clone().unwrap_or_default();
            let command = plan.shell(&plan.readycmd, &shown.0);
            if run_command(command, "readycmd", deadline, true).is_ok() {
                return Ok(shown);
            }
            std::thread::sleep(LOOK_EVERY.min(deadline.saturating_duration_since(Instant::now())));
            continue;
        }
        let Some(ip) = ip else {
            std::thread::sleep(LOOK_EVERY.min(deadline - now));
            continue;
        };
        let Ok(addr) = ip.0.parse() else {
            return Err(NotReady::TimedOut);
        };
        let target = Target {
            ip: addr,
            port: plan.port,
        };
        // A learned address is looked up again now and then: the
        // neighbour table may learn a newer one.
        let until = if ip.1 {
            deadline.min(now + Duration::from_secs(2))
        } else {
            deadline
        };
        match net::wait_ready(target, until, &stop) {
            Ok(true) => return Ok(ip),
            Ok(false) => {}
            Err(e) => {
                say!("mama: cannot probe {}: {e}", plan.name);
                std::thread::sleep(
                    LOOK_EVERY.min(deadline.saturating_duration_since(Instant::now())),
                );
            }
        }
    }
}

/// The power-on sequence: outlet on, relay pressed, `startcmd`.
fn power_on(plan: &Plan) -> Result<()> {
    let ip = address(plan).map(|a| a.0).unwrap_or_default();
    if let Some((device, slot)) = &plan.outlet {
        device::open(device, &plan.context(&ip))?.set(*slot, true)?;
    }
    if let Some((device, slot)) = &plan.relay {
        let mut switch = device::open(device, &plan.context(&ip))?;
        device::press(switch.as_mut(), *slot, device.press()?)?;
    }
    if !plan.startcmd.trim().is_empty() {
        run_command(
            plan.shell(&plan.startcmd, &ip),
            &format!("the startcmd of {}", plan.name),
            Instant::now() + plan.timeout,
            false,
        )?;
    }
    Ok(())
}

/// The stop sequence: `stopcmd`, outlet off, relay held. Every step is
/// tried; the errors are joined.
fn power_off(plan: &Plan, ip: &str) -> Result<()> {
    let ip = if ip.is_empty() {
        address(plan).map(|a| a.0).unwrap_or_default()
    } else {
        ip.to_string()
    };
    let mut errors = Vec::new();
    if !plan.stopcmd.trim().is_empty()
        && let Err(e) = run_command(
            plan.shell(&plan.stopcmd, &ip),
            &format!("the stopcmd of {}", plan.name),
            Instant::now() + plan.timeout,
            false,
        )
    {
        errors.push(e.to_string());
    }
    if let Some((device, slot)) = &plan.outlet
        && let Err(e) =
            device::open(device, &plan.context(&ip)).and_then(|mut s| s.set(*slot, false))
    {
        errors.push(e.to_string());
    }
    if let Some((device, slot)) = &plan.relay
        && let Err(e) = device::open(device, &plan.context(&ip)).and_then(|mut s| {
            let hold = device.hold()?;
            device::press(s.as_mut(), *slot, hold)
        })
    {
        errors.push(e.to_string());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "stopping {}: {}",
            plan.name,
            errors.join("; ")
        )))
    }
}

/// `mama stop`: puts `name` down and forgets its start; a machine that
/// is not started is left alone (unless `force`). `why` goes into the
/// `stopped` event.
pub fn stop(world: &World<'_>, name: &str, force: bool, why: Option<&str>) -> Result<Stopped> {
    let store = world.store;
    let (plan, started) = store.update(|lab| {
        if let Some(refused) = refusal(lab, name, world, force)? {
            return Err(Error::Invalid(refused));
        }
        let machine = lab.get(name)?;
        Ok((Plan::of(lab, machine)?, machine.is_started()))
    })?;
    if !started && !force {
        return Ok(Stopped::NotStarted);
    }
    for what in plan.commands() {
        trust::check(store, &what)?;
    }
    let _power = store.power_lock(name, &mut || {
        say!("mama: waiting for another power sequence on {name} to end");
    })?;
    let result = power_off(&plan, "");
    store.update(|lab| {
        if result.is_ok() {
            lab.get_mut(name)?.forget_start()?;
        }
        let mut detail = why.map(str::to_string);
        if let Err(e) = &result {
            detail = Some(format!(
                "{}failed: {e}",
                detail.map(|d| format!("{d}; ")).unwrap_or_default()
            ));
        }
        let mut event = Event::new(Kind::Stopped, name);
        if let Some(detail) = detail {
            event = event.detail(detail);
        }
        lab.record(event);
        Ok(())
    })?;
    result.map(|()| Stopped::Stopped)
}

/// `mama power`: switches the machine's outlet, or reads it.
pub fn power(world: &World<'_>, name: &str, action: PowerAction) -> Result<Reading> {
    let store = world.store;
    let plan = store.update(|lab| {
        if matches!(action, PowerAction::On | PowerAction::Cycle) {
            refuse_out_of_service(lab, name)?;
        }
        if action != PowerAction::Status
            && let Some(refused) = refusal(lab, name, world, false)?
        {
            return Err(Error::Invalid(refused));
        }
        Plan::of(lab, lab.get(name)?)
    })?;
    let Some((device, slot)) = plan.outlet.clone() else {
        return Err(Error::Invalid(format!(
            "{name} has no outlet to switch: set its pwr-dev and pwr-slot \
             (a relay cannot be read or left on)"
        )));
    };
    if device.driver.needs_trust() {
        trust::check(
            store,
            &format!(
                "{} of power device {}",
                device.driver.trusted_part(),
                device.name
            ),
        )?;
    }
    let ip = plan.set_ip.clone();
    let mut switch: Box<dyn Switch> = device::open(&device, &plan.context(&ip))?;
    if action == PowerAction::Status {
        if !device.reads_back() {
            return Err(Error::Invalid(format!(
                "power device {} cannot tell whether an outlet is on: it has no status \
                 command (`mama device add` with --status)",
                device.name
            )));
        }
        return switch.read(slot);
    }
    let _power = store.power_lock(name, &mut || {
        say!("mama: waiting for another power sequence on {name} to end");
    })?;
    match action {
        PowerAction::On => switch.set(slot, true)?,
        PowerAction::Off => switch.set(slot, false)?,
        PowerAction::Cycle => {
            switch.set(slot, false)?;
            std::thread::sleep(device.press()?);
            switch.set(slot, true)?;
        }
        PowerAction::Status => {}
    }
    record(
        store,
        Event::new(Kind::Power, name).detail(format!(
            "{} (outlet {slot} of {})",
            action.as_str(),
            device.name
        )),
    )?;
    if device.reads_back() {
        switch.read(slot)
    } else {
        Ok(Reading {
            on: action != PowerAction::Off,
            watts: None,
            volts: None,
            amps: None,
        })
    }
}

/// What `list` shows of a machine's power and reach.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub reach: Option<Reach>,
    pub power: Option<bool>,
    pub watts: Option<f64>,
}

/// What a look at a lab's machines asks: every address, and every outlet
/// a device can be asked for, taken out of the lab so that the look can
/// run on a thread of its own while the lab is shown.
pub struct Look {
    machines: usize,
    /// The addresses, and the machine of each.
    targets: Vec<Target>,
    at: Vec<usize>,
    /// Each device, and its outlets (machine, slot).
    outlets: Vec<(Device, Vec<(usize, u32)>)>,
}

impl Look {
    /// What to ask of `lab`'s machines; `None` when there is nothing to
    /// ask (no machine has an address or an outlet that can be read).
    /// The command driver's outlets are not read: that would run the
    /// lab's commands for a look. A USB-RLY08 board's are read only where
    /// `trusted` says the lab is (asked once, where one is named).
    pub fn of(lab: &Lab, trusted: &dyn Fn() -> bool) -> Option<Look> {
        let mut look = Look {
            machines: 0,
            targets: Vec::new(),
            at: Vec::new(),
            outlets: Vec::new(),
        };
        let trust = std::cell::OnceCell::new();
        let readable: Vec<&Device> = lab
            .devices()
            .filter(|d| d.driver != crate::model::device::Driver::Command)
            .filter(|d| d.reads_back() && d.check().is_ok())
            .filter(|d| !d.driver.needs_trust() || *trust.get_or_init(trusted))
            .collect();
        for (i, m) in lab.machines().enumerate() {
            look.machines = i + 1;
            let ip = m.get(Field::Ip).trim();
            if !ip.is_empty()
                && let Ok(ip) = ip.parse()
            {
                let port = m
                    .get(Field::ReadyPort)
                    .trim()
                    .parse()
                    .unwrap_or(DEFAULT_READY_PORT);
                look.targets.push(Target { ip, port });
                look.at.push(i);
            }
            let dev = m.get(Field::PwrDev).trim();
            if dev.is_empty() {
                continue;
            }
            if let Some(device) = readable.iter().find(|d| d.name == dev)
                && let Ok(slot) = m.get(Field::PwrSlot).trim().parse::<u32>()
            {
                match look.outlets.iter_mut().find(|(d, _)| d.name == dev) {
                    Some((_, slots)) => slots.push((i, slot)),
                    None => look.outlets.push(((*device).clone(), vec![(i, slot)])),
                }
            }
        }
        (!look.targets.is_empty() || !look.outlets.is_empty()).then_some(look)
    }

    /// Asks, all at once, for `deadline` at most: each address whether it
    /// answers, each device (on a thread of its own) what its outlets say.
    /// A device that does not answer in time says nothing.
    pub fn run(self, deadline: Instant) -> Vec<Seen> {
        let mut seen = vec![Seen::default(); self.machines];
        let (sender, receiver) = std::sync::mpsc::channel();
        for (device, slots) in self.outlets {
            let sender = sender.clone();
            std::thread::spawn(move || {
                let Ok(mut switch) = device::open(&device, &device::Context::default()) else {
                    return;
                };
                for (i, slot) in slots {
                    if let Ok(reading) = switch.read(slot) {
                        let _ = sender.send((i, reading));
                    }
                }
            });
        }
        drop(sender);
        if !self.targets.is_empty() {
            let reach = net::probe_all(&self.targets, deadline);
            for (i, r) in self.at.into_iter().zip(reach) {
                seen[i].reach = Some(r);
            }
        }
        while let Ok((i, reading)) =
            receiver.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Some(s) = seen.get_mut(i) {
                s.power = Some(reading.on);
                s.watts = reading.watts;
            }
        }
        seen
    }
}

/// The arguments of a job's environment a boot run adds.
pub fn job_env(started: &Started) -> Vec<(OsString, OsString)> {
    vec![("MAMA_IP".into(), started.ip().into())]
}
