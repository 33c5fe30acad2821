//! Property tests for PASID spaces, STE fragments and CD tables.

use std::collections::{BTreeMap, BTreeSet};

use pagetables::build::TableAllocator;
use pagetables::vmsa::Granule;
use pagetables::TestMemory;
use pasid::smmuv3::build::{CdFields, CdTableBuilder};
use pasid::smmuv3::{
    CdCaps, ContextDescriptor, GranuleSupport, GuestSte, S1Dss, S1Fmt, SteHostPolicy, SteS1,
};
use pasid::{PasidError, PasidSpace};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Alloc,
    Insert(u32),
    Remove(u32),
}

fn op(width: u8) -> impl Strategy<Value = Op> {
    let max = 1u32 << width;
    prop_oneof![
        3 => Just(Op::Alloc),
        2 => (0..max + 2).prop_map(Op::Insert),
        2 => (0..max + 2).prop_map(Op::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The bitmap-backed space behaves like a sorted-set model.
    #[test]
    fn pasid_space_matches_model(
        (width, reserve_zero, ops) in (0u8..=7, any::<bool>())
            .prop_flat_map(|(w, r)| (Just(w), Just(r), prop::collection::vec(op(w), 0..300)))
    ) {
        let mut space = PasidSpace::new(width, reserve_zero).unwrap();
        let mut model: BTreeMap<u32, usize> = BTreeMap::new();
        let cap = 1u32 << width;
        for (i, o) in ops.iter().enumerate() {
            match *o {
                Op::Alloc => {
                    let expect = (u32::from(reserve_zero)..cap).find(|p| !model.contains_key(p));
                    match (space.alloc(i), expect) {
                        (Ok(p), Some(e)) => { prop_assert_eq!(p, e); model.insert(p, i); }
                        (Err(PasidError::Exhausted), None) => {}
                        (r, e) => prop_assert!(false, "alloc {:?} expected {:?}", r, e),
                    }
                }
                Op::Insert(p) => {
                    let r = space.insert(p, i);
                    if p >= cap {
                        prop_assert_eq!(r, Err(PasidError::OutOfRange { pasid: p, bits: width }));
                    } else if reserve_zero && p == 0 {
                        prop_assert_eq!(r, Err(PasidError::Reserved(0)));
                    } else if let std::collections::btree_map::Entry::Vacant(e) = model.entry(p) {
                        prop_assert_eq!(r, Ok(()));
                        e.insert(i);
                    } else {
                        prop_assert_eq!(r, Err(PasidError::Busy(p)));
                    }
                }
                Op::Remove(p) => {
                    let r = space.remove(p);
                    match model.remove(&p) {
                        Some(v) => prop_assert_eq!(r, Ok(v)),
                        None => prop_assert!(r.is_err()),
                    }
                }
            }
            prop_assert_eq!(space.len(), model.len());
        }
        let got: BTreeSet<u32> = space.iter().map(|(p, _)| p).collect();
        let want: BTreeSet<u32> = model.keys().copied().collect();
        prop_assert_eq!(got, want);
    }

    /// ATTACH_TABLE fields -> iommufd STE -> decoded guest STE gives the same fields back, and
    /// the host-owned bits are the policy's.
    #[test]
    fn ste_fields_round_trip(
        fmt in 0u8..3,
        dss in 0u8..3,
        slot in 0u64..1024,
        cdmax in 0u32..=20,
        policy in (0u8..4, 0u8..4, 0u8..4, any::<bool>(), any::<bool>()),
    ) {
        let mem = TestMemory::single(0x1_0000_0000..0x1_8000_0000);
        let ptr = 0x1_0000_0000 + slot * 64;
        let policy = SteHostPolicy { cir: policy.0, cor: policy.1, csh: policy.2, stall_disable: policy.3, ats: policy.4 };
        let s = SteS1::from_fields(fmt, dss, ptr, cdmax, 20, &mem).unwrap();
        let words = s.to_iommufd(&policy);
        let back = GuestSte::decode(words, 20, &mem).unwrap();
        let GuestSte::S1(b) = back else { panic!("{back:?}") };
        prop_assert_eq!(b.context_ptr, ptr);
        prop_assert_eq!(u32::from(b.cdmax), cdmax);
        if cdmax > 0 {
            prop_assert_eq!(b, s);
        }
        prop_assert_eq!((words[1] >> 2) & 3, u64::from(policy.cir));
        prop_assert_eq!((words[1] >> 4) & 3, u64::from(policy.cor));
        prop_assert_eq!((words[1] >> 6) & 3, u64::from(policy.csh));
        prop_assert_eq!((words[1] >> 27) & 1, u64::from(policy.stall_disable));
        prop_assert_eq!((words[1] >> 28) & 3, u64::from(policy.ats));
        prop_assert_eq!(back.to_iommufd(&policy), words);
    }

    /// Arbitrary guest STE words never panic; accepted ones re-encode to the same stage-1
    /// fields with only host-owned bits changed.
    #[test]
    fn arbitrary_guest_ste(w0 in any::<u64>(), w1 in any::<u64>(), pasid_bits in 0u8..=20, sparse in any::<bool>()) {
        let mem = TestMemory::single(0..1 << 40);
        // Make the interesting Config values likely.
        let w0 = if sparse { (w0 & 0xf800_0000_0000_00ff) | (w0 & 0x000f_ffff_ffff_ffc0) } else { w0 };
        let w1 = if sparse { w1 & 0x3800_00ff } else { w1 };
        let policy = SteHostPolicy::default();
        if let Ok(g) = GuestSte::decode([w0, w1], pasid_bits, &mem) {
            let out = g.to_iommufd(&policy);
            if let GuestSte::S1(s) = g {
                prop_assert!(u32::from(s.cdmax) <= u32::from(pasid_bits));
                prop_assert_eq!(out[0] & 0x000f_ffff_ffff_ffc0, w0 & 0x000f_ffff_ffff_ffc0);
                prop_assert_eq!(out[0] >> 59, w0 >> 59);
                if s.cdmax > 0 {
                    prop_assert_eq!(out[0], w0);
                    prop_assert_eq!(out[1] & 3, w1 & 3);
                }
            }
            // Nothing outside the stage-1 fragment is ever emitted.
            prop_assert_eq!(out[1] & !0x3800_00ff, 0);
            prop_assert_eq!(out[0] & 0x07f0_0000_0000_0000, 0);
        }
    }

    /// CD fields written into a linear or 2-level CD table at a random SSID decode to the same
    /// fields through STE -> (L1) -> CD.
    #[test]
    fn cd_table_round_trip(
        fmt in 0u8..3,
        cdmax in 1u8..=20,
        ssid_seed in any::<u32>(),
        g in 0usize..3,
        t0sz_seed in any::<u8>(),
        (ips, sh0, ir0, or0) in (0u8..=6, prop_oneof![Just(0u8), Just(2), Just(3)], 0u8..4, 0u8..4),
        flags in any::<u16>(),
        asid in any::<u16>(),
        (mair, amair) in (any::<u64>(), any::<u64>()),
    ) {
        let caps = CdCaps { max_oas: 52, lva: true, asid16: true, hw_access_flag: true, hw_dirty: true, stall: true, big_endian: true, granules: GranuleSupport::ALL };
        let granule = [Granule::K4, Granule::K16, Granule::K64][g];
        let min = if granule == Granule::K64 { 12 } else { 16 };
        let t0sz = min + t0sz_seed % (40 - min);
        let mut f = CdFields::new(asid, 0x8001_0000);
        f.granule = granule;
        f.t0sz = t0sz;
        f.ips = ips;
        f.sh0 = sh0;
        f.ir0 = ir0;
        f.or0 = or0;
        let bit = |i: u32| flags & (1 << i) != 0;
        f.epd0 = bit(0);
        f.endi = bit(1);
        f.affd = bit(2);
        f.wxn = bit(3);
        f.tbi0 = bit(4);
        f.pan = bit(5);
        f.hd = bit(6);
        f.ha = bit(7);
        f.stall = bit(8);
        f.record = bit(9);
        f.abort = bit(10);
        f.aset = bit(11);
        f.had0 = bit(12);
        f.mair = mair;
        f.amair = amair;
        let mut mem = TestMemory::single(0x8000_0000..0xc000_0000);
        let fmt = S1Fmt::from_bits(fmt).unwrap();
        let mut tb = CdTableBuilder::new(fmt, cdmax, TableAllocator::new(0x8010_0000, 0xc000_0000)).unwrap();
        let ssid = ssid_seed % (1 << cdmax);
        tb.write_cd(&mut mem, ssid, &f.encode()).unwrap();
        let (a, b, c, d) = tb.fields(S1Dss::Terminate);
        let ste = SteS1::from_fields(a, b, c, d, 20, &mem).unwrap();
        let cd = ste.read_cd(&mem, Some(ssid), &caps).unwrap();
        prop_assert_eq!(cd.granule, granule);
        prop_assert_eq!((cd.t0sz, cd.ips, cd.sh0, cd.ir0, cd.or0), (t0sz, ips, sh0, ir0, or0));
        prop_assert_eq!(
            [cd.epd0, cd.endi, cd.affd, cd.wxn, cd.tbi0, cd.pan, cd.hd, cd.ha, cd.stall, cd.record, cd.abort, cd.aset, cd.had0],
            [f.epd0, f.endi, f.affd, f.wxn, f.tbi0, f.pan, f.hd, f.ha, f.stall, f.record, f.abort, f.aset, f.had0]
        );
        prop_assert_eq!((cd.asid, cd.ttb0, cd.mair, cd.amair), (asid, 0x8001_0000, mair, amair));
        let s1 = cd.stage1(&caps).unwrap();
        prop_assert_eq!(s1.input_bits(), 64 - u32::from(t0sz));
    }

    /// Arbitrary CD words never panic the decoder.
    #[test]
    fn arbitrary_cd_words(raw in prop::array::uniform8(any::<u64>()), valid in any::<bool>()) {
        let mut raw = raw;
        if valid {
            // V, AA64, EPD1, clean reserved words: get past the first checks often.
            raw[0] |= (1 << 31) | (1 << 41) | (1 << 30);
            raw[0] &= !(1 << 37);
            raw[1] &= !0x0ff0_0000_0000_000c;
            raw[2] = 0;
            raw[5] = 0;
            raw[6] = 0;
            raw[7] = 0;
        }
        let caps = CdCaps { max_oas: 52, lva: true, asid16: true, hw_access_flag: true, hw_dirty: true, stall: true, big_endian: true, granules: GranuleSupport::ALL };
        if let Ok(cd) = ContextDescriptor::decode(raw, &caps) {
            prop_assert!(cd.stage1(&caps).is_ok());
            prop_assert_eq!(cd.raw, raw);
        }
    }
}
