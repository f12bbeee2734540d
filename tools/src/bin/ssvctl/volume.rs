//! `volume ...`.

use crate::output::{self, kv, n, s, sz, Table};
use crate::{confirm, job, seg, Ctx};
use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a thin volume.
    Create {
        name: String,
        /// Virtual size: bytes, or e.g. 10g.
        #[arg(long)]
        size: String,
        /// Client-chosen id: repeating the create with it returns the same volume.
        #[arg(long)]
        id: Option<String>,
        /// Pool to create it in (may be left out when the host has one).
        #[arg(long)]
        pool: Option<String>,
        /// qcow2 cluster size, e.g. 64k (ssvd's default).
        #[arg(long, value_name = "SIZE")]
        cluster_size: Option<String>,
    },
    /// Volumes in every pool of this host.
    List {
        /// Also ask each volume's virtual size and state (one call per volume).
        #[arg(short, long)]
        long: bool,
    },
    /// One volume: sizes, state, layers, snapshots.
    Show {
        #[arg(value_name = "VOL")]
        volume: String,
    },
    /// Grow a volume's virtual size (volumes only grow).
    Resize {
        #[arg(value_name = "VOL")]
        volume: String,
        #[arg(long)]
        size: String,
    },
    /// Delete a volume and its snapshots.
    Delete {
        #[arg(value_name = "VOL")]
        volume: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// Clone a volume (or one of its snapshots) into a new volume.
    Clone {
        #[arg(value_name = "VOL")]
        volume: String,
        /// The new volume's name.
        name: String,
        /// A linked clone over a snapshot, sharing its data (needs --snapshot);
        /// without it a full, independent copy made by a job.
        #[arg(long)]
        linked: bool,
        /// Clone this snapshot of the volume (id or name).
        #[arg(long, value_name = "SNAP")]
        snapshot: Option<String>,
        /// The new volume's id.
        #[arg(long)]
        id: Option<String>,
        /// Return once a full clone's job started instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Open a volume for writing on this host (takes its lease, exports it).
    Open {
        #[arg(value_name = "VOL")]
        volume: String,
    },
    /// Close a volume open on this host.
    Close {
        #[arg(value_name = "VOL")]
        volume: String,
    },
}

fn path(volume: &str) -> String {
    format!("/v1/volumes/{}", seg(volume))
}

pub fn run(ctx: &Ctx, cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Create {
            name,
            size,
            id,
            pool,
            cluster_size,
        } => {
            let mut body = json!({ "name": name, "size": size });
            for (k, v) in [("id", id), ("pool", pool), ("cluster_size", cluster_size)] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            let (status, v) = ctx.post_status("/v1/volumes", &body)?;
            if ctx.json_out(&v)? {
                return Ok(());
            }
            if ctx.quiet {
                outln!("{}", s(&v["id"]));
                return Ok(());
            }
            outln!(
                "{} volume {} ({:?}), {} in pool {}",
                if status == 201 { "created" } else { "exists:" },
                s(&v["id"]),
                s(&v["name"]),
                sz(&v["size"]),
                s(&v["pool"])
            );
            Ok(())
        }
        VolumeCmd::List { long } => {
            let mut vols = ctx.get("/v1/volumes")?;
            if long {
                if let Some(list) = vols.as_array_mut() {
                    for v in list.iter_mut() {
                        // A volume deleted meanwhile keeps its record.
                        if let Ok(d) = ctx.get(&path(&s(&v["id"]))) {
                            *v = d;
                        }
                    }
                }
            }
            if ctx.json_out(&vols)? {
                return Ok(());
            }
            let vols = vols.as_array().cloned().unwrap_or_default();
            if ctx.quiet {
                vols.iter().for_each(|v| outln!("{}", s(&v["id"])));
                return Ok(());
            }
            out!("{}", volume_table(&vols).render());
            Ok(())
        }
        VolumeCmd::Show { volume } => {
            let v = ctx.get(&path(&volume))?;
            if ctx.json_out(&v)? {
                return Ok(());
            }
            out!("{}", show(&v));
            Ok(())
        }
        VolumeCmd::Resize { volume, size } => {
            let v = ctx.post(
                &format!("{}/resize", path(&volume)),
                &json!({ "size": size }),
            )?;
            if ctx.json_out(&v)? {
                return Ok(());
            }
            ctx.say(format_args!(
                "volume {} ({:?}) is now {}",
                s(&v["id"]),
                s(&v["name"]),
                sz(&v["size"])
            ));
            Ok(())
        }
        VolumeCmd::Delete { volume, yes } => {
            let mut target = volume.clone();
            if !yes {
                // Nothing is asked of ssvd before the answer is yes, and
                // what is deleted is the volume that was shown.
                let what = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    let v = ctx.get(&path(&volume))?;
                    target = s(&v["id"]);
                    format!(
                        "Delete volume {} ({:?}, {}, {} snapshot(s))",
                        target,
                        s(&v["name"]),
                        sz(&v["size"]),
                        v["snapshots"].as_array().map_or(0, Vec::len)
                    )
                } else {
                    format!("delete volume {volume}")
                };
                confirm(false, &what)?;
            }
            ctx.delete(&path(&target))?;
            ctx.say(format_args!("deleted volume {volume}"));
            Ok(())
        }
        VolumeCmd::Clone {
            volume,
            name,
            linked,
            snapshot,
            id,
            no_wait,
        } => {
            let mut body = json!({
                "name": name,
                "mode": if linked { "linked" } else { "full" },
            });
            for (k, v) in [("id", id), ("snapshot", snapshot)] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            let (status, v) = ctx.post_status(&format!("{}/clones", path(&volume)), &body)?;
            // 202: a full clone's job; 201: the clone exists.
            if status != 202 {
                if ctx.json_out(&v)? {
                    return Ok(());
                }
                if ctx.quiet {
                    outln!("{}", s(&v["id"]));
                    return Ok(());
                }
                outln!(
                    "clone {} ({:?}) of {volume} ready, {} in pool {}",
                    s(&v["id"]),
                    s(&v["name"]),
                    sz(&v["size"]),
                    s(&v["pool"])
                );
                return Ok(());
            }
            let job_id = s(&v["id"]);
            let new = s(&v["volume"]);
            if no_wait {
                if ctx.json_out(&v)? {
                    return Ok(());
                }
                if ctx.quiet {
                    outln!("{job_id}");
                    return Ok(());
                }
                outln!(
                    "full clone {new} of {volume} copying as job {job_id}; follow it with `ssvctl job show {job_id}`"
                );
                return Ok(());
            }
            let j = job::follow(ctx, &job_id)?;
            if ctx.json_out(&j)? {
                return Ok(());
            }
            if ctx.quiet {
                outln!("{new}");
                return Ok(());
            }
            outln!(
                "full clone {new} ({name:?}) of {volume} done: {} copied",
                output::size(n(&j["done_bytes"]))
            );
            Ok(())
        }
        VolumeCmd::Open { volume } => {
            let v = ctx.post(&format!("{}/session", path(&volume)), &json!({}))?;
            if ctx.json_out(&v)? {
                return Ok(());
            }
            let uris = export_uris(&v);
            if uris.is_empty() {
                ctx.say(format_args!(
                    "volume {} open for writing on this host (not exported)",
                    s(&v["id"])
                ));
            }
            // One URI a line, NBD first: `$(ssvctl volume open v | head -1)` stays the NBD one.
            for uri in uris {
                outln!("{uri}");
            }
            Ok(())
        }
        VolumeCmd::Close { volume } => {
            ctx.delete(&format!("{}/session", path(&volume)))?;
            ctx.say(format_args!("closed volume {volume}"));
            Ok(())
        }
    }
}

