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
//!   (VFIO_DEVICE_ATTACH_IOMMUFD_PT or the mock's MOCK_DOMAIN_REPLACE, both atomic replaces).
//!
//! The blocked and stage-2 IOASes and the devices live as long as the daemon; domain IOASes and
//! stage-2 contents live as long as the guest made them, and `reset` releases them.
//!
//! Guest tables (the PASID extension, docs/PASID.md), when GET_HW_INFO says the host IOMMU
//! nests (VT-d with ECAP.NEST, SMMUv3 with S1P and S2P, or the selftest mock):
//! - a **nesting parent** HWPT over the stage-2 IOAS (IOMMU_HWPT_ALLOC_NEST_PARENT);
//! - SMMUv3 and mock: a **vIOMMU** over the parent and a **vDEVICE** per host endpoint whose
//!   virtual ID is the endpoint id (the guest's StreamID);
//! - a **nested HWPT** per table domain (SMMUv3: allocated on the vIOMMU with the STE the
//!   device builds from the guest's CD-table binding; VT-d: VTD_S1 on the parent; mock: its
//!   SELFTEST data), the domain's endpoints and PASIDs attached to it;
//! - a **fault queue** the nested HWPTs report page requests to (read by the vhost worker);
//! - when every host device has PASIDs, every HWPT is allocated with IOMMU_HWPT_ALLOC_PASID
//!   (an IOAS's automatic domain would refuse PASID attachments next to it), explicitly per
//!   IOAS (`paging`).

mod adopt;
pub mod nesting;
mod ram;
pub use iommufd_sys as sys;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use log::{error, info, warn};
use serde_json::json;

use super::fdpass::Handover;
use model::guest_tables::{Binding, Invalidate};
use model::host::{
    BackendError, GuestRegion, HostBackend, HostFault, HostIommu, HostLimits, HostPageRequest,
    ResetKind, HOST_IOMMU_SELFTEST, HOST_IOMMU_SMMUV3, HOST_IOMMU_VTD,
};
use model::protocol::{MAP_F_MMIO, MAP_F_READ, MAP_F_WRITE};
use ram::{HostMap, MemStats, Piece, Ram};

/// Where the host device of an endpoint comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSource {
    /// A VFIO device cdev, `/dev/vfio/devices/vfioN`.
    Vfio(PathBuf),
    /// A PCI device bound to vfio-pci, `DDDD:BB:DD.F`; its cdev is found through sysfs.
    Pci(String),
    /// A device fd handed over by the launcher (`fd-socket`).
    Passed,
    /// An iommufd selftest mock device (CONFIG_IOMMUFD_TEST kernels; for tests).
    Mock,
}

/// `[iommufd]` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IommufdConfig {
    /// The iommufd character device [default: /dev/iommu]; unused when the launcher hands over
    /// an iommufd.
    pub iommufd: Option<PathBuf>,
    /// Receive fds from a launcher listening here (backend/fdpass.rs).
    pub fd_socket: Option<PathBuf>,
    /// The host device of each guest endpoint id.
    pub devices: BTreeMap<u32, DeviceSource>,
}

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

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot open {path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error(transparent)]
    FdPass(#[from] super::fdpass::FdPassError),
    #[error("PCI device {bdf}: no VFIO cdev under {dir} (is it bound to vfio-pci, and VFIO_DEVICE_CDEV enabled?)")]
    NoCdev { bdf: String, dir: String },
    #[error("endpoint {0}: configured as `fd` but the launcher sent no device fd for it")]
    MissingFd(u32),
    #[error("the launcher sent a device fd for endpoint {0}, which the configuration does not list as `fd`")]
    UnexpectedFd(u32),
    #[error("endpoint {endpoint}: {err}")]
    Device { endpoint: u32, err: sys::SysError },
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error("the host's IOVA alignment {0:#x} leaves no page size in the configured mask")]
    PageSize(u64),
}

#[derive(Debug)]
enum HostDevice {
    Vfio { file: OwnedFd, dev_id: u32 },
    Mock { stdev: u32, idev: u32 },
}

impl HostDevice {
    /// The iommufd device id.
    fn dev_id(&self) -> u32 {
        match self {
            HostDevice::Vfio { dev_id, .. } => *dev_id,
            HostDevice::Mock { idev, .. } => *idev,
        }
    }
}

#[derive(Debug)]
struct HostEndpoint {
    dev: HostDevice,
    /// The guest domain it is attached to (None: blocked or unattached bypass).
    domain: Option<u32>,
    /// The HWPT the kernel attached it to.
    hwpt: u32,
    /// PASID attachments: PASID -> guest domain.
    pasids: BTreeMap<u32, u32>,
    /// Its vDEVICE on the vIOMMU (virtual ID = the endpoint id).
    vdevice: Option<u32>,
}

#[derive(Debug)]
struct DomainObj {
    /// The domain's IOAS; the stage-2 IOAS for a bypass domain.
    ioas: u32,
    bypass: bool,
    /// The nested HWPT of the guest table bound to it.
    nested: Option<u32>,
    /// Guest mappings with access, by first IOVA, as the IOAS holds them (ram.rs).
    maps: BTreeMap<u64, HostMap>,
    /// Pieces a failed MAP could not take back (no guest mapping owns them); retried on every
    /// memory-table change, gone with an UNMAP over them or with the domain.
    orphans: Vec<Piece>,
}

impl DomainObj {
    fn new(ioas: u32, bypass: bool) -> DomainObj {
        DomainObj {
            ioas,
            bypass,
            nested: None,
            maps: BTreeMap::new(),
            orphans: Vec::new(),
        }
    }
}

/// The host IOMMU kinds that nest guest tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestKind {
    Vtd,
    Smmuv3,
    /// The iommufd selftest mock (CONFIG_IOMMUFD_TEST): checks the uAPI, translates nothing.
    Selftest,
}

/// The nesting objects (see the module documentation).
#[derive(Debug)]
struct Nest {
    kind: NestKind,
    /// The vIOMMU type of the host (SMMUv3, mock), None on VT-d.
    viommu_type: Option<u32>,
    /// The nesting parent HWPT over the stage-2 IOAS, while a guest table needs it.
    parent: Option<u32>,
    viommu: Option<u32>,
    /// IOMMU_FAULT_QUEUE_ALLOC: object id and fd.
    fault: Option<(u32, OwnedFd)>,
    /// Every host device has PASIDs: HWPTs are allocated with IOMMU_HWPT_ALLOC_PASID.
    pasid: bool,
    /// A host device to allocate HWPTs for.
    dev_id: u32,
    /// An epoll set of the fault queue and the vEVENTQ, the fd the vhost worker watches (the
    /// vEVENTQ comes and goes with the vIOMMU).
    epoll: Option<OwnedFd>,
    /// IOMMU_VEVENTQ_ALLOC on the vIOMMU: object id and fd.
    veventq: Option<(u32, OwnedFd)>,
    /// Faults read from the vEVENTQ.
    faults: u64,
    /// Page responses written back to the fault queue.
    responses: u64,
    /// Page requests read from the fault queue.
    requests: u64,
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
        // The mock keeps an IOTLB of 4 entries and no table: the binding is checked by the
        // device model, the host sees `{u32 iotlb}` set to the mock's default.
        (NestKind::Selftest, _) => Ok((
            sys::IOMMU_HWPT_DATA_SELFTEST,
            nesting::MOCK_IOTLB_DEFAULT.to_le_bytes().to_vec(),
        )),
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

#[derive(Debug)]
pub struct IommufdBackend {
    fd: OwnedFd,
    blocked: u32,
    stage2: u32,
    endpoints: BTreeMap<u32, HostEndpoint>,
    domains: BTreeMap<u32, DomainObj>,
    memory: Vec<Ram>,
    /// The IOAS_MAPs of the stage-2 IOAS (what the kernel holds).
    stage2_pieces: Vec<Piece>,
    /// What memory-table changes did (control socket).
    mem_stats: MemStats,
    /// Map guest RAM by file (IOAS_MAP_FILE, Linux 6.13) rather than by address; cleared when
    /// the kernel does not know the call.
    map_file: bool,
    /// IOVA ranges every host device can map (the blocked IOAS's ranges with all attached).
    allowed: Vec<(u64, u64)>,
    iova_alignment: u64,
    unattached_bypass: bool,
    /// Guest-table nesting, when the host IOMMU does it.
    nest: Option<Nest>,
    /// The host IOMMU as PROBE describes it, when guest tables are supported.
    host: Option<HostIommu>,
    /// Explicit paging HWPTs of IOASes (PASID-capable hosts): IOAS -> HWPT.
    paging: BTreeMap<u32, u32>,
    /// The object ids kept for a restarted daemon (`--state-dir`, adopt.rs).
    objects: Option<adopt::ObjectsFile>,
    /// The devices of a previous process taken over, until the journaled state is resumed.
    adopting: Option<Adoption>,
}

/// A previous process's objects, taken over at start-up (adopt.rs).
#[derive(Debug)]
struct Adoption {
    /// What the objects file said (written back if this process stops before finishing).
    saved: adopt::Saved,
    /// The endpoints whose device was adopted: they stay on their old HWPT until the end.
    endpoints: BTreeSet<u32>,
    /// Where each adopted endpoint goes at the end (the last move asked for).
    deferred: BTreeMap<u32, u32>,
    /// The previous process's objects, destroyed at the end, in order.
    old: Vec<u32>,
}

/// Turns one vEVENT's data into a fault.
type EventParser = fn(&[u8]) -> Option<HostFault>;

/// Add `fd` (readable events, level-triggered) to the epoll set `ep`.
fn epoll_add(ep: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd.as_raw_fd() as u64,
    };
    // SAFETY: both fds are open for the call; `ev` is a live epoll_event the kernel only reads.
    let r =
        unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn open_rw(path: &Path) -> Result<OwnedFd, SetupError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|err| SetupError::Open {
            path: path.display().to_string(),
            err,
        })
}

