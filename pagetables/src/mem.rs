//! Guest memory access for the walkers.
//!
//! The walkers only ever read naturally aligned little-endian 64-bit words. The daemon will
//! implement [`GuestMemoryRead`] over its vhost-user memory (see the `vm-memory` feature); tests
//! use [`TestMemory`], a sparse in-memory map with explicit RAM ranges.

use std::collections::HashMap;
use std::ops::Range;

/// Errors from guest memory accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// `[gpa, gpa + len)` is not entirely inside guest RAM (or wraps around).
    #[error("guest physical range {gpa:#x}+{len:#x} is outside guest RAM")]
    OutOfRange {
        /// First byte of the access.
        gpa: u64,
        /// Length of the access in bytes.
        len: u64,
    },
    /// A 64-bit access that is not 8-byte aligned.
    #[error("guest physical address {gpa:#x} is not 8-byte aligned")]
    Unaligned {
        /// The offending address.
        gpa: u64,
    },
}

/// Read access to guest physical memory.
pub trait GuestMemoryRead {
    /// Reads the little-endian 64-bit word at `gpa`. `gpa` must be 8-byte aligned and inside
    /// guest RAM; anything else is an error, never a panic.
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError>;

    /// Checks that `[gpa, gpa + len)` lies entirely inside guest RAM (no MMIO hole, no wrap).
    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemoryError>;
}

impl<T: GuestMemoryRead + ?Sized> GuestMemoryRead for &T {
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        (**self).read_u64(gpa)
    }
    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        (**self).check_range(gpa, len)
    }
}

const PAGE_SHIFT: u32 = 12;
const WORDS_PER_PAGE: usize = 512;

/// A sparse guest memory for tests and builders: a list of RAM ranges; pages are allocated on
/// first write and read as zero before that.
#[derive(Debug, Clone, Default)]
pub struct TestMemory {
    ram: Vec<Range<u64>>,
    pages: HashMap<u64, Box<[u64; WORDS_PER_PAGE]>>,
    reads: std::cell::Cell<u64>,
}

impl TestMemory {
    /// Guest RAM made of the given (non-empty, half-open) ranges.
    pub fn new(ram: impl IntoIterator<Item = Range<u64>>) -> Self {
        TestMemory {
            ram: ram.into_iter().filter(|r| r.start < r.end).collect(),
            pages: HashMap::new(),
            reads: std::cell::Cell::new(0),
        }
    }

    /// Guest RAM made of a single range.
    pub fn single(ram: Range<u64>) -> Self {
        Self::new(std::iter::once(ram))
    }

    /// The RAM ranges.
    pub fn ram(&self) -> &[Range<u64>] {
        &self.ram
    }

    /// Number of `read_u64` calls so far (successful or not).
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }

    fn in_ram(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        self.ram.iter().any(|r| r.start <= gpa && end <= r.end)
    }

    fn check_word(&self, gpa: u64) -> Result<(), MemoryError> {
        if !gpa.is_multiple_of(8) {
            return Err(MemoryError::Unaligned { gpa });
        }
        if !self.in_ram(gpa, 8) {
            return Err(MemoryError::OutOfRange { gpa, len: 8 });
        }
        Ok(())
    }

    /// Writes the little-endian 64-bit word at `gpa`.
    pub fn write_u64(&mut self, gpa: u64, value: u64) -> Result<(), MemoryError> {
        self.check_word(gpa)?;
        let page = self
            .pages
            .entry(gpa >> PAGE_SHIFT)
            .or_insert_with(|| Box::new([0; WORDS_PER_PAGE]));
        page[word_index(gpa)] = value;
        Ok(())
    }
}

fn word_index(gpa: u64) -> usize {
    // The mask keeps the value below 512, so the conversion cannot truncate.
    ((gpa >> 3) & (WORDS_PER_PAGE as u64 - 1)) as usize
}

impl GuestMemoryRead for TestMemory {
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        self.reads.set(self.reads.get().saturating_add(1));
        self.check_word(gpa)?;
        Ok(self
            .pages
            .get(&(gpa >> PAGE_SHIFT))
            .map_or(0, |p| p[word_index(gpa)]))
    }

    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        if self.in_ram(gpa, len) {
            Ok(())
        } else {
            Err(MemoryError::OutOfRange { gpa, len })
        }
    }
}

