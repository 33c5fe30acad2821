//! vIOMMUs, vDEVICEs and vEVENTQs (Linux `iommufd/viommu.c`, `eventq.c`): the host's instance
//! of the guest's IOMMU (SMMUv3, the mock) over the nesting parent, each host device on it
//! under its guest id (the endpoint id: the guest's StreamID), and the queue on which the host
//! reports faults of guest tables.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use iommufd_sys as sys;
use log::warn;
use model::host::{BackendError, HostFault};

use super::fault::nonblocking;
use super::ids::{DevId, EndpointId, HwptId, Iommufd, OsResult, Owned};
use super::ids::{VdeviceId, VeventqId, ViommuId};
use super::wire;

/// IOMMU_VIOMMU_ALLOC of `type_` for device `dev` over the nesting parent `parent`.
pub fn alloc(
    fd: &Iommufd,
    type_: u32,
    dev: DevId,
    parent: HwptId,
) -> Result<Owned<ViommuId>, sys::SysError> {
    let id = sys::viommu_alloc(fd.as_fd(), type_, dev.0, parent.0)?;
    Ok(Owned::new(fd, ViommuId(id)))
}

/// IOMMU_VDEVICE_ALLOC: device `dev` on `viommu`, known to the guest as `endpoint`.
pub fn vdevice(
    fd: &Iommufd,
    viommu: ViommuId,
    dev: DevId,
    endpoint: EndpointId,
) -> Result<Owned<VdeviceId>, sys::SysError> {
    let id = sys::vdevice_alloc(fd.as_fd(), viommu.0, dev.0, u64::from(endpoint.0))?;
    Ok(Owned::new(fd, VdeviceId(id)))
}

/// IOMMU_HWPT_INVALIDATE on a vIOMMU (caches not tied to one HWPT: SMMUv3 commands, the
/// mock's device cache): `entries` of `entry_len` bytes each.
pub fn invalidate(
    fd: &Iommufd,
    viommu: ViommuId,
    data_type: u32,
    entry_len: u32,
    entries: &[u8],
) -> Result<(), BackendError> {
    sys::hwpt_invalidate(fd.as_fd(), viommu.0, data_type, entry_len, entries).os()?;
    Ok(())
}

/// Turns one vEVENT's data into a fault.
pub type EventParser = fn(&[u8]) -> Option<HostFault>;

/// A vEVENTQ: its fd (closed before the object is destroyed, which also takes it out of the
/// worker's epoll set) and the object.
#[derive(Debug)]
pub struct Veventq {
    file: OwnedFd,
    id: Owned<VeventqId>,
}

impl Veventq {
    /// IOMMU_VEVENTQ_ALLOC of `type_` on `viommu`, `depth` events deep, non-blocking.
    pub fn alloc(
        fd: &Iommufd,
        viommu: ViommuId,
        type_: u32,
        depth: u32,
    ) -> Result<Veventq, sys::SysError> {
        let (id, file) = sys::veventq_alloc(fd.as_fd(), viommu.0, type_, depth)?;
        let q = Veventq {
            file,
            id: Owned::new(fd, VeventqId(id)),
        };
        if !nonblocking(q.file.as_fd()) {
            warn!("vEVENTQ: cannot make it non-blocking");
        }
        Ok(q)
    }

    pub fn id(&self) -> VeventqId {
        self.id.id()
    }

    pub fn file(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The faults queued since the last call: events of `size` bytes, `parse`d, of the
    /// endpoints `known` says exist.
    pub fn read(
        &self,
        size: usize,
        parse: EventParser,
        known: impl Fn(EndpointId) -> bool,
    ) -> Vec<HostFault> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            // SAFETY: reads into a live local buffer of the given length from an fd we own.
            let r =
                unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(len) = usize::try_from(r) else { break };
            if len == 0 {
                break;
            }
            let (events, lost) = wire::split_vevents(&buf[..len], size);
            if lost > 0 {
                warn!("the host's vEVENTQ overflowed: events lost");
            }
            for f in events.into_iter().filter_map(parse) {
                if known(EndpointId(f.endpoint)) {
                    out.push(f);
                } else {
                    warn!("host event for unknown virtual id {}", f.endpoint);
                }
            }
            if len + wire::VEVENT_HEADER_SIZE + size > buf.len() {
                continue;
            }
            break;
        }
        out
    }
}
