//! Guest-owned translation tables in the software backend (the PASID / shared-table extension,
//! docs/PASID.md): decoding ATTACH_TABLE, walking SMMUv3 CD tables and the stage-1 tables they
//! hold, VMSAv8-64 and VT-d first-stage tables, and the caches INVALIDATE empties.
//!
//! The caches behave like hardware: a CD or a translation, once read, is used until the guest
//! invalidates it, even if the guest has changed the table in memory since.

use std::collections::HashMap;

use pagetables::vmsa::{Stage1, Stage1Caps, Stage1Params};
use pagetables::vtd::FirstStage;
use pagetables::{AccessRequest, Fault, GuestMemoryRead, Permissions, TranslationFaultKind};
use pasid::smmuv3::ste::{SsidResolution, SteError, SteS1};
use pasid::smmuv3::{CdCaps, GranuleSupport, SmmuIdrInfo};
use pasid::vtd::{VtdBindError, VtdHostCaps, VtdS1Binding};

use crate::protocol::*;

/// Translations kept per table domain before the cache is emptied wholesale.
const IOTLB_CAPACITY: usize = 16 * 1024;
/// An ADDRESS invalidation of more 4 KiB pages than this scans the cache instead.
const PAGEWISE_INVALIDATE_MAX: u64 = 4096;
/// Key of traffic without PASID (and of every access to a single-table domain).
const NO_PASID: u32 = u32::MAX;

/// What the software backend implements; PROBE advertises it.
#[derive(Clone, Copy, Debug)]
pub struct SoftCaps {
    pub cd: CdCaps,
    pub stage1: Stage1Caps,
    pub vtd: VtdHostCaps,
    /// PASID width of every endpoint.
    pub pasid_bits: u8,
}

impl SoftCaps {
    pub fn new(pasid_bits: u8) -> Self {
        SoftCaps {
            cd: CdCaps {
                max_oas: 48,
                lva: false,
                asid16: true,
                hw_access_flag: false,
                hw_dirty: false,
                stall: false,
                big_endian: false,
                granules: GranuleSupport::ALL,
            },
            stage1: Stage1Caps {
                max_oas: 48,
                lva: false,
            },
            vtd: VtdHostCaps {
                five_level: true,
                pages_1g: true,
                srs: false,
                eafs: false,
                haw: 48,
                pasid_bits,
                grant_supervisor: false,
            },
            pasid_bits,
        }
    }
}

/// A table bound to a domain.
#[derive(Debug)]
pub enum Binding {
    /// PASID_TABLE domain: an SMMUv3 CD table.
    CdTable(SteS1),
    /// PAGE_TABLE domain: one VMSAv8-64 stage-1 regime.
    Vmsa { stage1: Stage1, asid: u16 },
    /// PAGE_TABLE domain: one VT-d first-stage table.
    Vtd(FirstStage),
}

impl Binding {
    pub fn format(&self) -> u16 {
        match self {
            Binding::CdTable(_) => FMT_ARM_SMMUV3,
            Binding::Vmsa { .. } => FMT_ARM_VMSA_S1,
            Binding::Vtd(_) => FMT_INTEL_VTD_S1,
        }
    }

