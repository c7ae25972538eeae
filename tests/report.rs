//! The reviewer's HTML report (`auditlog verify BUNDLE --key K --report
//! FILE`): what it says for valid, tampered and wrongly keyed evidence, that
//! nothing from the bundle can become markup or script, and that it loads in
//! a real headless Chromium with no console error and everything visible
//! (tests/browser/check-report.mjs, through playwright-core).
//!
//! The browser part needs Node.js, Debian's chromium and `npm ci` in
//! tests/browser; without them it is skipped with a message, unless
//! AUDITLOG_REQUIRE_BROWSER=1 (set by .ci/run, which installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use auditlog::bundle::Query;
use auditlog::engine::admin::Target;
use auditlog::engine::input::EntryInput;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;

/// A payload that would run script, open a dialog or load something if it
/// were ever put in the page as markup.
const HOSTILE: &str = "Write a haiku about escrow <script>window.__pwned=1</script>\
    <img src=x onerror=\"window.__pwned=2;alert(2)\"><a href=\"https://example.invalid/\">x</a>";
/// An actor whose name is reversed by a right-to-left override.
const SPOOFED_ACTOR: &str = "seller:7\u{202E}5:reyub";

/// A 2x2 red PNG.
fn png() -> Vec<u8> {
    B64.decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==",
    )
    .unwrap()
}

struct Evidence {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    key: PathBuf,
    other_key: PathBuf,
}

/// An order with a hostile prompt, a spoofing actor, an image delivery and
/// a chat message that was later erased, exported by subject.
fn evidence() -> Evidence {
    let dir = tempfile::tempdir().unwrap();
    let f = open(
        &dir.path().join("data"),
        vec![orders()],
        ManualClock::at(1_764_000_000_000_000_000),
    );
    let mut prompt = input("order:8812", HOSTILE);
    prompt.attributes.insert(
        "<b>note</b>".into(),
        "\"><script>window.__pwned=3</script>".into(),
    );
    let output = EntryInput {
        actor: SPOOFED_ACTOR.into(),
        kind: "output".into(),
        ..input(
            "order:8812",
            "Escrow holds the coin\nuntil both hands let go",
        )
    };
    let image = EntryInput {
        actor: "seller:7".into(),
        kind: "delivery.image".into(),
        content_type: "image/png".into(),
        payload: png(),
        ..input("order:8812", "")
    };
    let chat = EntryInput {
        actor: "buyer:99".into(),
        kind: "chat.message".into(),
        ..input("order:8812", "my home address is 12 Example Road")
    };
    for e in [prompt, output, image, chat] {
        f.engine.append_blocking("orders", vec![e]).unwrap();
    }
    let erased = f
        .engine
        .erase(
            Some("orders"),
            &Target::Actor("buyer:99".into()),
            "privacy-desk",
        )
        .unwrap();
    assert_eq!(erased[0].erased, 1);
    let mut out = Vec::new();
    f.engine
        .export(
            "orders",
            Query::Subject {
                subject: "order:8812".into(),
            },
            None,
            &mut out,
        )
        .unwrap();
    f.close();
    let bundle = dir.path().join("order 8812.bundle");
    std::fs::write(&bundle, out).unwrap();
    let key = dir.path().join("verifier.pub");
    std::fs::write(&key, format!("{}\n", signer().verifier().to_text())).unwrap();
    let other_key = dir.path().join("other.pub");
    std::fs::write(
        &other_key,
        format!("{}\n", other_signer().verifier().to_text()),
    )
    .unwrap();
    Evidence {
        _dir: dir,
        bundle,
        key,
        other_key,
    }
}

/// Runs `auditlog verify BUNDLE --key KEY --report PAGE`: (exit code, page).
fn report(bundle: &Path, key: &Path) -> (i32, String, PathBuf) {
    let page = bundle.with_extension("html");
    let out = Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .arg("verify")
        .arg(bundle)
        .arg("--key")
        .arg(key)
        .arg("--report")
        .arg(&page)
        .output()
        .unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    (out.status.code().unwrap(), html, page)
}

