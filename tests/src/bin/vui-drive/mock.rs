//! `vui-drive mock`: the daemon on selftest mock devices, sharing our iommufd. MAP, UNMAP,
//! replace, DETACH, bypass, a kernel refusal, a memory-table change, RESET_DEVICE and
//! disconnects, each checked in the kernel (MD_CHECK_MAP, MD_CHECK_REFS, the object census);
//! then the phases of the other modules.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use iommufd_sys::{add_reserved, md_check_map, md_check_refs, MOCK_APERTURE_LAST};
use vhost::vhost_user::VhostUserFrontend;
use vhost_user_iommu_tests::proto::{self, status};
use vhost_user_iommu_tests::Request;

use crate::backend::{backend, domain_ioas, empty, ep_state, u32_of};
use crate::census::{census, endpoint_hwpts, is_hwpt, is_ioas};
use crate::launch::{start_handed_over, work_dir, write_config, IOMMUFD_ONLY, MOCK_DEVICES};
use crate::ram::{dup, RamView};
use crate::report::{ensure, Report};
use crate::{batch, memtable, nested, opts, restart, IOVA, LEN, RAM_GPA, RAM_SIZE};

/// Run the mock checks on `fd`; returns how many failed.
pub fn mock(fd: BorrowedFd<'_>) -> usize {
    let mut rep = Report::default();
    let dir = work_dir("");
    std::fs::create_dir_all(&dir).unwrap();
    let launcher = dir.join("launcher.sock");
    let config = dir.join("vui.toml");
    write_config(&config, Some(&launcher), MOCK_DEVICES).unwrap();
    let fd_num = fd.as_raw_fd();
    let (daemon, answer) = start_handed_over(
        &launcher,
        &config,
        IOMMUFD_ONLY,
        &[fd_num],
        &["--endpoints", "0-15"],
    );
    rep.check(
        "fd-handover",
        answer.and_then(|a| {
            ensure(a == "{\"ok\":true}", || format!("daemon answered {a}"))?;
            Ok(format!("iommufd {fd_num} handed over, daemon answered {a}"))
        }),
    );
    // The daemon's own objects (blocked and stage-2 IOASes, the devices' HWPT).
    let census_before = census(fd);
    let mut ctl = daemon.ctl();
    let b0 = backend(&mut ctl);
    let blocked_hwpt = ep_state(&b0, 1).map(|s| s.1);
    rep.check(
        "mock-devices-blocked",
        (|| {
            let (d1, h1) = ep_state(&b0, 1).ok_or(format!("no endpoint 1 in {b0}"))?;
            let (d2, h2) = ep_state(&b0, 2).ok_or(format!("no endpoint 2 in {b0}"))?;
            ensure(d1.is_none() && d2.is_none(), || format!("{b0}"))?;
            ensure(is_hwpt(fd, h1) && is_hwpt(fd, h2), || {
                format!("hwpts {h1} {h2} are not mock HWPTs")
            })?;
            // The blocked IOAS maps nothing.
            let r = md_check_map(fd, h1, IOVA, 0x1000, 0x1000);
            ensure(r.is_err(), || "blocked HWPT maps the aperture".into())?;
            Ok(format!(
                "endpoints 1,2 on blocked hwpt {h1}/{h2}; census {census_before:?}"
            ))
        })(),
    );

    let mut dev = daemon.connect_with(&opts());
    // Guest RAM inside the mock aperture, added with a new memory table.
    let region = dev.hotplug_region(RAM_GPA, RAM_SIZE).unwrap();
    let host = dev.mem.host_addr(RAM_GPA);
    let memfd = dev.mem.region_infos()[region].mmap_handle;
    let b = backend(&mut ctl);
    rep.check(
        "stage2-follows-memory-table",
        (|| {
            let st = b["stage2"].as_array().ok_or(format!("{b}"))?;
            let has = st.iter().any(|p| {
                p["iova"].as_u64() == Some(RAM_GPA) && p["length"].as_u64() == Some(RAM_SIZE)
            });
            ensure(has, || format!("stage-2 pieces {st:?}"))?;
            // The low region (GPA 0, 16 MiB) is entirely in the mock's IOVA hole.
            ensure(st.len() == 1, || format!("stage-2 pieces {st:?}"))?;
            Ok(format!(
                "stage-2 IOAS maps guest RAM {RAM_GPA:#x}+{RAM_SIZE:#x} only"
            ))
        })(),
    );
    let cfg = dev.config();
    let probe = dev.run(&Request::probe(1, cfg.probe_size as usize));
    rep.check(
        "probe-host-holes",
        (|| {
            ensure(probe.status() == status::OK, || "PROBE failed".into())?;
            let (props, _) = proto::parse_properties(probe.properties());
            let resv: Vec<_> = props.iter().filter_map(|p| p.resv_mem()).collect();
            let has = |s: u64, e: u64| {
                resv.iter()
                    .any(|r| r.subtype == proto::RESV_MEM_T_RESERVED && r.start == s && r.end == e)
            };
            ensure(has(0, IOVA - 1) && has(MOCK_APERTURE_LAST + 1, 0xfedf_ffff), || {
                format!("{resv:?}")
            })?;
            Ok(format!(
                "RESV_MEM RESERVED [0,{:#x}] and [0x80000000,...] from the mock aperture; mask {:#x}",
                IOVA - 1,
                cfg.page_size_mask
            ))
        })(),
    );

    // ATTACH creates the domain's IOAS and moves endpoint 1 there.
    let st = dev.attach(10, 1);
    let b = backend(&mut ctl);
    let h10 = ep_state(&b, 1).map(|s| s.1).unwrap_or(0);
    let ioas10 = domain_ioas(&b, 10);
    rep.check(
        "attach",
        (|| {
            ensure(st == status::OK, || format!("ATTACH status {st}"))?;
            ensure(ep_state(&b, 1) == Some((Some(10), h10)), || format!("{b}"))?;
            ensure(Some(h10) != blocked_hwpt && is_hwpt(fd, h10), || {
                format!("{b}")
            })?;
            Ok(format!("endpoint 1 on hwpt {h10} of IOAS {ioas10:?}"))
        })(),
    );
    let st = dev.map(
        10,
        IOVA,
        IOVA + LEN - 1,
        RAM_GPA,
        proto::MAP_F_READ | proto::MAP_F_WRITE,
    );
    rep.check(
        "map-reaches-ioas",
        (|| {
            ensure(st == status::OK, || format!("MAP status {st}"))?;
            md_check_map(fd, h10, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP: {e}"))?;
            md_check_refs(fd, host, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1): {e}"))?;
            // Beyond the mapping: nothing.
            ensure(
                md_check_map(fd, h10, IOVA + LEN, 0x1000, host + LEN).is_err(),
                || "page after the mapping is mapped".into(),
            )?;
            Ok(format!(
                "IOVA {IOVA:#x}+{LEN:#x} -> guest RAM pages, pinned once"
            ))
        })(),
    );
    let in_hole = dev.map(10, 0, 0xfff, RAM_GPA, proto::MAP_F_READ);
    let not_ram = dev.map(10, 0x200_0000, 0x200_0fff, 0x1000_0000, proto::MAP_F_READ);
    let n = ctl.mappings(10).map(|m| m.len()).unwrap_or(usize::MAX);
    rep.check(
        "map-rejections",
        (|| {
            ensure(in_hole == status::INVAL, || {
                format!("MAP in a host hole: {in_hole}")
            })?;
            ensure(not_ram == status::RANGE, || {
                format!("MAP of non-RAM: {not_ram}")
            })?;
            ensure(n == 1, || format!("{n} mappings"))?;
            ensure(
                md_check_map(fd, h10, 0x200_0000, 0x1000, host).is_err(),
                || "non-RAM MAP reached the IOAS".into(),
            )?;
            Ok("host hole: INVAL; physical range outside guest RAM: RANGE; nothing mapped".into())
        })(),
    );
    // A kernel refusal: reserve IOVA in the domain's IOAS behind the daemon's back.
    let res_iova = 0x300_0000u64;
    let added = ioas10
        .ok_or_else(|| "domain 10 has no IOAS".to_string())
        .and_then(|ioas| add_reserved(fd, ioas, res_iova, LEN).map_err(|e| e.to_string()));
    let st = dev.map(10, res_iova, res_iova + LEN - 1, RAM_GPA, proto::MAP_F_READ);
    let n = ctl.mappings(10).map(|m| m.len()).unwrap_or(usize::MAX);
    rep.check(
        "kernel-error-propagates",
        (|| {
            added.map_err(|e| format!("ADD_RESERVED: {e}"))?;
            ensure(st != status::OK, || {
                "MAP into a kernel-reserved IOVA succeeded".into()
            })?;
            ensure(n == 1, || format!("{n} mappings after the refused MAP"))?;
            Ok(format!(
                "IOAS_MAP refused by the kernel -> status {} ({}), device table unchanged",
                st,
                status::name(st)
            ))
        })(),
    );
    let st_unmap = dev.unmap(10, IOVA, IOVA + LEN - 1);
    rep.check(
        "unmap-reaches-ioas",
        (|| {
            ensure(st_unmap == status::OK, || {
                format!("UNMAP status {st_unmap}")
            })?;
            ensure(md_check_map(fd, h10, IOVA, 0x1000, host).is_err(), || {
                "still mapped after UNMAP".into()
            })?;
            md_check_refs(fd, host, LEN, 0).map_err(|e| format!("MD_CHECK_REFS(0): {e}"))?;
            Ok("UNMAP removed the IOVA range and unpinned the pages".into())
        })(),
    );
    // Map again, then move endpoint 1 to domain 11 (implicit detach = atomic replace).
    dev.map(10, IOVA, IOVA + LEN - 1, RAM_GPA, proto::MAP_F_READ);
    let st_a = dev.attach(11, 1);
    let st_m = dev.map(11, IOVA, IOVA + 0xfff, RAM_GPA + 0x1000, proto::MAP_F_READ);
    let st_b = dev.attach(11, 2);
    let b = backend(&mut ctl);
    rep.check(
        "replace",
        (|| {
            ensure(
                st_a == status::OK && st_m == status::OK && st_b == status::OK,
                || format!("statuses {st_a} {st_m} {st_b}"),
            )?;
            let (d1, h1) = ep_state(&b, 1).ok_or(format!("{b}"))?;
            let (_, h2) = ep_state(&b, 2).ok_or(format!("{b}"))?;
            ensure(d1 == Some(11) && h1 != h10 && h1 == h2, || format!("{b}"))?;
            md_check_map(fd, h1, IOVA, 0x1000, host + 0x1000)
                .map_err(|e| format!("MD_CHECK_MAP on the new hwpt: {e}"))?;
            // Domain 10 ended with its last endpoint: its IOAS and HWPT are gone.
            let gone = ioas10.is_some_and(|i| !is_ioas(fd, i)) && !is_hwpt(fd, h10);
            ensure(gone, || format!("IOAS {ioas10:?} / hwpt {h10} still exist"))?;
            Ok(format!(
                "endpoints 1,2 share hwpt {h1}; domain 10's IOAS and hwpt {h10} destroyed"
            ))
        })(),
    );
    let st = dev.detach(11, 1);
    let b = backend(&mut ctl);
    rep.check(
        "detach-blocks",
        (|| {
            ensure(st == status::OK, || format!("DETACH status {st}"))?;
            let (d1, h1) = ep_state(&b, 1).ok_or(format!("{b}"))?;
            let (_, h2) = ep_state(&b, 2).ok_or(format!("{b}"))?;
            ensure(d1.is_none() && h1 != h2, || format!("{b}"))?;
            ensure(
                md_check_map(fd, h1, IOVA, 0x1000, host + 0x1000).is_err(),
                || "detached endpoint still translates".into(),
            )?;
            Ok(format!(
                "endpoint 1 on the blocked IOAS (hwpt {h1}), nothing mapped"
            ))
        })(),
    );
    let st = dev.status_of(&Request::attach(12, 1, proto::ATTACH_F_BYPASS));
    let b = backend(&mut ctl);
    rep.check(
        "bypass-is-stage2",
        (|| {
            ensure(st == status::OK, || format!("ATTACH bypass status {st}"))?;
            let (_, h) = ep_state(&b, 1).ok_or(format!("{b}"))?;
            md_check_map(fd, h, RAM_GPA, RAM_SIZE, host)
                .map_err(|e| format!("MD_CHECK_MAP identity: {e}"))?;
            Ok(format!(
                "endpoint 1 on stage-2 hwpt {h}: IOVA == GPA for all guest RAM"
            ))
        })(),
    );

    // The config `bypass` byte: while it is 1, unattached endpoints use the stage-2 IOAS.
    let s = dev.detach(12, 1);
    dev.set_bypass(1);
    let b_on = backend(&mut ctl);
    let on_map = ep_state(&b_on, 1).map(|(_, h)| md_check_map(fd, h, RAM_GPA, RAM_SIZE, host));
    dev.set_bypass(0);
    let b_off = backend(&mut ctl);
    rep.check(
        "unattached-bypass",
        (|| {
            ensure(s == status::OK, || format!("DETACH status {s}"))?;
            ensure(b_on["unattached_bypass"] == true, || format!("{b_on}"))?;
            let (d, h_on) = ep_state(&b_on, 1).ok_or(format!("{b_on}"))?;
            ensure(d.is_none(), || format!("{b_on}"))?;
            on_map
                .ok_or("no endpoint 1")?
                .map_err(|e| format!("bypass=1: MD_CHECK_MAP identity: {e}"))?;
            let (_, h_off) = ep_state(&b_off, 1).ok_or(format!("{b_off}"))?;
            ensure(md_check_map(fd, h_off, RAM_GPA, 0x1000, host).is_err(), || {
                "bypass=0: unattached endpoint still translates".into()
            })?;
            Ok(format!("bypass=1: unattached endpoint 1 on stage-2 hwpt {h_on}; bypass=0: blocked hwpt {h_off}"))
        })(),
    );

    // A domain mapped while none of its endpoints is a host device pins nothing; after a new
    // memory table (the daemon's old mappings of guest RAM are gone) a host device joins it: its
    // translations must still be the guest's pages (the backend maps by memfd, not by address).
    let s1 = dev.attach(30, 3);
    let s2 = dev.map(30, IOVA, IOVA + LEN - 1, RAM_GPA, proto::MAP_F_READ);
    let hot = dev.hotplug_region(0x5000_0000, RAM_SIZE);
    let s3 = dev.attach(30, 2);
    let b = backend(&mut ctl);
    rep.check(
        "memory-table-change",
        (|| {
            ensure(s1 == status::OK && s2 == status::OK && s3 == status::OK, || {
                format!("statuses {s1} {s2} {s3}")
            })?;
            hot?;
            ensure(b["map_by_file"] == true, || format!("{b}"))?;
            let (d, h) = ep_state(&b, 2).ok_or(format!("{b}"))?;
            ensure(d == Some(30), || format!("{b}"))?;
            md_check_map(fd, h, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP: {e}"))?;
            Ok(format!(
                "mapped with no host device, new memory table, then endpoint 2 joined: hwpt {h} maps the guest's pages (IOAS_MAP_FILE)"
            ))
        })(),
    );

    // VHOST_USER_RESET_DEVICE: the guest's domains go, the memory table (stage-2) stays.
    let s = dev.attach(40, 1);
    let reset = dev.fe.reset_device();
    let b = backend(&mut ctl);
    rep.check(
        "reset-device",
        (|| {
            ensure(s == status::OK, || format!("ATTACH status {s}"))?;
            reset.map_err(|e| format!("RESET_DEVICE: {e}"))?;
            ensure(empty(&b, "domains"), || format!("{b}"))?;
            ensure(
                b["stage2"].as_array().is_some_and(|a| !a.is_empty()),
                || format!("{b}"),
            )?;
            let (d, h) = ep_state(&b, 1).ok_or(format!("{b}"))?;
            ensure(
                d.is_none() && md_check_map(fd, h, IOVA, 0x1000, host).is_err(),
                || format!("{b}"),
            )?;
            Ok(
                "RESET_DEVICE: no domain left, endpoints blocked, guest RAM still in stage-2"
                    .into(),
            )
        })(),
    );

    // Disconnect: every host object of the guest goes, nothing stays pinned.
    let keep = dup(memfd);
    drop(dev);
    ctl.wait_disconnected(Duration::from_secs(10));
    let view = keep
        .as_ref()
        .ok()
        .and_then(|f| RamView::map(f.as_fd(), RAM_GPA, RAM_SIZE));
    let census_after = census(fd);
    let b = backend(&mut ctl);
    rep.check(
        "disconnect-releases-everything",
        (|| {
            let view = view.ok_or("cannot map guest RAM again")?;
            md_check_refs(fd, view.addr(), RAM_SIZE, 0)
                .map_err(|e| format!("pages still pinned: {e}"))?;
            // The same IOASes (blocked, stage-2) and as many HWPTs: the one the devices sit on
            // (an automatic domain, re-created when devices come back to the blocked IOAS) and
            // the nesting parent.
            let mut ep_hwpts = endpoint_hwpts(&b);
            ep_hwpts.extend(u32_of(&b["nesting"], "parent_hwpt"));
            let same = census_after.0 == census_before.0
                && census_after.1.len() == census_before.1.len()
                && census_after.1.iter().all(|h| ep_hwpts.contains(h));
            ensure(same, || {
                format!("objects before {census_before:?}, after {census_after:?}, endpoint hwpts {ep_hwpts:?}")
            })?;
            ensure(
                empty(&b, "domains")
                    && empty(&b, "stage2"),
                || format!("{b}"),
            )?;
            Ok(format!(
                "IOAS/HWPT census back to {census_after:?}; no page pinned"
            ))
        })(),
    );
    // A second connection works the same way.
    let mut dev = daemon.connect_with(&opts());
    dev.hotplug_region(RAM_GPA, RAM_SIZE).unwrap();
    let host = dev.mem.host_addr(RAM_GPA);
    let s1 = dev.attach(20, 2);
    let s2 = dev.map(20, IOVA, IOVA + LEN - 1, RAM_GPA, proto::MAP_F_READ);
    let b = backend(&mut ctl);
    rep.check(
        "reconnect",
        (|| {
            ensure(s1 == status::OK && s2 == status::OK, || {
                format!("statuses {s1} {s2}")
            })?;
            let (_, h) = ep_state(&b, 2).ok_or(format!("{b}"))?;
            md_check_map(fd, h, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP: {e}"))?;
            Ok(format!("second connection: MAP reaches hwpt {h}"))
        })(),
    );
    drop(dev);
    ctl.wait_disconnected(Duration::from_secs(10));
    let census_start = census(fd);
    memtable::memory_table(fd, &daemon, &mut ctl, &mut rep, &census_start);
    memtable::vring_reset(fd, &daemon, &mut ctl, &mut rep, &census_start);
    batch::killed_mid_batch(fd, &daemon, &mut ctl, &mut rep, &census_start);
    let census_start = census(fd);
    nested::nested(fd, &daemon, &mut ctl, &mut rep, &census_start);
    rep.note_log_if_failed("daemon", &daemon);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    restart::restart(&mut rep, false);
    restart::restart(&mut rep, true);
    rep.failed
}
