//! The lab's power devices: outlet bars and relay boards, defined once in
//! the lab and named by machines (`pwr_dev`/`pwr_slot` for an outlet,
//! `rly_dev`/`rly_slot` for a relay).
//!
//! Only the model: a device's name, its driver and the driver's options as
//! text, checked here. Speaking to a device is [`crate::device`]'s.

use std::time::Duration;

use crate::error::Error;
use crate::text::is_xml_char;

/// How mama speaks to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    /// Shell commands of the lab's own: `on`, `off` and `status`, with
    /// `{slot}` replaced by the slot.
    Command,
    /// A Ubiquiti mFi mPower outlet bar, over HTTP.
    Mpower,
    /// A Devantech USB-RLY08 relay board, over its serial port.
    UsbRly08,
}

/// One option a driver takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opt {
    /// Its name: the element in the lab, `--NAME` for `device add`.
    pub name: &'static str,
    pub required: bool,
    pub about: &'static str,
}

const fn opt(name: &'static str, required: bool, about: &'static str) -> Opt {
    Opt {
        name,
        required,
        about,
    }
}

/// The options every driver takes: how long a relay is pressed to start a
/// machine and held to force it off (upstream's one second and eight), and
/// how many slots the device has.
const COMMON: [Opt; 3] = [
    opt(
        "press",
        false,
        "seconds a relay is pressed to start a machine (default 1)",
    ),
    opt(
        "hold",
        false,
        "seconds a relay is held to force a machine off (default 8)",
    ),
    opt(
        "slots",
        false,
        "how many outlets or relays it has (slots are numbered from 1)",
    ),
];

const COMMAND: [Opt; 3] = [
    opt(
        "on",
        true,
        "shell command that switches slot {slot} on (MAMA_SLOT is set too)",
    ),
    opt("off", true, "shell command that switches slot {slot} off"),
    opt(
        "status",
        false,
        "shell command that prints `on` or `off` for slot {slot}, and optionally the watts",
    ),
];

const MPOWER: [Opt; 3] = [
    opt(
        "address",
        true,
        "its host name or IP address, with :PORT if not 80",
    ),
    opt("user", false, "the user to log in as (default ubnt)"),
    opt(
        "password",
        false,
        "the password to log in with (default ubnt)",
    ),
];

const USBRLY08: [Opt; 1] = [opt("port", true, "its serial port, such as /dev/ttyACM0")];

impl Driver {
    pub const ALL: [Driver; 3] = [Driver::Command, Driver::Mpower, Driver::UsbRly08];

    /// Its name in the lab and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Driver::Command => "command",
            Driver::Mpower => "mpower",
            Driver::UsbRly08 => "usbrly08",
        }
    }

    pub fn from_name(name: &str) -> Option<Driver> {
        Driver::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(name))
    }

    /// The options of this driver, then those of every driver.
    pub fn options(self) -> impl Iterator<Item = &'static Opt> {
        let own: &'static [Opt] = match self {
            Driver::Command => &COMMAND,
            Driver::Mpower => &MPOWER,
            Driver::UsbRly08 => &USBRLY08,
        };
        own.iter().chain(COMMON.iter())
    }

    /// Whether using a device of this driver acts on what is written into
    /// the lab beyond an address, so that it is subject to the lab's trust:
    /// the command driver runs the lab's commands, the USB-RLY08 driver
    /// opens, writes and reads the terminal the lab names as its port
    /// (which could be someone's terminal).
    pub const fn needs_trust(self) -> bool {
        matches!(self, Driver::Command | Driver::UsbRly08)
    }

    /// What of a device of this driver needs trust, for the refusal.
    pub const fn trusted_part(self) -> &'static str {
        match self {
            Driver::UsbRly08 => "the serial port",
            _ => "the commands",
        }
    }
}

