//! Well-framed messages a driver should never send: a second owner, features never offered,
//! protocol features acked without being offered and the messages they unlock, bad values,
//! config reads and writes out of range, and floods.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};

use vhost_user_iommu_tests::proto::{CONFIG_LEN, FAULT_RECORD_LEN};
use vhost_user_iommu_tests::raw::{self, code, payload, NEED_REPLY, VERSION};
use vhost_user_iommu_tests::Request;
use vmm_sys_util::eventfd::EventFd;

use super::*;

/// SET_OWNER on a connection that already has an owner.
pub fn set_owner_twice(env: &mut Env) {
    let r = env.negotiated();
    refused(r.request(code::SET_OWNER, &[], &[]), "a second SET_OWNER");
}

/// SET_FEATURES with every bit, most never offered.
pub fn features_never_offered(env: &mut Env) {
    let r = env.negotiated();
    refused(
        r.request(code::SET_FEATURES, &payload::u64(u64::MAX), &[]),
        "SET_FEATURES of every bit",
    );
}

/// Every protocol feature acked (few are offered), then GET_INFLIGHT_FD, which the backend
/// does not implement.
pub fn protocol_features_never_offered_then_inflight_fd(env: &mut Env) {
    let r = env.negotiated();
    accepted(
        r.request(code::SET_PROTOCOL_FEATURES, &payload::u64(u64::MAX), &[]),
        "SET_PROTOCOL_FEATURES of every bit",
    );
    // {u64 mmap_size, u64 mmap_offset, u16 num_queues, u16 queue_size} + padding.
    let mut body = payload::u64(1 << 20);
    body.extend_from_slice(&payload::u64(0));
    body.extend_from_slice(&2u16.to_le_bytes());
    body.extend_from_slice(&256u16.to_le_bytes());
    body.extend_from_slice(&[0; 4]);
    r.send(code::GET_INFLIGHT_FD, VERSION, &body, &[]).unwrap();
    dropped(&r, "GET_INFLIGHT_FD");
}

/// GET_CONFIG when CONFIG was not acked.
pub fn get_config_without_the_config_feature(env: &mut Env) {
    let r = env.negotiated();
    accepted(
        r.request(
            code::SET_PROTOCOL_FEATURES,
            &payload::u64(1 << 3), // REPLY_ACK only
            &[],
        ),
        "SET_PROTOCOL_FEATURES",
    );
    r.send(
        code::GET_CONFIG,
        VERSION,
        &payload::config(0, 4, &[0; 4]),
        &[],
    )
    .unwrap();
    dropped(&r, "GET_CONFIG without CONFIG");
}

/// SET_VRING_ENABLE with a value that is neither 0 nor 1.
pub fn vring_enable_with_a_bad_value(env: &mut Env) {
    let r = env.negotiated();
    r.send(
        code::SET_VRING_ENABLE,
        VERSION | NEED_REPLY,
        &payload::vring_state(0, 2),
        &[],
    )
    .unwrap();
    dropped(&r, "SET_VRING_ENABLE 2");
}

/// SET_BACKEND_REQ_FD (BACKEND_REQ acked, never offered) with a memfd instead of a socket.
pub fn backend_req_fd_that_is_not_a_socket(env: &mut Env) {
    let r = env.negotiated();
    accepted(
        r.request(
            code::SET_PROTOCOL_FEATURES,
            &payload::u64(raw::PROTOCOL_NORMAL | raw::PROTOCOL_BACKEND_REQ),
            &[],
        ),
        "SET_PROTOCOL_FEATURES",
    );
    let f = raw::sealed_memfd(4096).unwrap();
    r.send(
        code::SET_BACKEND_REQ_FD,
        VERSION | NEED_REPLY,
        &[],
        &[fd(&f)],
    )
    .unwrap();
    dropped(&r, "a memfd as the backend request channel");
}

/// SET_BACKEND_REQ_FD (BACKEND_REQ acked, never offered) with a real Unix socket: taken (the
/// device never sends backend requests), the connection goes on.
pub fn backend_req_fd_that_is_a_socket(env: &mut Env) {
    let r = env.negotiated();
    accepted(
        r.request(
            code::SET_PROTOCOL_FEATURES,
            &payload::u64(raw::PROTOCOL_NORMAL | raw::PROTOCOL_BACKEND_REQ),
            &[],
        ),
        "SET_PROTOCOL_FEATURES",
    );
    let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    accepted(
        r.request(code::SET_BACKEND_REQ_FD, &[], &[fd(&ours)]),
        "a socket as the backend request channel",
    );
    still_talks(&r, "SET_BACKEND_REQ_FD");
}

