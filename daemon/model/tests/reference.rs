//! Model-based property test: random request sequences (valid and invalid) run against the
//! device and against a small reference model of the virtio-iommu rules written here from the
//! specification and docs/DEVICE.md. Nothing is shared with the daemon but its public entry
//! points: requests are encoded by hand, statuses are the specification's numbers, and the
//! model keeps a plain list of mappings per domain and a map of endpoints.
//!
//! Both must agree on the status of every request (or on returning it unwritten) and, after
//! every request, on the endpoints, the domains (bypass kind, endpoints) and each domain's
//! mapping table.

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use vhost_user_iommu_model::config::{DeviceConfig, EndpointSet, ReservedRegion};
use vhost_user_iommu_model::device::{Device, Reply};

// --- The specification's numbers ------------------------------------------------------------

const OK: u8 = 0;
const INVAL: u8 = 4;
const RANGE: u8 = 5;
const NOENT: u8 = 6;
const NOMEM: u8 = 8;

const F_INPUT_RANGE: u32 = 0;
const F_DOMAIN_RANGE: u32 = 1;
const F_MAP_UNMAP: u32 = 2;
const F_PROBE: u32 = 4;
const F_MMIO: u32 = 5;
const F_BYPASS_CONFIG: u32 = 6;
const F_VERSION_1: u32 = 32;

const ATTACH_F_BYPASS: u32 = 1;
const MAP_F_READ: u32 = 1;
const MAP_F_WRITE: u32 = 2;
const MAP_F_MMIO: u32 = 4;

// --- The configuration both sides use -------------------------------------------------------

/// 4 KiB pages; IOVAs 0x1000..=0x2f_ffff may be mapped; endpoints 0..=7 exist (8, 9 do not);
/// domains 1..=6 are in range (0 and 7 are not); one reserved region; few mappings allowed.
const G: u64 = 0x1000;
const INPUT: (u64, u64) = (0x1000, 0x2f_ffff);
const ENDPOINTS: (u32, u32) = (0, 7);
const DOMAINS: (u32, u32) = (1, 6);
const RESERVED: (u64, u64) = (0x2_0000, 0x2_0fff);
const PROBE_SIZE: u32 = 64;

fn device_config(max_mappings: u64) -> DeviceConfig {
    DeviceConfig {
        page_size_mask: !(G - 1),
        input_start: INPUT.0,
        input_end: INPUT.1,
        domain_start: DOMAINS.0,
        domain_end: DOMAINS.1,
        endpoints: EndpointSet::Ranges(vec![ENDPOINTS]),
        reserved: vec![ReservedRegion {
            start: RESERVED.0,
            end: RESERVED.1,
            subtype: 0,
        }],
        probe_size: PROBE_SIZE,
        boot_bypass: false,
        legacy_bypass: false,
        max_mappings,
        // The PASID extension is not part of this model.
        pasid_bits: 0,
    }
}

// --- Requests -------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Req {
    Attach {
        domain: u32,
        endpoint: u32,
        flags: u32,
        reserved: [u8; 4],
    },
    Detach {
        domain: u32,
        endpoint: u32,
        reserved: [u8; 8],
    },
    Map {
        domain: u32,
        start: u64,
        end: u64,
        phys: u64,
        flags: u32,
    },
    Unmap {
        domain: u32,
        start: u64,
        end: u64,
        reserved: [u8; 4],
    },
    Probe {
        endpoint: u32,
        props: usize,
    },
}

/// A request as the driver puts it in the buffer: garbage in the head's reserved bytes (which
/// the device ignores), maybe cut short (returned unwritten) or with extra bytes (ignored).
#[derive(Clone, Debug)]
struct Step {
    req: Req,
    head_reserved: [u8; 3],
    cut: Option<usize>,
    extra: Vec<u8>,
}

impl Req {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let (t, body): (u8, Vec<u8>) = match self {
            Req::Attach {
                domain,
                endpoint,
                flags,
                reserved,
            } => (
                1,
                [
                    &domain.to_le_bytes()[..],
                    &endpoint.to_le_bytes(),
                    &flags.to_le_bytes(),
                    reserved,
                ]
                .concat(),
            ),
            Req::Detach {
                domain,
                endpoint,
                reserved,
            } => (
                2,
                [&domain.to_le_bytes()[..], &endpoint.to_le_bytes(), reserved].concat(),
            ),
            Req::Map {
                domain,
                start,
                end,
                phys,
                flags,
            } => (
                3,
                [
                    &domain.to_le_bytes()[..],
                    &start.to_le_bytes(),
                    &end.to_le_bytes(),
                    &phys.to_le_bytes(),
                    &flags.to_le_bytes(),
                ]
                .concat(),
            ),
            Req::Unmap {
                domain,
                start,
                end,
                reserved,
            } => (
                4,
                [
                    &domain.to_le_bytes()[..],
                    &start.to_le_bytes(),
                    &end.to_le_bytes(),
                    reserved,
                ]
                .concat(),
            ),
            Req::Probe { endpoint, .. } => (5, [&endpoint.to_le_bytes()[..], &[0; 64]].concat()),
        };
        b.push(t);
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&body);
        b
    }

    fn props(&self) -> usize {
        match self {
            Req::Probe { props, .. } => *props,
            _ => 0,
        }
    }
}

