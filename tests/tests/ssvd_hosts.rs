//! Several hosts on one machine over one shared LUN file: each a real
//! lockd and ssvd with its own host id, sockets and state. Concurrent
//! creates, resizes, snapshots and deletes from every host end with one
//! consistent pool (stock vgck clean, no extent owned twice, every host
//! seeing the same volumes); a host killed with SIGKILL loses its volumes
//! to the others only after lockd's safe timeout.

use anyhow::Result;
use serde_json::{json, Value};
use ssv_tests::hosts::{assert_no_extent_twice, assert_stock_vgck_clean, start_hosts};
use ssv_tests::qemu::qemu_io;
use ssv_tests::{find_tool, Scratch};
use ssvd::client::ClientError;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const HOSTS: u64 = 3;
const ROUNDS: usize = 4;

fn ids(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn hosts_share_one_pool_and_a_dead_host_is_taken_over_only_after_the_safe_timeout() -> Result<()> {
    let scratch = Scratch::new(None)?;
    let lun = scratch.sparse_file("lun0.img", 64 * GIB)?;
    let luns = [lun.clone()];
    let mut hosts = start_hosts(scratch.path(), HOSTS, &luns, 1)?;
    hosts[0].client.post(
        "/v1/pools",
        &json!({"name": "pool0", "luns": [lun.display().to_string()]}),
    )?;
    // The others attach it when first asked (joining takes ~2 io_timeouts).
    for h in &hosts[1..] {
        let p = h.client.get("/v1/pools/pool0")?;
        assert_eq!(p["lockspace"], "joined", "host {}: {p}", h.id);
    }

    // Every host at once: create, snapshot, grow; delete every other one.
    std::thread::scope(|s| {
        for h in &hosts {
            s.spawn(move || {
                for i in 0..ROUNDS {
                    let id = format!("h{}-v{i}", h.id);
                    let c = &h.client;
                    c.post("/v1/volumes", &json!({"id": id, "name": format!("volume {i} of host {}", h.id), "size": "2g"}))
                        .unwrap_or_else(|e| panic!("host {} create {id}: {e}", h.id));
                    c.post(&format!("/v1/volumes/{id}/snapshots"), &json!({"id": format!("{id}-s"), "name": "s"}))
                        .unwrap_or_else(|e| panic!("host {} snapshot {id}: {e}", h.id));
                    c.post(&format!("/v1/volumes/{id}/resize"), &json!({"size": "3g"}))
                        .unwrap_or_else(|e| panic!("host {} resize {id}: {e}", h.id));
                    if i % 2 == 1 {
                        c.delete(&format!("/v1/volumes/{id}"))
                            .unwrap_or_else(|e| panic!("host {} delete {id}: {e}", h.id));
                    }
                }
            });
        }
    });
    let want: BTreeSet<String> = (1..=HOSTS)
        .flat_map(|h| (0..ROUNDS).step_by(2).map(move |i| format!("h{h}-v{i}")))
        .collect();
    for h in &hosts {
        let got = ids(&h.client.get("/v1/volumes")?);
        assert_eq!(got, want, "host {} sees other volumes", h.id);
    }
    for id in &want {
        let v = hosts[0].client.get(&format!("/v1/volumes/{id}"))?;
        assert_eq!(v["size"], 3 * GIB, "{v}");
        assert_eq!(v["snapshots"].as_array().unwrap().len(), 1, "{v}");
    }
    assert_no_extent_twice(&[&lun], "pool0")?;

    // Every host writes its own volume at once through NBD (each LV grows
    // under the pool lease while the others do too); another host then
    // reads back exactly what was written.
    if find_tool("qemu-io").is_some() {
        std::thread::scope(|s| {
            for h in &hosts {
                s.spawn(move || {
                    let id = format!("h{}-v0", h.id);
                    let v = h
                        .client
                        .post(&format!("/v1/volumes/{id}/session"), &json!({}))
                        .unwrap();
                    let uri = v["nbd"].as_str().unwrap();
                    let p = format!("write -P {} 0 700M", 0x10 + h.id);
                    qemu_io(uri, &[&p, "flush"]).unwrap_or_else(|e| panic!("host {}: {e}", h.id));
                    h.client
                        .delete(&format!("/v1/volumes/{id}/session"))
                        .unwrap();
                });
            }
        });
        for (i, h) in hosts.iter().enumerate() {
            let reader = &hosts[(i + 1) % hosts.len()];
            let id = format!("h{}-v0", h.id);
            let v = reader
                .client
                .post(&format!("/v1/volumes/{id}/session"), &json!({}))?;
            let uri = v["nbd"].as_str().unwrap();
            let p = format!("read -P {} 0 700M", 0x10 + h.id);
            qemu_io(uri, &[&p, "read -P 0 700M 64M"])?;
            let lv = v["layers"][0]["lv_size"].as_u64().unwrap();
            assert!(lv > GIB, "the LV of {id} did not grow: {v}");
            reader.client.delete(&format!("/v1/volumes/{id}/session"))?;
        }
        assert_no_extent_twice(&[&lun], "pool0")?;
    } else {
        println!("SKIPPED the data part: qemu-io not installed (Debian package qemu-utils)");
    }

    // A volume is open on one host at a time.
    hosts[0]
        .client
        .post("/v1/volumes/h2-v0/session", &json!({}))?;
    let e = hosts[1]
        .client
        .post("/v1/volumes/h2-v0/session", &json!({}))
        .unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 409, .. }), "{e}");
    let e = hosts[1].client.delete("/v1/volumes/h2-v0").unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 409, .. }), "{e}");

    // Host 1 dies with the volume open, in the middle of creating and
    // snapshotting volumes (it may hold the pool lease as it dies).
    let busy = hosts[0].client.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let id = format!("dying-{i}");
                if busy
                    .post("/v1/volumes", &json!({"id": id, "name": "d", "size": "1g"}))
                    .is_err()
                    || busy
                        .post(
                            &format!("/v1/volumes/{id}/snapshots"),
                            &json!({"name": "s"}),
                        )
                        .is_err()
                {
                    break;
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    hosts[0].kill9();
    let killed = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = worker.join();
    // Its volume stays its own until its lease is surely dead...
    let e = hosts[1]
        .client
        .post("/v1/volumes/h2-v0/session", &json!({}))
        .unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 409, .. }), "{e}");
    // ...while the others change the pool (at once, or, if it died holding
    // the pool lease, once that lease is dead: possibly after host_dead).
    hosts[1].client.post(
        "/v1/volumes",
        &json!({"id": "after", "name": "after the crash", "size": "1g"}),
    )?;
    hosts[1]
        .client
        .post("/v1/volumes/h2-v0/session?wait=true", &json!({}))?;
    let took = killed.elapsed();
    // Both survivors see the same volumes, the dead host's finished ones
    // included.
    assert_eq!(
        ids(&hosts[1].client.get("/v1/volumes")?),
        ids(&hosts[2].client.get("/v1/volumes")?)
    );
    // lockd at io_timeout 1 s and watchdog_fire 3 s: host_dead is 8 + 3 s
    // (DESIGN.md, sanlock's inequality); well over the 1 s renewal.
    assert!(
        took > Duration::from_secs(8),
        "taken over after only {took:?}"
    );
    eprintln!("dead host's volume taken over after {took:?}");
    hosts[1].client.delete("/v1/volumes/h2-v0/session")?;
    assert_no_extent_twice(&[&lun], "pool0")?;
    let mut hosts = hosts;
    for h in &mut hosts {
        h.stop();
    }
    drop(hosts);

    assert_stock_vgck_clean(&[&lun], "pool0")
}
