//! The systemd units and the daemon's systemd integration: `systemd-analyze verify`, socket
//! activation through `systemd-socket-activate`, readiness and watchdog notifications.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::HashSet;

use vhost_user_iommu::os::sandbox::{role_calls, Role};
use vhost_user_iommu_tests::daemon::TempDir;
use vhost_user_iommu_tests::{Control, Device, Options};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-iommu");
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd");

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed (apt-get install systemd)");
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = TempDir::new();
    for unit in [
        "vhost-user-iommu@.service",
        "vhost-user-iommu@.socket",
        "vhost-user-iommu-proxy@.service",
        "vhost-user-iommu-proxy@.socket",
    ] {
        let text = std::fs::read_to_string(Path::new(UNITS).join(unit)).expect("read unit");
        // verify checks that ExecStart= exists: point it at the binary under test.
        let text = text.replace("/usr/bin/vhost-user-iommu", BIN);
        std::fs::write(dir.path().join(unit), text).expect("write unit");
    }
    let out = Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg("--man=no")
        .arg(dir.path().join("vhost-user-iommu@vm1.service"))
        .arg(dir.path().join("vhost-user-iommu@vm1.socket"))
        .arg(dir.path().join("vhost-user-iommu-proxy@vm1.service"))
        .arg(dir.path().join("vhost-user-iommu-proxy@vm1.socket"))
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed:\n{stderr}");
    // Unknown keys and bad values are warnings, not failures: accept none.
    assert!(stderr.trim().is_empty(), "verify warned:\n{stderr}");

    // The check is not blind: a misspelt key is reported.
    let bad = std::fs::read_to_string(dir.path().join("vhost-user-iommu@.service"))
        .expect("read")
        .replace(
            "ProtectSystem=strict",
            "ProtectSystem=strict\nProtectSystm=yes",
        );
    std::fs::write(dir.path().join("vhost-user-iommu@.service"), bad).expect("write");
    let out = Command::new(tool("systemd-analyze"))
        .args(["verify", "--man=no"])
        .arg(dir.path().join("vhost-user-iommu@vm1.service"))
        .output()
        .expect("run systemd-analyze");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ProtectSystm"));
}

/// The system calls of a systemd syscall group, nested groups expanded.
fn expand_group(group: &str, seen: &mut HashSet<String>, out: &mut HashSet<String>) {
    if !seen.insert(group.to_string()) {
        return;
    }
    let listing = Command::new(tool("systemd-analyze"))
        .args(["syscall-filter", group])
        .output()
        .expect("systemd-analyze syscall-filter");
    assert!(listing.status.success(), "unknown group {group}");
    for line in String::from_utf8_lossy(&listing.stdout).lines().skip(1) {
        let item = line.trim();
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if item.starts_with('@') {
            expand_group(item, seen, out);
        } else {
            out.insert(item.to_string());
        }
    }
}

/// The service's own filter must let through every call the daemon's seccomp filters allow:
/// otherwise a thread doing its normal work gets EPERM under systemd only.
#[test]
fn unit_syscall_filter_allows_what_the_daemon_uses() {
    let unit = std::fs::read_to_string(Path::new(UNITS).join("vhost-user-iommu@.service"))
        .expect("read unit");
    let (mut allow, mut deny) = (HashSet::new(), HashSet::new());
    let mut seen = HashSet::new();
    for value in unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
    {
        let (set, list) = match value.strip_prefix('~') {
            Some(rest) => (&mut deny, rest),
            None => (&mut allow, value),
        };
        for item in list.split_whitespace() {
            if item.starts_with('@') {
                seen.clear();
                expand_group(item, &mut seen, set);
            } else {
                set.insert(item.to_string());
            }
        }
    }
    assert!(allow.len() > 100, "the unit has an allow list");
    let mut missing = Vec::new();
    for role in Role::ALL {
        for (name, _) in role_calls(role) {
            if !allow.contains(name) || deny.contains(name) {
                missing.push(format!("{role:?}: {name}"));
            }
        }
    }
    assert!(missing.is_empty(), "the unit forbids: {missing:?}");
}

