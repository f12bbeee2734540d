//! `snapshot ...`.

use crate::output::{self, n, s, sz, Table};
use crate::{confirm, seg, Ctx};
use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a volume (its current top layer freezes).
    Create {
        #[arg(value_name = "VOL")]
        volume: String,
        name: String,
        /// Client-chosen id: repeating the create with it returns the same snapshot.
        #[arg(long)]
        id: Option<String>,
    },
    /// A volume's snapshots, oldest first.
    List {
        #[arg(value_name = "VOL")]
        volume: String,
    },
    /// Put a volume back to a snapshot (what was written since is lost).
    Revert {
        #[arg(value_name = "VOL")]
        volume: String,
        #[arg(value_name = "SNAP")]
        snapshot: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// Delete a snapshot.
    Delete {
        #[arg(value_name = "VOL")]
        volume: String,
        #[arg(value_name = "SNAP")]
        snapshot: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
}

fn path(volume: &str) -> String {
    format!("/v1/volumes/{}/snapshots", seg(volume))
}

pub fn run(ctx: &Ctx, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Create { volume, name, id } => {
            let mut body = json!({ "name": name });
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            let (status, sn) = ctx.post_status(&path(&volume), &body)?;
            if ctx.json_out(&sn)? {
                return Ok(());
            }
            if ctx.quiet {
                outln!("{}", s(&sn["id"]));
                return Ok(());
            }
            outln!(
                "{} snapshot {} ({:?}) of volume {}",
                if status == 201 { "created" } else { "exists:" },
                s(&sn["id"]),
                s(&sn["name"]),
                s(&sn["volume"])
            );
            Ok(())
        }
        SnapshotCmd::List { volume } => {
            let snaps = ctx.get(&path(&volume))?;
            if ctx.json_out(&snaps)? {
                return Ok(());
            }
            let snaps = snaps.as_array().cloned().unwrap_or_default();
            if ctx.quiet {
                snaps.iter().for_each(|sn| outln!("{}", s(&sn["id"])));
                return Ok(());
            }
            out!("{}", table(&snaps).render());
            Ok(())
        }
        SnapshotCmd::Revert {
            volume,
            snapshot,
            yes,
        } => {
            confirm(
                yes,
                &format!(
                    "revert volume {volume} to snapshot {snapshot} (losing what was written since)"
                ),
            )?;
            let v = ctx.post(
                &format!("{}/{}/revert", path(&volume), seg(&snapshot)),
                &json!({}),
            )?;
            if ctx.json_out(&v)? {
                return Ok(());
            }
            ctx.say(format_args!(
                "volume {} ({:?}) reverted to snapshot {snapshot}, {}",
                s(&v["id"]),
                s(&v["name"]),
                sz(&v["size"])
            ));
            Ok(())
        }
        SnapshotCmd::Delete {
            volume,
            snapshot,
            yes,
        } => {
            confirm(
                yes,
                &format!("delete snapshot {snapshot} of volume {volume}"),
            )?;
            ctx.delete(&format!("{}/{}", path(&volume), seg(&snapshot)))?;
            ctx.say(format_args!(
                "deleted snapshot {snapshot} of volume {volume}"
            ));
            Ok(())
        }
    }
}

pub fn table(snaps: &[Value]) -> Table {
    let mut t = Table::new(&["SNAPSHOT", "NAME", "CREATED", "LV"]);
    for sn in snaps {
        t.row(vec![
            s(&sn["id"]),
            s(&sn["name"]),
            output::time(n(&sn["created"])),
            s(&sn["lv"]),
        ]);
    }
    t
}
