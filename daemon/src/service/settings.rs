//! The TOML configuration file and how it combines with the command line.
//!
//! Every run option has a key of the same name without the leading dashes
//! (`--page-size-mask` is `page-size-mask`); `--no-seccomp` is `seccomp = false`. Values given on
//! the command line override the file. Unknown keys are rejected, and every error names the key
//! (or option) and the problem. The format is documented in docs/OPERATORS.md.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::host::iommufd::{DeviceSource, IommufdConfig};
use crate::host::{BackendConfig, BackendKind};
use crate::os::sched::WorkerSched;
use model::config::{
    parse_u32, parse_u64, ConfigError, DeviceConfig, EndpointSet, Range32, Range64, ReservedRegion,
};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("config file {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    /// Syntax errors, unknown keys and wrongly typed values (toml reports line and column).
    #[error("config file {path}: {msg}")]
    Syntax { path: PathBuf, msg: String },
    #[error("config file {path}: key `{key}`: {why}")]
    Value {
        path: PathBuf,
        key: &'static str,
        why: String,
    },
    #[error("option --{key}: {why}")]
    Flag { key: &'static str, why: String },
    #[error("{origin}: {err}")]
    Invalid { origin: String, err: ConfigError },
    #[error("no vhost-user socket: set `socket` in the config file, pass --socket, or start the daemon through systemd socket activation")]
    NoSocket,
}

/// A number written as a TOML integer or as a string (decimal or 0x hex). Strings are needed
/// for values above i64::MAX, which TOML integers cannot hold.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Str(String),
}

impl Number {
    fn to_u64(&self) -> Result<u64, String> {
        match self {
            Number::Int(i) => u64::try_from(*i).map_err(|_| format!("{i} is negative")),
            Number::Str(s) => parse_u64(s),
        }
    }
    fn to_u32(&self) -> Result<u32, String> {
        match self {
            Number::Int(i) => u32::try_from(*i).map_err(|_| format!("{i} does not fit in 32 bits")),
            Number::Str(s) => parse_u32(s),
        }
    }
}

/// The file as written. Keys are the long option names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    socket: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    page_size_mask: Option<Number>,
    input_range: Option<String>,
    domain_range: Option<String>,
    endpoints: Option<String>,
    reserved_regions: Option<Vec<String>>,
    probe_size: Option<Number>,
    bypass: Option<bool>,
    legacy_bypass: Option<bool>,
    max_mappings: Option<Number>,
    poll_us: Option<Number>,
    worker_sched: Option<String>,
    pasid_bits: Option<Number>,
    user: Option<String>,
    seccomp: Option<bool>,
    backend: Option<String>,
    iommufd: Option<RawIommufd>,
}

/// The `[iommufd]` table (docs/IOMMUFD.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawIommufd {
    iommufd: Option<PathBuf>,
    fd_socket: Option<PathBuf>,
    #[serde(default)]
    devices: Vec<RawHostDevice>,
}

/// One `[[iommufd.devices]]` entry: an endpoint id and exactly one source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHostDevice {
    endpoint: u32,
    vfio: Option<PathBuf>,
    pci: Option<String>,
    fd: Option<bool>,
    mock: Option<bool>,
}

impl RawIommufd {
    fn into_config(self) -> Result<IommufdConfig, String> {
        let mut devices = std::collections::BTreeMap::new();
        for d in self.devices {
            let src = match (d.vfio, d.pci, d.fd, d.mock) {
                (Some(p), None, None, None) => DeviceSource::Vfio(p),
                (None, Some(bdf), None, None) => DeviceSource::Pci(bdf),
                (None, None, Some(true), None) => DeviceSource::Passed,
                (None, None, None, Some(true)) => DeviceSource::Mock,
                _ => {
                    return Err(format!(
                        "endpoint {}: give exactly one of vfio = PATH, pci = BDF, fd = true, mock = true",
                        d.endpoint
                    ))
                }
            };
            if devices.insert(d.endpoint, src).is_some() {
                return Err(format!("endpoint {} listed twice", d.endpoint));
            }
        }
        if devices.values().any(|s| *s == DeviceSource::Passed) && self.fd_socket.is_none() {
            return Err("devices with `fd = true` need `fd-socket`".into());
        }
        Ok(IommufdConfig {
            iommufd: self.iommufd,
            fd_socket: self.fd_socket,
            devices,
        })
    }
}

