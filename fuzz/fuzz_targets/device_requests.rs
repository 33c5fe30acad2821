//! Request decoding and the device state machine (docs/DEVICE.md, docs/PASID.md).
//!
//! Input: `cfg: u8` (see `common::config`), `features: le64` (ANDed with what the device
//! offers), then steps, each an op byte and its operands:
//!
//! | op & 7 | step |
//! |---|---|
//! | 0, 7 | request: `len: u8`, then `len` readable bytes; properties area size from op bits 3..5 (0, probe_size, 8, 1024) |
//! | 1 | translate: `endpoint: u8`, `pasid: u8` (0xff: none), `iova: le64`, `access: u8` |
//! | 2 | write guest RAM (where tables live): `offset: le16` (8-byte aligned), `value: le64` |
//! | 3 | config write: `offset: u8`, `value: u8` |
//! | 4 | reset (op bit 3: keep bypass, as VHOST_USER_RESET_DEVICE) |
//! | 5 | deliver events: pop up to 4 records, op bit 3 says delivered |
//! | 6 | renegotiate: `features: le64` |
//!
//! After every step the model's invariants hold (no overlapping mappings, counts consistent,
//! every domain in use); a request that fails (non-OK status or returned unwritten) leaves the
//! observable state exactly as it was.
#![no_main]
// A fuzz target: a broken invariant must abort the run, so asserts and panics are the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{check_invariants, config, guest_memory, request, Input};
use libfuzzer_sys::fuzz_target;
use model::device::{Access, Device};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let cfg = config(input.u8().unwrap_or(0));
    let probe_size = cfg.probe_size as usize;
    let mut dev = Device::new(cfg);
    let mem = guest_memory();
    dev.set_walk_memory(mem.clone());
    dev.set_acked_features(input.u64());
    check_invariants(&dev);
    let mut steps = 0;
    while let Some(op) = input.u8() {
        steps += 1;
        if steps > 256 {
            break;
        }
        match op & 7 {
            0 | 7 => {
                let len = usize::from(input.u8().unwrap_or(0));
                let req = input.bytes(len);
                let props = [0, probe_size, 8, 1024][usize::from((op >> 3) & 3)];
                request(&mut dev, req, props);
            }
            1 => {
                let endpoint = u32::from(input.u8().unwrap_or(0));
                let pasid = input.u8().filter(|&p| p != 0xff).map(u32::from);
                let iova = input.u64();
                let a = input.u8().unwrap_or(0);
                let access = [Access::Read, Access::Write, Access::ReadWrite, Access::Exec]
                    [usize::from(a & 3)];
                let _ = dev.translate_pasid(endpoint, pasid, iova, access, a & 4 != 0);
            }
            2 => {
                let off = u64::from(input.u16() & !7) % common::RAM_SIZE as u64;
                let v = input.u64();
                mem.memory()
                    .write_obj(v, GuestAddress(off))
                    .expect("in RAM");
            }
            3 => {
                let off = usize::from(input.u8().unwrap_or(0));
                let v = input.u8().unwrap_or(0);
                dev.write_config(off, &[v]);
            }
            4 => {
                dev.reset(op & 8 != 0);
                assert_eq!(dev.total_mappings(), 0);
                assert_eq!(dev.domain_list().count(), 0);
                assert_eq!(dev.endpoint_list().count(), 0);
            }
            5 => {
                for _ in 0..4 {
                    let Some(rec) = dev.pop_event() else { break };
                    dev.event_outcome(&rec, op & 8 != 0);
                }
            }
            _ => dev.set_acked_features(input.u64()),
        }
        check_invariants(&dev);
    }
});
