//! The on-disk records, byte-compatible with sanlock 3.x (see `FORMAT.md`).
//!
//! Every record lives at the start of its own sector, little-endian, and
//! carries a CRC-32C so a torn or foreign sector is detected, never trusted.
//! Decoding takes any bytes and returns an error for anything malformed.

use crate::crc32c;

pub const DELTA_MAGIC: u32 = 0x1221_2010;
pub const PAXOS_MAGIC: u32 = 0x0615_2010;
/// A paxos leader sanlock "cleared" (resource deleted from an rindex).
pub const PAXOS_CLEAR_MAGIC: u32 = 0x1128_2016;
pub const DELTA_VERSION: u32 = 0x0003_0004;
pub const PAXOS_VERSION: u32 = 0x0006_0004;
pub const REQUEST_MAGIC: u32 = 0x0829_2011;
pub const REQUEST_VERSION: u32 = 0x0001_0001;
const MAJOR_MASK: u32 = 0xffff_0000;

/// Lockspace and resource names: 48 bytes, NUL-padded.
pub const NAME_LEN: usize = 48;
/// Bytes of a leader record; the checksum covers `[0, LEADER_CHECKSUM_LEN)`.
pub const LEADER_LEN: usize = 200;
pub const LEADER_CHECKSUM_LEN: usize = 168;
/// Leaders are compared up to, not including, the timestamp.
pub const LEADER_COMPARE_LEN: usize = 152;
/// A dblock's checksum covers `[0, DBLOCK_CHECKSUM_LEN)`.
pub const DBLOCK_LEN: usize = 56;
pub const DBLOCK_CHECKSUM_LEN: usize = 48;
/// Offset of the mode block inside a host's dblock sector.
pub const MODE_BLOCK_OFFSET: usize = 128;
/// Offset of the 256-byte request/event bitmap inside a delta-lease sector.
pub const BITMAP_OFFSET: usize = 256;
pub const BITMAP_LEN: usize = 256;

/// Leader flag: the first step of a shared acquire holds the leader briefly.
pub const LFL_SHORT_HOLD: u32 = 0x1;
/// dblock flag: this host released its hold on the lease version.
pub const DBLOCK_RELEASED: u32 = 0x1;
/// Mode-block flag: this host holds the lease shared.
pub const MODE_SHARED: u32 = 0x1;

/// Request record force modes.
pub const FORCE_NONE: u32 = 0;
pub const FORCE_KILL: u32 = 1;
pub const FORCE_GRACEFUL: u32 = 2;

/// Sector layout of a paxos lease.
pub const PAXOS_LEADER_SECTOR: u64 = 0;
pub const PAXOS_REQUEST_SECTOR: u64 = 1;
/// Host `h`'s dblock is at sector `PAXOS_DBLOCK_SECTOR + h - 1`.
pub const PAXOS_DBLOCK_SECTOR: u64 = 2;

/// What a record failed to decode with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("magic {found:#x}, expected {expected:#x}")]
    Magic { found: u32, expected: u32 },
    #[error("the lease was cleared (magic {PAXOS_CLEAR_MAGIC:#x})")]
    Cleared,
    #[error("version {found:#x} has an unknown major, expected {expected:#x}")]
    Version { found: u32, expected: u32 },
    #[error("checksum {found:#x}, computed {computed:#x} (torn or foreign sector)")]
    Checksum { found: u32, computed: u32 },
    #[error("sector size {found} in the record, {expected} on the device")]
    SectorSize { found: u32, expected: u32 },
    #[error("record says align size flags {0:#x}, which is not one align size")]
    Align(u32),
    #[error("{0}")]
    Field(String),
}

/// Sector size and align size of a lease area; everything else follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub sector_size: u32,
    pub align_size: u64,
}

const MIB: u64 = 1 << 20;
/// Leader flags that carry the align size.
const ALIGN_FLAGS: [(u64, u32); 4] = [
    (MIB, 0x10),
    (2 * MIB, 0x20),
    (4 * MIB, 0x40),
    (8 * MIB, 0x80),
];
const ALIGN_FLAG_MASK: u32 = 0xf0;

