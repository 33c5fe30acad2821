//! Hostile descriptor chains: no crash, used length 0 or an error status, and the device keeps
//! serving the next request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vhost_user_iommu_tests::device::SENTINEL;
use vhost_user_iommu_tests::proto::status::{INVAL, OK};
use vhost_user_iommu_tests::proto::{self, parse_properties, MAP_F_READ, MAP_F_WRITE};
use vhost_user_iommu_tests::virtq::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vhost_user_iommu_tests::{Daemon, Desc, Device, Request, Response};

const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE;
const N: u16 = VRING_DESC_F_NEXT;
/// A hole in guest memory (between the 16 MiB low region and the 4 GiB high region).
const HOLE: u64 = 0x8000_0000;

/// Where a descriptor's `next` points.
#[derive(Clone, Copy)]
enum Next {
    /// The i-th descriptor of this chain.
    Rel(usize),
    /// A raw index.
    Raw(u16),
    /// No next (flags decide whether the device follows it anyway).
    Zero,
}

struct Spec {
    addr: u64,
    len: u32,
    flags: u16,
    next: Next,
}

fn spec(addr: u64, len: u32, flags: u16, next: Next) -> Spec {
    Spec {
        addr,
        len,
        flags,
        next,
    }
}

/// Write a hand-built chain, submit it, kick, and wait for it to come back.
fn run_raw(d: &mut Device, specs: &[Spec], writable: (u64, usize)) -> Response {
    let idx = d.reqq.alloc_descs(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let next = match s.next {
            Next::Rel(j) => idx[j],
            Next::Raw(v) => v,
            Next::Zero => 0,
        };
        d.reqq.write_desc(
            &d.mem,
            idx[i],
            Desc {
                addr: s.addr,
                len: s.len,
                flags: s.flags,
                next,
            },
        );
    }
    d.submit_raw(idx[0], idx.clone(), writable);
    d.kick();
    d.wait_response(Duration::from_secs(5))
        .expect("the device must hand a hostile chain back (used length 0), not keep it")
}

/// Guest buffer holding `bytes`.
fn buf(d: &Device, bytes: &[u8]) -> u64 {
    let g = d.alloc(bytes.len().max(1));
    d.mem.write(g, bytes);
    g
}

/// A writable tail pre-filled with the sentinel.
fn tail(d: &Device, len: usize) -> u64 {
    let g = d.alloc(len.max(1));
    d.mem.fill(g, len, SENTINEL);
    g
}

/// Rejected: used length 0 (buffer unwritten), or a non-OK status.
fn assert_rejected(r: &Response, what: &str) {
    if r.used_len == 0 {
        if !r.writable.is_empty() {
            assert!(
                r.untouched(),
                "{what}: used length 0 but the buffer was written"
            );
        }
    } else {
        assert!(
            !r.writable.is_empty() && r.status() != OK,
            "{what}: accepted with used length {} and status OK",
            r.used_len
        );
    }
}

/// Used length 0 (unwritten), or a status with a used length no larger than the `real` writable
/// bytes the chain has (virtio 1.x §2.7.8: `len` is the number of bytes written into the buffer).
fn assert_honest(r: &Response, real: u32, what: &str) {
    if r.used_len == 0 {
        assert!(
            r.untouched(),
            "{what}: used length 0 but the buffer was written"
        );
    } else {
        assert!(
            r.used_len <= real,
            "{what}: used length {} for a chain with only {real} distinct writable bytes",
            r.used_len
        );
    }
}

/// The device is alive and still answers a normal request correctly.
fn still_serving(daemon: &mut Daemon, d: &mut Device, ep: u32) {
    daemon.assert_alive();
    d.run(&Request::attach(100, ep, 0))
        .expect(OK, "ATTACH after a hostile chain");
    daemon.assert_alive();
}

fn setup() -> (Daemon, Device) {
    let daemon = Daemon::start(&[]);
    let d = daemon.connect();
    (daemon, d)
}

