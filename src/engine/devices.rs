//! The lab's power devices as people manage them: defining one, removing
//! one that no machine names, and what the lab says of each (the machines
//! that name it, why it cannot be used). The model checks a device's
//! options ([`crate::model::device`]); speaking to a device is not here.

use crate::backend::Store;
use crate::error::{Error, Result};
use crate::model::device::{Device, Use};
use crate::model::event::{Event, Kind};
use crate::model::field::Field;
use crate::model::{Lab, Machine};

/// `device add`: defines `device` (checked by [`Device::new`]) after the
/// lab's last device, in one transaction, recording a `device_added`
/// event (its detail: the driver). A name taken is refused.
pub fn add(store: &Store, device: &Device) -> Result<()> {
    store.update(|lab| {
        lab.add_device(device.clone())?;
        lab.record(Event::new(Kind::DeviceAdded, &device.name).detail(device.driver.name()));
        Ok(())
    })
}

/// `device delete`: removes the device `name` (a broken one too), in one
/// transaction, recording a `device_deleted` event; refused while a
/// machine names it, naming those that do.
pub fn delete(store: &Store, name: &str) -> Result<()> {
    store.update(|lab| {
        let driver = match lab.device(name) {
            Ok(device) => Some(device.driver.name().to_string()),
            Err(_) => lab
                .broken_devices()
                .find(|b| b.name == name)
                .map(|b| b.driver.clone()),
        };
        lab.remove_device(name)?;
        let event = Event::new(Kind::DeviceDeleted, name);
        lab.record(match driver.filter(|d| !d.is_empty()) {
            Some(driver) => event.detail(driver),
            None => event,
        });
        Ok(())
    })
}

/// A machine that names a device, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub machine: String,
    pub used_as: Use,
    /// The slot it gives, as written.
    pub slot: String,
}

/// One device of the lab as `device list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Empty for a `<device>` without a name.
    pub name: String,
    /// As written (a broken device's may be one mama does not know).
    pub driver: String,
    /// As written, in order.
    pub options: Vec<(String, String)>,
    /// How many slots it has, where the lab says (and says it right).
    pub slots: Option<u32>,
    pub users: Vec<User>,
    /// Why mama cannot use it, if it cannot.
    pub broken: Option<String>,
}

/// Every device of the lab, with the machines that name it: those mama can
/// read first, in their order (one whose options its driver refuses is
/// broken, with the reason), then those it cannot.
pub fn listing(lab: &Lab) -> Vec<Listed> {
    let users = |name: &str| -> Vec<User> {
        if name.is_empty() {
            return Vec::new();
        }
        lab.device_users(name)
            .into_iter()
            .map(|(machine, used_as, slot)| User {
                machine: machine.name().to_string(),
                used_as,
                slot: slot.to_string(),
            })
            .collect()
    };
    let usable = lab.devices().map(|device| Listed {
        name: device.name.clone(),
        driver: device.driver.name().to_string(),
        options: device.options().to_vec(),
        slots: device.slots().ok().flatten(),
        users: users(&device.name),
        broken: device.check().err().map(|e| reason(&e)),
    });
    let broken = lab.broken_devices().map(|device| Listed {
        name: device.name.clone(),
        driver: device.driver.clone(),
        options: device.options.clone(),
        slots: None,
        users: users(&device.name),
        broken: Some(device.reason.clone()),
    });
    usable.chain(broken).collect()
}

/// An error's message without the `device NAME: ` it starts with (the
/// listing names the device already).
fn reason(e: &Error) -> String {
    let text = e.to_string();
    match text
        .strip_prefix("device ")
        .and_then(|t| t.split_once(": "))
    {
        Some((_, rest)) => rest.to_string(),
        None => text,
    }
}

/// The device a machine names for an outlet or a relay, as `info` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    /// The slot the machine gives, as written.
    pub slot: String,
    /// The device's driver, where the lab defines the device.
    pub driver: Option<&'static str>,
    /// What is wrong with the device, where something is: not defined, or
    /// broken.
    pub problem: Option<String>,
}

/// The device `machine` names as `used_as` (`pwr_dev` and `pwr_slot`, or
/// `rly_dev` and `rly_slot`); `None` where it names none.
pub fn named_by(lab: &Lab, machine: &Machine, used_as: Use) -> Option<Named> {
    let (dev, slot) = match used_as {
        Use::Outlet => (Field::PwrDev, Field::PwrSlot),
        Use::Relay => (Field::RlyDev, Field::RlySlot),
    };
    let name = machine.get(dev);
    if name.trim().is_empty() {
        return None;
    }
    let device = lab.device(name);
    let problem = match &device {
        Ok(device) => device
            .check()
            .err()
            .map(|e| format!("broken: {}", reason(&e))),
        Err(_) => Some(match lab.broken_devices().find(|b| b.name == name) {
            Some(broken) => format!("broken: {}", broken.reason),
            None => "no such device in the lab".to_string(),
        }),
    };
    Some(Named {
        name: name.to_string(),
        slot: machine.get(slot).trim().to_string(),
        driver: device.ok().map(|d| d.driver.name()),
        problem,
    })
}
