//! The model: rules, settings, countries and the formats every view shares. The bottom layer:
//! it imports nothing from the rest of the crate.

pub mod country;
pub mod customers;
pub mod limits;
pub mod reply;
pub mod rules;
pub mod settings;
pub mod time;
