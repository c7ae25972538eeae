//! Shared fixtures of the integration tests.
#![allow(dead_code)]

pub mod pg;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use auditlog::core::note::SignerKey;
use auditlog::engine::input::{EntryInput, Limits};
use auditlog::engine::{Clock, Engine, LogConfig};
use auditlog::store::embedded::EmbeddedStore;

/// For a test whose tools the machine lacks (`what`): fails when the
/// variable `require` is `1` (as `.ci/run` sets it), else says the test is
/// skipped.
pub fn skip_unless_required(require: &str, test: &str, what: &str) {
    assert!(
        std::env::var(require).as_deref() != Ok("1"),
        "{test}: {require}=1 but {what} is not installed"
    );
    eprintln!("{test}: skipped: needs {what}");
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(pub AtomicI64);

impl ManualClock {
    pub fn at(t: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(t)))
    }
    pub fn set(&self, t: i64) {
        self.0.store(t, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn signer() -> Arc<SignerKey> {
    Arc::new(SignerKey::from_seed("test.example/log", &[42; 32]).unwrap())
}

pub fn other_signer() -> SignerKey {
    SignerKey::from_seed("test.example/log", &[43; 32]).unwrap()
}

pub fn orders() -> LogConfig {
    LogConfig::new("orders", "audit.example.com/orders")
}

pub fn chats() -> LogConfig {
    LogConfig::new("chats", "audit.example.com/chats")
}

pub fn input(subject: &str, payload: &str) -> EntryInput {
    EntryInput {
        subject: subject.into(),
        actor: "buyer:42".into(),
        kind: "prompt".into(),
        content_type: "text/plain".into(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn keyed(subject: &str, payload: &str, key: &str) -> EntryInput {
    EntryInput {
        idempotency_key: key.into(),
        ..input(subject, payload)
    }
}

/// An engine over an embedded store in `dir`.
pub struct Fixture {
    pub dir: PathBuf,
    pub store: Arc<EmbeddedStore>,
    pub engine: Engine,
    pub clock: Arc<ManualClock>,
}

pub fn open(dir: &Path, logs: Vec<LogConfig>, clock: Arc<ManualClock>) -> Fixture {
    open_with(dir, logs, clock, Limits::default())
}

pub fn open_with(
    dir: &Path,
    logs: Vec<LogConfig>,
    clock: Arc<ManualClock>,
    limits: Limits,
) -> Fixture {
    let store = Arc::new(EmbeddedStore::open(dir).unwrap());
    let engine = Engine::start(store.clone(), signer(), logs, limits, clock.clone()).unwrap();
    Fixture {
        dir: dir.to_owned(),
        store,
        engine,
        clock,
    }
}

impl Fixture {
    /// Stops the engine and releases the data directory.
    pub fn close(self) {
        self.engine.shutdown();
        drop(self.engine);
        drop(self.store);
    }
}

/// Opens a checkpoint signed by the test key, for `origin`.
pub fn open_cp(signed: &str, origin: &str) -> auditlog::core::Checkpoint {
    auditlog::core::Checkpoint::open(signed, &[signer().verifier()], Some(origin))
        .unwrap()
        .0
}

/// Checks every receipt's proof against the answer's checkpoint.
pub fn check_receipts(out: &auditlog::engine::AppendOutcome, origin: &str) {
    let cp = open_cp(&out.checkpoint, origin);
    assert_eq!(cp.size, out.tree_size);
    for r in &out.receipts {
        auditlog::core::merkle::verify_inclusion::<auditlog::core::Blake3>(
            r.seq,
            cp.size,
            &r.leaf_hash,
            &r.inclusion_proof,
            &cp.root,
        )
        .unwrap();
    }
}

/// Copies a directory tree (a data directory, a fixture) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
