//! PASID spaces: allocation bitmaps and per-endpoint maps of PASID-indexed state.
//!
//! A space is `width` bits wide (at most 20, the PCIe PASID size), the smaller of what the
//! host supports (`iommu_hw_info.out_max_pasid_log2`, SMMU_IDR1.SSIDSIZE, ECAP.PSS+1) and what
//! the configuration allows. The allocation bitmap is two-level: one bit per PASID in words
//! allocated on demand, plus a summary bit per full word, so finding the lowest free PASID
//! scans at most 256 summary words for a 20-bit space and memory grows with the highest PASID
//! in use, not with the width.

use std::collections::HashMap;

/// Largest PASID width (PCIe: 20 bits).
pub const MAX_PASID_BITS: u8 = 20;

/// PASID space errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasidError {
    /// A configured width above 20 bits.
    #[error("PASID width {0} exceeds {MAX_PASID_BITS} bits")]
    WidthTooLarge(u8),
    /// A PASID outside the space.
    #[error("PASID {pasid:#x} is outside the {bits}-bit PASID space")]
    OutOfRange {
        /// The PASID.
        pasid: u32,
        /// Width of the space.
        bits: u8,
    },
    /// A PASID the space reserves (PASID 0 when the space reserves it).
    #[error("PASID {0:#x} is reserved")]
    Reserved(u32),
    /// Already allocated.
    #[error("PASID {0:#x} is already in use")]
    Busy(u32),
    /// Not allocated.
    #[error("PASID {0:#x} is not in use")]
    NotAllocated(u32),
    /// No free PASID left.
    #[error("PASID space exhausted")]
    Exhausted,
    /// No space registered for the endpoint.
    #[error("endpoint {0} has no PASID space")]
    NoEndpoint(u32),
}

/// The usable width: the smaller of the host's and the configuration's. A host reporting more
/// than 20 bits is clamped to 20; a configuration asking for more is an error.
pub fn effective_width(host_bits: u8, config_bits: u8) -> Result<u8, PasidError> {
    if config_bits > MAX_PASID_BITS {
        return Err(PasidError::WidthTooLarge(config_bits));
    }
    Ok(host_bits.min(MAX_PASID_BITS).min(config_bits))
}

/// A two-level allocation bitmap over `[0, 2^width)`.
#[derive(Debug, Clone)]
pub struct PasidBitmap {
    width: u8,
    words: Vec<u64>,
    /// Bit `i` set when `words[i]` is full.
    full: Vec<u64>,
    used: u32,
}

impl PasidBitmap {
    /// An empty bitmap of `width` bits (0..=20).
    pub fn new(width: u8) -> Result<Self, PasidError> {
        if width > MAX_PASID_BITS {
            return Err(PasidError::WidthTooLarge(width));
        }
        Ok(PasidBitmap {
            width,
            words: Vec::new(),
            full: Vec::new(),
            used: 0,
        })
    }

    /// Width in bits.
    pub fn width(&self) -> u8 {
        self.width
    }

    /// Number of PASIDs in the space.
    pub fn capacity(&self) -> u32 {
        1u32 << self.width
    }

    /// Number of PASIDs in use.
    pub fn used(&self) -> u32 {
        self.used
    }

    fn check(&self, pasid: u32) -> Result<(), PasidError> {
        if pasid >= self.capacity() {
            return Err(PasidError::OutOfRange {
                pasid,
                bits: self.width,
            });
        }
        Ok(())
    }

    /// Whether `pasid` is set.
    pub fn contains(&self, pasid: u32) -> bool {
        let w = (pasid / 64) as usize;
        self.words
            .get(w)
            .is_some_and(|word| word & (1u64 << (pasid % 64)) != 0)
    }

