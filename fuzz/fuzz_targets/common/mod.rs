//! Shared by the device fuzz targets: an input reader, device construction from a config byte,
//! and the invariants checked after every step.

// Each target uses part of this module.
#![allow(dead_code)]

use model::config::{DeviceConfig, EndpointSet, ReservedRegion};
use model::device::{Device, Reply};
use model::mapping::Mapping;
use model::protocol::*;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

/// Guest RAM the device walks tables in: 64 KiB at GPA 0 (16 pages, enough for a 5-level
/// table and a CD table).
pub const RAM_SIZE: usize = 0x1_0000;

/// Reads the fuzz input front to back; past its end every read yields zeros / `None`.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    pub fn u16(&mut self) -> u16 {
        let mut w = [0u8; 2];
        let b = self.bytes(2);
        w[..b.len()].copy_from_slice(b);
        u16::from_le_bytes(w)
    }
    pub fn u32(&mut self) -> u32 {
        let mut w = [0u8; 4];
        let b = self.bytes(4);
        w[..b.len()].copy_from_slice(b);
        u32::from_le_bytes(w)
    }
    pub fn u64(&mut self) -> u64 {
        let mut w = [0u8; 8];
        let b = self.bytes(8);
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    }
}

/// The device configuration selected by one input byte: each bit turns on a restriction, so
/// the fuzzer reaches every check of DEVICE.md (NOENT endpoints, RANGE domains and IOVAs,
/// NOMEM, legacy bypass, the extension off).
pub fn config(sel: u8) -> DeviceConfig {
    let mut cfg = DeviceConfig::default();
    if sel & 1 != 0 {
        cfg.endpoints = EndpointSet::Ranges(vec![(0, 15), (1024, 1024)]);
    }
    if sel & 2 != 0 {
        cfg.legacy_bypass = true;
    }
    if sel & 4 != 0 {
        cfg.boot_bypass = true;
    }
    if sel & 8 != 0 {
        cfg.domain_start = 1;
        cfg.domain_end = 63;
    }
    if sel & 16 != 0 {
        cfg.input_start = 0x1_0000;
        cfg.input_end = 0xffff_ffff;
    }
    if sel & 32 != 0 {
        cfg.pasid_bits = 0;
    }
    if sel & 64 != 0 {
        cfg.max_mappings = 8;
    }
    if sel & 128 != 0 {
        // 64 KiB granule and two reserved regions.
        cfg.page_size_mask = !0xffff;
        cfg.reserved.push(ReservedRegion {
            start: 0x8000_0000,
            end: 0x8fff_ffff,
            subtype: RESV_MEM_T_RESERVED,
        });
    }
    // Every combination is a configuration the daemon would accept.
    if let Err(e) = cfg.validate() {
        panic!("fuzz config {sel:#x}: {e}");
    }
    cfg
}

pub fn guest_memory() -> GuestMemoryAtomic<GuestMemoryMmap> {
    // A fixed, valid layout: cannot fail short of the host running out of address space.
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE)])
        .unwrap_or_else(|e| panic!("guest memory: {e}"));
    GuestMemoryAtomic::new(mem)
}

/// Everything a failing request must leave unchanged.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    endpoints: Vec<(u32, Option<u32>)>,
    domains: Vec<(u32, bool, Vec<u32>, Vec<Mapping>, Option<u16>)>,
    total: u64,
    pasid: Vec<(u32, u32, u32)>,
    page_requests: Vec<(u32, u32)>,
    bypass: u8,
    acked: Option<u64>,
}

pub fn snapshot(dev: &Device) -> Snapshot {
    Snapshot {
        endpoints: dev.endpoint_list().collect(),
        domains: dev
            .domain_list()
            .map(|(id, bypass, eps, _)| {
                let maps = dev
                    .domain_mappings(id)
                    .map(|t| t.iter().collect())
                    .unwrap_or_default();
                (id, bypass, eps, maps, dev.domain_table(id).map(|t| t.0))
            })
            .collect(),
        total: dev.total_mappings(),
        pasid: dev.pasid_attach_list().collect(),
        page_requests: dev.page_request_list().map(|(e, g, _)| (e, g)).collect(),
        bypass: dev.bypass(),
        acked: dev.acked_features(),
    }
}

