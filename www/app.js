// The page: photo and mask editing, settings, the model manager, results. Everything heavy
// (downloads, storage, the model, inference) happens in worker.js; this file only draws and
// sends messages.

const $ = (id) => document.getElementById(id);

// ---- worker ----------------------------------------------------------------------------------

let worker = null; // started below (startWorker), started again after an engine crash
const waiting = new Map(); // request type -> { resolve, reject }
const state = { adapter: null, loadInfo: null, models: [], heapBytes: 0, lastRun: null, maskChanges: 0, storeWaits: 0, engineRestarts: 0, lastCrash: null, server: null };
// The other engine: a `nullpaint serve` process (README, "Server"). `on` while chosen;
// `state.server` ({ url, health }) once connected; `abort` cancels the run in progress.
const server = { on: false, abort: null };
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

function startWorker() {
  const url = new URL("./worker.js", import.meta.url);
  // ?log=debug (or error, warn, info, trace): the engine's diagnostics in the console.
  const log = new URLSearchParams(location.search).get("log");
  if (log) url.searchParams.set("log", log);
  worker = new Worker(url, { type: "module" });
  worker.onmessage = onWorkerMessage;
  worker.onerror = (e) => {
    $("fatal").textContent = `The engine failed to start: ${e.message || "the worker could not be loaded"}.`;
    $("fatal").hidden = false;
  };
}

let reloadAfterRestart = null; // the model to load again once a restarted engine is ready

// The engine's WebAssembly instance ends at a panic: the GPU out of memory, the device lost
// (driver reset, browser GPU process restarted), or a bug. A new worker brings a new instance
// and a new WebGPU device; the models stay in IndexedDB, and the one that was loaded is loaded
// again. A crash before the engine was ever ready is fatal (a restart would crash again).
function restartEngine(m) {
  worker.terminate();
  const advice = {
    "out-of-memory": " The GPU ran out of memory: try a smaller Context (less photo around each hole), or close other tabs and programs that use the GPU.",
    lost: " The GPU device was lost (a driver reset or a restart of the browser's GPU process).",
  }[m.fault] || "";
  const reload = state.loadedId;
  const message = `The engine stopped: ${m.message}.${advice} A new engine was started; the stored models are kept` +
    (reload ? " and the model is being loaded again." : ".");
  for (const pending of waiting.values()) pending.reject(new Error(message));
  waiting.clear();
  state.lastCrash = { fault: m.fault, message: m.message };
  if (!state.adapter) {
    $("fatal").textContent = `${m.message}. Reload the page to start again.`;
    $("fatal").hidden = false;
    return;
  }
  state.engineRestarts += 1;
  state.adapter = null;
  state.loadedId = null;
  reloadAfterRestart = reload;
  $("gpu-status").textContent = "Restarting the engine after a failure…";
  updateRunButton();
  startWorker();
}

