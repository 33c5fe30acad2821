//! The kernel ABI the iommufd backend uses: iommufd (`include/uapi/linux/iommufd.h`), the VFIO
//! cdev iommufd calls (`include/uapi/linux/vfio.h`) and the selftest mock
//! (`drivers/iommu/iommufd/iommufd_test.h`, CONFIG_IOMMUFD_TEST).
//!
//! Every call is a raw `ioctl(2)` on a borrowed fd with a `#[repr(C)]` argument that mirrors the
//! kernel header field for field. Errors carry the ioctl name and the errno, which the backend
//! turns into a virtio-iommu status.
//!
//! Why not `iommufd-ioctls` / `vfio-ioctls`: iommufd-ioctls 0.4 wraps IOAS_ALLOC/MAP/UNMAP but
//! not IOAS_IOVA_RANGES or the selftest command, and vfio-ioctls 0.10 needs the KVM crates for
//! its cdev support and unwraps a detach in `Drop` (a panic in the daemon when the kernel refuses).
//! The handful of calls needed here are simpler to keep exact and typed in one place.
//!
//! The selftest ABI (`IOMMU_TEST_CMD`, the mock's data types) is in [`selftest`], re-exported
//! here. Besides the daemon, the test tools use this crate (`vui-drive` checks the host state with
//! the selftest ops and drives QEMU's edu device through the VFIO region calls).
//!
//! Checked against Linux 7.3: `include/uapi/linux/iommufd.h`, `include/uapi/linux/vfio.h`,
//! `drivers/iommu/iommufd/iommufd_test.h`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

pub mod selftest;
pub use selftest::*;

/// `_IO(';', nr)`: iommufd and VFIO encode neither direction nor size in the number.
const fn io(nr: u64) -> u64 {
    (0x3b << 8) | nr
}

pub const IOMMU_DESTROY: u64 = io(0x80);
pub const IOMMU_IOAS_ALLOC: u64 = io(0x81);
pub const IOMMU_IOAS_IOVA_RANGES: u64 = io(0x84);
pub const IOMMU_IOAS_MAP: u64 = io(0x85);
pub const IOMMU_IOAS_UNMAP: u64 = io(0x86);
/// Linux 6.13.
pub const IOMMU_IOAS_MAP_FILE: u64 = io(0x8f);
/// VFIO_BASE is 100.
pub const VFIO_DEVICE_BIND_IOMMUFD: u64 = io(100 + 18);
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u64 = io(100 + 19);
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u64 = io(100 + 20);
/// Test tools only (not made by the daemon).
pub const VFIO_DEVICE_GET_REGION_INFO: u64 = io(100 + 8);
/// Nesting (Linux 6.6-6.15): HWPT_ALLOC, GET_HW_INFO, HWPT_INVALIDATE, FAULT_QUEUE_ALLOC,
/// VIOMMU_ALLOC, VDEVICE_ALLOC.
pub const IOMMU_HWPT_ALLOC: u64 = io(0x89);
pub const IOMMU_GET_HW_INFO: u64 = io(0x8a);
pub const IOMMU_HWPT_INVALIDATE: u64 = io(0x8d);
pub const IOMMU_FAULT_QUEUE_ALLOC: u64 = io(0x8e);
pub const IOMMU_VIOMMU_ALLOC: u64 = io(0x90);
pub const IOMMU_VDEVICE_ALLOC: u64 = io(0x91);
/// Linux 6.15.
pub const IOMMU_VEVENTQ_ALLOC: u64 = io(0x93);

