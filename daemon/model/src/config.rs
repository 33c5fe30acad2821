//! Device configuration: what the daemon tells the guest and which limits it enforces.
//!
//! Built once at start from the command line and validated as a whole; errors name the option and
//! say what to fix.

use std::fmt;
use std::str::FromStr;

use crate::protocol::{RESV_MEM_T_MSI, RESV_MEM_T_RESERVED};

/// Size of one RESV_MEM property in the PROBE buffer.
pub const RESV_MEM_PROP_SIZE: u32 = 24;
/// Largest probe buffer the daemon accepts to advertise.
pub const MAX_PROBE_SIZE: u32 = 64 * 1024;
/// Smallest granule accepted: 4 KiB (the mapping table stores flags in the low address bits).
pub const MIN_GRANULE_SHIFT: u32 = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{option}: cannot parse {value:?}: {why}")]
    Parse {
        option: &'static str,
        value: String,
        why: String,
    },
    #[error("--page-size-mask {0:#x}: must have a bit set at 4 KiB (bit 12) or above, and none below it")]
    PageSizeMask(u64),
    #[error("--input-range {0:#x}-{1:#x}: start must not exceed end")]
    InputRange(u64, u64),
    #[error("--input-range {start:#x}-{end:#x}: start and end+1 must be aligned to the granule {granule:#x}")]
    InputRangeAlign { start: u64, end: u64, granule: u64 },
    #[error("--domain-range {0}-{1}: start must not exceed end")]
    DomainRange(u32, u32),
    #[error("--probe-size {size}: must be a multiple of 4, at most {MAX_PROBE_SIZE}, and hold the {regions} reserved region(s) and, unless --pasid-bits is 0, the PASID extension's properties ({need} bytes)")]
    ProbeSize {
        size: u32,
        regions: usize,
        need: u32,
    },
    #[error("--reserved-region {0:#x}-{1:#x}: start must not exceed end")]
    ReservedRegion(u64, u64),
    #[error("--reserved-region: regions {0:#x}-{1:#x} and {2:#x}-{3:#x} overlap")]
    ReservedOverlap(u64, u64, u64, u64),
    #[error("--max-mappings 0: at least one mapping must be allowed")]
    MaxMappings,
    #[error("--pasid-bits {0}: PASIDs are at most 20 bits wide (0 turns the extension off)")]
    PasidBits(u8),
}

/// Parse a u64 written in decimal or with a 0x prefix.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let r = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(&hex.replace('_', ""), 16)
    } else {
        s.replace('_', "").parse::<u64>()
    };
    r.map_err(|e| format!("{e} (expected a decimal or 0x-prefixed hex number)"))
}

pub fn parse_u32(s: &str) -> Result<u32, String> {
    let v = parse_u64(s)?;
    u32::try_from(v).map_err(|_| format!("{v:#x} does not fit in 32 bits"))
}

/// An inclusive range written `START-END`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range64 {
    pub start: u64,
    pub end: u64,
}

impl FromStr for Range64 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| "expected START-END (inclusive), e.g. 0-0xffffffffff".to_string())?;
        Ok(Range64 {
            start: parse_u64(a)?,
            end: parse_u64(b)?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range32 {
    pub start: u32,
    pub end: u32,
}

impl FromStr for Range32 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| "expected START-END (inclusive), e.g. 1-65535".to_string())?;
        Ok(Range32 {
            start: parse_u32(a)?,
            end: parse_u32(b)?,
        })
    }
}

/// Which endpoint ids exist. The VMM's topology (VIOT / device tree) decides; by default the
/// device accepts any id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum EndpointSet {
    #[default]
    Any,
    /// Sorted, non-overlapping inclusive ranges.
    Ranges(Vec<(u32, u32)>),
}

impl EndpointSet {
    pub fn contains(&self, id: u32) -> bool {
        match self {
            EndpointSet::Any => true,
            EndpointSet::Ranges(r) => {
                // Binary search over sorted ranges.
                let idx = r.partition_point(|&(s, _)| s <= id);
                idx > 0 && r[idx - 1].1 >= id
            }
        }
    }
}

impl FromStr for EndpointSet {
    type Err = String;
    /// `any`, or a comma-separated list of ids and inclusive ranges: `0-255,1024,4096-4100`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "any" {
            return Ok(EndpointSet::Any);
        }
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (parse_u32(a)?, parse_u32(b)?),
                None => {
                    let v = parse_u32(part)?;
                    (v, v)
                }
            };
            if a > b {
                return Err(format!("range {part:?}: start exceeds end"));
            }
            ranges.push((a, b));
        }
        if ranges.is_empty() {
            return Err("expected `any` or a list like 0-255,1024".to_string());
        }
        ranges.sort_unstable();
        // Merge overlapping or adjacent ranges.
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if u64::from(s) <= u64::from(last.1) + 1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Ok(EndpointSet::Ranges(merged))
    }
}

