#!/usr/bin/env bash
# `make test` RUNS times in a row with HOGS busy CPU loops beside it: the suite on a loaded laptop or
# CI runner. Stops at the first failing run; the hogs are stopped (by their own PIDs) however it ends.
set -u
runs=${1:-3}
hogs=${2:-2}
py=${PY:-.venv/bin/python}
pids=()
stop_hogs() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
}
trap stop_hogs EXIT
for _ in $(seq "$hogs"); do
  "$py" -c "while True: pass" &
  pids+=($!)
done
echo "test-stress: $runs runs of make test beside $hogs busy CPU loops (PIDs ${pids[*]})"
for i in $(seq "$runs"); do
  start=$(date +%s)
  if ! make --no-print-directory test; then
    echo "test-stress: run $i of $runs FAILED after $(( $(date +%s) - start )) s"
    exit 1
  fi
  echo "test-stress: run $i of $runs passed in $(( $(date +%s) - start )) s"
done
echo "test-stress: $runs of $runs runs passed under load"
