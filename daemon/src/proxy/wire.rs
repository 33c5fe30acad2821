//! vhost-user messages as the proxy moves them: a 12-byte header (request, flags, payload
//! size), the payload, and the file descriptors that came with it. The proxy reads each
//! message whole before it forwards it, so a daemon that dies never leaves half a message
//! on the VMM's connection.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Largest payload the proxy accepts (SET_MEM_TABLE with 8 regions is 264 bytes, a config
/// space 268).
pub const MAX_PAYLOAD: usize = 4096;
/// Most descriptors one message carries (the memory table's regions).
pub const MAX_FDS: usize = 32;

pub const F_VERSION: u32 = 0x1;
pub const F_REPLY: u32 = 0x4;
pub const F_NEED_REPLY: u32 = 0x8;

// Frontend requests (vhost-user specification, "Front-end message types").
pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const RESET_OWNER: u32 = 4;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const SET_VRING_ERR: u32 = 14;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const GET_QUEUE_NUM: u32 = 17;
pub const SET_VRING_ENABLE: u32 = 18;
pub const GET_CONFIG: u32 = 24;
pub const GET_INFLIGHT_FD: u32 = 31;
pub const RESET_DEVICE: u32 = 34;
pub const GET_MAX_MEM_SLOTS: u32 = 36;
pub const GET_STATUS: u32 = 40;
pub const SET_DEVICE_STATE_FD: u32 = 42;
pub const CHECK_DEVICE_STATE: u32 = 43;

/// VHOST_USER_PROTOCOL_F_REPLY_ACK.
pub const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed in the middle of a message")]
    Partial,
    #[error("message {request}: payload of {size} bytes (at most {MAX_PAYLOAD})")]
    TooBig { request: u32, size: usize },
    #[error("message {request}: header flags {flags:#x} (version 1 expected)")]
    Version { request: u32, flags: u32 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One vhost-user message with its descriptors (owned: closed when the message goes).
#[derive(Debug)]
pub struct Msg {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Msg {
    pub fn new(request: u32, flags: u32, payload: Vec<u8>) -> Msg {
        Msg {
            request,
            flags: flags | F_VERSION,
            payload,
            fds: Vec::new(),
        }
    }

    /// A copy sharing the same open files (the descriptors are duplicated).
    pub fn try_clone(&self) -> io::Result<Msg> {
        Ok(Msg {
            request: self.request,
            flags: self.flags,
            payload: self.payload.clone(),
            fds: self
                .fds
                .iter()
                .map(|f| f.try_clone())
                .collect::<io::Result<_>>()?,
        })
    }

    /// The first little-endian u64 of the payload (features, vring state, vring fd index).
    pub fn u64_at(&self, off: usize) -> Option<u64> {
        let b = self.payload.get(off..off + 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }

    pub fn u32_at(&self, off: usize) -> Option<u32> {
        let b = self.payload.get(off..off + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn header(&self) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0..4].copy_from_slice(&self.request.to_le_bytes());
        h[4..8].copy_from_slice(&self.flags.to_le_bytes());
        h[8..12].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
        h
    }
}

/// Read one whole message. `Ok(None)`: the peer closed the connection between messages.
pub fn read_msg(s: &UnixStream) -> Result<Option<Msg>, WireError> {
    let mut hdr = [0u8; 12];
    let mut raw = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: hdr.len(),
    }];
    // SAFETY: the iovec points into `hdr`, which outlives the call; any bytes may be written.
    let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }.map_err(io::Error::from)?;
    let fds: Vec<OwnedFd> = raw[..nfds.min(MAX_FDS)]
        .iter()
        // SAFETY: recvmsg just created these descriptors for us; nothing else owns them.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    let mut got = n;
    let mut reader = s;
    while got < hdr.len() {
        match reader.read(&mut hdr[got..])? {
            0 => return Err(WireError::Partial),
            k => got += k,
        }
    }
    let request = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if flags & 0x3 != F_VERSION {
        return Err(WireError::Version { request, flags });
    }
    if size > MAX_PAYLOAD {
        return Err(WireError::TooBig { request, size });
    }
    let mut payload = vec![0u8; size];
    reader.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WireError::Partial
        } else {
            WireError::Io(e)
        }
    })?;
    Ok(Some(Msg {
        request,
        flags,
        payload,
        fds,
    }))
}

/// Write one message, its descriptors with it (one sendmsg for the header and the payload).
pub fn write_msg(s: &UnixStream, m: &Msg) -> io::Result<()> {
    let hdr = m.header();
    let fds: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut whole = Vec::with_capacity(hdr.len() + m.payload.len());
    whole.extend_from_slice(&hdr);
    whole.extend_from_slice(&m.payload);
    let n = s
        .send_with_fds(&[&whole[..]], &fds)
        .map_err(io::Error::from)?;
    if n != whole.len() {
        // A unix stream takes a message this small whole, or fails.
        let mut w = s;
        std::io::Write::write_all(&mut w, &whole[n..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
        [request, flags, size]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    #[test]
    fn a_message_and_its_fds_go_through_whole() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (x, _y) = UnixStream::pair().expect("pair");
        let mut m = Msg::new(SET_VRING_KICK, 0, 0u64.to_le_bytes().to_vec());
        m.fds.push(OwnedFd::from(x));
        write_msg(&a, &m).expect("write");
        let got = read_msg(&b).expect("read").expect("a message");
        assert_eq!(
            (got.request, got.flags, got.payload.clone(), got.fds.len()),
            (SET_VRING_KICK, F_VERSION, m.payload.clone(), 1)
        );
        drop(a);
        assert!(matches!(read_msg(&b), Ok(None)), "EOF between messages");
    }

    /// What a hostile or broken VMM sends is refused with the reason, never forwarded.
    #[test]
    fn bad_headers_and_cut_messages_are_refused() {
        let cases: [(Vec<u8>, &str); 4] = [
            (
                header(GET_FEATURES, F_VERSION, 1 << 20),
                "payload of 1048576",
            ),
            (header(GET_FEATURES, 0x2, 0), "version 1 expected"),
            (
                [header(SET_FEATURES, F_VERSION, 8), vec![1, 2, 3]].concat(),
                "in the middle",
            ),
            (
                header(SET_FEATURES, F_VERSION, 8)[..7].to_vec(),
                "in the middle",
            ),
        ];
        for (bytes, want) in cases {
            let (mut a, b) = UnixStream::pair().expect("pair");
            a.write_all(&bytes).expect("write");
            drop(a);
            let e = read_msg(&b).expect_err("refused");
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
