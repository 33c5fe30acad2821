//! The vhost-user frontend side of the virtio-iommu device, for a Rust VMM.
//!
//! A VMM exposes a virtio-iommu device (virtio ID 23, two queues, 40-byte config space) to the
//! guest on its own transport (PCI or MMIO) and forwards to the daemon:
//!
//! - the device feature bits, unchanged, in both directions ([`IommuFrontend::device_features`],
//!   [`IommuFrontend::set_driver_features`]): unlike a generic vhost-user device, the
//!   virtio-iommu bits (INPUT_RANGE, DOMAIN_RANGE, MAP_UNMAP, PROBE, MMIO, BYPASS_CONFIG) must
//!   reach the guest;
//! - config-space reads and writes ([`IommuFrontend::read_config`], `write_config`): the guest
//!   may write `bypass`;
//! - guest memory ([`IommuFrontend::set_memory`]): every RAM region, shared (memfd);
//! - the two vrings once the driver sets DRIVER_OK ([`IommuFrontend::start_vring`]);
//! - device reset ([`IommuFrontend::reset`]).
//!
//! The VMM's own emulated devices translate their DMA through [`crate::translate`].

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

/// virtio device ID of the IOMMU.
pub const VIRTIO_ID_IOMMU: u32 = 23;
/// requestq and eventq.
pub const NUM_QUEUES: usize = 2;
/// The virtio-iommu config space: page_size_mask, input_range, domain_range, probe_size,
/// bypass, reserved.
pub const CONFIG_SIZE: u32 = 40;
/// Offset of the driver-writable `bypass` byte.
pub const CONFIG_BYPASS_OFFSET: u32 = 36;

/// Virtio feature bits the device may offer (virtio-iommu §5.13.3 plus the transport bits the
/// daemon offers).
pub mod feature {
    pub const INPUT_RANGE: u64 = 1 << 0;
    pub const DOMAIN_RANGE: u64 = 1 << 1;
    pub const MAP_UNMAP: u64 = 1 << 2;
    pub const BYPASS: u64 = 1 << 3;
    pub const PROBE: u64 = 1 << 4;
    pub const MMIO: u64 = 1 << 5;
    pub const BYPASS_CONFIG: u64 = 1 << 6;
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user bit, never shown to the guest.
    pub const VHOST_USER_PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;
}

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("cannot connect to {path}: {err}")]
    Connect {
        path: std::path::PathBuf,
        err: vhost::Error,
    },
    #[error("vhost-user {step}: {err}")]
    Protocol {
        step: &'static str,
        err: vhost::Error,
    },
    #[error("the backend is not a usable virtio-iommu: {0}")]
    Device(String),
    #[error("queue {0} does not exist (the device has {NUM_QUEUES})")]
    Queue(usize),
    #[error("config access at {offset}+{len} is outside the {CONFIG_SIZE}-byte config space")]
    ConfigRange { offset: u32, len: usize },
}

/// Both the vhost (`VhostBackend`) and vhost-user (`VhostUserFrontend`) errors.
fn step<E: Into<vhost::Error>>(step: &'static str) -> impl FnOnce(E) -> FrontendError {
    move |err| FrontendError::Protocol {
        step,
        err: err.into(),
    }
}

/// One guest RAM region as the VMM mapped it: shared memory the daemon maps too.
#[derive(Clone, Copy, Debug)]
pub struct MemoryRegion<'a> {
    pub guest_phys_addr: u64,
    pub size: u64,
    /// Where the VMM mapped it (vring addresses are given in this address space).
    pub host_addr: u64,
    /// The memfd (or other shareable file) backing it.
    pub fd: BorrowedFd<'a>,
    /// Offset of the region in `fd`.
    pub fd_offset: u64,
}

/// One vring as the guest driver configured it (addresses in the VMM's address space).
#[derive(Debug)]
pub struct Vring<'a> {
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    /// Where the device starts in the available ring (0 after reset, the saved base after a
    /// migration or reconnection).
    pub base: u16,
    /// The VMM writes it when the guest notifies the queue (ioeventfd).
    pub kick: &'a EventFd,
    /// The daemon writes it to interrupt the guest (irqfd).
    pub call: &'a EventFd,
}

