//! The `auditlog` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use auditlog::keys;

/// auditlog: a tamper-evident audit-log store with offline-verifiable evidence.
#[derive(Parser)]
#[command(name = "auditlog", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an Ed25519 signing key for a log.
    ///
    /// Writes DIR/signer.key (the private key, mode 0600: keep it secret and
    /// backed up) and DIR/verifier.pub (the public key: give it to anyone who
    /// must verify evidence). Refuses to overwrite existing files.
    ///
    /// Example: auditlog keygen --name audit.example.com/orders --out keys/
    Keygen {
        /// Key name; by convention the log origin, e.g. audit.example.com/orders.
        /// No spaces and no '+'.
        #[arg(long)]
        name: String,
        /// Directory to write signer.key and verifier.pub into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen { name, out } => {
            let result = keys::generate_signer(&name)
                .and_then(|s| keys::write_key_pair(&out, &s).map(|p| (s, p)));
            match result {
                Ok((signer, (sp, vp))) => {
                    println!("wrote {} (private, mode 0600)", sp.display());
                    println!("wrote {} (public)", vp.display());
                    println!("verifier key: {}", signer.verifier().to_text());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("auditlog keygen: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
