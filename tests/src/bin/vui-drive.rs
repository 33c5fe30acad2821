//! `vui-drive`: drives the daemon's iommufd backend from inside a test guest whose kernel has
//! CONFIG_IOMMUFD_TEST, and checks every effect with the kernel's own selftest ops.
//!
//! It plays the launcher: it opens /dev/iommu, hands it to the daemon over the fd hand-over
//! socket (docs/IOMMUFD.md), so both share one iommufd and the object ids the daemon reports on its
//! control socket (`backend`) can be checked here with IOMMU_TEST_OP_MD_CHECK_MAP (the mock
//! domain's page table), MD_CHECK_REFS (page pins), IOMMU_IOAS_IOVA_RANGES (object census).
//! Then it is the vhost-user frontend (the integration-test harness of this crate).
//!
//! Usage: `vui-drive mock`, or `vui-drive vfio BDF` with QEMU's edu device bound to vfio-pci
//! (its DMA engine checks the translations); the daemon binary comes from
//! $VHOST_USER_IOMMU_BIN. Prints
//! `VUI-RESULT <name> PASS|FAIL <detail>` lines; exits 1 if any check failed.
//! `vui-drive batch-child SOCKET ENDPOINT DOMAIN` is the frontend that `mock` (and the host
//! test tests/tests/memory_table.rs) kill with SIGKILL in the middle of a batch of MAPs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vhost::vhost_user::VhostUserFrontend;
use vhost_user_iommu_tests::launcher::send_with_fds;
use vhost_user_iommu_tests::proto::{self, status};
use vhost_user_iommu_tests::{Control, Daemon, Device, Options, Request};

// --- The kernel ABI, written from include/uapi/linux/iommufd.h and iommufd_test.h -------------

const fn io(nr: u64) -> u64 {
    (0x3b << 8) | nr
}
const IOMMU_IOAS_IOVA_RANGES: u64 = io(0x84);
const IOMMU_TEST_CMD: u64 = io(0xa0);
const OP_ADD_RESERVED: u32 = 1;
const OP_MD_CHECK_MAP: u32 = 3;
const OP_MD_CHECK_REFS: u32 = 4;
const OP_MD_CHECK_IOTLB: u32 = 14;
const OP_TRIGGER_IOPF: u32 = 15;
const OP_DEV_CHECK_CACHE: u32 = 16;
const OP_TRIGGER_VEVENT: u32 = 17;
const OP_PASID_CHECK_HWPT: u32 = 21;
/// IOMMU_TEST_IOTLB_DEFAULT / IOMMU_TEST_DEV_CACHE_DEFAULT: what a new mock nested HWPT's
/// IOTLB entries and a new mock device's cache entries hold.
const IOTLB_DEFAULT: u32 = 0xbad_beef;
const DEV_CACHE_DEFAULT: u32 = 0xba_ddad;

/// struct iommu_test_cmd (72 bytes).
#[repr(C)]
#[derive(Default)]
struct TestCmd {
    size: u32,
    op: u32,
    id: u32,
    rsvd: u32,
    u: [u64; 6],
    last: u32,
    pad: u32,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn test_cmd(fd: RawFd, op: u32, id: u32, u: [u64; 6]) -> Result<(), i32> {
    let mut c = TestCmd {
        size: 72,
        op,
        id,
        u,
        ..Default::default()
    };
    // SAFETY: IOMMU_TEST_CMD with a struct iommu_test_cmd; the pointer fields (uptr) are
    // addresses of our own live mappings.
    let r = unsafe { libc::ioctl(fd, IOMMU_TEST_CMD as _, &mut c as *mut TestCmd) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// MD_CHECK_MAP: every page of `[iova, iova+len)` in mock HWPT `hwpt` maps the page at `uptr`.
fn check_map(fd: RawFd, hwpt: u32, iova: u64, len: u64, uptr: u64) -> Result<(), i32> {
    test_cmd(fd, OP_MD_CHECK_MAP, hwpt, [iova, len, uptr, 0, 0, 0])
}

/// MD_CHECK_REFS: every page at `uptr` is pinned `refs` times.
fn check_refs(fd: RawFd, uptr: u64, len: u64, refs: u32) -> Result<(), i32> {
    test_cmd(
        fd,
        OP_MD_CHECK_REFS,
        0,
        [len, uptr, u64::from(refs), 0, 0, 0],
    )
}

/// A mock check whose one argument packs two 32-bit values (`lo | hi << 32`).
fn check_pair(fd: RawFd, op: u32, id: u32, lo: u32, hi: u32) -> Result<(), i32> {
    test_cmd(
        fd,
        op,
        id,
        [u64::from(lo) | (u64::from(hi) << 32), 0, 0, 0, 0, 0],
    )
}

/// MD_CHECK_IOTLB: entry `i` of mock nested HWPT `hwpt`'s IOTLB holds `v`.
fn check_iotlb(fd: RawFd, hwpt: u32, i: u32, v: u32) -> Result<(), i32> {
    check_pair(fd, OP_MD_CHECK_IOTLB, hwpt, i, v)
}

/// DEV_CHECK_CACHE: entry `i` of mock device `idev`'s cache holds `v`.
fn check_dev_cache(fd: RawFd, idev: u32, i: u32, v: u32) -> Result<(), i32> {
    check_pair(fd, OP_DEV_CHECK_CACHE, idev, i, v)
}

/// PASID_CHECK_HWPT: mock device `stdev`'s `pasid` is attached to `hwpt` (0: to nothing).
fn check_pasid_hwpt(fd: RawFd, stdev: u32, pasid: u32, hwpt: u32) -> Result<(), i32> {
    check_pair(fd, OP_PASID_CHECK_HWPT, stdev, pasid, hwpt)
}

/// TRIGGER_IOPF: mock device `idev` issues a page request.
fn trigger_iopf(
    fd: RawFd,
    idev: u32,
    pasid: u32,
    grpid: u32,
    perm: u32,
    addr: u64,
) -> Result<(), i32> {
    test_cmd(
        fd,
        OP_TRIGGER_IOPF,
        0,
        [
            u64::from(idev) | (u64::from(pasid) << 32),
            u64::from(grpid) | (u64::from(perm) << 32),
            addr,
            0,
            0,
            0,
        ],
    )
}

/// The 4 IOTLB (or device cache) entries that do not hold `v`.
fn entries_not(check: impl Fn(u32, u32) -> Result<(), i32>, v: u32) -> Vec<u32> {
    (0..4).filter(|&i| check(i, v).is_err()).collect()
}

// --- Requests of the PASID extension (docs/PASID.md) ----------------------------------------

fn attach_table_vtd(domain: u32, pgd: u64) -> Request {
    let mut r = vec![6u8, 0, 0, 0];
    r.extend(domain.to_le_bytes());
    r.extend(4u16.to_le_bytes()); // INTEL_VTD_S1
    r.extend([0u8; 6]);
    let mut d = [0u8; 48];
    d[0..4].copy_from_slice(&48u32.to_le_bytes());
    d[8..16].copy_from_slice(&pgd.to_le_bytes());
    r.extend(d);
    Request::new(r)
}

fn detach_table(domain: u32) -> Request {
    let mut r = vec![9u8, 0, 0, 0];
    r.extend(domain.to_le_bytes());
    r.extend([0u8; 8]);
    Request::new(r)
}

/// INVALIDATE of `scope` (1 DOMAIN, 2 PASID) and `caches` (1 IOTLB, 2 DEV_IOTLB, 4 PASID).
fn invalidate(domain: u32, scope: u16, caches: u16, pasid: Option<u32>) -> Request {
    let mut r = vec![7u8, 0, 0, 0];
    r.extend(scope.to_le_bytes());
    r.extend(caches.to_le_bytes());
    r.extend(u16::from(pasid.is_some()).to_le_bytes());
    r.extend([0u8; 2]);
    r.extend(domain.to_le_bytes());
    r.extend(pasid.unwrap_or(0).to_le_bytes());
    r.extend([0u8; 44]);
    Request::new(r)
}

fn pasid_attach(type_: u8, domain: u32, endpoint: u32, pasid: u32) -> Request {
    let mut r = vec![type_, 0, 0, 0];
    r.extend(domain.to_le_bytes());
    r.extend(endpoint.to_le_bytes());
    r.extend(pasid.to_le_bytes());
    r.extend([0u8; 8]);
    Request::new(r)
}

/// The backend's record of `ep`'s mock device: (stdev_id, idev_id).
fn mock_ids(b: &Value, ep: u32) -> Option<(u32, u32)> {
    let e = b["endpoints"]
        .as_array()?
        .iter()
        .find(|e| u32_of(e, "endpoint") == Some(ep))?;
    Some((
        u32_of(&e["device"], "stdev_id")?,
        u32_of(&e["device"], "dev_id")?,
    ))
}

fn nested_of(b: &Value, d: u32) -> Option<u32> {
    let e = b["domains"]
        .as_array()?
        .iter()
        .find(|e| u32_of(e, "domain") == Some(d))?;
    u32_of(e, "nested_hwpt")
}

/// Is `id` a mock nested HWPT? (MD_CHECK_IOTLB answers only for one.)
fn is_nested(fd: RawFd, id: u32) -> bool {
    (0..4)
        .any(|i| check_iotlb(fd, id, i, IOTLB_DEFAULT).is_ok() || check_iotlb(fd, id, i, 0).is_ok())
}

/// The PASID extension on the mock host: guest tables become nested HWPTs on the nesting
/// parent, INVALIDATE reaches the mock IOTLB and device cache, ATTACH_PASID the mock's PASID
/// table, a mock page request comes out of the event queue and PAGE_RESP goes back to the
/// kernel's fault queue; a disconnect leaves only the daemon's own objects.
fn mock_nested(
    fd: RawFd,
    daemon: &Daemon,
    ctl: &mut Control,
    rep: &mut Report,
    census_before: &(Vec<u32>, Vec<u32>),
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
    let s2 = dev.status_of(&attach_table_vtd(50, RAM_GPA));
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
            check_map(fd, p, RAM_GPA, RAM_SIZE, host)
                .map_err(|e| format!("parent {p} does not map guest RAM at its GPA: errno {e}"))?;
            ensure(b["nesting"]["viommu"].is_u64(), || format!("no vIOMMU: {b}"))?;
            let (d, h) = ep_state(&b, 1).ok_or(format!("{b}"))?;
            ensure(d == Some(50) && h == n, || format!("endpoint 1 on {h}, not {n}: {b}"))?;
            let bad = entries_not(|i, v| check_iotlb(fd, n, i, v), IOTLB_DEFAULT);
            ensure(bad.is_empty(), || format!("MD_CHECK_IOTLB: entries {bad:?} not default"))?;
            ensure(!is_hwpt(fd, n), || format!("{n} is a paging HWPT"))?;
            Ok(format!(
                "domain 50's table is nested HWPT {n} (MD_CHECK_IOTLB: 4 entries {IOTLB_DEFAULT:#x}) on the new nesting parent {p} (MD_CHECK_MAP: stage 2 = guest RAM); vIOMMU {}; endpoint 1 attached to it; census {census_bound:?}",
                b["nesting"]["viommu"]
            ))
        })(),
    );
    let n = nested.unwrap_or(0);

