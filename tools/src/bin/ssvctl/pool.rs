//! `pool ...` and `lun list`.

use crate::output::{self, kv, n, s, sz, Table};
use crate::{seg, Ctx};
use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Make a pool on LUNs (see `ssvctl lun list`); destroys what they hold.
    Create {
        name: String,
        #[arg(required = true, value_name = "LUN")]
        luns: Vec<String>,
        /// Extent size, e.g. 128m (ssvd's default).
        #[arg(long, value_name = "SIZE")]
        extent_size: Option<String>,
    },
    /// Pools this host has, with their capacity.
    List,
    /// One pool: capacity, LUNs, lockspace, metadata health.
    Show { name: String },
    /// Add a LUN to a pool.
    AddLun { name: String, lun: String },
}

pub fn run(ctx: &Ctx, cmd: PoolCmd) -> Result<()> {
    match cmd {
        PoolCmd::Create {
            name,
            luns,
            extent_size,
        } => {
            let mut body = json!({ "name": name, "luns": luns });
            if let Some(e) = extent_size {
                body["extent_size"] = json!(e);
            }
            let p = ctx.post("/v1/pools", &body)?;
            show(ctx, &p)
        }
        PoolCmd::List => {
            let pools = ctx.get("/v1/pools")?;
            if ctx.json_out(&pools)? {
                return Ok(());
            }
            let pools = pools.as_array().cloned().unwrap_or_default();
            if ctx.quiet {
                pools.iter().for_each(|p| outln!("{}", s(&p["name"])));
                return Ok(());
            }
            out!("{}", pool_table(&pools).render());
            Ok(())
        }
        PoolCmd::Show { name } => {
            let p = ctx.get(&format!("/v1/pools/{}", seg(&name)))?;
            show(ctx, &p)
        }
        PoolCmd::AddLun { name, lun } => {
            let p = ctx.post(
                &format!("/v1/pools/{}/luns", seg(&name)),
                &json!({ "path": lun }),
            )?;
            show(ctx, &p)
        }
    }
}

pub fn pool_table(pools: &[Value]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        ">LUNS",
        ">CAPACITY",
        ">ALLOCATED",
        ">FREE",
        ">PROVISIONED",
        ">VOLUMES",
        "LOCKSPACE",
        "HEALTH",
    ]);
    for p in pools {
        t.row(vec![
            s(&p["name"]),
            p["luns"].as_array().map_or(0, Vec::len).to_string(),
            sz(&p["capacity"]),
            sz(&p["allocated"]),
            sz(&p["free"]),
            sz(&p["provisioned"]),
            s(&p["volumes"]),
            s(&p["lockspace"]),
            health(&p["health"]),
        ]);
    }
    t
}

fn health(v: &Value) -> String {
    match v.as_array().map_or(0, Vec::len) {
        0 => "ok".into(),
        k => format!("{k} problem(s)"),
    }
}

fn show(ctx: &Ctx, p: &Value) -> Result<()> {
    if ctx.json_out(p)? {
        return Ok(());
    }
    if ctx.quiet {
        outln!("{}", s(&p["name"]));
        return Ok(());
    }
    let cap = n(&p["capacity"]);
    let alloc = n(&p["allocated"]);
    out!(
        "{}",
        kv(&[
            ("name", s(&p["name"])),
            ("uuid", s(&p["uuid"])),
            ("seqno", s(&p["seqno"])),
            ("extent size", sz(&p["extent_size"])),
            ("capacity", sz(&p["capacity"])),
            (
                "allocated",
                format!("{} ({})", sz(&p["allocated"]), output::percent(alloc, cap)),
            ),
            ("free", sz(&p["free"])),
            (
                "provisioned",
                format!(
                    "{} ({} of capacity)",
                    sz(&p["provisioned"]),
                    output::percent(n(&p["provisioned"]), cap)
                ),
            ),
            ("volumes", s(&p["volumes"])),
            ("LVs", s(&p["lvs"])),
            ("lease slots", s(&p["lease_slots"])),
            ("lockspace", s(&p["lockspace"])),
            ("health", health(&p["health"])),
        ])
    );
    for h in p["health"].as_array().into_iter().flatten() {
        outln!("  {}", s(h));
    }
    let mut t = Table::new(&["LUN", "PV", ">SIZE", ">FREE"]);
    for l in p["luns"].as_array().into_iter().flatten() {
        t.row(vec![
            s(&l["path"]),
            s(&l["pv"]),
            sz(&l["size"]),
            sz(&l["free"]),
        ]);
    }
    if !t.is_empty() {
        outln!();
        out!("{}", t.render());
    }
    Ok(())
}

pub fn lun_list(ctx: &Ctx) -> Result<()> {
    let luns = ctx.get("/v1/luns")?;
    if ctx.json_out(&luns)? {
        return Ok(());
    }
    let luns = luns.as_array().cloned().unwrap_or_default();
    if ctx.quiet {
        luns.iter().for_each(|l| outln!("{}", s(&l["path"])));
        return Ok(());
    }
    let mut t = Table::new(&["PATH", "IDENTITY", ">SIZE", ">SECTOR", "POOL", "STATE"]);
    for l in &luns {
        t.row(vec![
            s(&l["path"]),
            s(&l["identity"]),
            sz(&l["size"]),
            format!(
                "{}/{}",
                n(&l["logical_sector_size"]),
                n(&l["physical_sector_size"])
            ),
            s(&l["pool"]),
            s(&l["state"]),
        ]);
    }
    out!("{}", t.render());
    Ok(())
}
