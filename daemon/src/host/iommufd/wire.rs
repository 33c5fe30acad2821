//! What the guest's tables and invalidations become on the host IOMMU (docs/IOMMUFD.md,
//! "Guest tables"): the invalidation entries of each host kind, and the fault-queue records.
//!
//! Pure encodings, unit-tested field by field against the architecture documents and the
//! kernel headers they come from:
//! - Arm SMMUv3 commands (IHI 0070, §4 "Commands"; Linux `drivers/iommu/arm/arm-smmu-v3/
//!   arm-smmu-v3.h` CMDQ_*), passed raw to IOMMU_HWPT_INVALIDATE on the vIOMMU
//!   (IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, `struct iommu_viommu_arm_smmuv3_invalidate`).
//!   The kernel fills in the VMID and translates the virtual StreamID (the endpoint id, given
//!   as `virt_id` to VDEVICE_ALLOC) to the physical one.
//! - VT-d: `struct iommu_hwpt_vtd_s1_invalidate {addr, npages, flags (LEAF), rsvd}` on the
//!   nested HWPT (IOMMU_HWPT_INVALIDATE_DATA_VTD_S1); the kernel flushes the IOTLB, the
//!   PASID-cache entries it derived and the device TLB of the HWPT's devices.
//! - The selftest mock (`iommufd_test.h`): `{u32 flags, u32 iotlb_id}` on the nested HWPT,
//!   `{u32 flags, u32 vdev_id, u32 cache_id}` on the vIOMMU.
//! - Fault queue records: `struct iommu_hwpt_pgfault` (40 bytes) and the response
//!   `struct iommu_hwpt_page_response {u32 cookie, u32 code}`.
//! - vEVENTQ records: `struct iommufd_vevent_header {u32 flags, u32 sequence}` then the event:
//!   SMMUv3 `struct iommu_vevent_arm_smmuv3 {le64 evt[4]}` (the event record of IHI 0070 §7.3,
//!   StreamID already the virtual one), the mock's `{u32 virt_id}`.

use model::guest_tables::{Invalidate, Scope};
use model::host::HostFault;
use model::protocol::{FAULT_R_DOMAIN, FAULT_R_MAPPING, FAULT_R_UNKNOWN};

/// SMMUv3 command opcodes (CMDQ_OP_*).
pub const CMD_CFGI_CD: u64 = 0x05;
pub const CMD_CFGI_CD_ALL: u64 = 0x06;
pub const CMD_TLBI_NH_ALL: u64 = 0x10;
pub const CMD_TLBI_NH_ASID: u64 = 0x11;
pub const CMD_TLBI_NH_VA: u64 = 0x12;
pub const CMD_TLBI_NH_VAA: u64 = 0x13;
pub const CMD_ATC_INV: u64 = 0x40;

/// Field positions (CMDQ_*): word 0.
const CMDQ_0_SSV: u64 = 1 << 11;
const CFGI_0_SSID_SHIFT: u32 = 12; // [31:12]
const CFGI_0_SID_SHIFT: u32 = 32; // [63:32]
const TLBI_0_ASID_SHIFT: u32 = 48; // [63:48]
const ATC_0_SSID_SHIFT: u32 = 12; // [31:12]
const ATC_0_SID_SHIFT: u32 = 32; // [63:32]
const SSID_MASK: u64 = 0xf_ffff; // 20 bits
/// Word 1.
const CFGI_1_LEAF: u64 = 1 << 0;
const TLBI_1_LEAF: u64 = 1 << 0;
const ADDR_MASK: u64 = !0xfff; // [63:12]
const ATC_1_SIZE_MASK: u64 = 0x3f; // [5:0]
/// ATC_INV with this size covers the whole address space (ATC_INV_SIZE_ALL).
pub const ATC_INV_SIZE_ALL: u64 = 52;

/// More 4 KiB pages than this in one ADDRESS invalidation are invalidated by ASID (or all)
/// rather than page by page.
pub const MAX_PAGE_COMMANDS: u64 = 64;

pub fn cfgi_cd(sid: u32, ssid: u32, leaf: bool) -> [u64; 2] {
    [
        CMD_CFGI_CD
            | ((u64::from(ssid) & SSID_MASK) << CFGI_0_SSID_SHIFT)
            | (u64::from(sid) << CFGI_0_SID_SHIFT),
        if leaf { CFGI_1_LEAF } else { 0 },
    ]
}

