//! Per-domain IOVA mappings.
//!
//! A mapping is exactly what one MAP request created: `[virt_start, virt_end]` (inclusive) to
//! `phys_start`, with permissions. Mappings never overlap and can only be removed whole.
//!
//! Layout: the mappings, in address order, live in chunks of at most [`CHUNK`] 16-byte slots;
//! an ordered map from each chunk's lower bound to the chunk finds the chunk of an address (the
//! chunks' bounds partition the address space: the first chunk starts at 0). Inside a chunk a
//! binary search finds the slot. A slot is two words:
//! - the start address, whose low 12 bits (zero in any page-aligned start) carry the low 12
//!   bits of the mapping's size in 4 KiB pages, minus one;
//! - the physical address, whose low 12 bits carry the three permission flags, a "wide" bit and
//!   the size's next 8 bits.
//!
//! So a page-aligned mapping of up to 4 GiB (2^20 pages) takes 16 bytes plus its share of a
//! chunk's slack; a chunk splits where it fills, and appending (what an IOVA allocator mostly
//! does) leaves full chunks behind. Any other mapping (unaligned, larger) is "wide": its slot
//! holds the exact start and the wide bit, and its end, address and flags live in a side table.
//!
//! Every operation is two logarithmic searches (the chunk map, then the chunk) plus work
//! proportional to what it changes: moving at most a chunk's slots, a few KiB.

use std::collections::BTreeMap;

use crate::protocol::{MAP_F_MMIO, MAP_F_READ, MAP_F_WRITE};

/// Most slots per chunk (1 KiB of slots): small enough that moving slots on an insert or a
/// removal costs little, large enough that the chunk map stays small.
const CHUNK: usize = 64;
/// A chunk this empty after a removal is merged with a neighbour that has the room.
const MERGE_BELOW: usize = CHUNK / 4;

const PAGE_SHIFT: u32 = 12;
const LOW: u64 = (1 << PAGE_SHIFT) - 1;
/// Permission flags in the physical word.
const FLAG_BITS: u64 = 0x7;
/// The slot's mapping is in the side table.
const WIDE: u64 = 0x8;
/// Size bits (pages - 1) held in the start word and in the physical word.
const SIZE_LOW_BITS: u32 = PAGE_SHIFT;
const SIZE_HIGH_SHIFT: u32 = 4;
const SIZE_HIGH_BITS: u32 = PAGE_SHIFT - SIZE_HIGH_SHIFT;
/// Largest pages - 1 a compact slot holds.
const MAX_COMPACT_PAGES_M1: u64 = (1 << (SIZE_LOW_BITS + SIZE_HIGH_BITS)) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    key: u64,
    phys: u64,
}

impl Slot {
    fn wide(&self) -> bool {
        self.phys & WIDE != 0
    }

    fn start(&self) -> u64 {
        if self.wide() {
            self.key
        } else {
            self.key & !LOW
        }
    }

    /// A compact slot for the mapping, if it has one.
    fn compact(virt_start: u64, virt_end: u64, phys_start: u64, flags: u32) -> Option<Slot> {
        if virt_start & LOW != 0 || phys_start & LOW != 0 || virt_end & LOW != LOW {
            return None;
        }
        let pages_m1 = (virt_end - virt_start) >> PAGE_SHIFT;
        if pages_m1 > MAX_COMPACT_PAGES_M1 {
            return None;
        }
        Some(Slot {
            key: virt_start | (pages_m1 & LOW),
            phys: phys_start
                | (u64::from(flags) & FLAG_BITS)
                | ((pages_m1 >> SIZE_LOW_BITS) << SIZE_HIGH_SHIFT),
        })
    }
}

/// A mapping too wide (or not page-aligned) for a compact slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Wide {
    virt_end: u64,
    phys_start: u64,
    flags: u32,
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
}

#[derive(Debug, Default)]
pub struct MappingTable {
    /// Chunk lower bound -> the chunk's slots in address order (never empty; the first bound
    /// is 0).
    chunks: BTreeMap<u64, Vec<Slot>>,
    /// Start -> the rest of every wide mapping.
    wide: BTreeMap<u64, Wide>,
    len: usize,
}

/// Result of [`MappingTable::locate`].
struct Place<'a> {
    /// Key of the chunk `addr` falls in.
    bound: u64,
    /// Index in that chunk of the first slot starting above `addr`.
    pos: usize,
    /// That chunk.
    chunk: &'a [Slot],
    /// The mapping with the greatest start <= `addr`.
    pred: Option<&'a Slot>,
}