function onWorkerMessage(event) {
  const m = event.data;
  switch (m.type) {
    case "ready":
      state.adapter = m.adapter;
      $("gpu-status").textContent = `GPU: ${m.adapter.name || "WebGPU adapter"} (${m.adapter.backend}${m.adapter.shaderF16 ? ", f16" : ""})`;
      updateRunButton();
      if (reloadAfterRestart) {
        const id = reloadAfterRestart;
        reloadAfterRestart = null;
        loadModelById(id);
      }
      return;
    case "crashed":
      restartEngine(m);
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
}
startWorker();

function showNoGpu(detail) {
  $("nogpu").hidden = false;
  $("nogpu-detail").textContent = detail || "";
  $("gpu-status").textContent = "No WebGPU: inpainting needs a local server (Engine, below); the model manager works.";
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

// ---- views: zoom and pan ---------------------------------------------------------------------

// A viewport onto a picture of any size (a 12-megapixel photo included): the canvas has the size
// of its container, and only what is visible is drawn, at the current zoom and offset, when
// something changes. Coordinates: screen (CSS pixels from the canvas's top-left corner) =
// image pixel * zoom + (x, y). `frame()` is the image rectangle that "fit" shows; `draw(ctx)`
// paints the scene (ctx starts untransformed, in device pixels).
class View {
  constructor(canvas, { frame, draw, overlay = null, drawOverlay = null, onChange = null }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.overlay = overlay;
    this.overlayCtx = overlay && overlay.getContext("2d");
    this.frame = frame;
    this.drawScene = draw;
    this.drawOverlayScene = drawOverlay;
    this.onChange = onChange;
    this.zoom = 1;
    this.x = 0;
    this.y = 0;
    this.fitted = true; // follow the container's size and the frame until the user zooms or pans
    this.width = 0; // CSS pixels
    this.height = 0;
    this.dpr = 1;
    this.frameRequest = 0;
    this.overlayRequest = 0;
    this.drawMs = 0; // the last scene redraw, for the record
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
  }

  resize() {
    const el = this.canvas.parentElement;
    const width = el.clientWidth;
    const height = el.clientHeight;
    if (!width || !height) return;
    const dpr = window.devicePixelRatio || 1;
    if (width === this.width && height === this.height && dpr === this.dpr) return;
    this.width = width;
    this.height = height;
    this.dpr = dpr;
    for (const c of [this.canvas, this.overlay]) {
      if (!c) continue;
      c.width = Math.round(width * dpr);
      c.height = Math.round(height * dpr);
    }
    if (this.fitted) this.fit();
    else this.changed();
  }

  fitZoom() {
    const f = this.frame();
    if (!f || !this.width) return 1;
    const pad = 8;
    return Math.max(1e-3, Math.min((this.width - 2 * pad) / f.width, (this.height - 2 * pad) / f.height));
  }

  fit() {
    const f = this.frame();
    this.fitted = true;
    if (f && this.width) {
      const z = this.fitZoom();
      this.zoom = z;
      this.x = (this.width - f.width * z) / 2 - f.x * z;
      this.y = (this.height - f.height * z) / 2 - f.y * z;
    }
    this.changed();
  }

  // Zoom to `zoom` keeping the image point under the screen point (ax, ay) in place.
  zoomTo(zoom, ax = this.width / 2, ay = this.height / 2) {
    const min = Math.min(1, this.fitZoom()) / 4;
    const z = Math.min(64, Math.max(min, zoom));
    const [ix, iy] = this.toImage(ax, ay);
    this.zoom = z;
    this.x = ax - ix * z;
    this.y = ay - iy * z;
    this.fitted = false;
    this.changed();
  }

  zoomBy(factor, ax, ay) {
    this.zoomTo(this.zoom * factor, ax, ay);
  }

  // One image pixel per device pixel.
  actualSize(ax, ay) {
    this.zoomTo(1 / this.dpr, ax, ay);
  }

  panBy(dx, dy) {
    this.x += dx;
    this.y += dy;
    this.fitted = false;
    this.changed();
  }

  toImage(sx, sy) {
    return [(sx - this.x) / this.zoom, (sy - this.y) / this.zoom];
  }

  toScreen(ix, iy) {
    return [ix * this.zoom + this.x, iy * this.zoom + this.y];
  }

  // The position of a pointer event in screen coordinates.
  local(e) {
    const r = this.canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  // The visible part of an image rectangle (image pixels, whole), or null.
  visible(x0, y0, x1, y1) {
    const [a, b] = this.toImage(0, 0);
    const [c, d] = this.toImage(this.width, this.height);
    const vx0 = Math.max(x0, Math.floor(a));
    const vy0 = Math.max(y0, Math.floor(b));
    const vx1 = Math.min(x1, Math.ceil(c));
    const vy1 = Math.min(y1, Math.ceil(d));
    return vx1 > vx0 && vy1 > vy0 ? [vx0, vy0, vx1, vy1] : null;
  }

  // ctx transformed so that one unit is one image pixel.
  imageTransform(ctx) {
    const s = this.zoom * this.dpr;
    ctx.setTransform(s, 0, 0, s, this.x * this.dpr, this.y * this.dpr);
    // Zoomed in, show the pixels as they are (the mask is painted pixel by pixel).
    ctx.imageSmoothingEnabled = s < 1;
    ctx.imageSmoothingQuality = "medium";
  }

  changed() {
    if (this.onChange) this.onChange(this);
    this.redraw();
    this.redrawOverlay();
  }

  redraw() {
    if (!this.frameRequest) {
      this.frameRequest = requestAnimationFrame(() => {
        this.frameRequest = 0;
        this.render();
      });
    }
  }

  redrawOverlay() {
    if (this.overlay && !this.overlayRequest) {
      this.overlayRequest = requestAnimationFrame(() => {
        this.overlayRequest = 0;
        this.overlayCtx.setTransform(1, 0, 0, 1, 0, 0);
        this.overlayCtx.clearRect(0, 0, this.overlay.width, this.overlay.height);
        this.drawOverlayScene(this.overlayCtx, this);
      });
    }
  }

  render() {
    if (!this.width) return;
    const t0 = performance.now();
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#d6d4cf";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.drawScene(ctx, this);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    this.drawMs = performance.now() - t0;
  }

  // Clears the screen rectangle of an image rectangle: the page's checkerboard shows through.
  clearImageRect(ctx, x, y, w, h) {
    const [sx, sy] = this.toScreen(x, y);
    const d = this.dpr;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(Math.round(sx * d), Math.round(sy * d), Math.round(w * this.zoom * d), Math.round(h * this.zoom * d));
  }
}

// Half-size copies of a picture down to about 1024 px, so that a zoomed-out view of a large photo
// samples a small copy instead of 12 million pixels.
function pyramid(canvas) {
  const levels = [{ canvas, scale: 1 }];
  let top = canvas;
  let scale = 1;
  while (Math.max(top.width, top.height) > 1024) {
    const c = document.createElement("canvas");
    c.width = Math.max(1, Math.round(top.width / 2));
    c.height = Math.max(1, Math.round(top.height / 2));
    const ctx = c.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(top, 0, 0, c.width, c.height);
    scale /= 2;
    levels.push({ canvas: c, scale: c.width / canvas.width, scaleY: c.height / canvas.height });
    top = c;
  }
  return levels;
}

// Draws the visible part of a picture (with its pyramid) at image position (ox, oy).
function drawPicture(ctx, view, levels, ox = 0, oy = 0) {
  const base = levels[0].canvas;
  const vis = view.visible(ox, oy, ox + base.width, oy + base.height);
  if (!vis) return;
  const [x0, y0, x1, y1] = vis;
  const eff = view.zoom * view.dpr;
  let level = levels[0];
  for (const l of levels) if (l.scale >= eff) level = l;
  const sx = level.scale;
  const sy = level.scaleY || level.scale;
  view.imageTransform(ctx);
  const a = Math.floor((x0 - ox) * sx);
  const b = Math.floor((y0 - oy) * sy);
  const c = Math.min(level.canvas.width, Math.ceil((x1 - ox) * sx));
  const d = Math.min(level.canvas.height, Math.ceil((y1 - oy) * sy));
  if (c <= a || d <= b) return;
  ctx.drawImage(level.canvas, a, b, c - a, d - b, ox + a / sx, oy + b / sy, (c - a) / sx, (d - b) / sy);
}

function zoomLabel(view) {
  return `${Math.round(view.zoom * view.dpr * 100)}%`;
}

// ---- photo and mask --------------------------------------------------------------------------

const stage = $("stage");
const viewCanvas = $("view-canvas");
const cursorCanvas = $("cursor-canvas");
// The photo at its full resolution ({ canvas, width, height, levels }); it is replaced, never
// drawn into, so a result's "before" keeps the photo it was made from.
let photo = null;
// The mask at the photo's size: red, alpha >= 128 = fill. `maskShadow` holds the mask as it was
// before the stroke being painted, so a stroke's undo entry is only its bounding box.
const maskCanvas = document.createElement("canvas");
const maskShadow = document.createElement("canvas");
// The mask, the photo and the undo history live in canvases read back for every run and save
// (`willReadFrequently` asks for CPU-side storage). In headless Chromium on SwiftShader they
// still lose their pixels when the GPU process restarts (e2e step 8a reopens the files);
// keeping them in plain arrays is left to do.
const maskCtx = maskCanvas.getContext("2d", { willReadFrequently: true });
const shadowCtx = maskShadow.getContext("2d", { willReadFrequently: true });
let tool = "brush";
let spaceDown = false;
const undoStack = []; // { x, y, canvas }: the mask's pixels in that box before a change
const UNDO_MAX_ENTRIES = 50;
const UNDO_MAX_PIXELS = 40e6; // about 160 MB of canvases: two full-size entries for a 12 MP photo
let runBox = null; // the region being run, in photo pixels, shown in the editor

function extension() {
  const v = (id) => {
    const n = Number($(id).value);
    return Number.isInteger(n) && n > 0 ? n : 0;
  };
  return [v("extend-left"), v("extend-top"), v("extend-right"), v("extend-bottom")];
}

// The canvas the run produces, in photo pixels: the photo plus the extension.
function editorFrame() {
  if (!photo) return null;
  const [l, t, r, b] = extension();
  return { x: -l, y: -t, width: photo.width + l + r, height: photo.height + t + b };
}

const editorView = new View(viewCanvas, {
  frame: editorFrame,
  overlay: cursorCanvas,
  draw: drawEditor,
  drawOverlay: drawEditorOverlay,
  onChange: (v) => ($("zoom-level").textContent = zoomLabel(v)),
});

function drawEditor(ctx, view) {
  if (!photo) return;
  const f = editorFrame();
  // the canvas to be: transparent, so the checkerboard marks the border that will be generated
  view.clearImageRect(ctx, f.x, f.y, f.width, f.height);
  drawPicture(ctx, view, photo.levels);
  const vis = view.visible(0, 0, photo.width, photo.height);
  if (vis) {
    const [x0, y0, x1, y1] = vis;
    view.imageTransform(ctx);
    ctx.globalAlpha = 0.5;
    ctx.drawImage(maskCanvas, x0, y0, x1 - x0, y1 - y0, x0, y0, x1 - x0, y1 - y0);
    ctx.globalAlpha = 1;
  }
  if (f.width !== photo.width || f.height !== photo.height) {
    const [sx, sy] = view.toScreen(0, 0);
    const d = view.dpr;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.setLineDash([6 * d, 4 * d]);
    ctx.lineWidth = d;
    ctx.strokeStyle = "#2f6fde";
    ctx.strokeRect(Math.round(sx * d) - 0.5, Math.round(sy * d) - 0.5, photo.width * view.zoom * d + 1, photo.height * view.zoom * d + 1);
    ctx.setLineDash([]);
  }
}

let pointer = null; // the pointer's screen position over the editor, or null
function drawEditorOverlay(ctx, view) {
  const d = view.dpr;
  if (runBox) {
    const [sx, sy] = view.toScreen(runBox.x, runBox.y);
    ctx.setLineDash([8 * d, 5 * d]);
    ctx.lineWidth = 2 * d;
    ctx.strokeStyle = "#2f6fde";
    ctx.strokeRect(sx * d, sy * d, runBox.width * view.zoom * d, runBox.height * view.zoom * d);
    ctx.setLineDash([]);
    ctx.fillStyle = "#2f6fde";
    ctx.font = `${12 * d}px system-ui, sans-serif`;
    ctx.fillText(runBox.label, sx * d + 4 * d, sy * d - 4 * d > 12 * d ? sy * d - 4 * d : sy * d + 14 * d);
  }
  if (pointer && photo && !panning() && tool !== "hand") {
    const r = (Number($("brush-size").value) / 2) * d;
    ctx.lineWidth = d;
    for (const [color, extra] of [["#000a", 1], ["#fff", 0]]) {
      ctx.strokeStyle = color;
      ctx.beginPath();
      ctx.arc(pointer[0] * d, pointer[1] * d, r + extra * d, 0, Math.PI * 2);
      ctx.stroke();
    }
  }
}

async function openImage(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (e) {
    showRunError(`${file.name || "the file"} is not an image this browser can read (${e.message}). Use PNG, JPEG or WebP.`);
    return;
  }
  setPhoto(bitmap, { rgba: storedRgba(bitmap) });
  bitmap.close();
}

// A 2D canvas keeps its pixels premultiplied by alpha, so a photo read through one comes out
// composited over black (transparent pixels black, half-transparent ones darkened and rounded).
// The engine takes each pixel's stored colour with the alpha dropped, as the CLI reads files:
// read the bitmap back through WebGL with premultiplication and colour conversion off. Null
// without WebGL2 or past its texture size; the canvas is read then (exact for opaque photos).
function storedRgba(bitmap) {
  const { width, height } = bitmap;
  let gl = null;
  try {
    gl = new OffscreenCanvas(1, 1).getContext("webgl2");
    if (!gl) return null;
    const max = gl.getParameter(gl.MAX_TEXTURE_SIZE);
    if (width > max || height > max) return null;
    const texture = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, texture);
    gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, width, height, 0, gl.RGBA, gl.UNSIGNED_BYTE, bitmap);
    const framebuffer = gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, framebuffer);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, texture, 0);
    if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) return null;
    const rgba = new Uint8Array(width * height * 4);
    gl.readPixels(0, 0, width, height, gl.RGBA, gl.UNSIGNED_BYTE, rgba);
    return gl.getError() === gl.NO_ERROR ? rgba : null;
  } catch {
    return null;
  } finally {
    gl?.getExtension("WEBGL_lose_context")?.loseContext();
  }
}

