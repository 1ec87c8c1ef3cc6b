//! The fields of a machine, and the checks on what a user gives for them.

use crate::error::Error;
use crate::text::is_xml_char;

/// A field of a machine: one child element of `<machine>` in the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Name,
    Mac,
    Ip,
    /// mama's own addition: `1` when `ip` was learned by `start` from the
    /// neighbour table (a `stop` forgets it), not set by a person.
    IpLearned,
    IsStarted,
    /// mama's own addition: the user who started the machine with mama.
    StartedBy,
    /// mama's own addition: `1` when the start belongs to the machine's
    /// job (`run --boot`): it ends with the job, and a claimer that finds
    /// the job stale stops the machine first.
    StartedForJob,
    /// mama's own addition: when the last start began (Unix seconds), and
    /// how long the machine took to become ready (seconds, in
    /// milliseconds), space-separated.
    LastStart,
    OnlyVm,
    Arch,
    Os,
    Kernel,
    PwrDev,
    PwrSlot,
    RlyDev,
    RlySlot,
    Reservation,
    Resources,
    BootParams,
    VmParams,
    Job,
    JobPid,
    JobTimestamp,
    /// mama's own addition: the user who claimed the job.
    JobUser,
    /// mama's own addition: the host the job's PID belongs to.
    JobHost,
    /// mama's own addition: the boot, PID namespace and start time of the
    /// claimer, so its PID is judged only where it means something.
    JobOrigin,
    /// mama's own addition: the waiters for the machine, in arrival order
    /// (see [`crate::model::queue`]).
    JobQueue,
    StartCmd,
    StopCmd,
    StartTimeout,
    /// mama's own addition: the TCP port a started machine answers on
    /// when it is ready (22 where empty).
    ReadyPort,
    /// mama's own addition: a shell command that exits 0 when a started
    /// machine is ready (instead of the ping and port).
    ReadyCmd,
    /// mama's own addition: a shell command that exits 0 when the machine
    /// is healthy (`mama check`).
    HealthCmd,
    /// mama's own addition: why the machine is out of service (`mama
    /// offline`); a machine is out of service while this holds text.
    OfflineReason,
    /// mama's own addition: who took the machine out of service.
    OfflineBy,
    /// mama's own addition: since when the machine is out of service
    /// (Unix seconds).
    OfflineSince,
    /// mama's own addition: how many starts in a row failed every try.
    FailedStarts,
}

impl Field {
    /// Every field in document order; a field mama adds to an old machine is
    /// placed after the nearest field that comes before it here.
    pub const ALL: [Field; 37] = [
        Field::Name,
        Field::Mac,
        Field::Ip,
        Field::IpLearned,
        Field::IsStarted,
        Field::StartedBy,
        Field::StartedForJob,
        Field::LastStart,
        Field::OnlyVm,
        Field::Arch,
        Field::Os,
        Field::Kernel,
        Field::PwrDev,
        Field::PwrSlot,
        Field::RlyDev,
        Field::RlySlot,
        Field::Reservation,
        Field::Resources,
        Field::BootParams,
        Field::VmParams,
        Field::Job,
        Field::JobPid,
        Field::JobTimestamp,
        Field::JobUser,
        Field::JobHost,
        Field::JobOrigin,
        Field::JobQueue,
        Field::StartCmd,
        Field::StopCmd,
        Field::StartTimeout,
        Field::ReadyPort,
        Field::ReadyCmd,
        Field::HealthCmd,
        Field::OfflineReason,
        Field::OfflineBy,
        Field::OfflineSince,
        Field::FailedStarts,
    ];

