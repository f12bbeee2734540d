//! ssvctl: the operator's command line for ssvd. Every command is one or a
//! few calls of ssvd's REST API (on its Unix socket, or on TCP with a
//! bearer token); names and ids go through as they are, ssvd resolves them
//! and its messages say what to do.

use anyhow::{bail, Context as _, Result};
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::Value;
use ssvd::client::{Client, ClientError, Endpoint};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

/// Prints to stdout; a reader that went away (`| head`) ends ssvctl
/// quietly instead of a panic.
macro_rules! out {
    ($($t:tt)*) => { $crate::emit(&format!($($t)*)) };
}

macro_rules! outln {
    () => { $crate::emit("\n") };
    ($($t:tt)*) => { $crate::emit(&format!("{}\n", format_args!($($t)*))) };
}

pub fn emit(text: &str) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("ssvctl: writing the output: {e}");
        std::process::exit(1);
    }
}

mod job;
mod output;
mod pool;
mod snapshot;
mod vm;
mod volume;

const EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  other errors (storage, a failed job, a refused confirmation)
  2  usage (bad arguments)
  3  not found (pool, volume, snapshot, LUN or job)
  4  conflict (in use, exists already, has dependents)
  5  no space in the pool
  6  ssvd unreachable, or unavailable (lockd, a lease)
  7  invalid input rejected by ssvd

Volumes and snapshots are named by id or by a unique name.";

#[derive(Parser)]
#[command(
    name = "ssvctl",
    version,
    about = "The command line of ssvd: pools, thin volumes, snapshots, clones, sessions",
    after_help = EXIT_CODES
)]
struct Cli {
    /// ssvd's Unix socket.
    #[arg(
        long,
        global = true,
        env = "SSVD_SOCKET",
        default_value = "/run/ssv/ssvd.sock",
        value_name = "PATH"
    )]
    socket: PathBuf,
    /// ssvd's TCP API instead of the socket, as http://HOST:PORT.
    #[arg(long, global = true, value_name = "URL", value_parser = parse_url, requires = "token_file")]
    url: Option<String>,
    /// File holding the bearer token for --url.
    #[arg(long, global = true, value_name = "FILE", requires = "url")]
    token_file: Option<PathBuf>,
    /// Print ssvd's JSON answers as they are (pretty), for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// Print only ids (lists, creates) or nothing; no progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// This host's ssvd: host id, pools, open volumes, lockd's lockspaces.
    #[command(subcommand)]
    Host(HostCmd),
    /// LUNs this host can reach.
    #[command(subcommand)]
    Lun(LunCmd),
    /// Pools: volume groups on shared LUNs.
    #[command(subcommand)]
    Pool(pool::PoolCmd),
    /// Thin volumes.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Snapshots of a volume.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Background jobs (full clones).
    #[command(subcommand)]
    Job(job::JobCmd),
    /// VMs on this host: start, stop, list, show, snapshot, console.
    #[command(subcommand)]
    Vm(vm::VmCmd),
    /// Follow ssvd's events, one line each, until interrupted.
    Events,
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum HostCmd {
    /// ssvd's status on this host.
    Status,
}

#[derive(Subcommand)]
enum LunCmd {
    /// LUNs, their sizes and what is on them.
    List,
}

fn parse_url(s: &str) -> std::result::Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .ok_or("only http://HOST:PORT is supported")?;
    let addr = rest.trim_end_matches('/');
    if addr.is_empty() || addr.contains('/') || !addr.contains(':') {
        return Err("expected http://HOST:PORT".into());
    }
    Ok(addr.to_string())
}

/// What every command gets: the client and how to print.
pub struct Ctx {
    pub client: Client,
    pub json: bool,
    pub quiet: bool,
}

impl Ctx {
    pub fn get(&self, path: &str) -> Result<Value> {
        Ok(self.client.get(path)?)
    }

    /// A GET whose answer is read as it comes (events, a console); an
    /// error answer becomes ssvd's error.
    pub fn stream(&self, path: &str) -> Result<ssvd::client::Response> {
        use std::io::Read;
        let mut r = self.client.send("GET", path, None)?;
        if r.status >= 400 {
            let mut text = String::new();
            r.read_to_string(&mut text)?;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(ssvd::client::ClientError::Api {
                status: r.status,
                kind: v["error"].as_str().unwrap_or("error").into(),
                message: v["message"].as_str().unwrap_or(text.trim()).into(),
            }
            .into());
        }
        Ok(r)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        Ok(self.client.post(path, body)?)
    }

