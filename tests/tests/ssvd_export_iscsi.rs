//! A volume open on a host is also an iSCSI target when `[export]
//! iscsi_portals` is set: libiscsi's tools (iscsi-ls, iscsi-inq,
//! iscsi-readcapacity16) see it, data qemu-io writes over NBD reads back
//! through iSCSI and data written through iSCSI reads back over NBD, and
//! once the volume is closed its target is gone (logins refused) until it
//! is opened again.
//!
//! The iSCSI reader and writer is our initiator (`san::iscsi`): this
//! machine's qemu has no iSCSI block driver (qemu-block-extra), and
//! libiscsi-bin has no tool that copies data out.

use anyhow::{bail, ensure, Context, Result};
use san::iscsi::{login, login::isid, IscsiError, IscsiLun, IscsiUri, LoginOptions, Session};
use san::BlockDev;
use serde_json::json;
use ssv_tests::hosts::HostProc;
use ssv_tests::{find_tool, Scratch};
use std::process::Command;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const MIB: usize = 1 << 20;
const INITIATOR: &str = "iqn.2026-11.io.ssv.test:export-reader";

fn run(tool: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("running {tool}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{tool} {args:?}: {}\n{text}",
        out.status
    );
    Ok(text)
}

fn qemu_io(uri: &str, cmds: &[&str]) -> Result<String> {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let text = run("qemu-io", &args)?;
    ensure!(
        !text.contains("failed") && !text.contains("Pattern verification"),
        "qemu-io {cmds:?} on {uri}: {text}"
    );
    Ok(text)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// LUN 0 of the target `uri` names, through our initiator.
fn open_lun(uri: &IscsiUri, path: u16) -> std::result::Result<IscsiLun, IscsiError> {
    let mut o = LoginOptions::new(INITIATOR, isid(7, path));
    o.timeout = Duration::from_secs(5);
    let c = login(uri.portals[0], Some(&uri.target), &o)?;
    IscsiLun::open(Session::new(c), uri.lun)
}

#[test]
fn an_open_volume_is_an_iscsi_target_until_closed() -> Result<()> {
    let tools = ["qemu-io", "iscsi-ls", "iscsi-inq", "iscsi-readcapacity16"];
    if let Some(t) = tools.iter().find(|t| find_tool(t).is_none()) {
        println!("SKIPPED: {t} not installed (Debian packages qemu-utils, libiscsi-bin)");
        return Ok(());
    }
    let scratch = Scratch::new(None)?;
    let lun = scratch.sparse_file("lun0.img", 16 * GIB)?;
    let port = free_port()?;
    let h = HostProc::start_with_toml(
        scratch.path(),
        1,
        &[format!("file = {lun:?}")],
        1,
        &format!("[export]\niscsi_portals = [\"127.0.0.1:{port}\"]\n"),
    )?;
    let c = &h.client;
    c.post(
        "/v1/pools",
        &json!({"name": "pool0", "luns": [lun.display().to_string()]}),
    )?;
    c.post(
        "/v1/volumes",
        &json!({"id": "v1", "name": "web", "size": "1g"}),
    )?;
    let v = c.post("/v1/volumes/v1/session", &json!({}))?;
    let nbd = v["nbd"].as_str().context("an NBD URI")?.to_string();
    let iscsi = v["iscsi"].as_str().context("an iSCSI URI")?.to_string();
    let target = "iqn.2026-11.io.ssv:export:v1";
    assert_eq!(iscsi, format!("iscsi://127.0.0.1:{port}/{target}/0"));
    assert_eq!(c.get("/v1/volumes/v1")?["iscsi"], iscsi.as_str());
    let uri: IscsiUri = iscsi.parse()?;
    let schema = c.get("/v1/openapi.json")?["components"]["schemas"]["VolumeDetail"].to_string();
    ensure!(schema.contains("\"iscsi\""), "the API schema: {schema}");

    // libiscsi's tools: discovery lists the target with LUN 0, INQUIRY
    // answers, the capacity is the volume's size.
    let portal = format!("iscsi://127.0.0.1:{port}");
    let ls = run("iscsi-ls", &["-i", INITIATOR, "-s", &portal])?;
    ensure!(
        ls.contains(target) && ls.contains("Lun:0"),
        "iscsi-ls: {ls}"
    );
    let inq = run("iscsi-inq", &["-i", INITIATOR, &iscsi])?;
    ensure!(inq.contains("SSV"), "iscsi-inq: {inq}");
    let serial = run(
        "iscsi-inq",
        &["-i", INITIATOR, "-e", "1", "-c", "0x80", &iscsi],
    )?;
    ensure!(
        serial.to_lowercase().contains("serial"),
        "VPD 0x80: {serial}"
    );
    let cap = run("iscsi-readcapacity16", &["-i", INITIATOR, "-s", &iscsi])?;
    ensure!(cap.trim() == GIB.to_string(), "capacity: {cap}");

    // NBD writes, iSCSI reads.
    qemu_io(
        &nbd,
        &["write -P 0x5a 0 4M", "write -P 0xa5 1M 64k", "flush"],
    )?;
    let l = open_lun(&uri, 1)?;
    assert_eq!(l.size(), GIB);
    let mut buf = vec![0u8; 4 * MIB];
    l.read_at(&mut buf, 0)?;
    let mut want = vec![0x5au8; 4 * MIB];
    want[MIB..MIB + (64 << 10)].fill(0xa5);
    ensure!(buf == want, "iSCSI reads what qemu-io wrote over NBD");

    // iSCSI writes (past the NBD data, and over part of it), NBD reads.
    l.write_at(&vec![0x3cu8; MIB], 8 * MIB as u64)?;
    l.write_at(&vec![0x11u8; 4096], 0)?;
    l.flush()?;
    qemu_io(
        &nbd,
        &[
            "read -P 0x3c 8M 1M",
            "read -P 0x11 0 4k",
            "read -P 0x5a 4k 1020k",
            "read -P 0xa5 1M 64k",
            "read -P 0 9M 1M",
        ],
    )?;

    // Closed: the session is cut, the target is gone.
    c.delete("/v1/volumes/v1/session")?;
    ensure!(c.get("/v1/volumes/v1")?.get("iscsi").is_none());
    ensure!(
        l.read_at(&mut buf[..4096], 0).is_err(),
        "the session was cut"
    );
    match open_lun(&uri, 2) {
        Err(IscsiError::LoginRejected { class, detail, .. }) => {
            ensure!((class, detail) == (2, 3), "refused as {class}/{detail}")
        }
        Err(e) => bail!("expected a login refusal, got {e}"),
        Ok(_) => bail!("logged in to the target of a closed volume"),
    }
    ensure!(
        run("iscsi-inq", &["-i", INITIATOR, &iscsi]).is_err(),
        "iscsi-inq reaches a closed volume"
    );
    let ls = run("iscsi-ls", &["-i", INITIATOR, &portal])?;
    ensure!(!ls.contains(target), "still discovered: {ls}");

    // Opened again: the same target and data are back.
    let v = c.post("/v1/volumes/v1/session", &json!({}))?;
    assert_eq!(v["iscsi"], iscsi.as_str());
    let until = Instant::now() + Duration::from_secs(10);
    let l = loop {
        match open_lun(&uri, 3) {
            Ok(l) => break l,
            Err(e) if Instant::now() > until => bail!("reopened target: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    l.read_at(&mut buf[..MIB], 8 * MIB as u64)?;
    ensure!(buf[..MIB].iter().all(|&b| b == 0x3c));
    drop(l);
    c.delete("/v1/volumes/v1/session")?;
    ensure!(
        !h.ssvd_log().contains("panicked"),
        "ssvd log: {}",
        h.ssvd_log()
    );
    Ok(())
}