/// The launcher sent a device fd for exactly the endpoints configured with `fd = true`.
fn check_handover(cfg: &IommufdConfig, h: &Handover) -> Result<(), String> {
    if let Some(ep) = h
        .devices
        .keys()
        .find(|ep| cfg.devices.get(ep) != Some(&DeviceSource::Passed))
    {
        return Err(SetupError::UnexpectedFd(*ep).to_string());
    }
    if let Some(ep) = cfg
        .devices
        .iter()
        .find(|(ep, s)| **s == DeviceSource::Passed && !h.devices.contains_key(ep))
        .map(|(ep, _)| ep)
    {
        return Err(SetupError::MissingFd(*ep).to_string());
    }
    Ok(())
}

/// `/sys/bus/pci/devices/BDF/vfio-dev/vfioN` -> `/dev/vfio/devices/vfioN`.
pub fn pci_cdev(sysfs: &Path, bdf: &str) -> Result<PathBuf, SetupError> {
    let dir = sysfs.join("bus/pci/devices").join(bdf).join("vfio-dev");
    let no = || SetupError::NoCdev {
        bdf: bdf.to_string(),
        dir: dir.display().to_string(),
    };
    let entries = std::fs::read_dir(&dir).map_err(|_| no())?;
    for e in entries.flatten() {
        let name = e.file_name();
        if let Some(n) = name.to_str().filter(|n| n.starts_with("vfio")) {
            return Ok(Path::new("/dev/vfio/devices").join(n));
        }
    }
    Err(no())
}

impl IommufdBackend {
    /// Open (or take over) the iommufd, create the blocked and stage-2 IOASes, bind every
    /// configured host device and attach it to the blocked IOAS.
    /// With `state_dir`, the object ids are kept in `DIR/iommufd-objects` and a previous
    /// process's devices in the same iommufd are adopted (adopt.rs).
    pub fn open(cfg: &IommufdConfig, state_dir: Option<&Path>) -> Result<Self, SetupError> {
        let mut handover = match &cfg.fd_socket {
            Some(p) => super::fdpass::receive(p, |h| check_handover(cfg, h))?,
            None => Handover::default(),
        };
        let fd = match handover.iommufd.take() {
            Some(fd) => fd,
            None => open_rw(cfg.iommufd.as_deref().unwrap_or(Path::new("/dev/iommu")))?,
        };
        let (objects, saved) = match state_dir {
            Some(d) => {
                let (f, s) = adopt::ObjectsFile::open(d).map_err(|err| SetupError::Open {
                    path: d.join(adopt::OBJECTS_FILE).display().to_string(),
                    err,
                })?;
                (Some(f), s)
            }
            None => (None, None),
        };
        // The same iommufd still holds the previous process's blocked IOAS (checked before
        // this process allocates ids of its own).
        let saved = saved.filter(|s| match sys::ioas_iova_ranges(fd.as_fd(), s.blocked) {
            Ok(_) => true,
            Err(e) => {
                info!(
                    "objects of a previous process: IOAS {} is not in this iommufd ({e}): another context, ignored",
                    s.blocked
                );
                false
            }
        });
        let blocked = sys::ioas_alloc(fd.as_fd())?;
        let stage2 = sys::ioas_alloc(fd.as_fd())?;
        let mut b = IommufdBackend {
            fd,
            blocked,
            stage2,
            endpoints: BTreeMap::new(),
            domains: BTreeMap::new(),
            memory: Vec::new(),
            stage2_pieces: Vec::new(),
            mem_stats: MemStats::default(),
            map_file: true,
            allowed: Vec::new(),
            iova_alignment: 1,
            unattached_bypass: false,
            nest: None,
            host: None,
            paging: BTreeMap::new(),
            objects,
            adopting: saved.map(|saved| Adoption {
                old: saved.objects.clone(),
                saved,
                endpoints: BTreeSet::new(),
                deferred: BTreeMap::new(),
            }),
        };
        // From here on, Drop releases what was created if a later step fails.
        for (&endpoint, src) in &cfg.devices {
            let dev_err = |err| SetupError::Device { endpoint, err };
            let old = b.adopting.as_ref().and_then(|a| {
                a.saved
                    .endpoints
                    .iter()
                    .find(|e| e.endpoint == endpoint)
                    .copied()
            });
            let (dev, hwpt) = match (src, old.map(|o| (o.dev, o.hwpt))) {
                // The previous process's mock device, if the kernel still knows it.
                (DeviceSource::Mock, Some((adopt::SavedDevice::Mock { stdev, idev }, hwpt)))
                    if sys::get_hw_info(b.fd.as_fd(), idev).is_ok() =>
                {
                    info!("endpoint {endpoint}: adopted mock device {stdev} (dev_id {idev}), on hwpt {hwpt}");
                    b.adopted(endpoint);
                    (HostDevice::Mock { stdev, idev }, hwpt)
                }
                // A device fd the launcher kept: still bound to this iommufd.
                (DeviceSource::Passed, Some((adopt::SavedDevice::Vfio { dev_id }, hwpt)))
                    if handover.devices.contains_key(&endpoint) =>
                {
                    let file = handover
                        .devices
                        .remove(&endpoint)
                        .ok_or(SetupError::MissingFd(endpoint))?;
                    info!("endpoint {endpoint}: adopted VFIO device (dev_id {dev_id}), on hwpt {hwpt}");
                    b.adopted(endpoint);
                    (HostDevice::Vfio { file, dev_id }, hwpt)
                }
                (DeviceSource::Mock, _) => {
                    // A mock device with PASIDs (Linux 6.15), or without on older kernels.
                    let (stdev, hwpt, idev) = match sys::mock_domain_flags(
                        b.fd.as_fd(),
                        blocked,
                        sys::MOCK_FLAGS_DEVICE_PASID,
                    ) {
                        Ok(r) => r,
                        Err(_) => sys::mock_domain(b.fd.as_fd(), blocked).map_err(dev_err)?,
                    };
                    (HostDevice::Mock { stdev, idev }, hwpt)
                }
                (DeviceSource::Vfio(_) | DeviceSource::Pci(_) | DeviceSource::Passed, _) => {
                    let file = match src {
                        DeviceSource::Vfio(p) => open_rw(p)?,
                        DeviceSource::Pci(bdf) => open_rw(&pci_cdev(Path::new("/sys"), bdf)?)?,
                        _ => handover
                            .devices
                            .remove(&endpoint)
                            .ok_or(SetupError::MissingFd(endpoint))?,
                    };
                    let dev_id = sys::vfio_bind(file.as_fd(), b.fd.as_fd()).map_err(dev_err)?;
                    let hwpt = sys::vfio_attach(file.as_fd(), blocked).map_err(dev_err)?;
                    (HostDevice::Vfio { file, dev_id }, hwpt)
                }
            };
            info!("endpoint {endpoint}: host device {dev:?} attached to the blocked IOAS (hwpt {hwpt})");
            b.endpoints.insert(
                endpoint,
                HostEndpoint {
                    dev,
                    domain: None,
                    hwpt,
                    pasids: BTreeMap::new(),
                    vdevice: None,
                },
            );
        }
        let (ranges, align) = sys::ioas_iova_ranges(b.fd.as_fd(), blocked)?;
        b.allowed = ranges.iter().map(|r| (r.start, r.last)).collect();
        b.iova_alignment = align.max(1);
        if let Some(a) = b.adopting.as_mut() {
            // Old mock devices no endpoint took over go first.
            let orphans: Vec<u32> = a
                .saved
                .endpoints
                .iter()
                .filter(|e| !a.endpoints.contains(&e.endpoint))
                .filter_map(|e| match e.dev {
                    adopt::SavedDevice::Mock { stdev, .. } => Some(stdev),
                    adopt::SavedDevice::Vfio { .. } => None,
                })
                .collect();
            a.old.splice(0..0, orphans);
            // The adopted devices are not on the new blocked IOAS: their limits are the saved ones.
            if !a.endpoints.is_empty() {
                b.allowed = a.saved.allowed.clone();
                b.iova_alignment = a.saved.iova_alignment.max(1);
            }
            info!(
                "objects of a previous process adopted: endpoints {:?} keep their HWPTs until the journaled state is resumed or dropped; then objects {:?} go",
                a.endpoints, a.old
            );
        }
        b.setup_nesting();
        b.persist();
        Ok(b)
    }

    fn adopted(&mut self, endpoint: u32) {
        if let Some(a) = self.adopting.as_mut() {
            a.endpoints.insert(endpoint);
        }
    }

