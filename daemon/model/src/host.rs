//! What a validated request does outside the device model: the host backend interface.
//!
//! The device model ([`crate::device`]) checks every request against the specification and its
//! own tables, then calls the backend, then commits. A backend error leaves the guest-visible
//! state unchanged and becomes the request's status ([`BackendError::status`]), so the guest
//! never sees a half-applied request.
//!
//! - [`Software`]: the software backend (`--backend software`). It has no host objects: the
//!   device model's own tables ([`crate::device::Device::translate`], [`crate::guest_tables`])
//!   are the whole IOMMU.
//! - the daemon's iommufd backend: guest domains become iommufd objects on the host, so
//!   passthrough (VFIO) devices are translated by the host IOMMU (docs/IOMMUFD.md).

use std::fmt;

use crate::config::ReservedRegion;
use crate::guest_tables::{Binding, Invalidate};
use crate::protocol::Status;

/// Why a backend refused or failed a request. Every variant maps to one virtio status.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// A kernel call failed; the status follows the errno (`errno_status`).
    #[error("{call} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Os { call: &'static str, errno: i32 },
    /// A MAP whose physical range is not (entirely, in one region) guest RAM the daemon knows
    /// from the vhost-user memory table.
    #[error("physical range {start:#x}-{end:#x} is not guest RAM")]
    NotGuestRam { start: u64, end: u64 },
    /// A MAP with the MMIO flag: the host IOMMU cannot map guest MMIO (it has no host memory).
    #[error("MMIO mappings cannot be made on the host IOMMU")]
    Mmio,
    /// The backend has no record of something the device model says exists (a bug).
    #[error("backend state out of sync: {0}")]
    Internal(&'static str),
    /// The host IOMMU cannot do this (a table format of another architecture, PASIDs on a
    /// device without them).
    #[error("not supported by the host IOMMU: {0}")]
    Unsupported(&'static str),
}

/// The virtio-iommu status for a kernel errno.
///
/// - ENOMEM, ENOSPC (no IOVA space / page-table memory): NOMEM;
/// - EINVAL, ERANGE, EOVERFLOW (address or size the host cannot take): RANGE;
/// - EEXIST, EADDRINUSE (the host has something there already, e.g. a host reserved IOVA):
///   INVAL, the status of an overlapping MAP;
/// - ENOENT (nothing to unmap, unknown object): NOENT;
/// - anything else (EFAULT, EPERM, EBUSY, EIO, ...): DEVERR.
pub fn errno_status(errno: i32) -> Status {
    match errno {
        libc::ENOMEM | libc::ENOSPC => Status::NoMem,
        libc::EINVAL | libc::ERANGE | libc::EOVERFLOW => Status::Range,
        libc::EEXIST | libc::EADDRINUSE => Status::Inval,
        libc::ENOENT => Status::NoEnt,
        _ => Status::DevErr,
    }
}

impl BackendError {
    /// The status the guest sees for this error.
    pub fn status(&self) -> Status {
        match self {
            BackendError::Os { errno, .. } => errno_status(*errno),
            BackendError::NotGuestRam { .. } => Status::Range,
            BackendError::Mmio => Status::Unsupp,
            BackendError::Internal(_) => Status::DevErr,
            BackendError::Unsupported(_) => Status::Unsupp,
        }
    }
}

/// One region of guest RAM as the daemon has it mapped (from the vhost-user memory table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRegion {
    pub gpa: u64,
    pub size: u64,
    /// Where the daemon mapped it.
    pub host_addr: u64,
    /// The file behind it (the frontend's memfd) and the region's offset in it, valid for the
    /// duration of the call (a backend keeps a duplicate if it needs it later).
    pub file: Option<(std::os::fd::RawFd, u64)>,
}

/// What the host allows, applied to the device configuration at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostLimits {
    /// Page sizes the host can map (intersected with the configured mask).
    pub page_size_mask: u64,
    /// IOVA ranges the host cannot map: reported by PROBE as RESV_MEM RESERVED regions.
    pub holes: Vec<(u64, u64)>,
}

