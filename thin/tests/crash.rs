//! Crash consistency of thin volumes, shown by fault injection at every write
//! index. Each operation runs once to count its writes; then, from the same
//! starting state each time, it is replayed with the devices stopping at
//! every write index: the write lost whole (`CrashAtWrite`), torn after its
//! first sector (`TearWriteSectors`), torn 100 bytes into its first sector
//! (`TearWrite`). After the crash nothing more reaches the disks (the
//! store's create/extend/remove fail too: the host is down); then, with no
//! faults ("reboot"):
//!
//! - the layers that matter open with `Volume::open` (read-only);
//! - `qemu-img check` exits 0 (clean) or 3 (leaked clusters only), and 0
//!   after `qemu-img check -r leaks`;
//! - reads through thin: data whose flush had completed before the crash
//!   reads back exactly, and everything else the operation did not write
//!   reads as before. Data of writes not yet flushed reads as the old or the
//!   new content: per 64 KiB cluster for a lost write (a cluster appears
//!   only when its L2 entry is written, one write per L2 table), per 512-byte
//!   sector for a write torn at a sector boundary, and per byte inside at
//!   most one sector for a write torn inside a sector;
//! - for plain volumes, the volume opened again without any repair (what
//!   ssvd does after a host crash) takes a new write that reads back, and
//!   changes nothing else.
//!
//! Operations: allocating writes to a volume that has data, the first
//! writes to an empty volume, writes that park until the LV grows, a
//! snapshot followed by a write to the new top, and the merge of a middle
//! snapshot layer (`delete_snapshot`), after which the volume must read
//! exactly as before, whatever the crash point. Each test checks every crash
//! point and then reports all failing ones together.