/// Adapter from any `vm_memory::GuestMemoryBackend` (guest physical memory, e.g. the daemon's
/// `GuestMemoryMmap` behind a `GuestMemoryAtomic` load guard).
#[cfg(feature = "vm-memory")]
#[derive(Debug)]
pub struct VmMemory<'a, M: ?Sized>(pub &'a M);

#[cfg(feature = "vm-memory")]
impl<M: vm_memory::GuestMemoryBackend + ?Sized> GuestMemoryRead for VmMemory<'_, M> {
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        use vm_memory::{Bytes, GuestAddress};
        if !gpa.is_multiple_of(8) {
            return Err(MemoryError::Unaligned { gpa });
        }
        self.check_range(gpa, 8)?;
        let mut buf = [0u8; 8];
        self.0
            .read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|_| MemoryError::OutOfRange { gpa, len: 8 })?;
        Ok(u64::from_le_bytes(buf))
    }

    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        use vm_memory::GuestAddress;
        let err = MemoryError::OutOfRange { gpa, len };
        let Ok(len_usize) = usize::try_from(len) else {
            return Err(err);
        };
        if gpa.checked_add(len).is_none() {
            return Err(err);
        }
        let ok = if len == 0 {
            vm_memory::GuestMemoryBackend::address_in_range(self.0, GuestAddress(gpa))
        } else {
            vm_memory::GuestMemoryBackend::check_range(self.0, GuestAddress(gpa), len_usize)
        };
        if ok {
            Ok(())
        } else {
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_zero_before_write_and_back_after() {
        let mut m = TestMemory::single(0x1000..0x3000);
        assert_eq!(m.read_u64(0x1008), Ok(0));
        m.write_u64(0x1008, 0xdead_beef_0000_0001).unwrap();
        assert_eq!(m.read_u64(0x1008), Ok(0xdead_beef_0000_0001));
        assert_eq!(m.read_u64(0x1010), Ok(0));
        assert_eq!(m.reads(), 3);
    }

    #[test]
    fn outside_ram_and_unaligned_are_errors() {
        let mut m = TestMemory::new([0x1000..0x2000, 0x3000..0x4000]);
        assert_eq!(
            m.read_u64(0x2000),
            Err(MemoryError::OutOfRange {
                gpa: 0x2000,
                len: 8
            })
        );
        assert_eq!(
            m.read_u64(0x1ffc),
            Err(MemoryError::Unaligned { gpa: 0x1ffc })
        );
        assert_eq!(
            m.read_u64(u64::MAX - 7),
            Err(MemoryError::OutOfRange {
                gpa: u64::MAX - 7,
                len: 8
            })
        );
        assert!(m.write_u64(0x2ff8, 1).is_err());
        assert!(m.check_range(0x1000, 0x1000).is_ok());
        // Spans the hole between the two ranges.
        assert!(m.check_range(0x1800, 0x2000).is_err());
        assert!(m.check_range(u64::MAX, 2).is_err());
    }
}

#[cfg(all(test, feature = "vm-memory"))]
mod vm_memory_tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    #[test]
    fn adapter_reads_and_bounds() {
        let gm = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x3000), 0x1000),
        ])
        .unwrap();
        gm.write_obj(0x1122_3344_5566_7788u64.to_le(), GuestAddress(0x1ff8))
            .unwrap();
        let m = VmMemory(&gm);
        assert_eq!(m.read_u64(0x1ff8), Ok(0x1122_3344_5566_7788));
        assert_eq!(
            m.read_u64(0x1ffc),
            Err(MemoryError::Unaligned { gpa: 0x1ffc })
        );
        assert_eq!(
            m.read_u64(0x2000),
            Err(MemoryError::OutOfRange {
                gpa: 0x2000,
                len: 8
            })
        );
        assert!(m.check_range(0x3000, 0x1000).is_ok());
        assert!(m.check_range(0x1800, 0x2000).is_err());
        assert!(m.check_range(u64::MAX, 2).is_err());
    }
}
