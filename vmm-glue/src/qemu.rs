//! The QEMU command-line fragment that attaches the daemon as a generic vhost-user device.
//!
//! QEMU >= 10.2 has a user-creatable `vhost-user-test-device-pci`; it forwards the virtio config
//! space (GET_CONFIG) and feature bits to the backend. Guest RAM must be shared with the daemon
//! (a memfd backend with share=on), and the device must sit at the BDF the VIOT names.

use std::path::{Path, PathBuf};

use crate::pci::PciAddress;
use crate::viot::Viot;

/// Virtio device id of virtio-iommu.
pub const VIRTIO_ID_IOMMU: u32 = 23;
/// Queues: requestq and eventq.
pub const NUM_QUEUES: u32 = 2;
/// Size of the virtio-iommu config space.
pub const CONFIG_SIZE: u32 = 40;

/// Errors in the qemu-args inputs.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// Bad memory size.
    #[error("memory size `{0}`: write a positive size in bytes or with a K/M/G/T suffix, a multiple of 4 KiB (e.g. 512M)")]
    Memory(String),
    /// Bad PCI slot.
    #[error("--iommu-addr `{0}`: write a PCI slot (0x0-0x1f), optionally .FUNCTION (0-7), e.g. 0x3 or 0x3.0")]
    Slot(String),
    /// A path QEMU cannot take in an option.
    #[error("path {path:?} {why}; use another path")]
    Path {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The VIOT file could not be read.
    #[error(
        "cannot read the VIOT file {path:?}: {source}; create it with `vhost-user-iommu-glue viot`"
    )]
    ReadViot {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The VIOT file is not a table we can check.
    #[error("{path:?}: {source}")]
    BadViot {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::viot::ViotError,
    },
    /// The VIOT names another BDF than where the device goes.
    #[error("the VIOT places the virtio-iommu at {viot} but the device goes to {device}; use the same address in both commands")]
    Mismatch {
        /// Address in the VIOT.
        viot: PciAddress,
        /// Address on the command line.
        device: PciAddress,
    },
}

/// Parses `512M`, `1G`, `4096`, ... into bytes.
pub fn parse_size(text: &str) -> Result<u64, QemuError> {
    let t = text.trim();
    let err = || QemuError::Memory(text.to_string());
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(err()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| err())?;
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(err)?;
    if bytes == 0 || bytes % 4096 != 0 {
        return Err(err());
    }
    Ok(bytes)
}

/// A size as QEMU reads it, in the largest exact unit.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes.trailing_zeros() >= shift {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Parses a PCI slot `0x3`, `3`, `03.0`, `0x3.1` into (device, function).
pub fn parse_slot(text: &str) -> Result<(u8, u8), QemuError> {
    let err = || QemuError::Slot(text.to_string());
    let t = text.trim();
    let (dev, func) = match t.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (t, None),
    };
    let hex = |s: &str| {
        let s = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        u8::from_str_radix(s, 16).ok()
    };
    let dev = hex(dev).filter(|d| *d < 32).ok_or_else(err)?;
    let func = match func {
        Some(f) => hex(f).filter(|f| *f < 8).ok_or_else(err)?,
        None => 0,
    };
    Ok((dev, func))
}

/// Everything the fragment needs.
#[derive(Debug, Clone)]
pub struct QemuArgs {
    /// The daemon's vhost-user socket, as QEMU sees it.
    pub socket: PathBuf,
    /// The VIOT file, as QEMU sees it.
    pub viot: PathBuf,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// PCI slot and function of the device.
    pub slot: (u8, u8),
    /// PCI bus (a root bus id such as pcie.0).
    pub bus: String,
}

/// A path as a QEMU option value: commas doubled (QEMU's escape); a colon is refused where
/// QEMU splits lists on it (`-acpitable file=a:b`).
fn option_path(p: &Path, colon_splits: bool) -> Result<String, QemuError> {
    let bad = |why| QemuError::Path {
        path: p.to_path_buf(),
        why,
    };
    let s = p.to_str().ok_or_else(|| bad("is not valid UTF-8"))?;
    if s.is_empty() {
        return Err(bad("is empty"));
    }
    if colon_splits && s.contains(':') {
        return Err(bad(
            "contains ':', which -acpitable file= reads as a list separator",
        ));
    }
    Ok(s.replace(',', ",,"))
}

