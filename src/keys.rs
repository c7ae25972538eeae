//! Key files: generating, writing and loading signer and verifier keys.
//!
//! Owns: the on-disk key layout (`signer.key`, mode 0600, signer key text;
//! `verifier.pub`, verifier key text; FORMAT.md §4) and the one place that
//! draws randomness for a key.
//!
//! Invariants:
//! - A signer key file readable by group or others is refused when loaded.
//! - A key file is never overwritten, with one exception: a rotation
//!   replaces `signer.key` by `signer.key.next` in one rename, and only
//!   after the key it replaces was kept as `signer.key.retired-<id>` (which
//!   the operator may destroy once rotation is done: verifying needs only
//!   public keys). At every instant `signer.key` holds a whole key.
//! - `verifier.pub` beside a rotated key only grows: it lists every key the
//!   server signed with, oldest first.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::core::note::{NoteError, SignerKey, VerifierKey};

/// File name of the private key inside a key directory.
pub const SIGNER_FILE: &str = "signer.key";
/// File name of the public key inside a key directory.
pub const VERIFIER_FILE: &str = "verifier.pub";

/// Errors of key file handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// A file that would be overwritten.
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    /// I/O failure with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file does not hold a valid key.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: NoteError,
    },
    /// A private key file that others may read.
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The operating system could not provide randomness.
    #[error("no randomness available: {0}")]
    Random(String),
    /// A file with no key in it.
    #[error("{0}: no key found")]
    Empty(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Fills `buf` from the operating system's random source.
///
/// # Errors
/// When the OS has no randomness to give.
pub fn fill_random(buf: &mut [u8]) -> Result<(), KeyFileError> {
    getrandom::fill(buf).map_err(|e| KeyFileError::Random(e.to_string()))
}

/// Generates a new signer key named `name` from OS randomness.
///
/// # Errors
/// Bad name or no randomness.
pub fn generate_signer(name: &str) -> Result<SignerKey, KeyFileError> {
    let mut seed = [0u8; 32];
    fill_random(&mut seed)?;
    SignerKey::from_seed(name, &seed).map_err(|source| KeyFileError::Parse {
        path: PathBuf::from("<name>"),
        source,
    })
}

/// Writes `DIR/signer.key` (mode 0600) and `DIR/verifier.pub`, creating
/// `DIR` if needed. Refuses if either file exists; both are synced, and the
/// directory too.
///
/// # Errors
/// When a file exists or cannot be written.
pub fn write_key_pair(dir: &Path, signer: &SignerKey) -> Result<(PathBuf, PathBuf), KeyFileError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let signer_path = dir.join(SIGNER_FILE);
    let verifier_path = dir.join(VERIFIER_FILE);
    for p in [&signer_path, &verifier_path] {
        if p.exists() {
            return Err(KeyFileError::Exists(p.clone()));
        }
    }
    write_new(&signer_path, &format!("{}\n", signer.to_text()), 0o600)?;
    write_new(
        &verifier_path,
        &format!("{}\n", signer.verifier().to_text()),
        0o644,
    )?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok((signer_path, verifier_path))
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), KeyFileError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.to_owned())
        } else {
            io_err(path)(e)
        }
    })?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Loads a signer key, refusing a file readable by group or others.
