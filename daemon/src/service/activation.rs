//! systemd integration: the inherited vhost-user listener (socket activation), readiness and
//! the watchdog. Everything here is a no-op when the daemon does not run under systemd.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use sd_notify::NotifyState;

use crate::transport::Shared;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {0}")]
    Env(io::Error),
    #[error("socket activation passed {0} sockets; the daemon takes exactly one (the vhost-user listener)")]
    Count(usize),
    #[error("socket activation: fd {fd} is not a listening unix stream socket ({why})")]
    NotAListener { fd: RawFd, why: String },
}

/// The listener passed by systemd (`LISTEN_PID` is us, `LISTEN_FDS` = 1), if any. The
/// variables are removed from the environment so children do not see them.
pub fn inherited_listener() -> Result<Option<UnixListener>, ActivationError> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(ActivationError::Env)?
        .collect();
    std::env::remove_var("LISTEN_FDNAMES");
    let fd = match fds.as_slice() {
        [] => return Ok(None),
        [fd] => *fd,
        more => return Err(ActivationError::Count(more.len())),
    };
    check_unix_listener(fd).map_err(|why| ActivationError::NotAListener { fd, why })?;
    // SAFETY: systemd handed us this fd (LISTEN_FDS names it and LISTEN_PID is our pid), it is
    // open (the checks above queried it), and nothing else in the process owns it.
    Ok(Some(unsafe { UnixListener::from_raw_fd(fd) }))
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Result<libc::c_int, String> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes and `len` holds the size of `v`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error().to_string());
    }
    Ok(v)
}

fn check_unix_listener(fd: RawFd) -> Result<(), String> {
    if sockopt(fd, libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err("not AF_UNIX".into());
    }
    if sockopt(fd, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err("not SOCK_STREAM (use ListenStream=)".into());
    }
    if sockopt(fd, libc::SO_ACCEPTCONN)? == 0 {
        return Err("not listening (Accept=no is required)".into());
    }
    Ok(())
}

/// The filesystem path a listener is bound to, if it has one.
pub fn listener_path(l: &UnixListener) -> Option<PathBuf> {
    l.local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(PathBuf::from))
}

/// Tell the service manager (if any) that the daemon is ready.
pub fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]) {
        warn!("cannot notify the service manager: {e}");
    }
}

/// Update the status line shown by `systemctl status`.
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

/// How often to ping the watchdog, if systemd asked for one (`WatchdogSec=`): half the
/// timeout, as sd_watchdog_enabled(3) recommends.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// Ping the watchdog every `interval` for as long as the device lock can be taken: a worker
/// stuck while holding it stops the pings and systemd restarts the service. Call from the
/// thread that should do this (it never returns).
pub fn watchdog_loop(interval: Duration, shared: Arc<Shared>) {
    info!("watchdog enabled: pinging every {interval:?}");
    loop {
        drop(shared.device());
        if let Err(e) = sd_notify::notify(false, &[NotifyState::Watchdog]) {
            warn!("cannot ping the watchdog: {e}");
        }
        std::thread::sleep(interval);
    }
}
