//! Our multipath over real tgtd with two portals (127.0.0.1, 127.0.0.2).
//! A writer keeps writing and verifying through the map while paths are
//! cut three ways: the target closes a connection (`tgtadm --mode conn
//! --op delete`), a portal is blackholed (iptables DROP), and the whole
//! target hangs (SIGSTOP). One path lost costs no error; all paths lost
//! queues I/O, which resumes when a path returns within no_path_retry and
//! fails with a clear error after it.

use san::iscsi::{
    login::isid, LoginOptions, Multipath, MultipathOptions, PathConfig, PathEvent, Selector,
};
use san::BlockDev;
use ssv_tests::tgtd::{iptables_skip_reason, LunOpts, Tgtd, TgtdOpts};
use ssv_tests::{skip_unless_tgtd, Scratch, MIB};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-11.org.ssv.test:mpath";
const ME: &str = "iqn.2026-11.org.ssv.host:mpath";
const NO_PATH_RETRY: Duration = Duration::from_secs(6);

fn paths(t: &Tgtd) -> Vec<PathConfig> {
    ["127.0.0.1", "127.0.0.2"]
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let mut login = LoginOptions::new(ME, isid(0x0042_4242, i as u16));
            login.timeout = Duration::from_secs(2);
            PathConfig {
                portal: format!("{ip}:{}", t.port()).parse().unwrap(),
                target: IQN.into(),
                lun: 1,
                login,
            }
        })
        .collect()
}

/// Waits for an event matching `want`, up to `limit`.
fn wait_event(
    rx: &Receiver<PathEvent>,
    limit: Duration,
    want: impl Fn(&PathEvent) -> bool,
) -> PathEvent {
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) if want(&e) => return e,
            Ok(_) => {}
            Err(_) => panic!("no matching path event within {limit:?}"),
        }
    }
}

fn block(i: u64) -> Vec<u8> {
    let mut b = vec![(i % 251) as u8 | 1; 4096];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b
}

