//! A request chain from the request queue: read, executed by the device model, answered.
//!
//! Every descriptor chain is hostile until proven otherwise. `virtio-queue` bounds chain walks
//! (no endless loops) and checks every descriptor against the guest memory map; on top of that
//! this module bounds how much it reads and writes, and returns a buffer unwritten (used length
//! 0) when the chain does not have the shape of a request. It knows nothing of vhost-user: the
//! daemon's transport pops the chains and publishes the used lengths.

use log::{debug, warn};
use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};
use zerocopy::IntoBytes;

use crate::device::{Device, Reply};
use crate::protocol::*;

/// Largest device-readable part read from a request: the longest request head + body (PROBE).
const MAX_READ: usize = HEAD_SIZE + std::mem::size_of::<ProbeBody>();
/// Largest device-writable area accepted (PROBE properties up to the maximum probe size, plus
/// the tail). A larger area is refused rather than zero-filled.
const MAX_WRITABLE: usize = crate::config::MAX_PROBE_SIZE as usize + TAIL_SIZE;

/// The result of returning a buffer. A head index beyond the queue size (the avail ring is
/// the guest's to write) has no used-ring slot, so that buffer cannot be returned: skip it and
/// go on serving the queue rather than fail the worker thread, which would stop the queue for
/// good (found by the `virtqueue` fuzz target).
pub fn skip_bad_head(
    r: Result<(), virtio_queue::Error>,
    queue: u16,
    head: u16,
) -> Result<(), virtio_queue::Error> {
    match r {
        Err(virtio_queue::Error::InvalidDescriptorIndex) => {
            debug!("queue {queue}: avail ring entry {head} is beyond the queue size; skipped");
            Ok(())
        }
        r => r,
    }
}

/// Most device-writable descriptors accepted in one request chain (a driver needs one or two).
const MAX_WRITABLE_SEGMENTS: usize = 16;

/// The device-writable descriptors of a chain, without allocating.
struct WritableArea {
    segs: [(GuestAddress, usize); MAX_WRITABLE_SEGMENTS],
    n: usize,
    len: usize,
}

impl WritableArea {
    fn new() -> Self {
        WritableArea {
            segs: [(GuestAddress(0), 0); MAX_WRITABLE_SEGMENTS],
            n: 0,
            len: 0,
        }
    }

    fn push(&mut self, addr: GuestAddress, len: usize) -> bool {
        let Some(slot) = self.segs.get_mut(self.n) else {
            return false;
        };
        let Some(total) = self.len.checked_add(len) else {
            return false;
        };
        *slot = (addr, len);
        self.n += 1;
        self.len = total;
        true
    }

    /// Write `data` at byte `offset` of the area (the caller keeps it inside `len`).
    fn write_at(&self, mem: &GuestMemoryMmap, mut offset: usize, mut data: &[u8]) -> bool {
        for &(addr, len) in &self.segs[..self.n] {
            if data.is_empty() {
                break;
            }
            if offset >= len {
                offset -= len;
                continue;
            }
            let take = (len - offset).min(data.len());
            // offset < len <= u32::MAX: the address stays inside the checked descriptor.
            let Some(at) = addr.checked_add(offset as u64) else {
                return false;
            };
            if !write_guest(mem, &data[..take], at) {
                return false;
            }
            data = &data[take..];
            offset = 0;
        }
        data.is_empty()
    }
}

/// The region holding all of `[addr, addr + len)` and the offset of `addr` in it, if one
/// region does (a request's buffers nearly always sit in one). Accesses through it skip
/// vm-memory's walk over the regions, which was the largest cost of a request.
fn one_region(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
) -> Option<(&vm_memory::GuestRegionMmap, MemoryRegionAddress)> {
    let r = mem.find_region(addr)?;
    let off = addr.checked_offset_from(r.start_addr())?;
    let end = off.checked_add(u64::try_from(len).ok()?)?;
    (end <= r.len()).then_some((r, MemoryRegionAddress(off)))
}

