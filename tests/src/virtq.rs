//! The driver side of a split virtqueue (virtio 1.x §2.7), laid out in guest memory.
//!
//! Descriptor table: 16 bytes per entry `{le64 addr, le32 len, le16 flags, le16 next}`.
//! Available ring: `{le16 flags, le16 idx, le16 ring[size], le16 used_event}`.
//! Used ring: `{le16 flags, le16 idx, {le32 id, le32 len}[size], le16 avail_event}`.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vhost::VringConfigData;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::mem::GuestMemory;

/// Descriptor continues via `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Buffer is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Buffer holds an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// Default bound on waiting for the device.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A raw descriptor, written exactly as given (hostile tests use arbitrary values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Buffer length in bytes.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// Index of the next descriptor when `flags` has NEXT.
    pub next: u16,
}

impl Desc {
    /// Encode to the 16-byte wire format.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// One element of the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index of the returned chain.
    pub id: u32,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// Driver-side state of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue {
    /// Queue index (0 = requestq, 1 = eventq).
    pub index: usize,
    /// Queue size (a power of two).
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    /// Next avail index to write (not yet published entries sit between `published` and it).
    avail_idx: u16,
    last_used: u16,
    /// Descriptors owned by each in-flight head.
    chains: HashMap<u16, Vec<u16>>,
    /// avail->idx as last published.
    published: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated: kick only when the device asked for it.
    pub event_idx: bool,
    /// Kicks actually sent (for tests of notification suppression).
    pub kicks: u64,
    /// Kick even when the device suppresses notifications (VRING_USED_F_NO_NOTIFY).
    pub always_kick: bool,
    /// Ask the device for no used-buffer notifications, as the Linux driver does for its
    /// request queue (it spins on the used ring): VRING_AVAIL_F_NO_INTERRUPT without EVENT_IDX,
    /// used_event half the ring index space away with it.
    pub quiet: bool,
    /// The kick eventfd given to the daemon (we write it).
    pub kick: EventFd,
    /// The call eventfd given to the daemon (it writes it).
    pub call: EventFd,
}

impl SplitQueue {
    /// Lay out a queue of `size` entries in region 0 of `mem`.
    pub fn new(mem: &GuestMemory, index: usize, size: u16) -> Self {
        assert!(size.is_power_of_two(), "queue size must be a power of two");
        let n = u64::from(size);
        let desc = mem.alloc_in(0, 16 * n, 4096);
        let avail = mem.alloc_in(0, 6 + 2 * n, 2);
        let used = mem.alloc_in(0, 6 + 8 * n, 4096);
        mem.fill(desc, (16 * n) as usize, 0);
        mem.fill(avail, (6 + 2 * n) as usize, 0);
        mem.fill(used, (6 + 8 * n) as usize, 0);
        SplitQueue {
            index,
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            last_used: 0,
            chains: HashMap::new(),
            published: 0,
            event_idx: false,
            kicks: 0,
            always_kick: false,
            quiet: false,
            kick: EventFd::new(EFD_NONBLOCK).expect("kick eventfd"),
            call: EventFd::new(EFD_NONBLOCK).expect("call eventfd"),
        }
    }

