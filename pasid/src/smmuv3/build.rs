//! Builders for tests: encode context descriptors and lay out CD tables (linear or 2-level)
//! in guest memory, independently of the decoders.

use pagetables::build::{BuildError, GuestMemoryWrite, TableAllocator};
use pagetables::vmsa::Granule;

use super::ste::{S1Dss, S1Fmt};

/// The fields of an AArch64 CD. `encode` always sets V, AA64 and EPD1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CdFields {
    /// T0SZ.
    pub t0sz: u8,
    /// Granule (TG0).
    pub granule: Granule,
    /// IR0.
    pub ir0: u8,
    /// OR0.
    pub or0: u8,
    /// SH0.
    pub sh0: u8,
    /// EPD0.
    pub epd0: bool,
    /// ENDI.
    pub endi: bool,
    /// IPS encoding.
    pub ips: u8,
    /// AFFD.
    pub affd: bool,
    /// WXN.
    pub wxn: bool,
    /// TBI0.
    pub tbi0: bool,
    /// PAN.
    pub pan: bool,
    /// HD.
    pub hd: bool,
    /// HA.
    pub ha: bool,
    /// S.
    pub stall: bool,
    /// R.
    pub record: bool,
    /// A.
    pub abort: bool,
    /// ASET.
    pub aset: bool,
    /// ASID.
    pub asid: u16,
    /// HAD0.
    pub had0: bool,
    /// TTB0.
    pub ttb0: u64,
    /// MAIR.
    pub mair: u64,
    /// AMAIR.
    pub amair: u64,
}

impl CdFields {
    /// Linux-like defaults: 4K granule, 48-bit VA and PA, write-back inner-shareable walks,
    /// R and A set, the given ASID and table.
    pub fn new(asid: u16, ttb0: u64) -> Self {
        CdFields {
            t0sz: 16,
            granule: Granule::K4,
            ir0: 1,
            or0: 1,
            sh0: 3,
            epd0: false,
            endi: false,
            ips: 5,
            affd: false,
            wxn: false,
            tbi0: false,
            pan: false,
            hd: false,
            ha: false,
            stall: false,
            record: true,
            abort: true,
            aset: false,
            asid,
            had0: false,
            ttb0,
            mair: 0x0000_0000_0004_ff44,
            amair: 0,
        }
    }

    /// The eight CD words.
    pub fn encode(&self) -> [u64; 8] {
        let flag = |b: bool, bit: u32| if b { 1u64 << bit } else { 0 };
        let tg0 = match self.granule {
            Granule::K4 => 0u64,
            Granule::K64 => 1,
            Granule::K16 => 2,
        };
        let w0 = u64::from(self.t0sz & 0x3f)
            | (tg0 << 6)
            | (u64::from(self.ir0 & 3) << 8)
            | (u64::from(self.or0 & 3) << 10)
            | (u64::from(self.sh0 & 3) << 12)
            | flag(self.epd0, 14)
            | flag(self.endi, 15)
            | flag(true, 30) // EPD1
            | flag(true, 31) // V
            | (u64::from(self.ips & 7) << 32)
            | flag(self.affd, 35)
            | flag(self.wxn, 36)
            | flag(self.tbi0, 38)
            | flag(self.pan, 40)
            | flag(true, 41) // AA64
            | flag(self.hd, 42)
            | flag(self.ha, 43)
            | flag(self.stall, 44)
            | flag(self.record, 45)
            | flag(self.abort, 46)
            | flag(self.aset, 47)
            | (u64::from(self.asid) << 48);
        let w1 = (self.ttb0 & 0x000f_ffff_ffff_fff0) | flag(self.had0, 1);
        [w0, w1, 0, self.mair, self.amair, 0, 0, 0]
    }
}

/// Lays out a CD table in guest memory.
#[derive(Debug, Clone)]
pub struct CdTableBuilder {
    fmt: S1Fmt,
    cdmax: u8,
    base: u64,
    alloc: TableAllocator,
}

