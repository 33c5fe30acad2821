//! Guest RAM on the host, and the guest's mappings as pieces of it in the kernel.
//!
//! The vhost-user memory table can change while mappings exist (guest RAM hot-plug and
//! hot-unplug, a VMM rebuilding its table). The guest's mappings are guest-visible state: they
//! stay in the device's tables. But an IOAS must never keep RAM the VMM took away pinned or
//! reachable by host DMA. So the backend keeps, for every guest mapping with access, the pieces
//! the kernel holds (one IOAS_MAP each) and what backs each piece (the memfd's inode and offset,
//! or the daemon's address when mapping by address). On a new memory table:
//! - a piece whose guest-physical range is no longer backed by the same file and offset is
//!   unmapped (from the domain IOASes and from stage 2);
//! - the parts of guest mappings that have RAM behind them again (the region came back, or new
//!   RAM at that guest-physical address) are mapped again;
//! - pieces whose backing did not change are not touched (adding a region disturbs nothing).
//!
//! A kernel refusal is logged and counted; the bookkeeping always says what is in the kernel
//! (a piece that could not be unmapped stays recorded and is retried on the next change).

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;

use iommufd_sys as sys;
use log::{info, warn};
use model::host::{BackendError, GuestRegion};
use model::protocol::{MAP_F_MMIO, MAP_F_READ, MAP_F_WRITE};
use serde_json::{json, Value};

use super::ids::{os_err, DomainId, IoasId};
use super::ioas;
use super::pieces::{gaps, parts, still_backed, Backing, MemStats, Pieces};
pub use super::pieces::{is_ram, HostMap, Piece, Ram};

/// IOAS_UNMAP of exactly one piece; ENOENT (already gone) counts as done.
fn unmap_piece(fd: BorrowedFd<'_>, ioas: IoasId, p: &Piece) -> Result<(), sys::SysError> {
    match ioas::unmap(fd, ioas, p.iova, p.len) {
        Ok(_) => Ok(()),
        Err(e) if e.errno == libc::ENOENT => Ok(()),
        Err(e) => Err(e),
    }
}

/// A domain's guest mappings as its IOAS holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mappings {
    /// Guest mappings with access, by first IOVA.
    pub maps: BTreeMap<u64, HostMap>,
    /// Pieces a failed MAP could not take back (no guest mapping owns them); retried on every
    /// memory-table change, gone with an UNMAP over them or with the domain.
    pub orphans: Vec<Piece>,
}

/// A MAP domain as a memory-table change walks it: its id (for logs), IOAS and mappings.
#[derive(Debug)]
pub struct DomainMaps<'a> {
    pub id: DomainId,
    pub ioas: IoasId,
    pub maps: &'a mut Mappings,
}

/// Work for the second half of a memory-table change: (index in the domains, mapping key,
/// prot, the ranges `(iova, gpa, len)` to map).
type Remap = (usize, u64, u32, Vec<(u64, u64, u64)>);

/// Guest RAM on the host: the memory table and what the stage-2 IOAS holds of it.
#[derive(Debug)]
pub struct GuestRam {
    pub memory: Vec<Ram>,
    /// The IOAS_MAPs of the stage-2 IOAS (what the kernel holds).
    pub stage2: Vec<Piece>,
    /// What memory-table changes did (control socket).
    pub stats: MemStats,
    /// Map guest RAM by file (IOAS_MAP_FILE, Linux 6.13) rather than by address; cleared when
    /// the kernel does not know the call.
    pub map_file: bool,
}

impl Default for GuestRam {
    fn default() -> GuestRam {
        GuestRam {
            memory: Vec::new(),
            stage2: Vec::new(),
            stats: MemStats::default(),
            map_file: true,
        }
    }
}

