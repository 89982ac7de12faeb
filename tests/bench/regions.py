#!/usr/bin/env python3
"""Benchmark: a big photo with a small hole costs what a 512x512 run costs (region inpainting).

Runs the `nullpaint` CLI alternately on a 512x512 photo and on a 4000x3000 photo, each with a
300x300-pixel hole, same model, steps and seed (A B A B ...), and records per run the wall time,
the CLI's own load / inpaint times and the child's peak RSS (plus the GPU's peak memory when
`nvidia-smi` exists and the backend is not `cpu`). It prints the medians, the ratios large/small
and PASS/FAIL against the acceptance limits (time <= 1.3x, peak memory <= 1.10x). A benchmark, not
a test: the exit status is 0 on FAIL too; it is 1 only when a run itself failed.

    python3 tests/bench/regions.py [--cli PATH] [--model DIR] [--steps 2] [--pairs 2]
                                   [--backend cpu|wgpu|auto] [--out DIR] [--markdown]

Defaults: the release CLI in $CARGO_TARGET_DIR (default ~/.cache/nullpaint/target), built with
`cargo build --release -p nullpaint-cli`; a full-size SD 1.5 folder with random f16 weights
(2.1 GB) in ~/.cache/nullpaint/sd15-random, made once with tests/browser/make_full_size_model.py
when missing. Outputs are meaningless with random weights; the cost is the real model's.

The inputs are written by this script (Python 3 stdlib only: zlib + struct): PNG photos (sky and
ground gradients, a few shapes, low-bit grain so the file is not trivially compressible; stdlib
has no JPEG encoder, so no JPEG) and 8-bit gray PNG masks (white = hole) with the hole off-centre,
over a dark disk. The model files are read once before the runs so that the first run does not
pay for a cold page cache.
"""

import argparse
import datetime
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIME_LIMIT = 1.3  # large / small, median wall time
MEMORY_LIMIT = 1.10  # large / small, median peak memory
CACHE = Path.home() / ".cache" / "nullpaint"
EXE = ".exe" if os.name == "nt" else ""


# ---------------------------------------------------------------------------------------------
# PNG writing (8-bit RGB or gray, filter None, streamed into 1 MiB IDAT chunks)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, width: int, height: int, channels: int, rows, level: int = 6) -> int:
    """Writes rows (an iterable of `height` byte strings of width * channels bytes); returns the
    file size. Written to PATH.partial first, then renamed."""
    color_type = {1: 0, 3: 2}[channels]
    tmp = path.with_name(path.name + ".partial")
    comp = zlib.compressobj(level)
    pending, pending_len, count = [], 0, 0
    with open(tmp, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)))

        def flush(final: bool = False) -> None:
            nonlocal pending, pending_len
            if pending_len >= (1 << 20) or (final and pending_len):
                f.write(_chunk(b"IDAT", b"".join(pending)))
                pending, pending_len = [], 0

        for row in rows:
            if len(row) != width * channels:
                raise ValueError(f"row {count}: {len(row)} bytes, expected {width * channels}")
            for part in (comp.compress(b"\x00"), comp.compress(row)):
                if part:
                    pending.append(part)
                    pending_len += len(part)
            flush()
            count += 1
        if count != height:
            raise ValueError(f"{count} rows, expected {height}")
        pending.append(comp.flush())
        pending_len += len(pending[-1])
        flush(final=True)
        f.write(_chunk(b"IEND", b""))
    tmp.replace(path)
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------
# The inputs: a "photo" and its mask, built row by row with bytes operations (no per-pixel loop)


