//! The wire format, pinned: every request, reply and invalidation line against a literal line
//! of the format the daemon has always spoken (docs/CONTROL.md). A change here is a change of
//! the protocol.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::*;

/// `value` encodes to exactly `line`, and `line` decodes to `value`.
fn pinned<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T, line: &str) {
    assert_eq!(encode(value).unwrap(), line);
    assert_eq!(&decode::<T>(line).unwrap(), value, "{line}");
}

#[test]
fn requests() {
    let cases = [
        (Request::Status, r#"{"cmd":"status"}"#),
        (Request::Endpoints, r#"{"cmd":"endpoints"}"#),
        (Request::Domains, r#"{"cmd":"domains"}"#),
        (Request::mappings(4), r#"{"cmd":"mappings","domain":4}"#),
        (
            Request::Mappings {
                domain: 4,
                start: Some(0x5_0001),
                limit: Some(10),
            },
            r#"{"cmd":"mappings","domain":4,"limit":10,"start":327681}"#,
        ),
        (Request::Counters, r#"{"cmd":"counters"}"#),
        (Request::Faults, r#"{"cmd":"faults"}"#),
        (
            Request::translate(3, 0x1f000, Access::Read),
            r#"{"access":"r","cmd":"translate","endpoint":3,"iova":126976}"#,
        ),
        (
            Request::Translate {
                endpoint: 4,
                iova: u64::MAX,
                access: Access::Write,
                pasid: Some(9),
                privileged: true,
            },
            r#"{"access":"w","cmd":"translate","endpoint":4,"iova":18446744073709551615,"pasid":9,"privileged":true}"#,
        ),
        (
            Request::translate(0, 0, Access::ReadWrite),
            r#"{"access":"rw","cmd":"translate","endpoint":0,"iova":0}"#,
        ),
        (
            Request::translate(0, 0, Access::Exec),
            r#"{"access":"x","cmd":"translate","endpoint":0,"iova":0}"#,
        ),
        (Request::PageRequests, r#"{"cmd":"page_requests"}"#),
        (Request::Pasids, r#"{"cmd":"pasids"}"#),
        (Request::Subscribe, r#"{"cmd":"subscribe"}"#),
        (Request::Backend, r#"{"cmd":"backend"}"#),
    ];
    for (req, line) in &cases {
        pinned(req, line);
        assert_eq!(
            decode::<serde_json::Value>(line).unwrap()["cmd"],
            req.cmd(),
            "{line}"
        );
    }
}

/// Forms the daemon accepts that typed clients do not write.
#[test]
fn other_accepted_request_forms() {
    let parse = |line: &str| decode::<Request>(line).unwrap();
    assert_eq!(
        parse(r#"{"domain":1,"cmd":"mappings","start":0,"limit":null}"#),
        Request::Mappings {
            domain: 1,
            start: Some(0),
            limit: None
        }
    );
    for (spelling, access) in [
        ("read", Access::Read),
        ("write", Access::Write),
        ("readwrite", Access::ReadWrite),
        ("exec", Access::Exec),
        ("z", Access::Other("z".into())),
    ] {
        assert_eq!(
            parse(&format!(
                r#"{{"cmd":"translate","endpoint":1,"iova":2,"access":"{spelling}","pasid":null,"privileged":false}}"#
            )),
            Request::translate(1, 2, access)
        );
    }
    // Requests without fields ignore extra ones.
    assert_eq!(parse(r#"{"cmd":"status","x":[1]}"#), Request::Status);
    assert_eq!(
        encode(&Request::translate(1, 2, Access::Other("z".into()))).unwrap(),
        r#"{"access":"z","cmd":"translate","endpoint":1,"iova":2}"#
    );
}

/// The daemon answers a malformed request with `bad request: ` and these messages.
#[test]
fn request_errors() {
    let err = |line: &str| decode::<Request>(line).unwrap_err().to_string();
    let cmds = "`status`, `endpoints`, `domains`, `mappings`, `counters`, `faults`, `translate`, \
                `page_requests`, `pasids`, `subscribe`, `backend`";
    assert_eq!(err("this is not json"), "expected ident at line 1 column 2");
    assert_eq!(err("{}"), "missing field `cmd` at line 1 column 2");
    assert_eq!(
        err("[1,2,3]"),
        "invalid type: integer `1`, expected variant identifier at line 1 column 2"
    );
    assert_eq!(
        err(r#"{"cmd":"no-such-command"}"#),
        format!("unknown variant `no-such-command`, expected one of {cmds} at line 1 column 24")
    );
    assert_eq!(err(r#"{"cmd":"mappings"}"#), "missing field `domain`");
    assert_eq!(
        err(r#"{"cmd":"mappings","domain":1,"start":null}"#),
        "invalid type: null, expected u64"
    );
    assert_eq!(
        err(r#"{"cmd":"mappings","domain":1,"limit":"x"}"#),
        "invalid type: string \"x\", expected usize"
    );
    assert_eq!(
        err(r#"{"cmd":"mappings","domain":1,"x":1}"#),
        "unknown field `x`, expected one of `domain`, `start`, `limit`"
    );
    assert_eq!(
        err(r#"{"cmd":"translate","endpoint":1,"iova":0,"access":1}"#),
        "invalid type: integer `1`, expected a string"
    );
    assert_eq!(
        err(r#"{"cmd":"translate","endpoint":1,"iova":0,"access":"r","y":0}"#),
        "unknown field `y`, expected one of `endpoint`, `iova`, `access`, `pasid`, `privileged`"
    );
}

#[test]
fn error_reply() {
    pinned(
        &Reply::<StatusInfo>::Err("domain 7 does not exist".into()),
        r#"{"error":"domain 7 does not exist","ok":false}"#,
    );
    assert_eq!(
        decode::<Reply<StatusInfo>>(r#"{"ok":false}"#).unwrap(),
        Reply::Err("unknown error".into())
    );
    assert!(decode::<Reply<StatusInfo>>(r#"{"result":{}}"#).is_err());
    assert!(decode::<Reply<serde_json::Value>>(r#"{"ok":true}"#).is_err());
}

/// `Reply<T>` for a concrete result type, and the same line through [`Response`].
fn pinned_reply<T>(result: T, line: &str, req: &Request, wrap: fn(T) -> Response)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
{
    pinned(&Reply::Ok(result.clone()), line);
    let v = decode::<Reply<serde_json::Value>>(line).unwrap();
    let Reply::Ok(v) = v else { panic!("{line}") };
    let resp = Response::from_value(req, v).unwrap();
    assert_eq!(resp, wrap(result));
    assert_eq!(encode(&Reply::Ok(resp)).unwrap(), line);
}

#[test]
fn status_reply() {
    let st = StatusInfo {
        connected: true,
        connections: 2,
        features_offered: 0x1_0000_0137,
        features_acked: Some(0x1_0000_0037),
        config: ConfigInfo {
            page_size_mask: 0xffff_ffff_ffff_f000,
            input_start: 0,
            input_end: u64::MAX,
            domain_start: 0,
            domain_end: u32::MAX,
            probe_size: 512,
            bypass: 0,
            endpoints: "0-255,1024".into(),
        },
        endpoints: 2,
        domains: 1,
        mappings: 3,
        worker: WorkerInfo {
            sched: "other:100".into(),
            poll_us: 50,
            tid: Some(4242),
            sched_error: None,
        },
    };
    pinned_reply(
        st.clone(),
        concat!(
            r#"{"ok":true,"result":{"config":{"bypass":0,"domain_end":4294967295,"domain_start":0,"#,
            r#""endpoints":"0-255,1024","input_end":18446744073709551615,"input_start":0,"#,
            r#""page_size_mask":18446744073709547520,"probe_size":512},"connected":true,"#,
            r#""connections":2,"domains":1,"endpoints":2,"features_acked":4294967351,"#,
            r#""features_offered":4294967607,"mappings":3,"worker":{"poll_us":50,"#,
            r#""sched":"other:100","sched_error":null,"tid":4242}}}"#
        ),
        &Request::Status,
        Response::Status,
    );
    let before = StatusInfo {
        connected: false,
        features_acked: None,
        worker: WorkerInfo {
            tid: None,
            sched_error: Some("Operation not permitted (os error 1)".into()),
            ..st.worker.clone()
        },
        ..st
    };
    pinned_reply(
        before,
        concat!(
            r#"{"ok":true,"result":{"config":{"bypass":0,"domain_end":4294967295,"domain_start":0,"#,
            r#""endpoints":"0-255,1024","input_end":18446744073709551615,"input_start":0,"#,
            r#""page_size_mask":18446744073709547520,"probe_size":512},"connected":false,"#,
            r#""connections":2,"domains":1,"endpoints":2,"features_acked":null,"#,
            r#""features_offered":4294967607,"mappings":3,"worker":{"poll_us":50,"#,
            r#""sched":"other:100","sched_error":"Operation not permitted (os error 1)","tid":null}}}"#
        ),
        &Request::Status,
        Response::Status,
    );
}

#[test]
fn endpoints_and_domains_replies() {
    pinned_reply(
        vec![
            EndpointInfo {
                id: 3,
                domain: Some(1),
            },
            EndpointInfo {
                id: 9,
                domain: None,
            },
        ],
        r#"{"ok":true,"result":[{"domain":1,"id":3},{"domain":null,"id":9}]}"#,
        &Request::Endpoints,
        Response::Endpoints,
    );
    pinned_reply(
        vec![
            DomainInfo {
                id: 1,
                bypass: false,
                endpoints: vec![3, 4],
                mappings: 2,
                table: None,
            },
            DomainInfo {
                id: 2,
                bypass: true,
                endpoints: vec![],
                mappings: 0,
                table: Some(TableInfo {
                    format: 2,
                    cached: 5,
                    hits: 10,
                    misses: 6,
                }),
            },
        ],
        concat!(
            r#"{"ok":true,"result":[{"bypass":false,"endpoints":[3,4],"id":1,"mappings":2,"table":null},"#,
            r#"{"bypass":true,"endpoints":[],"id":2,"mappings":0,"#,
            r#""table":{"cached":5,"format":2,"hits":10,"misses":6}}]}"#
        ),
        &Request::Domains,
        Response::Domains,
    );
}

#[test]
fn mappings_reply() {
    let m = MappingInfo {
        virt_start: 0x1000,
        virt_end: 0x1fff,
        phys_start: 0x8000_0000,
        read: true,
        write: false,
        mmio: false,
    };
    pinned_reply(
        MappingPage {
            mappings: vec![m, MappingInfo { mmio: true, ..m }],
            next: Some(0x4000),
        },
        concat!(
            r#"{"ok":true,"result":{"mappings":["#,
            r#"{"mmio":false,"phys_start":2147483648,"read":true,"virt_end":8191,"virt_start":4096,"write":false},"#,
            r#"{"mmio":true,"phys_start":2147483648,"read":true,"virt_end":8191,"virt_start":4096,"write":false}],"#,
            r#""next":16384}}"#
        ),
        &Request::mappings(1),
        Response::Mappings,
    );
    pinned_reply(
        MappingPage {
            mappings: vec![],
            next: None,
        },
        r#"{"ok":true,"result":{"mappings":[],"next":null}}"#,
        &Request::mappings(1),
        Response::Mappings,
    );
}

#[test]
fn counters_reply() {
    let n = StatusCounts {
        ok: 1,
        ioerr: 2,
        unsupp: 3,
        deverr: 4,
        inval: 5,
        range: 6,
        noent: 7,
        fault: 8,
        nomem: 9,
    };
    let zero = StatusCounts::default();
    let counts = r#"{"deverr":4,"fault":8,"inval":5,"ioerr":2,"noent":7,"nomem":9,"ok":1,"range":6,"unsupp":3}"#;
    let zeros = r#"{"deverr":0,"fault":0,"inval":0,"ioerr":0,"noent":0,"nomem":0,"ok":0,"range":0,"unsupp":0}"#;
    pinned_reply(
        Counters {
            requests: RequestCounters {
                attach: n,
                detach: zero,
                map: zero,
                unmap: zero,
                probe: n,
                attach_table: zero,
                detach_table: zero,
                invalidate: n,
                attach_pasid: zero,
                detach_pasid: zero,
                page_resp: zero,
            },
            bad_buffers: 11,
            faults: FaultCounters {
                delivered: 12,
                dropped: 13,
            },
        },
        &format!(
            r#"{{"ok":true,"result":{{"bad_buffers":11,"faults":{{"delivered":12,"dropped":13}},"requests":{{"attach":{counts},"attach_pasid":{zeros},"attach_table":{zeros},"detach":{zeros},"detach_pasid":{zeros},"detach_table":{zeros},"invalidate":{counts},"map":{zeros},"page_resp":{zeros},"probe":{counts},"unmap":{zeros}}}}}}}"#
        ),
        &Request::Counters,
        |c| Response::Counters(Box::new(c)),
    );
}

#[test]
fn faults_reply() {
    pinned_reply(
        vec![
            FaultInfo {
                reason: FaultReason::Domain,
                endpoint: 3,
                address: 0x1000,
                read: true,
                write: false,
                delivered: true,
            },
            FaultInfo {
                reason: FaultReason::Mapping,
                endpoint: 4,
                address: u64::MAX,
                read: false,
                write: true,
                delivered: false,
            },
        ],
        concat!(
            r#"{"ok":true,"result":[{"address":4096,"delivered":true,"endpoint":3,"read":true,"reason":"domain","write":false},"#,
            r#"{"address":18446744073709551615,"delivered":false,"endpoint":4,"read":false,"reason":"mapping","write":true}]}"#
        ),
        &Request::Faults,
        Response::Faults,
    );
}

#[test]
fn translate_replies() {
    let req = Request::translate(3, 0x1010, Access::Read);
    let cases = [
        (
            Translation::Translated {
                phys: 0x8000_0010,
                guest_ram: Some(true),
                mapping: Some(TranslatedMapping {
                    virt_start: 0x1000,
                    virt_end: 0x1fff,
                    phys_start: 0x8000_0000,
                    read: true,
                    write: true,
                }),
            },
            concat!(
                r#"{"ok":true,"result":{"guest_ram":true,"mapping":{"phys_start":2147483648,"read":true,"#,
                r#""virt_end":8191,"virt_start":4096,"write":true},"outcome":"translated","phys":2147483664}}"#
            ),
        ),
        (
            Translation::Translated {
                phys: 0x5123,
                guest_ram: None,
                mapping: None,
            },
            r#"{"ok":true,"result":{"guest_ram":null,"mapping":null,"outcome":"translated","phys":20771}}"#,
        ),
        (
            Translation::Bypass {
                phys: 0x1010,
                guest_ram: Some(false),
            },
            r#"{"ok":true,"result":{"guest_ram":false,"outcome":"bypass","phys":4112}}"#,
        ),
        (
            Translation::Fault {
                reason: FaultReason::Mapping,
            },
            r#"{"ok":true,"result":{"outcome":"fault","reason":"mapping"}}"#,
        ),
        (
            Translation::Fault {
                reason: FaultReason::Domain,
            },
            r#"{"ok":true,"result":{"outcome":"fault","reason":"domain"}}"#,
        ),
        (
            Translation::PageRequest { grpid: 7 },
            r#"{"ok":true,"result":{"grpid":7,"outcome":"page_request"}}"#,
        ),
    ];
    for (t, line) in cases {
        pinned_reply(t, line, &req, Response::Translate);
    }
}

#[test]
fn pasid_extension_replies() {
    pinned_reply(
        vec![
            PageRequestInfo {
                endpoint: 0,
                grpid: 1,
                pasid: Some(1),
                address: 0x50000,
            },
            PageRequestInfo {
                endpoint: 2,
                grpid: 0,
                pasid: None,
                address: 0,
            },
        ],
        concat!(
            r#"{"ok":true,"result":[{"address":327680,"endpoint":0,"grpid":1,"pasid":1},"#,
            r#"{"address":0,"endpoint":2,"grpid":0,"pasid":null}]}"#
        ),
        &Request::PageRequests,
        Response::PageRequests,
    );
    pinned_reply(
        vec![PasidBinding {
            endpoint: 4,
            pasid: 9,
            domain: 8,
        }],
        r#"{"ok":true,"result":[{"domain":8,"endpoint":4,"pasid":9}]}"#,
        &Request::Pasids,
        Response::Pasids,
    );
}

#[test]
fn subscribe_and_backend_replies() {
    pinned_reply(
        Subscribed {
            subscribed: true,
            seq: 0,
        },
        r#"{"ok":true,"result":{"seq":0,"subscribed":true}}"#,
        &Request::Subscribe,
        Response::Subscribe,
    );
    let b = BackendInfo(json!({"backend": "software", "guest_ram": [{"gpa": 0, "size": 4096}]}));
    assert_eq!(b.kind(), Some("software"));
    pinned_reply(
        b,
        r#"{"ok":true,"result":{"backend":"software","guest_ram":[{"gpa":0,"size":4096}]}}"#,
        &Request::Backend,
        Response::Backend,
    );
}

#[test]
fn invalidation_lines() {
    pinned(
        &InvalidationEvent::new(
            7,
            Invalidation::Range {
                domain: 1,
                endpoints: vec![3, 4],
                start: 4096,
                end: 8191,
            },
        ),
        r#"{"domain":1,"end":8191,"endpoints":[3,4],"event":"invalidate","scope":"range","seq":7,"start":4096}"#,
    );
    pinned(
        &InvalidationEvent::new(8, Invalidation::Endpoint { endpoint: 3 }),
        r#"{"endpoint":3,"event":"invalidate","scope":"endpoint","seq":8}"#,
    );
    pinned(
        &InvalidationEvent::new(9, Invalidation::All),
        r#"{"event":"invalidate","scope":"all","seq":9}"#,
    );
    // What a consumer must treat as `all`: not an invalidation this crate knows.
    for line in [
        r#"{"event":"invalidate","scope":"something-new","seq":10}"#,
        r#"{"event":"invalidate","scope":"range","endpoints":[1],"start":0,"end":1,"seq":11}"#,
        r#"{"event":"other","scope":"all","seq":12}"#,
    ] {
        assert!(decode::<InvalidationEvent>(line).is_err(), "{line}");
    }
}

// --- The client, against a stand-in daemon -------------------------------------------------

fn socket_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vui-control-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// Serve one connection: answer each request line with `answer(line)` (None: say nothing).
fn serve_one(
    name: &str,
    answer: impl Fn(&str) -> Option<String> + Send + 'static,
) -> (PathBuf, std::thread::JoinHandle<()>) {
    let path = socket_path(name);
    let listener = UnixListener::bind(&path).unwrap();
    let h = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = answer(&line) {
                if writeln!(w, "{a}").is_err() {
                    break;
                }
            }
        }
    });
    (path, h)
}

#[test]
fn client_requests_and_errors() {
    let (path, h) = serve_one("requests", |line| {
        Some(match decode::<Request>(line).unwrap() {
            Request::Endpoints => encode(&Reply::Ok(vec![EndpointInfo {
                id: 3,
                domain: None,
            }]))
            .unwrap(),
            Request::Mappings { domain: 7, .. } => {
                encode(&Reply::<Response>::Err("domain 7 does not exist".into())).unwrap()
            }
            // Not a status.
            Request::Status => r#"{"ok":true,"result":[]}"#.to_string(),
            _ => "not json".to_string(),
        })
    });
    let mut c = Client::connect(&path).unwrap();
    assert_eq!(
        c.endpoints().unwrap(),
        vec![EndpointInfo {
            id: 3,
            domain: None
        }]
    );
    assert_eq!(
        c.request(&Request::Endpoints).unwrap(),
        Response::Endpoints(vec![EndpointInfo {
            id: 3,
            domain: None
        }])
    );
    assert_eq!(
        c.request_value(&Request::Endpoints).unwrap(),
        json!([{"id": 3, "domain": null}])
    );
    match c.mappings(7, None, None) {
        Err(Error::Refused(m)) => assert_eq!(m, "domain 7 does not exist"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.status(), Err(Error::Protocol { .. })));
    assert!(matches!(c.faults(), Err(Error::Protocol { .. })));
    drop(c);
    h.join().unwrap();
    assert!(matches!(
        Client::connect(socket_path("nobody")),
        Err(Error::Connect { .. })
    ));
}

#[test]
fn client_timeout_and_close() {
    let (path, h) = serve_one("silent", |_| None);
    let mut c = Client::connect(&path).unwrap();
    c.set_timeout(Some(Duration::from_millis(50))).unwrap();
    assert!(matches!(c.counters(), Err(Error::Timeout { .. })));
    drop(c);
    h.join().unwrap();

    let path = socket_path("closing");
    let listener = UnixListener::bind(&path).unwrap();
    let h = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
    });
    let mut c = Client::connect(&path).unwrap();
    assert!(matches!(c.pasids(), Err(Error::Closed { .. })));
    h.join().unwrap();
}

#[test]
fn subscriptions() {
    let path = socket_path("subscribe");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let h = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert_eq!(decode::<Request>(&line).unwrap(), Request::Subscribe);
        let reply = Reply::Ok(Subscribed {
            subscribed: true,
            seq: 5,
        });
        writeln!(w, "{}", encode(&reply).unwrap()).unwrap();
        for bytes in rx {
            w.write_all(&bytes).unwrap();
        }
    });
    let mut sub = Client::connect(&path).unwrap().subscribe().unwrap();
    assert_eq!(sub.seq(), 5);
    sub.set_nonblocking(true).unwrap();
    assert_eq!(sub.next().unwrap(), None);
    let ev = InvalidationEvent::new(6, Invalidation::Endpoint { endpoint: 3 });
    let line = format!("{}\n", encode(&ev).unwrap());
    let (a, b) = line.as_bytes().split_at(10);
    tx.send(a.to_vec()).unwrap();
    // Half a line: nothing yet, and nothing lost.
    let wait = |sub: &mut Subscription| loop {
        if let Some(n) = sub.next().unwrap() {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(sub.next().unwrap(), None);
    tx.send(b.to_vec()).unwrap();
    assert_eq!(wait(&mut sub), Notification::Invalidation(ev));
    tx.send(b"{\"event\":\"invalidate\",\"scope\":\"new\",\"seq\":7}\n".to_vec())
        .unwrap();
    assert_eq!(
        wait(&mut sub),
        Notification::NotUnderstood(r#"{"event":"invalidate","scope":"new","seq":7}"#.into())
    );
    drop(tx);
    h.join().unwrap();
    sub.set_nonblocking(false).unwrap();
    assert!(matches!(sub.next(), Err(Error::Closed { .. })));
}

#[test]
fn refused_subscription() {
    let (path, h) = serve_one("refused", |_| {
        Some(
            encode(&Reply::<Subscribed>::Err(
                "too many subscribers (at most 64)".into(),
            ))
            .unwrap(),
        )
    });
    match Client::connect(&path).unwrap().subscribe() {
        Err(Error::Refused(m)) => assert_eq!(m, "too many subscribers (at most 64)"),
        other => panic!("{other:?}"),
    }
    h.join().unwrap();
}
