//! The virtqueue path: hostile descriptor tables and avail rings in a small guest memory,
//! popped by virtio-queue and answered by the model's chain handling (`queue::handle_chain`).
//!
//! Input: `cfg: u8` (`common::config`), `flags: u8` (bit 0 EVENT_IDX, bit 1 acknowledge no
//! device feature, bits 4..7 log2 queue size, at most 16), then an image of guest RAM copied
//! to GPA 0: descriptor table at 0x0, avail ring at 0x100, used ring at 0x200, request buffers
//! from 0x400 on. RAM is two 32 KiB regions, [0, 0x8000) and [0x10000, 0x18000), with a hole
//! between them.
//!
//! Checked: no panic; the used length is 0 or the whole device-writable part of the chain;
//! the device writes guest memory only inside device-writable descriptors (and the used ring);
//! the device model's invariants hold after every chain.
#![no_main]
// A fuzz target: a broken invariant must abort the run, so asserts and panics are the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{check_invariants, config, Input};
use libfuzzer_sys::fuzz_target;
use model::device::Device;
use model::queue::handle_chain;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

const REGIONS: [(u64, usize); 2] = [(0, 0x8000), (0x1_0000, 0x8000)];
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;

fn image(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut out = Vec::new();
    for (start, len) in REGIONS {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(start)).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

/// Marks the bytes of `[gpa, gpa + len)` that are in RAM in `writable` (indexed like `image`).
fn mark(writable: &mut [bool], gpa: u64, len: u64) {
    let end = gpa.saturating_add(len);
    let mut base = 0usize;
    for (start, size) in REGIONS {
        let (lo, hi) = (gpa.max(start), end.min(start + size as u64));
        if lo < hi {
            let (a, b) = ((lo - start) as usize, (hi - start) as usize);
            writable[base + a..base + b].fill(true);
        }
        base += size;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let cfg = config(input.u8().unwrap_or(0));
    let flags = input.u8().unwrap_or(0);
    let mut dev = Device::new(cfg);
    let regions: Vec<(GuestAddress, usize)> =
        REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::from_ranges(&regions).unwrap();
    dev.set_walk_memory(GuestMemoryAtomic::new(mem.clone()));
    dev.set_acked_features(if flags & 2 != 0 { 0 } else { u64::MAX });
    let img = input.bytes(REGIONS[0].1);
    mem.write_slice(img, GuestAddress(0)).unwrap();

    let size = 1u16 << ((flags >> 4) % 5);
    let mut q = Queue::new(16).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(flags & 1 != 0);
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    let before = image(&mem);
    // Bytes the device may write: the used ring and every device-writable descriptor.
    let mut writable = vec![false; before.len()];
    let used_len = 6 + 8 * usize::from(size);
    mark(&mut writable, USED, used_len as u64 + 2);
    for _ in 0..2 * usize::from(size) {
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        let mut wlen = 0u64;
        for d in chain.clone() {
            if d.is_write_only() {
                wlen += u64::from(d.len());
                mark(&mut writable, d.addr().0, u64::from(d.len()));
            }
        }
        let used = handle_chain(&mut dev, &mem, chain);
        assert!(
            used == 0 || u64::from(used) == wlen,
            "used length {used} of a chain with {wlen} writable bytes"
        );
        check_invariants(&dev);
        // As the daemon does (`queue::skip_bad_head`): a head beyond the queue size has no
        // used-ring slot and is skipped.
        match q.add_used(&mem, head, used) {
            Err(virtio_queue::Error::InvalidDescriptorIndex) => assert_eq!(used, 0),
            r => r.unwrap(),
        }
    }
    let after = image(&mem);
    if before == after {
        return;
    }
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        assert!(
            a == b || writable[i],
            "device wrote byte {i:#x} outside its buffers"
        );
    }
});