/// GPU_SET_SOCKET (a message of GPU devices, taken without any feature) with a memfd.
pub fn gpu_socket_that_is_not_a_socket(env: &mut Env) {
    let r = env.negotiated();
    let f = raw::sealed_memfd(4096).unwrap();
    r.send(code::GPU_SET_SOCKET, VERSION | NEED_REPLY, &[], &[fd(&f)])
        .unwrap();
    dropped(&r, "a memfd as the GPU socket");
}

/// GPU_SET_SOCKET with a real Unix socket: this is no GPU, the request is refused.
pub fn gpu_socket_that_is_a_socket(env: &mut Env) {
    let r = env.negotiated();
    let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    refused(
        r.request(code::GPU_SET_SOCKET, &[], &[fd(&ours)]),
        "a GPU socket",
    );
}

/// SET_LOG_BASE (LOG_SHMFD acked, never offered) of a 1 GiB log on a 4 KiB memfd, with a
/// working device: the log is refused (and never written: LOG_ALL is not offered).
pub fn log_base_beyond_its_file(env: &mut Env) {
    let mut r = env.ready();
    accepted(
        r.request(
            code::SET_PROTOCOL_FEATURES,
            &payload::u64(raw::PROTOCOL_NORMAL | raw::PROTOCOL_LOG_SHMFD),
            &[],
        ),
        "SET_PROTOCOL_FEATURES",
    );
    let f = raw::memfd(4096, 0).unwrap();
    let mut body = payload::u64(1 << 30);
    body.extend_from_slice(&payload::u64(0));
    // Kick the queues with requests in flight while the log arrives.
    let d = r.dev();
    for _ in 0..8 {
        d.submit(&Request::attach(1, 3, 0));
    }
    d.kick();
    r.send(code::SET_LOG_BASE, VERSION, &body, &[fd(&f)])
        .unwrap();
    dropped(&r, "a 1 GiB log on a 4 KiB file");
}

/// SET_DEVICE_STATE_FD with a transfer direction that does not exist.
pub fn device_state_fd_with_a_bad_direction(env: &mut Env) {
    let r = env.negotiated();
    let (rd, _wr) = raw::pipe().unwrap();
    let mut body = 7u32.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    r.send(code::SET_DEVICE_STATE_FD, VERSION, &body, &[fd(&rd)])
        .unwrap();
    dropped(&r, "a state transfer in direction 7");
}

/// CHECK_DEVICE_STATE with no transfer: an error in the reply, the connection goes on.
pub fn check_device_state_without_a_transfer(env: &mut Env) {
    let r = env.negotiated();
    r.send(code::CHECK_DEVICE_STATE, VERSION, &[], &[]).unwrap();
    let reply = r.recv(T);
    assert!(
        matches!(reply.value(), Some(v) if v != 0),
        "CHECK_DEVICE_STATE without a transfer: {reply:?}"
    );
    still_talks(&r, "CHECK_DEVICE_STATE");
}

/// RESET_DEVICE while a batch of requests is being processed.
pub fn reset_device_with_requests_in_flight(env: &mut Env) {
    let mut r = env.ready();
    {
        let d = r.dev();
        assert_eq!(d.attach(1, 3), OK);
        for i in 0..64u64 {
            d.submit(&Request::map(1, i << 12, (i << 12) | 0xfff, i << 12, RW));
        }
        d.kick();
    }
    accepted(
        r.request(code::RESET_DEVICE, &[], &[]),
        "RESET_DEVICE with requests in flight",
    );
    assert!(
        env.ctl.status()["mappings"].as_u64().unwrap_or(u64::MAX) <= 64,
        "more mappings than requests"
    );
}

/// Read `size` bytes of config at `offset`: the reply's config header and payload.
fn get_config(r: &Raw, offset: u32, size: u32) -> (u32, Vec<u8>) {
    r.send(
        code::GET_CONFIG,
        VERSION,
        &payload::config(offset, size, &vec![0; size as usize]),
        &[],
    )
    .unwrap();
    match r.recv(T) {
        Reply::Msg {
            code: code::GET_CONFIG,
            payload,
            ..
        } if payload.len() >= 12 => {
            let got = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
            (got, payload[12..].to_vec())
        }
        other => panic!("GET_CONFIG({offset}, {size}): {other:?}"),
    }
}

/// GET_CONFIG of 8 bytes at offset 36 of the 40-byte config: an empty (error) reply.
pub fn get_config_past_the_end(env: &mut Env) {
    let r = env.negotiated();
    assert_eq!(
        get_config(&r, 36, 8),
        (0, vec![]),
        "GET_CONFIG past the end"
    );
    assert_eq!(get_config(&r, 0, CONFIG_LEN as u32).1.len(), CONFIG_LEN);
}

