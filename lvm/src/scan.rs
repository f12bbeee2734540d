//! Reading what is on a set of devices: labels, metadata area headers and
//! the text each area commits, every problem recorded, nothing written.

use crate::label::{read_label, PvLabel};
use crate::mda::{read_header, read_text, MdaHeader};
use crate::model::Vg;
use crate::{Error, Result};
use san::BlockDev;
use std::collections::HashMap;
use std::sync::Arc;

/// A device and the path it was reached by (kept as the PV's `device` hint).
#[derive(Clone)]
pub struct PvDev {
    pub dev: Arc<dyn BlockDev>,
    pub path: String,
}

impl PvDev {
    pub fn new(dev: Arc<dyn BlockDev>, path: impl Into<String>) -> PvDev {
        PvDev {
            dev,
            path: path.into(),
        }
    }
}

impl std::fmt::Debug for PvDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.path, self.dev.identity())
    }
}

pub enum LabelScan {
    /// No LVM label: not a PV.
    None,
    Bad(String),
    Pv(PvLabel),
}

pub enum AreaScan {
    BadHeader(String),
    /// No committed metadata (an orphan PV's area).
    Empty(MdaHeader),
    Ignored(MdaHeader),
    BadText(MdaHeader, String),
    /// Valid metadata: index into [`Scan::texts`].
    Metadata(MdaHeader, usize),
}

pub struct ScannedArea {
    pub start: u64,
    pub size: u64,
    pub state: AreaScan,
}

pub struct ScannedDev {
    pub pv: PvDev,
    pub label: LabelScan,
    pub areas: Vec<ScannedArea>,
}

/// One distinct metadata text (identical copies are parsed once).
pub struct ScannedText {
    pub raw: Vec<u8>,
    pub vg: Vg,
}

pub struct Scan {
    pub devs: Vec<ScannedDev>,
    pub texts: Vec<ScannedText>,
}

/// Reads every device; a device that cannot be read at all is an error,
/// damaged structures are recorded in the result.
pub fn scan(devs: &[PvDev]) -> Result<Scan> {
    let mut out = Scan {
        devs: Vec::new(),
        texts: Vec::new(),
    };
    let mut seen: HashMap<(u32, u64), Result<usize, String>> = HashMap::new();
    for pv in devs {
        let dev = &*pv.dev;
        let label = match read_label(dev) {
            Ok(None) => LabelScan::None,
            Ok(Some(l)) => LabelScan::Pv(l),
            Err(Error::BadLabel { reason, .. }) => LabelScan::Bad(reason),
            Err(e) => return Err(e),
        };
        let mut areas = Vec::new();
        if let LabelScan::Pv(l) = &label {
            for m in &l.mdas {
                let state = match read_header(dev, m.offset, m.size) {
                    Err(Error::BadMdaHeader { reason, .. }) => AreaScan::BadHeader(reason),
                    Err(e) => return Err(e),
                    Ok(h) if h.committed.is_empty() => AreaScan::Empty(h),
                    Ok(h) if h.committed.ignored() => AreaScan::Ignored(h),
                    Ok(h) => {
                        // Every copy is read and checksummed on its own device (a
                        // damaged copy must not condemn good ones elsewhere); only
                        // the parse of identical texts is shared.
                        let parsed = match read_text(dev, &h, &h.committed) {
                            Err(Error::BadText { reason, .. }) => Err(reason),
                            Err(e) => return Err(e),
                            Ok(raw) => {
                                let key = (h.committed.checksum, h.committed.size);
                                match seen.get(&key) {
                                    Some(r) => r.clone(),
                                    None => {
                                        let r = match Vg::from_text(&raw) {
                                            Ok(vg) => {
                                                out.texts.push(ScannedText { raw, vg });
                                                Ok(out.texts.len() - 1)
                                            }
                                            Err(e) => Err(e.to_string()),
                                        };
                                        seen.insert(key, r.clone());
                                        r
                                    }
                                }
                            }
                        };
                        match parsed {
                            Ok(i) => AreaScan::Metadata(h, i),
                            Err(reason) => AreaScan::BadText(h, reason),
                        }
                    }
                };
                areas.push(ScannedArea {
                    start: m.offset,
                    size: m.size,
                    state,
                });
            }
        }
        out.devs.push(ScannedDev {
            pv: pv.clone(),
            label,
            areas,
        });
    }
    Ok(out)
}

impl Scan {
    /// Names of the VGs whose metadata was found, sorted.
    pub fn vg_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.texts.iter().map(|t| t.vg.name.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The text with the highest seqno for VG `name` (the first scanned wins a tie).
    pub fn newest(&self, name: &str) -> Option<usize> {
        let mut best: Option<usize> = None;
        for d in &self.devs {
            for a in &d.areas {
                if let AreaScan::Metadata(_, i) = a.state {
                    let vg = &self.texts[i].vg;
                    if vg.name == name && best.is_none_or(|b| vg.seqno > self.texts[b].vg.seqno) {
                        best = Some(i);
                    }
                }
            }
        }
        best
    }
}
