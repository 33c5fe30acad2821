//! Messages that are not well-formed vhost-user: truncated, oversized, unknown, badly flagged,
//! garbage, with file descriptors where none belong, cut off by a disconnect.

use std::net::Shutdown;

use vhost_user_iommu_tests::raw::{self, code, message, payload, Region, NEED_REPLY, VERSION};

use super::*;

/// Half of a GET_FEATURES header, then the frontend stops writing.
pub fn disconnect_mid_header(env: &mut Env) {
    let r = env.bare();
    r.send_bytes(&message(code::GET_FEATURES, VERSION, 0, &[])[..6], &[])
        .unwrap();
    r.sock.shutdown(Shutdown::Write).unwrap();
    dropped(&r, "half a header");
}

/// A SET_MEM_TABLE with its memfd, cut off in the middle of the region list.
pub fn disconnect_mid_payload(env: &mut Env) {
    let r = env.negotiated();
    let f = raw::sealed_memfd(1 << 20).unwrap();
    let body = raw::mem_table(&[Region::new(0, 1 << 20, 0x7f00_0000_0000)], None);
    let msg = message(
        code::SET_MEM_TABLE,
        VERSION | NEED_REPLY,
        body.len() as u32,
        &body,
    );
    r.send_bytes(&msg[..msg.len() - 13], &[fd(&f)]).unwrap();
    r.sock.shutdown(Shutdown::Write).unwrap();
    dropped(&r, "a memory table cut off");
}

/// SET_FEATURES whose header and payload say 4 bytes: its body is 8.
pub fn payload_shorter_than_its_body(env: &mut Env) {
    let r = env.negotiated();
    r.send(code::SET_FEATURES, VERSION | NEED_REPLY, &[0; 4], &[])
        .unwrap();
    dropped(&r, "a 4-byte SET_FEATURES");
}

/// SET_VRING_NUM with 16 bytes: its body is 8.
pub fn payload_longer_than_its_body(env: &mut Env) {
    let r = env.negotiated();
    let mut p = payload::vring_state(0, 64);
    p.extend_from_slice(&[0xee; 8]);
    r.send(code::SET_VRING_NUM, VERSION | NEED_REPLY, &p, &[])
        .unwrap();
    dropped(&r, "a 16-byte SET_VRING_NUM");
}

/// A header announcing one byte more than the largest message, and that many bytes.
pub fn size_beyond_the_largest_message(env: &mut Env) {
    let r = env.negotiated();
    let big = vec![0u8; raw::MAX_MSG_SIZE + 1];
    let _ = r.send(code::SET_CONFIG, VERSION | NEED_REPLY, &big, &[]);
    dropped(&r, "a message over MAX_MSG_SIZE");
}

/// A header announcing 4 GiB, then silence: the daemon must not allocate or wait on it.
pub fn size_u32_max_and_nothing_after(env: &mut Env) {
    let r = env.negotiated();
    r.send_bytes(&message(code::SET_MEM_TABLE, VERSION, u32::MAX, &[]), &[])
        .unwrap();
    dropped(&r, "a header announcing u32::MAX bytes");
}

/// Request code 0 (no such message).
pub fn unknown_code_zero(env: &mut Env) {
    let r = env.negotiated();
    r.send(0, VERSION | NEED_REPLY, &[], &[]).unwrap();
    dropped(&r, "request code 0");
}

/// A request code far beyond the last one defined.
pub fn unknown_code_far_beyond(env: &mut Env) {
    let r = env.negotiated();
    r.send(0xdead_beef, VERSION | NEED_REPLY, &payload::u64(1), &[])
        .unwrap();
    dropped(&r, "request code 0xdeadbeef");
}

/// SEND_RARP, a message of network devices.
pub fn message_of_another_device_type(env: &mut Env) {
    let r = env.negotiated();
    r.send(
        code::SEND_RARP,
        VERSION | NEED_REPLY,
        &payload::u64(0x0011_2233_4455),
        &[],
    )
    .unwrap();
    dropped(&r, "SEND_RARP");
}

/// IOTLB_MSG, for a device IOMMU this backend never negotiated.
pub fn iotlb_message(env: &mut Env) {
    let r = env.negotiated();
    r.send(code::IOTLB_MSG, VERSION | NEED_REPLY, &[0x11; 64], &[])
        .unwrap();
    dropped(&r, "IOTLB_MSG");
}

/// Header version 0.
pub fn version_zero(env: &mut Env) {
    let r = env.negotiated();
    r.send(code::GET_FEATURES, 0, &[], &[]).unwrap();
    dropped(&r, "version 0");
}

