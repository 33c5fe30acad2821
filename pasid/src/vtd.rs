//! VT-d per-PASID first-stage bindings, validated into iommufd's `struct iommu_hwpt_vtd_s1`
//! (`{u64 flags, u64 pgtbl_addr, u32 addr_width, u32 __reserved}`, data type
//! `IOMMU_HWPT_DATA_VTD_S1` = 1).
//!
//! The guest provides, per endpoint and PASID, `pgd` (root of its first-stage tables),
//! `flags` (iommufd's encoding: SRE = 1, EAFE = 2, WPE = 4) and `addr_width` (48 or 57).
//! Policy:
//! * **Rejected**: a PASID outside the endpoint's space; unknown flag bits; `addr_width` other
//!   than 48/57, or 57 without CAP_REG.FS5LP; SRE when the host lacks ECAP_REG.SRS or does not
//!   grant supervisor requests to this guest; EAFE without ECAP_REG.EAFS; a `pgd` that is not
//!   4K aligned, exceeds the host address width, or does not point at a 4K page of guest RAM.
//! * **Forced**: WPE without SRE is cleared (it only qualifies supervisor requests; Linux
//!   programs it only together with SRE); `__reserved` is always 0.

use pagetables::vtd::{FirstStage, FirstStageParams, VtdFlags};
use pagetables::{GuestMemoryRead, MemoryError};

use crate::space::MAX_PASID_BITS;

/// `IOMMU_HWPT_DATA_VTD_S1`.
pub const IOMMU_HWPT_DATA_VTD_S1: u32 = 1;

/// `struct iommu_hwpt_vtd_s1`, host byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct IommuHwptVtdS1 {
    /// `IOMMU_VTD_S1_*` flags.
    pub flags: u64,
    /// First-stage table root.
    pub pgtbl_addr: u64,
    /// 48 or 57.
    pub addr_width: u32,
    /// Must be 0.
    pub reserved: u32,
}

impl IommuHwptVtdS1 {
    /// Size of the uapi struct.
    pub const SIZE: usize = 24;

    /// The bytes passed as `data_uptr` / `data_len` to IOMMU_HWPT_ALLOC (host byte order).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..16].copy_from_slice(&self.pgtbl_addr.to_ne_bytes());
        b[16..20].copy_from_slice(&self.addr_width.to_ne_bytes());
        b[20..24].copy_from_slice(&self.reserved.to_ne_bytes());
        b
    }
}

/// Host VT-d capabilities and policy relevant to first-stage bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VtdHostCaps {
    /// CAP_REG.FS5LP (bit 60): 5-level first-stage tables.
    pub five_level: bool,
    /// CAP_REG.FS1GP (bit 56): 1G first-stage pages.
    pub pages_1g: bool,
    /// ECAP_REG.SRS (bit 31): supervisor requests.
    pub srs: bool,
    /// ECAP_REG.EAFS (bit 34): extended access flag.
    pub eafs: bool,
    /// Host address width (52 at most).
    pub haw: u8,
    /// PASID width: ECAP_REG.PSS (bits 39:35) + 1, clamped to 20.
    pub pasid_bits: u8,
    /// Policy: this guest may issue supervisor (privileged) requests.
    pub grant_supervisor: bool,
}

impl VtdHostCaps {
    /// From the `iommu_hw_info_vtd` registers (IOMMU_GET_HW_INFO), with HAW from CAP.MGAW
    /// (bits 21:16, plus one) and supervisor requests not granted.
    pub fn from_regs(cap: u64, ecap: u64) -> Self {
        let mgaw = (((cap >> 16) & 0x3f) + 1) as u8;
        let pss = (((ecap >> 35) & 0x1f) + 1) as u8;
        VtdHostCaps {
            five_level: (cap >> 60) & 1 != 0,
            pages_1g: (cap >> 56) & 1 != 0,
            srs: (ecap >> 31) & 1 != 0,
            eafs: (ecap >> 34) & 1 != 0,
            haw: mgaw.min(52),
            pasid_bits: pss.min(MAX_PASID_BITS),
            grant_supervisor: false,
        }
    }
}

/// Rejected VT-d bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VtdBindError {
    /// PASID outside the endpoint's space.
    #[error("PASID {pasid:#x} outside the {bits}-bit PASID space")]
    PasidOutOfRange {
        /// The PASID.
        pasid: u32,
        /// Width of the endpoint's space.
        bits: u8,
    },
    /// Unknown flag bits.
    #[error("unknown first-stage flags {0:#x}")]
    UnknownFlags(u64),
    /// Address width not 48/57.
    #[error("unsupported first-stage address width {0}")]
    AddrWidth(u32),
    /// 57-bit without host support.
    #[error("5-level first-stage paging not supported by the host")]
    FiveLevelUnsupported,
    /// SRE without host support or grant.
    #[error("supervisor requests (SRE) not permitted")]
    SupervisorNotPermitted,
    /// EAFE without host support.
    #[error("extended access flag (EAFE) not supported by the host")]
    EafeUnsupported,
    /// `pgd` not 4K aligned.
    #[error("first-stage table {0:#x} not 4K aligned")]
    PgdMisaligned(u64),
    /// `pgd` beyond HAW.
    #[error("first-stage table {pgd:#x} beyond the {haw}-bit host address width")]
    PgdOutOfRange {
        /// The pointer.
        pgd: u64,
        /// HAW.
        haw: u8,
    },
    /// `pgd` not in guest RAM.
    #[error("first-stage table outside guest RAM: {0}")]
    PgdOutsideRam(MemoryError),
}

