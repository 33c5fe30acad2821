//! VMM-side glue for the vhost-user-iommu daemon.
//!
//! A VMM that attaches the daemon as a generic vhost-user device (virtio ID 23) must tell the
//! guest which PCI endpoints sit behind that virtio-iommu. On ACPI platforms this is the VIOT
//! table. This crate builds it ([`viot`]), parses the PCI addresses and ranges users type
//! ([`pci`]), and renders the QEMU command-line fragment that wires everything up ([`qemu`]).
//!
//! [`launch`] runs a QEMU VM with VFIO passthrough devices translated by the daemon: it opens
//! the host devices, starts the daemon, hands it the fds and starts QEMU with the same fds.
//!
//! A Rust VMM embedding the device itself uses the library side: [`frontend`] (the vhost-user
//! frontend: negotiation, feature and config pass-through, memory table, vrings), [`fdt`] (the
//! device-tree nodes for device-tree guests) and [`translate`] (IOVA translation with an
//! invalidated cache for the VMM's own emulated devices). docs/VMM-INTEGRATION.md shows how.

pub mod fdt;
pub mod frontend;
pub mod launch;
pub mod pci;
pub mod qemu;
pub mod translate;
pub mod viot;