#[test]
fn descriptor_outside_guest_memory() {
    let (mut daemon, mut d) = setup();
    let body = proto::attach(1, 3, 0);
    // Readable head in a memory hole.
    let t = tail(&d, 4);
    let r = run_raw(
        &mut d,
        &[
            spec(HOLE, 20, R | N, Next::Rel(1)),
            spec(t, 4, W, Next::Zero),
        ],
        (t, 4),
    );
    assert_rejected(&r, "head in a memory hole");
    still_serving(&mut daemon, &mut d, 1);
    // Readable head past the end of all memory.
    let t = tail(&d, 4);
    let r = run_raw(
        &mut d,
        &[
            spec(u64::MAX - 7, 20, R | N, Next::Rel(1)),
            spec(t, 4, W, Next::Zero),
        ],
        (t, 4),
    );
    assert_rejected(&r, "head at the top of the address space");
    still_serving(&mut daemon, &mut d, 2);
    // Head straddling the end of the low region.
    let t = tail(&d, 4);
    let r = run_raw(
        &mut d,
        &[
            spec((16 << 20) - 8, 20, R | N, Next::Rel(1)),
            spec(t, 4, W, Next::Zero),
        ],
        (t, 4),
    );
    assert_rejected(&r, "head straddling the end of a region");
    still_serving(&mut daemon, &mut d, 3);
    // Valid head, writable tail in a hole.
    let h = buf(&d, &body);
    let r = run_raw(
        &mut d,
        &[
            spec(h, 20, R | N, Next::Rel(1)),
            spec(HOLE, 4, W, Next::Zero),
        ],
        (HOLE, 0),
    );
    assert_eq!(
        r.used_len, 0,
        "a status that cannot be written: used length 0"
    );
    still_serving(&mut daemon, &mut d, 4);
}

#[test]
fn read_only_tail() {
    let (mut daemon, mut d) = setup();
    let mut whole = proto::attach(1, 3, 0);
    whole.extend_from_slice(&[0; 4]);
    let h = buf(&d, &whole);
    let r = run_raw(&mut d, &[spec(h, 24, R, Next::Zero)], (h, 0));
    assert_eq!(r.used_len, 0, "no device-writable tail: used length 0");
    // Split in two readable descriptors: still no writable tail.
    let h = buf(&d, &whole);
    let r = run_raw(
        &mut d,
        &[
            spec(h, 20, R | N, Next::Rel(1)),
            spec(h + 20, 4, R, Next::Zero),
        ],
        (h, 0),
    );
    assert_eq!(r.used_len, 0, "read-only tail: used length 0");
    still_serving(&mut daemon, &mut d, 5);
}

#[test]
fn buffers_too_short_for_a_head_or_a_tail() {
    let (mut daemon, mut d) = setup();
    // A 2-byte head and nothing else readable.
    let h = buf(&d, &[proto::req::ATTACH, 0]);
    let t = tail(&d, 4);
    let r = run_raw(
        &mut d,
        &[spec(h, 2, R | N, Next::Rel(1)), spec(t, 4, W, Next::Zero)],
        (t, 4),
    );
    assert_rejected(&r, "2-byte head");
    // Only 2 writable bytes: too short to hold the tail -> returned unwritten.
    let h = buf(&d, &proto::attach(1, 3, 0));
    let t = tail(&d, 2);
    let r = run_raw(
        &mut d,
        &[spec(h, 20, R | N, Next::Rel(1)), spec(t, 2, W, Next::Zero)],
        (t, 2),
    );
    assert_eq!(
        r.used_len, 0,
        "a buffer too short to hold the tail: used length 0"
    );
    assert!(
        r.untouched(),
        "a buffer too short to hold the tail must be returned unwritten"
    );
    // Only a writable descriptor, no head at all.
    let t = tail(&d, 4);
    let r = run_raw(&mut d, &[spec(t, 4, W, Next::Zero)], (t, 4));
    assert_rejected(&r, "no readable head");
    // Zero-length descriptors only.
    let t = tail(&d, 4);
    let r = run_raw(
        &mut d,
        &[spec(t, 0, R | N, Next::Rel(1)), spec(t, 0, W, Next::Zero)],
        (t, 0),
    );
    assert_eq!(r.used_len, 0, "empty buffers: used length 0");
    // A truncated MAP body (head fine, body short) must not create a mapping.
    assert_eq!(d.attach(1, 3), OK);
    let h = buf(&d, &proto::map(1, 0x10000, 0x10fff, 0, MAP_F_READ)[..20]);
    let t = tail(&d, 4);
    let r = run_raw(
        &mut d,
        &[spec(h, 20, R | N, Next::Rel(1)), spec(t, 4, W, Next::Zero)],
        (t, 4),
    );
    assert_rejected(&r, "truncated MAP");
    assert_eq!(
        daemon.ctl().mappings(1).unwrap(),
        vec![],
        "a truncated MAP created a mapping"
    );
    still_serving(&mut daemon, &mut d, 6);
}

