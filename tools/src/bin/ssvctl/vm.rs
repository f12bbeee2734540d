//! `vm ...`: VMs ssvd runs on this host.

use crate::output::{self, kv, list, n, s, sz, Table};
use crate::{seg, Ctx};
use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};
use std::io::Read;

#[derive(Subcommand)]
pub enum VmCmd {
    /// Start a VM on volumes of this host's pools.
    Start {
        name: String,
        /// Guest RAM, MiB.
        #[arg(long, default_value_t = 256)]
        memory: u64,
        #[arg(long, default_value_t = 1)]
        vcpus: u8,
        /// A Linux kernel (bzImage or ELF), as a path on this host.
        #[arg(
            long,
            conflicts_with = "realmode",
            required_unless_present = "realmode"
        )]
        kernel: Option<String>,
        #[arg(long, requires = "kernel")]
        initrd: Option<String>,
        #[arg(long, requires = "kernel")]
        cmdline: Option<String>,
        /// A flat 16-bit image started at 0:0x7c00.
        #[arg(long)]
        realmode: Option<String>,
        /// A volume (id or name) as the next disk; `VOL:ro` read-only. Repeatable.
        #[arg(long = "disk", value_name = "VOL")]
        disks: Vec<String>,
    },
    /// Shut a VM down (killed if it does not stop in time).
    Stop { name: String },
    /// VMs started on this host.
    List,
    /// A VM, with its state and its disks' allocation.
    Show { name: String },
    /// Stop a VM's vCPUs until `vm resume`.
    Pause { name: String },
    /// Run a paused VM again (unless a disk still waits for space).
    Resume { name: String },
    /// Online snapshot of a VM's disk.
    Snapshot {
        name: String,
        /// The snapshot's name.
        snapshot: String,
        /// The disk's volume; may be left out when the VM has one disk.
        #[arg(long, value_name = "VOL")]
        disk: Option<String>,
    },
    /// The VM's serial console.
    Console {
        name: String,
        /// Keep printing what the guest writes, until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
    /// Forget a VM that has exited.
    Remove { name: String },
}

fn path(name: &str) -> String {
    format!("/v1/vms/{}", seg(name))
}

