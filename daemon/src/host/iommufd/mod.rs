//! The iommufd backend: guest domains become iommufd objects, guest endpoints are host devices
//! (VFIO cdevs, or selftest mock devices for tests), so the host IOMMU translates their DMA.
//!
//! Objects (all in one iommufd, opened here or handed over by a launcher):
//! - the **blocked** IOAS: empty; unattached and detached endpoints sit on it (no DMA);
//! - the **stage-2** IOAS: guest RAM at its guest-physical addresses (IOAS_MAP of the daemon's
//!   mapping of each vhost-user memory region), i.e. the identity translation of a bypass domain
//!   and of unattached endpoints when the device bypasses;
//! - one IOAS per guest (non-bypass) domain: a guest MAP of guest-physical pages is an IOAS_MAP of
//!   the daemon's mapping of those pages at the IOVA; UNMAP is IOAS_UNMAP of the range;
//! - a host device per configured endpoint, always attached to exactly one of these IOASes
//!   (an atomic replace on every move);
//! - guest tables (the PASID extension, docs/PASID.md), when GET_HW_INFO says the host IOMMU
//!   nests: a nesting parent, vIOMMU and vDEVICEs, a nested HWPT per table domain and a fault
//!   queue (nest.rs); when every host device has PASIDs, devices attach to an explicit paging
//!   HWPT of each IOAS, allocated with IOMMU_HWPT_ALLOC_PASID (hwpt.rs).
//!
//! The blocked and stage-2 IOASes and the devices live as long as the daemon; domain IOASes and
//! stage-2 contents live as long as the guest made them, and `reset` releases them.
//!
//! One file per kind of object, as in Linux's `drivers/iommu/iommufd`; each file uses only
//! files before it in this list, and this one ties them together (the [`HostBackend`] and
//! [`NestingHost`] implementations, and the order things go in on `Drop`):
//! - ids.rs: the typed ids, and [`ids::Owned`]: an object destroyed when its owner drops it;
//!   wire.rs: the host's invalidation, fault and event records; config.rs: `[iommufd]`;
//!   pieces.rs: guest RAM regions and the pieces of mappings the kernel holds;
//! - adopt.rs: the objects file, from which a restarted daemon adopts the objects;
//! - ioas.rs; hwpt.rs (HWPTs; an IOAS with its paging HWPT); device.rs (host devices and their
//!   moves; VFIO); fault.rs (the fault queue); viommu.rs (vIOMMU, vDEVICE, vEVENTQ); mock.rs
//!   (the selftest mock: its device, and its IOMMU as a nesting host); nest.rs (the nesting
//!   host: parent, nested HWPTs, invalidations);
//! - ram.rs (guest RAM in the IOASes: MAP, UNMAP, memory-table changes); domain.rs (a guest
//!   domain's objects); setup.rs (the iommufd and the devices at start-up);
//! - backend.rs: the backend's state (its fields in the order they go), start-up, and what the
//!   operations share.
//!
//! Teardown follows ownership: every object this process made is owned by one value and
//! destroyed when that goes (the devices first, so nothing is attached any more; the domains;
//! the nesting objects; the fixed IOASes; the objects file last). Objects handed to a
//! successor are kept, not destroyed (see the `Drop` implementation).

mod adopt;
mod backend;
mod config;
mod device;
mod domain;
mod fault;
mod hwpt;
mod ids;
mod ioas;
mod mock;
mod nest;
mod pieces;
mod ram;
mod setup;
mod viommu;
mod wire;

pub use iommufd_sys as sys;

use std::os::fd::AsFd;

use log::{info, warn};
use model::guest_tables::{Binding, Invalidate};
use model::host::{
    BackendError, GuestRegion, HostBackend, HostFault, HostIommu, HostPageRequest, NestingHost,
    ResetKind,
};
use serde_json::Value;

pub use backend::IommufdBackend;
pub use config::{check_sources, pci_cdev, vfio_cdev, DeviceSource, IommufdConfig, SetupError};
use device::move_domain;
use domain::Domain;
use hwpt::Space;
use ids::{DevId, DomainId, EndpointId, OsResult, Pt};
use nest::Nested;
pub use nest::{host_iommu, nest_kind, nested_data, NestKind};
use ram::{At, DomainMaps};

