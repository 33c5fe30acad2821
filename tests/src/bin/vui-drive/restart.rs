//! A daemon restart keeping the VM's DMA (issue 8): the daemon is SIGKILLed under a VM while
//! the launcher keeps the iommufd; the next daemon on the same state directory adopts the host
//! objects and resumes, or drops them for a new driver.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use iommufd_sys::{md_check_map, md_check_refs};
use vhost_user_iommu_tests::daemon::{point_at, Proxy};
use vhost_user_iommu_tests::proto::status;
use vhost_user_iommu_tests::{Daemon, Device};

use crate::backend::{backend, domain_maps, ep_state, mock_ids};
use crate::census::{census, expected_census};
use crate::launch::{
    open_iommufd, start_handed_over, work_dir, write_config, IOMMUFD_ONLY, MOCK_DEVICES,
};
use crate::report::{ensure, Report};
use crate::{opts, DISCONNECT_TIMEOUT, IOVA, LEN, RAM_GPA, RAM_SIZE, RW};

/// Start a daemon with `--state-dir state` on the mock configuration `config` and hand it `fd`.
fn start(
    fd: BorrowedFd<'_>,
    launcher: &Path,
    config: &Path,
    state: &Path,
) -> (Daemon, Result<String, String>) {
    let state = state.display().to_string();
    start_handed_over(
        launcher,
        config,
        IOMMUFD_ONLY,
        &[fd.as_raw_fd()],
        &["--endpoints", "0-15", "--state-dir", &state],
    )
}