// The photo's pixels as the engine gets them (RGBA, row-major; alpha is ignored there).
function photoRgba(p) {
  return p.rgba ? p.rgba.slice() : new Uint8Array(p.canvas.getContext("2d").getImageData(0, 0, p.width, p.height).data.buffer);
}

function copyCanvas(source) {
  const c = document.createElement("canvas");
  c.width = source.width;
  c.height = source.height;
  c.getContext("2d", { willReadFrequently: true }).drawImage(source, 0, 0); // CPU-backed: see maskCtx
  return c;
}

// The photo is kept at its full resolution: the engine runs regions around the holes.
// `rgba`: the stored pixels when the canvas would lose them (transparency), else null.
function setPhoto(source, { keepUndo = false, rgba = null } = {}) {
  const canvas = copyCanvas(source);
  const sameSize = photo && photo.width === canvas.width && photo.height === canvas.height;
  photo = { canvas, width: canvas.width, height: canvas.height, levels: pyramid(canvas), rgba };
  if (keepUndo && sameSize) {
    pushUndo(0, 0, photo.width, photo.height);
  } else {
    undoStack.length = 0;
  }
  for (const c of [maskCanvas, maskShadow]) {
    c.width = photo.width; // also clears it
    c.height = photo.height;
  }
  stage.classList.remove("empty");
  hideRunError();
  updateNotes();
  updateRunButton();
  editorView.resize();
  editorView.fit();
}

$("open-image").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) openImage(file);
  e.target.value = "";
});
stage.addEventListener("dragover", (e) => { e.preventDefault(); stage.classList.add("drop"); });
stage.addEventListener("dragleave", () => stage.classList.remove("drop"));
stage.addEventListener("drop", (e) => {
  e.preventDefault();
  stage.classList.remove("drop");
  const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/")) || e.dataTransfer.files[0];
  if (file) openImage(file);
});

// ---- undo: bounding boxes of changes ----

