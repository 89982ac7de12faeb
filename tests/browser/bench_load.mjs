// Browser figures on a full-size model (a benchmark, not a test): download into IndexedDB,
// check and load a 2.1 GB SD 1.5 layout with random f16 weights through the page, and report
// the times and the wasm heap peak; then one denoising step at 64x64. Runs in the system's
// headless Chromium on WebGPU (SwiftShader here: a CPU rasteriser, so the step time says little
// about a real GPU).
//
//   python3 tests/browser/make_full_size_model.py /tmp/sd15-random
//   python3 web/build.py
//   node tests/browser/bench_load.mjs /tmp/sd15-random [--load-only]

import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { startServer } from "./server.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const ART = resolve(process.env.NULLPAINT_ARTIFACTS || join(ROOT, "tests/browser/artifacts"));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const folder = process.argv[2];
const loadOnly = process.argv.includes("--load-only");
if (!folder) {
  console.error("usage: node tests/browser/bench_load.mjs MODEL_FOLDER (see make_full_size_model.py)");
  process.exit(2);
}
mkdirSync(ART, { recursive: true });
const REPO = "bench/sd15-random";
const hub = await startServer({ repos: { [REPO]: resolve(folder) } });
const userData = mkdtempSync(join(tmpdir(), "nullpaint-bench-"));
const context = await chromium.launchPersistentContext(userData, {
  executablePath: CHROMIUM, headless: true, acceptDownloads: true, viewport: { width: 1280, height: 1000 },
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic", "--disable-dev-shm-usage", "--enable-unsafe-webgpu"],
});
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(30 * 60_000);
const figures = { model: REPO };
try {
  await page.goto(`${hub.url()}/index.html`);
  await page.waitForFunction(() => document.getElementById("gpu-status").textContent.startsWith("GPU:"));
  figures.adapter = await page.evaluate(() => window.nullpaint.adapter);
  await page.click("details summary");
  await page.fill("#endpoint", `${hub.url()}/hub`);
  await page.fill("#repo", REPO);
  let t = Date.now();
  await page.click("#download-model");
  await page.waitForFunction(() => document.querySelector("#model-table tr td:nth-child(3)")?.textContent === "ready" || !document.getElementById("model-error").hidden);
  const error = await page.locator("#model-error");
  if (!(await error.isHidden())) throw new Error(`download: ${await error.textContent()}`);
  figures.downloadSeconds = (Date.now() - t) / 1000;
  figures.storage = await page.locator("#storage").textContent();
  console.log(`downloaded and checked in ${figures.downloadSeconds.toFixed(1)} s`);

  t = Date.now();
  await page.click("#model-table button.load");
  await page.waitForFunction(() => document.querySelector("#model-table tr td:nth-child(3)")?.textContent === "loaded" || !document.getElementById("model-error").hidden);
  if (!(await error.isHidden())) throw new Error(`load: ${await error.textContent()}`);
  figures.load = await page.evaluate(() => window.nullpaint.loadInfo);
  figures.loadWallSeconds = (Date.now() - t) / 1000;
  console.log(`loaded: ${JSON.stringify(figures.load)}`);

  if (loadOnly) throw new Error("--load-only: no run");
  await page.selectOption("#max-size", "0");
  await page.setInputFiles("#open-image", join(ROOT, "tests/fixtures/reference/e2e/sd1_guided_64x64.image.png"));
  await page.waitForSelector("#stage:not(.empty)");
  const box = await page.locator("#cursor-canvas").boundingBox();
  await page.mouse.move(box.x + box.width * 0.3, box.y + box.height * 0.3);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.7, box.y + box.height * 0.7, { steps: 8 });
  await page.mouse.up();
  await page.fill("#prompt", "a red apple on a wooden table");
  await page.fill("#steps", "1");
  await page.click("#run");
  await page.waitForFunction(() => {
    const text = document.getElementById("run-text").textContent;
    return text.startsWith("Done") || !document.getElementById("run-error").hidden;
  });
  if (!(await page.locator("#run-error").isHidden())) throw new Error(`run: ${await page.locator("#run-error").textContent()}`);
  figures.oneStep64Seconds = await page.evaluate(() => window.nullpaint.lastRun.seconds);
  figures.heapAfterRun = await page.evaluate(() => window.nullpaint.heapBytes);
  await page.screenshot({ path: join(ART, "bench-full-size.png"), fullPage: true });
} catch (e) {
  if (!loadOnly) figures.error = String(e.message || e);
  await page.screenshot({ path: join(ART, "bench-failure.png"), fullPage: true }).catch(() => {});
} finally {
  console.log(JSON.stringify(figures, null, 1));
  writeFileSync(join(ART, "bench-full-size.json"), JSON.stringify(figures, null, 1));
  await context.close();
  rmSync(userData, { recursive: true, force: true });
  await hub.close();
}