/// The invariants of the device model, whatever happened before.
pub fn check_invariants(dev: &Device) {
    let cfg = dev.config();
    let g = cfg.granule();
    let endpoints: std::collections::BTreeMap<u32, Option<u32>> = dev.endpoint_list().collect();
    let pasids: Vec<(u32, u32, u32)> = dev.pasid_attach_list().collect();
    let mut total = 0u64;
    for (id, bypass, eps, count) in dev.domain_list() {
        // Only a domain ATTACH_TABLE created (PASID.md revision 2: an SVA domain before its
        // ATTACH_PASID) may exist with nothing attached, and then it has its table.
        assert!(
            !eps.is_empty() || pasids.iter().any(|p| p.2 == id) || dev.domain_table(id).is_some(),
            "domain {id} exists with nothing attached and no table"
        );
        for e in &eps {
            assert_eq!(endpoints.get(e), Some(&Some(id)), "endpoint {e} of {id}");
        }
        let table = dev.domain_table(id);
        let maps: Vec<Mapping> = dev
            .domain_mappings(id)
            .map(|t| t.iter().collect())
            .unwrap_or_default();
        assert_eq!(maps.len(), count);
        if bypass || table.is_some() {
            assert!(maps.is_empty(), "bypass/table domain {id} has mappings");
        }
        if bypass {
            assert!(table.is_none(), "bypass domain {id} has a table");
        }
        for m in &maps {
            assert!(m.virt_start <= m.virt_end, "{m:?}");
            assert!(m.virt_start.is_multiple_of(g) && m.phys_start.is_multiple_of(g));
            assert!(m
                .virt_end
                .checked_add(1)
                .is_none_or(|e| e.is_multiple_of(g)));
            assert!(m.virt_start >= cfg.input_start && m.virt_end <= cfg.input_end);
            assert!(cfg.overlaps_reserved(m.virt_start, m.virt_end).is_none());
            assert!(m
                .phys_start
                .checked_add(m.virt_end - m.virt_start)
                .is_some());
            assert_eq!(m.flags & !(MAP_F_READ | MAP_F_WRITE | MAP_F_MMIO), 0);
        }
        for w in maps.windows(2) {
            assert!(w[0].virt_end < w[1].virt_start, "overlap {:?}", w);
        }
        total += count as u64;
    }
    assert_eq!(dev.total_mappings(), total, "total mapping count");
    assert!(total <= cfg.max_mappings);
    for (e, d) in &endpoints {
        assert!(cfg.endpoints.contains(*e), "unknown endpoint {e} is known");
        if let Some(d) = d {
            let found = dev
                .domain_list()
                .any(|(id, _, eps, _)| id == *d && eps.contains(e));
            assert!(found, "endpoint {e} in missing domain {d}");
        }
    }
    for (e, _, d) in &pasids {
        let dom = dev.domain_list().find(|x| x.0 == *d);
        assert!(dom.is_some_and(|x| !x.1), "pasid pair of {e} in {d}");
        assert!(endpoints.contains_key(e));
    }
}

/// One request through the device, with the checks that depend on its outcome.
pub fn request(dev: &mut Device, req: &[u8], props_len: usize) -> Reply {
    let before = snapshot(dev);
    let mut props = vec![0u8; props_len];
    let reply = dev.handle_request(req, &mut props);
    let type_ = req.first().copied().unwrap_or(0);
    match reply {
        Reply::Status(Status::Ok) => {
            post_ok(dev, req);
        }
        Reply::Status(_) | Reply::Ignore => {
            assert_eq!(
                before,
                snapshot(dev),
                "failed request changed the state: {reply:?}"
            );
        }
    }
    let wrote_props = props.iter().any(|&b| b != 0);
    if wrote_props {
        assert!(
            type_ == T_PROBE && reply == Reply::Status(Status::Ok),
            "{reply:?} of type {type_} wrote the properties area"
        );
    }
    check_invariants(dev);
    reply
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        u64::from_le_bytes(w)
    })
}

/// What an OK of the standard requests guarantees (DEVICE.md).
fn post_ok(dev: &Device, req: &[u8]) {
    match req[0] {
        T_ATTACH => {
            let (domain, ep) = (le32(req, 4), le32(req, 8));
            assert!(dev.endpoint_list().any(|x| x == (ep, Some(domain))));
        }
        T_DETACH => {
            let ep = le32(req, 8);
            assert!(dev.endpoint_list().any(|x| x == (ep, None)));
        }
        T_MAP => {
            let (domain, start, end, phys, flags) = (
                le32(req, 4),
                le64(req, 8),
                le64(req, 16),
                le64(req, 24),
                le32(req, 32),
            );
            let m = dev.domain_mappings(domain).and_then(|t| t.lookup(start));
            assert_eq!(
                m,
                Some(Mapping {
                    virt_start: start,
                    virt_end: end,
                    phys_start: phys,
                    flags
                })
            );
        }
        T_UNMAP => {
            let (domain, start, end) = (le32(req, 4), le64(req, 8), le64(req, 16));
            if let Some(t) = dev.domain_mappings(domain) {
                assert!(
                    !t.iter().any(|m| m.virt_start <= end && start <= m.virt_end),
                    "UNMAP OK left a mapping in {start:#x}-{end:#x}"
                );
            }
        }
        _ => {}
    }
}
