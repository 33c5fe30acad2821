//! Random well-framed messages: every message of a ring, memory or config kind with random
//! (biased) contents, on sessions whose guest memory the frontend also fills with junk while
//! kicking both queues. Reproducible: fixed seeds.

use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;

use vhost_user_iommu_tests::raw::{self, code, mem_table, payload, single_region, NEED_REPLY};
use vmm_sys_util::eventfd::EventFd;

use super::*;

const VA: u64 = 0x7e00_0000_0000;
const RAM: u64 = 1 << 20;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A value that is often interesting: small, inside guest RAM, a frontend address of it,
    /// a limit, or anything.
    fn value(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => self.below(4),
            2 => 1 << self.below(16),
            3 => self.below(RAM) & !0xf,
            4 => VA + (self.below(RAM + 0x2000) & !0xf),
            5 => u64::MAX - self.below(0x1000),
            6 => u64::from(u32::MAX),
            _ => self.next(),
        }
    }

    /// A queue index: almost always 0 or 1 (a bad one ends the session).
    fn index(&mut self) -> u32 {
        match self.below(64) {
            0 => self.next() as u32,
            1 => 2,
            _ => self.below(2) as u32,
        }
    }

    /// A queue size: mostly one the device takes.
    fn size(&mut self) -> u32 {
        match self.below(16) {
            0 => self.value() as u32,
            1 => 3,
            _ => 1 << self.below(11),
        }
    }

    /// An offset into guest RAM, most often where the rings are.
    fn ram_offset(&mut self, len: u64) -> u64 {
        if self.below(2) == 0 {
            self.below(0x8000)
        } else {
            self.below(RAM - len)
        }
    }
}

/// One session: negotiated, every protocol feature acked, 1 MiB of sealed guest RAM, both
/// rings set up in its first 32 KiB and enabled.
struct Session {
    r: Raw,
    ram: std::fs::File,
}

fn session(env: &mut Env, kick: &EventFd, call: &EventFd) -> Session {
    let r = env.negotiated();
    accepted(
        r.request(code::SET_PROTOCOL_FEATURES, &payload::u64(u64::MAX), &[]),
        "SET_PROTOCOL_FEATURES",
    );
    let ram = raw::sealed_memfd(RAM).unwrap();
    let table = mem_table(&[Region::new(0, RAM, VA)], None);
    accepted(
        r.request(code::SET_MEM_TABLE, &table, &[fd(&ram)]),
        "SET_MEM_TABLE",
    );
    for q in 0..2u32 {
        let base = VA + u64::from(q) * 0x4000;
        let steps: [(u32, Vec<u8>, Option<RawFd>); 6] = [
            (code::SET_VRING_NUM, payload::vring_state(q, 64), None),
            (
                code::SET_VRING_ADDR,
                payload::vring_addr(q, base, base + 0x2000, base + 0x1000),
                None,
            ),
            (code::SET_VRING_BASE, payload::vring_state(q, 0), None),
            (
                code::SET_VRING_CALL,
                payload::u64(u64::from(q)),
                Some(fd(call)),
            ),
            (
                code::SET_VRING_KICK,
                payload::u64(u64::from(q)),
                Some(fd(kick)),
            ),
            (code::SET_VRING_ENABLE, payload::vring_state(q, 1), None),
        ];
        for (c, body, f) in steps {
            let fds: Vec<RawFd> = f.into_iter().collect();
            accepted(r.request(c, &body, &fds), "ring set-up");
        }
    }
    Session { r, ram }
}

