//! The nesting host (docs/IOMMUFD.md, "Guest tables"): what makes guest tables take effect on
//! a host IOMMU that nests (VT-d with ECAP.NEST, SMMUv3 with S1P and S2P, or the selftest mock),
//! as GET_HW_INFO tells.
//!
//! - the **fault queue** nested HWPTs report page requests to, and the epoll set the vhost
//!   worker watches (fault.rs), for as long as the backend lives;
//! - made on first use ([`Base`]): a **nesting parent** HWPT over the stage-2 IOAS
//!   (IOMMU_HWPT_ALLOC_NEST_PARENT), and on SMMUv3 and the mock a **vIOMMU** over it with a
//!   **vDEVICE** per host device (virtual ID = the endpoint id) and its **vEVENTQ**;
//! - a **nested HWPT** per table domain ([`Nested`]: SMMUv3 on the vIOMMU with the STE built from
//!   the guest's CD-table binding; VT-d VTD_S1 on the parent; the mock its SELFTEST data),
//!   holding the objects under it;
//! - the invalidations of each host kind (encoded in wire.rs).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use iommufd_sys as sys;
use log::{info, warn};
use model::guest_tables::{Binding, Invalidate};
use model::host::{
    BackendError, HostFault, HostIommu, HostPageRequest, HOST_IOMMU_SELFTEST, HOST_IOMMU_SMMUV3,
    HOST_IOMMU_VTD,
};
use serde_json::{json, Value};

use super::device;
use super::fault::{FaultQueue, Watch};
use super::hwpt::{self, On};
use super::ids::{os_err, DevId, EndpointId, FaultId, HwptId, IoasId, Iommufd, ObjId, OsResult};
use super::ids::{Owned, VdeviceId, ViommuId};
use super::mock;
use super::viommu::{self, EventParser, Veventq};
use super::wire;

/// The host IOMMU kinds that nest guest tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestKind {
    Vtd,
    Smmuv3,
    /// The iommufd selftest mock (CONFIG_IOMMUFD_TEST): checks the uAPI, translates nothing.
    Selftest,
}

/// VT-d ECAP_REG.NEST (bit 26); SMMUv3 IDR0.S1P (bit 1) and S2P (bit 0).
const VTD_ECAP_NEST: u64 = 1 << 26;
const SMMU_IDR0_S1P_S2P: u32 = 0b11;

/// Which nesting a GET_HW_INFO answer allows: `data` is `struct iommu_hw_info_vtd`
/// (`{u32 flags, u32 rsvd, u64 cap_reg, u64 ecap_reg}`) or `struct iommu_hw_info_arm_smmuv3`
/// (`{u32 flags, u32 rsvd, u32 idr[6], ...}`).
pub fn nest_kind(info_type: u32, data: &[u8; 64]) -> Option<NestKind> {
    let le64 = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[o..o + 8]);
        u64::from_le_bytes(b)
    };
    match info_type {
        sys::IOMMU_HW_INFO_TYPE_INTEL_VTD if le64(16) & VTD_ECAP_NEST != 0 => Some(NestKind::Vtd),
        sys::IOMMU_HW_INFO_TYPE_ARM_SMMUV3
            if (le64(8) as u32) & SMMU_IDR0_S1P_S2P == SMMU_IDR0_S1P_S2P =>
        {
            Some(NestKind::Smmuv3)
        }
        sys::IOMMU_HW_INFO_TYPE_SELFTEST => Some(NestKind::Selftest),
        _ => None,
    }
}

/// The PROBE view of a host IOMMU from its GET_HW_INFO data (`nest_kind` has classified it).
pub fn host_iommu(kind: Option<NestKind>, data: &[u8; 64]) -> HostIommu {
    let (kind, regs) = match kind {
        // struct iommu_hw_info_arm_smmuv3: idr[6], iidr, aidr after {u32 flags, u32 rsvd}.
        Some(NestKind::Smmuv3) => (HOST_IOMMU_SMMUV3, data[8..40].to_vec()),
        // struct iommu_hw_info_vtd: cap_reg, ecap_reg after {u32 flags, u32 rsvd}.
        Some(NestKind::Vtd) => (HOST_IOMMU_VTD, data[8..24].to_vec()),
        Some(NestKind::Selftest) | None => (HOST_IOMMU_SELFTEST, Vec::new()),
    };
    HostIommu {
        kind,
        regs,
        pasid_bits: 0,
    }
}

