//! The wire format: one JSON object per line, `{"id": ID, "op": OP, …}`;
//! one reply per request, `{"id": ID, "ok": true, "result": …}` or
//! `{"id": ID, "ok": false, "error": "…"}`. `ID` is any number or string
//! and comes back as it was sent; a line that is not a request gets an
//! error reply (with `id` null when none could be read), never a panic.

use super::{Controller, PauseReason};
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest request line; a longer one is refused and ends the connection.
pub const MAX_LINE: usize = 64 * 1024;
/// Longest snapshot name or disk id taken (ssvd checks names further).
const MAX_NAME: usize = 256;

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// State, vCPUs, memory and every disk's allocation.
    Status,
    /// Stops the vCPUs (reason `user`).
    Pause,
    /// Drops the `user` reason; the VM runs unless a disk has no space.
    Resume,
    Shutdown,
    /// Online snapshot of one disk.
    Snapshot {
        disk: String,
        name: String,
    },
    /// Every disk's allocation and growth.
    Disks,
    /// The connection becomes a stream of events.
    Subscribe,
}

/// What to do after replying.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    /// Stream events on this connection from now on.
    Subscribe,
}

/// The reply to one request line (without its newline), and what follows.
pub fn handle_line(ctl: &Controller, line: &[u8]) -> (Value, After) {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return (
                error(Value::Null, format!("not JSON: {e}")),
                After::Continue,
            )
        }
    };
    let Value::Object(obj) = &v else {
        return (
            error(Value::Null, "a request is a JSON object".into()),
            After::Continue,
        );
    };
    let id = match obj.get("id") {
        Some(id @ (Value::Number(_) | Value::String(_))) => id.clone(),
        Some(_) => {
            return (
                error(Value::Null, "`id` must be a number or a string".into()),
                After::Continue,
            )
        }
        None => {
            return (
                error(Value::Null, "a request needs an `id`".into()),
                After::Continue,
            )
        }
    };
    if let Value::String(s) = &id {
        if s.len() > MAX_NAME {
            return (
                error(Value::Null, format!("`id` longer than {MAX_NAME} bytes")),
                After::Continue,
            );
        }
    }
    let op: Op = match serde_json::from_value(v.clone()) {
        Ok(op) => op,
        Err(e) => {
            return (
                error(
                    id,
                    format!(
                        "bad request: {e} (ops: status, pause, resume, shutdown, snapshot, disks, subscribe)"
                    ),
                ),
                After::Continue,
            )
        }
    };
    let after = if op == Op::Subscribe {
        After::Subscribe
    } else {
        After::Continue
    };
    match run(ctl, op) {
        Ok(result) => (json!({"id": id, "ok": true, "result": result}), after),
        Err(e) => (error(id, e), After::Continue),
    }
}

fn error(id: Value, message: String) -> Value {
    json!({"id": id, "ok": false, "error": message})
}

fn run(ctl: &Controller, op: Op) -> Result<Value, String> {
    match op {
        Op::Status => Ok(ctl.status()),
        Op::Pause => {
            ctl.pause(PauseReason::User)?;
            Ok(ctl.state())
        }
        Op::Resume => {
            ctl.resume(PauseReason::User)?;
            Ok(ctl.state())
        }
        Op::Shutdown => {
            ctl.shutdown()?;
            Ok(json!({"state": "shutting_down"}))
        }
        Op::Snapshot { disk, name } => {
            for (what, s) in [("disk", &disk), ("name", &name)] {
                if s.is_empty() || s.len() > MAX_NAME {
                    return Err(format!("`{what}` must be 1 to {MAX_NAME} bytes"));
                }
            }
            ctl.snapshot(&disk, &name)
        }
        Op::Disks => Ok(json!(ctl.disks())),
        Op::Subscribe => Ok(json!({"subscribed": true})),
    }
}
