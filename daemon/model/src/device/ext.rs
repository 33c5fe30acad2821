//! The device model's side of the PASID / shared-table extension (docs/PASID.md): the
//! ATTACH_TABLE, DETACH_TABLE, ATTACH_PASID, DETACH_PASID, INVALIDATE and PAGE_RESP requests,
//! translation of PASID traffic and of table domains, and page requests.
//!
//! A child module of `device`, so it works on the same state under the same rules: a request
//! applies completely or changes nothing.

use pagetables::mem::VmMemory;
use pagetables::{AccessKind, AccessRequest};
use vm_memory::GuestAddressSpace;
use zerocopy::{FromBytes, IntoBytes};

use super::*;
use crate::guest_tables::{self, zero, TableDomain, WalkFault, Walked, MAX_PAGE_REQUEST_GROUPS};
use crate::host::{BackendError, HostPageRequest, NestingHost};

/// An outstanding page-request group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub pasid: Option<u32>,
    pub address: u64,
    /// For a request the host IOMMU reported: the cookie its response carries.
    pub host_cookie: Option<u32>,
}

impl Device {
    /// Requests of the extension; `None` if the body is too short to parse.
    pub(super) fn ext_request(&mut self, type_: u8, body: &[u8]) -> Option<Status> {
        match type_ {
            T_ATTACH_TABLE => parse::<AttachTableBody>(body).map(|b| self.attach_table(&b)),
            T_DETACH_TABLE => parse::<DetachTableBody>(body).map(|b| self.detach_table(&b)),
            T_ATTACH_PASID => parse::<PasidAttachBody>(body).map(|b| self.attach_pasid(&b)),
            T_DETACH_PASID => parse::<PasidAttachBody>(body).map(|b| self.detach_pasid(&b)),
            T_INVALIDATE => parse::<InvalidateBody>(body).map(|b| self.invalidate_request(&b)),
            T_PAGE_RESP => parse::<PageRespBody>(body).map(|b| self.page_resp(&b)),
            _ => None,
        }
    }

    /// Is `type_` a request of the extension the driver negotiated?
    pub(super) fn ext_type_negotiated(&self, type_: u8) -> bool {
        match type_ {
            T_ATTACH_TABLE | T_DETACH_TABLE | T_ATTACH_PASID | T_DETACH_PASID | T_INVALIDATE => {
                self.acked(F_ATTACH_TABLE)
            }
            T_PAGE_RESP => self.acked(F_ATTACH_TABLE) && self.acked(F_PAGE_REQUEST),
            _ => false,
        }
    }

    /// Run `op` on the backend's nesting host. A backend without one (the software backend)
    /// has nothing on the host for guest tables: the device model's tables are the IOMMU, and
    /// the request succeeds there.
    fn on_host(
        &mut self,
        op: impl FnOnce(&mut dyn NestingHost) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        self.backend.nesting_mut().map_or(Ok(()), op)
    }

