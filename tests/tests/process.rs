//! Process behaviour: argument errors, unusable socket paths, signals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vhost_user_iommu_tests::daemon::{run_to_exit, TempDir};
use vhost_user_iommu_tests::proto::status::OK;
use vhost_user_iommu_tests::Daemon;

const T: Duration = Duration::from_secs(10);

fn assert_fails(args: &[&str], mention: &str) {
    let (st, err) = run_to_exit(args, T);
    let st = st.unwrap_or_else(|| panic!("{args:?}: daemon did not exit on its own"));
    assert!(
        !st.success(),
        "{args:?}: exit status {st}, expected failure"
    );
    assert!(
        st.code().is_some(),
        "{args:?}: killed by a signal ({st}), expected an exit code"
    );
    assert!(
        err.contains(mention),
        "{args:?}: message should mention {mention:?}; stderr was:\n{err}"
    );
}

#[test]
fn bad_flags_exit_non_zero_with_a_message() {
    let dir = TempDir::new();
    let sock = dir.path().join("sock");
    let sock = sock.to_str().unwrap();
    assert_fails(&["--socket", sock, "--no-such-flag"], "--no-such-flag");
    assert_fails(
        &["--socket", sock, "--page-size-mask", "0"],
        "page-size-mask",
    );
    assert_fails(
        &["--socket", sock, "--page-size-mask", "banana"],
        "page-size-mask",
    );
    assert_fails(
        &["--socket", sock, "--input-range", "0x2000-0x1000"],
        "input-range",
    );
    assert_fails(
        &["--socket", sock, "--domain-range", "10-1"],
        "domain-range",
    );
    assert_fails(
        &["--socket", sock, "--domain-range", "0-0x100000000"],
        "domain-range",
    );
    assert_fails(&["--socket", sock, "--endpoints", "x-y"], "endpoints");
    let (st, err) = run_to_exit(&[], T);
    let st = st.expect("exit without --socket");
    assert!(!st.success(), "no --socket: {st}");
    assert!(!err.trim().is_empty(), "no --socket: a message is required");
    assert!(
        !sock_exists(dir.path()),
        "a failed start must not leave a socket behind"
    );
}

fn sock_exists(dir: &std::path::Path) -> bool {
    dir.join("sock").exists()
}

#[test]
fn unusable_socket_path_exits_non_zero_naming_the_path() {
    let dir = TempDir::new();
    let missing = dir.path().join("no-such-dir").join("sock");
    let missing = missing.to_str().unwrap();
    assert_fails(&["--socket", missing], missing);
    // A path whose parent is a regular file.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("sock");
    let under_file = under_file.to_str().unwrap();
    assert_fails(&["--socket", under_file], under_file);
    // A path longer than sun_path.
    let long = format!("{}/{}", dir.path().display(), "s".repeat(120));
    assert_fails(&["--socket", &long], "s".repeat(20).as_str());
}

#[test]
fn sigterm_exits_zero_and_removes_the_socket() {
    let mut daemon = Daemon::start(&[]);
    let sock = daemon.socket.clone();
    daemon.signal(libc::SIGTERM);
    let st = daemon.wait_exit(T).expect("no exit within 10 s of SIGTERM");
    assert_eq!(
        st.code(),
        Some(0),
        "SIGTERM exit status {st}; stderr:\n{}",
        daemon.stderr()
    );
    assert!(!sock.exists(), "socket file {} left behind", sock.display());
}

#[test]
fn sigterm_with_a_connected_frontend() {
    let mut daemon = Daemon::start(&[]);
    let mut d = daemon.connect();
    assert_eq!(d.attach(1, 3), OK);
    let sock = daemon.socket.clone();
    daemon.signal(libc::SIGTERM);
    let st = daemon
        .wait_exit(T)
        .expect("no exit within 10 s of SIGTERM while connected");
    assert_eq!(
        st.code(),
        Some(0),
        "SIGTERM exit status {st}; stderr:\n{}",
        daemon.stderr()
    );
    assert!(!sock.exists(), "socket file {} left behind", sock.display());
    drop(d);
}

#[test]
fn sigint_exits_zero_and_removes_the_socket() {
    let mut daemon = Daemon::start(&[]);
    let sock = daemon.socket.clone();
    daemon.signal(libc::SIGINT);
    let st = daemon.wait_exit(T).expect("no exit within 10 s of SIGINT");
    assert_eq!(
        st.code(),
        Some(0),
        "SIGINT exit status {st}; stderr:\n{}",
        daemon.stderr()
    );
    assert!(!sock.exists(), "socket file {} left behind", sock.display());
}

#[test]
fn sigterm_right_after_the_socket_appears_still_cleans_up() {
    // Once the socket file exists, SIGTERM must end in a clean exit that removes it: a signal
    // arriving during the rest of the start-up must not kill the daemon with the default
    // action and leave the socket behind.
    use std::os::unix::fs::FileTypeExt;
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let bin = vhost_user_iommu_tests::daemon::binary();
    for round in 0..30 {
        let dir = TempDir::new();
        let sock = dir.path().join("sock");
        let ctl = dir.path().join("ctl");
        let mut child = Command::new(&bin)
            .arg("--socket")
            .arg(&sock)
            .arg("--control-socket")
            .arg(&ctl)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon");
        let deadline = Instant::now() + T;
        while !std::fs::metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
            assert!(Instant::now() < deadline, "round {round}: no socket");
            std::thread::yield_now();
        }
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("round {round}: no exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        assert_eq!(
            st.code(),
            Some(0),
            "round {round}: SIGTERM right after the socket appeared: {st}"
        );
        assert!(!sock.exists(), "round {round}: socket left behind");
        assert!(!ctl.exists(), "round {round}: control socket left behind");
    }
}
