//! VM disks through a real ssvd and lockd: a VMM's disk attaches the
//! volume, holds its lease, grows it through ssvd's growth service, takes
//! an online snapshot, and stops all I/O when its lease is lost.

use anyhow::Result;
use serde_json::{json, Value};
use ssv_tests::hosts::HostProc;
use ssv_tests::Scratch;
use ssvd::client::ClientError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::api::{DiskControl, EventHub};
use vmm::devices::virtio::block::Disk;
use vmm::disks::{SsvdDisk, SsvdDiskSpec};
use vmm::leases::Leases;

const MIB: u64 = 1 << 20;

fn api_status(e: &ClientError) -> u16 {
    match e {
        ClientError::Api { status, .. } => *status,
        _ => 0,
    }
}

/// Host 1 with a pool whose volumes start at 8 MiB LVs and grow 8 MiB at a
/// time, and one 256 MiB volume in it.
fn host_with_volume(scratch: &Scratch) -> Result<(HostProc, String)> {
    let lun = scratch.sparse_file("lun0.img", 2 << 30)?;
    let h = HostProc::start(scratch.path(), 1, std::slice::from_ref(&lun), 1)?;
    h.client.post(
        "/v1/pools",
        &json!({"name": "pool0", "luns": [lun.display().to_string()],
                "extent_size": "4m", "initial": "8m", "chunk": "8m"}),
    )?;
    let v = h
        .client
        .post("/v1/volumes", &json!({"name": "disk0", "size": "256m"}))?;
    Ok((h, v["id"].as_str().unwrap_or_default().to_string()))
}

fn socket(h: &HostProc) -> PathBuf {
    h.dir.join("ssvd.sock")
}

fn pattern(at: u64, len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((at + i as u64) / 512) as u8 ^ salt)
        .collect()
}

fn write_all(d: &SsvdDisk, from: u64, to: u64, salt: u8) {
    let mut at = from;
    while at < to {
        d.write(&pattern(at, MIB as usize, salt), at).unwrap();
        at += MIB;
    }
}

fn check_all(d: &SsvdDisk, from: u64, to: u64, salt: u8) {
    let mut at = from;
    let mut buf = vec![0u8; MIB as usize];
    while at < to {
        d.read(&mut buf, at).unwrap();
        assert!(
            buf == pattern(at, MIB as usize, salt),
            "data at {at} differs"
        );
        at += MIB;
    }
}

fn open_disk(
    h: &HostProc,
    id: &str,
    leases: &mut Option<Arc<Leases>>,
    hub: &Arc<EventHub>,
) -> Result<Arc<SsvdDisk>> {
    let spec: SsvdDiskSpec = format!("ssvd={},volume={id}", socket(h).display())
        .parse()
        .map_err(anyhow::Error::msg)?;
    Ok(SsvdDisk::open(&spec, leases, hub.clone())?)
}

/// Leases held on this host by `pid`, from ssvd's view of lockd.
fn leases_of(h: &HostProc, pid: u32) -> Result<Vec<Value>> {
    let st = h.client.get("/v1/host")?;
    Ok(st["lockd"]["leases"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l["pid"] == pid)
        .collect())
}

