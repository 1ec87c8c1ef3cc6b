//! The command line: the single source of the help text, and what is made
//! of it: the commands ([`commands`]), what they print ([`render`],
//! [`style`]), the man page ([`manpage`]) and completions ([`completions`]).

pub mod commands;
pub mod completions;
pub mod manpage;
pub mod render;
pub mod style;

use crate::text::{When, parse_seconds, parse_when};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::model::device::{self, Driver};
use crate::model::field::{self, Field};
use crate::model::setting::{self as lab_setting, Setting};

/// Share lab machines safely: wait for a machine, claim it, run a job,
/// release it however the job ends.
#[derive(Debug, Parser)]
#[command(name = "mama", version, about, max_term_width = 100)]
#[command(
    after_help = "The state file is --state, else $MAMA_STATE, else $MAMA_PATH/mama.xml, \
else /var/lib/mama/mama.xml. A postgresql:// URL there keeps the lab in PostgreSQL, shared \
by every host that reaches the database (password from ~/.pgpass or PGPASSFILE; \
MAMA_HOST_TIMEOUT, default 30 s, bounds how long a dead host's claims stay)."
)]
pub struct Cli {
    /// The state file or postgresql:// URL (default: $MAMA_STATE, else $MAMA_PATH/mama.xml, else /var/lib/mama/mama.xml)
    #[arg(long, global = true, value_name = "PATH|URL")]
    pub state: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

// Each subcommand's arguments are built only when it is the one used
// (clap builds them all otherwise: a seventh of a run's time before the
// lab is read). What needs them all, the man page and the completions,
// takes [`whole_command`].
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Make a lab ready for its group: its folder, files and modes, or a database's tables
    ///
    /// For a state file: the folder (made if missing) gets the group and mode 2775 (group
    /// rwx, setgid, so every file made in it later takes the group); the state file (an empty
    /// lab where there is none), its lock file, history log and folder of machine locks get the
    /// group and modes its members can write. Only what is not so yet changes: run again, it
    /// says nothing changed. What another user set up, or what another group holds, changes
    /// only with --force. GROUP defaults to the folder's group, unless that is your own private
    /// group; you must be a member of GROUP (or root).
    ///
    /// For a postgresql:// URL: creates the lab's tables (or migrates older ones) and prints
    /// the GRANT statements a role that uses the lab needs; --grant ROLE gives them to ROLE.
    Init {
        /// The state file or postgresql:// URL (default: --state, $MAMA_STATE, ...)
        #[arg(value_name = "PATH|URL")]
        lab: Option<PathBuf>,
        /// The group that shares the lab (a state file's)
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Change what another user set up, or what another group holds
        #[arg(long)]
        force: bool,
        /// A database lab: grant ROLE what a lab's user needs
        #[arg(long, value_name = "ROLE")]
        grant: Option<String>,
    },
    // An attribute, not a doc comment: rustdoc would read `[STALE]` as a
    // link.
    #[command(about = "Show every machine and its job; a stale job ends in [STALE]")]
    List {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
        /// Print only the names, one a line (for shell completion)
        #[arg(long, hide = true, conflicts_with = "json")]
        names: bool,
        /// Do not ask the machines whether they answer, nor their outlets whether they are on
        #[arg(long)]
        no_probe: bool,
        /// Only the machines you hold: your jobs, reservations and starts
        #[arg(long)]
        mine: bool,
        /// On a terminal, every cell whole, however wide the table grows
        #[arg(long)]
        wide: bool,
    },
    /// Who holds what: every live job, reservation and start, by whom, since and until when
    Who {
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Show all fields of a machine, and its job
    Info {
        /// The machine's name
        machine: String,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
        /// Do not ask the machine whether it answers, nor its outlet whether it is on
        #[arg(long)]
        no_probe: bool,
    },
    /// Power a machine on and wait until it is ready
    ///
    /// Switches its outlet on (pwr-dev, pwr-slot), presses its relay (rly-dev, rly-slot) and runs
    /// its startcmd, then waits until it answers ping and accepts a TCP connection on its
    /// ready-port (22), or its readycmd exits 0, at most start-timeout seconds (240). Not ready
    /// in time: the machine is stopped and started again, up to --tries times; then exit 124.
    /// A machine that is online already is left as it is (unless --force). Another user's
    /// start is refused unless --force.
    Start {
        /// The machine's name
        machine: String,
        /// How many times to power it on before giving up
        #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        tries: u32,
        /// Power-cycle it even when it is online already; start it though someone else started it
        #[arg(long)]
        force: bool,
    },
    /// Put a machine down: its stopcmd, its outlet off, its relay held
    ///
    /// A machine that is not started is left alone (exit 0), unless --force. Another user's
    /// start is refused unless --force.
    Stop {
        /// The machine's name
        machine: String,
        /// Stop it even when it is not marked started, or someone else started it
        #[arg(long)]
        force: bool,
    },
    /// Switch a machine's outlet, or say whether it is on (and the watts it draws)
    Power {
        /// The machine's name
        machine: String,
        /// What to do
        #[arg(value_enum)]
        action: PowerArg,
    },
    /// Add a machine
    Add {
        /// Its name (no white space; not "all")
        name: String,
        /// Its MAC address, six hex octets (stored lower-case, ':'-separated)
        #[arg(long)]
        mac: String,
        /// Its IP address
        #[arg(long)]
        ip: Option<String>,
        /// Only virtual machines run on it
        #[arg(long)]
        vm: bool,
        /// Resources it shares with other machines, space-separated
        #[arg(long, value_name = "\"A B\"")]
        resources: Option<String>,
    },
    /// Remove a machine that has no live job
    Delete {
        /// The machine's name
        machine: String,
    },
    /// Set a field of a machine (an empty value clears it)
    ///
    /// A field may be named as its element in the state file too (only_vm, boot_params). only-vm
    /// and is-started take 1 or 0 (or yes/no, true/false, on/off) and store 1 or 0; the slots and
    /// start-timeout take whole numbers; ip an IP address; mac a MAC address (not another
    /// machine's). An empty value clears a field to what a new machine has (0 for only-vm and the
    /// slots).
    Set {
        /// The machine's name
        machine: String,
        /// The field to set
        #[arg(value_parser = attr_parser(true))]
        attr: Field,
        /// Its new value ("" clears it; may start with '-', as VM and boot parameters do)
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Print a field of a machine
    Get {
        /// The machine's name
        machine: String,
        /// The field to print
        #[arg(value_parser = attr_parser(false))]
        attr: Field,
        /// Print the value as JSON (a string, or null when empty)
        #[arg(long)]
        json: bool,
    },
    /// Forget the job and is_started of a machine, or of all machines
    ///
    /// What a person set (ip and every other field of `set`, a reservation) stays. Another
    /// user's live job is left alone (exit 1) unless --force is given; a stale job, or one of
    /// your own, is cleared. A job whose processes still run keeps the machine busy until they
    /// end, record or not.
    Clear {
        /// A machine, or "all"
        machine: String,
        /// Forget another user's live job too (it runs on; the history records whose it was)
        #[arg(long)]
        force: bool,
    },
    /// Reserve a machine for yourself
    ///
    /// With --for the reservation ends by itself then (as if released); without it, it lasts
    /// until released, or as long as the lab's longest-reservation setting says, where it sets
    /// one (longer is refused). Reserving a machine you hold with --for moves its end, as
    /// extend does.
    Reserve {
        /// The machine's name
        machine: String,
        /// End the reservation after this long: 90m, 8h, 2d, 1h30m (plain numbers are seconds)
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_length)]
        length: Option<Duration>,
        /// A note for the others: why, what for
        #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
        note: Option<String>,
    },
    /// Move the end of your reservation to DURATION from now
    Extend {
        /// The machine's name
        machine: String,
        /// The reservation's new length, from now: 90m, 8h, 2d, 1h30m
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_length)]
        length: Duration,
    },
    /// Show the lab's settings, or one of them, or set one ("" unsets it)
    ///
    /// The lab's settings are the rules it keeps for everyone who uses it (the MAMA_* variables
    /// are one user's). Without a name, every setting with its value; with a name, its value
    /// (an empty line where it has none); with a value too, sets it.
    Setting {
        /// The setting
        #[arg(value_parser = setting_parser())]
        name: Option<Setting>,
        /// Its new value ("" unsets it)
        #[arg(allow_hyphen_values = true)]
        value: Option<String>,
        /// Print JSON: an object of every setting (null where unset), or the one value
        #[arg(long, conflicts_with = "value")]
        json: bool,
    },
    /// Release your reservation
    Release {
        /// The machine's name
        machine: String,
    },
    /// Release a reservation, whoever holds it
    ReleaseForced {
        /// The machine's name
        machine: String,
    },
    /// Take a machine out of service: nothing claims or starts it until `mama online`
    ///
    /// run and wait on it exit 69 at once, saying why; --any and --where pass it by. A job
    /// running on it runs on and releases it as ever. Only its health check (`mama check`)
    /// claims it.
    Offline {
        /// The machine's name
        machine: String,
        /// Why it is out of service (shown to whoever asks for it)
        #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
        reason: String,
    },
    /// Put a machine back in service
    Online {
        /// The machine's name
        machine: String,
    },
    /// Run a machine's health command (its healthcmd) under a claim, as a job
    ///
    /// Waits for the machine as run does (out of service or not), runs `sh -c healthcmd` with
    /// MAMA_MACHINE, MAMA_IP and MAMA_MAC set, its output on stderr, and releases it. A command
    /// that fails takes the machine out of service, its last line of output the reason (exit
    /// 1); one that passes puts a machine a failed check took out back in service.
    Check {
        /// The machine's name
        machine: String,
        /// Exit 75 if the machine is still busy after this many seconds
        #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
        wait_timeout: Option<Duration>,
    },
    /// Wait until a machine is free (exit 0), or the timeout passes (exit 75)
    ///
    /// Waiters are served in arrival order. With --any or --where, waits until one of the
    /// machines is free and prints its name. A machine out of service (`mama offline`) exits 69
    /// at once, and so does a waiter whose machine goes out of service meanwhile.
    Wait {
        #[command(flatten)]
        pick: Pick,
        /// Give up after this long: seconds (fractions allowed), or 90s, 5m, 2h, 1d
        #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
        timeout: Option<Duration>,
        /// Reserve the machine for yourself as it becomes free, keeping your place in the queue
        #[arg(long)]
        then_reserve: bool,
        /// With --then-reserve: the reservation ends after this long (as reserve --for)
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_length, requires = "then_reserve")]
        length: Option<Duration>,
    },
    /// Show the history: claims, releases, stale clears and every other change
    Log {
        /// Only this machine's events
        machine: Option<String>,
        /// Only events newer than this: 90s, 15m, 2h, 3d, 1h30m (plain numbers are seconds)
        #[arg(long, value_name = "DURATION", value_parser = parse_age)]
        since: Option<Duration>,
        /// Only the last N events (with --follow: 10 unless given)
        #[arg(long = "lines", short = 'n', value_name = "N")]
        lines: Option<usize>,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
        /// Show the last 10 events, then keep printing new events as they happen
        #[arg(long, short)]
        follow: bool,
    },
    /// Statistics from the history: busy share, jobs, failures, waits, reservations
    ///
    /// One row a machine (or a user, with --by user) and the lab's totals: the share of the time
    /// held by jobs (reservations are counted apart), jobs run and failed (exited other than 0),
    /// stale jobs cleared, the median and 95th percentile of the wait before a claim, the longest
    /// hold, and the reservations with their hours. Holds and reservations are clipped to the
    /// window; one still held counts up to --until.
    Stats {
        /// From this time: a duration ago (90, 90s, 5m, 2h, 1d) or a local date and time
        /// (2026-11-01, 2026-11-01T12:00); default: the first event of the history
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        since: Option<When>,
        /// Up to this time, as --since takes it; default: now
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        until: Option<When>,
        /// One row a machine or a user
        #[arg(long, value_enum, value_name = "WHAT", default_value_t = StatsBy::Machine)]
        by: StatsBy,
        /// Print one JSON object (durations in seconds)
        #[arg(long)]
        json: bool,
    },
    /// Wait for a machine, claim it, run CMD, release it; exit as CMD did
    ///
    /// CMD runs directly (no shell) in its own process group, with MAMA_MACHINE, MAMA_JOB,
    /// MAMA_MAC, MAMA_IP and MAMA_STATE set. SIGINT, SIGTERM and SIGHUP sent to mama go to the job's group;
    /// if mama is killed, even by SIGKILL, the job's whole group is killed too. Started in the foreground of a
    /// terminal, the job gets the terminal as a shell's job does (Ctrl-C reaches it, Ctrl-Z stops
    /// it and mama until fg). The machine is released however the job ends.
    ///
    /// With one machine the `--` may be left out, as flock(1) and timeout(1) are given a
    /// command: `mama run rig1 ./run-tests.sh --quick` (the first word after the machine that is
    /// not an option of run's starts the command).
    ///
    /// Waiters are served in arrival order, and see how many are ahead. `--any rig1 rig2 rig3`
    /// claims the first of those machines to be free; `--where FIELD=VALUE` picks among the
    /// machines that match; MAMA_MACHINE tells the job which one it got. A machine out of service
    /// (`mama offline`) is never claimed: exit 69, saying why (a pool passes it by).
    #[command(arg_required_else_help = true)]
    Run {
        #[command(flatten)]
        pick: Pick,
        // The help is an attribute, not a doc comment: rustdoc would read
        // `<CMD basename>` as an HTML tag.
        #[arg(
            long,
            value_name = "LABEL",
            allow_hyphen_values = true,
            help = "The job's label (default: \"run <CMD basename>\")"
        )]
        job: Option<String>,
        /// Exit 75 at once if the machine is busy
        #[arg(long, conflicts_with = "wait_timeout")]
        no_wait: bool,
        /// Exit 75 if the machine is still busy after this long (seconds, or 90s, 5m, 2h, 1d)
        #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
        wait_timeout: Option<Duration>,
        /// Stop the job after this long (seconds, or 90s, 5m, 2h, 1d): TERM, then KILL 5 s later; exit 124
        #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
        timeout: Option<Duration>,
        /// Start the machine (as `mama start`) before the job, stop it after, however the job ends
        #[arg(long)]
        boot: bool,
        /// With --boot: how many times to power it on before giving up
        #[arg(long, value_name = "N", default_value_t = 3, requires = "boot", value_parser = clap::value_parser!(u32).range(1..=100))]
        tries: u32,
        /// The command and its arguments, run directly (no shell)
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Serve a read-only status page, metrics and the lab as JSON over HTTP
    ///
    /// `/` shows every machine and updates itself as the lab changes; `/machine/NAME` a
    /// machine's use over the last 30 days and its recent events; `/metrics` Prometheus
    /// metrics; `/api/machines` and `/api/events?since=N` what `list --json` and `log --json`
    /// print. Nothing it serves changes the lab. It also records the `expiring` reminder
    /// (a reservation's end is 15 minutes away) and ends reservations at their end, so notify
    /// commands are told of both.
    Serve {
        /// Listen on this address and port (default 127.0.0.1:8080, this host only)
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Write the lab to stdout as a state file in upstream's format
    ///
    /// The output loads in PHP mama and as a state file of its own; every element and
    /// attribute mama does not know is kept. Nothing of mama's own bookkeeping is included.
    Export,
    /// Load the machines of a state file (upstream's format) into the lab
    ///
    /// A lab that has machines already is refused unless --replace is given, which deletes
    /// them first. Every element and attribute of the machines is kept.
    Import {
        /// The state file to load ("-" for standard input)
        file: PathBuf,
        /// Delete the lab's machines first
        #[arg(long)]
        replace: bool,
    },
    /// Define, list and delete the lab's power devices (outlet bars, relay boards)
    ///
    /// A device is defined once and named by machines: `mama set rig1 pwr-dev pdu1` and `mama set
    /// rig1 pwr-slot 3` for an outlet, rly-dev and rly-slot for a relay.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Print a completion script for a shell (machine names complete from the state file)
    Completions {
        /// The shell
        shell: crate::cli::completions::Shell,
    },
}

