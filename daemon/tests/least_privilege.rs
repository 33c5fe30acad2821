//! Least privilege in the running daemon: every thread runs under a seccomp filter while the
//! vhost-user worker, the control socket and the signal thread do their normal work; `--user`
//! switches the process to another user after the sockets are open (root only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vhost_user_iommu_control::Request as Ctl;
use vhost_user_iommu_tests::proto::{MAP_F_READ, MAP_F_WRITE};
use vhost_user_iommu_tests::Daemon;

/// (thread name, `Seccomp:` mode, `Seccomp_filters:` count) of every thread of `pid`.
fn thread_seccomp(pid: i32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task");
    for t in tasks {
        let t = t.expect("task entry").path();
        let is_main = t.file_name().and_then(|n| n.to_str()) == Some(&pid.to_string());
        let Ok(status) = std::fs::read_to_string(t.join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((
            if is_main {
                "main".to_string()
            } else {
                field("Name:")
            },
            field("Seccomp:").parse().unwrap_or(u32::MAX),
            field("Seccomp_filters:").parse().unwrap_or(0),
        ));
    }
    out
}

fn status_field(pid: i32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The normal path through every thread: a frontend doing requests (vhost-user handler and
/// worker threads), control-socket queries including a translation fault delivered on the
/// eventq, a reconnect, then SIGTERM (signal thread removes the sockets, exit 0).
fn exercise(d: &mut Daemon) -> vhost_user_iommu_tests::Device {
    let mut dev = d.connect();
    assert_eq!(dev.attach(1, 0), 0);
    assert_eq!(
        dev.map(1, 0x10_0000, 0x10_ffff, 0x20_0000, MAP_F_READ | MAP_F_WRITE),
        0
    );
    dev.post_event_buffers(4, 24);
    let mut c = d.ctl();
    assert_eq!(c.status()["mappings"], 1);
    let t = c.translate(0, 0x10_0010, "r");
    assert_eq!(t["outcome"], "translated");
    assert_eq!(t["phys"], 0x20_0010);
    let t = c.translate(0, 0x50_0000, "w");
    assert_eq!(t["outcome"], "fault");
    assert!(
        dev.wait_fault(Duration::from_secs(5)).is_some(),
        "fault record on the eventq"
    );
    assert_eq!(dev.unmap(1, 0x10_0000, 0x10_ffff), 0);
    let m = c.request(&Ctl::mappings(1)).expect("mappings");
    assert_eq!(m["mappings"].as_array().map(Vec::len), Some(0));
    drop(dev);
    // A second frontend after the first left.
    let mut dev = d.connect();
    assert_eq!(dev.attach(2, 1), 0);
    d.assert_alive();
    dev
}

#[test]
fn every_thread_is_filtered_and_the_normal_path_works() {
    let mut d = Daemon::start(&[]);
    // The second frontend stays connected: its handler and worker threads are listed.
    let _dev = exercise(&mut d);
    let threads = thread_seccomp(d.pid());
    assert!(threads.len() >= 4, "expected several threads: {threads:?}");
    for (name, mode, filters) in &threads {
        // Mode 2 = filter. Every thread has its role's filter; worker threads also carry the
        // main thread's, which they inherit.
        assert_eq!(
            *mode, 2,
            "thread {name} runs without a seccomp filter: {threads:?}"
        );
        assert!(*filters >= 1, "thread {name}: {threads:?}");
    }
    // vhost-user worker threads narrow the main filter they inherit with their own.
    let workers: Vec<_> = threads
        .iter()
        .filter(|(n, _, _)| n == "vring_worker")
        .collect();
    assert!(!workers.is_empty(), "no vring_worker thread: {threads:?}");
    for (n, _, filters) in workers {
        assert!(*filters >= 2, "{n}: {filters} filter(s): {threads:?}");
    }
    // So does the vhost-user message handler thread ("vhost-user-iommu", truncated to 15).
    let handler: Vec<_> = threads
        .iter()
        .filter(|(n, _, _)| n == "vhost-user-iomm")
        .collect();
    assert_eq!(handler.len(), 1, "{threads:?}");
    assert!(handler[0].2 >= 2, "{threads:?}");
    for role in ["signals", "control"] {
        assert!(
            threads.iter().any(|(n, _, _)| n == role),
            "no {role} thread: {threads:?}"
        );
    }
    assert_eq!(status_field(d.pid(), "NoNewPrivs:"), "1");

    d.signal(libc::SIGTERM);
    let st = d
        .wait_exit(Duration::from_secs(10))
        .expect("exit on SIGTERM");
    assert!(st.success(), "exit status {st}: {}", d.stderr());
    assert!(
        !d.socket.exists() && !d.control.exists(),
        "sockets not removed"
    );
    assert!(d.stderr().contains("seccomp filters installed"));
}

#[test]
fn no_seccomp_leaves_threads_unfiltered() {
    let mut d = Daemon::start(&["--no-seccomp"]);
    let _dev = d.connect();
    let threads = thread_seccomp(d.pid());
    assert!(threads.iter().all(|(_, mode, _)| *mode == 0), "{threads:?}");
    d.assert_alive();
}

#[test]
fn user_switch_when_root() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the privilege drop needs root (CI runs as root)");
        return;
    }
    let mut d = Daemon::start(&["--user", "nobody"]);
    let pid = d.pid();
    // Real, effective, saved and filesystem ids all switched; no supplementary groups.
    let nobody = "65534 65534 65534 65534";
    assert_eq!(status_field(pid, "Uid:"), nobody);
    assert_eq!(status_field(pid, "Gid:"), nobody);
    assert_eq!(status_field(pid, "Groups:"), "65534");
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    let _dev = exercise(&mut d);
    // Every thread switched, not just the main one.
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let status =
            std::fs::read_to_string(t.expect("task").path().join("status")).unwrap_or_default();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
        assert!(
            uid.ends_with("65534\t65534\t65534\t65534") || uid.is_empty(),
            "{uid}"
        );
    }
    d.signal(libc::SIGTERM);
    let st = d
        .wait_exit(Duration::from_secs(10))
        .expect("exit on SIGTERM");
    assert!(st.success(), "exit status {st}: {}", d.stderr());
}

