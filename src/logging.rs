//! The server's own log lines (`tracing`): human-readable text on stderr
//! (coloured on a terminal), or one JSON object per line with
//! `--log-format json`, for log shippers.
//!
//! Invariant: no event ever carries payload content, salts, tokens or
//! key material: events name logs, seqs, segments, counts, codes and
//! durations. Subjects and actors appear only in administrative events an
//! operator asked for (holds, erasures), as they do in `_system`.

use std::io::IsTerminal as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json`.
    ///
    /// # Errors
    /// Anything else, with the choices.
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: \"text\" or \"json\"")),
        }
    }
}

/// Installs the process's subscriber: auditlog's events at
/// `AUDITLOG_LOG_LEVEL` (error, warn, info (default), debug, trace) and
/// above, on stderr; other crates' events (gRPC, HTTP/2, sled) at warn at
/// most whatever the level, since their debug and trace events describe
/// frames and requests this crate does not vet. JSON lines name each
/// event's target (module). A second call does nothing.
pub fn init(format: LogFormat) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let level = std::env::var("AUDITLOG_LOG_LEVEL")
        .ok()
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let targets = Targets::new()
        .with_target("auditlog", level)
        .with_default(level.min(LevelFilter::WARN));
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(targets)
            .try_init(),
        LogFormat::Json => builder
            .with_target(true)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .with(targets)
            .try_init(),
    };
}
