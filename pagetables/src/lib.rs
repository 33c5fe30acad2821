//! Guest page-table formats for vhost-user-iommu's PASID/SVA support.
//!
//! * [`vmsa`]: Arm VMSAv8-64 stage-1 tables as an SMMUv3 context descriptor describes them
//!   (TTB0 / T0SZ / TG0 / IPS / EPD0 / MAIR ...), 4K, 16K and 64K granules.
//! * [`vtd`]: x86-64 / Intel VT-d first-stage tables, 4- and 5-level, with the
//!   `IOMMU_HWPT_DATA_VTD_S1` flags (SRE, EAFE, WPE) applied to the permissions.
//! * [`build`]: builders that construct tables of both formats in a [`TestMemory`],
//!   written independently of the walkers so tests can check one against the other.
//!
//! Walkers read guest memory through [`GuestMemoryRead`]. A walk reads at most one descriptor
//! per level (so at most 4 or 5 reads): hostile tables cannot make it loop, and a table pointer
//! outside guest RAM is a [`Fault::Memory`], never a panic.

pub mod build;
pub mod mem;
pub mod vmsa;
pub mod vtd;

pub use mem::{GuestMemoryRead, MemoryError, TestMemory};

/// Read / write / execute rights for one privilege level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Access {
    /// Data reads permitted.
    pub read: bool,
    /// Data writes permitted.
    pub write: bool,
    /// Instruction fetches permitted.
    pub exec: bool,
}

impl Access {
    /// No access at all.
    pub const NONE: Access = Access {
        read: false,
        write: false,
        exec: false,
    };
}

/// Effective permissions of a translation, for unprivileged (user / EL0) and privileged
/// (supervisor / EL1) requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Permissions {
    /// Requests without the privileged attribute (PCIe PASID prefix PMR=0, EL0).
    pub user: Access,
    /// Requests with the privileged attribute (PMR=1, EL1 / supervisor).
    pub privileged: Access,
}

/// The kind of a DMA request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch (PCIe execute-requested).
    Exec,
}

/// A DMA request to check against [`Permissions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccessRequest {
    /// Read, write or execute.
    pub kind: AccessKind,
    /// The request carries the privileged attribute.
    pub privileged: bool,
}

impl Permissions {
    /// Whether `req` is permitted.
    pub fn allows(&self, req: AccessRequest) -> bool {
        let a = if req.privileged {
            self.privileged
        } else {
            self.user
        };
        match req.kind {
            AccessKind::Read => a.read,
            AccessKind::Write => a.write,
            AccessKind::Exec => a.exec,
        }
    }
}

/// Why a walk stopped with a translation fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TranslationFaultKind {
    /// The input address is outside the configured input range (VMSA: above 2^(64-T0SZ), or
    /// in the TTB1 half, which is never walked).
    InputOutOfRange,
    /// VT-d: the input address is not canonical for the paging mode (48 or 57 bits).
    NonCanonical,
    /// VMSA: EPD0 is set, walks through TTB0 are disabled.
    WalkDisabled,
    /// The descriptor is invalid (VMSA bit 0 clear) / not present (VT-d P clear).
    NotPresent,
    /// VMSA: a block descriptor at a level where blocks are not permitted for the granule
    /// (4K level 0, 16K level 0/1, 64K level 1 without 52-bit output).
    BlockNotPermitted,
    /// VMSA: descriptor type 0b01 at level 3 (reserved, treated as invalid).
    ReservedType,
}

