//! Property tests: the walkers against the independent builders, and against hostile memory.

use std::cell::Cell;
use std::collections::BTreeMap;

use pagetables::build::vmsa::VmsaBuilder;
use pagetables::build::vtd::VtdBuilder;
use pagetables::build::{Prot, TableAllocator};
use pagetables::vmsa::{Granule, Stage1, Stage1Caps, Stage1Params};
use pagetables::vtd::{FirstStage, FirstStageParams, VtdFlags};
use pagetables::{Fault, GuestMemoryRead, MemoryError, TestMemory, TranslationFaultKind};
use proptest::prelude::*;

const TABLE_RAM: std::ops::Range<u64> = 0x1_0000_0000..0x1_4000_0000;

#[derive(Debug, Clone)]
struct Req {
    chunk: u64,
    size_class: usize,
    offset_seed: u64,
    pa_seed: u64,
    probe_seed: u64,
    prot: Prot,
}

fn prot() -> impl Strategy<Value = Prot> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(write, user, exec)| Prot {
        write,
        user,
        exec,
    })
}

fn reqs() -> impl Strategy<Value = Vec<Req>> {
    prop::collection::vec(
        (
            any::<u64>(),
            0usize..3,
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prot(),
        )
            .prop_map(
                |(chunk, size_class, offset_seed, pa_seed, probe_seed, prot)| Req {
                    chunk,
                    size_class,
                    offset_seed,
                    pa_seed,
                    probe_seed,
                    prot,
                },
            ),
        1..24,
    )
}

/// A placed mapping.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    iova: u64,
    pa: u64,
    size: u64,
    prot: Prot,
    probe: u64,
}

/// One mapping per chunk of `chunk_size` bytes, chunks chosen among `chunks`.
fn place(
    reqs: &[Req],
    sizes: &[u64],
    chunks: u64,
    chunk_size: u64,
    oa_bits: u32,
) -> BTreeMap<u64, Mapping> {
    let mut out = BTreeMap::new();
    for r in reqs {
        let chunk = r.chunk % chunks;
        if out.contains_key(&chunk) {
            continue;
        }
        let size = sizes[r.size_class % sizes.len()];
        let slots = chunk_size / size;
        let iova = chunk * chunk_size + (r.offset_seed % slots) * size;
        let pa = (r.pa_seed % (1u64 << oa_bits)) & !(size - 1);
        out.insert(
            chunk,
            Mapping {
                iova,
                pa,
                size,
                prot: r.prot,
                probe: r.probe_seed % size,
            },
        );
    }
    out
}

