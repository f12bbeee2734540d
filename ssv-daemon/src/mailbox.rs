//! The growth mailbox: slot 2 of `ssv_leases`, one record per host id, in
//! which a host posts the LV extensions it waits for. Whichever host holds
//! the pool lease reads the whole slot and serves every pending request in
//! its one metadata commit (flat combining), so hosts that cross their
//! thresholds together do not queue for the lease one extension each.
//!
//! The mailbox only carries hints: only the pool-lease holder commits, and
//! a request is served only while the LV it names (by LVM uuid, which is
//! never reused, unlike a name) is smaller than the request's minimum. A
//! lost, torn, stale or foreign record therefore costs at most a retry.
//! The layout is in `FORMAT.md`, "The growth mailbox".

use crate::leases::{MAILBOX_SLOT, SLOT};
use crate::{Error, Result};
use lvm::names::{Uuid, UUID_LEN};
use san::BlockDev;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Bytes of a record (the rest of a larger sector is zero).
pub const RECORD_LEN: usize = 512;
/// "SSVM" in a dump.
pub const MAGIC: u32 = u32::from_le_bytes(*b"SSVM");
pub const VERSION: u32 = 1;
/// Field offsets.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_HOST: usize = 8;
const OFF_SEQ: usize = 16;
const OFF_COUNT: usize = 24;
const OFF_FLAGS: usize = 28;
/// Flag: the host waits for the pool lease for a change other than growth,
/// so a holder keeping it for growth releases it at once.
pub const FLAG_WANTS_LEASE: u32 = 1;
/// Requests start here, each `REQUEST_LEN` bytes: uuid, min, want.
pub const OFF_REQUESTS: usize = 32;
pub const REQUEST_LEN: usize = UUID_LEN + 16;
/// The checksum covers `[0, CHECKSUM_AT)` and is stored there.
pub const CHECKSUM_AT: usize = RECORD_LEN - 4;
/// Requests one record holds: 9.
pub const MAX_REQUESTS: usize = (CHECKSUM_AT - OFF_REQUESTS) / REQUEST_LEN;
/// [`Mailbox::read_board`] reads the whole slot this often and, between,
/// only the records up to the highest host id seen in the last such read:
/// a lingering holder reads the board every 10 ms, and the slot is 1 MiB.
pub const RESCAN: Duration = Duration::from_secs(1);

/// One extension a host waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The LV, by its LVM uuid.
    pub lv: Uuid,
    /// Served while the LV is smaller than this (bytes).
    pub min_size: u64,
    /// What to grow it to when that fits (bytes, at least `min_size`).
    pub want_size: u64,
}

/// A host's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub host_id: u64,
    /// Counts the host's writes of its record (diagnostics: which version
    /// a holder read).
    pub seq: u64,
    pub requests: Vec<Request>,
    /// [`FLAG_WANTS_LEASE`].
    pub wants_lease: bool,
}

/// What the other hosts' records say.
#[derive(Debug, Default)]
pub struct Board {
    /// Their requests, with the host that posted each.
    pub requests: Vec<(u64, Request)>,
    /// Hosts waiting for the pool lease for another change.
    pub wanting_lease: Vec<u64>,
    /// The highest host id whose record was read (0: none).
    pub last_host: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("never written (all zero)")]
    Empty,
    #[error("magic {0:#x}, expected {MAGIC:#x}")]
    Magic(u32),
    #[error("version {0}, this ssvd reads {VERSION}")]
    Version(u32),
    #[error("checksum {found:#x}, computed {computed:#x} (torn or foreign sector)")]
    Checksum { found: u32, computed: u32 },
    #[error("{0}")]
    Field(String),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Encodes `r`; more than [`MAX_REQUESTS`] requests, host id 0 or a wanted
