// The engine's worker: owns the wasm module, the WebGPU device and the model store, so the page
// stays responsive while models download, load and run. Protocol (page -> worker):
//   init | list | download {endpoint, repo, revision, chunkBytes} | import {name, entries}
//   | delete {id} | load {id} | tokens {prompt} | run {width, height, rgba, mask, options} | cancel
// (run: the photo and mask at full resolution; the reply carries the result's own width and height)
// Replies carry the request's `type` plus `ok: true` / `error`, or are progress events.

import init, { Engine, Sha256, chooseFiles, gpuFaultKind, heapBytes } from "./pkg/nullpaint_web.js";
import * as store from "./store.js";

let engine = null;
let engineError = null;
let loaded = null; // { id, info }
let busy = null; // { op, abort: AbortController, cancelled }

const post = (message, transfer) => self.postMessage(message, transfer || []);

// A panic ends this WebAssembly instance: the page starts a new worker (app.js restartEngine).
// `fault`: "out-of-memory", "lost" (the GPU failing) or "" (a bug).
self.nullpaintPanic = (message, fault) => post({ type: "crashed", message, fault });

// How much of the engine's diagnostics reach the console (read by the module when it starts):
// the page's ?log=error|warn|info|debug|trace, passed on in this worker's URL.
self.nullpaintLogLevel = new URLSearchParams(self.location.search).get("log") || "warn";

async function refreshModels() {
  post({ type: "models", models: await store.listModels(), storage: await store.storageEstimate(), loaded: loaded && loaded.id });
}

async function start() {
  await init();
  store.useSha256(Sha256);
  store.useManifest(chooseFiles);
  try {
    engine = await Engine.create();
    post({ type: "ready", adapter: engine.adapter });
  } catch (e) {
    engineError = e.message || String(e);
    post({ type: "nogpu", message: engineError });
  }
  await refreshModels();
}

function requireEngine() {
  if (!engine) throw new Error(engineError || "the engine is still starting");
}

async function exclusive(op, body) {
  if (busy) throw new Error(`busy ${busy.op}; cancel it first`);
  busy = { op, abort: new AbortController(), cancelled: false };
  try {
    return await body(busy);
  } finally {
    busy = null;
  }
}

const handlers = {
  async list() {
    await refreshModels();
  },

  async download(m) {
    await exclusive("downloading", async (b) => {
      try {
        const summary = await store.downloadHub(m, (p) => post({ type: "progress", op: "download", ...p }), b.abort.signal);
        post({ type: "download", ok: true, model: summary });
      } finally {
        await refreshModels();
      }
    });
  },

  async import(m) {
    await exclusive("importing", async () => {
      try {
        const summary = await store.importLocal(m.name, m.entries, (p) => post({ type: "progress", op: "import", ...p }));
        post({ type: "import", ok: true, model: summary });
      } finally {
        await refreshModels();
      }
    });
  },

  async delete(m) {
    await exclusive("deleting", async () => {
      if (loaded && loaded.id === m.id) {
        engine.unloadModel();
        loaded = null;
      }
      await store.deleteModel(m.id, () =>
        post({ type: "progress", op: "delete", done: 0, total: 0, waiting: "another tab is storing or checking this model" }));
      post({ type: "delete", ok: true });
      await refreshModels();
    });
  },

  async load(m) {
    requireEngine();
    await exclusive("loading", async (b) => {
      const t0 = performance.now();
      const opened = await store.openModel(m.id, (p) => post({ type: "progress", op: "verify", ...p }), b.abort.signal);
      const t1 = performance.now();
      loaded = null; // the engine drops its model first, whatever happens next
      const info = engine.loadModel(opened.name, opened.files, (done, total, file) =>
        post({ type: "progress", op: "load", done, total, file }));
      info.verifySeconds = (t1 - t0) / 1000;
      info.refetched = opened.refetched;
      // Compile (and tune) every shader of a run now, so the first step is not the slow one.
      post({ type: "progress", op: "warmup", done: 0, total: 0 });
      info.warmUpSeconds = (await engine.warmUp()).seconds;
      loaded = { id: m.id, info };
      post({ type: "load", ok: true, info });
      await refreshModels();
    });
  },

  async tokens(m) {
    requireEngine();
    post({ type: "tokens", ok: true, prompt: m.prompt, ...(loaded ? engine.promptTokens(m.prompt) : {}) });
  },

  async run(m) {
    requireEngine();
    if (!loaded) throw new Error("no model is loaded: download or import one in the model manager, then load it");
    await exclusive("running", async (b) => {
      const t0 = performance.now();
      const result = await engine.inpaint(m.rgba, m.width, m.height, m.mask, m.options, (event) => {
        if (event.preview) {
          const { width, height, rgba } = event.preview;
          post({ type: "progress", op: "run", ...event, preview: { width, height, rgba } }, [rgba.buffer]);
        } else {
          post({ type: "progress", op: "run", ...event });
        }
        return !b.cancelled;
      });
      // The result's own size: the photo's, plus the extension when one was asked for.
      const { width, height, rgba } = result;
      post({ type: "run", ok: true, width, height, rgba, seconds: (performance.now() - t0) / 1000 }, [rgba.buffer]);
    });
  },

  async cancel() {
    if (busy) {
      busy.cancelled = true;
      busy.abort.abort();
    }
  },
};

const ready = start().catch((e) => post({ type: "fatal", message: `the engine failed to start: ${e.message || e}` }));

self.onmessage = async (event) => {
  const m = event.data;
  const handler = handlers[m.type];
  if (!handler) {
    post({ type: m.type, error: `unknown request ${m.type}` });
    return;
  }
  if (m.type !== "cancel") await ready;
  try {
    await handler(m);
  } catch (e) {
    const message = e && e.name === "AbortError" ? "cancelled" : (e && e.message) || String(e);
    // The GPU failing shows up as an error where the engine reads asynchronously (a panic
    // elsewhere, see nullpaintPanic): a lost device stays lost, so the page starts a new engine.
    const fault = engine && (m.type === "run" || m.type === "load") ? gpuFaultKind(message) : "";
    if (fault) {
      post({ type: "crashed", message, fault });
      return;
    }
    post({ type: m.type, error: message });
  }
  if (m.type === "run" || m.type === "load") post({ type: "heap", bytes: heapBytes() });
};
