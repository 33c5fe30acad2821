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

pub mod nesting;
pub mod sys;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use log::{info, warn};
use serde_json::json;

use super::fdpass::Handover;
use super::{BackendError, GuestRegion, HostBackend, HostLimits, ResetKind};
use crate::protocol::{MAP_F_MMIO, MAP_F_READ, MAP_F_WRITE};

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

#[derive(Debug)]
struct HostEndpoint {
    dev: HostDevice,
    /// The guest domain it is attached to (None: blocked or unattached bypass).
    domain: Option<u32>,
    /// The HWPT the kernel attached it to.
    hwpt: u32,
}

#[derive(Debug)]
struct DomainObj {
    /// The domain's IOAS; the stage-2 IOAS for a bypass domain.
    ioas: u32,
    bypass: bool,
}

/// A region of guest RAM: where the daemon mapped it and, when it is backed by a file (the
/// frontend's memfd), a duplicate of that file and the region's offset in it.
#[derive(Debug)]
struct Ram {
    gpa: u64,
    size: u64,
    host: u64,
    file: Option<(OwnedFd, u64)>,
}

/// One IOAS_MAP of guest RAM in the stage-2 IOAS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    iova: u64,
    len: u64,
    host: u64,
}

#[derive(Debug)]
pub struct IommufdBackend {
    fd: OwnedFd,
    blocked: u32,
    stage2: u32,
    endpoints: BTreeMap<u32, HostEndpoint>,
    domains: BTreeMap<u32, DomainObj>,
    memory: Vec<Ram>,
    stage2_pieces: Vec<Piece>,
    /// Map guest RAM by file (IOAS_MAP_FILE, Linux 6.13) rather than by address; cleared when
    /// the kernel does not know the call.
    map_file: bool,
    /// IOVA ranges every host device can map (the blocked IOAS's ranges with all attached).
    allowed: Vec<(u64, u64)>,
    iova_alignment: u64,
    unattached_bypass: bool,
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
    pub fn open(cfg: &IommufdConfig) -> Result<Self, SetupError> {
        let mut handover = match &cfg.fd_socket {
            Some(p) => super::fdpass::receive(p, |h| check_handover(cfg, h))?,
            None => Handover::default(),
        };
        let fd = match handover.iommufd.take() {
            Some(fd) => fd,
            None => open_rw(cfg.iommufd.as_deref().unwrap_or(Path::new("/dev/iommu")))?,
        };
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
            map_file: true,
            allowed: Vec::new(),
            iova_alignment: 1,
            unattached_bypass: false,
        };
        // From here on, Drop releases what was created if a later step fails.
        for (&endpoint, src) in &cfg.devices {
            let dev_err = |err| SetupError::Device { endpoint, err };
            let (dev, hwpt) = match src {
                DeviceSource::Mock => {
                    let (stdev, hwpt, idev) =
                        sys::mock_domain(b.fd.as_fd(), blocked).map_err(dev_err)?;
                    (HostDevice::Mock { stdev, idev }, hwpt)
                }
                DeviceSource::Vfio(_) | DeviceSource::Pci(_) | DeviceSource::Passed => {
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
                },
            );
        }
        let (ranges, align) = sys::ioas_iova_ranges(b.fd.as_fd(), blocked)?;
        b.allowed = ranges.iter().map(|r| (r.start, r.last)).collect();
        b.iova_alignment = align.max(1);
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
            holes: super::holes_of(&self.allowed, lo, hi),
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
            HostDevice::Vfio { file, .. } => sys::vfio_attach(file.as_fd(), pt)?,
            HostDevice::Mock { stdev, .. } => sys::mock_replace(self.fd(), *stdev, pt)?,
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
        let hwpt = self.replace(&ep.dev, pt)?;
        if let Some(ep) = self.endpoints.get_mut(&endpoint) {
            ep.hwpt = hwpt;
            ep.domain = domain;
        }
        Ok(())
    }

    /// Guest RAM clipped to the IOVA ranges the host devices accept.
    fn pieces_for(&self, regions: &[GuestRegion]) -> Vec<Piece> {
        let mut out = Vec::new();
        for r in regions {
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
                    host: r.host_addr + (ps - r.gpa),
                });
            }
        }
        out
    }

    /// IOAS_MAP guest-physical `[phys, phys + len)` at `iova` in `ioas`. By file when the region
    /// has one: the IOAS then refers to the memfd's pages, not to an address in this process that
    /// a later memory table could unmap and reuse; by address otherwise.
    fn map_guest(
        &mut self,
        ioas: u32,
        iova: u64,
        phys: u64,
        len: u64,
        prot: u32,
    ) -> Result<(), BackendError> {
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
            if let Some((file, start)) = &ram.file {
                match sys::ioas_map_file(
                    self.fd(),
                    ioas,
                    iova,
                    file.as_fd(),
                    start + off,
                    len,
                    prot,
                ) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.errno == libc::ENOTTY || e.errno == libc::EOPNOTSUPP => {
                        warn!("{e}: mapping guest RAM by address from now on");
                        self.map_file = false;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        sys::ioas_map(self.fd(), ioas, iova, host, len, prot)?;
        Ok(())
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
        let ioas = match self.domains.get(&domain) {
            Some(d) => d.ioas,
            None if !new_domain => return Err(BackendError::Internal("attach to unknown domain")),
            None if bypass => self.stage2,
            None => sys::ioas_alloc(self.fd())?,
        };
        if let Err(e) = self.move_endpoint(endpoint, ioas, Some(domain)) {
            if new_domain && !bypass {
                if let Err(d) = sys::destroy(self.fd(), ioas) {
                    warn!("cannot destroy IOAS {ioas}: {d}");
                }
            }
            return Err(e);
        }
        if new_domain {
            self.domains.insert(domain, DomainObj { ioas, bypass });
        }
        Ok(())
    }

    fn detach(&mut self, endpoint: u32) -> Result<(), BackendError> {
        self.move_endpoint(endpoint, self.unattached_pt(), None)
    }

    fn destroy_domain(&mut self, domain: u32) {
        if let Some(d) = self.domains.remove(&domain) {
            if !d.bypass {
                if let Err(e) = sys::destroy(self.fd(), d.ioas) {
                    warn!("domain {domain}: cannot destroy IOAS {}: {e}", d.ioas);
                }
            }
        }
    }

    fn map(
        &mut self,
        domain: u32,
        iova: u64,
        end: u64,
        phys: u64,
        flags: u32,
    ) -> Result<(), BackendError> {
        let d = self
            .domains
            .get(&domain)
            .ok_or(BackendError::Internal("map in unknown domain"))?;
        if flags & MAP_F_MMIO != 0 {
            return Err(BackendError::Mmio);
        }
        let ioas = d.ioas;
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
            let last = phys.checked_add(len - 1);
            let ram = last.is_some_and(|last| {
                self.memory
                    .iter()
                    .any(|r| phys >= r.gpa && last - r.gpa < r.size)
            });
            if !ram {
                return Err(BackendError::NotGuestRam {
                    start: phys,
                    end: phys.saturating_add(len - 1),
                });
            }
            return Ok(());
        }
        self.map_guest(ioas, iova, phys, len, prot)
    }

    fn unmap(&mut self, domain: u32, start: u64, end: u64) -> Result<(), BackendError> {
        let d = self
            .domains
            .get(&domain)
            .ok_or(BackendError::Internal("unmap in unknown domain"))?;
        if d.bypass {
            return Ok(());
        }
        // (0, u64::MAX) is iommufd's "everything".
        let len = (end - start).saturating_add(1);
        match sys::ioas_unmap(self.fd(), d.ioas, start, len) {
            Ok(_) => Ok(()),
            // Nothing mapped in the range (gaps, or mappings without access).
            Err(e) if e.errno == libc::ENOENT => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn set_unattached_bypass(&mut self, bypass: bool) -> Result<(), BackendError> {
        if bypass == self.unattached_bypass {
            return Ok(());
        }
        let pt = if bypass { self.stage2 } else { self.blocked };
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
        Ok(())
    }

    fn reset(&mut self, kind: ResetKind) {
        let pt = self.unattached_pt();
        let ids: Vec<u32> = self.endpoints.keys().copied().collect();
        for ep in ids {
            if let Err(e) = self.move_endpoint(ep, pt, None) {
                warn!("reset: endpoint {ep} cannot leave its domain: {e}");
            }
        }
        let domains: Vec<u32> = self.domains.keys().copied().collect();
        for d in domains {
            self.destroy_domain(d);
        }
        if kind == ResetKind::Connection {
            for p in std::mem::take(&mut self.stage2_pieces) {
                self.unmap_stage2_piece(&p);
            }
            self.memory.clear();
        }
    }

    fn set_guest_memory(&mut self, regions: &[GuestRegion]) -> Result<(), BackendError> {
        let mut memory = Vec::with_capacity(regions.len());
        for r in regions {
            let file = match r.file {
                Some((fd, start)) => {
                    // SAFETY: the caller guarantees `fd` is open for the duration of the call.
                    let b = unsafe { BorrowedFd::borrow_raw(fd) };
                    let dup = b.try_clone_to_owned().map_err(|e| BackendError::Os {
                        call: "dup",
                        errno: e.raw_os_error().unwrap_or(libc::EIO),
                    })?;
                    Some((dup, start))
                }
                None => None,
            };
            memory.push(Ram {
                gpa: r.gpa,
                size: r.size,
                host: r.host_addr,
                file,
            });
        }
        let new = self.pieces_for(regions);
        let old = std::mem::take(&mut self.stage2_pieces);
        for p in old.iter().filter(|p| !new.contains(p)) {
            self.unmap_stage2_piece(p);
        }
        self.memory = memory;
        let mut mapped: Vec<Piece> = old.iter().filter(|p| new.contains(p)).copied().collect();
        let mut result = Ok(());
        let rw = sys::IOMMU_IOAS_MAP_READABLE | sys::IOMMU_IOAS_MAP_WRITEABLE;
        for p in new.iter().filter(|p| !old.contains(p)) {
            // Guest-physical == IOVA in the stage-2 IOAS.
            match self.map_guest(self.stage2, p.iova, p.iova, p.len, rw) {
                Ok(()) => mapped.push(*p),
                Err(e) => {
                    warn!("stage-2 map of guest RAM {:#x}+{:#x}: {e}", p.iova, p.len);
                    result = Err(e);
                    break;
                }
            }
        }
        self.stage2_pieces = mapped;
        result
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
                json!({"endpoint": id, "device": dev, "domain": e.domain, "hwpt": e.hwpt})
            })
            .collect();
        let domains: Vec<_> = self
            .domains
            .iter()
            .map(|(id, d)| json!({"domain": id, "ioas": d.ioas, "bypass": d.bypass}))
            .collect();
        let stage2: Vec<_> = self
            .stage2_pieces
            .iter()
            .map(|p| json!({"iova": p.iova, "length": p.len}))
            .collect();
        json!({
            "backend": "iommufd",
            "blocked_ioas": self.blocked,
            "stage2_ioas": self.stage2,
            "unattached_bypass": self.unattached_bypass,
            "endpoints": endpoints,
            "domains": domains,
            "stage2": stage2,
            "allowed_iovas": self.allowed,
            "iova_alignment": self.iova_alignment,
            "map_by_file": self.map_file,
        })
    }
}

