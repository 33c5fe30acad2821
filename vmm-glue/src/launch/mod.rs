//! `vhost-user-iommu-glue launch`: one command that runs a QEMU VM with VFIO passthrough devices
//! translated by the vhost-user-iommu daemon (docs/PASSTHROUGH.md).
//!
//! It opens `/dev/iommu` and the VFIO cdevs of the configured host devices ([`host`]), writes
//! the VIOT (covering exactly the passthrough devices, plus emulated ones only when asked) and
//! the daemon's configuration, starts the daemon and hands it the fds over the daemon's
//! `fd-socket` (the `vhost-user-iommu-fdpass` wire format), then starts QEMU with the same fds:
//! `-object iommufd,fd=` and `-device vfio-pci,fd=,iommufd=` at the guest addresses the VIOT
//! covers, the vhost-user device, memfd guest memory and `-acpitable` ([`run`]). With `restart`
//! (the default) QEMU attaches through `vhost-user-iommu proxy` and a daemon that exits is
//! started again with the same fds. Everything it started is stopped when QEMU exits (or the
//! proxy, or without `restart` the daemon, dies) and on SIGINT/SIGTERM/SIGHUP.

pub mod host;
pub mod run;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pci::{PciAddress, PciRange};
use crate::qemu::{self, QemuArgs, QemuError};
use crate::viot::{Viot, ViotError};

/// The launcher's configuration file (TOML), as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LaunchConfig {
    /// Directory for the sockets, the VIOT and the daemon's configuration (created 0700).
    pub run_dir: PathBuf,
    /// Guest RAM (memfd, shared with the daemon).
    #[serde(default = "default_memory")]
    pub memory: String,
    /// PCI slot of the virtio-iommu on pcie.0.
    #[serde(default = "default_iommu_addr")]
    pub iommu_addr: String,
    /// The daemon binary [default: vhost-user-iommu next to this program, else on $PATH].
    pub daemon: Option<PathBuf>,
    /// Extra daemon options (its settings, e.g. `--page-size-mask`).
    #[serde(default)]
    pub daemon_args: Vec<String>,
    /// QEMU runs chrooted in this directory: paths given to QEMU are relative to it (the run
    /// directory must be inside it).
    pub qemu_root: Option<PathBuf>,
    /// Use this VIOT file instead of writing one (every guest address must be behind it).
    pub viot: Option<PathBuf>,
    /// The passthrough devices.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Guest addresses of emulated devices to put behind the IOMMU too. QEMU does not
    /// translate their DMA (they use IOVAs as guest-physical addresses): for tests of the
    /// guest driver only.
    #[serde(default)]
    pub emulated: Vec<String>,
    /// Keep the VM's IOMMU across daemon restarts (default): QEMU attaches through
    /// `vhost-user-iommu proxy`, the daemon keeps its state in `RUN-DIR/state`, and a daemon
    /// that exits while QEMU runs (a crash, SIGKILL, SIGTERM, SIGUSR1 to the launcher) is
    /// started again and handed the same fds: it adopts the host objects and resumes the
    /// guest's domains (docs/STATE.md). `false`: QEMU attaches to the daemon directly and is
    /// stopped when the daemon dies.
    #[serde(default = "default_restart")]
    pub restart: bool,
}

fn default_restart() -> bool {
    true
}

/// One passthrough device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeviceConfig {
    /// Host PCI address (`SEG:BB:DD.F`), bound to vfio-pci.
    pub host: String,
    /// Guest PCI address on pcie.0 (`00:SS.0`).
    pub guest: String,
}

fn default_memory() -> String {
    "512M".into()
}

fn default_iommu_addr() -> String {
    "0x3".into()
}

/// Why a launch cannot go ahead.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The configuration file.
    #[error("cannot read {path:?}: {err}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The configuration file's content.
    #[error("{path:?}: {err}")]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        err: String,
    },
    /// A bad value in the configuration.
    #[error("{0}")]
    Config(String),
    /// A guest address the VIOT does not put behind the IOMMU.
    #[error("guest address {guest} (host device {host}) is not behind the virtio-iommu in the VIOT {viot:?}; use a guest address the VIOT covers, or let the launcher write the VIOT (no `viot` key)")]
    OutsideViot {
        /// The guest address.
        guest: PciAddress,
        /// The host device.
        host: String,
        /// The VIOT file.
        viot: PathBuf,
    },
    /// QEMU arguments.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// The VIOT.
    #[error(transparent)]
    Viot(#[from] ViotError),
    /// The host devices or /dev/iommu.
    #[error(transparent)]
    Host(#[from] host::HostError),
    /// Starting and running the processes.
    #[error(transparent)]
    Run(#[from] run::RunError),
}

/// One passthrough device as planned: host address, guest address, endpoint id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDevice {
    /// Host PCI address.
    pub host: PciAddress,
    /// Guest PCI address (pcie.0).
    pub guest: PciAddress,
    /// The endpoint id the guest derives from the VIOT.
    pub endpoint: u32,
}

/// Everything the launcher will do, computed from the configuration before anything is opened
/// or started.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The VIOT (written to the run directory unless the configuration names one).
    pub viot: Viot,
    /// The passthrough devices.
    pub devices: Vec<PlannedDevice>,
    /// Emulated devices behind the IOMMU (guest address, endpoint).
    pub emulated: Vec<(PciAddress, u32)>,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Slot and function of the virtio-iommu on pcie.0.
    pub iommu_slot: (u8, u8),
}