    fn attach_table(&mut self, b: &AttachTableBody) -> Status {
        let domain = b.domain.get();
        // docs/PASID.md §4.1, in order: the request's own reserved fields, the domain id, the
        // domain's kind, then the descriptor.
        if b.flags.get() != 0 || !zero(&b.reserved) || !zero(&b.reserved2) {
            return Status::Inval;
        }
        if !self.domain_in_range(domain) {
            return Status::Range;
        }
        match self.domains.get(&domain) {
            Some(d) if d.bypass || (d.table.is_none() && !d.mappings.is_empty()) => {
                return Status::Inval;
            }
            Some(_) => {}
            // A new domain, with nothing attached yet (an SVA domain before ATTACH_PASID).
            // The iommufd backend allocates a nested HWPT for a domain its endpoints made.
            None if self.backend.nesting().is_some() => return Status::Unsupp,
            None if self.domains.len()
                >= MAX_TABLE_ONLY_DOMAINS + self.endpoints.len() + self.pasid_attach.len() =>
            {
                return Status::NoMem;
            }
            None => {}
        }
        // A PASID table takes over every PASID of its endpoints: none may have ATTACH_PASIDs.
        let binding = {
            let Some(mem) = self.mem.as_ref() else {
                // No guest memory yet: no table can be in guest RAM.
                return Status::Range;
            };
            let guard = mem.memory();
            match guest_tables::decode(b, &self.soft, &VmMemory(&*guard)) {
                Ok(binding) => binding,
                Err(s) => return s,
            }
        };
        let empty = Domain::default();
        let d = self.domains.get(&domain).unwrap_or(&empty);
        if binding.is_pasid_table()
            && d.endpoints.iter().any(|e| {
                self.pasid_attach
                    .range((*e, 0)..=(*e, u32::MAX))
                    .next()
                    .is_some()
            })
        {
            return Status::Inval;
        }
        if binding.is_pasid_table() && !d.pasid_endpoints.is_empty() {
            return Status::Inval;
        }
        if let Err(e) = self.on_host(|h| h.attach_table(domain, &binding)) {
            return self.backend_failed("ATTACH_TABLE", e);
        }
        let d = self.domains.entry(domain).or_default();
        // Replacing a table drops everything cached from the old one.
        d.table = Some(Box::new(TableDomain::new(binding)));
        d.table_req = Some(*b);
        let endpoints: Vec<u32> = d.endpoints.iter().copied().collect();
        for endpoint in endpoints {
            self.invalidate(|| Invalidation::Endpoint { endpoint });
        }
        Status::Ok
    }

    fn detach_table(&mut self, b: &DetachTableBody) -> Status {
        let domain = b.domain.get();
        if !zero(&b.reserved) {
            return Status::Inval;
        }
        let Some(d) = self.domains.get(&domain) else {
            return Status::NoEnt;
        };
        if d.table.is_none() {
            return Status::Inval;
        }
        if let Err(e) = self.on_host(|h| h.detach_table(domain)) {
            return self.backend_failed("DETACH_TABLE", e);
        }
        let Some(d) = self.domains.get_mut(&domain) else {
            return Status::NoEnt;
        };
        d.table = None;
        d.table_req = None;
        let endpoints: Vec<u32> = d.endpoints.iter().copied().collect();
        for endpoint in endpoints {
            self.invalidate(|| Invalidation::Endpoint { endpoint });
        }
        // A domain ATTACH_TABLE created, with nothing attached, ends here.
        self.end_domain_if_unused(domain);
        Status::Ok
    }

    fn attach_pasid(&mut self, b: &PasidAttachBody) -> Status {
        let (domain, endpoint, pasid) = (b.domain.get(), b.endpoint.get(), b.pasid.get());
        if !zero(&b.reserved) {
            return Status::Inval;
        }
        if !self.cfg.endpoints.contains(endpoint) {
            return Status::NoEnt;
        }
        if u64::from(pasid) >> self.cfg.pasid_bits != 0 {
            return Status::Range;
        }
        let Some(d) = self.domains.get(&domain) else {
            return Status::NoEnt;
        };
        if d.bypass || d.table.as_ref().is_some_and(|t| t.binding.is_pasid_table()) {
            return Status::Inval;
        }
        // The endpoint's PASIDs belong to its CD table if it has one.
        let rid_domain = self.endpoints.get(&endpoint).copied().flatten();
        if rid_domain
            .and_then(|r| self.domains.get(&r))
            .and_then(|r| r.table.as_ref())
            .is_some_and(|t| t.binding.is_pasid_table())
        {
            return Status::Inval;
        }
        let new_pair = !self.pasid_attach.contains_key(&(endpoint, pasid));
        if !self.endpoint_room(endpoint)
            || (new_pair && self.pasid_attach.len() >= MAX_PASID_ATTACHMENTS)
        {
            return Status::NoMem;
        }
        if let Err(e) = self.on_host(|h| h.attach_pasid(endpoint, pasid, domain)) {
            return self.backend_failed("ATTACH_PASID", e);
        }
        let previous = self.pasid_attach.insert((endpoint, pasid), domain);
        if let Some(old) = previous.filter(|&old| old != domain) {
            self.remove_pasid_from_domain(old, endpoint, pasid);
        }
        if let Some(d) = self.domains.get_mut(&domain) {
            d.pasid_endpoints.insert((endpoint, pasid));
        }
        self.endpoints.entry(endpoint).or_insert(None);
        Status::Ok
    }

