//! Many requests in one kick.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vhost_user_iommu_control::Request as Ctl;
use vhost_user_iommu_tests::proto::status::{INVAL, OK};
use vhost_user_iommu_tests::proto::{MAP_F_READ, MAP_F_WRITE};
use vhost_user_iommu_tests::{Daemon, Options, Request};

const RW: u32 = MAP_F_READ | MAP_F_WRITE;
const N: u64 = 200;

fn big_queue() -> Options {
    Options {
        requestq_size: 1024,
        ..Options::default()
    }
}

#[test]
fn two_hundred_maps_then_two_hundred_unmaps_in_one_kick() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&big_queue());
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);

    let mut reqs: Vec<Request> = (0..N)
        .map(|i| {
            Request::map(
                1,
                0x100_0000 + i * 0x2000,
                0x100_0000 + i * 0x2000 + 0xfff,
                0x8000_0000 + i * 0x1000,
                RW,
            )
        })
        .collect();
    reqs.extend(
        (0..N).map(|i| Request::unmap(1, 0x100_0000 + i * 0x2000, 0x100_0000 + i * 0x2000 + 0xfff)),
    );

    let heads: Vec<u16> = reqs.iter().map(|r| d.submit(r)).collect();
    d.kick();
    let resps = d.wait_responses(reqs.len());
    // The device processes the requestq in order: the used ring returns the chains in the
    // order they were made available, each id exactly once.
    let got: Vec<u16> = resps.iter().map(|r| r.head).collect();
    assert_eq!(
        got, heads,
        "used ring order/ids differ from the avail order"
    );
    for (i, r) in resps.iter().enumerate() {
        r.expect(OK, &format!("request {i} of the batch"));
    }
    assert_eq!(
        ctl.mappings(1).unwrap(),
        vec![],
        "every UNMAP in the batch removed its MAP"
    );
    assert_eq!(ctl.status()["mappings"].as_u64(), Some(0));
    assert_eq!(d.reqq.in_flight(), 0);
}

#[test]
fn two_hundred_maps_in_one_kick_are_all_visible() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&big_queue());
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(9, 1), OK);
    let reqs: Vec<Request> = (0..N)
        .map(|i| {
            Request::map(
                9,
                i * 0x10000,
                i * 0x10000 + 0xffff,
                0x1_0000_0000 + i * 0x10000,
                RW,
            )
        })
        .collect();
    for (i, r) in d.run_batch(&reqs).iter().enumerate() {
        r.expect(OK, &format!("MAP {i}"));
    }
    let m = ctl.mappings(9).unwrap();
    assert_eq!(m.len(), N as usize);
    for (i, m) in m.iter().enumerate() {
        let i = i as u64;
        assert_eq!(
            (m.virt_start, m.virt_end, m.phys_start),
            (
                i * 0x10000,
                i * 0x10000 + 0xffff,
                0x1_0000_0000 + i * 0x10000
            )
        );
    }
    // Paged listing: `limit` smaller than the total must still yield everything via `next`.
    let page = ctl.must(&Ctl::Mappings {
        domain: 9,
        start: None,
        limit: Some(7),
    });
    assert_eq!(page["mappings"].as_array().unwrap().len(), 7);
    assert_eq!(page["next"].as_u64(), Some(7 * 0x10000));
    let unmaps: Vec<Request> = (0..N)
        .map(|i| Request::unmap(9, i * 0x10000, i * 0x10000 + 0xffff))
        .collect();
    for (i, r) in d.run_batch(&unmaps).iter().enumerate() {
        r.expect(OK, &format!("UNMAP {i}"));
    }
    assert_eq!(ctl.mappings(9).unwrap(), vec![]);
}

#[test]
fn mixed_statuses_in_one_kick_are_per_request() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&big_queue());
    assert_eq!(d.attach(1, 3), OK);
    // Each good MAP is followed by an overlapping duplicate that must fail on its own.
    let mut reqs = Vec::new();
    for i in 0..100u64 {
        let s = 0x20_0000 + i * 0x1000;
        reqs.push(Request::map(1, s, s + 0xfff, 0x1000 * i, RW));
        reqs.push(Request::map(1, s, s + 0xfff, 0x1000 * i, RW));
    }
    let resps = d.run_batch(&reqs);
    for (i, r) in resps.iter().enumerate() {
        let want = if i % 2 == 0 { OK } else { INVAL };
        r.expect(want, &format!("request {i}"));
    }
    assert_eq!(daemon.ctl().mappings(1).unwrap().len(), 100);
}