    /// The SET_VRING_ADDR payload (frontend virtual addresses).
    pub fn config(&self, mem: &GuestMemory) -> VringConfigData {
        VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: mem.host_addr(self.desc),
            used_ring_addr: mem.host_addr(self.used),
            avail_ring_addr: mem.host_addr(self.avail),
            log_addr: None,
        }
    }

    /// Guest-physical address of descriptor `idx`.
    pub fn desc_gpa(&self, idx: u16) -> u64 {
        self.desc + 16 * u64::from(idx)
    }

    /// Number of free descriptors.
    pub fn free_descs(&self) -> usize {
        self.free.len()
    }

    /// Take `n` free descriptor indices (for raw, hand-built chains).
    pub fn alloc_descs(&mut self, n: usize) -> Vec<u16> {
        assert!(
            n <= self.free.len(),
            "queue {} out of descriptors",
            self.index
        );
        let at = self.free.len() - n;
        let mut v = self.free.split_off(at);
        v.reverse();
        v
    }

    /// Write descriptor `idx` exactly as given.
    pub fn write_desc(&self, mem: &GuestMemory, idx: u16, d: Desc) {
        mem.write(self.desc_gpa(idx), &d.to_bytes());
    }

    /// Put `head` on the available ring (not yet published); `owned` are the descriptor
    /// indices returned to the free list when the device hands the chain back.
    pub fn push_head(&mut self, mem: &GuestMemory, head: u16, owned: Vec<u16>) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_u16(self.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.chains.insert(head, owned);
    }

    /// Build a chain from `(gpa, len, device_writable)` buffers and put it on the avail ring.
    /// Returns the head index.
    pub fn add_chain(&mut self, mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> u16 {
        assert!(!bufs.is_empty());
        let idx = self.alloc_descs(bufs.len());
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            let next = if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
                idx[i + 1]
            } else {
                0
            };
            self.write_desc(
                mem,
                idx[i],
                Desc {
                    addr,
                    len,
                    flags,
                    next,
                },
            );
        }
        let head = idx[0];
        self.push_head(mem, head, idx);
        head
    }

    /// Publish every pushed head (write avail->idx).
    pub fn publish(&mut self, mem: &GuestMemory) {
        // used_event: ask for a notification as soon as anything new is used (unless quiet).
        let used_event = if self.quiet {
            self.last_used.wrapping_add(0x8000)
        } else {
            self.last_used
        };
        mem.write_u16(self.avail + 4 + 2 * u64::from(self.size), used_event);
        // avail->flags: VRING_AVAIL_F_NO_INTERRUPT (1) when quiet.
        mem.write_u16(self.avail, u16::from(self.quiet));
        mem.write_u16(self.avail + 2, self.avail_idx);
    }

    /// Notify the device unconditionally.
    pub fn kick(&mut self) {
        self.kicks += 1;
        self.kick.write(1).expect("kick");
    }

    /// The device's avail_event (meaningful with EVENT_IDX).
    pub fn avail_event(&self, mem: &GuestMemory) -> u16 {
        mem.read_u16(self.used + 4 + 8 * u64::from(self.size))
    }

    /// Publish, then notify the way a driver does (virtio 1.x §2.7.10): without EVENT_IDX unless
    /// the device set VRING_USED_F_NO_NOTIFY; with it only when the device's avail_event lies in
    /// the newly published range.
    pub fn publish_and_kick(&mut self, mem: &GuestMemory) {
        let old = self.published;
        self.publish(mem);
        let new = self.avail_idx;
        self.published = new;
        if !self.event_idx {
            // VRING_USED_F_NO_NOTIFY (1): the device asked not to be kicked (it is polling).
            if mem.read_u16(self.used) & 1 == 0 || self.always_kick {
                self.kick();
            }
            return;
        }
        let event = self.avail_event(mem);
        if new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old) {
            self.kick();
        }
    }

    /// avail->idx as last published.
    pub fn published_idx(&self) -> u16 {
        self.published
    }

    /// The device's used->idx.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        mem.read_u16(self.used + 2)
    }

    /// Undo the device's last `n` publications of the used index, as if it had died after
    /// writing the replies but before publishing them (restart tests). The elements stay.
    pub fn take_back_used(&self, mem: &GuestMemory, n: u16) {
        let idx = self.used_idx(mem);
        mem.write_u16(self.used + 2, idx.wrapping_sub(n));
    }

    /// Entries handed out but not yet returned.
    pub fn in_flight(&self) -> usize {
        self.chains.len()
    }

    /// Take the next used element if there is one, freeing its descriptors.
    pub fn pop_used(&mut self, mem: &GuestMemory) -> Option<Used> {
        if self.used_idx(mem) == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % self.size);
        let e = self.used + 4 + 8 * slot;
        let id = mem.read_u32(e);
        let len = mem.read_u32(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        let head = u16::try_from(id).unwrap_or_else(|_| panic!("used id {id} out of range"));
        let owned = self
            .chains
            .remove(&head)
            .unwrap_or_else(|| panic!("device returned head {id}, which is not in flight"));
        self.free.extend(owned);
        Some(Used { id, len })
    }

    /// Wait (bounded) for the next used element, polling the call eventfd and the used index.
    pub fn wait_used(&mut self, mem: &GuestMemory, timeout: Duration) -> Option<Used> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.pop_used(mem) {
                return Some(u);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds is 1.
            unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) };
            // Drain the notification; the used index is the source of truth.
            let _ = self.call.read();
        }
    }

    /// Wait (bounded) until `n` used elements have arrived; returns them in used-ring order.
    pub fn wait_used_n(&mut self, mem: &GuestMemory, n: usize, timeout: Duration) -> Vec<Used> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_used(mem, left) {
                Some(u) => out.push(u),
                None => break,
            }
        }
        out
    }

    /// Check that nothing more arrives on the used ring within `d`.
    pub fn assert_no_used(&mut self, mem: &GuestMemory, d: Duration) {
        if let Some(u) = self.wait_used(mem, d) {
            panic!("queue {}: unexpected used element {u:?}", self.index);
        }
    }
}