    /// This field's place in [`Field::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The element name in the state file.
    pub const fn tag(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Mac => "mac",
            Field::Ip => "ip",
            Field::IpLearned => "ip_learned",
            Field::IsStarted => "is_started",
            Field::StartedBy => "started_by",
            Field::StartedForJob => "started_for_job",
            Field::LastStart => "last_start",
            Field::OnlyVm => "only_vm",
            Field::Arch => "arch",
            Field::Os => "os",
            Field::Kernel => "kernel",
            Field::PwrDev => "pwr_dev",
            Field::PwrSlot => "pwr_slot",
            Field::RlyDev => "rly_dev",
            Field::RlySlot => "rly_slot",
            Field::Reservation => "reservation",
            Field::Resources => "resources",
            Field::BootParams => "boot_params",
            Field::VmParams => "vm_params",
            Field::Job => "job",
            Field::JobPid => "job_pid",
            Field::JobTimestamp => "job_timestamp",
            Field::JobUser => "job_user",
            Field::JobHost => "job_host",
            Field::JobOrigin => "job_origin",
            Field::JobQueue => "job_queue",
            Field::StartCmd => "startcmd",
            Field::StopCmd => "stopcmd",
            Field::StartTimeout => "start_timeout",
            Field::ReadyPort => "ready_port",
            Field::ReadyCmd => "readycmd",
            Field::HealthCmd => "healthcmd",
            Field::OfflineReason => "offline_reason",
            Field::OfflineBy => "offline_by",
            Field::OfflineSince => "offline_since",
            Field::FailedStarts => "failed_starts",
        }
    }

    /// The field whose element is called `tag`.
    pub fn from_tag(tag: &str) -> Option<Field> {
        Some(match tag {
            "name" => Field::Name,
            "mac" => Field::Mac,
            "ip" => Field::Ip,
            "ip_learned" => Field::IpLearned,
            "is_started" => Field::IsStarted,
            "started_by" => Field::StartedBy,
            "started_for_job" => Field::StartedForJob,
            "last_start" => Field::LastStart,
            "only_vm" => Field::OnlyVm,
            "arch" => Field::Arch,
            "os" => Field::Os,
            "kernel" => Field::Kernel,
            "pwr_dev" => Field::PwrDev,
            "pwr_slot" => Field::PwrSlot,
            "rly_dev" => Field::RlyDev,
            "rly_slot" => Field::RlySlot,
            "reservation" => Field::Reservation,
            "resources" => Field::Resources,
            "boot_params" => Field::BootParams,
            "vm_params" => Field::VmParams,
            "job" => Field::Job,
            "job_pid" => Field::JobPid,
            "job_timestamp" => Field::JobTimestamp,
            "job_user" => Field::JobUser,
            "job_host" => Field::JobHost,
            "job_origin" => Field::JobOrigin,
            "job_queue" => Field::JobQueue,
            "startcmd" => Field::StartCmd,
            "stopcmd" => Field::StopCmd,
            "start_timeout" => Field::StartTimeout,
            "ready_port" => Field::ReadyPort,
            "readycmd" => Field::ReadyCmd,
            "healthcmd" => Field::HealthCmd,
            "offline_reason" => Field::OfflineReason,
            "offline_by" => Field::OfflineBy,
            "offline_since" => Field::OfflineSince,
            "failed_starts" => Field::FailedStarts,
            _ => return None,
        })
    }

    /// Whether upstream PHP mama writes this field in every machine.
    pub const fn is_upstream(self) -> bool {
        !matches!(
            self,
            Field::JobHost
                | Field::JobOrigin
                | Field::JobUser
                | Field::JobQueue
                | Field::IpLearned
                | Field::StartedBy
                | Field::StartedForJob
                | Field::LastStart
                | Field::ReadyPort
                | Field::ReadyCmd
                | Field::HealthCmd
                | Field::OfflineReason
                | Field::OfflineBy
                | Field::OfflineSince
                | Field::FailedStarts
        )
    }

    /// Whether this field is part of the job recorded on a machine (its
    /// queue of waiters is not): what forgetting the job empties.
    pub const fn is_job(self) -> bool {
        matches!(
            self,
            Field::Job
                | Field::JobPid
                | Field::JobTimestamp
                | Field::JobHost
                | Field::JobOrigin
                | Field::JobUser
        )
    }

    /// Whether a value of this field has a form that `set` checks (so an
    /// empty one stands for the field's initial value), rather than being
    /// free text.
    const fn has_form(self) -> bool {
        matches!(
            self,
            Field::Ip
                | Field::StartTimeout
                | Field::ReadyPort
                | Field::PwrSlot
                | Field::RlySlot
                | Field::OnlyVm
                | Field::IsStarted
        )
    }

    /// What upstream writes into a new machine's field.
    pub const fn initial(self) -> &'static str {
        match self {
            Field::OnlyVm | Field::PwrSlot | Field::RlySlot => "0",
            _ => "",
        }
    }
}

