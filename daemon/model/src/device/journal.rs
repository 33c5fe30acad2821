//! The restart journal's side of the device state (docs/STATE.md, "Restart"): the
//! `StateJournal` the daemon implements, the request worker's passes (PASS records), the
//! driver's request queue as the journal's identity (RING records), and the device's methods
//! that write the journal and resume it after a restart.

use zerocopy::little_endian::U64;
use zerocopy::FromBytes;

use super::state::*;
use super::Device;
use crate::protocol::*;

/// One pass of the request worker over the request queue (a PASS record): the chains it took
/// from the available ring, from index `avail_start` on, with the length each reply has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pass {
    pub avail_start: u16,
    /// (head descriptor, used length), in the order they were taken.
    pub chains: Vec<(u16, u32)>,
}

/// Most chains one pass holds (a queue of at most this many descriptors).
pub const PASS_MAX_CHAINS: usize = 4096;

impl Pass {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + 8 * self.chains.len());
        v.extend_from_slice(&self.avail_start.to_le_bytes());
        v.extend_from_slice(&(self.chains.len() as u16).to_le_bytes());
        for &(head, len) in &self.chains {
            v.extend_from_slice(&head.to_le_bytes());
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&len.to_le_bytes());
        }
        v
    }

    pub fn decode(payload: &[u8]) -> Result<Pass, String> {
        let (Some(start), Some(count)) = (payload.get(0..2), payload.get(2..4)) else {
            return Err("PASS record shorter than 4 bytes".into());
        };
        let avail_start = u16::from_le_bytes([start[0], start[1]]);
        let count = usize::from(u16::from_le_bytes([count[0], count[1]]));
        if count > PASS_MAX_CHAINS || payload.len() != 4 + 8 * count {
            return Err(format!(
                "PASS record of {} bytes for {count} chains",
                payload.len()
            ));
        }
        let mut chains = Vec::with_capacity(count);
        for c in payload[4..].chunks_exact(8) {
            if c[2..4] != [0, 0] {
                return Err("reserved bytes of a PASS entry are not 0".into());
            }
            chains.push((
                u16::from_le_bytes([c[0], c[1]]),
                u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            ));
        }
        Ok(Pass {
            avail_start,
            chains,
        })
    }
}

/// Where the device keeps its state as it changes: the daemon's restart journal (`--state-dir`,
/// docs/STATE.md "Restart"). The device writes a snapshot (a stream of [`StreamKind::Journal`]
/// whose first record is the generation) and then one record per accepted change; the journal
/// says when the records outweigh the snapshot and a new one is due. Write errors are the
/// journal's to report: the device carries on without it.
pub trait StateJournal: Send + std::fmt::Debug {
    /// What to name in messages (the file path).
    fn describe(&self) -> String;
    /// The generation the next snapshot carries.
    fn next_generation(&self) -> u64;
    /// Queue one record (written at the next [`Self::flush`]).
    fn append(&mut self, kind: u8, payload: &[u8]);
    /// Write the queued records.
    fn flush(&mut self);
    /// The records since the last snapshot outweigh it.
    fn wants_compaction(&self) -> bool;
    /// Replace the content with `snapshot`, atomically with respect to a crash.
    fn rewrite(&mut self, snapshot: &[u8]);
}

/// Record kinds this version reads (END aside).
pub fn known_record_kind(kind: u8) -> bool {
    (REC_REQUEST..=REC_RING).contains(&kind)
}

/// Bytes of a RING record.
pub const RING_RECORD: usize = 32;

