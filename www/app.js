// The page: photo and mask editing, settings, the model manager, results. Everything heavy
// (downloads, storage, the model, inference) happens in worker.js; this file only draws and
// sends messages.

const $ = (id) => document.getElementById(id);

// ---- worker ----------------------------------------------------------------------------------

const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
const waiting = new Map(); // request type -> { resolve, reject }
const state = { adapter: null, loadInfo: null, models: [], heapBytes: 0, lastRun: null };
// For scripted use and tests: the latest state (adapter, load info, heap size, run timing).
window.nullpaint = state;

function request(type, body = {}, transfer = []) {
  return new Promise((resolve, reject) => {
    if (waiting.has(type)) {
      reject(new Error(`a ${type} request is already running`));
      return;
    }
    waiting.set(type, { resolve, reject });
    worker.postMessage({ type, ...body }, transfer);
  });
}

worker.onmessage = (event) => {
  const m = event.data;
  switch (m.type) {
    case "ready":
      state.adapter = m.adapter;
      $("gpu-status").textContent = `GPU: ${m.adapter.name || "WebGPU adapter"} (${m.adapter.backend}${m.adapter.shaderF16 ? ", f16" : ""})`;
      updateRunButton();
      return;
    case "nogpu":
      showNoGpu(m.message);
      return;
    case "fatal":
      $("fatal").textContent = m.message;
      $("fatal").hidden = false;
      return;
    case "models":
      state.models = m.models;
      state.loadedId = m.loaded;
      renderModels(m.models, m.storage, m.loaded);
      updateRunButton();
      return;
    case "heap":
      state.heapBytes = m.bytes;
      return;
    case "progress":
      onProgress(m);
      return;
  }
  const pending = waiting.get(m.type);
  if (!pending) return;
  waiting.delete(m.type);
  if (m.error) pending.reject(new Error(m.error));
  else pending.resolve(m);
};
worker.onerror = (e) => {
  $("fatal").textContent = `The engine failed to start: ${e.message || "the worker could not be loaded"}.`;
  $("fatal").hidden = false;
};

function showNoGpu(detail) {
  $("nogpu").hidden = false;
  $("nogpu-detail").textContent = detail || "";
  $("gpu-status").textContent = "No WebGPU: the model manager works, inpainting does not.";
}

if (!navigator.gpu) showNoGpu("navigator.gpu is missing.");

// ---- formatting ------------------------------------------------------------------------------

function bytes(n) {
  if (n == null) return "?";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

// ---- photo and mask --------------------------------------------------------------------------

const imageCanvas = $("image-canvas");
const maskCanvas = $("mask-canvas");
const cursorCanvas = $("cursor-canvas");
const imageCtx = imageCanvas.getContext("2d", { willReadFrequently: true });
const maskCtx = maskCanvas.getContext("2d", { willReadFrequently: true });
const cursorCtx = cursorCanvas.getContext("2d");
let hasImage = false;
// The photo at full resolution when the working size scaled it down: results are pasted back
// into it (the filled area upscaled, everything else untouched) for the download.
let original = null;
let runMask = null; // the mask as it was when the last run started
let tool = "brush";
const undoStack = [];

async function openImage(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (e) {
    showRunError(`${file.name || "the file"} is not an image this browser can read (${e.message}). Use PNG, JPEG or WebP.`);
    return;
  }
  setImage(bitmap);
}

function setImage(source) {
  const max = Number($("max-size").value);
  let { width, height } = source;
  const scale = max > 0 ? Math.min(1, max / Math.max(width, height)) : 1;
  width = Math.max(1, Math.round(width * scale));
  height = Math.max(1, Math.round(height * scale));
  for (const c of [imageCanvas, maskCanvas, cursorCanvas]) {
    c.width = width;
    c.height = height;
  }
  imageCtx.imageSmoothingQuality = "high";
  imageCtx.drawImage(source, 0, 0, width, height);
  original = null;
  if (scale < 1) {
    original = document.createElement("canvas");
    original.width = source.width;
    original.height = source.height;
    original.getContext("2d").drawImage(source, 0, 0);
  }
  maskCtx.clearRect(0, 0, width, height);
  undoStack.length = 0;
  hasImage = true;
  $("stage").classList.remove("empty");
  $("stage").style.aspectRatio = `${width} / ${height}`;
  hideRunError();
  updateRunButton();
}

$("open-image").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) openImage(file);
  e.target.value = "";
});
const stage = $("stage");
stage.addEventListener("dragover", (e) => { e.preventDefault(); stage.classList.add("drop"); });
stage.addEventListener("dragleave", () => stage.classList.remove("drop"));
stage.addEventListener("drop", (e) => {
  e.preventDefault();
  stage.classList.remove("drop");
  const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/")) || e.dataTransfer.files[0];
  if (file) openImage(file);
});

