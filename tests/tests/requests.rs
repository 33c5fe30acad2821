//! Every request type through the real socket, with the exact statuses of virtio spec §5.13.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use vhost_user_iommu_control::{Access, Request as Ctl};
use vhost_user_iommu_tests::proto::status::{INVAL, NOENT, OK, RANGE};
use vhost_user_iommu_tests::proto::{
    feature, parse_properties, ATTACH_F_BYPASS, MAP_F_MMIO, MAP_F_READ, MAP_F_WRITE, RESV_MEM_T_MSI,
};
use vhost_user_iommu_tests::{Daemon, Device, Options, Request};

const RW: u32 = MAP_F_READ | MAP_F_WRITE;
const PAGE: u64 = 0x1000;

fn outcome(v: &Value) -> (String, Option<String>, Option<u64>) {
    (
        v["outcome"].as_str().expect("outcome").to_string(),
        v["reason"].as_str().map(str::to_string),
        v["phys"].as_u64(),
    )
}

fn translated(phys: u64) -> (String, Option<String>, Option<u64>) {
    ("translated".into(), None, Some(phys))
}

fn fault(reason: &str) -> (String, Option<String>, Option<u64>) {
    ("fault".into(), Some(reason.into()), None)
}

fn setup(flags: &[&str]) -> (Daemon, Device) {
    let daemon = Daemon::start(flags);
    let d = daemon.connect();
    (daemon, d)
}

// ---------------------------------------------------------------- ATTACH / DETACH

#[test]
fn attach_and_detach_ok() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    let r = d.run(&Request::attach(1, 3, 0));
    r.expect(OK, "ATTACH(1,3)");
    assert_eq!(r.used_len, 4, "ATTACH writes exactly the 4-byte tail");
    assert_eq!(ctl.endpoint_domain(3), Some(1));
    let dom = ctl.domain(1).expect("domain 1 listed");
    assert_eq!(dom["endpoints"], serde_json::json!([3]));
    assert_eq!(dom["bypass"].as_bool(), Some(false));

    d.run(&Request::detach(1, 3)).expect(OK, "DETACH(1,3)");
    assert_eq!(ctl.endpoint_domain(3), None);
    assert!(
        ctl.domain(1).is_none(),
        "domain 1 must end with its last endpoint"
    );
}

#[test]
fn unknown_endpoint_is_noent() {
    let (daemon, mut d) = setup(&["--endpoints", "0-15"]);
    d.run(&Request::attach(1, 15, 0))
        .expect(OK, "ATTACH to endpoint 15");
    d.run(&Request::attach(1, 16, 0))
        .expect(NOENT, "ATTACH to endpoint 16");
    d.run(&Request::attach(1, 99, 0))
        .expect(NOENT, "ATTACH to endpoint 99");
    d.run(&Request::detach(1, 99))
        .expect(NOENT, "DETACH of endpoint 99");
    let c = d.config();
    d.run(&Request::probe(99, c.probe_size as usize))
        .expect(NOENT, "PROBE of endpoint 99");
    assert_eq!(daemon.ctl().endpoint_domain(99), None);
    // The first PROBE answered NOENT is logged with the rule it breaks (Linux stops probing the
    // bus there), once.
    d.run(&Request::probe(98, c.probe_size as usize))
        .expect(NOENT, "PROBE of endpoint 98");
    let log = daemon.stderr();
    assert_eq!(
        log.matches("PROBE of endpoint 99 answered NOENT: it is not in --endpoints (0-15)")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("PROBE of endpoint 98"), "{log}");
}

#[test]
fn attach_with_reserved_bytes_is_inval_and_not_performed() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    for off in 16..20 {
        d.run(&Request::attach(1, 3, 0).with_byte(off, 1))
            .expect(INVAL, &format!("ATTACH with reserved byte {off} set"));
        assert_eq!(ctl.endpoint_domain(3), None, "ATTACH must not be performed");
    }
    assert!(ctl.domain(1).is_none());
}

#[test]
fn attach_with_unknown_flags_is_inval() {
    let (daemon, mut d) = setup(&[]);
    for flags in [1 << 1, 1 << 7, 1 << 31, ATTACH_F_BYPASS | 1 << 4] {
        d.run(&Request::attach(1, 3, flags))
            .expect(INVAL, &format!("ATTACH with flags {flags:#x}"));
    }
    assert_eq!(daemon.ctl().endpoint_domain(3), None);
}

