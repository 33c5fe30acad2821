//! Whole-path benchmark: a driver in this process, the daemon in another, talking vhost-user
//! over a unix socket with shared memfd memory, exactly as a VMM and guest would.
//!
//! For each batch size (1, 16, 64, 256) and page size (4 KiB, 2 MiB) it submits a batch of MAPs,
//! kicks, spins on the used ring until all are back (as the Linux driver does: no interrupts),
//! then the same for the UNMAPs. It reports requests per second and the batch round-trip
//! latency percentiles, for the daemon with its defaults (adaptive polling up to 50 us),
//! sleeping on its kick eventfd after every batch (`--poll-us 0`), and with the state journal
//! on (`--state-dir`: one write(2) per batch of accepted requests).
//!
//! `cargo run --release -p vhost-user-iommu-tests --bin vui-bench [-- --seconds S] [--only MODE]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vhost_user_iommu_tests::device::Options;
use vhost_user_iommu_tests::proto::status;
use vhost_user_iommu_tests::{Daemon, Request};

const DOMAIN: u32 = 1;
const ENDPOINT: u32 = 0;

struct Row {
    mode: &'static str,
    batch: usize,
    page: u64,
    rps: f64,
    /// Requests per second of daemon CPU time (all its threads): the one-core rate.
    rps_cpu: f64,
    map_p50: f64,
    map_p99: f64,
    unmap_p50: f64,
    unmap_p99: f64,
}

/// CPU time consumed so far by every thread of `pid`, from /proc/PID/task/*/schedstat (ns).
fn cpu_ns(pid: i32) -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("daemon tasks") {
        let path = t.expect("task entry").path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn run(mode: &'static str, extra: &[&str], batch: usize, page: u64, secs: f64) -> Row {
    let daemon = Daemon::start(&[&["--reserved-region", "none"], extra].concat());
    let mut d = daemon.connect_with(&Options {
        requestq_size: 1024,
        low_size: 64 << 20,
        ..Options::default()
    });
    assert_eq!(d.attach(DOMAIN, ENDPOINT), status::OK);
    d.reqq.quiet = true;

    // One readable and one writable buffer per slot, reused every round.
    let slots: Vec<(u64, u64)> = (0..batch).map(|_| (d.alloc(64), d.alloc(4))).collect();
    let mut map_lat = Vec::new();
    let mut unmap_lat = Vec::new();
    let mut requests = 0u64;
    let start = Instant::now();
    let cpu0 = cpu_ns(daemon.pid());
    let mut round = 0u64;
    let spin = |d: &mut vhost_user_iommu_tests::Device, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = 0;
        while got < n {
            if let Some(u) = d.reqq.pop_used(&d.mem) {
                assert_eq!(u.len, 4, "used length");
                got += 1;
            } else {
                assert!(Instant::now() < deadline, "daemon stopped answering");
                std::hint::spin_loop();
            }
        }
    };
    while start.elapsed().as_secs_f64() < secs {
        // Fresh IOVAs each round, so every MAP creates a mapping.
        let base = (round % 64) * batch as u64 * page + (1 << 32);
        for (phase, lat) in [(0, &mut map_lat), (1, &mut unmap_lat)] {
            for (i, &(rd, wr)) in slots.iter().enumerate() {
                let iova = base + i as u64 * page;
                let r = if phase == 0 {
                    Request::map(DOMAIN, iova, iova + page - 1, 0, 3)
                } else {
                    Request::unmap(DOMAIN, iova, iova + page - 1)
                };
                d.mem.write(rd, &r.readable);
                d.mem.write(wr, &[0xff; 4]);
                d.reqq.add_chain(
                    &d.mem,
                    &[(rd, r.readable.len() as u32, false), (wr, 4, true)],
                );
            }
            let t = Instant::now();
            d.reqq.publish_and_kick(&d.mem);
            spin(&mut d, batch);
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            // Every status must be OK; a benchmark of failing requests means nothing.
            for &(_, wr) in &slots {
                assert_eq!(d.mem.read(wr, 1)[0], status::OK);
            }
            requests += batch as u64;
        }
        round += 1;
    }
    let rps = requests as f64 / start.elapsed().as_secs_f64();
    let cpu = (cpu_ns(daemon.pid()) - cpu0) as f64 / 1e9;
    Row {
        mode,
        batch,
        page,
        rps,
        rps_cpu: requests as f64 / cpu,
        map_p50: percentile(&mut map_lat, 0.5),
        map_p99: percentile(&mut map_lat, 0.99),
        unmap_p50: percentile(&mut unmap_lat, 0.5),
        unmap_p99: percentile(&mut unmap_lat, 0.99),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    let journal_dir = vhost_user_iommu_tests::daemon::TempDir::new();
    let journal = journal_dir.path().join("state");
    let journal = journal.to_str().expect("utf-8 temp path");
    println!("| daemon | batch | page | requests/s | requests per daemon CPU-second | MAP batch p50 us | MAP p99 us | UNMAP batch p50 us | UNMAP p99 us |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (mode, extra) in [
        ("defaults", &[][..]),
        ("eventfd (--poll-us 0)", &["--poll-us", "0"][..]),
        ("defaults + journal", &["--state-dir", journal][..]),
    ] {
        if only.is_some_and(|o| !mode.contains(o.as_str())) {
            continue;
        }
        for page in [0x1000u64, 0x20_0000] {
            for batch in [1usize, 16, 64, 256] {
                let r = run(mode, extra, batch, page, secs);
                println!(
                    "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    r.mode,
                    r.batch,
                    if r.page == 0x1000 { "4K" } else { "2M" },
                    r.rps,
                    r.rps_cpu,
                    r.map_p50,
                    r.map_p99,
                    r.unmap_p50,
                    r.unmap_p99
                );
            }
        }
    }
}
