//! Signing key rotation: the file steps around [`Engine::rotate_key`], and
//! finishing or undoing a rotation a crash interrupted.
//!
//! Owns: the order of the steps (FORMAT.md §4.1):
//! 1. stage: keep the current key as `signer.key.retired-<id>`, write the
//!    new one as `signer.key.next` (synced);
//! 2. record: the engine appends the transition to `_system` and, once it
//!    is durable, signs with the new key;
//! 3. promote: rename `signer.key.next` over `signer.key`, add the new
//!    public key to `verifier.pub`.
//!
//! Invariants: a crash before step 2 is durable leaves the old key in
//! `signer.key` and no transition anywhere (the next start removes the
//! staged files); a crash after it leaves a recorded transition whose new
//! key is in `signer.key.next` or `signer.key` (the next start signs with
//! it and finishes step 3). No crash leaves the server signing with a key
//! no recorded transition introduces.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::core::note::VerifierKey;
use crate::engine::admin::{AdminError, RotatedKey};
use crate::engine::Engine;
use crate::keys::{self, KeyFileError};

/// Errors of a rotation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    /// A key file step failed.
    #[error(transparent)]
    Files(#[from] KeyFileError),
    /// Recording the transition failed (the old key still signs).
    #[error(transparent)]
    Record(#[from] AdminError),
}

/// What a start found of an interrupted rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing was pending.
    None,
    /// A staged key that was never recorded was removed.
    Abandoned(VerifierKey),
    /// A recorded rotation was finished: the server signs with this key.
    Finished(VerifierKey),
}

/// Rotates the key in one key file of a running engine.
pub struct KeyRotator {
    path: PathBuf,
    one: Mutex<()>,
}

impl KeyRotator {
    /// The rotator of the signer key at `path` (the file the engine's key
    /// was loaded from).
    pub fn new(path: impl Into<PathBuf>) -> KeyRotator {
        KeyRotator {
            path: path.into(),
            one: Mutex::new(()),
        }
    }

    /// The signer key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finishes or undoes a rotation left by a crash. Call once the engine
    /// has started (it knows the recorded transitions) and before serving.
    ///
    /// # Errors
    /// Key file I/O.
    pub fn recover(&self, engine: &Engine) -> Result<Recovery, RotateError> {
        let _one = self.one.lock().expect("rotation lock");
        let current = engine.verifier();
        let staged = match keys::staged_rotation(&self.path) {
            Ok(s) => s,
            // A half-written staged key: step 1 never finished, so nothing
            // can have been recorded with it.
            Err(KeyFileError::Parse { .. } | KeyFileError::Empty(_)) => {
                keys::abandon_rotation(&self.path, &current)?;
                return Ok(Recovery::None);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(new) = staged else {
            return Ok(Recovery::None);
        };
        let to = new.verifier();
        if engine.adopt_rotated_key(new) {
            keys::promote_rotation(&self.path, &to)?;
            Ok(Recovery::Finished(to))
        } else {
            keys::abandon_rotation(&self.path, &current)?;
            Ok(Recovery::Abandoned(to))
        }
    }

    /// Creates a new key (named like the current one) and rotates to it.
    ///
    /// # Errors
    /// Key file I/O, or recording failed; either way the old key still
    /// signs, and a staged file left behind is cleaned by the next start.
    pub fn rotate(&self, engine: &Engine, by: &str) -> Result<RotatedKey, RotateError> {
        let _one = self.one.lock().expect("rotation lock");
        let current = keys::load_signer(&self.path)?;
        if current.verifier() != engine.verifier() {
            return Err(RotateError::Record(AdminError::Invalid(format!(
                "{} does not hold the key the server signs with; refusing to rotate",
                self.path.display()
            ))));
        }
        let new = keys::generate_signer(current.name())?;
        keys::stage_rotation(&self.path, &current, &new)?;
        let rotated = match engine.rotate_key(new, by) {
            Ok(r) => r,
            Err(e) => {
                keys::abandon_rotation(&self.path, &current.verifier())?;
                return Err(e.into());
            }
        };
        keys::promote_rotation(&self.path, &rotated.to)?;
        Ok(rotated)
    }
}