#[test]
fn reattach_is_an_implicit_detach() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x10_0000, 0x10_ffff, 0x20_0000, RW), OK);
    // Linux sends no DETACH on a domain switch.
    assert_eq!(d.attach(2, 3), OK);
    assert_eq!(ctl.endpoint_domain(3), Some(2));
    assert!(
        ctl.domain(1).is_none(),
        "domain 1 lost its last endpoint on the implicit detach and must be gone"
    );
    assert_eq!(
        outcome(&ctl.translate(3, 0x10_0000, "r")),
        fault("mapping"),
        "endpoint 3 must not reach domain 1's mappings any more"
    );
    // The same id re-created is a new, empty domain.
    assert_eq!(d.attach(1, 4), OK);
    assert_eq!(ctl.mappings(1).unwrap(), vec![]);
    assert_eq!(outcome(&ctl.translate(4, 0x10_0000, "r")), fault("mapping"));
    // Re-attaching to the same domain is fine too.
    assert_eq!(d.attach(2, 3), OK);
    assert_eq!(ctl.endpoint_domain(3), Some(2));
}

#[test]
fn domain_lives_until_its_last_endpoint_leaves() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(5, 1), OK);
    assert_eq!(d.attach(5, 2), OK);
    assert_eq!(d.map(5, 0x4000_0000, 0x4000_ffff, 0x1000_0000, RW), OK);
    assert_eq!(d.detach(5, 1), OK);
    assert_eq!(
        ctl.mappings(5).unwrap().len(),
        1,
        "domain 5 still has endpoint 2"
    );
    assert_eq!(
        outcome(&ctl.translate(2, 0x4000_0010, "r")),
        translated(0x1000_0010)
    );
    assert_eq!(
        outcome(&ctl.translate(1, 0x4000_0010, "r")),
        fault("domain"),
        "a detached endpoint must not reach the domain's mappings"
    );
    assert_eq!(d.detach(5, 2), OK);
    assert!(
        ctl.domain(5).is_none(),
        "domain 5 must end with its last endpoint"
    );
    assert_eq!(ctl.status()["mappings"].as_u64(), Some(0));
    // Re-attaching to id 5 finds an empty domain: the old mapping is gone.
    assert_eq!(d.attach(5, 1), OK);
    assert_eq!(ctl.mappings(5).unwrap(), vec![]);
    assert_eq!(
        outcome(&ctl.translate(1, 0x4000_0010, "r")),
        fault("mapping")
    );
    // And the old range can be mapped again without an overlap.
    assert_eq!(d.map(5, 0x4000_0000, 0x4000_ffff, 0x1000_0000, RW), OK);
}

#[test]
fn bypass_domains() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    assert_ne!(d.acked & feature::BYPASS_CONFIG, 0);
    d.run(&Request::attach(7, 3, ATTACH_F_BYPASS))
        .expect(OK, "ATTACH_F_BYPASS");
    assert_eq!(ctl.domain(7).unwrap()["bypass"].as_bool(), Some(true));
    let t = ctl.translate(3, 0x1234_5678, "rw");
    assert_eq!(
        outcome(&t),
        ("bypass".into(), None, Some(0x1234_5678)),
        "{t}"
    );
    // MAP and UNMAP on a bypass domain: INVAL.
    d.run(&Request::map(7, 0, 0xfff, 0, RW))
        .expect(INVAL, "MAP on a bypass domain");
    d.run(&Request::unmap(7, 0, 0xfff))
        .expect(INVAL, "UNMAP on a bypass domain");
    // Joining with an inconsistent BYPASS flag: INVAL, both ways.
    d.run(&Request::attach(7, 4, 0))
        .expect(INVAL, "non-bypass ATTACH to a bypass domain");
    assert_eq!(d.attach(8, 5), OK);
    d.run(&Request::attach(8, 6, ATTACH_F_BYPASS))
        .expect(INVAL, "bypass ATTACH to a mapped domain");
    assert_eq!(ctl.endpoint_domain(4), None);
    assert_eq!(ctl.endpoint_domain(6), None);
    // A consistent second endpoint is fine.
    d.run(&Request::attach(7, 9, ATTACH_F_BYPASS))
        .expect(OK, "second bypass endpoint");
}

// ---------------------------------------------------------------- MAP

