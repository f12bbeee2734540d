//! Commands of one connection run concurrently on the target: many threads
//! of one session against a slow LU finish in about one device delay, not
//! one per command, with every block right; COMPARE AND WRITE stays atomic
//! among them; a queued task can be aborted before it starts; and task
//! management answers only after the running commands it waits for.

mod target_common;

use san::iscsi::pdu::{self, encode_lun, Opcode, Pdu};
use san::iscsi::{login, Connection, DataPhase};
use san::scsi::{Cdb, Sense, Status};
use san::target::{LunConfig, TargetConfig, TargetServer};
use san::{BlockDev, DevId, FileDev, OpenOptions};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use target_common::*;

/// A device that sleeps in every read and write while `delay` is set,
/// and records how many of them were in progress at once.
struct SlowDev {
    inner: FileDev,
    delay_ms: AtomicU64,
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl SlowDev {
    fn enter(&self) -> Inside<'_> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
        Inside(self)
    }

    fn slow(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
        self.peak.store(0, Ordering::SeqCst);
    }
}

struct Inside<'a>(&'a SlowDev);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BlockDev for SlowDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> san::Result<()> {
        let _in = self.enter();
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> san::Result<()> {
        let _in = self.enter();
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> san::Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn logical_sector_size(&self) -> u32 {
        self.inner.logical_sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }
    fn identity(&self) -> &DevId {
        self.inner.identity()
    }
}

struct Slow {
    server: TargetServer,
    dev: Arc<SlowDev>,
    _dir: tempfile::TempDir,
}

fn start_slow() -> Slow {
    let dir = tempfile::tempdir().unwrap();
    let opts = OpenOptions::new().create_size(Some(LUN_SIZE));
    let dev = Arc::new(SlowDev {
        inner: FileDev::open(dir.path().join("lun"), &opts).unwrap(),
        delay_ms: AtomicU64::new(0),
        now: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    });
    let lun = LunConfig::new(LUN, dev.clone() as Arc<dyn BlockDev>);
    let config = TargetConfig::new(IQN, vec!["127.0.0.1:0".parse().unwrap()], vec![lun]);
    Slow {
        server: TargetServer::start(config).unwrap(),
        dev,
        _dir: dir,
    }
}

const THREADS: usize = 16;
const DELAY_MS: u64 = 200;
/// Serially the commands of a round take THREADS × DELAY_MS (3.2 s); with
/// room for a loaded machine, a round must take under a third of that.
const ROUND_LIMIT: Duration = Duration::from_millis(THREADS as u64 * DELAY_MS / 3);

/// Runs `f(i)` on THREADS threads at once; how long the round took.
fn round(f: impl Fn(usize) + Sync) -> Duration {
    let t = Instant::now();
    std::thread::scope(|s| {
        for i in 0..THREADS {
            let f = &f;
            s.spawn(move || f(i));
        }
    });
    t.elapsed()
}

#[test]
fn one_session_overlaps_its_commands_and_keeps_data_right() {
    let f = start_slow();
    let s = connect(f.server.portals()[0], HOST_A, 1);
    clear_ua(&s);
    let block = |i: usize| 64 + 32 * i as u64;
    let data = |i: usize| pattern(8 * BLOCK, i as u8);
    f.dev.slow(DELAY_MS);
    let took = round(|i| assert_eq!(write16(&s, block(i), &data(i)).status, Status::GOOD));
    let peak = f.dev.peak.load(Ordering::SeqCst);
    assert!(
        took < ROUND_LIMIT,
        "{THREADS} writes took {took:?} (peak {peak} at once)"
    );
    assert!(peak >= THREADS / 2, "only {peak} writes overlapped");

    f.dev.slow(DELAY_MS);
    let took = round(|i| {
        let (c, back) = read16(&s, block(i), 8);
        assert_eq!(c.status, Status::GOOD, "{c:?}");
        assert!(back == data(i), "block {} read back wrong", block(i));
    });
    let peak = f.dev.peak.load(Ordering::SeqCst);
    assert!(
        took < ROUND_LIMIT,
        "{THREADS} reads took {took:?} (peak {peak} at once)"
    );
    assert!(peak >= THREADS / 2, "only {peak} reads overlapped");
    f.dev.slow(0);
    assert_eq!(f.server.stats().panics, 0);
}

/// Threads increment one counter block with COMPARE AND WRITE, retrying on
/// a miscompare: with the compare and the write atomic, no increment is lost.
#[test]
fn compare_and_write_stays_atomic_among_concurrent_commands() {
    let f = start_slow();
    let s = connect(f.server.portals()[0], HOST_A, 1);
    clear_ua(&s);
    let counter = |n: u64| {
        let mut b = vec![0u8; BLOCK];
        b[..8].copy_from_slice(&n.to_be_bytes());
        b
    };
    assert_eq!(write16(&s, 7, &counter(0)).status, Status::GOOD);
    const EACH: u64 = 10;
    round(|i| {
        let mut done = 0;
        while done < EACH {
            let (c, now) = read16(&s, 7, 1);
            assert_eq!(c.status, Status::GOOD);
            let n = u64::from_be_bytes(now[..8].try_into().unwrap());
            let caw = Cdb::CompareAndWrite {
                lba: 7,
                blocks: 1,
                fua: false,
                dpo: false,
            };
            let c = exec(&s, &caw, DataPhase::Out(&[now, counter(n + 1)].concat()));
            if c.status == Status::GOOD {
                done += 1;
            } else {
                assert!(
                    sense(&c).is(Sense::MISCOMPARE_DURING_VERIFY),
                    "thread {i}: {c:?}"
                );
            }
        }
    });
    let (_, end) = read16(&s, 7, 1);
    assert_eq!(end, counter(THREADS as u64 * EACH));
}

/// A raw connection, to see the order of answers.
struct Raw {
    c: Connection,
    itt: u32,
}

impl Raw {
    fn open(f: &Slow, path: u16) -> Raw {
        let mut raw = Raw {
            c: login(f.server.portals()[0], Some(IQN), &options(HOST_B, path)).unwrap(),
            itt: 0,
        };
        // The unit attention of a new nexus.
        let tur = Cdb::TestUnitReady.encode();
        raw.send(&tur[..6], 0, false);
        assert_eq!(raw.recv().bhs[pdu::OFF_B3], Status::CHECK_CONDITION);
        raw
    }

