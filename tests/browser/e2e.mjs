// End-to-end test of the page in the system's headless Chromium (WebGPU on its software
// adapter, SwiftShader): download the tiny model from a local stand-in for the Hugging Face Hub
// through the model manager (interrupted once, then resumed), load it, open a photo, paint a
// mask with the mouse, run, and compare the result with the native CLI's for the same photo,
// mask, prompt and seed. Then reload: the model must load with no request for weights; then
// damage one stored chunk: only that chunk may be fetched again. Finally, without WebGPU the
// page must say so. Screenshots go to tests/browser/artifacts/ (or $NULLPAINT_ARTIFACTS).
//
// Needs: www/pkg (python3 web/build.py), the native CLI ($NULLPAINT_CLI, default
// $CARGO_TARGET_DIR/debug/nullpaint), Chromium ($CHROMIUM, default /usr/bin/chromium).

import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { startServer } from "./server.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const FIXTURES = join(ROOT, "tests/fixtures");
const ART = resolve(process.env.NULLPAINT_ARTIFACTS || join(ROOT, "tests/browser/artifacts"));
const TARGET = process.env.CARGO_TARGET_DIR || join(ROOT, "target");
const CLI = process.env.NULLPAINT_CLI || join(TARGET, "debug/nullpaint");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const REPO = "test/tiny-sd1";
const CHUNK = 256 * 1024; // small chunks so the tiny UNet and text encoder span several
const UNET = "unet/diffusion_pytorch_model.safetensors";
const TOLERANCE = 1; // max |browser - native| per channel, out of 255 (the e2e tolerance)
const FLAGS = [
  "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--no-first-run", "--disable-quic", "--disable-dev-shm-usage",
];
const T = 10 * 60_000;

let failures = 0;
function check(ok, message) {
  console.log(`${ok ? "ok  " : "FAIL"} ${message}`);
  if (!ok) failures++;
}
function fatal(message) {
  console.error(`FAIL ${message}`);
  process.exit(1);
}

for (const [what, path] of [["the web build (python3 web/build.py)", join(ROOT, "www/pkg/nullpaint_web_bg.wasm")], ["the native CLI", CLI], ["Chromium", CHROMIUM]]) {
  if (!existsSync(path)) fatal(`${what} is missing: ${path}`);
}
rmSync(ART, { recursive: true, force: true });
mkdirSync(ART, { recursive: true });

