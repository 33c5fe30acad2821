//! The device model's calls into a host backend: order, arguments, and what a backend failure
//! does to the guest-visible state (nothing) and the status (the error's).

use std::sync::{Arc, Mutex};

use crate::config::{DeviceConfig, EndpointSet};
use crate::device::{Device, Reply};
use crate::guest_tables::{Binding, Invalidate};
use crate::host::*;
use crate::protocol::*;

/// Records every call; fails the next call of the kind named in `fail` with `errno`.
#[derive(Debug, Default)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    fail: Arc<Mutex<Option<(&'static str, i32)>>>,
    /// Page requests the "host" reports at the next `page_requests`.
    host_reqs: Arc<Mutex<Vec<HostPageRequest>>>,
    /// Faults the "host" reports at the next `host_faults`.
    host_faults: Arc<Mutex<Vec<HostFault>>>,
    /// Guest tables without a nesting host, as the software backend has them.
    no_nesting: bool,
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
    fn guest_tables(&self) -> bool {
        true
    }
    fn nesting(&self) -> Option<&dyn NestingHost> {
        if self.no_nesting {
            return None;
        }
        Some(self)
    }
    fn nesting_mut(&mut self) -> Option<&mut dyn NestingHost> {
        if self.no_nesting {
            return None;
        }
        Some(self)
    }
}

impl NestingHost for Recorder {
    fn host_iommu(&self) -> Option<HostIommu> {
        None
    }
    fn page_request_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn attach_table(&mut self, d: u32, b: &Binding) -> Result<(), BackendError> {
        self.call("table", format!("attach_table d{d} format {}", b.format()))
    }
    fn detach_table(&mut self, d: u32) -> Result<(), BackendError> {
        self.call("table", format!("detach_table d{d}"))
    }
    fn attach_pasid(&mut self, ep: u32, p: u32, d: u32) -> Result<(), BackendError> {
        self.call("pasid", format!("attach_pasid ep{ep} pasid{p} d{d}"))
    }
    fn detach_pasid(&mut self, ep: u32, p: u32) -> Result<(), BackendError> {
        self.call("pasid", format!("detach_pasid ep{ep} pasid{p}"))
    }
    fn invalidate(&mut self, d: u32, inv: &Invalidate) -> Result<(), BackendError> {
        self.call(
            "invalidate",
            format!("invalidate d{d} {:?} caches {}", inv.scope, inv.caches),
        )
    }
    fn page_requests(&mut self) -> Vec<HostPageRequest> {
        std::mem::take(&mut *self.host_reqs.lock().unwrap())
    }
    fn host_faults(&mut self) -> Vec<HostFault> {
        std::mem::take(&mut *self.host_faults.lock().unwrap())
    }
    fn page_response(&mut self, cookie: u32, code: u16) -> Result<(), BackendError> {
        self.call("resp", format!("page_response cookie {cookie} code {code}"))
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

/// A device with the extension negotiated and 64 KiB of guest RAM at 0x10000.
fn ext_device() -> (Device, Log, Fail, Arc<Mutex<Vec<HostPageRequest>>>) {
    ext_device_of(Recorder::default())
}

fn ext_device_of(r: Recorder) -> (Device, Log, Fail, Arc<Mutex<Vec<HostPageRequest>>>) {
    let (log, fail, reqs) = (r.log.clone(), r.fail.clone(), r.host_reqs.clone());
    let cfg = DeviceConfig {
        endpoints: EndpointSet::Ranges(vec![(0, 15)]),
        ..DeviceConfig::default()
    };
    let mut d = Device::with_backend(cfg, Box::new(r));
    let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
        vm_memory::GuestAddress(0x10000),
        0x10000,
    )])
    .unwrap();
    d.set_walk_memory(vm_memory::GuestMemoryAtomic::new(mem));
    d.set_acked_features(FEATURES | (1 << F_ATTACH_TABLE) | (1 << F_PAGE_REQUEST));
    log.lock().unwrap().clear();
    (d, log, fail, reqs)
}

fn attach_table_vtd(domain: u32, pgd: u64) -> Vec<u8> {
    let mut desc = [0u8; 48];
    desc[0..4].copy_from_slice(&48u32.to_le_bytes());
    desc[8..16].copy_from_slice(&pgd.to_le_bytes());
    req(
        T_ATTACH_TABLE,
        &[
            &domain.to_le_bytes(),
            &4u16.to_le_bytes(),
            &[0; 6],
            &desc,
            &[0; 4],
        ],
    )
}

