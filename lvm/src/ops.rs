//! Changes to the VG model: LVs, tags and PVs. Each leaves the model valid or
//! returns an error with the model unchanged; `OpenVg::change` commits them.

use crate::alloc::Area;
use crate::label::PvLabel;
use crate::model::{Lv, Pv, Segment, SegmentKind, Vg};
use crate::names::{check_lv_name, check_tag, check_vg_name, Uuid};
use crate::text::{Node, Section, Value};
use crate::validate::check_extent_size;
use crate::{Error, Result};

/// When and where an object was created (`creation_time`, `creation_host`).
#[derive(Clone, Debug)]
pub struct Stamp {
    pub time: i64,
    pub host: String,
}

impl Stamp {
    pub fn now() -> Stamp {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Stamp {
            time,
            host: hostname(),
        }
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call;
    // gethostname writes at most `len` bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn not_found(kind: &'static str, name: &str) -> Error {
    Error::NotFound {
        kind,
        name: name.to_string(),
    }
}

impl Vg {
    /// A new VG model with no PVs (add them with [`Vg::add_pv`]).
    pub fn new(name: &str, extent_size_bytes: u64) -> Result<Vg> {
        check_vg_name(name)?;
        if extent_size_bytes % 512 != 0 {
            return Err(Error::InvalidArgument(format!(
                "extent size {extent_size_bytes} is not a multiple of 512"
            )));
        }
        check_extent_size(extent_size_bytes / 512)?;
        let mut other = Section::default();
        other.push("metadata_copies", Node::Value(Value::Int(0)));
        Ok(Vg {
            name: name.to_string(),
            id: Uuid::generate()?,
            seqno: 0,
            status: ["RESIZEABLE", "READ", "WRITE"].map(String::from).to_vec(),
            flags: Vec::new(),
            tags: Vec::new(),
            extent_size: extent_size_bytes / 512,
            max_lv: 0,
            max_pv: 0,
            other,
            pvs: Vec::new(),
            lvs: Vec::new(),
            other_sections: Section::default(),
        })
    }

    /// Adds a formatted PV (its label) to the model; returns its local name.
    pub fn add_pv(&mut self, label: &PvLabel, device: &str) -> Result<String> {
        if self.pvs.iter().any(|p| p.id == label.uuid) {
            return Err(Error::Exists {
                kind: "PV",
                name: label.uuid.to_string(),
            });
        }
        if self.max_pv != 0 && self.pvs.len() >= self.max_pv as usize {
            return Err(Error::InvalidArgument(format!(
                "VG {} already has max_pv = {} PVs",
                self.name, self.max_pv
            )));
        }
        let pe_start = label.pe_start();
        // A metadata area at the end of the device ends the data area.
        let data_end = label
            .mdas
            .iter()
            .map(|m| m.offset)
            .filter(|&o| o > pe_start)
            .min()
            .unwrap_or(label.device_size);
        let pe_count = data_end.saturating_sub(pe_start) / self.extent_bytes();
        if pe_count == 0 {
            return Err(Error::InvalidArgument(format!(
                "PV {device} has no room for one {}-byte extent",
                self.extent_bytes()
            )));
        }
        let name = (0..)
            .map(|i| format!("pv{i}"))
            .find(|n| self.pv(n).is_none())
            .unwrap_or_default();
        self.pvs.push(Pv {
            name: name.clone(),
            id: label.uuid,
            device: Some(device.to_string()),
            status: vec!["ALLOCATABLE".into()],
            flags: Vec::new(),
            tags: Vec::new(),
            dev_size: label.device_size / 512,
            pe_start: pe_start / 512,
            pe_count,
            other: Section::default(),
        });
        Ok(name)
    }

    fn lv_index(&self, name: &str) -> Result<usize> {
        self.lvs
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| not_found("LV", name))
    }

    fn segments_from(&self, mut start_extent: u64, areas: &[Area]) -> Vec<Segment> {
        areas
            .iter()
            .map(|a| {
                let seg = Segment::linear(start_extent, a.len, &self.pvs[a.pv].name, a.start);
                start_extent += a.len;
                seg
            })
            .collect()
    }

