#!/usr/bin/env bash
# The dev-set study behind docs/RESULTS.md: every method on the six tasks with the three built-in models.
# Usage: bash benchmarks/study.sh OUT_DIR [PART]    PART: qa | long | extended | sweep | options | all (default all)
# options: the beyond-the-paper options (granularity, automatic weights, benching) on every task, beside the rest
# (WITH_OPTIONS=1 adds them to the qa or long part alone, to run the two parts side by side).
# Resumable: rerun the same command after an interruption and finished items are kept.
# Calibration (member weights) uses dev rows that the evaluation does not: rows [0, N_CAL) of each task, while
# the evaluation starts at EVAL_OFFSET. CALIBRATE=0 leaves the calibrated-weights run out. Sizes are environment variables; the defaults are what we ran here.
set -euo pipefail
out="${1:?usage: study.sh OUT_DIR [PART]}"
part="${2:-all}"
base=(--threads "${THREADS:-1}" --n-ctx 4096)
# adafuse: the default (evidence weights from the worked answers, else the prompt's instructions; members under
# min_weight benched; token healing); adafuse@weights=equal: the paper's setting (with token healing). A run resumes
# only under the adafuse version and options it was recorded with: after an upgrade, use a new OUT_DIR.
methods="single:0,single:1,single:2,adafuse,adafuse@weights=equal,token,span,sample"
# Long outputs (translation, maths) cost minutes per item for the one-token-per-round baseline on 2 cores.
long_methods="${LONG_METHODS:-single:0,single:1,single:2,adafuse,adafuse@weights=equal,span,sample}"

# task eval_offset eval_n cal_n
qa_tasks=("triviaqa 1500 ${N_TRIVIA:-50} ${N_CAL:-40}" "nq 200 ${N_NQ:-30} ${N_CAL_NQ:-20}"
  "squad 100 ${N_SQUAD:-15} ${N_CAL_SQUAD:-15}")
long_tasks=("flores-en-de 100 ${N_FLORES:-6} ${N_CAL_LONG:-10}" "flores-de-en 100 ${N_FLORES:-6} ${N_CAL_LONG:-10}"
  "gsm8k 50 ${N_GSM8K:-4} ${N_CAL_LONG:-5}")

# Beyond the paper (docs/RESULTS.md, "Granularity", "Member weights", "Benching"): the adaptive unit on the paper's
# equal weights, the default's automatic weights at sharpness 20, and a lower floor for benching (min_weight).
eq="adafuse@weights=equal"
options="$eq,granularity=adaptive,adafuse@auto_sharpness=20,adafuse@min_weight=0.01"
if [[ "$part" == options || -n "${WITH_OPTIONS:-}" ]]; then
  methods="$methods,$options"
  long_methods="$long_methods,$options"
fi

study_task() {
  local task=$1 offset=$2 n=$3 ncal=$4 methods=$5
  if [[ "${CALIBRATE:-1}" == 0 ]]; then
    adafuse compare "${base[@]}" --task "$task" --methods "$methods" --offset "$offset" --limit "$n" --out "$out/$task"
    return
  fi
  adafuse calibrate "${base[@]}" --task "$task" --limit "$ncal" --out "$out/calibrate/$task"
  local w
  w=$(python -c "import json,sys; print('/'.join(str(x) for x in json.load(open(sys.argv[1]))['weights']))" \
    "$out/calibrate/$task/weights.json")
  adafuse compare "${base[@]}" --task "$task" --methods "$methods,adafuse@weights=$w" --offset "$offset" \
    --limit "$n" --out "$out/$task"
}

if [[ "$part" == qa || "$part" == options || "$part" == all ]]; then
  for spec in "${qa_tasks[@]}"; do study_task $spec "$methods"; done
fi
if [[ "$part" == long || "$part" == options || "$part" == all ]]; then
  for spec in "${long_tasks[@]}"; do study_task $spec "$long_methods"; done
fi
if [[ "$part" == extended || "$part" == all ]]; then
  # Flores and GSM8K again at larger sizes (the runs above are reused, only the new rows are decoded).
  ext="single:0,single:1,single:2,adafuse,adafuse@weights=equal,span,sample"
  for spec in "flores-en-de 100 ${N_FLORES_EXT:-20}" "flores-de-en 100 ${N_FLORES_EXT:-20}" "gsm8k 50 ${N_GSM8K_EXT:-10}"; do
    set -- $spec
    adafuse compare "${base[@]}" --task "$1" --methods "$ext" --offset "$2" --limit "$3" --out "$out/$1"
  done
fi
if [[ "$part" == sweep || "$part" == all ]]; then
  adafuse compare "${base[@]}" --task triviaqa --offset 1500 --limit "${N_TRIVIA:-50}" --out "$out/triviaqa" \
    --methods "adafuse@weights=equal,adafuse@weights=equal,theta=0.3,adafuse@weights=equal,theta=0.5,adafuse@weights=equal,theta=0.9,adafuse@weights=equal,beam=1"
fi