    fn detach_pasid(&mut self, b: &PasidAttachBody) -> Status {
        let (domain, endpoint, pasid) = (b.domain.get(), b.endpoint.get(), b.pasid.get());
        if !zero(&b.reserved) {
            return Status::Inval;
        }
        if !self.cfg.endpoints.contains(endpoint) {
            return Status::NoEnt;
        }
        if !self.domains.contains_key(&domain) {
            return Status::NoEnt;
        }
        if self.pasid_attach.get(&(endpoint, pasid)) != Some(&domain) {
            return Status::Inval;
        }
        if let Err(e) = self.on_host(|h| h.detach_pasid(endpoint, pasid)) {
            return self.backend_failed("DETACH_PASID", e);
        }
        self.pasid_attach.remove(&(endpoint, pasid));
        self.remove_pasid_from_domain(domain, endpoint, pasid);
        Status::Ok
    }

    /// Take (endpoint, pasid) out of `domain`; the domain ends when nothing is attached to it.
    fn remove_pasid_from_domain(&mut self, domain: u32, endpoint: u32, pasid: u32) {
        if let Some(d) = self.domains.get_mut(&domain) {
            d.pasid_endpoints.remove(&(endpoint, pasid));
        }
        self.end_domain_if_unused(domain);
    }

    fn invalidate_request(&mut self, b: &InvalidateBody) -> Status {
        let inv = match guest_tables::parse_invalidate(b, self.cfg.pasid_bits) {
            Ok(inv) => inv,
            Err(s) => return s,
        };
        let Some(d) = self.domains.get(&inv.domain) else {
            return Status::NoEnt;
        };
        if inv.archid.is_some()
            && d.table
                .as_ref()
                .is_some_and(|t| matches!(t.binding, guest_tables::Binding::Vtd(_)))
        {
            return Status::Inval;
        }
        // MAP and BYPASS domains have nothing cached: the request succeeds and does nothing.
        if d.table.is_some() {
            if let Err(e) = self.on_host(|h| h.invalidate(inv.domain, &inv)) {
                return self.backend_failed("INVALIDATE", e);
            }
        }
        let Some(d) = self.domains.get_mut(&inv.domain) else {
            return Status::NoEnt;
        };
        if let Some(t) = d.table.as_mut() {
            t.invalidate(&inv);
        }
        self.stats.invalidations += 1;
        Status::Ok
    }

    fn page_resp(&mut self, b: &PageRespBody) -> Status {
        let (endpoint, pasid, grpid) = (b.endpoint.get(), b.pasid.get(), b.grpid.get());
        let (code, flags) = (b.code.get(), b.flags.get());
        if !zero(&b.reserved) || flags & !PAGE_RESP_F_PASID_VALID != 0 {
            return Status::Inval;
        }
        if !matches!(
            code,
            PAGE_RESP_SUCCESS | PAGE_RESP_INVALID | PAGE_RESP_FAILURE
        ) {
            return Status::Inval;
        }
        if !self.cfg.endpoints.contains(endpoint) {
            return Status::NoEnt;
        }
        let want_pasid = (flags & PAGE_RESP_F_PASID_VALID != 0).then_some(pasid);
        let host_cookie = match self.page_requests.get(&(endpoint, grpid)) {
            Some(pr) if pr.pasid == want_pasid => pr.host_cookie,
            _ => return Status::NoEnt,
        };
        if let Some(cookie) = host_cookie {
            if let Err(e) = self.on_host(|h| h.page_response(cookie, code)) {
                return self.backend_failed("PAGE_RESP", e);
            }
        }
        self.page_requests.remove(&(endpoint, grpid));
        if code == PAGE_RESP_FAILURE {
            // PCIe Response Failure: the function stops issuing page requests; its misses are
            // faults until the driver ATTACHes it again.
            self.pri_stopped.insert(endpoint);
        }
        self.stats.page_responses[usize::from(code)] += 1;
        Status::Ok
    }

