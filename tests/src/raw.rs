//! Raw vhost-user messages, for a hostile frontend: any header, any payload, any number of file
//! descriptors (SCM_RIGHTS), on a socket that may also carry a well-behaved
//! `vhost::vhost_user::Frontend` (or a whole [`Device`]) for the parts of a session that are
//! not under attack.
//!
//! A message is a 12-byte header (`u32 request`, `u32 flags`: version 1 in bits 0-1, REPLY in
//! bit 2, NEED_REPLY in bit 3; `u32 size`) and `size` bytes of payload (vhost-user spec,
//! "Message Specification"). Layouts of the payloads used here are written out by hand in
//! [`payload`], independently of the `vhost` crate's.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;

use crate::device::{Device, Options};
use crate::proto::feature;

/// Request codes (vhost-user spec, "Front-end message types").
pub mod code {
    /// GET_FEATURES.
    pub const GET_FEATURES: u32 = 1;
    /// SET_FEATURES.
    pub const SET_FEATURES: u32 = 2;
    /// SET_OWNER.
    pub const SET_OWNER: u32 = 3;
    /// RESET_OWNER.
    pub const RESET_OWNER: u32 = 4;
    /// SET_MEM_TABLE.
    pub const SET_MEM_TABLE: u32 = 5;
    /// SET_LOG_BASE.
    pub const SET_LOG_BASE: u32 = 6;
    /// SET_VRING_NUM.
    pub const SET_VRING_NUM: u32 = 8;
    /// SET_VRING_ADDR.
    pub const SET_VRING_ADDR: u32 = 9;
    /// SET_VRING_BASE.
    pub const SET_VRING_BASE: u32 = 10;
    /// GET_VRING_BASE.
    pub const GET_VRING_BASE: u32 = 11;
    /// SET_VRING_KICK.
    pub const SET_VRING_KICK: u32 = 12;
    /// SET_VRING_CALL.
    pub const SET_VRING_CALL: u32 = 13;
    /// SET_VRING_ERR.
    pub const SET_VRING_ERR: u32 = 14;
    /// GET_PROTOCOL_FEATURES.
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    /// SET_PROTOCOL_FEATURES.
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    /// SET_VRING_ENABLE.
    pub const SET_VRING_ENABLE: u32 = 18;
    /// SEND_RARP (a net-device message).
    pub const SEND_RARP: u32 = 19;
    /// SET_BACKEND_REQ_FD.
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    /// IOTLB_MSG.
    pub const IOTLB_MSG: u32 = 22;
    /// GET_CONFIG.
    pub const GET_CONFIG: u32 = 24;
    /// SET_CONFIG.
    pub const SET_CONFIG: u32 = 25;
    /// GET_INFLIGHT_FD.
    pub const GET_INFLIGHT_FD: u32 = 31;
    /// SET_INFLIGHT_FD.
    pub const SET_INFLIGHT_FD: u32 = 32;
    /// GPU_SET_SOCKET (a message of GPU devices).
    pub const GPU_SET_SOCKET: u32 = 33;
    /// RESET_DEVICE.
    pub const RESET_DEVICE: u32 = 34;
    /// ADD_MEM_REG.
    pub const ADD_MEM_REG: u32 = 37;
    /// REM_MEM_REG.
    pub const REM_MEM_REG: u32 = 38;
    /// SET_DEVICE_STATE_FD.
    pub const SET_DEVICE_STATE_FD: u32 = 42;
    /// CHECK_DEVICE_STATE.
    pub const CHECK_DEVICE_STATE: u32 = 43;
}

/// Header flags: version 1.
pub const VERSION: u32 = 0x1;
/// Header flags: this is a reply.
pub const REPLY: u32 = 0x4;
/// Header flags: the sender wants an ack (REPLY_ACK).
pub const NEED_REPLY: u32 = 0x8;
/// Largest payload the backend accepts.
pub const MAX_MSG_SIZE: usize = 0x1000;
/// Protocol feature CONFIGURE_MEM_SLOTS (ADD_MEM_REG / REM_MEM_REG).
pub const PROTOCOL_CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
/// Protocol feature LOG_SHMFD (SET_LOG_BASE).
pub const PROTOCOL_LOG_SHMFD: u64 = 1 << 1;
/// Protocol feature BACKEND_REQ (SET_BACKEND_REQ_FD).
pub const PROTOCOL_BACKEND_REQ: u64 = 1 << 5;
/// Protocol feature INFLIGHT_SHMFD (GET_INFLIGHT_FD).
pub const PROTOCOL_INFLIGHT_SHMFD: u64 = 1 << 12;
/// The protocol features a normal session acks: CONFIG, REPLY_ACK, RESET_DEVICE.
pub const PROTOCOL_NORMAL: u64 = (1 << 9) | (1 << 3) | (1 << 13);

