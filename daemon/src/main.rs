//! `vhost-user-iommu`: serve a virtio-iommu device over vhost-user, or inspect a running one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use vhost_user_iommu::config::{
    parse_u32, parse_u64, DeviceConfig, EndpointSet, Range32, Range64, ReservedRegion,
};
use vhost_user_iommu::{control, server};

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
    Ctl(CtlArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Path of the vhost-user unix socket to listen on.
    #[arg(long, value_name = "PATH", required = true)]
    socket: Option<PathBuf>,
    /// Path of the control (inspection) socket [default: SOCKET.ctl].
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Page sizes the device supports; the lowest set bit is the granule (at least 4 KiB).
    #[arg(long, value_name = "MASK", value_parser = parse_u64, default_value = "0xfffffffffffff000")]
    page_size_mask: u64,
    /// IOVA range the guest may map, inclusive [default: 0-0xffffffffffffffff].
    #[arg(long, value_name = "START-END")]
    input_range: Option<Range64>,
    /// Domain ids the guest may use, inclusive [default: 0-4294967295].
    #[arg(long, value_name = "START-END")]
    domain_range: Option<Range32>,
    /// Endpoint ids that exist: `any`, or a list like 0-255,1024 (the VMM's topology decides).
    #[arg(long, value_name = "LIST", default_value = "any")]
    endpoints: EndpointSet,
    /// Region reported by PROBE as START-END:msi or START-END:reserved (repeatable; replaces the
    /// default x86 MSI window 0xfee00000-0xfeefffff:msi). `none` reports no region.
    #[arg(long = "reserved-region", value_name = "REGION")]
    reserved_regions: Vec<String>,
    /// Size of the PROBE properties buffer advertised in the config space.
    #[arg(long, value_name = "BYTES", value_parser = parse_u32, default_value = "512")]
    probe_size: u32,
    /// Boot with the config `bypass` bit set: unattached endpoints bypass the IOMMU.
    #[arg(long)]
    bypass: bool,
    /// Offer the legacy BYPASS feature (bit 3) instead of BYPASS_CONFIG.
    #[arg(long)]
    legacy_bypass: bool,
    /// Maximum number of live mappings; a MAP beyond it fails with NOMEM.
    #[arg(long, value_name = "N", value_parser = parse_u64, default_value = "16777216")]
    max_mappings: u64,
}

#[derive(Debug, Args)]
struct CtlArgs {
    /// Path of the daemon's control socket.
    #[arg(long, value_name = "PATH")]
    control_socket: PathBuf,
    #[command(subcommand)]
    query: Query,
}

#[derive(Debug, Subcommand)]
enum Query {
    /// Connection, features, configuration and totals.
    Status,
    /// Endpoints the driver has probed or attached, with their domain.
    Endpoints,
    /// Domains with their endpoints and mapping counts.
    Domains,
    /// One page of a domain's mappings.
    Mappings {
        #[arg(long, value_parser = parse_u32)]
        domain: u32,
        #[arg(long, value_parser = parse_u64, default_value = "0")]
        start: u64,
        #[arg(long, default_value = "1000")]
        limit: usize,
    },
    /// Requests per type and status, fault delivery counts.
    Counters,
    /// The most recent faults.
    Faults,
    /// Translate an access through the software backend (a miss raises a fault event).
    Translate {
        #[arg(long, value_parser = parse_u32)]
        endpoint: u32,
        #[arg(long, value_parser = parse_u64)]
        iova: u64,
        /// r, w or rw
        #[arg(long, default_value = "r")]
        access: String,
    },
}

fn device_config(a: &RunArgs) -> Result<DeviceConfig, String> {
    let mut cfg = DeviceConfig {
        page_size_mask: a.page_size_mask,
        endpoints: a.endpoints.clone(),
        probe_size: a.probe_size,
        boot_bypass: a.bypass,
        legacy_bypass: a.legacy_bypass,
        max_mappings: a.max_mappings,
        ..DeviceConfig::default()
    };
    if let Some(r) = a.input_range {
        (cfg.input_start, cfg.input_end) = (r.start, r.end);
    }
    if let Some(r) = a.domain_range {
        (cfg.domain_start, cfg.domain_end) = (r.start, r.end);
    }
    if !a.reserved_regions.is_empty() {
        cfg.reserved.clear();
        for s in &a.reserved_regions {
            if s == "none" {
                continue;
            }
            let r: ReservedRegion = s
                .parse()
                .map_err(|e| format!("--reserved-region {s:?}: {e}"))?;
            cfg.reserved.push(r);
        }
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn run_ctl(a: CtlArgs) -> Result<(), String> {
    let req = match a.query {
        Query::Status => json!({"cmd": "status"}),
        Query::Endpoints => json!({"cmd": "endpoints"}),
        Query::Domains => json!({"cmd": "domains"}),
        Query::Mappings {
            domain,
            start,
            limit,
        } => json!({"cmd": "mappings", "domain": domain, "start": start, "limit": limit}),
        Query::Counters => json!({"cmd": "counters"}),
        Query::Faults => json!({"cmd": "faults"}),
        Query::Translate {
            endpoint,
            iova,
            access,
        } => json!({"cmd": "translate", "endpoint": endpoint, "iova": iova, "access": access}),
    };
    let result = control::request(&a.control_socket, &req).map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Ctl(a)) => run_ctl(a),
        None => (|| {
            let device = device_config(&cli.run)?;
            let socket = cli.run.socket.clone().ok_or("--socket PATH is required")?;
            let control_socket = cli.run.control_socket.clone().unwrap_or_else(|| {
                let mut p = socket.clone().into_os_string();
                p.push(".ctl");
                PathBuf::from(p)
            });
            server::run(server::ServerConfig {
                socket,
                control_socket,
                device,
            })
            .map_err(|e| e.to_string())
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-iommu: {e}");
            ExitCode::FAILURE
        }
    }
}
