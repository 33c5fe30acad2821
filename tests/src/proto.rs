//! virtio-iommu wire formats (virtio spec, device type 23), written from the specification.
//!
//! All fields are little-endian. Every request starts with `{u8 type; u8 reserved[3]}` and ends
//! with a device-writable `{u8 status; u8 reserved[3]}` tail.

/// Feature bits.
pub mod feature {
    /// INPUT_RANGE.
    pub const INPUT_RANGE: u64 = 1 << 0;
    /// DOMAIN_RANGE.
    pub const DOMAIN_RANGE: u64 = 1 << 1;
    /// MAP_UNMAP.
    pub const MAP_UNMAP: u64 = 1 << 2;
    /// Legacy BYPASS.
    pub const BYPASS: u64 = 1 << 3;
    /// PROBE.
    pub const PROBE: u64 = 1 << 4;
    /// MMIO.
    pub const MMIO: u64 = 1 << 5;
    /// BYPASS_CONFIG.
    pub const BYPASS_CONFIG: u64 = 1 << 6;
    /// VIRTIO_F_RING_INDIRECT_DESC.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_F_RING_EVENT_IDX.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u64 = 1 << 32;
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// The standard set a modern driver acks (everything but legacy BYPASS).
    pub const MODERN: u64 =
        VERSION_1 | INPUT_RANGE | DOMAIN_RANGE | MAP_UNMAP | PROBE | MMIO | BYPASS_CONFIG;
}

/// Request types.
pub mod req {
    /// ATTACH.
    pub const ATTACH: u8 = 1;
    /// DETACH.
    pub const DETACH: u8 = 2;
    /// MAP.
    pub const MAP: u8 = 3;
    /// UNMAP.
    pub const UNMAP: u8 = 4;
    /// PROBE.
    pub const PROBE: u8 = 5;
    /// ATTACH_TABLE (PASID extension, docs/PASID.md).
    pub const ATTACH_TABLE: u8 = 6;
    /// INVALIDATE (PASID extension).
    pub const INVALIDATE: u8 = 7;
    /// PAGE_RESP (PASID extension).
    pub const PAGE_RESP: u8 = 8;
    /// DETACH_TABLE (PASID extension).
    pub const DETACH_TABLE: u8 = 9;
    /// ATTACH_PASID (PASID extension).
    pub const ATTACH_PASID: u8 = 10;
    /// DETACH_PASID (PASID extension).
    pub const DETACH_PASID: u8 = 11;
}

/// ATTACH_TABLE formats (docs/PASID.md §3).
pub mod table_format {
    /// One VMSAv8-64 stage-1 translation regime.
    pub const ARM_VMSA_S1: u16 = 1;
    /// An SMMUv3 context-descriptor table.
    pub const ARM_SMMUV3: u16 = 2;
    /// One VT-d first-stage page table.
    pub const INTEL_VTD_S1: u16 = 4;
}

/// INVALIDATE scopes, caches and flags (docs/PASID.md §4.3).
pub mod inv {
    /// Scope DOMAIN.
    pub const SCOPE_DOMAIN: u16 = 1;
    /// Scope PASID.
    pub const SCOPE_PASID: u16 = 2;
    /// Scope ADDRESS.
    pub const SCOPE_ADDRESS: u16 = 4;
    /// Cache IOTLB (walks and translations).
    pub const CACHE_IOTLB: u16 = 1 << 0;
    /// Cache DEV_IOTLB (the endpoint's ATC).
    pub const CACHE_DEV_IOTLB: u16 = 1 << 1;
    /// Cache PASID (CDs / PASID-table entries).
    pub const CACHE_PASID: u16 = 1 << 2;
    /// Flag PASID: field `pasid` is valid.
    pub const FLAG_PASID: u16 = 1 << 0;
    /// Flag ARCHID: field `archid` is valid.
    pub const FLAG_ARCHID: u16 = 1 << 1;
    /// Flag LEAF: only leaf entries changed.
    pub const FLAG_LEAF: u16 = 1 << 2;
}