fn on_root_bus(what: &str, a: PciAddress) -> Result<(), LaunchError> {
    if a.segment != 0 || a.bus != 0 || a.function != 0 {
        return Err(LaunchError::Config(format!(
            "{what} {a}: the launcher places devices on pcie.0 as single functions; use 0000:00:SS.0 (SS = 0x01-0x1f, not the virtio-iommu's slot)"
        )));
    }
    Ok(())
}

impl Plan {
    /// Checks the configuration and computes the plan. `viot` is the content of the
    /// configuration's `viot` file, if it names one.
    pub fn new(cfg: &LaunchConfig, viot: Option<Viot>) -> Result<Plan, LaunchError> {
        let memory = qemu::parse_size(&cfg.memory)?;
        let iommu_slot = qemu::parse_slot(&cfg.iommu_addr)?;
        let iommu = PciAddress {
            segment: 0,
            bus: 0,
            device: iommu_slot.0,
            function: iommu_slot.1,
        };
        if cfg.devices.is_empty() {
            return Err(LaunchError::Config(
                "no [[devices]]: the launcher is for VMs with passthrough devices (host = BDF bound to vfio-pci, guest = 00:SS.0)".into(),
            ));
        }
        let parse = |what: &str, s: &str| -> Result<PciAddress, LaunchError> {
            s.parse()
                .map_err(|e| LaunchError::Config(format!("{what} `{s}`: {e}")))
        };
        let mut guests: Vec<PciAddress> = Vec::new();
        let mut taken = |what: &str, g: PciAddress| -> Result<(), LaunchError> {
            on_root_bus(what, g)?;
            if g.device == iommu.device || g.device == 0 {
                return Err(LaunchError::Config(format!(
                    "{what} {g}: slot {:#x} is taken ({}); choose another slot",
                    g.device,
                    if g.device == 0 {
                        "the host bridge"
                    } else {
                        "the virtio-iommu"
                    }
                )));
            }
            if guests.iter().any(|o| o.device == g.device) {
                return Err(LaunchError::Config(format!(
                    "{what} {g}: slot {:#x} is used twice",
                    g.device
                )));
            }
            guests.push(g);
            Ok(())
        };
        let mut hosts: Vec<PciAddress> = Vec::new();
        let mut pairs = Vec::new();
        for d in &cfg.devices {
            let host = parse("host address", &d.host)?;
            let guest = parse("guest address", &d.guest)?;
            if hosts.contains(&host) {
                return Err(LaunchError::Config(format!(
                    "host device {host} listed twice"
                )));
            }
            hosts.push(host);
            taken("guest address", guest)?;
            pairs.push((host, guest));
        }
        let mut emulated_addrs = Vec::new();
        for e in &cfg.emulated {
            let g = parse("emulated device", e)?;
            taken("emulated device", g)?;
            log::warn!(
                "emulated device {g} is put behind the virtio-iommu as asked, but QEMU does not translate its DMA: it uses IOVAs as guest-physical addresses"
            );
            emulated_addrs.push(g);
        }
        let (viot, viot_given) = match viot {
            Some(v) => (v, true),
            None => {
                let ranges = guests
                    .iter()
                    .map(|g| PciRange::new(*g, *g, u32::from(g.bdf())))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| LaunchError::Config(e.to_string()))?;
                (Viot::new(iommu, ranges)?, false)
            }
        };
        if viot.iommu != iommu {
            return Err(QemuError::Mismatch {
                viot: viot.iommu,
                device: iommu,
            }
            .into());
        }
        let viot_path = cfg.viot.clone().unwrap_or_default();
        let endpoint = |guest: PciAddress, host: String| {
            viot.endpoint_of(guest).ok_or(LaunchError::OutsideViot {
                guest,
                host,
                viot: viot_path.clone(),
            })
        };
        let mut devices = Vec::new();
        for (host, guest) in pairs {
            let endpoint = endpoint(guest, host.to_string())?;
            devices.push(PlannedDevice {
                host,
                guest,
                endpoint,
            });
        }
        let mut emulated = Vec::new();
        for g in emulated_addrs {
            emulated.push((g, endpoint(g, "none, emulated".into())?));
        }
        if viot_given {
            log::info!("using the VIOT {:?}", viot_path);
        }
        Ok(Plan {
            viot,
            devices,
            emulated,
            memory,
            iommu_slot,
        })
    }

    /// The daemon's `--endpoints`: every endpoint id the VIOT hands out (Linux stops probing a
    /// bus at the first endpoint the device does not know).
    pub fn endpoints(&self) -> String {
        self.viot.endpoint_list()
    }
}

/// The files and sockets of one launch, as the launcher sees them.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// The run directory.
    pub dir: PathBuf,
    /// QEMU's root (chroot), if any.
    pub qemu_root: Option<PathBuf>,
}

