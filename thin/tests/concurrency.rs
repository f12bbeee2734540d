//! One volume shared by many I/O queues: eight writer threads and two
//! reader threads use one `Arc<Volume>` at once while its LV starts small
//! and grows many times under them (writes park for extensions); at the end
//! every byte matches a model, by thin's reading and by qemu's. And when the
//! extender fails, a write past the LV's end fails with `NoSpace`, what was
//! written stays, and the same volume handle works again once the extender
//! does.

use san::BlockDev;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use thin::{
    CreateOptions, DirStore, Extender, GrowthPolicy, GrowthRequest, LvStore, OpenOptions,
    StoreExtender, Volume,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 64 * KIB;

mod common;

/// `qemu-img check` must find nothing; `qemu-img compare` against the model
/// as a raw file must find no difference.
fn qemu_agrees(dir: &Path, lv: &str, model: &[u8]) {
    common::qemu_clean(dir, lv);
    common::qemu_compare(dir, lv, model);
}

/// xorshift64: the tests' only randomness, seeded per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Bytes that are never zero, different for every seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&(r.next() | 0x0101_0101_0101_0101).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Extends through the store after a pause (an extension takes time: ssvd
/// asks the pool's lease holder), counting what it was asked.
struct SlowExtender {
    inner: StoreExtender,
    delay: Duration,
    urgent: AtomicU64,
    background: AtomicU64,
}

impl Extender for SlowExtender {
    fn extend(&self, req: &GrowthRequest) -> Result<Arc<dyn BlockDev>, String> {
        if req.urgent {
            self.urgent.fetch_add(1, Ordering::SeqCst);
        } else {
            self.background.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(self.delay);
        self.inner.extend(req)
    }
}

const WRITERS: u64 = 8;
const READERS: u64 = 2;
/// Each writer owns one region of this size.
const REGION: u64 = 8 * MIB;
const WRITES_PER_THREAD: u64 = 96;

/// Where writer `t` writes its `i`th write, and how much: the first half
/// goes to fresh space in order (allocating), the rest anywhere in the
/// region (rewrites of its own earlier data as often as not), at sector
/// offsets that are mostly not cluster-aligned, 512 B..256 KiB long.
fn plan(t: u64, i: u64, rng: &mut Rng, cursor: &mut u64) -> (u64, usize) {
    let len = match rng.below(4) {
        0 => 512 * (1 + rng.below(8)),
        1 => 512 * (1 + rng.below(128)),
        2 => CLUSTER * (1 + rng.below(3)),
        _ => 256 * KIB,
    };
    let region_start = t * REGION;
    let off = if i < WRITES_PER_THREAD / 2 && *cursor + len + 4096 <= REGION {
        let off = *cursor + 512 * rng.below(8);
        *cursor = off + len;
        off
    } else {
        512 * rng.below((REGION - len) / 512)
    };
    (region_start + off, len as usize)
}

#[test]
fn eight_writers_and_two_readers_share_one_volume_while_it_grows() {
    common::skip_unless_qemu!();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LvStore> = Arc::new(DirStore::new(dir.path(), MIB));
    let size = WRITERS * REGION;
    thin::create(
        &*store,
        "vol",
        &CreateOptions {
            size: Some(size),
            cluster_size: CLUSTER,
            initial_lv_size: MIB,
            ..Default::default()
        },
    )
    .unwrap();
    let ext = Arc::new(SlowExtender {
        inner: StoreExtender(store.clone()),
        delay: Duration::from_millis(20),
        urgent: AtomicU64::new(0),
        background: AtomicU64::new(0),
    });
    let opts = OpenOptions {
        policy: GrowthPolicy {
            threshold_percent: 90,
            notice_lead_percent: 0,
            chunk: MIB,
            cap: None,
        },
        ..OpenOptions::default().with_extender(ext.clone())
    };
    let v = Arc::new(Volume::open(&*store, "vol", &opts).unwrap());
    assert_eq!(v.lv_size(), MIB);

    // One model per region: a writer holds its lock across its write, a
    // reader across its read, so a reader sees only completed writes.
    let models: Arc<Vec<RwLock<Vec<u8>>>> = Arc::new(
        (0..WRITERS)
            .map(|_| RwLock::new(vec![0u8; REGION as usize]))
            .collect(),
    );
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers_left = Arc::new(AtomicU64::new(WRITERS));
    let reads_checked = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..WRITERS {
        let (v, models, errors, left, written) = (
            v.clone(),
            models.clone(),
            errors.clone(),
            writers_left.clone(),
            written.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng::new(1000 + t);
            let mut cursor = 0;
            for i in 0..WRITES_PER_THREAD {
                let (off, len) = plan(t, i, &mut rng, &mut cursor);
                let data = pattern((t << 32) | i, len);
                let rel = (off - t * REGION) as usize;
                {
                    let mut m = models[t as usize].write().unwrap();
                    if let Err(e) = v.write(&data, off) {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("writer {t}: write {len} at {off}: {e}"));
                        break;
                    }
                    m[rel..rel + len].copy_from_slice(&data);
                }
                written.fetch_add(len as u64, Ordering::SeqCst);
                // Read back what was just written, unaligned by a sector on either side.
                let (a, b) = (
                    rel.saturating_sub(512),
                    (rel + len + 512).min(REGION as usize),
                );
                let mut back = vec![0u8; b - a];
                let m = models[t as usize].read().unwrap();
                match v.read(&mut back, t * REGION + a as u64) {
                    Ok(()) if back == m[a..b] => {}
                    Ok(()) => errors
                        .lock()
                        .unwrap()
                        .push(format!("writer {t}: {len} bytes at {off} read back wrong")),
                    Err(e) => errors
                        .lock()
                        .unwrap()
                        .push(format!("writer {t}: read at {off}: {e}")),
                }
                drop(m);
                if i % 16 == 15 {
                    if let Err(e) = v.flush() {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("writer {t}: flush: {e}"));
                    }
                }
            }
            left.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    for r in 0..READERS {
        let (v, models, errors, left, checked) = (
            v.clone(),
            models.clone(),
            errors.clone(),
            writers_left.clone(),
            reads_checked.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng::new(77 + r);
            while left.load(Ordering::SeqCst) > 0 {
                let t = rng.below(WRITERS);
                let len = 512 * (1 + rng.below(512)) as usize;
                let rel = 512 * rng.below((REGION - len as u64) / 512) as usize;
                let mut buf = vec![0u8; len];
                let m = models[t as usize].read().unwrap();
                match v.read(&mut buf, t * REGION + rel as u64) {
                    Ok(()) if buf == m[rel..rel + len] => {}
                    Ok(()) => errors.lock().unwrap().push(format!(
                        "reader {r}: {len} bytes at {} differ from the model",
                        t * REGION + rel as u64
                    )),
                    Err(e) => errors.lock().unwrap().push(format!("reader {r}: {e}")),
                }
                drop(m);
                checked.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{} errors: {errors:#?}", errors.len());

    v.flush().unwrap();
    // A background extension may still be running: let it finish.
    let deadline = Instant::now() + Duration::from_secs(30);
    let g = loop {
        let g = v.growth();
        let asked = ext.urgent.load(Ordering::SeqCst) + ext.background.load(Ordering::SeqCst);
        if asked == g.extensions + g.failed_extensions {
            break g;
        }
        assert!(Instant::now() < deadline, "an extension never finished");
        std::thread::sleep(Duration::from_millis(5));
    };
    let lv = v.lv_size();
    eprintln!(
        "{} MiB written by {WRITERS} threads, {} concurrent reads checked; LV 1 -> {} MiB \
         in {} extensions ({} urgent requests, {} background), {} parked writes \
         (longest wait {:?}), {:.1} s",
        written.load(Ordering::SeqCst) / MIB,
        reads_checked.load(Ordering::SeqCst),
        lv / MIB,
        g.extensions,
        ext.urgent.load(Ordering::SeqCst),
        ext.background.load(Ordering::SeqCst),
        g.parked_writes,
        g.park_times.iter().max().copied().unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(g.failed_extensions, 0, "{:?}", g.last_error);
    assert!(
        g.extensions >= 10,
        "the LV grew only {} times",
        g.extensions
    );
    assert!(g.parked_writes > 0, "no write ever waited for space: {g:?}");
    assert!(lv >= 10 * MIB && lv >= v.allocated_end());
    assert!(reads_checked.load(Ordering::SeqCst) > 0);

    // Every byte, through thin (the same handle), then qemu's view of it all.
    let model: Vec<u8> = models
        .iter()
        .flat_map(|m| m.read().unwrap().clone())
        .collect();
    let mut all = vec![0u8; size as usize];
    v.read(&mut all, 0).unwrap();
    if all != model {
        let at = all.iter().zip(&model).position(|(a, b)| a != b).unwrap();
        panic!("the volume differs from the model first at byte {at}");
    }
    drop(v);
    let reopened = Volume::open(&*store, "vol", &OpenOptions::read_only()).unwrap();
    let mut again = vec![0u8; size as usize];
    reopened.read(&mut again, 0).unwrap();
    assert!(
        again == model,
        "reopened, the volume differs from the model"
    );
    drop(reopened);
    qemu_agrees(dir.path(), "vol", &model);
}

/// A store extender that can be told to fail, as when the pool is full.
struct Switchable {
    inner: StoreExtender,
    fail: AtomicBool,
    calls: AtomicU64,
}

impl Extender for Switchable {
    fn extend(&self, req: &GrowthRequest) -> Result<Arc<dyn BlockDev>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(format!("pool is full (asked for {} bytes)", req.min_size));
        }
        self.inner.extend(req)
    }
}

#[test]
fn a_failing_extender_gives_no_space_and_the_volume_recovers_in_place() {
    common::skip_unless_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LvStore> = Arc::new(DirStore::new(dir.path(), MIB));
    let size = 64 * MIB;
    thin::create(
        &*store,
        "vol",
        &CreateOptions {
            size: Some(size),
            cluster_size: CLUSTER,
            initial_lv_size: MIB,
            ..Default::default()
        },
    )
    .unwrap();
    let ext = Arc::new(Switchable {
        inner: StoreExtender(store.clone()),
        fail: AtomicBool::new(true),
        calls: AtomicU64::new(0),
    });
    let opts = OpenOptions {
        policy: GrowthPolicy {
            threshold_percent: 50,
            notice_lead_percent: 0,
            chunk: MIB,
            cap: None,
        },
        ..OpenOptions::default().with_extender(ext.clone())
    };
    let v = Arc::new(Volume::open(&*store, "vol", &opts).unwrap());
    let mut model = vec![0u8; size as usize];
    let put = |v: &Volume, model: &mut Vec<u8>, off: u64, len: usize, seed: u64| {
        let data = pattern(seed, len);
        v.write(&data, off)?;
        model[off as usize..off as usize + len].copy_from_slice(&data);
        Ok::<(), thin::Error>(())
    };

    // What fits in the LV as it is: an empty image takes 256 KiB, an L2
    // table 64 KiB, and these 384 KiB of data (a rewrite and partial clusters included).
    put(&v, &mut model, 0, 256 * KIB as usize, 1).unwrap();
    put(&v, &mut model, 5 * MIB + 512, 64 * KIB as usize, 2).unwrap();
    put(&v, &mut model, 4096, 8 * KIB as usize, 3).unwrap();
    v.flush().unwrap();
    let before = v.lv_size();
    assert_eq!(before, MIB);

    // Past the LV's end: the extension fails, so the write does.
    let e = put(&v, &mut model, 10 * MIB, 512 * KIB as usize, 4).unwrap_err();
    assert!(
        matches!(e.root(), thin::Error::NoSpace(_)),
        "expected NoSpace, got {e:?}"
    );
    assert!(e.to_string().contains("pool is full"), "{e}");
    // Several queues hitting the full pool at once all fail, none hangs
    // (each needs more than the 320 KiB left; the failed write above freed
    // what it had allocated).
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u64)
            .map(|i| {
                let v = &v;
                s.spawn(move || v.write(&pattern(50 + i, 512 * KIB as usize), (20 + i) * MIB))
            })
            .collect();
        for h in hs {
            let e = h.join().unwrap().unwrap_err();
            assert!(matches!(e.root(), thin::Error::NoSpace(_)), "{e:?}");
        }
    });
    let g = v.growth();
    assert!(g.failed_extensions >= 2, "{g:?}");
    assert!(g
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("pool is full"));
    assert_eq!(v.lv_size(), before);

    // What was written before reads back; the failed writes left nothing.
    let mut all = vec![0u8; size as usize];
    v.read(&mut all, 0).unwrap();
    assert!(all == model, "data changed by failed writes");
    v.flush().unwrap();

    // The pool has room again: the same handle grows and writes.
    ext.fail.store(false, Ordering::SeqCst);
    put(&v, &mut model, 10 * MIB, 512 * KIB as usize, 4).unwrap();
    put(&v, &mut model, 30 * MIB + 1536, 3 * MIB as usize, 5).unwrap();
    put(&v, &mut model, 4096 + 512, 512, 6).unwrap();
    v.flush().unwrap();
    let g = v.growth();
    assert!(g.extensions >= 1 && v.lv_size() > before, "{g:?}");
    v.read(&mut all, 0).unwrap();
    assert!(
        all == model,
        "after recovery the volume differs from the model"
    );
    eprintln!(
        "extender called {} times; growth {:?}; LV {} MiB",
        ext.calls.load(Ordering::SeqCst),
        (g.extensions, g.failed_extensions, g.parked_writes),
        v.lv_size() / MIB
    );
    drop(v);
    qemu_agrees(dir.path(), "vol", &model);
}
