//! Per-domain IOVA mappings.
//!
//! A mapping is exactly what one MAP request created: `[virt_start, virt_end]` (inclusive) to
//! `phys_start`, with permissions. Mappings never overlap and can only be removed whole.
//!
//! The table is an ordered map keyed by `virt_start`. Every operation is a logarithmic search plus
//! work proportional to what it changes:
//! - insert: one predecessor search decides overlap;
//! - remove a range: two boundary checks decide whether a mapping would be split, then each
//!   covered mapping is removed individually;
//! - lookup: one predecessor search.
//!
//! Memory: each entry stores the key and 16 bytes of value (the permission flags live in the low
//! bits of the page-aligned physical address), so a live mapping costs the B-tree's 24-byte slot
//! plus node overhead.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::protocol::{MAP_F_MMIO, MAP_F_READ, MAP_F_WRITE};

/// Low bits of the physical address used to store the flags. Requires a granule of at least 8
/// bytes, which configuration validation guarantees (the smallest granule accepted is 4 KiB).
const FLAG_BITS: u64 = 0x7;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    virt_end: u64,
    phys_and_flags: u64,
}

/// A mapping as the guest created it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub virt_start: u64,
    pub virt_end: u64,
    pub phys_start: u64,
    /// `MAP_F_READ | MAP_F_WRITE | MAP_F_MMIO` bits.
    pub flags: u32,
}

impl Mapping {
    pub fn readable(&self) -> bool {
        self.flags & MAP_F_READ != 0
    }
    pub fn writable(&self) -> bool {
        self.flags & MAP_F_WRITE != 0
    }
    pub fn mmio(&self) -> bool {
        self.flags & MAP_F_MMIO != 0
    }
}

/// Why a table operation was refused. The table is unchanged in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("range overlaps an existing mapping starting at {0:#x}")]
    Overlap(u64),
    #[error("range would split the mapping starting at {0:#x}")]
    Split(u64),
    #[error("physical address {0:#x} is not aligned for the flag encoding")]
    Unaligned(u64),
}

#[derive(Debug, Default)]
pub struct MappingTable {
    map: BTreeMap<u64, Entry>,
}

