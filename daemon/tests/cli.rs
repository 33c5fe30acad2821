//! The configuration file, `--check-config` and the generated man page, through the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-iommu");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the daemon binary")
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vui-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

fn check(path: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec![
        "--config",
        path.to_str().expect("utf-8 path"),
        "--check-config",
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_a_valid_file_and_flags_override_it() {
    let p = temp_file(
        "good.toml",
        r#"
socket = "/run/vui/vm1.sock"
page-size-mask = "0xfffffffffffff000"
input-range = "0-0xffffffffff"
endpoints = "0-255"
reserved-regions = ["0xfee00000-0xfeefffff:msi"]
probe-size = 512
bypass = true
max-mappings = 1000
"#,
    );
    let (code, v, err) = check(&p, &[]);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(v["socket"], "/run/vui/vm1.sock");
    assert_eq!(v["input-range"], "0x0-0xffffffffff");
    assert_eq!(v["endpoints"], "0-255");
    assert_eq!(v["bypass"], true);
    assert_eq!(v["max-mappings"], 1000);
    assert_eq!(v["seccomp"], true);

    let (code, v, err) = check(
        &p,
        &[
            "--max-mappings",
            "5",
            "--bypass=false",
            "--socket",
            "/tmp/other.sock",
            "--no-seccomp",
        ],
    );
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(v["max-mappings"], 5);
    assert_eq!(v["bypass"], false);
    assert_eq!(v["socket"], "/tmp/other.sock");
    assert_eq!(v["seccomp"], false);
    // Untouched keys still come from the file.
    assert_eq!(v["endpoints"], "0-255");
}

#[test]
fn check_config_rejects_bad_files_naming_the_key() {
    for (name, text, needle) in [
        (
            "unknown.toml",
            "socket = \"/a\"\nmax-mapings = 5\n",
            "max-mapings",
        ),
        ("type.toml", "probe-size = \"lots\"\n", "key `probe-size`"),
        ("syntax.toml", "socket = \n", "config file"),
        (
            "invalid.toml",
            "input-range = \"0x1000-0x1fff\"\npage-size-mask = 0x10000\n",
            "key `input-range`",
        ),
    ] {
        let p = temp_file(name, text);
        let (code, _, err) = check(&p, &[]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
        assert!(err.contains("configuration invalid"), "{name}: {err}");
    }
    // A missing file.
    let out = run(&["--config", "/nonexistent/vui.toml", "--check-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vui.toml"));
    // A bad flag on top of a good file is reported as the flag's.
    let p = temp_file("ok.toml", "probe-size = 512\n");
    let (code, _, err) = check(&p, &["--max-mappings", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--max-mappings"), "{err}");
}

#[test]
fn running_without_any_socket_is_an_error() {
    let p = temp_file("nosock.toml", "probe-size = 512\n");
    let out = run(&["--config", p.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no vhost-user socket"), "{err}");
}

#[test]
fn the_committed_man_page_is_up_to_date() {
    let out = run(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).expect("utf-8 man page");
    assert!(page.contains(".TH vhost-user-iommu"));
    for opt in [
        "config",
        "check\\-config",
        "socket",
        "user",
        "no\\-seccomp",
        "max\\-mappings",
    ] {
        assert!(
            page.contains(&format!("\\-\\-{opt}")),
            "man page lacks --{opt}"
        );
    }
    let committed_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/man/vhost-user-iommu.1"
    );
    let committed = std::fs::read_to_string(committed_path).unwrap_or_default();
    assert!(
        committed == page,
        "docs/man/vhost-user-iommu.1 is stale: regenerate it with \
         `cargo run -p vhost-user-iommu -- man > docs/man/vhost-user-iommu.1`"
    );
}

#[test]
fn ctl_watch_follows_invalidations() {
    use vhost_user_iommu_tests::proto::MAP_F_READ;
    let d = vhost_user_iommu_tests::Daemon::start(&[]);
    let mut dev = d.connect();
    let watch = Command::new(BIN)
        .args(["ctl", "--control-socket"])
        .arg(&d.control)
        .args(["--json", "watch", "--count", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start ctl watch");
    // The subscription exists once the daemon counts it; wait for it through the log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !d.stderr().contains("invalidation subscriber added") {
        assert!(
            std::time::Instant::now() < deadline,
            "watch did not subscribe"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(dev.attach(1, 3), 0);
    assert_eq!(dev.map(1, 0x10000, 0x1ffff, 0x10000, MAP_F_READ), 0);
    assert_eq!(dev.unmap(1, 0, 0xfffff), 0);
    let out = watch.wait_with_output().expect("ctl watch output");
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["scope"], "endpoint");
    assert_eq!(lines[0]["endpoint"], 3);
    assert_eq!(lines[1]["scope"], "range");
    assert_eq!(lines[1]["domain"], 1);
    assert_eq!(lines[1]["endpoints"], serde_json::json!([3]));
    assert_eq!(lines[1]["start"], 0);
    assert_eq!(lines[1]["end"], 0xfffff);
    // The watcher is gone: the next invalidation finds out, and that is not a warning.
    assert_eq!(dev.attach(1, 4), 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !d.stderr().contains("invalidation subscriber left") {
        assert!(std::time::Instant::now() < deadline, "{}", d.stderr());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!d.stderr().contains("WARN"), "{}", d.stderr());
}

/// The example in docs/OPERATORS.md is a valid config file, as written and with every
/// commented-out key turned on.
#[test]
fn the_documented_example_config_is_valid() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/OPERATORS.md"))
        .expect("read docs/OPERATORS.md");
    let start = doc.find("```toml\n").expect("a toml example") + "```toml\n".len();
    let example = &doc[start..start + doc[start..].find("```").expect("end of the example")];
    let all_on: String = example
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            // Commented-out settings (`# key = ...`, `# [table]`), not prose comments.
            Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let p = temp_file("doc-example.toml", example);
    let (code, v, err) = check(&p, &[]);
    assert_eq!(code, 0, "{err}\n{example}");
    assert_eq!(v["endpoints"], "0-255");
    // With every setting on, the example names host devices this machine does not have:
    // --check-config says so, for each of them, and for nothing else.
    let p = temp_file("doc-all-on.toml", &all_on);
    let (code, v, err) = check(&p, &[]);
    assert_eq!(code, 1, "{err}\n{all_on}");
    assert_eq!(v["valid"], false, "{v}");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("[iommufd] endpoint 3: vfio = \"/dev/vfio/devices/vfio2\""));
    assert!(errors[1].starts_with("[iommufd] endpoint 4: pci = \"0000:01:00.0\""));
    // The same with selftest mocks in their place is valid, every setting read.
    let mocks = all_on
        .replace("vfio = \"/dev/vfio/devices/vfio2\"", "mock = true")
        .replace("pci = \"0000:01:00.0\"", "mock = true");
    let p = temp_file("doc-all-on2.toml", &mocks);
    let (code, v, err) = check(&p, &[]);
    assert_eq!(code, 0, "{err}\n{mocks}");
    assert_eq!(v["endpoints"], "0-255");
    assert_eq!(v["socket"], "/run/vui/vm1.sock");
    assert_eq!(v["user"], "vhost-user-iommu");
    assert_eq!(v["seccomp"], true);
    assert!(v["backend"]["iommufd"].is_object(), "{v}");
}

/// `--socket-user`, `--socket-group`, `--socket-mode` (and their config keys): the vhost-user
/// socket the daemon binds has that owner, group and mode (stat), and a bad name stops the
/// start with a message naming the option.
#[test]
fn socket_owner_group_and_mode_are_applied() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::time::{Duration, Instant};
    let dir = std::env::temp_dir().join(format!("vui-cli-sockown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("vm.sock");
    // SAFETY: geteuid/getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // As root: another owner and group (numeric ids without entries are taken as such, the
    // group from the file); otherwise our own group, which needs no privilege.
    let (user_args, owner, group) = if euid == 0 {
        (vec!["--socket-user", "4000123"], 4_000_123, 4_000_124)
    } else {
        (vec![], euid, egid)
    };
    let config = temp_file(
        "sockown.toml",
        &format!("socket-group = \"{group}\"\nsocket-mode = \"0600\"\n"),
    );
    let mut args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--socket".to_string(),
        sock.display().to_string(),
        "--socket-mode".to_string(),
        "0660".to_string(),
        "--no-seccomp".to_string(),
    ];
    args.extend(user_args.iter().map(ToString::to_string));
    let mut child = Command::new(BIN)
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let ctl = dir.join("vm.sock.ctl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctl.exists() {
        if Instant::now() > deadline || child.try_wait().expect("try_wait").is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("no socket: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let md = std::fs::symlink_metadata(&sock).expect("stat the socket");
    let _ = child.kill();
    let _ = child.wait();
    assert!(md.file_type().is_socket());
    // The flag's mode wins over the file's; the file's group applies.
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (owner, group, 0o660),
        "socket owner/group/mode"
    );
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&ctl);

    let out = run(&[
        "--socket",
        sock.to_str().expect("utf-8"),
        "--socket-group",
        "no-such-group-vui",
        "--no-seccomp",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--socket-group \"no-such-group-vui\": group"),
        "{err}"
    );
    assert!(!sock.exists(), "no socket left behind");
    // --check-config looks them up too.
    let p = temp_file("sockown-bad.toml", "socket-group = \"no-such-group-vui\"\n");
    let (code, v, err) = check(&p, &["--socket-user", "no-such-user-vui"]);
    assert_eq!(code, 1, "{err}");
    let errors = v["errors"].to_string();
    assert!(
        errors.contains("--socket-user \\\"no-such-user-vui\\\": no such user"),
        "{errors}"
    );
    let out = run(&["--socket", "/tmp/x.sock", "--socket-mode", "rw"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses a bad mode");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--default-config`: read when the `--config` file does not exist (the packaged unit's
/// fallback to /etc/vhost-user-iommu/default.toml), ignored when it does.
#[test]
fn default_config_is_read_when_the_vm_file_is_missing() {
    let default = temp_file("default.toml", "probe-size = 1024\n");
    let vm = temp_file("vm-own.toml", "probe-size = 2048\n");
    let missing = vm.with_file_name("vm-missing.toml");
    let (code, v, err) = check(
        &missing,
        &["--default-config", default.to_str().expect("utf-8")],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["probe-size"], 1024);
    let (code, v, err) = check(&vm, &["--default-config", default.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["probe-size"], 2048);
}

/// The config the Debian package installs as /etc/vhost-user-iommu/default.toml is valid, and
/// every key it shows (commented out) is a real key with a valid value.
#[test]
fn the_packaged_default_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/default.toml");
    let (code, _, err) = check(Path::new(path), &[]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(path).expect("read default.toml");
    // Uncomment every `# key = value` line: still valid.
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.contains(" = ") && !l.starts_with(' '))
        .map(|l| format!("{}\n", l.split("  #").next().unwrap_or(l).trim_end()))
        .collect();
    assert!(uncommented.contains("socket-mode"), "{uncommented}");
    // --check-config looks the socket's owner and group up: use ones every host has.
    let uncommented = uncommented
        .replace(
            "socket-user = \"vhost-user-iommu\"",
            "socket-user = \"root\"",
        )
        .replace("socket-group = \"kvm\"", "socket-group = \"root\"");
    let p = temp_file("default-uncommented.toml", &uncommented);
    let (code, v, err) = check(&p, &[]);
    assert_eq!(code, 0, "{uncommented}\n{err}");
    assert_eq!(v["socket-mode"], "0660");
}

/// An unknown socket user and an unknown socket group are both reported in one run.
#[test]
fn check_config_reports_both_unknown_socket_owners() {
    let p = temp_file(
        "owners.toml",
        "socket-user = \"no-such-user-vui\"\nsocket-group = \"no-such-group-vui\"\n",
    );
    let (code, v, err) = check(&p, &["--socket", "/tmp/vui-owners.sock"]);
    assert_eq!(code, 1, "{err}");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("no-such-user-vui")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("no-such-group-vui")),
        "{errors:?}"
    );
}
