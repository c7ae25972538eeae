// Loads an HTML page in headless Chromium and checks what a reviewer would
// see. Run by tests/report.rs:
//
//   node check-report.mjs PAGE.html EXPECT.json
//
// EXPECT.json: {
//   "verdict": "VALID" | "INVALID",      // #verdict's data-verdict
//   "verdict_text": "...",               // text that must be visible in #verdict
//   "statuses": ["verified", ...],       // data-status of each tr.entry, in order
//   "visible_text": ["..."],             // each must appear, literally, in the page's text
//   "images": N                          // images that must have loaded
// }
//
// Fails (exit 1, one line per problem on stdout) on any console error or
// warning, uncaught page error, network request other than the page itself
// and data: URLs, script that ran (window.__pwned), hidden verdict or
// entry, or expectation not met. Exit 2 when Chromium cannot be started.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [page_path, expect_path] = process.argv.slice(2);
const expect = JSON.parse(readFileSync(expect_path, "utf8"));
const url = pathToFileURL(page_path).href;
const problems = [];

let browser;
try {
  browser = await chromium.launch({
    executablePath: process.env.AUDITLOG_CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
} catch (e) {
  console.log(`cannot start Chromium: ${e.message}`);
  process.exit(2);
}
try {
  const context = await browser.newContext({ javaScriptEnabled: true });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") {
      problems.push(`console ${m.type()}: ${m.text()}`);
    }
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("request", (r) => {
    const u = r.url();
    if (u !== url && !u.startsWith("data:")) problems.push(`request to ${u}`);
  });
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()}`));
  page.on("dialog", async (d) => {
    problems.push(`dialog opened: ${d.message()}`);
    await d.dismiss();
  });

  await page.goto(url, { waitUntil: "load" });

  const verdict = page.locator("#verdict");
  if (!(await verdict.isVisible())) {
    problems.push("the verdict is not visible");
  } else {
    const got = await verdict.getAttribute("data-verdict");
    if (got !== expect.verdict) problems.push(`verdict ${got}, expected ${expect.verdict}`);
    const text = await verdict.innerText();
    if (expect.verdict_text && !text.includes(expect.verdict_text)) {
      problems.push(`the verdict does not say ${JSON.stringify(expect.verdict_text)}: ${text}`);
    }
    // The verdict must be on screen when the page opens, not below the fold.
    const box = await verdict.boundingBox();
    const view = page.viewportSize();
    if (!box || box.y > view.height) problems.push("the verdict is not on the first screen");
  }

  const rows = page.locator("tr.entry");
  const n = await rows.count();
  const statuses = [];
  for (let i = 0; i < n; i++) {
    const row = rows.nth(i);
    await row.scrollIntoViewIfNeeded();
    if (!(await row.isVisible())) problems.push(`entry row ${i} is not visible`);
    statuses.push(await row.getAttribute("data-status"));
  }
  if (expect.statuses && JSON.stringify(statuses) !== JSON.stringify(expect.statuses)) {
    problems.push(`entry statuses ${JSON.stringify(statuses)}, expected ${JSON.stringify(expect.statuses)}`);
  }

  const body = await page.locator("body").innerText();
  for (const t of expect.visible_text || []) {
    if (!body.includes(t)) problems.push(`text not shown: ${JSON.stringify(t)}`);
  }

  const pwned = await page.evaluate(() => window.__pwned);
  if (pwned !== undefined) problems.push(`script from the page ran (window.__pwned = ${pwned})`);

  const loaded = await page.evaluate(() =>
    Array.from(document.images).filter((i) => i.complete && i.naturalWidth > 0).length,
  );
  if (expect.images !== undefined && loaded !== expect.images) {
    problems.push(`${loaded} images loaded, expected ${expect.images}`);
  }
} finally {
  await browser.close();
}

for (const p of problems) console.log(p);
if (problems.length === 0) console.log("ok");
process.exit(problems.length === 0 ? 0 : 1);