    /// Creates a linear LV of `extents` extents.
    pub fn create_lv(
        &mut self,
        name: &str,
        extents: u64,
        tags: &[String],
        stamp: &Stamp,
    ) -> Result<&Lv> {
        check_lv_name(&self.name, name)?;
        if self.lv(name).is_some() {
            return Err(Error::Exists {
                kind: "LV",
                name: name.to_string(),
            });
        }
        if extents == 0 {
            return Err(Error::InvalidArgument(format!(
                "LV {name}: size must be at least one extent"
            )));
        }
        if self.max_lv != 0 && self.lvs.len() >= self.max_lv as usize {
            return Err(Error::InvalidArgument(format!(
                "VG {} already has max_lv = {} LVs",
                self.name, self.max_lv
            )));
        }
        for tag in tags {
            check_tag(tag)?;
        }
        let areas = self.allocate(extents, None)?;
        let segments = self.segments_from(0, &areas);
        self.lvs.push(Lv {
            name: name.to_string(),
            id: Uuid::generate()?,
            status: ["READ", "WRITE", "VISIBLE"].map(String::from).to_vec(),
            flags: Vec::new(),
            tags: tags.to_vec(),
            creation: Some((stamp.time, stamp.host.clone())),
            other: Section::default(),
            segments,
        });
        Ok(&self.lvs[self.lvs.len() - 1])
    }

    /// Adds `extents` at the end of the LV; space right after its last
    /// extent is used first, so an in-place extension keeps one segment.
    pub fn extend_lv(&mut self, name: &str, extents: u64) -> Result<()> {
        let i = self.lv_index(name)?;
        if extents == 0 {
            return Ok(());
        }
        let lv = &self.lvs[i];
        let last = lv.segments.last();
        if lv
            .segments
            .iter()
            .any(|s| !matches!(s.kind, SegmentKind::Striped { .. }))
        {
            return Err(Error::InvalidArgument(format!(
                "LV {name} has segments of a type we do not extend"
            )));
        }
        let after = last.and_then(|s| match &s.kind {
            SegmentKind::Striped { stripes, .. } if stripes.len() == 1 => {
                let pv = self.pvs.iter().position(|p| p.name == stripes[0].pv)?;
                Some((pv, stripes[0].start_pe + s.area_len()))
            }
            _ => None,
        });
        let areas = self.allocate(extents, after)?;
        let mut new = self.segments_from(lv.extent_count(), &areas);
        let lv = &mut self.lvs[i];
        if let (Some(prev), Some(first)) = (lv.segments.last_mut(), new.first()) {
            if let (
                SegmentKind::Striped { stripes: a, .. },
                SegmentKind::Striped { stripes: b, .. },
            ) = (&prev.kind, &first.kind)
            {
                if a.len() == 1
                    && a[0].pv == b[0].pv
                    && a[0].start_pe + prev.extent_count == b[0].start_pe
                    && prev.other.entries.is_empty()
                {
                    prev.extent_count += first.extent_count;
                    new.remove(0);
                }
            }
        }
        lv.segments.extend(new);
        Ok(())
    }

    /// Removes `extents` from the end of the LV (it keeps at least one).
    pub fn reduce_lv(&mut self, name: &str, extents: u64) -> Result<()> {
        let i = self.lv_index(name)?;
        let lv = &mut self.lvs[i];
        if extents >= lv.extent_count() {
            return Err(Error::InvalidArgument(format!(
                "LV {name} has {} extents; it cannot lose {extents} (remove it instead)",
                lv.extent_count()
            )));
        }
        let mut segments = lv.segments.clone();
        let mut left = extents;
        while left > 0 {
            let Some(seg) = segments.last_mut() else {
                break;
            };
            if seg.extent_count <= left {
                left -= seg.extent_count;
                segments.pop();
                continue;
            }
            let SegmentKind::Striped { stripes, .. } = &seg.kind else {
                return Err(Error::InvalidArgument(format!(
                    "LV {name}: cannot cut a segment of this type"
                )));
            };
            if left % stripes.len() as u64 != 0 {
                return Err(Error::InvalidArgument(format!(
                    "LV {name}: the cut must be a multiple of the {} stripes",
                    stripes.len()
                )));
            }
            seg.extent_count -= left;
            left = 0;
        }
        lv.segments = segments;
        Ok(())
    }

    pub fn remove_lv(&mut self, name: &str) -> Result<Lv> {
        let i = self.lv_index(name)?;
        Ok(self.lvs.remove(i))
    }

    pub fn rename_lv(&mut self, name: &str, new_name: &str) -> Result<()> {
        check_lv_name(&self.name, new_name)?;
        if self.lv(new_name).is_some() {
            return Err(Error::Exists {
                kind: "LV",
                name: new_name.to_string(),
            });
        }
        let i = self.lv_index(name)?;
        self.lvs[i].name = new_name.to_string();
        Ok(())
    }

    /// Adds and removes tags of an LV (`lv = None`: of the VG).
    pub fn change_tags(
        &mut self,
        lv: Option<&str>,
        add: &[String],
        remove: &[String],
    ) -> Result<()> {
        for tag in add {
            check_tag(tag)?;
        }
        let tags = match lv {
            Some(name) => {
                let i = self.lv_index(name)?;
                &mut self.lvs[i].tags
            }
            None => &mut self.tags,
        };
        tags.retain(|t| !remove.contains(t));
        for tag in add {
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
        Ok(())
    }
}
