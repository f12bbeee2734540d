//! The PV label sector: label_header, pv_header and pv_header_extension
//! (spec §3–§5). One 512-byte sector in the first four, CRC over bytes 20..512.

use crate::crc::lvm_crc;
use crate::names::Uuid;
use crate::{io, Error, Result};
use san::BlockDev;

pub const SECTOR: u64 = 512;
/// lvm scans sectors 0..4 for a label.
pub const LABEL_SCAN_SECTORS: u64 = 4;
pub const DEFAULT_LABEL_SECTOR: u64 = 1;
pub const LABEL_ID: &[u8; 8] = b"LABELONE";
pub const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// Offset of the pv_header from the label start.
pub const PV_HEADER_OFFSET: u32 = 32;
pub const PV_EXT_VERSION: u32 = 2;
/// pv_header_extension flag: the PV belongs to a VG.
pub const PV_EXT_USED: u32 = 0x1;

// label_header field offsets
const OFF_SECTOR: usize = 8;
const OFF_CRC: usize = 16;
const OFF_OFFSET: usize = 20;
const OFF_TYPE: usize = 24;
// pv_header field offsets (from the sector start)
const OFF_UUID: usize = 32;
const OFF_DEV_SIZE: usize = 64;
const OFF_LISTS: usize = 72;
const LOCN_SIZE: usize = 16;

/// A `disk_locn`: byte offset and size (size 0 = to the end, for data areas).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLocn {
    pub offset: u64,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvLabel {
    /// Sector (of 512 bytes) holding the label.
    pub sector: u64,
    pub uuid: Uuid,
    /// Device size in bytes when formatted.
    pub device_size: u64,
    pub data_areas: Vec<DiskLocn>,
    pub mdas: Vec<DiskLocn>,
    /// 0 = no extension (old lvm), else [`PV_EXT_VERSION`].
    pub ext_version: u32,
    pub ext_flags: u32,
    pub bootloader_areas: Vec<DiskLocn>,
}

impl PvLabel {
    pub fn in_use(&self) -> bool {
        self.ext_flags & PV_EXT_USED != 0
    }

    /// Start of the physical extents in bytes.
    pub fn pe_start(&self) -> u64 {
        self.data_areas.first().map_or(0, |d| d.offset)
    }