/// A random message: (code, payload, attach an fd).
fn message(rng: &mut Rng) -> (u32, Vec<u8>, bool) {
    let state = |rng: &mut Rng| payload::vring_state(rng.index(), rng.value() as u32);
    // ADD_MEM_REG / REM_MEM_REG (most often refused: the session ends) are rarer.
    match rng.below(16).min(13) {
        0 => (
            code::SET_VRING_NUM,
            payload::vring_state(rng.index(), rng.size()),
            false,
        ),
        1 => (code::SET_VRING_BASE, state(rng), false),
        2 => (
            code::SET_VRING_ENABLE,
            payload::vring_state(rng.index(), rng.below(2) as u32),
            false,
        ),
        3 => (code::GET_VRING_BASE, state(rng), false),
        4 => {
            let (d, u, a) = (rng.value(), rng.value(), rng.value());
            (
                code::SET_VRING_ADDR,
                payload::vring_addr(rng.index(), d, u, a),
                false,
            )
        }
        5 | 6 => {
            let c = if rng.below(2) == 0 {
                code::SET_VRING_KICK
            } else {
                code::SET_VRING_CALL
            };
            let nofd = rng.below(6) == 0;
            let v = u64::from(rng.index() as u8) | if nofd { 0x100 } else { 0 };
            (c, payload::u64(v), !nofd)
        }
        7 => {
            let len = 1 + rng.below(8) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            (
                code::SET_CONFIG,
                payload::config(rng.below(48) as u32, len as u32, &data),
                false,
            )
        }
        8 => {
            let len = 1 + rng.below(48) as u32;
            (
                code::GET_CONFIG,
                payload::config(rng.below(48) as u32, len, &vec![0; len as usize]),
                false,
            )
        }
        9 => {
            let f = (feature_bits() & rng.next())
                | vhost_user_iommu_tests::proto::feature::PROTOCOL_FEATURES;
            (code::SET_FEATURES, payload::u64(f), false)
        }
        10 => (code::RESET_DEVICE, Vec::new(), false),
        11 => {
            let mut region = Region::new(0, RAM, VA);
            match rng.below(8) {
                0 => region.size = rng.value().max(1),
                1 => region.offset = rng.value() & !0xfff,
                2 => region.gpa = rng.value() & !0xfff,
                _ => {}
            }
            (code::SET_MEM_TABLE, mem_table(&[region], None), true)
        }
        12 => {
            let region = Region {
                gpa: rng.value() & !0xfff,
                size: (rng.value() & !0xfff).max(0x1000),
                user_addr: rng.value() & !0xfff,
                offset: rng.value() & !0xfff,
            };
            (code::ADD_MEM_REG, single_region(&region), true)
        }
        _ => {
            let region = Region::new(rng.value() & !0xfff, rng.value(), rng.value());
            (code::REM_MEM_REG, single_region(&region), false)
        }
    }
}

/// The virtio features the device may be offered (its own bits and the ring bits).
fn feature_bits() -> u64 {
    0xffff_ffff | vhost_user_iommu_tests::proto::feature::VERSION_1
}

/// 4 seeds (more with HOSTILE_VMM_SEEDS=<n>) of 1500 random messages each, reconnecting
/// whenever the daemon ends a session; in between, junk written into guest RAM (where the rings
/// are) and both queues kicked.
pub fn random_well_framed_messages(env: &mut Env) {
    let kick = EventFd::new(0).unwrap();
    let call = EventFd::new(0).unwrap();
    let (mut answered, mut dropped_sessions) = (0, 0);
    // More seeds for a longer hunt: HOSTILE_VMM_SEEDS=<n> adds n of them.
    let extra: u64 = std::env::var("HOSTILE_VMM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let seeds = [1u64, 0x5eed, 0xdead_beef, 0x1234_5678_9abc]
        .into_iter()
        .chain((0..extra).map(|i| 0x1000 + i));
    for seed in seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut s = session(env, &kick, &call);
        for i in 0..1500 {
            let what = format!("seed {seed:#x}, message {i}");
            for _ in 0..rng.below(4) {
                let len = 2 + rng.below(64);
                let junk: Vec<u8> = (0..len).map(|_| rng.value() as u8).collect();
                let _ = s.ram.write_at(&junk, rng.ram_offset(len));
            }
            let _ = kick.write(1);
            let (c, body, with_fd) = message(&mut rng);
            let f = if c == code::SET_VRING_CALL {
                fd(&call)
            } else if c == code::SET_VRING_KICK {
                fd(&kick)
            } else {
                fd(&s.ram)
            };
            let fds = if with_fd { vec![f] } else { vec![] };
            let gone = s.r.send(c, raw::VERSION | NEED_REPLY, &body, &fds).is_err()
                || match s.r.recv(QUIET) {
                    Reply::Msg { .. } => false,
                    Reply::Closed => true,
                    Reply::Silent => !matches!(super::framing::barrier(&s.r), Reply::Msg { .. }),
                };
            if let Some(st) = env.daemon.try_wait() {
                panic!(
                    "{what} (code {c}): the daemon died ({st})\n{}",
                    env.daemon.stderr()
                );
            }
            if gone {
                dropped_sessions += 1;
                drop(s);
                // The daemon must be done with it (a wedged connection fails here, in time).
                env.settle();
                s = session(env, &kick, &call);
            } else {
                answered += 1;
            }
        }
    }
    eprintln!(
        "{} random messages: {answered} answered, {dropped_sessions} sessions ended by the daemon",
        answered + dropped_sessions
    );
}
