//! Host devices (Linux `iommufd/device.c`): what a guest endpoint is on the host, and how it
//! moves between page tables.
//!
//! A host device is bound to the iommufd and always attached to exactly one page table; every
//! move is an atomic replace, so DMA never goes untranslated. [`HostDevice`] is what the
//! backend asks of a device: [`VfioDevice`] (a VFIO cdev) is the real kind, the selftest mock
//! (mock.rs) the other. An [`Endpoint`] is a guest endpoint's device with where the guest put
//! it: its domain, its PASIDs' domains, and the HWPT the kernel attached it to.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};

use iommufd_sys as sys;
use log::{error, info, warn};
use model::host::BackendError;
use serde_json::{json, Value};

use super::adopt::SavedDevice;
use super::ids::VdeviceId;
use super::ids::{os_err, DevId, DomainId, EndpointId, HwptId, IoasId, Iommufd, OsResult, Pt};

/// What the backend asks of a host device, whatever its kind.
pub trait HostDevice: fmt::Debug + Send {
    /// Its iommufd device id (None: a device the VMM bound, whose id the daemon cannot
    /// learn; docs/PASSTHROUGH.md).
    fn dev_id(&self) -> Option<DevId>;
    /// Attach to `pt`, replacing the current attachment atomically; returns the HWPT the kernel
    /// attached it to.
    fn replace(&self, pt: Pt) -> Result<HwptId, sys::SysError>;
    /// Attach `pasid` to `pt` (`replace`: it is attached elsewhere already).
    fn attach_pasid(&self, pasid: u32, pt: Pt, replace: bool) -> Result<(), sys::SysError>;
    /// Detach `pasid`: its DMA is blocked.
    fn detach_pasid(&self, pasid: u32) -> Result<(), sys::SysError>;
    /// The control socket's view of the device.
    fn describe(&self) -> Value;
    /// The device as the objects file records it (adopt.rs).
    fn saved(&self) -> SavedDevice;
    /// The ioctls serving this device needs (the seccomp filter allows them).
    fn serving_ioctls(&self) -> &'static [u64];
    /// Let go of the device without unbinding or destroying it: a successor adopts it.
    fn keep(self: Box<Self>);
}

/// IOMMU_GET_HW_INFO of `dev`: (info type, data, PASID width).
pub fn hw_info(fd: &Iommufd, dev: DevId) -> Result<(u32, [u8; 64], u8), sys::SysError> {
    sys::get_hw_info(fd.as_fd(), dev.0)
}

/// A VFIO device cdev bound to the iommufd. Closing the cdev unbinds it (unless a launcher
/// holds another copy).
#[derive(Debug)]
pub struct VfioDevice {
    file: OwnedFd,
    dev_id: DevId,
}

impl VfioDevice {
    /// VFIO_DEVICE_BIND_IOMMUFD of the cdev `file` to `fd`, then attach it to `blocked`.
    /// Returns the device and the HWPT it is on.
    pub fn bind(
        file: OwnedFd,
        fd: &Iommufd,
        blocked: IoasId,
    ) -> Result<(VfioDevice, HwptId), sys::SysError> {
        let dev_id = DevId(sys::vfio_bind(file.as_fd(), fd.as_fd())?);
        let dev = VfioDevice { file, dev_id };
        let hwpt = dev.replace(Pt::Ioas(blocked))?;
        Ok((dev, hwpt))
    }

    /// A cdev a launcher kept, still bound to this iommufd as `dev_id` by a previous process.
    pub fn adopted(file: OwnedFd, dev_id: DevId) -> VfioDevice {
        VfioDevice { file, dev_id }
    }
}

impl HostDevice for VfioDevice {
    fn dev_id(&self) -> Option<DevId> {
        Some(self.dev_id)
    }
    fn replace(&self, pt: Pt) -> Result<HwptId, sys::SysError> {
        Ok(HwptId(sys::vfio_attach(self.file.as_fd(), pt.raw())?))
    }
    fn attach_pasid(&self, pasid: u32, pt: Pt, _replace: bool) -> Result<(), sys::SysError> {
        // VFIO_DEVICE_ATTACH_PASID replaces an attachment by itself.
        sys::vfio_attach_pasid(self.file.as_fd(), pt.raw(), pasid)?;
        Ok(())
    }
    fn detach_pasid(&self, pasid: u32) -> Result<(), sys::SysError> {
        sys::vfio_detach_pasid(self.file.as_fd(), pasid)
    }
    fn describe(&self) -> Value {
        json!({"kind": "vfio", "dev_id": self.dev_id})
    }
    fn saved(&self) -> SavedDevice {
        SavedDevice::Vfio {
            dev_id: self.dev_id,
        }
    }
    fn serving_ioctls(&self) -> &'static [u64] {
        &sys::SERVING_IOCTLS
    }
    /// Our copy of the cdev is closed; the launcher's keeps the device bound.
    fn keep(self: Box<Self>) {}
}