#[test]
fn a_vm_disk_through_ssvd_grows_holds_its_lease_and_snapshots_online() -> Result<()> {
    let scratch = Scratch::new(None)?;
    let (h, id) = host_with_volume(&scratch)?;
    let hub = Arc::new(EventHub::default());
    let events = hub.subscribe();
    let mut leases = None;
    let disk = open_disk(&h, &id, &mut leases, &hub)?;
    let me = std::process::id();

    // The volume is ours: attached, its lease held by this process, and
    // neither ssvd's session nor a second attachment may open it.
    let v = h.client.get(&format!("/v1/volumes/{id}"))?;
    assert_eq!(v["state"], "attached");
    let held = leases_of(&h, me)?;
    assert!(
        held.iter()
            .any(|l| l["spec"]["resource"] == id.as_str() && l["shared"] == false),
        "{held:?}"
    );
    let e = h
        .client
        .post(&format!("/v1/volumes/{id}/session"), &json!({}))
        .unwrap_err();
    assert_eq!(api_status(&e), 409, "{e}");
    let e = h
        .client
        .post(
            &format!("/v1/volumes/{id}/attach"),
            &json!({"writer": "x", "pid": h.ssvd_pid().unwrap_or(1)}),
        )
        .unwrap_err();
    assert_eq!(api_status(&e), 409, "{e}");
    // A snapshot through ssvd's own endpoint is refused: only the writer
    // can hold its I/O.
    let e = h
        .client
        .post(
            &format!("/v1/volumes/{id}/snapshots"),
            &json!({"name": "direct"}),
        )
        .unwrap_err();
    assert_eq!(api_status(&e), 409, "{e}");

    // 40 MiB through an 8 MiB LV: it grows through ssvd, mapped here.
    let lv0 = disk.status().lv_size;
    let t = Instant::now();
    write_all(&disk, 0, 40 * MIB, 1);
    let written = t.elapsed();
    disk.flush().unwrap();
    let st = disk.status();
    assert!(st.lv_size >= 40 * MIB && st.lv_size > lv0, "{st:?}");
    let g = st.growth.clone().unwrap();
    assert!(g.extensions >= 3, "{g:?}");
    assert_eq!(g.failed_extensions, 0);
    check_all(&disk, 0, 40 * MIB, 1);
    let grown: Vec<Value> = events
        .try_iter()
        .filter(|e| e["event"] == "disk.grown")
        .collect();
    assert!(grown.len() as u64 >= g.extensions, "{grown:?}");
    eprintln!(
        "40 MiB written in {written:?}: {} extensions, parked writes {}, park p99 {:.1} ms",
        g.extensions, g.parked_writes, g.park_p99_ms
    );
    // ssvd sees the same LV size.
    let v = h.client.get(&format!("/v1/volumes/{id}"))?;
    assert!(v["allocated_end"].as_u64().unwrap() >= 40 * MIB, "{v}");

    // Online snapshot: the old top freezes, the disk goes on on a new one.
    let snap = disk.snapshot("s1").map_err(anyhow::Error::msg)?;
    assert_eq!(snap["name"], "s1");
    let st = disk.status();
    assert_eq!(st.layers.len(), 2, "{st:?}");
    check_all(&disk, 0, 40 * MIB, 1);
    write_all(&disk, 0, 4 * MIB, 2);
    check_all(&disk, 0, 4 * MIB, 2);
    check_all(&disk, 4 * MIB, 40 * MIB, 1);
    let snaps = h.client.get(&format!("/v1/volumes/{id}/snapshots"))?;
    assert_eq!(snaps[0]["name"], "s1", "{snaps}");

    // Closed: lease released, attachment gone, ssvd's session opens.
    disk.close().map_err(anyhow::Error::msg)?;
    assert!(leases_of(&h, me)?.is_empty());
    let v = h
        .client
        .post(&format!("/v1/volumes/{id}/session"), &json!({}))?;
    assert_eq!(v["state"], "session");
    h.client.delete(&format!("/v1/volumes/{id}/session"))?;
    // What the VM wrote is there, and the snapshot holds the old data: read
    // both through a fresh attachment.
    let disk = open_disk(&h, &id, &mut leases, &hub)?;
    check_all(&disk, 0, 4 * MIB, 2);
    check_all(&disk, 4 * MIB, 40 * MIB, 1);
    disk.close().map_err(anyhow::Error::msg)?;
    Ok(())
}

#[test]
fn losing_lockd_trips_the_disk_fence_at_once() -> Result<()> {
    let scratch = Scratch::new(None)?;
    let (h, id) = host_with_volume(&scratch)?;
    let hub = Arc::new(EventHub::default());
    let events = hub.subscribe();
    let mut leases = None;
    let disk = open_disk(&h, &id, &mut leases, &hub)?;
    write_all(&disk, 0, MIB, 3);
    let lockd_pid = h.client.get("/v1/host")?["lockd"]["pid"]
        .as_i64()
        .unwrap_or(0) as i32;
    assert!(lockd_pid > 0);
    // SAFETY: kill of the lockd process this test's host started.
    unsafe { libc::kill(lockd_pid, libc::SIGKILL) };
    let t = Instant::now();
    while !disk.fence().is_tripped() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = t.elapsed();
    assert!(disk.fence().is_tripped(), "the fence did not trip");
    eprintln!("fence tripped {took:?} after lockd was killed");
    assert!(disk.write(&[0u8; 512], 0).is_err());
    let mut buf = [0u8; 512];
    assert!(disk.read(&mut buf, 0).is_err());
    assert!(disk.status().fenced);
    let e = events
        .recv_timeout(Duration::from_secs(5))
        .into_iter()
        .chain(events.try_iter())
        .find(|e| e["event"] == "lease.lost");
    let e = e.expect("a lease.lost event");
    assert_eq!(e["disk"], id.as_str());
    Ok(())
}

