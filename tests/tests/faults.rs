//! Fault records on the event queue.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use vhost_user_iommu_tests::proto::fault::{DOMAIN, F_ADDRESS, F_READ, F_WRITE, MAPPING};
use vhost_user_iommu_tests::proto::status::OK;
use vhost_user_iommu_tests::proto::{FAULT_RECORD_LEN, MAP_F_READ};
use vhost_user_iommu_tests::{Control, Daemon, Device};

const WAIT: Duration = Duration::from_secs(5);

fn setup() -> (Daemon, Device) {
    let daemon = Daemon::start(&[]);
    let d = daemon.connect();
    (daemon, d)
}

fn dropped(v: &Value) -> u64 {
    v["faults"]["dropped"].as_u64().expect("faults.dropped")
}

fn delivered(v: &Value) -> u64 {
    v["faults"]["delivered"].as_u64().expect("faults.delivered")
}

/// Fault delivery runs on the daemon's vring thread, after `translate` has answered: poll the
/// counters (bounded) until `done` holds, and return the last snapshot.
fn counters_when(ctl: &mut Control, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let c = ctl.counters();
        if done(&c) || std::time::Instant::now() >= deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn mapping_fault_reaches_the_eventq() {
    let (daemon, mut d) = setup();
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x10000, 0x10fff, 0x5000, MAP_F_READ), OK);
    d.post_event_buffers(8, FAULT_RECORD_LEN);

    for (iova, access, flags) in [
        (0xdead_0000u64, "r", F_READ),
        (0xdead_1008, "w", F_WRITE),
        (0xbeef_0000_0000, "rw", F_READ | F_WRITE),
        // A permission fault: the mapping is read-only.
        (0x10010, "w", F_WRITE),
    ] {
        let t = ctl.translate(3, iova, access);
        assert_eq!(t["outcome"].as_str(), Some("fault"), "{t}");
        assert_eq!(t["reason"].as_str(), Some("mapping"), "{t}");
        let (len, rec) = d
            .wait_fault(WAIT)
            .unwrap_or_else(|| panic!("no fault record for {iova:#x} {access}"));
        assert_eq!(
            len as usize, FAULT_RECORD_LEN,
            "used length of a fault record"
        );
        assert_eq!(rec.reason, MAPPING, "{rec:?}");
        assert_eq!(rec.flags, flags | F_ADDRESS, "{rec:?}");
        assert_eq!(rec.endpoint, 3, "{rec:?}");
        assert_eq!(rec.address, iova, "{rec:?}");
        assert_eq!((rec.reserved0, rec.reserved1), ([0; 3], 0), "{rec:?}");
    }
    let c = counters_when(&mut ctl, |c| delivered(c) >= 4);
    assert_eq!(delivered(&c), 4, "{c}");
    assert_eq!(dropped(&c), 0, "{c}");
    let f = ctl.faults();
    assert_eq!(f.len(), 4);
    assert!(f.iter().all(|f| f["delivered"].as_bool() == Some(true)));
}

#[test]
fn unattached_endpoint_faults_with_reason_domain() {
    let (daemon, mut d) = setup();
    let mut ctl = daemon.ctl();
    d.post_event_buffers(2, FAULT_RECORD_LEN);
    let t = ctl.translate(9, 0x4000, "r");
    assert_eq!(t["outcome"].as_str(), Some("fault"), "{t}");
    assert_eq!(t["reason"].as_str(), Some("domain"), "{t}");
    let (len, rec) = d.wait_fault(WAIT).unwrap_or_else(|| {
        panic!(
            "no DOMAIN fault record; counters {} faults {:?}; eventq used idx {}",
            ctl.counters(),
            ctl.faults(),
            d.evq.used_idx(&d.mem)
        )
    });
    assert_eq!(len as usize, FAULT_RECORD_LEN);
    assert_eq!(rec.reason, DOMAIN, "{rec:?}");
    assert_eq!(rec.endpoint, 9, "{rec:?}");
    assert_eq!(rec.flags & (F_READ | F_WRITE), F_READ, "{rec:?}");
    if rec.flags & F_ADDRESS != 0 {
        assert_eq!(rec.address, 0x4000, "{rec:?}");
    }
    // Detached endpoints fault the same way.
    assert_eq!(d.attach(1, 9), OK);
    assert_eq!(d.detach(1, 9), OK);
    let t = ctl.translate(9, 0x8000, "w");
    assert_eq!(t["reason"].as_str(), Some("domain"), "{t}");
    let (_, rec) = d
        .wait_fault(WAIT)
        .expect("no DOMAIN fault record after DETACH");
    assert_eq!((rec.reason, rec.endpoint), (DOMAIN, 9), "{rec:?}");
    assert_eq!(rec.flags & (F_READ | F_WRITE), F_WRITE, "{rec:?}");
}

