//! A VG opened on its devices: the newest metadata, and the crash-safe commit
//! that writes a change to every metadata area (spec §7, §15, §16).
//!
//! Commit protocol, per change: check that no area's committed copy moved
//! since we read it (else the change was based on a stale read: refused);
//! write the new text into every area's free part of the circular buffer;
//! precommit (slot 1) in every header; commit (slot 0) in every header. Until
//! the first slot-0 write lands every reader sees the old VG; after it, the
//! highest seqno, which is the new VG. Flushes separate the phases.

use crate::label::{write_label, PvLabel, PV_EXT_USED, PV_EXT_VERSION};
use crate::lvdev::LvDev;
use crate::mda::{
    copies_overlap, max_text_len, next_offset, read_header, read_text, text_locn, write_header,
    write_text, MdaHeader, RawLocn,
};
use crate::model::{TextHeader, Vg};
use crate::ops::{hostname, Stamp};
use crate::scan::{scan, AreaScan, LabelScan, PvDev, Scan};
use crate::{io, Error, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// Problems found on open; `stale` ones are repaired by the next write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Areas holding an older (or a differing) copy of this VG.
    pub stale: Vec<String>,
    /// Areas or labels that are damaged: writes are refused until repaired.
    pub corrupt: Vec<String>,
    /// PVs of the VG whose device was not given.
    pub missing: Vec<String>,
}

struct Area {
    header: MdaHeader,
    ignored: bool,
}

struct Member {
    pv: PvDev,
    label: PvLabel,
    areas: Vec<Area>,
}

pub struct OpenVg {
    vg: Vg,
    raw: Vec<u8>,
    members: Vec<Member>,
    health: Health,
    /// A write failed part-way: what is on disk is unknown until reloaded.
    failed: bool,
    /// A commit written ahead ([`OpenVg::prepare`]), not yet committed.
    prepared: Option<Prepared>,
}

/// A commit whose text is on disk, flushed, where the next commit goes,
/// while no header points at it: committing it is a header write and a
/// flush. Every other write or change seen drops it.
struct Prepared {
    vg: Vg,
    raw: Vec<u8>,
    /// Per area in use: where its text is.
    locns: Vec<RawLocn>,
}

fn area_name(pv: &PvDev, h: &MdaHeader) -> String {
    format!("{} metadata area at byte {}", pv.path, h.start)
}

impl OpenVg {
    /// Opens VG `name` (or the only VG found) from `devs`, reading only.
    pub fn open(devs: &[PvDev], name: Option<&str>) -> Result<OpenVg> {
        let scan = scan(devs)?;
        let names = scan.vg_names();
        let name = match (name, names.as_slice()) {
            (Some(n), _) => n.to_string(),
            (None, [one]) => one.clone(),
            (None, []) => {
                return Err(damage(&scan).unwrap_or(Error::NotFound {
                    kind: "VG",
                    name: "(any)".into(),
                }))
            }
            (None, many) => {
                return Err(Error::InvalidArgument(format!(
                    "several VGs found ({}): name the one to open",
                    many.join(", ")
                )))
            }
        };
        let Some(winner) = scan.newest(&name) else {
            return Err(damage(&scan).unwrap_or(Error::NotFound { kind: "VG", name }));
        };
        Self::from_scan(scan, winner)
    }