/// The fields of an open volume's detail that hold its export URIs, in
/// the order they are shown.
const EXPORTS: [&str; 2] = ["nbd", "iscsi"];

/// Where an open volume is exported, in [`EXPORTS`] order.
fn export_uris(v: &Value) -> Vec<&str> {
    EXPORTS.iter().filter_map(|k| v[k].as_str()).collect()
}

/// Volumes as a table. `volume list` gives records (allocated LV space,
/// no virtual size); `--long` gives details with size and state.
pub fn volume_table(vols: &[Value]) -> Table {
    let long = vols.iter().any(|v| v.get("size").is_some());
    let mut headers = vec!["ID", "NAME", "POOL"];
    if long {
        headers.push(">SIZE");
    }
    headers.extend([">ALLOCATED", ">SNAPSHOTS"]);
    if long {
        headers.push("STATE");
    }
    headers.push("CREATED");
    let mut t = Table::new(&headers);
    for v in vols {
        let mut row = vec![s(&v["id"]), s(&v["name"]), s(&v["pool"])];
        if long {
            row.push(sz(&v["size"]));
        }
        row.push(sz(&v["lv_bytes"]));
        row.push(v["snapshots"].as_array().map_or(0, Vec::len).to_string());
        if long {
            row.push(s(&v["state"]));
        }
        row.push(output::time(n(&v["created"])));
        t.row(row);
    }
    t
}

