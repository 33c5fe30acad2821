//! The vhost-user side: virtqueues in, device model calls, statuses out.
//!
//! Every descriptor chain is hostile until proven otherwise. `virtio-queue` bounds chain walks
//! (no endless loops) and checks every descriptor against the guest memory map; on top of that
//! this module bounds how much it reads and writes, and returns a buffer unwritten (used length
//! 0) when it cannot hold a request head and a status tail.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use zerocopy::IntoBytes;

use crate::device::{Device, Reply};
use crate::protocol::*;

/// Epoll id of the "fault records are waiting" notifier (ids 0..=NUM_QUEUES are taken by the
/// queues and the exit event).
pub const FAULT_EVENT_ID: u16 = NUM_QUEUES as u16 + 1;
/// Largest device-readable part read from a request: the longest request head + body (PROBE).
const MAX_READ: usize = HEAD_SIZE + std::mem::size_of::<ProbeBody>();
/// Largest device-writable area accepted (PROBE properties up to the maximum probe size, plus
/// the tail). A larger area is refused rather than zero-filled.
const MAX_WRITABLE: usize = crate::config::MAX_PROBE_SIZE as usize + TAIL_SIZE;
/// Queue size offered to the frontend.
pub const MAX_QUEUE_SIZE: usize = 1024;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    #[error("cannot create an event notifier: {0}")]
    Event(io::Error),
    #[error("virtqueue error on queue {queue}: {err}")]
    Queue {
        queue: u16,
        err: virtio_queue::Error,
    },
    #[error("cannot signal the frontend on queue {queue}: {err}")]
    Signal { queue: u16, err: io::Error },
    #[error("event {0} is not handled by this device")]
    UnknownEvent(u16),
}

impl From<VhostError> for io::Error {
    fn from(e: VhostError) -> Self {
        io::Error::other(e)
    }
}

/// State shared by the vhost-user worker, the control socket and the connection loop. It lives
/// as long as the daemon; a new connection resets the device rather than replacing it.
#[derive(Debug)]
pub struct Shared {
    device: Mutex<Device>,
    /// Written when a fault record is queued from outside the worker thread.
    fault_notifier: EventNotifier,
    fault_consumer: EventConsumer,
}

impl Shared {
    pub fn new(device: Device) -> Result<Self, VhostError> {
        let (fault_consumer, fault_notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
                .map_err(VhostError::Event)?;
        Ok(Shared {
            device: Mutex::new(device),
            fault_notifier,
            fault_consumer,
        })
    }

    /// Lock the device. A panic while holding the lock cannot leave the model half-changed in a
    /// way that matters more than stopping would, so a poisoned lock is taken over.
    pub fn device(&self) -> MutexGuard<'_, Device> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask the worker to deliver queued fault records.
    pub fn kick_faults(&self) {
        if let Err(e) = self.fault_notifier.notify() {
            warn!("cannot wake the event queue worker: {e}");
        }
    }

    pub fn fault_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fault_consumer.as_raw_fd()
    }
}

/// The vhost-user backend for one frontend connection.
#[derive(Debug)]
pub struct IommuBackend {
    shared: Arc<Shared>,
    mem: Mem,
    event_idx: bool,
}

impl IommuBackend {
    pub fn new(shared: Arc<Shared>) -> Self {
        IommuBackend {
            shared,
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            event_idx: false,
        }
    }

    fn process_requests(&self, vring: &VringRwLock) -> Result<(), VhostError> {
        let qerr = |err| VhostError::Queue {
            queue: REQUEST_QUEUE,
            err,
        };
        let mem = self.mem.memory();
        let mut dev = self.shared.device();
        let mut any = false;
        loop {
            if self.event_idx {
                vring.disable_notification().map_err(qerr)?;
            }
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let used = handle_chain(&mut dev, &mem, chain);
                vring.add_used(head, used).map_err(qerr)?;
                any = true;
            }
            if !self.event_idx || !vring.enable_notification().map_err(qerr)? {
                break;
            }
        }
        drop(dev);
        if any && vring.needs_notification().map_err(qerr)? {
            vring
                .signal_used_queue()
                .map_err(|err| VhostError::Signal {
                    queue: REQUEST_QUEUE,
                    err,
                })?;
        }
        Ok(())
    }

    /// Move queued fault records into the driver's event buffers. With no buffer posted a
    /// record is dropped (and counted): the request queue never waits for the event queue.
    fn deliver_events(&self, vring: &VringRwLock) -> Result<(), VhostError> {
        let qerr = |err| VhostError::Queue {
            queue: EVENT_QUEUE,
            err,
        };
        let mem = self.mem.memory();
        let mut dev = self.shared.device();
        let mut any = false;
        while let Some(rec) = dev.pop_event() {
            let chain = {
                let mut state = vring.get_mut();
                let q = state.get_queue_mut();
                if q.ready() {
                    q.pop_descriptor_chain(mem.clone())
                } else {
                    None
                }
            };
            let Some(chain) = chain else {
                dev.event_outcome(&rec, false);
                continue;
            };
            let head = chain.head_index();
            let written = match chain.writer(&*mem) {
                Ok(mut w) if w.available_bytes() >= FAULT_RECORD_SIZE => {
                    w.write_all(rec.as_bytes()).is_ok()
                }
                Ok(_) | Err(_) => false,
            };
            if !written {
                debug!("event buffer {head} cannot hold a fault record; record dropped");
            }
            let used = if written { FAULT_RECORD_SIZE as u32 } else { 0 };
            vring.add_used(head, used).map_err(qerr)?;
            dev.event_outcome(&rec, written);
            any = true;
        }
        drop(dev);
        if any && vring.needs_notification().map_err(qerr)? {
            vring
                .signal_used_queue()
                .map_err(|err| VhostError::Signal {
                    queue: EVENT_QUEUE,
                    err,
                })?;
        }
        Ok(())
    }
}