impl RunPaths {
    /// The daemon's vhost-user socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("vhost-user.sock")
    }
    /// The daemon's control socket.
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    /// The hand-over socket (the launcher listens, the daemon connects).
    pub fn fd_socket(&self) -> PathBuf {
        self.dir.join("fd.sock")
    }
    /// The VIOT written for QEMU.
    pub fn viot(&self) -> PathBuf {
        self.dir.join("viot.bin")
    }
    /// The daemon's configuration file.
    pub fn daemon_config(&self) -> PathBuf {
        self.dir.join("daemon.toml")
    }
    /// The lock held while a launcher uses the directory.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("launch.lock")
    }
    /// The proxy's vhost-user socket (QEMU's, with `restart`).
    pub fn vm_socket(&self) -> PathBuf {
        self.dir.join("vm.sock")
    }
    /// The daemon's state directory (with `restart`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// The running daemon's process id.
    pub fn daemon_pid(&self) -> PathBuf {
        self.dir.join("daemon.pid")
    }

    /// `p` as QEMU sees it (inside its chroot).
    pub fn for_qemu(&self, p: &Path) -> Result<PathBuf, LaunchError> {
        match &self.qemu_root {
            None => Ok(p.to_path_buf()),
            Some(root) => p
                .strip_prefix(root)
                .map(|rel| Path::new("/").join(rel))
                .map_err(|_| {
                    LaunchError::Config(format!(
                        "{p:?} is outside qemu-root {root:?}: put run-dir (and viot) inside it"
                    ))
                }),
        }
    }
}

/// The daemon's configuration (TOML): the iommufd backend, the hand-over socket and one
/// `fd = true, bind = false` device per passthrough device (QEMU binds it), the endpoints of
/// the VIOT; with `restart`, the state directory.
pub fn daemon_config(plan: &Plan, paths: &RunPaths, restart: bool) -> String {
    use toml::{Table, Value};
    let s = |p: PathBuf| Value::String(p.display().to_string());
    let mut top = Table::new();
    top.insert("socket".into(), s(paths.socket()));
    top.insert("control-socket".into(), s(paths.control()));
    if restart {
        top.insert("state-dir".into(), s(paths.state_dir()));
    }
    top.insert("backend".into(), Value::String("iommufd".into()));
    top.insert("endpoints".into(), Value::String(plan.endpoints()));
    let mut iommufd = Table::new();
    iommufd.insert("fd-socket".into(), s(paths.fd_socket()));
    let devices = plan
        .devices
        .iter()
        .map(|d| {
            let mut t = Table::new();
            t.insert("endpoint".into(), Value::Integer(i64::from(d.endpoint)));
            t.insert("fd".into(), Value::Boolean(true));
            // QEMU binds the device; the daemon attaches it through the same open file.
            t.insert("bind".into(), Value::Boolean(false));
            Value::Table(t)
        })
        .collect();
    iommufd.insert("devices".into(), Value::Array(devices));
    top.insert("iommufd".into(), Value::Table(iommufd));
    format!(
        "# Written by vhost-user-iommu-glue launch; rewritten at every launch.\n{}",
        toml::to_string(&top).unwrap_or_default()
    )
}

/// The QEMU id of the shared iommufd object.
pub const IOMMUFD_ID: &str = "vui-iommufd";

/// The QEMU arguments the launcher appends: guest memory, the vhost-user device on `socket`
/// (the daemon's, or the proxy's), the VIOT, the iommufd object on fd `iommufd_fd` and one
/// vfio-pci device per passthrough device on the fds `device_fds` (in plan order).
pub fn qemu_args(
    plan: &Plan,
    paths: &RunPaths,
    socket: &Path,
    viot_file: &Path,
    iommufd_fd: i32,
    device_fds: &[i32],
) -> Result<Vec<String>, LaunchError> {
    let q = QemuArgs {
        socket: paths.for_qemu(socket)?,
        viot: paths.for_qemu(viot_file)?,
        memory: plan.memory,
        slot: plan.iommu_slot,
        bus: "pcie.0".into(),
    };
    q.check_viot(&plan.viot)?;
    let mut args = q.args()?;
    args.push("-object".into());
    args.push(format!("iommufd,id={IOMMUFD_ID},fd={iommufd_fd}"));
    for (i, (d, fd)) in plan.devices.iter().zip(device_fds).enumerate() {
        args.push("-device".into());
        args.push(format!(
            "vfio-pci,id=vui-hostdev{i},fd={fd},iommufd={IOMMUFD_ID},bus=pcie.0,addr={:#x}",
            d.guest.device
        ));
    }
    Ok(args)
}

/// Reads and parses a launcher configuration file.
pub fn read_config(path: &Path) -> Result<LaunchConfig, LaunchError> {
    let text = std::fs::read_to_string(path).map_err(|err| LaunchError::ReadConfig {
        path: path.to_path_buf(),
        err,
    })?;
    toml::from_str(&text).map_err(|e| LaunchError::ParseConfig {
        path: path.to_path_buf(),
        err: e.message().to_string(),
    })
}

#[cfg(test)]
mod tests;
