//! File descriptors handed over by a launcher or VMM: the iommufd and VFIO device cdevs, so the
//! daemon and the VMM can share one iommufd (docs/IOMMUFD.md, "fd hand-over protocol").
//! The one implementation of the wire format: the daemon receives with [`receive`], launchers
//! (`vhost-user-iommu-glue launch`, the test tools) send with [`send`] or [`send_raw`].
//!
//! The launcher listens on a unix stream socket. The daemon connects once at start-up and
//! receives exactly one message: a JSON object on one line (at most 4096 bytes, ending in `\n`),
//! with the descriptors attached to its first byte as SCM_RIGHTS (at most 32):
//!
//! ```json
//! {"version":1,"iommufd":0,"devices":[{"endpoint":8,"fd":1}]}
//! ```
//!
//! `iommufd` (optional) and each `fd` are indexes into the descriptor array. Every descriptor
//! must be named exactly once. The daemon answers with one line, `{"ok":true}` or
//! `{"ok":false,"error":"..."}`, and closes the connection; on an error it exits.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Longest message line.
pub const MAX_MESSAGE: usize = 4096;
/// Most descriptors in one message.
pub const MAX_FDS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum FdPassError {
    #[error("cannot connect to the launcher socket {path}: {err}")]
    Connect { path: String, err: io::Error },
    #[error("launcher socket: {0}")]
    Io(#[from] io::Error),
    #[error("launcher closed the connection before a complete message")]
    Truncated,
    #[error("message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("bad message: {0}")]
    Json(String),
    #[error("unsupported protocol version {0} (this daemon speaks 1)")]
    Version(u32),
    #[error("descriptor index {0} out of range ({1} descriptors received)")]
    Index(usize, usize),
    #[error("descriptor {0} named twice")]
    Reused(usize),
    #[error("descriptor {0} received but not named in the message")]
    Unused(usize),
    #[error("endpoint {0} listed twice")]
    DuplicateEndpoint(u32),
    #[error("too many descriptors ({0}, at most {MAX_FDS})")]
    TooManyFds(usize),
    /// The daemon answered `{"ok":false}` (or something else than `{"ok":true}`).
    #[error("the daemon refused the hand-over: {0}")]
    Refused(String),
    /// The hand-over does not match the daemon's configuration.
    #[error("{0}")]
    Mismatch(String),
}

/// The message as sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommufd: Option<usize>,
    #[serde(default)]
    pub devices: Vec<DeviceFd>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFd {
    pub endpoint: u32,
    pub fd: usize,
}

/// What the daemon got.
#[derive(Debug, Default)]
pub struct Handover {
    pub iommufd: Option<OwnedFd>,
    /// VFIO device cdev fds by guest endpoint id.
    pub devices: BTreeMap<u32, OwnedFd>,
}

/// Check `msg` against the `fds` received and hand out each descriptor once.
pub fn assign(msg: &Message, fds: Vec<OwnedFd>) -> Result<Handover, FdPassError> {
    if msg.version != 1 {
        return Err(FdPassError::Version(msg.version));
    }
    let n = fds.len();
    let mut slots: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut take = |i: usize| -> Result<OwnedFd, FdPassError> {
        slots
            .get_mut(i)
            .ok_or(FdPassError::Index(i, n))?
            .take()
            .ok_or(FdPassError::Reused(i))
    };
    let mut out = Handover {
        iommufd: msg.iommufd.map(&mut take).transpose()?,
        devices: BTreeMap::new(),
    };
    for d in &msg.devices {
        let fd = take(d.fd)?;
        if out.devices.insert(d.endpoint, fd).is_some() {
            return Err(FdPassError::DuplicateEndpoint(d.endpoint));
        }
    }
    if let Some(i) = slots.iter().position(Option::is_some) {
        return Err(FdPassError::Unused(i));
    }
    Ok(out)
}

/// Receive one message and its descriptors from `sock`. Descriptors arrive close-on-exec.
pub fn recv_message(sock: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), FdPassError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    // Room for MAX_FDS descriptors (CMSG_SPACE of MAX_FDS ints), u64-aligned.
    let mut cbuf = [0u64; (MAX_FDS * 4 + 32) / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths); fields set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: `msg` points to live buffers (`buf`, `cbuf`) of the lengths it states.
    let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error().into());
    }
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, bounded by
    // msg_controllen; SCM_RIGHTS data is an array of ints, each a descriptor now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(FdPassError::TooManyFds(MAX_FDS + 1));
    }
    let mut have = r as usize;
    let mut rd = sock;
    while !buf[..have].contains(&b'\n') {
        if have == buf.len() {
            return Err(FdPassError::TooLong);
        }
        let n = rd.read(&mut buf[have..])?;
        if n == 0 {
            return Err(FdPassError::Truncated);
        }
        have += n;
    }
    let end = buf[..have].iter().position(|&b| b == b'\n').unwrap_or(have);
    buf.truncate(end);
    Ok((buf, fds))
}

