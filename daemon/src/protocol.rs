//! The virtio-iommu wire format (virtio 1.2+, device type 23).
//!
//! Every structure is little-endian and laid out exactly as the specification writes it. The
//! structs derive zerocopy traits so that a request is parsed by a checked cast of the bytes the
//! driver supplied, never by pointer arithmetic.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// virtio device id of the IOMMU.
pub const VIRTIO_ID_IOMMU: u32 = 23;

/// Queue indices.
pub const REQUEST_QUEUE: u16 = 0;
pub const EVENT_QUEUE: u16 = 1;
pub const NUM_QUEUES: usize = 2;

/// Feature bits.
pub const F_INPUT_RANGE: u32 = 0;
pub const F_DOMAIN_RANGE: u32 = 1;
pub const F_MAP_UNMAP: u32 = 2;
pub const F_BYPASS: u32 = 3;
pub const F_PROBE: u32 = 4;
pub const F_MMIO: u32 = 5;
pub const F_BYPASS_CONFIG: u32 = 6;
pub const F_VERSION_1: u32 = 32;

/// Request types.
pub const T_ATTACH: u8 = 1;
pub const T_DETACH: u8 = 2;
pub const T_MAP: u8 = 3;
pub const T_UNMAP: u8 = 4;
pub const T_PROBE: u8 = 5;

/// ATTACH flags.
pub const ATTACH_F_BYPASS: u32 = 1 << 0;

/// MAP flags.
pub const MAP_F_READ: u32 = 1 << 0;
pub const MAP_F_WRITE: u32 = 1 << 1;
pub const MAP_F_MMIO: u32 = 1 << 2;

/// PROBE property types and RESV_MEM subtypes.
pub const PROBE_T_NONE: u16 = 0;
pub const PROBE_T_RESV_MEM: u16 = 1;
pub const PROBE_T_MASK: u16 = 0xfff;
pub const RESV_MEM_T_RESERVED: u8 = 0;
pub const RESV_MEM_T_MSI: u8 = 1;

/// Fault reasons and flags of an event record.
pub const FAULT_R_UNKNOWN: u8 = 0;
pub const FAULT_R_DOMAIN: u8 = 1;
pub const FAULT_R_MAPPING: u8 = 2;
pub const FAULT_F_READ: u32 = 1 << 0;
pub const FAULT_F_WRITE: u32 = 1 << 1;
pub const FAULT_F_ADDRESS: u32 = 1 << 8;

/// Request status codes, written to the tail of every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    IoErr = 1,
    Unsupp = 2,
    DevErr = 3,
    Inval = 4,
    Range = 5,
    NoEnt = 6,
    Fault = 7,
    NoMem = 8,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::IoErr,
        Status::Unsupp,
        Status::DevErr,
        Status::Inval,
        Status::Range,
        Status::NoEnt,
        Status::Fault,
        Status::NoMem,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::IoErr => "ioerr",
            Status::Unsupp => "unsupp",
            Status::DevErr => "deverr",
            Status::Inval => "inval",
            Status::Range => "range",
            Status::NoEnt => "noent",
            Status::Fault => "fault",
            Status::NoMem => "nomem",
        }
    }
}

/// Request head: `{u8 type; u8 reserved[3]}`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ReqHead {
    pub type_: u8,
    pub reserved: [u8; 3],
}

/// Request tail: `{u8 status; u8 reserved[3]}`, always the last 4 bytes of a buffer.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ReqTail {
    pub status: u8,
    pub reserved: [u8; 3],
}

pub const HEAD_SIZE: usize = 4;
pub const TAIL_SIZE: usize = 4;

/// ATTACH body (after the head).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AttachBody {
    pub domain: U32,
    pub endpoint: U32,
    pub flags: U32,
    pub reserved: [u8; 4],
}

/// DETACH body (after the head).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DetachBody {
    pub domain: U32,
    pub endpoint: U32,
    pub reserved: [u8; 8],
}

/// MAP body (after the head).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MapBody {
    pub domain: U32,
    pub virt_start: U64,
    pub virt_end: U64,
    pub phys_start: U64,
    pub flags: U32,
}

/// UNMAP body (after the head).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct UnmapBody {
    pub domain: U32,
    pub virt_start: U64,
    pub virt_end: U64,
    pub reserved: [u8; 4],
}

/// PROBE body (after the head). The device-writable properties follow the request.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ProbeBody {
    pub endpoint: U32,
    pub reserved: [u8; 64],
}

/// A PROBE property header.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ProbePropHead {
    pub type_: U16,
    pub length: U16,
}

/// The RESV_MEM property, header included (24 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ProbeResvMem {
    pub head: ProbePropHead,
    pub subtype: u8,
    pub reserved: [u8; 3],
    pub start: U64,
    pub end: U64,
}

/// An event-queue fault record (24 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FaultRecord {
    pub reason: u8,
    pub reserved: [u8; 3],
    pub flags: U32,
    pub endpoint: U32,
    pub reserved2: [u8; 4],
    pub address: U64,
}

pub const FAULT_RECORD_SIZE: usize = 24;

/// The device configuration space (40 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ConfigSpace {
    pub page_size_mask: U64,
    pub input_start: U64,
    pub input_end: U64,
    pub domain_start: U32,
    pub domain_end: U32,
    pub probe_size: U32,
    pub bypass: u8,
    pub reserved: [u8; 3],
}

pub const CONFIG_SIZE: usize = 40;
/// Offset of the driver-writable `bypass` byte.
pub const CONFIG_BYPASS_OFFSET: usize = 36;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layouts_match_the_specification() {
        assert_eq!(size_of::<ReqHead>(), 4);
        assert_eq!(size_of::<ReqTail>(), 4);
        // Whole requests: head + body + tail.
        assert_eq!(HEAD_SIZE + size_of::<AttachBody>() + TAIL_SIZE, 24);
        assert_eq!(HEAD_SIZE + size_of::<DetachBody>() + TAIL_SIZE, 24);
        assert_eq!(HEAD_SIZE + size_of::<MapBody>() + TAIL_SIZE, 40);
        assert_eq!(HEAD_SIZE + size_of::<UnmapBody>() + TAIL_SIZE, 32);
        assert_eq!(HEAD_SIZE + size_of::<ProbeBody>(), 72);
        assert_eq!(size_of::<ProbeResvMem>(), 24);
        assert_eq!(size_of::<FaultRecord>(), FAULT_RECORD_SIZE);
        assert_eq!(size_of::<ConfigSpace>(), CONFIG_SIZE);
    }

    #[test]
    fn config_offsets() {
        let cfg = ConfigSpace {
            page_size_mask: U64::new(0x1122_3344_5566_7788),
            input_start: U64::new(1),
            input_end: U64::new(2),
            domain_start: U32::new(3),
            domain_end: U32::new(4),
            probe_size: U32::new(5),
            bypass: 1,
            reserved: [0; 3],
        };
        let b = cfg.as_bytes();
        assert_eq!(b[0], 0x88);
        assert_eq!(b[8], 1);
        assert_eq!(b[16], 2);
        assert_eq!(b[24], 3);
        assert_eq!(b[28], 4);
        assert_eq!(b[32], 5);
        assert_eq!(b[CONFIG_BYPASS_OFFSET], 1);
    }
}