/// One source of settings: the command line (its options are these fields) or the config file
/// (keys of the same names, see [`parse`]); `None` means "not set here".
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct Layer {
    /// Path of the vhost-user unix socket to listen on. Not needed under systemd socket
    /// activation (LISTEN_FDS), where the listener is inherited.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Path of the control (inspection) socket [default: SOCKET.ctl].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Page sizes the device supports; the lowest set bit is the granule (at least 4 KiB)
    /// [default: 0xfffffffffffff000].
    #[arg(long, value_name = "MASK", value_parser = parse_u64)]
    pub page_size_mask: Option<u64>,
    /// IOVA range the guest may map, inclusive [default: 0-0xffffffffffffffff].
    #[arg(long, value_name = "START-END")]
    pub input_range: Option<Range64>,
    /// Domain ids the guest may use, inclusive [default: 0-4294967295].
    #[arg(long, value_name = "START-END")]
    pub domain_range: Option<Range32>,
    /// Endpoint ids that exist: `any`, or a list like 0-255,1024 (the VMM's topology decides)
    /// [default: any].
    #[arg(long, value_name = "LIST")]
    pub endpoints: Option<EndpointSet>,
    /// Region reported by PROBE as START-END:msi or START-END:reserved (repeatable; replaces the
    /// default x86 MSI window 0xfee00000-0xfeefffff:msi). `none` reports no region.
    #[arg(long = "reserved-region", value_name = "REGION")]
    pub reserved_regions: Option<Vec<String>>,
    /// Size of the PROBE properties buffer advertised in the config space [default: 512].
    #[arg(long, value_name = "BYTES", value_parser = parse_u32)]
    pub probe_size: Option<u32>,
    /// Boot with the config `bypass` bit set: unattached endpoints bypass the IOMMU
    /// (`--bypass=false` overrides a config file).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub bypass: Option<bool>,
    /// Offer the legacy BYPASS feature (bit 3) instead of BYPASS_CONFIG.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub legacy_bypass: Option<bool>,
    /// Maximum number of live mappings; a MAP beyond it fails with NOMEM [default: 16777216].
    #[arg(long, value_name = "N", value_parser = parse_u64)]
    pub max_mappings: Option<u64>,
    /// Poll the request queue for this many microseconds after the last request before going
    /// back to sleep on the kick eventfd (0: no polling) [default: 0]. Trades a busy core for
    /// fewer guest kicks and lower latency.
    #[arg(long, value_name = "US", value_parser = parse_u64)]
    pub poll_us: Option<u64>,
    /// CPU scheduling of the request-queue worker thread: `other[:SLICE_US]` (time-sharing
    /// with a short EEVDF slice, no privilege needed), `fifo:PRIO` (SCHED_FIFO; needs
    /// RLIMIT_RTPRIO or root) or `deadline:RUNTIME_US/PERIOD_US` (SCHED_DEADLINE: preempts at
    /// once, at most RUNTIME of CPU per PERIOD; needs CAP_SYS_NICE) [default: other:100].
    #[arg(long, value_name = "POLICY")]
    pub worker_sched: Option<WorkerSched>,
    /// PASID width of every endpoint for the PASID / shared-table extension (docs/PASID.md),
    /// 0..=20; 0 turns the extension off [default: 20].
    #[arg(long, value_name = "BITS")]
    pub pasid_bits: Option<u8>,
    /// Keep the device's state in a journal in this directory (e.g. /run/vhost-user-iommu/VM)
    /// as it changes; a daemon restarted with the same directory resumes the VM's domains and
    /// mappings when its driver carries on (docs/STATE.md).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Once the sockets are open, switch to this user (name or uid) and its primary group.
    /// Needs root (or CAP_SETUID/CAP_SETGID).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Do not install the seccomp system-call filters (for debugging only). In the config
    /// file: `seccomp = false`.
    #[arg(long = "no-seccomp", num_args = 0, default_missing_value = "false")]
    pub seccomp: Option<bool>,
    /// Host backend: `software` (the daemon's own tables) or `iommufd` (guest domains become
    /// host iommufd objects for the devices of the config file's [iommufd] table;
    /// docs/IOMMUFD.md) [default: software].
    #[arg(long, value_name = "KIND")]
    pub backend: Option<BackendKind>,
    /// The `[iommufd]` table (config file only).
    #[arg(skip)]
    pub iommufd: Option<IommufdConfig>,
}

