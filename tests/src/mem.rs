//! Guest memory for the tests: memfd-backed shared mappings that the daemon maps too.
//!
//! Every access goes through volatile byte operations because the daemon writes the same pages
//! from another process while the test reads them.

use std::cell::Cell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};

use vhost::VhostUserMemoryRegionInfo;

/// Guest-physical base of the optional high region.
pub const HIGH_REGION_GPA: u64 = 0x1_0000_0000;

/// One memfd-backed region of guest memory.
#[derive(Debug)]
struct Region {
    gpa: u64,
    size: u64,
    host: *mut u8,
    fd: OwnedFd,
    /// Bump allocator: next free offset inside the region.
    next: Cell<u64>,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `host` and `size` are exactly what mmap returned in `Region::new`, and no
        // reference into the mapping outlives the region (all accesses copy bytes out).
        unsafe {
            libc::munmap(self.host.cast(), self.size as usize);
        }
    }
}

impl Region {
    fn new(gpa: u64, size: u64, reserve: u64) -> io::Result<Self> {
        let name = CString::new("vhost-user-iommu-test").map_err(io::Error::other)?;
        // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no other inputs.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = libc::off_t::try_from(size).map_err(io::Error::other)?;
        // SAFETY: `fd` is a valid memfd owned by us.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Guest RAM cannot shrink or grow underneath the daemon, as QEMU's memfd backend seals
        // it (the daemon refuses regions whose file may shrink).
        // SAFETY: F_ADD_SEALS on our own memfd; no memory is passed.
        if unsafe {
            libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of a file we own; the result is checked below.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region {
            gpa,
            size,
            host: host.cast(),
            fd,
            next: Cell::new(reserve),
        })
    }

    fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa && len <= self.size && gpa - self.gpa <= self.size - len
    }
}

/// The guest's RAM: one or more memfd-backed regions.
#[derive(Debug)]
pub struct GuestMemory {
    /// Sorted by guest-physical address (vhost-user backends want the table sorted).
    regions: Vec<Region>,
    /// Regions taken out of the table (hot-unplugged) but still mapped here.
    unplugged: Vec<Region>,
}

impl GuestMemory {
    /// Create regions from `(guest-physical base, size)` pairs. The first `reserve` bytes of
    /// each region are kept out of the bump allocator (used for the rings).
    pub fn new(layout: &[(u64, u64)], reserve: u64) -> io::Result<Self> {
        let regions = layout
            .iter()
            .map(|&(gpa, size)| Region::new(gpa, size, reserve.min(size)))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(GuestMemory {
            regions,
            unplugged: Vec::new(),
        })
    }

    /// Add a region (memory hot-plug); returns its index (regions stay sorted by address, so
    /// the indexes of regions above it move up). Hand the new table to the daemon with
    /// SET_MEM_TABLE afterwards.
    pub fn add_region(&mut self, gpa: u64, size: u64) -> io::Result<usize> {
        let r = Region::new(gpa, size, 0)?;
        Ok(self.insert(r))
    }

    fn insert(&mut self, r: Region) -> usize {
        assert!(
            self.regions
                .iter()
                .all(|o| r.gpa + r.size <= o.gpa || o.gpa + o.size <= r.gpa),
            "new region overlaps an existing one"
        );
        let i = self.regions.partition_point(|o| o.gpa < r.gpa);
        self.regions.insert(i, r);
        i
    }

    /// Take the region at `gpa` out of the table (memory hot-unplug); it stays mapped in this
    /// process, so its pages can still be examined, until `replug` puts it back or the memory
    /// is dropped. Returns the index it had. Hand the new table to the daemon afterwards.
    pub fn unplug(&mut self, gpa: u64) -> Option<usize> {
        let i = self.regions.iter().position(|r| r.gpa == gpa)?;
        self.unplugged.push(self.regions.remove(i));
        Some(i)
    }

    /// Put an unplugged region back (same memfd, same pages); returns its index.
    pub fn replug(&mut self, gpa: u64) -> Option<usize> {
        let i = self.unplugged.iter().position(|r| r.gpa == gpa)?;
        let r = self.unplugged.remove(i);
        Some(self.insert(r))
    }

