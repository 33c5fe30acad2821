//! Live migration through vhost-user device state transfer (VHOST_USER_PROTOCOL_F_DEVICE_STATE,
//! docs/STATE.md): a driver builds state on one daemon, the frontend stops the rings, saves the
//! state through SET_DEVICE_STATE_FD(SAVE) and loads it into a second daemon with
//! SET_DEVICE_STATE_FD(LOAD), as QEMU does. The driver then carries on against the second
//! daemon, which must show the same guest-visible state and give the same translations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pagetables::build::vtd::VtdBuilder;
use pagetables::build::{Prot, TableAllocator};
use serde_json::{json, Value};
use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost_user_iommu_control::{Access, Request as Ctl};
use vhost_user_iommu_tests::device::Options;
use vhost_user_iommu_tests::mem::{TableMem, HIGH_REGION_GPA};
use vhost_user_iommu_tests::proto::status::{NOENT, OK};
use vhost_user_iommu_tests::proto::vtd_s1_desc;
use vhost_user_iommu_tests::{Daemon, Device, Request};

const LEGACY_BYPASS: u64 = 1 << 3;
const R: u32 = 1;
const W: u32 = 2;
const MMIO: u32 = 4;

fn opts() -> Options {
    Options {
        features: Some(!LEGACY_BYPASS),
        high_size: 4 << 20,
        ..Options::default()
    }
}

/// Everything the guest can observe of the device, through the control socket: endpoints,
/// domains with their mappings and tables, PASID bindings, outstanding page requests, the
/// config bypass byte, and the translations of a set of addresses (`probe` lists (endpoint,
/// PASID, IOVA) to translate, chosen to translate without side effects).
fn observe(daemon: &Daemon, probe: &[(u32, Option<u32>, u64)]) -> Value {
    let mut ctl = daemon.ctl();
    let state = ctl.guest_state();
    let mut translations = Vec::new();
    for &(endpoint, pasid, iova) in probe {
        for access in ["r", "w"] {
            let mut v = ctl.must(&Ctl::Translate {
                endpoint,
                iova,
                access: Access::parse(access),
                pasid,
                privileged: false,
            });
            // The page-request group index is the device's choice; everything else must match.
            v.as_object_mut().unwrap().remove("grpid");
            translations.push(json!({"at": [endpoint, pasid, iova, access], "result": v}));
        }
    }
    json!({"state": state, "translations": translations})
}

/// Stop the driver's rings on the source, save, and resume on `dest`.
fn migrate(d: &mut Device, dest: &Daemon, state_before_memory: bool) -> Vec<u8> {
    assert!(
        d.protocol_offered
            .contains(VhostUserProtocolFeatures::DEVICE_STATE),
        "DEVICE_STATE not offered"
    );
    let bases = d.stop_rings().unwrap();
    let state = d.save_state().unwrap();
    d.resume_on(&dest.socket, &state, bases, state_before_memory)
        .unwrap();
    state
}

fn standard_state(d: &mut Device) {
    assert_eq!(d.attach(1, 0), OK);
    assert_eq!(d.attach(1, 1), OK);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x8000, R), OK);
    assert_eq!(d.map(1, 0x10_0000, 0x2f_ffff, 0x40_0000, R | W), OK);
    assert_eq!(
        d.map(1, 0x3000_0000, 0x3000_0fff, 0xc000_0000, W | MMIO),
        OK
    );
    assert_eq!(
        d.run(&Request::attach(2, 2, 1)).status(),
        OK,
        "bypass domain"
    );
    assert_eq!(d.attach(3, 3), OK);
    assert_eq!(d.map(3, 0x5000, 0x5fff, 0x6000, W), OK);
    assert_eq!(d.attach(6, 6), OK);
    assert_eq!(d.detach(6, 6), OK);
    let probe_size = d.config().probe_size as usize;
    assert_eq!(d.run(&Request::probe(5, probe_size)).status(), OK);
    d.set_bypass(1);
}

const STANDARD_PROBE: [(u32, Option<u32>, u64); 8] = [
    (0, None, 0x1800),
    (1, None, 0x20_0000),
    (0, None, 0x3000_0000),
    (2, None, 0x1234_5000),
    (3, None, 0x5000),
    (6, None, 0x9000),
    (9, None, 0x9000),
    (5, None, 0x9000),
];

