//! Feature and protocol negotiation, GET_CONFIG / SET_CONFIG.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vhost_user_iommu_tests::proto::{feature, Config, CONFIG_LEN};
use vhost_user_iommu_tests::{Daemon, Options};

const STANDARD: [(u64, &str); 7] = [
    (feature::VERSION_1, "VERSION_1"),
    (feature::INPUT_RANGE, "INPUT_RANGE"),
    (feature::DOMAIN_RANGE, "DOMAIN_RANGE"),
    (feature::MAP_UNMAP, "MAP_UNMAP"),
    (feature::PROBE, "PROBE"),
    (feature::MMIO, "MMIO"),
    (feature::PROTOCOL_FEATURES, "VHOST_USER_F_PROTOCOL_FEATURES"),
];

#[test]
fn offers_the_standard_features_and_config_protocol() {
    let daemon = Daemon::start(&[]);
    let d = daemon.connect();
    for (bit, name) in STANDARD {
        assert_ne!(d.offered & bit, 0, "{name} not offered ({:#x})", d.offered);
    }
    assert_ne!(
        d.offered & feature::BYPASS_CONFIG,
        0,
        "BYPASS_CONFIG not offered"
    );
    assert_eq!(
        d.offered & feature::BYPASS,
        0,
        "legacy BYPASS offered without --legacy-bypass (new devices SHOULD NOT offer it)"
    );
    assert!(
        d.protocol_offered
            .contains(VhostUserProtocolFeatures::CONFIG),
        "protocol feature CONFIG not offered: {:?}",
        d.protocol_offered
    );
    let st = daemon.ctl().status();
    // The control socket reports the device's virtio features; transport bits (ring features,
    // VHOST_USER_F_PROTOCOL_FEATURES) may or may not be included.
    let device_bits = 0xff_ffff | feature::VERSION_1;
    let offered = st["features_offered"].as_u64().unwrap();
    assert_eq!(offered & device_bits, d.offered & device_bits, "{st}");
    assert_eq!(st["connected"].as_bool(), Some(true));
    let acked = st["features_acked"].as_u64().unwrap();
    let standard = d.acked & !feature::PROTOCOL_FEATURES;
    assert_eq!(
        acked & standard,
        standard,
        "daemon's acked features {acked:#x}"
    );
}

#[test]
fn legacy_bypass_flag_offers_bit3_instead_of_bypass_config() {
    let daemon = Daemon::start(&["--legacy-bypass"]);
    let d = daemon.connect();
    assert_ne!(d.offered & feature::BYPASS, 0, "legacy BYPASS not offered");
    assert_eq!(
        d.offered & feature::BYPASS_CONFIG,
        0,
        "BYPASS_CONFIG must never be offered together with legacy BYPASS"
    );
    for (bit, name) in STANDARD {
        assert_ne!(d.offered & bit, 0, "{name} not offered");
    }
}

#[test]
fn default_config_is_well_formed() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect();
    let c = d.config();
    assert_ne!(c.page_size_mask, 0, "page_size_mask needs at least one bit");
    assert!(c.input_start <= c.input_end);
    assert!(c.domain_start <= c.domain_end);
    assert!(
        c.probe_size >= 24,
        "probe_size {} cannot hold the MSI RESV_MEM",
        c.probe_size
    );
    assert_eq!(c.bypass, 0, "bypass defaults to 0 without --bypass");
    assert_eq!(c.reserved, [0; 3]);
    check_status_config(&daemon, &c);
}

fn check_status_config(daemon: &Daemon, c: &Config) {
    let st = daemon.ctl().status();
    let cfg = &st["config"];
    assert_eq!(cfg["page_size_mask"].as_u64(), Some(c.page_size_mask));
    assert_eq!(cfg["input_start"].as_u64(), Some(c.input_start));
    assert_eq!(cfg["input_end"].as_u64(), Some(c.input_end));
    assert_eq!(
        cfg["domain_start"].as_u64(),
        Some(u64::from(c.domain_start))
    );
    assert_eq!(cfg["domain_end"].as_u64(), Some(u64::from(c.domain_end)));
    assert_eq!(cfg["probe_size"].as_u64(), Some(u64::from(c.probe_size)));
    assert_eq!(cfg["bypass"].as_u64(), Some(u64::from(c.bypass)));
}

