//! The evidence report: one self-contained HTML page that tells a dispute
//! reviewer, in plain words, what `auditlog verify` found in a bundle
//! (`auditlog verify BUNDLE --key K --report report.html`).
//!
//! Owns: the page's layout and wording, and the per-entry status shown on
//! it (verified, erased, expired, failed with the reason, not verified).
//!
//! Invariants:
//! - The verdict on the page is the verifier's ([`Report::is_valid`]); the
//!   page never decides validity itself. An entry is shown as verified only
//!   when the bundle's checkpoint verified and no failure names its seq.
//! - Every string that comes from the bundle goes through [`esc`]: HTML
//!   special characters are escaped, and bidirectional-override and other
//!   invisible format characters are shown as visible `[U+XXXX]` marks, so a
//!   payload can neither inject markup nor make its text read differently
//!   from its bytes.
//! - The page loads nothing and runs nothing: a Content-Security-Policy of
//!   `default-src 'none'` with inline styles and `data:` images only, no
//!   script, no font, no link. Images are embedded only for a fixed list of
//!   raster types, with a MIME type chosen here, never copied from the
//!   bundle.
//! - Memory does not grow with the bundle: entries are streamed from a
//!   second read of the file, at most [`MAX_ROWS`] are listed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::bundle::{read_entries, BundleSummary, Query, ShownEntry};
use crate::core::note::VerifierKey;
use crate::core::transition::format_time;
use crate::verify::{Finding, Report, Verdict};

/// Entries listed in the timeline; the rest are counted, not shown (the
/// verifier checked them all; failures among them are listed with the
/// problems).
pub const MAX_ROWS: u64 = 5_000;
/// Bytes of a text payload shown; the rest is counted.
pub const MAX_TEXT: usize = 64 << 10;
/// Largest image embedded in the page.
pub const MAX_IMAGE: usize = 4 << 20;
/// Most bytes of content (text shown, images embedded) one page holds, so a
/// hostile bundle cannot make a page of gigabytes; past it, content is
/// named, not shown.
pub const MAX_CONTENT: usize = 64 << 20;

/// What the page says besides the bundle itself.
pub struct ReportContext<'a> {
    /// The bundle's file name as the reviewer gave it.
    pub bundle_name: &'a str,
    /// SHA-256 of the bundle file, hex: ties the page to the file.
    pub bundle_sha256: &'a str,
    /// The key files given with `--key`, as given.
    pub key_files: &'a [String],
    /// The keys trusted (from those files and followed rotations).
    pub trusted: &'a [VerifierKey],
    /// What the verifier found.
    pub report: &'a Report,
    /// What the verifier read.
    pub summary: &'a BundleSummary,
    /// When the report is written, Unix nanoseconds.
    pub now_unix_nanos: i64,
}

/// Writes the report page for the bundle read from `bundle` (the same
/// bytes that were verified) to `out`.
///
/// # Errors
/// Write errors on `out`.
pub fn write_html(
    bundle: impl BufRead,
    ctx: &ReportContext<'_>,
    out: impl Write,
) -> io::Result<()> {
    write_html_within(bundle, ctx, out, MAX_CONTENT)
}

