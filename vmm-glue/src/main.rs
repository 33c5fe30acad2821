//! `vhost-user-iommu-glue`: writes the VIOT table and prints the QEMU arguments that attach the
//! vhost-user-iommu daemon to a VM.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use vhost_user_iommu_glue::launch::{self, host::HostRoots, run::Launch, LaunchError};
use vhost_user_iommu_glue::pci::{PciAddress, PciRange};
use vhost_user_iommu_glue::qemu::{self, QemuArgs, QemuError};
use vhost_user_iommu_glue::viot::{Viot, ViotError};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "VMM glue for vhost-user-iommu: ACPI VIOT table and QEMU arguments"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a QEMU VM whose VFIO passthrough devices are translated by the daemon: opens
    /// /dev/iommu and the devices' VFIO cdevs, writes the VIOT, starts the daemon (iommufd
    /// backend) and hands it the fds, then starts QEMU (the command after `--`, with the
    /// launcher's arguments appended). Stops everything when QEMU exits (docs/PASSTHROUGH.md).
    Launch {
        /// The launcher's configuration (TOML; docs/PASSTHROUGH.md).
        #[arg(long, value_name = "VM.toml")]
        config: PathBuf,
        /// The daemon binary [default: `daemon` in the configuration, else vhost-user-iommu
        /// next to this program, else on $PATH].
        #[arg(long, value_name = "PATH")]
        daemon: Option<PathBuf>,
        /// sysfs mount point (for tests).
        #[arg(long, value_name = "DIR", default_value = "/sys", hide = true)]
        sysfs_root: PathBuf,
        /// /dev mount point (for tests).
        #[arg(long, value_name = "DIR", default_value = "/dev", hide = true)]
        dev_root: PathBuf,
        /// QEMU's program and arguments.
        #[arg(last = true, value_name = "QEMU-COMMAND", required = true)]
        qemu: Vec<OsString>,
    },
    /// Write a VIOT table (for QEMU's `-acpitable file=`) placing the virtio-iommu at --iommu and
    /// the given PCI ranges behind it.
    Viot {
        /// Segment:bus:device.function of the virtio-iommu PCI device.
        #[arg(long, value_name = "SEG:BB:DD.F")]
        iommu: PciAddress,
        /// Functions translated by the IOMMU; endpoint ids count from ENDPOINT_START (default:
        /// the BDF of the first function). Repeat for several ranges.
        #[arg(
            long = "pci-range",
            value_name = "SEG:BB:DD.F-BB:DD.F[@ENDPOINT_START]",
            required = true
        )]
        ranges: Vec<PciRange>,
        /// Output file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the endpoint id the guest will use for a PCI function, per a VIOT file.
    Endpoint {
        /// The VIOT file.
        #[arg(long, value_name = "FILE")]
        viot: PathBuf,
        /// The function.
        #[arg(value_name = "SEG:BB:DD.F")]
        device: PciAddress,
    },
    /// Print the endpoint ids a VIOT hands out, in the daemon's `--endpoints` syntax (A-B,C,...).
    /// Give the daemon exactly these: Linux stops probing a bus at the first endpoint the
    /// device does not know.
    Endpoints {
        /// The VIOT file.
        #[arg(long, value_name = "FILE")]
        viot: PathBuf,
    },
    /// Print the QEMU arguments: shared guest memory, the vhost-user chardev, the generic
    /// vhost-user device as a virtio-iommu at a pinned address, and the VIOT.
    QemuArgs {
        /// The daemon's vhost-user socket (as QEMU sees it).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// The VIOT file from `viot` (as QEMU sees it).
        #[arg(long, value_name = "FILE")]
        viot: PathBuf,
        /// Read the VIOT from here instead (when QEMU sees the file under another path, e.g. in a chroot).
        #[arg(long, value_name = "FILE")]
        viot_local: Option<PathBuf>,
        /// Where the daemon's socket is on this machine, when QEMU sees it under another path
        /// (a chroot): the one checked for existence.
        #[arg(long, value_name = "PATH")]
        socket_local: Option<PathBuf>,
        /// The daemon's --endpoints: every endpoint the VIOT puts behind the IOMMU must be in
        /// it (Linux stops probing at the first PROBE answered NOENT, leaving the bus
        /// untranslated).
        #[arg(long, value_name = "LIST")]
        endpoints: Option<model::config::EndpointSet>,
        /// Guest memory size (512M, 2G, ...).
        #[arg(long, value_name = "SIZE", default_value = "512M")]
        memory: String,
        /// PCI slot of the device on --bus.
        #[arg(long, value_name = "SLOT[.FN]", default_value = "0x3")]
        iommu_addr: String,
        /// PCI bus of the device (the VIOT address is checked only on pcie.0).
        #[arg(long, default_value = "pcie.0")]
        bus: String,
        /// Output style.
        #[arg(long, value_enum, default_value_t = Format::Shell)]
        format: Format,
    },
    /// Print the manual page (roff) generated from this command line to stdout.
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// One line, words quoted for a POSIX shell.
    Shell,
    /// One argument per line (for `mapfile -t`).
    Lines,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Viot(#[from] ViotError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error("cannot write {path:?}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("{0} is not behind the IOMMU in this VIOT (or is the IOMMU itself)")]
    NotCovered(PciAddress),
    #[error("cannot write the man page: {0}")]
    Man(std::io::Error),
    #[error("the VIOT puts endpoints {missing} behind the IOMMU, which the daemon's --endpoints {served} does not serve: the guest's driver would stop at the first one and translate nothing; start the daemon with --endpoints {viot} (`vhost-user-iommu-glue endpoints --viot FILE`)")]
    EndpointsNotServed {
        served: String,
        missing: String,
        viot: String,
    },
}