    // A vIOMMU event of endpoint 1's device (TRIGGER_VEVENT: the mock reports its virtual id)
    // comes out of the event queue as a fault record.
    dev.post_event_buffers(1, 32);
    let vtrig = test_cmd(fd, OP_TRIGGER_VEVENT, 0, [u64::from(idev1), 0, 0, 0, 0, 0]);
    let vev = dev.wait_event_raw(Duration::from_secs(5), 32);
    rep.check(
        "viommu-event-fault-record",
        (|| {
            vtrig.map_err(|e| format!("TRIGGER_VEVENT errno {e}"))?;
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
    let s = dev.status_of(&invalidate(50, 2, 1, Some(6)));
    let after_pasid = entries_not(|i, v| check_iotlb(fd, n, i, v), IOTLB_DEFAULT);
    let dev_before = entries_not(|i, v| check_dev_cache(fd, idev1, i, v), DEV_CACHE_DEFAULT);
    let s_all = dev.status_of(&invalidate(50, 1, 1 | 2, None));
    rep.check(
        "invalidate-iotlb-and-dev-cache",
        (|| {
            ensure(s == status::OK && s_all == status::OK, || format!("statuses {s} {s_all}"))?;
            ensure(after_pasid == vec![2], || {
                format!("after PASID 6: entries not default {after_pasid:?}, want [2]")
            })?;
            check_iotlb(fd, n, 2, 0).map_err(|e| format!("entry 2 not 0: errno {e}"))?;
            ensure(dev_before.is_empty(), || format!("device cache touched early: {dev_before:?}"))?;
            let iotlb = entries_not(|i, v| check_iotlb(fd, n, i, v), 0);
            ensure(iotlb.is_empty(), || format!("DOMAIN: IOTLB entries {iotlb:?} not invalidated"))?;
            let c1 = entries_not(|i, v| check_dev_cache(fd, idev1, i, v), 0);
            ensure(c1.is_empty(), || format!("DEV_CHECK_CACHE: endpoint 1 entries {c1:?} not invalidated"))?;
            let c2 = entries_not(|i, v| check_dev_cache(fd, idev2, i, v), DEV_CACHE_DEFAULT);
            ensure(c2.is_empty(), || format!("endpoint 2 (not in the domain) lost cache entries {c2:?}"))?;
            Ok("PASID 6: MD_CHECK_IOTLB entry 2 = 0, others default; DOMAIN+DEV_IOTLB: all 4 IOTLB entries 0, DEV_CHECK_CACHE of endpoint 1 (vIOMMU) all 0, endpoint 2 untouched".into())
        })(),
    );

    // ATTACH_PASID of endpoint 2's PASID 5 to the table domain, then DETACH_PASID.
    let s = dev.status_of(&pasid_attach(10, 50, 2, 5));
    let attached = check_pasid_hwpt(fd, stdev2, 5, n);
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
            ptrig.map_err(|e| format!("TRIGGER_IOPF errno {e}"))?;
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
    let sd = dev.status_of(&pasid_attach(11, 50, 2, 5));
    let detached = check_pasid_hwpt(fd, stdev2, 5, 0);
    rep.check(
        "attach-pasid",
        (|| {
            ensure(s == status::OK && sd == status::OK, || {
                format!("statuses {s} {sd}")
            })?;
            attached.map_err(|e| format!("PASID_CHECK_HWPT(5, {n}): errno {e}; {b}"))?;
            detached
                .map_err(|e| format!("PASID_CHECK_HWPT(5, 0) after DETACH_PASID: errno {e}"))?;
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
            trig.map_err(|e| format!("TRIGGER_IOPF errno {e}"))?;
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
    let s = dev.status_of(&detach_table(50));
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
    let s = dev.status_of(&attach_table_vtd(50, RAM_GPA));
    let s2 = dev.status_of(&pasid_attach(10, 50, 2, 9));
    let n2 = nested_of(&backend(ctl), 50);
    drop(dev);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctl.status()["connected"].as_bool() != Some(false) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let census_after = census(fd);
    let b = backend(ctl);
    rep.check(
        "nested-disconnect-releases",
        (|| {
            ensure(s == status::OK && s2 == status::OK, || format!("statuses {s} {s2}"))?;
            let n2 = n2.ok_or("no nested HWPT the second time")?;
            ensure(!is_nested(fd, n2), || format!("nested HWPT {n2} survived the disconnect"))?;
            check_pasid_hwpt(fd, stdev2, 9, 0)
                .map_err(|e| format!("PASID 9 still attached: errno {e}"))?;
            ensure(census_after == *census_before, || {
                format!("objects before {census_before:?}, after {census_after:?}")
            })?;
            ensure(b["domains"].as_array().is_some_and(Vec::is_empty), || format!("{b}"))?;
            let _ = stdev1;
            Ok(format!("nested HWPT {n2} and PASID 9 released; IOAS/HWPT census {census_after:?} as at start"))
        })(),
    );
}

/// Is `id` an IOAS? (IOAS_IOVA_RANGES answers ENOENT for anything else.)
fn is_ioas(fd: RawFd, id: u32) -> bool {
    #[repr(C)]
    struct Ranges {
        size: u32,
        ioas_id: u32,
        num_iovas: u32,
        rsvd: u32,
        allowed: u64,
        align: u64,
    }
    let mut a = Ranges {
        size: 32,
        ioas_id: id,
        num_iovas: 0,
        rsvd: 0,
        allowed: 0,
        align: 0,
    };
    // SAFETY: IOMMU_IOAS_IOVA_RANGES with num_iovas 0 writes no ranges (EMSGSIZE when there are
    // some); only `a` is written.
    let r = unsafe { libc::ioctl(fd, IOMMU_IOAS_IOVA_RANGES as _, &mut a as *mut Ranges) };
    r == 0 || errno() == libc::EMSGSIZE
}

/// Is `id` a mock paging HWPT? (MD_CHECK_MAP of nothing succeeds only on one.)
fn is_hwpt(fd: RawFd, id: u32) -> bool {
    check_map(fd, id, 0, 0, 0).is_ok()
}

/// The IOAS and HWPT ids alive in the iommufd (ids are small and allocated lowest-first).
fn census(fd: RawFd) -> (Vec<u32>, Vec<u32>) {
    let ids = 1..256u32;
    (
        ids.clone().filter(|&i| is_ioas(fd, i)).collect(),
        ids.filter(|&i| is_hwpt(fd, i)).collect(),
    )
}

// --- Checks -------------------------------------------------------------------------------------

struct Report {
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, r: Result<String, String>) {
        match r {
            Ok(d) => println!("VUI-RESULT {name} PASS {d}"),
            Err(d) => {
                self.failed += 1;
                println!("VUI-RESULT {name} FAIL {d}");
            }
        }
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

fn u32_of(v: &Value, k: &str) -> Option<u32> {
    v.get(k)?.as_u64().and_then(|x| u32::try_from(x).ok())
}

fn backend(ctl: &mut Control) -> Value {
    ctl.request(&vhost_user_iommu_control::Request::Backend)
        .unwrap_or(Value::Null)
}

/// The backend's record of `ep`: (domain, hwpt).
fn ep_state(b: &Value, ep: u32) -> Option<(Option<u32>, u32)> {
    let e = b["endpoints"]
        .as_array()?
        .iter()
        .find(|e| u32_of(e, "endpoint") == Some(ep))?;
    Some((u32_of(e, "domain"), u32_of(e, "hwpt")?))
}

fn domain_ioas(b: &Value, d: u32) -> Option<u32> {
    let e = b["domains"]
        .as_array()?
        .iter()
        .find(|e| u32_of(e, "domain") == Some(d))?;
    u32_of(e, "ioas")
}

const RAM_GPA: u64 = 0x4000_0000;
const RAM_SIZE: u64 = 2 << 20;
const IOVA: u64 = 0x100_0000; // the mock aperture starts at 16 MiB
const LEN: u64 = 0x1_0000;

fn mock(iommufd: &OwnedFd) -> usize {
    let fd = iommufd.as_raw_fd();
    let mut rep = Report { failed: 0 };
    let dir = std::env::temp_dir().join(format!("vui-drive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let launcher = dir.join("launcher.sock");
    let listener = UnixListener::bind(&launcher).unwrap();
    let config = dir.join("vui.toml");
    std::fs::write(
        &config,
        format!(
            "backend = \"iommufd\"\n[iommufd]\nfd-socket = \"{}\"\ndevices = [{{ endpoint = 1, mock = true }}, {{ endpoint = 2, mock = true }}]\n",
            launcher.display()
        ),
    )
    .unwrap();
    let raw = fd;
    let handover = std::thread::spawn(move || -> Result<String, String> {
        let (s, _) = listener.accept().map_err(|e| e.to_string())?;
        send_with_fds(&s, "{\"version\":1,\"iommufd\":0}\n", &[raw]).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(&s)
            .read_line(&mut answer)
            .map_err(|e| e.to_string())?;
        Ok(answer.trim().to_string())
    });
    let daemon = Daemon::start(&["--config", config.to_str().unwrap(), "--endpoints", "0-15"]);
    let answer = handover.join().unwrap();
    rep.check(
        "fd-handover",
        answer.and_then(|a| {
            ensure(a == "{\"ok\":true}", || format!("daemon answered {a}"))?;
            Ok(format!("iommufd {fd} handed over, daemon answered {a}"))
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
            let r = check_map(fd, h1, IOVA, 0x1000, 0x1000);
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
            ensure(has(0, IOVA - 1) && has(0x8000_0000, 0xfedf_ffff), || {
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
            check_map(fd, h10, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP errno {e}"))?;
            check_refs(fd, host, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1) errno {e}"))?;
            // Beyond the mapping: nothing.
            ensure(
                check_map(fd, h10, IOVA + LEN, 0x1000, host + LEN).is_err(),
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
                check_map(fd, h10, 0x200_0000, 0x1000, host).is_err(),
                || "non-RAM MAP reached the IOAS".into(),
            )?;
            Ok("host hole: INVAL; physical range outside guest RAM: RANGE; nothing mapped".into())
        })(),
    );
    // A kernel refusal: reserve IOVA in the domain's IOAS behind the daemon's back.
    let res_iova = 0x300_0000u64;
    let added = ioas10
        .ok_or(0)
        .and_then(|ioas| test_cmd(fd, OP_ADD_RESERVED, ioas, [res_iova, LEN, 0, 0, 0, 0]));
    let st = dev.map(10, res_iova, res_iova + LEN - 1, RAM_GPA, proto::MAP_F_READ);
    let n = ctl.mappings(10).map(|m| m.len()).unwrap_or(usize::MAX);
    rep.check(
        "kernel-error-propagates",
        (|| {
            added.map_err(|e| format!("ADD_RESERVED errno {e}"))?;
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
            ensure(check_map(fd, h10, IOVA, 0x1000, host).is_err(), || {
                "still mapped after UNMAP".into()
            })?;
            check_refs(fd, host, LEN, 0).map_err(|e| format!("MD_CHECK_REFS(0) errno {e}"))?;
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
            check_map(fd, h1, IOVA, 0x1000, host + 0x1000)
                .map_err(|e| format!("MD_CHECK_MAP on the new hwpt: errno {e}"))?;
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
                check_map(fd, h1, IOVA, 0x1000, host + 0x1000).is_err(),
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
            check_map(fd, h, RAM_GPA, RAM_SIZE, host)
                .map_err(|e| format!("MD_CHECK_MAP identity: errno {e}"))?;
            Ok(format!(
                "endpoint 1 on stage-2 hwpt {h}: IOVA == GPA for all guest RAM"
            ))
        })(),
    );

    // The config `bypass` byte: while it is 1, unattached endpoints use the stage-2 IOAS.
    let s = dev.detach(12, 1);
    dev.set_bypass(1);
    let b_on = backend(&mut ctl);
    let on_map = ep_state(&b_on, 1).map(|(_, h)| check_map(fd, h, RAM_GPA, RAM_SIZE, host));
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
                .map_err(|e| format!("bypass=1: MD_CHECK_MAP identity errno {e}"))?;
            let (_, h_off) = ep_state(&b_off, 1).ok_or(format!("{b_off}"))?;
            ensure(check_map(fd, h_off, RAM_GPA, 0x1000, host).is_err(), || {
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
            check_map(fd, h, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP errno {e}"))?;
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
            ensure(b["domains"].as_array().is_some_and(Vec::is_empty), || {
                format!("{b}")
            })?;
            ensure(
                b["stage2"].as_array().is_some_and(|a| !a.is_empty()),
                || format!("{b}"),
            )?;
            let (d, h) = ep_state(&b, 1).ok_or(format!("{b}"))?;
            ensure(
                d.is_none() && check_map(fd, h, IOVA, 0x1000, host).is_err(),
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctl.status()["connected"].as_bool() != Some(false) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let view = keep
        .as_ref()
        .ok()
        .and_then(|f| map_shared(f.as_raw_fd(), RAM_SIZE));
    let census_after = census(fd);
    let b = backend(&mut ctl);
    rep.check(
        "disconnect-releases-everything",
        (|| {
            let view = view.ok_or("cannot map guest RAM again")?;
            check_refs(fd, view, RAM_SIZE, 0)
                .map_err(|e| format!("pages still pinned: errno {e}"))?;
            // The same IOASes (blocked, stage-2) and as many HWPTs: the one the devices sit on
            // (an automatic domain, re-created when devices come back to the blocked IOAS) and
            // the nesting parent.
            let mut ep_hwpts: Vec<u32> = [1, 2].iter().filter_map(|&e| ep_state(&b, e).map(|s| s.1)).collect();
            ep_hwpts.extend(u32_of(&b["nesting"], "parent_hwpt"));
            let same = census_after.0 == census_before.0
                && census_after.1.len() == census_before.1.len()
                && census_after.1.iter().all(|h| ep_hwpts.contains(h));
            ensure(same, || {
                format!("objects before {census_before:?}, after {census_after:?}, endpoint hwpts {ep_hwpts:?}")
            })?;
            ensure(
                b["domains"].as_array().is_some_and(Vec::is_empty)
                    && b["stage2"].as_array().is_some_and(Vec::is_empty),
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
            check_map(fd, h, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP errno {e}"))?;
            Ok(format!("second connection: MAP reaches hwpt {h}"))
        })(),
    );
    drop(dev);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctl.status()["connected"].as_bool() != Some(false) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let census_start = census(fd);
    mock_memory_table(fd, &daemon, &mut ctl, &mut rep, &census_start);
    mock_vring_reset(fd, &daemon, &mut ctl, &mut rep, &census_start);
    mock_killed_mid_batch(fd, &daemon, &mut ctl, &mut rep, &census_start);
    let census_start = census(fd);
    mock_nested(fd, &daemon, &mut ctl, &mut rep, &census_start);
    if rep.failed > 0 {
        for line in daemon.stderr().lines() {
            println!("VUI-NOTE daemon: {line}");
        }
    }
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    mock_restart(&mut rep);
    rep.failed
}

// --- A daemon restart keeping the VM's DMA (issue 8) -------------------------------------------

/// Start a daemon on `config` (with `--state-dir state`) and hand it `fd` through the launcher
/// socket `launcher`; returns it with its answer.
fn start_handed_over(
    fd: RawFd,
    launcher: &Path,
    config: &Path,
    state: &Path,
) -> (Daemon, Result<String, String>) {
    let _ = std::fs::remove_file(launcher);
    let listener = match UnixListener::bind(launcher) {
        Ok(l) => l,
        Err(e) => panic!("bind {}: {e}", launcher.display()),
    };
    let handover = std::thread::spawn(move || -> Result<String, String> {
        let (s, _) = listener.accept().map_err(|e| e.to_string())?;
        send_with_fds(&s, "{\"version\":1,\"iommufd\":0}\n", &[fd]).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(&s)
            .read_line(&mut answer)
            .map_err(|e| e.to_string())?;
        Ok(answer.trim().to_string())
    });
    let daemon = Daemon::start(&[
        "--config",
        &config.display().to_string(),
        "--endpoints",
        "0-15",
        "--state-dir",
        &state.display().to_string(),
    ]);
    let answer = handover
        .join()
        .unwrap_or_else(|_| Err("hand-over thread panicked".into()));
    (daemon, answer)
}

/// The IOAS and HWPT ids a backend description accounts for: blocked, stage-2 and domain
/// IOASes; the endpoints' HWPTs, explicit paging HWPTs and the nesting parent.
fn expected_census(b: &Value) -> (Vec<u32>, Vec<u32>) {
    let mut ioas: Vec<u32> = [u32_of(b, "blocked_ioas"), u32_of(b, "stage2_ioas")]
        .into_iter()
        .flatten()
        .collect();
    for d in b["domains"].as_array().into_iter().flatten() {
        if d["bypass"].as_bool() != Some(true) {
            ioas.extend(u32_of(d, "ioas"));
        }
    }
    let mut hwpt: Vec<u32> = [1, 2]
        .iter()
        .filter_map(|&e| ep_state(b, e).map(|s| s.1))
        .collect();
    for p in b["paging_hwpts"].as_array().into_iter().flatten() {
        hwpt.extend(u32_of(p, "hwpt"));
    }
    hwpt.extend(u32_of(&b["nesting"], "parent_hwpt"));
    ioas.sort_unstable();
    ioas.dedup();
    hwpt.sort_unstable();
    hwpt.dedup();
    (ioas, hwpt)
}

/// The daemon is SIGKILLed under a VM with a live mapping while the launcher keeps the iommufd:
/// the device keeps translating; a new daemon on the same state directory and iommufd adopts
/// the mock devices, resumes the journal when the frontend reconnects, moves the device onto
/// its new HWPT with one replace and releases the old objects.
fn mock_restart(rep: &mut Report) {
    // A fresh iommufd: the census sees this phase's objects only.
    let iommufd = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/iommu")
    {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            rep.check("restart-setup", Err(format!("/dev/iommu: {e}")));
            return;
        }
    };
    let fd = iommufd.as_raw_fd();
    let dir = std::env::temp_dir().join(format!("vui-drive-restart-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let launcher = dir.join("launcher.sock");
    let state = dir.join("state");
    let config = dir.join("vui.toml");
    if let Err(e) = std::fs::write(
        &config,
        format!(
            "backend = \"iommufd\"\n[iommufd]\nfd-socket = \"{}\"\ndevices = [{{ endpoint = 1, mock = true }}, {{ endpoint = 2, mock = true }}]\n",
            launcher.display()
        ),
    ) {
        rep.check("restart-setup", Err(format!("{}: {e}", config.display())));
        return;
    }
    let (mut first, answer) = start_handed_over(fd, &launcher, &config, &state);
    let mut ctl = first.ctl();
    let fresh = census(fd);
    let b_fresh = backend(&mut ctl);
    let mut dev = first.connect_with(&opts());
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
        "restart-before",
        (|| {
            answer.clone()?;
            plugged.clone()?;
            ensure(s.iter().all(|&s| s == status::OK), || format!("statuses {s:?}"))?;
            ensure(d1 == Some(90), || format!("{b1}"))?;
            check_map(fd, h1, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP errno {e}"))?;
            check_refs(fd, host, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1) errno {e}"))?;
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
        "restart-daemon-down-dma-continues",
        (|| {
            ensure(exited.is_some(), || "the daemon did not die".into())?;
            check_map(fd, h1, IOVA, LEN, host)
                .map_err(|e| format!("MD_CHECK_MAP on hwpt {h1} with the daemon dead: errno {e}"))?;
            check_refs(fd, host, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1) errno {e}"))?;
            ensure(down == census1, || format!("census {census1:?} before, {down:?} now"))?;
            Ok(format!(
                "daemon SIGKILLed ({exited:?}); the launcher's iommufd keeps everything: hwpt {h1} still maps IOVA {IOVA:#x} (MD_CHECK_MAP ok), pinned once, census {down:?} unchanged"
            ))
        })(),
    );
    let objects = std::fs::read_to_string(state.join("iommufd-objects")).unwrap_or_default();
    let (second, answer) = start_handed_over(fd, &launcher, &config, &state);
    let mut ctl = second.ctl();
    let b_adopt = backend(&mut ctl);
    rep.check(
        "restart-adopts",
        (|| {
            answer.clone()?;
            let ids = (mock_ids(&b_adopt, 1), mock_ids(&b_adopt, 2));
            ensure(ids == ids1, || format!("mock devices {ids1:?} before, {ids:?} now"))?;
            let (_, h) = ep_state(&b_adopt, 1).ok_or(format!("{b_adopt}"))?;
            ensure(h == h1, || format!("endpoint 1 on hwpt {h}, not {h1}"))?;
            ensure(!b_adopt["adopting"].is_null(), || format!("{b_adopt}"))?;
            check_map(fd, h1, IOVA, LEN, host)
                .map_err(|e| format!("MD_CHECK_MAP on hwpt {h1}: errno {e}"))?;
            Ok(format!(
                "new daemon on the same state dir and iommufd (objects file {}): the same mock devices {ids:?}, endpoint 1 still on hwpt {h1} (MD_CHECK_MAP ok) until the state is resumed; adopting {}",
                objects.trim(),
                b_adopt["adopting"]
            ))
        })(),
    );
    let positions = dev.ring_positions();
    let reconnected = dev.reconnect(&second.socket, positions);
    // The driver's next request: attaching again to the same domain changes nothing.
    let s = dev.attach(90, 1);
    let b2 = backend(&mut ctl);
    let (d2, h2) = ep_state(&b2, 1).unwrap_or((None, 0));
    let census2 = census(fd);
    let (domains2, maps2) = (ctl.domains(), ctl.mappings(90));
    rep.check(
        "restart-resumes-with-same-mappings",
        (|| {
            reconnected.clone()?;
            ensure(s == status::OK, || format!("ATTACH status {s}"))?;
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
            check_map(fd, h2, IOVA, LEN, host)
                .map_err(|e| format!("MD_CHECK_MAP on the new hwpt {h2}: errno {e}"))?;
            ensure(!census2.1.contains(&h1), || format!("old hwpt {h1} still in {census2:?}"))?;
            check_refs(fd, host, LEN, 1)
                .map_err(|e| format!("MD_CHECK_REFS(1): errno {e} (old objects still pin)"))?;
            let want = expected_census(&b2);
            ensure(census2 == want, || {
                format!("census {census2:?}, the new daemon's objects {want:?}")
            })?;
            ensure(
                census2.0.len() == census1.0.len() && census2.1.len() == census1.1.len(),
                || format!("census {census2:?} now, {census1:?} before the restart"),
            )?;
            Ok(format!(
                "frontend reconnected at {positions:?}; journal resumed: the same domains {domains2:?} and mappings {maps:?} (backend {m2}); endpoint 1 moved from hwpt {h1} to new hwpt {h2} (MD_CHECK_MAP ok), pinned once; census {census2:?} = the new daemon's objects, as many as before the restart {census1:?}"
            ))
        })(),
    );
    drop(dev);
    let gone = wait_disconnected(&mut ctl);
    let b3 = backend(&mut ctl);
    let census3 = census(fd);
    rep.check(
        "restart-then-disconnect",
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
    let mapped = check_map(fd, h_old, IOVA, LEN, old_host);
    let mut second = second;
    second.signal(libc::SIGKILL);
    let exited = second.wait_exit(Duration::from_secs(10));
    drop(ctl);
    let (third, answer) = start_handed_over(fd, &launcher, &config, &state);
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
            mapped.map_err(|e| format!("MD_CHECK_MAP before the kill: errno {e}"))?;
            ensure(exited.is_some(), || "the daemon did not die".into())?;
            ensure(!adopting.is_null(), || "nothing adopted".into())?;
            ensure(b4["adopting"].is_null(), || format!("still adopting: {b4}"))?;
            let (d1, h1) = ep_state(&b4, 1).ok_or(format!("{b4}"))?;
            ensure(d1.is_none() && h1 != h_old, || format!("endpoint 1: {b4}"))?;
            ensure(
                check_map(fd, h1, IOVA, 0x1000, 0x1000).is_err(),
                || format!("endpoint 1's hwpt {h1} maps the aperture"),
            )?;
            check_refs(fd, old_host, LEN, 0)
                .map_err(|e| format!("the old VM's page still pinned: errno {e}"))?;
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
    if rep.failed > 0 {
        for line in third.stderr().lines() {
            println!("VUI-NOTE restarted daemon: {line}");
        }
    }
    drop(dev);
    drop(old);
    drop(third);
    let _ = std::fs::remove_dir_all(&dir);
}

// --- Memory-table changes, vring resets and a frontend killed mid-batch (issue 8) -------------

/// A second and a third RAM region in the mock aperture.
const HOT_GPA: u64 = 0x5000_0000;
const EXTRA_GPA: u64 = 0x6000_0000;
const RW: u32 = proto::MAP_F_READ | proto::MAP_F_WRITE;

/// Wait (bounded) until the daemon reports no frontend (it has released the connection's state
/// by then).
fn wait_disconnected(ctl: &mut Control) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctl.status()["connected"].as_bool() != Some(false) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The census after a disconnect is the census at `before`: the same IOASes, as many HWPTs, and
/// the HWPTs that differ are the ones the devices sit on now (an automatic domain of the blocked
/// IOAS may be re-created with a new id).
fn census_as_before(
    fd: RawFd,
    before: &(Vec<u32>, Vec<u32>),
    b: &Value,
) -> Result<(Vec<u32>, Vec<u32>), String> {
    let after = census(fd);
    let ep_hwpts: Vec<u32> = [1, 2]
        .iter()
        .filter_map(|&e| ep_state(b, e).map(|s| s.1))
        .collect();
    let same = after.0 == before.0
        && after.1.len() == before.1.len()
        && after
            .1
            .iter()
            .all(|h| before.1.contains(h) || ep_hwpts.contains(h));
    ensure(same, || {
        format!("objects before {before:?}, after {after:?}, endpoint hwpts {ep_hwpts:?}")
    })?;
    Ok(after)
}

/// The domain's `mappings` object in the backend's description.
fn domain_maps(b: &Value, d: u32) -> Value {
    b["domains"]
        .as_array()
        .and_then(|a| a.iter().find(|e| u32_of(e, "domain") == Some(d)))
        .map(|e| e["mappings"].clone())
        .unwrap_or(Value::Null)
}

/// The (iova, length) ranges of a domain's unbacked mappings.
fn unbacked(b: &Value, d: u32) -> Vec<(u64, u64)> {
    domain_maps(b, d)["unbacked"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| Some((u["iova"].as_u64()?, u["length"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn has_stage2(b: &Value, gpa: u64) -> bool {
    b["stage2"]
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["iova"].as_u64() == Some(gpa)))
}

/// Guest RAM added and removed under live mappings: a removed region is neither pinned nor
/// mapped in the domain's HWPT, while the guest's mappings stay in the device's table (and
/// UNMAP works); when RAM comes back at that address the IOVAs map it again; adding a region
/// disturbs nothing.
fn mock_memory_table(
    fd: RawFd,
    daemon: &Daemon,
    ctl: &mut Control,
    rep: &mut Report,
    census_start: &(Vec<u32>, Vec<u32>),
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
            check_map(fd, h, IOVA, LEN, host_a).map_err(|e| format!("MD_CHECK_MAP A: errno {e}"))?;
            check_map(fd, h, IOVA_B1, LEN, host_b)
                .map_err(|e| format!("MD_CHECK_MAP B1: errno {e}"))?;
            check_map(fd, h, IOVA_B2, LEN, host_b + LEN)
                .map_err(|e| format!("MD_CHECK_MAP B2: errno {e}"))?;
            check_refs(fd, host_b, 2 * LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1): errno {e}"))?;
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
            check_map(fd, h, IOVA, LEN, host_a).map_err(|e| format!("MD_CHECK_MAP A: errno {e}"))?;
            check_map(fd, h, IOVA_B1, LEN, host_b)
                .map_err(|e| format!("MD_CHECK_MAP B1: errno {e}"))?;
            check_map(fd, h, IOVA_B2, LEN, host_b + LEN)
                .map_err(|e| format!("MD_CHECK_MAP B2: errno {e}"))?;
            check_refs(fd, host_b, 2 * LEN, 1)
                .map_err(|e| format!("MD_CHECK_REFS(1) after the new table: errno {e}"))?;
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
            check_refs(fd, host_b, 2 * LEN, 0)
                .map_err(|e| format!("MD_CHECK_REFS(0) on B after removal: errno {e}"))?;
            ensure(check_map(fd, h, IOVA_B1, 0x1000, host_b).is_err(), || {
                "IOVA B1 still mapped in the HWPT".into()
            })?;
            ensure(check_map(fd, h, IOVA_B2, 0x1000, host_b + LEN).is_err(), || {
                "IOVA B2 still mapped in the HWPT".into()
            })?;
            check_map(fd, h, IOVA, LEN, host_a)
                .map_err(|e| format!("MD_CHECK_MAP A after removing B: errno {e}"))?;
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
            check_map(fd, h, IOVA_B1, LEN, host_b)
                .map_err(|e| format!("MD_CHECK_MAP B1 after re-adding B: errno {e}"))?;
            check_refs(fd, host_b, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1) B1: errno {e}"))?;
            check_refs(fd, host_b + LEN, LEN, 0)
                .map_err(|e| format!("MD_CHECK_REFS(0) B2 (unmapped): errno {e}"))?;
            ensure(check_map(fd, h, IOVA_B2, 0x1000, host_b + LEN).is_err(), || {
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
            check_map(fd, h, IOVA_B1, LEN, host_b2)
                .map_err(|e| format!("MD_CHECK_MAP B1 -> new RAM: errno {e}"))?;
            check_refs(fd, host_b2, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1) new: errno {e}"))?;
            check_refs(fd, host_b, LEN, 0).map_err(|e| format!("MD_CHECK_REFS(0) old: errno {e}"))?;
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
    let gone = wait_disconnected(ctl);
    let views: Vec<u64> = keep
        .iter()
        .filter_map(|f| map_shared(f.as_raw_fd(), RAM_SIZE))
        .collect();
    let b = backend(ctl);
    rep.check(
        "memtable-disconnect-releases",
        (|| {
            ensure(gone, || "still connected".into())?;
            ensure(views.len() == 2, || "cannot map guest RAM again".into())?;
            for v in &views {
                check_refs(fd, *v, RAM_SIZE, 0).map_err(|e| format!("pages pinned: errno {e}"))?;
            }
            let after = census_as_before(fd, census_start, &b)?;
            ensure(
                b["domains"].as_array().is_some_and(Vec::is_empty)
                    && b["stage2"].as_array().is_some_and(Vec::is_empty)
                    && b["guest_ram"].as_array().is_some_and(Vec::is_empty),
                || format!("{b}"),
            )?;
            Ok(format!("census {after:?} as at start, no page pinned"))
        })(),
    );
}

/// Rings stopped and restarted with live mappings: where they stopped (a pause) keeps
/// everything; at index 0 (the driver started over) drops the domain and its host objects.
fn mock_vring_reset(
    fd: RawFd,
    daemon: &Daemon,
    ctl: &mut Control,
    rep: &mut Report,
    census_start: &(Vec<u32>, Vec<u32>),
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
            check_map(fd, h, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP: errno {e}"))?;
            check_refs(fd, host, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1): errno {e}"))?;
            ensure(maps == Ok(1), || format!("{maps:?}"))?;
            Ok(format!(
                "GET_VRING_BASE {bases:?} then SET_VRING_BASE at the same place: domain 90 (hwpt {h}) still maps IOVA {IOVA:#x}, pinned once"
            ))
        })(),
    );
    // The driver starts over: new rings at index 0.
    let restarted = dev.stop_rings().and_then(|_| {
        let (rsize, esize) = (dev.reqq.size, dev.evq.size);
        dev.reqq = vhost_user_iommu_tests::SplitQueue::new(&dev.mem, 0, rsize);
        dev.evq = vhost_user_iommu_tests::SplitQueue::new(&dev.mem, 1, esize);
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
            let ids: Vec<u32> = b["domains"]
                .as_array()
                .map(|a| a.iter().filter_map(|d| u32_of(d, "domain")).collect())
                .unwrap_or_default();
            ensure(ids == vec![92], || format!("backend domains {ids:?}"))?;
            // (HWPT ids are reused: `h` may be domain 92's now, which maps nothing.)
            let (_, h2) = ep_state(&b, 2).ok_or(format!("{b}"))?;
            for hw in [h, h2] {
                ensure(check_map(fd, hw, IOVA, 0x1000, host).is_err(), || {
                    format!("hwpt {hw} still maps IOVA {IOVA:#x}")
                })?;
            }
            check_refs(fd, host, LEN, 0).map_err(|e| format!("MD_CHECK_REFS(0): errno {e}"))?;
            ensure(has_stage2(&b, RAM_GPA), || format!("stage 2 lost guest RAM: {b}"))?;
            Ok(format!(
                "rings restarted at 0: the first request found domains 90/91 gone (backend domains {ids:?}), IOVA {IOVA:#x} mapped nowhere (hwpts {h}, {h2}), pages unpinned, guest RAM still in stage 2"
            ))
        })(),
    );
    drop(dev);
    let gone = wait_disconnected(ctl);
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

/// A frontend SIGKILLed while a batch of MAPs is in flight (its request queue kept full):
/// the daemon survives, releases every host object and pin of that connection, and serves the
/// next frontend normally.
fn mock_killed_mid_batch(
    fd: RawFd,
    daemon: &Daemon,
    ctl: &mut Control,
    rep: &mut Report,
    census_start: &(Vec<u32>, Vec<u32>),
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
                .and_then(|f| map_shared(f.as_raw_fd(), RAM_SIZE));
            let pinned = view.map(|v| (v, check_refs(fd, v, RAM_SIZE, 0).is_err()));
            (pinned, c.kill())
        }
        Err(_) => (None, Err("no child".into())),
    };
    let gone = wait_disconnected(ctl);
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
            check_refs(fd, view, RAM_SIZE, 0)
                .map_err(|e| format!("pages still pinned after the kill: errno {e}"))?;
            let after = census_after.clone()?;
            ensure(
                b["domains"].as_array().is_some_and(Vec::is_empty)
                    && b["stage2"].as_array().is_some_and(Vec::is_empty),
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
            check_map(fd, h, IOVA, LEN, host).map_err(|e| format!("MD_CHECK_MAP: errno {e}"))?;
            check_refs(fd, host, LEN, 1).map_err(|e| format!("MD_CHECK_REFS(1): errno {e}"))?;
            Ok(format!(
                "next frontend: the same domain id and IOVA map again (hwpt {h}), pinned once"
            ))
        })(),
    );
    drop(dev);
    wait_disconnected(ctl);
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
            return Err(format!("kill: errno {}", errno()));
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
fn batch_child(socket: &Path, endpoint: u32, domain: u32) -> ! {
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

/// One low region (rings and buffers, GPA 0, inside the mock's IOVA hole); the region in the
/// aperture is added with a new memory table (regions stay sorted, as vhost-user wants).
fn opts() -> Options {
    Options {
        high_size: 0,
        ..Options::default()
    }
}

fn dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: borrowing a descriptor that is open for the duration of this call.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    b.try_clone_to_owned()
}

fn map_shared(fd: RawFd, len: u64) -> Option<u64> {
    // SAFETY: a new shared mapping of a memfd we hold; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p as u64)
}

// --- VFIO: QEMU's edu device behind QEMU's virtio-iommu-pci, bound to vfio-pci in this guest ---

const VFIO_DEVICE_GET_REGION_INFO: u64 = io(100 + 8);
const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// edu (QEMU hw/misc/edu.c): DMA registers in BAR0, a 4 KiB buffer at device address 0x40000,
/// DMA addresses limited to 28 bits.
const EDU_DMA_SRC: u64 = 0x80;
const EDU_DMA_DST: u64 = 0x88;
const EDU_DMA_CNT: u64 = 0x90;
const EDU_DMA_CMD: u64 = 0x98;
const EDU_BUF: u64 = 0x40000;
const EDU_CMD_START: u64 = 1;
const EDU_CMD_TO_RAM: u64 = 2;

/// The file offset of VFIO region `index` of a device fd.
fn region_offset(dev: RawFd, index: u32) -> Result<u64, i32> {
    #[repr(C)]
    #[derive(Default)]
    struct RegionInfo {
        argsz: u32,
        flags: u32,
        index: u32,
        cap_offset: u32,
        size: u64,
        offset: u64,
    }
    let mut r = RegionInfo {
        argsz: 32,
        index,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_REGION_INFO with a struct vfio_region_info of argsz bytes.
    let rc = unsafe {
        libc::ioctl(
            dev,
            VFIO_DEVICE_GET_REGION_INFO as _,
            &mut r as *mut RegionInfo,
        )
    };
    if rc < 0 {
        return Err(errno());
    }
    Ok(r.offset)
}

fn pwrite(fd: RawFd, data: &[u8], off: u64) -> Result<(), i32> {
    // SAFETY: writing from a live buffer of the stated length.
    let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off.cast_signed()) };
    if usize::try_from(n).ok() == Some(data.len()) {
        Ok(())
    } else {
        Err(errno())
    }
}

fn pread(fd: RawFd, data: &mut [u8], off: u64) -> Result<(), i32> {
    // SAFETY: reading into a live buffer of the stated length.
    let n = unsafe { libc::pread(fd, data.as_mut_ptr().cast(), data.len(), off.cast_signed()) };
    if usize::try_from(n).ok() == Some(data.len()) {
        Ok(())
    } else {
        Err(errno())
    }
}

/// edu's BAR0 and config space through a VFIO device fd.
struct Edu {
    fd: RawFd,
    bar0: u64,
}

impl Edu {
    fn new(fd: RawFd) -> Result<Edu, String> {
        let bar0 = region_offset(fd, 0).map_err(|e| format!("BAR0 region info: errno {e}"))?;
        let cfg = region_offset(fd, VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(|e| format!("config region info: errno {e}"))?;
        // PCI_COMMAND: memory space and bus master on.
        let mut cmd = [0u8; 2];
        pread(fd, &mut cmd, cfg + 4).map_err(|e| format!("read PCI_COMMAND: errno {e}"))?;
        let v = u16::from_le_bytes(cmd) | 0x2 | 0x4;
        pwrite(fd, &v.to_le_bytes(), cfg + 4)
            .map_err(|e| format!("write PCI_COMMAND: errno {e}"))?;
        Ok(Edu { fd, bar0 })
    }
    fn w64(&self, reg: u64, v: u64) -> Result<(), String> {
        pwrite(self.fd, &v.to_le_bytes(), self.bar0 + reg)
            .map_err(|e| format!("edu write {reg:#x}: errno {e}"))
    }
    fn r64(&self, reg: u64) -> Result<u64, String> {
        let mut b = [0u8; 8];
        pread(self.fd, &mut b, self.bar0 + reg)
            .map_err(|e| format!("edu read {reg:#x}: errno {e}"))?;
        Ok(u64::from_le_bytes(b))
    }
    /// One DMA transfer of `len` bytes; waits (bounded) for the device to finish it.
    fn dma(&self, src: u64, dst: u64, len: u64, to_ram: bool) -> Result<(), String> {
        self.w64(EDU_DMA_SRC, src)?;
        self.w64(EDU_DMA_DST, dst)?;
        self.w64(EDU_DMA_CNT, len)?;
        self.w64(
            EDU_DMA_CMD,
            EDU_CMD_START | if to_ram { EDU_CMD_TO_RAM } else { 0 },
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.r64(EDU_DMA_CMD)? & EDU_CMD_START != 0 {
            if Instant::now() > deadline {
                return Err("edu DMA did not complete in 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// A mapping of one guest RAM region, addressed by guest-physical address.
struct RamView {
    base: u64,
    gpa: u64,
}

impl RamView {
    fn ptr(&self, gpa: u64, len: usize) -> *mut u8 {
        assert!(gpa >= self.gpa && gpa - self.gpa + len as u64 <= RAM_SIZE);
        (self.base + (gpa - self.gpa)) as *mut u8
    }
    fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.ptr(gpa, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: inside the mapping (checked by `ptr`); the device writes the same pages,
            // hence volatile accesses.
            unsafe { p.add(i).write_volatile(*b) };
        }
    }
    fn fill(&self, gpa: u64, len: usize, b: u8) {
        self.write(gpa, &vec![b; len]);
    }
    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let p = self.ptr(gpa, len);
        // SAFETY: as in `write`.
        (0..len)
            .map(|i| unsafe { p.add(i).read_volatile() })
            .collect()
    }
}

/// Guest RAM of the vhost-user frontend below edu's 28-bit DMA limit, so bypass (IOVA == GPA)
/// is reachable too.
const VRAM_GPA: u64 = 0x0800_0000;
const DMA_IOVA: u64 = 0x10_0000;

fn vfio(iommufd: &OwnedFd, bdf: &str) -> usize {
    let fd = iommufd.as_raw_fd();
    let mut rep = Report { failed: 0 };
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
    let dir = std::env::temp_dir().join(format!("vui-drive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let launcher = dir.join("launcher.sock");
    let listener = UnixListener::bind(&launcher).unwrap();
    let config = dir.join("vui.toml");
    std::fs::write(
        &config,
        format!(
            "backend = \"iommufd\"\n[iommufd]\nfd-socket = \"{}\"\ndevices = [{{ endpoint = 1, fd = true }}]\n",
            launcher.display()
        ),
    )
    .unwrap();
    let (raw_iommufd, raw_dev) = (fd, dev_fd.as_raw_fd());
    let handover = std::thread::spawn(move || -> Result<String, String> {
        let (s, _) = listener.accept().map_err(|e| e.to_string())?;
        let msg = "{\"version\":1,\"iommufd\":0,\"devices\":[{\"endpoint\":1,\"fd\":1}]}\n";
        send_with_fds(&s, msg, &[raw_iommufd, raw_dev]).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(&s)
            .read_line(&mut answer)
            .map_err(|e| e.to_string())?;
        Ok(answer.trim().to_string())
    });
    let daemon = Daemon::start(&["--config", config.to_str().unwrap(), "--endpoints", "1"]);
    let answer = handover.join().unwrap();
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
    let edu = match Edu::new(dev_fd.as_raw_fd()) {
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
        .and_then(|f| {
            map_shared(f.as_raw_fd(), RAM_SIZE).map(|v| RamView {
                base: v,
                gpa: VRAM_GPA,
            })
        })
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctl.status()["connected"].as_bool() != Some(false) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = backend(&mut ctl);
    mem.fill(page(3), 4096, 0);
    let r = edu.dma(EDU_BUF, page(3), 4096, true);
    rep.check(
        "disconnect-blocks",
        (|| {
            let e = &b["endpoints"][0];
            ensure(e["domain"].is_null(), || format!("{b}"))?;
            ensure(b["domains"].as_array().is_some_and(Vec::is_empty), || format!("{b}"))?;
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
    if rep.failed > 0 {
        for line in daemon.stderr().lines() {
            println!("VUI-NOTE daemon: {line}");
        }
    }
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
    std::fs::write(
        &config,
        format!(
            "backend = \"iommufd\"\n[iommufd]\ndevices = [{{ endpoint = 1, pci = \"{bdf}\" }}]\n"
        ),
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
    if rep.failed > 0 {
        for line in daemon.stderr().lines() {
            println!("VUI-NOTE daemon: {line}");
        }
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "batch-child" {
        let arg = |i: usize| std::env::args().nth(i).unwrap_or_default();
        let (Ok(ep), Ok(domain)) = (arg(3).parse(), arg(4).parse()) else {
            eprintln!("usage: vui-drive batch-child SOCKET ENDPOINT DOMAIN");
            std::process::exit(2);
        };
        batch_child(Path::new(&arg(2)), ep, domain);
    }
    let iommufd = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/iommu")
    {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            println!("VUI-RESULT open-iommufd FAIL /dev/iommu: {e}");
            std::process::exit(1);
        }
    };
    let failed = match mode.as_str() {
        "mock" => mock(&iommufd),
        "vfio" => vfio(&iommufd, &std::env::args().nth(2).unwrap_or_default()),
        other => {
            eprintln!("usage: vui-drive mock | vui-drive vfio BDF | vui-drive batch-child SOCKET ENDPOINT DOMAIN (got {other:?})");
            std::process::exit(2);
        }
    };
    std::process::exit(i32::from(failed > 0));
}