#[test]
fn map_ok_is_visible_and_translates() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    let r = d.run(&Request::map(1, 0x10000, 0x1ffff, 0x8000_0000, RW));
    r.expect(OK, "MAP");
    assert_eq!(r.used_len, 4);
    assert_eq!(d.map(1, 0x40000, 0x40fff, 0x9000_0000, MAP_F_READ), OK);
    let m = ctl.mappings(1).unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(
        (
            m[0].virt_start,
            m[0].virt_end,
            m[0].phys_start,
            m[0].read,
            m[0].write
        ),
        (0x10000, 0x1ffff, 0x8000_0000, true, true)
    );
    assert_eq!(
        (
            m[1].virt_start,
            m[1].virt_end,
            m[1].phys_start,
            m[1].read,
            m[1].write
        ),
        (0x40000, 0x40fff, 0x9000_0000, true, false)
    );
    assert_eq!(
        outcome(&ctl.translate(3, 0x1f123, "rw")),
        translated(0x8000_f123)
    );
    assert_eq!(
        outcome(&ctl.translate(3, 0x40008, "r")),
        translated(0x9000_0008)
    );
    assert_eq!(
        outcome(&ctl.translate(3, 0x40008, "w")),
        fault("mapping"),
        "never allow writes without WRITE"
    );
    assert_eq!(outcome(&ctl.translate(3, 0x20000, "r")), fault("mapping"));
    assert_eq!(ctl.domain(1).unwrap()["mappings"].as_u64(), Some(2));
}

#[test]
fn map_write_only_does_not_allow_reads() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x10000, 0x10fff, 0x5000, MAP_F_WRITE), OK);
    assert_eq!(outcome(&ctl.translate(3, 0x10000, "w")), translated(0x5000));
    assert_eq!(outcome(&ctl.translate(3, 0x10000, "r")), fault("mapping"));
}

#[test]
fn map_misaligned_is_range_and_adds_nothing() {
    let (daemon, mut d) = setup(&["--page-size-mask", "0x1000"]);
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    for (s, e, p, what) in [
        (0x10800, 0x10fff, 0x0, "virt_start"),
        (0x10000, 0x10fff, 0x20_0800, "phys_start"),
        (0x10000, 0x10ffe, 0x20_0000, "virt_end+1"),
        (0x10000, 0x107ff, 0x20_0000, "half a page"),
    ] {
        d.run(&Request::map(1, s, e, p, RW))
            .expect(RANGE, &format!("MAP with misaligned {what}"));
    }
    assert_eq!(ctl.mappings(1).unwrap(), vec![]);
}

#[test]
fn map_outside_input_or_domain_range_is_range() {
    let (daemon, mut d) = setup(&[
        "--input-range",
        "0x100000-0xffffffff",
        "--domain-range",
        "1-100",
    ]);
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    d.run(&Request::map(1, 0xf_f000, 0xf_ffff, 0, RW))
        .expect(RANGE, "MAP below input_range.start");
    d.run(&Request::map(1, 0xf_f000, 0x10_0fff, 0, RW))
        .expect(RANGE, "MAP straddling input_range.start");
    d.run(&Request::map(1, 0xffff_f000, 0x1_0000_0fff, 0, RW))
        .expect(RANGE, "MAP straddling input_range.end");
    d.run(&Request::map(1, 0x1_0000_0000, 0x1_0000_0fff, 0, RW))
        .expect(RANGE, "MAP above input_range.end");
    d.run(&Request::map(101, 0x10_0000, 0x10_0fff, 0, RW))
        .expect(RANGE, "MAP to a domain above domain_range");
    d.run(&Request::map(0, 0x10_0000, 0x10_0fff, 0, RW))
        .expect(RANGE, "MAP to a domain below domain_range");
    assert_eq!(ctl.mappings(1).unwrap(), vec![]);
    // The edges themselves are inside.
    assert_eq!(d.map(1, 0x10_0000, 0x10_0fff, 0, RW), OK);
    assert_eq!(d.map(1, 0xffff_f000, 0xffff_ffff, 0, RW), OK);
    // ATTACH outside domain_range must not succeed.
    let st = d.attach(101, 4);
    assert_ne!(st, OK, "ATTACH to domain 101 outside domain_range 1-100");
    assert_eq!(ctl.endpoint_domain(4), None);
}