fn invalidate_domain(domain: u32) -> Vec<u8> {
    req(
        T_INVALIDATE,
        &[
            &1u16.to_le_bytes(),
            &1u16.to_le_bytes(),
            &[0; 4],
            &domain.to_le_bytes(),
            &[0; 48],
        ],
    )
}

fn pasid_req(type_: u8, domain: u32, ep: u32, pasid: u32) -> Vec<u8> {
    req(
        type_,
        &[
            &domain.to_le_bytes(),
            &ep.to_le_bytes(),
            &pasid.to_le_bytes(),
            &[0; 8],
        ],
    )
}

fn page_resp(ep: u32, grpid: u32, code: u16) -> Vec<u8> {
    req(
        T_PAGE_RESP,
        &[
            &ep.to_le_bytes(),
            &[0; 4],
            &grpid.to_le_bytes(),
            &code.to_le_bytes(),
            &[0; 14],
        ],
    )
}

#[test]
fn extension_requests_reach_the_backend_before_they_commit() {
    let (mut d, log, fail, _) = ext_device();
    let fail_next = |k: &'static str, e: i32| *fail.lock().unwrap() = Some((k, e));
    assert_eq!(status(&mut d, &attach(1, 3, 0)), Status::Ok);
    take(&log);

    // ATTACH_TABLE refused by the host: no table, the error's status.
    fail_next("table", libc::ENOMEM);
    assert_eq!(status(&mut d, &attach_table_vtd(1, 0x10000)), Status::NoMem);
    assert_eq!(d.domain_table(1), None);
    // Refused by the model (pgd outside guest RAM): the host never hears of it.
    assert_eq!(
        status(&mut d, &attach_table_vtd(1, 0x9000_0000)),
        Status::Range
    );
    assert_eq!(status(&mut d, &attach_table_vtd(1, 0x10000)), Status::Ok);
    assert!(d.domain_table(1).is_some());
    assert_eq!(
        take(&log),
        ["attach_table d1 format 4", "attach_table d1 format 4"]
    );

    // INVALIDATE: the host's error is the status (the model's IOTLB is untouched either way).
    fail_next("invalidate", libc::EIO);
    assert_eq!(status(&mut d, &invalidate_domain(1)), Status::DevErr);
    assert_eq!(status(&mut d, &invalidate_domain(1)), Status::Ok);
    assert_eq!(
        take(&log),
        [
            "invalidate d1 Domain caches 1",
            "invalidate d1 Domain caches 1"
        ]
    );

    // ATTACH_PASID / DETACH_PASID.
    fail_next("pasid", libc::EOPNOTSUPP);
    assert_eq!(
        status(&mut d, &pasid_req(T_ATTACH_PASID, 1, 4, 7)),
        Status::DevErr
    );
    assert_eq!(d.pasid_attach_list().count(), 0);
    assert_eq!(
        status(&mut d, &pasid_req(T_ATTACH_PASID, 1, 4, 7)),
        Status::Ok
    );
    fail_next("pasid", libc::EBUSY);
    assert_eq!(
        status(&mut d, &pasid_req(T_DETACH_PASID, 1, 4, 7)),
        Status::DevErr
    );
    assert_eq!(d.pasid_attach_list().collect::<Vec<_>>(), [(4, 7, 1)]);
    assert_eq!(
        status(&mut d, &pasid_req(T_DETACH_PASID, 1, 4, 7)),
        Status::Ok
    );
    assert_eq!(d.pasid_attach_list().count(), 0);

    // DETACH_TABLE refused: the table stays.
    take(&log);
    fail_next("table", libc::EBUSY);
    assert_eq!(
        status(
            &mut d,
            &req(T_DETACH_TABLE, &[&1u32.to_le_bytes(), &[0; 8]])
        ),
        Status::DevErr
    );
    assert!(d.domain_table(1).is_some());
    assert_eq!(
        status(
            &mut d,
            &req(T_DETACH_TABLE, &[&1u32.to_le_bytes(), &[0; 8]])
        ),
        Status::Ok
    );
    assert_eq!(d.domain_table(1), None);
    assert_eq!(take(&log), ["detach_table d1", "detach_table d1"]);
}

