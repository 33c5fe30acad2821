//! The device's guest-visible state as a byte stream, for live migration (vhost-user
//! `SET_DEVICE_STATE_FD`) and for the restart journal. docs/STATE.md is the format's reference.
//!
//! The stream is a header (the configuration the state depends on, the negotiated features, the
//! config `bypass` byte) followed by records. Most records are virtio-iommu requests in their
//! wire format (ATTACH, MAP, ATTACH_TABLE, ...): loading replays them through the device's own
//! request handling, so a stream cannot create a state a driver could not have created, and every
//! check of the specification applies to it. The rest carry what requests cannot rebuild:
//! endpoints the driver probed but never attached, outstanding page requests and events not yet
//! delivered. Loading is all or nothing: on any error the device returns to its power-on state.
//!
//! Not part of the state: counters and the fault log (inspection only), and the software
//! backend's IOTLB and context-descriptor caches, which a load starts empty, as after an
//! eviction (architecturally invisible to a guest that invalidates as it must).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub use super::journal::{
    drop_unfinished_pass, journal_generation, known_record_kind, Pass, StateJournal,
    PASS_MAX_CHAINS, RING_RECORD,
};
use super::{Device, EventRecord, PageRequest, Reply, MAX_ENDPOINT_RECORDS, PENDING_EVENTS_MAX};
use crate::guest_tables::MAX_PAGE_REQUEST_GROUPS;
use crate::protocol::*;

pub const STATE_MAGIC: [u8; 8] = *b"VUIOMMUS";
pub const STATE_VERSION: u32 = 1;
/// Header flag: `acked` holds the driver's features (the driver had negotiated).
pub const STATE_F_ACKED: u32 = 1;
/// Header flag (journal snapshots): the request worker ends each pass over the request queue
/// with a PASS record, so REQUEST records after the last PASS record belong to a pass whose
/// write a crash cut short (the driver saw none of its statuses) and are dropped on resume.
pub const STATE_F_PASSES: u32 = 2;

/// Record kinds.
pub const REC_REQUEST: u8 = 1;
pub const REC_ENDPOINT: u8 = 2;
pub const REC_PAGE_REQUEST: u8 = 3;
pub const REC_EVENT: u8 = 4;
pub const REC_BYPASS: u8 = 5;
pub const REC_FEATURES: u8 = 6;
/// Journal snapshots only: `le64` generation, the first record (which of the two journal files
/// is newer; a load ignores it).
pub const REC_GENERATION: u8 = 7;
/// Journals only: one pass of the request worker, written after its REQUEST records and before
/// any of its statuses is published: `le16 avail_start, le16 count`, then `count` times
/// `le16 head, le16 reserved (0), le32 used length`. A restarted daemon publishes the used
/// entries the previous process had not (the replies are already in the driver's buffers)
/// instead of handling those requests a second time.
pub const REC_PASS: u8 = 8;
/// Journals only: where the driver's request queue lives, `le64 desc, le64 avail, le64 used,
/// le16 size`, 6 reserved bytes (0). A journal whose queue is not this driver's belongs to
/// another VM (or to this VM before its driver started over) and is not resumed.
pub const REC_RING: u8 = 9;
pub const REC_END: u8 = 0xff;

/// The 72-byte header.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct StateHeader {
    pub magic: [u8; 8],
    pub version: U32,
    pub flags: U32,
    pub acked: U64,
    /// The features the saving device offered (informative; `acked` must be offered here).
    pub offered: U64,
    pub page_size_mask: U64,
    pub input_start: U64,
    pub input_end: U64,
    pub domain_start: U32,
    pub domain_end: U32,
    pub pasid_bits: u8,
    pub bypass: u8,
    pub reserved: [u8; 6],
}

/// Each record: `{u8 kind; u8 reserved; le16 length}` and `length` bytes of payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RecordHead {
    pub kind: u8,
    pub reserved: u8,
    pub len: U16,
}

/// REC_PAGE_REQUEST payload: an outstanding page-request group the guest has still to answer.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PageRequestState {
    pub endpoint: U32,
    pub grpid: U32,
    pub pasid: U32,
    /// Bit 0: `pasid` is valid.
    pub flags: U32,
    pub address: U64,
}

/// REC_END payload: how many records precede it and the CRC-32 (IEEE) of every byte before
/// the END record.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct StateEnd {
    pub records: U32,
    pub crc32: U32,
}