impl HostBackend for IommufdBackend {
    fn name(&self) -> &'static str {
        "iommufd"
    }

    fn guest_tables(&self) -> bool {
        self.nest.is_some()
    }

    fn nesting(&self) -> Option<&dyn NestingHost> {
        if self.nest.is_some() {
            Some(self)
        } else {
            None
        }
    }

    fn nesting_mut(&mut self) -> Option<&mut dyn NestingHost> {
        if self.nest.is_some() {
            Some(self)
        } else {
            None
        }
    }

    fn attach(
        &mut self,
        endpoint: u32,
        domain: u32,
        bypass: bool,
        new_domain: bool,
    ) -> Result<(), BackendError> {
        let (ep, dom) = (EndpointId(endpoint), DomainId(domain));
        let dev = self.pasid_dev();
        // A new domain's own IOAS: it goes again (with its paging HWPT) if the endpoint
        // cannot move to it.
        let mut fresh = None;
        let pt = if self.domains.contains_key(&dom) {
            self.domain_pt(dom)
        } else if !new_domain {
            return Err(BackendError::Internal("attach to unknown domain"));
        } else if bypass {
            self.stage2.target(dev)
        } else {
            fresh.insert(Space::alloc(&self.fd).os()?).target(dev)
        };
        pt.and_then(|pt| self.move_endpoint(ep, pt, Some(dom)))?;
        if new_domain && !self.domains.contains_key(&dom) {
            self.domains.insert(dom, Domain::new(fresh));
        }
        self.persist();
        Ok(())
    }

    fn detach(&mut self, endpoint: u32) -> Result<(), BackendError> {
        let pt = self.unattached_pt()?;
        let r = self.move_endpoint(EndpointId(endpoint), pt, None);
        self.persist();
        r
    }

    /// The domain's objects go with it: its nested HWPT, its IOAS after its paging HWPT.
    fn destroy_domain(&mut self, domain: u32) {
        self.domains.remove(&DomainId(domain));
        self.persist();
    }

    fn map(
        &mut self,
        domain: u32,
        iova: u64,
        end: u64,
        phys: u64,
        flags: u32,
    ) -> Result<(), BackendError> {
        let dom = DomainId(domain);
        let d = self.domains.get_mut(&dom);
        let d = d.ok_or(BackendError::Internal("map in unknown domain"))?;
        let ioas = d.ioas(self.stage2.id());
        let at = At {
            fd: self.fd.as_fd(),
            domain: dom,
            ioas,
        };
        self.ram.map(at, &mut d.maps, iova, end, phys, flags)
    }

    fn unmap(&mut self, domain: u32, start: u64, end: u64) -> Result<(), BackendError> {
        let dom = DomainId(domain);
        let d = self.domains.get_mut(&dom);
        let d = d.ok_or(BackendError::Internal("unmap in unknown domain"))?;
        if d.bypass() {
            return Ok(());
        }
        let ioas = d.ioas(self.stage2.id());
        let at = At {
            fd: self.fd.as_fd(),
            domain: dom,
            ioas,
        };
        ram::unmap_range(at, &mut d.maps, start, end)
    }

    fn set_unattached_bypass(&mut self, bypass: bool) -> Result<(), BackendError> {
        if bypass == self.unattached_bypass {
            return Ok(());
        }
        let dev = self.pasid_dev();
        let to = if bypass {
            &mut self.stage2
        } else {
            &mut self.blocked
        };
        let pt = to.target(dev)?;
        let unattached = (self.endpoints.values_mut()).filter(|e| e.domain.is_none() && e.claimed);
        for e in unattached {
            e.move_to(pt, None)?;
        }
        self.unattached_bypass = bypass;
        self.persist();
        Ok(())
    }

    fn reset(&mut self, kind: ResetKind) {
        for (ep, e) in self.endpoints.iter_mut() {
            let pasids: Vec<u32> = e.pasids.keys().copied().collect();
            for p in pasids {
                if let Err(err) = e.detach_pasid(p) {
                    warn!("reset: endpoint {ep} cannot detach PASID {p}: {err}");
                }
            }
        }
        let pt = self.unattached_fallback();
        // A device the VMM binds that the daemon has not attached yet is claimed (to where the
        // device then says) when the driver starts the device: the VMM may not have bound it.
        for (ep, e) in self.endpoints.iter_mut().filter(|(_, e)| e.claimed) {
            if let Err(err) = e.move_to(pt, None) {
                warn!("reset: endpoint {ep} cannot leave its domain: {err}");
            }
        }
        // The other fixed IOAS's explicit HWPT, if any, is unused now.
        let spare = if self.unattached_bypass {
            &mut self.blocked
        } else {
            &mut self.stage2
        };
        spare.drop_paging();
        let domains: Vec<DomainId> = self.domains.keys().copied().collect();
        for d in domains {
            self.destroy_domain(d.0);
        }
        if kind == ResetKind::Connection {
            // Unpins stage 2 (no nested HWPT is left).
            if let Some(n) = self.nest.as_mut() {
                n.release();
            }
            self.ram.release(self.fd.as_fd(), self.stage2.id());
        }
        self.persist();
    }

    fn guest_ram_at(&self, phys: u64) -> Option<bool> {
        Some(ram::is_ram(&self.ram.memory, phys, 1))
    }

    /// Never fails: the VMM has changed its memory whatever the daemon thinks of it (a
    /// refused SET_MEM_TABLE would leave vhost-user-backend half updated), so the table is
    /// always taken and kernel refusals are logged and counted (ram.rs).
    fn set_guest_memory(&mut self, regions: &[GuestRegion]) -> Result<(), BackendError> {
        let new = self.ram.regions(regions);
        let stage2 = self.stage2.id();
        let mut domains: Vec<DomainMaps<'_>> = (self.domains.iter_mut())
            .filter(|(_, d)| !d.bypass())
            .map(|(id, d)| DomainMaps {
                id: *id,
                ioas: d.ioas(stage2),
                maps: &mut d.maps,
            })
            .collect();
        let fd = self.fd.as_fd();
        self.ram
            .follow(fd, new, &mut domains, stage2, &self.allowed);
        self.claim_shared();
        Ok(())
    }

    fn resumed(&mut self, resumed: bool) {
        self.finish_adoption(resumed);
    }

    /// What the host devices need (the mock's test commands when there is a mock device).
    fn serving_ioctls(&self) -> &'static [u64] {
        let per_device = self.endpoints.values().map(|e| e.dev.serving_ioctls());
        per_device
            .max_by_key(|s| s.len())
            .unwrap_or(&sys::SERVING_IOCTLS)
    }

    fn describe(&self) -> Value {
        self.describe_objects()
    }
}