#[test]
fn lengths_near_u32_max() {
    let (mut daemon, mut d) = setup();
    let h = buf(&d, &proto::attach(1, 3, 0));
    for len in [u32::MAX, u32::MAX - 3, 0x8000_0000] {
        let t = tail(&d, 4);
        let r = run_raw(
            &mut d,
            &[spec(h, len, R | N, Next::Rel(1)), spec(t, 4, W, Next::Zero)],
            (t, 4),
        );
        assert_rejected(&r, &format!("readable length {len:#x}"));
        let r = run_raw(
            &mut d,
            &[
                spec(h, 20, R | N, Next::Rel(1)),
                spec(t, len, W, Next::Zero),
            ],
            (t, 4),
        );
        assert_rejected(&r, &format!("writable length {len:#x}"));
        daemon.assert_alive();
    }
    // Two descriptors whose lengths overflow a u32 when summed.
    let t = tail(&d, 4);
    let r = run_raw(
        &mut d,
        &[
            spec(h, 0xffff_fff0, R | N, Next::Rel(1)),
            spec(h, 0x20, R | N, Next::Rel(2)),
            spec(t, 4, W, Next::Zero),
        ],
        (t, 4),
    );
    assert_rejected(&r, "readable lengths overflowing u32");
    let t = tail(&d, 4);
    let r = run_raw(
        &mut d,
        &[
            spec(h, 20, R | N, Next::Rel(1)),
            spec(t, 0xffff_fffe, W | N, Next::Rel(2)),
            spec(t, 8, W, Next::Zero),
        ],
        (t, 4),
    );
    assert_rejected(&r, "writable lengths overflowing u32");
    still_serving(&mut daemon, &mut d, 7);
}

#[test]
fn endless_descriptor_loops() {
    let (mut daemon, mut d) = setup();
    let h = buf(&d, &proto::attach(1, 3, 0));
    let t = tail(&d, 4);
    // a -> b -> a
    let r = run_raw(
        &mut d,
        &[
            spec(h, 20, R | N, Next::Rel(1)),
            spec(h, 20, R | N, Next::Rel(0)),
        ],
        (t, 0),
    );
    assert_eq!(r.used_len, 0, "two-descriptor loop");
    // self loop
    let r = run_raw(&mut d, &[spec(h, 20, R | N, Next::Rel(0))], (t, 0));
    assert_eq!(r.used_len, 0, "self loop");
    // next out of the table
    let size = d.reqq.size;
    let r = run_raw(&mut d, &[spec(h, 20, R | N, Next::Raw(size + 3))], (t, 0));
    assert_eq!(r.used_len, 0, "next beyond the queue size");
    let r = run_raw(&mut d, &[spec(h, 20, R | N, Next::Raw(u16::MAX))], (t, 0));
    assert_eq!(r.used_len, 0, "next = 0xffff");
    still_serving(&mut daemon, &mut d, 8);
}

