//! The TOML configuration of `auditlog serve`, and human durations.
//!
//! Owns: the file's schema (unknown keys are errors, so a typo never
//! silently drops a policy), defaults, and validation into the engine's
//! [`LogConfig`]s and [`Limits`].
//!
//! ```toml
//! data_dir = "/var/lib/auditlog"
//! listen = "127.0.0.1:50051"
//! key = "/etc/auditlog/signer.key"
//!
//! retention_check_every = "1m"
//! metrics_listen = "127.0.0.1:9100"   # Prometheus /metrics (off when absent)
//! log_format = "json"                 # or "text" (default)
//!
//! [store]                 # default: the embedded store in data_dir
//! kind = "postgres"
//! url = "postgres://auditlog@db.internal:5432/auditlog"
//! pool_size = 32          # connections this server opens (default 32)
//! pool_wait = "30s"       # longest wait for one before failing (default 30s)
//!
//! [limits]
//! max_payload_bytes = 1048576
//!
//! [[log]]
//! name = "orders"
//! origin = "audit.example.com/orders"
//! seal_after = "1h"
//! seal_max_entries = 100000
//! retention = "7y"
//! retention_window = "1d"
//! erasable = false
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::checkpoint::is_valid_origin;
use crate::engine::input::Limits;
use crate::engine::LogConfig;
use crate::store::embedded::is_valid_log_name;

/// Errors of configuration loading; each names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax or schema error (with line and column).
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What and where.
        message: String,
    },
    /// A value that is well-formed but not acceptable.
    #[error("{0}")]
    Invalid(String),
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Listen address.
    pub listen: Option<String>,
    /// Signer key file.
    pub key: Option<PathBuf>,
    /// Where logs are stored (default: the embedded store in `data_dir`).
    pub store: Option<StoreSection>,
    /// Append limits.
    pub limits: Option<LimitsSection>,
    /// How often the server expires what retention ended (`"1m"`).
    pub retention_check_every: Option<String>,
    /// How long an AppendStream may stay silent before it is closed
    /// (`"60s"`).
    pub stream_idle_timeout: Option<String>,
    /// Where `/metrics` is served (Prometheus text; off when absent).
    pub metrics_listen: Option<String>,
    /// `"text"` (default) or `"json"` log lines.
    pub log_format: Option<String>,
    /// Logs.
    #[serde(default)]
    pub log: Vec<LogSection>,
    /// Bearer tokens.
    #[serde(default)]
    pub token: Vec<TokenSection>,
    /// The text parsed, to give line numbers in errors.
    #[serde(skip)]
    pub source: Option<String>,
}

/// `[[token]]`: a bearer token, by the SHA-256 of its secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// Name, recorded in the access log.
    pub name: String,
    /// Hex SHA-256 of the secret (never the secret).
    pub sha256: String,
    /// `writer`, `reader`, `auditor` or `admin`.
    pub role: String,
    /// Logs it may touch (all when absent).
    pub logs: Option<Vec<String>>,
    /// Subject prefixes it may touch (all when absent).
    pub subjects: Option<Vec<String>>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LimitsSection {
    pub max_payload_bytes: Option<usize>,
    pub max_request_bytes: Option<usize>,
    pub max_entries_per_request: Option<usize>,
    pub max_field_bytes: Option<usize>,
    pub max_attributes: Option<usize>,
    pub max_attribute_key_bytes: Option<usize>,
    pub max_attribute_value_bytes: Option<usize>,
}

/// `[[log]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Name (`orders`).
    pub name: String,
    /// Origin (`audit.example.com/orders`).
    pub origin: String,
    /// Seal after this many entries.
    pub seal_max_entries: Option<u64>,
    /// Seal this long after the segment's first entry (`"1h"`, `"never"`).
    pub seal_after: Option<String>,
    /// Keep payloads this long after sealing (`"7y"`, `"forever"`).
    pub retention: Option<String>,
    /// Seal at every multiple of this duration (Unix time), even with no
    /// entries: segments never span a window boundary.
    pub retention_window: Option<String>,
    /// Whether entries may be erased on request (default true).
    pub erasable: Option<bool>,
}

/// Whether `name` is a configured log or one of the server's own.
fn logs_named(configured: &[String], name: &str) -> bool {
    configured.iter().any(|l| l == name) || crate::auth::PRIVILEGED_LOGS.contains(&name)
}

