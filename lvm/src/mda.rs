//! Metadata areas: the mda_header sector and the circular text buffer behind
//! it (spec §6, §7, §14).

use crate::crc::{calc, lvm_crc, INITIAL_CRC};
use crate::label::{le32, le64, SECTOR};
use crate::{io, Error, Result};
use san::BlockDev;

pub const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
pub const MDA_VERSION: u32 = 1;
pub const MDA_HEADER_SIZE: u64 = SECTOR;
/// Copies start on this boundary, relative to the MDA start.
pub const MDA_ALIGN: u64 = 512;
/// raw_locn flag: the area is ignored (metadataignore).
pub const RAW_LOCN_IGNORED: u32 = 0x1;

const OFF_MAGIC: usize = 4;
const OFF_VERSION: usize = 20;
const OFF_START: usize = 24;
const OFF_SIZE: usize = 32;
const OFF_SLOT0: usize = 40;
const OFF_SLOT1: usize = 64;

/// Location of one text copy, relative to the MDA start. `size` counts the
/// trailing NUL; `offset + size > area size` means the copy wraps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawLocn {
    pub offset: u64,
    pub size: u64,
    pub checksum: u32,
    pub flags: u32,
}

impl RawLocn {
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }
    pub fn ignored(&self) -> bool {
        self.flags & RAW_LOCN_IGNORED != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MdaHeader {
    /// Absolute byte offset of this header on the device.
    pub start: u64,
    /// Size of the whole area including the header sector.
    pub size: u64,
    pub committed: RawLocn,
    pub precommitted: RawLocn,
}

impl MdaHeader {
    pub fn empty(start: u64, size: u64) -> Self {
        MdaHeader {
            start,
            size,
            committed: RawLocn::default(),
            precommitted: RawLocn::default(),
        }
    }

    pub fn encode(&self) -> [u8; SECTOR as usize] {
        let mut s = [0u8; SECTOR as usize];
        s[OFF_MAGIC..OFF_MAGIC + 16].copy_from_slice(MDA_MAGIC);
        s[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&MDA_VERSION.to_le_bytes());
        s[OFF_START..OFF_START + 8].copy_from_slice(&self.start.to_le_bytes());
        s[OFF_SIZE..OFF_SIZE + 8].copy_from_slice(&self.size.to_le_bytes());
        for (at, l) in [
            (OFF_SLOT0, &self.committed),
            (OFF_SLOT1, &self.precommitted),
        ] {
            s[at..at + 8].copy_from_slice(&l.offset.to_le_bytes());
            s[at + 8..at + 16].copy_from_slice(&l.size.to_le_bytes());
            s[at + 16..at + 20].copy_from_slice(&l.checksum.to_le_bytes());
            s[at + 20..at + 24].copy_from_slice(&l.flags.to_le_bytes());
        }
        let crc = lvm_crc(&s[4..]);
        s[..4].copy_from_slice(&crc.to_le_bytes());
        s
    }

    /// Decodes and checks a header expected at `start` with `size` (from the
    /// pv_header). Errors say which check failed.
    pub fn decode(s: &[u8], start: u64, size: u64) -> Result<MdaHeader, String> {
        if s.len() < SECTOR as usize {
            return Err("short header".into());
        }
        let crc = le32(s, 0);
        let want = lvm_crc(&s[4..SECTOR as usize]);
        if crc != want {
            return Err(format!(
                "header checksum {crc:#010x}, computed {want:#010x}"
            ));
        }
        if &s[OFF_MAGIC..OFF_MAGIC + 16] != MDA_MAGIC {
            return Err("wrong magic".into());
        }
        let version = le32(s, OFF_VERSION);
        if version != MDA_VERSION {
            return Err(format!("version {version} (expected 1)"));
        }
        let (hstart, hsize) = (le64(s, OFF_START), le64(s, OFF_SIZE));
        if hstart != start || hsize != size {
            return Err(format!(
                "header says start {hstart} size {hsize}, the PV label says start {start} size {size}"
            ));
        }
        let slot = |at: usize| RawLocn {
            offset: le64(s, at),
            size: le64(s, at + 8),
            checksum: le32(s, at + 16),
            flags: le32(s, at + 20),
        };
        let h = MdaHeader {
            start,
            size,
            committed: slot(OFF_SLOT0),
            precommitted: slot(OFF_SLOT1),
        };
        if !h.committed.is_empty() {
            check_locn(&h.committed, size)?;
        }
        Ok(h)
    }
}

/// A copy must start inside the buffer and, wrapped or not, fit it once.
fn check_locn(l: &RawLocn, area: u64) -> Result<(), String> {
    // `offset + size` must not overflow either: later arithmetic (wrap, placement) relies on it.
    if l.offset < MDA_HEADER_SIZE
        || l.offset >= area
        || l.size == 0
        || l.size > area - MDA_HEADER_SIZE
        || l.offset.checked_add(l.size).is_none()
    {
        return Err(format!(
            "text location {{offset {}, size {}}} does not fit the {area}-byte area",
            l.offset, l.size
        ));
    }
    if let Some(wrapped) = (l.offset + l.size).checked_sub(area) {
        if MDA_HEADER_SIZE + wrapped > l.offset {
            return Err(format!(
                "wrapped text at {{offset {}, size {}}} overlaps itself",
                l.offset, l.size
            ));
        }
    }
    Ok(())
}

/// Largest text (NUL included) an area of `area` bytes accepts: room for the
/// old and the new copy plus alignment (spec §14).
pub fn max_text_len(area: u64) -> u64 {
    ((area.saturating_sub(MDA_HEADER_SIZE)) / 2).saturating_sub(MDA_ALIGN)
}

/// Where the next copy goes, after the committed one (spec §7).
pub fn next_offset(committed: &RawLocn, area: u64) -> u64 {
    if committed.is_empty() || committed.ignored() {
        return MDA_HEADER_SIZE;
    }
    let (o, s) = (committed.offset, committed.size);
    let last = if o + s > area {
        (o + s - area) + MDA_HEADER_SIZE - 1
    } else {
        o + s - 1
    };
    if area - last < MDA_ALIGN {
        return MDA_HEADER_SIZE;
    }
    let new = (last + 1).div_ceil(MDA_ALIGN) * MDA_ALIGN;
    if new > area - MDA_ALIGN {
        MDA_HEADER_SIZE
    } else {
        new
    }
}

/// The (offset, length) pieces of a copy, relative to the MDA start: one, or
/// two when it wraps back to the start of the buffer.
fn pieces(offset: u64, len: u64, area: u64) -> [(u64, u64); 2] {
    if offset + len > area {
        [
            (offset, area - offset),
            (MDA_HEADER_SIZE, offset + len - area),
        ]
    } else {
        [(offset, len), (0, 0)]
    }
}

/// Would a copy of `len` bytes at `at` overlap the committed copy `old`?
pub fn copies_overlap(old: &RawLocn, at: u64, len: u64, area: u64) -> bool {
    if old.is_empty() || old.ignored() {
        return false;
    }
    let a = pieces(old.offset, old.size, area);
    let b = pieces(at, len, area);
    a.iter().any(|&(ao, al)| {
        b.iter()
            .any(|&(bo, bl)| al > 0 && bl > 0 && ao < bo + bl && bo < ao + al)
    })
}

pub fn read_header(dev: &dyn BlockDev, start: u64, size: u64) -> Result<MdaHeader> {
    let s = io::read(dev, "reading a metadata area header", start, SECTOR)?;
    MdaHeader::decode(&s, start, size).map_err(|reason| Error::BadMdaHeader {
        dev: dev.identity().to_string(),
        start,
        reason,
    })
}

pub fn write_header(dev: &dyn BlockDev, h: &MdaHeader) -> Result<()> {
    io::write(dev, "writing a metadata area header", h.start, &h.encode())
}

/// Reads the text at `l` and checks its checksum. The result keeps the NUL.
pub fn read_text(dev: &dyn BlockDev, h: &MdaHeader, l: &RawLocn) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::BadText {
        dev: dev.identity().to_string(),
        start: h.start,
        reason,
    };
    check_locn(l, h.size).map_err(bad)?;
    let mut text = Vec::with_capacity(io::usize_of(l.size)?);
    for (off, len) in pieces(l.offset, l.size, h.size) {
        if len > 0 {
            text.extend(io::read(dev, "reading metadata text", h.start + off, len)?);
        }
    }
    let crc = lvm_crc(&text);
    if crc != l.checksum {
        return Err(bad(format!(
            "text checksum {crc:#010x}, the header says {:#010x}",
            l.checksum
        )));
    }
    Ok(text)
}

