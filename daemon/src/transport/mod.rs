//! The vhost-user side: virtqueues in, device model calls, statuses out.
//!
//! Every descriptor chain is hostile until proven otherwise. `virtio-queue` bounds chain walks
//! (no endless loops) and checks every descriptor against the guest memory map; on top of that
//! this module bounds how much it reads and writes, and returns a buffer unwritten (used length
//! 0) when it cannot hold a request head and a status tail.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, warn};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost_user_backend::{VhostUserBackendMut, VringT};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{
    Address, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use zerocopy::IntoBytes;

use model::device::state::{parse_state, StreamKind};
use model::device::Device;
use model::queue::{handle_chain, skip_bad_head};
pub mod memory;
pub mod migration;
pub mod poll;
pub mod vring;

use crate::os::sched::WorkerSched;
use migration::{load_limit, Finished, Pending, Transfer};
use model::protocol::*;
use poll::PollWindow;

/// Epoll id of the wake notifier: fault records are waiting, or a polling burst yielded (ids
/// 0..=NUM_QUEUES are taken by the queues and the exit event).
pub const WAKE_EVENT_ID: u16 = NUM_QUEUES as u16 + 1;
/// Epoll id of the host backend's page-request fd (iommufd fault queue): page requests of
/// host devices to turn into page-request records.
pub const PAGE_REQUEST_EVENT_ID: u16 = NUM_QUEUES as u16 + 2;
/// Longest a polling burst keeps the worker thread before yielding to its other events.
const MAX_POLL_BURST: Duration = Duration::from_millis(2);
/// A polling round that took this long lost its CPU in between (a round is well under a
/// microsecond): the worker was preempted.
const PREEMPTED: Duration = Duration::from_micros(30);
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
    /// Wakes the worker: fault records queued from another thread, or a polling burst that
    /// yielded with requests possibly pending.
    wake_notifier: EventNotifier,
    wake_consumer: EventConsumer,
    /// The device state transfer thread (live migration), once started.
    transfer: std::sync::OnceLock<Transfer>,
    /// The request-queue worker of the current connection: its thread id and whether its
    /// scheduling policy took (for `status`).
    worker: Mutex<Option<WorkerThread>>,
    /// Exit-event fds handed to `vhost-user-backend` for the current connection, with their
    /// inodes ([`Shared::close_exit_events`]).
    exit_fds: Mutex<Vec<(RawFd, u64)>>,
}

/// What `status` shows of the request-queue worker thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerThread {
    pub tid: i32,
    /// Why the configured policy could not be applied, if it could not.
    pub sched_error: Option<String>,
}

