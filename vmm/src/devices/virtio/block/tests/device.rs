//! The device over a file: data, flush, discard, write zeroes, GET_ID,
//! config space, malformed requests, queues, interrupts, fence, reset.

use super::driver::{pattern, Buf};
use super::*;
use std::time::Duration;

const MIB: usize = 1 << 20;

fn file(len: usize) -> (tempfile::TempDir, Arc<FileDisk>, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let disk = file_disk(dir.path(), "disk", &vec![0u8; len], false);
    let p = dir.path().join("disk");
    (dir, disk, p)
}

#[test]
fn offers_what_a_thin_disk_needs_and_config_space_says_so() {
    let (_d, disk, _) = file(8 * MIB);
    let mut opts = BlockOptions::new("vda");
    opts.num_queues = 3;
    opts.queue_size = 128;
    opts.block_size = 4096;
    let dev = Block::new(disk, opts, Fence::new().unwrap()).unwrap();
    let f = dev.features();
    for bit in [
        F_VERSION_1,
        F_SEG_MAX,
        F_BLK_SIZE,
        F_FLUSH,
        F_MQ,
        F_DISCARD,
        F_WRITE_ZEROES,
        F_RING_EVENT_IDX,
    ] {
        assert_ne!(f & bit, 0, "feature {bit:#x} not offered");
    }
    assert_eq!(f & F_RO, 0);
    assert_eq!(dev.device_type(), 2);
    assert_eq!(dev.queue_max_sizes(), &[128, 128, 128]);

    let mut cfg = [0u8; 64];
    dev.read_config(0, &mut cfg);
    let le32 = |o: usize| u32::from_le_bytes(cfg[o..o + 4].try_into().unwrap());
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        (8 * MIB / 512) as u64
    );
    assert_eq!(le32(12), 126, "seg_max");
    assert_eq!(le32(20), 4096, "blk_size");
    assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 3, "num_queues");
    assert!(le32(36) > 0 && le32(40) > 0, "discard limits");
    assert_eq!(le32(44), 1, "discard alignment of a file: one sector");
    assert!(le32(48) > 0 && le32(52) > 0, "write zeroes limits");
    assert_eq!(cfg[56], 1, "write_zeroes_may_unmap");
    assert_eq!(&cfg[60..], &[0; 4], "secure erase is not offered");
    // Any offset and length reads the same bytes.
    for off in 0..70u64 {
        for len in [1usize, 2, 3, 4, 8, 13] {
            let mut part = vec![0xaau8; len];
            dev.read_config(off, &mut part);
            for (i, b) in part.iter().enumerate() {
                let want = cfg.get(off as usize + i).copied().unwrap_or(0);
                assert_eq!(*b, want, "offset {off} + {i}");
            }
        }
    }

    let (_d, ro, _) = {
        let dir = tempfile::tempdir().unwrap();
        let disk = file_disk(dir.path(), "ro", &vec![0u8; MIB], true);
        (dir, disk, ())
    };
    let dev = Block::new(ro, BlockOptions::new("ro"), Fence::new().unwrap()).unwrap();
    let f = dev.features();
    assert_ne!(f & F_RO, 0);
    assert_eq!(f & (F_DISCARD | F_WRITE_ZEROES), 0);
    let mut cfg = [0u8; 60];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[36..56], &[0; 20], "no discard or write-zeroes limits");

    let bad = BlockOptions {
        queue_size: 100,
        ..BlockOptions::new("x")
    };
    let (_d, disk, _) = file(MIB);
    assert!(Block::new(disk, bad, Fence::new().unwrap()).is_err());
}

#[test]
fn patterns_written_read_back_and_on_disk() {
    let (_d, disk, path) = file(16 * MIB);
    let spy = Spy::new(disk);
    let mut h = start(spy.clone(), BlockOptions::new("vda"));
    let caller = std::thread::current().name().unwrap_or("?").to_string();
    let d = &mut h.drivers[0];
    let mut model = vec![0u8; 16 * MIB];
    let writes: &[(u64, usize)] = &[
        (0, 512),
        (1, 4096),
        (100, 64 * 1024),
        (7, 1536),
        (2048, 3 * MIB), // more than one bounce chunk
        (16 * 2048 - 8, 4096),
    ];
    for (i, &(sector, len)) in writes.iter().enumerate() {
        d.seg_size = [4096, 512, 1 << 16, 1000 * 512][i % 4];
        let data = pattern(i as u64 + 1, len);
        assert_eq!(d.write(sector, &data), S_OK, "write {i}");
        let at = sector as usize * 512;
        model[at..at + len].copy_from_slice(&data);
    }
    for (i, &(sector, len)) in writes.iter().enumerate() {
        d.seg_size = [512, 4096, 3 * 512][i % 3];
        let (st, back) = d.read(sector, len);
        assert_eq!(st, S_OK);
        let at = sector as usize * 512;
        assert!(back == model[at..at + len], "read {i} differs");
    }
    // A read's used length is its data plus the status byte.
    let done = d.run(T_IN, 3, &[], 1024);
    assert_eq!(done.used_len, 1025);
    assert_eq!(d.run(T_FLUSH, 0, &[], 0).status, S_OK);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        model,
        "the file holds what was written"
    );
    let threads = spy.threads.lock().unwrap().clone();
    assert_eq!(
        threads.into_iter().collect::<Vec<_>>(),
        vec!["vblk-vda-q0".to_string()],
        "disk I/O ran on the queue's thread only (not {caller})"
    );
}

