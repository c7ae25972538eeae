//! How the CLI reaches a server: one connection helper for every verb, so
//! the bearer token (`--token` or `AUDITLOG_TOKEN`) goes with every call.

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use auditlog::proto::audit_log_client::AuditLogClient;

/// Environment variable holding the bearer token.
pub const TOKEN_ENV: &str = "AUDITLOG_TOKEN";

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

/// Connects to `server` with the CLI's token.
///
/// # Errors
/// Bad URL, connection failure.
pub async fn connect(server: impl Into<String>) -> Result<Client, Box<dyn std::error::Error>> {
    let channel = Endpoint::from_shared(server.into())?.connect().await?;
    Ok(AuditLogClient::with_interceptor(channel, bearer()?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}