    fn from_scan(scan: Scan, winner: usize) -> Result<OpenVg> {
        let Scan { devs, texts } = scan;
        let best = &texts[winner];
        let (vg, raw) = (best.vg.clone(), best.raw.clone());
        let mut health = Health::default();
        let mut members: Vec<Member> = Vec::new();
        for pv in &vg.pvs {
            let mut found = devs
                .iter()
                .filter(|d| matches!(&d.label, LabelScan::Pv(l) if l.uuid == pv.id));
            let Some(d) = found.next() else {
                health.missing.push(format!(
                    "PV {} ({})",
                    pv.id,
                    pv.device.as_deref().unwrap_or("?")
                ));
                continue;
            };
            if let Some(other) = found.find(|o| o.pv.dev.identity() != d.pv.dev.identity()) {
                return Err(Error::Refused {
                    vg: vg.name.clone(),
                    reason: format!(
                        "PV {} appears on two different devices, {} and {}; pass only one of them",
                        pv.id, d.pv.path, other.pv.path
                    ),
                });
            }
            let LabelScan::Pv(label) = &d.label else {
                continue;
            };
            let mut areas = Vec::new();
            for a in &d.areas {
                let (header, problem) = match &a.state {
                    AreaScan::BadHeader(reason) => {
                        health.corrupt.push(format!(
                            "{} metadata area at byte {}: {reason}",
                            d.pv.path, a.start
                        ));
                        continue;
                    }
                    AreaScan::BadText(h, reason) => {
                        health
                            .corrupt
                            .push(format!("{}: {reason}", area_name(&d.pv, h)));
                        continue;
                    }
                    AreaScan::Ignored(h) => {
                        areas.push(Area {
                            header: *h,
                            ignored: true,
                        });
                        continue;
                    }
                    AreaScan::Empty(h) => (h, Some("holds no metadata".to_string())),
                    AreaScan::Metadata(h, i) => {
                        let t = &texts[*i];
                        if t.vg.name != vg.name {
                            health.corrupt.push(format!(
                                "{}: holds VG {}",
                                area_name(&d.pv, h),
                                t.vg.name
                            ));
                            continue;
                        }
                        (
                            h,
                            (*i != winner).then(|| {
                                format!("holds seqno {} (newest {})", t.vg.seqno, vg.seqno)
                            }),
                        )
                    }
                };
                if let Some(p) = problem {
                    health
                        .stale
                        .push(format!("{}: {p}", area_name(&d.pv, header)));
                }
                areas.push(Area {
                    header: *header,
                    ignored: false,
                });
            }
            // Extents past the device's end (a LUN that shrank) must never be handed out.
            let end = pv
                .pe_count
                .saturating_mul(vg.extent_bytes())
                .saturating_add(pv.pe_start * 512);
            if end > d.pv.dev.size() {
                health.corrupt.push(format!(
                    "{}: PV {} has {} extents ending at byte {end}, past the device's {} bytes",
                    d.pv.path,
                    pv.name,
                    pv.pe_count,
                    d.pv.dev.size()
                ));
            }
            members.push(Member {
                pv: d.pv.clone(),
                label: label.clone(),
                areas,
            });
        }
        // A damaged label may be a missing PV's: name it. Otherwise it is another device's business.
        if !health.missing.is_empty() {
            for d in &devs {
                if let LabelScan::Bad(reason) = &d.label {
                    health
                        .corrupt
                        .push(format!("{}: bad PV label: {reason}", d.pv.path));
                }
            }
        }
        Ok(OpenVg {
            vg,
            raw,
            members,
            health,
            failed: false,
            prepared: None,
        })
    }

    /// Creates VG `name` on formatted, unused PVs.
    pub fn create(name: &str, devs: &[PvDev], extent_size: u64) -> Result<OpenVg> {
        let mut vg = Vg::new(name, extent_size)?;
        let mut members = Vec::new();
        for pv in devs {
            let member = Self::orphan(pv)?;
            vg.add_pv(&member.label, &pv.path)?;
            members.push(member);
        }
        if !members.iter().flat_map(|m| &m.areas).any(|a| !a.ignored) {
            return Err(Error::InvalidArgument(format!(
                "VG {name} needs at least one PV with a metadata area"
            )));
        }
        let mut open = OpenVg {
            vg: vg.clone(),
            raw: Vec::new(),
            members,
            health: Health::default(),
            failed: false,
            prepared: None,
        };
        open.commit(vg, &format!("ssvadm vg create {name}"))?;
        Ok(open)
    }

