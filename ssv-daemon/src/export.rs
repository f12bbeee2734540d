//! Open volumes served over NBD, so QEMU tools (and anything with an NBD
//! client) read and write them: `nbd+unix:///VOLUME?socket=…`.

use crate::host::Exporter;
use crate::{Error, Result};
use san::nbd::{NbdConfig, NbdServer};
use san::BlockDev;
use std::path::Path;
use std::sync::Arc;

pub struct NbdExporter {
    server: NbdServer,
}

impl NbdExporter {
    pub fn start(unix: &Path, tcp: Option<&str>) -> Result<NbdExporter> {
        if let Some(dir) = unix.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Storage(format!("creating {}: {e}", dir.display())))?;
        }
        // A socket left by a daemon that was killed: nobody answers on it.
        if unix.exists() && std::os::unix::net::UnixStream::connect(unix).is_err() {
            let _ = std::fs::remove_file(unix);
        }
        let mut cfg = NbdConfig::new().unix(unix);
        if let Some(addr) = tcp {
            let addr = addr
                .parse()
                .map_err(|e| Error::Invalid(format!("[nbd] tcp = {addr:?}: {e}")))?;
            cfg = cfg.tcp(addr);
        }
        let server =
            NbdServer::start(cfg).map_err(|e| Error::Storage(format!("NBD server: {e}")))?;
        Ok(NbdExporter { server })
    }
}

impl Exporter for NbdExporter {
    fn export(&self, name: &str, dev: Arc<dyn BlockDev>) -> Result<String> {
        self.server
            .add_export(name, dev, false)
            .map_err(|e| Error::Storage(format!("exporting {name} over NBD: {e}")))?;
        Ok(match self.server.unix_path() {
            Some(p) => format!("nbd+unix:///{name}?socket={}", p.display()),
            None => match self.server.tcp_addr() {
                Some(a) => format!("nbd://{a}/{name}"),
                None => String::new(),
            },
        })
    }

    fn unexport(&self, name: &str) {
        self.server.remove_export(name);
    }
}
