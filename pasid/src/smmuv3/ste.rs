//! The stage-1 part of an SMMUv3 stream table entry: what the guest provides (S1Fmt, S1DSS,
//! S1CDMax, S1ContextPtr), and the 2-qword STE fragment iommufd's
//! `IOMMU_HWPT_DATA_ARM_SMMUV3` nested data (`struct iommu_hwpt_arm_smmuv3 { le64 ste[2]; }`)
//! takes.
//!
//! STE bit positions (SMMUv3 STE, words 0 and 1):
//! * word 0: V \[0\], Config \[3:1\], S1Fmt \[5:4\], S1ContextPtr \[51:6\], S1CDMax \[63:59\]
//! * word 1: S1DSS \[1:0\], S1CIR \[3:2\], S1COR \[5:4\], S1CSH \[7:6\], S1STALLD \[27\],
//!   EATS \[29:28\]
//!
//! Isolation policy for the iommufd fragment:
//! * **Rejected** (from a raw guest STE, [`GuestSte::decode`]): Config = stage-2 or nested
//!   (0b110, 0b111) and the reserved Config encodings (0b001..=0b011); any non-zero bit outside
//!   V, Config, S1Fmt, S1ContextPtr, S1CDMax, S1DSS, S1CIR, S1COR, S1CSH, S1STALLD and EATS
//!   (STRW, SHCFG, MEV, S2FWB, the MemAttr/ALLOCCFG/INSTCFG/PRIVCFG/NSCFG overrides, DCP, DRE,
//!   CONT, PPAR, reserved bits); reserved S1Fmt / S1DSS values; S1CDMax beyond the endpoint's
//!   PASID width; a CD table not entirely inside guest RAM.
//! * **Forced to host values**: S1CIR / S1COR / S1CSH (CD fetch attributes), S1STALLD and EATS
//!   come from [`SteHostPolicy`], whatever the guest wrote; everything the STE holds beyond the
//!   two words (S2VMID, VTCR, S2TTB, S2* controls) is not part of the fragment at all: the
//!   kernel takes it from the nesting parent. With S1CDMax = 0 (no substreams) S1Fmt and S1DSS
//!   are ignored by the hardware and emitted as 0.

use pagetables::{GuestMemoryRead, MemoryError};

const V: u64 = 1 << 0;
const CONFIG_SHIFT: u32 = 1;
const S1FMT_SHIFT: u32 = 4;
const S1CTXPTR_MASK: u64 = 0x000f_ffff_ffff_ffc0; // [51:6]
const S1CDMAX_SHIFT: u32 = 59;
const S1CIR_SHIFT: u32 = 2;
const S1COR_SHIFT: u32 = 4;
const S1CSH_SHIFT: u32 = 6;
const S1STALLD: u64 = 1 << 27;
const EATS_SHIFT: u32 = 28;

/// Config: all transactions aborted.
pub const CONFIG_ABORT: u8 = 0b000;
/// Config: stage 1 and stage 2 bypassed.
pub const CONFIG_BYPASS: u8 = 0b100;
/// Config: stage-1 translation.
pub const CONFIG_S1_TRANS: u8 = 0b101;

/// Bits of word 0 a guest may set.
const WORD0_GUEST: u64 = V
    | (0b111 << CONFIG_SHIFT)
    | (0b11 << S1FMT_SHIFT)
    | S1CTXPTR_MASK
    | (0b1_1111 << S1CDMAX_SHIFT);
/// Bits of word 1 a guest may set (the last four are then overridden by the host policy).
const WORD1_GUEST: u64 = 0b11
    | (0b11 << S1CIR_SHIFT)
    | (0b11 << S1COR_SHIFT)
    | (0b11 << S1CSH_SHIFT)
    | S1STALLD
    | (0b11 << EATS_SHIFT);

/// Size of a context descriptor.
pub const CD_SIZE: u64 = 64;

/// STE.S1Fmt: CD table layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S1Fmt {
    /// 0b00: a linear array of 2^S1CDMax CDs.
    Linear,
    /// 0b01: 2-level, L2 tables of 64 CDs (4KB), L1 indexed by SSID\[S1CDMax-1:6\].
    TwoLevel4K,
    /// 0b10: 2-level, L2 tables of 1024 CDs (64KB), L1 indexed by SSID\[S1CDMax-1:10\].
    TwoLevel64K,
}