/// A VFIO device cdev the VMM binds (QEMU's `-device vfio-pci,fd=`, on the same open file the
/// launcher handed over). The daemon never binds it: a cdev is bound once, by the file, and a
/// second open cannot be bound (Linux `vfio_df_open`). Every attachment goes through this
/// copy of the file, which may ATTACH/DETACH once the VMM's BIND granted the file access
/// (before that the kernel answers EINVAL). The device id was returned to the VMM only.
#[derive(Debug)]
pub struct SharedVfioDevice {
    file: OwnedFd,
}

impl SharedVfioDevice {
    pub fn new(file: OwnedFd) -> SharedVfioDevice {
        SharedVfioDevice { file }
    }
}

impl HostDevice for SharedVfioDevice {
    fn dev_id(&self) -> Option<DevId> {
        None
    }
    fn replace(&self, pt: Pt) -> Result<HwptId, sys::SysError> {
        Ok(HwptId(sys::vfio_attach(self.file.as_fd(), pt.raw())?))
    }
    fn attach_pasid(&self, pasid: u32, pt: Pt, _replace: bool) -> Result<(), sys::SysError> {
        sys::vfio_attach_pasid(self.file.as_fd(), pt.raw(), pasid)?;
        Ok(())
    }
    fn detach_pasid(&self, pasid: u32) -> Result<(), sys::SysError> {
        sys::vfio_detach_pasid(self.file.as_fd(), pasid)
    }
    fn describe(&self) -> Value {
        json!({"kind": "vfio", "bound_by": "vmm", "dev_id": null})
    }
    /// Recorded once the daemon attached it: a restarted daemon handed the same file adopts
    /// it on the HWPT it left it on.
    fn saved(&self) -> SavedDevice {
        SavedDevice::Vmm
    }
    fn serving_ioctls(&self) -> &'static [u64] {
        &sys::SERVING_IOCTLS
    }
    /// Our copy of the cdev is closed; the VMM's keeps the device bound.
    fn keep(self: Box<Self>) {}
}

/// A guest endpoint's host device and where the guest put it.
#[derive(Debug)]
pub struct Endpoint {
    pub dev: Box<dyn HostDevice>,
    /// The guest domain it is attached to (None: blocked or unattached bypass).
    pub domain: Option<DomainId>,
    /// The HWPT the kernel attached it to (meaningful once `claimed`).
    pub hwpt: HwptId,
    /// The daemon has attached it at least once. A device the VMM binds starts on the VMM's
    /// own HWPT (QEMU: all guest RAM); it is claimed at its first successful move.
    pub claimed: bool,
    /// PASID attachments: PASID -> guest domain.
    pub pasids: BTreeMap<u32, DomainId>,
    /// Adopted from a previous process (adopt.rs): it stays on that process's HWPT until the
    /// journaled state is complete, and moves once then.
    pub adopted: bool,
    /// The last move asked for while adopted.
    deferred: Option<Pt>,
}

impl Endpoint {
    pub fn new(dev: Box<dyn HostDevice>, hwpt: HwptId, adopted: bool) -> Endpoint {
        Endpoint {
            dev,
            domain: None,
            hwpt,
            claimed: true,
            pasids: BTreeMap::new(),
            adopted,
            deferred: None,
        }
    }

    /// A device the VMM binds: not attached by the daemon yet.
    pub fn unclaimed(dev: Box<dyn HostDevice>) -> Endpoint {
        Endpoint {
            claimed: false,
            ..Endpoint::new(dev, HwptId(0), false)
        }
    }

    /// Attach to `pt` (atomic replace) as a member of `domain`. An adopted device keeps
    /// translating through the previous process's objects until the state is complete: the
    /// move is recorded, and made at the end ([`Endpoint::finish_adoption`]).
    pub fn move_to(&mut self, pt: Pt, domain: Option<DomainId>) -> Result<(), BackendError> {
        if self.adopted {
            self.deferred = Some(pt);
            self.domain = domain;
            return Ok(());
        }
        self.hwpt = self.dev.replace(pt).os()?;
        self.claimed = true;
        self.domain = domain;
        Ok(())
    }