const hub = await startServer({ repos: { [REPO]: join(FIXTURES, "tiny-sd1") } });
const userData = mkdtempSync(join(tmpdir(), "nullpaint-chromium-"));
const context = await chromium.launchPersistentContext(userData, {
  executablePath: CHROMIUM, headless: true, acceptDownloads: true,
  args: [...FLAGS, "--enable-unsafe-webgpu"], viewport: { width: 1280, height: 1000 },
});
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(T);
const consoleLines = [];
page.on("console", (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
page.on("pageerror", (e) => consoleLines.push(`[pageerror] ${e.message}`));
const shot = (name) => page.screenshot({ path: join(ART, `${name}.png`), fullPage: true });

async function fail(message) {
  await shot("failure").catch(() => {});
  writeFileSync(join(ART, "console.log"), consoleLines.join("\n"));
  console.error(consoleLines.slice(-30).join("\n"));
  fatal(message);
}

async function waitReady() {
  const status = await page.waitForFunction(() => {
    const s = document.getElementById("gpu-status").textContent;
    const fatalText = document.getElementById("fatal");
    if (!fatalText.hidden) return `fatal: ${fatalText.textContent}`;
    if (!document.getElementById("nogpu").hidden) return `nogpu: ${document.getElementById("nogpu-detail").textContent}`;
    return s.startsWith("GPU:") ? s : null;
  }, null, { timeout: 120_000 }).then((h) => h.jsonValue());
  if (!status.startsWith("GPU:")) await fail(`the engine did not start: ${status}`);
  return status;
}

const row = () => page.locator(`#model-table tr[data-id*="${REPO}"]`);
async function rowState() {
  return (await row().count()) ? row().locator("td").nth(2).textContent() : null;
}

async function loadModel() {
  hub.log.length = 0;
  await row().locator("button.load").click();
  await page.waitForFunction(() => {
    const e = document.getElementById("model-error");
    return !e.hidden || document.querySelector("#model-table tr td:nth-child(3)")?.textContent === "loaded";
  });
  if (!(await page.locator("#model-error").isHidden())) await fail(`loading failed: ${await page.locator("#model-error").textContent()}`);
  return page.evaluate(() => window.nullpaint.loadInfo);
}

async function run(name) {
  await page.click("#run");
  await page.waitForFunction(() => {
    const t = document.getElementById("run-text").textContent;
    return t.startsWith("Done") || !document.getElementById("run-error").hidden || t === "Cancelled";
  });
  if (!(await page.locator("#run-error").isHidden())) await fail(`the run failed: ${await page.locator("#run-error").textContent()}`);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  const path = join(ART, `${name}.png`);
  await download.saveAs(path);
  return path;
}

async function settings() {
  await page.fill("#prompt", "a red apple on a wooden table");
  await page.fill("#negative-prompt", "blurry");
  await page.fill("#steps", "4");
  await page.fill("#guidance", "7.5");
  await page.fill("#seed", "42");
  await page.fill("#dilation", "2");
}

// Per-pixel comparison of two PNGs, decoded by the browser.
async function compare(a, b, maskPath) {
  const data = [a, b, maskPath].map((p) => readFileSync(p).toString("base64"));
  return page.evaluate(async (pngs) => {
    const pixels = async (b64) => {
      const blob = await (await fetch(`data:image/png;base64,${b64}`)).blob();
      const bmp = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
      const c = new OffscreenCanvas(bmp.width, bmp.height);
      const ctx = c.getContext("2d");
      ctx.drawImage(bmp, 0, 0);
      return ctx.getImageData(0, 0, bmp.width, bmp.height);
    };
    const [x, y, m] = await Promise.all(pngs.map(pixels));
    if (x.width !== y.width || x.height !== y.height) return { error: `sizes ${x.width}x${x.height} and ${y.width}x${y.height}` };
    let maxHole = 0, maxKnown = 0, holes = 0;
    for (let i = 0; i < x.width * x.height; i++) {
      const hole = m.data[i * 4] >= 128;
      holes += hole;
      for (let c = 0; c < 3; c++) {
        const d = Math.abs(x.data[i * 4 + c] - y.data[i * 4 + c]);
        if (hole) maxHole = Math.max(maxHole, d);
        else maxKnown = Math.max(maxKnown, d);
      }
    }
    return { maxHole, maxKnown, holes, pixels: x.width * x.height };
  }, data);
}

try {
  // 1. start; the adapter must be WebGPU's
  await page.goto(`${hub.url()}/index.html?chunk=${CHUNK}`);
  const status = await waitReady();
  const adapter = await page.evaluate(() => window.nullpaint.adapter);
  check(adapter.backend === "BrowserWebGpu", `engine on WebGPU: ${status} (shader-f16: ${adapter.shaderF16}, max buffer ${adapter.maxBufferSize})`);
  check(adapter.dtype === (adapter.shaderF16 ? "f16" : "f32"), `precision ${adapter.dtype}: f16 exactly when the adapter has shader-f16`);
  await shot("01-start");

  // 2. download through the model manager; the first UNet request breaks after 300 kB
  await page.click("details summary");
  await page.fill("#endpoint", `${hub.url()}/hub`);
  await page.fill("#repo", REPO);
  hub.faults.push({ path: UNET, afterBytes: 100_000 });
  await page.click("#download-model");
  await page.waitForFunction(() => !document.getElementById("model-error").hidden);
  const error = await page.locator("#model-error").textContent();
  check((await rowState())?.startsWith("partial"), `an interrupted download is kept as partial (${await rowState()}); message: ${error}`);
  await shot("02-interrupted");
  const before = hub.log.filter((e) => e.kind === "file").map((e) => `${e.path} ${e.range}`);
  hub.log.length = 0;
  await row().locator("button.resume").click();
  await page.waitForSelector("#model-error", { state: "hidden" });
  await page.waitForFunction(() => document.querySelector("#model-table tr td:nth-child(3)")?.textContent === "ready" || !document.getElementById("model-error").hidden);
  if (!(await page.locator("#model-error").isHidden())) await fail(`resuming failed: ${await page.locator("#model-error").textContent()}`);
  const resumed = hub.log.filter((e) => e.kind === "file").map((e) => `${e.path} ${e.range}`);
  const unetSize = statSync(join(FIXTURES, "tiny-sd1", UNET)).size;
  const refetchedDone = resumed.filter((r) => before.includes(r) && !r.startsWith(`${UNET} bytes=0-`));
  check(refetchedDone.length === 0 && resumed.some((r) => r.startsWith(UNET)) && !resumed.some((r) => r.startsWith("text_encoder")),
    `resume fetched only what was missing: ${resumed.length} requests (${resumed.filter((r) => r.startsWith(UNET)).length} of ${Math.ceil(unetSize / CHUNK)} UNet chunks)`);

  // 3. load
  const info = await loadModel();
  check(hub.log.length === 0, `a complete model loads without network requests (${hub.log.length})`);
  check(info.weightsDType === adapter.dtype, `weights loaded as ${info.weightsDType} (stored f16, upcast per tensor without shader-f16)`);
  console.log(`     load: ${info.seconds.toFixed(2)} s on the GPU + ${info.verifySeconds.toFixed(2)} s checking chunks; wasm heap after load ${(info.heapBytes / 2 ** 20).toFixed(1)} MiB`);

  // 4. photo, mask painted with the mouse, settings
  await page.selectOption("#max-size", "0");
  const imagePath = join(FIXTURES, "reference/e2e/sd1_guided_64x64.image.png");
  await page.setInputFiles("#open-image", imagePath);
  await page.waitForSelector("#stage:not(.empty)");
  await page.fill("#brush-size", "90");
  await page.dispatchEvent("#brush-size", "input");
  const box = await page.locator("#cursor-canvas").boundingBox();
  const at = (fx, fy) => [box.x + box.width * fx, box.y + box.height * fy];
  await page.mouse.move(...at(0.3, 0.35));
  await page.mouse.down();
  await page.mouse.move(...at(0.65, 0.6), { steps: 12 });
  await page.mouse.up();
  // a second stroke, partly erased
  await page.mouse.move(...at(0.8, 0.15));
  await page.mouse.down();
  await page.mouse.move(...at(0.85, 0.3), { steps: 5 });
  await page.mouse.up();
  await page.click("#tool-eraser");
  await page.fill("#brush-size", "30");
  await page.dispatchEvent("#brush-size", "input");
  await page.mouse.move(...at(0.5, 0.5));
  await page.mouse.down();
  await page.mouse.move(...at(0.55, 0.45), { steps: 3 });
  await page.mouse.up();
  const [maskDownload] = await Promise.all([page.waitForEvent("download"), page.click("#mask-save")]);
  const maskPath = join(ART, "mask.png");
  await maskDownload.saveAs(maskPath);
  await settings();
  await shot("03-mask");

  // 5. run in the browser and natively
  const browserOut = await run("browser-result");
  await shot("04-result");
  const runSeconds = await page.evaluate(() => window.nullpaint.lastRun.seconds);
  const nativeOut = join(ART, "native-result.png");
  execFileSync(CLI, [
    "inpaint", "--model", join(FIXTURES, "tiny-sd1"), "--image", imagePath, "--mask", maskPath,
    "--prompt", "a red apple on a wooden table", "--negative-prompt", "blurry", "--steps", "4",
    "--guidance-scale", "7.5", "--seed", "42", "--dilate", "2", "--backend", "cpu", "--output", nativeOut,
  ], { stdio: ["ignore", "inherit", "inherit"] });
  const diff = await compare(browserOut, nativeOut, maskPath);
  if (diff.error) await fail(`browser and native results differ in size: ${diff.error}`);
  check(diff.holes > 0 && diff.holes < diff.pixels, `the painted mask has ${diff.holes} of ${diff.pixels} pixels to fill`);
  check(diff.maxHole <= TOLERANCE && diff.maxKnown === 0,
    `browser result equals the native CLI's: max |diff| ${diff.maxHole}/255 in the hole, ${diff.maxKnown} outside (run ${runSeconds.toFixed(1)} s)`);

  check(!(await page.locator("#preview").isHidden()), "the live preview was shown during the run");

  // 5b. cancel: a long run stops at the next step
  await page.fill("#steps", "200");
  await page.click("#run");
  await page.waitForFunction(() => /^Step [2-9]/.test(document.getElementById("run-text").textContent));
  await page.click("#cancel");
  await page.waitForFunction(() => ["Cancelled"].includes(document.getElementById("run-text").textContent) || !document.getElementById("run-error").hidden);
  const cancelled = await page.locator("#run-text").textContent();
  check(cancelled === "Cancelled" && (await page.locator("#run").isEnabled()), `Cancel stops a run and Run is available again (${cancelled})`);
  await shot("04b-cancelled");
  await page.fill("#steps", "4");

  // 6. reload: no weight file fetched again
  await page.reload();
  await waitReady();
  const info2 = await loadModel();
  check(hub.log.length === 0, `after a reload the model loads from IndexedDB with no request (${JSON.stringify(hub.log)}); ${info2.seconds.toFixed(2)} s`);

  // 7. damage one stored chunk: only that chunk is fetched again
  const damagedIndex = 2;
  const damaged = await page.evaluate(async ([path, index]) => {
    const db = await new Promise((ok, err) => { const r = indexedDB.open("nullpaint", 1); r.onsuccess = () => ok(r.result); r.onerror = () => err(r.error); });
    const store = () => db.transaction(["chunks"], "readwrite").objectStore("chunks");
    const keys = await new Promise((ok) => { const r = store().getAllKeys(); r.onsuccess = () => ok(r.result); });
    const key = keys.find((k) => k[1] === path && k[2] === index);
    const blob = await new Promise((ok) => { const r = store().get(key); r.onsuccess = () => ok(r.result); });
    const bytes = new Uint8Array(await blob.arrayBuffer());
    bytes[1234] ^= 0xff;
    await new Promise((ok, err) => { const t = db.transaction(["chunks"], "readwrite"); t.objectStore("chunks").put(new Blob([bytes]), key); t.oncomplete = ok; t.onerror = () => err(t.error); });
    db.close();
    return key;
  }, [UNET, damagedIndex]);
  await page.reload();
  await waitReady();
  const info3 = await loadModel();
  const files = hub.log.filter((e) => e.kind === "file");
  const want = `bytes=${damagedIndex * CHUNK}-${Math.min(unetSize, (damagedIndex + 1) * CHUNK) - 1}`;
  check(files.length === 1 && files[0].path === UNET && files[0].range === want && hub.log.length === 1,
    `a damaged chunk (${damaged.join(" #")}) is fetched again alone: ${JSON.stringify(hub.log)}; refetched ${JSON.stringify(info3.refetched)}`);
  await page.selectOption("#max-size", "0");
  await page.setInputFiles("#open-image", imagePath);
  await page.waitForSelector("#stage:not(.empty)");
  await settings();
  // the same mask again, from the saved PNG: paint is replaced by the file's pixels
  await page.evaluate(async (b64) => {
    const blob = await (await fetch(`data:image/png;base64,${b64}`)).blob();
    const bmp = await createImageBitmap(blob);
    const c = document.getElementById("mask-canvas");
    const ctx = c.getContext("2d");
    const tmp = new OffscreenCanvas(c.width, c.height).getContext("2d");
    tmp.drawImage(bmp, 0, 0);
    const src = tmp.getImageData(0, 0, c.width, c.height);
    const out = ctx.createImageData(c.width, c.height);
    for (let i = 0; i < src.data.length; i += 4) out.data.set([255, 0, 0, src.data[i]], i);
    ctx.putImageData(out, 0, 0);
  }, readFileSync(maskPath).toString("base64"));
  const again = await run("browser-result-after-repair");
  const diff2 = await compare(again, browserOut, maskPath);
  check(diff2.maxHole === 0 && diff2.maxKnown === 0, `after the repair the result is the same as before (max |diff| ${diff2.maxHole})`);
  await shot("05-after-repair");
  // 7b. a photo larger than the working size: the run is at 512 px, the download is the
  //     original size with only the painted area replaced
  const big = await page.evaluate(async () => {
    const c = new OffscreenCanvas(700, 300);
    const ctx = c.getContext("2d");
    const g = ctx.createLinearGradient(0, 0, 700, 300);
    g.addColorStop(0, "#3060c0");
    g.addColorStop(1, "#e0a040");
    ctx.fillStyle = g;
    ctx.fillRect(0, 0, 700, 300);
    const blob = await c.convertToBlob({ type: "image/png" });
    return Array.from(new Uint8Array(await blob.arrayBuffer()));
  });
  const bigPath = join(ART, "big-input.png");
  writeFileSync(bigPath, Buffer.from(big));
  await page.selectOption("#max-size", "512");
  await page.setInputFiles("#open-image", bigPath);
  await page.waitForFunction(() => document.getElementById("image-canvas").width === 512);
  await page.fill("#brush-size", "60");
  await page.dispatchEvent("#brush-size", "input");
  await page.click("#tool-brush");
  {
    const b2 = await page.locator("#cursor-canvas").boundingBox();
    await page.mouse.move(b2.x + b2.width * 0.45, b2.y + b2.height * 0.5);
    await page.mouse.down();
    await page.mouse.move(b2.x + b2.width * 0.55, b2.y + b2.height * 0.5, { steps: 4 });
    await page.mouse.up();
  }
  await page.fill("#steps", "1");
  const bigOut = await run("browser-result-full-size");
  const label = await page.locator("#download").textContent();
  const kept = await page.evaluate(async ([a, b]) => {
    const px = async (bytes) => {
      const bmp = await createImageBitmap(new Blob([new Uint8Array(bytes)]), { colorSpaceConversion: "none", premultiplyAlpha: "none" });
      const c = new OffscreenCanvas(bmp.width, bmp.height);
      const ctx = c.getContext("2d");
      ctx.drawImage(bmp, 0, 0);
      return ctx.getImageData(0, 0, bmp.width, bmp.height);
    };
    const [x, y] = await Promise.all([px(a), px(b)]);
    let farDiff = 0, centreDiff = 0;
    for (let yy = 0; yy < x.height; yy++) for (let xx = 0; xx < x.width; xx++) {
      const i = (yy * x.width + xx) * 4;
      const d = Math.max(...[0, 1, 2].map((c) => Math.abs(x.data[i + c] - y.data[i + c])));
      if (xx < 150 || xx > 550) farDiff = Math.max(farDiff, d);
      if (Math.abs(xx - 350) < 10 && Math.abs(yy - 150) < 10) centreDiff = Math.max(centreDiff, d);
    }
    return { width: y.width, height: y.height, farDiff, centreDiff };
  }, [big, Array.from(readFileSync(bigOut))]);
  check(kept.width === 700 && kept.height === 300 && kept.farDiff === 0 && kept.centreDiff > 0 && label.includes("700×300"),
    `a 700x300 photo runs at 512 px and downloads at 700x300 with only the painted area changed (${JSON.stringify(kept)}, "${label}")`);
  await shot("05b-full-size-download");
  await page.fill("#steps", "4");

  // 8. import a local folder (tiny-sd2: transformers-5 keys, f32 weights, tokenizer.json), load it, delete it
  await page.setInputFiles("#import-folder", join(FIXTURES, "tiny-sd2"));
  const imported = page.locator('#model-table tr[data-id="local:tiny-sd2"]');
  await imported.waitFor();
  await page.waitForFunction(() => document.querySelector('#model-table tr[data-id="local:tiny-sd2"] td:nth-child(3)')?.textContent === "ready" || !document.getElementById("model-error").hidden);
  if (!(await page.locator("#model-error").isHidden())) await fail(`import failed: ${await page.locator("#model-error").textContent()}`);
  await imported.locator("button.load").click();
  await page.waitForFunction(() => document.querySelector('#model-table tr[data-id="local:tiny-sd2"] td:nth-child(3)')?.textContent === "loaded" || !document.getElementById("model-error").hidden);
  check(await page.locator("#model-error").isHidden(), `an imported folder loads (${await page.locator("#gpu-status").textContent()})`);
  await shot("07-imported");
  page.once("dialog", (d) => d.accept());
  await imported.locator("button.delete").click();
  await imported.waitFor({ state: "detached" });
  const left = await page.locator("#model-table tbody tr").count();
  check(left === 1, `Delete removes the imported model (${left} model left)`);
  const wasm = statSync(join(ROOT, "www/pkg/nullpaint_web_bg.wasm")).size;
  console.log(`     wasm module ${(wasm / 1e6).toFixed(1)} MB; heap after load ${(info3.heapBytes / 2 ** 20).toFixed(1)} MiB`);
  writeFileSync(join(ART, "figures.json"), JSON.stringify({ adapter, load: info, reload: info2, repaired: info3, runSeconds, wasmBytes: wasm, diff }, null, 1));
} catch (e) {
  await fail(e.stack || String(e));
} finally {
  writeFileSync(join(ART, "console.log"), consoleLines.join("\n"));
  await context.close();
  rmSync(userData, { recursive: true, force: true });
}

// 9. without WebGPU the page says so
{
  const dir = mkdtempSync(join(tmpdir(), "nullpaint-chromium-"));
  const ctx = await chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args: [...FLAGS, "--disable-webgpu"] });
  const p = ctx.pages()[0] || (await ctx.newPage());
  await p.goto(`${hub.url()}/index.html`);
  const shown = await p.waitForSelector("#nogpu:not([hidden])", { timeout: 120_000 }).then(() => true, () => false);
  const text = shown ? await p.locator("#nogpu").textContent() : "";
  check(shown && text.includes("Chrome") && text.includes("WebGPU"), "without WebGPU the page explains which browsers and settings work");
  await p.screenshot({ path: join(ART, "06-no-webgpu.png"), fullPage: true });
  await ctx.close();
  rmSync(dir, { recursive: true, force: true });
}

await hub.close();
if (failures) fatal(`${failures} check(s) failed; screenshots and console log in ${ART}`);
console.log(`browser end-to-end test passed; screenshots in ${ART}`);
