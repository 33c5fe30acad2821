//! End-to-end test harness for the `vhost-user-iommu` daemon.
//!
//! Everything here is written from the virtio-iommu specification, independently of the
//! daemon's own code: a memfd-backed guest memory, the driver side of a split virtqueue, a
//! vhost-user frontend session built on `vhost::vhost_user::Frontend`, encoders and decoders
//! for every virtio-iommu request and the fault record, a control-socket client, and a
//! spawner that runs the real daemon binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod control;
pub mod daemon;
pub mod device;
pub mod mem;
pub mod proto;
pub mod virtq;

pub use control::Control;
pub use daemon::Daemon;
pub use device::{Device, Options, Request, Response};
pub use mem::GuestMemory;
pub use virtq::{Desc, SplitQueue};