/// A field as the command line names it: `set`, `get` and `--where`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Its name on the command line; the element's name
    /// ([`Field::tag`]) is taken too.
    pub name: &'static str,
    pub field: Field,
    /// Whether `set` changes it; the others only `get` prints, since
    /// commands of their own change them (`reserve`, `run`).
    pub settable: bool,
    /// What the help says of it, where its name does not say enough.
    pub about: Option<&'static str>,
}

const fn attr(name: &'static str, field: Field, about: Option<&'static str>) -> Attr {
    Attr {
        name,
        field,
        settable: true,
        about,
    }
}

const fn read_only(name: &'static str, field: Field) -> Attr {
    Attr {
        name,
        field,
        settable: false,
        about: None,
    }
}

/// The fields the command line knows, in the order its help shows them:
/// every field of upstream's format but the name, which `add` gives.
pub const ATTRS: [Attr; 25] = [
    attr("ip", Field::Ip, None),
    attr("mac", Field::Mac, None),
    attr("arch", Field::Arch, None),
    attr("os", Field::Os, None),
    attr("kernel", Field::Kernel, None),
    attr("params", Field::BootParams, Some("boot_params")),
    attr("vmparams", Field::VmParams, Some("vm_params")),
    attr("resources", Field::Resources, None),
    attr("only-vm", Field::OnlyVm, Some("1 or 0")),
    attr("is-started", Field::IsStarted, Some("1 or 0")),
    attr("pwr-dev", Field::PwrDev, Some("power switch")),
    attr(
        "pwr-slot",
        Field::PwrSlot,
        Some("its outlet, a whole number"),
    ),
    attr("rly-dev", Field::RlyDev, Some("relay board")),
    attr(
        "rly-slot",
        Field::RlySlot,
        Some("its relay, a whole number"),
    ),
    attr("startcmd", Field::StartCmd, None),
    attr("stopcmd", Field::StopCmd, None),
    attr("start-timeout", Field::StartTimeout, Some("seconds")),
    attr(
        "ready-port",
        Field::ReadyPort,
        Some("the TCP port a ready machine answers on, 22 where empty"),
    ),
    attr(
        "readycmd",
        Field::ReadyCmd,
        Some("a shell command that exits 0 once the machine is ready"),
    ),
    attr(
        "healthcmd",
        Field::HealthCmd,
        Some("a shell command that exits 0 when the machine is healthy, for mama check"),
    ),
    read_only("started-by", Field::StartedBy),
    read_only("reservation", Field::Reservation),
    read_only("job", Field::Job),
    read_only("job-pid", Field::JobPid),
    read_only("job-timestamp", Field::JobTimestamp),
];

/// The field the command line calls `name` (or by its element's name),
/// in any case.
pub fn find_attr(name: &str) -> Option<&'static Attr> {
    ATTRS
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(name) || a.field.tag().eq_ignore_ascii_case(name))
}

/// The name the command line gives `field` (its element's name where it
/// has none).
pub fn attr_name(field: Field) -> &'static str {
    ATTRS
        .iter()
        .find(|a| a.field == field)
        .map_or(field.tag(), |a| a.name)
}

/// Refuses text the state file cannot hold.
pub fn check_value(field: Field, value: &str) -> Result<(), Error> {
    // The lab holds what the upstream XML file can hold, whichever backend
    // stores it, so a lab can move between them.
    match value.chars().find(|&c| !is_xml_char(c)) {
        None => Ok(()),
        Some(c) => Err(Error::Invalid(format!(
            "the value for {} contains the control character U+{:04X}, which the XML state file cannot hold",
            field.tag(),
            c as u32
        ))),
    }
}

/// The longest value a user may give a field: far past any boot parameter
/// line or job label, and short enough that no lab grows large by it.
pub const MAX_VALUE: usize = 64 << 10;

/// Refuses what a user gives for a field that the state file cannot hold,
/// or that a terminal would act on when it is shown: C1 controls
/// (U+0080 to U+009F), which XML allows.
pub fn check_input(field: Field, value: &str) -> Result<(), Error> {
    if value.len() > MAX_VALUE {
        return Err(Error::Invalid(format!(
            "the value for {} is {} bytes, longer than the {MAX_VALUE} a field may hold",
            field.tag(),
            value.len()
        )));
    }
    check_value(field, value)?;
    match value.chars().find(|c| ('\u{80}'..='\u{9f}').contains(c)) {
        None => Ok(()),
        Some(c) => Err(Error::Invalid(format!(
            "the value for {} contains the control character U+{:04X}, which a terminal \
             would act on when it is shown",
            field.tag(),
            c as u32
        ))),
    }
}

