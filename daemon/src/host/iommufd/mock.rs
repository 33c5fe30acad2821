//! The iommufd selftest mock (CONFIG_IOMMUFD_TEST kernels; for tests).
//!
//! - The mock device, one kind of [`HostDevice`]: the kernel makes it on request
//!   (IOMMU_TEST_OP_MOCK_DOMAIN) instead of a VFIO cdev being bound, its moves and PASIDs go
//!   through IOMMU_TEST_CMD, and it is destroyed as an object of the iommufd. Nothing outside
//!   this file knows a device is a mock.
//! - The mock IOMMU as a nesting host (nest.rs, `NestKind::Selftest`): its nested HWPT data,
//!   its invalidations and its events (`iommufd_test.h`, encoded in wire.rs).

use std::os::fd::AsFd;

use iommufd_sys as sys;
use model::guest_tables::Invalidate;
use model::host::BackendError;
use serde_json::{json, Value};

use super::adopt::SavedDevice;
use super::device::{self, HostDevice};
use super::hwpt;
use super::ids::{DevId, HwptId, IoasId, Iommufd, MockId, Owned, Pt, ViommuId};
use super::viommu::{self, EventParser};
use super::wire;

/// A mock device: the selftest device object (`stdev_id`) and its iommufd device (`idev_id`).
#[derive(Debug)]
pub struct MockDevice {
    stdev: Owned<MockId>,
    idev: DevId,
}

impl MockDevice {
    /// A new mock device attached to `blocked`: with PASIDs (Linux 6.15), or without on older
    /// kernels. Returns the device and the HWPT it is on.
    pub fn create(fd: &Iommufd, blocked: IoasId) -> Result<(MockDevice, HwptId), sys::SysError> {
        let (stdev, hwpt, idev) =
            match sys::mock_domain_flags(fd.as_fd(), blocked.0, sys::MOCK_FLAGS_DEVICE_PASID) {
                Ok(r) => r,
                Err(_) => sys::mock_domain(fd.as_fd(), blocked.0)?,
            };
        let dev = MockDevice {
            stdev: Owned::new(fd, MockId(stdev)),
            idev: DevId(idev),
        };
        Ok((dev, HwptId(hwpt)))
    }

    /// A previous process's mock device, if the kernel still knows it.
    pub fn adopt(fd: &Iommufd, stdev: MockId, idev: DevId) -> Option<MockDevice> {
        device::hw_info(fd, idev).ok()?;
        Some(MockDevice {
            stdev: Owned::new(fd, stdev),
            idev,
        })
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stdev.iommufd().as_fd()
    }
}

impl HostDevice for MockDevice {
    fn dev_id(&self) -> Option<DevId> {
        Some(self.idev)
    }
    fn replace(&self, pt: Pt) -> Result<HwptId, sys::SysError> {
        Ok(HwptId(sys::mock_replace(
            self.fd(),
            self.stdev.id().0,
            pt.raw(),
        )?))
    }
    fn attach_pasid(&self, pasid: u32, pt: Pt, replace: bool) -> Result<(), sys::SysError> {
        sys::mock_pasid_attach(self.fd(), self.stdev.id().0, pasid, pt.raw(), replace)
    }
    fn detach_pasid(&self, pasid: u32) -> Result<(), sys::SysError> {
        sys::mock_pasid_detach(self.fd(), self.stdev.id().0, pasid)
    }
    fn describe(&self) -> Value {
        json!({"kind": "mock", "stdev_id": self.stdev.id(), "dev_id": self.idev})
    }
    fn saved(&self) -> SavedDevice {
        SavedDevice::Mock {
            stdev: self.stdev.id(),
            idev: self.idev,
        }
    }
    /// IOMMU_TEST_CMD besides the VFIO set.
    fn serving_ioctls(&self) -> &'static [u64] {
        &sys::SERVING_IOCTLS_MOCK
    }
    fn keep(self: Box<Self>) {
        self.stdev.keep();
    }
}

/// The nested HWPT data of any guest table: the mock keeps an IOTLB of 4 entries and no
/// table (the binding is checked by the device model); the host sees `{u32 iotlb}` set to the
/// mock's default.
pub fn nested_data() -> (u32, Vec<u8>) {
    (
        sys::IOMMU_HWPT_DATA_SELFTEST,
        wire::MOCK_IOTLB_DEFAULT.to_le_bytes().to_vec(),
    )
}

/// Invalidate the mock's caches of the guest table of `nested`: its IOTLB on the nested HWPT,
/// and on the vIOMMU the device cache entries of the users with a vDEVICE (`vdevs`, their
/// virtual ids).
pub fn invalidate(
    fd: &Iommufd,
    nested: HwptId,
    viommu: Option<ViommuId>,
    vdevs: &[u32],
    inv: &Invalidate,
) -> Result<(), BackendError> {
    if let Some(e) = wire::mock_iotlb_entry(inv) {
        let data = wire::le_bytes(&[e]);
        let t = sys::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST;
        hwpt::invalidate(fd, nested, t, 8, &data)?;
    }
    let entries: Vec<[u32; 3]> = vdevs
        .iter()
        .filter_map(|ep| wire::mock_dev_cache_entry(inv, *ep))
        .collect();
    if let (Some(v), false) = (viommu, entries.is_empty()) {
        let t = sys::IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST;
        viommu::invalidate(fd, v, t, 12, &wire::le_bytes(&entries))?;
    }
    Ok(())
}

/// The mock's vEVENTs: `{u32 virt_id}` each, and how they become faults.
pub const EVENTS: (usize, EventParser) = (wire::VEVENT_SELFTEST_SIZE, wire::mock_event_fault);