impl Drop for IommufdBackend {
    /// Closing the iommufd destroys every object in it, unless a launcher or VMM still holds the
    /// same iommufd: release ours explicitly so nothing outlives the daemon there either.
    fn drop(&mut self) {
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
            if let Err(err) = sys::destroy(self.fd(), ioas) {
                warn!("cannot destroy IOAS {ioas}: {err}");
            }
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
            map_file: true,
            allowed,
            iova_alignment: align,
            unattached_bypass: false,
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
        let p = b.pieces_for(&[
            region(0, 16 << 20),
            region(0x7ff0_0000, 2 << 20),
            region(1 << 30, 4096),
        ]);
        assert_eq!(
            p,
            vec![
                Piece {
                    iova: 0x7ff0_0000,
                    len: 1 << 20,
                    host: 0x7f00_0000_0000 + 0x7ff0_0000
                },
                Piece {
                    iova: 1 << 30,
                    len: 4096,
                    host: 0x7f00_4000_0000
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
        b.domains.insert(
            1,
            DomainObj {
                ioas: 7,
                bypass: false,
            },
        );
        b.memory.push(Ram {
            gpa: 0x1000_0000,
            size: 0x10_0000,
            host: 0x7f00_0000_0000,
            file: None,
        });
        let rw = MAP_F_READ | MAP_F_WRITE;
        // Not guest RAM: before, after, across the end of the region.
        for phys in [0x0fff_f000, 0x1010_0000, 0x100f_f000] {
            let e = b.map(1, 0, 0x1fff, phys, rw).unwrap_err();
            assert!(
                matches!(e, BackendError::NotGuestRam { .. }),
                "{phys:#x}: {e}"
            );
            assert_eq!(e.status(), crate::protocol::Status::Range);
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
    }

    #[test]
    fn opening_a_missing_iommufd_names_the_path() {
        let cfg = IommufdConfig {
            iommufd: Some("/nonexistent/iommu".into()),
            ..Default::default()
        };
        let e = IommufdBackend::open(&cfg).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/iommu"), "{e}");
    }
}
