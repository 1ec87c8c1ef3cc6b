//! stub
use crate::error::{Error, Result};
use crate::model::device::Device;
use std::time::Duration;
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub on: bool,
    pub watts: Option<f64>,
    pub volts: Option<f64>,
    pub amps: Option<f64>,
}
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub machine: Option<String>,
    pub mac: Option<String>,
    pub ip: Option<String>,
}
pub trait Switch: Send {
    fn set(&mut self, slot: u32, on: bool) -> Result<()>;
    fn read(&mut self, slot: u32) -> Result<Reading>;
}
pub fn open(_device: &Device, _context: &Context) -> Result<Box<dyn Switch>> {
    Err(Error::Invalid("stub".into()))
}
pub fn press(switch: &mut dyn Switch, slot: u32, how_long: Duration) -> Result<()> {
    switch.set(slot, true)?;
    std::thread::sleep(how_long);
    switch.set(slot, false)
}
