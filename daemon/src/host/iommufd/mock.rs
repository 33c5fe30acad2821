//! The iommufd selftest mock device (CONFIG_IOMMUFD_TEST kernels; for tests): one kind of
//! [`HostDevice`]. The kernel makes it on request (IOMMU_TEST_OP_MOCK_DOMAIN) instead of a
//! VFIO cdev being bound, and its moves and PASIDs go through IOMMU_TEST_CMD; it is destroyed
//! as an object of the iommufd. Nothing outside this file knows a device is a mock.

use std::os::fd::AsFd;

use iommufd_sys as sys;
use serde_json::{json, Value};

use super::adopt::SavedDevice;
use super::device::{self, HostDevice};
use super::ids::{DevId, HwptId, IoasId, Iommufd, MockId, Owned, Pt};

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
    fn dev_id(&self) -> DevId {
        self.idev
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
