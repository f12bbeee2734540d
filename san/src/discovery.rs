//! What LUNs a host can reach, for ssvd: every disk LU behind the
//! configured iSCSI portals (SendTargets on each portal, REPORT LUNS on
//! each target) and every configured local device or file, with identity,
//! size, sector sizes and the paths to it. Paths are grouped by identity
//! (the VPD 0x83 WWID for iSCSI); paths that claim one WWID but disagree
//! on serial or geometry are reported as a conflict, never merged.

use crate::iscsi::{self, IscsiError, IscsiLun, LoginOptions, Session};
use crate::scsi::{Cdb, StandardInquiry};
use crate::{BlockDev, FileDev, OpenOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Peripheral device type of a disk (SBC).
const DEVICE_TYPE_DISK: u8 = 0x00;
/// REPORT LUNS: 8-byte header, then 8 bytes per LUN.
const REPORT_LUNS_ALLOC: u32 = 8 + 8 * 1024;
const STANDARD_INQUIRY_ALLOC: u16 = 96;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LunPath {
    Iscsi {
        portal: SocketAddr,
        target: String,
        lun: u16,
    },
    Local(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredLun {
    /// `wwid:<WWID>` for SCSI LUs, the device identity for local ones.
    pub identity: String,
    pub serial: String,
    pub size: u64,
    pub logical_sector: u32,
    pub physical_sector: u32,
    pub paths: Vec<LunPath>,
}

/// Everything found, and what could not be reached or did not add up.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub luns: Vec<DiscoveredLun>,
    pub problems: Vec<String>,
}

/// Probes `portals` (logging in with `login`'s name; a probe ISID of its
/// own) and opens `local` paths read-only.
pub fn discover_luns(portals: &[SocketAddr], local: &[PathBuf], login: &LoginOptions) -> Inventory {
    let mut inv = Inventory::default();
    let mut probe = login.clone();
    // Not any path's ISID: a probe must not reinstate (and kill) a live session.
    probe.isid[4] = 0xff;
    probe.isid[5] = 0xfe;
    for &portal in portals {
        let targets = match iscsi::discover(portal, &probe) {
            Ok(t) => t,
            Err(e) => {
                inv.problems
                    .push(format!("{portal}: discovery failed: {e}"));
                continue;
            }
        };
        for t in targets {
            if let Err(e) = probe_target(&mut inv, portal, &t.name, &probe) {
                inv.problems.push(format!("{portal} {}: {e}", t.name));
            }
        }
    }
    for path in local {
        match FileDev::open(path, &OpenOptions::default().read_only(true)) {
            Ok(d) => add(
                &mut inv,
                DiscoveredLun {
                    identity: d.identity().to_string(),
                    serial: String::new(),
                    size: d.size(),
                    logical_sector: d.logical_sector_size(),
                    physical_sector: d.physical_sector_size(),
                    paths: vec![LunPath::Local(path.clone())],
                },
            ),
            Err(e) => inv.problems.push(format!("{}: {e}", path.display())),
        }
    }
    inv
}

fn probe_target(
    inv: &mut Inventory,
    portal: SocketAddr,
    target: &str,
    probe: &LoginOptions,
) -> Result<(), IscsiError> {
    let s = Arc::new(Session::new(iscsi::login(portal, Some(target), probe)?));
    for lun in report_luns(&s)? {
        let path = LunPath::Iscsi {
            portal,
            target: target.to_string(),
            lun,
        };
        let mut inq = vec![0u8; STANDARD_INQUIRY_ALLOC as usize];
        let cdb = Cdb::Inquiry {
            page: None,
            alloc_len: STANDARD_INQUIRY_ALLOC,
        };
        s.execute(
            iscsi::pdu::encode_lun(lun),
            &cdb.encode()[..cdb.len()],
            iscsi::DataPhase::In(&mut inq),
        )?;
        let disk = StandardInquiry::decode(&inq)
            .map(|i| i.qualifier == 0 && i.device_type == DEVICE_TYPE_DISK)
            .unwrap_or(false);
        if !disk {
            continue;
        }
        match IscsiLun::open(s.clone(), lun) {
            Ok(l) => add(
                inv,
                DiscoveredLun {
                    identity: l.identity().to_string(),
                    serial: l.serial().to_string(),
                    size: l.size(),
                    logical_sector: l.logical_sector_size(),
                    physical_sector: l.physical_sector_size(),
                    paths: vec![path],
                },
            ),
            Err(e) => inv
                .problems
                .push(format!("{portal} {target} LUN {lun}: {e}")),
        }
    }
    Ok(())
}

/// REPORT LUNS, peripheral/flat addressing; other formats are skipped.
fn report_luns(s: &Session) -> Result<Vec<u16>, IscsiError> {
    let mut buf = vec![0u8; REPORT_LUNS_ALLOC as usize];
    let cdb = Cdb::ReportLuns {
        select: 0,
        alloc_len: REPORT_LUNS_ALLOC,
    };
    let done = s.execute(
        [0; 8],
        &cdb.encode()[..cdb.len()],
        iscsi::DataPhase::In(&mut buf),
    )?;
    if done.status != 0 {
        return Err(IscsiError::Protocol(format!(
            "REPORT LUNS ended with status {:#04x}",
            done.status
        )));
    }
    let listed = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let end = (8 + listed).min(buf.len());
    Ok(buf[8..end]
        .chunks_exact(8)
        .filter(|e| e[0] >> 6 <= 1)
        .map(|e| {
            let mut l = [0u8; 8];
            l.copy_from_slice(e);
            iscsi::pdu::decode_lun(l)
        })
        .collect())
}

/// Merges `lun` into the inventory by identity, refusing a merge when the
/// geometry or serial differs (two LUs claiming one WWID).
fn add(inv: &mut Inventory, lun: DiscoveredLun) {
    match inv.luns.iter_mut().find(|l| l.identity == lun.identity) {
        None => inv.luns.push(lun),
        Some(l) => {
            let same = l.size == lun.size
                && l.serial == lun.serial
                && l.logical_sector == lun.logical_sector
                && l.physical_sector == lun.physical_sector;
            if same {
                l.paths.extend(lun.paths);
            } else {
                inv.problems.push(format!(
                    "{} is claimed by different LUs: {:?} ({} bytes, serial {:?}) and {:?} ({} bytes, serial {:?}); set a unique identity per LUN on the array",
                    lun.identity, l.paths, l.size, l.serial, lun.paths, lun.size, lun.serial
                ));
            }
        }
    }
}
