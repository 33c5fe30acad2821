//! CPU scheduling of the request-queue worker thread (`--worker-sched`).
//!
//! The Linux driver spins, interrupts off, until the device has answered each MAP/UNMAP batch,
//! so the time between the guest's kick and the worker running is guest-visible latency. When
//! the host's cores are busy (vCPU threads that spin are always runnable), that time is decided
//! by the scheduler, not by the daemon. The policies (docs/BENCHMARKS.md has the measurements):
//!
//! - `other[:SLICE_US]` (default `other:100`): the normal time-sharing policy, asking the EEVDF
//!   scheduler (Linux >= 6.12) for a short slice, a latency hint that lets a woken worker
//!   preempt a running vCPU thread sooner. It changes no CPU share and needs no privilege; older
//!   kernels ignore it. `other:0` keeps the kernel's default slice.
//! - `fifo:PRIO`: SCHED_FIFO at PRIO (1-99). A kick preempts any normal thread at once. The
//!   worker then runs as long as the guest keeps its queue busy, up to the kernel's real-time
//!   limit (`kernel.sched_rt_runtime_us`, 95% of a core by default): give the daemon a core of
//!   its own. Needs RLIMIT_RTPRIO >= PRIO (systemd: `LimitRTPRIO=`) or root, which raises the
//!   limit before dropping privileges.
//! - `deadline:RUNTIME_US/PERIOD_US`: SCHED_DEADLINE with that CPU budget per period. A kick
//!   preempts everything while budget is left, and the kernel stops the worker for the rest of
//!   the period once it is spent: a guest that floods its queue gets at most RUNTIME/PERIOD of a
//!   core. Needs CAP_SYS_NICE in the worker (root without `--user`).
//!
//! The policy is tried once at start on a probe thread, with the privileges the daemon will
//! serve with, so a policy the host refuses stops the daemon with a message saying what to
//! change instead of failing on the first connection.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::Duration;

/// EEVDF accepts custom slices of 0.1 ms to 100 ms.
const SLICE_MIN_US: u64 = 100;
const SLICE_MAX_US: u64 = 100_000;
/// SCHED_DEADLINE refuses runtimes under 1 us (and periods over 4 s by default).
const DL_MIN_US: u64 = 1;
const DL_MAX_PERIOD_US: u64 = 4_000_000;

const SCHED_OTHER: u32 = 0;
const SCHED_FIFO: u32 = 1;
const SCHED_DEADLINE: u32 = 6;
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error(
        "{spec:?}: {why} (expected other[:SLICE_US], fifo:PRIO or deadline:RUNTIME_US/PERIOD_US)"
    )]
    Parse { spec: String, why: String },
    #[error("--worker-sched {spec}: the kernel refused it: {err}; {hint}")]
    Refused {
        spec: WorkerSched,
        err: io::Error,
        hint: String,
    },
    #[error("--worker-sched {0}: cannot start the probe thread: {1}")]
    Probe(WorkerSched, io::Error),
}

/// How the request-queue worker thread is scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerSched {
    /// SCHED_OTHER; `slice_us` is the EEVDF slice asked for (0: the kernel's default).
    Other { slice_us: u64 },
    /// SCHED_FIFO at this priority.
    Fifo { priority: u8 },
    /// SCHED_DEADLINE: `runtime_us` of CPU every `period_us` (relative deadline = period).
    Deadline { runtime_us: u64, period_us: u64 },
}

impl Default for WorkerSched {
    fn default() -> Self {
        WorkerSched::Other {
            slice_us: SLICE_MIN_US,
        }
    }
}

impl fmt::Display for WorkerSched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerSched::Other { slice_us } => write!(f, "other:{slice_us}"),
            WorkerSched::Fifo { priority } => write!(f, "fifo:{priority}"),
            WorkerSched::Deadline {
                runtime_us,
                period_us,
            } => write!(f, "deadline:{runtime_us}/{period_us}"),
        }
    }
}

impl FromStr for WorkerSched {
    type Err = SchedError;

