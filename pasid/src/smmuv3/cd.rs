//! SMMUv3 context descriptors (64 bytes) and CD-table lookup.
//!
//! CD layout (SMMUv3, AArch64 CDs):
//! * word 0: T0SZ \[5:0\], TG0 \[7:6\], IR0 \[9:8\], OR0 \[11:10\], SH0 \[13:12\], EPD0 \[14\],
//!   ENDI \[15\], T1SZ \[21:16\], TG1 \[23:22\], IR1 \[25:24\], OR1 \[27:26\], SH1 \[29:28\],
//!   EPD1 \[30\], V \[31\], IPS \[34:32\], AFFD \[35\], WXN \[36\], UWXN \[37\], TBI0 \[38\],
//!   TBI1 \[39\], PAN \[40\], AA64 \[41\], HD \[42\], HA \[43\], S \[44\], R \[45\], A \[46\],
//!   ASET \[47\], ASID \[63:48\]
//! * word 1: NSCFG0 \[0\], HAD0 \[1\], TTB0 \[51:4\], HWU0 \[63:60\]
//! * word 2: NSCFG1 \[0\], HAD1 \[1\], TTB1 \[51:4\], HWU1 \[63:60\]
//! * word 3: MAIR0 \[31:0\], MAIR1 \[63:32\]; word 4: AMAIR0/AMAIR1; word 5: IMPDEF;
//!   word 6: PARTID / PMG (MPAM); word 7: reserved.
//!
//! Validation (for the software backend, which walks the tables itself; with iommufd the
//! hardware reads the guest's CDs directly and the host kernel validates nothing in them):
//! * V = 0: [`CdError::NotValid`]. AA64 = 0 (AArch32 LPAE CDs): rejected.
//! * EPD1 = 0: rejected (TTB1 is never walked; Linux always sets EPD1). T1SZ, TG1, IR1, OR1,
//!   SH1, TBI1, TTB1, HAD1, NSCFG1 are then ignored.
//! * TG0 = 0b11, IPS = 0b111, SH0 = 0b01, T0SZ outside the granule's range: rejected.
//! * ENDI, HA, HD, S (stall), 16-bit ASIDs: rejected unless [`CdCaps`] says the (emulated)
//!   SMMU has them. HD without HA behaves as HD = 0.
//! * UWXN (AArch32 only): must be 0. NSCFG0 and the HWU bits are ignored (non-secure streams;
//!   hardware-use bits are IMPLEMENTATION DEFINED and this implementation gives them no
//!   meaning).
//! * Reserved bits of words 1 and 2 (\[3:2\], \[59:52\]), IMPDEF word 5, the MPAM word 6
//!   (PARTID/PMG are host resources) and reserved word 7 must be 0.
//! * Unless EPD0: TTB0 must fit the output size, be aligned to the initial table, and that
//!   table must lie in guest RAM.
//! * MAIR and AMAIR are taken as they are.

use pagetables::vmsa::{Granule, Stage1, Stage1Caps, Stage1Params};
use pagetables::{GuestMemoryRead, MemoryError};

use super::ste::{S1Fmt, SsidResolution, SteS1, CD_SIZE};

/// What the (emulated) SMMU supports, for CD validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CdCaps {
    /// SMMU_IDR5.OAS in bits.
    pub max_oas: u8,
    /// 52-bit VA with 64K granule (SMMU_IDR5.VAX).
    pub lva: bool,
    /// 16-bit ASIDs (SMMU_IDR0.ASID16); otherwise 8.
    pub asid16: bool,
    /// Hardware access flag update (SMMU_IDR0.HTTU >= 1).
    pub hw_access_flag: bool,
    /// Hardware dirty state update (SMMU_IDR0.HTTU = 2).
    pub hw_dirty: bool,
    /// Stall model (SMMU_IDR0.STALL_MODEL permits stalls).
    pub stall: bool,
    /// Big-endian translation tables (SMMU_IDR0.TTENDIAN mixed or big).
    pub big_endian: bool,
    /// Translation granules supported (SMMU_IDR5.GRAN4K / GRAN16K / GRAN64K).
    pub granules: GranuleSupport,
}

/// Which stage-1 granules the SMMU supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GranuleSupport {
    /// 4KB.
    pub k4: bool,
    /// 16KB.
    pub k16: bool,
    /// 64KB.
    pub k64: bool,
}

impl GranuleSupport {
    /// All three granules.
    pub const ALL: GranuleSupport = GranuleSupport {
        k4: true,
        k16: true,
        k64: true,
    };

