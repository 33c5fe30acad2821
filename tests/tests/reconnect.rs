//! Disconnect then reconnect: every piece of device state is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vhost_user_iommu_tests::proto::status::OK;
use vhost_user_iommu_tests::proto::{FAULT_RECORD_LEN, MAP_F_READ, MAP_F_WRITE};
use vhost_user_iommu_tests::{Control, Daemon};

const RW: u32 = MAP_F_READ | MAP_F_WRITE;

fn wait_disconnected(ctl: &mut Control) {
    assert!(
        ctl.wait_disconnected(Duration::from_secs(5)),
        "daemon still reports a connection"
    );
}

#[test]
fn reconnect_starts_from_a_clean_device() {
    let mut daemon = Daemon::start(&[]);
    let mut ctl = daemon.ctl();
    {
        let mut d = daemon.connect();
        assert_eq!(d.attach(1, 3), OK);
        assert_eq!(d.attach(2, 4), OK);
        assert_eq!(d.map(1, 0x10000, 0x1ffff, 0x100000, RW), OK);
        assert_eq!(d.map(2, 0x10000, 0x1ffff, 0x200000, RW), OK);
        d.set_bypass(1);
        d.post_event_buffers(4, FAULT_RECORD_LEN);
        let st = ctl.status();
        assert_eq!(st["domains"].as_u64(), Some(2));
        assert_eq!(st["mappings"].as_u64(), Some(2));
        // The frontend (and its socket) goes away here.
    }
    wait_disconnected(&mut ctl);
    daemon.assert_alive();

    let mut d = daemon.connect();
    let st = ctl.status();
    assert_eq!(st["connected"].as_bool(), Some(true));
    assert_eq!(st["domains"].as_u64(), Some(0), "{st}");
    assert_eq!(st["mappings"].as_u64(), Some(0), "{st}");
    assert!(ctl.domains().is_empty());
    assert_eq!(ctl.endpoint_domain(3), None);
    assert_eq!(ctl.endpoint_domain(4), None);
    assert!(ctl.mappings(1).map(|m| m.is_empty()).unwrap_or(true));
    assert_eq!(
        d.config().bypass,
        0,
        "bypass is back to its boot value on a new connection"
    );
    // The old event buffers are gone with the old memory: a fault now is dropped, not written
    // into the previous connection's memory.
    let t = ctl.translate(3, 0x10000, "r");
    assert_eq!(t["outcome"].as_str(), Some("fault"), "{t}");
    assert_eq!(t["reason"].as_str(), Some("domain"), "{t}");
    // A fresh ATTACH/MAP of the same ids and ranges works (no stale overlap).
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x10000, 0x1ffff, 0x100000, RW), OK);
    let t = ctl.translate(3, 0x10010, "r");
    assert_eq!(t["outcome"].as_str(), Some("translated"), "{t}");
    assert_eq!(t["phys"].as_u64(), Some(0x100010), "{t}");
    assert!(ctl.status()["connections"].as_u64().unwrap() >= 2);
}

#[test]
fn reconnect_many_times() {
    let mut daemon = Daemon::start(&[]);
    let mut ctl = daemon.ctl();
    for i in 0..10u64 {
        let mut d = daemon.connect();
        assert_eq!(ctl.status()["mappings"].as_u64(), Some(0), "round {i}");
        assert_eq!(d.attach(1, 3), OK, "round {i}");
        assert_eq!(d.map(1, 0x10000, 0x10fff, i * 0x1000, RW), OK, "round {i}");
        drop(d);
        wait_disconnected(&mut ctl);
    }
    daemon.assert_alive();
}

#[test]
fn disconnect_with_requests_in_flight() {
    let mut daemon = Daemon::start(&[]);
    let mut ctl = daemon.ctl();
    {
        let mut d = daemon.connect();
        assert_eq!(d.attach(1, 3), OK);
        // Made available but never kicked, plus a kicked batch we never wait for.
        for i in 0..50u64 {
            d.submit(&vhost_user_iommu_tests::Request::map(
                1,
                i * 0x1000,
                i * 0x1000 + 0xfff,
                0,
                RW,
            ));
        }
        d.kick();
    }
    wait_disconnected(&mut ctl);
    daemon.assert_alive();
    let mut d = daemon.connect();
    assert_eq!(ctl.status()["mappings"].as_u64(), Some(0));
    assert_eq!(d.attach(1, 3), OK);
}