    /// A PASID table translates PASIDs itself; ATTACH_PASID may not target it.
    pub fn is_pasid_table(&self) -> bool {
        matches!(self, Binding::CdTable(_))
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

/// All bytes zero (reserved fields).
pub(crate) fn zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Decode and validate the table of an ATTACH_TABLE. Every guest pointer is checked against
/// guest RAM here; what the tables point to is checked during walks.
pub fn decode(
    body: &AttachTableBody,
    caps: &SoftCaps,
    mem: &impl GuestMemoryRead,
) -> Result<Binding, Status> {
    if body.flags.get() != 0 || !zero(&body.reserved) || !zero(&body.reserved2) {
        return Err(Status::Inval);
    }
    let d = &body.desc;
    match body.format.get() {
        FMT_ARM_SMMUV3 => {
            if !zero(&d[2..4]) || !zero(&d[16..]) {
                return Err(Status::Inval);
            }
            let ste = SteS1::from_fields(d[0], d[1], le64(d, 8), le32(d, 4), caps.pasid_bits, mem)
                .map_err(|e| match e {
                    SteError::CdMaxTooLarge { .. }
                    | SteError::BadContextPtr(_)
                    | SteError::TableOutsideRam(_) => Status::Range,
                    _ => Status::Inval,
                })?;
            Ok(Binding::CdTable(ste))
        }
        FMT_ARM_VMSA_S1 => {
            if !zero(&d[2..8]) || !zero(&d[32..]) {
                return Err(Status::Inval);
            }
            let asid = u16::from_le_bytes([d[0], d[1]]);
            let (ttbr, tcr, mair) = (le64(d, 8), le64(d, 16), le64(d, 24));
            // TTBR bits [63:48] are the CPU's ASID field: this format carries the ASID apart.
            if ttbr >> 48 != 0 {
                return Err(Status::Inval);
            }
            // HA [39] / HD [40]: hardware access-flag and dirty updates, which PROBE never
            // offers (the device does not write guest tables).
            if tcr & ((1 << 39) | (1 << 40)) != 0 {
                return Err(Status::Unsupp);
            }
            let (params, _) = Stage1Params::from_tcr_el1(tcr, ttbr, mair, caps.stage1)
                .map_err(|_| Status::Inval)?;
            // T0SZ, IPS: fields out of their architectural range.
            let stage1 = Stage1::new(params).map_err(|_| Status::Inval)?;
            mem.check_range(params.ttb0, 8).map_err(|_| Status::Range)?;
            Ok(Binding::Vmsa { stage1, asid })
        }
        FMT_INTEL_VTD_S1 => {
            if !zero(&d[4..8]) || !zero(&d[24..]) {
                return Err(Status::Inval);
            }
            let b = VtdS1Binding::decode(
                0,
                le64(d, 8),
                le64(d, 16),
                le32(d, 0),
                caps.pasid_bits,
                &caps.vtd,
                mem,
            )
            .map_err(|e| match e {
                VtdBindError::FiveLevelUnsupported
                | VtdBindError::SupervisorNotPermitted
                | VtdBindError::EafeUnsupported => Status::Unsupp,
                VtdBindError::PgdMisaligned(_)
                | VtdBindError::PgdOutOfRange { .. }
                | VtdBindError::PgdOutsideRam(_)
                | VtdBindError::PasidOutOfRange { .. } => Status::Range,
                VtdBindError::UnknownFlags(_) | VtdBindError::AddrWidth(_) => Status::Inval,
            })?;
            let fs = b.first_stage(&caps.vtd).map_err(|_| Status::Range)?;
            Ok(Binding::Vtd(fs))
        }
        _ => Err(Status::Unsupp),
    }
}

/// Why a walk did not produce an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkFault {
    /// No translation (invalid descriptor, access flag clear): an endpoint with page requests
    /// can ask the guest to fix it.
    NotPresent,
    /// The translation exists but forbids the access.
    Permission,
    /// The traffic is terminated by configuration (S1DSS, SSID beyond S1CDMax, EPD0).
    Terminated,
    /// The guest's configuration or tables are broken (reserved bits, a pointer outside RAM,
    /// a bad CD): a plain fault, never a page request.
    BadTable,
}

impl WalkFault {
    /// Whether the guest could resolve this by fixing its table (a page request).
    pub fn recoverable(self) -> bool {
        matches!(self, WalkFault::NotPresent | WalkFault::Permission)
    }
}

/// The outcome of a table translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walked {
    Translated(u64),
    Bypass(u64),
}

#[derive(Clone, Copy, Debug)]
struct IotlbEntry {
    page_output: u64,
    perms: Permissions,
    asid: u16,
}

/// A cached, decoded context descriptor.
#[derive(Debug)]
struct CachedCd {
    stage1: Stage1,
    asid: u16,
}

/// A domain translating through a guest table, with its caches.
#[derive(Debug)]
pub struct TableDomain {
    pub binding: Binding,
    cds: HashMap<u32, CachedCd>,
    iotlb: HashMap<(u32, u64), IotlbEntry>,
    /// Counters for inspection.
    pub hits: u64,
    pub misses: u64,
}