/// `vhost-user-iommu systemd-dropin` writes a drop-in that allows exactly the configured VFIO
/// devices, and systemd reads it cleanly together with the unit.
#[test]
fn generated_device_dropin_verifies_with_the_unit() {
    let dir = TempDir::new();
    let config = dir.path().join("vm1.toml");
    std::fs::write(
        &config,
        "backend = \"iommufd\"\n[iommufd]\ndevices = [\n  { endpoint = 3, vfio = \"/dev/null\" },\n  { endpoint = 4, vfio = \"/dev/zero\" },\n]\n",
    )
    .expect("config");
    // The host has no VFIO device: a sysfs in which /dev/null (1:3) and /dev/zero (1:5) are
    // VFIO cdevs stands in. (A node that is not one is refused: the unit tests of unit.rs.)
    let sysfs = dir.path().join("sys");
    for dev in ["1:3", "1:5"] {
        let d = sysfs.join("dev/char").join(dev);
        std::fs::create_dir_all(&d).expect("fake sysfs");
        std::os::unix::fs::symlink("../../../class/vfio-dev", d.join("subsystem"))
            .expect("fake sysfs link");
    }
    let out = Command::new(BIN)
        .args(["systemd-dropin", "--sysfs"])
        .arg(&sysfs)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run systemd-dropin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dropin = String::from_utf8(out.stdout).expect("utf-8");
    let allows: Vec<&str> = dropin
        .lines()
        .filter(|l| l.starts_with("DeviceAllow="))
        .collect();
    assert_eq!(
        allows,
        ["DeviceAllow=/dev/null rw", "DeviceAllow=/dev/zero rw"]
    );
    for unit in ["vhost-user-iommu@.service", "vhost-user-iommu@.socket"] {
        let text = std::fs::read_to_string(Path::new(UNITS).join(unit)).expect("read unit");
        std::fs::write(
            dir.path().join(unit),
            text.replace("/usr/bin/vhost-user-iommu", BIN),
        )
        .expect("write unit");
    }
    let d = dir.path().join("vhost-user-iommu@vm1.service.d");
    std::fs::create_dir_all(&d).expect("drop-in dir");
    std::fs::write(d.join("devices.conf"), &dropin).expect("write drop-in");
    let out = Command::new(tool("systemd-analyze"))
        .args(["verify", "--man=no"])
        .arg(dir.path().join("vhost-user-iommu@vm1.service"))
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    // The drop-in is read: a bad line in it is reported.
    std::fs::write(
        d.join("devices.conf"),
        format!("{dropin}DeviceAlow=/dev/null rw\n"),
    )
    .expect("write drop-in");
    let out = Command::new(tool("systemd-analyze"))
        .args(["verify", "--man=no"])
        .arg(dir.path().join("vhost-user-iommu@vm1.service"))
        .output()
        .expect("run systemd-analyze");
    assert!(String::from_utf8_lossy(&out.stderr).contains("DeviceAlow"));
}

/// Fields of one native journal datagram (`KEY=value` lines, or `KEY`, a little-endian u64
/// length and the raw value).
fn journal_fields(mut d: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let Some(nl) = d.iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            d = &d[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &d[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().expect("length")) as usize;
            out.push((key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned()));
            d = &rest[8 + len + 1..];
        }
    }
    out
}