/// GET_CONFIG at offset 0xfffffff0 (offset + size wraps).
pub fn get_config_at_a_huge_offset(env: &mut Env) {
    let r = env.negotiated();
    r.send(
        code::GET_CONFIG,
        VERSION,
        &payload::config(0xffff_fff0, 16, &[0; 16]),
        &[],
    )
    .unwrap();
    dropped(&r, "GET_CONFIG at 0xfffffff0");
}

/// GET_CONFIG whose size field says 40 and whose payload holds 4.
pub fn get_config_whose_size_field_lies(env: &mut Env) {
    let r = env.negotiated();
    r.send(
        code::GET_CONFIG,
        VERSION,
        &payload::config(0, CONFIG_LEN as u32, &[0; 4]),
        &[],
    )
    .unwrap();
    dropped(&r, "GET_CONFIG with a lying size");
}

/// SET_CONFIG past the end of the 40-byte config space (ignored), and wrapping around 2^32
/// (the connection is dropped): the config never changes.
pub fn set_config_out_of_range(env: &mut Env) {
    let before = get_config(&env.negotiated(), 0, CONFIG_LEN as u32).1;
    for (offset, len, taken) in [
        (100u32, 4usize, true),
        (36, 8, true),
        (u32::MAX - 1, 4, false),
        (0, 4000, true),
    ] {
        let r = env.negotiated();
        let what = format!("SET_CONFIG({offset}, {len})");
        let body = payload::config(offset, len as u32, &vec![0xff; len]);
        if taken {
            accepted(r.request(code::SET_CONFIG, &body, &[]), &what);
            assert_eq!(get_config(&r, 0, CONFIG_LEN as u32).1, before, "{what}");
        } else {
            r.send(code::SET_CONFIG, VERSION | NEED_REPLY, &body, &[])
                .unwrap();
            dropped(&r, &what);
        }
    }
    assert_eq!(
        get_config(&env.negotiated(), 0, CONFIG_LEN as u32).1,
        before
    );
}

/// SET_CONFIG of every byte (all read-only but `bypass`) to 0xff: nothing changes.
pub fn set_config_over_read_only_fields(env: &mut Env) {
    let r = env.negotiated();
    let before = get_config(&r, 0, CONFIG_LEN as u32).1;
    let reply = r.request(
        code::SET_CONFIG,
        &payload::config(0, CONFIG_LEN as u32, &[0xff; CONFIG_LEN]),
        &[],
    );
    assert!(matches!(reply, Reply::Msg { .. }), "{reply:?}");
    // bypass (offset 36) only takes 0 or 1, one byte at a time.
    let reply = r.request(code::SET_CONFIG, &payload::config(36, 1, &[7]), &[]);
    assert!(matches!(reply, Reply::Msg { .. }), "{reply:?}");
    assert_eq!(get_config(&r, 0, CONFIG_LEN as u32).1, before);
}

/// 20000 messages that take no reply, then one that does.
pub fn flood_of_messages_without_replies(env: &mut Env) {
    let r = env.negotiated();
    let one = raw::message(
        code::SET_VRING_BASE,
        VERSION,
        8,
        &payload::vring_state(0, 0),
    );
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    let mut s = &r.sock;
    for _ in 0..20 {
        s.write_all(&batch).unwrap();
    }
    still_talks(&r, "after 20000 SET_VRING_BASE");
}

/// A frontend that sends GET_FEATURES until its socket is full and never reads an answer.
pub fn frontend_that_never_reads_replies(env: &mut Env) {
    let r = env.negotiated();
    r.sock.set_nonblocking(true).unwrap();
    let one = raw::message(code::GET_FEATURES, VERSION, 0, &[]);
    let mut s = &r.sock;
    let mut sent = 0usize;
    let full = loop {
        match s.write(&one) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
            Err(e) => panic!("write: {e}"),
        }
        if sent > 64 << 20 {
            break false;
        }
    };
    assert!(full, "64 MiB of requests and the socket never filled");
}

/// 200 SET_MEM_TABLEs of the device's own table: no file is kept per table.
pub fn flood_of_memory_tables(env: &mut Env) {
    let mut r = env.ready();
    let before = env.daemon.fd_count();
    let (regions, fds) = device_table(r.dev());
    let table = raw::mem_table(&regions, None);
    for i in 0..200 {
        accepted(
            r.request(code::SET_MEM_TABLE, &table, &fds),
            &format!("SET_MEM_TABLE {i}"),
        );
    }
    let after = env.daemon.fd_count();
    assert!(
        after <= before + 2,
        "{before} open files before 200 memory tables, {after} after"
    );
    device_works(&mut r, "after 200 memory tables");
}

