//! Translation for the VMM's own emulated devices.
//!
//! A device the VMM emulates (virtio-net, virtio-blk, ...) that sits behind the IOMMU issues
//! DMA with IOVAs. The VMM must translate them through the daemon's tables, and may cache the
//! answers. [`TranslationClient`] does both over the daemon's control socket
//! (docs/CONTROL.md):
//!
//! - a `subscribe` connection, opened first, on which the daemon pushes one line per
//!   invalidation (UNMAP, ATTACH/DETACH, reset, bypass changes). The daemon writes the line
//!   before the guest sees the request that caused it complete, so draining this connection
//!   before every cache lookup ([`TranslationClient::translate`] does) never returns a
//!   translation the guest has already removed;
//! - a request connection for `translate` on a cache miss. The answer carries the whole
//!   mapping, which is cached per endpoint. A miss becomes a fault the daemon reports to the
//!   guest on the eventq.
//!
//! If the subscription breaks (daemon restart, subscriber too slow), the whole cache is
//! dropped and the client subscribes again before it caches anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use vhost_user_iommu_control::{
    self as control, Client, Invalidation, Notification, Subscription, Translation,
};

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("control socket {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("control socket: unexpected answer {0:?}")]
    Protocol(String),
    #[error("the daemon refused: {0}")]
    Refused(String),
}

impl From<control::Error> for TranslateError {
    fn from(e: control::Error) -> Self {
        use control::Error as E;
        match e {
            E::Connect { path, source } | E::Io { path, source } => {
                TranslateError::Io { path, err: source }
            }
            E::Timeout { path, .. } => TranslateError::Io {
                path,
                err: io::ErrorKind::WouldBlock.into(),
            },
            E::Closed { path } => TranslateError::Io {
                path,
                err: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection",
                ),
            },
            E::Protocol { line, .. } => TranslateError::Protocol(line),
            E::Refused(m) => TranslateError::Refused(m),
        }
    }
}

/// The kind of DMA access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn wire(self) -> control::Access {
        match self {
            Access::Read => control::Access::Read,
            Access::Write => control::Access::Write,
        }
    }
}

/// Where an access goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// To guest-physical `phys`; the mapping covers `len` bytes from the IOVA on.
    Translated { phys: u64, len: u64 },
    /// The endpoint bypasses the IOMMU: the IOVA is the guest-physical address.
    Bypass,
    /// No mapping (or no permission, or no domain): the access must fail. The daemon has
    /// reported the fault to the guest.
    Fault,
    /// The endpoint's domain uses a guest page table that asks for a page request (PASID
    /// extension, docs/PASID.md): the guest has been asked to make the page present; retry the
    /// access after it responded.
    PageRequest,
}

/// Counters, for tests and the VMM's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub faults: u64,
    pub invalidations: u64,
    /// Times the subscription was lost and the cache dropped.
    pub resubscriptions: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    virt_end: u64,
    phys_start: u64,
    read: bool,
    write: bool,
}

/// Guest memory as the VMM's emulated device sees it (guest-physical addresses).
pub trait GuestMemoryAccess {
    /// Read `buf.len()` bytes at `gpa`; false if outside guest RAM.
    fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Write `data` at `gpa`; false if outside guest RAM.
    fn write_gpa(&self, gpa: u64, data: &[u8]) -> bool;
}

/// A DMA access that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error("IOMMU fault at IOVA {iova:#x}")]
    Fault { iova: u64 },
    #[error("IOVA {iova:#x} waits for the guest's page-request response; retry later")]
    PageRequest { iova: u64 },
    #[error("guest-physical {gpa:#x} (IOVA {iova:#x}) is outside guest RAM")]
    OutsideRam { iova: u64, gpa: u64 },
    #[error(transparent)]
    Translate(#[from] TranslateError),
}

/// The smallest page the device supports (it refuses granules below 4 KiB).
const MIN_PAGE: u64 = 0x1000;

/// Bytes from `iova` to `end` inclusive (saturating: a mapping of the whole 64-bit space).
fn bytes_to_end(iova: u64, end: u64) -> u64 {
    (end - iova).saturating_add(1)
}