/// Every option any driver takes, once each, in the order of the drivers.
pub fn all_options() -> Vec<&'static Opt> {
    let mut all: Vec<&'static Opt> = Vec::new();
    for driver in Driver::ALL {
        for o in driver.options() {
            if !all.iter().any(|a| a.name == o.name) {
                all.push(o);
            }
        }
    }
    all
}

/// A device as the lab defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub driver: Driver,
    /// Its options in the order given, each once.
    options: Vec<(String, String)>,
}

/// The longest a relay is pressed or held: a minute.
const MAX_PRESS: Duration = Duration::from_secs(60);

impl Device {
    /// A device, checked: a name as a machine's (see
    /// [`crate::model::field::check_name`]), every required option, no
    /// option the driver does not take, values that the lab can hold and
    /// that are of the right form.
    pub fn new(
        name: &str,
        driver: Driver,
        options: Vec<(String, String)>,
    ) -> Result<Device, Error> {
        // Named as a machine is, and the message says whose name it is.
        crate::model::field::check_name(name).map_err(|e| {
            Error::Invalid(
                e.to_string()
                    .replacen("the machine name", "the device name", 1),
            )
        })?;
        let device = Device {
            name: name.to_string(),
            driver,
            options,
        };
        device.check()?;
        Ok(device)
    }

    /// A device as read from the lab, unchecked (it is checked when used:
    /// a device damaged by hand must not make the lab unreadable).
    pub fn read(name: String, driver: Driver, options: Vec<(String, String)>) -> Device {
        Device {
            name,
            driver,
            options,
        }
    }

    /// Checks the options against the driver.
    pub fn check(&self) -> Result<(), Error> {
        let name = &self.name;
        let driver = self.driver.name();
        for (key, value) in &self.options {
            let Some(known) = self.driver.options().find(|o| o.name == key) else {
                return Err(Error::Invalid(format!(
                    "device {name}: the {driver} driver takes no option '{key}' (it takes {})",
                    self.driver
                        .options()
                        .map(|o| o.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            if let Some(c) = value.chars().find(|&c| !is_xml_char(c) || c.is_control()) {
                return Err(Error::Invalid(format!(
                    "device {name}: the value for {} contains the control character U+{:04X}",
                    known.name, c as u32
                )));
            }
            if value.len() > crate::model::field::MAX_VALUE {
                return Err(Error::Invalid(format!(
                    "device {name}: the value for {} is longer than {} bytes",
                    known.name,
                    crate::model::field::MAX_VALUE
                )));
            }
            if self.options.iter().filter(|(k, _)| k == key).count() > 1 {
                return Err(Error::Invalid(format!(
                    "device {name}: option {key} is given twice"
                )));
            }
        }
        for o in self.driver.options().filter(|o| o.required) {
            if self.option(o.name).is_none() {
                return Err(Error::Invalid(format!(
                    "device {name}: the {driver} driver needs --{} ({})",
                    o.name, o.about
                )));
            }
        }
        self.press()?;
        self.hold()?;
        self.slots()?;
        Ok(())
    }

    /// An option's value; `None` where it is not given or empty.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.trim().is_empty())
    }

    /// The options as given, in order.
    pub fn options(&self) -> &[(String, String)] {
        &self.options
    }

    fn seconds(&self, key: &str, default: Duration) -> Result<Duration, Error> {
        let Some(text) = self.option(key) else {
            return Ok(default);
        };
        match text.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs >= 0.0 && secs <= MAX_PRESS.as_secs_f64() => {
                Ok(Duration::from_secs_f64(secs))
            }
            _ => Err(Error::Invalid(format!(
                "device {}: {key} must be a number of seconds from 0 to {}, not '{text}'",
                self.name,
                MAX_PRESS.as_secs()
            ))),
        }
    }

    /// How long a relay is pressed to start a machine.
    pub fn press(&self) -> Result<Duration, Error> {
        self.seconds("press", Duration::from_secs(1))
    }

    /// How long a relay is held to force a machine off.
    pub fn hold(&self) -> Result<Duration, Error> {
        self.seconds("hold", Duration::from_secs(8))
    }

    /// How many slots it has, where the lab says.
    pub fn slots(&self) -> Result<Option<u32>, Error> {
        let Some(text) = self.option("slots") else {
            return Ok(None);
        };
        match text.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Error::Invalid(format!(
                "device {}: slots must be a whole number above 0, not '{text}'",
                self.name
            ))),
        }
    }

    /// Whether its slots can be read back: those of every driver but the
    /// command driver without a `status` command (whose switches are taken
    /// as done when their command succeeds).
    pub fn reads_back(&self) -> bool {
        self.driver != Driver::Command || self.option("status").is_some()
    }

    /// Checks that `slot` is one of this device's.
    pub fn check_slot(&self, slot: u32) -> Result<(), Error> {
        if slot == 0 {
            return Err(Error::Invalid(format!(
                "device {}: slot 0 is no slot (slots are numbered from 1)",
                self.name
            )));
        }
        match self.slots()? {
            Some(n) if slot > n => Err(Error::Invalid(format!(
                "device {} has {n} slots; there is no slot {slot}",
                self.name
            ))),
            _ => Ok(()),
        }
    }
}

/// A `<device>` of the lab that mama cannot use as it stands: one without
/// a name, with a driver mama does not know, or with the name of a device
/// before it. It stays in the lab as written (a lab is never unreadable
/// for it), and `device list` shows it with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenDevice {
    /// Its name; empty where it has none.
    pub name: String,
    /// Its driver as written; empty where it has none.
    pub driver: String,
    /// The options it has, as written, in order.
    pub options: Vec<(String, String)>,
    /// Why mama cannot use it.
    pub reason: String,
}

