#!/usr/bin/env bash
# nullpaint on a GPU next to PyTorch (issue 10, item 6), for a lent machine that reaches no
# registry: nothing is built or installed here. It runs the prebuilt release `nullpaint bench`
# on wgpu (Vulkan) in f16 at 512x512: every stage, one guided UNet step (first call and steady
# state), a 50-step inpaint, peak RSS and Burn's GPU pool figure, while `nvidia-smi` samples the
# GPU's used memory in the background (the true device peak, CUDA/Vulkan context included); then,
# when `python3 -c "import torch"` works and sees CUDA, the same stages in PyTorch fp16 with SDPA
# (tests/bench/sd_torch.py, run by the CLI after its own run) and the ratios. Prints everything
# and, when $OUT is set, writes it under $OUT (gpu-bench.txt, gpu-bench.json, gpu-bench.md,
# nvidia-smi.csv).
#
#   tests/bench/gpu.sh [MODEL_DIR | sd15 | sd21]        (default sd15)
#
# sd15 / sd21: a full-size folder with random f16 weights (2.1 / 2.6 GB) from the committed
# configs, written once with the Python 3 stdlib script tests/browser/make_full_size_model.py
# into $RANDOM_DIR/NAME-random (default ~/.cache/nullpaint, where `nullpaint bench --random`
# looks too); no PyTorch needed for that. Settings by environment:
#   NULLPAINT_CLI  the binary (default $CARGO_TARGET_DIR/release/nullpaint, CARGO_TARGET_DIR
#                  defaulting to ~/.cache/nullpaint/target; then target/release/nullpaint)
#   SIZE 512, STEPS 50, ITERS 3, BACKEND wgpu, PRECISION f16
#   TORCH_PYTHON   a Python with torch + diffusers + transformers (default python3); TORCH=0 skips
#   GPU_INDEX      the GPU nvidia-smi watches (default 0)
#   CONV_COMPARE   1 (default): then the stages again (1-step inpaint, no PyTorch) with
#                  `--conv burn` (Burn's autotuned convolution for every precision instead of the
#                  engine's matrix products for f16), printed beside the first run; 0 skips
# Example (the lavapipe check of this script on a machine without a GPU):
#   VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json SIZE=64 STEPS=2 \
#     tests/bench/gpu.sh tests/fixtures/tiny-sd1
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
SIZE=${SIZE:-512}
STEPS=${STEPS:-50}
ITERS=${ITERS:-3}
BACKEND=${BACKEND:-wgpu}
PRECISION=${PRECISION:-f16}
TORCH_PYTHON=${TORCH_PYTHON:-python3}
GPU_INDEX=${GPU_INDEX:-0}
RANDOM_DIR=${RANDOM_DIR:-$HOME/.cache/nullpaint}

# 1. the binary
if [ -n "${NULLPAINT_CLI:-}" ]; then
  CLI=$NULLPAINT_CLI
else
  CLI=${CARGO_TARGET_DIR:-$HOME/.cache/nullpaint/target}/release/nullpaint
  [ -x "$CLI" ] || CLI=$ROOT/target/release/nullpaint
fi
if [ ! -x "$CLI" ]; then
  echo "gpu.sh: no nullpaint binary at $CLI; build it first (cargo build --release --workspace --bin nullpaint) or set NULLPAINT_CLI" >&2
  exit 1
fi

# 2. the model
MODEL=${1:-sd15}
case "$MODEL" in
  sd15|sd21)
    folder=$RANDOM_DIR/$MODEL-random
    if [ ! -f "$folder/model_index.json" ]; then
      echo "gpu.sh: writing a full-size $MODEL folder with random f16 weights into $folder ..." >&2
      start=$(date +%s)
      python3 tests/browser/make_full_size_model.py "$folder" "$MODEL" >&2
      echo "gpu.sh: done in $(( $(date +%s) - start )) s" >&2
    fi
    MODEL=$folder
    ;;
