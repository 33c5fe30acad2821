//! Rings a driver could not have set up: outside guest memory, across the end of a region,
//! overlapping, misaligned, of impossible sizes and indexes, and kick and call descriptors that
//! are not eventfds.

use vhost_user_iommu_tests::raw::{self, code, payload, NEED_REPLY, VERSION};
use vhost_user_iommu_tests::Request;

use super::*;

/// SET_VRING_ADDR of queue `q` with the given frontend virtual addresses.
fn set_addr(r: &Raw, q: u32, desc: u64, used: u64, avail: u64) -> Reply {
    r.request(
        code::SET_VRING_ADDR,
        &payload::vring_addr(q, desc, used, avail),
        &[],
    )
}

/// The frontend virtual address of guest-physical `gpa` in a ready session.
fn va(r: &mut Raw, gpa: u64) -> u64 {
    r.dev().mem.host_addr(gpa)
}

/// The request queue's SET_VRING_ADDR data.
fn ring_config(d: &mut Device) -> vhost::VringConfigData {
    d.reqq.config(&d.mem)
}

/// A request submitted and kicked on a ready session is never answered.
#[track_caller]
fn unanswered(r: &mut Raw, what: &str) {
    let d = r.dev();
    d.submit(&Request::attach(1, 3, 0));
    d.kick();
    assert!(
        d.wait_response(QUIET).is_none(),
        "{what}: a request answered"
    );
}

/// Rings at frontend addresses that no region covers.
pub fn ring_outside_guest_memory(env: &mut Env) {
    let r = env.ready();
    refused(
        set_addr(&r, 0, 0x1000, 0x3000, 0x2000),
        "rings outside guest memory",
    );
}

/// A descriptor table that starts 2 KiB before the end of the low region and is 4 KiB long.
pub fn ring_straddling_the_end_of_a_region(env: &mut Env) {
    let mut r = env.ready();
    let end = Options::default().low_size;
    let desc = va(&mut r, end - 0x800);
    let (used, avail) = (va(&mut r, 0x4000), va(&mut r, 0x3000));
    // Taken (its start is in a region), never used: the queue no longer fits in memory.
    accepted(
        set_addr(&r, 0, desc, used, avail),
        "a descriptor table across the end of memory",
    );
    unanswered(&mut r, "a descriptor table across the end of memory");
}

/// The event queue's rings placed on the request queue's, then both kicked with requests and
/// a fault to report pending.
pub fn rings_overlapping_each_other(env: &mut Env) {
    let mut r = env.ready();
    let cfg = ring_config(r.dev());
    accepted(
        set_addr(
            &r,
            1,
            cfg.desc_table_addr,
            cfg.used_ring_addr,
            cfg.avail_ring_addr,
        ),
        "eventq on the requestq's rings",
    );
    let d = r.dev();
    assert_eq!(d.attach(1, 3), OK);
    // A fault the device reports on the event queue, which now is the request queue.
    let _ = env.ctl.translate(3, 0xdead_0000, "r");
    for _ in 0..8 {
        d.submit(&Request::attach(2, 4, 0));
    }
    d.kick();
    d.evq.kick();
    std::thread::sleep(QUIET);
    // And the descriptor table, avail and used ring of the request queue all in one place.
    let desc = cfg.desc_table_addr;
    accepted(
        set_addr(&r, 0, desc, desc, desc),
        "requestq rings in one place",
    );
    r.dev().kick();
    std::thread::sleep(QUIET);
}

/// A descriptor table at an odd address.
pub fn misaligned_ring_addresses(env: &mut Env) {
    let mut r = env.ready();
    let cfg = ring_config(r.dev());
    let body = payload::vring_addr(
        0,
        cfg.desc_table_addr + 1,
        cfg.used_ring_addr,
        cfg.avail_ring_addr,
    );
    r.send(code::SET_VRING_ADDR, VERSION | NEED_REPLY, &body, &[])
        .unwrap();
    dropped(&r, "an odd descriptor table address");
}

/// SET_VRING_NUM 0.
pub fn ring_size_zero(env: &mut Env) {
    let r = env.negotiated();
    refused(
        r.request(code::SET_VRING_NUM, &payload::vring_state(0, 0), &[]),
        "queue size 0",
    );
}

/// SET_VRING_NUM 65536 (beyond the device's maximum and beyond u16).
pub fn ring_size_beyond_the_maximum(env: &mut Env) {
    let r = env.negotiated();
    refused(
        r.request(code::SET_VRING_NUM, &payload::vring_state(0, 65536), &[]),
        "queue size 65536",
    );
}

/// SET_VRING_NUM 3 on a running 256-entry queue: the size is not taken (whether or not the
/// request is refused), the queue goes on at 256 entries.
pub fn ring_size_not_a_power_of_two(env: &mut Env) {
    let mut r = env.ready();
    let reply = r.request(code::SET_VRING_NUM, &payload::vring_state(0, 3), &[]);
    if reply.value() == Some(0) {
        device_works(&mut r, "after SET_VRING_NUM 3");
    } else {
        refused(reply, "queue size 3");
    }
}

/// SET_VRING_NUM of queue 2 (the device has 0 and 1).
pub fn ring_index_out_of_range(env: &mut Env) {
    let r = env.negotiated();
    refused(
        r.request(code::SET_VRING_NUM, &payload::vring_state(2, 64), &[]),
        "queue 2",
    );
}