/// The ioctls the backend makes after start-up (the seccomp filter of the serving threads
/// allows exactly these, besides FIONBIO). Binding VFIO devices and creating mock devices happen
/// before the filters are installed. IOMMU_TEST_CMD (MOCK_DOMAIN_REPLACE, PASID_ATTACH...) only
/// with mock devices: [`SERVING_IOCTLS_MOCK`].
pub const SERVING_IOCTLS: [u64; 14] = [
    IOMMU_VEVENTQ_ALLOC,
    IOMMU_IOAS_MAP_FILE,
    IOMMU_DESTROY,
    IOMMU_IOAS_ALLOC,
    IOMMU_IOAS_IOVA_RANGES,
    IOMMU_IOAS_MAP,
    IOMMU_IOAS_UNMAP,
    VFIO_DEVICE_ATTACH_IOMMUFD_PT,
    VFIO_DEVICE_DETACH_IOMMUFD_PT,
    IOMMU_HWPT_ALLOC,
    IOMMU_HWPT_INVALIDATE,
    IOMMU_VIOMMU_ALLOC,
    IOMMU_VDEVICE_ALLOC,
    IOMMU_GET_HW_INFO,
];
pub const SERVING_IOCTLS_MOCK: [u64; 15] = [
    IOMMU_VEVENTQ_ALLOC,
    IOMMU_IOAS_MAP_FILE,
    IOMMU_DESTROY,
    IOMMU_IOAS_ALLOC,
    IOMMU_IOAS_IOVA_RANGES,
    IOMMU_IOAS_MAP,
    IOMMU_IOAS_UNMAP,
    VFIO_DEVICE_ATTACH_IOMMUFD_PT,
    VFIO_DEVICE_DETACH_IOMMUFD_PT,
    IOMMU_HWPT_ALLOC,
    IOMMU_HWPT_INVALIDATE,
    IOMMU_VIOMMU_ALLOC,
    IOMMU_VDEVICE_ALLOC,
    IOMMU_GET_HW_INFO,
    IOMMU_TEST_CMD,
];

pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

/// `enum iommufd_hwpt_alloc_flags`.
pub const IOMMU_HWPT_ALLOC_NEST_PARENT: u32 = 1 << 0;
pub const IOMMU_HWPT_FAULT_ID_VALID: u32 = 1 << 2;
pub const IOMMU_HWPT_ALLOC_PASID: u32 = 1 << 3;
/// `enum iommu_hwpt_data_type`.
pub const IOMMU_HWPT_DATA_NONE: u32 = 0;
pub const IOMMU_HWPT_DATA_VTD_S1: u32 = 1;
pub const IOMMU_HWPT_DATA_ARM_SMMUV3: u32 = 2;
/// `enum iommu_hw_info_type`.
pub const IOMMU_HW_INFO_TYPE_INTEL_VTD: u32 = 1;
pub const IOMMU_HW_INFO_TYPE_ARM_SMMUV3: u32 = 2;
/// `enum iommu_hwpt_invalidate_data_type` / `iommu_viommu_invalidate_data_type`.
pub const IOMMU_HWPT_INVALIDATE_DATA_VTD_S1: u32 = 0;
pub const IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3: u32 = 1;
/// `enum iommu_viommu_type`.
pub const IOMMU_VIOMMU_TYPE_ARM_SMMUV3: u32 = 1;
/// `enum iommu_veventq_type`.
pub const IOMMU_VEVENTQ_TYPE_ARM_SMMUV3: u32 = 1;
/// VFIO_DEVICE_ATTACH_PASID / VFIO_DEVICE_DETACH_PASID.
pub const VFIO_DEVICE_PASID: u32 = 1 << 0;
/// vfio-pci's fixed region indexes (the anonymous enum of vfio.h): BAR0..BAR5 are 0..5.
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// `struct vfio_region_info` flags.
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;

