//! Running the real `vhost-user-iommu` binary.

use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::control::Control;
use crate::device::{Device, Options};

/// Name of the daemon binary.
pub const BIN_NAME: &str = "vhost-user-iommu";

static BUILD_LOCK: Mutex<()> = Mutex::new(());
static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The target directory this test executable was built into
/// (`<target>/<profile>/deps/<test>-<hash>` -> `<target>/<profile>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a parent");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// Path of the daemon binary: `$VHOST_USER_IOMMU_BIN` if set, else `<target>/<profile>/vhost-user-iommu`,
/// built with `cargo build -p vhost-user-iommu` when it is missing or older than any source it
/// is built from ([`stale`]), so a test never runs a binary of older code.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VHOST_USER_IOMMU_BIN") {
        return PathBuf::from(p);
    }
    let dir = profile_dir();
    let bin = dir.join(BIN_NAME);
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if stale(&bin, &daemon_sources()) {
        // `<target>/<profile>` -> `<target>`.
        let target = dir.parent().expect("profile dir has a parent");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", BIN_NAME])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build for the daemon");
        assert!(
            st.success() && bin.exists(),
            "could not build {} (run `cargo build -p {BIN_NAME}` first)",
            bin.display()
        );
    }
    bin
}

/// The files the daemon binary is built from: the workspace manifests and lock file, and every
/// file under the crates it depends on (the daemon with its model and iommufd-sys crates, the
/// page-table and PASID crates).
fn daemon_sources() -> Vec<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut roots: Vec<PathBuf> = ["daemon", "pagetables", "pasid"]
        .iter()
        .map(|d| repo.join(d))
        .collect();
    roots.push(repo.join("Cargo.toml"));
    roots.push(repo.join("Cargo.lock"));
    roots
}

/// Whether `bin` is missing or older than a file under `roots` (directories are walked; a
/// `target` directory is skipped).
pub fn stale(bin: &Path, roots: &[PathBuf]) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    fn newer(path: &Path, than: SystemTime) -> bool {
        let Ok(md) = std::fs::symlink_metadata(path) else {
            return false;
        };
        if md.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                return false;
            }
            let Ok(entries) = std::fs::read_dir(path) else {
                return false;
            };
            return entries.flatten().any(|e| newer(&e.path(), than));
        }
        md.modified().is_ok_and(|m| m > than)
    }
    roots.iter().any(|r| newer(r, built))
}

