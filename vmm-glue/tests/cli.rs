//! The `vhost-user-iommu-glue` binary as a user runs it.
// Test helpers outside #[test] functions: a failed setup step should abort the test.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn glue(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vhost-user-iommu-glue"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vui-glue-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn viot_endpoint_and_qemu_args() {
    let viot = tmp("ok.viot");
    let v = viot.to_str().unwrap();
    let out = glue(&[
        "viot",
        "--iommu",
        "0000:00:03.0",
        "--pci-range",
        "0000:00:00.0-00:02.7@0x1000",
        "--pci-range",
        "0000:00:04.0-00:1f.7@0x2000",
        "--out",
        v,
    ]);
    assert!(out.status.success(), "{out:?}");
    let bytes = std::fs::read(&viot).unwrap();
    assert_eq!(&bytes[..4], b"VIOT");
    assert_eq!(bytes.len(), 48 + 16 + 2 * 24);

    let out = glue(&["endpoint", "--viot", v, "0000:00:05.1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (0x2000 + 9).to_string()
    );

    let out = glue(&[
        "qemu-args",
        "--socket",
        "/tmp/x y.sock",
        "--viot",
        v,
        "--memory",
        "1G",
    ]);
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("memory-backend-memfd,id=mem,size=1G,share=on -m 1G"),
        "{line}"
    );
    assert!(
        line.contains("'socket,id=vuiommu,path=/tmp/x y.sock'"),
        "{line}"
    );
    assert!(
        line.contains("virtio-id=23,num_vqs=2,config_size=40,bus=pcie.0,addr=0x3"),
        "{line}"
    );

    let out = glue(&[
        "qemu-args",
        "--socket",
        "/s",
        "--viot",
        v,
        "--format",
        "lines",
    ]);
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 12, "{lines:?}");
    assert_eq!(lines[10], "-acpitable");
}

#[test]
fn user_errors_say_what_to_fix() {
    let viot = tmp("bad.viot");
    let v = viot.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["viot", "--iommu", "0000:00:03.0", "--out", v],
            "--pci-range",
        ),
        (
            &[
                "viot",
                "--iommu",
                "0000:00:03.0",
                "--pci-range",
                "0000:00:05.0-00:04.0",
                "--out",
                v,
            ],
            "ends before it starts",
        ),
        (
            &[
                "viot",
                "--iommu",
                "0000:00:03.0",
                "--pci-range",
                "0000:00:00.0-00:04.0",
                "--pci-range",
                "0000:00:04.0-00:05.0@0x100",
                "--out",
                v,
            ],
            "overlap",
        ),
        (
            &[
                "qemu-args",
                "--socket",
                "/s",
                "--viot",
                "/nonexistent/viot.bin",
            ],
            "create it with",
        ),
        (
            &[
                "endpoint",
                "--viot",
                "/nonexistent/viot.bin",
                "0000:00:04.0",
            ],
            "create it with",
        ),
    ];
    for (args, want) in cases {
        let out = glue(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }

    // A table whose IOMMU sits elsewhere than the device address is refused.
    let ok = tmp("at4.viot");
    let o = ok.to_str().unwrap();
    assert!(glue(&[
        "viot",
        "--iommu",
        "0000:00:04.0",
        "--pci-range",
        "0000:00:00.0-00:1f.7",
        "--out",
        o
    ])
    .status
    .success());
    let out = glue(&[
        "qemu-args",
        "--socket",
        "/s",
        "--viot",
        o,
        "--iommu-addr",
        "0x3",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use the same address"));

    // A corrupted table is refused.
    let mut bytes = std::fs::read(&ok).unwrap();
    bytes[60] ^= 0xff;
    std::fs::write(&viot, &bytes).unwrap();
    let out = glue(&[
        "qemu-args",
        "--socket",
        "/s",
        "--viot",
        v,
        "--iommu-addr",
        "0x4",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum"),
        "{out:?}"
    );
}

/// docs/man/vhost-user-iommu-glue.1 (installed by the Debian package) is what the binary
/// generates.
#[test]
fn the_committed_man_page_is_up_to_date() {
    let out = glue(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH vhost-user-iommu-glue"), "{page}");
    assert!(page.contains("qemu\\-args"), "subcommands listed");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/man/vhost-user-iommu-glue.1"
    ))
    .unwrap_or_default();
    assert!(
        committed == page,
        "docs/man/vhost-user-iommu-glue.1 is stale: regenerate it with \
         `cargo run -p vhost-user-iommu-glue -- man > docs/man/vhost-user-iommu-glue.1`"
    );
}

/// `qemu-args --endpoints`: a VIOT that puts endpoints behind the IOMMU that the daemon does not
/// serve is refused (the guest driver would stop probing at the first one), naming them and the
/// `--endpoints` to use; and the socket is looked for where it is on this machine.
#[test]
fn qemu_args_checks_the_viot_against_the_daemons_endpoints() {
    let viot = tmp("eps.viot");
    let v = viot.to_str().unwrap();
    let out = glue(&[
        "viot",
        "--iommu",
        "0000:00:03.0",
        "--pci-range",
        "0000:00:04.0-00:05.7",
        "--out",
        v,
    ]);
    assert!(out.status.success(), "{out:?}");
    let args = |extra: &[&str]| {
        let mut a = vec!["qemu-args", "--socket", "/nonexistent.sock", "--viot", v];
        a.extend_from_slice(extra);
        glue(&a)
    };
    let out = args(&["--endpoints", "0-35"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("endpoints 32-47"), "{err}");
    assert!(err.contains("--endpoints 32-47"), "{err}");
    for ok in ["32-47", "any", "0-100"] {
        let out = args(&["--endpoints", ok]);
        assert!(out.status.success(), "{ok}: {out:?}");
    }
    // The socket as QEMU sees it is not looked for when the VIOT comes from elsewhere too
    // (a chroot); --socket-local is.
    let warn = |out: &Output| String::from_utf8_lossy(&out.stderr).contains("does not exist yet");
    assert!(warn(&args(&[])));
    assert!(!warn(&args(&["--viot-local", v])));
    let here = tmp("here.sock");
    std::fs::write(&here, "").unwrap();
    assert!(!warn(&args(&["--socket-local", here.to_str().unwrap()])));
    assert!(warn(&args(&["--socket-local", "/also/nonexistent.sock"])));
}