function pushUndo() {
  undoStack.push(maskCtx.getImageData(0, 0, maskCanvas.width, maskCanvas.height));
  if (undoStack.length > 40) undoStack.shift();
}

function canvasPoint(e) {
  const r = maskCanvas.getBoundingClientRect();
  return [(e.clientX - r.left) * (maskCanvas.width / r.width), (e.clientY - r.top) * (maskCanvas.height / r.height)];
}

function brushRadius() {
  // The slider is in screen pixels; convert to image pixels.
  const r = maskCanvas.getBoundingClientRect();
  return (Number($("brush-size").value) / 2) * (maskCanvas.width / Math.max(1, r.width));
}

let last = null;
function stroke(from, to) {
  maskCtx.save();
  maskCtx.globalCompositeOperation = tool === "eraser" ? "destination-out" : "source-over";
  maskCtx.strokeStyle = maskCtx.fillStyle = "rgb(255, 0, 0)";
  maskCtx.lineCap = maskCtx.lineJoin = "round";
  maskCtx.lineWidth = brushRadius() * 2;
  maskCtx.beginPath();
  maskCtx.moveTo(...from);
  maskCtx.lineTo(...to);
  maskCtx.stroke();
  maskCtx.beginPath();
  maskCtx.arc(...to, brushRadius(), 0, Math.PI * 2);
  maskCtx.fill();
  maskCtx.restore();
}

function drawCursor(p) {
  cursorCtx.clearRect(0, 0, cursorCanvas.width, cursorCanvas.height);
  if (!p) return;
  cursorCtx.lineWidth = Math.max(1, cursorCanvas.width / 400);
  cursorCtx.strokeStyle = "#fff";
  cursorCtx.beginPath();
  cursorCtx.arc(...p, brushRadius(), 0, Math.PI * 2);
  cursorCtx.stroke();
}

cursorCanvas.addEventListener("pointerdown", (e) => {
  if (!hasImage || e.button !== 0) return;
  cursorCanvas.setPointerCapture(e.pointerId);
  pushUndo();
  last = canvasPoint(e);
  stroke(last, last);
});
cursorCanvas.addEventListener("pointermove", (e) => {
  if (!hasImage) return;
  const p = canvasPoint(e);
  drawCursor(p);
  if (last && e.buttons & 1) {
    stroke(last, p);
    last = p;
  }
});
cursorCanvas.addEventListener("pointerup", () => { last = null; });
cursorCanvas.addEventListener("pointerleave", () => drawCursor(null));

function setTool(t) {
  tool = t;
  for (const [id, name] of [["tool-brush", "brush"], ["tool-eraser", "eraser"]]) {
    $(id).classList.toggle("active", t === name);
    $(id).setAttribute("aria-pressed", String(t === name));
  }
}
$("tool-brush").onclick = () => setTool("brush");
$("tool-eraser").onclick = () => setTool("eraser");
$("brush-size").oninput = () => ($("brush-size-out").textContent = $("brush-size").value);
$("mask-undo").onclick = () => {
  const prev = undoStack.pop();
  if (prev) maskCtx.putImageData(prev, 0, 0);
};
$("mask-clear").onclick = () => {
  if (!hasImage) return;
  pushUndo();
  maskCtx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
};
$("mask-invert").onclick = () => {
  if (!hasImage) return;
  pushUndo();
  const d = maskCtx.getImageData(0, 0, maskCanvas.width, maskCanvas.height);
  for (let i = 0; i < d.data.length; i += 4) {
    d.data[i] = 255; d.data[i + 1] = 0; d.data[i + 2] = 0;
    d.data[i + 3] = 255 - d.data[i + 3];
  }
  maskCtx.putImageData(d, 0, 0);
};
document.addEventListener("keydown", (e) => {
  if (e.target.matches("input, textarea")) return;
  if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); $("mask-undo").click(); }
  else if (e.key === "b") setTool("brush");
  else if (e.key === "e") setTool("eraser");
});

