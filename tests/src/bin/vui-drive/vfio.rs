//! `vui-drive vfio BDF`: QEMU's edu device behind QEMU's virtio-iommu-pci, bound to vfio-pci in
//! this guest. The daemon binds edu's cdev (handed over, or found by PCI address) to iommufd;
//! edu's DMA engine checks ATTACH, MAP, UNMAP, replace, DETACH, bypass and disconnect.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use vhost_user_iommu_tests::proto::{self, status};
use vhost_user_iommu_tests::{Daemon, Request};

use crate::backend::{backend, empty};
use crate::edu::{Edu, EDU_BUF};
use crate::launch::{start_handed_over, work_dir, write_config};
use crate::ram::{dup, RamView};
use crate::report::{ensure, Report};
use crate::{opts, RAM_SIZE};

/// Guest RAM of the vhost-user frontend below edu's 28-bit DMA limit, so bypass (IOVA == GPA)
/// is reachable too.
const VRAM_GPA: u64 = 0x0800_0000;
const DMA_IOVA: u64 = 0x10_0000;

/// Run the edu checks with the device at `bdf` and `fd`; returns how many failed.
pub fn vfio(fd: BorrowedFd<'_>, bdf: &str) -> usize {
    let mut rep = Report::default();
    let cdev = std::fs::read_dir(format!("/sys/bus/pci/devices/{bdf}/vfio-dev"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| Path::new("/dev/vfio/devices").join(e.file_name()));
    let dev_file = cdev.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .ok()
    });
    let Some(dev_file) = dev_file else {
        rep.check(
            "vfio-cdev",
            Err(format!("no VFIO cdev for {bdf} ({cdev:?})")),
        );
        return rep.failed;
    };
    let dev_fd = OwnedFd::from(dev_file);
    let dir = work_dir("");
    std::fs::create_dir_all(&dir).unwrap();
    let launcher = dir.join("launcher.sock");
    let config = dir.join("vui.toml");
    write_config(&config, Some(&launcher), "[{ endpoint = 1, fd = true }]").unwrap();
    let (daemon, answer) = start_handed_over(
        &launcher,
        &config,
        "{\"version\":1,\"iommufd\":0,\"devices\":[{\"endpoint\":1,\"fd\":1}]}\n",
        &[fd.as_raw_fd(), dev_fd.as_raw_fd()],
        &["--endpoints", "1"],
    );
    let mut ctl = daemon.ctl();
    let b0 = backend(&mut ctl);
    rep.check(
        "vfio-bound",
        answer.and_then(|a| {
            ensure(a == "{\"ok\":true}", || format!("daemon answered {a}"))?;
            let e = b0["endpoints"][0].clone();
            ensure(e["device"]["kind"] == "vfio" && e["domain"].is_null(), || format!("{b0}"))?;
            Ok(format!(
                "{bdf} cdev {cdev:?} and /dev/iommu handed over; daemon bound it (dev_id {}) on the blocked IOAS (hwpt {}); host IOVA ranges {}",
                e["device"]["dev_id"], e["hwpt"], b0["allowed_iovas"]
            ))
        }),
    );
    let edu = match Edu::new(dev_fd.as_fd()) {
        Ok(e) => e,
        Err(e) => {
            rep.check("edu-regions", Err(e));
            return rep.failed;
        }
    };
    let mut dev = daemon.connect_with(&opts());
    let region = dev.hotplug_region(VRAM_GPA, RAM_SIZE).unwrap();
    // Our own view of that RAM (the frontend's is borrowed by its request helpers).
    let mem = dup(dev.mem.region_infos()[region].mmap_handle)
        .ok()
        .and_then(|f| RamView::map(f.as_fd(), VRAM_GPA, RAM_SIZE))
        .expect("map the hot-plugged region");
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    // RAM -> edu -> RAM through IOVAs: DMA_IOVA reads page 0, DMA_IOVA + 4K writes page 1.
    let page = |i: u64| VRAM_GPA + i * 0x1000;
    mem.write(page(0), &pattern);
    mem.fill(page(1), 4096, 0);
    let blocked = edu
        .dma(DMA_IOVA, EDU_BUF, 4096, false)
        .and_then(|()| edu.dma(EDU_BUF, DMA_IOVA + 0x1000, 4096, true));
    rep.check(
        "blocked-before-attach",
        (|| {
            blocked?;
            ensure(mem.read(page(1), 4096) == vec![0u8; 4096], || {
                "DMA reached RAM".into()
            })?;
            Ok("unattached endpoint: edu's DMA reaches no guest RAM".into())
        })(),
    );
    let s1 = dev.attach(1, 1);
    let s2 = dev.map(1, DMA_IOVA, DMA_IOVA + 0xfff, page(0), proto::MAP_F_READ);
    let s3 = dev.map(
        1,
        DMA_IOVA + 0x1000,
        DMA_IOVA + 0x1fff,
        page(1),
        proto::MAP_F_WRITE,
    );
    let r = edu
        .dma(DMA_IOVA, EDU_BUF, 4096, false)
        .and_then(|()| edu.dma(EDU_BUF, DMA_IOVA + 0x1000, 4096, true));
    let b = backend(&mut ctl);
    rep.check(
        "dma-through-domain",
        (|| {
            ensure(s1 == status::OK && s2 == status::OK && s3 == status::OK, || {
                format!("statuses {s1} {s2} {s3}")
            })?;
            r?;
            ensure(mem.read(page(1), 4096) == pattern, || "page 1 does not hold the pattern".into())?;
            Ok(format!(
                "edu read IOVA {DMA_IOVA:#x} (page 0) and wrote IOVA {:#x} (page 1) through domain 1 (hwpt {})",
                DMA_IOVA + 0x1000,
                b["endpoints"][0]["hwpt"]
            ))
        })(),
    );
    // UNMAP: the same DMA no longer reaches page 1.
    mem.fill(page(1), 4096, 0);
    let s = dev.unmap(1, DMA_IOVA + 0x1000, DMA_IOVA + 0x1fff);
    let r = edu.dma(EDU_BUF, DMA_IOVA + 0x1000, 4096, true);
    rep.check(
        "unmap-stops-dma",
        (|| {
            ensure(s == status::OK, || format!("UNMAP status {s}"))?;
            r?;
            ensure(mem.read(page(1), 4096) == vec![0u8; 4096], || {
                "DMA still reached page 1".into()
            })?;
            Ok("after UNMAP edu's write reaches nothing".into())
        })(),
    );
    // Replace: domain 2 maps the same IOVA to page 2; ATTACH moves edu there atomically.
    mem.fill(page(2), 4096, 0);
    let s1 = dev.map(
        1,
        DMA_IOVA + 0x1000,
        DMA_IOVA + 0x1fff,
        page(1),
        proto::MAP_F_WRITE,
    );
    let s2 = dev.attach(2, 1);
    let s3 = dev.map(
        2,
        DMA_IOVA + 0x1000,
        DMA_IOVA + 0x1fff,
        page(2),
        proto::MAP_F_WRITE,
    );
    let r = edu.dma(EDU_BUF, DMA_IOVA + 0x1000, 4096, true);
    rep.check(
        "replace",
        (|| {
            ensure(
                s1 == status::OK && s2 == status::OK && s3 == status::OK,
                || format!("statuses {s1} {s2} {s3}"),
            )?;
            r?;
            ensure(mem.read(page(2), 4096) == pattern, || {
                "page 2 does not hold the pattern".into()
            })?;
            ensure(mem.read(page(1), 4096) == vec![0u8; 4096], || {
                "old domain still used".into()
            })?;
            Ok("after ATTACH to domain 2 the same IOVA lands in domain 2's page".into())
        })(),
    );
    mem.fill(page(2), 4096, 0);
    let s = dev.detach(2, 1);
    let r = edu.dma(EDU_BUF, DMA_IOVA + 0x1000, 4096, true);
    rep.check(
        "detach-blocks",
        (|| {
            ensure(s == status::OK, || format!("DETACH status {s}"))?;
            r?;
            ensure(mem.read(page(2), 4096) == vec![0u8; 4096], || {
                "DMA after DETACH".into()
            })?;
            Ok("after DETACH edu's DMA reaches nothing".into())
        })(),
    );
    mem.fill(page(3), 4096, 0);
    let s = dev.status_of(&Request::attach(3, 1, proto::ATTACH_F_BYPASS));
    let r = edu.dma(EDU_BUF, page(3), 4096, true);
    rep.check(
        "bypass-is-identity",
        (|| {
            ensure(s == status::OK, || format!("ATTACH bypass status {s}"))?;
            r?;
            ensure(mem.read(page(3), 4096) == pattern, || {
                "page 3 does not hold the pattern".into()
            })?;
            Ok(format!(
                "bypass domain: edu's DMA to {:#x} (a GPA) lands there",
                page(3)
            ))
        })(),
    );
    drop(dev);
    ctl.wait_disconnected(Duration::from_secs(10));
    let b = backend(&mut ctl);
    mem.fill(page(3), 4096, 0);
    let r = edu.dma(EDU_BUF, page(3), 4096, true);
    rep.check(
        "disconnect-blocks",
        (|| {
            let e = &b["endpoints"][0];
            ensure(e["domain"].is_null(), || format!("{b}"))?;
            ensure(empty(&b, "domains"), || format!("{b}"))?;
            r?;
            ensure(mem.read(page(3), 4096) == vec![0u8; 4096], || {
                "DMA still bypasses after disconnect".into()
            })?;
            Ok(format!(
                "after disconnect edu is on the blocked IOAS (hwpt {}), no domain left, DMA to the formerly bypassed GPA reaches nothing",
                e["hwpt"]
            ))
        })(),
    );
    rep.note_log_if_failed("daemon", &daemon);
    drop(daemon);
    // Release the device (our copy of its fd was bound to our iommufd) and let a daemon find it
    // by PCI address, on an iommufd of its own.
    drop(dev_fd);
    pci_path(&dir, bdf, &mut rep);
    let _ = std::fs::remove_dir_all(&dir);
    rep.failed
}

