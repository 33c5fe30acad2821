//! Table-driven tests of the device model against the normative rules of the virtio-iommu
//! specification (§1 of ../shared/reference/virtio-iommu.md). Requests are built as raw bytes,
//! exactly as a driver lays them out.

use super::*;
use crate::config::{DeviceConfig, EndpointSet, ReservedRegion};

const ALL_FEATURES: u64 = (1 << F_VERSION_1)
    | (1 << F_INPUT_RANGE)
    | (1 << F_DOMAIN_RANGE)
    | (1 << F_MAP_UNMAP)
    | (1 << F_PROBE)
    | (1 << F_MMIO)
    | (1 << F_BYPASS_CONFIG);

const R: u32 = MAP_F_READ;
const W: u32 = MAP_F_WRITE;
const RW: u32 = MAP_F_READ | MAP_F_WRITE;

pub(super) fn cfg() -> DeviceConfig {
    DeviceConfig {
        input_start: 0,
        input_end: (1 << 48) - 1,
        domain_start: 1,
        domain_end: 1000,
        endpoints: EndpointSet::Ranges(vec![(0, 15)]),
        ..DeviceConfig::default()
    }
}

fn dev() -> Device {
    let mut d = Device::new(cfg());
    d.set_acked_features(ALL_FEATURES);
    d
}

fn attach_req(domain: u32, ep: u32, flags: u32) -> Vec<u8> {
    let mut v = vec![T_ATTACH, 0, 0, 0];
    v.extend(domain.to_le_bytes());
    v.extend(ep.to_le_bytes());
    v.extend(flags.to_le_bytes());
    v.extend([0u8; 4]);
    v
}

fn detach_req(domain: u32, ep: u32) -> Vec<u8> {
    let mut v = vec![T_DETACH, 0, 0, 0];
    v.extend(domain.to_le_bytes());
    v.extend(ep.to_le_bytes());
    v.extend([0u8; 8]);
    v
}

