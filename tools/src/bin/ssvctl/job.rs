//! `job ...`, following a job, and `events`.

use crate::output::{self, kv, n, s, Table};
use crate::{seg, Ctx, Fail};
use anyhow::{bail, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::time::Duration;

#[derive(Subcommand)]
pub enum JobCmd {
    /// Jobs of this ssvd (since it started).
    List,
    /// One job: state and progress.
    Show { id: String },
}

pub fn run(ctx: &Ctx, cmd: JobCmd) -> Result<()> {
    match cmd {
        JobCmd::List => {
            let jobs = ctx.get("/v1/jobs")?;
            if ctx.json_out(&jobs)? {
                return Ok(());
            }
            let jobs = jobs.as_array().cloned().unwrap_or_default();
            if ctx.quiet {
                jobs.iter().for_each(|j| outln!("{}", s(&j["id"])));
                return Ok(());
            }
            let mut t = Table::new(&["JOB", "KIND", "STATE", ">PROGRESS", "VOLUME", "ERROR"]);
            for j in &jobs {
                t.row(vec![
                    s(&j["id"]),
                    s(&j["kind"]),
                    s(&j["state"]),
                    progress(j),
                    s(&j["volume"]),
                    s(&j["error"]),
                ]);
            }
            out!("{}", t.render());
            Ok(())
        }
        JobCmd::Show { id } => {
            let j = ctx.get(&format!("/v1/jobs/{}", seg(&id)))?;
            if ctx.json_out(&j)? {
                return Ok(());
            }
            let mut pairs = vec![
                ("id", s(&j["id"])),
                ("kind", s(&j["kind"])),
                ("state", s(&j["state"])),
                ("progress", progress(&j)),
                ("volume", s(&j["volume"])),
            ];
            if !j["error"].is_null() {
                pairs.push(("error", s(&j["error"])));
            }
            out!("{}", kv(&pairs));
            Ok(())
        }
    }
}

/// `1.0 GiB / 10.0 GiB (10.0%)`.
pub fn progress(j: &Value) -> String {
    let (done, total) = (n(&j["done_bytes"]), n(&j["total_bytes"]));
    format!(
        "{} / {} ({})",
        output::size(done),
        output::size(total),
        output::percent(done, total)
    )
}

/// Polls job `id` until it is done (returns it) or failed (an error with
/// the job's message), with a progress bar on a terminal.
pub fn follow(ctx: &Ctx, id: &str) -> Result<Value> {
    let bar = ctx.progress().then(|| {
        let style = ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        // No length until the job knows its total: a spinner meanwhile.
        let b = ProgressBar::no_length().with_style(style);
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let path = format!("/v1/jobs/{}", seg(id));
    loop {
        let j = match ctx.get(&path) {
            Ok(j) => j,
            Err(e) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                return Err(e);
            }
        };
        if let Some(b) = &bar {
            let total = n(&j["total_bytes"]);
            if total > 0 {
                b.set_length(total);
            }
            b.set_position(n(&j["done_bytes"]));
        }
        match j["state"].as_str() {
            Some("done") => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                return Ok(j);
            }
            Some("failed") => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                bail!("job {id} failed: {}", s(&j["error"]));
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// One event as a line: time, kind, pool/volume, message.
pub fn event_line(e: &Value) -> String {
    let at = match (e["pool"].as_str(), e["volume"].as_str()) {
        (Some(p), Some(v)) => format!("{p}/{v}"),
        (Some(p), None) => p.to_string(),
        (None, Some(v)) => v.to_string(),
        (None, None) => "-".into(),
    };
    format!(
        "{}  {:<18}  {at}  {}",
        output::time_ms(n(&e["time_ms"])),
        s(&e["kind"]),
        s(&e["message"])
    )
}

/// Follows `/v1/events` until ssvd ends the stream or ssvctl is stopped.
pub fn events(ctx: &Ctx) -> Result<()> {
    let mut r = ctx.stream("/v1/events")?;
    while let Some(line) = r.next_line()? {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if ctx.json {
            outln!("{line}");
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(e) => outln!("{}", event_line(&e)),
            Err(_) => outln!("{line}"),
        }
    }
    Err(Fail(6, "ssvd ended the event stream (did it stop?)".into()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_lines() {
        let e = json!({"seq": 1, "time_ms": 1_700_000_000_123u64, "kind": "volume.created",
            "pool": "p", "volume": "v1", "message": "volume v1 \"db\" created"});
        assert_eq!(
            event_line(&e),
            "2023-11-14T22:13:20.123Z  volume.created      p/v1  volume v1 \"db\" created"
        );
        let e = json!({"time_ms": 0, "kind": "lease.lost", "message": "m"});
        assert_eq!(
            event_line(&e),
            "1970-01-01T00:00:00.000Z  lease.lost          -  m"
        );
        assert!(event_line(&json!({"kind": "k", "pool": "p", "message": "m"})).contains("  p  m"));
    }

    #[test]
    fn job_progress() {
        let j = json!({"done_bytes": 1u64 << 30, "total_bytes": 10u64 << 30});
        assert_eq!(progress(&j), "1.0 GiB / 10.0 GiB (10.0%)");
        assert_eq!(progress(&json!({})), "0 B / 0 B (-)");
    }
}
