//! Table builders for tests: they construct VMSAv8-64 and VT-d first-stage tables in guest
//! memory from `map(iova, pa, size, prot)` calls.
//!
//! They are written independently of the walkers (their own index and descriptor encoding
//! code) so that property tests comparing `walk(build(mappings))` with `mappings` check one
//! implementation against another.

pub mod vmsa;
pub mod vtd;

use crate::{Access, GuestMemoryRead, MemoryError, Permissions, TestMemory};

/// Write access to guest memory, for builders.
pub trait GuestMemoryWrite: GuestMemoryRead {
    /// Writes the little-endian 64-bit word at `gpa` (8-byte aligned, inside guest RAM).
    fn write_u64(&mut self, gpa: u64, value: u64) -> Result<(), MemoryError>;
}

impl GuestMemoryWrite for TestMemory {
    fn write_u64(&mut self, gpa: u64, value: u64) -> Result<(), MemoryError> {
        TestMemory::write_u64(self, gpa, value)
    }
}

/// Protection of a mapping, in the form both formats can encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Prot {
    /// Writable.
    pub write: bool,
    /// Accessible to unprivileged (user / EL0) requests.
    pub user: bool,
    /// Executable (by users for a user mapping, by privileged requests otherwise).
    pub exec: bool,
}

impl Prot {
    /// The permissions a walker must report for a leaf built with this protection (and
    /// permissive table entries above it). `privileged` is whether the format gives
    /// privileged requests access at all (VMSA: always; VT-d: only with SRE).
    /// `privileged_write_needs_rw` is false for VT-d with SRE and without WPE.
    pub fn expected(self, privileged: bool, privileged_write_needs_rw: bool) -> Permissions {
        let user = Access {
            read: self.user,
            write: self.user && self.write,
            exec: self.user && self.exec,
        };
        let privileged = if privileged {
            Access {
                read: true,
                write: self.write || !privileged_write_needs_rw,
                exec: self.exec && !self.user,
            }
        } else {
            Access::NONE
        };
        Permissions { user, privileged }
    }
}

/// Builder errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The table allocator's region is exhausted.
    #[error("no memory left for page tables")]
    OutOfTableMemory,
    /// The size is not a page or block size the format permits.
    #[error("{0:#x} is not a leaf size of this format")]
    BadSize(u64),
    /// iova or pa not aligned to the size.
    #[error("iova {iova:#x} / pa {pa:#x} not aligned to {size:#x}")]
    Misaligned {
        /// Input address.
        iova: u64,
        /// Output address.
        pa: u64,
        /// Size.
        size: u64,
    },
    /// iova outside the input range (or not canonical), or pa outside the output range.
    #[error("address out of range: iova {iova:#x} pa {pa:#x}")]
    OutOfRange {
        /// Input address.
        iova: u64,
        /// Output address.
        pa: u64,
    },
    /// Something is already mapped there.
    #[error("iova {0:#x} overlaps an existing mapping")]
    Overlap(u64),
    /// Bad builder parameters.
    #[error("invalid builder configuration")]
    Config,
    /// Guest memory access failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// A bump allocator of table memory inside guest RAM.
#[derive(Debug, Clone)]
pub struct TableAllocator {
    next: u64,
    end: u64,
}

impl TableAllocator {
    /// Allocates from `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        TableAllocator { next: start, end }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two). Memory is assumed zeroed
    /// (fresh [`TestMemory`] pages are).
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<u64, BuildError> {
        if !align.is_power_of_two() {
            return Err(BuildError::Config);
        }
        let base = self
            .next
            .checked_add(align - 1)
            .ok_or(BuildError::OutOfTableMemory)?
            & !(align - 1);
        let end = base.checked_add(size).ok_or(BuildError::OutOfTableMemory)?;
        if end > self.end {
            return Err(BuildError::OutOfTableMemory);
        }
        self.next = end;
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_aligns_and_exhausts() {
        let mut a = TableAllocator::new(0x1008, 0x4000);
        assert_eq!(a.alloc(0x1000, 0x1000), Ok(0x2000));
        assert_eq!(a.alloc(0x10, 0x10), Ok(0x3000));
        assert_eq!(a.alloc(0x1000, 0x1000), Err(BuildError::OutOfTableMemory));
        assert_eq!(a.alloc(0x10, 3), Err(BuildError::Config));
    }

    #[test]
    fn expected_permissions() {
        let p = Prot {
            write: true,
            user: true,
            exec: true,
        };
        let e = p.expected(true, true);
        assert!(e.user.read && e.user.write && e.user.exec);
        assert!(e.privileged.read && e.privileged.write && !e.privileged.exec);
        let e = Prot {
            write: false,
            user: false,
            exec: true,
        }
        .expected(true, false);
        assert_eq!(e.user, Access::NONE);
        assert!(e.privileged.write && e.privileged.exec);
        assert_eq!(p.expected(false, true).privileged, Access::NONE);
    }
}
