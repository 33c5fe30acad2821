//! The daemon's life: bind the sockets, serve one frontend at a time, reset between
//! connections, stop cleanly on SIGINT/SIGTERM.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use log::{error, info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::control::{self, ConnectionInfo, ControlError};
use crate::os::sandbox::{self, Role, SandboxError};
use crate::os::socket::{bind_unix_with, SocketAccess};
use crate::service::activation::{self, ActivationError};
use crate::service::privilege::{self, PrivilegeError};
use crate::service::settings::{Settings, SocketOwner};
use crate::transport::{Shared, VhostDevice, VhostError, PAGE_REQUEST_EVENT_ID, WAKE_EVENT_ID};
use model::device::Device;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("vhost-user socket {path}: {err}")]
    Socket { path: PathBuf, err: io::Error },
    #[error(transparent)]
    Activation(#[from] ActivationError),
    #[error("no vhost-user socket: pass --socket (or `socket` in the config file), or start the daemon through systemd socket activation")]
    NoSocket,
    #[error("--{option} {value:?}: {why}")]
    SocketOwner {
        option: &'static str,
        value: String,
        why: String,
    },
    #[error("the inherited vhost-user listener has no path; pass --control-socket")]
    NoControlPath,
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    #[error(transparent)]
    Backend(#[from] crate::host::BackendSetupError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Sched(#[from] crate::os::sched::SchedError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, io::Error),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Vhost(#[from] VhostError),
    #[error("cannot install the signal handler: {0}")]
    Signals(io::Error),
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
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

/// Catch SIGINT/SIGTERM from now on (they wait in signal-hook's pipe until the thread that
/// handles them starts).
fn catch_signals() -> Result<signal_hook::iterator::Signals, ServerError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(ServerError::Signals)
}

/// Handle the caught signals on their own thread: remove our socket files and exit 0.
fn spawn_signal_thread(
    mut signals: signal_hook::iterator::Signals,
    paths: Vec<PathBuf>,
    seccomp: bool,
) -> Result<(), ServerError> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if seccomp {
                if let Err(e) = sandbox::install(Role::Signals) {
                    error!("{e}");
                    remove_sockets(&paths);
                    std::process::exit(1);
                }
            }
            if let Some(sig) = signals.forever().next() {
                info!("signal {sig} received: removing sockets and exiting");
                remove_sockets(&paths);
                std::process::exit(0);
            }
        })
        .map_err(ServerError::Signals)?;
    Ok(())
}

/// The configured owner, group and mode of the vhost-user socket, names looked up (also what
/// `--check-config` checks).
pub fn socket_access(o: &SocketOwner) -> Result<SocketAccess, ServerError> {
    let uid = match &o.user {
        Some(u) => Some(
            privilege::lookup(u)
                .map_err(|e| ServerError::SocketOwner {
                    option: "socket-user",
                    value: u.clone(),
                    why: match e {
                        PrivilegeError::NoSuchUser(_) => "no such user".to_string(),
                        e => e.to_string(),
                    },
                })?
                .uid,
        ),
        None => None,
    };
    let gid = match &o.group {
        Some(g) => Some(
            privilege::lookup_group(g).map_err(|e| ServerError::SocketOwner {
                option: "socket-group",
                value: g.clone(),
                why: e.to_string(),
            })?,
        ),
        None => None,
    };
    Ok(SocketAccess {
        uid,
        gid,
        mode: o.mode,
    })
}

/// `path` + `.ctl`.
fn default_control_path(socket: &Path) -> PathBuf {
    let mut p = socket.to_owned().into_os_string();
    p.push(".ctl");
    PathBuf::from(p)
}