impl Geometry {
    /// 512-byte sectors, 1 MiB align, 2000 hosts: sanlock's default on files.
    pub const DEFAULT: Geometry = Geometry {
        sector_size: 512,
        align_size: MIB,
    };

    /// The combinations sanlock accepts: 512/1M, 4K/1M, 4K/2M, 4K/4M, 4K/8M.
    pub fn new(sector_size: u32, align_size: u64) -> Result<Geometry, RecordError> {
        let ok = match sector_size {
            512 => align_size == MIB,
            4096 => ALIGN_FLAGS.iter().any(|&(a, _)| a == align_size),
            _ => false,
        };
        if !ok {
            return Err(RecordError::Field(format!(
                "sector size {sector_size} with align size {align_size} is not a valid lease geometry \
                 (use 512/1M, 4096/1M, 4096/2M, 4096/4M or 4096/8M)"
            )));
        }
        Ok(Geometry {
            sector_size,
            align_size,
        })
    }

    /// The geometry a record's sector size and flags describe.
    pub fn from_record(sector_size: u32, flags: u32) -> Result<Geometry, RecordError> {
        let flag = flags & ALIGN_FLAG_MASK;
        let align = match ALIGN_FLAGS.iter().find(|&&(_, f)| f == flag) {
            Some(&(a, _)) => a,
            // sanlock before 3.6 wrote no align flag: 512 → 1M, 4K → 8M.
            None if flag == 0 && sector_size == 512 => MIB,
            None if flag == 0 && sector_size == 4096 => 8 * MIB,
            None => return Err(RecordError::Align(flags)),
        };
        Geometry::new(sector_size, align)
    }

    pub fn align_flag(&self) -> u32 {
        ALIGN_FLAGS
            .iter()
            .find(|&&(a, _)| a == self.align_size)
            .map_or(0, |&(_, f)| f)
    }

    /// Hosts an area serves: 2000 for 512/1M, and for 4K sectors 250 per
    /// MiB of align (sanlock's table, which keeps spare sectors).
    pub fn max_hosts(&self) -> u64 {
        match self.sector_size {
            512 => 2000,
            _ => 250 * (self.align_size / MIB),
        }
    }

    pub fn sector(&self) -> u64 {
        u64::from(self.sector_size)
    }
}

/// A 48-byte, NUL-padded name. Not necessarily NUL-terminated on disk.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name(pub [u8; NAME_LEN]);

impl Default for Name {
    fn default() -> Self {
        Name([0; NAME_LEN])
    }
}

impl Name {
    /// A name from user input: 1–48 bytes, printable ASCII without ':' (the
    /// separator of sanlock's command-line lease syntax) or spaces.
    pub fn new(s: &str) -> Result<Name, RecordError> {
        if s.is_empty() || s.len() > NAME_LEN {
            return Err(RecordError::Field(format!(
                "name {s:?} must be 1 to {NAME_LEN} bytes"
            )));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic() || *c == ':') {
            return Err(RecordError::Field(format!(
                "name {s:?} contains {c:?}; use printable ASCII without ':' or spaces"
            )));
        }
        Ok(Name::from_bytes(s.as_bytes()))
    }

    /// Any bytes, truncated to 48 (host names read back from disk).
    pub fn from_bytes(b: &[u8]) -> Name {
        let mut n = [0u8; NAME_LEN];
        let len = b.len().min(NAME_LEN);
        n[..len].copy_from_slice(&b[..len]);
        Name(n)
    }