impl Shared {
    pub fn new(device: Device) -> Result<Self, VhostError> {
        let (wake_consumer, wake_notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
                .map_err(VhostError::Event)?;
        Ok(Shared {
            device: Mutex::new(device),
            wake_notifier,
            wake_consumer,
            transfer: std::sync::OnceLock::new(),
            worker: Mutex::new(None),
            exit_fds: Mutex::new(Vec::new()),
        })
    }

    /// The request-queue worker, once it has handled an event.
    pub fn worker(&self) -> Option<WorkerThread> {
        self.worker_slot().clone()
    }

    /// The connection's worker is gone.
    fn clear_worker(&self) {
        *self.worker_slot() = None;
    }

    /// An exit-event consumer fd went to `vhost-user-backend`, which takes ownership of it
    /// with `into_raw_fd` and never closes it (one fd per connection, until `EMFILE` ends the
    /// daemon). Remember it with its inode.
    fn handed_out(&self, fd: RawFd) {
        if let Some(ino) = inode(fd) {
            self.exit_fds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((fd, ino));
        }
    }

    /// Close the exit-event fds of a connection whose `VhostUserDaemon` has been dropped (its
    /// epoll handlers, the only users, are gone). An fd whose inode is no longer the one handed
    /// out (a future `vhost-user-backend` that closes it itself) is left alone.
    fn close_exit_events(&self) {
        let fds = std::mem::take(&mut *self.exit_fds.lock().unwrap_or_else(|p| p.into_inner()));
        for (fd, ino) in fds {
            // `fd` may be closed or reused by now: the inode comparison tells, before anything
            // is closed.
            if inode(fd) == Some(ino) {
                // SAFETY: `fd` is the eventfd handed out (same inode), released by its last
                // owner with `into_raw_fd`; nothing else refers to it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }

    fn worker_slot(&self) -> MutexGuard<'_, Option<WorkerThread>> {
        self.worker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock the device. A panic while holding the lock cannot leave the model half-changed in a
    /// way that matters more than stopping would, so a poisoned lock is taken over.
    pub fn device(&self) -> MutexGuard<'_, Device> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake the worker: it delivers queued fault records and looks at the request queue.
    pub fn wake(&self) {
        if let Err(e) = self.wake_notifier.notify() {
            warn!("cannot wake the event queue worker: {e}");
        }
    }

    /// Offer live migration (DEVICE_STATE) through this transfer thread.
    pub fn set_transfer(&self, t: Transfer) {
        if self.transfer.set(t).is_err() {
            warn!("device state transfer thread started twice");
        }
    }

    pub fn wake_fd(&self) -> RawFd {
        self.wake_consumer.as_raw_fd()
    }
}

/// The vhost-user backend for one frontend connection.
#[derive(Debug)]
pub struct VhostDevice {
    shared: Arc<Shared>,
    /// Guest memory as this device uses it: the frontend's table once it passed
    /// [`memory::check_table`]. Not the handler's own (`vhost-user-backend` publishes a new
    /// table to its vrings before the device can check it); ring and buffer accesses of the
    /// device go through this one only, and it is what the handler gets back when a new table
    /// is refused.
    mem: Mem,
    event_idx: bool,
    /// The request-queue polling window (adaptive, up to `--poll-us`).
    poll: PollWindow,
    /// When the worker last handled a request before going to sleep on the kick eventfd: the
    /// next request's wait feeds the polling window.
    idle_since: Option<Instant>,

    /// Scheduling policy of the worker thread, applied at its first event.
    sched: WorkerSched,
    /// (head, written length) of the chains of the pass being processed, published together
    /// once the journal has their records (kept to reuse its allocation).
    completed: Vec<(u16, u32)>,
    /// A pass could not turn the request queue's notifications off or on (its ring outside
    /// guest RAM): the next memory table wakes the worker to re-arm them.
    rearm: bool,
    /// The last pass yielded with the driver's notifications still off: the next pass turns
    /// them back on before sleeping, whatever its window.
    notifications_off: bool,
    /// The request queue's next available index after the last processing pass.
    last_avail: u16,
    /// Where the request queue stood when the frontend stopped it (GET_VRING_BASE), until the
    /// first event after it is restarted.
    stopped_at: Option<u16>,
    /// A device state transfer started with SET_DEVICE_STATE_FD, until CHECK_DEVICE_STATE.
    transfer: Mutex<Option<Pending>>,
    /// A loaded device state waiting for the memory table (its requests need guest RAM).
    deferred_state: Mutex<Option<Vec<u8>>>,
    /// The device holds a journaled state of a previous run: decide at the first event
    /// whether this connection's driver carries on with it.
    resume_pending: bool,
    /// The device knows where this connection's driver keeps its request queue.
    ring_noted: bool,
}

impl VhostDevice {
    /// `poll_max`: the longest polling window (zero: never poll).
    pub fn new(shared: Arc<Shared>, poll_max: Duration, sched: WorkerSched) -> Self {
        let resume_pending = shared.device().has_resume_state();
        VhostDevice {
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            event_idx: false,
            poll: PollWindow::new(poll_max),
            idle_since: None,

            sched,
            completed: Vec::with_capacity(MAX_QUEUE_SIZE),
            rearm: false,
            notifications_off: false,
            last_avail: 0,
            stopped_at: None,
            transfer: Mutex::new(None),
            deferred_state: Mutex::new(None),
            resume_pending,
            ring_noted: false,
            shared,
        }
    }

    /// QEMU's generic vhost-user device stops the rings for a guest reset exactly as for a VM
    /// pause; the difference shows when they restart: after a pause the frontend restores the
    /// index we reported, after a reset the driver starts its new ring at 0. A restart anywhere
    /// but where we stopped means the driver lost its state, so the guest's domains and
    /// mappings must go too (a rebooted guest must not find its previous life's mappings).
    /// Only a reset that happens to stop at a multiple of 65536 requests goes unnoticed.
    /// After a daemon restart (state journal, docs/STATE.md): the first event of the new
    /// connection shows whether the driver carries on from where the previous daemon left it
    /// (its request queue resumes past 0, the position the frontend kept) or started over.
    fn resolve_resume(&mut self, vring: &vring::Vring) {
        let at = vring.queue_next_avail();
        self.last_avail = at;
        let pass = {
            let mut dev = self.shared.device();
            note_ring(&mut dev, vring);
            match dev.resume_state(at != 0) {
                Some(Ok(s)) => log::info!(
                    "journaled state resumed: {} domains, {} mappings, {} endpoints (request queue at {at})",
                    s.domains, s.mappings, s.endpoints
                ),
                Some(Err(e)) => log::error!("journaled state not resumed: {e}"),
                None => {}
            }
            dev.take_resumed_pass()
        };
        if let Some(pass) = pass {
            if let Err(e) = self.finish_pass(vring, &pass) {
                log::error!("the previous process's last pass: {e}");
            }
        }
    }

    /// The request queue restarted at the used index (`SET_VRING_BASE` from the driver's used
    /// ring): the chains of the previous process's last pass past that index were handled and
    /// journaled, and their replies are in the driver's buffers, but their used entries were
    /// never published. Publish them (never handle them again) and carry on after the pass.
    fn finish_pass(
        &mut self,
        vring: &vring::Vring,
        pass: &model::device::state::Pass,
    ) -> Result<(), VhostError> {
        let at = vring.queue_next_avail();
        let done = usize::from(at.wrapping_sub(pass.avail_start));
        let Some(missing) = pass.chains.get(done..).filter(|m| !m.is_empty()) else {
            return Ok(());
        };
        let qerr = |err| VhostError::Queue {
            queue: REQUEST_QUEUE,
            err,
        };
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let mut state = vring.get_mut();
        for &(head, len) in missing {
            let r = state.get_queue_mut().add_used(mem, head, len);
            skip_bad_head(r, REQUEST_QUEUE, head).map_err(qerr)?;
        }
        let next = pass.avail_start.wrapping_add(pass.chains.len() as u16);
        state.get_queue_mut().set_next_avail(next);
        self.last_avail = next;
        log::info!(
            "request queue: {} requests the previous process had handled but not published \
             (available ring {at}..{next}) answered from the journal",
            missing.len()
        );
        self::vring::signal(&state).map_err(|err| VhostError::Signal {
            queue: REQUEST_QUEUE,
            err,
        })
    }

    fn check_restart(&mut self, vring: &vring::Vring) {
        let Some(at) = self.stopped_at.take() else {
            return;
        };
        let now = vring.queue_next_avail();
        if now != at {
            log::info!(
                "request queue restarted at {now} after stopping at {at}: the driver started \
                 over; dropping domains, endpoints and mappings"
            );
            let mut dev = self.shared.device();
            dev.reset_guest_state();
            note_ring(&mut dev, vring);
            self.last_avail = now;
        }
    }

    /// Drain the request queue, then poll it for the adaptive window (with driver
    /// notifications suppressed, so the guest need not kick) until it has been idle that long,
    /// then re-enable notifications, look once more and go back to sleep on the kick eventfd.
    /// A busy queue yields after `MAX_POLL_BURST` so the event queue is served too.
    fn process_requests(&mut self, vring: &vring::Vring) -> Result<(), VhostError> {
        let mut completed = std::mem::take(&mut self.completed);
        let slept = self.idle_since.take();
        let mut pass = Pass {
            window: self.poll,
            slept,
            last_request: None,
            rearm: false,
            notifications_off: self.notifications_off,
        };
        let r = self.drain_requests(vring, &mut completed, &mut pass);
        self.notifications_off = matches!(r, Ok(Drained::Yielded));
        self.completed = completed;
        self.poll = pass.window;
        self.rearm |= pass.rearm;
        self.idle_since = match (r.as_ref(), pass.last_request) {
            // Asleep after handling requests: the next request's wait counts from the last.
            (Ok(Drained::Asleep), Some(at)) => Some(at),
            // Asleep without a request this time: the wait goes on.
            (Ok(Drained::Asleep), None) => slept,
            _ => None,
        };
        self.last_avail = vring.queue_next_avail();
        r.map(|_| ())
    }

    fn drain_requests(
        &self,
        vring: &vring::Vring,
        completed: &mut Vec<(u16, u32)>,
        pass: &mut Pass,
    ) -> Result<Drained, VhostError> {
        let qerr = |err| VhostError::Queue {
            queue: REQUEST_QUEUE,
            err,
        };
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let started = Instant::now();
        // A pass that finds a request first thing after a sleep ends the wait since the last
        // request: the window learns from it. A pass that finds nothing (a kick for requests a
        // poll already took) leaves that wait running.
        let mut first = true;
        // When the last polling round that found nothing ran (preemption shows as a gap).
        let mut last_spin: Option<Instant> = None;
        let mut window = pass.window.current();
        // A pass after a yield finds the notifications off, and must turn them back on
        // before it sleeps even if its window has closed meanwhile.
        let mut suppress = self.event_idx || !window.is_zero() || pass.notifications_off;
        let mut last_work = started;
        // Notifications are turned off once per pass, not on every polling round: each turn-off
        // writes the ring's flags / avail_event, a cache line the spinning driver reads.
        let mut notifying = !pass.notifications_off;
        loop {
            let mut state = vring.get_mut();
            if suppress && notifying {
                if let Err(e) = state.get_queue_mut().disable_notification(mem) {
                    // The ring is not in guest RAM (a frontend took the region away): no
                    // polling and no re-arming this pass; an error here would end the worker
                    // thread and the queue with it. A new memory table wakes the worker.
                    debug!("request queue: cannot turn notifications off: {e}");
                    pass.rearm = true;
                    suppress = false;
                    window = Duration::ZERO;
                } else {
                    notifying = false;
                }
            }
            completed.clear();
            {
                let mut dev = self.shared.device();
                let avail_start = state.get_queue_mut().next_avail();
                while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem) {
                    let head = chain.head_index();
                    completed.push((head, handle_chain(&mut dev, mem, chain)));
                }
                // The state changes of the batch and the pass itself reach the journal (one
                // write) before any of its statuses reaches the driver.
                dev.journal_pass(avail_start, completed);
            }
            let n = completed.len();
            for &(head, used) in completed.iter() {
                let r = state.get_queue_mut().add_used(mem, head, used);
                skip_bad_head(r, REQUEST_QUEUE, head).map_err(qerr)?;
            }
            if n > 0 {
                last_work = Instant::now();
                last_spin = None;
                if first {
                    if let Some(since) = pass.slept {
                        pass.window.missed(started.saturating_duration_since(since));
                        window = pass.window.current();
                        if !window.is_zero() && !suppress {
                            // The window opened: poll from the next round on (notifications
                            // are turned off then, and back on before sleeping).
                            suppress = true;
                        }
                    }
                }
                if !first {
                    // Found by polling, without a kick.
                    pass.window.caught();
                }
                pass.last_request = Some(last_work);
                if wants_interrupt(state.get_queue_mut(), mem, self.event_idx).map_err(qerr)? {
                    self::vring::signal(&state).map_err(|err| VhostError::Signal {
                        queue: REQUEST_QUEUE,
                        err,
                    })?;
                }
            }
            first = false;
            if !window.is_zero() {
                let now = Instant::now();
                if n == 0 {
                    if last_spin.is_some_and(|t| now.duration_since(t) >= PREEMPTED) {
                        // The worker lost its CPU while polling: whatever needed the core
                        // (perhaps the vCPU about to send) gets it back sooner next time.
                        pass.window.preempted();
                        window = pass.window.current();
                    }
                    last_spin = Some(now);
                }
                if now.duration_since(started) >= MAX_POLL_BURST {
                    // Yield to the other events of this thread; come back through the wake
                    // notifier (re-enabling notifications here could lose a kick already
                    // skipped by the driver).
                    self.shared.wake();
                    return Ok(Drained::Yielded);
                }
                if now.duration_since(last_work) < window {
                    drop(state);
                    std::hint::spin_loop();
                    continue;
                }
            }
            if !suppress || notifying {
                return Ok(Drained::Asleep);
            }
            // Re-arm: notifications back on, then one more look (a request made available
            // while they were off would otherwise wait for a kick that never comes).
            match state.get_queue_mut().enable_notification(mem) {
                Ok(true) => notifying = true,
                Ok(false) => return Ok(Drained::Asleep),
                Err(e) => {
                    // As above: the ring left guest RAM; the next memory table wakes the worker
                    // and the pass then re-arms.
                    debug!("request queue: cannot turn notifications back on: {e}");
                    pass.rearm = true;
                    return Ok(Drained::Asleep);
                }
            }
        }
    }

    /// Move queued fault records into the driver's event buffers. With no buffer posted a
    /// record is dropped (and counted): the request queue never waits for the event queue.
    fn deliver_events(&self, vring: &vring::Vring) -> Result<(), VhostError> {
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
                Ok(mut w) if w.available_bytes() >= rec.bytes().len() => {
                    w.write_all(rec.bytes()).is_ok()
                }
                Ok(_) | Err(_) => false,
            };
            if !written {
                debug!("event buffer {head} cannot hold a fault record; record dropped");
            }
            // At most 32 bytes.
            let used = if written {
                u32::try_from(rec.bytes().len()).unwrap_or(0)
            } else {
                0
            };
            let r = vring.get_mut().get_queue_mut().add_used(&*mem, head, used);
            skip_bad_head(r, EVENT_QUEUE, head).map_err(qerr)?;
            dev.event_outcome(&rec, written);
            any = true;
        }
        drop(dev);
        if any
            && wants_interrupt(vring.get_mut().get_queue_mut(), &mem, self.event_idx)
                .map_err(qerr)?
        {
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

/// The polling state one pass over the request queue reads and updates.
struct Pass {
    window: PollWindow,
    /// The worker slept after the last request, which it handled then.
    slept: Option<Instant>,
    /// When this pass handled its last request.
    last_request: Option<Instant>,
    /// The ring's notifications could not be turned off or on.
    rearm: bool,
    /// The previous pass yielded with the notifications off.
    notifications_off: bool,
}

/// How a pass over the request queue ended.
enum Drained {
    /// Notifications are on (or never were off) and the ring was empty after them: the next
    /// request kicks.
    Asleep,
    /// A polling burst gave the thread back with notifications still off; the wake notifier
    /// brings it back.
    Yielded,
}

/// The end of a frontend connection (it went away, or its session failed). The connection's
/// worker threads stop first: one may still be draining a batch the frontend made available
/// before it went away (its memory stays mapped until the daemon object goes), and nothing it
/// makes may outlive the reset; dropping the daemon joins them. Then the fds the connection
/// leaves behind are closed and the guest state goes (with a journaled state of a previous run
/// that this frontend did not resume).
pub fn end_connection(
    shared: &Shared,
    daemon: vhost_user_backend::VhostUserDaemon<Arc<std::sync::RwLock<VhostDevice>>>,
) {
    for h in daemon.get_epoll_handlers() {
        h.send_exit_event();
    }
    drop(daemon);
    shared.clear_worker();
    shared.close_exit_events();
    let mut dev = shared.device();
    dev.discard_resume_state();
    dev.reset(false);
}

/// Tell the device where the driver keeps its request queue (a journal of another driver is
/// not resumed).
fn note_ring(dev: &mut Device, vring: &vring::Vring) {
    let state = vring.get_ref();
    let q = state.get_queue();
    dev.set_ring_identity(q.desc_table(), q.avail_ring(), q.used_ring(), q.size());
}

/// The inode of the file `fd` refers to, if `fd` is open.
fn inode(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat of any descriptor number into a zeroed stat; a closed one is an error.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some(st.st_ino)
    }
}

/// Make `table` the memory `mem` hands out (a poisoned lock is taken over: the table is
/// replaced whole).
fn publish(mem: &Mem, table: GuestMemoryMmap) {
    match mem.lock() {
        Ok(g) => g.replace(table),
        Err(p) => p.into_inner().replace(table),
    }
}

/// Whether the driver wants an interrupt for the buffers just used. With EVENT_IDX the
/// `used_event` rule decides (virtio-queue); without it the driver's VRING_AVAIL_F_NO_INTERRUPT
/// flag does (virtio 1.3, 2.7.10: the device SHOULD NOT notify while it is set), which
/// virtio-queue 0.18 does not look at.
fn wants_interrupt(
    q: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    event_idx: bool,
) -> Result<bool, virtio_queue::Error> {
    use vm_memory::Bytes;
    let needs = q.needs_notification(mem)?;
    if event_idx || !needs {
        return Ok(needs);
    }
    // The avail ring starts with the driver's le16 flags (2-byte aligned: checked when the
    // frontend set the ring address).
    let flags: u16 = mem
        .load(
            vm_memory::GuestAddress(q.avail_ring()),
            std::sync::atomic::Ordering::Acquire,
        )
        .map_err(virtio_queue::Error::GuestMemory)?;
    Ok(u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT_FLAG == 0)
}

/// `VRING_AVAIL_F_NO_INTERRUPT` (virtio 1.3, 2.7.6).
const VRING_AVAIL_F_NO_INTERRUPT_FLAG: u16 = 1;

impl VhostUserBackendMut for VhostDevice {
    type Bitmap = ();
    type Vring = vring::Vring;

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
        // SET_FEATURES runs on the message handler thread: narrow its seccomp filter (once).
        if let Err(e) = crate::os::sandbox::enter_handler() {
            log::error!("{e}");
        }
        // The device model keeps only its own bits; ring and vhost-user bits are the transport's.
        self.shared.device().set_acked_features(features);
        log::info!("driver acknowledged features {features:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE;
        if self.shared.transfer.get().is_some() {
            f |= VhostUserProtocolFeatures::DEVICE_STATE;
        }
        f
    }

    fn set_device_state_fd(
        &mut self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: std::fs::File,
    ) -> io::Result<Option<std::fs::File>> {
        let transfer = self.shared.transfer.get().ok_or_else(|| {
            io::Error::new(io::ErrorKind::Unsupported, "no device state transfer")
        })?;
        if phase != VhostTransferStatePhase::STOPPED {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("device state transfer in phase {phase:?}"),
            ));
        }
        let pending = match direction {
            VhostTransferStateDirection::SAVE => {
                let data = self.shared.device().save_state();
                log::info!("saving the device state for migration: {} bytes", data.len());
                transfer.save(file, data)
            }
            VhostTransferStateDirection::LOAD => {
                let dev = self.shared.device();
                if !dev.is_pristine() {
                    return Err(io::Error::other(
                        "the device already has guest state; a state is loaded into a reset device only",
                    ));
                }
                let limit = load_limit(dev.config().max_mappings);
                drop(dev);
                transfer.load(file, limit)
            }
        }
        .map_err(io::Error::other)?;
        let mut slot = self.transfer.lock().unwrap_or_else(|p| p.into_inner());
        if slot.replace(pending).is_some() {
            warn!("a device state transfer was started and never checked; its result is dropped");
        }
        Ok(None)
    }

    fn check_device_state(&self) -> io::Result<()> {
        let pending = self
            .transfer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| {
                warn!("CHECK_DEVICE_STATE without a transfer (SET_DEVICE_STATE_FD) to check");
                io::Error::other("no device state transfer to check")
            })?;
        let finished = pending.wait().map_err(|e| {
            warn!("{e}");
            io::Error::other(e)
        })?;
        let data = match finished {
            Finished::Saved(n) => {
                log::info!("device state saved: {n} bytes written");
                return Ok(());
            }
            Finished::Loaded(data) => data,
        };
        let refuse = |e: model::device::state::StateError| {
            warn!("{e}");
            io::Error::other(e)
        };
        let mut dev = self.shared.device();
        if dev.has_walk_memory() {
            let s = dev.load_state(&data).map_err(refuse)?;
            log::info!("device state loaded ({} bytes): {s:?}", data.len());
            return Ok(());
        }
        // No memory table yet: check everything that can be checked now, replay when guest RAM
        // is known (mappings and tables point into it).
        let parsed = parse_state(&data, StreamKind::Migration).map_err(refuse)?;
        dev.check_state_header(&parsed.header).map_err(refuse)?;
        log::info!(
            "device state received ({} bytes, {} records): applied once the memory table arrives",
            data.len(),
            parsed.records.len()
        );
        *self
            .deferred_state
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(data);
        Ok(())
    }

