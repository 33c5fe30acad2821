//! VMSAv8-64 stage-1 table builder.

use super::{BuildError, GuestMemoryWrite, Prot, TableAllocator};
use crate::vmsa::Granule;

/// Builds VMSAv8-64 stage-1 tables (TTB0 half) for one granule and input size.
#[derive(Debug, Clone)]
pub struct VmsaBuilder {
    page_shift: u32,
    input_bits: u32,
    /// 64K granule with 52-bit output: OA\[51:48\] encoded in bits \[15:12\].
    oa52: bool,
    big_endian: bool,
    first_level: u32,
    root: u64,
    alloc: TableAllocator,
    /// Extra bits OR-ed into every leaf (attributes, nG, ...).
    pub extra_leaf_bits: u64,
    /// Set AF in leaves (default true).
    pub set_af: bool,
}

impl VmsaBuilder {
    /// A builder for `granule` with `2^(64 - t0sz)` input addresses, allocating tables from
    /// `alloc`. `oa52` selects the 52-bit output encoding (64K granule only).
    pub fn new(
        granule: Granule,
        t0sz: u8,
        oa52: bool,
        big_endian: bool,
        mut alloc: TableAllocator,
    ) -> Result<Self, BuildError> {
        let page_shift = match granule {
            Granule::K4 => 12u32,
            Granule::K16 => 14,
            Granule::K64 => 16,
        };
        let min_t0sz = if page_shift == 16 { 12 } else { 16 };
        if !(min_t0sz..=39).contains(&t0sz) || (oa52 && page_shift != 16) {
            return Err(BuildError::Config);
        }
        let input_bits = 64 - u32::from(t0sz);
        let per_level = page_shift - 3;
        // Walk up from the last level until the levels cover the input size.
        let mut level = 3u32;
        let mut covered = page_shift + per_level;
        while covered < input_bits {
            level = level.checked_sub(1).ok_or(BuildError::Config)?;
            covered += per_level;
        }
        let below_root = covered - per_level;
        let root_bytes = 8u64 << (input_bits - below_root);
        let root = alloc.alloc(root_bytes, root_bytes.max(64))?;
        Ok(VmsaBuilder {
            page_shift,
            input_bits,
            oa52,
            big_endian,
            first_level: level,
            root,
            alloc,
            extra_leaf_bits: 0,
            set_af: true,
        })
    }

    /// The root table address (for TTB0).
    pub fn ttb0(&self) -> u64 {
        self.root
    }

    /// The initial lookup level.
    pub fn first_level(&self) -> u8 {
        self.first_level as u8
    }

    /// Bytes mapped by one entry at `level`.
    fn entry_span_shift(&self, level: u32) -> u32 {
        self.page_shift + (self.page_shift - 3) * (3 - level)
    }

    /// Page and block sizes this builder can map, smallest first.
    pub fn leaf_sizes(&self) -> Vec<u64> {
        (self.first_level..=3)
            .rev()
            .filter(|&l| self.leaf_level_ok(l))
            .map(|l| 1u64 << self.entry_span_shift(l))
            .collect()
    }

    fn leaf_level_ok(&self, level: u32) -> bool {
        if level < self.first_level {
            return false;
        }
        match (self.page_shift, level) {
            (_, 3) => true,
            (_, 2) => true,
            (12, 1) => true,
            (16, 1) => self.oa52,
            _ => false,
        }
    }

    fn oa_bits(&self) -> u32 {
        if self.oa52 {
            52
        } else {
            48
        }
    }

    fn encode_addr(&self, addr: u64) -> u64 {
        let low = addr & ((1u64 << 48) - 1);
        if self.oa52 {
            low | ((addr >> 48) << 12)
        } else {
            low
        }
    }

    fn decode_table_addr(&self, desc: u64) -> u64 {
        let low = desc & ((1u64 << 48) - 1) & !((1u64 << self.page_shift) - 1);
        if self.oa52 {
            low | (((desc >> 12) & 0xf) << 48)
        } else {
            low
        }
    }

    fn load(&self, mem: &impl GuestMemoryWrite, gpa: u64) -> Result<u64, BuildError> {
        let v = mem.read_u64(gpa)?;
        Ok(if self.big_endian { v.swap_bytes() } else { v })
    }

    fn store(&self, mem: &mut impl GuestMemoryWrite, gpa: u64, v: u64) -> Result<(), BuildError> {
        let v = if self.big_endian { v.swap_bytes() } else { v };
        Ok(mem.write_u64(gpa, v)?)
    }

    fn slot(&self, table: u64, iova: u64, level: u32) -> u64 {
        let shift = self.entry_span_shift(level);
        let width = if level == self.first_level {
            self.input_bits - shift
        } else {
            self.page_shift - 3
        };
        table + ((iova >> shift) & ((1u64 << width) - 1)) * 8
    }