/// ssvd runs the real `ssv-vmm` with the real-mode test guest on a volume
/// of its pool: the guest writes the whole disk (the LV grows through
/// ssvd), flushes, reads it back and exits with its verdict; ssvd notices
/// the exit, ends the attachment and reports `vm.exited`.
#[test]
fn ssvd_runs_a_vm_on_its_volume_and_notices_it_exit() -> Result<()> {
    let scratch = Scratch::new(None)?;
    let lun = scratch.sparse_file("lun0.img", 1 << 30)?;
    let vmm_bin = ssv_tests::leases::built_bin("vmm", "ssv-vmm");
    let h = HostProc::start_with_toml(
        scratch.path(),
        1,
        &[format!("file = {lun:?}")],
        1,
        &format!("[vm]\nvmm = {vmm_bin:?}\n"),
    )?;
    h.client.post(
        "/v1/pools",
        &json!({"name": "pool0", "luns": [lun.display().to_string()],
                "extent_size": "4m", "initial": "4m", "chunk": "4m"}),
    )?;
    let v = h
        .client
        .post("/v1/volumes", &json!({"name": "rm", "size": "16m"}))?;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let image = scratch.path().join("blk_test.bin");
    std::fs::write(&image, vmm::arch::x86_64::realmode::BLK_TEST_GUEST)?;
    let mut events = h.client.send("GET", "/v1/events", None)?;

    let vm = h.client.post(
        "/v1/vms",
        &json!({"name": "rm1", "memory_mib": 4, "realmode": image, "disks": ["rm"]}),
    )?;
    assert_eq!(vm["disks"][0], id.as_str());
    let e = h
        .client
        .post("/v1/vms", &json!({"name": "rm1", "realmode": image}))
        .unwrap_err();
    assert_eq!(api_status(&e), 409, "{e}");
    let listed = h.client.get("/v1/vms")?;
    assert_eq!(listed[0]["name"], "rm1");

    let until = Instant::now() + Duration::from_secs(180);
    let exited = loop {
        let v = h.client.get("/v1/vms/rm1")?;
        if v["exit"].is_string() || Instant::now() > until {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let console =
        std::fs::read_to_string(exited["console"].as_str().unwrap_or_default()).unwrap_or_default();
    let log = std::fs::read_to_string(h.dir.join("state/vms/rm1/vmm.log")).unwrap_or_default();
    assert_eq!(
        exited["exit"], "exit code 0",
        "{exited}\nconsole: {console}\nvmm log: {log}"
    );
    let text = h.client.call("GET", "/v1/vms/rm1/console", None)?.1;
    assert_eq!(text.as_str().unwrap_or_default(), console);
    // The guest's writes grew the LV through ssvd; the volume is free again.
    let v = h.client.get(&format!("/v1/volumes/{id}"))?;
    assert_eq!(v["state"], "closed", "{v}");
    assert!(v["allocated_end"].as_u64().unwrap_or(0) > 8 * MIB, "{v}");
    let mut kinds = Vec::new();
    while let Some(line) = events.next_line()? {
        let e: Value = serde_json::from_str(&line)?;
        let k = e["kind"].as_str().unwrap_or_default().to_string();
        let done = k == "vm.exited";
        kinds.push(k);
        if done {
            break;
        }
    }
    for k in [
        "vm.started",
        "volume.attached",
        "vm.disk.grown",
        "vm.shutdown",
        "vm.exited",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
    h.client.delete("/v1/vms/rm1")?;
    assert_eq!(h.client.get("/v1/vms")?, json!([]));
    Ok(())
}

/// Whether process `pid` runs (a zombie does not).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|t| !t.trim_start().starts_with('Z'))
    })
}

/// Kills the VMM when the test ends, even when it failed: the VM does not
/// end with ssvd.
struct KillOnDrop(u64);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            // SAFETY: kill of the VMM this test started, still running.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// A real-mode guest that spins (`jmp $`): it runs until stopped.
const SPIN_GUEST: &[u8] = &[0xeb, 0xfe];

