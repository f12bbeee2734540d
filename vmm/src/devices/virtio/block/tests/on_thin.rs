//! The device over real thin volumes (qcow2 in LVs, here files laid out
//! like /dev/VG/): growth while the guest writes, a pool that is really
//! full and comes back, the fence on held requests, read-only layers,
//! discard freeing clusters.

use super::driver::{pattern, Driver};
use super::*;
use ::thin::{
    CreateOptions, DirStore, GrowthPolicy, GrowthRequest, LvStore, OpenOptions, StoreExtender,
    Volume,
};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Extends through the store unless the pool is "full": the one fault
/// put in, everything else is the real volume, store and extender.
struct Pool {
    inner: StoreExtender,
    full: AtomicBool,
    calls: AtomicU64,
    /// Each extension takes this long (a slow pool lease).
    delay_ms: AtomicU64,
}

impl ::thin::Extender for Pool {
    fn extend(&self, req: &GrowthRequest) -> Result<Arc<dyn san::BlockDev>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
        if self.full.load(Ordering::SeqCst) {
            return Err("pool is full: no free extents".into());
        }
        self.inner.extend(req)
    }
}

struct Thin {
    _dir: tempfile::TempDir,
    store: Arc<dyn LvStore>,
    pool: Arc<Pool>,
}

fn pool(full: bool) -> Thin {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LvStore> = Arc::new(DirStore::new(dir.path(), MIB));
    let pool = Arc::new(Pool {
        inner: StoreExtender(store.clone()),
        full: AtomicBool::new(full),
        calls: AtomicU64::new(0),
        delay_ms: AtomicU64::new(0),
    });
    Thin {
        _dir: dir,
        store,
        pool,
    }
}