/// GET_VRING_BASE of queue 9.
pub fn get_vring_base_of_a_missing_ring(env: &mut Env) {
    let r = env.negotiated();
    r.send(
        code::GET_VRING_BASE,
        VERSION,
        &payload::vring_state(9, 0),
        &[],
    )
    .unwrap();
    dropped(&r, "GET_VRING_BASE of queue 9");
}

/// The driver's avail index 1000 entries ahead of the device on a 256-entry queue.
pub fn avail_index_far_ahead(env: &mut Env) {
    let mut r = env.ready();
    let d = r.dev();
    d.submit(&Request::attach(1, 3, 0));
    d.reqq.publish(&d.mem);
    // avail->idx sits 2 bytes into the avail ring.
    let gpa = avail_gpa(d);
    d.mem.write_u16(gpa + 2, 1000);
    d.reqq.kick();
    assert!(
        d.wait_response(QUIET).is_none(),
        "a request answered from an avail ring 1000 entries ahead"
    );
}

/// Guest-physical address of the request queue's avail ring.
fn avail_gpa(d: &Device) -> u64 {
    let va = d.reqq.config(&d.mem).avail_ring_addr;
    let infos = d.mem.region_infos();
    let r = infos
        .iter()
        .find(|r| va >= r.userspace_addr && va < r.userspace_addr + r.memory_size)
        .expect("avail ring in a region");
    r.guest_phys_addr + (va - r.userspace_addr)
}

/// SET_VRING_BASE 40000 on a running 256-entry queue, then a request.
pub fn vring_base_beyond_the_queue_size(env: &mut Env) {
    let mut r = env.ready();
    accepted(
        r.request(code::SET_VRING_BASE, &payload::vring_state(0, 40_000), &[]),
        "SET_VRING_BASE 40000",
    );
    unanswered(&mut r, "a request behind a base of 40000");
}

/// SET_VRING_KICK that says an fd follows (bit 8 clear) and has none.
pub fn kick_without_an_fd_or_the_no_fd_flag(env: &mut Env) {
    let r = env.negotiated();
    r.send(
        code::SET_VRING_KICK,
        VERSION | NEED_REPLY,
        &payload::u64(0),
        &[],
    )
    .unwrap();
    dropped(&r, "SET_VRING_KICK without an fd");
}

/// A memfd as the kick descriptor of a running queue.
pub fn kick_fd_that_is_a_regular_file(env: &mut Env) {
    let mut r = env.ready();
    let f = raw::sealed_memfd(4096).unwrap();
    let reply = r.request(code::SET_VRING_KICK, &payload::u64(0), &[fd(&f)]);
    assert!(matches!(reply, Reply::Msg { .. }), "no answer: {reply:?}");
    // Requests published without a kick the device can see.
    let d = r.dev();
    d.submit(&Request::attach(1, 3, 0));
    d.reqq.publish(&d.mem);
    let _ = d.wait_response(QUIET);
}

/// The read end of a pipe as the call descriptor: the device cannot signal, the request is
/// still answered in the used ring.
pub fn call_fd_that_is_a_pipe_read_end(env: &mut Env) {
    let mut r = env.ready();
    let (rd, _wr) = raw::pipe().unwrap();
    accepted(
        r.request(code::SET_VRING_CALL, &payload::u64(0), &[fd(&rd)]),
        "a pipe's read end as the call fd",
    );
    let resp = r.dev().run(&Request::attach(1, 3, 0));
    resp.expect(OK, "ATTACH with a call fd that cannot be written");
}

/// The request queue's kick eventfd given as its call eventfd too.
pub fn kick_and_call_are_one_eventfd(env: &mut Env) {
    let mut r = env.ready();
    let kick = fd(&r.dev().reqq.kick);
    accepted(
        r.request(code::SET_VRING_CALL, &payload::u64(0), &[kick]),
        "the kick fd as the call fd",
    );
    device_works(&mut r, "kick = call");
}

/// A ring stopped with GET_VRING_BASE, kicked 100 times with a request waiting: nothing is
/// answered until the frontend starts it again.
pub fn kick_a_stopped_ring(env: &mut Env) {
    let mut r = env.ready();
    let d = r.dev();
    let bases = d.stop_rings().unwrap();
    d.submit(&Request::attach(1, 3, 0));
    for _ in 0..100 {
        d.kick();
    }
    assert!(d.wait_response(QUIET).is_none(), "a stopped ring answered");
    d.start_rings(bases).unwrap();
    d.reqq.kick();
    let resp = d
        .wait_response(T)
        .expect("the waiting request after the restart");
    resp.expect(OK, "ATTACH after the restart");
}

/// The request queue grown from 256 to 1024 entries under the driver (its avail and used
/// rings now run into whatever follows them).
pub fn ring_grown_while_running(env: &mut Env) {
    let mut r = env.ready();
    accepted(
        r.request(code::SET_VRING_NUM, &payload::vring_state(0, 1024), &[]),
        "SET_VRING_NUM 1024",
    );
    let d = r.dev();
    for _ in 0..4 {
        d.submit(&Request::attach(1, 3, 0));
    }
    d.kick();
    let _ = d.wait_response(QUIET);
}