#[test]
fn discard_and_write_zeroes_read_back_zeros() {
    let (_d, disk, path) = file(4 * MIB);
    let mut h = start(disk, BlockOptions::new("vda"));
    let d = &mut h.drivers[0];
    let data = pattern(9, 2 * MIB);
    assert_eq!(d.write(0, &data), S_OK);
    // Two discard ranges, one write-zeroes with unmap, one without.
    assert_eq!(d.ranges(T_DISCARD, &[(8, 8, 0), (1024, 16, 0)]), S_OK);
    assert_eq!(d.ranges(T_WRITE_ZEROES, &[(64, 3, RANGE_F_UNMAP)]), S_OK);
    assert_eq!(d.ranges(T_WRITE_ZEROES, &[(200, 1, 0)]), S_OK);
    let mut model = data.clone();
    for (s, n) in [(8usize, 8usize), (1024, 16), (64, 3), (200, 1)] {
        model[s * 512..(s + n) * 512].fill(0);
    }
    let (st, back) = d.read(0, 2 * MIB);
    assert_eq!(st, S_OK);
    assert!(back == model);
    // The unmap flag is for write zeroes only; reserved flags are refused.
    assert_eq!(d.ranges(T_DISCARD, &[(0, 1, RANGE_F_UNMAP)]), S_UNSUPP);
    assert_eq!(d.ranges(T_WRITE_ZEROES, &[(0, 1, 2)]), S_UNSUPP);
    // Past the end, too many sectors, or not whole ranges: IOERR.
    let end = (4 * MIB / 512) as u64;
    assert_eq!(d.ranges(T_DISCARD, &[(end - 1, 2, 0)]), S_IOERR);
    assert_eq!(
        d.ranges(T_DISCARD, &[(0, MAX_RANGE_SECTORS + 1, 0)]),
        S_IOERR
    );
    assert_eq!(d.run(T_DISCARD, 0, &[0u8; 15], 0).status, S_IOERR);
    let many: Vec<_> = (0..=MAX_RANGES as u64).map(|i| (i, 1, 0)).collect();
    assert_eq!(d.ranges(T_WRITE_ZEROES, &many), S_IOERR);
    assert_eq!(std::fs::read(&path).unwrap()[..2 * MIB], model[..]);

    // Not negotiated: UNSUPP.
    let (_d2, disk, _) = file(MIB);
    let mut h = start_with(
        disk,
        BlockOptions::new("vdb"),
        Fence::new().unwrap(),
        F_DISCARD | F_WRITE_ZEROES,
    );
    let d = &mut h.drivers[0];
    assert_eq!(d.ranges(T_DISCARD, &[(0, 1, 0)]), S_UNSUPP);
    assert_eq!(d.ranges(T_WRITE_ZEROES, &[(0, 1, 0)]), S_UNSUPP);
}

#[test]
fn get_id_answers_the_serial() {
    let (_d, disk, _) = file(MIB);
    let mut opts = BlockOptions::new("vda");
    opts.serial = "ssv-0123".into();
    let mut h = start(disk.clone(), opts);
    let d = &mut h.drivers[0];
    let done = d.run(T_GET_ID, 0, &[], 20);
    assert_eq!(done.status, S_OK);
    assert_eq!(done.used_len, 21);
    let mut want = b"ssv-0123".to_vec();
    want.resize(20, 0);
    assert_eq!(done.data, want);
    // A short buffer gets what fits.
    let done = d.run(T_GET_ID, 0, &[], 4);
    assert_eq!((done.status, &done.data[..]), (S_OK, &b"ssv-"[..]));

    let mut opts = BlockOptions::new("vdb");
    opts.serial = "a-serial-longer-than-twenty-bytes".into();
    let mut h = start(disk, opts);
    let done = h.drivers[0].run(T_GET_ID, 0, &[], 20);
    assert_eq!(done.data, b"a-serial-longer-than".to_vec());
}

