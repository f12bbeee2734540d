//! A small blocking client of the API (HTTP/1.1, one connection per
//! request) for `ssvctl` and tests: on the Unix socket, or on TCP with the
//! bearer token.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach ssvd at {at}: {source} (is ssvd running? `systemctl status ssvd`, or start it with `ssvd -c CONFIG`)")]
    Connect { at: String, source: std::io::Error },
    #[error("talking to ssvd: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected answer from ssvd: {0}")]
    Protocol(String),
    /// ssvd refused: HTTP status, error kind and message.
    #[error("{message}")]
    Api {
        status: u16,
        kind: String,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, ClientError>;

#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { addr: String, token: String },
}

#[derive(Clone, Debug)]
pub struct Client {
    pub endpoint: Endpoint,
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// A response being read: status, then the body (chunked or not).
pub struct Response {
    pub status: u16,
    reader: BufReader<Box<dyn Conn>>,
    chunked: bool,
    length: Option<usize>,
    /// Bytes left in the current chunk.
    chunk_left: usize,
    done: bool,
}

impl Client {
    pub fn unix(path: impl Into<PathBuf>) -> Client {
        Client {
            endpoint: Endpoint::Unix(path.into()),
        }
    }

    fn connect(&self) -> Result<Box<dyn Conn>> {
        match &self.endpoint {
            Endpoint::Unix(p) => UnixStream::connect(p)
                .map(|s| Box::new(s) as Box<dyn Conn>)
                .map_err(|source| ClientError::Connect {
                    at: p.display().to_string(),
                    source,
                }),
            Endpoint::Tcp { addr, .. } => std::net::TcpStream::connect(addr)
                .map(|s| Box::new(s) as Box<dyn Conn>)
                .map_err(|source| ClientError::Connect {
                    at: addr.clone(),
                    source,
                }),
        }
    }

    /// Sends a request and reads the status and headers.
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Response> {
        let mut conn = self.connect()?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: ssvd\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Endpoint::Tcp { token, .. } = &self.endpoint {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes())?;
        conn.write_all(body.as_bytes())?;
        conn.flush()?;
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Protocol(format!("status line {line:?}")))?;
        let (mut chunked, mut length) = (false, None);
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(ClientError::Protocol("headers cut short".into()));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if k == "content-length" {
                    length = v.parse().ok();
                }
            }
        }
        Ok(Response {
            status,
            reader,
            chunked,
            length,
            chunk_left: 0,
            done: false,
        })
    }

    /// A request whose answer is one JSON document (or none: 204). Errors
    /// come back as [`ClientError::Api`] with ssvd's message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let mut r = self.send(method, path, body)?;
        let mut text = Vec::new();
        r.read_to_end(&mut text)?;
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&text)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&text).into()))
        };
        if r.status >= 400 {
            return Err(ClientError::Api {
                status: r.status,
                kind: v["error"].as_str().unwrap_or("error").to_string(),
                message: v["message"]
                    .as_str()
                    .map_or_else(|| v.to_string(), str::to_string),
            });
        }
        Ok((r.status, v))
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None).map(|r| r.1)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("POST", path, Some(body)).map(|r| r.1)
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        self.call("DELETE", path, None).map(drop)
    }
}

impl Response {
    /// The next line of a streamed body (`/v1/events`), or `None` at its end.
    pub fn next_line(&mut self) -> Result<Option<String>> {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        loop {
            if self.read(&mut b)? == 0 {
                return Ok((!out.is_empty()).then(|| String::from_utf8_lossy(&out).into()));
            }
            if b[0] == b'\n' {
                return Ok(Some(String::from_utf8_lossy(&out).into()));
            }
            out.push(b[0]);
        }
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if !self.chunked {
            let want = match self.length {
                Some(0) => return Ok(0),
                Some(n) => buf.len().min(n),
                None => buf.len(),
            };
            let n = self.reader.read(&mut buf[..want])?;
            if let Some(l) = &mut self.length {
                *l -= n;
            }
            return Ok(n);
        }
        if self.chunk_left == 0 {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF that ends the previous chunk.
                line.clear();
                self.reader.read_line(&mut line)?;
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.chunk_left = size;
        }
        let want = buf.len().min(self.chunk_left);
        let n = self.reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "chunk cut short",
            ));
        }
        self.chunk_left -= n;
        Ok(n)
    }
}
