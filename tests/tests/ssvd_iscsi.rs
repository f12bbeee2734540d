//! A pool on an iSCSI LUN reached over two paths: a private tgtd serves one
//! LU on portals 127.0.0.1 and 127.0.0.2, and two hosts (each a real lockd
//! and ssvd) name it by the two-portal URI in their configuration. ssvd and
//! lockd of each host log in side by side without ending each other's
//! sessions; host 1 makes the pool, host 2 attaches, both create volumes
//! and snapshots at once; data qemu-io writes through host 1's NBD export,
//! while one path is cut, arrives whole with no error and reads back on
//! host 2; stock lvm2 reads the pool (the URI is the PV's device hint) and
//! no extent is owned twice. A VMM's disk on host 2 logs in on its own and
//! grows its volume through ssvd.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use ssv_tests::hosts::{assert_no_extent_twice, assert_stock_vgck_clean, HostProc};
use ssv_tests::qemu::qemu_io;
use ssv_tests::tgtd::{iptables_skip_reason, LunOpts, Tgtd, TgtdOpts};
use ssv_tests::{find_tool, Scratch};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const IQN: &str = "iqn.2026-11.io.ssv.test:ssvd-iscsi";
/// lockd's: joining takes 2 of these; a cut path costs a lease I/O one.
const IO_TIMEOUT: u64 = 3;
const ROUNDS: usize = 3;
/// qemu-io writes chunks of this size, chunk `i` at `i * CHUNK`; all of
/// them fit the volume's first LV, so no write waits for growth.
const CHUNK: u64 = 16 * MIB;
const MAX_CHUNKS: usize = 28;

fn pattern(i: usize) -> u8 {
    (i % 250) as u8 + 1
}

fn write_chunk(uri: &str, i: usize) -> Result<()> {
    let at = i as u64 * CHUNK;
    qemu_io(
        uri,
        &[
            format!("write -P {} {at} {CHUNK}", pattern(i)),
            "flush".into(),
        ],
    )
    .map(drop)
}

fn read_chunks(uri: &str, n: usize) -> Result<()> {
    let cmds: Vec<String> = (0..n)
        .map(|i| format!("read -P {} {} {CHUNK}", pattern(i), i as u64 * CHUNK))
        .collect();
    qemu_io(uri, &cmds).map(drop)
}

/// Initiator name → session ids, as tgtd lists them.
fn nexuses(t: &Tgtd) -> Result<BTreeMap<String, BTreeSet<u64>>> {
    let mut m: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for n in t.sessions(1)? {
        m.entry(n.initiator).or_default().insert(n.sid);
    }
    Ok(m)
}

fn ids(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["id"].as_str().map(str::to_string))
        .collect()
}