    /// Sets `pasid`; `Busy` if already set.
    pub fn set(&mut self, pasid: u32) -> Result<(), PasidError> {
        self.check(pasid)?;
        let w = (pasid / 64) as usize;
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
            self.full.resize(w / 64 + 1, 0);
        }
        let bit = 1u64 << (pasid % 64);
        if self.words[w] & bit != 0 {
            return Err(PasidError::Busy(pasid));
        }
        self.words[w] |= bit;
        if self.words[w] == u64::MAX {
            self.full[w / 64] |= 1u64 << (w % 64);
        }
        self.used += 1;
        Ok(())
    }

    /// Clears `pasid`; `NotAllocated` if it was clear.
    pub fn clear(&mut self, pasid: u32) -> Result<(), PasidError> {
        self.check(pasid)?;
        if !self.contains(pasid) {
            return Err(PasidError::NotAllocated(pasid));
        }
        let w = (pasid / 64) as usize;
        self.words[w] &= !(1u64 << (pasid % 64));
        self.full[w / 64] &= !(1u64 << (w % 64));
        self.used -= 1;
        Ok(())
    }

    /// The lowest clear PASID, if any.
    pub fn first_free(&self) -> Option<u32> {
        let cap = self.capacity();
        for (i, &f) in self.full.iter().enumerate() {
            if f == u64::MAX {
                continue;
            }
            let w = i * 64 + (!f).trailing_zeros() as usize;
            let word = self.words.get(w).copied().unwrap_or(0);
            let pasid = u32::try_from(w * 64).ok()? + (!word).trailing_zeros();
            return (pasid < cap).then_some(pasid);
        }
        // Every allocated word is full: the first PASID past them.
        let pasid = u32::try_from(self.words.len() * 64).ok()?;
        (pasid < cap).then_some(pasid)
    }

    /// Allocates the lowest clear PASID.
    pub fn alloc(&mut self) -> Result<u32, PasidError> {
        let pasid = self.first_free().ok_or(PasidError::Exhausted)?;
        self.set(pasid)?;
        Ok(pasid)
    }
}

/// PASID-indexed state of one endpoint, with allocation.
#[derive(Debug, Clone)]
pub struct PasidSpace<T> {
    bitmap: PasidBitmap,
    reserve_zero: bool,
    entries: HashMap<u32, T>,
}

impl<T> PasidSpace<T> {
    /// A space of `width` bits. With `reserve_zero`, PASID 0 is never handed out or accepted
    /// (SMMUv3 S1DSS=SSID0 and VT-d RID_PASID use it for requests without PASID).
    pub fn new(width: u8, reserve_zero: bool) -> Result<Self, PasidError> {
        let mut bitmap = PasidBitmap::new(width)?;
        if reserve_zero {
            bitmap.set(0)?;
        }
        Ok(PasidSpace {
            bitmap,
            reserve_zero,
            entries: HashMap::new(),
        })
    }

    /// Width in bits.
    pub fn width(&self) -> u8 {
        self.bitmap.width()
    }

    /// Number of PASIDs in use (reserved PASID 0 not counted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No PASID in use.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks `pasid` is in range and not reserved.
    pub fn check(&self, pasid: u32) -> Result<(), PasidError> {
        self.bitmap.check(pasid)?;
        if self.reserve_zero && pasid == 0 {
            return Err(PasidError::Reserved(0));
        }
        Ok(())
    }

    /// Stores `value` at the lowest free PASID.
    pub fn alloc(&mut self, value: T) -> Result<u32, PasidError> {
        let pasid = self.bitmap.alloc()?;
        self.entries.insert(pasid, value);
        Ok(pasid)
    }

    /// Stores `value` at `pasid` (chosen by the guest); `Busy` if in use.
    pub fn insert(&mut self, pasid: u32, value: T) -> Result<(), PasidError> {
        self.check(pasid)?;
        self.bitmap.set(pasid)?;
        self.entries.insert(pasid, value);
        Ok(())
    }

    /// Replaces the value at an allocated `pasid`, returning the old one.
    pub fn replace(&mut self, pasid: u32, value: T) -> Result<T, PasidError> {
        self.check(pasid)?;
        match self.entries.get_mut(&pasid) {
            Some(slot) => Ok(std::mem::replace(slot, value)),
            None => Err(PasidError::NotAllocated(pasid)),
        }
    }

