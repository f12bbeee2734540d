//! Volumes open on a host are NBD exports that real qemu-io and qemu-img
//! use: data written through them grows the LV under the pool lease,
//! survives a snapshot taken while open, and a full clone of the snapshot
//! holds exactly the snapshot's data.

use anyhow::{ensure, Result};
use serde_json::json;
use ssv_tests::hosts::one_host_with_pool;
use ssv_tests::qemu::qemu_io;
use ssv_tests::{find_tool, Scratch};
use std::process::Command;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;

#[test]
fn qemu_writes_through_nbd_grow_snapshot_and_clone() -> Result<()> {
    if find_tool("qemu-io").is_none() || find_tool("qemu-img").is_none() {
        println!("SKIPPED: qemu-io/qemu-img not installed (Debian package qemu-utils)");
        return Ok(());
    }
    let scratch = Scratch::new(None)?;
    let (h, _lun) = one_host_with_pool(&scratch, 16 * GIB)?;
    let c = &h.client;
    c.post(
        "/v1/volumes",
        &json!({"id": "v1", "name": "web", "size": "4g"}),
    )?;
    let v = c.post("/v1/volumes/v1/session", &json!({}))?;
    let uri = v["nbd"].as_str().expect("an NBD URI").to_string();
    let info = Command::new("qemu-img")
        .args(["info", "-f", "raw", &uri])
        .output()?;
    ensure!(
        String::from_utf8_lossy(&info.stdout).contains("4 GiB"),
        "{info:?}"
    );

    // 640 MiB passes half of the 1 GiB LV: it grows while qemu-io writes.
    qemu_io(&uri, &["write -P 0x5a 0 640M", "flush"])?;
    let until = Instant::now() + Duration::from_secs(30);
    let grown = loop {
        let v = c.get("/v1/volumes/v1")?;
        let lv = v["layers"][0]["lv_size"].as_u64().unwrap();
        if lv > GIB || Instant::now() > until {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        grown["layers"][0]["lv_size"].as_u64().unwrap() > GIB,
        "the LV did not grow: {grown}"
    );
    assert!(
        grown["allocated_end"].as_u64().unwrap() > 640 << 20,
        "{grown}"
    );

    // Snapshot while open; later writes go to the new top only. The
    // frozen layer gives back the headroom growth left past its data.
    c.post(
        "/v1/volumes/v1/snapshots",
        &json!({"id": "s1", "name": "640M of 0x5a"}),
    )?;
    let v = c.get("/v1/volumes/v1")?;
    let frozen = v["layers"][1]["lv_size"].as_u64().unwrap();
    let used = grown["allocated_end"].as_u64().unwrap();
    assert!(
        frozen >= used && frozen < used + (128 << 20),
        "frozen layer of {frozen} bytes for {used} bytes of image: {v}"
    );
    qemu_io(
        &uri,
        &[
            "write -P 0xa5 1G 64M",
            "write -P 0x11 0 1M",
            "read -P 0x11 0 1M",
            "read -P 0x5a 1M 639M",
            "read -P 0xa5 1G 64M",
        ],
    )?;

    // A full clone of the snapshot holds the snapshot's data only.
    let job = c.post(
        "/v1/volumes/v1/clones",
        &json!({"id": "c1", "name": "copy", "mode": "full", "snapshot": "s1"}),
    )?;
    let job_id = job["id"].as_str().unwrap().to_string();
    let until = Instant::now() + Duration::from_secs(120);
    let j = loop {
        let j = c.get(&format!("/v1/jobs/{job_id}"))?;
        if j["state"] != "running" || Instant::now() > until {
            break j;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(j["done_bytes"], j["total_bytes"], "{j}");
    assert!(j["total_bytes"].as_u64().unwrap() >= 640 << 20, "{j}");
    let cv = c.post("/v1/volumes/c1/session", &json!({}))?;
    let curi = cv["nbd"].as_str().unwrap().to_string();
    qemu_io(
        &curi,
        &[
            "read -P 0x5a 0 640M",
            "read -P 0 640M 384M",
            "read -P 0 1G 64M",
        ],
    )?;
    // The two exports differ exactly where written after the snapshot.
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", &uri, &curi])
        .output()?;
    assert_eq!(cmp.status.code(), Some(1), "{cmp:?}");
    assert!(
        String::from_utf8_lossy(&cmp.stdout).contains("offset 0"),
        "{cmp:?}"
    );

    // Discard through NBD frees clusters: they read as zeroes.
    qemu_io(
        &curi,
        &["discard 0 64M", "read -P 0 0 64M", "read -P 0x5a 64M 576M"],
    )?;
    c.delete("/v1/volumes/c1/session")?;
    c.delete("/v1/volumes/v1/session")?;
    let e = qemu_io(&uri, &["read 0 4k"]).unwrap_err();
    assert!(
        e.to_string().contains("v1"),
        "a closed volume is no longer exported: {e}"
    );
    Ok(())
}
