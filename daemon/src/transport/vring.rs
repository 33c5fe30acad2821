//! The device's vrings: `vhost-user-backend`'s [`VringRwLock`], with the frontend's kick and
//! call eventfds made non-blocking as they arrive.
//!
//! Those eventfds are the frontend's, in whatever mode it opened them. A worker reads the kick
//! after epoll says it is readable, and a frontend that drains its own kick first (or that
//! gave one fd to both queues) leaves that read blocked; a notification writes the call, and a
//! frontend that filled its counter leaves that write blocked. Either blocks with the ring
//! locked, the message handler then waits for that lock for good, the connection never ends
//! and no frontend is served again. Non-blocking, a read finds nothing (the queue is looked at
//! anyway) and a write that would overflow finds the frontend already notified.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use log::warn;
use vhost_user_backend::{VringRwLock, VringState, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::Error as VirtQueError;

use super::Mem;

/// A [`VringRwLock`] whose kick and call eventfds are non-blocking.
#[derive(Clone)]
pub struct Vring(VringRwLock);

impl std::fmt::Debug for Vring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vring").finish_non_exhaustive()
    }
}

/// Set O_NONBLOCK on the frontend's `file` (its open file description: the frontend's copy
/// too, which it already uses as an eventfd shared with us).
fn nonblocking(file: Option<File>) -> Option<File> {
    if let Some(f) = &file {
        // SAFETY: F_GETFL and F_SETFL on a descriptor `f` owns; no memory is passed.
        let r = unsafe {
            let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
            if flags < 0 || flags & libc::O_NONBLOCK != 0 {
                flags
            } else {
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
            }
        };
        if r < 0 {
            warn!(
                "cannot make a vring eventfd non-blocking: {}",
                io::Error::last_os_error()
            );
        }
    }
    file
}

/// A notification that would block finds the frontend notified already.
fn notified(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

/// Signal the frontend through `state`'s call eventfd.
pub fn signal(state: &VringState<Mem>) -> io::Result<()> {
    notified(state.signal_used_queue())
}

impl<'a> VringStateGuard<'a, Mem> for Vring {
    type G = RwLockReadGuard<'a, VringState<Mem>>;
}

impl<'a> VringStateMutGuard<'a, Mem> for Vring {
    type G = RwLockWriteGuard<'a, VringState<Mem>>;
}

impl VringT<Mem> for Vring {
    fn new(mem: Mem, max_queue_size: u16) -> Result<Self, VirtQueError> {
        VringRwLock::new(mem, max_queue_size).map(Vring)
    }

    fn get_ref(&self) -> RwLockReadGuard<'_, VringState<Mem>> {
        self.0.get_ref()
    }

    fn get_mut(&self) -> RwLockWriteGuard<'_, VringState<Mem>> {
        self.0.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.0.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        notified(self.0.signal_used_queue())
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.0.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.0.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.0.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.0.set_enabled(enabled)
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        self.0.set_queue_info(desc_table, avail_ring, used_ring)
    }

    fn queue_next_avail(&self) -> u16 {
        self.0.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.0.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.0.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.0.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.0.set_queue_size(num)
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.0.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.0.set_queue_ready(ready)
    }

    fn set_kick(&self, file: Option<File>) {
        self.0.set_kick(nonblocking(file))
    }

    /// A kick that is gone by the time it is read (the frontend drained it) is no error: the
    /// queue is looked at anyway, if enabled.
    fn read_kick(&self) -> io::Result<bool> {
        match self.0.read_kick() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(self.0.get_ref().is_enabled()),
            other => other,
        }
    }

    fn set_call(&self, file: Option<File>) {
        self.0.set_call(nonblocking(file))
    }

    fn set_err(&self, file: Option<File>) {
        self.0.set_err(file)
    }
}
