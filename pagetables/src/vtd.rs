//! x86-64 / Intel VT-d first-stage translation (the format of `IOMMU_HWPT_DATA_VTD_S1`).
//!
//! Supported:
//! * 4-level (48-bit, `addr_width` 48) and 5-level (57-bit, `addr_width` 57) paging, with the
//!   canonical-address check VT-d applies before a first-stage walk.
//! * 4K pages (PTE), 2M pages (PDE.PS) and 1G pages (PDPE.PS, only when
//!   [`FirstStageParams::pages_1g`] is set, i.e. CAP_REG.FS1GP).
//! * P, R/W, U/S, XD at every level (permissions are the intersection along the walk), A, D,
//!   G, PWT/PCD/PAT reported; EA (bit 10) reported when EAFE is set.
//! * Reserved bits: 51:HAW in every entry (HAW = [`FirstStageParams::haw`], the host address
//!   width), PS in PML5E/PML4E, 29:13 in 1G leaves, 20:13 in 2M leaves, PS in PDPEs without
//!   1G support. Bits 62:52, 11 and 9 are ignored as the architecture says.
//! * The iommufd `VTD_S1` flags applied to permissions:
//!   - SRE (supervisor request enable): without it, requests with the privileged attribute
//!     get no access at all.
//!   - WPE (write protect enable, only meaningful with SRE, as Linux programs it): supervisor
//!     writes need R/W=1 at every level; without WPE supervisor writes ignore R/W (like
//!     CR0.WP=0).
//!   - EAFE (extended access flag enable): hardware would also set bit 10 (EA); the walker
//!     reports it. It does not change permissions.
//! * User requests: read needs U/S=1 at every level, write also R/W=1 at every level, execute
//!   U/S=1 and XD=0 everywhere. Supervisor requests: read always, write as above, execute
//!   needs XD=0 everywhere and is refused on user pages (supervisor-mode execute protection).
//!
//! The walker never writes: A/D/EA updates are left to the caller (see
//! [`Translation::leaf_address`]).

use crate::TranslationFaultKind as Tfk;
use crate::{bits, Access, AccessRequest, Fault, GuestMemoryRead, Permissions, Translation};

/// `IOMMU_VTD_S1_SRE` in `enum iommu_hwpt_vtd_s1_flags`.
pub const IOMMU_VTD_S1_SRE: u64 = 1 << 0;
/// `IOMMU_VTD_S1_EAFE`.
pub const IOMMU_VTD_S1_EAFE: u64 = 1 << 1;
/// `IOMMU_VTD_S1_WPE`.
pub const IOMMU_VTD_S1_WPE: u64 = 1 << 2;

/// The `iommu_hwpt_vtd_s1.flags` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct VtdFlags {
    /// Supervisor requests enabled.
    pub sre: bool,
    /// Extended access flag enabled.
    pub eafe: bool,
    /// Write protect enabled (for supervisor requests).
    pub wpe: bool,
}

impl VtdFlags {
    /// Decodes the uapi flags; `None` if unknown bits are set.
    pub fn from_bits(v: u64) -> Option<VtdFlags> {
        if v & !(IOMMU_VTD_S1_SRE | IOMMU_VTD_S1_EAFE | IOMMU_VTD_S1_WPE) != 0 {
            return None;
        }
        Some(VtdFlags {
            sre: v & IOMMU_VTD_S1_SRE != 0,
            eafe: v & IOMMU_VTD_S1_EAFE != 0,
            wpe: v & IOMMU_VTD_S1_WPE != 0,
        })
    }

    /// The uapi encoding.
    pub fn bits(self) -> u64 {
        (if self.sre { IOMMU_VTD_S1_SRE } else { 0 })
            | (if self.eafe { IOMMU_VTD_S1_EAFE } else { 0 })
            | (if self.wpe { IOMMU_VTD_S1_WPE } else { 0 })
    }
}

/// First-stage configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FirstStageParams {
    /// Root table (PML4 or PML5) guest physical address, 4K aligned.
    pub pgtbl: u64,
    /// 48 (4-level) or 57 (5-level).
    pub addr_width: u8,
    /// SRE / EAFE / WPE.
    pub flags: VtdFlags,
    /// Host address width: output addresses and table pointers have bits 51:HAW reserved.
    /// 32..=52.
    pub haw: u8,
    /// 1G pages supported (CAP_REG.FS1GP).
    pub pages_1g: bool,
}

