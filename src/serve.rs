//! `auditlog serve`: assembles store, engine and gRPC server, and stops
//! cleanly.
//!
//! Invariant: on SIGTERM or Ctrl-C the listener stops taking requests, every
//! append already queued is made durable and answered, the indexes are
//! synced, and only then does the process exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::config::StoreKind;
use crate::core::note::SignerKey;
use crate::engine::{Engine, SystemClock};
use crate::keys;
use crate::rotation::{KeyRotator, Recovery};
use crate::service::Service;
use crate::store::embedded::EmbeddedStore;
use crate::store::postgres::PgStore;
use crate::store::Store;

/// HTTP/2 streams (concurrent calls) one connection may open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Name of keys created by `serve` on first start.
pub const DEFAULT_KEY_NAME: &str = "auditlog";

/// The signer key file of a configuration: `key`, or `DATA/keys/signer.key`.
pub fn key_path(config: &Config) -> PathBuf {
    config
        .key
        .clone()
        .unwrap_or_else(|| config.data_dir.join("keys").join(keys::SIGNER_FILE))
}

/// Loads the signing key, or creates `DATA/keys/signer.key` on first start.
/// Returns the key and, when it was just created, the verifier file path.
///
/// # Errors
/// Unreadable or insecure key files.
pub fn load_or_create_key(
    config: &Config,
) -> Result<(SignerKey, Option<PathBuf>), keys::KeyFileError> {
    let path = key_path(config);
    if config.key.is_some() || path.exists() {
        return Ok((keys::load_signer(&path)?, None));
    }
    let signer = keys::generate_signer(DEFAULT_KEY_NAME)?;
    let (_, verifier) = keys::write_key_pair(path.parent().unwrap_or(&config.data_dir), &signer)?;
    Ok((signer, Some(verifier)))
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// An engine over its store, opened as `serve` opens it.
pub struct Opened {
    /// The running engine.
    pub engine: Arc<Engine>,
    /// Its store, when it is the embedded one (`None`: PostgreSQL).
    pub store: Option<Arc<EmbeddedStore>>,
    /// Rotates the key file the engine signs with.
    pub rotator: Arc<KeyRotator>,
    /// The verifier file written when the key was created just now.
    pub created: Option<PathBuf>,
    /// What was found of an interrupted key rotation.
    pub recovery: Recovery,
}

/// Loads (with `create_key`: or creates) the key, opens the store, starts
/// the engine and finishes or undoes an interrupted key rotation.
///
/// # Errors
/// Key files, store or engine start-up failures.
pub fn open(
    config: &Config,
    create_key: bool,
) -> Result<Opened, Box<dyn std::error::Error + Send + Sync>> {
    let shared = matches!(config.store, StoreKind::Postgres(_));
    let (signer, created) = if shared && !key_path(config).exists() {
        // Every server on one database must sign with the same key: one
        // made up here would be this server's alone.
        return Err(format!(
            "{} does not exist: servers sharing a database sign with one key; create it \
             once with `auditlog keygen` and give every server the same file (--key)",
            key_path(config).display()
        )
        .into());
    } else if create_key {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("data directory {}: {e}", config.data_dir.display()))?;
        load_or_create_key(config)?
    } else {
        (keys::load_signer(&key_path(config))?, None)
    };
    let (store, embedded): (Arc<dyn Store>, _) = match &config.store {
        StoreKind::Embedded => {
            let s = Arc::new(EmbeddedStore::open(&config.data_dir)?);
            (s.clone(), Some(s))
        }
        StoreKind::Postgres(url) => (Arc::new(PgStore::connect_with(url, config.pg_pool)?), None),
    };
    let engine = Arc::new(Engine::start(
        store,
        Arc::new(signer),
        config.logs.clone(),
        config.limits.clone(),
        Arc::new(SystemClock),
    )?);
    let rotator = Arc::new(KeyRotator::new(key_path(config)));
    let recovery = match rotator.recover(&engine) {
        Ok(r) => r,
        Err(e) => {
            engine.shutdown();
            return Err(e.into());
        }
    };
    Ok(Opened {
        engine,
        store: embedded,
        rotator,
        created,
        recovery,
    })
}

