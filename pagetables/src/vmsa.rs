//! Arm VMSAv8-64 stage-1 translation (the EL1&0 regime with two privilege levels), configured
//! the way an SMMUv3 context descriptor does it: T0SZ, TG0, IPS, EPD0, TBI0, AFFD, HA/HD, WXN,
//! PAN, HAD0, ENDI, TTB0 and MAIR.
//!
//! Supported:
//! * 4K, 16K and 64K granules; T0SZ 16..=39 (25- to 48-bit input), and T0SZ 12..=15 (up to
//!   52-bit input, FEAT_LVA) with the 64K granule when [`Stage1Caps::lva`] is set.
//! * Output sizes from IPS (32/36/40/42/44/48/52 bits), clamped to the implementation's
//!   [`Stage1Caps::max_oas`] as SMMUv3 does. 52-bit output only with the 64K granule (FEAT_LPA
//!   encoding: OA\[51:48\] in descriptor bits \[15:12\]); LPA2 (TCR.DS=1, 52-bit with 4K/16K) is
//!   **not** supported, 4K/16K outputs are limited to 48 bits.
//! * Table descriptors at levels 0..=2, block descriptors at 4K levels 1-2, 16K level 2, 64K
//!   level 2 (and level 1 with 52-bit output), page descriptors at level 3.
//! * AP\[2:1\], UXN, PXN, APTable, UXNTable, PXNTable (unless HAD0), AF (fault unless HA or
//!   AFFD), DBM with HD (write permitted, the descriptor would be marked dirty), WXN, PAN, the
//!   implicit PXN of EL0-writable memory, TBI0, big-endian tables (ENDI).
//! * Strict reserved-bit checks: RES0 bits in table/block/page descriptors give
//!   [`Fault::ReservedBits`] (the architecture allows an implementation to ignore some of them;
//!   a host must not let a guest depend on that). Bit 16 of block descriptors (nT, FEAT_BBM) is
//!   accepted and ignored.
//!
//! Not walked: TTB1 (addresses in the upper half fault as if EPD1 were set).

use crate::{bits, Access, AccessRequest, Fault, GuestMemoryRead, Permissions, Translation};
use crate::{MemoryError, TranslationFaultKind as Tfk};

/// Translation granule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4KB pages, 9 bits per level.
    K4,
    /// 16KB pages, 11 bits per level.
    K16,
    /// 64KB pages, 13 bits per level.
    K64,
}

impl Granule {
    /// log2 of the page size.
    pub const fn shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }

    /// Page size in bytes.
    pub const fn size(self) -> u64 {
        1 << self.shift()
    }

    /// Bits resolved per level.
    pub const fn stride(self) -> u32 {
        self.shift() - 3
    }

    /// Decodes TCR.TG0 / CD.TG0 (0b00 4K, 0b01 64K, 0b10 16K, 0b11 reserved).
    pub const fn from_tg0(tg0: u8) -> Option<Granule> {
        match tg0 {
            0 => Some(Granule::K4),
            1 => Some(Granule::K64),
            2 => Some(Granule::K16),
            _ => None,
        }
    }

    /// The TG0 encoding.
    pub const fn tg0(self) -> u8 {
        match self {
            Granule::K4 => 0,
            Granule::K64 => 1,
            Granule::K16 => 2,
        }
    }
}

/// Decodes TCR.IPS / CD.IPS into a number of address bits (0b111 is reserved).
pub const fn ips_bits(ips: u8) -> Option<u8> {
    match ips {
        0 => Some(32),
        1 => Some(36),
        2 => Some(40),
        3 => Some(42),
        4 => Some(44),
        5 => Some(48),
        6 => Some(52),
        _ => None,
    }
}

/// What the (emulated or host) SMMU implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stage1Caps {
    /// Output address size the implementation supports (SMMU_IDR5.OAS), 32..=52.
    pub max_oas: u8,
    /// 52-bit input addresses with the 64K granule (SMMU_IDR5.VAX / FEAT_LVA).
    pub lva: bool,
}

impl Default for Stage1Caps {
    fn default() -> Self {
        Stage1Caps {
            max_oas: 48,
            lva: false,
        }
    }
}

/// Stage-1 configuration, field for field as in an SMMUv3 CD (TTB0 half only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stage1Params {
    /// Granule (TG0).
    pub granule: Granule,
    /// Input size is 2^(64 - T0SZ).
    pub t0sz: u8,
    /// Intermediate physical (output) size encoding.
    pub ips: u8,
    /// Table base (the CD's TTB0 field, a plain address).
    pub ttb0: u64,
    /// Memory attribute indirection (MAIR0 | MAIR1 << 32).
    pub mair: u64,
    /// TTB0 walks disabled.
    pub epd0: bool,
    /// Top byte ignored.
    pub tbi0: bool,
    /// Access flag faults disabled (AF=0 behaves as AF=1).
    pub affd: bool,
    /// Hardware access flag update (AF=0 does not fault; hardware would set it).
    pub ha: bool,
    /// Hardware dirty state (DBM=1 read-only descriptors are writable; hardware would clear
    /// AP\[2\]).
    pub hd: bool,
    /// Write implies execute-never.
    pub wxn: bool,
    /// Privileged access never (privileged data accesses to EL0-accessible pages fault).
    pub pan: bool,
    /// Hierarchical attributes disabled (APTable / UXNTable / PXNTable ignored).
    pub had0: bool,
    /// Tables are big-endian (CD.ENDI).
    pub big_endian: bool,
    /// Implementation limits.
    pub caps: Stage1Caps,
}

impl Stage1Params {
    /// A configuration with 48-bit output, MAIR 0 and every optional control off.
    pub fn new(granule: Granule, t0sz: u8, ttb0: u64) -> Self {
        Stage1Params {
            granule,
            t0sz,
            ips: 5,
            ttb0,
            mair: 0,
            epd0: false,
            tbi0: false,
            affd: false,
            ha: false,
            hd: false,
            wxn: false,
            pan: false,
            had0: false,
            big_endian: false,
            caps: Stage1Caps::default(),
        }
    }
}