impl MappingTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn decode(&self, s: &Slot) -> Mapping {
        decode(&self.wide, s)
    }

    /// The end of the mapping in `s`.
    fn end_of(&self, s: &Slot) -> u64 {
        self.decode(s).virt_end
    }

    /// The bound of the chunk whose range holds `addr`.
    fn chunk_of(&self, addr: u64) -> Option<u64> {
        self.chunks.range(..=addr).next_back().map(|(k, _)| *k)
    }

    /// The slot of the mapping with the greatest start <= `addr`, if any.
    fn predecessor(&self, addr: u64) -> Option<&Slot> {
        self.locate(addr)?.pred
    }

    /// The slot just before position `pos` of the chunk keyed `bound`: `chunk[pos - 1]`, or
    /// the previous chunk's last slot when `pos` is 0.
    fn before<'a>(&'a self, bound: u64, chunk: &'a [Slot], pos: usize) -> Option<&'a Slot> {
        match pos.checked_sub(1) {
            Some(i) => chunk.get(i),
            None => self
                .chunks
                .range(..bound)
                .next_back()
                .and_then(|(_, c)| c.last()),
        }
    }

    /// Where `addr` falls: the chunk that would hold a mapping starting there, the position in
    /// it, and the mapping with the greatest start <= `addr`. None when no chunk starts at or
    /// below `addr`.
    fn locate(&self, addr: u64) -> Option<Place<'_>> {
        let (&bound, chunk) = self.chunks.range(..=addr).next_back()?;
        let pos = chunk.partition_point(|s| s.start() <= addr);
        let pred = self.before(bound, chunk, pos);
        Some(Place {
            bound,
            pos,
            chunk,
            pred,
        })
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
        // The only candidate for overlap is the last mapping starting at or before virt_end.
        // Its chunk is also where the new mapping goes, unless a chunk starts inside
        // [virt_start, virt_end] (then `place` finds the chunk again).
        let mut direct = None;
        if let Some(at) = self.locate(virt_end) {
            if let Some(p) = at.pred {
                if self.end_of(p) >= virt_start {
                    return Err(MappingError::Overlap(p.start()));
                }
            }
            if at.bound <= virt_start && at.chunk.len() < CHUNK {
                direct = Some((at.bound, at.pos));
            }
        }
        let slot = match Slot::compact(virt_start, virt_end, phys_start, flags) {
            Some(s) => s,
            None => {
                self.wide.insert(
                    virt_start,
                    Wide {
                        virt_end,
                        phys_start,
                        flags: flags & FLAG_BITS as u32,
                    },
                );
                Slot {
                    key: virt_start,
                    phys: WIDE,
                }
            }
        };
        match direct.and_then(|(bound, pos)| Some((self.chunks.get_mut(&bound)?, pos))) {
            // Nothing starts in [virt_start, virt_end]: `pos` is the new slot's place.
            Some((chunk, pos)) => chunk.insert(pos, slot),
            None => self.place(slot),
        }
        self.len += 1;
        Ok(())
    }

    /// Put `slot` (overlapping nothing) into its chunk, splitting a full one.
    fn place(&mut self, slot: Slot) {
        let start = slot.start();
        let Some(bound) = self.chunk_of(start) else {
            let mut chunk = Vec::with_capacity(CHUNK);
            chunk.push(slot);
            self.chunks.insert(0, chunk);
            return;
        };
        let Some(chunk) = self.chunks.get_mut(&bound) else {
            return;
        };
        let pos = chunk.partition_point(|s| s.start() < start);
        if chunk.len() < CHUNK {
            chunk.insert(pos, slot);
            return;
        }
        // Full: split. Appending (or prepending) leaves the full chunk whole and starts a new
        // one, so that ascending (descending) inserts fill chunks completely.
        if pos == chunk.len() {
            let mut next = Vec::with_capacity(CHUNK);
            next.push(slot);
            self.chunks.insert(start, next);
        } else if pos == 0 {
            // The old slots move to a chunk bounded at their first start; the new one stays.
            let first = chunk[0].start();
            let mut fresh = Vec::with_capacity(CHUNK);
            fresh.push(slot);
            let old = std::mem::replace(chunk, fresh);
            self.chunks.insert(first, old);
        } else {
            let mut upper = Vec::with_capacity(CHUNK);
            upper.extend_from_slice(&chunk[CHUNK / 2..]);
            chunk.truncate(CHUNK / 2);
            let upper_bound = upper[0].start();
            if pos <= CHUNK / 2 {
                chunk.insert(pos, slot);
            } else {
                upper.insert(pos - CHUNK / 2, slot);
            }
            self.chunks.insert(upper_bound, upper);
        }
    }

    /// Check that removing `[start, end]` would not split a mapping.
    pub fn check_remove(&self, start: u64, end: u64) -> Result<(), MappingError> {
        if start > end {
            return Ok(());
        }
        // The last mapping starting at or before `end`: it must end inside the range, or (if
        // it starts before the range) before it.
        let Some(Place {
            bound,
            chunk,
            pred: Some(last),
            ..
        }) = self.locate(end)
        else {
            return Ok(());
        };
        let (last_start, last_end) = (last.start(), self.end_of(last));
        if last_start < start {
            return if last_end >= start {
                Err(MappingError::Split(last_start))
            } else {
                Ok(())
            };
        }
        if last_end > end {
            return Err(MappingError::Split(last_start));
        }
        // A mapping starting before `start` and reaching into the range would be split: the
        // last one starting before `start`, mostly in the same chunk.
        let before = if bound < start {
            self.before(bound, chunk, chunk.partition_point(|s| s.start() < start))
        } else {
            start.checked_sub(1).and_then(|b| self.predecessor(b))
        };
        if let Some(p) = before {
            if self.end_of(p) >= start {
                return Err(MappingError::Split(p.start()));
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
        removed: impl FnMut(&Mapping),
    ) -> Result<usize, MappingError> {
        self.check_remove(start, end)?;
        Ok(self.remove_checked(start, end, removed))
    }

    /// [`MappingTable::remove_range`] once [`MappingTable::check_remove`] accepted the range
    /// (and the table did not change since): every mapping starting in `[start, end]` goes.
    pub fn remove_checked(
        &mut self,
        start: u64,
        end: u64,
        mut removed: impl FnMut(&Mapping),
    ) -> usize {
        if start > end {
            return 0;
        }
        let mut count = 0;
        let mut from = start;
        while let Some(bound) = self.chunk_of(from) {
            let Self { chunks, wide, len } = self;
            let Some(chunk) = chunks.get_mut(&bound) else {
                break;
            };
            let lo = chunk.partition_point(|s| s.start() < from);
            let hi = chunk.partition_point(|s| s.start() <= end);
            if lo < hi {
                for s in &chunk[lo..hi] {
                    removed(&decode(wide, s));
                }
                for s in chunk.drain(lo..hi) {
                    if s.wide() {
                        wide.remove(&s.key);
                    }
                }
                count += hi - lo;
                *len -= hi - lo;
                // A slot left past the removed ones starts after `end`: the range is done.
                let done = lo < chunk.len();
                if chunk.len() < MERGE_BELOW {
                    self.tidy(bound);
                }
                if done {
                    break;
                }
                // Tidying may have merged the next chunk into this one (or this one into the
                // previous): look at the same place again.
                continue;
            }
            // Nothing (more) here: the next chunk, if it starts inside the range.
            match self
                .chunks
                .range((
                    std::ops::Bound::Excluded(bound),
                    std::ops::Bound::Included(end),
                ))
                .next()
            {
                Some((k, _)) => from = *k,
                None => break,
            }
        }
        count
    }

    /// After a removal from chunk `bound`: drop it if empty, merge it with a neighbour if
    /// nearly empty (keeping the first chunk's bound at 0).
    fn tidy(&mut self, bound: u64) {
        let Some(len) = self.chunks.get(&bound).map(Vec::len) else {
            return;
        };
        if len >= MERGE_BELOW {
            return;
        }
        // Into the previous chunk if there is room (this chunk's range becomes its).
        if let Some((_, prev)) = self.chunks.range_mut(..bound).next_back() {
            if prev.len() + len <= CHUNK / 2 {
                if let Some(mine) = self.chunks.remove(&bound) {
                    if let Some((_, prev)) = self.chunks.range_mut(..bound).next_back() {
                        prev.extend_from_slice(&mine);
                    }
                }
                return;
            }
        }
        // Or take in the next chunk.
        let next = self
            .chunks
            .range((std::ops::Bound::Excluded(bound), std::ops::Bound::Unbounded))
            .next()
            .map(|(k, v)| (*k, v.len()));
        if let Some((nb, nlen)) = next {
            if len + nlen <= CHUNK / 2 || len == 0 {
                if let Some(theirs) = self.chunks.remove(&nb) {
                    if let Some(mine) = self.chunks.get_mut(&bound) {
                        if len == 0 {
                            // Keep their allocation; this bound covers both ranges.
                            *mine = theirs;
                        } else {
                            mine.extend_from_slice(&theirs);
                        }
                    }
                }
                return;
            }
        }
        if len == 0 {
            // Empty with no neighbour to take in: the first chunk (bound 0) is the only one left.
            self.chunks.remove(&bound);
        }
    }

    /// The mapping containing `iova`.
    pub fn lookup(&self, iova: u64) -> Option<Mapping> {
        let m = self.decode(self.predecessor(iova)?);
        (m.virt_end >= iova).then_some(m)
    }

    /// Up to `limit` mappings with `virt_start >= from`, in address order.
    pub fn page(&self, from: u64, limit: usize) -> impl Iterator<Item = Mapping> + '_ {
        let first = self.chunk_of(from).unwrap_or(0);
        self.chunks
            .range(first..)
            .flat_map(|(_, c)| c.iter())
            .skip_while(move |s| s.start() < from)
            .take(limit)
            .map(|s| self.decode(s))
    }

    pub fn iter(&self) -> impl Iterator<Item = Mapping> + '_ {
        self.chunks
            .values()
            .flat_map(|c| c.iter())
            .map(|s| self.decode(s))
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.wide.clear();
        self.len = 0;
    }
}

