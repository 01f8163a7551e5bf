//! Rampart's server: the all-in-one process (gateway listeners, API, and as
//! they land event store, enrollment and agent configuration), its
//! configuration file and its lifecycle (signals, reload, drain).

pub mod api;
pub mod config;
pub mod console;
pub mod demo;
pub mod devices;
pub mod fleet;
pub mod isolation;
pub mod pid_file;
pub mod reload;
pub mod run;
pub mod sink_metrics;

pub use config::{Overrides, RampartConfig};
pub use run::{run, Role};