#[test]
fn map_overlap_is_inval_and_changes_nothing() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x10000, 0x1ffff, 0x100_0000, RW), OK);
    for (s, e) in [
        (0x10000, 0x1ffff),
        (0x18000, 0x27fff),
        (0x8000, 0x10fff),
        (0x12000, 0x12fff),
        (0x0, 0xfffff),
    ] {
        d.run(&Request::map(1, s, e, 0x200_0000, RW)).expect(
            INVAL,
            &format!("MAP [{s:#x},{e:#x}] overlapping [0x10000,0x1ffff]"),
        );
    }
    let m = ctl.mappings(1).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].virt_start, m[0].virt_end, m[0].phys_start),
        (0x10000, 0x1ffff, 0x100_0000)
    );
    // Adjacent is not overlapping.
    assert_eq!(d.map(1, 0x20000, 0x20fff, 0x200_0000, RW), OK);
    assert_eq!(d.map(1, 0xf000, 0xffff, 0x300_0000, RW), OK);
}

#[test]
fn map_unknown_flag_is_inval() {
    let (daemon, mut d) = setup(&[]);
    assert_eq!(d.attach(1, 3), OK);
    for flags in [1 << 3, 1 << 8, 1 << 31] {
        d.run(&Request::map(1, 0x10000, 0x10fff, 0, MAP_F_READ | flags))
            .expect(INVAL, &format!("MAP with flags {:#x}", MAP_F_READ | flags));
    }
    assert_eq!(daemon.ctl().mappings(1).unwrap(), vec![]);
}

#[test]
fn map_mmio_flag_needs_the_mmio_feature() {
    let (daemon, mut d) = setup(&[]);
    assert_ne!(d.acked & feature::MMIO, 0);
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x10000, 0x10fff, 0xfe00_0000, RW | MAP_F_MMIO), OK);
    let m = daemon.ctl().mappings(1).unwrap();
    assert!(m[0].mmio, "MMIO flag not recorded");
    drop(d);
    drop(daemon);

    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&Options {
        features: Some(feature::MODERN & !feature::MMIO),
        ..Options::default()
    });
    assert_eq!(d.acked & feature::MMIO, 0);
    assert_eq!(d.attach(1, 3), OK);
    d.run(&Request::map(
        1,
        0x10000,
        0x10fff,
        0xfe00_0000,
        RW | MAP_F_MMIO,
    ))
    .expect(INVAL, "MAP_F_MMIO without VIRTIO_IOMMU_F_MMIO negotiated");
}

#[test]
fn map_to_a_missing_domain_is_noent() {
    let (_daemon, mut d) = setup(&[]);
    d.run(&Request::map(42, 0x10000, 0x10fff, 0, RW))
        .expect(NOENT, "MAP to a domain that does not exist");
}

#[test]
fn map_over_a_reserved_region_is_rejected() {
    let (daemon, mut d) = setup(&[]);
    assert_eq!(d.attach(1, 3), OK);
    let st = d.map(1, 0xfee0_0000, 0xfee0_0fff, 0xfee0_0000, RW);
    assert_ne!(
        st, OK,
        "MAP overlapping the MSI RESV_MEM region must be rejected"
    );
    let st = d.map(1, 0xfe00_0000, 0xfeff_ffff, 0, RW);
    assert_ne!(
        st, OK,
        "MAP covering the MSI RESV_MEM region must be rejected"
    );
    assert_eq!(daemon.ctl().mappings(1).unwrap(), vec![]);
}

// ---------------------------------------------------------------- UNMAP

#[test]
fn unmap_spec_example_split_is_range_and_removes_nothing() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    let base = 0x100_0000;
    assert_eq!(d.attach(1, 3), OK);
    // map(0,9); unmap(0,4) -> RANGE.
    assert_eq!(d.map(1, base, base + 10 * PAGE - 1, 0x4000_0000, RW), OK);
    d.run(&Request::unmap(1, base, base + 5 * PAGE - 1)).expect(
        RANGE,
        "UNMAP splitting a mapping (spec example map(0,9) unmap(0,4))",
    );
    let m = ctl.mappings(1).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].virt_start, m[0].virt_end),
        (base, base + 10 * PAGE - 1)
    );
    assert_eq!(
        outcome(&ctl.translate(3, base, "r")),
        translated(0x4000_0000)
    );
    // Cutting the tail end is a split too.
    d.run(&Request::unmap(1, base + 5 * PAGE, base + 20 * PAGE - 1))
        .expect(RANGE, "UNMAP covering only the tail of a mapping");
    assert_eq!(ctl.mappings(1).unwrap().len(), 1);
}