/// [`write_html`] with at most `budget` bytes of content in the page.
fn write_html_within(
    bundle: impl BufRead,
    ctx: &ReportContext<'_>,
    out: impl Write,
    mut budget: usize,
) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    let report = ctx.report;
    let valid = report.is_valid();
    let by_seq = findings_by_seq(report);
    let count = |v: Verdict| report.findings.iter().filter(|f| f.verdict == v).count();
    let (erased, expired) = (count(Verdict::Erased), count(Verdict::Expired));
    let failures: Vec<&Finding> = report.failures().collect();
    let checkpoint_ok = ctx.summary.checkpoint.is_some();

    let title = match &ctx.summary.query {
        Some(Query::Subject { subject }) => format!("Evidence for {}", esc(subject)),
        Some(Query::SeqRange { from_seq, to_seq }) => format!(
            "Evidence: entries {from_seq} to {} of log {}",
            to_seq.saturating_sub(1),
            esc(&ctx.summary.log)
        ),
        Some(Query::TimeRange {
            since_unix_nanos,
            until_unix_nanos,
        }) => format!(
            "Evidence: log {} from {} to {}",
            esc(&ctx.summary.log),
            time(*since_unix_nanos),
            time(*until_unix_nanos)
        ),
        None => "Evidence bundle".to_owned(),
    };
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         img-src data:; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>auditlog evidence report: {}</title>\n<style>{CSS}</style>\n</head>\n\
         <body>\n<main>\n<p class=\"what\">{title}</p>\n",
        if valid { "VERIFIED" } else { "NOT VERIFIED" }
    )?;

    // The verdict, in plain words, first.
    let entries = ctx.summary.entries;
    if valid {
        write!(
            out,
            "<section id=\"verdict\" class=\"verdict ok\" data-verdict=\"VALID\">\n\
             <h1>Verified: this evidence is intact</h1>\n\
             <p>All {} in this file are exactly as the log recorded them, in \
             order, with nothing inserted. The log's operator signed them with a key you \
             trust, and no one has changed them since.</p>\n",
            plural(entries, "entry", "entries")
        )?;
        if erased + expired > 0 {
            writeln!(
                out,
                "<p>The content of {} was removed under the log's privacy rules \
                 ({erased} erased on request, {expired} expired at the end of the \
                 retention period). That the {} existed, when, by whom and of what kind \
                 is still proven; only the content is gone.</p>",
                plural((erased + expired) as u64, "entry", "entries"),
                if erased + expired == 1 {
                    "entry"
                } else {
                    "entries"
                }
            )?;
        }
    } else {
        write!(
            out,
            "<section id=\"verdict\" class=\"verdict bad\" data-verdict=\"INVALID\">\n\
             <h1>Not verified: do not rely on this evidence</h1>\n\
             <p>The check found {}. The file was changed after it was exported, is \
             incomplete, or was not signed by a key you trust. The problems are listed \
             below; entries marked <em>failed</em> are the ones affected.</p>\n",
            plural(failures.len() as u64, "problem", "problems")
        )?;
    }
    out.write_all(b"</section>\n")?;

    if !failures.is_empty() {
        out.write_all(b"<section id=\"problems\">\n<h2>Problems found</h2>\n<ul>\n")?;
        for f in &failures {
            writeln!(
                out,
                "<li><strong>{}</strong> {} <span class=\"where\">{}</span><br>\
                 <span class=\"detail\">{}</span></li>",
                f.verdict.code(),
                explain(f.verdict),
                esc(&where_of(f)),
                esc(&f.detail)
            )?;
        }
        out.write_all(b"</ul>\n</section>\n")?;
    }

    // The timeline.
    write!(
        out,
        "<section id=\"timeline\">\n<h2>What was recorded</h2>\n\
         <p class=\"note\">Times are the log server's, in UTC. Content is shown as \
         plain text exactly as recorded; nothing in it is run or followed.</p>\n\
         <table>\n<thead><tr><th>#</th><th>Time (UTC)</th><th>Who</th><th>What</th>\
         <th>Content</th><th>Status</th></tr></thead>\n<tbody>\n"
    )?;
    let mut shown = 0u64;
    let mut more = 0u64;
    let mut result = Ok(());
    read_entries(bundle, |e| {
        if result.is_err() {
            return;
        }
        if shown >= MAX_ROWS {
            more += 1;
            return;
        }
        shown += 1;
        result = row(&mut out, &e, &by_seq, checkpoint_ok, &mut budget);
    });
    result?;
    out.write_all(b"</tbody>\n</table>\n")?;
    if more > 0 {
        writeln!(
            out,
            "<p class=\"note\">{} not listed here; the check covered them \
             all, and any problem among them is listed above.</p>",
            plural(more, "more entry is", "more entries are")
        )?;
    }
    if shown == 0 {
        out.write_all(b"<p class=\"note\">The file holds no entry that could be read.</p>\n")?;
    }
    out.write_all(b"</section>\n")?;

    // What was checked, and how to check it again.
    out.write_all(b"<section id=\"details\">\n<h2>What was checked</h2>\n<dl>\n")?;
    dd(&mut out, "Log", &ctx.summary.log)?;
    dd(&mut out, "Log origin", &ctx.summary.origin)?;
    if let Some(cp) = &ctx.summary.checkpoint {
        dd(
            &mut out,
            "Signed checkpoint",
            &format!(
                "tree size {}, root {}",
                cp.size,
                B64.encode(cp.root.0.as_slice())
            ),
        )?;
    } else {
        dd(&mut out, "Signed checkpoint", "could not be verified")?;
    }
    for k in &ctx.summary.signed_by {
        dd(&mut out, "Signed by", &key_line(k))?;
    }
    for k in ctx.trusted {
        dd(&mut out, "Trusted key", &key_line(k))?;
    }
    for (t, followed) in &report.transitions {
        dd(
            &mut out,
            "Key rotation",
            &format!(
                "{} from {} to {}{}",
                format_time(t.time_unix_nanos),
                t.from.to_text(),
                t.to.to_text(),
                if *followed {
                    " (followed: signed by a trusted key)"
                } else {
                    " (not followed: not signed by a trusted key)"
                }
            ),
        )?;
    }
    dd(
        &mut out,
        "Checked",
        &format!(
            "{} entries, {} checkpoints, {} seals",
            report.entries_checked, report.checkpoints_checked, report.seals_checked
        ),
    )?;
    dd(&mut out, "Bundle file", ctx.bundle_name)?;
    dd(&mut out, "Bundle SHA-256", ctx.bundle_sha256)?;
    dd(&mut out, "Report written", &time(ctx.now_unix_nanos))?;
    out.write_all(b"</dl>\n")?;
    let mut cmd = format!("auditlog verify {}", shell_word(ctx.bundle_name));
    for k in ctx.key_files {
        let _ = write!(cmd, " --key {}", shell_word(k));
    }
    write!(
        out,
        "<h2>How to check this again</h2>\n\
         <p>This page describes the bundle file whose SHA-256 is shown above \
         (<code>sha256sum {}</code> prints it). Anyone holding the file and the \
         operator's public key can repeat the check, offline:</p>\n\
         <pre class=\"cmd\">{}</pre>\n\
         <p>It prints <code>VALID</code> and exits with status 0 when the evidence \
         is intact, and names every problem otherwise (status 1).</p>\n",
        esc(&shell_word(ctx.bundle_name)),
        esc(&cmd)
    )?;
    out.write_all(b"</section>\n</main>\n</body>\n</html>\n")?;
    out.flush()
}

