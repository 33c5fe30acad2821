//! `--worker-sched`: the thread that serves the request queue runs under the policy asked for
//! (read back from the kernel with sched_getattr), other threads keep the default, and a policy
//! the host refuses stops the daemon at start with a message that says what to change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vhost_user_iommu_tests::daemon::run_to_exit;
use vhost_user_iommu_tests::proto::status::OK;
use vhost_user_iommu_tests::Daemon;

const SCHED_OTHER: u32 = 0;
const SCHED_FIFO: u32 = 1;
const SCHED_DEADLINE: u32 = 6;

/// `struct sched_attr` (SCHED_ATTR_SIZE_VER0).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
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

fn getattr(tid: i32) -> Option<SchedAttr> {
    let mut a = SchedAttr::default();
    // SAFETY: sched_getattr writes at most `size` (48) bytes into the valid local `a`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut a as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0u32,
        )
    };
    (r == 0).then_some(a)
}

fn setattr_self(a: &SchedAttr) -> bool {
    // SAFETY: sched_setattr reads the valid, initialised local `a` (size set by the caller).
    unsafe { libc::syscall(libc::SYS_sched_setattr, 0, a as *const SchedAttr, 0u32) == 0 }
}

/// Whether a thread of this process may take `attr` (run on a throwaway thread).
fn host_allows(attr: SchedAttr) -> bool {
    std::thread::spawn(move || setattr_self(&attr))
        .join()
        .unwrap()
}

/// Every thread of `pid` with its scheduling attributes.
fn threads(pid: i32) -> Vec<(i32, SchedAttr)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|tid| Some((tid, getattr(tid)?)))
        .collect()
}

/// Start a daemon with `policy`, make the worker serve a request, and return the threads.
/// The control socket's `status` names the worker thread and its policy.
fn served_threads(policy: &str) -> Served {
    let daemon = Daemon::start(&["--worker-sched", policy, "--poll-us", "20"]);
    assert_eq!(
        daemon.ctl().status()["worker"]["tid"],
        serde_json::Value::Null
    );
    let mut d = daemon.connect();
    assert_eq!(d.attach(1, 3), OK);
    let t = threads(daemon.pid());
    let w = daemon.ctl().status()["worker"].clone();
    assert_eq!(w["sched"], policy, "{w}");
    assert_eq!(w["poll_us"], 20, "{w}");
    assert_eq!(w["sched_error"], serde_json::Value::Null, "{w}");
    let tid = w["tid"].as_i64().expect("the worker's thread id") as i32;
    assert!(t.iter().any(|(t, _)| *t == tid), "{tid} among {t:?}");
    drop(d);
    Served {
        daemon,
        threads: t,
        worker: tid,
    }
}

/// A daemon whose worker has served a request: its threads' attributes and the worker's id.
struct Served {
    daemon: Daemon,
    threads: Vec<(i32, SchedAttr)>,
    worker: i32,
}

fn attr(policy: u32, priority: u32, runtime: u64, period: u64) -> SchedAttr {
    SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy,
        priority,
        runtime,
        deadline: period,
        period,
        ..SchedAttr::default()
    }
}

/// The worker's attributes, checking that only the worker matches `is_its` and every other
/// thread keeps the plain default policy.
fn the_worker(s: &Served, is_its: impl Fn(&SchedAttr) -> bool) -> SchedAttr {
    let with: Vec<_> = s.threads.iter().filter(|(_, a)| is_its(a)).collect();
    assert_eq!(
        with.iter().map(|(tid, _)| *tid).collect::<Vec<_>>(),
        [s.worker],
        "exactly the worker (thread {}) has the policy: {:?}\n{}",
        s.worker,
        s.threads,
        s.daemon.stderr()
    );
    assert!(
        s.threads
            .iter()
            .filter(|(tid, _)| *tid != s.worker)
            .all(|(_, a)| a.policy == SCHED_OTHER && a.runtime != 100_000),
        "{:?}",
        s.threads
    );
    with[0].1
}

#[test]
fn the_default_gives_the_worker_a_short_slice_and_nobody_else() {
    let s = served_threads("other:100");
    if !host_allows(attr(SCHED_OTHER, 0, 100_000, 0)) || getattr(0).is_some_and(|a| a.runtime == 0)
    {
        // A kernel before 6.12 has no custom slices (and reports none).
        eprintln!("this kernel has no EEVDF custom slices; only checking the daemon runs");
        return;
    }
    let a = the_worker(&s, |a| a.runtime == 100_000);
    assert_eq!(a.policy, SCHED_OTHER);
    assert!(
        s.daemon.stderr().contains("100 us slice"),
        "{}",
        s.daemon.stderr()
    );
}

/// [`served_threads`] for a real-time `policy`, when this process may use `probe` itself
/// (CAP_SYS_NICE or RLIMIT_RTPRIO); `None` (test skipped, said on stderr) otherwise.
fn served_if_allowed(policy: &str, probe: SchedAttr) -> Option<Served> {
    if host_allows(probe) {
        return Some(served_threads(policy));
    }
    eprintln!("this process may not use {policy} (no CAP_SYS_NICE / RLIMIT_RTPRIO); skipped");
    None
}

#[test]
fn fifo_applies_to_the_worker_only() {
    let Some(s) = served_if_allowed("fifo:7", attr(SCHED_FIFO, 7, 0, 0)) else {
        return;
    };
    assert_eq!(the_worker(&s, |a| a.policy == SCHED_FIFO).priority, 7);
}

#[test]
fn deadline_gives_the_worker_its_budget() {
    let Some(s) = served_if_allowed(
        "deadline:200/1000",
        attr(SCHED_DEADLINE, 0, 200_000, 1_000_000),
    ) else {
        return;
    };
    let a = the_worker(&s, |a| a.policy == SCHED_DEADLINE);
    assert_eq!(
        (a.runtime, a.deadline, a.period),
        (200_000, 1_000_000, 1_000_000)
    );
    assert!(
        s.daemon.stderr().contains("20% of a core"),
        "{}",
        s.daemon.stderr()
    );
}

#[test]
fn a_policy_the_host_refuses_stops_the_daemon_at_start() {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("needs root (to start the daemon with --user nobody); skipped");
        return;
    }
    // Dropping to an unprivileged user loses CAP_SYS_NICE, which SCHED_DEADLINE needs.
    let dir = std::env::temp_dir().join(format!("vui-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("sock");
    let (st, err) = run_to_exit(
        &[
            "--socket",
            sock.to_str().unwrap(),
            "--user",
            "nobody",
            "--worker-sched",
            "deadline:200/1000",
        ],
        Duration::from_secs(10),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(st.is_some_and(|s| !s.success()), "{st:?}: {err}");
    assert!(
        err.contains("--worker-sched deadline:200/1000") && err.contains("CAP_SYS_NICE"),
        "{err}"
    );
    assert!(!sock.exists(), "the socket was removed");
}

#[test]
fn malformed_policies_are_refused_with_the_accepted_forms() {
    for bad in ["fifo:0", "deadline:5/1", "rr:3", "other:20"] {
        let (st, err) = run_to_exit(
            &["--socket", "/nonexistent/s", "--worker-sched", bad],
            Duration::from_secs(10),
        );
        assert!(st.is_some_and(|s| !s.success()), "{bad}: {st:?}");
        assert!(err.contains("expected other[:SLICE_US]"), "{bad}: {err}");
    }
}
