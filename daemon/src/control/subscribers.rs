//! Invalidation notifications for translation caches outside the daemon.
//!
//! A control-socket client sends `{"cmd":"subscribe"}`; from then on that connection carries
//! one `{"event":"invalidate","seq":N,...}` line per [`Invalidation`] (docs/CONTROL.md). The
//! line is written to the subscriber's socket synchronously, with the device lock held, before
//! the request that caused it is completed to the driver: a client that drains its
//! subscription before using its cache never uses a translation the guest has already seen
//! removed.
//!
//! Writes never block the device: a subscriber whose socket buffer is full is disconnected
//! (it sees end-of-file and must drop its whole cache and subscribe again).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use log::{info, warn};
use vhost_user_iommu_control::{self as api, InvalidationEvent, Reply, Subscribed};

use model::device::{Invalidation, InvalidationSink};

/// Subscribers allowed at once.
pub const MAX_SUBSCRIBERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("too many subscribers (at most {MAX_SUBSCRIBERS})")]
    TooMany,
    #[error("cannot set up the subscription: {0}")]
    Io(std::io::Error),
}

#[derive(Debug, Default)]
pub struct Subscribers {
    clients: Mutex<Vec<UnixStream>>,
    seq: AtomicU64,
    /// Mirrors `!clients.is_empty()`, readable without the lock.
    active: std::sync::atomic::AtomicBool,
}

