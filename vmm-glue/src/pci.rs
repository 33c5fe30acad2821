//! PCI addresses (`SEG:BB:DD.F`) and endpoint ranges (`SEG:BB:DD.F-BB:DD.F[@ENDPOINT]`).

use std::fmt;
use std::str::FromStr;

/// Errors in PCI address or range syntax.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The text does not have the `SEGMENT:BUS:DEVICE.FUNCTION` shape.
    #[error(
        "`{0}` is not a PCI address; write SEGMENT:BUS:DEVICE.FUNCTION in hex, e.g. 0000:00:03.0"
    )]
    Address(String),
    /// A field is out of range.
    #[error("`{text}`: {what} {value:#x} is out of range (maximum {max:#x})")]
    Field {
        /// The whole text.
        text: String,
        /// Which field.
        what: &'static str,
        /// The value given.
        value: u32,
        /// The largest allowed value.
        max: u32,
    },
    /// The range text lacks the `-`.
    #[error("`{0}` is not a PCI range; write SEG:BB:DD.F-BB:DD.F[@ENDPOINT_START], e.g. 0000:00:00.0-00:1f.7")]
    Range(String),
    /// The end of a range is before its start.
    #[error("`{0}`: the range ends before it starts")]
    Reversed(String),
    /// The endpoint start is not a number.
    #[error("`{0}`: ENDPOINT_START must be a number (decimal or 0x-prefixed hex)")]
    Endpoint(String),
    /// The endpoint ids of the range do not fit in 32 bits.
    #[error("`{0}`: endpoint ids of this range overflow 32 bits; lower ENDPOINT_START")]
    EndpointOverflow(String),
}

/// A PCI function address: segment (domain), bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddress {
    /// PCI segment group.
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0..=31).
    pub device: u8,
    /// Function number (0..=7).
    pub function: u8,
}

impl PciAddress {
    /// The 16-bit requester id (bus << 8 | device << 3 | function).
    pub fn bdf(&self) -> u16 {
        (u16::from(self.bus) << 8) | (u16::from(self.device) << 3) | u16::from(self.function)
    }

    /// Builds an address from a segment and a 16-bit BDF.
    pub fn from_bdf(segment: u16, bdf: u16) -> Self {
        let [bus, devfn] = bdf.to_be_bytes();
        PciAddress {
            segment,
            bus,
            device: devfn >> 3,
            function: devfn & 7,
        }
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

fn hex_field(text: &str, part: &str, what: &'static str, max: u32) -> Result<u32, ParseError> {
    if part.is_empty() || part.len() > 4 {
        return Err(ParseError::Address(text.to_string()));
    }
    let value = u32::from_str_radix(part, 16).map_err(|_| ParseError::Address(text.to_string()))?;
    if value > max {
        return Err(ParseError::Field {
            text: text.to_string(),
            what,
            value,
            max,
        });
    }
    Ok(value)
}

/// Parses `BB:DD.F` (no segment) with `segment` filled in.
fn parse_bdf(text: &str, segment: u16, whole: &str) -> Result<PciAddress, ParseError> {
    let (bus, devfn) = text
        .split_once(':')
        .ok_or_else(|| ParseError::Address(whole.to_string()))?;
    let (dev, func) = devfn
        .split_once('.')
        .ok_or_else(|| ParseError::Address(whole.to_string()))?;
    // The `max` bounds make the narrowing casts lossless.
    Ok(PciAddress {
        segment,
        bus: hex_field(whole, bus, "bus", 0xff)? as u8,
        device: hex_field(whole, dev, "device", 0x1f)? as u8,
        function: hex_field(whole, func, "function", 7)? as u8,
    })
}

/// Parses `SEG:BB:DD.F` or `BB:DD.F` (segment 0).
fn parse_address(text: &str, default_segment: u16) -> Result<PciAddress, ParseError> {
    match text.matches(':').count() {
        1 => parse_bdf(text, default_segment, text),
        2 => {
            let (seg, rest) = text
                .split_once(':')
                .ok_or_else(|| ParseError::Address(text.to_string()))?;
            let segment = hex_field(text, seg, "segment", 0xffff)? as u16;
            parse_bdf(rest, segment, text)
        }
        _ => Err(ParseError::Address(text.to_string())),
    }
}

impl FromStr for PciAddress {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_address(s.trim(), 0)
    }
}

/// A range of PCI functions translated by the IOMMU, and the endpoint id of its first function.
///
/// Endpoint id of a function = ((segment - first.segment) << 16) + (bdf - first.bdf) + endpoint_start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciRange {
    /// First function of the range (segment and BDF).
    pub first: PciAddress,
    /// Last function of the range (segment and BDF), inclusive.
    pub last: PciAddress,
    /// Endpoint id of `first`.
    pub endpoint_start: u32,
}

impl PciRange {
    /// Validates and builds a range.
    pub fn new(
        first: PciAddress,
        last: PciAddress,
        endpoint_start: u32,
    ) -> Result<Self, ParseError> {
        let text = format!("{first}-{last}@{endpoint_start:#x}");
        if last.segment < first.segment || last.bdf() < first.bdf() {
            return Err(ParseError::Reversed(text));
        }
        let span =
            (u64::from(last.segment - first.segment) << 16) + u64::from(last.bdf() - first.bdf());
        if u64::from(endpoint_start) + span > u64::from(u32::MAX) {
            return Err(ParseError::EndpointOverflow(text));
        }
        Ok(PciRange {
            first,
            last,
            endpoint_start,
        })
    }

