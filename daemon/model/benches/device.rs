//! Device-model benchmark: cost of MAP/UNMAP requests and of software-backend translations as the
//! number of live mappings grows, and daemon memory per live mapping.
//!
//! `cargo bench -p vhost-user-iommu --bench device` prints a table (docs/BENCHMARKS.md keeps the
//! results). Timings are wall-clock on a shared machine: compare rows of one run, not runs.

// A benchmark's set-up either works or the run is meaningless: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use vhost_user_iommu_model::config::{DeviceConfig, EndpointSet};
use vhost_user_iommu_model::device::{Access, Device, Reply};
use vhost_user_iommu_model::protocol::*;

/// Counts live heap bytes so that memory per mapping is measured, not estimated.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn map_req(domain: u32, start: u64, len: u64, phys: u64) -> [u8; 36] {
    let mut v = [0u8; 36];
    v[0] = T_MAP;
    v[4..8].copy_from_slice(&domain.to_le_bytes());
    v[8..16].copy_from_slice(&start.to_le_bytes());
    v[16..24].copy_from_slice(&(start + len - 1).to_le_bytes());
    v[24..32].copy_from_slice(&phys.to_le_bytes());
    v[32..36].copy_from_slice(&(MAP_F_READ | MAP_F_WRITE).to_le_bytes());
    v
}

fn unmap_req(domain: u32, start: u64, len: u64) -> [u8; 28] {
    let mut v = [0u8; 28];
    v[0] = T_UNMAP;
    v[4..8].copy_from_slice(&domain.to_le_bytes());
    v[8..16].copy_from_slice(&start.to_le_bytes());
    v[16..24].copy_from_slice(&(start + len - 1).to_le_bytes());
    v
}

fn attach_req(domain: u32, ep: u32) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[0] = T_ATTACH;
    v[4..8].copy_from_slice(&domain.to_le_bytes());
    v[8..12].copy_from_slice(&ep.to_le_bytes());
    v
}

fn device() -> Device {
    let mut d = Device::new(DeviceConfig {
        endpoints: EndpointSet::Any,
        reserved: vec![],
        ..DeviceConfig::default()
    });
    d.set_acked_features(d.features());
    let mut none = [];
    assert_eq!(
        d.handle_request(&attach_req(1, 0), &mut none),
        Reply::Status(Status::Ok)
    );
    d
}

fn ok(d: &mut Device, req: &[u8]) {
    let mut none = [];
    let r = d.handle_request(req, &mut none);
    debug_assert_eq!(r, Reply::Status(Status::Ok));
    black_box(r);
}

/// Fill `live` 4 KiB mappings spread over the space (every other page), then time `ops`
/// MAP+UNMAP pairs of 4 KiB (or `size`) pages placed among them.
fn map_unmap(live: u64, ops: u64, size: u64) -> (f64, f64) {
    let mut d = device();
    for i in 0..live {
        ok(&mut d, &map_req(1, i * 0x2000, 0x1000, i * 0x1000));
    }
    // Fresh IOVAs above the live ones, spread like an IOVA allocator would.
    let base = live * 0x2000 + (1 << 32);
    let t = Instant::now();
    for i in 0..ops {
        ok(&mut d, &map_req(1, base + i * size, size, 0));
    }
    let map_ns = t.elapsed().as_nanos() as f64 / ops as f64;
    let t = Instant::now();
    for i in 0..ops {
        ok(&mut d, &unmap_req(1, base + i * size, size));
    }
    let unmap_ns = t.elapsed().as_nanos() as f64 / ops as f64;
    (map_ns, unmap_ns)
}

fn memory_per_mapping(n: u64) -> f64 {
    let mut d = device();
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..n {
        ok(&mut d, &map_req(1, i * 0x1000, 0x1000, i * 0x1000));
    }
    let after = LIVE.load(Ordering::Relaxed);
    black_box(&d);
    after.wrapping_sub(before) as f64 / n as f64
}

fn translate_rate(live: u64, lookups: u64) -> f64 {
    let mut d = device();
    for i in 0..live {
        ok(&mut d, &map_req(1, i * 0x1000, 0x1000, i * 0x1000));
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let t = Instant::now();
    for _ in 0..lookups {
        // xorshift: random pages, so the tree walk is not cache-friendly by accident.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let iova = (x % live) * 0x1000 + 0x10;
        black_box(d.translate(0, iova, Access::Read).ok());
    }
    lookups as f64 / t.elapsed().as_secs_f64()
}

/// Guest memory as the table builder sees it.
struct BuildMem<'a>(&'a vm_memory::GuestMemoryMmap);

impl pagetables::GuestMemoryRead for BuildMem<'_> {
    fn read_u64(&self, gpa: u64) -> Result<u64, pagetables::MemoryError> {
        pagetables::mem::VmMemory(self.0).read_u64(gpa)
    }
    fn check_range(&self, gpa: u64, len: u64) -> Result<(), pagetables::MemoryError> {
        pagetables::mem::VmMemory(self.0).check_range(gpa, len)
    }
}

