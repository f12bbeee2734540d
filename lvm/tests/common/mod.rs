//! Shared helpers of the lvm integration tests: PV files in the target's tmp
//! dir, raw access to labels, metadata area headers and texts (to damage
//! them on purpose), a sample VG with the shapes lvm writes, and in-memory
//! PV labels for model-only tests.
#![allow(dead_code)]

use lvm::crc::lvm_crc;
use lvm::label::{read_label, DiskLocn, PvLabel, PV_EXT_VERSION, SECTOR};
use lvm::mda::{
    next_offset, read_header, read_text, text_locn, write_header, write_text, MdaHeader,
};
use lvm::model::TextHeader;
use lvm::names::Uuid;
use lvm::text::Section;
use lvm::{format_pv, Lv, OpenVg, PvDev, PvFormat, Segment, SegmentKind, Stamp, Stripe, Vg};
use san::{BlockDev, FaultControl, FaultDev, FileDev, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MIB: u64 = 1 << 20;

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

pub fn stamp() -> Stamp {
    Stamp {
        time: 1_700_000_000,
        host: "testhost".into(),
    }
}

pub fn header() -> TextHeader<'static> {
    TextHeader {
        description: "Write from a test.",
        creation_host: "testhost",
        creation_time: 1_700_000_000,
    }
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A sparse file used as a PV, reached without fault injection (to build
/// and to damage a VG) or through a [`FaultDev`] (to count the writes of the
/// code under test).
pub struct Disk {
    pub path: PathBuf,
    pub file: Arc<dyn BlockDev>,
}

impl Disk {
    pub fn new(dir: &Path, name: &str, size: u64) -> Disk {
        let path = dir.join(name);
        let f = FileDev::open(&path, &OpenOptions::new().create_size(Some(size))).unwrap();
        Disk {
            path,
            file: Arc::new(f),
        }
    }

    pub fn pv(&self) -> PvDev {
        PvDev::new(self.file.clone(), self.path.display().to_string())
    }

    pub fn faulty(&self, ctl: &FaultControl) -> PvDev {
        let dev = FaultDev::new(self.file.clone(), ctl.clone());
        PvDev::new(Arc::new(dev), self.path.display().to_string())
    }

    /// Reads `len` bytes at `offset` (both multiples of 512).
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.file.read_at(&mut buf, offset).unwrap();
        buf
    }

    /// Writes `data` at any `offset` (read-modify-write of whole sectors).
    pub fn write(&self, offset: u64, data: &[u8]) {
        let start = offset / SECTOR * SECTOR;
        let end = (offset + data.len() as u64).div_ceil(SECTOR) * SECTOR;
        let mut buf = self.read(start, (end - start) as usize);
        let at = (offset - start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        self.file.write_at(&buf, start).unwrap();
        self.file.flush().unwrap();
    }

    pub fn label(&self) -> PvLabel {
        read_label(&*self.file).unwrap().expect("a PV label")
    }

    pub fn mdas(&self) -> Vec<DiskLocn> {
        self.label().mdas
    }

    pub fn header(&self, mda: usize) -> MdaHeader {
        let m = self.mdas()[mda];
        read_header(&*self.file, m.offset, m.size).unwrap()
    }

    /// The committed text of area `mda`, NUL included.
    pub fn text(&self, mda: usize) -> Vec<u8> {
        let h = self.header(mda);
        read_text(&*self.file, &h, &h.committed).unwrap()
    }

    /// Commits `text` (NUL included) into area `mda` the way a writer would:
    /// after the current copy, with a correct checksum in slot 0.
    pub fn put_text(&self, mda: usize, text: &[u8]) {
        let mut h = self.header(mda);
        let at = next_offset(&h.committed, h.size);
        write_text(&*self.file, &h, at, text).unwrap();
        let mut l = text_locn(at, text);
        l.checksum = lvm_crc(text);
        h.committed = l;
        write_header(&*self.file, &h).unwrap();
        self.file.flush().unwrap();
    }

    /// Edits the raw label sector; `recrc` recomputes its checksum.
    pub fn patch_label(&self, f: impl FnOnce(&mut [u8]), recrc: bool) {
        let sector = self.label().sector;
        let mut s = self.read(sector * SECTOR, SECTOR as usize);
        f(&mut s);
        if recrc {
            let crc = lvm_crc(&s[20..]);
            s[16..20].copy_from_slice(&crc.to_le_bytes());
        }
        self.write(sector * SECTOR, &s);
    }

    /// Edits the raw header sector of area `mda`; `recrc` recomputes its checksum.
    pub fn patch_header(&self, mda: usize, f: impl FnOnce(&mut [u8]), recrc: bool) {
        let m = self.mdas()[mda];
        let mut s = self.read(m.offset, SECTOR as usize);
        f(&mut s);
        if recrc {
            let crc = lvm_crc(&s[4..]);
            s[..4].copy_from_slice(&crc.to_le_bytes());
        }
        self.write(m.offset, &s);
    }

    /// Reads the whole file, bypassing the `BlockDev`.
    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

/// Adds an LV of `stripes.len()` stripes of `per_stripe` extents each, on the
/// first free range of that length of each named PV (as lvcreate -i does).
pub fn add_striped(
    v: &mut Vg,
    name: &str,
    pvs: &[&str],
    per_stripe: u64,
    stripe_size: u64,
) -> lvm::Result<()> {
    let free = v.free_areas()?;
    let mut stripes = Vec::new();
    for pv in pvs {
        let i = v
            .pvs
            .iter()
            .position(|p| p.name == *pv)
            .expect("PV in the VG");
        let a = free
            .iter()
            .find(|a| a.pv == i && a.len >= per_stripe)
            .expect("room for a stripe");
        stripes.push(Stripe {
            pv: pv.to_string(),
            start_pe: a.start,
        });
    }
    let st = stamp();
    v.lvs.push(Lv {
        name: name.to_string(),
        id: Uuid::generate()?,
        status: strings(&["READ", "WRITE", "VISIBLE"]),
        flags: Vec::new(),
        tags: Vec::new(),
        creation: Some((st.time, st.host)),
        other: Section::default(),
        segments: vec![Segment {
            start_extent: 0,
            extent_count: per_stripe * pvs.len() as u64,
            kind: SegmentKind::Striped {
                stripe_size: Some(stripe_size),
                stripes,
            },
            other: Section::default(),
        }],
    });
    Ok(())
}

/// VG `vg0` on two 128 MiB PVs (`a`: one metadata area, `b`: two), 4 MiB
/// extents, VG and LV tags, a two-segment LV, a 2-stripe LV and an LV that
/// spans both PVs.
pub fn sample_vg(dir: &Path) -> (Vec<Disk>, OpenVg) {
    let a = Disk::new(dir, "a", 128 * MIB);
    let b = Disk::new(dir, "b", 128 * MIB);
    format_pv(&*a.file, &PvFormat::default()).unwrap();
    format_pv(
        &*b.file,
        &PvFormat {
            mda_copies: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let mut vg = OpenVg::create("vg0", &[a.pv(), b.pv()], 4 * MIB).unwrap();
    let st = stamp();
    vg.change("create lv0", |v| {
        v.create_lv("lv0", 3, &strings(&["t1", "owner=me"]), &st)
            .map(|_| ())
    })
    .unwrap();
    vg.change("create lv1", |v| {
        v.create_lv("lv1", 2, &[], &st).map(|_| ())
    })
    .unwrap();
    vg.change("extend lv0", |v| v.extend_lv("lv0", 2)).unwrap();
    vg.change("tag vg0", |v| {
        v.change_tags(None, &strings(&["vgtag", "site:x"]), &[])
    })
    .unwrap();
    vg.change("create str", |v| {
        add_striped(v, "str", &["pv0", "pv1"], 2, 128)
    })
    .unwrap();
    vg.change("create data", |v| {
        v.create_lv("data", 40, &strings(&["big"]), &st).map(|_| ())
    })
    .unwrap();
    let v = vg.vg();
    assert_eq!(v.lv("lv0").unwrap().segments.len(), 2);
    assert!(
        v.lv("data").unwrap().segments.len() >= 2,
        "data spans both PVs"
    );
    (vec![a, b], vg)
}

/// A PV label as `format_pv` would write it, for model-only tests: `pe_count`
/// extents of `extent_bytes` after a 1 MiB front area.
pub fn mem_label(pe_count: u64, extent_bytes: u64) -> PvLabel {
    let pe_start = MIB;
    PvLabel {
        sector: 1,
        uuid: Uuid::generate().unwrap(),
        device_size: pe_start + pe_count * extent_bytes,
        data_areas: vec![DiskLocn {
            offset: pe_start,
            size: 0,
        }],
        mdas: vec![DiskLocn {
            offset: 4096,
            size: pe_start - 4096,
        }],
        ext_version: PV_EXT_VERSION,
        ext_flags: 0,
        bootloader_areas: Vec::new(),
    }
}

/// A model-only VG with one PV per entry of `pe_counts`.
pub fn mem_vg(pe_counts: &[u64], extent_bytes: u64) -> Vg {
    let mut vg = Vg::new("vg", extent_bytes).unwrap();
    for (i, &n) in pe_counts.iter().enumerate() {
        vg.add_pv(&mem_label(n, extent_bytes), &format!("/dev/mem{i}"))
            .unwrap();
    }
    vg
}

/// Replaces the first `from` after the first `anchor` (both must exist).
pub fn replace_after(text: &str, anchor: &str, from: &str, to: &str) -> String {
    let a = text
        .find(anchor)
        .unwrap_or_else(|| panic!("{anchor:?} not in the text"));
    let f = a + text[a..]
        .find(from)
        .unwrap_or_else(|| panic!("{from:?} not after {anchor:?}"));
    format!("{}{}{}", &text[..f], to, &text[f + from.len()..])
}

/// Replaces the first whole line starting with `prefix` after `anchor`.
pub fn replace_line_after(text: &str, anchor: &str, prefix: &str, line: &str) -> String {
    let a = text
        .find(anchor)
        .unwrap_or_else(|| panic!("{anchor:?} not in the text"));
    let start = a
        + text[a..]
            .find(&format!("\n{prefix}"))
            .unwrap_or_else(|| panic!("{prefix:?} not after {anchor:?}"))
        + 1;
    let end = start + text[start..].find('\n').unwrap_or(text.len() - start);
    format!("{}{}{}", &text[..start], line, &text[end..])
}

/// Text of `raw` (which ends in a NUL) as a string, without the NUL.
pub fn text_str(raw: &[u8]) -> String {
    String::from_utf8(raw.strip_suffix(b"\0").unwrap_or(raw).to_vec()).unwrap()
}

/// A string back into a text with its trailing NUL.
pub fn with_nul(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Extents of each PV owned by an LV, from the segments alone (an
/// independent check of `used_extents`): panics on a double allocation or
/// an extent past the PV's end.
pub fn extent_bitmap(vg: &Vg) -> Vec<Vec<bool>> {
    let mut map: Vec<Vec<bool>> = vg
        .pvs
        .iter()
        .map(|p| vec![false; p.pe_count as usize])
        .collect();
    for lv in &vg.lvs {
        for seg in &lv.segments {
            let SegmentKind::Striped { stripes, .. } = &seg.kind else {
                continue;
            };
            let per = seg.extent_count / stripes.len() as u64;
            assert_eq!(
                per * stripes.len() as u64,
                seg.extent_count,
                "LV {}: uneven stripes",
                lv.name
            );
            for st in stripes {
                let i = vg
                    .pvs
                    .iter()
                    .position(|p| p.name == st.pv)
                    .expect("known PV");
                for e in st.start_pe..st.start_pe + per {
                    assert!(
                        e < vg.pvs[i].pe_count,
                        "LV {}: extent {e} past PV {} end",
                        lv.name,
                        st.pv
                    );
                    assert!(
                        !map[i][e as usize],
                        "LV {}: extent {e} of {} allocated twice",
                        lv.name, st.pv
                    );
                    map[i][e as usize] = true;
                }
            }
        }
    }
    map
}

/// A block device in memory (512-byte sectors), for tests that need many
/// fresh copies of a small VG.
pub struct MemDev {
    data: std::sync::Mutex<Vec<u8>>,
    id: san::DevId,
}

impl MemDev {
    pub fn new(data: Vec<u8>) -> MemDev {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        MemDev {
            data: std::sync::Mutex::new(data),
            id: san::DevId(format!("mem:{n}")),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }
}

impl BlockDev for MemDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> san::Result<()> {
        san::check_io(self, offset, buf.len())?;
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> san::Result<()> {
        san::check_io(self, offset, buf.len())?;
        self.data.lock().unwrap()[offset as usize..offset as usize + buf.len()]
            .copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> san::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn physical_sector_size(&self) -> u32 {
        4096
    }
    fn identity(&self) -> &san::DevId {
        &self.id
    }
}