// --- The reference model ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct M {
    start: u64,
    end: u64,
    phys: u64,
    flags: u32,
}

#[derive(Debug, Default)]
struct Dom {
    bypass: bool,
    endpoints: Vec<u32>,
    maps: Vec<M>,
}

#[derive(Debug)]
struct Model {
    max_mappings: usize,
    mmio: bool,
    bypass_config: bool,
    /// Endpoints the driver has used (attached or probed), with their domain.
    endpoints: BTreeMap<u32, Option<u32>>,
    domains: BTreeMap<u32, Dom>,
}

fn exists(ep: u32) -> bool {
    (ENDPOINTS.0..=ENDPOINTS.1).contains(&ep)
}

fn in_range(domain: u32) -> bool {
    (DOMAINS.0..=DOMAINS.1).contains(&domain)
}

fn intersects(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

impl Model {
    /// `None`: the request is returned unwritten.
    fn apply(&mut self, step: &Step) -> Option<u8> {
        let full = step.req.encode().len();
        if step.cut.is_some_and(|c| c < full) {
            return None;
        }
        Some(match step.req {
            Req::Attach {
                domain,
                endpoint,
                flags,
                reserved,
            } => self.attach(domain, endpoint, flags, reserved),
            Req::Detach {
                domain, endpoint, ..
            } => self.detach(domain, endpoint),
            Req::Map {
                domain,
                start,
                end,
                phys,
                flags,
            } => self.map(domain, start, end, phys, flags),
            Req::Unmap {
                domain,
                start,
                end,
                reserved,
            } => self.unmap(domain, start, end, reserved),
            Req::Probe { endpoint, props } => {
                if !exists(endpoint) {
                    NOENT
                } else if props < PROBE_SIZE as usize {
                    INVAL
                } else {
                    self.endpoints.entry(endpoint).or_insert(None);
                    OK
                }
            }
        })
    }

    fn leave(&mut self, endpoint: u32) {
        if let Some(Some(old)) = self.endpoints.insert(endpoint, None) {
            let d = self.domains.get_mut(&old).unwrap();
            d.endpoints.retain(|&e| e != endpoint);
            if d.endpoints.is_empty() {
                // The last endpoint left: the domain ends, with its mappings.
                self.domains.remove(&old);
            }
        }
    }

    fn attach(&mut self, domain: u32, endpoint: u32, flags: u32, reserved: [u8; 4]) -> u8 {
        let known = if self.bypass_config {
            ATTACH_F_BYPASS
        } else {
            0
        };
        if reserved != [0; 4] || flags & !known != 0 {
            return INVAL;
        }
        if !exists(endpoint) {
            return NOENT;
        }
        if !in_range(domain) {
            return RANGE;
        }
        let bypass = flags & ATTACH_F_BYPASS != 0;
        if self
            .domains
            .get(&domain)
            .is_some_and(|d| d.bypass != bypass)
        {
            return INVAL;
        }
        if self.endpoints.get(&endpoint) == Some(&Some(domain)) {
            return OK;
        }
        self.leave(endpoint);
        let d = self.domains.entry(domain).or_insert_with(|| Dom {
            bypass,
            ..Dom::default()
        });
        d.endpoints.push(endpoint);
        self.endpoints.insert(endpoint, Some(domain));
        OK
    }

    fn detach(&mut self, domain: u32, endpoint: u32) -> u8 {
        if !exists(endpoint) {
            return NOENT;
        }
        if self.endpoints.get(&endpoint) != Some(&Some(domain)) {
            return INVAL;
        }
        self.leave(endpoint);
        OK
    }

    fn total(&self) -> usize {
        self.domains.values().map(|d| d.maps.len()).sum()
    }

    fn map(&mut self, domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> u8 {
        let mut known = MAP_F_READ | MAP_F_WRITE;
        if self.mmio {
            known |= MAP_F_MMIO;
        }
        if flags & !known != 0 {
            return INVAL;
        }
        if !in_range(domain) {
            return RANGE;
        }
        let total = self.total();
        let Some(d) = self.domains.get_mut(&domain) else {
            return NOENT;
        };
        if d.bypass || start > end {
            return INVAL;
        }
        // end + 1 may wrap to 0, which is aligned.
        let end_aligned = (u128::from(end) + 1).is_multiple_of(u128::from(G));
        if !start.is_multiple_of(G) || !phys.is_multiple_of(G) || !end_aligned {
            return RANGE;
        }
        if start < INPUT.0 || end > INPUT.1 {
            return RANGE;
        }
        if u128::from(phys) + u128::from(end - start) > u128::from(u64::MAX) {
            return RANGE;
        }
        if intersects((start, end), RESERVED) {
            return INVAL;
        }
        if total >= self.max_mappings {
            return NOMEM;
        }
        if d.maps
            .iter()
            .any(|m| intersects((start, end), (m.start, m.end)))
        {
            return INVAL;
        }
        d.maps.push(M {
            start,
            end,
            phys,
            flags,
        });
        OK
    }

    fn unmap(&mut self, domain: u32, start: u64, end: u64, reserved: [u8; 4]) -> u8 {
        if reserved != [0; 4] {
            return INVAL;
        }
        let Some(d) = self.domains.get_mut(&domain) else {
            return NOENT;
        };
        if d.bypass || start > end {
            return INVAL;
        }
        let inside = |m: &M| start <= m.start && m.end <= end;
        if d.maps
            .iter()
            .any(|m| intersects((start, end), (m.start, m.end)) && !inside(m))
        {
            return RANGE;
        }
        d.maps.retain(|m| !inside(m));
        OK
    }
}

// --- Strategies ---------------------------------------------------------------------------

fn domain() -> impl Strategy<Value = u32> {
    // 0 and 7 are outside the domain range; 1..=3 get most of the traffic.
    prop_oneof![6 => 1u32..=3, 2 => 0u32..=7, 1 => any::<u32>()]
}

fn endpoint() -> impl Strategy<Value = u32> {
    // 8 and 9 do not exist.
    prop_oneof![8 => 0u32..=3, 2 => 0u32..=9, 1 => any::<u32>()]
}

/// Addresses on a small grid, so mappings collide, with misalignment and extremes mixed in.
fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        10 => (0u64..48).prop_map(|p| p * G),
        1 => (0u64..48, 1u64..G).prop_map(|(p, o)| p * G + o),
        1 => (0x2f0u64..0x310).prop_map(|p| p * G),
        1 => Just(u64::MAX - G + 1),
        1 => Just(0),
    ]
}