#[test]
fn unmap_spec_example_gaps_are_fine() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    let base = 0x100_0000;
    assert_eq!(d.attach(1, 3), OK);
    // map(0,4); map(10,14); unmap(0,14) -> OK, both gone.
    assert_eq!(d.map(1, base, base + 5 * PAGE - 1, 0x4000_0000, RW), OK);
    assert_eq!(
        d.map(1, base + 10 * PAGE, base + 15 * PAGE - 1, 0x5000_0000, RW),
        OK
    );
    assert_eq!(
        d.map(1, base + 20 * PAGE, base + 21 * PAGE - 1, 0x6000_0000, RW),
        OK
    );
    d.run(&Request::unmap(1, base, base + 15 * PAGE - 1))
        .expect(OK, "UNMAP over two mappings and a gap (spec example)");
    let m = ctl.mappings(1).unwrap();
    assert_eq!(m.len(), 1, "only the mapping outside the range survives");
    assert_eq!(m[0].virt_start, base + 20 * PAGE);
    assert_eq!(outcome(&ctl.translate(3, base, "r")), fault("mapping"));
    assert_eq!(
        outcome(&ctl.translate(3, base + 10 * PAGE, "r")),
        fault("mapping")
    );
    // Nothing at all in the range is fine too.
    d.run(&Request::unmap(1, 0x7000_0000, 0x7fff_ffff))
        .expect(OK, "UNMAP of an empty range");
    // Whole address space.
    d.run(&Request::unmap(1, 0, u64::MAX))
        .expect(OK, "UNMAP of the whole address space");
    assert_eq!(ctl.mappings(1).unwrap(), vec![]);
}

#[test]
fn unmap_that_would_split_one_of_several_removes_none() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    let base = 0x100_0000;
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, base, base + 5 * PAGE - 1, 0x4000_0000, RW), OK);
    assert_eq!(
        d.map(1, base + 10 * PAGE, base + 20 * PAGE - 1, 0x5000_0000, RW),
        OK
    );
    // Fully covers the first, splits the second: RANGE and the first must survive.
    d.run(&Request::unmap(1, base, base + 15 * PAGE - 1))
        .expect(RANGE, "UNMAP splitting the second of two mappings");
    assert_eq!(
        ctl.mappings(1).unwrap().len(),
        2,
        "a RANGE UNMAP must remove NOTHING (not even fully covered mappings)"
    );
    assert_eq!(
        outcome(&ctl.translate(3, base, "r")),
        translated(0x4000_0000)
    );
}

#[test]
fn unmap_errors() {
    let (_daemon, mut d) = setup(&[]);
    d.run(&Request::unmap(42, 0, 0xfff))
        .expect(NOENT, "UNMAP on a domain that does not exist");
}

// ---------------------------------------------------------------- PROBE

#[test]
fn probe_reports_the_msi_region_and_zero_fills() {
    let (daemon, mut d) = setup(&[]);
    let size = d.config().probe_size as usize;
    let r = d.run(&Request::probe(3, size));
    r.expect(OK, "PROBE");
    let props = r.properties();
    assert_eq!(props.len(), size);
    let (list, end) = parse_properties(props);
    let resv: Vec<_> = list.iter().filter_map(|p| p.resv_mem()).collect();
    assert_eq!(
        list.len(),
        resv.len(),
        "only RESV_MEM properties by default: {list:?}"
    );
    assert_eq!(
        resv.len(),
        1,
        "exactly the default x86 MSI window: {resv:?}"
    );
    assert_eq!(resv[0].subtype, RESV_MEM_T_MSI);
    assert_eq!((resv[0].start, resv[0].end), (0xfee0_0000, 0xfeef_ffff));
    assert_eq!(resv[0].reserved, [0; 3]);
    assert_eq!(list[0].raw_type, 1, "type field's high bits must be zero");
    assert!(
        props[end..].iter().all(|&b| b == 0),
        "the rest of the properties buffer (from byte {end}) must be zero-filled"
    );
    assert_eq!(r.writable[size + 1..], [0, 0, 0], "tail reserved bytes");
    // PROBE makes the endpoint known to the device.
    assert!(daemon
        .ctl()
        .endpoints()
        .iter()
        .any(|e| e["id"].as_u64() == Some(3)));
}

