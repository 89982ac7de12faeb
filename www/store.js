// The model store: diffusers model files kept in IndexedDB in chunks of at most 64 MB, each
// with its size and SHA-256, downloaded from the Hugging Face Hub (or any server with the same
// API) with HTTP Range requests so an interrupted download resumes where it stopped, or
// imported from local files. Loading hands the engine one Blob per file, built from the chunk
// blobs: IndexedDB keeps blobs on disk, so nothing is read into memory until the engine reads
// a tensor.
//
// Schema (database "nullpaint", version 1):
//   models: { id, name, source: { kind: "hub", endpoint, repo, revision, commit } | { kind: "local" },
//             files: [{ path, size, sha256?, gitSha1?, chunkSize, chunks: [{ size, sha256 } | null] }],
//             complete, created }
//   chunks: key [modelId, path, index] -> Blob
//
// Runs in the worker (www/worker.js); the page only sees messages.

export const CHUNK_BYTES = 64 * 1024 * 1024;
export const DEFAULT_ENDPOINT = "https://huggingface.co";
export const DEFAULT_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5";

export class StoreError extends Error {}

const mb = (n) => `${(n / 1e6).toFixed(0)} MB`;

// An incremental SHA-256 (`new Sha256()`, `update(bytes)`, `finish() -> hex`): the wasm
// module's, since WebCrypto only hashes whole buffers. Set by the worker.
let Sha256 = null;
export function useSha256(cls) {
  Sha256 = cls;
}

// Which files of a model to download or store: the wasm module's `chooseFiles`, the library's
// manifest (the CLI makes the same choice online and offline). Set by the worker.
let manifest = null;
export function useManifest(choose) {
  manifest = choose;
}

// ---- IndexedDB ---------------------------------------------------------------------------

let dbPromise = null;

function openDb() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const req = indexedDB.open("nullpaint", 1);
      req.onupgradeneeded = () => {
        const db = req.result;
        db.createObjectStore("models", { keyPath: "id" });
        db.createObjectStore("chunks");
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () =>
        reject(new StoreError(`cannot open browser storage (IndexedDB): ${req.error}. Private windows and some privacy settings disable it.`));
    });
  }
  return dbPromise;
}

function explain(error, what) {
  if (error && error.name === "QuotaExceededError") {
    return new StoreError(
      `browser storage is full while ${what}. Delete cached models in the model manager, free disk space, ` +
      `or allow this site more storage (Chrome lets a site use up to 60% of the free disk; private windows much less).`,
    );
  }
  return new StoreError(`browser storage failed while ${what}: ${error}`);
}

// One writer per model across every tab and worker of this origin (Web Locks). Without it two
// tabs downloading the same model both fetch every chunk and each rewrites the model record
// from its own copy, and a delete or re-import in one tab under a download in the other leaves
// a record whose chunks are gone. A tab that finds the model locked says so through
// `onWait()` and waits; it then re-reads the record, so it resumes from what the other tab
// stored. IndexedDB transactions alone cannot give this: a download spans many of them.
async function withModelLock(id, onWait, body) {
  const locks = globalThis.navigator && navigator.locks;
  if (!locks) return body(); // no Web Locks (very old browsers): one tab at a time is on the user
  const name = `nullpaint-model:${id}`;
  const first = await locks.request(name, { ifAvailable: true }, async (lock) => (lock ? { value: await body() } : null));
  if (first) return first.value;
  if (onWait) onWait();
  return locks.request(name, () => body());
}

async function tx(stores, mode, body, what) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    let result;
    let t;
    try {
      t = db.transaction(stores, mode);
    } catch (e) {
      reject(explain(e, what));
      return;
    }
    t.oncomplete = () => resolve(result);
    t.onabort = t.onerror = () => reject(explain(t.error, what));
    Promise.resolve(body(t)).then((r) => (result = r), (e) => {
      try { t.abort(); } catch (_) { /* already finished */ }
      reject(e);
    });
  });
}