/// Request types a state stream may carry (the ones that change state).
const STATE_REQUESTS: [u8; 8] = [
    T_ATTACH,
    T_DETACH,
    T_MAP,
    T_UNMAP,
    T_ATTACH_TABLE,
    T_DETACH_TABLE,
    T_ATTACH_PASID,
    T_DETACH_PASID,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("not a vhost-user-iommu device state (bad magic)")]
    Magic,
    #[error(
        "device state version {0} is not supported (this daemon reads version {STATE_VERSION})"
    )]
    Version(u32),
    #[error("device state truncated at byte {0}")]
    Truncated(usize),
    #[error("device state has no END record")]
    NoEnd,
    #[error("device state checksum mismatch (stored {stored:#x}, computed {computed:#x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("device state END record counts {stored} records, the stream has {found}")]
    Count { stored: u32, found: u32 },
    #[error("device state saved with {field} = {saved:#x}, this daemon has {ours:#x}: start it with the source's configuration")]
    Incompatible {
        field: &'static str,
        saved: u64,
        ours: u64,
    },
    #[error("device state record {index}: {reason}")]
    Record { index: usize, reason: String },
    #[error("device state record {index}: request type {type_} refused with status {status:?}")]
    Refused {
        index: usize,
        type_: u8,
        status: Status,
    },
    #[error("the device already has guest state; a state is loaded into a reset device only")]
    NotPristine,
    #[error("the journal belongs to another driver: its request queue was {saved}, this driver's is {current} (a journal of another VM, or of this VM before its driver started over)")]
    OtherDriver { saved: String, current: String },
}

/// What a load restored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateSummary {
    pub records: usize,
    pub domains: usize,
    pub mappings: u64,
    pub endpoints: usize,
    pub events: usize,
}

/// A parsed, structurally checked stream (no device state touched yet).
#[derive(Debug)]
pub struct ParsedState<'a> {
    pub header: StateHeader,
    pub records: Vec<(u8, &'a [u8])>,
    /// How many of `records` precede the END record (a journal's snapshot; the rest were
    /// appended after it).
    pub snapshot_records: usize,
    /// Bytes consumed (up to and including END, or the last whole record of a journal).
    pub used: usize,
}

/// How strictly to parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A migration stream: must end with a valid END record and nothing after it.
    Migration,
    /// A restart journal: a snapshot (ending with END) followed by records appended as the
    /// device changed; a torn last record (a write cut short by a crash) is dropped.
    Journal,
}

pub fn parse_state(data: &[u8], kind: StreamKind) -> Result<ParsedState<'_>, StateError> {
    let (header, _) = StateHeader::read_from_prefix(data).map_err(|_| StateError::Truncated(0))?;
    if header.magic != STATE_MAGIC {
        return Err(StateError::Magic);
    }
    if header.version.get() != STATE_VERSION {
        return Err(StateError::Version(header.version.get()));
    }
    let mut off = std::mem::size_of::<StateHeader>();
    let mut records = Vec::new();
    let mut ended = false;
    let mut snapshot_records = 0;
    while off < data.len() {
        let index = records.len();
        let Some(rest) = data.get(off..) else { break };
        let Ok((head, _)) = RecordHead::read_from_prefix(rest) else {
            if kind == StreamKind::Journal && ended {
                log::warn!("device state journal: torn record at byte {off} dropped");
                break;
            }
            return Err(StateError::Truncated(off));
        };
        let len = usize::from(head.len.get());
        let start = off + std::mem::size_of::<RecordHead>();
        let Some(payload) = data.get(start..start + len) else {
            if kind == StreamKind::Journal && ended {
                log::warn!("device state journal: torn record at byte {off} dropped");
                break;
            }
            return Err(StateError::Truncated(off));
        };
        if head.reserved != 0 {
            return Err(StateError::Record {
                index,
                reason: "reserved byte of the record head is not 0".into(),
            });
        }
        if head.kind == REC_END {
            if ended {
                return Err(StateError::Record {
                    index,
                    reason: "a second END record".into(),
                });
            }
            let end = StateEnd::read_from_bytes(payload).map_err(|_| StateError::Record {
                index,
                reason: format!("END record of {len} bytes, expected 8"),
            })?;
            let computed = crc32fast::hash(&data[..off]);
            if end.crc32.get() != computed {
                return Err(StateError::Checksum {
                    stored: end.crc32.get(),
                    computed,
                });
            }
            if end.records.get() as usize != records.len() {
                return Err(StateError::Count {
                    stored: end.records.get(),
                    found: records.len() as u32,
                });
            }
            ended = true;
            snapshot_records = records.len();
            off = start + len;
            if kind == StreamKind::Migration {
                break;
            }
            continue;
        }
        records.push((head.kind, payload));
        off = start + len;
    }
    if !ended {
        return Err(StateError::NoEnd);
    }
    if kind == StreamKind::Migration && off != data.len() {
        return Err(StateError::Record {
            index: records.len(),
            reason: format!("{} bytes after the END record", data.len() - off),
        });
    }
    Ok(ParsedState {
        header,
        records,
        snapshot_records,
        used: off,
    })
}

/// Append one record to `out`.
pub fn push_record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let head = RecordHead {
        kind,
        reserved: 0,
        len: U16::new(payload.len() as u16),
    };
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
}

/// Append the END record over everything in `out` (`records` records so far).
pub fn push_end(out: &mut Vec<u8>, records: usize) {
    let end = StateEnd {
        records: U32::new(records as u32),
        crc32: U32::new(crc32fast::hash(out)),
    };
    push_record(out, REC_END, end.as_bytes());
}