    /// Whether `g` is supported.
    pub fn supports(&self, g: Granule) -> bool {
        match g {
            Granule::K4 => self.k4,
            Granule::K16 => self.k16,
            Granule::K64 => self.k64,
        }
    }
}

/// Host SMMU properties from the `iommu_hw_info_arm_smmuv3.idr[6]` registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SmmuIdrInfo {
    /// What CDs may use.
    pub cd_caps: CdCaps,
    /// SMMU_IDR1.SSIDSIZE (clamped to 20): the SMMU's PASID width.
    pub ssid_bits: u8,
    /// SMMU_IDR0.CD2L: 2-level CD tables.
    pub cd2l: bool,
    /// SMMU_IDR0.S1P and S2P: both stages, needed for nesting.
    pub nesting: bool,
    /// SMMU_IDR0.PRI.
    pub pri: bool,
    /// SMMU_IDR0.ATS.
    pub ats: bool,
}

impl SmmuIdrInfo {
    /// Decodes IDR0 (TTENDIAN \[22:21\], CD2L \[19\], PRI \[16\], ASID16 \[12\],
    /// ATS \[10\], HTTU \[7:6\], S1P \[1\], S2P \[0\], STALL_MODEL \[25:24\]), IDR1
    /// (SSIDSIZE \[10:6\]) and IDR5 (OAS \[2:0\], GRAN4K \[4\], GRAN16K \[5\],
    /// GRAN64K \[6\], VAX \[11:10\]).
    pub fn from_idr(idr: &[u32; 6]) -> Self {
        let (idr0, idr1, idr5) = (idr[0], idr[1], idr[5]);
        let httu = (idr0 >> 6) & 3;
        let ttendian = (idr0 >> 21) & 3;
        let stall_model = (idr0 >> 24) & 3;
        let oas = match idr5 & 7 {
            0 => 32,
            1 => 36,
            2 => 40,
            3 => 42,
            4 => 44,
            5 => 48,
            _ => 52,
        };
        let ssid = ((idr1 >> 6) & 0x1f) as u8;
        SmmuIdrInfo {
            cd_caps: CdCaps {
                max_oas: oas,
                lva: (idr5 >> 10) & 3 == 1,
                asid16: idr0 & (1 << 12) != 0,
                hw_access_flag: httu >= 1,
                hw_dirty: httu == 2,
                // 0b00: stall and terminate; 0b10: stall forced. 0b01: terminate only.
                stall: stall_model == 0 || stall_model == 2,
                // 0b00 mixed, 0b11 big-endian only.
                big_endian: ttendian == 0 || ttendian == 3,
                granules: GranuleSupport {
                    k4: idr5 & (1 << 4) != 0,
                    k16: idr5 & (1 << 5) != 0,
                    k64: idr5 & (1 << 6) != 0,
                },
            },
            ssid_bits: ssid.min(crate::MAX_PASID_BITS),
            cd2l: idr0 & (1 << 19) != 0,
            nesting: idr0 & 3 == 3,
            pri: idr0 & (1 << 16) != 0,
            ats: idr0 & (1 << 10) != 0,
        }
    }
}

impl Default for CdCaps {
    /// 48-bit output, 16-bit ASIDs, nothing optional (what the software backend emulates).
    fn default() -> Self {
        CdCaps {
            max_oas: 48,
            lva: false,
            asid16: true,
            hw_access_flag: false,
            hw_dirty: false,
            stall: false,
            big_endian: false,
            granules: GranuleSupport::ALL,
        }
    }
}