// Saves the mask's pixels in a box as they were before the change being made (from the shadow),
// then brings the shadow up to date in that box.
function pushUndo(x, y, w, h) {
  const entry = document.createElement("canvas");
  entry.width = w;
  entry.height = h;
  entry.getContext("2d", { willReadFrequently: true }).drawImage(maskShadow, x, y, w, h, 0, 0, w, h);
  undoStack.push({ x, y, canvas: entry });
  let pixels = undoStack.reduce((n, u) => n + u.canvas.width * u.canvas.height, 0);
  while (undoStack.length > UNDO_MAX_ENTRIES || (undoStack.length > 1 && pixels > UNDO_MAX_PIXELS)) {
    const old = undoStack.shift();
    pixels -= old.canvas.width * old.canvas.height;
  }
}

function syncShadow(x = 0, y = 0, w = maskCanvas.width, h = maskCanvas.height) {
  shadowCtx.clearRect(x, y, w, h);
  shadowCtx.drawImage(maskCanvas, x, y, w, h, x, y, w, h);
}

// A change of the whole mask: `change()` draws into maskCtx.
function wholeMaskChange(change) {
  if (!photo) return;
  pushUndo(0, 0, maskCanvas.width, maskCanvas.height);
  change();
  syncShadow();
  state.maskChanges++;
  editorView.redraw();
}

function undo() {
  const u = undoStack.pop();
  if (!u) return;
  const { x, y, canvas } = u;
  for (const ctx of [maskCtx, shadowCtx]) {
    ctx.clearRect(x, y, canvas.width, canvas.height);
    ctx.drawImage(canvas, x, y);
  }
  editorView.redraw();
}

// ---- painting, zooming, panning ----

let drag = null; // { kind: "paint" | "pan", last, box }

function panning() {
  return (drag && drag.kind === "pan") || spaceDown;
}

function brushRadius() {
  // The slider is in screen (CSS) pixels; the mask is in photo pixels.
  return Number($("brush-size").value) / 2 / editorView.zoom;
}

function paint(from, to) {
  const r = brushRadius();
  maskCtx.save();
  maskCtx.globalCompositeOperation = tool === "eraser" ? "destination-out" : "source-over";
  maskCtx.strokeStyle = maskCtx.fillStyle = "rgb(255, 0, 0)";
  maskCtx.lineCap = maskCtx.lineJoin = "round";
  maskCtx.lineWidth = r * 2;
  maskCtx.beginPath();
  maskCtx.moveTo(...from);
  maskCtx.lineTo(...to);
  maskCtx.stroke();
  maskCtx.beginPath();
  maskCtx.arc(...to, r, 0, Math.PI * 2);
  maskCtx.fill();
  maskCtx.restore();
  const pad = r + 2;
  const box = drag.box;
  box[0] = Math.min(box[0], Math.floor(Math.min(from[0], to[0]) - pad));
  box[1] = Math.min(box[1], Math.floor(Math.min(from[1], to[1]) - pad));
  box[2] = Math.max(box[2], Math.ceil(Math.max(from[0], to[0]) + pad));
  box[3] = Math.max(box[3], Math.ceil(Math.max(from[1], to[1]) + pad));
  editorView.redraw();
}

function endStroke() {
  const [a, b, c, d] = drag.box;
  const x0 = Math.max(0, a);
  const y0 = Math.max(0, b);
  const x1 = Math.min(maskCanvas.width, c);
  const y1 = Math.min(maskCanvas.height, d);
  if (x1 > x0 && y1 > y0) {
    pushUndo(x0, y0, x1 - x0, y1 - y0);
    syncShadow(x0, y0, x1 - x0, y1 - y0);
    state.maskChanges++;
  }
}

function updateStageCursor() {
  stage.classList.toggle("hand", tool === "hand" || spaceDown);
  stage.classList.toggle("panning", !!drag && drag.kind === "pan");
  editorView.redrawOverlay();
}

cursorCanvas.addEventListener("pointerdown", (e) => {
  if (!photo || drag) return;
  const p = editorView.local(e);
  stage.focus({ preventScroll: true });
  if (e.button === 1 || (e.button === 0 && (tool === "hand" || spaceDown))) {
    e.preventDefault();
    cursorCanvas.setPointerCapture(e.pointerId);
    drag = { kind: "pan", last: p };
    updateStageCursor();
    return;
  }
  if (e.button !== 0) return;
  cursorCanvas.setPointerCapture(e.pointerId);
  const at = editorView.toImage(...p);
  drag = { kind: "paint", last: at, box: [Infinity, Infinity, -Infinity, -Infinity] };
  paint(at, at);
});
cursorCanvas.addEventListener("pointermove", (e) => {
  if (!photo) return;
  const p = editorView.local(e);
  pointer = p;
  if (drag && drag.kind === "pan") {
    editorView.panBy(p[0] - drag.last[0], p[1] - drag.last[1]);
    drag.last = p;
  } else if (drag && drag.kind === "paint") {
    const at = editorView.toImage(...p);
    paint(drag.last, at);
    drag.last = at;
  }
  editorView.redrawOverlay();
});
function endDrag() {
  if (drag && drag.kind === "paint") endStroke();
  drag = null;
  updateStageCursor();
}
cursorCanvas.addEventListener("pointerup", endDrag);
cursorCanvas.addEventListener("pointercancel", endDrag);
cursorCanvas.addEventListener("pointerleave", () => {
  pointer = null;
  editorView.redrawOverlay();
});
// The middle button pans; stop the browser's autoscroll or paste.
cursorCanvas.addEventListener("mousedown", (e) => { if (e.button === 1) e.preventDefault(); });
cursorCanvas.addEventListener("auxclick", (e) => e.preventDefault());

function wheelZoom(view) {
  return (e) => {
    e.preventDefault();
    const unit = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 400 : 1;
    const factor = Math.min(2, Math.max(0.5, Math.pow(2, (-e.deltaY * unit) / 300)));
    view.zoomBy(factor, ...view.local(e));
  };
}
cursorCanvas.addEventListener("wheel", wheelZoom(editorView), { passive: false });