#[test]
fn malformed_requests_fail_without_touching_the_disk() {
    let (_d, disk, path) = file(MIB);
    let before = std::fs::read(&path).unwrap();
    let mut h = start(disk, BlockOptions::new("vda"));
    let d = &mut h.drivers[0];
    let sectors = (MIB / 512) as u64;
    // Writes that must not land.
    assert_eq!(d.write(sectors, &[1u8; 512]), S_IOERR, "past the end");
    assert_eq!(
        d.write(sectors - 1, &[1u8; 1024]),
        S_IOERR,
        "across the end"
    );
    assert_eq!(
        d.write(u64::MAX / 256, &[1u8; 512]),
        S_IOERR,
        "sector*512 overflows"
    );
    assert_eq!(d.write(0, &[1u8; 513]), S_IOERR, "not whole sectors");
    assert_eq!(
        d.run(T_IN, 0, &[], 100).status,
        S_IOERR,
        "read of part of a sector"
    );
    assert_eq!(d.run(T_IN, sectors, &[], 512).status, S_IOERR);
    assert_eq!(
        d.run(T_OUT, 0, &[1u8; 512], 512).status,
        S_IOERR,
        "write with writable data"
    );
    assert_eq!(
        d.run(T_IN, 0, &[1u8; 512], 512).status,
        S_IOERR,
        "read with readable data"
    );
    assert_eq!(d.run(99, 0, &[], 0).status, S_UNSUPP, "unknown type");
    assert_eq!(
        d.run(T_GET_ID, 0, &[], 0).status,
        S_IOERR,
        "GET_ID without a buffer"
    );

    let mem = d.mem.clone();
    let status_of = |at: u64| -> u8 { mem.read_obj(GuestAddress(at)).unwrap() };
    let hdr = |d: &mut driver::Driver, kind: u32| {
        let at = d.alloc(16);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        d.mem.write_slice(&h, GuestAddress(at)).unwrap();
        at
    };
    let status_buf = |d: &mut driver::Driver| {
        let at = d.alloc(1);
        d.mem.write_obj(0xffu8, GuestAddress(at)).unwrap();
        at
    };
    let data = d.alloc(512);
    d.mem.write_slice(&[7u8; 512], GuestAddress(data)).unwrap();

    // Short header (split over two descriptors it is fine; 8 bytes is not).
    let h8 = hdr(d, T_OUT);
    let st = status_buf(d);
    let head = d.add(&[
        Buf {
            addr: h8,
            len: 8,
            write: false,
        },
        Buf {
            addr: st,
            len: 1,
            write: true,
        },
    ]);
    d.kick();
    assert_eq!(
        d.try_next_used(Duration::from_secs(10)),
        Some((head.into(), 1))
    );
    assert_eq!(status_of(st), S_IOERR);

    // A header split over two descriptors is well-formed (any layout).
    let hw = hdr(d, T_OUT);
    let st = status_buf(d);
    let head = d.add(&[
        Buf {
            addr: hw,
            len: 5,
            write: false,
        },
        Buf {
            addr: hw + 5,
            len: 11,
            write: false,
        },
        Buf {
            addr: data,
            len: 512,
            write: false,
        },
        Buf {
            addr: st,
            len: 1,
            write: true,
        },
    ]);
    d.kick();
    assert_eq!(
        d.try_next_used(Duration::from_secs(10)),
        Some((head.into(), 1))
    );
    assert_eq!(status_of(st), S_OK);

    // No status byte: nothing to report to, used length 0.
    let hw = hdr(d, T_IN);
    let head = d.add(&[
        Buf {
            addr: hw,
            len: 16,
            write: false,
        },
        Buf {
            addr: data,
            len: 512,
            write: false,
        },
    ]);
    d.kick();
    assert_eq!(
        d.try_next_used(Duration::from_secs(10)),
        Some((head.into(), 0))
    );

    // A header the device would have to write: readable after writable.
    let hw = hdr(d, T_OUT);
    let st = status_buf(d);
    let head = d.add(&[
        Buf {
            addr: data,
            len: 512,
            write: true,
        },
        Buf {
            addr: hw,
            len: 16,
            write: false,
        },
        Buf {
            addr: st,
            len: 1,
            write: true,
        },
    ]);
    d.kick();
    assert_eq!(
        d.try_next_used(Duration::from_secs(10)),
        Some((head.into(), 1))
    );
    assert_eq!(status_of(st), S_IOERR);

    // A buffer outside guest memory.
    let hw = hdr(d, T_IN);
    let st = status_buf(d);
    let end = vm_memory::GuestMemoryBackend::last_addr(&h.mem).0 + 1;
    let head = d.add(&[
        Buf {
            addr: hw,
            len: 16,
            write: false,
        },
        Buf {
            addr: end - 256,
            len: 512,
            write: true,
        },
        Buf {
            addr: st,
            len: 1,
            write: true,
        },
    ]);
    d.kick();
    assert_eq!(
        d.try_next_used(Duration::from_secs(10)),
        Some((head.into(), 1))
    );
    assert_eq!(status_of(st), S_IOERR);

    // A loop: two descriptors pointing at each other, never ending.
    let hw = hdr(d, T_IN);
    d.write_desc(10, hw, 16, DESC_F_NEXT, 11);
    d.write_desc(11, data, 512, DESC_F_NEXT | DESC_F_WRITE, 10);
    d.publish(10);
    d.kick();
    assert_eq!(d.try_next_used(Duration::from_secs(10)), Some((10, 0)));
    // A next index past the table.
    d.write_desc(12, hw, 16, DESC_F_NEXT, 4000);
    d.publish(12);
    d.kick();
    assert_eq!(d.try_next_used(Duration::from_secs(10)), Some((12, 0)));
    // An indirect table (not offered).
    d.write_desc(13, data, 64, DESC_F_INDIRECT, 0);
    d.publish(13);
    d.kick();
    assert_eq!(d.try_next_used(Duration::from_secs(10)), Some((13, 0)));
    // A head past the table: nothing can be returned.
    d.publish(300);
    d.kick();
    assert_eq!(d.try_next_used(Duration::from_millis(300)), None);

    let mut after = std::fs::read(&path).unwrap();
    // The one well-formed write, of sevens at sector 0.
    assert_eq!(&after[..512], &[7u8; 512]);
    after[..512].copy_from_slice(&before[..512]);
    assert!(after == before, "no other byte of the disk changed");
}