/// Statuses of the timeline's rows, in order.
fn statuses(html: &str) -> Vec<String> {
    html.split("data-status=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].to_owned())
        .collect()
}

/// Checks nothing from the bundle became markup. Text from the bundle is
/// escaped, so every `<` in the page opens a tag the report wrote: each tag
/// must be one of the report's own, with only the report's attributes, and
/// images only from `data:image/` URLs.
fn assert_inert(html: &str) {
    const TAGS: &[&str] = &[
        "!DOCTYPE", "html", "head", "meta", "title", "style", "body", "main", "p", "section", "h1",
        "h2", "em", "strong", "span", "br", "ul", "li", "table", "thead", "tbody", "tr", "th",
        "td", "div", "pre", "code", "img", "dl", "dt", "dd",
    ];
    const ATTRS: &[&str] = &[
        "lang",
        "charset",
        "http-equiv",
        "content",
        "name",
        "id",
        "class",
        "alt",
        "src",
        "data-verdict",
        "data-seq",
        "data-status",
        "html",
    ];
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        let tag = &rest[i + 1..];
        let end = tag.find('>').expect("an unclosed tag");
        let body = tag[..end].trim_start_matches('/');
        rest = &tag[end..];
        if body.starts_with("style") && !body.contains(' ') {
            // Skip the style sheet (ours, constant).
            rest = &rest[rest.find("</style>").unwrap() + 1..];
            continue;
        }
        let name = body.split([' ', '\n']).next().unwrap();
        assert!(TAGS.contains(&name), "tag <{name}> in the page");
        // Attributes: name="value" pairs (values never hold a raw quote).
        let mut attrs = body[name.len()..].trim();
        while !attrs.is_empty() {
            let (attr, after) = attrs.split_once('=').unwrap_or((attrs, ""));
            let attr = attr.trim();
            assert!(ATTRS.contains(&attr), "attribute {attr:?} on <{name}>");
            let after = after.strip_prefix('"').unwrap_or(after);
            let (value, next) = after.split_once('"').unwrap_or((after, ""));
            if attr == "src" {
                assert!(value.starts_with("data:image/png;base64,"), "src={value:?}");
            }
            attrs = next.trim();
        }
    }
    assert!(html.contains("Content-Security-Policy\" content=\"default-src 'none';"));
    assert!(html.contains("&lt;script&gt;window.__pwned=1&lt;/script&gt;"));
    assert!(html.contains("onerror=&quot;window.__pwned=2;alert(2)&quot;"));
    assert!(!html.contains('\u{202E}'), "a raw right-to-left override");
    assert!(html.contains("seller:7<span class=\"mark\">[U+202E]</span>5:reyub"));
}

#[test]
fn a_valid_bundle_reads_verified_with_each_entry_and_nothing_from_it_is_markup() {
    let ev = evidence();
    let (code, html, page) = report(&ev.bundle, &ev.key);
    assert_eq!(code, 0);
    assert!(html.contains("data-verdict=\"VALID\""));
    assert!(html.contains("Verified: this evidence is intact"));
    assert!(html.contains("The content of 1 entry was removed"));
    assert_eq!(
        statuses(&html),
        ["verified", "verified", "verified", "erased"]
    );
    assert_inert(&html);
    // The erased payload is gone from the page as from the bundle.
    assert!(!html.contains("Example Road"));
    assert!(html.contains("data:image/png;base64,"));
    // How to check again: the file's SHA-256 and the command, quoted.
    use sha2::Digest as _;
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&ev.bundle).unwrap()));
    assert!(html.contains(&sha));
    assert!(html.contains(&format!(
        "auditlog verify &#39;{}&#39; --key {}",
        ev.bundle.display(),
        ev.key.display()
    )));
    assert!(html.contains(&signer().verifier().to_text()));
    browser_check(
        &page,
        serde_json::json!({
            "verdict": "VALID",
            "verdict_text": "Verified: this evidence is intact",
            "statuses": ["verified", "verified", "verified", "erased"],
            "visible_text": [
                "<script>window.__pwned=1</script>",
                "seller:7[U+202E]5:reyub",
                "Verified, content erased",
            ],
            "images": 1,
        }),
    );
}

