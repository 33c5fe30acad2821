//! The virtio-iommu device model: endpoints, domains, mappings, bypass and faults.
//!
//! This module knows nothing about virtqueues or sockets. It takes the bytes of one request (the
//! device-readable part) and returns what to write back, applying every normative rule of the
//! virtio-iommu specification. A request either applies completely or changes nothing.
//!
//! The software backend lives here too: `translate` answers "where does this endpoint's access
//! to this IOVA go" from the same tables, and records a fault when the answer is "nowhere".

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;
use zerocopy::FromBytes;

use crate::config::DeviceConfig;
use crate::guest_tables::{SoftCaps, TableDomain};
use crate::host::{BackendError, GuestRegion, HostBackend, ResetKind, Software};
use crate::mapping::{Mapping, MappingTable};
use crate::protocol::*;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Faults kept for inspection.
const FAULT_LOG_LEN: usize = 256;
/// Fault records waiting for delivery on the eventq (the deliverer drains this promptly).
const PENDING_EVENTS_MAX: usize = 1024;
/// Endpoints the device keeps a record of (probed, attached, or with PASIDs attached): a full
/// PCI segment. With `--endpoints any` a guest could otherwise make the device remember 2^32
/// endpoints (and as many domains); past it ATTACH and ATTACH_PASID of a new endpoint are
/// NOMEM and a PROBE of one is answered without being recorded.
pub const MAX_ENDPOINT_RECORDS: usize = 65536;
/// Domains ATTACH_TABLE may create beyond those endpoints and PASID pairs hold (docs/PASID.md
/// §4.1): each domain holds at least one of them, or is one of these.
pub const MAX_TABLE_ONLY_DOMAINS: usize = 4096;
/// (endpoint, PASID) attachments of the PASID extension, over all endpoints; past it
/// ATTACH_PASID of a new pair is NOMEM.
pub const MAX_PASID_ATTACHMENTS: usize = 65536;

/// What the transport must do with a request buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Leave the buffer unwritten and return it with used length 0.
    Ignore,
    /// Write this status in the tail. For PROBE, the properties area has been filled.
    Status(Status),
}

/// Which kind of access a translation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    /// Instruction fetch (PCIe execute-requested); MAP mappings treat it as a read.
    Exec,
}