/// Why a reset is happening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetKind {
    /// VHOST_USER_RESET_DEVICE or a guest reboot: the guest memory table stays.
    Device,
    /// The frontend went away: guest memory is gone too.
    Connection,
}

/// A page request the host IOMMU reported (iommufd fault queue) for an endpoint's DMA through
/// a guest table, waiting for the guest's PAGE_RESP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPageRequest {
    pub endpoint: u32,
    pub pasid: Option<u32>,
    /// The host's page-request group index (per endpoint).
    pub grpid: u32,
    /// READ 1, WRITE 2, EXEC 4, PRIV 8 (the page-request record's flag bits).
    pub perm: u32,
    pub address: u64,
    /// The last request of its group: the one the response answers.
    pub last: bool,
    /// What the host needs back with the response.
    pub cookie: u32,
}

/// A fault the host IOMMU reported about a guest table (iommufd vEVENTQ: SMMUv3 event records,
/// the mock's events), to become a fault record on the event queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFault {
    pub endpoint: u32,
    pub pasid: Option<u32>,
    /// FAULT_R_UNKNOWN, FAULT_R_DOMAIN (a bad configuration: CD, substream) or FAULT_R_MAPPING
    /// (a translation, access or permission fault of the guest's table).
    pub reason: u8,
    /// READ 1, WRITE 2, EXEC 4, PRIV 8 (fault record flag bits).
    pub access: u32,
    pub address: Option<u64>,
}

pub use crate::guest_tables::{HostIommu, HOST_IOMMU_SELFTEST, HOST_IOMMU_SMMUV3, HOST_IOMMU_VTD};

/// The operations of the device model that reach the host, which every backend has. Called
/// with the device lock held, after validation; `Err` means nothing changed on the host either.
///
/// Guest-owned tables (the PASID extension) are a second trait, [`NestingHost`], which only a
/// backend whose host IOMMU walks the guest's tables implements ([`HostBackend::nesting_mut`]).
pub trait HostBackend: Send + fmt::Debug {
    /// A name for logs and the control socket.
    fn name(&self) -> &'static str;
    /// Whether guest-owned tables (the PASID extension, docs/PASID.md) take effect on this
    /// backend. Only then does the device offer the extension's feature bits. True for a
    /// backend with a [`NestingHost`], and for the software backend, which walks the tables
    /// itself (in the device model) and so has no nesting host.
    fn guest_tables(&self) -> bool {
        false
    }
    /// The host IOMMU that walks guest tables, for PROBE and the host's event fd. None: the
    /// device model's own tables are all there is (the software backend), or the host does not
    /// nest (then `guest_tables()` is false and no extension request comes).
    fn nesting(&self) -> Option<&dyn NestingHost> {
        None
    }
    /// [`HostBackend::nesting`], for the extension's requests.
    fn nesting_mut(&mut self) -> Option<&mut dyn NestingHost> {
        None
    }
    /// `endpoint` joins `domain` (created by this call when `new_domain`). When it was attached
    /// elsewhere it moves atomically (no window without translation).
    fn attach(
        &mut self,
        endpoint: u32,
        domain: u32,
        bypass: bool,
        new_domain: bool,
    ) -> Result<(), BackendError>;
    /// `endpoint` leaves its domain: DMA is blocked (or bypasses, when unattached endpoints do).
    fn detach(&mut self, endpoint: u32) -> Result<(), BackendError>;
    /// The domain's last endpoint left: release it and its mappings. Cannot fail (best effort,
    /// logged).
    fn destroy_domain(&mut self, domain: u32);
    /// Map `[iova, end]` to guest-physical `phys` with `flags` (MAP_F_*).
    fn map(
        &mut self,
        domain: u32,
        iova: u64,
        end: u64,
        phys: u64,
        flags: u32,
    ) -> Result<(), BackendError>;
    /// Remove every mapping inside `[start, end]` (the device model has checked none is split).
    fn unmap(&mut self, domain: u32, start: u64, end: u64) -> Result<(), BackendError>;
    /// The journaled state of a previous process was resumed (`true`: replayed through this
    /// backend) or dropped. A backend that adopted the previous process's host objects moves
    /// its devices to their new ones now and releases the old.
    fn resumed(&mut self, _resumed: bool) {}
    /// Unattached endpoints now bypass (`true`) or are blocked.
    fn set_unattached_bypass(&mut self, bypass: bool) -> Result<(), BackendError>;
    /// Release every object the guest caused (domains, mappings; guest memory on `Connection`).
    fn reset(&mut self, kind: ResetKind);
    /// The vhost-user memory table changed. Mappings made earlier stay guest-visible; a backend
    /// that maps guest RAM on the host must release what left it and map again what came back
    /// (docs/DEVICE.md, "Guest memory changes").
    fn set_guest_memory(&mut self, regions: &[GuestRegion]) -> Result<(), BackendError>;
    /// Whether guest-physical `phys` is guest RAM in the current memory table (None: the
    /// backend does not know, or there is no table yet).
    fn guest_ram_at(&self, _phys: u64) -> Option<bool> {
        None
    }
    /// Host objects, for the control socket (`backend` request).
    fn describe(&self) -> serde_json::Value;
    /// The ioctl requests the backend makes while serving (the seccomp filters of the serving
    /// threads allow them).
    fn serving_ioctls(&self) -> &'static [u64] {
        &[]
    }
}

