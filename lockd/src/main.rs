//! `lockd`: the lease daemon, direct commands on lease areas, and a client.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use std::os::unix::process::CommandExt;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use lockd::client::{default_socket, Client, ClientError};
use lockd::daemon::{Config, Daemon};
use lockd::direct;
use lockd::leaseio::LeaseDev;
use lockd::proto::{parse_offset, split_path_spec, LockspaceSpec, ResourceSpec};
use lockd::record::Geometry;
use lockd::timing::{Timeouts, DEFAULT_IO_TIMEOUT, DEFAULT_WATCHDOG_FIRE};
use san::{FileDev, OpenOptions};

#[derive(Parser)]
#[command(
    name = "lockd",
    version,
    about = "Disk Paxos leases on shared storage (sanlock-compatible on disk)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (one per host).
    Daemon(DaemonArgs),
    /// Read or initialise lease areas directly, with no daemon.
    #[command(subcommand)]
    Direct(DirectCmd),
    /// Talk to the running daemon.
    Client {
        /// Daemon socket [env LOCKD_SOCKET; default /run/lockd/lockd.sock].
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        cmd: ClientCmd,
    },
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// Socket to serve [env LOCKD_SOCKET; default /run/lockd/lockd.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Seconds one lease I/O may take; every lease timeout derives from it.
    #[arg(short = 'o', long, default_value_t = DEFAULT_IO_TIMEOUT)]
    io_timeout: u64,
    /// Watchdog fire timeout in seconds; must be the same on every host.
    #[arg(long, default_value_t = DEFAULT_WATCHDOG_FIRE)]
    watchdog_fire: u64,
    /// Unique name written in our delta leases [default: a new random name].
    #[arg(short = 'e', long)]
    host_name: Option<String>,
    #[arg(long, default_value = "/dev/watchdog")]
    watchdog: PathBuf,
    /// Accept fault requests (delay or fail lease I/O): for tests only.
    #[arg(long, hide = true)]
    fault_injection: bool,
    /// iSCSI initiator name for lease areas on `iscsi://` LUNs; it must
    /// differ from ssvd's and from every other host's lockd [default:
    /// iqn.2026-11.io.ssv:<hostname>-lockd].
    #[arg(long)]
    initiator_name: Option<String>,
}

