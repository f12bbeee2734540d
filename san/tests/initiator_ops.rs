//! The initiator's LU operations beyond read and write, against our target
//! in process (a thin and a fully provisioned file LUN): COMPARE AND WRITE
//! swaps only on a match and reports where a miscompare starts, write-zeroes
//! through WRITE SAME (deallocating on the thin LU), UNMAP where the LU
//! supports it and a clear error where not, BUSY retried until it clears.

use san::iscsi::{login, login::isid, IscsiLun, LoginOptions, Session};
use san::scsi::{cdb, Sense, Status};
use san::target::{Injection, LunConfig, TargetConfig, TargetServer};
use san::{BlockDev, FileDev, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

const IQN: &str = "iqn.2026-11.org.ssv.test:ops";
const SIZE: u64 = 16 << 20;

fn open(server: &TargetServer, lun: u16) -> IscsiLun {
    let c = login(
        server.portals()[0],
        Some(IQN),
        &LoginOptions::new("iqn.2026-11.org.ssv.host:ops", isid(3, lun)),
    )
    .unwrap();
    IscsiLun::open(Session::new(c), lun).unwrap()
}

/// A sparse file of `SIZE` bytes in `dir`, for a LUN.
fn lun_file(dir: &std::path::Path) -> Arc<FileDev> {
    let opts = OpenOptions::new().create_size(Some(SIZE));
    Arc::new(FileDev::open(dir.join("lun"), &opts).unwrap())
}

#[test]
fn compare_and_write_zeroes_unmap_and_busy() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = ["thin", "full"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let devs: Vec<Arc<FileDev>> = files
        .iter()
        .map(|p| Arc::new(FileDev::open(p, &OpenOptions::new().create_size(Some(SIZE))).unwrap()))
        .collect();
    let server = TargetServer::start(TargetConfig::new(
        IQN,
        vec!["127.0.0.1:0".parse().unwrap()],
        vec![
            LunConfig::new(1, devs[0].clone()).thin(true),
            LunConfig::new(2, devs[1].clone()),
        ],
    ))
    .unwrap();
    let thin = open(&server, 1);
    let full = open(&server, 2);

    // COMPARE AND WRITE.
    let old = vec![0x11u8; 1024];
    let new = vec![0x22u8; 1024];
    thin.write_at(&old, 8192).unwrap();
    assert_eq!(thin.compare_and_write(8192, &old, &new).unwrap(), None);
    let mut back = vec![0u8; 1024];
    thin.read_at(&mut back, 8192).unwrap();
    assert_eq!(back, new);
    let mut wrong = new.clone();
    wrong[700] ^= 1;
    assert_eq!(
        thin.compare_and_write(8192, &wrong, &old).unwrap(),
        Some(700)
    );
    thin.read_at(&mut back, 8192).unwrap();
    assert_eq!(back, new, "a miscompare wrote");
    assert!(thin.compare_and_write(8192, &old[..512], &new).is_err());

    // Write-zeroes and UNMAP leave zeroes, in the LU and in the file.
    let ones = vec![0xffu8; 1 << 20];
    for (l, f) in [(&thin, &files[0]), (&full, &files[1])] {
        l.write_at(&ones, 1 << 20).unwrap();
        l.write_zeroes((1 << 20) + 4096, 512 << 10).unwrap();
        let mut b = vec![0u8; 1 << 20];
        l.read_at(&mut b, 1 << 20).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0xff));
        assert!(b[4096..4096 + (512 << 10)].iter().all(|&x| x == 0));
        assert!(b[4096 + (512 << 10)..].iter().all(|&x| x == 0xff));
        let mut on_disk = vec![1u8; 512 << 10];
        std::fs::File::open(f)
            .unwrap()
            .read_exact_at(&mut on_disk, (1 << 20) + 4096)
            .unwrap();
        assert!(on_disk.iter().all(|&x| x == 0));
    }
    thin.write_at(&ones, 4 << 20).unwrap();
    thin.unmap(4 << 20, 1 << 20).unwrap();
    let mut b = vec![1u8; 1 << 20];
    thin.read_at(&mut b, 4 << 20).unwrap();
    assert!(
        b.iter().all(|&x| x == 0),
        "unmapped blocks read as zeroes (LBPRZ)"
    );
    let e = full.unmap(0, 4096).unwrap_err().to_string();
    assert!(e.contains("does not support UNMAP"), "{e}");

    // BUSY three times: retried, the read succeeds.
    server.faults().inject(Injection::status(Status::BUSY, 3));
    thin.read_at(&mut back, 8192).unwrap();
    assert_eq!(back, new);
    server.stop();
}

