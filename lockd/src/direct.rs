//! Direct access to lease areas with no daemon: initialise a lockspace or a
//! resource, and dump what an area holds.

use serde::Serialize;

use crate::leaseio::LeaseDev;
use crate::paxos::check_num_hosts;
use crate::record::{
    Dblock, Geometry, Leader, LeaderKind, Name, DELTA_MAGIC, MODE_SHARED, PAXOS_CLEAR_MAGIC,
    PAXOS_DBLOCK_SECTOR, PAXOS_MAGIC,
};
use crate::{Error, Result};

fn name(s: &str) -> Result<Name> {
    Name::new(s).map_err(|e| Error::InvalidArgument(e.to_string()))
}

fn check_area(dev: &LeaseDev, geom: Geometry, offset: u64) -> Result<()> {
    if dev.sector_size() != geom.sector_size {
        return Err(Error::InvalidArgument(format!(
            "{} has {}-byte sectors; the lease geometry says {}",
            dev.name(),
            dev.sector_size(),
            geom.sector_size
        )));
    }
    if offset % geom.align_size != 0 {
        return Err(Error::InvalidArgument(format!(
            "offset {offset} is not a multiple of the align size {}",
            geom.align_size
        )));
    }
    if offset + geom.align_size > dev.size() {
        return Err(Error::InvalidArgument(format!(
            "{} is {} bytes; a lease area at {offset} needs {} bytes",
            dev.name(),
            dev.size(),
            offset + geom.align_size
        )));
    }
    Ok(())
}

/// The geometry to use on `dev` when none is given: 512/1M on 512-byte
/// devices, 4096/8M on 4K devices (sanlock's defaults).
pub fn default_geometry(dev: &LeaseDev) -> Result<Geometry> {
    match dev.sector_size() {
        512 => Ok(Geometry::DEFAULT),
        4096 => Geometry::new(4096, 8 << 20).map_err(|e| Error::InvalidArgument(e.to_string())),
        s => Err(Error::InvalidArgument(format!(
            "{} has {s}-byte sectors; leases need 512 or 4096",
            dev.name()
        ))),
    }
}

/// Writes an empty lockspace. Every record goes out in one write with host
/// 1's magic zeroed, then host 1's sector is rewritten valid, so a crash
/// leaves either no lockspace or a whole one.
pub fn init_lockspace(
    dev: &LeaseDev,
    geom: Geometry,
    offset: u64,
    space: &str,
    io_timeout: u16,
) -> Result<()> {
    check_area(dev, geom, offset)?;
    let space = name(space)?;
    let s = geom.sector_size as usize;
    let mut rec = Leader::new(LeaderKind::Delta, geom, space, Name::default());
    rec.io_timeout = io_timeout;
    let mut buf = vec![0u8; geom.align_size as usize];
    for i in 0..geom.max_hosts() as usize {
        rec.encode(&mut buf[i * s..(i + 1) * s]);
    }
    let mut first = rec;
    first.magic = 0;
    first.encode(&mut buf[..s]);
    dev.write(offset, &buf)?;
    rec.encode(&mut buf[..s]);
    dev.write(offset, &buf[..s])
}

/// Writes an empty resource lease for `num_hosts` hosts (1..=max_hosts):
/// leader, empty request record, zeroed dblocks, in one write.
pub fn init_resource(
    dev: &LeaseDev,
    geom: Geometry,
    offset: u64,
    space: &str,
    resource: &str,
    num_hosts: u64,
) -> Result<()> {
    check_area(dev, geom, offset)?;
    check_num_hosts(geom, num_hosts)?;
    let mut rec = Leader::new(LeaderKind::Paxos, geom, name(space)?, name(resource)?);
    rec.num_hosts = num_hosts;
    rec.max_hosts = geom.max_hosts();
    let sectors = (num_hosts + PAXOS_DBLOCK_SECTOR).next_power_of_two();
    let len = (sectors * geom.sector()).min(geom.align_size) as usize;
    let mut buf = vec![0u8; len];
    rec.encode(&mut buf);
    dev.write(offset, &buf)
}