/// Writes `text` (NUL included) at `offset` of the area, wrapping if needed,
/// each piece zero-padded to 512 bytes; [`text_locn`] is where it is.
pub fn write_text(dev: &dyn BlockDev, h: &MdaHeader, offset: u64, text: &[u8]) -> Result<()> {
    let len = text.len() as u64;
    let mut done = 0usize;
    for (off, plen) in pieces(offset, len, h.size) {
        if plen == 0 {
            continue;
        }
        let plen = io::usize_of(plen)?;
        let padded = plen.div_ceil(MDA_ALIGN as usize) * MDA_ALIGN as usize;
        // Padding must not run past the area's end (the first piece of a wrapped copy ends exactly there).
        let padded = padded.min(io::usize_of(h.size - off)?);
        let mut buf = vec![0u8; padded];
        buf[..plen].copy_from_slice(&text[done..done + plen]);
        io::write(dev, "writing metadata text", h.start + off, &buf)?;
        done += plen;
    }
    Ok(())
}

/// Where `text` written at `offset` is, as a header slot points to it.
pub fn text_locn(offset: u64, text: &[u8]) -> RawLocn {
    RawLocn {
        offset,
        size: text.len() as u64,
        checksum: calc(text, INITIAL_CRC),
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locn(offset: u64, size: u64) -> RawLocn {
        RawLocn {
            offset,
            size,
            checksum: 0,
            flags: 0,
        }
    }

    #[test]
    fn header_round_trip_and_checks() {
        let mut h = MdaHeader::empty(4096, 1_044_480);
        h.committed = RawLocn {
            offset: 512,
            size: 726,
            checksum: 7,
            flags: 0,
        };
        let s = h.encode();
        assert_eq!(&s[4..20], MDA_MAGIC);
        assert_eq!(MdaHeader::decode(&s, 4096, 1_044_480).unwrap(), h);
        assert!(MdaHeader::decode(&s, 8192, 1_044_480)
            .unwrap_err()
            .contains("PV label"));
        let mut t = s;
        t[200] ^= 1; // an unused byte is covered by the checksum too
        assert!(MdaHeader::decode(&t, 4096, 1_044_480)
            .unwrap_err()
            .contains("checksum"));
    }

    #[test]
    fn placement_follows_lvm() {
        // Observed with a 32 KiB area (spec §7): copies follow each other on 512 boundaries.
        let z = 32768;
        let at = |o, s| next_offset(&locn(o, s), z);
        assert_eq!(next_offset(&RawLocn::default(), z), 512);
        assert_eq!(at(512, 726), 1536);
        assert_eq!(at(1536, 1000), 2560);
        // seqno 18 at 30720, 2170 bytes, wrapped 122 bytes to 512; the next went to 1024.
        assert_eq!(at(30720, 2170), 1024);
        // Ending exactly at the area end: wrap to the start.
        assert_eq!(at(32256, 512), 512);
        // A copy starting at Z-512 stays there.
        assert_eq!(at(30000, 2256), 32256);
        assert_eq!(max_text_len(1_044_480), 521_472);
        assert_eq!(max_text_len(32768), 15_616);
    }

    #[test]
    fn wrapped_location_must_not_overlap_itself() {
        assert!(check_locn(&locn(30720, 2170), 32768).is_ok());
        // {1024, 32000} wraps 256 bytes to [512, 768): it fits (lvm accepts wrap <= offset too).
        assert!(check_locn(&locn(1024, 32000), 32768).is_ok());
        // One byte more than the 32256-byte buffer would overlap itself.
        assert!(check_locn(&locn(1024, 32257), 32768).is_err());
        assert!(check_locn(&locn(u64::MAX - 1, 2), u64::MAX).is_err());
        assert!(check_locn(&locn(100, 10), 32768).is_err());
        assert!(check_locn(&locn(512, u64::MAX), 32768).is_err());
    }
}