/// An idle session pings the target (NOP-Out): answered pings keep it up;
/// a blackholed target (connection open, nothing answers) is found dead
/// within the ping interval plus its timeout, with the reason.
#[test]
fn keepalive_finds_a_silent_target() {
    use san::iscsi::SessionOptions;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let dev = lun_file(dir.path());
    let server = TargetServer::start(TargetConfig::new(
        IQN,
        vec!["127.0.0.1:0".parse().unwrap()],
        vec![LunConfig::new(1, dev)],
    ))
    .unwrap();
    let c = login(
        server.portals()[0],
        Some(IQN),
        &LoginOptions::new("iqn.2026-11.org.ssv.host:nop", isid(4, 1)),
    )
    .unwrap();
    let opts = SessionOptions {
        nop_interval: Some(Duration::from_millis(100)),
        nop_timeout: Duration::from_millis(300),
        ..SessionOptions::default()
    };
    let s = Session::with_options(c, opts);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(s.down(), None, "answered pings keep an idle session up");
    server.faults().blackhole(0, true);
    let t = Instant::now();
    while s.down().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a silent target went unnoticed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let why = s.down().unwrap_or_default();
    assert!(why.contains("NOP-Out"), "{why}");
    server.faults().blackhole(0, false);
    server.stop();
}

/// Write-zeroes through a multipath map: WRITE SAME on whichever path is up
/// where the LU takes it, so the map says it zeroes cheaply (thin volumes
/// then zero clusters before mapping them); the range reads as zeroes.
#[test]
fn multipath_zeroes_with_write_same() {
    use san::iscsi::{Multipath, MultipathOptions, PathConfig};
    let dir = tempfile::tempdir().unwrap();
    let dev = lun_file(dir.path());
    let server = TargetServer::start(TargetConfig::new(
        IQN,
        vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.2:0".parse().unwrap(),
        ],
        vec![LunConfig::new(1, dev).thin(true)],
    ))
    .unwrap();
    let paths = server
        .portals()
        .iter()
        .enumerate()
        .map(|(i, &portal)| PathConfig {
            portal,
            target: IQN.into(),
            lun: 1,
            login: LoginOptions::new("iqn.2026-11.org.ssv.host:ops", isid(9, i as u16)),
        })
        .collect();
    let mp = Multipath::open(paths, MultipathOptions::default()).unwrap();
    assert!(mp.zeroes_cheaply());
    let ones = vec![0xffu8; 1 << 20];
    mp.write_at(&ones, 1 << 20).unwrap();
    mp.write_zeroes((1 << 20) + 8192, 256 << 10).unwrap();
    let mut b = vec![1u8; 1 << 20];
    mp.read_at(&mut b, 1 << 20).unwrap();
    let (head, rest) = b.split_at(8192);
    let (zeroed, tail) = rest.split_at(256 << 10);
    assert!(head.iter().chain(tail).all(|&x| x == 0xff));
    assert!(zeroed.iter().all(|&x| x == 0));
    assert!(mp.zeroes_cheaply(), "the LU took WRITE SAME");

    // An LU that refuses WRITE SAME: zeroed with writes, and the map no
    // longer says it zeroes cheaply.
    server
        .faults()
        .inject(Injection::sense(Sense::INVALID_COMMAND_OPCODE, 1).only(cdb::OP_WRITE_SAME_16));
    mp.write_at(&ones, 1 << 20).unwrap();
    mp.write_zeroes((1 << 20) + 8192, 256 << 10).unwrap();
    let mut again = vec![1u8; 1 << 20];
    mp.read_at(&mut again, 1 << 20).unwrap();
    assert_eq!(again, b, "zeroed with writes");
    assert!(!mp.zeroes_cheaply());
    drop(mp);
    server.stop();
}