#[test]
fn without_a_nesting_host_extension_requests_change_the_model_only() {
    // Guest tables that take effect without a nesting host (the software backend): the same
    // statuses as a host that accepts everything, and no host call.
    let (mut d, log, fail, reqs) = ext_device_of(Recorder {
        no_nesting: true,
        ..Recorder::default()
    });
    assert_ne!(d.features() & (1 << F_ATTACH_TABLE), 0);
    assert_eq!(status(&mut d, &attach(1, 3, 0)), Status::Ok);
    assert_eq!(take(&log), ["attach ep3 d1 bypass=false new=true"]);
    for kind in ["table", "invalidate", "pasid", "resp"] {
        *fail.lock().unwrap() = Some((kind, libc::EIO));
        assert_eq!(status(&mut d, &attach_table_vtd(1, 0x10000)), Status::Ok);
        assert_eq!(status(&mut d, &invalidate_domain(1)), Status::Ok);
        assert_eq!(
            status(
                &mut d,
                &req(T_DETACH_TABLE, &[&1u32.to_le_bytes(), &[0; 8]])
            ),
            Status::Ok
        );
    }
    assert_eq!(status(&mut d, &attach(2, 4, 0)), Status::Ok);
    assert_eq!(
        status(&mut d, &pasid_req(T_ATTACH_PASID, 2, 5, 7)),
        Status::Ok
    );
    assert_eq!(
        status(&mut d, &pasid_req(T_DETACH_PASID, 2, 5, 7)),
        Status::Ok
    );
    assert_eq!(take(&log), ["attach ep4 d2 bypass=false new=true"]);
    // No host page requests, no host fd.
    reqs.lock().unwrap().push(HostPageRequest {
        endpoint: 3,
        pasid: None,
        grpid: 1,
        perm: 1,
        address: 0x1000,
        last: true,
        cookie: 9,
    });
    assert_eq!(d.host_page_requests(), 0);
    assert_eq!(d.host_events(), 0);
    assert_eq!(d.host_page_request_fd(), None);
    assert!(take(&log).is_empty());
}

#[test]
fn attach_table_creates_domains_within_bounds() {
    // A nesting host allocates a nested HWPT for an endpoint's device: no domain without one.
    let (mut d, log, _, _) = ext_device();
    assert_eq!(
        status(&mut d, &attach_table_vtd(9, 0x10000)),
        Status::Unsupp
    );
    assert_eq!(d.domain_list().count(), 0);
    assert!(take(&log).is_empty(), "the host saw nothing");

    // The software walkers: ATTACH_TABLE creates the domain; DETACH_TABLE ends it while
    // nothing is attached; super::MAX_TABLE_ONLY_DOMAINS of them at most (NOMEM after, nothing made).
    let (mut d, _, _, _) = ext_device_of(Recorder {
        no_nesting: true,
        ..Recorder::default()
    });
    assert_eq!(status(&mut d, &attach_table_vtd(9, 0x10000)), Status::Ok);
    assert_eq!(d.domain_list().count(), 1);
    let detach_table = |dom: u32| req(T_DETACH_TABLE, &[&dom.to_le_bytes(), &[0; 8]]);
    assert_eq!(status(&mut d, &detach_table(9)), Status::Ok);
    assert_eq!(
        d.domain_list().count(),
        0,
        "an unused domain ends at DETACH_TABLE"
    );
    let max = u32::try_from(super::MAX_TABLE_ONLY_DOMAINS).unwrap();
    for dom in 0..max {
        assert_eq!(status(&mut d, &attach_table_vtd(dom, 0x10000)), Status::Ok);
    }
    assert_eq!(
        status(&mut d, &attach_table_vtd(max, 0x10000)),
        Status::NoMem
    );
    assert_eq!(d.domain_list().count(), super::MAX_TABLE_ONLY_DOMAINS);
    // An endpoint joining one of them makes room (it now holds an endpoint), and rebinding
    // an existing domain is not creating one.
    assert_eq!(status(&mut d, &attach(3, 3, 0)), Status::Ok);
    assert_eq!(status(&mut d, &attach_table_vtd(3, 0x11000)), Status::Ok);
    assert_eq!(status(&mut d, &attach_table_vtd(max, 0x10000)), Status::Ok);
}

