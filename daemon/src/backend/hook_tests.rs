//! The device model's calls into a host backend: order, arguments, and what a backend failure
//! does to the guest-visible state (nothing) and the status (the error's).

use std::sync::{Arc, Mutex};

use super::*;
use crate::config::{DeviceConfig, EndpointSet};
use crate::device::{Device, Reply};
use crate::protocol::*;

/// Records every call; fails the next call of the kind named in `fail` with `errno`.
#[derive(Debug, Default)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    fail: Arc<Mutex<Option<(&'static str, i32)>>>,
}

impl Recorder {
    fn call(&self, kind: &'static str, what: String) -> Result<(), BackendError> {
        self.log.lock().unwrap().push(what);
        let mut f = self.fail.lock().unwrap();
        match *f {
            Some((k, errno)) if k == kind => {
                *f = None;
                Err(BackendError::Os { call: k, errno })
            }
            _ => Ok(()),
        }
    }
}

impl HostBackend for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn attach(&mut self, ep: u32, d: u32, bypass: bool, new: bool) -> Result<(), BackendError> {
        self.call(
            "attach",
            format!("attach ep{ep} d{d} bypass={bypass} new={new}"),
        )
    }
    fn detach(&mut self, ep: u32) -> Result<(), BackendError> {
        self.call("detach", format!("detach ep{ep}"))
    }
    fn destroy_domain(&mut self, d: u32) {
        let _ = self.call("destroy", format!("destroy d{d}"));
    }
    fn map(&mut self, d: u32, s: u64, e: u64, p: u64, f: u32) -> Result<(), BackendError> {
        self.call("map", format!("map d{d} {s:#x}-{e:#x} {p:#x} {f}"))
    }
    fn unmap(&mut self, d: u32, s: u64, e: u64) -> Result<(), BackendError> {
        self.call("unmap", format!("unmap d{d} {s:#x}-{e:#x}"))
    }
    fn set_unattached_bypass(&mut self, b: bool) -> Result<(), BackendError> {
        self.call("bypass", format!("unattached bypass={b}"))
    }
    fn reset(&mut self, kind: ResetKind) {
        let _ = self.call("reset", format!("reset {kind:?}"));
    }
    fn set_guest_memory(&mut self, r: &[GuestRegion]) -> Result<(), BackendError> {
        self.call("memory", format!("memory {} regions", r.len()))
    }
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"backend": "recorder"})
    }
}

const FEATURES: u64 = (1 << F_VERSION_1)
    | (1 << F_MAP_UNMAP)
    | (1 << F_PROBE)
    | (1 << F_MMIO)
    | (1 << F_BYPASS_CONFIG);