pub fn cfgi_cd_all(sid: u32) -> [u64; 2] {
    [CMD_CFGI_CD_ALL | (u64::from(sid) << CFGI_0_SID_SHIFT), 0]
}

pub fn tlbi_nh_all() -> [u64; 2] {
    [CMD_TLBI_NH_ALL, 0]
}

pub fn tlbi_nh_asid(asid: u16) -> [u64; 2] {
    [CMD_TLBI_NH_ASID | (u64::from(asid) << TLBI_0_ASID_SHIFT), 0]
}

pub fn tlbi_nh_va(asid: u16, va: u64, leaf: bool) -> [u64; 2] {
    [
        CMD_TLBI_NH_VA | (u64::from(asid) << TLBI_0_ASID_SHIFT),
        (va & ADDR_MASK) | if leaf { TLBI_1_LEAF } else { 0 },
    ]
}

pub fn tlbi_nh_vaa(va: u64, leaf: bool) -> [u64; 2] {
    [
        CMD_TLBI_NH_VAA,
        (va & ADDR_MASK) | if leaf { TLBI_1_LEAF } else { 0 },
    ]
}

/// ATC_INV of `[addr, addr + 4 KiB << size)` (naturally aligned) for `sid`, of one substream
/// or, with `ssid` None, of the traffic without PASID.
pub fn atc_inv(sid: u32, ssid: Option<u32>, addr: u64, size: u64) -> [u64; 2] {
    let mut w0 = CMD_ATC_INV | (u64::from(sid) << ATC_0_SID_SHIFT);
    if let Some(s) = ssid {
        w0 |= CMDQ_0_SSV | ((u64::from(s) & SSID_MASK) << ATC_0_SSID_SHIFT);
    }
    [w0, (addr & ADDR_MASK) | (size & ATC_1_SIZE_MASK)]
}

/// The smallest naturally aligned block of 4 KiB pages covering `[first, first + n)`:
/// (address, log2 pages), as Linux's `arm_smmu_atc_inv_to_cmd` computes it.
pub fn atc_span(first_vpn: u64, vpns: u64) -> (u64, u64) {
    let last = first_vpn.saturating_add(vpns.max(1) - 1);
    let log2 = u64::from(64 - (first_vpn ^ last).leading_zeros());
    if log2 >= ATC_INV_SIZE_ALL {
        return (0, ATC_INV_SIZE_ALL);
    }
    let start = first_vpn & !((1u64 << log2) - 1);
    (start << 12, log2)
}

/// The SMMUv3 commands of an INVALIDATE on a CD-table domain whose endpoints (virtual
/// StreamIDs) are `sids`.
///
/// - IOTLB: ADDRESS scope becomes TLBI_NH_VA per 4 KiB page of the ASID (flag ARCHID) or
///   TLBI_NH_VAA (every ASID of the VM) when no ASID is given; beyond [`MAX_PAGE_COMMANDS`]
///   pages, TLBI_NH_ASID or TLBI_NH_ALL. PASID scope: TLBI_NH_ASID with an ASID, else
///   TLBI_NH_ALL (the CD's ASID is the guest's business; over-invalidating is always correct).
///   DOMAIN scope: TLBI_NH_ALL (the VM's VMID: the kernel sets it).
/// - PASID (CD cache): CFGI_CD of the PASID (LEAF as the request says) for PASID/ADDRESS
///   scope with a PASID, CFGI_CD_ALL otherwise, per endpoint.
/// - DEV_IOTLB: ATC_INV per endpoint, of the PASID's substream when given, of the range for
///   ADDRESS scope, everything otherwise.
pub fn smmu_commands(inv: &Invalidate, sids: &[u32]) -> Vec<[u64; 2]> {
    use model::protocol::{INV_CACHE_DEV_IOTLB, INV_CACHE_IOTLB, INV_CACHE_PASID};
    let mut out = Vec::new();
    let asid = inv.archid.map(|a| a as u16);
    if inv.caches & INV_CACHE_IOTLB != 0 {
        match inv.scope {
            Scope::Domain => out.push(tlbi_nh_all()),
            Scope::Pasid => out.push(asid.map_or_else(tlbi_nh_all, tlbi_nh_asid)),
            Scope::Address { first_vpn, vpns } if vpns <= MAX_PAGE_COMMANDS => {
                for vpn in first_vpn..first_vpn + vpns {
                    out.push(match asid {
                        Some(a) => tlbi_nh_va(a, vpn << 12, inv.leaf),
                        None => tlbi_nh_vaa(vpn << 12, inv.leaf),
                    });
                }
            }
            Scope::Address { .. } => out.push(asid.map_or_else(tlbi_nh_all, tlbi_nh_asid)),
        }
    }
    if inv.caches & INV_CACHE_PASID != 0 {
        for &sid in sids {
            out.push(match (inv.scope, inv.pasid) {
                (Scope::Domain, _) | (_, None) => cfgi_cd_all(sid),
                (_, Some(p)) => cfgi_cd(sid, p, inv.leaf),
            });
        }
    }
    if inv.caches & INV_CACHE_DEV_IOTLB != 0 {
        let (addr, size) = match inv.scope {
            Scope::Address { first_vpn, vpns } => atc_span(first_vpn, vpns),
            _ => (0, ATC_INV_SIZE_ALL),
        };
        let ssid = match inv.scope {
            Scope::Domain => None,
            _ => inv.pasid,
        };
        for &sid in sids {
            out.push(atc_inv(sid, ssid, addr, size));
        }
    }
    out
}

