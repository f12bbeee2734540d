//! Hostile input to a live NBD server: arbitrary bytes, and valid sessions
//! (handshake options, then requests of every kind) with bytes changed,
//! inserted or cut, go to its Unix socket. Every connection must end by
//! itself once the peer stops sending, no connection thread may panic, and
//! a well-formed client still works after each case.

mod common;
mod nbd_common;

use common::MemDev;
use nbd_common::{Client, Fixture};
use proptest::prelude::*;
use proptest::sample::Index;
use san::nbd::proto::{self, InfoRequest, OptionHeader, Request};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// One server for every case (cases run one after another).
static FX: LazyLock<Fixture> = LazyLock::new(|| {
    let fx = Fixture::new();
    fx.server
        .add_export("f", Arc::new(MemDev::new(1 << 20, 512)), false)
        .unwrap();
    fx.server
        .add_export("ro", Arc::new(MemDev::new(1 << 20, 4096)), true)
        .unwrap();
    // Only `still_serving` uses it (the cases write anywhere on "f").
    fx.server
        .add_export("probe", Arc::new(MemDev::new(1 << 20, 512)), false)
        .unwrap();
    fx
});

/// How long the server may take to close after the peer's last byte.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// Sends `bytes` to the shared server (see [`feed_to`]).
fn feed(bytes: &[u8]) {
    feed_to(&FX.path(), bytes)
}

/// Sends `bytes`, half-closes, and waits for the server to close its side.
fn feed_to(path: &Path, bytes: &[u8]) {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    // Send from another thread: the server may answer while we send.
    let mut w = s.try_clone().unwrap();
    let data = bytes.to_vec();
    let sender = std::thread::spawn(move || {
        let _ = w.write_all(&data);
        let _ = w.shutdown(Shutdown::Write);
    });
    let start = Instant::now();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => assert!(start.elapsed() < CLOSE_WITHIN, "the server keeps talking"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server did not close the connection within {CLOSE_WITHIN:?}")
            }
            Err(_) => break,
        }
    }
    sender.join().unwrap();
}

/// A fresh client still gets through, and nothing has panicked.
fn still_serving() {
    let mut c = Client::go_unix(&FX.path(), "probe");
    c.write(4096, &[0x5a; 700], 0).unwrap();
    assert_eq!(c.read(4096, 700).unwrap(), vec![0x5a; 700]);
    c.disconnect();
    assert_eq!(FX.server.stats().panics, 0, "a connection thread panicked");
}

fn option(b: &mut Vec<u8>, option: u32, data: &[u8]) {
    b.extend_from_slice(&proto::encode_option_header(&OptionHeader {
        option,
        len: data.len() as u32,
    }));
    b.extend_from_slice(data);
}

fn request(b: &mut Vec<u8>, kind: u16, flags: u16, offset: u64, len: u32, cookie: u64) {
    b.extend_from_slice(&proto::encode_request(&Request {
        flags,
        kind,
        cookie,
        offset,
        len,
    }));
    if kind == proto::CMD_WRITE {
        b.extend(std::iter::repeat_n(cookie as u8, len as usize));
    }
}