/// A translating, caching client of one daemon.
#[derive(Debug)]
pub struct TranslationClient {
    path: PathBuf,
    requests: Client,
    events: Option<Subscription>,
    cache: HashMap<u32, BTreeMap<u64, Entry>>,
    bypass: HashSet<u32>,
    stats: Stats,
}

impl TranslationClient {
    /// Connect to the daemon's control socket: subscribe first, then open the request
    /// connection.
    pub fn connect(control_socket: &Path) -> Result<Self, TranslateError> {
        let path = control_socket.to_owned();
        let events = Self::subscribe(&path)?;
        Ok(TranslationClient {
            requests: Client::connect(&path)?,
            path,
            events: Some(events),
            cache: HashMap::new(),
            bypass: HashSet::new(),
            stats: Stats::default(),
        })
    }

    fn subscribe(path: &Path) -> Result<Subscription, TranslateError> {
        let sub = Client::connect(path)?.subscribe()?;
        sub.set_nonblocking(true)?;
        Ok(sub)
    }

    /// The subscription's file descriptor: readable when invalidations wait. A VMM may poll
    /// it and call [`Self::poll_invalidations`]; `translate` drains it anyway.
    pub fn events_fd(&self) -> Option<RawFd> {
        self.events.as_ref().map(AsRawFd::as_raw_fd)
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Apply every invalidation the daemon has sent. Returns how many were applied. A lost
    /// subscription drops the whole cache and subscribes again.
    pub fn poll_invalidations(&mut self) -> Result<usize, TranslateError> {
        let mut applied = 0;
        let Some(events) = self.events.as_mut() else {
            return self.resubscribe().map(|()| 0);
        };
        let mut lost = false;
        loop {
            match events.next() {
                Ok(Some(n)) => {
                    apply_notification(&mut self.cache, &mut self.bypass, &n);
                    applied += 1;
                }
                // Nothing (or only part of a line) waiting.
                Ok(None) => break,
                // Closed by the daemon (restart, too slow) or broken.
                Err(_) => {
                    lost = true;
                    break;
                }
            }
        }
        self.stats.invalidations += applied as u64;
        if lost {
            self.events = None;
            self.resubscribe()?;
        }
        Ok(applied)
    }

    fn resubscribe(&mut self) -> Result<(), TranslateError> {
        self.cache.clear();
        self.bypass.clear();
        self.stats.resubscriptions += 1;
        self.events = Some(Self::subscribe(&self.path)?);
        Ok(())
    }

    /// Translate one access by `endpoint` to `iova`.
    pub fn translate(
        &mut self,
        endpoint: u32,
        iova: u64,
        access: Access,
    ) -> Result<Outcome, TranslateError> {
        self.poll_invalidations()?;
        if let Some(o) = self.lookup(endpoint, iova, access) {
            self.stats.hits += 1;
            return Ok(o);
        }
        self.stats.misses += 1;
        let t = self.requests.translate(endpoint, iova, access.wire())?;
        match t {
            Translation::Translated {
                phys,
                mapping: None,
                ..
            } => {
                // No mapping described (a translation that is not a single MAP): valid up to
                // the end of the smallest page, and not cached.
                Ok(Outcome::Translated {
                    phys,
                    len: MIN_PAGE - (iova & (MIN_PAGE - 1)),
                })
            }
            Translation::Translated {
                phys,
                mapping: Some(m),
                ..
            } => {
                let entry = Entry {
                    virt_end: m.virt_end,
                    phys_start: m.phys_start,
                    read: m.read,
                    write: m.write,
                };
                // Only cache when the subscription is live: otherwise nobody would tell us
                // when the entry goes stale.
                if self.events.is_some() {
                    self.cache
                        .entry(endpoint)
                        .or_default()
                        .insert(m.virt_start, entry);
                }
                Ok(Outcome::Translated {
                    phys,
                    len: bytes_to_end(iova, m.virt_end),
                })
            }
            Translation::Bypass { .. } => {
                if self.events.is_some() {
                    self.bypass.insert(endpoint);
                }
                Ok(Outcome::Bypass)
            }
            Translation::Fault { .. } => {
                self.stats.faults += 1;
                Ok(Outcome::Fault)
            }
            Translation::PageRequest { .. } => Ok(Outcome::PageRequest),
        }
    }

    fn lookup(&self, endpoint: u32, iova: u64, access: Access) -> Option<Outcome> {
        if self.bypass.contains(&endpoint) {
            return Some(Outcome::Bypass);
        }
        let (&start, e) = self.cache.get(&endpoint)?.range(..=iova).next_back()?;
        let allowed = match access {
            Access::Read => e.read,
            Access::Write => e.write,
        };
        (iova <= e.virt_end && allowed).then(|| Outcome::Translated {
            phys: e.phys_start.wrapping_add(iova - start),
            len: bytes_to_end(iova, e.virt_end),
        })
    }

    /// DMA read: the device `endpoint` reads guest memory at `iova`, across mappings if
    /// needed.
    pub fn dma_read(
        &mut self,
        mem: &dyn GuestMemoryAccess,
        endpoint: u32,
        iova: u64,
        buf: &mut [u8],
    ) -> Result<(), DmaError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = iova
                .checked_add(done as u64)
                .ok_or(DmaError::Fault { iova })?;
            let (gpa, n) = self.chunk(endpoint, at, Access::Read, buf.len() - done)?;
            if !mem.read_gpa(gpa, &mut buf[done..done + n]) {
                return Err(DmaError::OutsideRam { iova: at, gpa });
            }
            done += n;
        }
        Ok(())
    }

    /// Write `data` to guest memory at `iova` for `endpoint`, across mappings if needed.
    pub fn dma_write(
        &mut self,
        mem: &dyn GuestMemoryAccess,
        endpoint: u32,
        iova: u64,
        data: &[u8],
    ) -> Result<(), DmaError> {
        let mut done = 0usize;
        while done < data.len() {
            let at = iova
                .checked_add(done as u64)
                .ok_or(DmaError::Fault { iova })?;
            let (gpa, n) = self.chunk(endpoint, at, Access::Write, data.len() - done)?;
            if !mem.write_gpa(gpa, &data[done..done + n]) {
                return Err(DmaError::OutsideRam { iova: at, gpa });
            }
            done += n;
        }
        Ok(())
    }

    /// The guest-physical address of `iova` and how many of `want` bytes follow contiguously.
    fn chunk(
        &mut self,
        endpoint: u32,
        iova: u64,
        access: Access,
        want: usize,
    ) -> Result<(u64, usize), DmaError> {
        match self.translate(endpoint, iova, access)? {
            Outcome::Translated { phys, len } => {
                let n = usize::try_from(len).unwrap_or(usize::MAX).min(want);
                Ok((phys, n))
            }
            Outcome::Bypass => Ok((iova, want)),
            Outcome::Fault => Err(DmaError::Fault { iova }),
            Outcome::PageRequest => Err(DmaError::PageRequest { iova }),
        }
    }
}

