//! The LUNs this host is configured with, and what is on each.
//!
//! A LUN is named by a path (files, block devices) or an `iscsi://` URI
//! (`san::iscsi::uri`); either string is what pools record as the PV's
//! device, and lockd opens the same string for the pool's leases.
//!
//! iSCSI LUNs are opened once per process and kept: every later open of
//! the same LU (a listing, an attach, a pool create) shares the same
//! multipath map, because a second map would log in with the same
//! initiator name and ISIDs, and each login would end the other's session.

use crate::config::LunSource;
use crate::events::Events;
use crate::host::{lock, Host};
use crate::leases::Locks;
use crate::{Error, Result};
use lvm::PvDev;
use san::iscsi::{self, Chap, IscsiUri, LoginOptions, Multipath, MultipathOptions, PathEvent};
use san::{BlockDev, FileDev};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A LUN this host can reach, and what is on it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LunInfo {
    pub path: String,
    pub identity: String,
    pub size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    /// The pool (VG) on it, if any.
    pub pool: Option<String>,
    /// "free", "pool", "other VG", or why it could not be read.
    pub state: String,
}

/// How to log in to one configured iSCSI LUN.
#[derive(Clone)]
struct IscsiSource {
    uri: IscsiUri,
    initiator_name: String,
    host_id: u64,
    chap_user: Option<String>,
    chap_secret_file: Option<PathBuf>,
    locks: Arc<Locks>,
    events: Arc<Events>,
}

#[derive(Default)]
struct IscsiLuns {
    /// By the path `lun_paths` lists.
    configured: HashMap<String, IscsiSource>,
    /// By canonical URI: one map per LU in this process.
    open: HashMap<String, Arc<Multipath>>,
}

/// Process-wide: the sessions belong to the process, whatever holds them.
fn registry() -> &'static Mutex<IscsiLuns> {
    static R: OnceLock<Mutex<IscsiLuns>> = OnceLock::new();
    R.get_or_init(Mutex::default)
}

/// What a LUN holds, from its PV label and metadata.
pub(crate) enum Holds {
    Vg(String),
    PvWithoutVg,
    Nothing,
}

pub(crate) fn holds(pv: &PvDev) -> lvm::Result<Holds> {
    let scan = lvm::scan(std::slice::from_ref(pv))?;
    Ok(match scan.texts.first() {
        Some(t) => Holds::Vg(t.vg.name.clone()),
        None if scan
            .devs
            .first()
            .is_some_and(|d| matches!(d.label, lvm::scan::LabelScan::Pv(_))) =>
        {
            Holds::PvWithoutVg
        }
        None => Holds::Nothing,
    })
}

/// Opens a LUN that is to become a PV of a new pool or of `pool`:
/// refused, with what it holds, when it already belongs to a VG.
pub(crate) fn open_unused_lun(path: &str, pool: &str) -> Result<PvDev> {
    let pv = open_lun(path)?;
    let holds = holds(&pv).map_err(|e| Error::Storage(format!("reading LUN {path}: {e}")))?;
    if let Holds::Vg(vg) = &holds {
        return Err(Error::Conflict(if vg == pool {
            format!("LUN {path} is in pool {pool} already")
        } else {
            format!(
                "LUN {path} belongs to VG {vg}; remove it there first (ssv never formats a LUN that holds a VG)"
            )
        }));
    }
    Ok(pv)
}

/// Opens a LUN by the path (or URI) a pool records for it. Files and block
/// devices open anywhere; an iSCSI LUN only in a process that has the
/// host's configuration of it (ssvd).
pub fn open_lun(path: &str) -> Result<PvDev> {
    if iscsi::is_iscsi_uri(path) {
        let dev = open_iscsi(path)?;
        return Ok(PvDev::new(dev, path));
    }
    let dev = FileDev::open(std::path::Path::new(path), &san::OpenOptions::new())
        .map_err(|e| Error::NotFound(format!("LUN {path}: {e}")))?;
    Ok(PvDev::new(Arc::new(dev), path))
}

/// How a writer in another process of this host (a VMM) logs in to an
/// iSCSI LUN of the pool it writes: under its own initiator name
/// (`host<ID>-vmm`) with its pid as ISID qualifier, so that it is an I_T
/// nexus of its own and ends neither ssvd's sessions nor another VMM's;
/// with this host's CHAP credentials and path policy.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IscsiAccess {
    pub initiator_name: String,
    #[serde(default)]
    pub chap_user: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub chap_secret_file: Option<PathBuf>,
    /// How long I/O waits for a path while none is up (no_path_retry).
    pub no_path_retry_ms: u64,
}

/// The access to LUN `path` for another process, if it is an iSCSI LUN of
/// this host's configuration.
pub(crate) fn iscsi_access(path: &str) -> Option<IscsiAccess> {
    let reg = lock(registry());
    let src = reg.configured.get(path)?;
    Some(IscsiAccess {
        initiator_name: iscsi::initiator_name(&format!("host{}", src.host_id), "vmm"),
        chap_user: src.chap_user.clone(),
        chap_secret_file: src.chap_secret_file.clone(),
        no_path_retry_ms: u64::try_from(src.multipath_options().no_path_retry.as_millis())
            .unwrap_or(u64::MAX),
    })
}

