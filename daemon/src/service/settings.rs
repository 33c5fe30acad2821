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
    #[error("config file {path}: unknown key `{key}` at line {line} (the keys are the long option names: {})", KEYS.join(", "))]
    UnknownKey {
        path: PathBuf,
        key: String,
        line: usize,
    },
    #[error("{}", several(.0))]
    Several(Vec<FileError>),
}

/// Every problem on a line of its own.
fn several(errors: &[FileError]) -> String {
    problem_list(&errors.iter().map(ToString::to_string).collect::<Vec<_>>())
}

/// Problems as one message: the problem alone, or `N problems:` and one per line.
pub fn problem_list(problems: &[String]) -> String {
    match problems {
        [one] => one.clone(),
        many => format!("{} problems:\n  - {}", many.len(), many.join("\n  - ")),
    }
}

impl FileError {
    /// Each problem as a message (one for most errors, several for [`FileError::Several`]).
    pub fn messages(&self) -> Vec<String> {
        match self {
            FileError::Several(v) => v.iter().map(ToString::to_string).collect(),
            e => vec![e.to_string()],
        }
    }
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

/// The keys of the config file: the long option names (docs/OPERATORS.md, "Configuration file").
/// The longest polling window when `poll-us` is not set: measured in docs/BENCHMARKS.md (the
/// window adapts below it; an idle guest costs nothing).
pub const DEFAULT_POLL_US: u64 = 50;
/// The longest `poll-us` accepted.
const MAX_POLL_US: u64 = 1_000_000;

const KEYS: &[&str] = &[
    "socket",
    "control-socket",
    "state-dir",
    "page-size-mask",
    "input-range",
    "domain-range",
    "endpoints",
    "reserved-regions",
    "probe-size",
    "bypass",
    "legacy-bypass",
    "max-mappings",
    "poll-us",
    "worker-sched",
    "pasid-bits",
    "user",
    "socket-user",
    "socket-group",
    "socket-mode",
    "seccomp",
    "backend",
    "iommufd",
];

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
    /// With `fd = true`: `bind = false` when the VMM binds the device (QEMU's
    /// `-device vfio-pci,fd=`), docs/PASSTHROUGH.md.
    bind: Option<bool>,
    mock: Option<bool>,
}

impl RawIommufd {
    fn into_config(self) -> Result<IommufdConfig, String> {
        let mut devices = std::collections::BTreeMap::new();
        for d in self.devices {
            let src = match (d.vfio, d.pci, d.fd, d.mock, d.bind) {
                (Some(p), None, None, None, None) => DeviceSource::Vfio(p),
                (None, Some(bdf), None, None, None) => DeviceSource::Pci(bdf),
                (None, None, Some(true), None, None | Some(true)) => DeviceSource::Passed,
                (None, None, Some(true), None, Some(false)) => DeviceSource::Shared,
                (None, None, None, Some(true), None) => DeviceSource::Mock,
                _ => {
                    return Err(format!(
                        "endpoint {}: give exactly one of vfio = PATH, pci = BDF, fd = true (with bind = false when the VMM binds it), mock = true",
                        d.endpoint
                    ))
                }
            };
            if devices.insert(d.endpoint, src).is_some() {
                return Err(format!("endpoint {} listed twice", d.endpoint));
            }
        }
        if devices.values().any(DeviceSource::handed_over) && self.fd_socket.is_none() {
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
    /// Longest request-queue polling window, in microseconds: after a request the worker
    /// keeps watching the queue (the guest need not kick) for an adaptive window that grows
    /// while requests keep coming within it and shrinks to nothing when they do not, up to
    /// this (0: never poll, sleep on the kick eventfd) [default: 50].
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
    /// Owner (user name or uid) of the vhost-user socket the daemon creates (`--socket`); needs
    /// root or CAP_CHOWN. Under socket activation the socket unit's SocketUser= decides.
    #[arg(long, value_name = "USER")]
    pub socket_user: Option<String>,
    /// Group (name or gid) of the vhost-user socket the daemon creates, e.g. the group the
    /// VMM runs in (libvirt: `kvm` or `qemu`). Under socket activation the socket unit's
    /// SocketGroup= decides.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Permission bits (octal, e.g. 0660) of the vhost-user socket the daemon creates; a
    /// frontend needs write permission to connect [default: from the umask]. Under socket
    /// activation the socket unit's SocketMode= decides.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,
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
    /// Owner, group and mode of the vhost-user socket when the daemon binds it.
    pub socket_access: SocketOwner,
    pub seccomp: bool,
    /// Longest request-queue polling window (zero: sleep on the kick eventfd after every
    /// pass).
    pub poll: std::time::Duration,
    /// Scheduling policy of the request-queue worker thread.
    pub worker_sched: WorkerSched,
    pub backend: BackendConfig,
}

/// Who the vhost-user socket belongs to, as configured (names are looked up when it is bound).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketOwner {
    pub user: Option<String>,
    pub group: Option<String>,
    pub mode: Option<u32>,
}

impl SocketOwner {
    pub fn is_default(&self) -> bool {
        *self == SocketOwner::default()
    }
}

/// Socket permission bits: octal digits with an optional `0` or `0o` prefix (`0660`, `660`,
/// `0o660`), at most 0777.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!(
            "{s:?} is not an octal mode (write it like \"0660\")"
        ));
    }
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "{s:?}: only the permission bits (at most 0777) can be set on a socket"
        )),
    }
}

