//! The daemon's life: bind the sockets, serve one frontend at a time, reset between
//! connections, stop cleanly on SIGINT/SIGTERM.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use log::{error, info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::config::DeviceConfig;
use crate::control::{self, ConnectionInfo, ControlError};
use crate::device::Device;
use crate::vhost::{IommuBackend, Shared, VhostError, FAULT_EVENT_ID};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("vhost-user socket {path}: {err}")]
    Socket { path: PathBuf, err: io::Error },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Vhost(#[from] VhostError),
    #[error("cannot install the signal handler: {0}")]
    Signals(io::Error),
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
}

/// What `run` needs, validated by the caller.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub socket: PathBuf,
    pub control_socket: PathBuf,
    pub device: DeviceConfig,
}

/// Bind a unix socket at `path`. A stale socket left by a dead process is replaced; a live one
/// (something accepts connections) or a path that is not a socket is refused, so a typo can
/// never delete a regular file.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on it (is a daemon already running?)",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket; choose another path",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Remove our socket files on exit (only if they are still sockets).
fn remove_sockets(paths: &[PathBuf]) {
    for p in paths {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
            if let Err(e) = std::fs::remove_file(p) {
                warn!("cannot remove {}: {e}", p.display());
            }
        }
    }
}

fn install_signal_handler(paths: Vec<PathBuf>) -> Result<(), ServerError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(ServerError::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!("signal {sig} received: removing sockets and exiting");
                remove_sockets(&paths);
                std::process::exit(0);
            }
        })
        .map_err(ServerError::Signals)?;
    Ok(())
}

/// Serve frontends on `cfg.socket` until a signal stops the process.
pub fn run(cfg: ServerConfig) -> Result<(), ServerError> {
    let listener = bind_unix(&cfg.socket).map_err(|err| ServerError::Socket {
        path: cfg.socket.clone(),
        err,
    })?;
    let mut listener = Listener::from(listener);
    // From here on, our socket files exist; the signal handler removes them.
    install_signal_handler(vec![cfg.socket.clone(), cfg.control_socket.clone()])?;

    let shared = Arc::new(Shared::new(Device::new(cfg.device.clone()))?);
    let conn = Arc::new(ConnectionInfo::default());
    if let Err(e) = control::spawn(&cfg.control_socket, shared.clone(), conn.clone()) {
        remove_sockets(std::slice::from_ref(&cfg.socket));
        return Err(e.into());
    }
    info!(
        "serving virtio-iommu (software backend) on {}",
        cfg.socket.display()
    );

    loop {
        shared.device().reset(false);
        let backend = Arc::new(RwLock::new(IommuBackend::new(shared.clone())));
        let mut daemon = VhostUserDaemon::new(
            "vhost-user-iommu".to_string(),
            backend,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| ServerError::Daemon(e.to_string()))?;
        for h in daemon.get_epoll_handlers() {
            h.register_listener(shared.fault_fd(), EventSet::IN, u64::from(FAULT_EVENT_ID))
                .map_err(|e| {
                    ServerError::Daemon(format!("cannot watch the fault notifier: {e}"))
                })?;
        }

        if let Err(e) = daemon.start(&mut listener) {
            // accept() failing is not a per-connection problem: give up.
            return Err(ServerError::Daemon(e.to_string()));
        }
        let n = conn.connections.fetch_add(1, Ordering::Relaxed) + 1;
        conn.connected.store(true, Ordering::Relaxed);
        info!("frontend connected (connection {n})");

        match daemon.wait() {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => info!("frontend disconnected (connection {n})"),
            Err(e) => error!("connection {n} ended with an error: {e}"),
        }
        conn.connected.store(false, Ordering::Relaxed);
        for h in daemon.get_epoll_handlers() {
            h.send_exit_event();
        }
        // Everything the guest built is gone with the connection.
        shared.device().reset(false);
    }
}
