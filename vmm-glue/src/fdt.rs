//! Device-tree description of the virtio-iommu, for VMMs that boot the guest with a device
//! tree (arm64, riscv) instead of ACPI VIOT.
//!
//! Linux binding `Documentation/devicetree/bindings/virtio/iommu.yaml`: the IOMMU is a PCI
//! device, so its node is a child of the PCI host bridge node, with `compatible =
//! "virtio,pci-iommu"`, `reg` = the PCI address (`bus << 16 | dev << 11 | fn << 8` in the
//! first cell, four zero cells) and `#iommu-cells = <1>` (the endpoint id). The host bridge
//! gets `iommu-map = <rid-base &iommu endpoint-base length>...`, mapping PCI requester ids to
//! endpoint ids; the IOMMU's own requester id is left out of the map.
//!
//! `vm_fdt::FdtWriter` writes sequentially, so the caller, while its host bridge node is open,
//! writes its properties, then [`write_iommu_map`], then [`write_iommu_node`] (a child node),
//! then closes the host bridge node.

use vm_fdt::FdtWriter;

#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    #[error("device tree: {0}")]
    Fdt(#[from] vm_fdt::Error),
    #[error("iommu-map: the requester-id range {start:#x}-{end:#x} is empty or reversed")]
    Range { start: u32, end: u32 },
    #[error("iommu-map: endpoint ids starting at {base} overflow 32 bits")]
    Overflow { base: u32 },
}

/// One `iommu-map` entry: `length` requester ids from `rid_base` map to endpoint ids from
/// `endpoint_base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuMapEntry {
    pub rid_base: u32,
    pub endpoint_base: u32,
    pub length: u32,
}

/// A PCI requester id (`bus << 8 | device << 3 | function`).
pub fn rid(bus: u8, device: u8, function: u8) -> u32 {
    (u32::from(bus) << 8) | (u32::from(device & 0x1f) << 3) | u32::from(function & 0x7)
}

/// Map requester ids `rid_start..=rid_end` to endpoint ids from `endpoint_start` (same offset
/// as the VIOT's PCI range node), leaving out `iommu_rid` (the IOMMU itself).
pub fn iommu_map_entries(
    rid_start: u32,
    rid_end: u32,
    endpoint_start: u32,
    iommu_rid: u32,
) -> Result<Vec<IommuMapEntry>, FdtError> {
    if rid_start > rid_end {
        return Err(FdtError::Range {
            start: rid_start,
            end: rid_end,
        });
    }
    let ep = |r: u32| {
        endpoint_start
            .checked_add(r - rid_start)
            .ok_or(FdtError::Overflow {
                base: endpoint_start,
            })
    };
    let entry = |a: u32, b: u32| -> Result<IommuMapEntry, FdtError> {
        Ok(IommuMapEntry {
            rid_base: a,
            endpoint_base: ep(a)?,
            length: b - a + 1,
        })
    };
    let mut out = Vec::new();
    if (rid_start..=rid_end).contains(&iommu_rid) {
        if iommu_rid > rid_start {
            out.push(entry(rid_start, iommu_rid - 1)?);
        }
        if iommu_rid < rid_end {
            out.push(entry(iommu_rid + 1, rid_end)?);
        }
    } else {
        out.push(entry(rid_start, rid_end)?);
    }
    ep(rid_end)?;
    Ok(out)
}

/// Write `iommu-map` (pointing at the IOMMU node's `phandle`) on the open host bridge node.
pub fn write_iommu_map(
    fdt: &mut FdtWriter,
    phandle: u32,
    entries: &[IommuMapEntry],
) -> Result<(), FdtError> {
    let cells: Vec<u32> = entries
        .iter()
        .flat_map(|e| [e.rid_base, phandle, e.endpoint_base, e.length])
        .collect();
    fdt.property_array_u32("iommu-map", &cells)?;
    Ok(())
}

/// Write the virtio-iommu node (a child of the open host bridge node) for the IOMMU at PCI
/// address `bus:device.function`, with the given phandle.
pub fn write_iommu_node(
    fdt: &mut FdtWriter,
    bus: u8,
    device: u8,
    function: u8,
    phandle: u32,
) -> Result<(), FdtError> {
    let r = rid(bus, device, function);
    // dtc's PCI unit-address form: "DEV" for function 0, "DEV,FN" otherwise.
    let name = match function & 0x7 {
        0 => format!("iommu@{:x}", device & 0x1f),
        f => format!("iommu@{:x},{f:x}", device & 0x1f),
    };
    let node = fdt.begin_node(&name)?;
    fdt.property_string("compatible", "virtio,pci-iommu")?;
    fdt.property_array_u32("reg", &[r << 8, 0, 0, 0, 0])?;
    fdt.property_u32("#iommu-cells", 1)?;
    fdt.property_phandle(phandle)?;
    fdt.end_node(node)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_entries_skip_the_iommu() {
        let iommu = rid(0, 3, 0);
        assert_eq!(iommu, 0x18);
        assert_eq!(
            iommu_map_entries(0, 0xff, 0, iommu).unwrap(),
            vec![
                IommuMapEntry {
                    rid_base: 0,
                    endpoint_base: 0,
                    length: 0x18
                },
                IommuMapEntry {
                    rid_base: 0x19,
                    endpoint_base: 0x19,
                    length: 0xe7
                },
            ]
        );
        // IOMMU on another bus: one entry; endpoint numbering offset like a VIOT range.
        assert_eq!(
            iommu_map_entries(0x100, 0x1ff, 0x1000, iommu).unwrap(),
            vec![IommuMapEntry {
                rid_base: 0x100,
                endpoint_base: 0x1000,
                length: 0x100
            }]
        );
        // IOMMU at either end of the range.
        assert_eq!(iommu_map_entries(0x18, 0x20, 0, iommu).unwrap().len(), 1);
        assert_eq!(iommu_map_entries(0x10, 0x18, 0, iommu).unwrap().len(), 1);
        assert!(iommu_map_entries(0x18, 0x18, 0, iommu).unwrap().is_empty());
        assert!(matches!(
            iommu_map_entries(5, 4, 0, iommu),
            Err(FdtError::Range { .. })
        ));
        assert!(matches!(
            iommu_map_entries(0, 0xff, u32::MAX - 5, 0x1000),
            Err(FdtError::Overflow { .. })
        ));
    }
}