/// Payload encoders.
pub mod payload {
    /// A little-endian u64 (SET_FEATURES, SET_VRING_KICK/CALL, ...).
    pub fn u64(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    /// `{u32 index, u32 num}` (SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE).
    pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&num.to_le_bytes());
        b
    }

    /// `{u32 index, u32 flags, u64 desc, u64 used, u64 avail, u64 log}` (SET_VRING_ADDR),
    /// addresses in the frontend's virtual address space.
    pub fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [desc, used, avail, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// `{u32 offset, u32 size, u32 flags}` + `data` (GET_CONFIG, SET_CONFIG).
    pub fn config(offset: u32, size: u32, data: &[u8]) -> Vec<u8> {
        let mut b = offset.to_le_bytes().to_vec();
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(data);
        b
    }
}

/// One memory region as SET_MEM_TABLE / ADD_MEM_REG carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Guest-physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// The frontend's virtual address (what SET_VRING_ADDR refers to).
    pub user_addr: u64,
    /// Offset of the region in its file.
    pub offset: u64,
}

impl Region {
    /// A region at `gpa` of `size` bytes, at offset 0 of its file, seen by the frontend at
    /// `user_addr`.
    pub fn new(gpa: u64, size: u64, user_addr: u64) -> Region {
        Region {
            gpa,
            size,
            user_addr,
            offset: 0,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        [self.gpa, self.size, self.user_addr, self.offset]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// The frontend's virtual address of `gpa` inside this region.
    pub fn va(&self, gpa: u64) -> u64 {
        self.user_addr + (gpa - self.gpa)
    }
}

/// The SET_MEM_TABLE payload: `{u32 num_regions, u32 padding}` + the regions. `num_regions`
/// is taken from `regions` unless `num` overrides it.
pub fn mem_table(regions: &[Region], num: Option<u32>) -> Vec<u8> {
    let n = num.unwrap_or(u32::try_from(regions.len()).unwrap_or(u32::MAX));
    let mut b = n.to_le_bytes().to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    for r in regions {
        b.extend_from_slice(&r.bytes());
    }
    b
}

/// The ADD_MEM_REG / REM_MEM_REG payload: `{u64 padding}` + one region.
pub fn single_region(r: &Region) -> Vec<u8> {
    let mut b = 0u64.to_le_bytes().to_vec();
    b.extend_from_slice(&r.bytes());
    b
}

/// A message: header + payload, the header's size field saying `size` (the payload length
/// unless a test lies about it).
pub fn message(code: u32, flags: u32, size: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = code.to_le_bytes().to_vec();
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// A memfd of `size` bytes with `seals` (F_SEAL_*) added; 0 = no seals.
pub fn memfd(size: u64, seals: libc::c_int) -> io::Result<File> {
    let name = c"vui-hostile-vmm";
    // SAFETY: a valid NUL-terminated name; no other inputs.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size)?;
    if seals != 0 {
        // SAFETY: F_ADD_SEALS on our own memfd; no memory is passed.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(f)
}

/// A memfd sealed against shrinking and growing, as guest RAM should be.
pub fn sealed_memfd(size: u64) -> io::Result<File> {
    memfd(size, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)
}

/// A pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Send `bytes` as one `sendmsg` with `fds` attached (any number, SCM_RIGHTS).
pub fn send_fds(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut data = bytes.to_vec();
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; fields set below.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    let fd_bytes =
        u32::try_from(std::mem::size_of_val(fds)).map_err(|_| io::Error::other("too many fds"))?;
    // SAFETY: CMSG_SPACE is arithmetic on a length.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    if !fds.is_empty() {
        m.msg_control = cbuf.as_mut_ptr().cast();
        m.msg_controllen = space as _;
        // SAFETY: `cbuf` holds CMSG_SPACE(fd_bytes) bytes, room for the header and every fd;
        // CMSG_FIRSTHDR points at its start.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
    }
    // SAFETY: `m` describes live buffers (`data`, `cbuf`).
    let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &m, libc::MSG_NOSIGNAL) };
    if usize::try_from(sent).ok() != Some(data.len()) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What came back on the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A message.
    Msg {
        /// Request code it answers.
        code: u32,
        /// Header flags.
        flags: u32,
        /// Payload.
        payload: Vec<u8>,
    },
    /// The daemon closed the connection (end of file or reset).
    Closed,
    /// Nothing within the timeout.
    Silent,
}

impl Reply {
    /// The u64 of a REPLY_ACK or u64 reply.
    pub fn value(&self) -> Option<u64> {
        match self {
            Reply::Msg { payload, .. } if payload.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(payload);
                Some(u64::from_le_bytes(b))
            }
            _ => None,
        }
    }
}

