//! The bookkeeping of guest RAM on the host (ram.rs): the regions of the memory table, what
//! backs them, and the pieces (one IOAS_MAP each) the kernel holds of each guest mapping.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::warn;
use model::host::GuestRegion;
use serde_json::json;

/// What backs guest RAM on the host: a file (the frontend's memfd: device, inode and offset)
/// when the IOAS maps it by file, else the daemon's address of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    File { dev: u64, ino: u64, offset: u64 },
    Addr(u64),
}

impl Backing {
    /// The backing `delta` bytes further on.
    pub fn at(self, delta: u64) -> Backing {
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
pub struct Ram {
    pub gpa: u64,
    pub size: u64,
    pub host: u64,
    pub file: Option<(OwnedFd, u64)>,
    /// What an IOAS mapping of the region's first byte refers to.
    pub backing: Backing,
}

impl Ram {
    /// Take a region of a new memory table. `by_file`: the backend maps by file (a region
    /// whose file cannot be duplicated or examined is then mapped by address, with a warning).
    pub fn new(r: &GuestRegion, by_file: bool) -> Ram {
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
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa && len <= self.size && gpa - self.gpa <= self.size - len
    }

    pub fn file(&self) -> Option<(BorrowedFd<'_>, u64)> {
        self.file.as_ref().map(|(f, s)| (f.as_fd(), *s))
    }
}

/// The part of a guest-physical range that one region backs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub gpa: u64,
    pub len: u64,
}

/// The regions' parts of `[phys, phys + len)`, in guest-physical order (gaps where there is no
/// RAM).
pub fn parts(memory: &[Ram], phys: u64, len: u64) -> Vec<Part> {
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
pub fn is_ram(memory: &[Ram], phys: u64, len: u64) -> bool {
    len > 0 && parts(memory, phys, len).iter().map(|p| p.len).sum::<u64>() == len
}

/// Whether the RAM at `[gpa, gpa + len)` is `backing` in `memory`.
pub fn still_backed(memory: &[Ram], gpa: u64, len: u64, backing: Backing) -> bool {
    memory
        .iter()
        .any(|r| r.contains(gpa, len) && r.backing.at(gpa - r.gpa) == backing)
}

/// One IOAS_MAP in the kernel: `len` bytes at `iova`, guest RAM `gpa` backed by `backing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub iova: u64,
    pub len: u64,
    pub gpa: u64,
    pub backing: Backing,
}

/// The pieces of one guest mapping (one, without an allocation, in the usual case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pieces {
    One(Piece),
    /// Sorted by IOVA; empty: nothing in the kernel.
    Many(Vec<Piece>),
}

impl Pieces {
    pub fn from_vec(mut v: Vec<Piece>) -> Pieces {
        if v.len() == 1 {
            Pieces::One(v[0])
        } else {
            v.sort_by_key(|p| p.iova);
            Pieces::Many(v)
        }
    }

    pub fn as_slice(&self) -> &[Piece] {
        match self {
            Pieces::One(p) => std::slice::from_ref(p),
            Pieces::Many(v) => v,
        }
    }
}

/// A guest mapping with access (READ and/or WRITE), as the domain's IOAS has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMap {
    /// Last IOVA (inclusive); the first is the key it is stored under.
    pub last: u64,
    pub phys: u64,
    /// IOMMU_IOAS_MAP_READABLE / WRITEABLE.
    pub prot: u32,
    pub pieces: Pieces,
}

impl HostMap {
    /// The IOVA ranges `(iova, len)` of `[iova, self.last]` no piece covers.
    pub fn unbacked(&self, iova: u64) -> Vec<(u64, u64)> {
        gaps(iova, self.last, self.pieces.as_slice())
    }
}

/// `[first, last]` minus the pieces (sorted by IOVA, inside the range): `(iova, len)` ranges.
pub fn gaps(first: u64, last: u64, pieces: &[Piece]) -> Vec<(u64, u64)> {
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
pub struct MemStats {
    /// Memory tables received.
    pub tables: u64,
    /// Pieces of guest mappings unmapped because their RAM left (or changed).
    pub domain_unmapped: u64,
    /// Pieces of guest mappings mapped again because RAM came back behind them.
    pub domain_mapped: u64,
    pub stage2_unmapped: u64,
    pub stage2_mapped: u64,
    /// Kernel calls that failed while following a memory table (logged).
    pub failures: u64,
}

impl MemStats {
    pub fn to_json(self) -> serde_json::Value {
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