/// The daemon is SIGKILLed under a VM with a live mapping while the launcher keeps the iommufd:
/// the device keeps translating; a new daemon on the same state directory and iommufd adopts
/// the mock devices, resumes the journal when the frontend reconnects, moves the device onto
/// its new HWPT with one replace and releases the old objects. With `via_proxy` the frontend is
/// attached through `vhost-user-iommu proxy` and does nothing itself across the restart: the
/// proxy replays its set-up into the new daemon (checks named `restart-proxy-*`).
pub fn restart(rep: &mut Report, via_proxy: bool) {
    let prefix = if via_proxy {
        "restart-proxy-"
    } else {
        "restart-"
    };
    let name = |n: &str| format!("{prefix}{n}");
    // A fresh iommufd: the census sees this phase's objects only.
    let iommufd = match open_iommufd() {
        Ok(f) => f,
        Err(e) => {
            rep.check(&name("setup"), Err(format!("/dev/iommu: {e}")));
            return;
        }
    };
    let fd = iommufd.as_fd();
    let dir = work_dir(prefix);
    let _ = std::fs::create_dir_all(&dir);
    let launcher = dir.join("launcher.sock");
    let state = dir.join("state");
    let config = dir.join("vui.toml");
    if let Err(e) = write_config(&config, Some(&launcher), MOCK_DEVICES) {
        rep.check(&name("setup"), Err(format!("{}: {e}", config.display())));
        return;
    }
    let (mut first, answer) = start(fd, &launcher, &config, &state);
    let mut ctl = first.ctl();
    let fresh = census(fd);
    let b_fresh = backend(&mut ctl);
    let link = dir.join("daemon.sock");
    let proxy = if via_proxy {
        if let Err(e) = point_at(&link, &first) {
            rep.check(&name("setup"), Err(format!("{}: {e}", link.display())));
            return;
        }
        Some(Proxy::start(
            &dir.join("vm.sock"),
            &link,
            dir.join("proxy.log"),
        ))
    } else {
        None
    };
    let mut dev = match &proxy {
        Some(p) => Device::connect(&p.socket, &opts())
            .unwrap_or_else(|e| panic!("frontend through the proxy: {e}\nproxy log:\n{}", p.log())),
        None => first.connect_with(&opts()),
    };
    let plugged = dev.hotplug_region(RAM_GPA, RAM_SIZE);
    let host = dev.mem.host_addr(RAM_GPA);
    let s = [
        dev.attach(90, 1),
        dev.map(90, IOVA, IOVA + LEN - 1, RAM_GPA, RW),
    ];
    let b1 = backend(&mut ctl);
    let (d1, h1) = ep_state(&b1, 1).unwrap_or((None, 0));
    let ids1 = (mock_ids(&b1, 1), mock_ids(&b1, 2));
    let census1 = census(fd);
    let (domains1, maps1) = (ctl.domains(), ctl.mappings(90));
    rep.check(
        &name("before"),
        (|| {
            answer.clone()?;
            plugged.clone()?;
            ensure(s.iter().all(|&s| s == status::OK), || format!("statuses {s:?}"))?;
            ensure(d1 == Some(90), || format!("{b1}"))?;
            md_check_map(fd, h1, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP: {e}"))?;
            md_check_refs(fd, host, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1): {e}"))?;
            ensure(expected_census(&b_fresh) == fresh, || {
                format!("fresh daemon: census {fresh:?}, backend {b_fresh}")
            })?;
            Ok(format!(
                "daemon with --state-dir: mock devices (stdev, dev_id) {ids1:?}; domain 90 maps IOVA {IOVA:#x} on hwpt {h1} (MD_CHECK_MAP ok, pinned once); census fresh {fresh:?}, now {census1:?}"
            ))
        })(),
    );
    first.signal(libc::SIGKILL);
    let exited = first.wait_exit(Duration::from_secs(10));
    drop(ctl);
    let down = census(fd);
    rep.check(
        &name("daemon-down-dma-continues"),
        (|| {
            ensure(exited.is_some(), || "the daemon did not die".into())?;
            md_check_map(fd, h1, IOVA, LEN, host)
                .map_err(|e| format!("MD_CHECK_MAP on hwpt {h1} with the daemon dead: {e}"))?;
            md_check_refs(fd, host, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1): {e}"))?;
            ensure(down == census1, || format!("census {census1:?} before, {down:?} now"))?;
            Ok(format!(
                "daemon SIGKILLed ({exited:?}); the launcher's iommufd keeps everything: hwpt {h1} still maps IOVA {IOVA:#x} (MD_CHECK_MAP ok), pinned once, census {down:?} unchanged"
            ))
        })(),
    );
    let objects = std::fs::read_to_string(state.join("iommufd-objects")).unwrap_or_default();
    let (second, answer) = start(fd, &launcher, &config, &state);
    let mut ctl = second.ctl();
    let b_adopt = backend(&mut ctl);
    rep.check(
        &name("adopts"),
        (|| {
            answer.clone()?;
            let ids = (mock_ids(&b_adopt, 1), mock_ids(&b_adopt, 2));
            ensure(ids == ids1, || format!("mock devices {ids1:?} before, {ids:?} now"))?;
            let (_, h) = ep_state(&b_adopt, 1).ok_or(format!("{b_adopt}"))?;
            ensure(h == h1, || format!("endpoint 1 on hwpt {h}, not {h1}"))?;
            ensure(!b_adopt["adopting"].is_null(), || format!("{b_adopt}"))?;
            md_check_map(fd, h1, IOVA, LEN, host)
                .map_err(|e| format!("MD_CHECK_MAP on hwpt {h1}: {e}"))?;
            Ok(format!(
                "new daemon on the same state dir and iommufd (objects file {}): the same mock devices {ids:?}, endpoint 1 still on hwpt {h1} (MD_CHECK_MAP ok) until the state is resumed; adopting {}",
                objects.trim(),
                b_adopt["adopting"]
            ))
        })(),
    );
    let positions = dev.ring_positions();
    let how = if proxy.is_some() {
        "the proxy replayed the set-up"
    } else {
        "the frontend reconnected"
    };
    let reconnected = match &proxy {
        // The proxy finds the new daemon on its backend path and replays the set-up.
        Some(_) => point_at(&link, &second).map_err(|e| format!("{}: {e}", link.display())),
        None => dev.reconnect(&second.socket, positions),
    };
    // The driver's next request: attaching again to the same domain changes nothing.
    let s = dev.attach(90, 1);
    let b2 = backend(&mut ctl);
    let (d2, h2) = ep_state(&b2, 1).unwrap_or((None, 0));
    let census2 = census(fd);
    let (domains2, maps2) = (ctl.domains(), ctl.mappings(90));
    rep.check(
        &name("resumes-with-same-mappings"),
        (|| {
            reconnected.clone()?;
            ensure(s == status::OK, || format!("ATTACH status {s}"))?;
            if let Some(p) = &proxy {
                ensure(p.restored() == 1, || format!("proxy log:\n{}", p.log()))?;
            }
            ensure(d2 == Some(90), || format!("{b2}"))?;
            ensure(domains1 == domains2, || {
                format!("domains before {domains1:?}, after {domains2:?}")
            })?;
            let maps = maps2.clone()?;
            ensure(maps1 == maps2 && maps.len() == 1, || {
                format!("mappings before {maps1:?}, after {maps2:?}")
            })?;
            let (m1, m2) = (domain_maps(&b1, 90), domain_maps(&b2, 90));
            ensure(m1 == m2, || format!("backend mappings before {m1}, after {m2}"))?;
            ensure(b2["adopting"].is_null(), || format!("still adopting: {b2}"))?;
            let ids = (mock_ids(&b2, 1), mock_ids(&b2, 2));
            ensure(ids == ids1, || format!("mock devices {ids1:?} before, {ids:?} now"))?;
            ensure(h2 != h1, || format!("endpoint 1 still on the old hwpt {h1}"))?;
            md_check_map(fd, h2, IOVA, LEN, host)
                .map_err(|e| format!("MD_CHECK_MAP on the new hwpt {h2}: {e}"))?;
            ensure(!census2.1.contains(&h1), || format!("old hwpt {h1} still in {census2:?}"))?;
            md_check_refs(fd, host, LEN, 1)
                .map_err(|e| format!("MD_CHECK_REFS(1): {e} (old objects still pin)"))?;
            let want = expected_census(&b2);
            ensure(census2 == want, || {
                format!("census {census2:?}, the new daemon's objects {want:?}")
            })?;
            ensure(
                census2.0.len() == census1.0.len() && census2.1.len() == census1.1.len(),
                || format!("census {census2:?} now, {census1:?} before the restart"),
            )?;
            Ok(format!(
                "rings restarted at {positions:?} ({how}); journal resumed: the same domains {domains2:?} and mappings {maps:?} (backend {m2}); endpoint 1 moved from hwpt {h1} to new hwpt {h2} (MD_CHECK_MAP ok), pinned once; census {census2:?} = the new daemon's objects, as many as before the restart {census1:?}"
            ))
        })(),
    );
    drop(dev);
    let gone = ctl.wait_disconnected(DISCONNECT_TIMEOUT);
    let b3 = backend(&mut ctl);
    let census3 = census(fd);
    rep.check(
        &name("then-disconnect"),
        (|| {
            ensure(gone, || "the daemon still reports the frontend".into())?;
            let want = expected_census(&b3);
            ensure(census3 == want, || {
                format!("census {census3:?}, backend {want:?}")
            })?;
            ensure(
                census3.0.len() == fresh.0.len() && census3.1.len() == fresh.1.len(),
                || format!("census {census3:?}, a fresh daemon's {fresh:?}"),
            )?;
            Ok(format!(
                "frontend gone: census {census3:?}, as many objects as a fresh daemon's {fresh:?}"
            ))
        })(),
    );
    if via_proxy {
        // The new-driver case below needs no proxy: it is the same with and without one.
        return;
    }
    // Killed again under a VM; this time a new driver comes (its rings start at 0): the
    // journaled state is dropped, and with it the adopted objects.
    let mut old = second.connect_with(&opts());
    let plugged = old.hotplug_region(RAM_GPA, RAM_SIZE);
    let old_host = old.mem.host_addr(RAM_GPA);
    let s = [
        old.attach(91, 1),
        old.map(91, IOVA, IOVA + LEN - 1, RAM_GPA, RW),
    ];
    let h_old = ep_state(&backend(&mut ctl), 1).map_or(0, |s| s.1);
    let mapped = md_check_map(fd, h_old, IOVA, LEN, old_host);
    let mut second = second;
    second.signal(libc::SIGKILL);
    let exited = second.wait_exit(Duration::from_secs(10));
    drop(ctl);
    let (third, answer) = start(fd, &launcher, &config, &state);
    let mut ctl = third.ctl();
    let adopting = backend(&mut ctl)["adopting"].clone();
    let mut dev = third.connect_with(&opts());
    let s2 = dev.attach(95, 2);
    let b4 = backend(&mut ctl);
    let census4 = census(fd);
    let domains4 = ctl.domains();
    rep.check(
        "restart-new-driver-drops-adopted",
        (|| {
            plugged.clone()?;
            answer.clone()?;
            ensure(s.iter().all(|&s| s == status::OK) && s2 == status::OK, || {
                format!("statuses {s:?} {s2}")
            })?;
            mapped.map_err(|e| format!("MD_CHECK_MAP before the kill: {e}"))?;
            ensure(exited.is_some(), || "the daemon did not die".into())?;
            ensure(!adopting.is_null(), || "nothing adopted".into())?;
            ensure(b4["adopting"].is_null(), || format!("still adopting: {b4}"))?;
            let (d1, h1) = ep_state(&b4, 1).ok_or(format!("{b4}"))?;
            ensure(d1.is_none() && h1 != h_old, || format!("endpoint 1: {b4}"))?;
            ensure(
                md_check_map(fd, h1, IOVA, 0x1000, 0x1000).is_err(),
                || format!("endpoint 1's hwpt {h1} maps the aperture"),
            )?;
            md_check_refs(fd, old_host, LEN, 0)
                .map_err(|e| format!("the old VM's page still pinned: {e}"))?;
            ensure(
                domains4.len() == 1 && domains4[0]["id"].as_u64() == Some(95),
                || format!("domains {domains4:?}"),
            )?;
            let want = expected_census(&b4);
            ensure(census4 == want, || format!("census {census4:?}, backend {want:?}"))?;
            ensure(
                census4.0.len() == fresh.0.len() + 1 && census4.1.len() == fresh.1.len() + 1,
                || format!("census {census4:?}, a fresh daemon's {fresh:?} plus domain 95"),
            )?;
            Ok(format!(
                "daemon SIGKILLed with domain 91 mapped on hwpt {h_old}; the next daemon adopted {adopting}; a new driver's ATTACH(95, 2) dropped the journal: endpoint 1 blocked on hwpt {h1} (maps nothing), the old page unpinned, domains {domains4:?}, census {census4:?} = a fresh daemon's {fresh:?} plus domain 95"
            ))
        })(),
    );
    rep.note_log_if_failed("restarted daemon", &third);
    drop(dev);
    drop(old);
    drop(third);
    let _ = std::fs::remove_dir_all(&dir);
}
