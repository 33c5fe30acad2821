//! The process around the device: settings, sockets and connections, systemd, privileges.
//!
//! - [`settings`]: command-line options and the TOML config file, merged and validated;
//! - [`server`]: the sockets, one frontend connection at a time, signals;
//! - [`activation`]: systemd socket activation, readiness, watchdog;
//! - [`privilege`]: dropping privileges once the sockets are open;
//! - [`unit`]: the systemd drop-in a configuration needs.

pub mod activation;
pub mod privilege;
pub mod server;
pub mod settings;
pub mod unit;