/// 1000 SET_VRING_CALLs, each with a new eventfd: the old ones are closed.
pub fn flood_of_call_eventfds(env: &mut Env) {
    let mut r = env.ready();
    let before = env.daemon.fd_count();
    for i in 0..1000 {
        let e = EventFd::new(0).unwrap();
        accepted(
            r.request(code::SET_VRING_CALL, &payload::u64(0), &[fd(&e)]),
            &format!("SET_VRING_CALL {i}"),
        );
    }
    let after = env.daemon.fd_count();
    assert!(
        after <= before + 2,
        "{before} open files before 1000 call eventfds, {after} after"
    );
    let call = fd(&r.dev().reqq.call);
    accepted(
        r.request(code::SET_VRING_CALL, &payload::u64(0), &[call]),
        "SET_VRING_CALL (the device's own)",
    );
    device_works(&mut r, "after 1000 call eventfds");
}

/// 100000 kicks of an empty request queue and event queue.
pub fn flood_of_kicks(env: &mut Env) {
    let mut r = env.ready();
    {
        let d = r.dev();
        d.post_event_buffers(4, FAULT_RECORD_LEN);
        for _ in 0..50_000 {
            d.reqq.kick();
            d.evq.kick();
        }
    }
    device_works(&mut r, "after 100000 kicks");
}

/// RESET_OWNER in the middle of a working session, then SET_OWNER again.
pub fn reset_owner_mid_session(env: &mut Env) {
    let mut r = env.ready();
    assert_eq!(r.dev().attach(1, 3), OK);
    accepted(r.request(code::RESET_OWNER, &[], &[]), "RESET_OWNER");
    let reply = r.request(code::SET_OWNER, &[], &[]);
    assert!(
        matches!(reply, Reply::Msg { .. } | Reply::Closed),
        "SET_OWNER after RESET_OWNER: {reply:?}"
    );
}

/// EVENT_IDX switched on under a running driver that does not use it, then PROTOCOL_FEATURES
/// switched off.
pub fn features_changed_while_running(env: &mut Env) {
    let mut r = env.ready();
    let acked = r.dev().acked;
    let event_idx = vhost_user_iommu_tests::proto::feature::RING_EVENT_IDX;
    accepted(
        r.request(code::SET_FEATURES, &payload::u64(acked | event_idx), &[]),
        "SET_FEATURES with EVENT_IDX",
    );
    device_works(&mut r, "EVENT_IDX switched on underneath");
    let plain = acked & !vhost_user_iommu_tests::proto::feature::PROTOCOL_FEATURES;
    r.send(code::SET_FEATURES, VERSION, &payload::u64(plain), &[])
        .unwrap();
    still_talks(&r, "PROTOCOL_FEATURES switched off");
}

/// SET_INFLIGHT_FD (INFLIGHT_SHMFD acked, never offered) with a memfd.
pub fn inflight_fd_set(env: &mut Env) {
    let r = env.negotiated();
    accepted(
        r.request(
            code::SET_PROTOCOL_FEATURES,
            &payload::u64(raw::PROTOCOL_NORMAL | raw::PROTOCOL_INFLIGHT_SHMFD),
            &[],
        ),
        "SET_PROTOCOL_FEATURES",
    );
    let f = raw::sealed_memfd(1 << 20).unwrap();
    let mut body = payload::u64(1 << 20);
    body.extend_from_slice(&payload::u64(0));
    body.extend_from_slice(&2u16.to_le_bytes());
    body.extend_from_slice(&256u16.to_le_bytes());
    body.extend_from_slice(&[0; 4]);
    refused(
        r.request(code::SET_INFLIGHT_FD, &body, &[fd(&f)]),
        "SET_INFLIGHT_FD",
    );
}

/// SET_DEVICE_STATE_FD(`direction`, STOPPED) with `fd`: the reply's u64 (0x100: no fd back).
fn state_fd(r: &Raw, direction: u32, fd: RawFd) -> Reply {
    let mut body = direction.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    r.send(code::SET_DEVICE_STATE_FD, VERSION, &body, &[fd])
        .unwrap();
    r.recv(T)
}

/// CHECK_DEVICE_STATE: the reply's u64 (0: the transfer succeeded).
fn check_state(r: &Raw) -> Option<u64> {
    r.send(code::CHECK_DEVICE_STATE, VERSION, &[], &[]).unwrap();
    r.recv(T).value()
}