fn map_req(domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Vec<u8> {
    let mut v = vec![T_MAP, 0, 0, 0];
    v.extend(domain.to_le_bytes());
    v.extend(start.to_le_bytes());
    v.extend(end.to_le_bytes());
    v.extend(phys.to_le_bytes());
    v.extend(flags.to_le_bytes());
    v
}

fn unmap_req(domain: u32, start: u64, end: u64) -> Vec<u8> {
    let mut v = vec![T_UNMAP, 0, 0, 0];
    v.extend(domain.to_le_bytes());
    v.extend(start.to_le_bytes());
    v.extend(end.to_le_bytes());
    v.extend([0u8; 4]);
    v
}

fn probe_req(ep: u32) -> Vec<u8> {
    let mut v = vec![T_PROBE, 0, 0, 0];
    v.extend(ep.to_le_bytes());
    v.extend([0u8; 64]);
    v
}

fn send(d: &mut Device, req: &[u8]) -> Reply {
    let mut props = [];
    d.handle_request(req, &mut props)
}

fn ok(d: &mut Device, req: &[u8]) {
    assert_eq!(
        send(d, req),
        Reply::Status(Status::Ok),
        "setup request {req:?}"
    );
}

fn mappings(d: &Device, domain: u32) -> Vec<(u64, u64)> {
    d.domain_mappings(domain)
        .map(|t| t.iter().map(|m| (m.virt_start, m.virt_end)).collect())
        .unwrap_or_default()
}

fn with_byte(mut v: Vec<u8>, at: usize, b: u8) -> Vec<u8> {
    v[at] = b;
    v
}

/// One row: what to set up, what to send, the status expected.
struct Case {
    rule: &'static str,
    setup: Vec<Vec<u8>>,
    req: Vec<u8>,
    want: Status,
}

fn case(rule: &'static str, setup: Vec<Vec<u8>>, req: Vec<u8>, want: Status) -> Case {
    Case {
        rule,
        setup,
        req,
        want,
    }
}

#[test]
fn status_of_every_rule() {
    use Status::*;
    let a = |d, e| attach_req(d, e, 0);
    let cases = vec![
        // ATTACH
        case("attach: ok", vec![], a(1, 0), Ok),
        case(
            "attach: reserved non-zero -> INVAL",
            vec![],
            with_byte(a(1, 0), 16, 1),
            Inval,
        ),
        case(
            "attach: reserved last byte -> INVAL",
            vec![],
            with_byte(a(1, 0), 19, 0x80),
            Inval,
        ),
        case(
            "attach: unknown flag -> INVAL",
            vec![],
            attach_req(1, 0, 1 << 1),
            Inval,
        ),
        case("attach: unknown endpoint -> NOENT", vec![], a(1, 16), NoEnt),
        case(
            "attach: domain outside domain_range -> RANGE",
            vec![],
            a(1001, 0),
            Range,
        ),
        case(
            "attach: domain 0 below domain_range -> RANGE",
            vec![],
            a(0, 0),
            Range,
        ),
        case(
            "attach: second endpoint to a domain",
            vec![a(1, 0)],
            a(1, 1),
            Ok,
        ),
        case(
            "attach: same domain again is a no-op",
            vec![a(1, 0)],
            a(1, 0),
            Ok,
        ),
        case(
            "attach: re-attach elsewhere (implicit detach)",
            vec![a(1, 0)],
            a(2, 0),
            Ok,
        ),
        case(
            "attach: BYPASS flag to a mapping domain -> INVAL",
            vec![a(1, 0)],
            attach_req(1, 1, ATTACH_F_BYPASS),
            Inval,
        ),
        case(
            "attach: no BYPASS flag to a bypass domain -> INVAL",
            vec![attach_req(1, 0, ATTACH_F_BYPASS)],
            a(1, 1),
            Inval,
        ),
        case(
            "attach: bypass domain",
            vec![],
            attach_req(1, 0, ATTACH_F_BYPASS),
            Ok,
        ),
        // DETACH
        case("detach: ok", vec![a(1, 0)], detach_req(1, 0), Ok),
        case(
            "detach: unknown endpoint -> NOENT",
            vec![a(1, 0)],
            detach_req(1, 99),
            NoEnt,
        ),
        case(
            "detach: no such domain -> INVAL",
            vec![a(1, 0)],
            detach_req(7, 0),
            Inval,
        ),
        case(
            "detach: wrong domain -> INVAL",
            vec![a(1, 0), a(2, 1)],
            detach_req(2, 0),
            Inval,
        ),
        case(
            "detach: endpoint not attached -> INVAL",
            vec![a(1, 0)],
            detach_req(1, 1),
            Inval,
        ),
        case(
            "detach: reserved is ignored (MUST)",
            vec![a(1, 0)],
            with_byte(detach_req(1, 0), 12, 1),
            Ok,
        ),
        case(
            "attach: head reserved is ignored (MUST)",
            vec![],
            with_byte(a(1, 0), 1, 0xff),
            Ok,
        ),
        // MAP
        case(
            "map: ok",
            vec![a(1, 0)],
            map_req(1, 0x1000, 0x1fff, 0x8000, RW),
            Ok,
        ),
        case(
            "map: read-only ok",
            vec![a(1, 0)],
            map_req(1, 0x1000, 0x1fff, 0x8000, R),
            Ok,
        ),
        case(
            "map: MMIO flag (negotiated) ok",
            vec![a(1, 0)],
            map_req(1, 0, 0xfff, 0, RW | MAP_F_MMIO),
            Ok,
        ),
        case(
            "map: unknown flag -> INVAL",
            vec![a(1, 0)],
            map_req(1, 0, 0xfff, 0, 1 << 3),
            Inval,
        ),
        case(
            "map: no such domain -> NOENT",
            vec![],
            map_req(1, 0, 0xfff, 0, RW),
            NoEnt,
        ),
        case(
            "map: domain outside domain_range -> RANGE",
            vec![],
            map_req(5000, 0, 0xfff, 0, RW),
            Range,
        ),
        case(
            "map: misaligned virt_start -> RANGE",
            vec![a(1, 0)],
            map_req(1, 0x800, 0x17ff, 0, RW),
            Range,
        ),
        case(
            "map: misaligned phys_start -> RANGE",
            vec![a(1, 0)],
            map_req(1, 0x1000, 0x1fff, 0x10, RW),
            Range,
        ),
        case(
            "map: misaligned virt_end+1 -> RANGE",
            vec![a(1, 0)],
            map_req(1, 0x1000, 0x1ffe, 0, RW),
            Range,
        ),
        case(
            "map: beyond input_range -> RANGE",
            vec![a(1, 0)],
            map_req(1, 1 << 48, (1 << 48) + 0xfff, 0, RW),
            Range,
        ),
        case(
            "map: straddles input_range end -> RANGE",
            vec![a(1, 0)],
            map_req(1, (1 << 48) - 0x1000, (1 << 48) + 0xfff, 0, RW),
            Range,
        ),
        case(
            "map: phys wraps around -> RANGE",
            vec![a(1, 0)],
            map_req(1, 0, 0x1fff, u64::MAX - 0xfff, RW),
            Range,
        ),
        case(
            "map: inverted range -> INVAL",
            vec![a(1, 0)],
            map_req(1, 0x2000, 0xfff, 0, RW),
            Inval,
        ),
        case(
            "map: overlap -> INVAL",
            vec![a(1, 0), map_req(1, 0x1000, 0x2fff, 0, RW)],
            map_req(1, 0x2000, 0x3fff, 0, RW),
            Inval,
        ),
        case(
            "map: overlap, same range -> INVAL",
            vec![a(1, 0), map_req(1, 0x1000, 0x2fff, 0, RW)],
            map_req(1, 0x1000, 0x2fff, 0, RW),
            Inval,
        ),
        case(
            "map: adjacent is fine",
            vec![a(1, 0), map_req(1, 0x1000, 0x2fff, 0, RW)],
            map_req(1, 0x3000, 0x3fff, 0, RW),
            Ok,
        ),
        case(
            "map: bypass domain -> INVAL",
            vec![attach_req(1, 0, ATTACH_F_BYPASS)],
            map_req(1, 0, 0xfff, 0, RW),
            Inval,
        ),
        case(
            "map: overlaps the MSI reserved region -> INVAL",
            vec![a(1, 0)],
            map_req(1, 0xfee0_0000, 0xfee0_0fff, 0, RW),
            Inval,
        ),
        case(
            "map: covers the MSI reserved region -> INVAL",
            vec![a(1, 0)],
            map_req(1, 0, 0xffff_ffff, 0, RW),
            Inval,
        ),
        // UNMAP
        case(
            "unmap: spec example map(0,9) unmap(0,4) -> RANGE (as pages)",
            vec![a(1, 0), map_req(1, 0, 0x9fff, 0, RW)],
            unmap_req(1, 0, 0x4fff),
            Range,
        ),
        case(
            "unmap: spec example map(0,4) map(10,14) unmap(0,14) -> OK",
            vec![
                a(1, 0),
                map_req(1, 0, 0x4fff, 0, RW),
                map_req(1, 0xa000, 0xefff, 0, RW),
            ],
            unmap_req(1, 0, 0xefff),
            Ok,
        ),
        case(
            "unmap: nothing mapped is fine",
            vec![a(1, 0)],
            unmap_req(1, 0, u64::MAX),
            Ok,
        ),
        case(
            "unmap: no such domain -> NOENT",
            vec![],
            unmap_req(1, 0, 0xfff),
            NoEnt,
        ),
        case(
            "unmap: bypass domain -> INVAL",
            vec![attach_req(1, 0, ATTACH_F_BYPASS)],
            unmap_req(1, 0, 0xfff),
            Inval,
        ),
        case(
            "unmap: reserved non-zero -> INVAL",
            vec![a(1, 0)],
            with_byte(unmap_req(1, 0, 0xfff), 24, 1),
            Inval,
        ),
        case(
            "unmap: inverted range -> INVAL",
            vec![a(1, 0)],
            unmap_req(1, 0x2000, 0x1000),
            Inval,
        ),
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let mut d = dev();
        for s in &c.setup {
            ok(&mut d, s);
        }
        let got = send(&mut d, &c.req);
        if got != Reply::Status(c.want) {
            failures.push(format!("{}: got {got:?}, want {:?}", c.rule, c.want));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn failed_requests_change_nothing() {
    // Each refused request leaves endpoints, domains and mappings exactly as they were.
    let mut d = dev();
    ok(&mut d, &attach_req(1, 0, 0));
    ok(&mut d, &attach_req(2, 1, ATTACH_F_BYPASS));
    ok(&mut d, &map_req(1, 0, 0x9fff, 0x10000, RW));
    ok(&mut d, &map_req(1, 0x20000, 0x20fff, 0, R));
    let snapshot = |d: &Device| {
        (
            d.endpoint_list().collect::<Vec<_>>(),
            d.domain_list().collect::<Vec<_>>(),
            mappings(d, 1),
            d.total_mappings(),
        )
    };
    let before = snapshot(&d);
    for bad in [
        unmap_req(1, 0, 0x4fff),                            // split
        unmap_req(1, 0x5000, 0x20fff),                      // split at the start
        map_req(1, 0x8000, 0xafff, 0, RW),                  // overlap
        attach_req(2, 0, 0),                                // bypass mismatch: 0 stays in 1
        attach_req(1, 0, 1 << 5),                           // unknown flag
        with_byte(attach_req(3, 0, 0), 17, 1),              // reserved: no implicit detach
        detach_req(2, 0),                                   // wrong domain
        map_req(2, 0, 0xfff, 0, RW),                        // bypass domain
        map_req(1, 0x40000, 0x40fff, 0, RW)[..30].to_vec(), // truncated: not parsed
    ] {
        assert!(!matches!(send(&mut d, &bad), Reply::Status(Status::Ok)));
        assert_eq!(snapshot(&d), before, "after {bad:?}");
    }
}

#[test]
fn unmap_removes_whole_mappings_across_gaps() {
    let mut d = dev();
    ok(&mut d, &attach_req(1, 0, 0));
    for i in 0..8u64 {
        ok(&mut d, &map_req(1, i * 0x4000, i * 0x4000 + 0xfff, 0, RW));
    }
    ok(&mut d, &unmap_req(1, 0x4000, 0x13fff));
    assert_eq!(
        mappings(&d, 1),
        vec![
            (0, 0xfff),
            (0x14000, 0x14fff),
            (0x18000, 0x18fff),
            (0x1c000, 0x1cfff)
        ]
    );
    assert_eq!(d.total_mappings(), 4);
}

#[test]
fn implicit_detach_on_reattach_and_domain_lifetime() {
    let mut d = dev();
    ok(&mut d, &attach_req(1, 0, 0));
    ok(&mut d, &map_req(1, 0x1000, 0x1fff, 0, RW));
    // Endpoint 0 moves to domain 2: domain 1 had no other endpoint, so it ends with its mappings.
    ok(&mut d, &attach_req(2, 0, 0));
    assert!(d.domain_mappings(1).is_none());
    assert_eq!(d.total_mappings(), 0);
    // Re-creating domain 1 finds it empty.
    ok(&mut d, &attach_req(1, 1, 0));
    assert!(mappings(&d, 1).is_empty());
    // A domain with two endpoints lives until the last one leaves.
    ok(&mut d, &attach_req(1, 2, 0));
    ok(&mut d, &map_req(1, 0x1000, 0x1fff, 0, RW));
    ok(&mut d, &detach_req(1, 1));
    assert_eq!(mappings(&d, 1), vec![(0x1000, 0x1fff)]);
    ok(&mut d, &detach_req(1, 2));
    assert!(d.domain_mappings(1).is_none());
    // The endpoint stays known after DETACH (it is not deleted, unlike QEMU's device).
    assert!(d.endpoint_list().any(|(e, dom)| e == 2 && dom.is_none()));
}

#[test]
fn detached_endpoint_cannot_reach_mappings() {
    let mut d = dev();
    ok(&mut d, &attach_req(1, 0, 0));
    ok(&mut d, &attach_req(1, 1, 0));
    ok(&mut d, &map_req(1, 0x1000, 0x1fff, 0x5000, RW));
    assert!(matches!(
        d.translate(0, 0x1234, Access::Read),
        Ok(Translation::Translated { phys: 0x5234, .. })
    ));
    ok(&mut d, &detach_req(1, 0));
    assert_eq!(
        d.translate(0, 0x1234, Access::Read),
        Ok(Translation::Fault {
            reason: FaultReason::Domain
        })
    );
    // The other endpoint still translates.
    assert!(matches!(
        d.translate(1, 0x1234, Access::Read),
        Ok(Translation::Translated { .. })
    ));
}

#[test]
fn unknown_types_and_short_buffers_are_ignored() {
    let mut d = dev();
    for req in [
        vec![],
        vec![0u8],
        vec![0, 0, 0, 0],
        vec![9, 0, 0, 0, 1, 2, 3],
        vec![0xff; 40],
        // Known types too small for their layout cannot be parsed: returned unwritten.
        vec![T_ATTACH, 0, 0, 0],
        map_req(1, 0, 0xfff, 0, RW)[..30].to_vec(),
        probe_req(0)[..71].to_vec(),
    ] {
        assert_eq!(send(&mut d, &req), Reply::Ignore, "{req:?}");
    }
    // PROBE when PROBE was not negotiated: not recognised.
    let mut d = Device::new(cfg());
    d.set_acked_features(ALL_FEATURES & !(1 << F_PROBE));
    let mut props = vec![0u8; 512];
    assert_eq!(d.handle_request(&probe_req(0), &mut props), Reply::Ignore);
    assert!(props.iter().all(|&b| b == 0));
    assert_eq!(d.stats().ignored, 1);
}

#[test]
fn probe_reports_reserved_regions_and_zero_fills() {
    let mut d = Device::new(DeviceConfig {
        reserved: vec![
            crate::config::X86_MSI_REGION,
            ReservedRegion {
                start: 0x1_0000_0000,
                end: 0x1_0fff_ffff,
                subtype: RESV_MEM_T_RESERVED,
            },
        ],
        ..cfg()
    });
    d.set_acked_features(ALL_FEATURES);
    let mut props = vec![0xaau8; 512];
    // The transport zero-fills before the device writes.
    props.fill(0);
    assert_eq!(
        d.handle_request(&probe_req(3), &mut props),
        Reply::Status(Status::Ok)
    );
    let prop = |i: usize| &props[i * 24..(i + 1) * 24];
    let p0 = prop(0);
    assert_eq!(u16::from_le_bytes([p0[0], p0[1]]), PROBE_T_RESV_MEM);
    assert_eq!(u16::from_le_bytes([p0[2], p0[3]]), 20);
    assert_eq!(p0[4], RESV_MEM_T_MSI);
    assert_eq!(&p0[5..8], &[0, 0, 0]);
    assert_eq!(
        u64::from_le_bytes(p0[8..16].try_into().unwrap()),
        0xfee0_0000
    );
    assert_eq!(
        u64::from_le_bytes(p0[16..24].try_into().unwrap()),
        0xfeef_ffff
    );
    let p1 = prop(1);
    assert_eq!(p1[4], RESV_MEM_T_RESERVED);
    assert_eq!(
        u64::from_le_bytes(p1[8..16].try_into().unwrap()),
        0x1_0000_0000
    );
    assert!(
        props[48..].iter().all(|&b| b == 0),
        "zero fill after the last property"
    );
    // The probed endpoint is now known.
    assert!(d.endpoint_list().any(|(e, dom)| e == 3 && dom.is_none()));

    // Reserved bytes are ignored (MUST). Errors: unknown endpoint, a properties buffer
    // smaller than probe_size.
    let mut props = vec![0u8; 512];
    assert_eq!(
        d.handle_request(&with_byte(probe_req(1), 40, 1), &mut props),
        Reply::Status(Status::Ok)
    );
    let mut props = vec![0u8; 512];
    assert_eq!(
        d.handle_request(&probe_req(99), &mut props),
        Reply::Status(Status::NoEnt)
    );
    let mut small = vec![0u8; 511];
    assert_eq!(
        d.handle_request(&probe_req(1), &mut small),
        Reply::Status(Status::Inval)
    );
    assert!(
        small.iter().all(|&b| b == 0),
        "no property written on INVAL"
    );
}

#[test]
fn config_space_and_bypass_write() {
    let mut d = dev();
    let c = d.config_space();
    assert_eq!(c.page_size_mask.get(), !0xfff);
    assert_eq!(c.input_end.get(), (1 << 48) - 1);
    assert_eq!((c.domain_start.get(), c.domain_end.get()), (1, 1000));
    assert_eq!(c.probe_size.get(), 512);
    assert_eq!(c.bypass, 0);
    assert!(d.write_config(CONFIG_BYPASS_OFFSET, &[1]));
    assert_eq!(d.config_space().bypass, 1);
    // Only 0/1 at offset 36, one byte; everything else is read-only.
    assert!(!d.write_config(CONFIG_BYPASS_OFFSET, &[2]));
    assert!(!d.write_config(0, &[0; 8]));
    assert!(!d.write_config(CONFIG_BYPASS_OFFSET, &[1, 0]));
    assert_eq!(d.config_space().bypass, 1);
    // bypass survives a device reset, not a new connection.
    d.reset(true);
    assert_eq!(d.bypass(), 1);
    d.reset(false);
    assert_eq!(d.bypass(), 0);
    // With legacy BYPASS offered, BYPASS_CONFIG is not, and bypass is read-only.
    let mut legacy = Device::new(DeviceConfig {
        legacy_bypass: true,
        ..cfg()
    });
    assert_eq!(legacy.features() & (1 << F_BYPASS_CONFIG), 0);
    assert_ne!(legacy.features() & (1 << F_BYPASS), 0);
    assert!(!legacy.write_config(CONFIG_BYPASS_OFFSET, &[1]));
}

#[test]
fn features_offered() {
    // The PASID extension's bits (docs/PASID.md) come with a non-zero PASID width.
    let ext = (1u64 << F_ATTACH_TABLE) | (1 << F_PAGE_REQUEST);
    let d = dev();
    assert_eq!(d.features(), ALL_FEATURES | ext);
    // Acked features are limited to what was offered.
    let mut d = Device::new(cfg());
    d.set_acked_features(u64::MAX);
    assert_eq!(d.acked_features(), Some(ALL_FEATURES | ext));
    let d = Device::new(DeviceConfig {
        pasid_bits: 0,
        ..cfg()
    });
    assert_eq!(d.features(), ALL_FEATURES);
}

#[test]
fn bypass_rules_for_unattached_endpoints() {
    use Translation::*;
    // Before negotiation, the boot value applies (firmware time).
    let mut d = Device::new(DeviceConfig {
        boot_bypass: true,
        ..cfg()
    });
    assert_eq!(
        d.translate(0, 0x1234, Access::Write),
        Ok(Bypass { phys: 0x1234 })
    );
    // BYPASS_CONFIG negotiated and bypass=1: bypass.
    d.set_acked_features(ALL_FEATURES);
    assert_eq!(
        d.translate(0, 0x1234, Access::Write),
        Ok(Bypass { phys: 0x1234 })
    );
    // Driver clears bypass: unattached endpoints fault (DOMAIN).
    assert!(d.write_config(CONFIG_BYPASS_OFFSET, &[0]));
    assert_eq!(
        d.translate(0, 0x1234, Access::Write),
        Ok(Fault {
            reason: FaultReason::Domain
        })
    );
    // BYPASS_CONFIG offered but not accepted by the driver: the config byte still applies.
    let mut d = Device::new(DeviceConfig {
        boot_bypass: true,
        ..cfg()
    });
    d.set_acked_features(ALL_FEATURES & !(1 << F_BYPASS_CONFIG));
    assert_eq!(d.translate(0, 9, Access::Read), Ok(Bypass { phys: 9 }));
    // ATTACH_F_BYPASS is an unknown flag without BYPASS_CONFIG.
    assert_eq!(
        send(&mut d, &attach_req(1, 0, ATTACH_F_BYPASS)),
        Reply::Status(Status::Inval)
    );
    // Legacy BYPASS offered: unattached endpoints bypass only once it is negotiated.
    let mut d = Device::new(DeviceConfig {
        legacy_bypass: true,
        boot_bypass: true,
        ..cfg()
    });
    assert!(matches!(
        d.translate(0, 0x42, Access::Read),
        Ok(Fault { .. })
    ));
    d.set_acked_features((ALL_FEATURES & !(1 << F_BYPASS_CONFIG)) | (1 << F_BYPASS));
    assert_eq!(
        d.translate(0, 0x42, Access::Read),
        Ok(Bypass { phys: 0x42 })
    );
    // Attached to a bypass domain: bypass whatever the config says.
    let mut d = dev();
    ok(&mut d, &attach_req(1, 0, ATTACH_F_BYPASS));
    assert_eq!(
        d.translate(0, 0x77, Access::Read),
        Ok(Bypass { phys: 0x77 })
    );
}

#[test]
fn translate_honours_permissions_and_records_faults() {
    let mut d = dev();
    ok(&mut d, &attach_req(1, 0, 0));
    ok(&mut d, &map_req(1, 0x1000, 0x1fff, 0x8000, R));
    ok(&mut d, &map_req(1, 0x2000, 0x2fff, 0x9000, W));
    assert!(matches!(
        d.translate(0, 0x1800, Access::Read),
        Ok(Translation::Translated { phys: 0x8800, .. })
    ));
    // Never allow writes without WRITE.
    assert_eq!(
        d.translate(0, 0x1800, Access::Write),
        Ok(Translation::Fault {
            reason: FaultReason::Mapping
        })
    );
    assert!(matches!(
        d.translate(0, 0x2000, Access::Write),
        Ok(Translation::Translated { phys: 0x9000, .. })
    ));
    assert!(matches!(
        d.translate(0, 0x2000, Access::ReadWrite),
        Ok(Translation::Fault { .. })
    ));
    assert!(matches!(
        d.translate(0, 0x3000, Access::Read),
        Ok(Translation::Fault { .. })
    ));
    assert_eq!(
        d.translate(16, 0, Access::Read),
        Err(TranslateError::UnknownEndpoint(16))
    );
    // Three faults queued as event records, in order, with reason, flags and address.
    let r = d.pop_event().unwrap().as_fault().unwrap();
    assert_eq!(r.reason, FAULT_R_MAPPING);
    assert_eq!(r.flags.get(), FAULT_F_WRITE | FAULT_F_ADDRESS);
    assert_eq!(r.endpoint.get(), 0);
    assert_eq!(r.address.get(), 0x1800);
    let r = d.pop_event().unwrap().as_fault().unwrap();
    assert_eq!(
        r.flags.get(),
        FAULT_F_READ | FAULT_F_WRITE | FAULT_F_ADDRESS
    );
    let ev = d.pop_event().unwrap();
    assert_eq!(ev.bytes().len(), FAULT_RECORD_SIZE);
    let r = ev.as_fault().unwrap();
    assert_eq!(
        (r.flags.get(), r.address.get()),
        (FAULT_F_READ | FAULT_F_ADDRESS, 0x3000)
    );
    assert!(d.pop_event().is_none());
    d.event_outcome(&ev, false);
    assert_eq!(d.stats().faults_dropped, 1);
    assert_eq!(d.fault_log().count(), 3);
}

#[test]
fn mapping_limit_gives_nomem() {
    let mut d = Device::new(DeviceConfig {
        max_mappings: 2,
        ..cfg()
    });
    d.set_acked_features(ALL_FEATURES);
    ok(&mut d, &attach_req(1, 0, 0));
    ok(&mut d, &map_req(1, 0x1000, 0x1fff, 0, RW));
    ok(&mut d, &map_req(1, 0x2000, 0x2fff, 0, RW));
    assert_eq!(
        send(&mut d, &map_req(1, 0x3000, 0x3fff, 0, RW)),
        Reply::Status(Status::NoMem)
    );
    ok(&mut d, &unmap_req(1, 0x1000, 0x1fff));
    ok(&mut d, &map_req(1, 0x3000, 0x3fff, 0, RW));
}

#[test]
fn mmio_flag_requires_the_feature() {
    let mut d = Device::new(cfg());
    d.set_acked_features(ALL_FEATURES & !(1 << F_MMIO));
    ok(&mut d, &attach_req(1, 0, 0));
    assert_eq!(
        send(&mut d, &map_req(1, 0, 0xfff, 0, RW | MAP_F_MMIO)),
        Reply::Status(Status::Inval)
    );
}

#[test]
fn reset_drops_guest_state() {
    let mut d = dev();
    ok(&mut d, &attach_req(1, 0, 0));
    ok(&mut d, &map_req(1, 0, 0xfff, 0, RW));
    let _ = d.translate(0, 0x5000, Access::Read);
    assert!(d.has_pending_events());
    d.reset(true);
    assert_eq!(d.domain_list().count(), 0);
    assert_eq!(d.endpoint_list().count(), 0);
    assert_eq!(d.total_mappings(), 0);
    assert!(!d.has_pending_events());
    assert_eq!(d.acked_features(), None);
}

#[test]
fn counters_per_type_and_status() {
    let mut d = dev();
    ok(&mut d, &attach_req(1, 0, 0));
    let _ = send(&mut d, &attach_req(1, 99, 0));
    let _ = send(&mut d, &map_req(1, 1, 0xfff, 0, RW));
    assert_eq!(
        d.stats().requests[usize::from(T_ATTACH)][Status::Ok as usize],
        1
    );
    assert_eq!(
        d.stats().requests[usize::from(T_ATTACH)][Status::NoEnt as usize],
        1
    );
    assert_eq!(
        d.stats().requests[usize::from(T_MAP)][Status::Range as usize],
        1
    );
}

#[test]
fn endpoint_and_pasid_records_are_bounded() {
    let mut d = Device::new(DeviceConfig {
        endpoints: EndpointSet::Any,
        ..cfg()
    });
    // Every feature offered, the PASID extension's included.
    let f = d.features();
    d.set_acked_features(f);
    let max = MAX_ENDPOINT_RECORDS as u32;
    for ep in 0..max {
        ok(&mut d, &attach_req(1, ep, 0));
    }
    // A new endpoint: NOMEM, nothing recorded; a known one still moves; PROBE of a new one is
    // answered but not recorded.
    assert_eq!(
        send(&mut d, &attach_req(2, max, 0)),
        Reply::Status(Status::NoMem)
    );
    assert_eq!(d.endpoint_list().count(), MAX_ENDPOINT_RECORDS);
    ok(&mut d, &attach_req(2, 0, 0));
    let mut props = vec![0u8; d.config().probe_size as usize];
    assert_eq!(
        d.handle_request(&probe_req(max + 1), &mut props),
        Reply::Status(Status::Ok)
    );
    assert_eq!(d.endpoint_list().count(), MAX_ENDPOINT_RECORDS);

    let pasid = |p: u32| {
        let b = PasidAttachBody {
            domain: 1.into(),
            endpoint: 1.into(),
            pasid: p.into(),
            reserved: [0; 8],
        };
        let mut v = vec![T_ATTACH_PASID, 0, 0, 0];
        v.extend_from_slice(zerocopy::IntoBytes::as_bytes(&b));
        v
    };
    for p in 0..MAX_PASID_ATTACHMENTS as u32 {
        ok(&mut d, &pasid(p));
    }
    assert_eq!(
        send(&mut d, &pasid(MAX_PASID_ATTACHMENTS as u32)),
        Reply::Status(Status::NoMem)
    );
    // Re-attaching a pair that exists is no new record.
    ok(&mut d, &pasid(7));
}