impl pagetables::build::GuestMemoryWrite for BuildMem<'_> {
    fn write_u64(&mut self, gpa: u64, value: u64) -> Result<(), pagetables::MemoryError> {
        use vm_memory::Bytes;
        self.0
            .write_slice(&value.to_le_bytes(), vm_memory::GuestAddress(gpa))
            .map_err(|_| pagetables::MemoryError::OutOfRange { gpa, len: 8 })
    }
}

/// translate() through a guest VT-d first-stage table of `pages` 4 KiB pages: lookups per
/// second when every lookup walks the table (IOTLB miss: each round invalidates first) and when
/// the IOTLB holds the page (hit).
fn table_translate_rates(pages: u64, lookups: u64) -> (f64, f64) {
    use pagetables::build::vtd::VtdBuilder;
    use pagetables::build::{Prot, TableAllocator};
    let ram =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 64 << 20)])
            .expect("guest memory");
    let mut b = VtdBuilder::new(false, TableAllocator::new(32 << 20, 64 << 20)).expect("builder");
    let prot = Prot {
        write: true,
        user: true,
        exec: false,
    };
    for i in 0..pages {
        b.map(&mut BuildMem(&ram), i << 12, (i % 4096) << 12, 0x1000, prot)
            .expect("map");
    }
    let mut d = device();
    d.set_walk_memory(vm_memory::GuestMemoryAtomic::new(ram));
    let mut req = vec![T_ATTACH_TABLE, 0, 0, 0];
    req.extend(1u32.to_le_bytes());
    req.extend(FMT_INTEL_VTD_S1.to_le_bytes());
    req.extend([0u8; 6]);
    let mut desc = [0u8; 48];
    desc[0..4].copy_from_slice(&48u32.to_le_bytes());
    desc[8..16].copy_from_slice(&b.pgtbl().to_le_bytes());
    req.extend(desc);
    req.extend([0u8; 4]);
    let mut none = [];
    assert_eq!(d.handle_request(&req, &mut none), Reply::Status(Status::Ok));
    let mut inv = vec![T_INVALIDATE, 0, 0, 0];
    inv.extend(INV_SCOPE_DOMAIN.to_le_bytes());
    inv.extend(INV_CACHE_IOTLB.to_le_bytes());
    inv.extend([0u8; 4]);
    inv.extend(1u32.to_le_bytes());
    inv.extend([0u8; 44]);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % pages) << 12
    };
    // Misses: empty the IOTLB before each lookup (the INVALIDATE's cost is included).
    let t = Instant::now();
    for _ in 0..lookups / 10 {
        assert_eq!(d.handle_request(&inv, &mut none), Reply::Status(Status::Ok));
        black_box(d.translate(0, next(), Access::Read).ok());
    }
    let miss = (lookups / 10) as f64 / t.elapsed().as_secs_f64();
    // Hits: warm every page, then look up at random.
    for i in 0..pages {
        black_box(d.translate(0, i << 12, Access::Read).ok());
    }
    let t = Instant::now();
    for _ in 0..lookups {
        black_box(d.translate(0, next(), Access::Read).ok());
    }
    let hit = lookups as f64 / t.elapsed().as_secs_f64();
    (miss, hit)
}

fn main() {
    println!("| live mappings | MAP 4K ns | UNMAP 4K ns | MAP 2M ns | UNMAP 2M ns |");
    println!("|---:|---:|---:|---:|---:|");
    for live in [1u64, 10_000, 1_000_000] {
        let (m4, u4) = map_unmap(live, 200_000, 0x1000);
        let (m2, u2) = map_unmap(live, 200_000, 0x20_0000);
        println!("| {live} | {m4:.0} | {u4:.0} | {m2:.0} | {u2:.0} |");
    }
    println!();
    println!("| live mappings | heap bytes per 4 KiB mapping |");
    println!("|---:|---:|");
    for n in [10_000u64, 1_000_000] {
        println!("| {n} | {:.1} |", memory_per_mapping(n));
    }
    println!();
    println!("| live mappings | translate() lookups/s (random pages) |");
    println!("|---:|---:|");
    for live in [1u64, 10_000, 1_000_000] {
        println!("| {live} | {:.2e} |", translate_rate(live, 2_000_000));
    }
    println!();
    println!("| guest table (VT-d, 4-level) | IOTLB miss (walk) lookups/s | IOTLB hit lookups/s |");
    println!("|---:|---:|---:|");
    for pages in [64u64, 4096] {
        let (miss, hit) = table_translate_rates(pages, 2_000_000);
        println!("| {pages} pages | {miss:.2e} | {hit:.2e} |");
    }
}