/// Everything the daemon runs with, resolved from defaults, the file and the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The vhost-user socket path; `None` when the listener must come from socket activation.
    pub socket: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    /// Keep the device state in a journal here, to resume it after a restart.
    pub state_dir: Option<PathBuf>,
    pub device: DeviceConfig,
    /// Switch to this user (name or numeric uid) once the sockets are open.
    pub user: Option<String>,
    pub seccomp: bool,
    /// Request-queue polling window (None: sleep on the kick eventfd).
    pub poll: Option<std::time::Duration>,
    /// Scheduling policy of the request-queue worker thread.
    pub worker_sched: WorkerSched,
    pub backend: BackendConfig,
}

/// Read and parse a config file.
pub fn load(path: &Path) -> Result<Layer, FileError> {
    let text = std::fs::read_to_string(path).map_err(|err| FileError::Read {
        path: path.to_owned(),
        err,
    })?;
    parse(path, &text)
}

/// Parse config file text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Layer, FileError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| FileError::Syntax {
        path: path.to_owned(),
        msg: e.to_string().trim_end().replace('\n', "\n  "),
    })?;
    let bad = |key: &'static str| {
        move |why: String| FileError::Value {
            path: path.to_owned(),
            key,
            why,
        }
    };
    let num64 = |v: Option<Number>, key: &'static str| -> Result<Option<u64>, FileError> {
        v.map(|n| n.to_u64().map_err(bad(key))).transpose()
    };
    let num32 = |v: Option<Number>, key: &'static str| -> Result<Option<u32>, FileError> {
        v.map(|n| n.to_u32().map_err(bad(key))).transpose()
    };
    let regions = match raw.reserved_regions {
        Some(list) => {
            check_regions(&list).map_err(bad("reserved-regions"))?;
            Some(list)
        }
        None => None,
    };
    if raw.user.as_deref() == Some("") {
        return Err(bad("user")("must not be empty".into()));
    }
    Ok(Layer {
        socket: raw.socket,
        control_socket: raw.control_socket,
        state_dir: raw.state_dir,
        page_size_mask: num64(raw.page_size_mask, "page-size-mask")?,
        input_range: raw
            .input_range
            .map(|s| s.parse::<Range64>().map_err(bad("input-range")))
            .transpose()?,
        domain_range: raw
            .domain_range
            .map(|s| s.parse::<Range32>().map_err(bad("domain-range")))
            .transpose()?,
        endpoints: raw
            .endpoints
            .map(|s| s.parse::<EndpointSet>().map_err(bad("endpoints")))
            .transpose()?,
        reserved_regions: regions,
        probe_size: num32(raw.probe_size, "probe-size")?,
        bypass: raw.bypass,
        legacy_bypass: raw.legacy_bypass,
        max_mappings: num64(raw.max_mappings, "max-mappings")?,
        poll_us: num64(raw.poll_us, "poll-us")?,
        worker_sched: raw
            .worker_sched
            .map(|s| {
                s.parse::<WorkerSched>()
                    .map_err(|e| bad("worker-sched")(e.to_string()))
            })
            .transpose()?,
        pasid_bits: num32(raw.pasid_bits, "pasid-bits")?
            .map(|v| u8::try_from(v).map_err(|_| bad("pasid-bits")(format!("{v} is above 20"))))
            .transpose()?,
        user: raw.user,
        seccomp: raw.seccomp,
        backend: raw
            .backend
            .map(|s| s.parse::<BackendKind>().map_err(bad("backend")))
            .transpose()?,
        iommufd: raw
            .iommufd
            .map(|t| t.into_config().map_err(bad("iommufd")))
            .transpose()?,
    })
}