#[test]
fn unknown_user_is_refused_before_serving() {
    let (st, err) = vhost_user_iommu_tests::daemon::run_to_exit(
        &[
            "--socket",
            "/tmp/vui-nouser.sock",
            "--user",
            "no-such-user-vui",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{err}");
    assert!(
        err.contains("no-such-user-vui") && err.contains("no such user"),
        "{err}"
    );
    assert!(
        !std::path::Path::new("/tmp/vui-nouser.sock").exists(),
        "socket left behind"
    );
}

/// A C shim, preloaded into the daemon: on the control thread's third `accept4` (after a second
/// client connected) it first makes a system call outside that thread's filter.
const SHIM: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static __thread int calls;

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    char name[17] = {0};
    prctl(PR_GET_NAME, name);
    if (strcmp(name, "control") == 0 && ++calls == 3)
        syscall(SYS_openat, AT_FDCWD, "/", O_RDONLY | O_DIRECTORY);
    return syscall(SYS_accept4, fd, addr, len, flags);
}
"#;

/// Start the daemon with the shim preloaded; returns the child and its socket paths.
fn start_with_shim(
    dir: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, std::path::PathBuf, std::path::PathBuf) {
    let src = dir.join("shim.c");
    let so = dir.join("shim.so");
    std::fs::write(&src, SHIM).expect("write shim");
    let st = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .expect("a C compiler (apt-get install gcc)");
    assert!(st.success(), "cannot build the shim");
    let sock = dir.join("sock");
    let ctl = dir.join("ctl");
    let child = std::process::Command::new(vhost_user_iommu_tests::daemon::binary())
        .arg("--socket")
        .arg(&sock)
        .arg("--control-socket")
        .arg(&ctl)
        .args(extra)
        .env("LD_PRELOAD", &so)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr"))
        .spawn()
        .expect("spawn daemon");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(sock.exists() && ctl.exists()) {
        assert!(std::time::Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, sock, ctl)
}

fn wait_child(c: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = c.try_wait().expect("try_wait") {
            return Some(st);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The real daemon, filters on: the frontend's requests and a first control request work; the
/// control thread's forbidden call then kills the process with SIGSYS. Without the filters the
/// same call is harmless and the daemon keeps serving.
#[test]
fn a_forbidden_call_in_the_running_daemon_kills_it() {
    use std::os::unix::process::ExitStatusExt;
    use vhost_user_iommu_tests::{Control, Device, Options};

    let dir = vhost_user_iommu_tests::daemon::TempDir::new();
    let (mut child, sock, ctl) = start_with_shim(dir.path(), &[]);
    let mut dev = Device::connect(&sock, &Options::default()).expect("frontend");
    assert_eq!(dev.attach(1, 0), 0);
    assert_eq!(dev.map(1, 0x1000, 0x1fff, 0x1000, MAP_F_READ), 0);
    let mut c = Control::connect(&ctl).expect("control");
    assert_eq!(c.status()["mappings"], 1, "first control client served");
    // A second client: the control thread accepts it and goes back to accept4, where the
    // shim's openat kills the process.
    let _c2 = std::os::unix::net::UnixStream::connect(&ctl).expect("second control client");
    let st = wait_child(&mut child).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the forbidden call did not kill the daemon")
    });
    assert_eq!(st.signal(), Some(libc::SIGSYS), "status {st}");
    drop(dev);

    // Same shim, no filters: the call is allowed, the daemon lives on.
    let dir = vhost_user_iommu_tests::daemon::TempDir::new();
    let (mut child, sock, ctl) = start_with_shim(dir.path(), &["--no-seccomp"]);
    let mut dev = Device::connect(&sock, &Options::default()).expect("frontend");
    let mut c = Control::connect(&ctl).expect("control");
    assert_eq!(c.status()["connected"], true);
    let _c2 = std::os::unix::net::UnixStream::connect(&ctl).expect("second control client");
    let mut c3 = Control::connect(&ctl).expect("third control client");
    assert_eq!(c3.status()["connected"], true);
    assert_eq!(c.status()["connected"], true);
    assert_eq!(dev.attach(1, 0), 0);
    assert!(child.try_wait().expect("try_wait").is_none(), "daemon died");
    let _ = child.kill();
    let _ = child.wait();
}