    /// The objects file's content for the current objects.
    fn saved(&self) -> adopt::Saved {
        let mut objects = Vec::new();
        objects.extend(self.domains.values().filter_map(|d| d.nested));
        objects.extend(self.endpoints.values().filter_map(|e| e.vdevice));
        if let Some(n) = &self.nest {
            objects.extend(n.veventq.as_ref().map(|q| q.0));
            objects.extend(n.viommu);
            objects.extend(n.parent);
        }
        objects.extend(self.paging.values().copied());
        if let Some(n) = &self.nest {
            objects.extend(n.fault.as_ref().map(|f| f.0));
        }
        objects.extend(self.domains.values().filter(|d| !d.bypass).map(|d| d.ioas));
        objects.extend([self.stage2, self.blocked]);
        if let Some(a) = &self.adopting {
            objects.extend(a.old.iter().copied());
        }
        let endpoints = self
            .endpoints
            .iter()
            .map(|(&endpoint, e)| adopt::SavedEndpoint {
                endpoint,
                dev: match &e.dev {
                    HostDevice::Mock { stdev, idev } => adopt::SavedDevice::Mock {
                        stdev: *stdev,
                        idev: *idev,
                    },
                    HostDevice::Vfio { dev_id, .. } => adopt::SavedDevice::Vfio { dev_id: *dev_id },
                },
                hwpt: e.hwpt,
            })
            .collect();
        adopt::Saved {
            blocked: self.blocked,
            endpoints,
            objects,
            allowed: self.allowed.clone(),
            iova_alignment: self.iova_alignment,
        }
    }

    /// Rewrite the objects file if the objects changed.
    fn persist(&mut self) {
        if self.objects.is_none() {
            return;
        }
        let v = self.saved().to_json();
        if let Some(f) = self.objects.as_mut() {
            f.write(Some(&v));
        }
    }

    /// The end of an adoption: every adopted device moves to where the device model put it
    /// (one replace each, so DMA sees no gap), then the previous process's objects go.
    fn finish_adoption(&mut self, resumed: bool) {
        let Some(a) = self.adopting.take() else {
            return;
        };
        let unattached = self.unattached_pt();
        let fallback = self.target(unattached).unwrap_or(unattached);
        for &ep in &a.endpoints {
            let pt = a.deferred.get(&ep).copied().unwrap_or(fallback);
            let Some(e) = self.endpoints.get(&ep) else {
                continue;
            };
            let old = e.hwpt;
            let r = self.replace(&e.dev, pt).or_else(|err| {
                error!("endpoint {ep}: cannot move from the previous process's hwpt {old} to {pt}: {err}; blocked");
                self.replace(&e.dev, fallback)
            });
            match r {
                Ok(h) => {
                    info!(
                        "endpoint {ep}: moved from the previous process's hwpt {old} to hwpt {h}"
                    );
                    if let Some(e) = self.endpoints.get_mut(&ep) {
                        e.hwpt = h;
                    }
                }
                Err(err) => error!("endpoint {ep}: stays on hwpt {old}: {err}"),
            }
        }
        let mut gone = 0;
        for &id in &a.old {
            match sys::destroy(self.fd(), id) {
                Ok(()) => gone += 1,
                Err(e) => warn!("previous process's object {id}: {e}"),
            }
        }
        info!(
            "journaled state {}: {gone} of the previous process's {} objects released",
            if resumed { "resumed" } else { "dropped" },
            a.old.len()
        );
        self.persist();
    }

