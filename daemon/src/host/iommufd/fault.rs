//! The fault queue (Linux `iommufd/eventq.c`, IOMMU_FAULT_QUEUE_ALLOC): the page requests of
//! devices whose DMA goes through a guest table, and the responses written back; and the
//! [`Watch`] set the vhost worker waits on (this queue and the vIOMMU's vEVENTQ).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use iommufd_sys as sys;
use log::warn;
use model::host::{BackendError, HostPageRequest};

use super::ids::{DevId, EndpointId, FaultId, Iommufd, Owned};
use super::wire;

/// Make `fd` non-blocking (the worker reads until it is empty); false if that failed.
pub fn nonblocking(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: fcntl on an open fd; F_SETFL takes an int.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) >= 0 }
}

/// A fault queue: its fd (closed before the object is destroyed) and what went through it.
#[derive(Debug)]
pub struct FaultQueue {
    file: OwnedFd,
    id: Owned<FaultId>,
    /// Page requests read.
    requests: u64,
    /// Page responses written.
    responses: u64,
}

impl FaultQueue {
    /// IOMMU_FAULT_QUEUE_ALLOC, non-blocking.
    pub fn alloc(fd: &Iommufd) -> Result<FaultQueue, sys::SysError> {
        let (id, file) = sys::fault_queue_alloc(fd.as_fd())?;
        let q = FaultQueue {
            file,
            id: Owned::new(fd, FaultId(id)),
            requests: 0,
            responses: 0,
        };
        if !nonblocking(q.file.as_fd()) {
            warn!("fault queue: cannot make it non-blocking");
        }
        Ok(q)
    }

    pub fn id(&self) -> FaultId {
        self.id.id()
    }

    pub fn file(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// (page requests read, responses written).
    pub fn counts(&self) -> (u64, u64) {
        (self.requests, self.responses)
    }

    /// Write one page response (`code` is the guest's PAGE_RESP code).
    pub fn respond(&mut self, cookie: u32, code: u16) -> Result<(), BackendError> {
        let b = wire::page_response(cookie, code);
        // SAFETY: writes 8 bytes from a live local buffer to an fd we own.
        let r = unsafe { libc::write(self.file.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        if usize::try_from(r).ok() != Some(b.len()) {
            return Err(BackendError::Os {
                call: "write(fault queue)",
                errno: std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            });
        }
        self.responses += 1;
        Ok(())
    }

    /// The page requests queued since the last call, each for the endpoint `endpoint_of` its
    /// device. A request of a device no endpoint has is answered INVALID at once.
    pub fn page_requests(
        &mut self,
        endpoint_of: impl Fn(DevId) -> Option<EndpointId>,
    ) -> Vec<HostPageRequest> {
        let mut out = Vec::new();
        let mut buf = [0u8; wire::PGFAULT_SIZE * 16];
        loop {
            // SAFETY: reads into a live local buffer of the given length from an fd we own.
            let r =
                unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(r) else { break };
            if n == 0 {
                break;
            }
            for rec in buf[..n].chunks_exact(wire::PGFAULT_SIZE) {
                let Some(f) = wire::PgFault::parse(rec) else {
                    continue;
                };
                let last = f.flags & wire::PGFAULT_FLAGS_LAST_PAGE != 0;
                let Some(endpoint) = endpoint_of(DevId(f.dev_id)) else {
                    warn!(
                        "page request of unknown device {}: answered INVALID",
                        f.dev_id
                    );
                    if last {
                        if let Err(e) = self.respond(f.cookie, model::protocol::PAGE_RESP_INVALID) {
                            warn!("{e}");
                        }
                    }
                    continue;
                };
                out.push(HostPageRequest {
                    endpoint: endpoint.0,
                    pasid: (f.flags & wire::PGFAULT_FLAGS_PASID_VALID != 0).then_some(f.pasid),
                    grpid: f.grpid,
                    perm: f.perm & wire::PGFAULT_PERM_MASK,
                    address: f.addr,
                    last,
                    cookie: f.cookie,
                });
            }
            if n < buf.len() {
                break;
            }
        }
        self.requests += out.len() as u64;
        out
    }
}

/// An epoll set of the host's event fds (the fault queue, the vEVENTQ while there is one): the
/// one fd the vhost worker watches. Closing an fd takes it out of the set.
#[derive(Debug)]
pub struct Watch(OwnedFd);

impl Watch {
    /// A new, empty set (None, logged, if the kernel refuses).
    pub fn new() -> Option<Watch> {
        // SAFETY: epoll_create1 has no memory arguments; a non-negative result is a new fd.
        let r = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if r < 0 {
            warn!("epoll_create1: {}", std::io::Error::last_os_error());
            return None;
        }
        // SAFETY: `r` is a new fd nobody else owns.
        Some(Watch(unsafe { OwnedFd::from_raw_fd(r) }))
    }

    /// Add `fd` (readable events, level-triggered).
    pub fn add(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd.as_raw_fd() as u64,
        };
        // SAFETY: both fds are open for the call; `ev` is a live epoll_event the kernel only
        // reads.
        let r = unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