/// Status codes.
pub mod status {
    /// OK.
    pub const OK: u8 = 0;
    /// IOERR.
    pub const IOERR: u8 = 1;
    /// UNSUPP.
    pub const UNSUPP: u8 = 2;
    /// DEVERR.
    pub const DEVERR: u8 = 3;
    /// INVAL.
    pub const INVAL: u8 = 4;
    /// RANGE.
    pub const RANGE: u8 = 5;
    /// NOENT.
    pub const NOENT: u8 = 6;
    /// FAULT.
    pub const FAULT: u8 = 7;
    /// NOMEM.
    pub const NOMEM: u8 = 8;

    /// Human-readable name of a status byte.
    pub fn name(s: u8) -> &'static str {
        match s {
            OK => "OK",
            IOERR => "IOERR",
            UNSUPP => "UNSUPP",
            DEVERR => "DEVERR",
            INVAL => "INVAL",
            RANGE => "RANGE",
            NOENT => "NOENT",
            FAULT => "FAULT",
            NOMEM => "NOMEM",
            _ => "unknown",
        }
    }
}

/// ATTACH flag: the domain is a bypass (identity) domain.
pub const ATTACH_F_BYPASS: u32 = 1 << 0;
/// MAP flag READ.
pub const MAP_F_READ: u32 = 1 << 0;
/// MAP flag WRITE.
pub const MAP_F_WRITE: u32 = 1 << 1;
/// MAP flag MMIO.
pub const MAP_F_MMIO: u32 = 1 << 2;

/// Size of the device-writable tail.
pub const TAIL_LEN: usize = 4;

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn head(ty: u8, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[0] = ty;
    b
}

/// Device-readable part of ATTACH (20 bytes).
pub fn attach(domain: u32, endpoint: u32, flags: u32) -> Vec<u8> {
    let mut b = head(req::ATTACH, 20);
    put_u32(&mut b, 4, domain);
    put_u32(&mut b, 8, endpoint);
    put_u32(&mut b, 12, flags);
    b
}

/// Device-readable part of DETACH (20 bytes).
pub fn detach(domain: u32, endpoint: u32) -> Vec<u8> {
    let mut b = head(req::DETACH, 20);
    put_u32(&mut b, 4, domain);
    put_u32(&mut b, 8, endpoint);
    b
}

/// Device-readable part of MAP (36 bytes); `virt_end` is inclusive.
pub fn map(domain: u32, virt_start: u64, virt_end: u64, phys_start: u64, flags: u32) -> Vec<u8> {
    let mut b = head(req::MAP, 36);
    put_u32(&mut b, 4, domain);
    put_u64(&mut b, 8, virt_start);
    put_u64(&mut b, 16, virt_end);
    put_u64(&mut b, 24, phys_start);
    put_u32(&mut b, 32, flags);
    b
}

/// Device-readable part of UNMAP (28 bytes); `virt_end` is inclusive.
pub fn unmap(domain: u32, virt_start: u64, virt_end: u64) -> Vec<u8> {
    let mut b = head(req::UNMAP, 28);
    put_u32(&mut b, 4, domain);
    put_u64(&mut b, 8, virt_start);
    put_u64(&mut b, 16, virt_end);
    b
}

/// Device-readable part of PROBE (72 bytes); the writable part is `probe_size + 4`.
pub fn probe(endpoint: u32) -> Vec<u8> {
    let mut b = head(req::PROBE, 72);
    put_u32(&mut b, 4, endpoint);
    b
}

/// Device-readable part of PAGE_RESP (32 bytes): the answer `code` to page-request group
/// `grpid` of `endpoint`, for `pasid` when the request carried one.
pub fn page_resp(endpoint: u32, pasid: Option<u32>, grpid: u32, code: u16) -> Vec<u8> {
    let mut b = head(req::PAGE_RESP, 32);
    put_u32(&mut b, 4, endpoint);
    put_u32(&mut b, 8, pasid.unwrap_or(0));
    put_u32(&mut b, 12, grpid);
    b[16..18].copy_from_slice(&code.to_le_bytes());
    b[18..20].copy_from_slice(&u16::from(pasid.is_some()).to_le_bytes());
    b
}

/// Device-readable part of ATTACH_TABLE (68 bytes; the tail is at 68): `desc` is the format's
/// descriptor (at most 48 bytes, zero-padded).
pub fn attach_table(domain: u32, format: u16, desc: &[u8]) -> Vec<u8> {
    let mut b = head(req::ATTACH_TABLE, 68);
    put_u32(&mut b, 4, domain);
    b[8..10].copy_from_slice(&format.to_le_bytes());
    b[16..16 + desc.len()].copy_from_slice(desc);
    b
}