impl fmt::Display for EndpointSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointSet::Any => write!(f, "any"),
            EndpointSet::Ranges(r) => {
                let parts: Vec<String> = r.iter().map(|(s, e)| format!("{s}-{e}")).collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

/// A reserved region reported by PROBE (RESV_MEM property).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedRegion {
    pub start: u64,
    pub end: u64,
    /// RESV_MEM_T_RESERVED or RESV_MEM_T_MSI.
    pub subtype: u8,
}

impl FromStr for ReservedRegion {
    type Err = String;
    /// `START-END:msi` or `START-END:reserved` (inclusive).
    fn from_str(s: &str) -> Result<Self, String> {
        let (range, kind) = s
            .rsplit_once(':')
            .ok_or_else(|| "expected START-END:msi or START-END:reserved".to_string())?;
        let r: Range64 = range.parse()?;
        let subtype = match kind {
            "msi" => RESV_MEM_T_MSI,
            "reserved" => RESV_MEM_T_RESERVED,
            other => return Err(format!("unknown kind {other:?}: use msi or reserved")),
        };
        Ok(ReservedRegion {
            start: r.start,
            end: r.end,
            subtype,
        })
    }
}

/// The x86 MSI doorbell window, reported by default.
pub const X86_MSI_REGION: ReservedRegion = ReservedRegion {
    start: 0xfee0_0000,
    end: 0xfeef_ffff,
    subtype: RESV_MEM_T_MSI,
};

/// Everything the device model needs to know, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    pub page_size_mask: u64,
    pub input_start: u64,
    pub input_end: u64,
    pub domain_start: u32,
    pub domain_end: u32,
    pub endpoints: EndpointSet,
    pub reserved: Vec<ReservedRegion>,
    pub probe_size: u32,
    /// Initial value of the config `bypass` field (after connect and after device reset).
    pub boot_bypass: bool,
    /// Offer the legacy BYPASS feature instead of BYPASS_CONFIG.
    pub legacy_bypass: bool,
    /// Upper bound on live mappings across all domains; a MAP past it gets NOMEM.
    pub max_mappings: u64,
    /// PASID width of every endpoint for the PASID / shared-table extension (docs/PASID.md);
    /// 0 turns the extension off (its feature bits are not offered).
    pub pasid_bits: u8,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            page_size_mask: !0xfff,
            input_start: 0,
            input_end: u64::MAX,
            domain_start: 0,
            domain_end: u32::MAX,
            endpoints: EndpointSet::Any,
            reserved: vec![X86_MSI_REGION],
            probe_size: 512,
            boot_bypass: false,
            legacy_bypass: false,
            max_mappings: 1 << 24,
            pasid_bits: 20,
        }
    }
}

impl DeviceConfig {
    /// The smallest page size the device supports.
    pub fn granule(&self) -> u64 {
        1u64 << self.page_size_mask.trailing_zeros()
    }

    /// The first problem of [`Self::validate_all`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.validate_all().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every problem of the configuration, in the order of the settings (a check that needs an
    /// earlier setting to be valid is skipped while it is not).
    pub fn validate_all(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let m = self.page_size_mask;
        let mask_ok = m != 0 && m.trailing_zeros() >= MIN_GRANULE_SHIFT;
        if !mask_ok {
            errors.push(ConfigError::PageSizeMask(m));
        }
        if self.input_start > self.input_end {
            errors.push(ConfigError::InputRange(self.input_start, self.input_end));
        } else if mask_ok {
            let g = self.granule();
            let end_plus_one_aligned = self
                .input_end
                .checked_add(1)
                .is_none_or(|e| e.is_multiple_of(g));
            if !self.input_start.is_multiple_of(g) || !end_plus_one_aligned {
                errors.push(ConfigError::InputRangeAlign {
                    start: self.input_start,
                    end: self.input_end,
                    granule: g,
                });
            }
        }
        if self.domain_start > self.domain_end {
            errors.push(ConfigError::DomainRange(self.domain_start, self.domain_end));
        }
        let mut sorted = self.reserved.clone();
        sorted.sort_by_key(|r| r.start);
        let mut regions_ok = true;
        for r in &sorted {
            if r.start > r.end {
                errors.push(ConfigError::ReservedRegion(r.start, r.end));
                regions_ok = false;
            }
        }
        if regions_ok {
            for w in sorted.windows(2) {
                if w[1].start <= w[0].end {
                    errors.push(ConfigError::ReservedOverlap(
                        w[0].start, w[0].end, w[1].start, w[1].end,
                    ));
                }
            }
        }
        if self.pasid_bits > 20 {
            errors.push(ConfigError::PasidBits(self.pasid_bits));
        }
        // Regions count is bounded by the probe size check right below; the extension's
        // properties come after them.
        let ext = if self.pasid_bits > 0 {
            crate::protocol::PROBE_PROPERTIES_SIZE as u32
        } else {
            0
        };
        let need = RESV_MEM_PROP_SIZE
            .saturating_mul(u32::try_from(self.reserved.len()).unwrap_or(u32::MAX))
            .saturating_add(ext);
        if !self.probe_size.is_multiple_of(4)
            || self.probe_size > MAX_PROBE_SIZE
            || self.probe_size < need
        {
            errors.push(ConfigError::ProbeSize {
                size: self.probe_size,
                regions: self.reserved.len(),
                need,
            });
        }
        if self.max_mappings == 0 {
            errors.push(ConfigError::MaxMappings);
        }
        errors
    }

