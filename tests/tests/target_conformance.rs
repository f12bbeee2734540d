//! libiscsi's conformance suite (`iscsi-test-cu`, Debian libiscsi-bin)
//! against our target, in process, on two portals: every SCSI suite
//! (215 tests, MultipathIO through both portals) and the iSCSI suites for
//! CmdSN, DataSN, residuals and task management must pass. libiscsi counts
//! a skipped test as passed; TESTING.md lists the suites that pass only by
//! skipping.

use san::target::{LunConfig, TargetConfig, TargetServer};
use san::{FileDev, OpenOptions};
use ssv_tests::{find_tool, Scratch, MIB};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const IQN: &str = "iqn.2026-11.org.ssv.test:conformance";

fn run(urls: &[String], suite: &str) -> (bool, String) {
    let out = Command::new("iscsi-test-cu")
        .args(["-d", "-n", "-t", suite])
        .args(urls)
        .output()
        .expect("running iscsi-test-cu");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let summary = text
        .lines()
        .find(|l| l.trim_start().starts_with("tests "))
        .unwrap_or("no summary")
        .trim()
        .to_string();
    (
        out.status.success(),
        format!("{suite}: {summary}\n{}", tail(&text)),
    )
}

fn tail(t: &str) -> String {
    let lines: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("FAILED") || l.contains("Test:"))
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn iscsi_test_cu_passes_on_our_target() {
    if find_tool("iscsi-test-cu").is_none() {
        eprintln!("SKIPPED: iscsi-test-cu not installed (Debian package libiscsi-bin)");
        return;
    }
    let dir = Scratch::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR")))).unwrap();
    let file = dir.path().join("lun");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(256 * MIB)
        .unwrap();
    let dev = FileDev::open(&file, &OpenOptions::default()).unwrap();
    let server = TargetServer::start(TargetConfig::new(
        IQN,
        vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.2:0".parse().unwrap(),
        ],
        vec![LunConfig::new(1, Arc::new(dev)).thin(true)],
    ))
    .unwrap();
    let urls: Vec<String> = server
        .portals()
        .iter()
        .map(|p| format!("iscsi://{p}/{IQN}/1"))
        .collect();
    for suite in [
        "SCSI",
        "iSCSI.iSCSIcmdsn",
        "iSCSI.iSCSIdatasn",
        "iSCSI.iSCSIResiduals",
        "iSCSI.iSCSITMF",
    ] {
        let (ok, report) = run(&urls, suite);
        assert!(ok, "{report}");
        eprintln!("{}", report.lines().next().unwrap_or(""));
    }
    assert_eq!(server.stats().panics, 0);
    server.stop();
}