impl Access {
    fn fault_flags(self) -> u32 {
        match self {
            Access::Read => FAULT_F_READ,
            Access::Write => FAULT_F_WRITE,
            Access::ReadWrite => FAULT_F_READ | FAULT_F_WRITE,
            Access::Exec => FAULT_F_READ | FAULT_F_EXEC,
        }
    }
    fn allowed_by(self, m: &Mapping) -> bool {
        match self {
            Access::Read => m.readable(),
            Access::Write => m.writable(),
            Access::ReadWrite => m.readable() && m.writable(),
            Access::Exec => m.readable(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultReason {
    /// The endpoint is not attached to a domain and does not bypass.
    Domain,
    /// No mapping covers the address, or the mapping lacks the permission.
    Mapping,
}

/// The answer of the software backend to a translation request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// `mapping` is the MAP mapping used (None for a guest table walk).
    Translated {
        phys: u64,
        mapping: Option<Mapping>,
    },
    Bypass {
        phys: u64,
    },
    Fault {
        reason: FaultReason,
    },
    /// A table miss on a device that can ask the guest to fix it: a page request is queued
    /// for the event queue; the access can be retried after PAGE_RESP.
    PageRequest {
        grpid: u32,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    #[error("endpoint {0} does not exist on this device")]
    UnknownEndpoint(u32),
    #[error("PASID {0:#x} is beyond the device's PASID width")]
    PasidOutOfRange(u32),
}

/// What a translation cache outside the daemon (a VMM's emulated devices, through the control
/// socket's `subscribe`) must forget. Reported before the request that caused it completes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "scope", rename_all = "lowercase")]
pub enum Invalidation {
    /// UNMAP: translations of these endpoints (the domain's) for IOVAs in `[start, end]`.
    Range {
        domain: u32,
        endpoints: Vec<u32>,
        start: u64,
        end: u64,
    },
    /// Every translation of this endpoint: it joined or left a domain (ATTACH, DETACH, implicit
    /// detach; a domain ends, with its mappings, when its last endpoint leaves).
    Endpoint { endpoint: u32 },
    /// Every translation: device reset, new connection, bypass or feature change.
    All,
}

/// Receives invalidations, synchronously, with the device lock held.
pub trait InvalidationSink: Send + Sync + std::fmt::Debug {
    fn invalidate(&self, inv: &Invalidation);
    /// Whether anyone listens: a lock-free check so the request path builds nothing (and
    /// takes no lock) for invalidations nobody receives.
    fn is_active(&self) -> bool {
        true
    }
}

/// A fault as recorded for inspection.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct FaultInfo {
    pub reason: FaultReason,
    pub endpoint: u32,
    pub address: u64,
    pub read: bool,
    pub write: bool,
}

#[derive(Debug, Default)]
struct Domain {
    bypass: bool,
    endpoints: BTreeSet<u32>,
    mappings: MappingTable,
    /// The guest table this domain translates through (PASID extension), if any.
    table: Option<Box<TableDomain>>,
    /// The ATTACH_TABLE request that bound it (the device state replays it).
    table_req: Option<AttachTableBody>,
    /// (endpoint, PASID) pairs attached with ATTACH_PASID.
    pasid_endpoints: BTreeSet<(u32, u32)>,
}

/// Per request type and status counters, plus transport-level counters.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Indexed by request type (1..=5, the extension's 6..=11) and status code.
    pub requests: [[u64; 9]; 12],
    /// Buffers returned unwritten: unknown types, no room for a tail, unreadable chains.
    pub ignored: u64,
    pub faults_delivered: u64,
    pub faults_dropped: u64,
    /// PASID extension: INVALIDATE requests applied, PAGE_RESP per code.
    pub invalidations: u64,
    pub page_responses: [u64; 3],
}

impl Stats {
    fn count(&mut self, type_: u8, status: Status) {
        if let Some(row) = self.requests.get_mut(usize::from(type_)) {
            row[status as usize] += 1;
        }
    }
}

/// The device. One instance serves one frontend connection at a time; `reset` returns it to its
/// power-on state.
#[derive(Debug)]
pub struct Device {
    cfg: DeviceConfig,
    /// A PROBE was answered NOENT and the log said why (once per process).
    warned_probe_noent: bool,
    /// Features acknowledged by the driver, once it has negotiated.
    acked: Option<u64>,
    /// The config-space `bypass` byte.
    bypass: u8,
    /// Endpoints the driver has used (probed or attached), with their domain.
    endpoints: BTreeMap<u32, Option<u32>>,
    domains: BTreeMap<u32, Domain>,
    total_mappings: u64,
    stats: Stats,
    fault_log: VecDeque<(FaultInfo, bool)>,
    pending_events: VecDeque<EventRecord>,
    /// Guest memory, for walking guest tables (set by the transport).
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    /// What the software backend implements for guest tables.
    soft: SoftCaps,
    /// ATTACH_PASID: (endpoint, pasid) -> domain.
    pasid_attach: BTreeMap<(u32, u32), u32>,
    /// Endpoints whose page requests stopped (PAGE_RESP FAILURE) until their next ATTACH.
    pri_stopped: BTreeSet<u32>,
    /// Outstanding page-request groups: (endpoint, grpid).
    page_requests: BTreeMap<(u32, u32), PageRequest>,
    /// Host page-request groups still open (no LAST record yet): (endpoint, host grpid) to the
    /// guest's group index.
    host_groups: BTreeMap<(u32, u32), u32>,
    next_grpid: u32,
    invalidation_sink: Option<std::sync::Arc<dyn InvalidationSink>>,
    /// The state journal (--state-dir), if any.
    journal: Option<Box<dyn state::StateJournal>>,
    /// A journaled state from before a restart, until the driver shows whether it carries on.
    resume: Option<Vec<u8>>,
    /// The PASS record of the request worker's last pass (journal snapshots carry it).
    last_pass: Option<Vec<u8>>,
    /// The last pass found in a resumed journal, for the transport to finish publishing.
    resumed_pass: Option<state::Pass>,
    /// Where the connection's driver keeps its request queue (a RING record's payload).
    ring: Option<[u8; 32]>,
    /// Where validated requests take effect outside the model (backend/mod.rs).
    backend: Box<dyn HostBackend>,
}

impl Device {
    /// A device with the software backend.
    pub fn new(cfg: DeviceConfig) -> Self {
        Self::with_backend(cfg, Box::<Software>::default())
    }

    /// A device whose requests also take effect on `backend`.
    pub fn with_backend(cfg: DeviceConfig, backend: Box<dyn HostBackend>) -> Self {
        let bypass = u8::from(cfg.boot_bypass);
        let soft = SoftCaps::new(cfg.pasid_bits);
        Device {
            cfg,
            warned_probe_noent: false,
            acked: None,
            bypass,
            endpoints: BTreeMap::new(),
            domains: BTreeMap::new(),
            total_mappings: 0,
            stats: Stats::default(),
            fault_log: VecDeque::new(),
            pending_events: VecDeque::new(),
            mem: None,
            soft,
            pasid_attach: BTreeMap::new(),
            pri_stopped: BTreeSet::new(),
            page_requests: BTreeMap::new(),
            host_groups: BTreeMap::new(),
            next_grpid: 0,
            invalidation_sink: None,
            journal: None,
            resume: None,
            last_pass: None,
            resumed_pass: None,
            ring: None,
            backend,
        }
    }

    /// A backend refused a validated request: nothing changed, the guest gets its status.
    fn backend_failed(&self, what: &str, e: BackendError) -> Status {
        log::warn!("{what}: {} backend: {e}", self.backend.name());
        e.status()
    }

    /// Tell the backend whether unattached endpoints bypass now.
    fn sync_unattached_bypass(&mut self) {
        let bypass = self.unattached_bypass();
        if let Err(e) = self.backend.set_unattached_bypass(bypass) {
            log::warn!(
                "{} backend: unattached bypass = {bypass}: {e}",
                self.backend.name()
            );
        }
    }

    /// The vhost-user memory table changed (guest RAM as the daemon has it mapped).
    pub fn set_guest_memory(&mut self, regions: &[GuestRegion]) -> Result<(), BackendError> {
        self.backend.set_guest_memory(regions)
    }

    /// The backend's host objects, for the control socket.
    pub fn backend_info(&self) -> serde_json::Value {
        self.backend.describe()
    }

    /// Whether guest-physical `phys` is in the current memory table (None: not known).
    pub fn guest_ram_at(&self, phys: u64) -> Option<bool> {
        self.backend.guest_ram_at(phys)
    }

    /// Report invalidations (UNMAP, domain changes, resets) to `sink` from now on.
    pub fn set_invalidation_sink(&mut self, sink: std::sync::Arc<dyn InvalidationSink>) {
        self.invalidation_sink = Some(sink);
    }

    /// Tell the sink, if any; `inv` is only built when someone listens.
    fn invalidate(&self, inv: impl FnOnce() -> Invalidation) {
        if let Some(sink) = self.invalidation_sink.as_ref().filter(|s| s.is_active()) {
            sink.invalidate(&inv());
        }
    }

    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// Device features offered to the driver.
    pub fn features(&self) -> u64 {
        let mut f = self.ext_features()
            | (1u64 << F_VERSION_1)
            | (1 << F_INPUT_RANGE)
            | (1 << F_DOMAIN_RANGE)
            | (1 << F_MAP_UNMAP)
            | (1 << F_PROBE)
            | (1 << F_MMIO);
        // The legacy BYPASS feature and BYPASS_CONFIG are never offered together.
        f |= if self.cfg.legacy_bypass {
            1 << F_BYPASS
        } else {
            1 << F_BYPASS_CONFIG
        };
        f
    }

    /// Guest memory, for walks of guest tables (the transport's view of the memory table).
    pub fn set_walk_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) {
        self.mem = Some(mem);
    }

    /// Has the transport given the device guest memory (a memory table) yet?
    pub fn has_walk_memory(&self) -> bool {
        self.mem.is_some()
    }

    /// The extension's feature bits, offered when PASIDs are configured and the backend makes
    /// guest tables take effect.
    fn ext_features(&self) -> u64 {
        if self.cfg.pasid_bits > 0 && self.backend.guest_tables() {
            (1u64 << F_ATTACH_TABLE) | (1 << F_PAGE_REQUEST)
        } else {
            0
        }
    }

    pub fn set_acked_features(&mut self, features: u64) {
        self.acked = Some(features & self.features());
        self.journal_record(
            state::REC_FEATURES,
            &(features & self.features()).to_le_bytes(),
        );
        // Whether unattached endpoints bypass depends on the negotiated features.
        self.invalidate(|| Invalidation::All);
        self.sync_unattached_bypass();
    }

    pub fn acked_features(&self) -> Option<u64> {
        self.acked
    }

    fn acked(&self, bit: u32) -> bool {
        self.acked.is_some_and(|f| f & (1u64 << bit) != 0)
    }

    /// Drop all guest-visible state: domains, endpoints, mappings, pending events. The config
    /// `bypass` byte survives a device reset (`keep_bypass`) but not a new connection.
    pub fn reset(&mut self, keep_bypass: bool) {
        self.acked = None;
        if !keep_bypass {
            self.bypass = u8::from(self.cfg.boot_bypass);
        }
        self.reset_guest_state();
        if !keep_bypass {
            // The connection's memory goes with it (its mappings are released with the last
            // reference), and its driver's queue.
            self.mem = None;
            self.ring = None;
            self.backend.reset(ResetKind::Connection);
        }
        self.sync_unattached_bypass();
    }

    /// Drop what the driver built (endpoints, domains, mappings, pending events) but keep the
    /// negotiated features and the config `bypass` byte: the transport saw the driver start
    /// over (a guest reset) without the frontend saying so.
    pub fn reset_guest_state(&mut self) {
        self.pasid_attach.clear();
        self.pri_stopped.clear();
        self.page_requests.clear();
        self.host_groups.clear();
        self.endpoints.clear();
        self.domains.clear();
        self.total_mappings = 0;
        self.pending_events.clear();
        // The driver's queue positions start over with its state.
        self.last_pass = None;
        self.resumed_pass = None;
        self.backend.reset(ResetKind::Device);
        self.invalidate(|| Invalidation::All);
        self.journal_snapshot();
    }

    /// The 40-byte config space.
    pub fn config_space(&self) -> ConfigSpace {
        use zerocopy::little_endian::{U32, U64};
        ConfigSpace {
            page_size_mask: U64::new(self.cfg.page_size_mask),
            input_start: U64::new(self.cfg.input_start),
            input_end: U64::new(self.cfg.input_end),
            domain_start: U32::new(self.cfg.domain_start),
            domain_end: U32::new(self.cfg.domain_end),
            probe_size: U32::new(self.cfg.probe_size),
            bypass: self.bypass,
            reserved: [0; 3],
        }
    }

    /// A driver write to the config space. Only `bypass` is writable, and only when
    /// BYPASS_CONFIG is offered; the value must be 0 or 1. Returns whether the write applied.
    pub fn write_config(&mut self, offset: usize, data: &[u8]) -> bool {
        let offered = self.features() & (1 << F_BYPASS_CONFIG) != 0;
        match (offset, data) {
            (CONFIG_BYPASS_OFFSET, [v @ (0 | 1)]) if offered => {
                if self.bypass != *v {
                    self.bypass = *v;
                    self.journal_record(state::REC_BYPASS, &[*v]);
                    self.invalidate(|| Invalidation::All);
                    self.sync_unattached_bypass();
                }
                true
            }
            _ => false,
        }
    }

    /// Do unattached endpoints bypass the IOMMU right now? With BYPASS_CONFIG offered, the
    /// config byte decides, whether or not the driver accepted the feature (firmware runs before
    /// any driver); with legacy BYPASS, the feature must be negotiated.
    fn unattached_bypass(&self) -> bool {
        if self.features() & (1 << F_BYPASS_CONFIG) != 0 {
            self.bypass == 1
        } else {
            self.acked(F_BYPASS)
        }
    }

    /// Handle one request. `req` is the device-readable part of the buffer; `props` is the
    /// device-writable area before the tail, already zeroed (PROBE writes properties into it).
    pub fn handle_request(&mut self, req: &[u8], props: &mut [u8]) -> Reply {
        let Some(&type_) = req.first() else {
            self.stats.ignored += 1;
            return Reply::Ignore;
        };
        let body = req.get(HEAD_SIZE..).unwrap_or(&[]);
        let status = match type_ {
            T_ATTACH => parse::<AttachBody>(body).map(|b| self.attach(&b)),
            T_DETACH => parse::<DetachBody>(body).map(|b| self.detach(&b)),
            T_MAP => parse::<MapBody>(body).map(|b| self.map(&b)),
            T_UNMAP => parse::<UnmapBody>(body).map(|b| self.unmap(&b)),
            T_PROBE => {
                if !self.acked(F_PROBE) {
                    // PROBE not negotiated: the request type is not recognised.
                    self.stats.ignored += 1;
                    return Reply::Ignore;
                }
                parse::<ProbeBody>(body).map(|b| self.probe(&b, props))
            }
            t if self.ext_type_negotiated(t) => self.ext_request(t, body),
            _ => {
                self.stats.ignored += 1;
                return Reply::Ignore;
            }
        };
        // A request too small for its type cannot be parsed: the specification has the device
        // return it without writing.
        let Some(status) = status else {
            self.stats.ignored += 1;
            return Reply::Ignore;
        };
        self.stats.count(type_, status);
        if status == Status::Ok && self.journal.is_some() {
            self.journal_request(type_, req);
        }
        Reply::Status(status)
    }

    fn domain_in_range(&self, domain: u32) -> bool {
        (self.cfg.domain_start..=self.cfg.domain_end).contains(&domain)
    }

    fn attach(&mut self, b: &AttachBody) -> Status {
        let (domain, endpoint, flags) = (b.domain.get(), b.endpoint.get(), b.flags.get());
        if b.reserved != [0; 4] {
            return Status::Inval;
        }
        let known_flags = if self.acked(F_BYPASS_CONFIG) {
            ATTACH_F_BYPASS
        } else {
            0
        };
        if flags & !known_flags != 0 {
            return Status::Inval;
        }
        if !self.cfg.endpoints.contains(endpoint) {
            return Status::NoEnt;
        }
        if !self.domain_in_range(domain) {
            return Status::Range;
        }
        let bypass = flags & ATTACH_F_BYPASS != 0;
        if let Some(d) = self.domains.get(&domain) {
            if d.bypass != bypass {
                return Status::Inval;
            }
        }
        if !self.endpoint_room(endpoint) {
            return Status::NoMem;
        }
        // All checks passed: from here on the request applies completely.
        // An ATTACH (re-)enables the endpoint's page requests (docs/PASID.md §4.5).
        self.pri_stopped.remove(&endpoint);
        let current = self.endpoints.get(&endpoint).copied().flatten();
        if current == Some(domain) {
            return Status::Ok;
        }
        // The host moves the endpoint atomically (implicit detach included).
        let new_domain = !self.domains.contains_key(&domain);
        if let Err(e) = self.backend.attach(endpoint, domain, bypass, new_domain) {
            return self.backend_failed("ATTACH", e);
        }
        if let Some(cur) = current {
            self.remove_from_domain(cur, endpoint);
        }
        let d = self.domains.entry(domain).or_insert_with(|| Domain {
            bypass,
            ..Domain::default()
        });
        d.endpoints.insert(endpoint);
        self.endpoints.insert(endpoint, Some(domain));
        self.invalidate(|| Invalidation::Endpoint { endpoint });
        Status::Ok
    }

    /// Take `endpoint` out of `domain`, destroying the domain (and its mappings) when it was the
    /// last endpoint.
    fn remove_from_domain(&mut self, domain: u32, endpoint: u32) {
        if let Some(d) = self.domains.get_mut(&domain) {
            d.endpoints.remove(&endpoint);
        }
        self.end_domain_if_unused(domain);
        self.endpoints.insert(endpoint, None);
    }

    /// A domain ends, with its mappings and table, when nothing is attached to it any more
    /// (no endpoint, no (endpoint, PASID) pair).
    fn end_domain_if_unused(&mut self, domain: u32) {
        let unused = self
            .domains
            .get(&domain)
            .is_some_and(|d| d.endpoints.is_empty() && d.pasid_endpoints.is_empty());
        if unused {
            if let Some(d) = self.domains.remove(&domain) {
                self.total_mappings = self.total_mappings.saturating_sub(d.mappings.len() as u64);
                self.backend.destroy_domain(domain);
            }
        }
    }

    fn detach(&mut self, b: &DetachBody) -> Status {
        // The specification says the device MUST ignore DETACH's reserved bytes.
        let (domain, endpoint) = (b.domain.get(), b.endpoint.get());
        if !self.cfg.endpoints.contains(endpoint) {
            return Status::NoEnt;
        }
        if self.endpoints.get(&endpoint) != Some(&Some(domain)) {
            // No such domain, or the endpoint is not attached to it (MAY INVAL).
            return Status::Inval;
        }
        if let Err(e) = self.backend.detach(endpoint) {
            return self.backend_failed("DETACH", e);
        }
        self.remove_from_domain(domain, endpoint);
        self.invalidate(|| Invalidation::Endpoint { endpoint });
        Status::Ok
    }

    fn map(&mut self, b: &MapBody) -> Status {
        let (domain, start, end, phys, flags) = (
            b.domain.get(),
            b.virt_start.get(),
            b.virt_end.get(),
            b.phys_start.get(),
            b.flags.get(),
        );
        let mut known = MAP_F_READ | MAP_F_WRITE;
        if self.acked(F_MMIO) {
            known |= MAP_F_MMIO;
        }
        if flags & !known != 0 {
            return Status::Inval;
        }
        if !self.domain_in_range(domain) {
            return Status::Range;
        }
        let Some(d) = self.domains.get(&domain) else {
            return Status::NoEnt;
        };
        // Bypass domains have no mappings; table domains translate through the guest's table.
        if d.bypass || d.table.is_some() {
            return Status::Inval;
        }
        if start > end {
            return Status::Inval;
        }
        let g = self.cfg.granule();
        let end_aligned = end.checked_add(1).is_none_or(|e| e.is_multiple_of(g));
        if !start.is_multiple_of(g) || !phys.is_multiple_of(g) || !end_aligned {
            return Status::Range;
        }
        if start < self.cfg.input_start || end > self.cfg.input_end {
            return Status::Range;
        }
        // The physical range must not wrap around the address space.
        if phys.checked_add(end - start).is_none() {
            return Status::Range;
        }
        if self.cfg.overlaps_reserved(start, end).is_some() {
            return Status::Inval;
        }
        if self.total_mappings >= self.cfg.max_mappings {
            return Status::NoMem;
        }
        let Some(d) = self.domains.get_mut(&domain) else {
            return Status::NoEnt;
        };
        match d.mappings.insert(start, end, phys, flags) {
            Ok(()) => {
                // The insert was the overlap check; a backend failure takes it back before
                // anything is visible (the device lock is held throughout).
                if let Err(e) = self.backend.map(domain, start, end, phys, flags) {
                    let _ = d.mappings.remove_range(start, end, |_| {});
                    return self.backend_failed("MAP", e);
                }
                self.total_mappings += 1;
                Status::Ok
            }
            Err(_) => Status::Inval,
        }
    }

    fn unmap(&mut self, b: &UnmapBody) -> Status {
        let (domain, start, end) = (b.domain.get(), b.virt_start.get(), b.virt_end.get());
        if b.reserved != [0; 4] {
            return Status::Inval;
        }
        let Some(d) = self.domains.get_mut(&domain) else {
            return Status::NoEnt;
        };
        if d.bypass || d.table.is_some() || start > end {
            return Status::Inval;
        }
        if d.mappings.check_remove(start, end).is_err() {
            return Status::Range;
        }
        if let Err(e) = self.backend.unmap(domain, start, end) {
            return self.backend_failed("UNMAP", e);
        }
        let Some(d) = self.domains.get_mut(&domain) else {
            return Status::NoEnt;
        };
        // check_remove accepted the range above, and nothing changed the table since.
        let n = d.mappings.remove_checked(start, end, |_| {});
        self.total_mappings = self.total_mappings.saturating_sub(n as u64);
        if n > 0 {
            if let Some(sink) = self.invalidation_sink.as_ref().filter(|s| s.is_active()) {
                sink.invalidate(&Invalidation::Range {
                    domain,
                    endpoints: d.endpoints.iter().copied().collect(),
                    start,
                    end,
                });
            }
        }
        Status::Ok
    }

    fn probe(&mut self, b: &ProbeBody, props: &mut [u8]) -> Status {
        // The specification says the device MUST ignore PROBE's reserved bytes.
        let endpoint = b.endpoint.get();
        if !self.cfg.endpoints.contains(endpoint) {
            if !self.warned_probe_noent {
                self.warned_probe_noent = true;
                log::warn!(
                    "PROBE of endpoint {endpoint} answered NOENT: it is not in --endpoints ({}). \
                     Linux's virtio-iommu driver stops probing at the first NOENT, so no device \
                     behind this IOMMU may be translated: make --endpoints cover every endpoint \
                     the VMM's VIOT (or device tree) puts behind it",
                    self.cfg.endpoints
                );
            }
            return Status::NoEnt;
        }
        let probe_size = self.cfg.probe_size as usize;
        if props.len() < probe_size {
            return Status::Inval;
        }
        // Validation guarantees the properties fit in probe_size; the rest stays zero, which
        // also terminates the list (type NONE).
        let mut off = 0;
        for r in &self.cfg.reserved {
            let prop = ProbeResvMem {
                head: ProbePropHead {
                    type_: PROBE_T_RESV_MEM.into(),
                    length: ((RESV_MEM_PROP_LEN) as u16).into(),
                },
                subtype: r.subtype,
                reserved: [0; 3],
                start: r.start.into(),
                end: r.end.into(),
            };
            let Some(dst) = props.get_mut(off..off + std::mem::size_of::<ProbeResvMem>()) else {
                return Status::DevErr;
            };
            dst.copy_from_slice(zerocopy::IntoBytes::as_bytes(&prop));
            off += std::mem::size_of::<ProbeResvMem>();
        }
        if self.acked(F_ATTACH_TABLE)
            && crate::guest_tables::probe_properties(
                &self.soft,
                self.backend.nesting().and_then(|h| h.host_iommu()).as_ref(),
                props,
                off,
            )
            .is_none()
        {
            return Status::DevErr;
        }
        if self.endpoint_room(endpoint) {
            self.endpoints.entry(endpoint).or_insert(None);
        }
        Status::Ok
    }

    /// Whether `endpoint` has a record or there is room for one ([`MAX_ENDPOINT_RECORDS`]).
    fn endpoint_room(&self, endpoint: u32) -> bool {
        self.endpoints.contains_key(&endpoint) || self.endpoints.len() < MAX_ENDPOINT_RECORDS
    }

    /// Software backend: translate an access by `endpoint` (without PASID) to `iova`. A fault
    /// is logged and queued for the eventq.
    pub fn translate(
        &mut self,
        endpoint: u32,
        iova: u64,
        access: Access,
    ) -> Result<Translation, TranslateError> {
        self.translate_pasid(endpoint, None, iova, access, false)
    }

    fn record_fault(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
        privileged: bool,
        reason: FaultReason,
    ) {
        let mut flags = access.fault_flags() | FAULT_F_ADDRESS;
        if pasid.is_some() {
            flags |= FAULT_F_PASID_VALID;
        }
        if privileged {
            flags |= FAULT_F_PRIV;
        }
        let rec = FaultRecord {
            reason: match reason {
                FaultReason::Domain => FAULT_R_DOMAIN,
                FaultReason::Mapping => FAULT_R_MAPPING,
            },
            reserved: [0; 3],
            flags: flags.into(),
            endpoint: endpoint.into(),
            // The PASID of the access, with FAULT_F_PASID_VALID (docs/PASID.md §4.5).
            reserved2: pasid.unwrap_or(0).to_le_bytes(),
            address: iova.into(),
        };
        if self.pending_events.len() >= PENDING_EVENTS_MAX {
            self.stats.faults_dropped += 1;
        } else {
            let ev = EventRecord::new(zerocopy::IntoBytes::as_bytes(&rec), endpoint, iova, None);
            self.pending_events.push_back(ev);
        }
        let info = FaultInfo {
            reason,
            endpoint,
            address: iova,
            read: flags & FAULT_F_READ != 0,
            write: flags & FAULT_F_WRITE != 0,
        };
        if self.fault_log.len() >= FAULT_LOG_LEN {
            self.fault_log.pop_front();
        }
        self.fault_log.push_back((info, false));
    }

    /// Next fault record waiting for the eventq.
    pub fn pop_event(&mut self) -> Option<EventRecord> {
        self.pending_events.pop_front()
    }

    pub fn has_pending_events(&self) -> bool {
        !self.pending_events.is_empty()
    }

    /// The transport reports the fate of a record taken with `pop_event`.
    pub fn event_outcome(&mut self, rec: &EventRecord, delivered: bool) {
        if delivered {
            self.stats.faults_delivered += 1;
        } else {
            self.stats.faults_dropped += 1;
        }
        if let Some(grpid) = rec.grpid {
            // An undeliverable page request is answered INVALID by the device: forget it.
            if !delivered {
                self.page_requests.remove(&(rec.endpoint, grpid));
            }
            return;
        }
        let (ep, addr) = (rec.endpoint, rec.address);
        if let Some(entry) = self
            .fault_log
            .iter_mut()
            .rev()
            .find(|(f, d)| !d && f.endpoint == ep && f.address == addr)
        {
            entry.1 = delivered;
        }
    }

    /// A buffer was returned unwritten by the transport (unreadable chain, no tail).
    pub fn count_ignored(&mut self) {
        self.stats.ignored += 1;
    }

    // --- Inspection -------------------------------------------------------------------------

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn bypass(&self) -> u8 {
        self.bypass
    }

    pub fn endpoint_list(&self) -> impl Iterator<Item = (u32, Option<u32>)> + '_ {
        self.endpoints.iter().map(|(e, d)| (*e, *d))
    }

    /// (id, bypass, endpoints, mapping count)
    pub fn domain_list(&self) -> impl Iterator<Item = (u32, bool, Vec<u32>, usize)> + '_ {
        self.domains.iter().map(|(id, d)| {
            (
                *id,
                d.bypass,
                d.endpoints.iter().copied().collect(),
                d.mappings.len(),
            )
        })
    }

    pub fn domain_mappings(&self, domain: u32) -> Option<&MappingTable> {
        self.domains.get(&domain).map(|d| &d.mappings)
    }

    pub fn total_mappings(&self) -> u64 {
        self.total_mappings
    }

    pub fn fault_log(&self) -> impl Iterator<Item = (FaultInfo, bool)> + '_ {
        self.fault_log.iter().copied()
    }
}

/// RESV_MEM property length field: the property size without its 4-byte header.
const RESV_MEM_PROP_LEN: usize = std::mem::size_of::<ProbeResvMem>() - 4;

/// A request body as `T`, or None when the buffer is too short for its type.
fn parse<T: FromBytes>(body: &[u8]) -> Option<T> {
    T::read_from_prefix(body).ok().map(|(b, _)| b)
}

mod ext;
pub use ext::{EventRecord, PageRequest};

pub mod journal;
pub mod state;

#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod tests;