/// The nested HWPT data for `binding` on a `kind` host: (data type, bytes).
pub fn nested_data(kind: NestKind, binding: &Binding) -> Result<(u32, Vec<u8>), BackendError> {
    match (kind, binding) {
        (NestKind::Selftest, _) => Ok(mock::nested_data()),
        (NestKind::Smmuv3, Binding::CdTable(ste)) => {
            let words = ste.to_iommufd(&pasid::smmuv3::ste::SteHostPolicy::default());
            Ok((
                sys::IOMMU_HWPT_DATA_ARM_SMMUV3,
                pasid::smmuv3::ste::iommufd_ste_bytes(words).to_vec(),
            ))
        }
        (NestKind::Vtd, Binding::Vtd(fs)) => {
            let p = fs.params();
            let b = pasid::vtd::VtdS1Binding {
                pasid: 0,
                pgd: p.pgtbl,
                addr_width: p.addr_width,
                flags: p.flags,
            };
            Ok((sys::IOMMU_HWPT_DATA_VTD_S1, b.to_hwpt().to_bytes().to_vec()))
        }
        (NestKind::Smmuv3, _) => Err(BackendError::Unsupported(
            "an SMMUv3 host nests CD tables (format ARM_SMMUV3) only",
        )),
        (NestKind::Vtd, _) => Err(BackendError::Unsupported(
            "a VT-d host nests first-stage tables (format INTEL_VTD_S1) only",
        )),
    }
}

/// The objects nested HWPTs are made on, made when a guest binds its first table: a nesting
/// parent is a real stage-2 page table, so it pins all of guest RAM while it exists (a guest
/// that binds no table pins nothing for it). Shared by the nested HWPTs and the nesting host;
/// gone with the last of them. Fields in the order they go.
#[derive(Debug)]
pub struct Base {
    vdevices: BTreeMap<EndpointId, Owned<VdeviceId>>,
    veventq: Option<Veventq>,
    viommu: Option<Owned<ViommuId>>,
    parent: Owned<HwptId>,
}

/// A nested HWPT: a guest table on the host. It holds the objects under it, which go after it.
#[derive(Debug)]
pub struct Nested {
    hwpt: Owned<HwptId>,
    _base: Arc<Base>,
}

impl Nested {
    pub fn id(&self) -> HwptId {
        self.hwpt.id()
    }
}

/// A host device, as the nesting host sees it: its endpoint and iommufd device.
pub type Dev = (EndpointId, DevId);

/// The nesting host (module documentation).
#[derive(Debug)]
pub struct Nest {
    kind: NestKind,
    /// The vIOMMU type of the host (SMMUv3, mock), None on VT-d.
    viommu_type: Option<u32>,
    /// What PROBE says about the host IOMMU.
    host: HostIommu,
    /// Every host device has PASIDs: HWPTs are allocated with IOMMU_HWPT_ALLOC_PASID.
    pasid: bool,
    /// A host device to allocate HWPTs for.
    dev: DevId,
    /// The nesting parent and what is on it, while a guest table needs them.
    base: Option<Arc<Base>>,
    fault: Option<FaultQueue>,
    /// The fault queue and the vEVENTQ: the fd the vhost worker watches.
    watch: Option<Watch>,
    /// Faults read from the vEVENTQ.
    faults: u64,
}