/// Line (from 1) of `key = ...` in the `index`-th `[[log]]` table of
/// `source`, if it is written there.
fn line_of(source: &str, index: usize, key: &str) -> Option<usize> {
    let mut logs_seen = 0;
    let mut current = None;
    for (n, line) in source.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = (t.replace(' ', "") == "[[log]]").then(|| {
                logs_seen += 1;
                logs_seen - 1
            });
            continue;
        }
        let is_key = t
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if current == Some(index) && is_key {
            return Some(n + 1);
        }
    }
    None
}

/// Parses `90s`, `15m`, `1h`, `30d`, `7y` (365 days), `500ms`.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m, h, d or y)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "y" => 365 * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h, d or y)"
            ))
        }
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// `[store]`: which store holds the logs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `"embedded"` (default) or `"postgres"`.
    pub kind: Option<String>,
    /// With `kind = "postgres"`: the database URL
    /// (`postgres://user@host:5432/auditlog`).
    pub url: Option<String>,
    /// With `kind = "postgres"`: most connections this server opens
    /// (default 32). Every server's pool must fit the database's
    /// `max_connections`.
    pub pool_size: Option<usize>,
    /// With `kind = "postgres"`: longest wait for a free connection before
    /// the operation fails (default `"30s"`).
    pub pool_wait: Option<String>,
}

/// The store the server uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// Segment files in the data directory.
    #[default]
    Embedded,
    /// A PostgreSQL database shared by any number of servers.
    Postgres(String),
}

impl StoreKind {
    /// Parses `--store`: `embedded`, or a `postgres://` / `postgresql://` URL.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<StoreKind, String> {
        if s == "embedded" {
            Ok(StoreKind::Embedded)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreKind::Postgres(s.to_owned()))
        } else {
            Err(format!(
                "store {s:?}: give \"embedded\" or a postgres:// URL"
            ))
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: String,
    /// Signer key file (`None`: `DATA/keys/signer.key`, created if missing).
    pub key: Option<PathBuf>,
    /// Where the logs are.
    pub store: StoreKind,
    /// With a PostgreSQL store: its connection pool.
    pub pg_pool: crate::store::postgres::PoolOptions,
    /// Limits.
    pub limits: Limits,
    /// How often the server runs retention expiry.
    pub retention_check_every: Duration,
    /// How long an AppendStream may stay silent.
    pub stream_idle_timeout: Duration,
    /// Bearer tokens (none: an open server, loopback only).
    pub tokens: Vec<crate::auth::TokenSpec>,
    /// Serve without tokens on any address (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// TLS: server certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Mutual TLS: CA whose client certificates are required (PEM).
    pub tls_client_ca: Option<PathBuf>,
    /// Where `/metrics` is served (`None`: not served).
    pub metrics_listen: Option<String>,
    /// How the server writes its log lines.
    pub log_format: crate::logging::LogFormat,
    /// Logs.
    pub logs: Vec<LogConfig>,
}

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./auditlog-data";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

