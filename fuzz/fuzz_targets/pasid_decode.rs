//! PASID-table decoding (pasid crate): SMMUv3 STE fields (`SteS1::from_fields`, a guest STE),
//! CD lookup through linear and 2-level CD tables (`read_cd`), CD words (`ContextDescriptor::
//! decode`), VT-d first-stage bindings (`VtdS1Binding::decode`) and CPU TCR_EL1 regimes, over
//! a hostile guest memory.
//!
//! Input (little-endian), then the rest is the image of the first RAM range (0x1_0000):
//! `s1fmt u8, s1dss u8, context_ptr u64, cdmax u32, pasid_bits u8, caps u8, ssid u32 x4,
//! vtd_pasid u32, pgd u64, vtd_flags u64, addr_width u32, vtd_caps u8, haw u8,
//! cd_words u64 x8, tcr u64, ttbr0 u64, mair u64, ste_words u64 x2`.
//!
//! Checked: nothing panics; what decodes satisfies what the decoder promises (table inside
//! RAM, widths within limits, flags consistent); every decoded CD turns into a walker whose
//! walks read at most 4 descriptors.
#![no_main]
// A fuzz target: a broken invariant must abort the run, so asserts and panics are the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mem;

use common::Input;
use libfuzzer_sys::fuzz_target;
use pagetables::vmsa::{Stage1, Stage1Caps};
use pagetables::GuestMemoryRead;
use pasid::smmuv3::{CdCaps, ContextDescriptor, GranuleSupport, GuestSte, SteS1};
use pasid::vtd::{VtdHostCaps, VtdS1Binding};

fn cd_caps(b: u8) -> CdCaps {
    CdCaps {
        max_oas: [32, 36, 40, 42, 44, 48, 52, 48][usize::from(b & 7)],
        lva: b & 8 != 0,
        asid16: b & 16 == 0,
        hw_access_flag: b & 32 != 0,
        hw_dirty: b & 64 != 0,
        stall: b & 128 != 0,
        big_endian: b & 8 != 0,
        granules: if b & 0x30 == 0x30 {
            GranuleSupport {
                k4: true,
                k16: false,
                k64: false,
            }
        } else {
            GranuleSupport::ALL
        },
    }
}

/// Walks a few addresses; a walk is bounded by the format's levels.
fn walk_some(s1: &Stage1, m: &impl GuestMemoryRead, reads: impl Fn() -> u64, iovas: &[u64]) {
    for &iova in iovas {
        let before = reads();
        if let Ok(t) = s1.walk(m, iova) {
            assert!(t.page_size.is_power_of_two());
            assert_eq!(t.output & (t.page_size - 1), iova & (t.page_size - 1));
            assert!(mem::in_ram(t.leaf_address, 8));
        }
        assert!(
            reads() - before <= 4,
            "a VMSA walk read more than 4 descriptors"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (s1fmt, s1dss) = (input.u8().unwrap_or(0), input.u8().unwrap_or(0));
    let (ptr, cdmax) = (input.u64(), input.u32());
    let pasid_bits = input.u8().unwrap_or(0);
    let caps = cd_caps(input.u8().unwrap_or(0));
    let ssids = [input.u32(), input.u32(), input.u32(), input.u32()];
    let (vpasid, pgd, vflags, aw) = (input.u32(), input.u64(), input.u64(), input.u32());
    let vcaps_b = input.u8().unwrap_or(0);
    let haw = input.u8().unwrap_or(0);
    let mut cd_words = [0u64; 8];
    for w in &mut cd_words {
        *w = input.u64();
    }
    let (tcr, ttbr0, mair) = (input.u64(), input.u64(), input.u64());
    let ste_words = [input.u64(), input.u64()];
    let m = mem::memory(input.0);
    let reads = || m.reads();
    let iovas = [
        0,
        0x1000,
        0x7fff_ffff_f000,
        ssids[0].into(),
        u64::from(ssids[1]) << 21,
    ];

    // STE fields of an ATTACH_TABLE with format ARM_SMMUV3.
    if let Ok(ste) = SteS1::from_fields(s1fmt, s1dss, ptr, cdmax, pasid_bits, &m) {
        assert!(u32::from(ste.cdmax) <= u32::from(pasid_bits.min(20)));
        assert!(mem::in_ram(ste.context_ptr, ste.table_bytes()));
        for ssid in [
            None,
            Some(ssids[0]),
            Some(ssids[1]),
            Some(ssids[2]),
            Some(ssids[3]),
        ] {
            let before = m.reads();
            let cd = ste.read_cd(&m, ssid, &caps);
            // One L1 descriptor and the 8 CD words at most.
            assert!(m.reads() - before <= 9);
            if let Ok(cd) = cd {
                assert!(caps.asid16 || cd.asid <= 0xff);
                if let Ok(s1) = cd.stage1(&caps) {
                    walk_some(&s1, &m, reads, &iovas);
                }
            }
        }
    }
    // A guest STE (the nested-STE path).
    if let Ok(GuestSte::S1(ste)) = GuestSte::decode(ste_words, pasid_bits, &m) {
        assert!(mem::in_ram(ste.context_ptr, ste.table_bytes()));
    }
    // CD words straight from the input.
    if let Ok(cd) = ContextDescriptor::decode(cd_words, &caps) {
        assert_eq!(cd.raw, cd_words);
        if let Ok(s1) = cd.stage1(&caps) {
            walk_some(&s1, &m, reads, &iovas);
        }
    }
    // VT-d first-stage binding.
    let vcaps = VtdHostCaps {
        five_level: vcaps_b & 1 != 0,
        pages_1g: vcaps_b & 2 != 0,
        srs: vcaps_b & 4 != 0,
        eafs: vcaps_b & 8 != 0,
        haw: 32 + haw % 21,
        pasid_bits: (vcaps_b >> 4) + 5,
        grant_supervisor: vcaps_b & 0x80 != 0,
    };
    if let Ok(b) = VtdS1Binding::decode(vpasid, pgd, vflags, aw, pasid_bits, &vcaps, &m) {
        assert!(b.addr_width == 48 || (b.addr_width == 57 && vcaps.five_level));
        assert!(b.pgd & 0xfff == 0 && mem::in_ram(b.pgd, 4096));
        assert!(!b.flags.wpe || b.flags.sre);
        assert!(!b.flags.sre || (vcaps.srs && vcaps.grant_supervisor));
        let h = b.to_hwpt();
        assert_eq!(
            (h.pgtbl_addr, h.addr_width, h.flags),
            (b.pgd, aw, b.flags.bits())
        );
    }
    // A CPU regime (ATTACH_TABLE format ARM_VMSA_S1).
    let s1caps = Stage1Caps {
        max_oas: caps.max_oas,
        lva: caps.lva,
    };
    if let Ok((p, _asid)) = pagetables::vmsa::Stage1Params::from_tcr_el1(tcr, ttbr0, mair, s1caps) {
        if let Ok(s1) = Stage1::new(p) {
            walk_some(&s1, &m, reads, &iovas);
        }
    }
});