/// A fresh private directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Create one.
    pub fn new() -> TempDir {
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("vuiommu-{}-{n}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_socket(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// A running daemon, killed and reaped on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// The control socket.
    pub control: PathBuf,
    /// Where the daemon's stderr goes.
    pub stderr_path: PathBuf,
    dir: TempDir,
}

impl Daemon {
    /// Start the daemon with `--socket <tmp>/sock --control-socket <tmp>/ctl` plus `extra`, and
    /// wait (bounded) until both sockets exist. Panics (showing stderr) if it does not come up.
    pub fn start(extra: &[&str]) -> Daemon {
        Self::spawn(extra, true, None)
    }

    /// Like [`Daemon::start`], with the soft limit of open files (RLIMIT_NOFILE) of the daemon
    /// set to `nofile` before it runs (the hard limit stays).
    pub fn start_with_nofile(extra: &[&str], nofile: u64) -> Daemon {
        Self::spawn(extra, true, Some(nofile))
    }

    /// Start the daemon with only `--socket <tmp>/sock` plus `extra`: the control socket is
    /// expected at its default place, `<tmp>/sock.ctl`.
    pub fn start_default_control(extra: &[&str]) -> Daemon {
        Self::spawn(extra, false, None)
    }

    fn spawn(extra: &[&str], explicit_control: bool, nofile: Option<u64>) -> Daemon {
        let dir = TempDir::new();
        let socket = dir.path().join("sock");
        let control = if explicit_control {
            dir.path().join("ctl")
        } else {
            dir.path().join("sock.ctl")
        };
        let stderr_path = dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path).expect("create stderr log");
        let mut cmd = Command::new(binary());
        cmd.arg("--socket").arg(&socket);
        if explicit_control {
            cmd.arg("--control-socket").arg(&control);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // If the test process dies without running Drop (killed by a runner's timeout, an
        // abort), the daemon must not outlive it. The signal follows the spawning thread, which
        // is the test's own thread that owns this Daemon.
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // getppid, getrlimit and setrlimit, all async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            let parent = libc::getpid();
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may already be gone: then we were reparented.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("test process exited"));
                }
                if let Some(soft) = nofile {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn daemon");
        let mut d = Daemon {
            child: Some(child),
            socket,
            control,
            stderr_path,
            dir,
        };
        d.wait_ready(Duration::from_secs(10));
        d
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            // Ready = both sockets exist and the control socket answers (by then the daemon
            // has finished starting up: signal handling, sandbox, serving threads).
            if is_socket(&self.socket)
                && is_socket(&self.control)
                && Control::connect(&self.control)
                    .ok()
                    .and_then(|mut c| c.request(&vhost_user_iommu_control::Request::Status).ok())
                    .is_some()
            {
                return;
            }
            if let Some(st) = self.try_wait() {
                panic!(
                    "daemon exited during start-up ({st}); stderr:\n{}",
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "daemon sockets did not appear within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The temp dir holding the sockets.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        let id = self.child.as_ref().expect("daemon running").id();
        i32::try_from(id).expect("pid fits i32")
    }

    /// Number of file descriptors the daemon has open (/proc/PID/fd).
    pub fn fd_count(&self) -> usize {
        crate::raw::fd_count(self.pid())
    }

    /// Send a signal to the daemon.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own, not yet reaped child.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({sig}) failed");
    }

    /// Non-blocking reap.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Wait (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Connect a frontend with default options.
    pub fn connect(&self) -> Device {
        self.connect_with(&Options::default())
    }

    /// Connect a frontend with the given options.
    pub fn connect_with(&self, opts: &Options) -> Device {
        Device::connect(&self.socket, opts).unwrap_or_else(|e| {
            panic!(
                "frontend setup failed: {e}\ndaemon stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// Open a control-socket connection.
    pub fn ctl(&self) -> Control {
        Control::connect(&self.control).expect("connect control socket")
    }

    /// Assert the daemon is still alive (a crash check after hostile input).
    pub fn assert_alive(&mut self) {
        if let Some(st) = self.try_wait() {
            panic!("daemon died ({st}); stderr:\n{}", self.stderr());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- daemon stderr ({}) ----\n{}",
                self.stderr_path.display(),
                self.stderr()
            );
        }
    }
}

/// Run the daemon binary with exactly `args` and wait (bounded) for it to exit on its own.
/// Returns the exit status (None if it had to be killed) and its stderr.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String) {
    let dir = TempDir::new();
    let err_path = dir.path().join("stderr.log");
    let stderr = File::create(&err_path).expect("create stderr log");
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn daemon");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status,
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, at: SystemTime) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        let f = File::create(path).expect("create");
        f.set_modified(at).expect("set mtime");
    }

    #[test]
    fn a_binary_older_than_any_source_is_stale() {
        let dir = TempDir::new();
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        let later = t0 + Duration::from_secs(60);
        let bin = dir.path().join("bin");
        let src = dir.path().join("src");
        touch(&src.join("a/b.rs"), t0);
        touch(&src.join("target/debug/new.rs"), later);
        assert!(stale(&bin, std::slice::from_ref(&src)), "missing binary");
        touch(&bin, t0 + Duration::from_secs(1));
        assert!(
            !stale(&bin, std::slice::from_ref(&src)),
            "newer than every source (target/ ignored)"
        );
        touch(&src.join("a/c.rs"), later);
        assert!(stale(&bin, &[src]), "a source edited after the build");
    }
}

/// `vhost-user-iommu proxy --socket SOCKET --backend BACKEND` (docs/STATE.md, "Restarting under
/// a running VM"), its stderr in `log`; killed and reaped on drop.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
    /// Where frontends connect.
    pub socket: PathBuf,
    log: PathBuf,
}

impl Proxy {
    /// Start the proxy and wait (bounded) for its socket. Panics if it does not come up.
    pub fn start(socket: &Path, backend: &Path, log: PathBuf) -> Proxy {
        let stderr = File::create(&log).expect("create the proxy's log");
        let child = Command::new(binary())
            .arg("proxy")
            .arg("--socket")
            .arg(socket)
            .arg("--backend")
            .arg(backend)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the proxy");
        let mut p = Proxy {
            child,
            socket: socket.to_owned(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_socket(socket) {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("the proxy exited ({st}): {}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "the proxy's socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    /// What the proxy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times it restored a daemon connection.
    pub fn restored(&self) -> usize {
        self.log().matches("daemon connection restored").count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Point `link` (a proxy's `--backend`) at `daemon`'s socket: each test daemon has its own
/// directory, the proxy one path.
pub fn point_at(link: &Path, daemon: &Daemon) -> std::io::Result<()> {
    match std::fs::remove_file(link) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(&daemon.socket, link)
}