impl Nest {
    /// The nesting host, when every host device's IOMMU nests (same kind); `devices` in
    /// endpoint order. Checks now that the host makes the objects, while the stage-2 IOAS is
    /// still empty. None: the backend serves MAP domains only (failures are logged).
    pub fn setup(fd: &Iommufd, devices: &[Dev], stage2: IoasId) -> Option<Nest> {
        let mut kind = None;
        let mut pasid = true;
        let mut host: Option<HostIommu> = None;
        for (ep, dev) in devices {
            match device::hw_info(fd, *dev) {
                Ok((t, data, pasid_log2)) => {
                    let k = nest_kind(t, &data);
                    info!("endpoint {ep}: host IOMMU type {t:#x}, PASID width {pasid_log2}, nesting {k:?}");
                    if k.is_none() || (kind.is_some() && kind != k) {
                        return None;
                    }
                    kind = k;
                    pasid &= pasid_log2 > 0;
                    // PROBE reports the first device's registers and the narrowest PASID width.
                    let bits = host
                        .as_ref()
                        .map_or(pasid_log2, |h| h.pasid_bits.min(pasid_log2));
                    let mut h = host.take().unwrap_or_else(|| host_iommu(k, &data));
                    h.pasid_bits = bits;
                    host = Some(h);
                }
                Err(e) => {
                    info!("endpoint {ep}: {e}: no guest tables on this host");
                    return None;
                }
            }
        }
        let (Some(kind), Some(&(_, dev)), Some(host)) = (kind, devices.first(), host) else {
            return None;
        };
        let viommu_type = match kind {
            NestKind::Smmuv3 => Some(sys::IOMMU_VIOMMU_TYPE_ARM_SMMUV3),
            NestKind::Selftest => Some(sys::IOMMU_VIOMMU_TYPE_SELFTEST),
            NestKind::Vtd => None,
        };
        let fault = FaultQueue::alloc(fd)
            .map_err(|e| warn!("no fault queue (page requests are not reported): {e}"))
            .ok();
        let watch = Watch::new();
        if let (Some(w), Some(f)) = (watch.as_ref(), fault.as_ref()) {
            if let Err(e) = w.add(f.file()) {
                warn!("cannot watch the fault queue: {e}");
            }
        }
        let mut nest = Nest {
            kind,
            viommu_type,
            host,
            pasid,
            dev,
            base: None,
            fault,
            watch,
            faults: 0,
        };
        match nest.base(fd, stage2, devices) {
            Ok(b) => {
                info!(
                    "guest tables: {kind:?} host (nesting parent {}, vIOMMU {:?} made and released), fault queue {:?}, PASIDs {pasid}",
                    b.parent.id(),
                    b.viommu.as_ref().map(|v| v.id().0),
                    nest.fault.as_ref().map(|f| f.id().0)
                );
                drop(b);
                nest.release();
                Some(nest)
            }
            Err(e) => {
                warn!("no guest tables: {e}");
                None
            }
        }
    }

    pub fn kind(&self) -> NestKind {
        self.kind
    }

    pub fn host(&self) -> &HostIommu {
        &self.host
    }

    /// The device HWPTs are allocated for.
    pub fn dev(&self) -> DevId {
        self.dev
    }

    /// With PASIDs on every host device: the device paging HWPTs (allocated with
    /// IOMMU_HWPT_ALLOC_PASID) are made for.
    pub fn pasid_dev(&self) -> Option<DevId> {
        self.pasid.then_some(self.dev)
    }

    /// The nesting parent over `stage2` and what is on it (a vDEVICE for each of `devices`),
    /// made on first use.
    pub fn base(
        &mut self,
        fd: &Iommufd,
        stage2: IoasId,
        devices: &[Dev],
    ) -> Result<Arc<Base>, BackendError> {
        if let Some(b) = &self.base {
            return Ok(b.clone());
        }
        let parent = hwpt::alloc(
            fd,
            self.dev,
            On::Ioas(stage2),
            sys::IOMMU_HWPT_ALLOC_NEST_PARENT,
            sys::IOMMU_HWPT_DATA_NONE,
            &[],
            None,
        )
        .os()?;
        let viommu = match self.viommu_type {
            Some(t) => Some(viommu::alloc(fd, t, self.dev, parent.id()).map_err(os_err)?),
            None => None,
        };
        let mut vdevices = BTreeMap::new();
        if let Some(v) = &viommu {
            for &(ep, dev) in devices {
                match viommu::vdevice(fd, v.id(), dev, ep) {
                    Ok(id) => {
                        vdevices.insert(ep, id);
                    }
                    Err(err) => warn!("endpoint {ep}: no vDEVICE: {err}"),
                }
            }
        }
        let veventq = viommu.as_ref().and_then(|v| self.open_veventq(fd, v.id()));
        let b = Arc::new(Base {
            vdevices,
            veventq,
            viommu,
            parent,
        });
        self.base = Some(b.clone());
        Ok(b)
    }

