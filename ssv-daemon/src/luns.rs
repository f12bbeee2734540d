//! The LUNs this host is configured with, and what is on each.

use crate::config::LunSource;
use crate::host::{lock, Host};
use crate::{Error, Result};
use lvm::PvDev;
use san::{BlockDev, FileDev};
use serde::Serialize;
use std::sync::Arc;

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

pub(crate) fn open_lun(path: &str) -> Result<PvDev> {
    let dev = FileDev::open(std::path::Path::new(path), &san::OpenOptions::new())
        .map_err(|e| Error::NotFound(format!("LUN {path}: {e}")))?;
    Ok(PvDev::new(Arc::new(dev), path))
}

impl Host {
    pub(crate) fn lun_paths(&self) -> Vec<String> {
        self.config
            .luns
            .iter()
            .map(|l| match l {
                LunSource::File(p) | LunSource::Device(p) => p.display().to_string(),
            })
            .collect()
    }

    /// The configured LUNs with what is on each.
    pub fn luns(&self) -> Vec<LunInfo> {
        self.lun_paths()
            .into_iter()
            .map(|path| match open_lun(&path) {
                Ok(pv) => {
                    let (pool, state) = match lvm::scan(std::slice::from_ref(&pv)) {
                        Ok(scan) => match scan.texts.first().map(|t| t.vg.name.clone()) {
                            Some(vg) => {
                                let ours = lock(&self.pools).contains_key(&vg);
                                (Some(vg), if ours { "pool" } else { "other VG" }.to_string())
                            }
                            None if scan.devs.first().is_some_and(|d| {
                                matches!(d.label, lvm::scan::LabelScan::Pv(_))
                            }) =>
                            {
                                (None, "PV without a VG".into())
                            }
                            None => (None, "free".into()),
                        },
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