impl Thin {
    fn create(&self, name: &str, size: u64) {
        let opts = CreateOptions {
            size: Some(size),
            initial_lv_size: MIB,
            ..Default::default()
        };
        ::thin::create(&*self.store, name, &opts).unwrap();
    }
    fn open(&self, name: &str) -> Arc<Volume> {
        let opts = OpenOptions {
            policy: GrowthPolicy {
                threshold_percent: 50,
                notice_lead_percent: 0,
                chunk: MIB,
                cap: None,
            },
            ..OpenOptions::default().with_extender(self.pool.clone())
        };
        Arc::new(Volume::open(&*self.store, name, &opts).unwrap())
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn writes_grow_the_volume_and_read_back() {
    let t = pool(false);
    t.create("vol", 64 * MIB);
    let v = t.open("vol");
    let lv_before = v.lv_size();
    let mut h = start(
        Arc::new(ThinDisk::new(v.clone(), false)),
        BlockOptions::new("vda"),
    );
    let d = &mut h.drivers[0];
    // 6 MiB in 256 KiB requests, spread so clusters are allocated anew.
    for i in 0..24u64 {
        let data = pattern(i, 256 * 1024);
        assert_eq!(d.write(i * 2048 + 8, &data), S_OK, "write {i}");
    }
    assert_eq!(d.run(T_FLUSH, 0, &[], 0).status, S_OK);
    for i in 0..24u64 {
        let (st, back) = d.read(i * 2048 + 8, 256 * 1024);
        assert_eq!(st, S_OK);
        assert!(back == pattern(i, 256 * 1024), "read {i}");
    }
    let (st, zeros) = d.read(1, 3584);
    assert_eq!(
        (st, zeros),
        (S_OK, vec![0u8; 3584]),
        "unwritten sectors read zero"
    );
    let g = v.growth();
    assert!(g.extensions > 0, "{g:?}");
    assert!(
        v.lv_size() >= lv_before + 5 * MIB,
        "LV {} bytes",
        v.lv_size()
    );
    assert_eq!(g.failed_extensions, 0);
    // What was written is in the volume itself.
    let mut back = vec![0u8; 256 * 1024];
    v.read(&mut back, (5 * 2048 + 8) * 512).unwrap();
    assert!(back == pattern(5, 256 * 1024));
}

#[test]
fn a_full_pool_holds_the_request_until_space_comes_back() {
    let t = pool(true);
    t.create("vol", 64 * MIB);
    let v = t.open("vol");
    let rec = Arc::new(Recorder::default());
    let mut opts = BlockOptions::new("vda");
    opts.num_queues = 2;
    opts.retry_interval = Duration::from_millis(50);
    opts.events = rec.clone();
    let mut h = start(Arc::new(ThinDisk::new(v.clone(), false)), opts);
    let (q0, q1) = h.drivers.split_at_mut(1);
    let (d0, d1): (&mut Driver, &mut Driver) = (&mut q0[0], &mut q1[0]);

    // 2 MiB cannot fit the 1 MiB LV, and the pool cannot extend it.
    d0.seg_size = 64 * 1024;
    let big = pattern(77, 2 * MIB as usize);
    let p = d0.submit(T_OUT, 4096, &big, 0);
    let p2 = d0.submit(T_OUT, 0, &[9u8; 4096], 0);
    d0.kick();
    wait_for("no_space", || !rec.seen().is_empty());
    assert_eq!(rec.seen(), vec!["no_space vda".to_string()]);
    // Held, not failed; and the request behind it waits too.
    assert_eq!(d0.try_next_used(Duration::from_millis(300)), None);
    let tries = t.pool.calls.load(Ordering::SeqCst);
    wait_for("retries", || {
        t.pool.calls.load(Ordering::SeqCst) >= tries + 2
    });
    // The other queue is not held: reads go on.
    let (st, back) = d1.read(0, 4096);
    assert_eq!((st, back), (S_OK, vec![0u8; 4096]));

    t.pool.full.store(false, Ordering::SeqCst);
    let done = d0.complete(&p);
    assert_eq!(done.status, S_OK, "the guest saw no error");
    assert_eq!(d0.complete(&p2).status, S_OK);
    wait_for("space_back", || rec.seen().len() == 2);
    assert_eq!(
        rec.seen(),
        vec!["no_space vda".to_string(), "space_back vda".to_string()]
    );
    let (st, back) = d1.read(4096, 2 * MIB as usize);
    assert_eq!(st, S_OK);
    assert!(back == big, "the held write landed whole");
    assert_eq!(d1.read(0, 4096), (S_OK, vec![9u8; 4096]));
    let g = v.growth();
    assert!(g.failed_extensions >= 2 && g.extensions >= 1, "{g:?}");
}

#[test]
fn a_tripped_fence_fails_held_requests_and_stops_the_disk() {
    let t = pool(true);
    t.create("vol", 64 * MIB);
    let v = t.open("vol");
    let rec = Arc::new(Recorder::default());
    let spy = Spy::new(Arc::new(ThinDisk::new(v.clone(), false)));
    let fence = Fence::new().unwrap();
    let mut opts = BlockOptions::new("vda");
    // Long, so only the fence can end the hold within the test.
    opts.retry_interval = Duration::from_secs(60);
    opts.events = rec.clone();
    let mut h = start_with(spy.clone(), opts, fence.clone(), 0);
    let d = &mut h.drivers[0];
    let p = d.submit(T_OUT, 4096, &pattern(1, 2 * MIB as usize), 0);
    d.kick();
    wait_for("no_space", || !rec.seen().is_empty());
    let calls = spy.calls.load(Ordering::SeqCst);
    let tripped = Instant::now();
    fence.trip();
    assert_eq!(d.complete(&p).status, S_IOERR);
    assert!(
        tripped.elapsed() < Duration::from_secs(5),
        "the fence woke the queue"
    );
    // Space comes back, but the disk stays fenced.
    t.pool.full.store(false, Ordering::SeqCst);
    assert_eq!(d.write(0, &[1u8; 512]), S_IOERR);
    assert_eq!(d.read(0, 512).0, S_IOERR);
    assert_eq!(
        spy.calls.load(Ordering::SeqCst),
        calls,
        "no call reached the disk"
    );
    assert_eq!(
        rec.seen(),
        vec!["no_space vda".to_string()],
        "space never came back"
    );
    let mut first = vec![0u8; 512];
    v.read(&mut first, 0).unwrap();
    assert_eq!(first, vec![0u8; 512]);
}

#[test]
fn a_reset_does_not_wait_for_a_write_waiting_to_grow() {
    let t = pool(false);
    t.create("vol", 64 * MIB);
    let v = t.open("vol");
    t.pool.delay_ms.store(1500, Ordering::SeqCst);
    let mut h = start(Arc::new(ThinDisk::new(v, false)), BlockOptions::new("vda"));
    let d = &mut h.drivers[0];
    d.submit(T_OUT, 4096, &pattern(3, 2 * MIB as usize), 0);
    d.kick();
    wait_for("the extension", || t.pool.calls.load(Ordering::SeqCst) > 0);
    // The driver's reset comes on a vCPU thread, which must not wait.
    let t0 = Instant::now();
    h.dev.reset();
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert!(!h.dev.reset_done(), "the write is still in the worker");
    wait_for("the reset", || h.dev.reset_done());
}

#[test]
fn read_only_layer_reads_and_refuses_writes() {
    let t = pool(false);
    t.create("base", 16 * MIB);
    let content = pattern(5, 2 * MIB as usize);
    {
        let v = t.open("base");
        v.write(&content, MIB).unwrap();
        v.flush().unwrap();
    }
    let v = Arc::new(Volume::open(&*t.store, "base", &OpenOptions::read_only()).unwrap());
    let mut h = start(
        Arc::new(ThinDisk::new(v.clone(), true)),
        BlockOptions::new("vdr"),
    );
    assert_ne!(h.dev.features() & F_RO, 0);
    let d = &mut h.drivers[0];
    let (st, back) = d.read(2048, 2 * MIB as usize);
    assert_eq!(st, S_OK);
    assert!(back == content);
    assert_eq!(d.write(2048, &[1u8; 512]), S_IOERR);
    assert_eq!(d.ranges(T_WRITE_ZEROES, &[(2048, 8, 0)]), S_UNSUPP);
    let mut again = vec![0u8; 512];
    v.read(&mut again, MIB).unwrap();
    assert_eq!(again, content[..512]);

    // A layer over it is written; the base under it is not.
    t.store.exists("base").unwrap();
    ::thin::create(
        &*t.store,
        "top",
        &CreateOptions {
            backing: Some("base".into()),
            initial_lv_size: MIB,
            ..Default::default()
        },
    )
    .unwrap();
    let top = t.open("top");
    let mut h = start(
        Arc::new(ThinDisk::new(top, false)),
        BlockOptions::new("vdt"),
    );
    let d = &mut h.drivers[0];
    assert_eq!(d.write(2048, &[2u8; 4096]), S_OK);
    let (st, back) = d.read(2048, 8192);
    assert_eq!(st, S_OK);
    assert_eq!(&back[..4096], &[2u8; 4096]);
    assert!(
        back[4096..] == content[4096..8192],
        "the rest shows the base"
    );
    v.read(&mut again, MIB).unwrap();
    assert_eq!(again, content[..512], "the base is unchanged");
}

#[test]
fn discard_and_write_zeroes_free_clusters_of_the_volume() {
    let t = pool(false);
    t.create("vol", 16 * MIB);
    let v = t.open("vol");
    let mut h = start(
        Arc::new(ThinDisk::new(v.clone(), false)),
        BlockOptions::new("vda"),
    );
    let mut cfg = [0u8; 4];
    h.dev.read_config(44, &mut cfg);
    let cluster = v.cluster_size();
    assert_eq!(
        u64::from(u32::from_le_bytes(cfg)),
        cluster / 512,
        "discard alignment"
    );
    let d = &mut h.drivers[0];
    let data = pattern(8, MIB as usize);
    assert_eq!(d.write(0, &data), S_OK);
    let c = (cluster / 512) as u32;
    assert_eq!(d.ranges(T_DISCARD, &[(0, 2 * c, 0)]), S_OK);
    assert_eq!(
        d.ranges(T_WRITE_ZEROES, &[(u64::from(4 * c), c, RANGE_F_UNMAP)]),
        S_OK
    );
    let (st, back) = d.read(0, MIB as usize);
    assert_eq!(st, S_OK);
    let mut model = data.clone();
    let cl = cluster as usize;
    model[..2 * cl].fill(0);
    model[4 * cl..5 * cl].fill(0);
    assert!(back == model);
    for at in [0, cluster, 4 * cluster] {
        let (kind, _) = v.extent(at, cluster, false).unwrap();
        assert_eq!(
            kind,
            ::thin::Extent::Zero,
            "cluster at {at} is no longer data"
        );
    }
    assert_eq!(
        v.extent(2 * cluster, cluster, false).unwrap().0,
        ::thin::Extent::Data
    );
}
