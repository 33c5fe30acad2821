//! The ids of iommufd objects and of the guest's objects, and who owns a kernel object.
//!
//! Each kind of object has its own id type, so an IOAS passed where an HWPT is wanted, or a
//! guest domain where an endpoint is, is a compile error. The ABI crate's raw `u32` appears
//! only at the ioctl calls ([`ObjectId::raw`]), in the object modules that wrap them.
//!
//! An object this process made is held as [`Owned`]: dropping it destroys the object
//! (IOMMU_DESTROY through the shared [`Iommufd`]). The order objects go in therefore follows
//! ownership: whatever depends on an object is declared before it in the struct that holds
//! both, or holds it (a nested HWPT holds the nesting objects under it). An object handed to a
//! successor (a restarted daemon adopts it) is [`Owned::keep`]-ed instead.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use iommufd_sys as sys;
use log::warn;
use model::host::BackendError;

/// A failed kernel call as the backend error it is (the status follows its errno).
pub(crate) fn os_err(e: sys::SysError) -> BackendError {
    BackendError::Os {
        call: e.call,
        errno: e.errno,
    }
}

/// `?` on a kernel call inside a backend operation.
pub(crate) trait OsResult<T> {
    fn os(self) -> Result<T, BackendError>;
}

impl<T> OsResult<T> for Result<T, sys::SysError> {
    fn os(self) -> Result<T, BackendError> {
        self.map_err(os_err)
    }
}

/// The iommufd every object lives in (opened by the daemon or handed over by a launcher),
/// shared by the objects that destroy themselves in it.
#[derive(Clone, Debug)]
pub struct Iommufd(Arc<OwnedFd>);

impl Iommufd {
    pub fn new(fd: OwnedFd) -> Iommufd {
        Iommufd(Arc::new(fd))
    }
}

impl AsFd for Iommufd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The id of one kind of iommufd object.
pub trait ObjectId: Copy + fmt::Debug + fmt::Display {
    /// The kind, for logs.
    const KIND: &'static str;
    /// The id as the ioctl takes it.
    fn raw(self) -> u32;
}

macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(pub u32);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

macro_rules! object_ids {
    ($($(#[$doc:meta])* $name:ident = $kind:literal;)*) => {$(
        ids! { $(#[$doc])* $name; }

        impl ObjectId for $name {
            const KIND: &'static str = $kind;
            fn raw(self) -> u32 {
                self.0
            }
        }

        impl From<$name> for ObjId {
            fn from(id: $name) -> ObjId {
                ObjId(id.0)
            }
        }
    )*};
}

ids! {
    /// A guest domain id (ATTACH's `domain`).
    DomainId;
    /// A guest endpoint id (ATTACH's `endpoint`; the guest's StreamID or RID).
    EndpointId;
    /// Any iommufd object, whatever its kind: a previous process's objects, known only by id.
    ObjId;
}

object_ids! {
    /// An I/O address space (IOMMU_IOAS_ALLOC).
    IoasId = "IOAS";
    /// A hardware page table (IOMMU_HWPT_ALLOC, or the one the kernel made on attach).
    HwptId = "HWPT";
    /// A device bound to the iommufd (VFIO_DEVICE_BIND_IOMMUFD's `out_devid`, the mock's
    /// `idev_id`).
    DevId = "device";
    /// A selftest mock device (`stdev_id`, mock.rs).
    MockId = "mock device";
    /// A vIOMMU (IOMMU_VIOMMU_ALLOC).
    ViommuId = "vIOMMU";
    /// A vDEVICE (IOMMU_VDEVICE_ALLOC).
    VdeviceId = "vDEVICE";
    /// A fault queue (IOMMU_FAULT_QUEUE_ALLOC).
    FaultId = "fault queue";
    /// A vEVENTQ (IOMMU_VEVENTQ_ALLOC).
    VeventqId = "vEVENTQ";
}

impl ObjectId for ObjId {
    const KIND: &'static str = "object";
    fn raw(self) -> u32 {
        self.0
    }
}

/// What a device (or one of its PASIDs) attaches to: an IOAS (the kernel picks or makes an
/// HWPT for it) or an HWPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pt {
    Ioas(IoasId),
    Hwpt(HwptId),
}

impl Pt {
    pub fn raw(self) -> u32 {
        match self {
            Pt::Ioas(id) => id.0,
            Pt::Hwpt(id) => id.0,
        }
    }
}

impl fmt::Display for Pt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.raw().fmt(f)
    }
}

/// Destroy object `id` now (an object known only by id: a previous process's).
pub fn destroy(fd: &Iommufd, id: impl ObjectId) -> Result<(), sys::SysError> {
    sys::destroy(fd.as_fd(), id.raw())
}

/// An iommufd object this process made: destroyed when dropped, unless kept for a successor.
#[derive(Debug)]
pub struct Owned<I: ObjectId> {
    fd: Iommufd,
    id: I,
    keep: bool,
}

impl<I: ObjectId> Owned<I> {
    /// Take ownership of object `id` in `fd`.
    pub fn new(fd: &Iommufd, id: I) -> Owned<I> {
        Owned {
            fd: fd.clone(),
            id,
            keep: false,
        }
    }

    pub fn id(&self) -> I {
        self.id
    }

    /// The iommufd it lives in.
    pub fn iommufd(&self) -> &Iommufd {
        &self.fd
    }

    /// Leave the object in the iommufd when this handle goes (a restarted daemon adopts it).
    pub fn keep(mut self) -> I {
        self.keep = true;
        self.id
    }
}

impl<I: ObjectId> Drop for Owned<I> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = sys::destroy(self.fd.as_fd(), self.id.raw()) {
            warn!("cannot destroy {} {}: {e}", I::KIND, self.id);
        }
    }
}