    /// Create the nesting objects when every host device's IOMMU nests (same kind). Without
    /// nesting the backend serves MAP domains only (`guest_tables()` false); any failure here
    /// is logged and leaves it so.
    fn setup_nesting(&mut self) {
        let mut kind = None;
        let mut pasid = true;
        let mut host: Option<HostIommu> = None;
        for (ep, e) in &self.endpoints {
            match sys::get_hw_info(self.fd(), e.dev.dev_id()) {
                Ok((t, data, pasid_log2)) => {
                    let k = nest_kind(t, &data);
                    info!("endpoint {ep}: host IOMMU type {t:#x}, PASID width {pasid_log2}, nesting {k:?}");
                    if k.is_none() || (kind.is_some() && kind != k) {
                        return;
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
                    return;
                }
            }
        }
        let (Some(kind), Some(dev_id)) =
            (kind, self.endpoints.values().next().map(|e| e.dev.dev_id()))
        else {
            return;
        };
        let viommu_type = match kind {
            NestKind::Smmuv3 => Some(sys::IOMMU_VIOMMU_TYPE_ARM_SMMUV3),
            NestKind::Selftest => Some(sys::IOMMU_VIOMMU_TYPE_SELFTEST),
            NestKind::Vtd => None,
        };
        let fault = match sys::fault_queue_alloc(self.fd()) {
            Ok((id, ffd)) => {
                // SAFETY: fcntl on an fd we own; F_SETFL takes an int.
                let r = unsafe { libc::fcntl(ffd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
                if r < 0 {
                    warn!("fault queue: cannot make it non-blocking");
                }
                Some((id, ffd))
            }
            Err(e) => {
                warn!("no fault queue (page requests are not reported): {e}");
                None
            }
        };
        // SAFETY: epoll_create1 has no memory arguments; a non-negative result is a new fd we own.
        let epoll = match unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } {
            r if r >= 0 => {
                // SAFETY: `r` is a new fd nobody else owns.
                Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) })
            }
            _ => {
                warn!("epoll_create1: {}", std::io::Error::last_os_error());
                None
            }
        };
        if let (Some(ep), Some((_, ffd))) = (epoll.as_ref(), fault.as_ref()) {
            if let Err(e) = epoll_add(ep.as_fd(), ffd.as_fd()) {
                warn!("cannot watch the fault queue: {e}");
            }
        }
        self.host = host;
        self.nest = Some(Nest {
            kind,
            viommu_type,
            parent: None,
            viommu: None,
            fault,
            epoll,
            veventq: None,
            faults: 0,
            pasid,
            dev_id,
            responses: 0,
            requests: 0,
        });
        // Check now that the host makes the objects, while the stage-2 IOAS is still empty (a
        // nesting parent pins all of stage 2: it is made again when a guest binds a table).
        match self.nest_objects() {
            Ok((parent, viommu)) => {
                info!(
                    "guest tables: {kind:?} host (nesting parent {parent}, vIOMMU {viommu:?} made and released), fault queue {:?}, PASIDs {pasid}",
                    self.nest.as_ref().and_then(|n| n.fault.as_ref()).map(|f| f.0)
                );
                self.release_nest_objects();
            }
            Err(e) => {
                warn!("no guest tables: {e}");
                if let Some((id, ffd)) = self.nest.take().and_then(|n| n.fault) {
                    drop(ffd);
                    if let Err(e) = sys::destroy(self.fd(), id) {
                        warn!("cannot destroy the fault queue {id}: {e}");
                    }
                }
                return;
            }
        }
        if pasid {
            // Leave the automatic domain of the blocked IOAS for a PASID-compatible HWPT.
            let ids: Vec<u32> = self.endpoints.keys().copied().collect();
            for ep in ids {
                let pt = self.unattached_pt();
                let moved = self
                    .target(pt)
                    .and_then(|pt| self.move_endpoint(ep, pt, None));
                if let Err(e) = moved {
                    warn!("endpoint {ep}: cannot move to a PASID-compatible HWPT: {e}");
                }
            }
        }
    }

    /// The nesting parent over the stage-2 IOAS and the vIOMMU (with a vDEVICE per host
    /// endpoint), made on first use: a nesting parent is a real stage-2 page table, so it pins
    /// all of guest RAM while it exists (a guest that binds no table pins nothing for it).
    fn nest_objects(&mut self) -> Result<(u32, Option<u32>), BackendError> {
        let n = self
            .nest
            .as_ref()
            .ok_or(BackendError::Unsupported("the host IOMMU does not nest"))?;
        if let Some(p) = n.parent {
            return Ok((p, n.viommu));
        }
        let (dev_id, viommu_type) = (n.dev_id, n.viommu_type);
        let parent = sys::hwpt_alloc(
            self.fd(),
            dev_id,
            self.stage2,
            sys::IOMMU_HWPT_ALLOC_NEST_PARENT,
            sys::IOMMU_HWPT_DATA_NONE,
            &[],
            0,
        )
        .os()?;
        let viommu = match viommu_type {
            Some(t) => match sys::viommu_alloc(self.fd(), t, dev_id, parent) {
                Ok(v) => Some(v),
                Err(e) => {
                    if let Err(d) = sys::destroy(self.fd(), parent) {
                        warn!("cannot destroy the nesting parent {parent}: {d}");
                    }
                    return Err(os_err(e));
                }
            },
            None => None,
        };
        if let Some(v) = viommu {
            let fd = self.fd.try_clone();
            for (ep, e) in self.endpoints.iter_mut() {
                let Ok(fd) = fd.as_ref() else { break };
                match sys::vdevice_alloc(fd.as_fd(), v, e.dev.dev_id(), u64::from(*ep)) {
                    Ok(id) => e.vdevice = Some(id),
                    Err(err) => warn!("endpoint {ep}: no vDEVICE: {err}"),
                }
            }
        }
        if let Some(n) = self.nest.as_mut() {
            n.parent = Some(parent);
            n.viommu = viommu;
        }
        self.open_veventq();
        Ok((parent, viommu))
    }

    /// The vIOMMU's event queue (Linux 6.15), watched through the epoll set. Without it (older
    /// kernel, VT-d) host faults of guest tables are not reported to the guest.
    fn open_veventq(&mut self) {
        let Some(n) = self.nest.as_ref() else { return };
        let (Some(v), Some(ep)) = (n.viommu, n.epoll.as_ref()) else {
            return;
        };
        let t = match n.kind {
            NestKind::Smmuv3 => sys::IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
            NestKind::Selftest => sys::IOMMU_VEVENTQ_TYPE_SELFTEST,
            NestKind::Vtd => return,
        };
        let q = match sys::veventq_alloc(self.fd(), v, t, 64) {
            Ok(q) => q,
            Err(e) => {
                warn!("no vEVENTQ (host faults are not reported): {e}");
                return;
            }
        };
        // SAFETY: fcntl on an fd we own; F_SETFL takes an int.
        if unsafe { libc::fcntl(q.1.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            warn!("vEVENTQ: cannot make it non-blocking");
        }
        if let Err(e) = epoll_add(ep.as_fd(), q.1.as_fd()) {
            warn!("cannot watch the vEVENTQ: {e}");
        }
        if let Some(n) = self.nest.as_mut() {
            n.veventq = Some(q);
        }
    }

    /// Destroy the vDEVICEs, the vIOMMU and the nesting parent (no nested HWPT may be left).
    fn release_nest_objects(&mut self) {
        let fd = self.fd.try_clone();
        for (ep, e) in self.endpoints.iter_mut() {
            if let (Some(v), Ok(fd)) = (e.vdevice, fd.as_ref()) {
                if let Err(err) = sys::destroy(fd.as_fd(), v) {
                    warn!("endpoint {ep}: cannot destroy vDEVICE {v}: {err}");
                }
                e.vdevice = None;
            }
        }
        let Some(n) = self.nest.as_mut() else { return };
        // Closing the fd also takes it out of the epoll set.
        let q = n.veventq.take().map(|(id, qfd)| {
            drop(qfd);
            id
        });
        let ids = [q, n.viommu.take(), n.parent.take()];
        for id in ids.into_iter().flatten() {
            if let Err(e) = sys::destroy(self.fd(), id) {
                warn!("cannot destroy nesting object {id}: {e}");
            }
        }
    }

    /// What a device attaches to for `ioas`: the IOAS itself, or on PASID-capable hosts an
    /// explicit HWPT allocated with IOMMU_HWPT_ALLOC_PASID (made once per IOAS).
    fn target(&mut self, ioas: u32) -> Result<u32, BackendError> {
        let Some(n) = self.nest.as_ref().filter(|n| n.pasid) else {
            return Ok(ioas);
        };
        if let Some(&h) = self.paging.get(&ioas) {
            return Ok(h);
        }
        let h = sys::hwpt_alloc(
            self.fd(),
            n.dev_id,
            ioas,
            sys::IOMMU_HWPT_ALLOC_PASID,
            sys::IOMMU_HWPT_DATA_NONE,
            &[],
            0,
        )
        .os()?;
        self.paging.insert(ioas, h);
        Ok(h)
    }

    /// Destroy the explicit HWPT of `ioas`, if any.
    fn drop_paging(&mut self, ioas: u32) {
        if let Some(h) = self.paging.remove(&ioas) {
            if let Err(e) = sys::destroy(self.fd(), h) {
                warn!("cannot destroy HWPT {h} of IOAS {ioas}: {e}");
            }
        }
    }

    /// Where `domain`'s endpoints and PASIDs attach: its nested HWPT, else its IOAS.
    fn domain_pt(&mut self, domain: u32) -> Result<u32, BackendError> {
        let d = self
            .domains
            .get(&domain)
            .ok_or(BackendError::Internal("unknown domain"))?;
        match d.nested {
            Some(h) => Ok(h),
            None => {
                let ioas = d.ioas;
                self.target(ioas)
            }
        }
    }

    /// Attach (`replace`: re-attach) PASID `pasid` of `ep`'s host device to `pt`.
    fn pasid_to(
        &self,
        dev: &HostDevice,
        pasid: u32,
        pt: u32,
        replace: bool,
    ) -> Result<(), BackendError> {
        match dev {
            HostDevice::Mock { stdev, .. } => {
                sys::mock_pasid_attach(self.fd(), *stdev, pasid, pt, replace).os()?
            }
            HostDevice::Vfio { file, .. } => {
                sys::vfio_attach_pasid(file.as_fd(), pt, pasid).os()?;
            }
        }
        Ok(())
    }

    fn pasid_off(&self, dev: &HostDevice, pasid: u32) -> Result<(), BackendError> {
        match dev {
            HostDevice::Mock { stdev, .. } => {
                sys::mock_pasid_detach(self.fd(), *stdev, pasid).os()?
            }
            HostDevice::Vfio { file, .. } => sys::vfio_detach_pasid(file.as_fd(), pasid).os()?,
        }
        Ok(())
    }

    /// Move every endpoint and PASID of `domain` to `pt`; on failure move the ones already
    /// moved back to `old` and report the error.
    fn move_domain(&mut self, domain: u32, pt: u32, old: u32) -> Result<(), BackendError> {
        let mut moved: Vec<(u32, Option<u32>)> = Vec::new();
        let mut result = Ok(());
        let users: Vec<(u32, Option<u32>)> = self
            .endpoints
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
        for (ep, pasid) in users {
            let r = match pasid {
                None => self.move_endpoint(ep, pt, Some(domain)),
                Some(p) => match self.endpoints.get(&ep) {
                    Some(e) => self.pasid_to(&e.dev, p, pt, true),
                    None => Ok(()),
                },
            };
            match r {
                Ok(()) => moved.push((ep, pasid)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            for (ep, pasid) in moved {
                let r = match pasid {
                    None => self.move_endpoint(ep, old, Some(domain)),
                    Some(p) => match self.endpoints.get(&ep) {
                        Some(e) => self.pasid_to(&e.dev, p, old, true),
                        None => Ok(()),
                    },
                };
                if let Err(e) = r {
                    warn!("endpoint {ep} pasid {pasid:?}: cannot go back to {old}: {e}");
                }
            }
        }
        result
    }

    /// Endpoints using `domain` (by RID or by a PASID), with their vDEVICE.
    fn domain_users(&self, domain: u32) -> Vec<(u32, Option<u32>)> {
        self.endpoints
            .iter()
            .filter(|(_, e)| e.domain == Some(domain) || e.pasids.values().any(|d| *d == domain))
            .map(|(id, e)| (*id, e.vdevice))
            .collect()
    }

    /// Write one page response to the fault queue.
    fn write_response(&mut self, cookie: u32, code: u16) -> Result<(), BackendError> {
        let Some((_, ffd)) = self.nest.as_ref().and_then(|n| n.fault.as_ref()) else {
            return Err(BackendError::Internal(
                "page response without a fault queue",
            ));
        };
        let b = nesting::page_response(cookie, code);
        // SAFETY: writes 8 bytes from a live local buffer to an fd we own.
        let r = unsafe { libc::write(ffd.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        if usize::try_from(r).ok() != Some(b.len()) {
            return Err(BackendError::Os {
                call: "write(fault queue)",
                errno: std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            });
        }
        if let Some(n) = self.nest.as_mut() {
            n.responses += 1;
        }
        Ok(())
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

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Where an endpoint without a domain goes.
    fn unattached_pt(&self) -> u32 {
        if self.unattached_bypass {
            self.stage2
        } else {
            self.blocked
        }
    }

    /// Attach `ep`'s host device to `pt` (atomic replace); returns the HWPT.
    fn replace(&self, dev: &HostDevice, pt: u32) -> Result<u32, BackendError> {
        let hwpt = match dev {
            HostDevice::Vfio { file, .. } => sys::vfio_attach(file.as_fd(), pt).os()?,
            HostDevice::Mock { stdev, .. } => sys::mock_replace(self.fd(), *stdev, pt).os()?,
        };
        Ok(hwpt)
    }

    fn move_endpoint(
        &mut self,
        endpoint: u32,
        pt: u32,
        domain: Option<u32>,
    ) -> Result<(), BackendError> {
        let Some(ep) = self.endpoints.get(&endpoint) else {
            // Not a host device (e.g. a device the VMM emulates): nothing to do on the host.
            return Ok(());
        };
        if let Some(a) = self
            .adopting
            .as_mut()
            .filter(|a| a.endpoints.contains(&endpoint))
        {
            // An adopted device keeps translating through the previous process's objects
            // until the state is complete: it moves once, at the end.
            a.deferred.insert(endpoint, pt);
            if let Some(ep) = self.endpoints.get_mut(&endpoint) {
                ep.domain = domain;
            }
            return Ok(());
        }
        let hwpt = self.replace(&ep.dev, pt)?;
        if let Some(ep) = self.endpoints.get_mut(&endpoint) {
            ep.hwpt = hwpt;
            ep.domain = domain;
        }
        Ok(())
    }

    /// Guest RAM clipped to the IOVA ranges the host devices accept (the stage-2 pieces).
    fn pieces_for(&self, memory: &[Ram]) -> Vec<Piece> {
        let mut out = Vec::new();
        for r in memory {
            let Some(last) = r.gpa.checked_add(r.size.saturating_sub(1)) else {
                continue;
            };
            if r.size == 0 {
                continue;
            }
            for &(s, e) in &self.allowed {
                let (ps, pe) = (r.gpa.max(s), last.min(e));
                if ps > pe {
                    continue;
                }
                out.push(Piece {
                    iova: ps,
                    len: pe - ps + 1,
                    gpa: ps,
                    backing: r.backing.at(ps - r.gpa),
                });
            }
        }
        out
    }

    /// IOAS_MAP guest-physical `[phys, phys + len)` at `iova` in `ioas`. By file when the region
    /// has one: the IOAS then refers to the memfd's pages, not to an address in this process that
    /// a later memory table could unmap and reuse; by address otherwise. Returns what the new
    /// mapping refers to.
    fn map_guest(
        &mut self,
        ioas: u32,
        iova: u64,
        phys: u64,
        len: u64,
        prot: u32,
    ) -> Result<ram::Backing, BackendError> {
        let not_ram = BackendError::NotGuestRam {
            start: phys,
            end: phys.saturating_add(len - 1),
        };
        let last = phys.checked_add(len - 1).ok_or(not_ram.clone())?;
        let ram = self
            .memory
            .iter()
            .find(|r| phys >= r.gpa && last - r.gpa < r.size)
            .ok_or(not_ram)?;
        let off = phys - ram.gpa;
        let host = ram.host + off;
        if self.map_file {
            if let Some((file, start)) = ram.file() {
                match sys::ioas_map_file(self.fd(), ioas, iova, file, start + off, len, prot) {
                    Ok(()) => return Ok(ram.backing.at(off)),
                    Err(e) if e.errno == libc::ENOTTY || e.errno == libc::EOPNOTSUPP => {
                        warn!("{e}: mapping guest RAM by address from now on");
                        self.map_file = false;
                    }
                    Err(e) => return Err(os_err(e)),
                }
            }
        }
        sys::ioas_map(self.fd(), ioas, iova, host, len, prot).os()?;
        Ok(ram::Backing::Addr(host))
    }

    fn unmap_stage2_piece(&self, p: &Piece) {
        if let Err(e) = sys::ioas_unmap(self.fd(), self.stage2, p.iova, p.len) {
            warn!("stage-2 unmap {:#x}+{:#x}: {e}", p.iova, p.len);
        }
    }

    /// The host IOVA ranges, for tests and the control socket.
    pub fn allowed(&self) -> &[(u64, u64)] {
        &self.allowed
    }
}

impl HostBackend for IommufdBackend {
    fn name(&self) -> &'static str {
        "iommufd"
    }

    fn attach(
        &mut self,
        endpoint: u32,
        domain: u32,
        bypass: bool,
        new_domain: bool,
    ) -> Result<(), BackendError> {
        let (ioas, nested) = match self.domains.get(&domain) {
            Some(d) => (d.ioas, d.nested),
            None if !new_domain => return Err(BackendError::Internal("attach to unknown domain")),
            None if bypass => (self.stage2, None),
            None => (sys::ioas_alloc(self.fd()).os()?, None),
        };
        let fresh = new_domain && !bypass;
        let moved = match nested {
            Some(h) => Ok(h),
            None => self.target(ioas),
        }
        .and_then(|pt| self.move_endpoint(endpoint, pt, Some(domain)));
        if let Err(e) = moved {
            if fresh {
                self.drop_paging(ioas);
                if let Err(d) = sys::destroy(self.fd(), ioas) {
                    warn!("cannot destroy IOAS {ioas}: {d}");
                }
            }
            return Err(e);
        }
        if new_domain {
            self.domains.insert(domain, DomainObj::new(ioas, bypass));
        }
        self.persist();
        Ok(())
    }

    fn detach(&mut self, endpoint: u32) -> Result<(), BackendError> {
        let pt = self.target(self.unattached_pt())?;
        let r = self.move_endpoint(endpoint, pt, None);
        self.persist();
        r
    }

    fn destroy_domain(&mut self, domain: u32) {
        if let Some(d) = self.domains.remove(&domain) {
            if let Some(h) = d.nested {
                if let Err(e) = sys::destroy(self.fd(), h) {
                    warn!("domain {domain}: cannot destroy nested HWPT {h}: {e}");
                }
            }
            if !d.bypass {
                self.drop_paging(d.ioas);
                if let Err(e) = sys::destroy(self.fd(), d.ioas) {
                    warn!("domain {domain}: cannot destroy IOAS {}: {e}", d.ioas);
                }
            }
        }
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
        if !self.domains.contains_key(&domain) {
            return Err(BackendError::Internal("map in unknown domain"));
        }
        if flags & MAP_F_MMIO != 0 {
            return Err(BackendError::Mmio);
        }
        let len = (end - iova)
            .checked_add(1)
            .ok_or(BackendError::NotGuestRam {
                start: phys,
                end: u64::MAX,
            })?;
        let mut prot = 0;
        if flags & MAP_F_READ != 0 {
            prot |= sys::IOMMU_IOAS_MAP_READABLE;
        }
        if flags & MAP_F_WRITE != 0 {
            prot |= sys::IOMMU_IOAS_MAP_WRITEABLE;
        }
        if prot == 0 {
            // No access allowed: nothing to put in the host page table (but the physical range
            // must still be guest RAM).
            if !ram::is_ram(&self.memory, phys, len) {
                return Err(BackendError::NotGuestRam {
                    start: phys,
                    end: phys.saturating_add(len - 1),
                });
            }
            return Ok(());
        }
        let pieces = self.map_pieces(domain, iova, phys, len, prot)?;
        if let Some(d) = self.domains.get_mut(&domain) {
            d.maps.insert(
                iova,
                HostMap {
                    last: end,
                    phys,
                    prot,
                    pieces,
                },
            );
        }
        Ok(())
    }

    fn unmap(&mut self, domain: u32, start: u64, end: u64) -> Result<(), BackendError> {
        let d = self
            .domains
            .get(&domain)
            .ok_or(BackendError::Internal("unmap in unknown domain"))?;
        if d.bypass {
            return Ok(());
        }
        self.unmap_range(domain, start, end)
    }

    fn set_unattached_bypass(&mut self, bypass: bool) -> Result<(), BackendError> {
        if bypass == self.unattached_bypass {
            return Ok(());
        }
        let pt = self.target(if bypass { self.stage2 } else { self.blocked })?;
        let unattached: Vec<u32> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.domain.is_none())
            .map(|(id, _)| *id)
            .collect();
        for ep in unattached {
            self.move_endpoint(ep, pt, None)?;
        }
        self.unattached_bypass = bypass;
        self.persist();
        Ok(())
    }

    fn reset(&mut self, kind: ResetKind) {
        let ids: Vec<u32> = self.endpoints.keys().copied().collect();
        for &ep in &ids {
            let pasids: Vec<u32> = self
                .endpoints
                .get(&ep)
                .map(|e| e.pasids.keys().copied().collect())
                .unwrap_or_default();
            for p in pasids {
                if let Err(e) = self.detach_pasid(ep, p) {
                    warn!("reset: endpoint {ep} cannot detach PASID {p}: {e}");
                }
            }
        }
        let pt = self.unattached_pt();
        let pt = self.target(pt).unwrap_or(pt);
        for ep in ids {
            if let Err(e) = self.move_endpoint(ep, pt, None) {
                warn!("reset: endpoint {ep} cannot leave its domain: {e}");
            }
        }
        // The other fixed IOAS's explicit HWPT, if any, is unused now.
        let spare = if self.unattached_bypass {
            self.blocked
        } else {
            self.stage2
        };
        self.drop_paging(spare);
        let domains: Vec<u32> = self.domains.keys().copied().collect();
        for d in domains {
            self.destroy_domain(d);
        }
        if kind == ResetKind::Connection {
            // Unpins stage 2 (no nested HWPT is left).
            self.release_nest_objects();
            for p in std::mem::take(&mut self.stage2_pieces) {
                self.unmap_stage2_piece(&p);
            }
            self.memory.clear();
        }
        self.persist();
    }

    fn guest_ram_at(&self, phys: u64) -> Option<bool> {
        Some(ram::is_ram(&self.memory, phys, 1))
    }

    /// Never fails: the VMM has changed its memory whatever the daemon thinks of it (a
    /// refused SET_MEM_TABLE would leave vhost-user-backend half updated), so the table is
    /// always taken and kernel refusals are logged and counted (ram.rs).
    fn set_guest_memory(&mut self, regions: &[GuestRegion]) -> Result<(), BackendError> {
        let memory = regions.iter().map(|r| Ram::new(r, self.map_file)).collect();
        self.follow_memory(memory);
        Ok(())
    }

    fn resumed(&mut self, resumed: bool) {
        self.finish_adoption(resumed);
    }

    fn guest_tables(&self) -> bool {
        self.nest.is_some()
    }

    fn host_iommu(&self) -> Option<HostIommu> {
        self.nest.as_ref().and(self.host.clone())
    }

    fn attach_table(&mut self, domain: u32, binding: &Binding) -> Result<(), BackendError> {
        let kind = self
            .nest
            .as_ref()
            .ok_or(BackendError::Unsupported("the host IOMMU does not nest"))?
            .kind;
        let (data_type, data) = nested_data(kind, binding)?;
        let (parent, viommu) = self.nest_objects()?;
        let n = self
            .nest
            .as_ref()
            .ok_or(BackendError::Internal("nesting state lost"))?;
        let on = match n.kind {
            NestKind::Smmuv3 => {
                viommu.ok_or(BackendError::Internal("SMMUv3 nesting without a vIOMMU"))?
            }
            // On the vIOMMU, as on SMMUv3, when there is one: the mock then knows the device's
            // vIOMMU and virtual id (its events carry them).
            NestKind::Selftest => viommu.unwrap_or(parent),
            NestKind::Vtd => parent,
        };
        let mut flags = if n.pasid {
            sys::IOMMU_HWPT_ALLOC_PASID
        } else {
            0
        };
        let fault_id = n.fault.as_ref().map_or(0, |f| f.0);
        if n.fault.is_some() {
            flags |= sys::IOMMU_HWPT_FAULT_ID_VALID;
        }
        // A device of the domain if it has one (the IOMMU instance that will walk the table).
        let dev_id = self
            .endpoints
            .values()
            .find(|e| e.domain == Some(domain))
            .map_or(n.dev_id, |e| e.dev.dev_id());
        let d = self
            .domains
            .get(&domain)
            .ok_or(BackendError::Internal("table for an unknown domain"))?;
        if d.bypass {
            return Err(BackendError::Internal("table for a bypass domain"));
        }
        let old_nested = d.nested;
        let old = self.domain_pt(domain)?;
        let hwpt = match sys::hwpt_alloc(self.fd(), dev_id, on, flags, data_type, &data, fault_id) {
            // A host that cannot report page requests for this device: without.
            Err(e) if e.errno == libc::EOPNOTSUPP && fault_id != 0 => sys::hwpt_alloc(
                self.fd(),
                dev_id,
                on,
                flags & !sys::IOMMU_HWPT_FAULT_ID_VALID,
                data_type,
                &data,
                0,
            )
            .os()?,
            r => r.os()?,
        };
        if let Err(e) = self.move_domain(domain, hwpt, old) {
            if let Err(d) = sys::destroy(self.fd(), hwpt) {
                warn!("cannot destroy nested HWPT {hwpt}: {d}");
            }
            return Err(e);
        }
        if let Some(d) = self.domains.get_mut(&domain) {
            d.nested = Some(hwpt);
        }
        if let Some(h) = old_nested {
            if let Err(e) = sys::destroy(self.fd(), h) {
                warn!("domain {domain}: cannot destroy the replaced nested HWPT {h}: {e}");
            }
        }
        info!("domain {domain}: guest table on nested HWPT {hwpt} (over {on})");
        self.persist();
        Ok(())
    }

    fn detach_table(&mut self, domain: u32) -> Result<(), BackendError> {
        let d = self
            .domains
            .get(&domain)
            .ok_or(BackendError::Internal("detach table of an unknown domain"))?;
        let Some(nested) = d.nested else {
            return Ok(());
        };
        let ioas = d.ioas;
        let pt = self.target(ioas)?;
        self.move_domain(domain, pt, nested)?;
        if let Some(d) = self.domains.get_mut(&domain) {
            d.nested = None;
        }
        if let Err(e) = sys::destroy(self.fd(), nested) {
            warn!("domain {domain}: cannot destroy nested HWPT {nested}: {e}");
        }
        self.persist();
        Ok(())
    }

    fn attach_pasid(&mut self, endpoint: u32, pasid: u32, domain: u32) -> Result<(), BackendError> {
        if !self.endpoints.contains_key(&endpoint) {
            // Not a host device: nothing to do on the host.
            return Ok(());
        }
        if !self.nest.as_ref().is_some_and(|n| n.pasid) {
            return Err(BackendError::Unsupported("the host device has no PASIDs"));
        }
        let pt = self.domain_pt(domain)?;
        let Some(e) = self.endpoints.get(&endpoint) else {
            return Ok(());
        };
        let replace = e.pasids.contains_key(&pasid);
        self.pasid_to(&e.dev, pasid, pt, replace)?;
        if let Some(e) = self.endpoints.get_mut(&endpoint) {
            e.pasids.insert(pasid, domain);
        }
        Ok(())
    }

    fn detach_pasid(&mut self, endpoint: u32, pasid: u32) -> Result<(), BackendError> {
        let Some(e) = self.endpoints.get(&endpoint) else {
            return Ok(());
        };
        if !e.pasids.contains_key(&pasid) {
            return Ok(());
        }
        self.pasid_off(&e.dev, pasid)?;
        if let Some(e) = self.endpoints.get_mut(&endpoint) {
            e.pasids.remove(&pasid);
        }
        Ok(())
    }

    fn invalidate(&mut self, domain: u32, inv: &Invalidate) -> Result<(), BackendError> {
        let Some(n) = self.nest.as_ref() else {
            return Ok(());
        };
        let Some(nested) = self.domains.get(&domain).and_then(|d| d.nested) else {
            return Ok(());
        };
        let users = self.domain_users(domain);
        let (kind, viommu) = (n.kind, n.viommu);
        match kind {
            NestKind::Selftest => {
                if let Some(e) = nesting::mock_iotlb_entry(inv) {
                    sys::hwpt_invalidate(
                        self.fd(),
                        nested,
                        sys::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
                        8,
                        &nesting::le_bytes(&[e]),
                    )
                    .os()?;
                }
                let entries: Vec<[u32; 3]> = users
                    .iter()
                    .filter(|(_, v)| v.is_some())
                    .filter_map(|(ep, _)| nesting::mock_dev_cache_entry(inv, *ep))
                    .collect();
                if let (Some(v), false) = (viommu, entries.is_empty()) {
                    sys::hwpt_invalidate(
                        self.fd(),
                        v,
                        sys::IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST,
                        12,
                        &nesting::le_bytes(&entries),
                    )
                    .os()?;
                }
            }
            NestKind::Vtd => {
                if let Some(e) = nesting::vtd_entry(inv) {
                    sys::hwpt_invalidate(
                        self.fd(),
                        nested,
                        sys::IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
                        nesting::VtdInvalidate::SIZE,
                        &e.bytes(),
                    )
                    .os()?;
                }
            }
            NestKind::Smmuv3 => {
                let sids: Vec<u32> = users
                    .iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(ep, _)| *ep)
                    .collect();
                let cmds = nesting::smmu_commands(inv, &sids);
                if let (Some(v), false) = (viommu, cmds.is_empty()) {
                    sys::hwpt_invalidate(
                        self.fd(),
                        v,
                        sys::IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
                        16,
                        &nesting::le_bytes64(&cmds),
                    )
                    .os()?;
                }
            }
        }
        Ok(())
    }

    fn page_request_fd(&self) -> Option<std::os::fd::RawFd> {
        let n = self.nest.as_ref()?;
        match (&n.epoll, &n.fault) {
            (Some(ep), _) => Some(ep.as_raw_fd()),
            (None, Some(f)) => Some(f.1.as_raw_fd()),
            (None, None) => None,
        }
    }

    fn host_faults(&mut self) -> Vec<HostFault> {
        let Some(n) = self.nest.as_ref() else {
            return Vec::new();
        };
        let Some(qfd) = n.veventq.as_ref().map(|q| q.1.as_raw_fd()) else {
            return Vec::new();
        };
        let (size, parse): (usize, EventParser) = match n.kind {
            NestKind::Smmuv3 => (nesting::VEVENT_SMMUV3_SIZE, nesting::smmu_event_fault),
            _ => (nesting::VEVENT_SELFTEST_SIZE, nesting::mock_event_fault),
        };
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            // SAFETY: reads into a live local buffer of the given length from an fd we own.
            let r = unsafe { libc::read(qfd, buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(len) = usize::try_from(r) else { break };
            if len == 0 {
                break;
            }
            let (events, lost) = nesting::split_vevents(&buf[..len], size);
            if lost > 0 {
                warn!("the host's vEVENTQ overflowed: events lost");
            }
            for f in events.into_iter().filter_map(parse) {
                if self.endpoints.contains_key(&f.endpoint) {
                    out.push(f);
                } else {
                    warn!("host event for unknown virtual id {}", f.endpoint);
                }
            }
            if len + nesting::VEVENT_HEADER_SIZE + size > buf.len() {
                continue;
            }
            break;
        }
        if let Some(n) = self.nest.as_mut() {
            n.faults += out.len() as u64;
        }
        out
    }

    fn page_requests(&mut self) -> Vec<HostPageRequest> {
        let Some(ffd) = self
            .nest
            .as_ref()
            .and_then(|n| n.fault.as_ref())
            .map(|f| f.1.as_raw_fd())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut buf = [0u8; nesting::PGFAULT_SIZE * 16];
        loop {
            // SAFETY: reads into a live local buffer of the given length from an fd we own.
            let r = unsafe { libc::read(ffd, buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(r) else { break };
            if n == 0 {
                break;
            }
            for rec in buf[..n].chunks_exact(nesting::PGFAULT_SIZE) {
                let Some(f) = nesting::PgFault::parse(rec) else {
                    continue;
                };
                let endpoint = self
                    .endpoints
                    .iter()
                    .find(|(_, e)| e.dev.dev_id() == f.dev_id)
                    .map(|(id, _)| *id);
                let last = f.flags & nesting::PGFAULT_FLAGS_LAST_PAGE != 0;
                let Some(endpoint) = endpoint else {
                    warn!(
                        "page request of unknown device {}: answered INVALID",
                        f.dev_id
                    );
                    if last {
                        if let Err(e) =
                            self.write_response(f.cookie, model::protocol::PAGE_RESP_INVALID)
                        {
                            warn!("{e}");
                        }
                    }
                    continue;
                };
                out.push(HostPageRequest {
                    endpoint,
                    pasid: (f.flags & nesting::PGFAULT_FLAGS_PASID_VALID != 0).then_some(f.pasid),
                    grpid: f.grpid,
                    perm: f.perm & nesting::PGFAULT_PERM_MASK,
                    address: f.addr,
                    last,
                    cookie: f.cookie,
                });
            }
            if n < buf.len() {
                break;
            }
        }
        if let Some(n) = self.nest.as_mut() {
            n.requests += out.len() as u64;
        }
        out
    }

    fn page_response(&mut self, cookie: u32, code: u16) -> Result<(), BackendError> {
        self.write_response(cookie, code)
    }

    fn serving_ioctls(&self) -> &'static [u64] {
        let mock = self
            .endpoints
            .values()
            .any(|e| matches!(e.dev, HostDevice::Mock { .. }));
        if mock {
            &sys::SERVING_IOCTLS_MOCK
        } else {
            &sys::SERVING_IOCTLS
        }
    }

    fn describe(&self) -> serde_json::Value {
        let endpoints: Vec<_> = self
            .endpoints
            .iter()
            .map(|(id, e)| {
                let dev = match &e.dev {
                    HostDevice::Vfio { dev_id, .. } => json!({"kind": "vfio", "dev_id": dev_id}),
                    HostDevice::Mock { stdev, idev } => {
                        json!({"kind": "mock", "stdev_id": stdev, "dev_id": idev})
                    }
                };
                let pasids: Vec<_> = e
                    .pasids
                    .iter()
                    .map(|(p, d)| json!({"pasid": p, "domain": d}))
                    .collect();
                json!({"endpoint": id, "device": dev, "domain": e.domain, "hwpt": e.hwpt,
                       "pasids": pasids, "vdevice": e.vdevice})
            })
            .collect();
        let domains: Vec<_> = self
            .domains
            .iter()
            .map(|(id, d)| {
                json!({"domain": id, "ioas": d.ioas, "bypass": d.bypass, "nested_hwpt": d.nested,
                       "mappings": self.describe_maps(d)})
            })
            .collect();
        let nest = self.nest.as_ref().map(|n| {
            json!({
                "kind": format!("{:?}", n.kind),
                "parent_hwpt": n.parent,
                "viommu": n.viommu,
                "fault_queue": n.fault.as_ref().map(|f| f.0),
                "pasid": n.pasid,
                "page_requests": n.requests,
                "page_responses": n.responses,
                "veventq": n.veventq.as_ref().map(|q| q.0),
                "faults": n.faults,
            })
        });
        let paging: Vec<_> = self
            .paging
            .iter()
            .map(|(ioas, h)| json!({"ioas": ioas, "hwpt": h}))
            .collect();
        let stage2: Vec<_> = self
            .stage2_pieces
            .iter()
            .map(|p| json!({"iova": p.iova, "length": p.len}))
            .collect();
        let guest_ram: Vec<_> = self
            .memory
            .iter()
            .map(|r| {
                json!({"gpa": r.gpa, "size": r.size,
                       "by_file": matches!(r.backing, ram::Backing::File { .. })})
            })
            .collect();
        json!({
            "backend": "iommufd",
            "blocked_ioas": self.blocked,
            "stage2_ioas": self.stage2,
            "unattached_bypass": self.unattached_bypass,
            "endpoints": endpoints,
            "domains": domains,
            "stage2": stage2,
            "guest_ram": guest_ram,
            "memory_tables": self.mem_stats.to_json(),
            "allowed_iovas": self.allowed,
            "iova_alignment": self.iova_alignment,
            "map_by_file": self.map_file,
            "nesting": nest,
            "paging_hwpts": paging,
            "adopting": self.adopting.as_ref().map(|a| json!({
                "endpoints": a.endpoints,
                "old_objects": a.old,
            })),
        })
    }
}

impl Drop for IommufdBackend {
    /// Closing the iommufd destroys every object in it, unless a launcher or VMM still holds the
    /// same iommufd: release ours explicitly so nothing outlives the daemon there either.
    fn drop(&mut self) {
        // Stopping before an adoption ends: the adopted devices and the previous process's
        // objects stay as they were (DMA goes on), for the next process to adopt.
        let kept = self.adopting.take().map(|a| {
            for ep in &a.endpoints {
                self.endpoints.remove(ep);
            }
            a.saved
        });
        self.reset(ResetKind::Connection);
        for (ep, e) in std::mem::take(&mut self.endpoints) {
            match e.dev {
                HostDevice::Mock { stdev, .. } => {
                    if let Err(err) = sys::destroy(self.fd(), stdev) {
                        warn!("endpoint {ep}: cannot destroy mock device {stdev}: {err}");
                    }
                }
                // Closing the cdev unbinds the device from the iommufd.
                HostDevice::Vfio { file, .. } => drop(file),
            }
        }
        for ioas in [self.stage2, self.blocked] {
            self.drop_paging(ioas);
        }
        if let Some(n) = self.nest.take() {
            let fault = n.fault.map(|(id, ffd)| {
                drop(ffd);
                id
            });
            for id in [n.viommu, n.parent, fault].into_iter().flatten() {
                if let Err(err) = sys::destroy(self.fd(), id) {
                    warn!("cannot destroy nesting object {id}: {err}");
                }
            }
        }
        for ioas in [self.stage2, self.blocked] {
            if let Err(err) = sys::destroy(self.fd(), ioas) {
                warn!("cannot destroy IOAS {ioas}: {err}");
            }
        }
        let kept = kept.map(|s| s.to_json());
        if let Some(f) = self.objects.as_mut() {
            f.write(kept.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_address_resolves_through_sysfs() {
        let dir = std::env::temp_dir().join(format!("vui-sysfs-{}", std::process::id()));
        let dev = dir.join("bus/pci/devices/0000:00:04.0/vfio-dev/vfio3");
        std::fs::create_dir_all(&dev).unwrap();
        assert_eq!(
            pci_cdev(&dir, "0000:00:04.0").unwrap(),
            Path::new("/dev/vfio/devices/vfio3")
        );
        let e = pci_cdev(&dir, "0000:00:05.0").unwrap_err().to_string();
        assert!(e.contains("vfio-pci"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A backend whose "iommufd" is /dev/null: everything decided before a kernel call can be
    /// checked without one (kernel calls fail with ENOTTY).
    fn offline(allowed: Vec<(u64, u64)>, align: u64) -> IommufdBackend {
        IommufdBackend {
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            blocked: 1,
            stage2: 2,
            endpoints: BTreeMap::new(),
            domains: BTreeMap::new(),
            memory: Vec::new(),
            stage2_pieces: Vec::new(),
            mem_stats: MemStats::default(),
            map_file: true,
            allowed,
            iova_alignment: align,
            unattached_bypass: false,
            nest: None,
            host: None,
            paging: BTreeMap::new(),
            objects: None,
            adopting: None,
        }
    }

    fn region(gpa: u64, size: u64) -> GuestRegion {
        GuestRegion {
            gpa,
            size,
            host_addr: 0x7f00_0000_0000 + gpa,
            file: None,
        }
    }

    #[test]
    fn guest_ram_is_clipped_to_the_host_ranges() {
        // The mock's aperture; RAM below, across and inside it.
        let b = offline(vec![(1 << 24, (1 << 31) - 1)], 0x800);
        let mem: Vec<Ram> = [
            region(0, 16 << 20),
            region(0x7ff0_0000, 2 << 20),
            region(1 << 30, 4096),
        ]
        .iter()
        .map(|r| Ram::new(r, true))
        .collect();
        let p = b.pieces_for(&mem);
        // Regions without a file are mapped by address.
        assert_eq!(
            p,
            vec![
                Piece {
                    iova: 0x7ff0_0000,
                    len: 1 << 20,
                    gpa: 0x7ff0_0000,
                    backing: ram::Backing::Addr(0x7f00_0000_0000 + 0x7ff0_0000),
                },
                Piece {
                    iova: 1 << 30,
                    len: 4096,
                    gpa: 1 << 30,
                    backing: ram::Backing::Addr(0x7f00_4000_0000),
                },
            ]
        );
        let l = b.limits(0, u64::MAX);
        assert_eq!(l.holes, vec![(0, (1 << 24) - 1), (1 << 31, u64::MAX)]);
        // The host page size (4 KiB here) dominates the mock's 2 KiB alignment.
        assert_eq!(l.page_size_mask, !0xfff);
        assert_eq!(
            offline(vec![], 1 << 21).limits(0, 10).page_size_mask,
            !((1 << 21) - 1)
        );
    }

    #[test]
    fn refusals_before_the_kernel() {
        let mut b = offline(vec![(0, u64::MAX)], 4096);
        b.domains.insert(1, DomainObj::new(7, false));
        b.memory
            .push(Ram::new(&region(0x1000_0000, 0x10_0000), true));
        let rw = MAP_F_READ | MAP_F_WRITE;
        // Not guest RAM: before, after, across the end of the region.
        for phys in [0x0fff_f000, 0x1010_0000, 0x100f_f000] {
            let e = b.map(1, 0, 0x1fff, phys, rw).unwrap_err();
            assert!(
                matches!(e, BackendError::NotGuestRam { .. }),
                "{phys:#x}: {e}"
            );
            assert_eq!(e.status(), model::protocol::Status::Range);
        }
        // No access: nothing reaches the kernel, but the range must still be RAM.
        b.map(1, 0, 0xfff, 0x1000_0000, 0).unwrap();
        assert!(b.map(1, 0, 0xfff, 0x2000_0000, 0).is_err());
        assert_eq!(
            b.map(1, 0, 0xfff, 0x1000_0000, MAP_F_MMIO | rw),
            Err(BackendError::Mmio)
        );
        assert!(matches!(
            b.map(2, 0, 0xfff, 0x1000_0000, rw),
            Err(BackendError::Internal(_))
        ));
        // RAM: the kernel call is made (and fails on /dev/null with the call's name).
        let e = b.map(1, 0, 0xfff, 0x1000_0000, rw).unwrap_err();
        assert_eq!(
            e,
            BackendError::Os {
                call: "IOMMU_IOAS_MAP",
                errno: libc::ENOTTY
            }
        );
        // Endpoints without a host device move without kernel calls.
        b.attach(5, 1, false, false).unwrap();
        b.detach(5).unwrap();
        // RAM in two adjacent regions is RAM: the first piece reaches the kernel.
        b.memory
            .push(Ram::new(&region(0x1010_0000, 0x10_0000), true));
        let e = b.map(1, 0, 0x1fff, 0x100f_f000, rw).unwrap_err();
        assert!(matches!(e, BackendError::Os { .. }), "{e}");
        // A failed MAP leaves no bookkeeping behind.
        assert!(b.domains[&1].maps.is_empty() && b.domains[&1].orphans.is_empty());
    }

    /// A mapping of `[iova, iova + len)` to `phys`, as if its one piece were in the kernel.
    fn mapped(b: &mut IommufdBackend, domain: u32, iova: u64, len: u64, phys: u64) {
        let r = b
            .memory
            .iter()
            .find(|r| r.contains(phys, len))
            .expect("RAM");
        let backing = r.backing.at(phys - r.gpa);
        b.domains.get_mut(&domain).unwrap().maps.insert(
            iova,
            HostMap {
                last: iova + len - 1,
                phys,
                prot: sys::IOMMU_IOAS_MAP_READABLE,
                pieces: ram::Pieces::One(Piece {
                    iova,
                    len,
                    gpa: phys,
                    backing,
                }),
            },
        );
    }

    #[test]
    fn memory_table_changes_keep_the_bookkeeping_true() {
        let mut b = offline(vec![(0, u64::MAX)], 4096);
        b.domains.insert(1, DomainObj::new(7, false));
        let low = region(0x1000_0000, 0x10_0000);
        let hot = region(0x2000_0000, 0x10_0000);
        b.set_guest_memory(&[low, hot]).unwrap();
        mapped(&mut b, 1, 0x10_0000, 0x1000, 0x1000_0000);
        mapped(&mut b, 1, 0x20_0000, 0x2000, 0x2000_0000);
        let before = b.domains[&1].maps.clone();
        // Stage 2 cannot be mapped on /dev/null: every table tries all of it again, one failure
        // a region; any other failure would be a kernel call for the guest's mappings.
        let failures = |b: &IommufdBackend| b.mem_stats.failures;
        // The same regions again (a region added elsewhere): no kernel call for the mappings,
        // nothing changes.
        let f = failures(&b);
        b.set_guest_memory(&[low, hot, region(0x3000_0000, 0x1000)])
            .unwrap();
        assert_eq!(b.domains[&1].maps, before);
        assert_eq!(b.mem_stats.domain_unmapped + b.mem_stats.domain_mapped, 0);
        assert_eq!(failures(&b), f + 3);
        // The hot region leaves: its piece must be unmapped; /dev/null refuses, so the piece
        // stays recorded (it is still in the kernel) and shows as stale.
        let f = failures(&b);
        b.set_guest_memory(&[low]).unwrap();
        assert_eq!(
            b.domains[&1].maps, before,
            "refused unmap: still in the kernel"
        );
        assert_eq!(b.mem_stats.domain_unmapped, 0);
        assert_eq!(failures(&b), f + 2, "the unmap and low's stage 2");
        let d = b.describe();
        let maps = &d["domains"][0]["mappings"];
        assert_eq!(maps["with_access"], 2, "{d}");
        assert_eq!(maps["stale"].as_array().unwrap().len(), 1, "{d}");
        assert_eq!(maps["stale"][0]["iova"], 0x20_0000, "{d}");
        assert!(maps["unbacked"].as_array().unwrap().is_empty(), "{d}");
        assert_eq!(d["guest_ram"].as_array().unwrap().len(), 1, "{d}");
        // Guest RAM queries follow the table.
        assert_eq!(b.guest_ram_at(0x1000_0000), Some(true));
        assert_eq!(b.guest_ram_at(0x2000_0000), Some(false));
        // Back again with the same backing: the piece is valid again, nothing to do.
        let f = failures(&b);
        b.set_guest_memory(&[low, hot]).unwrap();
        assert_eq!(b.domains[&1].maps, before);
        assert!(b.describe()["domains"][0]["mappings"]["stale"]
            .as_array()
            .unwrap()
            .is_empty());
        assert_eq!(failures(&b), f + 2, "stage 2 only");
        // Disconnect: no memory, no domain.
        b.reset(ResetKind::Connection);
        assert!(b.memory.is_empty() && b.domains.is_empty());
        assert_eq!(b.guest_ram_at(0x1000_0000), Some(false));
    }

    #[test]
    fn host_kinds_from_hw_info() {
        // struct iommu_hw_info_vtd: flags@0, rsvd@4, cap_reg@8, ecap_reg@16.
        let mut vtd = [0u8; 64];
        assert_eq!(nest_kind(sys::IOMMU_HW_INFO_TYPE_INTEL_VTD, &vtd), None);
        vtd[16..24].copy_from_slice(&(1u64 << 26).to_le_bytes());
        assert_eq!(
            nest_kind(sys::IOMMU_HW_INFO_TYPE_INTEL_VTD, &vtd),
            Some(NestKind::Vtd)
        );
        // struct iommu_hw_info_arm_smmuv3: flags@0, rsvd@4, idr[0]@8: S2P bit 0, S1P bit 1.
        let mut smmu = [0u8; 64];
        smmu[8] = 0b10;
        assert_eq!(nest_kind(sys::IOMMU_HW_INFO_TYPE_ARM_SMMUV3, &smmu), None);
        smmu[8] = 0b11;
        assert_eq!(
            nest_kind(sys::IOMMU_HW_INFO_TYPE_ARM_SMMUV3, &smmu),
            Some(NestKind::Smmuv3)
        );
        assert_eq!(
            nest_kind(sys::IOMMU_HW_INFO_TYPE_SELFTEST, &[0; 64]),
            Some(NestKind::Selftest)
        );
        // IOMMU_HW_INFO_TYPE_NONE (e.g. virtio-iommu): no nesting.
        assert_eq!(nest_kind(0, &[0xff; 64]), None);
    }

    #[test]
    fn nested_data_per_host_kind() {
        use pagetables::vtd::{FirstStage, FirstStageParams, VtdFlags};
        let fs = FirstStage::new(FirstStageParams {
            pgtbl: 0x1234_5000,
            addr_width: 57,
            flags: VtdFlags {
                sre: false,
                eafe: true,
                wpe: false,
            },
            haw: 48,
            pages_1g: true,
        })
        .unwrap();
        let vtd = Binding::Vtd(fs);
        // struct iommu_hwpt_vtd_s1 {u64 flags; u64 pgtbl_addr; u32 addr_width; u32 rsvd}.
        let (t, d) = nested_data(NestKind::Vtd, &vtd).unwrap();
        assert_eq!(t, sys::IOMMU_HWPT_DATA_VTD_S1);
        assert_eq!(d.len(), 24);
        assert_eq!(&d[0..8], &2u64.to_le_bytes(), "EAFE is bit 1");
        assert_eq!(&d[8..16], &0x1234_5000u64.to_le_bytes());
        assert_eq!(&d[16..20], &57u32.to_le_bytes());
        assert_eq!(&d[20..24], &[0; 4]);
        // The mock: {u32 iotlb} = IOMMU_TEST_IOTLB_DEFAULT, whatever the format.
        let (t, d) = nested_data(NestKind::Selftest, &vtd).unwrap();
        assert_eq!((t, d), (0xdead, 0x0bad_beefu32.to_le_bytes().to_vec()));
        // Another architecture's table: UNSUPP, before any kernel call.
        let e = nested_data(NestKind::Smmuv3, &vtd).unwrap_err();
        assert_eq!(e.status(), model::protocol::Status::Unsupp);
    }

    #[test]
    fn guest_tables_need_a_nesting_host() {
        let mut b = offline(vec![(0, u64::MAX)], 4096);
        assert!(!b.guest_tables());
        b.domains.insert(1, DomainObj::new(7, false));
        let fs = pagetables::vtd::FirstStage::new(pagetables::vtd::FirstStageParams {
            pgtbl: 0x1000,
            addr_width: 48,
            flags: Default::default(),
            haw: 48,
            pages_1g: false,
        })
        .unwrap();
        let e = b.attach_table(1, &Binding::Vtd(fs)).unwrap_err();
        assert_eq!(e.status(), model::protocol::Status::Unsupp);
        // PASIDs of endpoints without a host device need nothing on the host; invalidations of
        // a domain without a nested HWPT neither.
        b.attach_pasid(5, 1, 1).unwrap();
        b.detach_pasid(5, 1).unwrap();
        assert!(b.page_requests().is_empty());
        assert_eq!(b.page_request_fd(), None);
    }

    #[test]
    fn opening_a_missing_iommufd_names_the_path() {
        let cfg = IommufdConfig {
            iommufd: Some("/nonexistent/iommu".into()),
            ..Default::default()
        };
        let e = IommufdBackend::open(&cfg, None).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/iommu"), "{e}");
    }
}