    /// Whether `domain` is its domain or one of its PASIDs'.
    pub fn uses(&self, domain: DomainId) -> bool {
        self.domain == Some(domain) || self.pasids.values().any(|d| *d == domain)
    }

    /// PASID `pasid` goes to `pt`, the page table of `domain`.
    pub fn attach_pasid(
        &mut self,
        pasid: u32,
        pt: Pt,
        domain: DomainId,
    ) -> Result<(), BackendError> {
        let replace = self.pasids.contains_key(&pasid);
        self.dev.attach_pasid(pasid, pt, replace).os()?;
        self.pasids.insert(pasid, domain);
        Ok(())
    }

    /// PASID `pasid` is blocked again (nothing to do if it is not attached).
    pub fn detach_pasid(&mut self, pasid: u32) -> Result<(), BackendError> {
        if !self.pasids.contains_key(&pasid) {
            return Ok(());
        }
        self.dev.detach_pasid(pasid).os()?;
        self.pasids.remove(&pasid);
        Ok(())
    }

    /// The end of an adoption: move from the previous process's HWPT to where the device
    /// model put it meanwhile (else to `fallback`), with one replace so DMA sees no gap.
    pub fn finish_adoption(&mut self, ep: EndpointId, fallback: Pt) {
        self.adopted = false;
        let pt = self.deferred.take().unwrap_or(fallback);
        let old = self.hwpt;
        let r = self.dev.replace(pt).map_err(os_err).or_else(|err| {
            error!("endpoint {ep}: cannot move from the previous process's hwpt {old} to {pt}: {err}; blocked");
            self.dev.replace(fallback).map_err(os_err)
        });
        match r {
            Ok(h) => {
                info!("endpoint {ep}: moved from the previous process's hwpt {old} to hwpt {h}");
                self.hwpt = h;
            }
            Err(err) => error!("endpoint {ep}: stays on hwpt {old}: {err}"),
        }
    }

    /// The control socket's view, with its vDEVICE if it has one.
    pub fn describe(&self, id: EndpointId, vdevice: Option<VdeviceId>) -> Value {
        let pasids: Vec<_> = self
            .pasids
            .iter()
            .map(|(p, d)| json!({"pasid": p, "domain": d}))
            .collect();
        let hwpt = self.claimed.then_some(self.hwpt);
        json!({"endpoint": id, "device": self.dev.describe(), "domain": self.domain,
               "hwpt": hwpt, "pasids": pasids, "vdevice": vdevice})
    }
}

/// The host endpoints, by guest endpoint id.
pub type Endpoints = BTreeMap<EndpointId, Endpoint>;

/// Move every endpoint and PASID of `domain` to `pt`; on failure move the ones already moved
/// back to `old` and report the error.
pub fn move_domain(
    endpoints: &mut Endpoints,
    domain: DomainId,
    pt: Pt,
    old: Pt,
) -> Result<(), BackendError> {
    let users: Vec<(EndpointId, Option<u32>)> = endpoints
        .iter()
        .flat_map(|(id, e)| {
            let rid = (e.domain == Some(domain)).then_some((*id, None));
            rid.into_iter().chain(
                e.pasids
                    .iter()
                    .filter(|(_, d)| **d == domain)
                    .map(|(p, _)| (*id, Some(*p))),
            )
        })
        .collect();
    let to = |endpoints: &mut Endpoints, ep: EndpointId, pasid: Option<u32>, pt: Pt| {
        let Some(e) = endpoints.get_mut(&ep) else {
            return Ok(());
        };
        match pasid {
            None => e.move_to(pt, Some(domain)),
            Some(p) => e.dev.attach_pasid(p, pt, true).os(),
        }
    };
    let mut moved = Vec::new();
    for (ep, pasid) in users {
        if let Err(e) = to(endpoints, ep, pasid, pt) {
            for (ep, pasid) in moved {
                if let Err(e) = to(endpoints, ep, pasid, old) {
                    warn!("endpoint {ep} pasid {pasid:?}: cannot go back to {old}: {e}");
                }
            }
            return Err(e);
        }
        moved.push((ep, pasid));
    }
    Ok(())
}