function setTool(t) {
  tool = t;
  for (const [id, name] of [["tool-brush", "brush"], ["tool-eraser", "eraser"], ["tool-hand", "hand"]]) {
    $(id).classList.toggle("active", t === name);
    $(id).setAttribute("aria-pressed", String(t === name));
  }
  updateStageCursor();
}
$("tool-brush").onclick = () => setTool("brush");
$("tool-eraser").onclick = () => setTool("eraser");
$("tool-hand").onclick = () => setTool("hand");
$("brush-size").oninput = () => ($("brush-size-out").textContent = $("brush-size").value);
$("zoom-in").onclick = () => editorView.zoomBy(1.5);
$("zoom-out").onclick = () => editorView.zoomBy(1 / 1.5);
$("zoom-fit").onclick = () => editorView.fit();
$("zoom-100").onclick = () => editorView.actualSize();
$("mask-undo").onclick = undo;
$("mask-clear").onclick = () => wholeMaskChange(() => maskCtx.clearRect(0, 0, maskCanvas.width, maskCanvas.height));
// Inverting is compositing (alpha becomes 255 - alpha): no pixel read back.
$("mask-invert").onclick = () => wholeMaskChange(() => {
  maskCtx.save();
  maskCtx.globalCompositeOperation = "xor";
  maskCtx.fillStyle = "rgb(255, 0, 0)";
  maskCtx.fillRect(0, 0, maskCanvas.width, maskCanvas.height);
  maskCtx.restore();
});

// Which view the keyboard's zoom keys act on: the last one the pointer was over.
let keyView = editorView;
cursorCanvas.addEventListener("pointerenter", () => (keyView = editorView));

document.addEventListener("keydown", (e) => {
  if (e.target.matches("input, textarea, select")) return;
  if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === " ") {
    e.preventDefault();
    if (!spaceDown) {
      spaceDown = true;
      updateStageCursor();
    }
  } else if (e.key === "b") setTool("brush");
  else if (e.key === "e") setTool("eraser");
  else if (e.key === "h") setTool("hand");
  else if (e.key === "+" || e.key === "=") keyView.zoomBy(1.5);
  else if (e.key === "-") keyView.zoomBy(1 / 1.5);
  else if (e.key === "0") keyView.fit();
  else if (e.key === "1") keyView.actualSize();
});
document.addEventListener("keyup", (e) => {
  if (e.key === " " && spaceDown) {
    e.preventDefault(); // a focused button must not be clicked by the space that moved the view
    spaceDown = false;
    updateStageCursor();
  }
});
window.addEventListener("blur", () => {
  spaceDown = false;
  updateStageCursor();
});

// One byte per pixel, >= 128 = fill: exactly what the engine and the saved mask PNG use. Read
// once per run or save, never per stroke.
function maskBytes() {
  const d = maskCtx.getImageData(0, 0, maskCanvas.width, maskCanvas.height).data;
  const out = new Uint8Array(d.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = d[i * 4 + 3] >= 128 ? 255 : 0;
  return out;
}

function saveCanvas(canvas, name) {
  return new Promise((done) => canvas.toBlob((blob) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
    done();
  }, "image/png"));
}

$("mask-save").onclick = () => {
  if (!photo) return;
  const m = maskBytes();
  const c = document.createElement("canvas");
  c.width = maskCanvas.width;
  c.height = maskCanvas.height;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(c.width, c.height);
  const px = new Uint32Array(img.data.buffer);
  for (let i = 0; i < m.length; i++) px[i] = m[i] ? 0xffffffff : 0xff000000;
  ctx.putImageData(img, 0, 0);
  saveCanvas(c, "mask.png");
};

// A mask file (white = fill, as saved) replaces the painted mask.
$("open-mask").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (!file || !photo) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (err) {
    showRunError(`${file.name} is not an image this browser can read (${err.message}).`);
    return;
  }
  if (bitmap.width !== photo.width || bitmap.height !== photo.height) {
    showRunError(`The mask is ${bitmap.width}×${bitmap.height}; the photo is ${photo.width}×${photo.height}.`);
    bitmap.close();
    return;
  }
  const tmp = document.createElement("canvas");
  tmp.width = bitmap.width;
  tmp.height = bitmap.height;
  const tctx = tmp.getContext("2d", { willReadFrequently: true });
  tctx.drawImage(bitmap, 0, 0);
  // The stored colours (a canvas would turn transparent pixels black), when WebGL can read them.
  const stored = storedRgba(bitmap);
  bitmap.close();
  const img = tctx.getImageData(0, 0, tmp.width, tmp.height);
  const d = img.data;
  if (stored) d.set(stored);
  for (let i = 0; i < d.length; i += 4) {
    // luminance as the CLI reads masks (PIL's convert("L"), ITU-R 601-2, alpha ignored, as
    // diffusers does): >= 128 = fill
    const lum = (19595 * d[i] + 38470 * d[i + 1] + 7471 * d[i + 2] + 0x8000) >> 16;
    d[i] = 255; d[i + 1] = 0; d[i + 2] = 0;
    d[i + 3] = lum >= 128 ? 255 : 0;
  }
  hideRunError();
  wholeMaskChange(() => maskCtx.putImageData(img, 0, 0));
});

// ---- settings that depend on the photo ----

function updateNotes() {
  const S = state.loadInfo && state.loadInfo.workingSize;
  const f = editorFrame();
  const [l, t, r, b] = extension();
  const extended = l + t + r + b > 0;
  $("photo-info").textContent = !photo ? "" : extended
    ? `${photo.width}×${photo.height} px, extended to ${f.width}×${f.height}`
    : `${photo.width}×${photo.height} px`;
  $("extend-note").textContent = photo && extended
    ? `The canvas grows to ${f.width}×${f.height}; the checkered border around the photo is generated.`
    : "Pixels to add on each side; the added border (checkered in the editor) is generated.";
  const mode = $("region").value;
  const size = S ? `${S} px` : "its working size";
  let note;
  if (mode === "whole") {
    note = `One pass over the whole ${f ? `${f.width}×${f.height} ` : ""}canvas` +
      (S && f && (f.width > S || f.height > S) ? `: far above the model's ${size}, slow and memory-hungry, and the model repeats itself at that size.` : ".");
  } else if (mode === "crop" || (f && S && (f.width > S || f.height > S))) {
    note = `${mode === "auto" ? "Larger than the model's " + size + ": " : ""}each hole runs in its own region ` +
      `(the hole plus ${$("context").value} px around it, at least ${size}; larger regions run scaled down); ` +
      "the rest of the photo is kept as it is.";
  } else {
    note = f && S ? `The canvas fits the model's ${size}: it runs whole.` : "Whole when the photo fits the model's working size, else one region around each hole.";
  }
  $("region-note").textContent = note;
}
for (const id of ["extend-left", "extend-top", "extend-right", "extend-bottom"]) {
  $(id).addEventListener("input", () => {
    updateNotes();
    if (editorView.fitted) editorView.fit();
    else editorView.redraw();
  });
}
for (const id of ["region", "context"]) $(id).addEventListener("input", updateNotes);

// ---- running ---------------------------------------------------------------------------------