/// When stderr is the journal (JOURNAL_STREAM names it), the daemon logs natively with
/// structured fields. The journal socket is a stand-in bound by the test, mounted at
/// /run/systemd/journal in a private mount namespace of the daemon.
#[test]
fn logs_go_to_the_journal_with_fields() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for a private mount namespace (CI runs as root)");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new();
    let jdir = dir.path().join("journal");
    std::fs::create_dir_all(&jdir).expect("journal dir");
    let journal = UnixDatagram::bind(jdir.join("socket")).expect("bind journal socket");
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let stderr_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let md = stderr.metadata().expect("stat stderr");
    let sock = dir.path().join("sock");
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
         mount --bind {} /run/systemd/journal && exec {BIN} --socket {}",
        jdir.display(),
        sock.display()
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("JOURNAL_STREAM", format!("{}:{}", md.dev(), md.ino()))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start the daemon in a mount namespace");
    let mut act = Activated {
        child,
        stderr: stderr_path.clone(),
    };
    let mut buf = vec![0u8; 65536];
    let mut entries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !entries.iter().any(|f: &Vec<(String, String)>| {
            f.iter()
                .any(|(k, v)| k == "MESSAGE" && v.starts_with("serving virtio-iommu"))
        })
    {
        match journal.recv(&mut buf) {
            Ok(n) => entries.push(journal_fields(&buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("journal socket: {e}"),
        }
    }
    let _ = act.child.kill();
    let serving = entries
        .iter()
        .find(|f| {
            f.iter()
                .any(|(k, v)| k == "MESSAGE" && v.starts_with("serving virtio-iommu"))
        })
        .unwrap_or_else(|| panic!("no 'serving' entry in {entries:?}"));
    let field = |k: &str| {
        serving
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field("SYSLOG_IDENTIFIER"), Some("vhost-user-iommu"));
    // systemd-journal-logger maps log's Info to notice (5), Debug to info (6).
    assert_eq!(field("PRIORITY"), Some("5"), "info is notice");
    assert_eq!(field("VUI_VERSION"), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(field("TARGET"), Some("vhost_user_iommu::service::server"));
    assert!(field("CODE_FILE").is_some_and(|f| f.ends_with("server.rs")));
    assert!(field("CODE_LINE").is_some());
    // Nothing went to stderr: the journal got it all.
    let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(!err.contains("serving virtio-iommu"), "{err}");
}

fn is_socket(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Notification datagrams received within `timeout`, until `stop` says enough.
fn notifications(
    sock: &UnixDatagram,
    timeout: Duration,
    mut stop: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop(&got) && Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    got
}

struct Activated {
    child: Child,
    stderr: PathBuf,
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- daemon stderr ----\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
    }
}

#[test]
fn socket_activation_readiness_and_watchdog() {
    let dir = TempDir::new();
    let sock = dir.path().join("vm1.sock");
    let ctl = dir.path().join("vm1.sock.ctl");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    // The config names no socket: the listener must come from LISTEN_FDS, and the control
    // socket defaults to the inherited socket's path + ".ctl".
    let config = dir.path().join("vm1.toml");
    std::fs::write(&config, "endpoints = \"0-15\"\nmax-mappings = 100\n").expect("config");
    let stderr = dir.path().join("stderr.log");
    // `exec` keeps the shell's pid through systemd-socket-activate into the daemon, so
    // WATCHDOG_PID can name it.
    let script = format!(
        "exec {} -l {} -E NOTIFY_SOCKET={} -E WATCHDOG_USEC=200000 -E WATCHDOG_PID=$$ \
         -E RUST_LOG=info {BIN} --config {}",
        tool("systemd-socket-activate").display(),
        sock.display(),
        notify_path.display(),
        config.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("start systemd-socket-activate");
    let mut act = Activated { child, stderr };
    wait_for("the activation socket", Duration::from_secs(10), || {
        is_socket(&sock)
    });

    // The first connection makes systemd-socket-activate exec the daemon with the listener.
    let mut dev =
        Device::connect(&sock, &Options::default()).expect("frontend through the passed fd");
    assert_eq!(dev.attach(1, 3), 0, "ATTACH through the activated daemon");
    assert_eq!(
        dev.attach(1, 99),
        6,
        "endpoints from the config file apply (NOENT)"
    );

    let got = notifications(&notify, Duration::from_secs(10), |g| {
        g.iter().any(|m| m.lines().any(|l| l == "READY=1"))
    });
    assert!(
        got.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "no READY=1: {got:?}"
    );
    // Watchdog pings every WATCHDOG_USEC/2 = 100 ms.
    let got = notifications(&notify, Duration::from_secs(5), |g| {
        g.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3
    });
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "watchdog pings missing: {got:?}"
    );

    let mut c = Control::connect(&ctl).expect("control socket at SOCKET.ctl");
    let st = c.status();
    assert_eq!(st["connected"], true);
    assert_eq!(st["domains"], 1);
    drop(dev);

    // SIGTERM: exit 0, remove our control socket, leave the inherited one to its owner.
    let pid = i32::try_from(act.child.id()).expect("pid");
    // SAFETY: kill(2) on our own, not yet reaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = act.child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "daemon did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!ctl.exists(), "control socket left behind");
    assert!(
        is_socket(&sock),
        "the inherited socket is systemd's to remove"
    );
    let log = std::fs::read_to_string(&act.stderr).unwrap_or_default();
    assert!(log.contains("passed by the service manager"), "{log}");
}

/// The Debian package's description (`[package.metadata.deb]` of daemon/Cargo.toml, built by
/// `cargo deb -p vhost-user-iommu`): every asset that is not a build product exists, both
/// binaries are packaged, and systemd/ holds what cargo-deb's systemd support picks up by name
/// (the VM test `systemd` installs the result).
#[test]
fn the_debian_package_description_is_complete() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))
        .expect("read Cargo.toml")
        .parse()
        .expect("parse Cargo.toml");
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().expect("assets");
    let mut targets = Vec::new();
    for a in assets {
        let a = a.as_array().expect("asset triple");
        let (src, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
        if !src.starts_with("target/release/") {
            assert!(dir.join(src).is_file(), "asset {src} does not exist");
        }
        // A destination ending in / is a directory: the file keeps its name.
        if dest.ends_with('/') {
            targets.push(format!("{dest}{}", src.rsplit('/').next().unwrap()));
        } else {
            targets.push(dest.to_string());
        }
    }
    for want in [
        "usr/bin/vhost-user-iommu",
        "usr/bin/vhost-user-iommu-glue",
        "usr/share/man/man1/vhost-user-iommu.1",
        "usr/share/man/man1/vhost-user-iommu-glue.1",
        "etc/vhost-user-iommu/default.toml",
    ] {
        assert!(
            targets.iter().any(|t| t == want),
            "{want} not packaged: {targets:?}"
        );
    }
    let units = dir.join(
        deb["maintainer-scripts"]
            .as_str()
            .expect("maintainer-scripts"),
    );
    for f in [
        "vhost-user-iommu@.service",
        "vhost-user-iommu@.socket",
        "vhost-user-iommu.sysusers",
        "vhost-user-iommu.tmpfile",
        "vhost-user-iommu.postinst",
        "vhost-user-iommu.postrm",
    ] {
        assert!(
            units.join(f).is_file(),
            "{f} missing in {}",
            units.display()
        );
    }
    for script in ["vhost-user-iommu.postinst", "vhost-user-iommu.postrm"] {
        let text = std::fs::read_to_string(units.join(script)).expect("read script");
        assert!(text.contains("#DEBHELPER#"), "{script} lacks #DEBHELPER#");
    }
}