/// The ARM_SMMUV3 descriptor of ATTACH_TABLE: the CD table at `ptr` with 2^`cdmax` CDs.
pub fn smmuv3_desc(s1fmt: u8, s1dss: u8, ptr: u64, cdmax: u32) -> Vec<u8> {
    let mut d = vec![0u8; 16];
    d[0] = s1fmt;
    d[1] = s1dss;
    put_u32(&mut d, 4, cdmax);
    put_u64(&mut d, 8, ptr);
    d
}

/// The INTEL_VTD_S1 descriptor of ATTACH_TABLE: the first-stage root table at `pgd`.
pub fn vtd_s1_desc(addr_width: u32, pgd: u64, flags: u64) -> Vec<u8> {
    let mut d = vec![0u8; 24];
    put_u32(&mut d, 0, addr_width);
    put_u64(&mut d, 8, pgd);
    put_u64(&mut d, 16, flags);
    d
}

/// Device-readable part of DETACH_TABLE (16 bytes).
pub fn detach_table(domain: u32) -> Vec<u8> {
    let mut b = head(req::DETACH_TABLE, 16);
    put_u32(&mut b, 4, domain);
    b
}

/// The fields of an INVALIDATE request ([`inv`] has the scope, cache and flag bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Invalidate {
    /// One of `inv::SCOPE_*`.
    pub scope: u16,
    /// `inv::CACHE_*` bits.
    pub caches: u16,
    /// `inv::FLAG_*` bits.
    pub flags: u16,
    /// The domain.
    pub domain: u32,
    /// The PASID (with `inv::FLAG_PASID`).
    pub pasid: u32,
    /// The ASID (with `inv::FLAG_ARCHID`).
    pub archid: u64,
    /// First address (scope ADDRESS).
    pub virt_start: u64,
    /// Number of (1 << granule)-byte pages (scope ADDRESS).
    pub nr_pages: u64,
    /// log2 of the page size (scope ADDRESS).
    pub granule: u8,
}

/// Device-readable part of INVALIDATE (60 bytes; the tail is at 60).
pub fn invalidate(i: &Invalidate) -> Vec<u8> {
    let mut b = head(req::INVALIDATE, 60);
    b[4..6].copy_from_slice(&i.scope.to_le_bytes());
    b[6..8].copy_from_slice(&i.caches.to_le_bytes());
    b[8..10].copy_from_slice(&i.flags.to_le_bytes());
    put_u32(&mut b, 12, i.domain);
    put_u32(&mut b, 16, i.pasid);
    put_u64(&mut b, 24, i.archid);
    put_u64(&mut b, 32, i.virt_start);
    put_u64(&mut b, 40, i.nr_pages);
    b[48] = i.granule;
    b
}

/// Device-readable part of ATTACH_PASID (24 bytes).
pub fn attach_pasid(domain: u32, endpoint: u32, pasid: u32) -> Vec<u8> {
    pasid_pair(req::ATTACH_PASID, domain, endpoint, pasid)
}

/// Device-readable part of DETACH_PASID (24 bytes).
pub fn detach_pasid(domain: u32, endpoint: u32, pasid: u32) -> Vec<u8> {
    pasid_pair(req::DETACH_PASID, domain, endpoint, pasid)
}

fn pasid_pair(ty: u8, domain: u32, endpoint: u32, pasid: u32) -> Vec<u8> {
    let mut b = head(ty, 24);
    put_u32(&mut b, 4, domain);
    put_u32(&mut b, 8, endpoint);
    put_u32(&mut b, 12, pasid);
    b
}

/// The 40-byte configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Supported page sizes.
    pub page_size_mask: u64,
    /// First valid IOVA.
    pub input_start: u64,
    /// Last valid IOVA (inclusive).
    pub input_end: u64,
    /// First valid domain id.
    pub domain_start: u32,
    /// Last valid domain id (inclusive).
    pub domain_end: u32,
    /// Size of the PROBE properties buffer.
    pub probe_size: u32,
    /// Bypass unattached endpoints.
    pub bypass: u8,
    /// The three reserved bytes.
    pub reserved: [u8; 3],
}