#[test]
fn probe_reports_configured_reserved_regions() {
    let (_daemon, mut d) = setup(&[
        "--reserved-region",
        "0x8000000-0x80fffff:msi",
        "--reserved-region",
        "0x10000-0x1ffff:reserved",
    ]);
    let size = d.config().probe_size as usize;
    let r = d.run(&Request::probe(1, size));
    r.expect(OK, "PROBE");
    let (list, end) = parse_properties(r.properties());
    let mut resv: Vec<_> = list
        .iter()
        .filter_map(|p| p.resv_mem())
        .map(|r| (r.start, r.end, r.subtype))
        .collect();
    resv.sort();
    assert_eq!(
        resv,
        vec![(0x10000, 0x1ffff, 0), (0x800_0000, 0x80f_ffff, 1)],
        "{list:?}"
    );
    assert!(r.properties()[end..].iter().all(|&b| b == 0));
}

#[test]
fn probe_with_a_short_properties_buffer_is_inval_and_writes_no_property() {
    let (_daemon, mut d) = setup(&[]);
    let size = d.config().probe_size as usize;
    for short in [size - 4, 24, 0] {
        let r = d.run(&Request::probe(3, short));
        r.expect(
            INVAL,
            &format!("PROBE with a {short}-byte buffer (probe_size {size})"),
        );
        // "SHOULD NOT write any property": the area is left alone or zeroed (an empty list).
        let p = r.properties();
        let sentinel = vhost_user_iommu_tests::device::SENTINEL;
        assert!(
            p.iter().all(|&b| b == sentinel) || p.iter().all(|&b| b == 0),
            "no property may be written into a short buffer ({short} bytes): {:02x?}",
            &p[..p.len().min(32)]
        );
    }
}

#[test]
fn probe_is_not_answered_when_probe_is_not_negotiated() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&Options {
        features: Some(feature::MODERN & !feature::PROBE),
        ..Options::default()
    });
    assert_eq!(d.acked & feature::PROBE, 0);
    let r = d.run(&Request::probe(3, 512));
    assert_eq!(r.used_len, 0, "PROBE without F_PROBE: used length 0");
    assert!(r.untouched(), "PROBE without F_PROBE: nothing written");
    assert_eq!(d.attach(1, 3), OK);
}

// ---------------------------------------------------------------- second memory region

#[test]
fn requests_in_the_high_memory_region() {
    let (daemon, mut d) = setup(&[]);
    d.buf_region = 1;
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x10000, 0x10fff, 0x1_0000_0000, RW), OK);
    let size = d.config().probe_size as usize;
    d.run(&Request::probe(3, size))
        .expect(OK, "PROBE in the high region");
    assert_eq!(daemon.ctl().mappings(1).unwrap().len(), 1);
}

#[test]
fn map_beyond_the_mapping_limit_is_nomem() {
    let (daemon, mut d) = setup(&["--max-mappings", "3"]);
    assert_eq!(d.attach(1, 3), OK);
    for i in 0..3u64 {
        assert_eq!(d.map(1, i * PAGE, i * PAGE + 0xfff, 0, RW), OK);
    }
    d.run(&Request::map(1, 3 * PAGE, 3 * PAGE + 0xfff, 0, RW))
        .expect(
            vhost_user_iommu_tests::proto::status::NOMEM,
            "MAP past --max-mappings",
        );
    assert_eq!(daemon.ctl().mappings(1).unwrap().len(), 3);
    // Room again after an UNMAP.
    assert_eq!(d.unmap(1, 0, 0xfff), OK);
    assert_eq!(d.map(1, 3 * PAGE, 3 * PAGE + 0xfff, 0, RW), OK);
}

#[test]
fn probe_size_flag_and_no_reserved_regions() {
    // Without the PASID extension (its PROBE properties need more than 64 bytes).
    let (_daemon, mut d) = setup(&[
        "--probe-size",
        "64",
        "--reserved-region",
        "none",
        "--pasid-bits",
        "0",
    ]);
    assert_eq!(d.config().probe_size, 64);
    let r = d.run(&Request::probe(3, 64));
    r.expect(OK, "PROBE");
    assert_eq!(
        r.properties(),
        &[0u8; 64][..],
        "no regions: an all-zero properties buffer"
    );
    d.run(&Request::probe(3, 60))
        .expect(INVAL, "PROBE with 60 < probe_size 64");
}

#[test]
fn probe_size_too_small_for_the_regions_is_refused_at_start() {
    let (st, err) = vhost_user_iommu_tests::daemon::run_to_exit(
        &[
            "--socket",
            "/tmp/vuiommu-never-created.sock",
            "--probe-size",
            "20",
        ],
        std::time::Duration::from_secs(10),
    );
    let st = st.expect("daemon did not exit");
    assert!(
        !st.success(),
        "probe_size 20 cannot hold the 24-byte MSI property: {st}"
    );
    assert!(err.contains("probe-size"), "{err}");
}