impl CdTableBuilder {
    /// Allocates the linear table (2^cdmax CDs) or the L1 table.
    pub fn new(fmt: S1Fmt, cdmax: u8, mut alloc: TableAllocator) -> Result<Self, BuildError> {
        if cdmax > 20 {
            return Err(BuildError::Config);
        }
        let bytes = match fmt {
            S1Fmt::Linear => 64u64 << cdmax,
            S1Fmt::TwoLevel4K => 8u64 << cdmax.saturating_sub(6),
            S1Fmt::TwoLevel64K => 8u64 << cdmax.saturating_sub(10),
        };
        let base = alloc.alloc(bytes, bytes.clamp(64, 4096))?;
        Ok(CdTableBuilder {
            fmt,
            cdmax,
            base,
            alloc,
        })
    }

    /// S1ContextPtr.
    pub fn context_ptr(&self) -> u64 {
        self.base
    }

    /// The ATTACH_TABLE fields `(s1fmt, s1dss, s1contextptr, s1cdmax)`.
    pub fn fields(&self, dss: S1Dss) -> (u8, u8, u64, u32) {
        (
            self.fmt.bits(),
            dss.bits(),
            self.base,
            u32::from(self.cdmax),
        )
    }

    /// Writes `cd` for `ssid`, allocating its L2 table if needed; returns the CD's address.
    pub fn write_cd(
        &mut self,
        mem: &mut impl GuestMemoryWrite,
        ssid: u32,
        cd: &[u64; 8],
    ) -> Result<u64, BuildError> {
        if u64::from(ssid) >> self.cdmax != 0 {
            return Err(BuildError::OutOfRange {
                iova: u64::from(ssid),
                pa: 0,
            });
        }
        let at = match self.fmt {
            S1Fmt::Linear => self.base + u64::from(ssid) * 64,
            S1Fmt::TwoLevel4K | S1Fmt::TwoLevel64K => {
                let per_l2: u32 = if self.fmt == S1Fmt::TwoLevel4K {
                    64
                } else {
                    1024
                };
                let l1 = self.base + u64::from(ssid / per_l2) * 8;
                let d = mem.read_u64(l1)?;
                let l2 = if d & 1 == 0 {
                    let bytes = u64::from(per_l2) * 64;
                    let l2 = self.alloc.alloc(bytes, bytes)?;
                    mem.write_u64(l1, l2 | 1)?;
                    l2
                } else {
                    d & 0x000f_ffff_ffff_f000
                };
                l2 + u64::from(ssid % per_l2) * 64
            }
        };
        for (i, w) in cd.iter().enumerate() {
            mem.write_u64(at + 8 * i as u64, *w)?;
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagetables::{GuestMemoryRead, TestMemory};

    #[test]
    fn encode_bit_positions() {
        let mut f = CdFields::new(0xabcd, 0x1234_5670);
        f.granule = Granule::K64;
        f.had0 = true;
        let w = f.encode();
        assert_eq!(w[0] & 0x3f, 16);
        assert_eq!((w[0] >> 6) & 3, 1);
        assert_eq!((w[0] >> 12) & 3, 3);
        assert_eq!((w[0] >> 30) & 3, 3, "EPD1 and V");
        assert_eq!((w[0] >> 41) & 1, 1, "AA64");
        assert_eq!(w[0] >> 48, 0xabcd);
        assert_eq!(w[1], 0x1234_5670 | 2);
        assert_eq!(w[3], 0x0004_ff44);
    }

    #[test]
    fn two_level_table_allocates_l2_on_demand() {
        let mut m = TestMemory::single(0x10_0000..0x100_0000);
        let mut b = CdTableBuilder::new(
            S1Fmt::TwoLevel4K,
            10,
            TableAllocator::new(0x10_0000, 0x100_0000),
        )
        .unwrap();
        let a = b.write_cd(&mut m, 65, &[1; 8]).unwrap();
        let l1 = m.read_u64(b.context_ptr() + 8).unwrap();
        assert_eq!(l1 & 1, 1);
        assert_eq!(a, (l1 & !1) + 64);
        let a2 = b.write_cd(&mut m, 66, &[2; 8]).unwrap();
        assert_eq!(a2, a + 64);
        assert!(b.write_cd(&mut m, 1024, &[0; 8]).is_err());
    }
}