    /// A formatted PV that belongs to no VG, as a member to be.
    fn orphan(pv: &PvDev) -> Result<Member> {
        let scan = scan(std::slice::from_ref(pv))?;
        let Some(d) = scan.devs.into_iter().next() else {
            return Err(Error::NoLabel {
                dev: pv.path.clone(),
            });
        };
        let label = match d.label {
            LabelScan::Pv(l) => l,
            LabelScan::None => {
                return Err(Error::NoLabel {
                    dev: pv.path.clone(),
                })
            }
            LabelScan::Bad(reason) => {
                return Err(Error::BadLabel {
                    dev: pv.path.clone(),
                    reason,
                })
            }
        };
        let mut areas = Vec::new();
        for a in d.areas {
            match a.state {
                AreaScan::Empty(h) => areas.push(Area {
                    header: h,
                    ignored: false,
                }),
                AreaScan::Ignored(h) => areas.push(Area {
                    header: h,
                    ignored: true,
                }),
                AreaScan::Metadata(_, i) => {
                    return Err(Error::Refused {
                        vg: scan.texts[i].vg.name.clone(),
                        reason: format!(
                            "{} already holds metadata of VG {}",
                            pv.path, scan.texts[i].vg.name
                        ),
                    })
                }
                AreaScan::BadHeader(reason) | AreaScan::BadText(_, reason) => {
                    return Err(Error::BadMdaHeader {
                        dev: pv.path.clone(),
                        start: a.start,
                        reason,
                    })
                }
            }
        }
        if label.in_use() {
            return Err(Error::Refused {
                vg: "?".into(),
                reason: format!(
                    "{} is marked as used by a VG whose metadata is not on it",
                    pv.path
                ),
            });
        }
        Ok(Member {
            pv: pv.clone(),
            label,
            areas,
        })
    }

    pub fn vg(&self) -> &Vg {
        &self.vg
    }