    /// The region table handed to the daemon with SET_MEM_TABLE.
    pub fn region_infos(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.regions
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.gpa,
                memory_size: r.size,
                userspace_addr: r.host as u64,
                mmap_offset: 0,
                mmap_handle: r.fd.as_raw_fd(),
            })
            .collect()
    }

    /// `(gpa, size)` of every region.
    pub fn layout(&self) -> Vec<(u64, u64)> {
        self.regions.iter().map(|r| (r.gpa, r.size)).collect()
    }

    /// The region holding `[gpa, gpa+len)`; an unplugged region still counts (the frontend
    /// keeps its memory, only the daemon's table lost it).
    fn region_for(&self, gpa: u64, len: u64) -> &Region {
        self.regions
            .iter()
            .chain(&self.unplugged)
            .find(|r| r.contains(gpa, len))
            .unwrap_or_else(|| panic!("guest range {gpa:#x}+{len:#x} is outside guest memory"))
    }

    /// Whether `[gpa, gpa+len)` lies inside one region.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        self.regions.iter().any(|r| r.contains(gpa, len))
    }

    /// The frontend's virtual address of `gpa` (what SET_VRING_ADDR carries).
    pub fn host_addr(&self, gpa: u64) -> u64 {
        let r = self.region_for(gpa, 1);
        r.host as u64 + (gpa - r.gpa)
    }

    fn ptr(&self, gpa: u64, len: usize) -> *mut u8 {
        let r = self.region_for(gpa, len as u64);
        // SAFETY: `region_for` checked that `[gpa, gpa+len)` is inside the mapping, so the
        // offset stays within the mmap'ed range.
        unsafe { r.host.add((gpa - r.gpa) as usize) }
    }

    /// Allocate `len` bytes (aligned to `align`, a power of two) in region `index`.
    pub fn alloc_in(&self, index: usize, len: u64, align: u64) -> u64 {
        let r = &self.regions[index];
        let start = r.next.get().next_multiple_of(align.max(1));
        assert!(
            start + len <= r.size,
            "guest memory region {index} exhausted ({len:#x} bytes requested)"
        );
        r.next.set(start + len);
        r.gpa + start
    }

    /// Allocate `len` bytes, 16-byte aligned, in the first region.
    pub fn alloc(&self, len: u64) -> u64 {
        self.alloc_in(0, len, 16)
    }

    /// Copy `data` to guest-physical `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.ptr(gpa, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `p..p+data.len()` is inside the mapping (checked by `ptr`).
            unsafe { p.add(i).write_volatile(*b) };
        }
    }

    /// Read `len` bytes at guest-physical `gpa`.
    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        fence(Ordering::Acquire);
        let p = self.ptr(gpa, len);
        // SAFETY: `p..p+len` is inside the mapping (checked by `ptr`).
        (0..len)
            .map(|i| unsafe { p.add(i).read_volatile() })
            .collect()
    }

    /// Fill `len` bytes at `gpa` with `byte`.
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) {
        self.write(gpa, &vec![byte; len]);
    }

    /// Read a little-endian u16 (a single volatile 16-bit load when aligned).
    pub fn read_u16(&self, gpa: u64) -> u16 {
        let p = self.ptr(gpa, 2);
        let v = if gpa & 1 == 0 {
            // SAFETY: in bounds (checked by `ptr`) and 2-byte aligned (the mapping is
            // page-aligned and `gpa` is even).
            u16::from_le(unsafe { p.cast::<u16>().read_volatile() })
        } else {
            let b = self.read(gpa, 2);
            u16::from_le_bytes([b[0], b[1]])
        };
        fence(Ordering::Acquire);
        v
    }

    /// Write a little-endian u16 after a release fence (a single volatile 16-bit store).
    pub fn write_u16(&self, gpa: u64, v: u16) {
        fence(Ordering::Release);
        let p = self.ptr(gpa, 2);
        if gpa & 1 == 0 {
            // SAFETY: in bounds (checked by `ptr`) and 2-byte aligned.
            unsafe { p.cast::<u16>().write_volatile(v.to_le()) };
        } else {
            self.write(gpa, &v.to_le_bytes());
        }
        fence(Ordering::SeqCst);
    }

    /// Read a little-endian u32.
    pub fn read_u32(&self, gpa: u64) -> u32 {
        let b = self.read(gpa, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Write a little-endian u32.
    pub fn write_u32(&self, gpa: u64, v: u32) {
        self.write(gpa, &v.to_le_bytes());
    }

    /// Write a little-endian u64.
    pub fn write_u64(&self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }
}

/// The harness's shared memory as the page-table and CD-table builders and walkers of the
/// `pagetables` crate see it (tests build guest tables in it).
#[derive(Debug)]
pub struct TableMem<'a>(pub &'a GuestMemory);

impl pagetables::GuestMemoryRead for TableMem<'_> {
    fn read_u64(&self, gpa: u64) -> Result<u64, pagetables::MemoryError> {
        self.check_range(gpa, 8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0.read(gpa, 8));
        Ok(u64::from_le_bytes(b))
    }
    fn check_range(&self, gpa: u64, len: u64) -> Result<(), pagetables::MemoryError> {
        if self.0.contains(gpa, len) {
            Ok(())
        } else {
            Err(pagetables::MemoryError::OutOfRange { gpa, len })
        }
    }
}

impl pagetables::build::GuestMemoryWrite for TableMem<'_> {
    fn write_u64(&mut self, gpa: u64, value: u64) -> Result<(), pagetables::MemoryError> {
        pagetables::GuestMemoryRead::check_range(self, gpa, 8)?;
        self.0.write(gpa, &value.to_le_bytes());
        Ok(())
    }
}