/// The daemon's side: connect to `path`, receive the hand-over, check it against the
/// configuration with `check`, answer, close.
pub fn receive(
    path: &Path,
    check: impl FnOnce(&Handover) -> Result<(), String>,
) -> Result<Handover, FdPassError> {
    let sock = UnixStream::connect(path).map_err(|err| FdPassError::Connect {
        path: path.display().to_string(),
        err,
    })?;
    let result = recv_message(&sock).and_then(|(line, fds)| {
        let msg: Message =
            serde_json::from_slice(&line).map_err(|e| FdPassError::Json(e.to_string()))?;
        let h = assign(&msg, fds)?;
        check(&h).map_err(FdPassError::Mismatch)?;
        Ok(h)
    });
    let reply = match &result {
        Ok(_) => serde_json::json!({"ok": true}),
        Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
    };
    let mut w = &sock;
    // The launcher may already be gone; the hand-over itself is what matters.
    let _ = writeln!(w, "{reply}");
    result
}

/// Send `data` on `sock` with `fds` attached as SCM_RIGHTS (none: a plain message), all of
/// `data` or an error. No checks on the content: [`send`] is the protocol; this is also for
/// tests that send malformed messages.
pub fn send_raw(sock: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "too many descriptors ({}, at most {MAX_FDS})",
            fds.len()
        )));
    }
    let mut line = data.to_vec();
    let mut cbuf = [0u64; (MAX_FDS * 4 + 32) / 8];
    let mut iov = libc::iovec {
        iov_base: line.as_mut_ptr().cast(),
        iov_len: line.len(),
    };
    // SAFETY: an all-zero msghdr is valid; fields set below.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds);
        m.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic on a length (at most MAX_FDS ints, checked above).
        m.msg_controllen = unsafe { libc::CMSG_SPACE(data_len as u32) } as _;
        // SAFETY: the control buffer holds CMSG_SPACE(MAX_FDS ints) >= msg_controllen bytes;
        // the header and data written stay inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
    }
    // SAFETY: `m` points to live buffers of the lengths it states.
    let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &m, libc::MSG_NOSIGNAL) };
    let mut sent = usize::try_from(r).map_err(|_| io::Error::last_os_error())?;
    let mut w = sock;
    while sent < line.len() {
        sent += w.write(&line[sent..])?;
    }
    Ok(())
}