///
/// # Errors
/// Unreadable, insecure or malformed file.
pub fn load_signer(path: &Path) -> Result<SignerKey, KeyFileError> {
    #[cfg(unix)]
    {
        let mode = fs::metadata(path)
            .map_err(io_err(path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::InsecurePermissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    SignerKey::from_text(text.trim()).map_err(|source| KeyFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Loads every verifier key in a file: one key per non-empty line; lines
/// starting with `#` are comments.
///
/// # Errors
/// Unreadable file, a malformed line, or no key at all.
pub fn load_verifiers(path: &Path) -> Result<Vec<VerifierKey>, KeyFileError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            VerifierKey::from_text(l).map_err(|source| KeyFileError::Parse {
                path: path.to_owned(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(KeyFileError::Empty(path.to_owned()));
    }
    Ok(keys)
}

/// Where a rotation in progress writes the new key: `P.next`.
pub fn next_path(signer: &Path) -> PathBuf {
    with_suffix(signer, ".next")
}

/// Where a rotation keeps the key it replaces: `P.retired-<key id>`.
pub fn retired_path(signer: &Path, key: &VerifierKey) -> PathBuf {
    with_suffix(signer, &format!(".retired-{:08x}", key.key_id()))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn dir_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> Result<(), KeyFileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Rotation, step 1 (before anything is recorded): keeps a copy of the
/// current key as `P.retired-<id>` and writes the new key as `P.next`, both
/// mode 0600 and synced. Either file existing with other contents is an
/// error.
///
/// # Errors
/// I/O, or a leftover file that is not this rotation's.
pub fn stage_rotation(
    signer: &Path,
    current: &SignerKey,
    new: &SignerKey,
) -> Result<(), KeyFileError> {
    for (path, key) in [
        (retired_path(signer, &current.verifier()), current),
        (next_path(signer), new),
    ] {
        let text = format!("{}\n", key.to_text());
        match write_new(&path, &text, 0o600) {
            Err(KeyFileError::Exists(_)) if fs::read_to_string(&path).ok() == Some(text) => {}
            other => other?,
        }
    }
    sync_dir(dir_of(signer))
}

/// Rotation, step 3 (once the transition is durable): renames `P.next`
/// over `P`, syncs the directory, and adds the new key to `verifier.pub`
/// beside it (creating it if missing).
///
/// # Errors
/// I/O.
pub fn promote_rotation(signer: &Path, new: &VerifierKey) -> Result<(), KeyFileError> {
    let next = next_path(signer);
    fs::rename(&next, signer).map_err(io_err(&next))?;
    let dir = dir_of(signer);
    sync_dir(dir)?;
    let public = dir.join(VERIFIER_FILE);
    let mut text = match fs::read_to_string(&public) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(&public)(e)),
    };
    let line = new.to_text();
    if text.lines().any(|l| l.trim() == line) {
        return Ok(());
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&line);
    text.push('\n');
    let tmp = with_suffix(&public, ".tmp");
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, &text, 0o644)?;
    fs::rename(&tmp, &public).map_err(io_err(&public))?;
    sync_dir(dir)
}

/// The new key of a rotation that was staged and not promoted, if any.
///
/// # Errors
/// An unreadable or insecure `P.next`.
pub fn staged_rotation(signer: &Path) -> Result<Option<SignerKey>, KeyFileError> {
    let next = next_path(signer);
    if !next.exists() {
        return Ok(None);
    }
    load_signer(&next).map(Some)
}

/// Undoes a staged rotation that was never recorded: removes `P.next` and
/// the retired copy of `current` (which `P` still holds).
///
/// # Errors
/// I/O.
pub fn abandon_rotation(signer: &Path, current: &VerifierKey) -> Result<(), KeyFileError> {
    for p in [next_path(signer), retired_path(signer, current)] {
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&p)(e)),
            _ => {}
        }
    }
    sync_dir(dir_of(signer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let signer = generate_signer("audit.example.com/orders").unwrap();
        let (sp, vp) = write_key_pair(dir.path(), &signer).unwrap();
        #[cfg(unix)]
        assert_eq!(
            fs::metadata(&sp).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_signer(&sp).unwrap().to_text(), signer.to_text());
        assert_eq!(load_verifiers(&vp).unwrap(), vec![signer.verifier()]);

        let other = generate_signer("x").unwrap();
        assert!(matches!(
            write_key_pair(dir.path(), &other),
            Err(KeyFileError::Exists(_))
        ));
        // The original key is untouched.
        assert_eq!(load_signer(&sp).unwrap().to_text(), signer.to_text());
    }

    #[test]
    fn staged_rotation_promotes_or_abandons() {
        let dir = tempfile::tempdir().unwrap();
        let old = generate_signer("k").unwrap();
        let new = generate_signer("k").unwrap();
        let (sp, vp) = write_key_pair(dir.path(), &old).unwrap();
        assert!(staged_rotation(&sp).unwrap().is_none());
        stage_rotation(&sp, &old, &new).unwrap();
        // Staging again (a retry) is harmless.
        stage_rotation(&sp, &old, &new).unwrap();
        assert_eq!(
            staged_rotation(&sp).unwrap().unwrap().to_text(),
            new.to_text()
        );
        // The active key is untouched until promotion.
        assert_eq!(load_signer(&sp).unwrap().to_text(), old.to_text());

        abandon_rotation(&sp, &old.verifier()).unwrap();
        assert!(staged_rotation(&sp).unwrap().is_none());
        assert!(!retired_path(&sp, &old.verifier()).exists());

        stage_rotation(&sp, &old, &new).unwrap();
        promote_rotation(&sp, &new.verifier()).unwrap();
        assert_eq!(load_signer(&sp).unwrap().to_text(), new.to_text());
        let retired = retired_path(&sp, &old.verifier());
        assert_eq!(load_signer(&retired).unwrap().to_text(), old.to_text());
        assert_eq!(
            load_verifiers(&vp).unwrap(),
            vec![old.verifier(), new.verifier()]
        );
        // A different key cannot be staged over a leftover.
        let other = generate_signer("k").unwrap();
        fs::write(next_path(&sp), "junk").unwrap();
        assert!(stage_rotation(&sp, &new, &other).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn group_readable_signer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let signer = generate_signer("k").unwrap();
        let (sp, _) = write_key_pair(dir.path(), &signer).unwrap();
        fs::set_permissions(&sp, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            load_signer(&sp),
            Err(KeyFileError::InsecurePermissions { mode: 0o640, .. })
        ));
    }
}