#[test]
fn standard_state_moves_to_a_second_daemon() {
    let a = Daemon::start(&[]);
    let b = Daemon::start(&[]);
    let mut d = a.connect_with(&opts());
    standard_state(&mut d);
    let before = observe(&a, &STANDARD_PROBE);
    let state = migrate(&mut d, &b, false);
    assert!(state.starts_with(b"VUIOMMUS"));
    let after = observe(&b, &STANDARD_PROBE);
    assert_eq!(after, before, "guest-visible state differs after migration");
    // The driver carries on against the destination: its event buffers are there, requests
    // work on the migrated domains.
    d.post_event_buffers(4, 32);
    assert_eq!(b.ctl().translate(3, 0x5000, "r")["outcome"], "fault");
    // (Faults the observation above provoked may come first: the worker delivers queued
    // records as soon as buffers appear.)
    let mut seen = Vec::new();
    while let Some((_, f)) = d.wait_fault(Duration::from_secs(5)) {
        seen.push((f.endpoint, f.address));
        if seen.last() == Some(&(3, 0x5000)) {
            break;
        }
    }
    assert_eq!(
        seen.last(),
        Some(&(3, 0x5000)),
        "faults delivered: {seen:x?}"
    );
    assert_eq!(d.unmap(1, 0x1000, 0x1fff), OK);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x9000, R), OK);
    assert_eq!(b.ctl().translate(0, 0x1000, "r")["phys"], 0x9000);
    // Replayed requests are not counted as the guest's: the destination counts one MAP.
    assert_eq!(b.ctl().counters()["requests"]["map"]["ok"], 1);
}

#[test]
fn the_state_may_arrive_before_the_memory_table() {
    let a = Daemon::start(&[]);
    let b = Daemon::start(&[]);
    let mut d = a.connect_with(&opts());
    standard_state(&mut d);
    let before = observe(&a, &STANDARD_PROBE);
    migrate(&mut d, &b, true);
    assert_eq!(observe(&b, &STANDARD_PROBE), before);
}

#[test]
fn guest_tables_pasids_and_page_requests_move_too() {
    let a = Daemon::start(&[]);
    let b = Daemon::start(&[]);
    let mut d = a.connect_with(&opts());
    // Domain 5: a VT-d first-stage table, RID of endpoint 3 and PASID 9 of endpoint 4.
    assert_eq!(d.attach(5, 3), OK);
    let prot = Prot {
        write: true,
        user: true,
        exec: false,
    };
    let alloc = TableAllocator::new(HIGH_REGION_GPA, HIGH_REGION_GPA + (1 << 20));
    let mut fs = VtdBuilder::new(false, alloc).unwrap();
    for page in 0..2 {
        fs.map(
            &mut TableMem(&d.mem),
            0x7000_0000 + page * 0x1000,
            0x60_0000 + page * 0x1000,
            0x1000,
            prot,
        )
        .unwrap();
    }
    let mut at = vec![6u8, 0, 0, 0];
    at.extend(5u32.to_le_bytes());
    at.extend(4u16.to_le_bytes());
    at.extend([0u8; 6]);
    let mut desc = [0u8; 48];
    desc[..4].copy_from_slice(&48u32.to_le_bytes());
    desc[8..16].copy_from_slice(&fs.pgtbl().to_le_bytes());
    at.extend(desc);
    at.extend([0u8; 4]);
    assert_eq!(at.len(), 68, "ATTACH_TABLE: 72 bytes with the tail");
    d.run(&Request::new(at)).expect(OK, "ATTACH_TABLE");
    let mut ap = vec![10u8, 0, 0, 0];
    ap.extend(5u32.to_le_bytes());
    ap.extend(4u32.to_le_bytes());
    ap.extend(9u32.to_le_bytes());
    ap.extend([0u8; 8]);
    d.run(&Request::new(ap)).expect(OK, "ATTACH_PASID");
    // Domain 8 lives only through (endpoint 0, PASID 2): created through endpoint 0, which
    // then leaves.
    assert_eq!(d.attach(8, 0), OK);
    assert_eq!(d.map(8, 0x4000, 0x4fff, 0x1_0000, R), OK);
    let mut ap = vec![10u8, 0, 0, 0];
    ap.extend(8u32.to_le_bytes());
    ap.extend(0u32.to_le_bytes());
    ap.extend(2u32.to_le_bytes());
    ap.extend([0u8; 8]);
    d.run(&Request::new(ap)).expect(OK, "ATTACH_PASID 8");
    assert_eq!(d.detach(8, 0), OK);
    // Domain 11: made by ATTACH_TABLE alone (docs/PASID.md §4.1), nothing attached yet.
    d.run(&Request::attach_table(
        11,
        4,
        &vtd_s1_desc(48, fs.pgtbl(), 0),
    ))
    .expect(OK, "ATTACH_TABLE creating domain 11");
    // A page request outstanding: delivered to the driver by the source, answered at the
    // destination.
    d.post_event_buffers(2, 32);
    let v = a.ctl().must(&Ctl::Translate {
        endpoint: 4,
        iova: 0x7001_0000,
        access: Access::Write,
        pasid: Some(9),
        privileged: false,
    });
    assert_eq!(v["outcome"], "page_request", "{v}");
    let grpid = u32::try_from(v["grpid"].as_u64().unwrap()).unwrap();

    let (len, rec) = d
        .wait_event_raw(Duration::from_secs(5), 32)
        .expect("page request record");
    assert_eq!((len, rec[0]), (32, 3));
    assert_eq!(u32::from_le_bytes(rec[24..28].try_into().unwrap()), grpid);

    let probe = [
        (3, None, 0x7000_0010),
        (4, Some(9), 0x7000_1ff0),
        (0, Some(2), 0x4800),
    ];
    let before = observe(&a, &probe);
    migrate(&mut d, &b, false);
    assert_eq!(observe(&b, &probe), before);
    let dom = b.ctl().domain(11).expect("domain 11 moved");
    assert_eq!(dom["table"]["format"], 4, "{dom}");
    // It translates for an endpoint that joins it at the destination.
    assert_eq!(d.attach(11, 6), OK);
    let t = b.ctl().must(&Ctl::Translate {
        endpoint: 6,
        iova: 0x7000_0010,
        access: Access::Read,
        pasid: None,
        privileged: false,
    });
    assert_eq!(t["phys"], 0x60_0010, "{t}");
    fs.map(&mut TableMem(&d.mem), 0x7001_0000, 0x70_0000, 0x1000, prot)
        .unwrap();
    let mut pr = vec![8u8, 0, 0, 0];
    pr.extend(4u32.to_le_bytes());
    pr.extend(9u32.to_le_bytes());
    pr.extend(grpid.to_le_bytes());
    pr.extend(0u16.to_le_bytes());
    pr.extend(1u16.to_le_bytes());
    pr.extend([0u8; 12]);
    d.run(&Request::new(pr.clone())).expect(OK, "PAGE_RESP");
    d.run(&Request::new(pr)).expect(NOENT, "answered once");
    let t = b.ctl().must(&Ctl::Translate {
        endpoint: 4,
        iova: 0x7001_0010,
        access: Access::Write,
        pasid: Some(9),
        privileged: false,
    });
    assert_eq!(t["phys"], 0x70_0010, "{t}");
}