#[test]
fn a_tampered_payload_reads_not_verified_and_names_the_entry() {
    let ev = evidence();
    let text = std::fs::read_to_string(&ev.bundle).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let p = B64.decode(lines[2]["payload"].as_str().unwrap()).unwrap();
    let p = String::from_utf8(p).unwrap().replace("coin", "cash");
    lines[2]["payload"] = B64.encode(p).into();
    let tampered = ev.bundle.with_file_name("tampered.bundle");
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&tampered, body).unwrap();

    let (code, html, page) = report(&tampered, &ev.key);
    assert_eq!(code, 1);
    assert!(html.contains("data-verdict=\"INVALID\""));
    assert!(html.contains("Not verified: do not rely on this evidence"));
    assert!(html.contains("The check found 1 problem."));
    assert_eq!(
        statuses(&html),
        ["verified", "failed", "verified", "erased"]
    );
    assert!(html.contains("HASH_MISMATCH"));
    assert!(html.contains("log orders, entry #1, payload"));
    assert_inert(&html);
    browser_check(
        &page,
        serde_json::json!({
            "verdict": "INVALID",
            "verdict_text": "Not verified",
            "statuses": ["verified", "failed", "verified", "erased"],
            "visible_text": ["HASH_MISMATCH", "Escrow holds the cash"],
            "images": 1,
        }),
    );
}

#[test]
fn evidence_under_a_key_the_reviewer_does_not_trust_verifies_nothing() {
    let ev = evidence();
    let (code, html, page) = report(&ev.bundle, &ev.other_key);
    assert_eq!(code, 1);
    assert!(html.contains("data-verdict=\"INVALID\""));
    assert!(html.contains("UNKNOWN_KEY"));
    assert_eq!(statuses(&html), ["unverified"; 4]);
    assert!(html.contains("could not be verified"));
    assert_inert(&html);
    browser_check(
        &page,
        serde_json::json!({
            "verdict": "INVALID",
            "statuses": ["unverified", "unverified", "unverified", "unverified"],
            "visible_text": ["UNKNOWN_KEY", "Not verified"],
        }),
    );
}

