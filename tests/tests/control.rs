//! The control socket (docs/CONTROL.md) and the `ctl` subcommand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;

use serde_json::Value;
use vhost_user_iommu_control::Request as Ctl;
use vhost_user_iommu_tests::proto::status::OK;
use vhost_user_iommu_tests::{daemon, Daemon};

#[test]
fn control_socket_defaults_to_socket_dot_ctl() {
    let daemon = Daemon::start_default_control(&[]);
    assert!(daemon.control.ends_with("sock.ctl"));
    let st = daemon.ctl().status();
    assert_eq!(st["connected"].as_bool(), Some(false), "{st}");
}

fn raw_line(s: &mut UnixStream, r: &mut BufReader<UnixStream>, line: &str) -> Value {
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut out = String::new();
    r.read_line(&mut out).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("response {out:?} is not JSON: {e}"))
}

#[test]
fn bad_requests_get_an_error_line_and_the_connection_stays_usable() {
    let daemon = Daemon::start(&[]);
    let mut s = UnixStream::connect(&daemon.control).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for bad in [
        "this is not json",
        "{\"cmd\":\"no-such-command\"}",
        "{\"cmd\":\"mappings\"}",
        "{\"cmd\":\"translate\",\"endpoint\":1,\"iova\":0,\"access\":\"z\"}",
        "[1,2,3]",
        "{}",
    ] {
        let v = raw_line(&mut s, &mut r, bad);
        assert_eq!(v["ok"].as_bool(), Some(false), "{bad} -> {v}");
        assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{bad} -> {v}"
        );
    }
    let v = raw_line(&mut s, &mut r, "{\"cmd\":\"status\"}");
    assert_eq!(v["ok"].as_bool(), Some(true), "{v}");
    // Several requests on one connection, answered in order.
    s.write_all(b"{\"cmd\":\"domains\"}\n{\"cmd\":\"endpoints\"}\n{\"cmd\":\"counters\"}\n")
        .unwrap();
    for _ in 0..3 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"].as_bool(), Some(true), "{v}");
    }
}

#[test]
fn mappings_pages_follow_next() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect();
    let mut ctl = daemon.ctl();
    assert_eq!(d.attach(4, 1), OK);
    for i in 0..25u64 {
        assert_eq!(d.map(4, i * 0x10000, i * 0x10000 + 0xfff, 0, 1), OK);
    }
    let mut got = Vec::new();
    let mut start = 0u64;
    loop {
        let page = ctl.must(&Ctl::Mappings {
            domain: 4,
            start: Some(start),
            limit: Some(10),
        });
        let list = page["mappings"].as_array().unwrap();
        assert!(list.len() <= 10);
        got.extend(list.iter().map(|m| m["virt_start"].as_u64().unwrap()));
        match page["next"].as_u64() {
            Some(n) => start = n,
            None => break,
        }
    }
    let want: Vec<u64> = (0..25u64).map(|i| i * 0x10000).collect();
    assert_eq!(got, want);
    // `start` inside the list.
    let page = ctl.must(&Ctl::Mappings {
        domain: 4,
        start: Some(0x5_0001),
        limit: Some(2),
    });
    let firsts: Vec<u64> = page["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["virt_start"].as_u64().unwrap())
        .collect();
    assert_eq!(firsts, vec![0x6_0000, 0x7_0000]);
    assert_eq!(page["next"].as_u64(), Some(0x8_0000));
}

#[test]
fn ctl_subcommand_prints_json() {
    let daemon = Daemon::start(&[]);
    let mut d = daemon.connect();
    assert_eq!(d.attach(2, 9), OK);
    let out = Command::new(daemon::binary())
        .arg("ctl")
        .arg("--control-socket")
        .arg(&daemon.control)
        .arg("endpoints")
        .output()
        .expect("run ctl");
    assert!(out.status.success(), "ctl endpoints: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ctl prints JSON");
    let text = v.to_string();
    assert!(text.contains('9'), "endpoint 9 missing from {text}");
    let out = Command::new(daemon::binary())
        .args(["ctl", "--control-socket"])
        .arg(daemon.dir().join("missing.ctl"))
        .arg("status")
        .output()
        .expect("run ctl");
    assert!(
        !out.status.success(),
        "ctl against a missing socket must fail"
    );
    assert!(
        !out.stderr.is_empty(),
        "ctl against a missing socket must say why"
    );
}

/// Clients are served 16 at a time (docs/VMM-TRUST.md): one more gets an error line and is
/// closed; once a client leaves, the next is served.
#[test]
fn concurrent_clients_are_bounded() {
    let daemon = Daemon::start(&[]);
    let connect = || {
        let s = UnixStream::connect(&daemon.control).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    };
    // Each of the 16 has been served once, so each holds its slot.
    let mut held: Vec<_> = (0..16)
        .map(|_| {
            let (mut s, mut r) = connect();
            let v = raw_line(&mut s, &mut r, r#"{"cmd":"status"}"#);
            assert_eq!(v["ok"], true, "{v}");
            (s, r)
        })
        .collect();
    let (_s, mut r) = connect();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("too many control clients"),
        "{v}"
    );
    line.clear();
    assert_eq!(
        r.read_line(&mut line).unwrap(),
        0,
        "closed after the refusal"
    );
    // One leaves: a new client is served.
    held.pop();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (mut s, mut r) = connect();
        let v = raw_line(&mut s, &mut r, r#"{"cmd":"status"}"#);
        if v["ok"] == true {
            assert!(v["result"]["connected"].is_boolean(), "{v}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no slot came free: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