impl S1Fmt {
    /// Decodes the 2-bit field (0b11 reserved).
    pub fn from_bits(v: u8) -> Option<S1Fmt> {
        match v {
            0 => Some(S1Fmt::Linear),
            1 => Some(S1Fmt::TwoLevel4K),
            2 => Some(S1Fmt::TwoLevel64K),
            _ => None,
        }
    }

    /// The encoding.
    pub fn bits(self) -> u8 {
        match self {
            S1Fmt::Linear => 0,
            S1Fmt::TwoLevel4K => 1,
            S1Fmt::TwoLevel64K => 2,
        }
    }

    /// log2 of the number of CDs per L2 table, for 2-level formats.
    pub fn split(self) -> Option<u8> {
        match self {
            S1Fmt::Linear => None,
            S1Fmt::TwoLevel4K => Some(6),
            S1Fmt::TwoLevel64K => Some(10),
        }
    }
}

/// STE.S1DSS: what happens to transactions without a substream ID when substreams are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S1Dss {
    /// 0b00: terminated.
    Terminate,
    /// 0b01: stage 1 bypassed.
    Bypass,
    /// 0b10: translated with CD 0; transactions with SSID 0 are then terminated.
    Ssid0,
}

impl S1Dss {
    /// Decodes the 2-bit field (0b11 reserved).
    pub fn from_bits(v: u8) -> Option<S1Dss> {
        match v {
            0 => Some(S1Dss::Terminate),
            1 => Some(S1Dss::Bypass),
            2 => Some(S1Dss::Ssid0),
            _ => None,
        }
    }

    /// The encoding.
    pub fn bits(self) -> u8 {
        match self {
            S1Dss::Terminate => 0,
            S1Dss::Bypass => 1,
            S1Dss::Ssid0 => 2,
        }
    }
}

/// Errors in the stage-1 STE fields a guest provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SteError {
    /// S1Fmt = 0b11.
    #[error("reserved S1Fmt {0}")]
    ReservedS1Fmt(u8),
    /// S1DSS = 0b11.
    #[error("reserved S1DSS {0}")]
    ReservedS1Dss(u8),
    /// S1CDMax above the endpoint's PASID width.
    #[error("S1CDMax {cdmax} exceeds the endpoint's {pasid_bits}-bit PASID space")]
    CdMaxTooLarge {
        /// Given value.
        cdmax: u32,
        /// Endpoint PASID width.
        pasid_bits: u8,
    },
    /// S1ContextPtr with bits outside \[51:6\].
    #[error("S1ContextPtr {0:#x} is not a 64-byte aligned 52-bit address")]
    BadContextPtr(u64),
    /// The CD table (linear) or L1 table is not inside guest RAM.
    #[error("CD table outside guest RAM: {0}")]
    TableOutsideRam(MemoryError),
    /// STE.Config is stage 2 or nested: the guest does not control stage 2.
    #[error("STE Config {0:#05b} (stage 2 / nested) is not the guest's to set")]
    Stage2Config(u8),
    /// A reserved STE.Config encoding.
    #[error("reserved STE Config {0:#05b}")]
    ReservedConfig(u8),
    /// Bits outside the stage-1 context in a guest STE.
    #[error("STE word {word} has non-stage-1 bits {bits:#x} set")]
    ForeignBits {
        /// 0 or 1.
        word: u8,
        /// The offending bits.
        bits: u64,
    },
}

/// The host's values for the STE fields the guest does not control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SteHostPolicy {
    /// S1CIR: inner cacheability of CD and L1 fetches (0b01 write-back read/write-allocate).
    pub cir: u8,
    /// S1COR: outer cacheability.
    pub cor: u8,
    /// S1CSH: shareability (0b11 inner shareable).
    pub csh: u8,
    /// S1STALLD: stall faults disabled for this stream (set unless the host uses stalls).
    pub stall_disable: bool,
    /// EATS = 0b01 (full ATS) instead of 0b00 (ATS translation requests aborted).
    pub ats: bool,
}

impl Default for SteHostPolicy {
    /// Write-back read/write-allocate, inner shareable (what Linux programs), stalls disabled,
    /// no ATS.
    fn default() -> Self {
        SteHostPolicy {
            cir: 1,
            cor: 1,
            csh: 3,
            stall_disable: true,
            ats: false,
        }
    }
}

