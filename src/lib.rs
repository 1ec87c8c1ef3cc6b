//! mama: share lab machines safely.
//!
//! `run` dispatches a parsed command line. The folders are floors, and each
//! names only the floors below it (a test, [`layers`](self), holds that):
//! - the ground floor: [`text`] (text made safe for a terminal, durations
//!   and times, XML's characters), [`os`] (clock, identity, processes,
//!   /proc), [`exit`] (exit codes), [`net`] (is a machine online, is it
//!   ready: TCP and ICMP probes, the neighbour table); then [`error`];
//! - [`settings`]: every `MAMA_*` variable and the lab's location, read
//!   and parsed once (a database URL in [`settings::url`]);
//! - [`model`]: the lab as plain data that records its changes at the level
//!   of a field ([`model::field`]: the fields and the checks on what users
//!   give; [`model::event`]: the history's events);
//! - [`format`](mod@format): upstream's XML format, which both backends keep the lab
//!   in: [`format::xml`] (a lossless tree and its readers) and
//!   [`format::doc`] (the machine document, replaying the lab's changes);
//!   beside it, [`device`]: speaking to the lab's power devices (outlet
//!   bars and relay boards), a driver a module;
//! - [`backend`]: where the lab is stored, behind one trait
//!   ([`backend::Backend`], [`backend::JobLocks`]) chosen once
//!   ([`backend::Store`]); [`backend::file`] is the XML state file:
//!   transactions, [`backend::file::log`] (the history log),
//!   [`backend::file::lock`] (the only code that calls `flock`),
//!   [`backend::file::rollforward`] (crash safety of writes in place),
//!   [`backend::file::fsutil`] (opening files beside the state file safely,
//!   atomic writes) and [`backend::file::memory`] (how a large lab's memory
//!   is asked for); [`backend::pg`] is a PostgreSQL database;
//! - [`engine`]: [`engine::claim`] (busy rules, claim, release, waiting),
//!   [`engine::stale`] (is a job stale), [`engine::supervise`] (the job's
//!   process), [`engine::manual`] (clear, reserve, release by hand),
//!   [`engine::notify`] (the notify commands, run apart by a supervisor);
//! - [`cli`]: the command line, [`cli::commands`] (one function a command),
//!   [`cli::render`] (tables and JSON), and what is generated from it;
//! - [`serve`]: `mama serve`, the read-only web server (status page,
//!   metrics, JSON), on top of the command line's views; nothing of it
//!   runs for any other command.

/// Writes a line to stderr. Unlike `eprintln!` it never panics: a closed
/// stderr must not stop a `run` from releasing its machine.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod backend;
pub mod cli;
pub mod device;
pub mod engine;
pub mod error;
pub mod exit;
pub mod format;
pub mod model;
pub mod net;
pub mod os;
pub mod serve;
pub mod settings;
pub mod text;

#[cfg(test)]
mod layers;

use backend::Store;
use cli::{Cli, Command};
use engine::supervise;
use error::Error;
use exit::ExitCode;
use model::NewMachine;
use settings::Settings;

/// Runs a parsed command line; returns the process exit status. Errors are
/// printed here, once.
pub fn run(cli: Cli) -> i32 {
    let is_run = matches!(cli.command, Command::Run { .. });
    if !matches!(cli.command, Command::Run { .. } | Command::Wait { .. }) {
        // `mama list | head` ends quietly, as other Unix tools do. `run`
        // and `wait` keep SIGPIPE ignored: they must outlive a closed pipe
        // to release their claim.
        // SAFETY: restores the default action of one signal.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // mama waits for the processes it starts (a job, power and health
    // commands): a SIGCHLD left ignored by whoever started mama (that
    // survives exec) would have the kernel reap them unseen, and a run
    // would wait for the end of a job that had long ended.
    // SAFETY: restores the default action of one signal.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
    if std::process::id() == 1 {
        supervise::end_on_signals_as_init();
    }
    // `init` makes the lab's folder before the lab is located in it.
    if let Command::Init {
        lab,
        group,
        force,
        grant,
    } = cli.command
    {
        let request = backend::InitRequest {
            group,
            force,
            grant,
        };
        let result = Settings::read(lab.or(cli.state))
            .and_then(|settings| cli::commands::init(&settings, &request));
        return finish(result, false);
    }
    let result = Settings::read(cli.state).and_then(|settings| {
        let notifier = engine::notify::Notifier::new(settings.notify.clone());
        let store = Store::open(&settings)?.listened(std::sync::Arc::new(notifier));
        dispatch(&store, &settings, cli.command)
    });
    finish(result, is_run)
}

/// The exit status of a command's `result`; an error is printed here, once.
fn finish(result: error::Result<i32>, is_run: bool) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            // A message may quote the state file or the history: shown
            // safe for a terminal, its own line breaks kept.
            // A busy machine is an ordinary outcome, not an error: no red.
            let prefix = match e {
                Error::Busy(_) => "mama:".to_string(),
                _ => cli::style::error_prefix(),
            };
            say!("{prefix} {}", cli::render::printable_lines(&e.to_string()));
            match e {
                Error::Busy(_) => ExitCode::Busy.code(),
                // Out of service, for `run` too: the job never started
                // for a reason of the lab's, not of mama's.
                Error::OutOfService(_) => ExitCode::Unavailable.code(),
                Error::Interrupted(signal) => ExitCode::signalled(signal),
                // Asked for machines that are not there: as any command.
                Error::NoMatch(_) => ExitCode::Error.code(),
                _ if is_run => ExitCode::RunFailed.code(),
                _ => e.exit_code().code(),
            }
        }
    }
}