/// An inclusive range: usually page-aligned, 1..16 pages, sometimes odd or reversed.
fn range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        12 => (addr(), 1u64..16).prop_map(|(s, n)| (s, s.saturating_add(n * G) - 1)),
        1 => (addr(), 0u64..0x3000).prop_map(|(s, n)| (s, s.saturating_add(n))),
        1 => (addr(), addr()),
        1 => Just((0, u64::MAX)),
        1 => (addr()).prop_map(|s| (s, u64::MAX)),
    ]
}

fn phys() -> impl Strategy<Value = u64> {
    prop_oneof![
        10 => (0u64..0x10_0000).prop_map(|p| p * G),
        1 => any::<u64>(),
        1 => (1u64..8).prop_map(|p| u64::MAX - p * G + 1),
    ]
}

fn reserved<const N: usize>() -> impl Strategy<Value = [u8; N]> {
    prop_oneof![12 => Just([0u8; N]), 1 => any::<[u8; N]>()]
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        6 => (domain(), endpoint(), prop_oneof![8 => Just(0u32), 2 => Just(1u32), 1 => 0u32..8], reserved::<4>())
            .prop_map(|(domain, endpoint, flags, reserved)| Req::Attach { domain, endpoint, flags, reserved }),
        3 => (domain(), endpoint(), any::<[u8; 8]>())
            .prop_map(|(domain, endpoint, reserved)| Req::Detach { domain, endpoint, reserved }),
        12 => (domain(), range(), phys(), prop_oneof![8 => 1u32..4, 1 => 0u32..16])
            .prop_map(|(domain, (start, end), phys, flags)| Req::Map { domain, start, end, phys, flags }),
        6 => (domain(), range(), reserved::<4>())
            .prop_map(|(domain, (start, end), reserved)| Req::Unmap { domain, start, end, reserved }),
        1 => (endpoint(), prop_oneof![Just(PROBE_SIZE as usize), 0usize..96])
            .prop_map(|(endpoint, props)| Req::Probe { endpoint, props }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        req(),
        prop_oneof![8 => Just([0u8; 3]), 1 => any::<[u8; 3]>()],
        prop_oneof![20 => Just(None), 1 => (0usize..40).prop_map(Some)],
        prop_oneof![10 => Just(vec![]), 1 => prop::collection::vec(any::<u8>(), 1..8)],
    )
        .prop_map(|(req, head_reserved, cut, extra)| Step {
            req,
            head_reserved,
            cut,
            extra,
        })
}