    pub fn is_empty(&self) -> bool {
        self.0[0] == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        &self.0[..end]
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Which of the two record families a leader belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderKind {
    /// A host-id (delta) lease in a lockspace.
    Delta,
    /// The leader of a resource (paxos) lease.
    Paxos,
}

impl LeaderKind {
    fn magic(self) -> u32 {
        match self {
            LeaderKind::Delta => DELTA_MAGIC,
            LeaderKind::Paxos => PAXOS_MAGIC,
        }
    }
    fn version(self) -> u32 {
        match self {
            LeaderKind::Delta => DELTA_VERSION,
            LeaderKind::Paxos => PAXOS_VERSION,
        }
    }
}

/// sanlock's `leader_record`, used for delta leases and paxos leaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leader {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub sector_size: u32,
    /// Paxos: dblocks in use (≤ max_hosts); delta: 0.
    pub num_hosts: u64,
    /// Paxos: the ballot-number modulus; delta: 1.
    pub max_hosts: u64,
    pub owner_id: u64,
    pub owner_generation: u64,
    pub lver: u64,
    pub space_name: Name,
    /// Paxos: the resource name; delta: the owner's unique host name.
    pub resource_name: Name,
    /// Delta: the owner's monotonic seconds; paxos: the winner's inp3.
    /// 0 means free.
    pub timestamp: u64,
    pub unused1: u64,
    pub unused2: u16,
    /// Delta: the owner's io_timeout in seconds; paxos: 0.
    pub io_timeout: u16,
    /// Paxos: who wrote this leader; delta: host-event payload.
    pub write_id: u64,
    pub write_generation: u64,
    pub write_timestamp: u64,
}

impl Leader {
    /// A fresh, free record as `init` writes it.
    pub fn new(kind: LeaderKind, geom: Geometry, space: Name, resource: Name) -> Leader {
        Leader {
            magic: kind.magic(),
            version: kind.version(),
            flags: geom.align_flag(),
            sector_size: geom.sector_size,
            num_hosts: 0,
            max_hosts: 1,
            owner_id: 0,
            owner_generation: 0,
            lver: 0,
            space_name: space,
            resource_name: resource,
            timestamp: 0,
            unused1: 0,
            unused2: 0,
            io_timeout: 0,
            write_id: 0,
            write_generation: 0,
            write_timestamp: 0,
        }
    }

    /// Writes the record and its checksum at the start of `sector`
    /// (≥ 200 bytes); bytes past the record are left alone.
    pub fn encode(&self, sector: &mut [u8]) {
        let b = &mut sector[..LEADER_LEN];
        put_u32(b, 0, self.magic);
        put_u32(b, 4, self.version);
        put_u32(b, 8, self.flags);
        put_u32(b, 12, self.sector_size);
        put_u64(b, 16, self.num_hosts);
        put_u64(b, 24, self.max_hosts);
        put_u64(b, 32, self.owner_id);
        put_u64(b, 40, self.owner_generation);
        put_u64(b, 48, self.lver);
        b[56..104].copy_from_slice(&self.space_name.0);
        b[104..152].copy_from_slice(&self.resource_name.0);
        put_u64(b, 152, self.timestamp);
        put_u64(b, 160, self.unused1);
        let crc = crc32c::checksum(&b[..LEADER_CHECKSUM_LEN]);
        put_u32(b, 168, crc);
        put_u16(b, 172, self.unused2);
        put_u16(b, 174, self.io_timeout);
        put_u64(b, 176, self.write_id);
        put_u64(b, 184, self.write_generation);
        put_u64(b, 192, self.write_timestamp);
    }

    /// Decodes the record at the start of `sector` without checking it.
    pub fn decode_raw(sector: &[u8]) -> Result<(Leader, u32), RecordError> {
        if sector.len() < LEADER_LEN {
            return Err(RecordError::Field(format!(
                "a leader needs {LEADER_LEN} bytes, got {}",
                sector.len()
            )));
        }
        let b = sector;
        let leader = Leader {
            magic: get_u32(b, 0),
            version: get_u32(b, 4),
            flags: get_u32(b, 8),
            sector_size: get_u32(b, 12),
            num_hosts: get_u64(b, 16),
            max_hosts: get_u64(b, 24),
            owner_id: get_u64(b, 32),
            owner_generation: get_u64(b, 40),
            lver: get_u64(b, 48),
            space_name: Name::from_bytes(&b[56..104]),
            resource_name: Name::from_bytes(&b[104..152]),
            timestamp: get_u64(b, 152),
            unused1: get_u64(b, 160),
            unused2: get_u16(b, 172),
            io_timeout: get_u16(b, 174),
            write_id: get_u64(b, 176),
            write_generation: get_u64(b, 184),
            write_timestamp: get_u64(b, 192),
        };
        Ok((leader, get_u32(b, 168)))
    }

