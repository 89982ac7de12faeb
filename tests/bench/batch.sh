#!/usr/bin/env bash
# `nullpaint batch` against a loop of single `nullpaint inpaint` runs over the same jobs, side by
# side in one run (the machine is shared: never compare with a figure from another day).
#
#   tests/bench/batch.sh [JOBS] [STEPS] [MODEL] [BACKEND]
#
# Defaults: 20 jobs of the tiny SD 1.x fixture (64x64 photo, 4 steps) on the CPU backend. Uses
# $NULLPAINT (default: the newer of $CARGO_TARGET_DIR/{release,debug}/nullpaint). Also times
# the server: 4 clients posting the same jobs at once to one `nullpaint serve`.
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS="${1:-20}"
STEPS="${2:-4}"
MODEL="${3:-tests/fixtures/tiny-sd1}"
BACKEND="${4:-cpu}"
TARGET="${CARGO_TARGET_DIR:-target}"
BIN="${NULLPAINT:-}"
if [ -z "$BIN" ]; then
  # the newer of the release and debug builds
  BIN="$(ls -t "$TARGET/release/nullpaint" "$TARGET/debug/nullpaint" 2>/dev/null | head -1)"
fi
[ -x "$BIN" ] || { echo "no nullpaint binary at $BIN: build it first" >&2; exit 1; }
IMAGE="$PWD/tests/fixtures/reference/e2e/sd1_guided_64x64.image.png"
MASK="$PWD/tests/fixtures/reference/e2e/sd1_guided_64x64.mask.png"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"; [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true' EXIT

for k in $(seq 1 "$JOBS"); do
  printf '{"image": "%s", "mask": "%s", "prompt": "a red apple", "steps": %s, "seed": %s, "output": "out-batch/%s.png"}\n' \
    "$IMAGE" "$MASK" "$STEPS" "$k" "$k"
done > "$WORK/jobs.jsonl"

now() { date +%s.%N; }
echo "binary: $BIN; $JOBS jobs, $STEPS steps, model $MODEL, backend $BACKEND, $(nproc) cores"

t0=$(now)
"$BIN" batch --manifest "$WORK/jobs.jsonl" --results "$WORK/results.jsonl" --model "$MODEL" --backend "$BACKEND" 2>"$WORK/batch.log" \
  || { cat "$WORK/batch.log"; exit 1; }
t1=$(now)

mkdir -p "$WORK/out-single"
for k in $(seq 1 "$JOBS"); do
  "$BIN" inpaint --image "$IMAGE" --mask "$MASK" --prompt "a red apple" --steps "$STEPS" --seed "$k" \
    --model "$MODEL" --backend "$BACKEND" --output "$WORK/out-single/$k.png" 2>>"$WORK/single.log" \
    || { cat "$WORK/single.log"; exit 1; }
done
t2=$(now)

same=0
for k in $(seq 1 "$JOBS"); do cmp -s "$WORK/out-batch/$k.png" "$WORK/out-single/$k.png" && same=$((same + 1)); done

# The server: 4 clients at once, JOBS requests in all.
"$BIN" serve --model "$MODEL" --backend "$BACKEND" --port 0 --queue 8 2>"$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 1 600); do grep -q "listening on http://[^ ]* " "$WORK/serve.log" && break; sleep 0.2; done
ADDR=$(grep -o 'listening on http://[^ ]*' "$WORK/serve.log" | sed 's/listening on //')
[ -n "$ADDR" ] || { cat "$WORK/serve.log"; exit 1; }
t3=$(now)
clients=()
for c in 1 2 3 4; do
  (
    for k in $(seq "$c" 4 "$JOBS"); do
      s=$(now)
      curl -sf -o "$WORK/server-$k.png" -F image=@"$IMAGE" -F mask=@"$MASK" -F prompt="a red apple" \
        -F steps="$STEPS" -F seed="$k" "$ADDR/inpaint"
      echo "$(echo "$(now) - $s" | bc)" >> "$WORK/latency-$c"
    done
  ) &
  clients+=($!)
done
wait "${clients[@]}"
t4=$(now)
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=
server_same=0
for k in $(seq 1 "$JOBS"); do cmp -s "$WORK/server-$k.png" "$WORK/out-single/$k.png" && server_same=$((server_same + 1)); done
lat=$(cat "$WORK"/latency-* | sort -n | awk '{a[NR]=$1} END {printf "min %.2f s, median %.2f s, max %.2f s", a[1], a[int((NR+1)/2)], a[NR]}')

batch_s=$(echo "$t1 - $t0" | bc)
single_s=$(echo "$t2 - $t1" | bc)
server_s=$(echo "$t4 - $t3" | bc)
printf '\n| | wall time (s) | jobs/min | outputs equal to the single runs |\n|---|---:|---:|---:|\n'
printf '| `batch` (model loaded once) | %.1f | %.1f | %s/%s |\n' "$batch_s" "$(echo "60 * $JOBS / $batch_s" | bc -l)" "$same" "$JOBS"
printf '| loop of `inpaint` runs | %.1f | %.1f | - |\n' "$single_s" "$(echo "60 * $JOBS / $single_s" | bc -l)"
printf '| `serve`, 4 concurrent clients (load excluded) | %.1f | %.1f | %s/%s |\n' "$server_s" "$(echo "60 * $JOBS / $server_s" | bc -l)" "$server_same" "$JOBS"
printf '\nbatch speed-up over single runs: %.2fx; server request latency with 4 clients: %s\n' "$(echo "$single_s / $batch_s" | bc -l)" "$lat"
