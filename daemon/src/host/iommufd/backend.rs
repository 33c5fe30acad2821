//! The backend's state: the objects it holds, in the order they go, and what the operations
//! of mod.rs share: start-up, the page table each endpoint attaches to, the objects file, the
//! end of an adoption, the control socket's view.

use std::collections::BTreeMap;
use std::path::Path;

use log::{info, warn};
use model::host::{BackendError, HostLimits};
use serde_json::{json, Value};

use super::adopt::{Adoption, Persist, Saved, SavedDevice, SavedEndpoint};
use super::config::{IommufdConfig, SetupError};
use super::device::Endpoints;
use super::domain::Domain;
use super::hwpt::Space;
use super::ids::{DevId, DomainId, EndpointId, HwptId, IoasId, Iommufd, ObjId, Pt};
use super::nest::{self, Nest};
use super::ram::GuestRam;
use super::{ioas, setup};

/// The iommufd backend (module documentation). Fields in the order they go.
#[derive(Debug)]
pub struct IommufdBackend {
    /// A previous process's objects, until the journaled state is resumed or dropped.
    pub(super) adopting: Option<Adoption>,
    /// The host devices: the first to go, so nothing is attached to what goes after.
    pub(super) endpoints: Endpoints,
    pub(super) domains: BTreeMap<DomainId, Domain>,
    /// Guest-table nesting, when the host IOMMU does it.
    pub(super) nest: Option<Nest>,
    pub(super) blocked: Space,
    pub(super) stage2: Space,
    pub(super) ram: GuestRam,
    /// IOVA ranges every host device can map (the blocked IOAS's ranges with all attached).
    pub(super) allowed: Vec<(u64, u64)>,
    pub(super) iova_alignment: u64,
    pub(super) unattached_bypass: bool,
    /// The object ids kept for a restarted daemon (`--state-dir`, adopt.rs); written last.
    pub(super) objects: Persist,
    pub(super) fd: Iommufd,
}

impl IommufdBackend {
    /// Open (or take over) the iommufd, create the blocked and stage-2 IOASes, bind every
    /// configured host device and attach it to the blocked IOAS.
    /// With `state_dir`, the object ids are kept in `DIR/iommufd-objects` and a previous
    /// process's devices in the same iommufd are adopted (adopt.rs).
    pub fn open(cfg: &IommufdConfig, state_dir: Option<&Path>) -> Result<Self, SetupError> {
        let (fd, mut handover) = setup::open_iommufd(cfg)?;
        let (file, saved) = setup::previous(&fd, state_dir)?;
        let blocked = Space::alloc(&fd)?;
        let stage2 = Space::alloc(&fd)?;
        let mut b = IommufdBackend {
            adopting: saved.map(Adoption::new),
            endpoints: Endpoints::new(),
            domains: BTreeMap::new(),
            nest: None,
            blocked,
            stage2,
            ram: GuestRam::default(),
            allowed: Vec::new(),
            iova_alignment: 1,
            unattached_bypass: false,
            objects: Persist::new(file),
            fd,
        };
        // From here on, Drop releases what was created if a later step fails.
        for (&id, src) in &cfg.devices {
            let ep = EndpointId(id);
            let old = b
                .adopting
                .as_ref()
                .and_then(|a| a.saved.endpoints.iter().find(|e| e.endpoint == ep));
            let e = setup::open_device(&b.fd, ep, src, old, &mut handover, b.blocked.id())?;
            b.endpoints.insert(ep, e);
        }
        let (allowed, align) = ioas::iova_ranges(&b.fd, b.blocked.id())?;
        b.allowed = allowed;
        b.iova_alignment = align.max(1);
        let adopted = b.adopted();
        if let Some(a) = b.adopting.as_mut() {
            // Old mock devices no endpoint took over go first.
            let orphans = a
                .saved
                .endpoints
                .iter()
                .filter(|e| !adopted.contains(&e.endpoint));
            let orphans: Vec<ObjId> = orphans
                .filter_map(|e| match e.dev {
                    SavedDevice::Mock { stdev, .. } => Some(stdev.into()),
                    SavedDevice::Vfio { .. } | SavedDevice::Vmm => None,
                })
                .collect();
            a.old.splice(0..0, orphans);
            // The adopted devices are not on the new blocked IOAS: their limits are the saved
            // ones.
            if !adopted.is_empty() {
                b.allowed = a.saved.allowed.clone();
                b.iova_alignment = a.saved.iova_alignment.max(1);
            }
            info!(
                "objects of a previous process adopted: endpoints {:?} keep their HWPTs until the journaled state is resumed or dropped; then objects {:?} go",
                adopted.iter().map(|e| e.0).collect::<Vec<_>>(),
                a.old.iter().map(|o| o.0).collect::<Vec<_>>()
            );
        }
        b.nest = match b.devices() {
            Some(devices) => Nest::setup(&b.fd, &devices, b.stage2.id()),
            None => {
                info!("a host device is bound by the VMM (no device id here): no guest tables");
                None
            }
        };
        if b.pasid_dev().is_some() {
            // Leave the automatic domain of the blocked IOAS for a PASID-compatible HWPT.
            let ids: Vec<EndpointId> = b.endpoints.keys().copied().collect();
            for ep in ids {
                let moved = b
                    .unattached_pt()
                    .and_then(|pt| b.move_endpoint(ep, pt, None));
                if let Err(e) = moved {
                    warn!("endpoint {ep}: cannot move to a PASID-compatible HWPT: {e}");
                }
            }
        }
        b.persist();
        Ok(b)
    }