/// Check a list of region strings: `none` alone, or every entry parses.
pub fn check_regions(list: &[String]) -> Result<Vec<ReservedRegion>, String> {
    if list.iter().any(|s| s == "none") {
        if list.len() > 1 {
            return Err("`none` cannot be combined with regions".into());
        }
        return Ok(Vec::new());
    }
    list.iter()
        .map(|s| {
            s.parse::<ReservedRegion>()
                .map_err(|e| format!("{s:?}: {e}"))
        })
        .collect()
}

/// The option/key a validation error is about.
fn error_key(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::Parse { option, .. } => option.trim_start_matches('-'),
        ConfigError::PageSizeMask(_) => "page-size-mask",
        ConfigError::InputRange(..) | ConfigError::InputRangeAlign { .. } => "input-range",
        ConfigError::DomainRange(..) => "domain-range",
        ConfigError::ProbeSize { .. } => "probe-size",
        ConfigError::ReservedRegion(..) | ConfigError::ReservedOverlap(..) => "reserved-regions",
        ConfigError::MaxMappings => "max-mappings",
        ConfigError::PasidBits(_) => "pasid-bits",
    }
}

impl Layer {
    /// Values set in `self` win over `base`.
    pub fn over(self, base: Layer) -> Layer {
        Layer {
            socket: self.socket.or(base.socket),
            control_socket: self.control_socket.or(base.control_socket),
            state_dir: self.state_dir.or(base.state_dir),
            page_size_mask: self.page_size_mask.or(base.page_size_mask),
            input_range: self.input_range.or(base.input_range),
            domain_range: self.domain_range.or(base.domain_range),
            endpoints: self.endpoints.or(base.endpoints),
            reserved_regions: self.reserved_regions.or(base.reserved_regions),
            probe_size: self.probe_size.or(base.probe_size),
            bypass: self.bypass.or(base.bypass),
            legacy_bypass: self.legacy_bypass.or(base.legacy_bypass),
            max_mappings: self.max_mappings.or(base.max_mappings),
            poll_us: self.poll_us.or(base.poll_us),
            worker_sched: self.worker_sched.or(base.worker_sched),
            pasid_bits: self.pasid_bits.or(base.pasid_bits),
            user: self.user.or(base.user),
            seccomp: self.seccomp.or(base.seccomp),
            backend: self.backend.or(base.backend),
            iommufd: self.iommufd.or(base.iommufd),
        }
    }

    fn sets(&self, key: &str) -> bool {
        match key {
            "page-size-mask" => self.page_size_mask.is_some(),
            "input-range" => self.input_range.is_some(),
            "domain-range" => self.domain_range.is_some(),
            "probe-size" => self.probe_size.is_some(),
            "reserved-regions" => self.reserved_regions.is_some(),
            "max-mappings" => self.max_mappings.is_some(),
            "pasid-bits" => self.pasid_bits.is_some(),
            _ => false,
        }
    }
}

