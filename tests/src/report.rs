//! Typed rows of `lvm {vgs,lvs,pvs} --reportformat json --units b --nosuffix`.
//! lvm prints every value as a JSON string; lists (tags) are comma-separated.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

pub(crate) const JSON_BYTES: &[&str] = &["--reportformat", "json", "--units", "b", "--nosuffix"];
pub(crate) const VG_FIELDS: &str = "vg_name,vg_uuid,vg_attr,vg_size,vg_free,vg_extent_size,\
vg_extent_count,vg_free_count,pv_count,lv_count,vg_seqno,vg_tags,vg_mda_count,vg_mda_used_count";
pub(crate) const LV_FIELDS: &str = "lv_name,lv_uuid,lv_size,lv_tags,seg_count";
pub(crate) const SEG_FIELDS: &str =
    "lv_name,seg_start_pe,seg_size_pe,seg_pe_ranges,segtype,stripes,stripe_size";
pub(crate) const PV_FIELDS: &str = "pv_name,pv_uuid,vg_name,dev_size,pv_size,pv_free,pe_start,\
pv_pe_count,pv_pe_alloc_count,pv_tags,pv_mda_count";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VgReport {
    pub name: String,
    pub uuid: String,
    pub attr: String,
    pub size: u64,
    pub free: u64,
    /// Bytes.
    pub extent_size: u64,
    pub extent_count: u64,
    pub free_count: u64,
    pub pv_count: u64,
    pub lv_count: u64,
    pub seqno: u64,
    /// As lvm reports them: sorted, not in metadata order.
    pub tags: Vec<String>,
    pub mda_count: u64,
    pub mda_used_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LvReport {
    pub name: String,
    pub uuid: String,
    /// Bytes.
    pub size: u64,
    pub tags: Vec<String>,
    pub seg_count: u64,
    /// Sorted by `start_pe`.
    pub segments: Vec<SegReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegReport {
    /// First logical extent of the segment within the LV.
    pub start_pe: u64,
    pub size_pe: u64,
    /// One range per stripe, in stripe order.
    pub pe_ranges: Vec<PeRange>,
    /// "linear" for 1-stripe segments (the metadata says "striped").
    pub segtype: String,
    pub stripes: u64,
    /// Bytes; 0 for linear.
    pub stripe_size: u64,
}

/// `/dev/loop0:6-7` = PV path, first and last physical extent (inclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeRange {
    pub pv: String,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PvReport {
    pub name: String,
    pub uuid: String,
    /// "" for orphans, "[unknown]" for a PV marked used without a VG.
    pub vg_name: String,
    pub dev_size: u64,
    pub size: u64,
    pub free: u64,
    /// Bytes.
    pub pe_start: u64,
    pub pe_count: u64,
    pub pe_alloc_count: u64,
    pub tags: Vec<String>,
    pub mda_count: u64,
}

/// The rows of the first report of kind `key` ("vg", "lv", "seg", "pv").
pub(crate) fn rows(v: &Value, key: &str) -> Result<Vec<Value>> {
    let reports = v["report"]
        .as_array()
        .context("JSON report without \"report\" array")?;
    let mut out = Vec::new();
    for r in reports {
        if let Some(rows) = r[key].as_array() {
            out.extend(rows.iter().cloned());
        }
    }
    Ok(out)
}

fn s(row: &Value, f: &str) -> Result<String> {
    row[f]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("field {f} missing in {row}"))
}

fn n(row: &Value, f: &str) -> Result<u64> {
    let v = s(row, f)?;
    v.parse()
        .with_context(|| format!("field {f}: {v:?} is not an integer"))
}

fn list(row: &Value, f: &str) -> Result<Vec<String>> {
    Ok(s(row, f)?
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect())
}

impl VgReport {
    pub(crate) fn from_row(r: &Value) -> Result<VgReport> {
        Ok(VgReport {
            name: s(r, "vg_name")?,
            uuid: s(r, "vg_uuid")?,
            attr: s(r, "vg_attr")?,
            size: n(r, "vg_size")?,
            free: n(r, "vg_free")?,
            extent_size: n(r, "vg_extent_size")?,
            extent_count: n(r, "vg_extent_count")?,
            free_count: n(r, "vg_free_count")?,
            pv_count: n(r, "pv_count")?,
            lv_count: n(r, "lv_count")?,
            seqno: n(r, "vg_seqno")?,
            tags: list(r, "vg_tags")?,
            mda_count: n(r, "vg_mda_count")?,
            mda_used_count: n(r, "vg_mda_used_count")?,
        })
    }
}

impl LvReport {
    pub(crate) fn from_row(r: &Value) -> Result<LvReport> {
        Ok(LvReport {
            name: s(r, "lv_name")?,
            uuid: s(r, "lv_uuid")?,
            size: n(r, "lv_size")?,
            tags: list(r, "lv_tags")?,
            seg_count: n(r, "seg_count")?,
            segments: Vec::new(),
        })
    }
}

pub(crate) fn seg_from_row(r: &Value) -> Result<(String, SegReport)> {
    let seg = SegReport {
        start_pe: n(r, "seg_start_pe")?,
        size_pe: n(r, "seg_size_pe")?,
        pe_ranges: parse_pe_ranges(&s(r, "seg_pe_ranges")?)?,
        segtype: s(r, "segtype")?,
        stripes: n(r, "stripes")?,
        stripe_size: n(r, "stripe_size")?,
    };
    Ok((s(r, "lv_name")?, seg))
}

/// Parses `"/dev/loop0:6-7 /dev/loop1:0-1"`.
pub fn parse_pe_ranges(text: &str) -> Result<Vec<PeRange>> {
    text.split_whitespace()
        .map(|item| {
            let parse = || -> Option<PeRange> {
                let (pv, range) = item.rsplit_once(':')?;
                let (a, b) = range.split_once('-')?;
                Some(PeRange {
                    pv: pv.to_owned(),
                    start: a.parse().ok()?,
                    end: b.parse().ok()?,
                })
            };
            match parse() {
                Some(r) => Ok(r),
                None => bail!("bad PE range {item:?} in {text:?}"),
            }
        })
        .collect()
}

impl PvReport {
    pub(crate) fn from_row(r: &Value) -> Result<PvReport> {
        Ok(PvReport {
            name: s(r, "pv_name")?,
            uuid: s(r, "pv_uuid")?,
            vg_name: s(r, "vg_name")?,
            dev_size: n(r, "dev_size")?,
            size: n(r, "pv_size")?,
            free: n(r, "pv_free")?,
            pe_start: n(r, "pe_start")?,
            pe_count: n(r, "pv_pe_count")?,
            pe_alloc_count: n(r, "pv_pe_alloc_count")?,
            tags: list(r, "pv_tags")?,
            mda_count: n(r, "pv_mda_count")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pe_ranges() {
        let r = parse_pe_ranges("/dev/loop0:6-7 /dev/loop1:0-1").unwrap();
        assert_eq!(
            r[1],
            PeRange {
                pv: "/dev/loop1".into(),
                start: 0,
                end: 1
            }
        );
        assert!(parse_pe_ranges("").unwrap().is_empty());
        assert!(parse_pe_ranges("/dev/loop0:x").is_err());
    }

    #[test]
    fn lv_row() {
        let v: Value = serde_json::from_str(
            r#"{"report":[{"lv":[{"lv_name":"two","lv_uuid":"u","lv_size":"12582912","lv_tags":"a,b","seg_count":"2"}]}]}"#,
        )
        .unwrap();
        let lv = LvReport::from_row(&rows(&v, "lv").unwrap()[0]).unwrap();
        assert_eq!(
            (lv.size, lv.seg_count, lv.tags),
            (12582912, 2, vec!["a".into(), "b".into()])
        );
    }
}
