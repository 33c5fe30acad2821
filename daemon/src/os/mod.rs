//! What the daemon's threads ask of the kernel for themselves, used by every layer that starts
//! threads or sockets: the per-thread seccomp filters ([`sandbox`]), the request-queue worker's
//! CPU policy ([`sched`]) and unix socket binding ([`socket`]). The service installs the
//! policies; the transport's threads enter them.

pub mod sandbox;
pub mod sched;
pub mod socket;