/// Guest RAM clipped to the IOVA ranges the host devices accept (the stage-2 pieces).
pub fn pieces_for(memory: &[Ram], allowed: &[(u64, u64)]) -> Vec<Piece> {
    let mut out = Vec::new();
    for r in memory {
        let Some(last) = r.gpa.checked_add(r.size.saturating_sub(1)) else {
            continue;
        };
        if r.size == 0 {
            continue;
        }
        for &(s, e) in allowed {
            let (ps, pe) = (r.gpa.max(s), last.min(e));
            if ps > pe {
                continue;
            }
            out.push(Piece {
                iova: ps,
                len: pe - ps + 1,
                gpa: ps,
                backing: r.backing.at(ps - r.gpa),
            });
        }
    }
    out
}

impl GuestRam {
    /// Take the regions of a new memory table (files duplicated as needed).
    pub fn regions(&self, regions: &[GuestRegion]) -> Vec<Ram> {
        regions.iter().map(|r| Ram::new(r, self.map_file)).collect()
    }

    /// IOAS_MAP guest-physical `[phys, phys + len)` at `iova` in `ioas`. By file when the region
    /// has one: the IOAS then refers to the memfd's pages, not to an address in this process
    /// that a later memory table could unmap and reuse; by address otherwise. Returns what the
    /// new mapping refers to.
    pub fn map_guest(
        &mut self,
        fd: BorrowedFd<'_>,
        ioas: IoasId,
        iova: u64,
        phys: u64,
        len: u64,
        prot: u32,
    ) -> Result<Backing, BackendError> {
        let not_ram = BackendError::NotGuestRam {
            start: phys,
            end: phys.saturating_add(len - 1),
        };
        let last = phys.checked_add(len - 1).ok_or(not_ram.clone())?;
        let ram = self
            .memory
            .iter()
            .find(|r| phys >= r.gpa && last - r.gpa < r.size)
            .ok_or(not_ram)?;
        let off = phys - ram.gpa;
        let host = ram.host + off;
        if self.map_file {
            if let Some((file, start)) = ram.file() {
                match ioas::map_file(fd, ioas, iova, file, start + off, len, prot) {
                    Ok(()) => return Ok(ram.backing.at(off)),
                    Err(e) if e.errno == libc::ENOTTY || e.errno == libc::EOPNOTSUPP => {
                        warn!("{e}: mapping guest RAM by address from now on");
                        self.map_file = false;
                    }
                    Err(e) => return Err(os_err(e)),
                }
            }
        }
        ioas::map(fd, ioas, iova, host, len, prot).map_err(os_err)?;
        Ok(Backing::Addr(host))
    }

