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

// --- The PASID / shared-table extension (docs/PASID.md) ---------------------------------

/// Feature bits of the extension.
pub const F_ATTACH_TABLE: u32 = 8;
pub const F_PAGE_REQUEST: u32 = 10;

/// Request types of the extension.
pub const T_ATTACH_TABLE: u8 = 6;
pub const T_INVALIDATE: u8 = 7;
pub const T_PAGE_RESP: u8 = 8;
pub const T_DETACH_TABLE: u8 = 9;
pub const T_ATTACH_PASID: u8 = 10;
pub const T_DETACH_PASID: u8 = 11;

/// Table formats.
pub const FMT_ARM_VMSA_S1: u16 = 1;
pub const FMT_ARM_SMMUV3: u16 = 2;
pub const FMT_INTEL_VTD_S1: u16 = 4;
/// PAGE_TABLE_FMT caps of INTEL_VTD_S1: 1 GiB pages (bit 0/1: 4/5 levels, 8 SRE, 9 EAFE, 10 WPE).
pub const VTD_CAP_1G: u32 = 1 << 2;

/// INVALIDATE scopes, caches and flags.
pub const INV_SCOPE_DOMAIN: u16 = 1;
pub const INV_SCOPE_PASID: u16 = 2;
pub const INV_SCOPE_ADDRESS: u16 = 4;
pub const INV_CACHE_IOTLB: u16 = 1 << 0;
pub const INV_CACHE_DEV_IOTLB: u16 = 1 << 1;
pub const INV_CACHE_PASID: u16 = 1 << 2;
pub const INV_F_PASID: u16 = 1 << 0;
pub const INV_F_ARCHID: u16 = 1 << 1;
pub const INV_F_LEAF: u16 = 1 << 2;

/// Event reasons and flags added by the extension.
pub const FAULT_R_PAGE_REQUEST: u8 = 3;
pub const FAULT_F_EXEC: u32 = 1 << 2;
pub const FAULT_F_PRIV: u32 = 1 << 3;
pub const FAULT_F_PASID_VALID: u32 = 1 << 9;
pub const FAULT_F_LAST: u32 = 1 << 10;
pub const PAGE_REQUEST_RECORD_SIZE: usize = 32;

/// PAGE_RESP codes and flags.
pub const PAGE_RESP_SUCCESS: u16 = 0;
pub const PAGE_RESP_INVALID: u16 = 1;
pub const PAGE_RESP_FAILURE: u16 = 2;
pub const PAGE_RESP_F_PASID_VALID: u16 = 1 << 0;

/// PROBE properties of the extension.
pub const PROBE_T_OUTPUT_SIZE: u16 = 4;
pub const PROBE_T_PASID_SIZE: u16 = 5;
pub const PROBE_T_PAGE_TABLE_FMT: u16 = 6;
pub const PROBE_T_PASID_TABLE_FMT: u16 = 7;
pub const PROBE_T_HOST_IOMMU: u16 = 8;
pub const PROBE_T_PAGE_REQUEST: u16 = 9;

/// ATTACH_TABLE body (after the head): 64 bytes, tail at 68 (a 72-byte request: the C struct
/// with the descriptors' 64-bit fields naturally aligned).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AttachTableBody {
    pub domain: U32,
    pub format: U16,
    pub flags: U16,
    pub reserved: [u8; 4],
    pub desc: [u8; 48],
    pub reserved2: [u8; 4],
}

/// DETACH_TABLE body: tail at 16.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DetachTableBody {
    pub domain: U32,
    pub reserved: [u8; 8],
}

/// ATTACH_PASID / DETACH_PASID body: tail at 24.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PasidAttachBody {
    pub domain: U32,
    pub endpoint: U32,
    pub pasid: U32,
    pub reserved: [u8; 8],
}

/// INVALIDATE body (offsets as in docs/PASID.md, from the start of the request): tail at 60, as in the drafts.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InvalidateBody {
    pub scope: U16,
    pub caches: U16,
    pub flags: U16,
    pub reserved0: [u8; 2],
    pub domain: U32,
    pub pasid: U32,
    pub reserved1: [u8; 4],
    pub archid: U64,
    pub virt_start: U64,
    pub nr_pages: U64,
    pub granule: u8,
    pub reserved2: [u8; 11],
}

/// PAGE_RESP body: tail at 32.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PageRespBody {
    pub endpoint: U32,
    pub pasid: U32,
    pub grpid: U32,
    pub code: U16,
    pub flags: U16,
    pub reserved: [u8; 12],
}

/// A page-request record on the event queue (32 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PageRequestRecord {
    pub reason: u8,
    pub reserved: [u8; 3],
    pub flags: U32,
    pub endpoint: U32,
    pub pasid: U32,
    pub address: U64,
    pub grpid: U32,
    pub reserved2: [u8; 4],
}

/// The most bytes the device's PROBE properties take (`guest_tables::probe_properties`: the
/// software set, with an SMMUv3 host's 32 bytes of registers in HOST_IOMMU); the smallest
/// probe size the configuration accepts.
pub const PROBE_PROPERTIES_SIZE: usize =
    (4 + 4) * 2 + (4 + 12) * 2 + (4 + 12) + (4 + 4 + 32) + (4 + 4);

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
        // The extension's requests (docs/PASID.md).
        assert_eq!(HEAD_SIZE + size_of::<AttachTableBody>() + TAIL_SIZE, 72);
        assert_eq!(HEAD_SIZE + size_of::<DetachTableBody>(), 16);
        assert_eq!(HEAD_SIZE + size_of::<PasidAttachBody>(), 24);
        assert_eq!(HEAD_SIZE + size_of::<InvalidateBody>() + TAIL_SIZE, 64);
        assert_eq!(HEAD_SIZE + size_of::<PageRespBody>(), 32);
        assert_eq!(size_of::<PageRequestRecord>(), PAGE_REQUEST_RECORD_SIZE);
    }

    #[test]
    fn invalidate_offsets_match_the_draft() {
        let b = InvalidateBody {
            scope: U16::new(0x0201),
            caches: U16::new(0x0403),
            flags: U16::new(0x0605),
            reserved0: [0; 2],
            domain: U32::new(0x0c0b0a09),
            pasid: U32::new(0x100f0e0d),
            reserved1: [0; 4],
            archid: U64::new(0x18),
            virt_start: U64::new(0x20),
            nr_pages: U64::new(0x28),
            granule: 0x30,
            reserved2: [0; 11],
        };
        let mut req = vec![T_INVALIDATE, 0, 0, 0];
        req.extend_from_slice(b.as_bytes());
        assert_eq!(req[4], 1); // scope @4
        assert_eq!(req[6], 3); // caches @6
        assert_eq!(req[8], 5); // flags @8
        assert_eq!(req[12], 9); // domain @12
        assert_eq!(req[16], 0x0d); // pasid @16
        assert_eq!(req[24], 0x18); // archid @24
        assert_eq!(req[32], 0x20); // virt_start @32
        assert_eq!(req[40], 0x28); // nr_pages @40
        assert_eq!(req[48], 0x30); // granule @48
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
