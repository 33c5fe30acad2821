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
    let ctl = |args: &[&str]| {
        let out = Command::new(daemon::binary())
            .arg("ctl")
            .arg("--control-socket")
            .arg(&daemon.control)
            .args(args)
            .output()
            .expect("run ctl");
        assert!(out.status.success(), "ctl {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let v: Value = serde_json::from_str(&ctl(&["--json", "endpoints"])).expect("--json is JSON");
    assert_eq!(v, serde_json::json!([{"id": 9, "domain": 2}]));
    // A table for people: hex, and the same endpoint.
    let t = ctl(&["endpoints"]);
    let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows, [vec!["ENDPOINT", "DOMAIN"], vec!["9", "2"]], "{t}");
    let t = ctl(&["status"]);
    assert!(t.contains("features offered   0x"), "{t}");
    assert!(t.contains("page size mask     0xfffffffffffff000"), "{t}");
    // The vhost-user socket names the control socket too (SOCKET.ctl, the daemon's default).
    let other = Daemon::start_default_control(&[]);
    let out = Command::new(daemon::binary())
        .arg("ctl")
        .arg("--socket")
        .arg(&other.socket)
        .args(["--json", "endpoints"])
        .output()
        .expect("run ctl");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"[]\n", "{out:?}");
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
    use std::time::{Duration, Instant};
    let daemon = Daemon::start(&[]);
    // One status request on a new connection: the connection and the reply. A refused client
    // may find the connection closed before its request is written: only the reply counts.
    let ask = || {
        let mut s = UnixStream::connect(&daemon.control).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let _ = s.write_all(b"{\"cmd\":\"status\"}\n");
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        (s, r, v)
    };
    // Served, retrying while a slot is still held by a client that has just left (the
    // harness's start-up checks, or the one dropped below).
    let served = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, r, v) = ask();
            if v["ok"] == true {
                assert!(v["result"]["connected"].is_boolean(), "{v}");
                return (s, r);
            }
            assert!(Instant::now() < deadline, "never served: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut held: Vec<_> = (0..16).map(|_| served()).collect();
    let (_s, mut r, v) = ask();
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("too many control clients"),
        "{v}"
    );
    // Closed after the refusal (reset, as the request it sent was never read).
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the refused connection stays open: {other:?} {line:?}"),
    }
    assert_eq!(
        r.read_line(&mut line).unwrap(),
        0,
        "closed after the refusal"
    );
    held.pop();
    served();
}
