//! VMM-side glue for the vhost-user-iommu daemon.
//!
//! A VMM that attaches the daemon as a generic vhost-user device (virtio ID 23) must tell the
//! guest which PCI endpoints sit behind that virtio-iommu. On ACPI platforms this is the VIOT
//! table. This crate builds it ([`viot`]), parses the PCI addresses and ranges users type
//! ([`pci`]), and renders the QEMU command-line fragment that wires everything up ([`qemu`]).

pub mod pci;
pub mod qemu;
pub mod viot;
