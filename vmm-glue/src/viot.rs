//! The ACPI VIOT (Virtual I/O Translation) table for one virtio-iommu-pci device.
//!
//! Layout (all little-endian): the 36-byte ACPI header (signature `VIOT`, revision 0), then
//! `u16 node_count @36`, `u16 node_offset @38` (48), 8 reserved bytes, then the nodes. Each node
//! starts with `{u8 type, u8 reserved, u16 length}`:
//! - type 3, virtio-iommu-pci, 16 bytes: `u16 segment @4`, `u16 bdf @6`, 8 reserved bytes;
//! - type 1, PCI range, 24 bytes: `u32 endpoint_start @4`, `u16 segment_start @8`,
//!   `u16 segment_end @10`, `u16 bdf_start @12`, `u16 bdf_end @14`, `u16 output_node @16` (the
//!   table offset of the IOMMU node), 6 reserved bytes.
//!
//! We write the IOMMU node first (at offset 48), then one PCI-range node per range. The table is
//! assembled in the `acpi_tables` crate's generic [`Sdt`], which keeps length and checksum right;
//! its own VIOT type cannot express an endpoint start other than the first BDF.

use acpi_tables::sdt::Sdt;

use crate::pci::{PciAddress, PciRange};

/// Table signature.
pub const SIGNATURE: [u8; 4] = *b"VIOT";
/// Table revision (the only one defined).
pub const REVISION: u8 = 0;
/// OEM id written in the header.
pub const OEM_ID: [u8; 6] = *b"VUIOMM";
/// OEM table id written in the header.
pub const OEM_TABLE_ID: [u8; 8] = *b"VUIVIOT ";
/// Size of the ACPI header.
pub const HEADER_LEN: usize = 36;
/// Offset of the first node.
pub const NODE_OFFSET: u16 = 48;
/// Node type: PCI range.
pub const NODE_PCI_RANGE: u8 = 1;
/// Node type: virtio-iommu on PCI.
pub const NODE_VIRTIO_IOMMU_PCI: u8 = 3;
/// Length of a PCI range node.
pub const PCI_RANGE_LEN: u16 = 24;
/// Length of a virtio-iommu-pci node.
pub const VIRTIO_IOMMU_PCI_LEN: u16 = 16;

/// Why a VIOT cannot be built or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViotError {
    /// No endpoints at all.
    #[error("no PCI range given: add at least one --pci-range SEG:BB:DD.F-BB:DD.F")]
    NoRanges,
    /// Two ranges share functions.
    #[error("PCI ranges {0} and {1} overlap: a function must have exactly one endpoint id")]
    Overlap(String, String),
    /// Two ranges give the same endpoint id to different functions.
    #[error("PCI ranges {0} and {1} hand out the same endpoint ids; change an @ENDPOINT_START")]
    EndpointClash(String, String),
    /// More nodes than fit in the table.
    #[error("too many PCI ranges ({0}); at most {max}", max = MAX_RANGES)]
    TooMany(usize),
    /// A table read from a file is malformed.
    #[error("not a usable VIOT table: {0}")]
    Malformed(String),
}

/// Most ranges one table holds (the table length is a u32, node offsets are u16).
pub const MAX_RANGES: usize = 2000;

/// A VIOT describing one virtio-iommu-pci and the PCI ranges it translates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viot {
    /// Where the virtio-iommu device sits.
    pub iommu: PciAddress,
    /// Endpoint ranges, in table order.
    pub ranges: Vec<PciRange>,
}

fn describe(r: &PciRange) -> String {
    format!("{}-{}@{:#x}", r.first, r.last, r.endpoint_start)
}

fn endpoint_span(r: &PciRange) -> (u64, u64) {
    let span = (u64::from(r.last.segment - r.first.segment) << 16)
        + u64::from(r.last.bdf() - r.first.bdf());
    let start = u64::from(r.endpoint_start);
    (start, start + span)
}