    pub fn encode(&self) -> Result<[u8; SECTOR as usize]> {
        let mut s = [0u8; SECTOR as usize];
        s[..8].copy_from_slice(LABEL_ID);
        s[OFF_SECTOR..OFF_SECTOR + 8].copy_from_slice(&self.sector.to_le_bytes());
        s[OFF_OFFSET..OFF_OFFSET + 4].copy_from_slice(&PV_HEADER_OFFSET.to_le_bytes());
        s[OFF_TYPE..OFF_TYPE + 8].copy_from_slice(LABEL_TYPE);
        s[OFF_UUID..OFF_UUID + 32].copy_from_slice(self.uuid.as_bytes());
        s[OFF_DEV_SIZE..OFF_DEV_SIZE + 8].copy_from_slice(&self.device_size.to_le_bytes());
        let mut at = OFF_LISTS;
        let lists: [&[DiskLocn]; 2] = [&self.data_areas, &self.mdas];
        let put = |s: &mut [u8; 512], at: &mut usize, bytes: &[u8]| -> Result<()> {
            let end = *at + bytes.len();
            if end > SECTOR as usize {
                return Err(Error::InvalidArgument(
                    "PV label areas do not fit one sector".into(),
                ));
            }
            s[*at..end].copy_from_slice(bytes);
            *at = end;
            Ok(())
        };
        for list in lists {
            for l in list
                .iter()
                .chain(std::iter::once(&DiskLocn { offset: 0, size: 0 }))
            {
                put(&mut s, &mut at, &l.offset.to_le_bytes())?;
                put(&mut s, &mut at, &l.size.to_le_bytes())?;
            }
        }
        if self.ext_version > 0 {
            put(&mut s, &mut at, &self.ext_version.to_le_bytes())?;
            put(&mut s, &mut at, &self.ext_flags.to_le_bytes())?;
            for l in self
                .bootloader_areas
                .iter()
                .chain(std::iter::once(&DiskLocn { offset: 0, size: 0 }))
            {
                put(&mut s, &mut at, &l.offset.to_le_bytes())?;
                put(&mut s, &mut at, &l.size.to_le_bytes())?;
            }
        }
        let crc = lvm_crc(&s[OFF_OFFSET..]);
        s[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(s)
    }

    /// Decodes a label sector found at sector `index`. `Ok(None)`: no label
    /// here (no `LABELONE`); `Err`: a label that is damaged.
    pub fn decode(s: &[u8], index: u64) -> Result<Option<PvLabel>, String> {
        if s.len() < SECTOR as usize || &s[..8] != LABEL_ID {
            return Ok(None);
        }
        let sector = le64(s, OFF_SECTOR);
        if sector != index {
            return Err(format!("label for sector {sector} found at sector {index}"));
        }
        let crc = le32(s, OFF_CRC);
        let want = lvm_crc(&s[OFF_OFFSET..SECTOR as usize]);
        if crc != want {
            return Err(format!("label checksum {crc:#010x}, computed {want:#010x}"));
        }
        if le32(s, OFF_OFFSET) != PV_HEADER_OFFSET {
            return Err(format!(
                "pv_header offset {} (expected 32)",
                le32(s, OFF_OFFSET)
            ));
        }
        if &s[OFF_TYPE..OFF_TYPE + 8] != LABEL_TYPE {
            return Err("label type is not `LVM2 001`".into());
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&s[OFF_UUID..OFF_UUID + 32]);
        let uuid = Uuid::from_bytes(&raw).map_err(|e| match e {
            // Not "VG metadata: …": this is the label.
            Error::Metadata(m) => format!("PV UUID: {m}"),
            e => format!("PV UUID: {e}"),
        })?;
        let device_size = le64(s, OFF_DEV_SIZE);
        let mut at = OFF_LISTS;
        let data_areas = read_list(s, &mut at, "data area")?;
        let mdas = read_list(s, &mut at, "metadata area")?;
        let (mut ext_version, mut ext_flags, mut bootloader_areas) = (0, 0, Vec::new());
        if at + 8 <= SECTOR as usize {
            ext_version = le32(s, at);
            if ext_version > 0 {
                ext_flags = le32(s, at + 4);
                at += 8;
                bootloader_areas = read_list(s, &mut at, "bootloader area")?;
            }
        }
        if data_areas.len() != 1 {
            return Err(format!(
                "{} data areas (exactly 1 expected)",
                data_areas.len()
            ));
        }
        if mdas.len() > 2 {
            return Err(format!("{} metadata areas (at most 2)", mdas.len()));
        }
        Ok(Some(PvLabel {
            sector,
            uuid,
            device_size,
            data_areas,
            mdas,
            ext_version,
            ext_flags,
            bootloader_areas,
        }))
    }
}

fn read_list(s: &[u8], at: &mut usize, what: &str) -> Result<Vec<DiskLocn>, String> {
    let mut out = Vec::new();
    loop {
        if *at + LOCN_SIZE > SECTOR as usize {
            return Err(format!("{what} list runs past the label sector"));
        }
        let l = DiskLocn {
            offset: le64(s, *at),
            size: le64(s, *at + 8),
        };
        *at += LOCN_SIZE;
        if l.offset == 0 {
            return Ok(out);
        }
        out.push(l);
    }
}

pub(crate) fn le64(s: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(b)
}

pub(crate) fn le32(s: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&s[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Finds the label in sectors 0..4. `Ok(None)`: the device has none.
pub fn read_label(dev: &dyn BlockDev) -> Result<Option<PvLabel>> {
    let bad = |reason: String| Error::BadLabel {
        dev: dev.identity().to_string(),
        reason,
    };
    if dev.size() < LABEL_SCAN_SECTORS * SECTOR {
        return Ok(None);
    }
    let head = io::read(dev, "reading the label", 0, LABEL_SCAN_SECTORS * SECTOR)?;
    let mut found = None;
    for (i, s) in head.chunks_exact(SECTOR as usize).enumerate() {
        match PvLabel::decode(s, i as u64) {
            Ok(None) => {}
            Ok(Some(l)) if found.is_none() => found = Some(l),
            Ok(Some(_)) => log::warn!("{}: second label at sector {i} ignored", dev.identity()),
            Err(e) => return Err(bad(e)),
        }
    }
    if let Some(l) = &found {
        check_layout(l, dev.size()).map_err(bad)?;
    }
    Ok(found)
}

/// Areas must lie inside the device and not overlap the label sectors or each other.
fn check_layout(l: &PvLabel, dev_size: u64) -> Result<(), String> {
    let head = LABEL_SCAN_SECTORS * SECTOR;
    let pe_start = l.pe_start();
    if pe_start < head || pe_start > dev_size {
        return Err(format!(
            "data area starts at byte {pe_start}, outside the device of {dev_size} bytes"
        ));
    }
    for m in &l.mdas {
        let end = m
            .offset
            .checked_add(m.size)
            .ok_or("metadata area size overflows")?;
        if m.offset < head || m.offset % SECTOR != 0 || m.size < 2 * SECTOR || end > dev_size {
            return Err(format!(
                "metadata area {{offset {}, size {}}} does not fit a device of {dev_size} bytes",
                m.offset, m.size
            ));
        }
        if m.offset < pe_start && end > pe_start {
            return Err(format!(
                "metadata area at {} overlaps the data area at {pe_start}",
                m.offset
            ));
        }
    }
    Ok(())
}

pub fn write_label(dev: &dyn BlockDev, label: &PvLabel) -> Result<()> {
    let s = label.encode()?;
    io::write(dev, "writing the PV label", label.sector * SECTOR, &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PvLabel {
        PvLabel {
            sector: 1,
            uuid: Uuid::generate().unwrap(),
            device_size: 64 << 20,
            data_areas: vec![DiskLocn {
                offset: 1 << 20,
                size: 0,
            }],
            mdas: vec![DiskLocn {
                offset: 4096,
                size: 1_044_480,
            }],
            ext_version: 2,
            ext_flags: PV_EXT_USED,
            bootloader_areas: vec![],
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let l = sample();
        let s = l.encode().unwrap();
        assert_eq!(&s[..8], b"LABELONE");
        assert_eq!(&s[24..32], b"LVM2 001");
        // The extension ends at sector byte 160 with one MDA (spec §5).
        assert!(s[160..].iter().all(|&b| b == 0));
        assert_eq!(PvLabel::decode(&s, 1).unwrap(), Some(l));
    }

    #[test]
    fn damage_is_reported() {
        let s = sample().encode().unwrap();
        assert!(PvLabel::decode(&s, 2)
            .unwrap_err()
            .contains("found at sector 2"));
        let mut t = s;
        t[300] ^= 1;
        assert!(PvLabel::decode(&t, 1).unwrap_err().contains("checksum"));
        let mut z = [0u8; 512];
        z[..8].copy_from_slice(b"LABELONX");
        assert_eq!(PvLabel::decode(&z, 1).unwrap(), None);
    }
}