/// Opens a PV of an attachment in the writer's process: a file or block
/// device by its path, an iSCSI LUN with the `access` ssvd gave.
pub fn open_attached(path: &str, access: Option<&IscsiAccess>) -> Result<PvDev> {
    let Some(a) = access.filter(|_| iscsi::is_iscsi_uri(path)) else {
        return open_lun(path);
    };
    let uri: IscsiUri = path
        .parse()
        .map_err(|e: iscsi::UriError| Error::Invalid(format!("LUN {path}: {e}")))?;
    let mut reg = lock(registry());
    let key = uri.canonical();
    if let Some(mp) = reg.open.get(&key) {
        return Ok(PvDev::new(mp.clone(), path));
    }
    let opts = MultipathOptions {
        no_path_retry: Duration::from_millis(a.no_path_retry_ms),
        ..MultipathOptions::default()
    };
    let mp = Arc::new(log_in(
        &uri,
        &a.initiator_name,
        (&a.chap_user, &a.chap_secret_file),
        std::process::id(),
        opts,
    )?);
    reg.open.insert(key, mp.clone());
    Ok(PvDev::new(mp, path))
}

fn open_iscsi(path: &str) -> Result<Arc<Multipath>> {
    let mut reg = lock(registry());
    let src = reg.configured.get(path).cloned().ok_or_else(|| {
        Error::NotFound(format!(
            "LUN {path} is not an iscsi [[lun]] of this host's configuration"
        ))
    })?;
    let key = src.uri.canonical();
    if let Some(mp) = reg.open.get(&key) {
        return Ok(mp.clone());
    }
    // Logging in under the registry's lock: two threads must not log in
    // to one LU at once (same name and ISIDs), and this happens once per LU.
    let mp = Arc::new(src.open()?);
    log::info!(
        "LUN {path}: LU {} as {}, paths {:?}",
        mp.wwid(),
        src.initiator_name,
        mp.status()
            .iter()
            .map(|p| format!("{} {}", p.portal, if p.up { "up" } else { "down" }))
            .collect::<Vec<_>>()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    mp.subscribe(tx);
    let events = src.events.clone();
    let name = path.to_string();
    std::thread::Builder::new()
        .name("lun-paths".into())
        .spawn(move || {
            for e in rx {
                path_event(&events, &name, &e);
            }
        })
        .map_err(|e| Error::Storage(format!("cannot start the path event thread: {e}")))?;
    reg.open.insert(key, mp.clone());
    Ok(mp)
}

/// Logs a path event and makes it an ssvd event (`lun.path_down`, …).
fn path_event(events: &Events, lun: &str, e: &PathEvent) {
    let (kind, msg) = match e {
        PathEvent::Up { portal, .. } => ("lun.path_up", format!("LUN {lun}: path {portal} is up")),
        PathEvent::Down { portal, reason, .. } => (
            "lun.path_down",
            format!("LUN {lun}: path {portal} is down: {reason}"),
        ),
        PathEvent::Queueing => (
            "lun.queueing",
            format!("LUN {lun}: no path is up; I/O waits for one (no_path_retry)"),
        ),
        PathEvent::Failing => (
            "lun.failing",
            format!("LUN {lun}: no path for no_path_retry; I/O fails until a path returns"),
        ),
        PathEvent::Fenced => (
            "lun.fenced",
            format!("LUN {lun}: our reservation key was removed by another host"),
        ),
    };
    match e {
        PathEvent::Up { .. } => log::info!("{msg}"),
        _ => log::warn!("{msg}"),
    }
    events.emit(kind, None, None, msg);
}

/// Logs in to `uri` on every path as `initiator_name` with ISID qualifier
/// `qualifier`, with CHAP when a user and a file holding only the secret
/// are given.
fn log_in(
    uri: &IscsiUri,
    initiator_name: &str,
    (chap_user, chap_secret_file): (&Option<String>, &Option<PathBuf>),
    qualifier: u32,
    opts: MultipathOptions,
) -> Result<Multipath> {
    let mut login = LoginOptions::new(initiator_name, [0; 6]);
    if let (Some(user), Some(file)) = (chap_user, chap_secret_file) {
        let text = std::fs::read(file).map_err(|e| {
            Error::Invalid(format!(
                "LUN {uri}: cannot read chap_secret_file {}: {e}",
                file.display()
            ))
        })?;
        login.chap = Some(Chap {
            user: user.clone(),
            secret: text.trim_ascii_end().to_vec(),
        });
    }
    login.timeout = opts.io_timeout;
    iscsi::open_uri_with(uri, &login, qualifier, opts)
        .map_err(|e| Error::Unavailable(format!("LUN {uri}: {e}")))
}

impl IscsiSource {
    fn open(&self) -> Result<Multipath> {
        // host ids are 1 to 2000 (checked at load): they fit.
        let qualifier = u32::try_from(self.host_id).unwrap_or(u32::MAX);
        log_in(
            &self.uri,
            &self.initiator_name,
            (&self.chap_user, &self.chap_secret_file),
            qualifier,
            self.multipath_options(),
        )
    }

    /// Commands get the initiator's default limit; with no path, I/O queues
    /// as long as this host's leases can still be valid (lockd's
    /// io_timeout, via `no_path_retry_for`), as dm-multipath under VDSM.
    fn multipath_options(&self) -> MultipathOptions {
        let lease_io = self
            .locks
            .status()
            .map(|st| Duration::from_secs(st.io_timeout))
            .unwrap_or(Duration::from_secs(lockd::timing::DEFAULT_IO_TIMEOUT));
        MultipathOptions {
            no_path_retry: iscsi::multipath::no_path_retry_for(lease_io),
            ..MultipathOptions::default()
        }
    }
}

impl Host {
    pub(crate) fn lun_paths(&self) -> Vec<String> {
        let paths: Vec<String> = self.config.luns.iter().map(LunSource::path).collect();
        // Every caller opens LUNs by these paths next: make the iSCSI ones
        // openable by path alone.
        let mut reg = lock(registry());
        for l in &self.config.luns {
            let LunSource::Iscsi {
                uri,
                chap_user,
                chap_secret_file,
            } = l
            else {
                continue;
            };
            if reg.configured.contains_key(uri) {
                continue;
            }
            let Ok(parsed) = uri.parse::<IscsiUri>() else {
                // Checked when the configuration was loaded.
                continue;
            };
            reg.configured.insert(
                uri.clone(),
                IscsiSource {
                    uri: parsed,
                    initiator_name: self.config.initiator_name(),
                    host_id: self.config.host_id,
                    chap_user: chap_user.clone(),
                    chap_secret_file: chap_secret_file.clone(),
                    locks: self.locks.clone(),
                    events: self.events.clone(),
                },
            );
        }
        paths
    }

    /// The configured LUNs with what is on each.
    pub fn luns(&self) -> Vec<LunInfo> {
        self.lun_paths()
            .into_iter()
            .map(|path| match open_lun(&path) {
                Ok(pv) => {
                    let (pool, state) = match holds(&pv) {
                        Ok(Holds::Vg(vg)) => {
                            let ours = lock(&self.pools).contains_key(&vg);
                            (Some(vg), if ours { "pool" } else { "other VG" }.to_string())
                        }
                        Ok(Holds::PvWithoutVg) => (None, "PV without a VG".into()),
                        Ok(Holds::Nothing) => (None, "free".into()),
                        Err(e) => (None, format!("unreadable: {e}")),
                    };
                    LunInfo {
                        identity: pv.dev.identity().to_string(),
                        size: pv.dev.size(),
                        logical_sector_size: pv.dev.logical_sector_size(),
                        physical_sector_size: pv.dev.physical_sector_size(),
                        path,
                        pool,
                        state,
                    }
                }
                Err(e) => LunInfo {
                    path,
                    identity: String::new(),
                    size: 0,
                    logical_sector_size: 0,
                    physical_sector_size: 0,
                    pool: None,
                    state: e.to_string(),
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The URI is the PV's device path in the metadata: LVM's writer and
    /// reader must keep it byte for byte (quotes, ':', '/', ',', '[').
    #[test]
    fn a_uri_survives_as_the_pv_device_in_lvm_metadata() {
        for uri in [
            "iscsi://127.0.0.1:3260,127.0.0.2:3260/iqn.2026-11.io.ssv.test:t1/1",
            "iscsi://[::1]:3260,[fe80::1]:3261/eui.0123456789abcdef/65535",
        ] {
            let f = tempfile::NamedTempFile::new().unwrap();
            f.as_file().set_len(64 << 20).unwrap();
            let dev = FileDev::open(f.path(), &san::OpenOptions::new()).unwrap();
            let pv = PvDev::new(Arc::new(dev), uri);
            lvm::format_pv(&*pv.dev, &lvm::PvFormat::default()).unwrap();
            let vg = lvm::OpenVg::create("vg0", std::slice::from_ref(&pv), 4 << 20).unwrap();
            assert_eq!(vg.vg().pvs[0].device.as_deref(), Some(uri));
            drop(vg);
            let back = lvm::OpenVg::open(std::slice::from_ref(&pv), Some("vg0")).unwrap();
            assert_eq!(back.vg().pvs[0].device.as_deref(), Some(uri));
            let scan = lvm::scan(std::slice::from_ref(&pv)).unwrap();
            let text = String::from_utf8_lossy(&scan.texts[0].raw);
            assert!(text.contains(&format!("device = \"{uri}\"")), "{text}");
        }
    }

    #[test]
    fn an_unconfigured_uri_is_not_opened() {
        let e = open_lun("iscsi://127.0.0.1:9/iqn.2026-11.io.ssv.test:none/1")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not an iscsi [[lun]]"), "{e}");
    }
}
