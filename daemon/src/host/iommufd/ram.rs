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

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::{info, warn};
use serde_json::json;

use super::{os_err, sys, DomainObj, IommufdBackend};
use model::host::{BackendError, GuestRegion};

/// What backs guest RAM on the host: a file (the frontend's memfd: device, inode and offset)
/// when the IOAS maps it by file, else the daemon's address of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Backing {
    File { dev: u64, ino: u64, offset: u64 },
    Addr(u64),
}

impl Backing {
    /// The backing `delta` bytes further on.
    pub(super) fn at(self, delta: u64) -> Backing {
        match self {
            Backing::File { dev, ino, offset } => Backing::File {
                dev,
                ino,
                offset: offset.wrapping_add(delta),
            },
            Backing::Addr(a) => Backing::Addr(a.wrapping_add(delta)),
        }
    }
}

/// A region of guest RAM: where the daemon mapped it and, when it is backed by a file (the
/// frontend's memfd), a duplicate of that file and the region's offset in it.
#[derive(Debug)]
pub(super) struct Ram {
    pub(super) gpa: u64,
    pub(super) size: u64,
    pub(super) host: u64,
    pub(super) file: Option<(OwnedFd, u64)>,
    /// What an IOAS mapping of the region's first byte refers to.
    pub(super) backing: Backing,
}

impl Ram {
    /// Take a region of a new memory table. `by_file`: the backend maps by file (a region
    /// whose file cannot be duplicated or examined is then mapped by address, with a warning).
    pub(super) fn new(r: &GuestRegion, by_file: bool) -> Ram {
        let file = r.file.and_then(|(fd, start)| {
            // SAFETY: the caller of `set_guest_memory` guarantees `fd` is open for the call.
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            match b.try_clone_to_owned() {
                Ok(dup) => Some((dup, start)),
                Err(e) => {
                    warn!(
                        "guest RAM {:#x}+{:#x}: cannot keep its file ({e}): mapped by address",
                        r.gpa, r.size
                    );
                    None
                }
            }
        });
        let identity = file.as_ref().filter(|_| by_file).and_then(|(f, start)| {
            use std::os::unix::fs::MetadataExt;
            let dup = f.try_clone().ok()?;
            match std::fs::File::from(dup).metadata() {
                Ok(m) => Some(Backing::File {
                    dev: m.dev(),
                    ino: m.ino(),
                    offset: *start,
                }),
                Err(e) => {
                    warn!("guest RAM {:#x}+{:#x}: fstat: {e}", r.gpa, r.size);
                    None
                }
            }
        });
        let (file, backing) = match identity {
            Some(b) => (file, b),
            // Mapped by address: the file is not needed.
            None => (None, Backing::Addr(r.host_addr)),
        };
        Ram {
            gpa: r.gpa,
            size: r.size,
            host: r.host_addr,
            file,
            backing,
        }
    }

    /// Whether `[gpa, gpa + len)` (len > 0) lies inside the region.
    pub(super) fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa && len <= self.size && gpa - self.gpa <= self.size - len
    }

    pub(super) fn file(&self) -> Option<(BorrowedFd<'_>, u64)> {
        self.file.as_ref().map(|(f, s)| (f.as_fd(), *s))
    }
}

/// The part of a guest-physical range that one region backs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Part {
    pub(super) gpa: u64,
    pub(super) len: u64,
}

/// The regions' parts of `[phys, phys + len)`, in guest-physical order (gaps where there is no
/// RAM).
pub(super) fn parts(memory: &[Ram], phys: u64, len: u64) -> Vec<Part> {
    let Some(last) = len.checked_sub(1).and_then(|l| phys.checked_add(l)) else {
        return Vec::new();
    };
    let mut out: Vec<Part> = memory
        .iter()
        .filter(|r| r.size > 0)
        .filter_map(|r| {
            let r_last = r.gpa.checked_add(r.size - 1)?;
            let (s, e) = (phys.max(r.gpa), last.min(r_last));
            (s <= e).then(|| Part {
                gpa: s,
                len: e - s + 1,
            })
        })
        .collect();
    out.sort_by_key(|p| p.gpa);
    out
}

