#!/usr/bin/env bash
# Coverage-guided fuzzing of nullpaint's parsers with libFuzzer, on the stable toolchain
# (fuzz/README.md). Not part of the test command: CI replays the committed corpus instead
# (crates/nullpaint/tests/fuzz_corpus.rs).
#
#   fuzz/run.sh                       every target, $FUZZ_SECONDS each (default 600), two at a time
#   fuzz/run.sh TARGET [SECONDS]      one target
#   fuzz/run.sh TARGET FILE           run one input (a crash to reproduce)
#   fuzz/run.sh --merge               minimise every corpus (keeps inputs that add coverage)
#
# Targets: safetensors config tokenizer image options. Crashes land in fuzz/artifacts/TARGET/;
# once fixed, move them to fuzz/regressions/TARGET/ (replayed by the test command).
set -euo pipefail
cd "$(dirname "$0")"
TARGETS=(safetensors config tokenizer image options)
export CARGO_TARGET_DIR="${NULLPAINT_FUZZ_TARGET_DIR:-$HOME/.cache/nullpaint/fuzz-target}"
# `profile-rustflags` (per-crate instrumentation, Cargo.toml) is an unstable Cargo feature.
export RUSTC_BOOTSTRAP=1
cargo build --locked --bins
BIN="$CARGO_TARGET_DIR/debug"

run() { # target seconds
  local t=$1 s=$2
  mkdir -p "artifacts/$t" "corpus/$t"
  "$BIN/$t" -max_total_time="$s" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 "corpus/$t" 2>&1 | tee "artifacts/$t.log" |
    grep -E '^(#[0-9]+ *(INITED|DONE)|stat::number_of_executed_units|stat::average_exec_per_sec|==[0-9]+==|SUMMARY)' || true
}

case "${1:-}" in
  "")
    secs="${FUZZ_SECONDS:-600}"
    for ((i = 0; i < ${#TARGETS[@]}; i += 2)); do
      run "${TARGETS[i]}" "$secs" &
      [ $((i + 1)) -lt ${#TARGETS[@]} ] && run "${TARGETS[i + 1]}" "$secs" &
      wait
    done
    ;;
  --merge)
    for t in "${TARGETS[@]}"; do
      mkdir -p "corpus/$t.min"
      "$BIN/$t" -merge=1 -timeout=10 -rss_limit_mb=2048 "corpus/$t.min" "corpus/$t" 2>&1 | tail -1
      # Keep the seeds under their names; the rest by content hash, as libFuzzer names them.
      find "corpus/$t" -type f ! -name 'seed-*' -delete
      for f in "corpus/$t.min"/*; do
        h=$(basename "$f"); [ -e "corpus/$t/$h" ] || ls "corpus/$t"/seed-* | xargs -r sha1sum | grep -q "^$h " || mv "$f" "corpus/$t/"
      done
      rm -rf "corpus/$t.min"
    done
    ;;
  *)
    t=$1
    if [ -f "${2:-}" ]; then
      "$BIN/$t" -timeout=10 -rss_limit_mb=2048 "$2"
    else
      run "$t" "${2:-${FUZZ_SECONDS:-600}}"
    fi
    ;;
esac