/// A failed ioctl: which one, and the errno.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("{call}: {}", io::Error::from_raw_os_error(*errno))]
pub struct SysError {
    pub call: &'static str,
    pub errno: i32,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuDestroy {
    pub size: u32,
    pub id: u32,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuIoasAlloc {
    pub size: u32,
    pub flags: u32,
    pub out_ioas_id: u32,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuIoasIovaRanges {
    pub size: u32,
    pub ioas_id: u32,
    pub num_iovas: u32,
    pub reserved: u32,
    pub allowed_iovas: u64,
    pub out_iova_alignment: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuIovaRange {
    pub start: u64,
    pub last: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuIoasMap {
    pub size: u32,
    pub flags: u32,
    pub ioas_id: u32,
    pub reserved: u32,
    pub user_va: u64,
    pub length: u64,
    pub iova: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuIoasMapFile {
    pub size: u32,
    pub flags: u32,
    pub ioas_id: u32,
    pub fd: i32,
    pub start: u64,
    pub length: u64,
    pub iova: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuIoasUnmap {
    pub size: u32,
    pub ioas_id: u32,
    pub iova: u64,
    pub length: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct VfioDeviceBindIommufd {
    pub argsz: u32,
    pub flags: u32,
    pub iommufd: i32,
    pub out_devid: u32,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct VfioDeviceAttachIommufdPt {
    pub argsz: u32,
    pub flags: u32,
    pub pt_id: u32,
    pub pasid: u32,
}

/// `struct iommu_hwpt_alloc` with the 6.11 `fault_id`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuHwptAlloc {
    pub size: u32,
    pub flags: u32,
    pub dev_id: u32,
    pub pt_id: u32,
    pub out_hwpt_id: u32,
    pub reserved: u32,
    pub data_type: u32,
    pub data_len: u32,
    pub data_uptr: u64,
    pub fault_id: u32,
    pub reserved2: u32,
}

/// `struct iommu_hw_info` (6.15 layout: `out_max_pasid_log2` in the former reserved bytes).
#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuHwInfo {
    pub size: u32,
    pub flags: u32,
    pub dev_id: u32,
    pub data_len: u32,
    pub data_uptr: u64,
    pub out_data_type: u32,
    pub out_max_pasid_log2: u8,
    pub reserved: [u8; 3],
    pub out_capabilities: u64,
}

/// `struct iommu_hwpt_invalidate`: `hwpt_id` is a nested HWPT or a vIOMMU.
#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuHwptInvalidate {
    pub size: u32,
    pub hwpt_id: u32,
    pub data_uptr: u64,
    pub data_type: u32,
    pub entry_len: u32,
    pub entry_num: u32,
    pub reserved: u32,
}

/// `struct iommu_fault_alloc`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuFaultAlloc {
    pub size: u32,
    pub flags: u32,
    pub out_fault_id: u32,
    pub out_fault_fd: u32,
}

/// `struct iommu_viommu_alloc` (6.15 layout, no driver data passed).
#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuViommuAlloc {
    pub size: u32,
    pub flags: u32,
    pub type_: u32,
    pub dev_id: u32,
    pub hwpt_id: u32,
    pub out_viommu_id: u32,
    pub data_len: u32,
    pub reserved: u32,
    pub data_uptr: u64,
}

/// `struct iommu_vdevice_alloc`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuVdeviceAlloc {
    pub size: u32,
    pub viommu_id: u32,
    pub dev_id: u32,
    pub out_vdevice_id: u32,
    pub virt_id: u64,
}

/// `struct iommu_veventq_alloc`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct IommuVeventqAlloc {
    pub size: u32,
    pub flags: u32,
    pub viommu_id: u32,
    pub type_: u32,
    pub veventq_depth: u32,
    pub out_veventq_id: u32,
    pub out_veventq_fd: u32,
    pub reserved: u32,
}

/// `struct vfio_region_info` (without its capability chain: `cap_offset` stays 0 as long as
/// `argsz` is this size).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfioRegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

/// `struct vfio_device_detach_iommufd_pt`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct VfioDeviceDetachIommufdPt {
    pub argsz: u32,
    pub flags: u32,
    pub pasid: u32,
}

const _: () = assert!(std::mem::size_of::<IommuHwptAlloc>() == 48);
const _: () = assert!(std::mem::size_of::<IommuHwInfo>() == 40);
const _: () = assert!(std::mem::size_of::<IommuHwptInvalidate>() == 32);
const _: () = assert!(std::mem::size_of::<IommuFaultAlloc>() == 16);
const _: () = assert!(std::mem::size_of::<IommuViommuAlloc>() == 40);
const _: () = assert!(std::mem::size_of::<IommuVdeviceAlloc>() == 24);
const _: () = assert!(std::mem::size_of::<IommuVeventqAlloc>() == 32);
const _: () = assert!(std::mem::size_of::<IommuIoasMap>() == 40);
const _: () = assert!(std::mem::size_of::<IommuIoasUnmap>() == 24);
const _: () = assert!(std::mem::size_of::<IommuIoasMapFile>() == 40);
const _: () = assert!(std::mem::size_of::<IommuIoasIovaRanges>() == 32);
const _: () = assert!(std::mem::size_of::<VfioRegionInfo>() == 32);

/// Issue `req` on `fd` with `arg`.
///
/// # Safety
/// `T` must be the argument structure the kernel expects for `req` (a `#[repr(C)]` mirror of
/// the uAPI struct), and any pointers inside it must be valid for what the kernel does with them.
unsafe fn ioctl<T>(
    fd: BorrowedFd<'_>,
    req: u64,
    call: &'static str,
    arg: &mut T,
) -> Result<(), SysError> {
    // SAFETY: the caller guarantees `arg` matches `req`; `arg` is a live exclusive reference for
    // the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return Err(SysError { call, errno });
    }
    Ok(())
}

