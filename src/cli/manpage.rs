//! The manual page, `man/mama.1`, generated from the command line
//! definition in [`crate::cli`]: clap_mangen writes the title, NAME and
//! OPTIONS; the COMMANDS section is built here from every subcommand, its
//! arguments and options; the other sections are written here as roff text.
//!
//! `tests/docs.rs` (`man_page_is_up_to_date`) checks that the checked-in
//! page is what [`render`] returns, and rewrites it when run with
//! `MAMA_UPDATE_MAN=1`.

use clap::{Arg, ArgAction};
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

use crate::settings::DEFAULT_STATE;

/// The whole page, as roff source.
pub fn render() -> String {
    let cmd = crate::cli::whole_command();
    let man = Man::new(cmd.clone()).title("MAMA").manual("User Commands");
    let mut page = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = man.render_title(&mut page);
    let _ = man.render_name_section(&mut page);
    let _ = synopsis_and_description().to_writer(&mut page);
    let _ = man.render_options_section(&mut page);
    let _ = commands(&cmd).to_writer(&mut page);
    let _ = sections().to_writer(&mut page);
    let page = String::from_utf8_lossy(&page).into_owned();
    // Each piece starts with the same preamble (how to print an
    // apostrophe); keep the first one only.
    let preamble = Roff::new().render();
    match page.strip_prefix(&preamble) {
        Some(rest) if !preamble.is_empty() => preamble.clone() + &rest.replace(&preamble, ""),
        _ => page,
    }
}

/// SYNOPSIS and DESCRIPTION.
fn synopsis_and_description() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([
        bold("mama"),
        roman(" ["),
        bold("--state"),
        roman(" "),
        italic("PATH"),
        roman("] "),
        italic("command"),
        roman(" ["),
        italic("arguments"),
        roman("]"),
    ]);
    roff.control("br", []);
    roff.text([
        bold("mama"),
        roman(" "),
        bold("--help"),
        roman(" | "),
        bold("--version"),
    ]);
    roff.control("SH", ["DESCRIPTION"]);
    roff.text([roman(
        "mama lets a team share lab machines (test boards, servers, virtual machines) \
         without stepping on each other. Every machine has one record in a shared XML state file, in the format the \
         original PHP mama writes; elements mama does not know survive every write. \
         A test run is wrapped by ",
    )]);
    roff.text([bold("mama run"), roman(", which waits until the machine is free, claims it (job label, PID, timestamp), runs the command, and releases the machine however the command ends. A claim left behind by a process that died is stale: "), bold("list"), roman(" and "), bold("info"), roman(" mark it, and the next waiter clears it.")]);
    roff.control("PP", []);
    roff.text([roman(
        "Every change is a transaction: mama takes a lock, reads the file, changes it \
         and replaces it atomically, so a process killed at any instant leaves either \
         the old or the new file. Two live jobs never hold one machine.",
    )]);
    roff.control("PP", []);
    roff.text([
        roman("The commands are described under "),
        bold("COMMANDS"),
        roman(" below; "),
        bold("mama help"),
        roman(" "),
        italic("command"),
        roman(" prints a short form. The option "),
        bold("--state"),
        roman(" may come before or after the command."),
    ]);
    roff
}

/// COMMANDS: every subcommand, with its synopsis, arguments and options;
/// one with subcommands of its own (`device`) is followed by each of them.
fn commands(cmd: &clap::Command) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    let name = cmd.get_name();
    // Not the `help` subcommand clap adds.
    for sub in shown_subcommands(cmd) {
        command(&mut roff, name, sub);
        let prefix = format!("{name} {}", sub.get_name());
        for nested in shown_subcommands(sub) {
            command(&mut roff, &prefix, nested);
        }
    }
    roff
}