    /// A READ(16) of one block, or TEST UNIT READY with `read` false.
    fn send(&mut self, cdb: &[u8], attr: u8, read: bool) -> u32 {
        self.itt += 1;
        let mut p = Pdu::new(Opcode::ScsiCommand);
        p.set_flags(pdu::FLAG_FINAL | if read { 0x40 } else { 0 } | attr);
        p.set_lun(encode_lun(LUN));
        p.set_itt(self.itt);
        p.set_u32(pdu::OFF_20, if read { BLOCK as u32 } else { 0 });
        p.set_u32(pdu::OFF_24, self.c.cmd_sn);
        p.set_u32(pdu::OFF_28, self.c.exp_stat_sn);
        p.bhs[pdu::OFF_32..pdu::OFF_32 + cdb.len()].copy_from_slice(cdb);
        self.c.send(&p).unwrap();
        self.c.cmd_sn = self.c.cmd_sn.wrapping_add(1);
        self.itt
    }

    fn read(&mut self, attr: u8) -> u32 {
        let cdb = Cdb::Read16 {
            lba: 0,
            blocks: 1,
            fua: false,
            dpo: false,
        }
        .encode();
        self.send(&cdb, attr, true)
    }

    fn tmf(&mut self, function: u8, referenced: u32, ref_sn: u32) -> u32 {
        self.itt += 1;
        let mut p = Pdu::new(Opcode::TaskMgmtRequest);
        p.set_immediate(true);
        p.set_flags(pdu::FLAG_FINAL | function);
        p.set_lun(encode_lun(LUN));
        p.set_itt(self.itt);
        p.set_u32(pdu::OFF_20, referenced);
        p.set_u32(pdu::OFF_24, self.c.cmd_sn);
        p.set_u32(pdu::OFF_28, self.c.exp_stat_sn);
        p.set_u32(pdu::OFF_32, ref_sn);
        self.c.send(&p).unwrap();
        self.itt
    }

