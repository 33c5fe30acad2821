//! HWPTs, the hardware page tables devices attach to (Linux `iommufd/hw_pagetable.c`): the
//! typed calls, and [`Space`], an IOAS with the explicit paging HWPT a PASID-capable host
//! attaches devices to. Nested HWPTs and the nesting parent are made by the nesting host
//! (nest.rs) through [`alloc`].

use std::os::fd::AsFd;

use iommufd_sys as sys;
use model::host::BackendError;

use super::ids::{DevId, FaultId, HwptId, IoasId, Iommufd, OsResult, Owned, Pt, ViommuId};
use super::ioas;

/// What an HWPT is allocated on (IOMMU_HWPT_ALLOC's `pt_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    /// A paging HWPT (or a nesting parent) over an IOAS.
    Ioas(IoasId),
    /// A nested HWPT on its nesting parent (VT-d, the mock without a vIOMMU).
    Parent(HwptId),
    /// A nested HWPT on a vIOMMU (SMMUv3, the mock).
    Viommu(ViommuId),
}

impl On {
    fn raw(self) -> u32 {
        match self {
            On::Ioas(id) => id.0,
            On::Parent(id) => id.0,
            On::Viommu(id) => id.0,
        }
    }
}

impl std::fmt::Display for On {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.raw().fmt(f)
    }
}

/// IOMMU_HWPT_ALLOC for device `dev` on `on`, with `data` of `data_type` (the guest table, for
/// a nested HWPT). With `fault`, page requests of the HWPT go to that fault queue
/// (IOMMU_HWPT_FAULT_ID_VALID).
pub fn alloc(
    fd: &Iommufd,
    dev: DevId,
    on: On,
    flags: u32,
    data_type: u32,
    data: &[u8],
    fault: Option<FaultId>,
) -> Result<Owned<HwptId>, sys::SysError> {
    let (flags, fault_id) = match fault {
        Some(f) => (flags | sys::IOMMU_HWPT_FAULT_ID_VALID, f.0),
        None => (flags, 0),
    };
    let id = sys::hwpt_alloc(
        fd.as_fd(),
        dev.0,
        on.raw(),
        flags,
        data_type,
        data,
        fault_id,
    )?;
    Ok(Owned::new(fd, HwptId(id)))
}

/// IOMMU_HWPT_INVALIDATE on a nested HWPT: `entries` of `entry_len` bytes each.
pub fn invalidate(
    fd: &Iommufd,
    hwpt: HwptId,
    data_type: u32,
    entry_len: u32,
    entries: &[u8],
) -> Result<(), BackendError> {
    sys::hwpt_invalidate(fd.as_fd(), hwpt.0, data_type, entry_len, entries).os()?;
    Ok(())
}

/// An IOAS and, on a host where every device has PASIDs, the explicit paging HWPT devices
/// attach to for it: allocated with IOMMU_HWPT_ALLOC_PASID, since the IOAS's automatic
/// domain would refuse PASID attachments next to it. The HWPT is declared first: it goes
/// before the IOAS under it.
#[derive(Debug)]
pub struct Space {
    paging: Option<Owned<HwptId>>,
    ioas: Owned<IoasId>,
}

impl Space {
    pub fn new(ioas: Owned<IoasId>) -> Space {
        Space { paging: None, ioas }
    }

    /// A new, empty IOAS.
    pub fn alloc(fd: &Iommufd) -> Result<Space, sys::SysError> {
        Ok(Space::new(ioas::alloc(fd)?))
    }

    pub fn id(&self) -> IoasId {
        self.ioas.id()
    }

    /// The explicit paging HWPT, if one was made.
    pub fn paging(&self) -> Option<HwptId> {
        self.paging.as_ref().map(Owned::id)
    }

    /// What a device attaches to for this IOAS: the IOAS itself or, with `pasid_dev` (the
    /// device HWPTs are allocated for, on a host whose devices all have PASIDs), the paging
    /// HWPT, made on first use.
    pub fn target(&mut self, pasid_dev: Option<DevId>) -> Result<Pt, BackendError> {
        let Some(dev) = pasid_dev else {
            return Ok(Pt::Ioas(self.id()));
        };
        if let Some(h) = &self.paging {
            return Ok(Pt::Hwpt(h.id()));
        }
        let h = alloc(
            self.ioas.iommufd(),
            dev,
            On::Ioas(self.id()),
            sys::IOMMU_HWPT_ALLOC_PASID,
            sys::IOMMU_HWPT_DATA_NONE,
            &[],
            None,
        )
        .os()?;
        let id = h.id();
        self.paging = Some(h);
        Ok(Pt::Hwpt(id))
    }

    /// Destroy the paging HWPT, if any (nothing may be attached to it any more).
    pub fn drop_paging(&mut self) {
        self.paging = None;
    }
}
