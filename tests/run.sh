#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, then runs
# formatting, lints, the browser build and every test: the model tests on the CPU backend and
# on wgpu over Mesa's software Vulkan adapter (lavapipe), then the page end to end in Debian's
# headless Chromium on WebGPU (SwiftShader). This is the README's test command and what CI
# runs (.ci/run).
#
# Build cache: CARGO_TARGET_DIR defaults to ~/.cache/nullpaint/target (outside the clone), so
# repeated runs on one machine are incremental. A cold build of burn takes ~15-25 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s (%s)\n' "$1" "$(date +%T)"; }
SECONDS=0

# 1. System packages: Vulkan loader + lavapipe; Chromium and Node.js for the browser build
#    (wasm-opt comes from npm, see wasm-pack.toml) and test.
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ -e /usr/share/vulkan/icd.d/lvp_icd.aarch64.json ] || need+=(mesa-vulkan-drivers)
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || need+=(libvulkan1)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# 2. Rust targets and components.
step "rust toolchain"
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
rustup target list --installed | grep -q aarch64-apple-darwin || rustup target add aarch64-apple-darwin
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nullpaint/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CARGO_TARGET_DIR"

step "cargo fmt --check"
cargo fmt --all -- --check

# 3. The browser module (settings from wasm-pack.toml; installs wasm-bindgen-cli with cargo install
#    at Cargo.lock's version when missing).
step "browser build: python3 web/build.py"
python3 web/build.py

step "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

# The macOS build (Burn's `metal`: CubeCL's MSL compiler, objc2) type-checked, since no Mac runs
# it here: the library and its tests (the CLI adds hf-hub's TLS, whose C code needs Apple's SDK).
# Its own target folder: another target and feature set than the builds above.
step "cargo check --target aarch64-apple-darwin (macOS, Metal)"
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/macos" \
  cargo check --locked -p nullpaint --all-targets --target aarch64-apple-darwin

# 4. Tests. The wgpu half of every model test is required here: no adapter = failure.
step "cargo test (CPU backend + wgpu on $(ls /usr/share/vulkan/icd.d 2>/dev/null | grep -o lvp_icd | head -1 || echo '?'))"
export NULLPAINT_REQUIRE_WGPU=1
# Mesa's window-system probing complains on headless machines without a runtime dir.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  export XDG_RUNTIME_DIR="$(mktemp -d)"
  chmod 700 "$XDG_RUNTIME_DIR"
fi
# lavapipe only: never pick up a real GPU's ICD half-installed on a CI image.
export VK_ICD_FILENAMES="${VK_ICD_FILENAMES:-$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -1)}"
# The native build ships with Burn's autotune + fusion (the `gpu-tuned` default feature) and
# that is what runs here. Tuning on a software adapter only slows the tests down (each candidate
# kernel is compiled by LLVM on the CPU), so the tests ask CubeCL for its smallest candidate set;
# the results persist in ~/.cache/nullpaint/gpu (or $NULLPAINT_GPU_CACHE) between runs.
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
cargo test --locked --workspace -- --test-threads=1 --nocapture

# 5. The page in headless Chromium (playwright-core from npm drives the system's Chromium; no
#    browser is ever downloaded).
step "browser end-to-end test (Chromium $(chromium --version 2>/dev/null | grep -o '[0-9.]*' | head -1), node $(node --version))"
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
NULLPAINT_CLI="$CARGO_TARGET_DIR/debug/nullpaint" node tests/browser/e2e.mjs
step "all tests passed in ${SECONDS}s"