/// How `only_vm` and `is_started` may be given: on, then off.
const YES: [&str; 4] = ["1", "yes", "true", "on"];
const NO: [&str; 4] = ["0", "no", "false", "off"];

/// Checks and normalises what a user gives for a field; the error names the
/// field and says what is expected.
///
/// An empty value clears a field: to what upstream writes into a new
/// machine (`0` for `only_vm` and the slots, else nothing). `only_vm` and
/// `is_started` are stored as `1` or `0`, given as any of `YES` or
/// `NO` in any case; slots and `start_timeout` are whole numbers; the
/// devices are free text without control characters; other free text is
/// kept exactly as given.
pub fn normalize(field: Field, value: &str) -> Result<String, Error> {
    check_input(field, value)?;
    let trimmed = value.trim();
    let name = attr_name(field);
    let whole = |what: &str| {
        trimmed
            .parse::<u32>()
            .map(|n| n.to_string())
            .map_err(|_| Error::Invalid(format!("{name} must be {what}, not '{value}'")))
    };
    match field {
        Field::Mac => normalize_mac(trimmed),
        _ if trimmed.is_empty() && field.has_form() => Ok(field.initial().to_string()),
        Field::Ip => trimmed
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_string())
            .map_err(|_| Error::Invalid(format!("'{value}' is not an IP address"))),
        Field::StartTimeout => whole("a whole number of seconds"),
        Field::ReadyPort => match trimmed.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port.to_string()),
            _ => Err(Error::Invalid(format!(
                "{name} must be a TCP port, 1 to 65535, not '{value}'"
            ))),
        },
        Field::PwrSlot | Field::RlySlot => whole("a whole number"),
        Field::OnlyVm | Field::IsStarted => {
            let is = |words: &[&str]| words.iter().any(|w| w.eq_ignore_ascii_case(trimmed));
            if is(&YES) {
                Ok("1".into())
            } else if is(&NO) {
                Ok("0".into())
            } else {
                Err(Error::Invalid(format!(
                    "{name} must be 1 or 0 (or yes/no, true/false, on/off), not '{value}'"
                )))
            }
        }
        Field::Resources => Ok(trimmed.split_whitespace().collect::<Vec<_>>().join(" ")),
        Field::PwrDev | Field::RlyDev => match value.chars().find(|c| c.is_control()) {
            None => Ok(value.to_string()),
            Some(c) => Err(Error::Invalid(format!(
                "the value for {name} contains the control character U+{:04X}; a device \
                 is named on one line",
                c as u32
            ))),
        },
        // Free text is kept exactly as given.
        _ => Ok(value.to_string()),
    }
}

/// Whether a machine's `stored` value of `field` matches `wanted` (a value
/// as [`normalize`] gives it, `--where`): `only_vm` and `is_started` by
/// what they mean (empty and `0` are off, as everywhere), others as `set`
/// would store them.
pub fn matches(field: Field, stored: &str, wanted: &str) -> bool {
    match field {
        Field::OnlyVm | Field::IsStarted => is_on(stored) == is_on(wanted),
        _ => stored == wanted || normalize(field, stored).is_ok_and(|n| n == wanted),
    }
}

/// Whether a flag (`only_vm`, `is_started`) is on: anything but empty or
/// `0`, as upstream reads it.
pub fn is_on(value: &str) -> bool {
    let value = value.trim();
    !value.is_empty() && value != "0"
}

/// A MAC address: six hex octets separated by `:` or `-`, stored lower-case
/// with `:`.
pub fn normalize_mac(value: &str) -> Result<String, Error> {
    let octets: Vec<&str> = value.split([':', '-']).collect();
    let valid = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        return Err(Error::Invalid(format!(
            "'{value}' is not a MAC address (expected six hex octets, like aa:bb:cc:dd:ee:01)"
        )));
    }
    Ok(octets.join(":").to_ascii_lowercase())
}