/// A negotiated connection to the daemon.
pub struct IommuFrontend {
    fe: Frontend,
    /// Everything the backend offered, vhost-user bit included.
    offered: u64,
    protocol: VhostUserProtocolFeatures,
    driver_features: Option<u64>,
}

impl std::fmt::Debug for IommuFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommuFrontend")
            .field("offered", &format_args!("{:#x}", self.offered))
            .field("protocol", &self.protocol)
            .field("driver_features", &self.driver_features)
            .finish_non_exhaustive()
    }
}

impl IommuFrontend {
    /// Connect (retrying until `timeout` while the socket is not there yet, as when the daemon
    /// is starting), take ownership and negotiate the vhost-user protocol features.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, FrontendError> {
        let deadline = Instant::now() + timeout;
        let fe = loop {
            match Frontend::connect(path, NUM_QUEUES as u64) {
                Ok(fe) => break fe,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(err) => {
                    return Err(FrontendError::Connect {
                        path: path.to_owned(),
                        err,
                    })
                }
            }
        };
        Self::negotiate(fe)
    }

    /// Negotiate on an already connected frontend (a VMM that opens the socket itself, or
    /// gets it from a management layer).
    pub fn negotiate(mut fe: Frontend) -> Result<Self, FrontendError> {
        fe.set_owner().map_err(step("SET_OWNER"))?;
        let offered = fe.get_features().map_err(step("GET_FEATURES"))?;
        let need = feature::VERSION_1 | feature::MAP_UNMAP | feature::VHOST_USER_PROTOCOL_FEATURES;
        if offered & need != need {
            return Err(FrontendError::Device(format!(
                "features {offered:#x} lack VERSION_1, MAP_UNMAP or PROTOCOL_FEATURES"
            )));
        }
        // The protocol-features bit must be acked before GET_PROTOCOL_FEATURES; the driver's
        // choice of device features comes later with `set_driver_features`.
        fe.set_features(feature::VHOST_USER_PROTOCOL_FEATURES)
            .map_err(step("SET_FEATURES"))?;
        let available = fe
            .get_protocol_features()
            .map_err(step("GET_PROTOCOL_FEATURES"))?;
        if !available.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(FrontendError::Device(
                "the backend does not offer VHOST_USER_PROTOCOL_F_CONFIG".into(),
            ));
        }
        let protocol = available
            & (VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::RESET_DEVICE);
        fe.set_protocol_features(protocol)
            .map_err(step("SET_PROTOCOL_FEATURES"))?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every message waits for the daemon to apply it: a guest config write (`bypass`)
            // or a reset is in effect, and its invalidations sent, when the VMM returns to the
            // guest.
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        Ok(IommuFrontend {
            fe,
            offered,
            protocol,
            driver_features: None,
        })
    }

    /// The feature bits to show the guest: every device bit the daemon offers, without the
    /// vhost-user protocol bit.
    pub fn device_features(&self) -> u64 {
        self.offered & !feature::VHOST_USER_PROTOCOL_FEATURES
    }

    /// What the driver acknowledged (FEATURES_OK). Bits the device did not offer are dropped.
    pub fn set_driver_features(&mut self, acked: u64) -> Result<u64, FrontendError> {
        let f = (acked & self.device_features()) | feature::VHOST_USER_PROTOCOL_FEATURES;
        self.fe.set_features(f).map_err(step("SET_FEATURES"))?;
        let device = f & !feature::VHOST_USER_PROTOCOL_FEATURES;
        self.driver_features = Some(device);
        Ok(device)
    }

    pub fn driver_features(&self) -> Option<u64> {
        self.driver_features
    }

    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    fn check_config(offset: u32, len: usize) -> Result<(), FrontendError> {
        let end = u64::from(offset) + len as u64;
        if end > u64::from(CONFIG_SIZE) {
            return Err(FrontendError::ConfigRange { offset, len });
        }
        Ok(())
    }

    /// A guest read of the config space (each one is a round trip: `bypass` can change).
    pub fn read_config(&mut self, offset: u32, len: usize) -> Result<Vec<u8>, FrontendError> {
        Self::check_config(offset, len)?;
        let size = u32::try_from(len).map_err(|_| FrontendError::ConfigRange { offset, len })?;
        let (_, data) = self
            .fe
            .get_config(
                offset,
                size,
                VhostUserConfigFlags::WRITABLE,
                &vec![0u8; len],
            )
            .map_err(step("GET_CONFIG"))?;
        Ok(data)
    }

    /// A guest write of the config space (only `bypass` is writable; the daemon ignores the
    /// rest).
    pub fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), FrontendError> {
        Self::check_config(offset, data.len())?;
        self.fe
            .set_config(offset, VhostUserConfigFlags::WRITABLE, data)
            .map_err(step("SET_CONFIG"))
    }

    /// Hand the guest's RAM to the daemon (again after every hot-plug or unplug).
    pub fn set_memory(&mut self, regions: &[MemoryRegion<'_>]) -> Result<(), FrontendError> {
        let infos: Vec<VhostUserMemoryRegionInfo> = regions
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.guest_phys_addr,
                memory_size: r.size,
                userspace_addr: r.host_addr,
                mmap_offset: r.fd_offset,
                mmap_handle: r.fd.as_raw_fd(),
            })
            .collect();
        self.fe
            .set_mem_table(&infos)
            .map_err(step("SET_MEM_TABLE"))?;
        Ok(())
    }

    /// Start queue `index` as the driver configured it.
    pub fn start_vring(&mut self, index: usize, v: &Vring<'_>) -> Result<(), FrontendError> {
        if index >= NUM_QUEUES {
            return Err(FrontendError::Queue(index));
        }
        let cfg = VringConfigData {
            queue_max_size: v.size,
            queue_size: v.size,
            flags: 0,
            desc_table_addr: v.desc_table,
            used_ring_addr: v.used_ring,
            avail_ring_addr: v.avail_ring,
            log_addr: None,
        };
        self.fe
            .set_vring_num(index, v.size)
            .map_err(step("SET_VRING_NUM"))?;
        self.fe
            .set_vring_addr(index, &cfg)
            .map_err(step("SET_VRING_ADDR"))?;
        self.fe
            .set_vring_base(index, v.base)
            .map_err(step("SET_VRING_BASE"))?;
        self.fe
            .set_vring_call(index, v.call)
            .map_err(step("SET_VRING_CALL"))?;
        self.fe
            .set_vring_kick(index, v.kick)
            .map_err(step("SET_VRING_KICK"))?;
        self.fe
            .set_vring_enable(index, true)
            .map_err(step("SET_VRING_ENABLE"))
    }

    /// Stop queue `index`; returns where the device stopped in the available ring.
    pub fn stop_vring(&mut self, index: usize) -> Result<u32, FrontendError> {
        if index >= NUM_QUEUES {
            return Err(FrontendError::Queue(index));
        }
        self.fe
            .set_vring_enable(index, false)
            .map_err(step("SET_VRING_ENABLE"))?;
        self.fe
            .get_vring_base(index)
            .map_err(step("GET_VRING_BASE"))
    }

    /// Device reset (the driver wrote 0 to the status register): domains, endpoints and
    /// mappings are dropped, the config `bypass` byte survives. Queues must be started again.
    pub fn reset(&mut self) -> Result<(), FrontendError> {
        for q in 0..NUM_QUEUES {
            self.stop_vring(q)?;
        }
        if self
            .protocol
            .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            self.fe.reset_device().map_err(step("RESET_DEVICE"))?;
        }
        self.driver_features = None;
        Ok(())
    }

    /// The underlying vhost-user frontend, for messages this type does not wrap.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.fe
    }
}