#[test]
fn a_second_frontend_waits_for_the_first() {
    let mut daemon = Daemon::start(&[]);
    let mut ctl = daemon.ctl();
    let mut first = daemon.connect();
    assert_eq!(first.attach(1, 3), OK);
    // A second connection is not served while the first is up: its setup would block, so do it
    // in a thread and check it has not completed before the first goes away.
    let sock = daemon.socket.clone();
    let ctl_path = daemon.control.clone();
    let second = std::thread::spawn(move || {
        let mut d = vhost_user_iommu_tests::Device::connect(&sock, &Default::default())
            .map_err(|e| e.to_string())?;
        let st = d.attach(7, 8);
        let mut ctl = Control::connect(&ctl_path).map_err(|e| e.to_string())?;
        // While this frontend is connected, only its state exists.
        Ok::<_, String>((st, ctl.endpoint_domain(8), ctl.endpoint_domain(3)))
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        ctl.endpoint_domain(8),
        None,
        "second frontend served concurrently"
    );
    assert_eq!(first.attach(2, 4), OK, "first frontend still served");
    drop(first);
    let r = second.join().expect("second frontend thread");
    assert_eq!(
        r,
        Ok((OK, Some(7), None)),
        "second frontend after the first disconnected: (status, ep 8 domain, ep 3 domain)"
    );
    daemon.assert_alive();
}

#[test]
fn stopping_and_restarting_the_rings_keeps_the_device_state() {
    // A VMM stops the rings (GET_VRING_BASE) when the VM pauses and starts them again on
    // resume; that is not a device reset: domains and mappings stay.
    let daemon = Daemon::start(&[]);
    let mut ctl = daemon.ctl();
    let mut d = daemon.connect();
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x10000, 0x1ffff, 0x100000, RW), OK);
    d.post_event_buffers(2, FAULT_RECORD_LEN);
    let bases = d.stop_rings().expect("stop rings");
    assert_eq!(
        bases[0],
        u32::from(d.reqq.published_idx()),
        "requestq base = every request made available so far"
    );
    // A request made available while stopped is not processed until the ring restarts.
    let head = d.submit(&vhost_user_iommu_tests::Request::map(
        1, 0x40000, 0x40fff, 0, RW,
    ));
    d.kick();
    assert!(
        d.wait_response(Duration::from_millis(300)).is_none(),
        "a stopped ring was processed"
    );
    d.start_rings(bases).expect("restart rings");
    let r = d
        .wait_response(Duration::from_secs(5))
        .expect("request made available while stopped, after restart");
    assert_eq!(r.head, head);
    r.expect(OK, "MAP after restart");
    assert_eq!(
        ctl.mappings(1).unwrap().len(),
        2,
        "mappings survive a ring stop/start"
    );
    assert_eq!(ctl.endpoint_domain(3), Some(1));
    assert_eq!(d.attach(2, 4), OK);
}

#[test]
fn a_ring_restarted_at_zero_is_a_guest_reset_and_drops_guest_state() {
    // QEMU's generic vhost-user device stops the rings the same way for a VM pause and for a
    // guest reset; after a reset the new driver's rings start at index 0 and its first ATTACH
    // and MAPs must not meet the previous boot's domains.
    let daemon = Daemon::start(&[]);
    let mut ctl = daemon.ctl();
    let mut d = daemon.connect();
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.attach(1, 4), OK);
    assert_eq!(d.map(1, 0x10000, 0x1ffff, 0x100000, RW), OK);
    d.set_bypass(1);
    let bases = d.stop_rings().expect("stop rings");
    assert_ne!(bases[0], 0);
    // The rebooted guest's driver lays out new rings.
    let (rsize, esize, eidx) = (d.reqq.size, d.evq.size, d.reqq.event_idx);
    d.reqq = vhost_user_iommu_tests::SplitQueue::new(&d.mem, 0, rsize);
    d.evq = vhost_user_iommu_tests::SplitQueue::new(&d.mem, 1, esize);
    d.reqq.event_idx = eidx;
    d.evq.event_idx = eidx;
    d.start_rings([0, 0]).expect("restart rings at 0");
    // Same domain id, same range: OK only if the old mapping is gone.
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x10000, 0x1ffff, 0x200000, RW), OK);
    let maps = ctl.mappings(1).unwrap();
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0].phys_start, 0x200000);
    assert_eq!(
        ctl.endpoint_domain(4),
        None,
        "endpoint 4 belonged to the previous boot"
    );
    // The config bypass byte survives a device reset.
    assert_eq!(d.config().bypass, 1);
}

#[test]
fn disabled_ring_is_not_processed_until_enabled() {
    use vhost::vhost_user::VhostUserFrontend;
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect();
    assert_eq!(d.attach(1, 3), OK);
    d.fe.set_vring_enable(0, false).expect("disable requestq");
    let head = d.submit(&vhost_user_iommu_tests::Request::attach(2, 4, 0));
    d.kick();
    assert!(
        d.wait_response(Duration::from_millis(300)).is_none(),
        "a disabled ring was processed"
    );
    d.fe.set_vring_enable(0, true).expect("enable requestq");
    let r = d
        .wait_response(Duration::from_secs(5))
        .expect("request pending while disabled, after enable (no new kick)");
    assert_eq!(r.head, head);
    r.expect(OK, "ATTACH after re-enable");
    assert_eq!(daemon.ctl().endpoint_domain(4), Some(2));
}

#[test]
fn garbage_and_half_finished_setups_do_not_kill_the_daemon() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use vhost::VhostBackend;
    let mut daemon = Daemon::start(&[]);
    let mut ctl = daemon.ctl();
    // Connect and leave without a word.
    drop(UnixStream::connect(&daemon.socket).expect("connect"));
    wait_disconnected(&mut ctl);
    // Bytes that are not vhost-user messages.
    {
        let mut s = UnixStream::connect(&daemon.socket).expect("connect");
        let _ = s.write_all(&[0xff; 64]);
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    }
    wait_disconnected(&mut ctl);
    // A header announcing a huge payload, then hang up.
    {
        let mut s = UnixStream::connect(&daemon.socket).expect("connect");
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&5u32.to_le_bytes()); // SET_MEM_TABLE
        hdr.extend_from_slice(&1u32.to_le_bytes()); // version 1
        hdr.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
        let _ = s.write_all(&hdr);
    }
    wait_disconnected(&mut ctl);
    // Owner set, features read, then gone.
    {
        let fe = vhost::vhost_user::Frontend::connect(&daemon.socket, 2).expect("connect");
        fe.set_owner().expect("SET_OWNER");
        fe.get_features().expect("GET_FEATURES");
    }
    wait_disconnected(&mut ctl);
    daemon.assert_alive();
    let mut d = daemon.connect();
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0, RW), OK);
    daemon.assert_alive();
}