/// A host IOMMU that walks the guest's own tables (the PASID extension, docs/PASID.md): guest
/// tables become nested page tables on the host, PASIDs of host devices are attached, the
/// host's caches are invalidated, and the host's page requests and faults come back to the
/// guest. Reached through [`HostBackend::nesting_mut`]; the device calls it only when
/// [`HostBackend::guest_tables`] made it offer the extension, with the same rules as
/// [`HostBackend`] (after validation; `Err`: nothing changed on the host).
pub trait NestingHost {
    /// The host IOMMU behind guest tables, for the PROBE properties of docs/PASID.md §5 (None:
    /// PROBE describes the device model's own formats).
    fn host_iommu(&self) -> Option<HostIommu>;
    /// `domain` (which exists) now translates through the guest table `binding`; its endpoints
    /// move to it atomically (a replaced table included).
    fn attach_table(&mut self, domain: u32, binding: &Binding) -> Result<(), BackendError>;
    /// `domain` has no table any more: an empty MAP domain (its endpoints' DMA is blocked).
    fn detach_table(&mut self, domain: u32) -> Result<(), BackendError>;
    /// `endpoint`'s DMA with `pasid` goes to `domain` (moved atomically if attached elsewhere).
    fn attach_pasid(&mut self, endpoint: u32, pasid: u32, domain: u32) -> Result<(), BackendError>;
    /// `endpoint`'s DMA with `pasid` is blocked again.
    fn detach_pasid(&mut self, endpoint: u32, pasid: u32) -> Result<(), BackendError>;
    /// Invalidate the host's caches of `domain`'s guest table as `inv` (validated) says.
    fn invalidate(&mut self, domain: u32, inv: &Invalidate) -> Result<(), BackendError>;
    /// A file descriptor that becomes readable when the host has page requests or faults
    /// ([`NestingHost::page_requests`], [`NestingHost::host_faults`]); the vhost worker
    /// watches it.
    fn page_request_fd(&self) -> Option<std::os::fd::RawFd>;
    /// The page requests the host reported since the last call.
    fn page_requests(&mut self) -> Vec<HostPageRequest>;
    /// The faults the host reported since the last call (read with `page_requests`, when the
    /// same fd is readable).
    fn host_faults(&mut self) -> Vec<HostFault>;
    /// Answer a host page request (`cookie` from [`HostPageRequest`]) with a PAGE_RESP code.
    fn page_response(&mut self, cookie: u32, code: u16) -> Result<(), BackendError>;
}

