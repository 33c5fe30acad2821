//! Per-thread seccomp filters.
//!
//! Each thread installs the filter of its role before it handles any input. A system call
//! outside the allow list kills the whole process (SIGSYS, core dump), so a compromised thread
//! cannot carry on. Filters stack: threads started after a filter is installed inherit it, which
//! is how the vhost-user worker threads (started by the main thread) get the main filter.
//!
//! Every role allows the calls any thread makes: memory allocation, futexes, signal delivery
//! (the SIGINT/SIGTERM handler writes to a pipe on whichever thread the signal lands), logging
//! (stderr or the journal socket) and thread exit. The lists are x86_64 and aarch64 names from
//! `libc::SYS_*`; a call the C library makes on one architecture only is listed under `cfg`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("seccomp: unsupported architecture {0}")]
    Arch(String),
    #[error("seccomp: cannot build the {role:?} filter: {err}")]
    Build {
        role: Role,
        err: seccompiler::BackendError,
    },
    #[error("seccomp: cannot install the {role:?} filter: {err}")]
    Install { role: Role, err: seccompiler::Error },
}

/// What a thread does, and so which system calls it may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The connection loop and, inherited, the vhost-user threads: accept a frontend, receive
    /// messages with file descriptors, map guest memory, epoll on kick/call eventfds, start
    /// threads.
    Main,
    /// The control socket: accept clients, start a thread per client, read and write lines.
    Control,
    /// Wait for SIGINT/SIGTERM, remove the socket files, exit.
    Signals,
    /// Ping systemd's watchdog (a datagram socket per ping).
    Watchdog,
    /// A vhost-user worker thread, which reads guest-controlled rings: on top of the main
    /// filter it inherits, only epoll, eventfd reads/writes and writes to invalidation
    /// subscribers. Installed by the thread itself on its first event ([`enter_worker`]).
    Worker,
    /// The vhost-user message handler thread: on top of the main filter it inherits, only
    /// what the frontend's messages need (receive fds, map guest memory, register vring
    /// eventfds). Installed by the thread itself when the frontend sets the features
    /// ([`enter_handler`]).
    Handler,
    /// The device state transfer thread (live migration): reads or writes the pipe the frontend
    /// passed; nothing beyond the calls every thread makes.
    Transfer,
    /// `vhost-user-iommu proxy` (its one thread): accept the VMM, connect to the daemon,
    /// forward messages with fds, read a vring's used index from guest memory (pread), signal
    /// a kick eventfd.
    Proxy,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Main,
        Role::Control,
        Role::Signals,
        Role::Watchdog,
        Role::Worker,
        Role::Handler,
        Role::Transfer,
        Role::Proxy,
    ];
}

