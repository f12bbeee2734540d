//! Open volumes served over NBD, so QEMU tools (and anything with an NBD
//! client) read and write them: `nbd+unix:///VOLUME?socket=…`; and, when
//! `[export] iscsi_portals` is set, over iSCSI as one target per volume:
//! `iscsi://PORTAL[,PORTAL…]/<prefix>:VOLUME/0`.

use crate::host::{Exporter, Transport};
use crate::{Error, Result};
use san::iscsi::IscsiUri;
use san::nbd::{NbdConfig, NbdServer};
use san::target::{LunConfig, TargetConfig, TargetServer};
use san::BlockDev;
use std::net::SocketAddr;
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
    fn transport(&self) -> Transport {
        Transport::Nbd
    }

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

/// The volume's LUN in its target.
const LUN: u16 = 0;

/// One iSCSI target per open volume, all on one `TargetServer` (so on the
/// configured portals, which a server per volume could not share).
pub struct IscsiExporter {
    server: TargetServer,
    prefix: String,
}

impl IscsiExporter {
    /// Binds the portals now, so a taken port stops ssvd at startup rather
    /// than failing every open.
    pub fn start(portals: &[SocketAddr], iqn_prefix: &str) -> Result<IscsiExporter> {
        // A server starts with one target; ours come and go with open
        // volumes, so it starts with an empty placeholder, removed at once.
        let server = TargetServer::start(TargetConfig::new(iqn_prefix, portals.to_vec(), vec![]))
            .map_err(|e| {
            Error::Storage(format!("iSCSI export target ([export] iscsi_portals): {e}"))
        })?;
        server.remove_target(iqn_prefix);
        Ok(IscsiExporter {
            server,
            prefix: iqn_prefix.to_string(),
        })
    }

    fn iqn(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }
}

impl Exporter for IscsiExporter {
    fn transport(&self) -> Transport {
        Transport::Iscsi
    }

    fn export(&self, name: &str, dev: Arc<dyn BlockDev>) -> Result<String> {
        let iqn = self.iqn(name);
        // Thin: UNMAP reaches the volume's discard, which frees clusters
        // that then read as zeroes (LBPRZ).
        let lun = LunConfig::new(LUN, dev).thin(true);
        self.server
            .add_target(&iqn, vec![lun])
            .map_err(|e| Error::Storage(format!("exporting {name} over iSCSI: {e}")))?;
        let uri = IscsiUri {
            portals: self.server.portals(),
            target: iqn,
            lun: LUN,
        };
        Ok(uri.to_string())
    }

    fn unexport(&self, name: &str) {
        self.server.remove_target(&self.iqn(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use san::{FileDev, OpenOptions};

    #[test]
    fn one_target_per_volume_on_shared_portals() {
        let dir = tempfile::tempdir().unwrap();
        let dev = |n: &str| -> Arc<dyn BlockDev> {
            let o = OpenOptions::new().create_size(Some(1 << 20));
            Arc::new(FileDev::open(dir.path().join(n), &o).unwrap())
        };
        let x = IscsiExporter::start(&["127.0.0.1:0".parse().unwrap()], "iqn.2026-11.io.ssv:t")
            .unwrap();
        assert!(x.server.targets().is_empty(), "the placeholder is gone");
        let port = x.server.portals()[0].port();
        let a = x.export("v1", dev("a")).unwrap();
        assert_eq!(
            a,
            format!("iscsi://127.0.0.1:{port}/iqn.2026-11.io.ssv:t:v1/0")
        );
        assert_eq!(a.parse::<IscsiUri>().unwrap().to_string(), a);
        x.export("v2", dev("b")).unwrap();
        let e = x.export("v1", dev("c")).unwrap_err().to_string();
        assert!(e.contains("v1") && e.contains("served already"), "{e}");
        x.unexport("v1");
        assert_eq!(x.server.targets(), vec!["iqn.2026-11.io.ssv:t:v2"]);
        x.export("v1", dev("a")).unwrap();

        let e = IscsiExporter::start(&[x.server.portals()[0]], "iqn.2026-11.io.ssv:t")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("iscsi_portals"), "{e}");
    }
}