function updateRunButton() {
  const busy = waiting.has("run") || server.abort;
  const engine = server.on ? Boolean(state.server) : Boolean(state.adapter && state.loadedId);
  $("run").disabled = !(photo && engine && !busy);
  $("run").title = server.on
    ? (!state.server ? "Connect to the local server first" : !photo ? "Open a photo first" : "")
    : !state.adapter ? "No WebGPU engine (a local server can run it: Engine, below)" : !state.loadedId ? "Load a model first" : !photo ? "Open a photo first" : "";
}

// ---- engine: this browser, or a local server --------------------------------------------------

for (const el of document.querySelectorAll(".origin")) el.textContent = location.origin;
function chooseEngine() {
  server.on = $("engine-server").checked;
  $("server-box").hidden = !server.on;
  $("server-help").hidden = !server.on;
  updateModes(server.on ? null : state.loadInfo?.inpaintingUnet, server.on);
  updateRunButton();
}
$("engine-browser").addEventListener("change", chooseEngine);
$("engine-server").addEventListener("change", chooseEngine);

function serverHeaders() {
  const token = $("server-token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

$("server-connect").onclick = async () => {
  const url = $("server-url").value.trim().replace(/\/+$/, "");
  state.server = null;
  updateRunButton();
  $("server-status").textContent = "Connecting…";
  try {
    const r = await fetch(`${url}/health`, { headers: serverHeaders() });
    const h = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(h.error || h.status || `HTTP ${r.status}`);
    state.server = { url, health: h };
    $("server-status").textContent = `Connected: ${h.model} on ${h.device} (${h.precision})`;
  } catch (e) {
    $("server-status").textContent = `Cannot use ${url}: ${e.message}. Is \`nullpaint serve --cors-origin ${location.origin}\` running there?`;
  }
  updateRunButton();
};

// A PNG of `width` x `height` whose RGBA bytes `fill` writes (opaque pixels: the canvas keeps
// them exactly).
function pngBlob(width, height, fill) {
  const c = new OffscreenCanvas(width, height);
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(width, height);
  fill(img.data);
  ctx.putImageData(img, 0, 0);
  return c.convertToBlob({ type: "image/png" });
}

// Server-sent events of a fetch response, one { event, data } at a time.
async function* serverEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      if (data) yield { event, data: JSON.parse(data) }; // (comments are keep-alives)
    }
  }
}

// One run on the local server: the photo's stored RGB and the mask as PNGs, the options under
// the CLI's names; progress from its events; the result decoded to RGBA.
async function runOnServer({ width, height, rgba, mask, opts }) {
  const { url } = state.server;
  const form = new FormData();
  form.append("image", await pngBlob(width, height, (d) => {
    for (let i = 0; i < width * height; i++) {
      d[i * 4] = rgba[i * 4]; d[i * 4 + 1] = rgba[i * 4 + 1]; d[i * 4 + 2] = rgba[i * 4 + 2]; d[i * 4 + 3] = 255;
    }
  }), "photo.png");
  form.append("mask", await pngBlob(width, height, (d) => {
    for (let i = 0; i < width * height; i++) { d[i * 4] = d[i * 4 + 1] = d[i * 4 + 2] = mask[i]; d[i * 4 + 3] = 255; }
  }), "mask.png");
  const fields = {
    prompt: opts.prompt, "negative-prompt": opts.negativePrompt, steps: opts.steps, "guidance-scale": opts.guidanceScale,
    seed: opts.seed, dilate: opts.dilation, region: opts.region, context: opts.context, feather: opts.feather,
    extend: opts.extend.join(","), mode: opts.mode,
  };
  for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
  const abort = new AbortController();
  server.abort = abort;
  try {
    let response;
    try {
      response = await fetch(`${url}/inpaint`, { method: "POST", body: form, headers: { Accept: "text/event-stream", ...serverHeaders() }, signal: abort.signal });
    } catch (e) {
      throw new Error(abort.signal.aborted ? "cancelled" : `cannot reach the server at ${url}: ${e.message}`);
    }
    if (!response.ok) {
      const text = await response.text();
      let message = text;
      try { message = JSON.parse(text).error; } catch (_) { /* not JSON */ }
      throw new Error(`the server refused the run (HTTP ${response.status}): ${message}`);
    }
    for await (const { event, data } of serverEvents(response)) {
      if (event === "queued") $("run-text").textContent = data.position > 1 ? `Waiting for the server (${data.position - 1} ahead)…` : "Starting…";
      else if (event === "progress") onServerProgress(data);
      else if (event === "error") throw new Error(`the server failed: ${data.error}`);
      else if (event === "done") {
        const png = Uint8Array.from(atob(data.png), (c) => c.charCodeAt(0));
        const bitmap = await createImageBitmap(new Blob([png], { type: "image/png" }), { colorSpaceConversion: "none", premultiplyAlpha: "none" });
        const c = new OffscreenCanvas(bitmap.width, bitmap.height);
        const ctx = c.getContext("2d", { willReadFrequently: true });
        ctx.drawImage(bitmap, 0, 0);
        return { width: bitmap.width, height: bitmap.height, rgba: new Uint8Array(ctx.getImageData(0, 0, c.width, c.height).data.buffer), seconds: data.seconds };
      }
    }
    throw new Error("the server closed the connection before the result");
  } catch (e) {
    if (abort.signal.aborted) throw new Error("cancelled");
    throw e;
  } finally {
    server.abort = null;
  }
}

const SERVER_STAGES = { prompt: "encoding-prompt", image: "encoding-image", denoising: "denoising", decoding: "decoding" };
function onServerProgress(m) {
  if (!running) return;
  const now = performance.now();
  const prefix = m.regions > 1 ? `Region ${m.region} / ${m.regions} · ` : "";
  if (m.stage === "denoising" && m.done > (running.serverDone ?? 0)) {
    running.stepSeconds.push((now - running.lastEvent) / 1000);
    running.serverDone = m.done;
    $("run-bar").value = m.done / m.total;
    const steps = m.total / m.regions;
    $("run-text").textContent = `${prefix}Step ${m.done - (m.region - 1) * steps} / ${steps}`;
  } else if (m.stage !== "denoising") {
    $("run-text").textContent = prefix + (STAGES[SERVER_STAGES[m.stage]] || m.stage);
  }
  running.lastEvent = now;
}

function showRunError(message) {
  $("run-error").textContent = message;
  $("run-error").hidden = false;
}
function hideRunError() {
  $("run-error").hidden = true;
}