// One byte per pixel, >= 128 = fill: exactly what the engine and the saved mask PNG use.
function maskBytes() {
  const d = maskCtx.getImageData(0, 0, maskCanvas.width, maskCanvas.height).data;
  const out = new Uint8Array(d.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = d[i * 4 + 3] >= 128 ? 255 : 0;
  return out;
}

function saveCanvas(canvas, name) {
  canvas.toBlob((blob) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  }, "image/png");
}

$("mask-save").onclick = () => {
  if (!hasImage) return;
  const m = maskBytes();
  const c = document.createElement("canvas");
  c.width = maskCanvas.width;
  c.height = maskCanvas.height;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(c.width, c.height);
  for (let i = 0; i < m.length; i++) {
    img.data.set([m[i], m[i], m[i], 255], i * 4);
  }
  ctx.putImageData(img, 0, 0);
  saveCanvas(c, "mask.png");
};

// ---- running ---------------------------------------------------------------------------------

function updateRunButton() {
  const ready = hasImage && state.adapter && state.loadedId && !waiting.has("run");
  $("run").disabled = !ready;
  $("run").title = !state.adapter ? "No WebGPU engine" : !state.loadedId ? "Load a model first" : !hasImage ? "Open a photo first" : "";
}

function showRunError(message) {
  $("run-error").textContent = message;
  $("run-error").hidden = false;
}
function hideRunError() {
  $("run-error").hidden = true;
}

