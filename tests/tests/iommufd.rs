//! `--backend iommufd` start-up through the binary: configuration errors, the fd hand-over
//! socket (the launcher side written here from docs/IOMMUFD.md), and a clean exit when the
//! host cannot provide what is configured. (The backend itself runs against the kernel in the VM
//! tests `iommufd_mock` and `iommufd_vfio`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use vhost_user_iommu_tests::daemon::{run_to_exit, TempDir};
use vhost_user_iommu_tests::launcher::hand_over;

const T: Duration = Duration::from_secs(10);

fn fails_with(args: &[&str], mention: &str) {
    let (st, err) = run_to_exit(args, T);
    let st = st.expect("daemon did not exit");
    assert_eq!(st.code(), Some(1), "{args:?}: {st}; stderr:\n{err}");
    assert!(
        err.contains(mention),
        "{args:?}: stderr should mention {mention:?}:\n{err}"
    );
}

#[test]
fn start_up_errors_name_the_cause_and_leave_no_socket() {
    let dir = TempDir::new();
    let sock = dir.path().join("sock");
    let cfg = dir.path().join("vui.toml");
    std::fs::write(
        &cfg,
        "backend = \"iommufd\"\n[iommufd]\niommufd = \"/nonexistent/iommu\"\ndevices = [{ endpoint = 3, mock = true }]\n",
    )
    .unwrap();
    let (s, c) = (sock.to_str().unwrap(), cfg.to_str().unwrap());
    fails_with(&["--socket", s, "--config", c], "/nonexistent/iommu");
    assert!(!sock.exists(), "vhost-user socket left behind");
    assert!(
        !dir.path().join("sock.ctl").exists(),
        "control socket left behind"
    );
    // A host device for an endpoint the guest cannot have.
    fails_with(
        &["--socket", s, "--config", c, "--endpoints", "0-2"],
        "endpoint 3 has a host device but is not in --endpoints",
    );
    // The [iommufd] table needs the iommufd backend.
    fails_with(
        &["--socket", s, "--config", c, "--backend", "software"],
        "--backend iommufd",
    );
    // A usage error (clap): status 2.
    let (st, err) = run_to_exit(&["--socket", s, "--backend", "hardware"], T);
    assert_eq!(st.and_then(|s| s.code()), Some(2), "{err}");
    assert!(err.contains("hardware"), "{err}");
}

/// Run the daemon with `fd-socket`; the launcher thread sends `line` with `fds` and returns the
/// daemon's answer. Returns (answer, daemon stderr).
fn handover(line: &'static str, fds: Vec<std::fs::File>, extra_cfg: &str) -> (String, String) {
    let dir = TempDir::new();
    let launcher = dir.path().join("launcher.sock");
    let listener = UnixListener::bind(&launcher).unwrap();
    let cfg = dir.path().join("vui.toml");
    std::fs::write(
        &cfg,
        format!(
            "backend = \"iommufd\"\n[iommufd]\nfd-socket = \"{}\"\n{extra_cfg}",
            launcher.display()
        ),
    )
    .unwrap();
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let t = hand_over(listener, line.to_string(), raw);
    let sock = dir.path().join("sock");
    let (st, err) = run_to_exit(
        &[
            "--socket",
            sock.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(st.and_then(|s| s.code()), Some(1), "stderr:\n{err}");
    let answer = t.join().unwrap().unwrap();
    drop(fds);
    (answer, err)
}

fn devnull() -> std::fs::File {
    std::fs::File::open("/dev/null").unwrap()
}

#[test]
fn the_daemon_takes_the_handed_over_iommufd() {
    // /dev/null as the "iommufd": the daemon accepts the hand-over, then the first iommufd
    // ioctl on it fails, and the error says which call and why.
    let (answer, err) = handover("{\"version\":1,\"iommufd\":0}\n", vec![devnull()], "");
    assert_eq!(answer.trim(), "{\"ok\":true}");
    assert!(err.contains("IOMMU_IOAS_ALLOC"), "{err}");
    assert!(err.contains("Inappropriate ioctl"), "{err}");
}

#[test]
fn bad_hand_overs_are_refused_and_the_launcher_hears_why() {
    // An fd nobody asked for.
    let (answer, err) = handover(
        "{\"version\":1,\"iommufd\":0,\"devices\":[{\"endpoint\":5,\"fd\":1}]}\n",
        vec![devnull(), devnull()],
        "",
    );
    assert!(answer.contains("\"ok\":false"), "{answer}");
    assert!(err.contains("endpoint 5"), "{err}");
    // A device configured as `fd = true` that the launcher did not send.
    let (answer, err) = handover(
        "{\"version\":1,\"iommufd\":0}\n",
        vec![devnull()],
        "devices = [{ endpoint = 7, fd = true }]\n",
    );
    assert!(answer.contains("endpoint 7"), "{answer}");
    assert!(err.contains("endpoint 7"), "{err}");
    // Descriptors not named in the message.
    let (answer, err) = handover("{\"version\":1}\n", vec![devnull()], "");
    assert!(answer.contains("not named"), "{answer}");
    assert!(err.contains("not named"), "{err}");
    // Another protocol version.
    let (answer, _) = handover("{\"version\":2}\n", vec![], "");
    assert!(answer.contains("version 2"), "{answer}");
}
