//! Who may do what: bearer tokens, roles and scopes.
//!
//! A token is a random secret handed to one client; the server's
//! configuration holds only its SHA-256, with a name, a role and optional
//! scopes (logs, subject prefixes). A request carries
//! `authorization: Bearer <secret>`.
//!
//! Roles, each including the one before where noted:
//! - `writer`: append (to its logs, subjects within its prefixes);
//! - `reader`: read, prove and export within its scopes;
//! - `auditor`: read, export and verify everything, `_system` and `_access`
//!   included (scopes do not narrow an auditor);
//! - `admin`: everything an auditor may, plus seal, holds, erasure and
//!   retention.
//!
//! Invariants:
//! - Secrets are compared as SHA-256 digests in constant time, against
//!   every configured token (no early exit on a match).
//! - A request outside a principal's scope is refused with the same answer
//!   whether or not what it asks for exists.
//! - With no token configured the server is open (every request is the
//!   anonymous admin), which `serve` allows only on a loopback address
//!   unless told `--insecure-no-auth`.

use sha2::{Digest, Sha256};

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Appends only.
    Writer,
    /// Reads within scope.
    Reader,
    /// Reads, exports and verifies everything.
    Auditor,
    /// Administers (and reads everything).
    Admin,
}

impl Role {
    /// Parses `writer`, `reader`, `auditor`, `admin`.
    ///
    /// # Errors
    /// Any other word.
    pub fn parse(s: &str) -> Result<Role, String> {
        Ok(match s {
            "writer" => Role::Writer,
            "reader" => Role::Reader,
            "auditor" => Role::Auditor,
            "admin" => Role::Admin,
            _ => {
                return Err(format!(
                    "role {s:?} is not one of writer, reader, auditor, admin"
                ))
            }
        })
    }

    /// The config word.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

/// A configured token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// Name (recorded in the access log).
    pub name: String,
    /// SHA-256 of the secret.
    pub sha256: [u8; 32],
    /// Role.
    pub role: Role,
    /// Logs it may touch (`None`: all).
    pub logs: Option<Vec<String>>,
    /// Subject prefixes it may touch (`None`: all).
    pub subjects: Option<Vec<String>>,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token name (`anonymous` when the server is open).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Logs (`None`: all).
    pub logs: Option<Vec<String>>,
    /// Subject prefixes (`None`: all).
    pub subjects: Option<Vec<String>>,
    /// The anonymous principal of an open server: may do everything.
    pub open: bool,
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Append entries.
    Append,
    /// Read entries, proofs, checkpoints, segments; export.
    Read,
    /// Verify a whole store or log.
    Verify,
    /// Seal, holds, erasure, retention.
    Administer,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No valid token.
    #[error("a valid bearer token is required")]
    Unauthenticated,
    /// Outside role or scope.
    #[error("{0}")]
    Forbidden(String),
}

/// Logs only auditors and admins read.
pub const PRIVILEGED_LOGS: [&str; 2] = ["_system", "_access"];

impl Principal {
    /// The principal of an open server.
    #[must_use]
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".into(),
            role: Role::Admin,
            logs: None,
            subjects: None,
            open: true,
        }
    }

    fn role_allows(&self, action: Action) -> bool {
        if self.open {
            return true;
        }
        match action {
            Action::Append => self.role == Role::Writer,
            Action::Read => self.role >= Role::Reader,
            Action::Verify => self.role >= Role::Auditor,
            Action::Administer => self.role == Role::Admin,
        }
    }

    /// Whether the role allows `action` at all (scopes aside).
    #[must_use]
    pub fn may(&self, action: Action) -> bool {
        self.role_allows(action)
    }

    /// Whether scopes apply (auditors and admins see everything).
    fn scoped(&self) -> bool {
        self.role <= Role::Reader
    }

    /// May this principal do `action` on `log` (and, when given, on entries
    /// about `subject`)?
    ///
    /// # Errors
    /// [`Denied::Forbidden`], saying which rule refused.
    pub fn check(&self, action: Action, log: &str, subject: Option<&str>) -> Result<(), Denied> {
        if !self.role_allows(action) {
            return Err(Denied::Forbidden(format!(
                "token {:?} (role {}) may not {}",
                self.name,
                self.role.as_str(),
                match action {
                    Action::Append => "append",
                    Action::Read => "read",
                    Action::Verify => "verify",
                    Action::Administer => "administer",
                }
            )));
        }
        if !self.scoped() {
            return Ok(());
        }
        if PRIVILEGED_LOGS.contains(&log) {
            return Err(Denied::Forbidden(format!(
                "log {log} is readable by auditors only"
            )));
        }
        if let Some(logs) = &self.logs {
            if !logs.iter().any(|l| l == log) {
                return Err(Denied::Forbidden(format!(
                    "token {:?} is not scoped to log {log:?}",
                    self.name
                )));
            }
        }
        if let (Some(prefixes), Some(subject)) = (&self.subjects, subject) {
            if !prefixes.iter().any(|p| subject.starts_with(p.as_str())) {
                return Err(Denied::Forbidden(self.out_of_scope()));
            }
        }
        Ok(())
    }

    /// True when the principal is limited to some subjects.
    #[must_use]
    pub fn subject_scoped(&self) -> bool {
        self.scoped() && self.subjects.is_some()
    }

    /// The one answer to anything outside a subject scope (the same whether
    /// or not it exists).
    #[must_use]
    pub fn out_of_scope(&self) -> String {
        format!("outside the subjects of token {:?}", self.name)
    }
}

