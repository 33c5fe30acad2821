//! The launcher side of the daemon's fd hand-over (docs/IOMMUFD.md, `fd-socket`): one message
//! with file descriptors attached (SCM_RIGHTS).

use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread::JoinHandle;

/// Send `line` on `sock` with `fds` attached (none: a plain message). At most a few fds.
pub fn send_with_fds(sock: &UnixStream, line: &str, fds: &[RawFd]) -> io::Result<()> {
    let mut data = line.as_bytes().to_vec();
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: an all-zero msghdr is valid; fields set below.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = u32::try_from(std::mem::size_of_val(fds))
            .map_err(|_| io::Error::other("too many fds"))?;
        // SAFETY: CMSG_SPACE is arithmetic on a length.
        let space = unsafe { libc::CMSG_SPACE(bytes) };
        if space as usize > std::mem::size_of_val(&cbuf) {
            return Err(io::Error::other("too many fds for one message"));
        }
        m.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: the control header and `fds` fit in `cbuf` (checked above); CMSG_FIRSTHDR
        // points into it.
        unsafe {
            m.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
    }
    // SAFETY: `m` describes live buffers.
    let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &m, 0) };
    if usize::try_from(sent).ok() != Some(data.len()) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The launcher's side of one hand-over, on a thread: accept the daemon's connection on
/// `listener`, send `line` with `fds`, and return the daemon's one-line answer (trimmed).
/// The caller keeps `fds` open until the thread is joined.
pub fn hand_over(
    listener: UnixListener,
    line: String,
    fds: Vec<RawFd>,
) -> JoinHandle<Result<String, String>> {
    std::thread::spawn(move || {
        let (s, _) = listener.accept().map_err(|e| e.to_string())?;
        send_with_fds(&s, &line, &fds).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(&s)
            .read_line(&mut answer)
            .map_err(|e| e.to_string())?;
        Ok(answer.trim().to_string())
    })
}
