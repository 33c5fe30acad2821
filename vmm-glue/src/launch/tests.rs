//! The launcher's plan (VIOT, endpoints, daemon configuration, QEMU arguments) and its refusals
//! before anything is started, on a fake host (sysfs and /dev in a temporary directory).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::host::tests::FakeHost;
use super::host::{self, HostError};
use super::run::{launch, Launch, RunError};
use super::*;

fn config(text: &str) -> LaunchConfig {
    toml::from_str(text).unwrap()
}

const TWO: &str = r#"
run-dir = "/srv/root/run/vm1"
memory = "1G"
qemu-root = "/srv/root"
devices = [
  { host = "0000:01:00.0", guest = "00:05.0" },
  { host = "0000:02:00.0", guest = "0000:00:06.0" },
]
"#;

#[test]
fn the_viot_covers_exactly_the_passthrough_devices() {
    let plan = Plan::new(&config(TWO), None).unwrap();
    let a = |s: &str| s.parse::<PciAddress>().unwrap();
    assert_eq!(plan.viot.iommu, a("00:03.0"));
    assert_eq!(
        plan.devices.iter().map(|d| d.endpoint).collect::<Vec<_>>(),
        vec![0x28, 0x30]
    );
    for f in 0..=0xffu16 {
        let addr = PciAddress::from_bdf(0, f);
        let want = [a("00:05.0"), a("00:06.0")].contains(&addr);
        assert_eq!(plan.viot.endpoint_of(addr).is_some(), want, "{addr}");
    }
    assert_eq!(plan.endpoints(), "40,48");
    // The written table parses back to the same description.
    assert_eq!(Viot::parse(&plan.viot.to_bytes()).unwrap(), plan.viot);
}