impl Subscribers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a subscriber: write the `subscribe` reply (with the sequence number of the last
    /// invalidation sent before it joined) and then every invalidation from now on. The reply
    /// is written under the lock, so no invalidation line can come before it.
    pub fn add(&self, mut stream: UnixStream) -> Result<u64, SubscribeError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_SUBSCRIBERS {
            return Err(SubscribeError::TooMany);
        }
        let seq = self.seq.load(Ordering::Relaxed);
        let reply = Reply::Ok(Subscribed {
            subscribed: true,
            seq,
        });
        super::write_reply(&mut stream, &reply).map_err(SubscribeError::Io)?;
        stream.set_nonblocking(true).map_err(SubscribeError::Io)?;
        clients.push(stream);
        self.active.store(true, Ordering::Release);
        info!("invalidation subscriber added ({} now)", clients.len());
        Ok(seq)
    }

    pub fn count(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl InvalidationSink for Subscribers {
    fn invalidate(&self, inv: &Invalidation) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.is_empty() {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let line = api::encode(&InvalidationEvent::new(seq, wire(inv))).unwrap_or_else(|e| {
            // Cannot happen (numbers and lists); if it did, everything must go.
            warn!("cannot encode an invalidation: {e}");
            format!(r#"{{"event":"invalidate","scope":"all","seq":{seq}}}"#)
        });
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        clients.retain_mut(|s| match s.write(&bytes) {
            Ok(n) if n == bytes.len() => true,
            // Gone (a `ctl watch` stopped, a VMM closed its connection): nothing to report.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                info!("invalidation subscriber left");
                false
            }
            Ok(_) | Err(_) => {
                // Full: a partial line would be ambiguous, and the subscriber would miss
                // invalidations; cut it off (it must resubscribe and drop its caches).
                warn!("invalidation subscriber too slow: disconnected");
                let _ = s.shutdown(std::net::Shutdown::Both);
                false
            }
        });
        self.active.store(!clients.is_empty(), Ordering::Release);
    }

    fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}

/// The model's invalidation as the protocol has it.
fn wire(inv: &Invalidation) -> api::Invalidation {
    match inv {
        Invalidation::Range {
            domain,
            endpoints,
            start,
            end,
        } => api::Invalidation::Range {
            domain: *domain,
            endpoints: endpoints.clone(),
            start: *start,
            end: *end,
        },
        Invalidation::Endpoint { endpoint } => api::Invalidation::Endpoint {
            endpoint: *endpoint,
        },
        Invalidation::All => api::Invalidation::All,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::sync::Arc;

    use super::*;
    use model::config::{DeviceConfig, EndpointSet};
    use model::device::{Device, Reply};
    use model::protocol::*;
    use serde_json::json;

    fn dev(subs: &Arc<Subscribers>) -> Device {
        let mut d = Device::new(DeviceConfig {
            endpoints: EndpointSet::Ranges(vec![(0, 15)]),
            ..DeviceConfig::default()
        });
        d.set_invalidation_sink(subs.clone());
        d.set_acked_features(d.features());
        d
    }

    fn req(d: &mut Device, bytes: Vec<u8>) -> Reply {
        d.handle_request(&bytes, &mut [])
    }

    fn attach(domain: u32, ep: u32) -> Vec<u8> {
        let mut v = vec![T_ATTACH, 0, 0, 0];
        for x in [domain, ep, 0, 0] {
            v.extend(x.to_le_bytes());
        }
        v
    }
    fn detach(domain: u32, ep: u32) -> Vec<u8> {
        let mut v = vec![T_DETACH, 0, 0, 0];
        for x in [domain, ep, 0, 0] {
            v.extend(x.to_le_bytes());
        }
        v
    }
    fn map(domain: u32, start: u64, end: u64) -> Vec<u8> {
        let mut v = vec![T_MAP, 0, 0, 0];
        v.extend(domain.to_le_bytes());
        for x in [start, end, start] {
            v.extend(x.to_le_bytes());
        }
        v.extend((MAP_F_READ | MAP_F_WRITE).to_le_bytes());
        v
    }
    fn unmap(domain: u32, start: u64, end: u64) -> Vec<u8> {
        let mut v = vec![T_UNMAP, 0, 0, 0];
        v.extend(domain.to_le_bytes());
        v.extend(start.to_le_bytes());
        v.extend(end.to_le_bytes());
        v.extend([0u8; 4]);
        v
    }

    fn lines(r: &mut BufReader<UnixStream>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        loop {
            let mut l = String::new();
            match r.read_line(&mut l) {
                Ok(0) => break,
                Ok(_) => out.push(serde_json::from_str(&l).unwrap()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    #[test]
    fn device_changes_become_invalidation_lines() {
        let subs = Arc::new(Subscribers::new());
        let mut d = dev(&subs);
        let (ours, theirs) = UnixStream::pair().unwrap();
        subs.add(ours).unwrap();
        let mut r = BufReader::new(theirs);
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&reply).unwrap(),
            json!({"ok": true, "result": {"subscribed": true, "seq": 0}})
        );
        r.get_ref().set_nonblocking(true).unwrap();

        assert_eq!(req(&mut d, attach(1, 3)), Reply::Status(Status::Ok));
        assert_eq!(req(&mut d, attach(1, 4)), Reply::Status(Status::Ok));
        // Re-attaching to the same domain changes nothing: no line.
        assert_eq!(req(&mut d, attach(1, 4)), Reply::Status(Status::Ok));
        assert_eq!(
            req(&mut d, map(1, 0x1000, 0x1fff)),
            Reply::Status(Status::Ok)
        );
        assert_eq!(
            req(&mut d, map(1, 0x4000, 0x4fff)),
            Reply::Status(Status::Ok)
        );
        // An UNMAP of nothing, and a failed (RANGE) one, invalidate nothing.
        assert_eq!(
            req(&mut d, unmap(1, 0x8000, 0x8fff)),
            Reply::Status(Status::Ok)
        );
        assert_eq!(
            req(&mut d, unmap(1, 0x1000, 0x17ff)),
            Reply::Status(Status::Range)
        );
        assert_eq!(req(&mut d, unmap(1, 0, 0x2fff)), Reply::Status(Status::Ok));
        assert_eq!(req(&mut d, detach(1, 3)), Reply::Status(Status::Ok));
        // Implicit detach: endpoint 4 moves to domain 2.
        assert_eq!(req(&mut d, attach(2, 4)), Reply::Status(Status::Ok));
        assert!(d.write_config(CONFIG_BYPASS_OFFSET, &[1]));
        // Writing the same value again changes nothing.
        assert!(d.write_config(CONFIG_BYPASS_OFFSET, &[1]));
        d.reset(true);

        let got = lines(&mut r);
        let want = [
            json!({"event":"invalidate","seq":1,"scope":"endpoint","endpoint":3}),
            json!({"event":"invalidate","seq":2,"scope":"endpoint","endpoint":4}),
            json!({"event":"invalidate","seq":3,"scope":"range","domain":1,"endpoints":[3,4],
                   "start":0,"end":0x2fff}),
            json!({"event":"invalidate","seq":4,"scope":"endpoint","endpoint":3}),
            json!({"event":"invalidate","seq":5,"scope":"endpoint","endpoint":4}),
            json!({"event":"invalidate","seq":6,"scope":"all"}),
            json!({"event":"invalidate","seq":7,"scope":"all"}),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn slow_or_gone_subscribers_are_cut_off() {
        let subs = Arc::new(Subscribers::new());
        let d = dev(&subs);
        let (ours, theirs) = UnixStream::pair().unwrap();
        subs.add(ours).unwrap();
        let (gone, closed) = UnixStream::pair().unwrap();
        subs.add(gone).unwrap();
        drop(closed);
        assert_eq!(subs.count(), 2);
        // Nobody reads `theirs`: eventually its buffer is full and it is disconnected; the
        // closed one goes at the first write. The device never blocks.
        let mut sent = 0;
        while subs.count() > 0 && sent < 1_000_000 {
            subs.invalidate(&Invalidation::All);
            sent += 1;
        }
        assert_eq!(subs.count(), 0, "after {sent} lines");
        drop(d);
        // The reader sees whole lines (a cut-off last line at most), then end-of-file.
        let mut r = BufReader::new(theirs);
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        assert!(reply.contains("subscribed"), "{reply}");
        let mut n = 0;
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap() == 0 || !l.ends_with('\n') {
                break;
            }
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            assert_eq!(v["scope"], "all");
            assert_eq!(v["seq"], n + 1);
            n += 1;
        }
        assert!(n > 0 && n < sent);
    }

    #[test]
    fn subscriber_limit() {
        let subs = Subscribers::new();
        let mut keep = Vec::new();
        for _ in 0..MAX_SUBSCRIBERS {
            let (a, b) = UnixStream::pair().unwrap();
            subs.add(a).unwrap();
            keep.push(b);
        }
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(subs.add(a), Err(SubscribeError::TooMany)));
    }
}