/// A request record: head (type) + body.
fn request(type_: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEAD_SIZE + body.len());
    v.extend_from_slice(
        ReqHead {
            type_,
            reserved: [0; 3],
        }
        .as_bytes(),
    );
    v.extend_from_slice(body);
    v
}

fn attach_req(domain: u32, endpoint: u32, flags: u32) -> Vec<u8> {
    let b = AttachBody {
        domain: domain.into(),
        endpoint: endpoint.into(),
        flags: flags.into(),
        reserved: [0; 4],
    };
    request(T_ATTACH, b.as_bytes())
}

fn pasid_req(type_: u8, domain: u32, endpoint: u32, pasid: u32) -> Vec<u8> {
    let b = PasidAttachBody {
        domain: domain.into(),
        endpoint: endpoint.into(),
        pasid: pasid.into(),
        reserved: [0; 8],
    };
    request(type_, b.as_bytes())
}

impl Device {
    /// The header of a stream of this device's current state.
    pub fn state_header(&self) -> StateHeader {
        StateHeader {
            magic: STATE_MAGIC,
            version: STATE_VERSION.into(),
            flags: if self.acked.is_some() {
                STATE_F_ACKED
            } else {
                0
            }
            .into(),
            acked: self.acked.unwrap_or(0).into(),
            offered: self.features().into(),
            page_size_mask: self.cfg.page_size_mask.into(),
            input_start: self.cfg.input_start.into(),
            input_end: self.cfg.input_end.into(),
            domain_start: self.cfg.domain_start.into(),
            domain_end: self.cfg.domain_end.into(),
            pasid_bits: self.cfg.pasid_bits,
            bypass: self.bypass,
            reserved: [0; 6],
        }
    }

    /// The guest-visible state as records (no header, no END), in an order that replays: a
    /// domain is created by attaching an endpoint before its table and mappings are added.
    pub fn state_records(&self) -> Vec<(u8, Vec<u8>)> {
        let mut recs = Vec::new();
        let mut req = |v: Vec<u8>| recs.push((REC_REQUEST, v));
        let content = |req: &mut dyn FnMut(Vec<u8>), id: u32, d: &super::Domain| {
            if let Some(t) = &d.table_req {
                req(request(T_ATTACH_TABLE, t.as_bytes()));
            }
            for m in d.mappings.iter() {
                let b = MapBody {
                    domain: id.into(),
                    virt_start: m.virt_start.into(),
                    virt_end: m.virt_end.into(),
                    phys_start: m.phys_start.into(),
                    flags: m.flags.into(),
                };
                req(request(T_MAP, b.as_bytes()));
            }
        };
        // Domains only (endpoint, PASID) pairs hold: created through one of those endpoints,
        // which leaves again once the pairs hold the domain. Domains nothing holds (ATTACH_TABLE
        // made them): their ATTACH_TABLE alone.
        for (&id, d) in self.domains.iter().filter(|(_, d)| d.endpoints.is_empty()) {
            let Some(&(holder, _)) = d.pasid_endpoints.iter().next() else {
                // A domain ATTACH_TABLE made, nothing attached yet: ATTACH_TABLE makes it again.
                content(&mut req, id, d);
                continue;
            };
            req(attach_req(id, holder, 0));
            content(&mut req, id, d);
            for &(e, p) in &d.pasid_endpoints {
                req(pasid_req(T_ATTACH_PASID, id, e, p));
            }
            let b = DetachBody {
                domain: id.into(),
                endpoint: holder.into(),
                reserved: [0; 8],
            };
            req(request(T_DETACH, b.as_bytes()));
        }
        let attached = self.domains.iter().filter(|(_, d)| !d.endpoints.is_empty());
        for (&id, d) in attached.clone() {
            let flags = if d.bypass { ATTACH_F_BYPASS } else { 0 };
            for &e in &d.endpoints {
                req(attach_req(id, e, flags));
            }
            content(&mut req, id, d);
        }
        for (&id, d) in attached {
            for &(e, p) in &d.pasid_endpoints {
                req(pasid_req(T_ATTACH_PASID, id, e, p));
            }
        }
        for (&e, _) in self.endpoints.iter().filter(|(_, d)| d.is_none()) {
            if !self.pasid_attach.keys().any(|(pe, _)| *pe == e) {
                recs.push((REC_ENDPOINT, e.to_le_bytes().to_vec()));
            }
        }
        // Page requests the host IOMMU raised answer to the source's kernel: they stay behind
        // (the guest's late PAGE_RESP for one is refused INVAL at the destination).
        for (&(endpoint, grpid), pr) in &self.page_requests {
            if pr.host_cookie.is_some() {
                continue;
            }
            let s = PageRequestState {
                endpoint: endpoint.into(),
                grpid: grpid.into(),
                pasid: pr.pasid.unwrap_or(0).into(),
                flags: u32::from(pr.pasid.is_some()).into(),
                address: pr.address.into(),
            };
            recs.push((REC_PAGE_REQUEST, s.as_bytes().to_vec()));
        }
        for ev in &self.pending_events {
            let host = ev.grpid.is_some_and(|g| {
                self.page_requests
                    .get(&(ev.endpoint, g))
                    .is_none_or(|p| p.host_cookie.is_some())
            });
            if !host {
                recs.push((REC_EVENT, ev.bytes().to_vec()));
            }
        }
        recs
    }

