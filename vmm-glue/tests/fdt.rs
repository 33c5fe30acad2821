//! The device-tree nodes, checked by decompiling the blob with dtc (which also runs its PCI
//! and phandle checks).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use vhost_user_iommu_glue::fdt::{iommu_map_entries, rid, write_iommu_map, write_iommu_node};
use vm_fdt::FdtWriter;

fn blob(iommu_dev: u8) -> Vec<u8> {
    let mut fdt = FdtWriter::new().expect("fdt");
    let root = fdt.begin_node("").expect("root");
    fdt.property_u32("#address-cells", 2).expect("prop");
    fdt.property_u32("#size-cells", 2).expect("prop");
    fdt.property_string("compatible", "linux,dummy-virt")
        .expect("prop");
    let pci = fdt.begin_node("pcie@10000000").expect("pcie");
    fdt.property_string("compatible", "pci-host-ecam-generic")
        .expect("prop");
    fdt.property_string("device_type", "pci").expect("prop");
    fdt.property_u32("#address-cells", 3).expect("prop");
    fdt.property_u32("#size-cells", 2).expect("prop");
    fdt.property_array_u32("bus-range", &[0, 0xff])
        .expect("prop");
    fdt.property_array_u64("reg", &[0x1000_0000, 0x1000_0000])
        .expect("prop");
    // 32-bit MMIO window: <pci-address(3) cpu-address(2) size(2)>.
    fdt.property_array_u32(
        "ranges",
        &[0x0200_0000, 0, 0x4000_0000, 0, 0x4000_0000, 0, 0x1000_0000],
    )
    .expect("prop");
    let entries = iommu_map_entries(0, 0xffff, 0, rid(0, iommu_dev, 0)).expect("map");
    write_iommu_map(&mut fdt, 1, &entries).expect("iommu-map");
    write_iommu_node(&mut fdt, 0, iommu_dev, 0, 1).expect("iommu node");
    fdt.end_node(pci).expect("end pcie");
    fdt.end_node(root).expect("end root");
    fdt.finish().expect("finish")
}

#[test]
fn dtc_reads_the_iommu_nodes() {
    let dtb = blob(3);
    let dir = std::env::temp_dir().join(format!("vui-fdt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("vm.dtb");
    std::fs::write(&path, &dtb).expect("write dtb");
    let out = Command::new("dtc")
        .args(["-I", "dtb", "-O", "dts"])
        .arg(&path)
        .output()
        .expect("dtc is installed (apt-get install device-tree-compiler)");
    let dts = String::from_utf8_lossy(&out.stdout);
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{warnings}");
    assert!(
        warnings.trim().is_empty(),
        "dtc warnings:\n{warnings}\n{dts}"
    );
    for line in [
        "iommu-map = <0x00 0x01 0x00 0x18 0x19 0x01 0x19 0xffe7>;",
        "iommu@3 {",
        "compatible = \"virtio,pci-iommu\";",
        "reg = <0x1800 0x00 0x00 0x00 0x00>;",
        "#iommu-cells = <0x01>;",
        "phandle = <0x01>;",
    ] {
        assert!(dts.contains(line), "missing {line:?} in:\n{dts}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