/// How long to wait for a reply that should come.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the daemon's vhost-user socket driven by hand, optionally with a
/// well-behaved frontend (or a whole device) on the same socket.
pub struct Raw {
    /// The socket.
    pub sock: UnixStream,
    /// A `vhost` frontend on a clone of the socket, once negotiated.
    pub fe: Option<Frontend>,
    /// A complete device (memory, both rings) on a clone of the socket.
    pub dev: Option<Device>,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raw")
            .field("sock", &self.sock)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

fn err<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> io::Error {
    move |e| io::Error::other(format!("{what}: {e:?}"))
}

impl Raw {
    /// Connect and say nothing yet.
    pub fn connect(socket: &Path) -> io::Result<Raw> {
        let sock = UnixStream::connect(socket)?;
        Ok(Raw {
            sock,
            fe: None,
            dev: None,
        })
    }

    /// Connect and negotiate as a driver would (SET_OWNER, features without EVENT_IDX,
    /// protocol features CONFIG, REPLY_ACK and RESET_DEVICE), with no memory table or rings.
    pub fn negotiated(socket: &Path) -> io::Result<Raw> {
        let mut raw = Raw::connect(socket)?;
        let mut fe = Frontend::from_stream(raw.sock.try_clone()?, 2);
        fe.set_owner().map_err(err("SET_OWNER"))?;
        let offered = fe.get_features().map_err(err("GET_FEATURES"))?;
        fe.set_features(offered & (feature::MODERN | feature::PROTOCOL_FEATURES))
            .map_err(err("SET_FEATURES"))?;
        let proto = fe
            .get_protocol_features()
            .map_err(err("GET_PROTOCOL_FEATURES"))?;
        let want = VhostUserProtocolFeatures::from_bits_truncate(PROTOCOL_NORMAL);
        fe.set_protocol_features(proto & want)
            .map_err(err("SET_PROTOCOL_FEATURES"))?;
        fe.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
        raw.fe = Some(fe);
        Ok(raw)
    }

    /// Connect and bring a whole device up (negotiation, memory, both rings enabled), with
    /// the raw socket beside it.
    pub fn ready(socket: &Path, opts: &Options) -> io::Result<Raw> {
        let mut raw = Raw::connect(socket)?;
        let fe = Frontend::from_stream(raw.sock.try_clone()?, 2);
        raw.dev = Some(Device::setup(fe, opts).map_err(io::Error::other)?);
        Ok(raw)
    }

    /// The device of a [`Raw::ready`] session.
    pub fn dev(&mut self) -> &mut Device {
        self.dev.as_mut().expect("a ready session has a device")
    }

    /// Send raw bytes with `fds`.
    pub fn send_bytes(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        send_fds(&self.sock, bytes, fds)
    }

    /// Send a well-framed message (`size` = payload length) with `flags` and `fds`.
    pub fn send(&self, code: u32, flags: u32, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let size = u32::try_from(payload.len()).map_err(io::Error::other)?;
        self.send_bytes(&message(code, flags, size, payload), fds)
    }

    /// Read one message (bounded by `timeout`).
    pub fn recv(&self, timeout: Duration) -> Reply {
        if self.sock.set_read_timeout(Some(timeout)).is_err() {
            return Reply::Closed;
        }
        let mut s = &self.sock;
        let mut hdr = [0u8; 12];
        match read_full(&mut s, &mut hdr) {
            Ok(true) => {}
            Ok(false) => return Reply::Closed,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Reply::Silent
            }
            Err(_) => return Reply::Closed,
        }
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (code, flags, size) = (word(0), word(4), word(8));
        let mut payload = vec![0u8; size as usize];
        match read_full(&mut s, &mut payload) {
            Ok(true) => Reply::Msg {
                code,
                flags,
                payload,
            },
            _ => Reply::Closed,
        }
    }

    /// Send with NEED_REPLY and read what comes back.
    pub fn request(&self, code: u32, payload: &[u8], fds: &[RawFd]) -> Reply {
        if self.send(code, VERSION | NEED_REPLY, payload, fds).is_err() {
            return Reply::Closed;
        }
        self.recv(REPLY_TIMEOUT)
    }

    /// Wait (bounded) until the daemon closes this connection; true if it did. Anything it
    /// still sends before (a refusal's ack) is skipped.
    pub fn closed_by_daemon(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.recv(left) {
                Reply::Closed => return true,
                Reply::Silent => return false,
                Reply::Msg { .. } => {}
            }
        }
    }

    /// A GET_FEATURES round trip on this connection: Some(features) if the daemon still
    /// talks on it.
    pub fn alive(&self) -> Option<u64> {
        self.send(code::GET_FEATURES, VERSION, &[], &[]).ok()?;
        match self.recv(REPLY_TIMEOUT) {
            r @ Reply::Msg {
                code: code::GET_FEATURES,
                ..
            } => r.value(),
            _ => None,
        }
    }
}

/// Read exactly `buf.len()` bytes: Ok(false) on end of file before the first byte or after.
fn read_full(s: &mut &UnixStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Number of open file descriptors of process `pid` (/proc/PID/fd).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
