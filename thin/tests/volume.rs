//! Volumes on files laid out like /dev/VG/, checked by real qemu-img.

use std::sync::Arc;
use thin::{CreateOptions, DirStore, GrowthPolicy, LvStore, OpenOptions, StoreExtender, Volume};

mod common;
use common::{qemu_clean, qemu_compare, qemu_img};

#[test]
fn write_read_grow_and_qemu_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LvStore> = Arc::new(DirStore::new(dir.path(), 4 << 20));
    let opts = CreateOptions {
        size: Some(1 << 30),
        initial_lv_size: 4 << 20,
        ..Default::default()
    };
    thin::create(&*store, "vol", &opts).unwrap();
    let oo = OpenOptions {
        policy: GrowthPolicy {
            chunk: 4 << 20,
            ..Default::default()
        },
        ..OpenOptions::default().with_extender(Arc::new(StoreExtender(store.clone())))
    };
    let v = Volume::open(&*store, "vol", &oo).unwrap();
    let mut expect = vec![0u8; 1 << 30];
    let mut x = 1u64;
    for i in 0..300u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % ((1 << 30) - 65536) / 512 * 512;
        let len = 512 * (1 + (x % 64) as usize);
        let buf: Vec<u8> = (0..len).map(|j| (i as u8) ^ (j as u8)).collect();
        v.write(&buf, off).unwrap();
        expect[off as usize..off as usize + len].copy_from_slice(&buf);
    }
    v.flush().unwrap();
    let mut back = vec![0u8; 1 << 20];
    for chunk in 0..1024u64 {
        v.read(&mut back, chunk << 20).unwrap();
        assert!(
            back == expect[(chunk << 20) as usize..((chunk + 1) << 20) as usize],
            "chunk {chunk}"
        );
    }
    let g = v.growth();
    assert!(g.extensions > 0 && v.lv_size() > 4 << 20, "{g:?}");
    // The running figure is exact: what the refcounts on disk say, and what
    // qemu-img calls the image end offset.
    let dev = store.open("vol").unwrap();
    let header = thin::layer::read_header(&*dev).unwrap();
    let on_disk = thin::layer::allocated_end(&*dev, &header).unwrap();
    assert_eq!(v.allocated_end(), on_disk);
    drop(v);
    let report = qemu_clean(dir.path(), "vol");
    assert!(
        report.contains(&format!("Image end offset: {on_disk}")),
        "{report}"
    );
    qemu_compare(dir.path(), "vol", &expect);
}

fn fill(v: &Volume, expect: &mut [u8], seed: u8, count: u64) {
    let mut x = u64::from(seed) + 7;
    for i in 0..count {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 24) % (expect.len() as u64 - 200_000) / 512 * 512;
        let len = 512 * (1 + (x % 300) as usize);
        let buf: Vec<u8> = (0..len)
            .map(|j| (seed ^ (i as u8) ^ (j as u8)) | 1)
            .collect();
        v.write(&buf, off).unwrap();
        expect[off as usize..off as usize + len].copy_from_slice(&buf);
    }
    v.flush().unwrap();
}

fn same(store: &dyn LvStore, top: &str, expect: &[u8]) {
    let v = Volume::open(store, top, &OpenOptions::read_only()).unwrap();
    let mut back = vec![0u8; expect.len()];
    v.read(&mut back, 0).unwrap();
    assert!(back == expect, "{top} differs");
}

fn qemu_same(dir: &std::path::Path, top: &str, expect: &[u8]) {
    qemu_clean(dir, top);
    qemu_compare(dir, top, expect);
}

