//! Views of guest RAM in this process: its memfds mapped again, for MD_CHECK_REFS (which pins
//! pages of this process's address) and for reading what edu's DMA wrote.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A descriptor of our own for `fd` (e.g. a frontend's memfd, to map it after the frontend has
/// gone).
pub fn dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: borrowing a descriptor that is open for the duration of this call.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    b.try_clone_to_owned()
}

/// A shared mapping of one guest RAM region (a memfd), addressed by guest-physical address.
#[derive(Debug)]
pub struct RamView {
    base: *mut u8,
    len: u64,
    gpa: u64,
}

impl RamView {
    /// Map `len` bytes of the memfd `fd` (the region at `gpa`); None if mmap fails.
    pub fn map(fd: BorrowedFd<'_>, gpa: u64, len: u64) -> Option<RamView> {
        // SAFETY: a new shared mapping of a memfd we hold; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                usize::try_from(len).ok()?,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        (p != libc::MAP_FAILED).then_some(RamView {
            base: p.cast(),
            len,
            gpa,
        })
    }

    /// Where the view starts in this process.
    pub fn addr(&self) -> u64 {
        self.base as u64
    }

    fn ptr(&self, gpa: u64, len: usize) -> *mut u8 {
        assert!(gpa >= self.gpa && gpa - self.gpa + len as u64 <= self.len);
        // SAFETY: inside the mapping (just checked).
        unsafe { self.base.add((gpa - self.gpa) as usize) }
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.ptr(gpa, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: inside the mapping (checked by `ptr`); the device writes the same pages,
            // hence volatile accesses.
            unsafe { p.add(i).write_volatile(*b) };
        }
    }

    pub fn fill(&self, gpa: u64, len: usize, b: u8) {
        self.write(gpa, &vec![b; len]);
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let p = self.ptr(gpa, len);
        // SAFETY: as in `write`.
        (0..len)
            .map(|i| unsafe { p.add(i).read_volatile() })
            .collect()
    }
}

impl Drop for RamView {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are what mmap returned in `map`; no reference into the
        // mapping outlives the view (accesses copy bytes).
        unsafe { libc::munmap(self.base.cast(), self.len as usize) };
    }
}