/// CD and CD-table errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CdError {
    /// V = 0.
    #[error("context descriptor not valid")]
    NotValid,
    /// AA64 = 0.
    #[error("AArch32 context descriptors are not supported")]
    NotAArch64,
    /// EPD1 = 0.
    #[error("TTB1 walks (EPD1 = 0) are not supported")]
    Ttb1Enabled,
    /// TG0 = 0b11.
    #[error("reserved TG0 {0}")]
    ReservedTg0(u8),
    /// SH0 = 0b01.
    #[error("reserved SH0 encoding 0b01")]
    ReservedSh0,
    /// UWXN set.
    #[error("UWXN (AArch32 only) set in an AArch64 CD")]
    Uwxn,
    /// A feature the SMMU does not have.
    #[error("CD uses {0}, which this SMMU does not support")]
    Unsupported(&'static str),
    /// ASID wider than the SMMU's.
    #[error("ASID {0:#x} exceeds 8 bits")]
    AsidTooWide(u16),
    /// Reserved / IMPDEF / MPAM bits set.
    #[error("CD word {word} has reserved bits {bits:#x} set")]
    ReservedBits {
        /// Word index 0..=7.
        word: u8,
        /// The offending bits.
        bits: u64,
    },
    /// T0SZ / IPS / TTB0 rejected by the stage-1 configuration rules.
    #[error("invalid stage-1 configuration: {0}")]
    Stage1(#[from] pagetables::vmsa::ConfigError),
    /// The initial translation table is not in guest RAM.
    #[error("TTB0 table outside guest RAM: {0}")]
    TtbOutsideRam(MemoryError),
    /// Reading the CD or an L1 descriptor failed.
    #[error("CD table read failed: {0}")]
    Memory(MemoryError),
    /// SSID cannot be used (no substreams, above S1CDMax, or SSID 0 with S1DSS = SSID0).
    #[error("SSID {0:#x} is not valid for this stream")]
    BadSubstreamId(u32),
    /// Requests without SSID are terminated or bypass stage 1 (S1DSS): no CD applies.
    #[error("no CD applies: S1DSS {0:?}")]
    NoCd(SsidResolution),
    /// The L1 descriptor for the SSID has V = 0.
    #[error("L1 CD descriptor at {0:#x} not valid")]
    L1NotValid(u64),
    /// The L1 descriptor has reserved bits set.
    #[error("L1 CD descriptor {desc:#x} has reserved bits set")]
    L1Reserved {
        /// The descriptor.
        desc: u64,
    },
}

const W0_T0SZ: u64 = 0x3f;
const W0_TG0_SHIFT: u32 = 6;
const W0_IR0_SHIFT: u32 = 8;
const W0_OR0_SHIFT: u32 = 10;
const W0_SH0_SHIFT: u32 = 12;
const W0_EPD0: u64 = 1 << 14;
const W0_ENDI: u64 = 1 << 15;
const W0_EPD1: u64 = 1 << 30;
const W0_V: u64 = 1 << 31;
const W0_IPS_SHIFT: u32 = 32;
const W0_AFFD: u64 = 1 << 35;
const W0_WXN: u64 = 1 << 36;
const W0_UWXN: u64 = 1 << 37;
const W0_TBI0: u64 = 1 << 38;
const W0_PAN: u64 = 1 << 40;
const W0_AA64: u64 = 1 << 41;
const W0_HD: u64 = 1 << 42;
const W0_HA: u64 = 1 << 43;
const W0_S: u64 = 1 << 44;
const W0_R: u64 = 1 << 45;
const W0_A: u64 = 1 << 46;
const W0_ASET: u64 = 1 << 47;
const W0_ASID_SHIFT: u32 = 48;
const W1_HAD0: u64 = 1 << 1;
const TTB_MASK: u64 = 0x000f_ffff_ffff_fff0; // [51:4]
const W12_RES0: u64 = 0x0ff0_0000_0000_000c; // [59:52], [3:2]

/// A decoded, validated AArch64 context descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContextDescriptor {
    /// The raw words.
    pub raw: [u64; 8],
    /// T0SZ.
    pub t0sz: u8,
    /// TG0.
    pub granule: Granule,
    /// IR0 (walk inner cacheability).
    pub ir0: u8,
    /// OR0.
    pub or0: u8,
    /// SH0.
    pub sh0: u8,
    /// EPD0.
    pub epd0: bool,
    /// ENDI.
    pub endi: bool,
    /// IPS (encoded).
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
    /// S (stall faults).
    pub stall: bool,
    /// R (record faults).
    pub record: bool,
    /// A (abort: terminated transactions report an abort rather than RAZ/WI).
    pub abort: bool,
    /// ASET (ASID set: 1 = not shared with CPU broadcast TLBI).
    pub aset: bool,
    /// ASID.
    pub asid: u16,
    /// HAD0.
    pub had0: bool,
    /// TTB0.
    pub ttb0: u64,
    /// MAIR0 | MAIR1 << 32.
    pub mair: u64,
    /// AMAIR0 | AMAIR1 << 32.
    pub amair: u64,
}

