//! The fields of a machine, and the checks on what a user gives for them.

use crate::backend::file::xml::is_xml_char;
use crate::error::Error;

/// A field of a machine: one child element of `<machine>` in the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Name,
    Mac,
    Ip,
    IsStarted,
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
}

impl Field {
    /// Every field in document order; a field mama adds to an old machine is
    /// placed after the nearest field that comes before it here.
    pub const ALL: [Field; 26] = [
        Field::Name,
        Field::Mac,
        Field::Ip,
        Field::IsStarted,
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
            Field::IsStarted => "is_started",
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
        }
    }

    /// The field whose element is called `tag`.
    pub fn from_tag(tag: &str) -> Option<Field> {
        Some(match tag {
            "name" => Field::Name,
            "mac" => Field::Mac,
            "ip" => Field::Ip,
            "is_started" => Field::IsStarted,
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
            _ => return None,
        })
    }

    /// Whether upstream PHP mama writes this field in every machine.
    pub const fn is_upstream(self) -> bool {
        !matches!(
            self,
            Field::JobUser | Field::JobHost | Field::JobOrigin | Field::JobQueue
        )
    }

    /// Whether this field is part of the job recorded on a machine.
    pub const fn is_job(self) -> bool {
        matches!(
            self,
            Field::Job
                | Field::JobPid
                | Field::JobTimestamp
                | Field::JobUser
                | Field::JobHost
                | Field::JobOrigin
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

/// Refuses what a user gives for a field that the state file cannot hold,
/// or that a terminal would act on when it is shown: C1 controls
/// (U+0080 to U+009F), which XML allows.
pub fn check_input(field: Field, value: &str) -> Result<(), Error> {
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

/// Checks and normalises what a user gives for a field; the error names the
/// field and says what is expected.
pub fn normalize(field: Field, value: &str) -> Result<String, Error> {
    check_input(field, value)?;
    let trimmed = value.trim();
    match field {
        Field::Mac => normalize_mac(trimmed),
        Field::Ip if !trimmed.is_empty() => trimmed
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_string())
            .map_err(|_| Error::Invalid(format!("'{value}' is not an IP address"))),
        Field::StartTimeout if !trimmed.is_empty() => trimmed
            .parse::<u32>()
            .map(|secs| secs.to_string())
            .map_err(|_| {
                Error::Invalid(format!(
                    "start-timeout must be a whole number of seconds, not '{value}'"
                ))
            }),
        Field::Resources => Ok(trimmed.split_whitespace().collect::<Vec<_>>().join(" ")),
        Field::Ip | Field::StartTimeout => Ok(String::new()),
        // Free text is kept exactly as given.
        _ => Ok(value.to_string()),
    }
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

/// A new machine's name: printable, no white space, not `all` (which
/// `clear all` means), not starting with `-`.
pub fn check_name(name: &str) -> Result<(), Error> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name == "all" {
        Some("is reserved: `mama clear all` means every machine")
    } else if name.starts_with('-') {
        Some("starts with '-'")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
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