/// The mapping in slot `s` (`wide`: the side table of wide mappings).
fn decode(wide: &BTreeMap<u64, Wide>, s: &Slot) -> Mapping {
    if s.wide() {
        // Every wide slot has its side entry (inserted and removed together).
        let w = wide.get(&s.key).copied().unwrap_or(Wide {
            virt_end: s.key,
            phys_start: 0,
            flags: 0,
        });
        return Mapping {
            virt_start: s.key,
            virt_end: w.virt_end,
            phys_start: w.phys_start,
            flags: w.flags,
        };
    }
    let start = s.key & !LOW;
    let pages_m1 = (s.key & LOW) | (((s.phys & LOW) >> SIZE_HIGH_SHIFT) << SIZE_LOW_BITS);
    Mapping {
        virt_start: start,
        virt_end: start + ((pages_m1 << PAGE_SHIFT) | LOW),
        phys_start: s.phys & !LOW,
        // Only three bits are stored.
        flags: (s.phys & FLAG_BITS) as u32,
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

    /// The table against a plain list, under a deterministic random mix of inserts (compact
    /// and wide, page-aligned and not), removals and lookups, small enough that chunks split,
    /// empty and merge all the time.
    #[test]
    fn matches_a_plain_list_under_random_operations() {
        #[derive(Clone, Copy)]
        struct M {
            s: u64,
            e: u64,
            p: u64,
            f: u32,
        }
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut t = MappingTable::new();
        let mut list: Vec<M> = Vec::new();
        for round in 0..60_000u32 {
            let op = rnd(10);
            if op < 5 {
                // Mostly single pages in a small space (dense, so overlaps happen), sometimes
                // big, unaligned or at the top of the address space.
                let (s, e) = match rnd(20) {
                    0 => {
                        let s = rnd(1 << 20) * 7 + 3;
                        (s, s + rnd(1 << 14))
                    }
                    1 => (rnd(4) << 32, (rnd(4) << 32) + (5 << 32) - 1),
                    2 => (u64::MAX - (rnd(4) << 12) - 0xfff, u64::MAX),
                    _ => {
                        let s = rnd(4096) << 12;
                        (s, s + (rnd(3) + 1) * 0x1000 - 1)
                    }
                };
                let p = if rnd(10) == 0 {
                    rnd(1 << 30)
                } else {
                    rnd(1 << 30) << 12
                };
                let f = rnd(8) as u32;
                let overlap = list
                    .iter()
                    .filter(|m| m.s <= e && m.e >= s)
                    .map(|m| m.s)
                    .max();
                let got = t.insert(s, e, p, f);
                match overlap {
                    Some(_) => assert!(got.is_err(), "round {round}: insert {s:#x}-{e:#x}"),
                    None => {
                        assert_eq!(got, Ok(()), "round {round}");
                        list.push(M { s, e, p, f });
                    }
                }
            } else if op < 8 {
                let s = rnd(4096) << 12;
                // Now and then a wide sweep across many chunks.
                let pages = if rnd(50) == 0 {
                    rnd(1024) + 1
                } else {
                    rnd(16) + 1
                };
                let e = s + pages * 0x1000 - 1;
                let split = list
                    .iter()
                    .any(|m| m.s <= e && m.e >= s && (m.s < s || m.e > e));
                let inside = list.iter().filter(|m| m.s >= s && m.s <= e).count();
                let mut seen = Vec::new();
                let got = t.remove_range(s, e, |m| seen.push(m.virt_start));
                if split {
                    assert!(got.is_err(), "round {round}: remove {s:#x}-{e:#x}");
                    assert!(seen.is_empty());
                } else {
                    assert_eq!(got, Ok(inside), "round {round}: remove {s:#x}-{e:#x}");
                    let mut want: Vec<u64> = list
                        .iter()
                        .filter(|m| m.s >= s && m.s <= e)
                        .map(|m| m.s)
                        .collect();
                    want.sort_unstable();
                    assert_eq!(seen, want);
                    list.retain(|m| !(m.s >= s && m.s <= e));
                }
            } else {
                let iova = if rnd(2) == 0 {
                    rnd(1 << 24)
                } else {
                    rnd(u64::MAX)
                };
                let want = list.iter().find(|m| m.s <= iova && m.e >= iova);
                let got = t.lookup(iova);
                match want {
                    Some(m) => assert_eq!(
                        got,
                        Some(Mapping {
                            virt_start: m.s,
                            virt_end: m.e,
                            phys_start: m.p,
                            flags: m.f,
                        }),
                        "round {round}: lookup {iova:#x}"
                    ),
                    None => assert_eq!(got, None, "round {round}: lookup {iova:#x}"),
                }
            }
            assert_eq!(t.len(), list.len());
            if round % 5000 == 0 {
                let mut want: Vec<(u64, u64, u64, u32)> =
                    list.iter().map(|m| (m.s, m.e, m.p, m.f)).collect();
                want.sort_unstable();
                let got: Vec<(u64, u64, u64, u32)> = t
                    .iter()
                    .map(|m| (m.virt_start, m.virt_end, m.phys_start, m.flags))
                    .collect();
                assert_eq!(got, want, "round {round}");
                let from = rnd(1 << 24);
                let page: Vec<u64> = t.page(from, 7).map(|m| m.virt_start).collect();
                let want: Vec<u64> = want
                    .iter()
                    .map(|m| m.0)
                    .filter(|&s| s >= from)
                    .take(7)
                    .collect();
                assert_eq!(page, want);
            }
        }
        t.clear();
        assert!(t.is_empty() && t.iter().next().is_none());
    }

    #[test]
    fn ascending_and_descending_fill_leave_full_chunks() {
        for descending in [false, true] {
            let mut t = MappingTable::new();
            let n = 100 * CHUNK as u64;
            for i in 0..n {
                let i = if descending { n - 1 - i } else { i };
                t.insert(i << 12, (i << 12) | 0xfff, i << 12, RW).unwrap();
            }
            assert_eq!(t.len() as u64, n);
            assert!(t.chunks.len() <= 101, "{} chunks", t.chunks.len());
            // Remove every other page: chunks half empty, none merged (still above a quarter).
            for i in (0..n).step_by(2) {
                assert_eq!(t.remove_range(i << 12, (i << 12) | 0xfff, |_| {}), Ok(1));
            }
            // Remove all but one in 16: chunks merge, and stay within a chunk's worth.
            for i in (1..n).step_by(2).filter(|i| i % 16 != 1) {
                assert_eq!(t.remove_range(i << 12, (i << 12) | 0xfff, |_| {}), Ok(1));
            }
            assert_eq!(t.len() as u64, n / 16);
            let per_chunk = t.len() / t.chunks.len();
            assert!(per_chunk >= CHUNK / 8, "{per_chunk} mappings per chunk");
            assert_eq!(t.remove_range(0, u64::MAX, |_| {}), Ok(n as usize / 16));
            assert!(t.chunks.is_empty() && t.is_empty());
        }
    }
}
