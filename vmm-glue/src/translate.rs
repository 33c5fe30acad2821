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
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("control socket {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("control socket: unexpected answer {0:?}")]
    Protocol(String),
    #[error("the daemon refused: {0}")]
    Refused(String),
}

/// The kind of DMA access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn wire(self) -> &'static str {
        match self {
            Access::Read => "r",
            Access::Write => "w",
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

/// Most bytes one request line may carry back.
const MAX_LINE: u64 = 1 << 20;

/// A translating, caching client of one daemon.
#[derive(Debug)]
pub struct TranslationClient {
    path: PathBuf,
    requests: BufReader<UnixStream>,
    events: Option<BufReader<UnixStream>>,
    /// Bytes of an event line not yet complete.
    partial: Vec<u8>,
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
        let io_err = |err| TranslateError::Io {
            path: path.clone(),
            err,
        };
        let s = UnixStream::connect(&path).map_err(io_err)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err)?;
        Ok(TranslationClient {
            path: path.clone(),
            requests: BufReader::new(s),
            events: Some(events),
            partial: Vec::new(),
            cache: HashMap::new(),
            bypass: HashSet::new(),
            stats: Stats::default(),
        })
    }

    fn subscribe(path: &Path) -> Result<BufReader<UnixStream>, TranslateError> {
        let io_err = |err| TranslateError::Io {
            path: path.to_owned(),
            err,
        };
        let mut s = UnixStream::connect(path).map_err(io_err)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err)?;
        writeln!(s, "{}", json!({"cmd": "subscribe"})).map_err(io_err)?;
        let mut r = BufReader::new(s);
        let reply = read_line(&mut r).map_err(io_err)?;
        let v = parse_reply(&reply)?;
        if v.get("subscribed") != Some(&Value::Bool(true)) {
            return Err(TranslateError::Protocol(reply));
        }
        r.get_ref().set_nonblocking(true).map_err(io_err)?;
        Ok(r)
    }

    /// The subscription's file descriptor: readable when invalidations wait. A VMM may poll
    /// it and call [`Self::poll_invalidations`]; `translate` drains it anyway.
    pub fn events_fd(&self) -> Option<RawFd> {
        self.events.as_ref().map(|e| e.get_ref().as_raw_fd())
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
            let mut chunk = Vec::new();
            match events.by_ref().take(MAX_LINE).read_until(b'\n', &mut chunk) {
                Ok(0) => {
                    lost = true;
                    break;
                }
                Ok(_) => {
                    self.partial.extend_from_slice(&chunk);
                    if self.partial.last() != Some(&b'\n') {
                        continue;
                    }
                    let line = std::mem::take(&mut self.partial);
                    match serde_json::from_slice::<Value>(&line) {
                        Ok(v) if v.get("event").and_then(Value::as_str) == Some("invalidate") => {
                            apply(&mut self.cache, &mut self.bypass, &v);
                            applied += 1;
                        }
                        // Not understood: forget everything rather than risk a stale entry.
                        _ => {
                            self.cache.clear();
                            self.bypass.clear();
                            applied += 1;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // `read_until` keeps what it read before blocking in `chunk`.
                    self.partial.extend_from_slice(&chunk);
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {
                    self.partial.extend_from_slice(&chunk);
                }
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
        self.partial.clear();
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
        let v = self.request(&json!({
            "cmd": "translate", "endpoint": endpoint, "iova": iova, "access": access.wire(),
        }))?;
        let bad = || TranslateError::Protocol(v.to_string());
        match v.get("outcome").and_then(Value::as_str) {
            Some("translated") => {
                let phys = v.get("phys").and_then(Value::as_u64).ok_or_else(bad)?;
                let Some(m) = v.get("mapping").filter(|m| m.is_object()) else {
                    // No mapping described (a translation that is not a single MAP): valid up
                    // to the end of the smallest page, and not cached.
                    return Ok(Outcome::Translated {
                        phys,
                        len: MIN_PAGE - (iova & (MIN_PAGE - 1)),
                    });
                };
                let num = |k: &str| m.get(k).and_then(Value::as_u64).ok_or_else(bad);
                let flag = |k: &str| m.get(k).and_then(Value::as_bool).ok_or_else(bad);
                let (start, end) = (num("virt_start")?, num("virt_end")?);
                let entry = Entry {
                    virt_end: end,
                    phys_start: num("phys_start")?,
                    read: flag("read")?,
                    write: flag("write")?,
                };
                // Only cache when the subscription is live: otherwise nobody would tell us
                // when the entry goes stale.
                if self.events.is_some() {
                    self.cache.entry(endpoint).or_default().insert(start, entry);
                }
                Ok(Outcome::Translated {
                    phys,
                    len: bytes_to_end(iova, end),
                })
            }
            Some("bypass") => {
                if self.events.is_some() {
                    self.bypass.insert(endpoint);
                }
                Ok(Outcome::Bypass)
            }
            Some("fault") => {
                self.stats.faults += 1;
                Ok(Outcome::Fault)
            }
            Some("page_request") => Ok(Outcome::PageRequest),
            _ => Err(bad()),
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

    fn request(&mut self, req: &Value) -> Result<Value, TranslateError> {
        let io_err = |err| TranslateError::Io {
            path: self.path.clone(),
            err,
        };
        writeln!(self.requests.get_mut(), "{req}").map_err(io_err)?;
        let line = read_line(&mut self.requests).map_err(|err| TranslateError::Io {
            path: self.path.clone(),
            err,
        })?;
        parse_reply(&line)
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

fn read_line(r: &mut BufReader<UnixStream>) -> io::Result<String> {
    let mut line = String::new();
    let n = r.by_ref().take(MAX_LINE).read_line(&mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            ErrorKind::UnexpectedEof,
            "the daemon closed the connection",
        ));
    }
    Ok(line)
}

fn parse_reply(line: &str) -> Result<Value, TranslateError> {
    let v: Value =
        serde_json::from_str(line).map_err(|_| TranslateError::Protocol(line.to_string()))?;
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        Some(false) => Err(TranslateError::Refused(
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string(),
        )),
        None => Err(TranslateError::Protocol(line.to_string())),
    }
}

/// Apply one invalidation line to the cache. Anything not understood clears everything.
fn apply(cache: &mut HashMap<u32, BTreeMap<u64, Entry>>, bypass: &mut HashSet<u32>, v: &Value) {
    let endpoint_of = |x: &Value| x.as_u64().and_then(|e| u32::try_from(e).ok());
    match v.get("scope").and_then(Value::as_str) {
        Some("range") => {
            let (Some(start), Some(end), Some(eps)) = (
                v.get("start").and_then(Value::as_u64),
                v.get("end").and_then(Value::as_u64),
                v.get("endpoints").and_then(Value::as_array),
            ) else {
                cache.clear();
                bypass.clear();
                return;
            };
            for ep in eps.iter().filter_map(endpoint_of) {
                if let Some(m) = cache.get_mut(&ep) {
                    // Entries starting in the range, and one starting before it that reaches in.
                    let doomed: Vec<u64> = m
                        .range(..=end)
                        .rev()
                        .take_while(|(_, e)| e.virt_end >= start)
                        .map(|(s, _)| *s)
                        .collect();
                    for s in doomed {
                        m.remove(&s);
                    }
                }
            }
        }
        Some("endpoint") => match v.get("endpoint").and_then(endpoint_of) {
            Some(ep) => {
                cache.remove(&ep);
                bypass.remove(&ep);
            }
            None => {
                cache.clear();
                bypass.clear();
            }
        },
        _ => {
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
    fn fake_daemon(answer: Value) -> (PathBuf, std::thread::JoinHandle<()>) {
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
                let answer = answer.clone();
                keep.push(std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    for line in BufReader::new(s).lines() {
                        let req: Value = serde_json::from_str(&line.unwrap()).unwrap();
                        let result = match req["cmd"].as_str() {
                            Some("subscribe") => json!({"subscribed": true, "seq": 0}),
                            _ => answer.clone(),
                        };
                        writeln!(w, "{}", json!({"ok": true, "result": result})).unwrap();
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
        let (path, h) =
            fake_daemon(json!({"outcome": "translated", "phys": 0x5123, "mapping": null}));
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
        let (path, h) = fake_daemon(json!({"outcome": "page_request", "grpid": 3}));
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
        apply(
            &mut cache,
            &mut bypass,
            &json!({"event":"invalidate","scope":"range","endpoints":[1],"start":0x2000,"end":0x3fff}),
        );
        let left: Vec<u64> = cache[&1].keys().copied().collect();
        assert_eq!(left, vec![0x0000, 0x5000]);
        assert_eq!(cache[&2].len(), 1, "other endpoints untouched");
        apply(
            &mut cache,
            &mut bypass,
            &json!({"event":"invalidate","scope":"endpoint","endpoint":9}),
        );
        assert!(bypass.is_empty());
        apply(
            &mut cache,
            &mut bypass,
            &json!({"event":"invalidate","scope":"endpoint","endpoint":2}),
        );
        assert!(!cache.contains_key(&2));
        apply(
            &mut cache,
            &mut bypass,
            &json!({"event":"invalidate","scope":"something-new"}),
        );
        assert!(cache.is_empty());
    }
}