    fn from_str(s: &str) -> Result<Self, SchedError> {
        let bad = |why: String| SchedError::Parse {
            spec: s.to_string(),
            why,
        };
        let num = |v: &str, what: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("{what} {v:?} is not a whole number")))
        };
        let (policy, arg) = match s.split_once(':') {
            Some((p, a)) => (p.trim(), Some(a)),
            None => (s.trim(), None),
        };
        match (policy, arg) {
            ("other", None) => Ok(WorkerSched::default()),
            ("other", Some(a)) => {
                let slice_us = num(a, "slice")?;
                if slice_us != 0 && !(SLICE_MIN_US..=SLICE_MAX_US).contains(&slice_us) {
                    return Err(bad(format!(
                        "the slice must be 0 (kernel default) or {SLICE_MIN_US}-{SLICE_MAX_US} us"
                    )));
                }
                Ok(WorkerSched::Other { slice_us })
            }
            ("fifo", Some(a)) => match u8::try_from(num(a, "priority")?) {
                Ok(priority @ 1..=99) => Ok(WorkerSched::Fifo { priority }),
                _ => Err(bad("the priority must be 1-99".into())),
            },
            ("deadline", Some(a)) => {
                let (r, p) = a
                    .split_once('/')
                    .ok_or_else(|| bad("give RUNTIME_US/PERIOD_US".into()))?;
                let (runtime_us, period_us) = (num(r, "runtime")?, num(p, "period")?);
                if runtime_us < DL_MIN_US || runtime_us > period_us || period_us > DL_MAX_PERIOD_US
                {
                    return Err(bad(format!(
                        "need {DL_MIN_US} us <= runtime <= period <= {DL_MAX_PERIOD_US} us"
                    )));
                }
                Ok(WorkerSched::Deadline {
                    runtime_us,
                    period_us,
                })
            }
            ("fifo" | "deadline", None) => Err(bad(format!("`{policy}` needs a parameter"))),
            _ => Err(bad(format!("unknown policy {policy:?}"))),
        }
    }
}

/// `struct sched_attr` as of SCHED_ATTR_SIZE_VER0 (48 bytes).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

impl WorkerSched {
    fn attr(&self) -> SchedAttr {
        let ns = |us: u64| us.saturating_mul(1000);
        let mut a = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            ..SchedAttr::default()
        };
        match *self {
            WorkerSched::Other { slice_us } => {
                a.policy = SCHED_OTHER;
                a.nice = current_nice();
                a.runtime = ns(slice_us);
            }
            WorkerSched::Fifo { priority } => {
                a.policy = SCHED_FIFO;
                a.priority = u32::from(priority);
                a.flags = SCHED_FLAG_RESET_ON_FORK;
            }
            WorkerSched::Deadline {
                runtime_us,
                period_us,
            } => {
                a.policy = SCHED_DEADLINE;
                a.runtime = ns(runtime_us);
                a.deadline = ns(period_us);
                a.period = ns(period_us);
                a.flags = SCHED_FLAG_RESET_ON_FORK;
            }
        }
        a
    }

    /// Whether this is the kernel's plain default (nothing to apply).
    pub fn is_kernel_default(&self) -> bool {
        *self == WorkerSched::Other { slice_us: 0 }
    }

    /// Apply the policy to the calling thread.
    pub fn apply_to_current_thread(&self) -> Result<(), SchedError> {
        if self.is_kernel_default() {
            return Ok(());
        }
        let attr = self.attr();
        // SAFETY: sched_setattr(0 = this thread, attr, 0) reads `attr`, a valid, initialised
        // sched_attr whose `size` field says how many bytes the kernel may read.
        let r =
            unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
        if r == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        let hint = match (self, err.raw_os_error()) {
            (WorkerSched::Deadline { .. }, Some(libc::EPERM)) => {
                "SCHED_DEADLINE needs CAP_SYS_NICE in the daemon (run as root without --user, or AmbientCapabilities=CAP_SYS_NICE)"
            }
            (WorkerSched::Deadline { .. }, Some(libc::EBUSY)) => {
                "the host's deadline bandwidth is taken (kernel.sched_rt_runtime_us / other deadline tasks): ask for less runtime per period"
            }
            (WorkerSched::Fifo { priority }, Some(libc::EPERM)) => &format!(
                "SCHED_FIFO needs RLIMIT_RTPRIO >= {priority} (it is {}; LimitRTPRIO={priority} and RestrictRealtime=no in a systemd unit, ulimit -r {priority} in a shell) or CAP_SYS_NICE without --user",
                rtprio_limit().rlim_cur
            ),
            (WorkerSched::Other { .. }, Some(libc::EINVAL)) => {
                "this kernel does not take a custom slice; use other:0"
            }
            _ => "see sched_setattr(2)",
        };
        Err(SchedError::Refused {
            spec: *self,
            err,
            hint: hint.to_string(),
        })
    }

    /// Make the policy possible for the daemon's later (possibly unprivileged) threads: for
    /// `fifo`, raise RLIMIT_RTPRIO to the priority while the daemon may (CAP_SYS_RESOURCE).
    /// Call before dropping privileges; whether it was enough shows in [`Self::probe`].
    pub fn prepare(&self) {
        let WorkerSched::Fifo { priority } = *self else {
            return;
        };
        let want = u64::from(priority);
        let lim = rtprio_limit();
        if lim.rlim_cur >= want {
            return;
        }
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        // SAFETY: setrlimit reads one valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_RTPRIO, &new) } != 0 {
            log::debug!(
                "cannot raise RLIMIT_RTPRIO to {want}: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Try the policy on a short-lived thread (which inherits the caller's privileges and
    /// limits, as the worker threads will), so a refusal is reported at start.
    pub fn probe(&self) -> Result<(), SchedError> {
        let spec = *self;
        std::thread::Builder::new()
            .name("sched-probe".into())
            .spawn(move || spec.apply_to_current_thread())
            .map_err(|e| SchedError::Probe(spec, e))?
            .join()
            .unwrap_or_else(|_| Err(SchedError::Probe(spec, io::Error::other("probe panicked"))))
    }
}

/// The calling thread's nice value. sched_setattr sets the nice value along with the policy,
/// and raising a thread's priority (a lower nice value) needs privilege: a daemon started under
/// `nice` or with systemd's `Nice=` keeps its niceness instead of being refused.
fn current_nice() -> i32 {
    // SAFETY: getpriority(PRIO_PROCESS, 0) reads the calling thread's nice value; no memory is
    // passed. The raw syscall returns 20 - nice (1..=40) so that no valid value looks like an
    // error.
    let r = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0) };
    match r {
        1..=40 => 20 - r as i32,
        _ => 0,
    }
}