    /// The host's limits: IOVA holes inside `[lo, hi]` and the page sizes it can map.
    pub fn limits(&self, lo: u64, hi: u64) -> HostLimits {
        // IOAS_MAP needs page-aligned user addresses and lengths, and the IOMMU's alignment.
        // SAFETY: sysconf has no memory arguments.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let granule = self.iova_alignment.max(page).next_power_of_two();
        HostLimits {
            page_size_mask: !(granule - 1),
            holes: model::host::holes_of(&self.allowed, lo, hi),
        }
    }

    /// The host IOVA ranges, for tests and the control socket.
    pub fn allowed(&self) -> &[(u64, u64)] {
        &self.allowed
    }

    /// The endpoints whose device was adopted from a previous process.
    pub(super) fn adopted(&self) -> Vec<EndpointId> {
        let adopted = self.endpoints.iter().filter(|(_, e)| e.adopted);
        adopted.map(|(id, _)| *id).collect()
    }

    /// The host devices, for the nesting host; None if a device has no id the daemon knows
    /// (bound by the VMM): guest tables need every device's id.
    pub(super) fn devices(&self) -> Option<Vec<nest::Dev>> {
        let devs = self.endpoints.iter();
        devs.map(|(id, e)| Some((*id, e.dev.dev_id()?))).collect()
    }

    /// With PASIDs on every host device: the device paging HWPTs are allocated for.
    pub(super) fn pasid_dev(&self) -> Option<DevId> {
        self.nest.as_ref().and_then(Nest::pasid_dev)
    }

    /// Where an endpoint without a domain goes.
    pub(super) fn unattached(&mut self) -> &mut Space {
        if self.unattached_bypass {
            &mut self.stage2
        } else {
            &mut self.blocked
        }
    }

    /// What an endpoint without a domain attaches to.
    pub(super) fn unattached_pt(&mut self) -> Result<Pt, BackendError> {
        let dev = self.pasid_dev();
        self.unattached().target(dev)
    }

    /// [`Self::unattached_pt`], or the IOAS itself if no HWPT can be made for it.
    pub(super) fn unattached_fallback(&mut self) -> Pt {
        let ioas = self.unattached().id();
        self.unattached_pt().unwrap_or(Pt::Ioas(ioas))
    }

    /// Where `domain`'s endpoints and PASIDs attach.
    pub(super) fn domain_pt(&mut self, domain: DomainId) -> Result<Pt, BackendError> {
        let dev = self.pasid_dev();
        let d = self.domains.get_mut(&domain);
        let d = d.ok_or(BackendError::Internal("unknown domain"))?;
        d.pt(&mut self.stage2, dev)
    }

    /// Move `endpoint` to `pt` as a member of `domain`.
    pub(super) fn move_endpoint(
        &mut self,
        endpoint: EndpointId,
        pt: Pt,
        domain: Option<DomainId>,
    ) -> Result<(), BackendError> {
        match self.endpoints.get_mut(&endpoint) {
            Some(e) => e.move_to(pt, domain),
            // Not a host device (e.g. a device the VMM emulates): nothing to do on the host.
            None => Ok(()),
        }
    }

    /// Take over the devices the VMM binds that the daemon has not attached yet: each goes to
    /// where the device model has its endpoint (its domain, else blocked or stage 2 as the
    /// bypass bit says). Called when the driver starts the device (the vhost-user memory
    /// table comes with every start), when the VMM has long bound them; a device still
    /// unbound (EINVAL) stays where it is, and is tried again at the next start.
    pub(super) fn claim_shared(&mut self) {
        let unclaimed: Vec<(EndpointId, Option<DomainId>)> = (self.endpoints.iter())
            .filter(|(_, e)| !e.claimed)
            .map(|(id, e)| (*id, e.domain))
            .collect();
        for (ep, domain) in unclaimed {
            let pt = match domain {
                Some(d) => self.domain_pt(d),
                None => self.unattached_pt(),
            };
            match pt.and_then(|pt| self.move_endpoint(ep, pt, domain)) {
                Ok(()) => info!(
                    "endpoint {ep}: taken over from the VMM's attachment, now on hwpt {}",
                    self.endpoints.get(&ep).map_or(0, |e| e.hwpt.0)
                ),
                Err(e) => warn!("endpoint {ep}: still on the VMM's attachment: {e}"),
            }
        }
    }