use san::{BlockDev, Fault, FaultControl, FaultDev};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use thin::chain::{delete_snapshot, snapshot, LayerOptions};
use thin::{
    CreateOptions, DirStore, Extender, GrowthPolicy, GrowthRequest, LvStore, OpenOptions,
    StoreExtender, Volume,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 64 * KIB;
/// Virtual size of every test volume.
const SIZE: u64 = 16 * MIB;
const SECTOR: usize = 512;

// ---------------------------------------------------------------- the store

/// A [`DirStore`] whose devices all go through one [`FaultControl`], so the
/// write index spans every LV. Once a crash fault fired, the store's own
/// changes (create, extend, remove) fail as well: the host is down, so an
/// error path's cleanup must not reach the disks either.
struct FaultStore {
    dir: DirStore,
    ctl: FaultControl,
}

impl FaultStore {
    fn new(dir: &Path, granularity: u64, ctl: &FaultControl) -> Arc<FaultStore> {
        Arc::new(FaultStore {
            dir: DirStore::new(dir, granularity),
            ctl: ctl.clone(),
        })
    }

    fn wrap(&self, dev: Arc<dyn BlockDev>) -> Arc<dyn BlockDev> {
        Arc::new(FaultDev::new(dev, self.ctl.clone()))
    }

    fn up(&self, what: &str) -> thin::Result<()> {
        if self.ctl.crashed() {
            return Err(thin::Error::Io(format!("{what}: the host crashed")));
        }
        Ok(())
    }
}

impl LvStore for FaultStore {
    fn open(&self, name: &str) -> thin::Result<Arc<dyn BlockDev>> {
        Ok(self.wrap(self.dir.open(name)?))
    }
    fn create(&self, name: &str, size: u64, tags: &[String]) -> thin::Result<Arc<dyn BlockDev>> {
        self.up("create")?;
        Ok(self.wrap(self.dir.create(name, size, tags)?))
    }
    fn extend(&self, name: &str, size: u64) -> thin::Result<Arc<dyn BlockDev>> {
        self.up("extend")?;
        Ok(self.wrap(self.dir.extend(name, size)?))
    }
    fn remove(&self, name: &str) -> thin::Result<()> {
        self.up("remove")?;
        self.dir.remove(name)
    }
    fn exists(&self, name: &str) -> thin::Result<bool> {
        self.dir.exists(name)
    }
}

/// A [`StoreExtender`] that counts its requests and the background
/// (threshold) ones: the crash tests want growth only where a write parks,
/// so that every replay takes the same path.
struct CountingExtender {
    inner: StoreExtender,
    urgent: AtomicU64,
    background: AtomicU64,
}

impl CountingExtender {
    fn new(store: Arc<dyn LvStore>) -> Arc<CountingExtender> {
        Arc::new(CountingExtender {
            inner: StoreExtender(store),
            urgent: AtomicU64::new(0),
            background: AtomicU64::new(0),
        })
    }
}

impl Extender for CountingExtender {
    fn extend(&self, req: &GrowthRequest) -> Result<Arc<dyn BlockDev>, String> {
        let n = if req.urgent {
            &self.urgent
        } else {
            &self.background
        };
        n.fetch_add(1, Ordering::SeqCst);
        self.inner.extend(req)
    }
}

// ---------------------------------------------------------------- qemu-img

mod common;
use common::{qemu_compare, qemu_img, skip_unless_qemu};

/// Checks with real qemu-img: clean or leaks only, and (with `repair`)
/// clean once the leaks are repaired. Returns true if there were leaks.
fn qemu_check(path: &Path, what: &str, repair: bool) -> bool {
    let p = path.to_str().unwrap();
    let (rc, text) = qemu_img(&["check", "-f", "qcow2", p]);
    assert!(
        rc == 0 || rc == 3,
        "{what}: qemu-img check {p} exited {rc} (1 = check failed, 2 = corruption):\n{text}"
    );
    if rc == 3 && repair {
        let (rc, text) = qemu_img(&["check", "-r", "leaks", "-f", "qcow2", p]);
        assert_eq!(rc, 0, "{what}: qemu-img check -r leaks {p}:\n{text}");
        let (rc, text) = qemu_img(&["check", "-f", "qcow2", p]);
        assert_eq!(rc, 0, "{what}: qemu-img check after repair {p}:\n{text}");
    }
    rc == 3
}

// ---------------------------------------------------------------- data

/// Deterministic bytes, never zero (so they differ from unwritten space).
fn pattern(seed: u64, len: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&(x | 0x0101_0101_0101_0101).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// One guest write of an operation: where, how much, and which of the
/// operation's flushes (marks) makes it durable.
#[derive(Clone, Copy)]
struct W {
    off: u64,
    len: u64,
    group: usize,
}

impl W {
    const fn new(off: u64, len: u64, group: usize) -> W {
        W { off, len, group }
    }
    fn data(&self) -> Vec<u8> {
        pattern(self.off ^ (self.len << 40), self.len)
    }
    fn apply(&self, model: &mut [u8]) {
        model[self.off as usize..(self.off + self.len) as usize].copy_from_slice(&self.data());
    }
}

fn read_all(store: &dyn LvStore, top: &str) -> thin::Result<(Vec<u8>, Vec<String>)> {
    let v = Volume::open(store, top, &OpenOptions::read_only())?;
    let mut buf = vec![0u8; v.virtual_size() as usize];
    v.read(&mut buf, 0)?;
    Ok((buf, v.layers().to_vec()))
}

/// `got` must read as `lo` (old data plus what was durable) or `hi` (all
/// writes done), at the granularity the fault allows (see the file's doc).
fn verify(what: &str, got: &[u8], lo: &[u8], hi: &[u8], fault: Fault) {
    assert_eq!(got.len(), hi.len(), "{what}: size");
    let cs = CLUSTER as usize;
    let mut torn_sectors = Vec::new();
    for (c, ((g, l), h)) in got
        .chunks(cs)
        .zip(lo.chunks(cs))
        .zip(hi.chunks(cs))
        .enumerate()
    {
        if g == l || g == h {
            continue;
        }
        let at = c * cs;
        assert!(
            !matches!(fault, Fault::CrashAtWrite(_) | Fault::None),
            "{what}: cluster at {at} is neither the old nor the new data \
             (first difference from new at byte {})",
            at + first_diff(g, h)
        );
        for (s, ((gs, ls), hs)) in g
            .chunks(SECTOR)
            .zip(l.chunks(SECTOR))
            .zip(h.chunks(SECTOR))
            .enumerate()
        {
            if gs == ls || gs == hs {
                continue;
            }
            let at = at + s * SECTOR;
            let bytewise = gs
                .iter()
                .zip(ls)
                .zip(hs)
                .all(|((g, l), h)| g == l || g == h);
            assert!(
                matches!(fault, Fault::TearWrite { .. }) && bytewise,
                "{what}: sector at {at} is neither the old nor the new data \
                 (first difference from new at byte {})",
                at + first_diff(gs, hs)
            );
            torn_sectors.push(at);
        }
    }
    assert!(
        torn_sectors.len() <= 1,
        "{what}: several sectors torn inside: {torn_sectors:?}"
    );
}

fn first_diff(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0)
}

// ---------------------------------------------------------------- the harness

/// What a check is told about the run it checks.
struct Case<'a> {
    op: &'a str,
    /// `Fault::None` for the counting run.
    fault: Fault,
    /// Index of the crashing write; the write count for the counting run.
    index: u64,
    /// The write counter after each flush of the counting run.
    marks: &'a [u64],
}

