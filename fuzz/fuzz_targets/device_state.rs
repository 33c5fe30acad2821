//! Device state streams (docs/STATE.md) as a migration source or a restart journal could hand
//! them over: arbitrary bytes loaded into a reset device. Invariants: no panic; a refused
//! stream leaves the device in its power-on state; an accepted one is canonical (saving the
//! loaded device and loading that into another device gives the same state and bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::config::{DeviceConfig, EndpointSet};
use model::device::state::{parse_state, StreamKind};
use model::device::Device;

fn device() -> Device {
    Device::new(DeviceConfig {
        domain_start: 1,
        domain_end: 64,
        endpoints: EndpointSet::Ranges(vec![(0, 31)]),
        max_mappings: 4096,
        ..DeviceConfig::default()
    })
}

fuzz_target!(|data: &[u8]| {
    // The journal reading of the same bytes must not panic either.
    let _ = parse_state(data, StreamKind::Journal);
    let mut d = device();
    match d.load_state(data) {
        Ok(_) => {
            let saved = d.save_state();
            let mut e = device();
            assert!(e.load_state(&saved).is_ok(), "a saved state must load");
            assert_eq!(e.save_state(), saved, "saved states are canonical");
        }
        Err(_) => {
            assert!(d.is_pristine(), "a refused stream left state behind");
            assert_eq!(d.acked_features(), None, "a refused stream left features");
        }
    }
});