/// The software backend: the device model's tables are the whole IOMMU. It remembers the
/// memory table only to say whether a translation lands in guest RAM.
#[derive(Debug, Default)]
pub struct Software {
    /// `(gpa, size)` of each region; None before the first table.
    ram: Option<Vec<(u64, u64)>>,
}

impl HostBackend for Software {
    fn name(&self) -> &'static str {
        "software"
    }
    /// The software backend walks the guest's tables itself ([`crate::guest_tables`]): it has
    /// no nesting host, and the extension's requests change the device model only.
    fn guest_tables(&self) -> bool {
        true
    }
    fn attach(&mut self, _: u32, _: u32, _: bool, _: bool) -> Result<(), BackendError> {
        Ok(())
    }
    fn detach(&mut self, _: u32) -> Result<(), BackendError> {
        Ok(())
    }
    fn destroy_domain(&mut self, _: u32) {}
    fn map(&mut self, _: u32, _: u64, _: u64, _: u64, _: u32) -> Result<(), BackendError> {
        Ok(())
    }
    fn unmap(&mut self, _: u32, _: u64, _: u64) -> Result<(), BackendError> {
        Ok(())
    }
    fn set_unattached_bypass(&mut self, _: bool) -> Result<(), BackendError> {
        Ok(())
    }
    fn reset(&mut self, kind: ResetKind) {
        if kind == ResetKind::Connection {
            self.ram = None;
        }
    }
    fn set_guest_memory(&mut self, regions: &[GuestRegion]) -> Result<(), BackendError> {
        self.ram = Some(regions.iter().map(|r| (r.gpa, r.size)).collect());
        Ok(())
    }
    fn guest_ram_at(&self, phys: u64) -> Option<bool> {
        let ram = self.ram.as_ref()?;
        Some(
            ram.iter()
                .any(|&(gpa, size)| phys >= gpa && phys - gpa < size),
        )
    }
    fn describe(&self) -> serde_json::Value {
        let ram: Vec<_> = self
            .ram
            .iter()
            .flatten()
            .map(|(gpa, size)| serde_json::json!({"gpa": gpa, "size": size}))
            .collect();
        serde_json::json!({"backend": "software", "guest_ram": ram})
    }
}

/// Merge host IOVA holes into the configured reserved regions: configured regions keep their
/// subtype; the parts of holes they do not cover become RESERVED regions. The result is sorted
/// and non-overlapping.
pub fn merge_holes(configured: &[ReservedRegion], holes: &[(u64, u64)]) -> Vec<ReservedRegion> {
    let mut out: Vec<ReservedRegion> = configured.to_vec();
    for &(hs, he) in holes {
        // Subtract every configured region from [hs, he].
        let mut pieces = vec![(hs, he)];
        for r in configured {
            let mut next = Vec::with_capacity(pieces.len() + 1);
            for (s, e) in pieces {
                if r.end < s || r.start > e {
                    next.push((s, e));
                    continue;
                }
                if r.start > s {
                    next.push((s, r.start - 1));
                }
                if r.end < e {
                    next.push((r.end + 1, e));
                }
            }
            pieces = next;
        }
        out.extend(pieces.into_iter().map(|(start, end)| ReservedRegion {
            start,
            end,
            subtype: crate::protocol::RESV_MEM_T_RESERVED,
        }));
    }
    out.sort_by_key(|r| r.start);
    out
}