#[test]
fn endless_loop_in_the_writable_part() {
    let (mut daemon, mut d) = setup();
    let h = buf(&d, &proto::attach(1, 3, 0));
    let t = tail(&d, 4);
    // readable -> writable -> back to the same writable descriptor: the writable part loops.
    // The buffer has no end, so it has no tail; if the device answers at all, it cannot claim
    // more than the 4 bytes that really exist.
    let r = run_raw(
        &mut d,
        &[
            spec(h, 20, R | N, Next::Rel(1)),
            spec(t, 4, W | N, Next::Rel(1)),
        ],
        (t, 4),
    );
    assert_honest(&r, 4, "loop in the writable part");
    still_serving(&mut daemon, &mut d, 12);
}

#[test]
fn tail_with_next_beyond_the_table() {
    let (mut daemon, mut d) = setup();
    let h = buf(&d, &proto::attach(1, 3, 0));
    // A complete request whose tail descriptor says NEXT to an index beyond the table.
    let t = tail(&d, 4);
    let size = d.reqq.size;
    let r = run_raw(
        &mut d,
        &[
            spec(h, 20, R | N, Next::Rel(1)),
            spec(t, 4, W | N, Next::Raw(size + 1)),
        ],
        (t, 4),
    );
    assert_honest(&r, 4, "tail with next beyond the queue size");
    still_serving(&mut daemon, &mut d, 13);
}

#[test]
fn readable_after_writable_does_not_break_the_device() {
    // A driver MUST put device-writable descriptors after device-readable ones (virtio 1.x
    // §2.7.4.2); the device is not told what to do with a chain that breaks the rule, so
    // either answer is accepted here: only survival and honesty are checked.
    let (mut daemon, mut d) = setup();
    let h = buf(&d, &proto::attach(1, 3, 0));
    let t = tail(&d, 4);
    let r = run_raw(
        &mut d,
        &[spec(t, 4, W | N, Next::Rel(1)), spec(h, 20, R, Next::Zero)],
        (t, 4),
    );
    assert_honest(&r, 4, "writable descriptor before a readable one");
    still_serving(&mut daemon, &mut d, 9);
}

#[test]
fn indirect_descriptors_when_negotiated() {
    const INDIRECT_DESC: u64 = 1 << 28;
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&vhost_user_iommu_tests::Options {
        features: Some(proto::feature::MODERN | INDIRECT_DESC),
        ..Default::default()
    });
    if d.offered & INDIRECT_DESC == 0 {
        eprintln!("VIRTIO_F_RING_INDIRECT_DESC not offered; nothing to check");
        return;
    }
    let h = buf(&d, &proto::attach(1, 3, 0));
    let t = tail(&d, 4);
    let mut table = Vec::new();
    table.extend_from_slice(
        &Desc {
            addr: h,
            len: 10,
            flags: N,
            next: 1,
        }
        .to_bytes(),
    );
    table.extend_from_slice(
        &Desc {
            addr: h + 10,
            len: 10,
            flags: N,
            next: 2,
        }
        .to_bytes(),
    );
    table.extend_from_slice(
        &Desc {
            addr: t,
            len: 4,
            flags: W,
            next: 0,
        }
        .to_bytes(),
    );
    let tg = buf(&d, &table);
    let r = run_raw(
        &mut d,
        &[spec(tg, 48, R | VRING_DESC_F_INDIRECT, Next::Zero)],
        (t, 4),
    );
    r.expect(OK, "ATTACH through an indirect table");
    assert_eq!(daemon.ctl().endpoint_domain(3), Some(1));
}