/// Combine the command line (`flags`) with an optional file layer and the defaults, and
/// validate the result. Errors say whether the offending value came from the file or a flag.
pub fn resolve(flags: Layer, file: Option<(&Path, Layer)>) -> Result<Settings, FileError> {
    let (file_path, file_layer) = match file {
        Some((p, l)) => (Some(p), l),
        None => (None, Layer::default()),
    };
    let merged = flags.clone().over(file_layer.clone());
    let mut device = DeviceConfig::default();
    if let Some(v) = merged.page_size_mask {
        device.page_size_mask = v;
    }
    if let Some(r) = merged.input_range {
        (device.input_start, device.input_end) = (r.start, r.end);
    }
    if let Some(r) = merged.domain_range {
        (device.domain_start, device.domain_end) = (r.start, r.end);
    }
    if let Some(e) = merged.endpoints {
        device.endpoints = e;
    }
    if let Some(list) = &merged.reserved_regions {
        device.reserved = check_regions(list).map_err(|why| FileError::Flag {
            key: "reserved-region",
            why,
        })?;
    }
    if let Some(v) = merged.probe_size {
        device.probe_size = v;
    }
    device.boot_bypass = merged.bypass.unwrap_or(false);
    device.legacy_bypass = merged.legacy_bypass.unwrap_or(false);
    if let Some(v) = merged.max_mappings {
        device.max_mappings = v;
    }
    if let Some(v) = merged.pasid_bits {
        device.pasid_bits = v;
    }
    if let Err(err) = device.validate() {
        let key = error_key(&err);
        let origin = match file_path {
            Some(p) if !flags.sets(key) && file_layer.sets(key) => {
                format!("config file {}: key `{key}`", p.display())
            }
            _ => "invalid configuration".to_string(),
        };
        return Err(FileError::Invalid { origin, err });
    }
    let backend = match (merged.backend.unwrap_or_default(), merged.iommufd) {
        (BackendKind::Software, None) => BackendConfig::Software,
        (BackendKind::Software, Some(_)) => {
            return Err(FileError::Flag {
                key: "backend",
                why: "an [iommufd] table is configured but the backend is `software`; set `backend = \"iommufd\"` or pass --backend iommufd".into(),
            })
        }
        (BackendKind::Iommufd, c) => BackendConfig::Iommufd(c.unwrap_or_default()),
    };
    Ok(Settings {
        socket: merged.socket,
        control_socket: merged.control_socket,
        state_dir: merged.state_dir,
        device,
        user: merged.user,
        seccomp: merged.seccomp.unwrap_or(true),
        poll: merged
            .poll_us
            .filter(|&us| us > 0)
            .map(std::time::Duration::from_micros),
        worker_sched: merged.worker_sched.unwrap_or_default(),
        backend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
socket = "/run/vui/vm1.sock"
control-socket = "/run/vui/vm1.ctl"
page-size-mask = "0xfffffffffffff000"
input-range = "0x1000-0xffffffffff"
domain-range = "1-255"
endpoints = "0-255,1024"
reserved-regions = ["0xfee00000-0xfeefffff:msi", "0x100000000-0x100000fff:reserved"]
probe-size = 1024
bypass = true
legacy-bypass = false
max-mappings = 65536
worker-sched = "deadline:250/1000"
user = "nobody"
seccomp = false
"#;

    fn p() -> &'static Path {
        Path::new("vm.toml")
    }

    #[test]
    fn every_key_is_read() {
        let l = parse(p(), FULL).unwrap();
        let s = resolve(Layer::default(), Some((p(), l))).unwrap();
        assert_eq!(s.socket.as_deref(), Some(Path::new("/run/vui/vm1.sock")));
        assert_eq!(
            s.control_socket.as_deref(),
            Some(Path::new("/run/vui/vm1.ctl"))
        );
        assert_eq!(s.device.page_size_mask, 0xffff_ffff_ffff_f000);
        assert_eq!(
            (s.device.input_start, s.device.input_end),
            (0x1000, 0xff_ffff_ffff)
        );
        assert_eq!((s.device.domain_start, s.device.domain_end), (1, 255));
        assert!(s.device.endpoints.contains(1024) && !s.device.endpoints.contains(256));
        assert_eq!(s.device.reserved.len(), 2);
        assert_eq!(s.device.reserved[1].start, 0x1_0000_0000);
        assert_eq!(s.device.probe_size, 1024);
        assert!(s.device.boot_bypass && !s.device.legacy_bypass);
        assert_eq!(s.device.max_mappings, 65536);
        assert_eq!(
            s.worker_sched,
            WorkerSched::Deadline {
                runtime_us: 250,
                period_us: 1000
            }
        );
        assert_eq!(s.user.as_deref(), Some("nobody"));
        assert!(!s.seccomp);
    }

    #[test]
    fn defaults_without_a_file() {
        let s = resolve(Layer::default(), None).unwrap();
        assert_eq!(s.device, DeviceConfig::default());
        assert!(s.seccomp);
        assert_eq!(s.socket, None);
    }

    #[test]
    fn flags_override_the_file() {
        let l = parse(p(), FULL).unwrap();
        let flags = Layer {
            probe_size: Some(2048),
            bypass: Some(false),
            reserved_regions: Some(vec!["none".into()]),
            socket: Some("/tmp/x.sock".into()),
            ..Layer::default()
        };
        let s = resolve(flags, Some((p(), l))).unwrap();
        assert_eq!(s.device.probe_size, 2048);
        assert!(!s.device.boot_bypass);
        assert!(s.device.reserved.is_empty());
        assert_eq!(s.socket.as_deref(), Some(Path::new("/tmp/x.sock")));
        // Not overridden: still from the file.
        assert_eq!(s.device.max_mappings, 65536);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = parse(p(), "socket = \"/a\"\npage-size = 4096\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("page-size"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("page-size-mask = \"0xzz\"", "page-size-mask"),
            ("probe-size = -4", "probe-size"),
            ("probe-size = 0x100000000", "probe-size"),
            ("input-range = \"10\"", "input-range"),
            ("domain-range = \"1-0x100000000\"", "domain-range"),
            ("endpoints = \"5-1\"", "endpoints"),
            ("reserved-regions = [\"0-0xfff:bogus\"]", "reserved-regions"),
            (
                "reserved-regions = [\"none\", \"0-0xfff:msi\"]",
                "reserved-regions",
            ),
            ("user = \"\"", "user"),
            ("worker-sched = \"fifo:0\"", "worker-sched"),
            ("worker-sched = \"realtime\"", "worker-sched"),
        ] {
            let msg = parse(p(), text).unwrap_err().to_string();
            assert!(msg.contains(&format!("key `{key}`")), "{text}: {msg}");
        }
        // Wrong TOML type: toml's own message names the key.
        let msg = parse(p(), "bypass = \"yes\"").unwrap_err().to_string();
        assert!(msg.contains("bypass"), "{msg}");
    }

    #[test]
    fn validation_errors_say_where_the_value_came_from() {
        let l = parse(p(), "page-size-mask = 0x800\nprobe-size = 8\n").unwrap();
        let msg = resolve(Layer::default(), Some((p(), l.clone())))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("config file vm.toml: key `page-size-mask`"),
            "{msg}"
        );
        // The flag fixes page-size-mask; probe-size from the file is still wrong.
        let flags = Layer {
            page_size_mask: Some(0x1000),
            ..Layer::default()
        };
        let msg = resolve(flags, Some((p(), l))).unwrap_err().to_string();
        assert!(msg.contains("key `probe-size`"), "{msg}");
        // A bad flag value is reported as such, not as the file's.
        let flags = Layer {
            max_mappings: Some(0),
            ..Layer::default()
        };
        let msg = resolve(flags, Some((p(), Layer::default())))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("invalid configuration"), "{msg}");
        assert!(msg.contains("--max-mappings"), "{msg}");
    }
}
