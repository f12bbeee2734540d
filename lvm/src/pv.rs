//! Formatting a device as a PV (what `pvcreate` writes, spec §1, §8, §18).

use crate::label::{
    read_label, write_label, DiskLocn, PvLabel, DEFAULT_LABEL_SECTOR, LABEL_SCAN_SECTORS,
    PV_EXT_VERSION, SECTOR,
};
use crate::mda::{write_header, MdaHeader};
use crate::names::Uuid;
use crate::{io, Error, Result};
use san::BlockDev;

/// lvm puts the first metadata area here (2048 rounded up to the page size).
pub const MDA1_START: u64 = 4096;
/// lvm's smallest metadata area (8 pages).
pub const MDA_SIZE_MIN: u64 = 32 << 10;
/// lvm's default: 1 MiB data alignment.
pub const DEFAULT_DATA_ALIGNMENT: u64 = 1 << 20;

#[derive(Clone, Debug)]
pub struct PvFormat {
    /// Requested size of each metadata area in bytes (header included); the
    /// first one is grown so the data area starts aligned.
    pub mda_size: u64,
    /// 0, 1 (front) or 2 (front and end of the device).
    pub mda_copies: u8,
    pub data_alignment: u64,
    /// Overwrite a PV that belongs to a VG.
    pub force: bool,
}

impl Default for PvFormat {
    fn default() -> Self {
        PvFormat {
            mda_size: 1020 << 10,
            mda_copies: 1,
            data_alignment: DEFAULT_DATA_ALIGNMENT,
            force: false,
        }
    }
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// Writes an orphan PV label and empty metadata areas on `dev`.
pub fn format_pv(dev: &dyn BlockDev, f: &PvFormat) -> Result<PvLabel> {
    let dev_id = dev.identity().to_string();
    let arg = |msg: String| Err(Error::InvalidArgument(format!("{dev_id}: {msg}")));
    if f.data_alignment == 0 || f.data_alignment % SECTOR != 0 {
        return arg(format!(
            "data alignment {} is not a multiple of 512",
            f.data_alignment
        ));
    }
    if f.mda_copies > 2 {
        return arg("at most 2 metadata areas per PV".into());
    }
    if f.mda_copies > 0 && f.mda_size < MDA_SIZE_MIN {
        return arg(format!(
            "metadata area of {} bytes is below the minimum of {MDA_SIZE_MIN}",
            f.mda_size
        ));
    }
    if !f.force {
        match read_label(dev) {
            Ok(Some(l)) if l.in_use() => {
                return Err(Error::Refused {
                    vg: "?".into(),
                    reason: format!(
                        "{dev_id} is a PV in use by a VG; remove it from the VG first (or force)"
                    ),
                })
            }
            _ => {}
        }
    }
    let size = dev.size();
    let mut mdas = Vec::new();
    let pe_start = if f.mda_copies > 0 {
        let end = round_up(MDA1_START + f.mda_size, f.data_alignment);
        mdas.push(DiskLocn {
            offset: MDA1_START,
            size: end - MDA1_START,
        });
        end
    } else {
        round_up(LABEL_SCAN_SECTORS * SECTOR, f.data_alignment)
    };
    if f.mda_copies == 2 {
        let start = size.saturating_sub(f.mda_size) / f.data_alignment * f.data_alignment;
        if start <= pe_start {
            return arg(format!("{size} bytes are too small for two metadata areas"));
        }
        mdas.push(DiskLocn {
            offset: start,
            size: size - start,
        });
    }
    if pe_start >= size {
        return arg(format!(
            "{size} bytes are too small: the data area would start at {pe_start}"
        ));
    }
    let label = PvLabel {
        sector: DEFAULT_LABEL_SECTOR,
        uuid: Uuid::generate()?,
        device_size: size,
        data_areas: vec![DiskLocn {
            offset: pe_start,
            size: 0,
        }],
        mdas,
        ext_version: PV_EXT_VERSION,
        ext_flags: 0,
        bootloader_areas: Vec::new(),
    };
    // Old labels in sectors 0..4 would compete with ours: zero them first.
    io::write(
        dev,
        "zeroing the label sectors",
        0,
        &[0u8; (LABEL_SCAN_SECTORS * SECTOR) as usize],
    )?;
    for m in &label.mdas {
        let clear = (4096u64).min(m.size);
        io::write(
            dev,
            "zeroing a metadata area",
            m.offset,
            &vec![0u8; clear as usize],
        )?;
        write_header(dev, &MdaHeader::empty(m.offset, m.size))?;
    }
    io::flush(dev, "flushing the metadata areas")?;
    write_label(dev, &label)?;
    io::flush(dev, "flushing the PV label")?;
    Ok(label)
}
