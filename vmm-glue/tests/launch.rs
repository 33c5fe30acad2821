//! `vhost-user-iommu-glue launch` as a process, on a fake host (sysfs and /dev in a temporary
//! directory, cdevs as plain files), with a fake daemon (python3: receives the hand-over with
//! SCM_RIGHTS like the daemon, reports the inodes it got, creates its vhost-user socket) and a
//! fake QEMU (sh: records its arguments and where each `fd=N` points). Checks the order, the
//! fds each side gets, and that nothing is left running or open afterwards (the cdev's lock is
//! free only when every copy of the file is closed).
// Test helpers outside #[test] functions: a failed setup step should abort the test.
#![allow(clippy::unwrap_used)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FAKE_DAEMON: &str = r#"#!/usr/bin/env python3
import json, os, re, signal, socket, sys
if sys.argv[1] == "proxy":
    # `vhost-user-iommu proxy --socket VM --backend DAEMON`: make the VMM's socket, wait.
    l = socket.socket(socket.AF_UNIX)
    l.bind(sys.argv[sys.argv.index("--socket") + 1])
    with open(os.environ["FAKE_DAEMON_REPORT"] + ".proxy", "w") as f:
        f.write("%d %s\n" % (os.getpid(), sys.argv[sys.argv.index("--backend") + 1]))
    while True:
        signal.pause()
cfg = open(sys.argv[sys.argv.index("--config") + 1]).read()
def get(key):
    return re.search(r'^%s = "(.*)"$' % re.escape(key), cfg, re.M).group(1)
mode = os.environ.get("FAKE_DAEMON", "")
if mode == "exit-early":
    sys.exit(3)
s = socket.socket(socket.AF_UNIX)
s.connect(get("fd-socket"))
msg, fds, _, _ = socket.recv_fds(s, 4096, 32)
while not msg.endswith(b"\n"):
    msg += s.recv(4096)
report = {"pid": os.getpid(), "message": json.loads(msg),
          "inodes": [os.fstat(fd).st_ino for fd in fds]}
s.sendall(b'{"ok":true}\n')
s.close()
with open(os.environ["FAKE_DAEMON_REPORT"], "w") as f:
    json.dump(report, f)
with open(os.environ["FAKE_DAEMON_REPORT"] + ".starts", "a") as f:
    f.write("%d\n" % os.getpid())
starts = len(open(os.environ["FAKE_DAEMON_REPORT"] + ".starts").read().split())
l = socket.socket(socket.AF_UNIX)
l.bind(get("socket"))
if mode == "die-later" or (mode == "die-once" and starts == 1):
    import time
    while not os.path.exists(os.environ["FAKE_QEMU_REPORT"] + ".fds"):
        time.sleep(0.05)
    time.sleep(0.3)
    sys.exit(4)
while True:
    signal.pause()
"#;