#[test]
fn queue_wraps_around_many_times() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&Options {
        requestq_size: 16,
        ..Options::default()
    });
    assert_eq!(d.attach(1, 3), OK);
    // 16-entry ring, 8 requests per kick, 300 rounds: indices wrap the ring many times and the
    // 16-bit counters keep going.
    for round in 0..300u64 {
        let s = 0x100_0000 + (round % 4) * 0x10_0000;
        let reqs = vec![
            Request::map(1, s, s + 0xfff, 0, RW),
            Request::unmap(1, s, s + 0xfff),
            Request::map(1, s, s + 0xfff, 0, RW),
            Request::map(1, s, s + 0xfff, 0, RW),
            Request::unmap(1, s, s + 0xfff),
            Request::attach(1, 4, 0),
            Request::detach(1, 4),
            Request::unmap(1, s, s + 0xfff),
        ];
        let want = [OK, OK, OK, INVAL, OK, OK, OK, OK];
        for (i, r) in d.run_batch(&reqs).iter().enumerate() {
            r.expect(want[i], &format!("round {round} request {i}"));
        }
    }
    assert_eq!(daemon.ctl().status()["mappings"].as_u64(), Some(0));
}

#[test]
fn event_idx_notification_suppression() {
    // With VIRTIO_RING_F_EVENT_IDX the driver kicks only when the device's avail_event asks for
    // it (as Linux does). A device that forgets to re-arm avail_event, or misses buffers made
    // available while it was processing, leaves requests stranded here.
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&Options {
        features: Some(
            vhost_user_iommu_tests::proto::feature::MODERN
                | vhost_user_iommu_tests::proto::feature::RING_EVENT_IDX,
        ),
        requestq_size: 64,
        ..Options::default()
    });
    if d.acked & vhost_user_iommu_tests::proto::feature::RING_EVENT_IDX == 0 {
        eprintln!("VIRTIO_RING_F_EVENT_IDX not offered; nothing to check");
        return;
    }
    assert!(d.reqq.event_idx);
    assert_eq!(d.attach(1, 3), OK);
    // Sequential requests: each one must be picked up.
    for i in 0..300u64 {
        let s = 0x100_0000 + i * 0x1000;
        assert_eq!(d.map(1, s, s + 0xfff, 0, RW), OK, "MAP {i}");
    }
    // Small batches published back to back without waiting in between.
    for round in 0..50u64 {
        let base = 0x1000_0000 + round * 0x10_0000;
        let mut heads = Vec::new();
        for j in 0..4u64 {
            heads.push(d.submit(&Request::map(
                1,
                base + j * 0x1000,
                base + j * 0x1000 + 0xfff,
                0,
                RW,
            )));
            d.kick();
        }
        let resps = d.wait_responses(4);
        for r in &resps {
            r.expect(OK, &format!("round {round}"));
        }
    }
    assert_eq!(daemon.ctl().mappings(1).unwrap().len(), 300 + 200);
    eprintln!("kicks sent: {}", d.reqq.kicks);
}