    /// Decodes and verifies a record of `kind` on a device of `sector_size`:
    /// magic, version major, checksum, sector size and host counts.
    pub fn decode(
        sector: &[u8],
        kind: LeaderKind,
        sector_size: u32,
    ) -> Result<Leader, RecordError> {
        let (l, stored) = Leader::decode_raw(sector)?;
        if kind == LeaderKind::Paxos && l.magic == PAXOS_CLEAR_MAGIC {
            return Err(RecordError::Cleared);
        }
        if l.magic != kind.magic() {
            return Err(RecordError::Magic {
                found: l.magic,
                expected: kind.magic(),
            });
        }
        if l.version & MAJOR_MASK != kind.version() & MAJOR_MASK {
            return Err(RecordError::Version {
                found: l.version,
                expected: kind.version(),
            });
        }
        let computed = crc32c::checksum(&sector[..LEADER_CHECKSUM_LEN]);
        if computed != stored {
            return Err(RecordError::Checksum {
                found: stored,
                computed,
            });
        }
        if l.sector_size != sector_size {
            return Err(RecordError::SectorSize {
                found: l.sector_size,
                expected: sector_size,
            });
        }
        let geom = Geometry::from_record(l.sector_size, l.flags)?;
        if kind == LeaderKind::Paxos
            && (l.max_hosts == 0 || l.max_hosts > geom.max_hosts() || l.num_hosts > l.max_hosts)
        {
            return Err(RecordError::Field(format!(
                "num_hosts {} / max_hosts {} do not fit a {}-byte-sector, {}-byte-align lease",
                l.num_hosts, l.max_hosts, geom.sector_size, geom.align_size
            )));
        }
        Ok(l)
    }

    /// The align size this record was written for.
    pub fn geometry(&self) -> Result<Geometry, RecordError> {
        Geometry::from_record(self.sector_size, self.flags)
    }

    /// Equal up to, not including, the timestamp (sanlock's leader compare).
    pub fn same_except_timestamp(&self, other: &Leader) -> bool {
        let mut a = [0u8; LEADER_LEN];
        let mut b = [0u8; LEADER_LEN];
        self.encode(&mut a);
        other.encode(&mut b);
        a[..LEADER_COMPARE_LEN] == b[..LEADER_COMPARE_LEN]
    }
}

/// Host `host_id`'s bit in a delta lease's request/event bitmap.
pub fn bitmap_bit(host_id: u64) -> Option<(usize, u8)> {
    let i = host_id.checked_sub(1)?;
    let byte = usize::try_from(i / 8).ok().filter(|&b| b < BITMAP_LEN)?;
    Some((BITMAP_OFFSET + byte, 1 << (i % 8)))
}

/// The request record, sector 1 of a paxos lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request {
    /// The lease version the requester wants the owner to give up.
    pub lver: u64,
    pub force_mode: u32,
}

impl Request {
    pub fn encode(&self, sector: &mut [u8]) {
        put_u32(sector, 0, REQUEST_MAGIC);
        put_u32(sector, 4, REQUEST_VERSION);
        put_u64(sector, 8, self.lver);
        put_u32(sector, 16, self.force_mode);
    }

    /// An all-zero sector (as init leaves it) is "no request".
    pub fn decode(sector: &[u8]) -> Result<Request, RecordError> {
        if sector.len() < 20 {
            return Err(RecordError::Field("short request sector".into()));
        }
        let magic = get_u32(sector, 0);
        if magic == 0 && sector[..20].iter().all(|&b| b == 0) {
            return Ok(Request::default());
        }
        if magic != REQUEST_MAGIC {
            return Err(RecordError::Magic {
                found: magic,
                expected: REQUEST_MAGIC,
            });
        }
        let version = get_u32(sector, 4);
        if version & MAJOR_MASK != REQUEST_VERSION & MAJOR_MASK {
            return Err(RecordError::Version {
                found: version,
                expected: REQUEST_VERSION,
            });
        }
        Ok(Request {
            lver: get_u64(sector, 8),
            force_mode: get_u32(sector, 16),
        })
    }
}

