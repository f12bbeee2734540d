//! A hostile target: our initiator's login and sessions take arbitrary
//! bytes from the network and end with an error, never a panic or a hang.
//! A fake target on loopback answers the login either with random bytes or
//! correctly, then sends random bytes (or mutated valid PDUs) while a
//! command waits.

use proptest::prelude::*;
use san::iscsi::pdu::{Opcode, Pdu, OFF_24, OFF_28, OFF_32};
use san::iscsi::{login, login::isid, DataPhase, Digests, LoginOptions, Session, SessionOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            prev(info);
        }));
    });
}

/// Accepts one connection, reads the first PDU, then runs `answer`.
fn fake_target(answer: impl FnOnce(&mut TcpStream) + Send + 'static) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            if Pdu::read_from(&mut s, Digests::default(), 1 << 20).is_ok() {
                answer(&mut s);
            }
            // Drain until the initiator goes, so it sees our bytes, not a reset.
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    addr
}

fn opts() -> LoginOptions {
    let mut o = LoginOptions::new("iqn.2026-11.org.ssv.test:fuzz", isid(1, 1));
    o.timeout = Duration::from_secs(2);
    o
}

/// A login response that ends login at once (T=1, NSG full feature).
fn login_ok() -> Vec<u8> {
    let mut p = Pdu::new(Opcode::LoginResponse);
    p.set_flags(0x80 | 0x03);
    p.set_u32(OFF_24, 1);
    p.set_u32(OFF_28, 1);
    p.set_u32(OFF_32, 64);
    p.data = b"HeaderDigest=None\0DataDigest=None\0".to_vec();
    p.encode(Digests::default())
}

fn session_opts() -> SessionOptions {
    SessionOptions {
        command_timeout: Duration::from_secs(2),
        nop_interval: Some(Duration::from_millis(200)),
        nop_timeout: Duration::from_millis(500),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn hostile_login_answers_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        count_panics();
        let addr = fake_target(move |s| {
            s.write_all(&bytes).ok();
        });
        // Either an error, or (vanishingly rarely) a login that then works.
        let _ = login(addr, Some("iqn.2026-11.org.ssv.test:t"), &opts());
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn hostile_bytes_during_a_command_end_the_session(
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
        valid_prefix in any::<bool>(),
    ) {
        count_panics();
        let addr = fake_target(move |s| {
            s.write_all(&login_ok()).ok();
            // Let the command go out, then answer it with garbage.
            std::thread::sleep(Duration::from_millis(20));
            let mut out = Vec::new();
            if valid_prefix {
                // A Data-In whose header is fine, then the random rest.
                let mut d = Pdu::new(Opcode::DataIn);
                d.set_itt(1);
                d.data = vec![7; 512];
                out = d.encode(Digests::default());
                out.truncate(48);
            }
            out.extend_from_slice(&bytes);
            s.write_all(&out).ok();
        });
        let c = login(addr, Some("iqn.2026-11.org.ssv.test:t"), &opts()).unwrap();
        let s = Session::with_options(c, session_opts());
        let mut buf = vec![0u8; 4096];
        let cdb = [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
        let r = s.execute([0; 8], &cdb, DataPhase::In(&mut buf));
        // Random bytes cannot complete a READ with a GOOD status by chance
        // often enough to matter; either way nothing panics and the session
        // ends when the target stops making sense.
        if r.is_err() {
            prop_assert!(s.down().is_some());
        }
        drop(s);
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    }
}