    /// The endpoint id the guest computes for `addr`, if `addr` is in this range.
    pub fn endpoint_of(&self, addr: PciAddress) -> Option<u32> {
        let in_segments = (self.first.segment..=self.last.segment).contains(&addr.segment);
        let in_bdfs = (self.first.bdf()..=self.last.bdf()).contains(&addr.bdf());
        if !(in_segments && in_bdfs) {
            return None;
        }
        let off = (u32::from(addr.segment - self.first.segment) << 16)
            + u32::from(addr.bdf() - self.first.bdf());
        self.endpoint_start.checked_add(off)
    }

    /// Whether two ranges can describe the same function.
    pub fn overlaps(&self, other: &PciRange) -> bool {
        let segs =
            self.first.segment <= other.last.segment && other.first.segment <= self.last.segment;
        let bdfs = self.first.bdf() <= other.last.bdf() && other.first.bdf() <= self.last.bdf();
        segs && bdfs
    }
}

impl FromStr for PciRange {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (span, endpoint) = match s.split_once('@') {
            Some((span, ep)) => (span, Some(ep)),
            None => (s, None),
        };
        let (start, end) = span
            .split_once('-')
            .ok_or_else(|| ParseError::Range(s.to_string()))?;
        let first = parse_address(start, 0)?;
        // The end may omit the segment: it then shares the start's segment.
        let last = parse_address(end, first.segment)?;
        let endpoint_start = match endpoint {
            None => u32::from(first.bdf()),
            Some(ep) => parse_u32(ep).ok_or_else(|| ParseError::Endpoint(s.to_string()))?,
        };
        PciRange::new(first, last, endpoint_start).map_err(|e| match e {
            ParseError::Reversed(_) => ParseError::Reversed(s.to_string()),
            ParseError::EndpointOverflow(_) => ParseError::EndpointOverflow(s.to_string()),
            other => other,
        })
    }
}

/// Parses a decimal or `0x` hexadecimal u32.
pub fn parse_u32(text: &str) -> Option<u32> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a: PciAddress = "0000:00:03.0".parse().unwrap();
        assert_eq!(a.bdf(), 0x18);
        assert_eq!(a.to_string(), "0000:00:03.0");
        let b: PciAddress = "1:ff:1f.7".parse().unwrap();
        assert_eq!((b.segment, b.bdf()), (1, 0xffff));
        assert_eq!(PciAddress::from_bdf(1, 0xffff), b);
        assert_eq!("00:04.1".parse::<PciAddress>().unwrap().bdf(), 0x21);
    }

    #[test]
    fn bad_addresses() {
        for bad in [
            "",
            "0000:00:03",
            "00.03.0",
            "0000:00:20.0",
            "0000:00:03.8",
            "x:00:03.0",
            "0000:100:03.0",
            "1:2:3:4.0",
            "12345:00:00.0",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad} accepted");
        }
        let err = "0000:00:20.0".parse::<PciAddress>().unwrap_err();
        assert!(
            err.to_string().contains("device 0x20 is out of range"),
            "{err}"
        );
    }

    #[test]
    fn ranges() {
        let r: PciRange = "0000:00:00.0-00:1f.7".parse().unwrap();
        assert_eq!(
            (r.first.bdf(), r.last.bdf(), r.endpoint_start),
            (0, 0xff, 0)
        );
        assert_eq!(r.endpoint_of("00:04.0".parse().unwrap()), Some(0x20));
        assert_eq!(r.endpoint_of("01:00.0".parse().unwrap()), None);
        let r: PciRange = "0000:00:04.0-00:05.7@0x100".parse().unwrap();
        assert_eq!(r.endpoint_of("00:05.0".parse().unwrap()), Some(0x108));
        let r: PciRange = "0000:00:00.0-0001:00:00.0@7".parse().unwrap();
        assert_eq!(
            r.endpoint_of("0001:00:00.0".parse().unwrap()),
            Some(7 + 0x10000)
        );
    }

    #[test]
    fn bad_ranges() {
        assert!(matches!(
            "0000:00:03.0".parse::<PciRange>(),
            Err(ParseError::Range(_))
        ));
        assert!(matches!(
            "0000:00:05.0-00:04.0".parse::<PciRange>(),
            Err(ParseError::Reversed(_))
        ));
        assert!(matches!(
            "0000:00:00.0-00:01.0@zz".parse::<PciRange>(),
            Err(ParseError::Endpoint(_))
        ));
        assert!(matches!(
            "0000:00:00.0-00:01.0@0xffffffff".parse::<PciRange>(),
            Err(ParseError::EndpointOverflow(_))
        ));
    }

    #[test]
    fn overlap() {
        let a: PciRange = "0000:00:00.0-00:03.7".parse().unwrap();
        let b: PciRange = "0000:00:03.7-00:05.0".parse().unwrap();
        let c: PciRange = "0000:00:04.0-00:05.0".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }
}