impl MappingTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn decode(virt_start: u64, e: &Entry) -> Mapping {
        Mapping {
            virt_start,
            virt_end: e.virt_end,
            phys_start: e.phys_and_flags & !FLAG_BITS,
            // Only three bits are stored.
            flags: (e.phys_and_flags & FLAG_BITS) as u32,
        }
    }

    /// The mapping with the greatest start <= `iova`, if any.
    fn predecessor(&self, iova: u64) -> Option<(u64, &Entry)> {
        self.map.range(..=iova).next_back().map(|(k, e)| (*k, e))
    }

    /// Insert `[virt_start, virt_end] -> phys_start`. `virt_start <= virt_end` is the caller's
    /// job (the device validates requests before they reach the table).
    pub fn insert(
        &mut self,
        virt_start: u64,
        virt_end: u64,
        phys_start: u64,
        flags: u32,
    ) -> Result<(), MappingError> {
        if phys_start & FLAG_BITS != 0 {
            return Err(MappingError::Unaligned(phys_start));
        }
        // The only candidate for overlap is the last mapping starting at or before virt_end.
        if let Some((start, e)) = self.predecessor(virt_end) {
            if e.virt_end >= virt_start {
                return Err(MappingError::Overlap(start));
            }
        }
        self.map.insert(
            virt_start,
            Entry {
                virt_end,
                phys_and_flags: phys_start | (u64::from(flags) & FLAG_BITS),
            },
        );
        Ok(())
    }

    /// Check that removing `[start, end]` would not split a mapping.
    pub fn check_remove(&self, start: u64, end: u64) -> Result<(), MappingError> {
        if start > end {
            return Ok(());
        }
        // A mapping starting before `start` and reaching into the range would be split.
        if start > 0 {
            if let Some((s, e)) = self.predecessor(start - 1) {
                if e.virt_end >= start {
                    return Err(MappingError::Split(s));
                }
            }
        }
        // The last mapping starting inside the range must end inside it.
        if let Some((s, e)) = self.map.range(start..=end).next_back() {
            if e.virt_end > end {
                return Err(MappingError::Split(*s));
            }
        }
        Ok(())
    }

    /// Remove every mapping inside `[start, end]`; refuse (removing nothing) if one would be
    /// split. Calls `removed` for each mapping removed, in address order, and returns how many.
    pub fn remove_range(
        &mut self,
        start: u64,
        end: u64,
        mut removed: impl FnMut(&Mapping),
    ) -> Result<usize, MappingError> {
        self.check_remove(start, end)?;
        let mut count = 0;
        if start > end {
            return Ok(0);
        }
        let mut from = start;
        loop {
            let next = self
                .map
                .range((Bound::Included(from), Bound::Included(end)))
                .next()
                .map(|(k, _)| *k);
            let Some(key) = next else { break };
            if let Some(e) = self.map.remove(&key) {
                removed(&Self::decode(key, &e));
                count += 1;
                // Stop past the range (BTreeMap::range panics on an inverted range).
                match e.virt_end.checked_add(1) {
                    Some(n) if n <= end => from = n,
                    _ => break,
                }
            }
        }
        Ok(count)
    }

    /// The mapping containing `iova`.
    pub fn lookup(&self, iova: u64) -> Option<Mapping> {
        let (start, e) = self.predecessor(iova)?;
        (e.virt_end >= iova).then(|| Self::decode(start, e))
    }

    /// Up to `limit` mappings with `virt_start >= from`, in address order.
    pub fn page(&self, from: u64, limit: usize) -> impl Iterator<Item = Mapping> + '_ {
        self.map
            .range(from..)
            .take(limit)
            .map(|(k, e)| Self::decode(*k, e))
    }

    pub fn iter(&self) -> impl Iterator<Item = Mapping> + '_ {
        self.map.iter().map(|(k, e)| Self::decode(*k, e))
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: u32 = MAP_F_READ | MAP_F_WRITE;

    fn starts(t: &MappingTable) -> Vec<(u64, u64)> {
        t.iter().map(|m| (m.virt_start, m.virt_end)).collect()
    }

    #[test]
    fn spec_unmap_example_split_is_refused() {
        // map(0,9); unmap(0,4) -> RANGE, nothing removed.
        let mut t = MappingTable::new();
        t.insert(0, 9, 0x1000, RW).unwrap();
        assert_eq!(t.remove_range(0, 4, |_| {}), Err(MappingError::Split(0)));
        assert_eq!(starts(&t), vec![(0, 9)]);
    }

    #[test]
    fn spec_unmap_example_gaps_are_fine() {
        // map(0,4); map(10,14); unmap(0,14) -> OK, both gone.
        let mut t = MappingTable::new();
        t.insert(0, 4, 0, RW).unwrap();
        t.insert(10, 14, 0x1000, RW).unwrap();
        assert_eq!(t.remove_range(0, 14, |_| {}), Ok(2));
        assert!(t.is_empty());
    }

    #[test]
    fn spec_unmap_examples_more() {
        // map(0,4); map(5,9); unmap(0,4) -> OK, only the first goes.
        let mut t = MappingTable::new();
        t.insert(0, 4, 0, RW).unwrap();
        t.insert(5, 9, 0x1000, RW).unwrap();
        assert_eq!(t.remove_range(0, 4, |_| {}), Ok(1));
        assert_eq!(starts(&t), vec![(5, 9)]);
        // unmap(0, 20) with a mapping strictly inside: removes it.
        assert_eq!(t.remove_range(0, 20, |_| {}), Ok(1));
        // Removing nothing is fine, and an inverted range removes nothing.
        assert_eq!(t.remove_range(0, u64::MAX, |_| {}), Ok(0));
        assert_eq!(t.remove_range(9, 3, |_| {}), Ok(0));
    }

    #[test]
    fn split_at_either_end_removes_nothing() {
        let mut t = MappingTable::new();
        t.insert(0x1000, 0x1fff, 0, RW).unwrap();
        t.insert(0x3000, 0x5fff, 0, RW).unwrap();
        t.insert(0x8000, 0x8fff, 0, RW).unwrap();
        // Starts inside [0x3000, 0x5fff].
        assert_eq!(
            t.remove_range(0x4000, 0x9fff, |_| {}),
            Err(MappingError::Split(0x3000))
        );
        // Ends inside [0x3000, 0x5fff].
        assert_eq!(
            t.remove_range(0x0, 0x4fff, |_| {}),
            Err(MappingError::Split(0x3000))
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn overlap_detection() {
        let mut t = MappingTable::new();
        t.insert(0x10000, 0x1ffff, 0, RW).unwrap();
        for (s, e) in [
            (0x10000, 0x10fff),
            (0xf000, 0x10000),
            (0x1f000, 0x20fff),
            (0x0, u64::MAX),
            (0x12000, 0x12fff),
        ] {
            assert_eq!(t.insert(s, e, 0, RW), Err(MappingError::Overlap(0x10000)));
        }
        t.insert(0xf000, 0xffff, 0, RW).unwrap();
        t.insert(0x20000, 0x20fff, 0, RW).unwrap();
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn lookup_and_flags() {
        let mut t = MappingTable::new();
        t.insert(0x2000, 0x3fff, 0xabc000, MAP_F_READ).unwrap();
        t.insert(u64::MAX - 0xfff, u64::MAX, 0x5000, RW | MAP_F_MMIO)
            .unwrap();
        let m = t.lookup(0x3fff).unwrap();
        assert_eq!(m.phys_start, 0xabc000);
        assert!(m.readable() && !m.writable() && !m.mmio());
        assert!(t.lookup(0x4000).is_none());
        assert!(t.lookup(0x1fff).is_none());
        let top = t.lookup(u64::MAX).unwrap();
        assert!(top.writable() && top.mmio());
        // Removing the top mapping ends the loop without overflow.
        assert_eq!(t.remove_range(u64::MAX - 0xfff, u64::MAX, |_| {}), Ok(1));
    }

    #[test]
    fn paging() {
        let mut t = MappingTable::new();
        for i in 0..10u64 {
            t.insert(i * 0x1000, i * 0x1000 + 0xfff, 0, RW).unwrap();
        }
        let p: Vec<u64> = t.page(0x3000, 4).map(|m| m.virt_start).collect();
        assert_eq!(p, vec![0x3000, 0x4000, 0x5000, 0x6000]);
    }

    #[test]
    fn million_mappings_stay_logarithmic() {
        // Functional check at scale (timing is measured in the benchmarks, not asserted here).
        let mut t = MappingTable::new();
        let n = 1_000_000u64;
        for i in 0..n {
            t.insert(i << 12, (i << 12) | 0xfff, i << 12, RW).unwrap();
        }
        assert_eq!(t.len(), n as usize);
        assert_eq!(t.lookup((n / 2) << 12).unwrap().phys_start, (n / 2) << 12);
        let mut seen = 0;
        assert_eq!(
            t.remove_range(10 << 12, (20 << 12) - 1, |_| seen += 1),
            Ok(10)
        );
        assert_eq!(seen, 10);
        assert_eq!(t.len(), n as usize - 10);
    }
}