/// What `mama stats` gives a row to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsBy {
    /// A row a machine
    Machine,
    /// A row a user (who claimed, reserved)
    User,
}

/// What `mama power` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PowerArg {
    /// Switch the outlet on
    On,
    /// Switch the outlet off
    Off,
    /// Off, then on again
    Cycle,
    /// Print on or off, and the watts where the device measures them
    Status,
}

// What `device` does. (Not a doc comment: with the subcommands deferred,
// clap would take it for the description of `device`.)
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Define a power device
    ///
    /// Each driver takes the options that name it below, and refuses the others; those it needs
    /// must be given. The options are stored in the order given. `mama set MACHINE pwr-dev NAME`
    /// (or rly-dev) then names the device for a machine.
    Add {
        /// Its name (no white space; not "all")
        name: String,
        /// How mama speaks to it
        #[arg(long, value_parser = driver_parser())]
        driver: Driver,
        #[command(flatten)]
        options: DeviceOptions,
    },
    /// Show the power devices, their options and the machines that name them
    ///
    /// A password is shown as ***. A device of the lab that mama cannot use (no name, a driver
    /// it does not know, options its driver refuses) is shown as broken, with why.
    List {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove a power device that no machine names
    Delete {
        /// The device's name
        name: String,
    },
}

/// The options of `device add`: one `--NAME VALUE` for each option any
/// driver takes ([`device::all_options`]), in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceOptions(pub Vec<(String, String)>);