    fn reset_device(&mut self) {
        log::info!("device reset by the frontend: domains, endpoints and mappings dropped");
        self.shared.device().reset(true);
    }

    fn stop_vring(&mut self, queue_index: u32) -> io::Result<()> {
        if queue_index == u32::from(REQUEST_QUEUE) {
            self.stopped_at = Some(self.last_avail);
        }
        Ok(())
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

    fn update_memory(&mut self, handler_mem: Mem) -> io::Result<()> {
        // `vhost-user-backend` has already published the new table to its own vrings: check it
        // before the device uses it, and on a refusal put the previous table back there too,
        // so a table that cannot be backed is never touched (a read past the end of a file is
        // a SIGBUS). A refusal fails the frontend's request (SET_MEM_TABLE, ADD_MEM_REG, ...).
        let new: GuestMemoryMmap = (*handler_mem.memory()).clone();
        let refuse = |e: io::Error| {
            publish(&handler_mem, (*self.mem.memory()).clone());
            warn!("memory table refused: {e}");
            e
        };
        if let Err(e) = memory::check_table(&new) {
            return Err(refuse(io::Error::new(io::ErrorKind::InvalidInput, e)));
        }
        // The host backend maps guest RAM (iommufd: the stage-2 IOAS); a refusal fails the
        // frontend's request too.
        let regions: Vec<model::host::GuestRegion> = new
            .iter()
            .map(|r| model::host::GuestRegion {
                gpa: vm_memory::GuestMemoryRegion::start_addr(r).raw_value(),
                size: vm_memory::GuestMemoryRegion::len(r),
                host_addr: r.as_ptr() as u64,
                file: vm_memory::GuestMemoryRegion::file_offset(r)
                    .map(|f| (f.file().as_raw_fd(), f.start())),
            })
            .collect();
        {
            let mut dev = self.shared.device();
            if let Err(e) = dev.set_guest_memory(&regions) {
                return Err(refuse(io::Error::other(e)));
            }
            publish(&self.mem, new);
            if std::mem::take(&mut self.rearm) {
                // The worker could not re-arm the ring's notifications while the ring was
                // outside guest RAM: it does now.
                self.shared.wake();
            }
            // The software backend walks guest tables in the same memory.
            dev.set_walk_memory(self.mem.clone());
            let deferred = self
                .deferred_state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(data) = deferred {
                match dev.load_state(&data) {
                    Ok(s) => log::info!("migrated device state applied: {s:?}"),
                    // Too late to fail CHECK_DEVICE_STATE: the guest finds a reset device.
                    Err(e) => log::error!("migrated device state not applied: {e}"),
                }
            }
        }
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
                .map_err(|e| warn!("cannot create the worker exit event: {e}"))
                .ok()?;
        // vhost-user-backend 0.24 registers the consumer with `into_raw_fd` and never closes
        // it: remember it, to close it once the connection's threads are gone.
        self.shared.handed_out(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[vring::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        // The first event on a worker thread sets its scheduling policy, then narrows its
        // seccomp filter (both no-ops afterwards).
        if let Some(outcome) = crate::os::sched::enter_worker(self.sched) {
            // SAFETY: gettid has no arguments and cannot fail.
            let tid = unsafe { libc::gettid() };
            *self.shared.worker_slot() = Some(WorkerThread {
                tid,
                sched_error: outcome.err().map(|e| e.to_string()),
            });
        }
        crate::os::sandbox::enter_worker()?;
        let vring = |q: u16| {
            vrings
                .get(usize::from(q))
                .ok_or(VhostError::UnknownEvent(q))
        };
        if self.resume_pending {
            self.resume_pending = false;
            self.ring_noted = true;
            self.resolve_resume(vring(REQUEST_QUEUE)?);
        }
        if !self.ring_noted {
            self.ring_noted = true;
            note_ring(&mut self.shared.device(), vring(REQUEST_QUEUE)?);
        }
        self.check_restart(vring(REQUEST_QUEUE)?);
        match device_event {
            REQUEST_QUEUE => self.process_requests(vring(REQUEST_QUEUE)?)?,
            EVENT_QUEUE => self.deliver_events(vring(EVENT_QUEUE)?)?,
            WAKE_EVENT_ID => {
                // Non-blocking: a spurious wake-up just finds nothing.
                let _ = self.shared.wake_consumer.consume();
                self.deliver_events(vring(EVENT_QUEUE)?)?;
                self.process_requests(vring(REQUEST_QUEUE)?)?
            }
            PAGE_REQUEST_EVENT_ID => {
                self.shared.device().host_events();
                self.deliver_events(vring(EVENT_QUEUE)?)?;
            }
            other => return Err(VhostError::UnknownEvent(other).into()),
        }
        Ok(())
    }
}
