//! The page-table walkers (pagetables crate) over hostile guest memory: tables that point to
//! themselves or to each other in loops, pointers out of RAM, reserved bits, blocks where none
//! are allowed, every granule / T0SZ / IPS / address width.
//!
//! Input (little-endian), then the rest is the image of the first RAM range (0x1_0000):
//! `granule u8, t0sz u8, ips u8, ttb0 u64, vmsa_flags u8, oas u8, pgtbl u64, vtd_aw u8,
//! vtd_flags u8, haw u8, iova u64 x8, access u8`.
//!
//! Checked: nothing panics; a walk reads at most one descriptor per level (4 for VMSA, 4 or 5
//! for VT-d); a translation keeps the page offset, has a power-of-two page size, an output
//! inside the output address size and a leaf descriptor inside RAM; `translate` agrees with
//! `walk` plus the permission check.
#![no_main]
// A fuzz target: a broken invariant must abort the run, so asserts and panics are the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mem;

use common::Input;
use libfuzzer_sys::fuzz_target;
use pagetables::vmsa::{Granule, Stage1, Stage1Caps, Stage1Params};
use pagetables::vtd::{FirstStage, FirstStageParams, VtdFlags};
use pagetables::{AccessKind, AccessRequest, Fault, Translation};

fn check<A>(
    iova: u64,
    walked: &Result<Translation<A>, Fault>,
    reads: u64,
    max_reads: u64,
    out_bits: u32,
) {
    assert!(
        reads <= max_reads,
        "{reads} descriptor reads (at most {max_reads})"
    );
    if let Ok(t) = walked {
        assert!(
            t.page_size.is_power_of_two(),
            "page size {:#x}",
            t.page_size
        );
        assert_eq!(t.output & (t.page_size - 1), iova & (t.page_size - 1));
        assert!(
            out_bits >= 64 || t.output >> out_bits == 0,
            "output {:#x}",
            t.output
        );
        assert!(
            mem::in_ram(t.leaf_address, 8),
            "leaf at {:#x}",
            t.leaf_address
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (granule, t0sz, ips) = (input.u8().unwrap_or(0), input.u8().unwrap_or(0), input.u8());
    let ttb0 = input.u64();
    let vf = input.u8().unwrap_or(0);
    let oas = input.u8().unwrap_or(0);
    let pgtbl = input.u64();
    let (aw, tf, haw) = (input.u8().unwrap_or(0), input.u8().unwrap_or(0), input.u8());
    let mut iovas = [0u64; 8];
    for i in &mut iovas {
        *i = input.u64();
    }
    let acc = input.u8().unwrap_or(0);
    let req = AccessRequest {
        kind: [AccessKind::Read, AccessKind::Write, AccessKind::Exec][usize::from(acc % 3)],
        privileged: acc & 4 != 0,
    };
    let m = mem::memory(input.0);

    // VMSAv8-64 stage 1.
    let mut p = Stage1Params::new(
        Granule::from_tg0(granule & 3).unwrap_or(Granule::K4),
        t0sz,
        ttb0,
    );
    p.ips = ips.unwrap_or(5) & 7;
    p.mair = 0x0044_ff04;
    p.epd0 = vf & 1 != 0;
    p.tbi0 = vf & 2 != 0;
    p.affd = vf & 4 != 0;
    p.ha = vf & 8 != 0;
    p.hd = vf & 16 != 0;
    p.wxn = vf & 32 != 0;
    p.pan = vf & 64 != 0;
    p.had0 = vf & 128 != 0;
    p.big_endian = granule & 4 != 0;
    p.caps = Stage1Caps {
        max_oas: [32, 36, 40, 42, 44, 48, 52, 48][usize::from(oas & 7)],
        lva: oas & 8 != 0,
    };
    if let Ok(s1) = Stage1::new(p) {
        for &iova in &iovas {
            let before = m.reads();
            let walked = s1.walk(&m, iova);
            check(iova, &walked, m.reads() - before, 4, s1.output_bits());
            let translated = s1.translate(&m, iova, req);
            assert_eq!(translated.ok(), walked.ok().filter(|t| t.perms.allows(req)));
        }
    }

    // VT-d first stage.
    let fp = FirstStageParams {
        pgtbl,
        addr_width: match aw % 4 {
            0 | 1 => 48,
            2 => 57,
            _ => aw,
        },
        flags: VtdFlags::from_bits(u64::from(tf & 7)).unwrap_or_default(),
        haw: haw.map_or(48, |h| 32 + h % 21),
        pages_1g: tf & 8 != 0,
    };
    if let Ok(fs) = FirstStage::new(fp) {
        for &iova in &iovas {
            let before = m.reads();
            let walked = fs.walk(&m, iova);
            let out_bits = u32::from(fp.haw);
            check(
                iova,
                &walked,
                m.reads() - before,
                u64::from(fs.levels()),
                out_bits,
            );
            let translated = fs.translate(&m, iova, req);
            assert_eq!(translated.ok(), walked.ok().filter(|t| t.perms.allows(req)));
        }
    }
});
