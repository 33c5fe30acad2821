//! The PASID extension (docs/PASID.md) on the mock host: nested HWPTs, the mock IOTLB and
//! device cache, PASID attachments, vIOMMU events and page requests.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use iommufd_sys::{
    dev_check_cache, md_check_iotlb, md_check_map, pasid_check_hwpt, trigger_iopf, trigger_vevent,
    IOMMU_TEST_DEV_CACHE_DEFAULT, IOMMU_TEST_IOTLB_DEFAULT, MOCK_DEV_CACHE_NUM,
    MOCK_NESTED_DOMAIN_IOTLB_NUM,
};
use vhost_user_iommu_tests::proto::{self, inv, status, table_format, Invalidate};
use vhost_user_iommu_tests::{Control, Daemon, Options, Request};

use crate::backend::{backend, empty, ep_state, mock_ids, nested_of, u32_of};
use crate::census::{census, is_hwpt, Census};
use crate::report::{ensure, Report};
use crate::{RAM_GPA, RAM_SIZE};

/// The entries of mock nested HWPT `hwpt`'s IOTLB that do not hold `v`.
fn iotlb_not(fd: BorrowedFd<'_>, hwpt: u32, v: u32) -> Vec<u32> {
    (0..MOCK_NESTED_DOMAIN_IOTLB_NUM)
        .filter(|&i| md_check_iotlb(fd, hwpt, i, v).is_err())
        .collect()
}

/// The entries of mock device `idev`'s cache that do not hold `v`.
fn dev_cache_not(fd: BorrowedFd<'_>, idev: u32, v: u32) -> Vec<u32> {
    (0..MOCK_DEV_CACHE_NUM)
        .filter(|&i| dev_check_cache(fd, idev, i, v).is_err())
        .collect()
}

/// Is `id` a mock nested HWPT? (MD_CHECK_IOTLB answers only for one.)
fn is_nested(fd: BorrowedFd<'_>, id: u32) -> bool {
    (0..MOCK_NESTED_DOMAIN_IOTLB_NUM).any(|i| {
        md_check_iotlb(fd, id, i, IOMMU_TEST_IOTLB_DEFAULT).is_ok()
            || md_check_iotlb(fd, id, i, 0).is_ok()
    })
}

/// ATTACH_TABLE of a 4-level VT-d first-stage table rooted at `pgd`.
fn vtd_table(domain: u32, pgd: u64) -> Request {
    Request::attach_table(
        domain,
        table_format::INTEL_VTD_S1,
        &proto::vtd_s1_desc(48, pgd, 0),
    )
}