// The modes the loaded model can run: inpaint-unet and both need an inpainting UNet,
// projection a base one; auto always works.
// On a server the model is the server's: every mode is offered, and the server says which fits.
function updateModes(inpaintingUnet, any = server.on) {
  const select = $("mode");
  for (const option of select.options) {
    const needsInpaintingUnet = option.value === "inpaint-unet" || option.value === "both";
    option.disabled = !any && option.value !== "auto" && needsInpaintingUnet !== Boolean(inpaintingUnet);
  }
  if (select.selectedOptions[0]?.disabled) select.value = "auto";
}

function wholeNumber(id, name, min, max) {
  const raw = $(id).value.trim();
  const n = Number(raw);
  if (raw === "" || !Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be a whole number from ${min} to ${max}`);
  return n;
}

function options() {
  const seed = $("seed").value.trim();
  if (!/^\d+$/.test(seed)) throw new Error(`seed "${seed}" is not a whole number`);
  const steps = Number($("steps").value);
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be a whole number of at least 1`);
  const guidanceScale = Number($("guidance").value);
  if (!Number.isFinite(guidanceScale) || guidanceScale < 0) throw new Error("guidance must be a number of at least 0");
  const dilation = wholeNumber("dilation", "dilation", 0, 64);
  const context = wholeNumber("context", "context", 0, 4096);
  const feather = wholeNumber("feather", "feather", 0, 4096);
  if (feather > context) throw new Error(`feather (${feather} px) must be at most the context (${context} px)`);
  const extend = [["extend-left", "left"], ["extend-top", "top"], ["extend-right", "right"], ["extend-bottom", "bottom"]]
    .map(([id, side]) => wholeNumber(id, `the extension (${side})`, 0, 8192));
  return {
    prompt: $("prompt").value,
    negativePrompt: $("negative-prompt").value,
    steps, guidanceScale, seed, dilation,
    region: $("region").value,
    context, feather, extend,
    mode: $("mode").value,
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

let running = null; // { extend, region } while a run is in progress

$("run").onclick = async () => {
  hideRunError();
  if (!photo) return;
  let opts;
  try {
    opts = options();
  } catch (e) {
    showRunError(e.message);
    return;
  }
  const mask = maskBytes();
  if (!mask.some((v) => v) && !opts.extend.some((v) => v)) {
    showRunError("Paint the area to fill first (the mask is empty), or extend the canvas.");
    return;
  }
  const source = photo; // the "before" of this run, whatever is opened meanwhile
  const { width, height } = source;
  const t0 = performance.now();
  const rgba = photoRgba(source);
  const [left, top, right, bottom] = opts.extend;
  // stepSeconds: time from the event before each step to the step's own (the engine reports a
  // step once the device has finished it), kept for the figures of the browser test.
  running = { extend: opts.extend, canvas: [width + left + right, height + top + bottom], region: null, lastEvent: performance.now(), stepSeconds: [] };
  $("run").disabled = true;
  $("cancel").disabled = false;
  $("run-progress").hidden = false;
  $("run-bar").value = 0;
  $("run-text").textContent = "Starting…";
  $("preview-caption").hidden = true;
  try {
    const r = server.on
      ? await runOnServer({ width, height, rgba, mask, opts })
      : await request("run", { width, height, rgba, mask, options: opts }, [rgba.buffer, mask.buffer]);
    const result = document.createElement("canvas");
    result.width = r.width;
    result.height = r.height;
    result.getContext("2d", { willReadFrequently: true }).putImageData(new ImageData(new Uint8ClampedArray(r.rgba.buffer, r.rgba.byteOffset, r.rgba.length), r.width, r.height), 0, 0);
    const regions = running.region ? (running.region.whole ? 0 : running.region.regions) : 0;
    state.lastRun = { seconds: r.seconds, wallSeconds: (performance.now() - t0) / 1000, width: r.width, height: r.height, seed: opts.seed, regions, stepSeconds: running.stepSeconds };
    showResult({ result, before: source, extend: opts.extend, seed: opts.seed, seconds: r.seconds, regions });
    $("run-bar").value = 1;
    $("run-text").textContent = `Done in ${r.seconds.toFixed(1)} s` + (regions > 1 ? ` (${regions} regions)` : "");
  } catch (e) {
    if (e.message === "cancelled") $("run-text").textContent = "Cancelled";
    else showRunError(e.message);
  } finally {
    running = null;
    runBox = null;
    editorView.redrawOverlay();
    $("cancel").disabled = true;
    updateRunButton();
  }
};
$("cancel").onclick = () => (server.abort ? server.abort.abort() : worker.postMessage({ type: "cancel" }));

const STAGES = {
  "encoding-prompt": "reading the prompt…",
  "encoding-image": "encoding the photo…",
  denoising: "denoising…",
  decoding: "decoding…",
};

function onRunProgress(m) {
  const now = performance.now();
  if (m.step) running.stepSeconds.push((now - running.lastEvent) / 1000);
  running.lastEvent = now;
  const region = running.region && !running.region.whole ? running.region : null;
  const prefix = region ? `Region ${region.region} / ${region.regions} · ` : "";
  const capital = (s) => (prefix ? s : s[0].toUpperCase() + s.slice(1));
  const done = (fraction) => (region ? (region.region - 1 + fraction) / region.regions : fraction);
  if (m.regions) {
    // whole mode (or a canvas that fits the model): one region, the whole canvas, not scaled
    const whole = m.regions === 1 && m.x === 0 && m.y === 0 && m.width === running.canvas[0] && m.height === running.canvas[1] &&
      m.runWidth === m.width && m.runHeight === m.height;
    running.region = { ...m, whole };
    const [l, t] = running.extend;
    const scaled = m.runWidth !== m.width || m.runHeight !== m.height;
    const where = `${m.width}×${m.height} at (${m.x}, ${m.y})` + (scaled ? `, run at ${m.runWidth}×${m.runHeight}` : "");
    const name = whole ? "The whole photo" : `Region ${m.region} / ${m.regions}`;
    runBox = whole ? null : { x: m.x - l, y: m.y - t, width: m.width, height: m.height, label: name };
    editorView.redrawOverlay();
    $("preview-caption").textContent = whole ? `${name}, ${m.width}×${m.height}` : `${name}: ${where}`;
    $("preview-caption").hidden = false;
    $("run-text").textContent = whole ? `${name} · ${m.width}×${m.height}` : `${name} · ${where}`;
    $("run-bar").value = (m.region - 1) / m.regions;
  } else if (m.stage) {
    $("run-text").textContent = prefix + capital(STAGES[m.stage] || m.stage);
  } else {
    $("run-bar").value = done(m.step / m.total);
    $("run-text").textContent = prefix + capital(`step ${m.step} / ${m.total}`);
    if (m.preview) {
      const p = $("preview");
      p.width = m.preview.width;
      p.height = m.preview.height;
      p.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(m.preview.rgba.buffer), m.preview.width, m.preview.height), 0, 0);
      p.hidden = false;
    }
  }
}