#[derive(Subcommand)]
enum DirectCmd {
    /// Write an empty lockspace (-s LS:0:PATH:OFFSET) or resource
    /// (-r LS:RES:PATH:OFFSET). Destroys what was there.
    Init {
        #[arg(
            short = 's',
            conflicts_with = "resource",
            required_unless_present = "resource"
        )]
        lockspace: Option<String>,
        #[arg(short = 'r')]
        resource: Option<String>,
        /// Sector size: 512 or 4096 [default: the device's].
        #[arg(short = 'Z')]
        sector: Option<u32>,
        /// Align size: 1M, 2M, 4M or 8M [default: 1M for 512, 8M for 4096].
        #[arg(short = 'A')]
        align: Option<String>,
        /// Hosts a resource serves (fewer hosts, smaller reads).
        #[arg(short = 'n', long)]
        num_hosts: Option<u64>,
        /// io_timeout recorded in the lockspace records.
        #[arg(short = 'o', long, default_value_t = DEFAULT_IO_TIMEOUT)]
        io_timeout: u64,
    },
    /// List lockspace hosts and resource owners in PATH[:OFFSET[:SIZE]].
    Dump {
        target: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ClientCmd {
    /// Daemon, lockspaces, hosts and leases.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Join a lockspace: -s LS:HOST_ID:PATH:OFFSET (takes 2·io_timeout).
    AddLockspace {
        #[arg(short = 's')]
        lockspace: String,
    },
    /// Leave a lockspace: -s LS (its leases must be released).
    RemLockspace {
        #[arg(short = 's')]
        lockspace: String,
    },
    /// Acquire -r LS:RES:PATH:OFFSET[:SH] for process -p PID (released
    /// when it exits).
    Acquire {
        #[arg(short = 'r')]
        resource: String,
        #[arg(short = 'p')]
        pid: u32,
        /// Wait out a silent owner (up to host_dead) instead of failing.
        #[arg(long)]
        wait: bool,
    },
    /// Release -r LS:RES:PATH:OFFSET held by -p PID.
    Release {
        #[arg(short = 'r')]
        resource: String,
        #[arg(short = 'p')]
        pid: u32,
    },
    /// Leases held by -p PID.
    Inquire {
        #[arg(short = 'p')]
        pid: u32,
    },
    /// Ask the holder of -r LS:RES:PATH:OFFSET to give it up (-f 1 kills it).
    Request {
        #[arg(short = 'r')]
        resource: String,
        #[arg(short = 'f', default_value_t = 0)]
        force: u32,
    },
    /// Run a command holding -r LS:RES:PATH:OFFSET[:SH]; release after.
    Command {
        #[arg(short = 'r')]
        resource: String,
        #[arg(long)]
        wait: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lockd: {e:#}");
            let busy = e.downcast_ref::<ClientError>().is_some_and(|c| c.is_busy());
            ExitCode::from(if busy { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Daemon(a) => daemon(a).map(|()| ExitCode::SUCCESS),
        Cmd::Direct(d) => direct_cmd(d).map(|()| ExitCode::SUCCESS),
        Cmd::Client { socket, cmd } => client_cmd(socket.unwrap_or_else(default_socket), cmd),
    }
}

fn daemon(a: DaemonArgs) -> anyhow::Result<()> {
    // Before any thread starts, so every lease I/O thread inherits it.
    log::info!("lease I/O priority: {}", san::ioprio::urgent());
    let timeouts =
        Timeouts::new(a.io_timeout, a.watchdog_fire).map_err(|e| anyhow::anyhow!("{e}"))?;
    let host_name = a.host_name.unwrap_or_else(|| {
        let h = short_hostname();
        format!("{:016x}.{h}", lockd::clock::random_u64())
    });
    let d = Daemon::new(Config {
        socket: a.socket.unwrap_or_else(default_socket),
        timeouts,
        host_name,
        fault_injection: a.fault_injection,
        watchdog: a.watchdog,
        initiator_name: a
            .initiator_name
            .unwrap_or_else(|| san::iscsi::lockd_initiator_name(&short_hostname())),
    })?;
    d.run()
}

/// This host's name, cut so `<16 hex>.<name>` fits the 48-byte field.
fn short_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "host".into()
    };
    name.chars()
        .filter(|c| c.is_ascii_graphic() && *c != ':')
        .take(31)
        .collect()
}

fn open_dev(path: &str) -> anyhow::Result<Arc<LeaseDev>> {
    let f = FileDev::open(path, &OpenOptions::new().sync(true))
        .with_context(|| format!("opening {path}"))?;
    Ok(Arc::new(LeaseDev::new(
        Arc::new(f),
        path,
        Duration::from_secs(DEFAULT_IO_TIMEOUT),
    )))
}

fn geometry(
    dev: &LeaseDev,
    sector: Option<u32>,
    align: Option<String>,
) -> anyhow::Result<Geometry> {
    let mut g = direct::default_geometry(dev)?;
    if let Some(s) = sector {
        g.sector_size = s;
        if s == 512 {
            g.align_size = 1 << 20;
        }
    }
    if let Some(a) = align {
        g.align_size = parse_offset(&a).map_err(|e| anyhow::anyhow!(e))?;
    }
    Geometry::new(g.sector_size, g.align_size).map_err(|e| anyhow::anyhow!("{e}"))
}

fn direct_cmd(d: DirectCmd) -> anyhow::Result<()> {
    match d {
        DirectCmd::Init {
            lockspace,
            resource,
            sector,
            align,
            num_hosts,
            io_timeout,
        } => {
            if let Some(ls) = lockspace {
                let Some([name, _, path, offset]) = split_path_spec(&ls) else {
                    bail!("-s {ls:?}: expected LOCKSPACE:0:PATH:OFFSET");
                };
                let dev = open_dev(path)?;
                let g = geometry(&dev, sector, align)?;
                let off = parse_offset(offset).map_err(|e| anyhow::anyhow!(e))?;
                let io = u16::try_from(io_timeout).context("io_timeout")?;
                direct::init_lockspace(&dev, g, off, name, io)?;
            } else if let Some(r) = resource {
                let (spec, _) = ResourceSpec::parse(&r).map_err(|e| anyhow::anyhow!(e))?;
                let dev = open_dev(&spec.path)?;
                let g = geometry(&dev, sector, align)?;
                let n = num_hosts.unwrap_or(g.max_hosts());
                direct::init_resource(&dev, g, spec.offset, &spec.lockspace, &spec.resource, n)?;
            }
            println!("init done");
            Ok(())
        }
        DirectCmd::Dump { target, json } => {
            let mut parts = target.splitn(3, ':');
            let path = parts.next().unwrap_or_default();
            let off = parts
                .next()
                .map(parse_offset)
                .transpose()
                .map_err(|e| anyhow::anyhow!(e))?;
            let size = parts
                .next()
                .map(parse_offset)
                .transpose()
                .map_err(|e| anyhow::anyhow!(e))?;
            let dev = open_dev(path)?;
            let entries = direct::dump(&dev, off.unwrap_or(0), size.unwrap_or(u64::MAX))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", direct::format_dump(&entries));
            }
            Ok(())
        }
    }
}

fn client_cmd(socket: PathBuf, cmd: ClientCmd) -> anyhow::Result<ExitCode> {
    let c = Client::connect(&socket)?;
    let res = |s: &str| ResourceSpec::parse(s).map_err(|e| anyhow::anyhow!(e));
    match cmd {
        ClientCmd::Status { json } => {
            let st = c.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
        }
        ClientCmd::AddLockspace { lockspace } => {
            let spec = LockspaceSpec::parse(&lockspace).map_err(|e| anyhow::anyhow!(e))?;
            let generation = c.add_lockspace(&spec)?;
            println!(
                "joined {} as host {} generation {generation}",
                spec.lockspace, spec.host_id
            );
        }
        ClientCmd::RemLockspace { lockspace } => {
            let name = lockspace.split(':').next().unwrap_or_default();
            c.rem_lockspace(name)?;
            println!("left {name}");
        }
        ClientCmd::Acquire {
            resource,
            pid,
            wait,
        } => {
            let (spec, shared) = res(&resource)?;
            let info = c.acquire(&spec, shared, wait, Some(pid))?;
            println!("acquired {} lver {} for pid {pid}", info.spec, info.lver);
        }
        ClientCmd::Release { resource, pid } => {
            let (spec, _) = res(&resource)?;
            c.release(&spec, Some(pid))?;
            println!("released {spec}");
        }
        ClientCmd::Inquire { pid } => {
            for l in c.inquire(Some(pid))? {
                println!(
                    "{}{} lver {}",
                    l.spec,
                    if l.shared { ":SH" } else { "" },
                    l.lver
                );
            }
        }
        ClientCmd::Request { resource, force } => {
            let (spec, _) = res(&resource)?;
            c.request(&spec, force)?;
            println!("requested {spec} (force mode {force})");
        }
        ClientCmd::Command {
            resource,
            wait,
            command,
        } => {
            let (spec, shared) = res(&resource)?;
            // As sanlock's `client command`: register, acquire, then become
            // the command, keeping the registered connection open across
            // exec. The command is the holder (same pid): lockd releases
            // when it exits and stops it if the lockspace fails.
            c.register(Duration::ZERO)?;
            c.acquire(&spec, shared, wait, None)?;
            c.keep_across_exec()
                .context("keeping the lockd connection across exec")?;
            let err = std::process::Command::new(&command[0])
                .args(&command[1..])
                .exec();
            bail!("running {}: {err}", command[0]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(st: &lockd::proto::Status) {
    println!(
        "daemon {} io_timeout {} s watchdog_fire {} s watchdog {}",
        st.pid, st.io_timeout, st.watchdog_fire, st.watchdog
    );
    for ls in &st.lockspaces {
        println!(
            "s {}:{}:{}:{} generation {} {} renewed {} ms ago",
            ls.lockspace,
            ls.host_id,
            ls.path,
            ls.offset,
            ls.generation,
            ls.state,
            ls.renewal_age_ms
        );
        for h in &ls.hosts {
            println!(
                "  h {} gen {} {} {}",
                h.host_id, h.generation, h.state, h.name
            );
        }
    }
    for l in &st.leases {
        println!(
            "r {}{} lver {} pid {}",
            l.spec,
            if l.shared { ":SH" } else { "" },
            l.lver,
            l.pid
        );
    }
}
