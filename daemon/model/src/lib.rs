//! The virtio-iommu device model of vhost-user-iommu: bytes of a request in, a status out.
//!
//! Nothing here opens a file or a socket or knows vhost-user: the daemon
//! (`vhost-user-iommu`) wires the model to its transport, its journal and its host backend. The
//! layers, bottom up (a module only uses the ones above it in this list):
//!
//! - [`protocol`]: the wire format of requests, events and the config space;
//! - [`config`]: the device's configuration (ranges, page sizes, endpoints, reserved regions);
//! - [`mapping`]: per-domain mapping storage;
//! - [`guest_tables`]: guest-owned tables of the PASID extension: decoding a binding, walking it
//!   with its IOTLB and context caches, INVALIDATE, the PROBE properties;
//! - [`host`]: the host backend interface and the software backend, which has no host
//!   objects (the model's own tables are its IOMMU);
//! - [`device`]: the device: request handling, translation, events, the state stream;
//! - [`queue`]: one request chain of the request queue, parsed, executed and answered.

pub mod config;
pub mod device;
pub mod guest_tables;
pub mod host;
pub mod mapping;
pub mod protocol;
pub mod queue;