/// Validated stage-1 STE fields: where the guest's CD table is and how to index it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SteS1 {
    /// Table layout (Linear when `cdmax` is 0).
    pub fmt: S1Fmt,
    /// Default substream behaviour.
    pub dss: S1Dss,
    /// S1ContextPtr: guest physical address of the CD table or L1 table.
    pub context_ptr: u64,
    /// S1CDMax: the table holds 2^cdmax CDs; 0 means substreams are disabled.
    pub cdmax: u8,
}

/// What a transaction resolves to before any CD is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SsidResolution {
    /// Translate with the CD for this SSID.
    Cd(u32),
    /// Stage 1 bypassed (S1DSS = BYPASS, no SSID).
    Bypass,
    /// Terminated: no SSID with S1DSS = TERMINATE, SSID 0 with S1DSS = SSID0, an SSID with
    /// substreams disabled, or an SSID at or above 2^S1CDMax (C_BAD_SUBSTREAMID).
    Terminate,
}

impl SteS1 {
    /// Validates the fields of an ATTACH_TABLE with the SMMUv3 PASID-table format
    /// (`u8 s1fmt, u8 s1dss, le64 s1contextptr, le32 s1cdmax`) for an endpoint with a
    /// `pasid_bits`-wide PASID space, and checks the table lies in guest RAM.
    pub fn from_fields(
        s1fmt: u8,
        s1dss: u8,
        context_ptr: u64,
        cdmax: u32,
        pasid_bits: u8,
        mem: &impl GuestMemoryRead,
    ) -> Result<SteS1, SteError> {
        let fmt = S1Fmt::from_bits(s1fmt).ok_or(SteError::ReservedS1Fmt(s1fmt))?;
        let dss = S1Dss::from_bits(s1dss).ok_or(SteError::ReservedS1Dss(s1dss))?;
        if cdmax > u32::from(pasid_bits.min(crate::MAX_PASID_BITS)) {
            return Err(SteError::CdMaxTooLarge { cdmax, pasid_bits });
        }
        if context_ptr & !S1CTXPTR_MASK != 0 {
            return Err(SteError::BadContextPtr(context_ptr));
        }
        // cdmax <= 20 here.
        let cdmax = cdmax as u8;
        let s = SteS1 {
            // With substreams disabled S1Fmt is ignored: a single CD at S1ContextPtr.
            fmt: if cdmax == 0 { S1Fmt::Linear } else { fmt },
            dss,
            context_ptr,
            cdmax,
        };
        mem.check_range(context_ptr, s.table_bytes())
            .map_err(SteError::TableOutsideRam)?;
        Ok(s)
    }

    /// Size in bytes of the table S1ContextPtr points to (the linear CD table or the L1
    /// table).
    pub fn table_bytes(&self) -> u64 {
        match self.fmt.split() {
            None => CD_SIZE << self.cdmax,
            Some(split) => 8u64 << self.cdmax.saturating_sub(split),
        }
    }

    /// Applies S1CDMax and S1DSS to a transaction's substream ID (`None`: no PASID).
    pub fn resolve(&self, ssid: Option<u32>) -> SsidResolution {
        match ssid {
            None if self.cdmax == 0 => SsidResolution::Cd(0),
            None => match self.dss {
                S1Dss::Terminate => SsidResolution::Terminate,
                S1Dss::Bypass => SsidResolution::Bypass,
                S1Dss::Ssid0 => SsidResolution::Cd(0),
            },
            Some(_) if self.cdmax == 0 => SsidResolution::Terminate,
            Some(s) if u64::from(s) >> self.cdmax != 0 => SsidResolution::Terminate,
            Some(0) if self.dss == S1Dss::Ssid0 => SsidResolution::Terminate,
            Some(s) => SsidResolution::Cd(s),
        }
    }

    /// The `iommu_hwpt_arm_smmuv3.ste` words (native integers; store them little-endian) for
    /// stage-1 translation with this CD table.
    pub fn to_iommufd(&self, policy: &SteHostPolicy) -> [u64; 2] {
        let (fmt, dss) = if self.cdmax == 0 {
            (0, 0)
        } else {
            (u64::from(self.fmt.bits()), u64::from(self.dss.bits()))
        };
        let w0 = V
            | (u64::from(CONFIG_S1_TRANS) << CONFIG_SHIFT)
            | (fmt << S1FMT_SHIFT)
            | (self.context_ptr & S1CTXPTR_MASK)
            | (u64::from(self.cdmax) << S1CDMAX_SHIFT);
        [w0, dss | host_word1(policy)]
    }
}

