//! `vhost-user-iommu proxy`: keeps the VMM's vhost-user connection while the daemon behind it
//! restarts (a crash, `systemctl restart`, an upgrade). docs/STATE.md, "Restart".
//!
//! The VMM connects to the proxy; the proxy connects to the daemon and forwards every message
//! whole, with its file descriptors, both ways. The data path (virtqueues in shared memory,
//! kick and call eventfds) goes from the VMM to the daemon directly: the proxy only sees the
//! control messages. It records the connection's set-up (features, memory table, vrings and
//! their eventfds). When the daemon's connection closes, the proxy connects again (to the
//! restarted daemon, through its socket) and replays the set-up, each vring restarting at the
//! used index in guest memory; a message the VMM was waiting for an answer to is sent again.
//! The restarted daemon resumes the device state from its journal (`--state-dir`); the VMM
//! and the guest see nothing.
//!
//! Why a proxy: QEMU 11.1's generic vhost-user device cannot reconnect to a restarted backend
//! (`vub_disconnect` frees the vhost device with `vhost_dev_cleanup`, and `vub_connect` starts
//! it again without `vhost_dev_init`: QEMU aborts on `hdev->vhost_ops` in vhost_dev_start),
//! and vhost-user-backend cannot take over an established connection from a dead process.

mod setup;
mod wire;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use setup::{ReplayError, Setup};
use wire::{Msg, WireError};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("vhost-user socket {path}: {err}")]
    Socket { path: PathBuf, err: io::Error },
    #[error(transparent)]
    Activation(#[from] crate::service::activation::ActivationError),
    #[error("no vhost-user socket: pass --socket, or start the proxy through socket activation")]
    NoSocket,
    #[error("accepting a frontend: {0}")]
    Accept(io::Error),
    #[error(transparent)]
    Sandbox(#[from] crate::os::sandbox::SandboxError),
}

/// Why a frontend's session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("the frontend disconnected")]
    Closed,
    #[error("frontend: {0}")]
    Frontend(WireError),
    #[error("cannot record the frontend's set-up: {0}")]
    Record(io::Error),
}

/// How often the proxy tries to reach a daemon that is not there, and how often it says so.
const RETRY: Duration = Duration::from_millis(100);
const SAY_WAITING: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct ProxyOptions {
    /// Where the VMM connects (ignored when systemd passes the listener).
    pub socket: Option<PathBuf>,
    /// The daemon's vhost-user socket.
    pub backend: PathBuf,
    /// Install the proxy's seccomp filter once its socket is bound.
    pub seccomp: bool,
}

/// Serve frontends one at a time, each through a daemon connection that may be replaced.
pub fn run(o: ProxyOptions) -> Result<(), ProxyError> {
    let listener = match crate::service::activation::inherited_listener()? {
        Some(l) => l,
        None => {
            let path = o.socket.clone().ok_or(ProxyError::NoSocket)?;
            crate::os::socket::bind_unix(&path).map_err(|err| ProxyError::Socket { path, err })?
        }
    };
    info!(
        "vhost-user proxy: frontends connect on {}, the daemon serves {}",
        describe(&listener),
        o.backend.display()
    );
    // The socket is bound: from here on only what forwarding needs.
    if o.seccomp {
        crate::os::sandbox::install(crate::os::sandbox::Role::Proxy)?;
    } else {
        warn!("running without seccomp filters (--no-seccomp)");
    }
    crate::service::activation::notify_ready("waiting for a frontend");
    loop {
        let (vmm, _) = listener.accept().map_err(ProxyError::Accept)?;
        info!("frontend connected");
        match session(&vmm, &o.backend) {
            SessionEnd::Closed => info!("frontend disconnected"),
            e => error!("{e}; connection closed"),
        }
    }
}

fn describe(l: &UnixListener) -> String {
    l.local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "the inherited socket".into())
}

