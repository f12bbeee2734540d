//! Growth of a volume's LV while it is written: a threshold crossing asks the
//! [`Extender`] for a chunk in the background; a write that needs space past
//! the LV's end is parked until an extension completes, and fails with ENOSPC
//! only when the extension fails. The extender hands back the LV with its new
//! segments, which the writer swaps in without reopening.

use san::BlockDev;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub const DEFAULT_THRESHOLD_PERCENT: u8 = 50;
pub const DEFAULT_NOTICE_LEAD_PERCENT: u8 = 10;
pub const DEFAULT_CHUNK: u64 = 1 << 30;
pub const DEFAULT_INITIAL_SIZE: u64 = 1 << 30;

/// When and by how much a volume's LV grows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrowthPolicy {
    /// Ask for more space once the highest allocated offset passes this
    /// percentage of the LV.
    pub threshold_percent: u8,
    /// This many percentage points below the threshold, tell the extender
    /// the LV will want its next chunk soon ([`Extender::notice`]), so an
    /// extender that serves several writers in one metadata commit can grow
    /// it along with the others. 0 (or not below the threshold): never.
    pub notice_lead_percent: u8,
    /// Bytes added per extension.
    pub chunk: u64,
    /// The LV never grows past this; `None` = virtual size plus the qcow2
    /// metadata a fully allocated image needs.
    pub cap: Option<u64>,
}

impl Default for GrowthPolicy {
    fn default() -> Self {
        GrowthPolicy {
            threshold_percent: DEFAULT_THRESHOLD_PERCENT,
            notice_lead_percent: DEFAULT_NOTICE_LEAD_PERCENT,
            chunk: DEFAULT_CHUNK,
            cap: None,
        }
    }
}

/// What a writer asks of its extender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrowthRequest {
    /// The LV to extend.
    pub lv: String,
    /// Its size as the writer maps it now.
    pub current_size: u64,
    /// Smallest size that lets the writer go on.
    pub min_size: u64,
    /// Size the policy asks for (at least `min_size`, at most the cap).
    pub target_size: u64,
    /// A write is parked on this request (not just a threshold crossing).
    pub urgent: bool,
}

/// Extends LVs for writers. ssvd implements it under the pool lease; tests
/// and single-host tools use one on the VG directly.
pub trait Extender: Send + Sync {
    /// Extends `req.lv` to at least `req.min_size` bytes (the extent size may
    /// round it up) and returns the LV as a device over its new segments.
    fn extend(&self, req: &GrowthRequest) -> Result<Arc<dyn BlockDev>, String>;

    /// `req.lv` will soon cross its threshold and ask for `req.target_size`
    /// (`req.min_size` is its current size: nothing waits yet). An extender
    /// that grows several writers' LVs in one metadata commit may grow this
    /// one in a commit it makes anyway; the writer still asks with
    /// [`Extender::extend`] at its threshold, and an LV grown meanwhile
    /// makes that quick. Called on a thread of its own; the default does
    /// nothing.
    fn notice(&self, _req: &GrowthRequest) {}
}

/// Counters of one writer's growth, for status and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrowthStats {
    pub extensions: u64,
    pub failed_extensions: u64,
    /// Writes that waited for an extension.
    pub parked_writes: u64,
    /// How long each parked write waited, in order.
    pub park_times: Vec<Duration>,
    /// For each extension that succeeded: from the threshold crossing (or
    /// the parked write) to the grown LV mapped here, in order.
    pub extension_times: Vec<Duration>,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct State {
    in_flight: bool,
    /// Bumped when an extension finishes (either way), so waiters see progress.
    generation: u64,
    failed_generation: Option<u64>,
    stats: GrowthStats,
}