/// `[addr, addr + len)` is guest RAM.
fn in_guest(mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> bool {
    one_region(mem, addr, len).is_some() || mem.check_range(addr, len)
}

/// Read `buf` from guest RAM at `addr`.
fn read_guest(mem: &GuestMemoryMmap, buf: &mut [u8], addr: GuestAddress) -> bool {
    match one_region(mem, addr, buf.len()) {
        Some((r, at)) => r.read_slice(buf, at).is_ok(),
        None => mem.read_slice(buf, addr).is_ok(),
    }
}

/// Write `data` to guest RAM at `addr`.
fn write_guest(mem: &GuestMemoryMmap, data: &[u8], addr: GuestAddress) -> bool {
    match one_region(mem, addr, data.len()) {
        Some((r, at)) => r.write_slice(data, at).is_ok(),
        None => mem.write_slice(data, addr).is_ok(),
    }
}

/// Why a chain is returned unwritten. Only logged (at debug level) and counted.
#[derive(Debug, thiserror::Error)]
enum BadChain {
    #[error("descriptor {0:#x}+{1:#x} is outside guest memory")]
    OutsideMemory(u64, usize),
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("more than {MAX_WRITABLE_SEGMENTS} device-writable descriptors")]
    TooManyWritable,
    #[error("device-writable area of {0} bytes (needs 4 to {MAX_WRITABLE})")]
    WritableSize(usize),
    #[error("device-readable part of {0} bytes cannot hold a request head")]
    ShortHead(usize),
    #[error("guest memory read failed")]
    Unreadable,
}

/// Parse, execute and answer one request chain. Returns the used length.
///
/// The walk copies at most `MAX_READ` readable bytes and remembers at most
/// `MAX_WRITABLE_SEGMENTS` writable descriptors, all on the stack: nothing is allocated for a
/// MAP or UNMAP. Every descriptor is checked against the guest memory map before use.
pub fn handle_chain(
    dev: &mut Device,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let head = chain.head_index();
    match parse_chain(mem, chain) {
        Ok((req, have, area)) => answer(dev, mem, head, &req[..have], &area),
        Err(why) => {
            debug!("request {head}: returned unwritten: {why}");
            dev.count_ignored();
            0
        }
    }
}

fn parse_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<([u8; MAX_READ], usize, WritableArea), BadChain> {
    let mut req = [0u8; MAX_READ];
    let mut have = 0usize;
    let mut area = WritableArea::new();
    // The iterator stops at the queue's chain-length limit (no endless loops) and at a chain
    // longer than 4 GiB in total.
    for desc in chain {
        let (addr, len) = (desc.addr(), desc.len() as usize);
        if !in_guest(mem, addr, len) {
            return Err(BadChain::OutsideMemory(addr.raw_value(), len));
        }
        if desc.is_write_only() {
            if !area.push(addr, len) {
                return Err(BadChain::TooManyWritable);
            }
        } else {
            // virtio: device-readable descriptors come first.
            if area.n > 0 {
                return Err(BadChain::ReadableAfterWritable);
            }
            let take = (MAX_READ - have).min(len);
            if take > 0 {
                if !read_guest(mem, &mut req[have..have + take], addr) {
                    return Err(BadChain::Unreadable);
                }
                have += take;
            }
        }
    }
    if !(TAIL_SIZE..=MAX_WRITABLE).contains(&area.len) {
        return Err(BadChain::WritableSize(area.len));
    }
    if have < HEAD_SIZE {
        return Err(BadChain::ShortHead(have));
    }
    Ok((req, have, area))
}

fn answer(
    dev: &mut Device,
    mem: &GuestMemoryMmap,
    head: u16,
    req: &[u8],
    area: &WritableArea,
) -> u32 {
    // The tail is the last 4 bytes; whatever comes before it in the writable area belongs to
    // the request (PROBE properties) and is zero-filled. `vec![0; 0]` does not allocate.
    let mut props = vec![0u8; area.len - TAIL_SIZE];
    match dev.handle_request(req, &mut props) {
        Reply::Ignore => 0,
        Reply::Status(status) => {
            let tail = ReqTail {
                status: status as u8,
                reserved: [0; 3],
            };
            if area.write_at(mem, 0, &props) && area.write_at(mem, props.len(), tail.as_bytes()) {
                // Bounded by MAX_WRITABLE.
                u32::try_from(area.len).unwrap_or(0)
            } else {
                warn!("request {head}: cannot write the status");
                0
            }
        }
    }
}
