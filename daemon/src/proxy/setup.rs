//! What the VMM has set up on its connection (features, memory table, vrings with their
//! eventfds), recorded from the messages the proxy forwards, and replayed into a restarted
//! daemon so that it carries on where the previous process stopped.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;

use super::wire::{self, Msg, WireError};

/// Highest vring index recorded (the daemon serves two; anything above is refused by it).
const MAX_VRINGS: u32 = 64;
/// VHOST_USER_F_PROTOCOL_FEATURES.
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// SET_VRING_KICK / CALL / ERR: the payload's "no file descriptor" bit.
const VRING_NOFD: u64 = 1 << 8;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("the daemon closed the connection during the replay")]
    Closed,
    #[error("the daemon does not offer features {missing:#x} the driver negotiated (it offers {offered:#x})")]
    Features { missing: u64, offered: u64 },
    #[error("the daemon does not offer protocol features {missing:#x} the VMM negotiated (it offers {offered:#x})")]
    ProtocolFeatures { missing: u64, offered: u64 },
    #[error("the daemon refused message {request} of the replay (status {status})")]
    Refused { request: u32, status: u64 },
    #[error("the daemon answered message {request} with message {got}")]
    Reply { request: u32, got: u32 },
    #[error("vring {index}: the used ring at {addr:#x} is in no region of the memory table")]
    UsedRing { index: u32, addr: u64 },
    #[error("vring {index}: cannot read the used index from guest memory: {err}")]
    GuestMemory { index: u32, err: io::Error },
    #[error("cannot duplicate a recorded file descriptor: {0}")]
    Dup(io::Error),
}

/// One vring's set-up messages, the latest of each.
#[derive(Debug, Default)]
struct Vring {
    num: Option<Msg>,
    addr: Option<Msg>,
    base: Option<Msg>,
    call: Option<Msg>,
    err: Option<Msg>,
    enable: Option<Msg>,
    /// SET_VRING_KICK since the last GET_VRING_BASE: the ring runs.
    kick: Option<Msg>,
}

/// The connection's set-up as the VMM made it.
#[derive(Debug, Default)]
pub struct Setup {
    protocol: Option<u64>,
    owner: bool,
    features: Option<u64>,
    mem: Option<Msg>,
    vrings: BTreeMap<u32, Vring>,
}

/// The vring index a vring message names.
fn vring_index(m: &Msg) -> Option<u32> {
    let i = match m.request {
        wire::SET_VRING_KICK | wire::SET_VRING_CALL | wire::SET_VRING_ERR => {
            (m.u64_at(0)? & 0xff) as u32
        }
        _ => m.u32_at(0)?,
    };
    (i < MAX_VRINGS).then_some(i)
}

impl Setup {
    pub fn reply_ack(&self) -> bool {
        self.protocol.unwrap_or(0) & wire::PROTOCOL_F_REPLY_ACK != 0
    }

    /// Does the VMM wait for an answer to `m`?
    pub fn expects_reply(&self, m: &Msg) -> bool {
        matches!(
            m.request,
            wire::GET_FEATURES
                | wire::GET_PROTOCOL_FEATURES
                | wire::GET_VRING_BASE
                | wire::GET_QUEUE_NUM
                | wire::GET_CONFIG
                | wire::GET_INFLIGHT_FD
                | wire::GET_MAX_MEM_SLOTS
                | wire::GET_STATUS
                | wire::SET_DEVICE_STATE_FD
                | wire::CHECK_DEVICE_STATE
        ) || (m.flags & wire::F_NEED_REPLY != 0 && self.reply_ack())
    }

