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
    /// A device fd handed over by the launcher that the VMM binds (`fd = true, bind = false`:
    /// QEMU's `-device vfio-pci,fd=` on the same open file). The daemon never binds it; it
    /// attaches it through the shared file once the VMM has bound it (docs/PASSTHROUGH.md).
    Shared,
    /// An iommufd selftest mock device (CONFIG_IOMMUFD_TEST kernels; for tests).
    Mock,
}

impl DeviceSource {
    /// Whether the launcher hands the device's fd over.
    pub fn handed_over(&self) -> bool {
        matches!(self, DeviceSource::Passed | DeviceSource::Shared)
    }
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
        .find(|ep| !cfg.devices.get(ep).is_some_and(DeviceSource::handed_over))
    {
        return Err(SetupError::UnexpectedFd(*ep).to_string());
    }
    if let Some(ep) = cfg
        .devices
        .iter()
        .find(|(ep, s)| s.handed_over() && !h.devices.contains_key(ep))
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

/// What can be checked of the configured host devices before the daemon starts (for
/// `--check-config` and `systemd-dropin`): the iommufd node and each `vfio` path are character
/// devices, each `vfio` path a VFIO device cdev (its sysfs class under `sysfs`, normally
/// `/sys`, is `vfio-dev`), each `pci` address has one (it is bound to vfio-pci). One message
/// per problem.
pub fn check_sources(cfg: &IommufdConfig, sysfs: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(p) = &cfg.iommufd {
        if let Err(why) = char_device(p) {
            problems.push(format!("iommufd = {:?}: {why}", p.display().to_string()));
        }
    }
    for (ep, src) in &cfg.devices {
        let r = match src {
            DeviceSource::Vfio(p) => vfio_cdev(sysfs, p)
                .map_err(|why| format!("vfio = {:?}: {why}", p.display().to_string())),
            DeviceSource::Pci(bdf) => pci_cdev(sysfs, bdf)
                .map(|_| ())
                .map_err(|e| format!("pci = {bdf:?}: {e}")),
            DeviceSource::Passed | DeviceSource::Shared | DeviceSource::Mock => Ok(()),
        };
        if let Err(why) = r {
            problems.push(format!("[iommufd] endpoint {ep}: {why}"));
        }
    }
    problems
}

/// `path` is a character device: its (major, minor).
fn char_device(path: &Path) -> Result<(u32, u32), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !md.file_type().is_char_device() {
        return Err("not a character device".into());
    }
    let rdev = md.rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}

/// `path` is a VFIO device cdev (`/dev/vfio/devices/vfioN`).
pub fn vfio_cdev(sysfs: &Path, path: &Path) -> Result<(), String> {
    let (major, minor) = char_device(path)?;
    let class = std::fs::read_link(sysfs.join(format!("dev/char/{major}:{minor}/subsystem")))
        .ok()
        .and_then(|l| l.file_name().and_then(|n| n.to_str()).map(String::from));
    match class.as_deref() {
        Some("vfio-dev") => Ok(()),
        Some(other) => Err(format!(
            "not a VFIO device cdev (device {major}:{minor} is of class {other}); VFIO device \
             cdevs are /dev/vfio/devices/vfioN"
        )),
        None => Err(format!(
            "not a VFIO device cdev (no sysfs entry for device {major}:{minor})"
        )),
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;

    /// A sysfs root where char device 1:3 (/dev/null) has class `class`.
    fn sysfs(tag: &str, class: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("vui-sysfs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dev = root.join("dev/char/1:3");
        std::fs::create_dir_all(&dev).unwrap();
        std::os::unix::fs::symlink(format!("../../../class/{class}"), dev.join("subsystem"))
            .unwrap();
        root
    }

    #[test]
    fn vfio_paths_must_be_vfio_cdevs() {
        let vfio = sysfs("vfio", "vfio-dev");
        let mem = sysfs("mem", "mem");
        let null = Path::new("/dev/null");
        assert_eq!(vfio_cdev(&vfio, null), Ok(()));
        let e = vfio_cdev(&mem, null).unwrap_err();
        assert!(e.contains("of class mem"), "{e}");
        let e = vfio_cdev(&vfio, Path::new("/dev/vfio/devices/no-such-vfio")).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
        let e = vfio_cdev(&vfio, Path::new("/")).unwrap_err();
        assert!(e.contains("not a character device"), "{e}");

        let cfg = IommufdConfig {
            iommufd: Some(PathBuf::from("/no/iommu")),
            fd_socket: None,
            devices: BTreeMap::from([
                (
                    1,
                    DeviceSource::Vfio(PathBuf::from("/dev/vfio/devices/vfio2")),
                ),
                (2, DeviceSource::Vfio(null.to_path_buf())),
                (3, DeviceSource::Pci("0000:00:09.0".into())),
                (4, DeviceSource::Mock),
            ]),
        };
        let problems = check_sources(&cfg, &mem);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[0].starts_with("iommufd = \"/no/iommu\""),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("[iommufd] endpoint 1: vfio = \"/dev/vfio/devices/vfio2\""),
            "{problems:?}"
        );
        assert!(problems[2].contains("endpoint 2"), "{problems:?}");
        assert!(
            problems[3].contains("pci = \"0000:00:09.0\""),
            "{problems:?}"
        );
        for d in [vfio, mem] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