function req(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

export async function listModels() {
  const models = await tx(["models"], "readonly", (t) => req(t.objectStore("models").getAll()), "listing models");
  return models.map(summary);
}

function summary(m) {
  return { id: m.id, name: m.name, source: m.source, total: totalBytes(m.files), stored: storedBytes(m.files), complete: m.complete, created: m.created };
}

function totalBytes(files) {
  return files.reduce((s, f) => s + f.size, 0);
}

function storedBytes(files) {
  return files.reduce((s, f) => s + f.chunks.reduce((c, k) => c + (k ? k.size : 0), 0), 0);
}

// Refuses to start storing `needed` more bytes when the site's quota cannot hold them.
async function ensureRoom(name, needed) {
  const estimate = await storageEstimate();
  if (estimate && estimate.quota - estimate.usage < needed * 1.02) {
    throw new StoreError(
      `${name} needs ${mb(needed)} more of browser storage but only ${mb(estimate.quota - estimate.usage)} is left to this site. ` +
      `Delete cached models, free disk space (browsers give a site a share of the free disk), or leave private browsing.`);
  }
}

async function getModel(id) {
  return tx(["models"], "readonly", (t) => req(t.objectStore("models").get(id)), "reading the model list");
}

async function putModel(model) {
  return tx(["models"], "readwrite", (t) => req(t.objectStore("models").put(model)), `saving ${model.name}`);
}

async function putChunk(model, file, index, blob, sha256) {
  file.chunks[index] = { size: blob.size, sha256 };
  model.complete = model.files.every(isComplete);
  await tx(["models", "chunks"], "readwrite", (t) => {
    t.objectStore("chunks").put(blob, [model.id, file.path, index]);
    t.objectStore("models").put(model);
  }, `storing ${file.path}`);
}

async function getChunk(modelId, path, index) {
  return tx(["chunks"], "readonly", (t) => req(t.objectStore("chunks").get([modelId, path, index])), `reading ${path}`);
}

export async function deleteModel(id, onWait) {
  await withModelLock(id, onWait, () => deleteRecords(id));
}

async function deleteRecords(id) {
  await tx(["models", "chunks"], "readwrite", (t) => {
    t.objectStore("models").delete(id);
    t.objectStore("chunks").delete(IDBKeyRange.bound([id], [id, []]));
  }, "deleting a model");
}

function chunkCount(size, chunkSize) {
  return Math.max(1, Math.ceil(size / chunkSize));
}

function chunkRange(file, index) {
  const start = index * file.chunkSize;
  return [start, Math.min(file.size, start + file.chunkSize)];
}

function isComplete(file) {
  return file.chunks.length === chunkCount(file.size, file.chunkSize) && file.chunks.every((c) => c);
}

export async function sha256Hex(data) {
  const digest = await crypto.subtle.digest("SHA-256", data);
  return hex(digest);
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

// Git's blob id of a small file (the hub reports it for files not in LFS).
async function gitSha1(bytes) {
  const head = new TextEncoder().encode(`blob ${bytes.byteLength}\0`);
  const all = new Uint8Array(head.length + bytes.byteLength);
  all.set(head);
  all.set(new Uint8Array(bytes), head.length);
  return hex(await crypto.subtle.digest("SHA-1", all));
}

// ---- choosing files ------------------------------------------------------------------------

// The files of a model the engine reads, among `available` paths: a diffusers folder's configs,
// one tokenizer form and one weight file (fp16 variant preferred) or index + shards per
// component; or one single-file checkpoint. Throws a StoreError saying what is missing.
export function chooseFiles(available, name) {
  if (!manifest) throw new StoreError("the engine module is not loaded yet");
  try {
    return manifest([...available], name);
  } catch (e) {
    throw new StoreError(e.message || String(e));
  }
}

// ---- downloads -------------------------------------------------------------------------------

export function hubId(endpoint, repo, revision) {
  return `hub:${endpoint.replace(/\/+$/, "")}/${repo}@${revision}`;
}

async function fetchOk(url, init, what) {
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    throw new StoreError(`cannot reach ${new URL(url).host} for ${what} (offline, or blocked): ${e.message}`);
  }
  if (response.status === 401 || response.status === 403) {
    throw new StoreError(`${what}: access denied (HTTP ${response.status}); gated or private repositories need to be downloaded elsewhere and imported as files`);
  }
  if (response.status === 404) throw new StoreError(`${what}: not found (HTTP 404); check the repository id and revision`);
  if (!response.ok) throw new StoreError(`${what}: HTTP ${response.status} ${response.statusText}`);
  return response;
}

// Downloads (or resumes) a hub model. `progress({ done, total, file })`; `signal` aborts.
// Only chunks not already stored are fetched.
export async function downloadHub({ endpoint, repo, revision = "main", chunkBytes = CHUNK_BYTES }, progress, signal) {
  endpoint = (endpoint || DEFAULT_ENDPOINT).replace(/\/+$/, "");
  repo = repo.trim();
  if (!/^[\w.-]+\/[\w.-]+$/.test(repo)) throw new StoreError(`"${repo}" is not a repository id (owner/name)`);
  if (!(chunkBytes > 0 && chunkBytes <= CHUNK_BYTES)) throw new StoreError(`chunk size must be 1 byte to 64 MB`);
  const id = hubId(endpoint, repo, revision);
  const waiting = () => progress({ done: 0, total: 0, file: null, waiting: "another tab is storing or checking this model" });
  return withModelLock(id, waiting, () => downloadLocked(id, endpoint, repo, revision, chunkBytes, progress, signal));
}

async function downloadLocked(id, endpoint, repo, revision, chunkBytes, progress, signal) {
  let model = await getModel(id);
  if (!model) {
    const infoUrl = `${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`;
    const info = await (await fetchOk(infoUrl, { signal }, `the file list of ${repo}`)).json();
    const siblings = new Map((info.siblings || []).map((s) => [s.rfilename, s]));
    const paths = chooseFiles(new Set(siblings.keys()), repo);
    const files = paths.map((path) => {
      const s = siblings.get(path);
      const size = s.lfs ? s.lfs.size : s.size;
      if (!(size >= 0)) throw new StoreError(`the hub did not give the size of ${path}`);
      return {
        path, size,
        sha256: s.lfs ? s.lfs.sha256 : null,
        gitSha1: s.lfs ? null : s.blobId || null,
        chunkSize: chunkBytes,
        chunks: new Array(chunkCount(size, chunkBytes)).fill(null),
      };
    });
    model = {
      id, name: repo, created: Date.now(), complete: false, files,
      source: { kind: "hub", endpoint, repo, revision, commit: info.sha || revision },
    };
    await putModel(model);
  }
  const total = totalBytes(model.files);
  let done = storedBytes(model.files);
  await ensureRoom(repo, total - done);
  progress({ done, total, file: null });
  for (const file of model.files) {
    for (let i = 0; i < file.chunks.length; i++) {
      if (file.chunks[i]) continue;
      const n = await fetchChunk(model, file, i, (bytes) => progress({ done: done + bytes, total, file: file.path }), signal);
      done += n;
    }
    await verifyWholeFile(model, file);
  }
  progress({ done, total, file: null });
  return summary(model);
}

// Fetches one chunk with a Range request and stores it; `expectedSha256` (a re-fetch of a
// chunk that was verified before) must match, else the file changed on the server.
async function fetchChunk(model, file, index, onBytes, signal, expectedSha256 = null) {
  const { endpoint, repo, commit } = model.source;
  const [start, end] = chunkRange(file, index);
  const url = `${endpoint}/${repo}/resolve/${encodeURIComponent(commit)}/${file.path}`;
  const headers = file.size > 0 ? { Range: `bytes=${start}-${end - 1}` } : {};
  const response = await fetchOk(url, { headers, signal, cache: "no-store" }, `${file.path}`);
  const parts = [];
  let received = 0;
  const reader = response.body.getReader();
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      if (signal && signal.aborted) throw e;
      throw new StoreError(`the connection broke while downloading ${file.path} (${e.message}); what was stored is kept, press Resume to continue`);
    }
    if (chunk.done) break;
    parts.push(chunk.value);
    received += chunk.value.byteLength;
    onBytes(Math.min(received, end - start));
  }
  let bytes = new Uint8Array(received);
  let offset = 0;
  for (const p of parts) { bytes.set(p, offset); offset += p.byteLength; }
  if (response.status === 200 && received === file.size && end - start !== file.size) {
    bytes = bytes.slice(start, end); // a server that ignores Range sends the whole file
  }
  if (bytes.byteLength !== end - start) {
    throw new StoreError(`${file.path}: expected ${end - start} bytes at ${start}, got ${bytes.byteLength}; the file on the server changed or the connection broke, try again`);
  }
  const sha = await sha256Hex(bytes);
  if (expectedSha256 && sha !== expectedSha256) {
    throw new StoreError(`${file.path} changed on the server since it was downloaded; delete the model and download it again`);
  }
  await putChunk(model, file, index, new Blob([bytes]), sha);
  return bytes.byteLength;
}