#[test]
fn faults_without_event_buffers_are_dropped_and_never_block_requests() {
    let (daemon, mut d) = setup();
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    let before = ctl.counters();
    for i in 0..3u64 {
        let t = ctl.translate(3, 0x7000_0000 + i * 0x1000, "r");
        assert_eq!(t["outcome"].as_str(), Some("fault"), "{t}");
    }
    let after = counters_when(&mut ctl, |c| dropped(c) >= dropped(&before) + 3);
    assert_eq!(dropped(&after) - dropped(&before), 3, "{after}");
    assert_eq!(delivered(&after), delivered(&before), "{after}");
    // The request queue keeps working.
    assert_eq!(d.map(1, 0x10000, 0x10fff, 0, MAP_F_READ), OK);
    assert_eq!(d.attach(2, 4), OK);
    let f = ctl.faults();
    assert!(
        f.iter()
            .filter(|f| f["delivered"].as_bool() == Some(false))
            .count()
            >= 3
    );
    // Dropped faults stay dropped: buffers posted later receive only new faults.
    d.post_event_buffers(4, FAULT_RECORD_LEN);
    assert!(
        d.wait_fault(Duration::from_millis(300)).is_none(),
        "a dropped fault was delivered later"
    );
    ctl.translate(3, 0x7100_0000, "w");
    let (_, rec) = d.wait_fault(WAIT).expect("fault after posting buffers");
    assert_eq!((rec.reason, rec.address), (MAPPING, 0x7100_0000), "{rec:?}");
}

#[test]
fn more_faults_than_buffers() {
    let (daemon, mut d) = setup();
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    d.post_event_buffers(2, FAULT_RECORD_LEN);
    for i in 0..5u64 {
        ctl.translate(3, 0x9000_0000 + i * 0x1000, "r");
    }
    let mut got = Vec::new();
    while let Some((_, rec)) = d.wait_fault(Duration::from_millis(500)) {
        got.push(rec.address);
    }
    assert_eq!(
        got,
        vec![0x9000_0000, 0x9000_1000],
        "the first two faults fill the two buffers"
    );
    let c = counters_when(&mut ctl, |c| delivered(c) + dropped(c) >= 5);
    assert_eq!(delivered(&c), 2, "{c}");
    assert_eq!(dropped(&c), 3, "{c}");
    assert_eq!(d.attach(2, 4), OK);
}

#[test]
fn fault_records_in_the_high_memory_region() {
    let (daemon, mut d) = setup();
    d.buf_region = 1;
    d.post_event_buffers(1, FAULT_RECORD_LEN);
    daemon.ctl().translate(12, 0x3000, "r");
    let (_, rec) = d.wait_fault(WAIT).expect("fault record in the high region");
    assert_eq!((rec.reason, rec.endpoint), (DOMAIN, 12));
}

#[test]
fn hostile_event_buffers_do_not_break_fault_delivery() {
    use vhost_user_iommu_tests::virtq::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    let (mut daemon, mut d) = setup();
    let mut ctl = daemon.ctl();
    // Too small for a record, read-only, in a memory hole, split over two descriptors.
    let small = d.alloc(8);
    let ro = d.alloc(24);
    let split = d.alloc(24);
    d.evq.add_chain(&d.mem, &[(small, 8, true)]);
    d.evq.add_chain(&d.mem, &[(ro, 24, false)]);
    d.evq.add_chain(&d.mem, &[(0x8000_0000, 24, true)]);
    let idx = d.evq.alloc_descs(2);
    d.evq.write_desc(
        &d.mem,
        idx[0],
        vhost_user_iommu_tests::Desc {
            addr: split,
            len: 12,
            flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
            next: idx[1],
        },
    );
    d.evq.write_desc(
        &d.mem,
        idx[1],
        vhost_user_iommu_tests::Desc {
            addr: split + 12,
            len: 12,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        },
    );
    d.evq.push_head(&d.mem, idx[0], idx.clone());
    d.evq.publish_and_kick(&d.mem);
    for i in 0..4u64 {
        ctl.translate(3, 0x1000 * (i + 1), "r");
    }
    // Whatever came back for the broken buffers must not claim a record it could not hold.
    while let Some(u) = d.evq.wait_used(&d.mem, Duration::from_millis(300)) {
        let head = u16::try_from(u.id).unwrap();
        if head == idx[0] {
            // Two descriptors of 12 bytes form one 24-byte buffer: a record may go there.
            assert!(
                u.len == 0 || u.len == 24,
                "split buffer used length {}",
                u.len
            );
        } else {
            assert_eq!(
                u.len, 0,
                "a buffer that cannot hold a record must be returned with length 0"
            );
        }
    }
    daemon.assert_alive();
    assert_eq!(d.attach(1, 3), OK);
    // Good buffers still receive records.
    d.post_event_buffers(1, FAULT_RECORD_LEN);
    ctl.translate(3, 0xabc_d000, "w");
    let (len, rec) = d
        .wait_fault(WAIT)
        .expect("fault after hostile event buffers");
    assert_eq!(len as usize, FAULT_RECORD_LEN);
    assert_eq!(
        (rec.reason, rec.endpoint, rec.address),
        (MAPPING, 3, 0xabc_d000)
    );
}

#[test]
fn event_buffers_longer_than_a_record_report_24_bytes() {
    // Linux rejects an event whose used length is not exactly the record size.
    let (daemon, mut d) = setup();
    d.post_event_buffers(1, 64);
    daemon.ctl().translate(5, 0x6000, "r");
    let (len, rec) = d.wait_fault(WAIT).expect("fault in a 64-byte buffer");
    assert_eq!(
        len as usize, FAULT_RECORD_LEN,
        "used length must be the record size"
    );
    assert_eq!((rec.reason, rec.endpoint), (DOMAIN, 5));
}