    /// Follow a new memory table: unmap what left guest RAM, keep what stayed, map what came
    /// back (module documentation), in the MAP `domains` and the `stage2` IOAS (clipped to the
    /// `allowed` IOVA ranges). Never fails: kernel refusals are logged and counted, and the
    /// bookkeeping says what the kernel holds.
    pub fn follow(
        &mut self,
        fd: BorrowedFd<'_>,
        new: Vec<Ram>,
        domains: &mut [DomainMaps<'_>],
        stage2: IoasId,
        allowed: &[(u64, u64)],
    ) {
        self.stats.tables += 1;
        // 1. Domain pieces whose RAM is no longer what they map.
        for d in domains.iter_mut() {
            let (id, ioas) = (d.id, d.ioas);
            for (iova, m) in d.maps.maps.iter_mut() {
                if m.pieces
                    .as_slice()
                    .iter()
                    .all(|p| still_backed(&new, p.gpa, p.len, p.backing))
                {
                    continue;
                }
                let mut keep = Vec::new();
                for p in m.pieces.as_slice() {
                    if still_backed(&new, p.gpa, p.len, p.backing) {
                        keep.push(*p);
                        continue;
                    }
                    match unmap_piece(fd, ioas, p) {
                        Ok(()) => self.stats.domain_unmapped += 1,
                        Err(e) => {
                            warn!(
                                "domain {id}: mapping {iova:#x}: cannot unmap {:#x}+{:#x} whose guest RAM left: {e}",
                                p.iova, p.len
                            );
                            self.stats.failures += 1;
                            keep.push(*p);
                        }
                    }
                }
                m.pieces = Pieces::from_vec(keep);
            }
            d.maps.orphans.retain(|p| unmap_piece(fd, ioas, p).is_err());
        }
        // 2. Stage 2: guest RAM at its guest-physical address, clipped to the host's ranges.
        let wanted = pieces_for(&new, allowed);
        let mut kept = Vec::with_capacity(wanted.len());
        for p in std::mem::take(&mut self.stage2) {
            if wanted.contains(&p) {
                kept.push(p);
                continue;
            }
            match unmap_piece(fd, stage2, &p) {
                Ok(()) => self.stats.stage2_unmapped += 1,
                Err(e) => {
                    warn!("stage-2 unmap {:#x}+{:#x}: {e}", p.iova, p.len);
                    self.stats.failures += 1;
                    kept.push(p);
                }
            }
        }
        self.memory = new;
        let rw = sys::IOMMU_IOAS_MAP_READABLE | sys::IOMMU_IOAS_MAP_WRITEABLE;
        for p in wanted {
            if kept.contains(&p) {
                continue;
            }
            if kept
                .iter()
                .any(|q| q.iova < p.iova + p.len && p.iova < q.iova + q.len)
            {
                warn!(
                    "stage-2 map of guest RAM {:#x}+{:#x}: a piece that could not be unmapped is in the way",
                    p.iova, p.len
                );
                self.stats.failures += 1;
                continue;
            }
            // Guest-physical == IOVA in the stage-2 IOAS.
            match self.map_guest(fd, stage2, p.iova, p.iova, p.len, rw) {
                Ok(backing) => {
                    self.stats.stage2_mapped += 1;
                    kept.push(Piece { backing, ..p });
                }
                Err(e) => {
                    warn!("stage-2 map of guest RAM {:#x}+{:#x}: {e}", p.iova, p.len);
                    self.stats.failures += 1;
                }
            }
        }
        kept.sort_by_key(|p| p.iova);
        self.stage2 = kept;
        // 3. Parts of guest mappings with RAM behind them again.
        let mut work: Vec<Remap> = Vec::new();
        for (i, d) in domains.iter().enumerate() {
            for (iova, m) in &d.maps.maps {
                let pieces = m.pieces.as_slice();
                let len = m.last - iova + 1;
                if pieces.iter().map(|p| p.len).sum::<u64>() == len {
                    continue;
                }
                let mut todo = Vec::new();
                for part in parts(&self.memory, m.phys, len) {
                    let first = iova + (part.gpa - m.phys);
                    let inside: Vec<Piece> = pieces
                        .iter()
                        .filter(|p| p.iova < first + part.len && first < p.iova + p.len)
                        .map(|p| {
                            // Clip to the part (a piece of another region may straddle it).
                            let s = p.iova.max(first);
                            let e = (p.iova + p.len).min(first + part.len);
                            Piece {
                                iova: s,
                                len: e - s,
                                ..*p
                            }
                        })
                        .collect();
                    for (g, glen) in gaps(first, first + part.len - 1, &inside) {
                        todo.push((g, part.gpa + (g - first), glen));
                    }
                }
                if !todo.is_empty() {
                    work.push((i, *iova, m.prot, todo));
                }
            }
        }
        for (i, key, prot, todo) in work {
            let Some(d) = domains.get_mut(i) else {
                continue;
            };
            let (id, ioas) = (d.id, d.ioas);
            let mut made = Vec::new();
            for (iova, gpa, len) in todo {
                match self.map_guest(fd, ioas, iova, gpa, len, prot) {
                    Ok(backing) => {
                        self.stats.domain_mapped += 1;
                        made.push(Piece {
                            iova,
                            len,
                            gpa,
                            backing,
                        });
                    }
                    Err(e) => {
                        warn!(
                            "domain {id}: mapping {key:#x}: cannot map {iova:#x}+{len:#x} again (guest RAM {gpa:#x}): {e}"
                        );
                        self.stats.failures += 1;
                    }
                }
            }
            if let Some(m) = d.maps.maps.get_mut(&key) {
                let mut all = m.pieces.as_slice().to_vec();
                all.extend(made);
                m.pieces = Pieces::from_vec(all);
            }
        }
        let s = self.stats;
        info!(
            "memory table {}: {} region(s); domain pieces unmapped {} / mapped {}, stage-2 pieces unmapped {} / mapped {}, failures {} (totals)",
            s.tables,
            self.memory.len(),
            s.domain_unmapped,
            s.domain_mapped,
            s.stage2_unmapped,
            s.stage2_mapped,
            s.failures
        );
    }

    /// Guest MAP of `[iova, end]` to `phys` with `flags` (MAP_F_*) in `domain`, whose IOAS is
    /// `ioas`. Without access nothing reaches the kernel (the range must still be guest RAM).
    pub fn map(
        &mut self,
        at: At<'_>,
        maps: &mut Mappings,
        iova: u64,
        end: u64,
        phys: u64,
        flags: u32,
    ) -> Result<(), BackendError> {
        if flags & MAP_F_MMIO != 0 {
            return Err(BackendError::Mmio);
        }
        let len = (end - iova)
            .checked_add(1)
            .ok_or(BackendError::NotGuestRam {
                start: phys,
                end: u64::MAX,
            })?;
        let mut prot = 0;
        if flags & MAP_F_READ != 0 {
            prot |= sys::IOMMU_IOAS_MAP_READABLE;
        }
        if flags & MAP_F_WRITE != 0 {
            prot |= sys::IOMMU_IOAS_MAP_WRITEABLE;
        }
        if prot == 0 {
            // No access allowed: nothing to put in the host page table (but the physical range
            // must still be guest RAM).
            if !is_ram(&self.memory, phys, len) {
                return Err(BackendError::NotGuestRam {
                    start: phys,
                    end: phys.saturating_add(len - 1),
                });
            }
            return Ok(());
        }
        let pieces = self.map_pieces(at, maps, iova, phys, len, prot)?;
        maps.maps.insert(
            iova,
            HostMap {
                last: end,
                phys,
                prot,
                pieces,
            },
        );
        Ok(())
    }

    /// Map guest MAP `[iova, iova + len) -> phys` in `at`'s IOAS, one IOAS_MAP per region the
    /// physical range meets (it must be entirely guest RAM). All or nothing: on a failure the
    /// pieces already mapped are unmapped again (one that will not go is kept as an orphan of
    /// the domain, and retried).
    fn map_pieces(
        &mut self,
        at: At<'_>,
        maps: &mut Mappings,
        iova: u64,
        phys: u64,
        len: u64,
        prot: u32,
    ) -> Result<Pieces, BackendError> {
        if !is_ram(&self.memory, phys, len) {
            return Err(BackendError::NotGuestRam {
                start: phys,
                end: phys.saturating_add(len.saturating_sub(1)),
            });
        }
        let mut done: Vec<Piece> = Vec::new();
        for part in parts(&self.memory, phys, len) {
            let piova = iova + (part.gpa - phys);
            match self.map_guest(at.fd, at.ioas, piova, part.gpa, part.len, prot) {
                Ok(backing) => done.push(Piece {
                    iova: piova,
                    len: part.len,
                    gpa: part.gpa,
                    backing,
                }),
                Err(e) => {
                    let left: Vec<Piece> = done
                        .iter()
                        .filter(|p| match unmap_piece(at.fd, at.ioas, p) {
                            Ok(()) => false,
                            Err(u) => {
                                warn!(
                                    "domain {}: cannot take back {:#x}+{:#x} of a failed MAP: {u}",
                                    at.domain, p.iova, p.len
                                );
                                true
                            }
                        })
                        .copied()
                        .collect();
                    maps.orphans.extend(left);
                    return Err(e);
                }
            }
        }
        Ok(Pieces::from_vec(done))
    }

    /// The connection went: guest RAM leaves stage 2 and the memory table is forgotten.
    pub fn release(&mut self, fd: BorrowedFd<'_>, stage2: IoasId) {
        for p in std::mem::take(&mut self.stage2) {
            if let Err(e) = ioas::unmap(fd, stage2, p.iova, p.len) {
                warn!("stage-2 unmap {:#x}+{:#x}: {e}", p.iova, p.len);
            }
        }
        self.memory.clear();
    }

    /// A domain's guest mappings (for the control socket): how many have access, the IOVA
    /// ranges of them with nothing in the kernel (no RAM behind them, or a kernel refusal), and
    /// pieces in the kernel that map RAM the memory table no longer has, or that no mapping
    /// owns (kernel refusals; retried on the next change).
    pub fn describe_maps(&self, d: &Mappings) -> Value {
        let mut unbacked = Vec::new();
        let mut stale = Vec::new();
        for (iova, m) in &d.maps {
            for (u, len) in m.unbacked(*iova) {
                unbacked.push(json!({"iova": u, "length": len, "gpa": m.phys + (u - iova)}));
            }
            for p in m.pieces.as_slice() {
                if !still_backed(&self.memory, p.gpa, p.len, p.backing) {
                    stale.push(json!({"iova": p.iova, "length": p.len, "gpa": p.gpa}));
                }
            }
        }
        for p in &d.orphans {
            stale.push(json!({"iova": p.iova, "length": p.len, "gpa": p.gpa, "orphan": true}));
        }
        json!({"with_access": d.maps.len(), "unbacked": unbacked, "stale": stale})
    }

    /// The stage-2 pieces and the guest RAM regions (for the control socket).
    pub fn describe(&self) -> (Value, Value) {
        let stage2: Vec<_> = self
            .stage2
            .iter()
            .map(|p| json!({"iova": p.iova, "length": p.len}))
            .collect();
        let guest_ram: Vec<_> = self
            .memory
            .iter()
            .map(|r| {
                json!({"gpa": r.gpa, "size": r.size,
                       "by_file": matches!(r.backing, Backing::File { .. })})
            })
            .collect();
        (Value::from(stage2), Value::from(guest_ram))
    }
}

/// Where a guest MAP or UNMAP goes: the iommufd, the domain (for logs) and its IOAS.
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    pub fd: BorrowedFd<'a>,
    pub domain: DomainId,
    pub ioas: IoasId,
}

