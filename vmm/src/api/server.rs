//! The API's Unix socket: mode 0600 (who may open it is the access check;
//! put it in a directory only the VMM's user can enter, so nobody reaches
//! it before the mode is set), one thread per connection, a bounded number
//! of connections.

use super::protocol::{handle_line, After, MAX_LINE};
use super::Controller;
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Connections served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 32;

pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Serves `ctl` on a new socket at `path`. A stale socket there (no
    /// one listening) is replaced; a live one, or anything else, is an error.
    pub fn start(path: &Path, ctl: Arc<Controller>) -> io::Result<ApiServer> {
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if !m.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process serves {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let accept = std::thread::Builder::new()
            .name("vmm-api".into())
            .spawn(move || accept_loop(listener, ctl, st))?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            stop,
            accept: Some(accept),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, ctl: Arc<Controller>, stop: Arc<AtomicBool>) {
    crate::seccomp::install_or_log(crate::seccomp::ThreadKind::Api);
    let live = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                log::warn!("API: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if live.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            live.fetch_sub(1, Ordering::SeqCst);
            let _ = write_line(
                &mut conn,
                &json!({"id": null, "ok": false, "error": format!("more than {MAX_CONNECTIONS} connections; retry later")}),
            );
            continue;
        }
        let (ctl, stop, l) = (ctl.clone(), stop.clone(), live.clone());
        let spawned = std::thread::Builder::new()
            .name("vmm-api-conn".into())
            .spawn(move || {
                if let Err(e) = serve(conn, &ctl, &stop) {
                    log::debug!("API connection: {e}");
                }
                l.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            live.fetch_sub(1, Ordering::SeqCst);
            log::warn!("API: cannot start a connection thread: {e}");
        }
    }
}

fn write_line(w: &mut impl Write, v: &Value) -> io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    w.write_all(line.as_bytes())
}

fn serve(conn: UnixStream, ctl: &Controller, stop: &AtomicBool) -> io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let ended = line.last() == Some(&b'\n');
        if ended {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        } else if line.len() > MAX_LINE {
            return write_line(
                &mut out,
                &json!({"id": null, "ok": false, "error": format!("request line longer than {MAX_LINE} bytes")}),
            );
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (reply, after) = handle_line(ctl, &line);
        if after == After::Subscribe {
            // Subscribed before the reply goes out: no event in between is lost.
            let rx = ctl.events.subscribe();
            write_line(&mut out, &reply)?;
            return stream_events(&mut out, &rx, stop);
        }
        write_line(&mut out, &reply)?;
    }
}

fn stream_events(
    out: &mut UnixStream,
    rx: &std::sync::mpsc::Receiver<Value>,
    stop: &AtomicBool,
) -> io::Result<()> {
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(e) => write_line(out, &e)?,
            Err(RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::SeqCst) || peer_closed(out) {
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// The subscriber hung up (its end reads as EOF), so its thread can end
/// without waiting for the next event.
fn peer_closed(s: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: recv into a one-byte buffer we own, on an fd `s` keeps open;
    // MSG_PEEK leaves the data, MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}