/// One timeline row.
fn row(
    out: &mut impl Write,
    e: &ShownEntry,
    by_seq: &BTreeMap<u64, Vec<&Finding>>,
    checkpoint_ok: bool,
    budget: &mut usize,
) -> io::Result<()> {
    let entry = match &e.entry {
        Ok(x) => x,
        Err(why) => {
            return writeln!(
                out,
                "<tr class=\"entry bad\" data-status=\"failed\"><td>?</td><td></td><td></td>\
                 <td></td><td>line {} of the file</td><td class=\"status\"><span \
                 class=\"badge bad\">Failed</span> {}</td></tr>",
                e.line,
                esc(why)
            );
        }
    };
    let problems: Vec<&&Finding> = by_seq
        .get(&entry.seq)
        .map(|v| v.iter().filter(|f| !f.verdict.is_informational()).collect())
        .unwrap_or_default();
    let removed = match e.payload_state.as_str() {
        "erased" => Some("erased"),
        "expired" => Some("expired"),
        _ => None,
    };
    let (class, status, badge) = if !problems.is_empty() {
        let mut why = String::new();
        for f in &problems {
            let _ = write!(
                why,
                "<br>{} <span class=\"detail\">{} {}: {}</span>",
                explain(f.verdict),
                f.verdict.code(),
                esc(&f.field),
                esc(&f.detail)
            );
        }
        (
            "bad",
            "failed",
            format!("<span class=\"badge bad\">Failed</span>{why}"),
        )
    } else if !checkpoint_ok {
        (
            "warn",
            "unverified",
            "<span class=\"badge warn\">Not verified</span><br>the signed checkpoint did not \
             verify"
                .to_owned(),
        )
    } else if let Some(r) = removed {
        (
            "info",
            r,
            format!(
                "<span class=\"badge info\">Verified, content {r}</span><br>the record is \
                 proven; its content was {}",
                if r == "erased" {
                    "erased on request"
                } else {
                    "deleted when its retention ended"
                }
            ),
        )
    } else {
        (
            "ok",
            "verified",
            "<span class=\"badge ok\">Verified</span>".to_owned(),
        )
    };
    write!(
        out,
        "<tr class=\"entry {class}\" data-seq=\"{}\" data-status=\"{status}\">\
         <td class=\"seq\">{}</td><td class=\"time\">{}</td><td>{}</td>\
         <td>{}<br><span class=\"subject\">{}</span></td><td class=\"content\">",
        entry.seq,
        entry.seq,
        time(entry.timestamp_unix_nanos),
        esc(&entry.actor),
        esc(&entry.kind),
        esc(&entry.subject)
    )?;
    if !entry.attributes.is_empty() {
        out.write_all(b"<div class=\"attrs\">")?;
        for (k, v) in &entry.attributes {
            write!(out, "<span>{}={}</span> ", esc(k), esc(v))?;
        }
        out.write_all(b"</div>")?;
    }
    if !problems.is_empty() {
        out.write_all(
            b"<p class=\"failed\">What the file shows here is not what the log recorded:</p>",
        )?;
    }
    content(out, entry.content_type.as_str(), e, removed, budget)?;
    writeln!(out, "</td><td class=\"status\">{badge}</td></tr>")
}

