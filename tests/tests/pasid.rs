//! The PASID / shared-table extension (docs/PASID.md) end to end on the software backend: the
//! test builds SMMUv3 and VT-d tables in the guest memory it shares with the daemon, binds them
//! with ATTACH_TABLE through the real vhost-user request queue, translates through the control
//! socket, changes a PTE, sees the stale translation until INVALIDATE, and answers a page
//! request from the event queue with PAGE_RESP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pagetables::build::vmsa::VmsaBuilder;
use pagetables::build::vtd::VtdBuilder;
use pagetables::build::{GuestMemoryWrite, Prot, TableAllocator};
use pagetables::vmsa::Granule;
use pagetables::GuestMemoryRead;
use pasid::smmuv3::build::{CdFields, CdTableBuilder};
use pasid::smmuv3::ste::{S1Dss, S1Fmt};
use serde_json::Value;
use vhost_user_iommu_control::{Access, Request as Ctl};
use vhost_user_iommu_tests::device::Options;
use vhost_user_iommu_tests::mem::{TableMem, HIGH_REGION_GPA};
use vhost_user_iommu_tests::proto::status::{INVAL, NOENT, OK, RANGE};
use vhost_user_iommu_tests::proto::{inv, smmuv3_desc, vtd_s1_desc, Invalidate};
use vhost_user_iommu_tests::{Daemon, Device, Request};

const F_ATTACH_TABLE: u64 = 1 << 8;
const F_PAGE_REQUEST: u64 = 1 << 10;
const LEGACY_BYPASS: u64 = 1 << 3;

fn setup(extra: &[&str]) -> (Daemon, Device) {
    let daemon = Daemon::start(extra);
    let d = daemon.connect_with(&Options {
        features: Some(!LEGACY_BYPASS),
        high_size: 4 << 20,
        ..Options::default()
    });
    assert_ne!(d.acked & F_ATTACH_TABLE, 0, "extension not negotiated");
    assert_ne!(d.acked & F_PAGE_REQUEST, 0, "page requests not negotiated");
    (daemon, d)
}

/// Tables live in the high region, away from the harness's rings and buffers.
fn allocator(offset: u64) -> TableAllocator {
    TableAllocator::new(
        HIGH_REGION_GPA + offset,
        HIGH_REGION_GPA + offset + (1 << 20),
    )
}

fn invalidate_range(domain: u32, pasid: Option<u32>, start: u64, pages: u64) -> Request {
    Request::invalidate(&Invalidate {
        scope: inv::SCOPE_ADDRESS,
        caches: inv::CACHE_IOTLB,
        flags: if pasid.is_some() {
            inv::FLAG_PASID | inv::FLAG_LEAF
        } else {
            inv::FLAG_LEAF
        },
        domain,
        pasid: pasid.unwrap_or(0),
        virt_start: start,
        nr_pages: pages,
        granule: 12,
        ..Invalidate::default()
    })
}

fn translate(daemon: &Daemon, endpoint: u32, pasid: Option<u32>, iova: u64, access: &str) -> Value {
    daemon.ctl().must(&Ctl::Translate {
        endpoint,
        iova,
        access: Access::parse(access),
        pasid,
        privileged: false,
    })
}

fn phys(v: &Value) -> u64 {
    assert_eq!(v["outcome"], "translated", "{v}");
    v["phys"].as_u64().unwrap()
}