/// Sets its flag when dropped, panicking or not.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn paths_fail_over_queue_and_fail_cleanly() {
    skip_unless_tgtd!();
    let dir = Scratch::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR")))).unwrap();
    let file = dir.path().join("lun");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let mut t = Tgtd::start(TgtdOpts::with_portals(&["127.0.0.2"])).unwrap();
    t.add_target(1, IQN).unwrap();
    t.add_lun(1, 1, &file, &LunOpts::default()).unwrap();
    t.bind_all(1).unwrap();

    let opts = MultipathOptions {
        selector: Selector::RoundRobin,
        no_path_retry: NO_PATH_RETRY,
        polling_interval: Duration::from_millis(500),
        io_timeout: Duration::from_secs(2),
    };
    let mp = Multipath::open(paths(&t), opts).unwrap();
    let (tx, events) = channel();
    mp.subscribe(tx);
    assert!(mp.status().iter().all(|p| p.up), "{:?}", mp.status());

    // Zeroing through the map (tgtd takes WRITE SAME without UNMAP).
    mp.write_at(&vec![0xffu8; 64 << 10], 0).unwrap();
    mp.write_zeroes(4096, 32 << 10).unwrap();
    let mut b = vec![1u8; 64 << 10];
    mp.read_at(&mut b, 0).unwrap();
    assert!(b[..4096].iter().chain(&b[36 << 10..]).all(|&x| x == 0xff));
    assert!(b[4096..36 << 10].iter().all(|&x| x == 0));

    // A writer that writes a block, reads it back, and counts errors.
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    std::thread::scope(|s| {
        // A failed assertion below must stop the writer, or the scope
        // would wait for it for ever.
        let _stop = StopOnDrop(&stop);
        let writer = s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let off = (i % 4096) * 4096;
                let data = block(i);
                let r = mp.write_at(&data, off).and_then(|()| {
                    let mut back = vec![0u8; 4096];
                    mp.read_at(&mut back, off)?;
                    assert!(back == data, "block {i} read back differs");
                    Ok(())
                });
                match r {
                    Ok(()) => written.fetch_add(1, Ordering::Relaxed),
                    // The first few: past no_path_retry each write fails
                    // at once.
                    Err(e) => {
                        let n = errors.fetch_add(1, Ordering::Relaxed);
                        if n < 3 {
                            eprintln!("writer: {e}");
                        }
                        n
                    }
                };
                i += 1;
            }
        });
        let progress = |what: &str| {
            eprintln!("paths_fail_over: I/O {what}");
            let before = written.load(Ordering::Relaxed);
            let end = Instant::now() + Duration::from_secs(10);
            while written.load(Ordering::Relaxed) < before + 50 {
                assert!(Instant::now() < end, "no I/O progress {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        progress("at start");

        // 1. The target closes path 0's connection: no error, the path
        //    returns (same ISID, session reinstated).
        let nexus = t.wait_session(1, ME, Duration::from_secs(5)).unwrap();
        t.kill_connection(1, nexus.sid, 0).unwrap();
        let down = wait_event(&events, Duration::from_secs(10), |e| {
            matches!(e, PathEvent::Down { .. })
        });
        progress("after a connection kill");
        let PathEvent::Down { path, .. } = down else {
            unreachable!()
        };
        wait_event(
            &events,
            Duration::from_secs(10),
            |e| matches!(e, PathEvent::Up { path: p, .. } if *p == path),
        );
        progress("after the path returned");
        assert_eq!(
            errors.load(Ordering::Relaxed),
            0,
            "one path cut by RST cost errors"
        );

        // 2. Blackhole 127.0.0.2: its I/O times out and moves over.
        match iptables_skip_reason() {
            Some(why) => eprintln!("SKIPPED (blackhole part): {why}"),
            None => {
                let rule = t.block_portal("127.0.0.2").unwrap();
                wait_event(&events, Duration::from_secs(15), |e| {
                    matches!(e, PathEvent::Down { path: 1, .. })
                });
                progress("with 127.0.0.2 blackholed");
                drop(rule);
                wait_event(&events, Duration::from_secs(15), |e| {
                    matches!(e, PathEvent::Up { path: 1, .. })
                });
                progress("after the blackhole lifted");
                assert_eq!(
                    errors.load(Ordering::Relaxed),
                    0,
                    "a blackholed path cost errors"
                );
            }
        }

        // 3. The whole target hangs, shorter than no_path_retry: I/O
        //    queues and resumes with no error.
        eprintln!("paths_fail_over: the target hangs, briefly");
        t.pause().unwrap();
        wait_event(&events, Duration::from_secs(15), |e| {
            *e == PathEvent::Queueing
        });
        let stalled = written.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            written.load(Ordering::Relaxed) <= stalled + 1,
            "I/O went on with no path"
        );
        t.resume().unwrap();
        wait_event(&events, Duration::from_secs(10), |e| {
            matches!(e, PathEvent::Up { .. })
        });
        progress("after the target resumed");
        assert_eq!(
            errors.load(Ordering::Relaxed),
            0,
            "a short outage of all paths cost errors"
        );

        // 4. Longer than no_path_retry: I/O fails, saying why, then works
        //    again once a path returns.
        eprintln!("paths_fail_over: the target hangs past no_path_retry");
        t.pause().unwrap();
        wait_event(&events, Duration::from_secs(15), |e| {
            *e == PathEvent::Queueing
        });
        wait_event(&events, NO_PATH_RETRY + Duration::from_secs(5), |e| {
            *e == PathEvent::Failing
        });
        let end = Instant::now() + Duration::from_secs(5);
        while errors.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < end, "no error after no_path_retry");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut b = vec![0u8; 4096];
        let e = mp.read_at(&mut b, 0).unwrap_err().to_string();
        assert!(e.contains("no_path_retry"), "{e}");
        t.resume().unwrap();
        wait_event(&events, Duration::from_secs(10), |e| {
            matches!(e, PathEvent::Up { .. })
        });
        let before = errors.load(Ordering::Relaxed);
        progress("after the long outage");
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(
            errors.load(Ordering::Relaxed) <= before + 1,
            "errors went on after a path returned"
        );
    });
    drop(mp);
    t.stop().unwrap();
}

/// Multipath queues exactly as long as lockd's leases can live without
/// renewal, for every io_timeout, and by default for lockd's default.
#[test]
fn no_path_retry_matches_the_lease_renewal_window() {
    use lockd::timing::{Timeouts, DEFAULT_IO_TIMEOUT};
    use san::iscsi::multipath::{no_path_retry_for, DEFAULT_NO_PATH_RETRY};
    for io in [1, 5, 10, 20] {
        let t = Timeouts::new(io, 60).unwrap();
        assert_eq!(
            no_path_retry_for(t.io()),
            t.id_renewal_fail(),
            "io_timeout {io}"
        );
    }
    let d = Timeouts::new(DEFAULT_IO_TIMEOUT, 60).unwrap();
    assert_eq!(DEFAULT_NO_PATH_RETRY, d.id_renewal_fail());
}

/// Two paths with one ISID would be one I_T nexus, each login killing the
/// other's session: refused before any login, saying why.
#[test]
fn paths_sharing_an_isid_are_refused() {
    let p = |port: u16| PathConfig {
        portal: format!("127.0.0.1:{port}").parse().unwrap(),
        target: IQN.into(),
        lun: 1,
        login: LoginOptions::new(ME, isid(1, 0)),
    };
    match Multipath::open(vec![p(1), p(2)], MultipathOptions::default()) {
        Err(e) => assert!(e.to_string().contains("share an ISID"), "{e}"),
        Ok(_) => panic!("two paths with one ISID were accepted"),
    }
}