/// Runs the server until SIGTERM or Ctrl-C.
///
/// # Errors
/// Start-up failures (address, key, store), with what to fix.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr: SocketAddr = config
        .listen
        .parse()
        .map_err(|e| format!("--listen {:?}: {e}", config.listen))?;
    if config.tokens.is_empty() {
        if addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "no [[token]] configured: the server is OPEN to anyone who can connect to \
                 {addr} (loopback only). Create tokens with `auditlog token create`."
            );
        } else if config.insecure_no_auth {
            tracing::warn!(
                %addr,
                "--insecure-no-auth: serving {addr} with NO authentication: anyone who can \
                 connect may read, export, erase and administer everything."
            );
        } else {
            return Err(format!(
                "refusing to serve {addr} without authentication: configure [[token]] entries \
                 (see `auditlog token create`), listen on a loopback address, or pass \
                 --insecure-no-auth"
            )
            .into());
        }
    }
    let Opened {
        engine,
        store,
        rotator,
        created,
        recovery,
    } = open(&config, true)?;
    if let Some(v) = created {
        tracing::info!(
            verifier_file = %v.display(),
            "created a signing key; its public key is in {}",
            v.display()
        );
    }
    match recovery {
        Recovery::None => {}
        Recovery::Abandoned(k) => tracing::warn!(
            key = %k.to_text(),
            "removed the staged key of a key rotation that never completed"
        ),
        Recovery::Finished(k) => tracing::warn!(
            key = %k.to_text(),
            "finished an interrupted key rotation: now signing with the new key"
        ),
    }
    tracing::info!(
        verifier = %engine.verifier().to_text(),
        "verifier key {}",
        engine.verifier().to_text()
    );
    for r in store.iter().flat_map(|s| s.take_recoveries()) {
        tracing::warn!(
            log = %r.log,
            bytes_cut = r.bytes_cut,
            entries_cut = r.entries_cut,
            file = %r.file.display(),
            cut_at = r.cut_at,
            reason = r.reason.as_deref().unwrap_or(""),
            "recovered log {}: cut a torn tail of {} bytes ({} unacknowledged entries)",
            r.log,
            r.bytes_cut,
            r.entries_cut
        );
    }

    // Retention: expire what ended, on a timer, one run at a time.
    let retention_job = {
        let engine = engine.clone();
        let every = config.retention_check_every;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let e = engine.clone();
                let run = tokio::task::spawn_blocking(move || {
                    e.apply_retention(e.now(), false, crate::engine::admin::RETENTION_ACTOR)
                })
                .await;
                match run {
                    Ok(Ok(logs)) => {
                        for l in logs.iter().filter(|l| l.entries > 0) {
                            tracing::info!(
                                log = %l.log,
                                entries = l.entries,
                                segments = l.segments,
                                bytes = l.bytes,
                                held = l.held,
                                "retention expired {} entries of {}",
                                l.entries,
                                l.log
                            );
                        }
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "retention failed"),
                    Err(e) => tracing::error!(error = %e, "retention job failed"),
                }
            }
        })
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<crate::proto::audit_log_server::AuditLogServer<Service>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let verify_dir = store.is_some().then(|| config.data_dir.clone());
    let mut service = Service::new(engine.clone(), verify_dir);
    if let StoreKind::Postgres(url) = &config.store {
        service = service.with_store_url(url.clone());
    }
    let service = service
        .with_rotator(rotator)
        .with_tokens(crate::auth::Tokens::new(config.tokens.clone()))
        .with_stream_idle(config.stream_idle_timeout);

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let from = match &config.store {
        StoreKind::Embedded => config.data_dir.display().to_string(),
        StoreKind::Postgres(url) => format!("PostgreSQL {}", redact(url)),
    };
    let metrics = match &config.metrics_listen {
        None => None,
        Some(a) => {
            let addr: SocketAddr = a
                .parse()
                .map_err(|e| format!("--metrics-listen {a:?}: {e}"))?;
            let refresh: Arc<dyn Fn() + Send + Sync> = {
                let engine = engine.clone();
                Arc::new(move || {
                    for c in engine.logs() {
                        let h = engine.store().health(&c.name);
                        let size = engine.tree_size(&c.name);
                        crate::metrics::global().log_state(&c.name, size, h.index_lag, h.refused);
                    }
                })
            };
            let (bound, task) = crate::metrics::serve(addr, refresh)
                .await
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            tracing::info!(metrics = %bound, "metrics at http://{bound}/metrics");
            Some((bound, task))
        }
    };
    tracing::info!(
        logs = config.logs.len(),
        from = %from,
        addr = %local,
        "serving {} log(s) from {from} on {local}",
        config.logs.len()
    );
    // Machine-readable line for scripts and tests that pass port 0.
    println!("listening on {local}");
    if let Some((bound, _)) = &metrics {
        println!("metrics on {bound}");
    }

    // Hostile clients: bounded streams per connection and in flight per
    // connection, dead peers found by keepalive.
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)));
    if let Some((cert, key)) = &config.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("TLS file {}: {e}", p.display()))
        };
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
        );
        if let Some(ca) = &config.tls_client_ca {
            // Client certificates signed by this CA are required.
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        builder = builder
            .tls_config(tls)
            .map_err(|e| format!("TLS configuration: {e}"))?;
        tracing::info!(
            client_certificates = config.tls_client_ca.is_some(),
            "TLS on{}",
            if config.tls_client_ca.is_some() {
                ", client certificates required"
            } else {
                ""
            }
        );
    } else if config.tls_client_ca.is_some() {
        return Err("--tls-client-ca needs --tls-cert and --tls-key".into());
    }
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(
            // No Nagle: a receipt is a small write the client waits for;
            // delayed ACKs would add 40 ms to every unary append.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown_signal(),
        )
        .await?;

    retention_job.abort();
    if let Some((_, task)) = metrics {
        task.abort();
    }
    tracing::info!("draining queued appends");
    let engine_for_stop = engine.clone();
    tokio::task::spawn_blocking(move || engine_for_stop.shutdown()).await?;
    drop(engine);
    drop(store);
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