    /// The whole state as a migration stream.
    pub fn save_state(&self) -> Vec<u8> {
        self.save_state_as(None)
    }

    /// The state as a stream; a journal snapshot carries its `generation` as the first record.
    pub(super) fn save_state_as(&self, generation: Option<u64>) -> Vec<u8> {
        let mut header = self.state_header();
        let mut recs = self.state_records();
        if let Some(g) = generation {
            header.flags = (header.flags.get() | STATE_F_PASSES).into();
            recs.insert(0, (REC_GENERATION, g.to_le_bytes().to_vec()));
            if let Some(ring) = &self.ring {
                recs.insert(1, (REC_RING, ring.to_vec()));
            }
            if let Some(pass) = &self.last_pass {
                recs.push((REC_PASS, pass.clone()));
            }
        }
        let mut out = header.as_bytes().to_vec();
        for (kind, payload) in &recs {
            push_record(&mut out, *kind, payload);
        }
        push_end(&mut out, recs.len());
        out
    }

    /// Does the device hold no guest state (power-on or just reset)?
    pub fn is_pristine(&self) -> bool {
        self.endpoints.is_empty()
            && self.domains.is_empty()
            && self.pasid_attach.is_empty()
            && self.page_requests.is_empty()
            && self.pending_events.is_empty()
    }

