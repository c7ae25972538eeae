//! Progress of long CLI runs (export, verify, copy, retention apply): a bar
//! on stderr when it is a terminal, nothing otherwise, so scripts and pipes
//! see only the results. `AUDITLOG_NO_PROGRESS=1` turns it off on a
//! terminal too.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// True when progress is drawn: stderr is a terminal and not turned off.
pub fn enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("AUDITLOG_NO_PROGRESS").is_none()
}

fn make(total: Option<u64>, template: &str, what: &str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Bytes of a known total (a file being read).
pub fn bytes(total: u64, what: &str) -> ProgressBar {
    make(
        Some(total),
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        what,
    )
}

/// Bytes of an unknown total (a stream being received).
pub fn stream(what: &str) -> ProgressBar {
    make(
        None,
        "{spinner} {msg} {bytes} {bytes_per_sec} {elapsed}",
        what,
    )
}

/// Items of a known total (entries being copied).
pub fn count(total: u64, what: &str) -> ProgressBar {
    make(
        Some(total),
        "{msg} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
        what,
    )
}

/// Work of unknown size (a server-side run).
pub fn spinner(what: &str) -> ProgressBar {
    make(None, "{spinner} {msg} {elapsed}", what)
}