impl FirstStageParams {
    /// No flags, 52-bit HAW, 1G pages supported.
    pub fn new(pgtbl: u64, addr_width: u8) -> Self {
        FirstStageParams {
            pgtbl,
            addr_width,
            flags: VtdFlags::default(),
            haw: 52,
            pages_1g: true,
        }
    }
}

/// Invalid first-stage configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Address width other than 48 or 57.
    #[error("unsupported first-stage address width {0} (48 or 57)")]
    AddrWidth(u8),
    /// HAW outside 32..=52.
    #[error("unsupported host address width {0}")]
    Haw(u8),
    /// Table pointer not 4K aligned.
    #[error("first-stage table pointer {0:#x} is not 4K aligned")]
    PgtblMisaligned(u64),
    /// Table pointer above HAW.
    #[error("first-stage table pointer {pgtbl:#x} exceeds the {haw}-bit host address width")]
    PgtblOutOfRange {
        /// The pointer.
        pgtbl: u64,
        /// HAW.
        haw: u8,
    },
}

/// Attributes of a first-stage leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VtdAttrs {
    /// A (accessed) in the leaf.
    pub accessed: bool,
    /// D (dirty) in the leaf.
    pub dirty: bool,
    /// EA (bit 10) of the leaf when EAFE is set; `None` without EAFE (bit ignored).
    pub extended_accessed: Option<bool>,
    /// G (global).
    pub global: bool,
    /// PWT.
    pub pwt: bool,
    /// PCD.
    pub pcd: bool,
    /// PAT (bit 7 in a PTE, bit 12 in large leaves).
    pub pat: bool,
}

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const G: u64 = 1 << 8;
const EA: u64 = 1 << 10;
const PAT_LARGE: u64 = 1 << 12;
const XD: u64 = 1 << 63;

/// A validated first-stage configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstStage {
    p: FirstStageParams,
    levels: u8,
}

impl FirstStage {
    /// Validates `p`.
    pub fn new(p: FirstStageParams) -> Result<FirstStage, ConfigError> {
        let levels = match p.addr_width {
            48 => 4,
            57 => 5,
            w => return Err(ConfigError::AddrWidth(w)),
        };
        if !(32..=52).contains(&p.haw) {
            return Err(ConfigError::Haw(p.haw));
        }
        if p.pgtbl & 0xfff != 0 {
            return Err(ConfigError::PgtblMisaligned(p.pgtbl));
        }
        if p.pgtbl >> p.haw != 0 {
            return Err(ConfigError::PgtblOutOfRange {
                pgtbl: p.pgtbl,
                haw: p.haw,
            });
        }
        Ok(FirstStage { p, levels })
    }

    /// The configuration.
    pub fn params(&self) -> &FirstStageParams {
        &self.p
    }