#[test]
fn read_only_disk_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let content = pattern(3, MIB);
    let disk = file_disk(dir.path(), "ro", &content, true);
    let mut h = start(disk, BlockOptions::new("ro"));
    let d = &mut h.drivers[0];
    assert_eq!(d.write(0, &[1u8; 512]), S_IOERR);
    assert_eq!(d.ranges(T_DISCARD, &[(0, 1, 0)]), S_UNSUPP, "not offered");
    let (st, back) = d.read(0, MIB);
    assert_eq!(st, S_OK);
    assert!(back == content);
    assert_eq!(d.run(T_FLUSH, 0, &[], 0).status, S_OK);
    assert!(std::fs::read(dir.path().join("ro")).unwrap() == content);
}

#[test]
fn queues_run_in_parallel_on_their_own_threads() {
    let (_d, disk, path) = file(32 * MIB);
    let spy = Spy::new(disk);
    let mut opts = BlockOptions::new("vdm");
    opts.num_queues = 4;
    let mut h = start(spy.clone(), opts);
    let per = 8 * MIB;
    std::thread::scope(|s| {
        for (q, d) in h.drivers.iter_mut().enumerate() {
            s.spawn(move || {
                let base = (q * per / 512) as u64;
                // Several requests in flight at once on each queue.
                for round in 0..8u64 {
                    let ps: Vec<_> = (0..8u64)
                        .map(|i| {
                            let data = pattern(q as u64 * 1000 + round * 8 + i, 64 * 1024);
                            d.submit(T_OUT, base + (round * 8 + i) * 128, &data, 0)
                        })
                        .collect();
                    d.kick();
                    for p in &ps {
                        assert_eq!(d.complete(p).status, S_OK);
                    }
                }
                for i in 0..64u64 {
                    let (st, back) = d.read(base + i * 128, 64 * 1024);
                    assert_eq!(st, S_OK);
                    assert!(back == pattern(q as u64 * 1000 + i, 64 * 1024), "q{q} #{i}");
                }
            });
        }
    });
    let file = std::fs::read(&path).unwrap();
    for q in 0..4 {
        for i in 0..64 {
            let at = q * per + i * 64 * 1024;
            assert!(file[at..at + 64 * 1024] == pattern(q as u64 * 1000 + i as u64, 64 * 1024));
        }
    }
    let threads = spy.threads.lock().unwrap().clone();
    let want: BTreeSet<String> = (0..4).map(|q| format!("vblk-vdm-q{q}")).collect();
    assert_eq!(threads, want);
    for q in 0..4 {
        assert!(h.irq.count(q) > 0, "queue {q} interrupted the guest");
    }
}