/// Whether `[phys, phys + len)` is entirely guest RAM (one region or several adjacent ones).
pub(super) fn is_ram(memory: &[Ram], phys: u64, len: u64) -> bool {
    len > 0 && parts(memory, phys, len).iter().map(|p| p.len).sum::<u64>() == len
}

/// Whether the RAM at `[gpa, gpa + len)` is `backing` in `memory`.
pub(super) fn still_backed(memory: &[Ram], gpa: u64, len: u64, backing: Backing) -> bool {
    memory
        .iter()
        .any(|r| r.contains(gpa, len) && r.backing.at(gpa - r.gpa) == backing)
}

/// One IOAS_MAP in the kernel: `len` bytes at `iova`, guest RAM `gpa` backed by `backing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Piece {
    pub(super) iova: u64,
    pub(super) len: u64,
    pub(super) gpa: u64,
    pub(super) backing: Backing,
}

/// The pieces of one guest mapping (one, without an allocation, in the usual case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Pieces {
    One(Piece),
    /// Sorted by IOVA; empty: nothing in the kernel.
    Many(Vec<Piece>),
}

impl Pieces {
    pub(super) fn from_vec(mut v: Vec<Piece>) -> Pieces {
        if v.len() == 1 {
            Pieces::One(v[0])
        } else {
            v.sort_by_key(|p| p.iova);
            Pieces::Many(v)
        }
    }

    pub(super) fn as_slice(&self) -> &[Piece] {
        match self {
            Pieces::One(p) => std::slice::from_ref(p),
            Pieces::Many(v) => v,
        }
    }
}

/// A guest mapping with access (READ and/or WRITE), as the domain's IOAS has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HostMap {
    /// Last IOVA (inclusive); the first is the key it is stored under.
    pub(super) last: u64,
    pub(super) phys: u64,
    /// IOMMU_IOAS_MAP_READABLE / WRITEABLE.
    pub(super) prot: u32,
    pub(super) pieces: Pieces,
}

impl HostMap {
    /// The IOVA ranges `(iova, len)` of `[iova, self.last]` no piece covers.
    pub(super) fn unbacked(&self, iova: u64) -> Vec<(u64, u64)> {
        gaps(iova, self.last, self.pieces.as_slice())
    }
}

/// `[first, last]` minus the pieces (sorted by IOVA, inside the range): `(iova, len)` ranges.
pub(super) fn gaps(first: u64, last: u64, pieces: &[Piece]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = Some(first);
    for p in pieces {
        let Some(n) = next else { break };
        if p.iova > n {
            out.push((n, p.iova - n));
        }
        next = p
            .iova
            .checked_add(p.len)
            .filter(|e| *e <= last)
            .map(|e| e.max(n));
    }
    if let Some(n) = next.filter(|n| *n <= last) {
        out.push((n, last - n + 1));
    }
    out
}

/// What memory-table changes did on the host (control socket).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct MemStats {
    /// Memory tables received.
    pub(super) tables: u64,
    /// Pieces of guest mappings unmapped because their RAM left (or changed).
    pub(super) domain_unmapped: u64,
    /// Pieces of guest mappings mapped again because RAM came back behind them.
    pub(super) domain_mapped: u64,
    pub(super) stage2_unmapped: u64,
    pub(super) stage2_mapped: u64,
    /// Kernel calls that failed while following a memory table (logged).
    pub(super) failures: u64,
}

impl MemStats {
    pub(super) fn to_json(self) -> serde_json::Value {
        json!({
            "tables": self.tables,
            "domain_pieces_unmapped": self.domain_unmapped,
            "domain_pieces_mapped": self.domain_mapped,
            "stage2_pieces_unmapped": self.stage2_unmapped,
            "stage2_pieces_mapped": self.stage2_mapped,
            "failures": self.failures,
        })
    }
}