    /// A POST whose status matters (201 created, 200 existed, 202 job).
    pub fn post_status(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        Ok(self.client.call("POST", path, Some(body))?)
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        Ok(self.client.delete(path)?)
    }

    /// Prints `v` as pretty JSON if --json; returns whether it did.
    pub fn json_out(&self, v: &Value) -> Result<bool> {
        if self.json {
            outln!("{}", serde_json::to_string_pretty(v)?);
        }
        Ok(self.json)
    }

    /// Prints an informational line unless --quiet.
    pub fn say(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            outln!("{line}");
        }
    }

    /// Whether a progress bar may be drawn.
    pub fn progress(&self) -> bool {
        !self.json && !self.quiet && std::io::stderr().is_terminal()
    }
}

/// A path segment percent-encoded: everything but RFC 3986's unreserved
/// characters, so names with spaces, slashes or UTF-8 arrive as they are.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Asks before something that cannot be undone: `--yes` skips the
/// question; without a terminal to ask on, refuses.
pub fn confirm(yes: bool, what: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("refusing to {what} without --yes (stdin is not a terminal to ask on)");
    }
    let mut err = std::io::stderr();
    write!(err, "{what}? This cannot be undone. [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        bail!("not confirmed; nothing done");
    }
    Ok(())
}

/// An error with its own exit code.
#[derive(Debug)]
pub struct Fail(pub i32, pub String);

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Fail {}

/// The exit code for an error (see `EXIT_CODES`).
pub fn exit_code(e: &anyhow::Error) -> i32 {
    for c in e.chain() {
        if let Some(ce) = c.downcast_ref::<ClientError>() {
            return client_exit_code(ce);
        }
        if let Some(Fail(code, _)) = c.downcast_ref::<Fail>() {
            return *code;
        }
    }
    1
}

/// The error and its causes, `: `-separated, up to the client's error
/// (whose message already says its cause).
pub fn message(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for c in e.chain() {
        parts.push(c.to_string());
        if c.downcast_ref::<ClientError>().is_some() {
            break;
        }
    }
    parts.join(": ")
}

fn client_exit_code(e: &ClientError) -> i32 {
    match e {
        ClientError::Connect { .. } => 6,
        ClientError::Io(_) | ClientError::Protocol(_) => 1,
        ClientError::Api { status, kind, .. } => match kind.as_str() {
            "not_found" => 3,
            "conflict" => 4,
            "no_space" => 5,
            "unavailable" => 6,
            "invalid" => 7,
            "storage" => 1,
            // An answer without a known kind: go by the HTTP status.
            _ => match status {
                404 => 3,
                409 => 4,
                507 => 5,
                502..=504 => 6,
                400 | 422 => 7,
                _ => 1,
            },
        },
    }
}

fn client(cli: &Cli) -> Result<Client> {
    match (&cli.url, &cli.token_file) {
        (Some(addr), Some(file)) => {
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("reading the token file {}", file.display()))?
                .trim()
                .to_string();
            if token.is_empty() {
                bail!("the token file {} is empty", file.display());
            }
            Ok(Client {
                endpoint: Endpoint::Tcp {
                    addr: addr.clone(),
                    token,
                },
            })
        }
        _ => Ok(Client::unix(&cli.socket)),
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Cmd::Completions { shell } = cli.cmd {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "ssvctl", &mut script);
        out!("{}", String::from_utf8_lossy(&script));
        return Ok(());
    }
    let ctx = Ctx {
        client: client(&cli)?,
        json: cli.json,
        quiet: cli.quiet,
    };
    match cli.cmd {
        Cmd::Host(HostCmd::Status) => host_status(&ctx),
        Cmd::Lun(LunCmd::List) => pool::lun_list(&ctx),
        Cmd::Pool(c) => pool::run(&ctx, c),
        Cmd::Volume(c) => volume::run(&ctx, c),
        Cmd::Snapshot(c) => snapshot::run(&ctx, c),
        Cmd::Job(c) => job::run(&ctx, c),
        Cmd::Vm(c) => vm::run(&ctx, c),
        Cmd::Events => job::events(&ctx),
        Cmd::Completions { .. } => Ok(()),
    }
}