#[test]
fn config_reflects_the_flags() {
    let daemon = Daemon::start(&[
        "--page-size-mask",
        "0x40201000",
        "--input-range",
        "0x10000-0xffffffffff",
        "--domain-range",
        "1-1000",
        "--bypass",
    ]);
    let mut d = daemon.connect();
    let c = d.config();
    assert_eq!(c.page_size_mask, 0x4020_1000);
    assert_eq!((c.input_start, c.input_end), (0x10000, 0xff_ffff_ffff));
    assert_eq!((c.domain_start, c.domain_end), (1, 1000));
    assert_eq!(c.bypass, 1, "--bypass must set config.bypass");
    assert_eq!(c.reserved, [0; 3]);
    check_status_config(&daemon, &c);
}

#[test]
fn partial_get_config_reads_single_fields() {
    let daemon = Daemon::start(&["--page-size-mask", "0x1000", "--bypass"]);
    let mut d = daemon.connect();
    let whole = d.config_bytes();
    assert_eq!(whole.len(), CONFIG_LEN);
    let (_, mask) =
        d.fe.get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
            .expect("GET_CONFIG page_size_mask");
    assert_eq!(mask, 0x1000u64.to_le_bytes());
    let (_, bypass) =
        d.fe.get_config(36, 1, VhostUserConfigFlags::WRITABLE, &[0u8; 1])
            .expect("GET_CONFIG bypass");
    assert_eq!(bypass, [1]);
    let (_, probe) =
        d.fe.get_config(32, 4, VhostUserConfigFlags::WRITABLE, &[0u8; 4])
            .expect("GET_CONFIG probe_size");
    assert_eq!(probe, whole[32..36]);
}

fn outcome(v: &serde_json::Value) -> (&str, Option<&str>, Option<u64>) {
    (
        v["outcome"].as_str().expect("outcome"),
        v["reason"].as_str(),
        v["phys"].as_u64(),
    )
}

#[test]
fn set_config_bypass_is_honoured() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect();
    assert_ne!(d.acked & feature::BYPASS_CONFIG, 0);
    let mut ctl = daemon.ctl();
    let iova = 0x1234_5000;

    assert_eq!(d.config().bypass, 0);
    let t = ctl.translate(5, iova, "r");
    assert_eq!(outcome(&t), ("fault", Some("domain"), None), "{t}");

    d.set_bypass(1);
    assert_eq!(
        d.config().bypass,
        1,
        "SET_CONFIG bypass=1 not visible in GET_CONFIG"
    );
    assert_eq!(ctl.status()["config"]["bypass"].as_u64(), Some(1));
    let t = ctl.translate(5, iova, "rw");
    assert_eq!(outcome(&t), ("bypass", None, Some(iova)), "{t}");

    // An attached endpoint is governed by its domain, not by the global bypass.
    assert_eq!(d.attach(1, 6), 0);
    let t = ctl.translate(6, iova, "r");
    assert_eq!(outcome(&t), ("fault", Some("mapping"), None), "{t}");

    d.set_bypass(0);
    assert_eq!(
        d.config().bypass,
        0,
        "SET_CONFIG bypass=0 not visible in GET_CONFIG"
    );
    let t = ctl.translate(5, iova, "r");
    assert_eq!(outcome(&t), ("fault", Some("domain"), None), "{t}");
}

#[test]
fn boot_bypass_lets_unattached_endpoints_through() {
    let daemon = Daemon::start(&["--bypass"]);
    let _d = daemon.connect();
    let t = daemon.ctl().translate(3, 0xabc_d000, "w");
    assert_eq!(outcome(&t), ("bypass", None, Some(0xabc_d000)), "{t}");
}

#[test]
fn legacy_bypass_negotiated_bypasses_unattached_endpoints() {
    let daemon = Daemon::start(&["--legacy-bypass"]);
    let d = daemon.connect_with(&Options {
        features: Some(feature::MODERN | feature::BYPASS),
        ..Options::default()
    });
    assert_ne!(d.acked & feature::BYPASS, 0);
    let t = daemon.ctl().translate(3, 0x5000, "r");
    assert_eq!(outcome(&t), ("bypass", None, Some(0x5000)), "{t}");
}

