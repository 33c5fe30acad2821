//! `backend` and the `[iommufd]` table of the config file.

use std::path::Path;

use super::iommufd::DeviceSource;
use super::{BackendConfig, BackendKind};
use crate::service::settings::{parse, resolve, Layer};

fn p() -> &'static Path {
    Path::new("vm.toml")
}

#[test]
fn iommufd_table_is_read() {
    let text = r#"
backend = "iommufd"
[iommufd]
iommufd = "/dev/iommu"
fd-socket = "/run/launcher.sock"
devices = [
  { endpoint = 8, vfio = "/dev/vfio/devices/vfio0" },
  { endpoint = 16, pci = "0000:00:04.0" },
  { endpoint = 24, fd = true },
  { endpoint = 32, mock = true },
  { endpoint = 40, fd = true, bind = false },
  { endpoint = 48, fd = true, bind = true },
]
"#;
    let s = resolve(Layer::default(), Some((p(), parse(p(), text).unwrap()))).unwrap();
    let BackendConfig::Iommufd(c) = s.backend else {
        panic!("not iommufd: {:?}", s.backend)
    };
    assert_eq!(
        c.fd_socket.as_deref(),
        Some(Path::new("/run/launcher.sock"))
    );
    assert_eq!(
        c.devices.into_iter().collect::<Vec<_>>(),
        vec![
            (8, DeviceSource::Vfio("/dev/vfio/devices/vfio0".into())),
            (16, DeviceSource::Pci("0000:00:04.0".into())),
            (24, DeviceSource::Passed),
            (32, DeviceSource::Mock),
            (40, DeviceSource::Shared),
            (48, DeviceSource::Passed),
        ]
    );
}

#[test]
fn backend_flag_and_defaults() {
    let s = resolve(Layer::default(), None).unwrap();
    assert_eq!(s.backend, BackendConfig::Software);
    let flags = Layer {
        backend: Some(BackendKind::Iommufd),
        ..Layer::default()
    };
    let s = resolve(flags, None).unwrap();
    assert_eq!(s.backend, BackendConfig::Iommufd(Default::default()));
    // The flag overrides the file's `backend`; a table without the iommufd backend is an error.
    let l = parse(p(), "backend = \"iommufd\"\n[iommufd]\ndevices = []\n").unwrap();
    let flags = Layer {
        backend: Some(BackendKind::Software),
        ..Layer::default()
    };
    let msg = resolve(flags, Some((p(), l))).unwrap_err().to_string();
    assert!(msg.contains("--backend iommufd"), "{msg}");
}

#[test]
fn bad_iommufd_tables_name_the_key() {
    for text in [
        "backend = \"hardware\"",
        "[iommufd]\ndevices = [{ endpoint = 1 }]",
        "[iommufd]\ndevices = [{ endpoint = 1, mock = true, pci = \"0000:00:01.0\" }]",
        "[iommufd]\ndevices = [{ endpoint = 1, mock = true }, { endpoint = 1, mock = true }]",
        "[iommufd]\ndevices = [{ endpoint = 1, fd = true }]",
        "[iommufd]\nfd-socket = \"/s\"\ndevices = [{ endpoint = 1, mock = true, bind = false }]",
        "[iommufd]\nfd-socket = \"/s\"\ndevices = [{ endpoint = 1, fd = false, bind = false }]",
        "[iommufd]\ndevices = [{ endpoint = 1, fd = true, bind = false }]",
    ] {
        let msg = parse(p(), text).unwrap_err().to_string();
        assert!(
            msg.contains("key `iommufd`") || msg.contains("key `backend`"),
            "{text}: {msg}"
        );
    }
    let msg = parse(p(), "[iommufd]\nbogus = 1").unwrap_err().to_string();
    assert!(msg.contains("bogus"), "{msg}");
}
