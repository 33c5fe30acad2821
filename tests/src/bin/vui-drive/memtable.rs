//! Guest RAM changing under live mappings (memory tables with regions added, removed, put
//! back, replaced) and vrings stopped and restarted, on the mock devices (issue 8).

use std::os::fd::{AsFd, BorrowedFd};

use iommufd_sys::{md_check_map, md_check_refs};
use vhost_user_iommu_tests::proto::status;
use vhost_user_iommu_tests::{Control, Daemon, SplitQueue};

use crate::backend::{backend, domain_ids, domain_maps, empty, ep_state, has_stage2, unbacked};
use crate::census::{census_as_before, Census};
use crate::ram::{dup, RamView};
use crate::report::{ensure, Report};
use crate::{opts, DISCONNECT_TIMEOUT, EXTRA_GPA, HOT_GPA, IOVA, LEN, RAM_GPA, RAM_SIZE, RW};

/// Guest RAM added and removed under live mappings: a removed region is neither pinned nor
/// mapped in the domain's HWPT, while the guest's mappings stay in the device's table (and
/// UNMAP works); when RAM comes back at that address the IOVAs map it again; adding a region
/// disturbs nothing.
pub fn memory_table(
    fd: BorrowedFd<'_>,
    daemon: &Daemon,
    ctl: &mut Control,
    rep: &mut Report,
    census_start: &Census,
) {
    const IOVA_B1: u64 = 0x400_0000;
    const IOVA_B2: u64 = 0x410_0000;
    let mut dev = daemon.connect_with(&opts());
    let plugged = dev
        .hotplug_region(RAM_GPA, RAM_SIZE)
        .and_then(|_| dev.hotplug_region(HOT_GPA, RAM_SIZE));
    let host_a = dev.mem.host_addr(RAM_GPA);
    let host_b = dev.mem.host_addr(HOT_GPA);
    let s = [
        dev.attach(60, 1),
        dev.map(60, IOVA, IOVA + LEN - 1, RAM_GPA, RW),
        dev.map(60, IOVA_B1, IOVA_B1 + LEN - 1, HOT_GPA, RW),
        dev.map(60, IOVA_B2, IOVA_B2 + LEN - 1, HOT_GPA + LEN, RW),
    ];
    let b = backend(ctl);
    let h = ep_state(&b, 1).map_or(0, |s| s.1);
    rep.check(
        "memtable-hot-region-mapped",
        (|| {
            plugged.clone()?;
            ensure(s.iter().all(|&s| s == status::OK), || format!("statuses {s:?}"))?;
            md_check_map(fd, h, IOVA, LEN, host_a).map_err(|e| format!("MD_CHECK_MAP A: {e}"))?;
            md_check_map(fd, h, IOVA_B1, LEN, host_b)
                .map_err(|e| format!("MD_CHECK_MAP B1: {e}"))?;
            md_check_map(fd, h, IOVA_B2, LEN, host_b + LEN)
                .map_err(|e| format!("MD_CHECK_MAP B2: {e}"))?;
            md_check_refs(fd, host_b, 2 * LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1): {e}"))?;
            ensure(has_stage2(&b, HOT_GPA), || format!("{b}"))?;
            Ok(format!(
                "domain 60 (hwpt {h}): IOVA {IOVA:#x} -> region A {RAM_GPA:#x}, {IOVA_B1:#x} and {IOVA_B2:#x} -> hot region B {HOT_GPA:#x}; MD_CHECK_MAP ok, B's pages pinned once"
            ))
        })(),
    );

    // A region added while mappings exist: nothing is unmapped or mapped again.
    let before = b["memory_tables"].clone();
    let added = dev.hotplug_region(EXTRA_GPA, RAM_SIZE);
    let b = backend(ctl);
    let after = b["memory_tables"].clone();
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    rep.check(
        "memtable-add-region-disturbs-nothing",
        (|| {
            added?;
            md_check_map(fd, h, IOVA, LEN, host_a).map_err(|e| format!("MD_CHECK_MAP A: {e}"))?;
            md_check_map(fd, h, IOVA_B1, LEN, host_b)
                .map_err(|e| format!("MD_CHECK_MAP B1: {e}"))?;
            md_check_map(fd, h, IOVA_B2, LEN, host_b + LEN)
                .map_err(|e| format!("MD_CHECK_MAP B2: {e}"))?;
            md_check_refs(fd, host_b, 2 * LEN, 1)
                .map_err(|e| format!("MD_CHECK_REFS(1) after the new table: {e}"))?;
            let d = (
                delta("domain_pieces_unmapped"),
                delta("domain_pieces_mapped"),
                delta("stage2_pieces_unmapped"),
                delta("stage2_pieces_mapped"),
                delta("failures"),
            );
            ensure(d == (0, 0, 0, 1, 0), || {
                format!("(domain unmapped, mapped, stage-2 unmapped, mapped, failures) = {d:?}: {after}")
            })?;
            ensure(has_stage2(&b, EXTRA_GPA), || format!("{b}"))?;
            Ok(format!(
                "region C {EXTRA_GPA:#x} added: 0 domain pieces unmapped or remapped, 1 stage-2 piece mapped (C), 0 failures; A and B still mapped, B pinned once"
            ))
        })(),
    );

    // Region B goes away with a new memory table.
    let unplugged = dev.unplug_region(HOT_GPA);
    let b = backend(ctl);
    let maps = ctl.mappings(60).map(|m| m.len());
    let t = ctl.translate(1, IOVA_B1 + 0x10, "r");
    rep.check(
        "memtable-remove-region-unpins",
        (|| {
            unplugged.clone()?;
            md_check_refs(fd, host_b, 2 * LEN, 0)
                .map_err(|e| format!("MD_CHECK_REFS(0) on B after removal: {e}"))?;
            ensure(md_check_map(fd, h, IOVA_B1, 0x1000, host_b).is_err(), || {
                "IOVA B1 still mapped in the HWPT".into()
            })?;
            ensure(md_check_map(fd, h, IOVA_B2, 0x1000, host_b + LEN).is_err(), || {
                "IOVA B2 still mapped in the HWPT".into()
            })?;
            md_check_map(fd, h, IOVA, LEN, host_a)
                .map_err(|e| format!("MD_CHECK_MAP A after removing B: {e}"))?;
            ensure(maps == Ok(3), || format!("device table: {maps:?} mappings"))?;
            let u = unbacked(&b, 60);
            ensure(u == vec![(IOVA_B1, LEN), (IOVA_B2, LEN)], || {
                format!("unbacked {u:?}: {}", domain_maps(&b, 60))
            })?;
            ensure(
                domain_maps(&b, 60)["stale"].as_array().is_some_and(Vec::is_empty),
                || format!("{b}"),
            )?;
            ensure(!has_stage2(&b, HOT_GPA), || format!("stage 2 still maps B: {b}"))?;
            ensure(
                t["outcome"] == "translated" && t["guest_ram"] == false,
                || format!("translate: {t}"),
            )?;
            Ok(format!(
                "B's pages: MD_CHECK_REFS 0; MD_CHECK_MAP of IOVA B1/B2: not mapped; A still mapped; device table still has 3 mappings; backend: unbacked {u:?}, no stale piece, stage 2 without B; translate {t}"
            ))
        })(),
    );
    let st = dev.unmap(60, IOVA_B2, IOVA_B2 + LEN - 1);
    let maps = ctl.mappings(60).map(|m| m.len());
    let u = unbacked(&backend(ctl), 60);
    rep.check(
        "memtable-unmap-without-ram",
        (|| {
            ensure(st == status::OK, || format!("UNMAP status {st}"))?;
            ensure(maps == Ok(2), || format!("device table: {maps:?} mappings"))?;
            ensure(u == vec![(IOVA_B1, LEN)], || format!("unbacked {u:?}"))?;
            Ok("UNMAP of IOVA B2 (no RAM behind it): OK, device table 2 mappings, unbacked only B1".into())
        })(),
    );

    // B comes back (the same memfd): IOVA B1 maps it again, B2 (unmapped meanwhile) does not.
    let before = backend(ctl)["memory_tables"].clone();
    let replugged = dev.replug_region(HOT_GPA);
    let b = backend(ctl);
    let after = b["memory_tables"].clone();
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    rep.check(
        "memtable-region-back-maps-again",
        (|| {
            replugged.clone()?;
            md_check_map(fd, h, IOVA_B1, LEN, host_b)
                .map_err(|e| format!("MD_CHECK_MAP B1 after re-adding B: {e}"))?;
            md_check_refs(fd, host_b, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1) B1: {e}"))?;
            md_check_refs(fd, host_b + LEN, LEN, 0)
                .map_err(|e| format!("MD_CHECK_REFS(0) B2 (unmapped): {e}"))?;
            ensure(md_check_map(fd, h, IOVA_B2, 0x1000, host_b + LEN).is_err(), || {
                "IOVA B2 mapped again after its UNMAP".into()
            })?;
            ensure(unbacked(&b, 60).is_empty(), || format!("{}", domain_maps(&b, 60)))?;
            ensure(delta("domain_pieces_mapped") == 1 && delta("failures") == 0, || {
                format!("{after}")
            })?;
            ensure(has_stage2(&b, HOT_GPA), || format!("{b}"))?;
            Ok("B re-added: MD_CHECK_MAP IOVA B1 -> B's page again (1 piece remapped), pinned once; B2 stays unmapped; nothing unbacked".into())
        })(),
    );

    // Other RAM at B's address (a new memfd): IOVA B1 now reaches the new pages.
    let swapped = dev
        .unplug_region(HOT_GPA)
        .and_then(|()| dev.hotplug_region(HOT_GPA, RAM_SIZE));
    let host_b2 = dev.mem.host_addr(HOT_GPA);
    rep.check(
        "memtable-new-ram-at-same-address",
        (|| {
            swapped.clone()?;
            ensure(host_b2 != host_b, || "the new region has the old address".into())?;
            md_check_map(fd, h, IOVA_B1, LEN, host_b2)
                .map_err(|e| format!("MD_CHECK_MAP B1 -> new RAM: {e}"))?;
            md_check_refs(fd, host_b2, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1) new: {e}"))?;
            md_check_refs(fd, host_b, LEN, 0).map_err(|e| format!("MD_CHECK_REFS(0) old: {e}"))?;
            Ok("B replaced by a new memfd at the same GPA: IOVA B1 maps the new pages (pinned once), the old ones are unpinned".into())
        })(),
    );

    // Disconnect: back to the start.
    let keep: Vec<_> = [RAM_GPA, HOT_GPA]
        .iter()
        .filter_map(|g| {
            let i = dev.mem.layout().iter().position(|r| r.0 == *g)?;
            dup(dev.mem.region_infos()[i].mmap_handle).ok()
        })
        .collect();
    drop(dev);
    let gone = ctl.wait_disconnected(DISCONNECT_TIMEOUT);
    let views: Vec<RamView> = keep
        .iter()
        .zip([RAM_GPA, HOT_GPA])
        .filter_map(|(f, gpa)| RamView::map(f.as_fd(), gpa, RAM_SIZE))
        .collect();
    let b = backend(ctl);
    rep.check(
        "memtable-disconnect-releases",
        (|| {
            ensure(gone, || "still connected".into())?;
            ensure(views.len() == 2, || "cannot map guest RAM again".into())?;
            for v in &views {
                md_check_refs(fd, v.addr(), RAM_SIZE, 0)
                    .map_err(|e| format!("pages pinned: {e}"))?;
            }
            let after = census_as_before(fd, census_start, &b)?;
            ensure(
                empty(&b, "domains") && empty(&b, "stage2") && empty(&b, "guest_ram"),
                || format!("{b}"),
            )?;
            Ok(format!("census {after:?} as at start, no page pinned"))
        })(),
    );
}