esac
if [ ! -d "$MODEL" ]; then
  echo "gpu.sh: $MODEL is not a folder (give a diffusers folder, sd15 or sd21)" >&2
  exit 1
fi

WORK=$(mktemp -d)
SAMPLER=
cleanup() {
  if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# 3. PyTorch: only with CUDA (a CPU run says nothing about a GPU)
TORCH_ARGS=()
TORCH_NOTE=
if [ "${TORCH:-1}" = 0 ]; then
  TORCH_NOTE="PyTorch: skipped (TORCH=0)"
elif ! "$TORCH_PYTHON" -c "import torch" 2>/dev/null; then
  TORCH_NOTE="PyTorch: skipped ($TORCH_PYTHON cannot import torch)"
elif ! "$TORCH_PYTHON" -c "import diffusers, transformers" 2>/dev/null; then
  TORCH_NOTE="PyTorch: skipped ($TORCH_PYTHON has torch but not diffusers + transformers)"
elif ! "$TORCH_PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  TORCH_NOTE="PyTorch: skipped (torch sees no CUDA device)"
else
  TORCH_ARGS=(--torch "$TORCH_PYTHON" --torch-device cuda)
fi

# 4. GPU memory sampler: unix time, MiB used, every 0.1 s
SMI=$WORK/nvidia-smi.csv
: > "$SMI"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader -i "$GPU_INDEX" > "$WORK/gpu.txt" 2>&1 || true
  (
    while :; do
      used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$GPU_INDEX" 2>/dev/null || true)
      [ -n "$used" ] && printf '%s,%s\n' "$(date +%s.%N)" "$used" >> "$SMI"
      sleep 0.1
    done
  ) &
  SAMPLER=$!
  sleep 0.5 # a baseline sample before the run
else
  echo "nvidia-smi not found: no device-level GPU memory figure" > "$WORK/gpu.txt"
fi

# 5. the run
CMD=("$CLI" bench --model "$MODEL" --size "$SIZE" --steps "$STEPS" --iters "$ITERS"
     --backend "$BACKEND" --precision "$PRECISION" --json --markdown "${TORCH_ARGS[@]}")
echo "gpu.sh: ${CMD[*]}" >&2
[ -n "$TORCH_NOTE" ] && echo "gpu.sh: $TORCH_NOTE" >&2
status=0
"${CMD[@]}" > "$WORK/stdout.txt" 2> >(tee "$WORK/stderr.txt" >&2) || status=$?

# 5b. the same stages with Burn's convolution, to compare the two routes on this GPU
: > "$WORK/conv-burn.txt"
if [ "${CONV_COMPARE:-1}" != 0 ] && [ "$status" = 0 ]; then
  CONV_CMD=("$CLI" bench --model "$MODEL" --size "$SIZE" --steps 1 --iters "$ITERS"
            --backend "$BACKEND" --precision "$PRECISION" --conv burn --json)
  echo "gpu.sh: ${CONV_CMD[*]}" >&2
  "${CONV_CMD[@]}" > "$WORK/conv-burn.txt" 2> >(tee "$WORK/conv-burn-stderr.txt" >&2) \
    || echo "gpu.sh: the --conv burn run failed (exit $?)" >&2
fi
sleep 0.3
if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=; fi
sleep 0.2 # let the tee of stderr finish

# 6. the summary (Python 3 stdlib): the CLI's table, markdown and JSON, and nvidia-smi's peak
#    within nullpaint's and PyTorch's time windows
python3 - "$WORK" "$status" "$TORCH_NOTE" "${CMD[*]}" <<'EOF'
import json, sys
from pathlib import Path

work, status, torch_note, command = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def last_json(text):
    """The bench's JSON line: the last line of `text` that starts with `{`, else None."""
    for line in reversed(text.splitlines()):
        if line.lstrip().startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None

stdout = (work / "stdout.txt").read_text()
lines = stdout.splitlines()
report = last_json(stdout)
markdown = "\n".join(l for l in lines if not l.lstrip().startswith("{")).strip()
samples = []
for row in (work / "nvidia-smi.csv").read_text().splitlines():
    try:
        t, mib = row.split(",")
        samples.append((float(t), float(mib)))
    except ValueError:
        pass
gpu = (work / "gpu.txt").read_text().strip()

def window(start, end):
    inside = [m for t, m in samples if start <= t <= end]
    return max(inside) if inside else None

out = [f"command: {command}", f"exit status: {status}", f"GPU: {gpu}"]
if torch_note:
    out.append(torch_note)
smi = {}
if samples:
    smi["baseline_mib"] = samples[0][1]
    smi["samples"] = len(samples)
if report and samples:
    smi["nullpaint_peak_mib"] = window(report["started_unix"], report["finished_unix"])
    if report.get("torch"):
        t = report["torch"]
        smi["torch_peak_mib"] = window(t["started_unix"], t["finished_unix"])
if smi:
    out.append("nvidia-smi memory.used (MiB, whole device): " + ", ".join(f"{k} {v}" for k, v in smi.items()))
    if smi.get("nullpaint_peak_mib") and smi.get("torch_peak_mib"):
        out.append(f"  ratio of peaks above baseline, nullpaint / PyTorch: "
                   f"{(smi['nullpaint_peak_mib'] - smi['baseline_mib']) / max(1.0, smi['torch_peak_mib'] - smi['baseline_mib']):.2f}")
else:
    out.append("nvidia-smi: no samples")
# the --conv burn run beside the first one
conv_burn = last_json((work / "conv-burn.txt").read_text())
if report and conv_burn:
    if samples:
        smi["conv_burn_peak_mib"] = window(conv_burn["started_unix"], conv_burn["finished_unix"])
    out.append(f"convolution routes, same stages ({report.get('conv_route', 'auto')} = the engine's choice):")
    out.append(f"  {'stage':34} {'auto':>10} {'burn':>10}  burn / auto")
    for key, name in [("unet_first_s", "UNet guided step, first call"),
                      ("unet_median_s", "UNet guided step, median"),
                      ("vae_encode_s", "VAE encode"), ("vae_decode_s", "VAE decode")]:
        a, b = report["seconds"].get(key), conv_burn["seconds"].get(key)
        if a and b:
            out.append(f"  {name:34} {a:9.3f}s {b:9.3f}s  {b / a:.2f}")
    for key, name in [("gpu_in_use_bytes", "GPU memory in use (tensors)"),
                      ("gpu_memory_bytes", "GPU memory reserved (pools)")]:
        a, b = report.get(key), conv_burn.get(key)
        if a and b:
            out.append(f"  {name:34} {a / 2**30:8.2f}GiB {b / 2**30:8.2f}GiB  {b / a:.2f}")
    a, b = smi.get("nullpaint_peak_mib"), smi.get("conv_burn_peak_mib")
    if a and b:
        out.append(f"  {'nvidia-smi peak (whole device)':34} {a:8.0f}MiB {b:8.0f}MiB  {b / a:.2f}")
elif (work / "conv-burn.txt").stat().st_size == 0 and report:
    out.append("convolution routes: no --conv burn run")
table = (work / "stderr.txt").read_text() if (work / "stderr.txt").exists() else ""
text = "\n".join(out) + "\n\n" + table.strip() + "\n\n" + markdown + "\n"
print("\n" + "\n".join(out) + "\n\n" + markdown)
(work / "gpu-bench.txt").write_text(text)
(work / "gpu-bench.md").write_text(markdown + "\n\n" + "\n".join(out) + "\n")
(work / "gpu-bench.json").write_text(json.dumps({"report": report, "conv_burn": conv_burn,
                                                 "nvidia_smi": smi, "gpu": gpu,
                                                 "exit_status": status, "torch_note": torch_note}, indent=1) + "\n")
EOF

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$WORK/gpu-bench.txt" "$WORK/gpu-bench.md" "$WORK/gpu-bench.json" "$WORK/nvidia-smi.csv" "$OUT/"
  echo "gpu.sh: results in $OUT" >&2
fi
exit "$status"
