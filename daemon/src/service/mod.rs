//! The process around the device: settings, sockets and connections, systemd, privileges,
//! seccomp, scheduling.
//!
//! - [`settings`]: command-line options and the TOML config file, merged and validated;
//! - [`server`]: the sockets, one frontend connection at a time, signals;
//! - [`activation`]: systemd socket activation, readiness, watchdog;
//! - [`privilege`], [`sandbox`]: dropping privileges and per-thread seccomp filters;
//! - [`sched`]: the request-queue worker's CPU policy;
//! - [`unit`]: the systemd drop-in a configuration needs.

pub mod activation;
pub mod privilege;
pub mod sandbox;
pub mod sched;
pub mod server;
pub mod settings;
pub mod unit;
