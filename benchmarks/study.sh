#!/usr/bin/env bash
# The dev-set study behind docs/RESULTS.md: every method on the six tasks with the three built-in models.
# Usage: bash benchmarks/study.sh OUT_DIR [PART]   PART: qa | long | sweep | chat | all (default all)
# Resumable: rerun the same command after an interruption and finished items are kept.
# Sizes can be raised with N_TRIVIA, N_NQ, N_SQUAD, N_GSM8K, N_FLORES (defaults below are what we ran here).
set -euo pipefail
out="${1:?usage: study.sh OUT_DIR [PART]}"
part="${2:-all}"
threads="${THREADS:-1}"
base=(--threads "$threads" --n-ctx 4096)
methods="single:0,single:1,single:2,adafuse,token,span,sample"
sweep="adafuse@theta=0.3,adafuse@theta=0.5,adafuse@theta=0.9,adafuse@beam=1,adafuse@theta=0.5,beam=1"
run() { adafuse compare "${base[@]}" "$@"; }

if [[ "$part" == qa || "$part" == all ]]; then
  run --task triviaqa --methods "$methods" --offset 1500 --limit "${N_TRIVIA:-100}" --out "$out/triviaqa"
  run --task nq --methods "$methods" --limit "${N_NQ:-100}" --out "$out/nq"
  run --task squad --methods "$methods" --limit "${N_SQUAD:-50}" --out "$out/squad"
fi
if [[ "$part" == long || "$part" == all ]]; then
  run --task flores-en-de --methods "$methods" --limit "${N_FLORES:-30}" --out "$out/flores-en-de"
  run --task flores-de-en --methods "$methods" --limit "${N_FLORES:-30}" --out "$out/flores-de-en"
  run --task gsm8k --methods "$methods" --limit "${N_GSM8K:-20}" --out "$out/gsm8k"
fi
if [[ "$part" == sweep || "$part" == all ]]; then
  run --task triviaqa --methods "adafuse,$sweep" --offset 1500 --limit "${N_TRIVIA:-100}" --out "$out/triviaqa"
  run --task nq --methods "adafuse,$sweep" --limit "${N_NQ:-100}" --out "$out/nq"
fi
if [[ "$part" == chat || "$part" == all ]]; then
  run --task triviaqa --chat --methods "single:0,single:2,adafuse" --offset 1500 --limit "${N_TRIVIA:-100}" \
    --out "$out/triviaqa-chat"
fi