/// The content cell: text, an image, or a description of binary bytes.
fn content(
    out: &mut impl Write,
    content_type: &str,
    e: &ShownEntry,
    removed: Option<&str>,
    budget: &mut usize,
) -> io::Result<()> {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some(payload) = e.payload.as_deref().filter(|_| removed.is_none()) else {
        return write!(
            out,
            "<p class=\"removed\">Content {} ({}, {} bytes when recorded).</p>",
            removed.unwrap_or("not in the file"),
            esc(content_type),
            e.entry.as_ref().map_or(0, |x| x.payload_len)
        );
    };
    // Raster images only, with a MIME type of ours: SVG can carry script.
    let image = match ct.as_str() {
        "image/png" => Some("image/png"),
        "image/jpeg" | "image/jpg" => Some("image/jpeg"),
        "image/gif" => Some("image/gif"),
        "image/webp" => Some("image/webp"),
        _ => None,
    };
    let shown = if image.is_some() {
        payload.len() * 4 / 3
    } else {
        payload.len().min(MAX_TEXT)
    };
    if shown > *budget {
        return write!(
            out,
            "<p class=\"note\">Content not shown ({}, {} bytes): this page already holds as \
             much content as it may. It is in the bundle, checked like the rest; \
             <code>auditlog get</code> shows it.</p>",
            esc(content_type),
            payload.len()
        );
    }
    *budget -= shown;
    if let Some(mime) = image.filter(|_| payload.len() <= MAX_IMAGE) {
        return write!(
            out,
            "<img alt=\"image recorded as {}, {} bytes\" src=\"data:{mime};base64,{}\">",
            esc(content_type),
            payload.len(),
            B64.encode(payload)
        );
    }
    match std::str::from_utf8(payload) {
        Ok(text) if image.is_none() => {
            let cut = floor_char_boundary(text, MAX_TEXT);
            write!(out, "<pre>{}</pre>", esc(&text[..cut]))?;
            if cut < text.len() {
                write!(
                    out,
                    "<p class=\"note\">{} more bytes not shown.</p>",
                    text.len() - cut
                )?;
            }
            Ok(())
        }
        _ => {
            let head = &payload[..payload.len().min(32)];
            write!(
                out,
                "<p class=\"binary\">{} content, {} bytes, not shown as text. First bytes: \
                 <code>{}</code></p>",
                esc(content_type),
                payload.len(),
                hex::encode(head)
            )
        }
    }
}