    /// 4 or 5.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    fn addr_mask(&self) -> u64 {
        bits(u32::from(self.p.haw) - 1, 12)
    }

    fn reserved_high(&self) -> u64 {
        if self.p.haw < 52 {
            bits(51, u32::from(self.p.haw))
        } else {
            0
        }
    }

    /// Walks the tables for `iova`. Reads at most one entry per level.
    pub fn walk(
        &self,
        mem: &impl GuestMemoryRead,
        iova: u64,
    ) -> Result<Translation<VtdAttrs>, Fault> {
        let n = u32::from(self.p.addr_width);
        let top = iova >> (n - 1);
        if top != 0 && top != (u64::MAX >> (n - 1)) {
            return Err(Fault::Translation {
                level: self.levels,
                kind: Tfk::NonCanonical,
            });
        }
        let (mut all_us, mut all_rw, mut any_xd) = (true, true, false);
        let mut table = self.p.pgtbl;
        for level in (1..=self.levels).rev() {
            let shift = 12 + 9 * u32::from(level - 1);
            let entry_addr = table.wrapping_add(((iova >> shift) & 511) * 8);
            let e = mem
                .read_u64(entry_addr)
                .map_err(|source| Fault::Memory { level, source })?;
            if e & P == 0 {
                return Err(Fault::Translation {
                    level,
                    kind: Tfk::NotPresent,
                });
            }
            let leaf = level == 1 || (e & PS != 0 && (level == 2 || level == 3));
            let mut rsvd = self.reserved_high();
            match level {
                4 | 5 => rsvd |= PS,
                3 if e & PS != 0 => {
                    rsvd |= if self.p.pages_1g { bits(29, 13) } else { PS };
                }
                2 if e & PS != 0 => rsvd |= bits(20, 13),
                _ => {}
            }
            if e & rsvd != 0 {
                return Err(Fault::ReservedBits {
                    level,
                    descriptor: e,
                    bits: e & rsvd,
                });
            }
            all_us &= e & US != 0;
            all_rw &= e & RW != 0;
            any_xd |= e & XD != 0;
            if !leaf {
                table = e & self.addr_mask();
                continue;
            }
            let size = 1u64 << shift;
            let out = e & self.addr_mask() & !(size - 1);
            let perms = self.permissions(all_us, all_rw, any_xd);
            let attrs = VtdAttrs {
                accessed: e & A != 0,
                dirty: e & D != 0,
                extended_accessed: self.p.flags.eafe.then_some(e & EA != 0),
                global: e & G != 0,
                pwt: e & PWT != 0,
                pcd: e & PCD != 0,
                pat: if level == 1 {
                    e & PS != 0
                } else {
                    e & PAT_LARGE != 0
                },
            };
            return Ok(Translation {
                iova,
                output: out | (iova & (size - 1)),
                page_size: size,
                level,
                perms,
                leaf_address: entry_addr,
                leaf: e,
                attrs,
            });
        }
        // Level 1 always returns above; report rather than panic.
        Err(Fault::Translation {
            level: 1,
            kind: Tfk::NotPresent,
        })
    }

    fn permissions(&self, all_us: bool, all_rw: bool, any_xd: bool) -> Permissions {
        let f = self.p.flags;
        let user = Access {
            read: all_us,
            write: all_us && all_rw,
            exec: all_us && !any_xd,
        };
        let privileged = if f.sre {
            Access {
                read: true,
                write: !f.wpe || all_rw,
                exec: !any_xd && !all_us,
            }
        } else {
            Access::NONE
        };
        Permissions { user, privileged }
    }

    /// Walks and checks `req` against the result.
    pub fn translate(
        &self,
        mem: &impl GuestMemoryRead,
        iova: u64,
        req: AccessRequest,
    ) -> Result<Translation<VtdAttrs>, Fault> {
        self.walk(mem, iova)?.check(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccessKind, MemoryError, TestMemory};

    const RAM: std::ops::Range<u64> = 0x1000_0000..0x2000_0000;
    // Tables for levels 5..1 at these addresses.
    const T: [u64; 6] = [
        0,
        0x1000_1000,
        0x1000_2000,
        0x1000_3000,
        0x1000_4000,
        0x1000_5000,
    ];
    const NL: u64 = P | RW | US; // permissive non-leaf

    fn idx(va: u64, level: u8) -> u64 {
        (va >> (12 + 9 * (u32::from(level) - 1))) & 511
    }

    /// Tables from the root level down to `leaf_level`; `nl` is OR-ed into non-leaf entries.
    fn setup(aw: u8, va: u64, leaf_level: u8, leaf: u64, nl: u64) -> (TestMemory, FirstStage) {
        let levels = if aw == 57 { 5 } else { 4 };
        let mut m = TestMemory::single(RAM);
        for level in ((leaf_level + 1)..=levels).rev() {
            let l = usize::from(level);
            m.write_u64(T[l] + idx(va, level) * 8, T[l - 1] | nl)
                .unwrap();
        }
        let l = usize::from(leaf_level);
        m.write_u64(T[l] + idx(va, leaf_level) * 8, leaf).unwrap();
        let s = FirstStage::new(FirstStageParams::new(T[usize::from(levels)], aw)).unwrap();
        (m, s)
    }

    fn with_flags(s: FirstStage, flags: VtdFlags) -> FirstStage {
        FirstStage::new(FirstStageParams { flags, ..s.p }).unwrap()
    }

    #[test]
    fn uapi_flag_bits() {
        assert_eq!(IOMMU_VTD_S1_SRE, 1);
        assert_eq!(IOMMU_VTD_S1_EAFE, 2);
        assert_eq!(IOMMU_VTD_S1_WPE, 4);
        for v in 0..8 {
            assert_eq!(VtdFlags::from_bits(v).unwrap().bits(), v);
        }
        assert_eq!(VtdFlags::from_bits(8), None);
    }

    #[test]
    fn config_validation() {
        assert_eq!(
            FirstStage::new(FirstStageParams::new(0x1000, 39)),
            Err(ConfigError::AddrWidth(39))
        );
        assert_eq!(
            FirstStage::new(FirstStageParams::new(0x1800, 48)),
            Err(ConfigError::PgtblMisaligned(0x1800))
        );
        let mut p = FirstStageParams::new(1 << 46, 48);
        p.haw = 46;
        assert_eq!(
            FirstStage::new(p),
            Err(ConfigError::PgtblOutOfRange {
                pgtbl: 1 << 46,
                haw: 46
            })
        );
        p.haw = 53;
        assert_eq!(FirstStage::new(p), Err(ConfigError::Haw(53)));
        assert_eq!(
            FirstStage::new(FirstStageParams::new(0x1000, 57))
                .unwrap()
                .levels(),
            5
        );
    }

    #[test]
    fn pages_4k_2m_1g_four_and_five_level() {
        for aw in [48u8, 57] {
            let va: u64 = if aw == 57 {
                0x00ab_cdef_1234_5678
            } else {
                0x0000_7def_1234_5678
            };
            let (m, s) = setup(aw, va, 1, 0x0000_00aa_bbbb_c000 | P | RW | US | A, NL);
            let t = s.walk(&m, va).unwrap();
            assert_eq!((t.level, t.page_size, t.output), (1, 4096, 0xaa_bbbb_c678));
            assert_eq!(m.reads(), u64::from(s.levels()));
            let (m, s) = setup(aw, va, 2, 0x0000_00aa_bbc0_0000 | P | PS, NL);
            let t = s.walk(&m, va).unwrap();
            assert_eq!((t.level, t.page_size), (2, 1 << 21));
            assert_eq!(t.output, 0xaa_bbc0_0000 | (va & 0x1f_ffff));
            let (m, s) = setup(aw, va, 3, 0x0000_00c0_0000_0000 | P | PS, NL);
            let t = s.walk(&m, va).unwrap();
            assert_eq!((t.level, t.page_size), (3, 1 << 30));
            assert_eq!(t.output, 0xc0_0000_0000 | (va & 0x3fff_ffff));
        }
    }

    #[test]
    fn canonical_check() {
        let (m, s) = setup(48, 0xffff_8000_0000_1000, 1, 0x5000 | P, NL);
        assert_eq!(s.walk(&m, 0xffff_8000_0000_1234).unwrap().output, 0x5234);
        assert_eq!(
            s.walk(&m, 0x0000_8000_0000_1000),
            Err(Fault::Translation {
                level: 4,
                kind: Tfk::NonCanonical
            })
        );
        assert_eq!(
            s.walk(&m, 0xfff0_8000_0000_1000),
            Err(Fault::Translation {
                level: 4,
                kind: Tfk::NonCanonical
            })
        );
        let (m, s) = setup(57, 0xff01_0000_0000_0000, 1, 0x5000 | P, NL);
        assert!(s.walk(&m, 0xff01_0000_0000_0000).is_ok());
        assert!(matches!(
            s.walk(&m, 0x0101_0000_0000_0000),
            Err(Fault::Translation {
                level: 5,
                kind: Tfk::NonCanonical
            })
        ));
    }

    #[test]
    fn not_present_at_each_level() {
        for level in 1..=5 {
            let (m, s) = setup(57, 0x1000, level, !P, NL);
            assert_eq!(
                s.walk(&m, 0x1000),
                Err(Fault::Translation {
                    level,
                    kind: Tfk::NotPresent
                })
            );
        }
    }

    #[test]
    fn reserved_bits() {
        let va = 0x20_0000;
        // PS in PML4E / PML5E.
        let (m, s) = setup(57, va, 5, T[4] | NL | PS, NL);
        assert!(matches!(
            s.walk(&m, va),
            Err(Fault::ReservedBits {
                level: 5,
                bits: PS,
                ..
            })
        ));
        let (m, s) = setup(48, va, 4, T[3] | NL | PS, NL);
        assert!(matches!(
            s.walk(&m, va),
            Err(Fault::ReservedBits {
                level: 4,
                bits: PS,
                ..
            })
        ));
        // 2M leaf bits 20:13, 1G leaf bits 29:13.
        let (m, s) = setup(48, va, 2, 0x20_0000 | P | PS | (1 << 13), NL);
        assert!(matches!(
            s.walk(&m, va),
            Err(Fault::ReservedBits {
                level: 2,
                bits: 0x2000,
                ..
            })
        ));
        let (m, s) = setup(48, va, 3, 0x4000_0000 | P | PS | (1 << 21), NL);
        assert!(matches!(
            s.walk(&m, va),
            Err(Fault::ReservedBits {
                level: 3,
                bits: 0x20_0000,
                ..
            })
        ));
        // PAT (bit 12) is not reserved in large leaves.
        let (m, s) = setup(48, va, 2, 0x20_0000 | P | PS | PAT_LARGE, NL);
        assert!(s.walk(&m, va).unwrap().attrs.pat);
        // 1G leaves without FS1GP.
        let (m, s) = setup(48, va, 3, 0x4000_0000 | P | PS, NL);
        let s = FirstStage::new(FirstStageParams {
            pages_1g: false,
            ..s.p
        })
        .unwrap();
        assert!(matches!(
            s.walk(&m, va),
            Err(Fault::ReservedBits {
                level: 3,
                bits: PS,
                ..
            })
        ));
        // Ignored bits 62:52, 11, 9 are accepted.
        let (m, s) = setup(
            48,
            va,
            1,
            0x5000 | P | bits(62, 52) | (1 << 11) | (1 << 9),
            NL,
        );
        assert!(s.walk(&m, va).is_ok());
    }

    #[test]
    fn reserved_bits_depend_on_haw() {
        let va = 0x1000;
        let (m, s) = setup(48, va, 1, (1u64 << 45) | P, NL);
        assert!(s.walk(&m, va).is_ok());
        let s46 = FirstStage::new(FirstStageParams { haw: 46, ..s.p }).unwrap();
        assert!(s46.walk(&m, va).is_ok());
        let s45 = FirstStage::new(FirstStageParams { haw: 45, ..s.p }).unwrap();
        assert_eq!(
            s45.walk(&m, va),
            Err(Fault::ReservedBits {
                level: 1,
                descriptor: (1u64 << 45) | P,
                bits: 1 << 45
            })
        );
        // A non-leaf pointer above HAW.
        let (mut m, s) = setup(48, va, 1, 0x5000 | P, NL);
        m.write_u64(T[4] + idx(va, 4) * 8, (1u64 << 50) | T[3] | NL)
            .unwrap();
        let s48 = FirstStage::new(FirstStageParams { haw: 48, ..s.p }).unwrap();
        assert!(matches!(
            s48.walk(&m, va),
            Err(Fault::ReservedBits { level: 4, bits, .. }) if bits == 1 << 50
        ));
    }

    #[test]
    fn user_permissions_are_intersection() {
        let va = 0x1000;
        let (m, s) = setup(48, va, 1, 0x5000 | P | RW | US, NL);
        let p = s.walk(&m, va).unwrap().perms;
        assert_eq!(
            p.user,
            Access {
                read: true,
                write: true,
                exec: true
            }
        );
        assert_eq!(p.privileged, Access::NONE); // no SRE
                                                // R/W clear in one non-leaf level.
        let (m, s) = setup(48, va, 1, 0x5000 | P | RW | US, P | US);
        let p = s.walk(&m, va).unwrap().perms;
        assert!(p.user.read && !p.user.write);
        // U/S clear in the leaf.
        let (m, s) = setup(48, va, 1, 0x5000 | P | RW, NL);
        assert_eq!(s.walk(&m, va).unwrap().perms.user, Access::NONE);
        // XD in a non-leaf level.
        let (m, s) = setup(48, va, 1, 0x5000 | P | RW | US, NL | XD);
        let p = s.walk(&m, va).unwrap().perms;
        assert!(p.user.read && p.user.write && !p.user.exec);
    }

    #[test]
    fn sre_and_wpe() {
        let va = 0x1000;
        let sre = VtdFlags {
            sre: true,
            ..VtdFlags::default()
        };
        let sre_wpe = VtdFlags {
            sre: true,
            wpe: true,
            ..VtdFlags::default()
        };
        // Read-only supervisor page.
        let (m, s) = setup(48, va, 1, 0x5000 | P, NL);
        let p = with_flags(s, sre).walk(&m, va).unwrap().perms.privileged;
        assert_eq!(
            p,
            Access {
                read: true,
                write: true,
                exec: true
            }
        );
        let p = with_flags(s, sre_wpe)
            .walk(&m, va)
            .unwrap()
            .perms
            .privileged;
        assert_eq!(
            p,
            Access {
                read: true,
                write: false,
                exec: true
            }
        );
        // WPE without SRE: still no supervisor access.
        let wpe = VtdFlags {
            wpe: true,
            ..VtdFlags::default()
        };
        assert_eq!(
            with_flags(s, wpe).walk(&m, va).unwrap().perms.privileged,
            Access::NONE
        );
        // User page: supervisor can read/write, not execute.
        let (m, s) = setup(48, va, 1, 0x5000 | P | RW | US, NL);
        let p = with_flags(s, sre_wpe)
            .walk(&m, va)
            .unwrap()
            .perms
            .privileged;
        assert!(p.read && p.write && !p.exec);
        let req = AccessRequest {
            kind: AccessKind::Exec,
            privileged: true,
        };
        assert_eq!(
            with_flags(s, sre).translate(&m, va, req),
            Err(Fault::Permission {
                level: 1,
                request: req
            })
        );
    }

    #[test]
    fn accessed_dirty_ea_global_cache_bits() {
        let va = 0x1000;
        let leaf = 0x5000 | P | A | D | G | EA | PWT | PCD | PS;
        let (m, s) = setup(48, va, 1, leaf, NL);
        let a = s.walk(&m, va).unwrap().attrs;
        assert!(a.accessed && a.dirty && a.global && a.pwt && a.pcd && a.pat);
        assert_eq!(a.extended_accessed, None);
        let eafe = VtdFlags {
            eafe: true,
            ..VtdFlags::default()
        };
        assert_eq!(
            with_flags(s, eafe)
                .walk(&m, va)
                .unwrap()
                .attrs
                .extended_accessed,
            Some(true)
        );
        let (m, s) = setup(48, va, 1, 0x5000 | P, NL);
        let a = with_flags(s, eafe).walk(&m, va).unwrap().attrs;
        assert!(!a.accessed && !a.dirty && !a.global && !a.pat);
        assert_eq!(a.extended_accessed, Some(false));
    }

    #[test]
    fn pointer_outside_ram() {
        let va = 0x1000;
        let (mut m, s) = setup(48, va, 1, 0x5000 | P, NL);
        m.write_u64(T[3] + idx(va, 3) * 8, 0x7000_0000 | NL)
            .unwrap();
        assert_eq!(
            s.walk(&m, va),
            Err(Fault::Memory {
                level: 2,
                source: MemoryError::OutOfRange {
                    gpa: 0x7000_0000 + idx(va, 2) * 8,
                    len: 8
                }
            })
        );
    }

    #[test]
    fn self_referencing_tables_terminate() {
        let mut m = TestMemory::single(RAM);
        m.write_u64(T[5], T[5] | NL).unwrap();
        let s = FirstStage::new(FirstStageParams::new(T[5], 57)).unwrap();
        let t = s.walk(&m, 0).unwrap();
        assert_eq!((t.level, t.output), (1, T[5]));
        assert_eq!(m.reads(), 5);
    }
}
