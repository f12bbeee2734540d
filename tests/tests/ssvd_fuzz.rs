//! Hostile API input against a real ssvd: arbitrary bodies and path
//! segments on every route that takes them. Each answer is a client error
//! or a success (some random requests are valid), never a server error or
//! a dropped connection, and the pool stays consistent.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use ssv_tests::hosts::one_host_with_pool;
use ssv_tests::Scratch;
use ssvd::client::{Client, ClientError};

const GIB: u64 = 1 << 30;

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("1g"),
            Just("0"),
            Just("-1"),
            Just("16e"),
            Just("999999t"),
            Just("512"),
            Just("4k"),
            Just("64k"),
            Just("2m"),
            Just("full"),
            Just("linked"),
            Just("v1"),
            Just("s1"),
            Just("pool0"),
            Just(""),
            Just("a/b"),
            Just("../x"),
        ]
        .prop_map(Value::from),
        prop::collection::vec("\\PC{0,12}".prop_map(Value::from), 0..3).prop_map(Value::from),
    ]
}

fn body() -> impl Strategy<Value = String> {
    let keys = prop_oneof![
        Just("id"),
        Just("name"),
        Just("size"),
        Just("pool"),
        Just("cluster_size"),
        Just("mode"),
        Just("snapshot"),
        Just("luns"),
        Just("path"),
        Just("extent_size"),
        Just("initial"),
        Just("chunk"),
        Just("threshold_percent"),
        Just("x"),
    ];
    prop_oneof![
        prop::collection::btree_map(keys, value(), 0..6)
            .prop_map(|m| serde_json::to_string(&m).unwrap_or_default()),
        "\\PC{0,64}",
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("v1".to_string()),
        Just("s1".to_string()),
        "[a-z0-9-]{1,50}",
        "\\PC{1,20}"
    ]
    .prop_map(|s| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    })
}

/// A raw request with any body (the client only sends valid JSON).
fn raw(c: &Client, method: &str, path: &str, body: &str) -> u16 {
    let ssvd::client::Endpoint::Unix(sock) = &c.endpoint else {
        unreachable!()
    };
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("ssvd is gone");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: ssvd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("ssvd dropped the request");
    // A server that answers before reading the whole body (a route that
    // does not exist, say) closes with our bytes unread, and the kernel
    // resets the connection: what was answered before that still counts.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let out = String::from_utf8_lossy(&buf);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"))
}

#[test]
fn hostile_requests_get_client_errors_and_leave_the_pool_consistent() -> anyhow::Result<()> {
    let scratch = Scratch::new(None)?;
    let (h, _lun) = one_host_with_pool(&scratch, 16 * GIB)?;
    let c = &h.client;
    c.post(
        "/v1/volumes",
        &json!({"id": "v1", "name": "v", "size": "1g"}),
    )?;
    c.post(
        "/v1/volumes/v1/snapshots",
        &json!({"id": "s1", "name": "s"}),
    )?;

    let routes = [
        "/v1/pools",
        "/v1/pools/{}/luns",
        "/v1/volumes",
        "/v1/volumes/{}/resize",
        "/v1/volumes/{}/snapshots",
        "/v1/volumes/{}/clones",
        "/v1/volumes/{}/snapshots/{}/revert",
    ];
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(0..routes.len(), segment(), segment(), body()),
            |(r, a, b, body)| {
                let path = routes[r].replacen("{}", &a, 1).replacen("{}", &b, 1);
                let status = raw(c, "POST", &path, &body);
                prop_assert!(
                    status < 500 || status == 503 || status == 507,
                    "POST {path} {body:?} -> {status}"
                );
                Ok(())
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Random deletes and reads of random names.
    runner
        .run(&(segment(), segment()), |(a, b)| {
            for (m, p) in [
                ("GET", format!("/v1/volumes/{a}")),
                ("DELETE", format!("/v1/volumes/{a}/snapshots/{b}")),
                ("GET", format!("/v1/jobs/{a}")),
            ] {
                let status = raw(c, m, &p, "");
                prop_assert!(status < 500, "{m} {p} -> {status}");
            }
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // Still serving, and the pool reads clean.
    let pool = c.get("/v1/pools/pool0")?;
    assert_eq!(pool["health"], json!([]), "{pool}");
    assert!(c.get("/v1/volumes/v1").is_ok(), "v1 survived");
    match c.get("/v1/volumes/../../etc") {
        Err(ClientError::Api { status, .. }) => assert!(status == 404 || status == 400),
        other => panic!("{other:?}"),
    }
    Ok(())
}