def hole_box(width: int, height: int, hole: int) -> tuple:
    """(x0, y0) of the square hole: off-centre, right of and above the middle, inside the photo."""
    x0 = min(max(0, width * 68 // 100 - hole // 2), width - hole)
    y0 = min(max(0, height * 38 // 100 - hole // 2), height - hole)
    return x0, y0


def _ramp(n: int, a: float, b: float) -> bytes:
    """n bytes going linearly from a to b."""
    d = (b - a) / max(1, n - 1)
    return bytes(int(a + d * i + 0.5) for i in range(n))


def _shift_table(offset: int) -> bytes:
    """A bytes.translate table adding offset, clamped to 0..255."""
    return bytes(min(255, max(0, v + offset)) for v in range(256))


def photo_rows(width: int, height: int, hole: int, grain: int, seed: int = 1):
    """Yields the RGB rows of a synthetic landscape: a sky and a ground gradient, a sun, a house
    with a window, a dark disk (the object to remove) under the hole, and `grain` random low bits
    per channel (0: perfectly smooth)."""
    w, h = width, height
    horizon = h * 3 // 5
    sky_r, sky_b = _ramp(w, 70, 150), _ramp(w, 235, 190)
    ground_r, ground_g = _ramp(w, 60, 110), _ramp(w, 120, 90)
    tables: dict = {}

    def table(offset: int) -> bytes:
        if offset not in tables:
            tables[offset] = _shift_table(offset)
        return tables[offset]

    s = min(w, h)
    hx, hy = hole_box(w, h, hole)
    # (kind, colour, geometry): disks (cx, cy, r), rectangles (x0, y0, x1, y1)
    shapes = [
        ("disk", bytes((250, 220, 120)), (w * 18 // 100, h * 16 // 100, s * 7 // 100)),
        ("rect", bytes((150, 95, 70)), (w * 8 // 100, horizon - s * 22 // 100, w * 30 // 100, horizon + s * 4 // 100)),
        ("rect", bytes((40, 50, 70)), (w * 14 // 100, horizon - s * 15 // 100, w * 19 // 100, horizon - s * 8 // 100)),
        ("disk", bytes((35, 30, 40)), (hx + hole // 2, hy + hole // 2, hole * 2 // 5)),
    ]
    rng = random.Random(seed)
    keep = bytes([(0xFF << grain) & 0xFF]) * (3 * w)
    keep_int = int.from_bytes(keep, "little")
    low_int = int.from_bytes(bytes([(1 << grain) - 1]) * (3 * w), "little")
    for y in range(h):
        row = bytearray(3 * w)
        band = y * 64 // h  # the per-row colour changes in 64 bands: long runs of equal rows
        if y < horizon:
            row[0::3] = sky_r
            row[1::3] = bytes([150 + band]) * w
            row[2::3] = sky_b.translate(table(-band // 2))
        else:
            row[0::3] = ground_r.translate(table(band - 40))
            row[1::3] = ground_g.translate(table(40 - band))
            row[2::3] = bytes([40 + band // 2]) * w
        for kind, colour, g in shapes:
            if kind == "disk":
                cx, cy, r = g
                if abs(y - cy) > r:
                    continue
                dx = int((r * r - (y - cy) ** 2) ** 0.5)
                x0, x1 = max(0, cx - dx), min(w, cx + dx + 1)
            else:
                x0, y0, x1, y1 = g
                if not y0 <= y < y1:
                    continue
                x0, x1 = max(0, x0), min(w, x1)
            if x1 > x0:
                row[3 * x0 : 3 * x1] = colour * (x1 - x0)
        if grain:
            v = int.from_bytes(row, "little") & keep_int
            v |= int.from_bytes(rng.randbytes(3 * w), "little") & low_int
            yield v.to_bytes(3 * w, "little")
        else:
            yield bytes(row)


def mask_rows(width: int, height: int, hole: int):
    x0, y0 = hole_box(width, height, hole)
    empty = bytes(width)
    hole_row = bytes(x0) + b"\xff" * hole + bytes(width - x0 - hole)
    for y in range(height):
        yield hole_row if y0 <= y < y0 + hole else empty


def make_inputs(out: Path, name: str, width: int, height: int, hole: int, grain: int) -> dict:
    t0 = time.perf_counter()
    image, mask = out / f"{name}.png", out / f"{name}-mask.png"
    image_bytes = write_png(image, width, height, 3, photo_rows(width, height, hole, grain))
    t1 = time.perf_counter()
    mask_bytes = write_png(mask, width, height, 1, mask_rows(width, height, hole))
    t2 = time.perf_counter()
    return {
        "name": name, "width": width, "height": height, "hole": hole,
        "hole_at": hole_box(width, height, hole), "image": image, "mask": mask,
        "image_bytes": image_bytes, "mask_bytes": mask_bytes,
        "image_s": t1 - t0, "mask_s": t2 - t1,
    }


# ---------------------------------------------------------------------------------------------
# Running the CLI: wall time, peak RSS of the child (wait4), optional GPU memory sampling

RE_DONE = re.compile(
    r"in (?P<total>[\d.]+) s: load (?P<load>[\d.]+) s, inpaint (?P<inpaint>[\d.]+) s "
    r"\((?:(?P<regions>\d+) regions x )?(?P<steps>\d+) steps, (?P<per_step>[\d.]+) s/step\)"
)
RE_REGION = re.compile(
    r"^region (\d+)/(\d+): (\d+)x(\d+) at \((\d+), (\d+)\)(?:, runs at (\d+)x(\d+))?, seed (\d+)",
    re.M,
)
RE_DEVICE = re.compile(r"^device: (.*)$", re.M)


class GpuSampler:
    """Peak of `nvidia-smi`'s used memory (MiB, the largest over the GPUs) minus its value before
    the run, sampled every 0.2 s. Device-wide: other processes on the GPU count too."""

    def __init__(self, exe: str):
        self.exe = exe
        self.base = self.query()
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def query(self) -> list:
        try:
            out = subprocess.run(
                [self.exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10,
            ).stdout
            return [int(v) for v in out.split()]
        except (OSError, ValueError, subprocess.SubprocessError):
            return []

    def loop(self) -> None:
        while not self.stop.wait(0.2):
            now = self.query()
            for used, base in zip(now, self.base):
                self.peak = max(self.peak, used - base)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _windows_peak_rss(proc) -> int:
    """Peak working set of an exited child on Windows (its handle is still open); 0 if unknown."""
    try:
        import ctypes
        from ctypes import wintypes

        class Counters(ctypes.Structure):
            _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
                (n, ctypes.c_size_t)
                for n in ("PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                          "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage",
                          "QuotaNonPagedPoolUsage", "PagefileUsage", "PeakPagefileUsage")
            ]

        c = Counters()
        c.cb = ctypes.sizeof(c)
        if ctypes.windll.psapi.GetProcessMemoryInfo(int(proc._handle), ctypes.byref(c), c.cb):
            return int(c.PeakWorkingSetSize)
    except Exception:  # noqa: BLE001 (best effort)
        pass
    return 0


def run_cli(cmd: list, log: Path, gpu: str) -> dict:
    """Runs cmd with stdout + stderr into log; returns rc, wall s, peak RSS bytes, peak GPU MiB."""
    sampler = GpuSampler(gpu) if gpu else None
    with open(log, "wb") as f:
        if sampler:
            sampler.__enter__()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            # ru_maxrss: KiB on Linux and the BSDs, bytes on macOS
            rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        else:
            proc.wait()
            wall = time.perf_counter() - t0
            rss = _windows_peak_rss(proc)
        if sampler:
            sampler.__exit__()
    text = log.read_text(errors="replace")
    result = {"rc": proc.returncode, "wall": wall, "rss": rss, "log": text,
              "gpu_mib": sampler.peak if sampler and sampler.base else None}
    m = RE_DONE.search(text)
    if m:
        result.update(load=float(m["load"]), inpaint=float(m["inpaint"]),
                      per_step=float(m["per_step"]), total=float(m["total"]))
    result["regions"] = [
        {"w": int(g[2]), "h": int(g[3]), "x": int(g[4]), "y": int(g[5]),
         "run": (int(g[6]), int(g[7])) if g[6] else (int(g[2]), int(g[3]))}
        for g in RE_REGION.findall(text)
    ]
    d = RE_DEVICE.search(text)
    result["device"] = d[1].strip() if d else None
    return result


# ---------------------------------------------------------------------------------------------
# Machine description


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    return platform.processor() or platform.machine() or "unknown"


def memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def cores() -> str:
    logical = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    return f"{usable} usable of {logical}" if usable != logical else str(logical)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cli_version(cli: str) -> str:
    try:
        p = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=60)
        return (p.stdout or p.stderr).strip() or f"(exit {p.returncode})"
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"


# ---------------------------------------------------------------------------------------------


def size_arg(text: str) -> tuple:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")
    return int(m[1]), int(m[2])


def default_cli() -> str:
    target = os.environ.get("CARGO_TARGET_DIR") or str(CACHE / "target")
    return str(Path(target) / "release" / f"nullpaint{EXE}")


def ensure_default_model(model: Path) -> None:
    """Makes the random-weight SD 1.5 folder once (model_index.json is its last file)."""
    if (model / "model_index.json").is_file():
        return
    script = ROOT / "tests/browser/make_full_size_model.py"
    print(f"making a random-weight SD 1.5 folder (2.1 GB, once) in {model} ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(script), str(model)], check=True)
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)


def warm_page_cache(model: Path) -> tuple:
    """Reads every file of the model folder once; returns (bytes, seconds)."""
    t0, total = time.perf_counter(), 0
    for path in sorted(model.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    total += len(chunk)
    return total, time.perf_counter() - t0


def fmt(v, spec: str = ".2f") -> str:
    """format(v, spec), or "-" right-aligned to the spec's width when v is None."""
    width = re.match(r"\d*", spec)[0]
    return format(v, spec) if v is not None else format("-", f">{width}" if width else "")


def mib(b) -> str:
    return "-" if not b else f"{b / 2 ** 20:.0f}"


def median_of(runs: list, key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def verdict(ratio, limit) -> str:
    if ratio is None:
        return "n/a"
    return "PASS" if ratio <= limit else "FAIL"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 when every run worked (whether the ratios PASS or FAIL), 1 when a run failed.",
    )
    ap.add_argument("--cli", default=default_cli(),
                    help="the nullpaint binary (default: $CARGO_TARGET_DIR/release/nullpaint, "
                         "CARGO_TARGET_DIR defaulting to ~/.cache/nullpaint/target)")
    ap.add_argument("--model", type=Path, default=None,
                    help="diffusers model folder (default: a random-weight SD 1.5 in "
                         "~/.cache/nullpaint/sd15-random, made when missing)")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps per run (default 2)")
    ap.add_argument("--pairs", type=int, default=2,
                    help="small/large pairs, run alternately A B A B (default 2)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="unrecorded small runs before the pairs (default 0)")
    ap.add_argument("--backend", choices=("cpu", "wgpu", "auto"), default="cpu")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for the inputs, outputs and logs (kept; default: a temporary "
                         "folder, removed at the end unless a run failed)")
    ap.add_argument("--markdown", action="store_true", help="also print Markdown tables for README")
    ap.add_argument("--small", type=size_arg, default=(512, 512), metavar="WxH",
                    help="the reference photo (default 512x512)")
    ap.add_argument("--large", type=size_arg, default=(4000, 3000), metavar="WxH",
                    help="the big photo (default 4000x3000)")
    ap.add_argument("--hole", type=int, default=300, help="side of the square hole in px (default 300)")
    ap.add_argument("--grain", type=int, default=2, choices=range(0, 9), metavar="BITS",
                    help="random low bits per channel in the photos, 0-8 (default 2; 0 = smooth)")
    ap.add_argument("--prompt", default="a wooden bench")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cli-args", default="",
                    help="extra CLI options for every run, one string (e.g. \"--precision f16\")")
    ap.add_argument("--gpu-memory", choices=("auto", "off"), default="auto",
                    help="auto: sample nvidia-smi's used memory when the backend is not cpu")
    args = ap.parse_args()

    if args.steps < 1 or args.pairs < 1 or args.warmup < 0:
        ap.error("--steps and --pairs must be at least 1, --warmup at least 0")
    for name, (w, h) in (("--small", args.small), ("--large", args.large)):
        if args.hole < 1 or args.hole > min(w, h):
            ap.error(f"--hole {args.hole} does not fit the {name} photo {w}x{h}")
    cli = args.cli
    if not Path(cli).is_file():
        print(f"error: no CLI at {cli}: build it with `cargo build --release -p nullpaint-cli` "
              "or pass --cli PATH", file=sys.stderr)
        return 1

    model_note = ""
    if args.model is None:
        model = CACHE / "sd15-random"
        ensure_default_model(model)
        model_note = " (SD 1.5 architecture, random f16 weights)"
    else:
        model = args.model
        if not model.is_dir():
            print(f"error: --model {model} is not a folder", file=sys.stderr)
            return 1

    temporary = args.out is None
    out = Path(tempfile.mkdtemp(prefix="nullpaint-regions-")) if temporary else args.out
    out.mkdir(parents=True, exist_ok=True)

    gpu = ""
    if args.backend != "cpu" and args.gpu_memory == "auto":
        gpu = shutil.which("nvidia-smi") or ""

    # --- header
    started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    info = {
        "date": started.isoformat(),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "cli": f"{cli} ({cli_version(cli)}, repo {git_revision()})",
        "machine": f"{cpu_model()}, {cores()} cores, {memory_total()} RAM, {platform.platform()}",
        "model": f"{model}{model_note}",
        "settings": f"--steps {args.steps} --seed {args.seed} --backend {args.backend}"
                    + (f" {args.cli_args}" if args.cli_args else "")
                    + f", prompt {args.prompt!r}, {args.pairs} pair(s), {args.warmup} warm-up run(s)",
    }
    print("nullpaint region benchmark")
    for k, v in info.items():
        print(f"  {k + ':':10} {v}")
    if gpu:
        print(f"  {'gpu:':10} peak memory sampled with {gpu} (device-wide, minus the idle value)")
    print(f"  {'files:':10} {out}" + (" (temporary)" if temporary else ""))

    # --- inputs
    print("\ninputs (PNG, written by this script):")
    inputs = {}
    for key, (w, h) in (("small", args.small), ("large", args.large)):
        inp = make_inputs(out, f"{key}-{w}x{h}", w, h, args.hole, args.grain)
        inputs[key] = inp
        print(f"  {w}x{h} photo: {inp['image_bytes'] / 1e6:.1f} MB in {inp['image_s']:.2f} s; "
              f"mask: {inp['mask_bytes'] / 1e3:.1f} kB in {inp['mask_s']:.2f} s; "
              f"hole {args.hole}x{args.hole} at {inp['hole_at']}")

    nbytes, secs = warm_page_cache(model)
    print(f"\nmodel files read once (page cache): {nbytes / 1e9:.2f} GB in {secs:.1f} s")

    # --- runs
    extra = shlex.split(args.cli_args)

    def command(inp: dict, tag: str) -> list:
        return [cli, "inpaint", "--model", str(model), "--image", str(inp["image"]),
                "--mask", str(inp["mask"]), "--prompt", args.prompt, "--steps", str(args.steps),
                "--seed", str(args.seed), "--backend", args.backend,
                "--output", str(out / f"{inp['name']}-{tag}.out.png"), *extra]

    schedule = [("small", f"w{i + 1}", False) for i in range(args.warmup)]
    for i in range(args.pairs):
        schedule += [("small", f"A{i + 1}", True), ("large", f"B{i + 1}", True)]

    head = (f"  {'run':6} {'photo':>10} {'wall s':>8} {'load s':>7} {'inpaint s':>9} {'s/step':>7} "
            f"{'peak RSS MiB':>12}" + (f" {'GPU MiB':>8}" if gpu else "") + "  regions (box@(x,y) -> run size)")
    print(f"\nruns ({'warm-up w, ' if args.warmup else ''}small A, large B):")
    print(head)
    runs = {"small": [], "large": []}
    failed = False
    for key, tag, recorded in schedule:
        inp = inputs[key]
        cmd = command(inp, tag)
        r = run_cli(cmd, out / f"{inp['name']}-{tag}.log", gpu)
        r.update(tag=tag, key=key, size=f"{inp['width']}x{inp['height']}")
        regions = ", ".join(f"{g['w']}x{g['h']}@({g['x']},{g['y']})->{g['run'][0]}x{g['run'][1]}"
                            for g in r["regions"]) or "(none printed)"
        print(f"  {tag:6} {r['size']:>10} {r['wall']:8.2f} {fmt(r.get('load'), '7.1f')} "
              f"{fmt(r.get('inpaint'), '9.1f')} {fmt(r.get('per_step'), '7.2f')} {mib(r['rss']):>12}"
              + (f" {fmt(r['gpu_mib'], '8d')}" if gpu else "") + f"  {regions}", flush=True)
        if r["rc"] != 0:
            failed = True
            print(f"\nerror: run {tag} exited with status {r['rc']}: {shlex.join(cmd)}", file=sys.stderr)
            print("".join(r["log"].splitlines(True)[-20:]), file=sys.stderr)
            break
        if "load" not in r:
            print(f"    (no timing line in the CLI's output; wall time only)")
        if recorded:
            runs[key].append(r)
    if failed:
        print(f"files kept in {out}", file=sys.stderr)
        return 1
    device = next((r["device"] for r in runs["small"] if r["device"]), None)
    if device:
        print(f"  device: {device}")

    # --- summary
    med = {k: {m: median_of(runs[k], m) for m in ("wall", "load", "inpaint", "rss", "gpu_mib")}
           for k in runs}
    for k in runs:
        med[k]["work"] = median_of([{"work": r["wall"] - r["load"]} for r in runs[k] if "load" in r], "work")

    def ratio(m: str):
        a, b = med["small"][m], med["large"][m]
        return b / a if a and b is not None else None

    s, l = inputs["small"], inputs["large"]
    sname, lname = f"{s['width']}x{s['height']}", f"{l['width']}x{l['height']}"
    rows = [
        ("time (wall s)", "wall", ".2f", TIME_LIMIT, True),
        ("time without model load (s)", "work", ".2f", TIME_LIMIT, False),
        ("inpaint time (CLI, s)", "inpaint", ".1f", TIME_LIMIT, False),
        ("peak RSS (MiB)", "rss", None, MEMORY_LIMIT, True),
    ]
    if gpu:
        rows.append(("peak GPU memory (MiB)", "gpu_mib", ".0f", MEMORY_LIMIT, True))
    print(f"\nmedians of {args.pairs} run(s) each, ratio = {lname} / {sname}:")
    print(f"  {'':30} {sname:>10} {lname:>10} {'ratio':>7} {'limit':>6}  verdict")
    verdicts = []
    for label, m, spec, limit, judged in rows:
        r = ratio(m)
        a, b = med["small"][m], med["large"][m]
        av, bv = (mib(a), mib(b)) if spec is None else (fmt(a, spec), fmt(b, spec))
        v = verdict(r, limit)
        verdicts.append((label, av, bv, r, limit, v, judged))
        print(f"  {label:30} {av:>10} {bv:>10} {fmt(r, '7.3f')} {limit:6.2f}  "
              + (v if judged else f"({v}, information)"))
    judged = [v for *_, v, j in verdicts if j]
    overall = "PASS" if judged and all(v == "PASS" for v in judged) else (
        "FAIL" if any(v == "FAIL" for v in judged) else "n/a")
    print(f"\nacceptance (large photo <= {TIME_LIMIT}x the time, <= {MEMORY_LIMIT:.2f}x the peak memory "
          f"of the {sname} run): {overall}")
    print("raw: " + "; ".join(
        f"{r['tag']} {r['size']} wall {r['wall']:.3f} s, load {fmt(r.get('load'), '.1f')} s, "
        f"inpaint {fmt(r.get('inpaint'), '.1f')} s, RSS {r['rss']} B"
        + (f", GPU {r['gpu_mib']} MiB" if r.get("gpu_mib") is not None else "")
        for k in ("small", "large") for r in runs[k]))

    if args.markdown:
        print("\n<!-- tests/bench/regions.py --markdown -->")
        print(f"{info['model']}, {info['settings']}; {info['machine']}; {info['cli']}; {info['date']}.")
        if device:
            print(f"Device: {device}.")
        print()
        print(f"| median | {sname} | {lname} | ratio | limit | |")
        print("|---|---:|---:|---:|---:|---|")
        for label, av, bv, r, limit, v, j in verdicts:
            print(f"| {label} | {av} | {bv} | {fmt(r, '.3f')} | {limit:.2f} | {v if j else v.lower() + ' (info)'} |")
        print()
        print("| run | photo | wall (s) | load (s) | inpaint (s) | s/step | peak RSS (MiB) |"
              + (" GPU (MiB) |" if gpu else "") + " regions |")
        print("|---|---|---:|---:|---:|---:|---:|" + ("---:|" if gpu else "") + "---|")
        for key, tag, recorded in schedule:
            r = next((x for x in runs[key] if x["tag"] == tag), None)
            if r is None:
                continue
            regions = ", ".join(f"{g['w']}x{g['h']} -> {g['run'][0]}x{g['run'][1]}" for g in r["regions"]) or "-"
            print(f"| {tag} | {r['size']} | {r['wall']:.2f} | {fmt(r.get('load'), '.1f')} | "
                  f"{fmt(r.get('inpaint'), '.1f')} | {fmt(r.get('per_step'), '.2f')} | {mib(r['rss'])} |"
                  + (f" {fmt(r['gpu_mib'], 'd')} |" if gpu else "") + f" {regions} |")

    if temporary:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