/// SHA-256 of a secret.
#[must_use]
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut d = 0u8;
    for i in 0..32 {
        d |= a[i] ^ b[i];
    }
    // Through black_box so the comparison is not turned into an early exit.
    std::hint::black_box(d) == 0
}

/// The configured tokens of a server.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    specs: Vec<TokenSpec>,
}

impl Tokens {
    /// Tokens from the configuration.
    #[must_use]
    pub fn new(specs: Vec<TokenSpec>) -> Tokens {
        Tokens { specs }
    }

    /// True when no token is configured (an open server).
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.specs.is_empty()
    }

    /// The principal an `authorization` header value stands for.
    ///
    /// # Errors
    /// [`Denied::Unauthenticated`] without a valid bearer token.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, Denied> {
        if self.is_open() {
            return Ok(Principal::anonymous());
        }
        let secret = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(Denied::Unauthenticated)?;
        let d = digest(secret);
        let mut found = None;
        for spec in &self.specs {
            if ct_eq(&d, &spec.sha256) && found.is_none() {
                found = Some(spec);
            }
        }
        let spec = found.ok_or(Denied::Unauthenticated)?;
        Ok(Principal {
            name: spec.name.clone(),
            role: spec.role,
            logs: spec.logs.clone(),
            subjects: spec.subjects.clone(),
            open: false,
        })
    }
}

/// A new random secret (`alt_` and 43 base64url characters: 256 bits).
///
/// # Errors
/// When the OS has no randomness.
pub fn new_secret() -> Result<String, crate::keys::KeyFileError> {
    use base64::Engine as _;
    let mut b = [0u8; 32];
    crate::keys::fill_random(&mut b)?;
    Ok(format!(
        "alt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let spec = |name: &str, role, logs: Option<&[&str]>, subjects: Option<&[&str]>| TokenSpec {
            name: name.into(),
            sha256: digest(&format!("secret-{name}")),
            role,
            logs: logs.map(|l| l.iter().map(|s| s.to_string()).collect()),
            subjects: subjects.map(|l| l.iter().map(|s| s.to_string()).collect()),
        };
        Tokens::new(vec![
            spec("w", Role::Writer, Some(&["orders"]), None),
            spec("r", Role::Reader, Some(&["orders"]), Some(&["order:"])),
            spec("a", Role::Auditor, Some(&["orders"]), None),
            spec("x", Role::Admin, None, None),
        ])
    }

    #[test]
    fn authenticates_only_known_secrets() {
        let t = tokens();
        assert_eq!(t.authenticate(Some("Bearer secret-r")).unwrap().name, "r");
        for bad in [
            None,
            Some(""),
            Some("Bearer "),
            Some("secret-r"),
            Some("Bearer secret-q"),
            Some("Basic secret-r"),
        ] {
            assert_eq!(t.authenticate(bad), Err(Denied::Unauthenticated), "{bad:?}");
        }
        assert_eq!(
            Tokens::default().authenticate(None).unwrap(),
            Principal::anonymous()
        );
    }

    #[test]
    fn roles_and_scopes() {
        let t = tokens();
        let p = |n: &str| t.authenticate(Some(&format!("Bearer secret-{n}"))).unwrap();
        use Action::*;
        let cases: &[(&str, Action, &str, Option<&str>, bool)] = &[
            ("w", Append, "orders", Some("order:1"), true),
            ("w", Append, "chats", Some("chat:1"), false),
            ("w", Read, "orders", None, false),
            ("r", Read, "orders", Some("order:1"), true),
            ("r", Read, "orders", Some("user:1"), false),
            ("r", Read, "chats", Some("order:1"), false),
            ("r", Read, "_access", None, false),
            ("r", Verify, "orders", None, false),
            ("r", Append, "orders", Some("order:1"), false),
            ("a", Read, "chats", Some("user:1"), true),
            ("a", Read, "_access", None, true),
            ("a", Verify, "orders", None, true),
            ("a", Administer, "orders", None, false),
            ("x", Administer, "orders", None, true),
            ("x", Read, "_system", None, true),
            ("x", Append, "orders", None, false),
        ];
        for (who, action, log, subject, ok) in cases {
            assert_eq!(
                p(who).check(*action, log, *subject).is_ok(),
                *ok,
                "{who} {action:?} {log} {subject:?}"
            );
        }
    }
}