/// Parse, execute and answer one request chain. Returns the used length.
fn handle_chain(
    dev: &mut Device,
    mem: &GuestMemoryLoadGuard<GuestMemoryMmap>,
    chain: DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap>>,
) -> u32 {
    let head = chain.head_index();
    let reader = chain.clone().reader(&**mem);
    let writer = chain.writer(&**mem);
    let (mut reader, mut writer) = match (reader, writer) {
        (Ok(r), Ok(w)) => (r, w),
        (Err(e), _) | (_, Err(e)) => {
            debug!("request {head}: unusable descriptor chain: {e}");
            dev.count_ignored();
            return 0;
        }
    };
    let wlen = writer.available_bytes();
    if !(TAIL_SIZE..=MAX_WRITABLE).contains(&wlen) {
        debug!("request {head}: device-writable area of {wlen} bytes cannot hold a tail");
        dev.count_ignored();
        return 0;
    }
    let mut req = [0u8; MAX_READ];
    let want = reader.available_bytes().min(MAX_READ);
    if want < HEAD_SIZE || reader.read_exact(&mut req[..want]).is_err() {
        debug!("request {head}: device-readable part too short for a head");
        dev.count_ignored();
        return 0;
    }
    // The tail is the last 4 bytes; whatever comes before it in the writable area belongs to
    // the request (PROBE properties) and is zero-filled. `vec![0; 0]` does not allocate.
    let mut props = vec![0u8; wlen - TAIL_SIZE];
    match dev.handle_request(&req[..want], &mut props) {
        Reply::Ignore => 0,
        Reply::Status(status) => {
            let tail = ReqTail {
                status: status as u8,
                reserved: [0; 3],
            };
            match writer
                .write_all(&props)
                .and_then(|()| writer.write_all(tail.as_bytes()))
            {
                // Bounded by MAX_WRITABLE above.
                Ok(()) => u32::try_from(wlen).unwrap_or(0),
                Err(e) => {
                    warn!("request {head}: cannot write the status: {e}");
                    0
                }
            }
        }
    }
}

impl VhostUserBackendMut for IommuBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.shared.device().features()
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        // The device model keeps only its own bits; ring and vhost-user bits are the transport's.
        self.shared.device().set_acked_features(features);
        log::info!("driver acknowledged features {features:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&mut self) {
        log::info!("device reset by the frontend: domains, endpoints and mappings dropped");
        self.shared.device().reset(true);
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.shared.device().config_space();
        let bytes = cfg.as_bytes();
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        bytes[start..end].to_vec()
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let mut dev = self.shared.device();
        if dev.write_config(offset as usize, buf) {
            log::info!("driver set config bypass = {}", dev.bypass());
        } else {
            // Read-only fields: a conforming driver never writes them. Ignore, like hardware.
            warn!(
                "ignored driver write of {} byte(s) at config offset {offset}",
                buf.len()
            );
        }
        Ok(())
    }

    fn update_memory(&mut self, mem: Mem) -> io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
            .map_err(|e| warn!("cannot create the worker exit event: {e}"))
            .ok()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let vring = |q: u16| {
            vrings
                .get(usize::from(q))
                .ok_or(VhostError::UnknownEvent(q))
        };
        match device_event {
            REQUEST_QUEUE => self.process_requests(vring(REQUEST_QUEUE)?)?,
            EVENT_QUEUE => self.deliver_events(vring(EVENT_QUEUE)?)?,
            FAULT_EVENT_ID => {
                // Non-blocking: a spurious wake-up just finds nothing.
                let _ = self.shared.fault_consumer.consume();
                self.deliver_events(vring(EVENT_QUEUE)?)?
            }
            other => return Err(VhostError::UnknownEvent(other).into()),
        }
        Ok(())
    }
}