#[test]
fn snapshots_revert_merge_and_clones() {
    use thin::chain::{delete_snapshot, revert, snapshot, LayerOptions};
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LvStore> = Arc::new(DirStore::new(dir.path(), 4 << 20));
    let ext: Arc<dyn thin::Extender> = Arc::new(StoreExtender(store.clone()));
    let size = 64u64 << 20;
    let opts = CreateOptions {
        size: Some(size),
        initial_lv_size: 4 << 20,
        ..Default::default()
    };
    thin::create(&*store, "base", &opts).unwrap();
    let rw = OpenOptions::default().with_extender(ext.clone());
    let mut e0 = vec![0u8; size as usize];
    fill(
        &Volume::open(&*store, "base", &rw).unwrap(),
        &mut e0,
        1,
        200,
    );
    let lo = LayerOptions {
        initial_lv_size: 4 << 20,
        ..Default::default()
    };
    snapshot(&*store, "base", "s1", &lo).unwrap();
    let mut e1 = e0.clone();
    fill(&Volume::open(&*store, "s1", &rw).unwrap(), &mut e1, 2, 200);
    snapshot(&*store, "s1", "top", &lo).unwrap();
    let mut e2 = e1.clone();
    {
        let v = Volume::open(&*store, "top", &rw).unwrap();
        assert_eq!(v.layers(), ["top", "s1", "base"]);
        fill(&v, &mut e2, 3, 200);
        v.write_zeroes(1 << 20, 3 << 20).unwrap();
        e2[1 << 20..4 << 20].fill(0);
        v.flush().unwrap();
    }
    same(&*store, "top", &e2);
    same(&*store, "s1", &e1);
    qemu_same(dir.path(), "top", &e2);

    // Merge the middle snapshot into the top: same data, one layer fewer.
    delete_snapshot(&*store, "top", "s1", Some(ext.clone()), 32).unwrap();
    assert!(!store.exists("s1").unwrap());
    assert_eq!(
        Volume::open(&*store, "top", &OpenOptions::read_only())
            .unwrap()
            .layers(),
        ["top", "base"]
    );
    same(&*store, "top", &e2);
    qemu_same(dir.path(), "top", &e2);

    // Full clone: independent, same data.
    let mut seen = Vec::new();
    let rep = thin::clone::full_clone(&*store, "top", "copy", &opts, Some(ext.clone()), &mut |p| {
        seen.push(p)
    })
    .unwrap();
    assert!(rep.copied > 0 && seen.last().unwrap().done == seen.last().unwrap().total);
    assert_eq!(
        Volume::open(&*store, "copy", &OpenOptions::read_only())
            .unwrap()
            .layers(),
        ["copy"]
    );
    qemu_same(dir.path(), "copy", &e2);

    // Linked clone over the base snapshot, then revert the volume to it.
    thin::clone::linked_clone(&*store, "base", "linked", &opts).unwrap();
    same(&*store, "linked", &e0);
    let removed = revert(&*store, "top", "base", "top2", &lo).unwrap();
    assert_eq!(removed, ["top"]);
    same(&*store, "top2", &e0);
    qemu_same(dir.path(), "top2", &e0);

    // The base serves two chains: merging it into one would break the other.
    let e = delete_snapshot(&*store, "linked", "base", Some(ext.clone()), 32).unwrap_err();
    assert!(e.to_string().contains("top2"), "{e}");
    same(&*store, "top2", &e0);
    // Once nothing else uses it, it merges into the linked clone.
    store.remove("top2").unwrap();
    delete_snapshot(&*store, "linked", "base", Some(ext), 32).unwrap();
    same(&*store, "linked", &e0);
    qemu_same(dir.path(), "linked", &e0);
}

