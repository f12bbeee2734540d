//! `ssvadm volume`: thin volumes (qcow2 in LVs) worked on directly, with no
//! daemon: create, inspect, copy data in and out, snapshot, revert, merge,
//! clone. Like the rest of ssvadm it takes no lease.

use crate::{open_devs, parse_size, split_lv};
use anyhow::{Context, Result};
use clap::Subcommand;
use lvm::{OpenVg, SegmentKind};
use serde_json::json;
use std::io::{Read, Seek, Write};
use std::sync::Arc;
use thin::chain::{self, LayerOptions};
use thin::{CreateOptions, LvStore, OpenOptions, StoreExtender, VgStore, Volume};

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a thin volume: a qcow2 image in a new LV that grows as it is written.
    Create {
        /// VG/NAME
        volume: String,
        /// Virtual size (k/m/g/t; bare numbers are MiB).
        #[arg(long)]
        size: Option<String>,
        #[arg(long, default_value = "64k")]
        cluster_size: String,
        /// LV size to start with.
        #[arg(long, default_value = "1g")]
        initial: String,
        /// Start as a linked clone of this read-only layer (LV name).
        #[arg(long)]
        backing: Option<String>,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Layers, sizes and where each layer's LV lies on its PV.
    Info {
        volume: String,
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Copy a file (or stdin: -) into the volume; the LV grows as needed.
    Write {
        volume: String,
        #[arg(long)]
        from: String,
        /// Where in the volume to start (k/m/g/t; bare numbers are MiB).
        #[arg(long, default_value = "0")]
        offset: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Copy the volume's whole virtual disk out as raw data.
    Read {
        volume: String,
        #[arg(long)]
        to: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Freeze the volume's top layer as a snapshot under a new empty top NEW_TOP.
    Snapshot {
        volume: String,
        new_top: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Make the volume read as SNAPSHOT again under a new top; later layers are removed.
    Revert {
        volume: String,
        snapshot: String,
        new_top: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Delete a snapshot layer by merging it into the layer above it.
    DeleteSnapshot {
        volume: String,
        snapshot: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Clone a volume: a full, independent copy of its data, or --linked over a read-only layer.
    Clone {
        volume: String,
        new_name: String,
        #[arg(long)]
        linked: bool,
        #[arg(required = true)]
        devices: Vec<String>,
    },
}

/// Data I/O bypasses the page cache, as a VM's would.
fn store(vg: &str, devices: &[String]) -> Result<Arc<VgStore>> {
    let devs = open_devs(devices, &san::OpenOptions::new().direct(true))?;
    let open = OpenVg::open(&devs, Some(vg)).with_context(|| format!("opening VG {vg}"))?;
    Ok(Arc::new(VgStore::from_open(open)))
}

fn writable(store: &Arc<VgStore>) -> OpenOptions {
    OpenOptions::default().with_extender(Arc::new(StoreExtender(store.clone())))
}

const MIB: u64 = 1 << 20;

pub fn run(cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Create {
            volume,
            size,
            cluster_size,
            initial,
            backing,
            devices,
        } => {
            let (vg, name) = split_lv(&volume)?;
            let st = store(vg, &devices)?;
            let opts = CreateOptions {
                size: size.as_deref().map(parse_size).transpose()?,
                cluster_size: parse_size(&cluster_size)?,
                initial_lv_size: parse_size(&initial)?,
                backing,
                tags: vec!["ssv".into()],
            };
            let h = thin::create(&*st, name, &opts)?;
            println!(
                "volume {volume} created: {} virtual, {} KiB clusters",
                human(h.size),
                h.cluster_size() >> 10
            );
        }
        VolumeCmd::Info {
            volume,
            json,
            devices,
        } => info(&volume, json, &devices)?,
        VolumeCmd::Write {
            volume,
            from,
            offset,
            devices,
        } => {
            let (vg, name) = split_lv(&volume)?;
            let st = store(vg, &devices)?;
            let v = Volume::open(&*st, name, &writable(&st))?;
            let mut input: Box<dyn Read> = if from == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(std::fs::File::open(&from).with_context(|| format!("opening {from}"))?)
            };
            let mut at = parse_size(&offset)?;
            let mut buf = vec![0u8; 4 << 20];
            let started = std::time::Instant::now();
            let mut total = 0u64;
            let mut progress = Progress::new();
            loop {
                let n = read_full(&mut input, &mut buf)?;
                if n == 0 {
                    break;
                }
                v.write(&buf[..n], at)
                    .with_context(|| format!("writing {n} bytes at offset {at}"))?;
                at += n as u64;
                total += n as u64;
                if total % (256 * MIB) < buf.len() as u64 {
                    let line = format!("{} written, LV {}", human(total), human(v.lv_size()));
                    progress.show(&line);
                }
            }
            v.flush()?;
            let g = v.growth();
            progress.done();
            println!(
                "{} written in {:.1} s; LV now {} (highest allocated offset {}); {} extensions, {} writes waited for one",
                human(total),
                started.elapsed().as_secs_f64(),
                human(v.lv_size()),
                human(v.allocated_end()),
                g.extensions,
                g.parked_writes
            );
        }
        VolumeCmd::Read {
            volume,
            to,
            devices,
        } => {
            let (vg, name) = split_lv(&volume)?;
            let st = store(vg, &devices)?;
            let v = Volume::open(&*st, name, &OpenOptions::read_only())?;
            let size = v.virtual_size();
            copy_out(&to, size, |buf, at| Ok(v.read(buf, at)?))?;
            println!("{} read into {to}", human(size));
        }
        VolumeCmd::Snapshot {
            volume,
            new_top,
            devices,
        } => {
            let (vg, name) = split_lv(&volume)?;
            let st = store(vg, &devices)?;
            chain::snapshot(&*st, name, &new_top, &LayerOptions::default())?;
            println!("{vg}/{name} is now a snapshot; the volume's top is {vg}/{new_top}");
        }
        VolumeCmd::Revert {
            volume,
            snapshot,
            new_top,
            devices,
        } => {
            let (vg, name) = split_lv(&volume)?;
            let st = store(vg, &devices)?;
            let gone = chain::revert(&*st, name, &snapshot, &new_top, &LayerOptions::default())?;
            println!(
                "reverted to {snapshot}; new top {vg}/{new_top}; removed {}",
                gone.join(", ")
            );
        }
        VolumeCmd::DeleteSnapshot {
            volume,
            snapshot,
            devices,
        } => {
            let (vg, name) = split_lv(&volume)?;
            let st = store(vg, &devices)?;
            let ext = Arc::new(StoreExtender(st.clone()));
            chain::delete_snapshot(
                &*st,
                name,
                &snapshot,
                Some(ext),
                thin::volume::DEFAULT_MAX_DEPTH,
            )?;
            println!("snapshot {snapshot} merged into the layer above it and removed");
        }
        VolumeCmd::Clone {
            volume,
            new_name,
            linked,
            devices,
        } => {
            let (vg, name) = split_lv(&volume)?;
            let st = store(vg, &devices)?;
            let opts = CreateOptions {
                tags: vec!["ssv".into()],
                ..Default::default()
            };
            if linked {
                thin::clone::linked_clone(&*st, name, &new_name, &opts)?;
                println!("{vg}/{new_name}: linked clone over {vg}/{name} (keep {name} read-only)");
            } else {
                let ext = Arc::new(StoreExtender(st.clone()));
                let mut progress = Progress::new();
                let mut last = None;
                let mut report = |p: thin::clone::Progress| {
                    let pct = (p.done * 100).checked_div(p.total).unwrap_or(100);
                    let step = if progress.tty { pct } else { pct / 25 * 25 };
                    if last != Some(step) {
                        progress.show(&format!("cloning: {step:3}% of {}", human(p.total)));
                        last = Some(step);
                    }
                };
                let rep =
                    thin::clone::full_clone(&*st, name, &new_name, &opts, Some(ext), &mut report)?;
                progress.done();
                println!(
                    "{vg}/{new_name}: full clone of {vg}/{name}: {} copied, {} of zeroes left unallocated",
                    human(rep.copied),
                    human(rep.zero)
                );
            }
        }
    }
    Ok(())
}

/// Progress on stderr: one line rewritten in place on a terminal, plain
/// lines (fewer of them) in a log.
struct Progress {
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        Progress {
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }
    fn show(&mut self, line: &str) {
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        self.shown = true;
    }
    fn done(&self) {
        if self.tty && self.shown {
            eprintln!();
        }
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// Writes `size` bytes that `read(buf, offset)` gives into a new file `to`,
/// 4 MiB at a time; runs of zeroes stay holes.
pub(crate) fn copy_out(
    to: &str,
    size: u64,
    mut read: impl FnMut(&mut [u8], u64) -> Result<()>,
) -> Result<()> {
    let mut out = std::fs::File::create(to).with_context(|| format!("creating {to}"))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        read(&mut buf[..n], at)?;
        if san::is_zero(&buf[..n]) {
            out.seek(std::io::SeekFrom::Current(n as i64))?;
        } else {
            out.write_all(&buf[..n])?;
        }
        at += n as u64;
    }
    out.set_len(size).with_context(|| format!("writing {to}"))?;
    Ok(())
}

pub(crate) fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b => format!("{b} B"),
    }
}

fn info(volume: &str, as_json: bool, devices: &[String]) -> Result<()> {
    let (vg, name) = split_lv(volume)?;
    let st = store(vg, devices)?;
    let layers = thin::volume::chain(&*st, name, thin::volume::DEFAULT_MAX_DEPTH)?;
    let v = st.vg();
    let mut out = Vec::new();
    for (i, (lv_name, h)) in layers.iter().enumerate() {
        let lv = v
            .lv(lv_name)
            .with_context(|| format!("LV {lv_name} missing"))?;
        // Where a one-segment LV starts on its PV: what QEMU's raw `offset` option takes.
        let place = match lv.segments.as_slice() {
            [seg] => match &seg.kind {
                SegmentKind::Striped { stripes, .. } if stripes.len() == 1 => {
                    let (pv, at) = v.stripe_start(&stripes[0])?;
                    Some((pv.device.clone(), at))
                }
                _ => None,
            },
            _ => None,
        };
        let end = thin::layer::allocated_end(&*st.open(lv_name)?, h)?;
        out.push(json!({
            "layer": lv_name,
            "role": if i == 0 { "top" } else { "snapshot" },
            "virtual_size": h.size,
            "cluster_size": h.cluster_size(),
            "lv_size": lv.extent_count() * v.extent_bytes(),
            "allocated_end": end,
            "backing": h.backing.as_ref().map(|b| b.name.clone()),
            "pv_device": place.as_ref().map(|p| p.0.clone()),
            "pv_offset": place.as_ref().map(|p| p.1),
        }));
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "volume": volume, "layers": out }))?
        );
        return Ok(());
    }
    println!("volume {volume}: {} layers, top first", out.len());
    for l in &out {
        println!(
            "  {:<20} {:<8} virtual {:>10}  LV {:>10}  allocated {:>10}  backing {}",
            l["layer"].as_str().unwrap_or("?"),
            l["role"].as_str().unwrap_or("?"),
            human(l["virtual_size"].as_u64().unwrap_or(0)),
            human(l["lv_size"].as_u64().unwrap_or(0)),
            human(l["allocated_end"].as_u64().unwrap_or(0)),
            l["backing"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}
