//! Real qemu-io on an image or export, for tests that check data.

use anyhow::{ensure, Result};
use std::process::{Command, Output};

/// Runs `qemu-io -f raw -c CMD… URI`; an error (with qemu-io's output)
/// when it fails or any command reports a failure or a pattern mismatch.
pub fn qemu_io<S: AsRef<str> + std::fmt::Debug>(uri: &str, cmds: &[S]) -> Result<String> {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd.as_ref()]);
    }
    let out = c.arg(uri).output()?;
    let text = text_of(&out);
    ensure!(
        out.status.success() && !text.contains("failed") && !text.contains("Pattern verification"),
        "qemu-io {cmds:?} on {uri}: {text}"
    );
    Ok(text)
}

/// Runs `qemu-img ARGS…`; its output, or an error with that output when
/// it fails.
pub fn qemu_img<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> Result<String> {
    let out = Command::new("qemu-img").args(args).output()?;
    let text = text_of(&out);
    ensure!(out.status.success(), "qemu-img {args:?}: {text}");
    Ok(text)
}

/// A tool's stdout followed by its stderr.
fn text_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}