/// Apply one subscription line to the cache.
fn apply_notification(
    cache: &mut HashMap<u32, BTreeMap<u64, Entry>>,
    bypass: &mut HashSet<u32>,
    n: &Notification,
) {
    match n {
        Notification::Invalidation(ev) => apply(cache, bypass, &ev.invalidation),
        // Not understood: forget everything rather than risk a stale entry.
        Notification::NotUnderstood(_) => apply(cache, bypass, &Invalidation::All),
    }
}

/// Apply one invalidation to the cache.
fn apply(
    cache: &mut HashMap<u32, BTreeMap<u64, Entry>>,
    bypass: &mut HashSet<u32>,
    inv: &Invalidation,
) {
    match inv {
        Invalidation::Range {
            endpoints,
            start,
            end,
            ..
        } => {
            for ep in endpoints {
                if let Some(m) = cache.get_mut(ep) {
                    // Entries starting in the range, and one starting before it that reaches in.
                    let doomed: Vec<u64> = m
                        .range(..=*end)
                        .rev()
                        .take_while(|(_, e)| e.virt_end >= *start)
                        .map(|(s, _)| *s)
                        .collect();
                    for s in doomed {
                        m.remove(&s);
                    }
                }
            }
        }
        Invalidation::Endpoint { endpoint } => {
            cache.remove(endpoint);
            bypass.remove(endpoint);
        }
        Invalidation::All => {
            cache.clear();
            bypass.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(end: u64) -> Entry {
        Entry {
            virt_end: end,
            phys_start: 0,
            read: true,
            write: true,
        }
    }

    /// A stand-in daemon: answers `subscribe`, then every `translate` with `answer`.
    fn fake_daemon(answer: Translation) -> (PathBuf, std::thread::JoinHandle<()>) {
        use std::io::{BufRead, BufReader, Write};
        use vhost_user_iommu_control::{Reply, Request, Response, Subscribed};

        let dir = std::env::temp_dir().join(format!(
            "vui-xlate-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let mut keep = Vec::new();
            for _ in 0..2 {
                let (s, _) = listener.accept().unwrap();
                keep.push(std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    for line in BufReader::new(s).lines() {
                        let reply = match control::decode::<Request>(&line.unwrap()).unwrap() {
                            Request::Subscribe => Reply::Ok(Response::Subscribe(Subscribed {
                                subscribed: true,
                                seq: 0,
                            })),
                            Request::Translate { .. } => Reply::Ok(Response::Translate(answer)),
                            other => Reply::Err(format!("the stand-in does not serve {other:?}")),
                        };
                        writeln!(w, "{}", control::encode(&reply).unwrap()).unwrap();
                    }
                }));
            }
            for t in keep {
                t.join().unwrap();
            }
        });
        (path, h)
    }

    #[test]
    fn translations_without_a_mapping_are_not_cached() {
        let (path, h) = fake_daemon(Translation::Translated {
            phys: 0x5123,
            guest_ram: None,
            mapping: None,
        });
        let mut c = TranslationClient::connect(&path).unwrap();
        for _ in 0..2 {
            assert_eq!(
                c.translate(1, 0x9123, Access::Read).unwrap(),
                Outcome::Translated {
                    phys: 0x5123,
                    len: 0x1000 - 0x123
                }
            );
        }
        assert_eq!((c.stats().misses, c.stats().hits), (2, 0));
        drop(c);
        h.join().unwrap();
    }

    #[test]
    fn page_requests_are_reported() {
        let (path, h) = fake_daemon(Translation::PageRequest { grpid: 3 });
        let mut c = TranslationClient::connect(&path).unwrap();
        assert_eq!(
            c.translate(1, 0x1000, Access::Write).unwrap(),
            Outcome::PageRequest
        );
        drop(c);
        h.join().unwrap();
    }

    #[test]
    fn lengths_saturate() {
        assert_eq!(bytes_to_end(0, u64::MAX), u64::MAX);
        assert_eq!(bytes_to_end(0x1000, 0x1fff), 0x1000);
        assert_eq!(bytes_to_end(u64::MAX, u64::MAX), 1);
    }

    #[test]
    fn range_invalidation_removes_overlapping_entries_only() {
        let mut cache: HashMap<u32, BTreeMap<u64, Entry>> = HashMap::new();
        let mut bypass = HashSet::from([9]);
        let m = cache.entry(1).or_default();
        m.insert(0x0000, entry(0x0fff));
        m.insert(0x1000, entry(0x2fff));
        m.insert(0x3000, entry(0x3fff));
        m.insert(0x5000, entry(0x5fff));
        cache.entry(2).or_default().insert(0x1000, entry(0x1fff));
        let line = |seq, invalidation| {
            Notification::Invalidation(control::InvalidationEvent::new(seq, invalidation))
        };
        apply_notification(
            &mut cache,
            &mut bypass,
            &line(
                1,
                Invalidation::Range {
                    domain: 1,
                    endpoints: vec![1],
                    start: 0x2000,
                    end: 0x3fff,
                },
            ),
        );
        let left: Vec<u64> = cache[&1].keys().copied().collect();
        assert_eq!(left, vec![0x0000, 0x5000]);
        assert_eq!(cache[&2].len(), 1, "other endpoints untouched");
        apply_notification(
            &mut cache,
            &mut bypass,
            &line(2, Invalidation::Endpoint { endpoint: 9 }),
        );
        assert!(bypass.is_empty());
        apply_notification(
            &mut cache,
            &mut bypass,
            &line(3, Invalidation::Endpoint { endpoint: 2 }),
        );
        assert!(!cache.contains_key(&2));
        apply_notification(
            &mut cache,
            &mut bypass,
            &Notification::NotUnderstood(
                r#"{"event":"invalidate","scope":"something-new","seq":4}"#.into(),
            ),
        );
        assert!(cache.is_empty());
    }
}