/// Read and parse a config file.
pub fn load(path: &Path) -> Result<Layer, FileError> {
    let text = std::fs::read_to_string(path).map_err(|err| FileError::Read {
        path: path.to_owned(),
        err,
    })?;
    parse(path, &text)
}

/// Parse config file text; `path` is only used in messages. Every problem is reported, each
/// naming its key and quoting the value as written.
pub fn parse(path: &Path, text: &str) -> Result<Layer, FileError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| FileError::Syntax {
        path: path.to_owned(),
        msg: e.to_string().trim_end().replace('\n', "\n  "),
    })?;
    let mut errors = Vec::new();
    let mut l = Layer::default();
    for (key, value) in table {
        let Some(&k) = KEYS.iter().find(|k| **k == key) else {
            errors.push(FileError::UnknownKey {
                path: path.to_owned(),
                line: line_of(text, &key),
                key,
            });
            continue;
        };
        let shown = value.to_string();
        let mut sink = Sink {
            path,
            key: k,
            shown: &shown,
            errors: &mut errors,
        };
        match k {
            "socket" => l.socket = sink.get(typed(value)),
            "control-socket" => l.control_socket = sink.get(typed(value)),
            "state-dir" => l.state_dir = sink.get(typed(value)),
            "page-size-mask" => {
                l.page_size_mask = sink.get(typed(value).and_then(|n: Number| n.to_u64()))
            }
            "input-range" => l.input_range = sink.get(parsed(value)),
            "domain-range" => l.domain_range = sink.get(parsed(value)),
            "endpoints" => l.endpoints = sink.get(parsed(value)),
            "reserved-regions" => {
                l.reserved_regions = sink.get(typed(value).and_then(|list: Vec<String>| {
                    check_regions(&list)?;
                    Ok(list)
                }))
            }
            "probe-size" => l.probe_size = sink.get(typed(value).and_then(|n: Number| n.to_u32())),
            "bypass" => l.bypass = sink.get(typed(value)),
            "legacy-bypass" => l.legacy_bypass = sink.get(typed(value)),
            "max-mappings" => {
                l.max_mappings = sink.get(typed(value).and_then(|n: Number| n.to_u64()))
            }
            "poll-us" => l.poll_us = sink.get(typed(value).and_then(|n: Number| n.to_u64())),
            "worker-sched" => l.worker_sched = sink.get(parsed(value)),
            "pasid-bits" => {
                l.pasid_bits = sink.get(typed(value).and_then(|n: Number| {
                    let v = n.to_u32()?;
                    u8::try_from(v).map_err(|_| format!("{v} is above 20"))
                }))
            }
            "user" => {
                l.user = sink.get(typed(value).and_then(|u: String| {
                    if u.is_empty() {
                        Err("must not be empty".into())
                    } else {
                        Ok(u)
                    }
                }))
            }
            "socket-user" => l.socket_user = sink.get(typed(value).and_then(non_empty)),
            "socket-group" => l.socket_group = sink.get(typed(value).and_then(non_empty)),
            "socket-mode" => {
                l.socket_mode = sink.get(match value {
                    toml::Value::String(s) => parse_mode(&s),
                    _ => Err("write the mode as an octal string, like \"0660\"".to_string()),
                })
            }
            "seccomp" => l.seccomp = sink.get(typed(value)),
            "backend" => l.backend = sink.get(parsed(value)),
            "iommufd" => {
                l.iommufd = sink.get(typed(value).and_then(|t: RawIommufd| t.into_config()))
            }
            _ => {}
        }
    }
    match errors.len() {
        0 => Ok(l),
        1 => Err(errors.remove(0)),
        _ => Err(FileError::Several(errors)),
    }
}