#[test]
fn legacy_bypass_offered_but_not_acked_does_not_bypass() {
    let daemon = Daemon::start(&["--legacy-bypass"]);
    let d = daemon.connect_with(&Options {
        features: Some(feature::MODERN),
        ..Options::default()
    });
    assert_eq!(d.acked & feature::BYPASS, 0);
    let t = daemon.ctl().translate(3, 0x5000, "r");
    assert_eq!(outcome(&t), ("fault", Some("domain"), None), "{t}");
}

#[test]
fn driver_writes_to_read_only_config_fields_change_nothing() {
    let daemon = Daemon::start(&["--page-size-mask", "0x1000", "--domain-range", "1-10"]);
    let mut d = daemon.connect();
    let before = d.config_bytes();
    // The driver may only write `bypass`; anything else must leave the config as it was
    // (the write may be rejected or ignored).
    let _ =
        d.fe.set_config(0, VhostUserConfigFlags::WRITABLE, &[0xff; 8]);
    let _ = d.fe.set_config(24, VhostUserConfigFlags::WRITABLE, &[0; 8]);
    let _ =
        d.fe.set_config(32, VhostUserConfigFlags::WRITABLE, &[1, 0, 0, 0]);
    let _ =
        d.fe.set_config(37, VhostUserConfigFlags::WRITABLE, &[7, 7, 7]);
    assert_eq!(d.config_bytes(), before, "read-only config fields changed");
    // The device still works and the config's rules still apply.
    assert_eq!(d.attach(1, 3), 0);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0, 3), 0);
}

#[test]
fn bypass_survives_a_device_reset() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect();
    if !d
        .protocol_offered
        .contains(VhostUserProtocolFeatures::RESET_DEVICE)
    {
        eprintln!("RESET_DEVICE not offered; nothing to check");
        return;
    }
    assert_eq!(d.attach(1, 3), 0);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0, 3), 0);
    d.set_bypass(1);
    d.fe.reset_device().expect("RESET_DEVICE");
    assert_eq!(d.config().bypass, 1, "`bypass` SHOULD survive device reset");
    let mut ctl = daemon.ctl();
    let st = ctl.status();
    assert_eq!(
        st["domains"].as_u64(),
        Some(0),
        "a reset device has no domains: {st}"
    );
    assert_eq!(
        st["mappings"].as_u64(),
        Some(0),
        "a reset device has no mappings: {st}"
    );
    let t = ctl.translate(3, 0x1000, "r");
    assert_eq!(outcome(&t), ("bypass", None, Some(0x1000)), "{t}");
}

#[test]
fn bypass_never_reads_back_other_than_0_or_1() {
    // "The device MUST NOT present a value different than 0 or 1 in bypass."
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect();
    for v in [2u8, 0x80, 0xff, 0xfe] {
        let _ = d.fe.set_config(36, VhostUserConfigFlags::WRITABLE, &[v]);
        let b = d.config().bypass;
        assert!(b <= 1, "bypass reads back as {b} after a driver wrote {v}");
    }
    d.set_bypass(0);
    assert_eq!(d.config().bypass, 0);
}

#[test]
fn boot_bypass_applies_even_if_the_driver_does_not_accept_bypass_config() {
    // "This applies even if the driver does not accept the VIRTIO_IOMMU_F_BYPASS_CONFIG
    // feature and the device initializes field bypass to 1."
    let daemon = Daemon::start(&["--bypass"]);
    let mut d = daemon.connect_with(&Options {
        features: Some(feature::MODERN & !feature::BYPASS_CONFIG),
        ..Options::default()
    });
    assert_eq!(d.acked & feature::BYPASS_CONFIG, 0);
    assert_eq!(d.config().bypass, 1);
    let t = daemon.ctl().translate(3, 0x7000, "r");
    assert_eq!(outcome(&t), ("bypass", None, Some(0x7000)), "{t}");
}

#[test]
fn a_frontend_without_protocol_features_is_served() {
    // Without VHOST_USER_F_PROTOCOL_FEATURES the rings are enabled by SET_FEATURES and there is
    // no config access; requests must still work.
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect_with(&Options {
        protocol_features: false,
        ..Options::default()
    });
    assert_eq!(d.acked & feature::PROTOCOL_FEATURES, 0);
    assert_eq!(d.attach(1, 3), 0);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x5000, 3), 0);
    let t = daemon.ctl().translate(3, 0x1010, "r");
    assert_eq!(outcome(&t), ("translated", None, Some(0x5010)), "{t}");
}