    /// The explicit paging HWPTs, by IOAS.
    pub(super) fn paging(&self) -> Vec<(IoasId, HwptId)> {
        let spaces = [&self.blocked, &self.stage2].into_iter();
        let spaces = spaces.chain(self.domains.values().filter_map(|d| d.space.as_ref()));
        let mut v: Vec<_> = spaces.filter_map(|s| Some((s.id(), s.paging()?))).collect();
        v.sort_unstable();
        v
    }

    /// The objects file's content for the current objects.
    pub(super) fn saved(&self) -> Saved {
        let nested = self.domains.values().filter_map(|d| d.nested.as_ref());
        let mut objects: Vec<ObjId> = nested.map(|n| n.id().into()).collect();
        let (nest_objects, fault) = self.nest.as_ref().map(Nest::objects).unwrap_or_default();
        objects.extend(nest_objects);
        objects.extend(self.paging().into_iter().map(|(_, h)| ObjId::from(h)));
        objects.extend(fault.map(ObjId::from));
        let spaces = self.domains.values().filter_map(|d| d.space.as_ref());
        objects.extend(spaces.map(|s| ObjId::from(s.id())));
        objects.extend([self.stage2.id(), self.blocked.id()].map(ObjId::from));
        if let Some(a) = &self.adopting {
            objects.extend(a.old.iter().copied());
        }
        // A device the VMM binds is recorded once the daemon attached it (before that it is on
        // the VMM's own HWPT, and a successor claims it as this process would have).
        let endpoints = self.endpoints.iter().filter(|(_, e)| e.claimed);
        let endpoints = endpoints.map(|(&endpoint, e)| SavedEndpoint {
            endpoint,
            dev: e.dev.saved(),
            hwpt: e.hwpt,
        });
        Saved {
            blocked: self.blocked.id(),
            endpoints: endpoints.collect(),
            objects,
            allowed: self.allowed.clone(),
            iova_alignment: self.iova_alignment,
        }
    }

    /// Rewrite the objects file if the objects changed.
    pub(super) fn persist(&mut self) {
        if self.objects.enabled() {
            let v = self.saved().to_json();
            self.objects.write(&v);
        }
    }

    /// The end of an adoption: every adopted device moves to where the device model put it
    /// (one replace each, so DMA sees no gap), then the previous process's objects go.
    pub(super) fn finish_adoption(&mut self, resumed: bool) {
        let Some(a) = self.adopting.take() else {
            return;
        };
        let fallback = self.unattached_fallback();
        for (ep, e) in self.endpoints.iter_mut().filter(|(_, e)| e.adopted) {
            e.finish_adoption(*ep, fallback);
        }
        let gone = a.release(&self.fd);
        info!(
            "journaled state {}: {gone} of the previous process's {} objects released",
            if resumed { "resumed" } else { "dropped" },
            a.old.len()
        );
        self.persist();
    }

    /// Host objects, for the control socket.
    pub(super) fn describe_objects(&self) -> Value {
        let endpoints: Vec<_> = (self.endpoints.iter())
            .map(|(id, e)| e.describe(*id, self.nest.as_ref().and_then(|n| n.vdevice(*id))))
            .collect();
        let stage2 = self.stage2.id();
        let domains: Vec<_> = (self.domains.iter())
            .map(|(id, d)| d.describe(*id, stage2, &self.ram))
            .collect();
        let paging: Vec<_> = (self.paging().into_iter())
            .map(|(ioas, h)| json!({"ioas": ioas, "hwpt": h}))
            .collect();
        let (stage2_pieces, guest_ram) = self.ram.describe();
        let adopted = self.adopted();
        json!({
            "backend": "iommufd",
            "blocked_ioas": self.blocked.id(),
            "stage2_ioas": stage2,
            "unattached_bypass": self.unattached_bypass,
            "endpoints": endpoints,
            "domains": domains,
            "stage2": stage2_pieces,
            "guest_ram": guest_ram,
            "memory_tables": self.ram.stats.to_json(),
            "allowed_iovas": self.allowed,
            "iova_alignment": self.iova_alignment,
            "map_by_file": self.ram.map_file,
            "nesting": self.nest.as_ref().map(Nest::describe),
            "paging_hwpts": paging,
            "adopting": self.adopting.as_ref().map(|a| json!({
                "endpoints": adopted,
                "old_objects": a.old,
            })),
        })
    }
}