#[test]
fn ten_thousand_mappings_then_one_unmap() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&big_queue());
    assert_eq!(d.attach(1, 3), OK);
    let n = 10_000u64;
    let t0 = std::time::Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let reqs: Vec<Request> = chunk
            .iter()
            .map(|&i| Request::map(1, i * 0x2000, i * 0x2000 + 0xfff, i * 0x1000, RW))
            .collect();
        for r in d.run_batch(&reqs) {
            r.expect(OK, "MAP");
        }
    }
    let mapped = t0.elapsed();
    let mut ctl = daemon.ctl();
    assert_eq!(ctl.status()["mappings"].as_u64(), Some(n));
    // Splitting one of them in the middle of a large UNMAP removes nothing.
    d.run(&Request::unmap(1, 0, (n - 1) * 0x2000 + 0x7ff))
        .expect(
            vhost_user_iommu_tests::proto::status::RANGE,
            "UNMAP ending inside the last mapping",
        );
    assert_eq!(ctl.status()["mappings"].as_u64(), Some(n));
    let t1 = std::time::Instant::now();
    d.run(&Request::unmap(1, 0, u64::MAX))
        .expect(OK, "UNMAP of everything");
    let unmapped = t1.elapsed();
    assert_eq!(ctl.status()["mappings"].as_u64(), Some(0));
    // Timings are reported, never asserted (shared machines); docs/BENCHMARKS.md measures them.
    eprintln!("{n} MAPs in {mapped:?}; one UNMAP of all in {unmapped:?}");
}

/// One million mappings in one domain through the real ring (about 30 s in a debug build).
#[test]
fn one_million_mappings_in_one_domain() {
    let daemon = Daemon::start(&["--reserved-region", "none"]);
    let mut d = daemon.connect_with(&Options {
        requestq_size: 1024,
        low_size: 512 << 20,
        ..Options::default()
    });
    assert_eq!(d.attach(1, 3), OK);
    let n = 1_000_000u64;
    let t0 = std::time::Instant::now();
    let mut i = 0u64;
    while i < n {
        let reqs: Vec<Request> = (i..(i + 500).min(n))
            .map(|i| Request::map(1, i * 0x2000, i * 0x2000 + 0xfff, 0, RW))
            .collect();
        i += reqs.len() as u64;
        for r in d.run_batch(&reqs) {
            r.expect(OK, "MAP");
        }
    }
    let mapped = t0.elapsed();
    let mut ctl = daemon.ctl();
    assert_eq!(ctl.status()["mappings"].as_u64(), Some(n));
    // Single requests against a full domain stay cheap.
    let t1 = std::time::Instant::now();
    for k in 0..1000u64 {
        let v = (n + k) * 0x2000;
        assert_eq!(d.map(1, v, v + 0xfff, 0, RW), OK);
        assert_eq!(d.unmap(1, v, v + 0xfff), OK);
    }
    let per_pair = t1.elapsed() / 1000;
    eprintln!("{n} MAPs in {mapped:?}; MAP+UNMAP at 1M mappings: {per_pair:?}");
    let t2 = std::time::Instant::now();
    d.run(&Request::unmap(1, 0, u64::MAX))
        .expect(OK, "UNMAP of everything");
    let all = t2.elapsed();
    eprintln!("UNMAP of all {n}: {all:?}");
    assert_eq!(ctl.status()["mappings"].as_u64(), Some(0));
}

/// Sequential requests with pauses around the end of the daemon's polling window: a request
/// made available just as the poll ends must still be seen (notifications re-enabled, then the
/// ring checked again).
fn requests_around_the_poll_window(extra: &[&str], event_idx: bool) {
    use vhost_user_iommu_tests::proto::feature;
    let daemon = Daemon::start(extra);
    let mut d = daemon.connect_with(&Options {
        features: Some(if event_idx {
            feature::MODERN | feature::RING_EVENT_IDX
        } else {
            feature::MODERN
        }),
        requestq_size: 64,
        ..Options::default()
    });
    assert_eq!(d.attach(1, 3), OK);
    let pauses_us = [
        0u64, 10, 40, 50, 60, 90, 100, 110, 150, 200, 300, 1000, 3000,
    ];
    for i in 0..400u64 {
        std::thread::sleep(std::time::Duration::from_micros(
            pauses_us[(i as usize * 7) % pauses_us.len()],
        ));
        let s = 0x100_0000 + i * 0x1000;
        assert_eq!(d.map(1, s, s + 0xfff, 0, RW), OK, "MAP {i}");
    }
    assert_eq!(daemon.ctl().mappings(1).unwrap().len(), 400);
    eprintln!(
        "{extra:?} event_idx={event_idx}: {} kicks for 401 requests",
        d.reqq.kicks
    );
}

#[test]
fn polling_mode_never_strands_requests() {
    requests_around_the_poll_window(&["--poll-us", "100"], false);
}