/// The subcommands the page shows: not hidden, not clap's `help`.
fn shown_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// One command's subsection, `.SS` with its name after `mama` (`device
/// add`): the synopsis, what it does, and each argument.
fn command(roff: &mut Roff, prefix: &str, sub: &clap::Command) {
    // Arguments of a control line are not escaped: a dash must be `\-` to
    // print as the one users type.
    let heading = format!("{prefix} {}", sub.get_name());
    let heading = heading.split_once(' ').map_or("", |(_, rest)| rest);
    roff.control("SS", [heading.replace('-', "\\-").as_str()]);
    roff.text(synopsis(prefix, sub));
    roff.control("PP", []);
    if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
        roff.text([roman(about.to_string())]);
    }
    for arg in own_arguments(sub) {
        roff.control("TP", []);
        roff.text(arg_header(arg));
        if let Some(help) = arg.get_long_help().or_else(|| arg.get_help()) {
            roff.text([roman(help.to_string())]);
        }
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| match v.get_help() {
                Some(help) => format!("{} ({help})", v.get_name()),
                None => v.get_name().to_string(),
            })
            .collect();
        if !values.is_empty() && arg.get_action().takes_values() {
            roff.control("br", []);
            roff.text([roman(format!("One of: {}.", values.join(", ")))]);
        }
    }
    if sub.has_subcommands() {
        let names: Vec<String> = shown_subcommands(sub)
            .map(|s| format!("{prefix} {} {}", sub.get_name(), s.get_name()))
            .collect();
        roff.control("br", []);
        roff.text([roman(format!("See {}.", names.join(", ")))]);
    }
}

/// A subcommand's own arguments, as the page shows them: not hidden, not
/// the global `--state` (OPTIONS has it) nor the `--help` clap adds.
fn own_arguments(sub: &clap::Command) -> impl Iterator<Item = &Arg> {
    sub.get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set() && a.get_id() != "help")
}

/// `mama run [--job LABEL] ... machine -- CMD...`
fn synopsis(name: &str, sub: &clap::Command) -> Vec<Inline> {
    let mut line = vec![bold(format!("{name} {}", sub.get_name()))];
    if sub.has_subcommands() {
        line.extend([roman(" "), italic("command")]);
    }
    for arg in own_arguments(sub) {
        line.push(roman(" "));
        let optional = !arg.is_required_set();
        if optional {
            line.push(roman("["));
        }
        line.extend(arg_header(arg));
        if optional {
            line.push(roman("]"));
        }
    }
    line
}

/// How an argument is written: `--timeout SECS`, `machine`, `-- CMD...`.
fn arg_header(arg: &Arg) -> Vec<Inline> {
    let value = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|name| name.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_string());
    let many = matches!(arg.get_action(), ArgAction::Append)
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    let value = if many { format!("{value}...") } else { value };
    if arg.is_positional() {
        if arg.is_last_set() {
            vec![bold("-- "), italic(value)]
        } else {
            vec![italic(value)]
        }
    } else {
        let flag = match (arg.get_long(), arg.get_short()) {
            (Some(long), _) => format!("--{long}"),
            (None, Some(short)) => format!("-{short}"),
            (None, None) => arg.get_id().as_str().to_string(),
        };
        if arg.get_action().takes_values() {
            vec![bold(flag), roman(" "), italic(value)]
        } else {
            vec![bold(flag)]
        }
    }
}

/// A tagged paragraph: `tag` in bold, then `text`.
fn item(roff: &mut Roff, tag: Vec<Inline>, text: &[Inline]) {
    roff.control("TP", []);
    roff.text(tag);
    roff.text(text.to_vec());
}

/// An example: what it does, then the command line.
fn example(roff: &mut Roff, what: &str, command: &str) {
    roff.control("PP", []);
    roff.text([roman(what)]);
    roff.control("RS", []);
    roff.control("nf", []);
    roff.text([bold(command)]);
    roff.control("fi", []);
    roff.control("RE", []);
}