impl Stage1Params {
    /// The TTB0 half of a CPU `TCR_EL1` / `TTBR0_EL1` / `MAIR_EL1` (what a guest shares for
    /// SVA, or a single-page-table binding): returns the parameters and TTBR0's ASID.
    ///
    /// TCR_EL1 fields used: T0SZ \[5:0\], EPD0 \[7\], TG0 \[15:14\], IPS \[34:32\],
    /// TBI0 \[37\], HA \[39\], HD \[40\], HPD0 \[41\] (as HAD0). DS \[59\] (LPA2) is
    /// rejected, as are the RES0 bits 6 and 35; the TTBR1 half is ignored. TTBR0_EL1: BADDR
    /// \[47:1\] (CnP, bit 0, ignored), BADDR\[51:48\] in bits \[5:2\] with a 64K granule and
    /// 52-bit IPS, ASID \[63:48\].
    pub fn from_tcr_el1(
        tcr: u64,
        ttbr0: u64,
        mair: u64,
        caps: Stage1Caps,
    ) -> Result<(Stage1Params, u16), ConfigError> {
        let res0 = tcr & ((1 << 6) | (1 << 35));
        if res0 != 0 {
            return Err(ConfigError::TcrReserved(res0));
        }
        if tcr & (1 << 59) != 0 {
            return Err(ConfigError::Lpa2Unsupported);
        }
        let tg0 = ((tcr >> 14) & 3) as u8;
        let granule = Granule::from_tg0(tg0).ok_or(ConfigError::ReservedTg0(tg0))?;
        let ips = ((tcr >> 32) & 7) as u8;
        let mut ttb0 = ttbr0 & bits(47, 1);
        if granule == Granule::K64 && ips == 6 {
            ttb0 = (ttb0 & !bits(5, 2)) | (((ttbr0 >> 2) & 0xf) << 48);
        }
        let p = Stage1Params {
            granule,
            t0sz: (tcr & 0x3f) as u8,
            ips,
            ttb0,
            mair,
            epd0: tcr & (1 << 7) != 0,
            tbi0: tcr & (1 << 37) != 0,
            affd: false,
            ha: tcr & (1 << 39) != 0,
            hd: tcr & (1 << 40) != 0 && tcr & (1 << 39) != 0,
            wxn: false,
            pan: false,
            had0: tcr & (1 << 41) != 0,
            big_endian: false,
            caps,
        };
        Ok((p, (ttbr0 >> 48) as u16))
    }
}

/// Invalid stage-1 configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// TG0 = 0b11.
    #[error("reserved TG0 encoding {0}")]
    ReservedTg0(u8),
    /// TCR_EL1.DS = 1 (52-bit with 4K/16K, FEAT_LPA2).
    #[error("LPA2 (TCR.DS = 1) is not supported")]
    Lpa2Unsupported,
    /// RES0 bits of TCR_EL1 set.
    #[error("reserved TCR_EL1 bits {0:#x} set")]
    TcrReserved(u64),
    /// T0SZ outside the range the granule and capabilities permit.
    #[error("T0SZ {t0sz} outside {min}..={max} for this granule")]
    T0szOutOfRange {
        /// Given value.
        t0sz: u8,
        /// Smallest permitted value.
        min: u8,
        /// Largest permitted value.
        max: u8,
    },
    /// IPS is the reserved encoding 0b111 (or wider than 3 bits).
    #[error("reserved IPS encoding {0}")]
    ReservedIps(u8),
    /// The implementation's output size is not one of the architected sizes.
    #[error("unsupported implementation output size {0} bits")]
    BadCapsOas(u8),
    /// TTB0 above the output address size.
    #[error("TTB0 {ttb0:#x} exceeds the {bits}-bit output address size")]
    TtbOutOfRange {
        /// Given TTB0.
        ttb0: u64,
        /// Output size.
        bits: u8,
    },
    /// TTB0 is not aligned to the initial lookup table's size.
    #[error("TTB0 {ttb0:#x} not aligned to the {align}-byte initial table")]
    TtbMisaligned {
        /// Given TTB0.
        ttb0: u64,
        /// Required alignment.
        align: u64,
    },
}

/// Attributes of a VMSA leaf descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmsaAttrs {
    /// AttrIndx\[2:0\].
    pub attr_index: u8,
    /// The MAIR byte AttrIndx selects.
    pub mair_attr: u8,
    /// SH\[1:0\].
    pub shareability: u8,
    /// NS bit (ignored for non-secure streams, reported as is).
    pub ns: bool,
    /// nG.
    pub non_global: bool,
    /// AF as stored in the descriptor.
    pub access_flag: bool,
    /// DBM.
    pub dbm: bool,
    /// Contiguous hint.
    pub contiguous: bool,
}

// Descriptor fields (ARM ARM D8.3, VMSAv8-64 descriptor formats).
const DESC_VALID: u64 = 1 << 0;
const DESC_TABLE: u64 = 1 << 1;
const ATTR_INDX_SHIFT: u32 = 2;
const NS: u64 = 1 << 5;
const AP1_EL0: u64 = 1 << 6;
const AP2_RO: u64 = 1 << 7;
const SH_SHIFT: u32 = 8;
const AF: u64 = 1 << 10;
const NG: u64 = 1 << 11;
const NT_BBM: u64 = 1 << 16;
const DBM: u64 = 1 << 51;
const CONTIG: u64 = 1 << 52;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const PXN_TABLE: u64 = 1 << 59;
const UXN_TABLE: u64 = 1 << 60;
const AP_TABLE_NO_EL0: u64 = 1 << 61;
const AP_TABLE_RO: u64 = 1 << 62;

/// A validated stage-1 configuration that can walk tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage1 {
    p: Stage1Params,
    ia_bits: u32,
    oas_bits: u32,
    start_level: u8,
    lpa64: bool,
}

