#!/usr/bin/env node
// Drives the web example (examples/web/) in headless Chromium through playwright-core and prints
// one JSON document: what each page load gave, the results of window.mcdropRun on given inputs,
// the console errors, the Chromium version. tests/test_web_example.py runs it; by hand:
//
//   python3 -m http.server 8000 &            # in the repository root
//   node examples/web/test/browser_check.mjs --screenshot /tmp/web.png \
//       --calls calls.json "http://127.0.0.1:8000/examples/web/?sample=digit_3&passes=1000&seed=1&samples=1"
//
// Arguments: one or more page URLs, each loaded in turn in one browser (a new page each), waiting
// for its result (document.body.dataset.state "done" or "error", or "ready" for a page without
// ?sample); then the calls go to their pages, and the first page is screenshot.
//   --screenshot PATH   a PNG of the first page, after its calls
//   --calls PATH        JSON list of {name, input: [floats, flat], dims: [batch, ...], passes,
//                       stochastic, seed, samples, page}; each goes to window.mcdropRun on the
//                       page of that index among the URLs (default 0, the first)
//   --draw-url URL      also open this page (no ?sample) and draw on its pad with the mouse:
//   --draw STROKES      JSON list of strokes, each a list of [x, y] points as fractions of the pad;
//                       waits for the automatic run after the last stroke
//   --draw-screenshot PATH  a PNG of that page with its result
//   --timeout SECONDS   per page load and per call (default 60)
//   --width PIXELS      viewport width (default 1280)
//   --webgpu            let the pages have WebGPU: Chromium without --disable-gpu and with
//                       --enable-unsafe-webgpu (headless Debian chromium then gives SwiftShader's
//                       adapter); the report's `webgpu` says which adapter a page saw, or null
// Chromium: $CHROMIUM, else /usr/bin/chromium (the system's; playwright's own download is not used).

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

function parseArgs(argv) {
  const options = { urls: [], screenshot: null, calls: null, timeout: 60, width: 1280, drawUrl: null, draw: null, drawScreenshot: null, webgpu: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === "--screenshot") options.screenshot = value();
    else if (arg === "--calls") options.calls = value();
    else if (arg === "--draw-url") options.drawUrl = value();
    else if (arg === "--draw") options.draw = JSON.parse(value());
    else if (arg === "--draw-screenshot") options.drawScreenshot = value();
    else if (arg === "--timeout") options.timeout = Number(value());
    else if (arg === "--width") options.width = Number(value());
    else if (arg === "--webgpu") options.webgpu = true;
    else if (arg.startsWith("--")) throw new Error(`unknown option ${arg}`);
    else options.urls.push(arg);
  }
  if (!options.urls.length) throw new Error("give at least one page URL");
  if (Boolean(options.drawUrl) !== Boolean(options.draw)) throw new Error("--draw-url and --draw go together");
  return options;
}

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const WEBGPU_FLAGS = [...FLAGS.filter((flag) => flag !== "--disable-gpu"), "--enable-unsafe-webgpu"];

async function loadPage(context, url, options, consoleErrors) {
  const page = await context.newPage();
  const errors = [];
  const note = (text) => {
    errors.push(text);
    consoleErrors.push({ url, text });
  };
  page.on("console", (message) => { if (message.type() === "error") note(message.text()); });
  page.on("pageerror", (err) => note(`page error: ${err.message}`));
  page.on("requestfailed", (request) => note(`request failed: ${request.url()} (${request.failure()?.errorText})`));
  page.on("response", (response) => { if (response.status() >= 400) note(`HTTP ${response.status()}: ${response.url()}`); });
  const started = Date.now();
  await page.goto(url, { waitUntil: "load", timeout: options.timeout * 1000 });
  const waitsForRun = new URL(url).searchParams.has("sample");
  let timedOut = false;
  try {
    await page.waitForFunction((run) => {
      const s = document.body.dataset.state;
      return s === "error" || (run ? s === "done" : s === "ready" || s === "done");
    }, waitsForRun, { timeout: options.timeout * 1000, polling: 100 });
  } catch (err) {
    if (err.name !== "TimeoutError") throw err;
    timedOut = true;
  }
  const found = await page.evaluate(() => {
    const text = (id) => document.getElementById(id)?.textContent.trim() ?? null;
    const raw = text("result-json");
    return {
      state: document.body.dataset.state,
      error: document.body.dataset.error ?? null,
      result: raw ? JSON.parse(raw) : null,
      input: window.mcdropLastInput ?? null,
      dom: {
        label: text("label"),
        verdict: text("verdict-line"),
        rule: text("rule"),
        error_line: document.getElementById("error").hidden ? null : text("error"),
        bars: document.querySelectorAll("#bars .bar-row").length,
        top_bar: document.querySelector("#bars .bar-row.top .bar-label")?.textContent ?? null,
        spread_dots: document.querySelectorAll("#spread circle").length,
        confidence: text("m-confidence"),
        mutual_information: text("m-mi"),
        status: text("status"),
      },
    };
  });
  if (timedOut) found.state = `timeout (${options.timeout} s; the page said ${found.state})`;
  return { page, record: { url, ...found, load_ms: Date.now() - started, console_errors: errors } };
}