#[test]
fn interrupts_only_when_something_was_used() {
    let (_d, disk, _) = file(MIB);
    let mut h = start_with(
        disk,
        BlockOptions::new("vda"),
        Fence::new().unwrap(),
        F_RING_EVENT_IDX,
    );
    let d = &mut h.drivers[0];
    // A kick with nothing available: nothing used, no interrupt.
    d.kick();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(h.irq.count(0), 0);
    assert_eq!(d.write(0, &[1u8; 512]), S_OK);
    // The interrupt follows the used ring update.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.irq.count(0) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(h.irq.count(0), 1);

    // With EVENT_IDX the driver's used_event decides.
    let (_d, disk, _) = file(MIB);
    let mut h = start(disk, BlockOptions::new("vdb"));
    assert_ne!(h.dev.acked_features() & F_RING_EVENT_IDX, 0);
    let d = &mut h.drivers[0];
    d.set_used_event(2); // interrupt once the third entry is used
    d.write(0, &[1u8; 512]);
    d.write(1, &[1u8; 512]);
    assert_eq!(h.irq.count(0), 0, "no interrupt before used_event");
    d.write(2, &[1u8; 512]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.irq.count(0) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(h.irq.count(0), 1, "one interrupt at used_event");
}

#[test]
fn a_tripped_fence_stops_every_request_at_once() {
    let (_d, disk, path) = file(MIB);
    let spy = Spy::new(disk);
    let fence = Fence::new().unwrap();
    let mut h = start_with(spy.clone(), BlockOptions::new("vda"), fence.clone(), 0);
    let d = &mut h.drivers[0];
    assert_eq!(d.write(0, &[5u8; 512]), S_OK);
    fence.trip();
    let calls = spy.calls.load(Ordering::SeqCst);
    assert_eq!(d.write(0, &[6u8; 512]), S_IOERR);
    assert_eq!(d.read(0, 512).0, S_IOERR);
    assert_eq!(d.run(T_FLUSH, 0, &[], 0).status, S_IOERR);
    assert_eq!(d.ranges(T_DISCARD, &[(0, 1, 0)]), S_IOERR);
    assert_eq!(
        spy.calls.load(Ordering::SeqCst),
        calls,
        "no call reached the disk"
    );
    assert_eq!(&std::fs::read(&path).unwrap()[..512], &[5u8; 512]);
}

#[test]
fn reset_stops_the_threads_and_activate_starts_again() {
    let (_d, disk, _) = file(MIB);
    let mut h = start(disk, BlockOptions::new("vda"));
    assert_eq!(h.drivers[0].write(0, &[3u8; 512]), S_OK);
    h.dev.reset();
    // The workers stop off the caller's thread; a driver waits for the reset
    // to show (device status reads 0) before it touches the queue again.
    let t0 = std::time::Instant::now();
    while !h.dev.reset_done() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "reset never finished"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Nobody serves the queue now.
    let p = h.drivers[0].submit(T_IN, 0, &[], 512);
    h.drivers[0].kick();
    assert_eq!(h.drivers[0].try_next_used(Duration::from_millis(200)), None);
    // A fresh queue (the driver set it up again) is served.
    let (mut d, q) = driver::Driver::new(&h.mem, 0, 0x10000, 256, (HEAP, HEAP));
    h.dev
        .activate(h.mem.clone(), h.irq.clone(), vec![q])
        .unwrap();
    let (st, back) = d.read(0, 512);
    assert_eq!((st, back), (S_OK, vec![3u8; 512]));
    drop(p);
    // Too many queues, or a queue not in guest memory, is refused.
    let (_, q0) = driver::Driver::new(&h.mem, 0, 0x10000, 256, (HEAP, HEAP));
    let (_, q1) = driver::Driver::new(&h.mem, 1, 0x20000, 256, (HEAP, HEAP));
    assert!(h
        .dev
        .activate(h.mem.clone(), h.irq.clone(), vec![q0, q1])
        .is_err());
    let q = ActiveQueue {
        index: 0,
        queue: driver::Layout::new(1 << 40, 256).queue(),
        notify: EventFd::new(EFD_NONBLOCK).unwrap(),
    };
    assert!(h
        .dev
        .activate(h.mem.clone(), h.irq.clone(), vec![q])
        .is_err());
}