impl Stage1 {
    /// Validates `p`.
    pub fn new(p: Stage1Params) -> Result<Stage1, ConfigError> {
        let g = p.granule;
        let min_t0sz = if g == Granule::K64 && p.caps.lva {
            12
        } else {
            16
        };
        let max_t0sz = 39;
        if p.t0sz < min_t0sz || p.t0sz > max_t0sz {
            return Err(ConfigError::T0szOutOfRange {
                t0sz: p.t0sz,
                min: min_t0sz,
                max: max_t0sz,
            });
        }
        let ips = ips_bits(p.ips).ok_or(ConfigError::ReservedIps(p.ips))?;
        if !matches!(p.caps.max_oas, 32 | 36 | 40 | 42 | 44 | 48 | 52) {
            return Err(ConfigError::BadCapsOas(p.caps.max_oas));
        }
        // IPS larger than the implementation behaves as the implementation's size (SMMUv3);
        // without LPA2 only the 64K granule has 52-bit output.
        let mut oas = ips.min(p.caps.max_oas);
        if oas == 52 && g != Granule::K64 {
            oas = 48;
        }
        let ia_bits = 64 - u32::from(p.t0sz);
        let stride = g.stride();
        let levels = (ia_bits - g.shift()).div_ceil(stride);
        // levels is 1..=4 for ia_bits 25..=52.
        let start_level = u8::try_from(4 - levels).unwrap_or(0);
        let s = Stage1 {
            p,
            ia_bits,
            oas_bits: u32::from(oas),
            start_level,
            lpa64: g == Granule::K64 && oas == 52,
        };
        if p.ttb0 >> oas != 0 {
            return Err(ConfigError::TtbOutOfRange {
                ttb0: p.ttb0,
                bits: oas,
            });
        }
        let entries_bits = ia_bits - s.level_shift(start_level);
        // Tables are aligned to their size; the CD's TTB0 field starts at bit 4, and 52-bit
        // output needs at least 64-byte alignment.
        let min_align = if s.lpa64 { 64 } else { 16 };
        let align = (8u64 << entries_bits).max(min_align);
        if p.ttb0 & (align - 1) != 0 {
            return Err(ConfigError::TtbMisaligned {
                ttb0: p.ttb0,
                align,
            });
        }
        Ok(s)
    }

    /// The configuration.
    pub fn params(&self) -> &Stage1Params {
        &self.p
    }

    /// Input address size in bits.
    pub fn input_bits(&self) -> u32 {
        self.ia_bits
    }

    /// Effective output address size in bits.
    pub fn output_bits(&self) -> u32 {
        self.oas_bits
    }

    /// The initial lookup level.
    pub fn start_level(&self) -> u8 {
        self.start_level
    }

    /// Lowest input bit resolved at `level` (0..=3).
    fn level_shift(&self, level: u8) -> u32 {
        let g = self.p.granule;
        g.shift() + g.stride() * (3 - u32::from(level.min(3)))
    }

    /// Whether a block descriptor is permitted at `level` (< 3).
    pub fn block_permitted(&self, level: u8) -> bool {
        match self.p.granule {
            Granule::K4 => level == 1 || level == 2,
            Granule::K16 => level == 2,
            Granule::K64 => level == 2 || (level == 1 && self.lpa64),
        }
    }

    fn extract_addr(&self, desc: u64, low: u32) -> u64 {
        let mut a = desc & bits(47, low);
        if self.lpa64 {
            a |= ((desc >> 12) & 0xf) << 48;
        }
        a
    }

    fn table_res0(&self) -> u64 {
        let g = self.p.granule.shift();
        let mut r = bits(50, 48);
        if g > 12 && !self.lpa64 {
            r |= bits(g - 1, 12);
        }
        r
    }

    fn leaf_res0(&self, level: u8, shift: u32) -> u64 {
        let mut r = bits(49, 48);
        if shift > 12 {
            r |= bits(shift - 1, 12);
        }
        if self.lpa64 {
            r &= !bits(15, 12);
        }
        if level < 3 {
            r &= !NT_BBM;
        }
        r
    }

    fn read(&self, mem: &impl GuestMemoryRead, level: u8, gpa: u64) -> Result<u64, Fault> {
        let raw = mem
            .read_u64(gpa)
            .map_err(|source: MemoryError| Fault::Memory { level, source })?;
        Ok(if self.p.big_endian {
            raw.swap_bytes()
        } else {
            raw
        })
    }

    /// Walks the tables for `iova`. Reads at most one descriptor per level.
    pub fn walk(
        &self,
        mem: &impl GuestMemoryRead,
        iova: u64,
    ) -> Result<Translation<VmsaAttrs>, Fault> {
        let start = self.start_level;
        let va = if self.p.tbi0 {
            iova & bits(55, 0)
        } else {
            iova
        };
        if va >> self.ia_bits != 0 {
            return Err(Fault::Translation {
                level: start,
                kind: Tfk::InputOutOfRange,
            });
        }
        if self.p.epd0 {
            return Err(Fault::Translation {
                level: start,
                kind: Tfk::WalkDisabled,
            });
        }
        let oas = self.oas_bits;
        // Hierarchical controls accumulated from table descriptors.
        let (mut no_el0, mut ro, mut uxn_t, mut pxn_t) = (false, false, false, false);
        let mut table = self.p.ttb0;
        for level in start..=3 {
            let shift = self.level_shift(level);
            let width = if level == start {
                self.ia_bits - shift
            } else {
                self.p.granule.stride()
            };
            let index = (va >> shift) & ((1u64 << width) - 1);
            let desc_addr = table.wrapping_add(index * 8);
            let desc = self.read(mem, level, desc_addr)?;
            if desc & DESC_VALID == 0 {
                return Err(Fault::Translation {
                    level,
                    kind: Tfk::NotPresent,
                });
            }
            let is_table_type = desc & DESC_TABLE != 0;
            if level < 3 && is_table_type {
                let res0 = desc & self.table_res0();
                if res0 != 0 {
                    return Err(Fault::ReservedBits {
                        level,
                        descriptor: desc,
                        bits: res0,
                    });
                }
                let next = self.extract_addr(desc, self.p.granule.shift());
                if next >> oas != 0 {
                    return Err(Fault::AddressSize {
                        level,
                        address: next,
                        bits: oas as u8,
                    });
                }
                if !self.p.had0 {
                    no_el0 |= desc & AP_TABLE_NO_EL0 != 0;
                    ro |= desc & AP_TABLE_RO != 0;
                    uxn_t |= desc & UXN_TABLE != 0;
                    pxn_t |= desc & PXN_TABLE != 0;
                }
                table = next;
                continue;
            }
            if level == 3 && !is_table_type {
                return Err(Fault::Translation {
                    level,
                    kind: Tfk::ReservedType,
                });
            }
            if level < 3 && !self.block_permitted(level) {
                return Err(Fault::Translation {
                    level,
                    kind: Tfk::BlockNotPermitted,
                });
            }
            let res0 = desc & self.leaf_res0(level, shift);
            if res0 != 0 {
                return Err(Fault::ReservedBits {
                    level,
                    descriptor: desc,
                    bits: res0,
                });
            }
            let oa = self.extract_addr(desc, shift);
            if oa >> oas != 0 {
                return Err(Fault::AddressSize {
                    level,
                    address: oa,
                    bits: oas as u8,
                });
            }
            let af = desc & AF != 0;
            if !af && !self.p.affd && !self.p.ha {
                return Err(Fault::AccessFlag { level });
            }
            let perms = self.permissions(desc, no_el0, ro, uxn_t, pxn_t);
            let size = 1u64 << shift;
            let attr_index = ((desc >> ATTR_INDX_SHIFT) & 7) as u8;
            let attrs = VmsaAttrs {
                attr_index,
                mair_attr: (self.p.mair >> (8 * u32::from(attr_index))) as u8,
                shareability: ((desc >> SH_SHIFT) & 3) as u8,
                ns: desc & NS != 0,
                non_global: desc & NG != 0,
                access_flag: af,
                dbm: desc & DBM != 0,
                contiguous: desc & CONTIG != 0,
            };
            return Ok(Translation {
                iova,
                output: oa | (va & (size - 1)),
                page_size: size,
                level,
                perms,
                leaf_address: desc_addr,
                leaf: desc,
                attrs,
            });
        }
        // Unreachable in practice: level 3 always returns above. Report it as a translation
        // fault rather than panicking.
        Err(Fault::Translation {
            level: 3,
            kind: Tfk::NotPresent,
        })
    }