fn walk_fault(f: &Fault) -> WalkFault {
    match f {
        Fault::Translation { kind, .. } => match kind {
            TranslationFaultKind::NotPresent => WalkFault::NotPresent,
            TranslationFaultKind::WalkDisabled => WalkFault::Terminated,
            _ => WalkFault::BadTable,
        },
        Fault::AccessFlag { .. } => WalkFault::NotPresent,
        Fault::Permission { .. } => WalkFault::Permission,
        Fault::ReservedBits { .. } | Fault::AddressSize { .. } | Fault::Memory { .. } => {
            WalkFault::BadTable
        }
    }
}

impl TableDomain {
    pub fn new(binding: Binding) -> Self {
        TableDomain {
            binding,
            cds: HashMap::new(),
            iotlb: HashMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    pub fn cached_translations(&self) -> usize {
        self.iotlb.len()
    }

    fn key(&self, pasid: Option<u32>) -> u32 {
        match self.binding {
            // One CD per SubstreamID.
            Binding::CdTable(_) => pasid.unwrap_or(NO_PASID),
            // One table whatever the PASID.
            Binding::Vmsa { .. } | Binding::Vtd(_) => NO_PASID,
        }
    }

    /// Translate `iova` for traffic with `pasid`, checking every request in `reqs`.
    pub fn translate(
        &mut self,
        mem: &impl GuestMemoryRead,
        caps: &SoftCaps,
        pasid: Option<u32>,
        iova: u64,
        reqs: &[AccessRequest],
    ) -> Result<Walked, WalkFault> {
        let key = self.key(pasid);
        let vpn = iova >> 12;
        if let Some(e) = self.iotlb.get(&(key, vpn)) {
            self.hits += 1;
            return if reqs.iter().all(|r| e.perms.allows(*r)) {
                Ok(Walked::Translated(e.page_output | (iova & 0xfff)))
            } else {
                Err(WalkFault::Permission)
            };
        }
        self.misses += 1;
        let walked = match &self.binding {
            Binding::CdTable(ste) => {
                match ste.resolve(pasid) {
                    SsidResolution::Terminate => return Err(WalkFault::Terminated),
                    SsidResolution::Bypass => return Ok(Walked::Bypass(iova)),
                    SsidResolution::Cd(_) => {}
                }
                let cd = match self.cds.entry(key) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let cd = ste
                            .read_cd(mem, pasid, &caps.cd)
                            .map_err(|_| WalkFault::BadTable)?;
                        let stage1 = cd.stage1(&caps.cd).map_err(|_| WalkFault::BadTable)?;
                        v.insert(CachedCd {
                            stage1,
                            asid: cd.asid,
                        })
                    }
                };
                cd.stage1
                    .walk(mem, iova)
                    .map(|t| (t.output, t.page_size, t.perms, cd.asid))
            }
            Binding::Vmsa { stage1, asid } => stage1
                .walk(mem, iova)
                .map(|t| (t.output, t.page_size, t.perms, *asid)),
            Binding::Vtd(fs) => fs
                .walk(mem, iova)
                .map(|t| (t.output, t.page_size, t.perms, 0)),
        };
        let (output, _page_size, perms, asid) = walked.map_err(|f| walk_fault(&f))?;
        if self.iotlb.len() >= IOTLB_CAPACITY {
            self.iotlb.clear();
        }
        self.iotlb.insert(
            (key, vpn),
            IotlbEntry {
                page_output: output & !0xfff,
                perms,
                asid,
            },
        );
        if reqs.iter().all(|r| perms.allows(*r)) {
            Ok(Walked::Translated(output))
        } else {
            Err(WalkFault::Permission)
        }
    }