/// A migration stream of 256 KiB of junk loaded into a fresh device: refused at
/// CHECK_DEVICE_STATE, the device as fresh as before.
pub fn state_load_of_junk(env: &mut Env) {
    let r = env.negotiated();
    let (rd, wr) = raw::pipe().unwrap();
    let reply = state_fd(&r, 1, fd(&rd));
    assert_eq!(
        reply.value(),
        Some(0x100),
        "SET_DEVICE_STATE_FD(LOAD): {reply:?}"
    );
    drop(rd);
    let mut w = std::fs::File::from(wr);
    let junk: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let _ = w.write_all(&junk);
    drop(w);
    let v = check_state(&r);
    assert!(matches!(v, Some(v) if v != 0), "junk state accepted: {v:?}");
    let st = env.ctl.status();
    assert_eq!(st["domains"].as_u64(), Some(0), "{st}");
}

/// A state load whose pipe the frontend keeps open and never writes, then a disconnect.
pub fn state_load_never_finished(env: &mut Env) {
    let r = env.negotiated();
    let (rd, wr) = raw::pipe().unwrap();
    let reply = state_fd(&r, 1, fd(&rd));
    assert_eq!(
        reply.value(),
        Some(0x100),
        "SET_DEVICE_STATE_FD(LOAD): {reply:?}"
    );
    drop(rd);
    drop(r);
    // The next session is served while the transfer still waits for its stream.
    env.still_serves("while a state load waits");
    drop(wr);
}

/// A state save into a pipe whose read end the frontend closed at once.
pub fn state_save_into_a_closed_pipe(env: &mut Env) {
    let mut r = env.ready();
    assert_eq!(r.dev().attach(1, 3), OK);
    let (rd, wr) = raw::pipe().unwrap();
    drop(rd);
    let reply = state_fd(&r, 0, fd(&wr));
    drop(wr);
    assert_eq!(
        reply.value(),
        Some(0x100),
        "SET_DEVICE_STATE_FD(SAVE): {reply:?}"
    );
    let v = check_state(&r);
    assert!(
        matches!(v, Some(v) if v != 0),
        "a save into nothing succeeded: {v:?}"
    );
}

/// `n` requests of `code` on a ready session, each with a new fd from `make`: the daemon's open
/// file count stays where it was (each replaces the one before), and the device still works.
fn flood_of_fds<F: AsRawFd>(
    env: &mut Env,
    code: u32,
    value: u64,
    features: Option<u64>,
    make: impl Fn() -> F,
    what: &str,
) {
    let mut r = env.ready();
    if let Some(f) = features {
        accepted(
            r.request(code::SET_PROTOCOL_FEATURES, &payload::u64(f), &[]),
            "SET_PROTOCOL_FEATURES",
        );
    }
    let before = env.daemon.fd_count();
    for i in 0..500 {
        let f = make();
        accepted(
            r.request(code, &payload::u64(value), &[fd(&f)]),
            &format!("{what} {i}"),
        );
    }
    let after = env.daemon.fd_count();
    assert!(
        after <= before + 2,
        "{before} open files before 500 {what}, {after} after"
    );
    if code == code::SET_VRING_KICK {
        let kick = fd(&r.dev().reqq.kick);
        accepted(
            r.request(code::SET_VRING_KICK, &payload::u64(0), &[kick]),
            "the device's own kick fd",
        );
    }
    device_works(&mut r, what);
}

/// 500 SET_VRING_KICKs of the event queue, each with a new eventfd.
pub fn flood_of_kick_eventfds(env: &mut Env) {
    flood_of_fds(
        env,
        code::SET_VRING_KICK,
        1,
        None,
        || EventFd::new(0).unwrap(),
        "kick eventfds",
    );
}

/// 500 SET_VRING_ERRs, each with a new eventfd.
pub fn flood_of_err_eventfds(env: &mut Env) {
    flood_of_fds(
        env,
        code::SET_VRING_ERR,
        0,
        None,
        || EventFd::new(0).unwrap(),
        "err eventfds",
    );
}

/// 500 SET_BACKEND_REQ_FDs (BACKEND_REQ acked, never offered), each with a new socket.
pub fn flood_of_backend_req_sockets(env: &mut Env) {
    flood_of_fds(
        env,
        code::SET_BACKEND_REQ_FD,
        0,
        Some(raw::PROTOCOL_NORMAL | raw::PROTOCOL_BACKEND_REQ),
        || std::os::unix::net::UnixStream::pair().unwrap().0,
        "backend request sockets",
    );
}