    /// The vIOMMU's event queue (Linux 6.15), watched through the epoll set. Without it (older
    /// kernel, VT-d) host faults of guest tables are not reported to the guest.
    fn open_veventq(&self, fd: &Iommufd, viommu: ViommuId) -> Option<Veventq> {
        let w = self.watch.as_ref()?;
        let t = match self.kind {
            NestKind::Smmuv3 => sys::IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
            NestKind::Selftest => sys::IOMMU_VEVENTQ_TYPE_SELFTEST,
            NestKind::Vtd => return None,
        };
        let q = Veventq::alloc(fd, viommu, t, 64)
            .map_err(|e| warn!("no vEVENTQ (host faults are not reported): {e}"))
            .ok()?;
        if let Err(e) = w.add(q.file()) {
            warn!("cannot watch the vEVENTQ: {e}");
        }
        Some(q)
    }

    /// Let go of the nesting objects: they go now if no nested HWPT holds them (a connection
    /// ended: the stage-2 IOAS is unpinned).
    pub fn release(&mut self) {
        self.base = None;
    }

    /// A nested HWPT on `base` for device `dev` with `data` (from [`nested_data`]); returns it
    /// and what it is on.
    pub fn alloc_nested(
        &self,
        fd: &Iommufd,
        base: &Arc<Base>,
        dev: DevId,
        (data_type, data): (u32, Vec<u8>),
    ) -> Result<(Nested, On), BackendError> {
        let parent = On::Parent(base.parent.id());
        let viommu = base.viommu.as_ref().map(|v| On::Viommu(v.id()));
        let on = match self.kind {
            NestKind::Smmuv3 => {
                viommu.ok_or(BackendError::Internal("SMMUv3 nesting without a vIOMMU"))?
            }
            // On the vIOMMU, as on SMMUv3, when there is one: the mock then knows the device's
            // vIOMMU and virtual id (its events carry them).
            NestKind::Selftest => viommu.unwrap_or(parent),
            NestKind::Vtd => parent,
        };
        let flags = if self.pasid {
            sys::IOMMU_HWPT_ALLOC_PASID
        } else {
            0
        };
        let fault = self.fault.as_ref().map(FaultQueue::id);
        let hwpt = match hwpt::alloc(fd, dev, on, flags, data_type, &data, fault) {
            // A host that cannot report page requests for this device: without.
            Err(e) if e.errno == libc::EOPNOTSUPP && fault.is_some() => {
                hwpt::alloc(fd, dev, on, flags, data_type, &data, None).os()?
            }
            r => r.os()?,
        };
        let nested = Nested {
            hwpt,
            _base: base.clone(),
        };
        Ok((nested, on))
    }

    /// Invalidate the host's caches of the guest table of `nested`, used by `users`, as `inv`
    /// says.
    pub fn invalidate(
        &self,
        fd: &Iommufd,
        nested: HwptId,
        users: &[EndpointId],
        inv: &Invalidate,
    ) -> Result<(), BackendError> {
        let base = self.base.as_deref();
        let viommu = base.and_then(|b| b.viommu.as_ref()).map(Owned::id);
        // The users with a vDEVICE: the guest ids the vIOMMU knows.
        let sids: Vec<u32> = users
            .iter()
            .filter(|ep| base.is_some_and(|b| b.vdevices.contains_key(ep)))
            .map(|ep| ep.0)
            .collect();
        match self.kind {
            NestKind::Selftest => mock::invalidate(fd, nested, viommu, &sids, inv)?,
            NestKind::Vtd => {
                if let Some(e) = wire::vtd_entry(inv) {
                    let t = sys::IOMMU_HWPT_INVALIDATE_DATA_VTD_S1;
                    hwpt::invalidate(fd, nested, t, wire::VtdInvalidate::SIZE, &e.bytes())?;
                }
            }
            NestKind::Smmuv3 => {
                let cmds = wire::smmu_commands(inv, &sids);
                if let (Some(v), false) = (viommu, cmds.is_empty()) {
                    let t = sys::IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3;
                    viommu::invalidate(fd, v, t, 16, &wire::le_bytes64(&cmds))?;
                }
            }
        }
        Ok(())
    }