fn host_word1(policy: &SteHostPolicy) -> u64 {
    (u64::from(policy.cir & 3) << S1CIR_SHIFT)
        | (u64::from(policy.cor & 3) << S1COR_SHIFT)
        | (u64::from(policy.csh & 3) << S1CSH_SHIFT)
        | (if policy.stall_disable { S1STALLD } else { 0 })
        | (if policy.ats { 1 << EATS_SHIFT } else { 0 })
}

/// A guest STE (first two words) decoded under the isolation policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestSte {
    /// V = 0 or Config = abort.
    Abort,
    /// Config = bypass.
    Bypass,
    /// Config = stage-1 translation.
    S1(SteS1),
}

impl GuestSte {
    /// Decodes a raw guest STE (words 0 and 1) for an endpoint with a `pasid_bits` PASID
    /// space. See the module documentation for what is rejected.
    pub fn decode(
        words: [u64; 2],
        pasid_bits: u8,
        mem: &impl GuestMemoryRead,
    ) -> Result<GuestSte, SteError> {
        let [w0, w1] = words;
        if w0 & V == 0 {
            return Ok(GuestSte::Abort);
        }
        let config = ((w0 >> CONFIG_SHIFT) & 0b111) as u8;
        match config {
            CONFIG_ABORT | CONFIG_BYPASS | CONFIG_S1_TRANS => {}
            0b110 | 0b111 => return Err(SteError::Stage2Config(config)),
            _ => return Err(SteError::ReservedConfig(config)),
        }
        if w0 & !WORD0_GUEST != 0 {
            return Err(SteError::ForeignBits {
                word: 0,
                bits: w0 & !WORD0_GUEST,
            });
        }
        if w1 & !WORD1_GUEST != 0 {
            return Err(SteError::ForeignBits {
                word: 1,
                bits: w1 & !WORD1_GUEST,
            });
        }
        match config {
            CONFIG_ABORT => Ok(GuestSte::Abort),
            CONFIG_BYPASS => Ok(GuestSte::Bypass),
            _ => SteS1::from_fields(
                ((w0 >> S1FMT_SHIFT) & 3) as u8,
                (w1 & 3) as u8,
                w0 & S1CTXPTR_MASK,
                ((w0 >> S1CDMAX_SHIFT) & 0x1f) as u32,
                pasid_bits,
                mem,
            )
            .map(GuestSte::S1),
        }
    }

    /// The iommufd nested-STE words. Abort and bypass are V=1 with Config abort / bypass (the
    /// kernel turns V=0 into abort too, but an explicit abort keeps the intent visible).
    pub fn to_iommufd(&self, policy: &SteHostPolicy) -> [u64; 2] {
        match self {
            GuestSte::Abort => [V | (u64::from(CONFIG_ABORT) << CONFIG_SHIFT), 0],
            GuestSte::Bypass => [V | (u64::from(CONFIG_BYPASS) << CONFIG_SHIFT), 0],
            GuestSte::S1(s) => s.to_iommufd(policy),
        }
    }
}

