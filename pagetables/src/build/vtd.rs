//! x86-64 / VT-d first-stage table builder.

use super::{BuildError, GuestMemoryWrite, Prot, TableAllocator};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const LARGE: u64 = 1 << 7;
const NO_EXEC: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Builds 4- or 5-level first-stage tables.
#[derive(Debug, Clone)]
pub struct VtdBuilder {
    five_level: bool,
    root: u64,
    alloc: TableAllocator,
    /// Bits OR-ed into every non-leaf entry (default P | R/W | U/S: permissive).
    pub table_bits: u64,
    /// Extra bits OR-ed into every leaf (A, D, G, PCD ...). Default: A.
    pub extra_leaf_bits: u64,
}

impl VtdBuilder {
    /// A builder for 48-bit (`five_level` false) or 57-bit paging.
    pub fn new(five_level: bool, mut alloc: TableAllocator) -> Result<Self, BuildError> {
        let root = alloc.alloc(4096, 4096)?;
        Ok(VtdBuilder {
            five_level,
            root,
            alloc,
            table_bits: PRESENT | WRITABLE | USER,
            extra_leaf_bits: ACCESSED,
        })
    }

    /// The root (PML4 or PML5) address.
    pub fn pgtbl(&self) -> u64 {
        self.root
    }

    /// 48 or 57.
    pub fn addr_width(&self) -> u8 {
        if self.five_level {
            57
        } else {
            48
        }
    }

    fn top(&self) -> u32 {
        if self.five_level {
            5
        } else {
            4
        }
    }

    fn slot(table: u64, iova: u64, level: u32) -> u64 {
        table + ((iova >> (3 + 9 * level)) & 0x1ff) * 8
    }

    fn canonical(&self, iova: u64) -> bool {
        let n = u32::from(self.addr_width());
        let upper_mask = !((1u64 << (n - 1)) - 1);
        let upper = iova & upper_mask;
        upper == 0 || upper == upper_mask
    }

    /// Maps `[iova, iova + size)` with size 4K, 2M or 1G.
    pub fn map(
        &mut self,
        mem: &mut impl GuestMemoryWrite,
        iova: u64,
        pa: u64,
        size: u64,
        prot: Prot,
    ) -> Result<(), BuildError> {
        let leaf_level = match size {
            0x1000 => 1,
            0x20_0000 => 2,
            0x4000_0000 => 3,
            _ => return Err(BuildError::BadSize(size)),
        };
        if !iova.is_multiple_of(size) || !pa.is_multiple_of(size) {
            return Err(BuildError::Misaligned { iova, pa, size });
        }
        if !self.canonical(iova) || pa & !ADDR != 0 {
            return Err(BuildError::OutOfRange { iova, pa });
        }
        let mut table = self.root;
        let mut level = self.top();
        while level > leaf_level {
            let at = Self::slot(table, iova, level);
            let e = mem.read_u64(at)?;
            if e & PRESENT == 0 {
                let next = self.alloc.alloc(4096, 4096)?;
                mem.write_u64(at, next | self.table_bits)?;
                table = next;
            } else if e & LARGE != 0 {
                return Err(BuildError::Overlap(iova));
            } else {
                table = e & ADDR;
            }
            level -= 1;
        }
        let at = Self::slot(table, iova, leaf_level);
        if mem.read_u64(at)? & PRESENT != 0 {
            return Err(BuildError::Overlap(iova));
        }
        let mut e = pa | PRESENT | self.extra_leaf_bits;
        if leaf_level > 1 {
            e |= LARGE;
        }
        if prot.write {
            e |= WRITABLE;
        }
        if prot.user {
            e |= USER;
        }
        if !prot.exec {
            e |= NO_EXEC;
        }
        Ok(mem.write_u64(at, e)?)
    }

    /// Address of the entry mapping `iova` (the leaf, or the first non-present entry) and its
    /// level (5..=1).
    pub fn entry_address(
        &self,
        mem: &impl GuestMemoryWrite,
        iova: u64,
    ) -> Result<(u64, u8), BuildError> {
        let mut table = self.root;
        let mut level = self.top();
        loop {
            let at = Self::slot(table, iova, level);
            let e = mem.read_u64(at)?;
            if level == 1 || e & PRESENT == 0 || e & LARGE != 0 {
                return Ok((at, level as u8));
            }
            table = e & ADDR;
            level -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GuestMemoryRead, TestMemory};

    #[test]
    fn map_writes_expected_entries() {
        let mut m = TestMemory::single(0x10_0000..0x100_0000);
        let mut b = VtdBuilder::new(false, TableAllocator::new(0x10_0000, 0x100_0000)).unwrap();
        let prot = Prot {
            write: true,
            user: false,
            exec: false,
        };
        b.map(&mut m, 0x7fff_ffe0_0000, 0x4000_0000, 0x20_0000, prot)
            .unwrap();
        let (at, level) = b.entry_address(&m, 0x7fff_ffe0_1234).unwrap();
        assert_eq!(level, 2);
        assert_eq!(
            m.read_u64(at).unwrap(),
            0x4000_0000 | PRESENT | WRITABLE | LARGE | ACCESSED | NO_EXEC
        );
        // PML4 index 255 holds a permissive table entry.
        let pml4e = m.read_u64(b.pgtbl() + 255 * 8).unwrap();
        assert_eq!(pml4e & 0xfff, PRESENT | WRITABLE | USER);
        assert_eq!(
            b.map(&mut m, 0x7fff_ffe0_1000, 0, 0x1000, prot),
            Err(BuildError::Overlap(0x7fff_ffe0_1000))
        );
        assert_eq!(
            b.map(&mut m, 0x8000_0000_0000, 0, 0x1000, prot),
            Err(BuildError::OutOfRange {
                iova: 0x8000_0000_0000,
                pa: 0
            })
        );
        assert!(b
            .map(&mut m, 0xffff_8000_0000_0000, 0, 0x1000, prot)
            .is_ok());
        assert_eq!(
            b.map(&mut m, 0, 0, 0x8000, prot),
            Err(BuildError::BadSize(0x8000))
        );
    }
}