/// size below the minimum are refused.
pub fn encode(r: &Record) -> std::result::Result<[u8; RECORD_LEN], RecordError> {
    if r.host_id == 0 {
        return Err(RecordError::Field("host id 0".into()));
    }
    if r.requests.len() > MAX_REQUESTS {
        return Err(RecordError::Field(format!(
            "{} requests, a record holds {MAX_REQUESTS}",
            r.requests.len()
        )));
    }
    let mut b = [0u8; RECORD_LEN];
    b[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&MAGIC.to_le_bytes());
    b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
    b[OFF_HOST..OFF_HOST + 8].copy_from_slice(&r.host_id.to_le_bytes());
    b[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&r.seq.to_le_bytes());
    b[OFF_COUNT..OFF_COUNT + 4].copy_from_slice(&(r.requests.len() as u32).to_le_bytes());
    let flags = if r.wants_lease { FLAG_WANTS_LEASE } else { 0 };
    b[OFF_FLAGS..OFF_FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    for (i, q) in r.requests.iter().enumerate() {
        if q.want_size < q.min_size {
            return Err(RecordError::Field(format!(
                "request {i}: wanted size {} below the minimum {}",
                q.want_size, q.min_size
            )));
        }
        let at = OFF_REQUESTS + i * REQUEST_LEN;
        b[at..at + UUID_LEN].copy_from_slice(q.lv.as_bytes());
        b[at + UUID_LEN..at + UUID_LEN + 8].copy_from_slice(&q.min_size.to_le_bytes());
        b[at + UUID_LEN + 8..at + REQUEST_LEN].copy_from_slice(&q.want_size.to_le_bytes());
    }
    let crc = crc32c(&b[..CHECKSUM_AT]);
    b[CHECKSUM_AT..].copy_from_slice(&crc.to_le_bytes());
    Ok(b)
}

/// Decodes the record at the start of `b`; any bytes give a record or an
/// error, never a panic.
pub fn decode(b: &[u8]) -> std::result::Result<Record, RecordError> {
    let Some(b) = b.get(..RECORD_LEN) else {
        return Err(RecordError::Field(format!(
            "{} bytes, a record is {RECORD_LEN}",
            b.len()
        )));
    };
    if b.iter().all(|&x| x == 0) {
        return Err(RecordError::Empty);
    }
    let magic = u32_at(b, OFF_MAGIC);
    if magic != MAGIC {
        return Err(RecordError::Magic(magic));
    }
    let computed = crc32c(&b[..CHECKSUM_AT]);
    let found = u32_at(b, CHECKSUM_AT);
    if found != computed {
        return Err(RecordError::Checksum { found, computed });
    }
    let version = u32_at(b, OFF_VERSION);
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let host_id = u64_at(b, OFF_HOST);
    if host_id == 0 {
        return Err(RecordError::Field("host id 0".into()));
    }
    let count = u32_at(b, OFF_COUNT) as usize;
    if count > MAX_REQUESTS {
        return Err(RecordError::Field(format!(
            "{count} requests, a record holds {MAX_REQUESTS}"
        )));
    }
    let mut requests = Vec::with_capacity(count);
    for i in 0..count {
        let at = OFF_REQUESTS + i * REQUEST_LEN;
        let mut raw = [0u8; UUID_LEN];
        raw.copy_from_slice(&b[at..at + UUID_LEN]);
        let lv =
            Uuid::from_bytes(&raw).map_err(|e| RecordError::Field(format!("request {i}: {e}")))?;
        let min_size = u64_at(b, at + UUID_LEN);
        let want_size = u64_at(b, at + UUID_LEN + 8);
        if want_size < min_size {
            return Err(RecordError::Field(format!(
                "request {i}: wanted size {want_size} below the minimum {min_size}"
            )));
        }
        requests.push(Request {
            lv,
            min_size,
            want_size,
        });
    }
    Ok(Record {
        host_id,
        seq: u64_at(b, OFF_SEQ),
        requests,
        // Other bits are ignored: a later version's hints.
        wants_lease: u32_at(b, OFF_FLAGS) & FLAG_WANTS_LEASE != 0,
    })
}

/// CRC-32C (Castagnoli, reflected 0x82F63B78, init and final XOR all ones).
pub fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Records in the slot: one per sector (512 or 4096 bytes), host `h` at
/// index `h - 1`.
pub fn capacity(sector: u64) -> u64 {
    SLOT / sector.max(RECORD_LEN as u64)
}

/// A waiting request of this host, until it is served or given up.
#[derive(Debug)]
pub struct Ticket(u64);

#[derive(Default)]
struct Local {
    seq: u64,
    next_ticket: u64,
    pending: Vec<(u64, Request)>,
    /// Notices: LVs that will want to grow soon (their minimum is their
    /// size, so nothing waits), newest last, one per LV.
    notices: Vec<Request>,
    wants_lease: bool,
}

impl Local {
    /// In record order: pending requests, oldest first, then notices,
    /// newest first.
    fn requests(&self) -> impl Iterator<Item = Request> + '_ {
        self.pending
            .iter()
            .map(|(_, r)| *r)
            .chain(self.notices.iter().rev().copied())
    }

    /// Adds a pending request, replacing the LV's notice; its ticket.
    fn add(&mut self, req: Request) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.notices.retain(|n| n.lv != req.lv);
        self.pending.push((t, req));
        t
    }
}

