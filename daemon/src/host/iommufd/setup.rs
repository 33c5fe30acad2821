//! Start-up: the iommufd (opened, or handed over by a launcher with the device fds), what a
//! previous process left in it (adopt.rs), and each configured endpoint's host device, bound to
//! the iommufd and attached to the blocked IOAS, or adopted.

use std::path::Path;

use log::info;

use super::adopt::{ObjectsFile, Saved, SavedDevice, SavedEndpoint, OBJECTS_FILE};
use super::config::{check_handover, open_rw, pci_cdev, DeviceSource, IommufdConfig, SetupError};
use super::device::{Endpoint, HostDevice, SharedVfioDevice, VfioDevice};
use super::ids::{EndpointId, IoasId, Iommufd};
use super::ioas;
use super::mock::MockDevice;
use crate::host::fdpass::{self, Handover};

/// The iommufd and the device fds a launcher handed over (`fd-socket`), or the iommufd opened
/// here.
pub fn open_iommufd(cfg: &IommufdConfig) -> Result<(Iommufd, Handover), SetupError> {
    let mut handover = match &cfg.fd_socket {
        Some(p) => fdpass::receive(p, |h| check_handover(cfg, h))?,
        None => Handover::default(),
    };
    let fd = match handover.iommufd.take() {
        Some(fd) => fd,
        None => open_rw(cfg.iommufd.as_deref().unwrap_or(Path::new("/dev/iommu")))?,
    };
    Ok((Iommufd::new(fd), handover))
}

/// With `state_dir`, the objects file, and what a previous process saved in it if its objects
/// are in this iommufd (checked before this process allocates ids of its own).
pub fn previous(
    fd: &Iommufd,
    state_dir: Option<&Path>,
) -> Result<(Option<ObjectsFile>, Option<Saved>), SetupError> {
    let Some(d) = state_dir else {
        return Ok((None, None));
    };
    let (file, saved) = ObjectsFile::open(d).map_err(|err| SetupError::Open {
        path: d.join(OBJECTS_FILE).display().to_string(),
        err,
    })?;
    // The same iommufd still holds the previous process's blocked IOAS.
    let saved = saved.filter(|s| match ioas::iova_ranges(fd, s.blocked) {
        Ok(_) => true,
        Err(e) => {
            info!(
                "objects of a previous process: IOAS {} is not in this iommufd ({e}): another context, ignored",
                s.blocked
            );
            false
        }
    });
    Ok((Some(file), saved))
}

/// The host device of `endpoint` from `src`: a previous process's (`old`, still in the
/// iommufd: adopted, on its old HWPT), or a new one attached to `blocked`.
pub fn open_device(
    fd: &Iommufd,
    endpoint: EndpointId,
    src: &DeviceSource,
    old: Option<&SavedEndpoint>,
    handover: &mut Handover,
    blocked: IoasId,
) -> Result<Endpoint, SetupError> {
    if let Some(old) = old {
        if let Some(dev) = adopt(fd, endpoint, src, old, handover) {
            return Ok(Endpoint::new(dev, old.hwpt, true));
        }
    }
    let ep = endpoint.0;
    let dev_err = |err| SetupError::Device { endpoint: ep, err };
    let (dev, hwpt): (Box<dyn HostDevice>, _) = match src {
        DeviceSource::Mock => {
            let (dev, hwpt) = MockDevice::create(fd, blocked).map_err(dev_err)?;
            (Box::new(dev), hwpt)
        }
        DeviceSource::Shared => {
            let file = handover.devices.remove(&ep);
            let file = file.ok_or(SetupError::MissingFd(ep))?;
            info!("endpoint {endpoint}: host device bound by the VMM; the daemon attaches it when the driver starts the device");
            return Ok(Endpoint::unclaimed(Box::new(SharedVfioDevice::new(file))));
        }
        DeviceSource::Vfio(_) | DeviceSource::Pci(_) | DeviceSource::Passed => {
            let file = match src {
                DeviceSource::Vfio(p) => open_rw(p)?,
                DeviceSource::Pci(bdf) => open_rw(&pci_cdev(Path::new("/sys"), bdf)?)?,
                _ => handover
                    .devices
                    .remove(&ep)
                    .ok_or(SetupError::MissingFd(ep))?,
            };
            let (dev, hwpt) = VfioDevice::bind(file, fd, blocked).map_err(dev_err)?;
            (Box::new(dev), hwpt)
        }
    };
    info!(
        "endpoint {endpoint}: host device {} attached to the blocked IOAS (hwpt {hwpt})",
        dev.describe()
    );
    Ok(Endpoint::new(dev, hwpt, false))
}

/// A previous process's device for `endpoint`, if it is still there: the mock device the
/// kernel still knows, or the VFIO device fd the launcher kept (still bound to this iommufd).
fn adopt(
    fd: &Iommufd,
    endpoint: EndpointId,
    src: &DeviceSource,
    old: &SavedEndpoint,
    handover: &mut Handover,
) -> Option<Box<dyn HostDevice>> {
    let hwpt = old.hwpt;
    match (src, old.dev) {
        (DeviceSource::Mock, SavedDevice::Mock { stdev, idev }) => {
            let dev = MockDevice::adopt(fd, stdev, idev)?;
            info!(
                "endpoint {endpoint}: adopted mock device {stdev} (dev_id {idev}), on hwpt {hwpt}"
            );
            Some(Box::new(dev))
        }
        (DeviceSource::Passed, SavedDevice::Vfio { dev_id }) => {
            let file = handover.devices.remove(&endpoint.0)?;
            info!("endpoint {endpoint}: adopted VFIO device (dev_id {dev_id}), on hwpt {hwpt}");
            Some(Box::new(VfioDevice::adopted(file, dev_id)))
        }
        (DeviceSource::Shared, SavedDevice::Vmm) => {
            // The launcher's copy of the file QEMU bound: still bound, still on the HWPT the
            // previous process attached it to.
            let file = handover.devices.remove(&endpoint.0)?;
            info!("endpoint {endpoint}: adopted the VFIO device the VMM bound, on hwpt {hwpt}");
            Some(Box::new(SharedVfioDevice::new(file)))
        }
        _ => None,
    }
}