#[test]
fn polling_mode_with_event_idx_never_strands_requests() {
    requests_around_the_poll_window(&["--poll-us", "100"], true);
}

#[test]
fn adaptive_polling_by_default_never_strands_requests() {
    // The default: an adaptive window up to 50 us. The pauses straddle it on both sides, so the
    // window grows, is caught short and shrinks to zero while requests keep coming.
    requests_around_the_poll_window(&[], false);
    requests_around_the_poll_window(&[], true);
}

#[test]
fn polling_off_never_strands_requests() {
    requests_around_the_poll_window(&["--poll-us", "0"], false);
    requests_around_the_poll_window(&["--poll-us", "0"], true);
}

/// CPU time (ns) a thread has run, from /proc/PID/task/TID/schedstat.
fn thread_cpu_ns(pid: i32, tid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// With polling on by default, a guest that stops sending costs the worker no CPU: after at
/// most one window it sleeps on the kick eventfd (re-armed), and the next request still gets
/// through.
#[test]
fn an_idle_guest_costs_the_polling_worker_nothing() {
    let daemon = Daemon::start(&["--poll-us", "1000"]);
    let mut d = daemon.connect();
    assert_eq!(d.attach(1, 3), OK);
    // Back-to-back requests open the window wide.
    for i in 0..2000u64 {
        let s = 0x100_0000 + i * 0x1000;
        assert_eq!(d.map(1, s, s + 0xfff, 0, RW), OK, "MAP {i}");
    }
    let tid = daemon.ctl().status()["worker"]["tid"]
        .as_i64()
        .expect("the worker's thread id") as i32;
    // Past any window (1 ms), then an idle stretch 300 times as long.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let before = thread_cpu_ns(daemon.pid(), tid);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let spent = thread_cpu_ns(daemon.pid(), tid) - before;
    assert!(
        spent < 1_000_000,
        "the worker ran {spent} ns while the guest was idle"
    );
    // Asleep with notifications on: the next request kicks and is served.
    let s = 0x8000_0000;
    assert_eq!(d.map(1, s, s + 0xfff, 0, RW), OK, "MAP after idling");
    assert_eq!(daemon.ctl().mappings(1).unwrap().len(), 2001);
}

/// A driver that sends request after request for far longer than a polling burst (2 ms): the
/// worker yields with the notifications off again and again, its window shrinking when it is
/// preempted; every pass after a yield must turn them back on before the worker sleeps, or the
/// driver (told not to kick) waits for good. Found by vui-bench at batch 1.
fn a_long_stream(event_idx: bool) {
    use vhost_user_iommu_tests::proto::feature;
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&Options {
        features: Some(if event_idx {
            feature::MODERN | feature::RING_EVENT_IDX
        } else {
            feature::MODERN
        }),
        requestq_size: 64,
        ..Options::default()
    });
    assert_eq!(d.attach(1, 3), OK);
    let start = std::time::Instant::now();
    let mut i = 0u64;
    while start.elapsed() < std::time::Duration::from_millis(700) {
        let s = 0x100_0000 + (i % 512) * 0x1000;
        let r = d.run_timeout(
            &Request::map(1, s, s + 0xfff, 0, RW),
            std::time::Duration::from_secs(5),
        );
        r.expect(OK, &format!("MAP {i}"));
        let r = d.run_timeout(
            &Request::unmap(1, s, s + 0xfff),
            std::time::Duration::from_secs(5),
        );
        r.expect(OK, &format!("UNMAP {i}"));
        i += 1;
        if i.is_multiple_of(997) {
            // Now and then a pause past the window, so it closes and reopens.
            std::thread::sleep(std::time::Duration::from_micros(300));
        }
    }
    eprintln!(
        "event_idx={event_idx}: {i} MAP+UNMAP pairs, {} kicks",
        d.reqq.kicks
    );
}

#[test]
fn a_long_stream_of_requests_is_never_stranded() {
    a_long_stream(false);
}

#[test]
fn a_long_stream_of_requests_with_event_idx_is_never_stranded() {
    a_long_stream(true);
}
