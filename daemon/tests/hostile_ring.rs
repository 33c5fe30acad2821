//! A guest that writes a head index beyond the queue size into the avail ring must not stop
//! the queue: the bogus entry is skipped (it has no used-ring slot) and the requests around it
//! are answered. Found by the `virtqueue` fuzz target (fuzz/); before the fix the worker's
//! `handle_event` failed and vhost-user-backend ended the worker thread, so the IOMMU stopped
//! answering for good.

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use model::config::DeviceConfig;
use model::device::Device;
use model::protocol::REQUEST_QUEUE;
use vhost_user_backend::{VhostUserBackendMut, VringT};
use vhost_user_iommu::transport::vring::Vring;
use vhost_user_iommu::transport::{Shared, VhostDevice};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::epoll::EventSet;

const SIZE: u16 = 8;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;

fn desc(mem: &GuestMemoryMmap, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let at = GuestAddress(DESC + 16 * i);
    mem.write_obj(addr, at).unwrap();
    mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
    mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
}

/// Guest memory as a frontend gives it: one region of a memfd sealed against shrinking.
fn sealed_memory(size: usize) -> GuestMemoryMmap {
    let name = std::ffi::CString::new("vui-hostile-ring").unwrap();
    // SAFETY: a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nothing else owns.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(size as u64).unwrap();
    // SAFETY: F_ADD_SEALS on our own memfd.
    let sealed = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    assert_eq!(sealed, 0);
    let region = MmapRegion::from_file(FileOffset::new(file, 0), size).unwrap();
    GuestMemoryMmap::from_regions(vec![GuestRegionMmap::new(region, GuestAddress(0)).unwrap()])
        .unwrap()
}

#[test]
fn avail_entry_beyond_queue_size_is_skipped() {
    let mem = sealed_memory(0x10000);
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let shared = Arc::new(Shared::new(Device::new(DeviceConfig::default())).unwrap());
    let mut backend = VhostDevice::new(
        shared.clone(),
        std::time::Duration::ZERO,
        Default::default(),
    );
    backend.update_memory(atomic.clone()).unwrap();
    shared.device().set_acked_features(u64::MAX);

    let vrings: Vec<Vring> = (0..2)
        .map(|_| Vring::new(atomic.clone(), SIZE).unwrap())
        .collect();
    for v in &vrings {
        v.set_queue_size(SIZE);
        v.set_queue_info(DESC, AVAIL, USED).unwrap();
        v.set_queue_ready(true);
        v.set_enabled(true);
    }
    // An ATTACH (domain 1, endpoint 1) in descriptors 0 (readable) and 1 (status tail).
    let mut attach = [0u8; 20];
    attach[0] = 1;
    attach[4] = 1;
    attach[8] = 1;
    mem.write_slice(&attach, GuestAddress(0x1000)).unwrap();
    desc(&mem, 0, 0x1000, 20, 1, 1);
    desc(&mem, 1, 0x2000, 4, 2, 0);
    mem.write_obj(0xffu8, GuestAddress(0x2000)).unwrap();
    // Avail ring: a bogus head (9 >= SIZE), then the ATTACH.
    for (i, head) in [9u16, 0].into_iter().enumerate() {
        mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * i as u64))
            .unwrap();
    }
    mem.write_obj(2u16, GuestAddress(AVAIL + 2)).unwrap();

    backend
        .handle_event(REQUEST_QUEUE, EventSet::IN, &vrings, 0)
        .expect("a bogus avail entry must not fail the worker");
    // The ATTACH was answered OK (status 0) and returned in the used ring.
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 0);
    assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 1);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(USED + 4)).unwrap(), 0);
    assert_eq!(shared.device().endpoint_list().count(), 1);
}