/// A validated first-stage binding for one PASID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VtdS1Binding {
    /// The PASID.
    pub pasid: u32,
    /// Root table.
    pub pgd: u64,
    /// 48 or 57.
    pub addr_width: u8,
    /// Effective flags (WPE cleared without SRE).
    pub flags: VtdFlags,
}

impl VtdS1Binding {
    /// Validates a guest binding (`le32 pasid, le64 pgd, le64 flags, le32 addr_width`) for an
    /// endpoint with a `pasid_bits`-wide PASID space.
    pub fn decode(
        pasid: u32,
        pgd: u64,
        flags: u64,
        addr_width: u32,
        pasid_bits: u8,
        caps: &VtdHostCaps,
        mem: &impl GuestMemoryRead,
    ) -> Result<Self, VtdBindError> {
        let bits = pasid_bits.min(caps.pasid_bits).min(MAX_PASID_BITS);
        if u64::from(pasid) >> bits != 0 {
            return Err(VtdBindError::PasidOutOfRange { pasid, bits });
        }
        let mut f = VtdFlags::from_bits(flags).ok_or(VtdBindError::UnknownFlags(flags))?;
        let addr_width = match addr_width {
            48 => 48u8,
            57 if caps.five_level => 57,
            57 => return Err(VtdBindError::FiveLevelUnsupported),
            w => return Err(VtdBindError::AddrWidth(w)),
        };
        if f.sre && !(caps.srs && caps.grant_supervisor) {
            return Err(VtdBindError::SupervisorNotPermitted);
        }
        if f.eafe && !caps.eafs {
            return Err(VtdBindError::EafeUnsupported);
        }
        if !f.sre {
            f.wpe = false;
        }
        if pgd & 0xfff != 0 {
            return Err(VtdBindError::PgdMisaligned(pgd));
        }
        if pgd >> caps.haw.min(52) != 0 {
            return Err(VtdBindError::PgdOutOfRange { pgd, haw: caps.haw });
        }
        mem.check_range(pgd, 4096)
            .map_err(VtdBindError::PgdOutsideRam)?;
        Ok(VtdS1Binding {
            pasid,
            pgd,
            addr_width,
            flags: f,
        })
    }

    /// The iommufd nested-HWPT data.
    pub fn to_hwpt(&self) -> IommuHwptVtdS1 {
        IommuHwptVtdS1 {
            flags: self.flags.bits(),
            pgtbl_addr: self.pgd,
            addr_width: u32::from(self.addr_width),
            reserved: 0,
        }
    }