/// `pci = BDF`: the daemon opens /dev/iommu and the cdev it finds through sysfs itself.
fn pci_path(dir: &Path, bdf: &str, rep: &mut Report) {
    let config = dir.join("pci.toml");
    write_config(
        &config,
        None,
        &format!("[{{ endpoint = 1, pci = \"{bdf}\" }}]"),
    )
    .unwrap();
    let daemon = Daemon::start(&["--config", config.to_str().unwrap(), "--endpoints", "1"]);
    let mut ctl = daemon.ctl();
    let b0 = backend(&mut ctl);
    let mut dev = daemon.connect_with(&opts());
    dev.hotplug_region(VRAM_GPA, RAM_SIZE).unwrap();
    let s1 = dev.attach(1, 1);
    let s2 = dev.map(1, DMA_IOVA, DMA_IOVA + 0xfff, VRAM_GPA, proto::MAP_F_READ);
    let b1 = backend(&mut ctl);
    let s3 = dev.attach(2, 1);
    let b2 = backend(&mut ctl);
    rep.check(
        "pci-address",
        (|| {
            let e0 = &b0["endpoints"][0];
            ensure(e0["device"]["kind"] == "vfio" && e0["domain"].is_null(), || format!("{b0}"))?;
            ensure(s1 == status::OK && s2 == status::OK && s3 == status::OK, || {
                format!("statuses {s1} {s2} {s3}")
            })?;
            let (h0, h1, h2) = (
                &e0["hwpt"],
                &b1["endpoints"][0]["hwpt"],
                &b2["endpoints"][0]["hwpt"],
            );
            ensure(h0 != h1 && h1 != h2 && b2["endpoints"][0]["domain"] == 2, || {
                format!("{b0} {b1} {b2}")
            })?;
            Ok(format!(
                "{bdf} opened through sysfs and bound to the daemon's own iommufd; hwpt {h0} (blocked) -> {h1} (domain 1) -> {h2} (domain 2)"
            ))
        })(),
    );
    drop(dev);
    rep.note_log_if_failed("daemon", &daemon);
}
