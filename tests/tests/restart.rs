//! Restarting the daemon under a running VM (`--state-dir`, docs/STATE.md "Restart"): the
//! device state is journaled as it changes; a daemon started again on the same directory
//! resumes it when the VMM reconnects and the driver carries on, and drops it for a new
//! driver. The frontend here reconnects as `vhost-user-iommu proxy` does for QEMU: same
//! memory, rings restarted at the used index.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use vhost_user_iommu_tests::daemon::TempDir;
use vhost_user_iommu_tests::device::Options;
use vhost_user_iommu_tests::proto::status::OK;
use vhost_user_iommu_tests::{Daemon, Device, Request};

const R: u32 = 1;
const W: u32 = 2;

fn start(dir: &TempDir) -> Daemon {
    Daemon::start(&["--state-dir", dir.path().join("state").to_str().unwrap()])
}

fn build_state(d: &mut Device) {
    assert_eq!(d.attach(1, 0), OK);
    assert_eq!(d.attach(1, 1), OK);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x8000, R), OK);
    assert_eq!(d.map(1, 0x10_0000, 0x2f_ffff, 0x40_0000, R | W), OK);
    assert_eq!(d.map(1, 0x3000, 0x3fff, 0x9000, W), OK);
    assert_eq!(d.unmap(1, 0x3000, 0x3fff), OK);
    assert_eq!(d.run(&Request::attach(2, 2, 1)).status(), OK);
    assert_eq!(d.attach(3, 3), OK);
    assert_eq!(d.map(3, 0x5000, 0x5fff, 0x6000, W), OK);
    assert_eq!(d.attach(3, 4), OK);
    assert_eq!(d.detach(3, 4), OK);
    d.set_bypass(1);
}

/// The guest-visible state and a few translations, through the control socket.
fn observe(daemon: &Daemon) -> Value {
    let mut ctl = daemon.ctl();
    let state = ctl.guest_state();
    let mut t = Vec::new();
    for (ep, iova) in [
        (0, 0x1800),
        (1, 0x20_0000),
        (2, 0x7000),
        (3, 0x5000),
        (4, 0x5000),
    ] {
        t.push(ctl.translate(ep, iova, "r"));
    }
    json!({"state": state, "t": t})
}

/// The driver's next request after the reconnect (any request: it is what tells the new
/// daemon the driver carries on).
fn next_request(d: &mut Device) {
    let size = d.config().probe_size as usize;
    assert_eq!(d.run(&Request::probe(0, size)).status(), OK);
}

#[test]
fn a_killed_daemon_restarted_on_the_same_journal_resumes_the_vm() {
    let dir = TempDir::new();
    let a = start(&dir);
    let mut d = a.connect_with(&Options::default());
    build_state(&mut d);
    let before = observe(&a);
    // A crash: nothing is written at exit.
    drop(a);
    let b = start(&dir);
    d.reconnect(&b.socket, d.ring_positions()).unwrap();
    next_request(&mut d);
    assert_eq!(observe(&b), before, "state after the restart");
    // The driver carries on: its domains take new requests; the journal follows.
    assert_eq!(d.unmap(1, 0x1000, 0x1fff), OK);
    assert_eq!(d.map(3, 0x7000, 0x7fff, 0xa000, R), OK);
    let again = observe(&b);
    drop(b);
    // And a second restart (SIGTERM this time) finds the newer state.
    let c = start(&dir);
    d.reconnect(&c.socket, d.ring_positions()).unwrap();
    next_request(&mut d);
    assert_eq!(observe(&c), again);
    let mut term = c;
    term.signal(libc::SIGTERM);
    assert!(term.wait_exit(std::time::Duration::from_secs(10)).is_some());
    let e = start(&dir);
    d.reconnect(&e.socket, d.ring_positions()).unwrap();
    next_request(&mut d);
    assert_eq!(observe(&e), again);
}

#[test]
fn a_new_driver_does_not_inherit_the_previous_state() {
    let dir = TempDir::new();
    let a = start(&dir);
    let mut d = a.connect_with(&Options::default());
    build_state(&mut d);
    drop(a);
    let b = start(&dir);
    // A fresh boot: its request queue starts at 0.
    let mut fresh = b.connect_with(&Options::default());
    next_request(&mut fresh);
    assert!(b.ctl().domains().is_empty());
    assert_eq!(b.ctl().translate(0, 0x1800, "r")["outcome"], "fault");
    drop(fresh);
    drop(b);
    // Nothing left for the next start either.
    let c = start(&dir);
    d.reconnect(&c.socket, d.ring_positions()).unwrap();
    next_request(&mut d);
    assert!(c.ctl().domains().is_empty());
}

#[test]
fn a_vm_that_goes_away_leaves_nothing_to_resume() {
    let dir = TempDir::new();
    let a = start(&dir);
    let mut d = a.connect_with(&Options::default());
    build_state(&mut d);
    // The frontend leaves while the daemon lives (the VM is gone): this driver moves to
    // another daemon, so the test keeps its rings and memory to try resuming later.
    let elsewhere = Daemon::start(&[]);
    d.reconnect(&elsewhere.socket, d.ring_positions()).unwrap();
    let mut ctl = a.ctl();
    ctl.wait_disconnected(std::time::Duration::from_secs(10));
    assert!(ctl.domains().is_empty());
    drop(a);
    // A driver claiming to carry on finds nothing: the journal was emptied at the disconnect.
    let b = start(&dir);
    d.reconnect(&b.socket, d.ring_positions()).unwrap();
    next_request(&mut d);
    assert!(b.ctl().domains().is_empty());
}