/// The launcher's side: send `msg` with `fds` on a connected socket and read the daemon's answer.
pub fn send(sock: &UnixStream, msg: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), FdPassError> {
    if fds.len() > MAX_FDS {
        return Err(FdPassError::TooManyFds(fds.len()));
    }
    let mut line = serde_json::to_vec(msg).map_err(|e| FdPassError::Json(e.to_string()))?;
    line.push(b'\n');
    if line.len() > MAX_MESSAGE {
        return Err(FdPassError::TooLong);
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    send_raw(sock, &line, &raw)?;
    let mut answer = String::new();
    let mut rd = io::BufReader::new(sock);
    io::BufRead::read_line(&mut rd, &mut answer)?;
    let v: serde_json::Value =
        serde_json::from_str(answer.trim()).map_err(|e| FdPassError::Json(e.to_string()))?;
    if v.get("ok") == Some(&serde_json::Value::Bool(true)) {
        return Ok(());
    }
    let why = v
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or(answer.trim());
    Err(FdPassError::Refused(why.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixListener;

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn assign_checks_indexes() {
        let msg = Message {
            version: 1,
            iommufd: Some(1),
            devices: vec![DeviceFd { endpoint: 8, fd: 0 }],
        };
        let h = assign(&msg, vec![devnull(), devnull()]).unwrap();
        assert!(h.iommufd.is_some());
        assert_eq!(h.devices.keys().copied().collect::<Vec<_>>(), vec![8]);

        let e = assign(&msg, vec![devnull()]).unwrap_err();
        assert!(matches!(e, FdPassError::Index(1, 1)), "{e}");
        let e = assign(&msg, vec![devnull(), devnull(), devnull()]).unwrap_err();
        assert!(matches!(e, FdPassError::Unused(2)), "{e}");
        let twice = Message {
            version: 1,
            iommufd: Some(0),
            devices: vec![DeviceFd { endpoint: 8, fd: 0 }],
        };
        let e = assign(&twice, vec![devnull()]).unwrap_err();
        assert!(matches!(e, FdPassError::Reused(0)), "{e}");
        let dup = Message {
            version: 1,
            iommufd: None,
            devices: vec![
                DeviceFd { endpoint: 3, fd: 0 },
                DeviceFd { endpoint: 3, fd: 1 },
            ],
        };
        let e = assign(&dup, vec![devnull(), devnull()]).unwrap_err();
        assert!(matches!(e, FdPassError::DuplicateEndpoint(3)), "{e}");
        let v2 = Message {
            version: 2,
            ..Message::default()
        };
        assert!(matches!(
            assign(&v2, vec![]).unwrap_err(),
            FdPassError::Version(2)
        ));
    }

    /// Inode of an fd, to check the daemon got the very file the launcher sent.
    fn ino(fd: BorrowedFd<'_>) -> u64 {
        // SAFETY: fstat on a valid fd with a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        st.st_ino
    }

    #[test]
    fn round_trip_over_a_socket() {
        let dir = std::env::temp_dir().join(format!("vui-fdpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("launcher.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let a = tempfile_in(&dir, "a");
        let b = tempfile_in(&dir, "b");
        let (ia, ib) = (ino(a.as_fd()), ino(b.as_fd()));
        let launcher = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let msg = Message {
                version: 1,
                iommufd: Some(1),
                devices: vec![DeviceFd {
                    endpoint: 42,
                    fd: 0,
                }],
            };
            send(&s, &msg, &[a.as_fd(), b.as_fd()])
        });
        let h = receive(&path, |_| Ok(())).unwrap();
        launcher.join().unwrap().unwrap();
        assert_eq!(ino(h.iommufd.as_ref().unwrap().as_fd()), ib);
        assert_eq!(ino(h.devices[&42].as_fd()), ia);
        // Close-on-exec, as promised.
        // SAFETY: F_GETFD on a valid fd.
        let flags = unsafe { libc::fcntl(h.devices[&42].as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);

        // A bad message is refused, and the launcher hears why.
        let listener = {
            let _ = std::fs::remove_file(&path);
            UnixListener::bind(&path).unwrap()
        };
        let c = tempfile_in(&dir, "c");
        let launcher = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let msg = Message {
                version: 1,
                iommufd: None,
                devices: vec![],
            };
            send(&s, &msg, &[c.as_fd()])
        });
        let e = receive(&path, |_| Ok(())).unwrap_err();
        assert!(matches!(e, FdPassError::Unused(0)), "{e}");
        let refused = launcher.join().unwrap().unwrap_err().to_string();
        assert!(refused.contains("not named"), "{refused}");

        // Garbage is refused too.
        let listener = {
            let _ = std::fs::remove_file(&path);
            UnixListener::bind(&path).unwrap()
        };
        let launcher = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"version\":1,\"bogus\":3}\n").unwrap();
        });
        let e = receive(&path, |_| Ok(())).unwrap_err();
        assert!(matches!(e, FdPassError::Json(_)), "{e}");
        launcher.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_in(dir: &Path, name: &str) -> OwnedFd {
        let p = dir.join(name);
        std::fs::write(&p, name).unwrap();
        std::fs::File::open(&p).unwrap().into()
    }
}