/// Size of the config space.
pub const CONFIG_LEN: usize = 40;
/// Offset of `bypass` in the config space.
pub const CONFIG_BYPASS_OFFSET: u32 = 36;

impl Config {
    /// Decode the 40-byte config space.
    pub fn parse(b: &[u8]) -> Config {
        assert_eq!(b.len(), CONFIG_LEN, "config space must be 40 bytes");
        Config {
            page_size_mask: get_u64(b, 0),
            input_start: get_u64(b, 8),
            input_end: get_u64(b, 16),
            domain_start: get_u32(b, 24),
            domain_end: get_u32(b, 28),
            probe_size: get_u32(b, 32),
            bypass: b[36],
            reserved: [b[37], b[38], b[39]],
        }
    }
}

/// One PROBE property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// Property type (low 12 bits of the header's first field).
    pub ty: u16,
    /// The full 16-bit type field as written.
    pub raw_type: u16,
    /// Payload (header excluded), `length` bytes.
    pub data: Vec<u8>,
}

/// PROBE property type RESV_MEM.
pub const PROBE_T_RESV_MEM: u16 = 1;
/// RESV_MEM subtype RESERVED.
pub const RESV_MEM_T_RESERVED: u8 = 0;
/// RESV_MEM subtype MSI.
pub const RESV_MEM_T_MSI: u8 = 1;

/// A decoded RESV_MEM property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResvMem {
    /// Subtype (RESERVED=0, MSI=1).
    pub subtype: u8,
    /// The three reserved bytes after the subtype.
    pub reserved: [u8; 3],
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
}

impl Property {
    /// Decode as RESV_MEM if it is one with the right length.
    pub fn resv_mem(&self) -> Option<ResvMem> {
        if self.ty != PROBE_T_RESV_MEM || self.data.len() != 20 {
            return None;
        }
        let d = &self.data;
        Some(ResvMem {
            subtype: d[0],
            reserved: [d[1], d[2], d[3]],
            start: get_u64(d, 4),
            end: get_u64(d, 12),
        })
    }
}

/// Walk a properties buffer. Returns the properties before the end marker (type 0) and the
/// offset where the end marker (or the end of the buffer) was found.
pub fn parse_properties(buf: &[u8]) -> (Vec<Property>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= buf.len() {
        let raw_type = get_u16(buf, at);
        let ty = raw_type & 0xfff;
        if ty == 0 {
            return (out, at);
        }
        let len = usize::from(get_u16(buf, at + 2));
        assert!(
            at + 4 + len <= buf.len(),
            "property at {at} (type {ty}, length {len}) overruns the {}-byte buffer",
            buf.len()
        );
        out.push(Property {
            ty,
            raw_type,
            data: buf[at + 4..at + 4 + len].to_vec(),
        });
        at += 4 + len;
    }
    (out, at)
}

/// Fault reasons.
pub mod fault {
    /// UNKNOWN.
    pub const UNKNOWN: u8 = 0;
    /// DOMAIN: the endpoint is not attached (and not in bypass).
    pub const DOMAIN: u8 = 1;
    /// MAPPING: no mapping, or a permission mismatch.
    pub const MAPPING: u8 = 2;
    /// Flag: read access.
    pub const F_READ: u32 = 1 << 0;
    /// Flag: write access.
    pub const F_WRITE: u32 = 1 << 1;
    /// Flag: `address` is valid.
    pub const F_ADDRESS: u32 = 1 << 8;
}

/// Size of one event-queue fault record.
pub const FAULT_RECORD_LEN: usize = 24;

/// A decoded 24-byte fault record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRecord {
    /// Reason (`fault::*`).
    pub reason: u8,
    /// Reserved bytes 1..4.
    pub reserved0: [u8; 3],
    /// Flags (`fault::F_*`).
    pub flags: u32,
    /// Endpoint id.
    pub endpoint: u32,
    /// Reserved le32 at 12.
    pub reserved1: u32,
    /// Faulting address.
    pub address: u64,
}