    /// Translate an access by `endpoint`, with `pasid` if the traffic carries one.
    pub fn translate_pasid(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
        privileged: bool,
    ) -> Result<Translation, TranslateError> {
        if !self.cfg.endpoints.contains(endpoint) {
            return Err(TranslateError::UnknownEndpoint(endpoint));
        }
        if pasid.is_some_and(|p| u64::from(p) >> self.cfg.pasid_bits != 0) {
            return Err(TranslateError::PasidOutOfRange(pasid.unwrap_or(0)));
        }
        let rid_domain = self.endpoints.get(&endpoint).copied().flatten();
        // Which domain handles this traffic?
        let domain = match pasid {
            None => rid_domain,
            Some(p) => {
                let cd_table = rid_domain.filter(|r| {
                    self.domains
                        .get(r)
                        .and_then(|d| d.table.as_ref())
                        .is_some_and(|t| t.binding.is_pasid_table())
                });
                cd_table.or_else(|| self.pasid_attach.get(&(endpoint, p)).copied())
            }
        };
        let result = match domain {
            None if pasid.is_none() && self.unattached_bypass() => {
                Translation::Bypass { phys: iova }
            }
            None => Translation::Fault {
                reason: FaultReason::Domain,
            },
            Some(domain) => {
                let pri = !self.pri_stopped.contains(&endpoint);
                self.translate_in(domain, pasid, iova, access, privileged, pri)
            }
        };
        match result {
            Translation::Fault { reason } => {
                self.record_fault(endpoint, pasid, iova, access, privileged, reason)
            }
            Translation::PageRequest { grpid } => {
                self.queue_page_request(endpoint, pasid, iova, access, privileged, grpid)
            }
            _ => {}
        }
        Ok(result)
    }

    fn translate_in(
        &mut self,
        domain: u32,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
        privileged: bool,
        pri: bool,
    ) -> Translation {
        let mapping_fault = Translation::Fault {
            reason: FaultReason::Mapping,
        };
        let Some(d) = self.domains.get_mut(&domain) else {
            return Translation::Fault {
                reason: FaultReason::Domain,
            };
        };
        if d.bypass {
            return Translation::Bypass { phys: iova };
        }
        let Some(table) = d.table.as_mut() else {
            return match d.mappings.lookup(iova) {
                Some(m) if access.allowed_by(&m) => Translation::Translated {
                    phys: m.phys_start + (iova - m.virt_start),
                    mapping: Some(m),
                },
                _ => mapping_fault,
            };
        };
        let reqs = access.requests(privileged);
        let walked = match self.mem.as_ref() {
            Some(mem) => {
                let guard = mem.memory();
                table.translate(&VmMemory(&*guard), &self.soft, pasid, iova, &reqs[..])
            }
            None => Err(WalkFault::BadTable),
        };
        match walked {
            Ok(Walked::Translated(phys)) => Translation::Translated {
                phys,
                mapping: None,
            },
            Ok(Walked::Bypass(phys)) => Translation::Bypass { phys },
            Err(f) if pri && f.recoverable() && self.acked(F_PAGE_REQUEST) => {
                match self.alloc_grpid() {
                    Some(grpid) => Translation::PageRequest { grpid },
                    None => mapping_fault,
                }
            }
            Err(_) => mapping_fault,
        }
    }

    /// A free page-request group index for an endpoint (0..512), or None when all are taken.
    fn alloc_grpid(&mut self) -> Option<u32> {
        // The caller's endpoint is not known here: indexes are unique across the device, which
        // keeps them unique per endpoint too.
        let max = MAX_PAGE_REQUEST_GROUPS as u32;
        for _ in 0..max {
            let g = self.next_grpid % max;
            self.next_grpid = self.next_grpid.wrapping_add(1);
            if !self.page_requests.keys().any(|(_, gg)| *gg == g) {
                return Some(g);
            }
        }
        None
    }