/// `struct iommu_hwpt_vtd_s1_invalidate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdInvalidate {
    pub addr: u64,
    pub npages: u64,
    pub flags: u32,
}

/// IOMMU_VTD_INV_FLAGS_LEAF.
pub const VTD_INV_FLAGS_LEAF: u32 = 1 << 0;

impl VtdInvalidate {
    pub const SIZE: u32 = 24;
    pub fn bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.npages.to_le_bytes());
        b[16..20].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// The VT-d entry of an INVALIDATE on a first-stage table domain, if any cache is named. The
/// nested HWPT is one table: PASID and DOMAIN scope flush all of it (addr 0, npages U64_MAX,
/// the uAPI's "everything"); ADDRESS scope its range, LEAF as the request says. The kernel
/// flushes the device TLB along with the IOTLB, and the PASID entry is the host's (nothing of
/// it is cached from the guest), so every cache bit leads to this one entry.
pub fn vtd_entry(inv: &Invalidate) -> Option<VtdInvalidate> {
    if inv.caches == 0 {
        return None;
    }
    Some(match inv.scope {
        Scope::Address { first_vpn, vpns } => VtdInvalidate {
            addr: first_vpn << 12,
            npages: vpns,
            flags: if inv.leaf { VTD_INV_FLAGS_LEAF } else { 0 },
        },
        _ => VtdInvalidate {
            addr: 0,
            npages: u64::MAX,
            flags: 0,
        },
    })
}

/// IOMMU_TEST_INVALIDATE_FLAG_ALL.
pub const MOCK_INVALIDATE_ALL: u32 = 1 << 0;
/// The mock nested domain's IOTLB and the mock device's cache have 4 entries each.
pub const MOCK_ENTRIES: u32 = 4;
/// IOMMU_TEST_IOTLB_DEFAULT: what a new mock nested HWPT's IOTLB entries hold.
pub const MOCK_IOTLB_DEFAULT: u32 = 0xbad_beef;

/// The selftest mock's IOTLB entry for an INVALIDATE naming the IOTLB: the mock keeps 4 IOTLB
/// entries per nested HWPT and no addresses, so entry `pasid % 4` stands for the PASID's
/// translations; a DOMAIN invalidation, or one without PASID, empties all of them.
/// Returns `{flags, iotlb_id}`.
pub fn mock_iotlb_entry(inv: &Invalidate) -> Option<[u32; 2]> {
    if inv.caches & model::protocol::INV_CACHE_IOTLB == 0 {
        return None;
    }
    Some(match (inv.scope, inv.pasid) {
        (Scope::Domain, _) | (_, None) => [MOCK_INVALIDATE_ALL, 0],
        (_, Some(p)) => [0, p % MOCK_ENTRIES],
    })
}

