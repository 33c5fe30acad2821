//! Arm SMMUv3 PASID tables: stage-1 STE fields, context-descriptor tables and CDs.

pub mod build;
pub mod cd;
pub mod ste;

pub use cd::{CdCaps, CdError, ContextDescriptor, GranuleSupport, SmmuIdrInfo};
pub use ste::{
    iommufd_ste_bytes, GuestSte, S1Dss, S1Fmt, SsidResolution, SteError, SteHostPolicy, SteS1,
};
