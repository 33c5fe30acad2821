//! Host backends: what a validated request does outside the device model.
//!
//! The device model (`device.rs`) checks every request against the specification and its own
//! tables, then calls the backend, then commits. A backend error leaves the guest-visible state
//! unchanged and becomes the request's status (`BackendError::status`), so the guest never sees
//! a half-applied request.
//!
//! - [`Software`]: the default. Does nothing; the device model's own tables and `translate` are
//!   the IOMMU (for a VMM's emulated devices, through the control socket).
//! - [`iommufd::IommufdBackend`]: guest domains become iommufd objects on the host, so passthrough
//!   (VFIO) devices are translated by the host IOMMU (docs/IOMMUFD.md). On a host IOMMU that
//!   nests, it is also the model's `NestingHost`: guest tables become nested page tables.

pub mod fdpass;
pub mod iommufd;

use std::fmt;

use model::host::{merge_holes, HostBackend, Software};

/// `--backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    #[default]
    Software,
    Iommufd,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "software" => Ok(BackendKind::Software),
            "iommufd" => Ok(BackendKind::Iommufd),
            _ => Err(format!("{s:?}: expected `software` or `iommufd`")),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Software => "software",
            BackendKind::Iommufd => "iommufd",
        })
    }
}

/// The backend the daemon runs with, fully configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BackendConfig {
    #[default]
    Software,
    Iommufd(iommufd::IommufdConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum BackendSetupError {
    #[error("iommufd backend: {0}")]
    Iommufd(#[from] iommufd::SetupError),
    #[error("iommufd backend: the host limits leave no valid device configuration: {0}")]
    Limits(model::config::ConfigError),
    #[error("iommufd backend: endpoint {0} has a host device but is not in --endpoints")]
    UnknownEndpoint(u32),
}

/// Build the backend and apply the host's limits to the device configuration: the page size
/// mask is intersected with the host's, host IOVA holes become RESV_MEM RESERVED regions.
/// Runs before privileges are dropped and seccomp filters installed (it opens device files).
/// With `state_dir` (`--state-dir`) the iommufd backend keeps its object ids there and adopts a
/// previous process's devices (docs/IOMMUFD.md, "Restart").
pub fn build(
    cfg: &BackendConfig,
    device: &mut model::config::DeviceConfig,
    state_dir: Option<&std::path::Path>,
) -> Result<Box<dyn HostBackend>, BackendSetupError> {
    match cfg {
        BackendConfig::Software => Ok(Box::<Software>::default()),
        BackendConfig::Iommufd(c) => {
            if let Some(&ep) = c.devices.keys().find(|&&ep| !device.endpoints.contains(ep)) {
                return Err(BackendSetupError::UnknownEndpoint(ep));
            }
            let b = iommufd::IommufdBackend::open(c, state_dir)?;
            let limits = b.limits(device.input_start, device.input_end);
            device.page_size_mask &= limits.page_size_mask;
            device.reserved = merge_holes(&device.reserved, &limits.holes);
            device.validate().map_err(BackendSetupError::Limits)?;
            Ok(Box::new(b))
        }
    }
}

#[cfg(test)]
mod config_tests;
