//! ssvadm: the offline low-level tool for ssv pools, like pvck and
//! vgcfgbackup: it reads labels, metadata areas and the VG straight from the
//! devices, and makes metadata-only changes there, for recovery and tests.
//! It takes no lease: run it only where no ssvd writes the pool.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use lvm::mda::{max_text_len, MdaHeader, RawLocn};
use lvm::scan::{AreaScan, LabelScan, Scan};
use lvm::{format_pv, OpenVg, PvDev, PvFormat, SegmentKind, Stamp, Vg};
use san::{FileDev, OpenOptions};
use serde_json::{json, Value};
use std::sync::Arc;

mod volume;

/// ssv pools have many LVs: a 128 MiB metadata area holds about 200,000 of them.
const POOL_MDA_SIZE: &str = "128m";
/// ssv pools use large extents: fewer segments, smaller metadata.
const POOL_EXTENT_SIZE: &str = "128m";

#[derive(Parser)]
#[command(
    name = "ssvadm",
    version,
    about = "Offline low-level tool for ssv pools (LVM2 volume groups)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print labels, metadata areas and the VG as lvm2 would read it.
    Inspect {
        #[arg(required = true)]
        devices: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Physical volumes.
    #[command(subcommand)]
    Pv(PvCmd),
    /// Volume groups (pools).
    #[command(subcommand)]
    Vg(VgCmd),
    /// Logical volumes.
    #[command(subcommand)]
    Lv(LvCmd),
    /// Thin volumes: qcow2 images in LVs that grow as they are written.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Rewrite stale metadata copies and PV headers from the newest valid copy.
    Repair {
        vg: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PvCmd {
    /// Write a PV label and empty metadata areas (destroys what the device held).
    Format {
        device: String,
        /// Size of each metadata area (k/m/g/t suffix; bare numbers are MiB).
        #[arg(long, default_value = POOL_MDA_SIZE)]
        metadata_size: String,
        /// 1: at the start; 2: also at the end of the device.
        #[arg(long, default_value_t = 1)]
        metadata_copies: u8,
        #[arg(long, default_value = "1m")]
        data_alignment: String,
        /// Overwrite a PV that belongs to a VG.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum VgCmd {
    /// Create a VG on formatted, unused PVs.
    Create {
        vg: String,
        #[arg(required = true)]
        devices: Vec<String>,
        #[arg(long, default_value = POOL_EXTENT_SIZE)]
        extent_size: String,
    },
    /// Add a formatted, unused PV to a VG.
    Extend {
        vg: String,
        /// The PV to add.
        new_device: String,
        /// The VG's current devices.
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Add or remove VG tags.
    Tag {
        vg: String,
        #[command(flatten)]
        tags: TagArgs,
        #[arg(required = true)]
        devices: Vec<String>,
    },
}

#[derive(Args)]
struct TagArgs {
    #[arg(long = "add")]
    add: Vec<String>,
    #[arg(long = "del")]
    del: Vec<String>,
}

#[derive(Args)]
struct Size {
    /// Size (k/m/g/t suffix; bare numbers are MiB), rounded up to whole extents.
    #[arg(long, short = 'L', conflicts_with = "extents")]
    size: Option<String>,
    #[arg(long, short = 'l')]
    extents: Option<u64>,
}

#[derive(Subcommand)]
enum LvCmd {
    /// Create a linear LV.
    Create {
        /// VG/LV
        lv: String,
        #[command(flatten)]
        size: Size,
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Grow an LV by the given size.
    Extend {
        lv: String,
        #[command(flatten)]
        size: Size,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Shrink an LV by the given size (its data past the new end is lost).
    Reduce {
        lv: String,
        #[command(flatten)]
        size: Size,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    Remove {
        lv: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    Rename {
        lv: String,
        new_name: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    Tag {
        lv: String,
        #[command(flatten)]
        tags: TagArgs,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Copy the LV's bytes into a file (runs of zeroes stay holes): an LV
    /// taken out whole, e.g. a layer's qcow2 for `qemu-img check`.
    Read {
        lv: String,
        #[arg(long)]
        to: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Serve the LV's bytes read-only over NBD on a Unix socket, as named
    /// export LV, until interrupted: stock tools (`qemu-img check -f qcow2
    /// nbd+unix:///LV?socket=SOCKET`) then read an LV of any shape.
    Serve {
        lv: String,
        #[arg(long)]
        socket: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
}

/// Parses `512`, `4k`, `128M`, `1g`, `2T` (binary units; bare numbers are MiB, as in lvm).
fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "m"),
    };
    let shift = match unit.to_ascii_lowercase().as_str() {
        "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => bail!("size {s:?}: unknown unit {unit:?} (use b, k, m, g or t)"),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("size {s:?}: {num:?} is not a whole number"))?;
    n.checked_mul(1 << shift)
        .with_context(|| format!("size {s:?} is too large"))
}

fn open_devs(paths: &[String], opts: &OpenOptions) -> Result<Vec<PvDev>> {
    paths
        .iter()
        .map(|p| {
            let f = FileDev::open(p, opts).with_context(|| format!("opening {p}"))?;
            Ok(PvDev::new(Arc::new(f), p.clone()))
        })
        .collect()
}

fn split_lv(s: &str) -> Result<(&str, &str)> {
    s.split_once('/')
        .with_context(|| format!("{s:?}: name the LV as VG/LV"))
}

fn extents(vg: &Vg, size: &Size) -> Result<u64> {
    match (&size.size, size.extents) {
        (_, Some(n)) => Ok(n),
        (Some(s), None) => Ok(parse_size(s)?.div_ceil(vg.extent_bytes())),
        (None, None) => bail!("give --size or --extents"),
    }
}

/// Opens VG `name` for a change; stale copies are repaired first.
fn open_rw(name: &str, devices: &[String]) -> Result<OpenVg> {
    let devs = open_devs(devices, &OpenOptions::new())?;
    let mut vg = OpenVg::open(&devs, Some(name)).with_context(|| format!("opening VG {name}"))?;
    for s in &vg.health().stale {
        eprintln!("repairing stale copy: {s}");
    }
    vg.repair()?;
    Ok(vg)
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let line = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.cmd {
        Cmd::Inspect { devices, json } => inspect(&devices, json)?,
        Cmd::Pv(PvCmd::Format {
            device,
            metadata_size,
            metadata_copies,
            data_alignment,
            force,
        }) => {
            let dev = open_devs(std::slice::from_ref(&device), &OpenOptions::new())?.remove(0);
            let f = PvFormat {
                mda_size: parse_size(&metadata_size)?,
                mda_copies: metadata_copies,
                data_alignment: parse_size(&data_alignment)?,
                force,
            };
            let l = format_pv(&*dev.dev, &f).with_context(|| format!("formatting {device}"))?;
            println!(
                "{device}: PV {} formatted, data from byte {}",
                l.uuid,
                l.pe_start()
            );
        }
        Cmd::Vg(VgCmd::Create {
            vg,
            devices,
            extent_size,
        }) => {
            let devs = open_devs(&devices, &OpenOptions::new())?;
            let open = OpenVg::create(&vg, &devs, parse_size(&extent_size)?)?;
            let free = open.vg().free_extent_count()?;
            println!(
                "VG {vg} created: {} PVs, {free} free extents of {}",
                devs.len(),
                extent_size
            );
        }
        Cmd::Vg(VgCmd::Extend {
            vg,
            new_device,
            devices,
        }) => {
            let mut open = open_rw(&vg, &devices)?;
            let new = open_devs(std::slice::from_ref(&new_device), &OpenOptions::new())?.remove(0);
            open.add_pv(&new)?;
            println!("VG {vg}: {new_device} added");
        }
        Cmd::Vg(VgCmd::Tag { vg, tags, devices }) => {
            open_rw(&vg, &devices)?.change(&line, |v| v.change_tags(None, &tags.add, &tags.del))?;
        }
        Cmd::Lv(cmd) => lv(cmd, &line)?,
        Cmd::Volume(cmd) => volume::run(cmd)?,
        Cmd::Repair { vg, devices } => {
            let devs = open_devs(&devices, &OpenOptions::new())?;
            let mut open = OpenVg::open(&devs, Some(&vg))?;
            if !open.health().corrupt.is_empty() {
                bail!(
                    "damaged areas need a manual rewrite, which ssvadm does not do yet: {}",
                    open.health().corrupt.join("; ")
                );
            }
            let n = open.health().stale.len();
            open.repair()?;
            println!(
                "VG {vg}: {n} stale copies rewritten at seqno {}",
                open.vg().seqno
            );
        }
    }
    Ok(())
}

fn lv(cmd: LvCmd, line: &str) -> Result<()> {
    let stamp = Stamp::now();
    match cmd {
        LvCmd::Create {
            lv,
            size,
            tags,
            devices,
        } => {
            let (vg, name) = split_lv(&lv)?;
            let mut open = open_rw(vg, &devices)?;
            let n = extents(open.vg(), &size)?;
            open.change(line, |v| v.create_lv(name, n, &tags, &stamp).map(|_| ()))?;
            println!("LV {lv} created: {n} extents");
        }
        LvCmd::Extend { lv, size, devices } => {
            let (vg, name) = split_lv(&lv)?;
            let mut open = open_rw(vg, &devices)?;
            let n = extents(open.vg(), &size)?;
            open.change(line, |v| v.extend_lv(name, n))?;
            println!("LV {lv} extended by {n} extents");
        }
        LvCmd::Reduce { lv, size, devices } => {
            let (vg, name) = split_lv(&lv)?;
            let mut open = open_rw(vg, &devices)?;
            let n = extents(open.vg(), &size)?;
            open.change(line, |v| v.reduce_lv(name, n))?;
            println!("LV {lv} reduced by {n} extents");
        }
        LvCmd::Remove { lv, devices } => {
            let (vg, name) = split_lv(&lv)?;
            open_rw(vg, &devices)?.change(line, |v| v.remove_lv(name).map(|_| ()))?;
            println!("LV {lv} removed");
        }
        LvCmd::Rename {
            lv,
            new_name,
            devices,
        } => {
            let (vg, name) = split_lv(&lv)?;
            open_rw(vg, &devices)?.change(line, |v| v.rename_lv(name, &new_name))?;
            println!("LV {lv} renamed to {vg}/{new_name}");
        }
        LvCmd::Tag { lv, tags, devices } => {
            let (vg, name) = split_lv(&lv)?;
            open_rw(vg, &devices)?
                .change(line, |v| v.change_tags(Some(name), &tags.add, &tags.del))?;
        }
        LvCmd::Read { lv, to, devices } => {
            let (vg, name) = split_lv(&lv)?;
            let devs = open_devs(&devices, &OpenOptions::new().read_only(true))?;
            let open = OpenVg::open(&devs, Some(vg)).with_context(|| format!("opening VG {vg}"))?;
            let dev = open.lv_dev(name)?;
            let size = san::BlockDev::size(&dev);
            volume::copy_out(&to, size, |buf, at| {
                Ok(san::BlockDev::read_at(&dev, buf, at)?)
            })?;
            println!("{} of {lv} read into {to}", volume::human(size));
        }
        LvCmd::Serve {
            lv,
            socket,
            devices,
        } => {
            let (vg, name) = split_lv(&lv)?;
            let devs = open_devs(&devices, &OpenOptions::new().read_only(true))?;
            let open = OpenVg::open(&devs, Some(vg)).with_context(|| format!("opening VG {vg}"))?;
            let dev = Arc::new(open.lv_dev(name)?);
            // Blocked before the server's threads start (they inherit the
            // mask), so SIGINT/SIGTERM reach only `wait` and the socket
            // file is removed on the way out.
            let signals = Signals::block();
            let server = san::nbd::NbdServer::start(san::nbd::NbdConfig::new().unix(&socket))
                .with_context(|| format!("serving on {socket}"))?;
            server.add_export(name, dev, true)?;
            println!("serving {lv} read-only: nbd+unix:///{name}?socket={socket}");
            signals.wait();
            server.stop();
        }
    }
    Ok(())
}

/// SIGINT and SIGTERM, blocked in this thread (and threads it starts) to
/// be taken synchronously.
struct Signals(libc::sigset_t);

impl Signals {
    fn block() -> Signals {
        // SAFETY: sigset_t is plain data that sigemptyset/sigaddset
        // initialise; pthread_sigmask changes only this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Signals(set)
        }
    }

    /// Returns when one of them arrives.
    fn wait(&self) {
        let mut sig = 0;
        // SAFETY: the set was initialised in `block`; sig is a valid out pointer.
        unsafe { libc::sigwait(&self.0, &mut sig) };
    }
}

fn locn(l: &RawLocn) -> Value {
    json!({"offset": l.offset, "size": l.size, "checksum": format!("{:#010x}", l.checksum), "ignored": l.ignored()})
}

fn header(h: &MdaHeader) -> Value {
    json!({"committed": locn(&h.committed), "precommitted": locn(&h.precommitted), "max_text": max_text_len(h.size)})
}

fn vg_json(vg: &Vg) -> Value {
    let eb = vg.extent_bytes();
    let pvs: Vec<Value> = vg
        .pvs
        .iter()
        .map(|p| {
            json!({"name": p.name, "id": p.id.to_string(), "device": p.device, "status": p.status,
            "tags": p.tags, "pe_start_bytes": p.pe_start * 512, "pe_count": p.pe_count})
        })
        .collect();
    let lvs: Vec<Value> = vg
        .lvs
        .iter()
        .map(|l| {
            let segs: Vec<Value> = l
                .segments
                .iter()
                .map(|s| match &s.kind {
                    SegmentKind::Striped { stripes, stripe_size } => json!({
                        "start_extent": s.start_extent, "extent_count": s.extent_count,
                        "type": if stripes.len() == 1 { "linear" } else { "striped" },
                        "stripe_size_bytes": stripe_size.map(|x| x * 512),
                        "stripes": stripes.iter().map(|st| json!({"pv": st.pv, "start_pe": st.start_pe})).collect::<Vec<_>>()}),
                    SegmentKind::Other { type_name } => json!({
                        "start_extent": s.start_extent, "extent_count": s.extent_count, "type": type_name}),
                })
                .collect();
            json!({"name": l.name, "id": l.id.to_string(), "status": l.status, "tags": l.tags,
                "size_bytes": l.extent_count() * eb, "segments": segs})
        })
        .collect();
    let free = vg.free_extent_count().unwrap_or(0);
    json!({"name": vg.name, "id": vg.id.to_string(), "seqno": vg.seqno, "status": vg.status, "tags": vg.tags,
        "extent_size_bytes": eb, "free_extents": free, "pvs": pvs, "lvs": lvs})
}

fn scan_json(scan: &Scan) -> Value {
    let devs: Vec<Value> = scan
        .devs
        .iter()
        .map(|d| {
            let label = match &d.label {
                LabelScan::None => json!(null),
                LabelScan::Bad(r) => json!({"error": r}),
                LabelScan::Pv(l) => json!({
                    "sector": l.sector, "uuid": l.uuid.to_string(), "device_size": l.device_size,
                    "pe_start": l.pe_start(), "ext_version": l.ext_version, "in_use": l.in_use(),
                    "mdas": l.mdas.iter().map(|m| json!({"offset": m.offset, "size": m.size})).collect::<Vec<_>>()}),
            };
            let areas: Vec<Value> = d
                .areas
                .iter()
                .map(|a| {
                    let state = match &a.state {
                        AreaScan::BadHeader(r) => json!({"error": r}),
                        AreaScan::Empty(h) => json!({"state": "empty", "header": header(h)}),
                        AreaScan::Ignored(h) => json!({"state": "ignored", "header": header(h)}),
                        AreaScan::BadText(h, r) => json!({"state": "bad text", "error": r, "header": header(h)}),
                        AreaScan::Metadata(h, i) => json!({"state": "metadata", "header": header(h),
                            "vg": scan.texts[*i].vg.name, "seqno": scan.texts[*i].vg.seqno}),
                    };
                    json!({"start": a.start, "size": a.size, "area": state})
                })
                .collect();
            json!({"path": d.pv.path, "identity": d.pv.dev.identity().to_string(), "label": label, "areas": areas})
        })
        .collect();
    json!({ "devices": devs })
}

fn inspect(paths: &[String], as_json: bool) -> Result<()> {
    let devs = open_devs(paths, &OpenOptions::new().read_only(true))?;
    let scan = lvm::scan(&devs)?;
    let mut out = scan_json(&scan);
    let mut vgs = Vec::new();
    for name in scan.vg_names() {
        match OpenVg::open(&devs, Some(&name)) {
            Ok(open) => {
                let mut v = vg_json(open.vg());
                v["health"] = json!({"stale": open.health().stale, "corrupt": open.health().corrupt,
                    "missing": open.health().missing});
                vgs.push(v);
            }
            Err(e) => vgs.push(json!({"name": name, "error": e.to_string()})),
        }
    }
    out["vgs"] = Value::Array(vgs);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&out);
    }
    Ok(())
}

fn print_text(v: &Value) {
    for d in v["devices"].as_array().into_iter().flatten() {
        println!(
            "{} ({})",
            d["path"].as_str().unwrap_or("?"),
            d["identity"].as_str().unwrap_or("?")
        );
        let l = &d["label"];
        if l.is_null() {
            println!("  no LVM2 label");
            continue;
        }
        if let Some(e) = l["error"].as_str() {
            println!("  BAD LABEL: {e}");
            continue;
        }
        println!(
            "  label: sector {}, PV {}, {} bytes, data from byte {}, {}",
            l["sector"],
            l["uuid"].as_str().unwrap_or("?"),
            l["device_size"],
            l["pe_start"],
            if l["in_use"].as_bool() == Some(true) {
                "in a VG"
            } else {
                "orphan"
            }
        );
        for a in d["areas"].as_array().into_iter().flatten() {
            let s = &a["area"];
            let what = match s["state"].as_str() {
                Some("metadata") => format!(
                    "VG {} seqno {} at offset {} ({} bytes, max {})",
                    s["vg"].as_str().unwrap_or("?"),
                    s["seqno"],
                    s["header"]["committed"]["offset"],
                    s["header"]["committed"]["size"],
                    s["header"]["max_text"]
                ),
                Some(other) => format!(
                    "{other}{}",
                    s["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
                None => format!("BAD HEADER: {}", s["error"].as_str().unwrap_or("?")),
            };
            println!(
                "  metadata area at byte {} ({} bytes): {what}",
                a["start"], a["size"]
            );
        }
    }
    for vg in v["vgs"].as_array().into_iter().flatten() {
        println!();
        if let Some(e) = vg["error"].as_str() {
            println!(
                "VG {}: cannot be read: {e}",
                vg["name"].as_str().unwrap_or("?")
            );
            continue;
        }
        let eb = vg["extent_size_bytes"].as_u64().unwrap_or(1);
        println!(
            "VG {} ({}) seqno {}, extent size {} MiB, {} free extents, tags {}",
            vg["name"].as_str().unwrap_or("?"),
            vg["id"].as_str().unwrap_or("?"),
            vg["seqno"],
            eb >> 20,
            vg["free_extents"],
            vg["tags"]
        );
        for p in vg["pvs"].as_array().into_iter().flatten() {
            println!(
                "  {} {} {} extents on {}",
                p["name"].as_str().unwrap_or("?"),
                p["id"].as_str().unwrap_or("?"),
                p["pe_count"],
                p["device"].as_str().unwrap_or("?")
            );
        }
        for l in vg["lvs"].as_array().into_iter().flatten() {
            println!(
                "  LV {} {} MiB tags {}",
                l["name"].as_str().unwrap_or("?"),
                l["size_bytes"].as_u64().unwrap_or(0) >> 20,
                l["tags"]
            );
            for s in l["segments"].as_array().into_iter().flatten() {
                let on: Vec<String> = s["stripes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|st| format!("{}:{}", st["pv"].as_str().unwrap_or("?"), st["start_pe"]))
                    .collect();
                println!(
                    "    extents {}+{} {} {}",
                    s["start_extent"],
                    s["extent_count"],
                    s["type"].as_str().unwrap_or("?"),
                    on.join(" ")
                );
            }
        }
        for (k, list) in vg["health"].as_object().into_iter().flatten() {
            for item in list.as_array().into_iter().flatten() {
                println!("  {}: {}", k.to_uppercase(), item.as_str().unwrap_or("?"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("128M").unwrap(), 128 << 20);
        assert_eq!(parse_size("2").unwrap(), 2 << 20);
        assert_eq!(parse_size("512b").unwrap(), 512);
        assert!(parse_size("1x").is_err());
        assert!(parse_size("-1g").is_err());
        assert!(parse_size("99999999999t").is_err());
    }
}