// --- The comparison -------------------------------------------------------------------------

fn run(steps: &[Step], max_mappings: u64, mmio: bool, bypass_config: bool) {
    let mut dev = Device::new(device_config(max_mappings));
    let mut acked = (1u64 << F_VERSION_1)
        | (1 << F_INPUT_RANGE)
        | (1 << F_DOMAIN_RANGE)
        | (1 << F_MAP_UNMAP)
        | (1 << F_PROBE);
    if mmio {
        acked |= 1 << F_MMIO;
    }
    if bypass_config {
        acked |= 1 << F_BYPASS_CONFIG;
    }
    dev.set_acked_features(acked);
    let mut model = Model {
        max_mappings: max_mappings as usize,
        mmio,
        bypass_config,
        endpoints: BTreeMap::new(),
        domains: BTreeMap::new(),
    };
    for (i, step) in steps.iter().enumerate() {
        let mut bytes = step.req.encode();
        bytes[1..4].copy_from_slice(&step.head_reserved);
        // Extra bytes follow a whole request only (after a cut they would refill its fields).
        match step.cut {
            Some(c) => bytes.truncate(c),
            None => bytes.extend_from_slice(&step.extra),
        }
        let mut props = vec![0u8; step.req.props()];
        let got = match dev.handle_request(&bytes, &mut props) {
            Reply::Ignore => None,
            Reply::Status(s) => Some(s as u8),
        };
        let want = model.apply(step);
        assert_eq!(got, want, "step {i}: {step:?}");
        compare(&dev, &model, i);
    }
}

fn compare(dev: &Device, model: &Model, i: usize) {
    let endpoints: BTreeMap<u32, Option<u32>> = dev.endpoint_list().collect();
    assert_eq!(endpoints, model.endpoints, "endpoints after step {i}");
    let domains: Vec<(u32, bool, Vec<u32>)> = dev
        .domain_list()
        .map(|(id, bypass, eps, _)| (id, bypass, eps))
        .collect();
    let want: Vec<(u32, bool, Vec<u32>)> = model
        .domains
        .iter()
        .map(|(id, d)| {
            let mut eps = d.endpoints.clone();
            eps.sort_unstable();
            (*id, d.bypass, eps)
        })
        .collect();
    assert_eq!(domains, want, "domains after step {i}");
    for (id, d) in &model.domains {
        let got: Vec<M> = dev
            .domain_mappings(*id)
            .expect("domain exists")
            .iter()
            .map(|m| M {
                start: m.virt_start,
                end: m.virt_end,
                phys: m.phys_start,
                flags: m.flags,
            })
            .collect();
        let mut want = d.maps.clone();
        want.sort_by_key(|m| m.start);
        assert_eq!(got, want, "mappings of domain {id} after step {i}");
    }
    assert_eq!(
        dev.total_mappings(),
        model.total() as u64,
        "total after step {i}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn device_agrees_with_the_model(
        steps in prop::collection::vec(step(), 1..120),
        max_mappings in 3u64..20,
        mmio in any::<bool>(),
        bypass_config in any::<bool>(),
    ) {
        run(&steps, max_mappings, mmio, bypass_config);
    }
}

/// The generators reach every status of the model (a weak model test would agree on OK
/// alone): counted over a fixed-seed sample.
#[test]
fn generators_reach_every_status() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let mut seen = BTreeMap::<(u8, Option<u8>), u32>::new();
    for _ in 0..200 {
        let steps = prop::collection::vec(step(), 60)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut model = Model {
            max_mappings: 6,
            mmio: false,
            bypass_config: true,
            endpoints: BTreeMap::new(),
            domains: BTreeMap::new(),
        };
        for s in &steps {
            let t = s.req.encode()[0];
            *seen.entry((t, model.apply(s))).or_default() += 1;
        }
    }
    let need = [
        (1, Some(OK)),
        (1, Some(INVAL)),
        (1, Some(NOENT)),
        (1, Some(RANGE)),
        (2, Some(OK)),
        (2, Some(INVAL)),
        (2, Some(NOENT)),
        (3, Some(OK)),
        (3, Some(INVAL)),
        (3, Some(RANGE)),
        (3, Some(NOENT)),
        (3, Some(NOMEM)),
        (4, Some(OK)),
        (4, Some(INVAL)),
        (4, Some(RANGE)),
        (4, Some(NOENT)),
        (5, Some(OK)),
        (5, Some(INVAL)),
        (5, Some(NOENT)),
        (3, None),
    ];
    for n in need {
        assert!(seen.contains_key(&n), "never generated {n:?}: {seen:?}");
    }
}
