//! Extensions combined across hosts through the growth mailbox: several
//! hosts write their own volumes through NBD at once, so their LVs cross
//! the growth threshold together; the pool-lease holder grows the others'
//! LVs in its own commit (counted by `ssvd_lv_extensions_served_for_others`).
//! Every byte written reads back, no extent belongs to two LVs, stock vgck
//! is clean, and a pool whose VG lacks the mailbox tag is refused.

use anyhow::{ensure, Context, Result};
use serde_json::json;
use ssv_tests::hosts::{assert_no_extent_twice, assert_stock_vgck_clean, start_hosts, HostProc};
use ssv_tests::qemu::qemu_io;
use ssv_tests::{find_tool, Scratch, MIB};
use std::process::Command;
use std::sync::Arc;

const GIB: u64 = 1 << 30;
const HOSTS: u64 = 4;
const PER_HOST: u64 = 160 * MIB;
const ROUNDS: usize = 3;

fn open_vg(lun: &std::path::Path, read_only: bool) -> Result<lvm::OpenVg> {
    let dev = san::FileDev::open(lun, &san::OpenOptions::new().read_only(read_only))?;
    Ok(lvm::OpenVg::open(
        &[lvm::PvDev::new(Arc::new(dev), lun.display().to_string())],
        Some("pool0"),
    )?)
}

/// The value of a counter in a host's `/metrics`.
fn counter(h: &HostProc, name: &str) -> Result<u64> {
    let text = h.client.get("/metrics")?;
    let text = text.as_str().context("metrics are text")?;
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .with_context(|| format!("no {name} in {text}"))?;
    Ok(line.rsplit(' ').next().unwrap_or("").parse()?)
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && !text.contains("failed") && !text.contains("Pattern verification"),
        "{cmd:?}: {text}"
    );
    Ok(text)
}

/// `n` hosts on a fresh sparse LUN of `size` bytes, with pool0 on it: 4 MiB
/// extents, LVs that start at `initial` bytes and grow by `chunk`.
fn hosts_with_pool(
    scratch: &Scratch,
    n: u64,
    size: u64,
    initial: u64,
    chunk: u64,
) -> Result<(Vec<HostProc>, std::path::PathBuf)> {
    let lun = scratch.sparse_file("lun0.img", size)?;
    let hosts = start_hosts(scratch.path(), n, std::slice::from_ref(&lun), 1)?;
    hosts[0].client.post(
        "/v1/pools",
        &json!({"name": "pool0", "luns": [lun.display().to_string()],
                "extent_size": (4 * MIB).to_string(), "initial": initial.to_string(),
                "chunk": chunk.to_string()}),
    )?;
    Ok((hosts, lun))
}