fn findings_by_seq(report: &Report) -> BTreeMap<u64, Vec<&Finding>> {
    let mut m: BTreeMap<u64, Vec<&Finding>> = BTreeMap::new();
    for f in &report.findings {
        if let Some(s) = f.seq {
            m.entry(s).or_default().push(f);
        }
    }
    m
}

/// What a verdict means, for someone who is not an engineer.
fn explain(v: Verdict) -> &'static str {
    match v {
        Verdict::HashMismatch => {
            "Recorded content or details do not match their fingerprint: something was \
             changed after it was logged."
        }
        Verdict::ChainBroken => {
            "Entries do not link up: some were reordered, inserted, repeated or taken from \
             another log."
        }
        Verdict::BadSignature => {
            "A signature does not check out: a signed statement was altered or forged."
        }
        Verdict::UnknownKey => {
            "Signed by a key you did not say you trust: ask the operator for the right \
             public key, and check it with them."
        }
        Verdict::BadProof => "The proof that this is part of the signed log does not check out.",
        Verdict::MissingEntry => "An entry that should be here is not.",
        Verdict::Truncated => "The file ends early: part of the evidence is missing.",
        Verdict::Malformed => "Part of the file cannot be read as evidence.",
        Verdict::Erased => "The content was erased on request; the record remains proven.",
        Verdict::Expired => {
            "The content was deleted when its retention ended; the record remains proven."
        }
        _ => "A problem was found.",
    }
}

fn where_of(f: &Finding) -> String {
    let mut w = format!("log {}", f.log);
    if let Some(s) = f.seq {
        let _ = write!(w, ", entry #{s}");
    }
    if let Some(s) = f.segment {
        let _ = write!(w, ", segment {s}");
    }
    if !f.field.is_empty() {
        let _ = write!(w, ", {}", f.field);
    }
    w
}

fn key_line(k: &VerifierKey) -> String {
    format!("{} (key id {:08x}): {}", k.name(), k.key_id(), k.to_text())
}