/// The mock device-cache entry (the vIOMMU's "device TLB") for an INVALIDATE naming
/// DEV_IOTLB, for the vDEVICE `vdev_id`: `{flags, vdev_id, cache_id}`, on the same rule.
pub fn mock_dev_cache_entry(inv: &Invalidate, vdev_id: u32) -> Option<[u32; 3]> {
    if inv.caches & model::protocol::INV_CACHE_DEV_IOTLB == 0 {
        return None;
    }
    Some(match (inv.scope, inv.pasid) {
        (Scope::Domain, _) | (_, None) => [MOCK_INVALIDATE_ALL, vdev_id, 0],
        (_, Some(p)) => [0, vdev_id, p % MOCK_ENTRIES],
    })
}

/// Words to little-endian bytes (the uAPI entries are arrays of LE words).
pub fn le_bytes<const N: usize>(words: &[[u32; N]]) -> Vec<u8> {
    words
        .iter()
        .flat_map(|w| w.iter().flat_map(|x| x.to_le_bytes()))
        .collect()
}

pub fn le_bytes64(cmds: &[[u64; 2]]) -> Vec<u8> {
    cmds.iter()
        .flat_map(|w| w.iter().flat_map(|x| x.to_le_bytes()))
        .collect()
}

/// `struct iommu_hwpt_pgfault`, as read from the fault fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgFault {
    pub flags: u32,
    pub dev_id: u32,
    pub pasid: u32,
    pub grpid: u32,
    pub perm: u32,
    pub addr: u64,
    pub length: u32,
    pub cookie: u32,
}

pub const PGFAULT_SIZE: usize = 40;
/// IOMMU_PGFAULT_FLAGS_PASID_VALID / LAST_PAGE.
pub const PGFAULT_FLAGS_PASID_VALID: u32 = 1 << 0;
pub const PGFAULT_FLAGS_LAST_PAGE: u32 = 1 << 1;
/// IOMMU_PGFAULT_PERM_*: the same bits as the page-request record's READ/WRITE/EXEC/PRIV.
pub const PGFAULT_PERM_MASK: u32 = 0xf;
/// IOMMUFD_PAGE_RESP_SUCCESS / INVALID (FAILURE was removed from the uAPI: a guest's
/// Response Failure is answered INVALID on the host).
pub const PAGE_RESP_SUCCESS: u32 = 0;
pub const PAGE_RESP_INVALID: u32 = 1;

impl PgFault {
    /// Parse one record: flags@0, dev_id@4, pasid@8, grpid@12, perm@16, reserved@20,
    /// addr@24, length@32, cookie@36.
    pub fn parse(b: &[u8]) -> Option<PgFault> {
        let b: &[u8; PGFAULT_SIZE] = b.get(..PGFAULT_SIZE)?.try_into().ok()?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[24..32]);
        Some(PgFault {
            flags: u32_at(0),
            dev_id: u32_at(4),
            pasid: u32_at(8),
            grpid: u32_at(12),
            perm: u32_at(16),
            addr: u64::from_le_bytes(a),
            length: u32_at(32),
            cookie: u32_at(36),
        })
    }
}

/// The response to write to the fault fd for a guest PAGE_RESP code.
pub fn page_response(cookie: u32, virtio_code: u16) -> [u8; 8] {
    let code = if virtio_code == model::protocol::PAGE_RESP_SUCCESS {
        PAGE_RESP_SUCCESS
    } else {
        PAGE_RESP_INVALID
    };
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&cookie.to_le_bytes());
    b[4..].copy_from_slice(&code.to_le_bytes());
    b
}

/// IOMMU_VEVENTQ_FLAG_LOST_EVENTS: a header without data saying events were dropped.
pub const VEVENT_FLAG_LOST_EVENTS: u32 = 1 << 0;
pub const VEVENT_HEADER_SIZE: usize = 8;
/// Event data sizes.
pub const VEVENT_SMMUV3_SIZE: usize = 32;
pub const VEVENT_SELFTEST_SIZE: usize = 4;

/// Split what a read of a vEVENTQ fd returned into event data (`data_len` bytes each); also
/// returns how many LOST_EVENTS headers were seen.
pub fn split_vevents(buf: &[u8], data_len: usize) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut lost = 0;
    let mut at = 0;
    while let Some(h) = buf.get(at..at + VEVENT_HEADER_SIZE) {
        let flags = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        at += VEVENT_HEADER_SIZE;
        if flags & VEVENT_FLAG_LOST_EVENTS != 0 {
            lost += 1;
            continue;
        }
        let Some(d) = buf.get(at..at + data_len) else {
            break;
        };
        out.push(d);
        at += data_len;
    }
    (out, lost)
}