#[test]
fn smmuv3_cd_table_stale_until_invalidate_then_page_request_round_trip() {
    let (daemon, mut d) = setup(&[]);
    assert_eq!(d.attach(1, 0), OK);
    d.post_event_buffers(4, 32);

    // Guest stage-1 table: IOVA 0x10000 -> GPA 0x200000 (RW, user).
    let prot = Prot {
        write: true,
        user: true,
        exec: false,
    };
    let mut s1 = VmsaBuilder::new(Granule::K4, 16, false, false, allocator(0)).unwrap();
    s1.map(&mut TableMem(&d.mem), 0x10000, 0x200000, 0x1000, prot)
        .unwrap();
    // CD table with 16 CDs; SSID 1 uses that stage 1 with ASID 7.
    let mut cds = CdTableBuilder::new(S1Fmt::Linear, 4, allocator(1 << 20)).unwrap();
    cds.write_cd(
        &mut TableMem(&d.mem),
        1,
        &CdFields::new(7, s1.ttb0()).encode(),
    )
    .unwrap();
    let (fmt, dss, ptr, cdmax) = cds.fields(S1Dss::Terminate);

    // A MAP domain with mappings cannot take a table; a table on it makes MAP INVAL.
    d.run(&Request::attach_table(
        1,
        2,
        &smmuv3_desc(fmt, dss, ptr, cdmax),
    ))
    .expect(OK, "ATTACH_TABLE SMMUv3");
    assert_eq!(
        d.map(1, 0x1000, 0x1fff, 0, 3),
        INVAL,
        "MAP on a table domain"
    );
    assert_eq!(daemon.ctl().domain(1).unwrap()["table"]["format"], 2);

    assert_eq!(
        phys(&translate(&daemon, 0, Some(1), 0x10234, "r")),
        0x200234
    );
    // SSID 2 has no valid CD; traffic without PASID is terminated (S1DSS=TERMINATE).
    assert_eq!(
        translate(&daemon, 0, Some(2), 0x10234, "r")["outcome"],
        "fault"
    );
    assert_eq!(
        translate(&daemon, 0, None, 0x10234, "r")["outcome"],
        "fault"
    );

    // The guest changes the PTE: the old translation is served until it invalidates.
    let (leaf, _) = s1.descriptor_address(&TableMem(&d.mem), 0x10000).unwrap();
    let old = TableMem(&d.mem).read_u64(leaf).unwrap();
    let new = (old & !0x0000_ffff_ffff_f000) | 0x300000;
    TableMem(&d.mem).write_u64(leaf, new).unwrap();
    assert_eq!(
        phys(&translate(&daemon, 0, Some(1), 0x10234, "r")),
        0x200234
    );
    d.run(&invalidate_range(1, Some(1), 0x10000, 1))
        .expect(OK, "INVALIDATE");
    assert_eq!(
        phys(&translate(&daemon, 0, Some(1), 0x10234, "r")),
        0x300234
    );

    // A miss becomes a page request on the eventq (32 bytes).
    let v = translate(&daemon, 0, Some(1), 0x50010, "w");
    assert_eq!(v["outcome"], "page_request", "{v}");
    let grpid = u32::try_from(v["grpid"].as_u64().unwrap()).unwrap();
    // First the two faults of the terminated accesses above (24-byte records): SSID 2 with
    // PASID_VALID and its PASID, then the access without PASID.
    let (len, f) = d
        .wait_event_raw(Duration::from_secs(5), 32)
        .expect("fault 1");
    assert_eq!((len, f[0]), (24, 2), "MAPPING fault");
    let fl = u32::from_le_bytes(f[4..8].try_into().unwrap());
    assert_ne!(fl & (1 << 9), 0, "PASID_VALID");
    assert_eq!(u32::from_le_bytes(f[12..16].try_into().unwrap()), 2);
    let (len, f) = d
        .wait_event_raw(Duration::from_secs(5), 32)
        .expect("fault 2");
    assert_eq!((len, f[0]), (24, 2));
    assert_eq!(
        u32::from_le_bytes(f[4..8].try_into().unwrap()) & (1 << 9),
        0
    );
    let (len, rec) = d
        .wait_event_raw(Duration::from_secs(5), 32)
        .expect("page request record");
    assert_eq!(len, 32);
    assert_eq!(rec[0], 3, "reason PAGE_REQUEST");
    let flags = u32::from_le_bytes(rec[4..8].try_into().unwrap());
    assert_eq!(
        flags,
        (1 << 1) | (1 << 8) | (1 << 9) | (1 << 10),
        "WRITE|ADDRESS|PASID|LAST"
    );
    assert_eq!(u32::from_le_bytes(rec[8..12].try_into().unwrap()), 0);
    assert_eq!(u32::from_le_bytes(rec[12..16].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(rec[16..24].try_into().unwrap()), 0x50000);
    assert_eq!(u32::from_le_bytes(rec[24..28].try_into().unwrap()), grpid);
    assert_eq!(
        daemon
            .ctl()
            .must(&Ctl::PageRequests)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The guest maps the page, then answers; a wrong group or PASID is NOENT.
    s1.map(&mut TableMem(&d.mem), 0x50000, 0x400000, 0x1000, prot)
        .unwrap();
    d.run(&Request::page_resp(0, Some(1), grpid + 1, 0))
        .expect(NOENT, "PAGE_RESP for no group");
    d.run(&Request::page_resp(0, None, grpid, 0))
        .expect(NOENT, "PAGE_RESP without the request's PASID");
    d.run(&Request::page_resp(0, Some(1), grpid, 0))
        .expect(OK, "PAGE_RESP SUCCESS");
    assert!(daemon
        .ctl()
        .must(&Ctl::PageRequests)
        .as_array()
        .unwrap()
        .is_empty());
    d.run(&Request::page_resp(0, Some(1), grpid, 0))
        .expect(NOENT, "a group is answered once");
    assert_eq!(
        phys(&translate(&daemon, 0, Some(1), 0x50010, "w")),
        0x400010
    );

    // DETACH_TABLE: the domain blocks again.
    let mut det = vec![9u8, 0, 0, 0];
    det.extend(1u32.to_le_bytes());
    det.extend([0u8; 8]);
    d.run(&Request::new(det)).expect(OK, "DETACH_TABLE");
    assert_eq!(
        translate(&daemon, 0, Some(1), 0x50010, "w")["outcome"],
        "fault"
    );
}

#[test]
fn vtd_first_stage_per_pasid_with_attach_pasid() {
    let (daemon, mut d) = setup(&[]);
    // Domain 5 is created by ATTACH of endpoint 3, then takes a VT-d first-stage table;
    // endpoint 4's PASID 9 attaches to it with ATTACH_PASID.
    assert_eq!(d.attach(5, 3), OK);
    let prot = Prot {
        write: false,
        user: true,
        exec: false,
    };
    let mut fs = VtdBuilder::new(false, allocator(0)).unwrap();
    fs.map(&mut TableMem(&d.mem), 0x7000_0000, 0x600000, 0x1000, prot)
        .unwrap();
    d.run(&Request::attach_table(
        5,
        4,
        &vtd_s1_desc(48, fs.pgtbl(), 0),
    ))
    .expect(OK, "ATTACH_TABLE VT-d");

    let mut ap = vec![10u8, 0, 0, 0];
    ap.extend(5u32.to_le_bytes());
    ap.extend(4u32.to_le_bytes());
    ap.extend(9u32.to_le_bytes());
    ap.extend([0u8; 8]);
    d.run(&Request::new(ap.clone())).expect(OK, "ATTACH_PASID");
    assert_eq!(
        phys(&translate(&daemon, 4, Some(9), 0x7000_0123, "r")),
        0x600123
    );
    // Read-only page: a write is a permission fault (page requests not posted: no buffers).
    assert_ne!(
        translate(&daemon, 4, Some(9), 0x7000_0123, "w")["outcome"],
        "translated"
    );
    // Endpoint 4 without PASID is not attached anywhere.
    assert_eq!(
        translate(&daemon, 4, None, 0x7000_0123, "r")["outcome"],
        "fault"
    );
    // The RID of endpoint 3 translates through the same table.
    assert_eq!(
        phys(&translate(&daemon, 3, None, 0x7000_0123, "r")),
        0x600123
    );

    // Stale until invalidated, whole domain this time.
    let (pte, _) = fs.entry_address(&TableMem(&d.mem), 0x7000_0000).unwrap();
    let old = TableMem(&d.mem).read_u64(pte).unwrap();
    TableMem(&d.mem)
        .write_u64(pte, (old & !0x000f_ffff_ffff_f000) | 0x800000)
        .unwrap();
    assert_eq!(
        phys(&translate(&daemon, 4, Some(9), 0x7000_0123, "r")),
        0x600123
    );
    let mut inv = vec![7u8, 0, 0, 0];
    inv.extend(1u16.to_le_bytes()); // DOMAIN
    inv.extend(1u16.to_le_bytes()); // IOTLB
    inv.extend([0u8; 4]);
    inv.extend(5u32.to_le_bytes());
    inv.extend([0u8; 44]);
    assert_eq!(inv.len(), 60, "INVALIDATE: 64 bytes with the tail");
    d.run(&Request::new(inv)).expect(OK, "INVALIDATE domain");
    assert_eq!(
        phys(&translate(&daemon, 4, Some(9), 0x7000_0123, "r")),
        0x800123
    );

    // DETACH_PASID, then the domain survives through endpoint 3.
    let mut dp = ap;
    dp[0] = 11;
    d.run(&Request::new(dp.clone())).expect(OK, "DETACH_PASID");
    d.run(&Request::new(dp)).expect(INVAL, "DETACH_PASID twice");
    assert_eq!(
        translate(&daemon, 4, Some(9), 0x7000_0123, "r")["outcome"],
        "fault"
    );
    assert_eq!(
        phys(&translate(&daemon, 3, None, 0x7000_0123, "r")),
        0x800123
    );
}

#[test]
fn hostile_bindings_and_invalidations_get_precise_statuses() {
    let (daemon, mut d) = setup(&[]);
    assert_eq!(d.attach(1, 0), OK);
    // CD table outside guest RAM, S1CDMax beyond the PASID width, reserved S1Fmt.
    d.run(&Request::attach_table(
        1,
        2,
        &smmuv3_desc(0, 0, 0x40_0000_0000, 4),
    ))
    .expect(RANGE, "CD table outside RAM");
    d.run(&Request::attach_table(
        1,
        2,
        &smmuv3_desc(0, 0, HIGH_REGION_GPA, 21),
    ))
    .expect(RANGE, "S1CDMax 21");
    d.run(&Request::attach_table(
        1,
        2,
        &smmuv3_desc(3, 0, HIGH_REGION_GPA, 4),
    ))
    .expect(INVAL, "reserved S1Fmt");
    // VT-d: misaligned pgd, supervisor requests not granted, unknown flags, bad width.
    d.run(&Request::attach_table(
        1,
        4,
        &vtd_s1_desc(48, HIGH_REGION_GPA + 8, 0),
    ))
    .expect(RANGE, "misaligned pgd");
    d.run(&Request::attach_table(
        1,
        4,
        &vtd_s1_desc(48, HIGH_REGION_GPA, 1),
    ))
    .expect(2, "SRE not granted -> UNSUPP");
    d.run(&Request::attach_table(
        1,
        4,
        &vtd_s1_desc(48, HIGH_REGION_GPA, 1 << 7),
    ))
    .expect(INVAL, "unknown flags");
    d.run(&Request::attach_table(
        1,
        4,
        &vtd_s1_desc(39, HIGH_REGION_GPA, 0),
    ))
    .expect(INVAL, "address width 39");
    // Unknown format, non-zero reserved bytes (before anything else: INVAL even for a domain
    // that does not exist), VMSA hardware A/D updates (never offered).
    d.run(&Request::attach_table(1, 3, &[]))
        .expect(2, "format 3 -> UNSUPP");
    d.run(&Request::attach_table(1, 4, &vtd_s1_desc(48, HIGH_REGION_GPA, 0)).with_byte(13, 1))
        .expect(INVAL, "reserved byte");
    d.run(&Request::attach_table(7, 4, &vtd_s1_desc(48, HIGH_REGION_GPA, 0)).with_byte(64, 1))
        .expect(INVAL, "reserved byte after the descriptor, no such domain");
    let s1 = VmsaBuilder::new(Granule::K4, 16, false, false, allocator(0)).unwrap();
    let mut vmsa = vec![0u8; 48];
    vmsa[8..16].copy_from_slice(&s1.ttb0().to_le_bytes());
    // T0SZ 16, TG0 4K, IPS 48 bits, then HA (39).
    let tcr: u64 = 16 | (5 << 32);
    vmsa[16..24].copy_from_slice(&(tcr | (1 << 39)).to_le_bytes());
    d.run(&Request::attach_table(1, 1, &vmsa))
        .expect(2, "TCR.HA -> UNSUPP");
    vmsa[16..24].copy_from_slice(&(5u64 << 32).to_le_bytes());
    d.run(&Request::attach_table(1, 1, &vmsa))
        .expect(INVAL, "T0SZ 0 -> INVAL");
    // Nothing of the above changed the domain.
    assert!(daemon.ctl().domain(1).unwrap()["table"].is_null());

    // A table whose root entry points to itself: a walk reads one entry per level (4), so
    // IOVA 0 resolves to the table page itself, like hardware would, and nothing loops.
    let root = HIGH_REGION_GPA + 0x10000;
    TableMem(&d.mem).write_u64(root, root | 0x7).unwrap();
    d.run(&Request::attach_table(1, 4, &vtd_s1_desc(48, root, 0)))
        .expect(OK, "self-referencing table binds");
    assert_eq!(phys(&translate(&daemon, 0, None, 0x123, "r")), root + 0x123);
    // Other IOVAs meet not-present entries: recoverable, so page requests.
    for iova in [0x1234_5000u64, 0x7fff_ffff_f000] {
        assert_eq!(
            translate(&daemon, 0, None, iova, "r")["outcome"],
            "page_request"
        );
    }
    // A next-level pointer outside guest RAM is a broken table: a fault, never a page request.
    TableMem(&d.mem)
        .write_u64(root + 8, 0x40_0000_0000 | 0x7)
        .unwrap();
    assert_eq!(
        translate(&daemon, 0, None, 1 << 39, "r")["outcome"],
        "fault",
        "next-level table outside RAM"
    );

    // INVALIDATE: bad scope, PASID scope without the flag, zero pages, overflow, PASID out of
    // range; then a storm of valid ones keeps the daemon serving.
    let inv = |scope: u16, flags: u16, pasid: u32, start: u64, pages: u64, granule: u8| {
        let mut r = vec![7u8, 0, 0, 0];
        r.extend(scope.to_le_bytes());
        r.extend(1u16.to_le_bytes());
        r.extend(flags.to_le_bytes());
        r.extend([0u8; 2]);
        r.extend(1u32.to_le_bytes());
        r.extend(pasid.to_le_bytes());
        r.extend([0u8; 4]);
        r.extend(0u64.to_le_bytes());
        r.extend(start.to_le_bytes());
        r.extend(pages.to_le_bytes());
        r.push(granule);
        r.extend([0u8; 11]);
        Request::new(r)
    };
    d.run(&inv(3, 0, 0, 0, 0, 12)).expect(INVAL, "scope 3");
    d.run(&inv(2, 0, 5, 0, 0, 12))
        .expect(INVAL, "PASID scope without flag");
    d.run(&inv(4, 0, 0, 0, 0, 12)).expect(INVAL, "zero pages");
    d.run(&inv(4, 0, 0, 0x1000, 1, 11))
        .expect(INVAL, "granule 11");
    d.run(&inv(4, 0, 0, u64::MAX - 0xfff, 2, 12))
        .expect(RANGE, "range past the end");
    d.run(&inv(2, 1, 1 << 20, 0, 0, 12))
        .expect(RANGE, "PASID beyond 20 bits");
    // Even: a valid 4 GiB range (scans the cache); odd: a range past the end of the space.
    let storm: Vec<Request> = (0..200u64)
        .map(|i| {
            let pages = if i % 2 == 0 { 1 << 20 } else { u64::MAX >> 11 };
            inv(4, 0, 0, i << 12, pages, 12)
        })
        .collect();
    for (i, batch) in storm.chunks(100).enumerate() {
        for (j, r) in d.run_batch(batch).iter().enumerate() {
            let want = if j % 2 == 0 { OK } else { RANGE };
            r.expect(want, &format!("storm batch {i} request {j}"));
        }
    }
    assert_eq!(d.attach(7, 1), OK, "the daemon still serves");
}

#[test]
fn attach_table_creates_a_domain_and_page_resp_failure_stops_page_requests() {
    let (daemon, mut d) = setup(&[]);
    d.post_event_buffers(8, 32);
    let prot = Prot {
        write: true,
        user: true,
        exec: false,
    };
    let mut fs = VtdBuilder::new(false, allocator(0)).unwrap();
    fs.map(&mut TableMem(&d.mem), 0x10_0000, 0x60_0000, 0x1000, prot)
        .unwrap();
    // Domain 9 does not exist: ATTACH_TABLE makes it, with nothing attached (an SVA domain
    // waiting for ATTACH_PASID), then an endpoint ATTACHes to it and translates at once.
    d.run(&Request::attach_table(
        9,
        4,
        &vtd_s1_desc(48, fs.pgtbl(), 0),
    ))
    .expect(OK, "ATTACH_TABLE creates domain 9");
    let dom = daemon.ctl().domain(9).unwrap();
    assert_eq!(dom["table"]["format"], 4, "{dom}");
    assert_eq!(dom["endpoints"].as_array().unwrap().len(), 0, "{dom}");
    assert_eq!(d.attach(9, 2), OK);
    assert_eq!(
        phys(&translate(&daemon, 2, None, 0x10_0042, "rw")),
        0x60_0042
    );

    // A miss is a page request; FAILURE stops the endpoint's page requests: misses fault.
    let v = translate(&daemon, 2, None, 0x20_0000, "r");
    assert_eq!(v["outcome"], "page_request", "{v}");
    let grpid = u32::try_from(v["grpid"].as_u64().unwrap()).unwrap();
    d.run(&Request::page_resp(2, None, grpid, 2))
        .expect(OK, "PAGE_RESP FAILURE");
    assert_eq!(
        translate(&daemon, 2, None, 0x20_0000, "r")["outcome"],
        "fault",
        "no page request after FAILURE"
    );
    // The next ATTACH of the endpoint enables them again.
    assert_eq!(d.attach(9, 2), OK);
    assert_eq!(
        translate(&daemon, 2, None, 0x20_0000, "r")["outcome"],
        "page_request"
    );
}