pub fn run(ctx: &Ctx, cmd: VmCmd) -> Result<()> {
    match cmd {
        VmCmd::Start {
            name,
            memory,
            vcpus,
            kernel,
            initrd,
            cmdline,
            realmode,
            disks,
        } => {
            let body = json!({
                "name": name, "memory_mib": memory, "vcpus": vcpus, "kernel": kernel,
                "initrd": initrd, "cmdline": cmdline, "realmode": realmode, "disks": disks,
            });
            let v = ctx.post("/v1/vms", &body)?;
            if ctx.json_out(&v)? {
                return Ok(());
            }
            ctx.say(format_args!(
                "started VM {} (pid {}) with disks {}",
                s(&v["name"]),
                n(&v["pid"]),
                list(&v["disks"])
            ));
            Ok(())
        }
        VmCmd::Stop { name } => {
            let v = ctx.post(&format!("{}/stop", path(&name)), &json!({}))?;
            if ctx.json_out(&v)? {
                return Ok(());
            }
            ctx.say(format_args!("VM {name} stopped: {}", s(&v["exit"])));
            Ok(())
        }
        VmCmd::List => {
            let vms = ctx.get("/v1/vms")?;
            if ctx.json_out(&vms)? {
                return Ok(());
            }
            let vms = vms.as_array().cloned().unwrap_or_default();
            if ctx.quiet {
                vms.iter().for_each(|v| outln!("{}", s(&v["name"])));
                return Ok(());
            }
            out!("{}", table(&vms).render());
            Ok(())
        }
        VmCmd::Show { name } => {
            let v = ctx.get(&path(&name))?;
            if ctx.json_out(&v)? {
                return Ok(());
            }
            let st = &v["status"];
            let state = run_state(st).unwrap_or_else(|| s(&v["state"]));
            out!(
                "{}",
                kv(&[
                    ("VM", s(&v["name"])),
                    ("State", state),
                    ("Process", n(&v["pid"]).to_string()),
                    ("Started", output::time_ms(n(&v["started_ms"]))),
                    ("Exit", s(&v["exit"])),
                    ("vCPUs", s(&st["vcpus"])),
                    ("Memory", sz(&st["memory"])),
                    ("Console", s(&v["console"])),
                ])
            );
            let disks = st["disks"].as_array().cloned().unwrap_or_default();
            if !disks.is_empty() {
                let mut t = Table::new(&[
                    "DISK",
                    "SIZE",
                    "LV",
                    "ALLOCATED",
                    "LAYERS",
                    "EXTENSIONS",
                    "STATE",
                ]);
                for d in &disks {
                    t.row(vec![
                        s(&d["id"]),
                        sz(&d["virtual_size"]),
                        sz(&d["lv_size"]),
                        sz(&d["allocated_end"]),
                        d["layers"].as_array().map_or(0, Vec::len).to_string(),
                        s(&d["growth"]["extensions"]),
                        if d["fenced"] == true {
                            "fenced (lease lost)".into()
                        } else if d["read_only"] == true {
                            "read-only".into()
                        } else {
                            "ok".into()
                        },
                    ]);
                }
                outln!();
                out!("{}", t.render());
            }
            Ok(())
        }
        VmCmd::Pause { name } => pause(ctx, &name, "pause"),
        VmCmd::Resume { name } => pause(ctx, &name, "resume"),
        VmCmd::Snapshot {
            name,
            snapshot,
            disk,
        } => {
            let v = ctx.post(
                &format!("{}/snapshot", path(&name)),
                &json!({"name": snapshot, "disk": disk}),
            )?;
            if ctx.json_out(&v)? {
                return Ok(());
            }
            if ctx.quiet {
                outln!("{}", s(&v["id"]));
                return Ok(());
            }
            outln!(
                "snapshot {} ({:?}) of volume {}, taken online",
                s(&v["id"]),
                s(&v["name"]),
                s(&v["volume"])
            );
            Ok(())
        }
        VmCmd::Console { name, follow } => {
            let q = if follow { "?follow=true" } else { "" };
            let mut r = ctx.stream(&format!("{}/console{q}", path(&name)))?;
            let mut buf = [0u8; 8192];
            loop {
                let k = r.read(&mut buf)?;
                if k == 0 {
                    return Ok(());
                }
                out!("{}", String::from_utf8_lossy(&buf[..k]));
            }
        }
        VmCmd::Remove { name } => {
            ctx.delete(&path(&name))?;
            ctx.say(format_args!("removed VM {name}"));
            Ok(())
        }
    }
}

/// The VMM's `state` (and `reasons`, when paused) as a word or two.
fn run_state(st: &Value) -> Option<String> {
    Some(match st["state"].as_str()? {
        "paused" => format!("paused ({})", list(&st["reasons"])),
        x => x.to_string(),
    })
}

/// `vm pause|resume`: says the VM's state after.
fn pause(ctx: &Ctx, name: &str, op: &str) -> Result<()> {
    let v = ctx.post(&format!("{}/{op}", path(name)), &json!({}))?;
    if ctx.json_out(&v)? {
        return Ok(());
    }
    let state = run_state(&v).unwrap_or_else(|| s(&v["state"]));
    ctx.say(format_args!("VM {name}: {state}"));
    Ok(())
}

pub fn table(vms: &[Value]) -> Table {
    let mut t = Table::new(&["VM", "STATE", "PID", "DISKS", "STARTED"]);
    for v in vms {
        let state = match v["exit"].as_str() {
            Some(e) => format!("exited ({e})"),
            None => s(&v["state"]),
        };
        t.row(vec![
            s(&v["name"]),
            state,
            n(&v["pid"]).to_string(),
            list(&v["disks"]),
            output::time_ms(n(&v["started_ms"])),
        ]);
    }
    t
}