#[test]
fn one_daemon_per_state_dir_and_a_corrupt_journal_is_not_fatal() {
    let dir = TempDir::new();
    let _a = start(&dir);
    let state = dir.path().join("state");
    let (st, err) = vhost_user_iommu_tests::daemon::run_to_exit(
        &[
            "--socket",
            dir.path().join("other.sock").to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        std::time::Duration::from_secs(10),
    );
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("another daemon is using it"), "{err}");
    drop(_a);
    // Both journal files (they take turns holding the current snapshot) are garbage.
    for f in ["device-state", "device-state.alt"] {
        std::fs::write(state.join(f), b"VUIOMMUS garbage").unwrap();
    }
    let b = start(&dir);
    assert!(b.stderr().contains("starting without it"), "{}", b.stderr());
    let mut d = b.connect_with(&Options::default());
    assert_eq!(d.attach(1, 0), OK);
}

#[test]
fn a_guest_churning_mappings_keeps_the_journal_bounded_and_resumable() {
    let dir = TempDir::new();
    let a = start(&dir);
    let mut d = a.connect_with(&Options {
        requestq_size: 512,
        ..Options::default()
    });
    assert_eq!(d.attach(1, 0), OK);
    for i in 0..100u64 {
        assert_eq!(
            d.map(
                1,
                0x1000_0000 + i * 0x1000,
                0x1000_0000 + i * 0x1000 + 0xfff,
                i * 0x1000,
                R
            ),
            OK
        );
    }
    // 200 batches of 128 MAPs and their 128 UNMAPs: 51 200 journal records, about 1.8 MB.
    let journal_bytes = || -> u64 {
        ["device-state", "device-state.alt"]
            .iter()
            .map(|f| std::fs::metadata(dir.path().join("state").join(f)).map_or(0, |m| m.len()))
            .sum()
    };
    let mut largest = 0;
    for round in 0..200u64 {
        let base = 0x2000_0000 + (round % 8) * 0x100_0000;
        let mut reqs: Vec<Request> = (0..128u64)
            .map(|i| {
                Request::map(
                    1,
                    base + i * 0x1000,
                    base + i * 0x1000 + 0xfff,
                    i * 0x1000,
                    R | W,
                )
            })
            .collect();
        reqs.extend(
            (0..128u64).map(|i| Request::unmap(1, base + i * 0x1000, base + i * 0x1000 + 0xfff)),
        );
        for (i, r) in d.run_batch(&reqs).iter().enumerate() {
            r.expect(OK, &format!("round {round} request {i}"));
        }
        largest = largest.max(journal_bytes());
    }
    // A snapshot (a few KiB here), at most 256 KiB of records before the next one, and the
    // batch that crossed the line.
    assert!(largest < 512 * 1024, "the journal grew to {largest} bytes");
    // A last batch that leaves its mappings: the restart must find them.
    let last: Vec<Request> = (0..64u64)
        .map(|i| {
            Request::map(
                1,
                0x3000_0000 + i * 0x1000,
                0x3000_0000 + i * 0x1000 + 0xfff,
                i * 0x1000,
                R,
            )
        })
        .collect();
    for r in d.run_batch(&last) {
        r.expect(OK, "last batch");
    }
    assert_eq!(a.ctl().mappings(1).unwrap().len(), 164);
    let before = a.ctl().guest_state();
    // A crash right after the last batch was answered.
    drop(a);
    let b = start(&dir);
    d.reconnect(&b.socket, d.ring_positions()).unwrap();
    next_request(&mut d);
    assert_eq!(b.ctl().guest_state(), before, "state after the restart");
    assert_eq!(b.ctl().mappings(1).unwrap().len(), 164);
}

/// The daemon died after its last pass reached the journal (the PASS record) but before the
/// driver saw the used entries: the queue restarts at the used index, the restarted daemon
/// publishes the pass's entries from the journal and does not handle those requests a second
/// time (a second MAP of the same range would be refused, and its status would overwrite OK).
#[test]
fn requests_handled_but_not_published_are_answered_from_the_journal() {
    let dir = TempDir::new();
    let a = start(&dir);
    let mut d = a.connect_with(&Options::default());
    assert_eq!(d.attach(1, 0), OK);
    let before = d.reqq.used_idx(&d.mem);
    let map = d.submit(&Request::map(1, 0x1000, 0x1fff, 0x8000, R));
    d.kick();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.reqq.used_idx(&d.mem) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the MAP was never used"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(a);
    d.reqq.take_back_used(&d.mem, 1);
    let b = start(&dir);
    d.reconnect(&b.socket, d.ring_positions()).unwrap();
    let size = d.config().probe_size as usize;
    let probe = d.submit(&Request::probe(0, size));
    d.kick();
    let rs = d.wait_responses(2);
    assert_eq!(
        (rs[0].head, rs[0].status()),
        (map, OK),
        "the MAP, from the journal"
    );
    assert_eq!((rs[1].head, rs[1].status()), (probe, OK));
    let mut ctl = b.ctl();
    let maps = &ctl.counters()["requests"]["map"];
    assert!(
        maps.as_object().is_none_or(|m| m.values().all(|v| v == 0)),
        "the restarted daemon handled the MAP again: {maps}"
    );
    assert_eq!(ctl.mappings(1).unwrap().len(), 1);
    // The driver carries on.
    assert_eq!(d.map(1, 0x2000, 0x2fff, 0x9000, R), OK);
}