#[test]
fn a_report_is_written_only_for_a_bundle() {
    let ev = evidence();
    let out = Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .args(["verify", "--data-dir", "x", "--key"])
        .arg(&ev.key)
        .args(["--report", "r.html"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .arg("verify")
        .arg(&ev.bundle)
        .arg("--key")
        .arg(&ev.key)
        .arg("--report")
        .arg(ev.bundle.with_file_name("no-such-dir/r.html"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unwritable report is an I/O error"
    );
    // A report never overwrites the evidence or a key, nor does its
    // temporary file (x.partial for x.html).
    let original = std::fs::read(&ev.bundle).unwrap();
    let partial = ev.bundle.with_file_name("evidence.partial");
    std::fs::copy(&ev.bundle, &partial).unwrap();
    for (bundle, page) in [
        (ev.bundle.clone(), ev.bundle.clone()),
        (ev.bundle.clone(), ev.key.clone()),
        (partial.clone(), partial.with_extension("html")),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_auditlog"))
            .arg("verify")
            .arg(&bundle)
            .arg("--key")
            .arg(&ev.key)
            .arg("--report")
            .arg(&page)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{page:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("would overwrite"));
    }
    assert_eq!(std::fs::read(&ev.bundle).unwrap(), original);
    assert_eq!(std::fs::read(&partial).unwrap(), original);
    assert!(std::fs::read_to_string(&ev.key).unwrap().contains('+'));
}

/// The checker itself fails a page that logs an error, runs script, opens
/// a dialog and fetches from the network: its passes above mean something.
#[test]
fn the_browser_check_fails_a_page_that_misbehaves() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><section id=\"verdict\" data-verdict=\"VALID\">Verified</section>\
         <script>console.error('boom'); window.__pwned = 1;</script>\
         <img src=\"http://127.0.0.1:9/x.png\"></body></html>",
    )
    .unwrap();
    let Some(out) = run_checker(&page, &serde_json::json!({ "verdict": "VALID" })) else {
        return;
    };
    assert_eq!(out.0, 1, "{}", out.1);
    assert!(out.1.contains("console error: boom"), "{}", out.1);
    assert!(out.1.contains("script from the page ran"), "{}", out.1);
    assert!(
        out.1.contains("request to http://127.0.0.1:9/x.png"),
        "{}",
        out.1
    );
}

fn browser_check(page: &Path, expect: serde_json::Value) {
    if let Some((code, out)) = run_checker(page, &expect) {
        assert_eq!(code, 0, "the page failed in Chromium:\n{out}");
        assert_eq!(out.trim(), "ok");
    }
}

/// Runs tests/browser/check-report.mjs: (exit code, output), or None when
/// the browser tools are not installed (and not required).
fn run_checker(page: &Path, expect: &serde_json::Value) -> Option<(i32, String)> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium =
        std::env::var("AUDITLOG_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing = if !here.join("node_modules/playwright-core").exists() {
        Some("playwright-core (npm ci --prefix tests/browser)")
    } else if !Path::new(&chromium).exists() {
        Some("chromium (apt-get install chromium)")
    } else if Command::new("node").arg("--version").output().is_err() {
        Some("node")
    } else {
        None
    };
    if let Some(what) = missing {
        skip_unless_required("AUDITLOG_REQUIRE_BROWSER", "browser check", what);
        return None;
    }
    let expect_file = page.with_extension("expect.json");
    std::fs::write(&expect_file, expect.to_string()).unwrap();
    let out = Command::new("node")
        .arg(here.join("check-report.mjs"))
        .arg(page)
        .arg(&expect_file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(code, 2, "Chromium did not start: {text}");
    Some((code, text))
}

/// Long runs show progress on a terminal (here a pseudo-terminal made by
/// util-linux `script`) and print nothing extra when piped.
#[test]
fn verify_shows_progress_on_a_terminal_and_nowhere_else() {
    let ev = evidence();
    let exe = env!("CARGO_BIN_EXE_auditlog");
    let piped = Command::new(exe)
        .arg("verify")
        .arg(&ev.bundle)
        .arg("--key")
        .arg(&ev.key)
        .output()
        .unwrap();
    assert_eq!(piped.status.code(), Some(0));
    assert!(
        piped.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let stdout = String::from_utf8(piped.stdout).unwrap();
    assert!(
        stdout.starts_with("VALID: ") && !stdout.contains('\r'),
        "{stdout}"
    );

    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: the terminal half needs util-linux `script`");
        return;
    }
    let cmd = format!(
        "{exe} verify '{}' --key '{}'",
        ev.bundle.display(),
        ev.key.display()
    );
    let tty = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("AUDITLOG_NO_PROGRESS")
        .output()
        .unwrap();
    assert_eq!(tty.status.code(), Some(0));
    let seen = String::from_utf8_lossy(&tty.stdout);
    assert!(
        seen.contains("verifying ["),
        "no progress bar on a terminal: {seen:?}"
    );
    assert!(seen.contains("VALID: "), "{seen:?}");
}

/// A bundle larger than the page lists: the first MAX_ROWS entries are
/// rows, the rest are counted, and a failure among them is still named.
#[test]
fn a_long_bundle_lists_its_first_entries_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(
        &dir.path().join("data"),
        vec![orders()],
        ManualClock::at(1_000),
    );
    let n = auditlog::report::MAX_ROWS + 3;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let entries = chunk
            .iter()
            .map(|i| input("order:1", &format!("entry {i}")))
            .collect();
        f.engine.append_blocking("orders", entries).unwrap();
    }
    let mut out = Vec::new();
    f.engine
        .export(
            "orders",
            Query::SeqRange {
                from_seq: 0,
                to_seq: n,
            },
            None,
            &mut out,
        )
        .unwrap();
    f.close();
    // Tamper with the very last entry, beyond the rows shown.
    let text = String::from_utf8(out).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.len() - 2; // before the end line
    lines[last]["payload"] = B64.encode("changed").into();
    let bundle = dir.path().join("long.bundle");
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&bundle, body).unwrap();
    let key = dir.path().join("verifier.pub");
    std::fs::write(&key, format!("{}\n", signer().verifier().to_text())).unwrap();

    let (code, html, _) = report(&bundle, &key);
    assert_eq!(code, 1);
    assert_eq!(statuses(&html).len() as u64, auditlog::report::MAX_ROWS);
    assert!(html.contains("3 more entries are not listed here"));
    assert!(
        html.contains(&format!("entry #{}, payload", n - 1)),
        "the failure beyond the rows is named"
    );
}
