//! `vhost-user-iommu`: serve a virtio-iommu device over vhost-user, or inspect a running one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use model::protocol::RESV_MEM_T_MSI;
use vhost_user_iommu::host::BackendConfig;
use vhost_user_iommu::service::server;
use vhost_user_iommu::service::settings::{self, Layer, Settings};

mod ctl;

#[derive(Debug, Parser)]
#[command(
    name = "vhost-user-iommu",
    version,
    about = "A virtio-iommu device (virtio ID 23) served to a VM over vhost-user",
    long_about = "Serves a virtio-iommu device to one vhost-user frontend at a time (QEMU's \
                  vhost-user-test-device-pci with virtio-id=23, or a VMM using vmm-glue). With no \
                  backend option it uses the software backend, which needs no IOMMU hardware.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Query a running daemon through its control socket and print JSON.
    Ctl(ctl::CtlArgs),
    /// Keep the VMM's vhost-user connection while the daemon behind it restarts or is
    /// upgraded: the VMM connects here, the proxy to the daemon's --socket; after a restart
    /// it replays the connection's set-up into the new daemon, which resumes its --state-dir
    /// journal (docs/STATE.md, "Restart").
    Proxy {
        /// Where the VMM connects (a systemd socket unit's listener takes its place).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The daemon's vhost-user socket.
        #[arg(long, value_name = "PATH")]
        backend: PathBuf,
        /// Run without the proxy's seccomp filter (to find out which call was missing).
        #[arg(long)]
        no_seccomp: bool,
    },
    /// Print the manual page (roff) generated from this command line to stdout.
    #[command(hide = true)]
    Man,
    /// Print the systemd drop-in that allows the service exactly the host devices a config
    /// file names (DeviceAllow=), for /etc/systemd/system/vhost-user-iommu@VM.service.d/.
    SystemdDropin {
        /// The VM's configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Where sysfs is mounted (to check the host devices against: VFIO cdevs, PCI
        /// devices bound to vfio-pci).
        #[arg(long, value_name = "DIR", default_value = "/sys", hide = true)]
        sysfs: PathBuf,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Read settings from this TOML file (keys are the option names without dashes; options
    /// given on the command line override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Read this file instead when the --config file does not exist (the packaged service:
    /// /etc/vhost-user-iommu/VM.toml if the VM has one, else default.toml next to it).
    #[arg(long, value_name = "FILE", requires = "config")]
    default_config: Option<PathBuf>,
    /// Validate the configuration (file and options), print it and exit: 0 if valid, 1 if not.
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    settings: Layer,
}

/// The config file to read: --config, or --default-config when that does not exist.
fn config_path(a: &RunArgs) -> Option<&std::path::Path> {
    let config = a.config.as_deref()?;
    match &a.default_config {
        Some(d) if !config.exists() => Some(d.as_path()),
        _ => Some(config),
    }
}

fn settings(a: &RunArgs) -> Result<Settings, String> {
    if let (Some(path), Some(_)) = (config_path(a), &a.default_config) {
        log::info!("configuration: {}", path.display());
    }
    let file = match config_path(a) {
        Some(path) => Some((path, settings::load(path).map_err(|e| e.to_string())?)),
        None => None,
    };
    settings::resolve(a.settings.clone(), file).map_err(|e| e.to_string())
}

fn print_settings(s: &Settings) {
    let d = &s.device;
    let regions: Vec<String> = d
        .reserved
        .iter()
        .map(|r| {
            let kind = if r.subtype == RESV_MEM_T_MSI {
                "msi"
            } else {
                "reserved"
            };
            format!("{:#x}-{:#x}:{kind}", r.start, r.end)
        })
        .collect();
    let v = json!({
        "socket": s.socket.as_ref().map(|p| p.display().to_string()),
        "control-socket": s.control_socket.as_ref().map(|p| p.display().to_string()),
        "state-dir": s.state_dir.as_ref().map(|p| p.display().to_string()),
        "page-size-mask": format!("{:#x}", d.page_size_mask),
        "input-range": format!("{:#x}-{:#x}", d.input_start, d.input_end),
        "domain-range": format!("{}-{}", d.domain_start, d.domain_end),
        "endpoints": d.endpoints.to_string(),
        "reserved-regions": regions,
        "probe-size": d.probe_size,
        "bypass": d.boot_bypass,
        "legacy-bypass": d.legacy_bypass,
        "max-mappings": d.max_mappings,
        "poll-us": s.poll.as_micros(),
        "worker-sched": s.worker_sched.to_string(),
        "pasid-bits": d.pasid_bits,
        "user": s.user,
        "socket-user": s.socket_access.user,
        "socket-group": s.socket_access.group,
        "socket-mode": s.socket_access.mode.map(|m| format!("{m:04o}")),
        "seccomp": s.seccomp,
        "backend": backend_json(&s.backend),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
    );
}

fn backend_json(b: &BackendConfig) -> serde_json::Value {
    use vhost_user_iommu::host::iommufd::DeviceSource;
    match b {
        BackendConfig::Software => json!("software"),
        BackendConfig::Iommufd(c) => {
            let devices: Vec<_> = c
                .devices
                .iter()
                .map(|(ep, src)| match src {
                    DeviceSource::Vfio(p) => {
                        json!({"endpoint": ep, "vfio": p.display().to_string()})
                    }
                    DeviceSource::Pci(bdf) => json!({"endpoint": ep, "pci": bdf}),
                    DeviceSource::Passed => json!({"endpoint": ep, "fd": true}),
                    DeviceSource::Shared => json!({"endpoint": ep, "fd": true, "bind": false}),
                    DeviceSource::Mock => json!({"endpoint": ep, "mock": true}),
                })
                .collect();
            json!({
                "iommufd": {
                    "iommufd": c.iommufd.as_ref().map(|p| p.display().to_string()),
                    "fd-socket": c.fd_socket.as_ref().map(|p| p.display().to_string()),
                    "devices": devices,
                }
            })
        }
    }
}

/// The manual page, generated from the command-line definition.
fn man_page() -> Result<Vec<u8>, String> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Log to the journal (with structured fields) when stderr is connected to it, else to stderr.
/// The level comes from RUST_LOG (default info).
fn init_logging() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Info);
    if systemd_journal_logger::connected_to_journal() {
        let logger = systemd_journal_logger::JournalLog::new().map(|l| {
            l.with_syslog_identifier("vhost-user-iommu".to_string())
                .with_extra_fields(vec![("VUI_VERSION", env!("CARGO_PKG_VERSION"))])
        });
        if let Ok(l) = logger {
            if l.install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

fn run_daemon(a: &RunArgs) -> Result<(), String> {
    if a.check_config {
        return check_config(a);
    }
    let s = settings(a)?;
    server::run(s).map_err(|e| e.to_string())
}

/// `--check-config`: the resolved settings as JSON and exit 0, or every problem (of the file,
/// the options, their combination, and the host devices the configuration names) as JSON on
/// stdout and as text on stderr, and exit 1.
fn check_config(a: &RunArgs) -> Result<(), String> {
    let file = match config_path(a) {
        Some(path) => match settings::load(path) {
            Ok(l) => Some((path, l)),
            Err(e) => return Err(config_problems(e.messages())),
        },
        None => None,
    };
    let s =
        settings::resolve(a.settings.clone(), file).map_err(|e| config_problems(e.messages()))?;
    let mut problems = Vec::new();
    if let BackendConfig::Iommufd(c) = &s.backend {
        problems = vhost_user_iommu::host::iommufd::check_sources(c, std::path::Path::new("/sys"));
    }
    // The socket's owner and group must exist on this host (each checked on its own, so both
    // are reported).
    let o = &s.socket_access;
    for one in [
        settings::SocketOwner {
            user: o.user.clone(),
            ..Default::default()
        },
        settings::SocketOwner {
            group: o.group.clone(),
            ..Default::default()
        },
    ] {
        if let Err(e) = server::socket_access(&one) {
            problems.push(e.to_string());
        }
    }

    // Before an upgrade: can this binary resume the running daemon's journal?
    if let Some(dir) = &s.state_dir {
        match vhost_user_iommu::journal::check(dir, &s.device) {
            Ok(said) => eprintln!("{said}"),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(config_problems(problems));
    }
    print_settings(&s);
    Ok(())
}

/// Print `problems` as `{"valid": false, "errors": [...]}`; the text for stderr.
fn config_problems(problems: Vec<String>) -> String {
    let v = json!({"valid": false, "errors": problems});
    println!(
        "{}",
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
    );
    settings::problem_list(&problems)
}

fn main() -> ExitCode {
    // One malloc arena for every thread. glibc reads /proc/sys/vm/overcommit_memory the first
    // time a per-thread arena shrinks, an openat the seccomp filters rightly refuse (it killed
    // the vring worker after a large UNMAP). The daemon has a handful of threads, so sharing the
    // main arena costs nothing measurable.
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Man) => man_page().and_then(|page| {
            use std::io::Write;
            std::io::stdout()
                .write_all(&page)
                .map_err(|e| e.to_string())
        }),
        Some(Command::Ctl(a)) => ctl::run(a),
        Some(Command::Proxy {
            socket,
            backend,
            no_seccomp,
        }) => {
            init_logging();
            vhost_user_iommu::proxy::run(vhost_user_iommu::proxy::ProxyOptions {
                socket,
                backend,
                seccomp: !no_seccomp,
            })
            .map_err(|e| e.to_string())
        }
        Some(Command::SystemdDropin { config, sysfs }) => settings::load(&config)
            .and_then(|l| settings::resolve(Layer::default(), Some((&config, l))))
            .map_err(|e| e.to_string())
            .and_then(|s| {
                vhost_user_iommu::service::unit::device_dropin(&s, &sysfs)
                    .map_err(|e| e.to_string())
            })
            .map(|text| print!("{text}")),
        None => {
            init_logging();
            run_daemon(&cli.run)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let what = if cli.run.check_config {
                "configuration invalid: "
            } else {
                ""
            };
            eprintln!("vhost-user-iommu: {what}{e}");
            ExitCode::FAILURE
        }
    }
}