/// How an option's value is written in the help.
fn option_value_name(name: &str) -> &'static str {
    match name {
        "on" | "off" | "status" => "CMD",
        "address" => "HOST[:PORT]",
        "user" => "USER",
        "password" => "PASSWORD",
        "port" => "PATH",
        "press" | "hold" => "SECS",
        "slots" => "N",
        _ => "VALUE",
    }
}

/// An option's help: what it is, and which drivers take it.
fn option_help(opt: &device::Opt) -> String {
    let mut about = opt.about.chars();
    let about: String = about
        .next()
        .map(|first| first.to_uppercase().chain(about).collect())
        .unwrap_or_default();
    let takers: Vec<&str> = Driver::ALL
        .into_iter()
        .filter(|d| d.options().any(|o| o.name == opt.name))
        .map(Driver::name)
        .collect();
    let takers = if takers.len() == Driver::ALL.len() {
        "every driver".to_string()
    } else {
        takers.join(", ")
    };
    let required = if opt.required { ", needed" } else { "" };
    format!("{about} [{takers}{required}]")
}

impl clap::FromArgMatches for DeviceOptions {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut given: Vec<(usize, String, String)> = Vec::new();
        for opt in device::all_options() {
            if let Some(value) = matches.get_one::<String>(opt.name) {
                let at = matches.index_of(opt.name).unwrap_or(usize::MAX);
                given.push((at, opt.name.to_string(), value.clone()));
            }
        }
        given.sort_by_key(|(at, ..)| *at);
        Ok(DeviceOptions(
            given.into_iter().map(|(_, k, v)| (k, v)).collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = DeviceOptions::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for DeviceOptions {
    /// Each driver's own options, in the order of the drivers, then those
    /// every driver takes.
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut options = device::all_options();
        let everyones = |opt: &&device::Opt| {
            Driver::ALL
                .into_iter()
                .all(|d| d.options().any(|o| o.name == opt.name))
        };
        options.sort_by_key(|opt| everyones(opt));
        options.into_iter().fold(cmd, |cmd, opt| {
            cmd.arg(
                clap::Arg::new(opt.name)
                    .long(opt.name)
                    .value_name(option_value_name(opt.name))
                    .help(option_help(opt))
                    .allow_hyphen_values(true),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        DeviceOptions::augment_args(cmd)
    }
}

/// The drivers' names, for clap: it checks them, and the help, the man page
/// and the completions list them.
fn driver_parser() -> impl clap::builder::TypedValueParser<Value = Driver> {
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(Driver::ALL.map(Driver::name)).try_map(|name: String| {
        Driver::from_name(&name).ok_or_else(|| format!("unknown driver '{name}'"))
    })
}

// Which machine `run` and `wait` want: one, or any of a pool. (Not a doc
// comment: with the subcommands deferred, clap would take it for the
// description of `run` and `wait`.)
#[derive(Debug, clap::Args)]
pub struct Pick {
    /// The machine's name; with --any, the machines to choose from
    #[arg(value_name = "MACHINE", required_unless_present_any = ["any", "filters"])]
    pub machines: Vec<String>,
    /// Any of the machines named (all machines, when none is named) will do
    #[arg(long)]
    pub any: bool,
    /// Only machines whose FIELD (a field of `get`) is exactly VALUE; repeatable, all must match
    #[arg(long = "where", value_name = "FIELD=VALUE", value_parser = parse_filter)]
    pub filters: Vec<(Field, String)>,
}

/// The names of the fields `set` (`settable`) or `get` take (see
/// [`field::ATTRS`]), for clap: it checks them, and the help, the man page
/// and the completions list them. A field's element name is taken too.
fn attr_parser(settable: bool) -> impl clap::builder::TypedValueParser<Value = Field> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let values = field::ATTRS
        .iter()
        .filter(move |a| a.settable || !settable)
        .map(|a| {
            let value = match a.about {
                Some(about) => PossibleValue::new(a.name).help(about),
                None => PossibleValue::new(a.name),
            };
            match a.field.tag() {
                tag if tag == a.name => value,
                tag => value.alias(tag),
            }
        });
    PossibleValuesParser::new(values).try_map(|name: String| {
        field::find_attr(&name)
            .map(|a| a.field)
            .ok_or_else(|| format!("unknown field '{name}'"))
    })
}

/// The lab's settings by name, for clap (each also by its element's
/// name): it checks them, and the help, the man page and the completions
/// list them.
fn setting_parser() -> impl clap::builder::TypedValueParser<Value = Setting> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let values = Setting::ALL
        .into_iter()
        .map(|s| PossibleValue::new(s.name()).help(s.about()).alias(s.tag()));
    PossibleValuesParser::new(values).try_map(|name: String| {
        Setting::find(&name).ok_or_else(|| format!("unknown setting '{name}'"))
    })
}

/// How long a reservation lasts (`--for`): see
/// [`lab_setting::parse_duration`].
fn parse_length(text: &str) -> Result<Duration, String> {
    lab_setting::parse_duration(text).map_err(|e| e.to_string())
}

/// A `--where FIELD=VALUE` filter: a field `get` knows, and its value as
/// `set` would store it.
fn parse_filter(text: &str) -> Result<(Field, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not FIELD=VALUE"))?;
    let field = field::find_attr(name.trim())
        .map(|a| a.field)
        .ok_or_else(|| {
            let known: Vec<&str> = field::ATTRS.iter().map(|a| a.name).collect();
            format!("unknown field '{name}' (known: {})", known.join(", "))
        })?;
    let value = field::normalize(field, value).map_err(|e| e.to_string())?;
    Ok((field, value))
}

/// An age such as `90s`, `15m`, `2h`, `3d` or `1h30m`; a plain number is
/// seconds.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    crate::text::parse_duration(text)
}

/// The command line, as clap reads it (see [`Cli`]). The plainest run,
/// `mama run MACHINE -- CMD...` (nothing else given, a machine name that
/// is UTF-8 and does not start with `-`), is read without clap: building
/// clap's parser for it was a good part of a short run's start (its
/// allocations and the pages they first touch). What it makes is what clap
/// makes of those words (a unit test holds the two together).
pub fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    match plain_run(&args) {
        Some(cli) => Ok(cli),
        None => Cli::try_parse_from(with_dashes(args)).map_err(with_our_tip),
    }
}

/// Words people type for a command mama calls otherwise.
const SYNONYMS: &[(&str, &str)] = &[
    ("ls", "list"),
    ("status", "list"),
    ("show", "info"),
    ("ps", "who"),
    ("rm", "delete"),
    ("remove", "delete"),
    ("del", "delete"),
    ("history", "log"),
    ("lock", "reserve"),
    ("hold", "reserve"),
    ("unlock", "release"),
    ("free", "release"),
];

/// An unknown command gets mama's own tip in place of clap's (which
/// offered `release-forced` for `ls`): a usual word for one of mama's
/// commands, else the one command the word begins, else the nearest name
/// (a slip of a letter or two, as for machine names), else none.
fn with_our_tip(error: clap::Error) -> clap::Error {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::InvalidSubcommand {
        return error;
    }
    let Some(ContextValue::String(word)) = error.get(ContextKind::InvalidSubcommand) else {
        return error;
    };
    let word = word.clone();
    let command = Cli::command();
    let names: Vec<&str> = command
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name())
        .collect();
    let beginning: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !word.is_empty() && n.starts_with(word.as_str()))
        .collect();
    let tip = SYNONYMS
        .iter()
        .find(|(synonym, _)| *synonym == word)
        .map(|(_, name)| *name)
        .or(match beginning[..] {
            [only] => Some(only),
            _ => None,
        })
        .or_else(|| crate::text::nearest(&word, names.iter().copied()));
    let mut ours = clap::Error::new(ErrorKind::InvalidSubcommand).with_cmd(&command);
    ours.insert(ContextKind::InvalidSubcommand, ContextValue::String(word));
    if let Some(tip) = tip {
        ours.insert(
            ContextKind::SuggestedSubcommand,
            ContextValue::Strings(vec![tip.to_string()]),
        );
    }
    ours.insert(
        ContextKind::Usage,
        ContextValue::StyledStr(command.clone().render_usage()),
    );
    ours
}