#[test]
fn hostile_or_incompatible_states_are_refused_and_leave_nothing() {
    let a = Daemon::start(&[]);
    let mut d = a.connect_with(&opts());
    standard_state(&mut d);
    let bases = d.stop_rings().unwrap();
    let state = d.save_state().unwrap();

    // A flipped byte: the checksum catches it; the destination keeps nothing and serves on.
    let b = Daemon::start(&[]);
    let mut bad = state.clone();
    bad[100] ^= 1;
    let e = d.resume_on(&b.socket, &bad, bases, false).unwrap_err();
    assert!(e.contains("CHECK_DEVICE_STATE"), "{e}");
    assert!(b.ctl().domains().is_empty());
    assert!(b.stderr().contains("checksum"), "{}", b.stderr());

    // A destination configured differently names the setting to fix.
    let c = Daemon::start(&["--domain-range", "0-100"]);
    assert!(d.resume_on(&c.socket, &state, bases, false).is_err());
    assert!(c.ctl().domains().is_empty());
    assert!(
        c.stderr().contains("domain-end"),
        "the log should name the setting: {}",
        c.stderr()
    );

    // Garbage that is not a state at all, and a stream far beyond what the configuration
    // allows (the daemon stops reading at its limit).
    let e = Daemon::start(&["--max-mappings", "10"]);
    assert!(d
        .resume_on(&e.socket, b"not a state", bases, false)
        .is_err());
    let huge = vec![0u8; 32 << 20];
    assert!(d.resume_on(&e.socket, &huge, bases, false).is_err());
    assert!(e.stderr().contains("larger than"), "{}", e.stderr());

    // The good state still loads, and each refused destination serves a fresh driver.
    let f = Daemon::start(&[]);
    d.resume_on(&f.socket, &state, bases, false).unwrap();
    assert_eq!(f.ctl().domains().len(), 3);
    for daemon in [&b, &c, &e] {
        let mut fresh = daemon.connect_with(&opts());
        assert_eq!(fresh.attach(1, 0), OK);
    }
}