    /// Frees `pasid`, returning its value.
    pub fn remove(&mut self, pasid: u32) -> Result<T, PasidError> {
        self.check(pasid)?;
        let v = self
            .entries
            .remove(&pasid)
            .ok_or(PasidError::NotAllocated(pasid))?;
        self.bitmap.clear(pasid)?;
        Ok(v)
    }

    /// The value at `pasid`.
    pub fn get(&self, pasid: u32) -> Option<&T> {
        self.entries.get(&pasid)
    }

    /// The value at `pasid`, mutable.
    pub fn get_mut(&mut self, pasid: u32) -> Option<&mut T> {
        self.entries.get_mut(&pasid)
    }

    /// Whether `pasid` is in use.
    pub fn contains(&self, pasid: u32) -> bool {
        self.entries.contains_key(&pasid)
    }

    /// PASIDs in use with their values, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.entries.iter().map(|(&k, v)| (k, v))
    }

    /// Frees every PASID (e.g. on endpoint detach), returning the values.
    pub fn drain(&mut self) -> Vec<(u32, T)> {
        let out: Vec<_> = self.entries.drain().collect();
        for (pasid, _) in &out {
            // Entries and bitmap are kept in sync, so this cannot fail; ignore rather than
            // panic if it ever did.
            let _ = self.bitmap.clear(*pasid);
        }
        out
    }
}

/// PASID spaces of all endpoints, keyed by virtio-iommu endpoint ID.
#[derive(Debug, Clone)]
pub struct PasidSpaces<T> {
    host_bits: u8,
    spaces: HashMap<u32, PasidSpace<T>>,
}

impl<T> PasidSpaces<T> {
    /// Spaces limited to the host's PASID width.
    pub fn new(host_bits: u8) -> Self {
        PasidSpaces {
            host_bits: host_bits.min(MAX_PASID_BITS),
            spaces: HashMap::new(),
        }
    }