    /// The fd the vhost worker watches: the epoll set, else the fault queue.
    pub fn page_request_fd(&self) -> Option<RawFd> {
        match (&self.watch, &self.fault) {
            (Some(w), _) => Some(w.raw_fd()),
            (None, Some(f)) => Some(f.file().as_raw_fd()),
            (None, None) => None,
        }
    }

    /// The page requests the fault queue has, for the endpoints `endpoint_of` their devices.
    pub fn page_requests(
        &mut self,
        endpoint_of: impl Fn(DevId) -> Option<EndpointId>,
    ) -> Vec<HostPageRequest> {
        match self.fault.as_mut() {
            Some(f) => f.page_requests(endpoint_of),
            None => Vec::new(),
        }
    }

    /// The faults the vEVENTQ has, of the endpoints `known` says exist.
    pub fn host_faults(&mut self, known: impl Fn(EndpointId) -> bool) -> Vec<HostFault> {
        let Some(q) = self.base.as_ref().and_then(|b| b.veventq.as_ref()) else {
            return Vec::new();
        };
        let (size, parse): (usize, EventParser) = match self.kind {
            NestKind::Smmuv3 => (wire::VEVENT_SMMUV3_SIZE, wire::smmu_event_fault),
            _ => mock::EVENTS,
        };
        let out = q.read(size, parse, known);
        self.faults += out.len() as u64;
        out
    }

    /// Answer a page request.
    pub fn respond(&mut self, cookie: u32, code: u16) -> Result<(), BackendError> {
        let f = self.fault.as_mut().ok_or(BackendError::Internal(
            "page response without a fault queue",
        ))?;
        f.respond(cookie, code)
    }

    /// `endpoint`'s vDEVICE, while the nesting objects exist.
    pub fn vdevice(&self, endpoint: EndpointId) -> Option<VdeviceId> {
        Some(self.base.as_ref()?.vdevices.get(&endpoint)?.id())
    }

    /// Its objects for the objects file, in the order they can be destroyed: (the vDEVICEs,
    /// vEVENTQ, vIOMMU and nesting parent; the fault queue, which goes after the HWPTs).
    pub fn objects(&self) -> (Vec<ObjId>, Option<FaultId>) {
        let mut out = Vec::new();
        if let Some(b) = &self.base {
            out.extend(b.vdevices.values().map(|v| ObjId::from(v.id())));
            out.extend(b.veventq.as_ref().map(|q| ObjId::from(q.id())));
            out.extend(b.viommu.as_ref().map(|v| ObjId::from(v.id())));
            out.push(b.parent.id().into());
        }
        (out, self.fault.as_ref().map(FaultQueue::id))
    }

    /// The control socket's view.
    pub fn describe(&self) -> Value {
        let b = self.base.as_deref();
        let (requests, responses) = self.fault.as_ref().map_or((0, 0), FaultQueue::counts);
        json!({
            "kind": format!("{:?}", self.kind),
            "parent_hwpt": b.map(|b| b.parent.id()),
            "viommu": b.and_then(|b| b.viommu.as_ref()).map(Owned::id),
            "fault_queue": self.fault.as_ref().map(FaultQueue::id),
            "pasid": self.pasid,
            "page_requests": requests,
            "page_responses": responses,
            "veventq": b.and_then(|b| b.veventq.as_ref()).map(Veventq::id),
            "faults": self.faults,
        })
    }
}