/// The LV under a writable layer: its current device and size, the highest
/// allocated offset, and the growth machinery.
pub(crate) struct Grower {
    lv: String,
    policy: GrowthPolicy,
    cap: AtomicU64,
    extender: Arc<dyn Extender>,
    /// The LV size a notice was sent for (0: none yet).
    noticed: AtomicU64,
    state: Mutex<State>,
    done: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The device and size a layer's I/O goes to; swapped after an extension.
pub(crate) struct LvMap {
    dev: std::sync::RwLock<Arc<dyn BlockDev>>,
    size: AtomicU64,
}

impl LvMap {
    pub fn new(dev: Arc<dyn BlockDev>) -> LvMap {
        LvMap {
            size: AtomicU64::new(dev.size()),
            dev: std::sync::RwLock::new(dev),
        }
    }
    pub fn dev(&self) -> Arc<dyn BlockDev> {
        self.dev
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn swap(&self, dev: Arc<dyn BlockDev>) {
        let size = dev.size();
        *self.dev.write().unwrap_or_else(PoisonError::into_inner) = dev;
        self.size.store(size, Ordering::Release);
    }
}

impl Grower {
    pub fn new(lv: &str, policy: GrowthPolicy, cap: u64, extender: Arc<dyn Extender>) -> Grower {
        Grower {
            lv: lv.to_string(),
            policy,
            cap: AtomicU64::new(cap),
            extender,
            noticed: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            done: Condvar::new(),
        }
    }

    pub fn cap(&self) -> u64 {
        self.cap.load(Ordering::Acquire)
    }

    /// After the virtual size grew.
    pub fn raise_cap(&self, cap: u64) {
        self.cap.fetch_max(cap, Ordering::AcqRel);
    }

    pub fn stats(&self) -> GrowthStats {
        lock(&self.state).stats.clone()
    }

    fn target(&self, size: u64, min: u64) -> u64 {
        let chunk = self.policy.chunk.max(1);
        let want = size
            .saturating_add(chunk)
            .max(min.div_ceil(chunk).saturating_mul(chunk));
        want.min(self.cap()).max(min)
    }

    fn percent_of(size: u64, percent: u8) -> u64 {
        (u128::from(size) * u128::from(percent.min(100)) / 100) as u64
    }

    /// Called after every write: starts a background extension when the
    /// highest allocated offset `end` passed the threshold, and sends the
    /// notice before that.
    pub fn note_end(self: &Arc<Self>, map: &Arc<LvMap>, end: u64) {
        let size = map.size();
        if size >= self.cap() {
            return;
        }
        if end <= Self::percent_of(size, self.policy.threshold_percent) {
            let lead = self.policy.notice_lead_percent;
            let notice = self.policy.threshold_percent.saturating_sub(lead);
            if lead > 0
                && notice > 0
                && end > Self::percent_of(size, notice)
                && self.noticed.load(Ordering::Relaxed) != size
                && self.noticed.swap(size, Ordering::AcqRel) != size
            {
                self.send_notice(size);
            }
            return;
        }
        let mut st = lock(&self.state);
        if st.in_flight || map.size() != size {
            return;
        }
        st.in_flight = true;
        drop(st);
        let req = GrowthRequest {
            lv: self.lv.clone(),
            current_size: size,
            min_size: size.saturating_add(1).min(self.cap()),
            target_size: self.target(size, size),
            urgent: false,
        };
        let (me, map) = (Arc::clone(self), Arc::clone(map));
        let crossed = Instant::now();
        let spawned = std::thread::Builder::new()
            .name("thin-grow".into())
            .spawn(move || me.run(&map, &req, crossed));
        if let Err(e) = spawned {
            log::warn!("{}: cannot start a growth thread: {e}", self.lv);
            let mut st = lock(&self.state);
            st.in_flight = false;
            self.done.notify_all();
        }
    }

    fn send_notice(self: &Arc<Self>, size: u64) {
        let req = GrowthRequest {
            lv: self.lv.clone(),
            current_size: size,
            min_size: size,
            target_size: self.target(size, size),
            urgent: false,
        };
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("thin-notice".into())
            .spawn(move || me.extender.notice(&req));
        if let Err(e) = spawned {
            log::debug!("{}: cannot start a growth notice thread: {e}", self.lv);
        }
    }