    /// Check a header against this device's configuration.
    pub fn check_state_header(&self, h: &StateHeader) -> Result<(), StateError> {
        let c = &self.cfg;
        let fields: [(&'static str, u64, u64); 6] = [
            ("page-size-mask", h.page_size_mask.get(), c.page_size_mask),
            ("input-start", h.input_start.get(), c.input_start),
            ("input-end", h.input_end.get(), c.input_end),
            (
                "domain-start",
                h.domain_start.get().into(),
                c.domain_start.into(),
            ),
            ("domain-end", h.domain_end.get().into(), c.domain_end.into()),
            ("pasid-bits", h.pasid_bits.into(), c.pasid_bits.into()),
        ];
        for (field, saved, ours) in fields {
            if saved != ours {
                return Err(StateError::Incompatible { field, saved, ours });
            }
        }
        if h.flags.get() & !(STATE_F_ACKED | STATE_F_PASSES) != 0 || h.reserved != [0; 6] {
            return Err(StateError::Record {
                index: 0,
                reason: "unknown header flags or reserved bytes set".into(),
            });
        }
        if h.flags.get() & STATE_F_ACKED != 0 {
            self.check_features(h.acked.get())?;
        }
        if h.bypass > 1 {
            return Err(StateError::Record {
                index: 0,
                reason: format!("config bypass byte {}", h.bypass),
            });
        }
        Ok(())
    }

    fn check_features(&self, acked: u64) -> Result<(), StateError> {
        let extra = acked & !self.features();
        if extra != 0 {
            return Err(StateError::Incompatible {
                field: "features (negotiated at the source, not offered here)",
                saved: extra,
                ours: self.features(),
            });
        }
        Ok(())
    }

    /// Load a migration stream into a reset device. All or nothing.
    pub fn load_state(&mut self, data: &[u8]) -> Result<StateSummary, StateError> {
        let parsed = parse_state(data, StreamKind::Migration)?;
        self.apply_state(&parsed)
    }

    /// Apply a parsed stream into a reset device. All or nothing: on error the device is back
    /// in its power-on state.
    pub fn apply_state(&mut self, parsed: &ParsedState<'_>) -> Result<StateSummary, StateError> {
        if !self.is_pristine() {
            return Err(StateError::NotPristine);
        }
        self.check_state_header(&parsed.header)?;
        let (acked, bypass) = (self.acked, self.bypass);
        let stats = self.stats.clone();
        // Replayed requests are not journaled one by one: the whole state is, once loaded.
        let journal = self.journal.take();
        let result = self.replay(parsed);
        self.journal = journal;
        // Replayed requests are not the guest's: the counters stay as they were.
        self.stats = stats;
        match result {
            Ok(s) => {
                self.sync_unattached_bypass();
                self.journal_snapshot();
                Ok(s)
            }
            Err(e) => {
                self.reset_guest_state();
                self.acked = acked;
                self.bypass = bypass;
                self.sync_unattached_bypass();
                Err(e)
            }
        }
    }

    fn replay(&mut self, parsed: &ParsedState<'_>) -> Result<StateSummary, StateError> {
        let h = &parsed.header;
        if h.flags.get() & STATE_F_ACKED != 0 {
            self.acked = Some(h.acked.get());
        }
        self.bypass = h.bypass;
        let mut props: [u8; 0] = [];
        for (index, &(kind, payload)) in parsed.records.iter().enumerate() {
            let bad = |reason: String| StateError::Record { index, reason };
            match kind {
                REC_REQUEST => {
                    let type_ = payload.first().copied().unwrap_or(0);
                    if !STATE_REQUESTS.contains(&type_)
                        || payload.get(1..HEAD_SIZE) != Some(&[0; 3])
                    {
                        return Err(bad(format!("request type {type_} cannot carry state")));
                    }
                    match self.handle_request(payload, &mut props) {
                        Reply::Status(Status::Ok) => {}
                        Reply::Status(status) => {
                            return Err(StateError::Refused {
                                index,
                                type_,
                                status,
                            })
                        }
                        Reply::Ignore => {
                            return Err(bad(format!(
                                "request type {type_} of {} bytes was not recognised",
                                payload.len()
                            )))
                        }
                    }
                }
                REC_ENDPOINT => {
                    let e = U32::read_from_bytes(payload)
                        .map_err(|_| bad("ENDPOINT record is not 4 bytes".into()))?
                        .get();
                    if !self.cfg.endpoints.contains(e) {
                        return Err(bad(format!("endpoint {e} is not served here")));
                    }
                    if !self.endpoint_room(e) {
                        return Err(bad(format!("more than {MAX_ENDPOINT_RECORDS} endpoints")));
                    }
                    self.endpoints.entry(e).or_insert(None);
                }
                REC_PAGE_REQUEST => {
                    let s = PageRequestState::read_from_bytes(payload)
                        .map_err(|_| bad("PAGE_REQUEST record is not 24 bytes".into()))?;
                    self.restore_page_request(&s).map_err(bad)?;
                }
                REC_EVENT => self.restore_event(payload).map_err(bad)?,
                REC_BYPASS => match payload {
                    [v @ (0 | 1)] => {
                        if self.features() & (1 << F_BYPASS_CONFIG) == 0 {
                            return Err(bad("BYPASS record without BYPASS_CONFIG".into()));
                        }
                        self.bypass = *v;
                    }
                    _ => return Err(bad("BYPASS record is not one byte 0 or 1".into())),
                },
                REC_GENERATION => {
                    if index != 0 || payload.len() != 8 {
                        return Err(bad(
                            "GENERATION record is not the first record of 8 bytes".into()
                        ));
                    }
                }
                REC_RING => {
                    if h.flags.get() & STATE_F_PASSES == 0 || payload.len() != RING_RECORD {
                        return Err(bad("RING record outside a journal, or not 32 bytes".into()));
                    }
                }
                REC_PASS => {
                    if h.flags.get() & STATE_F_PASSES == 0 {
                        return Err(bad("PASS record in a stream without passes".into()));
                    }
                    self.resumed_pass = Some(Pass::decode(payload).map_err(bad)?);
                    // Still the last pass until the driver submits more.
                    self.last_pass = Some(payload.to_vec());
                }
                REC_FEATURES => {
                    let f = U64::read_from_bytes(payload)
                        .map_err(|_| bad("FEATURES record is not 8 bytes".into()))?
                        .get();
                    self.check_features(f)?;
                    self.acked = Some(f);
                }
                other => return Err(bad(format!("unknown record kind {other}"))),
            }
        }
        Ok(StateSummary {
            records: parsed.records.len(),
            domains: self.domains.len(),
            mappings: self.total_mappings,
            endpoints: self.endpoints.len(),
            events: self.pending_events.len(),
        })
    }

    fn restore_page_request(&mut self, s: &PageRequestState) -> Result<(), String> {
        let (endpoint, grpid) = (s.endpoint.get(), s.grpid.get());
        if !self.acked(F_PAGE_REQUEST) {
            return Err("a page request, but PAGE_REQUEST was not negotiated".into());
        }
        if !self.cfg.endpoints.contains(endpoint) {
            return Err(format!(
                "page request of endpoint {endpoint}, not served here"
            ));
        }
        if grpid as usize >= MAX_PAGE_REQUEST_GROUPS || s.flags.get() & !1 != 0 {
            return Err(format!("page request group {grpid} or flags out of range"));
        }
        let pasid = (s.flags.get() & 1 != 0).then(|| s.pasid.get());
        if pasid.is_some_and(|p| u64::from(p) >> self.cfg.pasid_bits != 0) {
            return Err("page request PASID wider than pasid-bits".into());
        }
        if s.address.get() & 0xfff != 0 {
            return Err("page request address not page aligned".into());
        }
        if self.page_requests.contains_key(&(endpoint, grpid)) {
            return Err(format!(
                "page request group {grpid} of endpoint {endpoint} twice"
            ));
        }
        self.page_requests.insert(
            (endpoint, grpid),
            PageRequest {
                pasid,
                address: s.address.get(),
                host_cookie: None,
            },
        );
        Ok(())
    }

    fn restore_event(&mut self, payload: &[u8]) -> Result<(), String> {
        if self.pending_events.len() >= PENDING_EVENTS_MAX {
            return Err(format!("more than {PENDING_EVENTS_MAX} pending events"));
        }
        let ev = match payload.len() {
            FAULT_RECORD_SIZE => {
                let r = FaultRecord::read_from_bytes(payload).map_err(|_| "fault record")?;
                let known = FAULT_F_READ
                    | FAULT_F_WRITE
                    | FAULT_F_EXEC
                    | FAULT_F_PRIV
                    | FAULT_F_ADDRESS
                    | FAULT_F_PASID_VALID;
                // With PASID_VALID the PASID sits where the standard record has reserved bytes.
                let pasid = u32::from_le_bytes(r.reserved2);
                let pasid_ok = if r.flags.get() & FAULT_F_PASID_VALID != 0 {
                    u64::from(pasid) >> self.cfg.pasid_bits == 0
                } else {
                    pasid == 0
                };
                if r.reason > FAULT_R_MAPPING
                    || r.reserved != [0; 3]
                    || !pasid_ok
                    || r.flags.get() & !known != 0
                {
                    return Err("fault record with an unknown reason, flag or reserved bits".into());
                }
                if !self.cfg.endpoints.contains(r.endpoint.get()) {
                    return Err(format!("fault record of endpoint {}", r.endpoint.get()));
                }
                EventRecord::new(payload, r.endpoint.get(), r.address.get(), None)
            }
            PAGE_REQUEST_RECORD_SIZE => {
                let r = PageRequestRecord::read_from_bytes(payload)
                    .map_err(|_| "page-request record")?;
                let key = (r.endpoint.get(), r.grpid.get());
                let known = self.page_requests.get(&key).is_some_and(|p| {
                    p.address == r.address.get() && p.pasid.unwrap_or(0) == r.pasid.get()
                });
                if r.reason != FAULT_R_PAGE_REQUEST || !known {
                    return Err("page-request record without its outstanding group".into());
                }
                EventRecord::new(payload, key.0, r.address.get(), Some(key.1))
            }
            n => return Err(format!("event record of {n} bytes")),
        };
        self.pending_events.push_back(ev);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeviceConfig;
    // The configuration of the device model's rule tests.
    use crate::device::tests::cfg;
    use crate::device::{Access, Translation};

    fn fresh() -> Device {
        Device::new(cfg())
    }

    fn dev() -> Device {
        let mut d = fresh();
        let f = d.features();
        d.set_acked_features(f);
        d
    }

    fn ok(d: &mut Device, req: &[u8]) {
        let mut props = vec![0u8; d.config().probe_size as usize];
        assert_eq!(
            d.handle_request(req, &mut props),
            Reply::Status(Status::Ok),
            "{req:?}"
        );
    }

    fn map(domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Vec<u8> {
        let b = MapBody {
            domain: domain.into(),
            virt_start: start.into(),
            virt_end: end.into(),
            phys_start: phys.into(),
            flags: flags.into(),
        };
        request(T_MAP, b.as_bytes())
    }

    fn probe(endpoint: u32) -> Vec<u8> {
        let mut v = request(T_PROBE, &endpoint.to_le_bytes());
        v.extend([0u8; 64]);
        v
    }

    /// A device with every kind of state the standard requests and ATTACH_PASID can build.
    fn populated() -> Device {
        let mut d = dev();
        ok(&mut d, &attach_req(1, 0, 0));
        ok(&mut d, &attach_req(1, 1, 0));
        ok(&mut d, &map(1, 0x1000, 0x1fff, 0x8000, MAP_F_READ));
        ok(
            &mut d,
            &map(
                1,
                0x10_0000,
                0x2f_ffff,
                0x4000_0000,
                MAP_F_READ | MAP_F_WRITE,
            ),
        );
        ok(
            &mut d,
            &map(
                1,
                0x3000_0000,
                0x3000_0fff,
                0xc000_0000,
                MAP_F_WRITE | MAP_F_MMIO,
            ),
        );
        ok(&mut d, &attach_req(2, 2, ATTACH_F_BYPASS));
        ok(&mut d, &attach_req(3, 3, 0));
        ok(&mut d, &map(3, 0x5000, 0x5fff, 0x6000, MAP_F_WRITE));
        // Domain 4: created through endpoint 4, then held only by (endpoint, PASID) pairs.
        ok(&mut d, &attach_req(4, 4, 0));
        ok(&mut d, &map(4, 0x7000, 0x7fff, 0xa000, MAP_F_READ));
        ok(&mut d, &pasid_req(T_ATTACH_PASID, 4, 4, 7));
        ok(&mut d, &pasid_req(T_ATTACH_PASID, 4, 0, 9));
        ok(&mut d, &attach_req(3, 4, 0));
        ok(&mut d, &probe(5));
        ok(&mut d, &attach_req(6, 6, 0));
        ok(
            &mut d,
            &request(
                T_DETACH,
                DetachBody {
                    domain: 6.into(),
                    endpoint: 6.into(),
                    reserved: [0; 8],
                }
                .as_bytes(),
            ),
        );
        assert!(d.write_config(CONFIG_BYPASS_OFFSET, &[1]));
        // A fault waiting for the event queue.
        assert!(matches!(
            d.translate(0, 0x1000, Access::Write),
            Ok(Translation::Fault { .. })
        ));
        d
    }

    /// Everything a guest can observe, as a comparable value.
    fn observe(d: &mut Device) -> String {
        let mut s = format!(
            "acked {:?} bypass {} endpoints {:?} pasids {:?}\n",
            d.acked_features(),
            d.bypass(),
            d.endpoint_list().collect::<Vec<_>>(),
            d.pasid_attach_list().collect::<Vec<_>>()
        );
        for (id, bypass, eps, n) in d.domain_list() {
            let maps: Vec<_> = d
                .domain_mappings(id)
                .map(|t| t.iter().collect())
                .unwrap_or_default();
            s += &format!("domain {id} bypass {bypass} endpoints {eps:?} {n} {maps:?}\n");
        }
        let events: Vec<Vec<u8>> = d
            .pending_events
            .iter()
            .map(|e| e.bytes().to_vec())
            .collect();
        s += &format!("events {events:?}\n");
        for ep in 0..8 {
            for iova in [0x1000, 0x10_0800, 0x5000, 0x7000, 0x3000_0000, 0x9000] {
                for a in [Access::Read, Access::Write] {
                    s += &format!("{ep} {iova:#x} {a:?} {:?}\n", d.translate(ep, iova, a));
                }
            }
        }
        s
    }

    #[test]
    fn save_then_load_gives_the_same_device() {
        let src = populated();
        let bytes = src.save_state();
        let mut dst = fresh();
        let summary = dst.load_state(&bytes).expect("load");
        assert_eq!(summary.domains, 4);
        assert_eq!(summary.mappings, 5);
        assert_eq!(summary.events, 1);
        // The stream is canonical: the loaded device saves the same bytes.
        assert_eq!(dst.save_state(), bytes);
        let mut src = src;
        assert_eq!(observe(&mut dst), observe(&mut src));
        // Replayed requests are not counted as the guest's.
        assert_eq!(dst.stats().requests, fresh().stats().requests);
    }

    #[test]
    fn a_pending_fault_of_pasid_traffic_survives() {
        let mut d = dev();
        ok(&mut d, &attach_req(4, 4, 0));
        ok(&mut d, &pasid_req(T_ATTACH_PASID, 4, 4, 7));
        assert!(matches!(
            d.translate_pasid(4, Some(7), 0x1000, Access::Read, false),
            Ok(Translation::Fault { .. })
        ));
        let bytes = d.save_state();
        let mut e = fresh();
        assert_eq!(e.load_state(&bytes).map(|s| s.events), Ok(1));
        assert_eq!(e.save_state(), bytes);
    }

    #[test]
    fn a_reset_device_saves_a_loadable_empty_state() {
        let d = fresh();
        let bytes = d.save_state();
        let mut e = fresh();
        assert_eq!(e.load_state(&bytes), Ok(StateSummary::default()));
        assert_eq!(e.acked_features(), None);
    }

    fn assert_pristine(d: &mut Device) {
        assert!(d.is_pristine());
        assert_eq!(d.acked_features(), None);
        assert_eq!(d.bypass(), 0);
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_refused_without_state() {
        let bytes = populated().save_state();
        for len in 0..bytes.len() {
            let mut d = fresh();
            assert!(d.load_state(&bytes[..len]).is_err(), "truncated to {len}");
            assert_pristine(&mut d);
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            let mut d = fresh();
            assert!(d.load_state(&flipped).is_err(), "bit flip at {i}");
            assert_pristine(&mut d);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            fresh().load_state(&longer),
            Err(StateError::Record { .. })
        ));
    }

    /// A stream with a valid checksum whose records are hostile: each is refused with a precise
    /// error and leaves nothing behind.
    #[test]
    fn hostile_records_with_valid_checksums() {
        let d = dev();
        let stream = |recs: &[(u8, Vec<u8>)]| {
            let mut out = d.state_header().as_bytes().to_vec();
            for (k, p) in recs {
                push_record(&mut out, *k, p);
            }
            push_end(&mut out, recs.len());
            out
        };
        type Records = Vec<(u8, Vec<u8>)>;
        let cases: Vec<(&str, Records, StateError)> = vec![
            (
                "MAP before its domain exists",
                vec![(REC_REQUEST, map(1, 0, 0xfff, 0, MAP_F_READ))],
                StateError::Refused {
                    index: 0,
                    type_: T_MAP,
                    status: Status::NoEnt,
                },
            ),
            (
                "overlapping MAPs",
                vec![
                    (REC_REQUEST, attach_req(1, 0, 0)),
                    (REC_REQUEST, map(1, 0, 0x1fff, 0, MAP_F_READ)),
                    (REC_REQUEST, map(1, 0x1000, 0x1fff, 0, MAP_F_READ)),
                ],
                StateError::Refused {
                    index: 2,
                    type_: T_MAP,
                    status: Status::Inval,
                },
            ),
            (
                "an endpoint this daemon does not serve",
                vec![(REC_REQUEST, attach_req(1, 99, 0))],
                StateError::Refused {
                    index: 0,
                    type_: T_ATTACH,
                    status: Status::NoEnt,
                },
            ),
            (
                "PROBE carries no state",
                vec![(REC_REQUEST, probe(1))],
                StateError::Record {
                    index: 0,
                    reason: "request type 5 cannot carry state".into(),
                },
            ),
            (
                "short request",
                vec![(REC_REQUEST, attach_req(1, 0, 0)[..10].to_vec())],
                StateError::Record {
                    index: 0,
                    reason: "request type 1 of 10 bytes was not recognised".into(),
                },
            ),
            (
                "unknown record kind",
                vec![(REC_REQUEST, attach_req(1, 0, 0)), (10, vec![])],
                StateError::Record {
                    index: 1,
                    reason: "unknown record kind 10".into(),
                },
            ),
            (
                "a PASS record in a migration stream",
                vec![(REC_PASS, vec![0; 4])],
                StateError::Record {
                    index: 0,
                    reason: "PASS record in a stream without passes".into(),
                },
            ),
            (
                "a RING record in a migration stream",
                vec![(REC_RING, vec![0; RING_RECORD])],
                StateError::Record {
                    index: 0,
                    reason: "RING record outside a journal, or not 32 bytes".into(),
                },
            ),
            (
                "an endpoint record out of range",
                vec![(REC_ENDPOINT, 16u32.to_le_bytes().to_vec())],
                StateError::Record {
                    index: 0,
                    reason: "endpoint 16 is not served here".into(),
                },
            ),
            (
                "a page-request event without its group",
                vec![(REC_EVENT, vec![FAULT_R_PAGE_REQUEST; 32])],
                StateError::Record {
                    index: 0,
                    reason: "page-request record without its outstanding group".into(),
                },
            ),
            (
                "a fault record with reserved bits",
                vec![(REC_EVENT, {
                    let mut v = vec![0u8; 24];
                    v[0] = FAULT_R_MAPPING;
                    v[2] = 1;
                    v
                })],
                StateError::Record {
                    index: 0,
                    reason: "fault record with an unknown reason, flag or reserved bits".into(),
                },
            ),
            (
                "a config bypass byte of 2",
                vec![(REC_BYPASS, vec![2])],
                StateError::Record {
                    index: 0,
                    reason: "BYPASS record is not one byte 0 or 1".into(),
                },
            ),
        ];
        for (what, recs, want) in cases {
            let mut e = fresh();
            assert_eq!(e.load_state(&stream(&recs)), Err(want), "{what}");
            assert_pristine(&mut e);
        }
    }

    #[test]
    fn incompatible_configuration_or_busy_device_is_refused() {
        let bytes = populated().save_state();
        let mut other = Device::new(DeviceConfig {
            domain_end: 500,
            ..cfg()
        });
        assert_eq!(
            other.load_state(&bytes),
            Err(StateError::Incompatible {
                field: "domain-end",
                saved: 1000,
                ours: 500
            })
        );
        let mut busy = dev();
        ok(&mut busy, &attach_req(1, 0, 0));
        assert_eq!(busy.load_state(&bytes), Err(StateError::NotPristine));
        assert_eq!(busy.domain_list().count(), 1);
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert_eq!(fresh().load_state(&v2), Err(StateError::Version(2)));
    }

    #[test]
    fn journal_keeps_whole_records_and_drops_a_torn_tail() {
        let mut j = dev().save_state();
        push_record(&mut j, REC_REQUEST, &attach_req(1, 0, 0));
        push_record(&mut j, REC_REQUEST, &map(1, 0, 0xfff, 0x1000, MAP_F_READ));
        let whole = j.len();
        push_record(
            &mut j,
            REC_REQUEST,
            &map(1, 0x1000, 0x1fff, 0x1000, MAP_F_READ),
        );
        let torn = &j[..j.len() - 3];
        let p = parse_state(torn, StreamKind::Journal).expect("journal");
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.used, whole);
        let mut d = fresh();
        let s = d.apply_state(&p).expect("apply");
        assert_eq!((s.domains, s.mappings), (1, 1));
        // A migration stream may not have records after END.
        assert!(parse_state(torn, StreamKind::Migration).is_err());
    }
}
