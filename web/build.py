#!/usr/bin/env python3
"""Builds the browser module: cargo (wasm32) -> wasm-bindgen -> wasm-opt, into www/pkg.

Every setting (crate, target, profile, features, output folder, wasm-opt flags) comes from the
top-level wasm-pack.toml. wasm-bindgen-cli is installed with `cargo install` at the exact version in
Cargo.lock when missing; wasm-opt is binaryen from npm, pinned in web/package.json. Python 3.11+
stdlib.

    python3 web/build.py            # build
    python3 web/build.py --print    # show the settings and exit
"""

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fail(message: str) -> None:
    print(f"web/build.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, **kw)
    if result.returncode != 0:
        fail(f"`{' '.join(cmd)}` failed with exit code {result.returncode}")


def settings() -> dict:
    path = ROOT / "wasm-pack.toml"
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(f"cannot read {path}: {e}")
    build = raw.get("build", {})
    opt = raw.get("wasm-opt", {})
    known = {"crate", "target", "bindgen-target", "profile", "features", "out-dir"}
    unknown = set(build) - known
    if unknown:
        fail(f"{path}: unknown [build] keys {sorted(unknown)} (known: {sorted(known)})")
    for key in known:
        if key not in build:
            fail(f"{path}: [build] needs `{key}`")
    if not isinstance(build["features"], list):
        fail(f"{path}: [build] features must be a list of strings")
    return {
        "crate": ROOT / build["crate"],
        "target": build["target"],
        "bindgen_target": build["bindgen-target"],
        "profile": build["profile"],
        "features": build["features"],
        "out_dir": ROOT / build["out-dir"],
        "wasm_opt": bool(opt.get("enabled", False)),
        "wasm_opt_tool": ROOT / opt.get("tool", "web/node_modules/.bin/wasm-opt"),
        "wasm_opt_args": list(opt.get("args", [])),
    }


def package_name(crate_dir: Path) -> str:
    manifest = tomllib.loads((crate_dir / "Cargo.toml").read_text())
    return manifest["package"]["name"]


def locked_version(name: str) -> str:
    lock = (ROOT / "Cargo.lock").read_text()
    m = re.search(r'\[\[package\]\]\nname = "' + re.escape(name) + r'"\nversion = "([^"]+)"', lock)
    if not m:
        fail(f"{name} is not in Cargo.lock; run `cargo generate-lockfile`")
    return m.group(1)


def ensure_target(target: str) -> None:
    if shutil.which("rustup") is None:
        return
    installed = subprocess.run(
        ["rustup", "target", "list", "--installed"], capture_output=True, text=True
    ).stdout.split()
    if target not in installed:
        run(["rustup", "target", "add", target])


def ensure_wasm_bindgen(version: str) -> str:
    exe = shutil.which("wasm-bindgen")
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        if out.split()[-1:] == [version]:
            return exe
        print(f"wasm-bindgen on PATH is {out.strip()!r}; Cargo.lock needs {version}")
    # The CLI must equal the library version exactly (the generated glue is versioned).
    run(["cargo", "install", "wasm-bindgen-cli", "--version", version, "--force"])
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    return str(cargo_home / "bin" / "wasm-bindgen")


def ensure_wasm_opt(tool: Path) -> str:
    """The pinned wasm-opt; `npm ci` in its package folder when it is not installed yet."""
    if not tool.exists():
        package = tool.parent.parent.parent  # <pkg>/node_modules/.bin/wasm-opt
        if not (package / "package-lock.json").is_file():
            fail(f"{tool} is missing and {package} has no package-lock.json to install it from")
        if shutil.which("npm") is None:
            fail("npm is needed to install binaryen's wasm-opt (Debian: apt-get install npm)")
        run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=package)
    if not tool.exists():
        fail(f"npm ci did not install {tool}")
    return str(tool)


def target_dir() -> Path:
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        capture_output=True, text=True, cwd=ROOT,
    )
    if out.returncode != 0:
        fail(f"cargo metadata failed: {out.stderr.strip()}")
    import json

    return Path(json.loads(out.stdout)["target_directory"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the settings and exit")
    args = parser.parse_args()
    s = settings()
    name = package_name(s["crate"])
    if args.print:
        for k, v in s.items():
            print(f"{k} = {v}")
        return

    started = time.time()
    ensure_target(s["target"])
    bindgen = ensure_wasm_bindgen(locked_version("wasm-bindgen"))

    cmd = ["cargo", "build", "--locked", "-p", name, "--target", s["target"], "--profile", s["profile"]]
    if s["features"]:
        cmd += ["--features", ",".join(s["features"])]
    run(cmd, cwd=ROOT)
    profile_dir = "debug" if s["profile"] == "dev" else s["profile"]
    wasm = target_dir() / s["target"] / profile_dir / f"{name.replace('-', '_')}.wasm"
    if not wasm.is_file():
        fail(f"cargo did not produce {wasm}")

    out_dir: Path = s["out_dir"]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build into a fresh folder next to the output, then swap it in: a failed build never
    # leaves a half-written www/pkg behind.
    staging = Path(tempfile.mkdtemp(prefix=".pkg-", dir=out_dir.parent))
    try:
        run([bindgen, str(wasm), "--out-dir", str(staging), "--target", s["bindgen_target"]])
        out_wasm = staging / f"{name.replace('-', '_')}_bg.wasm"
        if s["wasm_opt"]:
            opt = ensure_wasm_opt(s["wasm_opt_tool"])
            optimised = staging / "opt.wasm"
            run([opt, *s["wasm_opt_args"], str(out_wasm), "-o", str(optimised)])
            optimised.replace(out_wasm)
        old = out_dir.with_name(out_dir.name + ".old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    final = out_dir / f"{name.replace('-', '_')}_bg.wasm"
    raw = final.read_bytes()
    print(
        f"built {final.relative_to(ROOT)}: {len(raw) / 1e6:.1f} MB, "
        f"{len(gzip.compress(raw, 6)) / 1e6:.1f} MB gzipped, in {time.time() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