fn describe_ring(rec: &[u8]) -> String {
    let at = |o: usize| {
        rec.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let size = rec
        .get(24..26)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    format!(
        "at descriptors {:#x}, available {:#x}, used {:#x}, size {size}",
        at(0),
        at(8),
        at(16)
    )
}

/// In a journal with passes, drop the REQUEST records after the last PASS record (or after the
/// snapshot, with none): the write of a pass that a crash cut short, whose statuses the driver
/// never saw; the restarted daemon reads those requests from the queue again.
pub fn drop_unfinished_pass(parsed: &mut ParsedState<'_>) {
    if parsed.header.flags.get() & STATE_F_PASSES == 0 {
        return;
    }
    // The snapshot is whole (it ends with END); appended records count up to the last PASS.
    let boundary = parsed
        .records
        .iter()
        .rposition(|&(kind, _)| kind == REC_PASS)
        .filter(|&i| i >= parsed.snapshot_records)
        .map_or(parsed.snapshot_records, |i| i + 1);
    let before = parsed.records.len();
    let mut index = 0;
    parsed.records.retain(|&(kind, _)| {
        let keep = index < boundary || kind != REC_REQUEST;
        index += 1;
        keep
    });
    let dropped = before - parsed.records.len();
    if dropped > 0 {
        log::warn!(
            "state journal: {dropped} request records of a pass the previous process did not \
             finish writing dropped (the driver saw none of their statuses; they are read \
             from the request queue again)"
        );
    }
}

/// The generation of a journal snapshot (its GENERATION record; 0 without one).
pub fn journal_generation(parsed: &ParsedState<'_>) -> u64 {
    match parsed.records.first() {
        Some(&(REC_GENERATION, payload)) => U64::read_from_bytes(payload).map_or(0, |g| g.get()),
        _ => 0,
    }
}

impl Device {
    // --- The restart journal (docs/STATE.md, "Restart") ------------------------------------

    /// Keep the state in `journal` from now on. `saved` is what the journal held: the state of
    /// a previous run, resumed if the next driver carries on (see [`Device::resume_state`]).
    pub fn set_journal(&mut self, journal: Box<dyn StateJournal>, saved: Vec<u8>) {
        // Records that say where the driver was, not what it built, are no state to resume.
        let holds_state = |p: &ParsedState<'_>| {
            p.records
                .iter()
                .any(|&(k, _)| !matches!(k, REC_GENERATION | REC_RING | REC_PASS))
        };
        self.resume = match parse_state(&saved, StreamKind::Journal) {
            Ok(p) if holds_state(&p) => {
                log::info!(
                    "state journal {}: {} records of a previous run, resumed if the driver carries on",
                    journal.describe(),
                    p.records.len()
                );
                Some(saved)
            }
            Ok(_) => None,
            Err(e) => {
                if !saved.is_empty() {
                    log::warn!(
                        "state journal {}: {e}; starting without it",
                        journal.describe()
                    );
                }
                None
            }
        };
        self.journal = Some(journal);
        self.journal_snapshot();
        if self.resume.is_none() {
            // Nothing to resume: host objects of a previous run can go now.
            self.backend.resumed(false);
        }
    }

    /// Is a previous run's state waiting for the driver?
    pub fn has_resume_state(&self) -> bool {
        self.resume.is_some()
    }

    /// The driver of a new connection has started. If it carries on from before the restart
    /// (its request queue did not start over at 0), restore the journaled state; otherwise it
    /// is a new driver and the old state is dropped. Either way the journal follows the device
    /// from here on.
    pub fn resume_state(
        &mut self,
        driver_continues: bool,
    ) -> Option<Result<StateSummary, StateError>> {
        let data = self.resume.take()?;
        if !driver_continues {
            log::info!("a new driver started: the journaled state of the previous run is dropped");
            self.resumed_pass = None;
            self.journal_snapshot();
            self.backend.resumed(false);
            return None;
        }
        let acked = self.acked;
        let result = parse_state(&data, StreamKind::Journal).and_then(|mut p| {
            drop_unfinished_pass(&mut p);
            self.check_ring(&p)?;
            self.apply_state(&p)
        });
        // The features this connection negotiated are the ones in force.
        if acked.is_some() {
            self.acked = acked;
        }
        self.sync_unattached_bypass();
        self.journal_snapshot();
        // The backend's host objects are complete: it can move its devices onto them.
        self.backend.resumed(result.is_ok());
        Some(result)
    }

    /// Drop a journaled state nobody resumed (its frontend went away).
    pub fn discard_resume_state(&mut self) {
        if self.resume.take().is_some() {
            log::info!("the journaled state was not resumed: dropped");
            self.journal_snapshot();
            self.backend.resumed(false);
        }
    }

    /// Journal an accepted request (head and the body its type defines).
    pub(super) fn journal_request(&mut self, type_: u8, req: &[u8]) {
        let body = match type_ {
            T_ATTACH => std::mem::size_of::<AttachBody>(),
            T_DETACH => std::mem::size_of::<DetachBody>(),
            T_MAP => std::mem::size_of::<MapBody>(),
            T_UNMAP => std::mem::size_of::<UnmapBody>(),
            T_ATTACH_TABLE => std::mem::size_of::<AttachTableBody>(),
            T_DETACH_TABLE => std::mem::size_of::<DetachTableBody>(),
            T_ATTACH_PASID | T_DETACH_PASID => std::mem::size_of::<PasidAttachBody>(),
            _ => return,
        };
        if let Some(r) = req.get(..HEAD_SIZE + body) {
            let mut rec = r.to_vec();
            // The head's reserved bytes are the driver's; the journal's are 0.
            rec[1..HEAD_SIZE].fill(0);
            self.journal_record(REC_REQUEST, &rec);
        }
    }

    pub(super) fn journal_record(&mut self, kind: u8, payload: &[u8]) {
        if self.resume.is_some() {
            return;
        }
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        j.append(kind, payload);
        // Requests are written per pass (Device::journal_pass), and a new snapshot waits for
        // the end of the pass (it carries the pass's PASS record); other changes at once.
        if kind == REC_REQUEST {
            return;
        }
        j.flush();
        self.compact_if_due();
    }

    /// The records since the last snapshot outweigh it: write the state afresh, so the journal
    /// stays within about twice the state (plus a minimum), however long the guest keeps
    /// mapping and unmapping.
    fn compact_if_due(&mut self) {
        if self.journal.as_ref().is_some_and(|j| j.wants_compaction()) {
            self.journal_snapshot();
        }
    }

    /// End a pass of the request worker: the pass took `chains` (head, used length) from the
    /// available ring starting at `avail_start`. Its REQUEST records and its PASS record are
    /// written with one write(2), before the worker publishes any of its statuses; the used
    /// entries a crash keeps from the driver are published by the next process
    /// ([`Device::take_resumed_pass`]), never handled twice. Without a journal: nothing.
    pub fn journal_pass(&mut self, avail_start: u16, chains: &[(u16, u32)]) {
        if self.resume.is_some() || self.journal.is_none() || chains.is_empty() {
            self.journal_flush();
            return;
        }
        let pass = Pass {
            avail_start,
            chains: chains.to_vec(),
        }
        .encode();
        if let Some(j) = self.journal.as_mut() {
            j.append(REC_PASS, &pass);
            j.flush();
        }
        self.last_pass = Some(pass);
        self.compact_if_due();
    }

    /// Where this connection's driver keeps its request queue (guest addresses and size): the
    /// identity a journal is checked against before it is resumed, and journaled for the next
    /// process.
    pub fn set_ring_identity(&mut self, desc: u64, avail: u64, used: u64, size: u16) {
        let mut rec = [0u8; RING_RECORD];
        rec[0..8].copy_from_slice(&desc.to_le_bytes());
        rec[8..16].copy_from_slice(&avail.to_le_bytes());
        rec[16..24].copy_from_slice(&used.to_le_bytes());
        rec[24..26].copy_from_slice(&size.to_le_bytes());
        if self.ring != Some(rec) {
            self.ring = Some(rec);
            self.journal_record(REC_RING, &rec);
        }
    }

    /// A journal's request queue (its last RING record) must be this driver's.
    fn check_ring(&self, parsed: &ParsedState<'_>) -> Result<(), StateError> {
        let saved = parsed
            .records
            .iter()
            .rev()
            .find(|&&(kind, _)| kind == REC_RING)
            .map(|&(_, p)| p);
        match (saved, &self.ring) {
            (Some(saved), Some(current)) if saved != current.as_slice() => {
                Err(StateError::OtherDriver {
                    saved: describe_ring(saved),
                    current: describe_ring(current),
                })
            }
            _ => Ok(()),
        }
    }

    /// The last pass of the previous process, found in the journal just resumed.
    pub fn take_resumed_pass(&mut self) -> Option<Pass> {
        self.resumed_pass.take()
    }

    /// Write the journal records of the requests handled since the last call. The request
    /// worker calls it before the statuses of a batch reach the driver.
    pub fn journal_flush(&mut self) {
        if let Some(j) = self.journal.as_mut() {
            j.flush();
        }
    }

    /// Write the whole current state as the journal's new content.
    pub(super) fn journal_snapshot(&mut self) {
        if self.resume.is_some() {
            return;
        }
        let Some(generation) = self.journal.as_ref().map(|j| j.next_generation()) else {
            return;
        };
        let snap = self.save_state_as(Some(generation));
        if let Some(j) = self.journal.as_mut() {
            j.rewrite(&snap);
        }
    }
}