    /// Apply an INVALIDATE (already validated) to this domain's caches.
    pub fn invalidate(&mut self, inv: &Invalidate) {
        let single_table = !self.binding.is_pasid_table();
        let key = if single_table {
            NO_PASID
        } else {
            inv.pasid.unwrap_or(NO_PASID)
        };
        if inv.caches & INV_CACHE_PASID != 0 {
            match inv.scope {
                Scope::Pasid if !single_table => {
                    self.cds.remove(&key);
                }
                Scope::Address { .. } => {}
                _ => self.cds.clear(),
            }
        }
        if inv.caches & INV_CACHE_IOTLB == 0 {
            return;
        }
        let pasid_matches = |k: u32| single_table || inv.pasid.is_none() || k == key;
        let asid_matches = |e: &IotlbEntry| inv.archid.is_none_or(|a| u64::from(e.asid) == a);
        match inv.scope {
            Scope::Domain => self.iotlb.clear(),
            Scope::Pasid if single_table => self.iotlb.clear(),
            Scope::Pasid => self.iotlb.retain(|(k, _), _| *k != key),
            Scope::Address { first_vpn, vpns } => {
                if vpns <= PAGEWISE_INVALIDATE_MAX && (inv.pasid.is_some() || single_table) {
                    for vpn in first_vpn..first_vpn.saturating_add(vpns) {
                        if self.iotlb.get(&(key, vpn)).is_some_and(asid_matches) {
                            self.iotlb.remove(&(key, vpn));
                        }
                    }
                } else {
                    let end = first_vpn.saturating_add(vpns);
                    self.iotlb.retain(|(k, vpn), e| {
                        !(pasid_matches(*k) && asid_matches(e) && (first_vpn..end).contains(vpn))
                    });
                }
            }
        }
    }
}

/// What an INVALIDATE covers, in 4 KiB pages for ADDRESS scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Domain,
    Pasid,
    Address { first_vpn: u64, vpns: u64 },
}

/// A validated INVALIDATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalidate {
    pub domain: u32,
    pub scope: Scope,
    pub caches: u16,
    pub pasid: Option<u32>,
    pub archid: Option<u64>,
    /// Only leaf entries changed (flag LEAF).
    pub leaf: bool,
}

/// Validate an INVALIDATE body (docs/PASID.md §4.3).
pub fn parse_invalidate(b: &InvalidateBody, pasid_bits: u8) -> Result<Invalidate, Status> {
    let (scope, caches, flags) = (b.scope.get(), b.caches.get(), b.flags.get());
    if !zero(&b.reserved0) || !zero(&b.reserved1) || !zero(&b.reserved2) {
        return Err(Status::Inval);
    }
    if caches & !(INV_CACHE_IOTLB | INV_CACHE_DEV_IOTLB | INV_CACHE_PASID) != 0
        || flags & !(INV_F_PASID | INV_F_ARCHID | INV_F_LEAF) != 0
    {
        return Err(Status::Inval);
    }
    let pasid = (flags & INV_F_PASID != 0).then(|| b.pasid.get());
    if let Some(p) = pasid {
        if u64::from(p) >> pasid_bits != 0 {
            return Err(Status::Range);
        }
    }
    let archid = (flags & INV_F_ARCHID != 0).then(|| b.archid.get());
    let scope = match scope {
        INV_SCOPE_DOMAIN => Scope::Domain,
        INV_SCOPE_PASID if pasid.is_some() => Scope::Pasid,
        INV_SCOPE_PASID => return Err(Status::Inval),
        INV_SCOPE_ADDRESS => {
            let (start, n, g) = (b.virt_start.get(), b.nr_pages.get(), b.granule);
            if n == 0 || !(12..=30).contains(&g) || start & ((1u64 << g) - 1) != 0 {
                return Err(Status::Inval);
            }
            // The last byte, start + n * 2^g - 1, must not pass the end of the address space.
            let last = n
                .checked_mul(1u64 << g)
                .and_then(|bytes| start.checked_add(bytes - 1));
            let Some(last) = last else {
                return Err(Status::Range);
            };
            let bytes = last - start + 1;
            Scope::Address {
                first_vpn: start >> 12,
                vpns: bytes >> 12,
            }
        }
        _ => return Err(Status::Inval),
    };
    Ok(Invalidate {
        domain: b.domain.get(),
        scope,
        caches,
        pasid,
        archid,
        leaf: flags & INV_F_LEAF != 0,
    })
}

