//! vhost-user-iommu: a virtio-iommu device (virtio ID 23) served to one VM over vhost-user.
//!
//! The device model lives in its own crate (`vhost-user-iommu-model`, `daemon/model`); this
//! crate serves it. docs/ARCHITECTURE.md has the threads, locks and flows. The layers:
//!
//! - [`transport`]: vhost-user: the virtqueues, the backend trait of `vhost-user-backend`,
//!   device state transfer (live migration);
//! - [`host`]: host backends behind the model's `HostBackend` trait (iommufd) and the fd
//!   hand-over from a launcher;
//! - [`journal`]: the restart journal (`--state-dir`), the model's state written to files;
//! - [`control`]: the inspection socket and its invalidation subscribers;
//! - [`os`]: per-thread seccomp filters, the worker's CPU policy, unix socket binding;
//! - [`proxy`]: keeps the VMM's connection across a restart of the daemon and replays its
//!   set-up into the new process;
//! - [`service`]: the process: settings (options and config file), sockets and connection
//!   lifecycle, systemd activation, privilege drop, unit generation.

pub mod control;
pub mod host;
pub mod journal;
pub mod os;
pub mod proxy;
pub mod service;
pub mod transport;
