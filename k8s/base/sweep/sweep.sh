#!/bin/sh
# One index of the training sweep: tasks x seeds x cost limits, one run per index.
#   sh sweep.sh --list     print every index with its task, seed and cost limit
#   sh sweep.sh INDEX      train, export and audit that one combination
# The Indexed Job gives INDEX as $JOB_COMPLETION_INDEX. Index order: the cost limit varies
# fastest, then the seed, then the task: index = (task * SEEDS + seed) * LIMITS + limit.
# Change the lists here and `completions` in sweep-job.yaml together (--count prints it).
set -eu
TASKS="${SWEEP_TASKS:-BallRun CarCircle}"
SEEDS="${SWEEP_SEEDS:-0 1 2}"
LIMITS="${SWEEP_COST_LIMITS:-10 20}"
ALGORITHM="${SWEEP_ALGORITHM:-o3srl}"
WORK="${SWEEP_WORK:-/work}"
MODELS="${SWEEP_MODELS:-/models}"

count() { set -- $1; echo $#; }
nth() { shift $(($1 + 1)); echo "$1"; }  # nth K a b c: the K-th (from 0) of a b c
n_tasks=$(count "$TASKS"); n_seeds=$(count "$SEEDS"); n_limits=$(count "$LIMITS")
total=$((n_tasks * n_seeds * n_limits))

decode() {
  index=$1
  task=$(nth $((index / (n_seeds * n_limits))) $TASKS)
  seed=$(nth $((index / n_limits % n_seeds)) $SEEDS)
  limit=$(nth $((index % n_limits)) $LIMITS)
}

case "${1:-}" in
  --count) echo "$total"; exit 0 ;;
  --list)
    i=0
    while [ "$i" -lt "$total" ]; do
      decode "$i"; echo "$i task=$task seed=$seed cost_limit=$limit"; i=$((i + 1))
    done
    exit 0 ;;
  ''|-*) echo "usage: sweep.sh --list | --count | INDEX (0..$((total - 1)))" >&2; exit 2 ;;
esac
case "$1" in *[!0-9]*) echo "sweep.sh: INDEX must be a number, got '$1'" >&2; exit 2 ;; esac
if [ "$1" -ge "$total" ]; then
  echo "sweep.sh: index $1 is outside 0..$((total - 1)) ($n_tasks tasks x $n_seeds seeds x" \
       "$n_limits cost limits); set completions to $total" >&2
  exit 2
fi
decode "$1"
name=$(echo "$task-$ALGORITHM-s$seed-c$limit" | tr '[:upper:]' '[:lower:]')
echo "index $1: task=$task seed=$seed cost_limit=$limit -> $name"
run="$WORK/runs/$name"
safepolicy train "$ALGORITHM" --task "$task" --dataset "$WORK/datasets/$task.h5" \
  --cost-limit "$limit" --seed "$seed" --out "$run" --resume --quiet
version_dir=$(safepolicy export --run "$run" --repo "$MODELS" --name "$name" --print-path)
safepolicy audit --policy "$version_dir" --episodes 50 --out "$WORK/audits/$name" --quiet