    fn queue_page_request(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
        privileged: bool,
        grpid: u32,
    ) {
        let mut flags = access.fault_flags() | FAULT_F_ADDRESS | FAULT_F_LAST;
        if pasid.is_some() {
            flags |= FAULT_F_PASID_VALID;
        }
        if privileged {
            flags |= FAULT_F_PRIV;
        }
        let address = iova & !0xfff;
        let rec = PageRequestRecord {
            reason: FAULT_R_PAGE_REQUEST,
            reserved: [0; 3],
            flags: flags.into(),
            endpoint: endpoint.into(),
            pasid: pasid.unwrap_or(0).into(),
            address: address.into(),
            grpid: grpid.into(),
            reserved2: [0; 4],
        };
        self.page_requests.insert(
            (endpoint, grpid),
            PageRequest {
                pasid,
                address,
                host_cookie: None,
            },
        );
        let ev = EventRecord::new(rec.as_bytes(), endpoint, address, Some(grpid));
        if self.pending_events.len() >= PENDING_EVENTS_MAX {
            // Nobody will answer it: the device answers INVALID itself.
            self.page_requests.remove(&(endpoint, grpid));
            self.stats.faults_dropped += 1;
        } else {
            self.pending_events.push_back(ev);
        }
    }

    /// Page requests the host IOMMU reported (iommufd fault queue): each becomes a 32-byte
    /// page-request record on the event queue, and the guest's PAGE_RESP goes back to the host.
    /// Returns how many records were queued.
    pub fn host_page_requests(&mut self) -> usize {
        let reqs = self
            .backend
            .nesting_mut()
            .map(|h| h.page_requests())
            .unwrap_or_default();
        reqs.into_iter()
            .filter(|r| self.queue_host_page_request(r))
            .count()
    }

    /// Everything the host reported on its event fd: page requests, and faults of guest tables
    /// (iommufd vEVENTQ), which become 24-byte fault records. Returns how many records were
    /// queued.
    pub fn host_events(&mut self) -> usize {
        let n = self.host_page_requests();
        let faults = self
            .backend
            .nesting_mut()
            .map(|h| h.host_faults())
            .unwrap_or_default();
        let mut queued = 0;
        for f in faults {
            let mut flags = f.access & (FAULT_F_READ | FAULT_F_WRITE | FAULT_F_EXEC | FAULT_F_PRIV);
            if f.address.is_some() {
                flags |= FAULT_F_ADDRESS;
            }
            if f.pasid.is_some() {
                flags |= FAULT_F_PASID_VALID;
            }
            let address = f.address.unwrap_or(0);
            let rec = FaultRecord {
                reason: f.reason,
                reserved: [0; 3],
                flags: flags.into(),
                endpoint: f.endpoint.into(),
                reserved2: f.pasid.unwrap_or(0).to_le_bytes(),
                address: address.into(),
            };
            if self.pending_events.len() >= PENDING_EVENTS_MAX {
                self.stats.faults_dropped += 1;
                continue;
            }
            self.pending_events.push_back(EventRecord::new(
                rec.as_bytes(),
                f.endpoint,
                address,
                None,
            ));
            queued += 1;
        }
        n + queued
    }

    /// The host gets INVALID at once for a request nobody will answer.
    fn refuse_host_page_request(&mut self, r: &HostPageRequest) {
        self.stats.faults_dropped += 1;
        if r.last {
            if let Err(e) = self.on_host(|h| h.page_response(r.cookie, PAGE_RESP_INVALID)) {
                log::warn!("host page request of endpoint {}: {e}", r.endpoint);
            }
        }
    }