    /// Runs one extension and wakes everyone waiting for it.
    fn run(&self, map: &LvMap, req: &GrowthRequest, asked: Instant) {
        let res = self.extender.extend(req);
        let mut st = lock(&self.state);
        match res {
            Ok(dev) if dev.size() >= req.min_size => {
                map.swap(dev);
                st.stats.extensions += 1;
                st.stats.extension_times.push(asked.elapsed());
                st.failed_generation = None;
            }
            Ok(dev) => {
                let e = format!(
                    "extender returned {} bytes for LV {}, {} needed",
                    dev.size(),
                    req.lv,
                    req.min_size
                );
                st.stats.failed_extensions += 1;
                st.stats.last_error = Some(e);
                st.failed_generation = Some(st.generation + 1);
            }
            Err(e) => {
                log::warn!(
                    "extending LV {} to {} bytes failed: {e}",
                    req.lv,
                    req.target_size
                );
                st.stats.failed_extensions += 1;
                st.stats.last_error = Some(e);
                st.failed_generation = Some(st.generation + 1);
            }
        }
        st.generation += 1;
        st.in_flight = false;
        self.done.notify_all();
    }

    /// Parks the caller until the LV holds `end` bytes. Fails with the
    /// extender's error when an extension made for this write fails, or
    /// when `end` is past the cap.
    pub fn wait_for(&self, map: &LvMap, end: u64) -> Result<(), String> {
        if end > self.cap() {
            return Err(format!(
                "LV {} would need {end} bytes, past its cap of {} bytes",
                self.lv,
                self.cap()
            ));
        }
        if map.size() >= end {
            return Ok(());
        }
        let started = Instant::now();
        let mut st = lock(&self.state);
        let mut mine: Option<u64> = None;
        loop {
            let size = map.size();
            if size >= end {
                break;
            }
            if let (Some(g), Some(f)) = (mine, st.failed_generation) {
                if f == g {
                    return Err(st
                        .stats
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "extension failed".into()));
                }
            }
            if st.in_flight {
                st = self.done.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            st.in_flight = true;
            mine = Some(st.generation + 1);
            let req = GrowthRequest {
                lv: self.lv.clone(),
                current_size: size,
                min_size: end,
                target_size: self.target(size, end),
                urgent: true,
            };
            drop(st);
            self.run(map, &req, Instant::now());
            st = lock(&self.state);
        }
        st.stats.parked_writes += 1;
        st.stats.park_times.push(started.elapsed());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use san::{FileDev, OpenOptions};

    /// Hands out ever larger files; fails past `limit`.
    struct Files {
        dir: tempfile::TempDir,
        limit: u64,
        calls: Mutex<Vec<GrowthRequest>>,
        notices: Mutex<Vec<GrowthRequest>>,
    }

    impl Extender for Files {
        fn notice(&self, req: &GrowthRequest) {
            lock(&self.notices).push(req.clone());
        }

        fn extend(&self, req: &GrowthRequest) -> Result<Arc<dyn BlockDev>, String> {
            lock(&self.calls).push(req.clone());
            if req.min_size > self.limit {
                return Err("pool is full".into());
            }
            let size = req.target_size.min(self.limit);
            let p = self.dir.path().join(format!("lv{size}"));
            let dev = FileDev::open(&p, &OpenOptions::new().create_size(Some(size)))
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(dev))
        }
    }

    fn setup(limit: u64) -> (Arc<Grower>, Arc<LvMap>, Arc<Files>) {
        let files = Arc::new(Files {
            dir: tempfile::tempdir().unwrap(),
            limit,
            calls: Mutex::new(Vec::new()),
            notices: Mutex::new(Vec::new()),
        });
        let first = files
            .extend(&GrowthRequest {
                lv: "v".into(),
                current_size: 0,
                min_size: 1 << 20,
                target_size: 1 << 20,
                urgent: false,
            })
            .unwrap();
        lock(&files.calls).clear();
        let policy = GrowthPolicy {
            threshold_percent: 50,
            notice_lead_percent: 10,
            chunk: 1 << 20,
            cap: None,
        };
        let g = Arc::new(Grower::new("v", policy, 8 << 20, files.clone()));
        (g, Arc::new(LvMap::new(first)), files)
    }

