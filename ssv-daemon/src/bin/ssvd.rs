//! `ssvd`: one per host. Reads `ssv.toml`, connects to lockd, attaches the
//! pools on its LUNs and serves the API until SIGTERM or SIGINT, when it
//! closes its volumes (flushing them and releasing their leases).

use anyhow::{bail, Context, Result};
use clap::Parser;
use ssvd::config::{Config, DEFAULT_CONFIG};
use ssvd::host::Host;
use ssvd::leases::Locks;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const EXAMPLE: &str = r#"Example ssv.toml (the embedded default: a sparse file as the LUN):

    host_id = 1
    state_dir = "/var/lib/ssv"
    [[lun]]
    file = "/var/lib/ssv/lun0.img"

Optional sections: [api] socket, tcp, token_file; [lockd] socket,
lease_wait_secs; [nbd] socket, tcp; [export] iscsi_portals (e.g.
["192.0.2.1:3260"]: each open volume is also an iSCSI target there),
iscsi_iqn_prefix (default "iqn.2026-11.io.ssv:export", the target being
PREFIX:VOLUME-ID); [growth] initial, threshold_percent, chunk,
notice_lead_percent; [io] data_in_flight (default "1m", the volume data
kept in flight per pool); [iscsi] initiator_name. More [[lun]] entries
take `file = ...`, `device = ...` or `iscsi = "iscsi://IP:PORT/IQN/LUN"`."#;

#[derive(Parser)]
#[command(name = "ssvd", version, about = "ssv's per-host service", after_help = EXAMPLE)]
struct Cli {
    /// Configuration file.
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let config = Config::load(&cli.config)?;
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "creating the state directory {}",
            config.state_dir.display()
        )
    })?;
    let locks = connect_lockd(&config)?;
    let host = Arc::new(Host::new(config.clone(), locks));
    let nbd = ssvd::export::NbdExporter::start(&config.nbd_socket(), config.nbd.tcp.as_deref())?;
    host.add_exporter(Arc::new(nbd));
    let portals = config.iscsi_export_portals();
    if !portals.is_empty() {
        let iscsi = ssvd::export::IscsiExporter::start(&portals, &config.export.iscsi_iqn_prefix)?;
        log::info!(
            "exporting open volumes over iSCSI on {portals:?} as {}:VOLUME",
            config.export.iscsi_iqn_prefix
        );
        host.add_exporter(Arc::new(iscsi));
    }
    for problem in host.attach_all() {
        log::error!("{problem}");
    }
    host.adopt();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(host.clone()))?;
    host.close_all();
    log::info!("ssvd stopped");
    Ok(())
}

/// lockd may still be starting (both come up together): retry for 10 s.
fn connect_lockd(config: &Config) -> Result<Arc<Locks>> {
    let wait = Duration::from_secs(config.lockd.lease_wait_secs);
    let mut last = None;
    for _ in 0..50 {
        match Locks::connect(&config.lockd.socket, config.host_id, wait) {
            Ok(l) => return Ok(Arc::new(l)),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "{}",
        last.map_or_else(|| "lockd unreachable".to_string(), |e| e.to_string())
    )
}

async fn serve(host: Arc<Host>) -> Result<()> {
    let sock = host.config.api.socket.clone();
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        bail!("another ssvd answers on {}; stop it first", sock.display());
    }
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("listening on {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    log::info!(
        "ssvd (host {}) serving on {}",
        host.locks.host_id(),
        sock.display()
    );
    let app = ssvd::api::router(host.clone());
    let unix = axum::serve(listener, app.clone()).with_graceful_shutdown(shutdown());
    match (&host.config.api.tcp, &host.config.api.token_file) {
        (Some(addr), Some(token_file)) => {
            let token = std::fs::read_to_string(token_file)
                .with_context(|| format!("reading the API token {}", token_file.display()))?
                .trim()
                .to_string();
            if token.len() < 16 {
                bail!(
                    "the API token in {} is shorter than 16 characters",
                    token_file.display()
                );
            }
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            log::info!("ssvd also serving on tcp {addr} (bearer token)");
            let app = app.layer(axum::middleware::from_fn(move |req, next| {
                let token = token.clone();
                bearer(token, req, next)
            }));
            let tcp = axum::serve(tcp, app).with_graceful_shutdown(shutdown());
            let (a, b) = tokio::join!(unix, tcp);
            a?;
            b?;
        }
        _ => unix.await?,
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

async fn bearer(
    token: String,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let ok = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        ssvd::api::unauthorized(
            "missing or wrong bearer token (send `Authorization: Bearer <token from token_file>`)",
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    log::info!("ssvd: stopping");
}