#[test]
fn daemon_config_and_qemu_arguments() {
    let cfg = config(TWO);
    let plan = Plan::new(&cfg, None).unwrap();
    let paths = RunPaths {
        dir: cfg.run_dir.clone(),
        qemu_root: cfg.qemu_root.clone(),
    };
    assert!(cfg.restart, "restart is the default");
    let text = daemon_config(&plan, &paths, false);
    let t: toml::Table = toml::from_str(&text).unwrap();
    assert!(t.get("state-dir").is_none());
    let with_state: toml::Table = toml::from_str(&daemon_config(&plan, &paths, true)).unwrap();
    assert_eq!(
        with_state["state-dir"].as_str(),
        Some("/srv/root/run/vm1/state")
    );
    assert_eq!(t["backend"].as_str(), Some("iommufd"));
    assert_eq!(t["endpoints"].as_str(), Some("40,48"));
    assert_eq!(
        t["socket"].as_str(),
        Some("/srv/root/run/vm1/vhost-user.sock")
    );
    let devs = t["iommufd"]["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[1]["endpoint"].as_integer(), Some(48));
    assert_eq!(devs[1]["fd"].as_bool(), Some(true));
    assert_eq!(devs[1]["bind"].as_bool(), Some(false));
    assert_eq!(
        t["iommufd"]["fd-socket"].as_str(),
        Some("/srv/root/run/vm1/fd.sock")
    );

    let args = qemu_args(&plan, &paths, &paths.socket(), &paths.viot(), 5, &[7, 9]).unwrap();
    let proxied = qemu_args(&plan, &paths, &paths.vm_socket(), &paths.viot(), 5, &[7]).unwrap();
    assert!(proxied.join(" ").contains("path=/run/vm1/vm.sock"));
    let joined = args.join(" ");
    for want in [
        "-object memory-backend-memfd,id=mem,size=1G,share=on",
        "-chardev socket,id=vuiommu,path=/run/vm1/vhost-user.sock",
        "addr=0x3",
        "-acpitable file=/run/vm1/viot.bin",
        "-object iommufd,id=vui-iommufd,fd=5",
        "-device vfio-pci,id=vui-hostdev0,fd=7,iommufd=vui-iommufd,bus=pcie.0,addr=0x5",
        "-device vfio-pci,id=vui-hostdev1,fd=9,iommufd=vui-iommufd,bus=pcie.0,addr=0x6",
    ] {
        assert!(joined.contains(want), "{want} not in {joined}");
    }
    // A run directory outside QEMU's root cannot work.
    let outside = RunPaths {
        dir: PathBuf::from("/run/vm1"),
        qemu_root: cfg.qemu_root.clone(),
    };
    let e = qemu_args(
        &plan,
        &outside,
        &outside.socket(),
        &outside.viot(),
        5,
        &[7, 9],
    )
    .unwrap_err();
    assert!(e.to_string().contains("outside qemu-root"), "{e}");
}

#[test]
fn refuses_guest_addresses_it_cannot_place() {
    let bad = |devices: &str, want: &str| {
        let cfg = config(&format!("run-dir = \"/r\"\ndevices = [{devices}]\n"));
        let e = Plan::new(&cfg, None).unwrap_err().to_string();
        assert!(e.contains(want), "{devices}: {e}");
    };
    bad(r#"{ host = "01:00.0", guest = "01:00.0" }"#, "pcie.0");
    bad(
        r#"{ host = "01:00.0", guest = "00:05.1" }"#,
        "single functions",
    );
    bad(r#"{ host = "01:00.0", guest = "00:03.0" }"#, "virtio-iommu");
    bad(r#"{ host = "01:00.0", guest = "00:00.0" }"#, "host bridge");
    bad(
        r#"{ host = "01:00.0", guest = "00:05.0" }, { host = "02:00.0", guest = "00:05.0" }"#,
        "used twice",
    );
    bad(
        r#"{ host = "01:00.0", guest = "00:05.0" }, { host = "01:00.0", guest = "00:06.0" }"#,
        "listed twice",
    );
    bad(
        r#"{ host = "01:00.0", guest = "nonsense" }"#,
        "guest address `nonsense`",
    );
    let e = Plan::new(&config("run-dir = \"/r\"\n"), None).unwrap_err();
    assert!(e.to_string().contains("no [[devices]]"), "{e}");
    assert!(toml::from_str::<LaunchConfig>("run-dir = \"/r\"\nbogus = 1\n").is_err());
}

#[test]
fn a_given_viot_must_cover_every_guest_address() {
    let cfg = config(
        "run-dir = \"/r\"\nviot = \"/r/v.bin\"\ndevices = [{ host = \"01:00.0\", guest = \"00:05.0\" }]\n",
    );
    let iommu = "00:03.0".parse().unwrap();
    let other = Viot::new(iommu, vec!["0000:00:06.0-00:07.7".parse().unwrap()]).unwrap();
    let e = Plan::new(&cfg, Some(other)).unwrap_err();
    assert!(matches!(e, LaunchError::OutsideViot { .. }), "{e}");
    assert!(e.to_string().contains("0000:00:05.0"), "{e}");
    let covering = Viot::new(iommu, vec!["0000:00:04.0-00:07.7@0x100".parse().unwrap()]).unwrap();
    let plan = Plan::new(&cfg, Some(covering)).unwrap();
    assert_eq!(plan.devices[0].endpoint, 0x100 + 8);
    let elsewhere = Viot::new(
        "00:02.0".parse().unwrap(),
        vec!["0000:00:04.0-00:07.7".parse().unwrap()],
    )
    .unwrap();
    let e = Plan::new(&cfg, Some(elsewhere)).unwrap_err();
    assert!(e.to_string().contains("same address"), "{e}");
}

/// A launch on a fake host whose daemon is a script that leaves a mark when it runs: every
/// refusal here must come before anything starts.
struct Attempt {
    host: FakeHost,
    config: PathBuf,
    mark: PathBuf,
    daemon: PathBuf,
}

impl Attempt {
    fn new(tag: &str, extra: &str) -> Attempt {
        let host = FakeHost::new(tag);
        let mark = host.dir.join("daemon-ran");
        let daemon = host.dir.join("fake-daemon");
        std::fs::write(&daemon, format!("#!/bin/sh\ntouch {}\n", mark.display())).unwrap();
        std::fs::set_permissions(&daemon, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = host.dir.join("vm.toml");
        std::fs::write(
            &config,
            format!(
                "run-dir = \"{}\"\n{extra}devices = [{{ host = \"0000:01:00.0\", guest = \"00:05.0\" }}]\n",
                host.dir.join("run").display()
            ),
        )
        .unwrap();
        Attempt {
            host,
            config,
            mark,
            daemon,
        }
    }

    fn run(&self, qemu: &str) -> LaunchError {
        let l = Launch {
            config: self.config.clone(),
            daemon: Some(self.daemon.clone()),
            qemu: vec![qemu.into(), "-nographic".into()],
            roots: self.host.roots.clone(),
        };
        let e = launch(&l).unwrap_err();
        assert!(!self.mark.exists(), "the daemon was started: {e}");
        assert!(!self.host.dir.join("run").exists(), "run dir written: {e}");
        e
    }

    /// The device's lock is free: no copy of the cdev file is open anywhere.
    fn device_free(&self) {
        host::open_device(&self.host.roots, "0000:01:00.0".parse().unwrap()).unwrap();
    }
}

fn sh() -> &'static str {
    "/bin/sh"
}

#[test]
fn device_not_on_vfio_pci_nothing_started() {
    let a = Attempt::new("l-notvfio", "");
    a.host.iommu();
    a.host.device("0000:01:00.0", Some("nvme"), 3, None);
    let e = a.run(sh());
    assert!(
        matches!(e, LaunchError::Host(HostError::NotVfio { .. })),
        "{e}"
    );
}

#[test]
fn no_dev_iommu_nothing_started_nothing_left_open() {
    let a = Attempt::new("l-noiommu", "");
    a.host.device("0000:01:00.0", Some("vfio-pci"), 3, Some(0));
    let e = a.run(sh());
    assert!(
        matches!(e, LaunchError::Host(HostError::NoIommufd { .. })),
        "{e}"
    );
    a.device_free();
}

#[test]
fn second_launcher_for_the_same_device() {
    let a = Attempt::new("l-busy", "");
    a.host.iommu();
    a.host.device("0000:01:00.0", Some("vfio-pci"), 3, Some(0));
    let first = host::open_device(&a.host.roots, "0000:01:00.0".parse().unwrap()).unwrap();
    let e = a.run(sh());
    assert!(
        matches!(e, LaunchError::Host(HostError::Busy { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("another launcher"), "{e}");
    drop(first);
    a.device_free();
}

#[test]
fn guest_address_outside_the_given_viot() {
    let a = Attempt::new("l-viot", "");
    let viot_path = a.host.dir.join("v.bin");
    let v = Viot::new(
        "00:03.0".parse().unwrap(),
        vec!["0000:00:06.0-00:06.7".parse().unwrap()],
    )
    .unwrap();
    std::fs::write(&viot_path, v.to_bytes()).unwrap();
    let text = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(
        &a.config,
        format!("viot = \"{}\"\n{text}", viot_path.display()),
    )
    .unwrap();
    a.host.iommu();
    a.host.device("0000:01:00.0", Some("vfio-pci"), 3, Some(0));
    let e = a.run(sh());
    assert!(matches!(e, LaunchError::OutsideViot { .. }), "{e}");
}

#[test]
fn qemu_or_daemon_that_cannot_start_nothing_started() {
    let a = Attempt::new("l-noqemu", "");
    a.host.iommu();
    a.host.device("0000:01:00.0", Some("vfio-pci"), 3, Some(0));
    let missing = a.host.dir.join("no-such-qemu");
    let e = a.run(missing.to_str().unwrap());
    assert!(
        matches!(e, LaunchError::Run(RunError::NotFound { what: "QEMU", .. })),
        "{e}"
    );
    // Not executable: the same.
    let plain = a.host.dir.join("vm.toml");
    let e = a.run(plain.to_str().unwrap());
    assert!(e.to_string().contains("QEMU"), "{e}");
    let l = Launch {
        config: a.config.clone(),
        daemon: Some(Path::new("/nonexistent/vhost-user-iommu").into()),
        qemu: vec![sh().into()],
        roots: a.host.roots.clone(),
    };
    let e = launch(&l).unwrap_err();
    assert!(e.to_string().contains("--daemon"), "{e}");
    a.device_free();
}

#[test]
fn emulated_devices_only_when_asked() {
    let cfg = config(
        "run-dir = \"/r\"\nemulated = [\"00:07.0\"]\ndevices = [{ host = \"01:00.0\", guest = \"00:05.0\" }]\n",
    );
    let plan = Plan::new(&cfg, None).unwrap();
    assert_eq!(plan.emulated, vec![("00:07.0".parse().unwrap(), 0x38)]);
    assert_eq!(plan.endpoints(), "40,56");
    // Without asking, the VIOT holds the passthrough device only.
    let plain = Plan::new(
        &config("run-dir = \"/r\"\ndevices = [{ host = \"01:00.0\", guest = \"00:05.0\" }]\n"),
        None,
    )
    .unwrap();
    assert_eq!(plain.endpoints(), "40");
    let clash = config(
        "run-dir = \"/r\"\nemulated = [\"00:05.0\"]\ndevices = [{ host = \"01:00.0\", guest = \"00:05.0\" }]\n",
    );
    assert!(Plan::new(&clash, None).is_err());
}