/// A system call: its name (as systemd and strace spell it) and its number.
pub type Call = (&'static str, i64);

/// `sys![libc::SYS_read, ...]`: the calls with their names taken from the constants.
macro_rules! sys {
    ($($c:path),* $(,)?) => {
        vec![$((sys_name(stringify!($c)), $c)),*]
    };
}

const fn sys_name(path: &'static str) -> &'static str {
    // "libc :: SYS_set_robust_list" -> "set_robust_list": what follows the first "SYS_".
    let b = path.as_bytes();
    let mut j = 0;
    while j + 4 <= b.len() {
        if b[j] == b'S' && b[j + 1] == b'Y' && b[j + 2] == b'S' && b[j + 3] == b'_' {
            if let Some((_, name)) = path.split_at_checked(j + 4) {
                return name;
            }
        }
        j += 1;
    }
    path
}

/// Calls every thread may make.
fn common() -> Vec<Call> {
    let mut v = sys![
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_futex,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_sched_yield,
        libc::SYS_getrandom,
        // Logging to the journal: datagrams on an already open socket; big entries travel in
        // a sealed memfd.
        libc::SYS_sendmsg,
        libc::SYS_sendto,
        libc::SYS_memfd_create,
        libc::SYS_ftruncate,
        libc::SYS_fcntl,
        libc::SYS_statx,
        libc::SYS_newfstatat,
        libc::SYS_fstat,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend(sys![libc::SYS_rseq]);
    v
}

/// Starting threads (std::thread::spawn).
fn thread_start() -> Vec<Call> {
    sys![
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_prctl,
        libc::SYS_sched_getaffinity,
        libc::SYS_getrlimit,
        libc::SYS_prlimit64,
    ]
}

/// The system calls `role` may make, by name and number.
pub fn role_calls(role: Role) -> Vec<Call> {
    let mut v = common();
    match role {
        Role::Main => {
            v.extend(thread_start());
            v.extend(sys![
                // vhost-user connection: accept, messages carrying fds, replies.
                libc::SYS_accept4,
                libc::SYS_recvmsg,
                libc::SYS_recvfrom,
                libc::SYS_shutdown,
                libc::SYS_getsockopt,
                libc::SYS_setsockopt,
                // Guest memory regions and vring eventfds.
                libc::SYS_lseek,
                libc::SYS_dup,
                libc::SYS_dup3,
                libc::SYS_eventfd2,
                libc::SYS_epoll_create1,
                libc::SYS_epoll_ctl,
                libc::SYS_epoll_pwait,
                libc::SYS_ppoll,
                // FIONBIO only (set_nonblocking).
                libc::SYS_ioctl,
                // sd_notify status updates: a datagram socket per message.
                libc::SYS_socket,
                libc::SYS_connect,
                // Worker threads add their own, narrower filter (filters only ever restrict).
                libc::SYS_seccomp,
                // ... after setting their own scheduling policy (--worker-sched; pid 0 only),
                // which keeps the thread's nice value (getpriority, read-only).
                libc::SYS_sched_setattr,
                libc::SYS_getpriority,
            ]);
            #[cfg(target_arch = "x86_64")]
            v.extend(sys![libc::SYS_epoll_wait, libc::SYS_poll]);
        }
        Role::Control => {
            v.extend(thread_start());
            v.extend(sys![
                // FIONBIO only: a `subscribe` connection becomes non-blocking.
                libc::SYS_ioctl,
                libc::SYS_accept4,
                libc::SYS_recvfrom,
                libc::SYS_shutdown,
                libc::SYS_setsockopt,
                libc::SYS_getsockopt,
            ]);
        }
        Role::Signals => {
            v.extend(sys![
                libc::SYS_recvfrom,
                libc::SYS_ppoll,
                libc::SYS_unlinkat
            ]);
            #[cfg(target_arch = "x86_64")]
            v.extend(sys![libc::SYS_poll, libc::SYS_unlink]);
        }
        Role::Watchdog => {
            v.extend(sys![libc::SYS_socket, libc::SYS_connect]);
        }
        Role::Handler => {
            v.extend(sys![
                libc::SYS_recvmsg,
                libc::SYS_recvfrom,
                libc::SYS_shutdown,
                libc::SYS_epoll_ctl,
                libc::SYS_eventfd2,
                libc::SYS_dup,
                libc::SYS_dup3,
                libc::SYS_lseek,
                // FIONBIO (plus the backend's ioctls).
                libc::SYS_ioctl,
                // vhost checks that the fd of SET_BACKEND_REQ_FD or GPU_SET_SOCKET is a Unix
                // stream socket (SO_DOMAIN, SO_TYPE) before it refuses or takes it: without
                // this call any frontend could kill the daemon with one such message.
                libc::SYS_getsockopt,
            ]);
        }
        Role::Transfer => {}
        Role::Proxy => {
            v.extend(sys![
                libc::SYS_accept4,
                libc::SYS_recvmsg,
                libc::SYS_recvfrom,
                // Connecting to the daemon (unix sockets only, as everywhere), sd_notify.
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_ppoll,
                libc::SYS_pread64,
                libc::SYS_dup,
                libc::SYS_shutdown,
            ]);
            #[cfg(target_arch = "x86_64")]
            v.extend(sys![libc::SYS_poll]);
        }
        Role::Worker => {
            // shutdown: an invalidation subscriber that cannot keep up is cut off; epoll_ctl:
            // the iommufd backend adds a vIOMMU's event queue to its page-request epoll set
            // when a guest binds its first table.
            v.extend(sys![
                libc::SYS_epoll_pwait,
                libc::SYS_shutdown,
                libc::SYS_epoll_ctl
            ]);
            #[cfg(target_arch = "x86_64")]
            v.extend(sys![libc::SYS_epoll_wait]);
        }
    }
    v.sort_unstable_by_key(|c| c.1);
    v.dedup_by_key(|c| c.1);
    v
}

fn arch() -> Result<TargetArch, SandboxError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|_| SandboxError::Arch(std::env::consts::ARCH.to_string()))
}

/// The compiled filter of a role: allow the role's calls, kill the process on anything else.
pub fn filter(role: Role) -> Result<BpfProgram, SandboxError> {
    let build = |err| SandboxError::Build { role, err };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let ioctl_rule = |request: u64| -> Result<SeccompRule, SandboxError> {
        let c = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
            .map_err(build)?;
        SeccompRule::new(vec![c]).map_err(build)
    };
    // The host backend's ioctls, on the threads that serve requests.
    let backend_ioctls: &[u64] = match role {
        Role::Main | Role::Worker | Role::Handler => {
            BACKEND_IOCTLS.get().map_or(&[], Vec::as_slice)
        }
        _ => &[],
    };
    if !backend_ioctls.is_empty() {
        let chain = backend_ioctls
            .iter()
            .map(|&r| ioctl_rule(r))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_ioctl, chain);
    }
    for (_, nr) in role_calls(role) {
        let chain = if nr == libc::SYS_ioctl {
            // FIONBIO only (plus the backend's, above).
            let mut chain = rules.remove(&nr).unwrap_or_default();
            chain.push(ioctl_rule(libc::FIONBIO)?);
            chain
        } else if nr == libc::SYS_socket {
            // Unix sockets only (sd_notify); never a network socket.
            let unix = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )
            .map_err(build)?;
            vec![SeccompRule::new(vec![unix]).map_err(build)?]
        } else if nr == libc::SYS_sched_setattr {
            // The calling thread only (pid 0), never another process.
            let own = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0)
                .map_err(build)?;
            vec![SeccompRule::new(vec![own]).map_err(build)?]
        } else {
            Vec::new()
        };
        rules.insert(nr, chain);
    }
    let f = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch()?,
    )
    .map_err(build)?;
    BpfProgram::try_from(f).map_err(build)
}