/// Waits until `log()` has a line containing all of `want`.
fn wait_log(log: impl Fn() -> String, want: &[&str], limit: Duration) -> Result<()> {
    let end = Instant::now() + limit;
    loop {
        if log().lines().any(|l| want.iter().all(|w| l.contains(w))) {
            return Ok(());
        }
        ensure!(
            Instant::now() < end,
            "no log line with {want:?} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Attaches volume `id` of `h` in this process as a VMM does, writes past
/// its first LV (it grows through ssvd) and reads back; the daemons'
/// sessions stay as they were and the VMM's name has its own.
fn vmm_disk_on_iscsi(h: &HostProc, t: &Tgtd, id: &str) -> Result<()> {
    use vmm::api::DiskControl;
    use vmm::devices::virtio::block::Disk;
    let spec: vmm::disks::SsvdDiskSpec =
        format!("ssvd={},volume={id}", h.dir.join("ssvd.sock").display())
            .parse()
            .map_err(anyhow::Error::msg)?;
    let sessions = nexuses(t)?;
    let hub = std::sync::Arc::new(vmm::api::EventHub::default());
    let disk = vmm::disks::SsvdDisk::open(&spec, &mut None, hub)?;
    let lv = disk.status().lv_size;
    let data = |at: u64| vec![(at / (4 * MIB)) as u8 | 1; 4 * MIB as usize];
    let end = lv / 2 + 64 * MIB;
    for at in (0..end).step_by(4 * MIB as usize) {
        disk.write(&data(at), at)
            .map_err(|e| anyhow::anyhow!("write at {at}: {e}"))?;
    }
    disk.flush().map_err(|e| anyhow::anyhow!("flush: {e}"))?;
    let until = Instant::now() + Duration::from_secs(30);
    while disk.status().lv_size <= lv {
        ensure!(
            Instant::now() < until,
            "the LV did not grow: {:?}",
            disk.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut back = vec![0; 4 * MIB as usize];
    for at in (0..end).step_by(4 * MIB as usize) {
        disk.read(&mut back, at)
            .map_err(|e| anyhow::anyhow!("read at {at}: {e}"))?;
        ensure!(back == data(at), "data at {at} differs");
    }
    disk.close().map_err(anyhow::Error::msg)?;
    let now = nexuses(t)?;
    let me = san::iscsi::initiator_name(&format!("host{}", h.id), "vmm");
    ensure!(
        now.get(&me).is_some_and(|s| s.len() == 2),
        "no two sessions of {me}: {now:?}"
    );
    let daemons: BTreeMap<_, _> = now.into_iter().filter(|(n, _)| *n != me).collect();
    ensure!(
        daemons == sessions,
        "the daemons' sessions changed: {daemons:?}"
    );
    Ok(())
}

#[test]
fn two_hosts_share_a_pool_on_an_iscsi_lun_over_two_paths() -> Result<()> {
    if let Some(why) = Tgtd::available() {
        println!("SKIPPED: {why}");
        return Ok(());
    }
    if find_tool("qemu-io").is_none() {
        println!("SKIPPED: qemu-io not installed (Debian package qemu-utils)");
        return Ok(());
    }
    let started = Instant::now();
    let scratch = Scratch::new(None)?;
    let backing = scratch.sparse_file("lun0.img", 16 * GIB)?;
    let mut t = Tgtd::start(TgtdOpts::with_portals(&["127.0.0.2"]))?;
    t.add_target(1, IQN)?;
    // O_DIRECT backing: SYNCHRONIZE CACHE (after every lease write) then
    // has no page cache of volume data to flush first.
    let lun_ids = t.add_lun(
        1,
        1,
        &backing,
        &LunOpts {
            direct: true,
            ..LunOpts::default()
        },
    )?;
    t.bind_all(1)?;
    let uri = format!("iscsi://127.0.0.1:{p},127.0.0.2:{p}/{IQN}/1", p = t.port());
    let entry = format!("iscsi = {uri:?}");
    let mut hosts: Vec<HostProc> = (1..=2)
        .map(|id| {
            HostProc::start_with(scratch.path(), id, std::slice::from_ref(&entry), IO_TIMEOUT)
        })
        .collect::<Result<_>>()?;

    // The LUN is listed by its URI with the LU's WWID.
    let luns = hosts[0].client.get("/v1/luns")?;
    assert_eq!(luns[0]["path"], uri.as_str(), "{luns}");
    assert_eq!(
        luns[0]["identity"],
        format!("wwid:{}", lun_ids.wwid()),
        "{luns}"
    );
    assert_eq!(luns[0]["size"], 16 * GIB, "{luns}");
    assert_eq!(luns[0]["state"], "free", "{luns}");

    hosts[0]
        .client
        .post("/v1/pools", &json!({"name": "pool0", "luns": [uri]}))?;
    let p = hosts[1].client.get("/v1/pools/pool0")?;
    assert_eq!(p["lockspace"], "joined", "host 2: {p}");
    assert_eq!(p["luns"][0]["path"], uri.as_str(), "{p}");
    let luns = hosts[1].client.get("/v1/luns")?;
    assert_eq!(luns[0]["state"], "pool", "{luns}");

    // Each daemon is its own initiator with one session per portal.
    let sessions = nexuses(&t)?;
    let want: BTreeSet<String> = (1..=2u64)
        .flat_map(|id| {
            [
                san::iscsi::ssvd_initiator_name(id),
                san::iscsi::lockd_initiator_name(&format!("host{id}")),
            ]
        })
        .collect();
    assert_eq!(
        sessions.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "{sessions:?}"
    );
    for (name, sids) in &sessions {
        assert_eq!(sids.len(), 2, "{name}: {sids:?}");
    }

    // Both hosts at once: create, snapshot; delete every other one.
    std::thread::scope(|s| {
        for h in &hosts {
            s.spawn(move || {
                for i in 0..ROUNDS {
                    let id = format!("h{}-v{i}", h.id);
                    let c = &h.client;
                    c.post(
                        "/v1/volumes",
                        &json!({"id": id, "name": format!("volume {i} of host {}", h.id), "size": "2g"}),
                    )
                    .unwrap_or_else(|e| panic!("host {} create {id}: {e}", h.id));
                    c.post(
                        &format!("/v1/volumes/{id}/snapshots"),
                        &json!({"id": format!("{id}-s"), "name": "s"}),
                    )
                    .unwrap_or_else(|e| panic!("host {} snapshot {id}: {e}", h.id));
                    if i == 1 {
                        c.delete(&format!("/v1/volumes/{id}"))
                            .unwrap_or_else(|e| panic!("host {} delete {id}: {e}", h.id));
                    }
                }
            });
        }
    });
    let want_vols: BTreeSet<String> = (1..=2)
        .flat_map(|h| [0, 2].map(|i| format!("h{h}-v{i}")))
        .collect();
    for h in &hosts {
        assert_eq!(
            ids(&h.client.get("/v1/volumes")?),
            want_vols,
            "host {}",
            h.id
        );
    }
    // No daemon's login ended another's session (reinstatement makes a new one).
    assert_eq!(nexuses(&t)?, sessions, "sessions changed under load");
    eprintln!(
        "pool and volumes on both hosts after {:?}",
        started.elapsed()
    );

    // Host 1 writes through NBD; one path is cut meanwhile.
    let v = hosts[0]
        .client
        .post("/v1/volumes/h2-v0/session", &json!({}))?;
    let nbd = v["nbd"].as_str().context("an NBD URI")?.to_string();
    let stop = AtomicBool::new(false);
    let written = AtomicUsize::new(0);
    let cut_at = std::thread::scope(|s| -> Result<Instant> {
        // Until stopped, chunk after chunk, round and round (a rewrite
        // writes the chunk's same pattern again).
        let writer = s.spawn(|| -> Result<()> {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                write_chunk(&nbd, i % MAX_CHUNKS)?;
                i += 1;
                written.store(i, Ordering::Relaxed);
            }
            Ok(())
        });
        let wait_written = |n: usize, what: &str| -> Result<()> {
            let end = Instant::now() + Duration::from_secs(90);
            while written.load(Ordering::Relaxed) < n {
                ensure!(!writer.is_finished(), "the writer stopped {what}");
                ensure!(Instant::now() < end, "no write progress {what}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        };
        let r = (|| -> Result<Instant> {
            wait_written(2, "before the cut")?;
            let cut = Instant::now();
            let log = || hosts[0].ssvd_log();
            let portal = format!("path 127.0.0.2:{}", t.port());
            let down = [portal.as_str(), "is down"];
            match iptables_skip_reason() {
                None => {
                    let block = t.block_portal("127.0.0.2")?;
                    wait_log(log, &down, Duration::from_secs(60))?;
                    let n = written.load(Ordering::Relaxed);
                    wait_written(n + 2, "with 127.0.0.2 blackholed")?;
                    drop(block);
                }
                Some(why) => {
                    eprintln!("iptables unusable ({why}): the target closes one ssvd path instead");
                    let me = san::iscsi::ssvd_initiator_name(1);
                    let n = t
                        .sessions(1)?
                        .into_iter()
                        .find(|n| n.initiator == me)
                        .context("host 1's ssvd session")?;
                    t.kill_connection(1, n.sid, 0)?;
                    wait_log(log, &["is down"], Duration::from_secs(30))?;
                    let n = written.load(Ordering::Relaxed);
                    wait_written(n + 2, "after a path was closed")?;
                }
            }
            wait_log(log, &["path 127.0.0.", "is up"], Duration::from_secs(60))?;
            Ok(cut)
        })();
        stop.store(true, Ordering::Relaxed);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .context("qemu-io write during the path cut")?;
        r
    })?;
    let writes = written.load(Ordering::Relaxed);
    let n = writes.min(MAX_CHUNKS);
    eprintln!(
        "{writes} writes of {} MiB with no error; the path was cut {:?} ago",
        CHUNK / MIB,
        cut_at.elapsed()
    );
    for h in &hosts {
        for l in h.ssvd_log().lines().filter(|l| l.contains(": path ")) {
            eprintln!("host {} ssvd: {l}", h.id);
        }
        let lockd = std::fs::read_to_string(h.dir.join("lockd.log")).unwrap_or_default();
        for l in lockd.lines() {
            eprintln!("host {} lockd: {l}", h.id);
        }
    }
    read_chunks(&nbd, n)?;
    hosts[0].client.delete("/v1/volumes/h2-v0/session")?;

    // Host 2 reads it back.
    let v = hosts[1]
        .client
        .post("/v1/volumes/h2-v0/session", &json!({}))?;
    let nbd2 = v["nbd"].as_str().context("an NBD URI")?.to_string();
    read_chunks(&nbd2, n)?;
    hosts[1].client.delete("/v1/volumes/h2-v0/session")?;
    for h in &hosts {
        let v = h.client.get("/v1/volumes/h2-v0")?;
        assert!(
            v["allocated_end"].as_u64().unwrap_or(0) >= n as u64 * CHUNK,
            "{v}"
        );
    }

    // A VMM's disk on host 2 (its code, in this process) opens the LUN
    // itself: a nexus of its own, none of the daemons' sessions ended.
    vmm_disk_on_iscsi(&hosts[1], &t, "h1-v0")?;

    for h in &mut hosts {
        h.stop();
    }
    drop(hosts);
    t.stop()?;
    let hint = assert_no_extent_twice(&[&backing], "pool0")?;
    assert_eq!(hint.as_deref(), Some(uri.as_str()), "the PV's device hint");

    assert_stock_vgck_clean(&[&backing], "pool0")?;
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}
