//! The NBD server with our own test client (`nbd_common`): handshake
//! variants, byte-exact I/O at any alignment against a model, error
//! answers that keep the connection, read-only exports, pipelining and
//! concurrency, export removal and stop.

mod common;
mod nbd_common;

use common::MemDev;
use nbd_common::*;
use proptest::prelude::*;
use san::nbd::proto::{self, Info};
use san::nbd::{NbdConfig, NbdError, NbdServer};
use san::{BlockDev, FaultControl, FaultDev};
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn mem(size: usize, sector: u32) -> Arc<MemDev> {
    Arc::new(MemDev::new(size, sector))
}

/// Expects the server to close the connection (EOF or reset) soon.
fn expect_closed(c: &mut dyn Conn) {
    let mut b = [0u8; 64];
    loop {
        match c.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[test]
fn go_reports_size_flags_and_block_sizes() {
    let fx = Fixture::new();
    fx.server.add_export("a", mem(MIB, 512), false).unwrap();
    fx.server.add_export("b", mem(MIB, 4096), true).unwrap();
    let c = Client::go_unix(&fx.path(), "a");
    assert_eq!(c.size, MIB as u64);
    let want = proto::FLAG_HAS_FLAGS
        | proto::FLAG_SEND_FLUSH
        | proto::FLAG_SEND_FUA
        | proto::FLAG_SEND_TRIM
        | proto::FLAG_SEND_WRITE_ZEROES
        | proto::FLAG_CAN_MULTI_CONN;
    assert_eq!(c.flags, want);
    let b = c.block.unwrap();
    assert_eq!((b.min, b.preferred, b.max), (512, 4096, 32 << 20));
    c.disconnect();
    let c = Client::go_unix(&fx.path(), "b");
    assert_eq!(
        c.flags,
        proto::FLAG_HAS_FLAGS
            | proto::FLAG_READ_ONLY
            | proto::FLAG_SEND_FLUSH
            | proto::FLAG_CAN_MULTI_CONN
    );
    assert_eq!(c.block.unwrap().min, 4096);
    c.disconnect();
    fx.settle();
}

#[test]
fn export_name_with_and_without_zeroes() {
    let fx = Fixture::new();
    let dev = mem(MIB, 512);
    fx.server.add_export("x", dev, false).unwrap();
    for no_zeroes in [false, true] {
        let mut c = Client::export_name(connect_unix(&fx.path()), "x", no_zeroes).unwrap();
        assert_eq!(c.size, MIB as u64);
        c.write(0, &[9; 512], 0).unwrap();
        assert_eq!(c.read(0, 512).unwrap(), vec![9; 512]);
        c.disconnect();
    }
    // An unknown name cannot be answered: the server closes.
    let mut s = connect_unix(&fx.path());
    greet(&mut s, proto::FLAG_C_FIXED_NEWSTYLE).unwrap();
    send_option(&mut s, proto::OPT_EXPORT_NAME, b"nosuch").unwrap();
    expect_closed(&mut s);
    fx.settle();
}

#[test]
fn options_list_info_unsupported_invalid_abort() {
    let fx = Fixture::new();
    fx.server.add_export("one", mem(MIB, 512), false).unwrap();
    fx.server
        .add_export("two", mem(2 * MIB, 512), true)
        .unwrap();
    let mut s = connect_unix(&fx.path());
    let server_flags = greet(&mut s, proto::FLAG_C_FIXED_NEWSTYLE).unwrap();
    assert_eq!(
        server_flags,
        proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES
    );
    send_option(&mut s, proto::OPT_LIST, &[]).unwrap();
    let mut names = Vec::new();
    loop {
        let (kind, data) = read_option_reply(&mut s, proto::OPT_LIST).unwrap();
        if kind == proto::REP_ACK {
            break;
        }
        assert_eq!(kind, proto::REP_SERVER);
        names.push(String::from_utf8(proto::decode_rep_server(&data).unwrap()).unwrap());
    }
    assert_eq!(names, ["one", "two"]);
    send_option(&mut s, proto::OPT_LIST, b"junk").unwrap();
    let (kind, _) = read_option_reply(&mut s, proto::OPT_LIST).unwrap();
    assert_eq!(kind, proto::REP_ERR_INVALID);
    // INFO does not end the handshake.
    let infos = info_or_go(&mut s, proto::OPT_INFO, "two", &[proto::INFO_NAME])
        .unwrap()
        .unwrap();
    assert!(infos.contains(&Info::Name(b"two".to_vec())));
    assert!(infos
        .iter()
        .any(|i| matches!(i, Info::Export { size, flags }
        if *size == 2 * MIB as u64 && flags & proto::FLAG_READ_ONLY != 0)));
    let err = info_or_go(&mut s, proto::OPT_INFO, "nosuch", &[]).unwrap();
    assert_eq!(err.unwrap_err().0, proto::REP_ERR_UNKNOWN);
    let err = info_or_go(&mut s, proto::OPT_GO, "nosuch", &[]).unwrap();
    assert_eq!(err.unwrap_err().0, proto::REP_ERR_UNKNOWN);
    for opt in [
        proto::OPT_STRUCTURED_REPLY,
        proto::OPT_STARTTLS,
        proto::OPT_SET_META_CONTEXT,
        4242,
    ] {
        send_option(&mut s, opt, &[]).unwrap();
        assert_eq!(
            read_option_reply(&mut s, opt).unwrap().0,
            proto::REP_ERR_UNSUP
        );
    }
    // GO data whose lengths do not add up.
    send_option(&mut s, proto::OPT_GO, &[0, 0, 0, 9, b'o', 0, 0]).unwrap();
    let (kind, _) = read_option_reply(&mut s, proto::OPT_GO).unwrap();
    assert_eq!(kind, proto::REP_ERR_INVALID);
    // Too much option data is skipped and refused.
    let big = vec![0u8; proto::MAX_OPTION_DATA as usize + 1];
    send_option(&mut s, proto::OPT_INFO, &big).unwrap();
    let (kind, _) = read_option_reply(&mut s, proto::OPT_INFO).unwrap();
    assert_eq!(kind, proto::REP_ERR_TOO_BIG);
    send_option(&mut s, proto::OPT_ABORT, &[]).unwrap();
    assert_eq!(
        read_option_reply(&mut s, proto::OPT_ABORT).unwrap().0,
        proto::REP_ACK
    );
    expect_closed(&mut s);
    fx.settle();
}

#[test]
fn client_flags_not_offered_end_the_handshake() {
    let fx = Fixture::new();
    let mut s = connect_unix(&fx.path());
    greet(&mut s, 1 << 7).unwrap();
    expect_closed(&mut s);
    fx.settle();
}

#[test]
fn default_export_and_names() {
    let fx = Fixture::new();
    fx.server.add_export("", mem(MIB, 512), false).unwrap();
    assert!(matches!(
        fx.server.add_export("", mem(MIB, 512), false),
        Err(NbdError::ExportExists(_))
    ));
    assert!(matches!(
        fx.server.add_export("a\0b", mem(MIB, 512), false),
        Err(NbdError::BadExportName(_))
    ));
    let long = "n".repeat(4097);
    assert!(matches!(
        fx.server.add_export(&long, mem(MIB, 512), false),
        Err(NbdError::BadExportName(_))
    ));
    assert_eq!(fx.server.export_names(), [""]);
    let c = Client::go_unix(&fx.path(), "");
    assert_eq!(c.size, MIB as u64);
    c.disconnect();
    fx.settle();
}

#[test]
fn start_needs_a_listener_and_sane_workers() {
    assert!(matches!(
        NbdServer::start(NbdConfig::new()),
        Err(NbdError::Config(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    assert!(matches!(
        NbdServer::start(NbdConfig::new().unix(&path).workers(0)),
        Err(NbdError::Config(_))
    ));
    let s = NbdServer::start(NbdConfig::new().unix(&path)).unwrap();
    assert!(matches!(
        NbdServer::start(NbdConfig::new().unix(&path)),
        Err(NbdError::Bind { .. })
    ));
    s.stop();
    assert!(!path.exists(), "the socket file is left behind");
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: u32,
        fua: bool,
        seed: u8,
    },
    Read {
        off: u64,
        len: u32,
    },
    Zero {
        off: u64,
        len: u32,
        no_hole: bool,
    },
    Trim {
        off: u64,
        len: u32,
    },
    Flush,
}

fn op(size: u64) -> impl Strategy<Value = Op> {
    let range =
        (0..size).prop_flat_map(move |off| (Just(off), 0..=((size - off).min(20_000)) as u32));
    prop_oneof![
        (range.clone(), any::<bool>(), any::<u8>()).prop_map(|((off, len), fua, seed)| Op::Write {
            off,
            len,
            fua,
            seed
        }),
        range.clone().prop_map(|(off, len)| Op::Read { off, len }),
        (range.clone(), any::<bool>()).prop_map(|((off, len), no_hole)| Op::Zero {
            off,
            len,
            no_hole
        }),
        range.prop_map(|(off, len)| Op::Trim { off, len }),
        Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any byte range, any sector size: the device ends up as a plain byte
    /// array model says, and reads return the model's bytes.
    #[test]
    fn any_byte_range_matches_a_model(
        sector in prop::sample::select(vec![512u32, 4096]),
        ops in prop::collection::vec(op(64 << 10), 1..40),
    ) {
        let size = 64 << 10;
        let fx = Fixture::new();
        let dev = mem(size, sector);
        let init = common::pattern(size, 7);
        dev.write_at(&init, 0).unwrap();
        fx.server.add_export("m", dev.clone(), false).unwrap();
        let mut model = init;
        let mut c = Client::export_name(connect_unix(&fx.path()), "m", true).unwrap();
        for op in ops {
            match op {
                Op::Write { off, len, fua, seed } => {
                    let data = common::pattern(len as usize, seed);
                    let flags = if fua { proto::CMD_FLAG_FUA } else { 0 };
                    c.write(off, &data, flags).unwrap();
                    model[off as usize..off as usize + len as usize].copy_from_slice(&data);
                }
                Op::Read { off, len } => {
                    let got = c.read(off, len).unwrap();
                    prop_assert!(got[..] == model[off as usize..off as usize + len as usize]);
                }
                Op::Zero { off, len, no_hole } => {
                    let flags = if no_hole { proto::CMD_FLAG_NO_HOLE } else { 0 };
                    c.zeroes(off, len, flags).unwrap();
                    model[off as usize..off as usize + len as usize].fill(0);
                }
                // A no-op: the data stays (which the spec allows).
                Op::Trim { off, len } => c.trim(off, len).unwrap(),
                Op::Flush => c.flush().unwrap(),
            }
        }
        c.disconnect();
        prop_assert!(dev.snapshot() == model);
        fx.settle();
    }
}

#[test]
fn errors_are_answered_and_the_connection_kept() {
    let fx = Fixture::new();
    let dev = mem(MIB, 512);
    fx.server.add_export("e", dev.clone(), false).unwrap();
    let mut c = Client::go_unix(&fx.path(), "e");
    let end = MIB as u64;
    assert_eq!(c.read(end - 512, 1024), Err(proto::EINVAL));
    assert_eq!(c.read(u64::MAX - 10, 100), Err(proto::EINVAL));
    assert_eq!(c.write(end - 1, &[1, 2], 0), Err(proto::ENOSPC));
    assert_eq!(c.zeroes(end, 1, 0), Err(proto::ENOSPC));
    assert_eq!(c.trim(end, 512), Err(proto::EINVAL));
    // Too large: refused, a write's payload is consumed.
    let too_big = proto::MAX_REQUEST + 512;
    assert_eq!(c.read(0, too_big), Err(proto::EINVAL));
    assert_eq!(
        c.write(0, &vec![5u8; too_big as usize], 0),
        Err(proto::EINVAL)
    );
    // Unknown command, unknown or misplaced flags.
    let k = c.send(99, 0, 0, 0, &[]);
    assert_eq!(c.recv(), (k, proto::EINVAL));
    let k = c.send(proto::CMD_READ, proto::CMD_FLAG_DF, 0, 512, &[]);
    assert_eq!(c.recv(), (k, proto::EINVAL));
    let k = c.send(proto::CMD_WRITE, proto::CMD_FLAG_NO_HOLE, 0, 3, &[7, 7, 7]);
    assert_eq!(c.recv(), (k, proto::EINVAL));
    let k = c.send(proto::CMD_BLOCK_STATUS, 0, 0, 512, &[]);
    assert_eq!(c.recv(), (k, proto::EINVAL));
    // Nothing of the refused writes reached the device; the connection works.
    assert!(dev.snapshot().iter().all(|&b| b == 0));
    c.write(0, &[3; 1000], 0).unwrap();
    assert_eq!(c.read(0, 1000).unwrap(), vec![3; 1000]);
    assert_eq!(c.read(end, 0).unwrap(), Vec::<u8>::new());
    c.disconnect();
    fx.settle();
}

#[test]
fn io_errors_become_eio() {
    let fx = Fixture::new();
    let ctl = FaultControl::new();
    let dev = Arc::new(FaultDev::new(mem(MIB, 512), ctl.clone()));
    fx.server.add_export("f", dev, false).unwrap();
    let mut c = Client::go_unix(&fx.path(), "f");
    ctl.fail_reads(Some(4096..8192));
    ctl.fail_writes(Some(0..512));
    assert_eq!(c.read(4096, 512), Err(proto::EIO));
    assert_eq!(c.write(0, &[1; 512], 0), Err(proto::EIO));
    // The read of the edge sector fails before anything is written.
    assert_eq!(c.write(4100, &[1; 10], 0), Err(proto::EIO));
    assert_eq!(c.read(0, 4096).unwrap(), vec![0; 4096]);
    ctl.reset();
    c.write(4100, &[1; 10], 0).unwrap();
    c.disconnect();
    fx.settle();
}

#[test]
fn read_only_export_answers_eperm() {
    let fx = Fixture::new();
    let dev = mem(MIB, 512);
    dev.write_at(&[4; 512], 0).unwrap();
    fx.server.add_export("ro", dev.clone(), true).unwrap();
    let mut c = Client::go_unix(&fx.path(), "ro");
    assert_eq!(c.write(0, &[1; 512], 0), Err(proto::EPERM));
    assert_eq!(c.zeroes(0, 512, 0), Err(proto::EPERM));
    assert_eq!(c.trim(0, 512), Err(proto::EPERM));
    assert_eq!(c.read(0, 512).unwrap(), vec![4; 512]);
    c.flush().unwrap();
    c.disconnect();
    assert_eq!(&dev.snapshot()[..512], &[4; 512]);
    fx.settle();
}

#[test]
fn flush_and_fua_reach_the_device() {
    let fx = Fixture::new();
    let dev = mem(MIB, 512);
    fx.server.add_export("d", dev.clone(), false).unwrap();
    let mut c = Client::go_unix(&fx.path(), "d");
    c.flush().unwrap();
    assert_eq!(dev.flushes.load(Ordering::SeqCst), 1);
    c.write(0, &[1; 512], 0).unwrap();
    assert_eq!(dev.flushes.load(Ordering::SeqCst), 1);
    c.write(0, &[1; 512], proto::CMD_FLAG_FUA).unwrap();
    c.zeroes(0, 100, proto::CMD_FLAG_FUA).unwrap();
    assert_eq!(dev.flushes.load(Ordering::SeqCst), 3);
    c.disconnect();
    fx.settle();
}

/// Many requests in flight on one connection: every reply comes, matched
/// by cookie, and a slow device's requests overlap.
#[test]
fn pipelined_requests_overlap() {
    let fx = Fixture::with(NbdConfig::new().workers(8));
    let ctl = FaultControl::new();
    let inner = mem(MIB, 512);
    let dev = Arc::new(FaultDev::new(inner.clone(), ctl.clone()));
    fx.server.add_export("p", dev, false).unwrap();
    let mut c = Client::go_unix(&fx.path(), "p");
    // 64 writes of distinct 4 KiB blocks, sent without waiting.
    let mut want = HashMap::new();
    for i in 0..64u64 {
        let data = common::pattern(4096, i as u8);
        let k = c.send(proto::CMD_WRITE, 0, i * 4096, 4096, &data);
        want.insert(k, ());
    }
    for _ in 0..64 {
        let (k, err) = c.recv();
        assert_eq!(err, 0);
        assert!(want.remove(&k).is_some(), "unexpected cookie {k}");
    }
    // 16 reads of 100 ms each: with 8 workers well under 1.6 s.
    ctl.set_delay(Duration::from_millis(100), Duration::ZERO);
    let start = Instant::now();
    let mut reads = HashMap::new();
    for i in 0..16u64 {
        reads.insert(c.send(proto::CMD_READ, 0, i * 4096, 4096, &[]), i);
    }
    for _ in 0..16 {
        let (k, err) = c.recv();
        assert_eq!(err, 0);
        let i = reads.remove(&k).expect("unknown cookie");
        let mut d = vec![0u8; 4096];
        c.s.read_exact(&mut d).unwrap();
        assert!(
            d == common::pattern(4096, i as u8),
            "read {i} returned other data"
        );
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "reads did not overlap: {took:?}"
    );
    c.disconnect();
    fx.settle();
}

/// Unaligned writes to different bytes of the same sectors, from several
/// connections at once and pipelined on each: none is lost to another's
/// read-modify-write.
#[test]
fn concurrent_unaligned_writes_keep_every_byte() {
    let fx = Fixture::new();
    let dev = mem(64 << 10, 4096);
    fx.server.add_export("c", dev.clone(), false).unwrap();
    let path = fx.path();
    const CONNS: usize = 4;
    const CHUNK: usize = 100;
    let chunks = (64 << 10) / CHUNK;
    std::thread::scope(|s| {
        for t in 0..CONNS {
            let path = path.clone();
            s.spawn(move || {
                let mut c = Client::go_unix(&path, "c");
                let mine: Vec<usize> = (0..chunks).filter(|i| i % CONNS == t).collect();
                for &i in &mine {
                    c.send(
                        proto::CMD_WRITE,
                        0,
                        (i * CHUNK) as u64,
                        CHUNK as u32,
                        &[t as u8 + 1; CHUNK],
                    );
                }
                for _ in &mine {
                    assert_eq!(c.recv().1, 0);
                }
                c.disconnect();
            });
        }
    });
    let d = dev.snapshot();
    for i in 0..chunks {
        let want = (i % CONNS) as u8 + 1;
        assert!(
            d[i * CHUNK..(i + 1) * CHUNK].iter().all(|&b| b == want),
            "chunk {i} lost its write"
        );
    }
    fx.settle();
}

#[test]
fn remove_export_closes_its_connections() {
    let fx = Fixture::new();
    fx.server.add_export("x", mem(MIB, 512), false).unwrap();
    fx.server.add_export("y", mem(MIB, 512), false).unwrap();
    let mut a = Client::go_unix(&fx.path(), "x");
    let mut b = Client::go_unix(&fx.path(), "y");
    a.write(0, &[1; 512], 0).unwrap();
    assert!(fx.server.remove_export("x"));
    assert!(!fx.server.remove_export("x"));
    expect_closed(&mut *a.s);
    b.write(0, &[2; 512], 0).unwrap();
    let mut s = connect_unix(&fx.path());
    greet(&mut s, proto::FLAG_C_FIXED_NEWSTYLE).unwrap();
    let err = info_or_go(&mut s, proto::OPT_GO, "x", &[]).unwrap();
    assert_eq!(err.unwrap_err().0, proto::REP_ERR_UNKNOWN);
    drop(s);
    fx.server.add_export("x", mem(MIB, 512), false).unwrap();
    let mut a = Client::go_unix(&fx.path(), "x");
    assert_eq!(a.read(0, 512).unwrap(), vec![0; 512]);
    a.disconnect();
    b.disconnect();
    fx.settle();
}

#[test]
fn stop_closes_connections() {
    let fx = Fixture::new();
    fx.server.add_export("s", mem(MIB, 512), false).unwrap();
    let mut c = Client::go_unix(&fx.path(), "s");
    c.write(0, &[1; 512], 0).unwrap();
    // One connection still in the handshake.
    let mut h = connect_unix(&fx.path());
    greet(&mut h, proto::FLAG_C_FIXED_NEWSTYLE).unwrap();
    let path = fx.path();
    let start = Instant::now();
    fx.server.stop();
    assert!(start.elapsed() < Duration::from_secs(5));
    expect_closed(&mut *c.s);
    expect_closed(&mut h);
    assert!(!path.exists());
}

#[test]
fn tcp_listener_serves_too() {
    let fx = Fixture::with(NbdConfig::new().tcp("127.0.0.1:0".parse().unwrap()));
    fx.server.add_export("t", mem(MIB, 512), false).unwrap();
    let addr = fx.server.tcp_addr().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Client::go(s, "t").unwrap();
    c.write(512, &[8; 1536], 0).unwrap();
    assert_eq!(c.read(512, 1536).unwrap(), vec![8; 1536]);
    c.disconnect();
    fx.settle();
}
