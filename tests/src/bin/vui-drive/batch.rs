//! A frontend SIGKILLed in the middle of a batch of MAPs (issue 8): the `batch-child` mode of
//! vui-drive is that frontend; `mock` starts it, kills it and checks what the daemon released.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use iommufd_sys::{md_check_map, md_check_refs};
use vhost_user_iommu_tests::proto::status;
use vhost_user_iommu_tests::{Control, Daemon, Device, Options, Request};

use crate::backend::{backend, empty, ep_state};
use crate::census::{census_as_before, Census};
use crate::ram::RamView;
use crate::report::{ensure, Report};
use crate::{opts, DISCONNECT_TIMEOUT, IOVA, LEN, RAM_GPA, RAM_SIZE, RW};

/// A frontend SIGKILLed while a batch of MAPs is in flight (its request queue kept full):
/// the daemon survives, releases every host object and pin of that connection, and serves the
/// next frontend normally.
pub fn killed_mid_batch(
    fd: BorrowedFd<'_>,
    daemon: &Daemon,
    ctl: &mut Control,
    rep: &mut Report,
    census_start: &Census,
) {
    let maps_ok = |ctl: &mut Control| {
        ctl.counters()["requests"]["map"]["ok"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = maps_ok(ctl);
    let run = spawn_batch_child(&daemon.socket, 1, 80);
    let (pinned, killed) = match &run {
        Ok(c) => {
            // The child's hot region, through its memfd (open before the child dies).
            let view = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/proc/{}/fd/{}", c.pid, c.memfd))
                .ok()
                .and_then(|f| RamView::map(f.as_fd(), RAM_GPA, RAM_SIZE));
            let pinned = view.map(|v| {
                let was = md_check_refs(fd, v.addr(), RAM_SIZE, 0).is_err();
                (v, was)
            });
            (pinned, c.kill())
        }
        Err(_) => (None, Err("no child".into())),
    };
    let gone = ctl.wait_disconnected(DISCONNECT_TIMEOUT);
    let processed = maps_ok(ctl) - before;
    let b = backend(ctl);
    let census_after = census_as_before(fd, census_start, &b);
    rep.check(
        "killed-mid-batch-releases",
        (|| {
            let c = run.as_ref().map_err(Clone::clone)?;
            killed.clone()?;
            ensure(gone, || "the daemon still reports the dead frontend".into())?;
            let (view, was_pinned) = pinned.ok_or("cannot map the child's RAM")?;
            ensure(was_pinned, || "nothing was pinned while the batch ran".into())?;
            md_check_refs(fd, view.addr(), RAM_SIZE, 0)
                .map_err(|e| format!("pages still pinned after the kill: {e}"))?;
            let after = census_after.clone()?;
            ensure(
                empty(&b, "domains")
                    && empty(&b, "stage2"),
                || format!("{b}"),
            )?;
            Ok(format!(
                "child {} SIGKILLed with {} MAP(s) completed and {} in flight (pages pinned at that moment); the daemon completed {processed} MAP(s) for it in all, then released everything: census {after:?} as at start, MD_CHECK_REFS 0",
                c.pid, c.completed, c.in_flight
            ))
        })(),
    );
    // The next frontend is served normally.
    let mut dev = daemon.connect_with(&opts());
    let plugged = dev.hotplug_region(RAM_GPA, RAM_SIZE);
    let host = dev.mem.host_addr(RAM_GPA);
    let s = [
        dev.attach(80, 1),
        dev.map(80, IOVA, IOVA + LEN - 1, RAM_GPA, RW),
    ];
    let h = ep_state(&backend(ctl), 1).map_or(0, |s| s.1);
    rep.check(
        "killed-mid-batch-next-frontend",
        (|| {
            plugged.clone()?;
            ensure(s.iter().all(|&s| s == status::OK), || {
                format!("statuses {s:?}")
            })?;
            md_check_map(fd, h, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP: {e}"))?;
            md_check_refs(fd, host, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1): {e}"))?;
            Ok(format!(
                "next frontend: the same domain id and IOVA map again (hwpt {h}), pinned once"
            ))
        })(),
    );
    drop(dev);
    ctl.wait_disconnected(DISCONNECT_TIMEOUT);
}

/// A running `vui-drive batch-child`.
struct BatchChild {
    child: std::process::Child,
    pid: i32,
    memfd: i32,
    completed: u64,
    in_flight: u64,
}

impl BatchChild {
    fn kill(&self) -> Result<(), String> {
        // SAFETY: kill(2) of our own child, which we have not reaped yet.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
            return Err(format!("kill: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for BatchChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `vui-drive batch-child` against `socket` and wait (bounded) for its line saying the
/// batch runs.
fn spawn_batch_child(socket: &Path, endpoint: u32, domain: u32) -> Result<BatchChild, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("batch-child")
        .arg(socket)
        .arg(endpoint.to_string())
        .arg(domain.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mut c = BatchChild {
        child,
        pid,
        memfd: 0,
        completed: 0,
        in_flight: 0,
    };
    match (field("memfd="), field("completed="), field("in_flight=")) {
        (Some(m), Some(done), Some(n)) if line.starts_with("VUI-CHILD") => {
            c.memfd = i32::try_from(m).map_err(|e| e.to_string())?;
            c.completed = done;
            c.in_flight = n;
            Ok(c)
        }
        _ => Err(format!("batch child said {line:?}")),
    }
}

/// The child: a frontend whose request queue is kept full of MAPs (every completion is
/// replaced by a new MAP) until it is killed. One line on stdout once the batch runs:
/// `VUI-CHILD pid=P memfd=F completed=K in_flight=N`.
pub fn batch_child(socket: &Path, endpoint: u32, domain: u32) -> ! {
    let fail = |what: String| -> ! {
        eprintln!("batch-child: {what}");
        std::process::exit(1)
    };
    let opts = Options {
        high_size: 0,
        requestq_size: 1024,
        ..Options::default()
    };
    let mut dev = Device::connect(socket, &opts).unwrap_or_else(|e| fail(e));
    let region = dev
        .hotplug_region(RAM_GPA, RAM_SIZE)
        .unwrap_or_else(|e| fail(e));
    let memfd = dev.mem.region_infos()[region].mmap_handle;
    let st = dev.attach(domain, endpoint);
    if st != status::OK {
        fail(format!("ATTACH status {st}"));
    }
    let pages = RAM_SIZE / 0x1000;
    let map = |i: u64| {
        let iova = IOVA + i * 0x1000;
        Request::map(
            domain,
            iova,
            iova + 0xfff,
            RAM_GPA + (i % pages) * 0x1000,
            RW,
        )
    };
    // Each request takes two descriptors; the bump allocator of the low region holds ~200k.
    let depth = u64::from(dev.reqq.size / 2);
    const LIMIT: u64 = 150_000;
    let mut next = 0u64;
    while next < depth {
        dev.submit(&map(next));
        next += 1;
    }
    dev.kick();
    let mut completed = 0u64;
    loop {
        let Some(r) = dev.wait_response(Duration::from_secs(60)) else {
            fail("no completion in 60 s".into())
        };
        if r.status() != status::OK {
            fail(format!("MAP status {}", r.status()));
        }
        completed += 1;
        if next < LIMIT {
            dev.submit(&map(next));
            next += 1;
            if completed.is_multiple_of(16) || next == LIMIT {
                dev.kick();
            }
        }
        if completed == 1 {
            println!(
                "VUI-CHILD pid={} memfd={memfd} completed={completed} in_flight={}",
                std::process::id(),
                next - completed
            );
            let _ = std::io::stdout().flush();
        }
        if completed == next {
            // Everything done (the parent was too slow): stay connected until killed.
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
