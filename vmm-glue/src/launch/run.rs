//! Starting, watching and stopping the daemon and QEMU for `launch`.
//!
//! Order: check everything that can be checked (configuration, QEMU and daemon binaries, host
//! devices, /dev/iommu) before starting anything; then the daemon, the fd hand-over, the
//! daemon's vhost-user socket, QEMU. SIGINT, SIGTERM and SIGHUP are blocked in the launcher
//! and taken with `sigtimedwait` (children start with them unblocked), so a signal at any point
//! stops what was started: QEMU first, then the daemon (SIGTERM, SIGKILL after a grace
//! period), then the fds are closed and the run directory's files removed.
//!
//! With `restart` (the default) QEMU attaches through `vhost-user-iommu proxy` and the daemon
//! keeps its state in the run directory: a daemon that exits while QEMU runs is started
//! again (SIGUSR1 to the launcher stops and starts it: an upgrade to the binary now at its
//! path) and handed the same fds, so it adopts the host objects and resumes the guest's
//! domains. More than [`RESTART_BURST`] starts within [`RESTART_WINDOW`] stop the VM.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::host::{self, HostRoots, OpenDevice};
use super::{daemon_config, qemu_args, read_config, LaunchError, Plan, RunPaths};
use crate::viot::Viot;

/// How long the daemon may take to connect for the hand-over and to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The daemon binary's name.
pub const DAEMON_NAME: &str = "vhost-user-iommu";
/// At most this many daemon starts within [`RESTART_WINDOW`]; one more stops the VM (a
/// daemon that cannot run is not restarted for ever).
pub const RESTART_BURST: usize = 5;
/// See [`RESTART_BURST`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Why running failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No QEMU command.
    #[error("no QEMU command after `--` (e.g. `-- qemu-system-x86_64 -accel kvm -smp 2 ...`)")]
    NoQemu,
    /// A program that is not there.
    #[error("{what} `{name}` not found{hint}")]
    NotFound {
        /// "QEMU" or "the daemon".
        what: &'static str,
        /// As given.
        name: String,
        /// What to do.
        hint: &'static str,
    },
    /// The run directory.
    #[error("run directory {path:?}: {err}")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// Another launcher uses the run directory.
    #[error("run directory {0:?} is in use by another launcher; give each VM its own run-dir")]
    RunDirBusy(PathBuf),
    /// A file could not be written.
    #[error("cannot write {path:?}: {err}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// The VIOT named in the configuration.
    #[error("cannot read the VIOT {path:?}: {err}")]
    ReadViot {
        /// The file.
        path: PathBuf,
        /// Why.
        err: String,
    },
    /// The hand-over socket.
    #[error("hand-over socket {path:?}: {err}")]
    Listen {
        /// The socket.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// The proxy exited early.
    #[error("the proxy exited ({0}) before it created its socket; its messages are above")]
    ProxyExited(ExitStatus),
    /// The daemon did not start.
    #[error("cannot start the daemon {path:?}: {err}")]
    SpawnDaemon {
        /// The binary.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// The daemon exited early.
    #[error("the daemon exited ({status}) before {when}; its messages are above")]
    DaemonExited {
        /// How.
        status: ExitStatus,
        /// At which step.
        when: &'static str,
    },
    /// The daemon was too slow.
    #[error("the daemon did not {0} within {secs} s", secs = START_TIMEOUT.as_secs())]
    Timeout(&'static str),
    /// The hand-over failed.
    #[error("fd hand-over to the daemon: {0}")]
    Handover(#[from] fdpass::FdPassError),
    /// QEMU did not start.
    #[error("cannot start QEMU {path:?}: {err}")]
    SpawnQemu {
        /// The program.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// A signal arrived before QEMU ran.
    #[error("stopped by signal {0} before QEMU started")]
    Signal(i32),
    /// Watching the processes failed.
    #[error("waiting for {what}: {err}")]
    Wait {
        /// Which process.
        what: &'static str,
        /// Why.
        err: io::Error,
    },
}

/// What `launch` runs.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The launcher's configuration file.
    pub config: PathBuf,
    /// The daemon binary (overrides the configuration).
    pub daemon: Option<PathBuf>,
    /// QEMU's program and arguments (the launcher appends its own).
    pub qemu: Vec<OsString>,
    /// Where sysfs and /dev are.
    pub roots: HostRoots,
}

/// The executable `name` (a path, or a name looked up in $PATH).
fn resolve_program(name: &Path) -> Option<PathBuf> {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.components().count() > 1 || name.is_absolute() {
        return executable(name).then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

fn resolve_daemon(given: Option<&Path>) -> Result<PathBuf, RunError> {
    let not_found = |name: String| RunError::NotFound {
        what: "the daemon",
        name,
        hint: "; give its path with --daemon or `daemon = PATH` in the configuration",
    };
    if let Some(p) = given {
        return resolve_program(p).ok_or_else(|| not_found(p.display().to_string()));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(DAEMON_NAME)));
    if let Some(p) = beside.filter(|p| resolve_program(p).is_some()) {
        return Ok(p);
    }
    resolve_program(Path::new(DAEMON_NAME)).ok_or_else(|| not_found(DAEMON_NAME.into()))
}

/// SIGINT, SIGTERM, SIGHUP and SIGUSR1 (restart the daemon), blocked while this lives and
/// taken with [`Signals::poll`].
struct Signals {
    set: libc::sigset_t,
    old: libc::sigset_t,
}

impl Signals {
    fn block() -> Signals {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it, pthread_sigmask
        // reads `set` and writes `old`, both live locals.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Signals { set, old }
        }
    }

    /// Waits up to `t` for one of the signals.
    fn poll(&self, t: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::c_long::from(t.subsec_millis().min(999)) * 1_000_000,
        };
        // SAFETY: `set` is an initialised signal set, `ts` a live timespec; no siginfo wanted.
        let r = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        (r > 0).then_some(r)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `block`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// A child process that is stopped (and reaped) when dropped.
struct Started {
    what: &'static str,
    child: Child,
    status: Option<ExitStatus>,
}

impl Started {
    fn try_wait(&mut self) -> Result<Option<ExitStatus>, RunError> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|err| RunError::Wait {
                what: self.what,
                err,
            })?;
        }
        Ok(self.status)
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; reaps the child.
    fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.try_wait() {
            return Some(st);
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill on our own child, which is not reaped yet (so the pid is still ours).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let until = Instant::now() + STOP_GRACE;
        while Instant::now() < until {
            if let Ok(Some(st)) = self.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        log::warn!("{} did not stop on SIGTERM; killing it", self.what);
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        self.status
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Files of the run directory this launch wrote; removed when dropped.
struct RunFiles {
    files: Vec<PathBuf>,
}

impl Drop for RunFiles {
    fn drop(&mut self) {
        for f in self.files.iter().rev() {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn write_file(files: &mut RunFiles, path: PathBuf, data: &[u8]) -> Result<(), RunError> {
    files.files.push(path.clone());
    std::fs::write(&path, data).map_err(|err| RunError::Write { path, err })
}

/// Creates the run directory (0700) and takes its lock.
fn open_run_dir(paths: &RunPaths, files: &mut RunFiles) -> Result<File, RunError> {
    let dir = &paths.dir;
    let err = |err| RunError::RunDir {
        path: dir.clone(),
        err,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let lock_path = paths.lock();
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&lock_path)
        .map_err(err)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(RunError::RunDirBusy(dir.clone()));
    }
    files.files.push(lock_path);
    Ok(lock)
}

/// Clears FD_CLOEXEC on `fds` and unblocks all signals, in the child between fork and exec.
fn prepare_child(cmd: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (fcntl, sigemptyset, pthread_sigmask) on fds and memory it owns.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        })
    };
}

/// Polls `ready` until it says yes, the daemon exits, a signal arrives or time runs out.
fn wait_for(
    what: &'static str,
    signals: &Signals,
    daemon: &mut Started,
    mut ready: impl FnMut() -> Result<bool, RunError>,
) -> Result<(), RunError> {
    let until = Instant::now() + START_TIMEOUT;
    loop {
        if ready()? {
            return Ok(());
        }
        if let Some(status) = daemon.try_wait()? {
            return Err(RunError::DaemonExited { status, when: what });
        }
        match signals.poll(Duration::from_millis(100)) {
            Some(libc::SIGUSR1) => log::warn!("SIGUSR1 while the daemon starts: ignored"),
            Some(sig) => return Err(RunError::Signal(sig)),
            None => {}
        }
        if Instant::now() > until {
            return Err(RunError::Timeout(what));
        }
    }
}

/// What every start of the daemon needs: its command, the hand-over (listener, message, fds)
/// and where its process id is written.
struct DaemonStart<'a> {
    path: &'a Path,
    args: Vec<OsString>,
    paths: &'a RunPaths,
    listener: &'a UnixListener,
    msg: fdpass::Message,
    fds: Vec<BorrowedFd<'a>>,
}

impl DaemonStart<'_> {
    /// Start the daemon, hand it the iommufd and the devices (the same open files every time:
    /// a restarted daemon adopts what the previous one left in the iommufd), wait for its
    /// vhost-user socket.
    fn start(&self, signals: &Signals) -> Result<Started, RunError> {
        let socket = self.paths.socket();
        // A killed daemon leaves its socket file behind: its successor's shows it is ready.
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(self.path);
        cmd.args(&self.args);
        prepare_child(&mut cmd, Vec::new());
        log::info!(
            "starting the daemon: {} --config {}",
            self.path.display(),
            self.paths.daemon_config().display()
        );
        let child = cmd.spawn().map_err(|err| RunError::SpawnDaemon {
            path: self.path.to_path_buf(),
            err,
        })?;
        let mut daemon = Started {
            what: "the daemon",
            child,
            status: None,
        };
        let fd_socket = self.paths.fd_socket();
        let sock_err = |err| RunError::Listen {
            path: fd_socket.clone(),
            err,
        };
        // The hand-over: the iommufd first, then the devices in plan order.
        let mut conn = None;
        wait_for(
            "connect for the fd hand-over",
            signals,
            &mut daemon,
            || match self.listener.accept() {
                Ok((s, _)) => {
                    conn = Some(s);
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(err) => Err(sock_err(err)),
            },
        )?;
        let conn = conn.ok_or(RunError::Timeout("connect for the fd hand-over"))?;
        conn.set_nonblocking(false).map_err(sock_err)?;
        conn.set_read_timeout(Some(START_TIMEOUT))
            .map_err(sock_err)?;
        fdpass::send(&conn, &self.msg, &self.fds).map_err(RunError::Handover)?;
        drop(conn);
        log::info!(
            "the daemon (pid {}) took /dev/iommu and {} device fd(s)",
            daemon.child.id(),
            self.fds.len() - 1
        );
        let pid_file = self.paths.daemon_pid();
        std::fs::write(&pid_file, format!("{}\n", daemon.child.id())).map_err(|err| {
            RunError::Write {
                path: pid_file,
                err,
            }
        })?;
        wait_for("create its vhost-user socket", signals, &mut daemon, || {
            Ok(socket.exists())
        })?;
        Ok(daemon)
    }
}

/// Start `vhost-user-iommu proxy` (the daemon binary) between QEMU and the daemon; wait for
/// its socket.
fn start_proxy(
    daemon_path: &Path,
    paths: &RunPaths,
    signals: &Signals,
) -> Result<Started, RunError> {
    let socket = paths.vm_socket();
    let mut cmd = Command::new(daemon_path);
    cmd.arg("proxy")
        .arg("--socket")
        .arg(&socket)
        .arg("--backend")
        .arg(paths.socket());
    prepare_child(&mut cmd, Vec::new());
    log::info!(
        "starting the proxy: {} proxy --socket {} --backend {}",
        daemon_path.display(),
        socket.display(),
        paths.socket().display()
    );
    let child = cmd.spawn().map_err(|err| RunError::SpawnDaemon {
        path: daemon_path.to_path_buf(),
        err,
    })?;
    let mut proxy = Started {
        what: "the proxy",
        child,
        status: None,
    };
    wait_for("create its socket", signals, &mut proxy, || {
        Ok(socket.exists())
    })
    .map_err(|e| match e {
        RunError::DaemonExited { status, .. } => RunError::ProxyExited(status),
        e => e,
    })?;
    Ok(proxy)
}

fn exit_code(st: ExitStatus) -> i32 {
    st.code().or(st.signal().map(|s| 128 + s)).unwrap_or(1)
}

/// Runs one VM: returns QEMU's exit code (128 + N when QEMU or the launcher got signal N; 1
/// when the daemon died first).
pub fn launch(l: &Launch) -> Result<i32, LaunchError> {
    // First, so it is dropped last: a signal during the clean-up waits until it is done.
    let signals = Signals::block();
    let cfg = read_config(&l.config)?;
    let given_viot = match &cfg.viot {
        None => None,
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| RunError::ReadViot {
                path: p.clone(),
                err: e.to_string(),
            })?;
            Some(Viot::parse(&bytes).map_err(|e| RunError::ReadViot {
                path: p.clone(),
                err: e.to_string(),
            })?)
        }
    };
    let plan = Plan::new(&cfg, given_viot)?;
    let paths = RunPaths {
        dir: cfg.run_dir.clone(),
        qemu_root: cfg.qemu_root.clone(),
    };
    let viot_file = cfg.viot.clone().unwrap_or_else(|| paths.viot());
    // Paths QEMU must see, checked before anything starts.
    paths.for_qemu(&paths.socket())?;
    paths.for_qemu(&viot_file)?;
    let (qemu_prog, qemu_rest) = l.qemu.split_first().ok_or(RunError::NoQemu)?;
    let qemu_path = resolve_program(Path::new(qemu_prog)).ok_or_else(|| RunError::NotFound {
        what: "QEMU",
        name: qemu_prog.to_string_lossy().into_owned(),
        hint: "; give its path or put it on $PATH",
    })?;
    let daemon_path = resolve_daemon(l.daemon.as_deref().or(cfg.daemon.as_deref()))?;

    // The host side: fails before anything is written or started.
    let iommufd: OwnedFd = host::open_iommufd(&l.roots)?;
    let devices: Vec<OpenDevice> = plan
        .devices
        .iter()
        .map(|d| host::open_device(&l.roots, d.host))
        .collect::<Result<_, _>>()?;

    let mut files = RunFiles { files: Vec::new() };
    let _lock = open_run_dir(&paths, &mut files)?;
    if cfg.viot.is_none() {
        write_file(&mut files, paths.viot(), &plan.viot.to_bytes())?;
    }
    write_file(
        &mut files,
        paths.daemon_config(),
        daemon_config(&plan, &paths, cfg.restart).as_bytes(),
    )?;
    for s in [paths.socket(), paths.control(), paths.fd_socket()] {
        let _ = std::fs::remove_file(&s);
        files.files.push(s);
    }
    let listener = UnixListener::bind(paths.fd_socket()).map_err(|err| RunError::Listen {
        path: paths.fd_socket(),
        err,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|err| RunError::Listen {
            path: paths.fd_socket(),
            err,
        })?;

    let mut fds = vec![iommufd.as_fd()];
    fds.extend(devices.iter().map(|d| d.fd.as_fd()));
    let mut args: Vec<OsString> = vec!["--config".into(), paths.daemon_config().into()];
    args.extend(cfg.daemon_args.iter().map(OsString::from));
    let start = DaemonStart {
        path: &daemon_path,
        args,
        paths: &paths,
        listener: &listener,
        msg: fdpass::Message {
            version: 1,
            iommufd: Some(0),
            devices: plan
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| fdpass::DeviceFd {
                    endpoint: d.endpoint,
                    fd: i + 1,
                })
                .collect(),
        },
        fds,
    };
    files.files.push(paths.daemon_pid());
    if cfg.restart {
        // Left by a previous launch that did not end cleanly: not this VM's state.
        let _ = std::fs::remove_dir_all(paths.state_dir());
        let _ = std::fs::remove_file(paths.vm_socket());
        files.files.push(paths.vm_socket());
    }
    let _state = StateDir(cfg.restart.then(|| paths.state_dir()));
    let mut daemon = start.start(&signals)?;
    let mut starts = VecDeque::from([Instant::now()]);
    let mut proxy = if cfg.restart {
        Some(start_proxy(&daemon_path, &paths, &signals)?)
    } else {
        None
    };

    let raw: Vec<RawFd> = devices.iter().map(|d| d.fd.as_raw_fd()).collect();
    let socket = if cfg.restart {
        paths.vm_socket()
    } else {
        paths.socket()
    };
    let args = qemu_args(
        &plan,
        &paths,
        &socket,
        &viot_file,
        iommufd.as_raw_fd(),
        &raw,
    )?;
    let mut cmd = Command::new(&qemu_path);
    cmd.args(qemu_rest).args(&args);
    let mut inherit = raw.clone();
    inherit.push(iommufd.as_raw_fd());
    prepare_child(&mut cmd, inherit);
    log::info!(
        "starting QEMU: {} ... {}",
        qemu_path.display(),
        args.join(" ")
    );
    let child = cmd.spawn().map_err(|err| RunError::SpawnQemu {
        path: qemu_path.clone(),
        err,
    })?;
    let mut qemu = Started {
        what: "QEMU",
        child,
        status: None,
    };

    let code = loop {
        if let Some(st) = qemu.try_wait()? {
            log::info!("QEMU exited ({st})");
            break exit_code(st);
        }
        if let Some(st) = proxy.as_mut().map(Started::try_wait).transpose()?.flatten() {
            log::error!(
                "the proxy exited ({st}): QEMU lost its vhost-user connection; stopping QEMU"
            );
            qemu.stop();
            break 1;
        }
        match signals.poll(Duration::from_millis(200)) {
            Some(libc::SIGUSR1) if cfg.restart => {
                log::info!(
                    "SIGUSR1: stopping the daemon; it is started again from {}",
                    daemon_path.display()
                );
                daemon.stop();
                // Asked for: the start it replaces does not count towards the limit.
                starts.pop_back();
            }
            Some(libc::SIGUSR1) => log::warn!("SIGUSR1: ignored (restart = false)"),
            Some(sig) => {
                log::info!("signal {sig}: stopping QEMU and the daemon");
                qemu.stop();
                break 128 + sig;
            }
            None => {}
        }
        if let Some(st) = daemon.try_wait()? {
            if !cfg.restart {
                log::error!("the daemon exited ({st}) while QEMU runs; stopping QEMU");
                qemu.stop();
                break 1;
            }
            starts.retain(|t| t.elapsed() < RESTART_WINDOW);
            if starts.len() >= RESTART_BURST {
                log::error!(
                    "the daemon exited ({st}); it was started {} times within {} s: giving up, stopping QEMU",
                    starts.len(),
                    RESTART_WINDOW.as_secs()
                );
                qemu.stop();
                break 1;
            }
            log::warn!("the daemon exited ({st}) while QEMU runs; starting it again (the proxy keeps QEMU's connection)");
            match start.start(&signals) {
                Ok(d) => daemon = d,
                Err(RunError::Signal(sig)) => {
                    log::info!("signal {sig} while the daemon starts: stopping QEMU");
                    qemu.stop();
                    break 128 + sig;
                }
                Err(e) => {
                    log::error!("cannot start the daemon again: {e}; stopping QEMU");
                    qemu.stop();
                    break 1;
                }
            }
            starts.push_back(Instant::now());
        }
    };
    drop(qemu);
    if let Some(mut p) = proxy.take() {
        p.stop();
    }
    if let Some(st) = daemon.stop() {
        log::info!("the daemon exited ({st})");
    }
    Ok(code)
}

/// The daemon's state directory, removed when the launch ends (after the daemon).
struct StateDir(Option<PathBuf>);

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