    /// Record a message from the VMM before it goes to the daemon.
    pub fn record(&mut self, m: &Msg) -> io::Result<()> {
        let keep = || m.try_clone().map(Some);
        match m.request {
            wire::SET_PROTOCOL_FEATURES => self.protocol = m.u64_at(0),
            wire::SET_OWNER => self.owner = true,
            wire::RESET_OWNER => *self = Setup::default(),
            wire::SET_FEATURES => self.features = m.u64_at(0),
            wire::SET_MEM_TABLE => self.mem = keep()?,
            wire::RESET_DEVICE => {
                self.features = None;
                self.vrings.clear();
            }
            wire::SET_VRING_NUM
            | wire::SET_VRING_ADDR
            | wire::SET_VRING_BASE
            | wire::SET_VRING_KICK
            | wire::SET_VRING_CALL
            | wire::SET_VRING_ERR
            | wire::SET_VRING_ENABLE => {
                let Some(i) = vring_index(m) else {
                    return Ok(());
                };
                let v = self.vrings.entry(i).or_default();
                let slot = match m.request {
                    wire::SET_VRING_NUM => &mut v.num,
                    wire::SET_VRING_ADDR => &mut v.addr,
                    wire::SET_VRING_BASE => &mut v.base,
                    wire::SET_VRING_KICK => &mut v.kick,
                    wire::SET_VRING_CALL => &mut v.call,
                    wire::SET_VRING_ERR => &mut v.err,
                    _ => &mut v.enable,
                };
                *slot = keep()?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The daemon answered `request`: a stopped vring (GET_VRING_BASE) no longer runs; the
    /// VMM sets it up again before it restarts it.
    pub fn completed(&mut self, request: &Msg) {
        if request.request == wire::GET_VRING_BASE {
            if let Some(v) = vring_index(request).and_then(|i| self.vrings.get_mut(&i)) {
                v.kick = None;
            }
        }
    }

    /// The used index of a running vring, read from guest memory through the memory table's
    /// file: where the restarted daemon's vring starts (what the previous process published;
    /// the chains it took but did not publish come again, and its journal recognises them).
    fn used_index(&self, index: u32, addr: &Msg) -> Result<u16, ReplayError> {
        // struct vhost_vring_addr: index, flags, desc, used, avail, log.
        let used = addr.u64_at(16).unwrap_or(0);
        let bad = ReplayError::UsedRing { index, addr: used };
        let Some(mem) = &self.mem else {
            return Err(bad);
        };
        let n = mem.u32_at(0).unwrap_or(0) as usize;
        for r in 0..n.min(mem.fds.len()) {
            let at = 8 + 32 * r;
            let (Some(size), Some(uaddr), Some(offset)) =
                (mem.u64_at(at + 8), mem.u64_at(at + 16), mem.u64_at(at + 24))
            else {
                break;
            };
            let Some(rel) = used
                .checked_sub(uaddr)
                .filter(|&d| d.saturating_add(4) <= size)
            else {
                continue;
            };
            let file = std::fs::File::from(mem.fds[r].try_clone().map_err(ReplayError::Dup)?);
            let mut idx = [0u8; 2];
            file.read_exact_at(&mut idx, offset + rel + 2)
                .map_err(|err| ReplayError::GuestMemory { index, err })?;
            return Ok(u16::from_le_bytes(idx));
        }
        Err(bad)
    }

    /// Replay the set-up into a freshly connected daemon: the same features (refused if the
    /// daemon no longer offers them), memory table and vrings; a running vring restarts at its
    /// used index, and its kick eventfd is signalled so the daemon looks at the queue at once.
    pub fn replay(&self, d: &UnixStream) -> Result<(), ReplayError> {
        let offered = ask(d, wire::GET_FEATURES)?;
        if let Some(f) = self.features {
            let missing = f & !offered;
            if missing != 0 {
                return Err(ReplayError::Features { missing, offered });
            }
        }
        if let Some(p) = self.protocol {
            if offered & F_PROTOCOL_FEATURES != 0 {
                let offered = ask(d, wire::GET_PROTOCOL_FEATURES)?;
                let missing = p & !offered;
                if missing != 0 {
                    return Err(ReplayError::ProtocolFeatures { missing, offered });
                }
            }
            let m = Msg::new(wire::SET_PROTOCOL_FEATURES, 0, p.to_le_bytes().to_vec());
            wire::write_msg(d, &m).map_err(WireError::Io)?;
        }
        let ack = self.reply_ack();
        if self.owner {
            tell(d, Msg::new(wire::SET_OWNER, 0, Vec::new()), ack)?;
        }
        if let Some(f) = self.features {
            tell(
                d,
                Msg::new(wire::SET_FEATURES, 0, f.to_le_bytes().to_vec()),
                ack,
            )?;
        }
        if let Some(m) = &self.mem {
            tell(d, dup(m)?, ack)?;
        }
        for (&index, v) in &self.vrings {
            if let Some(m) = &v.num {
                tell(d, dup(m)?, ack)?;
            }
            match (&v.kick, &v.addr) {
                (Some(_), Some(addr)) => {
                    let base = self.used_index(index, addr)?;
                    let mut p = index.to_le_bytes().to_vec();
                    p.extend_from_slice(&u32::from(base).to_le_bytes());
                    tell(d, Msg::new(wire::SET_VRING_BASE, 0, p), ack)?;
                    log::info!("vring {index}: restarts at used index {base}");
                }
                _ => {
                    if let Some(m) = &v.base {
                        tell(d, dup(m)?, ack)?;
                    }
                }
            }
            for m in [&v.addr, &v.call, &v.err, &v.enable, &v.kick]
                .into_iter()
                .flatten()
            {
                tell(d, dup(m)?, ack)?;
            }
            if let Some(kick) = &v.kick {
                if kick.u64_at(0).unwrap_or(0) & VRING_NOFD == 0 {
                    if let Some(fd) = kick.fds.first() {
                        let mut f = std::fs::File::from(fd.try_clone().map_err(ReplayError::Dup)?);
                        // An eventfd adds the 8-byte value to its counter.
                        if let Err(e) = std::io::Write::write_all(&mut f, &1u64.to_ne_bytes()) {
                            log::warn!("vring {index}: cannot signal the kick eventfd: {e}");
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn dup(m: &Msg) -> Result<Msg, ReplayError> {
    m.try_clone().map_err(ReplayError::Dup)
}

/// The daemon's answer to `m`.
fn answer(d: &UnixStream, request: u32) -> Result<Msg, ReplayError> {
    let r = wire::read_msg(d)?.ok_or(ReplayError::Closed)?;
    if r.request != request || r.flags & wire::F_REPLY == 0 {
        return Err(ReplayError::Reply {
            request,
            got: r.request,
        });
    }
    Ok(r)
}

/// A GET request answered with a u64.
fn ask(d: &UnixStream, request: u32) -> Result<u64, ReplayError> {
    wire::write_msg(d, &Msg::new(request, 0, Vec::new())).map_err(WireError::Io)?;
    let r = answer(d, request)?;
    r.u64_at(0).ok_or(ReplayError::Reply {
        request,
        got: r.request,
    })
}

/// A SET request; with REPLY_ACK the daemon's status is checked.
fn tell(d: &UnixStream, mut m: Msg, ack: bool) -> Result<(), ReplayError> {
    let request = m.request;
    if ack {
        m.flags |= wire::F_NEED_REPLY;
    }
    wire::write_msg(d, &m).map_err(WireError::Io)?;
    if ack {
        let status = answer(d, request)?.u64_at(0).unwrap_or(u64::MAX);
        if status != 0 {
            return Err(ReplayError::Refused { request, status });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    /// A daemon stand-in on the other end of `d`: answers GET_FEATURES with `features`,
    /// GET_PROTOCOL_FEATURES with `protocol`, acks everything else; returns what it received.
    fn fake_daemon(
        d: UnixStream,
        features: u64,
        protocol: u64,
    ) -> std::thread::JoinHandle<Vec<u32>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok(Some(m)) = wire::read_msg(&d) {
                got.push(m.request);
                let value = match m.request {
                    wire::GET_FEATURES => Some(features),
                    wire::GET_PROTOCOL_FEATURES => Some(protocol),
                    _ if m.flags & wire::F_NEED_REPLY != 0 => Some(0),
                    _ => None,
                };
                if let Some(v) = value {
                    let r = Msg::new(m.request, wire::F_REPLY, v.to_le_bytes().to_vec());
                    if wire::write_msg(&d, &r).is_err() {
                        break;
                    }
                }
            }
            got
        })
    }

    fn msg(request: u32, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Msg {
        let mut m = Msg::new(request, 0, payload);
        m.fds = fds;
        m
    }

    /// A memfd of `size` bytes standing in for guest RAM.
    fn guest_ram(size: u64) -> OwnedFd {
        let f = vmm_sys_util::tempfile::TempFile::new()
            .expect("temp file")
            .into_file();
        f.set_len(size).expect("size");
        OwnedFd::from(f)
    }

    /// A set-up with one running vring whose used ring is at QEMU address 0x7000_1000 (guest
    /// RAM mapped at 0x7000_0000, file offset 0), used index `used` written there.
    fn running_setup(used: u16) -> Setup {
        let mut s = Setup::default();
        s.record(&msg(
            wire::SET_PROTOCOL_FEATURES,
            wire::PROTOCOL_F_REPLY_ACK.to_le_bytes().to_vec(),
            vec![],
        ))
        .expect("record");
        s.record(&msg(wire::SET_OWNER, vec![], vec![]))
            .expect("record");
        s.record(&msg(
            wire::SET_FEATURES,
            ((1u64 << 32) | F_PROTOCOL_FEATURES).to_le_bytes().to_vec(),
            vec![],
        ))
        .expect("record");
        let ram = guest_ram(0x10000);
        let f = std::fs::File::from(ram.try_clone().expect("dup"));
        f.write_all_at(&used.to_le_bytes(), 0x1000 + 2)
            .expect("used index");
        let mut table = Vec::new();
        table.extend_from_slice(&1u32.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
        for v in [0u64, 0x10000, 0x7000_0000, 0] {
            table.extend_from_slice(&v.to_le_bytes());
        }
        s.record(&msg(wire::SET_MEM_TABLE, table, vec![ram]))
            .expect("record");
        let mut addr = Vec::new();
        addr.extend_from_slice(&0u32.to_le_bytes());
        addr.extend_from_slice(&0u32.to_le_bytes());
        for v in [0x7000_2000u64, 0x7000_1000, 0x7000_3000, 0] {
            addr.extend_from_slice(&v.to_le_bytes());
        }
        s.record(&msg(wire::SET_VRING_ADDR, addr, vec![]))
            .expect("record");
        // SAFETY: eventfd(2) returns a new descriptor nothing else owns (checked below).
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(raw >= 0, "eventfd");
        // SAFETY: `raw` is the valid descriptor just created.
        let kick = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        s.record(&msg(
            wire::SET_VRING_KICK,
            0u64.to_le_bytes().to_vec(),
            vec![kick],
        ))
        .expect("record");
        s
    }

    #[test]
    fn a_running_vring_restarts_at_the_used_index_in_guest_memory() {
        let s = running_setup(0x1234);
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let daemon = fake_daemon(theirs, u64::MAX, u64::MAX);
        s.replay(&ours).expect("replayed");
        drop(ours);
        let got = daemon.join().expect("fake daemon");
        assert_eq!(
            got,
            vec![
                wire::GET_FEATURES,
                wire::GET_PROTOCOL_FEATURES,
                wire::SET_PROTOCOL_FEATURES,
                wire::SET_OWNER,
                wire::SET_FEATURES,
                wire::SET_MEM_TABLE,
                wire::SET_VRING_BASE,
                wire::SET_VRING_ADDR,
                wire::SET_VRING_KICK,
            ]
        );
        assert_eq!(
            s.used_index(0, s.vrings[&0].addr.as_ref().expect("addr"))
                .ok(),
            Some(0x1234)
        );
    }

    /// An upgrade to a daemon that lost a feature the driver negotiated is refused before
    /// anything is set up (the proxy disconnects it; the device never runs half set up).
    #[test]
    fn a_daemon_without_a_negotiated_feature_is_refused() {
        let s = running_setup(1);
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let daemon = fake_daemon(theirs, F_PROTOCOL_FEATURES, u64::MAX);
        let e = s.replay(&ours).expect_err("refused");
        assert!(
            matches!(e, ReplayError::Features { missing, .. } if missing == 1 << 32),
            "{e}"
        );
        drop(ours);
        assert_eq!(
            daemon.join().expect("fake daemon"),
            vec![wire::GET_FEATURES]
        );
    }

    /// A running vring whose used ring lies outside the recorded memory table cannot be
    /// restarted: refused, never started at a made-up index.
    #[test]
    fn a_used_ring_outside_the_memory_table_is_refused() {
        let mut s = running_setup(1);
        s.mem = None;
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let daemon = fake_daemon(theirs, u64::MAX, u64::MAX);
        let e = s.replay(&ours).expect_err("refused");
        assert!(matches!(e, ReplayError::UsedRing { index: 0, .. }), "{e}");
        drop(ours);
        assert!(!daemon
            .join()
            .expect("fake daemon")
            .contains(&wire::SET_VRING_KICK));
    }

    /// A stopped vring (GET_VRING_BASE answered) is not started again by the replay.
    #[test]
    fn a_stopped_vring_is_not_started_again() {
        let mut s = running_setup(1);
        let stop = msg(
            wire::GET_VRING_BASE,
            [0u32.to_le_bytes(), 0u32.to_le_bytes()].concat(),
            vec![],
        );
        s.record(&stop).expect("record");
        s.completed(&stop);
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let daemon = fake_daemon(theirs, u64::MAX, u64::MAX);
        s.replay(&ours).expect("replayed");
        drop(ours);
        assert!(!daemon
            .join()
            .expect("fake daemon")
            .contains(&wire::SET_VRING_KICK));
    }
}