/// How a machine names a device: for an outlet (`pwr_dev`, `pwr_slot`)
/// or a relay (`rly_dev`, `rly_slot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Outlet,
    Relay,
}

impl Use {
    pub const fn as_str(self) -> &'static str {
        match self {
            Use::Outlet => "outlet",
            Use::Relay => "relay",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_are_checked_against_the_driver() {
        let err = Device::new("pdu1", Driver::Mpower, opts(&[])).unwrap_err();
        assert!(err.to_string().contains("needs --address"), "{err}");
        let err = Device::new(
            "pdu1",
            Driver::Mpower,
            opts(&[("address", "10.0.0.2"), ("on", "x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no option 'on'"), "{err}");
        let err = Device::new(
            "r",
            Driver::UsbRly08,
            opts(&[("port", "/dev/ttyACM0"), ("hold", "-1")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("hold must be"), "{err}");
        let ok = Device::new(
            "r",
            Driver::UsbRly08,
            opts(&[("port", "/dev/ttyACM0"), ("hold", "0.5"), ("slots", "8")]),
        )
        .unwrap();
        assert_eq!(ok.hold().unwrap(), Duration::from_millis(500));
        assert_eq!(ok.press().unwrap(), Duration::from_secs(1));
        assert!(ok.check_slot(9).is_err());
        assert!(ok.check_slot(0).is_err());
        ok.check_slot(8).unwrap();
        assert!(Device::new("all", Driver::Command, opts(&[("on", "a"), ("off", "b")])).is_err());
    }

    #[test]
    fn only_a_command_device_without_status_cannot_be_read_back() {
        let plain = Device::new("c", Driver::Command, opts(&[("on", "a"), ("off", "b")])).unwrap();
        assert!(!plain.reads_back());
        let status = opts(&[("on", "a"), ("off", "b"), ("status", "c")]);
        assert!(
            Device::new("c", Driver::Command, status)
                .unwrap()
                .reads_back()
        );
        let bar = Device::new("p", Driver::Mpower, opts(&[("address", "pdu1")])).unwrap();
        assert!(bar.reads_back());
    }
}