fn host_status(ctx: &Ctx) -> Result<()> {
    let h = ctx.get("/v1/host")?;
    if ctx.json_out(&h)? {
        return Ok(());
    }
    let lockd = &h["lockd"];
    let mut pairs = vec![
        ("host id", output::s(&h["host_id"])),
        ("version", output::s(&h["version"])),
        ("pools", output::list(&h["pools"])),
        ("open volumes", output::list(&h["sessions"])),
    ];
    if lockd.is_null() {
        pairs.push(("lockd", "not reachable".into()));
    } else {
        pairs.push(("lockd pid", output::s(&lockd["pid"])));
        pairs.push(("watchdog", output::s(&lockd["watchdog"])));
        pairs.push((
            "leases held",
            lockd["leases"].as_array().map_or(0, Vec::len).to_string(),
        ));
    }
    out!("{}", output::kv(&pairs));
    let mut t = output::Table::new(&["LOCKSPACE", ">HOST ID", "STATE", ">RENEWED", ">HOSTS"]);
    for ls in lockd["lockspaces"].as_array().into_iter().flatten() {
        t.row(vec![
            output::s(&ls["lockspace"]),
            output::s(&ls["host_id"]),
            output::s(&ls["state"]),
            format!("{} ms ago", output::n(&ls["renewal_age_ms"])),
            ls["hosts"].as_array().map_or(0, Vec::len).to_string(),
        ]);
    }
    if !t.is_empty() {
        outln!();
        out!("{}", t.render());
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("ssvctl: {}", message(&e));
        std::process::exit(exit_code(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, kind: &str) -> anyhow::Error {
        ClientError::Api {
            status,
            kind: kind.into(),
            message: "m".into(),
        }
        .into()
    }

    #[test]
    fn exit_codes_follow_the_error_kind() {
        assert_eq!(exit_code(&api(404, "not_found")), 3);
        assert_eq!(exit_code(&api(409, "conflict")), 4);
        assert_eq!(exit_code(&api(507, "no_space")), 5);
        assert_eq!(exit_code(&api(503, "unavailable")), 6);
        assert_eq!(exit_code(&api(400, "invalid")), 7);
        assert_eq!(exit_code(&api(500, "storage")), 1);
        // Unknown kinds go by the status.
        assert_eq!(exit_code(&api(404, "error")), 3);
        assert_eq!(exit_code(&api(409, "error")), 4);
        assert_eq!(exit_code(&api(503, "error")), 6);
        assert_eq!(exit_code(&api(400, "error")), 7);
        assert_eq!(exit_code(&api(500, "error")), 1);
        let connect = ClientError::Connect {
            at: "/run/ssv/ssvd.sock".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(exit_code(&connect.into()), 6);
        let io: anyhow::Error = ClientError::Io(std::io::ErrorKind::BrokenPipe.into()).into();
        assert_eq!(exit_code(&io), 1);
        assert_eq!(exit_code(&anyhow::anyhow!("refused")), 1);
        assert_eq!(exit_code(&Fail(6, "stream ended".into()).into()), 6);
        // Context on top keeps the code.
        assert_eq!(exit_code(&api(404, "not_found").context("showing")), 3);
    }

    #[test]
    fn messages_say_the_cause_once() {
        let connect: anyhow::Error = ClientError::Connect {
            at: "/x.sock".into(),
            source: std::io::ErrorKind::NotFound.into(),
        }
        .into();
        let m = message(&connect);
        assert!(
            m.starts_with("cannot reach ssvd at /x.sock: entity not found"),
            "{m}"
        );
        assert_eq!(m.matches("entity not found").count(), 1, "{m}");
        assert_eq!(
            message(&api(404, "not_found").context("showing")),
            "showing: m"
        );
        let io = std::io::Error::other("denied");
        let e = anyhow::Error::from(io).context("reading the token file t");
        assert_eq!(message(&e), "reading the token file t: denied");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(seg("v-1_a.b~c"), "v-1_a.b~c");
        assert_eq!(seg("my vol"), "my%20vol");
        assert_eq!(seg("a/b?c#d%e"), "a%2Fb%3Fc%23d%25e");
        assert_eq!(seg("café"), "caf%C3%A9");
        assert_eq!(seg(""), "");
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://10.0.0.1:7070").as_deref(),
            Ok("10.0.0.1:7070")
        );
        assert_eq!(parse_url("http://h:1/").as_deref(), Ok("h:1"));
        assert!(parse_url("https://h:1").is_err());
        assert!(parse_url("http://h").is_err());
        assert!(parse_url("http://h:1/v1").is_err());
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