// After the last chunk of a file: the whole file against the hub's SHA-256 (LFS files) or git
// blob id (small files). On mismatch the file's chunks are dropped so a retry fetches it again.
async function verifyWholeFile(model, file) {
  if (file.verified) return;
  let ok = true;
  if (file.gitSha1) {
    const blob = await fileBlob(model, file);
    ok = (await gitSha1(await blob.arrayBuffer())) === file.gitSha1;
  } else if (file.sha256 && file.chunks.length === 1) {
    ok = file.chunks[0].sha256 === file.sha256;
  } else if (file.sha256 && Sha256) {
    const hasher = new Sha256();
    for (let i = 0; i < file.chunks.length; i++) {
      const bytes = new Uint8Array(await (await getChunk(model.id, file.path, i)).arrayBuffer());
      // In 8 MB pieces: each is copied into wasm memory, which never shrinks.
      for (let o = 0; o < bytes.byteLength; o += 8 << 20) hasher.update(bytes.subarray(o, o + (8 << 20)));
    }
    ok = hasher.finish() === file.sha256;
  }
  if (!ok) {
    file.chunks = file.chunks.map(() => null);
    model.complete = false;
    await putModel(model);
    throw new StoreError(`${file.path} does not match the hub's checksum; its stored copy was dropped, download again`);
  }
  file.verified = true;
  await putModel(model);
}

