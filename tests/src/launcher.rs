//! The launcher side of the daemon's fd hand-over (docs/IOMMUFD.md, `fd-socket`): one message
//! with file descriptors attached (SCM_RIGHTS), through the one implementation of the wire
//! format (the `vhost-user-iommu-fdpass` crate).

use std::io::{self, BufRead, BufReader};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread::JoinHandle;

/// Send `line` on `sock` with `fds` attached (none: a plain message). At most 32 fds.
pub fn send_with_fds(sock: &UnixStream, line: &str, fds: &[RawFd]) -> io::Result<()> {
    fdpass::send_raw(sock, line.as_bytes(), fds)
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
