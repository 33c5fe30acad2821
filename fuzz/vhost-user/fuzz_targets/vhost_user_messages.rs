//! The vhost-user message layer as a hostile VMM drives it: the daemon's `VhostDevice` behind
//! vhost-user-backend's own message handler, accepted on a real unix socket, fed a stream of
//! messages with file descriptors (sealed and unsealed memfds, memfds smaller than their
//! regions, eventfds, pipes, /dev/null) and kicked through every eventfd it was given. One
//! `Shared` device serves every input, as in the daemon, where connections come and go.
//!
//! Input: `u16 image_len`, `image_len` bytes copied to the start of every memfd handed over
//! (descriptor tables, rings, requests), then messages, each `u8 code, u8 flag mode, u8 fd
//! spec, u16 payload length, payload`.
//! Checked: no panic and no crash (a SIGBUS from memory past a file's end would end the
//! fuzzer); the connection ends; after the device reset that follows a connection, no guest
//! state is left.
#![no_main]

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use libfuzzer_sys::fuzz_target;
use model::config::{DeviceConfig, EndpointSet};
use model::device::Device;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vhost_user_iommu::transport::{Shared, VhostDevice};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Size of every memfd handed over (the "guest RAM" of a region).
const MEMFD_SIZE: u64 = 0x10000;
/// Most messages and payload bytes taken from one input.
const MAX_MESSAGES: usize = 64;
const MAX_PAYLOAD: usize = 1024;

fn shared() -> Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let device = Device::new(DeviceConfig {
                domain_start: 1,
                domain_end: 64,
                endpoints: EndpointSet::Ranges(vec![(0, 31)]),
                max_mappings: 4096,
                ..DeviceConfig::default()
            });
            Arc::new(Shared::new(device).expect("shared device"))
        })
        .clone()
}

fn memfd(size: u64, image: &[u8], seal: bool) -> OwnedFd {
    let name = c"vui-fuzz";
    // SAFETY: a valid NUL-terminated name.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(raw >= 0, "memfd_create");
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut f = std::fs::File::from(fd);
    f.set_len(size).expect("set_len");
    let n = image.len().min(size as usize);
    f.write_all(&image[..n]).expect("write image");
    if seal {
        // SAFETY: F_ADD_SEALS on our own memfd.
        let r = unsafe {
            libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)
        };
        assert_eq!(r, 0, "seal");
    }
    OwnedFd::from(f)
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd has no memory arguments.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(raw >= 0, "eventfd");
    // SAFETY: a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// The fds of one message: `spec & 7` is the kind, `(spec >> 3) & 3` how many.
fn fds_for(spec: u8, image: &[u8], kicks: &mut Vec<OwnedFd>) -> Vec<OwnedFd> {
    let n = usize::from((spec >> 3) & 3);
    let mut out = Vec::new();
    for _ in 0..n {
        let fd = match spec & 7 {
            1 => memfd(MEMFD_SIZE, image, true),
            2 => memfd(MEMFD_SIZE, image, false),
            3 => memfd(0x1000, image, true),
            4 => {
                let e = eventfd();
                kicks.push(e.try_clone().expect("dup eventfd"));
                e
            }
            5 => OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null")),
            6 => {
                let mut p = [0 as RawFd; 2];
                // SAFETY: pipe2 writes two descriptors into `p`.
                assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
                // SAFETY: fresh descriptors nothing else owns.
                let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
                drop(w);
                r
            }
            7 => memfd(0, image, true),
            _ => return out,
        };
        out.push(fd);
    }
    out
}

/// Send `bytes` with `fds` in one message.
fn send(sock: &UnixStream, bytes: &[u8], fds: &[OwnedFd]) {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let iov = [IoSlice::new(bytes)];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((raw.len() * std::mem::size_of::<RawFd>()) as u32) };
    let mut cbuf = vec![0u8; space as usize];
    // SAFETY: a zeroed msghdr is valid; the fields set point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = cbuf.len() as _;
        // SAFETY: the control buffer holds one header of CMSG_SPACE(len) bytes.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((raw.len() * std::mem::size_of::<RawFd>()) as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c).cast(), raw.len());
        }
    }
    // SAFETY: `msg` points at live buffers for the duration of the call. A failed send (the
    // daemon closed the connection) just ends the session early.
    unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
}