impl ContextDescriptor {
    /// Decodes and validates a CD's words (no memory checks).
    pub fn decode(raw: [u64; 8], caps: &CdCaps) -> Result<Self, CdError> {
        let w0 = raw[0];
        if w0 & W0_V == 0 {
            return Err(CdError::NotValid);
        }
        if w0 & W0_AA64 == 0 {
            return Err(CdError::NotAArch64);
        }
        if w0 & W0_EPD1 == 0 {
            return Err(CdError::Ttb1Enabled);
        }
        if w0 & W0_UWXN != 0 {
            return Err(CdError::Uwxn);
        }
        let tg0 = ((w0 >> W0_TG0_SHIFT) & 3) as u8;
        let granule = Granule::from_tg0(tg0).ok_or(CdError::ReservedTg0(tg0))?;
        if !caps.granules.supports(granule) {
            return Err(CdError::Unsupported("this translation granule (TG0)"));
        }
        let sh0 = ((w0 >> W0_SH0_SHIFT) & 3) as u8;
        if sh0 == 1 {
            return Err(CdError::ReservedSh0);
        }
        let endi = w0 & W0_ENDI != 0;
        let ha = w0 & W0_HA != 0;
        let hd = w0 & W0_HD != 0;
        let stall = w0 & W0_S != 0;
        if endi && !caps.big_endian {
            return Err(CdError::Unsupported("big-endian tables (ENDI)"));
        }
        if ha && !caps.hw_access_flag {
            return Err(CdError::Unsupported("hardware access flag (HA)"));
        }
        if hd && !caps.hw_dirty {
            return Err(CdError::Unsupported("hardware dirty state (HD)"));
        }
        if stall && !caps.stall {
            return Err(CdError::Unsupported("stall faults (S)"));
        }
        let asid = (w0 >> W0_ASID_SHIFT) as u16;
        if !caps.asid16 && asid > 0xff {
            return Err(CdError::AsidTooWide(asid));
        }
        for (word, mask) in [
            (1u8, W12_RES0),
            (2, W12_RES0),
            (5, u64::MAX),
            (6, u64::MAX),
            (7, u64::MAX),
        ] {
            let bits = raw[usize::from(word)] & mask;
            if bits != 0 {
                return Err(CdError::ReservedBits { word, bits });
            }
        }
        let cd = ContextDescriptor {
            raw,
            t0sz: (w0 & W0_T0SZ) as u8,
            granule,
            ir0: ((w0 >> W0_IR0_SHIFT) & 3) as u8,
            or0: ((w0 >> W0_OR0_SHIFT) & 3) as u8,
            sh0,
            epd0: w0 & W0_EPD0 != 0,
            endi,
            ips: ((w0 >> W0_IPS_SHIFT) & 7) as u8,
            affd: w0 & W0_AFFD != 0,
            wxn: w0 & W0_WXN != 0,
            tbi0: w0 & W0_TBI0 != 0,
            pan: w0 & W0_PAN != 0,
            hd,
            ha,
            stall,
            record: w0 & W0_R != 0,
            abort: w0 & W0_A != 0,
            aset: w0 & W0_ASET != 0,
            asid,
            had0: raw[1] & W1_HAD0 != 0,
            ttb0: raw[1] & TTB_MASK,
            mair: raw[3],
            amair: raw[4],
        };
        // T0SZ, IPS and TTB0 follow the walker's rules; a CD with EPD0 never walks, but its
        // fields must still be well formed.
        Stage1::new(cd.stage1_params(caps))?;
        Ok(cd)
    }

    /// Reads the CD at `gpa` and validates it, including that the initial table is in RAM.
    pub fn read(mem: &impl GuestMemoryRead, gpa: u64, caps: &CdCaps) -> Result<Self, CdError> {
        let mut raw = [0u64; 8];
        for (i, w) in raw.iter_mut().enumerate() {
            *w = mem
                .read_u64(gpa.wrapping_add(8 * i as u64))
                .map_err(CdError::Memory)?;
        }
        let cd = Self::decode(raw, caps)?;
        if !cd.epd0 {
            let s = cd.stage1(caps)?;
            let g = cd.granule;
            let root_shift = g.shift() + g.stride() * (3 - u32::from(s.start_level()));
            let root_bytes = 8u64 << (s.input_bits() - root_shift);
            mem.check_range(cd.ttb0, root_bytes)
                .map_err(CdError::TtbOutsideRam)?;
        }
        Ok(cd)
    }