    fn permissions(
        &self,
        desc: u64,
        no_el0: bool,
        ro: bool,
        uxn_t: bool,
        pxn_t: bool,
    ) -> Permissions {
        let el0 = desc & AP1_EL0 != 0 && !no_el0;
        // AP[2] = 1 is read-only, unless HD and DBM let hardware make it writable.
        let dirty_managed = self.p.hd && desc & DBM != 0;
        let writable = (desc & AP2_RO == 0 || dirty_managed) && !ro;
        let mut user = Access {
            read: el0,
            write: el0 && writable,
            exec: desc & UXN == 0 && !uxn_t,
        };
        let mut privileged = Access {
            read: true,
            write: writable,
            // EL0-writable memory is always privileged-execute-never in EL1&0.
            exec: desc & PXN == 0 && !pxn_t && !user.write,
        };
        if self.p.wxn {
            user.exec &= !user.write;
            privileged.exec &= !privileged.write;
        }
        if self.p.pan && el0 {
            privileged.read = false;
            privileged.write = false;
        }
        Permissions { user, privileged }
    }

    /// Walks and checks `req` against the result.
    pub fn translate(
        &self,
        mem: &impl GuestMemoryRead,
        iova: u64,
        req: AccessRequest,
    ) -> Result<Translation<VmsaAttrs>, Fault> {
        self.walk(mem, iova)?.check(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccessKind, TestMemory, TranslationFaultKind};

    const RAM: std::ops::Range<u64> = 0x4000_0000..0x8000_0000;
    const L0: u64 = 0x4000_0000;
    const L1: u64 = 0x4001_0000;
    const L2: u64 = 0x4002_0000;
    const L3: u64 = 0x4003_0000;
    const TABLE: u64 = 0b11;
    const PAGE: u64 = 0b11;
    const BLOCK: u64 = 0b01;
    const RW_PRIV: u64 = AF; // AP[2:1] = 00
    const RW_ALL: u64 = AF | AP1_EL0; // AP = 01

    fn idx(va: u64, level: u8) -> u64 {
        (va >> (12 + 9 * (3 - u64::from(level)))) & 511
    }

    /// 4K granule, 48-bit input, tables at L0..L3 for `va`, the leaf written at `leaf_level`.
    fn setup4k(va: u64, leaf_level: u8, leaf: u64) -> (TestMemory, Stage1) {
        let mut m = TestMemory::single(RAM);
        let tables = [L0, L1, L2, L3];
        for level in 0..leaf_level {
            let l = usize::from(level);
            m.write_u64(tables[l] + idx(va, level) * 8, tables[l + 1] | TABLE)
                .unwrap();
        }
        let l = usize::from(leaf_level);
        m.write_u64(tables[l] + idx(va, leaf_level) * 8, leaf)
            .unwrap();
        let s = Stage1::new(Stage1Params::new(Granule::K4, 16, L0)).unwrap();
        (m, s)
    }

    fn tf(level: u8, kind: TranslationFaultKind) -> Fault {
        Fault::Translation { level, kind }
    }

    #[test]
    fn tg0_and_ips_encodings() {
        assert_eq!(Granule::from_tg0(0), Some(Granule::K4));
        assert_eq!(Granule::from_tg0(1), Some(Granule::K64));
        assert_eq!(Granule::from_tg0(2), Some(Granule::K16));
        assert_eq!(Granule::from_tg0(3), None);
        for g in [Granule::K4, Granule::K16, Granule::K64] {
            assert_eq!(Granule::from_tg0(g.tg0()), Some(g));
        }
        let sizes: Vec<_> = (0..8).map(ips_bits).collect();
        assert_eq!(
            sizes,
            [
                Some(32),
                Some(36),
                Some(40),
                Some(42),
                Some(44),
                Some(48),
                Some(52),
                None
            ]
        );
    }

    #[test]
    fn start_levels_per_granule_and_input_size() {
        let start = |g, t0sz, lva| {
            let mut p = Stage1Params::new(g, t0sz, 0);
            p.caps = Stage1Caps { max_oas: 52, lva };
            Stage1::new(p).map(|s| s.start_level())
        };
        assert_eq!(start(Granule::K4, 16, false), Ok(0)); // 48-bit: 4 levels
        assert_eq!(start(Granule::K4, 25, false), Ok(1)); // 39-bit: 3 levels
        assert_eq!(start(Granule::K4, 34, false), Ok(2)); // 30-bit
        assert_eq!(start(Granule::K16, 16, false), Ok(0)); // 48-bit: level 0 has 2 entries
        assert_eq!(start(Granule::K16, 17, false), Ok(1)); // 47-bit
        assert_eq!(start(Granule::K64, 16, false), Ok(1)); // 48-bit
        assert_eq!(start(Granule::K64, 12, true), Ok(1)); // 52-bit
        assert_eq!(start(Granule::K64, 22, false), Ok(2)); // 42-bit
        assert_eq!(
            start(Granule::K64, 12, false),
            Err(ConfigError::T0szOutOfRange {
                t0sz: 12,
                min: 16,
                max: 39
            })
        );
        assert!(start(Granule::K4, 12, true).is_err());
        assert!(start(Granule::K4, 40, false).is_err());
    }

    #[test]
    fn config_rejects_reserved_ips_and_bad_ttb() {
        let mut p = Stage1Params::new(Granule::K4, 16, L0);
        p.ips = 7;
        assert_eq!(Stage1::new(p), Err(ConfigError::ReservedIps(7)));
        p.ips = 0; // 32-bit output: TTB0 at 1 GiB fits, at 4 GiB does not.
        assert!(Stage1::new(p).is_ok());
        p.ttb0 = 1 << 32;
        assert_eq!(
            Stage1::new(p),
            Err(ConfigError::TtbOutOfRange {
                ttb0: 1 << 32,
                bits: 32
            })
        );
        let p = Stage1Params::new(Granule::K4, 16, L0 + 8);
        assert_eq!(
            Stage1::new(p),
            Err(ConfigError::TtbMisaligned {
                ttb0: L0 + 8,
                align: 4096
            })
        );
        // 39-bit input with 64K: 2 levels, the level-2 table has 2^(39-29) = 1024 entries
        // (8 KiB), so TTB0 must be 8 KiB aligned.
        let p = Stage1Params::new(Granule::K64, 25, L0 + 0x1000);
        assert_eq!(
            Stage1::new(p),
            Err(ConfigError::TtbMisaligned {
                ttb0: L0 + 0x1000,
                align: 8192
            })
        );
    }

    #[test]
    fn from_tcr_el1_fields() {
        // T0SZ 25, EPD0 0, TG0 16K (0b10 at [15:14]), T1SZ/EPD1/TG1 set (ignored), IPS 40-bit,
        // TBI0, HA, HD, HPD0.
        let tcr = 25
            | (2 << 14)
            | (16 << 16)
            | (1 << 23)
            | (2 << 30)
            | (2u64 << 32)
            | (1 << 37)
            | (1 << 39)
            | (1 << 40)
            | (1 << 41);
        let ttbr0 = (0x1234u64 << 48) | 0x4000_1000 | 1; // ASID, BADDR, CnP
        let (p, asid) =
            Stage1Params::from_tcr_el1(tcr, ttbr0, 0xff, Stage1Caps::default()).unwrap();
        assert_eq!(asid, 0x1234);
        assert_eq!(
            (p.granule, p.t0sz, p.ips, p.ttb0, p.mair),
            (Granule::K16, 25, 2, 0x4000_1000, 0xff)
        );
        assert!(!p.epd0 && p.tbi0 && p.ha && p.hd && p.had0);
        assert!(Stage1::new(p).is_ok());
        // Each flag alone.
        let base = 16u64 | (5u64 << 32);
        for (bit, f) in [
            (
                7u32,
                (|p: &Stage1Params| p.epd0) as fn(&Stage1Params) -> bool,
            ),
            (37, |p| p.tbi0),
            (39, |p| p.ha),
            (41, |p| p.had0),
        ] {
            let (p, _) =
                Stage1Params::from_tcr_el1(base | (1 << bit), 0, 0, Stage1Caps::default()).unwrap();
            assert!(f(&p), "bit {bit}");
            let flags = [p.epd0, p.tbi0, p.ha, p.had0, p.hd];
            assert_eq!(flags.iter().filter(|&&b| b).count(), 1, "bit {bit}");
        }
        // HD alone has no effect without HA.
        let (p, _) =
            Stage1Params::from_tcr_el1(base | (1 << 40), 0, 0, Stage1Caps::default()).unwrap();
        assert!(!p.hd);
        // 64K granule with 52-bit IPS: BADDR[51:48] from TTBR0[5:2].
        let tcr = 12 | (1 << 14) | (6u64 << 32);
        let (p, _) = Stage1Params::from_tcr_el1(
            tcr,
            0x0000_8000_0001_0000 | (0xa << 2),
            0,
            Stage1Caps {
                max_oas: 52,
                lva: true,
            },
        )
        .unwrap();
        assert_eq!(p.ttb0, 0x000a_8000_0001_0000);
        assert!(Stage1::new(p).is_ok());
        assert_eq!(
            Stage1Params::from_tcr_el1(base | (3 << 14), 0, 0, Stage1Caps::default()),
            Err(ConfigError::ReservedTg0(3))
        );
        assert_eq!(
            Stage1Params::from_tcr_el1(base | (1 << 59), 0, 0, Stage1Caps::default()),
            Err(ConfigError::Lpa2Unsupported)
        );
        assert_eq!(
            Stage1Params::from_tcr_el1(base | (1 << 35), 0, 0, Stage1Caps::default()),
            Err(ConfigError::TcrReserved(1 << 35))
        );
    }

    #[test]
    fn small_root_table_alignment() {
        // 64K granule, 43-bit input: the level-1 table has 2 entries (16 bytes).
        let mut p = Stage1Params::new(Granule::K64, 21, L0 + 0x10);
        assert_eq!(Stage1::new(p).unwrap().start_level(), 1);
        // With 52-bit output the minimum alignment is 64 bytes.
        p.ips = 6;
        p.caps.max_oas = 52;
        assert_eq!(
            Stage1::new(p),
            Err(ConfigError::TtbMisaligned {
                ttb0: L0 + 0x10,
                align: 64
            })
        );
        p.ttb0 = L0 + 0x40;
        assert!(Stage1::new(p).is_ok());
    }

    #[test]
    fn ips_clamped_to_implementation_and_granule() {
        let mut p = Stage1Params::new(Granule::K4, 16, L0);
        p.ips = 6;
        p.caps.max_oas = 52;
        assert_eq!(Stage1::new(p).unwrap().output_bits(), 48); // no LPA2
        p.granule = Granule::K64;
        assert_eq!(Stage1::new(p).unwrap().output_bits(), 52);
        p.caps.max_oas = 44;
        assert_eq!(Stage1::new(p).unwrap().output_bits(), 44);
    }

    #[test]
    fn page_descriptor_output_address_and_attrs() {
        let va = 0x0000_1234_5678_9abc;
        let leaf = 0x0000_00ab_cdef_0000 | PAGE | RW_PRIV | (5 << 2) | (2 << 8) | NG | NS;
        let (m, mut s) = setup4k(va, 3, leaf);
        s.p.mair = 0x4400_0000_0000_0000 | (0xff << 40);
        let t = s.walk(&m, va).unwrap();
        assert_eq!(t.output, 0x0000_00ab_cdef_0abc);
        assert_eq!(t.page_size, 4096);
        assert_eq!(t.level, 3);
        assert_eq!(t.leaf, leaf);
        assert_eq!(t.leaf_address, L3 + idx(va, 3) * 8);
        assert_eq!(t.attrs.attr_index, 5);
        assert_eq!(t.attrs.mair_attr, 0xff);
        assert_eq!(t.attrs.shareability, 2);
        assert!(t.attrs.non_global && t.attrs.ns && t.attrs.access_flag);
        assert!(!t.attrs.dbm && !t.attrs.contiguous);
        assert_eq!(m.reads(), 4);
        // Each remaining single-bit attribute alone.
        for (bit, name) in [(NG, "nG"), (NS, "NS"), (DBM, "DBM"), (CONTIG, "Contiguous")] {
            let (m, s) = setup4k(va, 3, 0x8000 | PAGE | RW_PRIV | bit);
            let a = s.walk(&m, va).unwrap().attrs;
            let got = [a.non_global, a.ns, a.dbm, a.contiguous];
            let want = [bit == NG, bit == NS, bit == DBM, bit == CONTIG];
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn block_descriptors_at_levels_1_and_2() {
        let va = 0x0000_0040_1234_5678;
        let (m, s) = setup4k(va, 1, 0x0000_0080_0000_0000 | BLOCK | RW_PRIV);
        let t = s.walk(&m, va).unwrap();
        assert_eq!((t.level, t.page_size), (1, 1 << 30));
        assert_eq!(t.output, 0x0000_0080_1234_5678);
        let (m, s) = setup4k(va, 2, 0x0000_0080_0020_0000 | BLOCK | RW_PRIV);
        let t = s.walk(&m, va).unwrap();
        assert_eq!((t.level, t.page_size), (2, 1 << 21));
        assert_eq!(t.output, 0x0000_0080_0034_5678);
    }

    #[test]
    fn block_at_level_0_and_type_01_at_level_3_fault() {
        let va = 0x1000;
        let (m, s) = setup4k(va, 0, BLOCK | RW_PRIV);
        assert_eq!(s.walk(&m, va), Err(tf(0, Tfk::BlockNotPermitted)));
        let (m, s) = setup4k(va, 3, 0x5000 | BLOCK | RW_PRIV);
        assert_eq!(s.walk(&m, va), Err(tf(3, Tfk::ReservedType)));
    }

    #[test]
    fn invalid_descriptor_at_each_level() {
        for level in 0..=3 {
            // Bit 0 clear, everything else set: still invalid.
            let (m, s) = setup4k(0x2000, level, !DESC_VALID);
            assert_eq!(s.walk(&m, 0x2000), Err(tf(level, Tfk::NotPresent)));
        }
    }

    #[test]
    fn input_range_tbi_and_epd0() {
        let va = 0x7000;
        let (m, mut s) = setup4k(va, 3, 0x9000 | PAGE | RW_PRIV);
        assert_eq!(s.walk(&m, 1 << 48), Err(tf(0, Tfk::InputOutOfRange)));
        assert_eq!(
            s.walk(&m, 0xff00_0000_0000_7000),
            Err(tf(0, Tfk::InputOutOfRange))
        );
        s.p.tbi0 = true;
        let t = s.walk(&m, 0xff00_0000_0000_7123).unwrap();
        assert_eq!(t.output, 0x9123);
        // TBI does not make the TTB1 half walkable.
        assert_eq!(
            s.walk(&m, 0xff80_0000_0000_7000),
            Err(tf(0, Tfk::InputOutOfRange))
        );
        s.p.epd0 = true;
        assert_eq!(s.walk(&m, va), Err(tf(0, Tfk::WalkDisabled)));
    }

    #[test]
    fn access_permissions_ap21() {
        let va = 0x3000;
        let cases = [
            // AP[2:1], user (r, w), privileged (r, w)
            (0b00, (false, false), (true, true)),
            (0b01, (true, true), (true, true)),
            (0b10, (false, false), (true, false)),
            (0b11, (true, false), (true, false)),
        ];
        for (ap, (ur, uw), (pr, pw)) in cases {
            let (m, s) = setup4k(va, 3, 0x8000 | PAGE | AF | (ap << 6));
            let p = s.walk(&m, va).unwrap().perms;
            assert_eq!((p.user.read, p.user.write), (ur, uw), "AP {ap:#b}");
            assert_eq!(
                (p.privileged.read, p.privileged.write),
                (pr, pw),
                "AP {ap:#b}"
            );
            // EL0-writable implies PXN.
            assert_eq!(p.privileged.exec, ap != 0b01, "AP {ap:#b}");
            assert!(p.user.exec);
        }
    }

    #[test]
    fn uxn_pxn() {
        let va = 0x3000;
        let (m, s) = setup4k(va, 3, 0x8000 | PAGE | RW_ALL | UXN);
        let p = s.walk(&m, va).unwrap().perms;
        assert!(!p.user.exec && !p.privileged.exec);
        let (m, s) = setup4k(va, 3, 0x8000 | PAGE | RW_PRIV | PXN);
        let p = s.walk(&m, va).unwrap().perms;
        assert!(p.user.exec && !p.privileged.exec);
        let (m, s) = setup4k(va, 3, 0x8000 | PAGE | RW_PRIV | UXN);
        let p = s.walk(&m, va).unwrap().perms;
        assert!(!p.user.exec && p.privileged.exec);
    }

    #[test]
    fn hierarchical_table_attributes_and_had0() {
        let va = 0x3000;
        for (bit, check) in [
            (AP_TABLE_NO_EL0, 0),
            (AP_TABLE_RO, 1),
            (UXN_TABLE, 2),
            (PXN_TABLE, 3),
        ] {
            let (mut m, mut s) = setup4k(va, 3, 0x8000 | PAGE | RW_ALL);
            // Put the control in the level-1 table descriptor.
            m.write_u64(L1 + idx(va, 1) * 8, L2 | TABLE | bit).unwrap();
            let p = s.walk(&m, va).unwrap().perms;
            match check {
                0 => assert!(!p.user.read && !p.user.write && p.privileged.write),
                1 => assert!(p.user.read && !p.user.write && !p.privileged.write),
                2 => assert!(!p.user.exec),
                _ => assert!(!p.privileged.exec && p.user.exec),
            }
            s.p.had0 = true;
            let p = s.walk(&m, va).unwrap().perms;
            assert!(p.user.read && p.user.write && p.user.exec && p.privileged.write);
        }
    }

    #[test]
    fn access_flag_fault_affd_and_ha() {
        let va = 0x3000;
        let (m, mut s) = setup4k(va, 3, 0x8000 | PAGE);
        assert_eq!(s.walk(&m, va), Err(Fault::AccessFlag { level: 3 }));
        s.p.affd = true;
        assert!(!s.walk(&m, va).unwrap().attrs.access_flag);
        s.p.affd = false;
        s.p.ha = true;
        assert!(s.walk(&m, va).is_ok());
        let (m, s) = setup4k(va, 2, 0x20_0000 | BLOCK);
        assert_eq!(s.walk(&m, va), Err(Fault::AccessFlag { level: 2 }));
    }

    #[test]
    fn dbm_with_hd_makes_read_only_writable() {
        let va = 0x3000;
        let (m, mut s) = setup4k(va, 3, 0x8000 | PAGE | AF | AP2_RO | DBM);
        assert!(!s.walk(&m, va).unwrap().perms.privileged.write);
        s.p.hd = true;
        let t = s.walk(&m, va).unwrap();
        assert!(t.perms.privileged.write && t.attrs.dbm);
    }

    #[test]
    fn wxn_and_pan() {
        let va = 0x3000;
        let (m, mut s) = setup4k(va, 3, 0x8000 | PAGE | RW_PRIV);
        assert!(s.walk(&m, va).unwrap().perms.privileged.exec);
        s.p.wxn = true;
        assert!(!s.walk(&m, va).unwrap().perms.privileged.exec);
        let (m, mut s) = setup4k(va, 3, 0x8000 | PAGE | AF | (0b11 << 6));
        s.p.pan = true;
        let p = s.walk(&m, va).unwrap().perms;
        assert!(p.user.read && !p.privileged.read);
        let req = AccessRequest {
            kind: AccessKind::Read,
            privileged: true,
        };
        assert_eq!(
            s.translate(&m, va, req),
            Err(Fault::Permission {
                level: 3,
                request: req
            })
        );
    }

    #[test]
    fn reserved_bits_in_table_and_leaf() {
        let va = 0x3000;
        let (mut m, s) = setup4k(va, 3, 0x8000 | PAGE | RW_PRIV | (1 << 48));
        assert_eq!(
            s.walk(&m, va),
            Err(Fault::ReservedBits {
                level: 3,
                descriptor: 0x8000 | PAGE | RW_PRIV | (1 << 48),
                bits: 1 << 48
            })
        );
        m.write_u64(L2 + idx(va, 2) * 8, L3 | TABLE | (1 << 50))
            .unwrap();
        assert!(matches!(
            s.walk(&m, va),
            Err(Fault::ReservedBits { level: 2, bits, .. }) if bits == 1 << 50
        ));
        // Block output bits below the block size are RES0 (bit 16, nT, excepted).
        let (m, s) = setup4k(va, 2, 0x1000 | BLOCK | RW_PRIV);
        assert!(matches!(
            s.walk(&m, va),
            Err(Fault::ReservedBits {
                level: 2,
                bits: 0x1000,
                ..
            })
        ));
        let (m, s) = setup4k(va, 2, NT_BBM | BLOCK | RW_PRIV);
        assert!(s.walk(&m, va).is_ok());
        // Ignored fields (software bits, PBHA, table bits 11:2) are accepted.
        let (mut m, s) = setup4k(va, 3, 0x8000 | PAGE | RW_PRIV | bits(58, 55) | bits(62, 59));
        m.write_u64(L1 + idx(va, 1) * 8, L2 | TABLE | bits(11, 2) | bits(58, 51))
            .unwrap();
        assert!(s.walk(&m, va).is_ok());
    }

    #[test]
    fn address_size_faults() {
        let va = 0x3000;
        let (m, mut s) = setup4k(va, 3, 0x1_0000_8000 | PAGE | RW_PRIV);
        s.p.ips = 0;
        s.oas_bits = 32;
        assert_eq!(
            s.walk(&m, va),
            Err(Fault::AddressSize {
                level: 3,
                address: 0x1_0000_8000,
                bits: 32
            })
        );
        let (mut m, mut s) = setup4k(va, 3, 0x8000 | PAGE | RW_PRIV);
        s.oas_bits = 32;
        m.write_u64(L0 + idx(va, 0) * 8, 0x1_0000_0000 | TABLE)
            .unwrap();
        assert!(matches!(
            s.walk(&m, va),
            Err(Fault::AddressSize { level: 0, .. })
        ));
    }

    #[test]
    fn table_pointer_outside_ram_is_memory_fault() {
        let va = 0x3000;
        let (mut m, s) = setup4k(va, 3, 0x8000 | PAGE | RW_PRIV);
        m.write_u64(L1 + idx(va, 1) * 8, 0x1000_0000 | TABLE)
            .unwrap();
        assert_eq!(
            s.walk(&m, va),
            Err(Fault::Memory {
                level: 2,
                source: MemoryError::OutOfRange {
                    gpa: 0x1000_0000 + idx(va, 2) * 8,
                    len: 8
                }
            })
        );
    }

    #[test]
    fn self_referencing_tables_terminate() {
        // Every level points back at the same table: the walk ends at level 3 after 4 reads
        // (the level-3 "page" is the table itself).
        let mut m = TestMemory::single(RAM);
        m.write_u64(L0, L0 | TABLE | AF).unwrap();
        let s = Stage1::new(Stage1Params::new(Granule::K4, 16, L0)).unwrap();
        let t = s.walk(&m, 0).unwrap();
        assert_eq!((t.level, t.output), (3, L0));
        assert_eq!(m.reads(), 4);
    }

    #[test]
    fn big_endian_tables() {
        let va = 0x3000;
        let mut m = TestMemory::single(RAM);
        let write = |m: &mut TestMemory, a: u64, v: u64| m.write_u64(a, v.swap_bytes()).unwrap();
        write(&mut m, L0 + idx(va, 0) * 8, L1 | TABLE);
        write(&mut m, L1 + idx(va, 1) * 8, L2 | TABLE);
        write(&mut m, L2 + idx(va, 2) * 8, L3 | TABLE);
        write(&mut m, L3 + idx(va, 3) * 8, 0x8000 | PAGE | RW_PRIV);
        let mut p = Stage1Params::new(Granule::K4, 16, L0);
        assert!(Stage1::new(p).unwrap().walk(&m, va).is_err());
        p.big_endian = true;
        assert_eq!(Stage1::new(p).unwrap().walk(&m, va).unwrap().output, 0x8000);
    }

    #[test]
    fn granule_64k_52bit_output_and_level1_block() {
        let mut p = Stage1Params::new(Granule::K64, 12, L0);
        p.ips = 6;
        p.caps = Stage1Caps {
            max_oas: 52,
            lva: true,
        };
        let s = Stage1::new(p).unwrap();
        assert_eq!(
            (s.start_level(), s.input_bits(), s.output_bits()),
            (1, 52, 52)
        );
        // 52-bit VA: level 1 resolves bits [51:42] (1024 entries), level 2 [41:29],
        // level 3 [28:16].
        let va: u64 = 0x000f_ffff_ffff_1234;
        let i1 = (va >> 42) & 0x3ff;
        let i2 = (va >> 29) & 0x1fff;
        let i3 = (va >> 16) & 0x1fff;
        let mut m = TestMemory::single(RAM);
        m.write_u64(L0 + i1 * 8, L1 | TABLE).unwrap();
        m.write_u64(L1 + i2 * 8, L2 | TABLE).unwrap();
        // Page at PA 0xa_bcde_1230_0000: OA[51:48] = 0xa goes into bits [15:12].
        m.write_u64(
            L2 + i3 * 8,
            0x0000_bcde_1230_0000 | (0xa << 12) | PAGE | RW_PRIV,
        )
        .unwrap();
        let t = s.walk(&m, va).unwrap();
        assert_eq!(t.output, 0x000a_bcde_1230_1234);
        assert_eq!((t.level, t.page_size), (3, 1 << 16));
        // Level-1 block of 4 TiB.
        m.write_u64(
            L0 + i1 * 8,
            0x0000_8000_0000_0000 | (0x3 << 12) | BLOCK | RW_PRIV,
        )
        .unwrap();
        let t = s.walk(&m, va).unwrap();
        assert_eq!((t.level, t.page_size), (1, 1 << 42));
        assert_eq!(t.output, 0x0003_8000_0000_0000 | (va & ((1 << 42) - 1)));
        // Without 52-bit output the same block is not permitted, and bits [15:12] are RES0.
        p.ips = 5;
        let s48 = Stage1::new(p).unwrap();
        assert_eq!(s48.walk(&m, va), Err(tf(1, Tfk::BlockNotPermitted)));
    }

    #[test]
    fn granule_16k_level0_table_and_level2_block() {
        // 48-bit input with 16K: level 0 has 2 entries (bit 47), level 1 bits [46:36],
        // level 2 [35:25] (32 MiB blocks), level 3 [24:14].
        let p = Stage1Params::new(Granule::K16, 16, L0);
        let s = Stage1::new(p).unwrap();
        let va: u64 = 0x0000_8123_4567_89ab;
        let mut m = TestMemory::single(RAM);
        m.write_u64(L0 + 8, L1 | TABLE).unwrap();
        m.write_u64(L1 + ((va >> 36) & 0x7ff) * 8, L2 | TABLE)
            .unwrap();
        m.write_u64(
            L2 + ((va >> 25) & 0x7ff) * 8,
            0x0000_0042_0000_0000 | BLOCK | RW_PRIV,
        )
        .unwrap();
        let t = s.walk(&m, va).unwrap();
        assert_eq!((t.level, t.page_size), (2, 1 << 25));
        assert_eq!(t.output, 0x0000_0042_0000_0000 | (va & ((1 << 25) - 1)));
        m.write_u64(
            L1 + ((va >> 36) & 0x7ff) * 8,
            0x0000_4000_0000_0000 | BLOCK | RW_PRIV,
        )
        .unwrap();
        assert_eq!(s.walk(&m, va), Err(tf(1, Tfk::BlockNotPermitted)));
        // 16K table descriptors: bits [13:12] are RES0.
        m.write_u64(L1 + ((va >> 36) & 0x7ff) * 8, L2 | 0x1000 | TABLE)
            .unwrap();
        assert!(matches!(
            s.walk(&m, va),
            Err(Fault::ReservedBits {
                level: 1,
                bits: 0x1000,
                ..
            })
        ));
    }
}
