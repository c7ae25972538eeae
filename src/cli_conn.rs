//! How the CLI reaches a server: one connection helper for every verb, so
//! the bearer token (`--token` or `AUDITLOG_TOKEN`) goes with every call.

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use auditlog::proto::audit_log_client::AuditLogClient;

/// Environment variable holding the bearer token.
pub const TOKEN_ENV: &str = "AUDITLOG_TOKEN";

/// Environment variable naming the CA file to trust for `https://`.
pub const CA_ENV: &str = "AUDITLOG_CA";

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// A client of the `AuditLog` service carrying the CLI's token.
pub type Client = AuditLogClient<InterceptedService<Channel, Bearer>>;

/// The interceptor for the token in `AUDITLOG_TOKEN`, if any.
///
/// # Errors
/// A token that cannot be a header value.
pub fn bearer() -> Result<Bearer, Box<dyn std::error::Error>> {
    match std::env::var(TOKEN_ENV) {
        Ok(t) if !t.is_empty() => {
            Ok(Bearer(Some(format!("Bearer {t}").parse().map_err(
                |_| format!("{TOKEN_ENV} is not a valid header value"),
            )?)))
        }
        _ => Ok(Bearer(None)),
    }
}

/// The endpoint of `server`: TLS for `https://`, trusting the CA in
/// `AUDITLOG_CA` when set (the system's roots are not consulted).
///
/// # Errors
/// Bad URL, unreadable CA file.
pub fn endpoint(server: String) -> Result<Endpoint, Box<dyn std::error::Error>> {
    let https = server.starts_with("https://");
    let mut e = Endpoint::from_shared(server)?;
    if https {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Ok(ca) = std::env::var(CA_ENV) {
            let pem = std::fs::read(&ca).map_err(|err| format!("{CA_ENV} {ca}: {err}"))?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        e = e.tls_config(tls)?;
    }
    Ok(e)
}

/// Connects to `server` with the CLI's token.
///
/// # Errors
/// Bad URL, connection failure.
pub async fn connect(server: impl Into<String>) -> Result<Client, Box<dyn std::error::Error>> {
    let channel = endpoint(server.into())?.connect().await?;
    Ok(AuditLogClient::with_interceptor(channel, bearer()?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}