/// A new machine's name: printable (no control a terminal acts on, the
/// bidirectional ones included), no white space, not `all` (which `clear
/// all` means), not starting with `-`.
pub fn check_name(name: &str) -> Result<(), Error> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name == "all" {
        Some("is reserved: `mama clear all` means every machine")
    } else if name.starts_with('-') {
        Some("starts with '-'")
    } else if name
        .chars()
        .any(|c| c.is_whitespace() || crate::text::is_terminal_control(c))
    {
        Some("contains white space or a control character")
    } else if name.len() > 255 {
        Some("is longer than 255 bytes")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::Invalid(format!(
            "the machine name '{name}' {problem}"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod input_tests {
    use super::*;

    #[test]
    fn macs_are_checked_and_normalised() {
        assert_eq!(
            normalize_mac("AA-BB-CC-DD-EE-0F").unwrap(),
            "aa:bb:cc:dd:ee:0f"
        );
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:gg",
            "aabbccddeeff",
            "aa:bb:cc:dd:ee:f",
        ] {
            assert!(normalize_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_slots_and_devices_are_checked() {
        for (given, stored) in [("1", "1"), (" Yes ", "1"), ("on", "1"), ("FALSE", "0")] {
            assert_eq!(normalize(Field::OnlyVm, given).unwrap(), stored, "{given}");
            assert_eq!(
                normalize(Field::IsStarted, given).unwrap(),
                stored,
                "{given}"
            );
        }
        assert_eq!(normalize(Field::OnlyVm, "").unwrap(), "0");
        assert_eq!(normalize(Field::IsStarted, "").unwrap(), "");
        for bad in ["2", "maybe", "-1"] {
            let err = normalize(Field::OnlyVm, bad).unwrap_err().to_string();
            assert!(err.contains("only-vm"), "{err}");
        }
        assert_eq!(normalize(Field::PwrSlot, " 7 ").unwrap(), "7");
        assert_eq!(normalize(Field::RlySlot, "").unwrap(), "0");
        for bad in ["-1", "1.5", "x", "99999999999"] {
            let err = normalize(Field::RlySlot, bad).unwrap_err().to_string();
            assert!(err.contains("rly-slot"), "{err}");
        }
        assert_eq!(normalize(Field::PwrDev, " pdu 1 ").unwrap(), " pdu 1 ");
        assert!(normalize(Field::PwrDev, "pdu\t1").is_err());
        assert_eq!(normalize(Field::Arch, "a\tb").unwrap(), "a\tb");
    }

    #[test]
    fn stored_values_match_by_what_they_mean() {
        assert!(matches(Field::IsStarted, "", "0"));
        assert!(matches(Field::IsStarted, " 0", "0"));
        assert!(!matches(Field::IsStarted, "", "1"));
        assert!(matches(Field::OnlyVm, "1", "1"));
        assert!(matches(Field::PwrSlot, " 3", "3"));
        assert!(matches(
            Field::Mac,
            "AA:BB:CC:DD:EE:01",
            "aa:bb:cc:dd:ee:01"
        ));
        assert!(!matches(Field::Os, "fedora ", "fedora"));
    }

    #[test]
    fn every_attr_has_one_name_and_a_field_of_its_own() {
        for (i, a) in ATTRS.iter().enumerate() {
            assert_eq!(find_attr(a.name), Some(a));
            assert_eq!(find_attr(a.field.tag()), Some(a));
            assert_eq!(find_attr(&a.name.to_uppercase()), Some(a));
            assert!(ATTRS[i + 1..].iter().all(|b| b.field != a.field), "{a:?}");
        }
        // Every field of upstream's format but the name.
        for field in Field::ALL.into_iter().filter(|f| f.is_upstream()) {
            assert_eq!(
                find_attr(field.tag()).is_some(),
                field != Field::Name,
                "{field:?}"
            );
        }
    }

    #[test]
    fn fields_are_checked() {
        assert!(normalize(Field::Ip, "10.0.0.300").is_err());
        assert_eq!(normalize(Field::Ip, " ::1 ").unwrap(), "::1");
        assert_eq!(normalize(Field::Ip, "").unwrap(), "");
        assert!(normalize(Field::StartTimeout, "-3").is_err());
        assert_eq!(
            normalize(Field::Resources, " pdu1   usb ").unwrap(),
            "pdu1 usb"
        );
        assert!(check_name("all").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("rig-1.lab").is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_found_by_its_tag() {
        for field in Field::ALL {
            assert_eq!(Field::from_tag(field.tag()), Some(field), "{field:?}");
        }
        assert_eq!(Field::from_tag("custom"), None);
    }
}