/// ioctl request numbers the host backend makes while serving (iommufd, VFIO), allowed on the
/// main and worker threads. Set once, before the filters are installed.
static BACKEND_IOCTLS: OnceLock<Vec<u64>> = OnceLock::new();

/// Allow the host backend's ioctls (call before [`install`]; later calls are ignored).
pub fn allow_backend_ioctls(requests: &[u64]) {
    let _ = BACKEND_IOCTLS.set(requests.to_vec());
}

/// Install the filter of `role` on the calling thread (and the threads it starts later).
pub fn install(role: Role) -> Result<(), SandboxError> {
    let prog = filter(role)?;
    seccompiler::apply_filter(&prog).map_err(|err| SandboxError::Install { role, err })
}

/// Whether worker threads install their filter (set once by the server when seccomp is on).
static WORKER_FILTERS: AtomicBool = AtomicBool::new(false);

thread_local! {
    static WORKER_FILTERED: Cell<bool> = const { Cell::new(false) };
}

/// Make [`enter_worker`] install the worker filter from now on.
pub fn enable_worker_filters() {
    WORKER_FILTERS.store(true, Ordering::Relaxed);
}

/// Called by a vhost-user worker thread on each event: the first call installs the worker
/// filter on that thread (when enabled), later calls cost a thread-local read.
pub fn enter_worker() -> Result<(), SandboxError> {
    enter(Role::Worker)
}

/// Called on the vhost-user handler thread when the frontend sets the features (SET_FEATURES):
/// the first call installs the handler filter on that thread (when enabled).
pub fn enter_handler() -> Result<(), SandboxError> {
    enter(Role::Handler)
}

fn enter(role: Role) -> Result<(), SandboxError> {
    if !WORKER_FILTERS.load(Ordering::Relaxed) || WORKER_FILTERED.with(Cell::get) {
        return Ok(());
    }
    install(role)?;
    WORKER_FILTERED.with(|f| f.set(true));
    Ok(())
}

