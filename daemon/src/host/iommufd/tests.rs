//! The backend's decisions before any kernel call, on an "iommufd" that is /dev/null.

use std::path::Path;

use model::protocol::{MAP_F_MMIO, MAP_F_READ, MAP_F_WRITE};

use std::collections::BTreeMap;

use super::adopt::Persist;
use super::device::Endpoints;
use super::ids::{IoasId, Iommufd, Owned};
use super::pieces::{self, HostMap, Piece, Ram};
use super::ram::{self, GuestRam};
use super::*;

#[test]
fn pci_address_resolves_through_sysfs() {
    let dir = std::env::temp_dir().join(format!("vui-sysfs-{}", std::process::id()));
    let dev = dir.join("bus/pci/devices/0000:00:04.0/vfio-dev/vfio3");
    std::fs::create_dir_all(&dev).unwrap();
    assert_eq!(
        pci_cdev(&dir, "0000:00:04.0").unwrap(),
        Path::new("/dev/vfio/devices/vfio3")
    );
    let e = pci_cdev(&dir, "0000:00:05.0").unwrap_err().to_string();
    assert!(e.contains("vfio-pci"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A backend whose "iommufd" is /dev/null: everything decided before a kernel call can be
/// checked without one (kernel calls fail with ENOTTY).
fn offline(allowed: Vec<(u64, u64)>, align: u64) -> IommufdBackend {
    let fd = Iommufd::new(std::fs::File::open("/dev/null").unwrap().into());
    IommufdBackend {
        adopting: None,
        endpoints: Endpoints::new(),
        domains: BTreeMap::new(),
        nest: None,
        blocked: Space::new(Owned::new(&fd, IoasId(1))),
        stage2: Space::new(Owned::new(&fd, IoasId(2))),
        ram: GuestRam::default(),
        allowed,
        iova_alignment: align,
        unattached_bypass: false,
        objects: Persist::new(None),
        fd,
    }
}

/// Domain `id` on IOAS `ioas` (as if the kernel had made it).
fn add_domain(b: &mut IommufdBackend, id: u32, ioas: u32) {
    let space = Space::new(Owned::new(&b.fd, IoasId(ioas)));
    b.domains.insert(DomainId(id), Domain::new(Some(space)));
}

fn host_maps(b: &IommufdBackend, domain: u32) -> &BTreeMap<u64, HostMap> {
    &b.domains[&DomainId(domain)].maps.maps
}

fn region(gpa: u64, size: u64) -> GuestRegion {
    GuestRegion {
        gpa,
        size,
        host_addr: 0x7f00_0000_0000 + gpa,
        file: None,
    }
}

#[test]
fn guest_ram_is_clipped_to_the_host_ranges() {
    // The mock's aperture; RAM below, across and inside it.
    let b = offline(vec![(1 << 24, (1 << 31) - 1)], 0x800);
    let mem: Vec<Ram> = [
        region(0, 16 << 20),
        region(0x7ff0_0000, 2 << 20),
        region(1 << 30, 4096),
    ]
    .iter()
    .map(|r| Ram::new(r, true))
    .collect();
    let p = ram::pieces_for(&mem, b.allowed());
    // Regions without a file are mapped by address.
    assert_eq!(
        p,
        vec![
            Piece {
                iova: 0x7ff0_0000,
                len: 1 << 20,
                gpa: 0x7ff0_0000,
                backing: pieces::Backing::Addr(0x7f00_0000_0000 + 0x7ff0_0000),
            },
            Piece {
                iova: 1 << 30,
                len: 4096,
                gpa: 1 << 30,
                backing: pieces::Backing::Addr(0x7f00_4000_0000),
            },
        ]
    );
    let l = b.limits(0, u64::MAX);
    assert_eq!(l.holes, vec![(0, (1 << 24) - 1), (1 << 31, u64::MAX)]);
    // The host page size (4 KiB here) dominates the mock's 2 KiB alignment.
    assert_eq!(l.page_size_mask, !0xfff);
    assert_eq!(
        offline(vec![], 1 << 21).limits(0, 10).page_size_mask,
        !((1 << 21) - 1)
    );
}

#[test]
fn refusals_before_the_kernel() {
    let mut b = offline(vec![(0, u64::MAX)], 4096);
    add_domain(&mut b, 1, 7);
    b.ram
        .memory
        .push(Ram::new(&region(0x1000_0000, 0x10_0000), true));
    let rw = MAP_F_READ | MAP_F_WRITE;
    // Not guest RAM: before, after, across the end of the region.
    for phys in [0x0fff_f000, 0x1010_0000, 0x100f_f000] {
        let e = b.map(1, 0, 0x1fff, phys, rw).unwrap_err();
        assert!(
            matches!(e, BackendError::NotGuestRam { .. }),
            "{phys:#x}: {e}"
        );
        assert_eq!(e.status(), model::protocol::Status::Range);
    }
    // No access: nothing reaches the kernel, but the range must still be RAM.
    b.map(1, 0, 0xfff, 0x1000_0000, 0).unwrap();
    assert!(b.map(1, 0, 0xfff, 0x2000_0000, 0).is_err());
    assert_eq!(
        b.map(1, 0, 0xfff, 0x1000_0000, MAP_F_MMIO | rw),
        Err(BackendError::Mmio)
    );
    assert!(matches!(
        b.map(2, 0, 0xfff, 0x1000_0000, rw),
        Err(BackendError::Internal(_))
    ));
    // RAM: the kernel call is made (and fails on /dev/null with the call's name).
    let e = b.map(1, 0, 0xfff, 0x1000_0000, rw).unwrap_err();
    assert_eq!(
        e,
        BackendError::Os {
            call: "IOMMU_IOAS_MAP",
            errno: libc::ENOTTY
        }
    );
    // Endpoints without a host device move without kernel calls.
    b.attach(5, 1, false, false).unwrap();
    b.detach(5).unwrap();
    // RAM in two adjacent regions is RAM: the first piece reaches the kernel.
    b.ram
        .memory
        .push(Ram::new(&region(0x1010_0000, 0x10_0000), true));
    let e = b.map(1, 0, 0x1fff, 0x100f_f000, rw).unwrap_err();
    assert!(matches!(e, BackendError::Os { .. }), "{e}");
    // A failed MAP leaves no bookkeeping behind.
    let d = &b.domains[&DomainId(1)];
    assert!(d.maps.maps.is_empty() && d.maps.orphans.is_empty());
}

/// A mapping of `[iova, iova + len)` to `phys`, as if its one piece were in the kernel.
fn mapped(b: &mut IommufdBackend, domain: u32, iova: u64, len: u64, phys: u64) {
    let r = b
        .ram
        .memory
        .iter()
        .find(|r| r.contains(phys, len))
        .expect("RAM");
    let backing = r.backing.at(phys - r.gpa);
    let d = b.domains.get_mut(&DomainId(domain)).unwrap();
    d.maps.maps.insert(
        iova,
        HostMap {
            last: iova + len - 1,
            phys,
            prot: sys::IOMMU_IOAS_MAP_READABLE,
            pieces: pieces::Pieces::One(Piece {
                iova,
                len,
                gpa: phys,
                backing,
            }),
        },
    );
}

#[test]
fn memory_table_changes_keep_the_bookkeeping_true() {
    let mut b = offline(vec![(0, u64::MAX)], 4096);
    add_domain(&mut b, 1, 7);
    let low = region(0x1000_0000, 0x10_0000);
    let hot = region(0x2000_0000, 0x10_0000);
    b.set_guest_memory(&[low, hot]).unwrap();
    mapped(&mut b, 1, 0x10_0000, 0x1000, 0x1000_0000);
    mapped(&mut b, 1, 0x20_0000, 0x2000, 0x2000_0000);
    let before = host_maps(&b, 1).clone();
    // Stage 2 cannot be mapped on /dev/null: every table tries all of it again, one failure
    // a region; any other failure would be a kernel call for the guest's mappings.
    let failures = |b: &IommufdBackend| b.ram.stats.failures;
    // The same regions again (a region added elsewhere): no kernel call for the mappings,
    // nothing changes.
    let f = failures(&b);
    b.set_guest_memory(&[low, hot, region(0x3000_0000, 0x1000)])
        .unwrap();
    assert_eq!(*host_maps(&b, 1), before);
    assert_eq!(b.ram.stats.domain_unmapped + b.ram.stats.domain_mapped, 0);
    assert_eq!(failures(&b), f + 3);
    // The hot region leaves: its piece must be unmapped; /dev/null refuses, so the piece
    // stays recorded (it is still in the kernel) and shows as stale.
    let f = failures(&b);
    b.set_guest_memory(&[low]).unwrap();
    assert_eq!(
        *host_maps(&b, 1),
        before,
        "refused unmap: still in the kernel"
    );
    assert_eq!(b.ram.stats.domain_unmapped, 0);
    assert_eq!(failures(&b), f + 2, "the unmap and low's stage 2");
    let d = b.describe();
    let maps = &d["domains"][0]["mappings"];
    assert_eq!(maps["with_access"], 2, "{d}");
    assert_eq!(maps["stale"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(maps["stale"][0]["iova"], 0x20_0000, "{d}");
    assert!(maps["unbacked"].as_array().unwrap().is_empty(), "{d}");
    assert_eq!(d["guest_ram"].as_array().unwrap().len(), 1, "{d}");
    // Guest RAM queries follow the table.
    assert_eq!(b.guest_ram_at(0x1000_0000), Some(true));
    assert_eq!(b.guest_ram_at(0x2000_0000), Some(false));
    // Back again with the same backing: the piece is valid again, nothing to do.
    let f = failures(&b);
    b.set_guest_memory(&[low, hot]).unwrap();
    assert_eq!(*host_maps(&b, 1), before);
    assert!(b.describe()["domains"][0]["mappings"]["stale"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(failures(&b), f + 2, "stage 2 only");
    // Disconnect: no memory, no domain.
    b.reset(ResetKind::Connection);
    assert!(b.ram.memory.is_empty() && b.domains.is_empty());
    assert_eq!(b.guest_ram_at(0x1000_0000), Some(false));
}

#[test]
fn host_kinds_from_hw_info() {
    // struct iommu_hw_info_vtd: flags@0, rsvd@4, cap_reg@8, ecap_reg@16.
    let mut vtd = [0u8; 64];
    assert_eq!(nest_kind(sys::IOMMU_HW_INFO_TYPE_INTEL_VTD, &vtd), None);
    vtd[16..24].copy_from_slice(&(1u64 << 26).to_le_bytes());
    assert_eq!(
        nest_kind(sys::IOMMU_HW_INFO_TYPE_INTEL_VTD, &vtd),
        Some(NestKind::Vtd)
    );
    // struct iommu_hw_info_arm_smmuv3: flags@0, rsvd@4, idr[0]@8: S2P bit 0, S1P bit 1.
    let mut smmu = [0u8; 64];
    smmu[8] = 0b10;
    assert_eq!(nest_kind(sys::IOMMU_HW_INFO_TYPE_ARM_SMMUV3, &smmu), None);
    smmu[8] = 0b11;
    assert_eq!(
        nest_kind(sys::IOMMU_HW_INFO_TYPE_ARM_SMMUV3, &smmu),
        Some(NestKind::Smmuv3)
    );
    assert_eq!(
        nest_kind(sys::IOMMU_HW_INFO_TYPE_SELFTEST, &[0; 64]),
        Some(NestKind::Selftest)
    );
    // IOMMU_HW_INFO_TYPE_NONE (e.g. virtio-iommu): no nesting.
    assert_eq!(nest_kind(0, &[0xff; 64]), None);
}

#[test]
fn nested_data_per_host_kind() {
    use pagetables::vtd::{FirstStage, FirstStageParams, VtdFlags};
    let fs = FirstStage::new(FirstStageParams {
        pgtbl: 0x1234_5000,
        addr_width: 57,
        flags: VtdFlags {
            sre: false,
            eafe: true,
            wpe: false,
        },
        haw: 48,
        pages_1g: true,
    })
    .unwrap();
    let vtd = Binding::Vtd(fs);
    // struct iommu_hwpt_vtd_s1 {u64 flags; u64 pgtbl_addr; u32 addr_width; u32 rsvd}.
    let (t, d) = nested_data(NestKind::Vtd, &vtd).unwrap();
    assert_eq!(t, sys::IOMMU_HWPT_DATA_VTD_S1);
    assert_eq!(d.len(), 24);
    assert_eq!(&d[0..8], &2u64.to_le_bytes(), "EAFE is bit 1");
    assert_eq!(&d[8..16], &0x1234_5000u64.to_le_bytes());
    assert_eq!(&d[16..20], &57u32.to_le_bytes());
    assert_eq!(&d[20..24], &[0; 4]);
    // The mock: {u32 iotlb} = IOMMU_TEST_IOTLB_DEFAULT, whatever the format.
    let (t, d) = nested_data(NestKind::Selftest, &vtd).unwrap();
    assert_eq!((t, d), (0xdead, 0x0bad_beefu32.to_le_bytes().to_vec()));
    // Another architecture's table: UNSUPP, before any kernel call.
    let e = nested_data(NestKind::Smmuv3, &vtd).unwrap_err();
    assert_eq!(e.status(), model::protocol::Status::Unsupp);
}

#[test]
fn guest_tables_need_a_nesting_host() {
    let mut b = offline(vec![(0, u64::MAX)], 4096);
    assert!(!b.guest_tables());
    assert!(b.nesting().is_none() && b.nesting_mut().is_none());
    add_domain(&mut b, 1, 7);
    let fs = pagetables::vtd::FirstStage::new(pagetables::vtd::FirstStageParams {
        pgtbl: 0x1000,
        addr_width: 48,
        flags: Default::default(),
        haw: 48,
        pages_1g: false,
    })
    .unwrap();
    let e = b.attach_table(1, &Binding::Vtd(fs)).unwrap_err();
    assert_eq!(e.status(), model::protocol::Status::Unsupp);
    // PASIDs of endpoints without a host device need nothing on the host; invalidations of
    // a domain without a nested HWPT neither.
    b.attach_pasid(5, 1, 1).unwrap();
    b.detach_pasid(5, 1).unwrap();
    assert!(b.page_requests().is_empty());
    assert_eq!(b.page_request_fd(), None);
}

#[test]
fn opening_a_missing_iommufd_names_the_path() {
    let cfg = IommufdConfig {
        iommufd: Some("/nonexistent/iommu".into()),
        ..Default::default()
    };
    let e = IommufdBackend::open(&cfg, None).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/iommu"), "{e}");
}

/// A device the VMM binds (`fd = true, bind = false`): no device id, so no guest tables; not
/// in the objects file; not attached by the daemon until a move succeeds (here every kernel
/// call fails: it stays the VMM's, and says so).
#[test]
fn a_device_the_vmm_binds_is_claimed_only_by_a_successful_move() {
    let mut b = offline(vec![(0, u64::MAX)], 4096);
    let file = std::fs::File::open("/dev/null").unwrap().into();
    let ep = ids::EndpointId(40);
    b.endpoints.insert(
        ep,
        device::Endpoint::unclaimed(Box::new(device::SharedVfioDevice::new(file))),
    );
    assert!(b.devices().is_none(), "no device id: no nesting host");
    assert!(b.saved().endpoints.is_empty());
    let d = b.describe();
    let e = &d["endpoints"][0];
    assert_eq!(e["endpoint"], 40);
    assert_eq!(e["hwpt"], serde_json::Value::Null);
    assert_eq!(e["device"]["bound_by"], "vmm");
    assert_eq!(e["device"]["dev_id"], serde_json::Value::Null);
    b.claim_shared();
    assert!(!b.endpoints[&ep].claimed);
    assert!(b.detach(40).is_err());
    assert!(!b.endpoints[&ep].claimed);
    // Resets and bypass changes leave it to the claim (the VMM may not have bound it yet).
    b.reset(ResetKind::Device);
    b.set_unattached_bypass(true).unwrap();
    assert!(!b.endpoints[&ep].claimed);
}

#[test]
fn handed_over_devices_are_checked_whoever_binds_them() {
    let mut cfg = IommufdConfig::default();
    cfg.devices.insert(40, DeviceSource::Shared);
    cfg.devices.insert(48, DeviceSource::Passed);
    let fd = || std::fs::File::open("/dev/null").unwrap().into();
    let mut h = crate::host::fdpass::Handover::default();
    h.devices.insert(40, fd());
    let e = config::check_handover(&cfg, &h).unwrap_err();
    assert!(e.contains("endpoint 48"), "{e}");
    h.devices.insert(48, fd());
    config::check_handover(&cfg, &h).unwrap();
    h.devices.insert(56, fd());
    let e = config::check_handover(&cfg, &h).unwrap_err();
    assert!(e.contains("endpoint 56"), "{e}");
}