/// A complete, valid session as one byte stream; `go` picks NBD_OPT_GO
/// over NBD_OPT_EXPORT_NAME.
fn valid_session(go: bool, export: &str) -> Vec<u8> {
    let mut b = (proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    option(&mut b, proto::OPT_LIST, &[]);
    let info = proto::encode_info_request(&InfoRequest {
        name: export.as_bytes().to_vec(),
        infos: vec![proto::INFO_BLOCK_SIZE, proto::INFO_NAME],
    });
    option(&mut b, proto::OPT_INFO, &info);
    option(&mut b, proto::OPT_STRUCTURED_REPLY, &[]);
    if go {
        option(&mut b, proto::OPT_GO, &info);
    } else {
        option(&mut b, proto::OPT_EXPORT_NAME, export.as_bytes());
    }
    request(&mut b, proto::CMD_WRITE, 0, 100, 1000, 1);
    request(&mut b, proto::CMD_READ, 0, 0, 4096, 2);
    request(&mut b, proto::CMD_WRITE, proto::CMD_FLAG_FUA, 8192, 4096, 3);
    request(
        &mut b,
        proto::CMD_WRITE_ZEROES,
        proto::CMD_FLAG_NO_HOLE,
        3,
        9000,
        4,
    );
    request(&mut b, proto::CMD_TRIM, 0, 0, 65536, 5);
    request(&mut b, proto::CMD_FLUSH, 0, 0, 0, 6);
    request(&mut b, proto::CMD_READ, 0, 1 << 20, 512, 7);
    request(&mut b, proto::CMD_DISC, 0, 0, 0, 8);
    b
}

#[test]
fn valid_sessions_pass() {
    for (go, export) in [(true, "f"), (false, "f"), (true, "ro"), (false, "ro")] {
        feed(&valid_session(go, export));
    }
    still_serving();
}

/// Random request headers (valid magic) after a valid handshake.
fn requests() -> impl Strategy<Value = Vec<(u16, u16, u64, u32)>> {
    let kind = prop_oneof![0u16..10, any::<u16>()];
    let offset = prop_oneof![0u64..(2 << 20), any::<u64>()];
    let len = prop_oneof![0u32..70_000, Just(proto::MAX_REQUEST + 1), any::<u32>()];
    prop::collection::vec((kind, any::<u16>(), offset, len), 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        feed(&bytes);
        still_serving();
    }

    #[test]
    fn arbitrary_bytes_after_the_flags(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut b = 3u32.to_be_bytes().to_vec();
        b.extend_from_slice(&bytes);
        feed(&b);
        still_serving();
    }

    #[test]
    fn mutated_sessions(
        go: bool,
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6),
        insert in prop::option::of((any::<Index>(), prop::collection::vec(any::<u8>(), 1..40))),
        cut in prop::option::of(any::<Index>()),
    ) {
        let mut b = valid_session(go, "f");
        for (at, x) in flips {
            let i = at.index(b.len());
            b[i] ^= x | 1;
        }
        if let Some((at, extra)) = insert {
            let i = at.index(b.len());
            b.splice(i..i, extra);
        }
        if let Some(at) = cut {
            b.truncate(at.index(b.len()));
        }
        feed(&b);
        still_serving();
    }

    #[test]
    fn random_requests(go: bool, reqs in requests(), ro: bool) {
        let mut b = handshake_only(go, if ro { "ro" } else { "f" });
        for (i, (kind, flags, offset, len)) in reqs.into_iter().enumerate() {
            // Writes carry their payload only when it is small enough to send.
            let kind = if kind == proto::CMD_WRITE && len > 70_000 { proto::CMD_READ } else { kind };
            request(&mut b, kind, flags, offset, len, i as u64);
        }
        feed(&b);
        still_serving();
    }

    /// Random option requests (any code, any data) during the handshake.
    #[test]
    fn random_options(opts in prop::collection::vec((0u32..16, prop::collection::vec(any::<u8>(), 0..64)), 1..10)) {
        let mut b = 3u32.to_be_bytes().to_vec();
        for (o, data) in opts {
            option(&mut b, o, &data);
        }
        feed(&b);
        still_serving();
    }
}

/// The client flags and NBD_OPT_GO / NBD_OPT_EXPORT_NAME only.
fn handshake_only(go: bool, export: &str) -> Vec<u8> {
    let mut b = (proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    if go {
        let info = proto::encode_info_request(&InfoRequest {
            name: export.as_bytes().to_vec(),
            infos: vec![],
        });
        option(&mut b, proto::OPT_GO, &info);
    } else {
        option(&mut b, proto::OPT_EXPORT_NAME, export.as_bytes());
    }
    b
}

/// On a server of its own (the shared one is busy with the other tests):
/// once the peers are gone, no connection thread is left.
#[test]
fn all_connections_end() {
    let fx = Fixture::new();
    fx.server
        .add_export("f", Arc::new(MemDev::new(1 << 20, 512)), false)
        .unwrap();
    let mut cut = valid_session(true, "f");
    cut.truncate(cut.len() - 100);
    for b in [
        valid_session(true, "f"),
        valid_session(false, "f"),
        cut,
        vec![0; 64],
    ] {
        feed_to(&fx.path(), &b);
    }
    fx.settle();
}