#[test]
fn host_page_requests_become_records_and_responses_go_back() {
    let (mut d, log, fail, reqs) = ext_device();
    let fail_next = |k: &'static str, e: i32| *fail.lock().unwrap() = Some((k, e));
    let pr = |grpid, last, cookie| HostPageRequest {
        endpoint: 3,
        pasid: None,
        grpid,
        perm: 0b1011, // READ | WRITE | PRIV
        address: 0x1234_5678,
        last,
        cookie,
    };
    // A group of two records: one guest group index, the LAST one carries the cookie.
    reqs.lock()
        .unwrap()
        .extend([pr(5, false, 70), pr(5, true, 71)]);
    assert_eq!(d.host_page_requests(), 2);
    let e1 = d.pop_event().unwrap();
    let e2 = d.pop_event().unwrap();
    assert_eq!(e1.bytes().len(), 32);
    let b = e2.bytes();
    assert_eq!(b[0], FAULT_R_PAGE_REQUEST);
    let le32 = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    assert_eq!(le32(b, 4), 0b1011 | FAULT_F_ADDRESS | FAULT_F_LAST);
    assert_eq!(le32(e1.bytes(), 4), 0b1011 | FAULT_F_ADDRESS, "not LAST");
    assert_eq!(le32(b, 8), 3);
    assert_eq!(&b[16..24], &0x1234_5000u64.to_le_bytes());
    let g = le32(b, 24);
    assert_eq!(le32(e1.bytes(), 24), g, "one group");

    // The host refuses the response: the request stays outstanding.
    fail_next("resp", libc::EINVAL);
    assert_eq!(status(&mut d, &page_resp(3, g, 0)), Status::Range);
    assert_eq!(d.page_request_list().count(), 1);
    assert_eq!(status(&mut d, &page_resp(3, g, 0)), Status::Ok);
    assert_eq!(d.page_request_list().count(), 0);
    assert_eq!(
        take(&log),
        [
            "page_response cookie 71 code 0",
            "page_response cookie 71 code 0"
        ]
    );

    // Page requests not negotiated: the host gets INVALID at once, the guest nothing.
    d.set_acked_features(FEATURES | (1 << F_ATTACH_TABLE));
    take(&log);
    reqs.lock().unwrap().push(pr(6, true, 72));
    assert_eq!(d.host_page_requests(), 0);
    assert!(d.pop_event().is_none());
    assert_eq!(take(&log), ["page_response cookie 72 code 1"]);
}

#[test]
fn host_faults_become_fault_records() {
    let r = Recorder::default();
    let faults = r.host_faults.clone();
    let cfg = DeviceConfig {
        endpoints: EndpointSet::Ranges(vec![(0, 15)]),
        ..DeviceConfig::default()
    };
    let mut d = Device::with_backend(cfg, Box::new(r));
    d.set_acked_features(FEATURES | (1 << F_ATTACH_TABLE) | (1 << F_PAGE_REQUEST));
    faults.lock().unwrap().extend([
        HostFault {
            endpoint: 5,
            pasid: Some(9),
            reason: FAULT_R_MAPPING,
            access: 2 | 8,
            address: Some(0xdead_b000),
        },
        HostFault {
            endpoint: 6,
            pasid: None,
            reason: FAULT_R_UNKNOWN,
            access: 0,
            address: None,
        },
    ]);
    assert_eq!(d.host_events(), 2);
    let le32 = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let e = d.pop_event().unwrap();
    let b = e.bytes();
    assert_eq!(b.len(), 24);
    assert_eq!(b[0], FAULT_R_MAPPING);
    assert_eq!(
        le32(b, 4),
        FAULT_F_WRITE | FAULT_F_PRIV | FAULT_F_ADDRESS | FAULT_F_PASID_VALID
    );
    assert_eq!((le32(b, 8), le32(b, 12)), (5, 9));
    assert_eq!(&b[16..24], &0xdead_b000u64.to_le_bytes());
    let b = d.pop_event().unwrap();
    assert_eq!(
        (b.bytes()[0], le32(b.bytes(), 4), le32(b.bytes(), 8)),
        (FAULT_R_UNKNOWN, 0, 6)
    );
    assert!(d.pop_event().is_none());
}