// ---------------------------------------------------------------- edges of the number ranges

#[test]
fn map_at_the_top_of_the_address_space() {
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    assert_eq!(
        d.attach(u32::MAX, u32::MAX),
        OK,
        "largest domain and endpoint ids"
    );
    // virt_end + 1 wraps to 0, which is aligned.
    d.run(&Request::map(
        u32::MAX,
        0xffff_ffff_ffff_f000,
        u64::MAX,
        0x1000,
        RW,
    ))
    .expect(OK, "MAP of the last page");
    assert_eq!(
        outcome(&ctl.translate(u32::MAX, u64::MAX - 0xf, "r")),
        translated(0x1ff0)
    );
    d.run(&Request::unmap(u32::MAX, 0xffff_ffff_ffff_f000, u64::MAX))
        .expect(OK, "UNMAP of the last page");
    assert_eq!(ctl.mappings(u32::MAX).unwrap(), vec![]);
}

#[test]
fn one_mapping_covering_the_whole_address_space() {
    let (daemon, mut d) = setup(&["--reserved-region", "none"]);
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    d.run(&Request::map(1, 0, u64::MAX, 0, RW))
        .expect(OK, "MAP [0, 2^64-1]");
    assert_eq!(
        outcome(&ctl.translate(3, 0x1234_5678, "rw")),
        translated(0x1234_5678)
    );
    assert_eq!(
        outcome(&ctl.translate(3, u64::MAX, "r")),
        translated(u64::MAX)
    );
    d.run(&Request::map(1, 0x1000, 0x1fff, 0, RW))
        .expect(INVAL, "MAP inside the whole-space mapping");
    d.run(&Request::unmap(1, 0, 0xfff))
        .expect(RANGE, "UNMAP of one page of the whole-space mapping");
    d.run(&Request::unmap(1, 0x1000, u64::MAX))
        .expect(RANGE, "UNMAP of all but the first page");
    assert_eq!(ctl.mappings(1).unwrap().len(), 1);
    d.run(&Request::unmap(1, 0, u64::MAX))
        .expect(OK, "UNMAP [0, 2^64-1]");
    assert_eq!(ctl.mappings(1).unwrap(), vec![]);
}

#[test]
fn inverted_ranges_change_nothing() {
    let (mut daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0, RW), OK);
    let st = d.map(1, 0x4000, 0x2fff, 0, RW);
    assert_ne!(st, OK, "MAP with virt_end < virt_start");
    let _ = d.unmap(1, 0x2000, 0xfff);
    let m = ctl.mappings(1).unwrap();
    assert_eq!(
        m.len(),
        1,
        "an inverted UNMAP must not remove anything: {m:?}"
    );
    daemon.assert_alive();
}

#[test]
fn physical_address_wrap_does_not_crash_the_daemon() {
    let (mut daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(1, 3), OK);
    // phys_start + size wraps past 2^64. Whether the MAP is refused is not specified, but a
    // translation through it must neither crash the daemon nor produce an address outside
    // the mapping's own arithmetic.
    let st = d.map(1, 0x10000, 0x1ffff, 0xffff_ffff_ffff_8000, RW);
    let t = ctl.request(&Ctl::translate(3, 0x1f000, Access::Read));
    daemon.assert_alive();
    if st == OK {
        let t = t.expect("translate after a wrapping MAP");
        assert_ne!(t["outcome"].as_str(), Some("bypass"), "{t}");
    }
    assert_eq!(d.attach(2, 4), OK);
    ctl.status();
}

#[test]
fn endpoint_lists() {
    let (_daemon, mut d) = setup(&["--endpoints", "0-3,7,0x100-0x101"]);
    for ep in [0, 3, 7, 0x100, 0x101] {
        assert_eq!(d.attach(1, ep), OK, "endpoint {ep} exists");
    }
    for ep in [4, 6, 8, 0xff, 0x102, u32::MAX] {
        assert_eq!(d.attach(1, ep), NOENT, "endpoint {ep} does not exist");
    }
}