impl Case<'_> {
    /// Every write of the flush `mark` reached the disk before the crash.
    fn durable(&self, mark: usize) -> bool {
        self.marks[mark] <= self.index
    }
    fn what(&self) -> String {
        format!("{} at write #{} ({:?})", self.op, self.index, self.fault)
    }
}

/// The operation, given the faulty store and its control; pushes the write
/// counter after each flush it makes durable (its "marks").
type Op<'a> = dyn Fn(&Arc<FaultStore>, &mut Vec<u64>) -> thin::Result<()> + 'a;
/// The checks after a reboot, given the directory of the LVs.
type Check<'a> = dyn Fn(&Path, &Case) + 'a;

struct Tally {
    writes: u64,
    points: u64,
    leaky: u64,
}

fn copy_of(prepared: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(prepared).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

fn faults(i: u64) -> [Fault; 3] {
    [
        Fault::CrashAtWrite(i),
        Fault::TearWriteSectors {
            index: i,
            keep_sectors: 1,
        },
        Fault::TearWrite {
            index: i,
            keep_bytes: 100,
        },
    ]
}

/// `atomic_last`: the operation's last write is a one-sector header rewrite
/// that relies on the device writing a sector whole (as disks and SCSI LUNs
/// do for one logical block; `thin/FORMAT.md`), so it is not torn inside
/// its sector. It is still lost whole, and torn at sector granularity.
fn every_write_index(
    name: &str,
    granularity: u64,
    prepared: &Path,
    op: &Op<'_>,
    check: &Check<'_>,
    atomic_last: bool,
) -> Tally {
    let started = Instant::now();
    // The counting run, which must succeed; then its result is checked as a
    // "crash" after the last write.
    let dir = copy_of(prepared);
    let ctl = FaultControl::new();
    let mut marks = Vec::new();
    op(&FaultStore::new(dir.path(), granularity, &ctl), &mut marks)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let writes = ctl.writes();
    assert!(writes >= 3, "{name}: only {writes} writes");
    check(
        dir.path(),
        &Case {
            op: name,
            fault: Fault::None,
            index: writes,
            marks: &marks,
        },
    );
    let mut tally = Tally {
        writes,
        points: 0,
        leaky: 0,
    };
    let mut failures: Vec<String> = Vec::new();
    for i in 0..writes {
        for fault in faults(i) {
            if atomic_last && i + 1 == writes && matches!(fault, Fault::TearWrite { .. }) {
                continue;
            }
            let case = Case {
                op: name,
                fault,
                index: i,
                marks: &marks,
            };
            // Every crash point is checked, and all failures reported at the end.
            let before = LEAKY.get();
            match quietly(|| replay(granularity, prepared, op, check, &case)) {
                Ok(()) => tally.leaky += LEAKY.get() - before,
                Err(msg) => failures.push(msg),
            }
            tally.points += 1;
        }
    }
    eprintln!(
        "{name}: {} writes, {} crash points ({} left leaked clusters, {} failed), {:.1} s",
        tally.writes,
        tally.points,
        tally.leaky,
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        let shown: Vec<&str> = failures.iter().take(6).map(String::as_str).collect();
        panic!(
            "{name}: {} of {} crash points failed; the first ones:\n\n{}",
            failures.len(),
            tally.points,
            shown.join("\n\n")
        );
    }
    tally
}

/// One crash point: a fresh copy of the starting state, the operation with
/// the fault set, a reboot, the checks.
fn replay(granularity: u64, prepared: &Path, op: &Op<'_>, check: &Check<'_>, case: &Case) {
    let dir = copy_of(prepared);
    let ctl = FaultControl::new();
    ctl.set(case.fault);
    let mut m = Vec::new();
    let result = op(&FaultStore::new(dir.path(), granularity, &ctl), &mut m);
    let what = case.what();
    assert!(ctl.crashed(), "{what}: the fault never fired");
    assert!(
        result.is_err(),
        "{what}: the operation reported success after a crash"
    );
    ctl.set(Fault::None); // reboot; the checks use plain devices anyway
    check(dir.path(), case);
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into its message (not printed: the harness
/// reports all of them together).
fn quietly(f: impl FnOnce()) -> Result<(), String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                prev(info)
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

thread_local! {
    /// Checks that found (and repaired) leaks, for the report.
    static LEAKY: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// qemu-img check of one LV, repairing leaks.
fn check_image(dir: &Path, lv: &str, what: &str) {
    if qemu_check(&dir.join(lv), &format!("{what}: {lv}"), true) {
        LEAKY.set(LEAKY.get() + 1);
    }
}

/// What ssvd does after a host crash: open the volume again (no repair)
/// and go on writing. The new write reads back, and nothing else changes.
fn write_after_reboot(store: &dyn LvStore, what: &str, opts: &OpenOptions, had: Vec<u8>, extra: W) {
    {
        let v = Volume::open(store, "vol", opts)
            .unwrap_or_else(|e| panic!("{what}: open writable after the crash: {e}"));
        v.write(&extra.data(), extra.off)
            .unwrap_or_else(|e| panic!("{what}: write after the crash: {e}"));
        v.flush()
            .unwrap_or_else(|e| panic!("{what}: flush after the crash: {e}"));
    }
    let (after, _) = read_all(store, "vol").unwrap();
    let mut expect = had;
    extra.apply(&mut expect);
    if after != expect {
        let at = first_diff(&after, &expect);
        panic!(
            "{what}: after the crash, a new write of {} bytes at {} and what the volume held \
             do not read back: first difference at byte {at} ({})",
            extra.len,
            extra.off,
            if (extra.off..extra.off + extra.len).contains(&(at as u64)) {
                "inside the new write"
            } else {
                "outside the new write"
            }
        );
    }
}

fn plain(dir: &Path, granularity: u64) -> Arc<dyn LvStore> {
    Arc::new(DirStore::new(dir, granularity))
}

fn create(store: &dyn LvStore, name: &str, initial_lv_size: u64) {
    thin::create(
        store,
        name,
        &CreateOptions {
            size: Some(SIZE),
            cluster_size: CLUSTER,
            initial_lv_size,
            ..Default::default()
        },
    )
    .unwrap();
}

fn write_all(v: &Volume, writes: &[W]) {
    for w in writes {
        v.write(&w.data(), w.off).unwrap();
    }
    v.flush().unwrap();
}

/// Runs the writes group by group, flushing after each and pushing a mark.
fn write_groups(
    v: &Volume,
    ctl: &FaultControl,
    writes: &[W],
    marks: &mut Vec<u64>,
) -> thin::Result<()> {
    let groups = writes.iter().map(|w| w.group).max().map_or(0, |g| g + 1);
    for g in 0..groups {
        for w in writes.iter().filter(|w| w.group == g) {
            v.write(&w.data(), w.off)?;
        }
        v.flush()?;
        marks.push(ctl.writes());
    }
    Ok(())
}

/// The old data with the durable groups applied, and with all of them.
fn lo_hi(old: &[u8], writes: &[W], case: &Case) -> (Vec<u8>, Vec<u8>) {
    let (mut lo, mut hi) = (old.to_vec(), old.to_vec());
    for w in writes {
        if case.durable(w.group) {
            w.apply(&mut lo);
        }
        w.apply(&mut hi);
    }
    (lo, hi)
}

// ---------------------------------------------------------------- 1. allocating writes

/// Written and flushed before the operation.
const W0: W = W::new(100 * KIB, 40 * KIB, 0);

/// Fresh clusters, partial clusters, a write across two clusters whose L2
/// entries (63, 64) lie in different sectors of the L2 table, one whose L2
/// entry (12) straddles byte 100 of the table, a rewrite inside W0, and
/// three whole clusters.
const ALLOC_WRITES: [W; 7] = [
    W::new(MIB + 4 * KIB, 8 * KIB, 0),
    W::new(63 * CLUSTER + 32 * KIB, 64 * KIB, 0),
    W::new(12 * CLUSTER + 100 * 512, 3 * 512, 0),
    W::new(8 * MIB + 512, 1536, 1),
    W::new(12 * MIB - 16 * KIB, 48 * KIB, 1),
    W::new(100 * KIB + 512, 1024, 1),
    // Whole clusters, zeroed before they are mapped (files zero cheaply).
    W::new(4 * MIB, 3 * CLUSTER, 1),
];

#[test]
fn allocating_writes() {
    skip_unless_qemu!();
    let prepared = tempfile::tempdir().unwrap();
    {
        let store = plain(prepared.path(), MIB);
        create(&*store, "vol", 4 * MIB);
        write_all(
            &Volume::open(&*store, "vol", &OpenOptions::default()).unwrap(),
            &[W0],
        );
    }
    let mut old = vec![0u8; SIZE as usize];
    W0.apply(&mut old);
    let op = |store: &Arc<FaultStore>, marks: &mut Vec<u64>| -> thin::Result<()> {
        let v = Volume::open(&**store, "vol", &OpenOptions::default())?;
        write_groups(&v, &store.ctl, &ALLOC_WRITES, marks)
    };
    let check = |dir: &Path, case: &Case| {
        let what = case.what();
        let store = plain(dir, MIB);
        let (got, _) = read_all(&*store, "vol").unwrap_or_else(|e| panic!("{what}: open: {e}"));
        let (lo, hi) = lo_hi(&old, &ALLOC_WRITES, case);
        verify(&what, &got, &lo, &hi, case.fault);
        qemu_check(&dir.join("vol"), &what, false);
        let extra = W::new(14 * MIB + 512, 70 * KIB, 0);
        write_after_reboot(&*store, &what, &OpenOptions::default(), got, extra);
        check_image(dir, "vol", &what);
    };
    let t = every_write_index(
        "allocating writes",
        MIB,
        prepared.path(),
        &op,
        &check,
        false,
    );
    assert!(t.points >= 30);
}

/// The first writes to a new, empty volume (no L2 table yet): what every new
/// volume and every new snapshot top goes through. imago 0.2.6 alone fails
/// this: `ensure_l2` writes the new L1 entry before the refblock that
/// counts the new L2 table, so a crash in between leaves the L1 table
/// pointing at a free cluster, which the next allocation hands out again
/// (data written after the reboot reads back wrong). It passes because
/// ssv makes every L2 table at create (thin/FORMAT.md).
const FIRST_WRITES: [W; 3] = [
    W::new(512, 8 * KIB, 0),
    W::new(3 * MIB + 60 * KIB, 16 * KIB, 0),
    W::new(7 * MIB, 64 * KIB, 1),
];

#[test]
fn first_writes_to_an_empty_volume() {
    skip_unless_qemu!();
    let prepared = tempfile::tempdir().unwrap();
    create(&*plain(prepared.path(), MIB), "vol", 4 * MIB);
    let old = vec![0u8; SIZE as usize];
    let op = |store: &Arc<FaultStore>, marks: &mut Vec<u64>| -> thin::Result<()> {
        let v = Volume::open(&**store, "vol", &OpenOptions::default())?;
        write_groups(&v, &store.ctl, &FIRST_WRITES, marks)
    };
    let check = |dir: &Path, case: &Case| {
        let what = case.what();
        let store = plain(dir, MIB);
        let (got, _) = read_all(&*store, "vol").unwrap_or_else(|e| panic!("{what}: open: {e}"));
        let (lo, hi) = lo_hi(&old, &FIRST_WRITES, case);
        verify(&what, &got, &lo, &hi, case.fault);
        // Writing on without a repair first, then qemu's opinion of it all.
        let extra = W::new(10 * MIB + 512, 8 * KIB, 0);
        write_after_reboot(&*store, &what, &OpenOptions::default(), got, extra);
        check_image(dir, "vol", &what);
    };
    let t = every_write_index(
        "first writes to an empty volume",
        MIB,
        prepared.path(),
        &op,
        &check,
        false,
    );
    assert!(t.points >= 15);
}

/// Growing the virtual size and writing into the grown range: the grow
/// makes the new range's L2 tables (4 KiB clusters: one per 2 MiB) and
/// flushes; the write goes into one of them. At every crash point the
/// volume has the old size and reads zeroes, or the new size with each
/// sector of the write old or new (new once flushed), and qemu agrees.
#[test]
fn virtual_grow_then_write_into_the_grown_range() {
    skip_unless_qemu!();
    const GROWN: u64 = SIZE + 8 * MIB;
    const WRITE: W = W::new(SIZE + 3 * MIB + 512, 8 * KIB, 0);
    let prepared = tempfile::tempdir().unwrap();
    thin::create(
        &*plain(prepared.path(), MIB),
        "vol",
        &CreateOptions {
            size: Some(SIZE),
            cluster_size: 4 * KIB,
            initial_lv_size: 4 * MIB,
            ..Default::default()
        },
    )
    .unwrap();
    let op = |store: &Arc<FaultStore>, marks: &mut Vec<u64>| -> thin::Result<()> {
        let v = Volume::open(&**store, "vol", &OpenOptions::default())?;
        v.grow(GROWN)?;
        marks.push(store.ctl.writes());
        write_groups(&v, &store.ctl, &[WRITE], marks)
    };
    let check = |dir: &Path, case: &Case| {
        let what = case.what();
        let store = plain(dir, MIB);
        let (got, _) = read_all(&*store, "vol").unwrap_or_else(|e| panic!("{what}: open: {e}"));
        let grown = got.len() as u64 == GROWN;
        assert!(
            grown || got.len() as u64 == SIZE,
            "{what}: size {}",
            got.len()
        );
        assert!(grown || !case.durable(0), "{what}: a flushed grow was lost");
        let data = WRITE.data();
        let range = WRITE.off as usize..(WRITE.off + WRITE.len) as usize;
        for (i, s) in got.chunks(SECTOR).enumerate() {
            let at = i * SECTOR;
            if range.contains(&at) {
                let new = &data[at - range.start..at - range.start + SECTOR];
                assert!(
                    s == new || (!case.durable(1) && s.iter().all(|&b| b == 0)),
                    "{what}: sector at {at} is neither old nor new"
                );
            } else {
                assert!(s.iter().all(|&b| b == 0), "{what}: sector at {at} changed");
            }
        }
        let extra = W::new(1536, 4 * KIB, 0);
        write_after_reboot(&*store, &what, &OpenOptions::default(), got, extra);
        check_image(dir, "vol", &what);
    };
    let t = every_write_index(
        "virtual grow, then a write into the grown range",
        MIB,
        prepared.path(),
        &op,
        &check,
        false,
    );
    assert!(t.points >= 15);
}

// ---------------------------------------------------------------- 2. growth

/// Each write needs space past the LV's end when it comes (the LV starts at
/// 1 MiB, the empty image plus W0 take 448 KiB); lengths keep the highest
/// allocated offset off whole MiBs, so that no threshold crossing starts a
/// background extension and every replay grows the LV the same way.
const GROW_WRITES: [W; 3] = [
    W::new(5 * MIB + 512, 700 * KIB, 0),
    W::new(9 * MIB + 1536, 900 * KIB, 1),
    W::new(12 * MIB + 4 * KIB, 1000 * KIB, 1),
];

fn growth_options(ext: Arc<dyn Extender>) -> OpenOptions {
    OpenOptions {
        policy: GrowthPolicy {
            // Only parked writes extend (a threshold crossing needs the
            // allocated end strictly inside the last 1% of the LV).
            threshold_percent: 100,
            notice_lead_percent: 0,
            chunk: MIB,
            cap: None,
        },
        ..OpenOptions::default().with_extender(ext)
    }
}

#[test]
fn writes_that_park_until_the_lv_grows() {
    skip_unless_qemu!();
    let prepared = tempfile::tempdir().unwrap();
    {
        let store = plain(prepared.path(), MIB);
        create(&*store, "vol", 512 * KIB);
        write_all(
            &Volume::open(&*store, "vol", &OpenOptions::default()).unwrap(),
            &[W0],
        );
        assert_eq!(
            std::fs::metadata(prepared.path().join("vol"))
                .unwrap()
                .len(),
            MIB
        );
    }
    let mut old = vec![0u8; SIZE as usize];
    W0.apply(&mut old);
    let stats = Mutex::new(None);
    let op = |store: &Arc<FaultStore>, marks: &mut Vec<u64>| -> thin::Result<()> {
        let ext = CountingExtender::new(store.clone());
        let r = {
            let v = Volume::open(&**store, "vol", &growth_options(ext.clone()))?;
            let r = write_groups(&v, &store.ctl, &GROW_WRITES, marks);
            if r.is_ok() {
                *stats.lock().unwrap() = Some((v.growth(), v.lv_size()));
            }
            r
        };
        assert_eq!(
            ext.background.load(Ordering::SeqCst),
            0,
            "a background extension makes replays differ"
        );
        r
    };
    let check = |dir: &Path, case: &Case| {
        let what = case.what();
        let store = plain(dir, MIB);
        let (got, _) = read_all(&*store, "vol").unwrap_or_else(|e| panic!("{what}: open: {e}"));
        let (lo, hi) = lo_hi(&old, &GROW_WRITES, case);
        verify(&what, &got, &lo, &hi, case.fault);
        qemu_check(&dir.join("vol"), &what, false);
        // The volume grows and takes writes again.
        let extra = W::new(14 * MIB, 1536 * KIB, 0);
        let opts = growth_options(CountingExtender::new(store.clone()));
        write_after_reboot(&*store, &what, &opts, got, extra);
        check_image(dir, "vol", &what);
    };
    let t = every_write_index(
        "writes that park for growth",
        MIB,
        prepared.path(),
        &op,
        &check,
        false,
    );
    let (g, lv) = stats.lock().unwrap().take().unwrap();
    eprintln!(
        "growth in the counting run: {} extensions, {} parked writes, LV {} MiB",
        g.extensions,
        g.parked_writes,
        lv / MIB
    );
    assert!(g.extensions >= 3 && g.parked_writes >= 3, "{g:?}");
    assert_eq!(g.failed_extensions, 0);
    assert!(lv >= 4 * MIB);
    assert!(t.points >= 30);
}

// ---------------------------------------------------------------- 3. snapshot

const BASE_WRITES: [W; 3] = [
    W::new(0, 128 * KIB, 0),
    W::new(3 * MIB + 4 * KIB, 64 * KIB, 0),
    W::new(10 * MIB, 4 * KIB, 0),
];

/// To the new top: a partial rewrite of a base cluster (copied up from the
/// backing), one across two base clusters, and a fresh cluster.
const TOP_WRITES: [W; 3] = [
    W::new(64 * KIB + 512, 1024, 1),
    W::new(3 * MIB + 60 * KIB, 16 * KIB, 1),
    W::new(13 * MIB, 64 * KIB, 1),
];

/// The first write to the new top allocates its L2 table: see
/// [`first_writes_to_an_empty_volume`] for why this fails with imago 0.2.6.
#[test]
fn snapshot_then_write_to_the_new_top() {
    skip_unless_qemu!();
    let prepared = tempfile::tempdir().unwrap();
    {
        let store = plain(prepared.path(), MIB);
        create(&*store, "base", MIB);
        write_all(
            &Volume::open(&*store, "base", &OpenOptions::default()).unwrap(),
            &BASE_WRITES,
        );
    }
    let mut base = vec![0u8; SIZE as usize];
    BASE_WRITES.iter().for_each(|w| w.apply(&mut base));
    let lo = LayerOptions {
        initial_lv_size: MIB,
        ..Default::default()
    };
    let op = |store: &Arc<FaultStore>, marks: &mut Vec<u64>| -> thin::Result<()> {
        snapshot(&**store, "base", "top", &lo)?;
        marks.push(store.ctl.writes());
        let v = Volume::open(&**store, "top", &OpenOptions::default())?;
        for w in &TOP_WRITES {
            v.write(&w.data(), w.off)?;
        }
        v.flush()?;
        marks.push(store.ctl.writes());
        Ok(())
    };
    let check = |dir: &Path, case: &Case| {
        let what = case.what();
        let store = plain(dir, MIB);
        // The old top keeps its data, whatever happened above it.
        let (got, layers) =
            read_all(&*store, "base").unwrap_or_else(|e| panic!("{what}: open base: {e}"));
        assert_eq!(layers, ["base"]);
        assert!(got == base, "{what}: base changed");
        check_image(dir, "base", &what);
        // The new top, once created, reads as the base plus the writes.
        if !store.exists("top").unwrap() {
            assert!(!case.durable(0), "{what}: top vanished");
            return;
        }
        match read_all(&*store, "top") {
            Ok((got, layers)) => {
                assert_eq!(layers, ["top", "base"], "{what}");
                let (lo, hi) = lo_hi(&base, &TOP_WRITES, case);
                verify(&what, &got, &lo, &hi, case.fault);
                check_image(dir, "top", &what);
            }
            Err(e) => {
                assert!(
                    !case.durable(0),
                    "{what}: the snapshot was complete, yet its top does not open: {e}"
                );
                assert!(
                    matches!(e.root(), thin::Error::NotQcow2 | thin::Error::Corrupt(_)),
                    "{what}: a half-made top: {e}"
                );
            }
        }
    };
    let t = every_write_index("snapshot + write", MIB, prepared.path(), &op, &check, false);
    assert!(t.points >= 20);
}

// ---------------------------------------------------------------- 4. merge

/// The header rewrite that drops the merged layer (`layer::set_backing`) is
/// one sector write, the operation's last: it is lost or written whole, never
/// torn inside the sector (see `every_write_index`).
#[test]
fn delete_snapshot_merges_without_changing_what_the_volume_reads() {
    skip_unless_qemu!();
    let prepared = tempfile::tempdir().unwrap();
    let lo = |size| LayerOptions {
        initial_lv_size: size,
        ..Default::default()
    };
    let e0 = [
        W::new(0, 256 * KIB, 0),
        W::new(2 * MIB + 4 * KIB, 64 * KIB, 0),
        W::new(5 * MIB, 192 * KIB, 0),
        W::new(9 * MIB, 64 * KIB, 0),
    ];
    // s1: a partial rewrite of a base cluster, a whole-cluster rewrite, zeroes
    // hiding a base cluster, and fresh data.
    let e1 = [
        W::new(128 * KIB + 512, 4 * KIB, 0),
        W::new(5 * MIB + 64 * KIB, 64 * KIB, 0),
        W::new(12 * MIB, 100 * KIB, 0),
    ];
    let zeroed = (9 * MIB, 64 * KIB);
    // top: over s1's data, over base data, and fresh.
    let e2 = [
        W::new(12 * MIB + 4 * KIB, 8 * KIB, 0),
        W::new(2 * MIB, 64 * KIB, 0),
        W::new(14 * MIB, 64 * KIB, 0),
    ];
    let mut expect = vec![0u8; SIZE as usize];
    {
        let store = plain(prepared.path(), MIB);
        create(&*store, "base", MIB);
        let rw = OpenOptions::default();
        write_all(&Volume::open(&*store, "base", &rw).unwrap(), &e0);
        snapshot(&*store, "base", "s1", &lo(MIB)).unwrap();
        {
            let v = Volume::open(&*store, "s1", &rw).unwrap();
            write_all(&v, &e1);
            v.write_zeroes(zeroed.0, zeroed.1).unwrap();
            v.flush().unwrap();
        }
        // Big enough that the merge never crosses the growth threshold.
        snapshot(&*store, "s1", "top", &lo(4 * MIB)).unwrap();
        write_all(&Volume::open(&*store, "top", &rw).unwrap(), &e2);
        e0.iter().chain(&e1).for_each(|w| w.apply(&mut expect));
        expect[zeroed.0 as usize..(zeroed.0 + zeroed.1) as usize].fill(0);
        e2.iter().for_each(|w| w.apply(&mut expect));
        let (got, layers) = read_all(&*store, "top").unwrap();
        assert_eq!(layers, ["top", "s1", "base"]);
        assert!(got == expect);
    }
    let op = |store: &Arc<FaultStore>, _: &mut Vec<u64>| -> thin::Result<()> {
        let ext = CountingExtender::new(store.clone());
        delete_snapshot(&**store, "top", "s1", Some(ext), 32)
    };
    let check = |dir: &Path, case: &Case| {
        let what = case.what();
        let store = plain(dir, MIB);
        let (got, layers) =
            read_all(&*store, "top").unwrap_or_else(|e| panic!("{what}: open top: {e}"));
        assert!(
            layers == ["top", "s1", "base"] || layers == ["top", "base"],
            "{what}: {layers:?}"
        );
        if case.fault == Fault::None {
            // The merged volume, by qemu's reading too (it follows the new backing name).
            assert_eq!(layers, ["top", "base"]);
            assert!(!store.exists("s1").unwrap());
            qemu_compare(dir, "top", &expect);
        }
        assert!(
            got == expect,
            "{what}: the volume reads differently ({layers:?})"
        );
        check_image(dir, "top", &what);
        // Recovery: merge again (or drop the orphan); the data stays.
        if layers.len() == 3 {
            let ext: Arc<dyn Extender> = Arc::new(StoreExtender(store.clone()));
            delete_snapshot(&*store, "top", "s1", Some(ext), 32)
                .unwrap_or_else(|e| panic!("{what}: merging again: {e}"));
        } else if store.exists("s1").unwrap() {
            store.remove("s1").unwrap();
        }
        let (got, layers) = read_all(&*store, "top").unwrap();
        assert_eq!(layers, ["top", "base"], "{what}: after recovery");
        assert!(
            got == expect,
            "{what}: after recovery the volume reads differently"
        );
    };
    let t = every_write_index(
        "delete_snapshot (merge)",
        MIB,
        prepared.path(),
        &op,
        &check,
        true,
    );
    assert!(t.points >= 15);
}