/// This host's view of the mailbox: its own record, written from the
/// requests its writers wait for, and the reading of everyone's.
pub struct Mailbox {
    /// The leases LV. The mailbox lies in its first extents, which never
    /// move (the LV only grows at its end), so the device is made once.
    dev: Arc<dyn BlockDev>,
    stride: u64,
    host_id: u64,
    local: Mutex<Local>,
    /// Records worth reading: hosts `1..=span`, as of the whole-slot read
    /// at `scanned` (see [`RESCAN`]).
    seen: Mutex<Seen>,
}

struct Seen {
    span: u64,
    scanned: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Mailbox {
    /// Zeroes the slot of a new pool. Real zeroes rather than a discard:
    /// on a sparse file the hosts' record writes then need no allocation.
    pub fn init(dev: &dyn BlockDev) -> Result<()> {
        dev.write_at(&vec![0u8; SLOT as usize], MAILBOX_SLOT * SLOT)?;
        dev.flush()?;
        Ok(())
    }

    /// The mailbox of host `host_id` over the leases LV `dev`. Clears the
    /// host's record: requests left by an earlier run of ours are void.
    pub fn open(dev: Arc<dyn BlockDev>, host_id: u64) -> Result<Mailbox> {
        let stride = u64::from(dev.logical_sector_size()).max(RECORD_LEN as u64);
        if host_id == 0 || host_id > capacity(stride) {
            return Err(Error::Invalid(format!(
                "host id {host_id}: the growth mailbox holds hosts 1 to {} at {stride}-byte sectors",
                capacity(stride)
            )));
        }
        let mb = Mailbox {
            dev,
            stride,
            host_id,
            local: Mutex::new(Local::default()),
            seen: Mutex::new(Seen {
                span: 0,
                scanned: None,
            }),
        };
        mb.write(&mut lock(&mb.local))?;
        Ok(mb)
    }

    pub fn host_id(&self) -> u64 {
        self.host_id
    }

    /// Writes our record from the pending requests and then the notices
    /// (the first [`MAX_REQUESTS`]; this host serves the rest itself when it
    /// holds the lease). The write has returned from the device when this returns,
    /// so any later read by another host sees it; no cache flush, as a
    /// request lost to a power cut is only a hint: its writer retries.
    fn write(&self, l: &mut Local) -> Result<()> {
        l.seq += 1;
        let rec = Record {
            host_id: self.host_id,
            seq: l.seq,
            requests: l.requests().take(MAX_REQUESTS).collect(),
            wants_lease: l.wants_lease,
        };
        let bytes = encode(&rec).map_err(|e| Error::Invalid(format!("mailbox record: {e}")))?;
        let mut sector = vec![0u8; self.stride as usize];
        sector[..RECORD_LEN].copy_from_slice(&bytes);
        self.dev.write_at(
            &sector,
            MAILBOX_SLOT * SLOT + (self.host_id - 1) * self.stride,
        )?;
        Ok(())
    }

    /// Posts a request and writes our record. It replaces the LV's notice.
    pub fn post(&self, req: Request) -> Result<Ticket> {
        let mut l = lock(&self.local);
        let t = l.add(req);
        if let Err(e) = self.write(&mut l) {
            l.pending.retain(|(x, _)| *x != t);
            return Err(e);
        }
        Ok(Ticket(t))
    }

    /// Adds a request without writing our record: for a host that keeps
    /// the pool lease and commits it at once. [`Mailbox::publish`] writes
    /// it if that commit did not serve it.
    pub fn post_local(&self, req: Request) -> Ticket {
        Ticket(lock(&self.local).add(req))
    }

    /// Writes our record as it stands.
    pub fn publish(&self) -> Result<()> {
        self.write(&mut lock(&self.local))
    }

    /// Drops a request. Served ones stay in the record until the next
    /// write (they are no-ops: their LV has its minimum, and LVs do not
    /// shrink under a uuid); given-up ones are rewritten away at once so
    /// no holder grows an LV nobody waits for.
    pub fn withdraw(&self, t: Ticket, served: bool) {
        let mut l = lock(&self.local);
        l.pending.retain(|(x, _)| *x != t.0);
        if !served {
            if let Err(e) = self.write(&mut l) {
                log::warn!("clearing a request from the growth mailbox: {e}");
            }
        }
    }

    /// Posts a notice (a request whose minimum is the LV's size: a holder
    /// grows it to `want_size` only in a commit it makes for a pending
    /// request) and writes our record. It replaces the LV's older notice;
    /// the oldest go when there are more than a record holds.
    pub fn notice(&self, req: Request) -> Result<()> {
        let mut l = lock(&self.local);
        l.notices.retain(|n| n.lv != req.lv);
        l.notices.push(req);
        if l.notices.len() > MAX_REQUESTS {
            l.notices.remove(0);
        }
        self.write(&mut l)
    }

    /// Whether a notice of ours names this LV.
    pub fn noticed(&self, lv: Uuid) -> bool {
        lock(&self.local).notices.iter().any(|n| n.lv == lv)
    }

    /// This host's pending requests, oldest first, then its notices,
    /// newest first.
    pub fn local(&self) -> Vec<Request> {
        lock(&self.local).requests().collect()
    }

    /// Says in our record whether this host waits for the pool lease for
    /// a change other than growth.
    pub fn want_lease(&self, wants: bool) -> Result<()> {
        let mut l = lock(&self.local);
        if l.wants_lease == wants {
            return Ok(());
        }
        l.wants_lease = wants;
        self.write(&mut l)
    }

    /// Every other host's requests, in one read of the slot; records that
    /// do not decode (never written, torn, foreign) are skipped.
    pub fn read_others(&self) -> Result<Vec<(u64, Request)>> {
        Ok(self.read_board()?.requests)
    }

    /// Every other host's record, in one read: of the whole slot at most
    /// every [`RESCAN`], else of the hosts seen in the last such read (a
    /// host's first record shows within [`RESCAN`]; records are hints).
    pub fn read_board(&self) -> Result<Board> {
        let span = {
            let s = lock(&self.seen);
            match s.scanned {
                Some(t) if t.elapsed() < RESCAN => Some(s.span),
                _ => None,
            }
        };
        if let Some(span) = span {
            return self.read_hosts(span);
        }
        let board = self.read_hosts(SLOT / self.stride)?;
        *lock(&self.seen) = Seen {
            span: board.last_host.max(self.host_id),
            scanned: Some(Instant::now()),
        };
        Ok(board)
    }

    /// The requests of hosts with lower ids than ours (nothing to read for
    /// host 1).
    pub fn read_lower(&self) -> Result<Vec<(u64, Request)>> {
        Ok(self.read_hosts(self.host_id - 1)?.requests)
    }

    fn read_hosts(&self, hosts: u64) -> Result<Board> {
        let mut out = Board::default();
        if hosts == 0 {
            return Ok(out);
        }
        let mut buf = vec![0u8; (hosts * self.stride) as usize];
        self.dev.read_at(&mut buf, MAILBOX_SLOT * SLOT)?;
        for (i, sector) in buf.chunks_exact(self.stride as usize).enumerate() {
            let host = i as u64 + 1;
            if host == self.host_id {
                continue;
            }
            match decode(sector) {
                Ok(r) if r.host_id == host => {
                    out.last_host = host;
                    if r.wants_lease {
                        out.wanting_lease.push(host);
                    }
                    out.requests
                        .extend(r.requests.into_iter().map(|q| (host, q)));
                }
                Ok(r) => log::debug!(
                    "growth mailbox: record of host {} in the place of host {host}; ignored",
                    r.host_id
                ),
                Err(RecordError::Empty) => {}
                Err(e) => log::debug!("growth mailbox: record of host {host}: {e}; ignored"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uuid(s: &str) -> Uuid {
        Uuid::parse(s).unwrap()
    }

    #[test]
    fn layout_is_as_documented() {
        assert_eq!(MAX_REQUESTS, 9);
        assert_eq!(REQUEST_LEN, 48);
        assert_eq!(OFF_REQUESTS + MAX_REQUESTS * REQUEST_LEN, 464);
        let r = Record {
            host_id: 3,
            seq: 7,
            requests: vec![Request {
                lv: uuid("abcdef-0123-4567-89ab-cdef-ghij-klmnop"),
                min_size: 1 << 30,
                want_size: 2 << 30,
            }],
            wants_lease: true,
        };
        let b = encode(&r).unwrap();
        assert_eq!(&b[..4], b"SSVM");
        assert_eq!(u32_at(&b, 4), 1);
        assert_eq!(u64_at(&b, 8), 3);
        assert_eq!(u64_at(&b, 16), 7);
        assert_eq!(u32_at(&b, 24), 1);
        assert_eq!(u32_at(&b, 28), FLAG_WANTS_LEASE);
        assert_eq!(&b[32..64], b"abcdef0123456789abcdefghijklmnop");
        assert_eq!(u64_at(&b, 64), 1 << 30);
        assert_eq!(u64_at(&b, 72), 2 << 30);
        assert!(b[80..508].iter().all(|&x| x == 0));
        assert_eq!(u32_at(&b, 508), crc32c(&b[..508]));
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn bad_records_are_refused_with_the_reason() {
        assert_eq!(decode(&[0u8; RECORD_LEN]), Err(RecordError::Empty));
        assert!(matches!(decode(&[0u8; 10]), Err(RecordError::Field(_))));
        let r = Record {
            host_id: 1,
            seq: 1,
            requests: vec![],
            wants_lease: false,
        };
        let mut b = encode(&r).unwrap();
        b[20] ^= 1;
        assert!(matches!(decode(&b), Err(RecordError::Checksum { .. })));
        b[0] = b'X';
        assert!(matches!(decode(&b), Err(RecordError::Magic(_))));
        assert!(encode(&Record {
            host_id: 0,
            ..r.clone()
        })
        .is_err());
        let q = Request {
            lv: uuid("abcdef0123456789abcdefghijklmnop"),
            min_size: 2,
            want_size: 1,
        };
        assert!(encode(&Record {
            requests: vec![q],
            ..r.clone()
        })
        .is_err());
        let q = Request { want_size: 2, ..q };
        assert!(encode(&Record {
            requests: vec![q; MAX_REQUESTS + 1],
            ..r
        })
        .is_err());
    }

    /// A leases LV of 4 slots, its mailbox initialised.
    fn leases_dev() -> (tempfile::TempDir, Arc<dyn BlockDev>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(4 * SLOT)
            .unwrap();
        let dev: Arc<dyn BlockDev> =
            Arc::new(san::FileDev::open(&path, &san::OpenOptions::new()).unwrap());
        Mailbox::init(&*dev).unwrap();
        (dir, dev)
    }

    /// Between whole-slot reads the board covers the hosts seen: a host
    /// that joins past them shows at the next whole read, within RESCAN.
    #[test]
    fn the_board_reads_the_hosts_seen_and_rescans_for_new_ones() {
        let (_dir, dev) = leases_dev();
        let q = |min| Request {
            lv: uuid("abcdef0123456789abcdefghijklmnop"),
            min_size: min,
            want_size: min,
        };
        let low = Mailbox::open(dev.clone(), 2).unwrap();
        let holder = Mailbox::open(dev.clone(), 5).unwrap();
        assert_eq!(holder.read_board().unwrap().last_host, 2);
        let _t = low.post(q(1)).unwrap();
        let late = Mailbox::open(dev.clone(), 900).unwrap();
        let _u = late.post(q(2)).unwrap();
        let board = holder.read_board().unwrap();
        assert_eq!(board.requests, vec![(2, q(1))], "hosts 1..=5 only");
        std::thread::sleep(RESCAN);
        let board = holder.read_board().unwrap();
        assert_eq!(board.requests, vec![(2, q(1)), (900, q(2))]);
        assert_eq!(board.last_host, 900);
    }

    /// Notices ride after the pending requests, one per LV, newest first;
    /// the LV's request replaces its notice.
    #[test]
    fn notices_follow_requests_one_per_lv() {
        let (_dir, dev) = leases_dev();
        let a = Mailbox::open(dev.clone(), 1).unwrap();
        let b = Mailbox::open(dev.clone(), 2).unwrap();
        let (x, y) = (
            uuid("abcdef0123456789abcdefghijklmnop"),
            uuid("bbcdef0123456789abcdefghijklmnop"),
        );
        let q = |lv, min, want| Request {
            lv,
            min_size: min,
            want_size: want,
        };
        a.notice(q(x, 4, 8)).unwrap();
        a.notice(q(y, 4, 8)).unwrap();
        a.notice(q(x, 8, 12)).unwrap();
        assert!(a.noticed(x) && a.noticed(y));
        assert_eq!(
            b.read_others().unwrap(),
            vec![(1, q(x, 8, 12)), (1, q(y, 4, 8))]
        );
        let t = a.post(q(y, 9, 12)).unwrap();
        assert!(!a.noticed(y));
        assert_eq!(a.local(), vec![q(y, 9, 12), q(x, 8, 12)]);
        assert_eq!(
            b.read_others().unwrap(),
            vec![(1, q(y, 9, 12)), (1, q(x, 8, 12))]
        );
        a.withdraw(t, false);
        assert_eq!(b.read_others().unwrap(), vec![(1, q(x, 8, 12))]);
        // More notices than a record holds: the oldest go.
        for i in 0..MAX_REQUESTS as u64 + 2 {
            let lv = uuid(&format!("{i:0>32}"));
            a.notice(q(lv, 1, 2)).unwrap();
        }
        assert_eq!(a.local().len(), MAX_REQUESTS);
        assert!(!a.noticed(x));
    }

    #[test]
    fn a_mailbox_carries_requests_between_hosts() {
        let (_dir, dev) = leases_dev();
        let a = Mailbox::open(dev.clone(), 1).unwrap();
        let b = Mailbox::open(dev.clone(), 2000).unwrap();
        assert!(Mailbox::open(dev.clone(), 2049).is_err());
        let q = Request {
            lv: uuid("abcdef0123456789abcdefghijklmnop"),
            min_size: 1,
            want_size: 2,
        };
        let t = a.post(q).unwrap();
        assert_eq!(b.read_others().unwrap(), vec![(1, q)]);
        assert!(a.read_others().unwrap().is_empty());
        assert_eq!(b.read_lower().unwrap(), vec![(1, q)]);
        assert!(a.read_lower().unwrap().is_empty());
        a.withdraw(t, false);
        assert!(b.read_others().unwrap().is_empty());
        // A served request stays, harmlessly, until the next write.
        let t = a.post(q).unwrap();
        a.withdraw(t, true);
        assert_eq!(b.read_others().unwrap(), vec![(1, q)]);
        assert!(a.local().is_empty());
        // A restart voids what the last run left.
        drop(a);
        let _a = Mailbox::open(dev, 1).unwrap();
        assert!(b.read_others().unwrap().is_empty());
    }

    fn any_request() -> impl Strategy<Value = Request> {
        ("[0-9a-zA-Z!#]{32}", any::<u64>(), any::<u64>()).prop_map(|(u, a, b)| Request {
            lv: uuid(&u),
            min_size: a.min(b),
            want_size: a.max(b),
        })
    }

    proptest! {
        #[test]
        fn records_round_trip(
            host_id in 1u64..,
            seq in any::<u64>(),
            requests in proptest::collection::vec(any_request(), 0..=MAX_REQUESTS),
            wants_lease in any::<bool>(),
        ) {
            let r = Record { host_id, seq, requests, wants_lease };
            let b = encode(&r).unwrap();
            prop_assert_eq!(decode(&b), Ok(r));
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&b);
        }

        #[test]
        fn a_flipped_bit_is_never_taken_for_a_record(
            requests in proptest::collection::vec(any_request(), 0..=MAX_REQUESTS),
            bit in 0usize..RECORD_LEN * 8,
        ) {
            let r = Record { host_id: 5, seq: 1, requests, wants_lease: false };
            let mut b = encode(&r).unwrap();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&b).is_err());
        }
    }
}
