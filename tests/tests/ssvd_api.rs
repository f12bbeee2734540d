//! The API's doors and the pool's edges, with real lockd and ssvd: the Unix
//! socket is the owner's only, TCP needs the bearer token, a LUN added to a
//! pool adds its capacity, and a deleted volume's data never reaches a new
//! volume made on the same extents.

use anyhow::Result;
use serde_json::json;
use ssv_tests::hosts::{assert_no_extent_twice, assert_stock_vgck_clean, HostProc};
use ssv_tests::qemu::qemu_io;
use ssv_tests::{find_tool, Scratch};
use ssvd::client::{Client, ClientError, Endpoint};
use std::os::unix::fs::PermissionsExt;

const GIB: u64 = 1 << 30;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn doors_capacity_and_deleted_data() -> Result<()> {
    let scratch = Scratch::new(None)?;
    let lun0 = scratch.sparse_file("lun0.img", 8 * GIB)?;
    let lun1 = scratch.sparse_file("lun1.img", 8 * GIB)?;
    let mut h = HostProc::start(scratch.path(), 1, &[lun0.clone(), lun1.clone()], 1)?;

    // The socket is for its owner only.
    let Endpoint::Unix(sock) = h.client.endpoint.clone() else {
        unreachable!()
    };
    let mode = std::fs::metadata(&sock)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", sock.display());

    // TCP needs the token.
    let token = "an-api-token-of-32-characters-ok";
    let token_file = h.dir.join("token");
    std::fs::write(&token_file, token)?;
    let port = free_port();
    let cfg = std::fs::read_to_string(&h.config)?.replacen(
        "[api]\n",
        &format!("[api]\ntcp = \"127.0.0.1:{port}\"\ntoken_file = {token_file:?}\n"),
        1,
    );
    std::fs::write(&h.config, cfg)?;
    h.stop_ssvd();
    h.start_ssvd()?;
    let tcp = |token: &str| Client {
        endpoint: Endpoint::Tcp {
            addr: format!("127.0.0.1:{port}"),
            token: token.into(),
        },
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "ssvd does not serve TCP"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(tcp(token).get("/v1/host")?["host_id"], 1);
    for wrong in ["", "an-api-token-of-32-characters-no"] {
        match tcp(wrong).get("/v1/host") {
            Err(ClientError::Api {
                status: 401,
                message,
                ..
            }) => {
                assert!(message.contains("token"), "{message}")
            }
            other => panic!("token {wrong:?}: {other:?}"),
        }
    }

    // A second LUN adds its capacity.
    let c = &h.client;
    let p = c.post(
        "/v1/pools",
        &json!({"name": "pool0", "luns": [lun0.display().to_string()]}),
    )?;
    let before = p["capacity"].as_u64().unwrap();
    let p = c.post(
        "/v1/pools/pool0/luns",
        &json!({"path": lun1.display().to_string()}),
    )?;
    assert_eq!(p["luns"].as_array().unwrap().len(), 2, "{p}");
    assert!(p["capacity"].as_u64().unwrap() > before + 7 * GIB, "{p}");
    let e = c
        .post(
            "/v1/pools/pool0/luns",
            &json!({"path": lun1.display().to_string()}),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Api {
                status: 409 | 400,
                ..
            }
        ),
        "{e}"
    );
    let lun = c.get("/v1/luns")?;
    assert!(
        lun.as_array().unwrap().iter().all(|l| l["pool"] == "pool0"),
        "{lun}"
    );

    // A deleted volume's data does not show through a new volume on the
    // same extents.
    if find_tool("qemu-io").is_none() {
        println!("SKIPPED the data part: qemu-io not installed (Debian package qemu-utils)");
    } else {
        c.post(
            "/v1/volumes",
            &json!({"id": "old", "name": "old", "size": "1g"}),
        )?;
        let v = c.post("/v1/volumes/old/session", &json!({}))?;
        let old_lv = v["layers"][0]["lv"].as_str().unwrap().to_string();
        qemu_io(
            v["nbd"].as_str().unwrap(),
            &["write -P 0xee 0 400M", "flush"],
        )?;
        c.delete("/v1/volumes/old/session")?;
        let vg_before = h.client.get("/v1/pools/pool0")?;
        c.delete("/v1/volumes/old")?;
        c.post(
            "/v1/volumes",
            &json!({"id": "new", "name": "new", "size": "1g"}),
        )?;
        let v = c.post("/v1/volumes/new/session", &json!({}))?;
        // The new LV got the old one's extents (allocation takes the
        // lowest free range first): the test would prove nothing otherwise.
        let free_after = c.get("/v1/pools/pool0")?["free"].as_u64().unwrap();
        assert_eq!(free_after, vg_before["free"].as_u64().unwrap(), "{old_lv}");
        qemu_io(v["nbd"].as_str().unwrap(), &["read -P 0 0 1G"])?;
        c.delete("/v1/volumes/new/session")?;
    }
    h.stop();
    assert_no_extent_twice(&[&lun0, &lun1], "pool0")?;
    assert_stock_vgck_clean(&[&lun0, &lun1], "pool0")
}