impl NestingHost for IommufdBackend {
    fn host_iommu(&self) -> Option<HostIommu> {
        self.nest.as_ref().map(|n| n.host().clone())
    }

    fn attach_table(&mut self, domain: u32, binding: &Binding) -> Result<(), BackendError> {
        let dom = DomainId(domain);
        // With nesting set up every device has an id (backend.rs `devices`).
        let devices = self.devices().unwrap_or_default();
        let n = self.nest.as_mut();
        let n = n.ok_or(BackendError::Unsupported("the host IOMMU does not nest"))?;
        let data = nested_data(n.kind(), binding)?;
        let base = n.base(&self.fd, self.stage2.id(), &devices)?;
        // A device of the domain if it has one (the IOMMU instance that will walk the table).
        let dev = (self.endpoints.values().find(|e| e.domain == Some(dom)))
            .and_then(|e| e.dev.dev_id())
            .unwrap_or(n.dev());
        let d = self.domains.get(&dom);
        let d = d.ok_or(BackendError::Internal("table for an unknown domain"))?;
        if d.bypass() {
            return Err(BackendError::Internal("table for a bypass domain"));
        }
        let old = self.domain_pt(dom)?;
        let n = self.nest.as_ref();
        let n = n.ok_or(BackendError::Internal("nesting state lost"))?;
        let (nested, on) = n.alloc_nested(&self.fd, &base, dev, data)?;
        let hwpt = nested.id();
        // On failure the new HWPT goes again with `nested`.
        move_domain(&mut self.endpoints, dom, Pt::Hwpt(hwpt), old)?;
        if let Some(d) = self.domains.get_mut(&dom) {
            // The replaced table's HWPT goes.
            d.nested = Some(nested);
        }
        info!("domain {domain}: guest table on nested HWPT {hwpt} (over {on})");
        self.persist();
        Ok(())
    }