/// One line of a dump.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DumpEntry {
    pub offset: u64,
    pub lockspace: String,
    /// Resource name, or the owner's host name for a delta lease.
    pub resource: String,
    pub timestamp: u64,
    pub owner_id: u64,
    pub owner_generation: u64,
    pub lver: u64,
    /// "lockspace", "host", "resource", "shared" (a shared holder's
    /// block), "damaged" (a record that fails its checks; see `error`)
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DumpEntry {
    fn of(offset: u64, l: &Leader, kind: &'static str) -> DumpEntry {
        DumpEntry {
            offset,
            lockspace: l.space_name.to_string(),
            resource: l.resource_name.to_string(),
            timestamp: l.timestamp,
            owner_id: l.owner_id,
            owner_generation: l.owner_generation,
            lver: l.lver,
            kind,
            error: None,
        }
    }

    /// A record that did not decode, listed so damage is never silent.
    fn damaged(offset: u64, sector: &[u8], e: &crate::record::RecordError) -> DumpEntry {
        let raw = Leader::decode_raw(sector).map_or_else(
            |_| {
                Leader::new(
                    LeaderKind::Paxos,
                    Geometry::DEFAULT,
                    Name::default(),
                    Name::default(),
                )
            },
            |(l, _)| l,
        );
        DumpEntry {
            error: Some(e.to_string()),
            ..DumpEntry::of(offset, &raw, "damaged")
        }
    }
}

/// Walks `len` bytes from `offset` in align-size steps and lists every
/// lockspace host record and resource leader (with shared holders).
pub fn dump(dev: &LeaseDev, offset: u64, len: u64) -> Result<Vec<DumpEntry>> {
    let s = u64::from(dev.sector_size());
    let geom = default_geometry(dev)?;
    let end = offset.saturating_add(len).min(dev.size());
    let mut out = Vec::new();
    let mut at = offset;
    while at + s <= end {
        let head = dev.read(at, s as usize)?;
        let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let align = match magic {
            DELTA_MAGIC | PAXOS_MAGIC | PAXOS_CLEAR_MAGIC => Leader::decode_raw(&head)
                .ok()
                .and_then(|(l, _)| l.geometry().ok())
                .map_or(geom.align_size, |g| g.align_size),
            _ => geom.align_size,
        };
        let area_len = align.min(end - at);
        match magic {
            DELTA_MAGIC => {
                let buf = dev.read(at, area_len as usize)?;
                for (i, sector) in buf.chunks(s as usize).enumerate() {
                    let l = match Leader::decode(sector, LeaderKind::Delta, s as u32) {
                        Ok(l) => l,
                        // Past the host slots (zeroes): nothing there.
                        Err(_) if sector.iter().all(|&b| b == 0) => continue,
                        Err(e) => {
                            out.push(DumpEntry::damaged(at + i as u64 * s, sector, &e));
                            continue;
                        }
                    };
                    if i > 0 && l.owner_id == 0 && l.timestamp == 0 {
                        continue;
                    }
                    let kind = if i == 0 && l.owner_id == 0 {
                        "lockspace"
                    } else {
                        "host"
                    };
                    out.push(DumpEntry::of(at + i as u64 * s, &l, kind));
                }
            }
            PAXOS_MAGIC => match Leader::decode(&head, LeaderKind::Paxos, s as u32) {
                Err(e) => out.push(DumpEntry::damaged(at, &head, &e)),
                Ok(l) => {
                    out.push(DumpEntry::of(at, &l, "resource"));
                    let sectors = ((l.num_hosts + PAXOS_DBLOCK_SECTOR) * s).min(area_len);
                    let buf = dev.read(at, sectors as usize)?;
                    for (i, sector) in buf
                        .chunks(s as usize)
                        .enumerate()
                        .skip(PAXOS_DBLOCK_SECTOR as usize)
                    {
                        let Ok((d, mode)) = Dblock::decode(sector) else {
                            continue;
                        };
                        if mode.flags & MODE_SHARED != 0 {
                            out.push(DumpEntry {
                                timestamp: 0,
                                owner_id: i as u64 - PAXOS_DBLOCK_SECTOR + 1,
                                owner_generation: mode.generation,
                                lver: d.lver,
                                ..DumpEntry::of(at + i as u64 * s, &l, "shared")
                            });
                        }
                    }
                }
            },
            _ => {}
        }
        at += align;
    }
    Ok(out)
}

/// Formats a dump as a table (the columns of `sanlock direct dump`).
pub fn format_dump(entries: &[DumpEntry]) -> String {
    let mut s = format!(
        "{:>10} {:>48} {:>48} {:>10} {:>4} {:>4} {:>4}\n",
        "offset", "lockspace", "resource", "timestamp", "own", "gen", "lver"
    );
    for e in entries {
        let lver = match (&e.error, e.kind) {
            (Some(err), _) => format!("{} DAMAGED: {err}", e.lver),
            (None, "shared") => "SH".to_string(),
            (None, _) => e.lver.to_string(),
        };
        s.push_str(&format!(
            "{:010} {:>48} {:>48} {:010} {:04} {:04} {}\n",
            e.offset, e.lockspace, e.resource, e.timestamp, e.owner_id, e.owner_generation, lver
        ));
    }
    s
}