    /// The committed text (NUL included), byte for byte.
    pub fn raw_text(&self) -> &[u8] {
        &self.raw
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn devices(&self) -> impl Iterator<Item = &PvDev> {
        self.members.iter().map(|m| &m.pv)
    }

    /// Applies `f` to a copy of the VG and commits it; on any error nothing changes.
    pub fn change<T>(
        &mut self,
        description: &str,
        f: impl FnOnce(&mut Vg) -> Result<T>,
    ) -> Result<T> {
        let mut new = self.vg.clone();
        let out = f(&mut new)?;
        self.commit(new, description)?;
        Ok(out)
    }

    /// Writes the commit that `f` makes ahead: its text goes where the next
    /// commit goes and is flushed, but no header points at it, so readers
    /// (ours and stock lvm2) see nothing. [`OpenVg::commit_prepared`] then
    /// commits it with a header write and a flush, unless anything else
    /// was written or seen to change meanwhile. Replaces an earlier one.
    pub fn prepare(
        &mut self,
        description: &str,
        f: impl FnOnce(&mut Vg) -> Result<()>,
    ) -> Result<()> {
        self.prepared = None;
        let mut new = self.vg.clone();
        f(&mut new)?;
        let text = self.next_text(&mut new, description)?;
        let offsets = self.placements(text.len() as u64)?;
        self.write_texts(&offsets, &text)?;
        self.flush_all()?;
        let locns = offsets.iter().map(|&at| text_locn(at, &text)).collect();
        self.prepared = Some(Prepared {
            vg: new,
            raw: text,
            locns,
        });
        Ok(())
    }

    /// The VG as the prepared commit makes it, if one is waiting.
    pub fn prepared(&self) -> Option<&Vg> {
        self.prepared.as_ref().map(|p| &p.vg)
    }

    /// Commits the prepared commit: whether there was one still valid (no
    /// header moved since and its text is intact; else it is dropped and
    /// nothing is written).
    pub fn commit_prepared(&mut self) -> Result<bool> {
        let Some(p) = self.prepared.take() else {
            return Ok(false);
        };
        self.check_writable()?;
        // The text is read back alongside the headers (no added wait): a
        // writer that ignored the pool lease may have written over it.
        let (at, text_intact) = std::thread::scope(|s| {
            let intact = s.spawn(|| {
                self.areas_in_use().zip(&p.locns).all(|((m, a), l)| {
                    read_text(&*m.pv.dev, &a.header, l).is_ok_and(|t| t == p.raw)
                })
            });
            let at = self.placements(p.raw.len() as u64);
            (at, intact.join().unwrap_or(false))
        });
        match at {
            Ok(at) if text_intact && at.iter().eq(p.locns.iter().map(|l| &l.offset)) => {}
            Ok(_) | Err(Error::Stale { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.failed = true;
        self.write_committed(&p.locns)?;
        self.vg = p.vg;
        self.raw = p.raw;
        self.health.stale.clear();
        self.update_labels()?;
        Ok(true)
    }

    /// Adds a formatted, unused PV to the VG.
    pub fn add_pv(&mut self, pv: &PvDev) -> Result<()> {
        if self
            .members
            .iter()
            .any(|m| m.pv.dev.identity() == pv.dev.identity())
        {
            return Err(Error::Exists {
                kind: "PV",
                name: pv.path.clone(),
            });
        }
        let member = Self::orphan(pv)?;
        let mut new = self.vg.clone();
        new.add_pv(&member.label, &pv.path)?;
        self.members.push(member);
        if let Err(e) = self.commit(
            new,
            &format!("ssvadm vg extend {} {}", self.vg.name, pv.path),
        ) {
            self.members.pop();
            return Err(e);
        }
        Ok(())
    }

    /// Rewrites stale copies with the current text, keeping the seqno.
    pub fn repair(&mut self) -> Result<()> {
        // Damaged areas or missing PVs are refused even with nothing stale:
        // repair must not report success on a VG it cannot write.
        self.check_writable()?;
        if self.health.stale.is_empty() && !self.labels_outdated() {
            return Ok(());
        }
        let raw = self.raw.clone();
        self.write_everywhere(&raw)?;
        self.health.stale.clear();
        self.update_labels()
    }

    /// Brings the VG up to date; whether it changed. Nothing moved (and no
    /// write of ours failed): one header read per area. A commit moved them:
    /// its text is read from where the headers just read point, instead of
    /// a rescan of labels, headers and texts (each read waits behind the
    /// LUN's data queue). Anything but a newer copy of this VG on the same
    /// PVs in every area (PVs added or resized, areas that disagree, a
    /// commit half done, damage, a failed write of ours) is a full reload.
    /// What a reload finds is found here too, but for damage to a text that
    /// no header moved to.
    pub fn refresh(&mut self) -> Result<bool> {
        if self.failed || self.health != Health::default() {
            self.reload()?;
            return Ok(true);
        }
        let heads: Result<Vec<MdaHeader>> = self
            .areas_in_use()
            .map(|(m, a)| read_header(&*m.pv.dev, a.header.start, a.header.size))
            .collect();
        // A damaged header: the reload records it in the health.
        let Ok(heads) = heads else {
            self.reload()?;
            return Ok(true);
        };
        let moved = self.areas_in_use().zip(&heads).any(|((_, a), h)| {
            h.committed != a.header.committed || h.precommitted != a.header.precommitted
        });
        if !moved {
            return Ok(false);
        }
        self.prepared = None;
        match self.newer_copy(&heads) {
            Some((vg, raw)) => {
                let mut next = heads.iter();
                for m in &mut self.members {
                    for (a, h) in m.areas.iter_mut().filter(|a| !a.ignored).zip(&mut next) {
                        a.header = *h;
                    }
                }
                self.vg = vg;
                self.raw = raw;
            }
            None => self.reload()?,
        }
        Ok(true)
    }

    /// The copy all of `heads` commit, if it is this VG, newer, on the same PVs.
    fn newer_copy(&self, heads: &[MdaHeader]) -> Option<(Vg, Vec<u8>)> {
        let first = heads.first()?;
        let same = |h: &MdaHeader| {
            (h.committed.size, h.committed.checksum)
                == (first.committed.size, first.committed.checksum)
                && h.precommitted.is_empty()
                && !h.committed.ignored()
        };
        if first.committed.is_empty() || !heads.iter().all(same) {
            return None;
        }
        let (m, _) = self.areas_in_use().next()?;
        let raw = read_text(&*m.pv.dev, first, &first.committed).ok()?;
        let mut vg = Vg::from_text(&raw).ok()?;
        let pvs_kept = vg.pvs.len() == self.vg.pvs.len()
            && vg.pvs.iter().all(|p| {
                self.vg
                    .pvs
                    .iter()
                    .any(|q| (q.id, q.pe_count, q.pe_start) == (p.id, p.pe_count, p.pe_start))
            });
        if vg.id != self.vg.id || vg.seqno <= self.vg.seqno || !pvs_kept {
            return None;
        }
        for pv in &mut vg.pvs {
            pv.device = self.vg.pvs.iter().find(|q| q.id == pv.id)?.device.clone();
        }
        Some((vg, raw))
    }

    /// Re-reads the VG from its devices.
    pub fn reload(&mut self) -> Result<()> {
        let devs: Vec<PvDev> = self.members.iter().map(|m| m.pv.clone()).collect();
        *self = OpenVg::open(&devs, Some(&self.vg.name.clone()))?;
        Ok(())
    }

    /// The LV as a block device over its segments.
    pub fn lv_dev(&self, name: &str) -> Result<LvDev> {
        let lv = self.vg.lv(name).ok_or_else(|| Error::NotFound {
            kind: "LV",
            name: name.to_string(),
        })?;
        let devs: HashMap<String, Arc<dyn san::BlockDev>> = self
            .vg
            .pvs
            .iter()
            .filter_map(|p| {
                let m = self.members.iter().find(|m| m.label.uuid == p.id)?;
                Some((p.name.clone(), m.pv.dev.clone()))
            })
            .collect();
        LvDev::new(&self.vg, lv, &devs)
    }

    fn check_writable(&self) -> Result<()> {
        let h = &self.health;
        let reason = if self.failed {
            "an earlier write failed part-way; reload the VG before changing it".to_string()
        } else if !h.corrupt.is_empty() {
            format!(
                "damaged metadata: {}; check the devices, then run `ssvadm repair`",
                h.corrupt.join("; ")
            )
        } else if !h.missing.is_empty() {
            format!(
                "missing PVs: {}; give every device of the VG",
                h.missing.join("; ")
            )
        } else {
            return Ok(());
        };
        Err(Error::Refused {
            vg: self.vg.name.clone(),
            reason,
        })
    }

    fn labels_outdated(&self) -> bool {
        self.members
            .iter()
            .any(|m| m.label.ext_version < PV_EXT_VERSION || !m.label.in_use())
    }

    fn commit(&mut self, mut new: Vg, description: &str) -> Result<()> {
        let text = self.next_text(&mut new, description)?;
        self.write_everywhere(&text)?;
        self.vg = new;
        self.raw = text;
        self.health.stale.clear();
        self.update_labels()
    }

    /// `new` as the next commit (seqno, devices), checked, and its text.
    fn next_text(&self, new: &mut Vg, description: &str) -> Result<Vec<u8>> {
        self.check_writable()?;
        new.seqno = self
            .vg
            .seqno
            .checked_add(1)
            .ok_or_else(|| Error::InvalidArgument("seqno would overflow".into()))?;
        for pv in &mut new.pvs {
            if let Some(m) = self.members.iter().find(|m| m.label.uuid == pv.id) {
                pv.device = Some(m.pv.path.clone());
            }
        }
        new.validate()?;
        let stamp = Stamp::now();
        Ok(new.to_text(&TextHeader {
            description: &format!("Write from {description}."),
            creation_host: &hostname(),
            creation_time: stamp.time,
        }))
    }

    /// The commit protocol for `text` on every area in use: texts and
    /// precommitted pointers, flush, committed pointers, flush.
    fn write_everywhere(&mut self, text: &[u8]) -> Result<()> {
        self.prepared = None;
        let offsets = self.placements(text.len() as u64)?;
        self.failed = true;
        let locns: Vec<RawLocn> = offsets.iter().map(|&at| text_locn(at, text)).collect();
        // The texts and the precommitted pointers to them share one flush,
        // so nothing orders them on the device anyway (readers go by the
        // committed pointer only, so a precommitted one whose text did not
        // land is never followed). They go out together: under load each
        // small write waits behind the data queued on the LUN, and waits
        // in parallel cost one.
        std::thread::scope(|s| -> Result<()> {
            let texts = s.spawn(|| self.write_texts(&offsets, text));
            let r = self.areas_in_use().zip(&locns).try_for_each(|((m, a), l)| {
                let mut h = a.header;
                h.precommitted = *l;
                write_header(&*m.pv.dev, &h)
            });
            let done = texts
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            r.and(done)
        })?;
        self.flush_all()?;
        self.write_committed(&locns)
    }

    /// Each area's committed pointer to `locns`, then a flush; clears
    /// `failed` when done.
    fn write_committed(&mut self, locns: &[RawLocn]) -> Result<()> {
        let mut next = locns.iter();
        for m in &mut self.members {
            for (a, l) in m.areas.iter_mut().filter(|a| !a.ignored).zip(&mut next) {
                let mut h = a.header;
                h.committed = *l;
                h.precommitted = RawLocn::default();
                write_header(&*m.pv.dev, &h)?;
                a.header = h;
            }
        }
        self.flush_all()?;
        self.failed = false;
        Ok(())
    }

    /// `text` at `offsets` (one per area in use), all at once.
    fn write_texts(&self, offsets: &[u64], text: &[u8]) -> Result<()> {
        std::thread::scope(|s| {
            let texts: Vec<_> = self
                .areas_in_use()
                .zip(offsets)
                .map(|((m, a), &at)| {
                    let (dev, h) = (&*m.pv.dev, a.header);
                    s.spawn(move || write_text(dev, &h, at, text))
                })
                .collect();
            texts
                .into_iter()
                .try_for_each(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })
    }

    /// Where the next commit's text of `len` bytes goes in each area in use.
    /// Refuses a change based on a stale read (a header that moved), and
    /// metadata that does not fit, before anything is written.
    fn placements(&self, len: u64) -> Result<Vec<u64>> {
        let mut offsets = Vec::new();
        for (m, a) in self.areas_in_use() {
            let now = read_header(&*m.pv.dev, a.header.start, a.header.size)?;
            if now.committed != a.header.committed {
                return Err(Error::Stale {
                    vg: self.vg.name.clone(),
                    detail: format!(
                        "the committed copy in {} moved",
                        area_name(&m.pv, &a.header)
                    ),
                });
            }
            let max = max_text_len(a.header.size);
            let at = next_offset(&a.header.committed, a.header.size);
            if len > max || copies_overlap(&a.header.committed, at, len, a.header.size) {
                return Err(Error::MetadataTooLarge {
                    dev: m.pv.path.clone(),
                    len,
                    max,
                    area: a.header.size,
                });
            }
            offsets.push(at);
        }
        Ok(offsets)
    }

    /// Every metadata area in use, with its PV.
    fn areas_in_use(&self) -> impl Iterator<Item = (&Member, &Area)> {
        self.members
            .iter()
            .flat_map(|m| m.areas.iter().filter(|a| !a.ignored).map(move |a| (m, a)))
    }

    fn flush_all(&self) -> Result<()> {
        self.members
            .iter()
            .try_for_each(|m| io::flush(&*m.pv.dev, "flushing metadata"))
    }

    /// Marks every member PV as used by a VG (pv_header_extension v2, USED).
    fn update_labels(&mut self) -> Result<()> {
        for m in &mut self.members {
            if m.label.ext_version < PV_EXT_VERSION || !m.label.in_use() {
                let mut l = m.label.clone();
                l.ext_version = PV_EXT_VERSION;
                l.ext_flags |= PV_EXT_USED;
                write_label(&*m.pv.dev, &l)?;
                io::flush(&*m.pv.dev, "flushing the PV label")?;
                m.label = l;
            }
        }
        Ok(())
    }
}

/// The first damaged label or metadata area of a scan: the error that
/// explains why no readable copy of a VG was found.
fn damage(scan: &Scan) -> Option<Error> {
    for d in &scan.devs {
        let dev = || d.pv.path.clone();
        if let LabelScan::Bad(reason) = &d.label {
            return Some(Error::BadLabel {
                dev: dev(),
                reason: reason.clone(),
            });
        }
        for a in &d.areas {
            match &a.state {
                AreaScan::BadHeader(reason) => {
                    return Some(Error::BadMdaHeader {
                        dev: dev(),
                        start: a.start,
                        reason: reason.clone(),
                    })
                }
                AreaScan::BadText(_, reason) => {
                    return Some(Error::BadText {
                        dev: dev(),
                        start: a.start,
                        reason: reason.clone(),
                    })
                }
                _ => {}
            }
        }
    }
    None
}