/// A walk failure. `level` uses the architecture's numbering: VMSA levels 0..=3 (3 is the
/// last), VT-d levels 5..=1 (PML5 = 5, PML4 = 4, PDPT = 3, PD = 2, PT = 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// Translation fault.
    #[error("translation fault at level {level}: {kind:?}")]
    Translation {
        /// Level of the descriptor (or the start level for input-range faults).
        level: u8,
        /// Cause.
        kind: TranslationFaultKind,
    },
    /// A descriptor has reserved (RES0) bits set.
    #[error("reserved bits {bits:#x} set in descriptor {descriptor:#x} at level {level}")]
    ReservedBits {
        /// Level of the descriptor.
        level: u8,
        /// The descriptor.
        descriptor: u64,
        /// The offending bits.
        bits: u64,
    },
    /// The next-table or output address does not fit the output address size.
    #[error("address size fault at level {level}: address {address:#x} exceeds {bits} bits")]
    AddressSize {
        /// Level of the descriptor.
        level: u8,
        /// The address.
        address: u64,
        /// The output address size in bits.
        bits: u8,
    },
    /// VMSA: the leaf has AF=0 and neither HA nor AFFD is set.
    #[error("access flag fault at level {level}")]
    AccessFlag {
        /// Level of the leaf.
        level: u8,
    },
    /// The table pointer or descriptor address is not inside guest RAM.
    #[error("descriptor read at level {level} failed: {source}")]
    Memory {
        /// Level of the descriptor being read.
        level: u8,
        /// The memory error.
        source: MemoryError,
    },
    /// The translation exists but does not permit the request (only from `translate`).
    #[error("permission fault at level {level} for {request:?}")]
    Permission {
        /// Level of the leaf.
        level: u8,
        /// The refused request.
        request: AccessRequest,
    },
}

impl Fault {
    /// The level the fault was detected at.
    pub fn level(&self) -> u8 {
        match *self {
            Fault::Translation { level, .. }
            | Fault::ReservedBits { level, .. }
            | Fault::AddressSize { level, .. }
            | Fault::AccessFlag { level }
            | Fault::Memory { level, .. }
            | Fault::Permission { level, .. } => level,
        }
    }
}

/// A successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation<A> {
    /// The input address that was walked (as given, including any ignored top byte).
    pub iova: u64,
    /// The output (guest physical or intermediate physical) address of `iova`.
    pub output: u64,
    /// Size of the page or block in bytes.
    pub page_size: u64,
    /// Level of the leaf descriptor (architecture numbering, see [`Fault`]).
    pub level: u8,
    /// Effective permissions, hierarchical controls and flags included.
    pub perms: Permissions,
    /// Guest physical address of the leaf descriptor (for A/D updates by an emulator).
    pub leaf_address: u64,
    /// The leaf descriptor as read (native byte order).
    pub leaf: u64,
    /// Format-specific attributes.
    pub attrs: A,
}

impl<A> Translation<A> {
    /// First input address of the page or block.
    pub fn page_iova(&self) -> u64 {
        self.iova & !(self.page_size.wrapping_sub(1))
    }

    /// Output address of the first byte of the page or block.
    pub fn page_output(&self) -> u64 {
        self.output & !(self.page_size.wrapping_sub(1))
    }

    /// This translation if it permits `req`, else the permission fault at its leaf level.
    pub fn check(self, req: AccessRequest) -> Result<Self, Fault> {
        if self.perms.allows(req) {
            Ok(self)
        } else {
            Err(Fault::Permission {
                level: self.level,
                request: req,
            })
        }
    }
}

/// Mask of bits `hi..=lo` (`hi >= lo`, both < 64).
pub(crate) const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_masks() {
        assert_eq!(bits(0, 0), 1);
        assert_eq!(bits(63, 0), u64::MAX);
        assert_eq!(bits(47, 12), 0x0000_ffff_ffff_f000);
        assert_eq!(bits(63, 63), 1 << 63);
    }

    #[test]
    fn permissions_allows_each_kind() {
        let p = Permissions {
            user: Access {
                read: true,
                write: false,
                exec: true,
            },
            privileged: Access {
                read: false,
                write: true,
                exec: false,
            },
        };
        let req = |kind, privileged| AccessRequest { kind, privileged };
        assert!(p.allows(req(AccessKind::Read, false)));
        assert!(!p.allows(req(AccessKind::Write, false)));
        assert!(p.allows(req(AccessKind::Exec, false)));
        assert!(!p.allows(req(AccessKind::Read, true)));
        assert!(p.allows(req(AccessKind::Write, true)));
        assert!(!p.allows(req(AccessKind::Exec, true)));
    }

    #[test]
    fn page_bases() {
        let t = Translation {
            iova: 0x1234_5678,
            output: 0x8765_4678,
            page_size: 0x1000,
            level: 3,
            perms: Permissions::default(),
            leaf_address: 0,
            leaf: 0,
            attrs: (),
        };
        assert_eq!(t.page_iova(), 0x1234_5000);
        assert_eq!(t.page_output(), 0x8765_4000);
    }
}
