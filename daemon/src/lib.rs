//! vhost-user-iommu: a virtio-iommu device (virtio ID 23) served to one VM over vhost-user.
//!
//! - [`protocol`]: the wire format of requests, events and the config space;
//! - [`device`]: the device model and the software backend (`translate`);
//! - [`mapping`]: per-domain mapping storage;
//! - [`migration`]: device state transfer over vhost-user (live migration);
//! - [`backend`]: host backends (software, iommufd) and the fd hand-over protocol;
//! - [`vhost`]: virtqueue processing and the vhost-user backend;
//! - [`control`]: the inspection socket;
//! - [`server`]: sockets, connection lifecycle, signals;
//! - [`config_file`]: the TOML configuration file;
//! - [`activation`]: systemd socket activation, readiness, watchdog;
//! - [`privilege`], [`sandbox`]: dropping privileges and per-thread seccomp filters.

pub mod activation;
pub mod backend;
pub mod config;
pub mod config_file;
pub mod control;
pub mod device;
pub mod invalidation;
pub mod journal;
pub mod mapping;
pub mod migration;
pub mod privilege;
pub mod protocol;
pub mod sandbox;
pub mod sched;
pub mod server;
pub mod tables;
pub mod unit;
pub mod vhost;