#[test]
fn counters_follow_request_statuses() {
    let (daemon, mut d) = setup(&[]);
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.attach(1, 4), OK);
    d.run(&Request::attach(1, 5, 1 << 9))
        .expect(INVAL, "bad flags");
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0, RW), OK);
    assert_eq!(d.map(1, 0x1800, 0x2fff, 0, RW), RANGE);
    assert_eq!(d.unmap(9, 0, 0xfff), NOENT);
    let c = daemon.ctl().counters();
    let r = &c["requests"];
    assert_eq!(r["attach"]["ok"].as_u64(), Some(2), "{c}");
    assert_eq!(r["attach"]["inval"].as_u64(), Some(1), "{c}");
    assert_eq!(r["map"]["ok"].as_u64(), Some(1), "{c}");
    assert_eq!(r["map"]["range"].as_u64(), Some(1), "{c}");
    assert_eq!(r["unmap"]["noent"].as_u64(), Some(1), "{c}");
}

#[test]
fn memory_table_replaced_mid_session() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&Options {
        high_size: 0,
        ..Options::default()
    });
    assert_eq!(d.attach(1, 3), OK);
    let i = d
        .hotplug_region(0x2_0000_0000, 1 << 20)
        .expect("SET_MEM_TABLE with a new region");
    d.buf_region = i;
    assert_eq!(d.map(1, 0x10000, 0x10fff, 0x2_0000_0000, RW), OK);
    d.post_event_buffers(1, vhost_user_iommu_tests::proto::FAULT_RECORD_LEN);
    daemon.ctl().translate(3, 0x50000, "r");
    let (_, rec) = d
        .wait_fault(std::time::Duration::from_secs(5))
        .expect("fault record in the hot-plugged region");
    assert_eq!(rec.address, 0x50000);
    d.buf_region = 0;
    assert_eq!(d.attach(2, 4), OK);
}

#[test]
fn probe_buffer_used_length_and_a_domain_recreated_as_bypass() {
    let (daemon, mut d) = setup(&[]);
    let size = d.config().probe_size as usize;
    let r = d.run(&Request::probe(3, size));
    r.expect(OK, "PROBE");
    assert_eq!(
        r.used_len as usize,
        size + 4,
        "PROBE writes the whole properties buffer (zero fill) and the tail"
    );
    // A destroyed domain's id can come back as a bypass domain.
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.detach(1, 3), OK);
    d.run(&Request::attach(1, 3, ATTACH_F_BYPASS))
        .expect(OK, "re-create domain 1 as a bypass domain");
    assert_eq!(
        daemon.ctl().domain(1).unwrap()["bypass"].as_bool(),
        Some(true)
    );
}

// ---------------------------------------------------------------- reserved fields the device MUST ignore

#[test]
fn head_reserved_bytes_are_ignored() {
    // struct virtio_iommu_req_head: "The device MUST ignore field reserved".
    let (daemon, mut d) = setup(&[]);
    let mut ctl = daemon.ctl();
    d.run(&Request::attach(1, 3, 0).with_byte(1, 0xff).with_byte(3, 1))
        .expect(OK, "ATTACH with non-zero head reserved bytes");
    assert_eq!(ctl.endpoint_domain(3), Some(1));
    d.run(&Request::map(1, 0x1000, 0x1fff, 0, RW).with_byte(2, 7))
        .expect(OK, "MAP with non-zero head reserved bytes");
    d.run(&Request::unmap(1, 0x1000, 0x1fff).with_byte(1, 1))
        .expect(OK, "UNMAP with non-zero head reserved bytes");
    d.run(&Request::detach(1, 3).with_byte(3, 0x80))
        .expect(OK, "DETACH with non-zero head reserved bytes");
}

#[test]
fn probe_reserved_bytes_are_ignored() {
    // "The device MUST ignore field reserved of a PROBE request."
    let (_daemon, mut d) = setup(&[]);
    let size = d.config().probe_size as usize;
    let mut probe = Request::probe(3, size);
    for b in &mut probe.readable[8..72] {
        *b = 0x5a;
    }
    let r = d.run(&probe);
    r.expect(OK, "PROBE with non-zero reserved[64]");
    assert!(!parse_properties(r.properties()).0.is_empty());
}

#[test]
fn detach_reserved_bytes_are_ignored() {
    // DETACH: "The device MUST ignore reserved."
    let (daemon, mut d) = setup(&[]);
    assert_eq!(d.attach(1, 3), OK);
    let mut detach = Request::detach(1, 3);
    for b in &mut detach.readable[12..20] {
        *b = 0xee;
    }
    d.run(&detach)
        .expect(OK, "DETACH with non-zero reserved[8]");
    assert_eq!(
        daemon.ctl().endpoint_domain(3),
        None,
        "the DETACH must have been performed"
    );
}