/// One thread with many reads in flight on one session (`start_read`), of
/// every size from one block to several Data-In PDUs, waited for in
/// reverse order, then in the order they end (`wait_any`): each buffer
/// comes back with its own bytes. A read given up unwaited disturbs
/// nothing after it; one over the LU's transfer limit is read in pieces
/// when waited for; a unit attention or BUSY on a started read is retried
/// when it is waited for; a read past the end is refused before it is
/// sent.
#[test]
fn one_thread_keeps_many_reads_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let dev = lun_file(dir.path());
    let pattern: Vec<u8> = (0..SIZE).map(|i| (i * 13 / 512 + i) as u8).collect();
    dev.write_at(&pattern, 0).unwrap();
    let server = TargetServer::start(TargetConfig::new(
        IQN,
        vec!["127.0.0.1:0".parse().unwrap()],
        vec![LunConfig::new(1, dev)],
    ))
    .unwrap();
    let lun = open(&server, 1);
    let sizes = [512usize, 4096, 64 << 10, 1 << 20];
    let reads: Vec<(u64, usize)> = (0..40u64)
        .map(|i| {
            (
                (i * 7919 % 24) * (512 << 10),
                sizes[i as usize % sizes.len()],
            )
        })
        .collect();
    let check = |off: u64, got: &[u8]| {
        let want = &pattern[off as usize..off as usize + got.len()];
        assert!(got == want, "{} bytes at {off} differ", got.len());
    };
    let mut flight: Vec<_> = reads
        .iter()
        .map(|&(off, len)| (off, lun.start_read(vec![0u8; len], off).unwrap()))
        .collect();
    while let Some((off, p)) = flight.pop() {
        check(off, &p.wait().unwrap());
    }
    drop(flight);
    // The same, each waited for once it ended, in whatever order that is.
    let mut offs: Vec<u64> = reads.iter().map(|r| r.0).collect();
    let mut flight: Vec<_> = reads
        .iter()
        .map(|&(off, len)| lun.start_read(vec![0u8; len], off).unwrap())
        .collect();
    while let Some(i) = lun.wait_any(&flight).unwrap() {
        check(offs.swap_remove(i), &flight.swap_remove(i).wait().unwrap());
    }
    assert!(offs.is_empty());
    drop(flight);

    // Given up: the target still answers it, into nobody's buffer.
    for &(off, len) in &reads[..8] {
        drop(lun.start_read(vec![0u8; len], off).unwrap());
    }
    let p = lun.start_read(vec![0u8; 1 << 20], 3 << 20).unwrap();
    check(3 << 20, &p.wait().unwrap());

    // Over the LU's transfer limit (8 MiB): read in pieces when waited for.
    let big = vec![
        lun.start_read(vec![0u8; 4096], 0).unwrap(),
        lun.start_read(vec![0u8; 12 << 20], 2 << 20).unwrap(),
    ];
    assert_eq!(lun.wait_any(&big).unwrap(), Some(1), "nothing to wait for");
    for (off, p) in [0, 2 << 20].into_iter().zip(big) {
        check(off, &p.wait().unwrap());
    }

    let faults = server.faults();
    faults.inject(Injection::sense(Sense::POWER_ON_RESET, 1).only(cdb::OP_READ_16));
    faults.inject(Injection::status(Status::BUSY, 1).only(cdb::OP_READ_16));
    let a = lun.start_read(vec![0u8; 4096], 4096).unwrap();
    let b = lun.start_read(vec![0u8; 8192], 1 << 20).unwrap();
    check(1 << 20, &b.wait().unwrap());
    check(4096, &a.wait().unwrap());

    let e = lun.start_read(vec![0u8; 4096], SIZE).err().unwrap();
    assert!(matches!(e, san::Error::OutOfRange { .. }), "{e}");
    let e = lun.start_read(vec![0u8; 100], 0).err().unwrap();
    assert!(matches!(e, san::Error::Misaligned { .. }), "{e}");
    drop(lun);
    server.stop();
}