    fn queue_host_page_request(&mut self, r: &HostPageRequest) -> bool {
        if !self.acked(F_PAGE_REQUEST) || self.pending_events.len() >= PENDING_EVENTS_MAX {
            self.refuse_host_page_request(r);
            return false;
        }
        // The records of one host group share one guest group index.
        let key = (r.endpoint, r.grpid);
        let grpid = match self.host_groups.get(&key) {
            Some(&g) => g,
            None => match self.alloc_grpid() {
                Some(g) => g,
                None => {
                    self.refuse_host_page_request(r);
                    return false;
                }
            },
        };
        if r.last {
            self.host_groups.remove(&key);
        } else {
            self.host_groups.insert(key, grpid);
        }
        let mut flags = (r.perm & (FAULT_F_READ | FAULT_F_WRITE | FAULT_F_EXEC | FAULT_F_PRIV))
            | FAULT_F_ADDRESS;
        if r.last {
            flags |= FAULT_F_LAST;
        }
        if r.pasid.is_some() {
            flags |= FAULT_F_PASID_VALID;
        }
        let address = r.address & !0xfff;
        let rec = PageRequestRecord {
            reason: FAULT_R_PAGE_REQUEST,
            reserved: [0; 3],
            flags: flags.into(),
            endpoint: r.endpoint.into(),
            pasid: r.pasid.unwrap_or(0).into(),
            address: address.into(),
            grpid: grpid.into(),
            reserved2: [0; 4],
        };
        self.page_requests.insert(
            (r.endpoint, grpid),
            PageRequest {
                pasid: r.pasid,
                address,
                host_cookie: Some(r.cookie),
            },
        );
        let ev = EventRecord::new(rec.as_bytes(), r.endpoint, address, Some(grpid));
        self.pending_events.push_back(ev);
        true
    }

    /// The host's page-request fd, for the vhost worker to watch.
    pub fn host_page_request_fd(&self) -> Option<std::os::fd::RawFd> {
        self.backend.nesting()?.page_request_fd()
    }

    /// Outstanding page requests, for inspection.
    pub fn page_request_list(&self) -> impl Iterator<Item = (u32, u32, PageRequest)> + '_ {
        self.page_requests.iter().map(|((e, g), p)| (*e, *g, *p))
    }

    /// ATTACH_PASID bindings, for inspection: (endpoint, pasid, domain).
    pub fn pasid_attach_list(&self) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        self.pasid_attach.iter().map(|((e, p), d)| (*e, *p, *d))
    }

    /// A domain's table, for inspection: (format, cached translations, hits, misses).
    pub fn domain_table(&self, domain: u32) -> Option<(u16, usize, u64, u64)> {
        let t = self.domains.get(&domain)?.table.as_ref()?;
        Some((
            t.binding.format(),
            t.cached_translations(),
            t.hits,
            t.misses,
        ))
    }
}

impl Access {
    /// The page-table requests this access makes.
    fn requests(self, privileged: bool) -> Vec<AccessRequest> {
        let r = |kind| AccessRequest { kind, privileged };
        match self {
            Access::Read => vec![r(AccessKind::Read)],
            Access::Write => vec![r(AccessKind::Write)],
            Access::ReadWrite => vec![r(AccessKind::Read), r(AccessKind::Write)],
            Access::Exec => vec![r(AccessKind::Exec)],
        }
    }
}

/// A record waiting for the event queue: a 24-byte fault or a 32-byte page request.
#[derive(Clone, Copy, Debug)]
pub struct EventRecord {
    bytes: [u8; PAGE_REQUEST_RECORD_SIZE],
    len: usize,
    pub endpoint: u32,
    pub address: u64,
    /// The page-request group, for page requests.
    pub grpid: Option<u32>,
}

impl EventRecord {
    pub(super) fn new(data: &[u8], endpoint: u32, address: u64, grpid: Option<u32>) -> Self {
        let mut bytes = [0u8; PAGE_REQUEST_RECORD_SIZE];
        let len = data.len().min(PAGE_REQUEST_RECORD_SIZE);
        bytes[..len].copy_from_slice(&data[..len]);
        EventRecord {
            bytes,
            len,
            endpoint,
            address,
            grpid,
        }
    }

    /// The bytes to write into an event buffer.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The record as a standard fault record, if it is one.
    pub fn as_fault(&self) -> Option<FaultRecord> {
        if self.grpid.is_some() {
            return None;
        }
        FaultRecord::read_from_bytes(self.bytes()).ok()
    }
}