fn dd(out: &mut impl Write, term: &str, value: &str) -> io::Result<()> {
    writeln!(out, "<dt>{}</dt><dd>{}</dd>", esc(term), esc(value))
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm`, UTC.
fn time(nanos: i64) -> String {
    let t = format_time(nanos);
    let ms = nanos.rem_euclid(1_000_000_000) / 1_000_000;
    let t = t.trim_end_matches('Z').replacen('T', " ", 1);
    format!("{t}.{ms:03}")
}

/// A word as a POSIX shell reads it back (single-quoted unless plain).
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=+@%,".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Characters that change how text around them reads without being seen:
/// bidirectional embeddings, overrides and isolates, marks, and other
/// zero-width format characters.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{061C}' | '\u{FEFF}' | '\u{00AD}')
}

/// HTML-escapes `s` for text and attribute values, and shows invisible
/// format characters as `[U+XXXX]` marks. Other control characters than
/// tab and newline are shown the same way.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            '\t' | '\n' => o.push(c),
            c if c.is_control() || is_invisible_format(c) => {
                let _ = write!(o, "<span class=\"mark\">[U+{:04X}]</span>", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = "
body{font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1b1f24}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 8px}
h2{font-size:1.2em;margin:28px 0 8px}
.verdict{border-radius:8px;padding:16px 20px;border:2px solid}
.verdict.ok{background:#e7f6ec;border-color:#1a7f37}
.verdict.bad{background:#fdecea;border-color:#c62828}
#problems li{margin:6px 0}
.what{font-weight:600;color:#57606a;margin:0 0 8px}
.where,.subject,.note,.detail{color:#57606a;font-size:.9em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #d8dee4;padding:8px;text-align:left;vertical-align:top}
td{unicode-bidi:isolate}
th{background:#eaeef2}
td.seq,td.time{white-space:nowrap;font-variant-numeric:tabular-nums}
td.content{max-width:480px}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font:14px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre.cmd{background:#1b1f24;color:#fff;padding:10px;border-radius:6px}
img{max-width:100%;max-height:480px;display:block}
.attrs span{display:inline-block;background:#eaeef2;border-radius:4px;padding:0 4px;margin:0 4px 4px 0;font-size:.85em}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-weight:600;font-size:.9em}
.badge.ok{background:#1a7f37;color:#fff}
.badge.bad{background:#c62828;color:#fff}
.badge.warn{background:#9a6700;color:#fff}
.badge.info{background:#57606a;color:#fff}
tr.bad{background:#fff5f5}
.mark{background:#fff3bf;color:#7a4d00;font-size:.8em;border-radius:3px}
.failed{color:#c62828;font-weight:600;margin:0 0 4px}
.removed,.binary{color:#57606a;font-style:italic;margin:0}
dt{font-weight:600;margin-top:6px}
dd{margin:0 0 0 0;word-break:break-all;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_shows_invisible_characters() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        let s = esc("refund \u{202E}devorppa\u{202C} now\u{7}");
        assert!(!s.contains('\u{202E}') && !s.contains('\u{202C}') && !s.contains('\u{7}'));
        assert!(s.contains("[U+202E]") && s.contains("[U+202C]") && s.contains("[U+0007]"));
        assert_eq!(esc("line\n\ttab é 漢字"), "line\n\ttab é 漢字");
    }

    #[test]
    fn shell_words_read_back_as_given() {
        assert_eq!(shell_word("order-8812.bundle"), "order-8812.bundle");
        assert_eq!(shell_word("my file"), "'my file'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn times_are_utc_with_milliseconds() {
        assert_eq!(time(1_234_567_890), "1970-01-01 00:00:01.234");
        assert_eq!(time(-1), "1969-12-31 23:59:59.999");
    }

    #[test]
    fn a_page_holds_at_most_its_content_budget() {
        use crate::bundle::{BundleEntry, BundleWriter};
        use crate::core::entry::Entry;
        use crate::core::hash::Hash;
        let mut bundle = Vec::new();
        let mut w = BundleWriter::new(
            &mut bundle,
            "orders",
            "o",
            Query::Subject {
                subject: "s".into(),
            },
            "cp",
            &[],
        )
        .unwrap();
        for seq in 0..4u64 {
            let e = Entry {
                origin: "o".into(),
                seq,
                timestamp_unix_nanos: 0,
                subject: "s".into(),
                actor: "a".into(),
                kind: "k".into(),
                content_type: "text/plain".into(),
                attributes: Default::default(),
                idempotency_key: String::new(),
                payload_len: 1000,
                payload_commitment: Hash::ZERO,
                prev_leaf_hash: Hash::ZERO,
            };
            w.entry(&BundleEntry {
                encoding: e.encode().unwrap(),
                state: "present",
                salt: Some(crate::core::entry::Salt([0; 32])),
                payload: vec![b'x'; 1000],
                proof: vec![],
            })
            .unwrap();
        }
        w.finish().unwrap();
        let report = Report::default();
        let summary = BundleSummary::default();
        let ctx = ReportContext {
            bundle_name: "b",
            bundle_sha256: "00",
            key_files: &[],
            trusted: &[],
            report: &report,
            summary: &summary,
            now_unix_nanos: 0,
        };
        let mut page = Vec::new();
        write_html_within(&bundle[..], &ctx, &mut page, 2500).unwrap();
        let page = String::from_utf8(page).unwrap();
        // Two payloads of 1000 bytes fit in 2500; the third and fourth do not.
        assert_eq!(page.matches(&"x".repeat(1000)).count(), 2);
        assert_eq!(
            page.matches("Content not shown (text/plain, 1000 bytes)")
                .count(),
            2
        );
        assert_eq!(
            page.matches("data-status=").count(),
            4,
            "every entry has its row"
        );
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        let s = "é".repeat(10);
        assert_eq!(floor_char_boundary(&s, 5), 4);
        assert_eq!(floor_char_boundary(&s, 100), 20);
    }
}