fn rtprio_limit() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid local `lim` (and cannot fail for a
    // valid resource; on failure `lim` stays 0/0, which only words a message).
    unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut lim) };
    lim
}

thread_local! {
    static APPLIED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called on a vhost-user worker thread before each event: the first call applies `spec` to
/// the thread and returns the outcome (a refusal, which the start-up probe makes unlikely, is
/// logged and the thread goes on with the default policy); later calls return `None`.
pub fn enter_worker(spec: WorkerSched) -> Option<Result<(), SchedError>> {
    if APPLIED.with(|a| a.replace(true)) {
        return None;
    }
    let outcome = spec.apply_to_current_thread();
    match &outcome {
        Ok(()) => log::debug!("request-queue worker scheduled as {spec}"),
        Err(e) => log::warn!("{e}; the worker keeps the default policy"),
    }
    Some(outcome)
}

/// The policy in words, for the start-up log.
pub fn describe(spec: WorkerSched) -> String {
    match spec {
        WorkerSched::Other { slice_us: 0 } => "normal time-sharing, kernel default slice".into(),
        WorkerSched::Other { slice_us } => {
            format!("normal time-sharing, {slice_us} us slice (EEVDF latency hint)")
        }
        WorkerSched::Fifo { priority } => format!("SCHED_FIFO priority {priority}"),
        WorkerSched::Deadline {
            runtime_us,
            period_us,
        } => format!(
            "SCHED_DEADLINE, at most {runtime_us} us of CPU every {period_us} us ({:.0}% of a core)",
            Duration::from_micros(runtime_us).as_secs_f64() * 100.0
                / Duration::from_micros(period_us).as_secs_f64()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for (s, want) in [
            ("other", WorkerSched::Other { slice_us: 100 }),
            ("other:0", WorkerSched::Other { slice_us: 0 }),
            ("other:3000", WorkerSched::Other { slice_us: 3000 }),
            ("fifo:10", WorkerSched::Fifo { priority: 10 }),
            (
                "deadline:200/1000",
                WorkerSched::Deadline {
                    runtime_us: 200,
                    period_us: 1000,
                },
            ),
        ] {
            let got: WorkerSched = s.parse().unwrap();
            assert_eq!(got, want, "{s}");
            assert_eq!(got.to_string().parse::<WorkerSched>().unwrap(), got);
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (s, needle) in [
            ("", "unknown policy"),
            ("rr:5", "unknown policy"),
            ("other:50", "100-100000"),
            ("other:x", "not a whole number"),
            ("fifo", "needs a parameter"),
            ("fifo:0", "1-99"),
            ("fifo:100", "1-99"),
            ("fifo:-1", "not a whole number"),
            ("deadline:100", "RUNTIME_US/PERIOD_US"),
            ("deadline:2000/1000", "runtime <= period"),
            ("deadline:0/1000", "runtime <= period"),
            ("deadline:10/5000000", "period <="),
        ] {
            let e = s.parse::<WorkerSched>().unwrap_err().to_string();
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn the_default_policy_applies_without_privilege() {
        // Custom slices need no capability; a kernel without them ignores the field.
        WorkerSched::default().probe().unwrap();
        WorkerSched::Other { slice_us: 0 }.probe().unwrap();
    }

    #[test]
    fn the_default_policy_keeps_the_threads_nice_value() {
        // Run in a thread of its own: nice is per thread on Linux.
        std::thread::spawn(|| {
            // SAFETY: setpriority on the calling thread (who = 0); raising nice needs no privilege.
            let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 7) };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            assert_eq!(current_nice(), 7);
            WorkerSched::default().apply_to_current_thread().unwrap();
            assert_eq!(
                current_nice(),
                7,
                "sched_setattr must not reset the nice value"
            );
        })
        .join()
        .unwrap();
    }
}