/// The PASID extension on the mock host: guest tables become nested HWPTs on the nesting
/// parent, INVALIDATE reaches the mock IOTLB and device cache, ATTACH_PASID the mock's PASID
/// table, a mock page request comes out of the event queue and PAGE_RESP goes back to the
/// kernel's fault queue; a disconnect leaves only the daemon's own objects.
pub fn nested(
    fd: BorrowedFd<'_>,
    daemon: &Daemon,
    ctl: &mut Control,
    rep: &mut Report,
    census_before: &Census,
) {
    let mut dev = daemon.connect_with(&Options {
        features: Some(!(1u64 << 3)), // everything but legacy BYPASS
        high_size: 0,
        ..Options::default()
    });
    let hot = dev.hotplug_region(RAM_GPA, RAM_SIZE);
    let b0 = backend(ctl);
    rep.check(
        "nesting-offered",
        (|| {
            hot?;
            ensure(dev.acked & (1 << 8) != 0 && dev.acked & (1 << 10) != 0, || {
                format!("ATTACH_TABLE / PAGE_REQUEST not negotiated: acked {:#x}", dev.acked)
            })?;
            ensure(b0["nesting"]["kind"] == "Selftest", || format!("{b0}"))?;
            // No table bound yet: no nesting parent pinning stage 2.
            ensure(b0["nesting"]["parent_hwpt"].is_null(), || format!("{b0}"))?;
            Ok(format!(
                "GET_HW_INFO: selftest IOMMU; features 8 and 10 offered; fault queue {}; no nesting parent before a table is bound",
                b0["nesting"]["fault_queue"]
            ))
        })(),
    );
    // PROBE describes the host IOMMU that will walk the guest's tables (docs/PASID.md §5):
    // HOST_IOMMU kind 3 (the selftest mock) and the PASID width the mock devices have.
    let probe_size = dev.config().probe_size as usize;
    let probe = dev.run(&Request::probe(1, probe_size));
    rep.check(
        "probe-host-iommu",
        (|| {
            ensure(probe.status() == status::OK, || "PROBE failed".into())?;
            let (props, _) = proto::parse_properties(probe.properties());
            let find = |ty: u16| props.iter().find(|p| p.ty == ty).map(|p| p.data.clone());
            let host = find(8).ok_or_else(|| format!("no HOST_IOMMU property: {props:?}"))?;
            ensure(
                host.len() >= 2 && u16::from_le_bytes([host[0], host[1]]) == 3,
                || format!("HOST_IOMMU {host:02x?}"),
            )?;
            let pasid = find(5).ok_or("no PASID_SIZE property")?;
            let bits = u32::from_le_bytes(pasid[..4].try_into().map_err(|_| "short PASID_SIZE")?);
            ensure(bits > 0, || {
                "PASID_SIZE 0 with PASID-capable mock devices".into()
            })?;
            Ok(format!(
                "HOST_IOMMU kind 3 (selftest); PASID_SIZE {bits} bits"
            ))
        })(),
    );
    let (Some((stdev1, idev1)), Some((stdev2, idev2))) = (mock_ids(&b0, 1), mock_ids(&b0, 2))
    else {
        rep.check("mock-ids", Err(format!("{b0}")));
        return;
    };

    // ATTACH then ATTACH_TABLE (a VT-d first-stage table whose root is a zeroed guest page).
    let s1 = dev.attach(50, 1);
    let s2 = dev.status_of(&vtd_table(50, RAM_GPA));
    let b = backend(ctl);
    let nested = nested_of(&b, 50);
    let parent = u32_of(&b["nesting"], "parent_hwpt");
    let census_bound = census(fd);
    rep.check(
        "attach-table-nested-hwpt",
        (|| {
            ensure(s1 == status::OK && s2 == status::OK, || format!("statuses {s1} {s2}"))?;
            let n = nested.ok_or(format!("no nested HWPT: {b}"))?;
            let p = parent.ok_or(format!("no nesting parent: {b}"))?;
            // Object census: the parent is a new paging HWPT (over the stage-2 IOAS: it maps
            // guest RAM at its guest-physical address), the nested HWPT is not a paging one.
            ensure(!census_before.1.contains(&p) && census_bound.1.contains(&p), || {
                format!("parent {p}: census before {census_before:?}, now {census_bound:?}")
            })?;
            let host = dev.mem.host_addr(RAM_GPA);
            md_check_map(fd, p, RAM_GPA, RAM_SIZE, host)
                .map_err(|e| format!("parent {p} does not map guest RAM at its GPA: {e}"))?;
            ensure(b["nesting"]["viommu"].is_u64(), || format!("no vIOMMU: {b}"))?;
            let (d, h) = ep_state(&b, 1).ok_or(format!("{b}"))?;
            ensure(d == Some(50) && h == n, || format!("endpoint 1 on {h}, not {n}: {b}"))?;
            let bad = iotlb_not(fd, n, IOMMU_TEST_IOTLB_DEFAULT);
            ensure(bad.is_empty(), || format!("MD_CHECK_IOTLB: entries {bad:?} not default"))?;
            ensure(!is_hwpt(fd, n), || format!("{n} is a paging HWPT"))?;
            Ok(format!(
                "domain 50's table is nested HWPT {n} (MD_CHECK_IOTLB: 4 entries {IOMMU_TEST_IOTLB_DEFAULT:#x}) on the new nesting parent {p} (MD_CHECK_MAP: stage 2 = guest RAM); vIOMMU {}; endpoint 1 attached to it; census {census_bound:?}",
                b["nesting"]["viommu"]
            ))
        })(),
    );
    let n = nested.unwrap_or(0);

    // A vIOMMU event of endpoint 1's device (TRIGGER_VEVENT: the mock reports its virtual id)
    // comes out of the event queue as a fault record.
    dev.post_event_buffers(1, 32);
    let vtrig = trigger_vevent(fd, idev1);
    let vev = dev.wait_event_raw(Duration::from_secs(5), 32);
    rep.check(
        "viommu-event-fault-record",
        (|| {
            vtrig.map_err(|e| format!("TRIGGER_VEVENT: {e}"))?;
            let (len, rec) = vev.ok_or("no fault record on the event queue")?;
            let le32 = |o: usize| u32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]]);
            ensure(len == 24, || format!("record of {len} bytes"))?;
            // Reason UNKNOWN, no flags (the mock says only which device), endpoint 1.
            ensure(rec[0] == 0 && le32(4) == 0 && le32(8) == 1, || {
                format!("reason {} flags {:#x} endpoint {}", rec[0], le32(4), le32(8))
            })?;
            Ok("TRIGGER_VEVENT -> vEVENTQ {virt_id 1} -> 24-byte fault record (UNKNOWN, endpoint 1)".into())
        })(),
    );

    // INVALIDATE: PASID 6's IOTLB (mock entry 6 % 4 = 2), then the whole domain with DEV_IOTLB.
    let s = dev.status_of(&Request::invalidate(&Invalidate {
        scope: inv::SCOPE_PASID,
        caches: inv::CACHE_IOTLB,
        flags: inv::FLAG_PASID,
        domain: 50,
        pasid: 6,
        ..Invalidate::default()
    }));
    let after_pasid = iotlb_not(fd, n, IOMMU_TEST_IOTLB_DEFAULT);
    let dev_before = dev_cache_not(fd, idev1, IOMMU_TEST_DEV_CACHE_DEFAULT);
    let s_all = dev.status_of(&Request::invalidate(&Invalidate {
        scope: inv::SCOPE_DOMAIN,
        caches: inv::CACHE_IOTLB | inv::CACHE_DEV_IOTLB,
        domain: 50,
        ..Invalidate::default()
    }));
    rep.check(
        "invalidate-iotlb-and-dev-cache",
        (|| {
            ensure(s == status::OK && s_all == status::OK, || format!("statuses {s} {s_all}"))?;
            ensure(after_pasid == vec![2], || {
                format!("after PASID 6: entries not default {after_pasid:?}, want [2]")
            })?;
            md_check_iotlb(fd, n, 2, 0).map_err(|e| format!("entry 2 not 0: {e}"))?;
            ensure(dev_before.is_empty(), || format!("device cache touched early: {dev_before:?}"))?;
            let iotlb = iotlb_not(fd, n, 0);
            ensure(iotlb.is_empty(), || format!("DOMAIN: IOTLB entries {iotlb:?} not invalidated"))?;
            let c1 = dev_cache_not(fd, idev1, 0);
            ensure(c1.is_empty(), || format!("DEV_CHECK_CACHE: endpoint 1 entries {c1:?} not invalidated"))?;
            let c2 = dev_cache_not(fd, idev2, IOMMU_TEST_DEV_CACHE_DEFAULT);
            ensure(c2.is_empty(), || format!("endpoint 2 (not in the domain) lost cache entries {c2:?}"))?;
            Ok("PASID 6: MD_CHECK_IOTLB entry 2 = 0, others default; DOMAIN+DEV_IOTLB: all 4 IOTLB entries 0, DEV_CHECK_CACHE of endpoint 1 (vIOMMU) all 0, endpoint 2 untouched".into())
        })(),
    );

    // ATTACH_PASID of endpoint 2's PASID 5 to the table domain, then DETACH_PASID.
    let s = dev.status_of(&Request::attach_pasid(50, 2, 5));
    let attached = pasid_check_hwpt(fd, stdev2, 5, n);
    let b = backend(ctl);
    // A page request with PASID 5 of endpoint 2's device (INVALID: the guest cannot serve it).
    dev.post_event_buffers(1, 32);
    let ptrig = trigger_iopf(fd, idev2, 5, 0x4, 0x1, 0x2000_0000);
    let pev = dev.wait_event_raw(Duration::from_secs(5), 32);
    let pg = pev
        .as_ref()
        .map(|(_, b)| u32::from_le_bytes([b[24], b[25], b[26], b[27]]));
    let pwrong = pg.map(|g| dev.status_of(&Request::page_resp(2, None, g, 1)));
    let pr = pg.map(|g| dev.status_of(&Request::page_resp(2, Some(5), g, 1)));
    rep.check(
        "pasid-page-request",
        (|| {
            ptrig.map_err(|e| format!("TRIGGER_IOPF: {e}"))?;
            let (len, rec) = pev.ok_or("no page-request record")?;
            let le32 = |o: usize| u32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]]);
            ensure(len == 32 && rec[0] == 3, || format!("{len} bytes, reason {}", rec[0]))?;
            // READ | ADDRESS | PASID_VALID | LAST.
            ensure(le32(4) == (1 | (1 << 8) | (1 << 9) | (1 << 10)), || {
                format!("flags {:#x}", le32(4))
            })?;
            ensure(le32(8) == 2 && le32(12) == 5 && le32(16) == 0x2000_0000, || {
                format!("endpoint {} pasid {} address {:#x}", le32(8), le32(12), le32(16))
            })?;
            ensure(pwrong == Some(status::NOENT), || {
                format!("PAGE_RESP without the PASID: {pwrong:?}")
            })?;
            ensure(pr == Some(status::OK), || format!("PAGE_RESP status {pr:?}"))?;
            Ok("TRIGGER_IOPF with PASID 5 -> record (endpoint 2, PASID_VALID, pasid 5, READ, LAST); PAGE_RESP must name the PASID (without: NOENT), INVALID written back".into())
        })(),
    );
    let sd = dev.status_of(&Request::detach_pasid(50, 2, 5));
    let detached = pasid_check_hwpt(fd, stdev2, 5, 0);
    rep.check(
        "attach-pasid",
        (|| {
            ensure(s == status::OK && sd == status::OK, || {
                format!("statuses {s} {sd}")
            })?;
            attached.map_err(|e| format!("PASID_CHECK_HWPT(5, {n}): {e}; {b}"))?;
            detached.map_err(|e| format!("PASID_CHECK_HWPT(5, 0) after DETACH_PASID: {e}"))?;
            Ok(format!(
                "PASID_CHECK_HWPT: endpoint 2 PASID 5 on nested HWPT {n}, then on nothing"
            ))
        })(),
    );

    // A page request of endpoint 1's device (on the nested HWPT, whose faults go to the fault
    // queue) arrives as a 32-byte record; PAGE_RESP goes back to the kernel.
    dev.post_event_buffers(2, 32);
    let trig = trigger_iopf(fd, idev1, 0, 0x2, 0x3, 0x1234_5678);
    let ev = dev.wait_event_raw(Duration::from_secs(5), 32);
    let grpid = ev
        .as_ref()
        .map(|(_, b)| u32::from_le_bytes([b[24], b[25], b[26], b[27]]));
    let sr = grpid.map(|g| dev.status_of(&Request::page_resp(1, None, g, 0)));
    let sr2 = grpid.map(|g| dev.status_of(&Request::page_resp(1, None, g, 0)));
    let b = backend(ctl);
    rep.check(
        "page-request-round-trip",
        (|| {
            trig.map_err(|e| format!("TRIGGER_IOPF: {e}"))?;
            let (len, rec) = ev.ok_or("no page-request record on the event queue")?;
            ensure(len == 32, || format!("record of {len} bytes"))?;
            let le32 = |o: usize| u32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]]);
            let addr = u64::from(le32(16)) | (u64::from(le32(20)) << 32);
            ensure(rec[0] == 3, || format!("reason {}", rec[0]))?;
            // READ | WRITE | ADDRESS | LAST, no PASID.
            ensure(le32(4) == (1 | 2 | (1 << 8) | (1 << 10)), || format!("flags {:#x}", le32(4)))?;
            ensure(le32(8) == 1 && addr == 0x1234_5000, || {
                format!("endpoint {} address {addr:#x}", le32(8))
            })?;
            ensure(sr == Some(status::OK), || format!("PAGE_RESP status {sr:?}"))?;
            ensure(sr2 == Some(status::NOENT), || format!("second PAGE_RESP status {sr2:?}"))?;
            // The PASID request above and this one.
            ensure(b["nesting"]["page_responses"] == 2 && b["nesting"]["page_requests"] == 2, || {
                format!("{}", b["nesting"])
            })?;
            Ok(format!(
                "TRIGGER_IOPF -> 32-byte record (endpoint 1, {addr:#x}, R|W, LAST, grpid {}); PAGE_RESP SUCCESS written back to the fault fd and accepted by the kernel (its cookie), a repeat is NOENT",
                grpid.unwrap_or(0)
            ))
        })(),
    );

    // DETACH_TABLE: back to the domain's IOAS, the nested HWPT is gone.
    let s = dev.status_of(&Request::detach_table(50));
    let b = backend(ctl);
    rep.check(
        "detach-table",
        (|| {
            ensure(s == status::OK, || format!("DETACH_TABLE status {s}"))?;
            let (d, h) = ep_state(&b, 1).ok_or(format!("{b}"))?;
            ensure(d == Some(50) && h != n && is_hwpt(fd, h), || format!("{b}"))?;
            ensure(!is_nested(fd, n), || {
                format!("nested HWPT {n} still exists")
            })?;
            ensure(nested_of(&b, 50).is_none(), || format!("{b}"))?;
            Ok(format!(
                "endpoint 1 back on paging HWPT {h}; nested HWPT {n} destroyed"
            ))
        })(),
    );

    // Bound again, then the frontend goes away: only the daemon's own objects stay.
    let s = dev.status_of(&vtd_table(50, RAM_GPA));
    let s2 = dev.status_of(&Request::attach_pasid(50, 2, 9));
    let n2 = nested_of(&backend(ctl), 50);
    drop(dev);
    ctl.wait_disconnected(Duration::from_secs(10));
    let census_after = census(fd);
    let b = backend(ctl);
    rep.check(
        "nested-disconnect-releases",
        (|| {
            ensure(s == status::OK && s2 == status::OK, || format!("statuses {s} {s2}"))?;
            let n2 = n2.ok_or("no nested HWPT the second time")?;
            ensure(!is_nested(fd, n2), || format!("nested HWPT {n2} survived the disconnect"))?;
            pasid_check_hwpt(fd, stdev2, 9, 0)
                .map_err(|e| format!("PASID 9 still attached: {e}"))?;
            ensure(census_after == *census_before, || {
                format!("objects before {census_before:?}, after {census_after:?}")
            })?;
            ensure(empty(&b, "domains"), || format!("{b}"))?;
            let _ = stdev1;
            Ok(format!("nested HWPT {n2} and PASID 9 released; IOAS/HWPT census {census_after:?} as at start"))
        })(),
    );
}