/// Little-endian bytes of the `struct iommu_hwpt_arm_smmuv3` payload.
pub fn iommufd_ste_bytes(ste: [u64; 2]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&ste[0].to_le_bytes());
    out[8..].copy_from_slice(&ste[1].to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagetables::TestMemory;

    fn ram() -> TestMemory {
        TestMemory::single(0x8000_0000..0xc000_0000)
    }

    #[test]
    fn field_encodings() {
        for v in 0..3 {
            assert_eq!(S1Fmt::from_bits(v).unwrap().bits(), v);
            assert_eq!(S1Dss::from_bits(v).unwrap().bits(), v);
        }
        assert_eq!(S1Fmt::from_bits(3), None);
        assert_eq!(S1Dss::from_bits(3), None);
        assert_eq!(S1Fmt::TwoLevel4K.split(), Some(6));
        assert_eq!(S1Fmt::TwoLevel64K.split(), Some(10));
    }

    #[test]
    fn from_fields_validates() {
        let m = ram();
        let ok = SteS1::from_fields(0, 2, 0x8000_0000, 8, 20, &m).unwrap();
        assert_eq!(ok.table_bytes(), 64 << 8);
        assert_eq!(
            SteS1::from_fields(3, 0, 0x8000_0000, 8, 20, &m),
            Err(SteError::ReservedS1Fmt(3))
        );
        assert_eq!(
            SteS1::from_fields(0, 3, 0x8000_0000, 8, 20, &m),
            Err(SteError::ReservedS1Dss(3))
        );
        assert_eq!(
            SteS1::from_fields(1, 0, 0x8000_0000, 17, 16, &m),
            Err(SteError::CdMaxTooLarge {
                cdmax: 17,
                pasid_bits: 16
            })
        );
        assert!(matches!(
            SteS1::from_fields(1, 0, 0x8000_0000, 21, 24, &m),
            Err(SteError::CdMaxTooLarge { cdmax: 21, .. })
        ));
        assert_eq!(
            SteS1::from_fields(0, 0, 0x8000_0020, 8, 20, &m),
            Err(SteError::BadContextPtr(0x8000_0020))
        );
        assert_eq!(
            SteS1::from_fields(0, 0, 1 << 52, 8, 20, &m),
            Err(SteError::BadContextPtr(1 << 52))
        );
        // A linear table of 2^20 CDs (64 MiB) that runs past the end of RAM.
        assert!(matches!(
            SteS1::from_fields(0, 0, 0xbf00_0000, 20, 20, &m),
            Err(SteError::TableOutsideRam(_))
        ));
        // The same as a 2-level table only needs an 8 KiB L1 (4KL2) or 8 KiB (64KL2: 1024).
        let s = SteS1::from_fields(1, 0, 0xbf00_0000, 20, 20, &m).unwrap();
        assert_eq!(s.table_bytes(), 8 << 14);
        let s = SteS1::from_fields(2, 0, 0xbf00_0000, 20, 20, &m).unwrap();
        assert_eq!(s.table_bytes(), 8 << 10);
        // cdmax smaller than the split: one L1 entry.
        let s = SteS1::from_fields(2, 0, 0x8000_0000, 4, 20, &m).unwrap();
        assert_eq!(s.table_bytes(), 8);
        // No substreams: S1Fmt is ignored.
        let s = SteS1::from_fields(2, 1, 0x8000_0000, 0, 20, &m).unwrap();
        assert_eq!((s.fmt, s.table_bytes()), (S1Fmt::Linear, 64));
    }

    #[test]
    fn resolve_applies_dss_and_cdmax() {
        let m = ram();
        let mk = |dss, cdmax| SteS1::from_fields(0, dss, 0x8000_0000, cdmax, 20, &m).unwrap();
        let t = mk(0, 4);
        assert_eq!(t.resolve(None), SsidResolution::Terminate);
        assert_eq!(t.resolve(Some(0)), SsidResolution::Cd(0));
        assert_eq!(t.resolve(Some(15)), SsidResolution::Cd(15));
        assert_eq!(t.resolve(Some(16)), SsidResolution::Terminate);
        assert_eq!(mk(1, 4).resolve(None), SsidResolution::Bypass);
        let s0 = mk(2, 4);
        assert_eq!(s0.resolve(None), SsidResolution::Cd(0));
        assert_eq!(s0.resolve(Some(0)), SsidResolution::Terminate);
        assert_eq!(s0.resolve(Some(3)), SsidResolution::Cd(3));
        let none = mk(0, 0);
        assert_eq!(none.resolve(None), SsidResolution::Cd(0));
        assert_eq!(none.resolve(Some(0)), SsidResolution::Terminate);
    }

    #[test]
    fn iommufd_words_bit_positions() {
        let m = ram();
        let s = SteS1::from_fields(1, 2, 0x8123_4540, 17, 20, &m).unwrap();
        let [w0, w1] = s.to_iommufd(&SteHostPolicy::default());
        assert_eq!(w0 & 1, 1, "V");
        assert_eq!((w0 >> 1) & 7, 0b101, "Config S1_TRANS");
        assert_eq!((w0 >> 4) & 3, 1, "S1Fmt");
        assert_eq!(w0 & 0x000f_ffff_ffff_ffc0, 0x8123_4540, "S1ContextPtr");
        assert_eq!(w0 >> 59, 17, "S1CDMax");
        assert_eq!(w0 & 0x07f0_0000_0000_0000, 0, "reserved [58:52]");
        assert_eq!(w1 & 3, 2, "S1DSS");
        assert_eq!((w1 >> 2) & 3, 1, "S1CIR");
        assert_eq!((w1 >> 4) & 3, 1, "S1COR");
        assert_eq!((w1 >> 6) & 3, 3, "S1CSH");
        assert_eq!((w1 >> 27) & 1, 1, "S1STALLD");
        assert_eq!((w1 >> 28) & 3, 0, "EATS");
        assert_eq!(w1 & !0x3000_00ff & !(1 << 27), 0, "nothing else");
        let ats = SteHostPolicy {
            ats: true,
            stall_disable: false,
            ..SteHostPolicy::default()
        };
        let [_, w1] = s.to_iommufd(&ats);
        assert_eq!((w1 >> 28) & 3, 1);
        assert_eq!((w1 >> 27) & 1, 0);
        let bytes = iommufd_ste_bytes([w0, w1]);
        assert_eq!(bytes[0], 0x5b); // V | Config 0b101 << 1 | S1Fmt 1 << 4 | ptr bit 6
        assert_eq!(bytes[7] >> 3, 17);
        // No substreams: S1Fmt and S1DSS emitted as 0.
        let s = SteS1::from_fields(2, 2, 0x8000_0000, 0, 20, &m).unwrap();
        let [w0, w1] = s.to_iommufd(&SteHostPolicy::default());
        assert_eq!(((w0 >> 4) & 3, w1 & 3), (0, 0));
    }

    #[test]
    fn guest_ste_decode_policy() {
        let m = ram();
        let s1 = V | (0b101 << 1) | (2 << 4) | 0x8000_0000 | (12u64 << 59);
        // Guest cache attributes, stall and EATS are accepted but overridden.
        let w1 = 1 | (2 << 2) | (2 << 4) | (2 << 6) | (2 << 28);
        let g = GuestSte::decode([s1, w1], 20, &m).unwrap();
        let GuestSte::S1(s) = g else { panic!("{g:?}") };
        assert_eq!(
            (s.fmt, s.dss, s.context_ptr, s.cdmax),
            (S1Fmt::TwoLevel64K, S1Dss::Bypass, 0x8000_0000, 12)
        );
        let out = g.to_iommufd(&SteHostPolicy::default());
        assert_eq!(out[0], s1);
        assert_eq!(out[1], 1 | (1 << 2) | (1 << 4) | (3 << 6) | (1 << 27));
        assert_eq!(GuestSte::decode([0, u64::MAX], 20, &m), Ok(GuestSte::Abort));
        assert_eq!(GuestSte::decode([V, 0], 20, &m), Ok(GuestSte::Abort));
        assert_eq!(
            GuestSte::decode([V | (4 << 1), 0], 20, &m),
            Ok(GuestSte::Bypass)
        );
        assert_eq!(
            GuestSte::Bypass.to_iommufd(&SteHostPolicy::default()),
            [V | (4 << 1), 0]
        );
        assert_eq!(
            GuestSte::Abort.to_iommufd(&SteHostPolicy::default()),
            [V, 0]
        );
        for cfg in [6u64, 7] {
            assert_eq!(
                GuestSte::decode([V | (cfg << 1), 0], 20, &m),
                Err(SteError::Stage2Config(cfg as u8))
            );
        }
        for cfg in [1u64, 2, 3] {
            assert_eq!(
                GuestSte::decode([V | (cfg << 1), 0], 20, &m),
                Err(SteError::ReservedConfig(cfg as u8))
            );
        }
        // STRW [31:30], SHCFG [45:44], S2FWB [25], reserved [58:52] in word 0.
        for (word, bit) in [(1u8, 30u32), (1, 44), (1, 25), (0, 52), (0, 58)] {
            let mut w = [s1, 0];
            w[usize::from(word)] |= 1 << bit;
            assert_eq!(
                GuestSte::decode(w, 20, &m),
                Err(SteError::ForeignBits {
                    word,
                    bits: 1 << bit
                })
            );
        }
        // S1CDMax beyond the endpoint.
        assert!(matches!(
            GuestSte::decode([s1, 0], 8, &m),
            Err(SteError::CdMaxTooLarge {
                cdmax: 12,
                pasid_bits: 8
            })
        ));
    }
}