    /// Maps `[iova, iova + size)` to `[pa, pa + size)`; `size` must be a page or permitted
    /// block size.
    pub fn map(
        &mut self,
        mem: &mut impl GuestMemoryWrite,
        iova: u64,
        pa: u64,
        size: u64,
        prot: Prot,
    ) -> Result<(), BuildError> {
        let leaf_level = (self.first_level..=3)
            .find(|&l| 1u64 << self.entry_span_shift(l) == size && self.leaf_level_ok(l))
            .ok_or(BuildError::BadSize(size))?;
        if !iova.is_multiple_of(size) || !pa.is_multiple_of(size) {
            return Err(BuildError::Misaligned { iova, pa, size });
        }
        if iova >> self.input_bits != 0 || pa >> self.oa_bits() != 0 {
            return Err(BuildError::OutOfRange { iova, pa });
        }
        let mut table = self.root;
        for level in self.first_level..leaf_level {
            let at = self.slot(table, iova, level);
            let d = self.load(mem, at)?;
            if d & 1 == 0 {
                let bytes = 1u64 << self.page_shift;
                let next = self.alloc.alloc(bytes, bytes)?;
                self.store(mem, at, self.encode_addr(next) | 0b11)?;
                table = next;
            } else if d & 0b10 == 0 {
                return Err(BuildError::Overlap(iova));
            } else {
                table = self.decode_table_addr(d);
            }
        }
        let at = self.slot(table, iova, leaf_level);
        if self.load(mem, at)? & 1 != 0 {
            return Err(BuildError::Overlap(iova));
        }
        let kind = if leaf_level == 3 { 0b11 } else { 0b01 };
        let mut d = self.encode_addr(pa) | kind | self.extra_leaf_bits;
        if self.set_af {
            d |= 1 << 10;
        }
        if !prot.write {
            d |= 1 << 7; // AP[2]: read-only
        }
        if prot.user {
            d |= 1 << 6; // AP[1]: EL0 access
        }
        if !prot.exec || !prot.user {
            d |= 1 << 54; // UXN
        }
        if !prot.exec || prot.user {
            d |= 1 << 53; // PXN
        }
        self.store(mem, at, d)
    }

    /// Address of the descriptor that maps `iova` (the leaf, or the first invalid entry), for
    /// tests that modify descriptors in place.
    pub fn descriptor_address(
        &self,
        mem: &impl GuestMemoryWrite,
        iova: u64,
    ) -> Result<(u64, u8), BuildError> {
        let mut table = self.root;
        for level in self.first_level..=3 {
            let at = self.slot(table, iova, level);
            let d = self.load(mem, at)?;
            if level == 3 || d & 0b11 != 0b11 {
                return Ok((at, level as u8));
            }
            table = self.decode_table_addr(d);
        }
        Err(BuildError::Config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GuestMemoryRead, TestMemory};

    #[test]
    fn leaf_sizes_per_granule() {
        let alloc = || TableAllocator::new(0x10_0000, 0x100_0000);
        let b = VmsaBuilder::new(Granule::K4, 16, false, false, alloc()).unwrap();
        assert_eq!(b.leaf_sizes(), [1 << 12, 1 << 21, 1 << 30]);
        assert_eq!(b.first_level(), 0);
        let b = VmsaBuilder::new(Granule::K16, 16, false, false, alloc()).unwrap();
        assert_eq!(b.leaf_sizes(), [1 << 14, 1 << 25]);
        let b = VmsaBuilder::new(Granule::K64, 12, true, false, alloc()).unwrap();
        assert_eq!(b.leaf_sizes(), [1 << 16, 1 << 29, 1 << 42]);
        let b = VmsaBuilder::new(Granule::K64, 25, false, false, alloc()).unwrap();
        assert_eq!(b.first_level(), 2);
        assert_eq!(b.leaf_sizes(), [1 << 16, 1 << 29]);
        assert!(VmsaBuilder::new(Granule::K4, 16, true, false, alloc()).is_err());
        assert!(VmsaBuilder::new(Granule::K4, 12, false, false, alloc()).is_err());
        assert!(VmsaBuilder::new(Granule::K16, 15, false, false, alloc()).is_err());
        assert!(VmsaBuilder::new(Granule::K64, 40, false, false, alloc()).is_err());
    }

    #[test]
    fn map_writes_expected_descriptors() {
        let mut m = TestMemory::single(0x10_0000..0x100_0000);
        let mut b = VmsaBuilder::new(
            Granule::K4,
            25,
            false,
            false,
            TableAllocator::new(0x10_0000, 0x100_0000),
        )
        .unwrap();
        assert_eq!(b.first_level(), 1);
        let prot = Prot {
            write: false,
            user: true,
            exec: false,
        };
        b.map(&mut m, 0x4000_1000, 0x8000_5000, 0x1000, prot)
            .unwrap();
        let (leaf_at, level) = b.descriptor_address(&m, 0x4000_1000).unwrap();
        assert_eq!(level, 3);
        // Page, AF, AP = 0b11, UXN, PXN.
        let want = 0x8000_5000 | 0b11 | (1 << 10) | (0b11 << 6) | (1 << 54) | (1 << 53);
        assert_eq!(m.read_u64(leaf_at).unwrap(), want);
        // Root: level 1 index 1 holds a table descriptor.
        let root1 = m.read_u64(b.ttb0() + 8).unwrap();
        assert_eq!(root1 & 0b11, 0b11);
        assert_eq!(
            b.map(&mut m, 0x4000_1000, 0x9000_0000, 0x1000, prot),
            Err(BuildError::Overlap(0x4000_1000))
        );
        assert_eq!(
            b.map(&mut m, 0x4000_0000, 0, 0x20_0000, prot),
            Err(BuildError::Overlap(0x4000_0000))
        );
        assert_eq!(
            b.map(&mut m, 0x1000, 0x800, 0x1000, prot),
            Err(BuildError::Misaligned {
                iova: 0x1000,
                pa: 0x800,
                size: 0x1000
            })
        );
        assert_eq!(
            b.map(&mut m, 1 << 39, 0, 0x1000, prot),
            Err(BuildError::OutOfRange {
                iova: 1 << 39,
                pa: 0
            })
        );
        assert_eq!(
            b.map(&mut m, 0, 0, 0x2000, prot),
            Err(BuildError::BadSize(0x2000))
        );
    }
}