impl Viot {
    /// Checks the ranges and builds the description.
    pub fn new(iommu: PciAddress, ranges: Vec<PciRange>) -> Result<Self, ViotError> {
        if ranges.is_empty() {
            return Err(ViotError::NoRanges);
        }
        if ranges.len() > MAX_RANGES {
            return Err(ViotError::TooMany(ranges.len()));
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.overlaps(b) {
                    return Err(ViotError::Overlap(describe(a), describe(b)));
                }
                let (a0, a1) = endpoint_span(a);
                let (b0, b1) = endpoint_span(b);
                if a0 <= b1 && b0 <= a1 {
                    return Err(ViotError::EndpointClash(describe(a), describe(b)));
                }
            }
        }
        Ok(Viot { iommu, ranges })
    }

    /// The endpoint id the guest derives for `addr`, if the table covers it. The IOMMU's own
    /// function is never an endpoint (Linux skips it inside a range).
    pub fn endpoint_of(&self, addr: PciAddress) -> Option<u32> {
        if addr == self.iommu {
            return None;
        }
        self.ranges.iter().find_map(|r| r.endpoint_of(addr))
    }

    /// The endpoint ids as the daemon's `--endpoints` takes them (`0-7,9`).
    pub fn endpoint_list(&self) -> String {
        self.endpoint_ranges()
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The endpoint ids the table hands out, as inclusive ranges sorted by start (the IOMMU's
    /// own function is left out). Written as `A-B,C-D`, this is the daemon's `--endpoints`.
    pub fn endpoint_ranges(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for r in &self.ranges {
            let (start, end) = endpoint_span(r);
            // `PciRange::new` keeps the span within u32.
            let (start, end) = (start as u32, end as u32);
            match r.endpoint_of(self.iommu) {
                Some(own) => {
                    if own > start {
                        out.push((start, own - 1));
                    }
                    if own < end {
                        out.push((own + 1, end));
                    }
                }
                None => out.push((start, end)),
            }
        }
        out.sort_unstable();
        out
    }

    /// The table bytes, checksum included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut sdt = Sdt::new(
            SIGNATURE,
            HEADER_LEN as u32,
            REVISION,
            OEM_ID,
            OEM_TABLE_ID,
            1,
        );
        // `new` bounds the count by MAX_RANGES, so this cannot truncate.
        let count = (self.ranges.len() + 1) as u16;
        let mut body = Vec::with_capacity(12 + 16 + 24 * self.ranges.len());
        body.extend_from_slice(&count.to_le_bytes());
        body.extend_from_slice(&NODE_OFFSET.to_le_bytes());
        body.extend_from_slice(&[0; 8]);

        let iommu_offset = NODE_OFFSET;
        body.extend_from_slice(&[NODE_VIRTIO_IOMMU_PCI, 0]);
        body.extend_from_slice(&VIRTIO_IOMMU_PCI_LEN.to_le_bytes());
        body.extend_from_slice(&self.iommu.segment.to_le_bytes());
        body.extend_from_slice(&self.iommu.bdf().to_le_bytes());
        body.extend_from_slice(&[0; 8]);

        for r in &self.ranges {
            body.extend_from_slice(&[NODE_PCI_RANGE, 0]);
            body.extend_from_slice(&PCI_RANGE_LEN.to_le_bytes());
            body.extend_from_slice(&r.endpoint_start.to_le_bytes());
            body.extend_from_slice(&r.first.segment.to_le_bytes());
            body.extend_from_slice(&r.last.segment.to_le_bytes());
            body.extend_from_slice(&r.first.bdf().to_le_bytes());
            body.extend_from_slice(&r.last.bdf().to_le_bytes());
            body.extend_from_slice(&iommu_offset.to_le_bytes());
            body.extend_from_slice(&[0; 6]);
        }
        sdt.append_slice(&body);
        sdt.as_slice().to_vec()
    }

    /// Reads back a table with one virtio-iommu-pci node and PCI-range nodes pointing at it
    /// (what [`Viot::to_bytes`] writes; other node types are rejected).
    pub fn parse(bytes: &[u8]) -> Result<Self, ViotError> {
        let bad = |m: String| ViotError::Malformed(m);
        let u16_at = |o: usize| -> Result<u16, ViotError> {
            bytes
                .get(o..o + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or_else(|| bad(format!("truncated at byte {o}")))
        };
        let u32_at = |o: usize| -> Result<u32, ViotError> {
            bytes
                .get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| bad(format!("truncated at byte {o}")))
        };
        if bytes.len() < usize::from(NODE_OFFSET) || bytes[0..4] != SIGNATURE {
            return Err(bad("no VIOT signature / shorter than 48 bytes".into()));
        }
        let len = u32_at(4)? as usize;
        if len != bytes.len() {
            return Err(bad(format!(
                "header length {len} but {} bytes",
                bytes.len()
            )));
        }
        if bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) != 0 {
            return Err(bad("checksum does not sum to zero".into()));
        }
        let count = usize::from(u16_at(36)?);
        let mut off = usize::from(u16_at(38)?);
        let mut iommu = None;
        let mut raw_ranges = Vec::new();
        for _ in 0..count {
            let ty = *bytes
                .get(off)
                .ok_or_else(|| bad(format!("node at {off} past the end")))?;
            let nlen = usize::from(u16_at(off + 2)?);
            if nlen < 4 || off + nlen > len {
                return Err(bad(format!("node at {off} has bad length {nlen}")));
            }
            match (ty, nlen) {
                (NODE_VIRTIO_IOMMU_PCI, 16) => {
                    if iommu.is_some() {
                        return Err(bad("more than one IOMMU node".into()));
                    }
                    iommu = Some((
                        off,
                        PciAddress::from_bdf(u16_at(off + 4)?, u16_at(off + 6)?),
                    ));
                }
                (NODE_PCI_RANGE, 24) => raw_ranges.push((
                    u32_at(off + 4)?,
                    u16_at(off + 8)?,
                    u16_at(off + 10)?,
                    u16_at(off + 12)?,
                    u16_at(off + 14)?,
                    u16_at(off + 16)?,
                )),
                _ => {
                    return Err(bad(format!(
                        "unsupported node type {ty} length {nlen} at {off}"
                    )))
                }
            }
            off += nlen;
        }
        let (iommu_off, iommu) = iommu.ok_or_else(|| bad("no virtio-iommu-pci node".into()))?;
        let mut ranges = Vec::with_capacity(raw_ranges.len());
        for (ep, seg0, seg1, bdf0, bdf1, out) in raw_ranges {
            if usize::from(out) != iommu_off {
                return Err(bad(format!(
                    "a PCI range points at offset {out}, not the IOMMU node"
                )));
            }
            let range = PciRange::new(
                PciAddress::from_bdf(seg0, bdf0),
                PciAddress::from_bdf(seg1, bdf1),
                ep,
            )
            .map_err(|e| bad(e.to_string()))?;
            ranges.push(range);
        }
        Viot::new(iommu, ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le16(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    fn le32(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    fn sample() -> Viot {
        Viot::new(
            "0000:00:03.0".parse().unwrap(),
            vec![
                "0000:00:00.0-00:1f.7".parse().unwrap(),
                "0001:02:00.0-02:1f.7@0x10000".parse().unwrap(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn header_fields() {
        let b = sample().to_bytes();
        assert_eq!(b.len(), 48 + 16 + 2 * 24);
        assert_eq!(&b[0..4], b"VIOT");
        assert_eq!(le32(&b, 4) as usize, b.len());
        assert_eq!(b[8], 0, "revision");
        assert_eq!(&b[10..16], b"VUIOMM");
        assert_eq!(&b[16..24], b"VUIVIOT ");
        assert_eq!(le32(&b, 24), 1, "oem revision");
        assert_eq!(le16(&b, 36), 3, "node count");
        assert_eq!(le16(&b, 38), 48, "node offset");
        assert_eq!(&b[40..48], &[0; 8]);
        assert_eq!(b.iter().fold(0u8, |s, x| s.wrapping_add(*x)), 0, "checksum");
    }

    #[test]
    fn iommu_node() {
        let b = sample().to_bytes();
        assert_eq!(b[48], 3, "type virtio-iommu-pci");
        assert_eq!(b[49], 0);
        assert_eq!(le16(&b, 50), 16);
        assert_eq!(le16(&b, 52), 0, "segment");
        assert_eq!(le16(&b, 54), 0x18, "bdf of 00:03.0");
        assert_eq!(&b[56..64], &[0; 8]);
    }

    #[test]
    fn range_nodes() {
        let b = sample().to_bytes();
        let r = 64;
        assert_eq!((b[r], b[r + 1], le16(&b, r + 2)), (1, 0, 24));
        assert_eq!(le32(&b, r + 4), 0, "endpoint start");
        assert_eq!((le16(&b, r + 8), le16(&b, r + 10)), (0, 0), "segments");
        assert_eq!((le16(&b, r + 12), le16(&b, r + 14)), (0, 0xff), "bdfs");
        assert_eq!(
            le16(&b, r + 16),
            48,
            "output node = offset of the IOMMU node"
        );
        assert_eq!(&b[r + 18..r + 24], &[0; 6]);
        let r = 88;
        assert_eq!(b[r], 1);
        assert_eq!(le32(&b, r + 4), 0x10000);
        assert_eq!((le16(&b, r + 8), le16(&b, r + 10)), (1, 1));
        assert_eq!((le16(&b, r + 12), le16(&b, r + 14)), (0x200, 0x2ff));
        assert_eq!(le16(&b, r + 16), 48);
    }

    #[test]
    fn round_trip_and_endpoints() {
        let v = sample();
        assert_eq!(Viot::parse(&v.to_bytes()).unwrap(), v);
        assert_eq!(v.endpoint_of("0000:00:04.0".parse().unwrap()), Some(0x20));
        assert_eq!(
            v.endpoint_of("0000:00:03.0".parse().unwrap()),
            None,
            "the IOMMU itself"
        );
        assert_eq!(
            v.endpoint_of("0001:02:01.0".parse().unwrap()),
            Some(0x10008)
        );
        assert_eq!(v.endpoint_of("0000:01:00.0".parse().unwrap()), None);
    }

    #[test]
    fn endpoint_ranges_skip_the_iommu() {
        assert_eq!(
            sample().endpoint_ranges(),
            vec![(0, 0x17), (0x19, 0xff), (0x10000, 0x100ff)]
        );
        let v = Viot::new(
            "0000:00:03.0".parse().unwrap(),
            vec![
                "0000:00:03.0-00:03.0@5".parse().unwrap(),
                "0000:00:04.0-00:04.7@9".parse().unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(v.endpoint_ranges(), vec![(9, 16)]);
    }

    #[test]
    fn rejects_bad_input() {
        let iommu: PciAddress = "0000:00:03.0".parse().unwrap();
        assert_eq!(Viot::new(iommu, vec![]), Err(ViotError::NoRanges));
        let a: PciRange = "0000:00:00.0-00:04.0".parse().unwrap();
        let b: PciRange = "0000:00:04.0-00:05.0@0x100".parse().unwrap();
        assert!(matches!(
            Viot::new(iommu, vec![a, b]),
            Err(ViotError::Overlap(..))
        ));
        let c: PciRange = "0000:00:05.0-00:06.0@0x2".parse().unwrap();
        let err = Viot::new(iommu, vec![a, c]).unwrap_err();
        assert!(matches!(err, ViotError::EndpointClash(..)), "{err}");
        assert!(err.to_string().contains("@ENDPOINT_START"));
    }

    #[test]
    fn parse_rejects_corruption() {
        let good = sample().to_bytes();
        let mut b = good.clone();
        b[60] ^= 1;
        assert!(Viot::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        let mut b = good.clone();
        b[64 + 16] = 64; // output node pointing at the range itself
        b[9] = b[9].wrapping_sub(16);
        assert!(Viot::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("not the IOMMU node"));
        assert!(Viot::parse(&good[..60]).is_err());
        assert!(Viot::parse(b"DSDT").is_err());
    }
}