/// A host's Disk Paxos block for one lease: written only by that host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dblock {
    pub mbal: u64,
    pub bal: u64,
    /// The proposed owner: host id, generation, timestamp.
    pub inp: u64,
    pub inp2: u64,
    pub inp3: u64,
    pub lver: u64,
    pub flags: u32,
}

/// The shared-mode block in the same sector as a host's dblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModeBlock {
    pub flags: u32,
    /// The holder's host generation: stale after the host rejoins.
    pub generation: u64,
}

impl Dblock {
    /// Writes the dblock and its checksum, and the mode block, into a sector
    /// (≥ 144 bytes).
    pub fn encode(&self, mode: &ModeBlock, sector: &mut [u8]) {
        put_u64(sector, 0, self.mbal);
        put_u64(sector, 8, self.bal);
        put_u64(sector, 16, self.inp);
        put_u64(sector, 24, self.inp2);
        put_u64(sector, 32, self.inp3);
        put_u64(sector, 40, self.lver);
        let crc = crc32c::checksum(&sector[..DBLOCK_CHECKSUM_LEN]);
        put_u32(sector, 48, crc);
        put_u32(sector, 52, self.flags);
        put_u32(sector, MODE_BLOCK_OFFSET, mode.flags);
        put_u32(sector, MODE_BLOCK_OFFSET + 4, 0);
        put_u64(sector, MODE_BLOCK_OFFSET + 8, mode.generation);
    }