// ---- local files -------------------------------------------------------------------------------

// Imports a diffusers folder picked or dropped by the user: `entries` are { path, file } with
// paths inside the folder (the top folder name is stripped by the page).
export async function importLocal(name, entries, progress, chunkBytes = CHUNK_BYTES) {
  const byPath = new Map(entries.map((e) => [e.path, e.file]));
  const paths = chooseFiles(new Set(byPath.keys()), name);
  const id = `local:${name}`;
  const waiting = () => progress({ done: 0, total: 0, file: null, waiting: "another tab is storing or checking this model" });
  return withModelLock(id, waiting, () => importLocked(id, name, byPath, paths, progress, chunkBytes));
}

async function importLocked(id, name, byPath, paths, progress, chunkBytes) {
  await deleteRecords(id);
  const files = paths.map((path) => {
    const size = byPath.get(path).size;
    return { path, size, sha256: null, gitSha1: null, chunkSize: chunkBytes, chunks: new Array(chunkCount(size, chunkBytes)).fill(null) };
  });
  const total = totalBytes(files);
  await ensureRoom(name, total);
  const model = { id, name, created: Date.now(), complete: false, files, source: { kind: "local" } };
  await putModel(model);
  let done = 0;
  for (const file of files) {
    const source = byPath.get(file.path);
    for (let i = 0; i < file.chunks.length; i++) {
      const [start, end] = chunkRange(file, i);
      const bytes = await source.slice(start, end).arrayBuffer();
      await putChunk(model, file, i, new Blob([bytes]), await sha256Hex(bytes));
      done += end - start;
      progress({ done, total, file: file.path });
    }
    file.verified = true;
  }
  await putModel(model);
  return summary(model);
}

// ---- opening a stored model --------------------------------------------------------------------

async function fileBlob(model, file) {
  const parts = [];
  for (let i = 0; i < file.chunks.length; i++) parts.push(await getChunk(model.id, file.path, i));
  return new Blob(parts);
}

// Checks every stored chunk (size and SHA-256) and fetches again only those that are missing
// or damaged (hub models; a damaged local import has to be imported again). Returns
// { name, files: Map<path, Blob>, refetched: [paths with chunk indices] }.
export async function openModel(id, progress, signal) {
  const waiting = () => progress({ done: 0, total: 0, file: null, waiting: "another tab is storing or checking this model" });
  return withModelLock(id, waiting, () => openLocked(id, progress, signal));
}

async function openLocked(id, progress, signal) {
  const model = await getModel(id);
  if (!model) throw new StoreError(`model ${id} is not in browser storage`);
  const total = totalBytes(model.files);
  let done = 0;
  const refetched = [];
  const files = new Map();
  for (const file of model.files) {
    const parts = [];
    for (let i = 0; i < file.chunks.length; i++) {
      const [start, end] = chunkRange(file, i);
      const meta = file.chunks[i];
      let blob = meta ? await getChunk(model.id, file.path, i) : null;
      let ok = false;
      if (blob && meta && blob.size === end - start) {
        ok = (await sha256Hex(await blob.arrayBuffer())) === meta.sha256;
      }
      if (!ok) {
        if (model.source.kind !== "hub") {
          throw new StoreError(`${model.name}: the stored copy of ${file.path} is damaged; import the model again`);
        }
        file.chunks[i] = null;
        await fetchChunk(model, file, i, () => {}, signal, meta ? meta.sha256 : null);
        refetched.push(`${file.path}#${i}`);
        blob = await getChunk(model.id, file.path, i);
      }
      parts.push(blob);
      done += end - start;
      progress({ done, total, file: file.path, phase: "verifying" });
    }
    files.set(file.path, new Blob(parts));
  }
  return { name: model.name, files, refetched };
}

export async function storageEstimate() {
  if (!navigator.storage || !navigator.storage.estimate) return null;
  const { usage, quota } = await navigator.storage.estimate();
  const persisted = navigator.storage.persisted ? await navigator.storage.persisted() : false;
  return { usage, quota, persisted };
}