    fn recv(&mut self) -> Pdu {
        let p = self.c.recv(1 << 20).unwrap();
        self.c.track(&p);
        p
    }
}

const SIMPLE: u8 = 1;
const ORDERED: u8 = 2;
const ABORT_TASK: u8 = 1;
const LUN_RESET: u8 = 5;

/// An ORDERED read waits behind a running one; ABORT TASK removes it
/// before it starts: it gets no answer, the running one does, and then
/// the TMF answer (it waits for nothing else).
#[test]
fn a_queued_task_is_aborted_before_it_runs() {
    let f = start_slow();
    let mut raw = Raw::open(&f, 1);
    f.dev.slow(DELAY_MS);
    let running = raw.read(SIMPLE);
    let queued_sn = raw.c.cmd_sn;
    let queued = raw.read(ORDERED);
    // Let the first one start.
    wait_until("the first read to start", Duration::from_secs(2), || {
        f.dev.now.load(Ordering::SeqCst) == 1
    });
    let tmf = raw.tmf(ABORT_TASK, queued, queued_sn);
    let mut order = Vec::new();
    for _ in 0..2 {
        let p = raw.recv();
        order.push((p.opcode(), p.itt()));
        if p.opcode() == Some(Opcode::TaskMgmtResponse) {
            assert_eq!(p.bhs[pdu::OFF_B2], 0, "function complete");
        }
    }
    assert!(
        order.contains(&(Some(Opcode::DataIn), running))
            && order.contains(&(Some(Opcode::TaskMgmtResponse), tmf)),
        "{order:?}"
    );
    // The aborted read never ran: nothing more comes, and the session goes on.
    assert_eq!(f.dev.peak.load(Ordering::SeqCst), 1);
    f.dev.slow(0);
    let tur = Cdb::TestUnitReady.encode();
    let t = raw.send(&tur[..6], SIMPLE, false);
    let p = raw.recv();
    assert_eq!((p.opcode(), p.itt()), (Some(Opcode::ScsiResponse), t));
}

/// LUN RESET answers after the running reads of its connection have.
#[test]
fn lun_reset_answers_after_the_running_commands() {
    let f = start_slow();
    let mut raw = Raw::open(&f, 2);
    f.dev.slow(DELAY_MS);
    let reads: Vec<u32> = (0..4).map(|_| raw.read(SIMPLE)).collect();
    wait_until("the reads to start", Duration::from_secs(2), || {
        f.dev.now.load(Ordering::SeqCst) == reads.len()
    });
    let tmf = raw.tmf(LUN_RESET, pdu::RESERVED_TAG, 0);
    let mut answered = Vec::new();
    loop {
        let p = raw.recv();
        if p.opcode() == Some(Opcode::TaskMgmtResponse) {
            assert_eq!((p.itt(), p.bhs[pdu::OFF_B2]), (tmf, 0));
            break;
        }
        answered.push(p.itt());
    }
    answered.sort_unstable();
    assert_eq!(
        answered, reads,
        "every running read answered before the reset"
    );
    f.dev.slow(0);
    // The reset shows as a unit attention on the next command.
    let tur = Cdb::TestUnitReady.encode();
    raw.send(&tur[..6], SIMPLE, false);
    assert_eq!(raw.recv().bhs[pdu::OFF_B3], Status::CHECK_CONDITION);
}

/// Stopping the target with commands running and queued on a connection
/// closes it, lets the running ones finish and joins every thread.
#[test]
fn stop_joins_workers_with_commands_in_flight() {
    let f = start_slow();
    let s = connect(f.server.portals()[0], HOST_A, 1);
    clear_ua(&s);
    f.dev.slow(DELAY_MS);
    std::thread::scope(|scope| {
        for i in 0..THREADS {
            let s = &s;
            // Until the connection goes: then the session fails them.
            scope.spawn(move || {
                while s
                    .execute(
                        encode_lun(LUN),
                        &read_cdb(i),
                        DataPhase::In(&mut [0u8; BLOCK]),
                    )
                    .is_ok()
                {}
            });
        }
        wait_until("commands in flight", Duration::from_secs(2), || {
            f.dev.now.load(Ordering::SeqCst) >= THREADS / 2
        });
        assert_eq!(f.server.stats().panics, 0);
        let t = Instant::now();
        f.server.stop();
        // One device delay for the running commands, and some slack.
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "stop took {:?}",
            t.elapsed()
        );
        assert_eq!(
            f.dev.now.load(Ordering::SeqCst),
            0,
            "nothing runs after stop"
        );
    });
}

fn read_cdb(i: usize) -> [u8; 16] {
    Cdb::Read16 {
        lba: i as u64,
        blocks: 1,
        fua: false,
        dpo: false,
    }
    .encode()
}