/// The options of `run` that take a value (a unit test holds this to
/// clap's), and the global `--state`.
const RUN_VALUE_OPTIONS: [&str; 5] = ["--job", "--wait-timeout", "--timeout", "--tries", "--state"];

/// `mama run [OPTIONS] MACHINE CMD [ARGS...]`, as `flock(1)` and
/// `timeout(1)` are given a command: the first word after the machine
/// that is not one of run's options starts the command, and everything
/// after it is the command's. The words are given clap with `--` put
/// before the command. A pool (`--any`, `--where`), which names several
/// machines, and a command line that has `--` already, are left as they
/// are.
fn with_dashes(mut args: Vec<OsString>) -> Vec<OsString> {
    let word =
        |args: &[OsString], i: usize| args.get(i).and_then(|a| a.to_str()).map(str::to_owned);
    let mut i = 1;
    // Global options before the subcommand.
    while let Some(a) = word(&args, i) {
        match a.as_str() {
            "--state" => i += 2,
            _ if a.starts_with("--state=") => i += 1,
            _ => break,
        }
    }
    if word(&args, i).as_deref() != Some("run") || args.iter().any(|a| a == "--") {
        return args;
    }
    i += 1;
    let mut machine = false;
    while i < args.len() {
        let Some(a) = word(&args, i) else {
            // Not UTF-8: no option of mama's, so a machine or the command.
            if machine {
                args.insert(i, "--".into());
                return args;
            }
            machine = true;
            i += 1;
            continue;
        };
        if a == "--" || a == "--any" || a.starts_with("--where") {
            return args;
        }
        if a.starts_with('-') && a.len() > 1 {
            i += if RUN_VALUE_OPTIONS.contains(&a.as_str()) {
                2
            } else {
                1
            };
            continue;
        }
        if machine {
            args.insert(i, "--".into());
            return args;
        }
        machine = true;
        i += 1;
    }
    args
}