fn drain(sock: &mut UnixStream) {
    let mut buf = [0u8; 4096];
    while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
}

fuzz_target!(|data: &[u8]| {
    static N: AtomicU64 = AtomicU64::new(0);
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let image_len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (image, mut msgs) = rest.split_at(image_len);

    let path = std::env::temp_dir().join(format!(
        "vui-fuzz-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let mut listener = Listener::new(&path, true).expect("listener");
    let shared = shared();
    let backend = Arc::new(RwLock::new(VhostDevice::new(
        shared.clone(),
        // No polling: each input is one short session; a polling worker only adds noise.
        std::time::Duration::ZERO,
        Default::default(),
    )));
    let mut daemon = VhostUserDaemon::new(
        "vhost-user-iommu-fuzz".to_string(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .expect("daemon");
    let mut client = UnixStream::connect(&path).expect("connect");
    daemon.start(&mut listener).expect("accept");
    let _ = std::fs::remove_file(&path);
    client.set_nonblocking(true).expect("nonblocking");

    let mut kicks = Vec::new();
    for _ in 0..MAX_MESSAGES {
        let Some((&[code, mode, spec, l0, l1], tail)) = msgs.split_first_chunk::<5>() else {
            break;
        };
        let want = usize::from(u16::from_le_bytes([l0, l1])).min(MAX_PAYLOAD);
        let (payload, tail) = tail.split_at(want.min(tail.len()));
        msgs = tail;
        let flags: u32 = match mode & 3 {
            0 => 0x1,
            1 => 0x1 | 0x8,
            2 => u32::from(mode),
            _ => 0x5,
        };
        // Bit 5: a size field that does not match the payload sent.
        let size = if spec & 0x20 != 0 {
            payload.len() as u32 ^ u32::from(mode >> 2)
        } else {
            payload.len() as u32
        };
        let mut bytes = Vec::with_capacity(12 + payload.len());
        bytes.extend_from_slice(&u32::from(code).to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&size.to_le_bytes());
        bytes.extend_from_slice(payload);
        let fds = fds_for(spec, image, &mut kicks);
        send(&client, &bytes, &fds);
        drop(fds);
        // Kick (and call) through every eventfd handed over, so the rings are worked on.
        for k in &kicks {
            // SAFETY: an 8-byte write from a local to our own eventfd.
            unsafe { libc::write(k.as_raw_fd(), 1u64.to_ne_bytes().as_ptr().cast(), 8) };
        }
        drain(&mut client);
    }
    // Every message handled: a GET_FEATURES round trip (the handler answers in order, or has
    // closed the connection). Then kick once more and give the worker a moment to answer
    // through a call eventfd, so the rings the input set up are really worked on.
    client.set_nonblocking(false).expect("blocking");
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .expect("timeout");
    send(&client, &[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[]);
    let mut reply = [0u8; 20];
    let _ = client.read(&mut reply);
    if !kicks.is_empty() {
        for k in &kicks {
            // SAFETY: an 8-byte write from a local to our own eventfd.
            unsafe { libc::write(k.as_raw_fd(), 1u64.to_ne_bytes().as_ptr().cast(), 8) };
        }
        let mut polls: Vec<libc::pollfd> = kicks
            .iter()
            .map(|k| libc::pollfd {
                fd: k.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `polls` is a live array of pollfds of our own descriptors.
        unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 5) };
    }
    drop(client);
    let _ = daemon.wait();
    // As the daemon ends a connection.
    vhost_user_iommu::transport::end_connection(&shared, daemon);
    assert!(
        shared.device().is_pristine(),
        "a connection left guest state behind"
    );
});