/// Reserved header flag bits set.
pub fn reserved_flag_bits(env: &mut Env) {
    let r = env.negotiated();
    r.send(code::GET_FEATURES, VERSION | 0xffff_fff0, &[], &[])
        .unwrap();
    dropped(&r, "reserved flag bits");
}

/// A request flagged as a reply.
pub fn reply_flag_on_a_request(env: &mut Env) {
    let r = env.negotiated();
    r.send(code::GET_FEATURES, VERSION | raw::REPLY, &[], &[])
        .unwrap();
    dropped(&r, "the REPLY flag on a request");
}

/// Bytes that are not vhost-user at all, before any negotiation.
pub fn garbage_bytes(env: &mut Env) {
    let r = env.bare();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = r.send_bytes(&junk, &[]);
    dropped(&r, "garbage");
}

/// GET_FEATURES with three file descriptors attached: the daemon drops the connection and
/// keeps none of them (the suite's file count checks that).
pub fn fds_on_a_message_that_takes_none(env: &mut Env) {
    let r = env.negotiated();
    let f = raw::sealed_memfd(4096).unwrap();
    let (a, b) = raw::pipe().unwrap();
    r.send(code::GET_FEATURES, VERSION, &[], &[fd(&f), fd(&a), fd(&b)])
        .unwrap();
    dropped(&r, "fds on GET_FEATURES");
}

/// A one-region SET_MEM_TABLE with 40 descriptors attached (the protocol allows 32 per
/// message, each for a region).
pub fn more_fds_than_the_protocol_allows(env: &mut Env) {
    let r = env.negotiated();
    let files: Vec<_> = (0..40)
        .map(|_| raw::sealed_memfd(1 << 20).unwrap())
        .collect();
    let fds: Vec<_> = files.iter().map(fd).collect();
    let body = raw::mem_table(&[Region::new(0, 1 << 20, 0x7f00_0000_0000)], None);
    r.send(code::SET_MEM_TABLE, VERSION | NEED_REPLY, &body, &fds)
        .unwrap();
    dropped(&r, "40 fds for one region");
}

/// Every request code from 0 to 63, each on a connection of its own with every protocol
/// feature acked (so feature-gated messages are reached), with payloads of 0, 8, 16, 24 and 40
/// bytes of 0x00 and of 0x01, with and without a memfd attached: 1280 sessions, each answered
/// (a reply or ack) or dropped, never left hanging, and the daemon alive after each.
pub fn every_request_code_with_junk(env: &mut Env) {
    let f = raw::sealed_memfd(1 << 20).unwrap();
    let (mut answered, mut closed, mut silent) = (0, 0, 0);
    for req in 0..64u32 {
        for len in [0usize, 8, 16, 24, 40] {
            for fill in [0u8, 1] {
                for with_fd in [false, true] {
                    let what = format!("code {req}, {len} bytes of {fill:#x}, fd {with_fd}");
                    let r = env.negotiated();
                    accepted(
                        r.request(code::SET_PROTOCOL_FEATURES, &payload::u64(u64::MAX), &[]),
                        &what,
                    );
                    let fds = if with_fd { vec![fd(&f)] } else { vec![] };
                    let _ = r.send(req, VERSION | NEED_REPLY, &vec![fill; len], &fds);
                    match r.recv(QUIET) {
                        Reply::Msg { .. } => answered += 1,
                        Reply::Closed => closed += 1,
                        // No ack: the message turned REPLY_ACK off (SET_FEATURES or
                        // SET_PROTOCOL_FEATURES of zero) or the answer is late. A GET_FEATURES
                        // must then be answered, or the connection be gone.
                        Reply::Silent => match barrier(&r) {
                            Reply::Msg { .. } => silent += 1,
                            Reply::Closed => closed += 1,
                            Reply::Silent => panic!("{what}: neither answered nor dropped"),
                        },
                    }
                    drop(r);
                    if let Some(st) = env.daemon.try_wait() {
                        panic!("{what}: the daemon died ({st})\n{}", env.daemon.stderr());
                    }
                }
            }
        }
    }
    eprintln!(
        "1280 sessions of request codes 0-63: {answered} answered, {closed} dropped, \
         {silent} taken without an ack"
    );
}

/// Send GET_FEATURES and skip anything else until its answer (or the end of the connection).
pub fn barrier(r: &Raw) -> Reply {
    if r.send(code::GET_FEATURES, VERSION, &[], &[]).is_err() {
        return Reply::Closed;
    }
    loop {
        match r.recv(T) {
            reply @ Reply::Msg {
                code: code::GET_FEATURES,
                ..
            } => return reply,
            Reply::Msg { .. } => {}
            other => return other,
        }
    }
}