/// The complement of `allowed` (sorted or not) inside `[lo, hi]`.
pub fn holes_of(allowed: &[(u64, u64)], lo: u64, hi: u64) -> Vec<(u64, u64)> {
    let mut allowed: Vec<(u64, u64)> = allowed
        .iter()
        .filter(|&&(s, e)| s <= e && e >= lo && s <= hi)
        .map(|&(s, e)| (s.max(lo), e.min(hi)))
        .collect();
    allowed.sort_unstable();
    let mut holes = Vec::new();
    let mut next = Some(lo);
    for (s, e) in allowed {
        let Some(n) = next else { break };
        if s > n {
            holes.push((n, s - 1));
        }
        if e >= n {
            next = e.checked_add(1);
        }
    }
    if let Some(n) = next {
        if n <= hi {
            holes.push((n, hi));
        }
    }
    holes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RESV_MEM_T_MSI, RESV_MEM_T_RESERVED};

    #[test]
    fn errno_to_status() {
        for (errno, status) in [
            (libc::ENOMEM, Status::NoMem),
            (libc::ENOSPC, Status::NoMem),
            (libc::EINVAL, Status::Range),
            (libc::ERANGE, Status::Range),
            (libc::EOVERFLOW, Status::Range),
            (libc::EEXIST, Status::Inval),
            (libc::EADDRINUSE, Status::Inval),
            (libc::ENOENT, Status::NoEnt),
            (libc::EFAULT, Status::DevErr),
            (libc::EPERM, Status::DevErr),
            (libc::EBUSY, Status::DevErr),
            (libc::EIO, Status::DevErr),
        ] {
            assert_eq!(errno_status(errno), status, "errno {errno}");
            let e = BackendError::Os {
                call: "IOMMU_IOAS_MAP",
                errno,
            };
            assert_eq!(e.status(), status);
        }
        assert_eq!(
            BackendError::NotGuestRam { start: 0, end: 1 }.status(),
            Status::Range
        );
        assert_eq!(BackendError::Mmio.status(), Status::Unsupp);
        assert_eq!(BackendError::Internal("x").status(), Status::DevErr);
        assert_eq!(BackendError::Unsupported("x").status(), Status::Unsupp);
        let msg = BackendError::Os {
            call: "IOMMU_IOAS_MAP",
            errno: libc::ENOMEM,
        }
        .to_string();
        assert!(msg.starts_with("IOMMU_IOAS_MAP failed: "), "{msg}");
    }

    #[test]
    fn software_walks_guest_tables_without_a_nesting_host() {
        // The device offers the extension (guest tables take effect) but the extension's
        // requests have nothing to do on a host: the model's tables are the IOMMU.
        let mut s = Software::default();
        assert!(s.guest_tables());
        assert!(s.nesting().is_none());
        assert!(s.nesting_mut().is_none());
    }

    #[test]
    fn holes_are_the_complement() {
        // The selftest mock's aperture.
        let h = holes_of(&[(1 << 24, (1 << 31) - 1)], 0, u64::MAX);
        assert_eq!(h, vec![(0, (1 << 24) - 1), (1 << 31, u64::MAX)]);
        // Nothing allowed: one hole; everything allowed: none.
        assert_eq!(holes_of(&[], 0, 100), vec![(0, 100)]);
        assert_eq!(holes_of(&[(0, u64::MAX)], 0, u64::MAX), vec![]);
        // Unsorted, overlapping, partly outside [lo, hi].
        let h = holes_of(&[(50, 60), (0, 10), (55, 70), (200, 300)], 5, 250);
        assert_eq!(h, vec![(11, 49), (71, 199)]);
    }

    #[test]
    fn holes_merge_around_configured_regions() {
        let msi = ReservedRegion {
            start: 0xfee0_0000,
            end: 0xfeef_ffff,
            subtype: RESV_MEM_T_MSI,
        };
        let m = merge_holes(&[msi], &[(0, 0xff_ffff), (0x8000_0000, u64::MAX)]);
        let got: Vec<_> = m.iter().map(|r| (r.start, r.end, r.subtype)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0xff_ffff, RESV_MEM_T_RESERVED),
                (0x8000_0000, 0xfedf_ffff, RESV_MEM_T_RESERVED),
                (0xfee0_0000, 0xfeef_ffff, RESV_MEM_T_MSI),
                (0xfef0_0000, u64::MAX, RESV_MEM_T_RESERVED),
            ]
        );
        // No holes: the configuration as it was.
        assert_eq!(merge_holes(&[msi], &[]), vec![msi]);
    }
}
