//! lockd in-process, the way the sanlock interop tests and benchmarks use
//! it: each "host" opens the lease device itself (as hosts each open the
//! LUN) and joins a lockspace with its own host id.

use anyhow::{Context, Result};
use lockd::delta::{HostId, Lockspace};
use lockd::leaseio::LeaseDev;
use lockd::record::Name;
use lockd::timing::Timeouts;
use san::{FileDev, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Opens `path` (file or block device) for lease I/O: O_DIRECT and O_DSYNC,
/// each I/O bounded by `io_timeout`.
pub fn lease_dev(path: &Path, io_timeout: Duration) -> Result<Arc<LeaseDev>> {
    let f = FileDev::open(path, &OpenOptions::new().sync(true))
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(Arc::new(LeaseDev::new(
        Arc::new(f),
        path.display().to_string(),
        io_timeout,
    )))
}

/// One lockd host to join: its id and the unique name it writes.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub host_id: u64,
    pub host_name: String,
}

impl JoinSpec {
    pub fn new(host_id: u64, host_name: &str) -> JoinSpec {
        JoinSpec {
            host_id,
            host_name: host_name.into(),
        }
    }
}

/// Joins lockspace `space` at `offset` on `path` as one host, on its own
/// device handle. Returns the host and how long the join took.
pub fn join(
    path: &Path,
    offset: u64,
    space: &str,
    who: &JoinSpec,
    timeouts: Timeouts,
) -> Result<(Arc<HostId>, Duration)> {
    let dev = lease_dev(path, timeouts.io())?;
    let ls = Lockspace::open(dev, offset, space)?;
    let name = Name::new(&who.host_name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = Instant::now();
    let host = HostId::acquire(ls, who.host_id, name, timeouts)
        .with_context(|| format!("lockd host {} joining {space}", who.host_id))?;
    Ok((Arc::new(host), t.elapsed()))
}

/// Joins several hosts in parallel (each join waits 2·io_timeout).
pub fn join_all(
    path: &Path,
    offset: u64,
    space: &str,
    hosts: &[JoinSpec],
    timeouts: Timeouts,
) -> Result<Vec<Arc<HostId>>> {
    let handles: Vec<_> = hosts
        .iter()
        .cloned()
        .map(|who| {
            let path = path.to_path_buf();
            let space = space.to_string();
            std::thread::spawn(move || join(&path, offset, &space, &who, timeouts))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("join thread panicked"))?
                .map(|(host, _)| host)
        })
        .collect()
}

/// target/<profile>/lockd, built (or brought up to date) once per run:
/// `cargo test -p ssv-tests` alone does not build other packages' binaries.
pub fn lockd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built_bin("lockd", "lockd"))
}

/// target/<profile>/BIN of workspace package PACKAGE, built (or brought up
/// to date) with the profile this test runs under.
pub fn built_bin(package: &str, bin_name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test or bench>-HASH
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is not in target/<profile>/deps")
        .to_path_buf();
    let bin = profile_dir.join(bin_name);
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", package, "--bin", bin_name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        p => {
            cmd.args(["--profile", p]);
        }
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        other if bin.exists() => {
            eprintln!(
                "warning: `cargo build -p {package}` failed ({other:?}); using the existing {}",
                bin.display()
            );
        }
        other => panic!(
            "{} is missing and `cargo build -p {package} --bin {bin_name}` failed: {other:?}",
            bin.display()
        ),
    }
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}