impl From<SandboxError> for std::io::Error {
    fn from(e: SandboxError) -> Self {
        std::io::Error::other(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `body` in a forked child with `role`'s filter installed; return how the child ended
    /// (the raw wait status).
    fn in_child(role: Role, body: fn() -> i32) -> libc::c_int {
        let prog = filter(role).unwrap();
        // SAFETY: the child only calls async-signal-safe functions (prctl/seccomp through
        // apply_filter, raw system calls, _exit) before it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = match seccompiler::apply_filter(&prog) {
                Ok(()) => body(),
                Err(_) => 99,
            };
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child, `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        status
    }

    fn exited_with(status: libc::c_int, code: i32) -> bool {
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == code
    }

    fn killed_by_sigsys(status: libc::c_int) -> bool {
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
    }

    #[test]
    fn backend_ioctls_are_allowed_where_requests_are_served() {
        // IOMMU_IOAS_MAP = _IO(';', 0x85). Other tests' expectations do not involve it.
        const IOAS_MAP: u64 = 0x3b85;
        allow_backend_ioctls(&[IOAS_MAP]);
        fn ioas_map() -> i32 {
            // SAFETY: an ioctl on an invalid fd fails with EBADF before reading the argument.
            unsafe { libc::ioctl(-1, IOAS_MAP as _, std::ptr::null_mut::<u8>()) };
            0
        }
        for role in [Role::Main, Role::Worker] {
            assert!(exited_with(in_child(role, ioas_map), 0), "{role:?}");
        }
        for role in [Role::Control, Role::Signals, Role::Watchdog] {
            assert!(killed_by_sigsys(in_child(role, ioas_map)), "{role:?}");
        }
    }

    #[test]
    fn a_thread_may_set_its_own_scheduling_policy_only() {
        // An all-zero sched_attr (size 0: the first layout, SCHED_OTHER) is what the forked
        // child already runs with; whatever the kernel answers, the filter must not kill.
        fn own() -> i32 {
            let attr = [0u8; 48];
            // SAFETY: sched_setattr reads at most 48 bytes of the valid local buffer.
            unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr.as_ptr(), 0) };
            0
        }
        fn other_process() -> i32 {
            let attr = [0u8; 48];
            // SAFETY: as above; pid 1 is another process.
            unsafe { libc::syscall(libc::SYS_sched_setattr, 1, attr.as_ptr(), 0) };
            0
        }
        assert!(exited_with(in_child(Role::Main, own), 0));
        assert!(killed_by_sigsys(in_child(Role::Main, other_process)));
        for role in [Role::Control, Role::Signals, Role::Watchdog, Role::Transfer] {
            assert!(killed_by_sigsys(in_child(role, own)), "{role:?}");
        }
    }

    #[test]
    fn the_handler_may_ask_a_socket_its_type() {
        // vhost validates the fd of SET_BACKEND_REQ_FD and GPU_SET_SOCKET with SO_DOMAIN and
        // SO_TYPE on the message handler thread: a frontend's fd must be refused, not kill.
        fn so_type() -> i32 {
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into the valid local `v`; the
            // invalid fd makes it fail with EBADF.
            unsafe {
                libc::getsockopt(
                    -1,
                    libc::SOL_SOCKET,
                    libc::SO_TYPE,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            0
        }
        for role in [Role::Main, Role::Handler] {
            assert!(exited_with(in_child(role, so_type), 0), "{role:?}");
        }
    }

    #[test]
    fn calls_carry_their_names() {
        let main = role_calls(Role::Main);
        for (name, nr) in [
            ("read", libc::SYS_read),
            ("set_robust_list", libc::SYS_set_robust_list),
            ("epoll_pwait", libc::SYS_epoll_pwait),
            ("accept4", libc::SYS_accept4),
        ] {
            assert!(main.contains(&(name, nr)), "{name}");
        }
        assert!(!main
            .iter()
            .any(|(n, _)| n.contains("SYS") || n.contains(':')));
    }

    #[test]
    fn allowed_calls_run_and_forbidden_calls_kill() {
        // Allowed: getpid, an eventfd-free write to a pipe that does not exist (EBADF is an
        // answer, not a kill).
        fn allowed() -> i32 {
            // SAFETY: raw system calls with no memory arguments (write gets a null buffer of
            // length 0 on an invalid fd, which fails with EBADF).
            unsafe {
                libc::syscall(libc::SYS_getpid);
                libc::syscall(libc::SYS_write, -1, std::ptr::null::<u8>(), 0);
            }
            0
        }
        // Forbidden everywhere: opening files, ptrace, mount.
        fn open_file() -> i32 {
            // SAFETY: openat with a valid NUL-terminated path.
            unsafe {
                libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/etc/passwd".as_ptr(), 0);
            }
            0
        }
        fn ptrace() -> i32 {
            // SAFETY: PTRACE_TRACEME has no memory arguments.
            unsafe {
                libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0);
            }
            0
        }
        fn new_socket() -> i32 {
            // SAFETY: socket() has no memory arguments.
            unsafe {
                libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0);
            }
            0
        }
        fn execve() -> i32 {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            // SAFETY: valid NUL-terminated path and NULL-terminated argv; envp NULL.
            unsafe {
                libc::syscall(
                    libc::SYS_execve,
                    c"/bin/true".as_ptr(),
                    argv.as_ptr(),
                    std::ptr::null::<*const libc::c_char>(),
                );
            }
            0
        }
        for role in Role::ALL {
            let st = in_child(role, allowed);
            assert!(exited_with(st, 0), "{role:?}: allowed path, status {st:#x}");
            for (name, f) in [
                ("openat", open_file as fn() -> i32),
                ("ptrace", ptrace),
                ("execve", execve),
            ] {
                let st = in_child(role, f);
                assert!(killed_by_sigsys(st), "{role:?}: {name} not killed: {st:#x}");
            }
        }
        // No role may open a network socket.
        for role in Role::ALL {
            assert!(killed_by_sigsys(in_child(role, new_socket)), "{role:?}");
        }
        // The roles that talk to systemd may open unix sockets, the others not.
        fn unix_socket() -> i32 {
            // SAFETY: socket() has no memory arguments.
            let fd = unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_DGRAM, 0) };
            i32::from(fd < 0)
        }
        for role in [Role::Main, Role::Watchdog, Role::Proxy] {
            assert!(exited_with(in_child(role, unix_socket), 0), "{role:?}");
        }
        for role in [Role::Control, Role::Signals, Role::Worker, Role::Handler] {
            assert!(killed_by_sigsys(in_child(role, unix_socket)), "{role:?}");
        }
        // The worker cannot start threads, accept connections or receive file descriptors.
        fn start_thread() -> i32 {
            // SAFETY: clone with flags only and no stack: fails or forks; the child exits.
            let r = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
            if r == 0 {
                // SAFETY: leaving the child at once.
                unsafe { libc::_exit(0) };
            }
            0
        }
        fn recvmsg() -> i32 {
            // SAFETY: recvmsg on an invalid fd with a null message fails with EBADF (if allowed).
            unsafe { libc::syscall(libc::SYS_recvmsg, -1, std::ptr::null::<u8>(), 0) };
            0
        }
        assert!(exited_with(in_child(Role::Main, start_thread), 0));
        assert!(exited_with(in_child(Role::Main, recvmsg), 0));
        assert!(killed_by_sigsys(in_child(Role::Worker, start_thread)));
        assert!(killed_by_sigsys(in_child(Role::Worker, recvmsg)));
        // The handler receives messages with fds but starts no threads.
        assert!(exited_with(in_child(Role::Handler, recvmsg), 0));
        assert!(killed_by_sigsys(in_child(Role::Handler, start_thread)));
        // ioctl: FIONBIO (set_nonblocking) where used, nothing else anywhere.
        fn fionbio() -> i32 {
            let mut on: libc::c_int = 1;
            // SAFETY: FIONBIO on stdin with a valid int pointer.
            unsafe { libc::ioctl(0, libc::FIONBIO, &mut on) };
            0
        }
        fn tcgets() -> i32 {
            // SAFETY: TCGETS on stdin with a valid termios buffer.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { libc::ioctl(0, libc::TCGETS, &mut t) };
            0
        }
        for role in [Role::Main, Role::Control] {
            assert!(exited_with(in_child(role, fionbio), 0), "{role:?}");
        }
        for role in [Role::Main, Role::Control, Role::Signals, Role::Watchdog] {
            assert!(killed_by_sigsys(in_child(role, tcgets)), "{role:?}");
        }
        for role in [Role::Signals, Role::Watchdog, Role::Worker] {
            assert!(killed_by_sigsys(in_child(role, fionbio)), "{role:?}");
        }
        // Only the signal thread may remove files.
        fn unlink() -> i32 {
            // SAFETY: valid NUL-terminated path.
            unsafe {
                libc::syscall(
                    libc::SYS_unlinkat,
                    libc::AT_FDCWD,
                    c"/nonexistent-vui".as_ptr(),
                    0,
                );
            }
            0
        }
        assert!(exited_with(in_child(Role::Signals, unlink), 0));
        for role in [
            Role::Main,
            Role::Control,
            Role::Watchdog,
            Role::Worker,
            Role::Handler,
        ] {
            assert!(killed_by_sigsys(in_child(role, unlink)), "{role:?}");
        }
    }
}