/// IOAS_UNMAP of exactly one piece; ENOENT (already gone) counts as done.
fn unmap_piece(fd: BorrowedFd<'_>, ioas: u32, p: &Piece) -> Result<(), sys::SysError> {
    match sys::ioas_unmap(fd, ioas, p.iova, p.len) {
        Ok(_) => Ok(()),
        Err(e) if e.errno == libc::ENOENT => Ok(()),
        Err(e) => Err(e),
    }
}

/// Work for the second half of a memory-table change: (domain, mapping key, IOAS, prot, the
/// ranges `(iova, gpa, len)` to map).
type Remap = (u32, u64, u32, u32, Vec<(u64, u64, u64)>);

impl IommufdBackend {
    /// Follow a new memory table: unmap what left guest RAM, keep what stayed, map what came
    /// back (module documentation). Never fails: kernel refusals are logged and counted, and
    /// the bookkeeping says what the kernel holds.
    pub(super) fn follow_memory(&mut self, new: Vec<Ram>) {
        self.mem_stats.tables += 1;
        let fd = self.fd.as_fd();
        // 1. Domain pieces whose RAM is no longer what they map.
        for (id, d) in self.domains.iter_mut().filter(|(_, d)| !d.bypass) {
            for (iova, m) in d.maps.iter_mut() {
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
                    match unmap_piece(fd, d.ioas, p) {
                        Ok(()) => self.mem_stats.domain_unmapped += 1,
                        Err(e) => {
                            warn!(
                                "domain {id}: mapping {iova:#x}: cannot unmap {:#x}+{:#x} whose guest RAM left: {e}",
                                p.iova, p.len
                            );
                            self.mem_stats.failures += 1;
                            keep.push(*p);
                        }
                    }
                }
                m.pieces = Pieces::from_vec(keep);
            }
            d.orphans.retain(|p| unmap_piece(fd, d.ioas, p).is_err());
        }
        // 2. Stage 2: guest RAM at its guest-physical address, clipped to the host's ranges.
        let wanted = self.pieces_for(&new);
        let mut stage2 = Vec::with_capacity(wanted.len());
        for p in std::mem::take(&mut self.stage2_pieces) {
            if wanted.contains(&p) {
                stage2.push(p);
                continue;
            }
            match unmap_piece(fd, self.stage2, &p) {
                Ok(()) => self.mem_stats.stage2_unmapped += 1,
                Err(e) => {
                    warn!("stage-2 unmap {:#x}+{:#x}: {e}", p.iova, p.len);
                    self.mem_stats.failures += 1;
                    stage2.push(p);
                }
            }
        }
        self.memory = new;
        let rw = sys::IOMMU_IOAS_MAP_READABLE | sys::IOMMU_IOAS_MAP_WRITEABLE;
        for p in wanted {
            if stage2.contains(&p) {
                continue;
            }
            if stage2
                .iter()
                .any(|q| q.iova < p.iova + p.len && p.iova < q.iova + q.len)
            {
                warn!(
                    "stage-2 map of guest RAM {:#x}+{:#x}: a piece that could not be unmapped is in the way",
                    p.iova, p.len
                );
                self.mem_stats.failures += 1;
                continue;
            }
            // Guest-physical == IOVA in the stage-2 IOAS.
            match self.map_guest(self.stage2, p.iova, p.iova, p.len, rw) {
                Ok(backing) => {
                    self.mem_stats.stage2_mapped += 1;
                    stage2.push(Piece { backing, ..p });
                }
                Err(e) => {
                    warn!("stage-2 map of guest RAM {:#x}+{:#x}: {e}", p.iova, p.len);
                    self.mem_stats.failures += 1;
                }
            }
        }
        stage2.sort_by_key(|p| p.iova);
        self.stage2_pieces = stage2;
        // 3. Parts of guest mappings with RAM behind them again.
        let mut work: Vec<Remap> = Vec::new();
        for (id, d) in self.domains.iter().filter(|(_, d)| !d.bypass) {
            for (iova, m) in &d.maps {
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
                    work.push((*id, *iova, d.ioas, m.prot, todo));
                }
            }
        }
        for (id, key, ioas, prot, todo) in work {
            let mut made = Vec::new();
            for (iova, gpa, len) in todo {
                match self.map_guest(ioas, iova, gpa, len, prot) {
                    Ok(backing) => {
                        self.mem_stats.domain_mapped += 1;
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
                        self.mem_stats.failures += 1;
                    }
                }
            }
            if let Some(m) = self.domains.get_mut(&id).and_then(|d| d.maps.get_mut(&key)) {
                let mut all = m.pieces.as_slice().to_vec();
                all.extend(made);
                m.pieces = Pieces::from_vec(all);
            }
        }
        let s = self.mem_stats;
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

    /// Map guest MAP `[iova, iova + len) -> phys` in `domain`'s IOAS, one IOAS_MAP per region
    /// the physical range meets (it must be entirely guest RAM). All or nothing: on a failure
    /// the pieces already mapped are unmapped again (one that will not go is kept as an orphan
    /// of the domain, and retried).
    pub(super) fn map_pieces(
        &mut self,
        domain: u32,
        iova: u64,
        phys: u64,
        len: u64,
        prot: u32,
    ) -> Result<Pieces, BackendError> {
        let ioas = self
            .domains
            .get(&domain)
            .ok_or(BackendError::Internal("map in unknown domain"))?
            .ioas;
        if !is_ram(&self.memory, phys, len) {
            return Err(BackendError::NotGuestRam {
                start: phys,
                end: phys.saturating_add(len.saturating_sub(1)),
            });
        }
        let mut done: Vec<Piece> = Vec::new();
        for part in parts(&self.memory, phys, len) {
            let piova = iova + (part.gpa - phys);
            match self.map_guest(ioas, piova, part.gpa, part.len, prot) {
                Ok(backing) => done.push(Piece {
                    iova: piova,
                    len: part.len,
                    gpa: part.gpa,
                    backing,
                }),
                Err(e) => {
                    let fd = self.fd.as_fd();
                    let left: Vec<Piece> = done
                        .iter()
                        .filter(|p| match unmap_piece(fd, ioas, p) {
                            Ok(()) => false,
                            Err(u) => {
                                warn!(
                                    "domain {domain}: cannot take back {:#x}+{:#x} of a failed MAP: {u}",
                                    p.iova, p.len
                                );
                                true
                            }
                        })
                        .copied()
                        .collect();
                    if let Some(d) = self.domains.get_mut(&domain) {
                        d.orphans.extend(left);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Pieces::from_vec(done))
    }

    /// Guest UNMAP of `[start, end]` in a MAP domain's IOAS, and the bookkeeping. On a kernel
    /// error, each piece in the range is tried alone so the bookkeeping says what is left.
    pub(super) fn unmap_range(
        &mut self,
        domain: u32,
        start: u64,
        end: u64,
    ) -> Result<(), BackendError> {
        let fd = self.fd.as_fd();
        let Some(d) = self.domains.get_mut(&domain) else {
            return Err(BackendError::Internal("unmap in unknown domain"));
        };
        // (0, u64::MAX) is iommufd's "everything".
        let len = (end - start).saturating_add(1);
        let r = match sys::ioas_unmap(fd, d.ioas, start, len) {
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
                            .filter(|p| unmap_piece(fd, d.ioas, p).is_err())
                            .copied()
                            .collect();
                        m.pieces = Pieces::from_vec(left);
                    }
                }
                Err(os_err(e))
            }
        }
    }

    /// The domain's guest mappings (for the control socket): how many have access, the IOVA
    /// ranges of them with nothing in the kernel (no RAM behind them, or a kernel refusal), and
    /// pieces in the kernel that map RAM the memory table no longer has, or that no mapping
    /// owns (kernel refusals; retried on the next change).
    pub(super) fn describe_maps(&self, d: &DomainObj) -> serde_json::Value {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(gpa: u64, size: u64, ino: u64) -> Ram {
        Ram {
            gpa,
            size,
            host: 0x7f00_0000_0000 + gpa,
            file: None,
            backing: Backing::File {
                dev: 1,
                ino,
                offset: 0,
            },
        }
    }

    fn piece(iova: u64, len: u64) -> Piece {
        Piece {
            iova,
            len,
            gpa: 0,
            backing: Backing::Addr(0),
        }
    }

    #[test]
    fn parts_of_a_range_follow_the_regions() {
        let mem = [
            ram(0x2000, 0x1000, 2),
            ram(0, 0x1000, 1),
            ram(0x3000, 0x1000, 3),
        ];
        // Inside one region, across two adjacent ones, across a hole.
        assert_eq!(
            parts(&mem, 0x800, 0x100),
            vec![Part {
                gpa: 0x800,
                len: 0x100
            }]
        );
        assert_eq!(
            parts(&mem, 0x2800, 0x1000),
            vec![
                Part {
                    gpa: 0x2800,
                    len: 0x800
                },
                Part {
                    gpa: 0x3000,
                    len: 0x800
                }
            ]
        );
        assert!(is_ram(&mem, 0x2800, 0x1000));
        assert!(!is_ram(&mem, 0x800, 0x1000), "0x1000-0x1fff is a hole");
        assert_eq!(parts(&mem, 0x800, 0x1000).len(), 1);
        assert!(!is_ram(&mem, 0x4000, 1));
        assert!(!is_ram(&mem, 0, 0));
        assert!(parts(&mem, u64::MAX, 2).is_empty(), "a wrapping range");
    }

    #[test]
    fn a_piece_stays_only_while_the_same_file_backs_it() {
        let mem = [ram(0x10_0000, 0x10_0000, 7)];
        let b = mem[0].backing.at(0x1000);
        assert!(still_backed(&mem, 0x10_1000, 0x1000, b));
        // Same address, another file (new RAM at the same guest-physical address).
        assert!(!still_backed(
            &[ram(0x10_0000, 0x10_0000, 8)],
            0x10_1000,
            0x1000,
            b
        ));
        // The region moved, shrank, or is gone.
        assert!(!still_backed(
            &[ram(0x20_0000, 0x10_0000, 7)],
            0x10_1000,
            0x1000,
            b
        ));
        assert!(!still_backed(
            &[ram(0x10_0000, 0x1000, 7)],
            0x10_1000,
            0x1000,
            b
        ));
        assert!(!still_backed(&[], 0x10_1000, 0x1000, b));
        // Another offset of the same file.
        assert!(!still_backed(
            &mem,
            0x10_1000,
            0x1000,
            mem[0].backing.at(0x2000)
        ));
    }

    #[test]
    fn gaps_are_what_no_piece_covers() {
        assert_eq!(gaps(0, 0xfff, &[]), vec![(0, 0x1000)]);
        assert_eq!(gaps(0, 0xfff, &[piece(0, 0x1000)]), vec![]);
        assert_eq!(
            gaps(0, 0x3fff, &[piece(0x1000, 0x1000), piece(0x3000, 0x800)]),
            vec![(0, 0x1000), (0x2000, 0x1000), (0x3800, 0x800)]
        );
        // Up to the end of the address space.
        assert_eq!(
            gaps(
                u64::MAX - 0xfff,
                u64::MAX,
                &[piece(u64::MAX - 0xfff, 0x1000)]
            ),
            vec![]
        );
        assert_eq!(
            gaps(
                u64::MAX - 0xfff,
                u64::MAX,
                &[piece(u64::MAX - 0xfff, 0x800)]
            ),
            vec![(u64::MAX - 0x7ff, 0x800)]
        );
    }

    #[test]
    fn one_piece_needs_no_allocation() {
        let p = Pieces::from_vec(vec![piece(0x1000, 0x1000)]);
        assert!(matches!(p, Pieces::One(_)));
        let p = Pieces::from_vec(vec![piece(0x3000, 0x1000), piece(0x1000, 0x1000)]);
        assert_eq!(p.as_slice()[0].iova, 0x1000, "sorted by IOVA");
        assert!(Pieces::from_vec(Vec::new()).as_slice().is_empty());
    }
}
