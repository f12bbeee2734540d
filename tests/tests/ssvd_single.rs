//! One host: real lockd and ssvd processes on a sparse-file LUN, driven
//! through the REST API: pool, volumes, snapshots, clones, sessions,
//! events and metrics; then stock lvm2 checks the pool.

use anyhow::Result;
use serde_json::{json, Value};
use ssv_tests::hosts::{assert_no_extent_twice, assert_stock_vgck_clean, HostProc};
use ssv_tests::Scratch;
use ssvd::client::ClientError;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;

fn api_kind(e: &ClientError) -> (u16, &str) {
    match e {
        ClientError::Api { status, kind, .. } => (*status, kind.as_str()),
        _ => (0, ""),
    }
}

fn wait_job(h: &HostProc, job: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let j = h.client.get(&format!("/v1/jobs/{job}")).unwrap();
        if j["state"] != "running" || Instant::now() > until {
            return j;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_host_runs_the_volume_life_cycle_through_the_api() -> Result<()> {
    let scratch = Scratch::new(None)?;
    let lun = scratch.sparse_file("lun0.img", 16 * GIB)?;
    let h = HostProc::start(scratch.path(), 1, std::slice::from_ref(&lun), 1)?;
    let c = &h.client;
    let lun_s = lun.display().to_string();

    let luns = c.get("/v1/luns")?;
    assert_eq!(luns[0]["state"], "free", "{luns}");

    // Events from here on.
    let mut events = c.send("GET", "/v1/events", None)?;
    let pool = c.post("/v1/pools", &json!({"name": "pool0", "luns": [lun_s]}))?;
    assert_eq!(pool["name"], "pool0");
    assert_eq!(pool["lockspace"], "joined", "{pool}");
    assert!(pool["capacity"].as_u64().unwrap() > 15 * GIB, "{pool}");
    assert_eq!(pool["volumes"], 0);
    // A second create of the same pool is refused.
    let e = c
        .post("/v1/pools", &json!({"name": "pool0", "luns": [lun_s]}))
        .unwrap_err();
    assert_eq!(api_kind(&e), (409, "conflict"), "{e}");
    // A LUN the configuration does not name is refused with what to do.
    let e = c
        .post(
            "/v1/pools",
            &json!({"name": "p2", "luns": ["/nonexistent"]}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("configuration"), "{e}");

    // Create is idempotent on the client's id.
    let body = json!({"id": "v1", "name": "db disk (prod)", "size": "4g"});
    let (st, v) = c.call("POST", "/v1/volumes", Some(&body))?;
    assert_eq!(st, 201);
    assert_eq!(v["size"], 4 * GIB);
    assert_eq!(v["name"], "db disk (prod)");
    let (st, again) = c.call("POST", "/v1/volumes", Some(&body))?;
    assert_eq!((st, &again["id"]), (200, &v["id"]));
    let e = c
        .post(
            "/v1/volumes",
            &json!({"id": "v1", "name": "db disk (prod)", "size": "5g"}),
        )
        .unwrap_err();
    assert_eq!(api_kind(&e), (409, "conflict"), "{e}");
    let e = c
        .post(
            "/v1/volumes",
            &json!({"id": "Bad_Id", "name": "x", "size": "1g"}),
        )
        .unwrap_err();
    assert_eq!(api_kind(&e), (400, "invalid"), "{e}");
    let e = c
        .post("/v1/volumes", &json!({"name": "x", "size": "lots"}))
        .unwrap_err();
    assert!(e.to_string().contains("10g"), "{e}");
    let e = c
        .post("/v1/volumes", &json!({"name": "huge", "size": "100t"}))
        .unwrap_err();
    assert_eq!(api_kind(&e).1, "no_space", "{e}");
    let v2 = c.post("/v1/volumes", &json!({"name": "scratch", "size": "1g"}))?;
    let v2id = v2["id"].as_str().unwrap().to_string();
    assert_eq!(v2id.len(), 36);

    // The growth service for writers outside ssvd: grow the top, get its
    // mapping on the PVs.
    let top = c.get("/v1/volumes/scratch")?["top"]
        .as_str()
        .unwrap()
        .to_string();
    let m = c.post(
        &format!("/v1/volumes/{v2id}/grow"),
        &json!({"lv": top, "min_size": 1536u64 << 20}),
    )?;
    assert!(m["size"].as_u64().unwrap() >= 1536 << 20, "{m}");
    let mapped: u64 = m["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["length"].as_u64().unwrap())
        .sum();
    assert_eq!(mapped, m["size"].as_u64().unwrap(), "{m}");
    assert_eq!(m["segments"][0]["pv_path"], lun_s.as_str(), "{m}");
    let e = c
        .post(
            &format!("/v1/volumes/{v2id}/grow"),
            &json!({"lv": "ssv_leases", "min_size": 1}),
        )
        .unwrap_err();
    assert_eq!(api_kind(&e).0, 409, "{e}");
    let e = c
        .post(
            &format!("/v1/volumes/{v2id}/grow"),
            &json!({"lv": top, "min_size": 100u64 << 40}),
        )
        .unwrap_err();
    assert_eq!(api_kind(&e), (507, "no_space"), "{e}");

    let list = c.get("/v1/volumes")?;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    // By name too.
    assert_eq!(c.get("/v1/volumes/scratch")?["id"], v2id.as_str());

    // A session holds the volume's lease; a second open is a no-op here.
    let open = c.post("/v1/volumes/v1/session", &json!({}))?;
    assert_eq!(open["state"], "session");
    let st = c.get("/v1/host")?;
    assert_eq!(st["sessions"], json!(["v1"]));
    let leases = st["lockd"]["leases"].to_string();
    assert!(
        leases.contains("\"v1\""),
        "lockd holds no lease for v1: {leases}"
    );
    let e = c.delete("/v1/volumes/v1").unwrap_err();
    assert_eq!(api_kind(&e), (409, "conflict"), "{e}");

    // Snapshots while open: the session switches to the new top.
    let (st, s1) = c.call(
        "POST",
        "/v1/volumes/v1/snapshots",
        Some(&json!({"id": "s1", "name": "before upgrade"})),
    )?;
    assert_eq!(st, 201, "{s1}");
    let v = c.get("/v1/volumes/v1")?;
    assert_eq!(v["layers"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["state"], "session");
    c.post(
        "/v1/volumes/v1/snapshots",
        &json!({"id": "s2", "name": "after"}),
    )?;
    let snaps = c.get("/v1/volumes/v1/snapshots")?;
    let names: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["before upgrade", "after"]);
    // Resize while open.
    let v = c.post("/v1/volumes/v1/resize", &json!({"size": "6g"}))?;
    assert_eq!(v["size"], 6 * GIB);
    c.delete("/v1/volumes/v1/session")?;
    let e = c.delete("/v1/volumes/v1/session").unwrap_err();
    assert_eq!(api_kind(&e).0, 404, "{e}");

    // Revert to s1 drops s2 and the top.
    let v = c.post("/v1/volumes/v1/snapshots/s1/revert", &json!({}))?;
    let snaps: Vec<&str> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(snaps, ["s1"], "{v}");
    assert_eq!(
        v["size"],
        4 * GIB,
        "reverting brings back the snapshot's size"
    );

    // A linked clone of s1; s1 cannot go while the clone uses it.
    let (st, lc) = c.call(
        "POST",
        "/v1/volumes/v1/clones",
        Some(&json!({"id": "lc", "name": "linked", "mode": "linked", "snapshot": "s1"})),
    )?;
    assert_eq!(st, 201, "{lc}");
    let e = c.delete("/v1/volumes/v1/snapshots/s1").unwrap_err();
    assert!(e.to_string().contains("lc"), "{e}");
    let e = c
        .post(
            "/v1/volumes/v1/clones",
            &json!({"name": "x", "mode": "linked"}),
        )
        .unwrap_err();
    assert_eq!(api_kind(&e), (400, "invalid"), "{e}");

    // A full clone is a job.
    let (st, fc) = c.call(
        "POST",
        "/v1/volumes/v1/clones",
        Some(&json!({"id": "fc", "name": "full", "mode": "full"})),
    )?;
    assert_eq!(st, 202, "{fc}");
    let job = wait_job(&h, fc["id"].as_str().unwrap());
    assert_eq!(job["state"], "done", "{job}");
    let fcv = c.get("/v1/volumes/fc")?;
    assert_eq!(fcv["layers"].as_array().unwrap().len(), 1, "{fcv}");

    // Deletes: the linked clone, then the snapshot, then the volumes.
    c.delete("/v1/volumes/lc")?;
    c.delete("/v1/volumes/v1/snapshots/s1")?;
    for id in ["v1", "fc", v2id.as_str()] {
        c.delete(&format!("/v1/volumes/{id}"))?;
    }
    let pool = c.get("/v1/pools/pool0")?;
    assert_eq!(pool["volumes"], 0, "{pool}");
    assert_eq!(pool["lvs"], 1, "only the leases LV is left: {pool}");

    // The event stream saw it all, in order.
    let mut kinds = Vec::new();
    while let Some(line) = events.next_line()? {
        let e: Value = serde_json::from_str(&line)?;
        let k = e["kind"].as_str().unwrap_or("").to_string();
        let last = k == "volume.deleted" && e["volume"] == v2id.as_str();
        kinds.push(k);
        if last {
            break;
        }
    }
    for k in [
        "pool.created",
        "volume.created",
        "session.opened",
        "snapshot.created",
        "volume.resized",
        "session.closed",
        "volume.reverted",
        "job.finished",
        "snapshot.deleted",
        "volume.deleted",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }
    let metrics = String::from_utf8(c.send("GET", "/metrics", None).and_then(|mut r| {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut b)?;
        Ok(b)
    })?)?;
    assert!(
        metrics.contains("ssvd_operations_total{op=\"volume_create\",result=\"ok\"}"),
        "{metrics}"
    );
    let doc = c.get("/v1/openapi.json")?;
    assert!(
        doc["paths"]["/v1/volumes/{id}/snapshots"].is_object(),
        "{doc}"
    );

    // ssvd restarts and finds its pool again.
    let mut h = h;
    h.stop();
    drop(h);
    let h = HostProc::start(scratch.path(), 1, std::slice::from_ref(&lun), 1)?;
    assert_eq!(h.client.get("/v1/pools")?[0]["name"], "pool0");
    drop(h);

    // Stock lvm2 reads what ssvd wrote.
    assert_no_extent_twice(&[&lun], "pool0")?;
    assert_stock_vgck_clean(&[&lun], "pool0")
}