type Log = Arc<Mutex<Vec<String>>>;
type Fail = Arc<Mutex<Option<(&'static str, i32)>>>;

fn device() -> (Device, Log, Fail) {
    let r = Recorder::default();
    let (log, fail) = (r.log.clone(), r.fail.clone());
    let cfg = DeviceConfig {
        endpoints: EndpointSet::Ranges(vec![(0, 15)]),
        ..DeviceConfig::default()
    };
    let mut d = Device::with_backend(cfg, Box::new(r));
    d.set_acked_features(FEATURES);
    log.lock().unwrap().clear();
    (d, log, fail)
}

fn req(type_: u8, words: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![type_, 0, 0, 0];
    for w in words {
        v.extend_from_slice(w);
    }
    v
}
fn attach(domain: u32, ep: u32, flags: u32) -> Vec<u8> {
    req(
        T_ATTACH,
        &[
            &domain.to_le_bytes(),
            &ep.to_le_bytes(),
            &flags.to_le_bytes(),
            &[0; 4],
        ],
    )
}
fn detach(domain: u32, ep: u32) -> Vec<u8> {
    req(
        T_DETACH,
        &[&domain.to_le_bytes(), &ep.to_le_bytes(), &[0; 8]],
    )
}
fn map(domain: u32, s: u64, e: u64, p: u64, f: u32) -> Vec<u8> {
    req(
        T_MAP,
        &[
            &domain.to_le_bytes(),
            &s.to_le_bytes(),
            &e.to_le_bytes(),
            &p.to_le_bytes(),
            &f.to_le_bytes(),
        ],
    )
}
fn unmap(domain: u32, s: u64, e: u64) -> Vec<u8> {
    req(
        T_UNMAP,
        &[
            &domain.to_le_bytes(),
            &s.to_le_bytes(),
            &e.to_le_bytes(),
            &[0; 4],
        ],
    )
}

fn status(d: &mut Device, r: &[u8]) -> Status {
    match d.handle_request(r, &mut []) {
        Reply::Status(s) => s,
        Reply::Ignore => panic!("request ignored"),
    }
}

fn take(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn calls_follow_the_guest_requests() {
    let (mut d, log, _) = device();
    assert_eq!(status(&mut d, &attach(1, 3, 0)), Status::Ok);
    assert_eq!(status(&mut d, &attach(1, 4, 0)), Status::Ok);
    // Already there: no host call.
    assert_eq!(status(&mut d, &attach(1, 4, 0)), Status::Ok);
    assert_eq!(
        take(&log),
        [
            "attach ep3 d1 bypass=false new=true",
            "attach ep4 d1 bypass=false new=false"
        ]
    );
    assert_eq!(
        status(&mut d, &map(1, 0x1000, 0x2fff, 0x8000, MAP_F_READ)),
        Status::Ok
    );
    assert_eq!(status(&mut d, &unmap(1, 0, 0xffff)), Status::Ok);
    // A rejected request never reaches the backend.
    assert_eq!(
        status(&mut d, &map(1, 0x1000, 0x1fff, 0x1001, MAP_F_READ)),
        Status::Range
    );
    assert_eq!(
        take(&log),
        ["map d1 0x1000-0x2fff 0x8000 1", "unmap d1 0x0-0xffff"]
    );
    // Implicit move: the endpoint goes to d2 first, then d1 ends when its last endpoint left.
    assert_eq!(status(&mut d, &attach(2, 3, 0)), Status::Ok);
    assert_eq!(status(&mut d, &detach(1, 4)), Status::Ok);
    assert_eq!(
        take(&log),
        [
            "attach ep3 d2 bypass=false new=true",
            "detach ep4",
            "destroy d1"
        ]
    );
    // Bypass domains; the config bypass byte reaches the backend.
    assert_eq!(status(&mut d, &attach(5, 6, ATTACH_F_BYPASS)), Status::Ok);
    assert!(d.write_config(CONFIG_BYPASS_OFFSET, &[1]));
    assert_eq!(
        take(&log),
        [
            "attach ep6 d5 bypass=true new=true",
            "unattached bypass=true"
        ]
    );
    // A device reset releases the guest's objects; a new connection the guest memory too.
    d.reset(true);
    assert_eq!(take(&log), ["reset Device", "unattached bypass=true"]);
    d.reset(false);
    assert_eq!(
        take(&log),
        [
            "reset Device",
            "reset Connection",
            "unattached bypass=false"
        ]
    );
}

#[test]
fn a_backend_failure_changes_nothing_and_sets_the_status() {
    let (mut d, _log, fail) = device();
    let fail_next = |k: &'static str, e: i32| *fail.lock().unwrap() = Some((k, e));

    fail_next("attach", libc::EBUSY);
    assert_eq!(status(&mut d, &attach(1, 3, 0)), Status::DevErr);
    assert_eq!(d.domain_list().count(), 0);
    assert_eq!(d.endpoint_list().count(), 0);

    assert_eq!(status(&mut d, &attach(1, 3, 0)), Status::Ok);
    fail_next("map", libc::ENOMEM);
    assert_eq!(
        status(&mut d, &map(1, 0x1000, 0x1fff, 0, MAP_F_READ)),
        Status::NoMem
    );
    assert_eq!(d.total_mappings(), 0);
    assert!(d.domain_mappings(1).unwrap().is_empty());
    fail_next("map", libc::EADDRINUSE);
    assert_eq!(
        status(&mut d, &map(1, 0x1000, 0x1fff, 0, MAP_F_READ)),
        Status::Inval
    );
    assert!(d.domain_mappings(1).unwrap().is_empty());
    // The same MAP succeeds once the backend does.
    assert_eq!(
        status(&mut d, &map(1, 0x1000, 0x1fff, 0, MAP_F_READ)),
        Status::Ok
    );

    fail_next("unmap", libc::EIO);
    assert_eq!(status(&mut d, &unmap(1, 0, 0xffff)), Status::DevErr);
    assert_eq!(d.total_mappings(), 1);

    // Moving to another domain fails: still in d1, d2 never existed.
    fail_next("attach", libc::ENOMEM);
    assert_eq!(status(&mut d, &attach(2, 3, 0)), Status::NoMem);
    assert_eq!(d.endpoint_list().collect::<Vec<_>>(), [(3, Some(1))]);
    assert_eq!(d.domain_list().count(), 1);

    fail_next("detach", libc::EINVAL);
    assert_eq!(status(&mut d, &detach(1, 3)), Status::Range);
    assert_eq!(d.endpoint_list().collect::<Vec<_>>(), [(3, Some(1))]);
    assert_eq!(d.total_mappings(), 1);
}
