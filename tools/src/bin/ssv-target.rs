//! ssv-target: serves files or block devices as iSCSI LUNs (our own target,
//! `san::target`), in the foreground until SIGTERM or SIGINT.
//!
//! ```sh
//! ssv-target --iqn iqn.2026-01.example:disks --portal 127.0.0.1:3260 \
//!     --portal 127.0.0.2:3260 --lun 1=/srv/lun1.img,thin --lun 2=/dev/sdb,ro \
//!     [--chap user:secret]
//! ```

use anyhow::{bail, Context, Result};
use clap::Parser;
use san::iscsi::Chap;
use san::target::{LunConfig, TargetConfig, TargetServer};
use san::{FileDev, OpenOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ssv-target",
    version,
    about = "Serve files or block devices as iSCSI LUNs until SIGTERM/SIGINT"
)]
struct Cli {
    /// Target name (iqn.YYYY-MM.domain:name).
    #[arg(long)]
    iqn: String,
    /// Address to listen on; repeat for more portals (each its own portal group).
    #[arg(long = "portal", required = true)]
    portals: Vec<SocketAddr>,
    /// N=PATH[,thin][,ro][,id=ID]: LUN N backed by PATH; thin enables UNMAP,
    /// ro refuses writes, id overrides the identity the WWID is derived from.
    #[arg(long = "lun", required = true)]
    luns: Vec<String>,
    /// CHAP account every login must pass, as USER:SECRET.
    #[arg(long)]
    chap: Option<String>,
    /// Ping idle connections every this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    nop_interval: u64,
    /// Open the backing files without O_DIRECT (through the page cache).
    #[arg(long)]
    buffered: bool,
}

fn parse_lun(spec: &str, buffered: bool) -> Result<LunConfig> {
    let (n, rest) = spec
        .split_once('=')
        .with_context(|| format!("--lun {spec}: expected N=PATH[,thin][,ro][,id=ID]"))?;
    let lun: u16 = n
        .parse()
        .with_context(|| format!("--lun {spec}: {n:?} is not a LUN number"))?;
    let mut parts = rest.split(',');
    let path = parts.next().unwrap_or_default();
    let (mut thin, mut ro, mut id) = (false, false, None);
    for p in parts {
        match p {
            "thin" => thin = true,
            "ro" => ro = true,
            _ => match p.strip_prefix("id=") {
                Some(v) => id = Some(v.to_string()),
                None => bail!("--lun {spec}: unknown option {p:?}"),
            },
        }
    }
    let opts = OpenOptions::new().read_only(ro).direct(!buffered);
    let dev = FileDev::open(path, &opts).with_context(|| format!("LUN {lun}"))?;
    let mut c = LunConfig::new(lun, Arc::new(dev)).thin(thin).read_only(ro);
    if let Some(id) = id {
        c = c.id(&id);
    }
    Ok(c)
}

/// Blocks SIGTERM/SIGINT in this and every later thread, so the main
/// thread can wait for them synchronously.
fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it
    // through a valid pointer, and pthread_sigmask reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait reads the initialised set and writes one int.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let signals = block_signals()?;
    let luns = cli
        .luns
        .iter()
        .map(|s| parse_lun(s, cli.buffered))
        .collect::<Result<Vec<_>>>()?;
    let mut config = TargetConfig::new(&cli.iqn, cli.portals.clone(), luns);
    if let Some(c) = &cli.chap {
        let (user, secret) = c.split_once(':').context("--chap: expected USER:SECRET")?;
        config.chap = Some(Chap {
            user: user.to_string(),
            secret: secret.as_bytes().to_vec(),
        });
    }
    if cli.nop_interval > 0 {
        config.params.nop_interval = Some(Duration::from_secs(cli.nop_interval));
    }
    let server = TargetServer::start(config).context("starting the target")?;
    for p in server.portals() {
        log::info!("serving {} on {p}", server.iqn());
    }
    let sig = wait_signal(&signals);
    log::info!("signal {sig}: stopping");
    server.stop();
    Ok(())
}