/// ENVIRONMENT, FILES, EXIT STATUS, STALE JOBS, EXAMPLES, SEE ALSO.
fn sections() -> Roff {
    let mut r = Roff::new();

    r.control("SH", ["ENVIRONMENT"]);
    item(
        &mut r,
        vec![bold("MAMA_STATE")],
        &[
            roman("The state file, when "),
            bold("--state"),
            roman(
                " is not given; or a postgres:// or postgresql:// URL (libpq's form, e.g. \
                 postgresql://mama@db.example/lab), which keeps the lab in PostgreSQL, \
                 shared by every host that reaches the database. The password comes from \
                 PGPASSFILE, else ~/.pgpass; jobs get the URL without one. Sessions are \
                 encrypted as libpq's sslmode asks (disable, allow, prefer, require, \
                 verify-ca, verify-full), with sslrootcert, and a client certificate shown \
                 to a server that asks for one, sslcert and sslkey (PEM; the key in PKCS#8, \
                 PKCS#1 or SEC1, not encrypted): URL parameters, else PGSSLMODE, \
                 PGSSLROOTCERT, PGSSLCERT and PGSSLKEY; the files default to libpq's under \
                 ~/.postgresql (see FILES).",
            ),
        ],
    );
    item(
        &mut r,
        vec![bold("MAMA_PATH")],
        &[
            roman("A folder: the state file is "),
            italic("$MAMA_PATH/mama.xml"),
            roman(" when neither "),
            bold("--state"),
            roman(" nor "),
            bold("MAMA_STATE"),
            roman(" is given."),
        ],
    );
    item(
        &mut r,
        vec![bold("MAMA_POLL_INTERVAL")],
        &[roman(
            "The longest time, in seconds (fractions allowed), that a waiter (run, wait) \
             sleeps between two looks at the state file; default 1, at most 100 years. \
             A release wakes waiters at once, whatever this is.",
        )],
    );
    item(
        &mut r,
        vec![bold("MAMA_STALE_AFTER")],
        &[roman(
            "The age, in whole seconds, after which a job that has no PID recorded is \
             stale; default 300, at most 100 years.",
        )],
    );
    item(
        &mut r,
        vec![bold("MAMA_HOST_TIMEOUT")],
        &[roman(
            "Database labs: the seconds after which the claims of a host that died or was \
             cut off are freed (mama sets TCP keepalives and user timeout for its sessions \
             to match); default 30, from 1 to 86400. A stopped or idle holder, or a network \
             blip shorter than this, keeps its claim.",
        )],
    );
    item(
        &mut r,
        vec![bold("MAMA_NOTIFY")],
        &[roman(
            "A shell command told of every event a command commits, beside the lab's own \
             (its notify setting): run as sh -c once an event, in order, its standard input \
             the event's log --json line. It runs apart, in a session of \
             its own, for at most 10 s; mama does not wait for it, and a failure of it \
             (said once on stderr) changes no exit status.",
        )],
    );
    item(
        &mut r,
        vec![bold("NO_COLOR")],
        &[roman(
            "When set to a non-empty value, mama prints no colour. Without it, colour is \
             used only when the output goes to a terminal: in list and info the state \
             (stale in red, busy and blocked in yellow, free in green) and a stale job, \
             and on stderr \
             the \"mama:\" prefix of an error.",
        )],
    );
    item(
        &mut r,
        vec![
            bold("MAMA_MACHINE"),
            roman(", "),
            bold("MAMA_JOB"),
            roman(", "),
            bold("MAMA_MAC"),
            roman(", "),
            bold("MAMA_IP"),
        ],
        &[
            roman("Set by "),
            bold("mama run"),
            roman(
                " for the job: the machine's name, the job label, its MAC and IP address. \
                 It also sets MAMA_STATE to the state file's absolute path, so a mama the \
                 job runs uses the same lab.",
            ),
        ],
    );
    item(
        &mut r,
        vec![bold("MAMA_SLOT")],
        &[roman(
            "Set, with MAMA_MACHINE, MAMA_MAC and MAMA_IP, for a machine's startcmd, \
             stopcmd and readycmd: the slot of its outlet, else of its relay (empty where \
             it has neither). In those commands mama also replaces upstream's $MAC, \
             $OS_ARCH (its os before the /) and $PID (mama's own) before the shell sees \
             them.",
        )],
    );

    r.control("SH", ["FILES"]);
    item(
        &mut r,
        vec![italic("state")],
        &[
            roman("The state file: "),
            bold("--state"),
            roman(" "),
            italic("PATH"),
            roman(", else "),
            bold("$MAMA_STATE"),
            roman(", else "),
            italic("$MAMA_PATH/mama.xml"),
            roman(", else "),
            italic(DEFAULT_STATE),
            roman(
                ". A symbolic link is followed, so the files below sit beside the real \
                 file; none of those is ever opened through a link, and one planted in \
                 its place is an error naming it. If it is missing, only add, import and init work \
                 (they create it; its folder must exist, but for init): every other command fails, naming it, \
                 and creates nothing. In a folder its group may write that is setgid (as mama \
                 init sets a lab's folder up, and the Debian package makes /var/lib/mama), the \
                 state file and every file made beside it are the group's and open to it from \
                 the first command.",
            ),
        ],
    );
    item(
        &mut r,
        vec![italic("state"), roman(".lock")],
        &[roman(
            "The lock file: an advisory flock on it guards every transaction; each \
             transaction then also takes PHP mama's lock, a flock on the state file itself \
             (shared to read). It is created with the state file's group, readable and \
             writable only by those who may write the state file; others read without it, \
             under the state file's lock alone. Where PHP mama shares the file, it also \
             holds the roll-forward copy of an in-place write while it is made.",
        )],
    );
    item(
        &mut r,
        vec![
            italic("state"),
            roman(".locks/"),
            italic("machine"),
            roman(".lock"),
        ],
        &[roman(
            "One job lock a machine, held by the mama run that has claimed it and by every \
             process of its job, so a job whose mama was killed keeps its machine until its \
             last process ends; waiters sleep on it, so they notice a release at once.",
        )],
    );
    item(
        &mut r,
        vec![
            italic("state"),
            roman(".locks/"),
            italic("machine"),
            roman(".power"),
        ],
        &[roman(
            "A machine's power lock, a flock held while a start, stop or power switch runs \
             on it, so two never run on one machine at once: a second waits, saying so. A \
             database lab takes a session advisory lock instead.",
        )],
    );
    item(
        &mut r,
        vec![roman("/etc/mama/trusted, ~/.config/mama/trusted")],
        &[
            roman(
                "The labs whose commands mama runs (startcmd, stopcmd, readycmd, healthcmd, \
                 the command driver's) and whose USB-RLY08 ports it opens although someone \
                 other than the caller or root may write them (every database lab): one a \
                 line, the state file's real path or a database URL without its password, \
                 or * for all; # starts a comment. The caller's own file is ",
            ),
            italic("$XDG_CONFIG_HOME/mama/trusted"),
            roman(
                " where that is set. A trust file that another user than the caller or \
                 root owns, or that its group or others may write, is ignored, saying so.",
            ),
        ],
    );
    item(
        &mut r,
        vec![roman("."), italic("name"), roman(".tmp")],
        &[
            roman("The temporary file of an atomic write, in the state file's folder ("),
            italic("name"),
            roman(
                " is the state file's name), created afresh and private (mode 0600) and \
                 given the state file's mode, owner, group and extended attributes just \
                 before it replaces the state. A process killed while writing may leave \
                 it; the next write removes it.",
            ),
        ],
    );
    item(
        &mut r,
        vec![italic("state"), roman(".log")],
        &[roman(
            "The event log: one JSON object a line for every claim, release and other \
             change, appended once the change is committed. The state file keeps the newest \
             events too until 32 have gathered, so an event commits in the same transaction \
             as its change. The oldest events are dropped when the log grows past 4 MiB.",
        )],
    );
    item(
        &mut r,
        vec![italic("state"), roman(".journal")],
        &[roman(
            "Only where an earlier mama left one: the claims and releases it appended here \
             instead of writing them into the state file. mama reads them with the state file, \
             and its next write takes them into the state file and removes this file.",
        )],
    );
    item(
        &mut r,
        vec![
            italic("~/.postgresql/"),
            roman("root.crt, postgresql.crt, postgresql.key"),
        ],
        &[roman(
            "For a database lab, as libpq: the authorities that sign the server's \
             certificate (sslrootcert, PGSSLROOTCERT), and the client certificate and its \
             private key (sslcert and sslkey, PGSSLCERT and PGSSLKEY), PEM, used where they \
             are there and the URL and the environment name no others. A key that group or \
             others may read is refused (chmod 600).",
        )],
    );

    r.control("SH", ["EXIT STATUS"]);
    let status = |r: &mut Roff, code: &str, text: &str| item(r, vec![bold(code)], &[roman(text)]);
    status(&mut r, "0", "Success.");
    status(
        &mut r,
        "1",
        "An error: unknown machine, refused change, unreadable state file, ...",
    );
    status(
        &mut r,
        "2",
        "A wrong command line (for every command but run).",
    );
    r.control("PP", []);
    r.text([
        bold("mama run"),
        roman(" exits with the job's own status, or:"),
    ]);
    status(&mut r, "128+N", "The job died of signal N.");
    status(
        &mut r,
        "75",
        "The machine stayed busy: --no-wait, or --wait-timeout passed.",
    );
    status(
        &mut r,
        "124",
        "--timeout passed: the job got TERM, and KILL 5 s later. mama start exits 124 too \
         when the machine was not ready within its start timeout in every try (it was \
         stopped again).",
    );
    status(
        &mut r,
        "125",
        "mama failed before the job started, including a wrong run command line and a run \
         --boot whose machine did not start (it was stopped again, and no job ran); or, in \
         a database lab, the run lost its claim while the job ran and stopped the job.",
    );
    status(
        &mut r,
        "126",
        "The command was found but could not be executed.",
    );
    status(&mut r, "127", "The command was not found.");
    status(
        &mut r,
        "69",
        "The machine is out of service (mama offline), or every machine of --any or \
         --where is: nothing was claimed.",
    );
    r.control("PP", []);
    r.text([
        bold("mama wait"),
        roman(
            " exits 0 when the machine is free, 75 when its --timeout passed first, and 69 \
             when the machine is out of service. ",
        ),
        bold("mama start"),
        roman(", "),
        bold("power on"),
        roman(" and "),
        bold("power cycle"),
        roman(" exit 69 on a machine out of service; "),
        bold("mama start"),
        roman(
            " exits 128+N when signal N came while it waited for the machine, which it \
             stopped again. ",
        ),
        bold("mama check"),
        roman(" exits 0 when the health command passed and 1 when it failed."),
    ]);

    r.control("SH", ["STATES"]);
    r.text([
        roman("The State column of "),
        bold("list"),
        roman(" and "),
        bold("info"),
        roman(" (\"state\" in their JSON) says what holds each machine:"),
    ]);
    let state = |r: &mut Roff, name: &str, text: &str| item(r, vec![bold(name)], &[roman(text)]);
    state(&mut r, "free", "Nothing holds it.");
    state(
        &mut r,
        "busy",
        "A live job holds it (the User column names the user who claimed it, and \"?\" \
         a record that does not say, as PHP mama and hand-written ones), or processes of \
         a job whose record was cleared still hold its job lock.",
    );
    state(
        &mut r,
        "stale",
        "Its job was left behind by a process that died (see STALE JOBS).",
    );
    state(
        &mut r,
        "started",
        "is_started is set: someone powered it up by hand.",
    );
    state(
        &mut r,
        "reserved",
        "A user reserved it (the Reserved column, with the time a reservation made with \
         --for ends; once that time has come the machine is free for everyone).",
    );
    state(
        &mut r,
        "blocked",
        "Free by its own fields, but a machine sharing one of its resources has a live \
         job, a reservation or is_started, so runs on it wait: list names that machine \
         and what holds it, as in \"blocked (rig1 reserved by alice)\", info says it \
         under \"Blocked by:\", and the JSON under \"blocked_by\".",
    );
    state(
        &mut r,
        "offline",
        "Out of service (mama offline, a failed health check, too many failed starts): \
         run and wait on it exit 69, saying why; info says why under \"Out of service:\". \
         Not the Online column's offline, which says the machine does not answer.",
    );
    r.control("PP", []);
    r.text([roman(
        "A machine's own live job decides first (a job on a machine out of service runs \
         on, and shows busy), then out of service, then a stale job, then a hand start, \
         then a reservation; it is blocked only when it would otherwise be free. The state \
         is the same whoever asks: your own reservation, or the job you run inside, still \
         shows, and a run lets you through.",
    )]);

    r.control("SH", ["STALE JOBS"]);
    r.text([roman("A job is stale when:")]);
    let rule = |r: &mut Roff, text: &str| {
        r.control("IP", ["\\(bu", "2"]);
        r.text([roman(text)]);
    };
    rule(&mut r, "a PID is recorded and no process has that PID; or");
    rule(
        &mut r,
        "a PID is recorded but the process that has it is not the claimer: it started \
         at another instant than the claim records (for records of other tools, more \
         than 2 s after the claim's timestamp); or",
    );
    rule(
        &mut r,
        "no PID is recorded and the claim is older than the stale age (MAMA_STALE_AFTER, \
         default 300 s). With no timestamp either, the first waiter that sees the record \
         stamps it, so it goes stale after the same age instead of blocking forever.",
    );
    r.control("PP", []);
    r.text([
        roman(
            "A PID is judged only in the PID namespace and boot it was recorded in. \
             Elsewhere on this host (a container sharing the lab folder), and for a job \
             whose PID is dead while processes of the job still run, the machine's job \
             lock decides: held, the job is live; free, it is stale. A job claimed in an \
             earlier boot of this host is stale; one claimed on another host is never \
             judged here. ",
        ),
        bold("list"),
        roman(" and "),
        bold("info"),
        roman(" only show staleness; a waiter ("),
        bold("run"),
        roman(", "),
        bold("wait"),
        roman(") clears a stale job in the same locked transaction in which it judged it, and says on stderr what it cleared."),
    ]);

    r.control("SH", ["EXAMPLES"]);
    example(
        &mut r,
        "Add a machine and look at the lab:",
        "mama add rig1 --mac aa:bb:cc:dd:ee:01 --ip 10.0.0.11\nmama list",
    );
    example(
        &mut r,
        "Run a test on rig1 as soon as it is free, for at most an hour:",
        "mama run rig1 --job \"smoke x86_64\" --timeout 3600 -- ./smoke.sh --fast",
    );
    example(
        &mut r,
        "Run only if rig1 is free now:",
        "mama run rig1 --no-wait -- make test; [ $? -eq 75 ] && echo \"rig1 is busy\"",
    );
    example(
        &mut r,
        "Keep a machine for yourself, then give it back:",
        "mama reserve rig1\nmama release rig1",
    );
    example(
        &mut r,
        "Take rig1 out of service, and check it every night (a failed check takes it out, \
         a passing one brings it back):",
        "mama offline rig1 --reason \"dead serial console\"\n\
         mama set rig1 healthcmd 'ping -c1 -W2 \"$MAMA_IP\"'\nmama check rig1",
    );
    example(
        &mut r,
        "Keep rig1 for two hours, saying why, and then an hour more:",
        "mama reserve rig1 --for 2h --note \"bisecting the scheduler\"\nmama extend rig1 --for 1h",
    );
    example(
        &mut r,
        "Take rig1 as soon as it is free, in turn, and keep it for the afternoon:",
        "mama wait rig1 --then-reserve --for 4h",
    );
    example(
        &mut r,
        "No reservation in this lab lasts longer than a working day:",
        "mama setting longest-reservation 8h",
    );
    example(
        &mut r,
        "Wait at most ten minutes for rig1, using another state file:",
        "MAMA_STATE=/srv/lab/mama.xml mama wait rig1 --timeout 600",
    );
    example(
        &mut r,
        "Install bash completion (machine names complete from the state file):",
        "mama completions bash > ~/.local/share/bash-completion/completions/mama",
    );

    r.control("SH", ["SEE ALSO"]);
    r.text([bold("flock"), roman("(1), "), bold("timeout"), roman("(1)")]);
    r
}