#[test]
fn vms_and_attached_disks_outlive_an_ssvd_restart() -> Result<()> {
    let scratch = Scratch::new(None)?;
    let lun = scratch.sparse_file("lun0.img", 2 << 30)?;
    let vmm_bin = ssv_tests::leases::built_bin("vmm", "ssv-vmm");
    let mut h = HostProc::start_with_toml(
        scratch.path(),
        1,
        &[format!("file = {lun:?}")],
        1,
        &format!("[vm]\nvmm = {vmm_bin:?}\nstop_timeout_secs = 2\n"),
    )?;
    h.client.post(
        "/v1/pools",
        &json!({"name": "pool0", "luns": [lun.display().to_string()],
                "extent_size": "4m", "initial": "8m", "chunk": "8m"}),
    )?;
    let id = |v: Value| v["id"].as_str().unwrap_or_default().to_string();
    let disk0 = id(h
        .client
        .post("/v1/volumes", &json!({"name": "disk0", "size": "256m"}))?);
    let d1 = id(h
        .client
        .post("/v1/volumes", &json!({"name": "d1", "size": "16m"}))?);

    // A VM on d1, paused (through ssvd) so that it spins no CPU.
    let image = scratch.path().join("spin.bin");
    std::fs::write(&image, SPIN_GUEST)?;
    let vm = h.client.post(
        "/v1/vms",
        &json!({"name": "spin", "memory_mib": 4, "realmode": image, "disks": ["d1"]}),
    )?;
    let pid = vm["pid"].as_u64().unwrap_or(0);
    let _vmm = KillOnDrop(pid);
    let until = Instant::now() + Duration::from_secs(30);
    let paused = loop {
        match h.client.post("/v1/vms/spin/pause", &json!({})) {
            Ok(v) => break v,
            // Until the VMM's API is up.
            Err(e) if Instant::now() < until && api_status(&e) == 503 => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(paused["state"], "paused", "{paused}");
    assert_eq!(paused["reasons"], json!(["user"]), "{paused}");

    // A writer in this process (the VMM's disk code) on disk0.
    let hub = Arc::new(EventHub::default());
    let mut leases = None;
    let disk = open_disk(&h, &disk0, &mut leases, &hub)?;
    write_all(&disk, 0, 4 * MIB, 1);
    disk.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500)); // growth at the threshold
    let st = disk.status();
    let free = (st.lv_size - st.allocated_end) / MIB * MIB;

    // ssvd goes away. New data beyond the LV's free space waits for it and
    // is written once the next ssvd grows the LV; the VM keeps running.
    h.stop_ssvd();
    let end = 4 * MIB + free + 4 * MIB;
    let writer = {
        let disk = disk.clone();
        std::thread::spawn(move || write_all(&disk, 4 * MIB, end, 1))
    };
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !writer.is_finished(),
        "{} MiB went into {} MiB of free LV space without ssvd",
        (end - 4 * MIB) / MIB,
        free / MIB
    );
    assert!(alive(pid), "the VM ended with ssvd");
    h.start_ssvd()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the waiting writer failed"))?;
    assert!(disk.status().lv_size > st.lv_size);
    check_all(&disk, 0, end, 1);
    assert_eq!(disk.status().growth.map(|g| g.failed_extensions), Some(0));

    // The new ssvd knows both attachments and the VM.
    let v = h.client.get(&format!("/v1/volumes/{disk0}"))?;
    assert_eq!(v["state"], "attached", "{v}");
    let e = h
        .client
        .post(
            &format!("/v1/volumes/{d1}/attach"),
            &json!({"writer": "x", "pid": std::process::id()}),
        )
        .unwrap_err();
    assert_eq!(api_status(&e), 409, "{e}");
    let v = h.client.get("/v1/vms/spin")?;
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_u64()),
        (Some("running"), Some(pid)),
        "{v}"
    );
    assert_eq!(v["status"]["state"], "paused", "{v}");
    let running = h.client.post("/v1/vms/spin/resume", &json!({}))?;
    assert_eq!(running["state"], "running", "{running}");
    // The online snapshot goes through the adopted attachment.
    let snap = disk.snapshot("after-restart").map_err(anyhow::Error::msg)?;
    assert_eq!(snap["name"], "after-restart");
    disk.close().map_err(anyhow::Error::msg)?;

    // Stopping the adopted VM ends it and frees its disk.
    let mut events = h.client.send("GET", "/v1/events", None)?;
    let v = h.client.post("/v1/vms/spin/stop", &json!({}))?;
    assert!(v["exit"].is_string(), "{v}");
    assert!(!alive(pid));
    let v = h.client.get(&format!("/v1/volumes/{d1}"))?;
    assert_eq!(v["state"], "closed", "{v}");
    while let Some(line) = events.next_line()? {
        if serde_json::from_str::<Value>(&line)?["kind"] == "vm.exited" {
            break;
        }
    }
    h.client.delete("/v1/vms/spin")?;
    Ok(())
}