fn read_viot(path: &Path) -> Result<Viot, QemuError> {
    let bytes = std::fs::read(path).map_err(|source| QemuError::ReadViot {
        path: path.to_path_buf(),
        source,
    })?;
    Viot::parse(&bytes).map_err(|source| QemuError::BadViot {
        path: path.to_path_buf(),
        source,
    })
}

fn run(cli: Cli) -> Result<u8, Error> {
    match cli.cmd {
        Cmd::Man => {
            use clap::CommandFactory;
            use std::io::Write;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command().name("vhost-user-iommu-glue"))
                .render(&mut page)
                .map_err(Error::Man)?;
            std::io::stdout().write_all(&page).map_err(Error::Man)?;
        }
        Cmd::Launch {
            config,
            daemon,
            sysfs_root,
            dev_root,
            qemu,
        } => {
            let code = launch::run::launch(&Launch {
                config,
                daemon,
                qemu,
                roots: HostRoots {
                    sys: sysfs_root,
                    dev: dev_root,
                },
            })?;
            return Ok(u8::try_from(code).unwrap_or(1));
        }
        Cmd::Viot { iommu, ranges, out } => {
            let viot = Viot::new(iommu, ranges)?;
            let bytes = viot.to_bytes();
            std::fs::write(&out, &bytes).map_err(|source| Error::Write {
                path: out.clone(),
                source,
            })?;
            log::info!("wrote {} bytes to {}", bytes.len(), out.display());
            for r in &viot.ranges {
                log::info!(
                    "endpoints {}-{} -> ids from {:#x}",
                    r.first,
                    r.last,
                    r.endpoint_start
                );
            }
        }
        Cmd::Endpoint { viot, device } => {
            let v = read_viot(&viot)?;
            let id = v.endpoint_of(device).ok_or(Error::NotCovered(device))?;
            println!("{id}");
        }
        Cmd::Endpoints { viot } => {
            println!("{}", read_viot(&viot)?.endpoint_list());
        }
        Cmd::QemuArgs {
            socket,
            viot,
            viot_local,
            socket_local,
            endpoints,
            memory,
            iommu_addr,
            bus,
            format,
        } => {
            let q = QemuArgs {
                socket,
                viot: viot.clone(),
                memory: qemu::parse_size(&memory)?,
                slot: qemu::parse_slot(&iommu_addr)?,
                bus,
            };
            let table = read_viot(viot_local.as_ref().unwrap_or(&viot))?;
            q.check_viot(&table)?;
            if let Some(served) = &endpoints {
                let missing: Vec<String> = table
                    .endpoint_ranges()
                    .into_iter()
                    .filter(|&(a, b)| (a..=b).any(|e| !served.contains(e)))
                    .map(|(a, b)| format!("{a}-{b}"))
                    .collect();
                if !missing.is_empty() {
                    return Err(Error::EndpointsNotServed {
                        served: served.to_string(),
                        missing: missing.join(","),
                        viot: table.endpoint_list(),
                    });
                }
            }
            // Where the socket is here: QEMU's path means nothing on this side of a chroot.
            let here = socket_local.as_ref().or(match viot_local {
                Some(_) => None,
                None => Some(&q.socket),
            });
            if let Some(p) = here.filter(|p| !p.exists()) {
                log::warn!(
                    "{} does not exist yet; start the daemon before QEMU",
                    p.display()
                );
            }
            let args = q.args()?;
            match format {
                Format::Shell => {
                    let words: Vec<String> = args.iter().map(|a| qemu::shell_quote(a)).collect();
                    println!("{}", words.join(" "));
                }
                Format::Lines => args.iter().for_each(|a| println!("{a}")),
            }
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vhost-user-iommu-glue: error: {e}");
            ExitCode::FAILURE
        }
    }
}