    #[test]
    fn threshold_crossing_extends_in_the_background() {
        let (g, map, files) = setup(64 << 20);
        g.note_end(&map, 512 << 10); // exactly 50%: nothing
        assert!(lock(&files.calls).is_empty());
        g.note_end(&map, (512 << 10) + 4096);
        let deadline = Instant::now() + Duration::from_secs(10);
        while map.size() != 2 << 20 {
            assert!(Instant::now() < deadline, "no extension");
            std::thread::sleep(Duration::from_millis(1));
        }
        let calls = lock(&files.calls).clone();
        assert_eq!(calls.len(), 1);
        assert!(!calls[0].urgent);
        assert_eq!(calls[0].target_size, 2 << 20);
        assert_eq!(g.stats().parked_writes, 0);
    }

    #[test]
    fn the_notice_goes_once_per_lv_size_before_the_threshold() {
        let (g, map, files) = setup(64 << 20);
        let wait_notices = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while lock(&files.notices).len() < n {
                assert!(Instant::now() < deadline, "no notice");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // 1 MiB LV: 40% is 419430 bytes.
        g.note_end(&map, 419_430);
        g.note_end(&map, 300_000);
        std::thread::sleep(Duration::from_millis(50));
        assert!(lock(&files.notices).is_empty());
        for _ in 0..3 {
            g.note_end(&map, 450_000);
        }
        wait_notices(1);
        let n = lock(&files.notices)[0].clone();
        assert_eq!(
            (n.current_size, n.min_size, n.target_size),
            (1 << 20, 1 << 20, 2 << 20)
        );
        assert!(!n.urgent);
        assert!(
            lock(&files.calls).is_empty(),
            "a notice is not an extension"
        );
        // The threshold still extends; the larger LV gets its own notice.
        g.note_end(&map, 600_000);
        let deadline = Instant::now() + Duration::from_secs(10);
        while map.size() != 2 << 20 {
            assert!(Instant::now() < deadline, "no extension");
            std::thread::sleep(Duration::from_millis(1));
        }
        // 2 MiB: 40% is 838860 bytes.
        g.note_end(&map, 800_000);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(lock(&files.notices).len(), 1);
        g.note_end(&map, 900_000);
        wait_notices(2);
        assert_eq!(lock(&files.notices)[1].current_size, 2 << 20);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(lock(&files.notices).len(), 2);
    }

    #[test]
    fn parked_write_waits_for_space_then_fails_only_when_extension_fails() {
        let (g, map, files) = setup(4 << 20);
        g.wait_for(&map, (3 << 20) + 512).unwrap();
        assert_eq!(map.size(), 4 << 20);
        let calls = lock(&files.calls).clone();
        assert!(calls[0].urgent && calls[0].min_size == (3 << 20) + 512);
        assert_eq!(g.stats().parked_writes, 1);
        let e = g.wait_for(&map, 5 << 20).unwrap_err();
        assert!(e.contains("pool is full"), "{e}");
        let e = g.wait_for(&map, 9 << 20).unwrap_err();
        assert!(e.contains("cap"), "{e}");
        assert_eq!(g.stats().failed_extensions, 1);
    }

    #[test]
    fn many_parked_writers_share_extensions() {
        let (g, map, files) = setup(64 << 20);
        let ends: Vec<u64> = (1..=16).map(|i| (i * 256) << 10).collect();
        std::thread::scope(|s| {
            for &e in &ends {
                let (g, map) = (&g, &map);
                s.spawn(move || g.wait_for(map, e.min(8 << 20)).unwrap());
            }
        });
        assert!(map.size() >= 4 << 20);
        assert!(lock(&files.calls).len() <= 16);
    }
}