fn vmsa_config() -> impl Strategy<Value = (Granule, u8, bool, bool)> {
    (0usize..3, any::<bool>(), any::<bool>()).prop_flat_map(|(g, oa52, be)| {
        let granule = [Granule::K4, Granule::K16, Granule::K64][g];
        let oa52 = oa52 && granule == Granule::K64;
        let min_t0sz = if oa52 { 12u8 } else { 16 };
        (Just(granule), min_t0sz..=39u8, Just(oa52), Just(be))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn vmsa_walk_matches_builder((granule, t0sz, oa52, be) in vmsa_config(), reqs in reqs()) {
        let mut mem = TestMemory::single(TABLE_RAM);
        let alloc = TableAllocator::new(TABLE_RAM.start, TABLE_RAM.end);
        let mut b = VmsaBuilder::new(granule, t0sz, oa52, be, alloc).unwrap();
        let mut params = Stage1Params::new(granule, t0sz, b.ttb0());
        params.big_endian = be;
        if oa52 {
            params.ips = 6;
            params.caps = Stage1Caps { max_oas: 52, lva: true };
        }
        let walker = Stage1::new(params).unwrap();
        prop_assert_eq!(walker.start_level(), b.first_level());
        let ia = 64 - u32::from(t0sz);
        // Keep 4 TiB blocks out of small address spaces' chunking.
        let sizes: Vec<u64> = b.leaf_sizes().into_iter().filter(|&s| s < (1u64 << ia)).collect();
        let chunk_size = *sizes.last().unwrap();
        let chunks = (1u64 << ia) / chunk_size;
        let oa_bits = if oa52 { 52 } else { 48 };
        let maps = place(&reqs, &sizes, chunks, chunk_size, oa_bits);
        for m in maps.values() {
            b.map(&mut mem, m.iova, m.pa, m.size, m.prot).unwrap();
        }
        for m in maps.values() {
            let t = walker.walk(&mem, m.iova + m.probe).unwrap();
            prop_assert_eq!(t.output, m.pa + m.probe);
            prop_assert_eq!(t.page_size, m.size);
            prop_assert_eq!(t.page_iova(), m.iova);
            prop_assert_eq!(t.perms, m.prot.expected(true, true));
            prop_assert!(t.attrs.access_flag);
            let (leaf_at, level) = b.descriptor_address(&mem, m.iova).unwrap();
            prop_assert_eq!((t.leaf_address, t.level), (leaf_at, level));
            // Just past the mapping, inside the same chunk (or the next, unmapped or not).
            let after = m.iova + m.size;
            if !after.is_multiple_of(chunk_size) {
                let r = walker.walk(&mem, after);
                prop_assert!(
                    matches!(r, Err(Fault::Translation { kind: TranslationFaultKind::NotPresent, .. })),
                    "{:?}", r
                );
            }
        }
        // Unused chunks fault.
        for r in &reqs {
            let chunk = r.probe_seed % chunks;
            if !maps.contains_key(&chunk) {
                let res = walker.walk(&mem, chunk * chunk_size + r.offset_seed % chunk_size);
                prop_assert!(
                    matches!(res, Err(Fault::Translation { kind: TranslationFaultKind::NotPresent, .. })),
                    "{:?}", res
                );
            }
        }
        // Beyond the input range.
        if ia < 64 {
            let r = walker.walk(&mem, 1u64 << ia);
            prop_assert_eq!(
                r,
                Err(Fault::Translation { level: walker.start_level(), kind: TranslationFaultKind::InputOutOfRange })
            );
        }
    }

    #[test]
    fn vtd_walk_matches_builder(
        five in any::<bool>(),
        (sre, wpe, eafe) in (any::<bool>(), any::<bool>(), any::<bool>()),
        reqs in reqs(),
    ) {
        let mut mem = TestMemory::single(TABLE_RAM);
        let alloc = TableAllocator::new(TABLE_RAM.start, TABLE_RAM.end);
        let mut b = VtdBuilder::new(five, alloc).unwrap();
        let mut p = FirstStageParams::new(b.pgtbl(), b.addr_width());
        p.flags = VtdFlags { sre, wpe, eafe };
        let walker = FirstStage::new(p).unwrap();
        let n = u32::from(b.addr_width());
        let sizes = [0x1000u64, 0x20_0000, 0x4000_0000];
        let chunk_size = 0x4000_0000u64;
        let chunks = 1u64 << (n - 30);
        let maps = place(&reqs, &sizes, chunks, chunk_size, 52);
        // Sign-extend chunk addresses into canonical form.
        let canon = |a: u64| -> u64 {
            if a >> (n - 1) & 1 == 1 { a | !((1u64 << n) - 1) } else { a }
        };
        for m in maps.values() {
            b.map(&mut mem, canon(m.iova), m.pa, m.size, m.prot).unwrap();
        }
        for m in maps.values() {
            let iova = canon(m.iova) + m.probe;
            let t = walker.walk(&mem, iova).unwrap();
            prop_assert_eq!(t.output, m.pa + m.probe);
            prop_assert_eq!(t.page_size, m.size);
            prop_assert_eq!(t.perms, m.prot.expected(sre, wpe));
            prop_assert!(t.attrs.accessed);
            prop_assert_eq!(t.attrs.extended_accessed, eafe.then_some(false));
            let (at, level) = b.entry_address(&mem, canon(m.iova)).unwrap();
            prop_assert_eq!((t.leaf_address, t.level), (at, level));
        }
        for r in &reqs {
            let chunk = r.probe_seed % chunks;
            if !maps.contains_key(&chunk) {
                let res = walker.walk(&mem, canon(chunk * chunk_size + r.offset_seed % chunk_size));
                prop_assert!(
                    matches!(res, Err(Fault::Translation { kind: TranslationFaultKind::NotPresent, .. })),
                    "{:?}", res
                );
            }
        }
    }
}

/// Memory where every word below 2^`ram_bits` holds pseudo-random data; counts reads.
struct HostileMemory {
    seed: u64,
    ram_bits: u32,
    reads: Cell<u32>,
}

impl GuestMemoryRead for HostileMemory {
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        self.reads.set(self.reads.get() + 1);
        if !gpa.is_multiple_of(8) {
            return Err(MemoryError::Unaligned { gpa });
        }
        if gpa >> self.ram_bits != 0 {
            return Err(MemoryError::OutOfRange { gpa, len: 8 });
        }
        // splitmix64 of (seed, address)
        let mut z = self.seed ^ gpa.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // Make valid-looking descriptors likely, so walks go deep.
        Ok(if z & 0x300 != 0 {
            z | 0b11 | (1 << 10)
        } else {
            z
        })
    }

    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        match gpa.checked_add(len) {
            Some(end) if end <= 1u64 << self.ram_bits => Ok(()),
            _ => Err(MemoryError::OutOfRange { gpa, len }),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn vmsa_hostile_tables_bounded(
        (granule, t0sz, oa52, be) in vmsa_config(),
        seed in any::<u64>(),
        ram_bits in 20u32..53,
        iova in any::<u64>(),
        (affd, ha, hd, had0, tbi0) in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
    ) {
        let mem = HostileMemory { seed, ram_bits, reads: Cell::new(0) };
        let mut p = Stage1Params::new(granule, t0sz, 0);
        p.big_endian = be;
        p.affd = affd;
        p.ha = ha;
        p.hd = hd;
        p.had0 = had0;
        p.tbi0 = tbi0;
        if oa52 {
            p.ips = 6;
            p.caps = Stage1Caps { max_oas: 52, lva: true };
        }
        let w = Stage1::new(p).unwrap();
        let ia = 64 - u32::from(t0sz);
        let iova = iova >> (64 - ia);
        let r = w.walk(&mem, iova);
        prop_assert!(mem.reads.get() <= 4 - u32::from(w.start_level()));
        if let Ok(t) = r {
            prop_assert!(t.output >> w.output_bits() == 0);
            prop_assert_eq!((t.output ^ iova) & (t.page_size - 1), 0);
            prop_assert!(t.level >= w.start_level() && t.level <= 3);
        }
    }

    #[test]
    fn vtd_hostile_tables_bounded(
        five in any::<bool>(),
        seed in any::<u64>(),
        ram_bits in 20u32..53,
        haw in 39u8..=52,
        iova in any::<u64>(),
        flags in 0u64..8,
    ) {
        let mem = HostileMemory { seed, ram_bits, reads: Cell::new(0) };
        let mut p = FirstStageParams::new(0, if five { 57 } else { 48 });
        p.haw = haw;
        p.flags = VtdFlags::from_bits(flags).unwrap();
        let w = FirstStage::new(p).unwrap();
        let n = u32::from(p.addr_width);
        // Canonical half the time.
        let upper = !((1u64 << (n - 1)) - 1);
        let iova = match seed & 3 {
            0 => iova,
            1 => iova & !upper,
            _ => iova | upper,
        };
        let r = w.walk(&mem, iova);
        prop_assert!(mem.reads.get() <= u32::from(w.levels()));
        if let Ok(t) = r {
            prop_assert!(t.output >> haw == 0);
            prop_assert_eq!((t.output ^ iova) & (t.page_size - 1), 0);
            prop_assert!([0x1000u64, 0x20_0000, 0x4000_0000].contains(&t.page_size));
        }
    }
}