    /// Does `[start, end]` overlap a reserved region?
    pub fn overlaps_reserved(&self, start: u64, end: u64) -> Option<&ReservedRegion> {
        self.reserved
            .iter()
            .find(|r| r.start <= end && start <= r.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0x1000"), Ok(0x1000));
        assert_eq!(parse_u64("4096"), Ok(4096));
        assert_eq!(parse_u64("0xffff_ffff"), Ok(0xffff_ffff));
        assert!(parse_u64("12k").is_err());
        assert!(parse_u32("0x100000000").is_err());
    }

    #[test]
    fn endpoint_sets() {
        let s: EndpointSet = "8, 0-3,4-5,100".parse().unwrap();
        assert_eq!(s, EndpointSet::Ranges(vec![(0, 5), (8, 8), (100, 100)]));
        for (id, inside) in [
            (0, true),
            (5, true),
            (6, false),
            (8, true),
            (99, false),
            (100, true),
        ] {
            assert_eq!(s.contains(id), inside, "id {id}");
        }
        assert!("any".parse::<EndpointSet>().unwrap().contains(u32::MAX));
        assert!("5-1".parse::<EndpointSet>().is_err());
        assert!("".parse::<EndpointSet>().is_err());
        assert_eq!(s.to_string(), "0-5,8-8,100-100");
    }

    #[test]
    fn reserved_regions() {
        let r: ReservedRegion = "0xfee00000-0xfeefffff:msi".parse().unwrap();
        assert_eq!(r, X86_MSI_REGION);
        assert!("0-1:bogus".parse::<ReservedRegion>().is_err());
        assert!("0x1000:msi".parse::<ReservedRegion>().is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let ok = DeviceConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.granule(), 0x1000);

        let c = DeviceConfig {
            page_size_mask: 0x800,
            ..ok.clone()
        };
        assert_eq!(c.validate(), Err(ConfigError::PageSizeMask(0x800)));
        let c = DeviceConfig {
            page_size_mask: 0,
            ..ok.clone()
        };
        assert!(c.validate().is_err());
        let c = DeviceConfig {
            input_start: 10,
            input_end: 5,
            ..ok.clone()
        };
        assert_eq!(c.validate(), Err(ConfigError::InputRange(10, 5)));
        let c = DeviceConfig {
            input_start: 0,
            input_end: 0x1000,
            ..ok.clone()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InputRangeAlign { .. })
        ));
        let c = DeviceConfig {
            domain_start: 9,
            domain_end: 1,
            ..ok.clone()
        };
        assert_eq!(c.validate(), Err(ConfigError::DomainRange(9, 1)));
        let c = DeviceConfig {
            probe_size: 20,
            ..ok.clone()
        };
        assert!(matches!(c.validate(), Err(ConfigError::ProbeSize { .. })));
        let c = DeviceConfig {
            probe_size: 26,
            ..ok.clone()
        };
        assert!(matches!(c.validate(), Err(ConfigError::ProbeSize { .. })));
        let c = DeviceConfig {
            reserved: vec![
                ReservedRegion {
                    start: 0,
                    end: 0x1fff,
                    subtype: 0,
                },
                ReservedRegion {
                    start: 0x1000,
                    end: 0x2fff,
                    subtype: 0,
                },
            ],
            ..ok.clone()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ReservedOverlap(..))
        ));
        let c = DeviceConfig {
            max_mappings: 0,
            ..ok
        };
        assert_eq!(c.validate(), Err(ConfigError::MaxMappings));
    }

    #[test]
    fn every_problem_is_reported() {
        let c = DeviceConfig {
            page_size_mask: 0x800,
            domain_start: 9,
            domain_end: 3,
            max_mappings: 0,
            ..DeviceConfig::default()
        };
        assert_eq!(
            c.validate_all(),
            vec![
                ConfigError::PageSizeMask(0x800),
                ConfigError::DomainRange(9, 3),
                ConfigError::MaxMappings
            ]
        );
        assert_eq!(c.validate(), Err(ConfigError::PageSizeMask(0x800)));
        assert!(DeviceConfig::default().validate_all().is_empty());
    }
}