pub fn destroy(fd: BorrowedFd<'_>, id: u32) -> Result<(), SysError> {
    let mut a = IommuDestroy {
        size: std::mem::size_of::<IommuDestroy>() as u32,
        id,
    };
    // SAFETY: IOMMU_DESTROY takes struct iommu_destroy, which `a` mirrors; no pointers.
    unsafe { ioctl(fd, IOMMU_DESTROY, "IOMMU_DESTROY", &mut a) }
}

pub fn ioas_alloc(fd: BorrowedFd<'_>) -> Result<u32, SysError> {
    let mut a = IommuIoasAlloc {
        size: std::mem::size_of::<IommuIoasAlloc>() as u32,
        ..Default::default()
    };
    // SAFETY: IOMMU_IOAS_ALLOC takes struct iommu_ioas_alloc, which `a` mirrors; no pointers.
    unsafe { ioctl(fd, IOMMU_IOAS_ALLOC, "IOMMU_IOAS_ALLOC", &mut a) }?;
    Ok(a.out_ioas_id)
}

/// The IOVA ranges an IOAS can map (given the devices attached to it) and the IOVA alignment.
pub fn ioas_iova_ranges(
    fd: BorrowedFd<'_>,
    ioas: u32,
) -> Result<(Vec<IommuIovaRange>, u64), SysError> {
    let mut ranges = vec![IommuIovaRange::default(); 8];
    loop {
        let mut a = IommuIoasIovaRanges {
            size: std::mem::size_of::<IommuIoasIovaRanges>() as u32,
            ioas_id: ioas,
            num_iovas: ranges.len() as u32,
            allowed_iovas: ranges.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: IOMMU_IOAS_IOVA_RANGES takes struct iommu_ioas_iova_ranges; `allowed_iovas`
        // points to `num_iovas` writable iommu_iova_range entries owned by `ranges`.
        match unsafe { ioctl(fd, IOMMU_IOAS_IOVA_RANGES, "IOMMU_IOAS_IOVA_RANGES", &mut a) } {
            Ok(()) => {
                ranges.truncate(a.num_iovas as usize);
                return Ok((ranges, a.out_iova_alignment));
            }
            // Too small: the kernel wrote the number needed.
            Err(e) if e.errno == libc::EMSGSIZE && (a.num_iovas as usize) > ranges.len() => {
                ranges.resize(a.num_iovas as usize, IommuIovaRange::default());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Map `length` bytes of this process's memory at `user_va` at `iova` in `ioas`.
pub fn ioas_map(
    fd: BorrowedFd<'_>,
    ioas: u32,
    iova: u64,
    user_va: u64,
    length: u64,
    flags: u32,
) -> Result<(), SysError> {
    let mut a = IommuIoasMap {
        size: std::mem::size_of::<IommuIoasMap>() as u32,
        flags: flags | IOMMU_IOAS_MAP_FIXED_IOVA,
        ioas_id: ioas,
        reserved: 0,
        user_va,
        length,
        iova,
    };
    // SAFETY: IOMMU_IOAS_MAP takes struct iommu_ioas_map. `user_va` is a user address the
    // kernel pins with get_user_pages (it fails with EFAULT on an unmapped address); the caller
    // keeps the mapping alive while the IOAS maps it (guest RAM lives as long as the connection).
    unsafe { ioctl(fd, IOMMU_IOAS_MAP, "IOMMU_IOAS_MAP", &mut a) }
}

/// Map `length` bytes of the file `file` from offset `start` at `iova` in `ioas` (the pages of
/// the file, whatever this process has mapped where).
pub fn ioas_map_file(
    fd: BorrowedFd<'_>,
    ioas: u32,
    iova: u64,
    file: BorrowedFd<'_>,
    start: u64,
    length: u64,
    flags: u32,
) -> Result<(), SysError> {
    let mut a = IommuIoasMapFile {
        size: std::mem::size_of::<IommuIoasMapFile>() as u32,
        flags: flags | IOMMU_IOAS_MAP_FIXED_IOVA,
        ioas_id: ioas,
        fd: file.as_raw_fd(),
        start,
        length,
        iova,
    };
    // SAFETY: IOMMU_IOAS_MAP_FILE takes struct iommu_ioas_map_file, which `a` mirrors; `fd` is
    // an open file we borrow for the call; no pointers.
    unsafe { ioctl(fd, IOMMU_IOAS_MAP_FILE, "IOMMU_IOAS_MAP_FILE", &mut a) }
}

/// Unmap `[iova, iova + length)` from `ioas`; `(0, u64::MAX)` unmaps everything. Returns the
/// number of bytes unmapped.
pub fn ioas_unmap(fd: BorrowedFd<'_>, ioas: u32, iova: u64, length: u64) -> Result<u64, SysError> {
    let mut a = IommuIoasUnmap {
        size: std::mem::size_of::<IommuIoasUnmap>() as u32,
        ioas_id: ioas,
        iova,
        length,
    };
    // SAFETY: IOMMU_IOAS_UNMAP takes struct iommu_ioas_unmap, which `a` mirrors; no pointers.
    unsafe { ioctl(fd, IOMMU_IOAS_UNMAP, "IOMMU_IOAS_UNMAP", &mut a) }?;
    Ok(a.length)
}

/// Bind a VFIO cdev to the iommufd; returns the iommufd device id.
pub fn vfio_bind(dev: BorrowedFd<'_>, iommufd: BorrowedFd<'_>) -> Result<u32, SysError> {
    let mut a = VfioDeviceBindIommufd {
        argsz: std::mem::size_of::<VfioDeviceBindIommufd>() as u32,
        flags: 0,
        iommufd: iommufd.as_raw_fd(),
        out_devid: 0,
    };
    // SAFETY: VFIO_DEVICE_BIND_IOMMUFD takes struct vfio_device_bind_iommufd; no pointers.
    unsafe {
        ioctl(
            dev,
            VFIO_DEVICE_BIND_IOMMUFD,
            "VFIO_DEVICE_BIND_IOMMUFD",
            &mut a,
        )
    }?;
    Ok(a.out_devid)
}

/// Attach (or atomically replace the attachment of) a bound VFIO device to `pt_id` (an IOAS or
/// a HWPT). Returns the HWPT the device now uses.
pub fn vfio_attach(dev: BorrowedFd<'_>, pt_id: u32) -> Result<u32, SysError> {
    let mut a = VfioDeviceAttachIommufdPt {
        argsz: std::mem::size_of::<VfioDeviceAttachIommufdPt>() as u32,
        flags: 0,
        pt_id,
        pasid: 0,
    };
    // SAFETY: VFIO_DEVICE_ATTACH_IOMMUFD_PT takes struct vfio_device_attach_iommufd_pt (with
    // the 6.15 pasid field, ignored without the PASID flag); no pointers.
    unsafe {
        ioctl(
            dev,
            VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
            &mut a,
        )
    }?;
    Ok(a.pt_id)
}

/// Attach (or replace) PASID `pasid` of a bound VFIO device to `pt_id` (Linux 6.15).
pub fn vfio_attach_pasid(dev: BorrowedFd<'_>, pt_id: u32, pasid: u32) -> Result<u32, SysError> {
    let mut a = VfioDeviceAttachIommufdPt {
        argsz: std::mem::size_of::<VfioDeviceAttachIommufdPt>() as u32,
        flags: VFIO_DEVICE_PASID,
        pt_id,
        pasid,
    };
    // SAFETY: VFIO_DEVICE_ATTACH_IOMMUFD_PT takes struct vfio_device_attach_iommufd_pt, which
    // `a` mirrors with the pasid field the PASID flag makes valid; no pointers.
    unsafe {
        ioctl(
            dev,
            VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT(PASID)",
            &mut a,
        )
    }?;
    Ok(a.pt_id)
}

/// Detach PASID `pasid` of a bound VFIO device (its DMA with that PASID is blocked).
pub fn vfio_detach_pasid(dev: BorrowedFd<'_>, pasid: u32) -> Result<(), SysError> {
    let mut a = VfioDeviceDetachIommufdPt {
        argsz: std::mem::size_of::<VfioDeviceDetachIommufdPt>() as u32,
        flags: VFIO_DEVICE_PASID,
        pasid,
    };
    // SAFETY: VFIO_DEVICE_DETACH_IOMMUFD_PT takes struct vfio_device_detach_iommufd_pt, which
    // `a` mirrors; no pointers.
    unsafe {
        ioctl(
            dev,
            VFIO_DEVICE_DETACH_IOMMUFD_PT,
            "VFIO_DEVICE_DETACH_IOMMUFD_PT(PASID)",
            &mut a,
        )
    }
}

/// VFIO_DEVICE_GET_REGION_INFO: where region `index` of a VFIO device is in the device fd
/// (`offset`), its `size` and what it allows (`flags`).
pub fn vfio_region_info(dev: BorrowedFd<'_>, index: u32) -> Result<VfioRegionInfo, SysError> {
    let mut a = VfioRegionInfo {
        argsz: std::mem::size_of::<VfioRegionInfo>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_REGION_INFO takes struct vfio_region_info; with `argsz` the size
    // of the struct the kernel writes no capability chain past it; no pointers.
    unsafe {
        ioctl(
            dev,
            VFIO_DEVICE_GET_REGION_INFO,
            "VFIO_DEVICE_GET_REGION_INFO",
            &mut a,
        )
    }?;
    Ok(a)
}

/// The file offset of `[offset, offset + len)` of `region`, or EINVAL when that is not inside
/// the region.
fn region_at(
    region: &VfioRegionInfo,
    offset: u64,
    len: usize,
    call: &'static str,
) -> Result<i64, SysError> {
    let inval = SysError {
        call,
        errno: libc::EINVAL,
    };
    let end = offset.checked_add(len as u64).ok_or(inval)?;
    if end > region.size {
        return Err(inval);
    }
    i64::try_from(region.offset + offset).map_err(|_| inval)
}

/// Read `buf.len()` bytes at `offset` of a VFIO device region (config space, a BAR) through the
/// device fd (pread: one access of that size for 1, 2, 4 or 8 bytes).
pub fn vfio_region_read(
    dev: BorrowedFd<'_>,
    region: &VfioRegionInfo,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), SysError> {
    const CALL: &str = "pread(VFIO region)";
    let at = region_at(region, offset, buf.len(), CALL)?;
    // SAFETY: pread into `buf`, a live exclusive buffer of `buf.len()` bytes.
    let n = unsafe { libc::pread(dev.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), at) };
    short_or_error(n, buf.len(), CALL)
}

/// Write `data` at `offset` of a VFIO device region through the device fd (pwrite).
pub fn vfio_region_write(
    dev: BorrowedFd<'_>,
    region: &VfioRegionInfo,
    offset: u64,
    data: &[u8],
) -> Result<(), SysError> {
    const CALL: &str = "pwrite(VFIO region)";
    let at = region_at(region, offset, data.len(), CALL)?;
    // SAFETY: pwrite from `data`, a live buffer of `data.len()` bytes.
    let n = unsafe { libc::pwrite(dev.as_raw_fd(), data.as_ptr().cast(), data.len(), at) };
    short_or_error(n, data.len(), CALL)
}

/// A pread/pwrite result: all `want` bytes, else the errno (EIO for a short transfer).
fn short_or_error(n: isize, want: usize, call: &'static str) -> Result<(), SysError> {
    match usize::try_from(n) {
        Ok(n) if n == want => Ok(()),
        Ok(_) => Err(SysError {
            call,
            errno: libc::EIO,
        }),
        Err(_) => Err(SysError {
            call,
            errno: io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        }),
    }
}

/// What GET_HW_INFO says about the IOMMU behind `dev_id`: (type, registers (up to 64 bytes),
/// PASID width).
pub fn get_hw_info(fd: BorrowedFd<'_>, dev_id: u32) -> Result<(u32, [u8; 64], u8), SysError> {
    let mut data = [0u8; 64];
    let mut a = IommuHwInfo {
        size: std::mem::size_of::<IommuHwInfo>() as u32,
        dev_id,
        data_len: data.len() as u32,
        data_uptr: data.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: IOMMU_GET_HW_INFO takes struct iommu_hw_info; `data_uptr` points to `data_len`
    // writable bytes owned by `data`, alive for the call.
    unsafe { ioctl(fd, IOMMU_GET_HW_INFO, "IOMMU_GET_HW_INFO", &mut a) }?;
    Ok((a.out_data_type, data, a.out_max_pasid_log2))
}

/// HWPT_ALLOC: a paging HWPT over IOAS `pt_id` (`data` empty) or a nested HWPT over the nest
/// parent / vIOMMU `pt_id` with driver data `data` of `data_type`. Returns the HWPT id.
pub fn hwpt_alloc(
    fd: BorrowedFd<'_>,
    dev_id: u32,
    pt_id: u32,
    flags: u32,
    data_type: u32,
    data: &[u8],
    fault_id: u32,
) -> Result<u32, SysError> {
    let mut a = IommuHwptAlloc {
        size: std::mem::size_of::<IommuHwptAlloc>() as u32,
        flags,
        dev_id,
        pt_id,
        data_type,
        data_len: data.len() as u32,
        data_uptr: if data.is_empty() {
            0
        } else {
            data.as_ptr() as u64
        },
        fault_id,
        ..Default::default()
    };
    // SAFETY: IOMMU_HWPT_ALLOC takes struct iommu_hwpt_alloc, which `a` mirrors; `data_uptr`
    // points to `data_len` readable bytes borrowed from `data` for the call (or is 0 with
    // length 0).
    unsafe { ioctl(fd, IOMMU_HWPT_ALLOC, "IOMMU_HWPT_ALLOC", &mut a) }?;
    Ok(a.out_hwpt_id)
}

/// HWPT_INVALIDATE on a nested HWPT or a vIOMMU: `entries` is `n` entries of `entry_len`
/// bytes. Returns how many the kernel handled (all, on success).
pub fn hwpt_invalidate(
    fd: BorrowedFd<'_>,
    id: u32,
    data_type: u32,
    entry_len: u32,
    entries: &[u8],
) -> Result<u32, SysError> {
    let n = (entries.len() as u32).checked_div(entry_len).unwrap_or(0);
    let mut a = IommuHwptInvalidate {
        size: std::mem::size_of::<IommuHwptInvalidate>() as u32,
        hwpt_id: id,
        data_uptr: entries.as_ptr() as u64,
        data_type,
        entry_len,
        entry_num: n,
        reserved: 0,
    };
    // SAFETY: IOMMU_HWPT_INVALIDATE takes struct iommu_hwpt_invalidate, which `a` mirrors;
    // `data_uptr` points to `entry_num * entry_len` readable bytes borrowed from `entries`.
    unsafe { ioctl(fd, IOMMU_HWPT_INVALIDATE, "IOMMU_HWPT_INVALIDATE", &mut a) }?;
    Ok(a.entry_num)
}

/// FAULT_QUEUE_ALLOC: returns (fault object id, the fault fd).
pub fn fault_queue_alloc(fd: BorrowedFd<'_>) -> Result<(u32, std::os::fd::OwnedFd), SysError> {
    let mut a = IommuFaultAlloc {
        size: std::mem::size_of::<IommuFaultAlloc>() as u32,
        ..Default::default()
    };
    // SAFETY: IOMMU_FAULT_QUEUE_ALLOC takes struct iommu_fault_alloc, which `a` mirrors.
    unsafe {
        ioctl(
            fd,
            IOMMU_FAULT_QUEUE_ALLOC,
            "IOMMU_FAULT_QUEUE_ALLOC",
            &mut a,
        )
    }?;
    let raw = a.out_fault_fd.cast_signed();
    // SAFETY: on success the kernel installed a new fd in our table and gave it to us alone.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    Ok((a.out_fault_id, owned))
}

/// VIOMMU_ALLOC of `type_` for `dev_id` over the nest parent `hwpt_id`.
pub fn viommu_alloc(
    fd: BorrowedFd<'_>,
    type_: u32,
    dev_id: u32,
    hwpt_id: u32,
) -> Result<u32, SysError> {
    let mut a = IommuViommuAlloc {
        size: std::mem::size_of::<IommuViommuAlloc>() as u32,
        type_,
        dev_id,
        hwpt_id,
        ..Default::default()
    };
    // SAFETY: IOMMU_VIOMMU_ALLOC takes struct iommu_viommu_alloc, which `a` mirrors; no driver
    // data (data_len 0, data_uptr 0).
    unsafe { ioctl(fd, IOMMU_VIOMMU_ALLOC, "IOMMU_VIOMMU_ALLOC", &mut a) }?;
    Ok(a.out_viommu_id)
}

/// VDEVICE_ALLOC: `dev_id` is `virt_id` (the guest's stream / requester id) on `viommu_id`.
pub fn vdevice_alloc(
    fd: BorrowedFd<'_>,
    viommu_id: u32,
    dev_id: u32,
    virt_id: u64,
) -> Result<u32, SysError> {
    let mut a = IommuVdeviceAlloc {
        size: std::mem::size_of::<IommuVdeviceAlloc>() as u32,
        viommu_id,
        dev_id,
        out_vdevice_id: 0,
        virt_id,
    };
    // SAFETY: IOMMU_VDEVICE_ALLOC takes struct iommu_vdevice_alloc, which `a` mirrors.
    unsafe { ioctl(fd, IOMMU_VDEVICE_ALLOC, "IOMMU_VDEVICE_ALLOC", &mut a) }?;
    Ok(a.out_vdevice_id)
}

/// VEVENTQ_ALLOC of `type_` on `viommu_id`, holding up to `depth` events: (object id, fd).
pub fn veventq_alloc(
    fd: BorrowedFd<'_>,
    viommu_id: u32,
    type_: u32,
    depth: u32,
) -> Result<(u32, std::os::fd::OwnedFd), SysError> {
    let mut a = IommuVeventqAlloc {
        size: std::mem::size_of::<IommuVeventqAlloc>() as u32,
        viommu_id,
        type_,
        veventq_depth: depth,
        ..Default::default()
    };
    // SAFETY: IOMMU_VEVENTQ_ALLOC takes struct iommu_veventq_alloc, which `a` mirrors.
    unsafe { ioctl(fd, IOMMU_VEVENTQ_ALLOC, "IOMMU_VEVENTQ_ALLOC", &mut a) }?;
    // SAFETY: on success the kernel installed a new fd in our table and gave it to us alone.
    let owned = unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(
            a.out_veventq_fd.cast_signed(),
        )
    };
    Ok((a.out_veventq_id, owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi() {
        // Values computed from the kernel headers (_IO(0x3b, nr)).
        assert_eq!(IOMMU_DESTROY, 0x3b80);
        assert_eq!(IOMMU_IOAS_MAP, 0x3b85);
        assert_eq!(IOMMU_TEST_CMD, 0x3ba0);
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD, 0x3b76);
        assert_eq!(VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77);
        assert_eq!(VFIO_DEVICE_DETACH_IOMMUFD_PT, 0x3b78);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(IOMMU_IOAS_IOVA_RANGES, 0x3b84);
        assert_eq!(IOMMU_HWPT_ALLOC, 0x3b89);
        assert_eq!(IOMMU_GET_HW_INFO, 0x3b8a);
        assert_eq!(IOMMU_HWPT_INVALIDATE, 0x3b8d);
        assert_eq!(IOMMU_FAULT_QUEUE_ALLOC, 0x3b8e);
        assert_eq!(IOMMU_VIOMMU_ALLOC, 0x3b90);
        assert_eq!(IOMMU_VDEVICE_ALLOC, 0x3b91);
        assert_eq!(IOMMU_VEVENTQ_ALLOC, 0x3b93);
    }

    #[test]
    fn errors_on_a_non_iommufd_fd_carry_the_errno() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let e = ioas_alloc(f.as_fd()).unwrap_err();
        assert_eq!(e.call, "IOMMU_IOAS_ALLOC");
        assert_eq!(e.errno, libc::ENOTTY);
    }

    #[test]
    fn vfio_region_accesses_stay_inside_the_region() {
        use std::os::fd::AsFd;
        let path = std::env::temp_dir().join(format!("iommufd-sys-region-{}", std::process::id()));
        std::fs::write(&path, (0u8..16).collect::<Vec<_>>()).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let region = VfioRegionInfo {
            offset: 4,
            size: 8,
            ..Default::default()
        };
        let mut b = [0u8; 4];
        vfio_region_read(f.as_fd(), &region, 2, &mut b).unwrap();
        assert_eq!(b, [6, 7, 8, 9]);
        vfio_region_write(f.as_fd(), &region, 4, &[0xaa; 4]).unwrap();
        vfio_region_read(f.as_fd(), &region, 4, &mut b).unwrap();
        assert_eq!(b, [0xaa; 4]);
        let e = vfio_region_read(f.as_fd(), &region, 6, &mut b).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        let e = vfio_region_write(f.as_fd(), &region, u64::MAX, &[0]).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        // Outside the region nothing was written.
        let mut all = [0u8; 16];
        let whole = VfioRegionInfo {
            size: 16,
            ..Default::default()
        };
        vfio_region_read(f.as_fd(), &whole, 0, &mut all).unwrap();
        assert_eq!(all[..8], [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(all[12..], [12, 13, 14, 15]);
    }
}
