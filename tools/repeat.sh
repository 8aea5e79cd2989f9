#!/usr/bin/env bash
# Run one pytest selection N times in a row and count the failures: the check for a flaky test.
#   tools/repeat.sh 50 tests/unit/train/test_replicas.py::test_teacher_training_on_two_gloo_ranks_stays_in_step
# Prints one line per run and "N passed, N failed" at the end; exits 1 if any run failed.
set -uo pipefail
n=${1:?usage: tools/repeat.sh N PYTEST_ARGS...}
shift
passed=0 failed=0
log=$(mktemp -d)/repeat
for i in $(seq 1 "$n"); do
  start=$(date +%s.%N)
  if python -m pytest -q -p no:cacheprovider "$@" >"$log.$i" 2>&1; then
    passed=$((passed + 1)) result=ok
  else
    failed=$((failed + 1)) result="FAILED (log: $log.$i)"
  fi
  printf 'run %d/%d: %s (%.1f s)\n' "$i" "$n" "$result" "$(echo "$(date +%s.%N) - $start" | bc)"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