/// The extension's PROBE properties (docs/PASID.md §5), appended after `off`: what the software
/// backend walks, or, with `host`, what the host IOMMU behind the iommufd backend supports.
/// Returns the new offset, or None if they do not fit.
pub fn probe_properties(
    caps: &SoftCaps,
    host: Option<&HostIommu>,
    props: &mut [u8],
    mut off: usize,
) -> Option<usize> {
    let mut put = |type_: u16, value: &[u8]| -> Option<()> {
        let len = u16::try_from(value.len()).ok()?;
        let dst = props.get_mut(off..off + 4 + value.len())?;
        dst[0..2].copy_from_slice(&type_.to_le_bytes());
        dst[2..4].copy_from_slice(&len.to_le_bytes());
        dst[4..].copy_from_slice(value);
        off += 4 + value.len();
        Some(())
    };
    // PAGE_TABLE_FMT: le16 format, 2 reserved, le32 caps, u8 asid_bits, 3 reserved (a
    // 16-byte property: every property keeps the 8-byte multiple the standard's are).
    let fmt = |format: u16, bits: u32, asid_bits: u8| {
        let mut v = [0u8; 12];
        v[0..2].copy_from_slice(&format.to_le_bytes());
        v[4..8].copy_from_slice(&bits.to_le_bytes());
        v[8] = asid_bits;
        v
    };
    let vtd_bits = |v: &VtdHostCaps| {
        let mut b = 0b01u32 | if v.five_level { 0b10 } else { 0 };
        if v.pages_1g {
            b |= VTD_CAP_1G;
        }
        if v.srs && v.grant_supervisor {
            b |= (1 << 8) | (1 << 10);
        }
        if v.eafs {
            b |= 1 << 9;
        }
        b
    };
    let pasid_table = |fmts: u32, cdmax: u8| {
        let mut t = [0u8; 12];
        t[0..2].copy_from_slice(&FMT_ARM_SMMUV3.to_le_bytes());
        t[4..8].copy_from_slice(&fmts.to_le_bytes());
        t[8..12].copy_from_slice(&u32::from(cdmax).to_le_bytes());
        t
    };
    let reg64 = |regs: &[u8], at: usize| {
        let mut w = [0u8; 8];
        if let Some(s) = regs.get(at..at + 8) {
            w.copy_from_slice(s);
        }
        u64::from_le_bytes(w)
    };
    let pasid_bits = host.map_or(caps.pasid_bits, |h| h.pasid_bits.min(caps.pasid_bits));
    match host.map(|h| h.kind) {
        Some(HOST_IOMMU_SMMUV3) => {
            let regs = host.map(|h| h.regs.as_slice()).unwrap_or(&[]);
            let mut idr = [0u32; 6];
            for (k, w) in idr.iter_mut().enumerate() {
                let mut b = [0u8; 4];
                if let Some(s) = regs.get(k * 4..k * 4 + 4) {
                    b.copy_from_slice(s);
                }
                *w = u32::from_le_bytes(b);
            }
            let info = SmmuIdrInfo::from_idr(&idr);
            put(
                PROBE_T_OUTPUT_SIZE,
                &u32::from(info.cd_caps.max_oas).to_le_bytes(),
            )?;
            let bits = pasid_bits.min(info.ssid_bits);
            put(PROBE_T_PASID_SIZE, &u32::from(bits).to_le_bytes())?;
            // The host SMMU walks the guest's CD table: LINEAR always, 2-level with CD2L.
            let fmts = if info.cd2l { 0b111 } else { 0b001 };
            put(PROBE_T_PASID_TABLE_FMT, &pasid_table(fmts, bits))?;
        }
        Some(HOST_IOMMU_VTD) => {
            let regs = host.map(|h| h.regs.as_slice()).unwrap_or(&[]);
            let v = VtdHostCaps::from_regs(reg64(regs, 0), reg64(regs, 8));
            put(PROBE_T_OUTPUT_SIZE, &u32::from(v.haw).to_le_bytes())?;
            put(
                PROBE_T_PASID_SIZE,
                &u32::from(pasid_bits.min(v.pasid_bits)).to_le_bytes(),
            )?;
            put(
                PROBE_T_PAGE_TABLE_FMT,
                &fmt(FMT_INTEL_VTD_S1, vtd_bits(&v), 0),
            )?;
        }
        // The software walkers (and the selftest mock, which checks the uAPI whatever the
        // format): every format.
        _ => {
            put(
                PROBE_T_OUTPUT_SIZE,
                &u32::from(caps.stage1.max_oas).to_le_bytes(),
            )?;
            put(PROBE_T_PASID_SIZE, &u32::from(pasid_bits).to_le_bytes())?;
            // ARM_VMSA_S1: 4K/16K/64K granules, 16-bit ASIDs; no hardware A/D update.
            put(PROBE_T_PAGE_TABLE_FMT, &fmt(FMT_ARM_VMSA_S1, 0b111, 16))?;
            put(
                PROBE_T_PAGE_TABLE_FMT,
                &fmt(FMT_INTEL_VTD_S1, vtd_bits(&caps.vtd), 0),
            )?;
            put(PROBE_T_PASID_TABLE_FMT, &pasid_table(0b111, pasid_bits))?;
        }
    }
    // HOST_IOMMU: kind (0 software), reserved, then the host's registers.
    let mut h = Vec::with_capacity(4 + 32);
    h.extend_from_slice(&host.map_or(0u16, |h| h.kind).to_le_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(host.map_or(&[][..], |h| h.regs.as_slice()));
    put(PROBE_T_HOST_IOMMU, &h)?;
    put(
        PROBE_T_PAGE_REQUEST,
        &(MAX_PAGE_REQUEST_GROUPS as u32).to_le_bytes(),
    )?;
    Some(off)
}

/// What PROBE tells the guest about the host IOMMU that will walk its tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIommu {
    /// HOST_IOMMU kind: 1 Arm SMMUv3, 2 Intel VT-d, 3 the iommufd selftest mock.
    pub kind: u16,
    /// The GET_HW_INFO registers: SMMUv3 `idr[6], iidr, aidr` (32 bytes), VT-d `cap_reg,
    /// ecap_reg` (16 bytes), none for the mock.
    pub regs: Vec<u8>,
    /// PASID width every host device supports (0: none).
    pub pasid_bits: u8,
}

