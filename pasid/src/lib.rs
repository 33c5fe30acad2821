//! PASID spaces and PASID-table formats for vhost-user-iommu's PASID/SVA support.
//!
//! * [`space`]: PASID allocation bitmaps and per-endpoint PASID spaces (width = min(host,
//!   config), at most 20 bits).
//! * [`smmuv3`]: SMMUv3 stage-1 STE fields (S1Fmt, S1DSS, S1CDMax, S1ContextPtr), CD-table
//!   lookup (linear and 2-level), 64-byte CD decoding and validation, and the 2-qword STE
//!   fragment for iommufd's `IOMMU_HWPT_DATA_ARM_SMMUV3`.
//! * [`vtd`]: VT-d per-PASID first-stage bindings validated into iommufd's
//!   `struct iommu_hwpt_vtd_s1`.
//!
//! Guest memory is read through [`pagetables::GuestMemoryRead`]; the decoded configurations
//! turn into the walkers of the `pagetables` crate.

pub mod smmuv3;
pub mod space;
pub mod vtd;

pub use space::{
    effective_width, PasidBitmap, PasidError, PasidSpace, PasidSpaces, MAX_PASID_BITS,
};