#[test]
fn hostile_indirect_tables() {
    let (mut daemon, mut d) = setup();
    let h = buf(&d, &proto::attach(1, 3, 0));
    let t = tail(&d, 4);
    // Indirect table in a hole.
    let r = run_raw(
        &mut d,
        &[spec(HOLE, 32, R | VRING_DESC_F_INDIRECT, Next::Zero)],
        (t, 0),
    );
    assert_rejected(&r, "indirect table in a hole");
    // Indirect table whose length is not a multiple of 16.
    let mut table = Vec::new();
    table.extend_from_slice(
        &Desc {
            addr: h,
            len: 20,
            flags: N,
            next: 1,
        }
        .to_bytes(),
    );
    table.extend_from_slice(
        &Desc {
            addr: t,
            len: 4,
            flags: W,
            next: 0,
        }
        .to_bytes(),
    );
    let tg = buf(&d, &table);
    let r = run_raw(
        &mut d,
        &[spec(tg, 31, R | VRING_DESC_F_INDIRECT, Next::Zero)],
        (t, 4),
    );
    assert_rejected(&r, "indirect table length 31");
    // Indirect table that loops.
    let mut looping = Vec::new();
    looping.extend_from_slice(
        &Desc {
            addr: h,
            len: 20,
            flags: N,
            next: 1,
        }
        .to_bytes(),
    );
    looping.extend_from_slice(
        &Desc {
            addr: h,
            len: 20,
            flags: N,
            next: 0,
        }
        .to_bytes(),
    );
    let lg = buf(&d, &looping);
    let t2 = tail(&d, 4);
    let r = run_raw(
        &mut d,
        &[spec(lg, 32, R | VRING_DESC_F_INDIRECT, Next::Zero)],
        (t2, 4),
    );
    assert_rejected(&r, "looping indirect table");
    // Nested indirect.
    let nested = Desc {
        addr: tg,
        len: 32,
        flags: VRING_DESC_F_INDIRECT,
        next: 0,
    }
    .to_bytes();
    let ng = buf(&d, &nested);
    let t3 = tail(&d, 4);
    let r = run_raw(
        &mut d,
        &[spec(ng, 16, R | VRING_DESC_F_INDIRECT, Next::Zero)],
        (t3, 4),
    );
    assert_rejected(&r, "nested indirect table");
    // Huge indirect table length.
    let r = run_raw(
        &mut d,
        &[spec(tg, 0xffff_fff0, R | VRING_DESC_F_INDIRECT, Next::Zero)],
        (t3, 4),
    );
    assert_rejected(&r, "indirect table of ~4 GiB");
    still_serving(&mut daemon, &mut d, 10);
}

#[test]
fn unknown_request_types_are_returned_unwritten() {
    let (mut daemon, mut d) = setup();
    for ty in [0u8, 6, 7, 8, 0x42, 0xff] {
        let mut body = proto::attach(1, 3, 0);
        body[0] = ty;
        let r = d.run(&Request::new(body));
        assert_eq!(r.used_len, 0, "unknown request type {ty}: used length 0");
        assert!(
            r.untouched(),
            "unknown request type {ty}: buffer must not be written"
        );
    }
    assert_eq!(daemon.ctl().endpoint_domain(3), None);
    still_serving(&mut daemon, &mut d, 11);
}