function options() {
  const seed = $("seed").value.trim();
  if (!/^\d+$/.test(seed)) throw new Error(`seed "${seed}" is not a whole number`);
  const steps = Number($("steps").value);
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be a whole number of at least 1`);
  const guidanceScale = Number($("guidance").value);
  if (!Number.isFinite(guidanceScale) || guidanceScale < 0) throw new Error("guidance must be a number of at least 0");
  const dilation = Number($("dilation").value);
  if (!Number.isInteger(dilation) || dilation < 0 || dilation > 64) throw new Error("dilation must be a whole number from 0 to 64");
  return {
    prompt: $("prompt").value,
    negativePrompt: $("negative-prompt").value,
    steps, guidanceScale, seed, dilation,
    preview: true,
  };
}

$("seed-random").onclick = () => ($("seed").value = String(Math.floor(Math.random() * 2 ** 32)));

let tokenTimer = null;
$("prompt").addEventListener("input", () => {
  clearTimeout(tokenTimer);
  tokenTimer = setTimeout(async () => {
    if (!state.loadedId) return;
    try {
      const t = await request("tokens", { prompt: $("prompt").value });
      $("prompt-tokens").textContent = t.dropped
        ? `The prompt is ${t.tokens} tokens; the model reads ${t.maxLength - 2}: the last ${t.dropped} are ignored.`
        : "";
    } catch (_) { /* the run reports real problems */ }
  }, 300);
});

$("run").onclick = async () => {
  hideRunError();
  let opts;
  try {
    opts = options();
  } catch (e) {
    showRunError(e.message);
    return;
  }
  const mask = maskBytes();
  if (!mask.some((v) => v)) {
    showRunError("Paint the area to fill first (the mask is empty).");
    return;
  }
  const { width, height } = imageCanvas;
  const rgba = imageCtx.getImageData(0, 0, width, height).data;
  runMask = document.createElement("canvas");
  runMask.width = width;
  runMask.height = height;
  const snapshot = runMask.getContext("2d").createImageData(width, height);
  for (let i = 0; i < mask.length; i++) snapshot.data[i * 4 + 3] = mask[i];
  runMask.getContext("2d").putImageData(snapshot, 0, 0);
  $("run").disabled = true;
  $("cancel").disabled = false;
  $("run-progress").hidden = false;
  $("run-bar").value = 0;
  $("run-text").textContent = "Starting…";
  try {
    const r = await request("run", { width, height, rgba, mask, options: opts }, [rgba.buffer, mask.buffer]);
    state.lastRun = { seconds: r.seconds, width, height, seed: opts.seed };
    showResult(new ImageData(new Uint8ClampedArray(r.rgba.buffer), width, height), opts.seed, r.seconds);
    $("run-text").textContent = `Done in ${r.seconds.toFixed(1)} s`;
  } catch (e) {
    if (e.message === "cancelled") $("run-text").textContent = "Cancelled";
    else showRunError(e.message);
  } finally {
    $("cancel").disabled = true;
    updateRunButton();
  }
};
$("cancel").onclick = () => worker.postMessage({ type: "cancel" });

const STAGES = {
  "encoding-prompt": "Reading the prompt…",
  "encoding-image": "Encoding the photo…",
  denoising: "Denoising…",
  decoding: "Decoding…",
};

function onProgress(m) {
  if (m.op === "run") {
    if (m.stage) {
      $("run-text").textContent = STAGES[m.stage] || m.stage;
    } else {
      $("run-bar").value = m.step / m.total;
      $("run-text").textContent = `Step ${m.step} / ${m.total}`;
      if (m.preview) {
        const p = $("preview");
        p.width = m.preview.width;
        p.height = m.preview.height;
        p.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(m.preview.rgba.buffer), m.preview.width, m.preview.height), 0, 0);
        p.hidden = false;
      }
    }
    return;
  }
  $("model-progress").hidden = false;
  $("model-bar").value = m.total ? m.done / m.total : 0;
  const verb = { download: "Downloading", import: "Importing", verify: "Checking", load: "Loading onto the GPU" }[m.op];
  $("model-text").textContent = `${verb} ${m.file || ""}: ${bytes(m.done)} of ${bytes(m.total)}`;
}

function showResult(imageData, seed, seconds) {
  const before = $("before-canvas");
  const after = $("after-canvas");
  for (const c of [before, after]) {
    c.width = imageData.width;
    c.height = imageData.height;
  }
  before.getContext("2d").drawImage(imageCanvas, 0, 0);
  after.getContext("2d").putImageData(imageData, 0, 0);
  $("compare").style.aspectRatio = `${imageData.width} / ${imageData.height}`;
  $("result-section").hidden = false;
  const full = original ? pasteIntoOriginal(after) : null;
  const saved = full || after;
  $("result-info").textContent = `${imageData.width}×${imageData.height}, seed ${seed}, ${seconds.toFixed(1)} s` +
    (full ? `; the download is ${full.width}×${full.height}: the filled area upscaled into the original photo` : "");
  $("download").textContent = `Download PNG (${saved.width}×${saved.height})`;
  $("download").onclick = () => saveCanvas(saved, `nullpaint-${seed}.png`);
  updateCompare();
}

// The result at the original photo's resolution: the original everywhere, the upscaled
// result where the mask (smoothly upscaled, so the seam is soft) says to fill.
function pasteIntoOriginal(result) {
  const { width, height } = original;
  const full = document.createElement("canvas");
  full.width = width;
  full.height = height;
  const ctx = full.getContext("2d");
  ctx.drawImage(original, 0, 0);
  const patch = document.createElement("canvas");
  patch.width = width;
  patch.height = height;
  const p = patch.getContext("2d");
  p.imageSmoothingQuality = "high";
  p.drawImage(result, 0, 0, width, height);
  p.globalCompositeOperation = "destination-in";
  p.drawImage(runMask, 0, 0, width, height);
  ctx.drawImage(patch, 0, 0);
  return full;
}

function updateCompare() {
  const v = Number($("compare-slider").value);
  $("after-canvas").style.clipPath = `inset(0 0 0 ${v}%)`;
}
$("compare-slider").oninput = updateCompare;
$("use-result").onclick = () => {
  if (original) original = pasteIntoOriginal($("after-canvas"));
  imageCtx.drawImage($("after-canvas"), 0, 0);
  pushUndo();
  maskCtx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
};

// ---- model manager ---------------------------------------------------------------------------

function showModelError(message) {
  $("model-error").textContent = message;
  $("model-error").hidden = !message;
}

async function modelOp(type, body, transfer) {
  showModelError("");
  $("model-progress").hidden = false;
  $("model-bar").value = 0;
  $("model-text").textContent = "Starting…";
  try {
    const r = await request(type, body, transfer);
    $("model-progress").hidden = true;
    return r;
  } catch (e) {
    $("model-progress").hidden = true;
    showModelError(e.message === "cancelled" ? "Stopped. Download again to resume where it stopped." : e.message);
    return null;
  }
}

async function askPersistence() {
  if (navigator.storage && navigator.storage.persist && !(await navigator.storage.persisted())) {
    // Without it the browser may evict the models when the disk fills up.
    await navigator.storage.persist().catch(() => false);
  }
}

function chunkBytesParam() {
  // For testing resumption and chunk repair on small models: ?chunk=<bytes>.
  const v = Number(new URLSearchParams(location.search).get("chunk"));
  return v > 0 ? v : undefined;
}

async function downloadModel(repo) {
  showModelError("");
  await askPersistence();
  await modelOp("download", {
    repo,
    endpoint: $("endpoint").value.trim(),
    revision: $("revision").value.trim() || "main",
    chunkBytes: chunkBytesParam(),
  });
}

$("download-model").onclick = () => downloadModel($("repo").value);
$("model-cancel").onclick = () => worker.postMessage({ type: "cancel" });

async function importEntries(name, entries) {
  showModelError("");
  await askPersistence();
  await modelOp("import", { name, entries });
}

$("import-folder").addEventListener("change", (e) => {
  const files = [...e.target.files];
  e.target.value = "";
  if (!files.length) return;
  const top = files[0].webkitRelativePath.split("/")[0];
  const entries = files.map((file) => ({ path: file.webkitRelativePath.split("/").slice(1).join("/"), file }));
  importEntries(top, entries);
});
// Dropping a folder on the model manager imports it.
async function walk(entry, prefix, out) {
  if (entry.isFile) {
    out.push({ path: prefix + entry.name, file: await new Promise((res, rej) => entry.file(res, rej)) });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
      if (!batch.length) break;
      for (const child of batch) await walk(child, `${prefix}${entry.name}/`, out);
    }
  }
}
const modelsSection = $("models");
modelsSection.addEventListener("dragover", (e) => e.preventDefault());
modelsSection.addEventListener("drop", async (e) => {
  e.preventDefault();
  const item = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).find((x) => x && x.isDirectory);
  if (!item) {
    showModelError("Drop the model folder itself (it holds unet/, vae/, text_encoder/, tokenizer/, scheduler/).");
    return;
  }
  const out = [];
  await walk(item, "", out);
  importEntries(item.name, out.map((x) => ({ path: x.path.split("/").slice(1).join("/"), file: x.file })));
});

function renderModels(models, storage, loadedId) {
  const body = $("model-table").querySelector("tbody");
  body.replaceChildren();
  if (!models.length) {
    const tr = body.insertRow();
    const td = tr.insertCell();
    td.colSpan = 4;
    td.className = "small";
    td.textContent = "No model yet: download one (about 2 GB for Stable Diffusion 1.5 in f16) or import a diffusers folder.";
  }
  for (const m of models) {
    const tr = body.insertRow();
    tr.dataset.id = m.id;
    tr.insertCell().textContent = m.source.kind === "hub" ? `${m.name} (${new URL(m.source.endpoint).host}, ${m.source.revision})` : `${m.name} (imported)`;
    tr.insertCell().textContent = bytes(m.total);
    tr.insertCell().textContent = m.id === loadedId ? "loaded" : m.complete ? "ready" : `partial (${Math.floor((100 * m.stored) / Math.max(1, m.total))}%)`;
    const actions = tr.insertCell();
    const button = (label, cls, fn) => {
      const b = document.createElement("button");
      b.textContent = label;
      b.className = cls;
      b.onclick = fn;
      actions.append(b);
    };
    if (m.complete) {
      button("Load", "load", async () => {
        const r = await modelOp("load", { id: m.id });
        if (r) {
          state.loadInfo = r.info;
          $("gpu-status").textContent = `${$("gpu-status").textContent.split(" · ")[0]} · ${m.name} loaded in ${r.info.seconds.toFixed(1)} s (${r.info.weightsDType}; wasm memory ${bytes(r.info.heapBytes)})`;
        }
      });
    } else if (m.source.kind === "hub") {
      button("Resume", "resume", () => {
        $("endpoint").value = m.source.endpoint;
        $("revision").value = m.source.revision;
        downloadModel(m.name);
      });
    }
    button("Delete", "delete", async () => {
      if (confirm(`Delete ${m.name} (${bytes(m.total)}) from this browser?`)) await modelOp("delete", { id: m.id });
    });
  }
  if (storage) {
    $("storage").textContent = `Browser storage: ${bytes(storage.usage)} used of ${bytes(storage.quota)} available to this site; ` +
      (storage.persisted ? "kept until you delete it." : "the browser may clear it when the disk is full (persistent storage not granted).");
  }
}