/// Where the value of one key goes, or its problem.
struct Sink<'a> {
    path: &'a Path,
    key: &'static str,
    shown: &'a str,
    errors: &'a mut Vec<FileError>,
}

impl Sink<'_> {
    /// The value, or None with the problem recorded (naming the key, quoting the value).
    fn get<T>(&mut self, r: Result<T, String>) -> Option<T> {
        r.map_err(|why| {
            self.errors.push(FileError::Value {
                path: self.path.to_owned(),
                key: self.key,
                why: format!("{}: {why}", self.shown),
            })
        })
        .ok()
    }
}

/// A name that must not be empty.
fn non_empty(s: String) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s)
    }
}

/// A TOML value as `T` (toml's message says what it expected).
fn typed<T: serde::de::DeserializeOwned>(v: toml::Value) -> Result<T, String> {
    v.try_into::<T>()
        .map_err(|e| e.to_string().trim_end().replace('\n', " "))
}

/// A TOML string parsed as `T`.
fn parsed<T: std::str::FromStr>(v: toml::Value) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    typed::<String>(v)?.parse::<T>().map_err(|e| e.to_string())
}

/// The line (1-based) where `key` is set, for messages.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
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
            socket_user: self.socket_user.or(base.socket_user),
            socket_group: self.socket_group.or(base.socket_group),
            socket_mode: self.socket_mode.or(base.socket_mode),
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
    let mut errors = Vec::new();
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
        match check_regions(list) {
            Ok(r) => device.reserved = r,
            Err(why) => errors.push(FileError::Flag {
                key: "reserved-region",
                why,
            }),
        }
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
    if merged.poll_us.is_some_and(|us| us > MAX_POLL_US) {
        errors.push(FileError::Flag {
            key: "poll-us",
            why: format!(
                "a polling window longer than {MAX_POLL_US} us (one second) keeps a core busy for nothing; use 0 to 1000000"
            ),
        });
    }
    for err in device.validate_all() {
        let key = error_key(&err);
        let origin = match file_path {
            Some(p) if !flags.sets(key) && file_layer.sets(key) => {
                format!("config file {}: key `{key}`", p.display())
            }
            _ => "invalid configuration".to_string(),
        };
        errors.push(FileError::Invalid { origin, err });
    }
    let backend = match (merged.backend.unwrap_or_default(), merged.iommufd) {
        (BackendKind::Software, None) => BackendConfig::Software,
        (BackendKind::Software, Some(_)) => {
            errors.push(FileError::Flag {
                key: "backend",
                why: "an [iommufd] table is configured but the backend is `software`; set `backend = \"iommufd\"` or pass --backend iommufd".into(),
            });
            BackendConfig::Software
        }
        (BackendKind::Iommufd, c) => BackendConfig::Iommufd(c.unwrap_or_default()),
    };
    match errors.len() {
        0 => {}
        1 => return Err(errors.remove(0)),
        _ => return Err(FileError::Several(errors)),
    }
    Ok(Settings {
        socket: merged.socket,
        control_socket: merged.control_socket,
        state_dir: merged.state_dir,
        device,
        user: merged.user,
        socket_access: SocketOwner {
            user: merged.socket_user,
            group: merged.socket_group,
            mode: merged.socket_mode,
        },
        seccomp: merged.seccomp.unwrap_or(true),
        poll: std::time::Duration::from_micros(merged.poll_us.unwrap_or(DEFAULT_POLL_US)),
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
socket-user = "root"
socket-group = "kvm"
socket-mode = "0660"
seccomp = false
"#;

    fn p() -> &'static Path {
        Path::new("vm.toml")
    }

    #[test]
    fn polling_window_default_off_and_limit() {
        let s = resolve(Layer::default(), None).unwrap();
        assert_eq!(s.poll, std::time::Duration::from_micros(DEFAULT_POLL_US));
        let off = Layer {
            poll_us: Some(0),
            ..Layer::default()
        };
        assert!(resolve(off, None).unwrap().poll.is_zero());
        let max = Layer {
            poll_us: Some(MAX_POLL_US),
            ..Layer::default()
        };
        assert_eq!(resolve(max, None).unwrap().poll.as_micros(), 1_000_000);
        let over = Layer {
            poll_us: Some(MAX_POLL_US + 1),
            ..Layer::default()
        };
        let e = resolve(over, None).unwrap_err().to_string();
        assert!(e.contains("poll-us"), "{e}");
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
        assert_eq!(
            s.socket_access,
            SocketOwner {
                user: Some("root".into()),
                group: Some("kvm".into()),
                mode: Some(0o660),
            }
        );
        assert!(!s.seccomp);
    }

    #[test]
    fn socket_mode_is_octal_and_only_permission_bits() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert_eq!(parse_mode("0777"), Ok(0o777));
        for bad in ["", "0o", "0689", "rw-rw----", "04770", "1000", "-1"] {
            assert!(parse_mode(bad).is_err(), "{bad:?}");
        }
        // In the file: a string; a TOML integer (decimal 660 is not 0660) is refused.
        let msg = parse(p(), "socket-mode = 660").unwrap_err().to_string();
        assert!(
            msg.contains("key `socket-mode`") && msg.contains("\"0660\""),
            "{msg}"
        );
        let msg = parse(p(), "socket-mode = \"0999\"")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("key `socket-mode`"), "{msg}");
        let msg = parse(p(), "socket-group = \"\"").unwrap_err().to_string();
        assert!(msg.contains("key `socket-group`"), "{msg}");
        // The flag overrides the file, key by key.
        let l = parse(p(), "socket-mode = \"0600\"\nsocket-group = \"kvm\"\n").unwrap();
        let flags = Layer {
            socket_mode: Some(0o660),
            ..Layer::default()
        };
        let s = resolve(flags, Some((p(), l))).unwrap();
        assert_eq!(s.socket_access.mode, Some(0o660));
        assert_eq!(s.socket_access.group.as_deref(), Some("kvm"));
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
        assert!(msg.contains("unknown key `page-size` at line 2"), "{msg}");
        assert!(msg.contains("page-size-mask"), "the known keys: {msg}");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_the_value_quoted() {
        // A typo, a bad value and a wrong type in the file: all three in one run.
        let text = "socket = \"/a\"\npage-size = 4096\ninput-range = \"0x1000-banana\"\nbypass = \"yes\"\n";
        let e = parse(p(), text).unwrap_err();
        let msgs = e.messages();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        let all = e.to_string();
        assert!(all.starts_with("3 problems:"), "{all}");
        assert!(all.contains("unknown key `page-size`"), "{all}");
        assert!(
            all.contains("key `input-range`: \"0x1000-banana\": "),
            "the bad value is quoted: {all}"
        );
        assert!(all.contains("key `bypass`: \"yes\": "), "{all}");
        // Range errors of the resolved configuration: all of them, with where each came from.
        let l = parse(p(), "page-size-mask = 0x800\ndomain-range = \"9-3\"\n").unwrap();
        let flags = Layer {
            max_mappings: Some(0),
            ..Layer::default()
        };
        let msgs = resolve(flags, Some((p(), l))).unwrap_err().messages();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].contains("key `page-size-mask`"), "{msgs:?}");
        assert!(msgs[1].contains("key `domain-range`"), "{msgs:?}");
        assert!(msgs[2].contains("--max-mappings"), "{msgs:?}");
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
