//! The backend's configuration (`[iommufd]`), where each endpoint's host device comes from,
//! and why start-up can fail.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use iommufd_sys as sys;

use crate::host::fdpass::{FdPassError, Handover};

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
    /// Receive fds from a launcher listening here (host/fdpass.rs).
    pub fd_socket: Option<PathBuf>,
    /// The host device of each guest endpoint id.
    pub devices: BTreeMap<u32, DeviceSource>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot open {path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error(transparent)]
    FdPass(#[from] FdPassError),
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

pub fn open_rw(path: &Path) -> Result<OwnedFd, SetupError> {
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
pub fn check_handover(cfg: &IommufdConfig, h: &Handover) -> Result<(), String> {
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