/// Rings stopped and restarted with live mappings: where they stopped (a pause) keeps
/// everything; at index 0 (the driver started over) drops the domain and its host objects.
pub fn vring_reset(
    fd: BorrowedFd<'_>,
    daemon: &Daemon,
    ctl: &mut Control,
    rep: &mut Report,
    census_start: &Census,
) {
    let mut dev = daemon.connect_with(&opts());
    let plugged = dev.hotplug_region(RAM_GPA, RAM_SIZE);
    let host = dev.mem.host_addr(RAM_GPA);
    let s = [
        dev.attach(90, 1),
        dev.map(90, IOVA, IOVA + LEN - 1, RAM_GPA, RW),
    ];
    let h = ep_state(&backend(ctl), 1).map_or(0, |s| s.1);
    let paused = dev
        .stop_rings()
        .and_then(|b| dev.start_rings(b).map(|()| b));
    let s2 = dev.attach(91, 2);
    let maps = ctl.mappings(90).map(|m| m.len());
    rep.check(
        "vring-pause-keeps-mappings",
        (|| {
            plugged.clone()?;
            ensure(s.iter().all(|&s| s == status::OK) && s2 == status::OK, || {
                format!("statuses {s:?} {s2}")
            })?;
            let bases = paused.clone()?;
            md_check_map(fd, h, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP: {e}"))?;
            md_check_refs(fd, host, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1): {e}"))?;
            ensure(maps == Ok(1), || format!("{maps:?}"))?;
            Ok(format!(
                "GET_VRING_BASE {bases:?} then SET_VRING_BASE at the same place: domain 90 (hwpt {h}) still maps IOVA {IOVA:#x}, pinned once"
            ))
        })(),
    );
    // The driver starts over: new rings at index 0.
    let restarted = dev.stop_rings().and_then(|_| {
        let (rsize, esize) = (dev.reqq.size, dev.evq.size);
        dev.reqq = SplitQueue::new(&dev.mem, 0, rsize);
        dev.evq = SplitQueue::new(&dev.mem, 1, esize);
        dev.start_rings([0, 0])
    });
    // The first request after the restart finds the guest state gone.
    let s3 = dev.attach(92, 2);
    let b = backend(ctl);
    let maps = ctl.mappings(90).map(|m| m.len()).unwrap_or(0);
    rep.check(
        "vring-restart-at-zero-releases",
        (|| {
            restarted.clone()?;
            ensure(s3 == status::OK, || format!("ATTACH after restart: {s3}"))?;
            ensure(maps == 0, || format!("{maps} mappings left in domain 90"))?;
            let (d1, _) = ep_state(&b, 1).ok_or(format!("{b}"))?;
            let (d2, _) = ep_state(&b, 2).ok_or(format!("{b}"))?;
            ensure(d1.is_none() && d2 == Some(92), || format!("{b}"))?;
            let ids = domain_ids(&b);
            ensure(ids == vec![92], || format!("backend domains {ids:?}"))?;
            // (HWPT ids are reused: `h` may be domain 92's now, which maps nothing.)
            let (_, h2) = ep_state(&b, 2).ok_or(format!("{b}"))?;
            for hw in [h, h2] {
                ensure(md_check_map(fd, hw, IOVA, 0x1000, host).is_err(), || {
                    format!("hwpt {hw} still maps IOVA {IOVA:#x}")
                })?;
            }
            md_check_refs(fd, host, LEN, 0).map_err(|e| format!("MD_CHECK_REFS(0): {e}"))?;
            ensure(has_stage2(&b, RAM_GPA), || format!("stage 2 lost guest RAM: {b}"))?;
            Ok(format!(
                "rings restarted at 0: the first request found domains 90/91 gone (backend domains {ids:?}), IOVA {IOVA:#x} mapped nowhere (hwpts {h}, {h2}), pages unpinned, guest RAM still in stage 2"
            ))
        })(),
    );
    drop(dev);
    let gone = ctl.wait_disconnected(DISCONNECT_TIMEOUT);
    let b = backend(ctl);
    rep.check(
        "vring-reset-disconnect",
        (|| {
            ensure(gone, || "still connected".into())?;
            let after = census_as_before(fd, census_start, &b)?;
            Ok(format!("census {after:?} as at start"))
        })(),
    );
}
