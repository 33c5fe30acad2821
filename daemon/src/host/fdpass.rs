//! The fd hand-over (docs/IOMMUFD.md, "fd hand-over protocol"): the wire format and both sides
//! live in the `vhost-user-iommu-fdpass` crate, shared with the launchers that send.

pub use fdpass::*;