/// Serve frontends until a signal stops the process.
///
/// Order matters for least privilege: every socket is bound (or inherited) first, then the
/// process switches to `cfg.user`, then each thread installs its seccomp filter before it
/// serves anything: the signal thread, the control thread, the watchdog thread, and finally
/// this thread, whose filter the vhost-user worker threads it starts inherit.
pub fn run(cfg: Settings) -> Result<(), ServerError> {
    // Signals are caught before any socket file exists, so none can be left behind; the thread
    // that handles them starts after the privilege drop (glibc changes the ids of every thread
    // by running the set*id calls on each of them, which a thread's seccomp filter would forbid).
    let signals = catch_signals()?;
    let (listener, socket_path, activated) = match activation::inherited_listener()? {
        Some(l) => {
            let path = activation::listener_path(&l);
            info!(
                "using the vhost-user listener passed by the service manager ({})",
                path.as_ref()
                    .map_or("no path".to_string(), |p| p.display().to_string())
            );
            if !cfg.socket_access.is_default() {
                warn!(
                    "socket-user, socket-group and socket-mode apply to a socket the daemon \
                     creates; the inherited one keeps what the service manager gave it (the \
                     socket unit's SocketUser=, SocketGroup=, SocketMode=)"
                );
            }
            (l, path, true)
        }
        None => {
            let path = cfg.socket.clone().ok_or(ServerError::NoSocket)?;
            let access = socket_access(&cfg.socket_access)?;
            let l = bind_unix_with(&path, &access).map_err(|err| ServerError::Socket {
                path: path.clone(),
                err,
            })?;
            if !access.is_default() {
                let show = |v: Option<u32>| v.map_or("unchanged".to_string(), |v| v.to_string());
                info!(
                    "vhost-user socket {}: uid {}, gid {}, mode {}",
                    path.display(),
                    show(access.uid),
                    show(access.gid),
                    access
                        .mode
                        .map_or("from the umask".to_string(), |m| format!("{m:04o}"))
                );
            }
            (l, Some(path), false)
        }
    };

    let control_path = match (&cfg.control_socket, &socket_path) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => default_control_path(s),
        (None, None) => return Err(ServerError::NoControlPath),
    };
    // The files we created and remove on exit; an inherited socket belongs to systemd.
    let mut ours = vec![control_path.clone()];
    if !activated {
        ours.extend(socket_path.clone());
    }
    let control_listener = match control::bind(&control_path) {
        Ok(l) => l,
        Err(e) => {
            remove_sockets(&ours[1..]);
            return Err(e.into());
        }
    };
    let mut listener = Listener::from(listener);
    // The journal is opened (and locked) with the daemon's start-up privileges, before the
    // backend: a second daemon on the same directory stops here, before it touches the objects
    // the first one keeps there.
    let journal = match cfg.state_dir.as_deref().map(crate::journal::Journal::open) {
        Some(Err(e)) => {
            remove_sockets(&ours);
            return Err(e.into());
        }
        Some(Ok(j)) => Some(j),
        None => None,
    };
    // Host devices are opened (and fds received from a launcher) with the daemon's privileges;
    // the host's limits adjust what the device tells the guest.
    let mut device_cfg = cfg.device.clone();
    let backend = match crate::host::build(&cfg.backend, &mut device_cfg, cfg.state_dir.as_deref())
    {
        Ok(b) => b,
        Err(e) => {
            remove_sockets(&ours);
            return Err(e.into());
        }
    };
    let backend_name = backend.name();
    sandbox::allow_backend_ioctls(backend.serving_ioctls());
    // The worker's scheduling policy: made possible while privileged, then tried with the
    // privileges the workers will have.
    cfg.worker_sched.prepare();
    if let Some(user) = &cfg.user {
        if let Err(e) = privilege::drop_to(user) {
            remove_sockets(&ours);
            return Err(e.into());
        }
    }
    if let Err(e) = cfg.worker_sched.probe() {
        remove_sockets(&ours);
        return Err(e.into());
    }
    info!(
        "request-queue worker: {}",
        crate::os::sched::describe(cfg.worker_sched)
    );

    // The signal thread removes our socket files on SIGINT/SIGTERM.
    spawn_signal_thread(signals, ours, cfg.seccomp)?;

    let mut device = Device::with_backend(device_cfg, backend);
    if let Some((journal, saved)) = journal {
        device.set_journal(Box::new(journal), saved);
    }
    let shared = Arc::new(Shared::new(device)?);
    let conn = Arc::new(ConnectionInfo {
        worker_sched: cfg.worker_sched,
        poll_us: u64::try_from(cfg.poll.as_micros()).unwrap_or(u64::MAX),
        ..ConnectionInfo::default()
    });
    shared
        .device()
        .set_invalidation_sink(conn.subscribers.clone());
    let seccomp = cfg.seccomp;
    let transfer = crate::transport::migration::Transfer::spawn(move || {
        if seccomp {
            sandbox::install(Role::Transfer).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .map_err(|e| ServerError::Thread("state-transfer", e))?;
    shared.set_transfer(transfer);
    control::spawn(control_listener, shared.clone(), conn.clone(), move || {
        if seccomp {
            sandbox::install(Role::Control).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .map_err(|e| ServerError::Thread("control", e))?;
    if let Some(interval) = activation::watchdog_interval() {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                if seccomp {
                    if let Err(e) = sandbox::install(Role::Watchdog) {
                        // No pings: systemd will restart the service and the log says why.
                        error!("{e}");
                        return;
                    }
                }
                activation::watchdog_loop(interval, shared)
            })
            .map_err(|e| ServerError::Thread("watchdog", e))?;
    }
    if seccomp {
        sandbox::install(Role::Main)?;
        sandbox::enable_worker_filters();
        info!("seccomp filters installed");
    } else {
        warn!("running without seccomp filters (--no-seccomp)");
    }
    let where_ = socket_path
        .as_ref()
        .map_or("the inherited socket".to_string(), |p| {
            p.display().to_string()
        });
    info!("serving virtio-iommu ({backend_name} backend) on {where_}");
    activation::notify_ready(&format!("waiting for a frontend on {where_}"));

    loop {
        shared.device().reset(false);
        let backend = Arc::new(RwLock::new(VhostDevice::new(
            shared.clone(),
            cfg.poll,
            cfg.worker_sched,
        )));
        let mut daemon = VhostUserDaemon::new(
            "vhost-user-iommu".to_string(),
            backend,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| ServerError::Daemon(e.to_string()))?;
        for h in daemon.get_epoll_handlers() {
            h.register_listener(shared.wake_fd(), EventSet::IN, u64::from(WAKE_EVENT_ID))
                .map_err(|e| ServerError::Daemon(format!("cannot watch the wake notifier: {e}")))?;
            // Page requests of host devices (iommufd fault queue), when the backend has them.
            if let Some(fd) = shared.device().host_page_request_fd() {
                h.register_listener(fd, EventSet::IN, u64::from(PAGE_REQUEST_EVENT_ID))
                    .map_err(|e| {
                        ServerError::Daemon(format!("cannot watch the page-request fd: {e}"))
                    })?;
            }
        }

        if let Err(e) = daemon.start(&mut listener) {
            // accept() failing is not a per-connection problem: give up.
            return Err(ServerError::Daemon(e.to_string()));
        }
        let n = conn.connections.fetch_add(1, Ordering::Relaxed) + 1;
        conn.connected.store(true, Ordering::Relaxed);
        info!("frontend connected (connection {n})");
        activation::notify_status(&format!("serving a frontend (connection {n})"));

        match daemon.wait() {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => info!("frontend disconnected (connection {n})"),
            Err(e) => error!("connection {n} ended with an error: {e}"),
        }
        // Everything the guest built is gone with the connection; `connected` turns false only
        // then, so whoever sees it sees the released state.
        crate::transport::end_connection(&shared, daemon);
        conn.connected.store(false, Ordering::Relaxed);
        activation::notify_status(&format!("waiting for a frontend on {where_}"));
    }
}