    /// Decodes a host's sector. An all-zero dblock is valid and empty.
    pub fn decode(sector: &[u8]) -> Result<(Dblock, ModeBlock), RecordError> {
        if sector.len() < MODE_BLOCK_OFFSET + 16 {
            return Err(RecordError::Field("short dblock sector".into()));
        }
        let d = Dblock {
            mbal: get_u64(sector, 0),
            bal: get_u64(sector, 8),
            inp: get_u64(sector, 16),
            inp2: get_u64(sector, 24),
            inp3: get_u64(sector, 32),
            lver: get_u64(sector, 40),
            flags: get_u32(sector, 52),
        };
        let mode = ModeBlock {
            flags: get_u32(sector, MODE_BLOCK_OFFSET),
            generation: get_u64(sector, MODE_BLOCK_OFFSET + 8),
        };
        let stored = get_u32(sector, 48);
        if sector[..DBLOCK_LEN].iter().all(|&b| b == 0) {
            return Ok((d, mode));
        }
        let computed = crc32c::checksum(&sector[..DBLOCK_CHECKSUM_LEN]);
        if computed != stored {
            return Err(RecordError::Checksum {
                found: stored,
                computed,
            });
        }
        Ok((d, mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The lockspace record `sanlock direct init -s LS:0:file:0` writes, as
    /// `sanlock direct read_leader` printed it (checksum 0xb0f174c0).
    #[test]
    fn checksum_matches_sanlock_delta_init() {
        let mut l = Leader::new(
            LeaderKind::Delta,
            Geometry::DEFAULT,
            Name::new("LS").unwrap(),
            Name::default(),
        );
        l.io_timeout = 10;
        let mut s = [0u8; 512];
        l.encode(&mut s);
        assert_eq!(get_u32(&s, 168), 0xb0f1_74c0);
        assert_eq!(Leader::decode(&s, LeaderKind::Delta, 512).unwrap(), l);
    }

    /// The resource record of `sanlock direct init -r LS:RES1:file:1M`
    /// (checksum 0xe0217f4c).
    #[test]
    fn checksum_matches_sanlock_paxos_init() {
        let mut l = Leader::new(
            LeaderKind::Paxos,
            Geometry::DEFAULT,
            Name::new("LS").unwrap(),
            Name::new("RES1").unwrap(),
        );
        l.num_hosts = 2000;
        l.max_hosts = 2000;
        let mut s = [0u8; 512];
        l.encode(&mut s);
        assert_eq!(get_u32(&s, 168), 0xe021_7f4c);
    }

    #[test]
    fn geometries() {
        assert_eq!(Geometry::DEFAULT.max_hosts(), 2000);
        assert_eq!(Geometry::new(4096, MIB).unwrap().max_hosts(), 250);
        assert_eq!(Geometry::new(4096, 8 * MIB).unwrap().max_hosts(), 2000);
        assert!(Geometry::new(512, 2 * MIB).is_err());
        assert!(Geometry::new(1024, MIB).is_err());
        assert_eq!(
            Geometry::from_record(4096, 0x40).unwrap().align_size,
            4 * MIB
        );
        assert_eq!(Geometry::from_record(4096, 0).unwrap().align_size, 8 * MIB);
        assert!(Geometry::from_record(512, 0x30).is_err());
    }

    #[test]
    fn names() {
        assert!(Name::new("").is_err());
        assert!(Name::new("a:b").is_err());
        assert!(Name::new(&"x".repeat(49)).is_err());
        let n = Name::new(&"x".repeat(48)).unwrap();
        assert_eq!(n.as_bytes().len(), 48);
        assert_eq!(Name::new("pool").unwrap().to_string(), "pool");
    }

    #[test]
    fn torn_leader_is_rejected() {
        let l = Leader::new(
            LeaderKind::Paxos,
            Geometry::DEFAULT,
            Name::new("LS").unwrap(),
            Name::new("R").unwrap(),
        );
        let mut l = l;
        l.max_hosts = 2000;
        l.owner_id = 3;
        let mut s = [0u8; 512];
        l.encode(&mut s);
        s[40] ^= 1;
        assert!(matches!(
            Leader::decode(&s, LeaderKind::Paxos, 512),
            Err(RecordError::Checksum { .. })
        ));
        assert!(matches!(
            Leader::decode(&s, LeaderKind::Paxos, 4096),
            Err(RecordError::Checksum { .. })
        ));
    }

    #[test]
    fn bitmap_bits() {
        assert_eq!(bitmap_bit(1), Some((256, 1)));
        assert_eq!(bitmap_bit(9), Some((257, 1)));
        assert_eq!(bitmap_bit(2000), Some((256 + 249, 0x80)));
        assert_eq!(bitmap_bit(2049), None);
        assert_eq!(bitmap_bit(0), None);
    }

    fn arb_name() -> impl Strategy<Value = Name> {
        proptest::collection::vec(any::<u8>(), 0..=48).prop_map(|v| Name::from_bytes(&v))
    }

    proptest! {
        #[test]
        fn leader_round_trips(
            owner in any::<u64>(), gen in any::<u64>(), lver in any::<u64>(),
            ts in any::<u64>(), wid in any::<u64>(), io in any::<u16>(),
            space in arb_name(), res in arb_name(), hosts in 1u64..=2000,
        ) {
            let mut l = Leader::new(LeaderKind::Paxos, Geometry::DEFAULT, space, res);
            l.max_hosts = hosts;
            l.num_hosts = hosts;
            l.owner_id = owner; l.owner_generation = gen; l.lver = lver;
            l.timestamp = ts; l.write_id = wid; l.io_timeout = io;
            let mut s = [0u8; 512];
            l.encode(&mut s);
            prop_assert_eq!(Leader::decode(&s, LeaderKind::Paxos, 512).unwrap(), l);
        }

        #[test]
        fn dblock_round_trips(v in proptest::array::uniform6(any::<u64>()), flags in any::<u32>(), mf in any::<u32>(), mg in any::<u64>()) {
            let d = Dblock { mbal: v[0], bal: v[1], inp: v[2], inp2: v[3], inp3: v[4], lver: v[5], flags };
            let m = ModeBlock { flags: mf, generation: mg };
            let mut s = [0u8; 512];
            d.encode(&m, &mut s);
            prop_assert_eq!(Dblock::decode(&s).unwrap(), (d, m));
        }

        /// Arbitrary sectors never panic any decoder.
        #[test]
        fn hostile_sectors_do_not_panic(s in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Leader::decode(&s, LeaderKind::Paxos, 512);
            let _ = Leader::decode(&s, LeaderKind::Delta, 4096);
            let _ = Dblock::decode(&s);
            let _ = Request::decode(&s);
        }
    }
}