/// `volume show`: key: value lines, then the layers and snapshots.
pub fn show(v: &Value) -> String {
    let size = n(&v["size"]);
    let mut pairs = vec![
        ("id", s(&v["id"])),
        ("name", s(&v["name"])),
        ("pool", s(&v["pool"])),
        ("state", s(&v["state"])),
        ("size", sz(&v["size"])),
        (
            "allocated",
            format!("{} (LVs of all layers)", sz(&v["lv_bytes"])),
        ),
        (
            "written up to",
            format!(
                "{} ({} of size)",
                sz(&v["allocated_end"]),
                output::percent(n(&v["allocated_end"]), size)
            ),
        ),
        ("cluster size", sz(&v["cluster_size"])),
        ("top LV", s(&v["top"])),
        ("lease slot", s(&v["lease_slot"])),
        ("created", output::time(n(&v["created"]))),
    ];
    for key in EXPORTS {
        if let Some(uri) = v[key].as_str() {
            pairs.push((key, uri.to_string()));
        }
    }
    let mut out = kv(&pairs);
    let snaps = v["snapshots"].as_array().cloned().unwrap_or_default();
    let snap_name = |id: &str| {
        snaps
            .iter()
            .find(|sn| sn["id"].as_str() == Some(id))
            .map(|sn| format!("{id} ({:?})", s(&sn["name"])))
            .unwrap_or_else(|| id.to_string())
    };
    let mut t = Table::new(&[">LAYER", "LV", ">LV SIZE", "SNAPSHOT"]);
    for l in v["layers"].as_array().into_iter().flatten() {
        t.row(vec![
            s(&l["layer"]),
            s(&l["lv"]),
            sz(&l["lv_size"]),
            l["snapshot"].as_str().map_or_else(|| "-".into(), snap_name),
        ]);
    }
    if !t.is_empty() {
        out.push('\n');
        out.push_str(&t.render());
    }
    if !snaps.is_empty() {
        out.push('\n');
        out.push_str(&crate::snapshot::table(&snaps).render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_without_sizes_shows_allocation() {
        let vols = vec![
            json!({"id": "v1", "name": "db", "pool": "p", "lv_bytes": 268435456u64,
            "snapshots": [{"id": "s1"}], "created": 1_700_000_000u64}),
        ];
        assert_eq!(
            volume_table(&vols).render(),
            "ID  NAME  POOL  ALLOCATED  SNAPSHOTS  CREATED\n\
             v1  db    p     256.0 MiB          1  2023-11-14 22:13:20\n"
        );
    }

    #[test]
    fn long_list_shows_size_and_state() {
        let vols = vec![
            json!({"id": "v1", "name": "db", "pool": "p", "lv_bytes": 1024u64,
            "size": 10737418240u64, "state": "closed", "snapshots": [], "created": 0}),
        ];
        let t = volume_table(&vols).render();
        assert!(t.starts_with("ID  NAME  POOL      SIZE  ALLOCATED  SNAPSHOTS  STATE   CREATED\n"));
        assert!(
            t.contains("v1  db    p     10.0 GiB    1.0 KiB          0  closed  -\n"),
            "{t}"
        );
    }

    #[test]
    fn show_lists_layers_with_snapshot_names() {
        let v = json!({"id": "v1", "name": "db", "pool": "p", "state": "session",
            "size": 1073741824u64, "lv_bytes": 402653184u64, "allocated_end": 536870912u64,
            "cluster_size": 65536, "top": "ssv_v1_1", "lease_slot": 3, "created": 0,
            "nbd": "nbd://h:10809/v1", "iscsi": "iscsi://192.0.2.1:3260/iqn.2026-11.io.ssv:export:v1/0",
            "layers": [{"lv": "ssv_v1_1", "layer": 1, "lv_size": 134217728u64},
                       {"lv": "ssv_v1_0", "layer": 0, "lv_size": 268435456u64, "snapshot": "s1"}],
            "snapshots": [{"id": "s1", "name": "before", "volume": "v1", "lv": "ssv_v1_0", "created": 0}]});
        let out = show(&v);
        assert!(out.contains("size:          1.0 GiB\n"), "{out}");
        assert!(
            out.contains("allocated:     384.0 MiB (LVs of all layers)\n"),
            "{out}"
        );
        assert!(
            out.contains("written up to: 512.0 MiB (50.0% of size)\n"),
            "{out}"
        );
        assert!(out.contains("nbd:           nbd://h:10809/v1\n"), "{out}");
        assert!(
            out.contains("iscsi:         iscsi://192.0.2.1:3260/iqn.2026-11.io.ssv:export:v1/0\n"),
            "{out}"
        );
        assert!(
            out.contains("    0  ssv_v1_0  256.0 MiB  s1 (\"before\")\n"),
            "{out}"
        );
        assert!(out.contains("    1  ssv_v1_1  128.0 MiB  -\n"), "{out}");
        assert!(
            out.contains("\ns1        before  -        ssv_v1_0\n"),
            "{out}"
        );
    }

    #[test]
    fn export_uris_nbd_first() {
        let v = json!({"iscsi": "iscsi://a:1/iqn.x:v/0", "nbd": "nbd://h/v"});
        assert_eq!(export_uris(&v), vec!["nbd://h/v", "iscsi://a:1/iqn.x:v/0"]);
        assert!(export_uris(&json!({"id": "v"})).is_empty());
    }
}