    /// A walker for the software backend.
    pub fn first_stage(
        &self,
        caps: &VtdHostCaps,
    ) -> Result<FirstStage, pagetables::vtd::ConfigError> {
        FirstStage::new(FirstStageParams {
            pgtbl: self.pgd,
            addr_width: self.addr_width,
            flags: self.flags,
            haw: caps.haw.clamp(32, 52),
            pages_1g: caps.pages_1g,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagetables::TestMemory;

    fn caps() -> VtdHostCaps {
        VtdHostCaps {
            five_level: true,
            pages_1g: true,
            srs: true,
            eafs: true,
            haw: 46,
            pasid_bits: 20,
            grant_supervisor: true,
        }
    }

    fn ram() -> TestMemory {
        TestMemory::single(0x1000_0000..0x2000_0000)
    }

    #[test]
    fn uapi_layout() {
        assert_eq!(std::mem::size_of::<IommuHwptVtdS1>(), IommuHwptVtdS1::SIZE);
        assert_eq!(std::mem::align_of::<IommuHwptVtdS1>(), 8);
        let h = IommuHwptVtdS1 {
            flags: 0x0102_0304_0506_0708,
            pgtbl_addr: 0x1112_1314_1516_1718,
            addr_width: 0x2122_2324,
            reserved: 0,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &h.flags.to_ne_bytes());
        assert_eq!(&b[8..16], &h.pgtbl_addr.to_ne_bytes());
        assert_eq!(&b[16..20], &h.addr_width.to_ne_bytes());
        assert_eq!(&b[20..24], &[0; 4]);
    }

    #[test]
    fn caps_from_registers() {
        // MGAW = 47 (46 + 1 encoded as 46), FS5LP, FS1GP; SRS, EAFS, PSS = 19 (20 bits).
        let cap = (46u64 << 16) | (1 << 60) | (1 << 56);
        let ecap = (1u64 << 31) | (1 << 34) | (19 << 35);
        let c = VtdHostCaps::from_regs(cap, ecap);
        assert_eq!(
            c,
            VtdHostCaps {
                five_level: true,
                pages_1g: true,
                srs: true,
                eafs: true,
                haw: 47,
                pasid_bits: 20,
                grant_supervisor: false,
            }
        );
        let c = VtdHostCaps::from_regs(38 << 16, 7 << 35);
        assert!(!c.five_level && !c.pages_1g && !c.srs && !c.eafs);
        assert_eq!((c.haw, c.pasid_bits), (39, 8));
    }

    #[test]
    fn valid_binding_to_hwpt() {
        let m = ram();
        let b = VtdS1Binding::decode(42, 0x1000_0000, 0b111, 57, 20, &caps(), &m).unwrap();
        assert_eq!(
            b.to_hwpt(),
            IommuHwptVtdS1 {
                flags: 0b111,
                pgtbl_addr: 0x1000_0000,
                addr_width: 57,
                reserved: 0
            }
        );
        let w = b.first_stage(&caps()).unwrap();
        assert_eq!(w.levels(), 5);
        assert_eq!(w.params().haw, 46);
        assert!(w.params().flags.sre && w.params().flags.wpe && w.params().flags.eafe);
    }

    #[test]
    fn wpe_without_sre_is_forced_off() {
        let m = ram();
        let b = VtdS1Binding::decode(1, 0x1000_0000, 4, 48, 20, &caps(), &m).unwrap();
        assert_eq!(b.flags, VtdFlags::default());
        assert_eq!(b.to_hwpt().flags, 0);
    }

    #[test]
    fn rejections() {
        let m = ram();
        let c = caps();
        let d = |pasid, pgd, flags, aw, bits, c: &VtdHostCaps| {
            VtdS1Binding::decode(pasid, pgd, flags, aw, bits, c, &m)
        };
        assert_eq!(
            d(1 << 16, 0x1000_0000, 0, 48, 16, &c),
            Err(VtdBindError::PasidOutOfRange {
                pasid: 1 << 16,
                bits: 16
            })
        );
        let narrow = VtdHostCaps { pasid_bits: 8, ..c };
        assert!(matches!(
            d(256, 0x1000_0000, 0, 48, 20, &narrow),
            Err(VtdBindError::PasidOutOfRange { bits: 8, .. })
        ));
        assert_eq!(
            d(1, 0x1000_0000, 8, 48, 20, &c),
            Err(VtdBindError::UnknownFlags(8))
        );
        assert_eq!(
            d(1, 0x1000_0000, 0, 39, 20, &c),
            Err(VtdBindError::AddrWidth(39))
        );
        let four = VtdHostCaps {
            five_level: false,
            ..c
        };
        assert_eq!(
            d(1, 0x1000_0000, 0, 57, 20, &four),
            Err(VtdBindError::FiveLevelUnsupported)
        );
        let no_grant = VtdHostCaps {
            grant_supervisor: false,
            ..c
        };
        assert_eq!(
            d(1, 0x1000_0000, 1, 48, 20, &no_grant),
            Err(VtdBindError::SupervisorNotPermitted)
        );
        let no_srs = VtdHostCaps { srs: false, ..c };
        assert_eq!(
            d(1, 0x1000_0000, 1, 48, 20, &no_srs),
            Err(VtdBindError::SupervisorNotPermitted)
        );
        let no_eafs = VtdHostCaps { eafs: false, ..c };
        assert_eq!(
            d(1, 0x1000_0000, 2, 48, 20, &no_eafs),
            Err(VtdBindError::EafeUnsupported)
        );
        assert_eq!(
            d(1, 0x1000_0800, 0, 48, 20, &c),
            Err(VtdBindError::PgdMisaligned(0x1000_0800))
        );
        assert_eq!(
            d(1, 1 << 46, 0, 48, 20, &c),
            Err(VtdBindError::PgdOutOfRange {
                pgd: 1 << 46,
                haw: 46
            })
        );
        assert!(matches!(
            d(1, 0x2000_0000, 0, 48, 20, &c),
            Err(VtdBindError::PgdOutsideRam(_))
        ));
    }

    #[test]
    fn binding_walks_guest_tables() {
        use pagetables::build::vtd::VtdBuilder;
        use pagetables::build::{Prot, TableAllocator};
        let mut m = ram();
        let mut b = VtdBuilder::new(false, TableAllocator::new(0x1000_0000, 0x1100_0000)).unwrap();
        let prot = Prot {
            write: true,
            user: true,
            exec: false,
        };
        b.map(&mut m, 0x7000_0000, 0x3000_0000, 0x20_0000, prot)
            .unwrap();
        let bind = VtdS1Binding::decode(5, b.pgtbl(), 0, 48, 20, &caps(), &m).unwrap();
        let w = bind.first_stage(&caps()).unwrap();
        let t = w.walk(&m, 0x7012_3456).unwrap();
        assert_eq!(t.output, 0x3012_3456);
        assert_eq!(t.perms, prot.expected(false, false));
    }
}