#[test]
fn hosts_growing_at_once_are_served_in_combined_commits() -> Result<()> {
    if find_tool("qemu-io").is_none() || find_tool("qemu-img").is_none() {
        println!("SKIPPED: qemu-io/qemu-img not installed (Debian package qemu-utils)");
        return Ok(());
    }
    let scratch = Scratch::new(None)?;
    // Small extents and chunks: each LV grows about 9 times per round.
    let (mut hosts, lun) = hosts_with_pool(&scratch, HOSTS, 16 * GIB, 16 * MIB, 16 * MIB)?;
    let luns = [lun.clone()];
    let mut served = 0;
    let mut round = 0;
    while served == 0 && round < ROUNDS {
        let uris: Vec<String> = hosts
            .iter()
            .map(|h| h.open_new_volume(&format!("r{round}-h{}", h.id), PER_HOST + 64 * MIB))
            .collect::<Result<_>>()?;
        std::thread::scope(|s| -> Result<()> {
            let writers: Vec<_> = uris
                .iter()
                .map(|uri| {
                    s.spawn(move || {
                        run(Command::new("qemu-img")
                            .args(["bench", "-w", "-f", "raw", "-s", "1M", "-d", "8"])
                            .args(["--pattern", "165", "-c", &(PER_HOST / MIB).to_string()])
                            .arg(uri))
                    })
                })
                .collect();
            for w in writers {
                w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
            }
            Ok(())
        })?;
        for (h, uri) in hosts.iter().zip(&uris) {
            // Every byte landed where it was written.
            qemu_io(uri, &[format!("read -P 0xa5 0 {PER_HOST}")])?;
            let id = format!("r{round}-h{}", h.id);
            let v = h.client.get(&format!("/v1/volumes/{id}"))?;
            let g = &v["growth"];
            ensure!(g["failed_extensions"] == 0, "host {}: {g}", h.id);
            ensure!(
                g["extensions"].as_u64().unwrap_or(0) >= 5,
                "host {}: {g}",
                h.id
            );
            h.client.delete(&format!("/v1/volumes/{id}/session"))?;
        }
        served = hosts
            .iter()
            .map(|h| counter(h, "ssvd_lv_extensions_served_for_others_total"))
            .sum::<Result<u64>>()?;
        let by_others = hosts
            .iter()
            .map(|h| counter(h, "ssvd_lv_extensions_served_by_others_total"))
            .sum::<Result<u64>>()?;
        eprintln!("round {round}: {served} extensions served for other hosts, {by_others} served by another commit");
        round += 1;
    }
    ensure!(
        served > 0,
        "in {ROUNDS} rounds of {HOSTS} hosts growing at once, no holder served another host"
    );
    // The first volume lease is slot 3: slot 2 is the mailbox.
    let v = hosts[0].client.get("/v1/volumes/r0-h1")?;
    let vg = open_vg(&lun, true)?;
    ensure!(
        vg.vg().tags.iter().any(|t| t == "ssv.mailbox=2"),
        "{:?}",
        vg.vg().tags
    );
    let slots: Vec<u64> = vg
        .vg()
        .lvs
        .iter()
        .filter_map(|l| ssvd::names::tag_value(&l.tags, ssvd::names::TAG_LEASE))
        .filter_map(|s| s.parse().ok())
        .collect();
    ensure!(slots.iter().all(|&s| s >= 3), "lease slots {slots:?}: {v}");
    drop(vg);
    for h in &mut hosts {
        h.stop();
    }
    drop(hosts);
    assert_no_extent_twice(&[&lun], "pool0")?;

    // A pool made without the mailbox is refused, saying why.
    let mut vg = open_vg(&lun, false)?;
    vg.change("test: a pool from before the mailbox", |v| {
        v.change_tags(None, &[], &["ssv.mailbox=2".to_string()])
    })?;
    drop(vg);
    let h = HostProc::start(scratch.path(), 9, &luns, 1)?;
    let e = h
        .client
        .get("/v1/pools/pool0")
        .expect_err("a pool without the mailbox tag is attached");
    ensure!(
        e.to_string()
            .contains("has no growth mailbox (VG tag ssv.mailbox=2)"),
        "{e}"
    );
    drop(h);

    assert_stock_vgck_clean(&[&lun], "pool0")
}