#[test]
fn resize_and_depth_limit() {
    use thin::chain::{snapshot, LayerOptions};
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LvStore> = Arc::new(DirStore::new(dir.path(), 1 << 20));
    let ext: Arc<dyn thin::Extender> = Arc::new(StoreExtender(store.clone()));
    let opts = CreateOptions {
        size: Some(8 << 20),
        initial_lv_size: 1 << 20,
        ..Default::default()
    };
    thin::create(&*store, "v0", &opts).unwrap();
    {
        let v = Volume::open(
            &*store,
            "v0",
            &OpenOptions::default().with_extender(ext.clone()),
        )
        .unwrap();
        v.write(&[7u8; 4096], (8 << 20) - 4096).unwrap();
        assert!(
            v.write(&[1u8; 512], 8 << 20).is_err(),
            "write past the virtual end"
        );
        let e = v.grow(4 << 20).unwrap_err();
        assert!(e.to_string().contains("shrinking"), "{e}");
        v.grow(3 << 30).unwrap();
        assert_eq!(v.virtual_size(), 3 << 30);
        v.write(&[9u8; 65536], (3 << 30) - 65536).unwrap();
        v.flush().unwrap();
    }
    let (rc, text) = qemu_img(&["info", dir.path().join("v0").to_str().unwrap()]);
    assert!(rc == 0 && text.contains("virtual size: 3 GiB"), "{text}");
    qemu_clean(dir.path(), "v0");

    // A chain of 4 layers under a limit of 4: the next snapshot is refused, clearly.
    let lo = LayerOptions {
        initial_lv_size: 1 << 20,
        max_depth: 4,
        ..Default::default()
    };
    for i in 1..4 {
        snapshot(&*store, &format!("v{}", i - 1), &format!("v{i}"), &lo).unwrap();
    }
    let e = snapshot(&*store, "v3", "v4", &lo).unwrap_err();
    assert!(
        matches!(e.root(), thin::Error::ChainTooDeep { limit: 4, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("delete (merge) a snapshot"), "{e}");
    assert!(!store.exists("v4").unwrap());
    let deep = OpenOptions {
        max_depth: 3,
        ..OpenOptions::read_only()
    };
    assert!(Volume::open(&*store, "v3", &deep).is_err());
    let v = Volume::open(&*store, "v3", &OpenOptions::read_only()).unwrap();
    let mut b = [0u8; 4096];
    v.read(&mut b, (8 << 20) - 4096).unwrap();
    assert_eq!(b, [7u8; 4096]);
}

/// Allocating writes map zeroed clusters before their data lands, and the
/// zeroing is done ahead in bulk. The LV starts full of a deleted volume's
/// bytes: every byte never written must still read as zero, through
/// partial-cluster writes from many threads racing whole-cluster writes
/// (which skip zeroing) in other L2 tables, discards that free clusters
/// below the zeroed frontier for reuse, write-zeroes, and reopening.
#[test]
fn space_never_written_reads_zero_over_old_lv_contents() {
    zero_reads_over_old_contents(64 << 10);
    // 4 KiB clusters: an L2 table maps 2 MiB, so the threads' regions
    // allocate under different L2 locks, concurrently.
    zero_reads_over_old_contents(4 << 10);
}

fn zero_reads_over_old_contents(cluster: u64) {
    use std::io::{Seek, SeekFrom, Write};
    const SIZE: usize = 64 << 20;
    const THREADS: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path(), 4 << 20);
    let lv = 80 << 20;
    let opts = CreateOptions {
        size: Some(SIZE as u64),
        cluster_size: cluster,
        initial_lv_size: lv,
        ..Default::default()
    };
    thin::create(&store, "vol", &opts).unwrap();
    let start = Volume::open(&store, "vol", &OpenOptions::default())
        .unwrap()
        .allocated_end();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(store.path("vol"))
        .unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    f.write_all(&vec![0xee; (lv - start) as usize]).unwrap();
    drop(f);

    let clusters = SIZE as u64 / cluster;
    let mut expect = vec![0u8; SIZE];
    for round in 0..3u8 {
        let v = Volume::open(&store, "vol", &OpenOptions::default()).unwrap();
        // Each thread in its own region; even threads write whole clusters,
        // odd ones small pieces at odd places inside clusters.
        let writes: Vec<Vec<(u64, Vec<u8>)>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..THREADS)
                .map(|t| {
                    let v = &v;
                    s.spawn(move || {
                        let mut done = Vec::new();
                        let mut x = t * 977 + u64::from(round) * 13 + 1;
                        let per = clusters / THREADS;
                        for i in 0..150u64 {
                            x = x
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            let c = t * per + (x >> 33) % per;
                            let (within, len) = if t % 2 == 0 {
                                (0, cluster as usize)
                            } else {
                                let w = (x >> 13) % (cluster / 512 - 4) * 512;
                                (w, 512 * (1 + (x % 4) as usize))
                            };
                            let byte = (round * 64 + t as u8 * 16 + (i % 15) as u8) | 1;
                            let off = c * cluster + within;
                            let buf = vec![byte; len];
                            v.write(&buf, off).unwrap();
                            done.push((off, buf));
                        }
                        done
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (off, buf) in writes.into_iter().flatten() {
            expect[off as usize..off as usize + buf.len()].copy_from_slice(&buf);
        }
        // Free some clusters (their host space is reused below the
        // frontier), zero a range, then write into the freed ones again.
        for c in (round as u64..clusters).step_by(7) {
            v.discard(c * cluster, cluster).unwrap();
            expect[(c * cluster) as usize..((c + 1) * cluster) as usize].fill(0);
        }
        let (zoff, zlen) = (3 * cluster + 512, 5 * cluster);
        v.write_zeroes(zoff, zlen).unwrap();
        expect[zoff as usize..(zoff + zlen) as usize].fill(0);
        for c in (round as u64..clusters).step_by(21) {
            let off = c * cluster + 1024;
            v.write(&[0x5b; 1024], off).unwrap();
            expect[off as usize..off as usize + 1024].fill(0x5b);
        }
        v.flush().unwrap();
        let mut back = vec![0u8; SIZE];
        v.read(&mut back, 0).unwrap();
        if let Some(i) = (0..SIZE).find(|&i| back[i] != expect[i]) {
            panic!(
                "{cluster}-byte clusters, round {round}: byte {i} reads {:#x}, expected {:#x}",
                back[i], expect[i]
            );
        }
    }
    qemu_same(dir.path(), "vol", &expect);
}

/// A [`DirStore`] whose LV "src" reads through a fault device.
struct FailingSource {
    dir: DirStore,
    ctl: san::FaultControl,
}

impl LvStore for FailingSource {
    fn open(&self, name: &str) -> thin::Result<Arc<dyn san::BlockDev>> {
        let dev = self.dir.open(name)?;
        Ok(match name {
            "src" => Arc::new(san::FaultDev::new(dev, self.ctl.clone())),
            _ => dev,
        })
    }
    fn create(
        &self,
        name: &str,
        size: u64,
        tags: &[String],
    ) -> thin::Result<Arc<dyn san::BlockDev>> {
        self.dir.create(name, size, tags)
    }
    fn extend(&self, name: &str, size: u64) -> thin::Result<Arc<dyn san::BlockDev>> {
        self.dir.extend(name, size)
    }
    fn remove(&self, name: &str) -> thin::Result<()> {
        self.dir.remove(name)
    }
    fn exists(&self, name: &str) -> thin::Result<bool> {
        self.dir.exists(name)
    }
}

#[test]
fn a_clone_that_cannot_read_its_source_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = FailingSource {
        dir: DirStore::new(dir.path(), 4 << 20),
        ctl: san::FaultControl::new(),
    };
    let opts = CreateOptions {
        size: Some(64 << 20),
        initial_lv_size: 64 << 20,
        ..Default::default()
    };
    thin::create(&store, "src", &opts).unwrap();
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    {
        let v = Volume::open(&store, "src", &OpenOptions::default()).unwrap();
        v.write(&data, 0).unwrap();
        v.flush().unwrap();
    }
    // Data clusters sit past the image's first megabytes of metadata: the
    // copy gets some way, then a read of its source fails.
    store.ctl.fail_reads(Some(24 << 20..u64::MAX));
    let mut last = None;
    let e = thin::clone::full_clone(&store, "src", "copy", &opts, None, &mut |p| last = Some(p))
        .unwrap_err();
    let last = last.unwrap();
    assert!(last.done > 0 && last.done < last.total, "{last:?}");
    assert!(e.to_string().to_lowercase().contains("read"), "{e}");
    assert!(
        !store.exists("copy").unwrap(),
        "the half-made clone was left behind"
    );
    store.ctl.fail_reads(None);
    let v = Volume::open(&store, "src", &OpenOptions::read_only()).unwrap();
    let mut back = vec![0; data.len()];
    v.read(&mut back, 0).unwrap();
    assert!(back == data);
}
