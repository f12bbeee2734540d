//! Helpers shared by the `target_*` tests: a target on loopback with real
//! file-backed LUNs, sessions of our own initiator, and raw command helpers.
#![allow(dead_code)]

use san::iscsi::pdu::encode_lun;
use san::iscsi::text::Offer;
use san::iscsi::{login, Chap, Completion, DataPhase, IscsiError, LoginOptions, Session};
use san::scsi::{Cdb, Sense, Status};
use san::target::{LunConfig, TargetConfig, TargetParams, TargetServer};
use san::{BlockDev, FileDev, OpenOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const IQN: &str = "iqn.2026-01.test.ssv:target";
pub const HOST_A: &str = "iqn.2026-01.test.ssv:host-a";
pub const HOST_B: &str = "iqn.2026-01.test.ssv:host-b";
pub const HOST_C: &str = "iqn.2026-01.test.ssv:host-c";
pub const LUN: u16 = 1;
pub const LUN_SIZE: u64 = 64 << 20;
pub const BLOCK: usize = 512;

pub struct Fixture {
    pub server: TargetServer,
    pub path: PathBuf,
    pub dev: Arc<FileDev>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub fn portal(&self, i: usize) -> SocketAddr {
        self.server.portals()[i]
    }
}

pub struct Setup {
    pub portals: usize,
    pub params: TargetParams,
    pub chap: Option<Chap>,
    pub thin: bool,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            portals: 2,
            params: TargetParams::default(),
            chap: None,
            thin: true,
        }
    }
}

pub fn start(s: Setup) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun1.img");
    let opts = OpenOptions::new().create_size(Some(LUN_SIZE));
    let dev = Arc::new(FileDev::open(&path, &opts).unwrap());
    let portals = vec!["127.0.0.1:0".parse().unwrap(); s.portals];
    let lun = LunConfig::new(LUN, dev.clone() as Arc<dyn BlockDev>).thin(s.thin);
    let mut config = TargetConfig::new(IQN, portals, vec![lun]);
    config.params = s.params;
    config.chap = s.chap;
    let server = TargetServer::start(config).unwrap();
    Fixture {
        server,
        path,
        dev,
        _dir: dir,
    }
}

pub fn isid(n: u16) -> [u8; 6] {
    san::iscsi::login::isid(0x00ab_cdef, n)
}

pub fn options(initiator: &str, path: u16) -> LoginOptions {
    let mut o = LoginOptions::new(initiator, isid(path));
    o.timeout = Duration::from_secs(5);
    o
}

pub fn connect(addr: SocketAddr, initiator: &str, path: u16) -> Session {
    connect_with(addr, &options(initiator, path)).unwrap()
}

pub fn connect_with(addr: SocketAddr, o: &LoginOptions) -> Result<Session, IscsiError> {
    Ok(Session::new(login(addr, Some(IQN), o)?))
}

pub fn offer_small(mrdsl: u32) -> Offer {
    Offer {
        max_recv_data_segment_length: mrdsl,
        ..Offer::default()
    }
}

/// Runs one CDB on LUN 1.
pub fn exec(s: &Session, cdb: &Cdb, data: DataPhase<'_>) -> Completion {
    let b = cdb.encode();
    s.execute(encode_lun(LUN), &b[..cdb.len()], data).unwrap()
}

pub fn raw(s: &Session, cdb: &[u8], data: DataPhase<'_>) -> Completion {
    s.execute(encode_lun(LUN), cdb, data).unwrap()
}

pub fn sense(c: &Completion) -> Sense {
    assert_eq!(c.status, Status::CHECK_CONDITION, "{c:?}");
    Sense::decode(&c.sense).unwrap()
}

/// TEST UNIT READY until GOOD (clears the unit attentions of a new nexus).
pub fn clear_ua(s: &Session) {
    for _ in 0..8 {
        let c = exec(s, &Cdb::TestUnitReady, DataPhase::None);
        if c.status == Status::GOOD {
            return;
        }
        assert_eq!(sense(&c).key, san::scsi::sense::UNIT_ATTENTION, "{c:?}");
    }
    panic!("unit attentions do not clear");
}

pub fn read16(s: &Session, lba: u64, blocks: u32) -> (Completion, Vec<u8>) {
    let mut buf = vec![0u8; blocks as usize * BLOCK];
    let c = exec(
        s,
        &Cdb::Read16 {
            lba,
            blocks,
            fua: false,
            dpo: false,
        },
        DataPhase::In(&mut buf),
    );
    (c, buf)
}

pub fn write16(s: &Session, lba: u64, data: &[u8]) -> Completion {
    exec(
        s,
        &Cdb::Write16 {
            lba,
            blocks: (data.len() / BLOCK) as u32,
            fua: false,
            dpo: false,
        },
        DataPhase::Out(data),
    )
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
