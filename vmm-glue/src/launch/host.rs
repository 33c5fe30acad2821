//! The host side of the launcher: finding the VFIO cdev of a PCI device through sysfs, checking
//! it is bound to vfio-pci, opening it and `/dev/iommu`, and locking each device against a
//! second launcher. Every error says what to do.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::pci::PciAddress;

/// Where the host's sysfs and /dev are (`/sys`, `/dev`; other roots in tests).
#[derive(Debug, Clone)]
pub struct HostRoots {
    /// sysfs mount point.
    pub sys: PathBuf,
    /// devtmpfs mount point.
    pub dev: PathBuf,
}

impl Default for HostRoots {
    fn default() -> Self {
        HostRoots {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// Why a host device or /dev/iommu cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No such PCI function.
    #[error("no PCI device {bdf} on this host ({path:?} does not exist); `lspci -D` lists the addresses")]
    NoDevice {
        /// The address.
        bdf: PciAddress,
        /// The sysfs directory looked for.
        path: PathBuf,
    },
    /// Not bound to vfio-pci.
    #[error("PCI device {bdf} is {bound}, not to vfio-pci; bind it (as root): echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override{unbind}; echo {bdf} > /sys/bus/pci/drivers_probe (docs/PASSTHROUGH.md, \"Host preparation\")")]
    NotVfio {
        /// The address.
        bdf: PciAddress,
        /// "bound to X" or "not bound to any driver".
        bound: String,
        /// The unbind step, when there is a driver to unbind from.
        unbind: String,
    },
    /// Another device of the IOMMU group is bound to a host driver.
    #[error("PCI device {bdf} shares its IOMMU group {group} with {others}, bound to host drivers; bind every device of the group to vfio-pci (or unbind them), or pass the whole group")]
    GroupNotViable {
        /// The address.
        bdf: PciAddress,
        /// The group number.
        group: String,
        /// The offending devices and their drivers.
        others: String,
    },
    /// Bound to vfio-pci but no cdev.
    #[error("PCI device {bdf} is bound to vfio-pci but has no VFIO device cdev ({path:?} is missing): the host kernel needs CONFIG_VFIO_DEVICE_CDEV=y (Linux >= 6.6)")]
    NoCdev {
        /// The address.
        bdf: PciAddress,
        /// The sysfs directory looked for.
        path: PathBuf,
    },
    /// /dev/iommu is missing.
    #[error("{path:?} does not exist: the host kernel needs iommufd (CONFIG_IOMMUFD; `modprobe iommufd` where it is a module)")]
    NoIommufd {
        /// The path.
        path: PathBuf,
    },
    /// Opening failed.
    #[error("cannot open {path:?}{what}: {err}{hint}")]
    Open {
        /// The path.
        path: PathBuf,
        /// For which device.
        what: String,
        /// The error.
        err: io::Error,
        /// What to do.
        hint: &'static str,
    },
    /// Another launcher (or a process that locked the cdev the same way) has the device.
    #[error("PCI device {bdf} ({path:?}) is in use by another launcher (its cdev is locked); stop that VM first")]
    Busy {
        /// The address.
        bdf: PciAddress,
        /// The cdev.
        path: PathBuf,
    },
    /// Reading sysfs failed.
    #[error("cannot read {path:?}: {err}")]
    Sysfs {
        /// The path.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
}

const PERM_HINT: &str =
    "; run as root, or give this user the device (udev rule or chown; docs/PASSTHROUGH.md)";

fn pci_dir(roots: &HostRoots, bdf: PciAddress) -> PathBuf {
    roots.sys.join("bus/pci/devices").join(bdf.to_string())
}

/// The driver a PCI device is bound to (`None`: no driver).
fn driver_of(dir: &Path) -> Option<String> {
    let link = std::fs::read_link(dir.join("driver")).ok()?;
    link.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Drivers that do not touch the device (a group may contain these next to vfio-pci).
const INERT_DRIVERS: [&str; 3] = ["vfio-pci", "pci-stub", "pcieport"];

/// Checks that `bdf` exists and is bound to vfio-pci, that its IOMMU group holds no device
/// bound to a host driver, and returns the path of its VFIO cdev.
pub fn find_cdev(roots: &HostRoots, bdf: PciAddress) -> Result<PathBuf, HostError> {
    let dir = pci_dir(roots, bdf);
    if !dir.exists() {
        return Err(HostError::NoDevice { bdf, path: dir });
    }
    match driver_of(&dir) {
        Some(d) if d == "vfio-pci" => {}
        Some(d) => {
            return Err(HostError::NotVfio {
                bdf,
                bound: format!("bound to {d}"),
                unbind: format!("; echo {bdf} > /sys/bus/pci/drivers/{d}/unbind"),
            })
        }
        None => {
            return Err(HostError::NotVfio {
                bdf,
                bound: "not bound to any driver".into(),
                unbind: String::new(),
            })
        }
    }
    check_group(&dir, bdf)?;
    let vdir = dir.join("vfio-dev");
    let entries = std::fs::read_dir(&vdir).map_err(|_| HostError::NoCdev {
        bdf,
        path: vdir.clone(),
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vfio"))
        .collect();
    names.sort();
    let name = names
        .into_iter()
        .next()
        .ok_or(HostError::NoCdev { bdf, path: vdir })?;
    Ok(roots.dev.join("vfio/devices").join(name))
}

/// The other devices of `dir`'s IOMMU group must be bound to vfio-pci or an inert driver, or
/// unbound: the kernel refuses to open a device of a group that is not viable.
fn check_group(dir: &Path, bdf: PciAddress) -> Result<(), HostError> {
    let gdir = dir.join("iommu_group");
    let Ok(group) = std::fs::read_link(&gdir) else {
        // No group link: the kernel will say (no IOMMU, or no-IOMMU mode).
        return Ok(());
    };
    let group = group
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let members = gdir.join("devices");
    let entries = std::fs::read_dir(&members).map_err(|err| HostError::Sysfs {
        path: members.clone(),
        err,
    })?;
    let mut others = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == bdf.to_string() {
            continue;
        }
        if let Some(d) = driver_of(&e.path()) {
            if !INERT_DRIVERS.contains(&d.as_str()) {
                others.push(format!("{name} ({d})"));
            }
        }
    }
    if others.is_empty() {
        return Ok(());
    }
    others.sort();
    Err(HostError::GroupNotViable {
        bdf,
        group,
        others: others.join(", "),
    })
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Opens the host's iommufd (`/dev/iommu`).
pub fn open_iommufd(roots: &HostRoots) -> Result<OwnedFd, HostError> {
    let path = roots.dev.join("iommu");
    match open_rw(&path) {
        Ok(f) => Ok(f.into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(HostError::NoIommufd { path }),
        Err(err) => Err(HostError::Open {
            path,
            what: String::new(),
            err,
            hint: PERM_HINT,
        }),
    }
}

/// A host device opened for a VM: its address, cdev path and the open file (locked).
#[derive(Debug)]
pub struct OpenDevice {
    /// Host PCI address.
    pub bdf: PciAddress,
    /// The cdev.
    pub path: PathBuf,
    /// The open cdev; its exclusive `flock` is held as long as any copy of the file is open
    /// (in this process, the daemon or QEMU).
    pub fd: OwnedFd,
}

/// Finds, opens and locks the VFIO cdev of `bdf`. A second launcher for the same device fails
/// here: the lock belongs to the open file, which this launcher, its daemon and its QEMU share.
pub fn open_device(roots: &HostRoots, bdf: PciAddress) -> Result<OpenDevice, HostError> {
    let path = find_cdev(roots, bdf)?;
    let file = open_rw(&path).map_err(|err| HostError::Open {
        path: path.clone(),
        what: format!(" (VFIO cdev of {bdf})"),
        err,
        hint: PERM_HINT,
    })?;
    // SAFETY: flock on an fd this function owns; no memory is passed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(HostError::Busy { bdf, path });
        }
        return Err(HostError::Open {
            path,
            what: format!(" (locking the VFIO cdev of {bdf})"),
            err,
            hint: "",
        });
    }
    Ok(OpenDevice {
        bdf,
        path,
        fd: file.into(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake host: sysfs with PCI devices and drivers, /dev with cdevs as plain files.
    pub(crate) struct FakeHost {
        pub dir: PathBuf,
        pub roots: HostRoots,
    }

    impl FakeHost {
        pub(crate) fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "vui-launch-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let roots = HostRoots {
                sys: dir.join("sys"),
                dev: dir.join("dev"),
            };
            std::fs::create_dir_all(roots.sys.join("bus/pci/devices")).unwrap();
            std::fs::create_dir_all(roots.dev.join("vfio/devices")).unwrap();
            FakeHost { dir, roots }
        }

        pub(crate) fn iommu(&self) {
            std::fs::write(self.roots.dev.join("iommu"), b"").unwrap();
        }

        /// A PCI function bound to `driver` (None: unbound), in IOMMU group `group`, with VFIO
        /// cdev `vfioN` when `cdev` is Some(N).
        pub(crate) fn device(
            &self,
            bdf: &str,
            driver: Option<&str>,
            group: u32,
            cdev: Option<u32>,
        ) {
            let d = self.roots.sys.join("bus/pci/devices").join(bdf);
            std::fs::create_dir_all(&d).unwrap();
            if let Some(drv) = driver {
                let ddir = self.roots.sys.join("bus/pci/drivers").join(drv);
                std::fs::create_dir_all(&ddir).unwrap();
                symlink(&ddir, d.join("driver")).unwrap();
            }
            let g = self
                .roots
                .sys
                .join("kernel/iommu_groups")
                .join(group.to_string());
            std::fs::create_dir_all(g.join("devices")).unwrap();
            symlink(&g, d.join("iommu_group")).unwrap();
            symlink(&d, g.join("devices").join(bdf)).unwrap();
            if let Some(n) = cdev {
                std::fs::create_dir_all(d.join("vfio-dev").join(format!("vfio{n}"))).unwrap();
                std::fs::write(self.roots.dev.join(format!("vfio/devices/vfio{n}")), b"").unwrap();
            }
        }
    }

    impl Drop for FakeHost {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn bdf(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn finds_the_cdev_of_a_vfio_device() {
        let h = FakeHost::new("find");
        h.device("0000:01:00.0", Some("vfio-pci"), 7, Some(3));
        let p = find_cdev(&h.roots, bdf("0000:01:00.0")).unwrap();
        assert_eq!(p, h.roots.dev.join("vfio/devices/vfio3"));
    }

    #[test]
    fn explains_what_to_do_with_a_device_not_on_vfio_pci() {
        let h = FakeHost::new("notvfio");
        h.device("0000:01:00.0", Some("e1000e"), 7, None);
        h.device("0000:02:00.0", None, 8, None);
        let e = find_cdev(&h.roots, bdf("0000:01:00.0")).unwrap_err();
        assert!(matches!(e, HostError::NotVfio { .. }), "{e}");
        let m = e.to_string();
        assert!(m.contains("bound to e1000e"), "{m}");
        assert!(m.contains("driver_override"), "{m}");
        assert!(m.contains("/sys/bus/pci/drivers/e1000e/unbind"), "{m}");
        let m = find_cdev(&h.roots, bdf("0000:02:00.0"))
            .unwrap_err()
            .to_string();
        assert!(m.contains("not bound to any driver"), "{m}");
        assert!(!m.contains("unbind"), "{m}");
        let e = find_cdev(&h.roots, bdf("0000:03:00.0")).unwrap_err();
        assert!(matches!(e, HostError::NoDevice { .. }), "{e}");
    }

    #[test]
    fn refuses_a_group_shared_with_a_host_driver() {
        let h = FakeHost::new("group");
        h.device("0000:01:00.0", Some("vfio-pci"), 7, Some(0));
        h.device("0000:01:00.1", Some("snd_hda_intel"), 7, None);
        h.device("0000:00:1c.0", Some("pcieport"), 7, None);
        let m = find_cdev(&h.roots, bdf("0000:01:00.0"))
            .unwrap_err()
            .to_string();
        assert!(m.contains("0000:01:00.1 (snd_hda_intel)"), "{m}");
        assert!(!m.contains("1c.0"), "{m}");
    }

    #[test]
    fn vfio_pci_without_cdev_names_the_kernel_option() {
        let h = FakeHost::new("nocdev");
        h.device("0000:01:00.0", Some("vfio-pci"), 7, None);
        let m = find_cdev(&h.roots, bdf("0000:01:00.0"))
            .unwrap_err()
            .to_string();
        assert!(m.contains("CONFIG_VFIO_DEVICE_CDEV"), "{m}");
    }

    #[test]
    fn missing_dev_iommu() {
        let h = FakeHost::new("noiommu");
        let e = open_iommufd(&h.roots).unwrap_err();
        assert!(matches!(e, HostError::NoIommufd { .. }), "{e}");
        assert!(e.to_string().contains("CONFIG_IOMMUFD"));
        h.iommu();
        open_iommufd(&h.roots).unwrap();
    }

    #[test]
    fn a_second_opener_finds_the_device_busy_until_the_first_closes() {
        let h = FakeHost::new("busy");
        h.device("0000:01:00.0", Some("vfio-pci"), 7, Some(0));
        let first = open_device(&h.roots, bdf("0000:01:00.0")).unwrap();
        let e = open_device(&h.roots, bdf("0000:01:00.0")).unwrap_err();
        assert!(matches!(e, HostError::Busy { .. }), "{e}");
        // A copy of the file (what QEMU and the daemon hold) keeps the lock.
        let copy = first.fd.try_clone().unwrap();
        drop(first);
        assert!(matches!(
            open_device(&h.roots, bdf("0000:01:00.0")),
            Err(HostError::Busy { .. })
        ));
        drop(copy);
        open_device(&h.roots, bdf("0000:01:00.0")).unwrap();
    }
}
