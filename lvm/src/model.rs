//! The VG metadata model and its mapping to and from the text tree (spec §10).
//! Keys we do not interpret are carried in `other` and written back as read,
//! so a VG that lvm2 made with features we do not model survives our commits.

use crate::names::Uuid;
use crate::text::{self, Emitter, Node, Section, Value};
use crate::{Error, Result};

pub const CONTENTS: &str = "Text Format Volume Group";
pub const FORMAT_VERSION: i64 = 1;
pub const SEG_STRIPED: &str = "striped";

/// Status words lvm accepts (an unknown one makes the VG unreadable, spec §11).
pub const VG_STATUS: &[&str] = &[
    "EXPORTED",
    "RESIZEABLE",
    "PVMOVE",
    "READ",
    "WRITE",
    "CLUSTERED",
    "SHARED",
];
pub const PV_STATUS: &[&str] = &["ALLOCATABLE", "EXPORTED", "MISSING"];
pub const LV_STATUS: &[&str] = &[
    "READ",
    "WRITE",
    "FIXED_MINOR",
    "VISIBLE",
    "PVMOVE",
    "LOCKED",
    "NOTSYNCED",
    "REBUILD",
    "WRITEMOSTLY",
];

#[derive(Clone, Debug, PartialEq)]
pub struct Vg {
    pub name: String,
    pub id: Uuid,
    pub seqno: u32,
    pub status: Vec<String>,
    pub flags: Vec<String>,
    pub tags: Vec<String>,
    /// In 512-byte sectors.
    pub extent_size: u64,
    pub max_lv: u32,
    pub max_pv: u32,
    /// Keys carried but not interpreted (system_id, metadata_copies, …).
    pub other: Section,
    pub pvs: Vec<Pv>,
    pub lvs: Vec<Lv>,
    /// Sections after `logical_volumes` (historical_logical_volumes).
    pub other_sections: Section,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pv {
    /// Local reference used by segments (`pv0`, `pv1`, …).
    pub name: String,
    pub id: Uuid,
    /// Last known path: a hint only.
    pub device: Option<String>,
    pub status: Vec<String>,
    pub flags: Vec<String>,
    pub tags: Vec<String>,
    /// In sectors.
    pub dev_size: u64,
    /// In sectors.
    pub pe_start: u64,
    pub pe_count: u64,
    pub other: Section,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Lv {
    pub name: String,
    pub id: Uuid,
    pub status: Vec<String>,
    pub flags: Vec<String>,
    pub tags: Vec<String>,
    pub creation: Option<(i64, String)>,
    pub other: Section,
    pub segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub start_extent: u64,
    pub extent_count: u64,
    pub kind: SegmentKind,
    /// Keys beside the ones `kind` interprets (tags, reshape_count, …).
    pub other: Section,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SegmentKind {
    /// Linear (one stripe) or striped over PVs.
    Striped {
        stripe_size: Option<u64>,
        stripes: Vec<Stripe>,
    },
    /// Any other segment type (thin, raid, …): kept, never reallocated.
    Other { type_name: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stripe {
    /// The PV's local name in this VG (`pv0`).
    pub pv: String,
    pub start_pe: u64,
}

impl Segment {
    pub fn linear(start_extent: u64, extent_count: u64, pv: &str, start_pe: u64) -> Segment {
        Segment {
            start_extent,
            extent_count,
            kind: SegmentKind::Striped {
                stripe_size: None,
                stripes: vec![Stripe {
                    pv: pv.to_string(),
                    start_pe,
                }],
            },
            other: Section::default(),
        }
    }

    /// Extents each stripe covers on its PV.
    pub fn area_len(&self) -> u64 {
        match &self.kind {
            SegmentKind::Striped { stripes, .. } if !stripes.is_empty() => {
                self.extent_count / stripes.len() as u64
            }
            _ => 0,
        }
    }
}

impl Lv {
    pub fn extent_count(&self) -> u64 {
        self.segments.iter().map(|s| s.extent_count).sum()
    }
    pub fn visible(&self) -> bool {
        self.status.iter().any(|s| s == "VISIBLE")
    }
}

impl Vg {
    pub fn lv(&self, name: &str) -> Option<&Lv> {
        self.lvs.iter().find(|l| l.name == name)
    }
    pub fn pv(&self, name: &str) -> Option<&Pv> {
        self.pvs.iter().find(|p| p.name == name)
    }
    pub fn extent_bytes(&self) -> u64 {
        self.extent_size * 512
    }

    /// Where a stripe's first extent lies: its PV and the byte offset on
    /// that PV's device. Metadata can hold numbers whose byte offsets do
    /// not fit a u64: those are errors.
    pub fn stripe_start(&self, st: &Stripe) -> Result<(&Pv, u64)> {
        let pv = self
            .pv(&st.pv)
            .ok_or_else(|| Error::Metadata(format!("segment on unknown PV {}", st.pv)))?;
        pv.pe_start
            .checked_mul(512)
            .and_then(|b| b.checked_add(st.start_pe.checked_mul(self.extent_bytes())?))
            .map(|at| (pv, at))
            .ok_or_else(|| {
                Error::Metadata(format!(
                    "the offset of extent {} on PV {} overflows a byte offset",
                    st.start_pe, pv.name
                ))
            })
    }
}

// ---------------------------------------------------------------- reading

fn meta(msg: impl Into<String>) -> Error {
    Error::Metadata(msg.into())
}

fn t(e: text::TextError) -> Error {
    Error::Metadata(e.to_string())
}

fn uint(sec: &Section, key: &str, ctx: &str) -> Result<u64> {
    let v = sec.req_int(key).map_err(|e| meta(format!("{ctx}: {e}")))?;
    u64::try_from(v).map_err(|_| meta(format!("{ctx}: {key} = {v} is negative")))
}

fn u32_of(sec: &Section, key: &str, ctx: &str) -> Result<u32> {
    let v = uint(sec, key, ctx)?;
    u32::try_from(v).map_err(|_| meta(format!("{ctx}: {key} = {v} is out of range")))
}

fn words(sec: &Section, key: &str, ctx: &str, required: bool) -> Result<Vec<String>> {
    match sec
        .str_array(key)
        .map_err(|e| meta(format!("{ctx}: {e}")))?
    {
        Some(v) => Ok(v.into_iter().map(str::to_string).collect()),
        None if required => Err(meta(format!("{ctx}: `{key}` is missing"))),
        None => Ok(Vec::new()),
    }
}

fn status(sec: &Section, ctx: &str) -> Result<Vec<String>> {
    words(sec, "status", ctx, true)
}

fn uuid(sec: &Section, ctx: &str) -> Result<Uuid> {
    let s = sec.req_str("id").map_err(|e| meta(format!("{ctx}: {e}")))?;
    Uuid::parse(s).map_err(|e| meta(format!("{ctx}: {e}")))
}

/// Keys of `sec` not in `known`, in order.
fn rest(sec: &Section, known: &[&str]) -> Section {
    Section {
        entries: sec
            .entries
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .cloned()
            .collect(),
    }
}

impl Vg {
    /// Parses metadata text (NUL-terminated or not) into a validated model.
    pub fn from_text(raw: &[u8]) -> Result<Vg> {
        let root = text::parse(raw).map_err(t)?;
        let contents = root.req_str("contents").map_err(t)?;
        if contents != CONTENTS {
            return Err(meta(format!("contents is {contents:?}, not {CONTENTS:?}")));
        }
        let version = root.req_int("version").map_err(t)?;
        if version != FORMAT_VERSION {
            return Err(meta(format!("unrecognised format version {version}")));
        }
        let (name, sec) = root
            .entries
            .iter()
            .find_map(|(k, n)| match n {
                Node::Section(s) => Some((k, s)),
                Node::Value(_) => None,
            })
            .ok_or_else(|| meta("no VG section"))?;
        let vg = Vg::from_section(name, sec)?;
        vg.validate()?;
        Ok(vg)
    }

    fn from_section(name: &str, sec: &Section) -> Result<Vg> {
        let ctx = format!("VG {name}");
        if let Some(f) = sec.get("format") {
            if f != &Node::Value(Value::Str("lvm2".into())) {
                return Err(meta(format!("{ctx}: format is not \"lvm2\"")));
            }
        }
        let seqno = u32_of(sec, "seqno", &ctx)?;
        let pvs_sec = sec
            .req_section("physical_volumes")
            .map_err(|e| meta(format!("{ctx}: {e}")))?;
        let mut pvs = Vec::new();
        for (pname, node) in &pvs_sec.entries {
            let Node::Section(p) = node else {
                return Err(meta(format!(
                    "{ctx}: physical_volumes.{pname} is not a section"
                )));
            };
            pvs.push(Pv::from_section(pname, p)?);
        }
        let mut lvs = Vec::new();
        if let Some(lvs_sec) = sec.section("logical_volumes") {
            for (lname, node) in &lvs_sec.entries {
                let Node::Section(l) = node else {
                    return Err(meta(format!(
                        "{ctx}: logical_volumes.{lname} is not a section"
                    )));
                };
                lvs.push(Lv::from_section(lname, l)?);
            }
        }
        let known = [
            "id",
            "seqno",
            "format",
            "status",
            "flags",
            "tags",
            "extent_size",
            "max_lv",
            "max_pv",
            "physical_volumes",
            "logical_volumes",
        ];
        let mut other = rest(sec, &known);
        let sections: Vec<_> = other
            .entries
            .iter()
            .filter(|(_, n)| matches!(n, Node::Section(_)))
            .cloned()
            .collect();
        other
            .entries
            .retain(|(_, n)| !matches!(n, Node::Section(_)));
        Ok(Vg {
            name: name.to_string(),
            id: uuid(sec, &ctx)?,
            seqno,
            status: status(sec, &ctx)?,
            flags: words(sec, "flags", &ctx, false)?,
            tags: words(sec, "tags", &ctx, false)?,
            extent_size: uint(sec, "extent_size", &ctx)?,
            max_lv: u32_of(sec, "max_lv", &ctx)?,
            max_pv: u32_of(sec, "max_pv", &ctx)?,
            other,
            pvs,
            lvs,
            other_sections: Section { entries: sections },
        })
    }
}

impl Pv {
    fn from_section(name: &str, sec: &Section) -> Result<Pv> {
        let ctx = format!("PV {name}");
        let device = match sec.get("device") {
            None => None,
            Some(_) => Some(
                sec.req_str("device")
                    .map_err(|e| meta(format!("{ctx}: {e}")))?
                    .to_string(),
            ),
        };
        let known = [
            "id", "device", "status", "flags", "tags", "dev_size", "pe_start", "pe_count",
        ];
        Ok(Pv {
            name: name.to_string(),
            id: uuid(sec, &ctx)?,
            device,
            status: status(sec, &ctx)?,
            flags: words(sec, "flags", &ctx, false)?,
            tags: words(sec, "tags", &ctx, false)?,
            dev_size: if sec.get("dev_size").is_some() {
                uint(sec, "dev_size", &ctx)?
            } else {
                0
            },
            pe_start: uint(sec, "pe_start", &ctx)?,
            pe_count: uint(sec, "pe_count", &ctx)?,
            other: rest(sec, &known),
        })
    }
}

impl Lv {
    fn from_section(name: &str, sec: &Section) -> Result<Lv> {
        let ctx = format!("LV {name}");
        let creation = match (sec.get("creation_time"), sec.get("creation_host")) {
            (None, None) => None,
            _ => Some((
                sec.req_int("creation_time")
                    .map_err(|e| meta(format!("{ctx}: {e}")))?,
                sec.req_str("creation_host")
                    .map_err(|e| meta(format!("{ctx}: {e}")))?
                    .to_string(),
            )),
        };
        let count = uint(sec, "segment_count", &ctx)?;
        let mut segments = Vec::new();
        for (sname, node) in &sec.entries {
            if let Node::Section(s) = node {
                segments.push(Segment::from_section(&format!("{ctx} {sname}"), s)?);
            }
        }
        if segments.len() as u64 != count {
            return Err(meta(format!(
                "{ctx}: segment_count is {count} but {} segments follow",
                segments.len()
            )));
        }
        segments.sort_by_key(|s| s.start_extent);
        let mut other = rest(
            sec,
            &[
                "id",
                "status",
                "flags",
                "tags",
                "creation_time",
                "creation_host",
                "segment_count",
            ],
        );
        // Segments are written as segment1…N: a value kept under such a name
        // would be a duplicate key in the text we write (lvm ignores it too).
        other
            .entries
            .retain(|(k, n)| !matches!(n, Node::Section(_)) && !is_segment_key(k));
        Ok(Lv {
            name: name.to_string(),
            id: uuid(sec, &ctx)?,
            status: status(sec, &ctx)?,
            flags: words(sec, "flags", &ctx, false)?,
            tags: words(sec, "tags", &ctx, false)?,
            creation,
            other,
            segments,
        })
    }
}

/// `segment<N>`: the names segments are written under.
fn is_segment_key(k: &str) -> bool {
    k.strip_prefix("segment")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Segment {
    fn from_section(ctx: &str, sec: &Section) -> Result<Segment> {
        let type_name = sec
            .req_str("type")
            .map_err(|e| meta(format!("{ctx}: {e}")))?;
        let (kind, known): (_, &[&str]) = if type_name == SEG_STRIPED {
            let count = uint(sec, "stripe_count", ctx)?;
            let list = match sec.get("stripes") {
                Some(Node::Value(Value::Array(a))) => a,
                _ => return Err(meta(format!("{ctx}: `stripes` is missing or not an array"))),
            };
            if count == 0 || list.len() as u64 != count.saturating_mul(2) {
                return Err(meta(format!(
                    "{ctx}: stripe_count {count} but {} values in `stripes` (two per stripe)",
                    list.len()
                )));
            }
            let mut stripes = Vec::new();
            for pair in list.chunks_exact(2) {
                match (&pair[0], &pair[1]) {
                    (Value::Str(pv), Value::Int(pe)) if *pe >= 0 => stripes.push(Stripe {
                        pv: pv.clone(),
                        start_pe: *pe as u64,
                    }),
                    _ => {
                        return Err(meta(format!(
                            "{ctx}: `stripes` must hold \"pvN\", start pairs"
                        )))
                    }
                }
            }
            let stripe_size = if sec.get("stripe_size").is_some() {
                Some(uint(sec, "stripe_size", ctx)?)
            } else {
                None
            };
            (
                SegmentKind::Striped {
                    stripe_size,
                    stripes,
                },
                &[
                    "start_extent",
                    "extent_count",
                    "type",
                    "stripe_count",
                    "stripe_size",
                    "stripes",
                ],
            )
        } else {
            (
                SegmentKind::Other {
                    type_name: type_name.to_string(),
                },
                &["start_extent", "extent_count", "type"],
            )
        };
        Ok(Segment {
            start_extent: uint(sec, "start_extent", ctx)?,
            extent_count: uint(sec, "extent_count", ctx)?,
            kind,
            other: rest(sec, known),
        })
    }
}

// ---------------------------------------------------------------- writing

/// Header keys written after the VG section.
pub struct TextHeader<'a> {
    pub description: &'a str,
    pub creation_host: &'a str,
    pub creation_time: i64,
}

impl Vg {
    /// The metadata text as lvm writes it into a metadata area, NUL included.
    pub fn to_text(&self, h: &TextHeader) -> Vec<u8> {
        // About 330 bytes per LV in lvm's style.
        let mut e = Emitter::with_capacity(4096 + 400 * self.lvs.len());
        e.open(&self.name);
        e.str("id", &self.id.to_string());
        e.int("seqno", i64::from(self.seqno));
        e.str("format", "lvm2");
        e.strs("status", &self.status);
        e.strs("flags", &self.flags);
        if !self.tags.is_empty() {
            e.strs("tags", &self.tags);
        }
        e.int("extent_size", self.extent_size as i64);
        e.int("max_lv", i64::from(self.max_lv));
        e.int("max_pv", i64::from(self.max_pv));
        e.entries(&self.other);
        e.open("physical_volumes");
        for pv in &self.pvs {
            pv.emit(&mut e);
        }
        e.close();
        if !self.lvs.is_empty() {
            e.open("logical_volumes");
            for lv in &self.lvs {
                lv.emit(&mut e);
            }
            e.close();
        }
        e.entries(&self.other_sections);
        e.close();
        e.str("contents", CONTENTS);
        e.int("version", FORMAT_VERSION);
        e.str("description", h.description);
        e.str("creation_host", h.creation_host);
        e.int("creation_time", h.creation_time);
        // pvck's metadata search expects the text to end in "\n\n\0".
        let mut out = e.finish().into_bytes();
        out.extend_from_slice(b"\n\0");
        out
    }
}

impl Pv {
    fn emit(&self, e: &mut Emitter) {
        e.open(&self.name);
        e.str("id", &self.id.to_string());
        if let Some(d) = &self.device {
            e.str("device", d);
        }
        e.strs("status", &self.status);
        e.strs("flags", &self.flags);
        if !self.tags.is_empty() {
            e.strs("tags", &self.tags);
        }
        e.int("dev_size", self.dev_size as i64);
        e.int("pe_start", self.pe_start as i64);
        e.int("pe_count", self.pe_count as i64);
        e.entries(&self.other);
        e.close();
    }
}

impl Lv {
    fn emit(&self, e: &mut Emitter) {
        e.open(&self.name);
        e.str("id", &self.id.to_string());
        e.strs("status", &self.status);
        e.strs("flags", &self.flags);
        if !self.tags.is_empty() {
            e.strs("tags", &self.tags);
        }
        if let Some((time, host)) = &self.creation {
            e.int("creation_time", *time);
            e.str("creation_host", host);
        }
        e.entries(&self.other);
        e.int("segment_count", self.segments.len() as i64);
        for (i, seg) in self.segments.iter().enumerate() {
            e.open(&format!("segment{}", i + 1));
            e.int("start_extent", seg.start_extent as i64);
            e.int("extent_count", seg.extent_count as i64);
            match &seg.kind {
                SegmentKind::Striped {
                    stripe_size,
                    stripes,
                } => {
                    e.str("type", SEG_STRIPED);
                    e.int("stripe_count", stripes.len() as i64);
                    if let Some(size) = stripe_size {
                        e.int("stripe_size", *size as i64);
                    }
                    e.stripes(stripes.iter().map(|st| (st.pv.as_str(), st.start_pe)));
                }
                SegmentKind::Other { type_name } => e.str("type", type_name),
            }
            e.entries(&seg.other);
            e.close();
        }
        e.close();
    }
}