impl QemuArgs {
    /// Where the device lands when it is on the root bus of segment 0.
    pub fn device_address(&self) -> PciAddress {
        PciAddress {
            segment: 0,
            bus: 0,
            device: self.slot.0,
            function: self.slot.1,
        }
    }

    /// Checks the VIOT against the device address (only possible on the root bus `pcie.0`).
    pub fn check_viot(&self, viot: &Viot) -> Result<(), QemuError> {
        if self.bus == "pcie.0" && viot.iommu != self.device_address() {
            return Err(QemuError::Mismatch {
                viot: viot.iommu,
                device: self.device_address(),
            });
        }
        Ok(())
    }

    /// The QEMU arguments, one element each.
    pub fn args(&self) -> Result<Vec<String>, QemuError> {
        let size = format_size(self.memory);
        let addr = match self.slot {
            (d, 0) => format!("{d:#x}"),
            (d, f) => format!("{d:#x}.{f}"),
        };
        Ok(vec![
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={size},share=on"),
            "-m".into(),
            size,
            "-machine".into(),
            "q35,memory-backend=mem".into(),
            "-chardev".into(),
            format!("socket,id=vuiommu,path={}", option_path(&self.socket, false)?),
            "-device".into(),
            format!(
                "vhost-user-test-device-pci,chardev=vuiommu,virtio-id={VIRTIO_ID_IOMMU},num_vqs={NUM_QUEUES},config_size={CONFIG_SIZE},bus={},addr={addr}",
                self.bus
            ),
            "-acpitable".into(),
            format!("file={}", option_path(&self.viot, true)?),
        ])
    }
}

/// Quotes one word for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,:/+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QemuArgs {
        QemuArgs {
            socket: "/run/vui.sock".into(),
            viot: "/tmp/viot.bin".into(),
            memory: 512 << 20,
            slot: (3, 0),
            bus: "pcie.0".into(),
        }
    }

    #[test]
    fn fragment() {
        let a = sample().args().unwrap().join(" ");
        assert_eq!(
            a,
            "-object memory-backend-memfd,id=mem,size=512M,share=on -m 512M -machine q35,memory-backend=mem \
             -chardev socket,id=vuiommu,path=/run/vui.sock \
             -device vhost-user-test-device-pci,chardev=vuiommu,virtio-id=23,num_vqs=2,config_size=40,bus=pcie.0,addr=0x3 \
             -acpitable file=/tmp/viot.bin"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("8192").unwrap(), 8192);
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(2 << 30), "2G");
        for bad in ["", "0", "12X", "-5M", "100", "99999999999T", "M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slots() {
        assert_eq!(parse_slot("0x3").unwrap(), (3, 0));
        assert_eq!(parse_slot("1f.7").unwrap(), (31, 7));
        for bad in ["0x20", "3.8", "", "x", "3."] {
            assert!(parse_slot(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn viot_must_match() {
        let q = sample();
        let ok = Viot::new(
            "0000:00:03.0".parse().unwrap(),
            vec!["0000:00:00.0-00:1f.7".parse().unwrap()],
        )
        .unwrap();
        q.check_viot(&ok).unwrap();
        let other = Viot {
            iommu: "0000:00:04.0".parse().unwrap(),
            ..ok
        };
        let err = q.check_viot(&other).unwrap_err().to_string();
        assert!(
            err.contains("0000:00:04.0") && err.contains("0000:00:03.0"),
            "{err}"
        );
    }

    #[test]
    fn paths_escaped_or_rejected() {
        let q = QemuArgs {
            socket: "/tmp/a,b".into(),
            ..sample()
        };
        assert!(q
            .args()
            .unwrap()
            .contains(&"socket,id=vuiommu,path=/tmp/a,,b".to_string()));
        let q = QemuArgs {
            viot: "/tmp/a:b".into(),
            ..sample()
        };
        let err = q.args().unwrap_err().to_string();
        assert!(err.contains("list separator"), "{err}");
        let q = QemuArgs {
            socket: "".into(),
            ..sample()
        };
        assert!(q.args().is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a,b=c"), "a,b=c");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