/// `mama run MACHINE -- CMD...`, when the words are exactly that.
fn plain_run(args: &[OsString]) -> Option<Cli> {
    let [_, run, machine, dashes, command @ ..] = args else {
        return None;
    };
    let machine = machine.to_str()?;
    if run != "run" || dashes != "--" || command.is_empty() {
        return None;
    }
    if machine.is_empty() || machine.starts_with('-') {
        return None;
    }
    Some(Cli {
        state: None,
        command: Command::Run {
            pick: Pick {
                machines: vec![machine.to_owned()],
                any: false,
                filters: Vec::new(),
            },
            job: None,
            no_wait: false,
            wait_timeout: None,
            timeout: None,
            boot: false,
            tries: 3,
            command: command.to_vec(),
        },
    })
}

/// The command line's whole description, every subcommand's arguments
/// built (see the deferred [`Command`]).
pub fn whole_command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn run_options_that_take_a_value_are_known() {
        let cmd = whole_command();
        let run = cmd.find_subcommand("run").expect("run");
        let mut taking: Vec<String> = run
            .get_arguments()
            .filter(|a| a.get_long().is_some() && a.get_action().takes_values())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .filter(|l| l != "--where")
            .collect();
        taking.sort();
        let mut known: Vec<String> = RUN_VALUE_OPTIONS.iter().map(|s| s.to_string()).collect();
        known.sort();
        assert_eq!(taking, known);
    }

    #[test]
    fn a_run_needs_no_dashes() {
        let words =
            |text: &str| -> Vec<OsString> { text.split_whitespace().map(OsString::from).collect() };
        let parsed = |text: &str| match parse(words(text)).expect(text).command {
            Command::Run {
                pick,
                command,
                timeout,
                ..
            } => (pick.machines, command, timeout),
            _ => panic!("{text}"),
        };
        let (machines, command, _) = parsed("mama run rig1 ./t.sh --quick");
        assert_eq!(machines, ["rig1"]);
        assert_eq!(command, words("./t.sh --quick"));
        let (machines, command, timeout) = parsed("mama --state x run --timeout 5m rig1 make -j4");
        assert_eq!(machines, ["rig1"]);
        assert_eq!(command, words("make -j4"));
        assert_eq!(timeout, Some(Duration::from_secs(300)));
        let (_, command, _) = parsed("mama run rig1 --no-wait sleep 1");
        assert_eq!(command, words("sleep 1"));
        // Pools keep their `--`.
        assert!(parse(words("mama run --any rig1 rig2 true")).is_err());
        let (machines, command, _) = parsed("mama run --any rig1 rig2 -- true");
        assert_eq!((machines.len(), command), (2, words("true")));
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The plainest run is read without clap, into what clap makes of it;
    /// anything else goes to clap.
    #[test]
    fn a_plain_run_is_read_as_clap_reads_it() {
        let words = |w: &[&str]| w.iter().map(OsString::from).collect::<Vec<_>>();
        for plain in [
            &["mama", "run", "m0", "--", "true"][..],
            &["mama", "run", "rig.1_a", "--", "sh", "-c", "exit 3", "--"],
            &["/usr/bin/mama", "run", "m0", "--", "--", "-x"],
        ] {
            let args = words(plain);
            let fast = plain_run(&args).unwrap_or_else(|| panic!("{plain:?} is plain"));
            let clap = Cli::try_parse_from(&args).expect("clap reads it");
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{plain:?}");
        }
        for other in [
            &["mama", "run", "m0", "true"][..],
            &["mama", "run", "m0", "--"],
            &["mama", "run", "-x", "--", "true"],
            &["mama", "run", "", "--", "true"],
            &["mama", "run", "--any", "--", "true"],
            &["mama", "run", "m0", "--timeout", "1", "--", "true"],
            &["mama", "--state", "/x", "run", "m0", "--", "true"],
            &["mama", "wait", "m0", "--", "true"],
            &["mama", "run"],
        ] {
            assert!(plain_run(&words(other)).is_none(), "{other:?}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let mut args = words(&["mama", "run", "m0", "--", "true"]);
            args[2] = OsString::from_vec(vec![b'm', 0xff]);
            assert!(plain_run(&args).is_none());
        }
    }

    #[test]
    fn ages_parse_like_people_write_them() {
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_age("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_age("3d"), Ok(Duration::from_secs(259_200)));
        for bad in ["", "h", "2x", "1h30", "-5m", "1.5h"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_parse_with_fractions_and_refuse_nonsense() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("nan").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("soon").is_err());
        // Every duration takes units too, as timeout(1) does.
        assert_eq!(parse_seconds("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_seconds("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_age("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("1.5h").is_err());
        assert!(parse_seconds("m").is_err());
    }

    #[test]
    fn durations_stop_at_100_years() {
        let max = Duration::from_secs(crate::text::MAX_SECS);
        assert_eq!(parse_seconds("3155760000"), Ok(max));
        assert_eq!(parse_age("36525d"), Ok(max));
        for long in ["3155760000.5", "1e19", "1e300", "18446744073709551616"] {
            let err = parse_seconds(long).unwrap_err();
            assert!(err.contains("100 years"), "{long}: {err}");
        }
        for long in [
            "3155760001",
            "36525d1s",
            "99999999999w",
            "99999999999999999999",
        ] {
            let err = parse_age(long).unwrap_err();
            assert!(err.contains("100 years"), "{long}: {err}");
        }
        assert!(parse_age("99999999999999999999x").is_err());
    }
}