    /// The walker parameters this CD describes.
    pub fn stage1_params(&self, caps: &CdCaps) -> Stage1Params {
        Stage1Params {
            granule: self.granule,
            t0sz: self.t0sz,
            ips: self.ips,
            ttb0: self.ttb0,
            mair: self.mair,
            epd0: self.epd0,
            tbi0: self.tbi0,
            affd: self.affd,
            ha: self.ha,
            hd: self.hd && self.ha,
            wxn: self.wxn,
            pan: self.pan,
            had0: self.had0,
            big_endian: self.endi,
            caps: Stage1Caps {
                max_oas: caps.max_oas,
                lva: caps.lva,
            },
        }
    }

    /// A stage-1 walker for this CD.
    pub fn stage1(&self, caps: &CdCaps) -> Result<Stage1, CdError> {
        Ok(Stage1::new(self.stage1_params(caps))?)
    }
}

const L1_V: u64 = 1;
const L1_L2PTR: u64 = 0x000f_ffff_ffff_f000; // [51:12]

impl SteS1 {
    /// Guest physical address of the CD for `ssid` (`None`: a request without PASID), after
    /// S1CDMax / S1DSS, reading the L1 descriptor for 2-level tables.
    pub fn cd_address(
        &self,
        mem: &impl GuestMemoryRead,
        ssid: Option<u32>,
    ) -> Result<u64, CdError> {
        let index = match self.resolve(ssid) {
            SsidResolution::Cd(i) => i,
            SsidResolution::Terminate => {
                return Err(match ssid {
                    Some(s) => CdError::BadSubstreamId(s),
                    None => CdError::NoCd(SsidResolution::Terminate),
                })
            }
            r @ SsidResolution::Bypass => return Err(CdError::NoCd(r)),
        };
        let index = u64::from(index);
        match (self.fmt, self.fmt.split()) {
            (S1Fmt::Linear, _) | (_, None) => Ok(self.context_ptr + index * CD_SIZE),
            (_, Some(split)) => {
                let l1_at = self.context_ptr + (index >> split) * 8;
                let desc = mem.read_u64(l1_at).map_err(CdError::Memory)?;
                if desc & L1_V == 0 {
                    return Err(CdError::L1NotValid(l1_at));
                }
                if desc & !(L1_V | L1_L2PTR) != 0 {
                    return Err(CdError::L1Reserved { desc });
                }
                let l2 = desc & L1_L2PTR;
                Ok(l2 + (index & ((1u64 << split) - 1)) * CD_SIZE)
            }
        }
    }

