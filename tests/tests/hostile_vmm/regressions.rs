//! The three defects of the hostile-VMM issue, each with a test that fails against the daemon
//! before the fix (commit 9f0227f: run with `VHOST_USER_IOMMU_BIN` pointing at its binary):
//!
//! 1. A region larger than its file was accepted, and the first access past the end of the
//!    file (a ring there) killed the daemon with SIGBUS (signal 31, SIGSYS, under seccomp); a
//!    memfd shrunk after SET_MEM_TABLE was the same attack, later.
//! 2. Every connection leaked an eventfd: under a 256-file limit the daemon exited after about
//!    250 connections.
//! 3. Without EVENT_IDX the device notified after every used buffer although the driver set
//!    VRING_AVAIL_F_NO_INTERRUPT.

use std::time::{Duration, Instant};

use vhost_user_iommu_tests::raw::{self, code, mem_table, payload, Raw, Region, VERSION};
use vhost_user_iommu_tests::virtq::DEFAULT_TIMEOUT;
use vhost_user_iommu_tests::Request;

use super::*;

const MIB: u64 = 1 << 20;
const VA: u64 = 0x7e00_0000_0000;

/// Place queue 0's rings at frontend address `at` (size 8) and kick it: on a region without
/// backing this is the access that raises SIGBUS.
fn rings_at(r: &Raw, at: u64) {
    let kick = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let call = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    // Each may fail once the daemon has refused the table and closed the connection.
    let _ = r.send(
        code::SET_VRING_NUM,
        VERSION,
        &payload::vring_state(0, 8),
        &[],
    );
    let _ = r.send(
        code::SET_VRING_ADDR,
        VERSION,
        &payload::vring_addr(0, at, at + 0x2000, at + 0x1000),
        &[],
    );
    let _ = r.send(
        code::SET_VRING_BASE,
        VERSION,
        &payload::vring_state(0, 0),
        &[],
    );
    let _ = r.send(
        code::SET_VRING_CALL,
        VERSION,
        &payload::u64(0),
        &[fd(&call)],
    );
    let _ = r.send(
        code::SET_VRING_KICK,
        VERSION,
        &payload::u64(0),
        &[fd(&kick)],
    );
    let _ = r.send(
        code::SET_VRING_ENABLE,
        VERSION,
        &payload::vring_state(0, 1),
        &[],
    );
    let _ = kick.write(1);
    // A barrier: once GET_FEATURES is answered (or the connection is gone) all of the above
    // has been handled.
    let _ = r.alive();
    std::thread::sleep(Duration::from_millis(200));
}

/// The daemon is alive, or the test fails with how it died.
fn survived(env: &mut Env, what: &str) {
    if let Some(st) = env.daemon.try_wait() {
        panic!(
            "{what}: the daemon died ({st}); stderr:\n{}",
            env.daemon.stderr()
        );
    }
}

#[test]
fn a_region_past_the_end_of_its_file_is_refused_and_never_touched() {
    let mut env = Env::start();
    let r = env.negotiated();
    // 1 MiB of file (sealed: only the size is wrong), 2 MiB of region.
    let f = raw::sealed_memfd(MIB).unwrap();
    let region = Region::new(0, 2 * MIB, VA);
    let reply = r.request(code::SET_MEM_TABLE, &mem_table(&[region], None), &[fd(&f)]);
    rings_at(&r, region.va(MIB + 0x1000));
    survived(&mut env, "rings past the end of the file");
    refused(reply, "a 2 MiB region on a 1 MiB file");
    drop(r);
    env.still_serves("region past the end of its file");
    env.finish("region past the end of its file");
}