/// Guest UNMAP of `[start, end]` in a MAP domain's IOAS, and the bookkeeping. On a kernel
/// error, each piece in the range is tried alone so the bookkeeping says what is left.
pub fn unmap_range(at: At<'_>, d: &mut Mappings, start: u64, end: u64) -> Result<(), BackendError> {
    let At { fd, domain, ioas } = at;
    // (0, u64::MAX) is iommufd's "everything".
    let len = (end - start).saturating_add(1);
    let r = match ioas::unmap(fd, ioas, start, len) {
        Ok(_) => Ok(()),
        // Nothing mapped in the range (gaps, mappings without access or without RAM).
        Err(e) if e.errno == libc::ENOENT => Ok(()),
        Err(e) => Err(e),
    };
    let keys: Vec<u64> = d.maps.range(start..=end).map(|(k, _)| *k).collect();
    match r {
        Ok(()) => {
            for k in keys {
                d.maps.remove(&k);
            }
            d.orphans
                .retain(|p| p.iova < start || p.iova.saturating_add(p.len - 1) > end);
            Ok(())
        }
        Err(e) => {
            warn!("domain {domain}: UNMAP {start:#x}-{end:#x}: {e}; unmapping piece by piece");
            for k in keys {
                if let Some(m) = d.maps.get_mut(&k) {
                    let left: Vec<Piece> = m
                        .pieces
                        .as_slice()
                        .iter()
                        .filter(|p| unmap_piece(fd, ioas, p).is_err())
                        .copied()
                        .collect();
                    m.pieces = Pieces::from_vec(left);
                }
            }
            Err(os_err(e))
        }
    }
}