/// The machine a `run` or `wait` asks for: one, or any of a pool.
fn wanted(pick: cli::Pick) -> error::Result<engine::claim::Wanted> {
    use engine::claim::Wanted;
    let cli::Pick {
        machines,
        any,
        filters,
    } = pick;
    match (any || !filters.is_empty(), machines.as_slice()) {
        (false, [one]) => Ok(Wanted::One(one.clone())),
        (false, _) => Err(Error::Invalid(
            "give one machine, or --any with the machines to choose from".into(),
        )),
        (true, _) => Ok(Wanted::Any {
            names: machines,
            filters,
        }),
    }
}

fn dispatch(store: &Store, settings: &Settings, command: Command) -> error::Result<i32> {
    use cli::commands as c;
    match command {
        Command::List { names: true, .. } => c::names(store)?,
        Command::List {
            json,
            no_probe,
            mine,
            wide,
            ..
        } => c::list(store, settings, json, !no_probe, mine, wide)?,
        Command::Who { json } => c::who(store, settings, json)?,
        Command::Info {
            machine,
            json,
            no_probe,
        } => c::info(store, settings, &machine, json, !no_probe)?,
        Command::Start {
            machine,
            tries,
            force,
        } => c::start(store, settings, &machine, tries, force)?,
        Command::Stop { machine, force } => c::stop(store, settings, &machine, force)?,
        Command::Power { machine, action } => c::power(store, settings, &machine, action)?,
        Command::Add {
            name,
            mac,
            ip,
            vm,
            resources,
        } => c::add(
            store,
            NewMachine {
                name,
                mac,
                ip: ip.unwrap_or_default(),
                only_vm: vm,
                resources: resources.unwrap_or_default(),
            },
        )?,
        Command::Delete { machine } => c::delete(store, settings, &machine)?,
        Command::Set {
            machine,
            attr,
            value,
        } => c::set(store, &machine, attr, &value)?,
        Command::Get {
            machine,
            attr,
            json,
        } => c::get(store, &machine, attr, json)?,
        Command::Clear { machine, force } => c::clear(store, settings, &machine, force)?,
        Command::Reserve {
            machine,
            length,
            note,
        } => c::reserve(store, &machine, length, note)?,
        Command::Extend { machine, length } => c::extend(store, &machine, length)?,
        Command::Setting { name, value, json } => c::setting(store, name, value, json)?,
        Command::Release { machine } => c::release(store, &machine)?,
        Command::ReleaseForced { machine } => c::release_forced(store, &machine)?,
        Command::Offline { machine, reason } => c::offline(store, &machine, &reason)?,
        Command::Online { machine } => c::online(store, &machine)?,
        Command::Check {
            machine,
            wait_timeout,
        } => return c::check(store, settings, &machine, wait_timeout),
        Command::Wait {
            pick,
            timeout,
            then_reserve,
            length,
        } => {
            let reserve = then_reserve.then_some(engine::manual::Ask { length, note: None });
            c::wait(store, settings, &wanted(pick)?, timeout, reserve)?
        }
        Command::Stats {
            since,
            until,
            by,
            json,
        } => c::stats(store, since, until, by, json)?,
        Command::Log {
            machine,
            since,
            lines,
            json,
            follow,
        } => c::log(
            store,
            settings,
            machine.as_deref(),
            since,
            lines,
            json,
            follow,
        )?,
        Command::Device(device) => match device {
            cli::DeviceCommand::Add {
                name,
                driver,
                options,
            } => c::device_add(store, &name, driver, options.0)?,
            cli::DeviceCommand::List { json } => c::device_list(store, json)?,
            cli::DeviceCommand::Delete { name } => c::device_delete(store, &name)?,
        },
        Command::Completions { shell } => cli::completions::print(shell)?,
        // Run before the store is opened, in `run`.
        Command::Init { .. } => {
            return Err(Error::Invalid("internal error: init dispatched".into()));
        }
        Command::Serve { listen } => serve::serve(store, settings, listen)?,
        Command::Export => c::export(store)?,
        Command::Import { file, replace } => c::import(store, settings, &file, replace)?,
        Command::Run {
            pick,
            job,
            no_wait,
            wait_timeout,
            timeout,
            boot,
            tries,
            command,
        } => {
            return c::run(
                store,
                settings,
                &wanted(pick)?,
                c::RunRequest {
                    label: job,
                    no_wait,
                    wait_timeout,
                    timeout,
                    boot: boot.then_some(tries),
                    command,
                },
            );
        }
    }
    Ok(ExitCode::Ok.code())
}