    fn detach_table(&mut self, domain: u32) -> Result<(), BackendError> {
        let dom = DomainId(domain);
        let dev = self.pasid_dev();
        let d = self.domains.get_mut(&dom);
        let d = d.ok_or(BackendError::Internal("detach table of an unknown domain"))?;
        let Some(nested) = d.nested.as_ref().map(Nested::id) else {
            return Ok(());
        };
        let pt = d.space.as_mut().unwrap_or(&mut self.stage2).target(dev)?;
        move_domain(&mut self.endpoints, dom, pt, Pt::Hwpt(nested))?;
        if let Some(d) = self.domains.get_mut(&dom) {
            d.nested = None;
        }
        self.persist();
        Ok(())
    }

    fn attach_pasid(&mut self, endpoint: u32, pasid: u32, domain: u32) -> Result<(), BackendError> {
        let ep = EndpointId(endpoint);
        if !self.endpoints.contains_key(&ep) {
            // Not a host device: nothing to do on the host.
            return Ok(());
        }
        if self.pasid_dev().is_none() {
            return Err(BackendError::Unsupported("the host device has no PASIDs"));
        }
        let pt = self.domain_pt(DomainId(domain))?;
        match self.endpoints.get_mut(&ep) {
            Some(e) => e.attach_pasid(pasid, pt, DomainId(domain)),
            None => Ok(()),
        }
    }

    fn detach_pasid(&mut self, endpoint: u32, pasid: u32) -> Result<(), BackendError> {
        match self.endpoints.get_mut(&EndpointId(endpoint)) {
            Some(e) => e.detach_pasid(pasid),
            None => Ok(()),
        }
    }

    fn invalidate(&mut self, domain: u32, inv: &Invalidate) -> Result<(), BackendError> {
        let dom = DomainId(domain);
        let Some(n) = self.nest.as_ref() else {
            return Ok(());
        };
        let Some(nested) = (self.domains.get(&dom))
            .and_then(|d| d.nested.as_ref())
            .map(Nested::id)
        else {
            return Ok(());
        };
        let users: Vec<EndpointId> = (self.endpoints.iter())
            .filter(|(_, e)| e.uses(dom))
            .map(|(id, _)| *id)
            .collect();
        n.invalidate(&self.fd, nested, &users, inv)
    }

    fn page_request_fd(&self) -> Option<std::os::fd::RawFd> {
        self.nest.as_ref()?.page_request_fd()
    }

    fn page_requests(&mut self) -> Vec<HostPageRequest> {
        let endpoints = &self.endpoints;
        let endpoint_of = |dev: DevId| {
            let mut eps = endpoints.iter();
            eps.find(|(_, e)| e.dev.dev_id() == Some(dev))
                .map(|(id, _)| *id)
        };
        match self.nest.as_mut() {
            Some(n) => n.page_requests(endpoint_of),
            None => Vec::new(),
        }
    }

    fn host_faults(&mut self) -> Vec<HostFault> {
        let endpoints = &self.endpoints;
        match self.nest.as_mut() {
            Some(n) => n.host_faults(|ep| endpoints.contains_key(&ep)),
            None => Vec::new(),
        }
    }

    fn page_response(&mut self, cookie: u32, code: u16) -> Result<(), BackendError> {
        match self.nest.as_mut() {
            Some(n) => n.respond(cookie, code),
            None => Err(BackendError::Internal(
                "page response without a fault queue",
            )),
        }
    }
}

impl Drop for IommufdBackend {
    /// Closing the iommufd destroys every object in it, unless a launcher or VMM still holds
    /// the same iommufd: so nothing outlives the daemon there either, the guest's objects are
    /// released as on a disconnect (devices moved off them first), then the fields go in
    /// order, each object with its owner.
    ///
    /// Stopping before an adoption ends: the adopted devices are kept (not unbound or
    /// destroyed) and the previous process's objects stay as they were (DMA goes on); the
    /// objects file keeps saying so, for the next process to adopt them.
    fn drop(&mut self) {
        let kept = self.adopting.take().map(|a| {
            for ep in self.adopted() {
                if let Some(e) = self.endpoints.remove(&ep) {
                    e.dev.keep();
                }
            }
            a.saved.to_json()
        });
        self.reset(ResetKind::Connection);
        self.objects.on_exit(kept);
    }
}

#[cfg(test)]
mod tests;