const FAKE_QEMU: &str = r#"#!/bin/sh
out=$FAKE_QEMU_REPORT
echo $$ >"$out.pid"
for a in "$@"; do
    echo "$a" >>"$out.args"
    case "$a" in
        *fd=*) n=${a#*fd=}; n=${n%%,*}; readlink "/proc/$$/fd/$n" >>"$out.fds" ;;
    esac
done
[ -n "$FAKE_QEMU_SLEEP" ] && exec sleep "$FAKE_QEMU_SLEEP"
exit "${FAKE_QEMU_EXIT:-0}"
"#;

struct Host {
    dir: PathBuf,
}

impl Host {
    fn new(tag: &str) -> Host {
        let dir = std::env::temp_dir().join(format!("vui-launch-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dev = dir.join("sys/bus/pci/devices/0000:01:00.0");
        std::fs::create_dir_all(dev.join("vfio-dev/vfio0")).unwrap();
        std::fs::create_dir_all(dir.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
        symlink(dir.join("sys/bus/pci/drivers/vfio-pci"), dev.join("driver")).unwrap();
        std::fs::create_dir_all(dir.join("dev/vfio/devices")).unwrap();
        std::fs::write(dir.join("dev/vfio/devices/vfio0"), b"").unwrap();
        std::fs::write(dir.join("dev/iommu"), b"").unwrap();
        for (name, text) in [("fake-daemon", FAKE_DAEMON), ("fake-qemu", FAKE_QEMU)] {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Host { dir }
    }

    /// The launcher's configuration for run directory `run`; FAKE_RESTART=false in `env`
    /// sets `restart = false`.
    fn config(&self, run: &str, env: &[(&str, &str)]) -> PathBuf {
        let p = self.dir.join(format!("{run}.toml"));
        let restart = env.contains(&("FAKE_RESTART", "false"));
        std::fs::write(
            &p,
            format!(
                "run-dir = \"{}\"\n{}devices = [{{ host = \"0000:01:00.0\", guest = \"00:05.0\" }}]\n",
                self.dir.join(run).display(),
                if restart { "restart = false\n" } else { "" }
            ),
        )
        .unwrap();
        p
    }

    fn command(&self, run: &str, env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vhost-user-iommu-glue"));
        c.arg("launch")
            .arg("--config")
            .arg(self.config(run, env))
            .arg("--daemon")
            .arg(self.dir.join("fake-daemon"))
            .arg("--sysfs-root")
            .arg(self.dir.join("sys"))
            .arg("--dev-root")
            .arg(self.dir.join("dev"))
            .arg("--")
            .arg(self.dir.join("fake-qemu"))
            .arg("-nographic")
            .env("RUST_LOG", "info")
            .env(
                "FAKE_DAEMON_REPORT",
                self.dir.join(format!("{run}.daemon.json")),
            )
            .env("FAKE_QEMU_REPORT", self.dir.join(format!("{run}.qemu")))
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn launch(&self, run: &str, env: &[(&str, &str)]) -> Output {
        self.command(run, env).output().unwrap()
    }

    fn ino(&self, rel: &str) -> u64 {
        std::fs::metadata(self.dir.join(rel)).unwrap().ino()
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.join(rel)).unwrap_or_default()
    }

    /// No process holds the cdev: its exclusive lock can be taken.
    fn device_free(&self) -> bool {
        let f: File = OpenOptions::new()
            .read(true)
            .open(self.dir.join("dev/vfio/devices/vfio0"))
            .unwrap();
        // SAFETY: flock on an fd this function owns.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    /// Only the run directory itself is left (every file the launch wrote is gone).
    fn run_dir_empty(&self, run: &str) -> Vec<String> {
        std::fs::read_dir(self.dir.join(run))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn gone(pid: &str) -> bool {
    let pid: i32 = pid.trim().parse().unwrap();
    // SAFETY: kill with signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) != 0 }
}

fn report(host: &Host, run: &str) -> serde_json::Value {
    serde_json::from_str(&host.read(&format!("{run}.daemon.json"))).unwrap()
}

#[test]
fn daemon_gets_the_fds_then_qemu_then_both_stop() {
    let h = Host::new("ok");
    let out = h.launch("run", &[("FAKE_QEMU_EXIT", "7")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "QEMU's status is the launcher's: {err}"
    );
    // The daemon got /dev/iommu, then the cdev, for endpoint 0x28 (guest 00:05.0).
    let r = report(&h, "run");
    assert_eq!(
        r["message"],
        serde_json::json!({"version":1,"iommufd":0,"devices":[{"endpoint":40,"fd":1}]})
    );
    assert_eq!(
        r["inodes"],
        serde_json::json!([h.ino("dev/iommu"), h.ino("dev/vfio/devices/vfio0")])
    );
    // QEMU got the same files at the numbers its arguments name.
    let fds = h.read("run.qemu.fds");
    let want = format!(
        "{}\n{}\n",
        h.dir.join("dev/iommu").display(),
        h.dir.join("dev/vfio/devices/vfio0").display()
    );
    assert_eq!(fds, want, "{err}");
    let args = h.read("run.qemu.args");
    assert!(args.starts_with("-nographic\n"), "{args}");
    for want in [
        "vhost-user-test-device-pci,chardev=vuiommu,virtio-id=23",
        &format!("file={}", h.dir.join("run/viot.bin").display()),
        "iommufd=vui-iommufd,bus=pcie.0,addr=0x5",
    ] {
        assert!(args.contains(want), "{want} not in {args}");
    }
    // Everything stopped and closed, every file removed.
    assert!(gone(&r["pid"].to_string()), "the daemon still runs");
    assert!(h.device_free(), "a copy of the cdev is still open");
    assert_eq!(h.run_dir_empty("run"), Vec::<String>::new());
}

#[test]
fn a_daemon_that_dies_first_means_no_qemu() {
    let h = Host::new("early");
    let out = h.launch("run", &[("FAKE_DAEMON", "exit-early")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the daemon exited"), "{err}");
    assert!(!h.dir.join("run.qemu.pid").exists(), "QEMU was started");
    assert!(h.device_free());
    assert_eq!(h.run_dir_empty("run"), Vec::<String>::new());
}

#[test]
fn sigterm_stops_qemu_and_the_daemon_and_a_second_launcher_is_refused() {
    let h = Host::new("sig");
    let mut first: Child = h
        .command("run", &[("FAKE_QEMU_SLEEP", "60")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while !h.dir.join("run.qemu.fds").exists() {
        assert!(Instant::now() < until, "QEMU did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    // Same device, another run directory: refused, and the first VM is untouched.
    let out = h.launch("run2", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by another launcher"), "{err}");
    assert!(!h.dir.join("run2.daemon.json").exists());
    let qemu_pid = h.read("run.qemu.pid");
    assert!(!gone(&qemu_pid));
    assert!(!h.device_free());

    // SAFETY: kill on our own child.
    unsafe { libc::kill(i32::try_from(first.id()).unwrap(), libc::SIGTERM) };
    let st = first.wait().unwrap();
    assert_eq!(st.code(), Some(128 + libc::SIGTERM));
    assert!(gone(&qemu_pid), "QEMU still runs");
    assert!(
        gone(&report(&h, "run")["pid"].to_string()),
        "the daemon still runs"
    );
    assert!(h.device_free());
    assert_eq!(h.run_dir_empty("run"), Vec::<String>::new());
}

#[test]
fn a_daemon_that_dies_under_a_running_qemu_stops_it() {
    let h = Host::new("late");
    let out = h.launch(
        "run",
        &[
            ("FAKE_DAEMON", "die-later"),
            ("FAKE_QEMU_SLEEP", "60"),
            ("FAKE_RESTART", "false"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the daemon exited"), "{err}");
    assert!(err.contains("stopping QEMU"), "{err}");
    assert!(gone(&h.read("run.qemu.pid")), "QEMU still runs");
    assert!(h.device_free());
    assert_eq!(h.run_dir_empty("run"), Vec::<String>::new());
}

#[test]
fn without_restart_qemu_attaches_to_the_daemon_directly() {
    let h = Host::new("direct");
    let out = h.launch("run", &[("FAKE_RESTART", "false")]);
    assert_eq!(out.status.code(), Some(0));
    let args = h.read("run.qemu.args");
    assert!(args.contains("run/vhost-user.sock"), "{args}");
    assert!(!h.dir.join("run.daemon.json.proxy").exists(), "a proxy ran");
    assert!(!h.read("run/daemon.toml").contains("state-dir"));
}

#[test]
fn a_daemon_that_dies_under_a_running_qemu_is_started_again_behind_the_proxy() {
    let h = Host::new("again");
    let mut child: Child = h
        .command(
            "run",
            &[("FAKE_DAEMON", "die-once"), ("FAKE_QEMU_SLEEP", "60")],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while h.read("run.daemon.json.starts").lines().count() < 2 {
        assert!(Instant::now() < until, "the daemon was not started again");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    // QEMU was attached to the proxy, which serves the daemon's socket, and still runs.
    let qemu_pid = h.read("run.qemu.pid");
    assert!(!gone(&qemu_pid), "QEMU was stopped");
    let args = h.read("run.qemu.args");
    assert!(args.contains("run/vm.sock"), "{args}");
    let proxy = h.read("run.daemon.json.proxy");
    let (proxy_pid, backend) = proxy.trim().split_once(' ').unwrap();
    assert!(backend.ends_with("run/vhost-user.sock"), "{proxy}");
    // The daemon keeps its state in the run directory, and the second one got the same files.
    assert!(h.read("run/daemon.toml").contains("state-dir"));
    let r = report(&h, "run");
    assert_eq!(
        r["inodes"],
        serde_json::json!([h.ino("dev/iommu"), h.ino("dev/vfio/devices/vfio0")])
    );
    let starts = h.read("run.daemon.json.starts");
    let second = starts.lines().nth(1).unwrap();
    assert_eq!(h.read("run/daemon.pid").trim(), second);
    // SIGUSR1: the daemon is stopped and started again (an upgrade).
    // SAFETY: kill on our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGUSR1) };
    while h.read("run.daemon.json.starts").lines().count() < 3 {
        assert!(Instant::now() < until, "SIGUSR1 did not restart the daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone(second), "the daemon SIGUSR1 replaced still runs");
    assert!(!gone(&qemu_pid), "QEMU was stopped");
    // SAFETY: kill on our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let st = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(err.contains("starting it again"), "{err}");
    assert!(gone(&qemu_pid), "QEMU still runs");
    assert!(gone(proxy_pid), "the proxy still runs");
    assert!(
        gone(&report(&h, "run")["pid"].to_string()),
        "the daemon still runs"
    );
    assert!(h.device_free());
    assert_eq!(h.run_dir_empty("run"), Vec::<String>::new());
}

#[test]
fn a_daemon_that_keeps_dying_stops_the_vm() {
    let h = Host::new("crashloop");
    let out = h.launch(
        "run",
        &[("FAKE_DAEMON", "die-later"), ("FAKE_QEMU_SLEEP", "60")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("giving up, stopping QEMU"), "{err}");
    assert_eq!(h.read("run.daemon.json.starts").lines().count(), 5, "{err}");
    assert!(gone(&h.read("run.qemu.pid")), "QEMU still runs");
    assert!(h.device_free());
    assert_eq!(h.run_dir_empty("run"), Vec::<String>::new());
}