pub const HOST_IOMMU_SMMUV3: u16 = 1;
pub const HOST_IOMMU_VTD: u16 = 2;
pub const HOST_IOMMU_SELFTEST: u16 = 3;

/// Outstanding page-request groups per endpoint.
pub const MAX_PAGE_REQUEST_GROUPS: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    /// (type, value) of every property in a PROBE buffer.
    fn parse(props: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0;
        while off + 4 <= props.len() {
            let t = u16::from_le_bytes([props[off], props[off + 1]]);
            let l = usize::from(u16::from_le_bytes([props[off + 2], props[off + 3]]));
            if t == 0 {
                break;
            }
            out.push((t, props[off + 4..off + 4 + l].to_vec()));
            off += 4 + l;
        }
        out
    }

    fn u32_at(v: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(v[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn software_probe_properties() {
        let mut props = [0u8; 256];
        let end = probe_properties(&SoftCaps::new(20), None, &mut props, 0).unwrap();
        let p = parse(&props);
        let types: Vec<u16> = p.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, vec![4, 5, 6, 6, 7, 8, 9]);
        assert_eq!(u32_at(&p[0].1, 0), 48, "OUTPUT_SIZE");
        assert_eq!(u32_at(&p[1].1, 0), 20, "PASID_SIZE");
        assert_eq!(p[2].1[0..2], FMT_ARM_VMSA_S1.to_le_bytes());
        assert_eq!(p[3].1[0..2], FMT_INTEL_VTD_S1.to_le_bytes());
        assert_eq!(
            u32_at(&p[3].1, 4),
            0b111,
            "48- and 57-bit, 1 GiB pages, no SRE/EAFE/WPE granted"
        );
        assert_eq!((p[2].1.len(), p[2].1[8]), (12, 16), "VMSA: 16-bit ASIDs");
        assert_eq!((p[3].1.len(), p[3].1[8]), (12, 0), "VT-d: no ASID");
        for (t, v) in &p {
            assert_eq!(
                (4 + v.len()) % 8,
                0,
                "property {t} is a multiple of 8 bytes"
            );
        }
        assert_eq!(u32_at(&p[4].1, 4), 0b111, "LINEAR, 4KL2, 64KL2");
        assert_eq!(
            p[5].1,
            vec![0, 0, 0, 0],
            "HOST_IOMMU software, no registers"
        );
        assert!(end <= PROBE_PROPERTIES_SIZE);
    }

    #[test]
    fn vtd_host_probe_properties() {
        // CAP: FS5LP (bit 60) clear, MGAW (21:16) = 38 -> 39-bit HAW. ECAP: PSS (39:35) = 9
        // -> 10-bit PASIDs, EAFS (34) set, NEST (26).
        let cap: u64 = 38 << 16;
        let ecap: u64 = (9 << 35) | (1 << 34) | (1 << 26);
        let mut regs = cap.to_le_bytes().to_vec();
        regs.extend(ecap.to_le_bytes());
        let host = HostIommu {
            kind: HOST_IOMMU_VTD,
            regs: regs.clone(),
            pasid_bits: 16,
        };
        let mut props = [0u8; 256];
        probe_properties(&SoftCaps::new(20), Some(&host), &mut props, 0).unwrap();
        let p = parse(&props);
        let types: Vec<u16> = p.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, vec![4, 5, 6, 8, 9], "only the VT-d table format");
        assert_eq!(u32_at(&p[0].1, 0), 39, "OUTPUT_SIZE = HAW");
        assert_eq!(
            u32_at(&p[1].1, 0),
            10,
            "PASID width: the narrowest of config, device, ECAP"
        );
        assert_eq!(p[2].1[0..2], FMT_INTEL_VTD_S1.to_le_bytes());
        assert_eq!(u32_at(&p[2].1, 4), 0b01 | (1 << 9), "48-bit only, EAFE");
        assert_eq!(u32_at(&p[3].1, 0), u32::from(HOST_IOMMU_VTD));
        assert_eq!(p[3].1[4..], regs[..], "cap_reg, ecap_reg");
    }

    #[test]
    fn smmuv3_host_probe_properties() {
        // IDR0: S1P|S2P, CD2L (19); IDR1: SSIDSIZE (10:6) = 12; IDR5: OAS 44-bit (4), GRAN4K.
        let mut idr = [0u32; 8];
        idr[0] = 0b11 | (1 << 19);
        idr[1] = 12 << 6;
        idr[5] = 4 | (1 << 4);
        let regs: Vec<u8> = idr.iter().flat_map(|w| w.to_le_bytes()).collect();
        let host = HostIommu {
            kind: HOST_IOMMU_SMMUV3,
            regs: regs.clone(),
            pasid_bits: 20,
        };
        let mut props = [0u8; 256];
        let end = probe_properties(&SoftCaps::new(20), Some(&host), &mut props, 0).unwrap();
        let p = parse(&props);
        let types: Vec<u16> = p.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, vec![4, 5, 7, 8, 9], "only the CD-table format");
        assert_eq!(u32_at(&p[0].1, 0), 44);
        assert_eq!(u32_at(&p[1].1, 0), 12, "SSIDSIZE");
        assert_eq!(u32_at(&p[2].1, 4), 0b111, "CD2L: 2-level tables too");
        assert_eq!(u32_at(&p[2].1, 8), 12, "max S1CDMax");
        assert_eq!(u32_at(&p[3].1, 0), u32::from(HOST_IOMMU_SMMUV3));
        assert_eq!(p[3].1[4..], regs[..], "idr[6], iidr, aidr");
        assert!(
            end <= PROBE_PROPERTIES_SIZE,
            "the largest set fits the size validation uses"
        );
        // Without CD2L: linear tables only.
        let mut idr0 = host.clone();
        idr0.regs[2] &= !(1 << 3); // bit 19 of IDR0
        let mut props = [0u8; 256];
        probe_properties(&SoftCaps::new(20), Some(&idr0), &mut props, 0).unwrap();
        assert_eq!(u32_at(&parse(&props)[2].1, 4), 0b001);
    }
}