#[test]
fn any_descriptor_layout_is_accepted() {
    // VERSION_1 implies ANY_LAYOUT: the device must not depend on how the request is split into
    // descriptors (virtio 1.x §2.7.4, message framing).
    let (daemon, mut d) = setup();
    let mut ctl = daemon.ctl();
    let h = d.submit_split(&Request::attach(1, 3, 0), &[1, 2, 7, 13], &[1, 3]);
    d.kick();
    let r = d.wait_response(Duration::from_secs(5)).unwrap();
    assert_eq!(r.head, h);
    r.expect(
        OK,
        "ATTACH split into 5 readable and 3 writable descriptors",
    );
    assert_eq!(ctl.endpoint_domain(3), Some(1));
    d.submit_split(
        &Request::map(1, 0x10000, 0x1ffff, 0x300000, MAP_F_READ | MAP_F_WRITE),
        &[4, 8, 9, 30],
        &[2],
    );
    d.kick();
    d.wait_response(Duration::from_secs(5))
        .unwrap()
        .expect(OK, "split MAP");
    assert_eq!(ctl.mappings(1).unwrap().len(), 1);
    let size = d.config().probe_size as usize;
    d.submit_split(&Request::probe(3, size), &[3], &[5, 24, 25, size + 1]);
    d.kick();
    let r = d.wait_response(Duration::from_secs(5)).unwrap();
    r.expect(OK, "split PROBE");
    let (list, _) = parse_properties(r.properties());
    assert!(list.iter().any(|p| p.resv_mem().is_some()), "{list:?}");
    // Extra writable bytes before the tail: the status still goes in the last 4 bytes.
    let mut req = Request::detach(1, 3);
    req.writable_len = 12;
    let r = d.run(&req);
    r.expect(
        OK,
        "DETACH with a 12-byte writable area (status in the last 4 bytes)",
    );
}

#[test]
fn a_batch_of_hostile_chains_followed_by_a_good_one() {
    let (mut daemon, mut d) = setup();
    let h = buf(&d, &proto::attach(1, 3, 0));
    let t = tail(&d, 4);
    let mut heads = Vec::new();
    let mut add = |d: &mut Device, specs: &[Spec]| {
        let idx = d.reqq.alloc_descs(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let next = match s.next {
                Next::Rel(j) => idx[j],
                Next::Raw(v) => v,
                Next::Zero => 0,
            };
            d.reqq.write_desc(
                &d.mem,
                idx[i],
                Desc {
                    addr: s.addr,
                    len: s.len,
                    flags: s.flags,
                    next,
                },
            );
        }
        heads.push(idx[0]);
        d.submit_raw(idx[0], idx, (t, 0));
    };
    add(&mut d, &[spec(h, 20, R | N, Next::Rel(0))]);
    add(
        &mut d,
        &[
            spec(HOLE, 20, R | N, Next::Rel(1)),
            spec(t, 4, W, Next::Zero),
        ],
    );
    add(
        &mut d,
        &[
            spec(h, u32::MAX, R | N, Next::Rel(1)),
            spec(t, 4, W, Next::Zero),
        ],
    );
    add(&mut d, &[spec(h, 24, R, Next::Zero)]);
    let good = d.submit(&Request::attach(2, 5, 0));
    d.kick();
    let resps = d.wait_responses(5);
    let last = resps.iter().find(|r| r.head == good).unwrap();
    last.expect(
        OK,
        "good request after four hostile chains in the same kick",
    );
    daemon.assert_alive();
    assert_eq!(daemon.ctl().endpoint_domain(5), Some(2));
    // Bad reserved bits are still a plain INVAL afterwards.
    d.run(&Request::attach(2, 6, 0).with_byte(17, 9))
        .expect(INVAL, "reserved ATTACH");
}

#[test]
fn oversized_writable_areas() {
    // The properties buffer MUST be probe_size bytes (a driver rule); a device facing a much
    // larger one may refuse it, but must not crash, write past it, or claim more than it has.
    let (mut daemon, mut d) = setup();
    for len in [1 << 16, 1 << 20] {
        let r = d.run(&Request::probe(3, len));
        assert!(
            r.used_len as usize <= len + 4,
            "PROBE with {len} bytes: {}",
            r.used_len
        );
        if r.used_len == 0 {
            assert!(r.untouched(), "PROBE with {len} bytes: used 0 but written");
        }
        daemon.assert_alive();
    }
    let mut big = Request::attach(1, 3, 0);
    big.writable_len = 1 << 20;
    let r = d.run(&big);
    assert!(r.used_len as usize <= 1 << 20);
    still_serving(&mut daemon, &mut d, 14);
}