    /// Locates, reads and validates the CD for `ssid`.
    pub fn read_cd(
        &self,
        mem: &impl GuestMemoryRead,
        ssid: Option<u32>,
        caps: &CdCaps,
    ) -> Result<ContextDescriptor, CdError> {
        let at = self.cd_address(mem, ssid)?;
        ContextDescriptor::read(mem, at, caps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagetables::TestMemory;

    const RAM: std::ops::Range<u64> = 0x8000_0000..0x9000_0000;

    /// A CD as Linux programs it: 4K granule, 48-bit VA, IPS 48, WBWA inner-shareable walks,
    /// EPD1, AA64, R, A, ASET, ASID 0x1234.
    fn linux_cd(ttb0: u64) -> [u64; 8] {
        // T0SZ 16, TG0 0 (4K)
        let w0 = 16
            | (1 << 8)
            | (1 << 10)
            | (3 << 12)
            | W0_EPD1
            | W0_V
            | (5u64 << 32)
            | W0_AA64
            | W0_R
            | W0_A
            | W0_ASET
            | (0x1234u64 << 48);
        [w0, ttb0, 0, 0x0000_0000_0044_ff04, 0, 0, 0, 0]
    }

    fn all_caps() -> CdCaps {
        CdCaps {
            hw_access_flag: true,
            hw_dirty: true,
            stall: true,
            big_endian: true,
            ..CdCaps::default()
        }
    }

    #[test]
    fn caps_from_idr_registers() {
        // IDR0: S1P, S2P, HTTU = 2, ATS, ASID16, PRI, CD2L, TTENDIAN LE (0b10), STALL_MODEL 1.
        let idr0 =
            3 | (2 << 6) | (1 << 10) | (1 << 12) | (1 << 16) | (1 << 19) | (2 << 21) | (1 << 24);
        // IDR1: SSIDSIZE 20. IDR5: OAS 48 (5), GRAN4K, GRAN64K, VAX 1.
        let idr1 = 20 << 6;
        let idr5 = 5 | (1 << 4) | (1 << 6) | (1 << 10);
        let i = SmmuIdrInfo::from_idr(&[idr0, idr1, 0, 0, 0, idr5]);
        assert_eq!(
            i,
            SmmuIdrInfo {
                cd_caps: CdCaps {
                    max_oas: 48,
                    lva: true,
                    asid16: true,
                    hw_access_flag: true,
                    hw_dirty: true,
                    stall: false,
                    big_endian: false,
                    granules: GranuleSupport {
                        k4: true,
                        k16: false,
                        k64: true
                    },
                },
                ssid_bits: 20,
                cd2l: true,
                nesting: true,
                pri: true,
                ats: true,
            }
        );
        let i = SmmuIdrInfo::from_idr(&[(1 << 6) | (3 << 21) | (2 << 24), 31 << 6, 0, 0, 0, 6]);
        assert_eq!(i.ssid_bits, 20);
        assert_eq!(i.cd_caps.max_oas, 52);
        assert!(i.cd_caps.hw_access_flag && !i.cd_caps.hw_dirty);
        assert!(i.cd_caps.big_endian && i.cd_caps.stall && !i.cd_caps.asid16);
        assert!(!i.cd2l && !i.nesting && !i.pri && !i.ats);
        // A CD with a granule the SMMU lacks is rejected.
        let no16 = CdCaps {
            granules: GranuleSupport {
                k16: false,
                ..GranuleSupport::ALL
            },
            ..CdCaps::default()
        };
        let mut raw = linux_cd(0x8010_0000);
        raw[0] |= 2 << 6;
        assert!(matches!(
            ContextDescriptor::decode(raw, &no16),
            Err(CdError::Unsupported(_))
        ));
        assert!(ContextDescriptor::decode(raw, &CdCaps::default()).is_ok());
    }

    #[test]
    fn decodes_every_multi_bit_field() {
        let caps = all_caps();
        let w0 = 25 // T0SZ
            | (2 << 6) // TG0 16K
            | (2 << 8) // IR0
            | (1 << 10) // OR0
            | (3 << 12) // SH0
            | W0_EPD1
            | W0_V
            | (4u64 << 32) // IPS 44
            | W0_AA64
            | (0xbeefu64 << 48);
        let raw = [w0, 0x1234_5000, 0, 0x1122_3344_5566_7788, 0xaabb, 0, 0, 0];
        let cd = ContextDescriptor::decode(raw, &caps).unwrap();
        assert_eq!(cd.t0sz, 25);
        assert_eq!(cd.granule, Granule::K16);
        assert_eq!((cd.ir0, cd.or0, cd.sh0), (2, 1, 3));
        assert_eq!(cd.ips, 4);
        assert_eq!(cd.asid, 0xbeef);
        assert_eq!(cd.ttb0, 0x1234_5000);
        assert_eq!(cd.mair, 0x1122_3344_5566_7788);
        assert_eq!(cd.amair, 0xaabb);
        let p = cd.stage1_params(&caps);
        assert_eq!(
            (p.granule, p.t0sz, p.ips, p.ttb0),
            (Granule::K16, 25, 4, 0x1234_5000)
        );
        assert_eq!(p.mair, 0x1122_3344_5566_7788);
    }

    #[test]
    fn each_single_bit_field_decodes_alone() {
        type Get = fn(&ContextDescriptor) -> bool;
        // (word, bit, accessor), CD bit positions from the SMMUv3 CD format.
        let fields: [(usize, u32, Get); 13] = [
            (0, 14, |c| c.epd0),
            (0, 15, |c| c.endi),
            (0, 35, |c| c.affd),
            (0, 36, |c| c.wxn),
            (0, 38, |c| c.tbi0),
            (0, 40, |c| c.pan),
            (0, 42, |c| c.hd),
            (0, 43, |c| c.ha),
            (0, 44, |c| c.stall),
            (0, 45, |c| c.record),
            (0, 46, |c| c.abort),
            (0, 47, |c| c.aset),
            (1, 1, |c| c.had0),
        ];
        let caps = all_caps();
        let base = [
            16 | W0_EPD1 | W0_V | (5u64 << 32) | W0_AA64,
            0x8010_0000,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        let none = ContextDescriptor::decode(base, &caps).unwrap();
        assert!(fields.iter().all(|(_, _, get)| !get(&none)));
        for (i, (word, bit, _)) in fields.iter().enumerate() {
            let mut raw = base;
            raw[*word] |= 1 << bit;
            let cd = ContextDescriptor::decode(raw, &caps).unwrap();
            let set: Vec<bool> = fields.iter().map(|(_, _, get)| get(&cd)).collect();
            let mut want = vec![false; fields.len()];
            want[i] = true;
            assert_eq!(set, want, "word {word} bit {bit}");
        }
        // Walker parameters follow the flags (HD only with HA).
        let mut raw = base;
        raw[0] |= W0_HD | W0_ENDI | W0_TBI0 | W0_PAN | W0_WXN | W0_AFFD | W0_EPD0;
        raw[1] |= W1_HAD0;
        let p = ContextDescriptor::decode(raw, &caps)
            .unwrap()
            .stage1_params(&caps);
        assert!(!p.hd && p.big_endian && p.tbi0 && p.pan && p.wxn && p.affd && p.epd0 && p.had0);
        raw[0] |= W0_HA;
        let p = ContextDescriptor::decode(raw, &caps)
            .unwrap()
            .stage1_params(&caps);
        assert!(p.hd && p.ha);
    }

    #[test]
    fn linux_style_cd_walks() {
        let mut m = TestMemory::single(RAM);
        let cd = ContextDescriptor::decode(linux_cd(0x8010_0000), &CdCaps::default()).unwrap();
        assert_eq!((cd.asid, cd.t0sz, cd.ips), (0x1234, 16, 5));
        let s = cd.stage1(&CdCaps::default()).unwrap();
        assert_eq!(s.start_level(), 0);
        assert_eq!(s.output_bits(), 48);
        // Put the CD in memory and read it back.
        for (i, w) in linux_cd(0x8010_0000).iter().enumerate() {
            m.write_u64(0x8000_0000 + 8 * i as u64, *w).unwrap();
        }
        assert_eq!(
            ContextDescriptor::read(&m, 0x8000_0000, &CdCaps::default()),
            Ok(cd)
        );
        // TTB0 outside RAM.
        let mut raw = linux_cd(0x7000_0000);
        raw[1] = 0x7000_0000;
        for (i, w) in raw.iter().enumerate() {
            m.write_u64(0x8000_0040 + 8 * i as u64, *w).unwrap();
        }
        assert!(matches!(
            ContextDescriptor::read(&m, 0x8000_0040, &CdCaps::default()),
            Err(CdError::TtbOutsideRam(_))
        ));
        // ... is fine when EPD0 disables walks.
        raw[0] |= W0_EPD0;
        for (i, w) in raw.iter().enumerate() {
            m.write_u64(0x8000_0040 + 8 * i as u64, *w).unwrap();
        }
        assert!(ContextDescriptor::read(&m, 0x8000_0040, &CdCaps::default()).is_ok());
        // The CD itself outside RAM.
        assert!(matches!(
            ContextDescriptor::read(&m, 0x9000_0000, &CdCaps::default()),
            Err(CdError::Memory(_))
        ));
    }

    #[test]
    fn rejections() {
        let caps = CdCaps::default();
        let base = linux_cd(0x8010_0000);
        let with = |f: &dyn Fn(&mut [u64; 8])| {
            let mut r = base;
            f(&mut r);
            ContextDescriptor::decode(r, &caps)
        };
        assert_eq!(with(&|r| r[0] &= !W0_V), Err(CdError::NotValid));
        assert_eq!(with(&|r| r[0] &= !W0_AA64), Err(CdError::NotAArch64));
        assert_eq!(with(&|r| r[0] &= !W0_EPD1), Err(CdError::Ttb1Enabled));
        assert_eq!(with(&|r| r[0] |= W0_UWXN), Err(CdError::Uwxn));
        assert_eq!(with(&|r| r[0] |= 3 << 6), Err(CdError::ReservedTg0(3)));
        assert_eq!(
            with(&|r| r[0] = (r[0] & !(3 << 12)) | (1 << 12)),
            Err(CdError::ReservedSh0)
        );
        assert!(matches!(
            with(&|r| r[0] |= W0_ENDI),
            Err(CdError::Unsupported(_))
        ));
        assert!(matches!(
            with(&|r| r[0] |= W0_HA),
            Err(CdError::Unsupported(_))
        ));
        assert!(matches!(
            with(&|r| r[0] |= W0_HD),
            Err(CdError::Unsupported(_))
        ));
        assert!(matches!(
            with(&|r| r[0] |= W0_S),
            Err(CdError::Unsupported(_))
        ));
        assert_eq!(
            with(&|r| r[0] |= 7u64 << 32),
            Err(CdError::Stage1(pagetables::vmsa::ConfigError::ReservedIps(
                7
            )))
        );
        assert!(matches!(
            with(&|r| r[0] = (r[0] & !0x3f) | 40),
            Err(CdError::Stage1(
                pagetables::vmsa::ConfigError::T0szOutOfRange { .. }
            ))
        ));
        assert!(matches!(
            with(&|r| r[1] = 0x8010_0800),
            Err(CdError::Stage1(
                pagetables::vmsa::ConfigError::TtbMisaligned { .. }
            ))
        ));
        for (word, bits) in [
            (1u8, 1u64 << 2),
            (1, 1 << 52),
            (2, 1 << 59),
            (5, 1),
            (6, 1 << 16),
            (7, 1 << 63),
        ] {
            assert_eq!(
                with(&|r| r[usize::from(word)] |= bits),
                Err(CdError::ReservedBits { word, bits })
            );
        }
        // 8-bit ASIDs.
        let caps8 = CdCaps {
            asid16: false,
            ..CdCaps::default()
        };
        assert_eq!(
            ContextDescriptor::decode(base, &caps8),
            Err(CdError::AsidTooWide(0x1234))
        );
        // Ignored: TTB1 half, HWU, NSCFG0.
        assert!(with(&|r| {
            r[0] |= (20 << 16) | (3 << 22);
            r[1] |= (0xf << 60) | 1;
            r[2] = 0x1234_5670;
        })
        .is_ok());
    }

    #[test]
    fn cd_table_lookup_linear_and_two_level() {
        let mut m = TestMemory::single(RAM);
        // Linear, 16 CDs.
        let s = SteS1::from_fields(0, 0, 0x8000_0000, 4, 20, &m).unwrap();
        assert_eq!(s.cd_address(&m, Some(5)), Ok(0x8000_0000 + 5 * 64));
        assert_eq!(s.cd_address(&m, Some(16)), Err(CdError::BadSubstreamId(16)));
        assert_eq!(
            s.cd_address(&m, None),
            Err(CdError::NoCd(SsidResolution::Terminate))
        );
        // 4KL2, 2^12 CDs: L1 index = ssid >> 6.
        let s = SteS1::from_fields(1, 2, 0x8001_0000, 12, 20, &m).unwrap();
        m.write_u64(0x8001_0000 + 8 * 3, 0x8004_0000 | 1).unwrap();
        assert_eq!(s.cd_address(&m, Some(3 * 64 + 7)), Ok(0x8004_0000 + 7 * 64));
        assert_eq!(
            s.cd_address(&m, Some(64)),
            Err(CdError::L1NotValid(0x8001_0008))
        );
        assert_eq!(s.cd_address(&m, Some(0)), Err(CdError::BadSubstreamId(0)));
        m.write_u64(0x8001_0000, 0x8005_0000 | 1).unwrap();
        assert_eq!(s.cd_address(&m, None), Ok(0x8005_0000));
        m.write_u64(0x8001_0000 + 8 * 4, 0x8006_0000 | 1 | (1 << 11))
            .unwrap();
        assert_eq!(
            s.cd_address(&m, Some(4 * 64)),
            Err(CdError::L1Reserved {
                desc: 0x8006_0000 | 1 | (1 << 11)
            })
        );
        // 64KL2, 2^20 CDs: L1 index = ssid >> 10.
        let s = SteS1::from_fields(2, 1, 0x8002_0000, 20, 20, &m).unwrap();
        m.write_u64(0x8002_0000 + 8 * 1023, 0x8010_0000 | 1)
            .unwrap();
        assert_eq!(
            s.cd_address(&m, Some((1 << 20) - 1)),
            Ok(0x8010_0000 + 1023 * 64)
        );
        assert_eq!(
            s.cd_address(&m, None),
            Err(CdError::NoCd(SsidResolution::Bypass))
        );
        // L2 pointer outside RAM: reading the CD fails.
        m.write_u64(0x8002_0000, 0x1000_0000 | 1).unwrap();
        assert!(matches!(
            s.read_cd(&m, Some(1), &CdCaps::default()),
            Err(CdError::Memory(_))
        ));
        // Full path: L1 -> CD -> stage 1.
        m.write_u64(0x8002_0000 + 8 * 2, 0x8020_0000 | 1).unwrap();
        for (i, w) in linux_cd(0x8030_0000).iter().enumerate() {
            m.write_u64(0x8020_0000 + 5 * 64 + 8 * i as u64, *w)
                .unwrap();
        }
        let cd = s
            .read_cd(&m, Some(2 * 1024 + 5), &CdCaps::default())
            .unwrap();
        assert_eq!(cd.asid, 0x1234);
    }
}