/// SMMUv3 event numbers (IHI 0070 §7.3) of stage-1 translation faults.
pub const EVT_F_TRANSLATION: u8 = 0x10;
pub const EVT_F_PERMISSION: u8 = 0x13;
/// Event record fields: DW0 [7:0] type, [11] SSV, [31:12] SubstreamID, [63:32] StreamID;
/// DW1 [33] PnU, [34] InD, [35] RnW; DW2 InputAddr.
const EVTQ_0_SSV: u64 = 1 << 11;
const EVTQ_1_PNU: u64 = 1 << 33;
const EVTQ_1_IND: u64 = 1 << 34;
const EVTQ_1_RNW: u64 = 1 << 35;

/// A fault record for an SMMUv3 event the host forwarded: translation, address size, access
/// flag and permission faults (0x10..=0x13) are MAPPING faults at InputAddr with the access
/// (RnW: read, else write; InD: exec; PnU: privileged); every other event (C_BAD_CD,
/// C_BAD_SUBSTREAMID, F_CD_FETCH, F_WALK_EABT...) is about the guest's configuration: DOMAIN,
/// without address.
pub fn smmu_event_fault(data: &[u8]) -> Option<HostFault> {
    let w = |i: usize| -> Option<u64> {
        let b: [u8; 8] = data.get(i * 8..i * 8 + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    let (w0, w1, w2) = (w(0)?, w(1)?, w(2)?);
    let id = (w0 & 0xff) as u8;
    let endpoint = (w0 >> 32) as u32;
    let pasid = (w0 & EVTQ_0_SSV != 0).then_some(((w0 >> 12) & 0xf_ffff) as u32);
    if (EVT_F_TRANSLATION..=EVT_F_PERMISSION).contains(&id) {
        let mut access = if w1 & EVTQ_1_RNW != 0 { 1 } else { 2 };
        if w1 & EVTQ_1_IND != 0 {
            access |= 4;
        }
        if w1 & EVTQ_1_PNU != 0 {
            access |= 8;
        }
        Some(HostFault {
            endpoint,
            pasid,
            reason: FAULT_R_MAPPING,
            access,
            address: Some(w2),
        })
    } else {
        Some(HostFault {
            endpoint,
            pasid,
            reason: FAULT_R_DOMAIN,
            access: 0,
            address: None,
        })
    }
}

/// A fault record for a mock event `{u32 virt_id}`: the mock says only which device.
pub fn mock_event_fault(data: &[u8]) -> Option<HostFault> {
    let b: [u8; 4] = data.get(..4)?.try_into().ok()?;
    Some(HostFault {
        endpoint: u32::from_le_bytes(b),
        pasid: None,
        reason: FAULT_R_UNKNOWN,
        access: 0,
        address: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::protocol::{INV_CACHE_DEV_IOTLB, INV_CACHE_IOTLB, INV_CACHE_PASID};

    fn inv(scope: Scope, caches: u16, pasid: Option<u32>, archid: Option<u64>) -> Invalidate {
        Invalidate {
            domain: 1,
            scope,
            caches,
            pasid,
            archid,
            leaf: true,
        }
    }

    /// Bit positions from IHI 0070 §4.3/§4.4/§4.5 and Linux's arm-smmu-v3.h:
    /// CMDQ_0_OP [7:0], CMDQ_0_SSV bit 11, CFGI SSID [31:12] SID [63:32], CFGI_1_LEAF bit 0,
    /// TLBI ASID [63:48], TLBI_1_LEAF bit 0, VA [63:12], ATC SSID [31:12] SID [63:32],
    /// ATC_1_SIZE [5:0], ATC_1_ADDR [63:12].
    #[test]
    fn smmu_commands_field_by_field() {
        let c = cfgi_cd(0x1234_5678, 0xabcde, true);
        assert_eq!(c[0] & 0xff, 0x05);
        assert_eq!((c[0] >> 12) & 0xf_ffff, 0xabcde);
        assert_eq!(c[0] >> 32, 0x1234_5678);
        assert_eq!(c[0] & (1 << 11), 0, "CFGI_CD has no SSV");
        assert_eq!(c[1], 1);
        assert_eq!(cfgi_cd(7, 3, false)[1], 0);
        // A PASID wider than 20 bits cannot leak into the SID field.
        assert_eq!(cfgi_cd(0, 0xfff_ffff, false)[0] >> 32, 0);

        let c = cfgi_cd_all(42);
        assert_eq!(
            (c[0] & 0xff, c[0] >> 32, (c[0] >> 12) & 0xf_ffff),
            (0x06, 42, 0)
        );

        assert_eq!(tlbi_nh_all(), [0x10, 0]);
        let c = tlbi_nh_asid(0xbeef);
        assert_eq!((c[0] & 0xff, c[0] >> 48), (0x11, 0xbeef));
        assert_eq!(
            c[0] & 0xffff_ffff_0000,
            0,
            "VMID [47:32] left to the kernel"
        );

        let c = tlbi_nh_va(5, 0x1234_5000 | 0xabc, true);
        assert_eq!((c[0] & 0xff, c[0] >> 48), (0x12, 5));
        assert_eq!(
            c[1],
            0x1234_5000 | 1,
            "VA [63:12], LEAF bit 0, low bits dropped"
        );
        assert_eq!(tlbi_nh_va(5, 0x2000, false)[1], 0x2000);
        // NUM/SCALE (range) and TTL/TG stay 0: a single non-range invalidation.
        assert_eq!(c[0] & 0x1ff_f000, 0);
        assert_eq!(c[1] & 0xf00, 0);

        let c = tlbi_nh_vaa(0xffff_f000_0000_0000, false);
        assert_eq!(c, [0x13, 0xffff_f000_0000_0000]);

        let c = atc_inv(9, Some(0x12345), 0x40_0000, 10);
        assert_eq!(c[0] & 0xff, 0x40);
        assert_ne!(c[0] & (1 << 11), 0, "SSV");
        assert_eq!((c[0] >> 12) & 0xf_ffff, 0x12345);
        assert_eq!(c[0] >> 32, 9);
        assert_eq!(c[1], 0x40_0000 | 10);
        let c = atc_inv(9, None, 0, ATC_INV_SIZE_ALL);
        assert_eq!(c, [0x40 | (9 << 32), 52]);
    }

    #[test]
    fn atc_span_is_the_aligned_cover() {
        // One page: itself, size 0.
        assert_eq!(atc_span(0x10, 1), (0x10 << 12, 0));
        // Pages 3..=4 cross an 8-page boundary? 3 ^ 4 = 7: 8 pages from 0.
        assert_eq!(atc_span(3, 2), (0, 3));
        // Aligned power of two: exact.
        assert_eq!(atc_span(0x100, 0x100), (0x100 << 12, 8));
        // Huge: everything.
        assert_eq!(atc_span(0, 1 << 52), (0, ATC_INV_SIZE_ALL));
    }

    #[test]
    fn smmu_invalidations_by_scope() {
        let sids = [1, 2];
        // DOMAIN, all caches: TLBI_NH_ALL, CFGI_CD_ALL and a full ATC_INV per endpoint.
        let c = smmu_commands(
            &inv(
                Scope::Domain,
                INV_CACHE_IOTLB | INV_CACHE_PASID | INV_CACHE_DEV_IOTLB,
                None,
                None,
            ),
            &sids,
        );
        assert_eq!(
            c,
            vec![
                tlbi_nh_all(),
                cfgi_cd_all(1),
                cfgi_cd_all(2),
                atc_inv(1, None, 0, 52),
                atc_inv(2, None, 0, 52)
            ]
        );
        // ADDRESS of 3 pages of ASID 7, PASID 5: 3 TLBI_NH_VA, CFGI_CD(5), ATC_INV of the
        // substream's cover.
        let c = smmu_commands(
            &inv(
                Scope::Address {
                    first_vpn: 0x101,
                    vpns: 3,
                },
                INV_CACHE_IOTLB | INV_CACHE_PASID | INV_CACHE_DEV_IOTLB,
                Some(5),
                Some(7),
            ),
            &[1],
        );
        assert_eq!(
            c,
            vec![
                tlbi_nh_va(7, 0x101000, true),
                tlbi_nh_va(7, 0x102000, true),
                tlbi_nh_va(7, 0x103000, true),
                cfgi_cd(1, 5, true),
                atc_inv(1, Some(5), 0x100000, 2),
            ]
        );
        // Without ASID: by VA for every ASID; too many pages: everything.
        let c = smmu_commands(
            &inv(
                Scope::Address {
                    first_vpn: 1,
                    vpns: 1,
                },
                INV_CACHE_IOTLB,
                None,
                None,
            ),
            &[],
        );
        assert_eq!(c, vec![tlbi_nh_vaa(0x1000, true)]);
        let big = Scope::Address {
            first_vpn: 0,
            vpns: MAX_PAGE_COMMANDS + 1,
        };
        assert_eq!(
            smmu_commands(&inv(big, INV_CACHE_IOTLB, None, Some(3)), &[]),
            vec![tlbi_nh_asid(3)]
        );
        assert_eq!(
            smmu_commands(&inv(big, INV_CACHE_IOTLB, None, None), &[]),
            vec![tlbi_nh_all()]
        );
        // PASID scope with ASID: TLBI_NH_ASID; no caches named: nothing.
        assert_eq!(
            smmu_commands(&inv(Scope::Pasid, INV_CACHE_IOTLB, Some(1), Some(9)), &[1]),
            vec![tlbi_nh_asid(9)]
        );
        assert!(smmu_commands(&inv(Scope::Domain, 0, None, None), &[1]).is_empty());
    }

    /// `struct iommu_hwpt_vtd_s1_invalidate {__aligned_u64 addr; __aligned_u64 npages;
    /// __u32 flags; __u32 __reserved;}`, IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0; addr 0 with npages
    /// U64_MAX invalidates everything.
    #[test]
    fn vtd_entries_field_by_field() {
        let e = vtd_entry(&inv(
            Scope::Address {
                first_vpn: 0x12345,
                vpns: 16,
            },
            INV_CACHE_IOTLB,
            Some(3),
            None,
        ))
        .unwrap();
        assert_eq!(
            e,
            VtdInvalidate {
                addr: 0x1234_5000,
                npages: 16,
                flags: VTD_INV_FLAGS_LEAF
            }
        );
        let b = e.bytes();
        assert_eq!(b.len() as u32, VtdInvalidate::SIZE);
        assert_eq!(&b[0..8], &0x1234_5000u64.to_le_bytes());
        assert_eq!(&b[8..16], &16u64.to_le_bytes());
        assert_eq!(&b[16..20], &1u32.to_le_bytes());
        assert_eq!(&b[20..24], &[0; 4]);
        let mut not_leaf = inv(
            Scope::Address {
                first_vpn: 1,
                vpns: 1,
            },
            INV_CACHE_DEV_IOTLB,
            None,
            None,
        );
        not_leaf.leaf = false;
        assert_eq!(vtd_entry(&not_leaf).unwrap().flags, 0);
        for scope in [Scope::Domain, Scope::Pasid] {
            assert_eq!(
                vtd_entry(&inv(scope, INV_CACHE_PASID, Some(1), None)),
                Some(VtdInvalidate {
                    addr: 0,
                    npages: u64::MAX,
                    flags: 0
                })
            );
        }
        assert_eq!(vtd_entry(&inv(Scope::Domain, 0, None, None)), None);
    }

    #[test]
    fn mock_entries() {
        let i = inv(Scope::Pasid, INV_CACHE_IOTLB, Some(6), None);
        assert_eq!(mock_iotlb_entry(&i), Some([0, 2]));
        assert_eq!(mock_dev_cache_entry(&i, 1), None);
        let i = inv(
            Scope::Domain,
            INV_CACHE_IOTLB | INV_CACHE_DEV_IOTLB,
            None,
            None,
        );
        assert_eq!(mock_iotlb_entry(&i), Some([1, 0]));
        assert_eq!(mock_dev_cache_entry(&i, 4), Some([1, 4, 0]));
        assert_eq!(
            le_bytes(&[[1u32, 2, 3]]),
            vec![1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]
        );
    }

    #[test]
    fn vevents_split_and_map() {
        // A mock event, a LOST_EVENTS header (no data), a second mock event.
        let mut buf = Vec::new();
        buf.extend(0u32.to_le_bytes());
        buf.extend(7u32.to_le_bytes());
        buf.extend(3u32.to_le_bytes());
        buf.extend(1u32.to_le_bytes());
        buf.extend(8u32.to_le_bytes());
        buf.extend(0u32.to_le_bytes());
        buf.extend(9u32.to_le_bytes());
        buf.extend(4u32.to_le_bytes());
        let (ev, lost) = split_vevents(&buf, VEVENT_SELFTEST_SIZE);
        assert_eq!(lost, 1);
        assert_eq!(ev.len(), 2);
        let f = mock_event_fault(ev[0]).unwrap();
        assert_eq!(
            (f.endpoint, f.reason, f.address),
            (3, FAULT_R_UNKNOWN, None)
        );
        assert_eq!(mock_event_fault(ev[1]).unwrap().endpoint, 4);
        // A truncated event is not parsed.
        assert_eq!(split_vevents(&buf[..10], 4).0.len(), 0);

        // SMMUv3 F_PERMISSION of vSID 5, SSV with SubstreamID 0x12345, write (RnW 0), PnU,
        // InputAddr 0xdead_b000.
        let mut e = [0u8; 32];
        let w0: u64 = 0x13 | (1 << 11) | (0x12345 << 12) | (5 << 32);
        let w1: u64 = 1 << 33;
        e[0..8].copy_from_slice(&w0.to_le_bytes());
        e[8..16].copy_from_slice(&w1.to_le_bytes());
        e[16..24].copy_from_slice(&0xdead_b000u64.to_le_bytes());
        let f = smmu_event_fault(&e).unwrap();
        assert_eq!(
            f,
            HostFault {
                endpoint: 5,
                pasid: Some(0x12345),
                reason: FAULT_R_MAPPING,
                access: 2 | 8,
                address: Some(0xdead_b000)
            }
        );
        // Read (RnW 1), instruction fetch (InD), no SSV.
        let w0: u64 = 0x10 | (6 << 32);
        let w1: u64 = (1 << 35) | (1 << 34);
        e[0..8].copy_from_slice(&w0.to_le_bytes());
        e[8..16].copy_from_slice(&w1.to_le_bytes());
        let f = smmu_event_fault(&e).unwrap();
        assert_eq!((f.endpoint, f.pasid, f.access), (6, None, 1 | 4));
        // C_BAD_CD (0x0a): the guest's configuration, no address.
        e[0..8].copy_from_slice(&(0x0au64 | (6 << 32)).to_le_bytes());
        let f = smmu_event_fault(&e).unwrap();
        assert_eq!((f.reason, f.address), (FAULT_R_DOMAIN, None));
        assert_eq!(smmu_event_fault(&e[..20]), None);
    }

    #[test]
    fn fault_records_parse() {
        let mut b = [0u8; 40];
        b[0..4].copy_from_slice(&3u32.to_le_bytes()); // PASID_VALID | LAST_PAGE
        b[4..8].copy_from_slice(&7u32.to_le_bytes());
        b[8..12].copy_from_slice(&0x1u32.to_le_bytes());
        b[12..16].copy_from_slice(&0x2u32.to_le_bytes());
        b[16..20].copy_from_slice(&3u32.to_le_bytes()); // READ | WRITE
        b[20..24].copy_from_slice(&0xffff_ffffu32.to_le_bytes()); // reserved: ignored
        b[24..32].copy_from_slice(&0xdead_beafu64.to_le_bytes());
        b[32..36].copy_from_slice(&0x1000u32.to_le_bytes());
        b[36..40].copy_from_slice(&99u32.to_le_bytes());
        let f = PgFault::parse(&b).unwrap();
        assert_eq!(
            f,
            PgFault {
                flags: PGFAULT_FLAGS_PASID_VALID | PGFAULT_FLAGS_LAST_PAGE,
                dev_id: 7,
                pasid: 1,
                grpid: 2,
                perm: 3,
                addr: 0xdead_beaf,
                length: 0x1000,
                cookie: 99
            }
        );
        assert_eq!(PgFault::parse(&b[..39]), None);
        assert_eq!(page_response(99, 0), [99, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(page_response(99, 1), [99, 0, 0, 0, 1, 0, 0, 0]);
        // FAILURE is not in the uAPI any more: INVALID.
        assert_eq!(page_response(5, 2), [5, 0, 0, 0, 1, 0, 0, 0]);
    }
}