/// A host that keeps the pool lease for a stream of extensions gives it up
/// as soon as another host asks for it in the mailbox, so the other host's
/// creates do not wait for the growth to stop.
#[test]
fn a_growth_holder_yields_the_lease_to_another_change() -> Result<()> {
    if find_tool("qemu-img").is_none() {
        println!("SKIPPED: qemu-img not installed (Debian package qemu-utils)");
        return Ok(());
    }
    let scratch = Scratch::new(None)?;
    // 4 MiB chunks: the writer's LV grows many times a second, so host 1
    // keeps the lease from one extension to the next.
    let (mut hosts, lun) = hosts_with_pool(&scratch, 2, 16 * GIB, 8 * MIB, 4 * MIB)?;
    let uri = hosts[0].open_new_volume("w", GIB)?;
    std::thread::scope(|s| -> Result<()> {
        let writer = s.spawn(|| {
            run(Command::new("qemu-img")
                .args(["bench", "-w", "-f", "raw", "-s", "1M", "-d", "8"])
                .args(["--pattern", "165", "-c", "768"])
                .arg(&uri))
        });
        // Let the writer's extensions start, then create on host 2.
        std::thread::sleep(std::time::Duration::from_millis(300));
        for i in 0..5 {
            hosts[1].client.post(
                "/v1/volumes",
                &json!({"id": format!("c{i}"), "name": format!("c{i}"), "size": GIB.to_string()}),
            )?;
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(())
    })?;
    let g = hosts[0].client.get("/v1/volumes/w")?["growth"].clone();
    ensure!(g["failed_extensions"] == 0, "{g}");
    ensure!(g["extensions"].as_u64().unwrap_or(0) >= 20, "{g}");
    let log = hosts[0].ssvd_log();
    ensure!(
        log.contains("released: hosts [2] wait for it"),
        "host 1 never gave the lease kept for growth to host 2:\n{log}"
    );
    hosts[0].client.delete("/v1/volumes/w/session")?;
    for h in &mut hosts {
        h.stop();
    }
    assert_no_extent_twice(&[&lun], "pool0")?;
    Ok(())
}

/// A writer posts a notice before its threshold (and may take the pool
/// lease ahead of the growth); the commit for another host's pending
/// request grows the noticed LV too, and the noticing writer's own request
/// at its threshold then finds the LV grown.
#[test]
fn a_noticed_lv_grows_in_another_hosts_commit() -> Result<()> {
    if find_tool("qemu-io").is_none() {
        println!("SKIPPED: qemu-io not installed (Debian package qemu-utils)");
        return Ok(());
    }
    let scratch = Scratch::new(None)?;
    // 16 MiB LVs: the notice at 40% (6.4 MiB), the threshold at 50%.
    let (mut hosts, lun) = hosts_with_pool(&scratch, 2, 4 * GIB, 16 * MIB, 16 * MIB)?;
    let uris: Vec<String> = hosts
        .iter()
        .map(|h| h.open_new_volume(&format!("v{}", h.id), GIB))
        .collect::<Result<_>>()?;
    let lv_size = |id: &str| -> Result<u64> {
        let vg = open_vg(&lun, true)?;
        let lv = vg
            .vg()
            .lvs
            .iter()
            .find(|l| l.name == format!("vol-{id}.0"))
            .with_context(|| format!("no LV of {id}"))?;
        Ok(lv.extent_count() * vg.vg().extent_bytes())
    };
    // Host 2 writes past its notice point, not its threshold.
    qemu_io(&uris[1], &["write -P 0x5a 0 7M"])?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    ensure!(
        lv_size("v2")? == 16 * MIB,
        "host 2's LV grew on its notice alone"
    );
    // Host 1 crosses its threshold: its commit grows both.
    qemu_io(&uris[0], &["write -P 0xa5 0 9M"])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while lv_size("v1")? == 16 * MIB {
        ensure!(
            std::time::Instant::now() < deadline,
            "host 1's LV never grew"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ensure!(
        lv_size("v2")? == 32 * MIB,
        "host 2's noticed LV: {} bytes",
        lv_size("v2")?
    );
    // Whoever holds the lease (host 2 may have taken it on its notice)
    // served the other host.
    let served = hosts
        .iter()
        .map(|h| counter(h, "ssvd_lv_extensions_served_for_others_total"))
        .sum::<Result<u64>>()?;
    ensure!(served >= 1, "no commit served the other host");
    // Host 2 crosses its threshold: served by that commit, not its own.
    qemu_io(&uris[1], &["write -P 0x5a 7M 3M"])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let g = hosts[1].client.get("/v1/volumes/v2")?["growth"].clone();
        if g["extensions"].as_u64().unwrap_or(0) >= 1 {
            ensure!(g["failed_extensions"] == 0, "{g}");
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "host 2 never grew: {g}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ensure!(lv_size("v2")? == 32 * MIB, "host 2 grew its LV again");
    qemu_io(&uris[1], &["read -P 0x5a 0 10M"])?;
    qemu_io(&uris[0], &["read -P 0xa5 0 9M"])?;
    for h in &hosts {
        h.client.delete(&format!("/v1/volumes/v{}/session", h.id))?;
    }
    for h in &mut hosts {
        h.stop();
    }
    assert_no_extent_twice(&[&lun], "pool0")?;
    assert_stock_vgck_clean(&[&lun], "pool0")
}