/// Connect to the daemon, waiting for it as long as it takes (it is restarting).
fn connect(path: &Path) -> UnixStream {
    let started = Instant::now();
    let mut said = started;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => {
                if said.elapsed() >= SAY_WAITING {
                    warn!(
                        "no daemon on {} for {} s ({e}); still waiting",
                        path.display(),
                        started.elapsed().as_secs()
                    );
                    said = Instant::now();
                }
                std::thread::sleep(RETRY);
            }
        }
    }
}

/// A restarted daemon, with the connection's set-up replayed into it; a daemon that refuses
/// the replay is disconnected (it resets its device) and the next one tried.
fn restore(path: &Path, setup: &Setup, lost: Instant) -> UnixStream {
    let mut refusals = 0u32;
    loop {
        let d = connect(path);
        let started = Instant::now();
        match setup.replay(&d) {
            Ok(()) => {
                info!(
                    "daemon connection restored {} ms after it closed (set-up replayed in {} us)",
                    lost.elapsed().as_millis(),
                    started.elapsed().as_micros()
                );
                return d;
            }
            // Connected to a daemon that was still going away (its listener not yet closed):
            // try again.
            Err(ReplayError::Closed | ReplayError::Wire(_)) => {
                drop(d);
                std::thread::sleep(RETRY);
            }
            Err(e) => {
                refusals += 1;
                // The same daemon refuses the same set-up again: say it once in a while.
                if refusals == 1 || refusals.is_multiple_of(50) {
                    error!(
                        "the daemon on {} cannot carry on this VM's connection: {e}; retrying",
                        path.display()
                    );
                }
                drop(d);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// The events `fd` has (poll, no timeout).
fn wait_readable(a: &UnixStream, b: &UnixStream) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: a.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    Ok((ready(&fds[0]), ready(&fds[1])))
}

fn session(vmm: &UnixStream, backend: &Path) -> SessionEnd {
    let mut setup = Setup::default();
    let mut daemon = connect(backend);
    // The message the VMM waits for an answer to, if any.
    let mut outstanding: Option<Msg> = None;
    let mut restarts = 0u64;
    loop {
        let (from_vmm, from_daemon) = match wait_readable(vmm, &daemon) {
            Ok(r) => r,
            Err(e) => return SessionEnd::Frontend(WireError::Io(e)),
        };
        let mut daemon_gone = false;
        if from_daemon {
            match wire::read_msg(&daemon) {
                Ok(Some(reply)) => {
                    if let Some(req) = outstanding.take() {
                        setup.completed(&req);
                    }
                    if let Err(e) = wire::write_msg(vmm, &reply) {
                        return SessionEnd::Frontend(WireError::Io(e));
                    }
                }
                Ok(None) => daemon_gone = true,
                Err(e) => {
                    warn!("daemon connection: {e}");
                    daemon_gone = true;
                }
            }
        } else if from_vmm {
            let m = match wire::read_msg(vmm) {
                Ok(Some(m)) => m,
                Ok(None) => return SessionEnd::Closed,
                Err(e) => return SessionEnd::Frontend(e),
            };
            if let Err(e) = setup.record(&m) {
                return SessionEnd::Record(e);
            }
            if setup.expects_reply(&m) {
                match m.try_clone() {
                    Ok(c) => outstanding = Some(c),
                    Err(e) => return SessionEnd::Record(e),
                }
            }
            if let Err(e) = wire::write_msg(&daemon, &m) {
                warn!("daemon connection: {e}");
                daemon_gone = true;
            }
        }
        if daemon_gone {
            restarts += 1;
            warn!("the daemon's connection closed (restart {restarts}): waiting for the daemon to come back");
            daemon = restore(backend, &setup, Instant::now());
            if let Some(m) = &outstanding {
                info!(
                    "message {} sent again: the VMM waits for its answer",
                    m.request
                );
                match m.try_clone() {
                    Ok(c) => {
                        if let Err(e) = wire::write_msg(&daemon, &c) {
                            warn!("daemon connection: {e}");
                        }
                    }
                    Err(e) => return SessionEnd::Record(e),
                }
            }
        }
    }
}