impl FileConfig {
    /// Reads a TOML file.
    ///
    /// # Errors
    /// Unreadable file, bad TOML, unknown keys.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// The parser's message, with line and column.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let mut f: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        f.source = Some(text.to_owned());
        Ok(f)
    }

    /// Validates into an effective configuration.
    ///
    /// # Errors
    /// The first invalid or contradictory setting, naming the log.
    pub fn resolve(mut self) -> Result<Config, ConfigError> {
        let source = self.source.take().unwrap_or_default();
        let bad = |m: String| ConfigError::Invalid(m);
        let mut limits = Limits::default();
        if let Some(l) = self.limits {
            let set = |v: Option<usize>, field: &mut usize| {
                if let Some(v) = v {
                    *field = v;
                }
            };
            set(l.max_payload_bytes, &mut limits.max_payload_bytes);
            set(l.max_request_bytes, &mut limits.max_request_bytes);
            set(
                l.max_entries_per_request,
                &mut limits.max_entries_per_request,
            );
            set(l.max_field_bytes, &mut limits.max_field_bytes);
            set(l.max_attributes, &mut limits.max_attributes);
            set(
                l.max_attribute_key_bytes,
                &mut limits.max_attribute_key_bytes,
            );
            set(
                l.max_attribute_value_bytes,
                &mut limits.max_attribute_value_bytes,
            );
            if limits.max_payload_bytes > limits.max_request_bytes {
                return Err(bad(format!(
                    "limits: max_payload_bytes ({}) is larger than max_request_bytes ({})",
                    limits.max_payload_bytes, limits.max_request_bytes
                )));
            }
            if limits.max_field_bytes > crate::core::entry::MAX_FIELD_LEN
                || limits.max_attribute_value_bytes > crate::core::entry::MAX_FIELD_LEN
            {
                return Err(bad(
                    "limits: string limits above 65535 bytes cannot be encoded".into(),
                ));
            }
        }
        let mut logs = Vec::new();
        let mut names = HashSet::new();
        let mut origins = HashSet::new();
        for (i, l) in self.log.into_iter().enumerate() {
            // "line N: [[log]] "name"", pointing at `key` when it is set.
            let at = |key: &str| {
                let ctx = format!("[[log]] {:?}", l.name);
                match line_of(&source, i, key) {
                    Some(n) => format!("line {n}: {ctx}"),
                    None => ctx,
                }
            };
            let ctx = at("name");
            if !is_valid_log_name(&l.name) {
                return Err(bad(format!(
                    "{ctx}: names are 1-64 characters of a-z, 0-9, '_', '-', '.'"
                )));
            }
            if !names.insert(l.name.clone()) {
                return Err(bad(format!("{ctx}: declared twice")));
            }
            if !is_valid_origin(&l.origin) {
                return Err(bad(format!(
                    "{}: origin {:?} must be a schema-less URL without spaces or '+'",
                    at("origin"),
                    l.origin
                )));
            }
            if !origins.insert(l.origin.clone()) {
                return Err(bad(format!(
                    "{}: origin {:?} is used by another log",
                    at("origin"),
                    l.origin
                )));
            }
            if l.name.starts_with('_') {
                return Err(bad(format!(
                    "{ctx}: names starting with '_' are reserved for the server's own logs"
                )));
            }
            let mut cfg = LogConfig::new(&l.name, &l.origin);
            if let Some(n) = l.seal_max_entries {
                if n == 0 {
                    return Err(bad(format!(
                        "{}: seal_max_entries must be at least 1",
                        at("seal_max_entries")
                    )));
                }
                cfg.seal_max_entries = n;
            }
            if let Some(s) = l.seal_after {
                cfg.seal_after = match s.as_str() {
                    "never" => None,
                    s => Some(
                        parse_duration(s)
                            .map_err(|e| bad(format!("{}: seal_after: {e}", at("seal_after"))))?,
                    ),
                };
            }
            if let Some(r) = l.retention {
                cfg.retention = match r.as_str() {
                    "forever" => None,
                    s => Some(
                        parse_duration(s)
                            .map_err(|e| bad(format!("{}: retention: {e}", at("retention"))))?,
                    ),
                };
            }
            if let Some(w) = l.retention_window {
                let w = parse_duration(&w).map_err(|e| {
                    bad(format!("{}: retention_window: {e}", at("retention_window")))
                })?;
                if w < Duration::from_secs(1) {
                    return Err(bad(format!(
                        "{}: retention_window must be at least 1s",
                        at("retention_window")
                    )));
                }
                if cfg.retention.is_some_and(|r| w > r) {
                    return Err(bad(format!(
                        "{}: retention_window is longer than retention: the first entries \
                         of a window would be kept a window longer than the policy allows",
                        at("retention_window")
                    )));
                }
                cfg.retention_window = Some(w);
            }
            if cfg.retention.is_some_and(|r| r.is_zero()) {
                return Err(bad(format!(
                    "{}: retention must be more than 0",
                    at("retention")
                )));
            }
            if let Some(e) = l.erasable {
                cfg.erasable = e;
            }
            logs.push(cfg);
        }
        if logs.is_empty() {
            logs.push(LogConfig::new("default", "localhost/default"));
        }
        let logs_for_tokens: Vec<String> = logs.iter().map(|l| l.name.clone()).collect();
        let retention_check_every = match &self.retention_check_every {
            None => Duration::from_secs(60),
            Some(s) => {
                let d =
                    parse_duration(s).map_err(|e| bad(format!("retention_check_every: {e}")))?;
                if d < Duration::from_millis(100) {
                    return Err(bad("retention_check_every must be at least 100ms".into()));
                }
                d
            }
        };
        let mut tokens = Vec::new();
        let mut token_names = HashSet::new();
        for t in self.token {
            let ctx = format!("[[token]] {:?}", t.name);
            if t.name.is_empty() || !token_names.insert(t.name.clone()) {
                return Err(bad(format!("{ctx}: names must be present and unique")));
            }
            let sha256 = hex::decode(&t.sha256)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "{ctx}: sha256 must be 64 hex digits (the SHA-256 of the secret, \
                         as `auditlog token create` prints it)"
                    ))
                })?;
            let role = crate::auth::Role::parse(&t.role).map_err(|e| bad(format!("{ctx}: {e}")))?;
            if role >= crate::auth::Role::Auditor && (t.logs.is_some() || t.subjects.is_some()) {
                // Scopes would be silently ignored: auditors and admins act
                // on every log (the signing key, holds on every log, the
                // system logs), so refuse rather than mislead.
                return Err(bad(format!(
                    "{ctx}: logs and subjects scope writer and reader tokens only; \
                     an {} token acts on every log",
                    role.as_str()
                )));
            }
            if let Some(logs) = &t.logs {
                for l in logs {
                    let known = logs_named(&logs_for_tokens, l);
                    if !known {
                        return Err(bad(format!("{ctx}: log {l:?} is not configured")));
                    }
                }
            }
            if t.subjects
                .as_ref()
                .is_some_and(|s| s.iter().any(String::is_empty))
            {
                return Err(bad(format!(
                    "{ctx}: an empty subject prefix would match everything; leave subjects out"
                )));
            }
            tokens.push(crate::auth::TokenSpec {
                name: t.name,
                sha256,
                role,
                logs: t.logs,
                subjects: t.subjects,
            });
        }
        let stream_idle_timeout = match &self.stream_idle_timeout {
            None => crate::service::DEFAULT_STREAM_IDLE,
            Some(s) => parse_duration(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    bad(format!(
                        "stream_idle_timeout: {s:?} is not a duration above 0"
                    ))
                })?,
        };
        let mut pg_pool = crate::store::postgres::PoolOptions::default();
        let store = match self.store {
            None => StoreKind::Embedded,
            Some(st) => {
                let kind = st.kind.as_deref().unwrap_or("embedded");
                if kind == "postgres" {
                    if let Some(n) = st.pool_size {
                        if n == 0 {
                            return Err(bad("[store] pool_size: at least 1".into()));
                        }
                        pg_pool.max_connections = n;
                    }
                    if let Some(w) = &st.pool_wait {
                        pg_pool.wait =
                            parse_duration(w)
                                .ok()
                                .filter(|d| !d.is_zero())
                                .ok_or_else(|| {
                                    bad(format!(
                                        "[store] pool_wait: {w:?} is not a duration above 0"
                                    ))
                                })?;
                    }
                } else if st.pool_size.is_some() || st.pool_wait.is_some() {
                    return Err(bad(
                        "[store] pool_size and pool_wait are for kind = \"postgres\"".into(),
                    ));
                }
                match (kind, st.url) {
                    ("embedded", None) => StoreKind::Embedded,
                    ("postgres", Some(url)) => {
                        StoreKind::parse(&url).map_err(|e| bad(format!("[store] url: {e}")))?
                    }
                    ("postgres", None) => {
                        return Err(bad("[store] kind = \"postgres\" needs a url".into()))
                    }
                    ("embedded", Some(_)) => {
                        return Err(bad("[store] url is for kind = \"postgres\"".into()))
                    }
                    (other, _) => {
                        return Err(bad(format!(
                            "[store] kind {other:?}: \"embedded\" or \"postgres\""
                        )))
                    }
                }
            }
        };
        let log_format = match &self.log_format {
            None => crate::logging::LogFormat::default(),
            Some(f) => {
                crate::logging::LogFormat::parse(f).map_err(|e| bad(format!("log_format: {e}")))?
            }
        };
        Ok(Config {
            store,
            pg_pool,
            stream_idle_timeout,
            metrics_listen: self.metrics_listen,
            log_format,
            insecure_no_auth: false,
            tls: None,
            tls_client_ca: None,
            tokens,
            retention_check_every,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            listen: self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            key: self.key,
            limits,
            logs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_duration("7y").unwrap(),
            Duration::from_secs(7 * 365 * 86_400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "7", "y", "7w", "-1s", "1.5h", "99999999999999999999y"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_file_resolves() {
        let c = FileConfig::parse(
            r#"
            listen = "127.0.0.1:7000"
            [limits]
            max_payload_bytes = 2048
            [[log]]
            name = "orders"
            origin = "audit.example.com/orders"
            seal_after = "1h"
            seal_max_entries = 10
            retention = "7y"
            [[log]]
            name = "chats"
            origin = "audit.example.com/chats"
            seal_after = "never"
            "#,
        )
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.limits.max_payload_bytes, 2048);
        assert_eq!(c.logs.len(), 2);
        assert_eq!(c.logs[0].seal_max_entries, 10);
        assert_eq!(
            c.logs[0].retention,
            Some(Duration::from_secs(7 * 365 * 86_400))
        );
        assert_eq!(c.logs[1].seal_after, None);
        let d = FileConfig::default().resolve().unwrap();
        assert_eq!(d.logs[0].name, "default");
        assert_eq!(d.pg_pool, crate::store::postgres::PoolOptions::default());
        let pg = FileConfig::parse(
            "[store]\nkind = \"postgres\"\nurl = \"postgres://h/d\"\npool_size = 8\npool_wait = \"5s\"\n",
        )
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(pg.pg_pool.max_connections, 8);
        assert_eq!(pg.pg_pool.wait, Duration::from_secs(5));
        assert_eq!(d.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn bad_files_say_what_and_where() {
        let cases = [
            ("[[log]]\nname = \"a\"\norigin = \"x/a\"\nretension = \"7y\"\n", "retension"),
            ("[[log]]\nname = \"A b\"\norigin = \"x/a\"\n", "names are"),
            ("[[log]]\nname = \"a\"\norigin = \"has space\"\n", "origin"),
            ("[[log]]\nname = \"a\"\norigin = \"x/a\"\n[[log]]\nname = \"a\"\norigin = \"x/b\"\n", "declared twice"),
            ("[[log]]\nname = \"a\"\norigin = \"x/a\"\n[[log]]\nname = \"b\"\norigin = \"x/a\"\n", "another log"),
            ("[[log]]\nname = \"a\"\norigin = \"x/a\"\nseal_after = \"1w\"\n", "unknown unit"),
            ("[[log]]\nname = \"a\"\norigin = \"x/a\"\nseal_max_entries = 0\n", "at least 1"),
            (
                "[[log]]\nname = \"a\"\norigin = \"x/a\"\nretention = \"1d\"\nretention_window = \"2d\"\n",
                "longer than retention",
            ),
            ("[[log]]\nname = \"a\"\norigin = \"x/a\"\nretention_window = \"0s\"\n", "at least 1s"),
            ("[[log]]\nname = \"a\"\norigin = \"x/a\"\nretention = \"0s\"\n", "more than 0"),
            ("[[log]]\nname = \"_system\"\norigin = \"x/a\"\n", "reserved"),
            ("[store]\nkind = \"postgres\"\n", "needs a url"),
            ("[store]\nkind = \"mysql\"\n", "\"embedded\" or \"postgres\""),
            ("[store]\nkind = \"postgres\"\nurl = \"mysql://x\"\n", "postgres:// URL"),
            ("[store]\nkind = \"postgres\"\nurl = \"postgres://h/d\"\npool_size = 0\n", "pool_size: at least 1"),
            ("[store]\nkind = \"postgres\"\nurl = \"postgres://h/d\"\npool_wait = \"0s\"\n", "pool_wait"),
            ("[store]\nkind = \"postgres\"\nurl = \"postgres://h/d\"\npool_wait = \"soon\"\n", "pool_wait"),
            ("[store]\npool_size = 8\n", "are for kind = \"postgres\""),
            ("[limits]\nmax_payload_bytes = 10\nmax_request_bytes = 5\n", "larger than"),
            (
                "[[token]]\nname = \"ops\"\nsha256 = \"00000000000000000000000000000000000000000000000000000000000000aa\"\nrole = \"admin\"\nsubjects = [\"order:\"]\n",
                "scope writer and reader tokens only",
            ),
        ];
        for (text, want) in cases {
            let err = match FileConfig::parse(text) {
                Err(e) => e,
                Ok(f) => f.resolve().unwrap_err().to_string(),
            };
            assert!(err.contains(want), "{text:?} gave {err:?}");
        }
        // Syntax errors carry a line number.
        let err = FileConfig::parse("[[log]]\nname = \n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        // So do invalid and contradictory policies: the line of the setting,
        // in the right [[log]] table, past other tables.
        let text = "[[log]]\nname = \"a\"\norigin = \"x/a\"\nretention = \"1d\"\n\
                    [limits]\nmax_payload_bytes = 10\n\
                    [[log]]\nname = \"b\"\norigin = \"x/b\"\nretention = \"1d\"\n\
                    retention_window = \"2d\"\n";
        let err = FileConfig::parse(text)
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("line 11: [[log]] \"b\": retention_window"),
            "{err}"
        );
    }
}
