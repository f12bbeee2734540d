//! A small NBD client over `san::nbd::proto` for the NBD server's tests,
//! and the server fixture they share.
#![allow(dead_code)]

use san::nbd::proto::{self, BlockSizes, Info, InfoRequest, OptionHeader, Request};
use san::nbd::{NbdConfig, NbdServer};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A started server on a Unix socket in its own temporary directory.
pub struct Fixture {
    pub server: NbdServer,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with(NbdConfig::new())
    }

    pub fn with(config: NbdConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let server = NbdServer::start(config.unix(dir.path().join("nbd.sock"))).unwrap();
        Fixture { server, dir }
    }

    pub fn path(&self) -> PathBuf {
        self.server.unix_path().unwrap().to_path_buf()
    }

    /// Waits (up to 10 s) until no connection thread is left, and checks
    /// that none panicked.
    pub fn settle(&self) {
        let start = std::time::Instant::now();
        loop {
            let st = self.server.stats();
            assert_eq!(st.panics, 0, "a connection thread panicked");
            if st.live == 0 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "connections still live: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// What the client learnt in the handshake.
pub struct Client {
    pub s: Box<dyn Conn>,
    pub size: u64,
    pub flags: u16,
    pub block: Option<BlockSizes>,
    next: u64,
}

/// An option reply: type and data.
pub type OptReply = (u32, Vec<u8>);

pub fn connect_unix(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads the greeting and sends the client flags.
pub fn greet(s: &mut dyn Conn, client_flags: u32) -> io::Result<u16> {
    let mut g = [0u8; proto::GREETING_LEN];
    s.read_exact(&mut g)?;
    let flags = proto::decode_greeting(&g).map_err(io::Error::other)?;
    s.write_all(&client_flags.to_be_bytes())?;
    Ok(flags)
}

pub fn send_option(s: &mut dyn Conn, option: u32, data: &[u8]) -> io::Result<()> {
    let h = proto::encode_option_header(&OptionHeader {
        option,
        len: data.len() as u32,
    });
    s.write_all(&h)?;
    s.write_all(data)
}

pub fn read_option_reply(s: &mut dyn Conn, option: u32) -> io::Result<OptReply> {
    let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
    s.read_exact(&mut h)?;
    let h = proto::decode_option_reply_header(&h).map_err(io::Error::other)?;
    assert_eq!(h.option, option, "reply for another option");
    assert!(h.len < 1 << 20, "absurd option reply length {}", h.len);
    let mut d = vec![0u8; h.len as usize];
    s.read_exact(&mut d)?;
    Ok((h.reply, d))
}

/// Sends NBD_OPT_INFO/GO and collects replies up to ACK or an error.
pub fn info_or_go(
    s: &mut dyn Conn,
    option: u32,
    name: &str,
    infos: &[u16],
) -> io::Result<Result<Vec<Info>, OptReply>> {
    let req = InfoRequest {
        name: name.as_bytes().to_vec(),
        infos: infos.to_vec(),
    };
    send_option(s, option, &proto::encode_info_request(&req))?;
    let mut got = Vec::new();
    loop {
        let (kind, data) = read_option_reply(s, option)?;
        match kind {
            proto::REP_INFO => got.push(proto::decode_info(&data).map_err(io::Error::other)?),
            proto::REP_ACK => return Ok(Ok(got)),
            _ => return Ok(Err((kind, data))),
        }
    }
}

impl Client {
    /// Fixed newstyle with NO_ZEROES, then NBD_OPT_GO asking for block sizes.
    pub fn go(s: impl Conn + 'static, name: &str) -> Result<Client, OptReply> {
        let mut s: Box<dyn Conn> = Box::new(s);
        greet(
            &mut *s,
            proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES,
        )
        .unwrap();
        let infos = info_or_go(&mut *s, proto::OPT_GO, name, &[proto::INFO_BLOCK_SIZE]).unwrap()?;
        let mut c = Client {
            s,
            size: 0,
            flags: 0,
            block: None,
            next: 1,
        };
        for i in infos {
            match i {
                Info::Export { size, flags } => {
                    c.size = size;
                    c.flags = flags;
                }
                Info::BlockSize(b) => c.block = Some(b),
                _ => {}
            }
        }
        assert!(c.flags & proto::FLAG_HAS_FLAGS != 0, "no NBD_INFO_EXPORT");
        Ok(c)
    }

    pub fn go_unix(path: &Path, name: &str) -> Client {
        Client::go(connect_unix(path), name).unwrap_or_else(|e| panic!("GO {name}: {e:?}"))
    }

    /// The old way in: NBD_OPT_EXPORT_NAME (no block sizes learnt).
    pub fn export_name(s: impl Conn + 'static, name: &str, no_zeroes: bool) -> io::Result<Client> {
        let mut s: Box<dyn Conn> = Box::new(s);
        let mut flags = proto::FLAG_C_FIXED_NEWSTYLE;
        if no_zeroes {
            flags |= proto::FLAG_C_NO_ZEROES;
        }
        greet(&mut *s, flags)?;
        send_option(&mut *s, proto::OPT_EXPORT_NAME, name.as_bytes())?;
        let mut b = vec![0u8; if no_zeroes { 10 } else { 134 }];
        s.read_exact(&mut b)?;
        assert!(b[10..].iter().all(|&x| x == 0));
        Ok(Client {
            s,
            size: u64::from_be_bytes(b[0..8].try_into().unwrap()),
            flags: u16::from_be_bytes([b[8], b[9]]),
            block: None,
            next: 1,
        })
    }

    /// Sends one request (with its payload); returns its cookie.
    pub fn send(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> u64 {
        let cookie = self.next;
        self.next += 1;
        let r = Request {
            flags,
            kind,
            cookie,
            offset,
            len,
        };
        self.s.write_all(&proto::encode_request(&r)).unwrap();
        self.s.write_all(payload).unwrap();
        cookie
    }

    /// Reads one reply header: (cookie, error).
    pub fn recv(&mut self) -> (u64, u32) {
        let mut h = [0u8; proto::SIMPLE_REPLY_LEN];
        self.s.read_exact(&mut h).unwrap();
        let r = proto::decode_simple_reply(&h).unwrap();
        (r.cookie, r.error)
    }

    fn call(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> u32 {
        let c = self.send(kind, flags, offset, len, payload);
        let (cookie, err) = self.recv();
        assert_eq!(cookie, c);
        err
    }

    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        let c = self.send(proto::CMD_READ, 0, offset, len, &[]);
        let (cookie, err) = self.recv();
        assert_eq!(cookie, c);
        if err != 0 {
            return Err(err);
        }
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).unwrap();
        Ok(d)
    }

    pub fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> Result<(), u32> {
        ok(self.call(proto::CMD_WRITE, flags, offset, data.len() as u32, data))
    }

    pub fn zeroes(&mut self, offset: u64, len: u32, flags: u16) -> Result<(), u32> {
        ok(self.call(proto::CMD_WRITE_ZEROES, flags, offset, len, &[]))
    }

    pub fn trim(&mut self, offset: u64, len: u32) -> Result<(), u32> {
        ok(self.call(proto::CMD_TRIM, 0, offset, len, &[]))
    }

    pub fn flush(&mut self) -> Result<(), u32> {
        ok(self.call(proto::CMD_FLUSH, 0, 0, 0, &[]))
    }

    /// NBD_CMD_DISC, then waits for the server to close.
    pub fn disconnect(mut self) {
        self.send(proto::CMD_DISC, 0, 0, 0, &[]);
        let mut b = [0u8; 1];
        assert_eq!(self.s.read(&mut b).unwrap_or(0), 0, "data after DISC");
    }
}

fn ok(err: u32) -> Result<(), u32> {
    if err == 0 {
        Ok(())
    } else {
        Err(err)
    }
}