impl FaultRecord {
    /// Decode a 24-byte record.
    pub fn parse(b: &[u8]) -> FaultRecord {
        assert!(b.len() >= FAULT_RECORD_LEN, "fault record must be 24 bytes");
        FaultRecord {
            reason: b[0],
            reserved0: [b[1], b[2], b[3]],
            flags: get_u32(b, 4),
            endpoint: get_u32(b, 8),
            reserved1: get_u32(b, 12),
            address: get_u64(b, 16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_spec_table() {
        let a = attach(0x0102_0304, 0x0a0b_0c0d, 1);
        assert_eq!(a.len(), 20);
        assert_eq!(&a[..8], &[1, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(&a[8..16], &[0x0d, 0x0c, 0x0b, 0x0a, 1, 0, 0, 0]);
        assert_eq!(detach(1, 2).len(), 20);
        let m = map(7, 0x1000, 0x1fff, 0xabc000, 3);
        assert_eq!(m.len(), 36);
        assert_eq!(m[0], 3);
        assert_eq!(get_u64(&m, 16), 0x1fff);
        assert_eq!(get_u64(&m, 24), 0xabc000);
        assert_eq!(get_u32(&m, 32), 3);
        assert_eq!(unmap(1, 0, 9).len(), 28);
        assert_eq!(probe(9).len(), 72);
    }

    #[test]
    fn pasid_extension_layouts_match_docs_pasid() {
        let t = attach_table(
            5,
            table_format::INTEL_VTD_S1,
            &vtd_s1_desc(48, 0x4000_0000, 4),
        );
        assert_eq!(t.len(), 68);
        assert_eq!(&t[..12], &[6, 0, 0, 0, 5, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(
            (get_u32(&t, 16), get_u64(&t, 24), get_u64(&t, 32)),
            (48, 0x4000_0000, 4)
        );
        let t = attach_table(1, table_format::ARM_SMMUV3, &smmuv3_desc(1, 2, 0x8000, 7));
        assert_eq!(
            (t[16], t[17], get_u32(&t, 20), get_u64(&t, 24)),
            (1, 2, 7, 0x8000)
        );
        assert_eq!(
            detach_table(3),
            [9, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let i = invalidate(&Invalidate {
            scope: inv::SCOPE_ADDRESS,
            caches: inv::CACHE_IOTLB,
            flags: inv::FLAG_PASID | inv::FLAG_LEAF,
            domain: 2,
            pasid: 6,
            archid: 0,
            virt_start: 0x10000,
            nr_pages: 3,
            granule: 12,
        });
        assert_eq!(i.len(), 60);
        assert_eq!(&i[..10], &[7, 0, 0, 0, 4, 0, 1, 0, 5, 0]);
        assert_eq!((get_u32(&i, 12), get_u32(&i, 16)), (2, 6));
        assert_eq!((get_u64(&i, 32), get_u64(&i, 40), i[48]), (0x10000, 3, 12));
        let p = attach_pasid(50, 2, 5);
        assert_eq!(p.len(), 24);
        assert_eq!(
            (p[0], get_u32(&p, 4), get_u32(&p, 8), get_u32(&p, 12)),
            (10, 50, 2, 5)
        );
        assert_eq!(detach_pasid(50, 2, 5)[0], 11);
    }

    #[test]
    fn properties_and_records_decode() {
        let mut buf = vec![0u8; 64];
        buf[0] = 1;
        buf[2] = 20;
        buf[4] = 1;
        buf[8..16].copy_from_slice(&0xfee0_0000u64.to_le_bytes());
        buf[16..24].copy_from_slice(&0xfeef_ffffu64.to_le_bytes());
        let (props, end) = parse_properties(&buf);
        assert_eq!(end, 24);
        let r = props[0].resv_mem().unwrap();
        assert_eq!((r.subtype, r.start, r.end), (1, 0xfee0_0000, 0xfeef_ffff));
        let mut rec = [0u8; 24];
        rec[0] = 2;
        rec[4..8].copy_from_slice(&0x101u32.to_le_bytes());
        rec[8..12].copy_from_slice(&5u32.to_le_bytes());
        rec[16..24].copy_from_slice(&0xdead_0000u64.to_le_bytes());
        let f = FaultRecord::parse(&rec);
        assert_eq!(
            (f.reason, f.flags, f.endpoint, f.address),
            (2, 0x101, 5, 0xdead_0000)
        );
    }
}