    /// Creates (or returns the existing) space for `endpoint` with the configured width
    /// limited by the host's.
    pub fn add_endpoint(
        &mut self,
        endpoint: u32,
        config_bits: u8,
        reserve_zero: bool,
    ) -> Result<&mut PasidSpace<T>, PasidError> {
        let width = effective_width(self.host_bits, config_bits)?;
        use std::collections::hash_map::Entry;
        Ok(match self.spaces.entry(endpoint) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(PasidSpace::new(width, reserve_zero)?),
        })
    }

    /// Removes `endpoint`'s space, returning it.
    pub fn remove_endpoint(&mut self, endpoint: u32) -> Option<PasidSpace<T>> {
        self.spaces.remove(&endpoint)
    }

    /// `endpoint`'s space.
    pub fn get(&self, endpoint: u32) -> Result<&PasidSpace<T>, PasidError> {
        self.spaces
            .get(&endpoint)
            .ok_or(PasidError::NoEndpoint(endpoint))
    }

    /// `endpoint`'s space, mutable.
    pub fn get_mut(&mut self, endpoint: u32) -> Result<&mut PasidSpace<T>, PasidError> {
        self.spaces
            .get_mut(&endpoint)
            .ok_or(PasidError::NoEndpoint(endpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_is_min_of_host_and_config() {
        assert_eq!(effective_width(20, 16), Ok(16));
        assert_eq!(effective_width(8, 20), Ok(8));
        assert_eq!(effective_width(24, 20), Ok(20));
        assert_eq!(effective_width(20, 21), Err(PasidError::WidthTooLarge(21)));
        assert!(PasidBitmap::new(21).is_err());
    }

    #[test]
    fn alloc_lowest_free_and_reuse() {
        let mut s = PasidSpace::new(4, true).unwrap();
        assert_eq!(s.alloc('a'), Ok(1));
        assert_eq!(s.alloc('b'), Ok(2));
        s.insert(5, 'c').unwrap();
        assert_eq!(s.alloc('d'), Ok(3));
        assert_eq!(s.alloc('e'), Ok(4));
        assert_eq!(s.alloc('f'), Ok(6));
        assert_eq!(s.remove(2), Ok('b'));
        assert_eq!(s.alloc('g'), Ok(2));
        assert_eq!(s.get(5), Some(&'c'));
        assert_eq!(s.replace(5, 'h'), Ok('c'));
        assert_eq!(s.replace(9, 'h'), Err(PasidError::NotAllocated(9)));
        assert_eq!(s.len(), 6);
    }

    #[test]
    fn errors() {
        let mut s = PasidSpace::new(4, true).unwrap();
        assert_eq!(s.insert(0, ()), Err(PasidError::Reserved(0)));
        assert_eq!(
            s.insert(16, ()),
            Err(PasidError::OutOfRange { pasid: 16, bits: 4 })
        );
        s.insert(3, ()).unwrap();
        assert_eq!(s.insert(3, ()), Err(PasidError::Busy(3)));
        assert_eq!(s.remove(4), Err(PasidError::NotAllocated(4)));
        assert_eq!(s.remove(0), Err(PasidError::Reserved(0)));
        for _ in 0..14 {
            s.alloc(()).unwrap();
        }
        assert_eq!(s.alloc(()), Err(PasidError::Exhausted));
        assert_eq!(s.len(), 15);
        // PASID 0 usable when not reserved.
        let mut s = PasidSpace::new(0, false).unwrap();
        assert_eq!(s.alloc(()), Ok(0));
        assert_eq!(s.alloc(()), Err(PasidError::Exhausted));
    }

    #[test]
    fn full_20_bit_space_allocates_every_pasid_once() {
        let mut b = PasidBitmap::new(20).unwrap();
        for expect in 0..(1u32 << 20) {
            assert_eq!(b.alloc(), Ok(expect));
        }
        assert_eq!(b.alloc(), Err(PasidError::Exhausted));
        assert_eq!(b.used(), 1 << 20);
        b.clear(777_777).unwrap();
        b.clear(5).unwrap();
        assert_eq!(b.alloc(), Ok(5));
        assert_eq!(b.alloc(), Ok(777_777));
        assert_eq!(b.alloc(), Err(PasidError::Exhausted));
    }

    #[test]
    fn sparse_high_pasid_does_not_allocate_everything() {
        let mut b = PasidBitmap::new(20).unwrap();
        b.set((1 << 20) - 1).unwrap();
        assert_eq!(b.first_free(), Some(0));
        assert!(b.contains((1 << 20) - 1));
        assert!(!b.contains(12));
    }

    #[test]
    fn drain_frees_everything() {
        let mut s = PasidSpace::new(8, true).unwrap();
        for i in 0..10 {
            s.alloc(i).unwrap();
        }
        let mut d = s.drain();
        d.sort();
        assert_eq!(d.len(), 10);
        assert_eq!(d[0], (1, 0));
        assert!(s.is_empty());
        assert_eq!(s.alloc(42), Ok(1));
    }

    #[test]
    fn per_endpoint_spaces() {
        let mut all: PasidSpaces<u64> = PasidSpaces::new(16);
        assert_eq!(all.add_endpoint(7, 20, true).unwrap().width(), 16);
        assert_eq!(all.add_endpoint(8, 5, false).unwrap().width(), 5);
        all.get_mut(7).unwrap().insert(100, 1).unwrap();
        all.get_mut(8).unwrap().insert(100 % 32, 2).unwrap();
        assert_eq!(all.get(7).unwrap().get(100), Some(&1));
        assert_eq!(all.get(9).err(), Some(PasidError::NoEndpoint(9)));
        assert!(all.add_endpoint(9, 21, false).is_err());
        assert!(all.remove_endpoint(7).is_some());
        assert!(all.get(7).is_err());
    }
}