#[test]
fn a_memfd_that_may_shrink_is_refused() {
    let mut env = Env::start();
    let r = env.negotiated();
    let f = raw::memfd(2 * MIB, 0).unwrap();
    let region = Region::new(0, 2 * MIB, VA);
    let reply = r.request(code::SET_MEM_TABLE, &mem_table(&[region], None), &[fd(&f)]);
    // The frontend shrinks the file under the daemon's mapping, then uses it.
    f.set_len(0).unwrap();
    rings_at(&r, region.va(0x1000));
    survived(&mut env, "rings in a memfd shrunk after SET_MEM_TABLE");
    refused(reply, "an unsealed memfd");
    drop(r);
    env.still_serves("memfd shrunk later");
    env.finish("memfd shrunk later");
}

/// The soft RLIMIT_NOFILE of `pid`, from /proc/PID/limits.
fn nofile_limit(pid: i32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A daemon started under a 256-file soft limit, and its open file count once warmed up (one
/// full session served).
fn limited() -> (Env, usize) {
    let daemon = Daemon::start_with_nofile(&[], 256);
    assert_eq!(
        nofile_limit(daemon.pid()),
        Some(256),
        "the limit did not take"
    );
    let mut env = Env::with(daemon);
    env.still_serves("warm-up");
    let before = env.daemon.fd_count();
    (env, before)
}

/// Connect and close at once; the daemon must be there to take it.
fn connect_close(env: &mut Env, i: usize) {
    if Raw::connect(&env.daemon.socket).is_err() {
        survived(env, &format!("connection {i}"));
        panic!("connection {i} refused by a live daemon");
    }
    env.count_connection();
}

#[test]
fn every_connection_gives_back_its_files() {
    let (mut env, before) = limited();
    for i in 0..300 {
        if i % 3 == 0 {
            // A negotiated session, then gone.
            let r = env.negotiated();
            assert!(r.alive().is_some(), "connection {i}");
        } else {
            connect_close(&mut env, i);
        }
    }
    env.settle();
    survived(&mut env, "300 connections under a 256-file limit");
    let after = env.daemon.fd_count();
    assert_eq!(after, before, "open files before 300 connections, after");
    env.still_serves("300 connections");
    env.finish("300 connections");
}

#[test]
fn five_thousand_connect_close_cycles_under_a_256_fd_limit() {
    let (mut env, before) = limited();
    let started = Instant::now();
    let mut samples = Vec::new();
    for i in 1..=5000 {
        connect_close(&mut env, i);
        if i % 500 == 0 {
            // The same daemon still serves a full session, and holds no more files.
            env.still_serves(&format!("after {i} cycles"));
            samples.push(env.daemon.fd_count());
        }
    }
    env.settle();
    let after = env.daemon.fd_count();
    eprintln!(
        "5000 connect/close cycles in {:?} under RLIMIT_NOFILE 256: {before} open files before, \
         {after} after, every 500 cycles: {samples:?}",
        started.elapsed()
    );
    let worst = samples.iter().copied().max().unwrap_or(after);
    assert!(
        after <= before + 1 && worst <= before + 1,
        "open files: {before} before, {after} after, samples {samples:?}"
    );
    env.finish("5000 cycles");
}

/// Count the call eventfd's notifications without waiting on it (non-blocking read).
fn notifications(d: &Device) -> u64 {
    d.reqq.call.read().unwrap_or(0)
}

/// Wait (bounded) until the used index reaches `idx`, by polling guest memory only.
fn used_reaches(d: &Device, idx: u16) {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    while d.reqq.used_idx(&d.mem) != idx {
        assert!(Instant::now() < deadline, "used index stuck before {idx}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn no_interrupt_while_the_driver_sets_no_interrupt_without_event_idx() {
    let mut env = Env::start();
    let mut r = env.ready();
    let d = r.dev();
    assert_eq!(
        d.acked & vhost_user_iommu_tests::proto::feature::RING_EVENT_IDX,
        0,
        "this test is about a driver without EVENT_IDX"
    );
    assert_eq!(d.attach(1, 3), OK);
    let _ = notifications(d);
    // The driver sets VRING_AVAIL_F_NO_INTERRUPT (as Linux does for a queue it polls).
    d.reqq.quiet = true;
    let mut idx = d.reqq.used_idx(&d.mem);
    for i in 0..20u64 {
        d.submit(&Request::map(1, i << 12, (i << 12) | 0xfff, i << 12, RW));
        d.kick();
        idx = idx.wrapping_add(1);
        used_reaches(d, idx);
    }
    std::thread::sleep(Duration::from_millis(100));
    let quiet = notifications(d);
    for resp in d.wait_responses(20) {
        resp.expect(OK, "MAP");
    }
    // The flag cleared: a notification again.
    d.reqq.quiet = false;
    d.submit(&Request::unmap(1, 0, 0xfff));
    d.kick();
    used_reaches(d, idx.wrapping_add(1));
    std::thread::sleep(Duration::from_millis(100));
    let loud = notifications(d);
    d.wait_responses(1)[0].expect(OK, "UNMAP");
    assert_eq!(
        quiet, 0,
        "{quiet} interrupt(s) for 20 used buffers while the driver set VRING_AVAIL_F_NO_INTERRUPT"
    );
    assert!(loud > 0, "no interrupt once the driver cleared the flag");
    drop(r);
    env.still_serves("NO_INTERRUPT");
    env.finish("NO_INTERRUPT");
}

/// Found by this suite: ADD_MEM_REG (CONFIGURE_MEM_SLOTS acked, never offered) added regions
/// without bound, each keeping a file open in the daemon, until one session held every file
/// the daemon may open (229 regions under a 256-file limit: the control socket dropped its
/// clients, and the session ended only when no fd could be received any more). A table has at
/// most 32 regions (what one SET_MEM_TABLE can carry): the next ADD_MEM_REG is refused.
#[test]
fn a_session_cannot_hold_every_file_the_daemon_may_open() {
    let (mut env, before) = limited();
    let r = env.ready();
    accepted(
        r.request(
            code::SET_PROTOCOL_FEATURES,
            &payload::u64(raw::PROTOCOL_NORMAL | raw::PROTOCOL_CONFIGURE_MEM_SLOTS),
            &[],
        ),
        "SET_PROTOCOL_FEATURES",
    );
    let (mut added, mut held) = (0u64, 0);
    let refusal = loop {
        let f = raw::sealed_memfd(0x1000).unwrap();
        let region = Region::new((1 << 40) + added * 0x10000, 0x1000, VA + added * 0x10000);
        let reply = r.request(code::ADD_MEM_REG, &raw::single_region(&region), &[fd(&f)]);
        if reply.value() != Some(0) || added == 300 {
            break reply;
        }
        added += 1;
        held = held.max(env.daemon.fd_count());
        // While the session holds its regions the control socket still serves.
        if added % 10 == 0 {
            assert!(env
                .ctl
                .request(&vhost_user_iommu_control::Request::Status)
                .is_ok());
        }
    };
    eprintln!(
        "{added} regions added, then {refusal:?}; the daemon had {before} open files before the \
         session, at most {held} with its regions"
    );
    refused(refusal, "one region too many");
    assert!(added <= 32, "{added} regions taken");
    assert!(
        held <= before + 48,
        "one session holds {held} open files (the daemon had {before})"
    );
    drop(r);
    env.still_serves("ADD_MEM_REG without bound");
    assert_eq!(env.daemon.fd_count(), before);
    env.finish("ADD_MEM_REG without bound");
}

/// Found by this suite: SET_DEVICE_STATE_FD(LOAD) of an fd that never reaches its end (an
/// eventfd: reading it blocks, and it has no writer to close) stuck the transfer thread for
/// good, and every further transfer queued behind it with its fd: 235 of them under a 256-file
/// limit, held after the session and after the frontend had closed its copies, and no frontend
/// could hand over a memory table again. One transfer at a time now (a second one is refused
/// while the first runs), and a transfer ends within its deadline.
#[test]
fn state_transfers_that_never_end_hold_one_file_at_most() {
    let (mut env, before) = limited();
    let r = env.negotiated();
    let (mut taken, mut refused_loads) = (0, 0);
    for i in 0..300 {
        // Blocking, and closed on our side at once: only the daemon holds it.
        let e = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let mut body = 1u32.to_le_bytes().to_vec(); // LOAD
        body.extend_from_slice(&0u32.to_le_bytes()); // STOPPED
        r.send(code::SET_DEVICE_STATE_FD, VERSION, &body, &[fd(&e)])
            .unwrap_or_else(|err| panic!("load {i}: {err}"));
        drop(e);
        match r.recv(T).value() {
            Some(0x100) => taken += 1,
            Some(_) => refused_loads += 1,
            None => panic!(
                "load {i}: no answer (the daemon has {} files)",
                env.daemon.fd_count()
            ),
        }
    }
    let held = env.daemon.fd_count();
    eprintln!(
        "300 never-ending state loads: {taken} taken, {refused_loads} refused; {before} open \
         files before, {held} after"
    );
    assert!(held <= before + 8, "{held} open files ({before} before)");
    drop(r);
    env.still_serves("never-ending state loads");
    env.finish("never-ending state loads");
}

/// Found by this suite: the kick and call eventfds are the frontend's, blocking unless it made
/// them non-blocking. One blocking eventfd as the kick of both queues (or a frontend that
/// drains its own kick) made a worker read block with the ring locked, and a full call eventfd
/// (counter at its maximum) made a notification block the same way: the message handler then
/// waited for that lock for good, the connection never ended, and no frontend was served again,
/// even after this one went away. The daemon makes both non-blocking when it gets them.
#[test]
fn a_blocking_kick_shared_by_both_queues_does_not_wedge_the_daemon() {
    let mut env = Env::start();
    let mut r = env.ready();
    let k = vmm_sys_util::eventfd::EventFd::new(0).unwrap(); // blocking
    for q in 0..2 {
        accepted(
            r.request(code::SET_VRING_KICK, &payload::u64(q), &[fd(&k)]),
            "one blocking kick for both queues",
        );
        // Disabled and enabled again: the new kick is watched (each message brought the
        // daemon its own descriptor of the one eventfd: two entries in its epoll set).
        for on in [0, 1] {
            accepted(
                r.request(
                    code::SET_VRING_ENABLE,
                    &payload::vring_state(q as u32, on),
                    &[],
                ),
                "SET_VRING_ENABLE",
            );
        }
    }
    // Both queues are woken by the one kick; the first read takes it, the second finds none.
    let d = r.dev();
    d.submit(&Request::attach(1, 3, 0));
    d.reqq.publish(&d.mem);
    k.write(1).unwrap();
    std::thread::sleep(QUIET);
    // The handler still answers on this connection (it needs the rings' locks).
    accepted(
        r.request(code::SET_VRING_CALL, &payload::u64(1), &[fd(&k)]),
        "SET_VRING_CALL after the kick",
    );
    drop(r);
    env.still_serves("one blocking kick for both queues");
    env.finish("one blocking kick for both queues");
}

#[test]
fn a_full_blocking_call_eventfd_does_not_wedge_the_daemon() {
    let mut env = Env::start();
    let mut r = env.ready();
    let c = vmm_sys_util::eventfd::EventFd::new(0).unwrap(); // blocking
    accepted(
        r.request(code::SET_VRING_CALL, &payload::u64(0), &[fd(&c)]),
        "a blocking call eventfd",
    );
    // The counter at its maximum: one more notification would block.
    c.write(u64::MAX - 1).unwrap();
    let d = r.dev();
    d.submit(&Request::attach(1, 3, 0));
    d.kick();
    std::thread::sleep(QUIET);
    let kick = fd(&r.dev().reqq.kick);
    accepted(
        r.request(code::SET_VRING_KICK, &payload::u64(0), &[kick]),
        "SET_VRING_KICK after the notification",
    );
    drop(r);
    env.still_serves("a full call eventfd");
    env.finish("a full call eventfd");
}