function onProgress(m) {
  if (m.op === "run") {
    if (running) onRunProgress(m);
    return;
  }
  $("model-progress").hidden = false;
  $("model-bar").value = m.total ? m.done / m.total : 0;
  if (m.op === "warmup") {
    $("model-bar").removeAttribute("value"); // indeterminate
    $("model-text").textContent = "Preparing the GPU shaders (one short test run)…";
    return;
  }
  const verb = { download: "Downloading", import: "Importing", verify: "Checking", load: "Loading onto the GPU", delete: "Deleting" }[m.op];
  if (m.waiting) {
    // Another tab holds this model's store lock (www/store.js withModelLock).
    $("model-bar").removeAttribute("value");
    $("model-text").textContent = `${verb}: waiting, ${m.waiting}…`;
    state.storeWaits = (state.storeWaits || 0) + 1;
    return;
  }
  $("model-text").textContent = `${verb} ${m.file || ""}: ${bytes(m.done)} of ${bytes(m.total)}`;
}

// ---- result: before / after ----

let shown = null; // { result, levels, before, extend, seed }

const compareView = new View($("compare-canvas"), {
  frame: () => (shown ? { x: 0, y: 0, width: shown.result.width, height: shown.result.height } : null),
  draw: drawCompare,
  onChange: (v) => ($("compare-zoom-level").textContent = zoomLabel(v)),
});

// Left of the divider the photo as it was, inside the extended frame (the border to be generated
// checkered); right of it the result.
function drawCompare(ctx, view) {
  if (!shown) return;
  const d = view.dpr;
  const split = Math.round((Number($("compare-slider").value) / 100) * view.width * d);
  const { result, before, extend: [l, t] } = shown;
  ctx.save();
  ctx.beginPath();
  ctx.rect(0, 0, split, view.canvas.height);
  ctx.clip();
  view.clearImageRect(ctx, 0, 0, result.width, result.height);
  drawPicture(ctx, view, before.levels, l, t);
  ctx.restore();
  ctx.save();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.beginPath();
  ctx.rect(split, 0, view.canvas.width - split, view.canvas.height);
  ctx.clip();
  drawPicture(ctx, view, shown.levels);
  ctx.restore();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#fff";
  ctx.fillRect(split - d, 0, 2 * d, view.canvas.height);
}

function showResult({ result, before, extend, seed, seconds, regions }) {
  shown = { result, levels: pyramid(result), before, extend, seed };
  $("result-section").hidden = false;
  compareView.resize();
  compareView.fit();
  const [l, t, r, b] = extend;
  const extended = l + t + r + b > 0;
  $("result-info").textContent = `${result.width}×${result.height}` +
    (extended ? ` (the photo's ${before.width}×${before.height} extended by ${l}, ${t}, ${r}, ${b})` : "") +
    (regions > 1 ? `, ${regions} regions` : regions === 1 ? ", 1 region" : "") +
    `, seed ${seed}, ${seconds.toFixed(1)} s; outside the filled areas every pixel is the photo's`;
  $("download").textContent = `Download PNG (${result.width}×${result.height})`;
  $("download").onclick = () => saveCanvas(result, `nullpaint-${seed}.png`);
}

const compareCanvas = $("compare-canvas");
let compareDrag = null;
compareCanvas.addEventListener("pointerdown", (e) => {
  if (!shown || (e.button !== 0 && e.button !== 1)) return;
  e.preventDefault();
  compareCanvas.setPointerCapture(e.pointerId);
  compareDrag = compareView.local(e);
  $("compare").classList.add("panning");
});
compareCanvas.addEventListener("pointermove", (e) => {
  if (!compareDrag) return;
  const p = compareView.local(e);
  compareView.panBy(p[0] - compareDrag[0], p[1] - compareDrag[1]);
  compareDrag = p;
});
for (const type of ["pointerup", "pointercancel"]) {
  compareCanvas.addEventListener(type, () => {
    compareDrag = null;
    $("compare").classList.remove("panning");
  });
}
compareCanvas.addEventListener("wheel", wheelZoom(compareView), { passive: false });
compareCanvas.addEventListener("pointerenter", () => (keyView = compareView));
compareCanvas.addEventListener("auxclick", (e) => e.preventDefault());
$("compare-zoom-in").onclick = () => compareView.zoomBy(1.5);
$("compare-zoom-out").onclick = () => compareView.zoomBy(1 / 1.5);
$("compare-zoom-fit").onclick = () => compareView.fit();
$("compare-zoom-100").onclick = () => compareView.actualSize();
$("compare-slider").oninput = () => compareView.redraw();

// Continue from the result: it becomes the photo, at its full size (the extension included).
$("use-result").onclick = () => {
  if (!shown) return;
  for (const id of ["extend-left", "extend-top", "extend-right", "extend-bottom"]) $(id).value = "0";
  setPhoto(shown.result, { keepUndo: true });
  stage.scrollIntoView({ block: "nearest" });
};

// For scripted use and tests.
state.editorView = editorView;
state.compareView = compareView;
state.photoSize = () => (photo ? { width: photo.width, height: photo.height } : null);
state.photoPixels = () => (photo ? Array.from(photoRgba(photo)) : null);
state.maskHoles = () => Array.from(maskBytes(), (v) => v === 255);

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
$("import-file").addEventListener("change", (e) => {
  const [file] = e.target.files;
  e.target.value = "";
  if (file) importEntries(file.name.replace(/\.safetensors$/i, ""), [{ path: file.name, file }]);
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

async function loadModelById(id) {
  const r = await modelOp("load", { id });
  if (r) {
    const name = (state.models.find((x) => x.id === id) || { name: id }).name;
    state.loadInfo = r.info;
    updateModes(r.info.inpaintingUnet);
    const S = r.info.workingSize;
    $("gpu-status").textContent = `${$("gpu-status").textContent.split(" · ")[0]} · ${name} loaded in ${r.info.seconds.toFixed(1)} s, shaders ready in ${r.info.warmUpSeconds.toFixed(1)} s (${r.info.weightsDType}; wasm memory ${bytes(r.info.heapBytes)})` +
      (S ? ` · works at ${S}×${S} px: larger photos run by regions of up to ${S} px` : "");
    updateNotes();
  }
}

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
      button("Load", "load", () => loadModelById(m.id));
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