// Draws the strokes on the pad with the mouse, as a person would, and waits for the page's own
// run (it starts a moment after the last stroke ends).
async function draw(page, strokes, options) {
  const box = await page.locator("#pad").boundingBox();
  const at = ([x, y]) => [box.x + x * box.width, box.y + y * box.height];
  for (const stroke of strokes) {
    await page.mouse.move(...at(stroke[0]));
    await page.mouse.down();
    for (const point of stroke.slice(1)) await page.mouse.move(...at(point), { steps: 12 });
    await page.mouse.up();
  }
  await page.waitForFunction(() => document.body.dataset.state === "error"
    || (document.body.dataset.state === "done" && document.getElementById("result-json").textContent.includes('"input":"drawing"')),
  null, { timeout: options.timeout * 1000, polling: 100 });
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  const profile = mkdtempSync(join(tmpdir(), "mcdrop-chromium-"));
  const consoleErrors = [];
  const report = { chromium: null, executable: executablePath, pages: [], calls: {}, console_errors: consoleErrors, screenshot: null };
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath, headless: true, args: options.webgpu ? WEBGPU_FLAGS : FLAGS,
      viewport: { width: options.width, height: 900 }, deviceScaleFactor: 1,
    });
    report.chromium = context.browser()?.version() ?? null;
    const calls = options.calls ? JSON.parse(readFileSync(options.calls, "utf8")) : [];
    const kept = new Set([0, ...calls.map((call) => call.page ?? 0)]); // the others close once loaded
    const pages = [];
    for (const [i, url] of options.urls.entries()) {
      const { page, record } = await loadPage(context, url, options, consoleErrors);
      report.pages.push(record);
      if (!kept.has(i)) await page.close();
      pages.push(page);
    }
    const first = pages[0];
    report.webgpu = await first.evaluate(async () => {
      const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
      return adapter ? { vendor: adapter.info?.vendor ?? "", architecture: adapter.info?.architecture ?? "" } : null;
    });
    for (const call of calls) {
      const started = Date.now();
      const target = pages[call.page ?? 0];
      if (!target) throw new Error(`call ${call.name}: no page ${call.page}`);
      try {
        const results = await target.evaluate(({ input, dims, passes, stochastic, seed, samples }) => window.mcdropRun(input, dims, { passes, stochastic, seed, samples }),
          { input: call.input, dims: call.dims, passes: call.passes, stochastic: call.stochastic ?? true, seed: call.seed ?? null, samples: call.samples ?? false });
        report.calls[call.name] = { results, elapsed_ms: Date.now() - started };
      } catch (err) {
        report.calls[call.name] = { error: err.message.split("\n")[0], elapsed_ms: Date.now() - started };
      }
    }
    for (const [i, page] of pages.entries()) if (i > 0 && kept.has(i)) await page.close();
    if (options.drawUrl) {
      const { page, record } = await loadPage(context, options.drawUrl, options, consoleErrors);
      if (record.state === "ready") {
        await draw(page, options.draw, options);
        Object.assign(record, await page.evaluate(() => ({
          state: document.body.dataset.state,
          error: document.body.dataset.error ?? null,
          result: JSON.parse(document.getElementById("result-json").textContent || "null"),
          dom: { label: document.getElementById("label").textContent.trim(), verdict: document.getElementById("verdict-line").textContent.trim() },
        })));
      }
      if (options.drawScreenshot) await page.screenshot({ path: options.drawScreenshot, fullPage: true });
      report.drawing = record;
      await page.close();
    }
    if (options.screenshot) {
      await first.screenshot({ path: options.screenshot, fullPage: true });
      report.screenshot = options.screenshot;
    }
  } finally {
    await context?.close();
    rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().catch((err) => {
  process.stderr.write(`browser_check: ${err.message.split("\n")[0]}\n`);
  process.exit(1);
});
