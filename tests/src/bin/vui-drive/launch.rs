//! The launcher's part: /dev/iommu, the daemon's configuration, and the fd hand-over
//! (docs/IOMMUFD.md, `fd-socket`) through which the daemon gets our iommufd (and devices), so
//! that the object ids it reports can be checked here.

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use vhost_user_iommu_tests::launcher::hand_over;
use vhost_user_iommu_tests::Daemon;

/// Two mock devices, endpoints 1 and 2.
pub const MOCK_DEVICES: &str = "[{ endpoint = 1, mock = true }, { endpoint = 2, mock = true }]";
/// The hand-over message sending only the iommufd (fd 0).
pub const IOMMUFD_ONLY: &str = "{\"version\":1,\"iommufd\":0}\n";

/// A new iommufd.
pub fn open_iommufd() -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/iommu")?;
    Ok(OwnedFd::from(f))
}

/// This run's directory for sockets and configs: `$TMPDIR/vui-drive-<tag><pid>`.
pub fn work_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vui-drive-{tag}{}", std::process::id()))
}

/// Write a configuration of the iommufd backend with `devices` (a TOML list), taking the
/// iommufd from the launcher on `fd_socket` if given.
pub fn write_config(path: &Path, fd_socket: Option<&Path>, devices: &str) -> std::io::Result<()> {
    let socket = fd_socket
        .map(|s| format!("fd-socket = \"{}\"\n", s.display()))
        .unwrap_or_default();
    std::fs::write(
        path,
        format!("backend = \"iommufd\"\n[iommufd]\n{socket}devices = {devices}\n"),
    )
}

/// Start a daemon on `config` (then `args`) and hand it `fds` with `msg` through the launcher
/// socket `launcher`; returns it with its answer. `fds` stay open (they are the caller's).
pub fn start_handed_over(
    launcher: &Path,
    config: &Path,
    msg: &str,
    fds: &[RawFd],
    args: &[&str],
) -> (Daemon, Result<String, String>) {
    let _ = std::fs::remove_file(launcher);
    let listener = match UnixListener::bind(launcher) {
        Ok(l) => l,
        Err(e) => panic!("bind {}: {e}", launcher.display()),
    };
    let handover = hand_over(listener, msg.to_string(), fds.to_vec());
    let config = config.display().to_string();
    let mut all = vec!["--config", &config];
    all.extend_from_slice(args);
    let daemon = Daemon::start(&all);
    let answer = handover
        .join()
        .unwrap_or_else(|_| Err("hand-over thread panicked".into()));
    (daemon, answer)
}
