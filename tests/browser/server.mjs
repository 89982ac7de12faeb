// A static server for www/ plus a stand-in for the Hugging Face Hub's two endpoints the page
// uses: the file list (`/api/models/<repo>/revision/<rev>?blobs=true`, with sizes, git blob
// ids and LFS SHA-256) and file downloads with HTTP Range (`/<repo>/resolve/<commit>/<path>`).
// Every hub request is logged so the test can assert what was fetched.
//
//   node server.mjs [port]   # serves www/ and the tiny fixtures, for trying the page by hand

import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { closeSync, createReadStream, existsSync, openSync, readdirSync, readFileSync, readSync, statSync } from "node:fs";
import { join, extname, resolve, dirname, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const TYPES = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
  ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json",
  ".png": "image/png", ".txt": "text/plain",
};
const COMMIT = "0123456789abcdef0123456789abcdef01234567";

function listFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, name.name);
    if (name.isDirectory()) out.push(...listFiles(p));
    else out.push(p);
  }
  return out;
}

// Content hashes of served files, computed once (a 1.7 GB UNet takes seconds).
const hashes = new Map();
function fileHash(path, algorithm) {
  const key = `${algorithm}:${path}:${statSync(path).mtimeMs}`;
  if (!hashes.has(key)) {
    const h = createHash(algorithm);
    const fd = openSync(path, "r");
    const buf = Buffer.alloc(16 << 20);
    let n;
    while ((n = readSync(fd, buf, 0, buf.length, null)) > 0) h.update(buf.subarray(0, n));
    closeSync(fd);
    hashes.set(key, h.digest("hex"));
  }
  return hashes.get(key);
}

// repos: { "owner/name": folder }. Returns { server, log, faults, delays, url() }.
export async function startServer({ repos, port = 0 }) {
  const log = [];
  // faults: [{ path, afterBytes }] cut the connection once, after sending afterBytes.
  const faults = [];
  // delays: { "owner/name": ms } holds every file response of that repository back (slow network).
  const delays = {};
  const server = createServer((req, res) => {
    try {
      handle(req, res);
    } catch (e) {
      res.writeHead(500).end(String(e));
    }
  });

  function handle(req, res) {
    const url = new URL(req.url, "http://localhost");
    const path = decodeURIComponent(url.pathname);
    if (path.startsWith("/hub/")) return hub(req, res, url, path.slice(4));
    let file = resolve(ROOT, "www", "." + (path === "/" ? "/index.html" : path));
    if (!file.startsWith(resolve(ROOT, "www")) || !existsSync(file) || statSync(file).isDirectory()) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "Content-Type": TYPES[extname(file)] || "application/octet-stream", "Cache-Control": "no-store" });
    res.end(readFileSync(file));
  }

  function hub(req, res, url, path) {
    let m = path.match(/^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/);
    if (m) {
      log.push({ kind: "info", repo: m[1] });
      const folder = repos[m[1]];
      if (!folder) return res.writeHead(404, { "Content-Type": "application/json" }).end('{"error":"Repository not found"}');
      const siblings = listFiles(folder).map((f) => {
        const rfilename = relative(folder, f).split("\\").join("/");
        const size = statSync(f).size;
        const s = { rfilename, size };
        if (f.endsWith(".safetensors")) {
          s.lfs = { sha256: fileHash(f, "sha256"), size, pointerSize: 134 };
        } else {
          s.blobId = createHash("sha1").update(`blob ${size}\0`).update(readFileSync(f)).digest("hex");
        }
        return s;
      });
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ id: m[1], sha: COMMIT, siblings }));
      return;
    }
    m = path.match(/^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/);
    if (!m || !repos[m[1]]) return res.writeHead(404).end("Entry not found");
    const file = resolve(repos[m[1]], m[3]);
    if (!file.startsWith(resolve(repos[m[1]])) || !existsSync(file)) return res.writeHead(404).end("Entry not found");
    const size = statSync(file).size;
    const range = req.headers.range;
    log.push({ kind: "file", repo: m[1], path: m[3], range: range || null });
    let start = 0;
    let end = size - 1;
    let status = 200;
    if (range) {
      const r = range.match(/^bytes=(\d+)-(\d*)$/);
      if (!r) return res.writeHead(416).end();
      start = Number(r[1]);
      end = r[2] ? Math.min(Number(r[2]), size - 1) : size - 1;
      status = 206;
    }
    const length = Math.max(0, end - start + 1);
    const headers = { "Content-Type": "application/octet-stream", "Content-Length": length, "Accept-Ranges": "bytes" };
    if (status === 206) headers["Content-Range"] = `bytes ${start}-${end}/${size}`;
    res.writeHead(status, headers);
    if (!length) return res.end();
    const fault = faults.findIndex((f) => f.path === m[3]);
    if (fault >= 0) {
      // The connection drops mid-body, once.
      const { afterBytes } = faults.splice(fault, 1)[0];
      createReadStream(file, { start, end: start + afterBytes - 1 })
        .on("end", () => setTimeout(() => res.destroy(), 50))
        .pipe(res, { end: false });
      return;
    }
    const send = () => createReadStream(file, { start, end }).pipe(res);
    if (delays[m[1]]) setTimeout(send, delays[m[1]]);
    else send();
  }

  await new Promise((ok) => server.listen(port, "127.0.0.1", ok));
  return {
    server, log, faults, delays,
    url: () => `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((ok) => { server.closeAllConnections(); server.close(ok); }),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const fixtures = join(ROOT, "tests/fixtures");
  const s = await startServer({
    repos: { "test/tiny-sd1": join(fixtures, "tiny-sd1"), "test/tiny-sd2": join(fixtures, "tiny-sd2") },
    port: Number(process.argv[2] || 8080),
  });
  console.log(`serving www/ on ${s.url()}/ ; hub address ${s.url()}/hub, repositories test/tiny-sd1, test/tiny-sd2`);
}
